//! The audit log: append-only, hash-chained, with a MAC'd head checkpoint.
//!
//! Each entry commits to the one before it (`prev_hash`), so a modified,
//! deleted, inserted or reordered entry breaks the chain at that point. The
//! head checkpoint (last seq + last hash) carries an HMAC under the audit key,
//! so cutting entries off the end, which leaves a valid shorter chain, is
//! caught too. The head lives in the store, so an [`AuditAnchor`] of the same
//! end is also kept outside it: a store rolled back together with its head
//! is caught by that. Entries name patients only by pseudonymous id and
//! carry no PHI.
//!
//! This module is pure: the vault stores entries (sealed) in the same
//! transaction as the change they describe, and feeds them back here to verify.

use jiff::Timestamp;
use ring::digest;
use ring::hmac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The hash that precedes the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a caller asks to record. Details must not contain PHI: field names,
/// counts, hashes and pseudonymous ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    pub actor: String,
    pub action: String,
    pub subject: Option<String>,
    pub details: BTreeMap<String, String>,
}

impl AuditDraft {
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            subject: None,
            details: BTreeMap::new(),
        }
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: Timestamp,
    pub actor: String,
    pub action: String,
    pub subject: Option<String>,
    pub details: BTreeMap<String, String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The fields the hash covers, in a fixed order (serde serialises struct
/// fields in declaration order, and `details` is a sorted map).
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a Timestamp,
    actor: &'a str,
    action: &'a str,
    subject: &'a Option<String>,
    details: &'a BTreeMap<String, String>,
    prev_hash: &'a str,
}

impl AuditEntry {
    /// Builds the entry that follows `(prev_seq, prev_hash)`.
    pub fn chain(prev_seq: u64, prev_hash: &str, time: Timestamp, draft: AuditDraft) -> Self {
        let mut entry = Self {
            seq: prev_seq + 1,
            time,
            actor: draft.actor,
            action: draft.action,
            subject: draft.subject,
            details: draft.details,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }

    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::to_vec(&Hashed {
            seq: self.seq,
            time: &self.time,
            actor: &self.actor,
            action: &self.action,
            subject: &self.subject,
            details: &self.details,
            prev_hash: &self.prev_hash,
        })
        .unwrap_or_default();
        hex::encode(digest::digest(&digest::SHA256, &canonical))
    }
}

/// The checkpoint of the chain's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
    pub mac: String,
}

impl AuditHead {
    pub fn new(key: &hmac::Key, seq: u64, hash: &str) -> Self {
        Self {
            seq,
            hash: hash.to_owned(),
            mac: Self::mac(key, seq, hash),
        }
    }

    fn mac(key: &hmac::Key, seq: u64, hash: &str) -> String {
        let mut msg = b"clinic-relay audit head v1\0".to_vec();
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(hash.as_bytes());
        hex::encode(hmac::sign(key, &msg))
    }

    pub fn is_authentic(&self, key: &hmac::Key) -> bool {
        let Ok(tag) = hex::decode(&self.mac) else {
            return false;
        };
        let mut msg = b"clinic-relay audit head v1\0".to_vec();
        msg.extend_from_slice(&self.seq.to_be_bytes());
        msg.extend_from_slice(self.hash.as_bytes());
        hmac::verify(key, &msg, &tag).is_ok()
    }
}

/// The chain's end as last made durable, kept *outside* the store (the
/// vault writes it to `<data_dir>/audit-anchor` after each flush that added
/// entries). The head checkpoint lives in the store, so a store rolled back
/// as a whole carries a matching older head; the anchor does not go back
/// with it. Its MAC uses its own domain, so a head checkpoint cannot pass as
/// an anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAnchor {
    pub seq: u64,
    pub hash: String,
    pub mac: String,
}

const ANCHOR_DOMAIN: &[u8] = b"clinic-relay audit anchor v1\0";

impl AuditAnchor {
    pub fn new(key: &hmac::Key, seq: u64, hash: &str) -> Self {
        Self {
            seq,
            hash: hash.to_owned(),
            mac: hex::encode(hmac::sign(key, &Self::message(seq, hash))),
        }
    }

    fn message(seq: u64, hash: &str) -> Vec<u8> {
        let mut msg = ANCHOR_DOMAIN.to_vec();
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(hash.as_bytes());
        msg
    }

    pub fn is_authentic(&self, key: &hmac::Key) -> bool {
        let Ok(tag) = hex::decode(&self.mac) else {
            return false;
        };
        hmac::verify(key, &Self::message(self.seq, &self.hash), &tag).is_ok()
    }

