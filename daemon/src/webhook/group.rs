//! Group commit in front of the writer: webhook calls that arrive while a
//! commit is in progress are applied together as **one** writer job (one
//! `Command::Webhook` with their items concatenated), and each caller is
//! answered once that job is durable.
//!
//! Why: every writer job costs a multi-tree store transaction, a
//! high-water-mark write and a thread hand-off; with 16 connections posting
//! one status each, that fixed cost dominated the per-status work. The
//! writer's own group commit (one flush per batch of jobs) stays: this only
//! makes its jobs bigger. Dedupe inside a group works as inside one call
//! (`apply::stage` remembers what it staged). If a group fails, its calls
//! are applied one by one, so that one call's bad record (a damaged
//! stored state it touches) fails only that call (a 500: Meta retries it).

use super::apply::Batch;
use crate::clock::SharedClock;
use crate::commands::{self, Command, Origin};
use crate::vault::Vault;
use tokio::sync::{mpsc, oneshot};

/// At most this many calls go into one job (bounds a job's time on the
/// writer, and so the latency of the calls behind it).
const MAX_GROUP: usize = 128;
/// Calls waiting for a group; beyond this, callers wait to enqueue.
const QUEUE: usize = 1024;

type Item = (Batch, oneshot::Sender<bool>);

/// A handle to the group committer task.
#[derive(Clone)]
pub struct Grouper {
    tx: mpsc::Sender<Item>,
}

impl Grouper {
    /// Starts the task; it ends when every handle is dropped.
    pub fn start(vault: Vault, clock: SharedClock, actor: &'static str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, vault, clock, actor));
        Self { tx }
    }

    /// Applies `batch` with whatever else is waiting; true once durable.
    pub async fn apply(&self, batch: Batch) -> bool {
        let (done, answer) = oneshot::channel();
        if self.tx.send((batch, done)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

async fn run(mut rx: mpsc::Receiver<Item>, vault: Vault, clock: SharedClock, actor: &'static str) {
    let mut group: Vec<Item> = Vec::with_capacity(MAX_GROUP);
    // One group in flight at a time: while it commits, the next one fills.
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let mut batches = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for (batch, reply) in group.drain(..) {
            batches.push(batch);
            replies.push(reply);
        }
        let ok = if batches.len() == 1 {
            vec![apply(&vault, &clock, actor, batches).await]
        } else {
            let mut merged = Batch::default();
            for b in &batches {
                merged.extend(b.clone());
            }
            if apply(&vault, &clock, actor, vec![merged]).await {
                vec![true; batches.len()]
            } else {
                // One call's records may be what failed (a damaged record
                // it touches): each alone, so that the others still land.
                let mut each = Vec::with_capacity(batches.len());
                for b in batches {
                    each.push(apply(&vault, &clock, actor, vec![b]).await);
                }
                each
            }
        };
        for (reply, ok) in replies.into_iter().zip(ok) {
            // A caller that went away (connection closed) is no error.
            let _ = reply.send(ok);
        }
    }
}

/// Applies `batches` (merged already, or one call) as one job; true once durable.
async fn apply(
    vault: &Vault,
    clock: &SharedClock,
    actor: &'static str,
    batches: Vec<Batch>,
) -> bool {
    let commands = batches
        .into_iter()
        .map(|b| Command::Webhook(Box::new(b)))
        .collect();
    match commands::apply(vault, commands, Origin::new(actor), clock.now()).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "webhooks could not be stored; Meta will retry them");
            false
        }
    }
}
