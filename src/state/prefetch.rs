//! Reading ahead of the engine: the records an event will need that are
//! probably not cached are read from RocksDB (and decoded) on the thread
//! that decodes the input, a little ahead of the engine thread, which then
//! finds them in hand instead of waiting on RocksDB itself. That is the
//! cache-miss path of a history with more accounts than `state.cache_accounts`
//! (the long tail, a million accounts), moved to the second core.
//!
//! `replay` and `backtest` read ahead (their second core was mostly idle).
//! `run` does not: tried on the same 2 cores (its `pqa-decode` thread reading
//! ahead for each chunk), it took 15 % off the engine thread and nothing off
//! the time, with or without the changelog (BENCHMARKS.md, 2026-12-04);
//! tried again on a faster VM (2026-12-05, evening), the rate fell about
//! 5 %: the decoder's reads cost more CPU than the engine thread's saved.
//! A third time (2026-12-05, late: chunks of 1,024 records, and no longer
//! idle behind librdkafka's fetch backoff): the decoder thread went from
//! 0.46 s to 2.2 s of CPU for 0.4 s off the engine thread's 6.9 s, and the
//! rate fell 8 % (3 alternated pairs on the long tail through tansu).
//!
//! **Why a record read ahead is exact.** The engine takes a record read ahead
//! only where it would itself read RocksDB (the record is neither cached nor
//! evicted into the batch in flight), and only if RocksDB cannot have changed
//! it since: no commit whose batch wrote it has completed after the read
//! began. Every write of an account, member or user record goes through a
//! commit; the engine numbers the commits it has seen complete (the *epoch*,
//! bumped by [`super::store::Store::written`]) and remembers what the last few
//! wrote ([`RecentWrites`]). A read that began at epoch `e` is taken at epoch
//! `k` only if every commit `e+1..=k` is remembered and none of them wrote the
//! record; anything else that writes records directly (a changelog restore, a
//! migration, a dropped cache) forgets them all, so older reads are refused.
//! A commit still in flight when the engine takes the record cannot have
//! written it: what it writes is still in the cache (or, evicted, readable
//! beside it) until it completes. A refused or missing record is read by
//! the engine as before: reading ahead changes where the time goes, never
//! what is read.
//!
//! **What is read.** The decoder keeps its own guess of what the engine has
//! cached ([`Recent`]: the ids seen among the last `cache_accounts` distinct
//! ones, in a fixed table), so that the dense accounts every event touches
//! cost no reads; a wrong guess costs a wasted read or a read by the engine,
//! nothing else.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::account::{AccountState, MemberState, UserState};
use super::store::{InlineMembers, StateReader};
use super::written::Written;
use crate::decode::Event;

/// What the engine shares with the readers ahead.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Commits seen complete (see the module docs).
    pub epoch: AtomicU64,
    /// Whether RocksDB may hold records of each kind (a write-back state
    /// opened empty holds none until its first eviction: nothing to read).
    pub accounts_on_disk: AtomicBool,
    pub users_on_disk: AtomicBool,
    pub members_on_disk: AtomicBool,
    /// A reader ahead exists: commits note what they write (without one,
    /// nothing reads ahead and a commit notes only that it wrote unnoted).
    pub readers: AtomicBool,
    /// In a write-back state opened empty: which accounts and users it has
    /// written (see [`super::written`]); unset, any may have been.
    pub(crate) written_accounts: OnceLock<Written>,
    pub(crate) written_users: OnceLock<Written>,
}

impl Shared {
    /// Whether RocksDB may hold the account `id`'s record.
    pub(crate) fn account_on_disk(&self, id: &str) -> bool {
        self.accounts_on_disk.load(Ordering::Relaxed)
            && self.written_accounts.get().is_none_or(|w| w.may_hold(id_hash(id)))
    }

    /// Whether RocksDB may hold the user `id`'s record.
    pub(crate) fn user_on_disk(&self, id: &str) -> bool {
        self.users_on_disk.load(Ordering::Relaxed) && self.written_users.get().is_none_or(|w| w.may_hold(id_hash(id)))
    }
}

