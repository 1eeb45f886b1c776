//! An open-addressing table with linear probing, under the cache's index
//! ([`super::index`]) and the message ids kept in memory ([`super::ids`]).
//!
//! Why not `hashbrown`'s table: a lookup there starts with a load of its
//! control bytes, and the crate offers no way to ask the processor for them
//! ahead of time. Here the place a key's probe starts is given by its
//! entry's own bits ([`Entry::home`]), so [`Probe::prefetch`] can ask for
//! that cache line before the lookup. Growing and removing read only the
//! entries, never what they point at. Removal shifts the entries after a
//! hole back (no tombstones: a probe ends at the first unused entry). An
//! unused entry is all zero, so a table is allocated zeroed: its pages are
//! not touched until entries land there.

/// What a [`Probe`] holds: a plain value whose all-zero form is "unused".
pub(crate) trait Entry: Copy + PartialEq {
    /// The unused entry (all zero).
    const EMPTY: Self;
    /// The bits its probe starts from (the table's mask picks the low
    /// ones). For a used entry only.
    fn home(&self) -> usize;
}

pub(crate) struct Probe<E: Entry> {
    /// A power of two long.
    entries: Vec<E>,
    len: usize,
}

impl<E: Entry> Probe<E> {
    /// `size` entries (a power of two), all unused.
    pub fn new(size: usize) -> Probe<E> {
        debug_assert!(size.is_power_of_two());
        // (All zero: allocated zeroed.)
        Probe { entries: vec![E::EMPTY; size], len: 0 }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries it has room for (its length).
    pub fn size(&self) -> usize {
        self.entries.len()
    }

    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// The entry at `i`.
    #[inline]
    pub fn at(&self, i: usize) -> &E {
        &self.entries[i]
    }

    /// The entry at `i`, to change in place (its home must stay the same).
    #[inline]
    pub fn at_mut(&mut self, i: usize) -> &mut E {
        &mut self.entries[i]
    }

    /// Where the probe from `home` first meets an entry `hit` accepts
    /// (`(i, true)`), or the unused entry that ends it (`(i, false)`).
    #[inline]
    pub fn probe(&self, home: usize, mut hit: impl FnMut(&E) -> bool) -> (usize, bool) {
        let mask = self.mask();
        let mut i = home & mask;
        loop {
            let e = &self.entries[i];
            if *e == E::EMPTY {
                return (i, false);
            }
            if hit(e) {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }

    /// Asks the processor for the `lines` cache lines where the probe from
    /// `home` starts.
    #[inline]
    pub fn prefetch(&self, home: usize, lines: usize) {
        let at = self.entries.as_ptr().wrapping_add(home & self.mask()).cast::<u8>();
        for l in 0..lines {
            super::cache::prefetch(at.wrapping_add(64 * l));
        }
    }

    /// Whether one more entry would take it past `num / den` full.
    pub fn full_after_one(&self, num: usize, den: usize) -> bool {
        (self.len + 1) * den > self.entries.len() * num
    }

    /// Puts `e` (not held) in the unused entry `i` from [`Probe::probe`].
    pub fn put_at(&mut self, i: usize, e: E) {
        debug_assert!(self.entries[i] == E::EMPTY && e != E::EMPTY);
        self.entries[i] = e;
        self.len += 1;
    }

    /// Puts `e` (not held) where its probe ends.
    pub fn put(&mut self, e: E) {
        let (i, _) = self.probe(e.home(), |_| false);
        self.put_at(i, e);
    }

    /// Twice the size, every entry moved to its place there.
    pub fn grow(&mut self) {
        let size = self.entries.len() * 2;
        let old = std::mem::replace(&mut self.entries, vec![E::EMPTY; size]);
        self.len = 0;
        for e in old.into_iter().filter(|e| *e != E::EMPTY) {
            self.put(e);
        }
    }

    /// Removes the entry at `i`: the entries after it in its run move back
    /// where their probe finds them.
    pub fn remove_at(&mut self, i: usize) {
        let mask = self.mask();
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let e = self.entries[j];
            if e == E::EMPTY {
                break;
            }
            // It may fill the hole if the hole lies between its home and
            // where it is (cyclically).
            if (j.wrapping_sub(e.home()) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.entries[hole] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.entries[hole] = E::EMPTY;
        self.len -= 1;
    }

    /// Every entry unused, at the same size.
    pub fn clear(&mut self) {
        self.entries.fill(E::EMPTY);
        self.len = 0;
    }

    /// The entries in use (in table order).
    #[cfg(test)]
    pub fn used(&self) -> impl Iterator<Item = &E> {
        self.entries.iter().filter(|e| **e != E::EMPTY)
    }
}
