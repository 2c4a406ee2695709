//! The intake (`care::intake`) on the vault's writer: judges an unknown
//! contact's answer, keeps the answers sealed, asks the questions, and
//! makes the new-patient request (an `ADT^A04` through the PMS outbox, a
//! `new-patient-requested` event, an audit entry) in the txn of the
//! message that answered the last question.
//!
//! Key in [`Tree::Care`]: `I ‖ conversation id`: the answers so far,
//! sealed under the conversation's key (the system key: the contact is no
//! patient). Removed when the request is made, when the idle reset or a
//! hand-off ends the intake, and with the conversation. The answers are
//! also in the conversation's log (they are the contact's messages, shown
//! to staff), which its retention purges. Nothing of them is ever logged
//! or put on the feed.

use super::conversation::store::{ConvId, Entry};
use super::conversation::{shell as conversation, Choice, Contact, Conversation, Intent};
use super::intake::{Answer, Effect, Step};
use super::Settings;
use crate::audit::AuditDraft;
use crate::model::{Event, EventKind};
use crate::pms::new_patient::{self, NewPatient, NewPatientError};
use crate::vault::{Tree, Txn, Vault, VaultError, VaultResult};
use crate::webhook::payload::Content;
use crate::whatsapp::message;
use jiff::civil::Date;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

const K_INTAKE: u8 = b'I';
/// The consent question's button ids.
const YES: &str = "cr1:i:y";
const NO: &str = "cr1:i:n";
/// A name longer than this is a sentence.
const MAX_NAME: usize = 100;

/// The answers so far. `Debug` shows which there are, never what.
#[derive(Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Answers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dob: Option<Date>,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("name", &self.name.is_some())
            .field("dob", &self.dob.is_some())
            .finish()
    }
}

fn key(id: &ConvId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(K_INTAKE);
    k.extend_from_slice(id);
    k
}

/// The answers as `txn` leaves them (an earlier message of the same
/// webhook call may have staged some), else as stored.
fn load(vault: &Vault, txn: &Txn, id: &ConvId) -> VaultResult<Answers> {
    let read = match txn.staged_json::<Answers>(Tree::Care, &key(id)) {
        Some(staged) => staged,
        None => vault.get_json::<Answers>(Tree::Care, &key(id)),
    };
    match read {
        Ok(a) => Ok(a.unwrap_or_default()),
        Err(VaultError::KeyUnavailable { .. } | VaultError::Decode { .. }) => {
            Ok(Answers::default())
        }
        Err(e) => Err(e),
    }
}

/// Forgets the answers (also when the conversation goes).
pub fn forget(txn: &mut Txn, id: &ConvId) {
    txn.remove(Tree::Care, key(id));
}

/// Whether a text can be a person's full name: letters, at most a few
/// marks (`-`, `'`, `.`), no digits, not a sentence.
fn is_name(text: &str) -> bool {
    let t = text.trim();
    let n = t.chars().count();
    (2..=MAX_NAME).contains(&n)
        && t.chars().any(char::is_alphabetic)
        && t.chars()
            .all(|c| c.is_alphabetic() || c.is_whitespace() || matches!(c, '-' | '\'' | '.' | '’'))
}

/// A date of birth that can be one: read like the results' proof
/// (`results.date_order`), not in the future.
fn dob(text: &str, settings: &Settings, now: Timestamp) -> Option<Date> {
    let d = super::proof::parse_dob(text, settings.results.month_first)?;
    let today = now.to_zoned(settings.time_zone.clone()).date();
    (d <= today).then_some(d)
}

/// What an unknown contact's message means while the intake asks `step`:
/// a greeting (start over) or a request for a person stay what they are;
/// anything else is an answer, judged for the step.
pub fn understand(
    step: Step,
    content: &Content,
    settings: &Settings,
    theirs: &str,
    now: Timestamp,
) -> (Intent, Option<String>) {
    let catalog = &settings.reminders.messages;
    let answer = match content {
        Content::Text { body } => {
            let (intent, language) =
                super::conversation::understand::understand(body, catalog, theirs);
            if matches!(intent, Intent::Greeting | Intent::Choice(Choice::Staff)) {
                return (intent, language);
            }
            match step {
                Step::Name if is_name(body) => Answer::Usable,
                Step::Dob if dob(body, settings, now).is_some() => Answer::Usable,
                Step::Consent if catalog.is_keyword("keywords.yes", body) => Answer::Yes,
                Step::Consent if catalog.is_keyword("keywords.no", body) => Answer::No,
                _ => Answer::Unreadable,
            }
        }
        c => match (step, c.reply_id()) {
            (Step::Consent, Some(YES)) => Answer::Yes,
            (Step::Consent, Some(NO)) => Answer::No,
            _ => Answer::Unreadable,
        },
    };
    (Intent::Answer(answer), None)
}

