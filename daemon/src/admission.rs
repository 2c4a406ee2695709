//! Who gets a connection slot, on every listener (issue 8: 1,030 idle API
//! sockets exhausted the file descriptors; 64 idle MLLP sockets locked the
//! real PMS out for five minutes).
//!
//! A listener has a fixed number of slots. When they are all taken, a new
//! connection takes the slot of the oldest one that has not yet sent a
//! request (MLLP: a frame) — an idle or slowloris socket costs an attacker
//! a connect, while a client that talks at once is served. Where the
//! listener allows it (the API), an idle keep-alive connection is evicted
//! next. A connection in the middle of a request is never evicted; when
//! every slot is busy the newcomer is closed.
//!
//! Also here: a log line that is written at most once per interval (a flood
//! must not become a flood of log lines) and the back-off after a failed
//! `accept`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Where a connection is in its life, for the choice of whom to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connected, nothing complete received yet: evicted first.
    Fresh,
    /// Between requests (keep-alive): evicted when the listener allows it.
    Idle,
    /// A request is being answered, or (MLLP) the peer has proven itself.
    Busy,
}

struct Entry {
    state: State,
    evict: Option<oneshot::Sender<()>>,
}

/// The slots of one listener.
pub struct Slots {
    max: usize,
    evict_idle: bool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Keyed by arrival order, so the first match is the oldest.
    conns: BTreeMap<u64, Entry>,
}

/// What [`Slots::admit`] did, for the caller's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A free slot.
    Free,
    /// The slot of an older connection that had not sent anything (or was
    /// idle); that connection is being closed.
    Evicted,
}

impl Slots {
    /// `evict_idle`: whether a keep-alive connection between requests may
    /// lose its slot (the API: yes; MLLP: a PMS that has sent a frame keeps
    /// its connection).
    pub fn new(max: usize, evict_idle: bool) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            evict_idle,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// A slot for a new connection, or `None` when every slot is busy.
    pub fn admit(self: &Arc<Self>) -> Option<(Slot, Admitted)> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut how = Admitted::Free;
        if inner.conns.len() >= self.max {
            let victim = inner
                .conns
                .iter()
                .find(|(_, e)| e.state == State::Fresh)
                .or_else(|| {
                    self.evict_idle
                        .then(|| inner.conns.iter().find(|(_, e)| e.state == State::Idle))
                        .flatten()
                })
                .map(|(id, _)| *id)?;
            if let Some(mut entry) = inner.conns.remove(&victim) {
                if let Some(tx) = entry.evict.take() {
                    let _ = tx.send(());
                }
            }
            how = Admitted::Evicted;
        }
        let id = inner.next;
        inner.next = inner.next.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        inner.conns.insert(
            id,
            Entry {
                state: State::Fresh,
                evict: Some(tx),
            },
        );
        Some((
            Slot {
                slots: self.clone(),
                id,
                evicted: rx,
            },
            how,
        ))
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a slot now.
    pub fn in_use(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.conns.len())
    }

    /// False when the connection no longer holds a slot (evicted).
    fn set(&self, id: u64, state: State) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.conns.get_mut(&id) {
            Some(e) => {
                e.state = state;
                true
            }
            None => false,
        }
    }
}

/// One connection's slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Slot {
    /// A request (or frame) is being handled: never evicted meanwhile.
    pub fn busy(&self) -> bool {
        self.slots.set(self.id, State::Busy)
    }

    /// Between requests.
    pub fn idle(&self) {
        self.slots.set(self.id, State::Idle);
    }

    /// A handle that [`Slot::busy`]/[`Slot::idle`] can be called through
    /// from inside a request handler.
    pub fn marker(&self) -> SlotMarker {
        SlotMarker {
            slots: self.slots.clone(),
            id: self.id,
        }
    }

    /// Resolves when a newer connection has taken this slot.
    pub async fn evicted(&mut self) {
        // A dropped sender (the entry removed some other way) also ends it.
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.conns.remove(&self.id);
    }
}

