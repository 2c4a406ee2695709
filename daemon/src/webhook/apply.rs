//! A verified, parsed webhook call as the core applies it: one
//! [`Command::Webhook`](crate::commands::Command) per POST, staged on the
//! vault's writer so that its dedupe reads and its commit are atomic.
//!
//! Records live in [`Tree::Webhook`] under one-byte prefixes:
//! - `1 ‖ blind(wamid)`: an inbound message, sealed under the sender's
//!   patient key (or a bare "seen" marker under the system key when the
//!   sender matches no patient, see below);
//! - `2 ‖ blind(wamid)`: the delivery state of a message we sent, with the
//!   set of states already seen (dedupe by (wamid, status));
//! - `3 ‖ patient id`: the patient's last inbound message time (the 24-hour
//!   customer-service window);
//! - `4 ‖ blind(business-scoped user id)`: the patient it belongs to, learnt
//!   when a message or status carried both a number and that id, so that a
//!   later message with only the user id still finds the patient.
//!
//! **Unknown senders**: a message whose sender matches no patient (or more
//! than one: a shared family phone) is not stored. There is no patient key
//! to seal it under, and no consent to process it; the feed gets a
//! `message-received` event without a patient (`matched=false`) so the
//! clinic knows someone wrote, and the wamid is remembered so Meta's
//! retries are not reported again. With `[conversations]` on, the message
//! goes to the conversation of that number (or business-scoped id), sealed
//! under the system key, so that staff can answer it (`care::conversation`).

use super::payload::{Content, Notification, StatusKind};
use crate::model::{Event, EventKind, PatientId};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use crate::whatsapp::in_doubt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

pub(crate) const P_MESSAGE: u8 = 1;
pub(crate) const P_STATUS: u8 = 2;
const P_LAST_INBOUND: u8 = 3;
const P_USER: u8 = 4;

/// One webhook call, reduced to what is applied. Built from a parsed
/// [`Notification`]; `Debug` shows counts only (the content is PHI).
#[derive(Clone, Default, Serialize)]
pub struct Batch {
    pub messages: Vec<Inbound>,
    pub statuses: Vec<StatusUpdate>,
    /// Account-level error codes.
    pub errors: Vec<i64>,
    /// (wa_id, business-scoped user id) pairs from `contacts`.
    pub contacts: Vec<(String, String)>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Batch {{ messages: {}, statuses: {}, errors: {} }}",
            self.messages.len(),
            self.statuses.len(),
            self.errors.len()
        )
    }
}

#[derive(Clone, Serialize)]
pub struct Inbound {
    pub wamid: String,
    pub from: Option<String>,
    pub from_user_id: Option<String>,
    pub time: Option<Timestamp>,
    pub content: Content,
    pub error_codes: Vec<i64>,
}

#[derive(Clone, Serialize)]
pub struct StatusUpdate {
    pub wamid: String,
    /// None: a state this daemon does not know (ignored, logged).
    pub status: Option<StatusKind>,
    pub time: Option<Timestamp>,
    pub recipient: Option<String>,
    pub recipient_user_id: Option<String>,
    /// The outbox item the send named (`whatsapp::in_doubt`), if ours.
    pub outbox_seq: Option<u64>,
    pub error_codes: Vec<i64>,
}

impl Batch {
    pub fn from_notification(n: Notification) -> Batch {
        let mut batch = Batch::default();
        for change in n.entry.into_iter().flat_map(|e| e.changes) {
            let value = change.value;
            for c in value.contacts {
                if let (Some(wa), Some(user)) = (c.wa_id, c.user_id) {
                    batch.contacts.push((wa, user));
                }
            }
            for m in value.messages {
                if m.id.is_empty() {
                    continue;
                }
                batch.messages.push(Inbound {
                    content: m.content(),
                    time: super::payload::parse_time(&m.timestamp),
                    error_codes: m.errors.iter().map(|e| e.code).collect(),
                    wamid: m.id,
                    from: m.from,
                    from_user_id: m.from_user_id,
                });
            }
            for s in value.statuses {
                if s.id.is_empty() {
                    continue;
                }
                batch.statuses.push(StatusUpdate {
                    status: StatusKind::parse(&s.status),
                    time: super::payload::parse_time(&s.timestamp),
                    error_codes: s.errors.iter().map(|e| e.code).collect(),
                    wamid: s.id,
                    recipient: s.recipient_id,
                    recipient_user_id: s.recipient_user_id,
                    outbox_seq: s
                        .biz_opaque_callback_data
                        .as_deref()
                        .and_then(crate::whatsapp::in_doubt::parse),
                });
            }
            batch.errors.extend(value.errors.iter().map(|e| e.code));
        }
        batch
    }

