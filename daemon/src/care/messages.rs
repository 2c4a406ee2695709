//! The texts the patient workflows send, per language: `config/messages/
//! <lang>.toml` (en, es, de, fr) embedded as defaults; a `<lang>.toml` in
//! `reminders.messages_dir` adds a language or overrides texts key by key.
//! A key missing in a language falls back to the clinic's default
//! language, then to the embedded English: never an empty message.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every key a language file may (and a shipped file must) have.
pub const KEYS: &[&str] = &[
    "language.name",
    "language.changed",
    "date.date",
    "date.time",
    "reply.confirmed",
    "reply.cancelled",
    "reply.closed",
    "reply.reschedule_requested",
    "reply.no_slots",
    "reply.slot_gone",
    "consent.opted_out",
    "consent.opted_in",
    "slots.body",
    "slots.button",
    "keywords.opt_out",
    "keywords.opt_in",
    "results.ask_dob",
    "results.ask_code",
    "results.unreadable",
    "results.wrong",
    "results.locked",
    "results.already_sent",
    "results.unavailable",
    "results.none",
    "keywords.yes",
    "keywords.no",
    "intake.ask_name",
    "intake.ask_dob",
    "intake.unreadable_dob",
    "intake.ask_consent",
    "intake.yes",
    "intake.no",
    "intake.thanks",
    "intake.thanks_no_consent",
    "appointments.none",
    "appointments.item",
    "appointments.cancel",
    "appointments.reschedule",
    "keywords.greeting",
    "keywords.menu",
    "keywords.book",
    "keywords.appointments",
    "keywords.results",
    "keywords.staff",
    "menu.body",
    "menu.button",
    "menu.book",
    "menu.appointments",
    "menu.results",
    "menu.staff",
    "handoff.waiting",
    "handoff.not_yet",
    "keywords.later",
    "booking.choose",
    "booking.button",
    "booking.option",
    "booking.times",
    "booking.later",
    "booking.confirm",
    "booking.yes",
    "booking.another",
    "booking.asking",
    "booking.booked",
    "booking.taken",
    "booking.none",
    "booking.waiting",
];

/// The embedded files: (language, text).
pub const SHIPPED: &[(&str, &str)] = &[
    ("en", include_str!("../../../config/messages/en.toml")),
    ("de", include_str!("../../../config/messages/de.toml")),
    ("es", include_str!("../../../config/messages/es.toml")),
    ("fr", include_str!("../../../config/messages/fr.toml")),
];

/// The language every other falls back to in the end (complete by test).
const BASE: &str = "en";

#[derive(Debug, thiserror::Error)]
pub enum MessagesError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The texts of all languages, and the clinic's default language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    langs: BTreeMap<String, BTreeMap<String, String>>,
    default: String,
}

/// A file's `section.key = "text"` pairs; unknown keys, non-text values
/// and empty texts are errors (a typo would otherwise fall back silently).
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let mut out = BTreeMap::new();
    for (section, v) in table {
        let toml::Value::Table(t) = v else {
            return Err(format!("`{section}` is not a [section]"));
        };
        for (key, v) in t {
            let full = format!("{section}.{key}");
            if !KEYS.contains(&full.as_str()) {
                return Err(format!("unknown key `{full}`"));
            }
            match v {
                toml::Value::String(s) if !s.trim().is_empty() => {
                    out.insert(full, s);
                }
                _ => return Err(format!("`{full}` must be a non-empty text")),
            }
        }
    }
    check(&out)?;
    Ok(out)
}

