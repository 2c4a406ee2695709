//! The generic durable queue (the PMS outbox runs on it): order per key,
//! due times, expiry, attempts, dead letters, poison items, restarts.

use crate::support::*;
use clinic_relay::model::{Event, EventKind};
use clinic_relay::pms::outbound::Outgoing;
use clinic_relay::queue::{self, DeadLetter, Envelope, Next, Outcome, QueueSpec, Settled};
use clinic_relay::vault::{Tree, Txn, Vault};
use jiff::{SignedDuration, Timestamp};

fn message(n: u32) -> Outgoing {
    Outgoing {
        kind: "SIU^S14".to_owned(),
        patient: None,
        control_id: format!("Q{n}"),
        created_at: t0(),
        hl7: format!("MSH|^~\\&|Q|{n}").into_bytes(),
    }
}

const SPEC: QueueSpec = QueueSpec {
    max_attempts: Some(3),
    ..queue::PMS_OUTBOX
};

fn enqueue(vault: &Vault, envelopes: Vec<Envelope<Outgoing>>) {
    let mut txn = Txn::new(t0());
    for e in &envelopes {
        queue::enqueue(&mut txn, &SPEC, e).unwrap();
    }
    vault.commit(txn).unwrap();
}

fn take(vault: &Vault, now: Timestamp) -> Next<Outgoing> {
    take_from(vault, &SPEC, now)
}

fn settle(vault: &Vault, seq: u64, outcome: Outcome, now: Timestamp) -> Settled {
    settle_in(vault, &SPEC, seq, outcome, now)
}

/// The next item of the PMS outbox queue `spec` at `now` (a writer job).
pub(crate) fn take_from(vault: &Vault, spec: &'static QueueSpec, now: Timestamp) -> Next<Outgoing> {
    vault
        .write_blocking(move |v| queue::take_next::<Outgoing>(v, spec, now, false))
        .unwrap()
        .value
}

/// Settles item `seq` of queue `spec` (a writer job).
pub(crate) fn settle_in(
    vault: &Vault,
    spec: &'static QueueSpec,
    seq: u64,
    outcome: Outcome,
    now: Timestamp,
) -> Settled {
    vault
        .write_blocking(move |v| queue::settle::<Outgoing>(v, spec, seq, &outcome, now))
        .unwrap()
        .value
}

fn events(vault: &Vault) -> Vec<Event> {
    vault
        .scan_prefix(Tree::Events, &[])
        .map(|r| serde_json::from_slice(&r.unwrap().1).unwrap())
        .collect()
}

fn dead_letters(vault: &Vault) -> Vec<DeadLetter<Outgoing>> {
    vault
        .scan_prefix(Tree::PmsDeadLetters, &[])
        .map(|r| serde_json::from_slice(&r.unwrap().1).unwrap())
        .collect()
}

fn item(next: Next<Outgoing>) -> (u64, Envelope<Outgoing>) {
    match next {
        Next::Item { seq, envelope } => (seq, envelope),
        other => panic!("expected an item, got {other:?}"),
    }
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

#[test]
fn items_leave_in_order_per_key_and_a_waiting_head_holds_only_its_own_key() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(tmp.path(), &key(1));
    let mut a1 = Envelope::new(message(1), t0());
    a1.order_key = "a".to_owned();
    a1.due = at(60);
    let mut b1 = Envelope::new(message(2), t0());
    b1.order_key = "b".to_owned();
    let mut a2 = Envelope::new(message(3), t0());
    a2.order_key = "a".to_owned();
    enqueue(&vault, vec![a1, b1, a2]);
    // a1 is not due: b1 goes; a2 waits behind a1.
    let (seq, e) = item(take(&vault, t0()));
    assert_eq!(e.item.control_id, "Q2");
    assert_eq!(
        settle(&vault, seq, Outcome::Delivered, t0()),
        Settled::Removed
    );
    assert!(matches!(take(&vault, t0()), Next::WaitUntil(t) if t == at(60)));
    let (seq, e) = item(take(&vault, at(60)));
    assert_eq!(e.item.control_id, "Q1");
    settle(&vault, seq, Outcome::Delivered, at(60));
    assert_eq!(item(take(&vault, at(60))).1.item.control_id, "Q3");
    vault.close().unwrap();
}

