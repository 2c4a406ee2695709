//! Self-service booking for a known patient (issue 11, item 2): the Book
//! menu entry → a service (or provider) when the open slots name several →
//! the next open slots as a list (a "Later" row pages on) → "this time?"
//! Yes / Another time → the slot is **held** for `[booking] hold` (no other
//! patient is offered it), an `SRM^S01` goes to the PMS → "booked" only
//! when the PMS sends the appointment; "sorry, taken" with a fresh list
//! when it books the slot for someone else or the hold runs out.
//!
//! - this file: [`decide`], pure (no I/O, no clock);
//! - `search`: which open slots a list shows (pure);
//! - `store`: the state, the holds, payloads, the hold timer;
//! - `shell`: runs decisions on the vault's writer;
//! - `config`: the `[booking]` section.
//!
//! Every row and button id says what it means (slot start and an opaque
//! reference, a page, a group), so a tap works whatever state the flow is
//! in; the state matters for the hold and for a "later" typed as text.

pub mod config;
pub mod search;
pub mod shell;
pub mod store;

#[cfg(test)]
mod tests;

use crate::model::PatientId;
use jiff::{SignedDuration, Timestamp};
use search::Group;
use serde::{Deserialize, Serialize};

/// The timer offset of a hold's expiry (the token is the booking's).
pub const HOLD_EXPIRY: u8 = 202;

/// A slot the patient picked, with what an appointment must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pick {
    pub slot: String,
    pub start: Timestamp,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
}

impl Pick {
    pub fn of(s: &crate::model::Slot) -> Self {
        Self {
            slot: s.id.clone(),
            start: s.start,
            provider: s.provider.clone(),
            location: s.location.clone(),
        }
    }
}

/// Where the patient's booking stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// A list (groups or times) was shown.
    Choosing { page: u32 },
    /// "This time?" was asked.
    Confirming { pick: Pick },
    /// The slot is held and the PMS was asked; the hold ends at `until`.
    Requested { pick: Pick, until: Timestamp },
}

/// One patient's booking, sealed under their key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    pub patient: PatientId,
    /// The language of the conversation that started it.
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub group: Option<Group>,
    pub step: Step,
    pub updated: Timestamp,
}

/// What happened. The shell resolves taps against the slot table first:
/// `None` for a slot that is no longer open (gone, or held for another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Book was chosen; `several`: the open slots name several groups.
    Start {
        several: bool,
        language: Option<String>,
    },
    /// A group's row.
    Group(Group),
    /// The "Later" row (or "later" typed while a list is out).
    Page { group: Option<Group>, page: u32 },
    /// A time's row.
    Slot(Option<Pick>),
    /// Yes to "this time?".
    Yes(Option<Pick>),
    /// "Another time".
    AnotherTime,
    /// An appointment at the held slot's time arrived from the PMS:
    /// `mine` when it is this patient's.
    Appointment { slot: String, mine: bool },
    /// The hold timer due at `due` fired.
    HoldExpired { due: Timestamp },
    /// The conversation left the booking (idle reset, a greeting, staff).
    End,
}

/// A short text (`booking.*` in the message files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say {
    /// "We are asking the practice".
    Asking,
    /// "Booked: <date time>".
    Booked(Timestamp),
    /// "Sorry, that time was taken".
    Taken,
    /// "That time is no longer free".
    Gone,
    /// "We are still waiting for the practice".
    StillWaiting,
}

/// Why a requested booking failed (`booking-failed`'s `details.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The PMS booked the slot for another patient.
    Taken,
    /// The hold ran out without the PMS's answer.
    Expired,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Taken => "taken",
            Failure::Expired => "expired",
        }
    }
}

/// What a decision asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The list of services (or providers).
    OfferGroups,
    /// A page of open slots (no open slot at all: "nothing free").
    OfferSlots {
        group: Option<Group>,
        page: u32,
    },
    /// "This time?" with Yes / Another time.
    AskConfirm(Pick),
    /// Keep the slot from others until `until`, with its expiry timer.
    Hold {
        pick: Pick,
        until: Timestamp,
    },
    /// The hold is over (record and timer).
    Release {
        slot: String,
        until: Timestamp,
    },
    /// The `SRM^S01` and its `booking-requested` event.
    Request(Pick),
    /// The slot is booked: out of the open slots.
    RemoveSlot(String),
    Say(Say),
    /// `booking-confirmed`.
    Confirmed(Pick),
    /// `booking-failed`.
    Failed(Pick, Failure),
}

