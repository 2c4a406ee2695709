//! Workflow KPIs (issue 10, item 6): reminders sent / delivered / read /
//! confirmed / cancelled / rescheduled, opt-outs, visits that ended in a
//! no-show or were fulfilled (each split by "had a reminder the patient
//! confirmed"), the time from a reminder to its answer, and the time from
//! a hand-off to the first staff reply (issue 12's dashboard).
//!
//! **Counted where it happens.** Each hook stages its entry in the same
//! [`Txn`] as the happening it counts (the send's record, the webhook's
//! status, the tap's PMS message, the opt-out, the S26), so a count can
//! neither get ahead of nor fall behind what was committed.
//!
//! **One key per counted happening** in [`Tree::Kpi`], not a counter that
//! is read, incremented and written: several hooks may stage into one txn
//! (a webhook batch of many statuses, a scheduler round of many reminders),
//! and a read-modify-write inside one txn would lose all but the last.
//! A key is `C ‖ day ‖ kpi ‖ id`, where `day` is the clinic's local date
//! (YYYYMMDD as u32 BE, so a date range is a key range) and `id` a blind
//! index of what was counted (a wamid, an appointment token): staging the
//! same happening twice writes the same key, so it counts once. A value is
//! empty, or for an answer the seconds since its reminder (u32 BE).
//!
//! Two helper records, system key, pseudonymous only:
//! - `W ‖ blind(wamid)`: this wamid is a reminder (statuses are counted
//!   only for reminders);
//! - `S ‖ token[..6]`: when the appointment's latest reminder was accepted
//!   by Meta and whether the patient confirmed it (answer delay, and the
//!   no-show split).
//!
//! Nothing here names a patient, a number or an appointment id.

pub mod prom;
pub mod read;
pub mod status;

use crate::care::reminder::{Answer, Phase, ReminderState};
use crate::model::{AppointmentStatus, PatientId};
use crate::vault::{Owner, Tree, Txn, Vault, VaultResult};
use crate::webhook::payload::StatusKind;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

const K_COUNT: u8 = b'C';
const K_WAMID: u8 = b'W';
const K_SENT: u8 = b'S';

/// What is counted. The discriminant is stored in keys: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kpi {
    /// A reminder Meta accepted (a dry-run send is not counted).
    Sent = 1,
    Delivered = 2,
    Read = 3,
    Confirmed = 4,
    Cancelled = 5,
    Rescheduled = 6,
    OptOut = 7,
    /// A no-show (S26) of a visit whose reminder the patient confirmed.
    NoShowConfirmed = 8,
    NoShowUnconfirmed = 9,
    /// A fulfilled visit (arrived, checked in, fulfilled) whose reminder the
    /// patient confirmed.
    FulfilledConfirmed = 10,
    FulfilledUnconfirmed = 11,
    /// A staff member's first reply after a hand-off; the value is the
    /// seconds the patient waited for it.
    StaffResponse = 12,
}

impl Kpi {
    pub const ALL: [Kpi; 12] = [
        Kpi::Sent,
        Kpi::Delivered,
        Kpi::Read,
        Kpi::Confirmed,
        Kpi::Cancelled,
        Kpi::Rescheduled,
        Kpi::OptOut,
        Kpi::NoShowConfirmed,
        Kpi::NoShowUnconfirmed,
        Kpi::FulfilledConfirmed,
        Kpi::FulfilledUnconfirmed,
        Kpi::StaffResponse,
    ];

    fn from_byte(b: u8) -> Option<Kpi> {
        Kpi::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// The answers a reminder's buttons give (an answer kind added later
    /// is not counted until it is mapped here).
    #[allow(unreachable_patterns)] // a variant added to `Answer` elsewhere
    pub fn of_answer(answer: Answer) -> Option<Kpi> {
        match answer {
            Answer::Confirm => Some(Kpi::Confirmed),
            Answer::Cancel => Some(Kpi::Cancelled),
            _ => None,
        }
    }
}

/// The clinic's local date of `at` as YYYYMMDD.
pub fn day_of(vault: &Vault, at: Timestamp) -> u32 {
    let tz = vault
        .care()
        .map_or(jiff::tz::TimeZone::UTC, |s| s.time_zone.clone());
    day_number(at.to_zoned(tz).date())
}

pub fn day_number(d: jiff::civil::Date) -> u32 {
    let y = u32::try_from(d.year()).unwrap_or(0);
    let m = u32::try_from(d.month()).unwrap_or(0);
    let dd = u32::try_from(d.day()).unwrap_or(0);
    y * 10_000 + m * 100 + dd
}

fn count_key(day: u32, kpi: Kpi, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + 16);
    k.push(K_COUNT);
    k.extend_from_slice(&day.to_be_bytes());
    k.push(kpi as u8);
    k.extend_from_slice(id.get(..16).unwrap_or(id));
    k
}

