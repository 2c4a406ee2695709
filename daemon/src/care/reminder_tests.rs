use super::*;
use crate::care::config::RemindersConfig;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn berlin() -> TimeZone {
    TimeZone::get("Europe/Berlin").unwrap()
}

fn booked(start: &str) -> Input {
    Input::Booked {
        appointment: "A1".to_owned(),
        patient: PatientId([1; 16]),
        start: ts(start),
        confirmed: false,
    }
}

fn timers(fx: &[Effect]) -> Vec<Timestamp> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::ScheduleTimer(p) => Some(p.due),
            _ => None,
        })
        .collect()
}

#[test]
fn three_days_before_keeps_the_local_time_across_the_spring_change() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    // Tue 31 March 2026 10:00 CEST; the clocks went forward on Sun 29 March.
    let start = ts("2026-03-31T08:00:00Z");
    // Sat 28 March 10:00 CET: 71 hours of elapsed time, 10:00 on the wall.
    assert_eq!(
        cal.due(start, SignedDuration::from_hours(72)),
        Some(ts("2026-03-28T09:00:00Z"))
    );
    assert_eq!(
        cal.due(start, SignedDuration::from_hours(24)),
        Some(ts("2026-03-30T08:00:00Z"))
    );
}

#[test]
fn three_days_before_keeps_the_local_time_across_the_autumn_change() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    // Tue 27 October 2026 10:00 CET; the clocks went back on Sun 25 October.
    let start = ts("2026-10-27T09:00:00Z");
    // Sat 24 October 10:00 CEST: 73 hours before.
    assert_eq!(
        cal.due(start, SignedDuration::from_hours(72)),
        Some(ts("2026-10-24T08:00:00Z"))
    );
    // An offset that is not whole days is elapsed time.
    assert_eq!(
        cal.due(start, SignedDuration::from_hours(2)),
        Some(ts("2026-10-27T07:00:00Z"))
    );
}

#[test]
fn a_reminder_outside_the_allowed_hours_moves_to_the_last_allowed_time_before_it() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    // Visit Tue 31 March 07:30 CEST: 24 h before is Mon 07:30, before 08:00,
    // so Sun 29 March 21:00 CEST (the DST day itself).
    assert_eq!(
        cal.due(ts("2026-03-31T05:30:00Z"), SignedDuration::from_hours(24)),
        Some(ts("2026-03-29T19:00:00Z"))
    );
    // Visit at 22:30: 24 h before is 22:30, after 21:00: 21:00 that day.
    assert_eq!(
        cal.due(ts("2026-03-31T20:30:00Z"), SignedDuration::from_hours(24)),
        Some(ts("2026-03-30T19:00:00Z"))
    );
    // 21:00 itself and 08:00 itself are allowed.
    assert_eq!(
        cal.due(ts("2026-03-31T19:00:00Z"), SignedDuration::from_hours(24)),
        Some(ts("2026-03-30T19:00:00Z"))
    );
    assert_eq!(
        cal.due(ts("2026-03-31T06:00:00Z"), SignedDuration::from_hours(24)),
        Some(ts("2026-03-30T06:00:00Z"))
    );
}

#[test]
fn a_booking_schedules_both_reminders_and_each_fires_once() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    let now = ts("2026-03-20T12:00:00Z");
    let (s, fx) = decide(None, booked("2026-03-31T08:00:00Z"), now, &cal);
    let due = timers(&fx);
    assert_eq!(
        due,
        [ts("2026-03-28T09:00:00Z"), ts("2026-03-30T08:00:00Z")]
    );
    let fire = |s, due| {
        decide(
            s,
            Input::TimerFired {
                offset: 0,
                due,
                eligible: Ok(()),
            },
            due,
            &cal,
        )
    };
    let (s, fx) = fire(s, due[0]);
    assert_eq!(
        fx,
        [Effect::SendReminder {
            offset: 0,
            expires: ts("2026-03-31T08:00:00Z")
        }]
    );
    // The same timer again (a replay): nothing.
    let (s, fx) = fire(s, due[0]);
    assert!(fx.is_empty());
    assert_eq!(s.as_ref().unwrap().sent, [0]);
}

