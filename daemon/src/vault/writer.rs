//! The writer: the one thread that changes the vault.
//!
//! Every durable change is a *job*: a closure that reads the state it needs,
//! decides, and returns a [`Txn`]. The writer runs jobs one at a time, so a
//! job's reads and its commit can never interleave with another job's: two
//! inputs about the same patient are applied strictly one after the other,
//! and a precondition read by a job still holds when its writes land.
//!
//! Group commit falls out of the same loop: the writer takes every job that
//! is queued (up to [`MAX_BATCH`]), applies each, then runs **one** flush and
//! only then answers the whole batch. Because a batch is flushed before the
//! next one starts, a job only ever sees state that is durable or that is
//! made durable by the same flush that covers its own answer: a repeated
//! idempotency key is never acknowledged before the original is on disk.
//!
//! Blocking work (sealing, sled, fsync) happens on this thread, never on the
//! async runtime's workers; async callers await a oneshot.

use super::{Receipt, Txn, Vault, VaultError, VaultResult};
use crate::model::PatientId;
use std::sync::mpsc;
use std::sync::Weak;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// How many queued jobs one flush may cover.
const MAX_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("flush failed: {0}")]
    Failed(String),
    #[error("the vault is closed")]
    Closed,
}

/// What a job left to do once its batch has been flushed: answer its caller.
pub(super) type Finish = Box<dyn FnOnce(&Vault, Result<(), FlushError>) + Send>;

/// A job's outcome as the writer sees it.
pub(super) struct Pending {
    /// The job changed the store: its answer needs a flush.
    wrote: bool,
    finish: Finish,
}

pub(super) type Job = Box<dyn FnOnce(&Vault) -> Pending + Send>;

/// A job as queued: the closure, and the patients whose first record it
/// may stage. Their data keys are created (durably) before it runs, with
/// those of the other jobs of its batch.
pub(super) struct Queued {
    new_patients: Vec<PatientId>,
    job: Job,
}

pub(super) struct Writer {
    jobs: std::sync::Mutex<Option<mpsc::Sender<Queued>>>,
    worker: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread. It holds only a weak reference, so dropping
    /// the last [`Vault`] handle ends it.
    pub(super) fn start(vault: Weak<super::Inner>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Queued>();
        let worker = std::thread::Builder::new()
            .name("vault-writer".to_owned())
            .spawn(move || run(&rx, &vault))?;
        Ok(Self {
            jobs: std::sync::Mutex::new(Some(tx)),
            worker: std::sync::Mutex::new(Some(worker)),
        })
    }

    /// A writer that takes no jobs (when the thread could not be started;
    /// the vault then fails to open).
    pub(super) fn stopped() -> Self {
        Self {
            jobs: std::sync::Mutex::new(None),
            worker: std::sync::Mutex::new(None),
        }
    }

    pub(super) fn submit(&self, new_patients: Vec<PatientId>, job: Job) -> Result<(), FlushError> {
        crate::sync::lock(&self.jobs)
            .as_ref()
            .ok_or(FlushError::Closed)?
            .send(Queued { new_patients, job })
            .map_err(|_| FlushError::Closed)
    }

    /// Stops the writer after it has answered every queued job. Must not be
    /// called from the writer thread itself (no job does).
    pub(super) fn stop(&self) {
        crate::sync::lock(&self.jobs).take();
        if let Some(worker) = crate::sync::lock(&self.worker).take() {
            if worker.thread().id() != std::thread::current().id() {
                let _ = worker.join();
            }
        }
    }
}

fn run(rx: &mpsc::Receiver<Queued>, vault: &Weak<super::Inner>) {
    let mut recovery = super::recovery::RecoveryGate::default();
    // A job taken off the queue to end a batch: the next batch's first.
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(queued) => queued,
            None => match rx.recv() {
                Ok(queued) => queued,
                Err(_) => return,
            },
        };
        let Some(inner) = vault.upgrade() else {
            return;
        };
        let vault = Vault { inner };
        // After a failed write (a full disk) the store refuses everything;
        // each new batch first checks whether it can be reopened.
        vault.recover_store(&mut recovery);
        // Every job queued now is in this batch, and the keys of all the
        // new patients they bring are created first, with one keyring
        // append and one fsync (not one fsync a message).
        let mut queued: Vec<Queued> = std::iter::once(first)
            .chain(rx.try_iter().take(MAX_BATCH - 1))
            .collect();
        let new_patients: Vec<PatientId> = queued
            .iter()
            .flat_map(|q| q.new_patients.iter().copied())
            .collect();
        vault.create_patient_keys(&new_patients);
        let mut batch = Vec::new();
        let mut wrote = false;
        loop {
            for q in queued.drain(..) {
                let pending = (q.job)(&vault);
                wrote |= pending.wrote;
                batch.push(pending.finish);
            }
            // Jobs queued meanwhile join the batch (and its flush) unless
            // they bring a patient without a key: such a job opens the next
            // batch, whose start creates its key with the others'.
            if batch.len() >= MAX_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(q) if q.new_patients.iter().all(|p| vault.has_patient_key(*p)) => {
                    queued.push(q);
                }
                Ok(q) => {
                    carried = Some(q);
                    break;
                }
                Err(_) => break,
            }
        }
        let flushed = if wrote { vault.flush_store() } else { Ok(()) };
        // The audit anchor follows the flush, never leads it (handed to its
        // own thread, see anchor.rs: the answers do not wait for its fsync).
        if wrote && flushed.is_ok() {
            vault.advance_anchor();
        }
        for finish in batch {
            let outcome = match &flushed {
                Ok(()) => Ok(()),
                Err(e) => Err(FlushError::Failed(e.clone())),
            };
            finish(&vault, outcome);
        }
    }
}

