//! WhatsApp media, outbound: a PDF sent as a document message.
//!
//! The PDF is sealed into the vault ([`Tree::WaMedia`], under the patient's
//! key) in the same commit that queues the document message; the queued
//! item only names it (`x_vault_document`), so the queue stays small and
//! the bytes are never on disk in the clear. When the worker sends the item
//! it uploads the PDF (`POST /{phone-number-id}/media`, neutral filename
//! `document.pdf`), commits the returned media id together with a timer
//! that deletes it at Meta after `whatsapp.media_ttl`, and only then sends
//! the message. A retry reuses that media id (no second upload). Once the
//! message is sent the PDF leaves the vault; the `delivered` (or `read`)
//! status brings the delete at Meta forward (see `media_worker`).
//!
//! Keys in [`Tree::WaMedia`] start with one byte:
//! - `D ‖ doc id`: the PDF (patient's key);
//! - `d ‖ doc id`: when it was queued and its size (system key);
//! - `U ‖ doc id`: the media id of an upload whose message is not sent yet;
//! - `W ‖ blind(wamid)`: the media id of a sent document, until delivered;
//! - `T ‖ due ‖ kind ‖ id`: timers (`media_worker`);
//! - `I`/`i ‖ blind(wamid)`: inbound media and its record (`webhook::media`).

use super::client::{ApiError, GraphClient};
use super::message::{self, BuildError, OutMessage, Recipient, TemplateHeader, TemplateSpec};
use super::outbox::{self, OutboxError, WaItem};
use crate::clock::SharedClock;
use crate::model::PatientId;
use crate::queue::{Envelope, Settled};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::media_config::MediaConfig;

pub(crate) const K_DOC: u8 = b'D';
pub(crate) const K_DOC_META: u8 = b'd';
pub(crate) const K_UPLOADED: u8 = b'U';
pub(crate) const K_SENT: u8 = b'W';
pub(crate) const K_TIMER: u8 = b'T';
pub(crate) const K_INBOUND: u8 = b'I';
pub(crate) const K_INBOUND_META: u8 = b'i';
/// `r ‖ blind(message reference)` → the blind wamid of its media (the
/// conversation's log knows a message by its reference only).
pub(crate) const K_INBOUND_REF: u8 = b'r';

/// The payload key that names the sealed PDF of a queued document.
const MARKER: &str = "x_vault_document";
/// The payload key with the JSON pointer where the media id goes (absent:
/// `/document/id`, a document message).
const MARKER_AT: &str = "x_vault_document_at";
/// Where a template's document header takes the media id (the header is
/// the first component the builder writes).
const TEMPLATE_HEADER_ID: &str = "/template/components/0/parameters/0/document/id";
/// What Meta sees as the uploaded file's name (the patient sees the
/// message's own filename): nothing about the patient.
const UPLOAD_NAME: &str = "document.pdf";

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the document is {size} bytes; whatsapp.max_document_bytes is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("the document is not a PDF (it does not start with %PDF-)")]
    NotPdf,
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// A PDF to send. `Debug` shows the size only.
pub struct Document {
    pub pdf: Vec<u8>,
    /// What the patient sees as the file's name.
    pub filename: String,
    pub caption: Option<String>,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Document({} bytes)", self.pdf.len())
    }
}

/// The bookkeeping of a queued PDF (system key; no PHI).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DocMeta {
    pub queued_at: Timestamp,
    pub size: u64,
}

/// An upload whose message has not been sent yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Uploaded {
    pub media_id: String,
    /// When its delete timer runs (it was committed with the upload).
    pub delete_at: Timestamp,
}

pub(crate) fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

fn random_id() -> VaultResult<[u8; 16]> {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| VaultError::Rng)?;
    Ok(id)
}

/// Stages `doc` and its document message to `recipient` in `txn`: the PDF
/// sealed under the patient's key, the message queued behind the
/// recipient's earlier messages.
#[allow(clippy::too_many_arguments)]
pub fn stage_document(
    vault: &Vault,
    txn: &mut Txn,
    config: &MediaConfig,
    patient: Option<PatientId>,
    recipient: Recipient,
    doc: Document,
    reference: Option<String>,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), MediaError> {
    // The builder checks filename and caption; the id is set at send.
    let msg = message::document("0", &doc.filename, doc.caption.as_deref())?;
    stage_pdf(
        vault,
        txn,
        config,
        patient,
        recipient,
        doc.pdf,
        msg,
        None.into(),
        reference,
        now,
        expires,
    )
}

