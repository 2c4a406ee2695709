//! Conversations (issue 11, items 1 and 4): one per patient, a small pure
//! state machine over what the patient writes and what staff do.
//!
//! - this file: [`decide`], no I/O, no clock read;
//! - `understand`: what a text means (greeting, menu choice, staff), per
//!   language, from the message files;
//! - `store`: where the state, the message log and the timers live;
//! - `shell`: runs decisions on the vault's writer and stages effects;
//! - `config`: the `[conversations]` section.
//!
//! The bot answers only in the bot phases (`Idle`, `Menu`, `Intake`,
//! `Closed`): a greeting shows the menu; Book, for a known patient, starts
//! the booking flow (`care::booking`): the phase stays `Menu` with the
//! topic `Booking`, which says the booking flow owns the patient's taps;
//! leaving it (the idle reset, a greeting, a hand-off) ends a booking
//! being chosen (a request the PMS was sent stays until it answers). My
//! appointments and Results are answered for a known patient
//! (`care::my_appointments`, `care::results_menu`); Book or My
//! appointments from an unknown contact starts the intake
//! (`care::intake`), which ends in a new-patient request and a hand-off;
//! anything else hands the conversation to staff.

pub mod config;
pub mod shell;
pub mod store;
pub mod understand;

#[cfg(test)]
mod tests;

use crate::model::PatientId;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// A staff member's text: never in `Debug` (a command's Debug may be
/// logged), serialized as the plain string (the idempotency digest).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StaffText(pub String);

impl std::fmt::Debug for StaffText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaffText({} bytes)", self.0.len())
    }
}

/// Meta's customer-service window: free text only within it.
pub const WINDOW: SignedDuration = SignedDuration::from_hours(24);

/// Where a conversation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing going on: the bot answers the next message.
    Idle,
    /// The menu was shown; an idle timeout brings it back to `Idle`.
    Menu,
    /// Handed to staff, nobody answered yet: the bot stays silent.
    WaitingForStaff { since: Timestamp, reason: Reason },
    /// Staff answered: the bot stays silent until they close it.
    WithStaff { since: Timestamp },
    /// Staff closed it: back to the bot.
    Closed { at: Timestamp },
    /// An unknown contact answers the intake's questions (`care::intake`);
    /// the idle reset ends it.
    Intake { step: crate::care::intake::Step },
}

impl Phase {
    /// The name the API uses.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Menu => "menu",
            Phase::WaitingForStaff { .. } => "waiting",
            Phase::WithStaff { .. } => "with-staff",
            Phase::Closed { .. } => "closed",
            Phase::Intake { .. } => "intake",
        }
    }

    /// Whether staff hold it (the bot does not answer).
    pub fn with_staff(&self) -> bool {
        matches!(
            self,
            Phase::WaitingForStaff { .. } | Phase::WithStaff { .. }
        )
    }
}

/// What the conversation is about: the flow the patient chose. Booking and
/// results get their own flows later (issue 11 items 2 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    #[default]
    None,
    Booking,
    Appointments,
    Results,
}

/// Why a conversation went to staff (the `reason` of the
/// `staff-requested` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The patient asked for a person.
    Asked,
    /// The bot did not understand.
    NotUnderstood,
    /// A flow that does not exist yet (booking, appointments, results).
    NotYetAutomated,
    /// An unknown contact's intake ended in a new-patient request: staff
    /// finish the registration.
    NewPatient,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Asked => "asked",
            Reason::NotUnderstood => "not-understood",
            Reason::NotYetAutomated => "not-yet-automated",
            Reason::NewPatient => "new-patient",
        }
    }
}

/// A menu entry (a list row, a number, a keyword).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Book,
    Appointments,
    Results,
    Staff,
}

/// What a patient's message means to the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Greeting,
    Choice(Choice),
    /// Anything else: a sentence, a photo, a voice note.
    Other,
    /// Another workflow answered it (a reminder tap, a consent keyword),
    /// or it is not for anyone (a reaction): logged, not answered here.
    Elsewhere,
    /// An answer to the intake's question, as the shell judged it.
    Answer(crate::care::intake::Answer),
}

