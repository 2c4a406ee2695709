//! The audit anchor: the chain's durable end, kept outside sled (issue 7).
//!
//! The head checkpoint lives in the audit tree, so copying an older `store/`
//! back, or cutting the log's tail and putting back an older sealed head,
//! leaves a chain that verifies on its own. The file `audit-anchor` beside
//! the keyring holds the (seq, hash) of the last entry made durable, MAC'd
//! with the audit key; it does not go back with the store.
//!
//! **Ordering.** After a flush that moved the seq, the writer thread hands
//! the chain's end to the anchor thread ([`Anchorer`]), which replaces the
//! file (temp file, fsync, rename, fsync dir). Only values whose flush is
//! done are handed over, so the anchor never claims more than the store
//! holds. A crash between the two leaves the anchor behind
//! the store, which is fine: at open an anchor is accepted when its seq is
//! at most the head's and stored entry `seq` has its hash, and it is then
//! brought up to the head. An anchor ahead of the head, a hash that differs,
//! a bad MAC, or no anchor for a store that has had one is damage: nothing
//! more is chained, the daemon refuses to start, `audit verify` names it.
//!
//! **Missing anchor.** A store records a mark (`anchored`, in the audit tree
//! beside the head) that anchors are kept for it: with its first audited commit, or at
//! once when an existing log is anchored for the first time. No anchor and
//! no mark is a new data dir or one from a version before anchors: the
//! chain is verified in full and anchored at open (with a warning if it has
//! entries). No anchor but a mark is damage. The anchor is always written
//! before the mark, so no crash leaves a mark without an anchor.
//! A restore writes a fresh anchor for the chain it restored
//! ([`Vault::anchor_restored`]).
//!
//! What it cannot see: the whole data dir (store *and* anchor) put back
//! together from one older copy. Against that, the anchor's seq is logged at
//! every start, so logs shipped off the machine witness it.

use super::*;
use audit::AuditAnchor;
use std::sync::Condvar;
use std::thread::JoinHandle;

/// Where the anchor of the vault in `dir` is kept.
pub fn anchor_path(dir: &Path) -> PathBuf {
    dir.join("audit-anchor")
}

/// `None` when there is no anchor file; unreadable or malformed is a fault.
fn read_anchor(path: &Path) -> Result<Option<AuditAnchor>, AuditFault> {
    match fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditFault::AnchorUnreadable(e.to_string())),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| AuditFault::AnchorForged),
    }
}

