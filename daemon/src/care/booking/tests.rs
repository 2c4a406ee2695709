//! The booking state machine, without a store or a clock.

use super::*;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

const P: PatientId = PatientId([5; 16]);
const RULES: Rules = Rules {
    hold: SignedDuration::from_mins(15),
};

fn pick(id: &str) -> Pick {
    Pick {
        slot: id.to_owned(),
        start: t(86_400),
        provider: Some("D1".into()),
        location: None,
    }
}

fn step(s: &Option<Booking>) -> Step {
    s.as_ref().unwrap().step.clone()
}

/// Start → (group) → slot → Yes: the hold, the request and the reply.
fn requested() -> Booking {
    let start = Input::Start {
        several: true,
        language: Some("de".into()),
    };
    let (s, fx) = decide(None, P, start, t(0), RULES);
    assert_eq!(fx, [Effect::OfferGroups]);
    let g = search::Group::Service("A".into());
    let (s, fx) = decide(s, P, Input::Group(g.clone()), t(1), RULES);
    assert_eq!(
        fx,
        [Effect::OfferSlots {
            group: Some(g.clone()),
            page: 0
        }]
    );
    let (s, fx) = decide(s, P, Input::Slot(Some(pick("S1"))), t(2), RULES);
    assert_eq!(fx, [Effect::AskConfirm(pick("S1"))]);
    assert_eq!(step(&s), Step::Confirming { pick: pick("S1") });
    let (s, fx) = decide(s, P, Input::Yes(Some(pick("S1"))), t(3), RULES);
    let until = t(3 + 900);
    assert_eq!(
        fx,
        [
            Effect::Hold {
                pick: pick("S1"),
                until
            },
            Effect::Request(pick("S1")),
            Effect::Say(Say::Asking),
        ]
    );
    let s = s.unwrap();
    assert_eq!(s.group, Some(g));
    assert_eq!(s.language.as_deref(), Some("de"));
    assert_eq!(
        s.step,
        Step::Requested {
            pick: pick("S1"),
            until
        }
    );
    s
}

#[test]
fn the_pms_booking_it_for_the_patient_confirms_and_ends() {
    let s = requested();
    let until = t(903);
    // Another slot's appointment changes nothing.
    let other = Input::Appointment {
        slot: "S2".into(),
        mine: true,
    };
    let (same, fx) = decide(Some(s.clone()), P, other, t(10), RULES);
    assert_eq!(same.as_ref(), Some(&s));
    assert!(fx.is_empty());
    let mine = Input::Appointment {
        slot: "S1".into(),
        mine: true,
    };
    let (after, fx) = decide(Some(s), P, mine, t(10), RULES);
    assert_eq!(after, None);
    assert_eq!(
        fx,
        [
            Effect::Release {
                slot: "S1".into(),
                until
            },
            Effect::RemoveSlot("S1".into()),
            Effect::Say(Say::Booked(t(86_400))),
            Effect::Confirmed(pick("S1")),
        ]
    );
}

#[test]
fn taken_by_another_patient_or_expired_fails_with_a_fresh_list() {
    let s = requested();
    let g = s.group.clone();
    let until = t(903);
    let theirs = Input::Appointment {
        slot: "S1".into(),
        mine: false,
    };
    let (after, fx) = decide(Some(s.clone()), P, theirs, t(10), RULES);
    assert_eq!(step(&after), Step::Choosing { page: 0 });
    assert_eq!(
        fx,
        [
            Effect::Release {
                slot: "S1".into(),
                until
            },
            Effect::RemoveSlot("S1".into()),
            Effect::Failed(pick("S1"), Failure::Taken),
            Effect::Say(Say::Taken),
            Effect::OfferSlots {
                group: g.clone(),
                page: 0
            },
        ]
    );
    // A stale timer does nothing; the hold's own frees the slot (it stays
    // in the table for the next patient).
    let (same, fx) = decide(
        Some(s.clone()),
        P,
        Input::HoldExpired { due: t(5) },
        t(5),
        RULES,
    );
    assert_eq!(same, Some(s.clone()));
    assert!(fx.is_empty());
    let (after, fx) = decide(Some(s), P, Input::HoldExpired { due: until }, until, RULES);
    assert_eq!(step(&after), Step::Choosing { page: 0 });
    assert_eq!(
        fx,
        [
            Effect::Release {
                slot: "S1".into(),
                until
            },
            Effect::Failed(pick("S1"), Failure::Expired),
            Effect::Say(Say::Taken),
            Effect::OfferSlots { group: g, page: 0 },
        ]
    );
    assert_eq!(Failure::Expired.as_str(), "expired");
}

#[test]
fn while_the_pms_decides_taps_get_a_wait_and_leaving_keeps_the_request() {
    let s = requested();
    for input in [
        Input::Start {
            several: false,
            language: None,
        },
        Input::Slot(Some(pick("S2"))),
        Input::Yes(Some(pick("S2"))),
        Input::AnotherTime,
        Input::Page {
            group: None,
            page: 1,
        },
    ] {
        let (same, fx) = decide(Some(s.clone()), P, input, t(20), RULES);
        assert_eq!(same.as_ref(), Some(&s));
        assert_eq!(fx, [Effect::Say(Say::StillWaiting)]);
    }
    let (kept, fx) = decide(Some(s.clone()), P, Input::End, t(20), RULES);
    assert_eq!(kept, Some(s));
    assert!(fx.is_empty());
}

#[test]
fn pages_another_time_a_gone_slot_and_leaving_while_choosing() {
    let start = Input::Start {
        several: false,
        language: None,
    };
    let (s, fx) = decide(None, P, start, t(0), RULES);
    assert_eq!(
        fx,
        [Effect::OfferSlots {
            group: None,
            page: 0
        }]
    );
    let later = Input::Page {
        group: None,
        page: 1,
    };
    let (s, _) = decide(s, P, later, t(1), RULES);
    assert_eq!(step(&s), Step::Choosing { page: 1 });
    let (s, _) = decide(s, P, Input::Slot(Some(pick("S9"))), t(2), RULES);
    let (s, fx) = decide(s, P, Input::AnotherTime, t(3), RULES);
    assert_eq!(
        fx,
        [Effect::OfferSlots {
            group: None,
            page: 0
        }]
    );
    // Taken meanwhile (or held for someone else): said, and a fresh list.
    let (s, fx) = decide(s, P, Input::Yes(None), t(4), RULES);
    assert_eq!(
        fx,
        [
            Effect::Say(Say::Gone),
            Effect::OfferSlots {
                group: None,
                page: 0
            }
        ]
    );
    // Leaving while choosing drops it; nothing is held, nothing released.
    let (gone, fx) = decide(s, P, Input::End, t(5), RULES);
    assert_eq!(gone, None);
    assert!(fx.is_empty());
    let (none, fx) = decide(None, P, Input::HoldExpired { due: t(5) }, t(5), RULES);
    assert_eq!(none, None);
    assert!(fx.is_empty());
}
