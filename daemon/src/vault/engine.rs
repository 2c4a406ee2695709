//! One open instance of the store: sled, the write-ahead log in front of
//! it, and the overlay of commits not yet in sled.
//!
//! Why not sled's own transactions and flush: sled 0.34 seals and writes
//! its current log buffer twice for every transaction or batch (`pin_log`),
//! and its flush hands the buffer to one of its I/O threads; with a commit
//! per message, those buffer writes and thread wake-ups were most of the
//! CPU of an ingest (docs/performance.md). Here a commit goes:
//!
//! 1. **apply** (writer thread): numbered, its writes laid over sled in the
//!    [`Overlay`] (every read looks there first) and queued for the log;
//! 2. **flush** (flusher thread, one per batch): the queued commits'
//!    records appended to `store/wal` and `fdatasync`ed; the commits are then
//!    durable and their callers are answered;
//! 3. **settle** (settler thread, after the flush has answered): the durable
//!    commits written to sled with plain inserts and removes, in order, the
//!    last commit's number after them ([`wal::APPLIED_KEY`]); the overlay
//!    forgets them. Off the flusher, so that the next batch's flush does not
//!    wait for sled's inserts (a third of the flusher's time per batch, see
//!    docs/performance.md); a flush settles itself when more than
//!    [`MAX_UNSETTLED`] commits wait, so the overlay stays small;
//! 4. **checkpoint** (once the log passes [`wal::CHECKPOINT_BYTES`], and at
//!    close): every durable commit settled, sled flushed and its file
//!    `fdatasync`ed, the log emptied.
//!
//! The log also carries the keyring lines of new data keys ([`Engine::stage_keys`],
//! wal.rs): a flush writes them ahead of the commits sealed under them. Once
//! the log holds such lines, only a checkpoint told that the keyring has
//! them ([`Engine::checkpoint`] with `keys_saved`) may empty it; the vault
//! runs those (vault/keys.rs).
//!
//! The audit tree's entries (8-byte seq keys) are not in sled: a flush
//! appends them to their own file instead ([`AuditLog`], audit_log.rs), which
//! a checkpoint syncs before the log is emptied; the tree's other keys (the
//! head checkpoint, the anchor mark) stay in sled. A store written before
//! that file existed has its entries moved into it at open.
//!
//! sled writes its log when a 512 KiB buffer fills. After a crash it holds a
//! prefix of the writes made to it, all of them from durable records: the
//! open applies every record numbered past sled's again (whole commits, in
//! order; a commit sled holds in part is completed), so the store comes back
//! with every commit whose record was durable, which is every commit we
//! acknowledged, and with no torn commit.

use super::audit_log::{self, AuditLog};
use super::overlay::{Entry, Merged, Overlay};
use super::store::{Scan, StoreResult, Tree, Write};
use super::wal::{self, Wal};
use std::path::Path;

/// How many durable commits may wait for the settler before a flush writes
/// them to sled itself (a settler starved of CPU must not let the overlay,
/// which every read consults, grow without bound).
pub(super) const MAX_UNSETTLED: usize = 1024;

