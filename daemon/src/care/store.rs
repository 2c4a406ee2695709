//! Where the workflows keep their state in [`Tree::Care`]:
//!
//! - `S ‖ token`: an appointment's [`ReminderState`], patient's key;
//! - `T ‖ due (u64 BE seconds) ‖ token ‖ offset`: a timer, so that key
//!   order is due order and the scheduler reads only the first. Of an
//!   appointment's reminder timers only the earliest is here
//!   ([`stage_first_timer`]); the state holds the rest.
//!
//! - `L ‖ patient`: the language the patient chose in the chat (over
//!   PID-15), patient's key.
//!
//! `token` is 16 bytes of a blind index of the PMS appointment id: the same
//! opaque value names the appointment in quick-reply payloads, never the
//! PMS id itself.

use super::reminder::ReminderState;
use crate::model::PatientId;
use crate::vault::{Owner, Tree, Txn, Vault, VaultResult};
use jiff::Timestamp;

pub type Token = [u8; 16];

const K_STATE: u8 = b'S';
const K_TIMER: u8 = b'T';
const K_LANGUAGE: u8 = b'L';

/// The prefix of quick-reply payloads that are ours.
const PAYLOAD_PREFIX: &str = "cr1:";

pub fn token(vault: &Vault, appointment_id: &str) -> Token {
    let bi = vault.blind_index("care-appointment", appointment_id);
    let mut t = [0u8; 16];
    t.copy_from_slice(bi.get(..16).unwrap_or(&[0u8; 16]));
    t
}

/// A slot's opaque reference in a list row id (see `care::reschedule`).
pub fn slot_ref(vault: &Vault, slot_id: &str) -> super::reschedule::SlotRef {
    let bi = vault.blind_index("care-slot", slot_id);
    let mut r = [0u8; 8];
    r.copy_from_slice(bi.get(..8).unwrap_or(&[0u8; 8]));
    r
}

fn language_key(patient: PatientId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(K_LANGUAGE);
    k.extend_from_slice(&patient.0);
    k
}

/// The language `patient` chose in the chat, if any.
pub fn chosen_language(vault: &Vault, patient: PatientId) -> VaultResult<Option<String>> {
    vault.get_json(Tree::Care, &language_key(patient))
}

pub fn stage_language(txn: &mut Txn, patient: PatientId, lang: &str) -> VaultResult<()> {
    txn.put_json(
        Tree::Care,
        language_key(patient),
        Owner::Patient(patient),
        &lang,
    )
}

fn state_key(token: &Token) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(K_STATE);
    k.extend_from_slice(token);
    k
}

pub fn timer_key(due: Timestamp, token: &Token, offset: u8) -> Vec<u8> {
    let secs = u64::try_from(due.as_second()).unwrap_or(0);
    let mut k = Vec::with_capacity(26);
    k.push(K_TIMER);
    k.extend_from_slice(&secs.to_be_bytes());
    k.extend_from_slice(token);
    k.push(offset);
    k
}

/// A timer key taken apart: due, token, offset.
pub fn parse_timer_key(k: &[u8]) -> Option<(Timestamp, Token, u8)> {
    if k.len() != 26 || k.first() != Some(&K_TIMER) {
        return None;
    }
    let secs = u64::from_be_bytes(<[u8; 8]>::try_from(k.get(1..9)?).ok()?);
    let due = Timestamp::from_second(i64::try_from(secs).ok()?).ok()?;
    let token = Token::try_from(k.get(9..25)?).ok()?;
    Some((due, token, *k.get(25)?))
}

pub fn load(vault: &Vault, token: &Token) -> VaultResult<Option<ReminderState>> {
    vault.get_json(Tree::Care, &state_key(token))
}

pub fn stage_state(txn: &mut Txn, token: &Token, state: &ReminderState) -> VaultResult<()> {
    txn.put_json(
        Tree::Care,
        state_key(token),
        Owner::Patient(state.patient),
        state,
    )
}

pub fn stage_timer(txn: &mut Txn, due: Timestamp, token: &Token, offset: u8, patient: PatientId) {
    stage_timer_as(txn, due, token, offset, Owner::Patient(patient));
}

/// [`stage_timer`] sealed under `owner` (a conversation with an unknown
/// contact has no patient).
pub fn stage_timer_as(txn: &mut Txn, due: Timestamp, token: &Token, offset: u8, owner: Owner) {
    // The key says everything; the (sealed) value is empty.
    txn.put(Tree::Care, timer_key(due, token, offset), owner, Vec::new());
    // Only a new timer can be due before the one the scheduler waits for:
    // every other write to this tree (states, removed timers) leaves it
    // asleep, so an ingest of appointments does not wake it per message.
    txn.wake_scheduler();
}

pub fn stage_cancel(txn: &mut Txn, due: Timestamp, token: &Token, offset: u8) {
    txn.remove(Tree::Care, timer_key(due, token, offset));
}

/// Keeps the index's one timer of an appointment on the earliest of its
/// state's pending timers, as `before` (the state as loaded) becomes
/// `after`.
///
/// Why one: every record in sled costs memory from the open on (its share
/// of a page and of that page's fragment list), and a timer is a record;
/// with two reminders and the unattended check, a booked appointment had
/// three. The later ones are staged as the earlier fire or go
/// (docs/performance.md, stop 32).
///
/// A store written before holds a timer for every pending entry: they fire
/// in due order as they did, and one no longer pending is dropped by
/// [`super::reminder::decide`] (a timer its state does not know).
pub fn stage_first_timer(
    txn: &mut Txn,
    token: &Token,
    before: Option<&ReminderState>,
    after: &ReminderState,
) {
    let first = |s: &ReminderState| s.pending.iter().min_by_key(|p| (p.due, p.offset)).copied();
    let (was, is) = (before.and_then(first), first(after));
    if was == is {
        return;
    }
    if let Some(p) = was {
        stage_cancel(txn, p.due, token, p.offset);
    }
    if let Some(p) = is {
        stage_timer(txn, p.due, token, p.offset, after.patient);
    }
}

