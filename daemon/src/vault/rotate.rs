//! Master key rotation.
//!
//! 1. `begin`: the keyring is rewritten (atomically) with every key wrapped
//!    under the new master key, plus a new generation of system and patient
//!    keys, which new writes use at once.
//! 2. `reseal`: every record still sealed under an old-generation key is
//!    re-sealed under its owner's new key, in small batches under the commit
//!    lock (writers pause for one batch at a time; readers never wait, and
//!    read both generations throughout).
//! 3. `finish`: once the re-sealed data is durable, the old generation is
//!    dropped from the keyring (atomic rewrite).
//!
//! A crash anywhere resumes cleanly: the keyring says a rotation is under way,
//! and re-sealing skips what is already new. Blind indexes and the audit MAC
//! come from the root key, which is only re-wrapped, so they never change.

use super::keyring::KeyOwner;
use super::store::{Store, Write};
use super::{Owner, Tree, Vault, VaultError, VaultResult};
use crate::keys::MasterKey;

const BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotationReport {
    pub resealed: u64,
    pub keys_retired: usize,
}

impl Vault {
    /// True while a rotation has begun and not finished.
    pub fn rotation_pending(&self) -> bool {
        crate::sync::lock(&self.inner.keyring)
            .meta
            .rotating_from
            .is_some()
    }

    /// The keyring's current key generation.
    pub fn key_generation(&self) -> u32 {
        crate::sync::lock(&self.inner.keyring).meta.generation
    }

    /// Rotates to `new_mk`: begin (unless a rotation is already under way),
    /// re-seal, finish. Safe to call again after a crash.
    pub fn rotate_master_key(&self, new_mk: &MasterKey) -> VaultResult<RotationReport> {
        self.begin_rotation(new_mk)?;
        self.resume_rotation()
    }

    /// Step 1 alone: re-wrap under `new_mk` and start using new data keys.
    /// From here on only `new_mk` opens this data directory.
    pub fn begin_rotation(&self, new_mk: &MasterKey) -> VaultResult<()> {
        // Under the commit lock, so that a commit sees either the old
        // generation throughout (and lands before any re-seal batch) or the
        // new one (see `apply`).
        let _commits = crate::sync::lock(&self.inner.commit_lock);
        let mut ring = crate::sync::lock(&self.inner.keyring);
        if ring.meta.rotating_from.is_none() {
            ring.begin_rotation(new_mk)?;
            let view = super::KeyView::build(&ring)?;
            *crate::sync::write(&self.inner.keys) = view;
        }
        Ok(())
    }

    /// Finishes a rotation that has begun (no-op otherwise).
    pub fn resume_rotation(&self) -> VaultResult<RotationReport> {
        if !self.rotation_pending() {
            return Ok(RotationReport::default());
        }
        let mut report = RotationReport::default();
        for tree in Tree::ALL {
            report.resealed += self.reseal_tree(tree)?;
        }
        // The re-sealed data must be on disk before the old keys go.
        self.flush()?;
        let retired = crate::sync::lock(&self.inner.keyring).finish_rotation()?;
        report.keys_retired = retired.len();
        Ok(report)
    }

    fn reseal_tree(&self, tree: Tree) -> VaultResult<u64> {
        let generation = self.key_generation();
        let mut start: Vec<u8> = Vec::new();
        let mut total = 0u64;
        loop {
            // Holding the commit lock makes read-reseal-write atomic with
            // respect to committers, so no concurrent update is overwritten.
            let _chain = crate::sync::lock(&self.inner.commit_lock);
            let mut writes = Vec::new();
            let mut last_key = None;
            for item in self.inner.store.scan_from(tree, &start).take(BATCH) {
                let (k, v) = item?;
                last_key = Some(k.as_ref().to_vec());
                let handle =
                    super::seal::handle_of(v.as_ref()).map_err(|source| VaultError::Damaged {
                        tree: tree.name(),
                        source,
                    })?;
                let (owner, gen) = {
                    let view = crate::sync::read(&self.inner.keys);
                    match view.by_handle.get(&handle) {
                        Some(vk) => (vk.owner, vk.gen),
                        // Sealed under an erased patient's key: nothing to carry over.
                        None => continue,
                    }
                };
                if gen >= generation {
                    continue;
                }
                let plain =
                    zeroize::Zeroizing::new(self.open_value(tree, k.as_ref(), v.as_ref())?);
                let owner = match owner {
                    KeyOwner::Patient(p) => Owner::Patient(p),
                    KeyOwner::System | KeyOwner::Root => Owner::System,
                };
                let value = self.seal_value(tree, k.as_ref(), owner, &plain)?;
                writes.push(Write::Put {
                    tree,
                    key: k.as_ref().to_vec(),
                    value,
                });
            }
            total += writes.len() as u64;
            if !writes.is_empty() {
                self.inner.store.apply(&writes)?;
            }
            match last_key {
                None => return Ok(total),
                Some(mut k) => {
                    // Continue strictly after the last key seen.
                    k.push(0);
                    start = k;
                }
            }
        }
    }
}
