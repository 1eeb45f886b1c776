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

use crate::config::{is_secret_property, CompiledDefinition, Config};
use crate::engine::{Engine, EngineError, InputRecord, Output};
use crate::http::Health;
use crate::shutdown::Shutdown;
use crate::sink::{KafkaSink, SinkError};
use crate::state::{StateError, StateReader, Store};
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
}

const BROKERS_DOWN: &str = "no Kafka broker is reachable";

/// Partition changes seen in rebalance callbacks, for the loop to act on.
#[derive(Default)]
struct Changes {
    revoked: Vec<(String, i32)>,
}

/// Consumer callbacks: seek to RocksDB offsets on assignment, commit on
/// revoke, metrics from librdkafka statistics.
pub struct EngineContext {
    reader: StateReader,
    metrics: Metrics,
    health: Arc<Health>,
    changes: Mutex<Changes>,
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
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // The offsets in RocksDB were written with the state they
                // produced: start exactly there.
                let elems: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                let mut known = TopicPartitionList::new();
                for (topic, partition) in &elems {
                    match self.reader.offset(topic, *partition) {
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
                // before the last auto-commit); store RocksDB's so that lag
                // tools see the truth even for partitions with no new data.
                if known.count() > 0 {
                    if let Err(e) = consumer.store_offsets(&known) {
                        tracing::debug!(cause = %e, "storing assigned offsets");
                    }
                }
                drop(known);
                self.health.set_assigned(true);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Every processed record is already in RocksDB (the loop
                // only polls between batches); make Kafka's committed
                // offsets catch up before the partitions move.
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                    if !matches!(e, KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) {
                        tracing::warn!(cause = %e, "commit on revoke failed");
                    }
                }
                let elems: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                tracing::info!(partitions = ?elems, "partitions revoked");
                for (topic, _) in &elems {
                    self.metrics.assigned_partitions.with_label_values(&[topic]).dec();
                }
                self.changes.lock().expect("lock").revoked.extend(elems);
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
    let store = Store::open(&cfg.state)?;
    health.set_reader(store.reader());
    let mut engine = Engine::new(def, cfg.input.clone(), store, metrics.clone());
    let sink = KafkaSink::new(&cfg.kafka, cfg.input.max_message_bytes, metrics.clone())?;
    let cc = consumer_config(cfg);
    log_config(&cc);
    let consumer: BaseConsumer<EngineContext> = cc
        .create_with_context(EngineContext {
            reader: engine.reader(),
            metrics: metrics.clone(),
            health: health.clone(),
            changes: Mutex::new(Changes::default()),
        })
        .map_err(RunError::Consumer)?;
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Subscribe { topics: cfg.kafka.input_topics.clone(), source: e })?;
    health.set_live(true);
    tracing::info!(topics = ?topics, group = %cfg.kafka.group_id, "consuming");

    let max_batch = cfg.kafka.max_batch_messages;
    let max_wait = Duration::from_millis(cfg.kafka.max_batch_wait_ms);
    let mut out = Output::default();
    let mut batch_offsets: HashMap<(String, i32), i64> = HashMap::new();
    let mut last_size_report = Instant::now();
    let mut last_error_log = Instant::now() - Duration::from_secs(60);
    let not_ready = |p: Option<&str>| health.set_problem(p);
    let mut result = Ok(());

    while !shutdown.is_triggered() {
        let started = Instant::now();
        let mut n = 0usize;
        let mut timeout = Duration::from_millis(100);
        while n < max_batch {
            let Some(msg) = consumer.poll(timeout) else { break };
            match msg {
                Ok(m) => {
                    health.set_problem(None);
                    engine.process(
                        &InputRecord {
                            topic: m.topic(),
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key(),
                            payload: m.payload(),
                            timestamp_ms: m.timestamp().to_millis(),
                        },
                        &mut out,
                    )?;
                    batch_offsets.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
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
        let revoked = std::mem::take(&mut consumer.context().changes.lock().expect("lock").revoked);
        if !revoked.is_empty() {
            engine.release_partitions(&revoked);
        }
        if n == 0 {
            continue;
        }
        metrics.batch_messages.observe(n as f64);
        metrics.batch_seconds.with_label_values(&["process"]).observe(started.elapsed().as_secs_f64());

        // Output first, then state + offsets: a crash in between repeats
        // the batch's output with the same ids, never loses it.
        let delivering = Instant::now();
        if let Err(e) = sink.deliver(&out, shutdown, &not_ready) {
            engine.abort();
            result = Err(e.into());
            break;
        }
        metrics.batch_seconds.with_label_values(&["deliver"]).observe(delivering.elapsed().as_secs_f64());
        out.clear();
        engine.commit()?;
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in batch_offsets.drain() {
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
        if last_size_report.elapsed() > Duration::from_secs(10) {
            let (records, bytes) = engine.reader().size_estimate();
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
    sink.close(Duration::from_secs(10));
    engine.close()?;
    drop(consumer);
    result
}
