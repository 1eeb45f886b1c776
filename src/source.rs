//! Source: the Kafka consumer loop behind `pqa-engine run`.
//!
//! One thread owns the consumer, the engine and the producer, and works in
//! batches: poll up to `max_batch_messages` (or `max_batch_wait_ms`), apply
//! them, deliver the batch's output, then commit state and offsets to
//! RocksDB in one write, then store the offsets for librdkafka's auto-commit
//! to Kafka (so lag tools see progress). Because the loop only polls between
//! batches, a rebalance callback always finds every processed record durable:
//! revoking needs no draining, and assigning seeks to the offsets RocksDB
//! holds (the truth on restart), not Kafka's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
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
use crate::engine::{Engine, EngineError, InputRecord, Output};
use crate::http::Health;
use crate::shutdown::Shutdown;
use crate::sink::{KafkaSink, SinkError};
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
}

const BROKERS_DOWN: &str = "no Kafka broker is reachable";

/// Everything a batch touches: the engine, the producers and the batch in
/// hand. It lives in the consumer's context so that the rebalance callback
/// can finish the batch before partitions leave (and restore state before
/// they arrive); the loop locks it only around processing, never across a
/// poll (the callbacks run inside `poll`).
struct Worker {
    engine: Engine,
    sink: KafkaSink,
    changelog: Option<Changelog>,
    out: Output,
    /// Next offset per partition for the batch in hand.
    batch_offsets: HashMap<(String, i32), i64>,
    batch_len: usize,
    batch_started: Option<Instant>,
    /// An error raised inside a callback, for the loop to return.
    failed: Option<RunError>,
}

/// Consumer callbacks: flush on revoke, restore and seek to RocksDB offsets
/// on assignment, metrics from librdkafka statistics.
pub struct EngineContext {
    worker: Mutex<Option<Worker>>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: Shutdown,
}

