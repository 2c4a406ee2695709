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
pub(crate) fn normalise(text: &str) -> String {
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

/// The keyword a message is: a built-in one, or one of the words of a
/// language file (`keywords.opt_out` / `keywords.opt_in`).
pub fn keyword_in(text: &str, catalog: &super::messages::Catalog) -> Option<Keyword> {
    keyword(text).or_else(|| {
        if catalog.is_keyword("keywords.opt_out", text) {
            Some(Keyword::OptOut)
        } else if catalog.is_keyword("keywords.opt_in", text) {
            Some(Keyword::OptIn)
        } else {
            None
        }
    })
}

/// The built-in keyword a message is, if it is one.
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
    let Some(kw) = keyword_in(body, &settings.reminders.messages) else {
        // Not a keyword: perhaps the patient named a language.
        return super::shell::on_language_choice(vault, txn, &settings, patient, body, now);
    };
    on_keyword(vault, txn, patient, kw, now)
}

/// The quick-reply payload of an opt-out button (`cr1:o:`, anything after
/// it is ignored: the button is the patient's own, whatever message it
/// came with).
pub const OPT_OUT_BUTTON: &str = "cr1:o:";

/// Whether a tapped button's payload is an opt-out.
pub fn is_opt_out_button(payload: &str) -> bool {
    payload.starts_with(OPT_OUT_BUTTON)
}

/// An opt-out or opt-in from `patient` in the chat (a keyword or the
/// opt-out button), honoured at once.
pub fn on_keyword(
    vault: &Vault,
    txn: &mut Txn,
    patient: PatientId,
    kw: Keyword,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(settings) = vault.care() else {
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
    super::shell::queue_text(
        vault,
        txn,
        &settings,
        patient,
        now,
        super::texts::consent(kw),
    )
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
        assert!(is_opt_out_button("cr1:o:") && is_opt_out_button("cr1:o:ab12"));
        assert!(!is_opt_out_button("cr1:c:00") && !is_opt_out_button("o:"));
        for t in ["please don't stop", "stop it", "", "!!!", "stopping"] {
            assert_eq!(keyword(t), None, "{t}");
        }
    }

    #[test]
    fn a_language_file_adds_its_own_words() {
        let dir = tempfile::tempdir().unwrap();
        let it = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/messages/en.toml"
        ))
        .unwrap()
        .replace("\"stop, unsubscribe\"", "\"basta, disiscriviti\"")
        .replace("\"start, unstop\"", "\"ricomincia\"")
        .replace("\"English\"", "\"Italiano\"");
        std::fs::write(dir.path().join("it.toml"), it).unwrap();
        let catalog = super::super::messages::Catalog::load_dir(dir.path()).unwrap();
        assert_eq!(keyword_in("Basta!", &catalog), Some(Keyword::OptOut));
        assert_eq!(keyword_in("disiscriviti", &catalog), Some(Keyword::OptOut));
        assert_eq!(keyword_in(" Ricomincia. ", &catalog), Some(Keyword::OptIn));
        // The shipped files' words and the built-in ones still count.
        assert_eq!(
            keyword_in("Cancelar suscripción", &catalog),
            Some(Keyword::OptOut)
        );
        assert_eq!(keyword_in("commencer", &catalog), Some(Keyword::OptIn));
        assert_eq!(keyword_in("STOP", &catalog), Some(Keyword::OptOut));
        assert_eq!(keyword_in("basta così", &catalog), None);
    }
}
