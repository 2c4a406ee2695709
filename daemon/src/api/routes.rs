//! Request routing and handlers. Every write goes through
//! `commands::apply` (one durable transaction, then the 2xx).

use super::fhir::{self, set};
use super::problem::Problem;
use crate::clock::SharedClock;
use crate::commands::{self, Applied, Command, CommandError, KeyReuse, Origin};
use crate::model::{Appointment, PatientId, Slot};
use crate::pms::phone::PhonePlan;
use crate::vault::Vault;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::time::Duration;

/// Everything the handlers need.
pub struct ApiState {
    pub vault: Vault,
    pub clock: SharedClock,
    pub phone_plan: PhonePlan,
    /// The assigning authority whose MRNs identify patients (pms.assigning_authority).
    pub authority: String,
    pub max_body_bytes: usize,
    pub started: jiff::Timestamp,
    /// The longest a long-poll may wait.
    pub max_wait: Duration,
    /// Where `status` looks for health.
    pub health: HealthSources,
    /// Writes the audit entries of PHI reads.
    pub read_audit: super::read_audit::ReadAuditor,
    /// How long an Idempotency-Key is remembered.
    pub key_retention: jiff::SignedDuration,
    /// Connection caps and timeouts (`api.max_connections` and co.).
    pub limits: super::ApiLimits,
    /// Slots for the large responses (results, backups).
    pub downloads: super::limits::Downloads,
}

/// What `GET /v1/status` reports on besides the vault.
pub struct HealthSources {
    pub ingest: std::sync::Arc<crate::pms::ingest::Ingest>,
    pub data_dir: std::path::PathBuf,
    pub master_key_file: Option<std::path::PathBuf>,
    pub pms_sender_configured: bool,
    /// The WhatsApp outbox's handle, set once its worker runs (after the
    /// API state is built); unset when it could not start.
    pub whatsapp: std::sync::Arc<std::sync::OnceLock<crate::whatsapp::worker::OutboxHandle>>,
    /// Whether the webhook receiver is configured.
    pub webhook_configured: bool,
    /// The host of `whatsapp.api_base_url` (shown on the dashboard; the
    /// rest of the URL may carry a BSP's path).
    pub whatsapp_host: String,
    /// The token file, if one is configured (to tell "missing" from
    /// "rejected" when the outbox is paused).
    pub whatsapp_token_file: Option<std::path::PathBuf>,
}

/// Which listener a request came in on: admin endpoints answer only on the
/// Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The local Unix socket (file permissions decide who connects).
    Unix,
    /// The optional TCP listener (mutual TLS).
    Tcp,
}