/// The records read ahead for one event, at one epoch.
#[derive(Debug, Default)]
pub struct Fetched {
    pub(crate) epoch: u64,
    /// (Boxed: most events need nothing read, and a `Fetched` is moved
    /// along with every event.)
    pub(crate) account: Option<Box<AccountRead>>,
    pub(crate) user: Option<Box<(String, Option<UserState>)>>,
    /// The event user's member record in an account probably cached
    /// without it (a user's first event in the account since it was loaded).
    pub(crate) member: Option<Box<MemberRead>>,
}

/// A member record as RocksDB had it (`None`: none).
#[derive(Debug)]
pub(crate) struct MemberRead {
    pub account: String,
    pub user: String,
    pub state: Option<MemberState>,
}

/// An account as RocksDB had it, and the event user's member record in it
/// (`None`: not read).
#[derive(Debug)]
pub(crate) struct AccountRead {
    pub id: String,
    /// Its record, with the members inside it if it keeps them there.
    pub record: Option<(AccountState, Option<InlineMembers>)>,
    /// (Not read when the record holds the members.)
    pub member: Option<(String, Option<MemberState>)>,
}

/// Reads ahead (on the decoder's thread); made by [`super::store::Store::prefetcher`].
pub struct Prefetcher {
    reader: StateReader,
    shared: Arc<Shared>,
    accounts: Recent,
    users: Recent,
    /// (account, user) pairs: a member stays cached with its account.
    members: Recent,
}

impl Prefetcher {
    /// `capacity` and `users_capacity`: how many accounts and users the
    /// engine's cache keeps.
    pub(crate) fn new(reader: StateReader, shared: Arc<Shared>, capacity: usize, users_capacity: usize) -> Prefetcher {
        shared.readers.store(true, Ordering::Release);
        Prefetcher {
            reader,
            shared,
            accounts: Recent::new(capacity),
            users: Recent::new(users_capacity),
            // (A pair guessed wrongly costs a read at most.)
            members: Recent::new(capacity),
        }
    }

    /// Asks the processor for the guesses [`Prefetcher::fetch`] will look
    /// up for `ev` (its account's and its user's: a member's place depends
    /// on its account's), for an event a few ahead of the one fetched.
    /// Changes nothing.
    #[inline]
    pub fn prefetch(&self, ev: &Event) {
        if let Some(a) = &ev.account_id {
            self.accounts.prefetch_hash(id_hash(a));
        }
        if !ev.anonymous {
            self.users.prefetch_hash(id_hash(&ev.user_id));
        }
    }

    /// The records `ev` will need that are probably not cached. Errors are
    /// left to the engine (it reads those records itself).
    pub fn fetch(&mut self, ev: &Event) -> Fetched {
        // Before any read: a commit completing from here on is one the
        // engine will check the records against.
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        let mut f = Fetched { epoch, ..Default::default() };
        // A visitor's records are keyed otherwise; they are left to the
        // engine. (The account it names is used all the same.)
        if ev.anonymous {
            if let Some(a) = &ev.account_id {
                self.accounts.seen_hash(id_hash(a));
            }
            return f;
        }
        if let Some(a) = &ev.account_id {
            let (cached, since) = self.accounts.seen_hash(id_hash(a));
            // A member is cached with its account from its first event
            // since the account was loaded (seen since then: the pair is
            // keyed by that time too).
            let pair = xxhash_rust::xxh3::xxh3_64_with_seed(ev.user_id.as_bytes(), id_hash(a) ^ u64::from(since));
            let (member_cached, _) = self.members.seen_hash(pair);
            if cached {
                // Cached, probably: its member record may not be.
                if !member_cached && self.shared.members_on_disk.load(Ordering::Relaxed) {
                    if let Ok(state) = self.reader.member_record(a, &ev.user_id) {
                        f.member =
                            Some(Box::new(MemberRead { account: a.to_string(), user: ev.user_id.to_string(), state }));
                    }
                }
            } else if self.shared.account_on_disk(a) {
                if let Ok(record) = self.reader.account_record(a) {
                    let member = if matches!(record, Some((_, Some(_)))) {
                        None
                    } else if self.shared.members_on_disk.load(Ordering::Relaxed) {
                        self.reader.member_record(a, &ev.user_id).ok().map(|m| (ev.user_id.to_string(), m))
                    } else {
                        Some((ev.user_id.to_string(), None))
                    };
                    f.account = Some(Box::new(AccountRead { id: a.to_string(), record, member }));
                }
            }
        }
        if !self.users.seen(&ev.user_id) && self.shared.user_on_disk(&ev.user_id) {
            if let Ok(state) = self.reader.user(&ev.user_id) {
                f.user = Some(Box::new((ev.user_id.to_string(), state)));
            }
        }
        f
    }
}

