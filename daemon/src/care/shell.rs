//! The workflows' shell on the vault's writer: loads a state and the facts
//! a decision needs, runs the pure [`reminder::decide`], and stages the new
//! state and every effect in the caller's transaction, so that a state
//! change, its timers, its outbox items and its events commit together.

use super::reminder::{self, Answer, Calendar, Effect, Ineligible, Input, ReminderState, Reply};
use super::store::{self, Tap, Token};
use super::Settings;
use crate::model::{Appointment, AppointmentStatus, ConsentState, Event, EventKind, PatientId};
use crate::pms::outbound::{ActionError, PatientAction};
use crate::queue::{self, Envelope};
use crate::vault::{Txn, Vault, VaultError, VaultResult};
use crate::whatsapp::message::{self, Params, Recipient, TemplateSpec};
use crate::whatsapp::outbox::{self, OutboxError, WaItem, WA_OUTBOX};
use jiff::Timestamp;
use std::collections::HashMap;

/// The audit actor of what the workflows do.
pub const ACTOR: &str = "care:reminders";

/// States as this transaction leaves them (two inputs about one
/// appointment in one job see each other's result).
#[derive(Default)]
pub struct Session {
    states: HashMap<Token, Option<ReminderState>>,
    /// The results workflow's (`care::results_shell`).
    pub results: super::results_shell::Session,
}

impl Session {
    fn load(&mut self, vault: &Vault, token: &Token) -> VaultResult<Option<ReminderState>> {
        if let Some(s) = self.states.get(token) {
            return Ok(s.clone());
        }
        // A state sealed under an erased patient's key reads as none.
        let s = match store::load(vault, token) {
            Ok(s) => s,
            Err(VaultError::KeyUnavailable { .. } | VaultError::Decode { .. }) => None,
            Err(e) => return Err(e),
        };
        self.states.insert(*token, s.clone());
        Ok(s)
    }
}

/// An appointment as the PMS or the API left it (on the writer, in the
/// txn that stores it).
pub fn on_appointment(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    a: &Appointment,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = vault.care().filter(|s| s.reminders.enabled) else {
        return Ok(());
    };
    let input = match a.status {
        s if s.is_upcoming() => Input::Booked {
            appointment: a.id.clone(),
            patient: a.patient,
            start: a.start,
            confirmed: a.patient_confirmed,
        },
        AppointmentStatus::Noshow => Input::NoShow,
        AppointmentStatus::Fulfilled
        | AppointmentStatus::Arrived
        | AppointmentStatus::CheckedIn => Input::Fulfilled,
        _ => Input::Cancelled,
    };
    let token = store::token(vault, &a.id);
    if let Some(before) = session.load(vault, &token)? {
        crate::kpi::on_appointment(vault, txn, &token, &before, a.status, now)?;
    }
    run(vault, txn, session, &settings, &token, input, now)
}

/// A message from `patient` (on the writer, in the txn of the webhook call
/// that brought it): a quick-reply tap of ours, an opt-out / opt-in
/// keyword, a language's name; anything else is the conversation bot's
/// (`care::conversation`), which also logs every message for the inbox.
#[allow(clippy::too_many_arguments)] // one message's whole context
pub fn on_inbound(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    patient: PatientId,
    content: &crate::webhook::payload::Content,
    message_ref: String,
    at: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    use super::conversation::shell::{self as conversation, Heard};
    let mut heard = Heard::Bot;
    if let Some(id) = content.reply_id() {
        if super::consent::is_opt_out_button(id) {
            let kw = super::consent::Keyword::OptOut;
            super::consent::on_keyword(vault, txn, patient, kw, now)?;
            heard = Heard::Elsewhere;
        } else if super::results_shell::on_tap(vault, txn, &mut session.results, patient, id, now)?
            || super::booking::shell::on_tap(vault, txn, patient, id, now)?
        {
            heard = Heard::Elsewhere;
        } else if !conversation::is_menu_payload(id) {
            on_tap(vault, txn, session, patient, id, now)?;
            heard = Heard::Elsewhere;
        }
    } else if let crate::webhook::payload::Content::Text { body } = content {
        // The answer to a result's proof question (never a keyword: those
        // are left for consent below).
        if super::results_shell::on_text(vault, txn, &mut session.results, patient, body, now)?
            || super::booking::shell::on_text(vault, txn, patient, body, now)?
        {
            heard = Heard::Elsewhere;
        } else if let Some(settings) = vault.care() {
            let catalog = &settings.reminders.messages;
            if super::consent::keyword_in(body, catalog).is_some() || catalog.named(body).is_some()
            {
                super::consent::on_text(vault, txn, patient, body, now)?;
                heard = Heard::Elsewhere;
            }
        }
    }
    let contact = super::conversation::Contact::Patient(patient);
    conversation::on_message(vault, txn, contact, content, message_ref, at, heard, now)
}