/// A response body: a whole JSON document, or a stream (a backup) fed
/// through a bounded channel.
pub enum ApiBody {
    Full(Full<Bytes>),
    Stream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl hyper::body::Body for ApiBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ApiBody::Full(full) => std::pin::Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ApiBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| c.map(hyper::body::Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ApiBody::Full(full) => full.is_end_stream(),
            ApiBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ApiBody::Full(full) => full.size_hint(),
            ApiBody::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

pub(crate) type Resp = Response<ApiBody>;

fn full(bytes: impl Into<Bytes>) -> ApiBody {
    ApiBody::Full(Full::new(bytes.into()))
}

fn problem_response(problem: Problem) -> Resp {
    problem.into_response().map(ApiBody::Full)
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(full(serde_json::to_vec(body).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn ok(body: &Value) -> Result<Resp, Problem> {
    Ok(json_response(StatusCode::OK, body))
}

pub(super) fn no_content() -> Result<Resp, Problem> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// A storage error: 503 while the disk is full or the store is out of
/// service after a write failure (it recovers by itself once space is
/// freed, so the client should retry), 500 for anything else.
pub(crate) fn internal<E: std::fmt::Display>(e: E) -> Problem {
    let text = e.to_string();
    // ENOSPC from the keyring or the spool reads "No space left on device".
    if text.contains(crate::vault::STORAGE_FAILED) || text.contains("No space left on device") {
        Problem::unavailable(text)
    } else {
        Problem::internal(text)
    }
}

pub(super) fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Percent-decoding of a path segment (`+` stays `+`).
fn percent_decode_path(s: &str) -> String {
    decode(s, false)
}

/// Minimal percent-decoding for query values (`%7C` in `system|value`).
fn percent_decode(s: &str) -> String {
    decode(s, true)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    state: &ApiState,
) -> Result<T, Problem> {
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Problem::too_large(limit));
    }
    // A body that trickles, never ends or stops short must not hold the
    // connection (and its slot) for ever.
    let read = Limited::new(req.into_body(), limit).collect();
    let body = tokio::time::timeout(state.limits.body_timeout, read)
        .await
        .map_err(|_| Problem::body_timeout(state.limits.body_timeout))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Problem::too_large(limit)
            } else {
                Problem::bad_request("the request body could not be read")
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| body_problem(&e))
}

/// A body that does not parse: what kind of problem and where, plus the
/// member's name when one is missing. serde's own message is never passed
/// on: it can quote the input ("invalid type: string \"…\"", "unknown
/// variant `…`", a time that did not parse), and the input may be PHI.
fn body_problem(e: &serde_json::Error) -> Problem {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "is not valid JSON".to_owned(),
        Category::Eof => "ends before its JSON is complete".to_owned(),
        Category::Io => "could not be read".to_owned(),
        Category::Data => match missing_member(e) {
            Some(name) => format!("lacks the required member `{name}`"),
            None => {
                "has a member of the wrong type, or with a value that is not allowed".to_owned()
            }
        },
    };
    Problem::bad_request(format!(
        "the body {what} for this resource (at line {}, column {}; values are not quoted)",
        e.line(),
        e.column()
    ))
}

/// The member named by serde's "missing field `x`": a name from our own
/// types (serde only reports declared fields), checked to look like one.
fn missing_member(e: &serde_json::Error) -> Option<String> {
    let message = e.to_string();
    let (name, _) = message.strip_prefix("missing field `")?.split_once('`')?;
    let plain = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    plain.then(|| name.to_owned())
}

pub(crate) fn origin(state: &ApiState, req: &Request<Incoming>, actor: &str) -> Origin {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| {
            // Scoped to method and path: the same key on another request is
            // another request.
            let scope = format!("{} {}\u{1f}{k}", req.method(), req.uri().path());
            state.vault.blind_index("api-idempotency", &scope).to_vec()
        });
    let origin = Origin {
        key_retention: state.key_retention,
        ..Origin::new(actor)
    };
    match key {
        // The key is bound to what the request says: the same key with
        // another body is refused, never answered with the new body.
        Some(k) => origin.with_key(k, KeyReuse::Reject),
        None => origin,
    }
}

/// The answer to an idempotency key reused with other content (the console
/// words it for staff).
pub(crate) const KEY_CONFLICT: &str = "this Idempotency-Key was already used for a request with another body; use a new key for a new request";

pub(crate) async fn apply(
    state: &ApiState,
    commands: &[Command],
    origin: &Origin,
) -> Result<Applied, Problem> {
    match commands::apply(
        &state.vault,
        commands.to_vec(),
        origin.clone(),
        state.clock.now(),
    )
    .await
    {
        Ok(Applied::KeyConflict) => Err(Problem::unprocessable(KEY_CONFLICT)),
        Ok(a) => Ok(a),
        Err(CommandError::UnknownPatient(id)) => Err(Problem::unprocessable(format!(
            "unknown patient {}",
            id.to_hex()
        ))),
        Err(CommandError::Conversation(e)) => Err(super::conversations::problem(e)),
        Err(CommandError::DeadLetter(e)) => Err(super::dead_letters::problem(&e)),
        Err(e) => Err(internal(e)),
    }
}

pub async fn handle(state: &ApiState, req: Request<Incoming>, actor: &str, door: Door) -> Resp {
    match route(state, req, actor, door).await {
        Ok(resp) => resp,
        Err(problem) => problem_response(problem),
    }
}

