//! The message ids of the dedupe window kept in memory: id hash (the 16
//! bytes of a 128-bit xxh3 of the message id) -> event time.
//!
//! In [`ID_SHARDS`] tables chosen by a byte of the hash that a table's own
//! probe does not use. A table grows, and moves every entry it holds,
//! alone: the longest pause of a growth is a 64th of what one table of all
//! the ids paid (a million ids in one table doubled in about 250 ms on the
//! engine's thread, a stall every event behind it waited out).
//!
//! Each table is open addressing with linear probing ([`super::probe`]),
//! of 24-byte entries (the hash, then the time), at most 70 % full. Why
//! not `hashbrown`'s map, which held them before: with a million ids in
//! memory, nearly every lookup and insertion is a cache miss, first on its
//! control bytes, then on its bucket, and the crate offers no way to ask
//! for either ahead of time. Here an id's probe starts at a place its bytes
//! give, so [`IdMap::prefetch`] can ask for it before the lookup (the
//! engine does, a few events ahead; a commit's loop over the ids it files,
//! a few ids ahead). An unused entry is all zero (no used one is: see
//! [`words`]), so a table is allocated zeroed.

use super::probe::{self, Probe};

/// Tables of an [`IdMap`].
pub(crate) const ID_SHARDS: usize = 64;

/// An entry: the hash's two 8-byte halves, then the event time. All zero:
/// unused.
#[derive(Clone, Copy, PartialEq)]
struct Entry([u64; 3]);

impl probe::Entry for Entry {
    const EMPTY: Entry = Entry([0; 3]);

    fn home(&self) -> usize {
        self.0[0] as usize
    }
}

/// A table's first size (entries).
const FIRST: usize = 16;

/// The hash as the two words an entry holds. (The all-zero hash, which
/// would read as an unused entry, is held as `[0, 1]`: it then stands for
/// one other hash too, a 2^-128 chance.)
fn words(k: &[u8; 16]) -> [u64; 2] {
    let a = u64::from_le_bytes(k[..8].try_into().expect("8 bytes"));
    let b = u64::from_le_bytes(k[8..].try_into().expect("8 bytes"));
    if a == 0 && b == 0 {
        [0, 1]
    } else {
        [a, b]
    }
}

type Table = Probe<Entry>;

/// Where `w` is in `t`, or the unused entry where it would go.
#[inline]
fn probe(t: &Table, w: &[u64; 2]) -> (usize, bool) {
    t.probe(w[0] as usize, |e| e.0[0] == w[0] && e.0[1] == w[1])
}

/// Files `w` at `time` in an unused entry `i` from [`probe`] (growing first
/// if the table would pass 70 %).
fn put_new(t: &mut Table, mut i: usize, w: [u64; 2], time: i64) {
    if t.full_after_one(7, 10) {
        t.grow();
        i = probe(t, &w).0;
    }
    t.put_at(i, Entry([w[0], w[1], time as u64]));
}

/// The message ids kept in memory (see the module docs).
pub(crate) struct IdMap {
    tables: Vec<Table>,
    len: usize,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap { tables: (0..ID_SHARDS).map(|_| Table::new(FIRST)).collect(), len: 0 }
    }
}

