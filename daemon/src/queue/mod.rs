//! The generic durable queue: the PMS outbox today, the WhatsApp outbox next.
//!
//! Items live in a sequenced vault tree (seq = arrival order, never reused:
//! the vault stores each tree's high-water mark). Each item carries an
//! *order key*: items with the same key leave strictly in seq order (one
//! global key for the PMS; one per recipient for WhatsApp), items with
//! different keys do not wait for each other. An item has a due time
//! (retries with back-off, scheduled sends), an optional expiry (past it the
//! item is dropped with an event, never sent), an attempt count, and ends
//! either delivered, dead-lettered (refused for good, or out of attempts,
//! with an event), or dropped (expired, or its patient was erased).
//!
//! A *poison* item — one that no longer opens or decodes — is moved to the
//! dead letters at once, with an event, instead of blocking its queue.
//!
//! Every step is a decision run on the vault's writer ([`take_next`],
//! [`settle`]): what the worker reads and what it writes back cannot be
//! interleaved with another change. Workers wake on the durable commit that
//! queued an item (see `Vault::outbox_signal`) or at the next due time; they
//! never poll.

use crate::audit::AuditDraft;
use crate::model::{Event, EventKind, PatientId};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub mod dead;
pub mod in_flight;

/// How many items one look for the next due item reads at most. Beyond it
/// the rest waits for the next look (a queue that long is reported by
/// `status` long before).
const SCAN_LIMIT: usize = 10_000;

/// Where a queue lives and how its outcomes are reported.
#[derive(Debug, Clone, Copy)]
pub struct QueueSpec {
    /// For audit actions: `<name>.delivered`, `.dead-lettered`, …
    pub name: &'static str,
    pub items: Tree,
    pub dead_letters: Tree,
    /// The feed event for an item refused for good or out of attempts.
    pub dead_letter_event: EventKind,
    /// The feed event for an item dropped at its expiry.
    pub expired_event: EventKind,
    /// Attempts after which a retried item is dead-lettered (None: retry
    /// until it expires; the PMS outbox is strictly ordered and waits).
    pub max_attempts: Option<u32>,
    pub first_backoff: SignedDuration,
    pub max_backoff: SignedDuration,
    /// Mark each item durably when it is taken, until it settles (see
    /// [`in_flight`]): a receiver without idempotency (WhatsApp) can then
    /// be asked whether a cut-off send arrived before it is sent again.
    pub in_flight: bool,
}

pub const PMS_OUTBOX: QueueSpec = QueueSpec {
    name: "pms.outbound",
    items: Tree::PmsOutbox,
    dead_letters: Tree::PmsDeadLetters,
    dead_letter_event: EventKind::PmsMessageRejected,
    expired_event: EventKind::PmsMessageExpired,
    max_attempts: None,
    first_backoff: SignedDuration::from_secs(1),
    max_backoff: SignedDuration::from_secs(300),
    // The PMS deduplicates on MSH-10, which a resend keeps.
    in_flight: false,
};

/// What a queued payload tells the queue about itself.
pub trait Queued: Serialize + DeserializeOwned + Send + 'static {
    /// Whose key seals it (None: the system key).
    fn patient(&self) -> Option<PatientId>;
    /// PHI-free details for events and audit entries (message kind, ids).
    fn describe(&self) -> BTreeMap<String, String>;
}

/// A queued item with its delivery bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Items with the same key leave in seq order.
    pub order_key: String,
    pub enqueued_at: Timestamp,
    /// Not before this time.
    pub due: Timestamp,
    /// Dropped (with an event), never sent, once this time has passed.
    pub expires: Option<Timestamp>,
    pub attempts: u32,
    /// Why the last attempt failed (sealed with the item; may quote the
    /// receiver's words, so it never goes to logs).
    pub last_error: Option<String>,
    pub item: T,
}

impl<T: Queued> Envelope<T> {
    /// A new item, due now, in the queue's one global order.
    pub fn new(item: T, now: Timestamp) -> Self {
        Self {
            order_key: String::new(),
            enqueued_at: now,
            due: now,
            expires: None,
            attempts: 0,
            last_error: None,
            item,
        }
    }

