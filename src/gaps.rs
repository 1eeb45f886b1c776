//! Gaps in a log read from Kafka: a broker that, asked for an offset, skips
//! records at and after it.
//!
//! Kafka answers a fetch at an offset inside a record batch with the whole
//! batch, and the client drops the records below the offset it asked for.
//! A broker that answers with the batches that *start* after the offset
//! (tansu 0.6.0 with memory storage does) silently skips the rest of the
//! batch. Every seek lands inside a batch sooner or later: a restart at the
//! offset kept in RocksDB, an assignment, a changelog restore from the
//! position the local state has seen.
//!
//! [`GapGuard`] watches the first records of a partition after each seek.
//! The first record must be at the expected offset (or below it: records
//! already applied are skipped by the reader). When it is past it, the
//! guard asks for a seek further back, 1, 4, 16, ... offsets before the
//! expected one, until the broker returns a record at or below it (a batch
//! boundary at or before the expected offset was reached); the reader then
//! skips what it already has and the missing range is read. Only if the
//! range cannot be had does the guard let the reader go on, and it says so:
//!
//! - [`GapOutcome::Recovered`]: the broker skipped the range at first and
//!   returned it after the seek back. Nothing lost.
//! - [`GapOutcome::Empty`]: the broker returned records on both sides of
//!   the range and none inside it (offsets with no data record:
//!   transaction markers, aborted transactions, compaction). Nothing lost.
//! - [`GapOutcome::Truncated`]: the log starts after the expected offset
//!   (retention deleted the range before it was read). Records lost.
//! - [`GapOutcome::Unreadable`]: the broker would not return the range even
//!   from the start of the log. Records lost.
//!
//! The guard is a pure state machine: the caller feeds it offsets and
//! performs the seeks, so the same logic serves the consumer loop and the
//! changelog restore, and is tested without a broker.

use std::fmt;
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;

use crate::health::Health;

/// A partition of a topic, as gaps name it: `events[3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition { topic: topic.to_string(), partition }
    }
}

impl PartialEq<(&str, i32)> for TopicPartition {
    fn eq(&self, other: &(&str, i32)) -> bool {
        self.partition == other.1 && self.topic == other.0
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// Counts a settled gap (`gaps`, `records`: a `{outcome}` counter pair)
/// and says so: a warning for a range the broker skipped at first, an
/// error and a `/readyz` warning for records lost to this reader.
pub fn report(gap: &Gap<TopicPartition>, gaps: &IntCounterVec, records: &IntCounterVec, health: &Health) {
    let outcome = gap.outcome.as_str();
    gaps.with_label_values(&[outcome]).inc();
    records.with_label_values(&[outcome]).inc_by(gap.records());
    let (topic, partition, from, to) = (&gap.key.topic, gap.key.partition, gap.expected, gap.first_after);
    match gap.outcome {
        GapOutcome::Recovered => tracing::warn!(
            topic = %topic, partition, from, to, seeks = gap.seeks,
            "the broker skipped records after a seek; they were read after seeking back (nothing lost)"
        ),
        GapOutcome::Empty => tracing::info!(
            topic = %topic, partition, from, to,
            "offsets with no records (transaction markers, aborted transactions or compaction)"
        ),
        GapOutcome::Truncated | GapOutcome::Unreadable => {
            tracing::error!(topic = %topic, partition, from, to, outcome, log_start = ?gap.log_start, "{gap}");
            health.add_warning(gap.to_string());
        }
    }
}

/// What became of a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapOutcome {
    Recovered,
    Empty,
    Truncated,
    Unreadable,
}

impl GapOutcome {
    pub const ALL: [GapOutcome; 4] =
        [GapOutcome::Recovered, GapOutcome::Empty, GapOutcome::Truncated, GapOutcome::Unreadable];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            GapOutcome::Recovered => "recovered",
            GapOutcome::Empty => "empty",
            GapOutcome::Truncated => "truncated",
            GapOutcome::Unreadable => "unreadable",
        }
    }

    /// Records in the range are lost to this reader.
    pub fn is_loss(self) -> bool {
        matches!(self, GapOutcome::Truncated | GapOutcome::Unreadable)
    }
}

/// A gap found and settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap<K> {
    pub key: K,
    /// The offset the reader expected first.
    pub expected: i64,
    /// The first offset the broker returned after the expected one (the
    /// range `expected..first_after` was skipped at first).
    pub first_after: i64,
    /// Seeks back made to find the range.
    pub seeks: u32,
    /// The log's first offset, when the guard had to ask for it.
    pub log_start: Option<i64>,
    pub outcome: GapOutcome,
}

