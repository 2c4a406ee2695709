//! Where bookings live in [`Tree::Care`] (beside the reminders', results'
//! and conversations' records):
//!
//! - `B ‖ token`: a patient's [`Booking`], patient's key;
//! - `H ‖ blind(slot id) (16)`: a [`Hold`] on a slot, patient's key (an
//!   erased patient's hold no longer opens, so it holds nothing);
//! - the hold's expiry timer in the reminders' index, `T ‖ due ‖ token ‖`
//!   [`HOLD_EXPIRY`](super::HOLD_EXPIRY).
//!
//! `token` is 16 bytes of a blind index of the patient id. Row and button
//! ids (`cr1:k:…`) name a slot by its start (seconds; the row shows it
//! anyway) and 8 bytes of a blind index of its id, a group by the same
//! kind of reference: never a PMS id in the clear.

use super::search::Group;
use super::{Booking, Pick};
use crate::model::PatientId;
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

pub type Token = [u8; 16];
pub type Ref = [u8; 8];

const K_BOOKING: u8 = b'B';
const K_HOLD: u8 = b'H';
/// The prefix of our row and button ids.
const PAYLOAD_PREFIX: &str = "cr1:k:";

pub fn token(vault: &Vault, patient: PatientId) -> Token {
    let bi = vault.blind_index("care-booking", &patient.to_hex());
    let mut t = [0u8; 16];
    t.copy_from_slice(bi.get(..16).unwrap_or(&[0u8; 16]));
    t
}

fn short(vault: &Vault, domain: &str, value: &str) -> Ref {
    let bi = vault.blind_index(domain, value);
    let mut r = [0u8; 8];
    r.copy_from_slice(bi.get(..8).unwrap_or(&[0u8; 8]));
    r
}

/// A slot's reference in a row id.
pub fn slot_ref(vault: &Vault, slot: &str) -> Ref {
    short(vault, "care-booking-slot", slot)
}

/// A group's reference in a row id.
pub fn group_ref(vault: &Vault, g: &Group) -> GroupRef {
    match g {
        Group::Service(c) => GroupRef::Service(short(vault, "care-booking-service", c)),
        Group::Provider(c) => GroupRef::Provider(short(vault, "care-booking-provider", c)),
    }
}

fn key(prefix: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(prefix);
    k.extend_from_slice(id);
    k
}

fn tolerate<T>(r: VaultResult<Option<T>>) -> VaultResult<Option<T>> {
    match r {
        Err(VaultError::KeyUnavailable { .. } | VaultError::Decode { .. }) => Ok(None),
        other => other,
    }
}

/// A patient's booking (none when there is none, or they were erased).
pub fn load(vault: &Vault, token: &Token) -> VaultResult<Option<Booking>> {
    tolerate(vault.get_json(Tree::Care, &key(K_BOOKING, token)))
}

/// A patient's booking as `txn` leaves it (an earlier message of the same
/// webhook group may have staged it), else as stored.
pub fn load_in(vault: &Vault, txn: &Txn, token: &Token) -> VaultResult<Option<Booking>> {
    match txn.staged_json(Tree::Care, &key(K_BOOKING, token)) {
        Some(staged) => tolerate(staged),
        None => load(vault, token),
    }
}

pub fn stage(txn: &mut Txn, token: &Token, b: &Booking) -> VaultResult<()> {
    txn.put_json(
        Tree::Care,
        key(K_BOOKING, token),
        Owner::Patient(b.patient),
        b,
    )
}

pub fn remove(txn: &mut Txn, token: &Token) {
    txn.remove(Tree::Care, key(K_BOOKING, token));
}

/// A slot kept from other patients until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub patient: PatientId,
    pub pick: Pick,
    pub until: Timestamp,
}

fn hold_key(vault: &Vault, slot: &str) -> Vec<u8> {
    let bi = vault.blind_index("care-booking-hold", slot);
    key(K_HOLD, bi.get(..16).unwrap_or(&[0u8; 16]))
}

pub fn stage_hold(vault: &Vault, txn: &mut Txn, h: &Hold) -> VaultResult<()> {
    txn.put_json(
        Tree::Care,
        hold_key(vault, &h.pick.slot),
        Owner::Patient(h.patient),
        h,
    )
}

pub fn remove_hold(vault: &Vault, txn: &mut Txn, slot: &str) {
    txn.remove(Tree::Care, hold_key(vault, slot));
}

/// Every hold that still runs at `now` as `txn` leaves them: the stored
/// ones (readable: an erased patient's hold nothing) with what `txn` has
/// staged over them, so that a hold staged for one patient earlier in the
/// same webhook group keeps the slot from the next. Few: one per patient
/// waiting for the PMS.
pub fn holds(vault: &Vault, txn: &Txn, now: Timestamp) -> VaultResult<Vec<Hold>> {
    let staged = txn.staged_under(Tree::Care, &[K_HOLD]);
    let mut out = Vec::new();
    let mut keep = |bytes: &[u8]| {
        if let Ok(h) = serde_json::from_slice::<Hold>(bytes) {
            if h.until > now {
                out.push(h);
            }
        }
    };
    for r in vault.scan_raw_from(Tree::Care, &[K_HOLD]) {
        let (k, opened) = r?;
        if k.first() != Some(&K_HOLD) {
            break;
        }
        if staged.contains_key(k.as_slice()) {
            continue;
        }
        let Ok(bytes) = opened else { continue };
        keep(&bytes);
    }
    for bytes in staged.values().flatten() {
        keep(bytes);
    }
    Ok(out)
}

