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
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// How many times the next batch's keys were made while a flush ran.
    keys_made_during_flush: AtomicU64,
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
            keys_made_during_flush: AtomicU64::new(0),
        })
    }

    /// A writer that takes no jobs (when the thread could not be started;
    /// the vault then fails to open).
    pub(super) fn stopped() -> Self {
        Self {
            jobs: std::sync::Mutex::new(None),
            worker: std::sync::Mutex::new(None),
            keys_made_during_flush: AtomicU64::new(0),
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
    // Jobs taken off the queue before a flush (or to end a batch): the
    // next batch's first.
    let mut next: Vec<Queued> = Vec::new();
    loop {
        let mut queued = if next.is_empty() {
            match rx.recv() {
                Ok(queued) => vec![queued],
                Err(_) => return,
            }
        } else {
            std::mem::take(&mut next)
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
        // append and one fsync (not one fsync a message). Usually they
        // exist already: made while the previous batch was flushed.
        let room = MAX_BATCH.saturating_sub(queued.len());
        queued.extend(rx.try_iter().take(room));
        vault.create_patient_keys(&new_patients_of(&vault, &queued));
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
                    next.push(q);
                    break;
                }
                Err(_) => break,
            }
        }
        let flushed = if wrote {
            // The jobs waiting now make the next batch: their new patients'
            // keys are made (keyring append and fsync) while this batch's
            // flush runs, so that the two fsyncs overlap on the disk instead
            // of following each other. Nothing is sealed under those keys
            // before both are done: the next batch starts after this one.
            let room = MAX_BATCH.saturating_sub(next.len());
            next.extend(rx.try_iter().take(room));
            let upcoming = new_patients_of(&vault, &next);
            if upcoming.is_empty() {
                vault.flush_store()
            } else {
                vault
                    .inner
                    .writer
                    .keys_made_during_flush
                    .fetch_add(1, Ordering::Relaxed);
                std::thread::scope(|scope| {
                    let keys = scope.spawn(|| vault.create_patient_keys(&upcoming));
                    let flushed = vault.flush_store();
                    // A failure to make a key is the next batch's to
                    // report (its jobs make sure of their keys).
                    let _ = keys.join();
                    flushed
                })
            }
        } else {
            Ok(())
        };
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

/// The patients that `jobs` may create and that have no data key yet.
fn new_patients_of(vault: &Vault, jobs: &[Queued]) -> Vec<PatientId> {
    jobs.iter()
        .flat_map(|q| q.new_patients.iter().copied())
        .filter(|p| !vault.has_patient_key(*p))
        .collect()
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

#[cfg(test)]
impl Writer {
    pub(super) fn keys_made_during_flush(&self) -> u64 {
        self.keys_made_during_flush.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use crate::model::Patient;
    use jiff::Timestamp;

    fn patient(vault: &Vault, tag: &str) -> Patient {
        let mrn = format!("ZZWRITERMRN{tag}");
        Patient {
            id: vault.patient_id_for_mrn("TESTHOSP", &mrn),
            mrn,
            family_name: format!("ZZWRITERFAMILY{tag}"),
            given_name: "ZZWRITERGIVEN".to_owned(),
            birth_date: None,
            phone: None,
            language: None,
            deceased: false,
            protected: false,
        }
    }

    /// A job that brings a new patient and queues while a batch runs gets
    /// its key made during that batch's flush (the two fsyncs overlap), and
    /// its record is still sealed only under a durable key: it opens after a
    /// restart, and the keyring holds exactly one line for it.
    #[test]
    fn next_batch_keys_are_made_during_the_flush_and_survive_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = MasterKey::generate().unwrap();
        let vault = Vault::open(tmp.path(), &mk).unwrap();
        let (a, b) = (patient(&vault, "A"), patient(&vault, "B"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (running_tx, running_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        // Job A: holds its batch open until job B is queued behind it.
        let first = {
            let (vault, a) = (vault.clone(), a.clone());
            std::thread::spawn(move || {
                vault
                    .write_blocking(move |v: &Vault| {
                        running_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                        Ok::<_, VaultError>((v.patient_upsert_txn(&a, "test", now)?, ()))
                    })
                    .unwrap();
            })
        };
        running_rx.recv().unwrap();
        let second = {
            let (vault, b) = (vault.clone(), b.clone());
            rt.spawn(async move {
                let id = b.id;
                vault
                    .write_for_new_patients(vec![id], move |v: &Vault| {
                        // Made before this job ran, by the previous flush.
                        let had_key = v.has_patient_key(id);
                        Ok::<_, VaultError>((v.patient_upsert_txn(&b, "test", now)?, had_key))
                    })
                    .await
            })
        };
        // Job B is queued once the writer's channel holds it; the runtime
        // has to poll the task for that.
        rt.block_on(async {
            for _ in 0..1000 {
                tokio::task::yield_now().await;
            }
        });
        go_tx.send(()).unwrap();
        first.join().unwrap();
        let b_had_key = rt.block_on(second).unwrap().unwrap().value;
        assert!(b_had_key, "B's key existed before B's job ran");
        assert_eq!(vault.inner.writer.keys_made_during_flush(), 1);
        vault.close().unwrap();

        let text = std::fs::read_to_string(super::super::keyring_path(tmp.path())).unwrap();
        for p in [&a, &b] {
            let label = format!("patient:{}", p.id.to_hex());
            assert_eq!(text.matches(&label).count(), 1, "one key line per patient");
        }
        let vault = Vault::open(tmp.path(), &mk).unwrap();
        assert_eq!(vault.get_patient(a.id).unwrap().as_ref(), Some(&a));
        assert_eq!(vault.get_patient(b.id).unwrap().as_ref(), Some(&b));
    }
}
