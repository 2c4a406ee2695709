//! Media timers and the task that runs them: delete an upload at Meta,
//! fetch a patient's inbound media, purge fetched media at the end of its
//! retention.
//!
//! A timer is a record `T ‖ due (u64 BE seconds) ‖ kind ‖ id` in
//! [`Tree::WaMedia`], committed with whatever made it necessary (the
//! upload, the webhook that brought the media, the fetch), so a restart
//! finds every one of them. The worker takes the due ones in key order
//! (= due order), does the network part outside the writer, and settles
//! each in a writer job: removed, or put back later with a back-off.
//! It wakes when an event becomes durable (a webhook with media or a
//! delivered status always writes one), on [`MediaHandle::kick`], at the
//! next due time, and at least every minute.

use super::client::{ApiError, GraphClient, Token};
use super::config::WhatsappConfig;
use super::media::K_TIMER;
use super::media_timers::due_of;
pub use super::media_timers::{
    reschedule_delete, stage_delete, stage_timer, timer_key, Task, TimerKind,
};
use crate::clock::SharedClock;
use crate::vault::{Owner, Tree, Txn, Vault, VaultError, VaultResult};
use crate::webhook::media::{stage_fetched, stage_purge, Fetched};
use jiff::{SignedDuration, Timestamp};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

/// Fetches and deletes are given up after this many attempts (about 4
/// hours at the capped back-off). An upload left behind is deleted by Meta
/// after 30 days anyway.
const MAX_ATTEMPTS: u32 = 20;
/// Due timers one round takes at most.
const ROUND: usize = 16;

/// Wakes the worker and tells how many timers it has settled.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    kick: Arc<Notify>,
    settled: watch::Sender<u64>,
    /// The clock's time at the start of the last round.
    looked: watch::Sender<Option<Timestamp>>,
    pub dry_run: bool,
}

impl MediaHandle {
    /// Look for due timers now (after a clock change, in tests).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    pub fn settled(&self) -> u64 {
        *self.settled.borrow()
    }

    /// Kicks the worker and waits until it has looked at its timers with
    /// the clock at `at` or later (tests with a manual clock).
    pub async fn looked_at(&self, at: Timestamp) {
        let mut rx = self.looked.subscribe();
        self.kick();
        let _ = rx.wait_for(|t| t.is_some_and(|t| t >= at)).await;
    }
}

pub struct MediaWorker {
    vault: Vault,
    clock: SharedClock,
    client: Option<GraphClient>,
    token_path: Option<PathBuf>,
    max_inbound: u64,
    retention: SignedDuration,
    handle: MediaHandle,
}

/// How one task ended.
enum Done {
    /// Finished (or given up): the timer goes.
    Finished,
    /// Try again later.
    Retry,
    /// A fetch ended: apply it, the timer goes.
    Fetch(Fetched),
}

