//! Scale-out: state follows its partitions through the changelog topic.
//!
//! Three instances share one consumer group, each with its own state dir.
//! The history arrives in three phases; in the second, while events flow,
//! one instance is killed with SIGKILL for good and its partitions move to
//! the other two, which restore their state from the changelog before
//! processing them. At the end the output equals a clean `replay` of the same
//! history (the same ids, so nothing lost and nothing counted twice), and for
//! every partition the state of its final owner equals the clean run's for
//! a sample of accounts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use pqa_engine::config::Config;
use pqa_engine::sim::{SimConfig, SimEvent, Simulator};
use pqa_engine::state::Store;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;

const EVENTS: usize = 30_000;
const PARTITIONS: i32 = 6;

fn metric(engine: &EngineProcess, name: &str) -> f64 {
    engine.metric(name)
}

fn wait_caught_up(bootstrap: &str, ends: &BTreeMap<i32, i64>, engines: &[&EngineProcess], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !caught_up(bootstrap, ends) {
        if Instant::now() > deadline {
            let logs: Vec<String> = engines.iter().map(|e| e.log()).collect();
            panic!("the group did not catch up with {ends:?}:\n{}", logs.join("\n-----\n"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

struct Instance {
    dir: PathBuf,
    state: PathBuf,
    config: PathBuf,
    port: u16,
}

fn instance(root: &Path, name: &str, bootstrap: &str) -> Instance {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    let port = free_port();
    let config = write_config(&dir, bootstrap, &state, port, "");
    Instance { dir, state, config, port }
}

/// A simulated history, the state and output of its clean `replay` (the
/// reference), and a mock cluster with a producer to send it through.
struct Setup {
    events: Vec<SimEvent>,
    clean: Vec<serde_json::Value>,
    clean_state: PathBuf,
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bootstrap: String,
    producer: BaseProducer,
}

fn setup(root: &Path, seed: u64) -> Setup {
    let events: Vec<SimEvent> =
        Simulator::new(SimConfig { seed, accounts: 300, start_unix: 1_767_225_600, days: 60 }).take(EVENTS).collect();
    let (clean, clean_state) = clean_replay(root, events.iter().map(|e| e.json.as_str()));
    assert!(clean.len() > 50, "the history must produce announcements ({})", clean.len());
    let (cluster, bootstrap) = mock_kafka(PARTITIONS);
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "5").create().unwrap();
    Setup { events, clean, clean_state, cluster, bootstrap, producer }
}

#[test]
fn three_instances_one_killed_for_good_state_follows_partitions() {
    let root = tempfile::tempdir().unwrap();
    let Setup { events, clean, clean_state, cluster, bootstrap, producer } = setup(root.path(), 5);
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let third = EVENTS / 3;

    // Phase 1: three instances share the first third.
    let (a, b, c) = (
        instance(root.path(), "a", &bootstrap),
        instance(root.path(), "b", &bootstrap),
        instance(root.path(), "c", &bootstrap),
    );
    let mut ea = EngineProcess::start(&a.config, a.port, &a.dir, 0);
    let mut eb = EngineProcess::start(&b.config, b.port, &b.dir, 0);
    let mut ec = EngineProcess::start(&c.config, c.port, &c.dir, 0);
    produce_by_account(&producer, &events[..third], PARTITIONS, &mut ends);
    for e in [&mut ea, &mut eb, &mut ec] {
        e.wait_ready(Duration::from_secs(90));
    }
    wait_caught_up(&bootstrap, &ends, &[&ea, &eb, &ec], Duration::from_secs(180));
    // Every instance ends up with partitions (the group has settled).
    let deadline = Instant::now() + Duration::from_secs(60);
    while [&ea, &eb, &ec].iter().any(|e| metric(e, "pqa_assigned_partitions") < 1.0) {
        assert!(Instant::now() < deadline, "some instance never got a partition");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Phase 2: the next third flows; C is killed for good mid-stream.
    produce_by_account(&producer, &events[third..2 * third], PARTITIONS, &mut ends);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ec.child.try_wait().unwrap().is_none(), "C died on its own: {}", ec.log());
    ec.child.kill().unwrap();
    ec.child.wait().unwrap();
    wait_caught_up(&bootstrap, &ends, &[&ea, &eb], Duration::from_secs(180));

    // Phase 3: the rest, to the two survivors.
    produce_by_account(&producer, &events[2 * third..], PARTITIONS, &mut ends);
    wait_caught_up(&bootstrap, &ends, &[&ea, &eb], Duration::from_secs(180));
    let restored =
        metric(&ea, "pqa_changelog_restored_records_total") + metric(&eb, "pqa_changelog_restored_records_total");
    assert!(restored > 0.0, "the survivors restored nothing from the changelog:\n{}\n-----\n{}", ea.log(), eb.log());
    for e in [&mut ea, &mut eb] {
        let st = e.terminate(Duration::from_secs(30));
        assert!(st.success(), "{st}: {}", e.log());
    }
    let logs = format!("{}\n-----\n{}", ea.log(), eb.log());
    drop((ea, eb, ec));

    // The changelog kept everything (the mock cluster keeps at most 5 MiB a
    // partition; a truncated changelog would void this test).
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    for p in 0..PARTITIONS {
        let (low, high) = probe.fetch_watermarks("pqa-it-changelog", p, Duration::from_secs(5)).unwrap();
        assert_eq!(low, 0, "changelog partition {p} was truncated by the mock cluster (high {high})");
    }
    drop(probe);

    // Output: exactly the clean run's announcements, repeats identical.
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| {
        r.iter().map(|x| x.json()["id"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>().len() >= clean.len()
    });
    let (records, distinct) = assert_same_output(&out, &clean, &logs);
    eprintln!(
        "{} output records, {} distinct, {} repeats; {} in the clean run; {restored} changelog records restored",
        records,
        distinct,
        records - distinct,
        clean.len()
    );

    // State: per partition, the final owner's state equals the clean run's.
    let open = |d: &Path| {
        let mut c = Config::default_config().state;
        c.dir = d.to_path_buf();
        Store::open(&c).unwrap()
    };
    let stores = [open(&a.state), open(&b.state)];
    let reference = open(&clean_state);
    let owner: BTreeMap<i32, usize> = (0..PARTITIONS)
        .map(|p| {
            let offs: Vec<i64> = stores.iter().map(|s| s.reader().offset("events", p).unwrap().unwrap_or(0)).collect();
            let i = if offs[0] >= offs[1] { 0 } else { 1 };
            assert_eq!(offs[i], ends[&p], "partition {p} not processed to its end by its owner ({offs:?})");
            (p, i)
        })
        .collect();
    let accounts: BTreeSet<&str> = events.iter().map(|e| e.account.as_str()).collect();
    let mut compared = 0;
    for acct in accounts.iter().step_by(7) {
        let s = &stores[owner[&partition_of(acct, PARTITIONS)]];
        // The input partition is where the account ran (a replay reads
        // one pseudo-partition), not what it did.
        let x = s.reader().account(acct).unwrap().map(|mut a| {
            assert_eq!(a.partition, Some(partition_of(acct, PARTITIONS)), "{acct}: its input partition");
            a.partition = None;
            a
        });
        let y = reference.reader().account(acct).unwrap().map(|mut a| {
            a.partition = None;
            a
        });
        assert!(x.is_some(), "{acct} missing");
        assert_eq!(x, y, "state of {acct} differs from the clean run");
        assert_eq!(s.reader().members(acct).unwrap(), reference.reader().members(acct).unwrap(), "members of {acct}");
        compared += 1;
    }
    assert!(compared > 20);
    drop(cluster);
}

/// `[kafka] workers = n` in the config of `i`.
fn with_workers(i: &Instance, n: usize) {
    let text = std::fs::read_to_string(&i.config).unwrap();
    let text = match text.find("\nworkers = ") {
        Some(at) => {
            let end = at + 1 + text[at + 1..].find('\n').unwrap();
            format!("{}\nworkers = {n}{}", &text[..at], &text[end..])
        }
        None => text.replacen("max_batch_wait_ms = 20", &format!("max_batch_wait_ms = 20\nworkers = {n}"), 1),
    };
    std::fs::write(&i.config, text).unwrap();
}

/// Workers in one process are instances of the group in threads: three
/// workers share the partitions, each with its own state; the process is
/// killed mid-stream and comes back with two workers, so the third one's
/// partitions move and their state follows through the changelog. The
/// output equals a clean replay's; each partition's state, in the worker
/// that owns it last, equals the clean run's; `/metrics` and
/// `/accounts/{id}` answer for the process as a whole.
#[test]
fn workers_share_the_partitions_and_state_follows_them_between_workers() {
    let root = tempfile::tempdir().unwrap();
    let Setup { events, clean, clean_state, cluster, bootstrap, producer } = setup(root.path(), 7);
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let half = EVENTS / 2;
    let a = instance(root.path(), "a", &bootstrap);
    with_workers(&a, 3);
    let worker_states = |n: usize| -> Vec<PathBuf> {
        (0..n).map(|i| if i == 0 { a.state.clone() } else { a.state.join("workers").join(i.to_string()) }).collect()
    };

    // Three workers take the first half.
    let mut e = EngineProcess::start(&a.config, a.port, &a.dir, 0);
    produce_by_account(&producer, &events[..half], PARTITIONS, &mut ends);
    e.wait_ready(Duration::from_secs(90));
    wait_caught_up(&bootstrap, &ends, &[&e], Duration::from_secs(180));
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&e, "pqa_assigned_partitions") < PARTITIONS as f64 {
        assert!(Instant::now() < deadline, "the workers never held every partition: {}", e.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&e, "pqa_account_partition_changes_total"), 0.0, "the input is keyed by account");
    let applied = metric(&e, "pqa_events_total") + metric(&e, "pqa_duplicate_events_total");
    assert!(applied >= half as f64 * 0.9, "/metrics sums the workers' events ({applied} of {half})");
    assert_eq!(e.http_get("/readyz").map(|r| r.0), Some(200), "{}", e.log());
    let some_account = &events[0].account;
    let (status, body) = e.http_get(&format!("/accounts/{some_account}")).unwrap();
    assert_eq!(status, 200, "{body}");
    // `/definitions` counts every worker's announcements (published
    // every half second).
    let announced = metric(&e, "pqa_announcements_total");
    assert!(announced > 0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = e.http_get("/definitions").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let counts = &v["definitions"][0]["announcements"];
        let sum: f64 = counts.as_object().map(|m| m.values().filter_map(|x| x.as_f64()).sum()).unwrap_or(0.0);
        if sum == announced {
            break;
        }
        assert!(Instant::now() < deadline, "/definitions counts {sum} announcements, /metrics {announced}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Killed mid-stream of the rest; back with two workers.
    produce_by_account(&producer, &events[half..half + half / 2], PARTITIONS, &mut ends);
    std::thread::sleep(Duration::from_millis(200));
    e.child.kill().unwrap();
    e.child.wait().unwrap();
    drop(e);
    with_workers(&a, 2);
    let mut e = EngineProcess::start(&a.config, a.port, &a.dir, 1);
    produce_by_account(&producer, &events[half + half / 2..], PARTITIONS, &mut ends);
    e.wait_ready(Duration::from_secs(90));
    wait_caught_up(&bootstrap, &ends, &[&e], Duration::from_secs(180));
    let restored = metric(&e, "pqa_changelog_restored_records_total");
    assert!(restored > 0.0, "the third worker's partitions were not restored from the changelog: {}", e.log());
    let st = e.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st}: {}", e.log());
    let logs = e.log();
    drop(e);

    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| {
        r.iter().map(|x| x.json()["id"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>().len() >= clean.len()
    });
    assert_same_output(&out, &clean, &logs);

    // Each partition's state is in the worker that read it to its end,
    // equal to the clean run's.
    let open = |d: &Path| {
        let mut c = Config::default_config().state;
        c.dir = d.to_path_buf();
        Store::open(&c).unwrap()
    };
    let stores: Vec<Store> = worker_states(2).iter().map(|d| open(d)).collect();
    let reference = open(&clean_state);
    let mut compared = 0;
    for acct in events.iter().map(|e| e.account.as_str()).collect::<BTreeSet<_>>().iter().step_by(7) {
        let p = partition_of(acct, PARTITIONS);
        let owner = stores
            .iter()
            .find(|s| s.reader().offset("events", p).unwrap() == Some(ends[&p]))
            .unwrap_or_else(|| panic!("no worker read partition {p} to its end"));
        let strip = |a: Option<pqa_engine::state::AccountState>| {
            a.map(|mut a| {
                a.partition = None;
                a
            })
        };
        assert_eq!(
            strip(owner.reader().account(acct).unwrap()),
            strip(reference.reader().account(acct).unwrap()),
            "state of {acct} differs from the clean run"
        );
        assert_eq!(
            owner.reader().members(acct).unwrap(),
            reference.reader().members(acct).unwrap(),
            "members of {acct}"
        );
        compared += 1;
    }
    assert!(compared > 20);

    // `inspect` finds an account in the worker's state that holds it.
    let acct = events
        .iter()
        .map(|e| e.account.as_str())
        .find(|a| {
            let p = partition_of(a, PARTITIONS);
            stores[1].reader().offset("events", p).unwrap() == Some(ends[&p])
        })
        .expect("an account of the second worker");
    let want_seq = reference.reader().account(acct).unwrap().unwrap().seq;
    drop(stores);
    let out =
        std::process::Command::new(BIN).args(["inspect", "--state-dir"]).arg(&a.state).arg(acct).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"]["seq"], want_seq, "{v}");
    drop(cluster);
}
