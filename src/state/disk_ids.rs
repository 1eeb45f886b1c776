//! Which message ids the dedupe column family may hold: a Bloom filter in
//! front of it, so that an event whose id is new (nearly all of them) is
//! not a RocksDB read.
//!
//! The ids of the dedupe window live in memory up to a cap
//! (`input.dedupe_memory_ids`); past it, in RocksDB one key each. A history
//! of more events a window than the cap (a day of more than a million
//! events, by default) then looked up every event's id in RocksDB: the
//! memtables, then a filter and an index block of each table file. That
//! was 39 % of the engine thread in `replay` of ten million events over a
//! week, each lookup finding nothing.
//!
//! The filter never answers "no" for an id written to the column family
//! while it was kept ([`DiskIds::insert`] is called with every such write);
//! it may answer "yes" for one that is not there (about 1 % of the time),
//! which costs the read it would have cost anyway. Bloom filters cannot
//! forget, so the ids are kept in generations: a generation takes new ids
//! until it is full or has been open for a window of event time, and is
//! dropped once the newest id it holds is out of the window (the watermark
//! only moves forward, so such an id never counts as a duplicate again:
//! the column family's compaction filter drops it by the same rule). A
//! full generation is followed by one twice as large, so a rate of ids far
//! past the cap is held by a few generations, not many.
//!
//! The generations take at most [`MAX_BYTES`] (about 1.2 bytes an id, so
//! some 50 million ids of a window past the cap). Past that the last one
//! takes more ids than it was made for: it answers "yes" more often, and
//! more of those ids are read, as all were before; memory stays bounded.

use std::collections::VecDeque;

use fastbloom::BloomFilter;

/// The false-positive rate of each generation while it holds no more than
/// it was made for (about 9.6 bits an id).
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// The most the generations take together.
pub(crate) const MAX_BYTES: usize = 64 << 20;

pub(crate) struct DiskIds {
    /// Oldest first; new ids go to the last.
    gens: VecDeque<Generation>,
    /// The fewest ids a generation is made for.
    min_ids: usize,
    /// The most the generations take ([`MAX_BYTES`]).
    max_bytes: usize,
}

struct Generation {
    filter: BloomFilter,
    ids: usize,
    capacity: usize,
    /// The latest event time of an id it holds (`i64::MIN`: none).
    newest_ms: i64,
    /// The watermark when it was made.
    opened_ms: i64,
}

impl Generation {
    fn new(capacity: usize, opened_ms: i64) -> Self {
        Generation {
            filter: BloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(capacity),
            ids: 0,
            capacity,
            newest_ms: i64::MIN,
            opened_ms,
        }
    }
}

/// The filter's hash of an id: its first 8 bytes (the id is already an
/// xxh3 hash of the message id, uniform in every bit).
fn source_hash(id: &[u8; 16]) -> u64 {
    u64::from_le_bytes(id[..8].try_into().expect("8 bytes"))
}

impl DiskIds {
    /// An empty filter (of an empty column family), whose generations are
    /// made for at least `min_ids` ids each.
    pub fn new(min_ids: usize) -> Self {
        DiskIds::with_max_bytes(min_ids, MAX_BYTES)
    }

    fn with_max_bytes(min_ids: usize, max_bytes: usize) -> Self {
        DiskIds { gens: VecDeque::new(), min_ids: min_ids.max(1024), max_bytes }
    }

    /// `id`, seen at `seen_ms`, is written to the column family.
    pub fn insert(&mut self, id: &[u8; 16], seen_ms: i64, window_ms: i64, watermark_ms: i64) {
        let rotate = match self.gens.back() {
            None => Some(self.min_ids),
            Some(g) if g.ids >= g.capacity => Some(g.capacity.saturating_mul(2)),
            Some(g) if g.opened_ms.saturating_add(window_ms) <= watermark_ms => Some(g.ids.max(self.min_ids)),
            Some(_) => None,
        };
        if let Some(capacity) = rotate {
            // (About 9.6 bits an id at 1 %.)
            let room = self.max_bytes.saturating_sub(self.bytes()) * 8 / 10;
            if self.gens.is_empty() || room >= self.min_ids {
                self.gens.push_back(Generation::new(capacity.min(room.max(self.min_ids)), watermark_ms));
            }
        }
        let g = self.gens.back_mut().expect("a generation");
        g.filter.insert_hash(source_hash(id));
        g.ids += 1;
        g.newest_ms = g.newest_ms.max(seen_ms);
    }

