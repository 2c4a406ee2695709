//! Console sessions as sealed records in the vault (`meta` tree, key
//! `session/<SHA-256 of the id>`, sealed with the system key), so that a
//! restart of the daemon (an upgrade, a config change) does not sign the
//! front desk out in the middle of a reply, and an offline `staff disable`
//! or `reset` ends the account's sessions in the same commit.
//!
//! The map in `session` stays the one that is read on every request; this
//! module writes through to the vault: at sign-in (before the cookie is
//! sent), at sign-out, and when a session's idle clock has moved on by
//! [`SEEN_EVERY`] since it was last stored. A session restored after a
//! restart may therefore end up to that much earlier than it would have,
//! never later.

use super::staff::Role;
use crate::audit::AuditDraft;
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

const PREFIX: &[u8] = b"session/";

/// How far a session's last activity may run ahead of its stored copy: one
/// write per active session and minute at most.
pub const SEEN_EVERY: SignedDuration = SignedDuration::from_mins(1);

/// What the vault keeps of a session (the id itself never: only its digest
/// is the key).
#[derive(Clone, Serialize, Deserialize)]
pub struct Stored {
    pub name: String,
    pub role: Role,
    pub csrf: String,
    pub created: Timestamp,
    pub last_seen: Timestamp,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn key(digest: &[u8; 32]) -> Vec<u8> {
    [PREFIX, hex::encode(digest).as_bytes()].concat()
}

/// Every stored session, by digest (an unreadable record is skipped: it
/// can only end a session, never open one).
pub fn load_all(vault: &Vault) -> VaultResult<Vec<([u8; 32], Stored)>> {
    let mut all = Vec::new();
    for r in vault.scan_prefix(Tree::Meta, PREFIX) {
        let (k, bytes) = r?;
        let digest = k
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok());
        if let (Some(d), Ok(s)) = (digest, serde_json::from_slice::<Stored>(&bytes)) {
            all.push((d, s));
        }
    }
    Ok(all)
}

/// Stores `put` (a new or refreshed session) and removes `gone` (ended or
/// expired ones) in one commit. `audit`: the entry to write with it.
pub async fn write(
    vault: &Vault,
    put: Option<([u8; 32], Stored)>,
    gone: Vec<[u8; 32]>,
    audit: Option<AuditDraft>,
    now: Timestamp,
) -> Result<(), VaultError> {
    if put.is_none() && gone.is_empty() && audit.is_none() {
        return Ok(());
    }
    vault
        .write::<_, VaultError, _>(move |_| {
            let mut txn = Txn::new(now);
            if let Some((d, s)) = put {
                txn.put_json(Tree::Meta, key(&d), Owner::System, &s)?;
            }
            for d in gone {
                txn.remove(Tree::Meta, key(&d));
            }
            if let Some(a) = audit {
                txn.audit(a);
            }
            Ok((txn, ()))
        })
        .await?;
    Ok(())
}

/// Stages the end of every stored session of `name` (an account disabled,
/// locked or reset: in the same commit as that change).
pub fn stage_end_of(vault: &Vault, txn: &mut Txn, name: &str) -> VaultResult<()> {
    for (d, s) in load_all(vault)? {
        if s.name == name {
            txn.remove(Tree::Meta, key(&d));
        }
    }
    Ok(())
}
