//! Dead letters: listing them without PHI, and putting one back in its
//! queue (an operator's "retry", from the console's dashboard or the local
//! API, as a command through `commands::apply`).
//!
//! A retried item goes to the end of its queue as a new item (a new seq,
//! never a reused one), due now, with its attempts reset; it keeps its
//! order key and expiry, so an item whose expiry has passed is not put
//! back (it would be dropped at once). The dead letter is removed in the
//! same commit, with an audit entry naming who asked.

use super::{enqueue, DeadLetter, QueueSpec, Queued};
use crate::audit::AuditDraft;
use crate::vault::{Txn, Vault, VaultError, VaultResult};
use jiff::Timestamp;

/// One dead letter as an operator may see it: no payload, no recipient,
/// no receiver's words (they may quote the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadView {
    /// The dead letter's key in its tree (what a retry names).
    pub id: u64,
    pub at: Option<Timestamp>,
    /// The message kind (`SRM^S04`, `template`), if it can be read.
    pub kind: Option<String>,
    /// The queue's reason: `refused`, `refused:<code>`, `out of attempts`,
    /// `damaged: …`; `erased` when the patient's key is gone.
    pub reason: String,
    pub attempts: u32,
    /// Whether a retry can put it back (it has an envelope that has not
    /// expired, and its patient was not erased).
    pub retryable: bool,
}

/// Why a dead letter cannot be retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no such dead letter")]
    NotFound,
    #[error("this dead letter was damaged; it holds nothing to send again")]
    Damaged,
    #[error("this message expired; it is not sent again")]
    Expired,
    #[error("the patient was erased; the message can no longer be read")]
    Erased,
    #[error(transparent)]
    Vault(VaultError),
}

/// The first `limit` dead letters of `spec` (oldest first) as views.
pub fn list<T: Queued>(
    vault: &Vault,
    spec: &QueueSpec,
    limit: usize,
    now: Timestamp,
) -> VaultResult<Vec<DeadView>> {
    let mut out = Vec::new();
    for raw in vault.scan_raw(spec.dead_letters).take(limit) {
        let (key, opened) = raw?;
        let Some(id) = super::seq_of(&key) else {
            continue;
        };
        let view = match opened {
            Ok(plain) => match serde_json::from_slice::<DeadLetter<T>>(&plain) {
                Ok(d) => view(id, &d, now),
                Err(_) => unreadable(id, "damaged"),
            },
            Err(VaultError::KeyUnavailable { .. }) => unreadable(id, "erased"),
            Err(_) => unreadable(id, "damaged"),
        };
        out.push(view);
    }
    Ok(out)
}

fn view<T: Queued>(id: u64, d: &DeadLetter<T>, now: Timestamp) -> DeadView {
    let env = d.envelope.as_ref();
    DeadView {
        id,
        at: Some(d.at),
        kind: env.and_then(|e| e.item.describe().remove("message")),
        reason: d.reason.clone(),
        attempts: env.map_or(0, |e| e.attempts),
        retryable: env.is_some_and(|e| e.expires.is_none_or(|x| x > now)),
    }
}

fn unreadable(id: u64, reason: &str) -> DeadView {
    DeadView {
        id,
        at: None,
        kind: None,
        reason: reason.to_owned(),
        attempts: 0,
        retryable: false,
    }
}

/// Stages putting dead letter `id` back at the end of its queue, due now,
/// with its attempts reset; audited as `<queue>.retry` by `actor`. Runs on
/// the vault's writer (from `commands::apply`).
pub fn stage_retry<T: Queued>(
    vault: &Vault,
    txn: &mut Txn,
    spec: &QueueSpec,
    id: u64,
    actor: &str,
    now: Timestamp,
) -> Result<(), RetryError> {
    let key = id.to_be_bytes();
    let plain = match vault.get(spec.dead_letters, &key) {
        Ok(Some(p)) => p,
        Ok(None) => return Err(RetryError::NotFound),
        Err(VaultError::KeyUnavailable { .. }) => return Err(RetryError::Erased),
        Err(e) => return Err(RetryError::Vault(e)),
    };
    let dead: DeadLetter<T> = serde_json::from_slice(&plain).map_err(|_| RetryError::Damaged)?;
    let mut envelope = dead.envelope.ok_or(RetryError::Damaged)?;
    if envelope.expires.is_some_and(|x| x <= now) {
        return Err(RetryError::Expired);
    }
    envelope.attempts = 0;
    envelope.enqueued_at = now;
    envelope.due = now;
    envelope.last_error = None;
    txn.remove(spec.dead_letters, key.to_vec());
    enqueue(txn, spec, &envelope).map_err(RetryError::Vault)?;
    let mut draft = AuditDraft::new(actor, format!("{}.retry", spec.name))
        .detail("dead_letter", id.to_string())
        .detail("reason", dead.reason);
    for (k, v) in envelope.item.describe() {
        draft = draft.detail(k, v);
    }
    draft.subject = envelope.item.patient().map(|p| p.to_string());
    txn.audit(draft);
    Ok(())
}
