//! The staff inbox (issue 11 item 4): conversations the bot handed to
//! staff, their messages with delivery states, staff replies and closing.
//! Every call's actor (peer uid or client certificate) is its audit actor;
//! reads of a conversation are audited like the other PHI reads.

use super::fhir::set;
use super::problem::Problem;
use super::routes::{apply, audit_read, internal, ok, origin, query, read_json, ApiState, Resp};
use crate::care::conversation::shell::ConversationError;
use crate::care::conversation::store::{self, Author, ConvId, Entry};
use crate::care::conversation::{Conversation, Phase, StaffText};
use crate::commands::Command;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use jiff::Timestamp;
use serde_json::{json, Value};

/// WhatsApp's limit for a text message body.
const MAX_TEXT: usize = 4096;

/// The API's answer to a refused conversation call.
pub(super) fn problem(e: ConversationError) -> Problem {
    match e {
        ConversationError::NotFound => Problem::not_found("no such conversation"),
        ConversationError::Conflict(why) => {
            Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", why)
        }
        ConversationError::Vault(e) => internal(e),
    }
}

pub(crate) fn conv_id(segment: &str) -> Result<ConvId, Problem> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(segment, &mut id)
        .map_err(|_| Problem::not_found("conversation ids are 32 hex digits"))?;
    Ok(id)
}

/// The time the conversation has been in its state from.
pub(crate) fn since(c: &Conversation) -> Timestamp {
    match &c.phase {
        Phase::WaitingForStaff { since, .. } | Phase::WithStaff { since } => *since,
        Phase::Closed { at } => *at,
        Phase::Idle | Phase::Menu | Phase::Intake { .. } => c.updated,
    }
}

fn summary(id: &ConvId, c: &Conversation, now: Timestamp) -> Value {
    let since = since(c);
    let mut v = json!({
        "id": hex::encode(id),
        "patient": c.patient().map(|p| p.to_hex()),
        "contact": if c.patient().is_some() { "patient" } else { "unknown" },
        "state": c.phase.name(),
        "since": since,
        "topic": c.topic,
        "language": c.language,
        "last_inbound": c.last_inbound,
        "window_open": c.window_open(now),
        "held_replies": c.held.len(),
    });
    if let Phase::WaitingForStaff { reason, .. } = &c.phase {
        set(&mut v, "reason", json!(reason.as_str()));
        set(
            &mut v,
            "waiting_seconds",
            json!(now.duration_since(since).as_secs().max(0)),
        );
    }
    v
}

/// `GET /v1/conversations?state=waiting`: oldest first.
pub(super) async fn list(
    state: &ApiState,
    req: &Request<Incoming>,
    actor: &str,
) -> Result<Resp, Problem> {
    let wanted = query(req, "state");
    const STATES: [&str; 6] = ["waiting", "with-staff", "menu", "idle", "closed", "intake"];
    if let Some(w) = wanted.as_deref().filter(|w| !STATES.contains(w)) {
        return Err(Problem::bad_request(format!(
            "state must be one of waiting, with-staff, menu, idle, closed, intake (not {:?})",
            w.chars().take(20).collect::<String>()
        )));
    }
    let now = state.clock.now();
    let found = find(state, wanted.as_deref())?;
    audit_read(state, actor, "conversation.list", None).await?;
    let list: Vec<Value> = found.iter().map(|(id, c)| summary(id, c, now)).collect();
    ok(&json!({ "conversations": list }))
}

/// The conversations in state `wanted` (all without), oldest first: the
/// inbox's one data path (the API and the console). The caller audits.
pub(crate) fn find(
    state: &ApiState,
    wanted: Option<&str>,
) -> Result<Vec<(ConvId, Conversation)>, Problem> {
    let mut found = store::all(&state.vault).map_err(internal)?;
    found.retain(|(_, c)| wanted.is_none_or(|w| c.phase.name() == w));
    found.sort_by_key(|(_, c)| since(c));
    Ok(found)
}

/// A conversation with its log, each outbound entry with its delivery
/// state (newest last). The caller audits.
pub(crate) type View = (Conversation, Vec<(u64, Entry, Option<Delivery>)>);

pub(crate) fn view(state: &ApiState, id: &ConvId) -> Result<View, Problem> {
    let c = store::load(&state.vault, id)
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found("no such conversation"))?;
    let mut log = Vec::new();
    for (n, e) in store::entries(&state.vault, id).map_err(internal)? {
        let d = delivery(state, &e)?;
        log.push((n, e, d));
    }
    Ok((c, log))
}

/// A staff reply through the apply path: free text inside the 24-hour
/// window, else the reopen template with the text held (the writer's
/// decision). Returns the conversation and whether the text was held.
pub(crate) async fn send_reply(
    state: &ApiState,
    conv: ConvId,
    text: &str,
    origin: &crate::commands::Origin,
) -> Result<(Conversation, bool), Problem> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT {
        return Err(Problem::unprocessable(format!(
            "text must be 1 to {MAX_TEXT} characters"
        )));
    }
    apply(
        state,
        &[Command::StaffReply {
            conversation: conv,
            text: StaffText(text.to_owned()),
        }],
        origin,
    )
    .await?;
    let c = store::load(&state.vault, &conv)
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found("no such conversation"))?;
    // The newest staff text: sent now, or held behind the reopen template.
    let entries = store::entries(&state.vault, &conv).map_err(internal)?;
    let held = entries
        .iter()
        .rev()
        .find(|(_, e)| e.from == Author::Staff)
        .is_some_and(|(_, e)| e.held);
    Ok((c, held))
}

