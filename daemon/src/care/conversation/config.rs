//! The `[conversations]` config section. Off unless enabled: once on, the
//! bot answers patients' free text (a greeting with the menu, anything
//! else with a hand-off to staff), which a clinic should decide to do.

use crate::config::{parse_duration, ConfigError};
use jiff::SignedDuration;
use serde::Deserialize;

type Invalid<'a> = dyn Fn(&'static str, &str, &str, &'static str) -> ConfigError + 'a;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationsFile {
    pub enabled: Option<bool>,
    /// A menu nobody answers is reset after this long (`"30m"`).
    pub idle_reset: Option<String>,
    /// Messages in a conversation's log are purged this long after they
    /// came or went (`"90d"`).
    pub retention: Option<String>,
    /// The template that asks the patient to reply when staff write
    /// outside the 24-hour window.
    pub reopen_template: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationsConfig {
    pub enabled: bool,
    pub idle_reset: SignedDuration,
    pub retention: SignedDuration,
    pub reopen_template: String,
}

impl Default for ConversationsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            idle_reset: SignedDuration::from_mins(30),
            retention: SignedDuration::from_hours(90 * 24),
            reopen_template: "conversation_reopen".to_owned(),
        }
    }
}

fn duration(
    key: &'static str,
    value: Option<&str>,
    default: SignedDuration,
    (min, max): (SignedDuration, SignedDuration),
    invalid: &Invalid<'_>,
) -> Result<SignedDuration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    match parse_duration(v).and_then(|d| SignedDuration::try_from(d).ok()) {
        Some(d) if d >= min && d <= max => Ok(d),
        _ => Err(invalid(
            key,
            v,
            "not a duration in the allowed range",
            "see docs/configuration.md, [conversations]",
        )),
    }
}

pub fn validate(
    file: &ConversationsFile,
    invalid: &Invalid<'_>,
) -> Result<ConversationsConfig, ConfigError> {
    let d = ConversationsConfig::default();
    let idle_reset = duration(
        "conversations.idle_reset",
        file.idle_reset.as_deref(),
        d.idle_reset,
        (SignedDuration::from_mins(1), SignedDuration::from_hours(24)),
        invalid,
    )?;
    let retention = duration(
        "conversations.retention",
        file.retention.as_deref(),
        d.retention,
        (
            SignedDuration::from_hours(24),
            SignedDuration::from_hours(3650 * 24),
        ),
        invalid,
    )?;
    let reopen_template = file.reopen_template.clone().unwrap_or(d.reopen_template);
    let name_ok = !reopen_template.is_empty()
        && reopen_template
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(invalid(
            "conversations.reopen_template",
            &reopen_template,
            "a template name is lowercase letters, digits and underscores",
            "give the name of an approved utility template without parameters",
        ));
    }
    Ok(ConversationsConfig {
        enabled: file.enabled.unwrap_or(d.enabled),
        idle_reset,
        retention,
        reopen_template,
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
    fn defaults_ranges_and_names() {
        let c = validate(&ConversationsFile::default(), &invalid).unwrap();
        assert_eq!(c, ConversationsConfig::default());
        let f: ConversationsFile =
            toml::from_str("enabled = true\nidle_reset = \"10m\"\nretention = \"30d\"\n").unwrap();
        let c = validate(&f, &invalid).unwrap();
        assert!(c.enabled);
        assert_eq!(c.idle_reset, SignedDuration::from_mins(10));
        assert_eq!(c.retention, SignedDuration::from_hours(30 * 24));
        for (text, key) in [
            ("idle_reset = \"5s\"", "conversations.idle_reset"),
            ("retention = \"1h\"", "conversations.retention"),
            (
                "reopen_template = \"Re-Open\"",
                "conversations.reopen_template",
            ),
        ] {
            let f: ConversationsFile = toml::from_str(text).unwrap();
            let e = validate(&f, &invalid).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        assert!(toml::from_str::<ConversationsFile>("idle = \"1m\"").is_err());
    }
}
