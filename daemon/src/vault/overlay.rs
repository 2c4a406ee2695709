//! Commits applied but not yet in sled: what the store's reads see first.
//!
//! A commit's writes land here on the writer thread, and reach sled only
//! after its write-ahead log record is durable (engine.rs). Every read of
//! the store looks here before sled: the writer's next job sees the
//! previous job's writes at once, and sled never holds a write whose record
//! could still be lost, so a crash can leave sled behind the log but never
//! ahead of it with a torn commit.

use super::store::{StoreResult, Tree};
use std::collections::BTreeMap;

/// The latest write to a key not yet in sled: its value (`None`: removed)
/// and the number of the commit that wrote it.
#[derive(Clone)]
pub struct Entry {
    pub value: Option<sled::IVec>,
    pub number: u64,
}

/// One ordered map per tree.
pub struct Overlay {
    trees: Vec<BTreeMap<Vec<u8>, Entry>>,
}

impl Default for Overlay {
    fn default() -> Self {
        Self {
            trees: Tree::ALL.iter().map(|_| BTreeMap::new()).collect(),
        }
    }
}

impl Overlay {
    fn map(&self, tree: Tree) -> Option<&BTreeMap<Vec<u8>, Entry>> {
        self.trees.get(tree.slot())
    }

    pub fn get(&self, tree: Tree, key: &[u8]) -> Option<&Entry> {
        self.map(tree)?.get(key)
    }

    /// Records that commit `number` wrote `value` (`None`: removed) at `key`.
    pub fn put(&mut self, tree: Tree, key: Vec<u8>, value: Option<sled::IVec>, number: u64) {
        if let Some(map) = self.trees.get_mut(tree.slot()) {
            map.insert(key, Entry { value, number });
        }
    }

    /// Forgets `key` once sled holds what commit `number` wrote there,
    /// unless a later commit has written it again since.
    pub fn settle(&mut self, tree: Tree, key: &[u8], number: u64) {
        if let Some(map) = self.trees.get_mut(tree.slot()) {
            if map.get(key).is_some_and(|e| e.number <= number) {
                map.remove(key);
            }
        }
    }

    /// A copy of the entries of `tree` from `start` on, in key order.
    pub fn range_from(&self, tree: Tree, start: &[u8]) -> Vec<(Vec<u8>, Option<sled::IVec>)> {
        self.map(tree)
            .map(|m| {
                m.range(start.to_vec()..)
                    .map(|(k, e)| (k.clone(), e.value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// sled's ordered scan with the overlay's entries laid over it: an entry
/// replaces sled's value for its key, a removal hides it.
pub struct Merged<I: Iterator> {
    sled: std::iter::Peekable<I>,
    over: std::iter::Peekable<std::vec::IntoIter<(Vec<u8>, Option<sled::IVec>)>>,
    /// Set once sled's side has yielded an error: the scan ends there.
    failed: bool,
}

impl<I> Merged<I>
where
    I: Iterator<Item = StoreResult<(sled::IVec, sled::IVec)>>,
{
    pub fn new(sled: I, over: Vec<(Vec<u8>, Option<sled::IVec>)>) -> Self {
        Self {
            sled: sled.peekable(),
            over: over.into_iter().peekable(),
            failed: false,
        }
    }
}

impl<I> Iterator for Merged<I>
where
    I: Iterator<Item = StoreResult<(sled::IVec, sled::IVec)>>,
{
    type Item = StoreResult<(sled::IVec, sled::IVec)>;

    /// Ends after the first error. A failed sled instance (a write hit
    /// ENOSPC) yields the same error forever without moving on, so a
    /// consumer that counts or skips errors would spin, allocating, until
    /// the process ran out of memory (seen in the disk-full test).
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let order = match (self.sled.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => {
                    self.failed = true;
                    return self.sled.next();
                }
                (Some(Ok(_)), None) => return self.sled.next(),
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((sk, _))), Some((ok, _))) => sk.as_ref().cmp(ok.as_slice()),
            };
            if order == std::cmp::Ordering::Less {
                return self.sled.next();
            }
            if order == std::cmp::Ordering::Equal {
                // The overlay's entry is newer than sled's value.
                self.sled.next();
            }
            if let Some((key, Some(value))) = self.over.next() {
                return Some(Ok((sled::IVec::from(key), value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kv(k: &str, v: &str) -> StoreResult<(sled::IVec, sled::IVec)> {
        Ok((k.as_bytes().into(), v.as_bytes().into()))
    }

    #[test]
    fn the_overlay_replaces_and_hides_sled_values_in_key_order() {
        let sled = vec![kv("a", "1"), kv("c", "3"), kv("e", "5")];
        let over = vec![
            (b"b".to_vec(), Some(sled::IVec::from(b"2"))),
            (b"c".to_vec(), None),
            (b"e".to_vec(), Some(sled::IVec::from(b"55"))),
            (b"f".to_vec(), None),
            (b"g".to_vec(), Some(sled::IVec::from(b"7"))),
        ];
        let merged: Vec<(Vec<u8>, Vec<u8>)> = Merged::new(sled.into_iter(), over)
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = [("a", "1"), ("b", "2"), ("e", "55"), ("g", "7")]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(merged, want);
    }

    #[test]
    fn a_scan_ends_at_the_first_error_of_an_engine_that_repeats_it_forever() {
        // A failed sled instance: one good entry, then the same error for
        // ever, never moving on (what its iterator does after ENOSPC).
        let failed = std::iter::once(kv("a", "1")).chain(std::iter::repeat_with(|| {
            Err(sled::Error::Io(std::io::Error::other("no space left")))
        }));
        let over = vec![(b"z".to_vec(), Some(sled::IVec::from(b"9")))];
        let items: Vec<bool> = Merged::new(failed, over).map(|r| r.is_ok()).collect();
        assert_eq!(items, [true, false]);
    }

    #[test]
    fn an_entry_is_settled_only_by_the_commit_that_wrote_it_or_a_later_one() {
        let mut overlay = Overlay::default();
        overlay.put(Tree::Meta, b"k".to_vec(), Some(b"old".into()), 1);
        overlay.put(Tree::Meta, b"k".to_vec(), Some(b"new".into()), 2);
        overlay.settle(Tree::Meta, b"k", 1);
        assert_eq!(
            overlay.get(Tree::Meta, b"k").unwrap().value.as_deref(),
            Some(&b"new"[..])
        );
        overlay.settle(Tree::Meta, b"k", 2);
        assert!(overlay.get(Tree::Meta, b"k").is_none());
    }
}
