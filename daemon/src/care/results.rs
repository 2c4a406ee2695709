//! The results workflow of one result (one PMS order number) as a pure
//! state machine: `(state, input, now) -> (new state, effects)`. No I/O and
//! no clock read: `care::results_shell` loads the state and the facts
//! (is the answer right?), calls [`decide`], and stages the new state and
//! the effects in the caller's transaction.
//!
//! ```text
//! new deliverable version ─▶ Notified ──"Show it"──▶ AwaitingProof ──right──▶ Delivered
//!                               ▲                        │  wrong (< max): reply, stay
//!   a correction offers again ──┘                        └─ wrong (= max) ─▶ Locked
//! retention timer ─▶ Purged (the sealed PDF removed), from any phase
//! ```

use crate::model::PatientId;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The timer number (`care::store` timer key offset) of a result's
/// retention; reminders use 0–8, 254 and 255.
pub const RETENTION: u8 = 253;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultState {
    /// The PMS order number (the state is sealed under the patient's key).
    pub order: String,
    pub patient: PatientId,
    /// The version last offered to the patient.
    pub version: u32,
    pub phase: Phase,
    /// Wrong answers so far: per result, across versions (a correction
    /// gives no fresh guesses).
    pub wrong: u8,
    /// When the pending retention timer fires.
    pub purge_at: Option<Timestamp>,
}

impl std::fmt::Debug for ResultState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultState")
            .field("patient", &self.patient)
            .field("version", &self.version)
            .field("phase", &self.phase)
            .field("wrong", &self.wrong)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The notice went out (or was due); waiting for "Show it".
    Notified,
    /// "Show it" tapped; the patient's next text is the proof.
    AwaitingProof,
    /// The document went out.
    Delivered,
    /// Too many wrong answers: nothing is sent, staff were told.
    Locked,
    /// The sender took the result back, or its document could not be
    /// queued (too large, refused): nothing is sent until a new version.
    Withdrawn,
    /// Retention passed: the PDF is gone.
    Purged,
}

/// The settings a decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub max_attempts: u8,
    pub retention: SignedDuration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A deliverable version (status F or C with a PDF) was stored.
    Deliverable {
        order: String,
        patient: PatientId,
        version: u32,
    },
    /// The stored result is no longer deliverable (withdrawn).
    Withdrawn,
    /// The patient tapped "Show it".
    ShowIt,
    /// The patient answered while asked for proof; `right`: it matched.
    Answer { right: bool },
    /// The retention timer due at `due` fired.
    RetentionFired { due: Timestamp },
}

/// What the patient is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Please send your date of birth (or the code).
    AskProof,
    /// That does not match; try again.
    Wrong,
    /// Locked: please contact the practice.
    Locked,
    /// The document was already sent.
    AlreadySent,
    /// Not available any more (withdrawn, purged).
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Queue the notice template (no content), with the "Show it" button.
    SendNotice,
    /// Take the patient's next text as the answer for this result.
    AwaitAnswer,
    /// Stop taking texts as answers for this result.
    StopAwaiting,
    /// Queue the PDF as a document message; mark the result delivered.
    SendDocument,
    /// Lock: a staff event, an audit entry, nothing sent.
    Lock,
    ScheduleRetention(Timestamp),
    CancelRetention(Timestamp),
    /// Remove the sealed PDF (retention); `collected`: it had been sent.
    Purge {
        collected: bool,
    },
    /// Audit a wrong answer (how many so far).
    WrongAnswer {
        count: u8,
    },
    Reply(Reply),
}