/// [`stage_document`] as the answer to the inbound message being applied
/// (see [`outbox::stage_answer`]): e.g. a result released by the patient's
/// proof of identity.
#[allow(clippy::too_many_arguments)]
pub fn stage_document_answer(
    vault: &Vault,
    txn: &mut Txn,
    config: &MediaConfig,
    patient: Option<PatientId>,
    recipient: Recipient,
    doc: Document,
    reference: Option<String>,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), MediaError> {
    let msg = message::document("0", &doc.filename, doc.caption.as_deref())?;
    let at = Placement {
        pointer: None,
        answer: true,
    };
    stage_pdf(
        vault, txn, config, patient, recipient, doc.pdf, msg, at, reference, now, expires,
    )
}

/// Where a staged PDF's media id goes (`None`: `/document/id`), and whether
/// the message answers the inbound one being applied (no window check).
#[derive(Clone, Copy)]
struct Placement {
    pointer: Option<&'static str>,
    answer: bool,
}

impl From<Option<&'static str>> for Placement {
    fn from(pointer: Option<&'static str>) -> Self {
        Self {
            pointer,
            answer: false,
        }
    }
}

/// [`stage_document`] for an approved template with a document header
/// (outside the 24-hour window a result can only go this way, e.g. the
/// shipped `lab_result_ready`): `spec`'s header is replaced by the PDF,
/// shown to the patient as `filename`.
#[allow(clippy::too_many_arguments)]
pub fn stage_template_document(
    vault: &Vault,
    txn: &mut Txn,
    config: &MediaConfig,
    patient: Option<PatientId>,
    recipient: Recipient,
    pdf: Vec<u8>,
    filename: &str,
    spec: &TemplateSpec<'_>,
    reference: Option<String>,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), MediaError> {
    let spec = TemplateSpec {
        header: Some(TemplateHeader::Document {
            media_id: "0",
            filename,
        }),
        ..spec.clone()
    };
    let msg = message::template(&spec)?;
    stage_pdf(
        vault,
        txn,
        config,
        patient,
        recipient,
        pdf,
        msg,
        Some(TEMPLATE_HEADER_ID).into(),
        reference,
        now,
        expires,
    )
}

/// Seals `pdf` and queues `msg`, which names it (the media id at `at`).
#[allow(clippy::too_many_arguments)]
fn stage_pdf(
    vault: &Vault,
    txn: &mut Txn,
    config: &MediaConfig,
    patient: Option<PatientId>,
    recipient: Recipient,
    pdf: Vec<u8>,
    mut msg: OutMessage,
    placement: Placement,
    reference: Option<String>,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), MediaError> {
    let at = placement.pointer;
    let size = pdf.len() as u64;
    if size > config.max_document_bytes {
        return Err(MediaError::TooLarge {
            size,
            limit: config.max_document_bytes,
        });
    }
    if !pdf.starts_with(b"%PDF-") {
        return Err(MediaError::NotPdf);
    }
    let id = random_id()?;
    if let Value::Object(m) = &mut msg.payload {
        m.insert(MARKER.to_owned(), Value::String(hex::encode(id)));
        if let Some(at) = at {
            m.insert(MARKER_AT.to_owned(), Value::String(at.to_owned()));
        }
    }
    if let Some(slot) = msg.payload.pointer_mut(at.unwrap_or("/document/id")) {
        *slot = Value::String(String::new());
    }
    let item = WaItem {
        patient,
        recipient: Some(recipient),
        message: msg,
        reference,
    };
    if placement.answer {
        outbox::stage_answer(vault, txn, item, now, expires)?;
    } else {
        outbox::stage(vault, txn, item, now, expires)?;
    }
    let owner = patient.map_or(Owner::System, Owner::Patient);
    txn.put(Tree::WaMedia, key(K_DOC, &id), owner, pdf);
    txn.put_json(
        Tree::WaMedia,
        key(K_DOC_META, &id),
        Owner::System,
        &DocMeta {
            queued_at: now,
            size,
        },
    )?;
    Ok(())
}

