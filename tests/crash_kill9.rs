//! Effectively once under `kill -9`: a generated history of 200 k events is
//! preloaded into an in-process Kafka (librdkafka's mock cluster); the real
//! engine runs as a child process and is killed with SIGKILL at random
//! moments, ten times, each time restarted on the same state dir. At the end
//! the output topic must hold exactly the events of a clean `replay` of the
//! same history: the same ids (so nothing lost, nothing new), every repeat
//! byte-identical to its first copy, and the state of sampled accounts equal
//! to the clean run's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use pqa_engine::sim::{SimConfig, Simulator};
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::producer::BaseProducer;

const EVENTS: usize = 200_000;
const PARTITIONS: i32 = 24;
const KILLS: usize = 10;
/// Every fourth stop is a SIGTERM instead.
const TERMS: usize = 3;

fn history() -> Vec<pqa_engine::sim::SimEvent> {
    Simulator::new(SimConfig { seed: 11, accounts: 2500, start_unix: 1_767_225_600, days: 90 }).take(EVENTS).collect()
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_repeats_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let events = history();

    // The reference: a clean replay of the same history.
    let (clean, clean_state) = clean_replay(dir.path(), events.iter().map(|e| e.json.as_str()));
    assert!(clean.len() > 100, "the history must produce announcements ({})", clean.len());

    // Kafka with the history preloaded, keyed by account.
    let (_cluster, bootstrap) = mock_kafka(PARTITIONS);
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "5").create().unwrap();
    let mut ends: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    produce_by_account(&producer, &events, PARTITIONS, &mut ends);

    let state = dir.path().join("state");
    let port = free_port();
    let config = write_config(dir.path(), &bootstrap, &state, port, "");
    // A cache far smaller than the 2,500 accounts (and their users): records leave it and are
    // read back from RocksDB all the time, across the kills. (The engines
    // started below inherit the variable; the clean replay above ran with
    // the default.)
    std::env::set_var("PQA_STATE__CACHE_ACCOUNTS", "200");
    std::env::set_var("PQA_STATE__CACHE_USERS", "200");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let (mut kills, mut terms) = (0, 0);
    for n in 0..KILLS + TERMS {
        let mut engine = EngineProcess::start(&config, port, dir.path(), n);
        engine.wait_ready(Duration::from_secs(90));
        std::thread::sleep(Duration::from_millis(rng.random_range(150..1500)));
        assert!(engine.child.try_wait().unwrap().is_none(), "engine died: {}", engine.log());
        if n % 4 == 3 {
            // SIGTERM under load: finish the batch, commit, exit 0, quickly.
            let t = Instant::now();
            let st = engine.terminate(Duration::from_secs(20));
            assert!(st.success(), "SIGTERM exit {st}: {}", engine.log());
            assert!(t.elapsed() < Duration::from_secs(15), "SIGTERM took {:?}", t.elapsed());
            terms += 1;
        } else {
            engine.child.kill().unwrap(); // SIGKILL
            engine.child.wait().unwrap();
            kills += 1;
        }
    }
    assert_eq!((kills, terms), (KILLS, TERMS));

    // The last run goes to the end, then stops cleanly.
    let mut engine = EngineProcess::start(&config, port, dir.path(), KILLS);
    engine.wait_ready(Duration::from_secs(90));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !caught_up(&bootstrap, &ends) {
        let progress = engine
            .http_get("/metrics")
            .map(|(_, m)| {
                m.lines()
                    .filter(|l| l.starts_with("pqa_") && !l.contains("bucket"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        assert!(Instant::now() < deadline, "engine did not catch up:\n{progress}\n{}", engine.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let st = engine.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st}");
    drop(engine);

    // Compare the output topic with the clean run.
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| {
        r.iter().map(|x| x.json()["id"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>().len() >= clean.len()
    });
    let (records, distinct) = assert_same_output(&out, &clean, "");
    eprintln!(
        "{} kills, {terms} SIGTERMs; {} output records, {} distinct, {} repeats; {} announcements in the clean run",
        kills,
        records,
        distinct,
        records - distinct,
        clean.len()
    );

    // The state of sampled accounts equals the clean run's.
    let accounts: BTreeSet<&str> = events.iter().map(|e| e.account.as_str()).collect();
    assert_same_state(&state, &clean_state, accounts.iter().step_by(25).copied());

    // Upstream retries of events applied before the kills, within the
    // dedupe window: each is counted once (its id was made durable with its
    // batch and read back at every start), and no state moves.
    let newest = events.iter().map(|e| e.time).max().unwrap();
    let retries: Vec<_> = events.iter().filter(|e| e.time > newest - 12 * 3600).step_by(5).take(200).cloned().collect();
    assert!(retries.len() >= 50, "{} retries", retries.len());
    produce_by_account(&producer, &retries, PARTITIONS, &mut ends);
    let mut engine = EngineProcess::start(&config, port, dir.path(), KILLS + TERMS + 1);
    engine.wait_ready(Duration::from_secs(90));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !caught_up(&bootstrap, &ends) {
        assert!(Instant::now() < deadline, "engine did not catch up with the retries:\n{}", engine.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = engine.http_get("/metrics").map(|(_, m)| m).unwrap_or_default();
    let metric = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    let duplicates = metric("pqa_duplicate_events_total");
    let in_memory = metric("pqa_dedupe_ids_in_memory");
    let st = engine.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st}");
    drop(engine);
    assert_eq!(duplicates as usize, retries.len(), "every retry is a duplicate");
    assert!(in_memory as usize >= retries.len(), "the window's ids are in memory: {in_memory}");
    assert_same_state(&state, &clean_state, accounts.iter().step_by(25).copied());
}
