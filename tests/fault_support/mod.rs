//! Helpers for the fault tests (broker faults, rebalance churn): a mock
//! Kafka whose raw handle we keep (for per-broker error stacks), an
//! idempotent feeder that partitions by account, the clean `replay`
//! reference, and the comparison of the output and dead-letter topics with
//! it. Used together with `tests/common`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

use crate::common::{Record, BIN};

pub const GROUP: &str = "pqa-it";
pub const OUT_PARTITIONS: i32 = 3;
pub const DLQ_PARTITIONS: i32 = 3;

/// librdkafka's mock cluster, owned by a client created with
/// `test.mock.num.brokers` so that we also hold its raw handle: the Rust
/// wrapper has no per-broker error stacks, and no way to see whether
/// injected errors were served.
pub struct Mock {
    owner: BaseProducer,
    raw: *mut rdsys::rd_kafka_mock_cluster_t,
    pub bootstrap: String,
    pub brokers: i32,
}

impl Mock {
    /// `brokers` brokers; topics `events` (`partitions`), `out`, `dlq` and
    /// the group's changelog, replicated on every broker.
    pub fn new(brokers: i32, partitions: i32) -> Mock {
        let owner: BaseProducer =
            ClientConfig::new().set("test.mock.num.brokers", brokers.to_string()).create().expect("mock cluster");
        // SAFETY: `owner` owns the mock cluster and outlives every use of
        // `raw` (both live in this struct; `raw` is never handed out).
        let raw = unsafe { rdsys::rd_kafka_handle_mock_cluster(owner.client().native_ptr()) };
        assert!(!raw.is_null(), "no mock cluster");
        let mut m = Mock { owner, raw, bootstrap: String::new(), brokers };
        let repl = brokers.min(3);
        let c = m.cluster();
        c.create_topic("events", partitions, repl).unwrap();
        c.create_topic("out", OUT_PARTITIONS, repl).unwrap();
        c.create_topic("dlq", DLQ_PARTITIONS, repl).unwrap();
        c.create_topic(&format!("{GROUP}-changelog"), partitions, repl).unwrap();
        let bootstrap = c.bootstrap_servers();
        drop(c);
        m.bootstrap = bootstrap;
        m
    }

    /// The rdkafka wrapper (borrowed: dropping it leaves the cluster).
    pub fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.owner.client().mock_cluster().expect("mock cluster")
    }

    /// Pushes errors (served with no delay) onto one broker's stack for
    /// `api`: the next requests of that kind to that broker fail with them.
    pub fn push_broker_errors(&self, broker: i32, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        for e in errors {
            // SAFETY: the variadic arguments are (rd_kafka_resp_err_t, int)
            // pairs, `cnt` of them, as rd_kafka_mock_broker_push_request_error_rtts reads.
            let r = unsafe {
                rdsys::rd_kafka_mock_broker_push_request_error_rtts(
                    self.raw,
                    broker,
                    api as i16,
                    1,
                    *e as std::os::raw::c_int,
                    0 as std::os::raw::c_int,
                )
            };
            assert_eq!(r, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR, "push error on broker {broker}");
        }
    }

    /// Errors still waiting on a broker's stack for `api`.
    pub fn broker_errors_left(&self, broker: i32, api: RDKafkaApiKey) -> usize {
        let mut n = 0usize;
        // SAFETY: valid handle, out-pointer to a local.
        let r = unsafe { rdsys::rd_kafka_mock_broker_error_stack_cnt(self.raw, broker, api as i16, &mut n) };
        if r != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return 0; // no stack for this api yet
        }
        n
    }

    /// Waits until every broker's stack for `api` was served (the errors
    /// reached a client), or panics after `timeout`.
    pub fn wait_errors_served(&self, api: RDKafkaApiKey, timeout: Duration, what: &str, log: &dyn Fn() -> String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left: Vec<usize> = (1..=self.brokers).map(|b| self.broker_errors_left(b, api)).collect();
            if left.iter().all(|n| *n == 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: injected {api:?} errors never served, left per broker {left:?}:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The leader of every partition of the engine's topics moves to the
    /// next broker (round robin); returns nothing, the cluster bumps the
    /// leader epochs.
    pub fn rotate_leaders(&self, partitions: i32, step: i32) {
        let c = self.cluster();
        for (topic, n) in [("events", partitions), ("out", OUT_PARTITIONS), ("dlq", DLQ_PARTITIONS)] {
            for p in 0..n {
                let leader = (p + step).rem_euclid(self.brokers) + 1;
                c.partition_leader(topic, p, Some(leader)).unwrap();
            }
        }
    }
}

/// What a test changes in the `run` configuration.
#[derive(Default)]
pub struct Settings<'a> {
    /// librdkafka properties of the consumer, added to the defaults below.
    pub consumer: &'a [(&'a str, &'a str)],
    /// librdkafka properties of the producer.
    pub producer: &'a [(&'a str, &'a str)],
    /// TOML lines in the `[kafka]` table.
    pub kafka: &'a str,
    /// TOML appended at the end (other tables).
    pub extra: &'a str,
}

