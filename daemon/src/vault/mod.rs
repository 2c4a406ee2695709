//! The vault: the only code that touches sled.
//!
//! Every value is sealed (AES-256-GCM, see [`seal`]) under a key from the
//! keyring: the patient's own data key for anything that belongs to a
//! patient, the system key otherwise. Lookup keys that would reveal PHI are
//! blind indexes (HMAC-SHA256). A [`Txn`] gathers puts, removes and audit
//! entries. Every change goes through one writer thread ([`writer`]): a job
//! reads what it needs, decides, and returns a txn, which the writer applies
//! as one atomic commit of the store ([`engine`]); one flush covers every
//! job of a batch, and each caller is answered only once that flush is done
//! (group commit).
//!
//! On-disk layout of a data directory:
//!
//! ```text
//! lock          flock'ed by the process that has the vault open
//! keyring       wrapped data keys (see keyring.rs for why it is not in sled)
//! audit-anchor  the audit chain's durable end, MAC'd (see anchor.rs)
//! store/        sled, and wal: the store's write-ahead log (see wal.rs)
//! ```

mod anchor;
mod apply;
mod audit_log;
pub mod backup;
mod chain;
mod current_keys;
mod engine;
mod erasure;
mod error;
pub mod fsio;
mod key_chunks;
pub mod keyring;
mod keys;
mod keyview;
mod overlay;
mod patients;
mod reads;
pub mod records;
mod recovery;
mod rotate;
pub mod seal;
mod store;
mod txn;
mod verify;
mod wal;
mod writer;

pub use anchor::anchor_path;
pub use error::{VaultError, VaultResult};
use keyview::{KeyInUse, KeyView, PurposeKeys};
pub use rotate::RotationReport;
pub use store::{Tree, DEFAULT_CACHE_BYTES, STORAGE_FAILED};
pub(crate) use txn::AfterCommit;
use txn::Op;
pub use txn::{FirstRecord, Receipt, Txn};
pub use verify::VerifyReport;
pub use writer::{Committed, FlushError};

use crate::audit::{self, AuditDraft, AuditEntry, AuditFault, AuditHead, StoredEntry};
use crate::keys::MasterKey;
use crate::model::PatientId;
use jiff::Timestamp;
use keyring::{KeyOwner, Keyring, KeyringError};
use ring::hkdf;
use ring::hmac;
use ring::rand::SystemRandom;
use seal::{DataKey, SealError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use store::{SledStore, Store, Write};
use zeroize::Zeroizing;

/// The head checkpoint lives in the audit tree itself, under a key that
/// sorts after every seq: an audit-only commit then touches one tree.
const AUDIT_HEAD_KEY: &[u8] = b"head";

/// The mark that an anchor is kept outside the store for this audit log
/// (see anchor.rs); beside the head, after every seq too.
const AUDIT_ANCHORED_KEY: &[u8] = b"anchored";

/// An erasure ledger entry: when, and which keys were destroyed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErasureRecord {
    pub erased_at: Timestamp,
    pub handles: Vec<u64>,
}

/// Who a record belongs to, which decides the key that seals it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    System,
    Patient(PatientId),
}

/// Where the audit chain ends, advanced under the commit lock.
struct ChainState {
    seq: u64,
    hash: String,
    /// Set when the head checkpoint does not open or match at start: no new
    /// entry may be chained onto a log we cannot vouch for.
    damage: Option<String>,
    /// The last seq of each sequenced tree.
    last_seq: HashMap<Tree, u64>,
    /// The seq the anchor file outside sled holds (see [`anchor`]).
    anchored: u64,
    /// Whether the store carries the mark that anchors are written for it
    /// (added to the first audited commit when it does not).
    anchor_marked: bool,
    /// What the anchor check at open found wrong (also in `damage`).
    anchor_fault: Option<AuditFault>,
    /// The number of records in [`Tree::Patients`] (see [`PATIENT_COUNT_KEY`]).
    patients: u64,
    /// The count was made by a scan at open (a store from before it was
    /// kept): the next commit stores it.
    patients_unsaved: bool,
}

struct Inner {
    dir: PathBuf,
    store: SledStore,
    keys: RwLock<KeyView>,
    keyring: Mutex<Keyring>,
    /// Serialises the apply step of commits (microseconds; the fsync happens
    /// outside it) so that audit seqs are dense and ordered.
    commit_lock: Mutex<ChainState>,
    writer: writer::Writer,
    /// Writes the audit anchor; dropped (and so finished) before the lock.
    anchorer: anchor::Anchorer,
    /// The highest event seq known to be on disk; long-polls wait on it.
    events_durable: tokio::sync::watch::Sender<u64>,
    /// Woken when a message lands in the PMS outbox.
    outbox_signal: tokio::sync::Notify,
    /// Woken when a message lands in the WhatsApp outbox.
    wa_outbox_signal: tokio::sync::Notify,
    /// Woken when a commit changed workflow timers (`care`).
    care_signal: tokio::sync::Notify,
    /// The workflow settings (`care`), set once by the service.
    care: std::sync::OnceLock<std::sync::Arc<crate::care::Settings>>,
    /// The minimal-payload policy the outbox checks, set once by the service.
    wa_policy: std::sync::OnceLock<std::sync::Arc<crate::whatsapp::policy::Policy>>,
    /// The slot table in start order, as of a generation (`records.rs`).
    slot_cache: Mutex<records::SlotCache>,
    purpose: PurposeKeys,
    rng: SystemRandom,
    /// Nonces for sealing, drawn in blocks (seal.rs).
    nonces: seal::NoncePool,
    _lock: fs::File,
}

