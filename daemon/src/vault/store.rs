//! The storage engine behind the vault, reached only through [`Store`], so
//! that sled could be replaced without touching the rest of the crate.
//! Everything written here is already sealed; this layer sees only bytes.

use std::path::Path;

/// The logical trees. Adding a kind of record means adding a variant here
/// (and to `ALL`, in declaration order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Patient records, key = patient id, sealed with the patient's key.
    Patients,
    /// Blind index → patient id, sealed with the patient's key.
    PatientIndex,
    /// Hash-chained audit entries, key = seq (u64 BE), and the MAC'd head
    /// checkpoint under the key `head`; sealed with the system key.
    Audit,
    /// Erased patients: pseudonymous id → time, so a restore can prove none came back.
    Erasures,
    /// Vault bookkeeping (rotation progress and the like).
    Meta,
    /// Appointments, key = blind index of the PMS appointment id, patient's key.
    Appointments,
    /// What belongs to a patient: patient id + kind + record key → empty,
    /// sealed with the patient's key. Serves merges, erasure, "my appointments".
    PatientLinks,
    /// Open slots for self-booking, key = slot id, system key.
    Slots,
    /// Lab results (with their PDF), key = blind index of the order number, patient's key.
    Results,
    /// Consent per patient, key = patient id, patient's key.
    Consents,
    /// The event feed, key = seq, system key. Sequenced.
    Events,
    /// Idempotency: blind index of (sender, message control id) → outcome.
    Ingested,
    /// Messages waiting to go to the PMS, key = seq. Sequenced.
    PmsOutbox,
    /// Messages the PMS rejected for good (AE), key = seq. Sequenced.
    PmsDeadLetters,
    /// What WhatsApp webhooks brought (see `webhook::apply`): inbound
    /// messages (patient's key), delivery states (system key), a patient's
    /// last inbound time; keys are blind indexes or patient ids.
    Webhook,
    /// WhatsApp messages waiting to be sent, key = seq. Sequenced.
    WaOutbox,
    /// WhatsApp messages refused for good or out of attempts. Sequenced.
    WaDeadLetters,
    /// WhatsApp messages sent (wamid, wa_id), key = seq. Sequenced.
    WaSent,
    /// WhatsApp media (see `whatsapp::media`): outbound PDFs waiting to be
    /// sent and inbound media (patient's key), media timers (fetch, delete
    /// at Meta, purge); keys start with a one-byte kind.
    WaMedia,
    /// Patient workflows (see `care::store`): workflow states (patient's
    /// key) and timers keyed by due time, so the scheduler reads only the
    /// next one.
    Care,
    /// KPI entries (see `kpi`): one key per counted happening (day ‖ kpi ‖
    /// a blind id of what was counted), and the reminders' wamids and send
    /// times the counting needs; system key, no PHI.
    Kpi,
}

impl Tree {
    pub const ALL: [Tree; 21] = [
        Tree::Patients,
        Tree::PatientIndex,
        Tree::Audit,
        Tree::Erasures,
        Tree::Meta,
        Tree::Appointments,
        Tree::PatientLinks,
        Tree::Slots,
        Tree::Results,
        Tree::Consents,
        Tree::Events,
        Tree::Ingested,
        Tree::PmsOutbox,
        Tree::PmsDeadLetters,
        Tree::Webhook,
        Tree::WaOutbox,
        Tree::WaDeadLetters,
        Tree::WaSent,
        Tree::WaMedia,
        Tree::Care,
        Tree::Kpi,
    ];