/// Queues a document durably; returns once it is on disk.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_document(
    vault: &Vault,
    config: &MediaConfig,
    patient: Option<PatientId>,
    recipient: Recipient,
    doc: Document,
    reference: Option<String>,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), MediaError> {
    let config = config.clone();
    vault
        .write(move |v| {
            let mut txn = Txn::new(now);
            match stage_document(
                v, &mut txn, &config, patient, recipient, doc, reference, now, expires,
            ) {
                // Its feed event (and audit entry) are in txn: commit them.
                Err(
                    e @ MediaError::Outbox(
                        OutboxError::Unreachable { .. } | OutboxError::PolicyBlocked(_),
                    ),
                ) => Ok((txn, Err(e))),
                Err(e) => Err(e),
                Ok(()) => Ok((txn, Ok(()))),
            }
        })
        .await
        .and_then(|c| c.value)
}

/// The sealed PDF a queued item names, if it names one.
pub(crate) fn doc_id(item: &WaItem) -> Option<Vec<u8>> {
    item.message
        .payload
        .get(MARKER)
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
}

/// Where the media id goes in a queued item's payload.
fn id_pointer(item: &WaItem) -> &str {
    item.message
        .payload
        .get(MARKER_AT)
        .and_then(Value::as_str)
        .unwrap_or("/document/id")
}

