//! The unwrapped keys arranged for the hot path, and the purpose keys
//! derived from the keyring's root.

use super::current_keys::CurrentKeys;
use super::key_chunks::{Handled, KeyChunks};
use super::keyring::KeyRecord;
use super::*;

/// A data key with what the keyring says about it: fixed size, kept sorted
/// by handle in fixed chunks ([`KeyChunks`]).
///
/// Patient keys are kept as their 32 secret bytes and made ready for use
/// (AES key schedule, GHASH table: about 0.5 KiB) only while a value is
/// sealed or opened: a ready key for each of 100,000 patients would hold
/// some 70 MB for nothing, and preparing one costs well under a microsecond.
/// The few keys of no patient (system) are kept ready.
///
/// This is the only copy of each key in memory: the keyring's file is
/// written from these (see [`Keyring::rewrite`]).
#[derive(Clone)]
pub(super) struct ViewKey {
    pub(super) handle: u64,
    pub(super) owner: KeyOwner,
    pub(super) gen: u32,
    retired: bool,
    secret: Zeroizing<[u8; 32]>,
}

impl Handled for ViewKey {
    fn handle(&self) -> u64 {
        self.handle
    }
}

/// A key taken out of the view for one seal or open, used outside the
/// view's lock: a prepared system key, or a patient's secret, prepared on
/// the stack by [`KeyInUse::with_key`] (no allocation per seal or open).
pub(super) enum KeyInUse {
    Shared(Arc<DataKey>),
    Secret(u64, Zeroizing<[u8; 32]>),
}

impl KeyInUse {
    /// Runs `f` with the key ready for sealing or opening.
    pub(super) fn with_key<R>(&self, f: impl FnOnce(&DataKey) -> R) -> VaultResult<R> {
        match self {
            KeyInUse::Shared(k) => Ok(f(k)),
            KeyInUse::Secret(handle, secret) => {
                let key = DataKey::new(*handle, secret).map_err(|_| VaultError::Rng)?;
                Ok(f(&key))
            }
        }
    }
}

/// The unwrapped keys, arranged for the hot path.
///
/// One copy of each secret, sorted in chunks (64 bytes a key) and an
/// owner → current handle index (see [`CurrentKeys`]): with 100,000 patients
/// this is some 9 MB.
/// The root key is here too (the keyring's file is written from the view)
/// but is never handed out for sealing or opening.
pub(super) struct KeyView {
    /// Sorted by handle.
    keys: KeyChunks<ViewKey>,
    current: CurrentKeys,
    /// The system keys, prepared once.
    ready: HashMap<u64, Arc<DataKey>>,
}

impl KeyView {
    /// An empty view with room in the owner index for about `keys` keys
    /// (the keys themselves take room a chunk at a time).
    pub(super) fn with_capacity(keys: usize) -> Self {
        KeyView {
            keys: KeyChunks::default(),
            current: CurrentKeys::with_capacity(keys),
            ready: HashMap::new(),
        }
    }

    /// Adds a key, or replaces the one under its handle.
    pub(super) fn add(&mut self, e: &keyring::KeyEntry) -> Result<(), KeyringError> {
        if e.owner == KeyOwner::System {
            let key = DataKey::new(e.handle, &e.secret).map_err(|_| KeyringError::Rng)?;
            self.ready.insert(e.handle, Arc::new(key));
        }
        let vk = ViewKey {
            handle: e.handle,
            owner: e.owner,
            gen: e.gen,
            retired: e.retired,
            secret: e.secret.clone(),
        };
        let newer = !e.retired
            && self
                .current
                .get(e.owner)
                .and_then(|h| self.get(h))
                .is_none_or(|cur| (cur.gen, cur.handle) < (e.gen, e.handle));
        if newer {
            self.current.insert(e.owner, e.handle);
        }
        // Keys come in handle order (the file's, and new handles are the
        // highest): the common case is a push at the end.
        self.keys.upsert(vk);
        Ok(())
    }

