//! Sends the WhatsApp outbox: up to `concurrency` messages in flight, at
//! most one per recipient, paced by the [`Limiter`].
//!
//! Each answer is settled on the vault's writer: accepted → removed, with
//! the `wamid`/`wa_id` recorded; retryable (throttling, Meta's transient
//! codes, 5xx, timeouts, connection errors) → back in the queue after an
//! exponential back-off with jitter; permanent → dead letter plus a feed
//! event carrying Meta's code. A 190 (token expired or revoked) settles
//! nothing: the outbox pauses, nothing is dropped, and it resumes once the
//! token file changes (or on [`OutboxHandle::reload_token`], e.g. SIGHUP).
//!
//! In dry-run (no token configured) items are recorded as sent with
//! `dry_run = true` and no connection is ever made.

use super::client::{GraphClient, Token};
use super::config::WhatsappConfig;
use super::limiter::Limiter;
use super::outbox::{self, WaItem, WA_OUTBOX};
use crate::clock::SharedClock;
use crate::queue::{self, Envelope, Outcome, Settled};
use crate::vault::Vault;
use jiff::SignedDuration;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// Lets others wake the worker, reload the token and watch it.
#[derive(Debug, Clone)]
pub struct OutboxHandle {
    kick: Arc<Notify>,
    reload: Arc<Notify>,
    /// Messages that left the queue (sent, dry-run, dead-lettered).
    processed: watch::Sender<u64>,
    /// True while a rejected token holds the outbox.
    paused: watch::Sender<bool>,
    pub dry_run: bool,
}

impl OutboxHandle {
    /// Retry waiting items now instead of after their back-off.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Read the token file again now (SIGHUP).
    pub fn reload_token(&self) {
        self.reload.notify_one();
    }

    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn processed(&self) -> u64 {
        *self.processed.borrow()
    }

    pub async fn processed_at_least(&self, n: u64) {
        let mut rx = self.processed.subscribe();
        let _ = rx.wait_for(|done| *done >= n).await;
    }

    pub async fn wait_paused(&self, paused: bool) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|p| *p == paused).await;
    }
}

/// How a send task ended.
enum End {
    Settled {
        /// It left the queue (sent, dry-run or dead-lettered).
        left: bool,
        throttled: bool,
        sent: bool,
    },
    /// 190: not settled; the outbox pauses.
    TokenRejected,
    /// The vault could not record the outcome (the item stays queued).
    Storage(String),
}

pub struct Worker {
    vault: Vault,
    clock: SharedClock,
    client: Option<GraphClient>,
    token_path: Option<PathBuf>,
    /// The token file's content when last read (to notice a change).
    token_seen: Option<Vec<u8>>,
    concurrency: usize,
    limiter: Limiter,
    handle: OutboxHandle,
    /// How often a paused outbox looks at the token file.
    pub token_poll: Duration,
}

impl Worker {
    /// A worker for `config`; `rate` overrides the configured rate (None in
    /// the config means the default; benchmarks pass `Some(None)` to lift
    /// the limiter).
    pub fn new(
        vault: Vault,
        clock: SharedClock,
        config: &WhatsappConfig,
        rate: Option<Option<u32>>,
    ) -> Result<(Self, OutboxHandle), super::client::ClientError> {
        let token_path = config.token_path();
        let dry_run = token_path.is_none();
        let client = if dry_run {
            None
        } else {
            Some(GraphClient::new(config, None)?)
        };
        let handle = OutboxHandle {
            kick: Arc::new(Notify::new()),
            reload: Arc::new(Notify::new()),
            processed: watch::channel(0).0,
            paused: watch::channel(false).0,
            dry_run,
        };
        let mut worker = Self {
            vault,
            clock,
            client,
            token_path,
            token_seen: None,
            concurrency: config.concurrency.max(1),
            limiter: Limiter::new(rate.unwrap_or(Some(config.rate_per_second))),
            handle: handle.clone(),
            token_poll: Duration::from_secs(2),
        };
        if !dry_run && !worker.load_token() {
            worker.handle.paused.send_replace(true);
        }
        Ok((worker, handle))
    }

    /// Reads the token file; false if it cannot be used (stays paused).
    fn load_token(&mut self) -> bool {
        let (Some(path), Some(client)) = (&self.token_path, &self.client) else {
            return true;
        };
        let raw = std::fs::read(path).ok();
        self.token_seen = raw;
        match Token::load(path) {
            Ok(t) => {
                client.set_token(t);
                true
            }
            Err(e) => {
                error!(error = %e, "WhatsApp outbox paused: no usable token");
                false
            }
        }
    }