/// A quick-reply tap from `patient` (on the writer, in the txn of the
/// webhook call that brought it). Payloads that are not ours are ignored;
/// so is a tap on another patient's appointment.
pub fn on_tap(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    patient: PatientId,
    reply_id: &str,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = vault.care() else {
        return Ok(());
    };
    let Some((tap, token)) = store::parse_payload(reply_id) else {
        return Ok(());
    };
    let state = match session.load(vault, &token)? {
        Some(s) if s.patient == patient => s,
        _ => {
            tracing::info!(
                "a reminder button for an appointment this patient does not have is ignored"
            );
            return Ok(());
        }
    };
    let input = match tap {
        Tap::Confirm => Input::Answered(Answer::Confirm),
        Tap::Cancel => Input::Answered(Answer::Cancel),
        Tap::Reschedule => Input::RescheduleAsked {
            open: super::slots::open(vault, txn, &settings, &state, now)?
                .into_iter()
                .map(|s| s.id)
                .collect(),
        },
        Tap::Slot(r) => Input::SlotChosen {
            slot: super::slots::open(vault, txn, &settings, &state, now)?
                .into_iter()
                .find(|s| store::slot_ref(vault, &s.id) == r)
                .map(|s| s.id),
        },
    };
    run(vault, txn, session, &settings, &token, input, now)
}

/// Runs the timers due at `now` (at most `limit`) as one writer job's txn.
/// Each timer's removal and whatever it queues are in this one commit: a
/// reminder is queued exactly once, across restarts.
pub fn fire_due(vault: &Vault, now: Timestamp, limit: usize) -> VaultResult<(Txn, usize)> {
    let mut txn = Txn::new(now);
    let keys = store::due_timers(vault, now, limit)?;
    let n = keys.len();
    let settings = vault.care();
    let mut session = Session::default();
    for k in keys {
        txn.remove(crate::vault::Tree::Care, k.clone());
        let (Some(settings), Some((due, token, offset))) =
            (settings.as_ref(), store::parse_timer_key(&k))
        else {
            continue;
        };
        if offset == super::results::RETENTION {
            let results = &mut session.results;
            super::results_shell::on_timer(vault, &mut txn, results, due, &token, now)?;
            continue;
        }
        if offset == super::booking::HOLD_EXPIRY {
            super::booking::shell::on_timer(vault, &mut txn, &token, due, now)?;
            continue;
        }
        if matches!(
            offset,
            super::conversation::store::IDLE | super::conversation::store::PURGE
        ) {
            super::conversation::shell::on_timer(vault, &mut txn, &token, offset, due, now)?;
            continue;
        }
        let Some(state) = session.load(vault, &token)? else {
            continue;
        };
        let eligible = eligibility(vault, state.patient)?;
        let input = Input::TimerFired {
            offset,
            due,
            eligible,
        };
        run(vault, &mut txn, &mut session, settings, &token, input, now)?;
    }
    Ok((txn, n))
}

