//! The vault: the only code that touches sled.
//!
//! Every value is sealed (AES-256-GCM, see [`seal`]) under a key from the
//! keyring: the patient's own data key for anything that belongs to a
//! patient, the system key otherwise. Lookup keys that would reveal PHI are
//! blind indexes (HMAC-SHA256). A [`Txn`] gathers puts, removes and audit
//! entries. Every change goes through one writer thread ([`writer`]): a job
//! reads what it needs, decides, and returns a txn, which the writer applies
//! in one sled transaction; one flush covers every job of a batch, and each
//! caller is answered only once that flush is done (group commit).
//!
//! On-disk layout of a data directory:
//!
//! ```text
//! lock       flock'ed by the process that has the vault open
//! keyring    wrapped data keys (see keyring.rs for why it is not in sled)
//! store/     sled
//! ```

pub mod backup;
pub mod fsio;
pub mod keyring;
mod patients;
pub mod records;
mod rotate;
pub mod seal;
mod store;
mod verify;
mod writer;

pub use rotate::RotationReport;
pub use store::Tree;
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
/// sorts after every seq: an audit-only commit then touches one tree, which
/// sled applies as a plain atomic batch.
const AUDIT_HEAD_KEY: &[u8] = b"head";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("a record in {tree} is damaged: {source}")]
    Damaged {
        tree: &'static str,
        source: SealError,
    },
    #[error("a record in {tree} is sealed with key {handle}, which the keyring no longer holds (the patient was erased, or this is not the keyring of this data)")]
    KeyUnavailable { tree: &'static str, handle: u64 },
    #[error(
        "a record in {tree} does not decode: {category} error at line {line}, column {column}"
    )]
    Decode {
        tree: &'static str,
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("no data key for patient {0}: create the patient before storing their records")]
    NoPatientKey(PatientId),
    #[error("storage engine: {0}")]
    Store(#[from] sled::Error),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another clinic-relay process (its lock file is held); stop it first")]
    Locked(PathBuf),
    #[error("data directory {0} has stored data but no keyring: restore the keyring from the copy next to your backups; refusing to create a new one")]
    KeyringMissing(PathBuf),
    #[error("{0} holds no clinic-relay data (no keyring): check service.data_dir")]
    NotAVault(PathBuf),
    #[error(
        "the audit log is damaged ({0}); run `clinic-relay audit verify` and restore from backup"
    )]
    AuditDamaged(String),
    #[error("audit log: {0}")]
    Audit(#[from] AuditFault),
    #[error("durability: {0}")]
    Flush(#[from] FlushError),
    #[error("a record could not be encoded")]
    Encode,
    #[error("the system random number generator failed")]
    Rng,
    #[error("the keys are destroyed here, but the keyring copy kept for restores could not be updated ({0}); fix keys.keyring_copy and repeat the erasure")]
    KeyringCopyStale(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl VaultError {
    fn decode(tree: Tree, e: &serde_json::Error) -> Self {
        // Never include serde's message: it quotes the offending input, which
        // may be PHI. Category and position are enough to find the bug.
        let category = match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        };
        VaultError::Decode {
            tree: tree.name(),
            category,
            line: e.line(),
            column: e.column(),
        }
    }
}

pub type VaultResult<T> = Result<T, VaultError>;

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

/// A staged change. Kept in staging order: a remove followed by a put of the
/// same key leaves the new value.
enum Op {
    Put(Tree, Vec<u8>, Owner, Zeroizing<Vec<u8>>),
    Remove(Tree, Vec<u8>),
}

/// What must follow a commit once it is durable, run by the writer before
/// the next job (so nothing can come between the commit and the effect).
pub(crate) enum AfterCommit {
    /// Crypto-shredding: the patient's erasure is recorded; all their keys go.
    DestroyPatientKeys(PatientId),
    /// These keys of a patient go (a patient merged into an erased one:
    /// the keys they had at the merge, not one they got since).
    DestroyHandles(PatientId, Vec<u64>),
    /// A merged patient's keys stay readable (older backups) but seal
    /// nothing new: registered again, the patient gets a fresh key.
    RetirePatientKeys(PatientId),
}

/// The set of changes one commit applies atomically.
pub struct Txn {
    time: Timestamp,
    ops: Vec<Op>,
    audits: Vec<AuditDraft>,
    appends: Vec<(Tree, Owner, Zeroizing<Vec<u8>>)>,
    absent: Vec<(Tree, Vec<u8>)>,
    after_commit: Vec<AfterCommit>,
    /// Answer only after a flush even if this txn writes nothing (a repeat
    /// is acknowledged with the same durability as its original).
    flush_anyway: bool,
}

impl Txn {
    pub fn new(now: Timestamp) -> Self {
        Self {
            time: now,
            ops: Vec::new(),
            audits: Vec::new(),
            appends: Vec::new(),
            absent: Vec::new(),
            after_commit: Vec::new(),
            flush_anyway: false,
        }
    }

    /// Makes the answer wait for a flush even if nothing is written.
    pub fn wait_for_flush(&mut self) {
        self.flush_anyway = true;
    }

    pub fn time(&self) -> Timestamp {
        self.time
    }

    /// Appends a record to a sequenced tree (events, queues): the vault gives
    /// it the next seq under the commit lock, so seqs are dense and ordered.
    pub fn append(&mut self, tree: Tree, owner: Owner, plaintext: Vec<u8>) {
        self.appends.push((tree, owner, Zeroizing::new(plaintext)));
    }

    pub fn append_json<T: Serialize>(
        &mut self,
        tree: Tree,
        owner: Owner,
        value: &T,
    ) -> VaultResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|_| VaultError::Encode)?;
        self.append(tree, owner, bytes);
        Ok(())
    }

    /// Makes the whole txn conditional on `key` not existing in `tree`
    /// (checked under the commit lock). If it exists, nothing is applied and
    /// the receipt says `duplicate`. This is how idempotency keys work.
    pub fn require_absent(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.absent.push((tree, key.into()));
    }

    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, owner: Owner, plaintext: Vec<u8>) {
        self.ops
            .push(Op::Put(tree, key.into(), owner, Zeroizing::new(plaintext)));
    }

    pub fn put_json<T: Serialize>(
        &mut self,
        tree: Tree,
        key: impl Into<Vec<u8>>,
        owner: Owner,
        value: &T,
    ) -> VaultResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|_| VaultError::Encode)?;
        self.put(tree, key, owner, bytes);
        Ok(())
    }

    pub fn remove(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Remove(tree, key.into()));
    }

    pub fn audit(&mut self, draft: AuditDraft) {
        self.audits.push(draft);
    }

    /// Moves everything staged in `other` into this txn (its time is dropped).
    pub fn extend(&mut self, other: Txn) {
        self.ops.extend(other.ops);
        self.audits.extend(other.audits);
        self.appends.extend(other.appends);
        self.absent.extend(other.absent);
        self.after_commit.extend(other.after_commit);
        self.flush_anyway |= other.flush_anyway;
    }

    /// Asks for `effect` once this txn is durable.
    pub(crate) fn after_commit(&mut self, effect: AfterCommit) {
        self.after_commit.push(effect);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.audits.is_empty() && self.appends.is_empty()
    }
}