pub(super) struct Engine {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// sled's default tree, where the number of the last commit written to
    /// sled is kept (wal.rs).
    applied_tree: sled::Tree,
    /// sled's log file (`db`), for the fdatasync its flush leaves out.
    log: std::fs::File,
    /// The audit entries (see the module's comment).
    audit: std::sync::Mutex<AuditLog>,
    overlay: std::sync::RwLock<Overlay>,
    /// Commits applied to the overlay whose records are not yet written.
    pending: std::sync::Mutex<Pending>,
    /// The log; held by a flush from taking the pending commits until their
    /// records are durable, so flushes (and checkpoints) run one at a time
    /// and in the order of the commits.
    wal_state: std::sync::Mutex<LogState>,
    /// Commits whose records are durable and that are not yet in sled, in
    /// order (see "settle" in the module's comment).
    unsettled: std::sync::Mutex<Vec<Commit>>,
    /// Held by a settle from taking `unsettled` until those commits are in
    /// sled, so that commits reach sled one settle at a time, in order.
    settling: std::sync::Mutex<()>,
    /// What failed first, a flush or a settle, and why. Either fails every
    /// later flush and settle of this instance:
    /// - a failed flush took commits that are lost to this instance, and a
    ///   flush that found nothing pending must not answer for them;
    /// - a failed settle took commits that are in the log but not in sled,
    ///   so nothing may empty the log;
    /// - after an I/O error this instance's sled is not written again
    ///   (store.rs: sled 0.34 keeps such an error, and a write after it can
    ///   spin in a node split).
    ///
    /// The reopen writes the log's commits into sled. Apart from the log's
    /// lock and `settling`, so that neither a flush nor a settle waits for
    /// the other to read it.
    failed: std::sync::Mutex<Option<(&'static str, String)>>,
    /// The keyring lines found in the log at open, for the vault.
    recovered_keys: std::sync::Mutex<Vec<u8>>,
}

struct LogState {
    wal: Wal,
    /// The log holds keyring lines since it was last emptied (from a flush,
    /// or found at open): it is not emptied until the keyring has them.
    keys_since_cut: bool,
}

/// A commit as the overlay and the log hold it.
struct Commit {
    number: u64,
    writes: Vec<(Tree, Vec<u8>, Option<sled::IVec>)>,
}

#[derive(Default)]
struct Pending {
    /// The number given to the last commit applied.
    last: u64,
    commits: Vec<Commit>,
    /// About how many bytes `commits` hold.
    bytes: u64,
    /// Keyring lines staged for the next flush.
    keys: Vec<u8>,
}

impl Engine {
    pub(super) fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
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
            // Durability comes from the write-ahead log; sled is flushed
            // only at checkpoints.
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
        let applied_tree: sled::Tree = (*db).clone();
        let applied = match applied_tree.get(wal::APPLIED_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                sled::Error::Unsupported("the store's commit number is damaged".to_owned())
            })?),
            None => 0,
        };
        let (mut wal, records) = Wal::open(dir).map_err(wal_error)?;
        let mut audit = AuditLog::open(dir)?;
        let audit_tree = trees
            .get(Tree::Audit.slot())
            .ok_or_else(|| sled::Error::Unsupported("audit tree not open".to_owned()))?;
        move_entries_out_of_sled(&db, audit_tree, &mut audit)?;
        // What the file lost with its unsynced tail (a power cut) is in the
        // log, in commits sled may already hold: every durable record's
        // entries are offered, the file skips those it has.
        audit.append(records.iter().flat_map(|r| {
            r.writes.iter().filter_map(|w| match w {
                Write::Put { tree, key, value } if *tree == Tree::Audit => {
                    audit_log::entry_seq(key).map(|seq| (seq, value.as_slice()))
                }
                _ => None,
            })
        }))?;
        audit.sync()?;
        let replay = wal::to_replay(wal.path(), applied, records).map_err(wal_error)?;
        let keys = wal.take_keys();
        let engine = Self {
            db,
            trees,
            applied_tree,
            log,
            audit: std::sync::Mutex::new(audit),
            overlay: std::sync::RwLock::new(Overlay::default()),
            pending: std::sync::Mutex::new(Pending {
                last: applied,
                ..Pending::default()
            }),
            wal_state: std::sync::Mutex::new(LogState {
                wal,
                keys_since_cut: !keys.is_empty(),
            }),
            unsettled: std::sync::Mutex::new(Vec::new()),
            settling: std::sync::Mutex::new(()),
            failed: std::sync::Mutex::new(None),
            recovered_keys: std::sync::Mutex::new(keys),
        };
        // Commits whose records are durable but that sled lost with the
        // process (or the power), or holds in part: written again, in
        // order, then made durable in sled so that the log can start empty.
        if let Some(last) = replay.last().map(|r| r.number) {
            tracing::info!(
                commits = replay.len(),
                "applying the write-ahead log's commits that the store had not written"
            );
            let commits: Vec<Commit> = replay
                .into_iter()
                .map(|r| Commit {
                    number: r.number,
                    writes: r.writes.iter().map(staged).collect(),
                })
                .collect();
            engine.write_to_sled(&commits)?;
            crate::sync::lock(&engine.pending).last = last;
        }
        // Emptied only when it holds no keyring lines: the vault takes
        // those first (`take_recovered_keys`) and checkpoints itself.
        engine.checkpoint(false)?;
        Ok(engine)
    }

    /// The keyring lines the log held at open (once; then empty).
    pub(super) fn take_recovered_keys(&self) -> Vec<u8> {
        std::mem::take(&mut *crate::sync::lock(&self.recovered_keys))
    }

    /// Stages keyring lines to be written to the log by the next flush,
    /// ahead of any commit applied after this call.
    pub(super) fn stage_keys(&self, lines: &[u8]) {
        crate::sync::lock(&self.pending)
            .keys
            .extend_from_slice(lines);
    }

    /// Whether the log has grown enough for a checkpoint that only the
    /// vault may run (it holds keyring lines).
    pub(super) fn checkpoint_due(&self) -> bool {
        let log = crate::sync::lock(&self.wal_state);
        log.keys_since_cut && log.wal.len() >= wal::CHECKPOINT_BYTES
    }

    fn tree(&self, t: Tree) -> StoreResult<&sled::Tree> {
        self.trees
            .get(t.slot())
            .ok_or_else(|| sled::Error::Unsupported(format!("tree {} not open", t.name())))
    }

    /// Applies `writes` as the next commit: visible to every read at once,
    /// durable with the next [`Engine::flush`].
    pub(super) fn apply(&self, writes: &[Write]) -> StoreResult<()> {
        let staged: Vec<_> = writes.iter().map(staged).collect();
        let bytes: u64 = staged
            .iter()
            .map(|(_, k, v)| (k.len() + v.as_ref().map_or(0, |v| v.len())) as u64)
            .sum();
        let mut pending = crate::sync::lock(&self.pending);
        let number = pending.last + 1;
        {
            let mut overlay = crate::sync::write(&self.overlay);
            for (tree, key, value) in &staged {
                overlay.put(*tree, key.clone(), value.clone(), number);
            }
        }
        pending.last = number;
        pending.commits.push(Commit {
            number,
            writes: staged,
        });
        pending.bytes += bytes;
        let unflushed = pending.bytes;
        drop(pending);
        if unflushed >= wal::CHECKPOINT_BYTES {
            // Commits applied without a flush (a bulk load, a restore):
            // flushed here rather than piling up in memory.
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every commit applied so far durable: their records appended to
    /// the log and synced. They reach sled with the next [`Engine::settle`]
    /// (or with this flush when many wait). A checkpoint follows once the
    /// log has grown past [`wal::CHECKPOINT_BYTES`].
    pub(super) fn flush(&self) -> StoreResult<()> {
        self.with_log(|log| self.flush_locked(log))
    }

    /// Writes the durable commits not yet in sled to sled, in order, and
    /// lets the overlay forget them. Nothing to do is not an error.
    pub(super) fn settle(&self) -> StoreResult<()> {
        let _one_at_a_time = crate::sync::lock(&self.settling);
        self.check_not_failed()?;
        let commits = std::mem::take(&mut *crate::sync::lock(&self.unsettled));
        if commits.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_to_sled(&commits) {
            // Their records are durable: the overlay keeps serving them
            // until the store is reopened, which applies them again.
            self.record_failure("write to the store", &e);
            return Err(e);
        }
        let mut overlay = crate::sync::write(&self.overlay);
        for c in &commits {
            for (tree, key, _) in &c.writes {
                overlay.settle(*tree, key, c.number);
            }
        }
        Ok(())
    }

    /// Runs `step` with the log held, unless an earlier flush or settle
    /// failed; a failure of `step` fails every later one of this instance.
    fn with_log(&self, step: impl FnOnce(&mut LogState) -> StoreResult<()>) -> StoreResult<()> {
        let mut log = crate::sync::lock(&self.wal_state);
        self.check_not_failed()?;
        let result = step(&mut log);
        if let Err(e) = &result {
            self.record_failure("flush", e);
        }
        result
    }

    /// The error every call gets once a flush or a settle has failed.
    fn check_not_failed(&self) -> StoreResult<()> {
        match &*crate::sync::lock(&self.failed) {
            Some((what, why)) => Err(sled::Error::Io(std::io::Error::other(format!(
                "an earlier {what} failed: {why}"
            )))),
            None => Ok(()),
        }
    }

    /// Keeps the first failure (a settle inside a flush is reported by both).
    fn record_failure(&self, what: &'static str, error: &sled::Error) {
        crate::sync::lock(&self.failed).get_or_insert_with(|| (what, error.to_string()));
    }

    fn flush_locked(&self, log: &mut LogState) -> StoreResult<()> {
        let (commits, keys) = {
            let mut pending = crate::sync::lock(&self.pending);
            pending.bytes = 0;
            (
                std::mem::take(&mut pending.commits),
                std::mem::take(&mut pending.keys),
            )
        };
        if commits.is_empty() && keys.is_empty() {
            // Every commit applied so far was taken by an earlier flush,
            // which succeeded under the lock we hold.
            return Ok(());
        }
        let mut records = Vec::new();
        if !keys.is_empty() {
            // Ahead of the commits: a record sealed under a new key is
            // never durable without the key.
            wal::encode_keys(&keys, &mut records);
        }
        for c in &commits {
            wal::encode(
                c.number,
                c.writes
                    .iter()
                    .map(|(t, k, v)| (*t, k.as_slice(), v.as_deref())),
                &mut records,
            );
        }
        log.wal.append_durably(&mut records)?;
        log.keys_since_cut |= !keys.is_empty();
        let backlog = {
            let mut unsettled = crate::sync::lock(&self.unsettled);
            unsettled.extend(commits);
            unsettled.len()
        };
        if backlog > MAX_UNSETTLED {
            self.settle()?;
        }
        if log.wal.len() >= wal::CHECKPOINT_BYTES && !log.keys_since_cut {
            self.checkpoint_locked(log, false)?;
        }
        Ok(())
    }

    /// Writes commits whose records are durable to sled, in order, and the
    /// last one's number after them: sled's prefix after a crash then never
    /// claims a commit it does not hold whole.
    fn write_to_sled(&self, commits: &[Commit]) -> StoreResult<()> {
        let entries = || {
            commits.iter().flat_map(|c| {
                c.writes.iter().filter_map(|(tree, key, value)| {
                    audit_entry(*tree, key).map(|seq| (seq, value.as_deref()))
                })
            })
        };
        if entries().any(|(_, value)| value.is_none()) {
            return Err(sled::Error::Unsupported(
                "audit entries are never removed".to_owned(),
            ));
        }
        crate::sync::lock(&self.audit)
            .append(entries().filter_map(|(seq, value)| Some((seq, value?))))?;
        for c in commits {
            for (tree, key, value) in &c.writes {
                if audit_entry(*tree, key).is_some() {
                    continue;
                }
                let tree = self.tree(*tree)?;
                match value {
                    Some(v) => {
                        tree.insert(key.as_slice(), v.clone())?;
                    }
                    None => {
                        tree.remove(key.as_slice())?;
                    }
                }
            }
        }
        if let Some(last) = commits.last() {
            self.applied_tree
                .insert(wal::APPLIED_KEY, &last.number.to_be_bytes())?;
        }
        Ok(())
    }

    /// Flushes, then makes sled hold everything durably and empties the
    /// log (at close, and before the store's files are copied). A log that
    /// holds keyring lines is emptied only when `keys_saved` says the
    /// keyring has every line staged so far (the caller holds the keyring
    /// lock, so none is staged meanwhile); otherwise it is kept, and its
    /// commits, already in sled, are skipped by the next open.
    pub(super) fn checkpoint(&self, keys_saved: bool) -> StoreResult<()> {
        self.with_log(|log| {
            self.flush_locked(log)?;
            self.checkpoint_locked(log, keys_saved)
        })
    }

    /// With the log held (no flush adds records meanwhile): the durable
    /// commits are settled first, so that every record in the log is in sled.
    fn checkpoint_locked(&self, log: &mut LogState, keys_saved: bool) -> StoreResult<()> {
        // The log is emptied only once sled holds every record in it.
        self.settle()?;
        if log.wal.len() == 0 {
            return Ok(());
        }
        crate::sync::lock(&self.audit).sync()?;
        self.db.flush()?;
        // sled 0.34's flush ends in sync_file_range, which neither commits
        // the file's metadata (the log grows as it goes) nor flushes the
        // disk's write cache (sled issues #1351 and #1452): fdatasync on
        // the same file does both.
        self.log.sync_data()?;
        if log.keys_since_cut && !keys_saved {
            return Ok(());
        }
        log.wal.cut()?;
        log.keys_since_cut = false;
        Ok(())
    }

    /// What sled itself holds under `key`, overlay aside.
    #[cfg(test)]
    pub(super) fn in_sled(&self, tree: Tree, key: &[u8]) -> Option<sled::IVec> {
        self.tree(tree).ok()?.get(key).ok()?
    }

    /// How many durable commits wait for a settle.
    #[cfg(test)]
    pub(super) fn unsettled(&self) -> usize {
        crate::sync::lock(&self.unsettled).len()
    }

    pub(super) fn get(&self, tree: Tree, key: &[u8]) -> StoreResult<Option<sled::IVec>> {
        if let Some(Entry { value, .. }) = crate::sync::read(&self.overlay).get(tree, key) {
            return Ok(value.clone());
        }
        if let Some(seq) = audit_entry(tree, key) {
            return Ok(crate::sync::lock(&self.audit)
                .get(seq)?
                .map(sled::IVec::from));
        }
        self.tree(tree)?.get(key)
    }

    /// The scan owns its sled tree handle and a copy of the overlay's
    /// entries, so it outlives every lock (and keeps the instance it
    /// started on).
    pub(super) fn scan_from(&self, tree: Tree, start: &[u8]) -> Scan<'static, sled::IVec> {
        let sled_tree = match self.tree(tree) {
            Ok(t) => t.clone(),
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let over = crate::sync::read(&self.overlay).range_from(tree, start);
        if tree != Tree::Audit {
            return Box::new(Merged::new(sled_tree.range(start.to_vec()..), over));
        }
        // The entries (from the file, the overlay's copy taken first: an
        // entry settled meanwhile is then in both, and the overlay's wins),
        // then the tree's other keys, which all sort after them (an entry's
        // key starts with a zero byte, theirs with a letter).
        let (over_entries, over_rest): (Vec<_>, Vec<_>) = over
            .into_iter()
            .partition(|(k, _)| audit_log::entry_seq(k).is_some());
        let entries = match audit_log::first_seq_from(start) {
            Some(seq) => crate::sync::lock(&self.audit).entries_from(seq),
            None => crate::sync::lock(&self.audit).entries_from(u64::MAX),
        };
        let entries = entries.map(|r| {
            r.map(|(seq, value)| {
                (
                    sled::IVec::from(&seq.to_be_bytes()[..]),
                    sled::IVec::from(value),
                )
            })
            .map_err(sled::Error::Io)
        });
        Box::new(
            Merged::new(entries, over_entries)
                .chain(Merged::new(sled_tree.range(start.to_vec()..), over_rest)),
        )
    }

    pub(super) fn last(&self, tree: Tree) -> StoreResult<Option<(sled::IVec, sled::IVec)>> {
        let over = crate::sync::read(&self.overlay).range_from(tree, &[]);
        let newest_over = over.iter().rev().find_map(|(k, v)| {
            v.as_ref()
                .map(|v| (sled::IVec::from(k.as_slice()), v.clone()))
        });
        let mut newest_sled = None;
        for item in self.tree(tree)?.iter().rev() {
            let (k, v) = item?;
            if !over.iter().any(|(ok, _)| ok.as_slice() == k.as_ref()) {
                newest_sled = Some((k, v));
                break;
            }
        }
        let newest = match (newest_sled, newest_over) {
            (Some(s), Some(o)) => Some(if s.0 > o.0 { s } else { o }),
            (s, o) => s.or(o),
        };
        if newest.is_none() && tree == Tree::Audit {
            // Only entries, which sort before the tree's other keys.
            return self.scan_from(tree, &[]).last().transpose();
        }
        Ok(newest)
    }

    /// Counts through the merged scan, which stops at the first error.
    /// Not sled's `Tree::len`: it counts the items of an iterator that,
    /// once the instance has failed, yields errors forever.
    pub(super) fn len(&self, tree: Tree) -> StoreResult<usize> {
        let mut len = 0;
        for item in self.scan_from(tree, &[]) {
            item?;
            len += 1;
        }
        Ok(len)
    }
}

/// The seq of an audit entry's key; `None` for every other key (they stay
/// in sled).
fn audit_entry(tree: Tree, key: &[u8]) -> Option<u64> {
    (tree == Tree::Audit)
        .then(|| audit_log::entry_seq(key))
        .flatten()
}

/// Moves the audit entries a store written before the audit log kept in
/// sled into the file, in order, then removes them from sled. A crash on
/// the way repeats it: the file skips the entries it has.
fn move_entries_out_of_sled(
    db: &sled::Db,
    tree: &sled::Tree,
    audit: &mut AuditLog,
) -> StoreResult<()> {
    // Entry keys start with a zero byte; the head and the anchor mark do not.
    let Some(first) = tree.range(..[1u8].as_slice()).next().transpose()? else {
        return Ok(());
    };
    tracing::info!(
        from_seq = audit_log::entry_seq(&first.0),
        "moving the audit entries out of the store into their own file (once, after an upgrade)"
    );
    // In batches, each on disk in the file before it leaves sled.
    let mut batch: Vec<(u64, sled::IVec)> = Vec::with_capacity(4096);
    let mut move_batch = |batch: &mut Vec<(u64, sled::IVec)>| -> StoreResult<()> {
        audit.append(batch.iter().map(|(s, v)| (*s, v.as_ref())))?;
        audit.sync()?;
        for (seq, _) in batch.drain(..) {
            tree.remove(seq.to_be_bytes())?;
        }
        Ok(())
    };
    for item in tree.range(..[1u8].as_slice()) {
        let (key, value) = item?;
        if let Some(seq) = audit_log::entry_seq(&key) {
            batch.push((seq, value));
        }
        if batch.len() == batch.capacity() {
            move_batch(&mut batch)?;
        }
    }
    move_batch(&mut batch)?;
    db.flush()?;
    Ok(())
}

/// A write as the overlay and the log hold it: tree, key, value (`None`:
/// removed).
fn staged(w: &Write) -> (Tree, Vec<u8>, Option<sled::IVec>) {
    match w {
        Write::Put { tree, key, value } => {
            (*tree, key.clone(), Some(sled::IVec::from(value.as_slice())))
        }
        Write::Remove { tree, key } => (*tree, key.clone(), None),
    }
}

fn wal_error(e: wal::WalError) -> sled::Error {
    match e {
        wal::WalError::Io { source, .. } => sled::Error::Io(source),
        gap @ wal::WalError::Gap { .. } => sled::Error::Unsupported(gap.to_string()),
    }
}