#[test]
fn an_item_past_its_expiry_is_dropped_with_an_event_and_never_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(tmp.path(), &key(1));
    let mut stale = Envelope::new(message(1), t0());
    stale.expires = Some(at(3600));
    enqueue(&vault, vec![stale, Envelope::new(message(2), t0())]);
    let (_, next) = item(take(&vault, at(7200)));
    assert_eq!(next.item.control_id, "Q2", "the expired item is not sent");
    let expired: Vec<_> = events(&vault)
        .into_iter()
        .filter(|e| e.kind == EventKind::PmsMessageExpired)
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].details["control_id"], "Q1");
    vault.close().unwrap();
}

#[test]
fn refused_and_exhausted_items_go_to_the_dead_letters_with_an_event() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(tmp.path(), &key(1));
    enqueue(
        &vault,
        vec![
            Envelope::new(message(1), t0()),
            Envelope::new(message(2), t0()),
        ],
    );
    let (seq, _) = item(take(&vault, t0()));
    let refused = settle(&vault, seq, Outcome::Refused("AE: no".to_owned()), t0());
    assert_eq!(refused, Settled::DeadLettered);
    // The next one fails three times: back-off 1 s, 2 s, then out of attempts.
    let (seq, _) = item(take(&vault, t0()));
    assert_eq!(
        settle(&vault, seq, Outcome::Retry("timeout".to_owned()), t0()),
        Settled::RetryAt(at(1))
    );
    assert!(matches!(take(&vault, t0()), Next::WaitUntil(t) if t == at(1)));
    let (seq2, e) = item(take(&vault, at(1)));
    assert_eq!((seq2, e.attempts), (seq, 1));
    assert_eq!(
        settle(&vault, seq, Outcome::Retry("timeout".to_owned()), at(1)),
        Settled::RetryAt(at(3))
    );
    assert_eq!(
        settle(&vault, seq, Outcome::Retry("timeout".to_owned()), at(3)),
        Settled::DeadLettered
    );
    assert!(matches!(take(&vault, at(100)), Next::Empty));
    let dead = dead_letters(&vault);
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].reason, "refused");
    assert_eq!(dead[1].reason, "out of attempts");
    assert_eq!(dead[1].envelope.as_ref().unwrap().attempts, 3);
    let rejected = events(&vault)
        .into_iter()
        .filter(|e| e.kind == EventKind::PmsMessageRejected)
        .count();
    assert_eq!(rejected, 2);
    vault.close().unwrap();
}

#[test]
fn a_poison_item_is_dead_lettered_instead_of_blocking_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(1);
    let vault = open(tmp.path(), &mk);
    enqueue(
        &vault,
        vec![
            Envelope::new(message(1), t0()),
            Envelope::new(message(2), t0()),
        ],
    );
    vault.close().unwrap();
    {
        // Damage the head on disk (a bit flip in its sealed value).
        let db = sled::open(tmp.path().join("store")).unwrap();
        let t = db.open_tree("pms_outbox").unwrap();
        let mut v = t.get(1u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x40;
        t.insert(1u64.to_be_bytes(), v).unwrap();
        db.flush().unwrap();
    }
    let vault = open(tmp.path(), &mk);
    let (_, next) = item(take(&vault, t0()));
    assert_eq!(
        next.item.control_id, "Q2",
        "the damaged head does not block"
    );
    let dead = dead_letters(&vault);
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.starts_with("damaged"), "{}", dead[0].reason);
    assert!(dead[0].envelope.is_none());
    assert!(events(&vault)
        .iter()
        .any(|e| e.kind == EventKind::PmsMessageRejected && e.details["reason"] == "damaged"));
    vault.close().unwrap();
}

