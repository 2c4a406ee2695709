//! What one commit applies: staged puts, removes, sequenced appends, audit
//! entries and the effects that must follow once it is durable; and the
//! receipt only the vault can issue for it.

use super::*;

/// A staged change. Kept in staging order: a remove followed by a put of the
/// same key leaves the new value.
pub(super) enum Op {
    Put(Tree, Vec<u8>, Owner, Zeroizing<Vec<u8>>),
    Remove(Tree, Vec<u8>),
}

/// What must follow a commit once it is durable, run by the writer before
/// the next job (so nothing can come between the commit and the effect).
pub(crate) enum AfterCommit {
    /// Crypto-shredding: the patient's erasure is recorded; all their keys go.
    DestroyPatientKeys(PatientId),
    /// These keys of a patient go (a patient merged into an erased one:
    /// the keys they had at the merge, not one they got since).
    DestroyHandles(PatientId, Vec<u64>),
    /// A merged patient's keys stay readable (older backups) but seal
    /// nothing new: registered again, the patient gets a fresh key.
    RetirePatientKeys(PatientId),
}

/// The set of changes one commit applies atomically.
pub struct Txn {
    pub(super) time: Timestamp,
    pub(super) ops: Vec<Op>,
    pub(super) audits: Vec<AuditDraft>,
    pub(super) appends: Vec<(Tree, Owner, Zeroizing<Vec<u8>>)>,
    pub(super) after_commit: Vec<AfterCommit>,
    /// Answer only after a flush even if this txn writes nothing (a repeat
    /// is acknowledged with the same durability as its original).
    pub(super) flush_anyway: bool,
    /// A workflow timer was set: the care scheduler is woken once this is
    /// durable (other writes to the workflows' tree leave it asleep).
    pub(super) wakes_scheduler: bool,
}

impl Txn {
    pub fn new(now: Timestamp) -> Self {
        Self {
            time: now,
            ops: Vec::new(),
            audits: Vec::new(),
            appends: Vec::new(),
            after_commit: Vec::new(),
            flush_anyway: false,
            wakes_scheduler: false,
        }
    }

    /// Makes the answer wait for a flush even if nothing is written.
    pub fn wait_for_flush(&mut self) {
        self.flush_anyway = true;
    }

    /// Wakes the care scheduler once this txn is durable: it set a timer,
    /// which may be due before the one the scheduler waits for.
    pub fn wake_scheduler(&mut self) {
        self.wakes_scheduler = true;
    }

    pub fn time(&self) -> Timestamp {
        self.time
    }

    /// Appends a record to a sequenced tree (events, queues): the vault gives
    /// it the next seq under the commit lock, so seqs are dense and ordered.
    pub fn append(&mut self, tree: Tree, owner: Owner, plaintext: Vec<u8>) {
        self.appends.push((tree, owner, Zeroizing::new(plaintext)));
    }

    pub fn append_json<T: Serialize>(
        &mut self,
        tree: Tree,
        owner: Owner,
        value: &T,
    ) -> VaultResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|_| VaultError::Encode)?;
        self.append(tree, owner, bytes);
        Ok(())
    }

    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, owner: Owner, plaintext: Vec<u8>) {
        self.ops
            .push(Op::Put(tree, key.into(), owner, Zeroizing::new(plaintext)));
    }

    pub fn put_json<T: Serialize>(
        &mut self,
        tree: Tree,
        key: impl Into<Vec<u8>>,
        owner: Owner,
        value: &T,
    ) -> VaultResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|_| VaultError::Encode)?;
        self.put(tree, key, owner, bytes);
        Ok(())
    }

    pub fn remove(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Remove(tree, key.into()));
    }

    /// What this txn has staged for `key` so far: `Some(Some(plaintext))`
    /// the last put, `Some(None)` removed, `None` untouched. A job that
    /// decides several inputs in one txn (a webhook call carrying two
    /// messages of one person) reads its own earlier writes through this,
    /// so the second decision starts from the state the first one left.
    pub fn staged(&self, tree: Tree, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops.iter().rev().find_map(|op| match op {
            Op::Put(t, k, _, v) if *t == tree && k.as_slice() == key => Some(Some(v.as_slice())),
            Op::Remove(t, k) if *t == tree && k.as_slice() == key => Some(None),
            _ => None,
        })
    }

    /// Every key under `prefix` this txn has staged, each with its last
    /// state (`None`: removed), in key order: a scan of the store overlaid
    /// with this is the tree as this txn leaves it.
    pub fn staged_under(
        &self,
        tree: Tree,
        prefix: &[u8],
    ) -> std::collections::BTreeMap<&[u8], Option<&[u8]>> {
        let mut out = std::collections::BTreeMap::new();
        for op in &self.ops {
            match op {
                Op::Put(t, k, _, v) if *t == tree && k.starts_with(prefix) => {
                    out.insert(k.as_slice(), Some(v.as_slice()));
                }
                Op::Remove(t, k) if *t == tree && k.starts_with(prefix) => {
                    out.insert(k.as_slice(), None);
                }
                _ => {}
            }
        }
        out
    }

    /// [`Txn::staged`], decoded: `None` when untouched.
    pub fn staged_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: Tree,
        key: &[u8],
    ) -> Option<VaultResult<Option<T>>> {
        self.staged(tree, key).map(|v| {
            v.map(|bytes| serde_json::from_slice(bytes).map_err(|e| VaultError::decode(tree, &e)))
                .transpose()
        })
    }

    pub fn audit(&mut self, draft: AuditDraft) {
        self.audits.push(draft);
    }

    /// Moves everything staged in `other` into this txn (its time is dropped).
    pub fn extend(&mut self, other: Txn) {
        self.ops.extend(other.ops);
        self.audits.extend(other.audits);
        self.appends.extend(other.appends);
        self.after_commit.extend(other.after_commit);
        self.flush_anyway |= other.flush_anyway;
        self.wakes_scheduler |= other.wakes_scheduler;
    }

    /// Asks for `effect` once this txn is durable.
    pub(crate) fn after_commit(&mut self, effect: AfterCommit) {
        self.after_commit.push(effect);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.audits.is_empty() && self.appends.is_empty()
    }
}

/// The first record of a tree: its key, and its value or why it does not open.
pub type FirstRecord = (Vec<u8>, VaultResult<Vec<u8>>);

/// What a durable commit reports back. Only the vault makes one, and only
/// for a commit it applied: holding a receipt proves the txn was applied
/// (and, handed out by [`Vault::write`], that it is on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The seq of the last audit entry this commit wrote, if any.
    pub(super) audit_seq: Option<u64>,
    /// The seqs given to appended records, in the order they were added.
    pub(super) appended: Vec<(Tree, u64)>,
    /// Something reached the store (an empty txn writes nothing).
    pub(super) wrote: bool,
    /// The commit set a workflow timer (wakes the care scheduler).
    pub(super) wakes_scheduler: bool,
}

impl Receipt {
    pub(super) fn empty() -> Self {
        Self {
            audit_seq: None,
            appended: Vec::new(),
            wrote: false,
            wakes_scheduler: false,
        }
    }

    pub fn audit_seq(&self) -> Option<u64> {
        self.audit_seq
    }

    pub fn appended(&self) -> &[(Tree, u64)] {
        &self.appended
    }

    /// The last seq appended to `tree` by this commit.
    pub fn last_in(&self, tree: Tree) -> Option<u64> {
        self.appended
            .iter()
            .rev()
            .find(|(t, _)| *t == tree)
            .map(|(_, s)| *s)
    }
}
