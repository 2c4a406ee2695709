//! The simulated Graph API endpoints.

use crate::state::{error_body, Media, Recorded, Route, State, Template};
use serde_json::{json, Value};
use tokio::time::Instant;

/// An answer: HTTP status and JSON body.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// Raw bytes and their content type instead of `body` (a download).
    pub raw: Option<(Vec<u8>, String)>,
}

impl Answer {
    fn with_raw(mut self, bytes: Vec<u8>, content_type: &str) -> Self {
        self.raw = Some((bytes, content_type.to_owned()));
        self
    }
}

fn ok(body: Value) -> Answer {
    Answer {
        status: 200,
        body,
        raw: None,
    }
}

fn error(state: &mut State, status: u16, code: u32, subcode: Option<u32>, message: &str) -> Answer {
    let trace = state.next_id();
    Answer {
        status,
        body: error_body(code, subcode, message, trace),
        raw: None,
    }
}

/// The request, reduced to what the routes need.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// Every header, names lower-case.
    pub headers: &'a [(String, String)],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn handle(state: &mut State, req: &Request<'_>) -> Answer {
    let answer = route(state, req);
    state.recorded.push(Recorded {
        method: req.method.to_owned(),
        path: req.path.to_owned(),
        authorization: req.authorization.map(str::to_owned),
        content_type: req.content_type.map(str::to_owned),
        body: req.body.to_vec(),
        status: answer.status,
        headers: req.headers.to_vec(),
    });
    answer
}

fn route(state: &mut State, req: &Request<'_>) -> Answer {
    let path = req.path.split('?').next().unwrap_or_default();
    if path == DOWNLOAD_PATH {
        return download(state, req);
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (version, rest) = match parts.split_first() {
        Some((v, rest)) if v.starts_with('v') => (*v, rest),
        _ => {
            return error(state, 400, 2500, None, "Unknown path components");
        }
    };
    let _ = version;
    if let Some(token) = state.token.clone() {
        let (got, expected) = match &state.token_header {
            Some(name) => (req.header(name), token),
            None => (req.authorization, format!("Bearer {token}")),
        };
        if got != Some(expected.as_str()) {
            let (status, message) = crate::state::meta_error(190);
            return error(state, status, 190, Some(463), message);
        }
    }
    match (req.method, rest) {
        ("POST", [_phone, "messages"]) => messages(state, req.body),
        ("POST", [_phone, "media"]) => upload(state, req),
        ("GET", [waba, "message_templates"]) => templates(state, waba),
        ("POST", [_waba, "message_templates"]) => create_template(state, req.body),
        ("GET", [id]) if state.media.contains_key(*id) => media_info(state, id),
        ("DELETE", [id]) => delete_media(state, id),
        ("GET", [id]) => phone(state, id),
        _ => error(state, 400, 100, Some(33), "Unsupported request"),
    }
}

fn injected(state: &mut State, route: Route, recipient: Option<&str>) -> Option<Answer> {
    let inj = state.take_injection(route, recipient)?;
    Some(error(
        state,
        inj.http_status,
        inj.code,
        inj.subcode,
        &inj.message,
    ))
}

fn messages(state: &mut State, body: &[u8]) -> Answer {
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        return error(state, 400, 100, None, "(#100) Invalid JSON");
    };
    if msg["messaging_product"] != "whatsapp" {
        return error(
            state,
            400,
            100,
            None,
            "(#100) The parameter messaging_product is required.",
        );
    }
    let to = msg["to"].as_str().map(str::to_owned);
    let recipient = msg["recipient"].as_str().map(str::to_owned);
    // Mark-as-read has neither: it names a message id.
    if msg["status"] == "read" {
        if let Some(a) = injected(state, Route::Messages, None) {
            return a;
        }
        return ok(json!({"success": true}));
    }
    let Some(input) = to.clone().or(recipient.clone()) else {
        return error(
            state,
            400,
            100,
            None,
            "(#100) The parameter to is required.",
        );
    };
    if let Some(a) = injected(state, Route::Messages, Some(&input)) {
        return a;
    }
    let now = Instant::now();
    if state.over_rate(now) {
        let (s, m) = crate::state::meta_error(130429);
        return error(state, s, 130429, None, m);
    }
    if state.over_pair(&input, now) {
        let (s, m) = crate::state::meta_error(131056);
        return error(state, s, 131056, None, m);
    }
    if msg["type"] == "template" {
        let name = msg["template"]["name"].as_str().unwrap_or_default();
        let lang = msg["template"]["language"]["code"]
            .as_str()
            .unwrap_or_default();
        let approved = state
            .templates
            .iter()
            .any(|t| t.name == name && t.language == lang && t.status == "APPROVED");
        if !state.templates.is_empty() && !approved {
            return error(state, 400, 132001, None, crate::state::meta_error(132001).1);
        }
    }
    let id = state.next_id();
    let wamid = format!("wamid.SIM{id:020}");
    let contact = match (&to, &recipient) {
        (Some(to), _) => {
            let wa_id = state
                .wa_ids
                .get(to)
                .cloned()
                .unwrap_or_else(|| to.chars().filter(char::is_ascii_digit).collect());
            json!({"input": to, "wa_id": wa_id})
        }
        (None, Some(r)) => json!({"input": r, "user_id": r}),
        (None, None) => json!({}),
    };
    let wa_id = contact["wa_id"].as_str().map(str::to_owned);
    let callback = msg["biz_opaque_callback_data"].as_str().map(str::to_owned);
    state.accepted.push(crate::state::Accepted {
        wamid: wamid.clone(),
        wa_id,
        callback,
    });
    ok(json!({
        "messaging_product": "whatsapp",
        "contacts": [contact],
        "messages": [{"id": wamid}],
    }))
}

