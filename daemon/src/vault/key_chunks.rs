//! The key view's keys sorted by handle, in chunks of fixed room.
//!
//! Why chunks and not one vector: the view's vector grew by copying (a
//! reallocation would free the old buffer with its secrets in it), so as
//! the 112,517th patient arrived at a 100,000-patient store, the old 7 MB
//! and the new copy were resident together: a step of the daemon's peak
//! memory under an ingest of new patients (docs/performance.md). Here the
//! room grows a chunk (256 KiB) at a time, and no chunk is ever
//! reallocated: a full chunk that must take a key in its middle is split,
//! its upper half cloned into a new chunk and dropped (so zeroised) from
//! the old one.

/// How many keys a chunk holds at most (64 bytes each: 256 KiB).
const CHUNK: usize = 4096;

pub(super) trait Handled: Clone {
    fn handle(&self) -> u64;
}

pub(super) struct KeyChunks<T> {
    /// Each non-empty, sorted, every handle below the next chunk's first.
    chunks: Vec<Vec<T>>,
}

impl<T: Handled> Default for KeyChunks<T> {
    fn default() -> Self {
        Self { chunks: Vec::new() }
    }
}

impl<T: Handled> KeyChunks<T> {
    /// The chunk that holds `handle` or would take it.
    fn chunk_for(&self, handle: u64) -> usize {
        let after = self
            .chunks
            .partition_point(|c| c.first().is_some_and(|k| k.handle() <= handle));
        after.saturating_sub(1)
    }

    fn find(&self, handle: u64) -> Option<(usize, usize)> {
        let c = self.chunk_for(handle);
        let i = self
            .chunks
            .get(c)?
            .binary_search_by_key(&handle, T::handle)
            .ok()?;
        Some((c, i))
    }

    pub(super) fn get(&self, handle: u64) -> Option<&T> {
        let (c, i) = self.find(handle)?;
        self.chunks.get(c)?.get(i)
    }

    pub(super) fn get_mut(&mut self, handle: u64) -> Option<&mut T> {
        let (c, i) = self.find(handle)?;
        self.chunks.get_mut(c)?.get_mut(i)
    }

    /// Puts `key` in its place, replacing the one with its handle.
    pub(super) fn upsert(&mut self, key: T) {
        if let Some(slot) = self.get_mut(key.handle()) {
            *slot = key;
            return;
        }
        // The common case: a new handle, the highest so far.
        let last_full = self.chunks.last().is_none_or(|c| c.len() == CHUNK);
        let is_highest = self
            .chunks
            .last()
            .and_then(|c| c.last())
            .is_none_or(|k| k.handle() < key.handle());
        if is_highest {
            if last_full {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            if let Some(c) = self.chunks.last_mut() {
                c.push(key);
            }
            return;
        }
        let mut c = self.chunk_for(key.handle());
        if self.chunks.get(c).is_some_and(|chunk| chunk.len() == CHUNK) {
            self.split(c);
            if self
                .chunks
                .get(c + 1)
                .and_then(|n| n.first())
                .is_some_and(|k| k.handle() < key.handle())
            {
                c += 1;
            }
        }
        if let Some(chunk) = self.chunks.get_mut(c) {
            let i = chunk.partition_point(|k| k.handle() < key.handle());
            chunk.insert(i, key);
        }
    }

    /// Splits a full chunk in two: the upper half cloned into a new chunk,
    /// then dropped from this one (zeroised, not just forgotten).
    fn split(&mut self, c: usize) {
        let Some(chunk) = self.chunks.get_mut(c) else {
            return;
        };
        let half = chunk.len() / 2;
        let mut upper = Vec::with_capacity(CHUNK);
        upper.extend(chunk.iter().skip(half).cloned());
        chunk.truncate(half);
        self.chunks.insert(c + 1, upper);
    }

    /// Takes a key out (the caller drops it, which zeroises its secret).
    pub(super) fn remove(&mut self, handle: u64) -> Option<T> {
        let (c, i) = self.find(handle)?;
        let chunk = self.chunks.get_mut(c)?;
        let key = chunk.remove(i);
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        Some(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.chunks.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq)]
    struct K(u64, u32);

    impl Handled for K {
        fn handle(&self) -> u64 {
            self.0
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u64, u32),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..20_000, any::<u32>()).prop_map(|(h, v)| Op::Upsert(h, v)),
            1 => (0u64..20_000).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The chunks behave as one sorted map from handle to key.
        #[test]
        fn chunks_behave_as_one_sorted_map(ops in proptest::collection::vec(op(), 1..12_000)) {
            let mut chunks = KeyChunks::default();
            let mut model = std::collections::BTreeMap::new();
            for op in ops {
                match op {
                    Op::Upsert(h, v) => {
                        chunks.upsert(K(h, v));
                        model.insert(h, v);
                    }
                    Op::Remove(h) => {
                        prop_assert_eq!(chunks.remove(h).map(|k| k.1), model.remove(&h));
                    }
                }
            }
            let got: Vec<(u64, u32)> = chunks.iter().map(|k| (k.0, k.1)).collect();
            let want: Vec<(u64, u32)> = model.iter().map(|(h, v)| (*h, *v)).collect();
            prop_assert_eq!(got, want);
            for (h, v) in &model {
                prop_assert_eq!(chunks.get(*h).map(|k| k.1), Some(*v));
            }
            prop_assert!(chunks.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
            prop_assert!(chunks.chunks.iter().all(|c| c.capacity() == CHUNK));
        }
    }

    #[test]
    fn new_highest_handles_fill_chunks_in_turn_without_reallocating() {
        let mut chunks = KeyChunks::default();
        for h in 0..(3 * CHUNK as u64 + 5) {
            chunks.upsert(K(h * 2, 0));
        }
        assert_eq!(chunks.chunks.len(), 4);
        assert!(chunks.chunks.iter().all(|c| c.capacity() == CHUNK));
        // One in the middle of a full chunk splits it.
        chunks.upsert(K(7, 1));
        assert_eq!(chunks.chunks.len(), 5);
        assert_eq!(chunks.get(7), Some(&K(7, 1)));
        assert_eq!(chunks.iter().count(), 3 * CHUNK + 6);
    }
}
