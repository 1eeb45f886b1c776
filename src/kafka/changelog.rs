//! The state changelog: how a partition's state follows it to another
//! instance of the consumer group (the Kafka Streams way).
//!
//! Every commit writes the records it changes to a compacted topic, on the
//! changelog partition equal to the input partition they belong to, and ends
//! each partition's records with an offset *marker* (`keys::offset` ->
//! `next input offset | watermark`). Only after the changelog has
//! acknowledged them is the same batch written to RocksDB, together with
//! the changelog offset reached. So the changelog is never behind the local
//! state, and a marker always follows the complete records of its commit.
//!
//! When a partition is assigned, [`Changelog::restore`] reads its changelog
//! partition from the offset the local state has already seen (or from the
//! start) to the end, applies every complete commit (records up to a
//! marker) to RocksDB, and drops an incomplete tail (records of a commit
//! whose writer died before its marker: that writer had not committed
//! them, and whoever processes the partition next writes them again). The
//! partition's input offset then comes from the last marker, so processing
//! resumes exactly where the state ends.
//!
//! The message ids of the dedupe window travel as one record per commit and
//! partition (a dedupe block, `keys::DEDUPE_BLOCK`), not one per event; the
//! writer tombstones each block once its newest id has left the window, so
//! the compacted topic holds the window's ids, not every id ever applied.
//! Records RocksDB drops for idleness are tombstoned the same way (see
//! `state::expiry`), and a restore skips records already idle.
//!
//! Limits: the input must be keyed by account (all events of an account in
//! one partition); a zombie owner (one that lost its group membership but
//! still writes) is not fenced, as there are no transactions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;

/// Header naming the state schema of a changelog account record (absent:
/// schema 1). Only account records carry it (since 2026-12-04; before, every
/// record did): only they are read by it.
pub const SCHEMA_HEADER: &str = "pqa-schema";

/// The schema a changelog record was written in (`None`: before records
/// carried it, schema 1).
fn schema_of(m: &impl Message) -> Option<Vec<u8>> {
    m.headers()?.iter().find(|h| h.key == SCHEMA_HEADER).and_then(|h| h.value.map(<[u8]>::to_vec))
}
use crate::gaps::{self, GapGuard, TopicPartition, Verdict};
use crate::health::{Health, Source};
use crate::kafka::produce::{self, SendError, Transient};
use crate::shutdown::Shutdown;
use crate::state::keys;
use crate::state::store::{ChangeRecord, ChangeRecords};
use crate::state::{StateError, Store};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("cannot create a Kafka client for the changelog: {0}")]
    Client(KafkaError),
    #[error(
        "the changelog topic {topic} has {has} partitions but the input topic has {needs}: \
         give it at least {needs} (or name another with kafka.changelog_topic)"
    )]
    TooFewPartitions { topic: String, has: usize, needs: usize },
    #[error(
        "cannot create the changelog topic {topic}: {cause}; create it yourself \
         ({partitions} partitions, cleanup.policy=compact) or set kafka.changelog = false"
    )]
    Create { topic: String, partitions: usize, cause: String },
    #[error("Kafka refuses a changelog record for {topic}: {cause} (raise the topic's max.message.bytes)")]
    Refused { topic: String, cause: KafkaError },
    #[error("interrupted by shutdown before the changelog was written or read")]
    Interrupted,
    #[error(transparent)]
    State(#[from] StateError),
}

/// Delivery bookkeeping of the changelog producer.
#[derive(Default)]
pub struct ChangelogContext {
    /// Next offset after the highest acknowledged record, per partition.
    acked: Mutex<HashMap<i32, i64>>,
    /// Partitions with a failed delivery since the last check.
    failed: Mutex<HashSet<i32>>,
    /// Records enqueued whose delivery report has not been served yet (not
    /// `in_flight_count()`, which also counts statistics and log events
    /// that `flush` stops serving once no message is left).
    unacked: AtomicUsize,
}

impl ClientContext for ChangelogContext {
    /// Statistics come from the consumer; don't log the producer's whole.
    fn stats_raw(&self, _statistics: &[u8]) {}
}

/// The restore consumer's context: statistics dropped, like the producer's.
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn stats_raw(&self, _statistics: &[u8]) {}

    /// The end of a partition is what a restore waits for, not an error
    /// (librdkafka also reports it as a client error).
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            e => tracing::warn!(cause = %e, reason, "changelog reader error"),
        }
    }
}

impl ConsumerContext for QuietContext {}