/// The next state and effects. `None` in, `None` out: an input about a
/// result the workflow never saw is ignored.
pub fn decide(
    state: Option<ResultState>,
    input: Input,
    now: Timestamp,
    rules: &Rules,
) -> (Option<ResultState>, Vec<Effect>) {
    let mut fx = Vec::new();
    let Some(mut s) = state else {
        let Input::Deliverable {
            order,
            patient,
            version,
        } = input
        else {
            return (None, fx);
        };
        let due = retention_due(now, rules);
        let s = ResultState {
            order,
            patient,
            version,
            phase: Phase::Notified,
            wrong: 0,
            purge_at: due,
        };
        fx.push(Effect::SendNotice);
        fx.extend(due.map(Effect::ScheduleRetention));
        return (Some(s), fx);
    };
    match input {
        Input::Deliverable {
            order,
            patient,
            version,
        } => {
            // A repeat of the version offered, or a result that locked or
            // went: nothing new for the patient.
            if version <= s.version || matches!(s.phase, Phase::Locked) || (s.patient != patient) {
                s.version = s.version.max(version);
                return (Some(s), fx);
            }
            if s.phase == Phase::AwaitingProof {
                fx.push(Effect::StopAwaiting);
            }
            s.order = order;
            s.version = version;
            s.phase = Phase::Notified;
            // Retention counts from the newest version.
            let due = retention_due(now, rules);
            fx.push(Effect::SendNotice);
            if due != s.purge_at {
                fx.extend(s.purge_at.map(Effect::CancelRetention));
                fx.extend(due.map(Effect::ScheduleRetention));
                s.purge_at = due;
            }
        }
        Input::Withdrawn => {
            if matches!(s.phase, Phase::Notified | Phase::AwaitingProof) {
                if s.phase == Phase::AwaitingProof {
                    fx.push(Effect::StopAwaiting);
                }
                s.phase = Phase::Withdrawn;
            }
        }
        Input::ShowIt => match s.phase {
            Phase::Notified | Phase::AwaitingProof => {
                s.phase = Phase::AwaitingProof;
                fx.push(Effect::AwaitAnswer);
                fx.push(Effect::Reply(Reply::AskProof));
            }
            Phase::Delivered => fx.push(Effect::Reply(Reply::AlreadySent)),
            Phase::Locked => fx.push(Effect::Reply(Reply::Locked)),
            Phase::Withdrawn | Phase::Purged => fx.push(Effect::Reply(Reply::Unavailable)),
        },
        Input::Answer { right } => {
            if s.phase != Phase::AwaitingProof {
                fx.push(Effect::StopAwaiting);
                return (Some(s), fx);
            }
            fx.push(Effect::StopAwaiting);
            if right {
                s.phase = Phase::Delivered;
                fx.push(Effect::SendDocument);
            } else {
                s.wrong = s.wrong.saturating_add(1);
                fx.push(Effect::WrongAnswer { count: s.wrong });
                if s.wrong >= rules.max_attempts {
                    s.phase = Phase::Locked;
                    fx.push(Effect::Lock);
                    fx.push(Effect::Reply(Reply::Locked));
                } else {
                    fx.push(Effect::AwaitAnswer);
                    fx.push(Effect::Reply(Reply::Wrong));
                }
            }
        }
        Input::RetentionFired { due } => {
            if s.purge_at != Some(due) {
                return (Some(s), fx);
            }
            s.purge_at = None;
            if s.phase == Phase::AwaitingProof {
                fx.push(Effect::StopAwaiting);
            }
            let collected = s.phase == Phase::Delivered;
            // A locked result stays locked (staff deal with it); its PDF
            // goes all the same.
            if s.phase != Phase::Locked {
                s.phase = Phase::Purged;
            }
            fx.push(Effect::Purge { collected });
        }
    }
    (Some(s), fx)
}