/// Writes a `run` configuration into `dir/pqa.toml`.
pub fn write_config(dir: &Path, bootstrap: &str, state_dir: &Path, http_port: u16, s: &Settings<'_>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("pqa.toml");
    let props = |ps: &[(&str, &str)]| ps.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"\n")).collect::<String>();
    // The tests' defaults, then the test's own properties (which win).
    let with_defaults = |defaults: &[(&str, &str)], given: &[(&str, &str)]| {
        let mut all: Vec<(&str, &str)> =
            defaults.iter().copied().filter(|(k, _)| !given.iter().any(|(k2, _)| k2 == k)).collect();
        all.extend_from_slice(given);
        props(&all)
    };
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{GROUP}"
input_topics = ["events"]
output_topic = "out"
dlq_topic = "dlq"
{}
[kafka.properties]
"statistics.interval.ms" = "500"
{}
[kafka.consumer_properties]
{}
[kafka.producer_properties]
{}
[state]
dir = "{}"

[http]
addr = "127.0.0.1:{http_port}"
{}
"#,
        if s.kafka.contains("max_batch_wait_ms") {
            s.kafka.to_string()
        } else {
            format!("max_batch_wait_ms = 20\n{}", s.kafka)
        },
        // librdkafka's debug contexts for every client of the engine, to
        // find why a run went wrong (`PQA_TEST_KAFKA_DEBUG=broker,topic,cgrp`
        // with `PQA_TEST_ENGINE_LOG=info,librdkafka=debug`).
        std::env::var("PQA_TEST_KAFKA_DEBUG").map(|d| format!("\"debug\" = \"{d}\"\n")).unwrap_or_default(),
        with_defaults(
            &[("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500"), ("auto.commit.interval.ms", "500")],
            s.consumer
        ),
        {
            // The mock cluster does not check an idempotent producer's
            // sequence numbers: with two requests in flight to a partition,
            // when the first fails with an injected error (not persisted)
            // and the second succeeds, librdkafka takes the first as
            // "implicitly acked by subsequent batch success" and the mock
            // never has it (a real broker refuses the second with
            // OUT_OF_ORDER_SEQUENCE_NUMBER, and both are sent again). Seen
            // in `transient_request_errors_lose_and_skip_nothing` once the
            // engine sends each announcement as soon as it is decided. One
            // request in flight per connection keeps the mock honest.
            with_defaults(&[("max.in.flight.requests.per.connection", "1")], s.producer)
        } + &std::env::var("PQA_TEST_PRODUCER_DEBUG").map(|d| format!("\"debug\" = \"{d}\"\n")).unwrap_or_default(),
        state_dir.display(),
        s.extra
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The partition an account's records go to.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % partitions as u64) as i32
}