/// A guess at which ids the engine's cache holds: those with fewer than
/// `capacity` distinct ids seen since they were last seen (the engine's
/// cache evicts the least recently used, and never below its capacity:
/// see `store::excess`), kept in a fixed table of slots (two slots a hash: a collision
/// forgets the id seen longer ago, which only means a read that may not
/// have been needed).
///
/// The distinct ids since an id was last seen are bounded from above by
/// generations: each id is filed under the generation of its last sighting,
/// a generation closes once `capacity / 16` ids have been filed under it,
/// and the ids filed under an id's generation and every later one are at
/// least as many as the distinct ids seen since it. A guess of "cached" is
/// therefore never wrong (a read by the engine, which waits for it), while
/// a guess of "not cached" may be (a read ahead thrown away, on the other
/// core). Counting only the ids *new* to the table, as this did before,
/// missed the ids seen again that the LRU also moves ahead of an id: on
/// the long tail, tens of thousands of accounts and users were guessed
/// cached when they were not, and read by the engine itself.
struct Recent {
    /// (hash, generation when last seen, since when cached): the last a
    /// number on `clock`.
    slots: Vec<(u64, u32, u32)>,
    /// Ids filed under each of the last [`GENERATIONS`] generations (by
    /// generation modulo their number).
    filed: [u32; GENERATIONS],
    generation: u32,
    /// Ids filed under the current generation, and how many close it.
    filed_now: u32,
    per_generation: u32,
    /// Ids loaded so far (a guess of "not cached" counts as a load),
    /// wrapping: names when an id was loaded.
    clock: u32,
    capacity: u32,
}

/// Generations counted (an id last seen before them is guessed not cached:
/// with `capacity / 16` ids each, they span at least four times the cache).
const GENERATIONS: usize = 64;

impl Recent {
    fn new(capacity: usize) -> Recent {
        // About 4 slots an entry of the cache, at most 4 M (64 MiB).
        let n = (capacity.saturating_mul(4)).clamp(1 << 10, 1 << 22).next_power_of_two();
        let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
        Recent {
            slots: vec![(0, 0, 0); n],
            filed: [0; GENERATIONS],
            generation: 0,
            filed_now: 0,
            per_generation: (capacity / 16).max(1),
            clock: 0,
            capacity,
        }
    }

    /// Whether `id` was seen recently enough to be cached; notes it as seen now.
    fn seen(&mut self, id: &str) -> bool {
        self.seen_hash(id_hash(id)).0
    }

    /// Asks the processor for the two slots [`Recent::seen_hash`] of `h`
    /// reads (their 32 bytes start at a multiple of 32 from the table's
    /// start: one cache line when the table is aligned, as a large
    /// allocation is).
    #[inline]
    fn prefetch_hash(&self, h: u64) {
        super::cache::prefetch(self.slots.as_ptr().wrapping_add(self.pair(h | 1)).cast());
    }

    /// The first of the two slots of a hash (with its low bit set, as it
    /// is held): where [`Recent::seen_hash`] looks, and so where
    /// [`Recent::prefetch_hash`] asks for.
    #[inline]
    fn pair(&self, h: u64) -> usize {
        (h as usize) & (self.slots.len() - 1) & !1
    }

