//! Which open slots a "Reschedule" tap offers, and how a list row names
//! one without saying its PMS id. Pure: the shell passes the slot table
//! and the time.

use crate::model::{Appointment, Slot};
use jiff::{SignedDuration, Timestamp};

/// Rows in the list: Meta allows 10 in total.
pub const MAX_ROWS: usize = 10;

/// An opaque reference to a slot in a list row's id (a blind index of its
/// PMS id, made by the shell with the vault's key).
pub type SlotRef = [u8; 8];

/// The slots to offer for moving `appointment`: free (in the table), in
/// the future, within `days` days, not its current time, with the same
/// provider and location when both sides name one; soonest first, at most
/// [`MAX_ROWS`].
pub fn candidates<'a>(
    slots: &'a [Slot],
    appointment: &Appointment,
    now: Timestamp,
    days: u32,
) -> Vec<&'a Slot> {
    let horizon = SignedDuration::from_hours(i64::from(days) * 24);
    let until = now.saturating_add(horizon).unwrap_or(now);
    let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    let mut out: Vec<&Slot> = slots
        .iter()
        .filter(|s| s.start > now && s.start <= until && s.start != appointment.start)
        .filter(|s| same(&s.provider, &appointment.provider))
        .filter(|s| same(&s.location, &appointment.location))
        .collect();
    out.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
    out.truncate(MAX_ROWS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppointmentStatus, PatientId};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn slot(id: &str, start: &str, provider: Option<&str>) -> Slot {
        Slot {
            id: id.to_owned(),
            start: ts(start),
            duration_minutes: 15,
            provider: provider.map(str::to_owned),
            location: None,
            service: None,
        }
    }

    #[test]
    fn future_slots_of_the_same_provider_soonest_first_at_most_ten() {
        let a = Appointment {
            id: "A1".into(),
            patient: PatientId([1; 16]),
            start: ts("2026-06-10T08:00:00Z"),
            duration_minutes: 15,
            status: AppointmentStatus::Booked,
            pms_status: None,
            provider: Some("DOC1".into()),
            location: None,
            patient_confirmed: false,
        };
        let now = ts("2026-06-01T08:00:00Z");
        let mut slots = vec![
            slot("past", "2026-05-31T08:00:00Z", Some("DOC1")),
            slot("other", "2026-06-02T08:00:00Z", Some("DOC2")),
            slot("late", "2026-07-01T08:00:00Z", Some("DOC1")),
            slot("same-time", "2026-06-10T08:00:00Z", Some("DOC1")),
            slot("b", "2026-06-03T08:00:00Z", None),
            slot("a", "2026-06-02T09:00:00Z", Some("DOC1")),
        ];
        let ids = |v: Vec<&Slot>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(candidates(&slots, &a, now, 14)), ["a", "b"]);
        // "a" is 25 hours ahead: not within one day.
        assert!(candidates(&slots, &a, now, 1).is_empty());
        assert!(candidates(&slots, &a, now, 0).is_empty());
        for i in 0..20 {
            slots.push(slot(&format!("n{i:02}"), "2026-06-04T08:00:00Z", None));
        }
        assert_eq!(candidates(&slots, &a, now, 14).len(), MAX_ROWS);
    }
}
