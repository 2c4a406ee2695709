//! The Cloud API client: hyper 1 over rustls (ring), pooled keep-alive
//! connections, connect and request timeouts, trust roots from the OS store
//! plus an optional extra CA file, optionally through an HTTP CONNECT proxy
//! (`super::proxy`). The token goes in `Authorization: Bearer`, or in the
//! header a Business Solution Provider names (`whatsapp.auth_header`).
//!
//! Meta's answers are classified here ([`ApiError::retryable`]), so the
//! outbox only decides what to do with a class. The token lives in a
//! [`Token`] whose `Debug` is redacted and whose bytes are zeroized.

use super::config::WhatsappConfig;
use super::proxy::Proxy;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use zeroize::Zeroizing;

/// Larger answers are not Meta's (the biggest is a template list page).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The bearer token. Never printed.
#[derive(Clone)]
pub struct Token(Arc<Zeroizing<String>>);

impl Token {
    pub fn new(text: &str) -> Self {
        Self(Arc::new(Zeroizing::new(text.trim().to_owned())))
    }

    /// Reads the token file (a trailing newline is ignored).
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| ClientError::Token(format!("cannot read {}: {e}", path.display())))?,
        );
        let token = Self::new(&text);
        if token.0.is_empty() || token.0.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ClientError::Token(format!(
                "{} does not hold one access token",
                path.display()
            )));
        }
        Ok(token)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("whatsapp token: {0}")]
    Token(String),
    #[error("whatsapp.extra_ca_file: {0}")]
    Ca(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{0}")]
    Proxy(String),
}

/// Why a call failed. `Display` carries Meta's code and message; Meta's
/// `details` may quote a phone number, so errors are sealed with their
/// item and logs show only [`ApiError::code`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("Meta error {code} (HTTP {http_status}): {message}")]
    Meta {
        http_status: u16,
        code: u32,
        subcode: Option<u32>,
        message: String,
        fbtrace_id: Option<String>,
    },
    #[error("HTTP {0} without a Meta error body")]
    Http(u16),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("connection: {0}")]
    Connect(String),
    #[error("unreadable answer: {0}")]
    Decode(String),
}

impl ApiError {
    /// Meta's error code, or a short class name, for logs and events.
    pub fn code(&self) -> String {
        match self {
            ApiError::Meta { code, .. } => code.to_string(),
            ApiError::Http(s) => format!("http-{s}"),
            ApiError::Timeout => "timeout".to_owned(),
            ApiError::Connect(_) => "connect".to_owned(),
            ApiError::Decode(_) => "decode".to_owned(),
        }
    }

    /// Worth trying again later: throttling, Meta's transient failures,
    /// 5xx, timeouts and connection errors. Everything else is permanent.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Meta {
                code, http_status, ..
            } => {
                matches!(
                    code,
                    1 | 2 | 4 | 80007 | 130429 | 131000 | 131016 | 131056 | 131057
                ) || (*http_status >= 500 && !is_permanent(*code))
            }
            ApiError::Http(s) => *s >= 500 || *s == 429 || *s == 408,
            ApiError::Timeout | ApiError::Connect(_) => true,
            // The request may have been accepted: retrying risks a
            // duplicate, which at-least-once allows.
            ApiError::Decode(_) => true,
        }
    }

    /// 190: the token expired or was revoked; nothing may be sent until
    /// it is replaced.
    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Meta { code: 190, .. })
    }

    /// Throttling (slow the whole sender down, not only this item).
    pub fn is_throttle(&self) -> bool {
        matches!(
            self,
            ApiError::Meta {
                code: 4 | 80007 | 130429,
                ..
            }
        )
    }
}

fn is_permanent(code: u32) -> bool {
    matches!(code, 131047 | 131026 | 131050 | 133010 | 368 | 190)
        || (132000..133000).contains(&code)
}

/// What Meta answered to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub wamid: String,
    /// The WhatsApp id Meta resolved the number to (may differ from it).
    pub wa_id: Option<String>,
}

