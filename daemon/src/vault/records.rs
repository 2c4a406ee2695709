//! Typed records beside patients: appointments, results, slots, consent,
//! the event feed, and the links that tie a patient's records together.
//!
//! Record keys that would reveal an identifier (appointment ids, order
//! numbers) are blind indexes. Everything that belongs to a patient is sealed
//! with that patient's key and linked from them, so merges can move it and
//! erasure can find it.

use super::store::Store;
use super::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use crate::model::{Appointment, Consent, Event, LabResult, PatientId, Slot};
use std::sync::Arc;

/// The kinds of record a patient link points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkKind {
    Appointment = 1,
    Result = 2,
    /// A patient merged into this one (ADT^A40); the record key is the
    /// merged patient's id. Erasing the survivor shreds their keys too:
    /// older copies of the store still hold data sealed under them.
    Merged = 3,
}

impl LinkKind {
    /// The tree holding the linked records (none for merged patients).
    fn tree(self) -> Option<Tree> {
        match self {
            LinkKind::Appointment => Some(Tree::Appointments),
            LinkKind::Result => Some(Tree::Results),
            LinkKind::Merged => None,
        }
    }
}

/// A record sealed under a key that is gone (an erased patient's, after a
/// restored backup) is absent for every decision: it can never be read again.
pub(super) fn absent_if_erased<T>(r: VaultResult<Option<T>>) -> VaultResult<Option<T>> {
    match r {
        Err(VaultError::KeyUnavailable { .. }) => Ok(None),
        other => other,
    }
}

fn link_key(patient: PatientId, kind: LinkKind, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + 1 + record_key.len());
    k.extend_from_slice(&patient.0);
    k.push(kind as u8);
    k.extend_from_slice(record_key);
    k
}

impl Vault {
    pub fn appointment_key(&self, id: &str) -> Vec<u8> {
        self.blind_index("appointment", id).to_vec()
    }

    pub fn result_key(&self, order_number: &str) -> Vec<u8> {
        self.blind_index("order", order_number).to_vec()
    }

    pub fn get_appointment(&self, id: &str) -> VaultResult<Option<Appointment>> {
        absent_if_erased(self.get_json(Tree::Appointments, &self.appointment_key(id)))
    }

    /// Adds the appointment (and its link from the patient) to `txn`.
    pub fn stage_appointment(&self, txn: &mut Txn, appt: &Appointment) -> VaultResult<()> {
        let key = self.appointment_key(&appt.id);
        txn.put(
            Tree::PatientLinks,
            link_key(appt.patient, LinkKind::Appointment, &key),
            Owner::Patient(appt.patient),
            Vec::new(),
        );
        txn.put_json(Tree::Appointments, key, Owner::Patient(appt.patient), appt)
    }

    /// Removes a patient's link to a record (the record moved to another patient).
    pub fn stage_unlink(
        &self,
        txn: &mut Txn,
        patient: PatientId,
        kind: LinkKind,
        record_key: &[u8],
    ) {
        txn.remove(Tree::PatientLinks, link_key(patient, kind, record_key));
    }

    pub fn get_result(&self, order_number: &str) -> VaultResult<Option<LabResult>> {
        absent_if_erased(self.get_json(Tree::Results, &self.result_key(order_number)))
    }

    pub fn stage_result(&self, txn: &mut Txn, result: &LabResult) -> VaultResult<()> {
        let key = self.result_key(&result.order_number);
        txn.put(
            Tree::PatientLinks,
            link_key(result.patient, LinkKind::Result, &key),
            Owner::Patient(result.patient),
            Vec::new(),
        );
        txn.put_json(Tree::Results, key, Owner::Patient(result.patient), result)
    }

    /// The record keys of one kind linked from a patient.
    pub fn linked(&self, patient: PatientId, kind: LinkKind) -> VaultResult<Vec<Vec<u8>>> {
        let mut prefix = patient.0.to_vec();
        prefix.push(kind as u8);
        let skip = prefix.len();
        self.inner
            .store
            .scan_from(Tree::PatientLinks, &prefix)
            .take_while(|r| {
                r.as_ref()
                    .map_or(true, |(k, _)| k.as_ref().starts_with(&prefix))
            })
            .map(|r| {
                let (k, _) = r?;
                Ok(k.as_ref().get(skip..).unwrap_or_default().to_vec())
            })
            .collect()
    }

