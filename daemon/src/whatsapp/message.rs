//! Message builders: text, template, reply buttons, list, document and
//! mark-as-read, in the Cloud API's JSON. Meta's shape limits are checked
//! here, when a message is built, so that a bad message fails at enqueue
//! with an error naming the limit, never later at Meta.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Meta's limits (characters are Unicode scalar values).
pub mod limits {
    pub const TEXT_BODY: usize = 4096;
    pub const INTERACTIVE_BODY: usize = 1024;
    pub const HEADER_TEXT: usize = 60;
    pub const FOOTER: usize = 60;
    pub const BUTTONS: usize = 3;
    pub const BUTTON_TITLE: usize = 20;
    pub const BUTTON_ID: usize = 256;
    pub const LIST_ROWS: usize = 10;
    pub const LIST_SECTIONS: usize = 10;
    pub const LIST_BUTTON: usize = 20;
    pub const SECTION_TITLE: usize = 24;
    pub const ROW_TITLE: usize = 24;
    pub const ROW_DESCRIPTION: usize = 72;
    pub const ROW_ID: usize = 200;
    pub const CAPTION: usize = 1024;
    pub const FILENAME: usize = 240;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{what} is {got} characters long; Meta's limit is {limit}")]
    TooLong {
        what: &'static str,
        limit: usize,
        got: usize,
    },
    #[error("{got} {what} given; Meta's limit is {limit}")]
    TooMany {
        what: &'static str,
        limit: usize,
        got: usize,
    },
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{0} ids must be unique within a message")]
    DuplicateId(&'static str),
    #[error("the recipient is neither an E.164 phone number (+ and 8 to 15 digits) nor a business-scoped user id")]
    BadRecipient,
    #[error("{0}")]
    Invalid(&'static str),
}

/// Who receives a message: a phone number (`to`) or a business-scoped user
/// id (`recipient`, e.g. `US.1349…`), which webhooks may carry instead of a
/// number.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    Phone(String),
    Bsuid(String),
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A phone number is PHI.
        match self {
            Recipient::Phone(_) => f.write_str("Phone([redacted])"),
            Recipient::Bsuid(_) => f.write_str("Bsuid([redacted])"),
        }
    }
}

impl Recipient {
    /// A phone number in E.164 form (`+` then 8 to 15 digits).
    pub fn phone(e164: &str) -> Result<Self, BuildError> {
        let digits = e164.strip_prefix('+').ok_or(BuildError::BadRecipient)?;
        if (8..=15).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && !digits.starts_with('0')
        {
            Ok(Recipient::Phone(e164.to_owned()))
        } else {
            Err(BuildError::BadRecipient)
        }
    }

    /// A business-scoped user id: a country prefix, a dot, then letters
    /// and digits (`US.13491208655302741918`).
    pub fn bsuid(id: &str) -> Result<Self, BuildError> {
        let ok = id.split_once('.').is_some_and(|(cc, rest)| {
            (2..=3).contains(&cc.len())
                && cc.chars().all(|c| c.is_ascii_uppercase())
                && (1..=64).contains(&rest.len())
                && rest.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if ok {
            Ok(Recipient::Bsuid(id.to_owned()))
        } else {
            Err(BuildError::BadRecipient)
        }
    }

    /// The value Meta echoes as `contacts[].input` (and the order key).
    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Phone(s) | Recipient::Bsuid(s) => s,
        }
    }
}

/// A built, checked message: what kind it is, and the Cloud API JSON
/// without the recipient (added at send, so a stored message can follow a
/// patient's changed `wa_id`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct OutMessage {
    pub kind: Kind,
    /// The template's name, for `outbox list` and the approval check.
    pub template: Option<(String, String)>,
    pub payload: Value,
}

impl std::fmt::Debug for OutMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The payload holds the content: never in Debug.
        f.debug_struct("OutMessage")
            .field("kind", &self.kind)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Text,
    Template,
    Buttons,
    List,
    Document,
    MarkRead,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Template => "template",
            Kind::Buttons => "buttons",
            Kind::List => "list",
            Kind::Document => "document",
            Kind::MarkRead => "mark-read",
        }
    }
}