/// An idempotent producer for the input (injected Produce errors hit it too;
/// idempotence keeps its retries from duplicating input).
pub struct Feeder {
    producer: BaseProducer,
    partitions: i32,
    /// Records sent per partition: the end offsets once flushed.
    pub ends: BTreeMap<i32, i64>,
    /// (partition, offset) -> payload, for accounting.
    pub sent: BTreeMap<(i32, i64), Vec<u8>>,
}

impl Feeder {
    pub fn new(bootstrap: &str, partitions: i32) -> Feeder {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .create()
            .unwrap();
        Feeder { producer, partitions, ends: (0..partitions).map(|p| (p, 0)).collect(), sent: BTreeMap::new() }
    }

    pub fn send(&mut self, key: &str, payload: &[u8]) {
        let p = partition_of(key, self.partitions);
        let end = self.ends.get_mut(&p).unwrap();
        self.sent.insert((p, *end), payload.to_vec());
        *end += 1;
        let mut rec = BaseRecord::<str, [u8]>::to("events").key(key).payload(payload).partition(p);
        loop {
            match self.producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    self.producer.poll(Duration::from_millis(10));
                    rec = r;
                }
            }
        }
        self.producer.poll(Duration::ZERO);
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(60)).expect("input flushed");
    }

    /// The topic holds exactly what was sent: no input lost or duplicated
    /// by the feeder's own retries (so differences are the engine's).
    pub fn assert_topic_matches(&self, bootstrap: &str) {
        let c = reader(bootstrap, "pqa-it-feeder-check");
        for (p, end) in &self.ends {
            let (lo, hi) = c.fetch_watermarks("events", *p, Duration::from_secs(10)).unwrap();
            assert_eq!((lo, hi), (0, *end), "input partition {p} holds what was sent");
        }
    }
}