/// Whether a patient may get a reminder: consent, alive, not blocked, a
/// number. (The outbox checks the number can be a mobile.)
fn eligibility(vault: &Vault, patient: PatientId) -> VaultResult<Result<(), Ineligible>> {
    let Some(p) = vault.get_patient(patient)? else {
        return Ok(Err(Ineligible::NoNumber));
    };
    let consent = vault.get_consent(patient)?;
    Ok(if p.deceased {
        Err(Ineligible::Deceased)
    } else if p.protected {
        Err(Ineligible::Blocked)
    } else if consent.is_none_or(|c| c.state != ConsentState::OptedIn) {
        Err(Ineligible::NoConsent)
    } else if p.phone.as_deref().is_none_or(str::is_empty) {
        Err(Ineligible::NoNumber)
    } else {
        Ok(())
    })
}

fn run(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    settings: &Settings,
    token: &Token,
    input: Input,
    now: Timestamp,
) -> VaultResult<()> {
    let cal = Calendar {
        config: &settings.reminders,
        tz: &settings.time_zone,
    };
    let before = session.load(vault, token)?;
    let (after, effects) = reminder::decide(before.clone(), input, now, &cal);
    let Some(state) = after else {
        return Ok(());
    };
    for effect in effects {
        stage_effect(vault, txn, settings, token, &state, effect, now)?;
    }
    store::stage_first_timer(txn, token, before.as_ref(), &state);
    if before.as_ref() != Some(&state) {
        store::stage_state(txn, token, &state)?;
    }
    session.states.insert(*token, Some(state));
    Ok(())
}

fn event(kind: EventKind, now: Timestamp, state: &ReminderState) -> Event {
    Event {
        kind,
        time: now,
        patient: Some(state.patient),
        appointment: Some(state.appointment.clone()),
        slot: None,
        details: Default::default(),
    }
}

fn stage_effect(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    token: &Token,
    state: &ReminderState,
    effect: Effect,
    now: Timestamp,
) -> VaultResult<()> {
    match effect {
        // The index follows the state's earliest pending timer
        // (`store::stage_first_timer`, after every effect).
        Effect::ScheduleTimer(_) | Effect::CancelTimer(_) => {}
        Effect::SendReminder { offset, expires } => {
            send_reminder(vault, txn, settings, token, state, offset, expires, now)?;
        }
        Effect::SendFollowUp { expires } => {
            send_follow_up(vault, txn, settings, token, state, expires, now)?;
        }
        Effect::Skipped { offset, reason } => {
            skipped(vault, txn, state, offset, reason.as_str(), now)?;
        }
        Effect::ToPms(answer) => {
            if let Some(kpi) = crate::kpi::Kpi::of_answer(answer) {
                crate::kpi::on_answer(vault, txn, token, kpi, now)?;
            }
            let action = match answer {
                Answer::Confirm => PatientAction::Confirm {
                    appointment: state.appointment.clone(),
                },
                Answer::Cancel => PatientAction::Cancel {
                    appointment: state.appointment.clone(),
                },
            };
            to_pms(vault, txn, settings, state, &action, now)?;
        }
        Effect::RequestReschedule { slot } => {
            crate::kpi::on_answer(vault, txn, token, crate::kpi::Kpi::Rescheduled, now)?;
            let action = PatientAction::Reschedule {
                appointment: state.appointment.clone(),
                slot: Some(slot),
            };
            to_pms(vault, txn, settings, state, &action, now)?;
        }
        Effect::OfferSlots(ids) => {
            super::slots::offer(vault, txn, settings, token, state, &ids, now)?;
        }
        Effect::Handoff { reason } => {
            let mut ev = event(EventKind::StaffRequested, now, state);
            ev.details.insert("reason".to_owned(), reason.to_owned());
            vault.stage_event(txn, &ev)?;
        }
        Effect::Unattended => crate::kpi::on_unattended(vault, txn, token, now)?,
        Effect::Reply(reply) => reply_to(vault, txn, settings, state, reply, now)?,
    }
    Ok(())
}

/// A patient's action to the PMS (SIU^S14 / SRM^S04 / SRM^S02 through the
/// PMS outbox, with its feed event).
fn to_pms(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    state: &ReminderState,
    action: &PatientAction,
    now: Timestamp,
) -> VaultResult<()> {
    match crate::pms::outbound::stage(vault, txn, &settings.outbound, action, ACTOR, now) {
        Ok(_) => Ok(()),
        Err(ActionError::Vault(e)) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "a patient's answer could not be put to the PMS");
            let mut ev = event(EventKind::MessageFailed, now, state);
            ev.details
                .insert("reason".to_owned(), "pms-message".to_owned());
            vault.stage_event(txn, &ev)
        }
    }
}