impl<K> Gap<K> {
    /// Offsets in the range.
    pub fn records(&self) -> u64 {
        (self.first_after - self.expected).max(0) as u64
    }
}

impl<K: fmt::Display> fmt::Display for Gap<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.outcome {
            GapOutcome::Recovered => "skipped by the broker, read after seeking back",
            GapOutcome::Empty => "holds no records (transaction markers, aborted transactions or compaction)",
            GapOutcome::Truncated => "deleted by retention before it was read: NOT APPLIED",
            GapOutcome::Unreadable => "not returned by the broker even from the log start: NOT APPLIED",
        };
        write!(f, "{} offsets {}..{} ({} records) {what}", self.key, self.expected, self.first_after, self.records())?;
        if let Some(low) = self.log_start {
            write!(f, " (log starts at {low})")?;
        }
        Ok(())
    }
}

/// What the reader does with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<K> {
    /// Hand the record on (a record below the expected offset is one the
    /// reader already has and skips). A gap settled by this record comes
    /// with it.
    Take(Option<Gap<K>>),
    /// Drop the record and seek the partition to this offset: the broker
    /// skipped records before it.
    SeekBack(i64),
}

#[derive(Debug)]
struct Watch<K> {
    key: K,
    expected: i64,
    /// A record below the expected offset was returned since the last seek.
    seen_below: bool,
    /// The first offset past the expected one returned right after a seek.
    first_after: Option<i64>,
    seeks: u32,
    /// The last seek back's target.
    target: Option<i64>,
    log_start: Option<i64>,
    /// The last seek or record.
    active: Instant,
    /// Probed back to the log start without a record: nothing to find.
    exhausted: bool,
}

/// Watches partitions after a seek until the expected offset is reached
/// (see the module docs).
#[derive(Debug)]
pub struct GapGuard<K> {
    watches: Vec<Watch<K>>,
}

impl<K> Default for GapGuard<K> {
    fn default() -> Self {
        GapGuard { watches: Vec::new() }
    }
}

/// How far before the expected offset the n-th seek back goes (n >= 1):
/// 1, 4, 16, ... offsets. A producer batch of 5,000 records is found in 7
/// seeks, re-reading at most four times its size.
fn step(n: u32) -> i64 {
    4i64.saturating_pow(n.saturating_sub(1)).min(1 << 40)
}