pub fn reader(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

pub use crate::common::caught_up;

/// Waits until the group committed every partition's end. If it does not,
/// the panic says which partitions are behind, and the engine's whole log
/// is kept in the build's test directory (it outlives a CI clone), its
/// tail in the message.
pub fn wait_caught_up(bootstrap: &str, ends: &BTreeMap<i32, i64>, timeout: Duration, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !caught_up(bootstrap, ends) {
        if Instant::now() >= deadline {
            let log = log();
            let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "wait_caught_up-{}-{}.log",
                std::process::id(),
                chrono::Utc::now().timestamp()
            ));
            let kept = match std::fs::write(&kept, &log) {
                Ok(()) => kept.display().to_string(),
                Err(e) => format!("(not kept: {e})"),
            };
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "the group did not commit the end of the input: (partition, committed, end) {:?}\n\
                 the engine's log: {kept}; its last 300 lines:\n{}",
                committed(bootstrap, ends),
                lines[lines.len().saturating_sub(300)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `pqa-it` group's committed offset on each partition of `ends`, with
/// the end (`None`: none committed, or not known).
fn committed(bootstrap: &str, ends: &BTreeMap<i32, i64>) -> Vec<(i32, Option<i64>, i64)> {
    let c = reader(bootstrap, GROUP);
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition("events", *p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok();
    ends.iter()
        .map(|(p, end)| {
            let at = got.as_ref().and_then(|t| t.find_partition("events", *p)).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            (*p, at, *end)
        })
        .collect()
}

/// Sum of every series of a Prometheus metric in a text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Records the engine has taken off the input: applied, dead-lettered, or
/// skipped as already applied.
pub fn consumed(metrics: &str) -> u64 {
    (metric_sum(metrics, "pqa_events_total")
        + metric_sum(metrics, "pqa_dead_letters_total")
        + metric_sum(metrics, "pqa_duplicate_events_total")
        + metric_sum(metrics, "pqa_duplicate_messages_skipped_total")) as u64
}

/// Bad input lines, one of each kind in turn (all valid UTF-8, one line,
/// so that `replay` reads them as Kafka carries them).
pub fn bad_line(i: usize) -> (Vec<u8>, &'static str) {
    match i % 5 {
        0 => (format!("not json {i}").into_bytes(), "invalid_json"),
        1 => (format!("[{i}]").into_bytes(), "not_an_object"),
        2 => (
            format!(r#"{{"type":"alias","userId":"b{i}","timestamp":"2026-01-02T00:00:00Z"}}"#).into_bytes(),
            "missing_previous_id",
        ),
        3 => (
            format!(r#"{{"type":"track","event":"x{i}","timestamp":"2026-01-02T00:00:00Z"}}"#).into_bytes(),
            "missing_user_id",
        ),
        _ => (
            format!(r#"{{"type":"track","event":"x","userId":"b{i}","timestamp":"yesterday"}}"#).into_bytes(),
            "invalid_timestamp",
        ),
    }
}

/// A generated history (keyed by account) with a bad line after every
/// `bad_every` events.
pub fn history(seed: u64, accounts: usize, events: usize, bad_every: usize) -> Vec<(String, Vec<u8>)> {
    let sim = pqa_engine::sim::Simulator::new(pqa_engine::sim::SimConfig {
        seed,
        accounts,
        start_unix: 1_767_225_600,
        days: 90,
    });
    let mut out = Vec::new();
    for (i, e) in sim.take(events).enumerate() {
        if bad_every > 0 && i % bad_every == bad_every - 1 {
            let (line, _) = bad_line(i / bad_every);
            out.push((e.account.clone(), line));
        }
        out.push((e.account, e.json.into_bytes()));
    }
    out
}

/// What a clean `replay` of the input gives.
pub struct Reference {
    /// id -> the CloudEvent.
    pub events: BTreeMap<String, Value>,
    /// (reason, original bytes) of every dead letter, sorted.
    pub dead: Vec<(String, Vec<u8>)>,
}

impl Reference {
    pub fn pairs(&self) -> BTreeSet<(String, String)> {
        qualified_pairs(self.events.values())
    }
}

/// Runs `pqa-engine replay` over `records` (in this order) in `dir`.
pub fn replay_reference(dir: &Path, records: &[(String, Vec<u8>)], config: Option<&Path>) -> Reference {
    let input = dir.join("reference-input.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for (_, line) in records {
            f.write_all(line).unwrap();
            f.write_all(b"\n").unwrap();
        }
    }
    let out = dir.join("reference-out.ndjson");
    let dead = dir.join("reference-dead.ndjson");
    let mut cmd = Command::new(BIN);
    cmd.args(["replay", "--input"]).arg(&input).arg("--output").arg(&out).arg("--dead-letter").arg(&dead);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let st = cmd.status().unwrap();
    assert!(st.success(), "replay failed: {st}");
    let events: BTreeMap<String, Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let mut dead: Vec<(String, Vec<u8>)> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["reason"].as_str().unwrap().to_string(), v["original"].as_str().unwrap().as_bytes().to_vec())
        })
        .collect();
    dead.sort();
    Reference { events, dead }
}

pub fn qualified_pairs<'a>(events: impl Iterator<Item = &'a Value>) -> BTreeSet<(String, String)> {
    events
        .filter(|v| v["type"] == "pqa.account.qualified")
        .flat_map(|v| {
            let a = v["subject"].as_str().unwrap().to_string();
            v["data"]["rules"].as_array().unwrap().iter().map(move |r| (a.clone(), r.as_str().unwrap().to_string()))
        })
        .collect()
}

/// Reads a whole topic (every partition up to its current end).
pub fn read_all(bootstrap: &str, topic: &str, partitions: i32, timeout: Duration) -> Vec<Record> {
    let c = reader(bootstrap, "pqa-it-reader");
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, hi) = c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        ends.insert(p, hi);
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    drop(tpl);
    let mut next: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while next.iter().any(|(p, o)| *o < ends[p]) {
        assert!(Instant::now() < deadline, "could not read {topic} to its end {ends:?}: at {next:?}");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            next.insert(m.partition(), m.offset() + 1);
            let r = Record::of(&m);
            if topic == "out" && r.payload.is_some() {
                crate::common::assert_valid_event(&r.json(), topic);
            }
            out.push(r);
        }
    }
    out
}

