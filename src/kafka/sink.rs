//! Sink: the Kafka producer for PQA events (key = account id) and dead
//! letters (original bytes, reason and source in headers).
//!
//! The producer is idempotent. A full local queue is backpressure: we poll
//! and retry, never drop. Records are handed to the producer as soon as the
//! engine decides them ([`KafkaSink::send_all`]), each counted in its
//! batch's [`Batch`]; the batch counts as delivered only when every one of
//! its records is acknowledged ([`KafkaSink::wait`]), and only then may its
//! state be written. Records whose delivery failed are sent again until they
//! are, or until shutdown (then the batch is not committed and will be
//! processed again after the restart, with the same ids).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::engine::Output;
use crate::kafka::produce::{self, SendError, Transient};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Header names on dead-letter records.
pub mod headers {
    pub const REASON: &str = "pqa.reason";
    pub const DETAIL: &str = "pqa.detail";
    pub const SOURCE_TOPIC: &str = "pqa.source.topic";
    pub const SOURCE_PARTITION: &str = "pqa.source.partition";
    pub const SOURCE_OFFSET: &str = "pqa.source.offset";
    /// Set when the original value was null (a tombstone), not empty.
    pub const TOMBSTONE: &str = "pqa.tombstone";
    /// Size of the original when the payload carries only its first
    /// `input.max_message_bytes` bytes (a `too_large` message).
    pub const ORIGINAL_SIZE: &str = "pqa.original.size";
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(KafkaError),
    #[error("output not delivered before shutdown ({pending} records); the batch will be processed again on restart")]
    NotDelivered { pending: usize },
    #[error(
        "Kafka refuses a record for topic {topic}: {cause} (check the topic and the producer's message.max.bytes)"
    )]
    Refused { topic: String, cause: KafkaError },
}

/// A record to (re)send.
#[derive(Debug, Clone)]
struct Owned {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// The records of one batch handed to the producer: how many await their
/// delivery report, and those whose delivery failed (to send again). Each
/// record carries its batch as its delivery opaque, so the batch being
/// made durable waits for its own records only, while the next batch's go
/// out.
#[derive(Default)]
pub struct Batch {
    /// Records enqueued whose delivery report has not been served yet.
    /// (Not `in_flight_count()`: librdkafka's `outq_len` also counts events
    /// such as statistics, logs and errors waiting in the reply queue, which
    /// `flush` does not serve once no message is left, so waiting for it to
    /// reach 0 could spin for ever; and it counts other batches' records.)
    unacked: AtomicUsize,
    failed: Mutex<Vec<Owned>>,
    /// Records handed over in all.
    sent: AtomicUsize,
}

impl Batch {
    pub fn new() -> Arc<Batch> {
        Arc::new(Batch::default())
    }

    /// Whether no record was handed over for this batch.
    pub fn is_empty(&self) -> bool {
        self.sent.load(Ordering::SeqCst) == 0
    }

    fn unacked(&self) -> usize {
        self.unacked.load(Ordering::SeqCst)
    }
}

/// Serves delivery reports: counts them down in their batch and keeps
/// failed deliveries there for resending.
pub struct SinkContext {
    metrics: Metrics,
}

impl ClientContext for SinkContext {
    /// The consumer reports statistics (lag, broker states); the
    /// producer's are dropped here rather than logged whole at `info`, as
    /// rdkafka's default does, when `statistics.interval.ms` is set in
    /// `kafka.properties`.
    fn stats_raw(&self, _statistics: &[u8]) {}
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Arc<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        if let Err((err, msg)) = result {
            self.metrics.delivery_failures.inc();
            tracing::warn!(cause = %err, topic = msg.topic(), "output delivery failed; will resend");
            let headers = msg
                .headers()
                .map(|h| {
                    h.iter().map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec).unwrap_or_default())).collect()
                })
                .unwrap_or_default();
            batch.failed.lock().expect("lock").push(Owned {
                topic: msg.topic().to_string(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers,
            });
        }
        // Counted down last: once a waiter sees 0, a failure is in `failed`.
        batch.unacked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The output producer.
