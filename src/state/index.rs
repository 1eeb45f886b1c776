//! The cache's index: slot numbers by the id's hash, in an open-addressing
//! table of 8-byte entries ([`super::probe`], at most half full).
//!
//! The place an id's probe starts is its hash's low bits, so
//! [`Index::prefetch`] can ask for that cache line a few events before the
//! lookup, and [`Index::first`] then reads it without waiting (the engine
//! does both; see `Engine::prefetch`). An entry holds the low 32 bits of
//! the hash, which give its home without reading the slot (growing and
//! removing never touch the slots), and the slot number plus one. An
//! unused entry is 0: the table's pages are not touched until entries land
//! there (a large `state.cache_accounts` costs no memory up front).

use super::probe::{self, Probe};

/// The hash's low 32 bits, then the slot number plus one (never 0).
#[derive(Clone, Copy, PartialEq)]
struct Entry(u64);

impl probe::Entry for Entry {
    const EMPTY: Entry = Entry(0);

    fn home(&self) -> usize {
        (self.0 >> 32) as usize
    }
}

impl Entry {
    fn new(hash: u64, slot: u32) -> Entry {
        debug_assert!(slot < u32::MAX, "fewer than 4 G cached records");
        Entry((hash & 0xffff_ffff) << 32 | u64::from(slot + 1))
    }

    fn slot(self) -> u32 {
        (self.0 as u32).wrapping_sub(1)
    }

    /// Whether its hash bits are those of `hash`.
    fn same_tag(self, hash: u64) -> bool {
        self.0 >> 32 == hash & 0xffff_ffff
    }
}

fn home(hash: u64) -> usize {
    (hash & 0xffff_ffff) as usize
}

pub(crate) struct Index {
    table: Probe<Entry>,
}

impl Index {
    /// Room for `n` entries before it grows.
    pub fn with_capacity(n: usize) -> Index {
        Index { table: Probe::new(n.saturating_mul(2).max(16).next_power_of_two()) }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The first slot of `hash`'s entries for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        match self.table.probe(home(hash), |e| e.same_tag(hash) && eq(e.slot())) {
            (i, true) => Some(self.table.at(i).slot()),
            _ => None,
        }
    }

    /// The first slot whose entry has `hash`'s bits, without looking at
    /// the slots: nearly always the one of `hash`'s id, if it has one.
    #[inline]
    pub fn first(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// Asks the processor for the cache line where `hash`'s probe starts.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        self.table.prefetch(home(hash), 1);
    }

    /// Adds `slot` under `hash` (not already there).
    pub fn insert(&mut self, hash: u64, slot: u32) {
        if self.table.full_after_one(1, 2) {
            self.table.grow();
        }
        self.table.put(Entry::new(hash, slot));
    }

    /// Removes `slot`'s entry under `hash`, if there is one.
    pub fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let want = Entry::new(hash, slot);
        match self.table.probe(home(hash), |e| *e == want) {
            (i, true) => {
                self.table.remove_at(i);
                true
            }
            _ => false,
        }
    }

    pub fn clear(&mut self) {
        self.table.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Against a map, under inserts and removes of hashes that collide in
    /// their low bits (long runs, runs that wrap around the table's end)
    /// and grow the table: every hash finds its slots, and only those.
    #[test]
    fn it_finds_what_a_map_holds_through_inserts_removes_and_growth() {
        let mut ix = Index::with_capacity(4);
        let mut want: HashMap<u32, u64> = HashMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next_slot = 0u32;
        for n in 0..60_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct low bits: crowded runs; high bits vary.
            let hash = (x & !0xffff_ffff) | (x % 40) | if x % 5 == 0 { 0xffff_fff0 } else { 0 };
            if x % 3 == 0 && !want.is_empty() {
                let victim = *want.keys().nth((x % want.len() as u64) as usize).unwrap();
                let h = want.remove(&victim).unwrap();
                assert!(ix.remove(h, victim), "{n}: slot {victim} was there");
                assert!(!ix.remove(h, victim), "{n}: and is gone");
            } else {
                ix.insert(hash, next_slot);
                want.insert(next_slot, hash);
                next_slot += 1;
            }
            assert_eq!(ix.len(), want.len());
            if n % 1000 == 0 {
                for (&s, &h) in &want {
                    assert_eq!(ix.find(h, |t| t == s), Some(s), "{n}: slot {s}");
                }
                assert_eq!(ix.table.used().count(), want.len());
            }
        }
        assert!(ix.table.size() >= 2 * ix.len());
        ix.clear();
        assert_eq!((ix.len(), ix.find(x, |_| true)), (0, None));
    }

    /// [`Index::first`] answers from the entry's bits alone.
    #[test]
    fn first_is_the_first_entry_with_the_hashs_bits() {
        let mut ix = Index::with_capacity(0);
        let (a, b) = (0x1111_0000_0000_0007u64, 0x2222_0000_0000_0007u64);
        ix.insert(a, 1);
        assert_eq!(ix.first(b), Some(1), "same low bits: a candidate");
        assert_eq!(ix.first(0x1111_0000_0000_0008), None);
        ix.insert(b, 2);
        assert_eq!(ix.find(b, |s| s == 2), Some(2));
        ix.prefetch(a);
    }
}
