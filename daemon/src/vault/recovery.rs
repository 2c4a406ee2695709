//! Recovery from a failed store (a full disk): the writer reopens it from
//! disk once space looks back, and reloads what the vault derived from it.
//! What was applied but never flushed was never acknowledged, and a reopen
//! forgets it, as a restart would.

use super::Vault;

/// Free space below which a reopen is not even tried.
const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;
/// How much more free space than at the last attempt makes a new attempt
/// worth it at once; otherwise one attempt per [`RETRY_EVERY`].
const MORE_FREE_BYTES: u64 = 1024 * 1024;
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// When the writer last tried, and how much space there was.
#[derive(Default)]
pub(super) struct RecoveryGate {
    last: Option<(std::time::Instant, u64)>,
}

impl RecoveryGate {
    fn worth_trying(&mut self, free: u64) -> bool {
        if free < MIN_FREE_BYTES {
            return false;
        }
        let due = match self.last {
            None => true,
            Some((at, was_free)) => {
                free >= was_free.saturating_add(MORE_FREE_BYTES) || at.elapsed() >= RETRY_EVERY
            }
        };
        if due {
            #[allow(clippy::disallowed_methods)]
            // paces reopen attempts (machine time), not business time
            let now = std::time::Instant::now();
            self.last = Some((now, free));
        }
        due
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

impl Vault {
    /// Why storage writes are failing, if they are (for `status`).
    pub fn storage_failure(&self) -> Option<String> {
        self.inner.store.failure()
    }

    /// On the writer thread, before a batch: reopens a failed store when
    /// there is space again.
    pub(super) fn recover_store(&self, gate: &mut RecoveryGate) {
        if self.inner.store.failure().is_none() {
            *gate = RecoveryGate::default();
            return;
        }
        if !gate.worth_trying(free_bytes(&self.inner.dir)) {
            return;
        }
        match self.inner.store.recover() {
            Ok(true) => {
                if let Err(e) = self.take_keys_from_log() {
                    tracing::error!(error = %e, "the new patients' keys could not be staged in the reopened store");
                }
                if let Err(e) = self.load_chain_state() {
                    tracing::error!(error = %e, "the reopened store's audit chain could not be read");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "the store could not be reopened yet"),
        }
    }
}
