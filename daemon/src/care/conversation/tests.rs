use super::*;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

const P: Contact = Contact::Patient(PatientId([7; 16]));
const RULES: Rules = Rules {
    idle_reset: SignedDuration::from_mins(30),
    booking: false,
};

fn msg(intent: Intent, at: i64) -> Input {
    Input::Message {
        intent,
        at: t(at),
        language: None,
    }
}

#[test]
fn a_greeting_shows_the_menu_and_the_idle_timer_resets_it() {
    let input = Input::Message {
        intent: Intent::Greeting,
        at: t(0),
        language: Some("es".into()),
    };
    let (s, fx) = decide(None, P, input, t(0), RULES);
    let s = s.unwrap();
    assert_eq!(s.phase, Phase::Menu);
    assert_eq!(s.language.as_deref(), Some("es"));
    let due = t(1800);
    assert_eq!(fx, [Effect::SendMenu, Effect::ScheduleIdle(due)]);
    // A stale timer does nothing; the right one resets quietly.
    let (s2, fx) = decide(
        Some(s.clone()),
        P,
        Input::IdleTimer { due: t(5) },
        t(5),
        RULES,
    );
    assert_eq!(s2.unwrap().phase, Phase::Menu);
    assert!(fx.is_empty());
    let (s3, fx) = decide(Some(s), P, Input::IdleTimer { due }, due, RULES);
    let s3 = s3.unwrap();
    // The language the patient greeted in outlives the reset.
    assert_eq!(
        (s3.phase, s3.idle_due, s3.language.as_deref()),
        (Phase::Idle, None, Some("es"))
    );
    assert!(fx.is_empty());
}

#[test]
fn anything_not_understood_goes_to_staff_once_and_the_bot_then_stays_silent() {
    let (s, fx) = decide(None, P, msg(Intent::Other, 0), t(0), RULES);
    let s = s.unwrap();
    assert_eq!(
        s.phase,
        Phase::WaitingForStaff {
            since: t(0),
            reason: Reason::NotUnderstood
        }
    );
    assert_eq!(
        fx,
        [
            Effect::Handoff(Reason::NotUnderstood),
            Effect::Say(Say::StaffWillAnswer)
        ]
    );
    // Later messages are for staff: no answer, no second event.
    let (s, fx) = decide(Some(s), P, msg(Intent::Greeting, 60), t(60), RULES);
    let s = s.unwrap();
    assert!(fx.is_empty());
    assert_eq!(s.last_inbound, Some(t(60)));
    assert!(matches!(s.phase, Phase::WaitingForStaff { since, .. } if since == t(0)));
}

#[test]
fn menu_choices_hand_over_with_their_topic() {
    for (choice, topic, reason, say) in [
        (
            Choice::Staff,
            Topic::None,
            Reason::Asked,
            Say::StaffWillAnswer,
        ),
        (
            Choice::Book,
            Topic::Booking,
            Reason::NotYetAutomated,
            Say::NotYetAutomated,
        ),
    ] {
        let (s, _) = decide(None, P, msg(Intent::Greeting, 0), t(0), RULES);
        let (s, fx) = decide(s, P, msg(Intent::Choice(choice), 10), t(10), RULES);
        let s = s.unwrap();
        assert_eq!(s.topic, topic);
        assert_eq!(
            fx,
            [
                Effect::CancelIdle(t(1800)),
                Effect::Handoff(reason),
                Effect::Say(say)
            ]
        );
    }
}

