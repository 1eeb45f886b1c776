//! Source: the Kafka consumer loop behind `pqa-engine run`.
//!
//! One thread owns the consumer and the engine and works in batches: poll up
//! to `max_batch_messages` (or `max_batch_wait_ms`, or until they changed
//! `max_batch_records` records), apply them, then hand
//! the batch to a commit thread that delivers its output, writes its
//! changelog records, and commits state and offsets to RocksDB in one write,
//! while the next batch is applied. One batch is in flight at most: before
//! handing over the next, the loop waits for it and only then stores its
//! offsets for librdkafka's auto-commit to Kafka (so lag tools see
//! progress). The rebalance callbacks (inside `poll`) wait for the batch in
//! flight and make the batch in hand durable too, so a revoke leaves
//! nothing behind and an assignment seeks to the offsets RocksDB holds (the
//! truth on restart), not Kafka's.
//!
//! The first record of a partition after an assignment, a seek or a
//! rebalance it was kept through (librdkafka fetches those again from the
//! application's position) must be at the offset the state expects: a
//! broker that skips records after a fetch inside a record batch is caught
//! by a [`GapGuard`], which seeks back until the skipped range is returned
//! (see [`crate::gaps`]).

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use crate::changelog::{Changelog, ChangelogError};
use crate::config::{is_secret_property, CompiledDefinition, Config};
use crate::definitions::{Definitions, Published};
use crate::engine::commit::{BeforeWrite, Committer};
use crate::engine::{Engine, EngineError, Output};
use crate::gaps::{self, GapGuard, TopicPartition, Verdict};
use crate::health::{Health, Source};
use crate::kafka::ahead::Ahead;
use crate::kafka::outcomes::OutcomesReader;
use crate::reload::{Applied, OffsetAt, ReloadRequest, VersionedStatus};
use crate::shutdown::Shutdown;
use crate::sink::{Batch, KafkaSink, SinkError};
use crate::state::{StateError, Store};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the Kafka consumer: {0}")]
    Consumer(KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe { topics: Vec<String>, source: KafkaError },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
    #[error("cannot take the assigned partitions: {0}")]
    Assign(KafkaError),
    #[error("worker: {0}")]
    Worker(String),
}

const BROKERS_DOWN: &str = "no Kafka broker is reachable";

/// A partition that returns nothing this long after it was positioned is
/// sought back, in case the broker skipped the end of its log.
const SILENCE: Duration = Duration::from_secs(1);

/// The first offset the broker holds for a partition (`None`: it did not say).
fn log_start<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> Option<i64> {
    match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
        Ok((low, _)) => Some(low),
        Err(e) => {
            tracing::warn!(cause = %e, topic, partition, "cannot read the partition's log start");
            None
        }
    }
}

/// A seam for tests: sees every input record the consumer returns before
/// the engine does, and every position the loop sets, so a test can stand
/// in for a broker that skips records after a seek (no such broker is
/// needed to test the recovery).
pub trait InputTap: Send {
    /// The partition was positioned at `offset` (an assignment at the
    /// offset kept in RocksDB, or a seek back).
    fn positioned(&mut self, topic: &str, partition: i32, offset: i64);
    /// Whether the record reaches the loop (`false`: as if the broker had
    /// not returned it).
    fn passes(&mut self, topic: &str, partition: i32, offset: i64) -> bool;
    /// A rebalance began (each callback: partitions assigned or revoked).
    /// librdkafka pauses the partitions it keeps while the group
    /// rebalances and, on resuming them, fetches again from the position
    /// the application reached, which is usually inside a record batch.
    fn rebalanced(&mut self) {}
}

/// Everything a batch touches: the engine, the producers and the batch in
/// hand. It lives in the consumer's context so that the rebalance callback
/// can finish the batch before partitions leave (and restore state before
/// they arrive); the loop locks it only around processing, never across a
/// poll (the callbacks run inside `poll`).
struct Worker {
    engine: Engine,
    sink: Arc<KafkaSink>,
    changelog: Option<Arc<Changelog>>,
    /// What the engine decided and is not yet handed to the producer.
    out: Output,
    /// The batch in hand's records handed to the producer (they go out as
    /// soon as they are decided; the batch's commit waits for them).
    sent: Arc<Batch>,
    batch_len: usize,
    batch_started: Option<Instant>,
    /// An error raised inside a callback, for the loop to return.
    failed: Option<RunError>,
    /// Records taken and not yet applied, being decoded on a second thread.
    ahead: Ahead,
    /// The previous batch, being made durable on its own thread while this
    /// one is applied.
    committer: Committer<Offsets, RunError>,
    /// Partitions positioned and not yet seen at their expected offset.
    gaps: GapGuard<TopicPartition>,
    tap: Option<Box<dyn InputTap>>,
}

/// (topic, partition, next offset) of a batch, stored for Kafka once the
/// batch is durable.
type Offsets = Vec<(String, i32, i64)>;

/// Consumer callbacks: flush on revoke, restore and seek to RocksDB offsets
/// on assignment, metrics from librdkafka statistics.
pub struct EngineContext {
    worker: Mutex<Option<Worker>>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: Shutdown,
}

impl Worker {
    /// Whether a record the consumer returned goes to the engine: not when
    /// it shows that the broker skipped records after a seek (the partition
    /// is sought back instead, see [`crate::gaps`]).
    fn admit(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        ctx: &EngineContext,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) -> bool {
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        if let Some(tap) = &mut self.tap {
            if !tap.passes(topic, partition, offset) {
                return false;
            }
        }
        if self.gaps.is_idle() {
            return true;
        }
        let log_start = || log_start(consumer, topic, partition);
        match self.gaps.check(&(topic, partition), offset, Instant::now(), log_start) {
            Verdict::Take(gap) => {
                if let Some(gap) = gap {
                    gaps::report(&gap, &ctx.metrics.input_gaps, &ctx.metrics.input_gap_records, &ctx.health);
                }
                true
            }
            Verdict::SeekBack(to) => {
                tracing::warn!(
                    topic,
                    partition,
                    got = offset,
                    seek = to,
                    "the broker returned a record past the expected offset after a seek or a rebalance; seeking back"
                );
                self.seek_back(consumer, topic, partition, to);
                false
            }
        }
    }