/// The rules a decision needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub hold: SignedDuration,
}

/// The pure transition. `None` in: no booking; `None` out: none any more.
pub fn decide(
    state: Option<Booking>,
    patient: PatientId,
    input: Input,
    now: Timestamp,
    rules: Rules,
) -> (Option<Booking>, Vec<Effect>) {
    let mut fx = Vec::new();
    // While the PMS decides, the patient cannot start another booking here.
    if let Some(s) = state
        .as_ref()
        .filter(|s| matches!(s.step, Step::Requested { .. }))
    {
        if !matches!(
            input,
            Input::Appointment { .. } | Input::HoldExpired { .. } | Input::End
        ) {
            fx.push(Effect::Say(Say::StillWaiting));
            return (Some(s.clone()), fx);
        }
    }
    let fresh = |group: Option<Group>, language: Option<String>| Booking {
        patient,
        language,
        group,
        step: Step::Choosing { page: 0 },
        updated: now,
    };
    let language = state.as_ref().and_then(|s| s.language.clone());
    let group = state.as_ref().and_then(|s| s.group.clone());
    let next = match input {
        Input::Start { several, language } => {
            fx.push(if several {
                Effect::OfferGroups
            } else {
                Effect::OfferSlots {
                    group: None,
                    page: 0,
                }
            });
            Some(fresh(None, language))
        }
        Input::Group(g) => {
            fx.push(Effect::OfferSlots {
                group: Some(g.clone()),
                page: 0,
            });
            Some(fresh(Some(g), language))
        }
        Input::Page { group, page } => {
            fx.push(Effect::OfferSlots {
                group: group.clone(),
                page,
            });
            let mut b = fresh(group, language);
            b.step = Step::Choosing { page };
            Some(b)
        }
        Input::Slot(Some(pick)) => {
            fx.push(Effect::AskConfirm(pick.clone()));
            let mut b = fresh(group, language);
            b.step = Step::Confirming { pick };
            Some(b)
        }
        Input::Slot(None) | Input::Yes(None) => {
            fx.push(Effect::Say(Say::Gone));
            fx.push(Effect::OfferSlots {
                group: group.clone(),
                page: 0,
            });
            Some(fresh(group, language))
        }
        Input::Yes(Some(pick)) => {
            let until = now.saturating_add(rules.hold).unwrap_or(now);
            fx.push(Effect::Hold {
                pick: pick.clone(),
                until,
            });
            fx.push(Effect::Request(pick.clone()));
            fx.push(Effect::Say(Say::Asking));
            let mut b = fresh(group, language);
            b.step = Step::Requested { pick, until };
            Some(b)
        }
        Input::AnotherTime => {
            let page = match state.as_ref().map(|s| &s.step) {
                Some(Step::Choosing { page }) => *page,
                _ => 0,
            };
            fx.push(Effect::OfferSlots {
                group: group.clone(),
                page,
            });
            let mut b = fresh(group, language);
            b.step = Step::Choosing { page };
            Some(b)
        }
        Input::Appointment { slot, mine } => match state {
            Some(Booking {
                step: Step::Requested { pick, until },
                ..
            }) if pick.slot == slot => {
                fx.push(Effect::Release {
                    slot: pick.slot.clone(),
                    until,
                });
                fx.push(Effect::RemoveSlot(pick.slot.clone()));
                if mine {
                    fx.push(Effect::Say(Say::Booked(pick.start)));
                    fx.push(Effect::Confirmed(pick));
                    None
                } else {
                    fx.push(Effect::Failed(pick, Failure::Taken));
                    fx.push(Effect::Say(Say::Taken));
                    fx.push(Effect::OfferSlots {
                        group: group.clone(),
                        page: 0,
                    });
                    Some(fresh(group, language))
                }
            }
            other => other,
        },
        Input::HoldExpired { due } => match state {
            Some(Booking {
                step: Step::Requested { pick, until },
                ..
            }) if until == due => {
                // The slot is free again: the next patient may be offered it.
                fx.push(Effect::Release {
                    slot: pick.slot.clone(),
                    until,
                });
                fx.push(Effect::Failed(pick, Failure::Expired));
                fx.push(Effect::Say(Say::Taken));
                fx.push(Effect::OfferSlots {
                    group: group.clone(),
                    page: 0,
                });
                Some(fresh(group, language))
            }
            other => other,
        },
        // A requested booking is the PMS's to answer: it stays.
        Input::End => state.filter(|s| matches!(s.step, Step::Requested { .. })),
    };
    (next, fx)
}