    /// Trees whose keys are dense u64 seqs handed out at commit.
    pub const SEQUENCED: [Tree; 6] = [
        Tree::Events,
        Tree::PmsOutbox,
        Tree::PmsDeadLetters,
        Tree::WaOutbox,
        Tree::WaDeadLetters,
        Tree::WaSent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Patients => "patients",
            Tree::PatientIndex => "patient_index",
            Tree::Audit => "audit",
            Tree::Erasures => "erasures",
            Tree::Meta => "meta",
            Tree::Appointments => "appointments",
            Tree::PatientLinks => "patient_links",
            Tree::Slots => "slots",
            Tree::Results => "results",
            Tree::Consents => "consents",
            Tree::Events => "events",
            Tree::Ingested => "ingested",
            Tree::PmsOutbox => "pms_outbox",
            Tree::PmsDeadLetters => "pms_dead_letters",
            Tree::Webhook => "webhook",
            Tree::WaOutbox => "wa_outbox",
            Tree::WaDeadLetters => "wa_dead_letters",
            Tree::WaSent => "wa_sent",
            Tree::WaMedia => "wa_media",
            Tree::Care => "care",
            Tree::Kpi => "kpi",
        }
    }

    pub fn from_name(name: &str) -> Option<Tree> {
        Tree::ALL.into_iter().find(|t| t.name() == name)
    }

    fn slot(self) -> usize {
        self as usize
    }
}

pub enum Write {
    Put {
        tree: Tree,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Remove {
        tree: Tree,
        key: Vec<u8>,
    },
}

impl Write {
    fn tree(&self) -> Tree {
        match self {
            Write::Put { tree, .. } | Write::Remove { tree, .. } => *tree,
        }
    }
}

pub type StoreResult<T> = Result<T, sled::Error>;
/// An ordered scan of (key, sealed value) pairs.
pub type Scan<'a, B> = Box<dyn Iterator<Item = StoreResult<(B, B)>> + 'a>;

/// What the vault needs from a storage engine: point reads, ordered scans,
/// atomic multi-tree writes, and a flush that returns only once every write
/// applied so far is on disk.
pub trait Store: Send + Sync + 'static {
    type Bytes: AsRef<[u8]>;
    fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<Self::Bytes>>;
    fn last(&self, tree: Tree) -> StoreResult<Option<(Self::Bytes, Self::Bytes)>>;
    fn scan_from(&self, tree: Tree, start: &[u8]) -> Scan<'_, Self::Bytes>;
    fn len(&self, tree: Tree) -> usize;
    /// Applies all writes atomically: after a crash, all or none are there.
    fn apply(&self, writes: &[Write]) -> StoreResult<()>;
    fn flush(&self) -> StoreResult<()>;
}

/// sled's page cache when the config does not say (`service.cache_mb`):
/// sized for a small box. A bigger cache buys little here: reads are point
/// lookups by blind index, and the OS page cache still holds the file.
/// 8 MiB rather than 16: the webhook's peak RSS under load falls from
/// 58–59 to 47 MiB at the same throughput, and the 100,000-patient reminder
/// run takes ~0.83 s instead of ~0.73 s (docs/performance.md).
pub const DEFAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// How an error from a failed store starts; the API answers such errors with
/// 503 (retry later) instead of 500.
pub const STORAGE_FAILED: &str = "storage failed";

/// sled behind a swap: after an I/O error (a full disk) the running sled
/// instance is never touched again. sled 0.34 keeps such an error for the
/// life of the instance, and a read after it can spin forever in a node
/// split that cannot allocate. Every call then fails fast until
/// [`SledStore::recover`] reopens the store from what is on disk, which is
/// exactly what was flushed (and so acknowledged).
pub struct SledStore {
    path: std::path::PathBuf,
    cache_bytes: u64,
    /// Flushes made durable (sled's flush and the fdatasync after it).
    durable_flushes: std::sync::atomic::AtomicU64,
    state: std::sync::RwLock<EngineState>,
}

struct Engine {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// sled's log file (`db`), for the fdatasync its flush leaves out.
    log: std::fs::File,
}

enum EngineState {
    Open(std::sync::Arc<Engine>),
    /// Why writes failed; the old instance is being dropped.
    Failed(String),
}