    /// Whether the column family may hold `id` at a time still in the
    /// window; drops the generations that are out of it first.
    pub fn may_hold(&mut self, id: &[u8; 16], window_ms: i64, watermark_ms: i64) -> bool {
        while self.gens.front().is_some_and(|g| g.newest_ms.saturating_add(window_ms) < watermark_ms) {
            self.gens.pop_front();
        }
        let h = source_hash(id);
        self.gens.iter().any(|g| g.filter.contains_hash(h))
    }

    /// Memory held, in bytes.
    fn bytes(&self) -> usize {
        self.gens.iter().map(|g| g.filter.num_bits() / 8).sum()
    }

    #[cfg(test)]
    fn generations(&self) -> usize {
        self.gens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> [u8; 16] {
        xxhash_rust::xxh3::xxh3_128(&n.to_le_bytes()).to_be_bytes()
    }

    const H: i64 = 3_600_000;
    const DAY: i64 = 24 * H;

    #[test]
    fn an_id_written_is_never_missed_through_generations_made_by_count() {
        let mut d = DiskIds::new(1024);
        for n in 0..20_000 {
            d.insert(&id(n), 100 * H, DAY, 100 * H);
        }
        // 1024, 2048, 4096, 8192 and a fifth: twice as large each time.
        assert_eq!(d.generations(), 5);
        for n in 0..20_000 {
            assert!(d.may_hold(&id(n), DAY, 100 * H), "id {n} missed");
        }
        let false_positives = (1_000_000..1_100_000).filter(|&n| d.may_hold(&id(n), DAY, 100 * H)).count();
        // About 1 % for each of the four full ones, less for the fifth.
        assert!(false_positives < 5_000, "{false_positives} of 100000 absent ids may be held");
    }

    #[test]
    fn a_generation_is_dropped_only_once_its_newest_id_is_out_of_the_window() {
        let mut d = DiskIds::new(1024);
        d.insert(&id(1), 10 * H, DAY, 10 * H);
        // An old id (an event late by a day) in the same generation.
        d.insert(&id(2), -20 * H, DAY, 11 * H);
        // A window later, a new generation takes the next id.
        d.insert(&id(3), 34 * H, DAY, 34 * H);
        assert_eq!(d.generations(), 2);
        // id 1 was seen at 10 h: still in a window ending at 34 h.
        assert!(d.may_hold(&id(1), DAY, 34 * H));
        assert!(d.may_hold(&id(2), DAY, 34 * H), "kept with its generation");
        assert_eq!(d.generations(), 2);
        // Past 10 h + a day, the first generation holds nothing in the window.
        assert!(!d.may_hold(&id(1), DAY, 34 * H + 1));
        assert_eq!(d.generations(), 1);
        assert!(d.may_hold(&id(3), DAY, 34 * H + 1));
        assert!(!d.may_hold(&id(3), DAY, 58 * H + 1));
        assert_eq!(d.generations(), 0);
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn past_its_memory_the_last_generation_takes_more_ids_than_it_was_made_for() {
        let mut d = DiskIds::with_max_bytes(1024, 16 << 10);
        for n in 0..200_000u64 {
            d.insert(&id(n), 100 * H, DAY, 100 * H);
        }
        // 1024, 2048, 4096 and 6528 ids (the rest of 16 KiB) take them all.
        assert_eq!(d.generations(), 4);
        assert!(d.bytes() <= 16 << 10, "{} bytes", d.bytes());
        for n in 0..200_000u64 {
            assert!(d.may_hold(&id(n), DAY, 100 * H), "id {n} missed");
        }
    }
}