    /// The partition is positioned at `next`: its first record must be there.
    fn expect(&mut self, topic: &str, partition: i32, next: i64) {
        self.gaps.expect(TopicPartition::new(topic, partition), next, Instant::now());
        if let Some(tap) = &mut self.tap {
            tap.positioned(topic, partition, next);
        }
    }

    /// Watches the partitions this consumer keeps through a rebalance
    /// (all it holds but `moving`), once the batch in hand is durable, at
    /// the offsets RocksDB holds for them. librdkafka pauses those
    /// partitions during the rebalance and fetches them again from the
    /// application's position when it resumes them: a broker that skips
    /// the rest of a batch after a fetch inside it (tansu 0.6.0's memory
    /// storage) would skip records there with no seek of ours to show it.
    /// On any other broker the next record is at the expected offset and
    /// the watch ends at once.
    fn watch_kept(&mut self, consumer: &BaseConsumer<EngineContext>, moving: &[(String, i32)]) {
        let assignment = match consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(cause = %e, "the assignment, to watch the partitions kept");
                return;
            }
        };
        let reader = self.engine.reader();
        for e in assignment.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            if moving.iter().any(|(t, p)| t == topic && *p == partition) || self.gaps.is_watched(&(topic, partition)) {
                continue;
            }
            match reader.offset(topic, partition) {
                Ok(Some(next)) => self.gaps.expect(TopicPartition::new(topic, partition), next, Instant::now()),
                Ok(None) => {}
                Err(e) => tracing::error!(cause = %e, topic, partition, "cannot read stored offset"),
            }
        }
    }

    /// Seeks a partition back to `to` for the gap guard.
    fn seek_back(&mut self, consumer: &BaseConsumer<EngineContext>, topic: &str, partition: i32, to: i64) {
        if let Err(e) = consumer.seek(topic, partition, Offset::Offset(to), Duration::from_secs(10)) {
            tracing::warn!(cause = %e, topic, partition, "seek back failed");
        }
        if let Some(tap) = &mut self.tap {
            tap.positioned(topic, partition, to);
        }
    }

    /// Seeks back partitions that have returned nothing since they were
    /// positioned: a broker that skips the rest of a record batch returns
    /// nothing at all when the batch is the last one (see
    /// [`GapGuard::silent`]).
    fn probe_silent(&mut self, consumer: &BaseConsumer<EngineContext>) {
        if self.gaps.is_idle() {
            return;
        }
        let now = Instant::now();
        for TopicPartition { topic, partition } in self.gaps.silent(now, SILENCE) {
            let Some(to) =
                self.gaps.probe(&(topic.as_str(), partition), now, || log_start(consumer, &topic, partition))
            else {
                continue;
            };
            tracing::debug!(
                topic,
                partition,
                seek = to,
                "nothing returned since the partition was positioned; seeking back to check that the broker did \
                 not skip the end of the log"
            );
            self.seek_back(consumer, &topic, partition, to);
        }
    }

    /// Takes a consumed record: it is decoded ahead on the decoder thread
    /// and applied in order (see [`super::ahead`]); what is back from the
    /// decoder is applied now.
    /// `consumed` is when the consumer loop received it, `clock` the loop's
    /// wall clock (see [`WallClock`]).
    fn take(
        &mut self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        ctx: &EngineContext,
        consumed: Instant,
        clock: &WallClock,
    ) -> Result<(), RunError> {
        self.batch_started.get_or_insert(consumed);
        if let Some(ts) = m.timestamp().to_millis() {
            // The broker's share: from the record's timestamp to now.
            ctx.metrics.broker_latency.observe((clock.at(consumed) - ts).max(0) as f64 / 1000.0);
        }
        self.ahead.push(m, consumed);
        if self.ahead.is_full() {
            if let Some(chunk) = self.ahead.decoded(true) {
                self.apply(chunk, ctx)?;
            }
        }
        while let Some(chunk) = self.ahead.decoded(false) {
            self.apply(chunk, ctx)?;
        }
        Ok(())
    }

    /// Applies every record taken and not yet applied, in order.
    fn drain(&mut self, ctx: &EngineContext) -> Result<(), RunError> {
        while let Some(chunk) = self.ahead.decoded(true) {
            self.apply(chunk, ctx)?;
        }
        if let Some(chunk) = self.ahead.take_filling() {
            self.apply(chunk, ctx)?;
        }
        Ok(())
    }

    fn apply(&mut self, mut chunk: super::ahead::Chunk, ctx: &EngineContext) -> Result<(), RunError> {
        let r = chunk.each_record(|rec, decoded, consumed, upcoming| {
            self.engine.prefetch(upcoming);
            let before = self.out.events.len();
            self.engine.process_decoded(&rec, decoded, &mut self.out)?;
            for e in &mut self.out.events[before..] {
                e.consumed_at = Some(consumed);
            }
            self.batch_len += 1;
            self.send_output(ctx)
        });
        self.ahead.recycle(chunk);
        r
    }

    /// Hands what the engine decided to the producer now, not when the
    /// batch is cut: a PQA leaves as soon as it is decided. The batch's
    /// commit waits until all of it is acknowledged before the state says
    /// the batch is done, so a crash repeats it (same ids), never loses it.
    fn send_output(&mut self, ctx: &EngineContext) -> Result<(), RunError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let health = &ctx.health;
        let not_ready = |p: Option<&str>| health.set(Source::Producing, p);
        self.sink.send_all(&self.out, &self.sent, &ctx.shutdown, &not_ready)?;
        self.out.clear();
        Ok(())
    }

    /// Hands the batch in hand to a thread that makes it durable (output
    /// delivered, then the changelog, then state + offsets in RocksDB),
    /// after waiting for the previous batch's thread, and then stores that
    /// batch's offsets for Kafka. So one batch is applied while the one
    /// before it is delivered and written; `wait` also waits for this
    /// batch (before a rebalance, and at shutdown). A crash anywhere in
    /// between repeats the batches not written (same ids), never loses one.
    fn flush(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        ctx: &EngineContext,
        wait: bool,
    ) -> Result<(), RunError> {
        self.drain(ctx)?;
        self.settle(consumer, ctx)?;
        self.send_output(ctx)?;
        if self.batch_len == 0 && self.sent.is_empty() && !self.engine.has_changes() {
            return Ok(());
        }
        let metrics = ctx.metrics.clone();
        if let Some(started) = self.batch_started.take() {
            metrics.batch_messages.observe(self.batch_len as f64);
            metrics.batch_seconds.with_label_values(&["process"]).observe(started.elapsed().as_secs_f64());
        }
        self.batch_len = 0;
        let sent = std::mem::replace(&mut self.sent, Batch::new());
        let (sink, changelog) = (self.sink.clone(), self.changelog.clone());
        let (shutdown, health) = (ctx.shutdown.clone(), ctx.health.clone());
        let before: BeforeWrite<Offsets, RunError> = Box::new(move |prepared| {
            let not_ready = |p: Option<&str>| health.set(Source::Output, p);
            let delivering = Instant::now();
            sink.wait(&sent, &shutdown, &not_ready)?;
            metrics.batch_seconds.with_label_values(&["deliver"]).observe(delivering.elapsed().as_secs_f64());
            let changelog_next = match &changelog {
                Some(c) => {
                    let writing = Instant::now();
                    let next = c.write(&prepared.changelog, &shutdown, &not_ready)?;
                    metrics.batch_seconds.with_label_values(&["changelog"]).observe(writing.elapsed().as_secs_f64());
                    next
                }
                None => Vec::new(),
            };
            Ok((changelog_next, std::mem::take(&mut prepared.offsets)))
        });
        if let Err(e) = self.committer.hand_over(&mut self.engine, before) {
            self.discard();
            return Err(e);
        }
        if wait {
            self.settle(consumer, ctx)?;
        }
        Ok(())
    }

    /// Waits for the batch in flight, if any; once it is durable, the
    /// engine has trimmed its cache and the batch's offsets are stored for
    /// Kafka. If it failed, everything not durable is dropped (that batch
    /// and the one in hand).
    fn settle(&mut self, consumer: &BaseConsumer<EngineContext>, ctx: &EngineContext) -> Result<(), RunError> {
        if self.committer.is_idle() {
            return Ok(());
        }
        let waiting = Instant::now();
        let done = self.committer.settle(&mut self.engine);
        ctx.metrics.batch_seconds.with_label_values(&["commit_wait"]).observe(waiting.elapsed().as_secs_f64());
        let offsets = match done {
            Ok(Some(settled)) => settled.extra,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.discard();
                return Err(e);
            }
        };
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &offsets {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            // A partition revoked meanwhile cannot be stored; RocksDB has it.
            tracing::debug!(cause = %e, "offset store");
        } else {
            ctx.metrics.commits.with_label_values(&["kafka_offsets"]).inc();
        }
        drop(tpl);
        ctx.metrics.batches.inc();
        Ok(())
    }

    /// Drops the batch in hand (it could not be made durable; the engine
    /// has dropped what was not durable).
    fn discard(&mut self) {
        self.out.clear();
        // Records already handed over go out anyway: the batch is
        // processed again after the restart, with the same ids.
        self.sent = Batch::new();
        self.batch_len = 0;
    }

    /// Restores the state of newly assigned partitions from the changelog.
    fn restore(&mut self, parts: &[(String, i32)], ctx: &EngineContext) -> Result<(), RunError> {
        let Some(changelog) = &self.changelog else { return Ok(()) };
        for (_, partition) in parts {
            changelog.restore(self.engine.store_mut(), *partition, &ctx.shutdown, &ctx.health)?;
        }
        // Positions are read again from RocksDB (restored or not).
        self.engine.release_partitions(parts);
        // The message ids a restore brought, loaded before the first event
        // needs them (still inside the rebalance, before the partitions
        // are consumed).
        load_dedupe_ids(&mut self.engine)?;
        Ok(())
    }
}

