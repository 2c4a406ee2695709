//! Time is a parameter. Product code never reads the clock directly
//! (clippy.toml forbids it); it asks a [`Clock`], which tests replace with a
//! [`ManualClock`] they move by hand.

use jiff::{SignedDuration, Timestamp};
use std::sync::{Arc, Mutex};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The wall clock. The only place in the product that reads real time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned clock read
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, by: SignedDuration) {
        let mut t = crate::sync::lock(&self.0);
        *t = t.saturating_add(by).unwrap_or(*t);
    }

    pub fn set(&self, to: Timestamp) {
        *crate::sync::lock(&self.0) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *crate::sync::lock(&self.0)
    }
}

pub type SharedClock = Arc<dyn Clock>;
