//! End-to-end latency through a real broker: from an event being produced to
//! the input topic to the PQA it triggers being read from the output topic,
//! with the input arriving at a steady, paced rate (default 50,000 events/s).
//!
//! What it does:
//! 1. creates fresh input / output / dead-letter topics on the broker;
//! 2. starts `pqa-engine run` (the release binary) on them, with a fresh state
//!    directory and consumer group, and waits for `/readyz`;
//! 3. produces the simulated history (`pqa_engine::sim`, 100,000 accounts by
//!    default) at a paced rate, open loop: event `i` is due `i / rate` seconds
//!    after the start, and each event's `timestamp` is rewritten to the wall
//!    clock (milliseconds) at the moment it is handed to the producer, so event
//!    time = produce time. Per account the timestamps are made strictly
//!    increasing (+1 ms on a collision), so `(account, timestamp)` names one
//!    event;
//! 4. reads the output topic. A CloudEvent's `time` is the event time of the
//!    event whose processing produced it (`src/engine.rs` builds it from
//!    `ev.time_ms`) and its `subject` is the account, so each output event is
//!    matched exactly to the `Instant` its triggering event was sent at.
//!    Latency = the `Instant` the output record came out of `poll` minus that
//!    send `Instant` (one process, one monotonic clock);
//! 5. discards PQAs triggered in the warm-up, keeps those triggered in the
//!    measurement window, waits for the engine to drain, and reports count,
//!    p50 / p90 / p99 / p99.9 / max, the achieved input rate and the engine's
//!    input lag (events sent minus events processed, from its
//!    `pqa_batch_messages_sum`) sampled every second.
//!
//! "Produced" means handed to the input producer (`BaseProducer::send`), so
//! the figure includes the producer's own batching (`LAT_LINGER_MS`, default
//! 5 ms, librdkafka's default), the broker, the engine (consume, batch,
//! process, deliver) and the reader's fetch (`fetch.wait.max.ms=5`).
//!
//! Needs a running broker, e.g. `TANSU_PORT=19192 bash benches/broker.sh
//! start`, and a release build of the engine. `benches/latency.sh` does both
//! and runs this several times. Directly:
//!
//! ```sh
//! cargo build --release
//! LAT_BOOTSTRAP=127.0.0.1:19192 cargo bench --bench latency
//! # a latency-oriented engine setting: PQA_* variables reach the engine
//! PQA_KAFKA__MAX_BATCH_WAIT_MS=5 LAT_BOOTSTRAP=127.0.0.1:19192 cargo bench --bench latency
//! ```
//!
//! Environment (defaults in brackets):
//! - `LAT_BOOTSTRAP` [127.0.0.1:$TANSU_PORT, else 127.0.0.1:19092]
//! - `LAT_BROKER` [unset] `mock`: no outside broker; this process starts
//!   librdkafka's mock cluster (the real Kafka protocol on loopback, the one
//!   the tests use) and the engine, the producer and the reader all connect
//!   to it over TCP. It measures what the engine and its clients add when the
//!   broker hands a record on at once (tansu holds one about 90 ms);
//!   `LAT_BOOTSTRAP` is then ignored. (It keeps only the last 5 MiB of each
//!   partition: enough for a paced run read as it is produced, not for a
//!   topic loaded ahead.)
//! - `PQA_BIN` [$CARGO_TARGET_DIR/release/pqa-engine, else target/release/pqa-engine]
//! - `LAT_RATE` [50000] input events per second
//! - `LAT_WARMUP_S` [10] seconds whose PQAs are discarded; `LAT_MEASURE_S` [60] then measured
//! - `LAT_ACCOUNTS` [100000] `LAT_DAYS` [90] `LAT_SEED` [42] the simulated history
//! - `LAT_PARTITIONS` [2] input partitions
//! - `LAT_LINGER_MS` [5] `linger.ms` of the input producer
//! - `LAT_OUT` [$PQA_BENCH_HOME/results/latency-<unix time>] stem of the outputs:
//!   `<stem>.csv` (one row per measured output event), `<stem>-lag.csv`
//!   (one row per second) and `<stem>.txt` (the summary)
//! - `LAT_LABEL` [defaults] a name for the run, in the summary
//! - `PQA_*` passed to the engine as they are (e.g. `PQA_KAFKA__MAX_BATCH_WAIT_MS`)
//! - `LAT_ENGINE_TOML` lines appended to the engine's generated configuration, as
//!   dotted keys, e.g. `kafka.producer_properties."linger.ms" = "0"` (for keys
//!   with a dot, which environment variables cannot reach)

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pqa_engine::sim::{SimConfig, Simulator};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v} is not valid")),
        Err(_) => default,
    }
}