/// Parses a count key: (day, kpi).
fn parse_count_key(k: &[u8]) -> Option<(u32, Kpi)> {
    if k.first() != Some(&K_COUNT) {
        return None;
    }
    let day = u32::from_be_bytes(k.get(1..5)?.try_into().ok()?);
    Some((day, Kpi::from_byte(*k.get(5)?)?))
}

/// Stages one counted happening, identified by `identity` (the same
/// identity on the same day counts once).
fn stage(vault: &Vault, txn: &mut Txn, kpi: Kpi, identity: &str, value: Vec<u8>, now: Timestamp) {
    let id = vault.blind_index("kpi", identity);
    let key = count_key(day_of(vault, now), kpi, &id);
    txn.put(Tree::Kpi, key, Owner::System, value);
}

/// When an appointment's latest reminder went out, and whether the patient
/// confirmed it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct SentRecord {
    at: Timestamp,
    #[serde(default)]
    confirmed: bool,
}

fn sent_key(token_prefix: &[u8]) -> Vec<u8> {
    let mut k = vec![K_SENT];
    k.extend_from_slice(token_prefix.get(..6).unwrap_or(token_prefix));
    k
}

fn wamid_key(vault: &Vault, wamid: &str) -> Vec<u8> {
    let mut k = vec![K_WAMID];
    k.extend_from_slice(&vault.blind_index("kpi-wamid", wamid)[..16]);
    k
}

/// The appointment token prefix a reminder's outbox reference names
/// (`reminder:<12 hex>:<offset>`, see `care::shell`).
fn reminder_token(reference: Option<&str>) -> Option<Vec<u8>> {
    let rest = reference?.strip_prefix("reminder:")?;
    let (hex_part, _offset) = rest.split_once(':')?;
    hex::decode(hex_part).ok().filter(|t| t.len() == 6)
}

/// Hook: Meta accepted an outbound message (on the writer, in the txn that
/// records the send). Counts it if it is a reminder; true if it did (the
/// KPIs then track its wamid's statuses).
pub fn on_sent(
    vault: &Vault,
    txn: &mut Txn,
    reference: Option<&str>,
    wamid: &str,
    dry_run: bool,
    now: Timestamp,
) -> VaultResult<bool> {
    let Some(token) = reminder_token(reference) else {
        return Ok(false);
    };
    if dry_run {
        return Ok(false);
    }
    stage(
        vault,
        txn,
        Kpi::Sent,
        &format!("sent:{wamid}"),
        Vec::new(),
        now,
    );
    txn.put(
        Tree::Kpi,
        wamid_key(vault, wamid),
        Owner::System,
        Vec::new(),
    );
    // A status can overtake the send's commit (Meta's webhook came before
    // the worker recorded the wamid): it was not counted then, so it is now.
    if let Some(r) = vault.wa_status(wamid)? {
        let read = r.seen & StatusKind::Read.bit() != 0;
        let delivered = read || r.seen & StatusKind::Delivered.bit() != 0;
        count_statuses(vault, txn, wamid, delivered, read, now);
    }
    let record = SentRecord {
        at: now,
        confirmed: false,
    };
    txn.put_json(Tree::Kpi, sent_key(&token), Owner::System, &record)?;
    Ok(true)
}

/// Hook: a status of an outbound message, new for its wamid (the webhook
/// dedupes (wamid, status); `seen_before` is the set of states seen
/// earlier). A `read` without a `delivered` before it counts both.
pub fn on_status(
    vault: &Vault,
    txn: &mut Txn,
    wamid: &str,
    kind: StatusKind,
    seen_before: u8,
    tracked_now: bool,
    now: Timestamp,
) -> VaultResult<()> {
    if !matches!(kind, StatusKind::Delivered | StatusKind::Read) {
        return Ok(());
    }
    // `tracked_now`: this very commit records the wamid (a cut-off send
    // confirmed by this webhook), which a read cannot see yet.
    if !tracked_now && vault.get(Tree::Kpi, &wamid_key(vault, wamid))?.is_none() {
        return Ok(());
    }
    let delivered_seen = seen_before & StatusKind::Delivered.bit() != 0;
    let read = kind == StatusKind::Read;
    count_statuses(vault, txn, wamid, !read || !delivered_seen, read, now);
    Ok(())
}

/// Counts a reminder's wamid as delivered and/or read (each at most once:
/// the key names the wamid).
fn count_statuses(
    vault: &Vault,
    txn: &mut Txn,
    wamid: &str,
    delivered: bool,
    read: bool,
    now: Timestamp,
) {
    if delivered {
        let id = format!("delivered:{wamid}");
        stage(vault, txn, Kpi::Delivered, &id, Vec::new(), now);
    }
    if read {
        let id = format!("read:{wamid}");
        stage(vault, txn, Kpi::Read, &id, Vec::new(), now);
    }
}