fn write_anchor_file(path: &Path, key: &hmac::Key, seq: u64, hash: &str) -> VaultResult<()> {
    let anchor = AuditAnchor::new(key, seq, hash);
    let bytes = serde_json::to_vec(&anchor).map_err(|_| VaultError::Encode)?;
    fsio::replace_atomically(path, &bytes).map_err(|source| VaultError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The thread that writes the anchor, off the writer's path. An atomic
/// replace costs two fsyncs and a rename (a journal commit), several times
/// a store flush (sled's write and one fdatasync): done on the writer, it
/// would be added to every audited batch's answer. Instead the
/// writer hands over the newest flushed (seq, hash) and goes on; this thread
/// writes the newest value it holds, so values that arrive during a write
/// coalesce into the next one. The anchor then lags the store by at most the
/// write in flight, which is what a crash between flush and anchor leaves
/// anyway, and which the next open accepts.
/// The least time between two anchor writes while running. The anchor may
/// lag the store (see above); this bounds the lag by about this much plus
/// one write, so a rollback of less than that could go unnoticed, the same
/// order as the write in flight already allows.
const ANCHOR_MIN_GAP: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) struct Anchorer {
    shared: Arc<AnchorShared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

struct AnchorShared {
    slot: Mutex<AnchorSlot>,
    wake: Condvar,
}

#[derive(Default)]
struct AnchorSlot {
    next: Option<(u64, String)>,
    stop: bool,
    /// The thread waits for a value (not resting between two writes): only
    /// then does a new value need to wake it. Woken in its rest by every
    /// flush, it would only go back to sleep: two context switches a flush
    /// under load, for nothing.
    idle: bool,
}

impl Anchorer {
    pub(super) fn start(path: PathBuf, key: hmac::Key) -> std::io::Result<Self> {
        let shared = Arc::new(AnchorShared {
            slot: Mutex::new(AnchorSlot::default()),
            wake: Condvar::new(),
        });
        let theirs = shared.clone();
        let worker = std::thread::Builder::new()
            .name("audit-anchor".to_owned())
            .spawn(move || anchor_loop(&theirs, &path, &key))?;
        Ok(Self {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    fn publish(&self, seq: u64, hash: String) {
        let mut slot = crate::sync::lock(&self.shared.slot);
        slot.next = Some((seq, hash));
        let idle = slot.idle;
        drop(slot);
        if idle {
            self.shared.wake.notify_one();
        }
    }

    /// Writes what is pending, then ends the thread (idempotent).
    pub(super) fn stop(&self) {
        crate::sync::lock(&self.shared.slot).stop = true;
        self.shared.wake.notify_one();
        if let Some(worker) = crate::sync::lock(&self.worker).take() {
            let _ = worker.join();
        }
    }
}

impl Drop for Anchorer {
    /// A vault dropped without `close` still leaves its anchor up to date,
    /// and nothing writes into the data dir once its lock is released (the
    /// lock is the field dropped after this one).
    fn drop(&mut self) {
        self.stop();
    }
}

fn anchor_loop(shared: &AnchorShared, path: &Path, key: &hmac::Key) {
    loop {
        let next = {
            let mut slot = crate::sync::lock(&shared.slot);
            loop {
                if let Some(next) = slot.next.take() {
                    break Some(next);
                }
                if slot.stop {
                    break None;
                }
                slot.idle = true;
                slot = shared
                    .wake
                    .wait(slot)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                slot.idle = false;
            }
        };
        let Some((seq, hash)) = next else {
            return;
        };
        if let Err(e) = write_anchor_file(path, key, seq, &hash) {
            tracing::error!(error = %e, seq, "the audit anchor could not be updated; it lags the store (accepted at the next start) until a later update succeeds");
        }
        // Rest before the next write unless stopping (a stop still writes
        // what is pending, at once). Under load the writes otherwise follow
        // each other back to back, and each one's fsyncs, rename and
        // directory fsync are ext4 journal commits that every durable
        // append (the keyring's fdatasync) then queues behind.
        let slot = crate::sync::lock(&shared.slot);
        drop(
            shared
                .wake
                .wait_timeout_while(slot, ANCHOR_MIN_GAP, |s| !s.stop)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }
}

impl Vault {
    fn write_anchor(&self, seq: u64, hash: &str) -> VaultResult<()> {
        write_anchor_file(
            &anchor_path(&self.inner.dir),
            &self.inner.purpose.audit,
            seq,
            hash,
        )
    }

    /// The hash of stored entry `seq` (the genesis hash for 0); `None` if it
    /// is absent, does not open, or claims another seq.
    fn stored_hash(&self, seq: u64) -> Option<String> {
        if seq == 0 {
            return Some(audit::GENESIS_HASH.to_owned());
        }
        match self.get_json::<AuditEntry>(Tree::Audit, &seq.to_be_bytes()) {
            Ok(Some(e)) if e.seq == seq => Some(e.hash),
            _ => None,
        }
    }

    /// Checks the anchor against the chain just loaded from the head
    /// checkpoint (called at open, under the commit lock, with no damage
    /// found so far); brings a lagging anchor up, creates a missing one
    /// where that is safe, and records what is wrong otherwise.
    pub(super) fn anchor_at_open(&self, chain: &mut ChainState) -> VaultResult<()> {
        chain.anchor_marked = self
            .inner
            .store
            .get(Tree::Audit, AUDIT_ANCHORED_KEY)?
            .is_some();
        let key = &self.inner.purpose.audit;
        let found = read_anchor(&anchor_path(&self.inner.dir)).and_then(|found| match found {
            Some(anchor) => anchor
                .check(key, chain.seq, |s| self.stored_hash(s))
                .map(|()| Some(anchor.seq)),
            None if chain.anchor_marked => Err(AuditFault::AnchorMissing),
            None => Ok(None),
        });
        match found {
            Err(fault) => {
                tracing::warn!(error = %fault, head_seq = chain.seq, "the audit anchor does not vouch for this store");
                chain.damage = Some(fault.to_string());
                chain.anchor_fault = Some(fault);
                return Ok(());
            }
            Ok(Some(anchored)) if anchored < chain.seq => {
                // The last stop came between a flush and the anchor's update.
                tracing::info!(
                    anchored,
                    head_seq = chain.seq,
                    "the audit anchor was behind the store; bringing it up to the head"
                );
                self.write_anchor(chain.seq, &chain.hash)?;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                if chain.seq > 0 {
                    if let Err(e) = self.verify_chain() {
                        chain.damage = Some(e.to_string());
                        return Ok(());
                    }
                    tracing::warn!(
                        head_seq = chain.seq,
                        "this data dir had no audit anchor (made by a version before anchors); the chain verified and is anchored from now on"
                    );
                }
                self.write_anchor(chain.seq, &chain.hash)?;
            }
        }
        chain.anchored = chain.seq;
        if !chain.anchor_marked && chain.seq > 0 {
            // A store from before anchors, anchored just now: mark it at
            // once (not with its next audited commit), so that from here on
            // a deleted anchor is damage even if nothing is audited first.
            self.inner.store.apply(&[self.anchor_mark()?])?;
            self.inner.store.flush()?;
            chain.anchor_marked = true;
        }
        tracing::info!(
            audit_seq = chain.seq,
            audit_hash = %chain.hash,
            "audit chain anchored"
        );
        Ok(())
    }

    /// The write that marks the store as anchored, for the first audited
    /// commit of a store without the mark.
    pub(super) fn anchor_mark(&self) -> VaultResult<Write> {
        Ok(Write::Put {
            tree: Tree::Audit,
            key: AUDIT_ANCHORED_KEY.to_vec(),
            value: self.seal_value(Tree::Audit, AUDIT_ANCHORED_KEY, Owner::System, b"1")?,
        })
    }

    /// The audit chain's end now (seq, hash): taken by the writer when it
    /// has applied a batch, for [`Vault::advance_anchor_to`] after its flush.
    pub(super) fn chain_end(&self) -> (u64, String) {
        let chain = crate::sync::lock(&self.inner.commit_lock);
        (chain.seq, chain.hash.clone())
    }

    /// After a flush (flusher thread): hands the chain's end that flush made
    /// durable to the anchor thread if it moved forward. Microseconds: two
    /// uncontended locks and a wake-up.
    pub(super) fn advance_anchor_to(&self, seq: u64, hash: String) {
        let mut chain = crate::sync::lock(&self.inner.commit_lock);
        if chain.damage.is_some() || seq <= chain.anchored {
            return;
        }
        chain.anchored = seq;
        self.inner.anchorer.publish(seq, hash);
    }

    /// Anchors a store just restored into an empty directory: it carries the
    /// mark but, the directory being new, no anchor. Verifies the chain
    /// first. Does nothing unless a missing anchor is all that was wrong.
    pub(super) fn anchor_restored(&self) -> VaultResult<()> {
        let mut chain = crate::sync::lock(&self.inner.commit_lock);
        if chain.anchor_fault != Some(AuditFault::AnchorMissing) {
            return Ok(());
        }
        self.verify_chain()?;
        self.write_anchor(chain.seq, &chain.hash)?;
        chain.anchored = chain.seq;
        chain.anchor_fault = None;
        chain.damage = None;
        tracing::info!(
            audit_seq = chain.seq,
            "the restored audit chain is anchored"
        );
        Ok(())
    }
}