#[test]
fn attempts_and_due_times_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = key(1);
    let vault = open(tmp.path(), &mk);
    enqueue(&vault, vec![Envelope::new(message(1), t0())]);
    let (seq, _) = item(take(&vault, t0()));
    settle(&vault, seq, Outcome::Retry("no ACK".to_owned()), t0());
    settle(&vault, seq, Outcome::Retry("no ACK".to_owned()), at(1));
    vault.close().unwrap();

    let vault = open(tmp.path(), &mk);
    assert!(matches!(take(&vault, at(2)), Next::WaitUntil(t) if t == at(3)));
    let (again, e) = item(take(&vault, at(3)));
    assert_eq!(again, seq);
    assert_eq!(e.attempts, 2);
    assert_eq!(e.last_error.as_deref(), Some("no ACK"));
    assert_eq!(
        queue::oldest_enqueued(&vault, &SPEC).unwrap(),
        Some(t0()),
        "status sees when the oldest item was queued"
    );
    vault.close().unwrap();
}

/// A dead letter put back (`queue::dead`, the dashboard's and the admin
/// API's retry): listed without its payload, back at the end of the queue
/// due now with its attempts reset, gone from the dead letters, audited;
/// a second retry finds nothing; one past its expiry is not put back.
#[test]
fn a_retried_dead_letter_is_queued_again_once_and_an_expired_one_is_not() {
    use clinic_relay::queue::dead::{self, RetryError};
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(tmp.path(), &key(1));
    let mut expiring = Envelope::new(message(2), t0());
    expiring.expires = Some(at(60));
    enqueue(&vault, vec![Envelope::new(message(1), t0()), expiring]);
    for _ in 0..2 {
        let (seq, _) = item(take(&vault, t0()));
        let refused = settle(&vault, seq, Outcome::Refused("AE: ZZ no".to_owned()), t0());
        assert_eq!(refused, Settled::DeadLettered);
    }
    let views = dead::list::<Outgoing>(&vault, &SPEC, 50, at(10)).unwrap();
    assert_eq!(views.len(), 2);
    assert!(views
        .iter()
        .all(|v| v.kind.as_deref() == Some("SIU^S14") && v.reason == "refused" && v.retryable));
    assert!(!format!("{views:?}").contains("ZZ no") && !format!("{views:?}").contains("MSH"));

    let retry = |id: u64, now: Timestamp| {
        vault
            .write_blocking(move |v| {
                let mut txn = Txn::new(now);
                let r =
                    dead::stage_retry::<Outgoing>(v, &mut txn, &SPEC, id, "staff:zz-admin", now);
                Ok::<_, clinic_relay::vault::VaultError>((txn, r))
            })
            .unwrap()
            .value
    };
    let first = views[0].id;
    retry(first, at(10)).unwrap();
    let (_, e) = item(take(&vault, at(10)));
    assert_eq!((e.item.control_id.as_str(), e.attempts), ("Q1", 0));
    assert_eq!(e.last_error, None);
    assert_eq!(dead_letters(&vault).len(), 1);
    assert!(matches!(retry(first, at(10)), Err(RetryError::NotFound)));

    // Past its expiry: listed without a button, and not put back.
    let second = views[1].id;
    let later = dead::list::<Outgoing>(&vault, &SPEC, 50, at(61)).unwrap();
    assert_eq!(later.len(), 1);
    assert!(!later[0].retryable);
    assert!(matches!(retry(second, at(61)), Err(RetryError::Expired)));
    assert_eq!(dead_letters(&vault).len(), 1);

    let retried: Vec<_> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .filter(|e| e.action == "pms.outbound.retry")
        .collect();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].actor, "staff:zz-admin");
    assert_eq!(retried[0].details["message"], "SIU^S14");
}