#[derive(Clone)]
struct Settings {
    bootstrap: String,
    bin: PathBuf,
    rate: u64,
    warmup_s: u64,
    measure_s: u64,
    accounts: usize,
    days: u32,
    seed: u64,
    partitions: i32,
    linger_ms: u64,
    out: PathBuf,
    label: String,
}

impl Settings {
    fn from_env() -> Settings {
        let port = std::env::var("TANSU_PORT").unwrap_or_else(|_| "19092".into());
        let bin = std::env::var("PQA_BIN").map(PathBuf::from).unwrap_or_else(|_| {
            let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
            PathBuf::from(target).join("release/pqa-engine")
        });
        let home = std::env::var("PQA_BENCH_HOME").map(PathBuf::from).unwrap_or_else(|_| {
            let cache = std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache"));
            cache.join("pqa-bench")
        });
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        Settings {
            bootstrap: env_or("LAT_BOOTSTRAP", format!("127.0.0.1:{port}")),
            bin,
            rate: env_or("LAT_RATE", 50_000),
            warmup_s: env_or("LAT_WARMUP_S", 10),
            measure_s: env_or("LAT_MEASURE_S", 60),
            accounts: env_or("LAT_ACCOUNTS", 100_000),
            days: env_or("LAT_DAYS", 90),
            seed: env_or("LAT_SEED", 42),
            partitions: env_or("LAT_PARTITIONS", 2),
            linger_ms: env_or("LAT_LINGER_MS", 5),
            out: std::env::var("LAT_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| home.join("results").join(format!("latency-{stamp}"))),
            label: env_or("LAT_LABEL", "defaults".to_string()),
        }
    }
}

/// The engine child process; stopped (SIGTERM, then SIGKILL) when dropped.
struct EngineProc(Child);

impl EngineProc {
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The sum of every sample of a metric (all label sets), or of the samples
/// whose labels contain `label`.
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(l) = label {
            if !rest.contains(l) {
                continue;
            }
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
        }
    }
    sum
}

/// The `q` quantile (0..1) of a Prometheus histogram's observations made
/// between two scrapes `a` and `b`, in milliseconds (linear within a bucket,
/// as `histogram_quantile` does); NaN without observations.
fn hist_quantile_ms(a: &str, b: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter_map(|l| {
                let (le, v) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, v.trim().parse().ok()?))
            })
            .collect()
    };
    let (x, y) = (buckets(a), buckets(b));
    let counts: Vec<(f64, f64)> =
        y.iter().map(|(le, n)| (*le, n - x.iter().find(|(l, _)| l == le).map_or(0.0, |p| p.1))).collect();
    let total = counts.last().map_or(0.0, |c| c.1);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, n) in counts {
        if n >= rank {
            if le.is_infinite() {
                return prev.0 * 1e3;
            }
            let f = if n > prev.1 { (rank - prev.1) / (n - prev.1) } else { 0.0 };
            return (prev.0 + (le - prev.0) * f) * 1e3;
        }
        prev = (le, n);
    }
    f64::NAN
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let new: Vec<NewTopic> = topics.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in rt.block_on(admin.create_topics(&new, &opts)).expect("create topics") {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t} on {bootstrap}: {e}"));
    }
}

