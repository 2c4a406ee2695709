//! Intake of someone the clinic does not know (issue 11, item 2): an
//! unknown number that chooses Book or My appointments is asked, one
//! message each, for their full name, their date of birth and their
//! consent to WhatsApp messages; then a new-patient request goes to the
//! PMS and the feed, and the conversation to staff, who finish the
//! registration (the PMS assigns the MRN).
//!
//! This file is the pure step function: what the next question is, given
//! the step and what the answer was (usable or not). The words themselves
//! never come in here: the shell (`intake_shell`) judges them, keeps them
//! sealed under the system key, and builds the request from them.

use serde::{Deserialize, Serialize};

/// The question the contact is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Name,
    Dob,
    Consent,
}

/// What an answer was, as the shell judged it (no content: the text stays
/// in the shell, so an `Input`'s `Debug` can never show it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Fit for the step (a name; a date of birth that parses).
    Usable,
    /// Not fit (digits in a name, no date): the question again.
    Unreadable,
    /// The consent question's Yes.
    Yes,
    /// The consent question's No.
    No,
}

/// What the shell does for the intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Ask `step`'s question (`again`: the answer was not usable).
    Ask { step: Step, again: bool },
    /// Keep the message being applied as the answer to `step` (sealed).
    Keep(Step),
    /// Send the new-patient request from the kept answers, then forget them.
    Request { consent: bool },
    /// Forget the kept answers (idle reset, hand-off, start over).
    Drop,
}

/// Where the intake goes next: `Some(step)` to stay in it, `None` when it
/// is over (the request was made).
pub fn next(step: Step, answer: Answer) -> (Option<Step>, Vec<Effect>) {
    let again = |step| (Some(step), vec![Effect::Ask { step, again: true }]);
    match (step, answer) {
        (Step::Name, Answer::Usable) => (
            Some(Step::Dob),
            vec![
                Effect::Keep(Step::Name),
                Effect::Ask {
                    step: Step::Dob,
                    again: false,
                },
            ],
        ),
        (Step::Dob, Answer::Usable) => (
            Some(Step::Consent),
            vec![
                Effect::Keep(Step::Dob),
                Effect::Ask {
                    step: Step::Consent,
                    again: false,
                },
            ],
        ),
        (Step::Consent, Answer::Yes) => (None, vec![Effect::Request { consent: true }]),
        (Step::Consent, Answer::No) => (None, vec![Effect::Request { consent: false }]),
        (step, _) => again(step),
    }
}

/// The first question.
pub fn start() -> (Step, Effect) {
    (
        Step::Name,
        Effect::Ask {
            step: Step::Name,
            again: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_then_date_of_birth_then_consent_then_the_request() {
        let (s, fx) = next(Step::Name, Answer::Usable);
        assert_eq!(s, Some(Step::Dob));
        assert_eq!(fx[0], Effect::Keep(Step::Name));
        let (s, fx) = next(Step::Dob, Answer::Unreadable);
        assert_eq!(s, Some(Step::Dob));
        assert_eq!(
            fx,
            [Effect::Ask {
                step: Step::Dob,
                again: true
            }]
        );
        let (s, _) = next(Step::Dob, Answer::Usable);
        assert_eq!(s, Some(Step::Consent));
        // Yes / No only count for the consent question.
        assert_eq!(next(Step::Name, Answer::Yes).0, Some(Step::Name));
        assert_eq!(next(Step::Consent, Answer::Usable).0, Some(Step::Consent));
        assert_eq!(
            next(Step::Consent, Answer::No),
            (None, vec![Effect::Request { consent: false }])
        );
        assert_eq!(
            next(Step::Consent, Answer::Yes),
            (None, vec![Effect::Request { consent: true }])
        );
    }
}
