//! Patients in the vault: the record, its blind-index lookups, erasure.

use super::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use crate::audit::AuditDraft;
use crate::model::{Patient, PatientId};
use jiff::Timestamp;

/// Index key prefixes, one per kind of lookup.
const IDX_MRN: u8 = 1;
const IDX_PHONE: u8 = 2;

fn index_key(kind: u8, blind: &[u8; 32], id: PatientId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 32 + 16);
    k.push(kind);
    k.extend_from_slice(blind);
    k.extend_from_slice(&id.0);
    k
}

impl Vault {
    /// The stable pseudonymous id of the patient with this MRN from this
    /// assigning authority: a keyed hash, so it reveals nothing without the key.
    pub fn patient_id_for_mrn(&self, authority: &str, mrn: &str) -> PatientId {
        let bi = self.blind_index("patient-id", &format!("{authority}\u{1f}{mrn}"));
        let mut id = [0u8; 16];
        id.copy_from_slice(bi.get(..16).unwrap_or(&[0u8; 16]));
        PatientId(id)
    }

    /// The blind-index keys under which `p` can be found.
    pub fn patient_index_keys(&self, p: &Patient) -> Vec<Vec<u8>> {
        self.index_keys(p)
    }

    fn index_keys(&self, p: &Patient) -> Vec<Vec<u8>> {
        let mut keys = vec![index_key(IDX_MRN, &self.blind_index("mrn", &p.mrn), p.id)];
        if let Some(phone) = &p.phone {
            keys.push(index_key(
                IDX_PHONE,
                &self.blind_index("phone", phone),
                p.id,
            ));
        }
        keys
    }

    /// Builds the txn that creates or updates a patient (record, index
    /// entries, audit entry). Creates the patient's data key if needed.
    pub fn patient_upsert_txn(&self, p: &Patient, actor: &str, now: Timestamp) -> VaultResult<Txn> {
        self.ensure_patient_key(p.id)?;
        let mut txn = Txn::new(now);
        // A record under a destroyed key (an erasure newer than a restored
        // backup) is gone for good: treat it as absent.
        let previous = match self.get_patient(p.id) {
            Err(VaultError::KeyUnavailable { .. }) => None,
            other => other?,
        };
        if previous.as_ref() == Some(p) {
            // Unchanged (every SIU and ORU repeats the PID): nothing to write
            // and nothing to audit.
            return Ok(txn);
        }
        let new_keys = self.index_keys(p);
        if let Some(old) = &previous {
            for k in self.index_keys(old) {
                if !new_keys.contains(&k) {
                    txn.remove(Tree::PatientIndex, k);
                }
            }
        }
        for k in new_keys {
            txn.put(Tree::PatientIndex, k, Owner::Patient(p.id), p.id.0.to_vec());
        }
        txn.put_json(Tree::Patients, p.id.0, Owner::Patient(p.id), p)?;
        let action = if previous.is_some() {
            "patient.update"
        } else {
            "patient.create"
        };
        txn.audit(AuditDraft::new(actor, action).subject(p.id.to_string()));
        Ok(txn)
    }

    /// Creates or updates a patient and returns once it is durable.
    pub fn put_patient(&self, p: &Patient, actor: &str, now: Timestamp) -> VaultResult<()> {
        let txn = self.patient_upsert_txn(p, actor, now)?;
        self.commit(txn).map(|_| ())
    }

    pub fn get_patient(&self, id: PatientId) -> VaultResult<Option<Patient>> {
        self.get_json(Tree::Patients, &id.0)
    }

    fn find_by(&self, kind: u8, domain: &str, value: &str) -> VaultResult<Vec<PatientId>> {
        let mut prefix = vec![kind];
        prefix.extend_from_slice(&self.blind_index(domain, value));
        self.scan_prefix(Tree::PatientIndex, &prefix)
            .map(|r| {
                let (_, v) = r?;
                <[u8; 16]>::try_from(v.as_slice())
                    .map(PatientId)
                    .map_err(|_| VaultError::Encode)
            })
            .collect()
    }

    pub fn find_patients_by_phone(&self, e164: &str) -> VaultResult<Vec<PatientId>> {
        self.find_by(IDX_PHONE, "phone", e164)
    }

    pub fn find_patients_by_mrn(&self, mrn: &str) -> VaultResult<Vec<PatientId>> {
        self.find_by(IDX_MRN, "mrn", mrn)
    }

    /// Erases a patient: removes their records and index entries, writes the
    /// erasure ledger and an audit entry (durably), then destroys their data
    /// key. Anything of theirs left anywhere, including older copies of the
    /// store and backups, can no longer be opened. Returns false if the
    /// patient was unknown.
    pub fn erase_patient(&self, id: PatientId, actor: &str, now: Timestamp) -> VaultResult<bool> {
        let existing = match self.get_patient(id) {
            Ok(p) => p,
            // A damaged record must not block erasure; the key goes anyway.
            Err(
                VaultError::Damaged { .. }
                | VaultError::Decode { .. }
                | VaultError::KeyUnavailable { .. },
            ) => None,
            Err(e) => return Err(e),
        };
        if existing.is_none() && !self.has_patient_key(id) {
            return Ok(false);
        }
        let mut txn = Txn::new(now);
        if let Some(p) = &existing {
            for k in self.index_keys(p) {
                txn.remove(Tree::PatientIndex, k);
            }
        }
        txn.remove(Tree::Patients, id.0);
        self.stage_remove_linked(&mut txn, id)?;
        let handles = self.patient_handles(id);
        let record = super::ErasureRecord {
            erased_at: now,
            handles: handles.clone(),
        };
        txn.put_json(Tree::Erasures, id.0, Owner::System, &record)?;
        txn.audit(AuditDraft::new(actor, "patient.erase").subject(id.to_string()));
        self.commit(txn)?;
        self.destroy_keys(id, &handles)?;
        Ok(true)
    }
}
