//! Records dropped for idleness leave the changelog too.
//!
//! RocksDB's compaction drops an account, member or user record once it has
//! not been used for `state.idle_ttl_days` of event time (the `pqa-idle-ttl`
//! filter in `store.rs`). That happens in the background, at no set moment,
//! and the changelog used to know nothing of it: its compacted topic kept
//! every key ever written, and a restore read them all back.
//!
//! Now the filter notes what it drops ([`Expired::note`]), and the next
//! commit of the engine (`Store::prepare`) writes a tombstone for each
//! record that is really gone, on the changelog partition of its input
//! partition, before that commit's offset markers. "Really gone" is checked
//! on the engine thread, at the commit, where nothing else writes:
//! - not in the cache (the engine may have read it back and used it again
//!   between the filter's look and the commit: then it is alive);
//! - not in RocksDB (the filter may have looked at an older version, with a
//!   newer one elsewhere; or its compaction is not installed yet: then the
//!   record is still readable and idle, and it is looked at again about once
//!   a second, for up to [`PATIENCE`]).
//!
//! The partition of a tombstone: an account record names its own; a member
//! record goes with its account (cached or in RocksDB); a user record, and a
//! member whose account is gone too, has no partition of its own, and its
//! tombstone goes to every input partition this instance owns (a key that
//! a partition does not hold costs that partition one tombstone, which
//! compaction then drops). A partition owned by another instance gets
//! nothing from here: that instance restored the record and drops it itself.
//!
//! What this does not catch: records dropped while the filter was not
//! collecting (no changelog, or before the engine turned it on), and more
//! than [`MAX_QUEUED`] found between two commits. Those keys stay in the
//! topic; a restore skips them all the same, as it skips any record already
//! idle past the TTL (`Store::apply_changelog`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Records found by the filter and not yet looked at, at most: about
/// 110 bytes each with their keys, so at most about 30 MiB, however many a
/// compaction drops at once (the commits drain 4,096 each).
pub(crate) const MAX_QUEUED: usize = 1 << 18;

/// Records looked at per commit, at most (a compaction can drop hundreds of
/// thousands at once; the commits that follow spread them, a few
/// milliseconds of the engine thread each).
pub(crate) const PER_COMMIT: usize = 4096;

/// How long a record still readable (and idle: its compaction not
/// installed yet) is looked at again before it is given up.
pub(crate) const PATIENCE: Duration = Duration::from_secs(600);

/// How often such a record is looked at again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// A record the filter dropped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    /// Its key (with its kind: `keys::ACCOUNT`, `MEMBER` or `USER`).
    pub key: Vec<u8>,
    /// The input partition it belongs to, when the record names it (an
    /// account's own).
    pub partition: Option<i32>,
    /// When the filter dropped it.
    pub noted: Instant,
    /// Not looked at again before this (it was still readable).
    pub retry_at: Option<Instant>,
}

/// What the compaction filters found, shared with the store.
#[derive(Debug, Default)]
pub(crate) struct Expired {
    queue: Mutex<VecDeque<Found>>,
    /// Whether the filters note what they drop (only with a changelog).
    collect: AtomicBool,
    /// Found past [`MAX_QUEUED`], not noted.
    lost: AtomicU64,
}

impl Expired {
    pub fn set_collecting(&self, on: bool) {
        self.collect.store(on, Ordering::Relaxed);
        if !on {
            self.queue.lock().expect("expired queue").clear();
        }
    }

    pub fn collecting(&self) -> bool {
        self.collect.load(Ordering::Relaxed)
    }

    /// A record the filter drops (from a compaction thread); nothing while
    /// not collecting.
    pub fn note(&self, key: &[u8], partition: Option<i32>) {
        if !self.collecting() {
            return;
        }
        let mut q = self.queue.lock().expect("expired queue");
        if q.len() >= MAX_QUEUED {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(Found { key: key.to_vec(), partition, noted: Instant::now(), retry_at: None });
    }

    /// Up to `n` records to look at, oldest first.
    pub fn take(&self, n: usize) -> Vec<Found> {
        let mut q = self.queue.lock().expect("expired queue");
        let n = n.min(q.len());
        q.drain(..n).collect()
    }

    /// Records to look at again at a later commit.
    pub fn again(&self, found: Vec<Found>) {
        if found.is_empty() {
            return;
        }
        let mut q = self.queue.lock().expect("expired queue");
        for f in found {
            if q.len() >= MAX_QUEUED {
                self.lost.fetch_add(1, Ordering::Relaxed);
            } else {
                q.push_back(f);
            }
        }
    }

    /// Records found but never noted (the queue was full) since the last
    /// call.
    pub fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_takes_oldest_first_notes_only_while_collecting_and_is_bounded() {
        let e = Expired::default();
        e.note(b"a1", Some(1));
        assert!(e.take(10).is_empty(), "not collecting: nothing noted");
        e.set_collecting(true);
        for i in 0..5u8 {
            e.note(&[b'u', b'0' + i], None);
        }
        let first = e.take(2);
        assert_eq!(first.iter().map(|f| f.key.clone()).collect::<Vec<_>>(), vec![b"u0".to_vec(), b"u1".to_vec()]);
        e.again(first);
        let rest: Vec<Vec<u8>> = e.take(10).into_iter().map(|f| f.key).collect();
        assert_eq!(rest, vec![b"u2".to_vec(), b"u3".to_vec(), b"u4".to_vec(), b"u0".to_vec(), b"u1".to_vec()]);
        e.set_collecting(false);
        e.set_collecting(true);
        for _ in 0..MAX_QUEUED + 3 {
            e.note(b"x", None);
        }
        assert_eq!(e.take_lost(), 3);
        assert_eq!(e.take_lost(), 0);
        assert_eq!(e.take(usize::MAX).len(), MAX_QUEUED);
    }
}
