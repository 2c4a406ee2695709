//! Group commit: many committers, one fsync.
//!
//! A committer applies its writes (in memory, microseconds), then asks the
//! flusher thread to make them durable and waits. The flusher takes every
//! request that is queued, runs one flush, and answers them all: writes
//! applied before a flush starts are covered by it, so no request waits for
//! more than the flush in progress plus one more.

use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

type Outcome = Result<(), String>;
type Waiter = oneshot::Sender<Outcome>;

pub struct GroupCommit {
    requests: std::sync::Mutex<Option<mpsc::Sender<Waiter>>>,
    worker: std::sync::Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("flush failed: {0}")]
    Failed(String),
    #[error("the vault is closed")]
    Closed,
}

impl GroupCommit {
    pub fn start(flush: impl Fn() -> Result<(), String> + Send + 'static) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let worker = std::thread::Builder::new()
            .name("vault-flush".to_owned())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let outcome = flush();
                    for waiter in batch {
                        // A committer that gave up waiting is not an error.
                        let _ = waiter.send(outcome.clone());
                    }
                }
            })?;
        Ok(Self {
            requests: std::sync::Mutex::new(Some(tx)),
            worker: std::sync::Mutex::new(Some(worker)),
        })
    }

    fn enqueue(&self) -> Result<oneshot::Receiver<Outcome>, FlushError> {
        let (tx, rx) = oneshot::channel();
        crate::sync::lock(&self.requests)
            .as_ref()
            .ok_or(FlushError::Closed)?
            .send(tx)
            .map_err(|_| FlushError::Closed)?;
        Ok(rx)
    }

    /// Waits (blocking the thread) until everything applied so far is durable.
    pub fn wait_durable(&self) -> Result<(), FlushError> {
        self.enqueue()?
            .blocking_recv()
            .map_err(|_| FlushError::Closed)?
            .map_err(FlushError::Failed)
    }

    /// Waits (asynchronously) until everything applied so far is durable.
    pub async fn durable(&self) -> Result<(), FlushError> {
        self.enqueue()?
            .await
            .map_err(|_| FlushError::Closed)?
            .map_err(FlushError::Failed)
    }

    /// Stops the flusher after it has answered every queued request.
    pub fn stop(&self) {
        crate::sync::lock(&self.requests).take();
        if let Some(worker) = crate::sync::lock(&self.worker).take() {
            let _ = worker.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}
