//! Master key rotation.
//!
//! 1. `begin`: the keyring is rewritten (atomically) with every key wrapped
//!    under the new master key, plus a new generation of system and patient
//!    keys, which new writes use at once.
//! 2. `reseal`: every record still sealed under an old-generation key is
//!    re-sealed under its owner's new key, in small batches, each a job of
//!    the vault's writer (writers wait for one batch at a time; readers never
//!    wait, and read both generations throughout).
//! 3. `finish`: once the re-sealed data is durable, the old generation is
//!    dropped from the keyring (atomic rewrite).
//!
//! A crash anywhere resumes cleanly: the keyring says a rotation is under way,
//! and re-sealing skips what is already new. Blind indexes and the audit MAC
//! come from the root key, which is only re-wrapped, so they never change.

use super::keyring::KeyOwner;
use super::store::Store;
use super::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use crate::keys::MasterKey;

const BATCH: usize = 256;

/// How many records a re-seal batch staged, and the key to go on from.
type ResealStep = (u64, Option<Vec<u8>>);

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
    /// From here on only `new_mk` opens this data directory. A job of the
    /// writer, so that no commit is half sealed under either generation.
    pub fn begin_rotation(&self, new_mk: &MasterKey) -> VaultResult<()> {
        let mk = MasterKey::from_bytes(*new_mk.expose());
        self.write_blocking(move |v| {
            let mut ring = crate::sync::lock(&v.inner.keyring);
            if ring.meta.rotating_from.is_none() {
                // No line wrapped under the old master key left in the
                // store's log, nor staged keys left out of the file.
                v.checkpoint_locked(&mut ring)?;
                let added = ring.begin_rotation(&crate::sync::read(&v.inner.keys), &mk)?;
                let mut view = crate::sync::write(&v.inner.keys);
                for entry in &added {
                    view.add(entry)?;
                }
            }
            Ok::<_, VaultError>((Txn::new(jiff::Timestamp::UNIX_EPOCH), ()))
        })
        .map(|_| ())
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
        let retired = {
            let mut ring = crate::sync::lock(&self.inner.keyring);
            let retired = ring.finish_rotation(&crate::sync::read(&self.inner.keys))?;
            crate::sync::write(&self.inner.keys).mark_retired(&retired);
            retired
        };
        report.keys_retired = retired.len();
        Ok(report)
    }

    fn reseal_tree(&self, tree: Tree) -> VaultResult<u64> {
        let mut start: Vec<u8> = Vec::new();
        let mut total = 0u64;
        loop {
            // One batch per writer job: read, re-seal and write back are
            // atomic with respect to every other change, and writers wait
            // for one batch at a time, never for the whole rotation.
            let from = std::mem::take(&mut start);
            let (resealed, next) = self
                .write_blocking(move |v| v.reseal_batch(tree, &from))?
                .value;
            total += resealed;
            match next {
                None => return Ok(total),
                Some(k) => start = k,
            }
        }
    }

    /// Stages up to [`BATCH`] records of `tree` from `start` that are still
    /// sealed under an older generation, to be sealed again under their
    /// owner's current key. Returns the count and where to go on from.
    fn reseal_batch(&self, tree: Tree, start: &[u8]) -> VaultResult<(Txn, ResealStep)> {
        let generation = self.key_generation();
        let mut txn = Txn::new(jiff::Timestamp::UNIX_EPOCH);
        let mut resealed = 0u64;
        let mut last_key = None;
        for item in self.inner.store.scan_from(tree, start).take(BATCH) {
            let (k, v) = item?;
            last_key = Some(k.as_ref().to_vec());
            let handle =
                super::seal::handle_of(v.as_ref()).map_err(|source| VaultError::Damaged {
                    tree: tree.name(),
                    source,
                })?;
            let (owner, gen) = {
                let view = crate::sync::read(&self.inner.keys);
                match view.get(handle) {
                    Some(vk) => (vk.owner, vk.gen),
                    // Sealed under an erased patient's key: nothing to carry over.
                    None => continue,
                }
            };
            if gen >= generation {
                continue;
            }
            let owner = match owner {
                KeyOwner::Patient(p) => Owner::Patient(p),
                KeyOwner::System | KeyOwner::Root => Owner::System,
            };
            if self.sealing_key(owner).is_err() {
                // A merged patient's retired key: it stays readable as it is.
                continue;
            }
            let plain = self.open_value(tree, k.as_ref(), v.as_ref())?;
            txn.put(tree, k.as_ref().to_vec(), owner, plain);
            resealed += 1;
        }
        // Continue strictly after the last key seen.
        let next = last_key.map(|mut k| {
            k.push(0);
            k
        });
        Ok((txn, (resealed, next)))
    }
}