/// A template on the account.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteTemplate {
    pub name: String,
    pub language: String,
    pub status: String,
    #[serde(default)]
    pub category: String,
}

use super::transport::{connect_error, http_for, Http};

#[derive(Clone)]
pub struct GraphClient {
    http: Http,
    base: String,
    version: String,
    phone_number_id: String,
    business_account_id: Option<String>,
    token: Arc<RwLock<Option<Token>>>,
    auth_header: Option<HeaderName>,
    proxy: Option<Proxy>,
    timeout: Duration,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    pub fn new(config: &WhatsappConfig, token: Option<Token>) -> Result<Self, ClientError> {
        let base: hyper::Uri = config
            .api_base_url
            .parse()
            .map_err(|_| ClientError::Tls("whatsapp.api_base_url is not a URL".to_owned()))?;
        let (http, proxy) = http_for(config, &base)?;
        if let Some(p) = &proxy {
            tracing::info!(proxy = %p.describe(), "WhatsApp Cloud API calls go through a proxy");
        }
        Ok(Self {
            http,
            auth_header: config.auth_header.clone(),
            proxy,
            base: config.api_base_url.clone(),
            version: config.api_version.clone(),
            phone_number_id: config.phone_number_id.clone(),
            business_account_id: config.business_account_id.clone(),
            token: Arc::new(RwLock::new(token)),
            timeout: config.request_timeout,
        })
    }

    /// How calls leave: `direct`, or through which proxy (and which setting
    /// chose it).
    pub fn route(&self) -> String {
        self.proxy.as_ref().map_or_else(
            || "direct".to_owned(),
            |p| format!("through the proxy {}", p.describe()),
        )
    }

