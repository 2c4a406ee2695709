//! The `[reminders]` config section: when appointment reminders go out,
//! which template carries them, and the hours they may arrive in.

use crate::config::{parse_duration, ConfigError};
use jiff::civil::Time;
use jiff::SignedDuration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

type Invalid<'a> = dyn Fn(&'static str, &str, &str, &'static str) -> ConfigError + 'a;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemindersFile {
    pub enabled: Option<bool>,
    /// Before the visit, e.g. `"72h"`; whole days count as calendar days
    /// in the clinic's time zone.
    pub first: Option<String>,
    /// Before the visit, only when the patient has not confirmed; `""`: none.
    pub second: Option<String>,
    /// `"08:00-21:00"`: local times a reminder may arrive between.
    pub allowed_hours: Option<String>,
    pub template: Option<String>,
    /// Languages the template exists in; the patient's language (PID-15)
    /// picks one, anything else gets `default_language`.
    pub languages: Option<Vec<String>>,
    pub default_language: Option<String>,
    /// A directory of `<lang>.toml` message files that add languages or
    /// override the shipped texts (`care::messages`).
    pub messages_dir: Option<String>,
    /// The account's template language code per language, where it is not
    /// the two letters (e.g. `es = "es_MX"`).
    pub template_codes: Option<BTreeMap<String, String>>,
    /// After a fulfilled visit (arrived, checked in, fulfilled), e.g.
    /// `"3h"`: the follow-up template. Absent or `""`: none (the default).
    pub follow_up: Option<String>,
    pub follow_up_template: Option<String>,
    /// How many days ahead a "Reschedule" tap offers open slots; 0: the
    /// template has no Reschedule button (two quick replies).
    pub reschedule_days: Option<u32>,
    /// For a PMS that reports attendance (arrived, checked in, fulfilled)
    /// but not no-shows: a booked visit with none of them this long after
    /// its start counts as a no-show in the KPIs. Absent or `""`: only the
    /// PMS's no-show (S26, `noshow`) counts (the default).
    pub unattended_after: Option<String>,
}

/// One reminder: how long before the visit, and whether a confirmation
/// makes it unnecessary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    pub before: SignedDuration,
    pub only_unconfirmed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemindersConfig {
    pub enabled: bool,
    /// Index = the offset's number in timers and state (at most 8).
    pub offsets: Vec<Offset>,
    pub allowed_from: Time,
    pub allowed_until: Time,
    pub template: String,
    pub languages: Vec<String>,
    pub default_language: String,
    /// The texts per language, the default language as their fallback.
    pub messages: Arc<super::messages::Catalog>,
    pub template_codes: BTreeMap<String, String>,
    /// The post-visit follow-up's delay; `None`: off.
    pub follow_up: Option<SignedDuration>,
    pub follow_up_template: String,
    /// 0: no Reschedule button.
    pub reschedule_days: u32,
    /// See [`RemindersFile::unattended_after`]; `None`: off.
    pub unattended_after: Option<SignedDuration>,
}

impl Default for RemindersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            offsets: vec![
                Offset {
                    before: SignedDuration::from_hours(72),
                    only_unconfirmed: false,
                },
                Offset {
                    before: SignedDuration::from_hours(24),
                    only_unconfirmed: true,
                },
            ],
            allowed_from: Time::constant(8, 0, 0, 0),
            allowed_until: Time::constant(21, 0, 0, 0),
            template: "appointment_reminder".to_owned(),
            languages: ["de", "en", "es", "fr"].map(str::to_owned).to_vec(),
            default_language: "en".to_owned(),
            messages: Arc::new(super::messages::Catalog::shipped()),
            template_codes: BTreeMap::new(),
            follow_up: None,
            follow_up_template: "visit_follow_up".to_owned(),
            reschedule_days: 14,
            unattended_after: None,
        }
    }
}