    /// Every key, in handle order, as the keyring's file is written from.
    pub(super) fn records(&self) -> impl Iterator<Item = KeyRecord<'_>> + '_ {
        self.keys.iter().map(|k| KeyRecord {
            handle: k.handle,
            owner: k.owner,
            gen: k.gen,
            retired: k.retired,
            secret: &k.secret,
        })
    }

    /// One key, as the keyring's file is written from.
    pub(super) fn record(&self, handle: u64) -> Option<KeyRecord<'_>> {
        self.get(handle).map(|k| KeyRecord {
            handle: k.handle,
            owner: k.owner,
            gen: k.gen,
            retired: k.retired,
            secret: &k.secret,
        })
    }

    /// The root key's secret, from which the purpose keys are derived.
    pub(super) fn root_secret(&self) -> Result<Zeroizing<[u8; 32]>, KeyringError> {
        self.current_handle(KeyOwner::Root)
            .and_then(|h| self.get(h))
            .map(|k| k.secret.clone())
            .ok_or(KeyringError::Internal("the keyring has no root key"))
    }

    /// Marks every key of `owner` retired: it seals nothing new.
    pub(super) fn retire_owner(&mut self, owner: KeyOwner) {
        for k in self.keys.iter_mut().filter(|k| k.owner == owner) {
            k.retired = true;
        }
        self.current.remove(owner);
    }

    /// Marks the given keys retired (the end of a rotation: each owner's
    /// current key is already of the new generation).
    pub(super) fn mark_retired(&mut self, handles: &[u64]) {
        for h in handles {
            if let Some(k) = self.keys.get_mut(*h) {
                k.retired = true;
            }
        }
    }

    pub(super) fn get(&self, handle: u64) -> Option<&ViewKey> {
        self.keys.get(handle)
    }

    pub(super) fn has(&self, handle: u64) -> bool {
        self.get(handle).is_some()
    }

    /// The key under `handle`, ready for one seal or open (never the root
    /// key: it only derives the purpose keys).
    pub(super) fn in_use(&self, handle: u64) -> Option<KeyInUse> {
        if let Some(k) = self.ready.get(&handle) {
            return Some(KeyInUse::Shared(k.clone()));
        }
        self.get(handle)
            .filter(|vk| vk.owner != KeyOwner::Root)
            .map(|vk| KeyInUse::Secret(vk.handle, vk.secret.clone()))
    }

    /// The handle an owner seals new values with.
    pub(super) fn current_handle(&self, owner: KeyOwner) -> Option<u64> {
        self.current.get(owner)
    }

    /// The owner seals nothing new any more (erased or merged away).
    pub(super) fn forget_current(&mut self, owner: KeyOwner) {
        self.current.remove(owner);
    }

    /// Every handle of one owner.
    pub(super) fn handles_of(&self, owner: KeyOwner) -> impl Iterator<Item = u64> + '_ {
        self.keys
            .iter()
            .filter(move |k| k.owner == owner)
            .map(|k| k.handle)
    }

    /// Drops a key (its secret is zeroised with it).
    pub(super) fn remove(&mut self, handle: u64) {
        drop(self.keys.remove(handle));
        self.ready.remove(&handle);
    }
}

/// Keys derived from the keyring's root: stable across master key rotation,
/// so blind indexes and the audit chain's MAC never change.
pub(super) struct PurposeKeys {
    pub(super) index: hmac::Key,
    pub(super) audit: hmac::Key,
    pub(super) backup: Zeroizing<[u8; 32]>,
}

impl PurposeKeys {
    pub(super) fn derive(root: &[u8; 32]) -> VaultResult<Self> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"clinic-relay purpose keys v1").extract(root);
        let hmac_key = |info: &'static [u8]| -> VaultResult<hmac::Key> {
            prk.expand(&[info], hmac::HMAC_SHA256)
                .map(hmac::Key::from)
                .map_err(|_| VaultError::Rng)
        };
        let mut backup = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"backup"], hmac::HMAC_SHA256)
            .and_then(|okm| okm.fill(backup.as_mut()))
            .map_err(|_| VaultError::Rng)?;
        Ok(Self {
            index: hmac_key(b"blind-index")?,
            audit: hmac_key(b"audit-mac")?,
            backup,
        })
    }
}
