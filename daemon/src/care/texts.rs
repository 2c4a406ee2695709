//! The words the reminder workflow uses: the visit's date and time as the
//! template's parameters, and the short replies after a tap, by key into
//! the language files (`care::messages`). Only the date and time of the
//! visit ever go out (minimal payload): no provider, no service, no name.

use super::messages::Catalog;
use super::reminder::Reply;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// The visit's local date and time, written for `lang`.
pub fn when(c: &Catalog, start: Timestamp, tz: &TimeZone, lang: &str) -> (String, String) {
    c.when(start, tz, lang)
}

/// The key of the reply's text.
pub fn reply(reply: Reply) -> &'static str {
    match reply {
        Reply::Confirmed => "reply.confirmed",
        Reply::Cancelled => "reply.cancelled",
        Reply::Closed => "reply.closed",
        Reply::RescheduleRequested => "reply.reschedule_requested",
        Reply::NoSlots => "reply.no_slots",
        Reply::SlotGone => "reply.slot_gone",
    }
}

/// The key of the confirmation of a consent keyword.
pub fn consent(kw: super::consent::Keyword) -> &'static str {
    use super::consent::Keyword;
    match kw {
        Keyword::OptOut => "consent.opted_out",
        Keyword::OptIn => "consent.opted_in",
    }
}

/// The list of open slots: body, button label (at most 20 characters).
pub fn slot_list<'a>(c: &'a Catalog, lang: &str) -> (&'a str, &'a str) {
    (c.text(lang, "slots.body"), c.text(lang, "slots.button"))
}

/// A slot's row title (at most 24 characters): local date and time.
pub fn slot_title(c: &Catalog, start: Timestamp, tz: &TimeZone, lang: &str) -> String {
    let (date, time) = when(c, start, tz, lang);
    format!("{date} {time}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_visit_time_is_local_and_in_the_patients_language() {
        let c = Catalog::shipped();
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let t: Timestamp = "2026-03-31T08:00:00Z".parse().unwrap();
        assert_eq!(
            when(&c, t, &tz, "de"),
            ("31.03.2026".into(), "10:00".into())
        );
        assert_eq!(
            when(&c, t, &tz, "en"),
            ("Tue, Mar 31".into(), "10:00 AM".into())
        );
        // The longest forms still fit a list row's title.
        let t: Timestamp = "2026-09-30T20:59:00Z".parse().unwrap();
        for lang in ["de", "en", "es", "fr"] {
            assert!(slot_title(&c, t, &tz, lang).chars().count() <= 24);
        }
        assert_eq!(
            c.text("es", reply(Reply::Confirmed)),
            "Gracias, su cita está confirmada."
        );
    }
}