/// Hands the conversation back to the bot.
pub(crate) async fn close_conversation(
    state: &ApiState,
    conv: ConvId,
    origin: &crate::commands::Origin,
) -> Result<Conversation, Problem> {
    apply(
        state,
        &[Command::CloseConversation { conversation: conv }],
        origin,
    )
    .await?;
    store::load(&state.vault, &conv)
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found("no such conversation"))
}

/// The delivery state of an outbound log entry: `state` is one of
/// `held`, `queued`, `sent`, `delivered`, `read`, `failed`; a failure has
/// Meta's error code or our reason for not sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub state: &'static str,
    pub error: Option<String>,
}

impl Delivery {
    fn just(state: &'static str) -> Option<Delivery> {
        Some(Delivery { state, error: None })
    }
}

fn delivery(state: &ApiState, e: &Entry) -> Result<Option<Delivery>, Problem> {
    if e.from == Author::Patient {
        return Ok(None);
    }
    if e.held {
        return Ok(Delivery::just("held"));
    }
    let Some(r) = &e.reference else {
        return Ok(None);
    };
    let wamid = match store::outcome(&state.vault, r).map_err(internal)? {
        None => return Ok(Delivery::just("queued")),
        Some(store::Outcome::Failed { failed }) => {
            return Ok(Some(Delivery {
                state: "failed",
                error: Some(failed),
            }))
        }
        Some(store::Outcome::Sent(w)) => w,
    };
    Ok(match state.vault.wa_status(&wamid).map_err(internal)? {
        Some(s) => Some(Delivery {
            state: s.state.name(),
            error: s.error_code.map(|c| c.to_string()),
        }),
        None => Delivery::just("sent"),
    })
}

/// `GET /v1/conversations/{id}`: the conversation and its messages,
/// newest last.
pub(super) async fn get(state: &ApiState, id: &str, actor: &str) -> Result<Resp, Problem> {
    let id = conv_id(id)?;
    let (c, entries) = view(state, &id)?;
    let mut messages = Vec::with_capacity(entries.len());
    for (n, e, d) in &entries {
        let mut m = json!({
            "n": n,
            "at": e.at,
            "from": e.from,
            "kind": e.kind,
        });
        for (k, v) in [
            ("text", &e.text),
            ("actor", &e.actor),
            ("message_ref", &e.message_ref),
        ] {
            if let Some(v) = v {
                set(&mut m, k, json!(v));
            }
        }
        if let Some(d) = d {
            set(&mut m, "delivery", json!(d.state));
            if let Some(code) = &d.error {
                set(&mut m, "delivery_error", json!(code));
            }
        }
        messages.push(m);
    }
    audit_read(state, actor, "conversation.read", c.patient()).await?;
    let mut body = summary(&id, &c, state.clock.now());
    set(&mut body, "messages", Value::Array(messages));
    ok(&body)
}

/// `GET /v1/conversations/{id}/messages/{n}/media`: the image, document,
/// audio or video a patient sent with message `n`, once fetched and until
/// its retention (`whatsapp.inbound_media_retention`). Audited.
pub(crate) async fn media(
    state: &ApiState,
    id: &str,
    n: &str,
    actor: &str,
) -> Result<Resp, Problem> {
    let id = conv_id(id)?;
    let n: u64 = n
        .parse()
        .map_err(|_| Problem::not_found("no such message (n is the log's number)"))?;
    let c = store::load(&state.vault, &id)
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found("no such conversation"))?;
    let entry = store::entry(&state.vault, &id, n)
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found("no such message"))?;
    let reference = match (&entry.from, &entry.message_ref) {
        (Author::Patient, Some(r)) => r.clone(),
        _ => return Err(Problem::not_found("this message has no media")),
    };
    // Taken before the media is opened: that is what costs memory.
    let permit = state.downloads.start()?;
    let Some((record, bytes)) = state
        .vault
        .wa_inbound_media_by_ref(&reference)
        .map_err(internal)?
    else {
        return Err(Problem::not_found("this message has no media"));
    };
    let Some(bytes) = bytes else {
        use crate::webhook::media::MediaState;
        let why = match record.state {
            MediaState::Pending => "not fetched yet",
            MediaState::DryRun => "not fetched: WhatsApp is in dry-run",
            MediaState::Refused { .. } => "not kept (over the size limit, or Meta refused it)",
            MediaState::Purged { .. } => "purged at the end of its retention",
            MediaState::Fetched { .. } => "no longer readable",
        };
        return Err(Problem::not_found(why));
    };
    audit_read(state, actor, "conversation.media-read", c.patient()).await?;
    let mime = record
        .mime_type
        .as_deref()
        .map(|m| m.split(';').next().unwrap_or(m).trim());
    super::download::media_response(bytes, mime, permit)
}

/// `POST /v1/conversations/{id}/messages` `{"text": "…"}`.
pub(super) async fn reply(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
    actor: &str,
) -> Result<Resp, Problem> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ReplyIn {
        text: String,
    }
    let conv = conv_id(id)?;
    let origin = origin(state, &req, actor);
    let input: ReplyIn = read_json(req, state).await?;
    let (c, held) = send_reply(state, conv, &input.text, &origin).await?;
    let mut body = summary(&conv, &c, state.clock.now());
    set(
        &mut body,
        "sent_as",
        json!(if held { "reopen-template" } else { "text" }),
    );
    ok(&body)
}

/// `POST /v1/conversations/{id}/close`: back to the bot.
pub(super) async fn close(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
    actor: &str,
) -> Result<Resp, Problem> {
    let conv = conv_id(id)?;
    let origin = origin(state, &req, actor);
    let c = close_conversation(state, conv, &origin).await?;
    ok(&summary(&conv, &c, state.clock.now()))
}
