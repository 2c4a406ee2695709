//! The message templates the workflows use, shipped with the daemon (in
//! Meta's submission format, per language: `templates.json`), and their
//! check against the account: `clinic-relay templates check`.

use super::client::{ApiError, GraphClient, RemoteTemplate};
use serde_json::Value;

const SHIPPED: &str = include_str!("templates.json");

/// The shipped definitions, parsed once: every template message queued
/// without a template book asks whether its template is shipped, and
/// parsing the whole file for each was a fifth of a reminder run's CPU.
static PARSED: std::sync::LazyLock<Vec<Value>> =
    std::sync::LazyLock::new(|| serde_json::from_str::<Vec<Value>>(SHIPPED).unwrap_or_default());

/// The shipped definitions (Meta's `POST /message_templates` bodies).
pub fn shipped() -> Vec<Value> {
    PARSED.clone()
}

/// The shipped definition of `name` in `language`.
pub fn definition(name: &str, language: &str) -> Option<Value> {
    find(name, language).cloned()
}

/// Whether `name` in `language` is a shipped template (no copy).
pub fn is_shipped(name: &str, language: &str) -> bool {
    find(name, language).is_some()
}

fn find(name: &str, language: &str) -> Option<&'static Value> {
    PARSED
        .iter()
        .find(|t| field(t, "name") == name && field(t, "language") == language)
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Where a shipped template stands on the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub name: String,
    pub language: String,
    /// approved, missing, pending, rejected, paused, disabled, marketing
    pub state: String,
}

impl Finding {
    /// Usable for sending as shipped.
    pub fn ok(&self) -> bool {
        self.state == "approved"
    }
}

/// Compares the shipped templates with the account's.
pub fn compare(remote: &[RemoteTemplate]) -> Vec<Finding> {
    PARSED
        .iter()
        .map(|t| {
            let (name, language) = (field(t, "name"), field(t, "language"));
            let found = remote
                .iter()
                .find(|r| r.name == name && r.language == language);
            let state = match found {
                None => "missing".to_owned(),
                // Meta may move a utility template to MARKETING: other
                // rules and prices apply, so it is reported.
                Some(r) if r.category.eq_ignore_ascii_case("MARKETING") => "marketing".to_owned(),
                Some(r) => r.status.to_ascii_lowercase(),
            };
            Finding {
                name: name.to_owned(),
                language: language.to_owned(),
                state,
            }
        })
        .collect()
}

/// Lists the account's templates and compares.
pub async fn check(client: &GraphClient) -> Result<Vec<Finding>, ApiError> {
    Ok(compare(&client.templates().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_definitions_parse_and_compare() {
        let s = shipped();
        assert!(s.len() >= 4);
        let remote = vec![
            RemoteTemplate {
                name: "appointment_reminder".into(),
                language: "de".into(),
                status: "APPROVED".into(),
                category: "UTILITY".into(),
            },
            RemoteTemplate {
                name: "lab_result_ready".into(),
                language: "de".into(),
                status: "APPROVED".into(),
                category: "MARKETING".into(),
            },
        ];
        let f = compare(&remote);
        assert!(f[0].ok());
        assert_eq!(f[1].state, "missing");
        assert_eq!(f[2].state, "marketing");
    }
}
