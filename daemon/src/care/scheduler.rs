//! The `care-scheduler` task: sleeps until the first timer in the durable
//! index is due (a durable commit that changes timers wakes it, so an
//! earlier one is never missed), then fires the due timers as one writer
//! job ([`shell::fire_due`]). It reads only the first timer, never the
//! whole index.

use super::{shell, store};
use crate::clock::SharedClock;
use crate::vault::Vault;
use jiff::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::warn;

/// Timers one writer job fires at most (one flush for the lot).
const ROUND: usize = 512;

/// Wakes the scheduler and tells how far it got.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    kick: Arc<Notify>,
    fired: watch::Sender<u64>,
    /// The clock's time at the start of the last look at the timers.
    looked: watch::Sender<Option<Timestamp>>,
}

impl SchedulerHandle {
    /// Look at the timers now (after a clock change, in tests).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Timers fired since the start.
    pub fn fired(&self) -> u64 {
        *self.fired.borrow()
    }

    /// Kicks the scheduler and waits until it has fired what was due with
    /// the clock at `at` or later (tests with a manual clock).
    pub async fn looked_at(&self, at: Timestamp) {
        let mut rx = self.looked.subscribe();
        rx.mark_unchanged();
        self.kick();
        let _ = rx.wait_for(|t| t.is_some_and(|t| t >= at)).await;
    }
}

pub struct Scheduler {
    vault: Vault,
    clock: SharedClock,
    handle: SchedulerHandle,
}

impl Scheduler {
    pub fn new(vault: Vault, clock: SharedClock) -> (Self, SchedulerHandle) {
        let handle = SchedulerHandle {
            kick: Arc::new(Notify::new()),
            fired: watch::channel(0).0,
            looked: watch::channel(None).0,
        };
        (
            Self {
                vault,
                clock,
                handle: handle.clone(),
            },
            handle,
        )
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let now = self.clock.now();
            // Nothing due: no writer job (a wake-up per commit that touched
            // the timers must not cost the writer anything).
            let wait = self.next_wait();
            if wait.is_none_or(|w| !w.is_zero()) {
                self.handle.looked.send_replace(Some(now));
                if !self.sleep(wait, &mut stop).await {
                    return;
                }
                continue;
            }
            let wait = match self
                .vault
                .write(move |v| shell::fire_due(v, now, ROUND))
                .await
            {
                Ok(c) => {
                    let n = c.value as u64;
                    self.handle.fired.send_modify(|f| *f += n);
                    if c.value >= ROUND {
                        continue;
                    }
                    let next = self.next_wait();
                    // This round may have staged a timer that is due already
                    // (an appointment's next reminder, after the clock
                    // jumped past both): it runs before `now` counts as
                    // looked at.
                    if next.is_some_and(|w| w.is_zero()) {
                        continue;
                    }
                    next
                }
                Err(e) => {
                    warn!(error = %e, "reminder timers could not be run; will retry");
                    Some(Duration::from_secs(5))
                }
            };
            self.handle.looked.send_replace(Some(now));
            if !self.sleep(wait, &mut stop).await {
                return;
            }
        }
    }

    /// Waits for a kick, a commit that changed timers, or `wait`; false
    /// when told to stop.
    async fn sleep(&self, wait: Option<Duration>, stop: &mut watch::Receiver<bool>) -> bool {
        // At least once a minute: a clock that jumped is noticed.
        let wait = wait.unwrap_or(Duration::MAX).min(Duration::from_secs(60));
        tokio::select! {
            _ = stop.changed() => false,
            _ = self.handle.kick.notified() => true,
            _ = self.vault.care_signal().notified() => true,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// How long until the first timer is due (None: no timer).
    fn next_wait(&self) -> Option<Duration> {
        let first = store::first_timer(&self.vault).ok()??;
        let (due, ..) = store::parse_timer_key(&first)?;
        Some(Duration::try_from(due.duration_since(self.clock.now())).unwrap_or(Duration::ZERO))
    }
}