impl OutMessage {
    /// The JSON to POST to `/messages` for `to` (None only for mark-as-read).
    pub fn to_json(&self, to: Option<&Recipient>) -> Value {
        let mut v = self.payload.clone();
        if let Value::Object(m) = &mut v {
            m.insert("messaging_product".to_owned(), json!("whatsapp"));
            match to {
                Some(Recipient::Phone(p)) => {
                    m.insert("recipient_type".to_owned(), json!("individual"));
                    m.insert("to".to_owned(), json!(p));
                }
                Some(Recipient::Bsuid(id)) => {
                    m.insert("recipient".to_owned(), json!(id));
                }
                None => {}
            }
        }
        v
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn check_len(what: &'static str, s: &str, limit: usize) -> Result<(), BuildError> {
    let got = chars(s);
    if got == 0 {
        return Err(BuildError::Empty(what));
    }
    if got > limit {
        return Err(BuildError::TooLong { what, limit, got });
    }
    Ok(())
}

fn check_count(what: &'static str, got: usize, limit: usize) -> Result<(), BuildError> {
    if got == 0 {
        return Err(BuildError::Empty(what));
    }
    if got > limit {
        return Err(BuildError::TooMany { what, limit, got });
    }
    Ok(())
}

/// A free-form text message.
pub fn text(body: &str) -> Result<OutMessage, BuildError> {
    check_len("text body", body, limits::TEXT_BODY)?;
    Ok(OutMessage {
        kind: Kind::Text,
        template: None,
        payload: json!({"type": "text", "text": {"body": body, "preview_url": false}}),
    })
}

/// Header, body and footer of an interactive message.
#[derive(Debug, Clone, Default)]
pub struct Frame<'a> {
    pub header: Option<&'a str>,
    pub body: &'a str,
    pub footer: Option<&'a str>,
}

fn frame(f: &Frame<'_>, interactive: &mut Map<String, Value>) -> Result<(), BuildError> {
    check_len("body", f.body, limits::INTERACTIVE_BODY)?;
    interactive.insert("body".to_owned(), json!({"text": f.body}));
    if let Some(h) = f.header {
        check_len("header text", h, limits::HEADER_TEXT)?;
        interactive.insert("header".to_owned(), json!({"type": "text", "text": h}));
    }
    if let Some(t) = f.footer {
        check_len("footer", t, limits::FOOTER)?;
        interactive.insert("footer".to_owned(), json!({"text": t}));
    }
    Ok(())
}

fn unique<'a>(what: &'static str, ids: impl Iterator<Item = &'a str>) -> Result<(), BuildError> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(BuildError::DuplicateId(what));
        }
    }
    Ok(())
}

/// Interactive reply buttons: (id, title) pairs.
pub fn buttons(f: &Frame<'_>, buttons: &[(&str, &str)]) -> Result<OutMessage, BuildError> {
    check_count("reply buttons", buttons.len(), limits::BUTTONS)?;
    let mut list = Vec::new();
    for (id, title) in buttons {
        check_len("button id", id, limits::BUTTON_ID)?;
        check_len("button title", title, limits::BUTTON_TITLE)?;
        list.push(json!({"type": "reply", "reply": {"id": id, "title": title}}));
    }
    unique("button", buttons.iter().map(|b| b.0))?;
    let mut interactive = Map::new();
    interactive.insert("type".to_owned(), json!("button"));
    frame(f, &mut interactive)?;
    interactive.insert("action".to_owned(), json!({"buttons": list}));
    Ok(OutMessage {
        kind: Kind::Buttons,
        template: None,
        payload: json!({"type": "interactive", "interactive": interactive}),
    })
}

/// One row of a list message.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub description: Option<&'a str>,
}