/// Who the conversation is with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contact {
    /// A known patient (sealed under their key).
    Patient(PatientId),
    /// A number or business-scoped id that matches no single patient
    /// (sealed under the system key; `Debug` shows no number).
    Unknown(crate::whatsapp::message::Recipient),
}

/// One conversation, sealed under the patient's key (the system key for
/// an unknown contact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub contact: Contact,
    pub phase: Phase,
    #[serde(default)]
    pub topic: Topic,
    /// The language the patient greeted in, over their own.
    #[serde(default)]
    pub language: Option<String>,
    /// The patient's last message (the 24-hour window runs from here).
    pub last_inbound: Option<Timestamp>,
    /// The pending idle-reset timer.
    #[serde(default)]
    pub idle_due: Option<Timestamp>,
    /// The pending retention timer of the message log.
    #[serde(default)]
    pub purge_due: Option<Timestamp>,
    /// The next message log entry's number.
    #[serde(default)]
    pub next_entry: u64,
    /// Staff texts written outside the window, sent when the patient
    /// answers the reopen template (log entry numbers).
    #[serde(default)]
    pub held: Vec<u64>,
    pub updated: Timestamp,
}

impl Conversation {
    pub fn new(contact: Contact, now: Timestamp) -> Self {
        Self {
            contact,
            phase: Phase::Idle,
            topic: Topic::None,
            language: None,
            last_inbound: None,
            idle_due: None,
            purge_due: None,
            next_entry: 0,
            held: Vec::new(),
            updated: now,
        }
    }

    /// The patient, when the contact is one.
    pub fn patient(&self) -> Option<PatientId> {
        match &self.contact {
            Contact::Patient(p) => Some(*p),
            Contact::Unknown(_) => None,
        }
    }

    /// Whose key seals its records.
    pub fn owner(&self) -> crate::vault::Owner {
        self.patient()
            .map_or(crate::vault::Owner::System, crate::vault::Owner::Patient)
    }

    /// Whether the booking flow owns the patient's taps: `Menu` with the
    /// topic `Booking` (an unknown contact's intake for a booking has the
    /// topic too, in `Intake`: that is no booking yet).
    pub fn in_booking(&self) -> bool {
        self.phase == Phase::Menu && self.topic == Topic::Booking
    }

    /// Whether free text may go to the patient at `now`.
    pub fn window_open(&self, now: Timestamp) -> bool {
        self.last_inbound
            .is_some_and(|at| now.duration_since(at) < WINDOW)
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The patient wrote (`language`: the one a greeting was in).
    Message {
        intent: Intent,
        at: Timestamp,
        language: Option<String>,
    },
    /// Staff wrote (the log entry `entry` holds the text).
    StaffReply { entry: u64 },
    /// Staff closed the conversation.
    StaffClose,
    /// The idle-reset timer due at `due` fired.
    IdleTimer { due: Timestamp },
}

/// A short text of the bot's (`care::messages` key in `texts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    StaffWillAnswer,
    NotYetAutomated,
    /// The intake is over: the practice will register them.
    IntakeThanks {
        consent: bool,
    },
}

/// What a decision asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    SendMenu,
    Say(Say),
    /// A `staff-requested` event.
    Handoff(Reason),
    /// The staff text of log entry `entry`, as free text.
    SendStaffText {
        entry: u64,
    },
    /// The reopen template (the text waits in `held`).
    SendReopenTemplate,
    /// The held staff texts, now that the patient has answered.
    ReleaseHeld(Vec<u64>),
    ScheduleIdle(Timestamp),
    CancelIdle(Timestamp),
    /// The intake's questions and request (`care::intake_shell`).
    Intake(crate::care::intake::Effect),
    /// A known patient's upcoming appointments (`care::my_appointments`).
    ShowAppointments,
    /// A known patient's newest offered result (`care::results_menu`).
    OfferResults,
    /// The booking flow takes over (a known patient chose Book).
    StartBooking,
    /// The conversation left the booking flow.
    EndBooking,
}

/// The rules a decision needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub idle_reset: SignedDuration,
    /// Whether Book is automated (`[booking] enabled`) for known patients.
    pub booking: bool,
}

