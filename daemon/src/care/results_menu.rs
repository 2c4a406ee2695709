//! "Results" from the menu for a known patient (issue 11, item 3): the
//! newest result offered and not yet delivered, locked or purged
//! (`Notified` or `AwaitingProof`) is treated exactly as its notice's
//! "Show it" tap (the proof question); a locked one gets the locked text;
//! none gets "no new documents". No hand-off: the patient can still ask
//! for a person.

use super::conversation::shell as conversation;
use super::conversation::store::ConvId;
use super::conversation::Conversation;
use super::results::Phase;
use super::results_shell;
use super::Settings;
use crate::model::LabResult;
use crate::vault::records::LinkKind;
use crate::vault::{Tree, Txn, Vault, VaultError, VaultResult};
use crate::whatsapp::message;
use jiff::Timestamp;

/// Answers the menu's Results for the patient of conversation `id`.
pub fn offer(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    id: &ConvId,
    c: &mut Conversation,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(patient) = c.patient() else {
        return Ok(());
    };
    let mut offered: Option<(Timestamp, super::store::Token)> = None;
    let mut locked = false;
    for k in vault.linked(patient, LinkKind::Result)? {
        let r = match vault.get_json::<LabResult>(Tree::Results, &k) {
            Ok(Some(r)) if r.patient == patient => r,
            Ok(_) | Err(VaultError::KeyUnavailable { .. } | VaultError::Decode { .. }) => continue,
            Err(e) => return Err(e),
        };
        let token = results_shell::token(vault, &r.order_number);
        match results_shell::phase_of(vault, &token)? {
            Some(Phase::Notified | Phase::AwaitingProof)
                if r.is_deliverable() && offered.is_none_or(|(at, _)| r.received_at > at) =>
            {
                offered = Some((r.received_at, token));
            }
            Some(Phase::Locked) => locked = true,
            _ => {}
        }
    }
    if let Some((_, token)) = offered {
        // Exactly the "Show it" tap: its own state, proof question and audit.
        let mut session = results_shell::Session::default();
        let tap = results_shell::payload(&token);
        results_shell::on_tap(vault, txn, &mut session, patient, &tap, now)?;
        return Ok(());
    }
    let key = if locked {
        "results.locked"
    } else {
        "results.none"
    };
    let lang = conversation::language(vault, settings, Some(c), &c.contact.clone())?;
    let text = settings.reminders.messages.text(&lang, key).to_owned();
    match message::text(&text) {
        Ok(msg) => conversation::bot_says(vault, txn, settings, id, c, msg, "text", text, now),
        Err(_) => Ok(()),
    }
}
