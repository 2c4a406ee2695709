//! The results workflow's shell on the vault's writer: loads a result's
//! state and the facts a decision needs (is the patient's answer right?),
//! runs the pure [`results::decide`], and stages the new state and every
//! effect in the caller's transaction.
//!
//! Keys in [`Tree::Care`] (next to the reminders' ones, `care::store`):
//! - `R ‖ token`: a result's [`ResultState`], patient's key;
//! - `Q ‖ patient`: the result whose proof the patient's next text answers
//!   (its token), patient's key;
//! - the retention timer is a `care::store` timer with offset
//!   [`results::RETENTION`].
//!
//! `token` is 16 bytes of a blind index of the order number: the same
//! opaque value names the result in the "Show it" payload (`cr1:d:<hex>`).

use super::proof;
use super::results::{self, Effect, Input, Phase, Reply, ResultState, Rules};
use super::results_config::Proof;
use super::store::{self, Token};
use super::Settings;
use crate::audit::AuditDraft;
use crate::model::{ConsentState, Event, EventKind, LabResult, PatientId, ResultStatus};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use crate::whatsapp::media::{self, Document, MediaError};
use crate::whatsapp::message::{self, Params, TemplateSpec};
use crate::whatsapp::outbox::{self, OutboxError, WaItem};
use jiff::Timestamp;
use std::collections::HashMap;

/// The audit actor of what the results workflow does.
pub const ACTOR: &str = "care:results";

const K_STATE: u8 = b'R';
const K_AWAITING: u8 = b'Q';
const PAYLOAD_PREFIX: &str = "cr1:d:";
/// What the patient sees as the document's name: nothing about the result.
const FILENAME: &str = "document.pdf";

/// States and pointers as this transaction leaves them.
#[derive(Default)]
pub struct Session {
    states: HashMap<Token, Option<ResultState>>,
    awaiting: HashMap<PatientId, Option<Token>>,
}

pub fn token(vault: &Vault, order_number: &str) -> Token {
    let bi = vault.blind_index("care-result", order_number);
    let mut t = [0u8; 16];
    t.copy_from_slice(bi.get(..16).unwrap_or(&[0u8; 16]));
    t
}

/// The "Show it" payload of a result's notice.
pub fn payload(token: &Token) -> String {
    format!("{PAYLOAD_PREFIX}{}", hex::encode(token))
}

/// Where a result stands, if it was ever offered (`care::results_menu`).
pub fn phase_of(vault: &Vault, token: &Token) -> VaultResult<Option<Phase>> {
    let s: Option<ResultState> = readable(vault.get_json(Tree::Care, &key(K_STATE, token)))?;
    Ok(s.map(|s| s.phase))
}

fn parse_payload(p: &str) -> Option<Token> {
    let mut t = [0u8; 16];
    hex::decode_to_slice(p.strip_prefix(PAYLOAD_PREFIX)?, &mut t).ok()?;
    Some(t)
}

fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

/// A value sealed under an erased patient's key reads as none.
fn readable<T>(r: VaultResult<Option<T>>) -> VaultResult<Option<T>> {
    match r {
        Err(VaultError::KeyUnavailable { .. } | VaultError::Decode { .. }) => Ok(None),
        other => other,
    }
}

impl Session {
    fn state(&mut self, vault: &Vault, token: &Token) -> VaultResult<Option<ResultState>> {
        if let Some(s) = self.states.get(token) {
            return Ok(s.clone());
        }
        let s = readable(vault.get_json(Tree::Care, &key(K_STATE, token)))?;
        self.states.insert(*token, s.clone());
        Ok(s)
    }

    fn awaiting(&mut self, vault: &Vault, patient: PatientId) -> VaultResult<Option<Token>> {
        if let Some(t) = self.awaiting.get(&patient) {
            return Ok(*t);
        }
        let t = readable(vault.get(Tree::Care, &key(K_AWAITING, &patient.0)))?
            .and_then(|v| Token::try_from(v.as_slice()).ok());
        self.awaiting.insert(patient, t);
        Ok(t)
    }
}

fn rules(settings: &Settings) -> Rules {
    Rules {
        max_attempts: settings.results.max_attempts,
        retention: settings.results.retention,
    }
}

