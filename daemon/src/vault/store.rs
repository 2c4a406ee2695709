//! The storage engine behind the vault, reached only through [`Store`], so
//! that sled could be replaced without touching the rest of the crate.
//! Everything written here is already sealed; this layer sees only bytes.

use super::engine::Engine;
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

    pub(super) fn slot(self) -> usize {
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
    fn len(&self, tree: Tree) -> StoreResult<usize>;
    /// Applies all writes atomically: after a crash, all or none are there.
    fn apply(&self, writes: &[Write]) -> StoreResult<()>;
    /// Returns once every write applied so far is durable.
    fn flush(&self) -> StoreResult<()>;
    /// Moves what flushes made durable into the engine's own files (reads
    /// see it before and after): work taken off the flush's path, run by a
    /// thread of its own (vault/writer.rs).
    fn settle(&self) -> StoreResult<()>;
    /// [`Store::flush`], and the engine's own files brought up to date so
    /// that nothing is left to replay (at close, before a copy of the files).
    fn checkpoint(&self) -> StoreResult<()>;
}

/// sled's page cache when the config does not say (`service.cache_mb`):
/// sized for a small box. A bigger cache buys little here: reads are point
/// lookups by blind index, and the OS page cache still holds the file.
/// 8 MiB rather than 16: the webhook's peak RSS under load falls from
/// 58–59 to 47 MiB at the same throughput, and the 100,000-patient reminder
/// run takes ~0.83 s instead of ~0.73 s (docs/performance.md).
pub const DEFAULT_CACHE_BYTES: u64 = 4 * 1024 * 1024;

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

    /// Stages keyring lines for the log's next flush (engine.rs). A failed
    /// instance loses them: the vault stages its staged keys again after
    /// [`SledStore::recover`].
    pub(super) fn stage_keys(&self, lines: &[u8]) {
        if let Ok(engine) = self.engine() {
            engine.stage_keys(lines);
        }
    }

    /// The keyring lines the log held when this instance opened (once).
    pub(super) fn take_recovered_keys(&self) -> Vec<u8> {
        self.engine()
            .map(|e| e.take_recovered_keys())
            .unwrap_or_default()
    }

    /// The log has grown past a checkpoint's size but holds keyring lines:
    /// only the vault, which saves them first, may empty it.
    pub(super) fn checkpoint_due(&self) -> bool {
        self.engine().is_ok_and(|e| e.checkpoint_due())
    }

    /// A checkpoint that empties the log even of keyring lines: the caller
    /// holds the keyring's lock and has appended every staged key to it.
    pub(super) fn checkpoint_keys_saved(&self) -> StoreResult<()> {
        let engine = self.engine()?;
        self.check(engine.checkpoint(true))
    }

    /// Marks the store failed when `result` is an I/O error.
    fn check<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        if let Err(e @ sled::Error::Io(_)) = &result {
            self.fail(e);
        }
        result
    }
}

impl Store for SledStore {
    type Bytes = sled::IVec;

    fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<sled::IVec>> {
        self.engine()?.get(tree, key)
    }

    fn last(&self, tree: Tree) -> StoreResult<Option<(sled::IVec, sled::IVec)>> {
        self.engine()?.last(tree)
    }