/// Hook: the patient's answer to a reminder was accepted (it goes to the
/// PMS in this txn). Counted once per (appointment, kind of answer); the
/// value is the seconds since the latest reminder, if one went out.
pub fn on_answer(
    vault: &Vault,
    txn: &mut Txn,
    token: &[u8; 16],
    kpi: Kpi,
    now: Timestamp,
) -> VaultResult<()> {
    let key = sent_key(token);
    let sent: Option<SentRecord> = vault.get_json(Tree::Kpi, &key)?;
    let value = sent.map_or_else(Vec::new, |s| {
        let secs = now.duration_since(s.at).as_secs().max(0);
        u32::try_from(secs)
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec()
    });
    let identity = format!("answer:{}:{}", hex::encode(token), kpi as u8);
    stage(vault, txn, kpi, &identity, value, now);
    if let Some(mut s) = sent {
        s.confirmed = kpi == Kpi::Confirmed;
        txn.put_json(Tree::Kpi, key, Owner::System, &s)?;
    }
    Ok(())
}

/// Hook: the patient opted out by keyword (once per change: a repeat while
/// opted out changes nothing and is not counted).
pub fn on_opt_out(
    vault: &Vault,
    txn: &mut Txn,
    patient: PatientId,
    now: Timestamp,
) -> VaultResult<()> {
    let identity = format!("opt-out:{}:{}", patient.to_hex(), now.as_nanosecond());
    stage(vault, txn, Kpi::OptOut, &identity, Vec::new(), now);
    Ok(())
}

/// Hook: a staff member's reply in a conversation waiting for staff since
/// `since` (the hand-off): the first reply after a hand-off counts, with
/// the seconds the patient waited. The identity names the conversation and
/// the hand-off's time, so a later hand-off of the same conversation counts
/// again and nothing counts twice.
pub fn on_staff_reply(
    vault: &Vault,
    txn: &mut Txn,
    conversation: &[u8; 16],
    since: Timestamp,
    now: Timestamp,
) {
    let secs = now.duration_since(since).as_secs().max(0);
    let value = u32::try_from(secs)
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    let identity = format!(
        "staff-reply:{}:{}",
        hex::encode(conversation),
        since.as_nanosecond()
    );
    stage(vault, txn, Kpi::StaffResponse, &identity, value, now);
}

/// Hook: an appointment as the PMS left it, with its workflow state before
/// this change. A visit that ends (no-show, arrived / checked in /
/// fulfilled) while its workflow was still open is counted, split by
/// whether the patient confirmed a reminder for it.
pub fn on_appointment(
    vault: &Vault,
    txn: &mut Txn,
    token: &[u8; 16],
    before: &ReminderState,
    status: AppointmentStatus,
    now: Timestamp,
) -> VaultResult<()> {
    if before.phase == Phase::Closed {
        return Ok(());
    }
    let no_show = match status {
        AppointmentStatus::Noshow => true,
        AppointmentStatus::Fulfilled
        | AppointmentStatus::Arrived
        | AppointmentStatus::CheckedIn => false,
        _ => return Ok(()),
    };
    visit_ended(vault, txn, token, no_show, now)
}

/// Hook: a booked visit went by with no attendance from the PMS
/// (`reminders.unattended_after`): a no-show, as an S26 would be. Its
/// workflow is closed in the same commit, so a late report from the PMS
/// does not count the visit again.
pub fn on_unattended(
    vault: &Vault,
    txn: &mut Txn,
    token: &[u8; 16],
    now: Timestamp,
) -> VaultResult<()> {
    visit_ended(vault, txn, token, true, now)
}

/// Counts the end of a visit once (the identity names the appointment's
/// token), split by whether the patient confirmed a reminder for it.
fn visit_ended(
    vault: &Vault,
    txn: &mut Txn,
    token: &[u8; 16],
    no_show: bool,
    now: Timestamp,
) -> VaultResult<()> {
    let confirmed = vault
        .get_json::<SentRecord>(Tree::Kpi, &sent_key(token))?
        .is_some_and(|s| s.confirmed);
    let kpi = match (no_show, confirmed) {
        (true, true) => Kpi::NoShowConfirmed,
        (true, false) => Kpi::NoShowUnconfirmed,
        (false, true) => Kpi::FulfilledConfirmed,
        (false, false) => Kpi::FulfilledUnconfirmed,
    };
    let identity = format!("visit:{}", hex::encode(token));
    stage(vault, txn, kpi, &identity, Vec::new(), now);
    Ok(())
}

#[cfg(test)]
mod tests;
