//! Staff accounts of the console: name, role, an Argon2id password hash and
//! a TOTP secret (RFC 6238, SHA-1, 6 digits, 30 s), held in the vault's
//! `meta` tree under `staff/<name>`, sealed with the system key. Every
//! change is one writer job with its audit entry. The password and TOTP
//! checks (Argon2 is slow on purpose) run before the job, off the writer;
//! the job then counts the attempt: five wrong in a row lock the account
//! until an admin's `staff reset`.

use crate::audit::AuditDraft;
use crate::vault::{Owner, Tree, Txn, Vault, VaultError};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use jiff::Timestamp;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const PREFIX: &[u8] = b"staff/";
/// Wrong logins in a row that lock an account.
pub const MAX_FAILURES: u32 = 5;
const TOTP_STEP: i64 = 30;
const ISSUER: &str = "clinic-relay";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Desk,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Desk => "desk",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StaffError;
    fn from_str(s: &str) -> Result<Self, StaffError> {
        match s {
            "desk" => Ok(Role::Desk),
            "admin" => Ok(Role::Admin),
            _ => Err(StaffError::Role),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub role: Role,
    /// Argon2id, PHC string.
    password: String,
    /// The TOTP secret, hex.
    totp: String,
    pub disabled: bool,
    /// Wrong logins since the last good one.
    pub failures: u32,
    pub locked: bool,
    /// The TOTP time step of the last accepted code: a code is good once.
    last_step: i64,
    pub created: Timestamp,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("locked", &self.locked)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StaffError {
    #[error("staff names are 1 to 32 characters: lower-case letters, digits, '.', '_' or '-'")]
    Name,
    #[error("roles are desk or admin")]
    Role,
    #[error("a password needs at least 12 characters")]
    WeakPassword,
    #[error("there is already a staff account with this name")]
    Exists,
    #[error("there is no staff account with this name")]
    NotFound,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("no random numbers from the system")]
    Random,
    #[error("a staff account record does not decode")]
    Decode,
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// What `add` and `reset` show once: the password (generated unless given)
/// and the TOTP secret as an `otpauth://` URI for the authenticator app.
pub struct Enrolment {
    pub password: Zeroizing<String>,
    pub otpauth: Zeroizing<String>,
}

fn key(name: &str) -> Vec<u8> {
    [PREFIX, name.as_bytes()].concat()
}

pub fn check_name(name: &str) -> Result<(), StaffError> {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    if name.is_empty() || name.len() > 32 || !name.bytes().all(ok) {
        return Err(StaffError::Name);
    }
    Ok(())
}

fn random(n: usize) -> Result<Vec<u8>, StaffError> {
    let mut b = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| StaffError::Random)?;
    Ok(b)
}

/// 16 characters from an alphabet without look-alikes (~90 bits).
fn generate_password() -> Result<Zeroizing<String>, StaffError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes = Zeroizing::new(random(16)?);
    Ok(Zeroizing::new(
        bytes
            .iter()
            .map(|b| {
                let i = usize::from(*b) % ALPHABET.len();
                char::from(ALPHABET.get(i).copied().unwrap_or(b'x'))
            })
            .collect(),
    ))
}

/// Argon2id with 7 MiB, 5 passes, 1 lane: one of OWASP's equivalent
/// recommended settings (like 19 MiB × 2), chosen for the smaller memory:
/// the console verifies in one shared buffer (see `verify`).
const M_COST_KIB: u32 = 7 * 1024;
const T_COST: u32 = 5;
/// A stored hash that asks for more memory than this is not verified.
const MAX_M_COST_KIB: u32 = 64 * 1024;

fn argon(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash(password: &str) -> Result<String, StaffError> {
    let salt = SaltString::encode_b64(&random(16)?).map_err(|e| StaffError::Hash(e.to_string()))?;
    let params =
        Params::new(M_COST_KIB, T_COST, 1, None).map_err(|e| StaffError::Hash(e.to_string()))?;
    argon(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StaffError::Hash(e.to_string()))
}

fn totp(secret: &[u8]) -> Option<totp_rs::TOTP> {
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret.to_vec()).ok()
}

/// The code an authenticator shows at `now` for a secret (tests use it).
pub fn code_at(secret: &[u8], now: Timestamp) -> Option<String> {
    let t = u64::try_from(now.as_second()).ok()?;
    Some(totp(secret)?.generate(t))
}

/// The raw TOTP secret from an `otpauth://` URI (its base32 `secret=`).
pub fn secret_from_uri(uri: &str) -> Option<Vec<u8>> {
    let encoded = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))?;
    totp_rs::Secret::Encoded(encoded.to_owned()).to_bytes().ok()
}