fn account_index(account: &str) -> u32 {
    account.strip_prefix("acct-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("account id {account}"))
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 14th field overall.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // CLK_TCK is 100 on Linux
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the producer thread hands back.
struct Sent {
    /// (account index, event time ms) -> send time, ns since `base`
    at: HashMap<(u32, i64), u64>,
    /// send time (ns since `base`) of the first event that was due after the warm-up,
    /// and of the first event due after the measurement window
    window_events: u64,
    window_first_ns: u64,
    window_last_ns: u64,
    /// largest delay behind the pacing schedule, ns
    max_behind_ns: u64,
    queue_full_waits: u64,
    delivery_failures: u64,
}

/// One record read from the output topic.
struct Received {
    recv_ns: u64,
    account: u32,
    time_ms: i64,
    kind: String,
    /// the output record's Kafka timestamp (CreateTime, set by the engine's producer), ms
    record_ts_ms: i64,
}

#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

impl rdkafka::ClientContext for DeliveryCounter {}
impl rdkafka::producer::ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Relaxed);
        }
    }
}

/// Produces `rate * (warmup_s + measure_s)` events, paced, open loop.
fn produce(s: &Settings, topic: &str, base: Instant, sent_count: &AtomicU64) -> Sent {
    let producer: BaseProducer<DeliveryCounter> = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", s.linger_ms.to_string())
        .set("compression.type", "lz4")
        .create_with_context(DeliveryCounter::default())
        .expect("producer");
    let mut sim =
        Simulator::new(SimConfig { seed: s.seed, accounts: s.accounts, days: s.days, ..SimConfig::default() });
    let total = s.rate * (s.warmup_s + s.measure_s);
    let warm_n = s.rate * s.warmup_s;
    let mut at = HashMap::with_capacity(total as usize);
    let mut last_ms = vec![0i64; s.accounts];
    let mut out = Sent {
        at: HashMap::new(),
        window_events: 0,
        window_first_ns: 0,
        window_last_ns: 0,
        max_behind_ns: 0,
        queue_full_waits: 0,
        delivery_failures: 0,
    };
    let wall_base = SystemTime::now();
    let start = Instant::now();
    let ns_per_event = 1e9 / s.rate as f64;
    let mut i = 0u64;
    let mut json = String::new();
    while i < total {
        let elapsed = start.elapsed().as_nanos() as f64;
        let due = ((elapsed / ns_per_event) as u64 + 1).min(total);
        if i >= due {
            let next = Duration::from_nanos((i as f64 * ns_per_event - elapsed).max(0.0) as u64);
            producer.poll(Duration::ZERO);
            std::thread::sleep(next.max(Duration::from_micros(100)));
            continue;
        }
        let behind = (elapsed - i as f64 * ns_per_event).max(0.0) as u64;
        out.max_behind_ns = out.max_behind_ns.max(behind);
        while i < due {
            let Some(ev) = sim.next() else { panic!("the simulated history ran out after {i} events: raise LAT_DAYS") };
            let acct = account_index(&ev.account);
            // Wall clock now, in ms; strictly increasing per account.
            let now = wall_base + start.elapsed();
            let mut ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
            let last = &mut last_ms[acct as usize];
            if ms <= *last {
                ms = *last + 1;
            }
            *last = ms;
            let k = ev.json.find("\"timestamp\":\"").expect("timestamp") + 13;
            let end = k + ev.json[k..].find('"').expect("timestamp end");
            json.clear();
            json.push_str(&ev.json[..k]);
            json.push_str(&pqa_engine::emit::format_time_ms(ms));
            json.push_str(&ev.json[end..]);
            let mut record = BaseRecord::to(topic).key(ev.account.as_bytes()).payload(json.as_bytes());
            let sent_ns = loop {
                let t = base.elapsed().as_nanos() as u64;
                match producer.send(record) {
                    Ok(()) => break t,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        out.queue_full_waits += 1;
                        producer.poll(Duration::from_millis(1));
                    }
                    Err((e, _)) => panic!("producing to {topic}: {e}"),
                }
            };
            at.insert((acct, ms), sent_ns);
            if i == warm_n {
                out.window_first_ns = sent_ns;
            }
            if i >= warm_n {
                out.window_events += 1;
                out.window_last_ns = sent_ns;
            }
            i += 1;
            sent_count.store(i, Relaxed);
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flushing the input producer");
    out.delivery_failures = producer.context().failed.load(Relaxed);
    out.at = at;
    out
}

fn consume(bootstrap: &str, topic: &str, base: Instant, stop: &AtomicBool) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    while !stop.load(Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(50)) else { continue };
        let recv_ns = base.elapsed().as_nanos() as u64;
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                eprintln!("latency: output consumer: {e}");
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("CloudEvent JSON");
        let time = v["time"].as_str().expect("time");
        let time_ms = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339 time").timestamp_millis();
        got.push(Received {
            recv_ns,
            account: account_index(v["subject"].as_str().expect("subject")),
            time_ms,
            kind: v["type"].as_str().unwrap_or("").trim_start_matches("pqa.account.").to_string(),
            record_ts_ms: m.timestamp().to_millis().unwrap_or(0),
        });
    }
    got
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

