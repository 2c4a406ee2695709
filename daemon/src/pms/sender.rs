//! Delivers the PMS outbox over MLLP, strictly in order.
//!
//! The head of the queue is sent and its ACK awaited: AA removes it; AE is
//! permanent (the PMS understood and refused), so it moves to the dead
//! letters with an event on the feed; AR, a timeout or a connection error
//! leave it at the head and retry with back-off (1 s doubling to 5 min).
//! A new message, or a `kick`, wakes the sender at once.

use super::hl7;
use super::mllp::{self, Incoming};
use super::outbound::Outgoing;
use crate::audit::AuditDraft;
use crate::clock::SharedClock;
use crate::model::{Event, EventKind};
use crate::vault::{Owner, Tree, Txn, Vault, VaultError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// `host:port` of the PMS's MLLP listener.
    pub endpoint: String,
    pub timeout: Duration,
}

/// Lets others wake the sender (an admin "retry now", tests) and watch it.
#[derive(Debug, Clone)]
pub struct SenderHandle {
    kick: Arc<Notify>,
    /// How many messages left the queue (accepted or dead-lettered).
    processed: watch::Sender<u64>,
}

impl SenderHandle {
    fn new() -> Self {
        Self {
            kick: Arc::new(Notify::new()),
            processed: watch::channel(0).0,
        }
    }

    /// Retry the head of the queue now instead of after the back-off.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Resolves once `n` messages in total have left the queue since start.
    pub async fn processed_at_least(&self, n: u64) {
        let mut rx = self.processed.subscribe();
        let _ = rx.wait_for(|done| *done >= n).await;
    }
}

enum Outcome {
    Accepted,
    Refused(String),
    Retry(String),
}

type Connection = (
    BufReader<tokio::io::ReadHalf<TcpStream>>,
    tokio::io::WriteHalf<TcpStream>,
);

pub struct Sender {
    vault: Vault,
    clock: SharedClock,
    config: SenderConfig,
    handle: SenderHandle,
    connection: Option<Connection>,
}

impl Sender {
    pub fn new(vault: Vault, clock: SharedClock, config: SenderConfig) -> (Self, SenderHandle) {
        let handle = SenderHandle::new();
        let sender = Self {
            vault,
            clock,
            config,
            handle: handle.clone(),
            connection: None,
        };
        (sender, handle)
    }

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            if *stop.borrow() {
                return;
            }
            // A stop interrupts a delivery in flight (a slow or silent PMS
            // must not hold up shutdown). The message stays queued and is
            // sent again after the restart: delivery is at-least-once, and
            // the PMS deduplicates on MSH-10.
            let outcome = tokio::select! {
                _ = stop.changed() => return,
                outcome = self.step() => outcome,
            };
            let wait = match outcome {
                Ok(true) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Ok(false) => None,
                Err(why) => {
                    warn!(reason = %why, retry_in_s = backoff.as_secs(), "PMS delivery failed; will retry");
                    let w = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Some(w)
                }
            };
            let signal = self.vault.outbox_signal();
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.handle.kick.notified() => {}
                _ = signal.notified() => {}
                _ = async {
                    match wait {
                        Some(w) => tokio::time::sleep(w).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        }
    }

