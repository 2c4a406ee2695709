//! The reminder workflow of one appointment as a pure state machine:
//! `(state, input, now) -> (new state, effects)`. No I/O and no clock read:
//! the shell (`care::shell`) loads the state and the facts, calls
//! [`decide`], and stages the state and the effects in one transaction.

use super::config::RemindersConfig;
use crate::model::PatientId;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp, Zoned};
use serde::{Deserialize, Serialize};

/// Where an appointment's reminders stand.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderState {
    /// The PMS appointment id (the state is sealed under the patient's key).
    pub appointment: String,
    pub patient: PatientId,
    pub start: Timestamp,
    pub phase: Phase,
    /// Timers staged and not yet fired or cancelled.
    pub pending: Vec<Pending>,
    /// Offsets whose reminder was queued: never a second one.
    pub sent: Vec<u8>,
    /// The slot a reschedule was asked for (until the PMS moves the
    /// appointment): the same row chosen again is not asked twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule: Option<String>,
}

impl std::fmt::Debug for ReminderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReminderState")
            .field("patient", &self.patient)
            .field("phase", &self.phase)
            .field("pending", &self.pending)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Booked, not confirmed by the patient.
    Open,
    Confirmed,
    /// Cancelled, no-show, fulfilled: nothing more is sent.
    Closed,
}

/// The timer (and `sent`) number of the post-visit follow-up; reminder
/// offsets count from 0 (at most 8).
pub const FOLLOW_UP: u8 = 255;

/// The timer number of "the visit went by unattended"
/// (`reminders.unattended_after`).
pub const UNATTENDED: u8 = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub offset: u8,
    pub due: Timestamp,
}

/// Why a due reminder was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    NoConsent,
    Deceased,
    Blocked,
    NoNumber,
}

impl Ineligible {
    pub fn as_str(self) -> &'static str {
        match self {
            Ineligible::NoConsent => "no-consent",
            Ineligible::Deceased => "deceased",
            Ineligible::Blocked => "outreach-blocked",
            Ineligible::NoNumber => "no-number",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Confirm,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Booked, or updated by the PMS or the API (a new start reschedules).
    Booked {
        appointment: String,
        patient: PatientId,
        start: Timestamp,
        confirmed: bool,
    },
    Cancelled,
    NoShow,
    Fulfilled,
    TimerFired {
        offset: u8,
        due: Timestamp,
        eligible: Result<(), Ineligible>,
    },
    Answered(Answer),
    /// "Reschedule" tapped; `open`: the slots that could be offered now
    /// (ids, soonest first, already filtered by `care::reschedule`).
    RescheduleAsked {
        open: Vec<String>,
    },
    /// A row of the offered list chosen; `None`: that slot is no longer
    /// open (taken, past, withdrawn by the PMS).
    SlotChosen {
        slot: Option<String>,
    },
}

/// What the patient is told after a tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Confirmed,
    Cancelled,
    /// The appointment is no longer open (cancelled, past).
    Closed,
    /// A new time was asked of the PMS; its confirmation follows.
    RescheduleRequested,
    /// No open slot to offer: the practice will get in touch.
    NoSlots,
    /// The chosen slot is no longer open.
    SlotGone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    ScheduleTimer(Pending),
    CancelTimer(Pending),
    /// Queue the reminder template; it expires at the visit's start.
    SendReminder {
        offset: u8,
        expires: Timestamp,
    },
    /// Queue the post-visit follow-up template; it expires a day later.
    SendFollowUp {
        expires: Timestamp,
    },
    /// A due reminder was not sent (feed event, no message).
    Skipped {
        offset: u8,
        reason: Ineligible,
    },
    /// Tell the PMS (SIU^S14 / SRM^S04 through the PMS outbox, with the
    /// feed event).
    ToPms(Answer),
    /// Offer these slots (ids) as an interactive list.
    OfferSlots(Vec<String>),
    /// Ask the PMS to move the appointment to this slot (SRM^S02).
    RequestReschedule {
        slot: String,
    },
    /// Hand over to staff (a `staff-requested` feed event with `reason`).
    Handoff {
        reason: &'static str,
    },
    /// The visit went by with no attendance from the PMS: a no-show for
    /// the KPIs.
    Unattended,
    Reply(Reply),
}

/// The clinic's calendar: reminder offsets, allowed hours, time zone.
#[derive(Debug, Clone)]
pub struct Calendar<'a> {
    pub config: &'a RemindersConfig,
    pub tz: &'a TimeZone,
}