/// The pure transition. `None` in: the patient's first message (any other
/// input on no conversation changes nothing).
pub fn decide(
    state: Option<Conversation>,
    contact: Contact,
    input: Input,
    now: Timestamp,
    rules: Rules,
) -> (Option<Conversation>, Vec<Effect>) {
    let mut fx = Vec::new();
    let Some(mut s) = state.or_else(|| {
        matches!(input, Input::Message { .. }).then(|| Conversation::new(contact, now))
    }) else {
        return (None, fx);
    };
    let booking_before = s.in_booking();
    match input {
        Input::Message {
            intent,
            at,
            language,
        } => {
            if s.last_inbound.is_none_or(|t| at > t) {
                s.last_inbound = Some(at);
            }
            if intent == Intent::Elsewhere && language.is_some() {
                // The patient named a language: the conversation follows.
                s.language.clone_from(&language);
            }
            if intent == Intent::Elsewhere && !s.phase.with_staff() {
                // Nothing for the bot.
            } else if s.phase.with_staff() {
                // Shown to staff in the inbox, not answered by the bot.
                if !s.held.is_empty() {
                    fx.push(Effect::ReleaseHeld(std::mem::take(&mut s.held)));
                }
            } else {
                on_message(&mut s, intent, language, now, rules, &mut fx);
            }
        }
        Input::StaffReply { entry } => {
            cancel_idle(&mut s, &mut fx);
            if s.window_open(now) {
                fx.push(Effect::SendStaffText { entry });
            } else {
                // One reopen template for however many texts wait.
                if s.held.is_empty() {
                    fx.push(Effect::SendReopenTemplate);
                }
                s.held.push(entry);
            }
            if !matches!(s.phase, Phase::WithStaff { .. }) {
                s.phase = Phase::WithStaff { since: now };
            }
        }
        Input::StaffClose => {
            if s.phase.with_staff() {
                s.phase = Phase::Closed { at: now };
                s.topic = Topic::None;
                s.held.clear();
            }
        }
        Input::IdleTimer { due } => {
            if s.idle_due == Some(due) {
                s.idle_due = None;
                // The language the patient greeted in stays: it is theirs.
                if matches!(s.phase, Phase::Intake { .. }) {
                    // An unfinished intake ends cleanly: its answers go.
                    fx.push(Effect::Intake(crate::care::intake::Effect::Drop));
                }
                if matches!(s.phase, Phase::Menu | Phase::Intake { .. }) {
                    s.phase = Phase::Idle;
                    s.topic = Topic::None;
                }
            }
        }
    }
    if booking_before && !s.in_booking() {
        fx.push(Effect::EndBooking);
    }
    s.updated = now;
    (Some(s), fx)
}

fn on_message(
    s: &mut Conversation,
    intent: Intent,
    language: Option<String>,
    now: Timestamp,
    rules: Rules,
    fx: &mut Vec<Effect>,
) {
    if let Phase::Intake { step } = s.phase {
        match intent {
            Intent::Answer(answer) => return intake_answer(s, step, answer, now, rules, fx),
            // Start over, or a person: the intake is dropped.
            Intent::Greeting | Intent::Choice(Choice::Staff) => {
                fx.push(Effect::Intake(crate::care::intake::Effect::Drop));
            }
            _ => {
                let again = crate::care::intake::Effect::Ask { step, again: true };
                fx.push(Effect::Intake(again));
                return rearm_idle(s, now, rules, fx);
            }
        }
    }
    let unknown = matches!(s.contact, Contact::Unknown(_));
    match intent {
        Intent::Greeting => {
            if language.is_some() {
                s.language = language;
            }
            s.phase = Phase::Menu;
            s.topic = Topic::None;
            fx.push(Effect::SendMenu);
            restart_idle(s, now, rules, fx);
        }
        Intent::Choice(Choice::Staff) => handoff(s, Reason::Asked, Topic::None, now, fx),
        // Someone the clinic does not know: the intake first.
        Intent::Choice(Choice::Book) if unknown => start_intake(s, Topic::Booking, now, rules, fx),
        Intent::Choice(Choice::Appointments) if unknown => {
            start_intake(s, Topic::Appointments, now, rules, fx);
        }
        Intent::Choice(Choice::Book) if rules.booking && s.patient().is_some() => {
            s.phase = Phase::Menu;
            s.topic = Topic::Booking;
            fx.push(Effect::StartBooking);
            restart_idle(s, now, rules, fx);
        }
        Intent::Choice(Choice::Book) => {
            handoff(s, Reason::NotYetAutomated, Topic::Booking, now, fx);
        }
        Intent::Choice(Choice::Appointments) => {
            cancel_idle(s, fx);
            s.phase = Phase::Idle;
            s.topic = Topic::Appointments;
            fx.push(Effect::ShowAppointments);
        }
        Intent::Choice(Choice::Results) if !unknown => {
            cancel_idle(s, fx);
            s.phase = Phase::Idle;
            s.topic = Topic::Results;
            fx.push(Effect::OfferResults);
        }
        Intent::Choice(Choice::Results) => {
            handoff(s, Reason::NotYetAutomated, Topic::Results, now, fx);
        }
        Intent::Other | Intent::Answer(_) => {
            handoff(s, Reason::NotUnderstood, Topic::None, now, fx);
        }
        Intent::Elsewhere => {}
    }
}

