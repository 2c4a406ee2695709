//! A simulator of the WhatsApp Cloud API (Meta's Graph API) on loopback, for
//! the daemon's tests, the demo and clinic IT trying a configuration.
//!
//! It answers `POST /{ver}/{phone-id}/messages`, `POST /{ver}/{phone-id}/media`
//! (multipart), `GET`/`DELETE /{ver}/{media-id}`,
//! `GET`/`POST /{ver}/{waba-id}/message_templates` and `GET /{ver}/{phone-id}`
//! with Meta's success and error shapes, records every request, and can be
//! told to fail: injected errors per code or HTTP status, its own rate limit
//! (130429), the pair limit (131056), a required token (190), a delay, and
//! refusing connections altogether (the listening socket is closed). It also
//! delivers webhooks back the way Meta does ([`webhooks`]): status updates
//! for what it accepted, inbound messages, signed, shuffled, duplicated and
//! batched on request.

mod routes;
mod state;
pub mod webhooks;

pub use state::{meta_error, Accepted, Injection, PhoneFields, Recorded, Route, Template};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use state::State;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Larger bodies are refused (Meta's media limit is 100 MB; tests need less).
const MAX_BODY: usize = 32 << 20;

struct Shared {
    state: Mutex<State>,
    /// Bumped at every recorded request (tests wait on it).
    changed: Notify,
}

/// A running simulator. Dropping it stops it.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// true: refuse connections (listener closed, open connections dropped).
    refuse: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl Sim {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Sim> {
        Self::bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Starts on `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Sim> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                base: format!("http://{addr}"),
                ..State::default()
            }),
            changed: Notify::new(),
        });
        let (refuse, refuse_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve(
            Some(listener),
            addr,
            shared.clone(),
            refuse_rx,
            stop_rx,
        ));
        Ok(Sim {
            addr,
            shared,
            refuse,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `whatsapp.api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().recorded.clone()
    }

    /// The `POST …/messages` requests that were answered 200.
    pub fn sent_messages(&self) -> Vec<serde_json::Value> {
        self.state()
            .recorded
            .iter()
            .filter(|r| r.status == 200 && r.method == "POST" && r.path.ends_with("/messages"))
            .map(Recorded::json)
            .collect()
    }

    /// Resolves when `pred` holds over the recorded requests, or after
    /// `timeout` (returns whether it held).
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Recorded]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if pred(&self.state().recorded) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.state().recorded);
            }
        }
    }

    pub fn inject(&self, injection: Injection) {
        self.state().injections.push_back(injection);
    }

    /// Require `Authorization: Bearer TOKEN` (None: accept anything).
    pub fn require_token(&self, token: Option<&str>) {
        self.state().token = token.map(str::to_owned);
    }

    /// Expect the token as a Business Solution Provider sends it: the bare
    /// value in the header `name` (None: `Authorization: Bearer` again).
    pub fn token_header(&self, name: Option<&str>) {
        self.state().token_header = name.map(str::to_ascii_lowercase);
    }

    /// Only this phone number id exists (others answer 100, as Meta does
    /// for an id the token cannot see). None: every id exists.
    pub fn known_phone_number_id(&self, id: Option<&str>) {
        self.state().phone_number_id = id.map(str::to_owned);
    }

    /// Answer 130429 beyond `per_second` messages in a second.
    pub fn rate_limit(&self, per_second: Option<u32>) {
        self.state().rate_limit = per_second;
    }

    /// Answer 131056 beyond `n` messages to one recipient per `window`.
    pub fn pair_limit(&self, limit: Option<(u32, Duration)>) {
        self.state().pair_limit = limit;
    }

    /// Answer `wa_id` for messages sent to `input`.
    pub fn map_wa_id(&self, input: &str, wa_id: &str) {
        self.state()
            .wa_ids
            .insert(input.to_owned(), wa_id.to_owned());
    }

    pub fn add_template(&self, template: Template) {
        self.state().templates.push(template);
    }

    pub fn set_phone(&self, fields: PhoneFields) {
        self.state().phone = fields;
    }

    /// Wait this long before every answer.
    pub fn delay(&self, delay: Option<Duration>) {
        self.state().delay = delay;
    }

    /// Media ids currently stored (uploaded and not deleted).
    pub fn media_ids(&self) -> Vec<String> {
        self.state().media.keys().cloned().collect()
    }

    /// The bytes of a stored media (what was uploaded).
    pub fn media_bytes(&self, id: &str) -> Option<Vec<u8>> {
        self.state().media.get(id).map(|m| m.bytes.clone())
    }

    /// Stores media as if a patient had sent it (for an inbound media
    /// webhook, [`webhooks::inbound_media`]); returns its media id and the
    /// hex SHA-256 Meta would report.
    pub fn add_media(&self, mime_type: &str, bytes: &[u8]) -> (String, String) {
        let mut state = self.state();
        let id = format!("{}", 800_000_000_000u64 + state.next_id());
        let media = state::Media {
            mime_type: mime_type.to_owned(),
            bytes: bytes.to_vec(),
        };
        let sha = media.sha256();
        state.media.insert(id.clone(), media);
        (id, sha)
    }

    /// Status updates for every message accepted so far: `sent`, `delivered`
    /// and `read` each (times one second apart from `at`), in order.
    pub fn status_updates(&self, at: u64) -> Vec<webhooks::Update> {
        self.state()
            .accepted
            .iter()
            .flat_map(|a| {
                let to = a.wa_id.clone().unwrap_or_default();
                ["sent", "delivered", "read"]
                    .iter()
                    .enumerate()
                    .map(move |(i, s)| {
                        webhooks::status_with_callback(
                            &a.wamid,
                            s,
                            &to,
                            a.callback.as_deref(),
                            at + i as u64,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The wamids of every message accepted so far, in order.
    pub fn accepted_wamids(&self) -> Vec<String> {
        self.state()
            .accepted
            .iter()
            .map(|a| a.wamid.clone())
            .collect()
    }

    /// Every accepted message with its echoed callback data, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.state().accepted.clone()
    }

    /// Answer each accepted message only after `delay` (None: at once).
    /// Meta has the message from the moment it is accepted, so a sender
    /// killed meanwhile does not know it went out.
    pub fn answer_delay(&self, delay: Option<Duration>) {
        self.state().answer_delay = delay;
    }

    /// Refuse connections (close the listening socket and every open
    /// connection) or accept them again on the same port.
    pub fn refuse_connections(&self, refuse: bool) {
        self.refuse.send_replace(refuse);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut refuse: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let refusing = *refuse.borrow_and_update();
        if refusing {
            listener = None;
        } else if listener.is_none() {
            // Back on the same port; retry briefly while the old socket
            // lingers.
            for _ in 0..100 {
                if let Ok(l) = TcpListener::bind(addr).await {
                    listener = Some(l);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let accept = async {
            match &listener {
                Some(l) => l.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = refuse.changed() => {}
            accepted = accept => {
                if let Some((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, shared.clone(), refuse.clone(), stop.clone()));
                }
            }
        }
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    mut refuse: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let svc = service_fn(move |req| handle(req, shared.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = stop.changed() => {}
        _ = refuse.wait_for(|r| *r) => {}
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let content_type = header("content-type");
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(respond(413, &serde_json::json!({"error": "too large"}))),
    };
    let delay = lock(&shared).delay;
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let answer = {
        let mut state = lock(&shared);
        routes::handle(
            &mut state,
            &routes::Request {
                method: &method,
                path: &path,
                authorization: authorization.as_deref(),
                content_type: content_type.as_deref(),
                body: &body,
                headers: &headers,
            },
        )
    };
    shared.changed.notify_waiters();
    let answer_delay = lock(&shared).answer_delay;
    if let Some(d) = answer_delay.filter(|_| answer.status == 200) {
        tokio::time::sleep(d).await;
    }
    if let Some((bytes, content_type)) = answer.raw {
        return Ok(respond_raw(answer.status, bytes, &content_type));
    }
    Ok(respond(answer.status, &answer.body))
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn respond_raw(status: u16, bytes: Vec<u8>, content_type: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn respond(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