async fn route(
    state: &ApiState,
    req: Request<Incoming>,
    actor: &str,
    door: Door,
) -> Result<Resp, Problem> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    // Ids may contain any character (a PMS appointment id like "A/12"):
    // segments are percent-decoded after splitting.
    let decoded: Vec<String> = path.split('/').skip(1).map(percent_decode_path).collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["v1", "status"]) => status(state),
        // On the TCP door, everything under /v1/admin/ is refused the same
        // way (whatever the method or path), so it reveals nothing.
        (_, ["v1", "admin", ..]) if door == Door::Tcp => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "admin-local-only",
            "Admin endpoints are local only",
            "use the Unix socket on the clinic-relay host for administrative requests",
        )),
        (Method::GET, ["v1", "admin", "backup"]) => backup(state, actor).await,
        (Method::POST, ["v1", "admin", "dead-letters", queue, id, "retry"]) => {
            let origin = origin(state, &req, actor);
            super::dead_letters::handle(state, queue, id, &origin).await
        }
        (Method::GET, ["v1", "patients"]) => super::patients::search(state, &req, actor).await,
        (Method::POST, ["v1", "patients"]) => super::patients::upsert(state, req, actor).await,
        (Method::GET, ["v1", "patients", id]) => super::patients::get(state, id, actor).await,
        (Method::DELETE, ["v1", "patients", id]) => super::patients::erase(state, id, actor).await,
        (Method::GET, ["v1", "patients", id, "appointments"]) => {
            super::patients::get_appointments(state, id, actor).await
        }
        (Method::PUT, ["v1", "patients", id, "consent"]) => {
            super::patients::put_consent(state, id, req, actor).await
        }
        (Method::GET, ["v1", "patients", id, "consent", "history"]) => {
            super::patients::get_consent_history(state, id, actor).await
        }
        (Method::GET, ["v1", "appointments", id]) => get_appointment(state, id, actor).await,
        (Method::PUT, ["v1", "appointments", id]) => {
            let id = (*id).to_owned();
            put_appointment(state, &id, req, actor).await
        }
        (Method::GET, ["v1", "slots"]) => list_slots(state),
        (Method::PUT, ["v1", "slots"]) => put_slots(state, req, actor).await,
        (Method::GET, ["v1", "results", order]) => get_result(state, order, actor).await,
        (Method::GET, ["v1", "events"]) => events(state, &req).await,
        (Method::GET, ["v1", "conversations"]) => {
            super::conversations::list(state, &req, actor).await
        }
        (Method::GET, ["v1", "conversations", id]) => {
            super::conversations::get(state, id, actor).await
        }
        (Method::GET, ["v1", "conversations", id, "messages", n, "media"]) => {
            super::conversations::media(state, id, n, actor).await
        }
        (Method::POST, ["v1", "conversations", id, "messages"]) => {
            let id = (*id).to_owned();
            super::conversations::reply(state, &id, req, actor).await
        }
        (Method::POST, ["v1", "conversations", id, "close"]) => {
            let id = (*id).to_owned();
            super::conversations::close(state, &id, req, actor).await
        }
        (Method::GET, ["v1", "kpis"]) => {
            let (from, to) = (query(&req, "from"), query(&req, "to"));
            let now = state.clock.now();
            ok(&super::kpis::kpis(
                &state.vault,
                now,
                from.as_deref(),
                to.as_deref(),
            )?)
        }
        (Method::GET, ["metrics"]) => {
            let mut resp = Response::new(full(super::kpis::metrics(&state.vault)?));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(crate::kpi::prom::CONTENT_TYPE),
            );
            Ok(resp)
        }
        (_, segments) if allowed_methods(segments).is_some() => {
            let mut resp = problem_response(Problem::method_not_allowed());
            if let Some(allow) = allowed_methods(segments) {
                resp.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static(allow),
                );
            }
            Ok(resp)
        }
        _ => Err(Problem::not_found(
            "no such resource; the API lives under /v1/ (docs/api.md)",
        )),
    }
}

/// The methods a resource answers to (for 405 and its `Allow` header).
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["v1", "status" | "events"]
        | ["v1", "admin", "backup"]
        | ["v1", "results", _]
        | ["v1", "patients", _, "appointments"] => Some("GET"),
        ["v1", "kpis"] | ["metrics"] => Some("GET"),
        ["v1", "admin", "dead-letters", _, _, "retry"] => Some("POST"),
        ["v1", "conversations"] | ["v1", "conversations", _] => Some("GET"),
        ["v1", "conversations", _, "messages" | "close"] => Some("POST"),
        ["v1", "conversations", _, "messages", _, "media"] => Some("GET"),
        ["v1", "patients"] => Some("GET, POST"),
        ["v1", "patients", _] => Some("GET, DELETE"),
        ["v1", "patients", _, "consent"] => Some("PUT"),
        ["v1", "patients", _, "consent", "history"] => Some("GET"),
        ["v1", "appointments", _] | ["v1", "slots"] => Some("GET, PUT"),
        _ => None,
    }
}

pub(crate) fn read_draft(
    actor: &str,
    action: &str,
    subject: Option<PatientId>,
) -> crate::audit::AuditDraft {
    let mut draft = crate::audit::AuditDraft::new(actor, action);
    draft.subject = subject.map(|p| p.to_string());
    draft
}

/// Records durably that PHI was read, and by whom, before the read is
/// answered (in batches; see `read_audit.rs`). A read that could not be
/// audited is refused.
pub(crate) async fn audit_reads(
    state: &ApiState,
    drafts: Vec<crate::audit::AuditDraft>,
) -> Result<(), Problem> {
    use super::read_audit::ReadAuditError;
    state.read_audit.record(drafts).await.map_err(|e| match e {
        ReadAuditError::Busy | ReadAuditError::Stopped => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read-not-audited",
            "Read not audited",
            format!("{e}; the data was not sent"),
        ),
        ReadAuditError::NotWritten(_) => Problem::internal(
            "the audit entry of this read could not be written; the data was not sent",
        ),
    })
}

