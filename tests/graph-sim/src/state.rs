//! What the simulator remembers: recorded requests, injected failures,
//! limits, uploaded media and the account's templates.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// One request as it arrived (for assertions).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/v21.0/1234/messages`.
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// The HTTP status the simulator answered.
    pub status: u16,
    /// Every header as received (names lower-case).
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// The body as JSON (null if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value (`name` lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Which requests an injected failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Messages,
    Media,
    Templates,
    PhoneNumber,
    Any,
    /// The media download URL (`GET` of what `GET /{media-id}` answered).
    Download,
}

/// A Meta error answered instead of the real response, `times` times.
#[derive(Debug, Clone)]
pub struct Injection {
    pub route: Route,
    pub http_status: u16,
    pub code: u32,
    pub subcode: Option<u32>,
    pub message: String,
    pub times: usize,
    /// Only for messages to this recipient (`to` or `recipient`).
    pub recipient: Option<String>,
}

impl Injection {
    /// A Meta error with the HTTP status Meta uses for it.
    pub fn code(code: u32) -> Self {
        let (http_status, message) = meta_error(code);
        Self {
            route: Route::Messages,
            http_status,
            code,
            subcode: None,
            message: message.to_owned(),
            times: 1,
            recipient: None,
        }
    }

    /// A bare HTTP status (5xx) with a generic error body.
    pub fn http(status: u16) -> Self {
        Self {
            route: Route::Messages,
            http_status: status,
            code: 1,
            subcode: None,
            message: "An unknown error occurred".to_owned(),
            times: 1,
            recipient: None,
        }
    }

    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    pub fn route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    pub fn for_recipient(mut self, r: &str) -> Self {
        self.recipient = Some(r.to_owned());
        self
    }
}

/// Meta's HTTP status and message for the codes the simulator knows.
pub fn meta_error(code: u32) -> (u16, &'static str) {
    match code {
        190 => (401, "Error validating access token: Session has expired"),
        4 => (400, "(#4) Application request limit reached"),
        80007 => (400, "(#80007) Rate limit issue"),
        130429 => (400, "(#130429) Rate limit hit"),
        131056 => (
            400,
            "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        ),
        131047 => (400, "(#131047) Re-engagement message"),
        131026 => (400, "(#131026) Message undeliverable"),
        131050 => (
            400,
            "(#131050) User has stopped marketing messages from this business",
        ),
        132000 => (
            400,
            "(#132000) Number of parameters does not match the expected number of params",
        ),
        132001 => (
            400,
            "(#132001) Template name does not exist in the translation",
        ),
        133010 => (400, "(#133010) Account not registered"),
        368 => (400, "(#368) Temporarily blocked for policies violations"),
        131000 => (500, "(#131000) Something went wrong"),
        131016 => (503, "(#131016) Service unavailable"),
        131057 => (503, "(#131057) Account in maintenance mode"),
        100 => (400, "(#100) Invalid parameter"),
        _ => (400, "An error occurred"),
    }
}

/// The JSON body of a Meta error.
pub fn error_body(code: u32, subcode: Option<u32>, message: &str, trace: u64) -> Value {
    // Meta answers OAuthException for auth, rate-limit and parameter errors alike.
    let kind = "OAuthException";
    let mut error = json!({
        "message": message,
        "type": kind,
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": message},
        "fbtrace_id": format!("Asim{trace:012}"),
    });
    if let Some(sub) = subcode {
        error["error_subcode"] = json!(sub);
    }
    json!({ "error": error })
}

/// A template on the simulated account.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub language: String,
    /// APPROVED, PENDING, REJECTED, PAUSED, DISABLED.
    pub status: String,
    /// UTILITY, MARKETING, AUTHENTICATION.
    pub category: String,
}

impl Template {
    pub fn approved(name: &str, language: &str) -> Self {
        Self {
            name: name.to_owned(),
            language: language.to_owned(),
            status: "APPROVED".to_owned(),
            category: "UTILITY".to_owned(),
        }
    }
}

pub struct Media {
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

impl Media {
    /// Hex SHA-256 of the bytes, as `GET /{media-id}` reports it.
    pub fn sha256(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.bytes).as_ref())
    }
}

#[derive(Default)]
pub struct State {
    pub recorded: Vec<Recorded>,
    pub injections: VecDeque<Injection>,
    /// Required bearer token (None: any or none accepted).
    pub token: Option<String>,
    /// The header the token is expected in, bare (None: Authorization: Bearer).
    pub token_header: Option<String>,
    /// The one phone number id that exists (None: any).
    pub phone_number_id: Option<String>,
    /// Messages per second before 130429 (None: unlimited).
    pub rate_limit: Option<u32>,
    pub window: Option<(Instant, u32)>,
    /// At most `n` messages to one recipient per `window` before 131056.
    pub pair_limit: Option<(u32, Duration)>,
    pub pair_sent: HashMap<String, VecDeque<Instant>>,
    /// The `wa_id` Meta answers for an input (default: the digits of it).
    pub wa_ids: BTreeMap<String, String>,
    pub media: BTreeMap<String, Media>,
    pub templates: Vec<Template>,
    pub next_id: u64,
    /// Delay before every answer (to provoke client timeouts).
    pub delay: Option<Duration>,
    pub phone: PhoneFields,
    /// Every message answered 200, for status webhooks.
    pub accepted: Vec<Accepted>,
    /// Wait this long after accepting a message before answering (the
    /// answer is slow or lost: Meta has the message, the sender does not
    /// know yet).
    pub answer_delay: Option<std::time::Duration>,
    /// `http://127.0.0.1:PORT`: where media download URLs point.
    pub base: String,
}

/// What `GET /{phone-number-id}` answers.
#[derive(Debug, Clone)]
pub struct PhoneFields {
    pub verified_name: String,
    pub display_phone_number: String,
    pub quality_rating: String,
}

impl Default for PhoneFields {
    fn default() -> Self {
        Self {
            verified_name: "Sim Clinic".to_owned(),
            display_phone_number: "+1 555-0100".to_owned(),
            quality_rating: "GREEN".to_owned(),
        }
    }
}

impl State {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The first injection that matches, consumed once.
    pub fn take_injection(&mut self, route: Route, recipient: Option<&str>) -> Option<Injection> {
        let pos = self.injections.iter().position(|i| {
            (i.route == route || i.route == Route::Any)
                && match (&i.recipient, recipient) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want == got,
                    (Some(_), None) => false,
                }
        })?;
        let inj = self.injections.get_mut(pos)?;
        let out = inj.clone();
        inj.times = inj.times.saturating_sub(1);
        if inj.times == 0 {
            self.injections.remove(pos);
        }
        Some(out)
    }

    /// Whether a message now exceeds the simulator's own rate limit.
    pub fn over_rate(&mut self, now: Instant) -> bool {
        let Some(limit) = self.rate_limit else {
            return false;
        };
        let (start, count) = self.window.get_or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count > limit
    }

    /// Whether a message to `recipient` now exceeds the pair limit.
    pub fn over_pair(&mut self, recipient: &str, now: Instant) -> bool {
        let Some((n, window)) = self.pair_limit else {
            return false;
        };
        let sent = self.pair_sent.entry(recipient.to_owned()).or_default();
        while sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            sent.pop_front();
        }
        if sent.len() >= n as usize {
            return true;
        }
        sent.push_back(now);
        false
    }
}

/// A message the simulator accepted (answered 200, or will once its
/// answer delay is over).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub wamid: String,
    pub wa_id: Option<String>,
    /// The sender's `biz_opaque_callback_data`, echoed in status webhooks
    /// as Meta does.
    pub callback: Option<String>,
}