    /// [`Recent::seen`] of an id's hash, with the time it has been cached
    /// since (now, if it was not): what it holds was loaded then.
    fn seen_hash(&mut self, h: u64) -> (bool, u32) {
        let h = h | 1;
        // Two slots a hash: an id takes the one of the two seen longer ago.
        let pair = self.pair(h);
        let age_of =
            |s: &(u64, u32, u32)| if s.0 == 0 { usize::MAX } else { self.generation.wrapping_sub(s.1) as usize };
        let i = if self.slots[pair + 1].0 == h
            || (self.slots[pair].0 != h && age_of(&self.slots[pair + 1]) >= age_of(&self.slots[pair]))
        {
            pair + 1
        } else {
            pair
        };
        let (held, last, since) = self.slots[i];
        let age = self.generation.wrapping_sub(last) as usize;
        // Seen within the generations counted (else: not cached).
        let counted = held == h && age < GENERATIONS;
        let mut cached = false;
        if counted {
            // (The id itself is one of those filed.)
            let newer: u32 = (0..=age).map(|a| self.filed[(last as usize + a) % GENERATIONS]).sum();
            cached = newer.saturating_sub(1) < self.capacity;
            // Filed again below. (Another id's slot taken over stays
            // counted where it was: the bound stays a bound.)
            self.filed[last as usize % GENERATIONS] -= 1;
        }
        let since = if cached {
            since
        } else {
            self.clock = self.clock.wrapping_add(1);
            self.clock
        };
        self.slots[i] = (h, self.generation, since);
        self.filed[self.generation as usize % GENERATIONS] += 1;
        if !(counted && age == 0) {
            self.filed_now += 1;
            if self.filed_now >= self.per_generation {
                self.generation = self.generation.wrapping_add(1);
                self.filed[self.generation as usize % GENERATIONS] = 0;
                self.filed_now = 0;
            }
        }
        (cached, since)
    }
}

/// What the last few commits wrote (hashes of account and user ids), by
/// epoch: see the module docs.
#[derive(Debug, Default)]
pub(crate) struct RecentWrites {
    /// (epoch, accounts, users, unnoted), oldest first.
    commits: VecDeque<(u64, HashSet<u64>, HashSet<u64>, bool)>,
    /// What the batch being prepared (or in flight) writes.
    pub pending: (HashSet<u64>, HashSet<u64>),
    /// The batch being prepared (or in flight) wrote records it did not
    /// note (no reader ahead existed when it was prepared): a read across
    /// it is refused.
    pub unnoted: bool,
    epoch: u64,
}

/// Commits remembered: a read ahead older than this is refused.
const REMEMBERED: usize = 4;