/// A result as the PMS left it (on the writer, in the txn that stores it):
/// a new deliverable version is offered, a withdrawal closes the offer.
pub fn on_result(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    r: &LabResult,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = vault.care().filter(|s| s.results.enabled) else {
        return Ok(());
    };
    let final_or_corrected = matches!(r.status, ResultStatus::Final | ResultStatus::Corrected);
    let input = if r.is_deliverable() && final_or_corrected {
        Input::Deliverable {
            order: r.order_number.clone(),
            patient: r.patient,
            version: r.version,
        }
    } else if r.withdrawn {
        Input::Withdrawn
    } else {
        return Ok(());
    };
    let token = token(vault, &r.order_number);
    run(vault, txn, session, &settings, &token, input, now)
}

/// A tap from `patient`: true when it was a results payload (handled).
pub fn on_tap(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    patient: PatientId,
    reply_id: &str,
    now: Timestamp,
) -> VaultResult<bool> {
    let Some(token) = parse_payload(reply_id) else {
        return Ok(false);
    };
    let Some(settings) = vault.care() else {
        return Ok(true);
    };
    match session.state(vault, &token)? {
        Some(s) if s.patient == patient => {}
        _ => {
            tracing::info!("a result button for a result this patient does not have is ignored");
            return Ok(true);
        }
    }
    run(vault, txn, session, &settings, &token, Input::ShowIt, now)?;
    Ok(true)
}

/// A text from `patient`: true when it answered a proof question
/// (handled). Keywords (opt-out, opt-in) are never taken as an answer.
pub fn on_text(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    patient: PatientId,
    body: &str,
    now: Timestamp,
) -> VaultResult<bool> {
    let Some(settings) = vault.care() else {
        return Ok(false);
    };
    if super::consent::keyword_in(body, &settings.reminders.messages).is_some() {
        return Ok(false);
    }
    let Some(token) = session.awaiting(vault, patient)? else {
        return Ok(false);
    };
    let Some(state) = session.state(vault, &token)? else {
        stage_awaiting(txn, session, patient, None);
        return Ok(false);
    };
    let right = match settings.results.proof {
        Proof::Dob => {
            let Some(given) = proof::parse_dob(body, settings.results.month_first) else {
                // Not a date at all: the format again, no attempt counted.
                super::shell::queue_text(
                    vault,
                    txn,
                    &settings,
                    patient,
                    now,
                    "results.unreadable",
                )?;
                return Ok(true);
            };
            let born = vault.get_patient(patient)?.and_then(|p| p.birth_date);
            born == Some(given)
        }
        Proof::Code => {
            let code = vault
                .get_result(&state.order)?
                .and_then(|r| r.release_code)
                .unwrap_or_default();
            proof::code_matches(body, &code)
        }
    };
    let input = Input::Answer { right };
    run(vault, txn, session, &settings, &token, input, now)?;
    Ok(true)
}

/// A retention timer fired (from `shell::fire_due`, in its txn).
pub fn on_timer(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    due: Timestamp,
    token: &Token,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = vault.care() else {
        return Ok(());
    };
    let input = Input::RetentionFired { due };
    run(vault, txn, session, &settings, token, input, now)
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
    let before = session.state(vault, token)?;
    let (after, effects) = results::decide(before.clone(), input, now, &rules(settings));
    let Some(mut state) = after else {
        return Ok(());
    };
    for effect in effects {
        stage_effect(
            vault, txn, session, settings, token, &mut state, effect, now,
        )?;
    }
    if before.as_ref() != Some(&state) {
        txn.put_json(
            Tree::Care,
            key(K_STATE, token),
            Owner::Patient(state.patient),
            &state,
        )?;
    }
    session.states.insert(*token, Some(state));
    Ok(())
}

fn stage_awaiting(txn: &mut Txn, session: &mut Session, patient: PatientId, to: Option<Token>) {
    let k = key(K_AWAITING, &patient.0);
    match to {
        Some(t) => txn.put(Tree::Care, k, Owner::Patient(patient), t.to_vec()),
        None => txn.remove(Tree::Care, k),
    }
    session.awaiting.insert(patient, to);
}

fn event(kind: EventKind, now: Timestamp, state: &ResultState) -> Event {
    Event {
        kind,
        time: now,
        patient: Some(state.patient),
        appointment: None,
        slot: None,
        details: [("version".to_owned(), state.version.to_string())].into(),
    }
}