/// What Meta or the formatter would refuse later: date formats that do not
/// format, a list button over 20 characters, a row title over 24.
fn check(texts: &BTreeMap<String, String>) -> Result<(), String> {
    let sample: Timestamp = "2026-09-30T22:59:00Z".parse().map_err(|_| "sample")?;
    let local = sample.to_zoned(TimeZone::UTC);
    let mut title = String::new();
    for key in ["date.date", "date.time"] {
        if let Some(f) = texts.get(key) {
            let s = jiff::fmt::strtime::format(f, &local)
                .map_err(|_| format!("`{key}` is not a date format"))?;
            title.push_str(&s);
            title.push(' ');
        }
    }
    if title.chars().count() > 25 {
        return Err("`date.date` and `date.time` together: at most 23 characters".to_owned());
    }
    if texts
        .get("slots.button")
        .is_some_and(|b| b.chars().count() > 20)
    {
        return Err("`slots.button`: at most 20 characters".to_owned());
    }
    if texts
        .get("menu.button")
        .is_some_and(|b| b.chars().count() > 20)
    {
        return Err("`menu.button`: at most 20 characters".to_owned());
    }
    // Reply buttons' titles (Meta: at most 20 characters).
    for key in [
        "intake.yes",
        "intake.no",
        "appointments.cancel",
        "appointments.reschedule",
    ] {
        if texts.get(key).is_some_and(|t| t.chars().count() > 20) {
            return Err(format!("`{key}`: at most 20 characters (a reply button)"));
        }
    }
    if texts
        .get("appointments.item")
        .is_some_and(|t| !t.contains("{date}") || !t.contains("{time}"))
    {
        return Err("`appointments.item` needs {date} and {time}".to_owned());
    }
    // List buttons and reply buttons: 20; "Option 10" must fit a row.
    for key in [
        "booking.button",
        "booking.yes",
        "booking.another",
        "booking.option",
    ] {
        if texts.get(key).is_some_and(|t| t.chars().count() > 20) {
            return Err(format!("`{key}`: at most 20 characters (a button)"));
        }
    }
    if texts
        .get("booking.later")
        .is_some_and(|t| t.chars().count() > 24)
    {
        return Err("`booking.later`: at most 24 characters (a list row)".to_owned());
    }
    for key in [
        "menu.book",
        "menu.appointments",
        "menu.results",
        "menu.staff",
    ] {
        if texts.get(key).is_some_and(|t| t.chars().count() > 24) {
            return Err(format!("`{key}`: at most 24 characters (a list row)"));
        }
    }
    Ok(())
}

impl Default for Catalog {
    fn default() -> Self {
        Self::shipped()
    }
}

/// A patient's language as the PMS writes it (PID-15 may say `es`, `ES`,
/// `es-MX`, `spa`): two lowercase letters.
pub fn normalize(lang: &str) -> String {
    let l = lang.trim().to_ascii_lowercase();
    match l.as_str() {
        "ger" | "deu" => "de".to_owned(),
        "eng" => "en".to_owned(),
        "spa" => "es".to_owned(),
        "fre" | "fra" => "fr".to_owned(),
        _ => l.chars().take(2).collect(),
    }
}

impl Catalog {
    /// The embedded files (a shipped file that did not parse would be
    /// caught by the tests; it is skipped, not a panic).
    pub fn shipped() -> Self {
        let langs = SHIPPED
            .iter()
            .filter_map(|(l, t)| Some(((*l).to_owned(), parse(t).ok()?)))
            .collect();
        Self {
            langs,
            default: BASE.to_owned(),
        }
    }

    /// The shipped texts with the `<lang>.toml` files of `dir` over them.
    pub fn load_dir(dir: &Path) -> Result<Self, MessagesError> {
        let mut c = Self::shipped();
        let read_err = |e: std::io::Error| MessagesError::Read {
            path: dir.to_owned(),
            reason: e.kind().to_string(),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            let Some(lang) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if lang.len() != 2 || !lang.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(MessagesError::Invalid {
                    path,
                    reason: "name it after a two-letter language code, like es.toml".to_owned(),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|e| MessagesError::Read {
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let texts = parse(&text).map_err(|reason| MessagesError::Invalid {
                path: path.clone(),
                reason,
            })?;
            c.langs.entry(lang.to_owned()).or_default().extend(texts);
        }
        Ok(c)
    }

    /// With `lang` as the fallback of every other language.
    pub fn with_default(mut self, lang: &str) -> Self {
        self.default = lang.to_owned();
        self
    }

    pub fn has(&self, lang: &str) -> bool {
        self.langs.contains_key(lang)
    }

    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.langs.keys().map(String::as_str)
    }

    /// The language to write to a patient in: theirs (chosen in the chat,
    /// else PID-15) if there are texts for it, else the default.
    pub fn language<'a>(&'a self, patient: Option<&str>) -> &'a str {
        patient
            .map(normalize)
            .and_then(|l| self.langs.get_key_value(&l).map(|(k, _)| k.as_str()))
            .unwrap_or(&self.default)
    }

    /// The text for `key` in `lang`, else in the default language, else in
    /// English; the key itself only if even that is missing (not reachable
    /// with the shipped files).
    pub fn text<'a>(&'a self, lang: &str, key: &'a str) -> &'a str {
        [lang, self.default.as_str(), BASE]
            .iter()
            .find_map(|l| self.langs.get(*l)?.get(key))
            .map_or(key, String::as_str)
    }

    /// The visit's local date and time, written for `lang`.
    pub fn when(&self, start: Timestamp, tz: &TimeZone, lang: &str) -> (String, String) {
        let local = start.to_zoned(tz.clone());
        let fmt = |key: &str| {
            [lang, self.default.as_str(), BASE]
                .iter()
                .filter_map(|l| self.langs.get(*l)?.get(key))
                .find_map(|f| jiff::fmt::strtime::format(f, &local).ok())
                .unwrap_or_else(|| local.datetime().to_string())
        };
        (fmt("date.date"), fmt("date.time"))
    }