    /// Checks the anchor against a store whose log ends at `head_seq`;
    /// `hash_at(seq)` is the hash of the stored entry `seq` (the genesis
    /// hash for 0), `None` when it is absent or does not open. An anchor
    /// *behind* the head is fine: a crash between the store's flush and the
    /// anchor's update leaves exactly that.
    pub fn check(
        &self,
        key: &hmac::Key,
        head_seq: u64,
        hash_at: impl FnOnce(u64) -> Option<String>,
    ) -> Result<(), AuditFault> {
        if !self.is_authentic(key) {
            return Err(AuditFault::AnchorForged);
        }
        if self.seq > head_seq {
            return Err(AuditFault::RolledBack {
                anchor: self.seq,
                head: head_seq,
            });
        }
        if hash_at(self.seq).as_deref() != Some(self.hash.as_str()) {
            return Err(AuditFault::AnchorMismatch { seq: self.seq });
        }
        Ok(())
    }
}

/// The first thing wrong with a chain. Each names the first bad seq.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditFault {
    #[error("audit entry {seq} does not open ({reason}): it was modified, moved or replaced")]
    Unreadable { seq: u64, reason: String },
    #[error(
        "audit entry {expected} is missing (the next entry found is {found}): entries were deleted"
    )]
    Missing { expected: u64, found: u64 },
    #[error("audit entry {seq} is out of place: it says seq {claimed} (inserted or reordered)")]
    OutOfPlace { seq: u64, claimed: u64 },
    #[error("audit entry {seq} does not follow entry {prev}: its prev_hash does not match (inserted, reordered or a predecessor was modified)")]
    BrokenLink { seq: u64, prev: u64 },
    #[error("audit entry {seq} does not match its own hash: it was modified")]
    BadHash { seq: u64 },
    #[error("the audit log ends at entry {last} but the head checkpoint says {head}: entries after {last} were cut off (first missing: {first_missing})", first_missing = last + 1)]
    Truncated { last: u64, head: u64 },
    #[error("the audit log has entries after the head checkpoint ({head}); first unexpected: {first_extra}")]
    BeyondHead { head: u64, first_extra: u64 },
    #[error(
        "the audit head checkpoint does not match entry {seq}: the end of the log was rewritten"
    )]
    HeadMismatch { seq: u64 },
    #[error(
        "the audit head checkpoint is missing or unreadable while entries exist (first entry: 1)"
    )]
    HeadMissing,
    #[error("the audit head checkpoint's MAC is not valid: it was forged or modified (checkpoint seq {seq})")]
    HeadForged { seq: u64 },
    #[error("the audit log was rolled back: the audit anchor (kept outside the store) says entry {anchor} was written, but the store's log ends at {head}; an older copy of the store, or of the log's end with its head checkpoint, was put back (first missing: {first_missing})", first_missing = head + 1)]
    RolledBack { anchor: u64, head: u64 },
    #[error("audit entry {seq} does not match the audit anchor (kept outside the store): the log was replaced by another one")]
    AnchorMismatch { seq: u64 },
    #[error("the audit anchor file (audit-anchor) is not valid: its MAC does not hold or it does not parse; it was modified or damaged")]
    AnchorForged,
    #[error("the audit anchor file (audit-anchor) is missing, though this store has written one: it was deleted, or the store was copied in from elsewhere")]
    AnchorMissing,
    #[error("the audit anchor file (audit-anchor) cannot be read: {0}")]
    AnchorUnreadable(String),
}

impl AuditFault {
    /// The first sequence number that is wrong, for exit messages and tests.
    pub fn first_bad_seq(&self) -> u64 {
        match self {
            AuditFault::Unreadable { seq, .. }
            | AuditFault::OutOfPlace { seq, .. }
            | AuditFault::BrokenLink { seq, .. }
            | AuditFault::BadHash { seq }
            | AuditFault::HeadMismatch { seq }
            | AuditFault::HeadForged { seq } => *seq,
            AuditFault::Missing { expected, .. } => *expected,
            AuditFault::Truncated { last, .. } => last + 1,
            AuditFault::BeyondHead { first_extra, .. } => *first_extra,
            AuditFault::RolledBack { head, .. } => head + 1,
            AuditFault::AnchorMismatch { seq } => *seq,
            // The anchor itself is what is wrong: no entry can be named.
            AuditFault::HeadMissing
            | AuditFault::AnchorForged
            | AuditFault::AnchorMissing
            | AuditFault::AnchorUnreadable(_) => 1,
        }
    }
}

/// One stored entry as the vault reads it back: the seq its key says, and
/// the entry if it opened.
pub type StoredEntry = (u64, Result<AuditEntry, String>);