fn offset(
    key: &'static str,
    value: Option<&str>,
    default: Option<SignedDuration>,
    invalid: &Invalid<'_>,
) -> Result<Option<SignedDuration>, ConfigError> {
    match value.map(str::trim) {
        None => Ok(default),
        Some("") => Ok(None),
        Some(v) => match parse_duration(v).and_then(|d| SignedDuration::try_from(d).ok()) {
            Some(d)
                if d >= SignedDuration::from_mins(1)
                    && d <= SignedDuration::from_hours(24 * 60) =>
            {
                Ok(Some(d))
            }
            _ => Err(invalid(
                key,
                v,
                "not a duration between 1 minute and 60 days",
                "write it like \"72h\" or \"24h\"",
            )),
        },
    }
}

fn hours(value: &str, invalid: &Invalid<'_>) -> Result<(Time, Time), ConfigError> {
    let bad = || {
        invalid(
            "reminders.allowed_hours",
            value,
            "not two local times, the first before the second",
            "write it like \"08:00-21:00\"",
        )
    };
    let (a, b) = value.split_once('-').ok_or_else(bad)?;
    let from: Time = a.trim().parse().map_err(|_| bad())?;
    let until: Time = b.trim().parse().map_err(|_| bad())?;
    if from >= until {
        return Err(bad());
    }
    Ok((from, until))
}

pub fn validate(
    file: &RemindersFile,
    resolve: &dyn Fn(&str) -> PathBuf,
    invalid: &Invalid<'_>,
) -> Result<RemindersConfig, ConfigError> {
    let d = RemindersConfig::default();
    let mut offsets = Vec::new();
    if let Some(before) = offset(
        "reminders.first",
        file.first.as_deref(),
        Some(SignedDuration::from_hours(72)),
        invalid,
    )? {
        offsets.push(Offset {
            before,
            only_unconfirmed: false,
        });
    }
    if let Some(before) = offset(
        "reminders.second",
        file.second.as_deref(),
        Some(SignedDuration::from_hours(24)),
        invalid,
    )? {
        if offsets.first().is_some_and(|o| o.before <= before) {
            return Err(invalid(
                "reminders.second",
                file.second.as_deref().unwrap_or_default(),
                "the second reminder must come closer to the visit than the first",
                "make reminders.second shorter than reminders.first",
            ));
        }
        offsets.push(Offset {
            before,
            only_unconfirmed: true,
        });
    }
    let (allowed_from, allowed_until) = match file.allowed_hours.as_deref() {
        None => (d.allowed_from, d.allowed_until),
        Some(v) => hours(v, invalid)?,
    };
    let template = file.template.clone().unwrap_or(d.template);
    let follow_up_template = file
        .follow_up_template
        .clone()
        .unwrap_or(d.follow_up_template);
    for (key, name) in [
        ("reminders.template", &template),
        ("reminders.follow_up_template", &follow_up_template),
    ] {
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            return Err(invalid(
                key,
                name,
                "a template name is lowercase letters, digits and underscores",
                "give the name of the approved utility template",
            ));
        }
    }
    let follow_up = offset(
        "reminders.follow_up",
        file.follow_up.as_deref(),
        None,
        invalid,
    )?;
    let unattended_after = offset(
        "reminders.unattended_after",
        file.unattended_after.as_deref(),
        None,
        invalid,
    )?;
    let languages = file.languages.clone().unwrap_or(d.languages);
    let default_language = file.default_language.clone().unwrap_or(d.default_language);
    if !languages.contains(&default_language) {
        return Err(invalid(
            "reminders.default_language",
            &default_language,
            "not one of reminders.languages",
            "add it to reminders.languages or choose one of them",
        ));
    }
    let catalog = match file.messages_dir.as_deref() {
        None | Some("") => super::messages::Catalog::shipped(),
        Some(dir) => super::messages::Catalog::load_dir(&resolve(dir)).map_err(|e| {
            invalid(
                "reminders.messages_dir",
                dir,
                &e.to_string(),
                "a directory of <lang>.toml files with the keys of config/messages/en.toml",
            )
        })?,
    };
    if !catalog.has(&default_language) {
        return Err(invalid(
            "reminders.default_language",
            &default_language,
            "no message file for it",
            "add <lang>.toml to reminders.messages_dir or choose en, de, es or fr",
        ));
    }
    let template_codes = file.template_codes.clone().unwrap_or_default();
    for code in template_codes.values() {
        let ok = !code.is_empty()
            && code.len() <= 16
            && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(invalid(
                "reminders.template_codes",
                code,
                "not a template language code",
                "write it like \"es_MX\" or \"pt_BR\"",
            ));
        }
    }
    let reschedule_days = file.reschedule_days.unwrap_or(d.reschedule_days);
    if reschedule_days > 90 {
        return Err(invalid(
            "reminders.reschedule_days",
            &reschedule_days.to_string(),
            "more than 90 days",
            "offer slots at most 90 days ahead, or 0 for no Reschedule button",
        ));
    }
    Ok(RemindersConfig {
        reschedule_days,
        unattended_after,
        messages: Arc::new(catalog.with_default(&default_language)),
        template_codes,
        follow_up,
        follow_up_template,
        enabled: file.enabled.unwrap_or(true),
        offsets,
        allowed_from,
        allowed_until,
        template,
        languages,
        default_language,
    })
}

