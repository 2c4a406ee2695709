//! Console sessions, held in memory. Why not sealed in the vault: every
//! page view moves a session's idle deadline, which in the vault would be a
//! durable write per click through the one writer; and a restart (which
//! every offline `staff` command needs anyway) logging everyone out is the
//! safe direction. A session id is 32 random bytes; only its SHA-256 is
//! kept as the map key, so a heap dump does not hand out live cookies.

use super::staff::Role;
use jiff::{SignedDuration, Timestamp};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// More open sessions than a clinic has desks: the oldest goes first.
const MAX_SESSIONS: usize = 1000;

#[derive(Clone)]
pub struct Session {
    pub name: String,
    pub role: Role,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    created: Timestamp,
    last_seen: Timestamp,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle: SignedDuration,
    absolute: SignedDuration,
}

/// A random token: 32 bytes, hex.
pub fn token() -> Option<String> {
    let mut b = [0u8; 32];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(hex::encode(b))
}

fn digest(id: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Sessions {
    pub fn new(idle: std::time::Duration, absolute: std::time::Duration) -> Self {
        let signed = |d: std::time::Duration| {
            SignedDuration::try_from(d).unwrap_or(SignedDuration::from_mins(15))
        };
        Self {
            map: Mutex::default(),
            idle: signed(idle),
            absolute: signed(absolute),
        }
    }

    /// A new session; returns its id (the cookie value).
    pub fn create(&self, name: &str, role: Role, now: Timestamp) -> Option<String> {
        let id = token()?;
        let csrf = token()?;
        let mut map = crate::sync::lock(&self.map);
        self.expire(&mut map, now);
        if map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            digest(&id),
            Session {
                name: name.to_owned(),
                role,
                csrf,
                created: now,
                last_seen: now,
            },
        );
        Some(id)
    }

    fn live(&self, s: &Session, now: Timestamp) -> bool {
        now.duration_since(s.last_seen) < self.idle && now.duration_since(s.created) < self.absolute
    }

    fn expire(&self, map: &mut HashMap<[u8; 32], Session>, now: Timestamp) {
        map.retain(|_, s| self.live(s, now));
    }

    /// The live session with this id (its idle clock restarts), or None.
    pub fn touch(&self, id: &str, now: Timestamp) -> Option<Session> {
        let key = digest(id);
        let mut map = crate::sync::lock(&self.map);
        let live = map.get(&key).is_some_and(|s| self.live(s, now));
        if !live {
            map.remove(&key);
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// Whether the session is live, without restarting its idle clock.
    pub fn alive(&self, id: &str, now: Timestamp) -> bool {
        crate::sync::lock(&self.map)
            .get(&digest(id))
            .is_some_and(|s| self.live(s, now))
    }

    pub fn remove(&self, id: &str) {
        crate::sync::lock(&self.map).remove(&digest(id));
    }

    /// Ends every session of a staff member (disabled or locked meanwhile).
    pub fn remove_staff(&self, name: &str) {
        crate::sync::lock(&self.map).retain(|_, s| s.name != name);
    }

    pub fn len(&self) -> usize {
        crate::sync::lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failed sign-ins per client address: after 10 in a minute, further
/// attempts from it are refused until the minute is over, whatever the
/// names tried (the per-account lockout stops guessing one account; this
/// slows spraying many). Good sign-ins do not count: several desks may
/// share an address.
#[derive(Default)]
pub struct LoginThrottle {
    map: Mutex<HashMap<IpAddr, (Timestamp, u32)>>,
}

const FAILURES_PER_MINUTE: u32 = 10;

impl LoginThrottle {
    /// The failures of `ip` in its current minute (a new minute starts
    /// from zero).
    fn window(
        map: &mut HashMap<IpAddr, (Timestamp, u32)>,
        ip: IpAddr,
        now: Timestamp,
    ) -> &mut (Timestamp, u32) {
        if map.len() > 10_000 {
            map.retain(|_, (start, _)| now.duration_since(*start) < SignedDuration::from_mins(1));
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= SignedDuration::from_mins(1) {
            *entry = (now, 0);
        }
        entry
    }

    /// Whether `ip` may try now.
    pub fn allow(&self, ip: IpAddr, now: Timestamp) -> bool {
        let mut map = crate::sync::lock(&self.map);
        Self::window(&mut map, ip, now).1 < FAILURES_PER_MINUTE
    }

    /// Counts a failed attempt of `ip`.
    pub fn failed(&self, ip: IpAddr, now: Timestamp) {
        let mut map = crate::sync::lock(&self.map);
        let w = Self::window(&mut map, ip, now);
        w.1 = w.1.saturating_add(1);
    }
}
