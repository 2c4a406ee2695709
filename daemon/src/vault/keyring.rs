//! The keyring: every data key the vault uses, wrapped by a key derived from
//! the master key, in one small file *beside* the sled folder.
//!
//! Why not in sled: sled is log-structured, so a deleted value lingers in old
//! segments until compaction, and every copy of the folder keeps it. Patient
//! keys live here instead, and the file is rewritten atomically without the
//! erased entries when a patient is erased. A copy of the sled folder made
//! before an erasure, opened with the current keyring, therefore cannot
//! reveal that patient.
//!
//! A new patient's key is *staged* first: its line goes into the store's
//! write-ahead log, ahead of the records sealed under it and durable with
//! them in the same `fdatasync` (wal.rs), and is appended here before that
//! log is emptied ([`Keyring::save_staged`]; the vault runs it before every
//! checkpoint, erasure, backup and close). At open the vault takes back the
//! lines the log holds and this file lacks ([`Keyring::adopt`]). Before, each
//! batch of new patients cost an append and an `fsync` of this file (and of
//! its copy) of its own.
//!
//! The file is JSON lines: one `meta` line, then one `key` line per key.
//! A torn last line (a crash during an append) is cut off at open: its key
//! is still in the log, or was never used.

use super::fsio;
use super::keyview::KeyView;
use crate::keys::MasterKey;
use crate::model::PatientId;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const KEYRING_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyring file {path} is damaged at line {line}: {reason}. Restore it from the latest keyring copy next to your backups")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("the master key does not open the keyring {path}{hint}")]
    WrongMasterKey { path: PathBuf, hint: &'static str },
    #[error("the system random number generator failed")]
    Rng,
    #[error("keyring internal error: {0}")]
    Internal(&'static str),
}

/// Who a key belongs to. The string forms are what the file stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    /// The root from which the stable purpose keys (blind index, audit MAC,
    /// backups) are derived. It survives master key rotation unchanged.
    Root,
    /// Seals records that belong to no patient (audit entries, ledgers).
    System,
    Patient(PatientId),
}

