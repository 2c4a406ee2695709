//! The console's words, in English and German: one table per page family,
//! so that a page's words sit together and a missing one is found by a
//! test, not by a reader seeing "?".

use super::pages::Lang;

/// (key, English, German).
pub type Words = &'static [(&'static str, &'static str, &'static str)];

/// Every table [`t`] looks in.
const TABLES: &[Words] = &[CORE, super::lookup::WORDS];

/// The word for `key` in `lang`; "?" for an unknown key (a unit test keeps
/// every key the pages use in a table).
pub fn t(lang: Lang, key: &str) -> &'static str {
    for table in TABLES {
        if let Some((_, en, de)) = table.iter().find(|(k, _, _)| *k == key) {
            return if lang == Lang::De { de } else { en };
        }
    }
    "?"
}

/// Sign-in, the bar, the inbox and the conversation page.
const CORE: Words = &[
    ("login", "Sign in", "Anmelden"),
    ("name", "User name", "Benutzername"),
    ("password", "Password", "Passwort"),
    ("code", "Code from the authenticator app", "Code aus der Authenticator-App"),
    ("wrong", "Sign-in failed: the name, password or code is wrong.", "Anmeldung fehlgeschlagen: Name, Passwort oder Code stimmt nicht."),
    ("locked", "This account is locked. An administrator can reset it.", "Dieses Konto ist gesperrt. Eine Administratorin oder ein Administrator kann es zurücksetzen."),
    ("throttled", "Too many attempts. Please wait a minute.", "Zu viele Versuche. Bitte warten Sie eine Minute."),
    ("logout", "Sign out", "Abmelden"),
    ("inbox", "Inbox", "Posteingang"),
    ("waiting", "Waiting conversations (oldest first)", "Wartende Gespräche (älteste zuerst)"),
    ("none", "Nobody is waiting.", "Niemand wartet."),
    ("since", "Waiting for", "Wartet seit"),
    ("reason", "Reason", "Grund"),
    ("open", "Open", "Öffnen"),
    ("window", "24-hour window", "24-Stunden-Fenster"),
    ("yes", "open", "offen"),
    ("no", "closed", "geschlossen"),
    ("conversation", "Conversation", "Gespräch"),
    ("reply", "Reply", "Antworten"),
    ("reply_open", "The window is open: the reply goes out as text.", "Das Fenster ist offen: die Antwort geht als Text."),
    ("reply_closed", "The window is closed: the reopen template goes first, your text follows when the person answers.", "Das Fenster ist geschlossen: zuerst geht die Wiedereröffnungs-Vorlage, Ihr Text folgt, sobald die Person antwortet."),
    ("close", "Close (back to the bot)", "Gespräch beenden (zurück an den Bot)"),
    ("back", "Back to the inbox", "Zurück zum Posteingang"),
    ("patient", "Patient", "Patient/in"),
    ("staff", "Staff", "Praxis"),
    ("queued", "waiting to be sent", "wartet auf Versand"),
    ("sent", "sent", "gesendet"),
    ("delivered", "delivered", "zugestellt"),
    ("read", "read", "gelesen"),
    ("failed", "failed (WhatsApp did not deliver it)", "fehlgeschlagen (WhatsApp hat die Nachricht nicht zugestellt)"),
    ("held", "held until the person answers the template", "zurückgehalten bis zur Antwort auf die Vorlage"),
    ("asked", "asked for a person", "möchte mit jemandem sprechen"),
    ("not-understood", "the bot did not understand", "Bot hat nicht verstanden"),
    ("not-yet-automated", "not automated yet", "noch nicht automatisiert"),
    ("state", "State", "Status"),
    ("error", "That did not work", "Das ging nicht"),
    ("notfound", "Not found", "Nicht gefunden"),
    ("title", "clinic-relay", "clinic-relay"),
    ("menu", "Main menu", "Hauptmenü"),
    ("lookup", "Find a patient", "Patient/in suchen"),
    ("dashboard", "Dashboard", "Übersicht"),
    ("bot", "Bot", "Bot"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_once_with_both_languages() {
        let mut seen = std::collections::HashSet::new();
        for table in TABLES {
            for (k, en, de) in *table {
                assert!(seen.insert(*k), "{k} twice");
                assert!(!en.is_empty() && !de.is_empty(), "{k} empty");
            }
        }
    }

    #[test]
    fn every_key_the_pages_use_is_there() {
        // The keys are literals in `t(lang, "…")` calls: find them in the
        // console's source and look each up.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/console");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("words.rs") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            for (i, _) in text.match_indices("t(lang, \"") {
                let rest = &text[i + 9..];
                let key = &rest[..rest.find('"').unwrap()];
                assert_ne!(t(Lang::En, key), "?", "no word for {key}");
            }
        }
    }
}
