//! The minimal-payload policy: which data fields an outbound WhatsApp
//! message may carry, per message kind (`[policy]` in the config).
//!
//! WhatsApp messages leave the clinic's control, so they carry as little as
//! a reminder needs: by default the patient's first name, the appointment's
//! date and time, and the clinic's name and address. Some fields are never
//! allowed, whatever the config says (diagnosis, service or procedure name,
//! provider specialty, result content, MRN, date of birth, full name).
//!
//! The check is on field names, never on guessed content: every template
//! parameter is mapped to the field it carries (the shipped mapping below,
//! or `[policy.templates.NAME]` in the config), and named parameters carry
//! the field in their name. A template parameter nobody mapped is refused:
//! the policy cannot vouch for it. Free-form texts (the shipped replies,
//! staff texts) are recorded as the field `text`; they are fixed strings or
//! a person's own words, not data pulled from the record.

use super::message::{Kind, OutMessage};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Never in an outbound message, even when configured.
pub const FORBIDDEN: &[&str] = &[
    "diagnosis",
    "service_name",
    "procedure_name",
    "provider_specialty",
    "result_content",
    "mrn",
    "date_of_birth",
    "full_name",
    "last_name",
];

/// The fields a message may be allowed to carry.
pub const FIELDS: &[&str] = &[
    "first_name",
    "appointment_date",
    "appointment_time",
    "clinic_name",
    "clinic_address",
    "text",
    "document",
];

/// What every kind may carry unless `[policy] allow` says otherwise.
pub const DEFAULT_FIELDS: &[&str] = &[
    "first_name",
    "appointment_date",
    "appointment_time",
    "clinic_name",
    "clinic_address",
    "text",
];

/// The kinds of outbound message the policy tells apart.
pub const KINDS: &[&str] = &[
    "reminder",
    "reply",
    "consent-confirmation",
    "result-notice",
    "result-document",
    "follow-up",
    "staff-text",
];

/// Which field each parameter of a template carries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMap {
    /// One of [`KINDS`].
    pub kind: String,
    /// The field of body parameter {{1}}, {{2}}, … in order.
    #[serde(default)]
    pub params: Vec<String>,
    /// The field of a text header, if the template has one.
    #[serde(default)]
    pub header: Option<String>,
}

/// `[policy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Message kind → the fields it may carry.
    pub allow: Option<BTreeMap<String, Vec<String>>>,
    /// Template name → which field each parameter carries (overrides the
    /// shipped mapping of that name).
    pub templates: Option<BTreeMap<String, TemplateMap>>,
}

/// The checked policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allow: BTreeMap<String, BTreeSet<String>>,
    templates: BTreeMap<String, TemplateMap>,
}

/// The mapping of the templates shipped in `templates.json`.
fn shipped_templates() -> BTreeMap<String, TemplateMap> {
    let map = |kind: &str, params: &[&str], header: Option<&str>| TemplateMap {
        kind: kind.to_owned(),
        params: params.iter().map(|s| (*s).to_owned()).collect(),
        header: header.map(str::to_owned),
    };
    BTreeMap::from([
        (
            "appointment_reminder".to_owned(),
            map("reminder", &["appointment_date", "appointment_time"], None),
        ),
        (
            "lab_result_ready".to_owned(),
            map("result-notice", &[], None),
        ),
        // "A new document is ready": no parameter, nothing of the result.
        ("document_ready".to_owned(), map("result-notice", &[], None)),
        // Staff wrote outside the 24-hour window: "please reply" (the
        // staff's text waits for the answer, see `care::conversation`).
        (
            "conversation_reopen".to_owned(),
            map("staff-text", &[], None),
        ),
    ])
}

impl Default for Policy {
    fn default() -> Self {
        let mut allow: BTreeMap<String, BTreeSet<String>> = KINDS
            .iter()
            .map(|k| {
                let f = DEFAULT_FIELDS.iter().map(|s| (*s).to_owned()).collect();
                ((*k).to_owned(), f)
            })
            .collect();
        // A result notice carries the released document (the patient's
        // own result, sent because the clinic released it to them).
        // The same for the document message a result goes out as, once
        // the patient proved who they are (`care::results`).
        for kind in ["result-notice", "result-document"] {
            if let Some(f) = allow.get_mut(kind) {
                f.insert("document".to_owned());
            }
        }
        Self {
            allow,
            templates: shipped_templates(),
        }
    }
}

/// Why a config's `[policy]` is refused (the config layer adds the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfigError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
    pub fix: &'static str,
}

const FIX_FORBIDDEN: &str = "map the parameter to an allowed field (first_name, appointment_date, \
     appointment_time, clinic_name, clinic_address) or use a template that does not carry it; \
     forbidden fields are never sent, whatever the config says";