    fn owner(&self) -> Owner {
        self.item.patient().map_or(Owner::System, Owner::Patient)
    }
}

/// A dead letter: the envelope as it last was, or only why it could not be
/// read at all (a poison item).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter<T> {
    pub seq: u64,
    pub reason: String,
    pub at: Timestamp,
    pub envelope: Option<Envelope<T>>,
}

/// Stages `envelope` at the end of the queue.
pub fn enqueue<T: Queued>(
    txn: &mut Txn,
    spec: &QueueSpec,
    envelope: &Envelope<T>,
) -> VaultResult<()> {
    txn.append_json(spec.items, envelope.owner(), envelope)
}

/// What [`take_next`] found.
#[derive(Debug)]
pub enum Next<T> {
    /// Deliver this one, then [`settle`] it by its seq.
    Item {
        seq: u64,
        envelope: Envelope<T>,
    },
    /// Nothing is due before this time.
    WaitUntil(Timestamp),
    Empty,
}

/// Finds the next item to deliver at `now`, and stages the removal of what
/// must not stay: poison items (to the dead letters), expired items and
/// items of erased patients (dropped). Runs on the vault's writer.
/// With `retry_now` (an operator's "retry now"), items waiting for a retry
/// count as due; order and expiry still hold.
pub fn take_next<T: Queued>(
    vault: &Vault,
    spec: &QueueSpec,
    now: Timestamp,
    retry_now: bool,
) -> VaultResult<(Txn, Next<T>)> {
    take_next_except(vault, spec, now, retry_now, &HashSet::new())
}

/// [`take_next`] for a worker with items in flight: items whose order key
/// is in `busy` (and every later item with that key) are skipped, so that
/// several items with different keys can be out at once.
pub fn take_next_except<T: Queued>(
    vault: &Vault,
    spec: &QueueSpec,
    now: Timestamp,
    retry_now: bool,
    busy: &HashSet<String>,
) -> VaultResult<(Txn, Next<T>)> {
    let (txn, mut batch) = take_batch(vault, spec, now, retry_now, busy, 1)?;
    let next = match batch.items.pop() {
        Some((seq, envelope)) => Next::Item { seq, envelope },
        None => batch.wait_until.map_or(Next::Empty, Next::WaitUntil),
    };
    Ok((txn, next))
}

/// What [`take_batch`] found: due items with distinct order keys, in seq
/// order, and when the next one is due if there are none.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<(u64, Envelope<T>)>,
    pub wait_until: Option<Timestamp>,
}

/// Up to `max` items to deliver side by side, in one scan (one writer job
/// for many items: a worker with free lanes does not wait for a flush per
/// item). At most one item per order key; keys in `busy` are skipped.
pub fn take_batch<T: Queued>(
    vault: &Vault,
    spec: &QueueSpec,
    now: Timestamp,
    retry_now: bool,
    busy: &HashSet<String>,
    max: usize,
) -> VaultResult<(Txn, Batch<T>)> {
    take_batch_held(vault, spec, now, retry_now, busy, max, SignedDuration::ZERO)
}

