//! Console sessions: a map in memory that every request reads, written
//! through to sealed records in the vault (`session_store`) at sign-in,
//! sign-out and once a minute of activity, so that they outlive a restart.
//! A session id is 32 random bytes; only its SHA-256 is kept (as the map
//! key and the record's key), so neither a heap dump nor the vault hands
//! out live cookies.

use super::session_store::{self, Stored, SEEN_EVERY};
use super::staff::Role;
use crate::audit::AuditDraft;
use crate::vault::{Vault, VaultError};
use jiff::{SignedDuration, Timestamp};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use tracing::warn;

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
    /// The `last_seen` of the copy in the vault.
    stored_seen: Timestamp,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn stored(&self) -> Stored {
        Stored {
            name: self.name.clone(),
            role: self.role,
            csrf: self.csrf.clone(),
            created: self.created,
            last_seen: self.last_seen,
        }
    }
}

type Map = HashMap<[u8; 32], Session>;

pub struct Sessions {
    map: Mutex<Map>,
    /// Digests of sessions that ended in memory (expired, evicted) whose
    /// records the next write removes.
    stale: Mutex<Vec<[u8; 32]>>,
    vault: Vault,
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
    /// The sessions stored in `vault` that are still live at `now` (the
    /// others are removed at the next write).
    pub fn open(
        vault: Vault,
        idle: std::time::Duration,
        absolute: std::time::Duration,
        now: Timestamp,
    ) -> Result<Self, VaultError> {
        let signed = |d: std::time::Duration| {
            SignedDuration::try_from(d).unwrap_or(SignedDuration::from_mins(15))
        };
        let sessions = Self {
            map: Mutex::default(),
            stale: Mutex::default(),
            vault,
            idle: signed(idle),
            absolute: signed(absolute),
        };
        let mut map = Map::new();
        let mut stale = Vec::new();
        for (d, s) in session_store::load_all(&sessions.vault)? {
            let s = Session {
                name: s.name,
                role: s.role,
                csrf: s.csrf,
                created: s.created,
                last_seen: s.last_seen,
                stored_seen: s.last_seen,
            };
            if sessions.live(&s, now) {
                map.insert(d, s);
            } else {
                stale.push(d);
            }
        }
        *crate::sync::lock(&sessions.map) = map;
        *crate::sync::lock(&sessions.stale) = stale;
        Ok(sessions)
    }

    /// A new session, durable before its id (the cookie value) is returned.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        now: Timestamp,
    ) -> Result<Option<String>, VaultError> {
        let (Some(id), Some(csrf)) = (token(), token()) else {
            return Ok(None);
        };
        let s = Session {
            name: name.to_owned(),
            role,
            csrf,
            created: now,
            last_seen: now,
            stored_seen: now,
        };
        let key = digest(&id);
        {
            let mut map = crate::sync::lock(&self.map);
            self.expire(&mut map, now);
            if map.len() >= MAX_SESSIONS {
                let oldest = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    map.remove(&k);
                    crate::sync::lock(&self.stale).push(k);
                }
            }
        }
        let gone = std::mem::take(&mut *crate::sync::lock(&self.stale));
        let put = Some((key, s.stored()));
        if let Err(e) = session_store::write(&self.vault, put, gone.clone(), None, now).await {
            crate::sync::lock(&self.stale).extend(gone);
            return Err(e);
        }
        crate::sync::lock(&self.map).insert(key, s);
        Ok(Some(id))
    }

    fn live(&self, s: &Session, now: Timestamp) -> bool {
        now.duration_since(s.last_seen) < self.idle && now.duration_since(s.created) < self.absolute
    }

    fn expire(&self, map: &mut Map, now: Timestamp) {
        let mut stale = crate::sync::lock(&self.stale);
        map.retain(|k, s| {
            let live = self.live(s, now);
            if !live {
                stale.push(*k);
            }
            live
        });
    }

    /// The live session with this id (its idle clock restarts), or None.
    /// Once a minute of activity, the new idle clock is stored (in the
    /// background: a failed write only means the session may end earlier
    /// after a restart).
    pub fn touch(&self, id: &str, now: Timestamp) -> Option<Session> {
        let key = digest(id);
        let mut map = crate::sync::lock(&self.map);
        let live = map.get(&key).is_some_and(|s| self.live(s, now));
        if !live {
            if map.remove(&key).is_some() {
                crate::sync::lock(&self.stale).push(key);
            }
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last_seen = now;
        if now.duration_since(s.stored_seen) >= SEEN_EVERY {
            s.stored_seen = now;
            let put = Some((key, s.stored()));
            let vault = self.vault.clone();
            let gone = std::mem::take(&mut *crate::sync::lock(&self.stale));
            tokio::spawn(async move {
                if let Err(e) = session_store::write(&vault, put, gone, None, now).await {
                    warn!(error = %e, "a console session's activity was not stored");
                }
            });
        }
        Some(s.clone())
    }

    /// Whether the session is live, without restarting its idle clock.
    pub fn alive(&self, id: &str, now: Timestamp) -> bool {
        crate::sync::lock(&self.map)
            .get(&digest(id))
            .is_some_and(|s| self.live(s, now))
    }

    /// Signs a session out: gone from memory at once, its record removed
    /// with a `staff.logout` audit entry.
    pub async fn end(&self, id: &str, now: Timestamp) -> Result<(), VaultError> {
        let key = digest(id);
        let Some(s) = crate::sync::lock(&self.map).remove(&key) else {
            return Ok(());
        };
        let audit = AuditDraft::new(format!("staff:{}", s.name), "staff.logout")
            .detail("staff", s.name.clone());
        session_store::write(&self.vault, None, vec![key], Some(audit), now).await
    }

    /// Ends every session of a staff member in memory (disabled or locked
    /// meanwhile: the commit that did it removed the records).
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
