//! The unwrapped keys arranged for the hot path, and the purpose keys
//! derived from the keyring's root.

use super::*;

/// A data key with what the keyring says about it.
///
/// Patient keys are kept as their 32 secret bytes and made ready for use
/// (AES key schedule, GHASH table: about 0.5 KiB) only while a value is
/// sealed or opened: a ready key for each of 100,000 patients would hold
/// some 70 MB for nothing, and preparing one costs well under a microsecond.
/// The few keys of no patient (system) are kept ready.
pub(super) struct ViewKey {
    pub(super) handle: u64,
    secret: Zeroizing<[u8; 32]>,
    ready: Option<Box<DataKey>>,
    pub(super) owner: KeyOwner,
    pub(super) gen: u32,
}

impl ViewKey {
    /// Runs `f` with the key ready for sealing or opening.
    pub(super) fn with_key<R>(&self, f: impl FnOnce(&DataKey) -> R) -> VaultResult<R> {
        match &self.ready {
            Some(key) => Ok(f(key)),
            None => {
                let key = DataKey::new(self.handle, &self.secret).map_err(|_| VaultError::Rng)?;
                Ok(f(&key))
            }
        }
    }
}

/// The unwrapped keys, arranged for the hot path.
pub(super) struct KeyView {
    pub(super) by_handle: HashMap<u64, Arc<ViewKey>>,
    pub(super) current: HashMap<KeyOwner, Arc<ViewKey>>,
}

impl KeyView {
    pub(super) fn build(ring: &Keyring) -> VaultResult<Self> {
        let mut view = KeyView {
            by_handle: HashMap::new(),
            current: HashMap::new(),
        };
        for e in ring.entries().filter(|e| e.owner != KeyOwner::Root) {
            view.add(e)?;
        }
        Ok(view)
    }

    pub(super) fn add(&mut self, e: &keyring::KeyEntry) -> VaultResult<()> {
        let ready = match e.owner {
            KeyOwner::Patient(_) => None,
            KeyOwner::Root | KeyOwner::System => Some(Box::new(
                DataKey::new(e.handle, &e.secret).map_err(|_| VaultError::Rng)?,
            )),
        };
        let vk = Arc::new(ViewKey {
            handle: e.handle,
            secret: e.secret.clone(),
            ready,
            owner: e.owner,
            gen: e.gen,
        });
        let newer = !e.retired
            && self
                .current
                .get(&e.owner)
                .is_none_or(|cur| (cur.gen, cur.handle) < (e.gen, e.handle));
        if newer {
            self.current.insert(e.owner, vk.clone());
        }
        self.by_handle.insert(e.handle, vk);
        Ok(())
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
