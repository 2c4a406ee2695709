//! Backups: a consistent snapshot of the store, sealed with the backup key.
//!
//! The snapshot is taken as **one job of the vault writer**: no commit can
//! interleave with the scan, so it is a clean cut between transactions.
//! (sled's iterators are consistent only per tree, which is not enough: a
//! txn touches several trees.) The job streams the records, sealed in
//! chunks, straight into a file and holds no more than one chunk in memory:
//!
//! - `backup create` offline writes into the destination file itself (and
//!   audits `backup.create` in the same job once the file is durable);
//! - `GET /v1/admin/backup` writes into an anonymous spool file in the data
//!   directory (0600, unlinked as soon as it is created, so a crash leaves
//!   nothing behind), audits, and only then streams that file to the client
//!   with a bounded buffer: a slow client never holds the writer.
//!
//! Writers pause for the scan (disk speed: the spool is local), readers never
//! do. Records stay sealed under their own data keys inside the backup; the
//! keyring is *not* in it. A restore therefore needs the master key and the
//! *current* keyring: a patient erased after the backup was taken has no key
//! there, and stays unreadable in the restored data.
//!
//! File format 2 (written now):
//!
//! ```text
//! CLINIC-RELAY-BACKUP 2\n
//! {"created":…,"keyring_check":…,"audit_seq":…,"salt":"<64 hex>"}\n   (plain, authenticated)
//! chunk*: [sealed length u32 BE][AES-256-GCM(chunk key, nonce, records)]
//! ```
//!
//! The chunk key is HKDF-SHA256(salt, backup key), fresh per backup; the
//! nonce of chunk `i` is `i` (u64 BE) ‖ 0 0 0 ‖ last (1 on the final chunk);
//! every chunk's associated data is the two lines above. A chunk holds whole
//! records; the final chunk holds only the record count (u64 BE). Reordered,
//! dropped, truncated or spliced chunks fail to open.
//!
//! Format 1 (still restored): the same two lines (with `"records":N`), then
//! nonce (12) ‖ AES-256-GCM(backup key, records) in one piece.
//!
//! Records: `[tree name len u8][tree name][key len u32][key][value len u32][value] …`
//!
//! A restore opens and checks every chunk before it touches the disk, then
//! reads the file a second time to write the store: it never holds more
//! than a chunk of a format-2 backup in memory either.

use super::keyring::Keyring;
use super::store::{SledStore, Store, Tree, Write};
use super::{keyring_path, store_path, PurposeKeys, Txn, Vault, VaultError};
use crate::audit::AuditDraft;
use crate::keys::MasterKey;
use jiff::Timestamp;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use zeroize::Zeroizing;

const MAGIC: &[u8] = b"CLINIC-RELAY-BACKUP 1\n";
const MAGIC_V2: &[u8] = b"CLINIC-RELAY-BACKUP 2\n";
/// A backup larger than this is refused on restore (a clinic's store is far smaller).
pub const MAX_BACKUP_BYTES: usize = 8 * 1024 * 1024 * 1024;
const RESTORE_BATCH: usize = 2048;
/// Plaintext gathered before a chunk is sealed and written (a single
/// record larger than this makes a chunk of its own size).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// A sealed chunk larger than this is refused before anything is allocated.
const MAX_CHUNK: usize = 512 * 1024 * 1024;
/// The header line is short; a longer one is not a backup.
const MAX_HEADER: usize = 64 * 1024;
const CHUNK_KEY_INFO: &[u8] = b"clinic-relay backup v2 chunk key";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a clinic-relay backup (bad header)")]
    NotABackup,
    #[error("the backup does not open with this keyring and master key (wrong key, or the file was modified)")]
    Tampered,
    #[error("the backup's record list is damaged at byte {0}")]
    Damaged(usize),
    #[error("refusing to restore into {0}: it is not empty. Restore into a new, empty directory")]
    NotEmpty(std::path::PathBuf),
    #[error("an erased patient's key is in the keyring given to the restore: use the current keyring, not an older copy")]
    ErasedKeyPresent,
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// The header of a format-1 backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupHeader {
    pub created: Timestamp,
    pub records: u64,
    pub keyring_check: String,
    pub audit_seq: u64,
}