impl KeyOwner {
    fn label(&self) -> String {
        match self {
            KeyOwner::Root => "root".to_owned(),
            KeyOwner::System => "system".to_owned(),
            KeyOwner::Patient(p) => format!("patient:{}", p.to_hex()),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "root" => Some(KeyOwner::Root),
            "system" => Some(KeyOwner::System),
            _ => s
                .strip_prefix("patient:")
                .and_then(PatientId::from_hex)
                .map(KeyOwner::Patient),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub format: u32,
    /// Key check value of the master key that wraps this file.
    pub check: String,
    /// The current key generation; rotation moves data to `generation`.
    pub generation: u32,
    /// Set while a rotation is re-sealing data from an older generation.
    #[serde(default)]
    pub rotating_from: Option<u32>,
    /// Check value of the master key used before the last rotation, so that
    /// starting with the old key gives a helpful message.
    #[serde(default)]
    pub previous_check: Option<String>,
    /// The highest key handle ever issued. Handles are never reused, so a
    /// record sealed under an erased key always reports "key unavailable".
    #[serde(default)]
    pub high_water: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Line {
    Meta(Meta),
    Key(KeyLine),
}

#[derive(Serialize, Deserialize)]
struct KeyLine {
    handle: u64,
    owner: String,
    gen: u32,
    wrapped: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    retired: bool,
}

/// A data key, unwrapped: what the vault's key view holds.
pub struct KeyEntry {
    pub handle: u64,
    pub owner: KeyOwner,
    pub gen: u32,
    pub secret: Zeroizing<[u8; 32]>,
    /// Replaced by a rotation: never used to seal again, kept (wrapped under
    /// the current master key) so that backups taken before the rotation
    /// still restore. Erasure destroys retired keys too.
    pub retired: bool,
}

/// One key as a rewrite of the file needs it, borrowed from the key view:
/// the view holds the only copy of each key in memory, and a rewrite wraps
/// it afresh (new nonce) under the current master key.
pub(super) struct KeyRecord<'a> {
    pub(super) handle: u64,
    pub(super) owner: KeyOwner,
    pub(super) gen: u32,
    pub(super) retired: bool,
    pub(super) secret: &'a [u8; 32],
}

/// The wrapped form of a key: nonce, the 32 sealed bytes, the tag.
const WRAPPED_LEN: usize = NONCE_LEN + 32 + 16;

/// A wrapping key derived from one master key, with its check value.
pub struct Wrapper {
    kek: LessSafeKey,
    pub check: String,
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

const MK_SALT: &[u8] = b"clinic-relay master key v1";

impl Wrapper {
    pub fn new(mk: &MasterKey) -> Result<Self, KeyringError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, MK_SALT).extract(mk.expose());
        let mut kek = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"keyring-wrap"], Len(32))
            .and_then(|okm| okm.fill(kek.as_mut()))
            .map_err(|_| KeyringError::Rng)?;
        let mut check = [0u8; 16];
        prk.expand(&[b"key-check"], Len(16))
            .and_then(|okm| okm.fill(&mut check))
            .map_err(|_| KeyringError::Rng)?;
        let unbound = UnboundKey::new(&AES_256_GCM, kek.as_ref()).map_err(|_| KeyringError::Rng)?;
        Ok(Self {
            kek: LessSafeKey::new(unbound),
            check: hex::encode(check),
        })
    }

    fn aad(handle: u64, owner: &str, gen: u32) -> Vec<u8> {
        let mut ad = b"clinic-relay keyring v1\0".to_vec();
        ad.extend_from_slice(&handle.to_be_bytes());
        ad.extend_from_slice(&gen.to_be_bytes());
        ad.extend_from_slice(owner.as_bytes());
        ad
    }

    fn wrap(
        &self,
        rng: &SystemRandom,
        handle: u64,
        owner: KeyOwner,
        gen: u32,
        secret: &[u8; 32],
    ) -> Result<[u8; WRAPPED_LEN], KeyringError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| KeyringError::Rng)?;
        let mut out = [0u8; WRAPPED_LEN];
        let (head, body) = out.split_at_mut(NONCE_LEN);
        head.copy_from_slice(&nonce);
        let (sealed, tag_out) = body.split_at_mut(32);
        sealed.copy_from_slice(secret);
        let tag = self
            .kek
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(handle, &owner.label(), gen)),
                sealed,
            )
            .map_err(|_| KeyringError::Rng)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The key a key line holds, or why the line does not give one.
    fn open_line(&self, k: &KeyLine) -> Result<KeyEntry, &'static str> {
        let owner = KeyOwner::parse(&k.owner).ok_or("unknown key owner")?;
        let mut wrapped = Zeroizing::new([0u8; WRAPPED_LEN]);
        hex::decode_to_slice(&k.wrapped, wrapped.as_mut())
            .map_err(|_| "key does not unwrap (modified?)")?;
        let secret = self
            .unwrap(k.handle, owner, k.gen, &wrapped)
            .ok_or("key does not unwrap (modified?)")?;
        Ok(KeyEntry {
            handle: k.handle,
            owner,
            gen: k.gen,
            secret,
            retired: k.retired,
        })
    }

    fn unwrap(
        &self,
        handle: u64,
        owner: KeyOwner,
        gen: u32,
        wrapped: &[u8; WRAPPED_LEN],
    ) -> Option<Zeroizing<[u8; 32]>> {
        let mut raw = Zeroizing::new(*wrapped);
        let (head, body) = raw.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(head).ok()?;
        let plain = self
            .kek
            .open_in_place(
                nonce,
                Aad::from(Self::aad(handle, &owner.label(), gen)),
                body,
            )
            .ok()?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(plain.get(..32)?);
        Some(key)
    }
}

/// The keyring file. The keys themselves are held once, unwrapped, by the
/// vault's key view ([`KeyView`]): the file is written from it, and the view
/// is built from the file at open. With 100,000 patients a second copy here
/// (the wrapped form, fixed size) held another 10 MB for nothing but
/// rewrites, which wrap the keys afresh instead. The vault keeps the keyring
/// behind a mutex, taken before the view's lock: every change of either is a
/// file operation first, and they must be ordered.
pub struct Keyring {
    path: PathBuf,
    wrapper: Wrapper,
    /// `high_water` counts every handle issued so far, in memory at once
    /// (the file has it from the next rewrite): a handle is never issued
    /// twice, even when its append failed or its key was destroyed.
    pub meta: Meta,
    rng: SystemRandom,
    /// Handles of keys issued since the file was last written that it does
    /// not hold yet (their lines are in the store's log), in handle order.
    staged: Vec<u64>,
    /// A copy kept in step with the file (see `set_mirror`).
    mirror: Option<PathBuf>,
    mirror_error: Option<String>,
}

