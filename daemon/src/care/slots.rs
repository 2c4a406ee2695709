//! The shell's half of a reschedule (the pure half is
//! `care::reschedule`): the slots on offer now, read from the slot table,
//! and the interactive list that offers them.

use super::reminder::ReminderState;
use super::store::{self, Tap, Token};
use super::Settings;
use crate::vault::{Txn, Vault, VaultResult};
use crate::whatsapp::message;
use jiff::Timestamp;

/// The slots a reschedule of `state`'s appointment may move to now.
pub(super) fn open(
    vault: &Vault,
    txn: &Txn,
    settings: &Settings,
    state: &ReminderState,
    now: Timestamp,
) -> VaultResult<Vec<crate::model::Slot>> {
    let Some(a) = vault.get_appointment(&state.appointment)? else {
        return Ok(Vec::new());
    };
    // A slot held for a patient who is booking it is not on offer.
    let held = super::booking::store::held_ids(vault, txn, now, None)?;
    let all = vault.slots_by_start()?;
    let unheld: Vec<crate::model::Slot>;
    let slots: &[crate::model::Slot] = if held.is_empty() {
        &all
    } else {
        unheld = all
            .iter()
            .filter(|s| !held.contains(&s.id))
            .cloned()
            .collect();
        &unheld
    };
    Ok(
        super::reschedule::candidates(slots, &a, now, settings.reminders.reschedule_days)
            .into_iter()
            .cloned()
            .collect(),
    )
}

/// The open slots as an interactive list; each row's id names the
/// appointment and the slot opaquely.
pub(super) fn offer(
    vault: &Vault,
    txn: &mut Txn,
    settings: &Settings,
    token: &Token,
    state: &ReminderState,
    ids: &[String],
    now: Timestamp,
) -> VaultResult<()> {
    let Some((to, language)) = super::shell::contact(vault, state.patient)? else {
        return Ok(());
    };
    let texts = &settings.reminders.messages;
    let lang = texts.language(language.as_deref());
    let slots = vault.slots_by_start()?;
    let rows: Vec<(String, String)> = ids
        .iter()
        .filter_map(|id| slots.iter().find(|s| &s.id == id))
        .map(|s| {
            (
                store::payload(token, Tap::Slot(store::slot_ref(vault, &s.id))),
                super::texts::slot_title(texts, s.start, &settings.time_zone, lang),
            )
        })
        .collect();
    let (body, button) = super::texts::slot_list(texts, lang);
    let built = message::list(
        &message::Frame {
            header: None,
            body,
            footer: None,
        },
        button,
        &[(
            None,
            rows.iter()
                .map(|(id, title)| message::Row {
                    id,
                    title,
                    description: None,
                })
                .collect(),
        )],
    );
    match built {
        Ok(msg) => super::shell::queue_reply(vault, txn, state.patient, to, msg, now),
        Err(e) => {
            tracing::warn!(error = %e, "a list of open slots could not be built");
            Ok(())
        }
    }
}