impl ClientContext for EngineContext {
    fn stats(&self, stats: Statistics) {
        let mut lag = 0i64;
        for t in stats.topics.values() {
            for p in t.partitions.values() {
                if p.partition >= 0 && p.consumer_lag_stored >= 0 {
                    lag += p.consumer_lag_stored;
                }
            }
        }
        self.metrics.consumer_lag.set(lag);
        // Readiness follows the brokers: not ready while none is reachable,
        // ready again as soon as one is (even if no message arrives).
        let known: Vec<_> = stats.brokers.values().filter(|b| b.nodeid >= 0).collect();
        if !known.is_empty() {
            if known.iter().any(|b| b.state == "UP") {
                self.health.set(Source::Brokers, None);
            } else {
                self.health.set(Source::Brokers, Some(BROKERS_DOWN));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(rdkafka::error::RDKafkaErrorCode::AllBrokersDown)) {
            self.health.set(Source::Brokers, Some(BROKERS_DOWN));
        }
        tracing::warn!(cause = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for EngineContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let elems: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let mut guard = self.worker.lock().expect("lock");
        let Some(worker) = guard.as_mut() else {
            // Closing: the worker is gone and everything is committed.
            if let Err(e) = hand_over(consumer, err, cooperative, tpl) {
                tracing::warn!(cause = %e, "cannot apply the rebalance while closing");
            }
            return;
        };
        if let Some(tap) = &mut worker.tap {
            tap.rebalanced();
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Finish the batch in hand (it may hold records of other
                // partitions), then bring the new partitions' state up to
                // date from the changelog, then start each exactly at the
                // offset stored with its state in RocksDB.
                let ready = worker.flush(consumer, self, true).and_then(|()| worker.restore(&elems, self));
                if let Err(e) = ready {
                    tracing::error!(cause = %e, "cannot take over the assigned partitions");
                    worker.failed.get_or_insert(e);
                }
                worker.watch_kept(consumer, &elems);
                let reader = worker.engine.reader();
                let mut known = TopicPartitionList::new();
                let mut unknown = TopicPartitionList::new();
                for (topic, partition) in &elems {
                    match reader.offset(topic, *partition) {
                        Ok(Some(next)) => {
                            let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(next));
                            let _ = known.add_partition_offset(topic, *partition, Offset::Offset(next));
                            worker.expect(topic, *partition, next);
                        }
                        Ok(None) => {
                            unknown.add_partition(topic, *partition);
                        }
                        Err(e) => tracing::error!(cause = %e, topic, partition, "cannot read stored offset"),
                    }
                }
                // Partitions this state has never seen start at the group's
                // committed offset, if any: that is a seek as well.
                if unknown.count() > 0 {
                    match consumer.committed_offsets(unknown, Duration::from_secs(10)) {
                        Ok(committed) => {
                            for e in committed.elements() {
                                if let Offset::Offset(o) = e.offset() {
                                    worker.expect(e.topic(), e.partition(), o);
                                }
                            }
                        }
                        Err(e) => tracing::debug!(cause = %e, "committed offsets of new partitions"),
                    }
                }
                let numbers: Vec<i32> = elems.iter().map(|e| e.1).collect();
                if let Err(e) = worker.engine.assigned(&numbers) {
                    tracing::error!(cause = %e, "cannot read the sweep and budget queue of the assigned partitions");
                }
                tracing::info!(partitions = ?elems, "partitions assigned");
                for (topic, _) in &elems {
                    self.metrics.assigned_partitions.with_label_values(&[topic]).inc();
                }
                if let Err(e) = hand_over(consumer, err, cooperative, tpl) {
                    // Without the assignment nothing would be consumed:
                    // stop (and be restarted) rather than sit idle.
                    tracing::error!(cause = %e, partitions = ?elems, "cannot take the assigned partitions");
                    worker.failed.get_or_insert(RunError::Assign(e));
                }
                // Kafka's committed offsets may trail RocksDB (a crash
                // before the last auto-commit, or another instance's
                // progress restored from the changelog); store RocksDB's so
                // that lag tools see the truth even without new data.
                if known.count() > 0 {
                    if let Err(e) = consumer.store_offsets(&known) {
                        tracing::debug!(cause = %e, "storing assigned offsets");
                    }
                }
                drop(known);
                self.health.set_assigned(true);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Make the batch in hand durable (output, changelog, state,
                // offsets) before the partitions move, and let Kafka's
                // committed offsets catch up.
                if let Err(e) = worker.flush(consumer, self, true) {
                    tracing::error!(cause = %e, "cannot finish the batch before giving up partitions");
                    worker.failed.get_or_insert(e);
                }
                worker.watch_kept(consumer, &elems);
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                    if !matches!(e, KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) {
                        tracing::warn!(cause = %e, "commit on revoke failed");
                    }
                }
                tracing::info!(partitions = ?elems, "partitions revoked");
                for (topic, _) in &elems {
                    self.metrics.assigned_partitions.with_label_values(&[topic]).dec();
                }
                worker.engine.release_partitions(&elems);
                worker.engine.revoked(&elems);
                for (topic, partition) in &elems {
                    worker.gaps.forget(&(topic.as_str(), *partition));
                }
                if let Err(e) = hand_over(consumer, err, cooperative, tpl) {
                    tracing::warn!(cause = %e, partitions = ?elems, "cannot give up the revoked partitions");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                if let Err(e) = worker.flush(consumer, self, true) {
                    worker.failed.get_or_insert(e);
                }
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(cause = %e, "cannot clear the assignment after a rebalance error");
                }
            }
        }
    }
}

/// Hands an assignment change to librdkafka from the rebalance callback:
/// (incremental) assign of what arrived, (incremental) unassign of what
/// left, every result checked (rdkafka's safe calls free the error objects
/// librdkafka returns).
fn hand_over(
    consumer: &BaseConsumer<EngineContext>,
    err: RDKafkaRespErr,
    cooperative: bool,
    tpl: &TopicPartitionList,
) -> Result<(), KafkaError> {
    let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
    match (assign, cooperative) {
        (true, true) => consumer.incremental_assign(tpl),
        (true, false) => consumer.assign(tpl),
        (false, true) => consumer.incremental_unassign(tpl),
        (false, false) => consumer.unassign(),
    }
}

/// Builds the consumer configuration: defaults, the user's properties, and
/// the settings the engine's guarantees depend on.
pub fn consumer_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &k.bootstrap_servers)
        .set("group.id", &k.group_id)
        .set("client.id", "pqa-engine")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A broker may hold a fetch for this long even with data waiting
        // (tansu does); librdkafka's 500 ms default then dominates the
        // latency of every event.
        .set("fetch.wait.max.ms", "50")
        // Once a partition's prefetch queue is past its thresholds,
        // librdkafka waits this long before fetching it again (1 s by
        // default). The engine drains a full queue in less than that
        // while catching up, and then sat idle until the wait ended: about
        // 90 ms every second, 12-18 % of `run`'s rate over a backlog
        // (BENCHMARKS.md). A fetch postponed 20 ms at a time costs nothing
        // measurable when the queue stays full.
        .set("fetch.queue.backoff.ms", "20");
    for (key, v) in k.properties.iter().chain(k.consumer_properties.iter()) {
        cc.set(key, v);
    }
    // Offsets are stored only after the batch is durable in RocksDB, then
    // committed by librdkafka in the background.
    cc.set("enable.auto.offset.store", "false").set("enable.auto.commit", "true");
    cc
}

