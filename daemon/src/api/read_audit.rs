//! Audit entries for reads of PHI, written off the request path.
//!
//! A read must be answered in microseconds, but its audit entry costs a
//! hash, a seal and a store write. Requests hand the entry to a channel; one
//! task commits whatever has queued as a single transaction (many entries,
//! one head update, one flush). If the task is gone (shutdown), the entry is
//! written inline instead, so none is dropped.

use crate::audit::AuditDraft;
use crate::clock::SharedClock;
use crate::vault::{Txn, Vault};
use tokio::sync::{mpsc, watch};
use tracing::error;

const QUEUE: usize = 65_536;
const BATCH: usize = 1024;

#[derive(Clone)]
pub struct ReadAuditor {
    queue: mpsc::Sender<AuditDraft>,
    vault: Vault,
    clock: SharedClock,
}

impl ReadAuditor {
    /// The handle, and the task that writes the entries.
    pub fn start(
        vault: Vault,
        clock: SharedClock,
        stop: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(rx, vault.clone(), clock.clone(), stop));
        (
            Self {
                queue,
                vault,
                clock,
            },
            task,
        )
    }

    pub fn record(&self, draft: AuditDraft) {
        if let Err(e) = self.queue.try_send(draft) {
            // Queue full or writer stopped: write it here and now.
            let draft = match e {
                mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
            };
            let mut txn = Txn::new(self.clock.now());
            txn.audit(draft);
            if let Err(e) = self.vault.commit_unflushed(txn) {
                error!(error = %e, "could not audit a read");
            }
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<AuditDraft>,
    vault: Vault,
    clock: SharedClock,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            d = rx.recv() => d,
            _ = stop.changed() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { return };
        let mut txn = Txn::new(clock.now());
        txn.audit(first);
        let mut n = 1;
        while n < BATCH {
            match rx.try_recv() {
                Ok(d) => {
                    txn.audit(d);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = vault.commit_async(txn).await {
            error!(error = %e, entries = n, "could not write audit entries of reads");
        }
    }
}
