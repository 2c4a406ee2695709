//! Sends cut off mid-flight, reconciled through Meta's status webhook.
//!
//! Meta's Cloud API has no idempotency key: a message whose send reached
//! Meta but whose answer never came back (the daemon was killed, or
//! stopped, with the request on the wire) would go out twice if simply
//! sent again. So every send carries `biz_opaque_callback_data` naming its
//! outbox item, which Meta echoes in the message's status webhooks; the
//! outbox marks each item durably before sending (`queue::in_flight`), and
//! an item found marked after a restart waits `whatsapp.in_doubt_hold`
//! (15 min by default) before it is sent again. A status webhook that
//! names it meanwhile settles it as sent, with its wamid, in the webhook's
//! own commit: it is never sent twice. If no status comes (the send never
//! reached Meta, or the webhook is not configured or not reachable), it is
//! sent again once the hold is over: never zero times.

use super::outbox::{WaItem, WA_OUTBOX};
use crate::queue::{self, in_flight, Outcome, Settled};
use crate::vault::{Txn, Vault, VaultResult};
use jiff::Timestamp;

const PREFIX: &str = "cr1:q:";

/// The callback data of outbox item `seq` (no PHI: a sequence number).
pub fn callback_data(seq: u64) -> String {
    format!("{PREFIX}{seq}")
}

/// The outbox item a status's callback data names, if it is ours.
pub fn parse(data: &str) -> Option<u64> {
    let digits = data.strip_prefix(PREFIX)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a status webhook naming item `seq` settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// The item was not waiting on its send (already settled, or unknown).
    Nothing,
    /// Recorded as sent; `kpi_tracked`: the KPIs now know its wamid.
    Sent { kpi_tracked: bool },
}

/// Stages item `seq` as sent with `wamid` if it is still queued and marked
/// in flight (in doubt, or out in this process with its answer not yet
/// settled: the worker's settle then finds it gone). Runs on the writer.
pub fn reconcile(
    vault: &Vault,
    txn: &mut Txn,
    seq: u64,
    wamid: &str,
    wa_id: Option<&str>,
    now: Timestamp,
) -> VaultResult<Reconciled> {
    if in_flight::taken_at(vault, &WA_OUTBOX, seq)?.is_none() {
        return Ok(Reconciled::Nothing);
    }
    let Some(envelope) = queue::peek::<WaItem>(vault, &WA_OUTBOX, seq)? else {
        return Ok(Reconciled::Nothing);
    };
    let record = (wamid.to_owned(), wa_id.map(str::to_owned), false);
    let (settled, kpi_tracked) = super::worker::stage_outcome(
        vault,
        txn,
        seq,
        &envelope,
        &Outcome::Delivered,
        Some(record),
        now,
    )?;
    if settled != Settled::Removed {
        return Ok(Reconciled::Nothing);
    }
    tracing::info!(
        seq,
        "a cut-off WhatsApp send was confirmed by its status webhook: recorded as sent, not sent again"
    );
    Ok(Reconciled::Sent { kpi_tracked })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_callback_data_names_an_item() {
        assert_eq!(parse(&callback_data(42)), Some(42));
        assert_eq!(parse(&callback_data(u64::MAX)), Some(u64::MAX));
        for other in [
            "",
            "cr1:q:",
            "cr1:q:-1",
            "cr1:q:1a",
            "cr1:q:99999999999999999999999",
            "cr1:c:1",
            "order-17",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