    pub fn appointments_of(&self, patient: PatientId) -> VaultResult<Vec<Appointment>> {
        let mut out = Vec::new();
        for key in self.linked(patient, LinkKind::Appointment)? {
            if let Some(a) =
                absent_if_erased(self.get_json::<Appointment>(Tree::Appointments, &key))?
            {
                out.push(a);
            }
        }
        out.sort_by_key(|a| a.start);
        Ok(out)
    }

    /// Moves every linked record and the consent of `from` to `to` (an
    /// ADT^A40 merge), re-sealed under `to`'s key, in `txn`.
    pub fn stage_merge(&self, txn: &mut Txn, from: PatientId, to: PatientId) -> VaultResult<usize> {
        let mut moved = 0;
        for key in self.linked(from, LinkKind::Appointment)? {
            if let Some(mut a) =
                absent_if_erased(self.get_json::<Appointment>(Tree::Appointments, &key))?
            {
                a.patient = to;
                txn.remove(
                    Tree::PatientLinks,
                    link_key(from, LinkKind::Appointment, &key),
                );
                self.stage_appointment(txn, &a)?;
                moved += 1;
            }
        }
        for key in self.linked(from, LinkKind::Result)? {
            if let Some(mut r) = absent_if_erased(self.get_json::<LabResult>(Tree::Results, &key))?
            {
                r.patient = to;
                txn.remove(Tree::PatientLinks, link_key(from, LinkKind::Result, &key));
                self.stage_result(txn, &r)?;
                moved += 1;
            }
        }
        if let Some(mut c) = self.get_consent(from)? {
            txn.remove(Tree::Consents, from.0);
            if self.get_consent(to)?.is_none() {
                c.patient = to;
                txn.put_json(Tree::Consents, to.0, Owner::Patient(to), &c)?;
            }
        }
        crate::care::ledger::stage_move(self, txn, from, to)?;
        // Remember which keys the survivor's erasure must also destroy: the
        // merged patient's keys as they are now (older copies of the store
        // hold data sealed under them), and those of whoever had been merged
        // into them. The merged patient's keys are retired: should the PMS
        // register them again, they get a new key, which the survivor's
        // erasure leaves alone.
        let mut absorbed = self.merged_into(from)?;
        for (m, _) in &absorbed {
            txn.remove(Tree::PatientLinks, link_key(from, LinkKind::Merged, &m.0));
        }
        absorbed.push((from, self.patient_handles(from)));
        for (m, handles) in absorbed {
            txn.put_json(
                Tree::PatientLinks,
                link_key(to, LinkKind::Merged, &m.0),
                Owner::Patient(to),
                &handles,
            )?;
        }
        txn.after_commit(super::AfterCommit::RetirePatientKeys(from));
        Ok(moved)
    }

    /// The patients merged into `patient` (directly or through earlier
    /// merges), each with the key handles they had when merged.
    pub fn merged_into(&self, patient: PatientId) -> VaultResult<Vec<(PatientId, Vec<u64>)>> {
        let mut prefix = patient.0.to_vec();
        prefix.push(LinkKind::Merged as u8);
        let skip = prefix.len();
        let mut out = Vec::new();
        for item in self.scan_prefix(Tree::PatientLinks, &prefix) {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(VaultError::KeyUnavailable { .. }) => continue,
                Err(e) => return Err(e),
            };
            let Some(id) = k
                .get(skip..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(PatientId)
            else {
                continue;
            };
            // Links written before handles were recorded hold nothing.
            let handles: Vec<u64> = serde_json::from_slice(&v).unwrap_or_default();
            out.push((id, handles));
        }
        Ok(out)
    }

    /// Removes everything linked from a patient (for erasure), in `txn`.
    pub(super) fn stage_remove_linked(&self, txn: &mut Txn, patient: PatientId) -> VaultResult<()> {
        for kind in [LinkKind::Appointment, LinkKind::Result, LinkKind::Merged] {
            for key in self.linked(patient, kind)? {
                if let Some(tree) = kind.tree() {
                    txn.remove(tree, key.clone());
                }
                txn.remove(Tree::PatientLinks, link_key(patient, kind, &key));
            }
        }
        txn.remove(Tree::Consents, patient.0);
        crate::care::ledger::stage_remove(self, txn, patient)?;
        Ok(())
    }

    pub fn get_consent(&self, patient: PatientId) -> VaultResult<Option<Consent>> {
        absent_if_erased(self.get_json(Tree::Consents, &patient.0))
    }