pub struct KafkaSink {
    producer: BaseProducer<SinkContext>,
    output_topic: String,
    shadow_topic: String,
    dlq_topic: String,
    /// Dead-letter payloads are cut to this many bytes (only `too_large`
    /// messages can exceed it).
    max_payload_bytes: usize,
}

/// Room for a dead letter's headers above the input size limit.
const HEADER_ROOM: usize = 64 * 1024;

/// Producer settings we rely on; users' properties are applied on top of
/// the defaults but cannot turn these off.
const REQUIRED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

impl KafkaSink {
    /// `max_message_bytes` is the input limit: every accepted-size input
    /// message must fit in a dead letter, so the producer's own limit is
    /// raised above it (plus room for headers) unless configured.
    pub fn new(cfg: &KafkaConfig, max_message_bytes: usize, metrics: Metrics) -> Result<KafkaSink, SinkError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.bootstrap_servers);
        cc.set("client.id", "pqa-engine-producer");
        cc.set("message.max.bytes", (max_message_bytes + HEADER_ROOM).max(1_000_000).to_string());
        for (k, v) in cfg.properties.iter().chain(cfg.producer_properties.iter()) {
            cc.set(k, v);
        }
        for (k, v) in REQUIRED {
            cc.set(*k, *v);
        }
        let producer = cc.create_with_context(SinkContext { metrics }).map_err(SinkError::Create)?;
        Ok(KafkaSink {
            producer,
            output_topic: cfg.output_topic.clone(),
            shadow_topic: cfg.shadow_topic_name(),
            dlq_topic: cfg.dlq_topic.clone(),
            max_payload_bytes: max_message_bytes,
        })
    }

    /// Sends a batch's output and waits until all of it is acknowledged.
    pub fn deliver(
        &self,
        out: &Output,
        shutdown: &Shutdown,
        not_ready: &dyn Fn(Option<&str>),
    ) -> Result<(), SinkError> {
        let batch = Batch::new();
        self.send_all(out, &batch, shutdown, not_ready)?;
        self.wait(&batch, shutdown, not_ready)
    }

    /// Hands everything in `out` to the producer, as records of `batch`,
    /// without waiting for their acknowledgements ([`KafkaSink::wait`]).
    pub fn send_all(
        &self,
        out: &Output,
        batch: &Arc<Batch>,
        shutdown: &Shutdown,
        not_ready: &dyn Fn(Option<&str>),
    ) -> Result<(), SinkError> {
        for e in &out.events {
            let h = OwnedHeaders::new()
                .insert(Header { key: "content-type", value: Some("application/cloudevents+json; charset=UTF-8") })
                .insert(Header { key: "ce_type", value: Some(e.event_type) });
            self.send(batch, &self.output_topic, Some(e.key.as_bytes()), &e.payload, h, shutdown, not_ready)?;
            if let Some(t) = e.consumed_at {
                self.producer.context().metrics.engine_latency.observe(t.elapsed().as_secs_f64());
            }
        }
        // Shadow definitions' announcements: never on the live topic.
        for e in &out.shadow_events {
            let h = OwnedHeaders::new()
                .insert(Header { key: "content-type", value: Some("application/cloudevents+json; charset=UTF-8") })
                .insert(Header { key: "ce_type", value: Some(e.event_type) })
                .insert(Header { key: "pqa_role", value: Some("shadow") });
            self.send(batch, &self.shadow_topic, Some(e.key.as_bytes()), &e.payload, h, shutdown, not_ready)?;
        }
        for d in &out.dead_letters {
            let mut h = OwnedHeaders::new()
                .insert(Header { key: headers::REASON, value: Some(d.reason.as_str()) })
                .insert(Header { key: headers::DETAIL, value: Some(&d.detail) })
                .insert(Header { key: headers::SOURCE_TOPIC, value: Some(&d.topic) })
                .insert(Header { key: headers::SOURCE_PARTITION, value: Some(&d.partition.to_string()) })
                .insert(Header { key: headers::SOURCE_OFFSET, value: Some(&d.offset.to_string()) });
            if d.tombstone {
                h = h.insert(Header { key: headers::TOMBSTONE, value: Some("true") });
            }
            let mut payload = d.payload.as_slice();
            if payload.len() > self.max_payload_bytes {
                h = h.insert(Header { key: headers::ORIGINAL_SIZE, value: Some(&payload.len().to_string()) });
                payload = &payload[..self.max_payload_bytes];
            }
            self.send(batch, &self.dlq_topic, d.key.as_deref(), payload, h, shutdown, not_ready)?;
        }
        Ok(())
    }

    /// Enqueues one record. A full queue is backpressure (poll and retry);
    /// a record Kafka can never take is an error; anything else is retried
    /// until it goes through or shutdown.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        batch: &Arc<Batch>,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        shutdown: &Shutdown,
        not_ready: &dyn Fn(Option<&str>),
    ) -> Result<(), SinkError> {
        let mut record: BaseRecord<'_, [u8], [u8], Arc<Batch>> =
            BaseRecord::with_opaque_to(topic, batch.clone()).payload(payload).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        let mut degraded = false;
        let mut on_error = |e: &KafkaError| {
            // E.g. an unknown topic while metadata refreshes.
            if !degraded {
                tracing::warn!(cause = %e, topic, "produce failed; retrying");
                not_ready(Some("cannot produce to Kafka"));
                degraded = true;
            }
        };
        // Counted before it is handed over: its report may be served at
        // once, on the thread waiting for the batch.
        batch.unacked.fetch_add(1, Ordering::SeqCst);
        let result =
            produce::send(&self.producer, record, Transient::Retry(&mut on_error), &|| shutdown.is_triggered());
        if degraded {
            not_ready(None);
        }
        if result.is_err() {
            batch.unacked.fetch_sub(1, Ordering::SeqCst);
        }
        match result {
            Ok(()) => {
                batch.sent.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(SendError::Refused(cause)) => Err(SinkError::Refused { topic: topic.to_string(), cause }),
            Err(SendError::Failed(_) | SendError::Stopped) => Err(SinkError::NotDelivered { pending: 1 }),
        }
    }

    /// Waits until every record of `batch` is acknowledged, sending those
    /// whose delivery failed again.
    pub fn wait(
        &self,
        batch: &Arc<Batch>,
        shutdown: &Shutdown,
        not_ready: &dyn Fn(Option<&str>),
    ) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(100);
        let mut degraded = false;
        loop {
            // Flush until the queue is empty; on shutdown give up after a
            // grace period rather than hang.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut waited = Instant::now();
            while batch.unacked() > 0 {
                // Serves delivery reports and whatever else waits in the
                // reply queue (errors, statistics, logs). Short polls: the
                // batch is done as soon as its last report is in (rdkafka's
                // `flush` polls 100 ms at a time, and `poll` always waits
                // out its timeout). A zero-timeout flush first wakes the
                // brokers to send without waiting out `linger.ms`.
                let _ = self.producer.flush(Duration::ZERO);
                self.producer.poll(Duration::from_millis(2));
                if batch.unacked() > 0 && waited.elapsed() >= Duration::from_millis(500) {
                    waited = Instant::now();
                    if !degraded {
                        not_ready(Some("output not acknowledged by Kafka"));
                        degraded = true;
                    }
                    if shutdown.is_triggered() && Instant::now() > deadline {
                        return Err(SinkError::NotDelivered { pending: batch.unacked() });
                    }
                }
            }
            let failed = std::mem::take(&mut *batch.failed.lock().expect("lock"));
            if failed.is_empty() {
                if degraded {
                    not_ready(None);
                }
                return Ok(());
            }
            if !degraded {
                not_ready(Some("output delivery failing"));
                degraded = true;
            }
            if shutdown.is_triggered() {
                return Err(SinkError::NotDelivered { pending: failed.len() });
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            for r in failed {
                let mut h = OwnedHeaders::new();
                for (k, v) in &r.headers {
                    h = h.insert(Header { key: k, value: Some(v.as_slice()) });
                }
                self.send(batch, &r.topic, r.key.as_deref(), &r.payload, h, shutdown, not_ready)?;
            }
        }
    }

    /// Final flush on shutdown.
    pub fn close(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