fn check_field(key: &'static str, at: &str, field: &str) -> Result<(), PolicyConfigError> {
    if FORBIDDEN.contains(&field) {
        return Err(PolicyConfigError {
            key,
            value: format!("{at}: {field}"),
            reason: format!(
                "`{field}` is never allowed in an outbound WhatsApp message (minimal-payload policy)"
            ),
            fix: FIX_FORBIDDEN,
        });
    }
    if !FIELDS.contains(&field) {
        return Err(PolicyConfigError {
            key,
            value: format!("{at}: {field}"),
            reason: format!("`{field}` is not a known field"),
            fix: "use one of first_name, appointment_date, appointment_time, clinic_name, \
                  clinic_address, text, document",
        });
    }
    Ok(())
}

fn check_kind(key: &'static str, kind: &str) -> Result<(), PolicyConfigError> {
    if KINDS.contains(&kind) {
        return Ok(());
    }
    Err(PolicyConfigError {
        key,
        value: kind.to_owned(),
        reason: "not a message kind".to_owned(),
        fix: "use one of reminder, reply, consent-confirmation, result-notice, \
              result-document, follow-up, staff-text",
    })
}

/// Checks `[policy]`: every kind and field known, no forbidden field
/// anywhere, every mapped template parameter allowed for its kind.
pub fn validate(file: &PolicyFile) -> Result<Policy, PolicyConfigError> {
    let mut policy = Policy::default();
    for (kind, fields) in file.allow.iter().flatten() {
        check_kind("policy.allow", kind)?;
        for f in fields {
            check_field("policy.allow", kind, f)?;
        }
        policy
            .allow
            .insert(kind.clone(), fields.iter().cloned().collect());
    }
    for (name, map) in file.templates.iter().flatten() {
        check_kind("policy.templates", &map.kind)?;
        policy.templates.insert(name.clone(), map.clone());
    }
    for (name, map) in &policy.templates {
        for f in map.params.iter().chain(map.header.iter()) {
            check_field("policy.templates", name, f)?;
            if !policy.allows(&map.kind, f) {
                return Err(PolicyConfigError {
                    key: "policy.templates",
                    value: format!("{name}: {f}"),
                    reason: format!("`{f}` is not allowed in a {} message", map.kind),
                    fix: "add the field to [policy] allow for that kind, or map the parameter \
                          to an allowed field",
                });
            }
        }
    }
    Ok(policy)
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("the message would carry `{field}`, which is never sent (minimal-payload policy)")]
    Forbidden { field: String },
    #[error("a {kind} message may not carry `{field}` ([policy] allow)")]
    NotAllowed { kind: String, field: String },
    #[error(
        "template `{template}` has parameters no [policy.templates] mapping names; map each \
         parameter to the field it carries"
    )]
    Unmapped { template: String },
}

impl Violation {
    /// A PHI-free reason code for events and audit.
    pub fn code(&self) -> &'static str {
        match self {
            Violation::Forbidden { .. } => "forbidden-field",
            Violation::NotAllowed { .. } => "field-not-allowed",
            Violation::Unmapped { .. } => "unmapped-parameter",
        }
    }
}

/// What a message that passed carries: its kind, the field names in it,
/// and a digest of its payload (for the audit, instead of the values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub kind: String,
    pub fields: Vec<String>,
    pub digest: String,
}

/// sha256 of the message's JSON, hex.
pub fn digest(msg: &OutMessage) -> String {
    let bytes = serde_json::to_vec(&msg.payload).unwrap_or_default();
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
}

fn component<'a>(payload: &'a Value, kind: &str) -> Option<&'a Vec<Value>> {
    payload
        .pointer("/template/components")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?
        .get("parameters")?
        .as_array()
}

impl Policy {
    fn allows(&self, kind: &str, field: &str) -> bool {
        !FORBIDDEN.contains(&field) && self.allow.get(kind).is_some_and(|f| f.contains(field))
    }

    /// The fields a template message carries, by its mapping.
    fn template_fields(
        &self,
        name: &str,
        msg: &OutMessage,
    ) -> Result<(String, Vec<String>), Violation> {
        let unmapped = || Violation::Unmapped {
            template: name.to_owned(),
        };
        let map = self.templates.get(name);
        let mut fields = Vec::new();
        if let Some(header) = component(&msg.payload, "header") {
            for p in header {
                match p.get("type").and_then(Value::as_str) {
                    Some("document") => fields.push("document".to_owned()),
                    _ => fields.push(map.and_then(|m| m.header.clone()).ok_or_else(unmapped)?),
                }
            }
        }
        let body = component(&msg.payload, "body").map_or(&[][..], Vec::as_slice);
        for (i, p) in body.iter().enumerate() {
            // A named parameter ({{first_name}}) names its field.
            if let Some(n) = p.get("parameter_name").and_then(Value::as_str) {
                fields.push(n.to_owned());
                continue;
            }
            let f = map.and_then(|m| m.params.get(i)).ok_or_else(unmapped)?;
            fields.push(f.clone());
        }
        // A template without parameters carries only its approved text.
        let kind = map.map_or("staff-text", |m| m.kind.as_str()).to_owned();
        Ok((kind, fields))
    }