    pub fn stage_consent(&self, txn: &mut Txn, consent: &Consent) -> VaultResult<()> {
        let actor = crate::care::ledger::default_actor(consent.source);
        self.stage_consent_by(txn, consent, actor)
    }

    /// [`Self::stage_consent`], recording `actor` in the consent ledger.
    pub fn stage_consent_by(
        &self,
        txn: &mut Txn,
        consent: &Consent,
        actor: &str,
    ) -> VaultResult<()> {
        crate::care::ledger::stage(txn, consent, actor)?;
        txn.put_json(
            Tree::Consents,
            consent.patient.0,
            Owner::Patient(consent.patient),
            consent,
        )
    }

    pub fn slots(&self) -> VaultResult<Vec<Slot>> {
        self.scan_prefix(Tree::Slots, &[])
            .map(|r| {
                let (_, v) = r?;
                serde_json::from_slice(&v).map_err(|e| VaultError::decode(Tree::Slots, &e))
            })
            .collect()
    }

    /// Replaces the whole set of open slots, in `txn`.
    pub fn stage_replace_slots(&self, txn: &mut Txn, slots: &[Slot]) -> VaultResult<()> {
        for r in self.inner.store.scan_from(Tree::Slots, &[]) {
            let (k, _) = r?;
            txn.remove(Tree::Slots, k.as_ref().to_vec());
        }
        for s in slots {
            txn.put_json(Tree::Slots, s.id.as_bytes().to_vec(), Owner::System, s)?;
        }
        // Should this txn commit, the new table is this one: kept ready so
        // the first list after it does not decode the whole table.
        let mut sorted = slots.to_vec();
        sort_by_start(&mut sorted);
        let token = self.stage_slots_changed(txn)?;
        self.slot_cache()
            .expect(token, Pending::Replace(Arc::new(sorted)));
        Ok(())
    }

    /// Takes one slot out of the table, in `txn` (the booking flow: the PMS
    /// booked it, so it is no longer open until the next replacement).
    pub fn stage_remove_slot(&self, txn: &mut Txn, id: &str) -> VaultResult<()> {
        txn.remove(Tree::Slots, id.as_bytes().to_vec());
        let base = self.slots_generation()?;
        let token = self.stage_slots_changed(txn)?;
        self.slot_cache().expect(
            token,
            Pending::Remove {
                base,
                id: id.to_owned(),
            },
        );
        Ok(())
    }

    /// A new generation of the slot table, committed with the change: the
    /// in-memory copy ([`Vault::slots_by_start`]) is stale once it differs.
    /// Random, not a counter: a txn that never commits must not leave its
    /// expectation under a number a later txn commits. One per txn (a
    /// second change in the same txn keeps the first's).
    fn stage_slots_changed(&self, txn: &mut Txn) -> VaultResult<u64> {
        if let Some(Ok(Some(token))) = txn.staged_json::<u64>(Tree::Meta, SLOTS_GENERATION) {
            return Ok(token);
        }
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&self.inner.rng, &mut bytes).map_err(|_| VaultError::Rng)?;
        let token = u64::from_be_bytes(bytes);
        txn.put_json(Tree::Meta, SLOTS_GENERATION, Owner::System, &token)?;
        Ok(token)
    }

    fn slots_generation(&self) -> VaultResult<Option<u64>> {
        self.get_json(Tree::Meta, SLOTS_GENERATION)
    }

    fn slot_cache(&self) -> std::sync::MutexGuard<'_, SlotCache> {
        self.inner
            .slot_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot table in start order (then id), shared: decoding the whole
    /// table for every list shown is too slow with thousands of slots, so a
    /// copy is kept in memory. It follows the committed generation (one
    /// small record): a change staged by this process left what the table
    /// becomes if it commits (a replacement's new table, a slot taken out),
    /// so only a change made elsewhere (a restore) reads the table again.
    pub fn slots_by_start(&self) -> VaultResult<Arc<Vec<Slot>>> {
        let generation = self.slots_generation()?;
        if let Some(slots) = self.slot_cache().resolve(generation) {
            return Ok(slots);
        }
        let mut slots = self.slots()?;
        sort_by_start(&mut slots);
        let slots = Arc::new(slots);
        self.slot_cache().current = Some((generation, slots.clone()));
        Ok(slots)
    }

    /// Events after `cursor` that are durable, oldest first, at most `limit`.
    /// An event about a patient is sealed under that patient's key: once
    /// they are erased it can no longer be read, and is served as a
    /// `redacted` event (kind only, no time, patient or ids), so that cursors
    /// stay dense and nothing on the feed links back to them.
    pub fn events_after(&self, cursor: u64, limit: usize) -> VaultResult<Vec<(u64, Event)>> {
        let durable = *self.inner.events_durable.borrow();
        let start = cursor.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for r in self.inner.store.scan_from(Tree::Events, &start) {
            let (k, v) = r?;
            let seq = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| VaultError::Encode)?;
            if seq > durable || out.len() >= limit {
                break;
            }
            let event = match self.open_value(Tree::Events, k.as_ref(), v.as_ref()) {
                Ok(plain) => serde_json::from_slice(&plain)
                    .map_err(|e| VaultError::decode(Tree::Events, &e))?,
                Err(VaultError::KeyUnavailable { .. }) => Event::redacted(),
                Err(e) => return Err(e),
            };
            out.push((seq, event));
        }
        Ok(out)
    }

    /// Stages an event on the feed, sealed under the key of the patient it
    /// names (see [`Vault::events_after`]).
    pub fn stage_event(&self, txn: &mut Txn, event: &Event) -> VaultResult<()> {
        let owner = event.patient.map_or(Owner::System, Owner::Patient);
        txn.append_json(Tree::Events, owner, event)
    }

    /// Records of `tree` from `start` on, in key order, opened.
    pub fn scan_prefix_from<'a>(
        &'a self,
        tree: Tree,
        start: &[u8],
    ) -> impl Iterator<Item = VaultResult<(Vec<u8>, Vec<u8>)>> + 'a {
        self.inner.store.scan_from(tree, start).map(move |r| {
            let (k, v) = r?;
            let plain = self.open_value(tree, k.as_ref(), v.as_ref())?;
            Ok((k.as_ref().to_vec(), plain))
        })
    }
}