fn audit(action: &str, state: &ResultState) -> AuditDraft {
    AuditDraft::new(ACTOR, action)
        .subject(state.patient.to_string())
        .detail("version", state.version.to_string())
}

#[allow(clippy::too_many_arguments)] // one effect's whole context
fn stage_effect(
    vault: &Vault,
    txn: &mut Txn,
    session: &mut Session,
    settings: &Settings,
    token: &Token,
    state: &mut ResultState,
    effect: Effect,
    now: Timestamp,
) -> VaultResult<()> {
    match effect {
        Effect::SendNotice => send_notice(vault, txn, settings, token, state, now)?,
        Effect::AwaitAnswer => stage_awaiting(txn, session, state.patient, Some(*token)),
        Effect::StopAwaiting => {
            if session.awaiting(vault, state.patient)? == Some(*token) {
                stage_awaiting(txn, session, state.patient, None);
            }
        }
        Effect::SendDocument => {
            if !send_document(vault, txn, settings, state, now)? {
                // Nothing went out: not delivered (the event says why).
                state.phase = Phase::Withdrawn;
            }
        }
        Effect::Lock => {
            vault.stage_event(txn, &event(EventKind::ResultLocked, now, state))?;
            let draft = audit("result.locked", state);
            txn.audit(draft.detail("wrong_answers", state.wrong.to_string()));
        }
        Effect::WrongAnswer { count } => {
            let draft = audit("result.proof-wrong", state);
            txn.audit(draft.detail("count", count.to_string()));
        }
        Effect::ScheduleRetention(due) => {
            store::stage_timer(txn, due, token, results::RETENTION, state.patient);
        }
        Effect::CancelRetention(due) => store::stage_cancel(txn, due, token, results::RETENTION),
        Effect::Purge { collected } => purge(vault, txn, state, collected, now)?,
        Effect::Reply(reply) => {
            if reply == Reply::AskProof {
                txn.audit(audit("result.proof-asked", state));
            }
            let key = match reply {
                Reply::AskProof => match settings.results.proof {
                    Proof::Dob => "results.ask_dob",
                    Proof::Code => "results.ask_code",
                },
                Reply::Wrong => "results.wrong",
                Reply::Locked => "results.locked",
                Reply::AlreadySent => "results.already_sent",
                Reply::Unavailable => "results.unavailable",
            };
            super::shell::queue_text(vault, txn, settings, state.patient, now, key)?;
        }
    }
    Ok(())
}

/// Why a patient cannot be told about a result, if they cannot.
fn ineligible(vault: &Vault, patient: PatientId) -> VaultResult<Option<&'static str>> {
    let Some(p) = vault.get_patient(patient)? else {
        return Ok(Some("no-number"));
    };
    let consent = vault.get_consent(patient)?;
    Ok(if p.deceased {
        Some("deceased")
    } else if p.protected {
        Some("outreach-blocked")
    } else if consent.is_none_or(|c| c.state != ConsentState::OptedIn) {
        Some("no-consent")
    } else {
        None
    })
}

/// The notice template: no parameter, nothing of the result; its one
/// quick reply carries our opaque payload.
fn send_notice(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    token: &Token,
    state: &ResultState,
    now: Timestamp,
) -> VaultResult<()> {
    let mut ev = event(EventKind::ResultNotified, now, state);
    let not_sent = |ev: &mut Event, reason: &str| {
        ev.details.insert("sent".to_owned(), "false".to_owned());
        ev.details.insert("reason".to_owned(), reason.to_owned());
    };
    let contact = super::shell::contact(vault, state.patient)?;
    match (ineligible(vault, state.patient)?, contact) {
        (Some(reason), _) => not_sent(&mut ev, reason),
        (None, None) => not_sent(&mut ev, "no-number"),
        (None, Some((to, language))) => {
            let cfg = &settings.reminders;
            let lang = cfg.language_for(language.as_deref());
            let show = payload(token);
            let built = message::template(&TemplateSpec {
                name: &settings.results.template,
                language: cfg.template_code(lang),
                header: None,
                body: Params::Positional(vec![]),
                quick_replies: vec![show.as_str()],
            });
            match built {
                Err(_) => not_sent(&mut ev, "template"),
                Ok(msg) => {
                    let item = WaItem {
                        patient: Some(state.patient),
                        recipient: Some(to),
                        message: msg,
                        reference: Some(format!("result-notice:{}", hex::encode(&token[..6]))),
                    };
                    // A notice that cannot go before the PDF is purged never goes.
                    match outbox::stage(vault, txn, item, now, state.purge_at) {
                        Ok(()) => {
                            ev.details.insert("sent".to_owned(), "true".to_owned());
                        }
                        Err(OutboxError::Vault(e)) => return Err(e),
                        Err(e) => {
                            tracing::warn!(error = %e, "a result notice could not be queued");
                            not_sent(&mut ev, "refused-at-enqueue");
                        }
                    }
                }
            }
        }
    }
    let sent = ev.details.get("sent").cloned().unwrap_or_default();
    vault.stage_event(txn, &ev)?;
    txn.audit(audit("result.notified", state).detail("sent", sent));
    Ok(())
}

