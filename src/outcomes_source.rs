//! The outcomes topic's reader behind `pqa-engine run`: every partition of
//! the topic (no consumer group: each instance reads all outcomes, see
//! [`crate::engine`]'s outcome handling), from the positions kept in
//! RocksDB with the state, so a crash neither loses nor repeats one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::changelog::QuietContext;
use crate::config::Config;
use crate::engine::{Engine, EngineError, InputRecord, Output};

/// At most this many outcome records are applied per batch.
const MAX_PER_BATCH: usize = 1000;
/// How often the topic's partition count is checked again.
const REFRESH: Duration = Duration::from_secs(30);

/// Reads the outcomes topic.
pub struct OutcomesReader {
    topic: String,
    consumer: BaseConsumer<QuietContext>,
    partitions: usize,
    checked: Instant,
    last_error_log: Option<Instant>,
}

impl OutcomesReader {
    /// The reader of `engine`'s outcomes topic (`None` when outcomes are
    /// not read), positioned where the state left off. Creates the topic
    /// if missing, with as many partitions as the input topic.
    pub fn new(cfg: &Config, engine: &Engine) -> Result<Option<OutcomesReader>, KafkaError> {
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
        let mut reader =
            OutcomesReader { topic, consumer, partitions: 0, checked: Instant::now(), last_error_log: None };
        if reader.partition_count().is_none() {
            let inputs = k.input_topics.first().and_then(|t| count(&reader.consumer, t)).unwrap_or(1);
            create(&admin_cc, &reader.topic, inputs, k.changelog_replication_factor);
        }
        reader.assign(&engine.outcome_positions());
        Ok(Some(reader))
    }

    fn partition_count(&self) -> Option<usize> {
        count(&self.consumer, &self.topic)
    }

    /// Assigns every partition of the topic, each at its position.
    fn assign(&mut self, positions: &BTreeMap<i32, i64>) {
        let Some(n) = self.partition_count() else { return };
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
        if self.checked.elapsed() > REFRESH {
            self.checked = Instant::now();
            if self.partition_count().is_some_and(|n| n != self.partitions) {
                // The topic was created or grew: read the new partitions too.
                self.assign(&engine.outcome_positions());
            }
        }
        let mut n = 0;
        while n < MAX_PER_BATCH {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    engine.process_outcome(
                        &InputRecord {
                            topic: m.topic(),
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key(),
                            payload: m.payload(),
                            timestamp_ms: m.timestamp().to_millis(),
                        },
                        out,
                    )?;
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
    let admin: AdminClient<DefaultClientContext> = match cc.create() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(cause = %e, topic, "cannot create the outcomes topic");
            return;
        }
    };
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let created = match rt.block_on(admin.create_topics([&new], &opts)) {
        Ok(results) => results.into_iter().all(|r| match r {
            Ok(_) => {
                tracing::info!(topic, partitions, "outcomes topic created");
                true
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => true,
            Err((_, code)) => {
                tracing::warn!(cause = %code, topic, "cannot create the outcomes topic; it is read once it exists");
                false
            }
        }),
        Err(e) => {
            tracing::warn!(cause = %e, topic, "cannot create the outcomes topic; it is read once it exists");
            false
        }
    };
    if !created {
        return;
    }
    // Metadata takes a moment to show a new topic everywhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe: Result<BaseConsumer<QuietContext>, _> = cc.create_with_context(QuietContext);
    if let Ok(c) = probe {
        while count(&c, topic).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
