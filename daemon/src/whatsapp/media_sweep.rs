//! Hourly sweep of media records that nothing will come back for:
//! - a queued PDF whose outbox item is gone without being settled (dropped
//!   at its expiry, or its patient erased): the PDF goes, and its upload,
//!   if any, is deleted at Meta now;
//! - an inbound media record (and its bytes) sealed under an erased
//!   patient's key: unreadable for good.
//!
//! One writer job reads the outbox and the media records together, so a
//! PDF queued meanwhile cannot be mistaken for an orphan (its item and the
//! PDF are committed in one txn).

use super::media::{
    doc_id, key, K_DOC, K_DOC_META, K_INBOUND, K_INBOUND_META, K_INBOUND_REF, K_UPLOADED,
};
use super::media_worker::reschedule_delete;
use super::outbox::{WaItem, WA_OUTBOX};
use crate::queue::Envelope;
use crate::vault::{Tree, Txn, Vault, VaultError, VaultResult};
use jiff::Timestamp;
use std::collections::HashSet;

/// Records one sweep reads at most per kind (the rest waits an hour).
const LIMIT: usize = 10_000;

/// Removes what is described above; returns how many records went.
pub async fn sweep(vault: &Vault, now: Timestamp) -> VaultResult<usize> {
    vault
        .write(move |v| {
            let mut txn = Txn::new(now);
            let gone = stage_sweep(v, &mut txn, now)?;
            Ok::<_, VaultError>((txn, gone))
        })
        .await
        .map(|c| c.value)
}

fn stage_sweep(v: &Vault, txn: &mut Txn, now: Timestamp) -> VaultResult<usize> {
    let mut gone = 0;
    let mut referenced: HashSet<Vec<u8>> = HashSet::new();
    let mut complete = true;
    for (n, r) in v.scan_raw(WA_OUTBOX.items).enumerate() {
        if n >= LIMIT {
            complete = false;
            break;
        }
        let (_, opened) = r?;
        // An unreadable item's PDF is sealed under the same (erased) key.
        let Ok(bytes) = opened else { continue };
        if let Ok(e) = serde_json::from_slice::<Envelope<WaItem>>(&bytes) {
            if let Some(id) = doc_id(&e.item) {
                referenced.insert(id);
            }
        }
    }
    if complete {
        for r in prefixed(v, K_DOC_META) {
            let (k, _) = r?;
            let id = k.get(1..).unwrap_or_default().to_vec();
            if referenced.contains(&id) {
                continue;
            }
            txn.remove(Tree::WaMedia, key(K_DOC, &id));
            txn.remove(Tree::WaMedia, k);
            let up_key = key(K_UPLOADED, &id);
            if let Some(up) = v.get_json::<super::media::Uploaded>(Tree::WaMedia, &up_key)? {
                reschedule_delete(txn, &up.media_id, up.delete_at, now)?;
                txn.remove(Tree::WaMedia, up_key);
            }
            gone += 1;
        }
    }
    for r in prefixed(v, K_INBOUND_META) {
        let (k, opened) = r?;
        if let Err(VaultError::KeyUnavailable { .. }) = opened {
            let blind = k.get(1..).unwrap_or_default().to_vec();
            txn.remove(Tree::WaMedia, key(K_INBOUND, &blind));
            txn.remove(Tree::WaMedia, k);
            gone += 1;
        }
    }
    // The reference index of an erased patient's media.
    for r in prefixed(v, K_INBOUND_REF) {
        let (k, opened) = r?;
        if let Err(VaultError::KeyUnavailable { .. }) = opened {
            txn.remove(Tree::WaMedia, k);
            gone += 1;
        }
    }
    Ok(gone)
}

type Record = (Vec<u8>, VaultResult<Vec<u8>>);

fn prefixed(v: &Vault, prefix: u8) -> impl Iterator<Item = VaultResult<Record>> + '_ {
    v.scan_raw_from(Tree::WaMedia, &[prefix])
        .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.first() == Some(&prefix)))
        .take(LIMIT)
}