impl Calendar<'_> {
    /// When the reminder `before` the visit at `start` is due: whole days
    /// are calendar days in the clinic's zone (10:00 three days before, on
    /// either side of a DST change), other offsets are elapsed time; a time
    /// outside the allowed hours moves to the last allowed time before it.
    pub fn due(&self, start: Timestamp, before: SignedDuration) -> Option<Timestamp> {
        let local = start.to_zoned(self.tz.clone());
        let secs = before.as_secs();
        let span = if secs % 86_400 == 0 && before.subsec_nanos() == 0 {
            Span::new().try_days(secs / 86_400).ok()?
        } else {
            Span::new().try_seconds(secs).ok()?
        };
        let at = local.checked_sub(span).ok()?;
        // Whole seconds: the timer index keys by the second, and a fired
        // timer must match its pending entry exactly.
        Timestamp::from_second(self.allowed(&at)?.timestamp().as_second()).ok()
    }

    /// When the follow-up `after` a visit fulfilled at `at` is due: that
    /// much later, moved forward into the allowed hours (never earlier).
    pub fn follow_up_due(&self, at: Timestamp, after: SignedDuration) -> Option<Timestamp> {
        let t = at.checked_add(after).ok()?.to_zoned(self.tz.clone());
        let (from, until) = (self.config.allowed_from, self.config.allowed_until);
        let date = if t.time() < from {
            t.date()
        } else if t.time() > until {
            t.date().tomorrow().ok()?
        } else {
            return Timestamp::from_second(t.timestamp().as_second()).ok();
        };
        let z = date.to_datetime(from).to_zoned(self.tz.clone()).ok()?;
        Timestamp::from_second(z.timestamp().as_second()).ok()
    }

    fn allowed(&self, at: &Zoned) -> Option<Zoned> {
        let (from, until) = (self.config.allowed_from, self.config.allowed_until);
        let time = at.time();
        let date = if time < from {
            at.date().yesterday().ok()?
        } else if time > until {
            at.date()
        } else {
            return Some(at.clone());
        };
        date.to_datetime(until).to_zoned(self.tz.clone()).ok()
    }
}

fn schedule(state: &mut ReminderState, cal: &Calendar<'_>, now: Timestamp, fx: &mut Vec<Effect>) {
    for (i, o) in cal.config.offsets.iter().enumerate() {
        let Ok(offset) = u8::try_from(i) else { break };
        if state.sent.contains(&offset) || (o.only_unconfirmed && state.phase == Phase::Confirmed) {
            continue;
        }
        // A reminder whose time has passed at booking is not sent late.
        let Some(due) = cal
            .due(state.start, o.before)
            .filter(|d| *d > now && *d < state.start)
        else {
            continue;
        };
        let p = Pending { offset, due };
        state.pending.push(p);
        fx.push(Effect::ScheduleTimer(p));
    }
    let unattended = cal
        .config
        .unattended_after
        .and_then(|after| state.start.checked_add(after).ok())
        .and_then(|t| Timestamp::from_second(t.as_second()).ok())
        .filter(|due| *due > now);
    if let Some(due) = unattended {
        let p = Pending {
            offset: UNATTENDED,
            due,
        };
        state.pending.push(p);
        fx.push(Effect::ScheduleTimer(p));
    }
}

fn cancel(state: &mut ReminderState, keep: impl Fn(&Pending) -> bool, fx: &mut Vec<Effect>) {
    state.pending.retain(|p| {
        if keep(p) {
            return true;
        }
        fx.push(Effect::CancelTimer(*p));
        false
    });
}