fn upload(state: &mut State, req: &Request<'_>) -> Answer {
    if let Some(a) = injected(state, Route::Media, None) {
        return a;
    }
    let boundary = req
        .content_type
        .and_then(|ct| ct.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_owned());
    let Some(boundary) = boundary else {
        return error(state, 400, 100, None, "(#100) multipart/form-data required");
    };
    let parts = multipart(req.body, &boundary);
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    if field("messaging_product").map(|p| p.body.as_slice()) != Some(b"whatsapp".as_slice()) {
        return error(
            state,
            400,
            100,
            None,
            "(#100) The parameter messaging_product is required.",
        );
    }
    let Some(file) = field("file") else {
        return error(
            state,
            400,
            100,
            None,
            "(#100) The parameter file is required.",
        );
    };
    let mime_type = field("type")
        .map(|p| String::from_utf8_lossy(&p.body).into_owned())
        .or_else(|| file.content_type.clone())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let bytes = file.body.clone();
    let id = format!("{}", 900_000_000_000u64 + state.next_id());
    state.media.insert(id.clone(), Media { mime_type, bytes });
    ok(json!({ "id": id }))
}

fn media_info(state: &mut State, id: &str) -> Answer {
    let Some(m) = state.media.get(id) else {
        return error(state, 404, 100, Some(33), "Unsupported get request");
    };
    let body = json!({
        "messaging_product": "whatsapp",
        // Meta's URL is on lookaside.fbsbx.com; the simulator serves it
        // itself, on the same path, with the same bearer token required.
        "url": format!("{}{DOWNLOAD_PATH}?mid={id}", state.base),
        "sha256": m.sha256(),
        "mime_type": m.mime_type,
        "file_size": m.bytes.len(),
        "id": id,
    });
    ok(body)
}

fn delete_media(state: &mut State, id: &str) -> Answer {
    if let Some(a) = injected(state, Route::Media, None) {
        return a;
    }
    if state.media.remove(id).is_some() {
        ok(json!({"success": true}))
    } else {
        error(state, 404, 100, Some(33), "Unsupported delete request")
    }
}

