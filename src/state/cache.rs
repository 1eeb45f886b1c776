//! The store's in-memory cache of records by id (accounts, users): a hash
//! index over a slab of slots, each holding its id (inline when short, as
//! most ids are), the record, and the moment it was last used.
//!
//! It replaces an LRU of boxed nodes (the `lru` crate), whose lookup of a
//! long tail's account or user waited on memory four times in a row (the
//! index's control bytes, its bucket, the node, the id's bytes behind the
//! node's `String`) and then moved the node to the front of a linked list
//! (its two neighbours, two more waits). Here a lookup reads an 8-byte
//! entry of the index (see [`super::index`]) and the slot, whose id is
//! compared in place, and a use is a stamp in a dense array beside the
//! slots. The engine asks the processor for both a few events ahead (see
//! [`Records::prefetch_index`] and `Engine::prefetch`), so that on a long
//! tail a lookup seldom waits on memory at all. The least recently
//! used entries are found when they are evicted, once a commit, by a
//! selection over the stamps: the same entries an LRU would evict, in the
//! same order.

use std::hash::BuildHasher;

use compact_str::CompactString;
use hashbrown::DefaultHashBuilder;

use super::index::Index;

/// How much of a slot [`Records::prefetch`] brings in.
const PREFETCH_BYTES: usize = 1024;

/// A hint to the processor that `p` will be read soon (nothing where no
/// such instruction is used). Never faults, whatever `p` points at.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing the program sees and
    // does not fault on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Records by id, with their order of last use.
pub(crate) struct Records<V> {
    /// Slot numbers, by the id's hash.
    index: Index,
    slots: Vec<Slot<V>>,
    /// Per slot, the clock at its last use (0: a free slot). Apart from the
    /// slots (which are large, about 900 bytes an account), so that finding the
    /// least recently used reads 8 bytes a slot, in order.
    used: Vec<u64>,
    /// Slots free for the next insertion.
    free: Vec<u32>,
    /// (stamp, slot) of every record, while the least recent are chosen
    /// (kept: a fresh vector of this size each commit had its pages
    /// faulted in anew).
    order: Vec<(u64, u32)>,
    /// Uses so far.
    clock: u64,
    hasher: DefaultHashBuilder,
}

struct Slot<V> {
    hash: u64,
    key: CompactString,
    /// `None`: a free slot.
    value: Option<V>,
}

impl<V> Default for Records<V> {
    fn default() -> Self {
        Records::with_capacity(0)
    }
}

impl<V> Records<V> {
    /// Room for `n` records at once (the slots are not grown, and copied,
    /// step by step as the cache fills).
    pub fn with_capacity(n: usize) -> Self {
        Records {
            index: Index::with_capacity(n),
            slots: Vec::with_capacity(n),
            used: Vec::with_capacity(n),
            free: Vec::new(),
            order: Vec::new(),
            clock: 0,
            hasher: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |i| {
            let s = &slots[i as usize];
            s.hash == hash && s.key == key
        })
    }

    #[cfg(test)]
    pub fn get_or_try_insert_with<E>(&mut self, key: &str, make: impl FnOnce() -> Result<V, E>) -> Result<&mut V, E> {
        Ok(self.get_or_try_insert_at(key, make)?.1)
    }

    /// First of two steps that ask the processor for `key`'s record a few
    /// events before it is looked up: the index's cache line where its
    /// probe starts. Reads nothing of the cache.
    #[inline]
    pub fn prefetch_index(&self, key: &str) {
        self.index.prefetch(self.hasher.hash_one(key));
    }

    /// Second step (see [`Records::prefetch_index`]), once that line is
    /// in: `key`'s slot and its use stamp. Reads the index only: the slot
    /// is the first whose hash bits match, nearly always `key`'s (another
    /// is harmless).
    #[inline]
    pub fn prefetch(&self, key: &str) {
        if let Some(i) = self.index.first(self.hasher.hash_one(key)) {
            self.prefetch_slot(i);
        }
    }