impl Worker {
    fn process(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<(), RunError> {
        self.batch_started.get_or_insert_with(Instant::now);
        self.engine.process(
            &InputRecord {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key(),
                payload: m.payload(),
                timestamp_ms: m.timestamp().to_millis(),
            },
            &mut self.out,
        )?;
        match self.batch_offsets.get_mut(&(m.topic().to_string(), m.partition())) {
            Some(o) => *o = m.offset() + 1,
            None => {
                self.batch_offsets.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
            }
        }
        self.batch_len += 1;
        Ok(())
    }

    /// Finishes the batch in hand: output delivered, then the changelog,
    /// then state + offsets in RocksDB, then offsets stored for Kafka. A
    /// crash anywhere in between repeats the batch (same ids), never loses
    /// it.
    fn flush(&mut self, consumer: &BaseConsumer<EngineContext>, ctx: &EngineContext) -> Result<(), RunError> {
        if self.batch_len == 0 {
            return Ok(());
        }
        let metrics = &ctx.metrics;
        let not_ready = |p: Option<&str>| ctx.health.set_problem(p);
        if let Some(started) = self.batch_started.take() {
            metrics.batch_messages.observe(self.batch_len as f64);
            metrics.batch_seconds.with_label_values(&["process"]).observe(started.elapsed().as_secs_f64());
        }
        self.batch_len = 0;
        let delivering = Instant::now();
        if let Err(e) = self.sink.deliver(&self.out, &ctx.shutdown, &not_ready) {
            self.discard();
            return Err(e.into());
        }
        metrics.batch_seconds.with_label_values(&["deliver"]).observe(delivering.elapsed().as_secs_f64());
        self.out.clear();
        let prepared = self.engine.prepare_commit();
        let changelog_next = match &self.changelog {
            Some(c) => {
                let writing = Instant::now();
                match c.write(&prepared.changelog, &ctx.shutdown, &not_ready) {
                    Ok(next) => {
                        metrics
                            .batch_seconds
                            .with_label_values(&["changelog"])
                            .observe(writing.elapsed().as_secs_f64());
                        next
                    }
                    Err(e) => {
                        self.discard();
                        return Err(e.into());
                    }
                }
            }
            None => Vec::new(),
        };
        self.engine.finish_commit(prepared, &changelog_next)?;
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in self.batch_offsets.drain() {
            let _ = tpl.add_partition_offset(&t, p, Offset::Offset(o));
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            // A partition revoked meanwhile cannot be stored; RocksDB has it.
            tracing::debug!(cause = %e, "offset store");
        } else {
            metrics.commits.with_label_values(&["kafka_offsets"]).inc();
        }
        drop(tpl);
        metrics.batches.inc();
        Ok(())
    }

    /// Drops the batch in hand (it could not be made durable).
    fn discard(&mut self) {
        self.engine.abort();
        self.out.clear();
        self.batch_offsets.clear();
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
                self.health.clear_problem(BROKERS_DOWN);
            } else {
                self.health.set_problem(Some(BROKERS_DOWN));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(rdkafka::error::RDKafkaErrorCode::AllBrokersDown)) {
            self.health.set_problem(Some(BROKERS_DOWN));
        }
        tracing::warn!(cause = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for EngineContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let native = consumer.client().native_client();
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let elems: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let mut guard = self.worker.lock().expect("lock");
        let Some(worker) = guard.as_mut() else {
            // Closing: the worker is gone and everything is committed.
            // SAFETY: as below.
            unsafe {
                match (err, cooperative) {
                    (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, true) => {
                        rdsys::rd_kafka_incremental_assign(native.ptr(), tpl.ptr());
                    }
                    (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, false) => {
                        rdsys::rd_kafka_assign(native.ptr(), tpl.ptr());
                    }
                    (_, true) => {
                        rdsys::rd_kafka_incremental_unassign(native.ptr(), tpl.ptr());
                    }
                    (_, false) => {
                        rdsys::rd_kafka_assign(native.ptr(), std::ptr::null());
                    }
                }
            }
            return;
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Finish the batch in hand (it may hold records of other
                // partitions), then bring the new partitions' state up to
                // date from the changelog, then start each exactly at the
                // offset stored with its state in RocksDB.
                let ready = worker.flush(consumer, self).and_then(|()| worker.restore(&elems, self));
                if let Err(e) = ready {
                    tracing::error!(cause = %e, "cannot take over the assigned partitions");
                    worker.failed.get_or_insert(e);
                }
                let reader = worker.engine.reader();
                let mut known = TopicPartitionList::new();
                for (topic, partition) in &elems {
                    match reader.offset(topic, *partition) {
                        Ok(Some(next)) => {
                            let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(next));
                            let _ = known.add_partition_offset(topic, *partition, Offset::Offset(next));
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!(cause = %e, topic, partition, "cannot read stored offset"),
                    }
                }
                tracing::info!(partitions = ?elems, "partitions assigned");
                for (topic, _) in &elems {
                    self.metrics.assigned_partitions.with_label_values(&[topic]).inc();
                }
                // SAFETY: the client and list pointers are valid for the
                // duration of the callback, as in rdkafka's default handler.
                unsafe {
                    if cooperative {
                        rdsys::rd_kafka_incremental_assign(native.ptr(), tpl.ptr());
                    } else {
                        rdsys::rd_kafka_assign(native.ptr(), tpl.ptr());
                    }
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
                if let Err(e) = worker.flush(consumer, self) {
                    tracing::error!(cause = %e, "cannot finish the batch before giving up partitions");
                    worker.failed.get_or_insert(e);
                }
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
                // SAFETY: as above.
                unsafe {
                    if cooperative {
                        rdsys::rd_kafka_incremental_unassign(native.ptr(), tpl.ptr());
                    } else {
                        rdsys::rd_kafka_assign(native.ptr(), std::ptr::null());
                    }
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                if let Err(e) = worker.flush(consumer, self) {
                    worker.failed.get_or_insert(e);
                }
                // SAFETY: as above.
                unsafe {
                    rdsys::rd_kafka_assign(native.ptr(), std::ptr::null());
                }
            }
        }
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
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (key, v) in k.properties.iter().chain(k.consumer_properties.iter()) {
        cc.set(key, v);
    }
    // Offsets are stored only after the batch is durable in RocksDB, then
    // committed by librdkafka in the background.
    cc.set("enable.auto.offset.store", "false").set("enable.auto.commit", "true");
    cc
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
    let mut store = Store::open(&cfg.state)?;
    store.set_changelog(cfg.kafka.changelog);
    health.set_reader(store.reader());
    let engine = Engine::new(def, cfg.input.clone(), store, metrics.clone());
    let sink = KafkaSink::new(&cfg.kafka, cfg.input.max_message_bytes, metrics.clone())?;
    let changelog = if cfg.kafka.changelog {
        let c = Changelog::new(&cfg.kafka, metrics.clone())?;
        health.set_live(true);
        c.ensure_topic(&cfg.kafka.input_topics[0], shutdown, &health)?;
        tracing::info!(topic = c.topic(), "state changelog on");
        Some(c)
    } else {
        None
    };
    let cc = consumer_config(cfg);
    log_config(&cc);
    let consumer: BaseConsumer<EngineContext> = cc
        .create_with_context(EngineContext {
            worker: Mutex::new(Some(Worker {
                engine,
                sink,
                changelog,
                out: Output::default(),
                batch_offsets: HashMap::new(),
                batch_len: 0,
                batch_started: None,
                failed: None,
            })),
            metrics: metrics.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
        })
        .map_err(RunError::Consumer)?;
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Subscribe { topics: cfg.kafka.input_topics.clone(), source: e })?;
    health.set_live(true);
    tracing::info!(topics = ?topics, group = %cfg.kafka.group_id, "consuming");

    let ctx = consumer.context();
    let max_batch = cfg.kafka.max_batch_messages;
    let max_wait = Duration::from_millis(cfg.kafka.max_batch_wait_ms);
    let mut last_size_report = Instant::now();
    let mut last_error_log = Instant::now() - Duration::from_secs(60);
    let mut result = Ok(());

    'run: while !shutdown.is_triggered() {
        let started = Instant::now();
        let mut n = 0usize;
        let mut timeout = Duration::from_millis(100);
        while n < max_batch {
            // Never hold the worker across `poll`: rebalance callbacks run
            // inside it and take the worker themselves.
            let Some(msg) = consumer.poll(timeout) else { break };
            match msg {
                Ok(m) => {
                    health.set_problem(None);
                    let mut guard = ctx.worker.lock().expect("lock");
                    let w = guard.as_mut().expect("worker");
                    if let Err(e) = w.process(&m) {
                        result = Err(e);
                        break 'run;
                    }
                    n += 1;
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
                    break;
                }
            }
            let spent = started.elapsed();
            if spent >= max_wait {
                break;
            }
            timeout = max_wait - spent;
        }
        let mut guard = ctx.worker.lock().expect("lock");
        let w = guard.as_mut().expect("worker");
        if let Some(e) = w.failed.take() {
            result = Err(e);
            break;
        }
        if let Err(e) = w.flush(&consumer, ctx) {
            result = Err(e);
            break;
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
