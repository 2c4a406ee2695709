//! The sender's pace: one slot every `1/rate` seconds (no bursts, so a
//! number never exceeds its Meta throughput in any window), slowed down
//! when Meta says we are too fast (130429, 80007, 4) and recovering
//! gradually after that.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Limiter {
    /// The configured spacing (None: unlimited, for benchmarks).
    configured: Option<Duration>,
    /// The spacing in force (longer after throttling).
    current: Option<Duration>,
    next: Option<Instant>,
}

/// How long a throttle answer stops all sending.
const THROTTLE_PAUSE: Duration = Duration::from_secs(1);
/// How far behind schedule the sender may catch up (at most
/// `rate * CATCH_UP` messages back to back).
const CATCH_UP: Duration = Duration::from_millis(250);
/// Never slower than this spacing (1 message per second).
const SLOWEST: Duration = Duration::from_secs(1);

impl Limiter {
    pub fn new(rate_per_second: Option<u32>) -> Self {
        let configured = rate_per_second
            .filter(|r| *r > 0)
            .map(|r| Duration::from_secs(1) / r);
        Self {
            configured,
            current: configured,
            next: None,
        }
    }

    /// Reserves the next slot at or after `now`; the caller sends at the
    /// returned instant. Slots are spaced from the previous slot, not from
    /// `now`, so timer lateness does not lower the rate.
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let Some(spacing) = self.current else {
            return now;
        };
        let at = match self.next {
            // Slots missed by less than CATCH_UP (the worker was busy
            // recording a round) are used late, so the average holds; older
            // ones are lost: no burst after an idle period.
            Some(n) if n + CATCH_UP >= now => n,
            _ => now,
        };
        self.next = Some(at + spacing);
        at
    }

    /// Meta said "too fast": halve the rate and stop for a moment.
    pub fn throttled(&mut self, now: Instant) {
        let base = self
            .current
            .or(self.configured)
            .unwrap_or(Duration::from_millis(1));
        self.current = Some((base * 2).min(SLOWEST));
        self.next = Some(self.next.unwrap_or(now).max(now + THROTTLE_PAUSE));
    }

    /// A message went through: recover 1 % of the way to the configured
    /// rate.
    pub fn succeeded(&mut self) {
        match (self.current, self.configured) {
            (Some(cur), Some(cfg)) if cur > cfg => {
                self.current = Some((cur - (cur - cfg) / 100 - Duration::from_nanos(1)).max(cfg));
            }
            (Some(_), None) => {
                // Unlimited again once recovered.
                self.current = self
                    .current
                    .map(|c| c * 99 / 100)
                    .filter(|c| *c > Duration::from_micros(10));
            }
            _ => {}
        }
    }

    /// The rate in force (messages per second; None: unlimited).
    pub fn rate(&self) -> Option<f64> {
        self.current.map(|d| 1.0 / d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spaces_slots_evenly_at_the_configured_rate() {
        let mut l = Limiter::new(Some(80));
        let t0 = Instant::now();
        let mut last = t0;
        for _ in 0..800 {
            last = l.reserve(t0);
        }
        // 800 slots at 80/s span 799 spacings of 12.5 ms.
        let span = last - t0;
        assert!((span.as_secs_f64() - 9.9875).abs() < 0.01, "{span:?}");
    }

    #[tokio::test]
    async fn no_burst_after_idle_and_throttle_slows_down() {
        let mut l = Limiter::new(Some(10));
        let t0 = Instant::now();
        l.reserve(t0);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(l.reserve(later), later);
        assert_eq!(l.reserve(later), later + Duration::from_millis(100));
        l.throttled(later);
        assert!(l.rate().unwrap() < 5.1);
        let next = l.reserve(later);
        assert!(next >= later + THROTTLE_PAUSE);
        for _ in 0..2000 {
            l.succeeded();
        }
        assert!((l.rate().unwrap() - 10.0).abs() < 0.01);
        let mut free = Limiter::new(None);
        assert_eq!(free.reserve(t0), t0);
        free.throttled(t0);
        assert!(free.rate().is_some());
        for _ in 0..2000 {
            free.succeeded();
        }
        assert!(free.rate().is_none());
    }
}