    /// Whether a chat text is one of the opt-out (`keywords.opt_out`) or
    /// opt-in (`keywords.opt_in`) words of any language the clinic has:
    /// a patient may answer STOP in their own language whatever the
    /// practice thinks it is. Matched like the built-in keywords.
    pub fn is_keyword(&self, key: &str, text: &str) -> bool {
        if text.len() > 64 {
            return false;
        }
        let wanted = super::consent::normalise(text);
        !wanted.is_empty()
            && self.langs.values().filter_map(|t| t.get(key)).any(|words| {
                words
                    .split(',')
                    .any(|w| super::consent::normalise(w) == wanted)
            })
    }

    /// Every language's text for `key`: (language, text).
    pub fn entries<'a>(&'a self, key: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.langs
            .iter()
            .filter_map(move |(l, t)| Some((l.as_str(), t.get(key)?.as_str())))
    }

    /// The language whose `language.name` a chat text is, if any (case,
    /// accents and surrounding punctuation ignored, like the keywords).
    pub fn named(&self, text: &str) -> Option<&str> {
        if text.len() > 64 {
            return None;
        }
        let wanted = super::consent::normalise(text);
        if wanted.is_empty() {
            return None;
        }
        self.langs.iter().find_map(|(l, t)| {
            let name = super::consent::normalise(t.get("language.name")?);
            (name == wanted).then_some(l.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_file_has_every_key_and_no_empty_text() {
        assert_eq!(SHIPPED.len(), 4);
        for (lang, text) in SHIPPED {
            let texts = parse(text).unwrap_or_else(|e| panic!("{lang}.toml: {e}"));
            for key in KEYS {
                let v = texts
                    .get(*key)
                    .unwrap_or_else(|| panic!("{lang}.toml lacks {key}"));
                assert!(!v.trim().is_empty(), "{lang}.toml: {key} is empty");
            }
            assert_eq!(texts.len(), KEYS.len(), "{lang}.toml");
        }
        let c = Catalog::shipped();
        assert_eq!(c.languages().collect::<Vec<_>>(), ["de", "en", "es", "fr"]);
    }

    #[test]
    fn a_dropped_file_adds_or_overrides_and_gaps_fall_back_to_the_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("it.toml"),
            "[reply]\nconfirmed = \"Grazie, il suo appuntamento è confermato.\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("es.toml"), "[slots]\nbutton = \"Horas\"\n").unwrap();
        let c = Catalog::load_dir(dir.path()).unwrap().with_default("de");
        assert_eq!(c.language(Some("IT")), "it");
        assert_eq!(
            c.text("it", "reply.confirmed"),
            "Grazie, il suo appuntamento è confermato."
        );
        // Not in it.toml: the clinic's default language, not English.
        assert_eq!(c.text("it", "reply.closed"), c.text("de", "reply.closed"));
        assert_eq!(c.text("es", "slots.button"), "Horas");
        assert_eq!(c.text("es", "slots.body"), "Elija un nuevo horario:");
        assert_eq!(c.language(Some("spa")), "es");
        assert_eq!(c.language(Some("nl")), "de");
        assert_eq!(c.language(None), "de");
    }

    #[test]
    fn bad_files_are_refused_with_their_reason() {
        for (name, text, reason) in [
            ("es.toml", "[reply]\nconfirmed = \"\"\n", "non-empty"),
            ("es.toml", "[reply]\nconfrimed = \"x\"\n", "unknown key"),
            ("es.toml", "[date]\ndate = \"%d %\"\n", "date format"),
            (
                "es.toml",
                "[slots]\nbutton = \"a very long button label\"\n",
                "20",
            ),
            ("spanish.toml", "", "two-letter"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(name), text).unwrap();
            let e = Catalog::load_dir(dir.path()).unwrap_err().to_string();
            assert!(e.contains(reason), "{e}");
        }
    }

    #[test]
    fn dates_in_each_language() {
        let c = Catalog::shipped();
        let tz = TimeZone::get("Europe/Madrid").unwrap();
        let t: Timestamp = "2027-01-20T09:00:00Z".parse().unwrap();
        assert_eq!(c.when(t, &tz, "es"), ("20/01/2027".into(), "10:00".into()));
        assert_eq!(c.when(t, &tz, "de"), ("20.01.2027".into(), "10:00".into()));
        assert_eq!(
            c.when(t, &tz, "en"),
            ("Wed, Jan 20".into(), "10:00 AM".into())
        );
        assert_eq!(c.named("español!"), Some("es"));
        assert_eq!(c.named(" FRANCAIS "), Some("fr"));
        assert_eq!(c.named("hola"), None);
    }
}