/// The PDF as a document message with a neutral name and no caption; the
/// result is marked delivered in the same txn. False: it could not go (no
/// longer deliverable, or refused at enqueue: a `message-failed` event).
fn send_document(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    state: &ResultState,
    now: Timestamp,
) -> VaultResult<bool> {
    let result = vault.get_result(&state.order)?;
    let contact = super::shell::contact(vault, state.patient)?;
    let (Some(mut r), Some((to, _))) = (result.filter(LabResult::is_deliverable), contact) else {
        tracing::warn!("a result released by the patient's proof is no longer deliverable");
        let key = "results.unavailable";
        super::shell::queue_text(vault, txn, settings, state.patient, now, key)?;
        return Ok(false);
    };
    let doc = Document {
        pdf: r.pdf.clone(),
        filename: FILENAME.to_owned(),
        caption: None,
    };
    let reference = Some("result-document".to_owned());
    match media::stage_document_answer(
        vault,
        txn,
        &settings.media,
        Some(state.patient),
        to,
        doc,
        reference,
        now,
        None,
    ) {
        Ok(()) => {}
        Err(MediaError::Vault(e) | MediaError::Outbox(OutboxError::Vault(e))) => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "a result document could not be queued");
            let mut ev = event(EventKind::MessageFailed, now, state);
            ev.details
                .insert("reason".to_owned(), "result-document".to_owned());
            vault.stage_event(txn, &ev)?;
            return Ok(false);
        }
    }
    r.delivered = true;
    vault.stage_result(txn, &r)?;
    vault.stage_event(txn, &event(EventKind::ResultDelivered, now, state))?;
    let draft = audit("result.released", state);
    txn.audit(draft.detail("pdf_bytes", r.pdf.len().to_string()));
    Ok(true)
}

/// Retention: the sealed PDF goes (the record stays, empty, so the order
/// number keeps its history); through the writer, audited.
fn purge(
    vault: &Vault,
    txn: &mut Txn,
    state: &ResultState,
    collected: bool,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(mut r) = vault.get_result(&state.order)? else {
        return Ok(());
    };
    if r.patient != state.patient || r.pdf.is_empty() {
        return Ok(());
    }
    let bytes = r.pdf.len();
    r.pdf.clear();
    r.release_code = None;
    vault.stage_result(txn, &r)?;
    let mut ev = event(EventKind::ResultPurged, now, state);
    let collected = if collected { "true" } else { "false" };
    ev.details
        .insert("collected".to_owned(), collected.to_owned());
    vault.stage_event(txn, &ev)?;
    let draft = audit("result.purge", state);
    txn.audit(
        draft
            .detail("pdf_bytes", bytes.to_string())
            .detail("collected", collected),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_opaque_and_parse_back() {
        let t = [0x5a; 16];
        let p = payload(&t);
        assert!(p.starts_with("cr1:d:") && p.len() <= 256);
        assert_eq!(parse_payload(&p), Some(t));
        // Not a reminder payload, and reminders' are not ours.
        assert_eq!(store::parse_payload(&p), None);
        for other in ["cr1:c:00", "cr1:d:zz", "cr1:d:", "show"] {
            assert_eq!(parse_payload(other), None, "{other}");
        }
    }
}