impl Keyring {
    pub fn exists(path: &Path) -> bool {
        path.exists()
    }

    /// Creates a new keyring with a fresh root and system key; the view
    /// holds them.
    pub(super) fn create(path: &Path, mk: &MasterKey) -> Result<(Self, KeyView), KeyringError> {
        let wrapper = Wrapper::new(mk)?;
        let mut ring = Self {
            path: path.to_owned(),
            meta: Meta {
                format: KEYRING_FORMAT,
                check: wrapper.check.clone(),
                generation: 1,
                rotating_from: None,
                previous_check: None,
                high_water: 0,
            },
            wrapper,
            rng: SystemRandom::new(),
            staged: Vec::new(),
            mirror: None,
            mirror_error: None,
        };
        let mut view = KeyView::with_capacity(2);
        for (owner, gen) in [(KeyOwner::Root, 0), (KeyOwner::System, 1)] {
            let entry = ring.new_entry(owner, gen)?;
            view.add(&entry)?;
        }
        ring.rewrite(view.records())?;
        Ok((ring, view))
    }

    /// Opens the keyring file and builds the key view from it, unwrapping
    /// each key once (a line that does not unwrap is named as damaged).
    pub(super) fn open(path: &Path, mk: &MasterKey) -> Result<(Self, KeyView), KeyringError> {
        let io_err = |source| KeyringError::Io {
            path: path.to_owned(),
            source,
        };
        // Read line by line: with 100,000 patients the file is over 20 MB,
        // and holding it whole would raise the daemon's peak memory by as much.
        let file = std::fs::File::open(path).map_err(io_err)?;
        // A patient's line is about 220 bytes: room for every key at once,
        // so that the view is not copied to grow while it is built (and not
        // much more: its owner map's table is touched in full).
        let expected = file.metadata().map_or(0, |m| m.len() / 200) as usize;
        let mut file = std::io::BufReader::new(file);
        let wrapper = Wrapper::new(mk)?;
        let corrupt = |line: usize, reason: &str| KeyringError::Corrupt {
            path: path.to_owned(),
            line,
            reason: reason.to_owned(),
        };
        let mut complete = false;
        let mut meta: Option<Meta> = None;
        let mut view = KeyView::with_capacity(expected);
        let mut highest = 0u64;
        let mut buf = String::new();
        for i in 0.. {
            buf.clear();
            if std::io::BufRead::read_line(&mut file, &mut buf).map_err(io_err)? == 0 {
                break;
            }
            // Only the last line can lack its newline: it is a torn tail.
            complete = buf.ends_with('\n');
            let is_torn_tail = !complete;
            let raw = buf.strip_suffix('\n').unwrap_or(&buf);
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let parsed = match serde_json::from_str::<Line>(raw) {
                Ok(l) => l,
                Err(_) if is_torn_tail => break,
                Err(_) => return Err(corrupt(i + 1, "not a keyring line")),
            };
            match parsed {
                Line::Meta(m) if i == 0 => {
                    if m.format != KEYRING_FORMAT {
                        return Err(corrupt(1, "unknown keyring format"));
                    }
                    if m.check != wrapper.check {
                        let hint = if m.previous_check.as_deref() == Some(wrapper.check.as_str()) {
                            ": this is the key used before the last rotation; configure the new key"
                        } else {
                            ": is keys.master_key_file (or the master-key credential) the key this data directory was created with?"
                        };
                        return Err(KeyringError::WrongMasterKey {
                            path: path.to_owned(),
                            hint,
                        });
                    }
                    meta = Some(m);
                }
                Line::Meta(_) => return Err(corrupt(i + 1, "a second meta line")),
                Line::Key(k) => {
                    if meta.is_none() {
                        return Err(corrupt(i + 1, "key line before the meta line"));
                    }
                    let entry = wrapper.open_line(&k).map_err(|why| corrupt(i + 1, why))?;
                    highest = highest.max(k.handle);
                    // The file is in handle order (appends only ever add the
                    // highest); a line repeated by hand replaces the earlier
                    // one, as a map of entries did.
                    view.add(&entry)?;
                }
            }
        }
        let mut meta = meta.ok_or_else(|| corrupt(1, "missing meta line"))?;
        meta.high_water = meta.high_water.max(highest);
        if view.current_handle(KeyOwner::Root).is_none()
            || view.current_handle(KeyOwner::System).is_none()
        {
            return Err(corrupt(0, "root or system key missing"));
        }
        let mut ring = Self {
            path: path.to_owned(),
            wrapper,
            meta,
            rng: SystemRandom::new(),
            staged: Vec::new(),
            mirror: None,
            mirror_error: None,
        };
        if !complete {
            // A torn last line (a crash or a full disk in the middle of an
            // append): its key was never acknowledged to anyone. Rewrite the
            // file without it now, or the next append would glue a new line
            // onto the fragment and turn it into a damaged middle line that
            // stops every later start.
            tracing::warn!(path = %path.display(), "the keyring ended in a torn line (an interrupted append); repairing it");
            ring.rewrite(view.records())?;
        }
        Ok((ring, view))
    }

