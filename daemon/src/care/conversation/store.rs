//! Where conversations live in [`Tree::Care`] (beside the reminders'
//! `S`, `T` and `L` records, see `care::store`):
//!
//! - `V ‖ id`: the [`Conversation`], patient's key;
//! - `M ‖ id ‖ n (u64 BE)`: entry `n` of its message log, patient's key;
//! - `O ‖ blind(reference)`: the wamid Meta gave an outbound message of the
//!   log (written with the sent record, `whatsapp::outbox::stage_sent`),
//!   patient's key: how the inbox finds a message's delivery state;
//! - timers in the reminders' index, `T ‖ due ‖ id ‖ offset` with the
//!   offsets [`IDLE`] and [`PURGE`] (one scheduler for all).
//!
//! `id` is 16 bytes of a blind index of the patient id (of the number or
//! business-scoped id for an unknown contact): opaque, stable, and not the
//! patient id (the API shows both).

use super::{Contact, Conversation};
use crate::model::PatientId;
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub type ConvId = [u8; 16];

const K_CONV: u8 = b'V';
const K_ENTRY: u8 = b'M';
const K_OUT: u8 = b'O';
/// The timer offsets of a conversation (reminders use 0..8, 254, 255).
pub const IDLE: u8 = 200;
pub const PURGE: u8 = 201;
/// The prefix of a conversation's outbound references.
pub const REF_PREFIX: &str = "conv:";

pub fn id(vault: &Vault, contact: &Contact) -> ConvId {
    let bi = match contact {
        Contact::Patient(p) => vault.blind_index("care-conversation", &p.to_hex()),
        Contact::Unknown(r) => vault.blind_index("care-conversation-wa", r.as_str()),
    };
    let mut t = [0u8; 16];
    t.copy_from_slice(bi.get(..16).unwrap_or(&[0u8; 16]));
    t
}

fn conv_key(id: &ConvId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(K_CONV);
    k.extend_from_slice(id);
    k
}

fn entry_key(id: &ConvId, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(K_ENTRY);
    k.extend_from_slice(id);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// A conversation (none when unknown, or its patient was erased).
pub fn load(vault: &Vault, id: &ConvId) -> VaultResult<Option<Conversation>> {
    tolerate(vault.get_json(Tree::Care, &conv_key(id)))
}

/// A conversation as `txn` leaves it: what the txn staged (an earlier
/// message of the same webhook call, an earlier timer of the same job),
/// else what is stored. Decisions read through this, never `load`, so two
/// inputs in one txn cannot both start from the stored state.
pub fn load_in(vault: &Vault, txn: &Txn, id: &ConvId) -> VaultResult<Option<Conversation>> {
    match txn.staged_json(Tree::Care, &conv_key(id)) {
        Some(staged) => staged,
        None => load(vault, id),
    }
}

pub fn stage(txn: &mut Txn, id: &ConvId, c: &Conversation) -> VaultResult<()> {
    txn.put_json(Tree::Care, conv_key(id), c.owner(), c)
}

/// Every readable conversation: (id, conversation).
pub fn all(vault: &Vault) -> VaultResult<Vec<(ConvId, Conversation)>> {
    let mut out = Vec::new();
    for r in vault.scan_raw_from(Tree::Care, &[K_CONV]) {
        let (k, opened) = r?;
        if k.first() != Some(&K_CONV) {
            break;
        }
        let (Some(id), Ok(bytes)) = (k.get(1..).and_then(|i| ConvId::try_from(i).ok()), opened)
        else {
            continue; // an erased patient's
        };
        if let Ok(c) = serde_json::from_slice::<Conversation>(&bytes) {
            out.push((id, c));
        }
    }
    Ok(out)
}

/// Who wrote a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Author {
    Patient,
    Bot,
    Staff,
}

/// One message of a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Timestamp,
    pub from: Author,
    /// text, button, list, template, image, document…
    pub kind: String,
    /// The words (the patient's, the staff's, or the bot's text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The staff member (the API actor) who wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// An inbound message's PHI-free reference (`message-received`
    /// events name it too; inbound media are found by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ref: Option<String>,
    /// An outbound message's reference (its delivery state is found by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// A staff text waiting for the patient to reopen the window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// Appends `e` as the conversation's next entry (and returns its number).
pub fn append(txn: &mut Txn, id: &ConvId, c: &mut Conversation, e: &Entry) -> VaultResult<u64> {
    let n = c.next_entry;
    c.next_entry = n.saturating_add(1);
    txn.put_json(Tree::Care, entry_key(id, n), c.owner(), e)?;
    Ok(n)
}