impl ProducerContext for ChangelogContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.unacked.fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok(m) => {
                let mut acked = self.acked.lock().expect("lock");
                let next = acked.entry(m.partition()).or_insert(0);
                *next = (*next).max(m.offset() + 1);
            }
            Err((e, m)) => {
                tracing::warn!(cause = %e, partition = m.partition(), "changelog delivery failed; will resend");
                self.failed.lock().expect("lock").insert(m.partition());
            }
        }
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Changelog records read.
    pub records: u64,
    /// Records of an incomplete commit at the end, dropped.
    pub dropped_tail: u64,
    /// The input offset the state now resumes at, if the changelog had one.
    pub next_input_offset: Option<i64>,
}

/// Writer and reader of the changelog topic.
pub struct Changelog {
    topic: String,
    replication: i32,
    producer: BaseProducer<ChangelogContext>,
    restorer: BaseConsumer<QuietContext>,
    admin_config: ClientConfig,
    metrics: Metrics,
}

const REQUIRED_PRODUCER: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// Records applied to RocksDB per write while restoring.
const RESTORE_WRITE_RECORDS: usize = 20_000;

/// A restore that has read past the broker's stated end ends after this
/// long without a new record (a broker may understate its end).
const END_QUIET: Duration = Duration::from_secs(1);
/// A restore that has read nothing since its last seek seeks back after
/// this long (see [`GapGuard::silent`]).
const PROBE_QUIET: Duration = Duration::from_millis(200);
/// A restore short of the broker's stated end ends after this long
/// without a new record (a gap at the end: a compacted or aborted tail).
const STUCK_QUIET: Duration = Duration::from_secs(5);