impl<K: PartialEq + Clone> GapGuard<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing is being watched (the common case: one branch per record).
    pub fn is_idle(&self) -> bool {
        self.watches.is_empty()
    }

    /// The partition was (re)positioned: its next record must be at
    /// `expected`.
    pub fn expect(&mut self, key: K, expected: i64, now: Instant) {
        self.watches.retain(|w| w.key != key);
        self.watches.push(Watch {
            key,
            expected,
            seen_below: false,
            first_after: None,
            seeks: 0,
            target: None,
            log_start: None,
            active: now,
            exhausted: false,
        });
    }

    /// Whether the partition is being watched.
    pub fn is_watched<Q: ?Sized>(&self, key: &Q) -> bool
    where
        K: PartialEq<Q>,
    {
        self.watches.iter().any(|w| w.key == *key)
    }

    /// Stops watching a partition (revoked, or no longer read).
    pub fn forget<Q: ?Sized>(&mut self, key: &Q)
    where
        K: PartialEq<Q>,
    {
        self.watches.retain(|w| w.key != *key);
    }

    /// Whether nothing more is to be learnt about the partition from
    /// silence: not watched, or the broker has returned a record at or
    /// below the expected offset since the seek (so it returns that part of
    /// the log), or probing found nothing down to the log start.
    pub fn settled<Q: ?Sized>(&self, key: &Q) -> bool
    where
        K: PartialEq<Q>,
    {
        self.watches.iter().find(|w| w.key == *key).is_none_or(|w| w.seen_below || w.exhausted)
    }

    /// Watched partitions that have returned nothing for `quiet` since
    /// their last seek, and may be hiding a skip: a broker that skips the
    /// rest of the last record batch returns nothing at all, so silence is
    /// no proof of an end. Probe each with [`GapGuard::probe`].
    pub fn silent(&self, now: Instant, quiet: Duration) -> Vec<K> {
        self.watches
            .iter()
            .filter(|w| !w.seen_below && !w.exhausted && now.duration_since(w.active) >= quiet)
            .map(|w| w.key.clone())
            .collect()
    }

    /// The offset to seek a silent partition to (further back each time),
    /// or `None` when the log start was reached and still nothing came:
    /// then the silence is the end of the log.
    pub fn probe<Q: ?Sized>(&mut self, key: &Q, now: Instant, log_start: impl FnOnce() -> Option<i64>) -> Option<i64>
    where
        K: PartialEq<Q>,
    {
        let w = self.watches.iter_mut().find(|w| w.key == *key)?;
        w.active = now;
        if let Some(low) = log_start() {
            w.log_start = Some(low);
        }
        let floor = w.log_start.unwrap_or(0).max(0);
        if w.target.is_some_and(|t| t <= floor) || w.expected <= floor {
            w.exhausted = true;
            return None;
        }
        w.seeks += 1;
        let target = (w.expected - step(w.seeks)).max(floor);
        w.target = Some(target);
        Some(target)
    }

    /// Judges a record of `key` at `offset`. `log_start` gives the first
    /// offset the broker still holds for the partition; it is asked only
    /// when the record is past the expected offset (a network call), and
    /// `None` means it could not be had.
    pub fn check<Q: ?Sized>(
        &mut self,
        key: &Q,
        offset: i64,
        now: Instant,
        log_start: impl FnOnce() -> Option<i64>,
    ) -> Verdict<K>
    where
        K: PartialEq<Q>,
    {
        let Some(i) = self.watches.iter().position(|w| w.key == *key) else {
            return Verdict::Take(None);
        };
        let w = &mut self.watches[i];
        w.active = now;
        if offset < w.expected {
            w.seen_below = true;
            return Verdict::Take(None);
        }
        if offset == w.expected {
            let w = self.watches.swap_remove(i);
            let gap = w.first_after.map(|first_after| Gap {
                key: w.key,
                expected: w.expected,
                first_after,
                seeks: w.seeks,
                log_start: w.log_start,
                outcome: GapOutcome::Recovered,
            });
            return Verdict::Take(gap);
        }
        // Past the expected offset.
        if w.seen_below {
            // Records on both sides and none inside: the range holds no
            // records the broker would give.
            let w = self.watches.swap_remove(i);
            return Verdict::Take(Some(Gap {
                key: w.key,
                expected: w.expected,
                first_after: w.first_after.unwrap_or(offset).min(offset),
                seeks: w.seeks,
                log_start: w.log_start,
                outcome: GapOutcome::Empty,
            }));
        }
        let first_after = *w.first_after.get_or_insert(offset);
        let low = log_start();
        if low.is_some() {
            w.log_start = low;
        }
        let give_up = |w: Watch<K>, outcome| Gap {
            key: w.key,
            expected: w.expected,
            first_after,
            seeks: w.seeks,
            log_start: w.log_start,
            outcome,
        };
        if let Some(low) = low {
            if low > w.expected {
                let w = self.watches.swap_remove(i);
                return Verdict::Take(Some(give_up(w, GapOutcome::Truncated)));
            }
        }
        let floor = low.unwrap_or(0).max(0);
        if w.target.is_some_and(|t| t <= floor) || w.expected <= floor {
            // Already from the log start (or the expected offset is the
            // start itself), and still past it.
            let w = self.watches.swap_remove(i);
            return Verdict::Take(Some(give_up(w, GapOutcome::Unreadable)));
        }
        w.seeks += 1;
        let target = (w.expected - step(w.seeks)).max(floor);
        w.target = Some(target);
        Verdict::SeekBack(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log as a broker that skips to the next batch start serves it:
    /// `batches` are the base offsets; `holes` are offsets with no record.
    struct SkippingBroker {
        batches: Vec<i64>,
        end: i64,
        log_start: i64,
        holes: Vec<i64>,
        /// A broker that never returns anything before this offset.
        hopeless: Option<i64>,
    }

    impl SkippingBroker {
        /// Offsets returned for a fetch at `from`, up to `n` of them.
        fn fetch(&self, from: i64, n: usize) -> Vec<i64> {
            let start = if !self.batches.contains(&from) {
                // The first batch that starts after `from`.
                *self.batches.iter().find(|b| **b > from).unwrap_or(&self.end)
            } else {
                from
            };
            (start.max(self.log_start).max(self.hopeless.unwrap_or(0))..self.end)
                .filter(|o| !self.holes.contains(o))
                .take(n)
                .collect()
        }
    }

    /// Reads `broker` from `from` the way the consumer loop does, until
    /// `upto`; returns the offsets handed on past `expected` and the gaps.
    fn read(broker: &SkippingBroker, expected: i64, upto: i64) -> (Vec<i64>, Vec<Gap<&'static str>>, u32) {
        let mut g = GapGuard::new();
        g.expect("p", expected, Instant::now());
        let (mut taken, mut gaps, mut seeks) = (Vec::new(), Vec::new(), 0);
        let mut pos = expected;
        'fetch: loop {
            let got = broker.fetch(pos, 100_000);
            if got.is_empty() {
                break;
            }
            for o in got {
                match g.check(&"p", o, Instant::now(), || Some(broker.log_start)) {
                    Verdict::Take(gap) => {
                        gaps.extend(gap);
                        if o >= expected {
                            taken.push(o);
                        }
                        if o + 1 >= upto {
                            break 'fetch;
                        }
                        pos = o + 1;
                    }
                    Verdict::SeekBack(to) => {
                        seeks += 1;
                        pos = to;
                        continue 'fetch;
                    }
                }
            }
        }
        (taken, gaps, seeks)
    }

    fn batches(size: i64, end: i64) -> Vec<i64> {
        (0..end).step_by(size as usize).collect()
    }

    #[test]
    fn a_mid_batch_skip_is_found_and_read_from_the_batch_start() {
        let broker =
            SkippingBroker { batches: batches(5000, 20_000), end: 20_000, log_start: 0, holes: vec![], hopeless: None };
        let (taken, gaps, seeks) = read(&broker, 7_123, 20_000);
        assert_eq!(taken, (7_123..20_000).collect::<Vec<_>>(), "every record from the expected offset on");
        assert_eq!(gaps.len(), 1);
        let gap = &gaps[0];
        assert_eq!((gap.expected, gap.first_after, gap.outcome), (7_123, 10_000, GapOutcome::Recovered));
        assert_eq!(gap.records(), 2_877);
        // 1, 4, 16, 64, 256, 1024, 4096 back: 7_123 - 4_096 = 3_027 is in
        // the batch at 0, so the broker returns the batch at 5_000.
        assert_eq!(seeks, 7);
        assert_eq!(gap.seeks, 7);
    }

    #[test]
    fn a_record_at_the_expected_offset_is_no_gap() {
        let broker =
            SkippingBroker { batches: batches(100, 1_000), end: 1_000, log_start: 0, holes: vec![], hopeless: None };
        let (taken, gaps, seeks) = read(&broker, 300, 1_000);
        assert_eq!(taken.first(), Some(&300));
        assert!(gaps.is_empty());
        assert_eq!(seeks, 0);
    }

    #[test]
    fn offsets_without_records_are_an_empty_gap_not_a_loss() {
        // A transaction marker at 500 and an aborted range 501..=509; the
        // broker is correct (whole batches), so the first record after the
        // seek is 490 (below), then 510.
        let holes: Vec<i64> = (500..510).collect();
        let broker = SkippingBroker { batches: batches(10, 1_000), end: 1_000, log_start: 0, holes, hopeless: None };
        let mut g = GapGuard::new();
        g.expect("p", 500, Instant::now());
        assert_eq!(g.check(&"p", 510, Instant::now(), || Some(0)), Verdict::SeekBack(499));
        // The broker answers a fetch at 499 from its batch at 490.
        let mut gap = None;
        for o in broker.fetch(490, 30) {
            match g.check(&"p", o, Instant::now(), || panic!("the log start is not needed")) {
                Verdict::Take(found) => gap = gap.or(found),
                other => panic!("{other:?}"),
            }
        }
        let gap = gap.expect("settled");
        assert_eq!((gap.expected, gap.first_after, gap.outcome), (500, 510, GapOutcome::Empty));
        assert!(!gap.outcome.is_loss());
        assert!(g.is_idle());
    }

    #[test]
    fn a_range_before_the_log_start_is_truncated() {
        let mut g = GapGuard::new();
        g.expect("p", 100, Instant::now());
        match g.check(&"p", 5_000, Instant::now(), || Some(4_000)) {
            Verdict::Take(Some(gap)) => {
                assert_eq!(gap.outcome, GapOutcome::Truncated);
                assert!(gap.outcome.is_loss());
                assert_eq!(gap.log_start, Some(4_000));
                assert!(gap.to_string().contains("NOT APPLIED"), "{gap}");
            }
            other => panic!("{other:?}"),
        }
        assert!(g.is_idle());
    }

    #[test]
    fn a_broker_that_never_returns_the_range_is_given_up_on_loudly() {
        let broker = SkippingBroker {
            batches: batches(1_000, 10_000),
            end: 10_000,
            log_start: 0,
            holes: vec![],
            hopeless: Some(3_000),
        };
        let (taken, gaps, seeks) = read(&broker, 2_500, 10_000);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].outcome, GapOutcome::Unreadable);
        // Seeks back until the log start, then on from what it returns.
        assert_eq!(seeks, 7, "1, 4, 16, 64, 256, 1024, then clamped to 0");
        assert_eq!(taken.first(), Some(&3_000), "on from what the broker gives");
        assert_eq!(gaps[0].first_after, 3_000);
    }

    #[test]
    fn a_new_seek_replaces_the_watch_and_forget_ends_it() {
        let mut g: GapGuard<TopicPartition> = GapGuard::new();
        let k = TopicPartition::new("events", 1);
        g.expect(k.clone(), 10, Instant::now());
        g.expect(k.clone(), 20, Instant::now());
        assert_eq!(g.check(&k, 20, Instant::now(), || None), Verdict::Take(None));
        assert!(g.is_idle());
        g.expect(k.clone(), 30, Instant::now());
        g.forget(&k);
        assert_eq!(g.check(&("events", 1), 99, Instant::now(), || None), Verdict::Take(None), "not watched");
        assert_eq!(k.to_string(), "events[1]");
        // Unknown log start: seeks back all the same, floor 0.
        g.expect(k.clone(), 3, Instant::now());
        assert_eq!(g.check(&k, 9, Instant::now(), || None), Verdict::SeekBack(2));
        assert_eq!(g.check(&k, 9, Instant::now(), || None), Verdict::SeekBack(0));
        assert!(matches!(
            g.check(&k, 9, Instant::now(), || None),
            Verdict::Take(Some(Gap { outcome: GapOutcome::Unreadable, .. }))
        ));
    }

    #[test]
    fn silence_after_a_seek_inside_the_last_batch_is_probed_until_the_batch_is_returned() {
        // The expected offset is inside the last batch (5_000..5_500): the
        // broker returns nothing at all, so only silence gives it away.
        let broker =
            SkippingBroker { batches: batches(1_000, 5_500), end: 5_500, log_start: 0, holes: vec![], hopeless: None };
        let t0 = Instant::now();
        let quiet = Duration::from_secs(1);
        let mut g = GapGuard::new();
        g.expect("p", 5_200, t0);
        assert!(g.silent(t0, quiet).is_empty(), "not silent yet");
        assert!(!g.settled(&"p"));
        let mut now = t0;
        let mut taken = Vec::new();
        let mut probes = 0;
        while !g.settled(&"p") {
            now += quiet;
            assert_eq!(g.silent(now, quiet), vec!["p"]);
            let to = g.probe(&"p", now, || Some(0)).expect("not at the log start yet");
            probes += 1;
            for o in broker.fetch(to, 10_000) {
                match g.check(&"p", o, now, || panic!("no gap: nothing past the expected offset came first")) {
                    Verdict::Take(None) => taken.push(o),
                    other => panic!("{other:?}"),
                }
            }
        }
        // 1, 4, 16, 64 back are inside the last batch; 256 back (4_944)
        // is in the one before, so the last batch comes whole.
        assert_eq!(probes, 5);
        assert_eq!(taken.iter().filter(|o| **o >= 5_200).count(), 300, "the tail is read");
        assert!(g.is_idle(), "done at the expected offset");

        // A partition that is really at its end: probed to the log start,
        // then it is the end.
        let mut g = GapGuard::new();
        g.expect("p", 3, t0);
        assert_eq!(g.probe(&"p", t0, || Some(0)), Some(2));
        assert_eq!(g.probe(&"p", t0, || Some(0)), Some(0));
        assert_eq!(g.probe(&"p", t0, || Some(0)), None);
        assert!(g.settled(&"p"));
        assert!(g.silent(t0 + quiet, quiet).is_empty());
    }
}
