//! Patients in the vault: the record, its blind-index lookups, erasure.

use super::{AfterCommit, Owner, Tree, Txn, Vault, VaultError, VaultResult};
use crate::audit::AuditDraft;
use crate::model::{Patient, PatientId};
use jiff::Timestamp;

/// Index key prefixes, one per kind of lookup. MRN entries (prefix 1) are
/// no longer written: a patient's id is the keyed hash of the assigning
/// authority and MRN, so an MRN lookup goes straight to the record (see
/// [`Vault::find_patients_by_mrn`]). Stores written before hold such
/// entries until [`Vault::drop_retired_mrn_index`] removes them at open.
const IDX_MRN_RETIRED: u8 = 1;
const IDX_PHONE: u8 = 2;
/// Retired index entries removed per commit at open.
const RETIRE_BATCH: usize = 4_096;

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
        p.phone
            .iter()
            .map(|phone| index_key(IDX_PHONE, &self.blind_index("phone", phone), p.id))
            .collect()
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
        let (p, actor) = (p.clone(), actor.to_owned());
        self.write_blocking(move |v| {
            Ok::<_, VaultError>((v.patient_upsert_txn(&p, &actor, now)?, ()))
        })
        .map(|_| ())
    }

    /// The patient, or None when unknown or erased.
    pub fn get_patient(&self, id: PatientId) -> VaultResult<Option<Patient>> {
        super::records::absent_if_erased(self.get_json(Tree::Patients, &id.0))
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

    /// The patient with this MRN from this assigning authority (none or
    /// one): the id is derived from the two ([`Vault::patient_id_for_mrn`]),
    /// as every patient's is when the PMS or the API registers them, so no
    /// index entry is needed. An erased or merged-away patient is not found.
    pub fn find_patients_by_mrn(&self, authority: &str, mrn: &str) -> VaultResult<Vec<PatientId>> {
        Ok(self
            .patient_by_mrn(authority, mrn)?
            .map(|p| p.id)
            .into_iter()
            .collect())
    }

    /// The record [`Vault::find_patients_by_mrn`] finds, opened.
    pub fn patient_by_mrn(&self, authority: &str, mrn: &str) -> VaultResult<Option<Patient>> {
        let id = self.patient_id_for_mrn(authority, mrn);
        Ok(self.get_patient(id)?.filter(|p| p.mrn == mrn))
    }

    /// Removes the MRN index entries an earlier version wrote (about a third
    /// of a store's records, and a tree insert per new patient, for a lookup
    /// the id answers). Runs at open, a batch per commit; a crash in the
    /// middle leaves the rest for the next open.
    pub(super) fn drop_retired_mrn_index(&self) -> VaultResult<usize> {
        let mut removed = 0;
        loop {
            let keys = self.retired_mrn_keys(RETIRE_BATCH)?;
            if keys.is_empty() {
                return Ok(removed);
            }
            removed += keys.len();
            self.write_blocking(move |_| {
                let mut txn = Txn::new(Timestamp::UNIX_EPOCH);
                for k in keys {
                    txn.remove(Tree::PatientIndex, k);
                }
                Ok::<_, VaultError>((txn, ()))
            })?;
        }
    }

    /// Up to `limit` of the MRN index keys an earlier version wrote.
    fn retired_mrn_keys(&self, limit: usize) -> VaultResult<Vec<Vec<u8>>> {
        self.scan_keys_from(Tree::PatientIndex, &[IDX_MRN_RETIRED])
            .take_while(|r| {
                r.as_ref()
                    .map_or(true, |k| k.first() == Some(&IDX_MRN_RETIRED))
            })
            .take(limit)
            .collect()
    }

    /// Erases a patient: removes their records and index entries, writes the
    /// erasure ledger and an audit entry (durably), then destroys their data
    /// keys, and those of every patient merged into them. Anything of theirs
    /// left anywhere, including older copies of the store and backups, can no
    /// longer be opened. Returns false if the patient was unknown. Blocks:
    /// from async code use [`Vault::erase_patient_async`].
    pub fn erase_patient(&self, id: PatientId, actor: &str, now: Timestamp) -> VaultResult<bool> {
        let actor = actor.to_owned();
        self.write_blocking(move |v| v.erasure_txn(id, &actor, now))
            .map(|c| c.value)
    }

    /// [`Vault::erase_patient`] for async callers.
    pub async fn erase_patient_async(
        &self,
        id: PatientId,
        actor: &str,
        now: Timestamp,
    ) -> VaultResult<bool> {
        let actor = actor.to_owned();
        self.write(move |v| v.erasure_txn(id, &actor, now))
            .await
            .map(|c| c.value)
    }

    /// Decides an erasure (on the writer): the txn, and whether there was
    /// anything to erase. The keys go in an [`AfterCommit`] effect, once the
    /// ledger entry is durable.
    fn erasure_txn(&self, id: PatientId, actor: &str, now: Timestamp) -> VaultResult<(Txn, bool)> {
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
        let merged = self.merged_into(id)?;
        let mut txn = Txn::new(now);
        if existing.is_none() && !self.has_patient_key(id) && merged.is_empty() {
            // Nothing left here. A repeat of an erasure whose keyring copy
            // could not be written finishes the job now, or fails again.
            let erased_before = self.get(Tree::Erasures, &id.0)?.is_some();
            if erased_before && self.keyring_mirror_error().is_some() {
                return match self.retry_keyring_copy() {
                    None => Ok((txn, true)),
                    Some(why) => Err(VaultError::KeyringCopyStale(why)),
                };
            }
            return Ok((txn, false));
        }
        if let Some(p) = &existing {
            for k in self.index_keys(p) {
                txn.remove(Tree::PatientIndex, k);
            }
        }
        txn.remove(Tree::Patients, id.0);
        self.stage_remove_linked(&mut txn, id)?;
        txn.put_json(
            Tree::Erasures,
            id.0,
            Owner::System,
            &super::ErasureRecord {
                erased_at: now,
                handles: self.patient_handles(id),
            },
        )?;
        for (m, handles) in &merged {
            // The merged patient's own ledger entry, unless they were
            // registered again (then their own erasure is another request).
            if !self.has_patient_key(*m) || self.get(Tree::Erasures, &m.0)?.is_none() {
                txn.put_json(
                    Tree::Erasures,
                    m.0,
                    Owner::System,
                    &super::ErasureRecord {
                        erased_at: now,
                        handles: handles.clone(),
                    },
                )?;
            }
        }
        let mut audit = AuditDraft::new(actor, "patient.erase").subject(id.to_string());
        if !merged.is_empty() {
            audit = audit.detail("merged_patients_shredded", merged.len().to_string());
        }
        txn.audit(audit);
        txn.after_commit(AfterCommit::DestroyPatientKeys(id));
        for (m, handles) in merged {
            txn.after_commit(AfterCommit::DestroyHandles(m, handles));
        }
        Ok((txn, true))
    }
}