    /// The highest handle this keyring ever issued.
    pub fn high_water(&self) -> u64 {
        self.meta.high_water
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new key for `owner` in generation `gen`, under the next handle.
    fn new_entry(&mut self, owner: KeyOwner, gen: u32) -> Result<KeyEntry, KeyringError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        self.rng
            .fill(secret.as_mut())
            .map_err(|_| KeyringError::Rng)?;
        self.meta.high_water += 1;
        Ok(KeyEntry {
            handle: self.meta.high_water,
            owner,
            gen,
            secret,
            retired: false,
        })
    }

    /// Adds a key for each owner in the current generation, staged: the
    /// returned lines go to the store's log (`Engine::stage_keys`), which
    /// makes them durable with the records sealed under them; the file gets
    /// them from [`Keyring::save_staged`]. The caller adds the returned keys
    /// to the view (before anything else takes the keyring's lock).
    pub(super) fn add_staged_many(
        &mut self,
        owners: &[KeyOwner],
    ) -> Result<(Vec<KeyEntry>, String), KeyringError> {
        let gen = self.meta.generation;
        let mut added = Vec::with_capacity(owners.len());
        let mut lines = String::new();
        for owner in owners {
            let entry = self.new_entry(*owner, gen)?;
            lines.push_str(&self.line_for(&self.wrapper, &entry.record())?);
            self.staged.push(entry.handle);
            added.push(entry);
        }
        Ok((added, lines))
    }

    /// The lines of the staged keys (wrapped afresh), for a new instance of
    /// the store's log after the last one failed with them in flight.
    pub(super) fn staged_lines(&self, view: &KeyView) -> Result<String, KeyringError> {
        let mut lines = String::new();
        for r in self.staged.iter().filter_map(|h| view.record(*h)) {
            lines.push_str(&self.line_for(&self.wrapper, &r)?);
        }
        Ok(lines)
    }