#[test]
fn a_confirmation_drops_the_24h_reminder_and_tells_the_pms() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    let now = ts("2026-03-20T12:00:00Z");
    let (s, fx) = decide(None, booked("2026-03-31T08:00:00Z"), now, &cal);
    let second = timers(&fx)[1];
    let (s, fx) = decide(s, Input::Answered(Answer::Confirm), now, &cal);
    assert_eq!(
        fx,
        [
            Effect::CancelTimer(Pending {
                offset: 1,
                due: second
            }),
            Effect::ToPms(Answer::Confirm),
            Effect::Reply(Reply::Confirmed),
        ]
    );
    // A second tap: a reply, no second message to the PMS.
    let (s, fx) = decide(s, Input::Answered(Answer::Confirm), now, &cal);
    assert_eq!(fx, [Effect::Reply(Reply::Confirmed)]);
    // The stale 24 h timer, if it fires anyway, sends nothing.
    let (_, fx) = decide(
        s,
        Input::TimerFired {
            offset: 1,
            due: second,
            eligible: Ok(()),
        },
        second,
        &cal,
    );
    assert!(fx.is_empty());
}

#[test]
fn a_cancel_or_reschedule_replaces_the_pending_reminders() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    let now = ts("2026-03-20T12:00:00Z");
    let (s, _) = decide(None, booked("2026-03-31T08:00:00Z"), now, &cal);
    let (s2, fx) = decide(s.clone(), booked("2026-04-02T08:00:00Z"), now, &cal);
    let cancelled = fx
        .iter()
        .filter(|e| matches!(e, Effect::CancelTimer(_)))
        .count();
    assert_eq!(cancelled, 2);
    assert_eq!(
        timers(&fx),
        [ts("2026-03-30T08:00:00Z"), ts("2026-04-01T08:00:00Z")]
    );
    assert_eq!(s2.unwrap().pending.len(), 2);
    let (s3, fx) = decide(s, Input::Cancelled, now, &cal);
    assert_eq!(fx.len(), 2);
    assert!(fx.iter().all(|e| matches!(e, Effect::CancelTimer(_))));
    assert_eq!(s3.as_ref().unwrap().phase, Phase::Closed);
    let (_, fx) = decide(s3, Input::Answered(Answer::Confirm), now, &cal);
    assert_eq!(fx, [Effect::Reply(Reply::Closed)]);
}

#[test]
fn an_ineligible_patient_gets_no_reminder_and_a_late_booking_skips_past_ones() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    // Booked 48 h before: the 72 h reminder is past and not sent late.
    let now = ts("2026-03-29T08:00:00Z");
    let (s, fx) = decide(None, booked("2026-03-31T08:00:00Z"), now, &cal);
    assert_eq!(timers(&fx), [ts("2026-03-30T08:00:00Z")]);
    let (s, fx) = decide(
        s,
        Input::TimerFired {
            offset: 1,
            due: ts("2026-03-30T08:00:00Z"),
            eligible: Err(Ineligible::NoConsent),
        },
        ts("2026-03-30T08:00:00Z"),
        &cal,
    );
    assert_eq!(
        fx,
        [Effect::Skipped {
            offset: 1,
            reason: Ineligible::NoConsent
        }]
    );
    assert!(s.unwrap().sent.is_empty());
    // No state and no booking: nothing.
    assert_eq!(decide(None, Input::Cancelled, now, &cal), (None, vec![]));
}

#[test]
fn a_merge_moves_the_reminders_to_the_survivor_without_resending() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    let now = ts("2026-03-20T12:00:00Z");
    let (s, fx) = decide(None, booked("2026-03-31T08:00:00Z"), now, &cal);
    let first = timers(&fx)[0];
    let (s, _) = decide(
        s,
        Input::TimerFired {
            offset: 0,
            due: first,
            eligible: Ok(()),
        },
        first,
        &cal,
    );
    let moved = Input::Booked {
        appointment: "A1".to_owned(),
        patient: PatientId([2; 16]),
        start: ts("2026-03-31T08:00:00Z"),
        confirmed: false,
    };
    let (s, fx) = decide(s, moved, first, &cal);
    assert!(fx.is_empty(), "{fx:?}");
    let s = s.unwrap();
    assert_eq!(s.patient, PatientId([2; 16]));
    assert_eq!((s.sent.as_slice(), s.pending.len()), (&[0u8][..], 1));
}

