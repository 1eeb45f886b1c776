//! Shared test helpers: an in-process Kafka (librdkafka's mock cluster), the
//! real `pqa-engine` binary as a child process, and small HTTP/Kafka readers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_pqa-engine");

/// The published JSON Schema of the output events.
pub const EVENT_SCHEMA: &str = include_str!("../../schemas/pqa-event.schema.json");

/// Every event the engine emits must validate against the published schema
/// (`schemas/pqa-event.schema.json`, draft 2020-12): what downstream teams
/// code against. Test readers of the output topics and of replay output call
/// this on every event.
pub fn assert_valid_event(v: &Value, context: &str) {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(EVENT_SCHEMA).expect("the schema is JSON");
        jsonschema::draft202012::new(&schema).expect("the schema is a valid draft 2020-12 schema")
    });
    let errors: Vec<String> = validator.iter_errors(v).map(|e| format!("{} (at {})", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{context}: an event does not match schemas/pqa-event.schema.json: {errors:?}\n{v}");
}

/// An in-process Kafka with the topics the tests use: `events` and the state
/// changelog `pqa-it-changelog` (with `partitions` partitions), `out` and
/// `dlq`. Returns it (keep it alive) and its bootstrap address.
pub fn mock_kafka(partitions: i32) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", partitions, 1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    cluster.create_topic("dlq", 1, 1).unwrap();
    // The mock cluster has no CreateTopics; the engine checks the count.
    cluster.create_topic("pqa-it-changelog", partitions, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes a config file for `run` against `bootstrap`.
pub fn write_config(dir: &Path, bootstrap: &str, state_dir: &Path, http_port: u16, extra: &str) -> PathBuf {
    let path = dir.join("pqa.toml");
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "pqa-it"
input_topics = ["events"]
output_topic = "out"
dlq_topic = "dlq"
max_batch_wait_ms = 20

[kafka.consumer_properties]
"session.timeout.ms" = "6000"

[state]
dir = "{}"

[http]
addr = "127.0.0.1:{http_port}"
{extra}
"#,
        state_dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The engine as a child process.
pub struct EngineProcess {
    pub child: Child,
    pub http_port: u16,
    pub stderr_path: PathBuf,
}

impl EngineProcess {
    pub fn start(config: &Path, http_port: u16, log_dir: &Path, n: usize) -> EngineProcess {
        let stderr_path = log_dir.join(format!("engine-{n}.log"));
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start pqa-engine run");
        EngineProcess { child, http_port, stderr_path }
    }

    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    /// The sum of a metric's samples (every label set) on `/metrics`; 0
    /// when it is absent or HTTP does not answer.
    pub fn metric(&self, name: &str) -> f64 {
        self.http_get("/metrics")
            .map(|(_, m)| {
                m.lines()
                    .filter(|l| {
                        l.starts_with(name) && (l.len() == name.len() || l[name.len()..].starts_with([' ', '{']))
                    })
                    .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((200, _)) = self.http_get("/readyz") {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("engine exited early with {st}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("engine not ready within {timeout:?}: {}", self.log());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("engine did not stop within {timeout:?} after SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Some((status, body))
}

pub fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "1").create().unwrap()
}

/// Produces (key, value) records; `None` value is a tombstone.
pub fn produce(p: &BaseProducer, topic: &str, records: &[(Option<&str>, Option<Vec<u8>>)]) {
    for (k, v) in records {
        let mut r: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic);
        if let Some(k) = k {
            r = r.key(k);
        }
        if let Some(v) = v {
            r = r.payload(v.as_slice());
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    pub offset: i64,
    pub partition: i32,
}

impl Record {
    /// A copy of a consumed message.
    pub fn of(m: &impl Message) -> Record {
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for x in h.iter() {
                headers.insert(x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).to_string());
            }
        }
        Record {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            offset: m.offset(),
            partition: m.partition(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(self.payload.as_deref().unwrap_or(b"null")).unwrap()
    }
}

/// Reads a topic (all partitions given) from the beginning until `done`
/// says the records are complete or the timeout passes.
pub fn read_until(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "pqa-it-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    drop(tpl);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !done(&out) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let r = Record::of(&m);
            if (topic == "out" || topic.ends_with(".shadow")) && r.payload.is_some() {
                assert_valid_event(&r.json(), topic);
            }
            out.push(r);
        }
    }
    out
}

/// Writes a simulated product's history (NDJSON, in time order) to `path`.
pub fn write_history(path: &Path, cfg: pqa_engine::sim::SimConfig) -> PathBuf {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for e in pqa_engine::sim::Simulator::new(cfg) {
        writeln!(f, "{}", e.json).unwrap();
    }
    f.flush().unwrap();
    path.to_path_buf()
}

/// Segment event builders.
pub fn track(user: &str, account: Option<&str>, event: &str, ts: &str) -> Vec<u8> {
    let ctx = account.map(|a| format!(r#","context":{{"groupId":"{a}"}}"#)).unwrap_or_default();
    format!(r#"{{"type":"track","event":"{event}","userId":"{user}","timestamp":"{ts}"{ctx}}}"#).into_bytes()
}

/// A clean `pqa-engine replay` of `lines` (the reference for end-to-end
/// comparisons): returns its output events and its state dir.
pub fn clean_replay<'a>(dir: &Path, lines: impl Iterator<Item = &'a str>) -> (Vec<Value>, PathBuf) {
    let input = dir.join("history.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }
    let out = dir.join("clean.ndjson");
    let state = dir.join("clean-state");
    let st = Command::new(BIN)
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--state-dir")
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success());
    let clean: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for v in &clean {
        assert_valid_event(v, "clean replay");
    }
    (clean, state)
}

/// The first copy of each output event by id, checking that every repeat
/// is byte-identical to it.
pub fn first_copies(out: &[Record]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut first = std::collections::BTreeMap::new();
    for r in out {
        let id = r.json()["id"].as_str().unwrap().to_string();
        let payload = r.payload.clone().unwrap();
        let prev = first.entry(id.clone()).or_insert_with(|| payload.clone());
        assert_eq!(*prev, payload, "a repeat of {id} differs from its first copy");
    }
    first
}

/// Output records compared with a clean run: every repeat byte-identical
/// to its first copy, the same set of ids, the same (account, rule) pairs.
/// Returns (records, distinct ids).
pub fn assert_same_output(out: &[Record], clean: &[Value], context: &str) -> (usize, usize) {
    use std::collections::BTreeSet;
    let first = first_copies(out);
    let got: BTreeSet<&String> = first.keys().collect();
    let want_ids: Vec<String> = clean.iter().map(|v| v["id"].as_str().unwrap().to_string()).collect();
    let want: BTreeSet<&String> = want_ids.iter().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}\n{context}");
    let pairs = |vs: &mut dyn Iterator<Item = Value>| -> BTreeSet<(String, String)> {
        vs.filter(|v| v["type"] == "pqa.account.qualified")
            .flat_map(|v| {
                let a = v["subject"].as_str().unwrap().to_string();
                v["data"]["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |r| (a.clone(), r.as_str().unwrap().to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(pairs(&mut out.iter().map(Record::json)), pairs(&mut clean.iter().cloned()));
    (out.len(), first.len())
}

/// The `pqa-it` group's committed offsets on `events` reached `ends` (next
/// offset per partition) on every partition listed.
pub fn caught_up(bootstrap: &str, ends: &std::collections::BTreeMap<i32, i64>) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "pqa-it")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition("events", *p);
    }
    let done = match c.committed_offsets(tpl, Duration::from_secs(5)) {
        Ok(committed) => committed.elements().iter().all(|e| match e.offset() {
            Offset::Offset(o) => o >= ends[&e.partition()],
            _ => ends[&e.partition()] == 0,
        }),
        Err(_) => false,
    };
    drop(c);
    done
}

/// The partition of an account's events in the tests: `xxh3(account) %
/// partitions` (the engine's scale-out needs one partition per account).
pub fn partition_of(account: &str, partitions: i32) -> i32 {
    (xxhash_rust::xxh3::xxh3_64(account.as_bytes()) % partitions as u64) as i32
}

/// Produces simulated events to `events`, keyed and partitioned by account,
/// waits for them, and counts them into `ends` (next offset per partition,
/// for a topic that was empty).
pub fn produce_by_account(
    p: &BaseProducer,
    events: &[pqa_engine::sim::SimEvent],
    partitions: i32,
    ends: &mut std::collections::BTreeMap<i32, i64>,
) {
    for e in events {
        let part = partition_of(&e.account, partitions);
        *ends.entry(part).or_insert(0) += 1;
        let mut rec = BaseRecord::<str, str>::to("events").key(&e.account).payload(&e.json).partition(part);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    p.poll(Duration::from_millis(10));
                    rec = r;
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Each of `accounts` is in the state at `state` (an engine's, stopped)
/// exactly as in `clean` (a clean replay's): the account record and its
/// members.
pub fn assert_same_state<'a>(state: &Path, clean: &Path, accounts: impl Iterator<Item = &'a str>) {
    use pqa_engine::state::Store;
    let open = |d: &Path| {
        let mut c = pqa_engine::config::Config::default_config().state;
        c.dir = d.to_path_buf();
        Store::open(&c).unwrap()
    };
    let (a, b) = (open(state), open(clean));
    // The input partition an account was last seen on is where it ran, not
    // what it did (a replay reads one pseudo-partition).
    let read = |s: &Store, acct: &str| {
        s.reader().account(acct).unwrap().map(|mut x| {
            x.partition = None;
            x
        })
    };
    for acct in accounts {
        let x = read(&a, acct);
        assert!(x.is_some(), "{acct} missing");
        assert_eq!(x, read(&b, acct), "state of {acct} differs from the clean run");
        assert_eq!(a.reader().members(acct).unwrap(), b.reader().members(acct).unwrap(), "members of {acct}");
    }
}