/// The decision. `None` state: no reminder workflow for this appointment
/// yet (only a booking starts one).
pub fn decide(
    state: Option<ReminderState>,
    input: Input,
    now: Timestamp,
    cal: &Calendar<'_>,
) -> (Option<ReminderState>, Vec<Effect>) {
    let mut fx = Vec::new();
    let Some(mut s) = state else {
        if let Input::Booked {
            appointment,
            patient,
            start,
            confirmed,
        } = input
        {
            let mut s = ReminderState {
                appointment,
                patient,
                start,
                phase: if confirmed {
                    Phase::Confirmed
                } else {
                    Phase::Open
                },
                pending: Vec::new(),
                sent: Vec::new(),
                reschedule: None,
            };
            schedule(&mut s, cal, now, &mut fx);
            return (Some(s), fx);
        }
        return (None, fx);
    };
    let only_unconfirmed = |offset: u8| {
        cal.config
            .offsets
            .get(usize::from(offset))
            .is_some_and(|o| o.only_unconfirmed)
    };
    match input {
        Input::Booked {
            patient,
            start,
            confirmed,
            ..
        } => {
            if patient != s.patient && start == s.start && s.phase != Phase::Closed {
                // Merged into another patient record (ADT^A40): the same
                // visit, the same reminders, now the survivor's.
                s.patient = patient;
            }
            if start != s.start || s.phase == Phase::Closed || patient != s.patient {
                // Rescheduled (or booked again): a new set of reminders.
                cancel(&mut s, |_| false, &mut fx);
                s.start = start;
                s.patient = patient;
                s.sent.clear();
                s.reschedule = None;
                s.phase = if confirmed {
                    Phase::Confirmed
                } else {
                    Phase::Open
                };
                schedule(&mut s, cal, now, &mut fx);
            } else if confirmed && s.phase == Phase::Open {
                s.phase = Phase::Confirmed;
                cancel(&mut s, |p| !only_unconfirmed(p.offset), &mut fx);
            }
        }
        Input::Cancelled | Input::NoShow => {
            cancel(&mut s, |_| false, &mut fx);
            s.phase = Phase::Closed;
        }
        Input::Fulfilled => {
            // Arrived, checked in, fulfilled: the first of them starts the
            // follow-up's delay, a repeat keeps its timer.
            cancel(&mut s, |p| p.offset == FOLLOW_UP, &mut fx);
            s.phase = Phase::Closed;
            let due = cal
                .config
                .follow_up
                .and_then(|after| cal.follow_up_due(now, after));
            let pending = s.pending.iter().any(|p| p.offset == FOLLOW_UP);
            if let (Some(due), false, false) = (due, pending, s.sent.contains(&FOLLOW_UP)) {
                let p = Pending {
                    offset: FOLLOW_UP,
                    due,
                };
                s.pending.push(p);
                fx.push(Effect::ScheduleTimer(p));
            }
        }
        Input::TimerFired {
            offset,
            due,
            eligible,
        } => {
            let p = Pending { offset, due };
            if !s.pending.contains(&p) {
                // A timer this state no longer knows (replaced): nothing.
                return (Some(s), fx);
            }
            s.pending.retain(|x| *x != p);
            if offset == UNATTENDED {
                // Neither attended nor reported a no-show, cancelled or
                // moved since it was booked.
                if s.phase != Phase::Closed {
                    s.phase = Phase::Closed;
                    cancel(&mut s, |_| false, &mut fx);
                    fx.push(Effect::Unattended);
                }
                return (Some(s), fx);
            }
            if offset == FOLLOW_UP {
                // Only a visit that ended fulfilled (a later cancel or
                // rebooking cancelled this timer) gets one, once.
                if s.phase == Phase::Closed && !s.sent.contains(&FOLLOW_UP) {
                    match eligible {
                        Ok(()) => {
                            s.sent.push(FOLLOW_UP);
                            fx.push(Effect::SendFollowUp {
                                expires: now
                                    .checked_add(SignedDuration::from_hours(24))
                                    .unwrap_or(now),
                            });
                        }
                        Err(reason) => fx.push(Effect::Skipped { offset, reason }),
                    }
                }
                return (Some(s), fx);
            }
            let wanted = s.phase != Phase::Closed
                && !s.sent.contains(&offset)
                && !(only_unconfirmed(offset) && s.phase == Phase::Confirmed)
                && s.start > now;
            if wanted {
                match eligible {
                    Ok(()) => {
                        s.sent.push(offset);
                        fx.push(Effect::SendReminder {
                            offset,
                            expires: s.start,
                        });
                    }
                    Err(reason) => fx.push(Effect::Skipped { offset, reason }),
                }
            }
        }
        Input::Answered(answer) => {
            if s.phase == Phase::Closed || s.start <= now {
                fx.push(Effect::Reply(Reply::Closed));
            } else {
                match answer {
                    Answer::Confirm => {
                        if s.phase == Phase::Open {
                            s.phase = Phase::Confirmed;
                            cancel(&mut s, |p| !only_unconfirmed(p.offset), &mut fx);
                            fx.push(Effect::ToPms(Answer::Confirm));
                        }
                        fx.push(Effect::Reply(Reply::Confirmed));
                    }
                    Answer::Cancel => {
                        s.phase = Phase::Closed;
                        cancel(&mut s, |_| false, &mut fx);
                        fx.push(Effect::ToPms(Answer::Cancel));
                        fx.push(Effect::Reply(Reply::Cancelled));
                    }
                }
            }
        }
        Input::RescheduleAsked { open } => {
            if s.phase == Phase::Closed || s.start <= now {
                fx.push(Effect::Reply(Reply::Closed));
            } else if open.is_empty() {
                fx.push(Effect::Handoff {
                    reason: "reschedule-no-slots",
                });
                fx.push(Effect::Reply(Reply::NoSlots));
            } else {
                fx.push(Effect::OfferSlots(open));
            }
        }
        Input::SlotChosen { slot } => {
            if s.phase == Phase::Closed || s.start <= now {
                fx.push(Effect::Reply(Reply::Closed));
            } else if let Some(slot) = slot {
                if s.reschedule.as_ref() != Some(&slot) {
                    s.reschedule = Some(slot.clone());
                    fx.push(Effect::RequestReschedule { slot });
                }
                fx.push(Effect::Reply(Reply::RescheduleRequested));
            } else {
                fx.push(Effect::Reply(Reply::SlotGone));
            }
        }
    }
    (Some(s), fx)
}

#[cfg(test)]
#[path = "reminder_tests.rs"]
mod tests;
