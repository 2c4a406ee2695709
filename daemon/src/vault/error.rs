//! The vault's typed errors. Messages name trees, handles and positions,
//! never values: a record's content may be PHI.

use super::*;

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
    pub(super) fn decode(tree: Tree, e: &serde_json::Error) -> Self {
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
