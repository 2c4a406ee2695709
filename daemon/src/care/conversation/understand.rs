//! What a patient's text means to the bot: a greeting (the menu, in the
//! language it was written in), a menu choice by number or keyword, or a
//! request for a person. Pure; the words come from the message files
//! (`[keywords] greeting/menu/book/appointments/results/staff`) of every
//! language the clinic has, matched like the consent keywords (case,
//! accents and surrounding punctuation ignored). Opt-out / opt-in keywords
//! and language names are looked at before this (`care::consent`).

use super::{Choice, Intent};
use crate::care::consent::normalise;
use crate::care::messages::Catalog;

/// Longer than this is a letter, not a keyword (still: to staff).
const MAX_KEYWORD: usize = 64;
/// Longer than this is not searched for staff words either.
const MAX_SEARCHED: usize = 1024;

/// The menu's entries and the keys of their words.
const CHOICES: [(&str, Choice); 4] = [
    ("keywords.book", Choice::Book),
    ("keywords.appointments", Choice::Appointments),
    ("keywords.results", Choice::Results),
    ("keywords.staff", Choice::Staff),
];

/// The meaning of `text`, and for a greeting the language it is a
/// greeting in (the patient's own when theirs has the word).
pub fn understand(text: &str, catalog: &Catalog, theirs: &str) -> (Intent, Option<String>) {
    if text.len() > MAX_SEARCHED {
        return (Intent::Other, None);
    }
    let words = tokens(text);
    if words.is_empty() {
        return (Intent::Other, None);
    }
    if text.len() <= MAX_KEYWORD {
        match words.as_str() {
            "1" => return (Intent::Choice(Choice::Book), None),
            "2" => return (Intent::Choice(Choice::Appointments), None),
            "3" => return (Intent::Choice(Choice::Results), None),
            "4" => return (Intent::Choice(Choice::Staff), None),
            _ => {}
        }
        for key in ["keywords.greeting", "keywords.menu"] {
            if let Some(lang) = language_of(catalog, key, &words, theirs) {
                return (Intent::Greeting, Some(lang.to_owned()));
            }
        }
        for (key, choice) in CHOICES {
            if language_of(catalog, key, &words, theirs).is_some() {
                return (Intent::Choice(choice), None);
            }
        }
    }
    // "I need to talk to someone": a staff word anywhere is a request for
    // a person (anything not understood goes to staff all the same; this
    // only says why).
    let padded = format!(" {words} ");
    let asks = catalog.entries("keywords.staff").any(|(_, list)| {
        list.split(',')
            .map(tokens)
            .any(|w| !w.is_empty() && padded.contains(&format!(" {w} ")))
    });
    if asks {
        return (Intent::Choice(Choice::Staff), None);
    }
    (Intent::Other, None)
}

/// Lowercase words without accents or punctuation, one space apart.
fn tokens(text: &str) -> String {
    normalise(text)
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The language whose `key` list has `words` (the patient's first).
fn language_of<'a>(
    catalog: &'a Catalog,
    key: &'a str,
    words: &str,
    theirs: &str,
) -> Option<&'a str> {
    let has = |list: &str| list.split(',').any(|w| tokens(w) == words);
    let mut found = None;
    for (lang, list) in catalog.entries(key) {
        if has(list) {
            if lang == theirs {
                return Some(lang);
            }
            found = found.or(Some(lang));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(text: &str) -> (Intent, Option<String>) {
        understand(text, &Catalog::shipped(), "en")
    }

    #[test]
    fn greetings_show_the_menu_in_their_language() {
        for (text, lang) in [
            ("hi", "en"),
            ("Hello!", "en"),
            ("hola", "es"),
            ("¡Hola!", "es"),
            ("Hallo", "de"),
            ("bonjour", "fr"),
            ("MENU", "en"),
            ("Guten Tag", "de"),
            ("buenos días", "es"),
        ] {
            assert_eq!(u(text), (Intent::Greeting, Some(lang.to_owned())), "{text}");
        }
        // "menu" is in several files: the patient's own language wins.
        assert_eq!(
            understand("menú", &Catalog::shipped(), "es").1.as_deref(),
            Some("es")
        );
    }

    #[test]
    fn numbers_and_keywords_choose_from_the_menu() {
        for (text, choice) in [
            ("1", Choice::Book),
            (" 2. ", Choice::Appointments),
            ("3", Choice::Results),
            ("4", Choice::Staff),
            ("Book", Choice::Book),
            ("cita", Choice::Book),
            ("Termin", Choice::Book),
            ("RDV", Choice::Book),
            ("results", Choice::Results),
            ("staff", Choice::Staff),
            ("Persona", Choice::Staff),
            ("Mitarbeiter", Choice::Staff),
            ("humain", Choice::Staff),
            ("I need to talk to someone", Choice::Staff),
            ("Can I speak to a HUMAN please?", Choice::Staff),
        ] {
            assert_eq!(u(text).0, Intent::Choice(choice), "{text}");
        }
    }

    #[test]
    fn anything_else_is_not_understood() {
        for text in [
            "",
            "!!!",
            "5",
            "hi, my prescription ran out",
            "booking?? what",
            &"x".repeat(2000),
        ] {
            assert_eq!(u(text), (Intent::Other, None), "{text}");
        }
    }
}