/// Swaps the engine's definitions (between batches) and says from which
/// input offsets the new ones judge every event.
fn swap_definitions(engine: &mut Engine, defs: Arc<Definitions>) -> Result<Applied, String> {
    let old = engine.definitions().live.version.clone();
    engine.set_definitions(defs).map_err(|e| e.to_string())?;
    let from_offsets: Vec<OffsetAt> = engine
        .positions()
        .into_iter()
        .map(|(topic, partition, offset)| OffsetAt { topic, partition, offset })
        .collect();
    let shown: Vec<String> =
        from_offsets.iter().map(|o| format!("{}[{}]@{}", o.topic, o.partition, o.offset)).collect();
    let defs = engine.definitions().clone();
    tracing::info!(
        from = %old,
        version = %defs.live.version,
        shadows = ?defs.shadows.iter().map(|s| &s.version).collect::<Vec<_>>(),
        offsets = %shown.join(" "),
        "definition reloaded: the new version judges every event from these input offsets on"
    );
    log_definitions(engine);
    let mut metrics = Vec::new();
    for d in defs.all() {
        for status in engine.manifest().status(d, None) {
            metrics.push(VersionedStatus { version: d.version.clone(), status });
        }
    }
    Ok(Applied {
        live: defs.live.version.clone(),
        shadows: defs.shadows.iter().map(|s| s.version.clone()).collect(),
        from_offsets,
        metrics,
    })
}

