//! `Vault::verify`: the store's cross-record invariants, checked in one pass.
//!
//! Every blind-index entry points to a patient whose field produces it, and
//! every patient can be found under each of its fields; every patient link
//! points to a record of that patient and every record is linked; sequenced
//! trees never run past their stored high-water marks; the audit chain is
//! intact. Tests run it after every daemon they stop, so each test checks the
//! invariants for free (kanidm does the same after every test).

use super::records::LinkKind;
use super::store::Store;
use super::{Tree, Vault, VaultError, VaultResult};
use crate::model::{Appointment, LabResult, Patient, PatientId};
use std::collections::BTreeSet;

/// What [`Vault::verify`] found wrong, one line per problem (no PHI: trees,
/// pseudonymous ids and counts only).
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub problems: Vec<String>,
    pub patients: usize,
    /// Records sealed under keys that are gone (erased patients' leftovers
    /// after a restore): unreadable by design, not a problem.
    pub unreadable_erased: usize,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Vault {
    /// Checks the invariants above. Runs its reads as a job of the writer,
    /// so it sees one consistent state.
    pub fn verify(&self) -> VaultResult<VerifyReport> {
        let txn = super::Txn::new(jiff::Timestamp::UNIX_EPOCH);
        self.write_blocking(move |v| Ok::<_, VaultError>((txn, v.verify_now()?)))
            .map(|c| c.value)
    }

    fn verify_now(&self) -> VaultResult<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut expected_index: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut patients: BTreeSet<PatientId> = BTreeSet::new();
        let mut stored_patients: u64 = 0;
        for item in self.inner.store.scan_from(Tree::Patients, &[]) {
            let (k, v) = item?;
            stored_patients += 1;
            match self.open_value(Tree::Patients, k.as_ref(), v.as_ref()) {
                Ok(plain) => {
                    let p: Patient = serde_json::from_slice(&plain)
                        .map_err(|e| VaultError::decode(Tree::Patients, &e))?;
                    if p.id.0.as_slice() != k.as_ref() {
                        report
                            .problems
                            .push(format!("patient {} stored under another id", p.id));
                    }
                    expected_index.extend(self.patient_index_keys(&p));
                    patients.insert(p.id);
                }
                Err(VaultError::KeyUnavailable { .. }) => report.unreadable_erased += 1,
                Err(e) => report.problems.push(format!("a patient record: {e}")),
            }
        }
        report.patients = patients.len();
        let counted = crate::sync::lock(&self.inner.commit_lock).patients;
        if counted != stored_patients {
            report.problems.push(format!(
                "the patient count says {counted}, the store holds {stored_patients} patient records"
            ));
        }
        let mut seen_index = BTreeSet::new();
        for item in self.inner.store.scan_from(Tree::PatientIndex, &[]) {
            let (k, v) = item?;
            let key = k.as_ref().to_vec();
            match self.open_value(Tree::PatientIndex, &key, v.as_ref()) {
                Err(VaultError::KeyUnavailable { .. }) => {
                    report.unreadable_erased += 1;
                    continue;
                }
                Err(e) => report.problems.push(format!("an index entry: {e}")),
                Ok(id) => {
                    if !key.ends_with(&id) {
                        report
                            .problems
                            .push("an index entry names another patient than its key".to_owned());
                    }
                }
            }
            if !expected_index.contains(&key) {
                report.problems.push(format!(
                    "an index entry (kind {}) points to no patient with that value",
                    key.first().copied().unwrap_or_default()
                ));
            }
            seen_index.insert(key);
        }
        let missing = expected_index.difference(&seen_index).count();
        if missing > 0 {
            report.problems.push(format!(
                "{missing} patient lookup(s) missing from the index"
            ));
        }
        self.verify_links(&mut report)?;
        self.verify_erasures(&mut report)?;
        self.verify_sequences(&mut report)?;
        if let Err(e) = self.verify_audit() {
            report.problems.push(format!("audit chain: {e}"));
        }
        Ok(report)
    }

    /// Links point to records of their patient; records are linked.
    fn verify_links(&self, report: &mut VerifyReport) -> VaultResult<()> {
        let mut linked: BTreeSet<(Tree, Vec<u8>)> = BTreeSet::new();
        for item in self.inner.store.scan_from(Tree::PatientLinks, &[]) {
            let (k, _) = item?;
            let k = k.as_ref();
            let (Some(patient), Some(kind), Some(record)) = (
                k.get(..16)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(PatientId),
                k.get(16).copied(),
                k.get(17..),
            ) else {
                report.problems.push("a malformed patient link".to_owned());
                continue;
            };
            let owner = match kind {
                k if k == LinkKind::Appointment as u8 => {
                    linked.insert((Tree::Appointments, record.to_vec()));
                    self.record_owner::<Appointment>(Tree::Appointments, record, |a| a.patient)
                }
                k if k == LinkKind::Result as u8 => {
                    linked.insert((Tree::Results, record.to_vec()));
                    self.record_owner::<LabResult>(Tree::Results, record, |r| r.patient)
                }
                k if k == LinkKind::Merged as u8 => continue,
                _ => {
                    report
                        .problems
                        .push("a patient link of unknown kind".to_owned());
                    continue;
                }
            };
            match owner {
                Ok(Some(Some(owner))) if owner == patient => {}
                Ok(Some(Some(_))) => report.problems.push(format!(
                    "patient {patient} links a record of another patient"
                )),
                Ok(Some(None)) => report.unreadable_erased += 1,
                Ok(None) => report.problems.push(format!(
                    "patient {patient} links a record that does not exist"
                )),
                Err(e) => report.problems.push(format!("a linked record: {e}")),
            }
        }
        for tree in [Tree::Appointments, Tree::Results] {
            for item in self.inner.store.scan_from(tree, &[]) {
                let (k, _) = item?;
                if !linked.contains(&(tree, k.as_ref().to_vec())) {
                    report.problems.push(format!(
                        "a record in {} is linked from no patient",
                        tree.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Some(Some(owner)), Some(None) when sealed under an erased key, None
    /// when there is no such record.
    fn record_owner<T: serde::de::DeserializeOwned>(
        &self,
        tree: Tree,
        key: &[u8],
        owner: impl Fn(&T) -> PatientId,
    ) -> VaultResult<Option<Option<PatientId>>> {
        match self.get_json::<T>(tree, key) {
            Ok(Some(r)) => Ok(Some(Some(owner(&r)))),
            Ok(None) => Ok(None),
            Err(VaultError::KeyUnavailable { .. }) => Ok(Some(None)),
            Err(e) => Err(e),
        }
    }

    /// No key named in the erasure ledger is still in the keyring.
    fn verify_erasures(&self, report: &mut VerifyReport) -> VaultResult<()> {
        let view = crate::sync::read(&self.inner.keys);
        for item in self.scan_prefix(Tree::Erasures, &[]) {
            let (_, v) = item?;
            let record: super::ErasureRecord =
                serde_json::from_slice(&v).map_err(|e| VaultError::decode(Tree::Erasures, &e))?;
            let kept = record.handles.iter().filter(|h| view.has(**h)).count();
            if kept > 0 {
                report.problems.push(format!(
                    "{kept} key(s) of an erased patient are still in the keyring"
                ));
            }
        }
        Ok(())
    }

    /// No sequenced tree holds a seq above what the vault will hand out next.
    fn verify_sequences(&self, report: &mut VerifyReport) -> VaultResult<()> {
        for tree in Tree::SEQUENCED {
            let last_key = self.last_key_seq(tree)?;
            let next_from = self.last_seq(tree);
            if last_key > next_from {
                report.problems.push(format!(
                    "{} holds seq {last_key} beyond its high-water mark {next_from}",
                    tree.name()
                ));
            }
        }
        Ok(())
    }
}
