//! The master key: where it comes from, how it is checked, how a new one is
//! made. The master key never touches the data directory; it only unwraps the
//! keyring that sits there (see `vault::keyring`).

use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const MASTER_KEY_LEN: usize = 32;
/// The name systemd gives the credential (`LoadCredential=master-key:…`).
pub const CREDENTIAL_NAME: &str = "master-key";
/// A key file is tiny; anything larger is not a key file.
const MAX_KEY_FILE_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the master key file {path}: {source}. Check keys.master_key_file, or create a key with `clinic-relay keys init --out PATH`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the master key file {path} is readable or writable by group or others (mode {mode:04o}). Fix: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the master key file {path} does not hold a key: expected 32 raw bytes or 64 hex digits. Create one with `clinic-relay keys init --out PATH`")]
    Format { path: PathBuf },
    #[error("refusing to overwrite {path}: an existing key is never replaced. Choose another --out path")]
    Exists { path: PathBuf },
    #[error("cannot write the key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no master key: set keys.master_key_file in the config, or give the service the systemd credential `{CREDENTIAL_NAME}` (LoadCredential=/LoadCredentialEncrypted=)")]
    Missing,
    #[error("the system random number generator failed")]
    Rng,
}

/// 32 secret bytes. `Debug` prints nothing of them and the memory is wiped on drop.
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| KeyError::Rng)?;
        Ok(Self(bytes))
    }

    pub(crate) fn expose(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }

    /// Reads a key file: 32 raw bytes, or 64 hex digits (surrounding white
    /// space allowed). Refuses files that group or others may read or write.
    pub fn load_file(path: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        if !meta.is_file() || meta.size() > MAX_KEY_FILE_BYTES {
            return Err(KeyError::Format {
                path: path.to_owned(),
            });
        }
        let mut raw = Zeroizing::new(Vec::with_capacity(128));
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_end(&mut raw)
            .map_err(read_err)?;
        Self::parse(&raw).ok_or_else(|| KeyError::Format {
            path: path.to_owned(),
        })
    }

    fn parse(raw: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        if raw.len() == MASTER_KEY_LEN {
            key.copy_from_slice(raw);
            return Some(Self(key));
        }
        let text = std::str::from_utf8(raw).ok()?.trim();
        hex::decode_to_slice(text, key.as_mut()).ok()?;
        Some(Self(key))
    }

    /// Writes this key as hex to a new file with mode 0600. Never overwrites.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let write_err = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists {
                        path: path.to_owned(),
                    }
                } else {
                    write_err(e)
                }
            })?;
        // The umask may have narrowed the mode further; it can never widen
        // it, but set it explicitly so the result does not depend on it.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
        let mut text = Zeroizing::new(hex::encode(self.0.as_ref()));
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        crate::vault::fsio::sync_parent_dir(path).map_err(write_err)?;
        Ok(())
    }
}

/// Where the running service finds its master key: the systemd credential
/// wins over the config file, so that a TPM-bound credential cannot be
/// shadowed by a stray file.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, KeyError> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let candidate = Path::new(&dir).join(CREDENTIAL_NAME);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    configured.map(Path::to_owned).ok_or(KeyError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_and_hex() {
        assert!(MasterKey::parse(&[7u8; 32]).is_some());
        let hex = format!("  {}\n", "ab".repeat(32));
        assert_eq!(
            MasterKey::parse(hex.as_bytes()).unwrap().expose(),
            &[0xab; 32]
        );
        assert!(MasterKey::parse(b"too short").is_none());
        assert!(MasterKey::parse("zz".repeat(32).as_bytes()).is_none());
    }

    #[test]
    fn debug_prints_no_key_material() {
        let k = MasterKey::from_bytes([0x5a; 32]);
        assert_eq!(format!("{k:?}"), "MasterKey([redacted])");
    }
}