/// The patient's number and language (chosen in the chat, else PID-15),
/// if the patient is still known.
pub(super) fn contact(
    vault: &Vault,
    patient: PatientId,
) -> VaultResult<Option<(Recipient, Option<String>)>> {
    let Some(p) = vault.get_patient(patient)? else {
        return Ok(None);
    };
    let Some(to) = p.phone.as_deref().and_then(|n| Recipient::phone(n).ok()) else {
        return Ok(None);
    };
    let chosen = match store::chosen_language(vault, patient) {
        Ok(l) => l,
        Err(VaultError::KeyUnavailable { .. } | VaultError::Decode { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok(Some((to, chosen.or(p.language))))
}

/// A text that names a language ("Español", "deutsch") switches the
/// patient's language for everything after it, and is answered in it.
pub(crate) fn on_language_choice(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    patient: PatientId,
    body: &str,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(lang) = settings.reminders.messages.named(body) else {
        return Ok(());
    };
    store::stage_language(txn, patient, lang)?;
    let Some((to, _)) = contact(vault, patient)? else {
        return Ok(());
    };
    let Ok(msg) = message::text(settings.reminders.messages.text(lang, "language.changed")) else {
        return Ok(());
    };
    queue_reply(vault, txn, patient, to, msg, now)
}

#[allow(clippy::too_many_arguments)] // one effect's whole context
fn send_reminder(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    token: &Token,
    state: &ReminderState,
    offset: u8,
    expires: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    let cfg = &settings.reminders;
    let Some((to, lang)) = recipient(vault, txn, cfg, state, offset, now)? else {
        return Ok(());
    };
    let (date, time) = super::texts::when(&cfg.messages, state.start, &settings.time_zone, lang);
    let (confirm, cancel, reschedule) = (
        store::payload(token, Tap::Confirm),
        store::payload(token, Tap::Cancel),
        store::payload(token, Tap::Reschedule),
    );
    let mut quick_replies = vec![confirm.as_str(), cancel.as_str()];
    if cfg.reschedule_days > 0 {
        quick_replies.push(&reschedule);
    }
    let built = message::template(&TemplateSpec {
        name: &cfg.template,
        language: cfg.template_code(lang),
        header: None,
        body: Params::Positional(vec![&date, &time]),
        quick_replies,
    });
    let reference = format!("reminder:{}:{offset}", hex::encode(&token[..6]));
    queue_template(
        vault, txn, state, offset, to, built, reference, expires, now,
    )
}

/// The post-visit follow-up template (no parameters: nothing of the visit
/// goes out).
fn send_follow_up(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    token: &Token,
    state: &ReminderState,
    expires: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    let offset = reminder::FOLLOW_UP;
    let cfg = &settings.reminders;
    let Some((to, lang)) = recipient(vault, txn, cfg, state, offset, now)? else {
        return Ok(());
    };
    let built = message::template(&TemplateSpec {
        name: &cfg.follow_up_template,
        language: cfg.template_code(lang),
        header: None,
        body: Params::Positional(vec![]),
        quick_replies: vec![],
    });
    let reference = format!("follow-up:{}", hex::encode(&token[..6]));
    queue_template(
        vault, txn, state, offset, to, built, reference, expires, now,
    )
}

/// The patient's number and language for a template at `offset`, or
/// `None` with a `reminder-skipped` event (no usable number).
fn recipient<'c>(
    vault: &Vault,
    txn: &mut Txn,
    cfg: &'c super::config::RemindersConfig,
    state: &ReminderState,
    offset: u8,
    now: Timestamp,
) -> VaultResult<Option<(Recipient, &'c str)>> {
    let Some((to, language)) = contact(vault, state.patient)? else {
        let reason = Ineligible::NoNumber.as_str();
        skipped(vault, txn, state, offset, reason, now)?;
        return Ok(None);
    };
    Ok(Some((to, cfg.language_for(language.as_deref()))))
}

/// A `reminder-skipped` event for `offset` with `reason`.
fn skipped(
    vault: &Vault,
    txn: &mut Txn,
    state: &ReminderState,
    offset: u8,
    reason: &str,
    now: Timestamp,
) -> VaultResult<()> {
    let mut ev = event(EventKind::ReminderSkipped, now, state);
    ev.details.insert("reason".to_owned(), reason.to_owned());
    ev.details.insert("offset".to_owned(), offset.to_string());
    vault.stage_event(txn, &ev)
}

#[allow(clippy::too_many_arguments)] // one outbox item's whole context
fn queue_template(
    vault: &Vault,
    txn: &mut Txn,
    state: &ReminderState,
    offset: u8,
    to: Recipient,
    built: Result<message::OutMessage, message::BuildError>,
    reference: String,
    expires: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    let Ok(msg) = built else {
        return skipped(vault, txn, state, offset, "template", now);
    };
    let item = WaItem {
        patient: Some(state.patient),
        recipient: Some(to),
        message: msg,
        reference: Some(reference),
    };
    match outbox::stage(vault, txn, item, now, Some(expires)) {
        Ok(()) => Ok(()),
        // Its whatsapp-unreachable event is in txn.
        Err(OutboxError::Unreachable { .. }) => Ok(()),
        Err(OutboxError::Vault(e)) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "a reminder could not be queued");
            skipped(vault, txn, state, offset, "refused-at-enqueue", now)
        }
    }
}

