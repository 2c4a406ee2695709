//! Forgetting what webhooks left behind, hourly (the first run an hour
//! after the start), in bounded writer jobs like the idempotency keys:
//! - delivery states older than the retention (`service.idempotency_retention`,
//!   default 30 days): their feed events are long delivered, and Meta stops
//!   retrying after 7 days;
//! - the wamid markers of messages from unknown senders, likewise;
//! - records sealed under the key of an erased patient (their messages,
//!   last inbound time, business-scoped id): unreadable for good.
//!
//! A patient's stored messages are kept (their retention is the clinic's
//! decision, not a dedupe matter).

use super::apply::{InboundRecord, StatusRecord};
use crate::vault::{Tree, Txn, Vault, VaultError};
use jiff::{SignedDuration, Timestamp};

/// Prunes every hour until `stop`; the first run comes an hour after the
/// start (not at once: a restart loop must not turn into a prune loop).
pub async fn hourly(
    vault: Vault,
    clock: crate::clock::SharedClock,
    retention: SignedDuration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    every.tick().await; // the immediate first tick
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = every.tick() => {}
        }
        match prune(&vault, clock.now(), retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "old webhook records pruned"),
            Err(e) => tracing::warn!(error = %e, "could not prune webhook records; will try again"),
        }
    }
}

/// Records one job reads at most.
const BATCH: usize = 2_000;

/// Removes what is described above; returns how many records went.
pub async fn prune(
    vault: &Vault,
    now: Timestamp,
    retention: SignedDuration,
) -> Result<usize, VaultError> {
    let mut start: Vec<u8> = Vec::new();
    let mut removed = 0;
    loop {
        let from = std::mem::take(&mut start);
        let (gone, next) = vault
            .write(move |v| {
                let mut txn = Txn::new(now);
                let mut gone = 0usize;
                let mut last = None;
                for item in v.scan_raw_from(Tree::Webhook, &from).take(BATCH) {
                    let (key, opened) = item?;
                    if expendable(&key, opened, now, retention) {
                        txn.remove(Tree::Webhook, key.clone());
                        gone += 1;
                    }
                    last = Some(key);
                }
                let next = last.map(|mut k| {
                    k.push(0);
                    k
                });
                Ok::<_, VaultError>((txn, (gone, next)))
            })
            .await?
            .value;
        removed += gone;
        match next {
            Some(k) => start = k,
            None => return Ok(removed),
        }
    }
}

fn expendable(
    key: &[u8],
    opened: Result<Vec<u8>, VaultError>,
    now: Timestamp,
    retention: SignedDuration,
) -> bool {
    let old = |at: Timestamp| now.duration_since(at) >= retention;
    match (key.first(), opened) {
        (_, Err(VaultError::KeyUnavailable { .. })) => true,
        // Damaged or undecodable records stay for `verify` to report.
        (_, Err(_)) => false,
        (Some(&super::apply::P_STATUS), Ok(bytes)) => {
            serde_json::from_slice::<StatusRecord>(&bytes).is_ok_and(|r| old(r.at))
        }
        (Some(&super::apply::P_MESSAGE), Ok(bytes)) => {
            serde_json::from_slice::<InboundRecord>(&bytes)
                .is_ok_and(|r| r.patient.is_none() && old(r.at))
        }
        _ => false,
    }
}
