//! The WhatsApp outbox on the core's durable queue (`crate::queue`).
//!
//! A message is committed here before any network call. Items to one
//! recipient share an order key (a blind index of the recipient, so the
//! number itself is only inside the sealed item) and leave strictly in
//! order; items to different recipients go out side by side. What Meta
//! answers (`wamid`, `wa_id`) is recorded in the sent tree in the same
//! transaction that removes the item.
//!
//! Delivery is at-least-once: the Cloud API has no idempotency key, so a
//! process that dies after Meta accepted a message and before that
//! transaction is durable sends it again after the restart. See
//! docs/whatsapp.md for the window.

use super::message::{Kind, OutMessage, Recipient};
use crate::model::{EventKind, PatientId};
use crate::pms::phone::{self, NumberType};
use crate::queue::{self, Envelope, QueueSpec, Queued};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const WA_OUTBOX: QueueSpec = QueueSpec {
    name: "whatsapp.outbound",
    items: Tree::WaOutbox,
    dead_letters: Tree::WaDeadLetters,
    dead_letter_event: EventKind::WhatsappMessageRejected,
    expired_event: EventKind::WhatsappMessageExpired,
    // About 4 hours of retries at the capped back-off, then an event; a
    // reminder should carry an expiry that ends it sooner.
    max_attempts: Some(25),
    first_backoff: SignedDuration::from_secs(1),
    max_backoff: SignedDuration::from_secs(900),
    // Meta has no idempotency key: a cut-off send is reconciled through
    // its status webhook before it goes again (`whatsapp::in_doubt`).
    in_flight: true,
};

/// A queued WhatsApp message. Sealed under the patient's key when it names
/// one (the recipient is PHI); its `Debug` shows neither recipient nor
/// content.
#[derive(Clone, Serialize, Deserialize)]
pub struct WaItem {
    pub patient: Option<PatientId>,
    /// None only for mark-as-read.
    pub recipient: Option<Recipient>,
    pub message: OutMessage,
    /// The caller's PHI-free reference (an appointment id hash, a workflow
    /// step), echoed in events.
    pub reference: Option<String>,
}

impl std::fmt::Debug for WaItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaItem")
            .field("patient", &self.patient)
            .field("message", &self.message)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

impl Queued for WaItem {
    fn patient(&self) -> Option<PatientId> {
        self.patient
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let mut d = BTreeMap::from([("message".to_owned(), self.message.kind.as_str().to_owned())]);
        if let Some((name, lang)) = &self.message.template {
            d.insert("template".to_owned(), format!("{name}/{lang}"));
        }
        if let Some(r) = &self.reference {
            d.insert("reference".to_owned(), r.clone());
        }
        d
    }
}

/// What Meta answered for a sent message (or the dry-run stand-in).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentRecord {
    pub outbox_seq: u64,
    pub wamid: String,
    /// The WhatsApp id Meta resolved the number to (PHI).
    pub wa_id: Option<String>,
    pub kind: Kind,
    pub template: Option<String>,
    pub patient: Option<PatientId>,
    pub reference: Option<String>,
    pub enqueued_at: Timestamp,
    pub sent_at: Timestamp,
    pub attempts: u32,
    /// Recorded without connecting anywhere (no live credentials).
    pub dry_run: bool,
    /// The uploaded PDF's media id of a document message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
}