#[test]
fn staff_replies_in_the_window_as_text_and_after_it_with_one_reopen_template() {
    let (s, _) = decide(None, P, msg(Intent::Other, 0), t(0), RULES);
    let (s, fx) = decide(s, P, Input::StaffReply { entry: 1 }, t(100), RULES);
    assert_eq!(fx, [Effect::SendStaffText { entry: 1 }]);
    assert_eq!(
        s.as_ref().unwrap().phase,
        Phase::WithStaff { since: t(100) }
    );
    let later = t(25 * 3600);
    let (s, fx) = decide(s, P, Input::StaffReply { entry: 2 }, later, RULES);
    assert_eq!(fx, [Effect::SendReopenTemplate]);
    let (s, fx) = decide(s, P, Input::StaffReply { entry: 3 }, later, RULES);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(s.as_ref().unwrap().held, [2, 3]);
    // The patient answers: the held texts go out, the bot says nothing.
    let (s, fx) = decide(s, P, msg(Intent::Other, 25 * 3600 + 60), later, RULES);
    assert_eq!(fx, [Effect::ReleaseHeld(vec![2, 3])]);
    let s = s.unwrap();
    assert!(s.held.is_empty() && s.phase == Phase::WithStaff { since: t(100) });
    // Closed: back to the bot.
    let (s, fx) = decide(Some(s), P, Input::StaffClose, later, RULES);
    assert!(fx.is_empty());
    let (s, fx) = decide(s, P, msg(Intent::Greeting, 26 * 3600), later, RULES);
    assert_eq!(s.unwrap().phase, Phase::Menu);
    assert_eq!(fx.first(), Some(&Effect::SendMenu));
}

#[test]
fn inputs_other_than_a_message_need_a_conversation() {
    for input in [
        Input::StaffClose,
        Input::StaffReply { entry: 0 },
        Input::IdleTimer { due: t(0) },
    ] {
        assert_eq!(decide(None, P, input, t(0), RULES), (None, vec![]));
    }
}

#[test]
fn other_workflows_messages_are_not_answered_but_a_named_language_is_followed() {
    let (s, _) = decide(None, P, msg(Intent::Greeting, 0), t(0), RULES);
    let named = Input::Message {
        intent: Intent::Elsewhere,
        at: t(5),
        language: Some("fr".into()),
    };
    let (s, fx) = decide(s, P, named, t(5), RULES);
    let s = s.unwrap();
    assert!(fx.is_empty());
    assert_eq!(
        (s.phase.clone(), s.language.as_deref()),
        (Phase::Menu, Some("fr"))
    );
    // A reminder tap while waiting for staff: logged, nothing said.
    let (s, _) = decide(Some(s), P, msg(Intent::Other, 10), t(10), RULES);
    let (s, fx) = decide(s, P, msg(Intent::Elsewhere, 20), t(20), RULES);
    assert!(fx.is_empty());
    assert_eq!(s.unwrap().last_inbound, Some(t(20)));
}

#[test]
fn a_known_patients_appointments_and_results_are_answered_by_the_bot() {
    for (choice, topic, effect) in [
        (
            Choice::Appointments,
            Topic::Appointments,
            Effect::ShowAppointments,
        ),
        (Choice::Results, Topic::Results, Effect::OfferResults),
    ] {
        let (s, _) = decide(None, P, msg(Intent::Greeting, 0), t(0), RULES);
        let (s, fx) = decide(s, P, msg(Intent::Choice(choice), 10), t(10), RULES);
        let s = s.unwrap();
        assert_eq!((s.phase.clone(), s.topic), (Phase::Idle, topic));
        assert_eq!(fx, [Effect::CancelIdle(t(1800)), effect]);
    }
}

fn unknown() -> Contact {
    Contact::Unknown(crate::whatsapp::message::Recipient::phone("+4915155509999").unwrap())
}

#[test]
fn an_unknown_contact_is_asked_name_birth_date_and_consent_then_goes_to_staff() {
    use crate::care::intake::{Answer, Effect as I, Step};
    let u = unknown();
    let (s, _) = decide(None, u.clone(), msg(Intent::Greeting, 0), t(0), RULES);
    let (s, fx) = decide(
        s,
        u.clone(),
        msg(Intent::Choice(Choice::Book), 10),
        t(10),
        RULES,
    );
    assert_eq!(
        s.as_ref().unwrap().phase,
        Phase::Intake { step: Step::Name }
    );
    assert!(fx.contains(&Effect::Intake(I::Ask {
        step: Step::Name,
        again: false
    })));
    assert!(fx.contains(&Effect::ScheduleIdle(t(10 + 1800))));
    let answer = |a| msg(Intent::Answer(a), 20);
    let (s, fx) = decide(s, u.clone(), answer(Answer::Usable), t(20), RULES);
    assert_eq!(s.as_ref().unwrap().phase, Phase::Intake { step: Step::Dob });
    assert!(fx.contains(&Effect::Intake(I::Keep(Step::Name))));
    let (s, _) = decide(s, u.clone(), answer(Answer::Usable), t(20), RULES);
    let (s, fx) = decide(s, u.clone(), answer(Answer::No), t(20), RULES);
    let s = s.unwrap();
    assert!(matches!(
        s.phase,
        Phase::WaitingForStaff {
            reason: Reason::NewPatient,
            ..
        }
    ));
    assert_eq!(s.topic, Topic::Booking);
    assert!(fx.contains(&Effect::Intake(I::Request { consent: false })));
    assert!(fx.contains(&Effect::Handoff(Reason::NewPatient)));
    assert_eq!(
        fx.last(),
        Some(&Effect::Say(Say::IntakeThanks { consent: false }))
    );
    assert_eq!(s.idle_due, None);
}