    /// Replaces the token (after the token file changed).
    pub fn set_token(&self, token: Token) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}/{}", self.base, self.version, path)
    }

    /// `POST /{phone-number-id}/messages`.
    pub async fn send(&self, message: &Value) -> Result<Sent, ApiError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            contacts: Vec<Contact>,
            #[serde(default)]
            messages: Vec<Id>,
        }
        #[derive(Deserialize)]
        struct Contact {
            wa_id: Option<String>,
        }
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let body =
            Bytes::from(serde_json::to_vec(message).map_err(|e| ApiError::Decode(e.to_string()))?);
        let url = self.url(&format!("{}/messages", self.phone_number_id));
        let v = self
            .call(
                Method::POST,
                &url,
                Some(("application/json".to_owned(), body)),
            )
            .await?;
        let a: Answer = serde_json::from_value(v).map_err(|e| ApiError::Decode(e.to_string()))?;
        let wamid = a
            .messages
            .into_iter()
            .next()
            .map(|m| m.id)
            .unwrap_or_default();
        Ok(Sent {
            wamid,
            wa_id: a.contacts.into_iter().next().and_then(|c| c.wa_id),
        })
    }

    /// `POST /{phone-number-id}/media` (multipart); returns the media id.
    pub async fn upload_media(
        &self,
        bytes: &[u8],
        mime_type: &str,
        filename: &str,
    ) -> Result<String, ApiError> {
        let boundary = format!("clinic-relay-{:016x}", bytes.len() as u64 ^ 0x5bd1_e995);
        let safe_name: String = filename
            .chars()
            .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
            .collect();
        let mut body = Vec::with_capacity(bytes.len() + 512);
        for (name, value) in [("messaging_product", "whatsapp"), ("type", mime_type)] {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{safe_name}\"\r\nContent-Type: {mime_type}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = self.url(&format!("{}/media", self.phone_number_id));
        let ct = format!("multipart/form-data; boundary={boundary}");
        let v = self
            .call(Method::POST, &url, Some((ct, Bytes::from(body))))
            .await?;
        at(&v, "/id")
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Decode("no media id".to_owned()))
    }

    /// `DELETE /{media-id}`.
    pub async fn delete_media(&self, media_id: &str) -> Result<(), ApiError> {
        if !media_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ApiError::Decode("not a media id".to_owned()));
        }
        self.call(Method::DELETE, &self.url(media_id), None)
            .await
            .map(|_| ())
    }

    /// `GET /{waba-id}/message_templates`, every page.
    pub async fn templates(&self) -> Result<Vec<RemoteTemplate>, ApiError> {
        let Some(waba) = &self.business_account_id else {
            return Err(ApiError::Decode(
                "whatsapp.business_account_id is not configured".to_owned(),
            ));
        };
        let mut url = self.url(&format!(
            "{waba}/message_templates?fields=name,language,status,category&limit=100"
        ));
        let mut out = Vec::new();
        // A bounded number of pages: a runaway `next` cannot loop forever.
        for _ in 0..100 {
            let v = self.call(Method::GET, &url, None).await?;
            let page: Vec<RemoteTemplate> = serde_json::from_value(at(&v, "/data").clone())
                .map_err(|e| ApiError::Decode(e.to_string()))?;
            out.extend(page);
            match at(&v, "/paging/next").as_str() {
                Some(next) if next.starts_with(&self.base) => url = next.to_owned(),
                _ => break,
            }
        }
        Ok(out)
    }

    /// `POST /{waba-id}/message_templates` (submit a definition).
    pub async fn create_template(&self, definition: &Value) -> Result<Value, ApiError> {
        let Some(waba) = &self.business_account_id else {
            return Err(ApiError::Decode(
                "whatsapp.business_account_id is not configured".to_owned(),
            ));
        };
        let body = Bytes::from(definition.to_string());
        self.call(
            Method::POST,
            &self.url(&format!("{waba}/message_templates")),
            Some(("application/json".to_owned(), body)),
        )
        .await
    }

    /// `GET /{waba-id}/message_templates?limit=1`: is the business account
    /// there for this token (`whatsapp check`)?
    pub async fn business_account(&self) -> Result<(), ApiError> {
        let Some(waba) = &self.business_account_id else {
            return Err(ApiError::Decode(
                "whatsapp.business_account_id is not configured".to_owned(),
            ));
        };
        let url = self.url(&format!("{waba}/message_templates?fields=name&limit=1"));
        self.call(Method::GET, &url, None).await.map(|_| ())
    }

    /// `GET /{phone-number-id}` with the fields `whatsapp check` shows.
    pub async fn phone_number(&self) -> Result<Value, ApiError> {
        let url = self.url(&format!(
            "{}?fields=verified_name,display_phone_number,quality_rating,code_verification_status,throughput",
            self.phone_number_id
        ));
        self.call(Method::GET, &url, None).await
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<(String, Bytes)>,
    ) -> Result<Value, ApiError> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some((name, value)) = self.auth()? {
            req = req.header(name, value);
        }
        let (ct, bytes) = body.unwrap_or_default();
        if !ct.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| ApiError::Connect(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| connect_error(&e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| ApiError::Connect(format!("answer: {e}")))?
                .to_bytes();
            Ok::<_, ApiError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ApiError::Timeout)??;
        classify(status, &body)
    }

    /// `GET /{media-id}`: a fresh download URL (it lives 5 minutes) and
    /// what Meta says about the file.
    pub async fn media_info(&self, media_id: &str) -> Result<MediaInfo, ApiError> {
        if media_id.is_empty() || !media_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ApiError::Decode("not a media id".to_owned()));
        }
        let v = self.call(Method::GET, &self.url(media_id), None).await?;
        serde_json::from_value(v).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// Downloads a media URL from [`GraphClient::media_info`] with the
    /// bearer token, reading at most `max` bytes: `Ok(None)` if the file is
    /// larger. The token goes only to an `https` URL or to the configured
    /// base (a loopback simulator).
    pub async fn download_media(
        &self,
        url: &str,
        max: u64,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, ApiError> {
        if !(url.starts_with("https://") || url.starts_with(&format!("{}/", self.base))) {
            return Err(ApiError::Decode(
                "the media URL is neither https nor the configured API".to_owned(),
            ));
        }
        let mut req = Request::builder().method(Method::GET).uri(url);
        if let Some((name, value)) = self.auth()? {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| ApiError::Connect(e.to_string()))?;
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| connect_error(&e))?;
            let status = resp.status();
            if !status.is_success() {
                let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                    .collect()
                    .await
                    .map_err(|e| ApiError::Connect(format!("answer: {e}")))?
                    .to_bytes();
                return classify(status, &body).map(|_| None);
            }
            let declared = resp
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Ok(None);
            }
            match Limited::new(resp.into_body(), limit).collect().await {
                // Without a copy where the buffer is not shared (a copy of
                // up to `max` bytes would double the peak).
                Ok(body) => Ok(Some(Zeroizing::new(Vec::from(body.to_bytes())))),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(None),
                Err(e) => Err(ApiError::Connect(format!("answer: {e}"))),
            }
        };
        tokio::time::timeout(self.timeout.saturating_mul(3), exchange)
            .await
            .map_err(|_| ApiError::Timeout)?
    }

    /// The token's header, the same for every call and media download
    /// (`Authorization: Bearer`, or a BSP's `whatsapp.auth_header`); marked
    /// sensitive so that hyper never logs it.
    fn auth(&self) -> Result<Option<(HeaderName, HeaderValue)>, ApiError> {
        let token = self.token.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(t) = token else { return Ok(None) };
        let (name, value) = match &self.auth_header {
            Some(name) => (name.clone(), HeaderValue::from_str(t.0.as_str())),
            None => (
                hyper::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", t.0.as_str())),
            ),
        };
        let mut value = value
            .map_err(|_| ApiError::Connect("the token is not usable in a header".to_owned()))?;
        value.set_sensitive(true);
        Ok(Some((name, value)))
    }
}