    /// Asks the processor for slot `i` (a position from
    /// [`Records::get_or_try_insert_at`] or [`Records::least_recent`]) and
    /// its use stamp, for a loop over slots to ask a few ahead.
    #[inline]
    pub fn prefetch_slot(&self, i: u32) {
        let slot = self.slots.as_ptr().wrapping_add(i as usize).cast::<u8>();
        let lines = std::mem::size_of::<Slot<V>>().min(PREFETCH_BYTES);
        for off in (0..lines).step_by(64) {
            prefetch(slot.wrapping_add(off));
        }
        prefetch(self.used.as_ptr().wrapping_add(i as usize).cast());
    }

    /// The record of `key`, marked used now; made with `make` when absent.
    /// With its slot (see [`Records::at_mut`]).
    #[inline(always)]
    pub fn get_or_try_insert_at<E>(
        &mut self,
        key: &str,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<(u32, &mut V), E> {
        let hash = self.hasher.hash_one(key);
        self.clock += 1;
        let i = match self.find(hash, key) {
            Some(i) => {
                self.used[i as usize] = self.clock;
                i
            }
            None => {
                let value = make()?;
                let slot = Slot { hash, key: CompactString::from(key), value: Some(value) };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = slot;
                        self.used[i as usize] = self.clock;
                        i
                    }
                    None => {
                        self.slots.push(slot);
                        self.used.push(self.clock);
                        u32::try_from(self.slots.len() - 1).expect("fewer than 4 G cached records")
                    }
                };
                self.index.insert(hash, i);
                i
            }
        };
        Ok((i, self.slots[i as usize].value.as_mut().expect("an indexed slot holds a record")))
    }

    /// The record of `key`, not marked used: read straight from slot `i`
    /// (where it was put), without hashing and probing, while the record
    /// there is still `key`'s (as it is until removed); else looked up.
    pub fn at_mut(&mut self, i: u32, key: &str) -> Option<&mut V> {
        if self.slots.get(i as usize).is_some_and(|s| s.value.is_some() && s.key == key) {
            return self.slots[i as usize].value.as_mut();
        }
        self.peek_mut(key)
    }

    /// The record of `key`, not marked used.
    pub fn peek(&self, key: &str) -> Option<&V> {
        let i = self.find(self.hasher.hash_one(key), key)?;
        self.slots[i as usize].value.as_ref()
    }

    pub fn peek_mut(&mut self, key: &str) -> Option<&mut V> {
        let i = self.find(self.hasher.hash_one(key), key)?;
        self.slots[i as usize].value.as_mut()
    }

    #[cfg(test)]
    pub fn contains(&self, key: &str) -> bool {
        self.peek(key).is_some()
    }

    /// Every record with its id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.slots.iter().filter_map(|s| Some((s.key.as_str(), s.value.as_ref()?)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut V)> {
        self.slots.iter_mut().filter_map(|s| Some((s.key.as_str(), s.value.as_mut()?)))
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.used.clear();
        self.free.clear();
    }

    /// The `n` least recently used entries (all of them if fewer), least
    /// recent first, as positions for [`Records::record_at`] and
    /// [`Records::remove_at`] (valid until the next insertion).
    pub fn least_recent(&mut self, n: usize) -> Vec<u32> {
        if n == 0 {
            return Vec::new();
        }
        let used = &mut self.order;
        used.clear();
        used.extend(self.used.iter().enumerate().filter(|(_, &t)| t != 0).map(|(i, &t)| (t, i as u32)));
        if n < used.len() {
            used.select_nth_unstable(n);
            used.truncate(n);
        }
        used.sort_unstable();
        used.iter().map(|&(_, i)| i).collect()
    }

    /// The record at a position from [`Records::least_recent`].
    pub fn record_at(&self, i: u32) -> Option<&V> {
        self.slots.get(i as usize)?.value.as_ref()
    }

    /// Removes the record at a position from [`Records::least_recent`].
    pub fn remove_at(&mut self, i: u32) -> Option<(String, V)> {
        let slot = self.slots.get_mut(i as usize)?;
        let value = slot.value.take()?;
        let key = std::mem::take(&mut slot.key).into_string();
        self.used[i as usize] = 0;
        self.index.remove(slot.hash, i);
        self.free.push(i);
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &mut Records<u32>, key: &str, v: u32) -> u32 {
        *c.get_or_try_insert_with(key, || Ok::<_, ()>(v)).unwrap()
    }

    /// A record is found at its slot while it is there, and by its id
    /// once its slot holds another or nothing.
    #[test]
    fn a_record_is_found_at_its_slot_or_by_its_id() {
        let mut c: Records<u32> = Records::default();
        let (a, _) = c.get_or_try_insert_at("a", || Ok::<_, ()>(1)).unwrap();
        let (b, _) = c.get_or_try_insert_at("b", || Ok::<_, ()>(2)).unwrap();
        assert_eq!(c.at_mut(a, "a").copied(), Some(1));
        assert_eq!(c.at_mut(a, "b").copied(), Some(2), "another's slot: looked up");
        assert_eq!(c.at_mut(99, "b").copied(), Some(2), "no such slot: looked up");
        c.remove_at(a);
        assert_eq!(c.at_mut(a, "a"), None, "removed");
        let (again, _) = c.get_or_try_insert_at("c", || Ok::<_, ()>(3)).unwrap();
        assert_eq!(again, a, "the slot is reused");
        assert_eq!(c.at_mut(a, "a"), None, "its slot holds another");
        assert_eq!(c.at_mut(a, "c").copied(), Some(3));
        assert_eq!(c.at_mut(b, "b").copied(), Some(2));
    }

    /// Against an LRU: the same records, evicted in the same order.
    #[test]
    fn the_least_recent_are_those_an_lru_evicts() {
        let mut c: Records<u32> = Records::default();
        let mut lru: lru::LruCache<String, u32> = lru::LruCache::unbounded();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for n in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Short ids and ids too long to be inline.
            let key = if x % 3 == 0 { format!("{:040}", x % 700) } else { format!("a-{}", x % 900) };
            let got = get(&mut c, &key, n);
            let want = *lru.get_or_insert(key.clone(), || n);
            assert_eq!(got, want, "{key}");
            if n % 97 == 0 && c.len() > 300 {
                let excess = c.len() - 300;
                for i in c.least_recent(excess) {
                    let (k, v) = c.remove_at(i).unwrap();
                    assert_eq!(lru.pop_lru(), Some((k, v)));
                }
                assert_eq!(c.len(), lru.len());
            }
        }
        let mut ours: Vec<(String, u32)> = c.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut theirs: Vec<(String, u32)> = lru.iter().map(|(k, v)| (k.clone(), *v)).collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn peeking_does_not_count_as_use_and_removed_records_are_gone() {
        let mut c: Records<u32> = Records::default();
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            get(&mut c, k, v);
        }
        assert_eq!(c.peek("a"), Some(&1));
        *c.peek_mut("a").unwrap() = 10;
        let oldest = c.least_recent(1);
        assert_eq!(c.record_at(oldest[0]), Some(&10), "a peek is not a use");
        assert_eq!(c.remove_at(oldest[0]), Some(("a".to_string(), 10)));
        assert!(!c.contains("a") && c.contains("b") && c.len() == 2);
        assert_eq!(get(&mut c, "a", 4), 4, "made again");
        assert_eq!(c.least_recent(5).len(), 3);
        let oldest = c.least_recent(1);
        assert_eq!(c.record_at(oldest[0]), Some(&2));
        c.clear();
        assert_eq!((c.len(), c.iter().count()), (0, 0));
    }
}