impl SledStore {
    /// Opens with the default cache ([`DEFAULT_CACHE_BYTES`]).
    pub fn open(dir: &Path) -> StoreResult<Self> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let engine = Engine::open(dir, cache_bytes)?;
        Ok(Self {
            path: dir.to_owned(),
            cache_bytes,
            durable_flushes: std::sync::atomic::AtomicU64::new(0),
            state: std::sync::RwLock::new(EngineState::Open(std::sync::Arc::new(engine))),
        })
    }

    /// Waits (bounded, about five seconds) until no handle of this process holds
    /// sled's lock on the store in `dir`.
    pub fn wait_released(dir: &Path) {
        use rustix::fs::{flock, FlockOperation};
        let Ok(file) = std::fs::File::open(dir.join("db")) else {
            return;
        };
        for _ in 0..500 {
            if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
                let _ = flock(&file, FlockOperation::Unlock);
                return;
            }
            #[allow(clippy::disallowed_methods)]
            // a bounded back-off on a file lock, not business time
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn engine(&self) -> StoreResult<std::sync::Arc<Engine>> {
        match &*crate::sync::read(&self.state) {
            EngineState::Open(engine) => Ok(engine.clone()),
            EngineState::Failed(why) => Err(sled::Error::Io(std::io::Error::other(format!(
                "{STORAGE_FAILED} ({why}); writes resume once space is freed"
            )))),
        }
    }

    /// How many flushes this instance has made durable.
    #[cfg(test)]
    fn durable_flushes(&self) -> u64 {
        self.durable_flushes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the store is failed, if it is.
    pub fn failure(&self) -> Option<String> {
        match &*crate::sync::read(&self.state) {
            EngineState::Open(_) => None,
            EngineState::Failed(why) => Some(why.clone()),
        }
    }

    /// Takes the instance out of service after an I/O error. The old
    /// instance is dropped on a thread of its own (its last flush may take
    /// a while to fail), which releases sled's file lock for a reopen.
    fn fail(&self, error: &sled::Error) {
        let mut state = crate::sync::write(&self.state);
        if let EngineState::Open(engine) = &*state {
            let engine = engine.clone();
            *state = EngineState::Failed(error.to_string());
            drop(state);
            tracing::error!(error = %error, "storage write failed; refusing writes until the store can be reopened");
            let _ = std::thread::Builder::new()
                .name("store-drop".to_owned())
                .spawn(move || drop(engine));
        }
    }

    /// Reopens a failed store from disk. `Ok(true)` when it was failed and
    /// is open again; the caller reloads whatever it derived from the store.
    pub fn recover(&self) -> StoreResult<bool> {
        if self.failure().is_none() {
            return Ok(false);
        }
        let engine = Engine::open(&self.path, self.cache_bytes)?;
        *crate::sync::write(&self.state) = EngineState::Open(std::sync::Arc::new(engine));
        tracing::warn!("storage reopened after a write failure; writes resume");
        Ok(true)
    }

    /// Marks the store failed when `result` is an I/O error.
    fn check<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        if let Err(e @ sled::Error::Io(_)) = &result {
            self.fail(e);
        }
        result
    }
}