impl MediaWorker {
    pub fn new(
        vault: Vault,
        clock: SharedClock,
        config: &WhatsappConfig,
    ) -> Result<(Self, MediaHandle), super::client::ClientError> {
        let token_path = config.token_path();
        let client = match &token_path {
            Some(_) => Some(GraphClient::new(config, None)?),
            None => None,
        };
        let handle = MediaHandle {
            kick: Arc::new(Notify::new()),
            settled: watch::channel(0).0,
            looked: watch::channel(None).0,
            dry_run: client.is_none(),
        };
        Ok((
            Self {
                vault,
                clock,
                client,
                token_path,
                max_inbound: config.media.max_inbound_media_bytes,
                retention: SignedDuration::try_from(config.media.inbound_media_retention)
                    .unwrap_or(SignedDuration::from_hours(720)),
                handle: handle.clone(),
            },
            handle,
        ))
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut events = self.vault.events_watch();
        // The first sweep an hour after the start (a restart loop must not
        // become a sweep loop).
        let mut sweep = tokio::time::interval(Duration::from_secs(3600));
        sweep.tick().await;
        info!(
            dry_run = self.handle.dry_run,
            "WhatsApp media worker started"
        );
        loop {
            if *stop.borrow() {
                return;
            }
            let now = self.clock.now();
            let round = self.round(now).await;
            self.handle.looked.send_replace(Some(now));
            let wait = match round {
                Ok(Some(0)) | Ok(None) => self.next_wait(),
                Ok(Some(_)) => Some(Duration::ZERO),
                Err(e) => {
                    warn!(reason = %e, "media timers could not be read; will retry");
                    Some(Duration::from_secs(5))
                }
            };
            if wait == Some(Duration::ZERO) {
                continue;
            }
            // At least once a minute: a clock that jumped is noticed.
            let wait = wait.unwrap_or(Duration::MAX).min(Duration::from_secs(60));
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.handle.kick.notified() => {}
                _ = events.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = sweep.tick() => {
                    match super::media_sweep::sweep(&self.vault, self.clock.now()).await {
                        Ok(0) => {}
                        Ok(n) => info!(removed = n, "orphaned media records swept"),
                        Err(e) => warn!(error = %e, "could not sweep media records; will try again"),
                    }
                }
            }
        }
    }

    /// How long until the first timer is due (None: no timer).
    fn next_wait(&self) -> Option<Duration> {
        let first = self
            .vault
            .scan_raw_from(Tree::WaMedia, &[K_TIMER])
            .next()?
            .ok()?;
        if first.0.first() != Some(&K_TIMER) {
            return None;
        }
        let due = due_of(&first.0)?;
        Some(Duration::try_from(due.duration_since(self.clock.now())).unwrap_or(Duration::ZERO))
    }

    /// Runs the timers due now; returns how many (None: nothing was due).
    async fn round(&self, now: Timestamp) -> VaultResult<Option<usize>> {
        let mut due = Vec::new();
        for r in self.vault.scan_raw_from(Tree::WaMedia, &[K_TIMER]) {
            let (k, opened) = r?;
            if k.first() != Some(&K_TIMER) || due_of(&k).is_none_or(|d| d > now) {
                break;
            }
            // Unreadable (an erased patient's fetch) or undecodable: dropped.
            let task = opened
                .ok()
                .and_then(|b| serde_json::from_slice::<Task>(&b).ok());
            due.push((k, task));
            if due.len() >= ROUND {
                break;
            }
        }
        if due.is_empty() {
            return Ok(None);
        }
        self.reload_token();
        let n = due.len();
        for (k, task) in due {
            let done = match &task {
                None => Done::Finished,
                Some(t) => self.run_task(t).await,
            };
            self.settle(k, task, done).await?;
        }
        Ok(Some(n))
    }

    fn reload_token(&self) {
        if let (Some(client), Some(path)) = (&self.client, &self.token_path) {
            match Token::load(path) {
                Ok(t) => client.set_token(t),
                Err(e) => warn!(error = %e, "media worker: no usable WhatsApp token"),
            }
        }
    }

    async fn run_task(&self, task: &Task) -> Done {
        match task {
            Task::Delete { .. } => {
                let Some(client) = &self.client else {
                    // Dry-run now, live before: kept (with back-off, then
                    // given up: Meta deletes media after 30 days anyway).
                    return Done::Retry;
                };
                let Task::Delete { media_id, .. } = task else {
                    return Done::Finished;
                };
                match client.delete_media(media_id).await {
                    Ok(()) => Done::Finished,
                    Err(e) if e.retryable() || e.is_auth() => {
                        warn!(code = %e.code(), "deleting a media upload at Meta failed; will retry");
                        Done::Retry
                    }
                    // 404/100: already gone (deleted before, or expired).
                    Err(e) => {
                        info!(code = %e.code(), "media upload not deleted at Meta (gone already?)");
                        Done::Finished
                    }
                }
            }
            Task::Fetch {
                media_id, sha256, ..
            } => match &self.client {
                None => Done::Fetch(Fetched::DryRun),
                Some(client) => self.fetch(client, media_id, sha256.as_deref()).await,
            },
            Task::Purge { .. } => Done::Finished,
        }
    }

    async fn fetch(&self, client: &GraphClient, media_id: &str, sha256: Option<&str>) -> Done {
        let refused = |r: &str| Done::Fetch(Fetched::Refused(r.to_owned()));
        let retry_or_refuse = |e: &ApiError| {
            if e.retryable() || e.is_auth() {
                warn!(code = %e.code(), "fetching inbound media failed; will retry");
                Done::Retry
            } else {
                Done::Fetch(Fetched::Refused(format!("refused:{}", e.code())))
            }
        };
        let info = match client.media_info(media_id).await {
            Ok(i) => i,
            Err(e) => return retry_or_refuse(&e),
        };
        if info.size().is_some_and(|s| s > self.max_inbound) {
            return refused("too-large");
        }
        let bytes = match client.download_media(&info.url, self.max_inbound).await {
            Ok(Some(b)) => b,
            Ok(None) => return refused("too-large"),
            Err(e) => return retry_or_refuse(&e),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let expected = sha256.or(info.sha256.as_deref());
        if expected.is_some_and(|x| !sha256_matches(x, digest.as_ref())) {
            // Over TLS a mismatch is no transient fault: not kept.
            return refused("sha256-mismatch");
        }
        Done::Fetch(Fetched::Bytes(bytes, hex::encode(digest.as_ref())))
    }

    /// Records how a task ended, in one writer job.
    async fn settle(&self, k: Vec<u8>, task: Option<Task>, done: Done) -> VaultResult<()> {
        let now = self.clock.now();
        let retention = self.retention;
        let r = self
            .vault
            .write(move |v| {
                let mut txn = Txn::new(now);
                // Gone meanwhile (a delivered status moved it): done.
                if !exists(v, &k)? {
                    return Ok::<_, VaultError>((txn, ()));
                }
                txn.remove(Tree::WaMedia, k.clone());
                let Some(task) = task else {
                    return Ok((txn, ()));
                };
                match (done, task) {
                    (Done::Fetch(outcome), Task::Fetch { wamid_key, .. }) => {
                        let blind = hex::decode(wamid_key).unwrap_or_default();
                        stage_fetched(v, &mut txn, &blind, outcome, now, retention)?;
                    }
                    (Done::Finished, Task::Purge { wamid_key }) => {
                        let blind = hex::decode(wamid_key).unwrap_or_default();
                        stage_purge(v, &mut txn, &blind, now)?;
                    }
                    (Done::Finished, Task::Delete { .. }) => {
                        txn.audit(crate::audit::AuditDraft::new(
                            "system",
                            "whatsapp.media.deleted-at-meta",
                        ));
                    }
                    (Done::Retry, task) => retry(v, &mut txn, &k, task, now)?,
                    _ => {}
                }
                Ok((txn, ()))
            })
            .await;
        self.handle.settled.send_modify(|n| *n += 1);
        r.map(|c| c.value)
    }
}