/// The header of a format-2 backup (the record count is in its final chunk).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupHeaderV2 {
    pub created: Timestamp,
    pub keyring_check: String,
    pub audit_seq: u64,
    /// Random per backup: the chunk key is derived from it.
    pub salt: String,
}

/// What a backup that was taken holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    pub records: u64,
    /// The size of the backup file.
    pub bytes: u64,
    /// The audit seq the snapshot ends at.
    pub audit_seq: u64,
}

/// What a restore found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub records: u64,
    pub audit_entries: u64,
    /// Records under erased patients' keys: present, and unreadable as intended.
    pub unreadable_erased: u64,
}

fn aead(key: &[u8; 32]) -> Result<LessSafeKey, BackupError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| BackupError::Tampered)
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

/// The per-backup chunk key: HKDF-SHA256(salt, backup key).
fn chunk_key(backup_key: &[u8; 32], salt: &[u8]) -> Result<LessSafeKey, BackupError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(backup_key);
    let info = [CHUNK_KEY_INFO];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| BackupError::Tampered)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    for (d, s) in n.iter_mut().zip(index.to_be_bytes()) {
        *d = s;
    }
    if let Some(flag) = n.last_mut() {
        *flag = u8::from(last);
    }
    Nonce::assume_unique_for_key(n)
}

/// Seals records into chunks and writes them as they fill: at most one
/// chunk of plaintext is held.
struct ChunkWriter<W: std::io::Write> {
    out: W,
    key: LessSafeKey,
    aad: Vec<u8>,
    buf: Zeroizing<Vec<u8>>,
    index: u64,
    records: u64,
    bytes: u64,
}

impl<W: std::io::Write> ChunkWriter<W> {
    fn record(&mut self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        let name = tree.name().as_bytes();
        self.buf.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        self.buf.extend_from_slice(name);
        put_len(&mut self.buf, key.len());
        self.buf.extend_from_slice(key);
        put_len(&mut self.buf, value.len());
        self.buf.extend_from_slice(value);
        self.records += 1;
        if self.buf.len() >= CHUNK_BYTES {
            self.seal(false)?;
        }
        Ok(())
    }

    fn seal(&mut self, last: bool) -> Result<(), BackupError> {
        // In place: the plaintext is overwritten by the ciphertext.
        self.key
            .seal_in_place_append_tag(
                chunk_nonce(self.index, last),
                Aad::from(self.aad.as_slice()),
                &mut *self.buf,
            )
            .map_err(|_| BackupError::Tampered)?;
        let len = u32::try_from(self.buf.len()).map_err(|_| BackupError::Damaged(0))?;
        self.out
            .write_all(&len.to_be_bytes())
            .and_then(|()| self.out.write_all(&self.buf))
            .map_err(io_err("writing the backup"))?;
        self.bytes += 4 + self.buf.len() as u64;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Seals what is left, then the final chunk (the record count).
    fn finish(mut self) -> Result<(W, u64, u64), BackupError> {
        if !self.buf.is_empty() {
            self.seal(false)?;
        }
        let count = self.records.to_be_bytes();
        self.buf.extend_from_slice(&count);
        self.seal(true)?;
        self.out.flush().map_err(io_err("writing the backup"))?;
        Ok((self.out, self.records, self.bytes))
    }
}

/// Reads the chunks of a format-2 backup, handing each opened chunk to
/// `each`; returns the record count the final chunk states. Fails unless
/// the final chunk is there and nothing follows it.
fn read_chunks<R: Read>(
    src: &mut R,
    key: &LessSafeKey,
    aad: &[u8],
    mut each: impl FnMut(&[u8]) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let mut index = 0u64;
    let mut at = 0usize;
    let mut buf = Zeroizing::new(Vec::new());
    loop {
        let mut len = [0u8; 4];
        src.read_exact(&mut len).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => BackupError::Damaged(at),
            _ => BackupError::Io {
                context: "reading the backup".to_owned(),
                source: e,
            },
        })?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_CHUNK {
            return Err(BackupError::Damaged(at));
        }
        buf.clear();
        buf.resize(len, 0);
        src.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => BackupError::Damaged(at),
            _ => BackupError::Io {
                context: "reading the backup".to_owned(),
                source: e,
            },
        })?;
        at += 4 + len;
        // Only the final chunk has 8 bytes of plaintext (the count): any
        // record is longer. The flag is in the nonce, so a chunk cannot
        // pass for the other kind.
        let last = len == 8 + AES_256_GCM.tag_len();
        let plain = key
            .open_in_place(chunk_nonce(index, last), Aad::from(aad), &mut buf)
            .map_err(|_| BackupError::Tampered)?;
        if !last {
            each(plain)?;
            index += 1;
            continue;
        }
        let count: [u8; 8] = (&*plain).try_into().map_err(|_| BackupError::Damaged(at))?;
        let mut rest = [0u8; 1];
        return match src.read(&mut rest) {
            Ok(0) => Ok(u64::from_be_bytes(count)),
            _ => Err(BackupError::Damaged(at)),
        };
    }
}