/// A short text after a tap. The tap opened the 24-hour window in this same
/// txn (the outbox's window check reads the store, which does not have it
/// yet), so the reply is queued directly.
fn reply_to(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    state: &ReminderState,
    reply: Reply,
    now: Timestamp,
) -> VaultResult<()> {
    queue_text(
        vault,
        txn,
        settings,
        state.patient,
        now,
        super::texts::reply(reply),
    )
}

/// Queues the text `key` (`care::messages`) to `patient`, in their
/// language, inside the window the message being applied has opened (see
/// [`reply_to`]).
pub(crate) fn queue_text(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    patient: PatientId,
    now: Timestamp,
    key: &str,
) -> VaultResult<()> {
    let Some((to, language)) = contact(vault, patient)? else {
        return Ok(());
    };
    let texts = &settings.reminders.messages;
    let lang = texts.language(language.as_deref());
    let Ok(msg) = message::text(texts.text(lang, key)) else {
        return Ok(());
    };
    queue_reply(vault, txn, patient, to, msg, now)
}

/// Queues `msg` to `patient` inside the window the message being applied
/// has opened (see [`reply_to`]).
pub(super) fn queue_reply(
    vault: &Vault,
    txn: &mut Txn,
    patient: PatientId,
    to: Recipient,
    msg: message::OutMessage,
    now: Timestamp,
) -> VaultResult<()> {
    queue_reply_as(
        vault,
        txn,
        Some(patient),
        to,
        msg,
        "care-reply".to_owned(),
        now,
    )
}

/// [`queue_reply`] with the caller's outbound `reference` (a `care-…`
/// one is a workflow's reply to the policy; anything else a staff text).
pub(crate) fn queue_reply_as(
    vault: &Vault,
    txn: &mut Txn,
    patient: Option<PatientId>,
    to: Recipient,
    msg: message::OutMessage,
    reference: String,
    now: Timestamp,
) -> VaultResult<()> {
    let item = WaItem {
        patient,
        recipient: Some(to),
        message: msg,
        reference: Some(reference),
    };
    let policy = vault.wa_policy();
    match outbox::check_policy(vault, txn, &policy, &item, now) {
        Ok(()) => {}
        Err(OutboxError::Vault(e)) => return Err(e),
        // Its policy-blocked event and audit entry are in txn.
        Err(_) => return Ok(()),
    }
    let mut env = Envelope::new(item, now);
    env.order_key = outbox::order_key(vault, &env.item);
    env.expires = Some(now.saturating_add(outbox::SERVICE_WINDOW).unwrap_or(now));
    queue::enqueue(txn, &WA_OUTBOX, &env)
}
