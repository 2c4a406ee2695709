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
//! (`apply::stage` remembers what it staged), and a failed commit fails
//! every call of its group (each gets a 500, and Meta retries each).

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
        let mut merged = Batch::default();
        let mut replies = Vec::with_capacity(group.len());
        for (batch, reply) in group.drain(..) {
            merged.extend(batch);
            replies.push(reply);
        }
        let applied = commands::apply(
            &vault,
            vec![Command::Webhook(Box::new(merged))],
            Origin::new(actor),
            clock.now(),
        )
        .await;
        let ok = match applied {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, calls = replies.len(), "webhooks could not be stored; Meta will retry them");
                false
            }
        };
        for reply in replies {
            // A caller that went away (connection closed) is no error.
            let _ = reply.send(ok);
        }
    }
}