/// Where the slot table's generation is kept (in `Meta`).
const SLOTS_GENERATION: &[u8] = b"slots/generation";

/// The in-memory slot table of [`Vault::slots_by_start`].
#[derive(Default)]
pub(super) struct SlotCache {
    /// The table as of a committed generation.
    current: Option<(Option<u64>, Arc<Vec<Slot>>)>,
    /// What the table is at a generation a txn has staged, if it commits.
    /// Those of txns that never commit are dropped at the next resolution.
    pending: Vec<(u64, Pending)>,
}

pub(super) enum Pending {
    Replace(Arc<Vec<Slot>>),
    /// The table at `base` without the slot `id`.
    Remove {
        base: Option<u64>,
        id: String,
    },
}

/// Expectations kept at most: every staged change adds one, and each
/// resolution clears them; more means changes that never committed.
const MAX_PENDING: usize = 64;

impl SlotCache {
    fn expect(&mut self, token: u64, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.clear();
        }
        self.pending.push((token, p));
    }

    /// The table at `generation` if it is known without reading the store.
    fn resolve(&mut self, generation: Option<u64>) -> Option<Arc<Vec<Slot>>> {
        let at = self.current.as_ref().map(|(g, _)| *g);
        if let Some((g, slots)) = &self.current {
            if *g == generation {
                return Some(slots.clone());
            }
        }
        if !self.pending.iter().any(|(t, _)| Some(*t) == generation) {
            return None;
        }
        // In staging order: one txn's changes (a replacement, removals)
        // share its token and apply in the order they were staged. The
        // copy is changed in place when nobody else holds it (a removal is
        // then a memmove, not a copy of every slot).
        let mut table: Option<Arc<Vec<Slot>>> = None;
        for (token, p) in &self.pending {
            if Some(*token) != generation {
                continue;
            }
            match p {
                Pending::Replace(new) => table = Some(new.clone()),
                Pending::Remove { base, id } => {
                    if table.is_none() {
                        if at != Some(*base) {
                            return None;
                        }
                        table = self.current.take().map(|(_, t)| t);
                    }
                    let t = table.as_mut()?;
                    Arc::make_mut(t).retain(|s| &s.id != id);
                }
            }
        }
        let table = table?;
        self.current = Some((generation, table.clone()));
        // The txn being staged now (if any) keeps its expectation.
        self.pending.retain(|(t, _)| Some(*t) != generation);
        Some(table)
    }
}

fn sort_by_start(slots: &mut [Slot]) {
    slots.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
}