/// The first record of a tree: its key, and its value or why it does not open.
pub type FirstRecord = (Vec<u8>, VaultResult<Vec<u8>>);

/// What a durable commit reports back. Only the vault makes one, and only
/// for a commit it applied: holding a receipt proves the txn was applied
/// (and, handed out by [`Vault::write`], that it is on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The seq of the last audit entry this commit wrote, if any.
    audit_seq: Option<u64>,
    /// The seqs given to appended records, in the order they were added.
    appended: Vec<(Tree, u64)>,
    /// A `require_absent` key existed: nothing was applied.
    duplicate: bool,
    /// Something reached the store (an empty txn writes nothing).
    wrote: bool,
}

impl Receipt {
    fn empty() -> Self {
        Self {
            audit_seq: None,
            appended: Vec::new(),
            duplicate: false,
            wrote: false,
        }
    }

    pub fn audit_seq(&self) -> Option<u64> {
        self.audit_seq
    }

    pub fn appended(&self) -> &[(Tree, u64)] {
        &self.appended
    }

    pub fn duplicate(&self) -> bool {
        self.duplicate
    }

    /// The last seq appended to `tree` by this commit.
    pub fn last_in(&self, tree: Tree) -> Option<u64> {
        self.appended
            .iter()
            .rev()
            .find(|(t, _)| *t == tree)
            .map(|(_, s)| *s)
    }
}