/// Meta's customer-service window: a free-form message (anything but an
/// approved template) may only go to someone who wrote to us within it.
pub const SERVICE_WINDOW: SignedDuration = SignedDuration::from_hours(24);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("a {0} message needs a recipient")]
    NoRecipient(&'static str),
    #[error(
        "a free-form {kind} message is outside the patient's 24-hour customer-service window \
         ({since}); send an approved template instead"
    )]
    OutsideWindow { kind: &'static str, since: String },
    #[error(
        "the recipient's number cannot be a mobile ({reason}), so WhatsApp cannot reach it; \
         the feed has a whatsapp-unreachable event"
    )]
    Unreachable { reason: &'static str },
    #[error(transparent)]
    Template(#[from] super::template_book::TemplateRefusal),
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The feed has a `policy-blocked` event and the audit an entry.
    #[error("not queued: {0}")]
    PolicyBlocked(#[from] super::policy::Violation),
}

/// The order key: the same for every message to one recipient.
pub fn order_key(vault: &Vault, item: &WaItem) -> String {
    match &item.recipient {
        Some(r) => hex::encode(
            vault
                .blind_index("whatsapp-recipient", r.as_str())
                .get(..12)
                .unwrap_or_default(),
        ),
        // Read receipts need no order among themselves.
        None => "mark-read".to_owned(),
    }
}

/// Refuses a free-form message to a patient outside the 24-hour window
/// (Meta would refuse it with 131047 after the queue, where the workflow can
/// no longer choose a template instead). Templates and read receipts are
/// always allowed; a message without a patient (a reply to a sender we
/// could not match) is the caller's call.
fn check_window(vault: &Vault, item: &WaItem, now: Timestamp) -> Result<(), OutboxError> {
    let (Some(patient), kind) = (item.patient, item.message.kind) else {
        return Ok(());
    };
    if matches!(kind, Kind::Template | Kind::MarkRead) {
        return Ok(());
    }
    let last = vault.wa_last_inbound(patient)?;
    let open = last.is_some_and(|at| now.duration_since(at) < SERVICE_WINDOW);
    if open {
        return Ok(());
    }
    Err(OutboxError::OutsideWindow {
        kind: kind.as_str(),
        since: match last {
            Some(at) => format!(
                "their last message came {} h ago",
                now.duration_since(at).as_hours()
            ),
            None => "they have not written to us".to_owned(),
        },
    })
}

/// Refuses a template the account has not approved (see
/// [`super::template_book`]).
fn check_template(vault: &Vault, item: &WaItem) -> Result<(), OutboxError> {
    let Some((name, language)) = &item.message.template else {
        return Ok(());
    };
    let book = super::template_book::TemplateBook::load(vault)?;
    super::template_book::verdict(book.as_ref(), name, language)?;
    Ok(())
}

/// Why WhatsApp cannot reach `item`'s number, when libphonenumber's
/// metadata rules out a mobile (a landline, a toll-free or other service
/// number). Numbers that may be mobiles pass: all of the NANP, where mobile
/// and fixed share ranges, VoIP, and ranges the metadata does not know;
/// Meta answers for those (131026 when not on WhatsApp).
fn unreachable(item: &WaItem) -> Option<&'static str> {
    let Some(Recipient::Phone(e164)) = &item.recipient else {
        return None;
    };
    match phone::number_type(e164) {
        NumberType::Landline => Some("landline"),
        NumberType::Service => Some("not_mobile"),
        NumberType::Mobile | NumberType::FixedOrMobile | NumberType::Other => None,
    }
}

/// Stages the feed event for a message that was not queued because of
/// `reason`: the patient's id and the message's PHI-free description, never
/// the number.
fn stage_unreachable(
    vault: &Vault,
    txn: &mut Txn,
    item: &WaItem,
    reason: &'static str,
    now: Timestamp,
) -> VaultResult<()> {
    let mut details = item.describe();
    details.insert("reason".to_owned(), reason.to_owned());
    let event = crate::model::Event {
        kind: EventKind::WhatsappUnreachable,
        time: now,
        patient: item.patient,
        appointment: None,
        slot: None,
        details,
    };
    vault.stage_event(txn, &event)
}

/// Checks `item` against the minimal-payload policy. A pass is audited
/// with the message's kind, template, field names and payload digest
/// (never the values); a violation stages an audit entry and a
/// `policy-blocked` event in `txn` instead (commit it to record them).
pub fn check_policy(
    vault: &Vault,
    txn: &mut Txn,
    policy: &super::policy::Policy,
    item: &WaItem,
    now: Timestamp,
) -> Result<(), OutboxError> {
    let template = item.message.template.as_ref().map(|t| t.0.clone());
    let mut audit = crate::audit::AuditDraft::new("system", "whatsapp.outbound.checked");
    if let Some(p) = item.patient {
        audit = audit.subject(p.to_string());
    }
    if let Some(t) = &template {
        audit = audit.detail("template", t.clone());
    }
    match policy.check(&item.message, item.reference.as_deref()) {
        Ok(c) => {
            txn.audit(
                audit
                    .detail("kind", c.kind)
                    .detail("fields", c.fields.join(","))
                    .detail("sha256", c.digest),
            );
            Ok(())
        }
        Err(v) => {
            let mut details = item.describe();
            details.insert("reason".to_owned(), v.code().to_owned());
            if let super::policy::Violation::Forbidden { field }
            | super::policy::Violation::NotAllowed { field, .. } = &v
            {
                details.insert("field".to_owned(), field.clone());
            }
            let mut audit = audit.detail("sha256", super::policy::digest(&item.message));
            audit.action = "whatsapp.outbound.policy-blocked".to_owned();
            for (k, val) in &details {
                audit = audit.detail(k.clone(), val.clone());
            }
            txn.audit(audit);
            let event = crate::model::Event {
                kind: EventKind::PolicyBlocked,
                time: now,
                patient: item.patient,
                appointment: None,
                slot: None,
                details,
            };
            vault.stage_event(txn, &event)?;
            Err(OutboxError::PolicyBlocked(v))
        }
    }
}

/// Stages `item` in `txn` (for callers that commit it with their own
/// state change).
///
/// A number that cannot be a mobile is not queued: the
/// `whatsapp-unreachable` event is staged in `txn` instead and the error is
/// [`OutboxError::Unreachable`]; commit `txn` to put the event on the feed.
pub fn stage(
    vault: &Vault,
    txn: &mut Txn,
    item: WaItem,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), OutboxError> {
    let policy = vault.wa_policy();
    stage_with_policy(vault, txn, &policy, item, now, expires)
}

/// [`stage`] against `policy` instead of the installed one.
pub fn stage_with_policy(
    vault: &Vault,
    txn: &mut Txn,
    policy: &super::policy::Policy,
    item: WaItem,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), OutboxError> {
    stage_checked(vault, txn, policy, item, now, expires, true)
}

/// [`stage`] for an answer to the inbound message being applied: that
/// message opened the 24-hour window in this same txn, which the store does
/// not show yet, so the window is not checked (everything else is).
pub fn stage_answer(
    vault: &Vault,
    txn: &mut Txn,
    item: WaItem,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), OutboxError> {
    let policy = vault.wa_policy();
    stage_checked(vault, txn, &policy, item, now, expires, false)
}

fn stage_checked(
    vault: &Vault,
    txn: &mut Txn,
    policy: &super::policy::Policy,
    item: WaItem,
    now: Timestamp,
    expires: Option<Timestamp>,
    window: bool,
) -> Result<(), OutboxError> {
    if item.recipient.is_none() && item.message.kind != Kind::MarkRead {
        return Err(OutboxError::NoRecipient(item.message.kind.as_str()));
    }
    if let Some(reason) = unreachable(&item) {
        stage_unreachable(vault, txn, &item, reason, now)?;
        return Err(OutboxError::Unreachable { reason });
    }
    if window {
        check_window(vault, &item, now)?;
    }
    check_template(vault, &item)?;
    check_policy(vault, txn, policy, &item, now)?;
    let key = order_key(vault, &item);
    let mut envelope = Envelope::new(item, now);
    envelope.order_key = key;
    envelope.expires = expires;
    queue::enqueue(txn, &WA_OUTBOX, &envelope)?;
    Ok(())
}

/// Queues one message durably; returns once it is on disk. A number that
/// cannot be a mobile gets its feed event committed and
/// [`OutboxError::Unreachable`].
pub async fn enqueue(
    vault: &Vault,
    item: WaItem,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), OutboxError> {
    enqueue_with_policy(vault, vault.wa_policy(), item, now, expires).await
}

/// [`enqueue`] against `policy`. A message the policy refuses gets its
/// `policy-blocked` event and audit entry committed and
/// [`OutboxError::PolicyBlocked`].
pub async fn enqueue_with_policy(
    vault: &Vault,
    policy: std::sync::Arc<super::policy::Policy>,
    item: WaItem,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), OutboxError> {
    vault
        .write(move |v| {
            let mut txn = Txn::new(now);
            match stage_with_policy(v, &mut txn, &policy, item, now, expires) {
                // The event is in txn: commit it, then tell the caller.
                Err(e @ OutboxError::Unreachable { .. }) => Ok((txn, Err(e))),
                Err(e @ OutboxError::PolicyBlocked(_)) => Ok((txn, Err(e))),
                Err(e) => Err(e),
                Ok(()) => Ok((txn, Ok(()))),
            }
        })
        .await
        .and_then(|c| c.value)
}

/// Queues many messages in one durable commit (a reminder run): one flush
/// for the lot. Returns once they are on disk. A message to a number that
/// cannot be a mobile is left out with its feed event (one landline does
/// not hold back a whole run); any other error queues nothing.
pub async fn enqueue_many(
    vault: &Vault,
    items: Vec<(WaItem, Option<Timestamp>)>,
    now: Timestamp,
) -> Result<(), OutboxError> {
    vault
        .write(move |v| {
            let mut txn = Txn::new(now);
            for (item, expires) in items {
                match stage(v, &mut txn, item, now, expires) {
                    Ok(())
                    | Err(OutboxError::Unreachable { .. })
                    | Err(OutboxError::PolicyBlocked(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, OutboxError>((txn, ()))
        })
        .await
        .map(|c| c.value)
}

/// Stages the sent record for `envelope`.
pub fn stage_sent(
    txn: &mut Txn,
    seq: u64,
    envelope: &Envelope<WaItem>,
    wamid: String,
    wa_id: Option<String>,
    dry_run: bool,
    now: Timestamp,
) -> VaultResult<()> {
    let item = &envelope.item;
    let record = SentRecord {
        outbox_seq: seq,
        wamid,
        wa_id,
        kind: item.message.kind,
        template: item.message.template.as_ref().map(|t| t.0.clone()),
        patient: item.patient,
        reference: item.reference.clone(),
        enqueued_at: envelope.enqueued_at,
        sent_at: now,
        attempts: envelope.attempts.saturating_add(1),
        dry_run,
        media_id: super::media::media_id_of(item),
    };
    let owner = item.patient.map_or(Owner::System, Owner::Patient);
    txn.append_json(Tree::WaSent, owner, &record)
}

/// The sent records, oldest first (records of erased patients are skipped).
pub fn sent(vault: &Vault) -> VaultResult<Vec<SentRecord>> {
    let mut out = Vec::new();
    for r in vault.scan_raw(Tree::WaSent) {
        let (_, opened) = r?;
        if let Ok(bytes) = opened {
            if let Ok(rec) = serde_json::from_slice::<SentRecord>(&bytes) {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// One line of `outbox list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub seq: u64,
    pub state: &'static str,
    pub kind: Kind,
    pub template: Option<String>,
    /// The patient's pseudonym (never the number).
    pub patient: Option<PatientId>,
    pub at: Timestamp,
    pub attempts: u32,
    pub wamid: Option<String>,
    /// The message as it will be sent (PHI): only from [`list_with_content`],
    /// and only for messages still queued (a sent message's content is not
    /// kept).
    pub content: Option<serde_json::Value>,
}

/// Queued and sent messages, newest first, at most `limit`.
pub fn list(vault: &Vault, limit: usize) -> VaultResult<Vec<Listed>> {
    list_inner(vault, limit, false)
}

/// [`list`] with the content of the queued messages. The caller audits
/// the read (it shows PHI).
pub fn list_with_content(vault: &Vault, limit: usize) -> VaultResult<Vec<Listed>> {
    list_inner(vault, limit, true)
}

fn list_inner(vault: &Vault, limit: usize, with_content: bool) -> VaultResult<Vec<Listed>> {
    let mut out = Vec::new();
    for r in vault.scan_raw(Tree::WaOutbox) {
        let (key, opened) = r?;
        let seq = <[u8; 8]>::try_from(key.as_slice()).map_or(0, u64::from_be_bytes);
        let Ok(bytes) = opened else { continue };
        let Ok(e) = serde_json::from_slice::<Envelope<WaItem>>(&bytes) else {
            continue;
        };
        out.push(Listed {
            seq,
            state: if e.attempts > 0 { "retrying" } else { "queued" },
            kind: e.item.message.kind,
            template: e.item.message.template.map(|t| t.0),
            patient: e.item.patient,
            at: e.enqueued_at,
            attempts: e.attempts,
            wamid: None,
            content: with_content.then(|| e.item.message.payload.clone()),
        });
    }
    for rec in sent(vault)? {
        out.push(Listed {
            seq: rec.outbox_seq,
            state: if rec.dry_run { "dry-run" } else { "sent" },
            kind: rec.kind,
            template: rec.template,
            patient: rec.patient,
            at: rec.sent_at,
            attempts: rec.attempts,
            wamid: Some(rec.wamid),
            content: None,
        });
    }
    out.sort_by_key(|l| std::cmp::Reverse(l.seq));
    out.truncate(limit);
    Ok(out)
}
