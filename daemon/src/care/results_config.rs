//! The `[results]` config section: how a patient proves who they are before
//! a result document goes to them, how often they may get it wrong, and how
//! long an uncollected result is kept.

use crate::config::{parse_duration, ConfigError};
use jiff::SignedDuration;
use serde::Deserialize;

type Invalid<'a> = dyn Fn(&'static str, &str, &str, &'static str) -> ConfigError + 'a;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsFile {
    pub enabled: Option<bool>,
    /// `"dob"` (the default) or `"code"`.
    pub proof: Option<String>,
    /// Wrong answers before the result locks (default 3).
    pub max_attempts: Option<u8>,
    /// How long a result waits to be collected before its PDF is purged
    /// (default `"30d"`).
    pub retention: Option<String>,
    /// The notice template (no parameters, one quick reply).
    pub template: Option<String>,
    /// `"dmy"` or `"mdy"`: how `3/2/1901` reads. Default: `mdy` when
    /// `service.time_zone` is a US zone, else `dmy`.
    pub date_order: Option<String>,
}

/// What the patient proves before the document goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Their date of birth, as the PMS has it (PID-7).
    Dob,
    /// A one-time code the PMS sent with the result (an `OBX` with the
    /// identifier `ZRC`, see `docs/hl7.md`).
    Code,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsConfig {
    pub enabled: bool,
    pub proof: Proof,
    pub max_attempts: u8,
    pub retention: SignedDuration,
    pub template: String,
    /// Whether `3/2/1901` is 2 March (month first, US).
    pub month_first: bool,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            proof: Proof::Dob,
            max_attempts: 3,
            retention: SignedDuration::from_hours(30 * 24),
            template: "document_ready".to_owned(),
            month_first: false,
        }
    }
}

/// IANA zones of the United States (and `US/*`): there dates are written
/// month first.
fn is_us_zone(name: &str) -> bool {
    const US: &[&str] = &[
        "America/New_York",
        "America/Chicago",
        "America/Denver",
        "America/Los_Angeles",
        "America/Phoenix",
        "America/Anchorage",
        "America/Detroit",
        "America/Boise",
        "America/Juneau",
        "America/Sitka",
        "America/Nome",
        "America/Yakutat",
        "America/Metlakatla",
        "America/Adak",
        "America/Menominee",
        "America/Puerto_Rico",
        "Pacific/Honolulu",
        "EST5EDT",
        "CST6CDT",
        "MST7MDT",
        "PST8PDT",
    ];
    US.contains(&name)
        || name.starts_with("US/")
        || name.starts_with("America/Indiana/")
        || name.starts_with("America/Kentucky/")
        || name.starts_with("America/North_Dakota/")
}

pub fn validate(
    file: &ResultsFile,
    time_zone_name: &str,
    invalid: &Invalid<'_>,
) -> Result<ResultsConfig, ConfigError> {
    let d = ResultsConfig::default();
    let proof = match file.proof.as_deref().map(str::trim) {
        None | Some("dob") => Proof::Dob,
        Some("code") => Proof::Code,
        Some(other) => {
            return Err(invalid(
                "results.proof",
                other,
                "not a kind of proof",
                "write \"dob\" (date of birth) or \"code\" (a one-time code from the PMS)",
            ))
        }
    };
    let max_attempts = file.max_attempts.unwrap_or(d.max_attempts);
    if !(1..=10).contains(&max_attempts) {
        return Err(invalid(
            "results.max_attempts",
            &max_attempts.to_string(),
            "not between 1 and 10",
            "allow a few wrong answers, e.g. 3",
        ));
    }
    let retention = match file.retention.as_deref() {
        None => d.retention,
        Some(v) => match parse_duration(v).and_then(|d| SignedDuration::try_from(d).ok()) {
            Some(r)
                if r >= SignedDuration::from_hours(1)
                    && r <= SignedDuration::from_hours(24 * 366) =>
            {
                r
            }
            _ => {
                return Err(invalid(
                    "results.retention",
                    v,
                    "not a duration between 1 hour and 366 days",
                    "write it like \"30d\"",
                ))
            }
        },
    };
    let template = file.template.clone().unwrap_or(d.template);
    let name_ok = !template.is_empty()
        && template
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(invalid(
            "results.template",
            &template,
            "a template name is lowercase letters, digits and underscores",
            "give the name of the approved utility template (shipped: document_ready)",
        ));
    }
    let month_first = match file.date_order.as_deref().map(str::trim) {
        None => is_us_zone(time_zone_name),
        Some("dmy") => false,
        Some("mdy") => true,
        Some(other) => {
            return Err(invalid(
                "results.date_order",
                other,
                "not a date order",
                "write \"dmy\" (3/2/1901 is 3 February) or \"mdy\" (2 March)",
            ))
        }
    };
    Ok(ResultsConfig {
        enabled: file.enabled.unwrap_or(true),
        proof,
        max_attempts,
        retention,
        template,
        month_first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str, zone: &str) -> Result<ResultsConfig, String> {
        let file: ResultsFile = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let invalid = |key: &'static str, value: &str, reason: &str, fix: &'static str| {
            ConfigError::Invalid {
                path: "x.toml".into(),
                key,
                value: value.to_owned(),
                reason: reason.to_owned(),
                fix,
            }
        };
        validate(&file, zone, &invalid).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_the_date_order_follow_the_zone() {
        let c = check("", "Europe/Berlin").unwrap();
        assert_eq!(c, ResultsConfig::default());
        assert!(check("", "America/Chicago").unwrap().month_first);
        assert!(check("", "America/Indiana/Knox").unwrap().month_first);
        assert!(!check("", "America/Mexico_City").unwrap().month_first);
        assert!(
            !check("date_order = \"dmy\"", "US/Eastern")
                .unwrap()
                .month_first
        );
        let c = check(
            "proof = \"code\"\nmax_attempts = 5\nretention = \"14d\"",
            "UTC",
        )
        .unwrap();
        assert_eq!(c.proof, Proof::Code);
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.retention, SignedDuration::from_hours(14 * 24));
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        for (text, key) in [
            ("proof = \"pin\"", "results.proof"),
            ("max_attempts = 0", "results.max_attempts"),
            ("retention = \"2y\"", "results.retention"),
            ("retention = \"soon\"", "results.retention"),
            ("template = \"Doc Ready\"", "results.template"),
            ("date_order = \"ymd\"", "results.date_order"),
        ] {
            let e = check(text, "UTC").unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(check("bogus = 1", "UTC").is_err());
    }
}
