//! Conversations on the vault's writer: loads one, runs the pure
//! [`decide`](super::decide), and stages the new state, its log entries,
//! timers, outbox items and events in the caller's txn (a webhook call's,
//! a staff API call's, or the scheduler's).

use super::store::{self, Author, ConvId, Entry, IDLE, PURGE};
use super::{decide, Choice, Contact, Conversation, Effect, Input, Intent, Rules, Say};
use crate::care::Settings;
use crate::model::{Event, EventKind};
use crate::vault::{Txn, Vault, VaultError, VaultResult};
use crate::webhook::payload::Content;
use crate::whatsapp::message::{self, Frame, Params, Recipient, Row, TemplateSpec};
use crate::whatsapp::outbox::{self, OutboxError, WaItem};
use jiff::Timestamp;
use std::sync::Arc;

/// The prefix of the menu's list row ids.
const MENU_PAYLOAD: &str = "cr1:m:";

/// Why a staff call on a conversation is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("no such conversation")]
    NotFound,
    #[error("{0}")]
    Conflict(&'static str),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

fn settings(vault: &Vault) -> Option<Arc<Settings>> {
    vault.care().filter(|s| s.conversations.enabled)
}

/// Whether a reply id is a row of our menu.
pub fn is_menu_payload(id: &str) -> bool {
    id.starts_with(MENU_PAYLOAD)
}

fn menu_choice(id: &str) -> Option<Choice> {
    match id.strip_prefix(MENU_PAYLOAD)? {
        "b" => Some(Choice::Book),
        "a" => Some(Choice::Appointments),
        "r" => Some(Choice::Results),
        "s" => Some(Choice::Staff),
        _ => None,
    }
}

/// How the rest of `care` saw a patient's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Another workflow answered it (a reminder tap, a consent keyword, a
    /// language name): logged, not answered here.
    Elsewhere,
    /// For the bot.
    Bot,
}

/// A patient's message (on the writer, in the txn of the webhook call
/// that brought it): logged, and answered unless staff hold the
/// conversation or `heard` says another workflow did.
#[allow(clippy::too_many_arguments)] // one message's whole context
pub fn on_message(
    vault: &Vault,
    txn: &mut Txn,
    contact: Contact,
    content: &Content,
    message_ref: String,
    at: Timestamp,
    heard: Heard,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = settings(vault) else {
        return Ok(());
    };
    let id = store::id(vault, &contact);
    let before = store::load_in(vault, txn, &id)?;
    let theirs = language(vault, &settings, before.as_ref(), &contact)?;
    let catalog = &settings.reminders.messages;
    // An unknown contact answering the intake's question (`care::intake`).
    let intake = match (before.as_ref().map(|c| &c.phase), heard, content) {
        (_, _, Content::System { .. }) => None,
        (Some(super::Phase::Intake { step }), Heard::Bot, _) => Some(*step),
        _ => None,
    };
    let (intent, language) = match (heard, content) {
        _ if intake.is_some() => intake.map_or((Intent::Other, None), |step| {
            crate::care::intake_shell::understand(step, content, &settings, &theirs, now)
        }),
        // A language's name switched the patient's language (`care::shell`):
        // the conversation follows.
        (Heard::Elsewhere, Content::Text { body }) => {
            (Intent::Elsewhere, catalog.named(body).map(str::to_owned))
        }
        (Heard::Elsewhere, _) | (_, Content::System { .. } | Content::Unsupported { .. }) => {
            (Intent::Elsewhere, None)
        }
        (_, Content::Text { body }) => super::understand::understand(body, catalog, &theirs),
        (_, c) => match c.reply_id().and_then(menu_choice) {
            Some(choice) => (Intent::Choice(choice), None),
            None => (Intent::Other, None),
        },
    };
    let (text, kind) = match content {
        Content::Text { body } => (Some(body.clone()), "text"),
        Content::ButtonReply { title, .. } | Content::ListReply { title, .. } => {
            (Some(title.clone()), content.kind())
        }
        Content::QuickReply { text, .. } => (Some(text.clone()), "button"),
        Content::Media { caption, .. } => (caption.clone(), content.kind()),
        _ => (None, content.kind()),
    };
    let entry = Entry {
        at,
        from: Author::Patient,
        kind: kind.to_owned(),
        text,
        actor: None,
        message_ref: Some(message_ref),
        reference: None,
        held: false,
    };
    let input = Input::Message {
        intent,
        at,
        language,
    };
    run(
        vault,
        txn,
        &settings,
        &id,
        contact,
        before,
        input,
        Some(entry),
        now,
    )
}

