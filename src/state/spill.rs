//! Records a write-back store evicted from its cache, from the commit that
//! evicted them until that commit is durable.
//!
//! Until then RocksDB does not hold them yet, so the store still answers
//! from here (an evicted account that comes back in the next batch is
//! taken back from here, not read). The list itself is shared with the
//! commit thread, which encodes the records into the batch it writes: on
//! a long tail that encoding was a tenth of the engine thread's time, and
//! the commit thread of `replay` is otherwise idle. Neither side changes
//! the list; what the engine takes back is a copy (see [`Spilled::take`]).

use std::sync::Arc;

use hashbrown::HashTable;

/// Evicted records, in the order they were evicted, which is the order
/// they go into the batch in: not sorted by key, since the accounts' and
/// users' memtables are hash tables, and the walk in key order jumped
/// across the list (BENCHMARKS.md: the long-tail `replay` about 7 %
/// faster without the sort).
#[derive(Debug)]
pub struct SpillList<E> {
    entries: Vec<(String, E)>,
}

impl<E> SpillList<E> {
    /// The records, in the order they go into the batch.
    pub fn in_order(&self) -> impl Iterator<Item = (&str, &E)> {
        self.entries.iter().map(|(id, e)| (id.as_str(), e))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The engine's side: the shared list and an index of what is still here
/// (not taken back).
pub struct Spilled<E> {
    list: Arc<SpillList<E>>,
    /// Positions in the list, by the id's hash.
    index: HashTable<u32>,
    hash: fn(&str) -> u64,
}

impl<E: Clone> Default for Spilled<E> {
    fn default() -> Self {
        Spilled::with_hash(super::prefetch::id_hash)
    }
}

impl<E: Clone> Spilled<E> {
    fn with_hash(hash: fn(&str) -> u64) -> Self {
        Spilled { list: Arc::new(SpillList { entries: Vec::new() }), index: HashTable::new(), hash }
    }

    /// Holds `entries` (ids distinct), replacing what was held, and
    /// returns the list to hand to the commit thread.
    pub fn hold(&mut self, entries: Vec<(String, E)>) -> Arc<SpillList<E>> {
        self.index.clear();
        let hash = self.hash;
        for (i, (id, _)) in entries.iter().enumerate() {
            self.index.insert_unique(hash(id), i as u32, |&j| hash(&entries[j as usize].0));
        }
        self.list = Arc::new(SpillList { entries });
        self.list.clone()
    }

    fn find(&self, id: &str) -> Option<u32> {
        let entries = &self.list.entries;
        self.index.find((self.hash)(id), |&i| entries[i as usize].0 == id).copied()
    }

    pub fn get(&self, id: &str) -> Option<&E> {
        self.find(id).map(|i| &self.list.entries[i as usize].1)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// Takes `id`'s record back (a copy: the commit thread may still be
    /// encoding the list), after which it is no longer here.
    pub fn take(&mut self, id: &str) -> Option<E> {
        if self.index.is_empty() {
            return None;
        }
        let entries = &self.list.entries;
        let hash = self.hash;
        let found = self.index.find_entry(hash(id), |&i| entries[i as usize].0 == id).ok()?;
        let (i, _) = found.remove();
        Some(entries[i as usize].1.clone())
    }

    /// What is still here (in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &E)> {
        self.index.iter().map(|&i| {
            let (id, e) = &self.list.entries[i as usize];
            (id.as_str(), e)
        })
    }

    /// Holds nothing (the commit is durable, or dropped): the list is
    /// freed by whichever side lets go of it last.
    pub fn clear(&mut self) {
        if !self.list.entries.is_empty() {
            self.list = Arc::new(SpillList { entries: Vec::new() });
        }
        self.index.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("id-{i}"), i as u32)).collect()
    }

    /// Held, looked up, taken back once, listed and cleared as a
    /// `HashMap` would be, also when every id has the same hash.
    #[test]
    fn answers_as_a_map_would() {
        for hash in [super::super::prefetch::id_hash as fn(&str) -> u64, |_: &str| 7] {
            let mut s: Spilled<u32> = Spilled::with_hash(hash);
            assert!(s.get("id-1").is_none());
            assert!(s.take("id-1").is_none());
            let list = s.hold(entries(40).into_iter().rev().collect());
            assert_eq!(list.len(), 40);
            // Written in the order given.
            let written: Vec<u32> = list.in_order().map(|(_, &v)| v).collect();
            assert_eq!(written, (0..40).rev().collect::<Vec<_>>());
            let mut map: std::collections::HashMap<String, u32> = entries(40).into_iter().collect();
            for i in (0..40).step_by(3) {
                let id = format!("id-{i}");
                assert_eq!(s.take(&id), map.remove(&id));
                assert_eq!(s.take(&id), None, "taken twice");
                assert!(!s.contains_key(&id));
            }
            for i in 0..45 {
                let id = format!("id-{i}");
                assert_eq!(s.get(&id), map.get(&id), "{id}");
                assert_eq!(s.contains_key(&id), map.contains_key(&id));
            }
            let mut left: Vec<(String, u32)> = s.iter().map(|(k, &v)| (k.to_string(), v)).collect();
            left.sort();
            let mut want: Vec<(String, u32)> = map.into_iter().collect();
            want.sort();
            assert_eq!(left, want);
            // The commit thread's list is whole, whatever was taken back.
            assert_eq!(list.in_order().count(), 40);
            s.clear();
            assert!(s.get("id-2").is_none() && s.iter().next().is_none());
            // Held again after a clear.
            s.hold(entries(3));
            assert_eq!(s.get("id-2"), Some(&2));
            assert_eq!(list.len(), 40, "the list handed out is not changed by what the store holds next");
        }
    }
}