fn exists(v: &Vault, k: &[u8]) -> VaultResult<bool> {
    match v.get(Tree::WaMedia, k) {
        Ok(r) => Ok(r.is_some()),
        Err(VaultError::KeyUnavailable { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Puts a task back with a doubling back-off (5 s to 15 min), or gives it
/// up after [`MAX_ATTEMPTS`] (a fetch then ends refused, with its event).
fn retry(v: &Vault, txn: &mut Txn, k: &[u8], task: Task, now: Timestamp) -> VaultResult<()> {
    // The id after due time and kind (the media id of a delete).
    let id = k.get(10..).unwrap_or_default();
    let backoff = |attempts: u32| {
        let secs = 5i64.saturating_mul(1 << attempts.min(8)).min(900);
        now.checked_add(SignedDuration::from_secs(secs))
            .unwrap_or(now)
    };
    match task {
        Task::Delete { media_id, attempts } => {
            if attempts + 1 >= MAX_ATTEMPTS {
                warn!("a media upload could not be deleted at Meta; Meta deletes it after 30 days");
                return Ok(());
            }
            let task = Task::Delete {
                media_id,
                attempts: attempts + 1,
            };
            stage_timer(
                txn,
                backoff(attempts),
                TimerKind::Delete,
                id,
                Owner::System,
                &task,
            )
        }
        Task::Fetch {
            wamid_key,
            media_id,
            patient,
            sha256,
            attempts,
        } => {
            let blind = hex::decode(&wamid_key).unwrap_or_default();
            if attempts + 1 >= MAX_ATTEMPTS {
                let why = Fetched::Refused("out-of-attempts".to_owned());
                return stage_fetched(v, txn, &blind, why, now, SignedDuration::ZERO);
            }
            let task = Task::Fetch {
                wamid_key,
                media_id,
                patient,
                sha256,
                attempts: attempts + 1,
            };
            let owner = Owner::Patient(patient);
            stage_timer(
                txn,
                backoff(attempts),
                TimerKind::Fetch,
                &blind,
                owner,
                &task,
            )
        }
        Task::Purge { .. } => Ok(()),
    }
}

/// Meta gives the checksum as hex or base64; either must match.
fn sha256_matches(expected: &str, digest: &[u8]) -> bool {
    use base64::Engine;
    let e = expected.trim();
    e.eq_ignore_ascii_case(&hex::encode(digest))
        || e == base64::engine::general_purpose::STANDARD.encode(digest)
        || e == base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
        || e == base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_in_hex_or_base64() {
        let d = ring::digest::digest(&ring::digest::SHA256, b"x");
        assert!(sha256_matches(&hex::encode(d.as_ref()), d.as_ref()));
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(d.as_ref());
        assert!(sha256_matches(&b64, d.as_ref()));
        assert!(!sha256_matches("00", d.as_ref()));
    }
}