/// A data key with what the keyring says about it.
struct ViewKey {
    key: DataKey,
    owner: KeyOwner,
    gen: u32,
}

/// The unwrapped keys, arranged for the hot path.
struct KeyView {
    by_handle: HashMap<u64, Arc<ViewKey>>,
    current: HashMap<KeyOwner, Arc<ViewKey>>,
    /// The keyring generation new records are sealed in.
    generation: u32,
}

impl KeyView {
    fn build(ring: &Keyring) -> VaultResult<Self> {
        let mut view = KeyView {
            by_handle: HashMap::new(),
            current: HashMap::new(),
            generation: ring.meta.generation,
        };
        for e in ring.entries().filter(|e| e.owner != KeyOwner::Root) {
            view.add(e)?;
        }
        Ok(view)
    }

    fn add(&mut self, e: &keyring::KeyEntry) -> VaultResult<()> {
        let vk = Arc::new(ViewKey {
            key: DataKey::new(e.handle, &e.secret).map_err(|_| VaultError::Rng)?,
            owner: e.owner,
            gen: e.gen,
        });
        let newer = !e.retired
            && self
                .current
                .get(&e.owner)
                .is_none_or(|cur| (cur.gen, cur.key.handle) < (e.gen, e.handle));
        if newer {
            self.current.insert(e.owner, vk.clone());
        }
        self.by_handle.insert(e.handle, vk);
        Ok(())
    }
}

/// Keys derived from the keyring's root: stable across master key rotation,
/// so blind indexes and the audit chain's MAC never change.
struct PurposeKeys {
    index: hmac::Key,
    audit: hmac::Key,
    backup: Zeroizing<[u8; 32]>,
}