#[test]
fn due_times_are_whole_seconds() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    assert_eq!(
        cal.due(
            ts("2026-03-31T08:00:00.900Z"),
            SignedDuration::from_hours(24)
        ),
        Some(ts("2026-03-30T08:00:00Z"))
    );
}

fn open_state(cal: &Calendar<'_>, now: Timestamp) -> Option<ReminderState> {
    decide(None, booked("2026-06-10T08:00:00Z"), now, cal).0
}

#[test]
fn reschedule_offers_the_open_slots_or_hands_over_to_staff() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    let now = ts("2026-06-01T08:00:00Z");
    let s = open_state(&cal, now);
    let open = vec!["S1".to_owned(), "S2".to_owned()];
    let (s2, fx) = decide(
        s.clone(),
        Input::RescheduleAsked { open: open.clone() },
        now,
        &cal,
    );
    assert_eq!(fx, [Effect::OfferSlots(open)]);
    assert_eq!(s2, s, "offering changes nothing");
    let (_, fx) = decide(
        s.clone(),
        Input::RescheduleAsked { open: vec![] },
        now,
        &cal,
    );
    assert_eq!(
        fx,
        [
            Effect::Handoff {
                reason: "reschedule-no-slots"
            },
            Effect::Reply(Reply::NoSlots)
        ]
    );
    // Past the visit: nothing to move.
    let late = ts("2026-06-10T08:00:00Z");
    let (_, fx) = decide(s, Input::RescheduleAsked { open: vec![] }, late, &cal);
    assert_eq!(fx, [Effect::Reply(Reply::Closed)]);
}

#[test]
fn a_chosen_slot_is_asked_of_the_pms_once_and_a_new_time_clears_it() {
    let (cfg, tz) = (RemindersConfig::default(), berlin());
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    let now = ts("2026-06-01T08:00:00Z");
    let s = open_state(&cal, now);
    let chosen = |slot: Option<&str>| Input::SlotChosen {
        slot: slot.map(str::to_owned),
    };
    let (s, fx) = decide(s, chosen(Some("S1")), now, &cal);
    assert_eq!(
        fx,
        [
            Effect::RequestReschedule { slot: "S1".into() },
            Effect::Reply(Reply::RescheduleRequested)
        ]
    );
    // The same row again (a second tap): only the reply.
    let (s, fx) = decide(s, chosen(Some("S1")), now, &cal);
    assert_eq!(fx, [Effect::Reply(Reply::RescheduleRequested)]);
    let (s, fx) = decide(s, chosen(None), now, &cal);
    assert_eq!(fx, [Effect::Reply(Reply::SlotGone)]);
    // The PMS moved the appointment (S13): a new request may follow.
    let (s, _) = decide(s, booked("2026-06-12T08:00:00Z"), now, &cal);
    assert_eq!(s.as_ref().unwrap().reschedule, None);
    let (s, _) = decide(s, Input::Cancelled, now, &cal);
    let (_, fx) = decide(s, chosen(Some("S2")), now, &cal);
    assert_eq!(fx, [Effect::Reply(Reply::Closed)]);
}

