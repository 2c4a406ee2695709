//! Media timers: records `T ‖ due (u64 BE seconds) ‖ kind ‖ id` in
//! [`Tree::WaMedia`], so that key order is due order; run by
//! `media_worker`.

use super::media::{key, K_TIMER};
use crate::model::PatientId;
use crate::vault::{Owner, Tree, Txn, VaultResult};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The kinds of timer (one byte of the key).
#[derive(Debug, Clone, Copy)]
pub enum TimerKind {
    /// `DELETE /{media-id}` at Meta.
    Delete = b'R' as isize,
    Fetch = b'F' as isize,
    Purge = b'P' as isize,
}

/// What a timer does when due.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    Delete {
        media_id: String,
        attempts: u32,
    },
    Fetch {
        /// Hex of the wamid's blind index (the record's key).
        wamid_key: String,
        media_id: String,
        patient: PatientId,
        sha256: Option<String>,
        attempts: u32,
    },
    Purge {
        wamid_key: String,
    },
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Delete { .. } => "Task::Delete",
            Task::Fetch { .. } => "Task::Fetch",
            Task::Purge { .. } => "Task::Purge",
        })
    }
}

pub fn timer_key(due: Timestamp, kind: TimerKind, id: &[u8]) -> Vec<u8> {
    let secs = u64::try_from(due.as_second()).unwrap_or(0);
    let mut rest = Vec::with_capacity(9 + id.len());
    rest.extend_from_slice(&secs.to_be_bytes());
    rest.push(kind as u8);
    rest.extend_from_slice(id);
    key(K_TIMER, &rest)
}

pub(crate) fn due_of(k: &[u8]) -> Option<Timestamp> {
    let secs = <[u8; 8]>::try_from(k.get(1..9)?).ok()?;
    Timestamp::from_second(i64::try_from(u64::from_be_bytes(secs)).ok()?).ok()
}

/// Stages a timer.
pub fn stage_timer(
    txn: &mut Txn,
    due: Timestamp,
    kind: TimerKind,
    id: &[u8],
    owner: Owner,
    task: &Task,
) -> VaultResult<()> {
    txn.put_json(Tree::WaMedia, timer_key(due, kind, id), owner, task)
}

/// Stages the delete at Meta of an upload, due at `at`.
pub fn stage_delete(txn: &mut Txn, media_id: &str, at: Timestamp) -> VaultResult<()> {
    let task = Task::Delete {
        media_id: media_id.to_owned(),
        attempts: 0,
    };
    stage_timer(
        txn,
        at,
        TimerKind::Delete,
        media_id.as_bytes(),
        Owner::System,
        &task,
    )
}

/// Moves the delete of an upload from `was` (its TTL) to `now`.
pub fn reschedule_delete(
    txn: &mut Txn,
    media_id: &str,
    was: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    if was <= now {
        return Ok(()); // already due
    }
    txn.remove(
        Tree::WaMedia,
        timer_key(was, TimerKind::Delete, media_id.as_bytes()),
    );
    stage_delete(txn, media_id, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keys_sort_by_due_time() {
        let t = |s| Timestamp::from_second(s).unwrap();
        let a = timer_key(t(100), TimerKind::Purge, b"zz");
        let b = timer_key(t(101), TimerKind::Delete, b"aa");
        assert!(a < b);
        assert_eq!(due_of(&b), Some(t(101)));
    }
}
