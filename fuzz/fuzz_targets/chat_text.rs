//! What a patient types into the chat, as the bot and the workflows read it:
//! the conversation's understanding (greeting, menu choice, a person), the
//! opt-out / opt-in keywords, a language's name, a date of birth (day or
//! month first) and a one-time code. Any text, however long or strange,
//! gets an answer from each without a panic, and the answers hold their
//! own promises: a date read back is a real date, a normalised code is only
//! digits and capitals, a code always matches itself.
#![no_main]

use clinic_relay::care::consent;
use clinic_relay::care::conversation::understand::understand;
use clinic_relay::care::messages::Catalog;
use clinic_relay::care::proof;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(Catalog::shipped)
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let catalog = catalog();
    for theirs in ["en", "de", "es", "fr", "xx"] {
        let _ = understand(text, catalog, theirs);
    }
    let _ = consent::keyword_in(text, catalog);
    let _ = consent::keyword(text);
    let _ = catalog.named(text);
    for month_first in [false, true] {
        if let Some(d) = proof::parse_dob(text, month_first) {
            // A real calendar date, within what a birth date can be.
            assert!((1850..=2199).contains(&d.year()), "{d}");
        }
    }
    let code = proof::normalise_code(text);
    assert!(
        code.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
        "{code:?}"
    );
    if !code.is_empty() {
        assert!(proof::code_matches(text, text), "a code does not match itself");
    }
});
