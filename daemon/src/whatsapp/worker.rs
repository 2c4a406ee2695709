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

/// A finished send, waiting to be settled.
struct Done {
    key: String,
    seq: u64,
    envelope: Envelope<WaItem>,
    /// None: the token was rejected (190); nothing is settled.
    outcome: Option<Outcome>,
    /// (wamid, wa_id, dry_run) of an accepted message.
    record: Option<(String, Option<String>, bool)>,
    throttled: bool,
}

/// What settling a finished send came to (for the worker's bookkeeping).
struct Report {
    key: String,
    settled: Settled,
    throttled: bool,
    sent: bool,
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
    /// Uploads the PDFs of document messages.
    media: super::media::Outbound,
    /// How long a cut-off send waits for its status webhook before it is
    /// sent again (`in_doubt`); zero without a webhook receiver.
    pub in_doubt_hold: SignedDuration,
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
        let (vault_for_media, clock_for_media) = (vault.clone(), clock.clone());
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
            media: super::media::Outbound::new(vault_for_media, clock_for_media, &config.media),
            in_doubt_hold: SignedDuration::try_from(config.in_doubt_hold)
                .unwrap_or(SignedDuration::ZERO),
        };
        if !dry_run && !worker.load_token() {
            worker.handle.paused.send_replace(true);
        }
        Ok((worker, handle))
    }

    /// The live client (None in dry-run), sharing this worker's token, for
    /// the tasks that talk to the account beside the outbox.
    pub fn client(&self) -> Option<GraphClient> {
        self.client.clone()
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
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut done: Vec<Done> = Vec::new();
        let mut retry_now = false;
        let mut storage_backoff = Duration::from_millis(100);
        info!(dry_run = self.handle.dry_run, "WhatsApp outbox started");
        loop {
            if *stop.borrow() {
                break;
            }
            let mut wait: Option<Duration> = None;
            let mut again = false;
            // 190 settles nothing: the item stays queued, the outbox pauses.
            // (Its in-flight mark is cleared when `round` sees it: Meta
            // refused the request, so it is not in doubt.)
            if done.iter().any(|d| d.outcome.is_none()) {
                for d in done.iter().filter(|d| d.outcome.is_none()) {
                    busy.remove(&d.key);
                }
                if !self.handle.paused() {
                    error!("WhatsApp rejected the access token (190): outbox paused, nothing dropped; replace the token file (or send SIGHUP after replacing the credential)");
                    self.handle.paused.send_replace(true);
                }
            }
            let free = if self.handle.paused() {
                0
            } else {
                self.concurrency.saturating_sub(tasks.len())
            };
            if !done.is_empty() || free > 0 {
                // One writer job settles every finished send and takes the
                // next batch: one flush per round, however many lanes.
                let finished = std::mem::take(&mut done);
                let keys: Vec<String> = finished.iter().map(|d| d.key.clone()).collect();
                let now = self.clock.now();
                let except = busy.clone();
                let hold = self.in_doubt_hold;
                let job = self
                    .vault
                    .write(move |v| round(v, finished, now, retry_now, &except, free, hold))
                    .await
                    .map(|c| c.value);
                match job {
                    Ok((reports, batch)) => {
                        storage_backoff = Duration::from_millis(100);
                        // The next items of the recipients just settled
                        // were still blocked in this round: look again.
                        again = !reports.is_empty();
                        for r in reports {
                            busy.remove(&r.key);
                            self.report(&r);
                        }
                        if let Some(due) = batch.wait_until {
                            wait = Some(
                                Duration::try_from(due.duration_since(self.clock.now()))
                                    .unwrap_or(Duration::ZERO),
                            );
                        }
                        for (seq, envelope) in batch.items {
                            let now = tokio::time::Instant::now();
                            let at = self.limiter.reserve(now);
                            // Only a slot in the future is waited for: the
                            // timer wheel rounds even a zero wait up to its
                            // next millisecond tick, which capped a lifted
                            // (or catching-up) outbox near 1,000 msg/s.
                            if at > now {
                                tokio::select! {
                                    _ = stop.changed() => break,
                                    _ = tokio::time::sleep_until(at) => {}
                                }
                            } else if *stop.borrow() {
                                break;
                            }
                            busy.insert(envelope.order_key.clone());
                            let client = self.client.clone();
                            let media = self.media.clone();
                            tasks.spawn(async move {
                                send(client.as_ref(), &media, seq, envelope).await
                            });
                        }
                    }
                    Err(e) => {
                        // Nothing was recorded: the items stay queued and
                        // are sent again (at-least-once).
                        for k in keys {
                            busy.remove(&k);
                        }
                        warn!(reason = %e, "the WhatsApp outbox could not be worked; will retry");
                        wait = Some(storage_backoff);
                        storage_backoff = (storage_backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
            retry_now = false;
            if *stop.borrow() {
                break;
            }
            if again && tasks.len() < self.concurrency && !self.handle.paused() {
                continue;
            }
            let signal = self.vault.wa_outbox_signal();
            let paused = self.handle.paused();
            let poll = if paused { Some(self.token_poll) } else { None };
            tokio::select! {
                _ = stop.changed() => break,
                Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(d) = finished {
                        done.push(d);
                    }
                    // Sends answered together are settled together.
                    while let Some(finished) = tasks.try_join_next() {
                        if let Ok(d) = finished {
                            done.push(d);
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
        // Sends in flight at shutdown are cut: their items stay queued,
        // marked in flight, and after the restart wait for their status
        // webhook before they go again (`in_doubt`). Answers already in
        // are recorded first.
        while let Some(Ok(d)) = tasks.try_join_next() {
            done.push(d);
        }
        if !done.is_empty() {
            let now = self.clock.now();
            let _ = self
                .vault
                .write(move |v| {
                    round(
                        v,
                        done,
                        now,
                        false,
                        &HashSet::new(),
                        0,
                        SignedDuration::ZERO,
                    )
                })
                .await;
        }
        tasks.shutdown().await;
    }

    fn report(&mut self, r: &Report) {
        if r.throttled && matches!(r.settled, Settled::RetryAt(_)) {
            self.limiter.throttled(tokio::time::Instant::now());
        } else if r.sent {
            self.limiter.succeeded();
        }
        if matches!(r.settled, Settled::Removed | Settled::DeadLettered) {
            self.handle.processed.send_modify(|n| *n += 1);
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

/// Settles `finished` and takes up to `free` more, on the writer.
fn round(
    v: &Vault,
    finished: Vec<Done>,
    now: jiff::Timestamp,
    retry_now: bool,
    busy: &HashSet<String>,
    free: usize,
    hold: SignedDuration,
) -> Result<(crate::vault::Txn, Round), crate::vault::VaultError> {
    let mut txn = crate::vault::Txn::new(now);
    let mut reports = Vec::with_capacity(finished.len());
    for d in finished {
        let Some(outcome) = d.outcome else {
            queue::in_flight::clear(&mut txn, &WA_OUTBOX, d.seq);
            continue;
        };
        let sent = d.record.is_some();
        let (settled, _) = stage_outcome(v, &mut txn, d.seq, &d.envelope, &outcome, d.record, now)?;
        reports.push(Report {
            key: d.key,
            settled,
            throttled: d.throttled,
            sent,
        });
    }
    let batch = if free > 0 {
        let (t, batch) =
            queue::take_batch_held::<WaItem>(v, &WA_OUTBOX, now, retry_now, busy, free, hold)?;
        txn.extend(t);
        batch
    } else {
        queue::Batch {
            items: Vec::new(),
            wait_until: None,
        }
    };
    Ok((txn, (reports, batch)))
}

type Round = (Vec<Report>, queue::Batch<WaItem>);

/// Settles item `seq` with `outcome` and, for an accepted send (`record`:
/// wamid, wa_id, dry-run), stages what it leaves behind: the sent record,
/// the KPIs, the fate of its uploaded document. The one path for Meta's
/// answer and for a cut-off send confirmed by its status webhook
/// (`in_doubt`). Returns how it settled and whether the KPIs now track the
/// wamid (a reminder's).
pub(crate) fn stage_outcome(
    v: &Vault,
    txn: &mut crate::vault::Txn,
    seq: u64,
    envelope: &Envelope<WaItem>,
    outcome: &Outcome,
    record: Option<(String, Option<String>, bool)>,
    now: jiff::Timestamp,
) -> Result<(Settled, bool), crate::vault::VaultError> {
    let (t, settled) = queue::settle::<WaItem>(v, &WA_OUTBOX, seq, outcome, now)?;
    txn.extend(t);
    super::media::after_settle(
        v,
        txn,
        &envelope.item,
        settled,
        record.as_ref().map(|r| r.0.as_str()),
        record.as_ref().is_some_and(|r| r.2),
        now,
    )?;
    let mut kpi_tracked = false;
    // A conversation's message refused for good: the inbox says "failed"
    // and why, instead of "waiting to be sent" for ever.
    if settled == Settled::DeadLettered {
        if let Some(r) = envelope
            .item
            .reference
            .as_deref()
            .filter(|r| crate::care::conversation::store::is_conversation_ref(r))
        {
            let why = match outcome {
                Outcome::RefusedWith { code, .. } => code.as_str(),
                _ => "refused",
            };
            crate::care::conversation::store::stage_failed(v, txn, r, envelope.item.patient, why)?;
        }
    }
    if let (Some((wamid, wa_id, dry)), Settled::Removed) = (record, settled) {
        let reference = envelope.item.reference.as_deref();
        kpi_tracked = crate::kpi::on_sent(v, txn, reference, &wamid, dry, now)?;
        // A conversation's message: the inbox shows its delivery state.
        if let Some(r) =
            reference.filter(|r| crate::care::conversation::store::is_conversation_ref(r))
        {
            let patient = envelope.item.patient;
            crate::care::conversation::store::stage_sent(v, txn, r, patient, &wamid)?;
        }
        outbox::stage_sent(txn, seq, envelope, wamid, wa_id, dry, now)?;
    }
    Ok((settled, kpi_tracked))
}

async fn send(
    client: Option<&GraphClient>,
    media: &super::media::Outbound,
    seq: u64,
    mut envelope: Envelope<WaItem>,
) -> Done {
    // A document's PDF goes up first (or its earlier upload is reused).
    let prepared = media.prepare(client, &mut envelope).await;
    let result = match (prepared, client) {
        (Err(super::media::Prep::Api(e)), _) => Err(e),
        (Err(other), _) => return unsendable(other, seq, envelope),
        (Ok(()), None) => Ok(None),
        (Ok(()), Some(c)) => {
            let mut body = envelope
                .item
                .message
                .to_json(envelope.item.recipient.as_ref());
            super::media::strip_marker(&mut body);
            if let serde_json::Value::Object(m) = &mut body {
                m.insert(
                    "biz_opaque_callback_data".to_owned(),
                    super::in_doubt::callback_data(seq).into(),
                );
            }
            c.send(&body).await.map(Some)
        }
    };
    let kind = envelope.item.message.kind.as_str();
    let (outcome, throttled) = match &result {
        Ok(_) => (Some(Outcome::Delivered), false),
        Err(e) if e.is_auth() => (None, false),
        Err(e) if e.retryable() => {
            warn!(message = kind, code = %e.code(), attempts = envelope.attempts + 1, "WhatsApp send failed; will retry");
            (
                Some(Outcome::RetryJittered(
                    e.to_string(),
                    jitter(envelope.attempts),
                )),
                e.is_throttle(),
            )
        }
        Err(e) => {
            warn!(message = kind, code = %e.code(), "WhatsApp refused a message for good; moved to dead letters");
            (
                Some(Outcome::RefusedWith {
                    reason: e.to_string(),
                    code: e.code(),
                }),
                false,
            )
        }
    };
    let record = match result {
        Ok(Some(s)) => Some((s.wamid, s.wa_id, false)),
        Ok(None) => Some((format!("dry-run.{seq}"), None, true)),
        Err(_) => None,
    };
    Done {
        key: envelope.order_key.clone(),
        seq,
        envelope,
        outcome,
        record,
        throttled,
    }
}

/// A document that could not be made ready: its PDF is gone (refused for
/// good) or the vault failed for now (retried).
fn unsendable(why: super::media::Prep, seq: u64, envelope: Envelope<WaItem>) -> Done {
    let outcome = match why {
        super::media::Prep::Retry(reason) => {
            Outcome::RetryJittered(reason, jitter(envelope.attempts))
        }
        _ => Outcome::RefusedWith {
            reason: "the document is no longer in the vault".to_owned(),
            code: "document-missing".to_owned(),
        },
    };
    Done {
        key: envelope.order_key.clone(),
        seq,
        envelope,
        outcome: Some(outcome),
        record: None,
        throttled: false,
    }
}
