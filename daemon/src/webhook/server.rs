//! The HTTP side of the receiver (hyper 1): Meta's `GET` handshake and its
//! signed `POST`s. A POST is answered 200 only once what it carries is
//! durable; the signature is checked over the raw bytes, in constant time,
//! before anything is parsed, so an unsigned body is never looked at.

use super::apply::Batch;
use super::config::{Secrets, WebhookConfig};
use super::payload::Notification;
use crate::admission::{Noise, Slot, Slots};
use crate::clock::SharedClock;
use crate::vault::Vault;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ring::hmac;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The audit/apply actor of webhook changes.
pub const ACTOR: &str = "whatsapp:webhook";
/// A `hub.challenge` longer than this is not Meta's.
const MAX_CHALLENGE: usize = 256;

/// What a request is checked against and applied with.
pub struct Receiver {
    path: String,
    max_body: usize,
    body_timeout: Duration,
    /// The current app secret first, then the previous one (rotation).
    app_keys: Vec<hmac::Key>,
    /// The verify token is compared as HMACs under a random key: equal
    /// tags mean equal tokens, and the comparison's time says nothing
    /// about either (not even the length).
    token_key: hmac::Key,
    token_tag: hmac::Tag,
    grouper: super::group::Grouper,
    /// Handshakes and POSTs refused since the start (their warnings are
    /// logged at the 1st, 2nd, 4th, 8th … only).
    refused: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RngError;

impl Receiver {
    pub fn new(
        cfg: &WebhookConfig,
        secrets: &Secrets,
        vault: Vault,
        clock: SharedClock,
    ) -> Result<Self, RngError> {
        let rng = ring::rand::SystemRandom::new();
        let token_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| RngError)?;
        let token_tag = hmac::sign(&token_key, secrets.verify_token.expose());
        Ok(Self {
            path: cfg.path.clone(),
            max_body: cfg.max_body_bytes,
            body_timeout: cfg.body_timeout,
            app_keys: secrets
                .app_secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose()))
                .collect(),
            token_key,
            token_tag,
            grouper: super::group::Grouper::start(vault, clock, ACTOR),
            refused: AtomicU64::new(0),
        })
    }

    /// Whether `header` (`sha256=<hex>`) is a valid signature of `body`
    /// under any of the app secrets.
    pub fn signature_ok(&self, header: Option<&[u8]>, body: &[u8]) -> bool {
        let Some(hex_sig) = header.and_then(|h| h.strip_prefix(b"sha256=")) else {
            return false;
        };
        let mut tag = [0u8; 32];
        if hex::decode_to_slice(hex_sig.trim_ascii(), &mut tag).is_err() {
            return false;
        }
        // Every key is tried (no early exit), so the time does not tell
        // which secret matched.
        self.app_keys
            .iter()
            .fold(false, |ok, key| hmac::verify(key, body, &tag).is_ok() | ok)
    }

    fn token_ok(&self, token: &str) -> bool {
        hmac::verify(&self.token_key, token.as_bytes(), self.token_tag.as_ref()).is_ok()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != self.path {
            return reply(StatusCode::NOT_FOUND, "not found");
        }
        match *req.method() {
            Method::GET => self.handshake(req.uri().query().unwrap_or("")),
            Method::POST => self.notification(req).await,
            _ => reply(StatusCode::METHOD_NOT_ALLOWED, "GET or POST"),
        }
    }

    /// Meta's subscription check: echo `hub.challenge` when the mode is
    /// `subscribe` and the verify token is ours.
    fn handshake(&self, query: &str) -> Response<Full<Bytes>> {
        let (mut mode, mut token, mut challenge) = (None, None, None);
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "hub.mode" => mode = v,
                "hub.verify_token" => token = v,
                "hub.challenge" => challenge = v,
                _ => {}
            }
        }
        let (Some(token), Some(challenge)) = (token, challenge) else {
            return reply(
                StatusCode::BAD_REQUEST,
                "hub.verify_token and hub.challenge required",
            );
        };
        let fit =
            challenge.len() <= MAX_CHALLENGE && challenge.bytes().all(|b| b.is_ascii_graphic());
        if mode.as_deref() != Some("subscribe") || !self.token_ok(&token) || !fit {
            let n = self.refused.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                warn!(refused_so_far = n + 1, "webhook handshake refused (wrong mode or verify token: check webhook.verify_token_file against the Meta dashboard)");
            }
            return reply(StatusCode::FORBIDDEN, "forbidden");
        }
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(challenge)))
            .unwrap_or_else(|_| reply(StatusCode::INTERNAL_SERVER_ERROR, "error"))
    }

    async fn notification(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        let signature = req
            .headers()
            .get("x-hub-signature-256")
            .map(|v| v.as_bytes().to_vec());
        let collect = Limited::new(req.into_body(), self.max_body).collect();
        let body = match tokio::time::timeout(self.body_timeout, collect).await {
            Err(_) => return reply(StatusCode::REQUEST_TIMEOUT, "body timeout"),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large")
            }
            Ok(Err(_)) => return reply(StatusCode::BAD_REQUEST, "unreadable body"),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        if !self.signature_ok(signature.as_deref(), &body) {
            // Worth a warning (a wrong app secret in the config looks like
            // this), but not one per request: anyone can post junk.
            let n = self.refused.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                warn!(refused_so_far = n + 1, "webhook POST with a missing or invalid signature refused (check webhook.app_secret_file if Meta's calls are refused)");
            }
            return reply(StatusCode::UNAUTHORIZED, "invalid signature");
        }
        let notification: Notification = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => {
                // serde's message may quote the input: only its category.
                debug!(category = ?e.classify(), "signed webhook body is not the expected JSON");
                return reply(StatusCode::BAD_REQUEST, "malformed notification");
            }
        };
        let batch = Batch::from_notification(notification);
        if batch.is_empty() {
            return reply(StatusCode::OK, "ok");
        }
        if self.grouper.apply(batch).await {
            reply(StatusCode::OK, "ok")
        } else {
            // Not 200: Meta retries, and the dedupe makes that safe.
            reply(StatusCode::INTERNAL_SERVER_ERROR, "not stored")
        }
    }
}

