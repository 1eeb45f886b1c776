//! The cache's index: slot numbers by the id's hash, in an open-addressing
//! table of 8-byte entries (linear probing, at most half full).
//!
//! Why not `hashbrown`'s table, which the cache used before: a lookup there
//! starts with a load of its control bytes, and the crate offers no way to
//! ask the processor for them ahead of time. Here the place an id's probe
//! starts is its hash's low bits, so [`Index::prefetch`] can ask for that
//! cache line a few events before the lookup, and [`Index::first`] then
//! reads it without waiting (the engine does both; see
//! `Engine::prefetch`). An entry holds the low 32 bits of the hash, which
//! give its home without reading the slot (growing and removing never
//! touch the slots), and the slot number plus one. An unused entry is 0,
//! so the table is allocated zeroed: its pages are not touched until
//! entries land there (a large `state.cache_accounts` costs no memory up
//! front).

/// An unused entry (no entry of a slot is 0: it holds the slot number
/// plus one).
const EMPTY: u64 = 0;

pub(crate) struct Index {
    /// `EMPTY`, or the hash's low 32 bits, then the slot number plus one.
    table: Vec<u64>,
    /// The table's length (a power of two, at least 16) minus one.
    mask: usize,
    len: usize,
}

fn entry(hash: u64, slot: u32) -> u64 {
    debug_assert!(slot < u32::MAX, "fewer than 4 G cached records");
    (hash & 0xffff_ffff) << 32 | u64::from(slot + 1)
}

fn slot_of(e: u64) -> u32 {
    (e as u32).wrapping_sub(1)
}

/// Whether the entry's hash bits are those of `hash`.
fn same_tag(e: u64, hash: u64) -> bool {
    e >> 32 == hash & 0xffff_ffff
}

impl Index {
    /// Room for `n` entries before it grows.
    pub fn with_capacity(n: usize) -> Index {
        let size = n.saturating_mul(2).max(16).next_power_of_two();
        Index { table: vec![EMPTY; size], mask: size - 1, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn home(&self, hash: u64) -> usize {
        (hash & 0xffff_ffff) as usize & self.mask
    }

    /// The first slot of `hash`'s entries for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut i = self.home(hash);
        loop {
            let e = self.table[i];
            if e == EMPTY {
                return None;
            }
            if same_tag(e, hash) && eq(slot_of(e)) {
                return Some(slot_of(e));
            }
            i = (i + 1) & self.mask;
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
        super::cache::prefetch(self.table.as_ptr().wrapping_add(self.home(hash)).cast());
    }

    /// Adds `slot` under `hash` (not already there).
    pub fn insert(&mut self, hash: u64, slot: u32) {
        if (self.len + 1) * 2 > self.table.len() {
            self.grow();
        }
        self.put(entry(hash, slot));
        self.len += 1;
    }

    fn put(&mut self, e: u64) {
        let mut i = (e >> 32) as usize & self.mask;
        while self.table[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.table[i] = e;
    }

    fn grow(&mut self) {
        let size = self.table.len() * 2;
        let old = std::mem::replace(&mut self.table, vec![EMPTY; size]);
        self.mask = size - 1;
        for e in old.into_iter().filter(|&e| e != EMPTY) {
            self.put(e);
        }
    }

    /// Removes `slot`'s entry under `hash`, if there is one. The entries
    /// after it in its run move back (no tombstones: a probe still ends at
    /// the first empty entry).
    pub fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let mut i = self.home(hash);
        loop {
            let e = self.table[i];
            if e == EMPTY {
                return false;
            }
            if e == entry(hash, slot) {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward shift: an entry further on moves into the hole unless
        // its home lies cyclically in (hole, its place].
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let e = self.table[j];
            if e == EMPTY {
                break;
            }
            let home = (e >> 32) as usize & self.mask;
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                self.table[i] = e;
                i = j;
            }
        }
        self.table[i] = EMPTY;
        self.len -= 1;
        true
    }

    pub fn clear(&mut self) {
        self.table.fill(EMPTY);
        self.len = 0;
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
                let live = ix.table.iter().filter(|&&e| e != EMPTY).count();
                assert_eq!(live, want.len());
            }
        }
        assert!(ix.table.len() >= 2 * ix.len());
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
