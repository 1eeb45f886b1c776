//! The outcomes topic's reader behind `pqa-engine run`: every partition of
//! the topic (no consumer group: each instance reads all outcomes, see
//! [`crate::engine`]'s outcome handling), from the positions kept in
//! RocksDB with the state, so a crash neither loses nor repeats one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::changelog::QuietContext;
use crate::config::Config;
use crate::engine::{Engine, EngineError, Output};
use crate::shutdown::Shutdown;

/// At most this many outcome records are applied per batch.
const MAX_PER_BATCH: usize = 1000;
/// How often the topic's partition count is checked again.
const REFRESH: Duration = Duration::from_secs(30);

/// Reads the outcomes topic.
pub struct OutcomesReader {
    topic: String,
    consumer: BaseConsumer<QuietContext>,
    /// Partitions assigned.
    partitions: usize,
    /// Partitions the topic has, as a background thread last saw (0: it
    /// does not exist yet): the consumer loop never waits for metadata.
    seen: Arc<AtomicUsize>,
    last_error_log: Option<Instant>,
}

impl OutcomesReader {
    /// The reader of `engine`'s outcomes topic (`None` when outcomes are
    /// not read), positioned where the state left off. Creates the topic
    /// if missing, with as many partitions as the input topic.
    pub fn new(cfg: &Config, engine: &Engine, shutdown: &Shutdown) -> Result<Option<OutcomesReader>, KafkaError> {
        let Some(topic) = engine.outcomes_topic().map(str::to_string) else { return Ok(None) };
        let k = &cfg.kafka;
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &k.bootstrap_servers);
        for (key, v) in k.properties.iter().chain(k.consumer_properties.iter()) {
            cc.set(key, v);
        }
        let admin_cc = cc.clone();
        cc.set("client.id", "pqa-engine-outcomes")
            .set("group.id", format!("{}-outcomes", k.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "100")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer<QuietContext> = cc.create_with_context(QuietContext)?;
        let watcher: BaseConsumer<QuietContext> = cc.create_with_context(QuietContext)?;
        let seen = Arc::new(AtomicUsize::new(0));
        let (t, s, shutdown) = (topic.clone(), seen.clone(), shutdown.clone());
        let (input, replication) = (k.input_topics.first().cloned(), k.changelog_replication_factor);
        std::thread::Builder::new()
            .name("pqa-outcomes-topic".into())
            .spawn(move || watch(&watcher, &admin_cc, &t, input.as_deref(), replication, &s, &shutdown))
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(Some(OutcomesReader { topic, consumer, partitions: 0, seen, last_error_log: None }))
    }

    /// Assigns every partition of the topic, each at its position.
    fn assign(&mut self, n: usize, positions: &BTreeMap<i32, i64>) {
        let mut tpl = TopicPartitionList::new();
        for p in 0..n as i32 {
            let at = positions.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            let _ = tpl.add_partition_offset(&self.topic, p, at);
        }
        match self.consumer.assign(&tpl) {
            Ok(()) => {
                if n != self.partitions {
                    tracing::info!(topic = %self.topic, partitions = n, "reading outcomes");
                }
                self.partitions = n;
            }
            Err(e) => tracing::warn!(cause = %e, topic = %self.topic, "cannot read the outcomes topic"),
        }
    }

    /// Applies the outcome records waiting (at most [`MAX_PER_BATCH`]).
    /// Returns how many were read.
    pub fn poll(&mut self, engine: &mut Engine, out: &mut Output) -> Result<usize, EngineError> {
        let n = self.seen.load(Ordering::Relaxed);
        if n != self.partitions && n > 0 {
            // The topic appeared or grew: read the new partitions too.
            self.assign(n, &engine.outcome_positions());
        }
        if self.partitions == 0 {
            return Ok(0);
        }
        let mut n = 0;
        while n < MAX_PER_BATCH {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    engine.process_outcome(&super::input_record(&m), out)?;
                    n += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    if self.last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(cause = %e, topic = %self.topic, "outcomes topic");
                        self.last_error_log = Some(Instant::now());
                    }
                    break;
                }
            }
        }
        Ok(n)
    }
}

/// Creates the topic if missing (with as many partitions as the input
/// topic), then keeps `seen` up to date with its partition count.
fn watch(
    consumer: &BaseConsumer<QuietContext>,
    admin: &ClientConfig,
    topic: &str,
    input: Option<&str>,
    replication: i32,
    seen: &AtomicUsize,
    shutdown: &Shutdown,
) {
    let mut tried = false;
    while !shutdown.is_triggered() {
        match count(consumer, topic) {
            Some(n) => seen.store(n, Ordering::Relaxed),
            None if !tried => {
                tried = true;
                let partitions = input.and_then(|t| count(consumer, t)).unwrap_or(1);
                create(admin, topic, partitions, replication);
                continue;
            }
            None => {}
        }
        let wait = if seen.load(Ordering::Relaxed) == 0 { Duration::from_secs(2) } else { REFRESH };
        shutdown.sleep(wait);
    }
}

fn count(consumer: &BaseConsumer<QuietContext>, topic: &str) -> Option<usize> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some(t.partitions().len())
}

/// Creates the outcomes topic (a failure is logged: the reader picks the
/// topic up when someone else creates it).
fn create(cc: &ClientConfig, topic: &str, partitions: usize, replication: i32) {
    let failed = |cause: &dyn std::fmt::Display| {
        tracing::warn!(%cause, topic, "cannot create the outcomes topic; it is read once it exists");
    };
    let admin: AdminClient<DefaultClientContext> = match cc.create() {
        Ok(a) => a,
        Err(e) => return failed(&e),
    };
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(admin.create_topics([&new], &opts)) {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(_) => tracing::info!(topic, partitions, "outcomes topic created"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => failed(&code),
                }
            }
        }
        Err(e) => failed(&e),
    }
}