impl Changelog {
    pub fn new(cfg: &KafkaConfig, metrics: Metrics) -> Result<Changelog, ChangelogError> {
        let mut common = ClientConfig::new();
        common.set("bootstrap.servers", &cfg.bootstrap_servers);
        for (k, v) in &cfg.properties {
            common.set(k, v);
        }
        let mut pc = common.clone();
        pc.set("client.id", "pqa-engine-changelog")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("message.max.bytes", "16777216");
        for (k, v) in &cfg.producer_properties {
            pc.set(k, v);
        }
        for (k, v) in REQUIRED_PRODUCER {
            pc.set(*k, *v);
        }
        let producer = pc.create_with_context(ChangelogContext::default()).map_err(ChangelogError::Client)?;
        let mut rc = common.clone();
        rc.set("client.id", "pqa-engine-restore")
            .set("group.id", format!("{}-restore", cfg.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "20")
            .set("fetch.error.backoff.ms", "20")
            .set("allow.auto.create.topics", "false")
            // A position past the log's end is an error to see, not a reason
            // to read the whole changelog again from the start.
            .set("auto.offset.reset", "error");
        let restorer = rc.create_with_context(QuietContext).map_err(ChangelogError::Client)?;
        Ok(Changelog {
            topic: cfg.changelog_topic_name(),
            replication: cfg.changelog_replication_factor,
            producer,
            restorer,
            admin_config: common,
            metrics,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Makes sure the changelog topic exists with at least as many
    /// partitions as `input_topic`, creating it (compacted) if missing.
    /// Waits (not ready) while the input topic does not exist yet.
    pub fn ensure_topic(&self, input_topic: &str, shutdown: &Shutdown, health: &Health) -> Result<(), ChangelogError> {
        let waiting = "waiting for the input topic to exist";
        let needs = loop {
            match self.partition_count(input_topic) {
                Some(n) if n > 0 => break n,
                _ => {
                    health.set(Source::State, Some(waiting));
                    if shutdown.is_triggered() {
                        return Err(ChangelogError::Interrupted);
                    }
                    shutdown.sleep(Duration::from_secs(1));
                }
            }
        };
        health.clear_problem(waiting);
        if let Some(has) = self.partition_count(&self.topic) {
            if has < needs {
                return Err(ChangelogError::TooFewPartitions { topic: self.topic.clone(), has, needs });
            }
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.admin_config.create().map_err(ChangelogError::Client)?;
        let topic = NewTopic::new(&self.topic, needs as i32, TopicReplication::Fixed(self.replication))
            .set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let created = rt.block_on(admin.create_topics([&topic], &opts));
        let err = |cause: String| ChangelogError::Create { topic: self.topic.clone(), partitions: needs, cause };
        match created {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => return Err(err(code.to_string())),
                    }
                }
            }
            Err(e) => return Err(err(e.to_string())),
        }
        tracing::info!(topic = %self.topic, partitions = needs, "changelog topic created");
        // Metadata takes a moment to show a new topic everywhere.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.partition_count(&self.topic).is_none_or(|n| n < needs) {
            if Instant::now() > deadline || shutdown.is_triggered() {
                return Err(err("the topic does not appear in the cluster's metadata".into()));
            }
            shutdown.sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Partitions of `topic`, `None` when it does not exist (or the cluster
    /// cannot be asked right now).
    fn partition_count(&self, topic: &str) -> Option<usize> {
        let md = self.restorer.fetch_metadata(Some(topic), Duration::from_secs(10)).ok()?;
        let t = md.topics().iter().find(|t| t.name() == topic)?;
        if t.error().is_some() || t.partitions().is_empty() {
            return None;
        }
        Some(t.partitions().len())
    }

    /// Writes a commit's changelog records and waits until every one is
    /// acknowledged. Returns the next changelog offset per partition
    /// written. A partition with a failed delivery is written again whole
    /// (records then marker), so a marker never stands for missing records.
    pub fn write(
        &self,
        records: &ChangeRecords,
        shutdown: &Shutdown,
        not_ready: &dyn Fn(Option<&str>),
    ) -> Result<Vec<(i32, i64)>, ChangelogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.producer.context().acked.lock().expect("lock").clear();
        let mut resend: Option<HashSet<i32>> = None;
        let mut backoff = Duration::from_millis(100);
        let mut degraded = false;
        loop {
            for r in records.iter().filter(|r| resend.as_ref().is_none_or(|s| s.contains(&r.partition))) {
                self.send(&r, shutdown)?;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut waited = Instant::now();
            while self.producer.context().unacked.load(Ordering::SeqCst) > 0 {
                // Wake the brokers (don't wait out `linger.ms`), then serve
                // delivery reports in short polls: `poll` waits out its
                // timeout, and the batch is done at its last report.
                let _ = self.producer.flush(Duration::ZERO);
                self.producer.poll(Duration::from_millis(2));
                if waited.elapsed() >= Duration::from_millis(500) {
                    waited = Instant::now();
                    if !degraded {
                        not_ready(Some("changelog not acknowledged by Kafka"));
                        degraded = true;
                    }
                    if shutdown.is_triggered() && Instant::now() > deadline {
                        return Err(ChangelogError::Interrupted);
                    }
                }
            }
            let failed = std::mem::take(&mut *self.producer.context().failed.lock().expect("lock"));
            if failed.is_empty() {
                break;
            }
            if !degraded {
                not_ready(Some("changelog delivery failing"));
                degraded = true;
            }
            if shutdown.is_triggered() {
                return Err(ChangelogError::Interrupted);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            resend = Some(failed);
        }
        if degraded {
            not_ready(None);
        }
        self.metrics.changelog_records.inc_by(records.len() as u64);
        let acked = std::mem::take(&mut *self.producer.context().acked.lock().expect("lock"));
        Ok(acked.into_iter().collect())
    }

    fn send(&self, r: &ChangeRecord<'_>, shutdown: &Shutdown) -> Result<(), ChangelogError> {
        let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&self.topic).partition(r.partition).key(r.key);
        if r.key.first() == Some(&keys::ACCOUNT) {
            // Only account records are read by their schema (see `restore`);
            // the others go without headers (one allocation less each).
            record = record.headers(
                OwnedHeaders::new()
                    .insert(Header { key: SCHEMA_HEADER, value: Some(crate::state::store::SCHEMA_VERSION) }),
            );
        }
        if !r.value.is_empty() {
            // (Empty: a tombstone, no payload.)
            record = record.payload(r.value);
        }
        let mut logged = false;
        let mut log = |e: &KafkaError| {
            if !logged {
                tracing::warn!(cause = %e, topic = %self.topic, "changelog produce failed; retrying");
                logged = true;
            }
        };
        match produce::send(&self.producer, record, Transient::Retry(&mut log), &|| shutdown.is_triggered()) {
            Ok(()) => {
                self.producer.context().unacked.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(SendError::Refused(cause)) => Err(ChangelogError::Refused { topic: self.topic.clone(), cause }),
            Err(SendError::Failed(_) | SendError::Stopped) => Err(ChangelogError::Interrupted),
        }
    }

    /// Brings the state of input `partition` up to date from its changelog
    /// partition (see the module docs). Call with a clean cache (after a
    /// commit); the cache is dropped if anything is applied.
    pub fn restore(
        &self,
        store: &mut Store,
        partition: i32,
        shutdown: &Shutdown,
        health: &Health,
    ) -> Result<Restored, ChangelogError> {
        let started = Instant::now();
        let mut done = Restored::default();
        let (low, mut high) = self.watermarks(partition, shutdown)?;
        let seen = store.reader().changelog_position(partition)?;
        let start = match seen {
            // Even past the broker's "latest offset": a broker may understate
            // it (tansu 0.6.0 answers with the start of its last record
            // batch plus one), so the read below decides where the log ends.
            Some(s) if s >= low => s,
            Some(s) => {
                tracing::warn!(
                    partition,
                    seen = s,
                    low,
                    "the changelog no longer holds everything after this state's position; reading what it has"
                );
                low
            }
            None => low,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(start)).map_err(ChangelogError::Client)?;
        self.restorer.assign(&tpl).map_err(ChangelogError::Client)?;
        drop(tpl);
        // From here on every exit goes through the clean-up after the loop.
        let expected = (high - start).max(0);
        let problem = format!("restoring state from the changelog ({expected} records)");
        if expected > 0 {
            health.set(Source::State, Some(&problem));
        }
        self.metrics.restoring_partitions.inc();
        self.metrics.restore_remaining.add(expected);
        let mut remaining = expected;
        let key = TopicPartition::new(&self.topic, partition);
        let mut gaps = GapGuard::new();
        gaps.expect(key.clone(), start, Instant::now());
        // Records since the last marker (an incomplete commit, until its
        // marker arrives) and complete commits not yet written.
        let mut pending: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut complete: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut complete_next = None;
        let mut position = start;
        let mut last_record = Instant::now();
        let mut out_of_range = false;
        let result = loop {
            if shutdown.is_triggered() {
                break Err(ChangelogError::Interrupted);
            }
            let polled = self.restorer.poll(Duration::from_millis(100));
            let eof = matches!(polled, Some(Err(KafkaError::PartitionEOF(_))));
            match polled {
                None | Some(Err(KafkaError::PartitionEOF(_))) => {
                    // The end is where the log has nothing more, not only
                    // where the broker says it is. At the broker's end and
                    // quiet for a moment: ask again, and stop if nothing
                    // was added (Kafka and the mock cluster get here at
                    // their first end-of-partition). Short of it and quiet
                    // for long: the log has a gap at its end (a compacted
                    // or aborted tail).
                    let quiet = last_record.elapsed();
                    if !gaps.settled(&key) {
                        // Nothing returned since the seek: a broker that
                        // skips the rest of the last record batch returns
                        // nothing at all. Seek back until it returns
                        // something at or below the start, or the log start
                        // is reached (at once on an end-of-partition: one
                        // round trip on a broker that keeps its batches).
                        let now = Instant::now();
                        if !eof && gaps.silent(now, PROBE_QUIET).is_empty() {
                            continue;
                        }
                        if let Some(to) = gaps.probe(&key, now, || self.log_start(partition, shutdown)) {
                            tracing::debug!(partition, seek = to, "changelog silent after a seek; seeking back");
                            self.seek_back(partition, to);
                        }
                        continue;
                    }
                    if position >= high || quiet >= STUCK_QUIET {
                        let now_high = match self.watermarks(partition, shutdown) {
                            Ok((_, h)) => h,
                            Err(e) => break Err(e),
                        };
                        if position == now_high || (position > now_high && quiet >= END_QUIET) {
                            break Ok(());
                        }
                        if position < now_high && quiet >= STUCK_QUIET {
                            tracing::warn!(
                                partition,
                                position,
                                high = now_high,
                                "changelog ends before its high watermark; done"
                            );
                            break Ok(());
                        }
                        high = high.max(now_high);
                    }
                }
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                ))) => {
                    // Nothing at this position: the local state has seen
                    // more of the changelog than it holds.
                    out_of_range = true;
                    break Ok(());
                }
                Some(Err(e)) => {
                    tracing::warn!(cause = %e, partition, "changelog read failed; retrying");
                    shutdown.sleep(Duration::from_millis(200));
                }
                Some(Ok(m)) => {
                    last_record = Instant::now();
                    match gaps.check(&key, m.offset(), Instant::now(), || self.log_start(partition, shutdown)) {
                        Verdict::SeekBack(to) => {
                            tracing::warn!(
                                partition,
                                got = m.offset(),
                                seek = to,
                                "the broker returned a changelog record past the expected offset; seeking back"
                            );
                            self.seek_back(partition, to);
                            continue;
                        }
                        Verdict::Take(gap) => {
                            if let Some(gap) = gap {
                                gaps::report(
                                    &gap,
                                    &self.metrics.changelog_gaps,
                                    &self.metrics.changelog_gap_records,
                                    health,
                                );
                            }
                        }
                    }
                    if m.offset() < position {
                        // Below where this state is (a seek back re-reads
                        // it): applied already.
                        continue;
                    }
                    let key = m.key().unwrap_or_default().to_vec();
                    let mut value = m.payload().unwrap_or_default().to_vec();
                    let schema = if key.first() == Some(&keys::ACCOUNT) { schema_of(&m) } else { None };
                    if let Some(v) = schema.as_deref().filter(|v| !crate::state::store::schema_readable(v)) {
                        // Written by a newer engine, in a shape this one
                        // would misread: stop rather than restore it wrong.
                        break Err(crate::state::StateError::Corrupt {
                            what: "changelog",
                            detail: format!(
                                "an account record of schema {} (this engine reads up to {}): run the newer version",
                                String::from_utf8_lossy(v),
                                String::from_utf8_lossy(crate::state::store::SCHEMA_VERSION)
                            ),
                        }
                        .into());
                    }
                    // (A tombstone has nothing to convert: see `state::expiry`.)
                    if key.first() == Some(&keys::ACCOUNT) && !value.is_empty() && schema.is_none() {
                        // Written by an engine of schema 1 (before records
                        // named their columns): read it the way a schema-1
                        // state directory is migrated.
                        match store.convert_v1_account(&value) {
                            Ok(v) => value = v,
                            Err(e) => break Err(e.into()),
                        }
                    }
                    done.records += 1;
                    self.metrics.restored_records.inc();
                    let read = (m.offset() + 1 - position).clamp(0, remaining);
                    self.metrics.restore_remaining.sub(read);
                    remaining -= read;
                    position = m.offset() + 1;
                    let marker = key.first() == Some(&keys::OFFSET);
                    if marker {
                        if let Some(next) = value.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                            done.next_input_offset = Some(i64::from_be_bytes(next));
                        }
                    }
                    pending.push((key, value));
                    if marker {
                        complete.append(&mut pending);
                        complete_next = Some(position);
                        if complete.len() >= RESTORE_WRITE_RECORDS {
                            if let Err(e) = store.apply_changelog(partition, &complete, position) {
                                break Err(e.into());
                            }
                            complete.clear();
                            complete_next = None;
                        }
                    }
                }
            }
        };
        self.metrics.restore_remaining.sub(remaining);
        self.metrics.restoring_partitions.dec();
        let _ = self.restorer.unassign();
        health.clear_problem(&problem);
        result?;
        if let Some(next) = complete_next {
            store.apply_changelog(partition, &complete, next)?;
        }
        done.dropped_tail = pending.len() as u64;
        if seen.is_some_and(|s| s > high) && done.records == 0 {
            // Kept as is: applying an older changelog would move this state
            // back and repeat input.
            if out_of_range {
                tracing::warn!(
                    partition,
                    seen = ?seen,
                    high,
                    "the changelog ends before the position this state has already seen (topic recreated, or \
                     acknowledged records lost by the broker); keeping the local state, which is newer"
                );
            } else {
                tracing::info!(
                    partition,
                    seen = ?seen,
                    high,
                    "the broker states a changelog end before this state's position and holds nothing after it; \
                     keeping the local state"
                );
            }
        }
        if done.records == 0 {
            return Ok(done);
        }
        self.metrics.restore_seconds.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            partition,
            records = done.records,
            dropped_tail = done.dropped_tail,
            resumes_at = ?done.next_input_offset,
            seconds = started.elapsed().as_secs_f64(),
            "state restored from the changelog"
        );
        Ok(done)
    }