/// New credentials: a password (the given one or a generated one), its
/// hash, a new TOTP secret and its URI.
fn credentials(
    name: &str,
    password: Option<Zeroizing<String>>,
) -> Result<(String, String, Enrolment), StaffError> {
    let password = match password {
        Some(p) if p.chars().count() < 12 => return Err(StaffError::WeakPassword),
        Some(p) => p,
        None => generate_password()?,
    };
    let hashed = hash(&password)?;
    let secret = Zeroizing::new(random(20)?);
    let encoded = totp_rs::Secret::Raw(secret.to_vec())
        .to_encoded()
        .to_string();
    let otpauth = Zeroizing::new(format!(
        "otpauth://totp/{ISSUER}:{name}?secret={encoded}&issuer={ISSUER}&algorithm=SHA1&digits=6&period=30"
    ));
    Ok((
        hashed,
        hex::encode(&*secret),
        Enrolment { password, otpauth },
    ))
}

pub fn load(vault: &Vault, name: &str) -> Result<Option<Account>, StaffError> {
    Ok(vault.get_json(Tree::Meta, &key(name))?)
}

/// Every account, by name.
pub fn list(vault: &Vault) -> Result<Vec<Account>, StaffError> {
    let mut all = Vec::new();
    for r in vault.scan_prefix(Tree::Meta, PREFIX) {
        let (_, bytes) = r?;
        all.push(serde_json::from_slice(&bytes).map_err(|_| StaffError::Decode)?);
    }
    Ok(all)
}

fn stage(txn: &mut Txn, a: &Account, actor: &str, action: &str) -> Result<(), StaffError> {
    txn.put_json(Tree::Meta, key(&a.name), Owner::System, a)?;
    txn.audit(
        AuditDraft::new(actor, action)
            .detail("staff", a.name.clone())
            .detail("role", a.role.name()),
    );
    Ok(())
}

/// `staff add`: a new account; the enrolment is shown once.
pub fn add(
    vault: &Vault,
    name: &str,
    role: Role,
    password: Option<Zeroizing<String>>,
    actor: &str,
    now: Timestamp,
) -> Result<Enrolment, StaffError> {
    check_name(name)?;
    let (password_hash, totp_hex, enrolment) = credentials(name, password)?;
    let (name, actor) = (name.to_owned(), actor.to_owned());
    vault.write_blocking::<_, StaffError, _>(move |v| {
        if load(v, &name)?.is_some() {
            return Err(StaffError::Exists);
        }
        let a = Account {
            name,
            role,
            password: password_hash,
            totp: totp_hex,
            disabled: false,
            failures: 0,
            locked: false,
            last_step: 0,
            created: now,
        };
        let mut txn = Txn::new(now);
        stage(&mut txn, &a, &actor, "staff.add")?;
        Ok((txn, ()))
    })?;
    Ok(enrolment)
}

/// `staff disable`: no more logins (a running console also ends the
/// account's sessions at their next request).
pub fn disable(vault: &Vault, name: &str, actor: &str, now: Timestamp) -> Result<(), StaffError> {
    let (name, actor) = (name.to_owned(), actor.to_owned());
    vault.write_blocking::<_, StaffError, _>(move |v| {
        let mut a = load(v, &name)?.ok_or(StaffError::NotFound)?;
        a.disabled = true;
        let mut txn = Txn::new(now);
        stage(&mut txn, &a, &actor, "staff.disable")?;
        super::session_store::stage_end_of(v, &mut txn, &a.name)?;
        Ok((txn, ()))
    })?;
    Ok(())
}

/// `staff reset`: new password and TOTP secret, unlocked and enabled, the
/// role changed if one is given.
pub fn reset(
    vault: &Vault,
    name: &str,
    role: Option<Role>,
    password: Option<Zeroizing<String>>,
    actor: &str,
    now: Timestamp,
) -> Result<Enrolment, StaffError> {
    check_name(name)?;
    let (password_hash, totp_hex, enrolment) = credentials(name, password)?;
    let (name, actor) = (name.to_owned(), actor.to_owned());
    vault.write_blocking::<_, StaffError, _>(move |v| {
        let mut a = load(v, &name)?.ok_or(StaffError::NotFound)?;
        a.password = password_hash;
        a.totp = totp_hex;
        a.disabled = false;
        a.locked = false;
        a.failures = 0;
        a.last_step = 0;
        a.role = role.unwrap_or(a.role);
        let mut txn = Txn::new(now);
        stage(&mut txn, &a, &actor, "staff.reset")?;
        super::session_store::stage_end_of(v, &mut txn, &a.name)?;
        Ok((txn, ()))
    })?;
    Ok(enrolment)
}

