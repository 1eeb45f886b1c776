//! A broker that skips records after a seek, and the engine that notices.
//!
//! tansu 0.6.0 (memory storage) answers a fetch at an offset inside a record
//! batch with the batches that start after it: the rest of the batch is
//! silently skipped. librdkafka's mock cluster returns whole batches, so the
//! engine's real consumer loop is run in-process here with an input tap that
//! does what such a broker does: after each seek to an offset that is not a
//! multiple of `B` (a "batch start"), records up to the next multiple are
//! never returned. Three runs on one state dir over a generated history:
//!
//! 1. the first part, with a correct broker;
//! 2. a restart at the offsets kept in RocksDB with B = 1,000: the first
//!    record of each partition comes past the expected offset; the engine
//!    must seek back until the skipped range is returned;
//! 3. a restart with B = 1,000,000: nothing at all comes back (the rest of
//!    the log is "one batch"), and only silence gives the skip away; the
//!    engine must probe back until the broker returns the log.
//!
//! At the end the output equals a clean replay's and the state of every
//! account equals the clean run's: nothing lost, nothing counted twice.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pqa_engine::config::Config;
use pqa_engine::http::Health;
use pqa_engine::shutdown::Shutdown;
use pqa_engine::sim::{SimConfig, SimEvent, Simulator};
use pqa_engine::source::{run_with, InputTap};
use pqa_engine::telemetry::Metrics;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;

const PARTITIONS: i32 = 4;

/// The tap: a broker that skips to the next multiple of `batch` after a seek.
/// With `after_rebalance`, also after each rebalance on every partition it
/// has returned records of, from the one after the last: librdkafka pauses
/// the partitions a member keeps while the group rebalances and fetches
/// them again from the application's position when it resumes them.
#[derive(Default)]
struct SkipsToBatchStart {
    batch: i64,
    after_rebalance: bool,
    skip_until: HashMap<i32, i64>,
    last: HashMap<i32, i64>,
    dropped: Arc<AtomicU64>,
    /// Partitions a rebalance left to be fetched inside a batch.
    armed_by_rebalance: Arc<AtomicU64>,
}

impl SkipsToBatchStart {
    fn fetch_from(&mut self, partition: i32, offset: i64) -> bool {
        if offset % self.batch == 0 {
            self.skip_until.remove(&partition);
            false
        } else {
            self.skip_until.insert(partition, (offset / self.batch + 1) * self.batch);
            true
        }
    }
}

impl InputTap for SkipsToBatchStart {
    fn positioned(&mut self, _topic: &str, partition: i32, offset: i64) {
        self.fetch_from(partition, offset);
    }

    fn passes(&mut self, _topic: &str, partition: i32, offset: i64) -> bool {
        match self.skip_until.get(&partition) {
            Some(until) if offset < *until => {
                self.dropped.fetch_add(1, Ordering::SeqCst);
                false
            }
            _ => {
                self.skip_until.remove(&partition);
                self.last.insert(partition, offset);
                true
            }
        }
    }