/// Whole seconds: the timer index keys by the second, and a fired timer
/// must match `purge_at` exactly.
fn retention_due(now: Timestamp, rules: &Rules) -> Option<Timestamp> {
    let at = now.checked_add(rules.retention).ok()?;
    Timestamp::from_second(at.as_second()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        max_attempts: 3,
        retention: SignedDuration::from_hours(720),
    };

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn new(version: u32) -> Input {
        Input::Deliverable {
            order: "ZZ-ORDER".into(),
            patient: PatientId([1; 16]),
            version,
        }
    }

    fn step(s: Option<ResultState>, i: Input) -> (ResultState, Vec<Effect>) {
        let (s, fx) = decide(s, i, t(10), &RULES);
        (s.unwrap(), fx)
    }

    #[test]
    fn notice_proof_wrong_twice_then_right_delivers() {
        let (s, fx) = step(None, new(1));
        let due = t(0) + SignedDuration::from_hours(720);
        assert_eq!(
            fx,
            [
                Effect::SendNotice,
                Effect::ScheduleRetention(due + SignedDuration::from_secs(10))
            ]
        );
        assert_eq!(s.phase, Phase::Notified);
        let (s, fx) = step(Some(s), Input::ShowIt);
        assert_eq!(fx, [Effect::AwaitAnswer, Effect::Reply(Reply::AskProof)]);
        let (s, fx) = step(Some(s), Input::Answer { right: false });
        assert_eq!(
            fx,
            [
                Effect::StopAwaiting,
                Effect::WrongAnswer { count: 1 },
                Effect::AwaitAnswer,
                Effect::Reply(Reply::Wrong)
            ]
        );
        let (s, _) = step(Some(s), Input::Answer { right: false });
        let (s, fx) = step(Some(s), Input::Answer { right: true });
        assert_eq!(fx, [Effect::StopAwaiting, Effect::SendDocument]);
        assert_eq!(s.phase, Phase::Delivered);
        // A second tap: no second document.
        let (s, fx) = step(Some(s), Input::ShowIt);
        assert_eq!(fx, [Effect::Reply(Reply::AlreadySent)]);
        // An answer now is not one (nothing was asked).
        let (s, fx) = step(Some(s), Input::Answer { right: true });
        assert_eq!(fx, [Effect::StopAwaiting]);
        // The delivered copy goes at retention too.
        let due = s.purge_at.unwrap();
        let (_, fx) = step(Some(s), Input::RetentionFired { due });
        assert_eq!(fx, [Effect::Purge { collected: true }]);
    }

    #[test]
    fn three_wrong_lock_and_nothing_is_sent_after() {
        let (mut s, _) = step(None, new(1));
        s = step(Some(s), Input::ShowIt).0;
        for _ in 0..2 {
            s = step(Some(s), Input::Answer { right: false }).0;
        }
        let (s, fx) = step(Some(s), Input::Answer { right: false });
        assert_eq!(s.phase, Phase::Locked);
        assert!(fx.contains(&Effect::Lock));
        assert!(!fx.contains(&Effect::AwaitAnswer));
        let (s, fx) = step(Some(s), Input::Answer { right: true });
        assert!(!fx.contains(&Effect::SendDocument));
        let (s, fx) = step(Some(s), Input::ShowIt);
        assert_eq!(fx, [Effect::Reply(Reply::Locked)]);
        // A correction does not unlock it (no fresh guesses).
        let (s, fx) = step(Some(s), new(2));
        assert!(fx.is_empty());
        assert_eq!(s.phase, Phase::Locked);
    }

    #[test]
    fn a_correction_is_offered_again_and_a_repeat_is_not() {
        let (mut s, _) = step(None, new(1));
        s = step(Some(s), Input::ShowIt).0;
        s = step(Some(s), Input::Answer { right: true }).0;
        let (s2, fx) = step(Some(s.clone()), new(1));
        assert!(fx.is_empty());
        assert_eq!(s2.phase, Phase::Delivered);
        let (s, fx) = decide(Some(s), new(2), t(100), &RULES);
        let s = s.unwrap();
        assert_eq!(s.phase, Phase::Notified);
        assert_eq!(s.version, 2);
        assert_eq!(
            fx,
            [
                Effect::SendNotice,
                Effect::CancelRetention(s2.purge_at.unwrap()),
                Effect::ScheduleRetention(s.purge_at.unwrap())
            ]
        );
        // A correction within the same second keeps its one timer.
        let (_, fx) = decide(Some(s), new(3), t(100), &RULES);
        assert_eq!(fx, [Effect::SendNotice]);
    }

    #[test]
    fn retention_purges_only_at_its_own_time_and_withdrawal_closes() {
        let (s, _) = step(None, new(1));
        let due = s.purge_at.unwrap();
        let (s, fx) = step(Some(s), Input::RetentionFired { due: t(5) });
        assert!(fx.is_empty());
        let (s, fx) = step(Some(s), Input::RetentionFired { due });
        assert_eq!(fx, [Effect::Purge { collected: false }]);
        assert_eq!(s.phase, Phase::Purged);
        assert_eq!(
            step(Some(s), Input::ShowIt).1,
            [Effect::Reply(Reply::Unavailable)]
        );
        let (s, _) = step(None, new(1));
        let (s, _) = step(Some(s), Input::ShowIt);
        let (s, fx) = step(Some(s), Input::Withdrawn);
        assert_eq!(fx, [Effect::StopAwaiting]);
        assert_eq!(s.phase, Phase::Withdrawn);
        // Inputs about an unknown result are ignored.
        assert_eq!(decide(None, Input::ShowIt, t(0), &RULES), (None, vec![]));
    }
}