    /// Tries the head of the queue. Ok(true): progress, go on; Ok(false):
    /// the queue is empty; Err: retry later.
    async fn step(&mut self) -> Result<bool, String> {
        let Some((key, head)) = self
            .vault
            .first(Tree::PmsOutbox)
            .map_err(|e| e.to_string())?
        else {
            return Ok(false);
        };
        let mut msg: Outgoing = match head {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|_| "outbox entry does not decode".to_owned())?,
            Err(VaultError::KeyUnavailable { .. }) => {
                // The patient was erased: their message must not go out.
                let mut txn = Txn::new(self.clock.now());
                txn.remove(Tree::PmsOutbox, key);
                txn.audit(
                    AuditDraft::new("system", "pms.outbound.dropped")
                        .detail("reason", "patient erased"),
                );
                self.vault
                    .commit_async(txn)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(true);
            }
            Err(e) => return Err(e.to_string()),
        };
        let outcome = self.deliver(&msg).await;
        let now = self.clock.now();
        let mut txn = Txn::new(now);
        let owner = msg.patient.map_or(Owner::System, Owner::Patient);
        let action = match &outcome {
            Outcome::Retry(reason) => {
                msg.attempts += 1;
                msg.last_error = Some(reason.clone());
                txn.put_json(Tree::PmsOutbox, key, owner, &msg)
                    .map_err(|e| e.to_string())?;
                self.vault
                    .commit_async(txn)
                    .await
                    .map_err(|e| e.to_string())?;
                return Err(reason.clone());
            }
            Outcome::Accepted => "pms.outbound.accepted",
            Outcome::Refused(reason) => {
                msg.last_error = Some(reason.clone());
                txn.append_json(Tree::PmsDeadLetters, owner, &msg)
                    .map_err(|e| e.to_string())?;
                let mut details = std::collections::BTreeMap::new();
                details.insert("message".to_owned(), msg.kind.clone());
                details.insert("control_id".to_owned(), msg.control_id.clone());
                let event = Event {
                    kind: EventKind::PmsMessageRejected,
                    time: now,
                    patient: msg.patient,
                    appointment: None,
                    slot: None,
                    details,
                };
                txn.append_json(Tree::Events, Owner::System, &event)
                    .map_err(|e| e.to_string())?;
                "pms.outbound.rejected"
            }
        };
        // Accepted or refused for good: either way it leaves the queue.
        txn.remove(Tree::PmsOutbox, key);
        let mut audit = AuditDraft::new("system", action).detail("message", msg.kind.as_str());
        audit.subject = msg.patient.map(|p| p.to_string());
        txn.audit(audit);
        self.vault
            .commit_async(txn)
            .await
            .map_err(|e| e.to_string())?;
        match outcome {
            Outcome::Refused(_) => {
                warn!(message = %msg.kind, "PMS refused message (AE): moved to dead letters")
            }
            _ => info!(message = %msg.kind, "PMS accepted message (AA)"),
        }
        self.handle.processed.send_modify(|n| *n += 1);
        Ok(true)
    }

    async fn connect(&mut self) -> Result<&mut Connection, String> {
        if self.connection.is_none() {
            let stream = tokio::time::timeout(
                self.config.timeout,
                TcpStream::connect(&self.config.endpoint),
            )
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (r, w) = tokio::io::split(stream);
            self.connection = Some((BufReader::new(r), w));
            debug!(endpoint = %self.config.endpoint, "connected to the PMS");
        }
        self.connection
            .as_mut()
            .ok_or_else(|| "not connected".to_owned())
    }

    async fn deliver(&mut self, msg: &Outgoing) -> Outcome {
        let timeout = self.config.timeout;
        let result = async {
            let (reader, writer) = self.connect().await?;
            mllp::write_frame(writer, &msg.hl7)
                .await
                .map_err(|e| format!("send: {e}"))?;
            // Skip stale ACKs (of an earlier attempt) until ours arrives.
            for _ in 0..8 {
                let frame = tokio::time::timeout(timeout, mllp::read_frame(reader, 1 << 20))
                    .await
                    .map_err(|_| "no ACK within the timeout".to_owned())?
                    .map_err(|e| format!("receive: {e}"))?;
                let Some(Incoming::Message(bytes)) = frame else {
                    return Err("connection closed before the ACK".to_owned());
                };
                let ack = hl7::parse(&bytes).map_err(|e| format!("unreadable ACK: {e}"))?;
                let msa = ack
                    .segment("MSA")
                    .ok_or_else(|| "ACK without MSA".to_owned())?;
                if msa.text(2) != Some(msg.control_id.as_str()) {
                    continue;
                }
                // MSA-3 / ERR texts are the PMS's words and may quote patient
                // data: they go into the sealed dead letter, never into logs.
                let text = msa.text(3).unwrap_or_default().to_owned();
                return Ok(match msa.text(1).unwrap_or_default() {
                    "AA" | "CA" => Outcome::Accepted,
                    "AE" | "CE" => Outcome::Refused(format!("AE: {text}")),
                    other => Outcome::Retry(format!(
                        "the PMS answered {}",
                        other.chars().take(2).collect::<String>()
                    )),
                });
            }
            Err("no ACK for this message".to_owned())
        }
        .await;
        match result {
            Ok(outcome) => outcome,
            Err(why) => {
                self.connection = None;
                Outcome::Retry(why)
            }
        }
    }
}