impl IdMap {
    pub fn table(k: &[u8; 16]) -> usize {
        usize::from(k[15]) % ID_SHARDS
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, k: &[u8; 16]) -> Option<i64> {
        let t = &self.tables[Self::table(k)];
        match probe(t, &words(k)) {
            (i, true) => Some(t.at(i).0[2] as i64),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn contains_key(&self, k: &[u8]) -> bool {
        <[u8; 16]>::try_from(k).is_ok_and(|k| self.get(&k).is_some())
    }

    pub fn insert(&mut self, k: [u8; 16], t: i64) {
        let w = words(&k);
        let table = &mut self.tables[Self::table(&k)];
        match probe(table, &w) {
            (i, true) => table.at_mut(i).0[2] = t as u64,
            (i, false) => {
                put_new(table, i, w, t);
                self.len += 1;
            }
        }
    }

    pub fn remove(&mut self, k: &[u8; 16]) {
        let table = &mut self.tables[Self::table(k)];
        if let (i, true) = probe(table, &words(k)) {
            table.remove_at(i);
            self.len -= 1;
        }
    }

    /// Whether `k` is held with a time `fresh` accepts; if not, it is filed
    /// under `t` (new, or again), in one probe.
    pub fn held_or_file(&mut self, k: [u8; 16], t: i64, fresh: impl FnOnce(i64) -> bool) -> bool {
        let w = words(&k);
        let table = &mut self.tables[Self::table(&k)];
        match probe(table, &w) {
            (i, true) if fresh(table.at(i).0[2] as i64) => true,
            (i, true) => {
                table.at_mut(i).0[2] = t as u64;
                false
            }
            (i, false) => {
                put_new(table, i, w, t);
                self.len += 1;
                false
            }
        }
    }

    /// Asks the processor for where `k`'s probe starts (two cache lines:
    /// a probe of a table 70 % full reads a few entries on).
    #[inline]
    pub fn prefetch(&self, k: &[u8; 16]) {
        self.tables[Self::table(k)].prefetch(words(k)[0] as usize, 2);
    }

    /// Forgets every id (each table allocated again, zeroed, at its size).
    pub fn clear(&mut self) {
        for t in &mut self.tables {
            *t = Table::new(t.size());
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A small generator (no crate for it): xorshift.
    fn next(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Inserts, updates, removals and lookups against a `HashMap`, over
    /// tables that grow, runs that wrap around a table's end, and ids
    /// that crowd one place (the same first 8 bytes in one table).
    #[test]
    fn holds_what_a_map_holds() {
        let mut m = IdMap::default();
        let mut want: HashMap<[u8; 16], i64> = HashMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        // A pool of ids to draw from: random ones, and a crowd that all
        // start their probe at the same place of table 3.
        let mut pool: Vec<[u8; 16]> = (0..3_000)
            .map(|_| {
                let mut k = [0u8; 16];
                k[..8].copy_from_slice(&next(&mut seed).to_le_bytes());
                k[8..].copy_from_slice(&next(&mut seed).to_le_bytes());
                k
            })
            .collect();
        for i in 0..40u8 {
            let mut k = [0xff; 16];
            k[8] = i;
            k[15] = 3;
            pool.push(k);
        }
        pool.push([0; 16]);
        for step in 0..60_000i64 {
            let k = pool[next(&mut seed) as usize % pool.len()];
            match next(&mut seed) % 4 {
                0 | 1 => {
                    m.insert(k, step);
                    want.insert(k, step);
                }
                2 => {
                    m.remove(&k);
                    want.remove(&k);
                }
                _ => {
                    let fresh = step % 2 == 0;
                    let held = m.held_or_file(k, step, |_| fresh);
                    let was = want.contains_key(&k);
                    assert_eq!(held, was && fresh, "step {step}");
                    if !held {
                        want.insert(k, step);
                    }
                }
            }
            assert_eq!(m.len(), want.len(), "step {step}");
            if step % 97 == 0 {
                for k in &pool {
                    assert_eq!(m.get(k), want.get(k).copied(), "step {step}");
                }
            }
        }
        assert!(m.tables.iter().any(|t| t.size() > FIRST), "some tables grew");
        m.clear();
        assert_eq!(m.len(), 0);
        assert!(pool.iter().all(|k| m.get(k).is_none()));
    }

    /// The all-zero hash is held, and is not the unused entry.
    #[test]
    fn the_zero_hash_is_an_id_like_any() {
        let mut m = IdMap::default();
        assert_eq!(m.get(&[0; 16]), None);
        m.insert([0; 16], 7);
        assert_eq!(m.get(&[0; 16]), Some(7));
        assert_eq!(m.len(), 1);
        m.remove(&[0; 16]);
        assert_eq!((m.get(&[0; 16]), m.len()), (None, 0));
    }
}