/// [`take_batch`] for a queue that marks what it takes
/// ([`QueueSpec::in_flight`]): every item taken is marked in the returned
/// txn, and an item still marked from a take that never settled is in
/// doubt and waits `hold` from that take (even on an operator's "retry
/// now": sending it again may send it twice).
pub fn take_batch_held<T: Queued>(
    vault: &Vault,
    spec: &QueueSpec,
    now: Timestamp,
    retry_now: bool,
    busy: &HashSet<String>,
    max: usize,
    hold: SignedDuration,
) -> VaultResult<(Txn, Batch<T>)> {
    let mut txn = Txn::new(now);
    let mut items = Vec::new();
    let mut blocked: HashSet<String> = busy.clone();
    let mut earliest: Option<Timestamp> = None;
    for raw in vault.scan_raw(spec.items).take(SCAN_LIMIT) {
        let (key, opened) = raw?;
        let Some(seq) = seq_of(&key) else {
            poison(&mut txn, spec, key, None, "malformed key", now)?;
            continue;
        };
        let plain = match opened {
            Ok(p) => p,
            Err(VaultError::KeyUnavailable { .. }) => {
                // The patient was erased: their message must not go out.
                remove_item(&mut txn, spec, key);
                txn.audit(
                    AuditDraft::new("system", format!("{}.dropped", spec.name))
                        .detail("reason", "patient erased")
                        .detail("seq", seq.to_string()),
                );
                continue;
            }
            Err(e) => {
                poison(&mut txn, spec, key, Some(seq), &e.to_string(), now)?;
                continue;
            }
        };
        let envelope: Envelope<T> = match decode(&plain, now) {
            Some(e) => e,
            None => {
                poison(&mut txn, spec, key, Some(seq), "does not decode", now)?;
                continue;
            }
        };
        if blocked.contains(&envelope.order_key) {
            continue;
        }
        if envelope.expires.is_some_and(|at| at <= now) {
            drop_expired(&mut txn, spec, key, &envelope, now)?;
            continue;
        }
        if waits(spec, &envelope, now) && !retry_now {
            earliest = Some(earliest.map_or(envelope.due, |e| e.min(envelope.due)));
            blocked.insert(envelope.order_key);
            continue;
        }
        if spec.in_flight {
            let held = in_flight::taken_at(vault, spec, seq)?
                .and_then(|taken| in_flight::held_until(taken, hold, now));
            if let Some(until) = held {
                earliest = Some(earliest.map_or(until, |e| e.min(until)));
                blocked.insert(envelope.order_key);
                continue;
            }
            in_flight::mark(&mut txn, spec, seq, now)?;
        }
        blocked.insert(envelope.order_key.clone());
        items.push((seq, envelope));
        if items.len() >= max {
            break;
        }
    }
    let wait_until = if items.is_empty() { earliest } else { None };
    Ok((txn, Batch { items, wait_until }))
}

/// Whether an item is not due yet at `now`. The clock may jump back (an NTP
/// step, a wrong RTC fixed by hand): an item never waits for the length of
/// that jump unless it was scheduled on purpose. A new item (due when it was
/// enqueued) is due at once, and a retry never waits longer than the longest
/// back-off from now; only a scheduled send (due after it was enqueued, no
/// attempt yet) keeps its wall-clock time.
fn waits<T>(spec: &QueueSpec, envelope: &Envelope<T>, now: Timestamp) -> bool {
    if envelope.due <= now {
        return false;
    }
    if envelope.attempts == 0 {
        return envelope.due > envelope.enqueued_at;
    }
    envelope.due.duration_since(now) <= spec.max_backoff
}

/// How a delivery attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    /// Refused for good (the receiver understood and said no).
    Refused(String),
    /// Try again later (timeouts, "send again", connection errors).
    Retry(String),
    /// [`Outcome::Retry`], due this much later than the back-off alone
    /// (jitter, so that many items failed together do not return together).
    RetryJittered(String, SignedDuration),
    /// [`Outcome::Refused`], with the receiver's PHI-free error code for
    /// the feed event (`details.code`).
    RefusedWith {
        reason: String,
        code: String,
    },
}

/// What [`settle`] did with the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Removed,
    DeadLettered,
    /// Back in the queue, due at this time.
    RetryAt(Timestamp),
    /// The item was no longer there (erased meanwhile).
    Gone,
}