#[cfg(test)]
mod tests {
    use super::super::PATIENT_COUNT_KEY;
    use super::*;
    use crate::keys::MasterKey;

    fn patient(vault: &Vault, tag: &str) -> Patient {
        let mrn = format!("ZZIDXMRN{tag}");
        Patient {
            id: vault.patient_id_for_mrn("TESTHOSP", &mrn),
            mrn,
            family_name: format!("ZZIDXFAMILY{tag}"),
            given_name: "ZZIDXGIVEN".to_owned(),
            birth_date: None,
            phone: Some(format!("+4915550{tag:0>4}")),
            language: None,
            deceased: false,
            protected: false,
        }
    }

    /// The patient count follows creations, updates, a patient written
    /// twice in one commit, erasures, and reopens; a store without it (from
    /// before) is counted at open and the count stored by the next commit.
    #[test]
    fn the_patient_count_is_kept_by_every_commit_and_survives_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = MasterKey::generate().unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let c = {
            let vault = Vault::open(tmp.path(), &mk).unwrap();
            let (a, b, c) = (
                patient(&vault, "A"),
                patient(&vault, "B"),
                patient(&vault, "C"),
            );
            let (a2, b2) = (a.clone(), b.clone());
            vault
                .write_blocking(move |v| {
                    let mut txn = v.patient_upsert_txn(&a2, "test", now)?;
                    txn.extend(v.patient_upsert_txn(&b2, "test", now)?);
                    // The same new patient twice in one commit counts once.
                    let mut again = a2.clone();
                    again.given_name = "ZZIDXOTHER".to_owned();
                    txn.extend(v.patient_upsert_txn(&again, "test", now)?);
                    Ok::<_, VaultError>((txn, ()))
                })
                .unwrap();
            assert_eq!(vault.patient_count(), 2);
            vault.put_patient(&c, "test", now).unwrap();
            let mut b_moved = b.clone();
            b_moved.phone = Some("+4915550999".to_owned());
            vault.put_patient(&b_moved, "test", now).unwrap();
            assert_eq!(vault.patient_count(), 3, "an update is no new patient");
            assert!(vault.erase_patient(c.id, "test", now).unwrap());
            assert!(!vault.erase_patient(c.id, "test", now).unwrap());
            assert_eq!(vault.patient_count(), 2);
            vault.close().unwrap();
            c
        };
        let vault = Vault::open(tmp.path(), &mk).unwrap();
        assert_eq!(vault.patient_count(), 2);
        assert!(vault.verify().unwrap().problems.is_empty());
        // As a store from before the count: without its record.
        vault
            .commit({
                let mut txn = Txn::new(now);
                txn.remove(Tree::Meta, PATIENT_COUNT_KEY.to_vec());
                txn
            })
            .unwrap();
        vault.close().unwrap();
        let vault = Vault::open(tmp.path(), &mk).unwrap();
        assert_eq!(vault.patient_count(), 2, "counted at open");
        assert!(vault.get(Tree::Meta, PATIENT_COUNT_KEY).unwrap().is_none());
        vault.put_patient(&c, "test", now).unwrap();
        assert_eq!(vault.patient_count(), 3);
        vault.close().unwrap();
        let vault = Vault::open(tmp.path(), &mk).unwrap();
        assert_eq!(vault.patient_count(), 3);
        let stored = vault.get(Tree::Meta, PATIENT_COUNT_KEY).unwrap().unwrap();
        assert_eq!(stored, 3u64.to_be_bytes());
        let report = vault.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.patients, 3);
        vault.close().unwrap();
    }

    /// A store written by an earlier version holds an MRN index entry per
    /// patient. The next open removes them (more than one batch here), and
    /// both lookups still find every patient.
    #[test]
    fn an_earlier_versions_mrn_index_is_removed_at_open_and_lookups_still_work() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = MasterKey::generate().unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let n = RETIRE_BATCH + 10;
        let patients: Vec<Patient>;
        {
            let vault = Vault::open(tmp.path(), &mk).unwrap();
            patients = (0..n).map(|i| patient(&vault, &i.to_string())).collect();
            for chunk in patients.chunks(1_000) {
                let chunk = chunk.to_vec();
                vault
                    .write_blocking(move |v| {
                        let mut txn = Txn::new(now);
                        for p in &chunk {
                            txn.extend(v.patient_upsert_txn(p, "test", now)?);
                            // What the earlier version wrote besides.
                            let old =
                                index_key(IDX_MRN_RETIRED, &v.blind_index("mrn", &p.mrn), p.id);
                            txn.put(
                                Tree::PatientIndex,
                                old,
                                Owner::Patient(p.id),
                                p.id.0.to_vec(),
                            );
                        }
                        Ok::<_, VaultError>((txn, ()))
                    })
                    .unwrap();
            }
            let report = vault.verify().unwrap();
            assert!(
                !report.problems.is_empty(),
                "the old entries are not what this version expects"
            );
            // Closed without the open-time removal having run on this data.
            vault.close().unwrap();
        }
        let vault = Vault::open(tmp.path(), &mk).unwrap();
        assert!(vault.retired_mrn_keys(usize::MAX).unwrap().is_empty());
        let report = vault.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.patients, n);
        for p in [&patients[0], &patients[n - 1]] {
            assert_eq!(
                vault.find_patients_by_mrn("TESTHOSP", &p.mrn).unwrap(),
                vec![p.id]
            );
            let phone = p.phone.as_deref().unwrap();
            assert_eq!(vault.find_patients_by_phone(phone).unwrap(), vec![p.id]);
        }
        // Another authority's MRN of the same digits is another patient.
        assert!(vault
            .find_patients_by_mrn("OTHER", &patients[0].mrn)
            .unwrap()
            .is_empty());
        vault.close().unwrap();
    }
}