/// A staff member's text (the `POST /v1/conversations/{id}/messages` call,
/// on the writer): free text in the window, else the reopen template with
/// the text held until the patient answers.
pub fn staff_reply(
    vault: &Vault,
    txn: &mut Txn,
    id: &ConvId,
    text: &str,
    actor: &str,
    now: Timestamp,
) -> Result<(), ConversationError> {
    let settings = settings(vault).ok_or(ConversationError::NotFound)?;
    let c = store::load_in(vault, txn, id)?.ok_or(ConversationError::NotFound)?;
    if recipient(vault, &c)?.is_none() {
        return Err(ConversationError::Conflict(
            "the patient has no WhatsApp number on record any more",
        ));
    }
    let contact = c.contact.clone();
    let entry = Entry {
        at: now,
        from: Author::Staff,
        kind: "text".to_owned(),
        text: Some(text.to_owned()),
        actor: Some(actor.to_owned()),
        message_ref: None,
        reference: Some(reference(id, c.next_entry, Author::Staff)),
        held: !c.window_open(now),
    };
    txn.audit(
        audit(actor, "conversation.reply", &c, id)
            .detail("window", if entry.held { "closed" } else { "open" }),
    );
    // The first reply after a hand-off: how long the patient waited (a
    // KPI, staged in this same commit).
    if let super::Phase::WaitingForStaff { since, .. } = &c.phase {
        crate::kpi::on_staff_reply(vault, txn, id, *since, now);
    }
    let input = Input::StaffReply {
        entry: c.next_entry,
    };
    run(
        vault,
        txn,
        &settings,
        id,
        contact,
        Some(c),
        input,
        Some(entry),
        now,
    )?;
    Ok(())
}

/// Staff hand the conversation back to the bot.
pub fn close(
    vault: &Vault,
    txn: &mut Txn,
    id: &ConvId,
    actor: &str,
    now: Timestamp,
) -> Result<(), ConversationError> {
    let settings = settings(vault).ok_or(ConversationError::NotFound)?;
    let c = store::load_in(vault, txn, id)?.ok_or(ConversationError::NotFound)?;
    if !c.phase.with_staff() {
        return Err(ConversationError::Conflict(
            "the conversation is not with staff (waiting or with-staff)",
        ));
    }
    txn.audit(audit(actor, "conversation.close", &c, id));
    let contact = c.contact.clone();
    run(
        vault,
        txn,
        &settings,
        id,
        contact,
        Some(c),
        Input::StaffClose,
        None,
        now,
    )?;
    Ok(())
}

/// A conversation's timer (from `care::shell::fire_due`, its removal is in
/// `txn` already).
pub fn on_timer(
    vault: &Vault,
    txn: &mut Txn,
    id: &ConvId,
    offset: u8,
    due: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(c) = store::load_in(vault, txn, id)? else {
        return Ok(());
    };
    if offset == PURGE {
        return purge(vault, txn, id, c, due, now);
    }
    let Some(settings) = settings(vault) else {
        return Ok(());
    };
    let contact = c.contact.clone();
    run(
        vault,
        txn,
        &settings,
        id,
        contact,
        Some(c),
        Input::IdleTimer { due },
        None,
        now,
    )
}

