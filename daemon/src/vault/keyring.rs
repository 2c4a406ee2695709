//! The keyring: every data key the vault uses, wrapped by a key derived from
//! the master key, in one small file *beside* the sled folder.
//!
//! Why not in sled: sled is log-structured, so a deleted value lingers in old
//! segments until compaction, and every copy of the folder keeps it. Patient
//! keys live here instead: appended (and fsynced) when a patient is created,
//! and the file is rewritten atomically without the erased entries when a
//! patient is erased. A copy of the sled folder made before an erasure,
//! opened with the current keyring, therefore cannot reveal that patient.
//!
//! The file is JSON lines: one `meta` line, then one `key` line per key.
//! A torn last line (a crash during an append) is ignored: its key was never
//! used, because nothing is sealed under a key before its line is fsynced.

use super::fsio;
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

/// A data key, unwrapped: what the vault's key view is built from. The
/// keyring itself keeps only the wrapped form (see [`Slot`]).
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

/// The wrapped form of a key: nonce, the 32 sealed bytes, the tag.
const WRAPPED_LEN: usize = NONCE_LEN + 32 + 16;

/// One key as the keyring holds it in memory: fixed size, the wrapped form
/// only, in a vector sorted by handle. With 100,000 patients a map of
/// entries each carrying the secret and its wrapped form as a hex string
/// held some 30 MB; this is under 10 MB, and the only unwrapped copy of a
/// secret is the vault's key view's.
struct Slot {
    handle: u64,
    owner: KeyOwner,
    gen: u32,
    retired: bool,
    wrapped: [u8; WRAPPED_LEN],
}

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

    fn unwrap_slot(&self, s: &Slot) -> Option<Zeroizing<[u8; 32]>> {
        self.unwrap(s.handle, s.owner, s.gen, &s.wrapped)
    }
}

/// The keyring file and its wrapped contents. The vault keeps it behind a
/// mutex: every change is a file operation that must be ordered.
pub struct Keyring {
    path: PathBuf,
    wrapper: Wrapper,
    pub meta: Meta,
    /// Sorted by handle (new handles are always the highest).
    entries: Vec<Slot>,
    rng: SystemRandom,
    /// A copy kept in step with the file (see `set_mirror`).
    mirror: Option<PathBuf>,
    mirror_error: Option<String>,
}

impl Keyring {
    pub fn exists(path: &Path) -> bool {
        path.exists()
    }