fn start_intake(
    s: &mut Conversation,
    topic: Topic,
    now: Timestamp,
    rules: Rules,
    fx: &mut Vec<Effect>,
) {
    let (step, ask) = crate::care::intake::start();
    // Nothing kept from an earlier, unfinished one.
    fx.push(Effect::Intake(crate::care::intake::Effect::Drop));
    s.phase = Phase::Intake { step };
    s.topic = topic;
    fx.push(Effect::Intake(ask));
    rearm_idle(s, now, rules, fx);
}

fn intake_answer(
    s: &mut Conversation,
    step: crate::care::intake::Step,
    answer: crate::care::intake::Answer,
    now: Timestamp,
    rules: Rules,
    fx: &mut Vec<Effect>,
) {
    let (next, effects) = crate::care::intake::next(step, answer);
    let consent = effects.iter().find_map(|e| match e {
        crate::care::intake::Effect::Request { consent } => Some(*consent),
        _ => None,
    });
    fx.extend(effects.into_iter().map(Effect::Intake));
    match next {
        Some(step) => {
            s.phase = Phase::Intake { step };
            rearm_idle(s, now, rules, fx);
        }
        None => {
            let topic = s.topic;
            handoff(s, Reason::NewPatient, topic, now, fx);
            if let (Some(consent), Some(Effect::Say(say))) = (consent, fx.last_mut()) {
                *say = Say::IntakeThanks { consent };
            }
        }
    }
}

/// A new idle-reset timer from `now` (the old one cancelled).
fn rearm_idle(s: &mut Conversation, now: Timestamp, rules: Rules, fx: &mut Vec<Effect>) {
    cancel_idle(s, fx);
    let due = now.saturating_add(rules.idle_reset).unwrap_or(now);
    s.idle_due = Some(due);
    fx.push(Effect::ScheduleIdle(due));
}

fn handoff(
    s: &mut Conversation,
    reason: Reason,
    topic: Topic,
    now: Timestamp,
    fx: &mut Vec<Effect>,
) {
    cancel_idle(s, fx);
    s.phase = Phase::WaitingForStaff { since: now, reason };
    s.topic = topic;
    fx.push(Effect::Handoff(reason));
    fx.push(Effect::Say(match reason {
        Reason::NotYetAutomated => Say::NotYetAutomated,
        Reason::NewPatient => Say::IntakeThanks { consent: true },
        Reason::Asked | Reason::NotUnderstood => Say::StaffWillAnswer,
    }));
}

fn restart_idle(s: &mut Conversation, now: Timestamp, rules: Rules, fx: &mut Vec<Effect>) {
    cancel_idle(s, fx);
    let due = now.saturating_add(rules.idle_reset).unwrap_or(now);
    s.idle_due = Some(due);
    fx.push(Effect::ScheduleIdle(due));
}

fn cancel_idle(s: &mut Conversation, fx: &mut Vec<Effect>) {
    if let Some(due) = s.idle_due.take() {
        fx.push(Effect::CancelIdle(due));
    }
}
