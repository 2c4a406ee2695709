//! Clock jumps (issue #8) through the injected clock: the wall clock of a
//! clinic box can step back (NTP fixing a fast RTC) or forward (a box that
//! was off for a year). No queued item is delivered twice, nothing waits for
//! the length of a backward jump unless it was scheduled on purpose, expiry
//! and schedules follow the clock forward, deduplication holds, and the
//! audit chain stays valid with its times out of order.

use crate::pms_support::*;
use crate::support::*;
use clinic_relay::pms::outbound::Outgoing;
use clinic_relay::queue::{self, Envelope, Next, Outcome, QueueSpec, Settled};
use clinic_relay::vault::{Txn, Vault};
use jiff::{SignedDuration, Timestamp};

const SPEC: QueueSpec = queue::PMS_OUTBOX;

fn message(n: u32) -> Outgoing {
    Outgoing {
        kind: "SIU^S14".to_owned(),
        patient: None,
        control_id: format!("J{n}"),
        created_at: t0(),
        hl7: format!("MSH|^~\\&|J|{n}").into_bytes(),
    }
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

const DAY: i64 = 86_400;

fn take(vault: &Vault, now: Timestamp) -> Next<Outgoing> {
    vault
        .write_blocking(move |v| queue::take_next::<Outgoing>(v, &SPEC, now, false))
        .unwrap()
        .value
}

fn settle(vault: &Vault, seq: u64, outcome: Outcome, now: Timestamp) -> Settled {
    vault
        .write_blocking(move |v| queue::settle::<Outgoing>(v, &SPEC, seq, &outcome, now))
        .unwrap()
        .value
}

/// Takes the next item and reports it delivered; its control id.
fn deliver(vault: &Vault, now: Timestamp) -> Option<String> {
    match take(vault, now) {
        Next::Item { seq, envelope } => {
            assert_eq!(
                settle(vault, seq, Outcome::Delivered, now),
                Settled::Removed
            );
            Some(envelope.item.control_id)
        }
        _ => None,
    }
}

#[test]
fn queue_items_survive_clock_jumps_back_and_forward_and_none_fires_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = open(tmp.path(), &key(3));
    let fresh = Envelope::new(message(1), t0());
    let mut retried = Envelope::new(message(2), t0());
    retried.order_key = "r".to_owned();
    let mut scheduled = Envelope::new(message(3), t0());
    scheduled.order_key = "s".to_owned();
    scheduled.due = at(DAY);
    let mut expiring = Envelope::new(message(4), t0());
    expiring.order_key = "e".to_owned();
    expiring.due = at(2 * DAY);
    expiring.expires = Some(at(3 * DAY));
    let mut txn = Txn::new(t0());
    for e in [&retried, &fresh, &scheduled, &expiring] {
        queue::enqueue(&mut txn, &SPEC, e).unwrap();
    }
    vault.commit(txn).unwrap();

    // The first delivery of "retried" fails: it is due again one back-off on.
    let Next::Item { seq, envelope } = take(&vault, t0()) else {
        panic!("an item is due")
    };
    assert_eq!(envelope.item.control_id, "J2");
    let Settled::RetryAt(due) = settle(&vault, seq, Outcome::Retry("down".into()), t0()) else {
        panic!("a retry")
    };
    assert!(due > t0());

    // The clock steps back a day. Neither the retry nor the new item waits
    // for that day; the scheduled one keeps its wall-clock time.
    let back = at(-DAY);
    let mut sent = Vec::new();
    while let Some(id) = deliver(&vault, back) {
        sent.push(id);
    }
    sent.sort();
    assert_eq!(sent, ["J1", "J2"], "after the backward jump");
    assert!(matches!(take(&vault, back), Next::WaitUntil(t) if t == at(DAY)));

    // The clock steps forward a year: the scheduled item goes once, the
    // expiring one is dropped (with its event), nothing comes back.
    let forward = at(365 * DAY);
    assert_eq!(deliver(&vault, forward).as_deref(), Some("J3"));
    assert!(matches!(take(&vault, forward), Next::Empty));
    // Back again: still nothing fires a second time.
    assert!(matches!(take(&vault, back), Next::Empty));
    assert!(matches!(take(&vault, t0()), Next::Empty));
    assert!(vault.verify_audit().unwrap() > 0);
    assert_eq!(vault.audit_damage(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_deduplicating_and_its_audit_chain_verifies_across_jumps() {
    let d = Daemon::start("").await;
    let mut c = d.mllp().await;
    let ack = c
        .send(&adt_a04("JUMP-1", "JUMP001", "ZZJUMP", "0151 5550 7001"))
        .await;
    assert_eq!(msa(&ack).0, "AA");

    d.clock.advance(SignedDuration::from_hours(-24));
    // The same message again after the clock went back: still a duplicate.
    let ack = c
        .send(&adt_a04("JUMP-1", "JUMP001", "ZZJUMP", "0151 5550 7001"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let ack = c
        .send(&adt_a04("JUMP-2", "JUMP002", "ZZJUMP", "0151 5550 7002"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let (status, _) = d.api("GET", "/v1/status", None).await;
    assert_eq!(status, 200);

    d.clock.advance(SignedDuration::from_hours(24 * 400));
    let ack = c
        .send(&adt_a04("JUMP-3", "JUMP003", "ZZJUMP", "0151 5550 7003"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let (status, found) = d.api("GET", "/v1/patients?identifier=JUMP001", None).await;
    assert_eq!((status, found["total"].as_u64()), (200, Some(1)));

    let install = d.stop().await;
    let out = install.run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