    /// Appends `other`'s items (a group of calls applied as one job).
    pub fn extend(&mut self, other: Batch) {
        self.messages.extend(other.messages);
        self.statuses.extend(other.statuses);
        self.errors.extend(other.errors);
        self.contacts.extend(other.contacts);
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.statuses.is_empty() && self.errors.is_empty()
    }
}

/// An inbound message as sealed under the patient's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboundRecord {
    pub patient: Option<PatientId>,
    /// Meta's time for the message, else the time it was received.
    pub at: Timestamp,
    /// None for a sender that matched no patient (nothing is kept).
    pub content: Option<Content>,
}

/// The delivery state of one outbound message (system key: no PHI).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusRecord {
    pub state: StatusKind,
    /// Every state seen, one bit each ([`StatusKind::bit`]).
    pub seen: u8,
    pub at: Timestamp,
    pub patient: Option<PatientId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

impl Vault {
    fn wamid_key(&self, prefix: u8, wamid: &str) -> Vec<u8> {
        key(prefix, &self.blind_index("wa-message", wamid))
    }

    /// A PHI-free reference to a message on the feed (a wamid encodes the
    /// phone number): the outbox, which knows the wamid, computes the same.
    pub fn wa_message_ref(&self, wamid: &str) -> String {
        let bi = self.blind_index("wa-ref", wamid);
        hex::encode(bi.get(..12).unwrap_or_default())
    }

    /// When the patient last wrote to us on WhatsApp (the 24-hour window
    /// for free-form messages runs from here).
    pub fn wa_last_inbound(&self, patient: PatientId) -> VaultResult<Option<Timestamp>> {
        tolerate_erased(self.get_json(Tree::Webhook, &key(P_LAST_INBOUND, &patient.0)))
    }

    /// The delivery state recorded for an outbound message.
    pub fn wa_status(&self, wamid: &str) -> VaultResult<Option<StatusRecord>> {
        self.get_json(Tree::Webhook, &self.wamid_key(P_STATUS, wamid))
    }

    /// An inbound message by its wamid (None when unknown, erased, or from
    /// an unknown sender: then only the fact that it came is kept).
    pub fn wa_inbound(&self, wamid: &str) -> VaultResult<Option<InboundRecord>> {
        tolerate_erased(self.get_json(Tree::Webhook, &self.wamid_key(P_MESSAGE, wamid)))
    }

    /// The one live patient with this WhatsApp number (digits, as Meta
    /// writes `wa_id`), or with this business-scoped user id.
    fn wa_patient(&self, wa_id: Option<&str>, user_id: Option<&str>) -> VaultResult<Lookup> {
        if let Some(digits) = wa_id.filter(|d| !d.is_empty()) {
            let as_given = if digits.starts_with('+') {
                digits.to_owned()
            } else {
                format!("+{digits}")
            };
            // A valid id is the stored E.164 already: one index lookup, no
            // parse on the writer. Only Meta's Mexican and Brazilian forms
            // differ from the libphonenumber form the PMS's numbers were
            // stored in; an id in neither form is not parsed at all.
            let mut found = self.find_patients_by_phone(&as_given)?;
            if found.is_empty() {
                if let Some(e164) = crate::pms::phone::wa_id_alternative(digits) {
                    if e164 != as_given {
                        found = self.find_patients_by_phone(&e164)?;
                    }
                }
            }
            match found.as_slice() {
                [one] => return Ok(Lookup::One(*one)),
                [] => {}
                _ => return Ok(Lookup::Ambiguous),
            }
        }
        if let Some(user) = user_id.filter(|u| !u.is_empty()) {
            let k = key(P_USER, &self.blind_index("wa-user", user));
            if let Some(bytes) = tolerate_erased(self.get(Tree::Webhook, &k))? {
                if let Ok(id) = <[u8; 16]>::try_from(bytes.as_slice()) {
                    let id = PatientId(id);
                    if self.has_patient_key(id) {
                        return Ok(Lookup::One(id));
                    }
                }
            }
        }
        Ok(Lookup::None)
    }
}

enum Lookup {
    One(PatientId),
    None,
    Ambiguous,
}

/// A record sealed under an erased patient's key reads as absent.
fn tolerate_erased<T>(r: VaultResult<Option<T>>) -> VaultResult<Option<T>> {
    match r {
        Err(VaultError::KeyUnavailable { .. }) => Ok(None),
        other => other,
    }
}