/// Removes the log entries older than the retention, and sets the timer
/// for the next one (audited with the count, never the content).
fn purge(
    vault: &Vault,
    txn: &mut Txn,
    id: &ConvId,
    mut c: Conversation,
    due: Timestamp,
    now: Timestamp,
) -> VaultResult<()> {
    if c.purge_due != Some(due) {
        return Ok(());
    }
    let retention = vault.care().map_or_else(
        || super::config::ConversationsConfig::default().retention,
        |s| s.conversations.retention,
    );
    let mut gone = 0usize;
    c.purge_due = None;
    // Every entry is looked at: a patient's entry carries Meta's time, so
    // the log is only nearly in time order.
    let mut next: Option<Timestamp> = None;
    for (n, e) in store::entries(vault, id)? {
        let expires = e.at.saturating_add(retention).unwrap_or(e.at);
        if expires <= now {
            store::remove_entry(txn, id, n);
            if let Some(r) = &e.reference {
                store::remove_sent(vault, txn, r);
            }
            c.held.retain(|h| *h != n);
            gone += 1;
        } else if next.is_none_or(|t| expires < t) {
            next = Some(expires);
        }
    }
    if let Some(due) = next {
        c.purge_due = Some(due);
        crate::care::store::stage_timer_as(txn, due, id, PURGE, c.owner());
    }
    if gone > 0 {
        txn.audit(audit(ACTOR, "conversation.purged", &c, id).detail("messages", gone.to_string()));
    }
    // An unknown contact's conversation with nothing left in it goes too:
    // the number is kept no longer than its messages.
    if c.patient().is_none() && next.is_none() && !c.phase.with_staff() {
        store::remove(txn, id);
        crate::care::intake_shell::forget(txn, id);
        return Ok(());
    }
    store::stage(txn, id, &c)
}

/// The audit actor of what the bot does.
pub const ACTOR: &str = "care:conversations";

/// An audit entry about conversation `id` (its patient as the subject).
fn audit(actor: &str, action: &str, c: &Conversation, id: &ConvId) -> crate::audit::AuditDraft {
    let mut a =
        crate::audit::AuditDraft::new(actor, action).detail("conversation", hex::encode(id));
    if let Some(p) = c.patient() {
        a = a.subject(p.to_string());
    }
    a
}

/// Where the conversation's messages go: the patient's number (if they
/// still have one), or the unknown contact's.
fn recipient(vault: &Vault, c: &Conversation) -> VaultResult<Option<Recipient>> {
    match &c.contact {
        Contact::Patient(p) => Ok(super::super::shell::contact(vault, *p)?.map(|(to, _)| to)),
        Contact::Unknown(r) => Ok(Some(r.clone())),
    }
}

/// The patient's language for the conversation: the one they greeted in,
/// else theirs (chosen in the chat, else PID-15), else the default.
pub(crate) fn language(
    vault: &Vault,
    settings: &Settings,
    c: Option<&Conversation>,
    contact: &Contact,
) -> VaultResult<String> {
    let catalog = &settings.reminders.messages;
    if let Some(l) = c
        .and_then(|c| c.language.as_deref())
        .filter(|l| catalog.has(l))
    {
        return Ok(l.to_owned());
    }
    let theirs = match contact {
        Contact::Patient(p) => super::super::shell::contact(vault, *p)?.and_then(|(_, l)| l),
        Contact::Unknown(_) => None,
    };
    Ok(catalog.language(theirs.as_deref()).to_owned())
}

#[allow(clippy::too_many_arguments)] // one decision's whole context
fn run(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    id: &ConvId,
    contact: Contact,
    before: Option<Conversation>,
    input: Input,
    entry: Option<Entry>,
    now: Timestamp,
) -> VaultResult<()> {
    let rules = Rules {
        idle_reset: settings.conversations.idle_reset,
        booking: crate::care::booking::shell::enabled(vault),
    };
    let (after, effects) = decide(before.clone(), contact, input, now, rules);
    let Some(mut c) = after else {
        return Ok(());
    };
    let logged = match entry {
        Some(e) => Some((log(txn, settings, id, &mut c, &e)?, e)),
        None => None,
    };
    for effect in effects {
        stage_effect(
            vault,
            txn,
            settings,
            id,
            &mut c,
            effect,
            logged.as_ref(),
            now,
        )?;
    }
    if before.as_ref() != Some(&c) {
        store::stage(txn, id, &c)?;
    }
    Ok(())
}

/// Appends to the log, with the retention timer when none is pending.
fn log(
    txn: &mut Txn,
    settings: &Settings,
    id: &ConvId,
    c: &mut Conversation,
    e: &Entry,
) -> VaultResult<u64> {
    let n = store::append(txn, id, c, e)?;
    if c.purge_due.is_none() {
        let due =
            e.at.saturating_add(settings.conversations.retention)
                .unwrap_or(e.at);
        c.purge_due = Some(due);
        crate::care::store::stage_timer_as(txn, due, id, PURGE, c.owner());
    }
    Ok(n)
}

