//! The words the reminder workflow uses: the visit's date and time as the
//! template's parameters, and the short replies after a tap. Only the date
//! and time of the visit ever go out (minimal payload): no provider, no
//! service, no name.

use super::reminder::Reply;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// The visit's local date and time, written for `lang`.
pub fn when(start: Timestamp, tz: &TimeZone, lang: &str) -> (String, String) {
    let local = start.to_zoned(tz.clone());
    match lang {
        "de" => (
            local.strftime("%d.%m.%Y").to_string(),
            local.strftime("%H:%M").to_string(),
        ),
        _ => (
            local.strftime("%a, %b %-d").to_string(),
            local.strftime("%-I:%M %p").to_string(),
        ),
    }
}

pub fn reply(reply: Reply, lang: &str) -> &'static str {
    match (reply, lang) {
        (Reply::Confirmed, "de") => "Danke, Ihr Termin ist bestätigt.",
        (Reply::Confirmed, _) => "Thank you, your appointment is confirmed.",
        (Reply::Cancelled, "de") => "Ihr Termin ist abgesagt; die Praxis ist informiert.",
        (Reply::Cancelled, _) => "Your appointment is cancelled; the practice has been told.",
        (Reply::Closed, "de") => {
            "Dieser Termin kann hier nicht mehr geändert werden. Bitte rufen Sie die Praxis an."
        }
        (Reply::Closed, _) => {
            "This appointment can no longer be changed here. Please call the practice."
        }
        (Reply::RescheduleRequested, "de") => {
            "Ihr Wunschtermin ist an die Praxis übermittelt; Sie erhalten eine Bestätigung."
        }
        (Reply::RescheduleRequested, _) => {
            "Your request has been sent to the practice; you'll get a confirmation."
        }
        (Reply::NoSlots, "de") => {
            "Zurzeit ist kein freier Termin verfügbar. Die Praxis meldet sich bei Ihnen."
        }
        (Reply::NoSlots, _) => {
            "There is no free time to offer right now. The practice will contact you."
        }
        (Reply::SlotGone, "de") => {
            "Dieser Termin ist nicht mehr frei. Bitte wählen Sie erneut oder rufen Sie die Praxis an."
        }
        (Reply::SlotGone, _) => {
            "That time is no longer free. Please choose again or call the practice."
        }
    }
}

/// The list of open slots: body, button label (at most 20 characters).
pub fn slot_list(lang: &str) -> (&'static str, &'static str) {
    match lang {
        "de" => ("Bitte wählen Sie einen neuen Termin:", "Termine"),
        _ => ("Please choose a new time:", "Times"),
    }
}

/// A slot's row title (at most 24 characters): local date and time.
pub fn slot_title(start: Timestamp, tz: &TimeZone, lang: &str) -> String {
    let (date, time) = when(start, tz, lang);
    format!("{date} {time}")
}

pub fn consent(kw: super::consent::Keyword, lang: &str) -> &'static str {
    use super::consent::Keyword;
    match (kw, lang) {
        (Keyword::OptOut, "de") => {
            "Sie erhalten keine Nachrichten der Praxis mehr. Mit START melden Sie sich wieder an."
        }
        (Keyword::OptOut, _) => {
            "You will get no more messages from the practice. Reply START to get them again."
        }
        (Keyword::OptIn, "de") => "Sie erhalten wieder Terminerinnerungen der Praxis.",
        (Keyword::OptIn, _) => "You will get appointment reminders from the practice again.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_visit_time_is_local_and_in_the_patients_language() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let t: Timestamp = "2026-03-31T08:00:00Z".parse().unwrap();
        assert_eq!(when(t, &tz, "de"), ("31.03.2026".into(), "10:00".into()));
        assert_eq!(
            when(t, &tz, "en"),
            ("Tue, Mar 31".into(), "10:00 AM".into())
        );
        // The longest forms still fit a list row's title.
        let t: Timestamp = "2026-09-30T20:59:00Z".parse().unwrap();
        for lang in ["de", "en"] {
            assert!(slot_title(t, &tz, lang).chars().count() <= 24);
        }
    }
}