/// Records the outcome of delivering item `seq`. Runs on the vault's writer:
/// the item is read again here, so a change since [`take_next`] (an
/// erasure) is respected.
pub fn settle<T: Queued>(
    vault: &Vault,
    spec: &QueueSpec,
    seq: u64,
    outcome: &Outcome,
    now: Timestamp,
) -> VaultResult<(Txn, Settled)> {
    let mut txn = Txn::new(now);
    let key = seq.to_be_bytes().to_vec();
    let plain = match vault.get(spec.items, &key) {
        Ok(Some(p)) => p,
        Ok(None) | Err(VaultError::KeyUnavailable { .. }) => return Ok((txn, Settled::Gone)),
        Err(e) => return Err(e),
    };
    let Some(mut envelope) = decode::<T>(&plain, now) else {
        poison(&mut txn, spec, key, Some(seq), "does not decode", now)?;
        return Ok((txn, Settled::DeadLettered));
    };
    let settled = match outcome {
        Outcome::Delivered => {
            remove_item(&mut txn, spec, key);
            audit(&mut txn, spec, "delivered", &envelope);
            Settled::Removed
        }
        Outcome::Refused(reason) => {
            envelope.last_error = Some(reason.clone());
            dead_letter(&mut txn, spec, key, seq, envelope, "refused", now)?;
            Settled::DeadLettered
        }
        Outcome::RefusedWith { reason, code } => {
            envelope.last_error = Some(reason.clone());
            let reason = format!("refused:{code}");
            dead_letter(&mut txn, spec, key, seq, envelope, &reason, now)?;
            Settled::DeadLettered
        }
        Outcome::Retry(reason) | Outcome::RetryJittered(reason, _) => {
            let jitter = match outcome {
                Outcome::RetryJittered(_, j) => *j,
                _ => SignedDuration::ZERO,
            };
            envelope.attempts = envelope.attempts.saturating_add(1);
            envelope.last_error = Some(reason.clone());
            // A definite failure: the next attempt is not in doubt.
            in_flight::clear(&mut txn, spec, seq);
            if spec
                .max_attempts
                .is_some_and(|max| envelope.attempts >= max)
            {
                dead_letter(&mut txn, spec, key, seq, envelope, "out of attempts", now)?;
                Settled::DeadLettered
            } else {
                let due = now
                    .checked_add(backoff(spec, envelope.attempts))
                    .and_then(|t| t.checked_add(jitter))
                    .unwrap_or(now);
                envelope.due = due;
                let owner = envelope.owner();
                txn.put_json(spec.items, key, owner, &envelope)?;
                Settled::RetryAt(due)
            }
        }
    };
    Ok((txn, settled))
}

/// The wait before attempt `attempts + 1`: doubling from the first back-off,
/// capped.
pub fn backoff(spec: &QueueSpec, attempts: u32) -> SignedDuration {
    let shift = attempts.saturating_sub(1).min(30);
    let factor = 1i32 << shift;
    spec.first_backoff
        .checked_mul(factor)
        .map_or(spec.max_backoff, |d| d.min(spec.max_backoff))
}

/// When the oldest item still queued was enqueued (for `status`).
pub fn oldest_enqueued(vault: &Vault, spec: &QueueSpec) -> VaultResult<Option<Timestamp>> {
    #[derive(Deserialize)]
    struct Head {
        enqueued_at: Option<Timestamp>,
        created_at: Option<Timestamp>,
    }
    Ok(match vault.first(spec.items)? {
        Some((_, Ok(bytes))) => serde_json::from_slice::<Head>(&bytes)
            .ok()
            .and_then(|h| h.enqueued_at.or(h.created_at)),
        _ => None,
    })
}

/// An envelope, or an item queued before envelopes existed (the PMS outbox
/// of earlier versions held bare messages): wrapped, due now.
fn decode<T: Queued>(plain: &[u8], now: Timestamp) -> Option<Envelope<T>> {
    serde_json::from_slice::<Envelope<T>>(plain)
        .ok()
        .or_else(|| {
            serde_json::from_slice::<T>(plain)
                .ok()
                .map(|item| Envelope::new(item, now))
        })
}

/// Stages the removal of an item and of its in-flight mark.
fn remove_item(txn: &mut Txn, spec: &QueueSpec, key: Vec<u8>) {
    if let Some(seq) = seq_of(&key) {
        in_flight::clear(txn, spec, seq);
    }
    txn.remove(spec.items, key);
}