/// [`Slot::busy`] and [`Slot::idle`] without owning the slot.
#[derive(Clone)]
pub struct SlotMarker {
    slots: Arc<Slots>,
    id: u64,
}

impl SlotMarker {
    /// False when the connection has just been evicted: it must not start
    /// the request.
    pub fn busy(&self) -> bool {
        self.slots.set(self.id, State::Busy)
    }

    pub fn idle(&self) {
        self.slots.set(self.id, State::Idle);
    }
}

/// Lets a log line through at most once per `every`, and says how many
/// were held back since.
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when the caller should log now (`suppressed`
    /// lines were dropped since the last one); `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match s.0 {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                s.1 = s.1.saturating_add(1);
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// How long a listener waits after a failed `accept` (EMFILE and the like
/// persist; retrying at once spins and floods the log).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a repeated warning of a listener is written.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The rate-limited warnings of one listener, and its accept back-off.
pub struct Noise {
    accept: Throttle,
    full: Throttle,
    /// The config key that sets the connection cap (named in the warning).
    limit_key: &'static str,
}

impl Noise {
    pub fn new(limit_key: &'static str) -> Noise {
        Noise {
            accept: Throttle::new(LOG_EVERY),
            full: Throttle::new(LOG_EVERY),
            limit_key,
        }
    }

    /// Logs (at most once per interval) and waits before the next accept:
    /// out of file descriptors, accept fails again at once.
    pub async fn accept_failed(&self, door: &str, e: &std::io::Error) {
        if let Some(held) = self.accept.allow() {
            tracing::warn!(error = %e, repeated = held, "{door} accept failed; retrying");
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }

    /// A slot, or `None` (the caller drops the connection) when every slot
    /// holds a request in progress.
    pub fn admit(&self, slots: &Arc<Slots>, door: &str) -> Option<Slot> {
        match slots.admit() {
            Some((slot, Admitted::Free)) => Some(slot),
            Some((slot, Admitted::Evicted)) => {
                tracing::debug!(
                    "{door}: all connection slots taken; the oldest idle connection was closed"
                );
                Some(slot)
            }
            None => {
                if let Some(held) = self.full.allow() {
                    tracing::warn!(
                        limit = slots.max(),
                        repeated = held,
                        "{door} connection refused: every connection is busy ({})",
                        self.limit_key
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_fresh_connection_is_evicted_first() {
        let slots = Slots::new(3, false);
        let (mut a, _) = slots.admit().unwrap();
        let (b, _) = slots.admit().unwrap();
        let (mut c, _) = slots.admit().unwrap();
        b.busy();
        let (d, how) = slots.admit().unwrap();
        assert_eq!(how, Admitted::Evicted);
        assert_eq!(slots.in_use(), 3);
        futures_lite_ready(&mut a);
        // b is busy, c and d are fresh: c goes next.
        let (_e, _) = slots.admit().unwrap();
        assert_eq!(slots.in_use(), 3);
        futures_lite_ready(&mut c);
        // An evicted connection cannot start a request.
        assert!(!c.busy());
        drop(c);
        assert_eq!(slots.in_use(), 3);
        assert!(d.busy());
        drop(d);
        assert_eq!(slots.in_use(), 2);
    }

    #[test]
    fn idle_connections_are_kept_unless_the_listener_evicts_them() {
        let slots = Slots::new(1, false);
        let (a, _) = slots.admit().unwrap();
        a.idle();
        assert!(slots.admit().is_none());
        a.busy();
        assert!(slots.admit().is_none());

        let slots = Slots::new(1, true);
        let (a, _) = slots.admit().unwrap();
        a.idle();
        assert_eq!(slots.admit().map(|(_, how)| how), Some(Admitted::Evicted));
        let (b, _) = slots.admit().unwrap();
        b.busy();
        assert!(slots.admit().is_none());
    }

    #[test]
    fn a_throttle_lets_one_line_through_per_interval() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        let t = Throttle::new(Duration::ZERO);
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), Some(0));
    }

    /// The eviction signal of `slot` has fired.
    fn futures_lite_ready(slot: &mut Slot) {
        assert!(slot.evicted.try_recv().is_ok());
    }
}