/// Distinct output ids and dead letters (by source partition and offset)
/// read so far.
pub fn distinct_ids(out: &[Record]) -> usize {
    out.iter().map(|r| r.json()["id"].as_str().unwrap_or_default().to_string()).collect::<BTreeSet<_>>().len()
}
pub fn distinct_dead(dlq: &[Record]) -> usize {
    dlq.iter()
        .map(|r| (r.headers["pqa.source.partition"].clone(), r.headers["pqa.source.offset"].clone()))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Counts of what the comparison saw.
#[derive(Debug)]
pub struct Compared {
    pub out_records: usize,
    pub out_repeats: usize,
    pub dead_records: usize,
    pub dead_repeats: usize,
}

/// The output topic carries exactly the reference's events (same ids, a
/// repeat byte-identical to its first copy), and the dead-letter topic
/// exactly its dead letters (reason and original bytes; a repeat of a
/// source offset identical).
pub fn compare(out: &[Record], dlq: &[Record], reference: &Reference) -> Compared {
    let first = crate::common::first_copies(out);
    let got: BTreeSet<&String> = first.keys().collect();
    let want: BTreeSet<&String> = reference.events.keys().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "output ids differ from the clean replay: {} missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
        want.difference(&got).count(),
        got.difference(&want).count()
    );
    assert_eq!(qualified_pairs(out.iter().map(Record::json).collect::<Vec<_>>().iter()), reference.pairs());

    let mut by_source: BTreeMap<(i32, i64), (String, Vec<u8>)> = BTreeMap::new();
    for r in dlq {
        let src = (r.headers["pqa.source.partition"].parse().unwrap(), r.headers["pqa.source.offset"].parse().unwrap());
        let v = (r.headers["pqa.reason"].clone(), r.payload.clone().unwrap_or_default());
        let prev = by_source.entry(src).or_insert_with(|| v.clone());
        assert_eq!(*prev, v, "a repeated dead letter of {src:?} differs");
    }
    let mut dead: Vec<(String, Vec<u8>)> = by_source.into_values().collect();
    dead.sort();
    if dead != reference.dead {
        let a: BTreeSet<_> = dead.iter().collect();
        let b: BTreeSet<_> = reference.dead.iter().collect();
        let show = |s: Vec<&&(String, Vec<u8>)>| {
            s.iter().take(5).map(|(r, p)| format!("{r}: {}", String::from_utf8_lossy(p))).collect::<Vec<_>>()
        };
        panic!(
            "dead letters differ from the clean replay: {} vs {}; missing {:?}; unexpected {:?}",
            dead.len(),
            reference.dead.len(),
            show(b.difference(&a).collect()),
            show(a.difference(&b).collect())
        );
    }
    Compared {
        out_records: out.len(),
        out_repeats: out.len() - first.len(),
        dead_records: dlq.len(),
        dead_repeats: dlq.len() - dead.len(),
    }
}

/// Like `EngineProcess::start`, with `RUST_LOG` from `PQA_TEST_ENGINE_LOG`
/// when set (for diagnosing a failure), else `info`.
pub fn start_engine(config: &Path, http_port: u16, log_dir: &Path, n: usize) -> crate::common::EngineProcess {
    start_engine_logging(config, http_port, log_dir, n, "info")
}

/// [`start_engine`] with another default `RUST_LOG`.
pub fn start_engine_logging(
    config: &Path,
    http_port: u16,
    log_dir: &Path,
    n: usize,
    rust_log: &str,
) -> crate::common::EngineProcess {
    let stderr_path = log_dir.join(format!("engine-{n}.log"));
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", std::env::var("PQA_TEST_ENGINE_LOG").unwrap_or_else(|_| rust_log.into()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start pqa-engine run");
    crate::common::EngineProcess { child, http_port, stderr_path }
}
