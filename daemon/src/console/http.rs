//! HTTP plumbing of the console: response headers (the security set on
//! every response), bounded form bodies, cookies.

use crate::api::ApiBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;

/// The API's body: a whole page, or a stream (the live updates).
pub type Resp = Response<ApiBody>;

/// Forms are small: a reply is at most 4096 characters (×4 bytes, encoded).
pub const MAX_BODY: usize = 64 * 1024;
/// Headers, request line included.
pub const MAX_HEADERS: usize = 16 * 1024;

/// No script runs but our own files; nothing may frame us; forms post only
/// to us.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn set(resp: &mut Resp, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

/// The headers every response carries. `tls`: HSTS (never on plain HTTP,
/// where browsers ignore it anyway). `private`: not stored by any cache
/// (every page that shows patient data or a CSRF token).
pub fn secure(mut resp: Resp, tls: bool, private: bool) -> Resp {
    set(&mut resp, "content-security-policy", CSP);
    set(&mut resp, "x-frame-options", "DENY");
    set(&mut resp, "x-content-type-options", "nosniff");
    set(&mut resp, "referrer-policy", "no-referrer");
    set(&mut resp, "cross-origin-opener-policy", "same-origin");
    if tls {
        set(&mut resp, "strict-transport-security", "max-age=31536000");
    }
    set(
        &mut resp,
        "cache-control",
        if private { "no-store" } else { "max-age=3600" },
    );
    resp
}

pub fn html(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(ApiBody::Full(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    set(&mut r, "content-type", "text/html; charset=utf-8");
    r
}

pub fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(ApiBody::Full(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *r.status_mut() = status;
    set(&mut r, "content-type", "text/plain; charset=utf-8");
    r
}

/// A `text/event-stream` fed by `rx`.
pub fn event_stream(rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Resp {
    let mut r = Response::new(ApiBody::Stream(rx));
    set(&mut r, "content-type", "text/event-stream");
    r
}

/// 303 See Other: after a POST, the browser GETs `location`.
pub fn redirect(location: &str) -> Resp {
    let mut r = Response::new(ApiBody::Full(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::SEE_OTHER;
    set(&mut r, "location", location);
    r
}

pub fn add_cookie(resp: &mut Resp, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().append(hyper::header::SET_COOKIE, v);
    }
}

/// The value of cookie `name`, if the request has it.
pub fn cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    NotAForm,
    Read,
}

/// Reads an `application/x-www-form-urlencoded` body of at most
/// [`MAX_BODY`] bytes into its fields (a repeated field: the first).
pub async fn form(req: Request<Incoming>) -> Result<HashMap<String, String>, BodyError> {
    let is_form = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(BodyError::NotAForm);
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge
            } else {
                BodyError::Read
            }
        })?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| BodyError::NotAForm)?;
    let mut fields = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (
            decode(k).ok_or(BodyError::NotAForm)?,
            decode(v).ok_or(BodyError::NotAForm)?,
        );
        fields.entry(k).or_insert(v);
    }
    Ok(fields)
}

/// Form decoding: `+` is a space, `%XX` a byte; the result must be UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_html_escapes() {
        assert_eq!(decode("a+b%2B%C3%A4").as_deref(), Some("a b+ä"));
        assert_eq!(decode("%ZZ"), None);
        assert_eq!(decode("%C3"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(
            esc("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }
}