    fn scan_from(&self, tree: Tree, start: &[u8]) -> Scan<'_, sled::IVec> {
        match self.engine() {
            Ok(engine) => engine.scan_from(tree, start),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn len(&self, tree: Tree) -> StoreResult<usize> {
        let engine = self.engine()?;
        self.check(engine.len(tree))
    }

    fn apply(&self, writes: &[Write]) -> StoreResult<()> {
        let engine = self.engine()?;
        self.check(engine.apply(writes))
    }

    fn flush(&self) -> StoreResult<()> {
        let engine = self.engine()?;
        self.check(engine.flush())?;
        self.durable_flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn settle(&self) -> StoreResult<()> {
        // A failed instance is settled by its reopen, which applies the log.
        let Ok(engine) = self.engine() else {
            return Ok(());
        };
        self.check(engine.settle())
    }

    fn checkpoint(&self) -> StoreResult<()> {
        let engine = self.engine()?;
        self.check(engine.checkpoint(false))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::wal;
    use super::*;

    fn put(key: &[u8], value: &[u8]) -> Write {
        Write::Put {
            tree: Tree::Meta,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn get(store: &SledStore, key: &[u8]) -> Option<Vec<u8>> {
        store.get(Tree::Meta, key).unwrap().map(|v| v.to_vec())
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    fn audit_put(key: &[u8], value: &[u8]) -> Write {
        Write::Put {
            tree: Tree::Audit,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn audit_scan(store: &SledStore, from: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .scan_from(Tree::Audit, from)
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// Audit entries go to their own file, the tree's other keys to sled;
    /// reads see both in key order, before and after a flush, a checkpoint
    /// and a reopen, and entries a crash kept out of the file come back
    /// from the write-ahead log.
    #[test]
    fn audit_entries_live_in_their_own_file_and_read_back_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let want = |n: u64| -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut all: Vec<(Vec<u8>, Vec<u8>)> = (1..=n)
                .map(|s| (s.to_be_bytes().to_vec(), format!("entry {s}").into_bytes()))
                .collect();
            all.push((b"anchored".to_vec(), b"1".to_vec()));
            all.push((b"head".to_vec(), format!("head {n}").into_bytes()));
            all
        };
        let commit = |store: &SledStore, s: u64| {
            store
                .apply(&[
                    audit_put(&s.to_be_bytes(), format!("entry {s}").as_bytes()),
                    audit_put(b"head", format!("head {s}").as_bytes()),
                    audit_put(b"anchored", b"1"),
                ])
                .unwrap();
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            for s in 1..=300 {
                commit(&store, s);
                if s % 7 == 0 {
                    store.flush().unwrap();
                }
            }
            // Part in the overlay, part in the file.
            assert_eq!(audit_scan(&store, &[]), want(300));
            assert_eq!(audit_scan(&store, &299u64.to_be_bytes()), want(300)[298..]);
            assert_eq!(audit_scan(&store, b"anchored"), want(300)[300..]);
            assert_eq!(audit_scan(&store, b"head"), want(300)[301..]);
            assert_eq!(
                store
                    .get(Tree::Audit, &5u64.to_be_bytes())
                    .unwrap()
                    .unwrap()
                    .as_ref(),
                b"entry 5"
            );
            store.checkpoint().unwrap();
            assert_eq!(store.len(Tree::Audit).unwrap(), 302);
        }
        let file = dir.path().join(super::super::audit_log::FILE);
        let synced = std::fs::metadata(&file).unwrap().len();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(audit_scan(&store, &[]), want(300));
            for s in 301..=320 {
                commit(&store, s);
            }
            store.flush().unwrap();
            // A crash (no checkpoint) after which the file lost its
            // unsynced tail (a power cut): the log still has those entries.
            std::mem::forget(store);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(synced)
            .unwrap();
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let store = SledStore::open(copy.path()).unwrap();
        assert_eq!(audit_scan(&store, &[]), want(320));
    }

    /// A flush makes a commit durable by syncing its record in the
    /// write-ahead log (sled's own flush ends in sync_file_range, which is
    /// not enough on Linux, and costs a hand-off to sled's threads).
    #[test]
    fn a_flush_syncs_the_commit_into_the_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.durable_flushes(), 0);
        let marker = b"flush-marker-0123456789".to_vec();
        store.apply(&[put(b"k", &marker)]).unwrap();
        store.flush().unwrap();
        assert_eq!(store.durable_flushes(), 1);
        let log = std::fs::read(dir.path().join(wal::WAL_FILE)).unwrap();
        assert!(log.windows(marker.len()).any(|w| w == marker));
        store.flush().unwrap();
        assert_eq!(store.durable_flushes(), 2);
        // A checkpoint hands everything to sled and empties the log.
        store.checkpoint().unwrap();
        assert_eq!(wal::tests::records_on_disk(dir.path()), (vec![], 0));
        assert_eq!(get(&store, b"k"), Some(marker));
    }

    /// A log holding keyring lines is emptied only by a checkpoint told that
    /// the keyring has them; it is then due once it passes its size, and the
    /// lines come back at the next open until it is.
    #[test]
    fn a_log_with_keyring_lines_is_kept_until_the_keyring_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let wal_len = |dir: &Path| wal::tests::records_on_disk(dir).1;
        let store = SledStore::open(dir.path()).unwrap();
        store.stage_keys(b"key line\n");
        // Past the checkpoint size in one commit: without keyring lines the
        // flush would have emptied the log.
        let big = vec![7u8; wal::CHECKPOINT_BYTES as usize];
        store.apply(&[put(b"big", &big)]).unwrap();
        store.flush().unwrap();
        assert!(wal_len(dir.path()) >= wal::CHECKPOINT_BYTES);
        assert!(store.checkpoint_due());
        store.checkpoint().unwrap();
        assert!(
            wal_len(dir.path()) > 0,
            "emptied with the keyring lacking its lines"
        );
        drop(store);
        SledStore::wait_released(dir.path());

        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.take_recovered_keys(), b"key line\n");
        assert!(store.take_recovered_keys().is_empty());
        assert_eq!(get(&store, b"big"), Some(big));
        store.checkpoint_keys_saved().unwrap();
        assert_eq!(wal_len(dir.path()), 0);
        assert!(!store.checkpoint_due());
    }

    /// sled's files as they were before a commit, with the log that
    /// recorded it (a crash after the log's fdatasync, before sled wrote
    /// its buffers): the open applies the commit again. A log whose records
    /// do not follow on from the store's commits is refused.
    /// A flush makes commits durable without writing them into sled: reads
    /// see them meanwhile (the overlay), a settle writes them in order, a
    /// checkpoint settles before it empties the log, and a store dropped
    /// before its settle (as by a crash) has them again at the next open.
    #[test]
    fn a_flushed_commit_reads_back_before_and_after_its_settle_and_outlives_a_drop_without_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = SledStore::open(&dir).unwrap();
        let engine = store.engine().unwrap();
        let in_sled = |key: &[u8]| engine.in_sled(Tree::Meta, key).map(|v| v.to_vec());
        store.apply(&[put(b"k", b"1")]).unwrap();
        store.apply(&[put(b"k", b"2"), put(b"j", b"x")]).unwrap();
        store.flush().unwrap();
        assert_eq!((in_sled(b"k"), engine.unsettled()), (None, 2));
        assert_eq!(get(&store, b"k"), Some(b"2".to_vec()));
        store.settle().unwrap();
        assert_eq!(
            (in_sled(b"k"), engine.unsettled()),
            (Some(b"2".to_vec()), 0)
        );
        assert_eq!(get(&store, b"k"), Some(b"2".to_vec()));

        store.apply(&[put(b"c", b"checkpointed")]).unwrap();
        store.flush().unwrap();
        assert_eq!(in_sled(b"c"), None);
        store.checkpoint().unwrap();
        assert_eq!(in_sled(b"c"), Some(b"checkpointed".to_vec()));
        assert_eq!(wal::tests::records_on_disk(&dir), (vec![], 0));

        store
            .apply(&[
                Write::Remove {
                    tree: Tree::Meta,
                    key: b"j".to_vec(),
                },
                put(b"k", b"3"),
            ])
            .unwrap();
        store.flush().unwrap();
        assert_eq!(in_sled(b"k"), Some(b"2".to_vec()));
        drop(engine);
        drop(store);
        SledStore::wait_released(&dir);
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(get(&store, b"k"), Some(b"3".to_vec()));
        assert_eq!(get(&store, b"j"), None);
        assert_eq!(get(&store, b"c"), Some(b"checkpointed".to_vec()));
    }

    /// A reader never sees a key go back to an older value, nor lose it,
    /// while one thread applies commits, another flushes them and a third
    /// settles them into sled: an overlay entry leaves only once sled holds
    /// it, and never for an older commit's settle. (With the overlay let go
    /// before sled's writes, it reads an older value: tried.)
    #[test]
    fn reads_never_go_back_while_commits_are_applied_flushed_and_settled_concurrently() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        const COMMITS: u64 = 3_000;
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(tmp.path()).unwrap());
        let engine = store.engine().unwrap();
        store.apply(&[put(b"k", &0u64.to_be_bytes())]).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let looping = |work: fn(&SledStore)| {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    work(&store);
                }
            })
        };
        let flusher = looping(|s| s.flush().unwrap());
        let settler = looping(|s| s.settle().unwrap());
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (store, done, reads) = (store.clone(), done.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut last = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let seen = get(&store, b"k").expect("the key vanished during a settle");
                    let seen = u64::from_be_bytes(seen.try_into().unwrap());
                    assert!(seen >= last, "read {seen} after {last}");
                    last = seen;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        for i in 1..=COMMITS {
            // Reads interleave with the commits (two a commit at least).
            while reads.load(Ordering::Relaxed) < 2 * i && !reader.is_finished() {
                std::thread::yield_now();
            }
            // Other keys ahead of `k` in every commit: a settle spends a
            // while in sled before it reaches `k`.
            let mut writes: Vec<Write> = (0..64u8)
                .map(|f| put(&[b'f', f], &i.to_be_bytes()))
                .collect();
            writes.push(put(b"k", &i.to_be_bytes()));
            store.apply(&writes).unwrap();
            // Now and then the settles catch up with the newest commit while
            // the reader goes on: the hand-over of `k` itself is then read.
            if i % 16 == 0 {
                while engine.in_sled(Tree::Meta, b"k").as_deref() != Some(&i.to_be_bytes()[..])
                    && ![&reader, &flusher, &settler]
                        .iter()
                        .any(|t| t.is_finished())
                {
                    std::thread::yield_now();
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        flusher.join().unwrap();
        settler.join().unwrap();
        reader.join().unwrap();
        store.checkpoint().unwrap();
        let in_sled = engine.in_sled(Tree::Meta, b"k").unwrap();
        assert_eq!(in_sled.as_ref(), &COMMITS.to_be_bytes());
    }

    /// Without settles (a settler starved of CPU) a flush writes the durable
    /// commits into sled itself once more than the bound wait.
    #[test]
    fn flushes_settle_themselves_when_too_many_commits_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SledStore::open(tmp.path()).unwrap();
        let engine = store.engine().unwrap();
        for i in 0..=super::super::engine::MAX_UNSETTLED {
            store.apply(&[put(b"n", &i.to_be_bytes())]).unwrap();
            store.flush().unwrap();
        }
        assert_eq!(engine.unsettled(), 0);
        let last = super::super::engine::MAX_UNSETTLED.to_be_bytes();
        assert_eq!(engine.in_sled(Tree::Meta, b"n").unwrap().as_ref(), &last);
    }

    #[test]
    fn commits_sled_lost_are_applied_again_from_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (live, old) = (tmp.path().join("live"), tmp.path().join("old"));
        let store = SledStore::open(&live).unwrap();
        store.apply(&[put(b"a", b"1")]).unwrap();
        store.checkpoint().unwrap();
        drop(store);
        SledStore::wait_released(&live);
        copy_dir(&live, &old);

        let store = SledStore::open(&live).unwrap();
        store
            .apply(&[
                put(b"x", b"2"),
                Write::Remove {
                    tree: Tree::Meta,
                    key: b"a".to_vec(),
                },
            ])
            .unwrap();
        store.apply(&[put(b"y", b"3")]).unwrap();
        store.flush().unwrap();
        let log = std::fs::read(live.join(wal::WAL_FILE)).unwrap();
        drop(store);
        SledStore::wait_released(&live);

        std::fs::write(old.join(wal::WAL_FILE), &log).unwrap();
        let store = SledStore::open(&old).unwrap();
        assert_eq!(get(&store, b"a"), None);
        assert_eq!(get(&store, b"x"), Some(b"2".to_vec()));
        assert_eq!(get(&store, b"y"), Some(b"3".to_vec()));
        // Replayed into sled for good: the log starts empty, and the next
        // commit's number follows on.
        assert_eq!(wal::tests::records_on_disk(&old), (vec![], 0));
        store.apply(&[put(b"z", b"4")]).unwrap();
        store.flush().unwrap();
        drop(store);
        SledStore::wait_released(&old);
        let store = SledStore::open(&old).unwrap();
        assert_eq!(get(&store, b"z"), Some(b"4".to_vec()));
        drop(store);

        // The same log beside a store that never had commit 1.
        let fresh = tmp.path().join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::write(fresh.join(wal::WAL_FILE), &log).unwrap();
        let Err(e) = SledStore::open(&fresh) else {
            panic!("a log with a gap was replayed");
        };
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
