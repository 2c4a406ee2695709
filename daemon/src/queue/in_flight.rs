//! In-flight marks: what a queue with `in_flight` set has handed to its
//! worker and not yet settled. The mark is committed (in the take's own
//! writer job) before the worker sends, and removed with the item when it
//! settles. A mark found on an item that is not out in this process means
//! the last attempt was cut off (the daemon was killed, or stopped, with
//! the send on the wire): the receiver may or may not have it. Such an item
//! is *in doubt* and waits `hold` from its last take, so that the receiver
//! can say whether it arrived (WhatsApp: a status webhook echoing the
//! item's callback data, see `whatsapp::in_doubt`), before it is sent again.
//!
//! Marks live in `Tree::Meta` under `inflight/<queue>/<seq>`, sealed with
//! the system key; they hold only the time of the take.

use super::QueueSpec;
use crate::vault::{Owner, Tree, Txn, Vault, VaultResult};
use jiff::{SignedDuration, Timestamp};

fn key(spec: &QueueSpec, seq: u64) -> Vec<u8> {
    let mut k = format!("inflight/{}/", spec.name).into_bytes();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Stages the mark of item `seq`, taken at `now`.
pub(super) fn mark(txn: &mut Txn, spec: &QueueSpec, seq: u64, now: Timestamp) -> VaultResult<()> {
    txn.put_json(Tree::Meta, key(spec, seq), Owner::System, &now)
}

/// Stages the removal of item `seq`'s mark (no-op for unmarked queues):
/// its attempt ended without reaching the receiver for sure.
pub fn clear(txn: &mut Txn, spec: &QueueSpec, seq: u64) {
    if spec.in_flight {
        txn.remove(Tree::Meta, key(spec, seq));
    }
}

/// When item `seq` was last taken, if it has not settled since.
pub fn taken_at(vault: &Vault, spec: &QueueSpec, seq: u64) -> VaultResult<Option<Timestamp>> {
    if !spec.in_flight {
        return Ok(None);
    }
    vault.get_json(Tree::Meta, &key(spec, seq))
}

/// Until when an item last taken at `taken` waits at `now`: None once the
/// hold is over. A clock stepped back never makes it wait longer than
/// `hold` from now.
pub(super) fn held_until(
    taken: Timestamp,
    hold: SignedDuration,
    now: Timestamp,
) -> Option<Timestamp> {
    let until = taken.checked_add(hold).ok()?;
    (until > now && until.duration_since(now) <= hold).then_some(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_runs_from_the_take_and_a_clock_stepped_back_does_not_stretch_it() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let hold = SignedDuration::from_mins(15);
        let later = |s: i64| t.checked_add(SignedDuration::from_secs(s)).unwrap();
        assert_eq!(held_until(t, hold, t), Some(later(900)));
        assert_eq!(held_until(t, hold, later(899)), Some(later(900)));
        assert_eq!(held_until(t, hold, later(900)), None);
        // The clock went back a day after the take: not a day's wait.
        let back = t.checked_sub(SignedDuration::from_hours(24)).unwrap();
        assert_eq!(held_until(t, hold, back), None);
        assert_eq!(held_until(t, SignedDuration::ZERO, t), None);
    }
}