/// A handle to an open vault. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Where the number of patient records is kept (in [`Tree::Meta`]), written
/// by every commit that adds or removes one, so that the status never scans
/// the patients (a scan of 100,000 pulled 39 MB of sled pages into memory).
const PATIENT_COUNT_KEY: &[u8] = b"count/patients";

/// Where the high-water mark of a sequenced tree is kept (in `Meta`).
fn high_water_key(tree: Tree) -> Vec<u8> {
    format!("high-water/{}", tree.name()).into_bytes()
}

pub fn keyring_path(dir: &Path) -> PathBuf {
    dir.join("keyring")
}

pub fn store_path(dir: &Path) -> PathBuf {
    dir.join("store")
}

fn take_lock(dir: &Path) -> VaultResult<fs::File> {
    use rustix::fs::{flock, FlockOperation};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| VaultError::Io {
            path: path.clone(),
            source,
        })?;
    flock(&file, FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| VaultError::Locked(dir.to_owned()))?;
    Ok(file)
}

impl Vault {
    /// Opens an existing vault; never creates one (for offline commands, so a
    /// mistyped data_dir is an error, not an empty log that "verifies").
    pub fn open_existing(dir: &Path, mk: &MasterKey) -> VaultResult<Self> {
        Self::open_existing_with_cache(dir, mk, DEFAULT_CACHE_BYTES)
    }

    /// [`Vault::open_existing`] with a store cache of `cache_bytes`.
    pub fn open_existing_with_cache(
        dir: &Path,
        mk: &MasterKey,
        cache_bytes: u64,
    ) -> VaultResult<Self> {
        if !keyring_path(dir).exists() {
            return Err(VaultError::NotAVault(dir.to_owned()));
        }
        Self::open_with_cache(dir, mk, cache_bytes)
    }

    /// Opens (or creates) the vault in `dir` with the master key.
    pub fn open(dir: &Path, mk: &MasterKey) -> VaultResult<Self> {
        Self::open_with_cache(dir, mk, DEFAULT_CACHE_BYTES)
    }

    /// [`Vault::open`] with a store cache of `cache_bytes` (`service.cache_mb`).
    pub fn open_with_cache(dir: &Path, mk: &MasterKey, cache_bytes: u64) -> VaultResult<Self> {
        let io_err = |source| VaultError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        }
        let lock = take_lock(dir)?;
        let ring_path = keyring_path(dir);
        let had_store = store_path(dir).exists();
        let (keyring, view) = if Keyring::exists(&ring_path) {
            Keyring::open(&ring_path, mk)?
        } else if had_store {
            return Err(VaultError::KeyringMissing(dir.to_owned()));
        } else {
            Keyring::create(&ring_path, mk)?
        };
        let store = SledStore::open_with_cache(&store_path(dir), cache_bytes)?;
        let root = view.root_secret()?;
        let purpose = PurposeKeys::derive(&root)?;
        let anchorer =
            anchor::Anchorer::start(anchor_path(dir), purpose.audit.clone()).map_err(io_err)?;
        let mut writer_error = None;
        let inner = Arc::new_cyclic(|weak| {
            let writer = writer::Writer::start(weak.clone()).unwrap_or_else(|e| {
                writer_error = Some(e);
                writer::Writer::stopped()
            });
            Inner {
                dir: dir.to_owned(),
                store,
                keys: RwLock::new(view),
                keyring: Mutex::new(keyring),
                commit_lock: Mutex::new(ChainState {
                    seq: 0,
                    hash: audit::GENESIS_HASH.to_owned(),
                    damage: None,
                    last_seq: HashMap::new(),
                    anchored: 0,
                    anchor_marked: false,
                    anchor_fault: None,
                    patients: 0,
                    patients_unsaved: false,
                }),
                events_durable: tokio::sync::watch::channel(0).0,
                outbox_signal: tokio::sync::Notify::new(),
                wa_outbox_signal: tokio::sync::Notify::new(),
                care_signal: tokio::sync::Notify::new(),
                care: std::sync::OnceLock::new(),
                wa_policy: std::sync::OnceLock::new(),
                slot_cache: Mutex::new(records::SlotCache::default()),
                writer,
                anchorer,
                purpose,
                rng: SystemRandom::new(),
                nonces: seal::NoncePool::default(),
                _lock: lock,
            }
        });
        if let Some(e) = writer_error {
            return Err(io_err(e));
        }
        let vault = Vault { inner };
        vault.take_keys_from_log()?;
        vault.load_chain_state()?;
        vault.reconcile_erasures()?;
        let retired = vault.drop_retired_mrn_index()?;
        if retired > 0 {
            tracing::info!(
                entries = retired,
                "removed the MRN index of an earlier version"
            );
        }
        Ok(vault)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Flushes, stops the flusher and releases the store. Other clones of
    /// this handle keep working until dropped; the lock is released when the
    /// last one goes.
    pub fn close(self) -> VaultResult<()> {
        self.inner.writer.stop();
        self.inner.anchorer.stop();
        self.checkpoint()?;
        let store_dir = store_path(&self.inner.dir);
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                drop(inner);
                // The last handle is gone; sled closes its files once its
                // background writers finish. Return only then, so that a
                // restart in this process (or a backup) finds the store free.
                SledStore::wait_released(&store_dir);
            }
            Err(still_shared) => {
                tracing::warn!(
                    handles = Arc::strong_count(&still_shared) - 1,
                    "vault closed while other handles remain; the store stays open until they are dropped"
                );
            }
        }
        Ok(())
    }
}