/// Stages one intake effect of conversation `id` (`c` as the decision
/// left it; `logged`: the message being applied, as logged).
#[allow(clippy::too_many_arguments)] // one effect's whole context
pub fn stage(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    id: &ConvId,
    c: &mut Conversation,
    effect: Effect,
    logged: Option<&(u64, Entry)>,
    now: Timestamp,
) -> VaultResult<()> {
    match effect {
        Effect::Ask { step, again } => ask(vault, txn, settings, id, c, step, again, now),
        Effect::Keep(step) => {
            let Some(text) = logged.and_then(|(_, e)| e.text.as_deref()) else {
                return Ok(());
            };
            let mut a = load(vault, txn, id)?;
            match step {
                Step::Name => a.name = Some(text.split_whitespace().collect::<Vec<_>>().join(" ")),
                Step::Dob => a.dob = dob(text, settings, now),
                Step::Consent => {}
            }
            txn.put_json(Tree::Care, key(id), c.owner(), &a)
        }
        Effect::Drop => {
            forget(txn, id);
            Ok(())
        }
        Effect::Request { consent } => request(vault, txn, settings, id, c, consent, now),
    }
}

#[allow(clippy::too_many_arguments)] // one question's whole context
fn ask(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    id: &ConvId,
    c: &mut Conversation,
    step: Step,
    again: bool,
    now: Timestamp,
) -> VaultResult<()> {
    let lang = conversation::language(vault, settings, Some(c), &c.contact.clone())?;
    let t = |k| settings.reminders.messages.text(&lang, k);
    let (msg, kind, text) = match (step, again) {
        (Step::Consent, _) => {
            let frame = message::Frame {
                header: None,
                body: t("intake.ask_consent"),
                footer: None,
            };
            let built = message::buttons(&frame, &[(YES, t("intake.yes")), (NO, t("intake.no"))]);
            (built, "button", t("intake.ask_consent"))
        }
        (Step::Dob, true) => {
            let text = t("intake.unreadable_dob");
            (message::text(text), "text", text)
        }
        (Step::Dob, false) => (
            message::text(t("intake.ask_dob")),
            "text",
            t("intake.ask_dob"),
        ),
        (Step::Name, _) => (
            message::text(t("intake.ask_name")),
            "text",
            t("intake.ask_name"),
        ),
    };
    let text = text.to_owned();
    match msg {
        Ok(msg) => conversation::bot_says(vault, txn, settings, id, c, msg, kind, text, now),
        Err(e) => {
            tracing::warn!(error = %e, "an intake question could not be built");
            Ok(())
        }
    }
}

/// The new-patient request from the kept answers; the answers go.
fn request(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    id: &ConvId,
    c: &Conversation,
    consent: bool,
    now: Timestamp,
) -> VaultResult<()> {
    let a = load(vault, txn, id)?;
    forget(txn, id);
    let conversation = hex::encode(id);
    let mut ev = Event {
        kind: EventKind::NewPatientRequested,
        time: now,
        patient: None,
        appointment: None,
        slot: None,
        details: Default::default(),
    };
    let mut detail = |k: &str, v: String| {
        ev.details.insert(k.to_owned(), v);
    };
    detail("conversation", conversation.clone());
    detail("consent", if consent { "yes" } else { "no" }.to_owned());
    if let Some(topic) = serde_json::to_value(c.topic)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
    {
        detail("topic", topic);
    }
    let phone = match &c.contact {
        Contact::Unknown(r) if r.as_str().starts_with('+') => Some(r.as_str().to_owned()),
        _ => None,
    };
    let mut audit = AuditDraft::new(conversation::ACTOR, "conversation.new-patient-requested")
        .detail("conversation", conversation.clone())
        .detail("consent", if consent { "yes" } else { "no" });
    match (a.name.as_deref(), a.dob) {
        (Some(name), Some(birth_date)) => {
            let (family_name, given_name) = NewPatient::split_name(name);
            let p = NewPatient {
                family_name,
                given_name,
                birth_date,
                phone,
                consent,
            };
            match new_patient::stage(vault, txn, &settings.outbound, &p, &conversation, now) {
                Ok(control_id) => {
                    ev.details
                        .insert("control_id".to_owned(), control_id.clone());
                    audit = audit.detail("control_id", control_id);
                }
                Err(NewPatientError::Vault(e)) => return Err(e),
                Err(NewPatientError::Encode(e)) => {
                    tracing::warn!(error = %e, "a new-patient request could not be encoded");
                    ev.details.insert("sent".to_owned(), "false".to_owned());
                }
            }
        }
        // Answers lost (an erased key, a stale record): staff still get
        // the conversation, with the answers in its log.
        _ => {
            ev.details.insert("sent".to_owned(), "false".to_owned());
        }
    }
    vault.stage_event(txn, &ev)?;
    txn.audit(audit);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_letters_and_answers_never_show_in_debug() {
        for ok in ["ZZ Given ZZFamily", "José O'Neil-Pérez", "Dr. ZZ"] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["1", "x", "03.02.1901", "me@example.org", &"a".repeat(101)] {
            assert!(!is_name(bad), "{bad}");
        }
        let a = Answers {
            name: Some("ZZMARKERNAME".into()),
            dob: Some(Date::constant(1901, 2, 3)),
        };
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("ZZMARKER") && !shown.contains("1901"),
            "{shown}"
        );
    }
}