impl Engine {
    fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        // Our own flock (taken before this) keeps other processes out. A
        // sled lock still held here is this process's previous instance of
        // the store: sled finishes its last writes on background threads
        // after the handle is dropped, and only then closes the file. Give
        // those threads a moment rather than failing a restart.
        let mut attempts = 0;
        loop {
            match Self::open_once(dir, cache_bytes) {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && attempts < 500 =>
                {
                    attempts += 1;
                    #[allow(clippy::disallowed_methods)]
                    // a bounded back-off on a file lock, not business time
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let db = sled::Config::new()
            .path(dir)
            // We flush explicitly when durability is needed (group commit);
            // the periodic background flush only adds latency jitter.
            .flush_every_ms(None)
            .cache_capacity(cache_bytes)
            .open()?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<StoreResult<Vec<_>>>()?;
        let log = std::fs::File::open(dir.join("db"))?;
        // sled creates the store's folder and files without syncing the
        // folders that name them; a new store's first acknowledged writes
        // must not vanish with its directory entries after a power cut.
        super::fsio::sync_parent_dir(&dir.join("db"))?;
        super::fsio::sync_parent_dir(dir)?;
        Ok(Self { db, trees, log })
    }

    fn tree(&self, t: Tree) -> StoreResult<&sled::Tree> {
        self.trees
            .get(t.slot())
            .ok_or_else(|| sled::Error::Unsupported(format!("tree {} not open", t.name())))
    }
}

impl Store for SledStore {
    type Bytes = sled::IVec;

    fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<sled::IVec>> {
        self.engine()?.tree(tree)?.get(key)
    }

    fn last(&self, tree: Tree) -> StoreResult<Option<(sled::IVec, sled::IVec)>> {
        self.engine()?.tree(tree)?.last()
    }

    fn scan_from(&self, tree: Tree, start: &[u8]) -> Scan<'_, sled::IVec> {
        // sled's iterator owns its tree handle, so the scan outlives the
        // read lock (and keeps an instance it started on).
        match self.engine().and_then(|e| e.tree(tree).cloned()) {
            Ok(t) => Box::new(t.range(start.to_vec()..)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn len(&self, tree: Tree) -> usize {
        self.engine()
            .ok()
            .and_then(|e| e.tree(tree).ok().map(sled::Tree::len))
            .unwrap_or(0)
    }

    fn apply(&self, writes: &[Write]) -> StoreResult<()> {
        let engine = self.engine()?;
        self.check(engine.apply(writes))
    }

    fn flush(&self) -> StoreResult<()> {
        let engine = self.engine()?;
        self.check(engine.db.flush().map(|_| ()))?;
        // sled 0.34's flush ends in sync_file_range, which neither commits
        // the file's metadata (the log grows as it goes) nor flushes the
        // disk's write cache (sled issues #1351 and #1452): after a power
        // cut, writes we acknowledged could be gone. fdatasync on the same
        // file does both; only then is the flush durable.
        self.check(engine.log.sync_data().map_err(sled::Error::from))?;
        self.durable_flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl Engine {
    fn apply(&self, writes: &[Write]) -> StoreResult<()> {
        use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
        // Only the trees this commit touches take part in the transaction.
        let mut involved: Vec<Tree> = writes.iter().map(Write::tree).collect();
        involved.sort();
        involved.dedup();
        if let [only] = involved.as_slice() {
            // One tree: sled's batch is atomic too, and far cheaper than a
            // transaction.
            let mut batch = sled::Batch::default();
            for w in writes {
                match w {
                    Write::Put { key, value, .. } => batch.insert(key.as_slice(), value.as_slice()),
                    Write::Remove { key, .. } => batch.remove(key.as_slice()),
                }
            }
            return self.tree(*only)?.apply_batch(batch);
        }
        let trees = involved
            .iter()
            .map(|t| self.tree(*t).cloned())
            .collect::<StoreResult<Vec<_>>>()?;
        let result = trees.as_slice().transaction(|views| {
            for w in writes {
                let idx = involved.binary_search(&w.tree()).unwrap_or(0);
                let Some(view) = views.get(idx) else {
                    return Err(ConflictableTransactionError::Abort(()));
                };
                match w {
                    Write::Put { key, value, .. } => {
                        view.insert(key.as_slice(), value.as_slice())?;
                    }
                    Write::Remove { key, .. } => {
                        view.remove(key.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e),
            Err(TransactionError::Abort(())) => Err(sled::Error::ReportableBug(
                "transaction view missing".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// sled's own flush is not enough on Linux (sync_file_range): every
    /// flush we answer on must end in an fdatasync of the log, and the
    /// bytes written before it must be in the file it synced.
    #[test]
    fn every_flush_ends_in_an_fdatasync_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.durable_flushes(), 0);
        let marker = b"flush-marker-0123456789".to_vec();
        store
            .apply(&[Write::Put {
                tree: Tree::Meta,
                key: b"k".to_vec(),
                value: marker.clone(),
            }])
            .unwrap();
        store.flush().unwrap();
        assert_eq!(store.durable_flushes(), 1);
        let log = std::fs::read(dir.path().join("db")).unwrap();
        assert!(log.windows(marker.len()).any(|w| w == marker));
        store.flush().unwrap();
        assert_eq!(store.durable_flushes(), 2);
    }
}
