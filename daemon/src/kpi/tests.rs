use super::read::{self, Summary};
use super::*;
use crate::keys::MasterKey;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn commit(vault: &Vault, f: impl FnOnce(&Vault, &mut Txn) -> VaultResult<()> + Send + 'static) {
    vault
        .write_blocking(move |v| {
            let mut txn = Txn::new(ts("2027-01-17T09:00:00Z"));
            f(v, &mut txn)?;
            Ok::<_, crate::vault::VaultError>((txn, ()))
        })
        .unwrap();
}

fn state(phase: Phase) -> ReminderState {
    ReminderState {
        appointment: "ZZ-A1".to_owned(),
        patient: PatientId([7; 16]),
        start: ts("2027-01-20T09:00:00Z"),
        phase,
        pending: Vec::new(),
        sent: vec![0],
        reschedule: None,
    }
}

#[test]
fn each_happening_counts_once_and_only_reminders_count() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), &MasterKey::from_bytes([0x4b; 32])).unwrap();
    let token = [9u8; 16];
    let reference = format!("reminder:{}:0", hex::encode(&token[..6]));
    let sent_at = ts("2027-01-17T09:00:00Z");
    commit(&vault, move |v, txn| {
        assert!(on_sent(
            v,
            txn,
            Some(&reference),
            "wamid.R1",
            false,
            sent_at
        )?);
        // Not reminders: a reply, a dry run.
        assert!(!on_sent(
            v,
            txn,
            Some("care-reply"),
            "wamid.T1",
            false,
            sent_at
        )?);
        on_sent(
            v,
            txn,
            Some("reminder:0a0b0c0d0e0f:1"),
            "wamid.D1",
            true,
            sent_at,
        )
        .map(drop)
    });
    let t1 = ts("2027-01-17T09:05:00Z");
    commit(&vault, move |v, txn| {
        on_status(v, txn, "wamid.R1", StatusKind::Sent, 0, false, t1)?;
        // `read` with no `delivered` before it: both.
        on_status(v, txn, "wamid.R1", StatusKind::Read, 1, false, t1)?;
        // A late `delivered` after that, the same identity: once.
        on_status(v, txn, "wamid.R1", StatusKind::Delivered, 1, false, t1)?;
        on_status(v, txn, "wamid.T1", StatusKind::Read, 0, false, t1)
    });
    let t2 = ts("2027-01-17T09:10:00Z");
    commit(&vault, move |v, txn| {
        on_answer(v, txn, &token, Kpi::Confirmed, t2)?;
        on_opt_out(v, txn, PatientId([7; 16]), t2)
    });
    // Arrived, then fulfilled: one visit (the workflow was closed by the first).
    commit(&vault, move |v, txn| {
        on_appointment(
            v,
            txn,
            &token,
            &state(Phase::Confirmed),
            AppointmentStatus::Arrived,
            t2,
        )?;
        on_appointment(
            v,
            txn,
            &token,
            &state(Phase::Closed),
            AppointmentStatus::Fulfilled,
            t2,
        )?;
        on_appointment(
            v,
            txn,
            &[1; 16],
            &state(Phase::Open),
            AppointmentStatus::Noshow,
            t2,
        )?;
        on_appointment(
            v,
            txn,
            &[2; 16],
            &state(Phase::Open),
            AppointmentStatus::Booked,
            t2,
        )
    });
    let s = read::total(&vault).unwrap();
    assert_eq!(s.get(Kpi::Sent), 1);
    assert_eq!(s.get(Kpi::Delivered), 1);
    assert_eq!(s.get(Kpi::Read), 1);
    assert_eq!(s.get(Kpi::Confirmed), 1);
    assert_eq!(s.get(Kpi::OptOut), 1);
    assert_eq!(s.get(Kpi::FulfilledConfirmed), 1);
    assert_eq!(s.get(Kpi::NoShowUnconfirmed), 1);
    assert_eq!(s.get(Kpi::NoShowConfirmed), 0);
    assert_eq!(s.delays, [600]);
    assert_eq!(s.no_show_rate(true), Some(0.0));
    assert_eq!(s.no_show_rate(false), Some(1.0));
    // Berlin is not configured here: days are UTC.
    assert_eq!(read::summary(&vault, 20270117, 20270117).unwrap(), s);
    assert_eq!(
        read::summary(&vault, 20270118, 20271231).unwrap(),
        Summary::default()
    );
    vault.close().unwrap();
}

#[test]
fn a_status_that_overtook_the_send_is_counted_with_the_send() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), &MasterKey::from_bytes([0x4c; 32])).unwrap();
    let t = ts("2027-01-17T09:00:00Z");
    // The webhook's `read` lands first (not a reminder yet: not counted).
    commit(&vault, move |v, txn| {
        let batch = crate::webhook::apply::Batch {
            statuses: vec![crate::webhook::apply::StatusUpdate {
                wamid: "wamid.EARLY".to_owned(),
                status: Some(StatusKind::Read),
                time: None,
                recipient: None,
                recipient_user_id: None,
                outbox_seq: None,
                error_codes: Vec::new(),
            }],
            ..Default::default()
        };
        crate::webhook::apply::stage(v, txn, &batch, t)
    });
    assert_eq!(read::total(&vault).unwrap(), Summary::default());
    commit(&vault, move |v, txn| {
        on_sent(
            v,
            txn,
            Some("reminder:0a0b0c0d0e0f:0"),
            "wamid.EARLY",
            false,
            t,
        )
        .map(drop)
    });
    let s = read::total(&vault).unwrap();
    assert_eq!(
        (s.get(Kpi::Sent), s.get(Kpi::Delivered), s.get(Kpi::Read)),
        (1, 1, 1)
    );
    vault.close().unwrap();
}

#[test]
fn median_and_buckets() {
    let mut s = Summary {
        delays: vec![30, 120, 4_000, 100_000],
        ..Summary::default()
    };
    assert_eq!(s.median_delay(), Some(2_060.0));
    assert_eq!(s.delay_buckets(), [1, 2, 2, 2, 3, 3, 3, 4]);
    s.delays.pop();
    assert_eq!(s.median_delay(), Some(120.0));
    assert_eq!(Summary::default().median_delay(), None);
    let mut day = Summary {
        staff_response: vec![300, 60],
        ..Summary::default()
    };
    day.counts.insert(Kpi::StaffResponse, 2);
    let mut total = Summary::default();
    total.merge(&day);
    total.merge(&Summary {
        staff_response: vec![120],
        ..Summary::default()
    });
    assert_eq!(total.staff_response, [60, 120, 300]);
    assert_eq!(total.median_staff_response(), Some(120.0));
    assert_eq!(total.get(Kpi::StaffResponse), 2);
}

#[test]
fn the_exposition_is_well_formed() {
    let mut s = Summary::default();
    s.counts.insert(Kpi::Sent, 3);
    s.delays = vec![10];
    let text = prom::encode(&s, prom::Gauges::default());
    assert!(text.contains("clinic_relay_reminders_sent_total 3\n"));
    assert!(text.contains("clinic_relay_no_show_ratio{confirmed_reminder=\"true\"} NaN\n"));
    assert!(text.contains("clinic_relay_reminder_answer_delay_seconds_bucket{le=\"+Inf\"} 1\n"));
    for line in text.lines() {
        assert!(
            line.starts_with("# HELP ")
                || line.starts_with("# TYPE ")
                || line.starts_with("clinic_relay_"),
            "{line}"
        );
    }
}