/// An interactive list: a button label and sections of rows.
pub fn list(
    f: &Frame<'_>,
    button: &str,
    sections: &[(Option<&str>, Vec<Row<'_>>)],
) -> Result<OutMessage, BuildError> {
    check_len("list button label", button, limits::LIST_BUTTON)?;
    check_count("list sections", sections.len(), limits::LIST_SECTIONS)?;
    let total: usize = sections.iter().map(|s| s.1.len()).sum();
    check_count("list rows (in total)", total, limits::LIST_ROWS)?;
    if sections.len() > 1 && sections.iter().any(|s| s.0.is_none()) {
        return Err(BuildError::Invalid(
            "every section needs a title when a list has more than one",
        ));
    }
    let mut out = Vec::new();
    for (title, rows) in sections {
        let mut section = Map::new();
        if let Some(t) = title {
            check_len("section title", t, limits::SECTION_TITLE)?;
            section.insert("title".to_owned(), json!(t));
        }
        let mut rs = Vec::new();
        for r in rows {
            check_len("row id", r.id, limits::ROW_ID)?;
            check_len("row title", r.title, limits::ROW_TITLE)?;
            let mut row = json!({"id": r.id, "title": r.title});
            if let Some(d) = r.description {
                check_len("row description", d, limits::ROW_DESCRIPTION)?;
                if let Value::Object(m) = &mut row {
                    m.insert("description".to_owned(), json!(d));
                }
            }
            rs.push(row);
        }
        section.insert("rows".to_owned(), Value::Array(rs));
        out.push(Value::Object(section));
    }
    unique(
        "row",
        sections.iter().flat_map(|s| s.1.iter().map(|r| r.id)),
    )?;
    let mut interactive = Map::new();
    interactive.insert("type".to_owned(), json!("list"));
    frame(f, &mut interactive)?;
    interactive.insert(
        "action".to_owned(),
        json!({"button": button, "sections": out}),
    );
    Ok(OutMessage {
        kind: Kind::List,
        template: None,
        payload: json!({"type": "interactive", "interactive": interactive}),
    })
}

/// A document already uploaded (by media id).
pub fn document(
    media_id: &str,
    filename: &str,
    caption: Option<&str>,
) -> Result<OutMessage, BuildError> {
    if media_id.is_empty() || !media_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(BuildError::Invalid("a media id is letters and digits"));
    }
    check_len("document filename", filename, limits::FILENAME)?;
    let mut doc = json!({"id": media_id, "filename": filename});
    if let (Some(c), Value::Object(m)) = (caption, &mut doc) {
        check_len("document caption", c, limits::CAPTION)?;
        m.insert("caption".to_owned(), json!(c));
    }
    Ok(OutMessage {
        kind: Kind::Document,
        template: None,
        payload: json!({"type": "document", "document": doc}),
    })
}

/// Marks an inbound message as read (shows the blue ticks).
pub fn mark_read(wamid: &str) -> Result<OutMessage, BuildError> {
    check_len("message id", wamid, 256)?;
    Ok(OutMessage {
        kind: Kind::MarkRead,
        template: None,
        payload: json!({"status": "read", "message_id": wamid}),
    })
}

/// The header of a template message.
#[derive(Debug, Clone)]
pub enum TemplateHeader<'a> {
    Text(&'a str),
    Document {
        media_id: &'a str,
        filename: &'a str,
    },
}

/// Body parameters: by position ({{1}}, {{2}}…) or by name ({{first_name}}).
#[derive(Debug, Clone)]
pub enum Params<'a> {
    Positional(Vec<&'a str>),
    Named(Vec<(&'a str, &'a str)>),
}

/// A template message.
#[derive(Debug, Clone)]
pub struct TemplateSpec<'a> {
    pub name: &'a str,
    pub language: &'a str,
    pub header: Option<TemplateHeader<'a>>,
    pub body: Params<'a>,
    /// Payloads of the template's quick-reply buttons, by button index.
    pub quick_replies: Vec<&'a str>,
}