fn templates(state: &mut State, waba: &str) -> Answer {
    if let Some(a) = injected(state, Route::Templates, None) {
        return a;
    }
    let data: Vec<Value> = state
        .templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "name": t.name,
                "language": t.language,
                "status": t.status,
                "category": t.category,
                "id": format!("{waba}{i:04}"),
                "components": [],
            })
        })
        .collect();
    ok(json!({ "data": data, "paging": {"cursors": {"before": "", "after": ""}} }))
}

fn create_template(state: &mut State, body: &[u8]) -> Answer {
    let Ok(t) = serde_json::from_slice::<Value>(body) else {
        return error(state, 400, 100, None, "(#100) Invalid JSON");
    };
    let (Some(name), Some(language)) = (t["name"].as_str(), t["language"].as_str()) else {
        return error(
            state,
            400,
            100,
            None,
            "(#100) name and language are required",
        );
    };
    // An injection for Route::Templates with a "recipient" fails the
    // submission of the template of that name.
    if let Some(a) = injected(state, Route::Templates, Some(name)) {
        return a;
    }
    if state
        .templates
        .iter()
        .any(|t| t.name == name && t.language == language)
    {
        return error(
            state,
            400,
            100,
            Some(2_388_024),
            "Content in this language already exists",
        );
    }
    let category = t["category"].as_str().unwrap_or("UTILITY").to_owned();
    state.templates.push(Template {
        name: name.to_owned(),
        language: language.to_owned(),
        status: "PENDING".to_owned(),
        category: category.clone(),
    });
    let id = state.next_id();
    ok(json!({"id": format!("{id}"), "status": "PENDING", "category": category}))
}

fn phone(state: &mut State, id: &str) -> Answer {
    if let Some(a) = injected(state, Route::PhoneNumber, None) {
        return a;
    }
    if state
        .phone_number_id
        .as_deref()
        .is_some_and(|known| known != id)
    {
        let message = format!("Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation.");
        return error(state, 400, 100, Some(33), &message);
    }
    let p = state.phone.clone();
    ok(json!({
        "verified_name": p.verified_name,
        "display_phone_number": p.display_phone_number,
        "quality_rating": p.quality_rating,
        "code_verification_status": "VERIFIED",
        "platform_type": "CLOUD_API",
        "throughput": {"level": "STANDARD"},
        "id": id,
    }))
}

struct Part {
    name: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A small multipart/form-data reader (enough for the uploads the client
/// makes: a few text fields and one file).
fn multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(start) = find(rest, delim.as_bytes()) {
        rest = &rest[start + delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let rest_trim = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        let Some(head_end) = find(rest_trim, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest_trim[..head_end]).into_owned();
        let content = &rest_trim[head_end + 4..];
        let end = find(content, format!("\r\n{delim}").as_bytes()).unwrap_or(content.len());
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_owned();
        let content_type = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        });
        out.push(Part {
            name,
            content_type,
            body: content[..end].to_vec(),
        });
        rest = &content[end..];
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where a media download URL points (Meta: lookaside.fbsbx.com).
const DOWNLOAD_PATH: &str = "/whatsapp_business/attachments/";

/// `GET {url}` of a media: the bytes, with the bearer token required (and
/// the injections of [`Route::Download`]).
fn download(state: &mut State, req: &Request<'_>) -> Answer {
    if let Some(token) = state.token.clone() {
        let (got, expected) = match &state.token_header {
            Some(name) => (req.header(name), token),
            None => (req.authorization, format!("Bearer {token}")),
        };
        if got != Some(expected.as_str()) {
            let (status, message) = crate::state::meta_error(190);
            return error(state, status, 190, Some(463), message);
        }
    }
    if let Some(a) = injected(state, Route::Download, None) {
        return a;
    }
    let id = req
        .path
        .split_once("mid=")
        .map(|(_, rest)| rest.split('&').next().unwrap_or_default())
        .unwrap_or_default();
    match state.media.get(id) {
        Some(m) => Answer {
            status: 200,
            body: Value::Null,
            raw: None,
        }
        .with_raw(m.bytes.clone(), &m.mime_type),
        None => error(state, 404, 100, Some(33), "Unsupported get request"),
    }
}