/// Every record of an opened chunk, in order.
fn chunk_records(
    chunk: &[u8],
    mut each: impl FnMut(Write) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let mut at = 0usize;
    while at < chunk.len() {
        let (write, next) = read_record(chunk, at).ok_or(BackupError::Damaged(at))?;
        each(write)?;
        at = next;
    }
    Ok(())
}

/// A parsed and authenticated backup, ready to be written into a store
/// (one lives briefly per restore: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Opened<R> {
    V1 {
        payload: Zeroizing<Vec<u8>>,
        records: u64,
    },
    V2 {
        src: R,
        start: u64,
        key: LessSafeKey,
        aad: Vec<u8>,
        records: u64,
    },
}

/// Creates an anonymous file in `dir`: 0600, unlinked at once, so nothing
/// is left behind whatever happens to the process.
fn spool_file(dir: &Path, rng: &ring::rand::SystemRandom) -> Result<std::fs::File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tag = [0u8; 8];
    rng.fill(&mut tag).map_err(|_| VaultError::Rng)?;
    let path = dir.join(format!("backup-spool.{}", hex::encode(tag)));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(path.display().to_string()))?;
    std::fs::remove_file(&path).map_err(io_err(path.display().to_string()))?;
    Ok(file)
}

impl Vault {
    /// Writes a sealed backup of the store as it is now into `out`. The
    /// caller guarantees that no commit interleaves: it runs as a job of
    /// the writer (or on a vault nothing else writes to).
    fn write_snapshot<W: std::io::Write>(
        &self,
        now: Timestamp,
        mut out: W,
    ) -> Result<(W, BackupSummary), BackupError> {
        let audit_seq = self.audit_seq();
        let check = {
            // A restore of this backup needs the keys of every patient in it
            // from the keyring (or its copy): the staged ones too.
            let mut ring = crate::sync::lock(&self.inner.keyring);
            ring.save_staged(&crate::sync::read(&self.inner.keys))
                .map_err(VaultError::from)?;
            ring.meta.check.clone()
        };
        let mut salt = [0u8; 32];
        self.inner
            .rng
            .fill(&mut salt)
            .map_err(|_| VaultError::Rng)?;
        let header = BackupHeaderV2 {
            created: now,
            keyring_check: check,
            audit_seq,
            salt: hex::encode(salt),
        };
        let mut aad = MAGIC_V2.to_vec();
        aad.extend_from_slice(&serde_json::to_vec(&header).map_err(|_| VaultError::Encode)?);
        aad.push(b'\n');
        out.write_all(&aad).map_err(io_err("writing the backup"))?;
        let mut chunks = ChunkWriter {
            out,
            key: chunk_key(self.backup_key(), &salt)?,
            bytes: aad.len() as u64,
            aad,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK_BYTES + 64 * 1024)),
            index: 0,
            records: 0,
        };
        // This scan is a job of the writer: no commit, erasure or re-seal
        // batch can change the store while it runs.
        for tree in Tree::ALL {
            for item in self.inner.store.scan_from(tree, &[]) {
                let (k, v) = item.map_err(VaultError::from)?;
                chunks.record(tree, &k, &v)?;
            }
        }
        let (out, records, bytes) = chunks.finish()?;
        Ok((
            out,
            BackupSummary {
                records,
                bytes,
                audit_seq,
            },
        ))
    }

    /// Takes a consistent snapshot and returns the sealed backup bytes, all
    /// in memory: for tests and small stores. Nothing is audited. Blocking:
    /// not from the async runtime.
    pub fn backup(&self, now: Timestamp) -> Result<Vec<u8>, BackupError> {
        self.backup_into(now, Vec::new()).map(|(bytes, _)| bytes)
    }

    /// Streams a consistent snapshot into `out` as one job of the writer and
    /// hands `out` back. Nothing is audited. Blocking: not from the async
    /// runtime.
    pub fn backup_into<W>(&self, now: Timestamp, out: W) -> Result<(W, BackupSummary), BackupError>
    where
        W: std::io::Write + Send + 'static,
    {
        self.write_blocking(move |vault: &Vault| {
            let written = vault.write_snapshot(now, out)?;
            Ok::<_, BackupError>((Txn::new(now), written))
        })
        .map(|c| c.value)
    }

    /// Writes a backup into `file` (just created at `path`) as one job of
    /// the writer, makes it durable (file and folder), and audits
    /// `backup.create` by `actor` in the same job: a backup that failed is
    /// not audited. Blocking: not from the async runtime.
    pub fn backup_to_file(
        &self,
        now: Timestamp,
        file: std::fs::File,
        path: &Path,
        actor: &str,
    ) -> Result<BackupSummary, BackupError> {
        let path = path.to_owned();
        let actor = actor.to_owned();
        self.write_blocking(move |vault: &Vault| {
            let out = std::io::BufWriter::with_capacity(64 * 1024, file);
            let (out, summary) = vault.write_snapshot(now, out)?;
            let file = out.into_inner().map_err(|e| BackupError::Io {
                context: path.display().to_string(),
                source: e.into_error(),
            })?;
            file.sync_all()
                .map_err(io_err(path.display().to_string()))?;
            super::fsio::sync_parent_dir(&path).map_err(io_err(path.display().to_string()))?;
            Ok::<_, BackupError>((backup_audit(now, &actor, &summary), summary))
        })
        .map(|c| c.value)
    }

    /// For the API: writes a backup into an anonymous spool file in the data
    /// directory as one job of the writer, audits `backup.create` by `actor`
    /// in the same job, and returns the file (at its start) to be streamed
    /// to the client without holding the writer.
    pub async fn backup_spool(
        &self,
        now: Timestamp,
        actor: &str,
    ) -> Result<(std::fs::File, BackupSummary), BackupError> {
        let actor = actor.to_owned();
        self.write(move |vault: &Vault| {
            let file = spool_file(vault.dir(), &vault.inner.rng)?;
            let out = std::io::BufWriter::with_capacity(64 * 1024, file);
            let (out, summary) = vault.write_snapshot(now, out)?;
            let mut file = out.into_inner().map_err(|e| BackupError::Io {
                context: "the backup spool file".to_owned(),
                source: e.into_error(),
            })?;
            file.seek(SeekFrom::Start(0))
                .map_err(io_err("the backup spool file"))?;
            Ok::<_, BackupError>((backup_audit(now, &actor, &summary), (file, summary)))
        })
        .await
        .map(|c| c.value)
    }

    /// Restores `backup` (format 1 or 2, in memory) into the empty directory
    /// `dir`; see [`Vault::restore_from`].
    pub fn restore(
        backup: &[u8],
        dir: &Path,
        keyring_file: &Path,
        mk: &MasterKey,
    ) -> Result<(Vault, RestoreReport), BackupError> {
        Self::restore_from(std::io::Cursor::new(backup), dir, keyring_file, mk)
    }

    /// Restores a backup read from `src` into the empty directory `dir`,
    /// using the current keyring file and master key, then verifies it: the
    /// audit chain, every record opens (or belongs to an erased patient),
    /// and no erased patient's key is present. The backup is opened and
    /// checked in full before anything is written.
    pub fn restore_from<R: Read + Seek>(
        mut src: R,
        dir: &Path,
        keyring_file: &Path,
        mk: &MasterKey,
    ) -> Result<(Vault, RestoreReport), BackupError> {
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(io_err(dir.display().to_string()))?
                .next()
                .is_some()
        {
            return Err(BackupError::NotEmpty(dir.to_owned()));
        }
        // Parse and open before touching the disk.
        let (keyring, view) = Keyring::open(keyring_file, mk).map_err(VaultError::from)?;
        let root = view.root_secret().map_err(VaultError::from)?;
        let purpose = PurposeKeys::derive(&root)?;
        drop((keyring, view));
        let mut magic = [0u8; 22];
        src.read_exact(&mut magic)
            .map_err(|_| BackupError::NotABackup)?;
        let opened = if magic.as_slice() == MAGIC {
            open_v1(&mut src, &purpose)?
        } else if magic.as_slice() == MAGIC_V2 {
            open_v2(src, &purpose)?
        } else {
            return Err(BackupError::NotABackup);
        };

        std::fs::create_dir_all(dir).map_err(io_err(dir.display().to_string()))?;
        std::fs::copy(keyring_file, keyring_path(dir)).map_err(io_err("copying the keyring"))?;
        let records;
        {
            let store = SledStore::open(&store_path(dir)).map_err(VaultError::from)?;
            let mut batch = Vec::with_capacity(RESTORE_BATCH);
            let put = |write: Write, batch: &mut Vec<Write>| -> Result<(), BackupError> {
                batch.push(write);
                if batch.len() == RESTORE_BATCH {
                    store.apply(batch).map_err(VaultError::from)?;
                    batch.clear();
                }
                Ok(())
            };
            let mut n = 0u64;
            match opened {
                Opened::V1 {
                    payload,
                    records: stated,
                } => {
                    chunk_records(&payload, |w| {
                        n += 1;
                        put(w, &mut batch)
                    })?;
                    if n != stated {
                        return Err(BackupError::Damaged(payload.len()));
                    }
                }
                Opened::V2 {
                    mut src,
                    start,
                    key,
                    aad,
                    records: stated,
                } => {
                    src.seek(SeekFrom::Start(start))
                        .map_err(io_err("reading the backup"))?;
                    read_chunks(&mut src, &key, &aad, |chunk| {
                        chunk_records(chunk, |w| {
                            n += 1;
                            put(w, &mut batch)
                        })
                    })?;
                    if n != stated {
                        return Err(BackupError::Damaged(0));
                    }
                }
            }
            if !batch.is_empty() {
                store.apply(&batch).map_err(VaultError::from)?;
            }
            store.checkpoint().map_err(VaultError::from)?;
            records = n;
        }
        SledStore::wait_released(&store_path(dir));
        let vault = Vault::open(dir, mk)?;
        // The new dir has no audit anchor yet: anchor the restored chain.
        vault.anchor_restored()?;
        let report = vault.verify_restored(records)?;
        Ok((vault, report))
    }

    /// Every record opens or is under an erased patient's key; the audit
    /// chain verifies; no erased patient's key came back.
    fn verify_restored(&self, records: u64) -> Result<RestoreReport, BackupError> {
        let mut erased_handles = std::collections::HashSet::new();
        for item in self.scan_prefix(Tree::Erasures, &[]) {
            let (_, v) = item?;
            let record: super::ErasureRecord =
                serde_json::from_slice(&v).map_err(|e| VaultError::decode(Tree::Erasures, &e))?;
            erased_handles.extend(record.handles);
        }
        {
            let view = crate::sync::read(&self.inner.keys);
            if erased_handles.iter().any(|h| view.has(*h)) {
                return Err(BackupError::ErasedKeyPresent);
            }
        }
        let high_water = crate::sync::lock(&self.inner.keyring).high_water();
        let mut report = RestoreReport {
            records,
            ..RestoreReport::default()
        };
        for tree in Tree::ALL {
            for item in self.inner.store.scan_from(tree, &[]) {
                let (k, v) = item.map_err(VaultError::from)?;
                match self.open_value(tree, k.as_ref(), v.as_ref()) {
                    Ok(_) => {}
                    // Erased before the backup (in its ledger), or after it: a
                    // handle the keyring issued once and no longer holds.
                    // (Rotation retires keys but keeps them, so nothing else
                    // makes an issued handle disappear.)
                    Err(VaultError::KeyUnavailable { handle, .. })
                        if erased_handles.contains(&handle) || handle <= high_water =>
                    {
                        report.unreadable_erased += 1
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        report.audit_entries = self.verify_audit()?;
        Ok(report)
    }
}

fn read_record(p: &[u8], at: usize) -> Option<(Write, usize)> {
    let name_len = usize::from(*p.get(at)?);
    let name = std::str::from_utf8(p.get(at + 1..at + 1 + name_len)?).ok()?;
    let tree = Tree::from_name(name)?;
    let mut at = at + 1 + name_len;
    let mut take = |p: &[u8]| -> Option<Vec<u8>> {
        let len = u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?) as usize;
        let bytes = p.get(at + 4..at + 4 + len)?.to_vec();
        at += 4 + len;
        Some(bytes)
    };
    let key = take(p)?;
    let value = take(p)?;
    Some((Write::Put { tree, key, value }, at))
}

fn backup_audit(now: Timestamp, actor: &str, summary: &BackupSummary) -> Txn {
    Vault::audit_txn(
        now,
        [AuditDraft::new(actor, "backup.create")
            .detail("bytes", summary.bytes.to_string())
            .detail("records", summary.records.to_string())
            .detail("audit_seq", summary.audit_seq.to_string())],
    )
}

/// Reads and opens a format-1 backup (one sealed piece, held in memory).
fn open_v1<R: Read>(src: &mut R, purpose: &PurposeKeys) -> Result<Opened<R>, BackupError> {
    let mut backup = MAGIC.to_vec();
    src.take(MAX_BACKUP_BYTES as u64)
        .read_to_end(&mut backup)
        .map_err(io_err("reading the backup"))?;
    let rest = backup.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
    let line_end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(BackupError::NotABackup)?;
    let header: BackupHeader =
        serde_json::from_slice(rest.get(..line_end).ok_or(BackupError::NotABackup)?)
            .map_err(|_| BackupError::NotABackup)?;
    let authenticated = backup
        .get(..MAGIC.len() + line_end + 1)
        .ok_or(BackupError::NotABackup)?;
    let sealed = rest.get(line_end + 1..).ok_or(BackupError::NotABackup)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(sealed.get(..NONCE_LEN).ok_or(BackupError::NotABackup)?);
    let mut body = Zeroizing::new(
        sealed
            .get(NONCE_LEN..)
            .ok_or(BackupError::NotABackup)?
            .to_vec(),
    );
    let payload_len = aead(&purpose.backup)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(authenticated),
            &mut body,
        )
        .map_err(|_| BackupError::Tampered)?
        .len();
    body.truncate(payload_len);
    // Check the framing before anything is written.
    chunk_records(&body, |_| Ok(()))?;
    Ok(Opened::V1 {
        payload: body,
        records: header.records,
    })
}

/// Reads the header of a format-2 backup and opens every chunk once (no
/// writes); the records are read again, chunk by chunk, to be written.
fn open_v2<R: Read + Seek>(mut src: R, purpose: &PurposeKeys) -> Result<Opened<R>, BackupError> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        src.read_exact(&mut b)
            .map_err(|_| BackupError::NotABackup)?;
        if b == *b"\n" {
            break;
        }
        line.extend_from_slice(&b);
        if line.len() > MAX_HEADER {
            return Err(BackupError::NotABackup);
        }
    }
    let header: BackupHeaderV2 =
        serde_json::from_slice(&line).map_err(|_| BackupError::NotABackup)?;
    let salt = hex::decode(&header.salt).map_err(|_| BackupError::NotABackup)?;
    let mut aad = MAGIC_V2.to_vec();
    aad.extend_from_slice(&line);
    aad.push(b'\n');
    let key = chunk_key(&purpose.backup, &salt)?;
    let start = aad.len() as u64;
    let mut counted = 0u64;
    let stated = read_chunks(&mut src, &key, &aad, |chunk| {
        chunk_records(chunk, |_| {
            counted += 1;
            Ok(())
        })
    })?;
    if counted != stated {
        return Err(BackupError::Damaged(0));
    }
    Ok(Opened::V2 {
        src,
        start,
        key,
        aad,
        records: stated,
    })
}