/// Logs what each running definition's metrics read from the state: what
/// continues, what is warming up and until when.
fn log_definitions(engine: &Engine) {
    let defs = engine.definitions();
    for (i, d) in defs.all().enumerate() {
        tracing::info!(version = %d.version, fingerprint = %d.fingerprint, role = Definitions::role(i), "definition running");
        for st in engine.manifest().status(d, None) {
            if st.warming || st.new {
                tracing::warn!(version = %d.version, metric = %st.name, "{}", st.describe());
            }
        }
    }
}

/// Shows the engine's definitions and numbers to the HTTP server.
fn publish(p: &Published, engine: &Engine, definitions_changed: bool) {
    if definitions_changed {
        *p.definitions.write().expect("lock") = Some(engine.definitions().clone());
        *p.manifest.write().expect("lock") = Some(engine.manifest().clone());
    }
    *p.stats.lock().expect("lock") = engine.stats().clone();
    *p.rules.lock().expect("lock") = engine.rule_reports();
    p.attribution_window_ms.store(engine.attribution_window_ms(), std::sync::atomic::Ordering::Relaxed);
}

/// Logs the effective Kafka settings without secrets.
fn log_config(cc: &ClientConfig) {
    let shown: Vec<String> = cc
        .config_map()
        .iter()
        .map(|(k, v)| if is_secret_property(k) { format!("{k}=***") } else { format!("{k}={v}") })
        .collect();
    tracing::info!(settings = %shown.join(" "), "kafka consumer settings");
}

/// Runs the consumer loop until `shutdown`. Returns after a final commit.
pub fn run(
    cfg: &Config,
    def: Arc<CompiledDefinition>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: &Shutdown,
) -> Result<(), RunError> {
    run_with(cfg, def, metrics, health, shutdown, None)
}

/// [`run`], with a tap on the input (tests).
pub fn run_with(
    cfg: &Config,
    def: Arc<CompiledDefinition>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: &Shutdown,
    tap: Option<Box<dyn InputTap>>,
) -> Result<(), RunError> {
    let hooks = RunHooks { tap, ..Default::default() };
    run_definitions(cfg, Arc::new(Definitions::single(def)), metrics, health, shutdown, hooks)
}

/// What `run` can be given besides the configuration.
#[derive(Default)]
pub struct RunHooks {
    /// A tap on the input (tests).
    pub tap: Option<Box<dyn InputTap>>,
    /// New definitions to swap in between batches (see [`crate::reload`]).
    pub reloads: Option<mpsc::Receiver<ReloadRequest>>,
    /// Where the running definitions and their numbers are shown (HTTP).
    pub published: Option<Arc<Published>>,
    /// Where the workers of one process wait for each other before they
    /// join the group (see [`run_workers`]).
    pub start_line: Option<Arc<StartLine>>,
}

/// Workers wait here until all have arrived (or the process stops), then
/// go on together.
pub struct StartLine {
    waiting: Mutex<usize>,
    all_here: std::sync::Condvar,
}

impl StartLine {
    fn new(n: usize) -> StartLine {
        StartLine { waiting: Mutex::new(n), all_here: std::sync::Condvar::new() }
    }

    fn wait(&self, shutdown: &Shutdown) {
        let mut left = self.waiting.lock().expect("lock");
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.all_here.notify_all();
        }
        // (A worker that failed before arriving stops the process; the
        // others see it within 100 ms.)
        while *left > 0 && !shutdown.is_triggered() {
            left = self.all_here.wait_timeout(left, Duration::from_millis(100)).expect("lock").0;
        }
    }
}

/// [`run`] with the live definition and its shadows, and hooks: one
/// worker, or `kafka.workers` of them (see [`run_workers`]).
pub fn run_definitions(
    cfg: &Config,
    defs: Arc<Definitions>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: &Shutdown,
    hooks: RunHooks,
) -> Result<(), RunError> {
    match cfg.kafka.workers {
        0 | 1 => run_worker(cfg, defs, metrics, health, shutdown, hooks, 1),
        n => run_workers(cfg, n, defs, metrics, health, shutdown, hooks),
    }
}

