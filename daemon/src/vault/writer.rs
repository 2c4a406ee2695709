//! The writer: the one thread that changes the vault.
//!
//! Every durable change is a *job*: a closure that reads the state it needs,
//! decides, and returns a [`Txn`]. The writer runs jobs one at a time, so a
//! job's reads and its commit can never interleave with another job's: two
//! inputs about the same patient are applied strictly one after the other,
//! and a precondition read by a job still holds when its writes land.
//!
//! Group commit falls out of the same loop: the writer takes every job that
//! is queued (up to [`MAX_BATCH`]) and applies each; the `vault-flusher`
//! thread then runs **one** flush for the batch and only then answers it.
//! The writer goes on with the next batch meanwhile (its new patients'
//! keys, its jobs), so the disk's flush of one batch overlaps the work of
//! the next. The flusher finishes batches in the order they were applied,
//! so a job that saw an earlier batch's writes is answered only once those
//! are durable too: a repeated idempotency key is never acknowledged before
//! the original is on disk.
//!
//! Once a batch is answered, the `vault-settler` thread writes its commits
//! into sled (engine.rs, "settle"); reads see them in the store's overlay
//! meanwhile, so the next batch's flush does not wait for sled's inserts.
//!
//! Blocking work (sealing, sled, fsync) happens on these three threads, never
//! on the async runtime's workers; async callers await a oneshot.

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
    #[cfg(test)]
    hooks: TestHooks,
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
            #[cfg(test)]
            hooks: TestHooks::default(),
        })
    }

    /// A writer that takes no jobs (when the thread could not be started;
    /// the vault then fails to open).
    pub(super) fn stopped() -> Self {
        Self {
            jobs: std::sync::Mutex::new(None),
            worker: std::sync::Mutex::new(None),
            #[cfg(test)]
            hooks: TestHooks::default(),
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
    let progress = Progress::default();
    // A rendezvous: the writer hands a batch over only when the flusher is
    // free, so at most one batch waits applied but unflushed behind the one
    // being flushed.
    let (to_flusher, applied) = mpsc::sync_channel::<Applied>(0);
    // One wake-up at most waits: a settle takes every durable commit.
    let (wake_settler, settle_wanted) = mpsc::sync_channel::<()>(1);
    let progress = &progress;
    std::thread::scope(|scope| {
        let settler = std::thread::Builder::new()
            .name("vault-settler".to_owned())
            .spawn_scoped(scope, move || {
                for () in settle_wanted {
                    settle(vault);
                }
            });
        let wake_settler = match settler {
            Ok(_) => Some(wake_settler),
            Err(e) => {
                tracing::warn!(error = %e, "no settler thread: the flusher settles each batch itself");
                None
            }
        };
        let flusher = std::thread::Builder::new()
            .name("vault-flusher".to_owned())
            .spawn_scoped(scope, move || {
                for batch in applied {
                    finish_batch(batch);
                    progress.advance();
                    match &wake_settler {
                        Some(wake) => {
                            let _ = wake.try_send(());
                        }
                        None => settle(vault),
                    }
                }
                // Dropping `wake_settler` ends the settler once it is done.
            });
        let to_flusher = match flusher {
            Ok(_) => Some(to_flusher),
            Err(e) => {
                tracing::warn!(error = %e, "no flusher thread: the writer flushes each batch itself");
                None
            }
        };
        apply_batches(rx, vault, to_flusher.as_ref(), progress);
        // Dropping the sender ends the flusher once it has answered every
        // batch; the scope waits for it.
    });
}

/// The writer's loop: takes batches of jobs, applies them, and hands each
/// applied batch to the flusher (or flushes it here, without one).
fn apply_batches(
    rx: &mpsc::Receiver<Queued>,
    vault: &Weak<super::Inner>,
    to_flusher: Option<&mpsc::SyncSender<Applied>>,
    progress: &Progress,
) {
    let mut recovery = super::recovery::RecoveryGate::default();
    // Jobs taken off the queue to end a batch: the next batch's first.
    let mut next: Vec<Queued> = Vec::new();
    let mut handed_over: u64 = 0;
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
        // each new batch first checks whether it can be reopened. A reopen
        // forgets what was applied and not flushed, so it waits until the
        // flusher has answered every batch handed over: those fail with the
        // old store instead of being "flushed" by the new one.
        if vault.inner.store.failure().is_some() {
            progress.wait_for(handed_over);
        }
        vault.recover_store(&mut recovery);
        // Every job queued now is in this batch, and the keys of all the
        // new patients they bring are created first, with one keyring
        // append and one fsync (not one fsync a message). This runs while
        // the flusher flushes the previous batch: the two fsyncs overlap.
        let room = MAX_BATCH.saturating_sub(queued.len());
        queued.extend(rx.try_iter().take(room));
        vault.create_patient_keys(&new_patients_of(&vault, &queued));
        let mut finishes = Vec::new();
        let mut wrote = false;
        loop {
            for q in queued.drain(..) {
                let pending = (q.job)(&vault);
                wrote |= pending.wrote;
                finishes.push(pending.finish);
            }
            // Jobs queued meanwhile join the batch (and its flush) unless
            // they bring a patient without a key: such a job opens the next
            // batch, whose start creates its key with the others'.
            if finishes.len() >= MAX_BATCH {
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
        let chain_end = wrote.then(|| vault.chain_end());
        let batch = Applied {
            vault,
            finishes,
            wrote,
            chain_end,
        };
        match to_flusher {
            Some(tx) => match tx.send(batch) {
                Ok(()) => handed_over += 1,
                Err(mpsc::SendError(batch)) => finish_and_settle(batch),
            },
            None => finish_and_settle(batch),
        }
    }
}

/// Without a flusher thread: the batch is flushed, answered and settled here.
fn finish_and_settle(batch: Applied) {
    let inner = batch.vault.inner.clone();
    finish_batch(batch);
    settle_store(&inner);
}

/// [`settle_store`] unless the vault is gone.
fn settle(vault: &Weak<super::Inner>) {
    if let Some(inner) = vault.upgrade() {
        settle_store(&inner);
    }
}

/// Writes the durable commits into sled (engine.rs, "settle"). A failure
/// fails the store (its commits are in the log); the writer's next batch
/// reopens it, as after a failed flush.
fn settle_store(inner: &super::Inner) {
    use super::store::Store;
    if let Err(e) = inner.store.settle() {
        tracing::error!(error = %e, "writing durable commits into the store failed");
    }
}

/// A batch the writer has applied: what its flush must cover and whom to
/// answer once it has.
struct Applied {
    vault: Vault,
    finishes: Vec<Finish>,
    /// Some job changed the store: the answers need a flush.
    wrote: bool,
    /// The audit chain's end once the batch was applied: what its flush
    /// makes durable, and so what the anchor may then hold (never more: the
    /// writer may already have chained the next batch's entries).
    chain_end: Option<(u64, String)>,
}

/// Flushes a batch (on the flusher thread) and answers its jobs. Batches
/// are finished in the order they were applied, so a batch's answers always
/// follow the flush of every batch before it: a job that saw an earlier
/// batch's writes is answered only once those are durable too.
fn finish_batch(batch: Applied) {
    let Applied {
        vault,
        finishes,
        wrote,
        chain_end,
    } = batch;
    #[cfg(test)]
    vault.inner.writer.wait_at_flush_gate();
    let flushed = if wrote { vault.flush_store() } else { Ok(()) };
    // The audit anchor follows the flush, never leads it (handed to its
    // own thread, see anchor.rs: the answers do not wait for its fsync).
    if let (Ok(()), Some((seq, hash))) = (&flushed, chain_end) {
        vault.advance_anchor_to(seq, hash);
    }
    for finish in finishes {
        let outcome = match &flushed {
            Ok(()) => Ok(()),
            Err(e) => Err(FlushError::Failed(e.clone())),
        };
        finish(&vault, outcome);
    }
    // After the answers: a log holding new patients' keys is emptied here
    // once it is big enough (the keyring gets them first, keys.rs).
    if wrote && flushed.is_ok() {
        vault.checkpoint_if_due();
    }
}

/// How many batches the flusher has answered.
#[derive(Default)]
struct Progress {
    finished: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
}

impl Progress {
    fn advance(&self) {
        *crate::sync::lock(&self.finished) += 1;
        self.changed.notify_all();
    }

    /// Blocks until `count` batches have been answered.
    fn wait_for(&self, count: u64) {
        let mut finished = crate::sync::lock(&self.finished);
        while *finished < count {
            finished = self
                .changed
                .wait(finished)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// Lets a test hold the flusher before a flush.
#[cfg(test)]
#[derive(Default)]
struct TestHooks {
    /// When set, the flusher reports here before each flush, then waits
    /// for a go on the receiver.
    flush_gate: std::sync::Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

#[cfg(test)]
impl Writer {
    fn wait_at_flush_gate(&self) {
        if let Some((arrived, go)) = crate::sync::lock(&self.hooks.flush_gate).as_ref() {
            let _ = arrived.send(());
            let _ = go.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use crate::model::Patient;
    use jiff::Timestamp;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

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

    /// The next batch is applied (its new patient's key made, its record
    /// sealed) while the previous batch's flush is still running; it is
    /// answered only after that flush and its own; both batches' writes
    /// are durable and open after a restart, each patient with one key.
    #[test]
    fn a_batch_is_applied_while_the_previous_one_is_flushed_and_answered_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = MasterKey::generate().unwrap();
        let vault = Vault::open(tmp.path(), &mk).unwrap();
        let (a, b) = (patient(&vault, "A"), patient(&vault, "B"));
        let (arrived_tx, arrived) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        *crate::sync::lock(&vault.inner.writer.hooks.flush_gate) = Some((arrived_tx, go_rx));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let a_answered = Arc::new(AtomicBool::new(false));

        let first = {
            let (vault, a, a_answered) = (vault.clone(), a.clone(), a_answered.clone());
            std::thread::spawn(move || {
                vault
                    .write_blocking(move |v: &Vault| {
                        Ok::<_, VaultError>((v.patient_upsert_txn(&a, "test", now)?, ()))
                    })
                    .unwrap();
                a_answered.store(true, Ordering::SeqCst);
            })
        };
        // A's batch is applied and waits at its flush.
        arrived.recv().unwrap();
        let (b_applied_tx, b_applied) = mpsc::channel::<()>();
        let second = {
            let (vault, b, a_answered) = (vault.clone(), b.clone(), a_answered.clone());
            std::thread::spawn(move || {
                vault
                    .write_blocking(move |v: &Vault| {
                        let a_was_answered = a_answered.load(Ordering::SeqCst);
                        let _ = b_applied_tx.send(());
                        Ok::<_, VaultError>((
                            v.patient_upsert_txn(&b, "test", now)?,
                            a_was_answered,
                        ))
                    })
                    .unwrap()
                    .value
            })
        };
        // B runs while A's flush is held (a serial writer would never get
        // here); only then A's flush goes, then B's.
        b_applied.recv().unwrap();
        go.send(()).unwrap();
        first.join().unwrap();
        arrived.recv().unwrap();
        go.send(()).unwrap();
        let b_saw_a_answered = second.join().unwrap();
        assert!(
            !b_saw_a_answered,
            "B was applied while A's flush was held, before A was answered"
        );
        *crate::sync::lock(&vault.inner.writer.hooks.flush_gate) = None;
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