    /// Creates a new keyring with a fresh root and system key.
    pub fn create(path: &Path, mk: &MasterKey) -> Result<Self, KeyringError> {
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
            entries: Vec::new(),
            rng: SystemRandom::new(),
            mirror: None,
            mirror_error: None,
        };
        ring.insert_new(KeyOwner::Root, 0)?;
        ring.insert_new(KeyOwner::System, 1)?;
        ring.rewrite()?;
        Ok(ring)
    }

    pub fn open(path: &Path, mk: &MasterKey) -> Result<Self, KeyringError> {
        let io_err = |source| KeyringError::Io {
            path: path.to_owned(),
            source,
        };
        // Read line by line: with 100,000 patients the file is over 20 MB,
        // and holding it whole would raise the daemon's peak memory by as much.
        let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io_err)?);
        let wrapper = Wrapper::new(mk)?;
        let corrupt = |line: usize, reason: &str| KeyringError::Corrupt {
            path: path.to_owned(),
            line,
            reason: reason.to_owned(),
        };
        let mut complete = false;
        let mut meta: Option<Meta> = None;
        let mut entries: Vec<Slot> = Vec::new();
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
                    let owner = KeyOwner::parse(&k.owner)
                        .ok_or_else(|| corrupt(i + 1, "unknown key owner"))?;
                    let mut wrapped = [0u8; WRAPPED_LEN];
                    hex::decode_to_slice(&k.wrapped, &mut wrapped)
                        .map_err(|_| corrupt(i + 1, "key does not unwrap (modified?)"))?;
                    // Checked now, so that a damaged line is named at open;
                    // the secret itself is unwrapped again by the key view.
                    wrapper
                        .unwrap(k.handle, owner, k.gen, &wrapped)
                        .ok_or_else(|| corrupt(i + 1, "key does not unwrap (modified?)"))?;
                    entries.push(Slot {
                        handle: k.handle,
                        owner,
                        gen: k.gen,
                        retired: k.retired,
                        wrapped,
                    });
                }
            }
        }
        let meta = meta.ok_or_else(|| corrupt(1, "missing meta line"))?;
        // The file is in handle order (appends only ever add the highest),
        // but a line repeated by hand would have replaced the earlier one
        // in a map: keep the last of equal handles, as that did.
        entries.reverse();
        entries.sort_by_key(|e| e.handle);
        entries.dedup_by_key(|e| e.handle);
        entries.shrink_to_fit();
        let ring = Self {
            path: path.to_owned(),
            wrapper,
            meta,
            entries,
            rng: SystemRandom::new(),
            mirror: None,
            mirror_error: None,
        };
        if ring.current(KeyOwner::Root).is_none() || ring.current(KeyOwner::System).is_none() {
            return Err(corrupt(0, "root or system key missing"));
        }
        let mut ring = ring;
        if !complete {
            // A torn last line (a crash or a full disk in the middle of an
            // append): its key was never acknowledged to anyone. Rewrite the
            // file without it now, or the next append would glue a new line
            // onto the fragment and turn it into a damaged middle line that
            // stops every later start.
            tracing::warn!(path = %path.display(), "the keyring ended in a torn line (an interrupted append); repairing it");
            ring.rewrite()?;
        }
        Ok(ring)
    }

    /// The highest handle this keyring ever issued.
    pub fn high_water(&self) -> u64 {
        self.meta
            .high_water
            .max(self.entries.last().map_or(0, |e| e.handle))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key, unwrapped (the key view is built from these).
    pub fn unwrapped(&self) -> impl Iterator<Item = Result<KeyEntry, KeyringError>> + '_ {
        self.entries.iter().map(|s| self.entry_of(s))
    }

    fn entry_of(&self, s: &Slot) -> Result<KeyEntry, KeyringError> {
        let secret = self
            .wrapper
            .unwrap_slot(s)
            .ok_or(KeyringError::Internal("a key no longer unwraps"))?;
        Ok(KeyEntry {
            handle: s.handle,
            owner: s.owner,
            gen: s.gen,
            secret,
            retired: s.retired,
        })
    }

    /// The newest key of an owner (highest generation, then highest handle).
    fn current(&self, owner: KeyOwner) -> Option<&Slot> {
        self.entries
            .iter()
            .filter(|e| e.owner == owner && !e.retired)
            .max_by_key(|e| (e.gen, e.handle))
    }

    /// The root key's secret, from which the purpose keys are derived.
    pub fn root_secret(&self) -> Result<Zeroizing<[u8; 32]>, KeyringError> {
        let root = self
            .current(KeyOwner::Root)
            .ok_or(KeyringError::Internal("the keyring has no root key"))?;
        Ok(self.entry_of(root)?.secret)
    }

    fn next_handle(&self) -> u64 {
        self.high_water() + 1
    }

    fn insert_new(
        &mut self,
        owner: KeyOwner,
        gen: u32,
    ) -> Result<(KeyEntry, String), KeyringError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        self.rng
            .fill(secret.as_mut())
            .map_err(|_| KeyringError::Rng)?;
        let handle = self.next_handle();
        let wrapped = self.wrapper.wrap(&self.rng, handle, owner, gen, &secret)?;
        let slot = Slot {
            handle,
            owner,
            gen,
            retired: false,
            wrapped,
        };
        let line = line_for(&slot);
        // The highest handle: the vector stays sorted.
        self.entries.push(slot);
        Ok((
            KeyEntry {
                handle,
                owner,
                gen,
                secret,
                retired: false,
            },
            line,
        ))
    }

    /// Adds a key for each owner in the current generation and makes them
    /// all durable with **one** append and one fsync: patients seen for the
    /// first time by several messages at once share the wait instead of
    /// queueing one fsync each behind the keyring's lock. All or none: on a
    /// failed append none of them exists, on disk or here.
    pub fn add_durable_many(&mut self, owners: &[KeyOwner]) -> Result<Vec<KeyEntry>, KeyringError> {
        let gen = self.meta.generation;
        let before = self.entries.len();
        let mut added = Vec::with_capacity(owners.len());
        let mut lines = String::new();
        for owner in owners {
            match self.insert_new(*owner, gen) {
                Ok((entry, line)) => {
                    lines.push_str(&line);
                    added.push(entry);
                }
                Err(e) => {
                    self.forget_since(before);
                    return Err(e);
                }
            }
        }
        if added.is_empty() {
            return Ok(added);
        }
        if let Err(source) = fsio::append_durably(&self.path, lines.as_bytes()) {
            // The append was undone on disk: undo it here too, or a later
            // rewrite would store keys nothing ever used. Their handles are
            // not handed out again.
            self.forget_since(before);
            return Err(KeyringError::Io {
                path: self.path.clone(),
                source,
            });
        }
        if self.mirror.is_some()
            && fsio::append_durably_existing(self.mirror_path(), lines.as_bytes()).is_err()
        {
            self.refresh_mirror();
        }
        Ok(added)
    }

    /// Drops the keys inserted after the first `len` (new keys take the
    /// highest handles, so they are the vector's tail) that were never made
    /// durable; their handles stay used (the high-water mark covers them).
    fn forget_since(&mut self, len: usize) {
        self.meta.high_water = self.high_water();
        self.entries.truncate(len);
    }

    /// Drops the given handles (those still present) and rewrites the file
    /// atomically. Returns how many were present.
    pub fn destroy(&mut self, handles: &[u64]) -> Result<usize, KeyringError> {
        let present: Vec<u64> = handles
            .iter()
            .copied()
            .filter(|h| self.entries.binary_search_by_key(h, |e| e.handle).is_ok())
            .collect();
        if present.is_empty() {
            return Ok(0);
        }
        self.meta.high_water = self.high_water();
        self.entries.retain(|e| !present.contains(&e.handle));
        self.rewrite()?;
        Ok(present.len())
    }

    /// Marks every key of `owner` retired (still opens, seals nothing new)
    /// and rewrites the file. A no-op when none is active.
    pub fn retire_owner(&mut self, owner: KeyOwner) -> Result<(), KeyringError> {
        let mut changed = false;
        for e in &mut self.entries {
            if e.owner == owner && !e.retired {
                e.retired = true;
                changed = true;
            }
        }
        if changed {
            self.rewrite()?;
        }
        Ok(())
    }

    /// The handles of every key a patient has.
    pub fn handles_of(&self, patient: PatientId) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|e| e.owner == KeyOwner::Patient(patient))
            .map(|e| e.handle)
            .collect()
    }

    /// Serialises the whole keyring and replaces the file atomically.
    pub fn rewrite(&mut self) -> Result<(), KeyringError> {
        let mut out = serde_json::to_string(&Line::Meta(self.meta.clone()))
            .map_err(|_| KeyringError::Internal("the meta line does not encode"))?;
        out.push('\n');
        for e in &self.entries {
            out.push_str(&line_for(e));
        }
        fsio::replace_atomically(&self.path, out.as_bytes()).map_err(|source| {
            KeyringError::Io {
                path: self.path.clone(),
                source,
            }
        })?;
        if self.mirror.is_some() {
            self.refresh_mirror();
        }
        Ok(())
    }

    fn mirror_path(&self) -> &Path {
        self.mirror.as_deref().unwrap_or(&self.path)
    }

    /// Copies the keyring file to the mirror. A failure never fails the
    /// operation that changed the keyring (that change is done and durable);
    /// it is recorded for `status` and logged, and retried on the next change.
    fn refresh_mirror(&mut self) {
        let Some(mirror) = self.mirror.clone() else {
            return;
        };
        let result =
            std::fs::read(&self.path).and_then(|bytes| fsio::replace_atomically(&mirror, &bytes));
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

    /// Starts a rotation: every key is re-wrapped under `new_mk`, a new
    /// generation of system and patient keys is added, and the file is
    /// replaced atomically. From here on only `new_mk` opens the keyring.
    pub fn begin_rotation(&mut self, new_mk: &MasterKey) -> Result<(), KeyringError> {
        let new_wrapper = Wrapper::new(new_mk)?;
        if new_wrapper.check == self.meta.check {
            // Already the current key: rotating to it again would only lose
            // the record of the previous one.
            return Ok(());
        }
        let from = self.meta.generation;
        let to = from + 1;
        let owners: Vec<KeyOwner> = self
            .entries
            .iter()
            .filter(|e| e.gen == from && e.owner != KeyOwner::Root && !e.retired)
            .map(|e| e.owner)
            .collect();
        // Every key re-wrapped under the new master key before anything
        // changes, so that a failure leaves the keyring as it was.
        let mut rewrapped = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let secret = self
                .wrapper
                .unwrap_slot(e)
                .ok_or(KeyringError::Internal("a key no longer unwraps"))?;
            rewrapped.push(new_wrapper.wrap(&self.rng, e.handle, e.owner, e.gen, &secret)?);
        }
        self.meta.previous_check = Some(std::mem::replace(
            &mut self.meta.check,
            new_wrapper.check.clone(),
        ));
        self.wrapper = new_wrapper;
        self.meta.generation = to;
        self.meta.rotating_from = Some(from);
        for (e, wrapped) in self.entries.iter_mut().zip(rewrapped) {
            e.wrapped = wrapped;
        }
        for owner in owners {
            self.insert_new(owner, to)?;
        }
        self.rewrite()
    }

    /// Ends a rotation once every record is sealed under the new generation:
    /// the old generation's keys are marked retired (read-only, for older
    /// backups). Returns their handles.
    pub fn finish_rotation(&mut self) -> Result<Vec<u64>, KeyringError> {
        let Some(from) = self.meta.rotating_from else {
            return Ok(Vec::new());
        };
        let mut retired = Vec::new();
        for e in &mut self.entries {
            if e.gen <= from && e.owner != KeyOwner::Root && !e.retired {
                e.retired = true;
                retired.push(e.handle);
            }
        }
        self.meta.rotating_from = None;
        self.rewrite()?;
        Ok(retired)
    }
}

fn line_for(e: &Slot) -> String {
    let line = KeyLine {
        handle: e.handle,
        owner: e.owner.label(),
        gen: e.gen,
        wrapped: hex::encode(e.wrapped),
        retired: e.retired,
    };
    let mut s = serde_json::to_string(&Line::Key(line)).unwrap_or_default();
    s.push('\n');
    s
}
