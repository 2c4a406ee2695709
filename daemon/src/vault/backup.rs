//! Backups: a consistent snapshot of the store, sealed with the backup key.
//!
//! The snapshot is taken under the commit lock, so it is a clean cut between
//! transactions (writers pause while the raw records are copied; readers
//! never do). Records stay sealed under their own data keys inside the
//! backup; the keyring is *not* in it. A restore therefore needs the master
//! key and the *current* keyring: a patient erased after the backup was
//! taken has no key there, and stays unreadable in the restored data.
//!
//! File format:
//!
//! ```text
//! CLINIC-RELAY-BACKUP 1\n
//! {"created":…,"records":N,"keyring_check":…}\n      (plain, authenticated)
//! nonce (12 bytes) ‖ AES-256-GCM(backup key, records) (associated data: the two lines above)
//! records: [tree name len u8][tree name][key len u32][key][value len u32][value] …
//! ```

use super::keyring::{KeyOwner, Keyring};
use super::store::{SledStore, Store, Tree, Write};
use super::{keyring_path, store_path, PurposeKeys, Vault, VaultError};
use crate::keys::MasterKey;
use jiff::Timestamp;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::Zeroizing;

const MAGIC: &[u8] = b"CLINIC-RELAY-BACKUP 1\n";
/// A backup larger than this is refused on restore (a clinic's store is far smaller).
pub const MAX_BACKUP_BYTES: usize = 8 * 1024 * 1024 * 1024;
const RESTORE_BATCH: usize = 2048;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupHeader {
    pub created: Timestamp,
    pub records: u64,
    pub keyring_check: String,
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

impl Vault {
    /// Takes a consistent snapshot and returns the sealed backup bytes.
    pub fn backup(&self, now: Timestamp) -> Result<Vec<u8>, BackupError> {
        let mut payload = Zeroizing::new(Vec::new());
        let mut records = 0u64;
        let audit_seq;
        {
            let chain = crate::sync::lock(&self.inner.commit_lock);
            audit_seq = chain.seq;
            for tree in Tree::ALL {
                for item in self.inner.store.scan_from(tree, &[]) {
                    let (k, v) = item.map_err(VaultError::from)?;
                    let name = tree.name().as_bytes();
                    payload.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
                    payload.extend_from_slice(name);
                    put_len(&mut payload, k.len());
                    payload.extend_from_slice(&k);
                    put_len(&mut payload, v.len());
                    payload.extend_from_slice(&v);
                    records += 1;
                }
            }
        }
        let check = crate::sync::lock(&self.inner.keyring).meta.check.clone();
        let header = BackupHeader {
            created: now,
            records,
            keyring_check: check,
            audit_seq,
        };
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&serde_json::to_vec(&header).map_err(|_| VaultError::Encode)?);
        out.push(b'\n');
        let mut nonce = [0u8; NONCE_LEN];
        self.inner
            .rng
            .fill(&mut nonce)
            .map_err(|_| VaultError::Rng)?;
        let mut body = payload.to_vec();
        aead(self.backup_key())?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(out.as_slice()),
                &mut body,
            )
            .map_err(|_| BackupError::Tampered)?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Restores `backup` into the empty directory `dir`, using the current
    /// keyring file and master key, then verifies it: the audit chain, every
    /// record opens (or belongs to an erased patient), and no erased
    /// patient's key is present.
    pub fn restore(
        backup: &[u8],
        dir: &Path,
        keyring_file: &Path,
        mk: &MasterKey,
    ) -> Result<(Vault, RestoreReport), BackupError> {
        let io = |context: String| move |source| BackupError::Io { context, source };
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(io(dir.display().to_string()))?
                .next()
                .is_some()
        {
            return Err(BackupError::NotEmpty(dir.to_owned()));
        }
        // Parse and open before touching the disk.
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
        let keyring = Keyring::open(keyring_file, mk).map_err(VaultError::from)?;
        let root = keyring
            .current(KeyOwner::Root)
            .map(|e| e.secret.clone())
            .ok_or(VaultError::Internal("the keyring has no root key"))?;
        let purpose = PurposeKeys::derive(&root)?;
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
        let payload = body.get(..payload_len).ok_or(BackupError::Damaged(0))?;

        std::fs::create_dir_all(dir).map_err(io(dir.display().to_string()))?;
        std::fs::copy(keyring_file, keyring_path(dir))
            .map_err(io("copying the keyring".to_owned()))?;
        let mut records = 0u64;
        {
            let store = SledStore::open(&store_path(dir)).map_err(VaultError::from)?;
            let mut batch = Vec::with_capacity(RESTORE_BATCH);
            let mut at = 0usize;
            while at < payload.len() {
                let (write, next) = read_record(payload, at).ok_or(BackupError::Damaged(at))?;
                batch.push(write);
                at = next;
                records += 1;
                if batch.len() == RESTORE_BATCH {
                    store.apply(&batch).map_err(VaultError::from)?;
                    batch.clear();
                }
            }
            store.apply(&batch).map_err(VaultError::from)?;
            store.flush().map_err(VaultError::from)?;
        }
        SledStore::wait_released(&store_path(dir));
        if records != header.records {
            return Err(BackupError::Damaged(payload.len()));
        }
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
            if erased_handles
                .iter()
                .any(|h| view.by_handle.contains_key(h))
            {
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
