//! Which key each owner seals new values with: the owner → current handle
//! index of the key view.
//!
//! A hash map of 100,000 patients held 4.3 MB, and it doubles (to 8.6 MB,
//! with both tables alive for the moment of the copy) as the 114,689th
//! patient arrives: during an ingest of new patients that was the largest
//! single step of the daemon's peak memory. Here the patients sit in a
//! vector sorted by id (24 bytes each), and the newest in a small map that
//! is merged into the vector once it holds [`MERGE_AT`] of them.

use crate::model::PatientId;
use std::collections::HashMap;

use super::keyring::KeyOwner;

/// How many patients wait in the small map before a merge (one linear pass
/// over the vector): merges stay rare, and the map small.
const MERGE_AT: usize = 4096;

#[derive(Default)]
pub(super) struct CurrentKeys {
    root: Option<u64>,
    system: Option<u64>,
    /// Sorted by patient id, each id once.
    sorted: Vec<(PatientId, u64)>,
    /// Patients not in `sorted`.
    recent: HashMap<PatientId, u64>,
}

impl CurrentKeys {
    pub(super) fn with_capacity(patients: usize) -> Self {
        Self {
            sorted: Vec::with_capacity(patients),
            ..Self::default()
        }
    }

    pub(super) fn get(&self, owner: KeyOwner) -> Option<u64> {
        match owner {
            KeyOwner::Root => self.root,
            KeyOwner::System => self.system,
            KeyOwner::Patient(p) => self.recent.get(&p).copied().or_else(|| {
                self.sorted
                    .binary_search_by_key(&p, |e| e.0)
                    .ok()
                    .and_then(|i| self.sorted.get(i))
                    .map(|e| e.1)
            }),
        }
    }

    pub(super) fn insert(&mut self, owner: KeyOwner, handle: u64) {
        let p = match owner {
            KeyOwner::Root => return self.root = Some(handle),
            KeyOwner::System => return self.system = Some(handle),
            KeyOwner::Patient(p) => p,
        };
        if let Ok(i) = self.sorted.binary_search_by_key(&p, |e| e.0) {
            if let Some(e) = self.sorted.get_mut(i) {
                e.1 = handle;
            }
            return;
        }
        self.recent.insert(p, handle);
        if self.recent.len() >= MERGE_AT {
            let mut newest: Vec<(PatientId, u64)> = self.recent.drain().collect();
            newest.sort_unstable_by_key(|e| e.0);
            self.sorted.extend(newest);
            // Two sorted runs: the stable sort finds them and merges them
            // in one linear pass (the open of 100,000 patients merges 24
            // times).
            self.sorted.sort_by_key(|e| e.0);
        }
    }

    pub(super) fn remove(&mut self, owner: KeyOwner) {
        match owner {
            KeyOwner::Root => self.root = None,
            KeyOwner::System => self.system = None,
            KeyOwner::Patient(p) => {
                if self.recent.remove(&p).is_none() {
                    if let Ok(i) = self.sorted.binary_search_by_key(&p, |e| e.0) {
                        self.sorted.remove(i);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient(n: u32) -> KeyOwner {
        let mut id = [0u8; 16];
        // Spread over the id space, not in insertion order.
        id[..4].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
        id[4..8].copy_from_slice(&n.to_be_bytes());
        KeyOwner::Patient(PatientId(id))
    }

    #[test]
    fn lookups_hold_across_merges_updates_and_removals() {
        let mut current = CurrentKeys::with_capacity(16);
        current.insert(KeyOwner::Root, 1);
        current.insert(KeyOwner::System, 2);
        let n = (MERGE_AT * 2 + 100) as u32;
        for i in 0..n {
            current.insert(patient(i), u64::from(i) + 10);
        }
        assert_eq!(current.sorted.len(), MERGE_AT * 2);
        assert_eq!(current.recent.len(), 100);
        for i in 0..n {
            assert_eq!(current.get(patient(i)), Some(u64::from(i) + 10));
        }
        // A newer key for a patient in the vector and one in the map.
        current.insert(patient(5), 99_999);
        current.insert(patient(n - 1), 88_888);
        assert_eq!(current.get(patient(5)), Some(99_999));
        assert_eq!(current.get(patient(n - 1)), Some(88_888));
        current.remove(patient(5));
        current.remove(patient(n - 1));
        assert_eq!(current.get(patient(5)), None);
        assert_eq!(current.get(patient(n - 1)), None);
        assert_eq!(current.get(patient(6)), Some(16));
        assert_eq!(current.get(patient(n)), None);
        assert_eq!(current.get(KeyOwner::Root), Some(1));
        assert_eq!(current.get(KeyOwner::System), Some(2));
        current.remove(KeyOwner::System);
        assert_eq!(current.get(KeyOwner::System), None);
        assert!(current.sorted.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