fn reply(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

/// `application/x-www-form-urlencoded` value decoding; None if not UTF-8
/// or a `%` escape is broken.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next()?;
                let lo = bytes.next()?;
                let mut v = [0u8; 1];
                hex::decode_to_slice([hi, lo], &mut v).ok()?;
                out.extend_from_slice(&v);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves until `stop` turns true, then lets open requests finish. The
/// connection cap works as on every listener (`admission`): at the cap a
/// newcomer takes the slot of the oldest connection that has sent nothing
/// (or sits idle between requests); a failed accept backs off and is
/// logged once per interval.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<super::TlsReload>,
    receiver: Arc<Receiver>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Slots::new(limits.max_connections, true);
    let noisy = Noise::new("webhook.max_connections");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                noisy.accept_failed("webhook", &e).await;
                continue;
            }
        };
        let Some(mut slot) = noisy.admit(&slots, "webhook") else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.as_ref().map(super::TlsReload::acceptor);
        let (receiver, stop) = (receiver.clone(), stop.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(tcp, receiver, limits, stop, slot).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        () = slot.evicted() => return,
                        h = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)) => h,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, receiver, limits, stop, slot).await
                        }
                        Ok(Err(e)) => {
                            debug!(peer = %peer.ip(), error = %e, "webhook TLS handshake failed")
                        }
                        Err(_) => debug!(peer = %peer.ip(), "webhook TLS handshake timed out"),
                    }
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(
    stream: S,
    receiver: Arc<Receiver>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    mut slot: Slot,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let marker = slot.marker();
    let service = hyper::service::service_fn(move |req| {
        let receiver = receiver.clone();
        let marker = marker.clone();
        async move {
            // Busy while a request is answered: only then is the slot safe
            // from a newcomer. One evicted just before does not start (Meta
            // retries a call that got no 200).
            if !marker.busy() {
                return Ok(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "connection closed to make room",
                ));
            }
            let resp = receiver.handle(req).await;
            marker.idle();
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => { if let Err(e) = res { debug!(error = %e, "webhook connection ended"); } }
        // Closed at once: it holds no request, and a flood must not leave
        // evicted sockets open.
        () = slot.evicted() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn query_values_are_form_decoded() {
        assert_eq!(percent_decode("a%2Bb+c").as_deref(), Some("a+b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
