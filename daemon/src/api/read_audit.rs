//! Audit entries for reads of PHI: durable before the read is answered.
//!
//! A handler that has read PHI hands its audit drafts, with a oneshot, to
//! one task. The task commits whatever has queued as a single transaction
//! (many entries, one head update), through the vault writer, whose answer
//! comes only after the flush; then it answers every waiter of that batch.
//! The handler sends its response only once its entry is durable, and a
//! read whose entry could not be written is refused, not served.
//!
//! Batching keeps reads cheap: while one batch is being flushed, the next
//! queues up, so one fsync covers up to [`BATCH`] reads. The queue is
//! bounded; when it is full a request waits for room (at most
//! [`ROOM_WAIT`]) and is then refused with 503. Nothing is ever written
//! "unflushed" or dropped.

use crate::audit::AuditDraft;
use crate::clock::SharedClock;
use crate::vault::Vault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::error;

/// Reads that may wait for the batching task at once.
pub const QUEUE: usize = 4096;
/// Audit entries per transaction.
const BATCH: usize = 1024;
/// How long a read waits for room in a full queue before it is refused.
pub const ROOM_WAIT: Duration = Duration::from_secs(5);

/// Why a read could not be audited (and so must not be served).
#[derive(Debug, thiserror::Error)]
pub enum ReadAuditError {
    #[error("too many reads are waiting for their audit entries; retry shortly")]
    Busy,
    #[error("the daemon is shutting down")]
    Stopped,
    #[error("the audit entry could not be written: {0}")]
    NotWritten(String),
}

struct Waiter {
    drafts: Vec<AuditDraft>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle the API handlers use. Cloning is cheap; the task ends when
/// the last handle is dropped, after answering everything queued.
#[derive(Clone)]
pub struct ReadAuditor {
    queue: mpsc::Sender<Waiter>,
    waiting: Arc<AtomicUsize>,
}

/// Counts a read from the moment it asks until it has its answer.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadAuditor {
    /// The handle, and the task that writes the entries.
    pub fn start(vault: Vault, clock: SharedClock) -> (Self, tokio::task::JoinHandle<()>) {
        Self::with_capacity(vault, clock, QUEUE)
    }

    /// [`ReadAuditor::start`] with a queue of `capacity` reads (tests use a
    /// small one to exercise the full-queue path).
    pub fn with_capacity(
        vault: Vault,
        clock: SharedClock,
        capacity: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(run(rx, vault, clock));
        (
            Self {
                queue,
                waiting: Arc::new(AtomicUsize::new(0)),
            },
            task,
        )
    }

    /// Returns once every draft is durably in the audit log. An empty list
    /// (a search that found nothing) costs nothing.
    pub async fn record(&self, drafts: Vec<AuditDraft>) -> Result<(), ReadAuditError> {
        if drafts.is_empty() {
            return Ok(());
        }
        let _counted = Counted::new(&self.waiting);
        let (done, answer) = oneshot::channel();
        match tokio::time::timeout(ROOM_WAIT, self.queue.send(Waiter { drafts, done })).await {
            Err(_) => return Err(ReadAuditError::Busy),
            Ok(Err(_)) => return Err(ReadAuditError::Stopped),
            Ok(Ok(())) => {}
        }
        answer
            .await
            .map_err(|_| ReadAuditError::Stopped)?
            .map_err(ReadAuditError::NotWritten)
    }

    /// Reads waiting for their audit entries right now (`/v1/status`).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

async fn run(mut rx: mpsc::Receiver<Waiter>, vault: Vault, clock: SharedClock) {
    // Ends when every handle is gone (the API has stopped and its last
    // requests have been answered), so nothing queued is left unanswered.
    while let Some(first) = rx.recv().await {
        let mut drafts = Vec::new();
        let mut waiters = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next.take() {
            drafts.extend(w.drafts);
            waiters.push(w.done);
            if drafts.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        let entries = drafts.len();
        let outcome = vault
            .record_audit(clock.now(), drafts)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            error!(error = %e, entries, "could not write the audit entries of reads; the reads are refused");
        }
        for done in waiters {
            // A caller that stopped waiting is not an error.
            let _ = done.send(outcome.clone());
        }
    }
}