/// The media id a document message (or a template's document header)
/// carries (after [`Outbound::prepare`]).
pub fn media_id_of(item: &WaItem) -> Option<String> {
    item.message
        .payload
        .pointer(id_pointer(item))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Removes the vault's own key from a message body before it goes to Meta.
pub fn strip_marker(body: &mut Value) {
    if let Value::Object(m) = body {
        m.remove(MARKER);
        m.remove(MARKER_AT);
    }
}

/// Why a document could not be made ready to send.
#[derive(Debug)]
pub enum Prep {
    /// The upload failed: classified like a send.
    Api(ApiError),
    /// The PDF is gone (its patient was erased) or damaged: never sendable.
    Missing,
    /// The vault could not be read or written now.
    Retry(String),
}

/// What the outbox worker needs for documents.
#[derive(Clone)]
pub struct Outbound {
    vault: Vault,
    clock: SharedClock,
    ttl: SignedDuration,
}

impl Outbound {
    pub fn new(vault: Vault, clock: SharedClock, config: &MediaConfig) -> Self {
        Self {
            vault,
            clock,
            ttl: SignedDuration::try_from(config.media_ttl)
                .unwrap_or(SignedDuration::from_hours(24)),
        }
    }

    /// Makes a queued document ready to send: uploads its PDF (or reuses
    /// the upload of an earlier attempt) and puts the media id into the
    /// message. The media id and its delete timer are durable before the
    /// message is sent, so whatever happens next the upload is deleted at
    /// Meta. Dry-run (no client): nothing is read or uploaded.
    pub async fn prepare(
        &self,
        client: Option<&GraphClient>,
        envelope: &mut Envelope<WaItem>,
    ) -> Result<(), Prep> {
        let (Some(client), Some(id)) = (client, doc_id(&envelope.item)) else {
            return Ok(());
        };
        let vault = &self.vault;
        let up_key = key(K_UPLOADED, &id);
        let earlier = vault
            .get_json::<Uploaded>(Tree::WaMedia, &up_key)
            .map_err(|e| Prep::Retry(e.to_string()))?;
        let now = self.clock.now();
        let media_id = match earlier {
            // Reused unless its TTL deleted it at Meta meanwhile (retries
            // outlasted `media_ttl`): then it goes up again.
            Some(u) if u.delete_at > now => u.media_id,
            _ => {
                let pdf = match vault.get(Tree::WaMedia, &key(K_DOC, &id)) {
                    Ok(Some(b)) => zeroize::Zeroizing::new(b),
                    Ok(None) | Err(VaultError::KeyUnavailable { .. }) => return Err(Prep::Missing),
                    Err(VaultError::Decode { .. } | VaultError::Damaged { .. }) => {
                        return Err(Prep::Missing)
                    }
                    Err(e) => return Err(Prep::Retry(e.to_string())),
                };
                let media_id = client
                    .upload_media(&pdf, "application/pdf", UPLOAD_NAME)
                    .await
                    .map_err(Prep::Api)?;
                let delete_at = now.checked_add(self.ttl).unwrap_or(now);
                let up = Uploaded {
                    media_id: media_id.clone(),
                    delete_at,
                };
                vault
                    .write(move |_| {
                        let mut txn = Txn::new(now);
                        txn.put_json(Tree::WaMedia, up_key, Owner::System, &up)?;
                        super::media_worker::stage_delete(&mut txn, &up.media_id, delete_at)?;
                        Ok::<_, VaultError>((txn, ()))
                    })
                    .await
                    .map_err(|e| Prep::Retry(e.to_string()))?;
                media_id
            }
        };
        let at = id_pointer(&envelope.item).to_owned();
        if let Some(slot) = envelope.item.message.payload.pointer_mut(&at) {
            *slot = Value::String(media_id);
        }
        Ok(())
    }
}

/// Stages what follows a settled document item (on the writer, with the
/// settle): sent → the PDF leaves the vault and the media id waits for the
/// `delivered` status; refused for good or gone → the PDF leaves and the
/// upload, if any, is deleted at Meta now; retried → nothing (the next
/// attempt reuses the upload).
pub fn after_settle(
    vault: &Vault,
    txn: &mut Txn,
    item: &WaItem,
    settled: Settled,
    wamid: Option<&str>,
    dry_run: bool,
    now: Timestamp,
) -> VaultResult<()> {
    let Some(id) = doc_id(item) else {
        return Ok(());
    };
    if matches!(settled, Settled::RetryAt(_)) {
        return Ok(());
    }
    let up_key = key(K_UPLOADED, &id);
    let uploaded = vault.get_json::<Uploaded>(Tree::WaMedia, &up_key)?;
    txn.remove(Tree::WaMedia, key(K_DOC, &id));
    txn.remove(Tree::WaMedia, key(K_DOC_META, &id));
    txn.remove(Tree::WaMedia, up_key);
    let Some(up) = uploaded else {
        return Ok(());
    };
    match (settled, wamid) {
        (Settled::Removed, Some(wamid)) if !dry_run => {
            txn.put_json(Tree::WaMedia, sent_key(vault, wamid), Owner::System, &up)
        }
        _ => super::media_worker::reschedule_delete(txn, &up.media_id, up.delete_at, now),
    }
}

fn sent_key(vault: &Vault, wamid: &str) -> Vec<u8> {
    key(K_SENT, &vault.blind_index("wa-media-sent", wamid))
}

/// The `delivered`/`read` status of a sent document: its upload is deleted
/// at Meta now instead of at its TTL. Staged by the webhook's apply, in the
/// status's own commit.
pub fn stage_delivered(
    vault: &Vault,
    txn: &mut Txn,
    wamid: &str,
    now: Timestamp,
) -> VaultResult<()> {
    let k = sent_key(vault, wamid);
    let Some(up) = vault.get_json::<Uploaded>(Tree::WaMedia, &k)? else {
        return Ok(());
    };
    txn.remove(Tree::WaMedia, k);
    super::media_worker::reschedule_delete(txn, &up.media_id, up.delete_at, now)
}

/// PDFs still waiting in the vault (for `status` and tests).
pub fn queued_documents(vault: &Vault) -> usize {
    vault
        .scan_raw_from(Tree::WaMedia, &[K_DOC_META])
        .take_while(|r| {
            r.as_ref()
                .map_or(true, |(k, _)| k.first() == Some(&K_DOC_META))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_debug_shows_only_its_size() {
        let d = Document {
            pdf: b"%PDF-1.4 secret".to_vec(),
            filename: "ZZ name.pdf".to_owned(),
            caption: None,
        };
        assert_eq!(format!("{d:?}"), "Document(15 bytes)");
    }
}