    /// Appends the staged keys to the file (and its copy) with one append
    /// and one fsync; from then on the store's log may be emptied. A key the
    /// view no longer holds (destroyed meanwhile) is not written.
    pub(super) fn save_staged(&mut self, view: &KeyView) -> Result<(), KeyringError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let lines = self.staged_lines(view)?;
        if !lines.is_empty() {
            fsio::append_durably(&self.path, lines.as_bytes()).map_err(|source| {
                KeyringError::Io {
                    path: self.path.clone(),
                    source,
                }
            })?;
            if self.mirror.is_some()
                && fsio::append_durably_existing(self.mirror_path(), lines.as_bytes()).is_err()
            {
                self.refresh_mirror();
            }
        }
        self.staged.clear();
        Ok(())
    }

    /// Whether keys are staged (their lines not in the file yet).
    pub(super) fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Right after [`Keyring::open`]: takes into `view` the keys whose lines
    /// the store's log held (`lines`, in log order) and the file lacks, and
    /// stages them. A line of a handle the file holds (saved before the log
    /// was emptied) or at most its high-water mark without holding it
    /// (destroyed by an erasure: its line left the log before the rewrite)
    /// is skipped before it is unwrapped. Returns how many were taken.
    pub(super) fn adopt(
        &mut self,
        view: &mut KeyView,
        lines: &[u8],
    ) -> Result<usize, KeyringError> {
        let floor = self.meta.high_water;
        let corrupt = |reason: &str| KeyringError::Corrupt {
            path: self.path.with_file_name("store/wal"),
            line: 0,
            reason: reason.to_owned(),
        };
        let mut adopted = 0;
        for raw in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(Line::Key(k)) = serde_json::from_slice::<Line>(raw) else {
                return Err(corrupt(
                    "a keys record of the log holds a line that is not a key",
                ));
            };
            if k.handle <= floor || view.has(k.handle) {
                continue;
            }
            view.add(&self.wrapper.open_line(&k).map_err(corrupt)?)?;
            self.meta.high_water = self.meta.high_water.max(k.handle);
            self.staged.push(k.handle);
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Rewrites the file without the given handles (those `view` holds);
    /// the caller then drops them from the view. Returns how many were
    /// present.
    pub(super) fn destroy(
        &mut self,
        view: &KeyView,
        handles: &[u64],
    ) -> Result<usize, KeyringError> {
        let present = handles.iter().filter(|h| view.has(**h)).count();
        if present == 0 {
            return Ok(0);
        }
        self.rewrite(view.records().filter(|r| !handles.contains(&r.handle)))?;
        Ok(present)
    }

    /// Rewrites the file with every key of `owner` retired (still opens,
    /// seals nothing new); the caller then marks them so in the view. False
    /// (and nothing written) when none is active.
    pub(super) fn retire_owner(
        &mut self,
        view: &KeyView,
        owner: KeyOwner,
    ) -> Result<bool, KeyringError> {
        if !view.records().any(|r| r.owner == owner && !r.retired) {
            return Ok(false);
        }
        self.rewrite(view.records().map(|mut r| {
            r.retired |= r.owner == owner;
            r
        }))?;
        Ok(true)
    }

    /// Replaces the file atomically with the meta line and `records`, each
    /// wrapped afresh under the current master key.
    pub(super) fn rewrite<'a>(
        &mut self,
        records: impl Iterator<Item = KeyRecord<'a>>,
    ) -> Result<(), KeyringError> {
        self.write_file(&self.wrapper, &self.meta, records)?;
        // Every caller writes the view's keys, the staged ones included.
        self.staged.clear();
        if self.mirror.is_some() {
            self.refresh_mirror();
        }
        Ok(())
    }

    /// Writes the file from `meta` and `records` under `wrapper`, streamed
    /// (no copy of the whole file in memory), replacing it atomically.
    fn write_file<'a>(
        &self,
        wrapper: &Wrapper,
        meta: &Meta,
        records: impl Iterator<Item = KeyRecord<'a>>,
    ) -> Result<(), KeyringError> {
        let meta_line = serde_json::to_string(&Line::Meta(meta.clone()))
            .map_err(|_| KeyringError::Internal("the meta line does not encode"))?;
        let mut failure = None;
        let written = fsio::replace_atomically_with(&self.path, |out| {
            out.write_all(meta_line.as_bytes())?;
            out.write_all(b"\n")?;
            for r in records {
                match self.line_for(wrapper, &r) {
                    Ok(line) => out.write_all(line.as_bytes())?,
                    Err(e) => {
                        failure = Some(e);
                        return Err(std::io::Error::other("a key could not be wrapped"));
                    }
                }
            }
            Ok(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        written.map_err(|source| KeyringError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// One key line: the key wrapped under `wrapper` with a fresh nonce.
    fn line_for(&self, wrapper: &Wrapper, r: &KeyRecord<'_>) -> Result<String, KeyringError> {
        let wrapped = wrapper.wrap(&self.rng, r.handle, r.owner, r.gen, r.secret)?;
        let line = KeyLine {
            handle: r.handle,
            owner: r.owner.label(),
            gen: r.gen,
            wrapped: hex::encode(wrapped),
            retired: r.retired,
        };
        let mut s = serde_json::to_string(&Line::Key(line))
            .map_err(|_| KeyringError::Internal("a key line does not encode"))?;
        s.push('\n');
        Ok(s)
    }

    fn mirror_path(&self) -> &Path {
        self.mirror.as_deref().unwrap_or(&self.path)
    }

    /// Copies the keyring file to the mirror (streamed). A failure never
    /// fails the operation that changed the keyring (that change is done and
    /// durable); it is recorded for `status` and logged, and retried on the
    /// next change.
    fn refresh_mirror(&mut self) {
        let Some(mirror) = self.mirror.clone() else {
            return;
        };
        let result = std::fs::File::open(&self.path).and_then(|mut from| {
            fsio::replace_atomically_with(&mirror, |out| std::io::copy(&mut from, out).map(drop))
        });
        self.mirror_error = match result {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(path = %mirror.display(), error = %e, "cannot update keys.keyring_copy");
                Some(format!("keys.keyring_copy {}: {e}", mirror.display()))
            }
        };
    }

    /// Copies the keyring to the mirror again (after a failed attempt).
    pub fn retry_mirror(&mut self) {
        if self.mirror.is_some() {
            self.refresh_mirror();
        }
    }

    /// Why the keyring copy is not current, if it is not.
    pub fn mirror_error(&self) -> Option<&str> {
        self.mirror_error.as_deref()
    }

    /// Keeps `path` identical to the keyring from now on (written at once,
    /// then on every change): the "latest keyring copy" a restore needs,
    /// kept beside the backups, so that no erasure can be undone by
    /// restoring with a stale copy.
    pub fn set_mirror(&mut self, path: &Path) -> Result<(), KeyringError> {
        // A copy of another keyring (other data, or the data before a
        // restore) is never overwritten: it may be the only current one.
        if let Ok(existing) = std::fs::read_to_string(path) {
            let ours = std::fs::read_to_string(&self.path).map_err(|source| KeyringError::Io {
                path: self.path.clone(),
                source,
            })?;
            let root_line = |text: &str| {
                text.lines()
                    .find(|l| l.contains("\"owner\":\"root\""))
                    .map(str::to_owned)
            };
            if root_line(&existing).is_some() && root_line(&existing) != root_line(&ours) {
                return Err(KeyringError::Corrupt {
                    path: path.to_owned(),
                    line: 0,
                    reason: "keys.keyring_copy holds the keyring of other data; refusing to overwrite it (move it aside if it is stale)".to_owned(),
                });
            }
        }
        self.mirror = Some(path.to_owned());
        self.refresh_mirror();
        match &self.mirror_error {
            Some(e) => Err(KeyringError::Corrupt {
                path: path.to_owned(),
                line: 0,
                reason: e.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Starts a rotation: every key is written re-wrapped under `new_mk`
    /// with a new generation of system and patient keys, and the file is
    /// replaced atomically. From here on only `new_mk` opens the keyring.
    /// Returns the new keys for the view (none if `new_mk` is already the
    /// current key). On failure the keyring is as it was.
    pub(super) fn begin_rotation(
        &mut self,
        view: &KeyView,
        new_mk: &MasterKey,
    ) -> Result<Vec<KeyEntry>, KeyringError> {
        let new_wrapper = Wrapper::new(new_mk)?;
        if new_wrapper.check == self.meta.check {
            // Already the current key: rotating to it again would only lose
            // the record of the previous one.
            return Ok(Vec::new());
        }
        let from = self.meta.generation;
        let to = from + 1;
        let mut added = Vec::new();
        for r in view.records() {
            if r.gen == from && r.owner != KeyOwner::Root && !r.retired {
                added.push(self.new_entry(r.owner, to)?);
            }
        }
        let mut meta = self.meta.clone();
        meta.previous_check = Some(std::mem::replace(
            &mut meta.check,
            new_wrapper.check.clone(),
        ));
        meta.generation = to;
        meta.rotating_from = Some(from);
        let written = self.write_file(
            &new_wrapper,
            &meta,
            view.records().chain(added.iter().map(KeyEntry::record)),
        );
        // On failure nothing changed on disk; the handles drawn stay issued
        // (never handed out again), which is all a failed append leaves too.
        written?;
        self.wrapper = new_wrapper;
        self.meta = meta;
        self.staged.clear();
        if self.mirror.is_some() {
            self.refresh_mirror();
        }
        Ok(added)
    }

    /// Ends a rotation once every record is sealed under the new generation:
    /// the old generation's keys are written retired (read-only, for older
    /// backups). Returns their handles, for the caller to mark in the view.
    pub(super) fn finish_rotation(&mut self, view: &KeyView) -> Result<Vec<u64>, KeyringError> {
        let Some(from) = self.meta.rotating_from else {
            return Ok(Vec::new());
        };
        let retiring = |r: &KeyRecord<'_>| r.gen <= from && r.owner != KeyOwner::Root && !r.retired;
        let retired: Vec<u64> = view.records().filter(retiring).map(|r| r.handle).collect();
        self.meta.rotating_from = None;
        self.rewrite(view.records().map(|mut r| {
            r.retired |= retiring(&r);
            r
        }))?;
        Ok(retired)
    }
}

impl KeyEntry {
    pub(super) fn record(&self) -> KeyRecord<'_> {
        KeyRecord {
            handle: self.handle,
            owner: self.owner,
            gen: self.gen,
            retired: self.retired,
            secret: &self.secret,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient(n: u8) -> KeyOwner {
        KeyOwner::Patient(PatientId([n; 16]))
    }

    /// A new keyring (in a temp dir) and its view, with a key for each of
    /// `patients`.
    fn ring_with(patients: &[KeyOwner]) -> (tempfile::TempDir, PathBuf, Keyring, KeyView) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        let (mut ring, mut view) = Keyring::create(&path, &MasterKey::from_bytes([7; 32])).unwrap();
        let (entries, _lines) = ring.add_staged_many(patients).unwrap();
        for entry in entries {
            view.add(&entry).unwrap();
        }
        ring.save_staged(&view).unwrap();
        (dir, path, ring, view)
    }

    fn handles(view: &KeyView) -> Vec<u64> {
        view.records().map(|r| r.handle).collect()
    }

    #[test]
    fn a_staged_key_reaches_the_file_only_when_saved() {
        let mk = MasterKey::from_bytes([7; 32]);
        let (_dir, path, mut ring, mut view) = ring_with(&[patient(1)]);
        let (entries, lines) = ring.add_staged_many(&[patient(2)]).unwrap();
        for entry in &entries {
            view.add(entry).unwrap();
        }
        let staged = entries[0].handle;
        let (_, reopened) = Keyring::open(&path, &mk).unwrap();
        assert!(!reopened.has(staged), "not in the file before save_staged");
        assert!(lines.contains(&format!("\"handle\":{staged},")));

        ring.save_staged(&view).unwrap();
        assert!(!ring.has_staged());
        let (_, reopened) = Keyring::open(&path, &mk).unwrap();
        assert_eq!(handles(&reopened), handles(&view));
        assert_eq!(secret_of(&reopened, staged), secret_of(&view, staged));
    }

    #[test]
    fn adopt_takes_only_the_keys_the_file_lacks_and_never_brings_back_a_destroyed_one() {
        let mk = MasterKey::from_bytes([7; 32]);
        let (_dir, path, mut ring, mut view) = ring_with(&[patient(1), patient(2)]);
        let erased = view.current_handle(patient(1)).unwrap();
        let saved = view.current_handle(patient(2)).unwrap();
        // The log as a crash leaves it: the lines of a key saved since, of
        // a key destroyed since (its line written before the erasure), and
        // of two keys only the log holds.
        let mut log = ring.staged_lines_for_test(&view, &[erased, saved]);
        assert_eq!(ring.destroy(&view, &[erased]).unwrap(), 1);
        view.remove(erased);
        let (entries, lines) = ring.add_staged_many(&[patient(3), patient(4)]).unwrap();
        log.push_str(&lines);
        log.push_str(&lines); // written twice (re-staged after a failed flush)
        let only_in_log: Vec<u64> = entries.iter().map(|e| e.handle).collect();
        let secrets: Vec<[u8; 32]> = entries.iter().map(|e| *e.secret).collect();
        drop(entries);

        let (mut ring, mut view) = Keyring::open(&path, &mk).unwrap();
        assert_eq!(ring.adopt(&mut view, log.as_bytes()).unwrap(), 2);
        assert!(
            !view.has(erased),
            "an erased patient's key came back from the log"
        );
        assert!(view.has(saved));
        for (h, secret) in only_in_log.iter().zip(&secrets) {
            assert_eq!(&secret_of(&view, *h), secret);
        }
        assert_eq!(view.current_handle(patient(3)), Some(only_in_log[0]));
        assert_eq!(ring.high_water(), only_in_log[1]);
        // Staged: the file gets them when saved, and a reopen needs no log.
        ring.save_staged(&view).unwrap();
        let (_, reopened) = Keyring::open(&path, &mk).unwrap();
        assert_eq!(handles(&reopened), handles(&view));

        let (mut ring, mut view) = Keyring::open(&path, &mk).unwrap();
        let err = ring.adopt(&mut view, b"{\"t\":\"meta\"}\n").unwrap_err();
        assert!(err.to_string().contains("not a key"), "{err}");
    }

    impl Keyring {
        fn staged_lines_for_test(&self, view: &KeyView, handles: &[u64]) -> String {
            handles
                .iter()
                .map(|h| {
                    self.line_for(&self.wrapper, &view.record(*h).unwrap())
                        .unwrap()
                })
                .collect()
        }
    }

    fn secret_of(view: &KeyView, handle: u64) -> [u8; 32] {
        let record = view.records().find(|r| r.handle == handle).unwrap();
        *record.secret
    }

    #[test]
    fn a_rewrite_wraps_every_kept_key_afresh_and_they_open_the_same() {
        let (_dir, path, mut ring, mut view) = ring_with(&[patient(1), patient(2)]);
        let mk = MasterKey::from_bytes([7; 32]);
        let kept = view.current_handle(patient(2)).unwrap();
        let gone = view.current_handle(patient(1)).unwrap();
        let before = std::fs::read_to_string(&path).unwrap();

        assert_eq!(ring.destroy(&view, &[gone]).unwrap(), 1);
        view.remove(gone);

        let after = std::fs::read_to_string(&path).unwrap();
        let line_of = |text: &str, handle: u64| {
            text.lines()
                .find(|l| l.contains(&format!("\"handle\":{handle},")))
                .map(str::to_owned)
        };
        assert!(line_of(&after, gone).is_none(), "the destroyed key is gone");
        assert_ne!(
            line_of(&before, kept),
            line_of(&after, kept),
            "wrapped afresh"
        );
        let (reopened, again) = Keyring::open(&path, &mk).unwrap();
        assert_eq!(secret_of(&again, kept), secret_of(&view, kept));
        assert_eq!(again.current_handle(patient(1)), None);
        assert_eq!(reopened.high_water(), ring.high_water());
        // The root is in the view (the file is written from it) but never
        // handed out as a data key.
        let root = again.current_handle(KeyOwner::Root).unwrap();
        assert!(again.in_use(root).is_none());
        assert!(again.in_use(kept).is_some());
    }

    #[test]
    fn a_failed_rotation_leaves_the_keyring_as_it_was() {
        let (dir, path, mut ring, view) = ring_with(&[patient(3)]);
        let mk = MasterKey::from_bytes([7; 32]);
        // The temp file cannot be created: a folder is in its way.
        std::fs::create_dir(dir.path().join("keyring.tmp")).unwrap();
        let new_mk = MasterKey::from_bytes([8; 32]);
        assert!(ring.begin_rotation(&view, &new_mk).is_err());
        std::fs::remove_dir(dir.path().join("keyring.tmp")).unwrap();
        assert_eq!(ring.meta.generation, 1);
        assert!(ring.meta.rotating_from.is_none());
        assert!(
            Keyring::open(&path, &mk).is_ok(),
            "still the old master key's"
        );
        let added = ring.begin_rotation(&view, &new_mk).unwrap();
        assert_eq!(added.len(), 2, "a new system and patient key");
        assert!(Keyring::open(&path, &new_mk).is_ok());
    }
}