/// Walks the chain in key order and checks it against the head checkpoint.
/// Returns the number of entries on success.
pub fn verify(
    entries: impl IntoIterator<Item = StoredEntry>,
    head: Option<AuditHead>,
    mac_key: &hmac::Key,
) -> Result<u64, AuditFault> {
    if let Some(h) = &head {
        if !h.is_authentic(mac_key) {
            return Err(AuditFault::HeadForged { seq: h.seq });
        }
    }
    let head_seq = head.as_ref().map_or(0, |h| h.seq);
    let mut last_seq = 0u64;
    let mut last_hash = GENESIS_HASH.to_owned();
    for (key_seq, opened) in entries {
        let expected = last_seq + 1;
        if key_seq > head_seq {
            if head.is_none() {
                return Err(AuditFault::HeadMissing);
            }
            return Err(AuditFault::BeyondHead {
                head: head_seq,
                first_extra: key_seq,
            });
        }
        if key_seq != expected {
            return Err(AuditFault::Missing {
                expected,
                found: key_seq,
            });
        }
        let entry = opened.map_err(|reason| AuditFault::Unreadable {
            seq: key_seq,
            reason,
        })?;
        if entry.seq != key_seq {
            return Err(AuditFault::OutOfPlace {
                seq: key_seq,
                claimed: entry.seq,
            });
        }
        if entry.prev_hash != last_hash {
            return Err(AuditFault::BrokenLink {
                seq: key_seq,
                prev: last_seq,
            });
        }
        if entry.compute_hash() != entry.hash {
            return Err(AuditFault::BadHash { seq: key_seq });
        }
        last_seq = key_seq;
        last_hash = entry.hash;
    }
    match head {
        None if last_seq == 0 => Ok(0),
        None => Err(AuditFault::HeadMissing),
        Some(h) if h.seq > last_seq => Err(AuditFault::Truncated {
            last: last_seq,
            head: h.seq,
        }),
        Some(h) if h.hash != last_hash => Err(AuditFault::HeadMismatch { seq: last_seq }),
        Some(_) => Ok(last_seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"test audit key")
    }

    /// A valid chain of n entries and its head.
    fn chain(n: u64) -> (Vec<AuditEntry>, AuditHead) {
        let mut out: Vec<AuditEntry> = Vec::new();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        for i in 0..n {
            let (seq, hash) = out
                .last()
                .map_or((0, GENESIS_HASH.to_owned()), |e| (e.seq, e.hash.clone()));
            let draft = AuditDraft::new("test", "thing.done")
                .subject(format!("p-{i:032x}"))
                .detail("n", i.to_string());
            out.push(AuditEntry::chain(seq, &hash, t0, draft));
        }
        let last = out.last().unwrap();
        let head = AuditHead::new(&key(), last.seq, &last.hash);
        (out, head)
    }

    fn stored(entries: &[AuditEntry]) -> Vec<StoredEntry> {
        entries.iter().map(|e| (e.seq, Ok(e.clone()))).collect()
    }

    #[test]
    fn a_clean_chain_verifies() {
        let (entries, head) = chain(10);
        assert_eq!(verify(stored(&entries), Some(head), &key()), Ok(10));
        assert_eq!(verify(Vec::new(), None, &key()), Ok(0));
    }

    #[test]
    fn a_modified_entry_is_found() {
        let (mut entries, head) = chain(10);
        entries[4].action = "thing.undone".into();
        let err = verify(stored(&entries), Some(head), &key()).unwrap_err();
        assert_eq!(err, AuditFault::BadHash { seq: 5 });
        assert_eq!(err.first_bad_seq(), 5);
    }

    #[test]
    fn a_modified_and_rehashed_entry_breaks_the_next_link() {
        let (mut entries, head) = chain(10);
        entries[4].action = "thing.undone".into();
        entries[4].hash = entries[4].compute_hash();
        let err = verify(stored(&entries), Some(head), &key()).unwrap_err();
        assert_eq!(err, AuditFault::BrokenLink { seq: 6, prev: 5 });
    }

    #[test]
    fn a_deleted_entry_is_found() {
        let (mut entries, head) = chain(10);
        entries.remove(6);
        let err = verify(stored(&entries), Some(head), &key()).unwrap_err();
        assert_eq!(err.first_bad_seq(), 7);
        assert!(matches!(
            err,
            AuditFault::Missing {
                expected: 7,
                found: 8
            }
        ));
    }

    #[test]
    fn an_inserted_entry_is_found() {
        let (entries, head) = chain(10);
        // An insider forges a well-formed entry 4 and shifts the rest up.
        let forged = AuditEntry::chain(
            3,
            &entries[2].hash,
            entries[2].time,
            AuditDraft::new("x", "y"),
        );
        let mut rows: Vec<StoredEntry> = stored(&entries[..3]);
        rows.push((4, Ok(forged)));
        for e in &entries[3..] {
            rows.push((e.seq + 1, Ok(e.clone())));
        }
        let err = verify(rows, Some(head), &key()).unwrap_err();
        assert_eq!(err, AuditFault::OutOfPlace { seq: 5, claimed: 4 });
    }

    #[test]
    fn reordered_entries_are_found() {
        let (entries, head) = chain(10);
        let mut rows = stored(&entries);
        // Swap the contents stored under keys 3 and 4.
        let (a, b) = (rows[2].1.clone(), rows[3].1.clone());
        rows[2].1 = b;
        rows[3].1 = a;
        let err = verify(rows, Some(head), &key()).unwrap_err();
        assert_eq!(err.first_bad_seq(), 3);
    }

    #[test]
    fn truncation_is_found_by_the_head() {
        let (entries, head) = chain(10);
        let err = verify(stored(&entries[..7]), Some(head), &key()).unwrap_err();
        assert_eq!(err, AuditFault::Truncated { last: 7, head: 10 });
        assert_eq!(err.first_bad_seq(), 8);
    }

    #[test]
    fn a_rolled_back_head_is_forged_unless_maced() {
        let (entries, mut head) = chain(10);
        head.seq = 7;
        head.hash = entries[6].hash.clone();
        let err = verify(stored(&entries[..7]), Some(head), &key()).unwrap_err();
        assert_eq!(err, AuditFault::HeadForged { seq: 7 });
    }

    #[test]
    fn a_rewritten_tail_does_not_match_the_head() {
        let (mut entries, head) = chain(10);
        entries.pop();
        let prev = entries.last().unwrap().clone();
        entries.push(AuditEntry::chain(
            prev.seq,
            &prev.hash,
            prev.time,
            AuditDraft::new("x", "y"),
        ));
        let err = verify(stored(&entries), Some(head), &key()).unwrap_err();
        assert_eq!(err, AuditFault::HeadMismatch { seq: 10 });
    }

    #[test]
    fn an_anchor_behind_or_at_the_head_passes_and_one_ahead_is_a_rollback() {
        let (entries, head) = chain(10);
        let hash_at = |seq: u64| -> Option<String> {
            if seq == 0 {
                return Some(GENESIS_HASH.to_owned());
            }
            entries
                .iter()
                .find(|e| e.seq == seq)
                .map(|e| e.hash.clone())
        };
        for at in [0, 4, 10] {
            let hash = hash_at(at).unwrap();
            let anchor = AuditAnchor::new(&key(), at, &hash);
            assert_eq!(anchor.check(&key(), head.seq, hash_at), Ok(()));
        }
        // The store was rolled back to 7; the anchor says 10.
        let anchor = AuditAnchor::new(&key(), 10, &entries[9].hash);
        let err = anchor.check(&key(), 7, hash_at).unwrap_err();
        assert_eq!(
            err,
            AuditFault::RolledBack {
                anchor: 10,
                head: 7
            }
        );
        assert_eq!(err.first_bad_seq(), 8);
        // Another chain of the same length.
        let anchor = AuditAnchor::new(&key(), 5, &entries[6].hash);
        assert_eq!(
            anchor.check(&key(), 10, hash_at),
            Err(AuditFault::AnchorMismatch { seq: 5 })
        );
    }

    #[test]
    fn a_forged_anchor_or_a_head_passed_off_as_one_is_refused() {
        let (entries, head) = chain(3);
        let hash_at = |_| Some(entries[2].hash.clone());
        let mut anchor = AuditAnchor::new(&key(), 3, &entries[2].hash);
        anchor.seq = 2;
        assert_eq!(
            anchor.check(&key(), 3, hash_at),
            Err(AuditFault::AnchorForged)
        );
        let from_head = AuditAnchor {
            seq: head.seq,
            hash: head.hash.clone(),
            mac: head.mac.clone(),
        };
        assert_eq!(
            from_head.check(&key(), 3, hash_at),
            Err(AuditFault::AnchorForged)
        );
    }

    #[test]
    fn an_unreadable_entry_names_its_seq() {
        let (entries, head) = chain(5);
        let mut rows = stored(&entries);
        rows[1].1 = Err("authentication failed".into());
        let err = verify(rows, Some(head), &key()).unwrap_err();
        assert_eq!(err.first_bad_seq(), 2);
    }
}