/// What `GET /{media-id}` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct MediaInfo {
    pub url: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// Meta sends a number (or a string of digits).
    #[serde(default)]
    pub file_size: Option<Value>,
}

impl MediaInfo {
    pub fn size(&self) -> Option<u64> {
        match &self.file_size {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
    }
}

fn classify(status: StatusCode, body: &[u8]) -> Result<Value, ApiError> {
    let parsed = serde_json::from_slice::<Value>(body);
    if status.is_success() {
        return parsed.map_err(|e| ApiError::Decode(e.to_string()));
    }
    let Ok(v) = parsed else {
        return Err(ApiError::Http(status.as_u16()));
    };
    let e = at(&v, "/error");
    let Some(code) = at(e, "/code").as_u64() else {
        return Err(ApiError::Http(status.as_u16()));
    };
    let details = at(e, "/error_data/details").as_str().unwrap_or_default();
    let mut message = at(e, "/message").as_str().unwrap_or_default().to_owned();
    if !details.is_empty() && details != message {
        message = format!("{message} ({details})");
    }
    Err(ApiError::Meta {
        http_status: status.as_u16(),
        code: u32::try_from(code).unwrap_or(u32::MAX),
        subcode: at(e, "/error_subcode")
            .as_u64()
            .and_then(|s| u32::try_from(s).ok()),
        message: message.chars().take(500).collect(),
        fbtrace_id: at(e, "/fbtrace_id").as_str().map(str::to_owned),
    })
}

/// A JSON pointer lookup that yields null when absent (never panics).
pub(crate) fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_meta_codes() {
        let meta = |code, status| ApiError::Meta {
            http_status: status,
            code,
            subcode: None,
            message: String::new(),
            fbtrace_id: None,
        };
        for c in [4, 80007, 130429, 131000, 131016, 131056, 131057] {
            assert!(meta(c, 400).retryable(), "{c}");
        }
        for c in [131047, 131026, 131050, 132000, 132001, 133010, 368, 190] {
            assert!(!meta(c, 400).retryable(), "{c}");
        }
        assert!(meta(190, 401).is_auth());
        assert!(!meta(132001, 500).retryable());
        assert!(ApiError::Http(502).retryable());
        assert!(!ApiError::Http(404).retryable());
        assert!(ApiError::Timeout.retryable());
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new("EAAGsecretsecret\n");
        assert_eq!(format!("{t:?}"), "Token([redacted])");
    }
}