/// `n` workers in this process (`kafka.workers`), the way Kafka Streams
/// runs stream threads: each is a consumer of the group with a thread,
/// state directory, cache, producer and changelog of its own (see
/// [`Config::for_worker`]), so each worker owns the accounts of the
/// partitions the group gives it and no state is shared between threads.
/// What holds for instances of a group holds for workers: a partition that
/// moves from one to another (a rebalance, a restart) takes its state
/// through the changelog, which is why workers need it; a user's record
/// is kept by each worker that sees the user's events, as by each instance
/// (input keyed by account keeps an account's events, and its members', on
/// one partition). Each worker counts `1/n` of the budget.
///
/// This thread hands reloads to every worker and answers once all have
/// taken them, shows the workers' published numbers as the process's (see
/// [`Published::merge_workers`]), and returns when every worker has
/// stopped: one failing stops the others (the process exits with its
/// error and is restarted, as with one worker).
fn run_workers(
    cfg: &Config,
    n: usize,
    defs: Arc<Definitions>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: &Shutdown,
    hooks: RunHooks,
) -> Result<(), RunError> {
    let RunHooks { mut tap, reloads, published, .. } = hooks;
    tracing::info!(workers = n, "starting workers");
    let start_line = Arc::new(StartLine::new(n));
    let mut threads = Vec::with_capacity(n);
    let mut to_workers = Vec::with_capacity(n);
    let mut shown = Vec::with_capacity(n);
    for i in 0..n {
        let cfg = cfg.for_worker(i, n);
        let (tx, rx) = mpsc::channel();
        let p = Published::new();
        let hooks = RunHooks {
            tap: if i == 0 { tap.take() } else { None },
            reloads: Some(rx),
            published: Some(p.clone()),
            start_line: Some(start_line.clone()),
        };
        let (defs, metrics, health, stop) = (defs.clone(), metrics.worker(), health.worker(), shutdown.clone());
        let t = std::thread::Builder::new()
            .name(format!("pqa-worker-{i}"))
            .spawn(move || {
                let _span = tracing::info_span!("worker", i).entered();
                let r = run_worker(&cfg, defs, metrics, health, &stop, hooks, n);
                if let Err(e) = &r {
                    tracing::error!(cause = %e, "worker failed");
                }
                r
            })
            .map_err(|e| RunError::Worker(e.to_string()))?;
        threads.push(t);
        to_workers.push(tx);
        shown.push(p);
    }
    health.set_live(true);
    let mut rule_labels = Vec::new();
    while !threads.iter().all(|t| t.is_finished()) {
        if threads.iter().any(|t| t.is_finished()) && !shutdown.is_triggered() {
            // A worker that stopped on its own (an error, a panic): its
            // partitions would move to the others, and the process would
            // look healthy with a worker less. Stop, to be restarted.
            tracing::error!("a worker stopped: stopping the others");
            shutdown.trigger();
        }
        if let Some(rx) = &reloads {
            while let Ok(req) = rx.try_recv() {
                let answer = reload_workers(&to_workers, req.defs);
                let _ = req.reply.send(answer);
            }
        }
        if let Some(p) = &published {
            p.merge_workers(&shown);
            let reports = p.rules.lock().expect("lock").clone();
            crate::engine::publish_rule_gauges(&metrics, &reports, &mut rule_labels);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    health.set_live(false);
    let mut result = Ok(());
    for t in threads {
        let r = t.join().unwrap_or_else(|_| Err(RunError::Worker("a worker panicked".into())));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Hands new definitions to every worker and waits until each has taken
/// them (between two of its batches): the answer lists every worker's
/// offsets from which the new version judges events. Workers refuse alike
/// (their states were made by the same definitions); one that stopped
/// makes the answer an error.
fn reload_workers(workers: &[mpsc::Sender<ReloadRequest>], defs: Arc<Definitions>) -> Result<Applied, String> {
    let mut answers = Vec::with_capacity(workers.len());
    for tx in workers {
        let (reply, answer) = mpsc::sync_channel(1);
        tx.send(ReloadRequest { defs: defs.clone(), reply }).map_err(|_| "a worker has stopped".to_string())?;
        answers.push(answer);
    }
    let mut merged: Option<Applied> = None;
    let mut refused = None;
    // (Within the reloader's 60 s, for all workers together.)
    let deadline = Instant::now() + Duration::from_secs(55);
    for (i, a) in answers.into_iter().enumerate() {
        match a.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(applied)) => match &mut merged {
                Some(m) => m.from_offsets.extend(applied.from_offsets),
                None => merged = Some(applied),
            },
            Ok(Err(why)) => {
                refused.get_or_insert(format!("worker {i}: {why}"));
            }
            Err(_) => {
                refused.get_or_insert(format!("worker {i} did not take the new definitions"));
            }
        }
    }
    match (refused, merged) {
        (None, Some(m)) => Ok(m),
        (Some(why), _) => Err(why),
        (None, None) => Err("no worker is running".into()),
    }
}

/// One worker: the consumer loop over the partitions the group gives it;
/// `workers`: how many run in this process (the budget's share).
fn run_worker(
    cfg: &Config,
    defs: Arc<Definitions>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: &Shutdown,
    hooks: RunHooks,
    workers: usize,
) -> Result<(), RunError> {
    let RunHooks { tap, reloads, published, start_line } = hooks;
    let mut store = Store::open(&cfg.state)?;
    store.set_changelog(cfg.kafka.changelog);
    health.set_reader(store.reader());
    let mut engine = Engine::with_definitions(defs, cfg.input.clone(), store, metrics.clone())?;
    // Sales' hours are real hours (unless the definition says otherwise).
    if engine.definition().budget.clock != Some(crate::budget::BudgetClock::Event) {
        engine.set_budget_clock(crate::budget::BudgetClock::Wall);
    }
    engine.set_budget_workers(u32::try_from(workers).unwrap_or(u32::MAX));
    let outcomes_topic = Some(cfg.kafka.outcomes_topic.trim().to_string()).filter(|t| !t.is_empty());
    engine.set_outcomes(
        outcomes_topic,
        cfg.outcomes.attribution_window_ms(),
        u64::try_from(cfg.input.max_future_seconds).unwrap_or(0),
    )?;
    // Before consuming (not ready yet): the first event would wait for it.
    load_dedupe_ids(&mut engine)?;
    log_definitions(&engine);
    if let Some(p) = &published {
        publish(p, &engine, true);
    }
    let sink = Arc::new(KafkaSink::new(&cfg.kafka, cfg.input.max_message_bytes, metrics.clone())?);
    let changelog = if cfg.kafka.changelog {
        let c = Changelog::new(&cfg.kafka, metrics.clone())?;
        health.set_live(true);
        c.ensure_topic(&cfg.kafka.input_topics[0], shutdown, &health)?;
        tracing::info!(topic = c.topic(), "state changelog on");
        Some(Arc::new(c))
    } else {
        None
    };
    let mut outcomes = OutcomesReader::new(cfg, &engine, shutdown).map_err(RunError::Consumer)?;
    let ahead = Ahead::new(engine.decoder());
    let cc = consumer_config(cfg);
    log_config(&cc);
    let consumer: BaseConsumer<EngineContext> = cc
        .create_with_context(EngineContext {
            worker: Mutex::new(Some(Worker {
                engine,
                sink,
                changelog,
                out: Output::default(),
                sent: Batch::new(),
                batch_len: 0,
                batch_started: None,
                failed: None,
                ahead,
                committer: Committer::new(),
                gaps: GapGuard::new(),
                tap,
            })),
            metrics: metrics.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
        })
        .map_err(RunError::Consumer)?;
    if let Some(line) = &start_line {
        // The workers join the group together: one joining seconds after
        // the others would take partitions they had started on, which
        // then restore from the changelog.
        line.wait(shutdown);
    }
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Subscribe { topics: cfg.kafka.input_topics.clone(), source: e })?;
    health.set_live(true);
    tracing::info!(topics = ?topics, group = %cfg.kafka.group_id, "consuming");

    let ctx = consumer.context();
    let max_batch = cfg.kafka.max_batch_messages;
    let max_records = cfg.kafka.max_batch_records;
    let max_wait = Duration::from_millis(cfg.kafka.max_batch_wait_ms);
    let mut last_size_report = Instant::now();
    let mut last_publish = Instant::now();
    let mut last_error_log = Instant::now() - Duration::from_secs(60);
    let mut result = Ok(());

    'run: while !shutdown.is_triggered() {
        let started = Instant::now();
        let clock = WallClock::at_start(started);
        let mut n = 0usize;
        let mut timeout = Duration::from_millis(100);
        // Which limit closes this batch (`pqa_batches_closed_total`).
        let mut closed_by = "messages";
        while n < max_batch {
            // Never hold the worker across `poll`: rebalance callbacks run
            // inside it and take the worker themselves.
            let mut msg = consumer.poll(Duration::ZERO);
            if msg.is_none() {
                // Nothing waiting: apply what is in hand before waiting for
                // the broker, so that no record waits for a chunk to fill.
                let mut guard = ctx.worker.lock().expect("lock");
                if let Err(e) = guard.as_mut().expect("worker").drain(ctx) {
                    result = Err(e);
                    break 'run;
                }
                drop(guard);
                msg = consumer.poll(timeout);
            }
            let Some(msg) = msg else {
                closed_by = "wait";
                break;
            };
            // (One clock read a message: when it was received, how long the
            // batch has been open, and the broker's share of its latency.)
            let now = Instant::now();
            match msg {
                Ok(m) => {
                    // A broker answered.
                    health.set(Source::Brokers, None);
                    let mut guard = ctx.worker.lock().expect("lock");
                    let w = guard.as_mut().expect("worker");
                    if w.admit(&consumer, ctx, &m) {
                        if let Err(e) = w.take(&m, ctx, now, &clock) {
                            result = Err(e);
                            break 'run;
                        }
                        n += 1;
                        if w.engine.touched_records() >= max_records {
                            // Enough records to write whole at the commit
                            // (and to keep cached until then).
                            closed_by = "records";
                            break;
                        }
                    }
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(e) => {
                    // Transient (broker down, leader change): librdkafka
                    // retries by itself; don't spin while it does.
                    if last_error_log.elapsed() > Duration::from_secs(5) {
                        tracing::warn!(cause = %e, "consumer error");
                        last_error_log = Instant::now();
                    }
                    shutdown.sleep(Duration::from_millis(100));
                    closed_by = "error";
                    break;
                }
            }
            let spent = now.duration_since(started);
            if spent >= max_wait {
                closed_by = "wait";
                break;
            }
            timeout = max_wait - spent;
        }
        if n > 0 {
            ctx.metrics.batches_closed.with_label_values(&[closed_by]).inc();
        }
        let mut guard = ctx.worker.lock().expect("lock");
        let w = guard.as_mut().expect("worker");
        // Every record taken is applied before anything else happens.
        if let Err(e) = w.drain(ctx) {
            result = Err(e);
            break;
        }
        w.probe_silent(&consumer);
        // What sales reported back since the last batch.
        if let Some(r) = &mut outcomes {
            if let Err(e) = r.poll(&mut w.engine, &mut w.out) {
                result = Err(e.into());
                break;
            }
        }
        // Announcements waiting for budget that the clock now lets out.
        if let Err(e) = w.engine.tick(&mut w.out) {
            result = Err(e.into());
            break;
        }
        if let Some(e) = w.failed.take() {
            result = Err(e);
            break;
        }
        if let Err(e) = w.flush(&consumer, ctx, false) {
            result = Err(e);
            break;
        }
        if let Some(rx) = &reloads {
            // Between two batches: the batch in hand was just handed over,
            // so every event from here on is judged by what comes in.
            while let Ok(req) = rx.try_recv() {
                let answer = swap_definitions(&mut w.engine, req.defs);
                if let (Ok(_), Some(p)) = (&answer, &published) {
                    // Where the new version took over first, then the
                    // version: `GET /definitions` reads the definitions
                    // before the offsets, so whoever sees the new version
                    // sees its offsets too (not the previous reload's).
                    *p.live_since.lock().expect("lock") = w.engine.positions();
                    publish(p, &w.engine, true);
                }
                let _ = req.reply.send(answer);
            }
        }
        w.engine.publish_rule_metrics();
        if let Some(p) = &published {
            if last_publish.elapsed() > Duration::from_millis(500) {
                publish(p, &w.engine, false);
                last_publish = Instant::now();
            }
        }
        if last_size_report.elapsed() > Duration::from_secs(10) {
            let (records, bytes) = w.engine.reader().size_estimate();
            metrics.state_records.set(records as i64);
            metrics.state_bytes.set(bytes as i64);
            last_size_report = Instant::now();
        }
    }

    tracing::info!("shutting down: committing offsets");
    health.set_live(false);
    {
        // The last batch handed over: wait until it is durable (or failed).
        let mut guard = ctx.worker.lock().expect("lock");
        let w = guard.as_mut().expect("worker");
        if let Err(e) = w.settle(&consumer, ctx) {
            tracing::error!(cause = %e, "the last batch could not be made durable");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(cause = %e, "final offset commit");
    }
    let mut worker = ctx.worker.lock().expect("lock").take().expect("worker");
    worker.sink.close(Duration::from_secs(10));
    if let Some(c) = &worker.changelog {
        c.close(Duration::from_secs(10));
    }
    worker.engine.close()?;
    drop(consumer);
    result
}

/// Loads the message ids of the dedupe window (see
/// [`crate::state::Store::load_dedupe_ids`]), saying how many and how long
/// it took when there were any.
fn load_dedupe_ids(engine: &mut Engine) -> Result<(), RunError> {
    let started = Instant::now();
    let (in_memory, on_disk) = engine.store_mut().load_dedupe_ids()?;
    if in_memory + on_disk > 0 {
        tracing::info!(
            in_memory,
            on_disk,
            seconds = started.elapsed().as_secs_f64(),
            "message ids of the dedupe window loaded"
        );
    }
    Ok(())
}

/// The wall clock of a batch of the consumer loop: read once when the batch
/// opens, and carried forward by the monotonic clock the loop reads for
/// each message anyway (a batch is open for `max_batch_wait_ms` at most, so
/// the two cannot drift apart measurably). Three clock reads a message
/// were about 3 % of the engine thread on the long tail.
struct WallClock {
    start: Instant,
    start_ms: i64,
}

impl WallClock {
    fn at_start(start: Instant) -> WallClock {
        WallClock { start, start_ms: chrono::Utc::now().timestamp_millis() }
    }

    /// Milliseconds since the Unix epoch at `t` (not before the start).
    fn at(&self, t: Instant) -> i64 {
        self.start_ms + t.saturating_duration_since(self.start).as_millis() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker answering reloads as `answer` says, on its own thread.
    fn fake_worker(answer: impl Fn(usize) -> Result<Applied, String> + Send + 'static) -> mpsc::Sender<ReloadRequest> {
        let (tx, rx) = mpsc::channel::<ReloadRequest>();
        std::thread::spawn(move || {
            for (n, req) in rx.into_iter().enumerate() {
                let _ = req.reply.send(answer(n));
            }
        });
        tx
    }

    fn applied(partition: i32) -> Applied {
        Applied {
            live: "v2".into(),
            shadows: vec![],
            from_offsets: vec![OffsetAt { topic: "events".into(), partition, offset: 10 }],
            metrics: vec![],
        }
    }

    /// A reload answers once every worker has taken it, with every
    /// worker's offsets; one worker refusing, or stopped, makes it an
    /// error that names the worker.
    #[test]
    fn a_reload_reaches_every_worker() {
        let defs = Arc::new(Definitions::single(Arc::new(Config::default_config().validate().unwrap())));
        let workers = vec![fake_worker(|_| Ok(applied(0))), fake_worker(|_| Ok(applied(1)))];
        let a = reload_workers(&workers, defs.clone()).unwrap();
        assert_eq!(a.live, "v2");
        assert_eq!(a.from_offsets.iter().map(|o| o.partition).collect::<Vec<_>>(), vec![0, 1]);
        let workers = vec![fake_worker(|_| Ok(applied(0))), fake_worker(|_| Err("the state cannot serve it".into()))];
        assert_eq!(reload_workers(&workers, defs.clone()).unwrap_err(), "worker 1: the state cannot serve it");
        let (gone, _) = mpsc::channel();
        let workers = vec![fake_worker(|_| Ok(applied(0))), gone];
        assert_eq!(reload_workers(&workers, defs).unwrap_err(), "a worker has stopped");
    }

    /// The engine's defaults give way to the user's properties; the
    /// settings its guarantees depend on do not.
    #[test]
    fn the_users_consumer_properties_override_the_defaults_but_not_the_guarantees() {
        let mut cfg = Config::default_config();
        let cc = consumer_config(&cfg);
        assert_eq!(cc.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(cc.get("fetch.wait.max.ms"), Some("50"));
        for (k, v) in [("fetch.queue.backoff.ms", "1000"), ("enable.auto.offset.store", "true")] {
            cfg.kafka.consumer_properties.insert(k.into(), v.into());
        }
        cfg.kafka.properties.insert("fetch.wait.max.ms".into(), "5".into());
        let cc = consumer_config(&cfg);
        assert_eq!(cc.get("fetch.queue.backoff.ms"), Some("1000"));
        assert_eq!(cc.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(cc.get("enable.auto.offset.store"), Some("false"), "offsets are stored only once durable");
    }
}