pub(crate) fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl RecentWrites {
    #[cfg(test)]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A commit completed: what it wrote is remembered under the next epoch.
    pub fn completed(&mut self) -> u64 {
        self.epoch += 1;
        let (accounts, users) = std::mem::take(&mut self.pending);
        let unnoted = std::mem::take(&mut self.unnoted);
        self.commits.push_back((self.epoch, accounts, users, unnoted));
        if self.commits.len() > REMEMBERED {
            self.commits.pop_front();
        }
        self.epoch
    }

    /// Records were written other than by a commit: every read ahead so far
    /// is refused.
    pub fn forget(&mut self) -> u64 {
        self.epoch += 1;
        self.commits.clear();
        self.pending = Default::default();
        self.unnoted = false;
        self.epoch
    }

    /// Whether a read of an account (`account`) or user (`user`) record
    /// that began at `epoch` still holds.
    pub fn holds(&self, epoch: u64, account: Option<&str>, user: Option<&str>) -> bool {
        if epoch == self.epoch {
            return true;
        }
        let since = || self.commits.iter().filter(|c| c.0 > epoch);
        if epoch > self.epoch || since().count() as u64 != self.epoch - epoch {
            return false;
        }
        let (a, u) = (account.map(id_hash), user.map(id_hash));
        !since().any(|c| c.3 || a.is_some_and(|a| c.1.contains(&a)) || u.is_some_and(|u| c.2.contains(&u)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_holds_until_a_commit_that_wrote_its_record_completes() {
        let mut w = RecentWrites::default();
        let e0 = w.epoch();
        assert!(w.holds(e0, Some("a"), Some("u")));
        w.pending.0.insert(id_hash("a"));
        w.pending.1.insert(id_hash("v"));
        // In flight: still the same epoch (the engine has "a" in hand).
        assert!(w.holds(e0, Some("a"), None));
        w.completed();
        assert!(!w.holds(e0, Some("a"), None), "written after the read began");
        assert!(!w.holds(e0, None, Some("v")));
        assert!(w.holds(e0, Some("b"), Some("u")), "other records still hold");
        let e1 = w.epoch();
        assert!(w.holds(e1, Some("a"), None), "read after the write completed");
        for _ in 0..REMEMBERED {
            w.completed();
        }
        assert!(!w.holds(e0, Some("b"), None), "older than what is remembered");
        assert!(w.holds(e1 + 1, Some("b"), None));
        w.forget();
        assert!(!w.holds(e1 + 1, Some("b"), None), "records written otherwise");
        assert!(w.holds(w.epoch(), Some("b"), None));
        assert!(!w.holds(w.epoch() + 1, Some("b"), None), "a read from the future");
        // A commit prepared before any reader ahead existed noted nothing:
        // every read across it is refused.
        let e2 = w.epoch();
        w.unnoted = true;
        assert!(w.holds(e2, Some("b"), None), "still in flight");
        w.completed();
        assert!(!w.holds(e2, Some("b"), None), "across a commit that noted nothing");
        assert!(w.holds(w.epoch(), Some("b"), None));
    }

    #[test]
    fn recent_ids_are_guessed_cached_until_capacity_newer_ones() {
        let mut r = Recent::new(3);
        assert!(!r.seen("a"));
        assert!(r.seen("a"));
        for id in ["b", "c"] {
            assert!(!r.seen(id));
        }
        assert!(r.seen("a"), "2 newer distinct ids: still within 3");
        for id in ["d", "e", "f"] {
            assert!(!r.seen(id));
        }
        assert!(!r.seen("b"), "3 newer distinct ids since b");
        // Ids seen again count as well as new ones: "a" went behind "x",
        // "y" and "z" (an LRU of 3 evicted it).
        let mut r = Recent::new(3);
        for id in ["x", "y", "a"] {
            r.seen(id);
        }
        assert!(r.seen("x") && r.seen("y"));
        assert!(!r.seen("z"));
        assert!(!r.seen("a"), "3 distinct ids since a, 2 of them seen before");
    }

    /// Against the engine's cache (an LRU of the same capacity, trimmed
    /// after each batch), over a skewed stream of ids: a guess of "cached"
    /// is never wrong; and of the ids an LRU trimmed at every step would
    /// hold, few are guessed not cached.
    #[test]
    fn a_guess_of_cached_is_never_wrong_and_rarely_missing() {
        let capacity = 2_000;
        let mut r = Recent::new(capacity);
        let mut batched: lru::LruCache<u64, ()> = lru::LruCache::unbounded();
        let mut exact: lru::LruCache<u64, ()> = lru::LruCache::new(capacity.try_into().unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let (mut held, mut missed) = (0u32, 0u32);
        for n in 0..400_000u64 {
            // xorshift: a few dense ids, then a long tail.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = match x % 10 {
                0..=3 => x % 50,
                4..=6 => x % 2_500,
                _ => x % 40_000,
            };
            let guess = r.seen_hash(id_hash(&id.to_string())).0;
            assert!(!guess || batched.get(&id).is_some(), "id {id} guessed cached after {n} ids, but evicted");
            batched.put(id, ());
            if n % 500 == 0 {
                while batched.len() > capacity {
                    batched.pop_lru();
                }
            }
            if exact.put(id, ()).is_some() {
                held += 1;
                missed += u32::from(!guess);
            }
        }
        assert!(missed * 50 < held, "{missed} of {held} cached ids guessed not cached");
    }
}
