//! Which accounts (or users) a write-back store has written to RocksDB: a
//! Bloom filter in front of the column family, so that a record never
//! written (a new account or user) is not looked for there.
//!
//! `replay` into a temporary state starts from an empty RocksDB and writes
//! a record only when the cache evicts it. Once the first record was
//! evicted, every account or user the cache did not hold was looked up in
//! RocksDB, the new ones too: over `h10m` (10 M events, 702 k accounts,
//! 1.12 M users) 1.54 M of the 4.28 M reads ahead found nothing, and on the
//! long tail two reads in three. Each such read walked the memtables and
//! the filter of every table file.
//!
//! The filter never answers "no" for a record written: every eviction that
//! writes one inserts its id first (on the engine thread, at the commit's
//! prepare, before the batch is written). It answers "yes" for about 1 %
//! of the others, which are read as before. It never forgets (a record
//! dropped by the idle TTL is a read that finds nothing, as before), and
//! grows in generations, each twice the last, up to [`MAX_BYTES`]; past
//! that the last takes more ids than it was made for (more reads, never a
//! missed record).
//!
//! **Read from another thread.** The readers ahead (see
//! [`super::prefetch`]) ask it too. An id inserted after a reader asked is
//! one whose record a commit writes after the read began: the engine
//! refuses such a read by the commit's epoch, as it refuses any read that a
//! commit may have overtaken.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use fastbloom::AtomicBloomFilter;

/// The false-positive rate of a generation holding no more than it was made
/// for (about 9.6 bits an id).
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// What the first generation is made for.
const FIRST_IDS: usize = 1 << 16;

/// The most the generations take together.
pub(crate) const MAX_BYTES: usize = 32 << 20;

pub(crate) struct Written {
    /// Oldest first; new ids go to the last.
    gens: RwLock<Vec<Generation>>,
}

struct Generation {
    filter: AtomicBloomFilter,
    ids: AtomicUsize,
    capacity: usize,
}

impl Generation {
    fn new(capacity: usize) -> Generation {
        Generation {
            filter: AtomicBloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(capacity),
            ids: AtomicUsize::new(0),
            capacity,
        }
    }

    fn bytes(&self) -> usize {
        self.filter.num_bits() / 8
    }
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written").field("generations", &self.gens.read().map(|g| g.len()).unwrap_or(0)).finish()
    }
}

impl Default for Written {
    fn default() -> Self {
        Written { gens: RwLock::new(vec![Generation::new(FIRST_IDS)]) }
    }
}

impl Written {
    /// Notes the id of `hash` ([`super::prefetch::id_hash`]) as written.
    /// (One thread inserts: the engine's.)
    pub fn insert(&self, hash: u64) {
        {
            let gens = self.gens.read().expect("lock");
            let last = gens.last().expect("a generation");
            let full = last.ids.load(Ordering::Relaxed) >= last.capacity;
            if !full || gens.iter().map(Generation::bytes).sum::<usize>() >= MAX_BYTES {
                last.filter.insert_hash(hash);
                last.ids.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut gens = self.gens.write().expect("lock");
        let next = Generation::new(gens.last().expect("a generation").capacity * 2);
        next.filter.insert_hash(hash);
        next.ids.store(1, Ordering::Relaxed);
        gens.push(next);
    }

    /// Whether the id of `hash` may have been written (never `false` for
    /// one inserted before).
    pub fn may_hold(&self, hash: u64) -> bool {
        self.gens.read().expect("lock").iter().any(|g| g.filter.contains_hash(hash))
    }

    #[cfg(test)]
    fn generations(&self) -> usize {
        self.gens.read().expect("lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::prefetch::id_hash;

    #[test]
    fn an_id_written_is_never_missed_and_few_others_are_held() {
        let w = Written::default();
        let n = FIRST_IDS * 3;
        for i in 0..n {
            w.insert(id_hash(&format!("acct-{i}")));
        }
        assert_eq!(w.generations(), 2, "one of FIRST_IDS, one of twice that");
        for i in 0..n {
            assert!(w.may_hold(id_hash(&format!("acct-{i}"))), "acct-{i} was written");
        }
        let wrong = (0..10_000).filter(|i| w.may_hold(id_hash(&format!("new-{i}")))).count();
        assert!(wrong < 300, "{wrong} of 10,000 ids never written held");
    }
}