    /// The partition's (log start, "latest offset") as the broker states
    /// them, retried until it answers.
    fn watermarks(&self, partition: i32, shutdown: &Shutdown) -> Result<(i64, i64), ChangelogError> {
        loop {
            match self.restorer.fetch_watermarks(&self.topic, partition, Duration::from_secs(10)) {
                Ok(w) => return Ok(w),
                Err(e) => {
                    tracing::warn!(cause = %e, partition, "cannot read the changelog's offsets; retrying");
                    if shutdown.is_triggered() {
                        return Err(ChangelogError::Interrupted);
                    }
                    shutdown.sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn log_start(&self, partition: i32, shutdown: &Shutdown) -> Option<i64> {
        self.watermarks(partition, shutdown).ok().map(|w| w.0)
    }

    /// Seeks the restore reader back to `to` for the gap guard.
    fn seek_back(&self, partition: i32, to: i64) {
        if let Err(e) = self.restorer.seek(&self.topic, partition, Offset::Offset(to), Duration::from_secs(10)) {
            tracing::warn!(cause = %e, partition, "changelog seek back failed");
        }
    }

    /// Waits for outstanding changelog records (shutdown).
    pub fn close(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    /// A record: (partition, key, value).
    type Owned = (i32, Vec<u8>, Vec<u8>);

    fn record(partition: i32, key: Vec<u8>, value: &[u8]) -> Owned {
        (partition, key, value.to_vec())
    }

    fn marker(partition: i32, next: i64, watermark: i64) -> Owned {
        let mut v = next.to_be_bytes().to_vec();
        v.extend_from_slice(&watermark.to_be_bytes());
        record(partition, keys::offset("events", partition), &v)
    }

    fn records(list: &[Owned]) -> ChangeRecords {
        list.iter().map(|(partition, key, value)| ChangeRecord { partition: *partition, key, value }).collect()
    }

    fn account_value(seq: u64) -> Vec<u8> {
        let st = crate::state::AccountState { seq, last_seen_ms: 1_000, ..Default::default() };
        let mut v = 1_000i64.to_be_bytes().to_vec();
        v.extend_from_slice(&postcard::to_allocvec(&st).unwrap());
        v
    }

    /// Every record of the test changelog's partition 0: (key, payload
    /// length; `None`: a tombstone).
    fn changelog_partition_0(cluster: &MockCluster<'static, DefaultProducerContext>) -> Vec<(Vec<u8>, Option<usize>)> {
        let read: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "unit-read")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("unit-changelog", 0, Offset::Beginning).unwrap();
        read.assign(&tpl).unwrap();
        let mut records = Vec::new();
        loop {
            match read.poll(Duration::from_secs(10)) {
                Some(Ok(m)) => records.push((m.key().unwrap_or_default().to_vec(), m.payload().map(<[u8]>::len))),
                Some(Err(KafkaError::PartitionEOF(_))) => return records,
                other => panic!("reading the changelog: {other:?}"),
            }
        }
    }

    /// A mock cluster with an `events` topic and its changelog
    /// (`unit-changelog`), both of `partitions` partitions, and a config
    /// and a changelog writer for them.
    fn mock_changelog(partitions: i32) -> (MockCluster<'static, DefaultProducerContext>, Config, Changelog) {
        let cluster = MockCluster::new(1).unwrap();
        let mut cfg = Config::default_config();
        cfg.kafka.bootstrap_servers = cluster.bootstrap_servers();
        cfg.kafka.group_id = "unit".into();
        cfg.kafka.input_topics = vec!["events".into()];
        cluster.create_topic("events", partitions, 1).unwrap();
        cluster.create_topic("unit-changelog", partitions, 1).unwrap();
        let c = Changelog::new(&cfg.kafka, Metrics::new()).unwrap();
        (cluster, cfg, c)
    }

    #[test]
    fn restore_applies_complete_commits_drops_an_incomplete_tail_and_resumes_from_its_position() {
        let (_cluster, cfg, c) = mock_changelog(2);
        let (shutdown, health) = (Shutdown::new(), Health::new());
        health.set_live(true);
        health.set_assigned(true);
        c.ensure_topic("events", &shutdown, &health).unwrap();

        // Partition 1: a complete commit (a1, marker 10), another (a1 again,
        // a2, marker 25), then a writer died after a3 but before its marker.
        let first = [record(1, keys::account("a1"), &account_value(1)), marker(1, 10, 5_000)];
        let next = c.write(&records(&first), &shutdown, &|_| {}).unwrap();
        assert_eq!(next, vec![(1, 2)]);
        let second = [
            record(1, keys::account("a1"), &account_value(2)),
            record(1, keys::account("a2"), &account_value(7)),
            marker(1, 25, 9_000),
        ];
        c.write(&records(&second), &shutdown, &|_| {}).unwrap();
        c.write(&records(&[record(1, keys::account("a3"), &account_value(1))]), &shutdown, &|_| {}).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut scfg = cfg.state.clone();
        scfg.dir = dir.path().to_path_buf();
        let mut store = Store::open(&scfg).unwrap();
        let done = c.restore(&mut store, 1, &shutdown, &health).unwrap();
        assert_eq!(done, Restored { records: 6, dropped_tail: 1, next_input_offset: Some(25) });
        let r = store.reader();
        assert_eq!(r.account("a1").unwrap().unwrap().seq, 2, "the latest complete version");
        assert_eq!(r.account("a2").unwrap().unwrap().seq, 7);
        assert!(r.account("a3").unwrap().is_none(), "an incomplete commit is not applied");
        assert_eq!(r.offset("events", 1).unwrap(), Some(25));
        assert_eq!(r.offset("events", 0).unwrap(), None, "other partitions untouched");
        assert_eq!(r.changelog_position(1).unwrap(), Some(5), "resumes after the last marker");
        assert_eq!(store.watermark_ms(), 9_000);
        assert_eq!(health.readiness(), Ok(()), "no restore problem left behind once done");

        // The dead writer's successor completes the commit; a second restore
        // reads only what came after this state's position.
        c.write(
            &records(&[record(1, keys::account("a3"), &account_value(3)), marker(1, 31, 9_500)]),
            &shutdown,
            &|_| {},
        )
        .unwrap();
        let again = c.restore(&mut store, 1, &shutdown, &health).unwrap();
        assert_eq!(again.records, 3, "the old tail, the new record and its marker");
        assert_eq!(store.reader().account("a3").unwrap().unwrap().seq, 3);
        assert_eq!(store.reader().offset("events", 1).unwrap(), Some(31));
        let nothing = c.restore(&mut store, 1, &shutdown, &health).unwrap();
        assert_eq!(nothing, Restored::default(), "up to date: nothing read");

        // A local state that has seen more of the changelog than it holds
        // (recreated, or records lost by the broker) is newer: kept as is.
        let dir = tempfile::tempdir().unwrap();
        scfg.dir = dir.path().to_path_buf();
        let mut ahead = Store::open(&scfg).unwrap();
        ahead.account("a1").unwrap().state.seq = 99;
        ahead.account("a1").unwrap().dirty = true;
        let prepared = ahead.prepare(&[("events".into(), 1, 40)]);
        ahead.write(prepared, &[(1, 100)]).unwrap();
        let kept = c.restore(&mut ahead, 1, &shutdown, &health).unwrap();
        assert_eq!(kept, Restored::default(), "nothing read");
        assert_eq!(ahead.reader().account("a1").unwrap().unwrap().seq, 99, "the newer local version stays");
        assert_eq!(ahead.reader().offset("events", 1).unwrap(), Some(40));
    }

    /// An account record of a schema newer than this engine's (its members
    /// could be somewhere this engine does not look) stops the restore,
    /// naming the schema, instead of being restored wrong.
    #[test]
    fn an_account_record_of_a_newer_schema_is_not_restored() {
        let (cluster, cfg, c) = mock_changelog(1);
        let (shutdown, health) = (Shutdown::new(), Health::new());
        health.set_live(true);
        health.set_assigned(true);
        let newer: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().unwrap();
        let (key, value) = (keys::account("a1"), account_value(1));
        let headers = OwnedHeaders::new().insert(Header { key: SCHEMA_HEADER, value: Some(b"99".as_slice()) });
        newer.send(BaseRecord::to("unit-changelog").partition(0).key(&key).payload(&value).headers(headers)).unwrap();
        newer.flush(Duration::from_secs(10)).unwrap();
        c.write(&records(&[marker(0, 10, 5_000)]), &shutdown, &|_| {}).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut scfg = cfg.state.clone();
        scfg.dir = dir.path().to_path_buf();
        let mut store = Store::open(&scfg).unwrap();
        let err = c.restore(&mut store, 0, &shutdown, &health).unwrap_err().to_string();
        assert!(err.contains("schema 99"), "{err}");
        assert!(store.reader().account("a1").unwrap().is_none(), "nothing restored");
    }

    /// A record dropped for idleness by its writer's compaction is
    /// tombstoned on the changelog, through Kafka, and an instance that
    /// restores the partition afterwards does not get it back (it did
    /// before: the compacted topic kept every key ever written).
    #[test]
    fn records_dropped_for_idleness_are_tombstoned_and_not_restored() {
        const D: i64 = 86_400_000;
        let (cluster, cfg, c) = mock_changelog(1);
        let (shutdown, health) = (Shutdown::new(), Health::new());
        let open = |dir: &std::path::Path| {
            let mut scfg = cfg.state.clone();
            scfg.dir = dir.to_path_buf();
            scfg.idle_ttl_days = 40;
            Store::open(&scfg).unwrap()
        };
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut writer = open(d1.path());
        writer.set_changelog(true);
        writer.set_owned(vec![0]);
        writer.set_partition(0);
        let commit = |s: &mut Store, next: i64| {
            let p = s.prepare(&[("events".into(), 0, next)]);
            let reached = c.write(&p.changelog, &shutdown, &|_| {}).unwrap();
            s.write(p, &reached).unwrap();
        };
        for (id, seen) in [("old", 100 * D), ("live", 130 * D)] {
            let e = writer.account(id).unwrap();
            e.state.last_seen_ms = seen;
            e.state.partition = Some(0);
            e.dirty = true;
        }
        writer.user("u").unwrap().state.updated_ms = 100 * D;
        writer.user("u").unwrap().dirty = true;
        writer.set_watermark_ms(130 * D);
        commit(&mut writer, 10);
        writer.discard_cache();
        // 50 days after "old" was last used (the TTL is 40), 20 after "live".
        writer.set_watermark_ms(150 * D);
        writer.compact_all();
        assert!(writer.reader().account("old").unwrap().is_none());
        commit(&mut writer, 11);

        let mut other = open(d2.path());
        c.restore(&mut other, 0, &shutdown, &health).unwrap();
        assert!(other.reader().account("old").unwrap().is_none(), "an idle record is not restored");
        assert!(other.reader().user("u").unwrap().is_none());
        assert!(other.reader().account("live").unwrap().is_some());

        let old: Vec<Option<usize>> = changelog_partition_0(&cluster)
            .into_iter()
            .filter(|(k, _)| *k == keys::account("old"))
            .map(|r| r.1)
            .collect();
        assert_eq!(old.len(), 2, "the record, then its tombstone: {old:?}");
        assert_eq!(old[1], None, "a tombstone has no payload");
    }

    /// A commit's message ids reach the changelog as one block, a restore
    /// makes them duplicates on the other instance, and the block's
    /// tombstone (no payload) follows once the ids have left the window.
    #[test]
    fn message_ids_move_as_blocks_and_their_tombstones_are_real_tombstones() {
        let (cluster, cfg, c) = mock_changelog(1);
        let (shutdown, health) = (Shutdown::new(), Health::new());
        let h = 3_600_000i64;
        let open = |dir: &std::path::Path| {
            let mut scfg = cfg.state.clone();
            scfg.dir = dir.to_path_buf();
            let mut s = Store::open(&scfg).unwrap();
            s.set_dedupe_window_ms(24 * h);
            s
        };
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut writer = open(d1.path());
        writer.set_changelog(true);
        writer.set_watermark_ms(100 * h);
        assert!(!writer.seen_before("m1", 100 * h).unwrap());
        assert!(!writer.seen_before("m2", 100 * h).unwrap());
        let commit = |s: &mut Store, next: i64| {
            let p = s.prepare(&[("events".into(), 0, next)]);
            let reached = c.write(&p.changelog, &shutdown, &|_| {}).unwrap();
            s.write(p, &reached).unwrap();
        };
        commit(&mut writer, 10);

        let mut other = open(d2.path());
        c.restore(&mut other, 0, &shutdown, &health).unwrap();
        other.set_watermark_ms(100 * h);
        assert!(other.seen_before("m1", 100 * h).unwrap(), "restored ids are duplicates");
        assert!(!other.seen_before("m3", 100 * h).unwrap());

        writer.set_watermark_ms(125 * h);
        commit(&mut writer, 11);
        let blocks: Vec<(Vec<u8>, Option<usize>)> = changelog_partition_0(&cluster)
            .into_iter()
            .filter(|(k, _)| k.first() == Some(&keys::DEDUPE_BLOCK))
            .collect();
        assert_eq!(blocks.len(), 2, "the block, then its tombstone: {blocks:?}");
        assert_eq!(blocks[0].0, blocks[1].0);
        assert_eq!(blocks[0].1, Some(2 * 24), "two ids of 24 bytes");
        assert_eq!(blocks[1].1, None, "a tombstone has no payload");
    }

    #[test]
    fn a_changelog_with_fewer_partitions_than_the_input_is_refused() {
        let cluster = MockCluster::new(1).unwrap();
        let mut cfg = Config::default_config();
        cfg.kafka.bootstrap_servers = cluster.bootstrap_servers();
        cfg.kafka.group_id = "few".into();
        cluster.create_topic("events", 4, 1).unwrap();
        cluster.create_topic("few-changelog", 2, 1).unwrap();
        let c = Changelog::new(&cfg.kafka, Metrics::new()).unwrap();
        let err = c.ensure_topic("events", &Shutdown::new(), &Health::new()).unwrap_err();
        assert!(matches!(err, ChangelogError::TooFewPartitions { has: 2, needs: 4, .. }), "{err}");
    }
}