#[test]
fn a_fulfilled_visit_gets_one_follow_up_inside_the_allowed_hours_when_configured() {
    let tz = berlin();
    let off = RemindersConfig::default();
    let cal = Calendar {
        config: &off,
        tz: &tz,
    };
    let now = ts("2026-06-01T08:00:00Z");
    let s = open_state(&cal, now);
    // Off by default: nothing after the visit.
    let visit_end = ts("2026-06-10T08:30:00Z");
    let (_, fx) = decide(s.clone(), Input::Fulfilled, visit_end, &cal);
    assert!(timers(&fx).is_empty(), "{fx:?}");

    let on = RemindersConfig {
        follow_up: Some(SignedDuration::from_hours(3)),
        ..RemindersConfig::default()
    };
    let cal = Calendar {
        config: &on,
        tz: &tz,
    };
    // 10:30 in Berlin + 3 h = 13:30.
    let (s2, fx) = decide(s.clone(), Input::Fulfilled, visit_end, &cal);
    assert_eq!(timers(&fx), [ts("2026-06-10T11:30:00Z")]);
    // Arrived, then fulfilled: the first starts the delay, no second timer.
    let (s2, fx) = decide(s2, Input::Fulfilled, ts("2026-06-10T09:00:00Z"), &cal);
    assert!(timers(&fx).is_empty(), "{fx:?}");
    let fire = |eligible| Input::TimerFired {
        offset: FOLLOW_UP,
        due: ts("2026-06-10T11:30:00Z"),
        eligible,
    };
    let at = ts("2026-06-10T11:30:00Z");
    let (s3, fx) = decide(s2.clone(), fire(Ok(())), at, &cal);
    assert!(matches!(fx[..], [Effect::SendFollowUp { .. }]), "{fx:?}");
    let (_, fx) = decide(s3, fire(Ok(())), at, &cal);
    assert!(fx.is_empty(), "once only: {fx:?}");
    let (_, fx) = decide(s2.clone(), fire(Err(Ineligible::NoConsent)), at, &cal);
    assert_eq!(
        fx,
        [Effect::Skipped {
            offset: FOLLOW_UP,
            reason: Ineligible::NoConsent
        }]
    );
    // Marked a no-show after all: the follow-up goes with it.
    let (_, fx) = decide(s2, Input::NoShow, at, &cal);
    assert!(matches!(fx[..], [Effect::CancelTimer(p)] if p.offset == FOLLOW_UP));

    // Fulfilled late in the evening: the next morning at 08:00.
    let (_, fx) = decide(s, Input::Fulfilled, ts("2026-06-10T17:30:00Z"), &cal);
    assert_eq!(timers(&fx), [ts("2026-06-11T06:00:00Z")]);
}

#[test]
fn a_visit_with_no_attendance_by_the_configured_time_is_a_no_show_once() {
    let cfg = RemindersConfig {
        unattended_after: Some(SignedDuration::from_hours(24)),
        ..RemindersConfig::default()
    };
    let tz = berlin();
    let cal = Calendar {
        config: &cfg,
        tz: &tz,
    };
    let now = ts("2027-01-10T09:00:00Z");
    let start = "2027-01-20T09:00:00Z";
    let (s, fx) = decide(None, booked(start), now, &cal);
    let unattended = Pending {
        offset: UNATTENDED,
        due: ts("2027-01-21T09:00:00Z"),
    };
    assert!(fx.contains(&Effect::ScheduleTimer(unattended)));
    // A confirmation keeps it: attendance is what ends it.
    let (s, _) = decide(s, Input::Answered(Answer::Confirm), now, &cal);
    assert!(s.as_ref().unwrap().pending.contains(&unattended));
    let fired = Input::TimerFired {
        offset: UNATTENDED,
        due: unattended.due,
        eligible: Err(Ineligible::NoConsent),
    };
    let (closed, fx) = decide(s.clone(), fired.clone(), unattended.due, &cal);
    // (The 72 h reminder never fired in this test: it is dropped too.)
    assert_eq!(fx.iter().filter(|e| **e == Effect::Unattended).count(), 1);
    assert!(closed.as_ref().unwrap().pending.is_empty());
    assert_eq!(closed.as_ref().unwrap().phase, Phase::Closed);
    // Fired again (a replayed timer): nothing more.
    let (_, fx) = decide(closed, fired.clone(), unattended.due, &cal);
    assert!(fx.is_empty());
    // Attended (or cancelled, or a no-show reported) before: no timer left.
    for end in [Input::Fulfilled, Input::Cancelled, Input::NoShow] {
        let (ended, fx) = decide(s.clone(), end, now, &cal);
        assert!(fx.contains(&Effect::CancelTimer(unattended)));
        let (_, fx) = decide(ended, fired.clone(), unattended.due, &cal);
        assert!(!fx.contains(&Effect::Unattended));
    }
    // Moved: the timer follows the new start.
    let (_, fx) = decide(s, booked("2027-01-27T09:00:00Z"), now, &cal);
    assert!(fx.contains(&Effect::CancelTimer(unattended)));
    assert!(fx.contains(&Effect::ScheduleTimer(Pending {
        offset: UNATTENDED,
        due: ts("2027-01-28T09:00:00Z"),
    })));
}
