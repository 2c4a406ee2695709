//! The sealed-value format. Every value the vault stores is
//!
//! ```text
//! [format: u8 = 1][key handle: u64 BE][nonce: 12 bytes][AES-256-GCM ciphertext + 16-byte tag]
//! ```
//!
//! and the associated data binds it to its place: format, handle, tree name
//! and record key. A value copied to another record, another tree or
//! relabelled with another key handle fails to open.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

pub const FORMAT_V1: u8 = 1;
const HANDLE_LEN: usize = 8;
pub const HEADER_LEN: usize = 1 + HANDLE_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value is truncated ({len} bytes)")]
    Truncated { len: usize },
    #[error("sealed value has unknown format {0}")]
    UnsupportedFormat(u8),
    #[error("sealed value failed authentication")]
    Tampered,
    #[error("the system random number generator failed")]
    Rng,
}

/// A data key ready for use, with the handle that names it in headers.
pub struct DataKey {
    pub handle: u64,
    key: LessSafeKey,
}

impl DataKey {
    pub fn new(handle: u64, bytes: &[u8; 32]) -> Result<Self, SealError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::Rng)?;
        Ok(Self {
            handle,
            key: LessSafeKey::new(unbound),
        })
    }
}

fn associated_data(handle: u64, tree: &str, record_key: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(1 + HANDLE_LEN + 1 + tree.len() + record_key.len());
    ad.push(FORMAT_V1);
    ad.extend_from_slice(&handle.to_be_bytes());
    // Length-prefix the tree name so ("ab", "c…") and ("a", "bc…") differ.
    ad.push(u8::try_from(tree.len()).unwrap_or(u8::MAX));
    ad.extend_from_slice(tree.as_bytes());
    ad.extend_from_slice(record_key);
    ad
}

/// How many nonces one `getrandom` call fills.
const NONCES_PER_DRAW: usize = 64;

/// Random nonces drawn from the system generator in blocks: a message seals
/// about a dozen values, and one system call each was a measurable share of
/// the ingest path. Every nonce is handed out once (the block is consumed
/// under the lock), so they are exactly as random and unique as drawn one by
/// one.
pub struct NoncePool {
    rng: SystemRandom,
    block: std::sync::Mutex<NonceBlock>,
}

struct NonceBlock {
    bytes: [u8; NONCE_LEN * NONCES_PER_DRAW],
    used: usize,
}

impl Default for NoncePool {
    fn default() -> Self {
        Self {
            rng: SystemRandom::new(),
            block: std::sync::Mutex::new(NonceBlock {
                bytes: [0; NONCE_LEN * NONCES_PER_DRAW],
                // Empty: the first call draws.
                used: NONCES_PER_DRAW,
            }),
        }
    }
}

impl NoncePool {
    fn next(&self) -> Result<[u8; NONCE_LEN], SealError> {
        let mut block = crate::sync::lock(&self.block);
        if block.used >= NONCES_PER_DRAW {
            self.rng
                .fill(&mut block.bytes)
                .map_err(|_| SealError::Rng)?;
            block.used = 0;
        }
        let start = block.used * NONCE_LEN;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(
            block
                .bytes
                .get(start..start + NONCE_LEN)
                .ok_or(SealError::Rng)?,
        );
        // Never handed out twice, and not left readable for no reason.
        if let Some(spent) = block.bytes.get_mut(start..start + NONCE_LEN) {
            spent.fill(0);
        }
        block.used += 1;
        Ok(nonce)
    }
}

pub fn seal(
    key: &DataKey,
    nonces: &NoncePool,
    tree: &str,
    record_key: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let nonce = nonces.next()?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    out.extend_from_slice(&key.handle.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    // Sealed where it lies, after the header: one buffer per value.
    let body = out.get_mut(HEADER_LEN..).ok_or(SealError::Rng)?;
    let tag = key
        .key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(key.handle, tree, record_key)),
            body,
        )
        .map_err(|_| SealError::Rng)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Reads the key handle from a sealed value's header, so the caller can find
/// the key. Checks the format and the minimum length.
pub fn handle_of(sealed: &[u8]) -> Result<u64, SealError> {
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(SealError::Truncated { len: sealed.len() });
    }
    match sealed.first() {
        Some(&FORMAT_V1) => {}
        Some(&other) => return Err(SealError::UnsupportedFormat(other)),
        None => return Err(SealError::Truncated { len: 0 }),
    }
    let mut handle = [0u8; HANDLE_LEN];
    handle.copy_from_slice(
        sealed
            .get(1..1 + HANDLE_LEN)
            .ok_or(SealError::Truncated { len: sealed.len() })?,
    );
    Ok(u64::from_be_bytes(handle))
}

pub fn open(
    key: &DataKey,
    tree: &str,
    record_key: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    if handle_of(sealed)? != key.handle {
        return Err(SealError::Tampered);
    }
    let truncated = || SealError::Truncated { len: sealed.len() };
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(
        sealed
            .get(1 + HANDLE_LEN..HEADER_LEN)
            .ok_or_else(truncated)?,
    );
    let mut body = sealed.get(HEADER_LEN..).ok_or_else(truncated)?.to_vec();
    let len = key
        .key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(key.handle, tree, record_key)),
            &mut body,
        )
        .map_err(|_| SealError::Tampered)?
        .len();
    body.truncate(len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(handle: u64, byte: u8) -> DataKey {
        DataKey::new(handle, &[byte; 32]).unwrap()
    }

    #[test]
    fn round_trip() {
        let rng = NoncePool::default();
        let k = key(3, 1);
        let sealed = seal(&k, &rng, "patients", b"k1", b"hello").unwrap();
        assert_eq!(handle_of(&sealed).unwrap(), 3);
        assert_eq!(open(&k, "patients", b"k1", &sealed).unwrap(), b"hello");
    }

    #[test]
    fn every_kind_of_damage_is_a_typed_error() {
        let rng = NoncePool::default();
        let k = key(3, 1);
        let sealed = seal(&k, &rng, "patients", b"k1", b"hello").unwrap();
        // wrong key with the same handle
        assert_eq!(
            open(&key(3, 2), "patients", b"k1", &sealed),
            Err(SealError::Tampered)
        );
        // wrong associated data: other record, other tree
        assert_eq!(
            open(&k, "patients", b"k2", &sealed),
            Err(SealError::Tampered)
        );
        assert_eq!(open(&k, "audit", b"k1", &sealed), Err(SealError::Tampered));
        // every single flipped bit
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(open(&k, "patients", b"k1", &bad).is_err(), "bit {i}");
        }
        // every truncation
        for n in 0..sealed.len() {
            assert!(
                open(&k, "patients", b"k1", &sealed[..n]).is_err(),
                "len {n}"
            );
        }
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(
            open(&k, "patients", b"k1", &v2),
            Err(SealError::UnsupportedFormat(2))
        );
    }

    #[test]
    fn pooled_nonces_never_repeat_across_draws() {
        let pool = NoncePool::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..NONCES_PER_DRAW * 3 + 1 {
            assert!(seen.insert(pool.next().unwrap()));
        }
    }

    #[test]
    fn nonces_differ() {
        let rng = NoncePool::default();
        let k = key(1, 1);
        let a = seal(&k, &rng, "t", b"k", b"same").unwrap();
        let b = seal(&k, &rng, "t", b"k", b"same").unwrap();
        assert_ne!(a, b);
    }
}
