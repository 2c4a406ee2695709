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
            merge_into(&mut self.sorted, &newest);
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

/// Merges `newest` (sorted, none of them in `sorted`) into `sorted` in
/// place, from the back: one linear pass and no scratch buffer. A stable
/// sort of the two runs did the same work with a buffer as large as the
/// index (2.9 MB at 120,000 patients), allocated and touched at every merge
/// of an ingest of new patients (docs/performance.md).
fn merge_into(sorted: &mut Vec<(PatientId, u64)>, newest: &[(PatientId, u64)]) {
    let old_len = sorted.len();
    // Grow by what is added (the allocator's mremap moves large buffers
    // without copying), not to double the index.
    sorted.reserve_exact(newest.len());
    sorted.extend_from_slice(newest);
    // Now `sorted` is [old run | newest]; fill from the back, taking the
    // larger head of the two runs each time. Every old element moves at
    // most once, to a slot at or after its own, so nothing unread is
    // overwritten.
    let (mut old, mut new, mut to) = (old_len, newest.len(), sorted.len());
    while new > 0 {
        to -= 1;
        let take_old = old > 0
            && match (sorted.get(old - 1), newest.get(new - 1)) {
                (Some(o), Some(n)) => o.0 > n.0,
                _ => false,
            };
        if take_old {
            old -= 1;
            sorted.swap(old, to);
        } else {
            new -= 1;
            if let (Some(slot), Some(n)) = (sorted.get_mut(to), newest.get(new)) {
                *slot = *n;
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

    #[test]
    fn the_in_place_merge_gives_the_sorted_union_for_every_interleaving() {
        let id = |n: u32| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_be_bytes());
            PatientId(id)
        };
        // Old and new runs of every length up to 10 over 10 ids, each id in
        // one run or neither (a base-3 digit per id).
        for pattern in 0..3u32.pow(10) {
            let (mut old, mut new) = (Vec::new(), Vec::new());
            let mut rest = pattern;
            for n in 0..10u32 {
                match rest % 3 {
                    1 => old.push((id(n), u64::from(n))),
                    2 => new.push((id(n), u64::from(n) + 100)),
                    _ => {}
                }
                rest /= 3;
            }
            let mut want: Vec<_> = old.iter().chain(&new).copied().collect();
            want.sort_by_key(|e| e.0);
            let mut merged = old.clone();
            merge_into(&mut merged, &new);
            assert_eq!(merged, want, "old {old:?} new {new:?}");
        }
    }
}