/// Whether a record exists under `key`, readable or not (one sealed under
/// an erased patient's key still counts as seen).
fn exists(vault: &Vault, key: &[u8]) -> VaultResult<bool> {
    match vault.get(Tree::Webhook, key) {
        Ok(v) => Ok(v.is_some()),
        Err(VaultError::KeyUnavailable { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Where to answer a sender who matches no single patient: their number
/// as Meta wrote it, else their business-scoped user id.
fn unknown_contact(
    wa_id: Option<&str>,
    user_id: Option<&str>,
) -> Option<crate::whatsapp::message::Recipient> {
    use crate::whatsapp::message::Recipient;
    wa_id
        .and_then(|d| Recipient::phone(&format!("+{}", d.trim_start_matches('+'))).ok())
        .or_else(|| user_id.and_then(|u| Recipient::bsuid(u).ok()))
}

/// A reply id or code fit for the feed: short printable ASCII only (the
/// sender controls it).
fn feed_safe(s: &str) -> Option<String> {
    (!s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

fn event(kind: EventKind, now: Timestamp, patient: Option<PatientId>) -> Event {
    Event {
        kind,
        time: now,
        patient,
        appointment: None,
        slot: None,
        details: BTreeMap::new(),
    }
}

/// Stages `batch` into `txn` (on the writer): what was seen before, here or
/// earlier in the same batch, is skipped; statuses only move forwards.
pub fn stage(vault: &Vault, txn: &mut Txn, batch: &Batch, now: Timestamp) -> VaultResult<()> {
    let mut seen_messages: HashSet<Vec<u8>> = HashSet::new();
    let mut statuses: HashMap<Vec<u8>, StatusRecord> = HashMap::new();
    let mut last_inbound: HashMap<PatientId, Timestamp> = HashMap::new();
    let mut users: HashSet<Vec<u8>> = HashSet::new();
    let mut learn = |txn: &mut Txn, user: &str, patient: PatientId| -> VaultResult<()> {
        let k = key(P_USER, &vault.blind_index("wa-user", user));
        if users.insert(k.clone()) && !exists(vault, &k)? {
            txn.put(
                Tree::Webhook,
                k,
                Owner::Patient(patient),
                patient.0.to_vec(),
            );
        }
        Ok(())
    };

    // Reminder taps and opt-out keywords (`care`), after each message's event.
    let mut care = crate::care::shell::Session::default();
    for m in &batch.messages {
        let mut tap: Option<(PatientId, Timestamp)> = None;
        let mut stranger: Option<crate::whatsapp::message::Recipient> = None;
        let k = vault.wamid_key(P_MESSAGE, &m.wamid);
        if !seen_messages.insert(k.clone()) || exists(vault, &k)? {
            continue;
        }
        let user = m.from_user_id.as_deref().or_else(|| {
            let from = m.from.as_deref()?;
            batch
                .contacts
                .iter()
                .find(|(wa, _)| wa == from)
                .map(|(_, u)| u.as_str())
        });
        let at = m.time.unwrap_or(now);
        let mut ev;
        match vault.wa_patient(m.from.as_deref(), user)? {
            Lookup::One(patient) => {
                let record = InboundRecord {
                    patient: Some(patient),
                    at,
                    content: Some(m.content.clone()),
                };
                txn.put_json(Tree::Webhook, k, Owner::Patient(patient), &record)?;
                // Media is fetched after this commit (durably queued here).
                super::media::stage_inbound(vault, txn, patient, &m.wamid, &m.content, at, now)?;
                let latest = match last_inbound.get(&patient) {
                    Some(t) => Some(*t),
                    None => vault.wa_last_inbound(patient)?,
                };
                if latest.is_none_or(|t| at > t) {
                    last_inbound.insert(patient, at);
                }
                if let (Some(user), Some(_)) = (user, m.from.as_deref()) {
                    learn(txn, user, patient)?;
                }
                ev = event(EventKind::MessageReceived, now, Some(patient));
                tap = Some((patient, at));
                if let Some(id) = m.content.reply_id().and_then(feed_safe) {
                    ev.details.insert("reply_id".to_owned(), id);
                }
            }
            found => {
                let record = InboundRecord {
                    patient: None,
                    at,
                    content: None,
                };
                txn.put_json(Tree::Webhook, k, Owner::System, &record)?;
                ev = event(EventKind::MessageReceived, now, None);
                ev.details.insert("matched".to_owned(), "false".to_owned());
                stranger = unknown_contact(m.from.as_deref(), user);
                if matches!(found, Lookup::Ambiguous) {
                    ev.details
                        .insert("reason".to_owned(), "several-patients".to_owned());
                }
            }
        }
        ev.details
            .insert("type".to_owned(), m.content.kind().to_owned());
        ev.details
            .insert("ref".to_owned(), vault.wa_message_ref(&m.wamid));
        if let Some(code) = m.error_codes.first() {
            ev.details.insert("error_code".to_owned(), code.to_string());
        }
        vault.stage_event(txn, &ev)?;
        if let Some((patient, at)) = tap {
            let r = vault.wa_message_ref(&m.wamid);
            crate::care::shell::on_inbound(vault, txn, &mut care, patient, &m.content, r, at, now)?;
        } else if let Some(to) = stranger {
            // With conversations on, staff can answer someone the clinic
            // does not know (sealed under the system key, purged after the
            // retention); off, nothing of the message is kept.
            use crate::care::conversation::{shell, Contact};
            let r = vault.wa_message_ref(&m.wamid);
            let (c, at) = (Contact::Unknown(to), m.time.unwrap_or(now));
            shell::on_message(vault, txn, c, &m.content, r, at, shell::Heard::Bot, now)?;
        }
    }
    for (patient, at) in last_inbound {
        txn.put_json(
            Tree::Webhook,
            key(P_LAST_INBOUND, &patient.0),
            Owner::Patient(patient),
            &at,
        )?;
    }

    let mut reconciled: HashSet<u64> = HashSet::new();
    let mut tracked_now: HashSet<String> = HashSet::new();
    for s in &batch.statuses {
        let Some(kind) = s.status else {
            tracing::debug!("a status of a kind this daemon does not know is ignored");
            continue;
        };
        let k = vault.wamid_key(P_STATUS, &s.wamid);
        let previous = match statuses.get(&k) {
            Some(r) => Some(r.clone()),
            None => vault.get_json::<StatusRecord>(Tree::Webhook, &k)?,
        };
        if previous.as_ref().is_some_and(|r| r.seen & kind.bit() != 0) {
            continue; // (wamid, status) seen before: a retry
        }
        // A send cut off before its answer (a crash) is settled by the
        // first status that names it, in this commit: not sent again.
        if let Some(seq) = s.outbox_seq.filter(|q| !reconciled.contains(q)) {
            let r = in_doubt::reconcile(vault, txn, seq, &s.wamid, s.recipient.as_deref(), now)?;
            if let in_doubt::Reconciled::Sent { kpi_tracked } = r {
                reconciled.insert(seq);
                if kpi_tracked {
                    tracked_now.insert(s.wamid.clone());
                }
            }
        }
        if kind >= StatusKind::Delivered {
            // A delivered document's upload is deleted at Meta now.
            crate::whatsapp::media::stage_delivered(vault, txn, &s.wamid, now)?;
        }
        let seen_before = previous.as_ref().map_or(0, |r| r.seen);
        let tracked = tracked_now.contains(&s.wamid);
        crate::kpi::on_status(vault, txn, &s.wamid, kind, seen_before, tracked, now)?;
        let at = s.time.unwrap_or(now);
        let error_code = s.error_codes.first().copied();
        let record = match previous {
            Some(mut r) => {
                r.seen |= kind.bit();
                if kind > r.state {
                    r.state = kind;
                    r.at = at;
                    r.error_code = error_code.filter(|_| kind == StatusKind::Failed);
                }
                if r.patient.is_none() {
                    if let Lookup::One(p) =
                        vault.wa_patient(s.recipient.as_deref(), s.recipient_user_id.as_deref())?
                    {
                        r.patient = Some(p);
                    }
                }
                r
            }
            None => {
                let patient = match vault
                    .wa_patient(s.recipient.as_deref(), s.recipient_user_id.as_deref())?
                {
                    Lookup::One(p) => Some(p),
                    _ => None,
                };
                StatusRecord {
                    state: kind,
                    seen: kind.bit(),
                    at,
                    patient,
                    error_code: error_code.filter(|_| kind == StatusKind::Failed),
                }
            }
        };
        let advanced = record.state == kind;
        if let (Some(p), Some(user), Some(_)) = (
            record.patient,
            s.recipient_user_id.as_deref(),
            s.recipient.as_deref(),
        ) {
            learn(txn, user, p)?;
        }
        if advanced {
            // Only a move forwards reaches the feed: a late `delivered`
            // after `read` is recorded as seen and says nothing new.
            let mut ev = event(EventKind::MessageStatus, now, record.patient);
            ev.details
                .insert("status".to_owned(), kind.name().to_owned());
            ev.details
                .insert("ref".to_owned(), vault.wa_message_ref(&s.wamid));
            if let Some(code) = record.error_code {
                ev.details.insert("error_code".to_owned(), code.to_string());
            }
            vault.stage_event(txn, &ev)?;
        }
        statuses.insert(k, record);
    }
    for (k, record) in statuses {
        txn.put_json(Tree::Webhook, k, Owner::System, &record)?;
    }

    for code in &batch.errors {
        let mut ev = event(EventKind::WhatsappError, now, None);
        ev.details.insert("error_code".to_owned(), code.to_string());
        vault.stage_event(txn, &ev)?;
    }
    Ok(())
}
