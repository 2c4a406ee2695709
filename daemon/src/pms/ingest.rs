//! The inbound door: one MLLP frame in, one ACK out.
//!
//! parse → map (MSH-9 decides) → one durable vault transaction, guarded by
//! the idempotency key (sender + MSH-10) → AA. A content error is AE with an
//! ERR segment; an unreadable or unsupported message is AR. A repeated
//! MSH-10 from the same sender gets AA again and changes nothing.

use super::hl7::{self, AckCode, AckError, Message};
use super::listener::FrameHandler;
use super::map::{self, MapContext, MappingConfig, Rejection};
use super::mllp::Incoming;
use crate::clock::SharedClock;
use crate::commands::{self, Applied, CommandError, KeyReuse, Origin};
use crate::logging::clean;
use crate::vault::Vault;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{debug, error, info, warn};

/// How we name ourselves in ACKs (MSH-3/MSH-4).
#[derive(Debug, Clone)]
pub struct Identity {
    pub application: String,
    pub facility: String,
}

pub struct Ingest {
    vault: Vault,
    clock: SharedClock,
    mapping: Arc<MappingConfig>,
    identity: Identity,
    max_message_bytes: usize,
    next_control_id: AtomicU64,
    /// Unix seconds of the last message accepted (for `status`).
    last_message_at: AtomicI64,
    /// How long a control id is remembered (service.idempotency_retention).
    key_retention: jiff::SignedDuration,
}

impl Ingest {
    pub fn new(
        vault: Vault,
        clock: SharedClock,
        mapping: Arc<MappingConfig>,
        identity: Identity,
        max_message_bytes: usize,
    ) -> Self {
        // ACK control ids must not repeat across restarts: start from the clock.
        let seed = u64::try_from(clock.now().as_millisecond()).unwrap_or_default();
        Self {
            vault,
            clock,
            mapping,
            identity,
            max_message_bytes,
            next_control_id: AtomicU64::new(seed),
            last_message_at: AtomicI64::new(0),
            key_retention: commands::DEFAULT_KEY_RETENTION,
        }
    }

    /// Remembers control ids for `retention` instead of the default.
    pub fn with_key_retention(mut self, retention: jiff::SignedDuration) -> Self {
        self.key_retention = retention;
        self
    }

    pub fn last_message_at(&self) -> Option<jiff::Timestamp> {
        let s = self.last_message_at.load(Ordering::Relaxed);
        (s > 0)
            .then(|| jiff::Timestamp::from_second(s).ok())
            .flatten()
    }

    fn control_id(&self) -> String {
        format!("CR{}", self.next_control_id.fetch_add(1, Ordering::Relaxed))
    }

    fn ack(&self, original: &Message, code: AckCode, error: Option<&AckError>) -> Vec<u8> {
        hl7::ack(
            original,
            code,
            error,
            self.clock.now(),
            &self.identity.application,
            &self.identity.facility,
            &self.control_id(),
        )
    }

    fn reject_unreadable(&self, bytes: &[u8], error: &AckError) -> Vec<u8> {
        match hl7::parse_header(bytes) {
            Ok(header) => self.ack(&header, AckCode::Reject, Some(error)),
            Err(_) => hl7::ack_unparsed(
                error,
                self.clock.now(),
                &self.identity.application,
                &self.identity.facility,
                &self.control_id(),
            ),
        }
    }