/// What [`Vault::write`] hands back: the job's answer and the commit's receipt.
pub struct Committed<T> {
    pub value: T,
    pub receipt: Receipt,
}

type Reply<T, E> = oneshot::Sender<Result<Committed<T>, E>>;

impl Vault {
    /// Runs `decide` on the writer thread, commits the txn it returns, and
    /// resolves once that commit is durable. `decide` sees every earlier
    /// job's writes and no later job's: its reads and its commit are atomic.
    pub async fn write<T, E, F>(&self, decide: F) -> Result<Committed<T>, E>
    where
        F: FnOnce(&Vault) -> Result<(Txn, T), E> + Send + 'static,
        T: Send + 'static,
        E: From<VaultError> + Send + 'static,
    {
        self.write_for_new_patients(Vec::new(), decide).await
    }

    /// [`Vault::write`] for a job that may stage the first record of the
    /// `new_patients`: the writer creates their data keys (durably) before
    /// the job runs, together with those of every other job in its batch,
    /// so that a message bringing a new patient costs no fsync of its own
    /// before the batch's flush.
    pub async fn write_for_new_patients<T, E, F>(
        &self,
        new_patients: Vec<PatientId>,
        decide: F,
    ) -> Result<Committed<T>, E>
    where
        F: FnOnce(&Vault) -> Result<(Txn, T), E> + Send + 'static,
        T: Send + 'static,
        E: From<VaultError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(new_patients, decide, tx)?;
        rx.await
            .map_err(|_| E::from(VaultError::Flush(FlushError::Closed)))?
    }

    /// [`Vault::write`] for threads outside the async runtime (the CLI,
    /// blocking tasks). Never call it from inside a job.
    pub fn write_blocking<T, E, F>(&self, decide: F) -> Result<Committed<T>, E>
    where
        F: FnOnce(&Vault) -> Result<(Txn, T), E> + Send + 'static,
        T: Send + 'static,
        E: From<VaultError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(Vec::new(), decide, tx)?;
        rx.blocking_recv()
            .map_err(|_| E::from(VaultError::Flush(FlushError::Closed)))?
    }

    /// Queues `txn` without waiting for it (bulk loads in benchmarks and
    /// imports that acknowledge nothing until their own [`Vault::flush`]).
    /// A failure is logged, and the next flush covers what was applied.
    pub fn commit_unflushed(&self, txn: Txn) -> VaultResult<()> {
        let job: Job = Box::new(move |vault: &Vault| {
            let wrote = match vault.apply(txn) {
                Ok(receipt) => receipt.wrote,
                Err(e) => {
                    tracing::error!(error = %e, "an unflushed commit failed");
                    false
                }
            };
            Pending {
                wrote,
                finish: Box::new(|_, _| {}),
            }
        });
        self.inner
            .writer
            .submit(Vec::new(), job)
            .map_err(VaultError::Flush)
    }

    fn submit<T, E, F>(
        &self,
        new_patients: Vec<PatientId>,
        decide: F,
        reply: Reply<T, E>,
    ) -> Result<(), E>
    where
        F: FnOnce(&Vault) -> Result<(Txn, T), E> + Send + 'static,
        T: Send + 'static,
        E: From<VaultError> + Send + 'static,
    {
        let job: Job = Box::new(move |vault: &Vault| run_job(vault, decide, reply));
        self.inner
            .writer
            .submit(new_patients, job)
            .map_err(|e| E::from(VaultError::Flush(e)))
    }

    /// Every write made so far reaches the disk (sled's flush).
    fn flush_store(&self) -> Result<(), String> {
        use super::store::Store;
        self.inner.store.flush().map_err(|e| e.to_string())
    }
}

fn run_job<T, E, F>(vault: &Vault, decide: F, reply: Reply<T, E>) -> Pending
where
    F: FnOnce(&Vault) -> Result<(Txn, T), E> + Send + 'static,
    T: Send + 'static,
    E: From<VaultError> + Send + 'static,
{
    let staged = decide(vault).and_then(|(mut txn, value)| {
        let effects = std::mem::take(&mut txn.after_commit);
        let receipt = vault.apply(txn).map_err(E::from)?;
        // Effects that must follow a durable commit (destroying keys) run
        // here, before the next job: nothing can come between the commit
        // and them. They are rare, so their own flush costs nothing overall.
        if !effects.is_empty() {
            if receipt.wrote {
                vault
                    .flush_store()
                    .map_err(|e| E::from(VaultError::Flush(FlushError::Failed(e))))?;
            }
            for effect in effects {
                vault.run_effect(effect).map_err(E::from)?;
            }
        }
        Ok((value, receipt))
    });
    match staged {
        Err(e) => {
            // Nothing was applied: answer at once.
            let _ = reply.send(Err(e));
            Pending {
                wrote: false,
                finish: Box::new(|_, _| {}),
            }
        }
        Ok((value, receipt)) => Pending {
            wrote: receipt.wrote,
            finish: Box::new(move |vault: &Vault, flushed: Result<(), FlushError>| {
                let answer = match flushed {
                    Ok(()) => {
                        vault.publish_durable(&receipt);
                        Ok(Committed { value, receipt })
                    }
                    Err(e) => Err(E::from(VaultError::Flush(e))),
                };
                // A caller that stopped waiting is not an error.
                let _ = reply.send(answer);
            }),
        },
    }
}
