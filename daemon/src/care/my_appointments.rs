//! "My appointments" for a known patient (issue 11, item 2): the upcoming
//! booked appointments of the next 90 days, soonest first, at most three,
//! each as its own message with reply buttons Cancel / Reschedule whose
//! ids are the reminder flow's own payloads (`care::store::payload`), so a
//! tap runs the reminder flow's tested path (SRM^S04, the slot list).
//!
//! Why one message per appointment rather than one list: each appointment
//! needs two actions, and reply buttons sit under the text they act on;
//! a list row carries one action and a 24-character title. Three keeps
//! the chat short; more than three upcoming is rare, and staff see all.
//!
//! Only the date and time go out (the minimal-payload policy): no service,
//! no provider, no place (the PMS's location can name a department).

use super::conversation::shell as conversation;
use super::conversation::store::ConvId;
use super::conversation::Conversation;
use super::reminder::Phase;
use super::store::{self, Tap};
use super::Settings;
use crate::model::Appointment;
use crate::vault::{Txn, Vault, VaultError, VaultResult};
use crate::whatsapp::message;
use jiff::{SignedDuration, Timestamp};

/// How far ahead "upcoming" looks.
pub const HORIZON: SignedDuration = SignedDuration::from_hours(90 * 24);
/// At most this many are shown.
pub const SHOWN: usize = 3;

/// The appointments to show: booked, starting after `now` and within the
/// horizon, soonest first, at most [`SHOWN`].
pub fn upcoming(all: Vec<Appointment>, now: Timestamp) -> Vec<Appointment> {
    let until = now.saturating_add(HORIZON).unwrap_or(now);
    let mut out: Vec<Appointment> = all
        .into_iter()
        .filter(|a| a.status.is_upcoming() && a.start > now && a.start <= until)
        .collect();
    out.sort_by_key(|a| a.start);
    out.truncate(SHOWN);
    out
}

/// Shows the patient of conversation `id` their upcoming appointments (in
/// the txn of the message that chose it).
pub fn show(
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
    let lang = conversation::language(vault, settings, Some(c), &c.contact.clone())?;
    let texts = &settings.reminders.messages;
    let shown = upcoming(vault.appointments_of(patient)?, now);
    if shown.is_empty() {
        let text = texts.text(&lang, "appointments.none").to_owned();
        if let Ok(msg) = message::text(&text) {
            conversation::bot_says(vault, txn, settings, id, c, msg, "text", text, now)?;
        }
        return Ok(());
    }
    for a in shown {
        let (date, time) = texts.when(a.start, &settings.time_zone, &lang);
        let body = texts
            .text(&lang, "appointments.item")
            .replace("{date}", &date)
            .replace("{time}", &time);
        // Buttons only where the reminder flow can take the tap: it keeps a
        // state for every booked appointment (with `[reminders]` on).
        let token = store::token(vault, &a.id);
        let open = match store::load(vault, &token) {
            Ok(s) => s.is_some_and(|s| s.patient == patient && s.phase != Phase::Closed),
            Err(VaultError::KeyUnavailable { .. } | VaultError::Decode { .. }) => false,
            Err(e) => return Err(e),
        };
        let (cancel, reschedule) = (
            store::payload(&token, Tap::Cancel),
            store::payload(&token, Tap::Reschedule),
        );
        let mut buttons = vec![(cancel.as_str(), texts.text(&lang, "appointments.cancel"))];
        if settings.reminders.reschedule_days > 0 {
            buttons.push((
                reschedule.as_str(),
                texts.text(&lang, "appointments.reschedule"),
            ));
        }
        let frame = message::Frame {
            header: None,
            body: &body,
            footer: None,
        };
        let (built, kind) = if open {
            (message::buttons(&frame, &buttons), "button")
        } else {
            (message::text(&body), "text")
        };
        match built {
            Ok(msg) => conversation::bot_says(vault, txn, settings, id, c, msg, kind, body, now)?,
            Err(e) => tracing::warn!(error = %e, "an appointment could not be shown"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppointmentStatus, PatientId};

    fn appt(id: &str, days: i64, status: AppointmentStatus) -> Appointment {
        Appointment {
            id: id.into(),
            patient: PatientId([1; 16]),
            start: Timestamp::from_second(1_800_000_000 + days * 86_400).unwrap(),
            duration_minutes: 15,
            status,
            pms_status: None,
            provider: None,
            location: None,
            patient_confirmed: false,
        }
    }

    #[test]
    fn the_next_three_booked_within_ninety_days_soonest_first() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let all = vec![
            appt("late", 91, AppointmentStatus::Booked),
            appt("c", 30, AppointmentStatus::Booked),
            appt("past", -1, AppointmentStatus::Booked),
            appt("gone", 2, AppointmentStatus::Cancelled),
            appt("a", 1, AppointmentStatus::Booked),
            appt("b", 3, AppointmentStatus::Booked),
            appt("d", 40, AppointmentStatus::Booked),
        ];
        let ids: Vec<String> = upcoming(all, now).into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}
