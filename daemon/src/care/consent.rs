//! Opt-out and opt-in by keyword in the chat (issue 10 item 3, first
//! part). A message that is only a keyword (case, accents and surrounding
//! punctuation ignored: "Stopp", "ARRÊT!", " alto. ") changes the consent at
//! once: the consent record, `ADT^A31` to the PMS and the feed event (one
//! `pms::outbound` action), and one confirmation. Words inside a sentence
//! do not count ("please don't stop" is not an opt-out).

use crate::model::{ConsentState, PatientId};
use crate::pms::outbound::{ActionError, PatientAction};
use crate::vault::{Txn, Vault, VaultResult};
use jiff::Timestamp;

const OPT_OUT: [&str; 9] = [
    "stop",
    "stopp",
    "alto",
    "baja",
    "arret",
    "unsubscribe",
    "abmelden",
    "desabonner",
    "cancelar suscripcion",
];
const OPT_IN: [&str; 4] = ["start", "anmelden", "alta", "unstop"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
}

/// Lowercase, accents folded, surrounding punctuation and spaces removed.
fn normalise(text: &str) -> String {
    let folded: String = text
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ä' | 'ã' | 'å' => 'a',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ò' | 'ó' | 'ô' | 'ö' | 'õ' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            'ß' => 's',
            other => other,
        })
        .collect();
    folded
        .trim_matches(|c: char| !c.is_alphanumeric())
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The keyword a message is, if it is one.
pub fn keyword(text: &str) -> Option<Keyword> {
    // A keyword is short; anything long is a sentence.
    if text.len() > 64 {
        return None;
    }
    let word = normalise(text);
    if OPT_OUT.contains(&word.as_str()) {
        Some(Keyword::OptOut)
    } else if OPT_IN.contains(&word.as_str()) {
        Some(Keyword::OptIn)
    } else {
        None
    }
}

/// A text from `patient`: a keyword changes the consent (once: a repeat
/// while already in that state does nothing, so the patient gets one
/// confirmation).
pub fn on_text(
    vault: &Vault,
    txn: &mut Txn,
    patient: PatientId,
    body: &str,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = vault.care() else {
        return Ok(());
    };
    let Some(kw) = keyword(body) else {
        return Ok(());
    };
    let current = vault.get_consent(patient)?.map(|c| c.state);
    let (wanted, action) = match kw {
        Keyword::OptOut => (ConsentState::OptedOut, PatientAction::OptOut { patient }),
        Keyword::OptIn => (ConsentState::OptedIn, PatientAction::OptIn { patient }),
    };
    if current == Some(wanted) {
        return Ok(());
    }
    match crate::pms::outbound::stage(vault, txn, &settings.outbound, &action, "care:consent", now)
    {
        Ok(_) if kw == Keyword::OptOut => crate::kpi::on_opt_out(vault, txn, patient, now)?,
        Ok(_) => {}
        Err(ActionError::Vault(e)) => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "a consent change could not be recorded");
            return Ok(());
        }
    }
    super::shell::queue_text(vault, txn, &settings, patient, now, |lang| {
        super::texts::consent(kw, lang)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_ignore_case_accents_and_punctuation_but_not_sentences() {
        for t in [
            "STOP",
            "Stopp",
            "alto",
            "ARRÊT!",
            " baja. ",
            "Unsubscribe",
            "abmelden",
        ] {
            assert_eq!(keyword(t), Some(Keyword::OptOut), "{t}");
        }
        for t in ["START", "Start!", "anmelden"] {
            assert_eq!(keyword(t), Some(Keyword::OptIn), "{t}");
        }
        for t in ["please don't stop", "stop it", "", "!!!", "stopping"] {
            assert_eq!(keyword(t), None, "{t}");
        }
    }
}