impl PurposeKeys {
    fn derive(root: &[u8; 32]) -> VaultResult<Self> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"clinic-relay purpose keys v1").extract(root);
        let hmac_key = |info: &'static [u8]| -> VaultResult<hmac::Key> {
            prk.expand(&[info], hmac::HMAC_SHA256)
                .map(hmac::Key::from)
                .map_err(|_| VaultError::Rng)
        };
        let mut backup = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"backup"], hmac::HMAC_SHA256)
            .and_then(|okm| okm.fill(backup.as_mut()))
            .map_err(|_| VaultError::Rng)?;
        Ok(Self {
            index: hmac_key(b"blind-index")?,
            audit: hmac_key(b"audit-mac")?,
            backup,
        })
    }
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
    /// The highest event seq known to be on disk; long-polls wait on it.
    events_durable: tokio::sync::watch::Sender<u64>,
    /// Woken when a message lands in the PMS outbox.
    outbox_signal: tokio::sync::Notify,
    purpose: PurposeKeys,
    rng: SystemRandom,
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
        if !keyring_path(dir).exists() {
            return Err(VaultError::NotAVault(dir.to_owned()));
        }
        Self::open(dir, mk)
    }

    /// Opens (or creates) the vault in `dir` with the master key.
    pub fn open(dir: &Path, mk: &MasterKey) -> VaultResult<Self> {
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
        let keyring = if Keyring::exists(&ring_path) {
            Keyring::open(&ring_path, mk)?
        } else if had_store {
            return Err(VaultError::KeyringMissing(dir.to_owned()));
        } else {
            Keyring::create(&ring_path, mk)?
        };
        let store = SledStore::open(&store_path(dir))?;
        let root = keyring
            .current(KeyOwner::Root)
            .map(|e| e.secret.clone())
            .ok_or(VaultError::Internal("the keyring has no root key"))?;
        let purpose = PurposeKeys::derive(&root)?;
        let view = KeyView::build(&keyring)?;
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
                }),
                events_durable: tokio::sync::watch::channel(0).0,
                outbox_signal: tokio::sync::Notify::new(),
                writer,
                purpose,
                rng: SystemRandom::new(),
                _lock: lock,
            }
        });
        if let Some(e) = writer_error {
            return Err(io_err(e));
        }
        let vault = Vault { inner };
        vault.load_chain_state()?;
        vault.reconcile_erasures()?;
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
        self.inner.store.flush()?;
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

    // ---- keys -------------------------------------------------------------

    /// The blind index of `value` in `domain`: HMAC-SHA256 under the index key.
    pub fn blind_index(&self, domain: &str, value: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.inner.purpose.index);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub(crate) fn audit_key(&self) -> &hmac::Key {
        &self.inner.purpose.audit
    }

    /// The key backups are sealed with (stable across master key rotation).
    pub fn backup_key(&self) -> &[u8; 32] {
        &self.inner.purpose.backup
    }

    /// Keeps a copy of the keyring at `path`, updated on every change.
    pub fn set_keyring_mirror(&self, path: &Path) -> VaultResult<()> {
        Ok(crate::sync::lock(&self.inner.keyring).set_mirror(path)?)
    }

    /// Why the keyring copy is stale, if it is.
    pub fn keyring_mirror_error(&self) -> Option<String> {
        crate::sync::lock(&self.inner.keyring)
            .mirror_error()
            .map(str::to_owned)
    }

    pub fn has_patient_key(&self, id: PatientId) -> bool {
        crate::sync::read(&self.inner.keys)
            .current
            .contains_key(&KeyOwner::Patient(id))
    }

    /// Makes sure the patient has a data key, creating it durably (keyring
    /// append + fsync) if needed. Must precede the first record of a patient.
    pub fn ensure_patient_key(&self, id: PatientId) -> VaultResult<()> {
        if self.has_patient_key(id) {
            return Ok(());
        }
        let mut ring = crate::sync::lock(&self.inner.keyring);
        if self.has_patient_key(id) {
            return Ok(());
        }
        let entry = ring.add_durable(KeyOwner::Patient(id))?;
        crate::sync::write(&self.inner.keys).add(entry)
    }

    fn sealing_key(&self, owner: Owner) -> VaultResult<Arc<ViewKey>> {
        let kind = match owner {
            Owner::System => KeyOwner::System,
            Owner::Patient(p) => KeyOwner::Patient(p),
        };
        crate::sync::read(&self.inner.keys)
            .current
            .get(&kind)
            .cloned()
            .ok_or(match owner {
                Owner::Patient(p) => VaultError::NoPatientKey(p),
                Owner::System => VaultError::Internal("the keyring has no system key"),
            })
    }

    fn seal_value(
        &self,
        tree: Tree,
        key: &[u8],
        owner: Owner,
        plain: &[u8],
    ) -> VaultResult<Vec<u8>> {
        let vk = self.sealing_key(owner)?;
        seal::seal(&vk.key, &self.inner.rng, tree.name(), key, plain).map_err(|source| {
            VaultError::Damaged {
                tree: tree.name(),
                source,
            }
        })
    }

    fn open_value(&self, tree: Tree, key: &[u8], sealed: &[u8]) -> VaultResult<Vec<u8>> {
        let damaged = |source| VaultError::Damaged {
            tree: tree.name(),
            source,
        };
        let handle = seal::handle_of(sealed).map_err(damaged)?;
        let vk = crate::sync::read(&self.inner.keys)
            .by_handle
            .get(&handle)
            .cloned()
            .ok_or(VaultError::KeyUnavailable {
                tree: tree.name(),
                handle,
            })?;
        seal::open(&vk.key, tree.name(), key, sealed).map_err(damaged)
    }

    // ---- reads ------------------------------------------------------------

    /// Reads and opens one record.
    pub fn get(&self, tree: Tree, key: &[u8]) -> VaultResult<Option<Vec<u8>>> {
        match self.inner.store.get(tree, key)? {
            None => Ok(None),
            Some(sealed) => self.open_value(tree, key, sealed.as_ref()).map(Some),
        }
    }

    pub fn get_json<T: DeserializeOwned>(&self, tree: Tree, key: &[u8]) -> VaultResult<Option<T>> {
        match self.get(tree, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| VaultError::decode(tree, &e)),
        }
    }

    /// Records of `tree` whose key starts with `prefix`, in key order, opened.
    pub fn scan_prefix<'a>(
        &'a self,
        tree: Tree,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = VaultResult<(Vec<u8>, Vec<u8>)>> + 'a {
        self.inner
            .store
            .scan_from(tree, prefix)
            .take_while(move |r| {
                r.as_ref()
                    .map_or(true, |(k, _)| k.as_ref().starts_with(prefix))
            })
            .map(move |r| {
                let (k, v) = r?;
                let plain = self.open_value(tree, k.as_ref(), v.as_ref())?;
                Ok((k.as_ref().to_vec(), plain))
            })
    }

    /// The number of records in a tree.
    pub fn count(&self, tree: Tree) -> usize {
        self.inner.store.len(tree)
    }

    // ---- writes -----------------------------------------------------------

    fn seal_ops(&self, ops: &[Op]) -> VaultResult<Vec<Write>> {
        ops.iter()
            .map(|op| match op {
                Op::Put(tree, key, owner, plain) => Ok(Write::Put {
                    tree: *tree,
                    key: key.clone(),
                    value: self.seal_value(*tree, key, *owner, plain)?,
                }),
                Op::Remove(tree, key) => Ok(Write::Remove {
                    tree: *tree,
                    key: key.clone(),
                }),
            })
            .collect()
    }

    /// Seals the txn's values and applies everything in one transaction,
    /// chaining its audit entries. Does not wait for durability. Called only
    /// by the writer thread ([`writer`]).
    fn apply(&self, txn: Txn) -> VaultResult<Receipt> {
        // Seal outside the commit lock: it is the CPU-heavy part.
        let sealed_in = crate::sync::read(&self.inner.keys).generation;
        let mut writes = self.seal_ops(&txn.ops)?;
        let mut chain = crate::sync::lock(&self.inner.commit_lock);
        if crate::sync::read(&self.inner.keys).generation != sealed_in {
            // A key rotation began while we sealed: the re-sealer may already
            // have passed these keys, so seal again under the new generation.
            writes = self.seal_ops(&txn.ops)?;
        }
        let mut receipt = Receipt::empty();
        receipt.wrote = txn.flush_anyway;
        for (tree, key) in &txn.absent {
            if self.inner.store.get(*tree, key)?.is_some() {
                receipt.duplicate = true;
                return Ok(receipt);
            }
        }
        let mut next_seqs: Vec<(Tree, u64)> = Vec::new();
        for (tree, owner, plain) in &txn.appends {
            let last = next_seqs
                .iter()
                .rev()
                .find(|(t, _)| t == tree)
                .map(|(_, s)| *s)
                .or_else(|| chain.last_seq.get(tree).copied())
                .unwrap_or(0);
            let seq = last + 1;
            let key = seq.to_be_bytes().to_vec();
            let value = self.seal_value(*tree, &key, *owner, plain)?;
            writes.push(Write::Put {
                tree: *tree,
                key,
                value,
            });
            next_seqs.push((*tree, seq));
        }
        // The high-water marks are stored, not derived from the last key at
        // the next start: a drained queue or a pruned feed must never hand
        // out a number again (feed cursors would skip, receipts collide).
        let mut marked: Vec<Tree> = Vec::new();
        for (tree, seq) in next_seqs.iter().rev() {
            if marked.contains(tree) {
                continue;
            }
            marked.push(*tree);
            let key = high_water_key(*tree);
            let value = self.seal_value(Tree::Meta, &key, Owner::System, &seq.to_be_bytes())?;
            writes.push(Write::Put {
                tree: Tree::Meta,
                key,
                value,
            });
        }
        let (mut seq, mut hash) = (chain.seq, chain.hash.clone());
        if !txn.audits.is_empty() {
            if let Some(why) = &chain.damage {
                return Err(VaultError::AuditDamaged(why.clone()));
            }
            for draft in txn.audits {
                let entry = AuditEntry::chain(seq, &hash, txn.time, draft);
                let key = entry.seq.to_be_bytes().to_vec();
                let json = serde_json::to_vec(&entry).map_err(|_| VaultError::Encode)?;
                let value = self.seal_value(Tree::Audit, &key, Owner::System, &json)?;
                writes.push(Write::Put {
                    tree: Tree::Audit,
                    key,
                    value,
                });
                seq = entry.seq;
                hash = entry.hash;
            }
            let head = AuditHead::new(&self.inner.purpose.audit, seq, &hash);
            let json = serde_json::to_vec(&head).map_err(|_| VaultError::Encode)?;
            let value = self.seal_value(Tree::Audit, AUDIT_HEAD_KEY, Owner::System, &json)?;
            writes.push(Write::Put {
                tree: Tree::Audit,
                key: AUDIT_HEAD_KEY.to_vec(),
                value,
            });
            receipt.audit_seq = Some(seq);
        }
        if writes.is_empty() {
            // Nothing changed (an unchanged record, a repeat): sled must not
            // see an empty transaction (it panics on one).
            return Ok(receipt);
        }
        self.inner.store.apply(&writes)?;
        receipt.wrote = true;
        chain.seq = seq;
        chain.hash = hash;
        for (tree, s) in &next_seqs {
            chain.last_seq.insert(*tree, *s);
        }
        receipt.appended = next_seqs;
        Ok(receipt)
    }

    /// Commits `txn` as a job of the writer and returns once it is durable.
    /// Blocks the thread: from async code use [`Vault::commit_async`]. For a
    /// txn whose content depends on what is stored, use [`Vault::write`], so
    /// that the reads happen on the writer too.
    pub fn commit(&self, txn: Txn) -> VaultResult<Receipt> {
        self.write_blocking(move |_| Ok::<_, VaultError>((txn, ())))
            .map(|c| c.receipt)
    }

    /// Tells long-polls about events that are now on disk. Any flush that
    /// covers this commit covers every earlier one (they were applied first,
    /// under the commit lock), so the watermark is a simple maximum.
    fn publish_durable(&self, receipt: &Receipt) {
        if receipt.last_in(Tree::PmsOutbox).is_some() {
            self.inner.outbox_signal.notify_one();
        }
        if let Some(seq) = receipt.last_in(Tree::Events) {
            self.inner.events_durable.send_if_modified(|cur| {
                let moved = seq > *cur;
                if moved {
                    *cur = seq;
                }
                moved
            });
        }
    }

    /// Notified when a durable commit queued a message for the PMS.
    pub fn outbox_signal(&self) -> &tokio::sync::Notify {
        &self.inner.outbox_signal
    }

    /// The first record of a tree (lowest key): its key, and its value or
    /// why it does not open.
    pub fn first(&self, tree: Tree) -> VaultResult<Option<FirstRecord>> {
        match self.inner.store.scan_from(tree, &[]).next() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r?;
                let opened = self.open_value(tree, k.as_ref(), v.as_ref());
                Ok(Some((k.as_ref().to_vec(), opened)))
            }
        }
    }

    /// The highest event seq that is durable; changes wake the receiver.
    pub fn events_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.events_durable.subscribe()
    }

    /// The last seq of a sequenced tree (0 when empty).
    pub fn last_seq(&self, tree: Tree) -> u64 {
        crate::sync::lock(&self.inner.commit_lock)
            .last_seq
            .get(&tree)
            .copied()
            .unwrap_or(0)
    }

    /// Commits `txn` as a job of the writer and resolves once it is durable.
    pub async fn commit_async(&self, txn: Txn) -> VaultResult<Receipt> {
        self.write(move |_| Ok::<_, VaultError>((txn, ())))
            .await
            .map(|c| c.receipt)
    }

    /// Waits until everything applied so far is durable: the writer answers
    /// an empty job only after every earlier batch was flushed.
    pub fn flush(&self) -> VaultResult<()> {
        self.commit(Txn::new(Timestamp::UNIX_EPOCH)).map(|_| ())
    }

    // ---- audit ------------------------------------------------------------

    fn read_head(&self) -> Result<Option<AuditHead>, String> {
        match self.get_json::<AuditHead>(Tree::Audit, AUDIT_HEAD_KEY) {
            Ok(h) => Ok(h),
            Err(e) => Err(e.to_string()),
        }
    }

    fn load_chain_state(&self) -> VaultResult<()> {
        let mut chain = crate::sync::lock(&self.inner.commit_lock);
        for tree in Tree::SEQUENCED {
            let last = self
                .inner
                .store
                .last(tree)?
                .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
                .map_or(0, u64::from_be_bytes);
            let stored = self
                .get(Tree::Meta, &high_water_key(tree))?
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            chain.last_seq.insert(tree, last.max(stored));
        }
        // Everything on disk at open is durable.
        let events = chain.last_seq.get(&Tree::Events).copied().unwrap_or(0);
        self.inner.events_durable.send_replace(events);
        match self.read_head() {
            Ok(None)
                if self
                    .inner
                    .store
                    .get(Tree::Audit, &1u64.to_be_bytes())?
                    .is_none() => {}
            Ok(None) => chain.damage = Some("head checkpoint missing".to_owned()),
            Err(e) => chain.damage = Some(format!("head checkpoint unreadable: {e}")),
            Ok(Some(head)) => {
                // The log ends exactly at the head: entry `seq` is there and
                // entry `seq + 1` is not.
                let store = &self.inner.store;
                let last_matches = store.get(Tree::Audit, &head.seq.to_be_bytes())?.is_some()
                    && store
                        .get(Tree::Audit, &(head.seq + 1).to_be_bytes())?
                        .is_none();
                if !head.is_authentic(&self.inner.purpose.audit) {
                    chain.damage = Some("head checkpoint MAC invalid".to_owned());
                } else if !last_matches {
                    chain.damage = Some(format!(
                        "head checkpoint says {} but the log ends elsewhere",
                        head.seq
                    ));
                } else {
                    chain.seq = head.seq;
                    chain.hash = head.hash;
                }
            }
        }
        Ok(())
    }

    /// Why the audit chain cannot be extended, if it cannot.
    pub fn audit_damage(&self) -> Option<String> {
        crate::sync::lock(&self.inner.commit_lock).damage.clone()
    }

    /// The seq of the last audit entry.
    pub fn audit_seq(&self) -> u64 {
        crate::sync::lock(&self.inner.commit_lock).seq
    }

    /// Every stored audit entry from `from_seq` on, in order, opened where possible.
    pub fn audit_entries(&self, from_seq: u64) -> impl Iterator<Item = StoredEntry> + '_ {
        self.inner
            .store
            .scan_from(Tree::Audit, &from_seq.to_be_bytes())
            .filter(|r| {
                r.as_ref()
                    .map_or(true, |(k, _)| k.as_ref() != AUDIT_HEAD_KEY)
            })
            .map(move |r| match r {
                Err(e) => (u64::MAX, Err(e.to_string())),
                Ok((k, v)) => {
                    let Ok(seq_bytes) = <[u8; 8]>::try_from(k.as_ref()) else {
                        return (u64::MAX, Err("malformed key".to_owned()));
                    };
                    let seq = u64::from_be_bytes(seq_bytes);
                    let entry = self
                        .open_value(Tree::Audit, k.as_ref(), v.as_ref())
                        .map_err(|e| e.to_string())
                        .and_then(|plain| {
                            serde_json::from_slice::<AuditEntry>(&plain)
                                .map_err(|_| "not an audit entry".to_owned())
                        });
                    (seq, entry)
                }
            })
    }

    /// Checks the whole chain against the MAC'd head. Returns the entry count.
    pub fn verify_audit(&self) -> VaultResult<u64> {
        let head = match self.read_head() {
            Ok(h) => h,
            Err(_) => {
                return Err(AuditFault::HeadMissing.into());
            }
        };
        Ok(audit::verify(
            self.audit_entries(1),
            head,
            self.audit_key(),
        )?)
    }

    // ---- erasure ----------------------------------------------------------

    /// Destroys a patient's data keys. Callers record the erasure (ledger and
    /// audit entry, durably) first; [`Vault::reconcile_erasures`] finishes the
    /// job after a crash between the two.
    fn destroy_keys(&self, id: PatientId, handles: &[u64]) -> VaultResult<()> {
        let mut ring = crate::sync::lock(&self.inner.keyring);
        self.destroy_keys_locked(&mut ring, id, handles)
    }

    fn destroy_keys_locked(
        &self,
        ring: &mut Keyring,
        id: PatientId,
        handles: &[u64],
    ) -> VaultResult<()> {
        ring.destroy(handles)?;
        let mut view = crate::sync::write(&self.inner.keys);
        for h in handles {
            view.by_handle.remove(h);
        }
        if view
            .current
            .get(&KeyOwner::Patient(id))
            .is_some_and(|k| handles.contains(&k.key.handle))
        {
            view.current.remove(&KeyOwner::Patient(id));
        }
        Ok(())
    }

    /// Runs what a durable commit asked for (see [`AfterCommit`]).
    fn run_effect(&self, effect: AfterCommit) -> VaultResult<()> {
        match effect {
            AfterCommit::DestroyPatientKeys(id) => {
                // The handles are read under the keyring lock, at the moment
                // they are destroyed: a rotation that began since the erasure
                // was decided added keys for this patient, and they go too.
                let mut ring = crate::sync::lock(&self.inner.keyring);
                let handles = ring.handles_of(id);
                if !handles.is_empty() {
                    self.destroy_keys_locked(&mut ring, id, &handles)?;
                }
                Self::keyring_copy_current(&ring)
            }
            AfterCommit::DestroyHandles(id, handles) => {
                let mut ring = crate::sync::lock(&self.inner.keyring);
                if !handles.is_empty() {
                    self.destroy_keys_locked(&mut ring, id, &handles)?;
                }
                Self::keyring_copy_current(&ring)
            }
            AfterCommit::RetirePatientKeys(id) => {
                let mut ring = crate::sync::lock(&self.inner.keyring);
                ring.retire_owner(KeyOwner::Patient(id))?;
                crate::sync::write(&self.inner.keys)
                    .current
                    .remove(&KeyOwner::Patient(id));
                Ok(())
            }
        }
    }

    /// An erasure is done only when the keyring copy kept for restores no
    /// longer holds the keys either: a stale copy would bring the patient
    /// back with the next restore.
    fn keyring_copy_current(ring: &Keyring) -> VaultResult<()> {
        match ring.mirror_error() {
            None => Ok(()),
            Some(why) => Err(VaultError::KeyringCopyStale(why.to_owned())),
        }
    }

    /// Tries again to bring the keyring copy up to date; the reason if it
    /// is still stale.
    pub(crate) fn retry_keyring_copy(&self) -> Option<String> {
        let mut ring = crate::sync::lock(&self.inner.keyring);
        ring.retry_mirror();
        ring.mirror_error().map(str::to_owned)
    }

    /// The handles of every key a patient has now.
    fn patient_handles(&self, id: PatientId) -> Vec<u64> {
        crate::sync::lock(&self.inner.keyring).handles_of(id)
    }

    /// Destroys the keys named in the erasure ledger that still exist (a
    /// crash after the ledger entry, before the keys went). Only the handles
    /// recorded at erasure: a patient registered again afterwards keeps the
    /// new key.
    fn reconcile_erasures(&self) -> VaultResult<()> {
        let pending: Vec<(PatientId, Vec<u64>)> = self
            .scan_prefix(Tree::Erasures, &[])
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let id = <[u8; 16]>::try_from(k.as_slice()).ok().map(PatientId)?;
                let record: ErasureRecord = serde_json::from_slice(&v).ok()?;
                Some((id, record.handles))
            })
            .collect();
        for (id, handles) in pending {
            let present: Vec<u64> = {
                let view = crate::sync::read(&self.inner.keys);
                handles
                    .into_iter()
                    .filter(|h| view.by_handle.contains_key(h))
                    .collect()
            };
            if !present.is_empty() {
                self.destroy_keys(id, &present)?;
            }
        }
        Ok(())
    }

    /// Pseudonymous ids of erased patients, with the time of erasure.
    pub fn erasure_ledger(&self) -> VaultResult<Vec<(PatientId, Timestamp)>> {
        self.scan_prefix(Tree::Erasures, &[])
            .map(|r| {
                let (k, v) = r?;
                let id = <[u8; 16]>::try_from(k.as_slice())
                    .map(PatientId)
                    .map_err(|_| VaultError::Encode)?;
                let record: ErasureRecord = serde_json::from_slice(&v)
                    .map_err(|e| VaultError::decode(Tree::Erasures, &e))?;
                Ok((id, record.erased_at))
            })
            .collect()
    }
}
