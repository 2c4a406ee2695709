//! Erasure: destroying keys once an erasure is durable, reconciling after
//! a crash, the erasure ledger.

use super::*;

impl Vault {
    /// Destroys a patient's data keys. Callers record the erasure (ledger and
    /// audit entry, durably) first; [`Vault::reconcile_erasures`] finishes the
    /// job after a crash between the two.
    pub(super) fn destroy_keys(&self, id: PatientId, handles: &[u64]) -> VaultResult<()> {
        let mut ring = crate::sync::lock(&self.inner.keyring);
        self.destroy_keys_locked(&mut ring, id, handles)
    }

    pub(super) fn destroy_keys_locked(
        &self,
        ring: &mut Keyring,
        id: PatientId,
        handles: &[u64],
    ) -> VaultResult<()> {
        // The staged keys into the file and the store's log emptied first:
        // the log holds the lines of new patients' keys until then, and an
        // erased patient's line must not outlive the erasure there.
        self.checkpoint_locked(ring)?;
        // The file first (the view only read, so seals and opens go on
        // while it is written), then the view.
        ring.destroy(&crate::sync::read(&self.inner.keys), handles)?;
        let mut view = crate::sync::write(&self.inner.keys);
        for h in handles {
            view.remove(*h);
        }
        if view
            .current_handle(KeyOwner::Patient(id))
            .is_some_and(|h| handles.contains(&h))
        {
            view.forget_current(KeyOwner::Patient(id));
        }
        Ok(())
    }

    /// Runs what a durable commit asked for (see [`AfterCommit`]).
    pub(super) fn run_effect(&self, effect: AfterCommit) -> VaultResult<()> {
        match effect {
            AfterCommit::DestroyPatientKeys(id) => {
                // The handles are read under the keyring lock, at the moment
                // they are destroyed: a rotation that began since the erasure
                // was decided added keys for this patient, and they go too.
                let mut ring = crate::sync::lock(&self.inner.keyring);
                let handles: Vec<u64> = crate::sync::read(&self.inner.keys)
                    .handles_of(KeyOwner::Patient(id))
                    .collect();
                if !handles.is_empty() {
                    self.destroy_keys_locked(&mut ring, id, &handles)?;
                }
                Self::keyring_copy_current(&ring)
            }
            AfterCommit::DestroyHandles(id, handles) => {
                let mut ring = crate::sync::lock(&self.inner.keyring);
                if !handles.is_empty() {
                    self.destroy_keys_locked(&mut ring, id, &handles)?;
                }
                Self::keyring_copy_current(&ring)
            }
            AfterCommit::RetirePatientKeys(id) => {
                let mut ring = crate::sync::lock(&self.inner.keyring);
                let owner = KeyOwner::Patient(id);
                if ring.retire_owner(&crate::sync::read(&self.inner.keys), owner)? {
                    crate::sync::write(&self.inner.keys).retire_owner(owner);
                }
                Ok(())
            }
        }
    }

    /// An erasure is done only when the keyring copy kept for restores no
    /// longer holds the keys either: a stale copy would bring the patient
    /// back with the next restore.
    pub(super) fn keyring_copy_current(ring: &Keyring) -> VaultResult<()> {
        match ring.mirror_error() {
            None => Ok(()),
            Some(why) => Err(VaultError::KeyringCopyStale(why.to_owned())),
        }
    }

    /// Tries again to bring the keyring copy up to date; the reason if it
    /// is still stale.
    pub(crate) fn retry_keyring_copy(&self) -> Option<String> {
        let mut ring = crate::sync::lock(&self.inner.keyring);
        ring.retry_mirror();
        ring.mirror_error().map(str::to_owned)
    }

    /// The handles of every key a patient has now.
    pub(super) fn patient_handles(&self, id: PatientId) -> Vec<u64> {
        let _ring = crate::sync::lock(&self.inner.keyring);
        crate::sync::read(&self.inner.keys)
            .handles_of(KeyOwner::Patient(id))
            .collect()
    }

    /// Destroys the keys named in the erasure ledger that still exist (a
    /// crash after the ledger entry, before the keys went). Only the handles
    /// recorded at erasure: a patient registered again afterwards keeps the
    /// new key.
    pub(super) fn reconcile_erasures(&self) -> VaultResult<()> {
        let mut pending: Vec<(PatientId, Vec<u64>)> = Vec::new();
        for entry in self.scan_prefix(Tree::Erasures, &[]) {
            let (k, v) = entry?;
            let id = <[u8; 16]>::try_from(k.as_slice()).ok().map(PatientId);
            let record = serde_json::from_slice::<ErasureRecord>(&v).ok();
            if let (Some(id), Some(record)) = (id, record) {
                pending.push((id, record.handles));
            }
        }
        for (id, handles) in pending {
            let present: Vec<u64> = {
                let view = crate::sync::read(&self.inner.keys);
                handles.into_iter().filter(|h| view.has(*h)).collect()
            };
            if !present.is_empty() {
                self.destroy_keys(id, &present)?;
            }
        }
        Ok(())
    }

    /// Pseudonymous ids of erased patients, with the time of erasure.
    pub fn erasure_ledger(&self) -> VaultResult<Vec<(PatientId, Timestamp)>> {
        self.scan_prefix(Tree::Erasures, &[])
            .map(|r| {
                let (k, v) = r?;
                let id = <[u8; 16]>::try_from(k.as_slice())
                    .map(PatientId)
                    .map_err(|_| VaultError::Encode)?;
                let record: ErasureRecord = serde_json::from_slice(&v)
                    .map_err(|e| VaultError::decode(Tree::Erasures, &e))?;
                Ok((id, record.erased_at))
            })
            .collect()
    }
}