#[test]
fn the_idle_reset_drops_an_unfinished_intake() {
    use crate::care::intake::{Effect as I, Step};
    let u = unknown();
    let (s, _) = decide(
        None,
        u.clone(),
        msg(Intent::Choice(Choice::Appointments), 0),
        t(0),
        RULES,
    );
    let s = s.unwrap();
    assert_eq!(
        (s.phase.clone(), s.topic),
        (Phase::Intake { step: Step::Name }, Topic::Appointments)
    );
    let due = s.idle_due.unwrap();
    let (s, fx) = decide(Some(s), u.clone(), Input::IdleTimer { due }, due, RULES);
    assert_eq!(fx, [Effect::Intake(I::Drop)]);
    let s = s.unwrap();
    assert_eq!((s.phase.clone(), s.topic), (Phase::Idle, Topic::None));
    // A request for a person during the intake drops it too.
    let (s, _) = decide(
        Some(s),
        u.clone(),
        msg(Intent::Choice(Choice::Book), 0),
        t(0),
        RULES,
    );
    let (s, fx) = decide(s, u, msg(Intent::Choice(Choice::Staff), 5), t(5), RULES);
    assert_eq!(fx.first(), Some(&Effect::Intake(I::Drop)));
    assert!(fx.contains(&Effect::Handoff(Reason::Asked)));
    assert!(s.unwrap().phase.with_staff());
}

#[test]
fn book_starts_the_booking_flow_for_a_known_patient_and_leaving_it_ends_it() {
    let rules = Rules {
        booking: true,
        ..RULES
    };
    let book = msg(Intent::Choice(Choice::Book), 0);
    let (s, fx) = decide(None, P, book.clone(), t(0), rules);
    let s = s.unwrap();
    assert_eq!((s.phase.clone(), s.topic), (Phase::Menu, Topic::Booking));
    assert_eq!(fx, [Effect::StartBooking, Effect::ScheduleIdle(t(1800))]);
    // The idle reset ends it.
    let (idle, fx) = decide(
        Some(s.clone()),
        P,
        Input::IdleTimer { due: t(1800) },
        t(1800),
        rules,
    );
    let idle = idle.unwrap();
    assert_eq!((idle.phase, idle.topic), (Phase::Idle, Topic::None));
    assert_eq!(fx, [Effect::EndBooking]);
    // So do a greeting and a hand-off; a tap for the booking flow does not.
    let (_, fx) = decide(Some(s.clone()), P, msg(Intent::Greeting, 5), t(5), rules);
    assert!(fx.contains(&Effect::EndBooking) && fx.contains(&Effect::SendMenu));
    let (_, fx) = decide(Some(s.clone()), P, msg(Intent::Other, 5), t(5), rules);
    assert!(fx.contains(&Effect::EndBooking));
    let (kept, fx) = decide(Some(s.clone()), P, msg(Intent::Elsewhere, 5), t(5), rules);
    assert_eq!(kept.unwrap().topic, Topic::Booking);
    assert!(fx.is_empty());
    // An unknown number: the intake first (it has no patient to book for).
    let (s, _) = decide(None, unknown(), book.clone(), t(0), rules);
    assert!(matches!(s.unwrap().phase, Phase::Intake { .. }));
    // Booking off: staff, as before.
    let (s, _) = decide(None, P, book, t(0), RULES);
    assert!(s.unwrap().phase.with_staff());
}