pub fn template(t: &TemplateSpec<'_>) -> Result<OutMessage, BuildError> {
    let name_ok = !t.name.is_empty()
        && t.name.len() <= 512
        && t.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(BuildError::Invalid(
            "a template name is lowercase letters, digits and underscores",
        ));
    }
    check_len("template language", t.language, 16)?;
    let mut components = Vec::new();
    match &t.header {
        Some(TemplateHeader::Text(h)) => {
            check_len("header text", h, limits::HEADER_TEXT)?;
            components.push(json!({"type": "header", "parameters": [{"type": "text", "text": h}]}));
        }
        Some(TemplateHeader::Document { media_id, filename }) => {
            let doc = document(media_id, filename, None)?;
            components.push(json!({"type": "header", "parameters": [
                {"type": "document", "document": doc.payload.pointer("/document").cloned().unwrap_or(Value::Null)}
            ]}));
        }
        None => {}
    }
    let params: Vec<Value> = match &t.body {
        Params::Positional(p) => p
            .iter()
            .map(|v| {
                check_len("body parameter", v, limits::INTERACTIVE_BODY)
                    .map(|()| json!({"type": "text", "text": v}))
            })
            .collect::<Result<_, _>>()?,
        Params::Named(p) => p
            .iter()
            .map(|(k, v)| {
                let key_ok = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !key_ok {
                    return Err(BuildError::Invalid(
                        "a named parameter is lowercase letters, digits and underscores",
                    ));
                }
                check_len("body parameter", v, limits::INTERACTIVE_BODY)?;
                Ok(json!({"type": "text", "parameter_name": k, "text": v}))
            })
            .collect::<Result<_, _>>()?,
    };
    if !params.is_empty() {
        components.push(json!({"type": "body", "parameters": params}));
    }
    if t.quick_replies.len() > 10 {
        return Err(BuildError::TooMany {
            what: "template quick-reply buttons",
            limit: 10,
            got: t.quick_replies.len(),
        });
    }
    for (i, payload) in t.quick_replies.iter().enumerate() {
        check_len("quick-reply payload", payload, limits::BUTTON_ID)?;
        components.push(json!({
            "type": "button", "sub_type": "quick_reply", "index": i.to_string(),
            "parameters": [{"type": "payload", "payload": payload}]
        }));
    }
    let mut tpl = json!({"name": t.name, "language": {"code": t.language}});
    if let (false, Value::Object(m)) = (components.is_empty(), &mut tpl) {
        m.insert("components".to_owned(), Value::Array(components));
    }
    Ok(OutMessage {
        kind: Kind::Template,
        template: Some((t.name.to_owned(), t.language.to_owned())),
        payload: json!({"type": "template", "template": tpl}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &str) -> Frame<'_> {
        Frame {
            header: None,
            body,
            footer: None,
        }
    }

    #[test]
    fn four_buttons_name_the_limit() {
        let b = [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")];
        let e = buttons(&frame("pick"), &b).unwrap_err();
        assert_eq!(e.to_string(), "4 reply buttons given; Meta's limit is 3");
        let e = buttons(&frame("pick"), &[("a", "123456789012345678901")]).unwrap_err();
        assert!(e.to_string().contains("button title") && e.to_string().contains("20"));
        assert!(buttons(&frame("pick"), &[("a", "A"), ("a", "B")]).is_err());
        let ok = buttons(&frame("pick"), &b[..3]).unwrap();
        let v = ok.to_json(Some(&Recipient::phone("+4915550001").unwrap()));
        assert_eq!(v["interactive"]["action"]["buttons"][2]["reply"]["id"], "c");
        assert_eq!(v["to"], "+4915550001");
    }

    #[test]
    fn a_25_char_row_title_names_the_limit() {
        let rows = vec![Row {
            id: "r1",
            title: "1234567890123456789012345",
            description: None,
        }];
        let e = list(&frame("x"), "Choose", &[(None, rows)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row title is 25 characters long; Meta's limit is 24"
        );
        let many: Vec<Row<'_>> = (0..11)
            .map(|_| Row {
                id: "x",
                title: "t",
                description: None,
            })
            .collect();
        let e = list(&frame("x"), "Choose", &[(None, many)]).unwrap_err();
        assert!(e.to_string().contains("list rows"), "{e}");
        let long_desc = "d".repeat(73);
        let rows = vec![Row {
            id: "r",
            title: "t",
            description: Some(&long_desc),
        }];
        assert!(list(&frame("x"), "Choose", &[(None, rows)])
            .unwrap_err()
            .to_string()
            .contains("72"));
    }

    #[test]
    fn limits_on_bodies_and_footers() {
        assert!(text(&"é".repeat(4096)).is_ok());
        assert!(text(&"é".repeat(4097)).is_err());
        assert!(buttons(&frame(&"x".repeat(1025)), &[("a", "A")]).is_err());
        let f = Frame {
            header: None,
            body: "b",
            footer: Some(&"f".repeat(61)),
        };
        assert!(buttons(&f, &[("a", "A")])
            .unwrap_err()
            .to_string()
            .contains("footer"));
    }

    #[test]
    fn template_with_named_params_document_header_and_quick_replies() {
        let m = template(&TemplateSpec {
            name: "lab_result_ready",
            language: "de",
            header: Some(TemplateHeader::Document {
                media_id: "123",
                filename: "befund.pdf",
            }),
            body: Params::Named(vec![("first_name", "Zz")]),
            quick_replies: vec!["CONFIRM:1", "CANCEL:1"],
        })
        .unwrap();
        let v = m.to_json(Some(&Recipient::bsuid("US.13491208655302741918").unwrap()));
        assert_eq!(v["recipient"], "US.13491208655302741918");
        assert!(v.get("to").is_none());
        let c = &v["template"]["components"];
        assert_eq!(c[0]["parameters"][0]["document"]["id"], "123");
        assert_eq!(c[1]["parameters"][0]["parameter_name"], "first_name");
        assert_eq!(c[3]["index"], "1");
        assert!(template(&TemplateSpec {
            name: "Bad Name",
            language: "de",
            header: None,
            body: Params::Positional(vec![]),
            quick_replies: vec![],
        })
        .is_err());
    }

    #[test]
    fn recipients_are_checked_and_not_shown() {
        assert!(Recipient::phone("4915550001").is_err());
        assert!(Recipient::phone("+0123456789").is_err());
        assert!(Recipient::bsuid("US.").is_err());
        let r = Recipient::phone("+4915550001").unwrap();
        assert!(!format!("{r:?}").contains("4915"));
        let m = mark_read("wamid.X").unwrap();
        assert_eq!(m.to_json(None)["status"], "read");
        assert!(!format!("{:?}", text("ZZSECRET").unwrap()).contains("ZZSECRET"));
    }
}
