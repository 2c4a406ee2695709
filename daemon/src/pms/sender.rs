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
use crate::clock::SharedClock;
use crate::queue::{self, Next, Outcome, Settled, PMS_OUTBOX};
use crate::vault::Vault;
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

/// What one pass over the queue came to.
enum Step {
    /// A message left the queue (or was dropped): look again at once.
    Progress,
    /// Nothing is queued.
    Idle,
    /// The next message is due then.
    WaitUntil(jiff::Timestamp),
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
        // Back-off for our own failures (the vault could not record an
        // outcome); delivery back-off is stored with each item.
        let mut storage_backoff = Duration::from_secs(1);
        let mut retry_now = false;
        loop {
            if *stop.borrow() {
                return;
            }
            // A stop interrupts a delivery in flight (a slow or silent PMS
            // must not hold up shutdown). The message stays queued and is
            // sent again after the restart: delivery is at-least-once, and
            // the PMS deduplicates on MSH-10.
            let step = tokio::select! {
                _ = stop.changed() => return,
                step = self.step(retry_now) => step,
            };
            retry_now = false;
            let wait = match step {
                Ok(Step::Progress) => {
                    storage_backoff = Duration::from_secs(1);
                    continue;
                }
                Ok(Step::Idle) => None,
                Ok(Step::WaitUntil(due)) => Some(
                    Duration::try_from(due.duration_since(self.clock.now()))
                        .unwrap_or(Duration::ZERO),
                ),
                Err(why) => {
                    warn!(reason = %why, retry_in_s = storage_backoff.as_secs(), "the PMS outbox could not be worked; will retry");
                    let w = storage_backoff;
                    storage_backoff = (storage_backoff * 2).min(MAX_BACKOFF);
                    Some(w)
                }
            };
            let signal = self.vault.outbox_signal();
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.handle.kick.notified() => retry_now = true,
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

    /// Works the queue once: finds the next due message (the writer drops
    /// what must not stay on the way), delivers it, and records the outcome.
    async fn step(&mut self, retry_now: bool) -> Result<Step, String> {
        let now = self.clock.now();
        let next = self
            .vault
            .write(move |v| queue::take_next::<Outgoing>(v, &PMS_OUTBOX, now, retry_now))
            .await
            .map_err(|e| e.to_string())?
            .value;
        let (seq, envelope) = match next {
            Next::Item { seq, envelope } => (seq, envelope),
            Next::WaitUntil(due) => return Ok(Step::WaitUntil(due)),
            Next::Empty => return Ok(Step::Idle),
        };
        let msg = envelope.item;
        let outcome = self.deliver(&msg).await;
        let now = self.clock.now();
        let recorded = outcome.clone();
        let settled = self
            .vault
            .write(move |v| queue::settle::<Outgoing>(v, &PMS_OUTBOX, seq, &recorded, now))
            .await
            .map_err(|e| e.to_string())?
            .value;
        match (&outcome, settled) {
            (queue::Outcome::Retry(reason), Settled::RetryAt(due)) => {
                warn!(message = %msg.kind, reason = %crate::logging::clean(reason), attempts = envelope.attempts + 1, "PMS delivery failed; will retry");
                return Ok(Step::WaitUntil(due));
            }
            (_, Settled::DeadLettered) => {
                warn!(message = %msg.kind, "PMS refused message (AE): moved to dead letters")
            }
            (_, Settled::Removed) => info!(message = %msg.kind, "PMS accepted message (AA)"),
            _ => {}
        }
        self.handle.processed.send_modify(|n| *n += 1);
        Ok(Step::Progress)
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
                    "AA" | "CA" => Outcome::Delivered,
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