    fn rebalanced(&mut self) {
        if !self.after_rebalance {
            return;
        }
        let positions: Vec<(i32, i64)> = self.last.iter().map(|(p, last)| (*p, last + 1)).collect();
        for (partition, next) in positions {
            if self.fetch_from(partition, next) {
                self.armed_by_rebalance.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn produce_all(bootstrap: &str, events: &[SimEvent], ends: &mut BTreeMap<i32, i64>) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create().unwrap();
    produce_by_account(&producer, events, PARTITIONS, ends);
}

/// The engine running in this process, on a thread of its own.
struct Running {
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<Result<(), pqa_engine::source::RunError>>,
}

impl Running {
    fn start(cfg: &Config, tap: Option<Box<dyn InputTap>>) -> Running {
        let def = Arc::new(cfg.validate().unwrap());
        let (metrics, health, shutdown) = (Metrics::new(), Health::new(), Shutdown::new());
        let thread = {
            let (cfg, metrics, health, shutdown) = (cfg.clone(), metrics.clone(), health.clone(), shutdown.clone());
            std::thread::spawn(move || run_with(&cfg, def, metrics, health, &shutdown, tap))
        };
        Running { metrics, health, shutdown, thread }
    }

    /// Waits until Kafka's committed offsets reach `ends`.
    fn wait_for(&self, bootstrap: &str, ends: &BTreeMap<i32, i64>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !caught_up(bootstrap, ends) {
            assert!(!self.thread.is_finished(), "the engine stopped");
            let progress: Vec<String> = self
                .metrics
                .render()
                .lines()
                .filter(|l| l.starts_with("pqa_input_gap") || l.starts_with("pqa_events"))
                .map(str::to_string)
                .collect();
            assert!(Instant::now() < deadline, "the engine did not catch up with {ends:?}:\n{}", progress.join("\n"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the engine; returns its metrics and its `/readyz` warnings.
    fn stop(self) -> (Metrics, Vec<String>) {
        self.shutdown.trigger();
        self.thread.join().unwrap().unwrap();
        // (The health keeps a reader of the state: drop it with the run.)
        (self.metrics, self.health.warnings())
    }
}

/// Runs the engine in this process until Kafka's committed offsets reach
/// `ends`; returns its metrics and its `/readyz` warnings.
fn run_until_caught_up(
    cfg: &Config,
    bootstrap: &str,
    ends: &BTreeMap<i32, i64>,
    tap: Option<Box<dyn InputTap>>,
) -> (Metrics, Vec<String>) {
    let running = Running::start(cfg, tap);
    running.wait_for(bootstrap, ends);
    running.stop()
}

/// A generated history, its clean replay, and a mock cluster to read it from.
struct Setup {
    dir: tempfile::TempDir,
    events: Vec<SimEvent>,
    clean: Vec<serde_json::Value>,
    clean_state: std::path::PathBuf,
    _cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bootstrap: String,
    cfg: Config,
}

impl Setup {
    fn new(seed: u64, n: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<SimEvent> =
            Simulator::new(SimConfig { seed, accounts: 400, start_unix: 1_767_225_600, days: 60 }).take(n).collect();
        let (clean, clean_state) = clean_replay(dir.path(), events.iter().map(|e| e.json.as_str()));
        assert!(clean.len() > 10, "the history must produce announcements ({})", clean.len());
        let (cluster, bootstrap) = mock_kafka(PARTITIONS);
        let config = write_config(dir.path(), &bootstrap, &dir.path().join("state"), free_port(), "");
        let cfg = Config::load(Some(&config)).unwrap();
        Setup { dir, events, clean, clean_state, _cluster: cluster, bootstrap, cfg }
    }

    /// The output topic holds exactly the clean run's announcements, and
    /// every account's state equals the clean run's: nothing lost, nothing
    /// counted twice.
    fn assert_as_clean(&self) {
        let out = read_until(&self.bootstrap, "out", 1, Duration::from_secs(60), |r| {
            r.iter().map(|x| x.json()["id"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>().len()
                >= self.clean.len()
        });
        assert_same_output(&out, &self.clean, "");
        let accounts: BTreeSet<&str> = self.events.iter().map(|e| e.account.as_str()).collect();
        assert_same_state(&self.dir.path().join("state"), &self.clean_state, accounts.iter().copied());
    }
}

fn gaps(m: &Metrics, outcome: &str) -> (u64, u64) {
    (m.input_gaps.with_label_values(&[outcome]).get(), m.input_gap_records.with_label_values(&[outcome]).get())
}

#[test]
fn records_a_broker_skips_after_a_seek_are_found_and_applied() {
    let t = Setup::new(5, 24_000);
    assert!(t.clean.len() > 20, "the history must produce announcements ({})", t.clean.len());
    let Setup { events, bootstrap, cfg, .. } = &t;
    let bootstrap = bootstrap.as_str();

    // 1. The first part, read as any broker returns it.
    let mut ends = BTreeMap::new();
    produce_all(bootstrap, &events[..10_001], &mut ends);
    let first_ends = ends.clone();
    let (m, _) = run_until_caught_up(cfg, bootstrap, &ends, None);
    assert_eq!(gaps(&m, "recovered"), (0, 0), "no gap on a broker that returns whole batches");

    // 2. A restart on a broker that skips to the next multiple of 1,000.
    produce_all(bootstrap, &events[10_001..20_000], &mut ends);
    let dropped = Arc::new(AtomicU64::new(0));
    let tap = SkipsToBatchStart { batch: 1_000, dropped: dropped.clone(), ..Default::default() };
    let (m, warnings) = run_until_caught_up(cfg, bootstrap, &ends, Some(Box::new(tap)));
    let mid_batch: Vec<i64> = first_ends.values().copied().filter(|x| x % 1_000 != 0).collect();
    assert!(!mid_batch.is_empty(), "the restart must land inside a batch somewhere ({first_ends:?})");
    let skipped: u64 = mid_batch.iter().map(|x| (x / 1_000 + 1) * 1_000 - x).sum::<i64>() as u64;
    assert_eq!(
        gaps(&m, "recovered"),
        (mid_batch.len() as u64, skipped),
        "one recovered gap per partition restarted inside a batch, as long as the range skipped"
    );
    assert!(dropped.load(Ordering::SeqCst) >= skipped, "the tap dropped what the broker would have skipped");
    for lost in ["truncated", "unreadable"] {
        assert_eq!(gaps(&m, lost), (0, 0), "{lost}");
    }
    assert!(warnings.is_empty(), "nothing lost, nothing to warn of: {warnings:?}");
    assert!(m.duplicates_skipped.get() > 0, "the seek back re-reads records already applied, which are skipped");

    // 3. A restart where the rest of the log is one batch: the broker
    // returns nothing at all until the engine probes back to offset 0.
    produce_all(bootstrap, &events[20_000..], &mut ends);
    let dropped = Arc::new(AtomicU64::new(0));
    let tap = SkipsToBatchStart { batch: 1_000_000, dropped: dropped.clone(), ..Default::default() };
    let (m, warnings) = run_until_caught_up(cfg, bootstrap, &ends, Some(Box::new(tap)));
    assert!(dropped.load(Ordering::SeqCst) > 0, "the tap hid the tail");
    assert!(warnings.is_empty(), "{warnings:?}");
    for lost in ["truncated", "unreadable"] {
        assert_eq!(gaps(&m, lost), (0, 0), "{lost}");
    }
    assert!(m.duplicates_skipped.get() > 0, "the probe re-read records already applied");
    // The output topic holds exactly the clean run's announcements.
    t.assert_as_clean();
}

/// tansu 0.6.0 (memory storage) lost records with no seek of the engine's
/// to show it: when a second member joined, librdkafka paused the
/// partitions the engine kept and fetched them again from the engine's
/// position, inside a batch, and the broker returned the batches after it.
/// The engine watches the partitions it keeps through a rebalance as it
/// does after a seek.
#[test]
fn records_a_broker_skips_after_a_rebalance_are_found_and_applied() {
    let t = Setup::new(6, 16_000);
    let Setup { events, bootstrap, cfg, .. } = &t;
    let bootstrap = bootstrap.as_str();

    let mut ends = BTreeMap::new();
    produce_all(bootstrap, &events[..8_001], &mut ends);
    let armed = Arc::new(AtomicU64::new(0));
    let tap = SkipsToBatchStart {
        batch: 1_000,
        after_rebalance: true,
        armed_by_rebalance: armed.clone(),
        ..Default::default()
    };
    let running = Running::start(cfg, Some(Box::new(tap)));
    running.wait_for(bootstrap, &ends);

    // A second member joins the group and leaves again: two rebalances,
    // through which the engine keeps some of its partitions.
    let other: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "pqa-it")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    other.subscribe(&["events"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while other.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the second member got no partition");
        let _ = other.poll(Duration::from_millis(100));
    }
    let taken = other.assignment().unwrap().count();
    assert!(taken < PARTITIONS as usize, "the engine must keep partitions through the rebalance ({taken} taken)");
    drop(other);
    assert!(armed.load(Ordering::SeqCst) > 0, "a partition kept through a rebalance resumes inside a batch");

    produce_all(bootstrap, &events[8_001..], &mut ends);
    running.wait_for(bootstrap, &ends);
    let (m, warnings) = running.stop();
    for lost in ["truncated", "unreadable"] {
        assert_eq!(gaps(&m, lost), (0, 0), "{lost}");
    }
    assert!(warnings.is_empty(), "nothing lost, nothing to warn of: {warnings:?}");
    t.assert_as_clean();
}