impl RemindersConfig {
    /// The template language for a patient's language (PID-15 may say
    /// `de`, `DE`, `de-DE` or `ger`): its first two letters if configured,
    /// else the default.
    pub fn language_for(&self, patient_language: Option<&str>) -> &str {
        let wanted = patient_language.map(super::messages::normalize);
        wanted
            .and_then(|w| self.languages.iter().find(|l| **l == w))
            .unwrap_or(&self.default_language)
    }

    /// The account's language code of the template in `lang`.
    pub fn template_code<'a>(&'a self, lang: &'a str) -> &'a str {
        self.template_codes.get(lang).map_or(lang, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn invalid(key: &'static str, value: &str, reason: &str, fix: &'static str) -> ConfigError {
        ConfigError::Invalid {
            path: PathBuf::from("t.toml"),
            key,
            value: value.to_owned(),
            reason: reason.to_owned(),
            fix,
        }
    }

    fn path(v: &str) -> PathBuf {
        PathBuf::from(v)
    }

    #[test]
    fn defaults_are_72h_and_24h_unconfirmed_between_8_and_21() {
        let c = validate(&RemindersFile::default(), &path, &invalid).unwrap();
        assert_eq!(c, RemindersConfig::default());
        assert_eq!(c.offsets.len(), 2);
        assert!(c.offsets[1].only_unconfirmed);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (file, key) in [
            (
                RemindersFile {
                    allowed_hours: Some("21:00-08:00".into()),
                    ..Default::default()
                },
                "reminders.allowed_hours",
            ),
            (
                RemindersFile {
                    second: Some("96h".into()),
                    ..Default::default()
                },
                "reminders.second",
            ),
            (
                RemindersFile {
                    first: Some("soon".into()),
                    ..Default::default()
                },
                "reminders.first",
            ),
        ] {
            let e = validate(&file, &path, &invalid).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let only_one = RemindersFile {
            second: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            validate(&only_one, &path, &invalid).unwrap().offsets.len(),
            1
        );
    }

    #[test]
    fn the_patients_language_picks_the_template_language() {
        let c = RemindersConfig::default();
        assert_eq!(c.language_for(Some("DE")), "de");
        assert_eq!(c.language_for(Some("ger")), "de");
        assert_eq!(c.language_for(Some("es-MX")), "es");
        assert_eq!(c.language_for(Some("nl")), "en");
        assert_eq!(c.language_for(None), "en");
        let mapped = RemindersFile {
            template_codes: Some([("es".to_owned(), "es_MX".to_owned())].into()),
            default_language: Some("de".into()),
            ..Default::default()
        };
        let c = validate(&mapped, &path, &invalid).unwrap();
        assert_eq!(c.template_code("es"), "es_MX");
        assert_eq!(c.template_code("fr"), "fr");
        assert_eq!(c.messages.language(Some("nl")), "de");
        let far = RemindersFile {
            reschedule_days: Some(91),
            ..Default::default()
        };
        let e = validate(&far, &path, &invalid).unwrap_err();
        assert!(e.to_string().contains("reminders.reschedule_days"), "{e}");
        let missing = RemindersFile {
            languages: Some(vec!["it".into()]),
            default_language: Some("it".into()),
            ..Default::default()
        };
        let e = validate(&missing, &path, &invalid).unwrap_err();
        assert!(e.to_string().contains("no message file"), "{e}");
    }
}