    /// Handles one message's bytes and returns the ACK bytes.
    pub async fn process(&self, bytes: &[u8]) -> Vec<u8> {
        let msg = match hl7::parse_with_limit(bytes, self.max_message_bytes) {
            Ok(m) => m,
            Err(e) => {
                info!(reason = %clean(&e.to_string()), "HL7 message rejected (AR)");
                return self.reject_unreadable(bytes, &AckError::new(102, e.to_string()));
            }
        };
        let kind = msg
            .message_type()
            .map(|t| format!("{}^{}", t.code, t.trigger))
            .unwrap_or_default();
        // Training (T) and debugging (D) messages must not change live data,
        // unless this installation is a test system (`pms.processing_ids`).
        // An empty MSH-11 counts as P.
        let processing = msg
            .processing_id()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or("P");
        let accepted = &self.mapping.processing_ids;
        if !accepted.iter().any(|p| p.eq_ignore_ascii_case(processing)) {
            let text = if accepted.len() == 1 && accepted.iter().all(|p| p == "P") {
                "this system accepts production messages only (MSH-11 = P)".to_owned()
            } else {
                format!(
                    "this system accepts MSH-11 = {} only (pms.processing_ids)",
                    accepted.join(", ")
                )
            };
            let err = AckError::new(202, text).at("MSH", 11);
            info!(message_type = %clean(&kind), "HL7 message with a processing id not in pms.processing_ids refused (AR)");
            return self.ack(&msg, AckCode::Reject, Some(&err));
        }
        let now = self.clock.now();
        let ctx = MapContext {
            vault: &self.vault,
            config: &self.mapping,
            now,
        };
        let commands = match map::map(&msg, &ctx) {
            Ok(c) => c,
            Err(Rejection { code, error }) => {
                info!(message_type = %clean(&kind), code = code.as_str(), reason = %clean(&error.text), "HL7 message not applied");
                return self.ack(&msg, code, Some(&error));
            }
        };
        let sender = format!(
            "{}|{}",
            msg.sending_application().unwrap_or_default(),
            msg.sending_facility().unwrap_or_default()
        );
        let control_id = msg.control_id().unwrap_or_default();
        // Senders recycle control ids (counters reset, engines reinstalled):
        // the same id with other content is a new message, applied and logged.
        let origin = Origin::new(format!("pms:{sender}")).with_key(
            self.vault
                .blind_index("hl7-control-id", &format!("{sender}\u{1f}{control_id}"))
                .to_vec(),
            KeyReuse::Reapply,
        );
        let origin = Origin {
            key_retention: self.key_retention,
            ..origin
        };
        match commands::apply(&self.vault, commands, origin, now).await {
            Ok(Applied::Done) => {
                self.last_message_at
                    .store(now.as_second(), Ordering::Relaxed);
                debug!(message_type = %clean(&kind), "HL7 message applied");
                self.ack(&msg, AckCode::Accept, None)
            }
            Ok(Applied::Duplicate | Applied::KeyConflict) => {
                info!(message_type = %clean(&kind), "repeated HL7 message acknowledged again, not applied twice");
                self.ack(&msg, AckCode::Accept, None)
            }
            Err(CommandError::UnknownPatient(id)) => {
                let err = AckError::new(204, format!("unknown patient {id}")).at("PID", 3);
                self.ack(&msg, AckCode::Error, Some(&err))
            }
            // HL7 never carries conversation or dead-letter commands.
            Err(e @ (CommandError::Conversation(_) | CommandError::DeadLetter(_))) => {
                let err = AckError::new(207, format!("application internal error: {e}"));
                self.ack(&msg, AckCode::Error, Some(&err))
            }
            Err(CommandError::Vault(e)) => {
                // Not stored. AR rather than AE: engines treat AE as final,
                // and this message must be sent again.
                error!(message_type = %clean(&kind), error = %clean(&e.to_string()), "HL7 message could not be stored");
                let err = AckError::new(
                    207,
                    "application internal error: the message was not stored; send it again",
                );
                self.ack(&msg, AckCode::Reject, Some(&err))
            }
        }
    }
}

impl FrameHandler for Ingest {
    async fn handle(&self, frame: Incoming, peer: SocketAddr) -> Vec<u8> {
        match frame {
            Incoming::Message(bytes) => self.process(&bytes).await,
            Incoming::Oversized { head, len } => {
                warn!(peer = %peer.ip(), len, limit = self.max_message_bytes, "HL7 message over the size limit rejected (AR)");
                let err = AckError::new(
                    102,
                    format!("message of {len} bytes exceeds the limit of {} bytes (pms.max_message_bytes)", self.max_message_bytes),
                );
                self.reject_unreadable(&head, &err)
            }
        }
    }
}