/// The ids of slots held at `now` for anyone but `except`, as `txn`
/// leaves the holds.
pub fn held_ids(
    vault: &Vault,
    txn: &Txn,
    now: Timestamp,
    except: Option<PatientId>,
) -> VaultResult<HashSet<String>> {
    Ok(holds(vault, txn, now)?
        .into_iter()
        .filter(|h| Some(h.patient) != except)
        .map(|h| h.pick.slot)
        .collect())
}

/// A group named in a row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRef {
    Service(Ref),
    Provider(Ref),
}

/// What a row or button of ours means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tap {
    Group(GroupRef),
    Page(u32, Option<GroupRef>),
    Slot(Timestamp, Ref),
    Yes(Timestamp, Ref),
    AnotherTime,
}

fn group_tag(g: Option<GroupRef>) -> String {
    match g {
        None => "-".to_owned(),
        Some(GroupRef::Service(r)) => format!("s{}", hex::encode(r)),
        Some(GroupRef::Provider(r)) => format!("p{}", hex::encode(r)),
    }
}

fn parse_group(s: &str) -> Option<Option<GroupRef>> {
    if s == "-" {
        return Some(None);
    }
    let mut r = [0u8; 8];
    let (kind, hexed) = (s.get(..1)?, s.get(1..)?);
    hex::decode_to_slice(hexed, &mut r).ok()?;
    match kind {
        "s" => Some(Some(GroupRef::Service(r))),
        "p" => Some(Some(GroupRef::Provider(r))),
        _ => None,
    }
}

/// The row or button id of a tap (at most 60 characters).
pub fn payload(tap: Tap) -> String {
    let rest = match tap {
        Tap::Group(g) => format!("g:{}", group_tag(Some(g))),
        Tap::Page(p, g) => format!("l:{p}:{}", group_tag(g)),
        Tap::Slot(t, r) => format!("s:{}:{}", t.as_second(), hex::encode(r)),
        Tap::Yes(t, r) => format!("y:{}:{}", t.as_second(), hex::encode(r)),
        Tap::AnotherTime => "n".to_owned(),
    };
    format!("{PAYLOAD_PREFIX}{rest}")
}

/// Whether a reply id is one of ours.
pub fn is_payload(id: &str) -> bool {
    id.starts_with(PAYLOAD_PREFIX)
}

/// An id of ours, taken apart; None for anything else (or a damaged one).
pub fn parse_payload(id: &str) -> Option<Tap> {
    let rest = id.strip_prefix(PAYLOAD_PREFIX)?;
    let (kind, args) = rest.split_once(':').unwrap_or((rest, ""));
    let slot = |args: &str| -> Option<(Timestamp, Ref)> {
        let (secs, hexed) = args.split_once(':')?;
        let t = Timestamp::from_second(secs.parse().ok()?).ok()?;
        let mut r = [0u8; 8];
        hex::decode_to_slice(hexed, &mut r).ok()?;
        Some((t, r))
    };
    match kind {
        "g" => Some(Tap::Group(parse_group(args)??)),
        "l" => {
            let (p, g) = args.split_once(':')?;
            Some(Tap::Page(p.parse().ok()?, parse_group(g)?))
        }
        "s" => slot(args).map(|(t, r)| Tap::Slot(t, r)),
        "y" => slot(args).map(|(t, r)| Tap::Yes(t, r)),
        "n" if args.is_empty() => Some(Tap::AnotherTime),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_short_opaque_and_parse_back() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let taps = [
            Tap::Group(GroupRef::Service([1; 8])),
            Tap::Group(GroupRef::Provider([2; 8])),
            Tap::Page(3, None),
            Tap::Page(u32::MAX, Some(GroupRef::Service([0xab; 8]))),
            Tap::Slot(t, [9; 8]),
            Tap::Yes(t, [7; 8]),
            Tap::AnotherTime,
        ];
        for tap in taps {
            let p = payload(tap);
            assert!(p.len() <= 60 && is_payload(&p), "{p}");
            assert_eq!(parse_payload(&p), Some(tap), "{p}");
        }
        for other in [
            "cr1:k:",
            "cr1:k:g:-",
            "cr1:k:g:x0101010101010101",
            "cr1:k:l:1",
            "cr1:k:l:-1:-",
            "cr1:k:s:abc:0909090909090909",
            "cr1:k:s:1800000000:09",
            "cr1:k:y:99999999999999999999:0909090909090909",
            "cr1:k:n:1",
            "cr1:m:b",
            "",
        ] {
            assert_eq!(parse_payload(other), None, "{other}");
        }
    }
}
