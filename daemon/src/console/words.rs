//! The console's words, in English and German: one table per page family,
//! so that a page's words sit together and a missing one is found by a
//! test, not by a reader seeing "?".

use super::pages::Lang;

/// (key, English, German).
pub type Words = &'static [(&'static str, &'static str, &'static str)];

/// Every table [`t`] looks in.
const TABLES: &[Words] = &[CORE, super::dashboard::WORDS, super::lookup::WORDS];

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
    ("failed", "not delivered", "nicht zugestellt"),
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
    ("form_reused", "This form was already sent with another text. Open the conversation again and write the reply there.", "Dieses Formular wurde schon mit einem anderen Text gesendet. Öffnen Sie das Gespräch erneut und schreiben Sie die Antwort dort."),
    ("why_window", "more than 24 hours since the patient's last message; send the reopen template", "über 24 Stunden seit der letzten Nachricht der Person; erst die Wiedereröffnungs-Vorlage senden"),
    ("why_unreachable", "this number cannot get WhatsApp messages (no WhatsApp, or an old app)", "diese Nummer kann keine WhatsApp-Nachrichten empfangen (kein WhatsApp oder eine alte App)"),
    ("why_stopped", "the person has stopped messages of this kind", "die Person hat Nachrichten dieser Art abbestellt"),
    ("why_meta_held", "WhatsApp held it back (too many business messages to this person)", "WhatsApp hat sie zurückgehalten (zu viele Geschäftsnachrichten an diese Person)"),
    ("why_meta_trouble", "WhatsApp had a problem and it was given up after retries", "WhatsApp hatte ein Problem; nach mehreren Versuchen aufgegeben"),
    ("why_token", "the WhatsApp access token has expired; IT must renew it", "das WhatsApp-Zugangstoken ist abgelaufen; die IT muss es erneuern"),
    ("why_account", "the clinic's WhatsApp account is restricted; IT must check it", "das WhatsApp-Konto der Praxis ist eingeschränkt; die IT muss es prüfen"),
    ("why_template", "the message template is not approved; IT must check it", "die Nachrichtenvorlage ist nicht freigegeben; die IT muss sie prüfen"),
    ("why_no_number", "no usable WhatsApp number for this person", "keine nutzbare WhatsApp-Nummer für diese Person"),
    ("why_code", "WhatsApp error", "WhatsApp-Fehler"),
    ("why_unknown", "WhatsApp refused it", "WhatsApp hat sie abgelehnt"),
    ("media_photo", "Photo sent by the patient", "Foto der Patientin / des Patienten"),
    ("media_download", "Download", "Herunterladen"),
    ("media_pending", "Attachment: not fetched yet", "Anhang: noch nicht abgeholt"),
    ("media_dry_run", "Attachment: not fetched (WhatsApp is in dry-run)", "Anhang: nicht abgeholt (WhatsApp im Probebetrieb)"),
    ("media_refused", "Attachment: not kept (too large, or WhatsApp refused it)", "Anhang: nicht gespeichert (zu groß, oder WhatsApp hat ihn verweigert)"),
    ("media_purged", "Attachment: deleted at the end of its retention", "Anhang: nach Ablauf der Aufbewahrungsfrist gelöscht"),
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