pub fn stage_entry(txn: &mut Txn, id: &ConvId, owner: Owner, n: u64, e: &Entry) -> VaultResult<()> {
    txn.put_json(Tree::Care, entry_key(id, n), owner, e)
}

pub fn remove(txn: &mut Txn, id: &ConvId) {
    txn.remove(Tree::Care, conv_key(id));
}

pub fn entry(vault: &Vault, id: &ConvId, n: u64) -> VaultResult<Option<Entry>> {
    tolerate(vault.get_json(Tree::Care, &entry_key(id, n)))
}

/// The log, oldest first: (number, entry).
pub fn entries(vault: &Vault, id: &ConvId) -> VaultResult<Vec<(u64, Entry)>> {
    let mut prefix = vec![K_ENTRY];
    prefix.extend_from_slice(id);
    let mut out = Vec::new();
    for r in vault.scan_prefix(Tree::Care, &prefix) {
        let (k, bytes) = match r {
            Ok(kv) => kv,
            Err(VaultError::KeyUnavailable { .. }) => continue,
            Err(e) => return Err(e),
        };
        let n = k
            .get(17..25)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes);
        if let (Some(n), Ok(e)) = (n, serde_json::from_slice::<Entry>(&bytes)) {
            out.push((n, e));
        }
    }
    Ok(out)
}

pub fn remove_entry(txn: &mut Txn, id: &ConvId, n: u64) {
    txn.remove(Tree::Care, entry_key(id, n));
}

fn out_key(vault: &Vault, reference: &str) -> Vec<u8> {
    let mut k = vec![K_OUT];
    k.extend_from_slice(
        vault
            .blind_index("care-conv-out", reference)
            .get(..16)
            .unwrap_or_default(),
    );
    k
}

/// Whether an outbound reference is a conversation's.
pub fn is_conversation_ref(reference: &str) -> bool {
    reference.starts_with(REF_PREFIX) || reference.starts_with("care-conv:")
}

/// What became of an outbound conversation message once the outbox was
/// done with it. (Records from before failures were kept are a bare wamid
/// string: they read as `Sent`.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Outcome {
    Sent(String),
    /// Never sent: Meta's error code, or our reason (`outside-window`,
    /// `template-not-approved`, `no-recipient`, `refused`).
    Failed {
        failed: String,
    },
}

/// Records the wamid Meta gave the message with `reference` (in the
/// outbox worker's txn that records the send).
pub fn stage_sent(
    vault: &Vault,
    txn: &mut Txn,
    reference: &str,
    patient: Option<PatientId>,
    wamid: &str,
) -> VaultResult<()> {
    let owner = patient.map_or(Owner::System, Owner::Patient);
    txn.put_json(
        Tree::Care,
        out_key(vault, reference),
        owner,
        &Outcome::Sent(wamid.to_owned()),
    )
}

/// Records that the message with `reference` will never be sent, and why
/// (the inbox shows "failed" with the reason in words).
pub fn stage_failed(
    vault: &Vault,
    txn: &mut Txn,
    reference: &str,
    patient: Option<PatientId>,
    why: &str,
) -> VaultResult<()> {
    let owner = patient.map_or(Owner::System, Owner::Patient);
    txn.put_json(
        Tree::Care,
        out_key(vault, reference),
        owner,
        &Outcome::Failed {
            failed: why.to_owned(),
        },
    )
}

/// What became of the message with `reference` (None: still queued).
pub fn outcome(vault: &Vault, reference: &str) -> VaultResult<Option<Outcome>> {
    tolerate(vault.get_json(Tree::Care, &out_key(vault, reference)))
}

/// The wamid of the message with `reference`, once sent.
pub fn sent_wamid(vault: &Vault, reference: &str) -> VaultResult<Option<String>> {
    Ok(match outcome(vault, reference)? {
        Some(Outcome::Sent(w)) => Some(w),
        _ => None,
    })
}

pub fn remove_sent(vault: &Vault, txn: &mut Txn, reference: &str) {
    txn.remove(Tree::Care, out_key(vault, reference));
}

/// A record sealed under an erased patient's key reads as absent.
fn tolerate<T>(r: VaultResult<Option<T>>) -> VaultResult<Option<T>> {
    match r {
        Err(VaultError::KeyUnavailable { .. } | VaultError::Decode { .. }) => Ok(None),
        other => other,
    }
}