pub(crate) async fn audit_read(
    state: &ApiState,
    actor: &str,
    action: &str,
    subject: Option<PatientId>,
) -> Result<(), Problem> {
    audit_reads(state, vec![read_draft(actor, action, subject)]).await
}

fn status(state: &ApiState) -> Result<Resp, Problem> {
    ok(&super::health::check(state).to_json())
}

/// Streams a backup. The snapshot is taken as one writer job into an
/// anonymous spool file (and audited there); the file is then sent with a
/// bounded buffer, so a slow client holds neither the writer nor memory.
async fn backup(state: &ApiState, actor: &str) -> Result<Resp, Problem> {
    let permit = state.downloads.start()?;
    let (file, summary) = state
        .vault
        .backup_spool(state.clock.now(), actor)
        .await
        .map_err(internal)?;
    let (tx, rx) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        send_file(file, &tx);
    });
    let mut resp = Response::new(ApiBody::Stream(rx));
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    // The client can tell a cut-off transfer from a whole backup.
    headers.insert(hyper::header::CONTENT_LENGTH, summary.bytes.into());
    Ok(resp)
}

/// Pieces of a streamed backup buffered at once (of [`BACKUP_PIECE`] bytes).
const BACKUP_CHUNKS_IN_FLIGHT: usize = 4;
const BACKUP_PIECE: usize = 64 * 1024;

/// Reads `file` into the channel until the end, an error, or the client
/// going away (on a blocking thread).
fn send_file(
    mut file: std::fs::File,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    use std::io::Read;
    let mut buf = vec![0u8; BACKUP_PIECE];
    loop {
        let piece = match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => Ok(Bytes::copy_from_slice(buf.get(..n).unwrap_or_default())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
        let failed = piece.is_err();
        if tx.blocking_send(piece).is_err() || failed {
            return;
        }
    }
}

async fn get_appointment(state: &ApiState, id: &str, actor: &str) -> Result<Resp, Problem> {
    match state.vault.get_appointment(id).map_err(internal)? {
        Some(a) => {
            audit_read(state, actor, "appointment.read", Some(a.patient)).await?;
            ok(&fhir::appointment(&a))
        }
        None => Err(Problem::not_found("no such appointment")),
    }
}

async fn put_appointment(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
    actor: &str,
) -> Result<Resp, Problem> {
    let origin = origin(state, &req, actor);
    let input: fhir::AppointmentIn = read_json(req, state).await?;
    let patient = input.patient().ok_or_else(|| {
        Problem::unprocessable("participant: a Patient/<id> reference is required")
    })?;
    if let Some(why) = input.out_of_range() {
        return Err(Problem::unprocessable(why));
    }
    let appt = Appointment {
        id: id.to_owned(),
        patient,
        start: input.start,
        duration_minutes: input.duration_minutes(),
        status: input.status,
        pms_status: None,
        provider: input.provider(),
        location: input.location(),
        patient_confirmed: false,
    };
    apply(
        state,
        &[Command::UpsertAppointment(Box::new(appt))],
        &origin,
    )
    .await?;
    // The writer gets back what it wrote; that is not a read to audit.
    match state.vault.get_appointment(id).map_err(internal)? {
        Some(a) => ok(&fhir::appointment(&a)),
        None => Err(Problem::not_found("no such appointment")),
    }
}

fn list_slots(state: &ApiState) -> Result<Resp, Problem> {
    let slots = state.vault.slots().map_err(internal)?;
    ok(&fhir::bundle(slots.iter().map(fhir::slot).collect()))
}

async fn put_slots(state: &ApiState, req: Request<Incoming>, actor: &str) -> Result<Resp, Problem> {
    let origin = origin(state, &req, actor);
    let input: Vec<fhir::SlotIn> = read_json(req, state).await?;
    let mut slots = Vec::with_capacity(input.len());
    for s in input {
        if s.id.is_empty() || s.id.len() > 128 {
            return Err(Problem::unprocessable("slot id: 1 to 128 characters"));
        }
        if !crate::bounds::timestamp_in_range(s.start) || !crate::bounds::timestamp_in_range(s.end)
        {
            return Err(Problem::unprocessable(
                "slot start and end: years 1900 to 2199",
            ));
        }
        let minutes = s.end.duration_since(s.start).as_secs() / 60;
        let minutes = u32::try_from(minutes)
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| Problem::unprocessable("slot end must be after start"))?;
        if !crate::bounds::duration_in_range(minutes) {
            return Err(Problem::unprocessable(
                "slot: at most 10,080 minutes (one week)",
            ));
        }
        slots.push(Slot {
            id: s.id,
            start: s.start,
            duration_minutes: minutes,
            provider: s.provider,
            location: s.location,
            service: s.service,
        });
    }
    apply(state, &[Command::ReplaceSlots(slots)], &origin).await?;
    list_slots(state)
}