struct Sample {
    t_ns: u64,
    sent: u64,
    processed: f64,
    lag_gauge: f64,
}

fn main() {
    let mut s = Settings::from_env();
    // (Kept alive to the end of the run: dropping it stops the brokers.)
    let mock = match std::env::var("LAT_BROKER").as_deref() {
        Ok("mock") => {
            let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
            s.bootstrap = cluster.bootstrap_servers();
            eprintln!("latency: librdkafka's mock cluster at {}", s.bootstrap);
            Some(cluster)
        }
        Ok("") | Err(_) => None,
        Ok(other) => panic!("LAT_BROKER={other}: only `mock` is known (unset: the broker at LAT_BOOTSTRAP)"),
    };
    assert!(s.bin.exists(), "no pqa-engine binary at {} (cargo build --release, or set PQA_BIN)", s.bin.display());
    if let Some(dir) = s.out.parent() {
        std::fs::create_dir_all(dir).expect("output directory");
    }
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    let input = format!("lat.events.{stamp}");
    let output = format!("lat.out.{stamp}");
    let dlq = format!("lat.dlq.{stamp}");
    // The engine's configuration lines for this broker.
    let broker_toml = match &mock {
        // (The mock cluster's topics are made through its own interface,
        // the engine's changelog too: the mock has no CreateTopics.)
        Some(cluster) => {
            let changelog = format!("lat.changelog.{stamp}");
            for (t, n) in [(&input, s.partitions), (&output, 1), (&dlq, 1), (&changelog, s.partitions)] {
                cluster.create_topic(t, n, 1).expect("topic on the mock cluster");
            }
            format!("kafka.changelog_topic = \"{changelog}\"\n")
        }
        None => {
            create_topics(&s.bootstrap, &[(&input, s.partitions), (&output, 1), (&dlq, 1)]);
            String::new()
        }
    };

    let work = tempfile::Builder::new().prefix("pqa-latency").tempdir().expect("temp dir");
    let port = free_port();
    // Dotted keys at the root, so that `LAT_ENGINE_TOML` lines can be appended.
    let cfg = work.path().join("pqa.toml");
    let extra = std::env::var("LAT_ENGINE_TOML").unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "kafka.bootstrap_servers = \"{}\"\nkafka.group_id = \"pqa-lat-{stamp}\"\nkafka.input_topics = [\"{input}\"]\n\
             kafka.output_topic = \"{output}\"\nkafka.dlq_topic = \"{dlq}\"\nstate.dir = \"{}\"\n\
             http.addr = \"127.0.0.1:{port}\"\n{broker_toml}{extra}\n",
            s.bootstrap,
            work.path().join("state").display()
        ),
    )
    .unwrap();
    let mut engine_env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PQA_") && k != "PQA_BIN" && k != "PQA_BENCH_HOME")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    engine_env.extend(extra.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    let log_path = work.path().join("engine.log");
    let mut engine = EngineProc(
        Command::new(&s.bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("starting pqa-engine"),
    );
    let pid = engine.0.id();
    let fail = |msg: &str| -> ! {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("{msg}\nengine log:\n{log}");
    };
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        if matches!(engine.0.try_wait(), Ok(Some(_))) {
            fail("pqa-engine exited");
        }
        if matches!(http_get(port, "/readyz"), Some((200, _))) {
            break;
        }
        if Instant::now() > ready_by {
            fail("pqa-engine not ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "latency: engine ready (pid {pid}); {} events/s for {} s warm-up + {} s measured; {} accounts, {} days, seed {}; broker {}; engine env: {}",
        s.rate,
        s.warmup_s,
        s.measure_s,
        s.accounts,
        s.days,
        s.seed,
        s.bootstrap,
        if engine_env.is_empty() { "(shipped defaults)".to_string() } else { engine_env.join(" ") }
    );

    let base = Instant::now();
    let wall_base_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3;
    let stop = Arc::new(AtomicBool::new(false));
    let sent_count = Arc::new(AtomicU64::new(0));
    let reader = {
        let (b, o, stop) = (s.bootstrap.clone(), output.clone(), stop.clone());
        std::thread::spawn(move || consume(&b, &o, base, &stop))
    };
    std::thread::sleep(Duration::from_millis(500)); // the reader's assignment
    let producer = {
        let s2 = s.clone();
        let (topic, sc) = (input.clone(), sent_count.clone());
        std::thread::spawn(move || produce(&s2, &topic, base, &sc))
    };

    // Every second: events sent vs processed, and the engine's own figures.
    let mut samples: Vec<Sample> = Vec::new();
    let snap = |samples: &mut Vec<Sample>| -> String {
        let text = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        samples.push(Sample {
            t_ns: base.elapsed().as_nanos() as u64,
            sent: sent_count.load(Relaxed),
            processed: metric(&text, "pqa_batch_messages_sum", None),
            lag_gauge: metric(&text, "pqa_consumer_lag_messages", None),
        });
        text
    };
    let mut m_start = String::new();
    let mut cpu_start = 0.0;
    let mut load_start = String::new();
    let mut load_mid = String::new();
    let warm_ns = s.warmup_s * 1_000_000_000;
    let mid_ns = warm_ns + s.measure_s * 500_000_000;
    let mut next = Duration::from_secs(1);
    while !producer.is_finished() {
        let e = base.elapsed();
        if e < next {
            std::thread::sleep((next - e).min(Duration::from_millis(50)));
            continue;
        }
        next += Duration::from_secs(1);
        let text = snap(&mut samples);
        let t = base.elapsed().as_nanos() as u64;
        if m_start.is_empty() && t >= warm_ns {
            m_start = text;
            cpu_start = cpu_seconds(pid);
            load_start = loadavg();
        }
        if load_mid.is_empty() && t >= mid_ns {
            load_mid = loadavg();
        }
        if let Some(l) = samples.last() {
            if samples.len() % 10 == 0 {
                eprintln!(
                    "latency: t={:>3} s sent {} processed {:.0} lag {:.0}",
                    l.t_ns / 1_000_000_000,
                    l.sent,
                    l.processed,
                    l.sent as f64 - l.processed
                );
            }
        }
        if matches!(engine.0.try_wait(), Ok(Some(_))) {
            fail("pqa-engine exited during the run");
        }
    }
    let sent = producer.join().expect("producer thread");
    let m_end = snap(&mut samples);
    let cpu_end = cpu_seconds(pid);
    let load_end = loadavg();
    let end_ns = base.elapsed().as_nanos() as u64;
    // Drain: until the engine has processed every event (at most 60 s), then 2 s for the last outputs.
    let total = sent_count.load(Relaxed) as f64;
    let drain_by = Instant::now() + Duration::from_secs(60);
    let mut processed = 0.0;
    while Instant::now() < drain_by {
        let text = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        processed = metric(&text, "pqa_batch_messages_sum", None);
        if processed >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_s = (base.elapsed().as_nanos() as u64 - end_ns) as f64 / 1e9;
    std::thread::sleep(Duration::from_secs(2));
    let m_final = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    stop.store(true, Relaxed);
    let got = reader.join().expect("reader thread");
    engine.stop();

    // Match each output record to its triggering event.
    let (w0, w1) = (sent.window_first_ns, sent.window_last_ns);
    let mut rows = Vec::new();
    let mut unmatched = 0usize;
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        let Some(&t) = sent.at.get(&(r.account, r.time_ms)) else {
            unmatched += 1;
            continue;
        };
        if t < w0 || t > w1 {
            continue;
        }
        let lat_ms = (r.recv_ns - t) as f64 / 1e6;
        let engine_ms = r.record_ts_ms as f64 - (wall_base_ms + t as f64 / 1e6);
        *kinds.entry(r.kind.as_str()).or_default() += 1;
        rows.push(((t - w0) as f64 / 1e9, lat_ms, engine_ms, r.kind.as_str(), r.account));
    }
    let mut lat: Vec<f64> = rows.iter().map(|r| r.1).collect();
    lat.sort_by(f64::total_cmp);
    let mut eng: Vec<f64> = rows.iter().map(|r| r.2).collect();
    eng.sort_by(f64::total_cmp);
    let window_s = (w1 - w0) as f64 / 1e9;
    let achieved = sent.window_events as f64 / window_s;

    // Lag over the measurement window (sent - processed, from 1 s samples).
    let in_window: Vec<&Sample> = samples.iter().filter(|x| x.t_ns >= warm_ns && x.t_ns <= end_ns).collect();
    let lag = |x: &Sample| x.sent as f64 - x.processed;
    let lag_first = in_window.first().map(|x| lag(x)).unwrap_or(f64::NAN);
    let lag_last = in_window.last().map(|x| lag(x)).unwrap_or(f64::NAN);
    let lag_max = in_window.iter().map(|x| lag(x)).fold(0.0, f64::max);
    let mut lags: Vec<f64> = in_window.iter().map(|x| lag(x)).collect();
    lags.sort_by(f64::total_cmp);
    let d = |name: &str, label: Option<&str>| metric(&m_end, name, label) - metric(&m_start, name, label);
    let batches = d("pqa_batch_messages_count", None);
    let msgs = d("pqa_batch_messages_sum", None);
    let stage = |st: &str| {
        let l = format!("stage=\"{st}\"");
        let n = d("pqa_batch_duration_seconds_count", Some(&l));
        if n > 0.0 {
            d("pqa_batch_duration_seconds_sum", Some(&l)) / n * 1e3
        } else {
            f64::NAN
        }
    };
    let meas_wall = (end_ns - warm_ns) as f64 / 1e9;
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort();

    let stem = s.out.display().to_string();
    let mut summary = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(summary, "label: {}", s.label);
    let _ = writeln!(
        summary,
        "broker: {}",
        if mock.is_some() {
            format!("librdkafka's mock cluster (in this process), {}", s.bootstrap)
        } else {
            s.bootstrap.clone()
        }
    );
    let _ = writeln!(
        summary,
        "engine settings: {}",
        if engine_env.is_empty() { "shipped defaults".to_string() } else { engine_env.join(" ") }
    );
    let _ = writeln!(
        summary,
        "machine: nproc {}, {:.1} GiB; load average at the start / middle / end of the window: {load_start} / {load_mid} / {load_end}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
            .unwrap_or(0.0)
            / 1_048_576.0
    );
    let _ = writeln!(
        summary,
        "input: {} events/s target, {:.0} events/s achieved over the {:.1} s window ({} events); {} accounts, seed {}; max {:.1} ms behind the schedule; {} queue-full waits; {} failed deliveries; producer linger.ms {}",
        s.rate, achieved, window_s, sent.window_events, s.accounts, s.seed, sent.max_behind_ns as f64 / 1e6, sent.queue_full_waits, sent.delivery_failures, s.linger_ms
    );
    let _ = writeln!(
        summary,
        "latency (produce -> read from output), {} output events triggered in the window ({}): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms, mean {:.1} ms",
        lat.len(),
        kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "),
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.iter().sum::<f64>() / lat.len().max(1) as f64
    );
    let _ = writeln!(
        summary,
        "  of which up to the engine's output record timestamp (ms clock): p50 {:.0} ms, p99 {:.0} ms",
        pct(&eng, 50.0),
        pct(&eng, 99.0)
    );
    let hq = |name: &str, q: f64| hist_quantile_ms(&m_start, &m_end, name, q);
    let _ = writeln!(
        summary,
        "latency split, from the engine's histograms over the window: engine (message received -> PQA handed to \
         the producer) p50 {:.1} ms, p99 {:.1} ms; broker (record timestamp -> message received) p50 {:.1} ms, \
         p99 {:.1} ms",
        hq("pqa_engine_latency_seconds", 0.5),
        hq("pqa_engine_latency_seconds", 0.99),
        hq("pqa_broker_latency_seconds", 0.5),
        hq("pqa_broker_latency_seconds", 0.99)
    );
    let _ = writeln!(
        summary,
        "output events read in all: {} ({} not matched to a sent event); engine announcements: {:.0}; dead letters: {:.0}",
        got.len(),
        unmatched,
        metric(&m_final, "pqa_announcements_total", None),
        metric(&m_final, "pqa_dead_letters_total", None)
    );
    let _ = writeln!(
        summary,
        "lag (sent - processed, 1 s samples) in the window: first {:.0}, last {:.0}, median {:.0}, max {:.0}; drained in {:.1} s after the last send ({:.0} of {:.0} processed); engine's pqa_consumer_lag_messages at the end {:.0}",
        lag_first, lag_last, pct(&lags, 50.0), lag_max, drain_s, processed, total, samples.last().map(|x| x.lag_gauge).unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        summary,
        "engine in the window: {:.0} events/s processed, {:.0} batches ({:.0} messages each on average), CPU {:.1} s in {:.1} s; mean ms per batch: process {:.1}, deliver {:.1}, changelog {:.1}, state_commit {:.1}",
        msgs / meas_wall,
        batches,
        msgs / batches.max(1.0),
        cpu_end - cpu_start,
        meas_wall,
        stage("process"),
        stage("deliver"),
        stage("changelog"),
        stage("state_commit")
    );
    // Keeping up: the lag grew by less than one second of input over the
    // window, and everything was processed once the input stopped.
    let keeps_up = lag_last - lag_first < s.rate as f64 && processed >= total;
    let _ = writeln!(
        summary,
        "keeps up: {}",
        if keeps_up {
            "yes (lag flat over the window, all input processed)".to_string()
        } else {
            format!(
                "NO: the lag grew by {:.0} events ({:.1} s of input) over the window{}; the latencies above are \
                 queueing behind that backlog, and (when not all input was processed) a lower bound",
                lag_last - lag_first,
                (lag_last - lag_first) / s.rate as f64,
                if processed >= total { "" } else { ", and not all input was processed before the drain limit" }
            )
        }
    );
    let _ = writeln!(summary, "raw: {stem}.csv, {stem}-lag.csv");
    print!("{summary}");
    std::fs::write(format!("{stem}.txt"), &summary).expect("summary");

    let mut csv = String::from("send_s,latency_ms,to_engine_output_ms,type,account\n");
    for (t, l, e, k, a) in &rows {
        let _ = writeln!(csv, "{t:.6},{l:.3},{e:.0},{k},acct-{a:05}");
    }
    std::fs::write(format!("{stem}.csv"), csv).expect("latency CSV");
    let mut lag_csv = String::from("t_s,sent,processed,lag,consumer_lag_gauge\n");
    for x in &samples {
        let _ = writeln!(
            lag_csv,
            "{:.3},{},{:.0},{:.0},{:.0}",
            x.t_ns as f64 / 1e9 - s.warmup_s as f64,
            x.sent,
            x.processed,
            lag(x),
            x.lag_gauge
        );
    }
    std::fs::write(format!("{stem}-lag.csv"), lag_csv).expect("lag CSV");
}