/// The first timer (lowest due time): its key. Reads one record.
pub fn first_timer(vault: &Vault) -> VaultResult<Option<Vec<u8>>> {
    match vault.scan_raw_from(Tree::Care, &[K_TIMER]).next() {
        Some(r) => {
            let (k, _) = r?;
            Ok((k.first() == Some(&K_TIMER)).then_some(k))
        }
        None => Ok(None),
    }
}

/// Timer keys due at `now` or earlier, in due order, at most `limit`.
pub fn due_timers(vault: &Vault, now: Timestamp, limit: usize) -> VaultResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for r in vault.scan_raw_from(Tree::Care, &[K_TIMER]) {
        let (k, _) = r?;
        if k.first() != Some(&K_TIMER) || out.len() >= limit {
            break;
        }
        match parse_timer_key(&k) {
            Some((due, ..)) if due > now => break,
            // A key of another shape: taken (and dropped) all the same.
            _ => out.push(k),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tap {
    Confirm,
    Cancel,
    Reschedule,
    /// A row of the list of open slots (`care::reschedule`).
    Slot(super::reschedule::SlotRef),
}

/// The quick-reply payload (or list row id) for a tap on an appointment's
/// reminder.
pub fn payload(token: &Token, tap: Tap) -> String {
    let t = match tap {
        Tap::Confirm => 'c',
        Tap::Cancel => 'x',
        Tap::Reschedule => 'r',
        Tap::Slot(slot) => {
            return format!(
                "{PAYLOAD_PREFIX}s:{}:{}",
                hex::encode(token),
                hex::encode(slot)
            )
        }
    };
    format!("{PAYLOAD_PREFIX}{t}:{}", hex::encode(token))
}

/// A payload of ours, taken apart; None for anything else.
pub fn parse_payload(p: &str) -> Option<(Tap, Token)> {
    let rest = p.strip_prefix(PAYLOAD_PREFIX)?;
    let (t, mut hexed) = rest.split_once(':')?;
    let tap = match t {
        "c" => Tap::Confirm,
        "x" => Tap::Cancel,
        "r" => Tap::Reschedule,
        "s" => {
            let (tok, slot) = hexed.split_once(':')?;
            hexed = tok;
            let mut r = [0u8; 8];
            hex::decode_to_slice(slot, &mut r).ok()?;
            Tap::Slot(r)
        }
        _ => return None,
    };
    let mut token = [0u8; 16];
    hex::decode_to_slice(hexed, &mut token).ok()?;
    Some((tap, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a new timer wakes the scheduler: the state each booked
    /// appointment gets (an ingest of appointments writes one a message)
    /// leaves it asleep, where it used to wake it and cost a scan of the
    /// timers per message.
    #[tokio::test]
    async fn only_a_commit_that_sets_a_timer_wakes_the_scheduler() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = crate::keys::MasterKey::generate().unwrap();
        let vault = Vault::open(tmp.path(), &mk).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let woken = |vault: &Vault| {
            let signal = vault.care_signal();
            futures_ready(signal.notified())
        };
        vault
            .write(move |_| {
                let mut txn = Txn::new(now);
                txn.put(Tree::Care, b"S-a-state".to_vec(), Owner::System, vec![1]);
                Ok::<_, crate::vault::VaultError>((txn, ()))
            })
            .await
            .unwrap();
        assert!(!woken(&vault), "a state alone woke the scheduler");
        vault
            .write(move |_| {
                let mut txn = Txn::new(now);
                stage_timer_as(&mut txn, now, &[3; 16], 0, Owner::System);
                Ok::<_, crate::vault::VaultError>((txn, ()))
            })
            .await
            .unwrap();
        assert!(woken(&vault), "a new timer did not wake the scheduler");
        vault.close().unwrap();
    }

    /// Whether `f` is ready at its first poll (a stored wake-up permit).
    fn futures_ready(f: impl std::future::Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        f.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn timer_keys_sort_by_due_time_and_come_apart_again() {
        let t = [7u8; 16];
        let a = timer_key(Timestamp::from_second(1_800_000_000).unwrap(), &t, 1);
        let b = timer_key(
            Timestamp::from_second(1_800_000_001).unwrap(),
            &[0u8; 16],
            0,
        );
        assert!(a < b);
        assert_eq!(
            parse_timer_key(&a),
            Some((Timestamp::from_second(1_800_000_000).unwrap(), t, 1))
        );
        assert_eq!(parse_timer_key(b"T123"), None);
    }

    #[test]
    fn payloads_are_opaque_and_parse_back() {
        let t = [0xab; 16];
        let p = payload(&t, Tap::Confirm);
        assert!(p.len() <= 256 && p.starts_with("cr1:c:"));
        assert_eq!(parse_payload(&p), Some((Tap::Confirm, t)));
        assert_eq!(
            parse_payload(&payload(&t, Tap::Cancel)),
            Some((Tap::Cancel, t))
        );
        for tap in [Tap::Reschedule, Tap::Slot([9; 8])] {
            let p = payload(&t, tap);
            // A list row id: at most 200 characters.
            assert!(p.len() <= 200, "{p}");
            assert_eq!(parse_payload(&p), Some((tap, t)));
        }
        for other in [
            "confirm:1",
            "cr1:q:00",
            "cr1:c:zz",
            "stop",
            "",
            "cr1:s:00",
            "cr1:s:abababababababababababababababab:zz",
        ] {
            assert_eq!(parse_payload(other), None, "{other}");
        }
    }
}