async fn get_result(state: &ApiState, order: &str, actor: &str) -> Result<Resp, Problem> {
    // Taken before the document is opened: that is what costs memory.
    let permit = state.downloads.start()?;
    match state.vault.get_result(order).map_err(internal)? {
        Some(r) => {
            audit_read(state, actor, "result.read", Some(r.patient)).await?;
            super::download::result_response(r, permit)
        }
        None => Err(Problem::not_found("no such result")),
    }
}

async fn events(state: &ApiState, req: &Request<Incoming>) -> Result<Resp, Problem> {
    let after: u64 = match query(req, "after") {
        None => 0,
        Some(v) => v.parse().map_err(|_| {
            Problem::bad_request("after: a cursor from an earlier response (a number)")
        })?,
    };
    let limit: usize = query(req, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let wait = query(req, "wait")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default()
        .min(state.max_wait);
    let mut watch = state.vault.events_watch();
    // A cursor past the durable head never came from this feed (a typo, or
    // a cursor kept across a restore from an older backup). Accepting it
    // would silently skip the next events, so it is refused.
    let head = *watch.borrow_and_update();
    if after > head {
        return Err(Problem::bad_request(format!(
            "after: {after} is past the end of the feed (the current head is {head}); continue from a cursor this feed returned, or from 0"
        ))
        .with("head", json!(head)));
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let found = state.vault.events_after(after, limit).map_err(internal)?;
        if !found.is_empty() || wait.is_zero() {
            let cursor = found.last().map_or(after, |(seq, _)| *seq);
            let events: Vec<Value> = found
                .into_iter()
                .map(|(seq, e)| {
                    if e.kind == crate::model::EventKind::Redacted {
                        // About an erased patient: nothing but its place.
                        return json!({"kind": "redacted", "cursor": seq});
                    }
                    let mut v = serde_json::to_value(&e).unwrap_or_default();
                    set(&mut v, "cursor", json!(seq));
                    v
                })
                .collect();
            return ok(&json!({"events": events, "cursor": cursor}));
        }
        // Nothing yet: wait for the durable watermark to move (or time out).
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return ok(&json!({"events": [], "cursor": after})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConsentState;

    fn detail<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> String {
        let e = serde_json::from_slice::<T>(body.as_bytes()).unwrap_err();
        body_problem(&e).detail
    }

    #[test]
    fn body_errors_name_position_and_missing_members_never_values() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct ConsentIn {
            state: ConsentState,
        }
        let cases = [
            detail::<fhir::PatientIn>(r#"{"identifier": "ZZMARK-MRN"}"#),
            detail::<fhir::PatientIn>(r#"{"name": [{"family": 19010203}], "x": "ZZMARK"}"#),
            detail::<fhir::PatientIn>(r#"{"telecom": [{"value": "ZZMARK"#),
            detail::<fhir::PatientIn>(r#"{"birthDate": ZZMARK}"#),
            detail::<fhir::AppointmentIn>(r#"{"status": "booked", "start": "ZZMARK-1901"}"#),
            detail::<fhir::AppointmentIn>(
                r#"{"status": "ZZMARK", "start": "2026-12-01T09:00:00Z"}"#,
            ),
            detail::<Vec<fhir::SlotIn>>(r#"[{"id": "S", "start": "ZZMARK", "end": "x"}]"#),
            detail::<ConsentIn>(r#"{"state": "ZZMARK"}"#),
        ];
        for d in &cases {
            assert!(!d.contains("ZZMARK") && !d.contains("1901"), "{d}");
            assert!(d.contains("at line 1, column "), "{d}");
        }
        assert!(cases[0].contains("wrong type"), "{}", cases[0]);
        assert!(cases[2].contains("ends before"), "{}", cases[2]);
        assert!(cases[3].contains("not valid JSON"), "{}", cases[3]);
        let missing = detail::<fhir::AppointmentIn>(r#"{"status": "booked"}"#);
        assert!(
            missing.contains("lacks the required member `start`"),
            "{missing}"
        );
    }
}
