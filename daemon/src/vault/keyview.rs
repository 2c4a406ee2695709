//! The unwrapped keys arranged for the hot path, and the purpose keys
//! derived from the keyring's root.

use super::*;

/// A data key with what the keyring says about it.
pub(super) struct ViewKey {
    pub(super) key: DataKey,
    pub(super) owner: KeyOwner,
    pub(super) gen: u32,
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
        let vk = Arc::new(ViewKey {
            key: DataKey::new(e.handle, &e.secret).map_err(|_| VaultError::Rng)?,
            owner: e.owner,
            gen: e.gen,
        });
        let newer = !e.retired
            && self
                .current
                .get(&e.owner)
                .is_none_or(|cur| (cur.gen, cur.key.handle) < (e.gen, e.handle));
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
