//! Retrying a dead letter: `POST /v1/admin/dead-letters/{queue}/{id}/retry`
//! (Unix socket only, like every `/v1/admin/` call) and the console
//! dashboard's retry button share [`retry`]: one command through
//! `commands::apply`, audited with the caller as actor. The commit that
//! queues the item wakes its worker (see `Vault::publish_durable`).

use super::problem::Problem;
use super::routes::{apply, internal, ok, ApiState, Resp};
use crate::commands::{Command, DeadQueue, Origin};
use crate::queue::dead::RetryError;
use hyper::StatusCode;
use serde_json::json;

/// The queue and id of a retry's path segments.
pub fn target(queue: &str, id: &str) -> Result<(DeadQueue, u64), Problem> {
    let queue = DeadQueue::parse(queue)
        .ok_or_else(|| Problem::not_found("the queues are `pms` and `whatsapp`"))?;
    let id = id
        .parse::<u64>()
        .map_err(|_| Problem::not_found("a dead letter's id is a number"))?;
    Ok((queue, id))
}

/// Puts dead letter `id` of `queue` back in its queue, as `origin.actor`.
pub async fn retry(
    state: &ApiState,
    queue: DeadQueue,
    id: u64,
    origin: &Origin,
) -> Result<(), Problem> {
    // A repeat with the same Idempotency-Key is acknowledged, not applied
    // twice; without one, a second retry of the same id finds nothing (404).
    apply(state, &[Command::RetryDeadLetter { queue, id }], origin).await?;
    Ok(())
}

/// The problem for a refused retry.
pub(super) fn problem(e: &RetryError) -> Problem {
    match e {
        RetryError::NotFound => Problem::not_found("no such dead letter (already retried?)"),
        RetryError::Damaged | RetryError::Expired | RetryError::Erased => {
            Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", e.to_string())
        }
        RetryError::Vault(v) => internal(v),
    }
}

pub(super) async fn handle(
    state: &ApiState,
    queue: &str,
    id: &str,
    origin: &Origin,
) -> Result<Resp, Problem> {
    let (queue, id) = target(queue, id)?;
    retry(state, queue, id, origin).await?;
    ok(&json!({"queue": queue.as_str(), "id": id, "state": "queued"}))
}