fn reference(id: &ConvId, n: u64, from: Author) -> String {
    let short = hex::encode(id.get(..6).unwrap_or_default());
    match from {
        // `care-` makes the policy count it as a workflow's reply.
        Author::Bot => format!("care-conv:{short}:{n}"),
        _ => format!("{}{short}:{n}", store::REF_PREFIX),
    }
}

#[allow(clippy::too_many_arguments)] // one effect's whole context
fn stage_effect(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    id: &ConvId,
    c: &mut Conversation,
    effect: Effect,
    logged: Option<&(u64, Entry)>,
    now: Timestamp,
) -> VaultResult<()> {
    let patient = c.patient();
    let contact = c.contact.clone();
    match effect {
        Effect::ScheduleIdle(due) => {
            crate::care::store::stage_timer_as(txn, due, id, IDLE, c.owner());
        }
        Effect::CancelIdle(due) => crate::care::store::stage_cancel(txn, due, id, IDLE),
        // The booking flow (`care::booking`) answers for itself.
        Effect::StartBooking => {
            if let Some(p) = patient {
                let lang = language(vault, settings, Some(c), &contact)?;
                crate::care::booking::shell::start(vault, txn, p, Some(lang), now)?;
            }
        }
        Effect::EndBooking => {
            if let Some(p) = patient {
                crate::care::booking::shell::end(vault, txn, p, now)?;
            }
        }
        Effect::Handoff(reason) => {
            let mut ev = Event {
                kind: EventKind::StaffRequested,
                time: now,
                patient,
                appointment: None,
                slot: None,
                details: Default::default(),
            };
            ev.details
                .insert("reason".to_owned(), reason.as_str().to_owned());
            ev.details
                .insert("conversation".to_owned(), hex::encode(id));
            if patient.is_none() {
                ev.details.insert("matched".to_owned(), "false".to_owned());
            }
            let topic = serde_json::to_value(c.topic).ok();
            if let Some(t) = topic.as_ref().and_then(|v| v.as_str()) {
                ev.details.insert("topic".to_owned(), t.to_owned());
            }
            vault.stage_event(txn, &ev)?;
        }
        Effect::SendMenu => {
            let lang = language(vault, settings, Some(c), &contact)?;
            let t = |k| settings.reminders.messages.text(&lang, k);
            let rows = [
                ("b", "menu.book"),
                ("a", "menu.appointments"),
                ("r", "menu.results"),
                ("s", "menu.staff"),
            ];
            let ids: Vec<String> = rows
                .iter()
                .map(|(r, _)| format!("{MENU_PAYLOAD}{r}"))
                .collect();
            let rows: Vec<Row<'_>> = rows
                .iter()
                .zip(&ids)
                .map(|((_, k), id)| Row {
                    id,
                    title: t(k),
                    description: None,
                })
                .collect();
            let frame = Frame {
                header: None,
                body: t("menu.body"),
                footer: None,
            };
            if let Ok(msg) = message::list(&frame, t("menu.button"), &[(None, rows)]) {
                let text = t("menu.body").to_owned();
                bot_says(vault, txn, settings, id, c, msg, "list", text, now)?;
            }
        }
        Effect::Say(say) => {
            let lang = language(vault, settings, Some(c), &contact)?;
            let key = match say {
                Say::StaffWillAnswer => "handoff.waiting",
                Say::NotYetAutomated => "handoff.not_yet",
                Say::IntakeThanks { consent: true } => "intake.thanks",
                Say::IntakeThanks { consent: false } => "intake.thanks_no_consent",
            };
            let text = settings.reminders.messages.text(&lang, key).to_owned();
            if let Ok(msg) = message::text(&text) {
                bot_says(vault, txn, settings, id, c, msg, "text", text, now)?;
            }
        }
        Effect::SendStaffText { entry } => {
            let Some(to) = recipient(vault, c)? else {
                return Ok(());
            };
            // The text was logged by this same decision.
            let text = logged
                .filter(|(n, _)| *n == entry)
                .and_then(|(_, e)| e.text.as_deref());
            if let Some(msg) = text.and_then(|t| message::text(t).ok()) {
                let item = WaItem {
                    patient,
                    recipient: Some(to),
                    message: msg,
                    reference: Some(reference(id, entry, Author::Staff)),
                };
                staff_item(vault, txn, item, now)?;
            }
        }
        Effect::SendReopenTemplate => {
            let Some(to) = recipient(vault, c)? else {
                return Ok(());
            };
            let lang = language(vault, settings, Some(c), &contact)?;
            let built = message::template(&TemplateSpec {
                name: &settings.conversations.reopen_template,
                language: settings.reminders.template_code(&lang),
                header: None,
                body: Params::Positional(vec![]),
                quick_replies: vec![],
            });
            let n = c.next_entry;
            let e = Entry {
                at: now,
                from: Author::Bot,
                kind: "template".to_owned(),
                text: None,
                actor: None,
                message_ref: None,
                reference: Some(reference(id, n, Author::Staff)),
                held: false,
            };
            log(txn, settings, id, c, &e)?;
            if let Ok(msg) = built {
                let item = WaItem {
                    patient,
                    recipient: Some(to),
                    message: msg,
                    reference: e.reference.clone(),
                };
                staff_item(vault, txn, item, now)?;
            }
        }
        Effect::Intake(e) => {
            crate::care::intake_shell::stage(vault, txn, settings, id, c, e, logged, now)?;
        }
        Effect::ShowAppointments => {
            crate::care::my_appointments::show(vault, txn, settings, id, c, now)?;
        }
        Effect::OfferResults => {
            crate::care::results_menu::offer(vault, txn, settings, id, c, now)?;
        }
        Effect::ReleaseHeld(entries) => {
            let Some(to) = recipient(vault, c)? else {
                return Ok(());
            };
            for n in entries {
                let Some(mut e) = store::entry(vault, id, n)? else {
                    continue;
                };
                let Some(msg) = e.text.as_deref().and_then(|t| message::text(t).ok()) else {
                    continue;
                };
                e.held = false;
                e.reference = Some(reference(id, n, Author::Staff));
                store::stage_entry(txn, id, c.owner(), n, &e)?;
                let r = reference(id, n, Author::Staff);
                crate::care::shell::queue_reply_as(vault, txn, patient, to.clone(), msg, r, now)?;
            }
        }
    }
    Ok(())
}