    fn token_changed(&self) -> bool {
        self.token_path
            .as_ref()
            .is_some_and(|p| std::fs::read(p).ok() != self.token_seen)
    }

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut busy: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<(String, End)> = JoinSet::new();
        let mut retry_now = false;
        let mut storage_backoff = Duration::from_millis(100);
        info!(dry_run = self.handle.dry_run, "WhatsApp outbox started");
        loop {
            if *stop.borrow() {
                break;
            }
            let mut wait: Option<Duration> = None;
            // Fill the free lanes: one writer job takes a batch.
            if !self.handle.paused() && tasks.len() < self.concurrency {
                let now = self.clock.now();
                let except = busy.clone();
                let free = self.concurrency - tasks.len();
                let taken = self
                    .vault
                    .write(move |v| {
                        queue::take_batch::<WaItem>(v, &WA_OUTBOX, now, retry_now, &except, free)
                    })
                    .await
                    .map(|c| c.value);
                match taken {
                    Ok(batch) => {
                        if let Some(due) = batch.wait_until {
                            wait = Some(
                                Duration::try_from(due.duration_since(self.clock.now()))
                                    .unwrap_or(Duration::ZERO),
                            );
                        }
                        for (seq, envelope) in batch.items {
                            let at = self.limiter.reserve(tokio::time::Instant::now());
                            tokio::select! {
                                _ = stop.changed() => break,
                                _ = tokio::time::sleep_until(at) => {}
                            }
                            busy.insert(envelope.order_key.clone());
                            let key = envelope.order_key.clone();
                            let vault = self.vault.clone();
                            let clock = self.clock.clone();
                            let client = self.client.clone();
                            tasks.spawn(async move {
                                let end = send(vault, clock, client.as_ref(), seq, envelope).await;
                                (key, end)
                            });
                        }
                    }
                    Err(e) => {
                        warn!(reason = %e, "the WhatsApp outbox could not be read; will retry");
                        wait = Some(storage_backoff);
                        storage_backoff = (storage_backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
            retry_now = false;
            if *stop.borrow() {
                break;
            }
            let signal = self.vault.wa_outbox_signal();
            let paused = self.handle.paused();
            let poll = if paused { Some(self.token_poll) } else { None };
            tokio::select! {
                _ = stop.changed() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((key, end)) = done {
                        busy.remove(&key);
                        self.finished(end);
                    }
                    // Sends settled by the same flush finish together:
                    // collect them all, then take one batch for the lanes.
                    while let Some(done) = tasks.try_join_next() {
                        if let Ok((key, end)) = done {
                            busy.remove(&key);
                            self.finished(end);
                        }
                    }
                }
                _ = self.handle.kick.notified() => retry_now = true,
                _ = self.handle.reload.notified() => self.resume_if_token(true),
                _ = signal.notified(), if !paused => {}
                _ = sleep_opt(wait.filter(|_| !paused)) => {}
                _ = sleep_opt(poll) => self.resume_if_token(false),
            }
        }
        // In-flight sends finish (or are cut at shutdown: their items stay
        // queued and go again after the restart).
        tasks.shutdown().await;
    }

    fn finished(&mut self, end: End) {
        match end {
            End::Settled {
                left,
                throttled,
                sent,
            } => {
                if throttled {
                    self.limiter.throttled(tokio::time::Instant::now());
                } else if sent {
                    self.limiter.succeeded();
                }
                if left {
                    self.handle.processed.send_modify(|n| *n += 1);
                }
            }
            End::TokenRejected => {
                if !self.handle.paused() {
                    error!("WhatsApp rejected the access token (190): outbox paused, nothing dropped; replace the token file (or send SIGHUP after replacing the credential)");
                    self.handle.paused.send_replace(true);
                }
            }
            End::Storage(why) => {
                warn!(reason = %why, "a WhatsApp send could not be recorded; it stays queued");
            }
        }
    }

    fn resume_if_token(&mut self, forced: bool) {
        if !self.handle.paused() || !(forced || self.token_changed()) {
            return;
        }
        if self.load_token() {
            info!("WhatsApp token replaced: outbox resumed");
            self.handle.paused.send_replace(false);
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Jitter up to half the back-off the next attempt will wait.
fn jitter(attempts: u32) -> SignedDuration {
    let base = queue::backoff(&WA_OUTBOX, attempts.saturating_add(1));
    let mut b = [0u8; 4];
    let r = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map(|()| u32::from_le_bytes(b))
        .unwrap_or(0);
    let millis = i64::try_from(base.as_millis() / 2).unwrap_or(0).max(1);
    SignedDuration::from_millis(i64::from(r) % millis)
}

async fn send(
    vault: Vault,
    clock: SharedClock,
    client: Option<&GraphClient>,
    seq: u64,
    envelope: Envelope<WaItem>,
) -> End {
    let result = match client {
        None => Ok(None),
        Some(c) => {
            let body = envelope
                .item
                .message
                .to_json(envelope.item.recipient.as_ref());
            c.send(&body).await.map(Some)
        }
    };
    let kind = envelope.item.message.kind.as_str();
    let (outcome, sent, throttled) = match &result {
        Ok(_) => (Outcome::Delivered, true, false),
        Err(e) if e.is_auth() => return End::TokenRejected,
        Err(e) if e.retryable() => {
            warn!(message = kind, code = %e.code(), attempts = envelope.attempts + 1, "WhatsApp send failed; will retry");
            (
                Outcome::RetryJittered(e.to_string(), jitter(envelope.attempts)),
                false,
                e.is_throttle(),
            )
        }
        Err(e) => {
            warn!(message = kind, code = %e.code(), "WhatsApp refused a message for good; moved to dead letters");
            (
                Outcome::RefusedWith {
                    reason: e.to_string(),
                    code: e.code(),
                },
                false,
                false,
            )
        }
    };
    let record = match result {
        Ok(Some(s)) => Some((s.wamid, s.wa_id, false)),
        Ok(None) => Some((format!("dry-run.{seq}"), None, true)),
        Err(_) => None,
    };
    let now = clock.now();
    let written = vault
        .write(move |v| {
            let (mut txn, settled) = queue::settle::<WaItem>(v, &WA_OUTBOX, seq, &outcome, now)?;
            if let (Some((wamid, wa_id, dry)), Settled::Removed) = (record, settled) {
                outbox::stage_sent(&mut txn, seq, &envelope, wamid, wa_id, dry, now)?;
            }
            Ok::<_, crate::vault::VaultError>((txn, settled))
        })
        .await;
    match written {
        Ok(c) => End::Settled {
            left: matches!(c.value, Settled::Removed | Settled::DeadLettered),
            throttled: matches!(c.value, Settled::RetryAt(_)) && throttled,
            sent,
        },
        Err(e) => End::Storage(e.to_string()),
    }
}