    /// Checks one outbound message. `reference` is the caller's PHI-free
    /// reference, which tells a workflow's reply from a staff text.
    pub fn check(&self, msg: &OutMessage, reference: Option<&str>) -> Result<Checked, Violation> {
        let (kind, fields) = match (&msg.kind, &msg.template) {
            (Kind::Template, Some((name, _))) => self.template_fields(name, msg)?,
            (Kind::MarkRead, _) => ("reply".to_owned(), Vec::new()),
            (Kind::Document, _) => ("result-document".to_owned(), vec!["document".to_owned()]),
            _ => {
                let kind = match reference {
                    Some(r) if r.starts_with("care-") => "reply",
                    _ => "staff-text",
                };
                (kind.to_owned(), vec!["text".to_owned()])
            }
        };
        for f in &fields {
            if FORBIDDEN.contains(&f.as_str()) {
                return Err(Violation::Forbidden { field: f.clone() });
            }
            if !self.allows(&kind, f) {
                return Err(Violation::NotAllowed {
                    kind,
                    field: f.clone(),
                });
            }
        }
        Ok(Checked {
            kind,
            fields,
            digest: digest(msg),
        })
    }

    /// Whether a mapping says which field each parameter of template
    /// `name` carries.
    pub fn is_mapped(&self, name: &str) -> bool {
        self.templates.contains_key(name)
    }

    /// A policy with `templates` mapped as given, not validated: for
    /// showing that enqueue refuses what `config check` would have.
    pub fn with_unchecked_mapping(mut self, name: &str, map: TemplateMap) -> Self {
        self.templates.insert(name.to_owned(), map);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whatsapp::message::{self, Params, TemplateSpec};

    fn reminder(name: &str, params: Params<'_>) -> OutMessage {
        message::template(&TemplateSpec {
            name,
            language: "en",
            header: None,
            body: params,
            quick_replies: vec![],
        })
        .unwrap()
    }

    #[test]
    fn the_shipped_reminder_passes_with_field_names_and_a_digest() {
        let p = Policy::default();
        let m = reminder(
            "appointment_reminder",
            Params::Positional(vec!["Mon", "9:00"]),
        );
        let c = p.check(&m, None).unwrap();
        assert_eq!(c.kind, "reminder");
        assert_eq!(c.fields, ["appointment_date", "appointment_time"]);
        assert_eq!(c.digest.len(), 64);
        assert!(!c.digest.contains("Mon"));
    }

    #[test]
    fn forbidden_unmapped_and_not_allowed_are_refused() {
        let p = Policy::default();
        let named = reminder("x_visit", Params::Named(vec![("service_name", "MRI")]));
        assert_eq!(p.check(&named, None).unwrap_err().code(), "forbidden-field");
        let extra = reminder(
            "appointment_reminder",
            Params::Positional(vec!["a", "b", "c"]),
        );
        assert_eq!(
            p.check(&extra, None).unwrap_err().code(),
            "unmapped-parameter"
        );
        let doc = reminder("x_visit", Params::Named(vec![("document", "x")]));
        assert_eq!(p.check(&doc, None).unwrap_err().code(), "field-not-allowed");
        let forced = p.with_unchecked_mapping(
            "appointment_reminder",
            TemplateMap {
                kind: "reminder".into(),
                params: vec!["service_name".into(), "appointment_time".into()],
                header: None,
            },
        );
        let m = reminder(
            "appointment_reminder",
            Params::Positional(vec!["MRI", "9:00"]),
        );
        assert_eq!(
            forced.check(&m, None).unwrap_err().code(),
            "forbidden-field"
        );
    }

    #[test]
    fn config_refuses_forbidden_fields_even_when_allowed() {
        let file: PolicyFile = toml::from_str(
            "[templates.appointment_reminder]\nkind = \"reminder\"\nparams = [\"service_name\"]\n",
        )
        .unwrap();
        let e = validate(&file).unwrap_err();
        assert_eq!(e.key, "policy.templates");
        assert!(e.value.contains("appointment_reminder: service_name"));
        let file: PolicyFile = toml::from_str("allow = { reminder = [\"mrn\"] }\n").unwrap();
        assert_eq!(validate(&file).unwrap_err().key, "policy.allow");
        let file: PolicyFile =
            toml::from_str("allow = { reminder = [\"appointment_date\"] }\n").unwrap();
        let e = validate(&file).unwrap_err();
        assert!(e.reason.contains("appointment_time"), "{e:?}");
        assert_eq!(validate(&PolicyFile::default()).unwrap(), Policy::default());
    }
}
