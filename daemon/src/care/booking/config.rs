//! The `[booking]` config section: how far ahead the Book menu entry looks
//! for open slots, how long a chosen slot is held for the patient while the
//! PMS decides, and the neutral labels the patient sees for services and
//! providers (a service's name is a forbidden field of the minimal-payload
//! policy, so it never goes out; the clinic writes a label that says
//! enough to choose, like "Adults" or "Room 2").

use crate::config::{parse_duration, ConfigError};
use jiff::SignedDuration;
use serde::Deserialize;
use std::collections::BTreeMap;

type Invalid<'a> = dyn Fn(&'static str, &str, &str, &'static str) -> ConfigError + 'a;

/// A list row's title: at most 24 characters (Meta's limit).
pub const MAX_LABEL: usize = 24;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookingFile {
    /// Off: "Book" hands the conversation to staff, as before.
    pub enabled: Option<bool>,
    /// Open slots up to this many days ahead are offered.
    pub days: Option<u32>,
    /// How long a slot the patient said Yes to is kept from others while
    /// the PMS decides (`"15m"`).
    pub hold: Option<String>,
    /// Service code or provider id (as in `PUT /v1/slots`) → the label the
    /// patient sees. Unlabelled ones are shown as "Option 1", "Option 2", ….
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingConfig {
    pub enabled: bool,
    pub days: u32,
    pub hold: SignedDuration,
    pub labels: BTreeMap<String, String>,
}

impl Default for BookingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            days: 14,
            hold: SignedDuration::from_mins(15),
            labels: BTreeMap::new(),
        }
    }
}

pub fn validate(file: &BookingFile, invalid: &Invalid<'_>) -> Result<BookingConfig, ConfigError> {
    let d = BookingConfig::default();
    let days = file.days.unwrap_or(d.days);
    if !(1..=90).contains(&days) {
        return Err(invalid(
            "booking.days",
            &days.to_string(),
            "outside 1-90",
            "give the number of days ahead to offer open slots for, e.g. 14",
        ));
    }
    let hold = match file.hold.as_deref() {
        None => d.hold,
        Some(v) => match parse_duration(v).and_then(|x| SignedDuration::try_from(x).ok()) {
            Some(h) if h >= SignedDuration::from_mins(1) && h <= SignedDuration::from_hours(24) => {
                h
            }
            _ => {
                return Err(invalid(
                    "booking.hold",
                    v,
                    "not a duration from 1 minute to 24 hours",
                    "write it like \"15m\" (docs/configuration.md, [booking])",
                ))
            }
        },
    };
    let labels = file.labels.clone().unwrap_or_default();
    for (code, label) in &labels {
        let n = label.trim().chars().count();
        if n == 0 || n > MAX_LABEL {
            return Err(invalid(
                "booking.labels",
                code,
                "a label is 1-24 characters (a list row's title)",
                "shorten the label; it must not name a procedure (minimal payload)",
            ));
        }
    }
    Ok(BookingConfig {
        enabled: file.enabled.unwrap_or(d.enabled),
        days,
        hold,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(key: &'static str, value: &str, reason: &str, fix: &'static str) -> ConfigError {
        ConfigError::Invalid {
            path: "x.toml".into(),
            key,
            value: value.to_owned(),
            reason: reason.to_owned(),
            fix,
        }
    }

    #[test]
    fn defaults_ranges_and_labels() {
        let c = validate(&BookingFile::default(), &invalid).unwrap();
        assert_eq!(c, BookingConfig::default());
        assert_eq!((c.days, c.hold), (14, SignedDuration::from_mins(15)));
        let f: BookingFile =
            toml::from_str("days = 7\nhold = \"5m\"\n[labels]\nSVC1 = \"Adults\"\n").unwrap();
        let c = validate(&f, &invalid).unwrap();
        assert_eq!((c.days, c.hold), (7, SignedDuration::from_mins(5)));
        assert_eq!(c.labels["SVC1"], "Adults");
        for (text, key) in [
            ("days = 0", "booking.days"),
            ("days = 91", "booking.days"),
            ("hold = \"10s\"", "booking.hold"),
            ("hold = \"2d\"", "booking.hold"),
            (
                "[labels]\nX = \"a label far longer than a row\"",
                "booking.labels",
            ),
            ("[labels]\nX = \" \"", "booking.labels"),
        ] {
            let f: BookingFile = toml::from_str(text).unwrap();
            let e = validate(&f, &invalid).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        assert!(toml::from_str::<BookingFile>("holds = \"1m\"").is_err());
    }
}