/// What the slow checks found, before the attempt is counted.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    password: bool,
    /// The TOTP time step the code matched (now, or one step either side).
    step: Option<i64>,
}

/// Blocks (1 KiB each) in a buffer glibc always maps on its own: above
/// its 32 MiB ceiling for the dynamic mmap threshold (see `verify`).
const ALWAYS_MAPPED_BLOCKS: usize = 33 * 1024;

/// Checks `password` against a stored PHC string, one sign-in at a time
/// (under a lock: sign-ins are few and each takes tens of milliseconds).
///
/// The Argon2 memory (7 MiB) is a fresh buffer per check that goes back to
/// the system when the check ends, so that the console does not keep it
/// for the daemon's life. Why the odd capacity: glibc's malloc hands large
/// blocks out of `mmap` and returns them with `munmap` on free, but after
/// such a free it raises its threshold to that size, and later blocks of
/// the same size come from a heap arena that keeps them (Argon2's own
/// verify, which allocates per call, grew the daemon by megabytes per
/// sign-in that way). A capacity above glibc's ceiling for that threshold
/// (32 MiB on 64-bit) is always mapped and always unmapped; only the pages
/// Argon2 touches (its 7 MiB) are ever resident.
fn verify(stored: &str, password: &[u8]) -> bool {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let Ok(h) = PasswordHash::new(stored) else {
        return false;
    };
    if h.algorithm.as_str() != "argon2id" {
        return false;
    }
    let Ok(params) = Params::try_from(&h) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    let _turn = crate::sync::lock(&ONE_AT_A_TIME);
    let blocks = params.block_count();
    let mut memory: Vec<Block> = Vec::with_capacity(blocks.max(ALWAYS_MAPPED_BLOCKS));
    memory.resize(blocks, Block::default());
    argon(params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..])
        .is_ok()
        && same(&out, expected.as_bytes())
}

/// A hash of a password nobody has, so an unknown name costs the same time
/// as a known one (made once, at the first login).
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("not a password of anyone").unwrap_or_default())
}

/// The slow part of a login (Argon2, ~tens of ms): run it off the runtime.
pub fn check(account: Option<&Account>, password: &str, code: &str, now: Timestamp) -> Checked {
    let stored = match account {
        Some(a) => a.password.as_str(),
        None => dummy_hash(),
    };
    let password_ok = verify(stored, password.as_bytes());
    let step = account.and_then(|a| {
        let secret = Zeroizing::new(hex::decode(&a.totp).ok()?);
        let t = totp(&secret)?;
        let code = code.trim();
        let now_step = now.as_second().div_euclid(TOTP_STEP);
        [now_step - 1, now_step, now_step + 1]
            .into_iter()
            .find(|s| {
                u64::try_from(s * TOTP_STEP)
                    .is_ok_and(|at| same(t.generate(at).as_bytes(), code.as_bytes()))
            })
    });
    Checked {
        password: account.is_some() && password_ok,
        step,
    }
}

/// Equal without an early exit (the time does not tell how many leading
/// bytes matched).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How a login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Ok(Role),
    /// Wrong name, password or code (the page does not say which).
    Wrong,
    /// Locked after too many wrong attempts, or disabled.
    Locked,
}

/// Counts the attempt on the writer: a good one clears the count and uses
/// up its TOTP step; a wrong one counts, and the fifth in a row locks.
pub async fn record(
    vault: &Vault,
    name: &str,
    checked: Checked,
    now: Timestamp,
) -> Result<Login, StaffError> {
    let name = name.to_owned();
    let done = vault
        .write::<_, StaffError, _>(move |v| {
            let mut txn = Txn::new(now);
            let Some(mut a) = load(v, &name)? else {
                return Ok((txn, Login::Wrong));
            };
            if a.disabled || a.locked {
                return Ok((txn, Login::Locked));
            }
            let actor = format!("staff:{}", a.name);
            match checked.step {
                Some(step) if checked.password && step > a.last_step => {
                    a.failures = 0;
                    a.last_step = step;
                    let role = a.role;
                    stage(&mut txn, &a, &actor, "staff.login")?;
                    Ok((txn, Login::Ok(role)))
                }
                _ => {
                    a.failures += 1;
                    a.locked = a.failures >= MAX_FAILURES;
                    let action = if a.locked {
                        "staff.locked"
                    } else {
                        "staff.login-failed"
                    };
                    let outcome = if a.locked {
                        Login::Locked
                    } else {
                        Login::Wrong
                    };
                    stage(&mut txn, &a, &actor, action)?;
                    if a.locked {
                        super::session_store::stage_end_of(v, &mut txn, &a.name)?;
                    }
                    Ok((txn, outcome))
                }
            }
        })
        .await?;
    Ok(done.value)
}