/// A bot message: logged, queued inside the window the patient's message
/// opened (see `care::shell::queue_reply`).
#[allow(clippy::too_many_arguments)] // one message's whole context
pub(crate) fn bot_says(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    id: &ConvId,
    c: &mut Conversation,
    msg: message::OutMessage,
    kind: &str,
    text: String,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(to) = recipient(vault, c)? else {
        return Ok(());
    };
    let n = c.next_entry;
    let r = reference(id, n, Author::Bot);
    let e = Entry {
        at: now,
        from: Author::Bot,
        kind: kind.to_owned(),
        text: Some(text),
        actor: None,
        message_ref: None,
        reference: Some(r.clone()),
        held: false,
    };
    log(txn, settings, id, c, &e)?;
    crate::care::shell::queue_reply_as(vault, txn, c.patient(), to, msg, r, now)
}

/// Queues a staff message through the outbox's checks (window, template
/// approval, policy). A refusal is on the feed: the outbox's own event
/// (unreachable, policy-blocked), else a `message-failed` one here (a
/// template the account has not approved, the window closed meanwhile).
fn staff_item(vault: &Vault, txn: &mut Txn, item: WaItem, now: Timestamp) -> VaultResult<()> {
    let expires = now.saturating_add(outbox::SERVICE_WINDOW).ok();
    let patient = item.patient;
    let reference = item.reference.clone();
    let reason = match outbox::stage(vault, txn, item, now, expires) {
        Ok(()) | Err(OutboxError::Unreachable { .. } | OutboxError::PolicyBlocked(_)) => {
            return Ok(())
        }
        Err(OutboxError::Vault(e)) => return Err(e),
        Err(OutboxError::Template(_)) => "template-not-approved",
        Err(OutboxError::OutsideWindow { .. }) => "outside-window",
        Err(OutboxError::NoRecipient(_)) => "no-recipient",
    };
    tracing::warn!(reason, "a staff message could not be queued");
    if let Some(r) = &reference {
        store::stage_failed(vault, txn, r, patient, reason)?;
    }
    let mut ev = Event {
        kind: EventKind::MessageFailed,
        time: now,
        patient,
        appointment: None,
        slot: None,
        details: Default::default(),
    };
    ev.details.insert("reason".to_owned(), reason.to_owned());
    vault.stage_event(txn, &ev)
}