/// The item `seq` as it is queued now (None: settled, dropped or erased).
pub fn peek<T: Queued>(
    vault: &Vault,
    spec: &QueueSpec,
    seq: u64,
) -> VaultResult<Option<Envelope<T>>> {
    match vault.get(spec.items, &seq.to_be_bytes()) {
        Ok(Some(plain)) => Ok(decode(&plain, Timestamp::UNIX_EPOCH)),
        Ok(None) | Err(VaultError::KeyUnavailable { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

fn audit<T: Queued>(txn: &mut Txn, spec: &QueueSpec, what: &str, envelope: &Envelope<T>) {
    let mut draft = AuditDraft::new("system", format!("{}.{what}", spec.name));
    for (k, v) in envelope.item.describe() {
        draft = draft.detail(k, v);
    }
    draft.subject = envelope.item.patient().map(|p| p.to_string());
    txn.audit(draft);
}

fn event<T: Queued>(
    txn: &mut Txn,
    kind: EventKind,
    envelope: Option<&Envelope<T>>,
    mut details: BTreeMap<String, String>,
    now: Timestamp,
) -> VaultResult<()> {
    if let Some(e) = envelope {
        details.extend(e.item.describe());
    }
    let event = Event {
        kind,
        time: now,
        patient: envelope.and_then(|e| e.item.patient()),
        appointment: None,
        slot: None,
        details,
    };
    // Sealed under the patient's key when it names one.
    let owner = event.patient.map_or(Owner::System, Owner::Patient);
    txn.append_json(Tree::Events, owner, &event)
}

fn dead_letter<T: Queued>(
    txn: &mut Txn,
    spec: &QueueSpec,
    key: Vec<u8>,
    seq: u64,
    envelope: Envelope<T>,
    reason: &str,
    now: Timestamp,
) -> VaultResult<()> {
    remove_item(txn, spec, key);
    audit(txn, spec, "dead-lettered", &envelope);
    let details = BTreeMap::from([("reason".to_owned(), reason.to_owned())]);
    event(txn, spec.dead_letter_event, Some(&envelope), details, now)?;
    let owner = envelope.owner();
    txn.append_json(
        spec.dead_letters,
        owner,
        &DeadLetter {
            seq,
            reason: reason.to_owned(),
            at: now,
            envelope: Some(envelope),
        },
    )
}

fn drop_expired<T: Queued>(
    txn: &mut Txn,
    spec: &QueueSpec,
    key: Vec<u8>,
    envelope: &Envelope<T>,
    now: Timestamp,
) -> VaultResult<()> {
    remove_item(txn, spec, key);
    audit(txn, spec, "expired", envelope);
    event(
        txn,
        spec.expired_event,
        Some(envelope),
        BTreeMap::new(),
        now,
    )
}

/// Moves an item that cannot be read to the dead letters (only what is
/// known about it: its seq and why), so that it never blocks its queue.
fn poison(
    txn: &mut Txn,
    spec: &QueueSpec,
    key: Vec<u8>,
    seq: Option<u64>,
    why: &str,
    now: Timestamp,
) -> VaultResult<()> {
    tracing::error!(
        queue = spec.name,
        seq,
        reason = why,
        "a queued item is damaged; moved to the dead letters"
    );
    remove_item(txn, spec, key);
    txn.audit(
        AuditDraft::new("system", format!("{}.damaged", spec.name))
            .detail("seq", seq.map(|s| s.to_string()).unwrap_or_default()),
    );
    let details = BTreeMap::from([
        ("reason".to_owned(), "damaged".to_owned()),
        (
            "seq".to_owned(),
            seq.map(|s| s.to_string()).unwrap_or_default(),
        ),
    ]);
    // The event's payload type is irrelevant without an envelope.
    event::<Never>(txn, spec.dead_letter_event, None, details, now)?;
    txn.append_json(
        spec.dead_letters,
        Owner::System,
        &DeadLetter::<Never> {
            seq: seq.unwrap_or_default(),
            reason: format!("damaged: {why}"),
            at: now,
            envelope: None,
        },
    )
}

/// A payload type for records that carry none.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Never {}

impl Queued for Never {
    fn patient(&self) -> Option<PatientId> {
        match *self {}
    }
    fn describe(&self) -> BTreeMap<String, String> {
        match *self {}
    }
}
