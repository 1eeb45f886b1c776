//! Restore time: how long a partition's state takes to follow it to another
//! instance, through the changelog topic.
//!
//! Builds the state of `PQA_BENCH_ACCOUNTS` accounts (default 100 000; three
//! users and a handful of events each) on one input partition with the real
//! engine, writes its changelog records to the changelog topic with the real
//! writer, then restores that partition into fresh state directories with
//! the real reader and reports the median time.
//!
//! Needs a real broker: `PQA_BENCH_BOOTSTRAP=127.0.0.1:9092` (for example tansu
//! started by `benches/broker.sh start`). Without one it uses librdkafka's
//! mock cluster, which keeps only 5 MiB a partition, so it lowers the count
//! to 2 000 accounts.
//!
//! `cargo bench --bench restore`

use std::sync::Arc;
use std::time::{Duration, Instant};

use pqa_engine::changelog::Changelog;
use pqa_engine::config::Config;
use pqa_engine::engine::commit::Committer;
use pqa_engine::engine::{Engine, InputRecord, Output};
use pqa_engine::http::Health;
use pqa_engine::shutdown::Shutdown;
use pqa_engine::state::Store;
use pqa_engine::telemetry::Metrics;
use rdkafka::mocking::MockCluster;

fn main() {
    let bootstrap = std::env::var("PQA_BENCH_BOOTSTRAP").ok();
    let mock = match bootstrap {
        Some(_) => None,
        None => Some(MockCluster::new(1).expect("mock cluster")),
    };
    let accounts: usize = std::env::var("PQA_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if mock.is_some() { 2_000 } else { 100_000 });
    let runs: usize = std::env::var("PQA_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let bootstrap = bootstrap.unwrap_or_else(|| mock.as_ref().unwrap().bootstrap_servers());

    let mut cfg = Config::default_config();
    cfg.kafka.bootstrap_servers = bootstrap.clone();
    let nonce = std::process::id();
    cfg.kafka.group_id = format!("pqa-restore-bench-{nonce}");
    cfg.kafka.input_topics = vec![format!("pqa-restore-bench-input-{nonce}")];
    if let Some(m) = &mock {
        m.create_topic(&cfg.kafka.input_topics[0], 1, 1).unwrap();
        m.create_topic(&cfg.kafka.changelog_topic_name(), 1, 1).unwrap();
    } else {
        // The changelog's partition count follows the input topic's.
        create_input_topic(&bootstrap, &cfg.kafka.input_topics[0]);
    }
    let def = Arc::new(cfg.validate().expect("valid config"));
    let shutdown = Shutdown::new();
    let health = Health::new();
    let changelog = Arc::new(Changelog::new(&cfg.kafka, Metrics::new()).expect("changelog client"));
    changelog.ensure_topic(&cfg.kafka.input_topics[0], &shutdown, &health).expect("changelog topic");

    // 1. The state of `accounts` accounts on partition 0, written to the
    // changelog as the engine writes it (one commit per 20 000 events).
    let src = tempfile::tempdir().unwrap();
    let mut scfg = cfg.state.clone();
    scfg.dir = src.path().to_path_buf();
    let mut store = Store::open(&scfg).unwrap();
    store.set_changelog(true);
    let mut engine = Engine::new(def.clone(), cfg.input.clone(), store, Metrics::new()).unwrap();
    let mut out = Output::default();
    let (mut offset, mut records, mut bytes) = (0i64, 0usize, 0usize);
    let started = Instant::now();
    let base = 1_767_225_600_000i64;
    let events = ["Report Created", "Dashboard Viewed", "Invite Sent", "Export Created"];
    for a in 0..accounts {
        for u in 0..3 {
            for (k, ev) in events.iter().enumerate().take(2 + (a + u) % 3) {
                let ts = base + (a as i64 % 86_400) * 1000 + (u * 10 + k) as i64 * 60_000;
                let json = format!(
                    r#"{{"type":"track","event":"{ev}","userId":"acct-{a}-user-{u}","timestamp":{ts},"messageId":"m-{a}-{u}-{k}","context":{{"groupId":"acct-{a}"}}}}"#
                );
                engine
                    .process(
                        &InputRecord {
                            topic: &cfg.kafka.input_topics[0],
                            partition: 0,
                            offset,
                            key: None,
                            payload: Some(json.as_bytes()),
                            timestamp_ms: None,
                        },
                        &mut out,
                    )
                    .unwrap();
                offset += 1;
                if offset % 20_000 == 0 {
                    flush(&mut engine, &changelog, &shutdown, &mut records, &mut bytes);
                    out.clear();
                }
            }
        }
    }
    flush(&mut engine, &changelog, &shutdown, &mut records, &mut bytes);
    eprintln!(
        "built {accounts} accounts from {offset} events: {records} changelog records, {:.1} MiB, in {:.1} s",
        bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    // What the broker states as the log's end. tansu 0.6.0 with memory
    // storage states the start of its last record batch plus one, not the
    // end: the restore must not trust it (it reads until the log has
    // nothing more), and every acknowledged commit must come back.
    let stated = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer =
            rdkafka::config::ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        let (low, high) = c.fetch_watermarks(&cfg.kafka.changelog_topic_name(), 0, Duration::from_secs(10)).unwrap();
        (high - low) as usize
    };
    if stated != records {
        eprintln!("the broker states {stated} changelog records for the {records} it acknowledged");
    }
    // 2. Restore partition 0 into fresh state, several times.
    let mut times = Vec::new();
    for run in 0..runs {
        let dst = tempfile::tempdir().unwrap();
        let mut dcfg = cfg.state.clone();
        dcfg.dir = dst.path().to_path_buf();
        let mut fresh = Store::open(&dcfg).unwrap();
        let t = Instant::now();
        let done = changelog.restore(&mut fresh, 0, &shutdown, &health).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(done.next_input_offset, Some(offset), "restored up to the last commit");
        assert_eq!(done.records as usize, records, "every acknowledged record read back");
        assert!(fresh.reader().account(&format!("acct-{}", accounts - 1)).unwrap().is_some());
        eprintln!(
            "run {run}: restored {} records in {secs:.2} s ({:.0} records/s)",
            done.records,
            done.records as f64 / secs
        );
        times.push(secs);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "restore of one partition with {accounts} accounts ({records} records, {:.1} MiB): median {:.2} s over {runs} runs",
        bytes as f64 / 1048576.0,
        times[times.len() / 2]
    );
    drop(mock);
}

fn flush(engine: &mut Engine, changelog: &Arc<Changelog>, shutdown: &Shutdown, records: &mut usize, bytes: &mut usize) {
    let mut committer: Committer<(usize, usize), pqa_engine::engine::EngineError> = Committer::new();
    // The closure runs in place (commit_now): borrow nothing across it.
    let (changelog, shutdown) = (changelog.clone(), shutdown.clone());
    let settled = committer
        .commit_now(
            engine,
            Box::new(move |prepared| {
                let n = prepared.changelog.len();
                let b = prepared.changelog.bytes();
                let next = changelog.write(&prepared.changelog, &shutdown, &|_| {}).expect("changelog write");
                Ok((next, (n, b)))
            }),
        )
        .unwrap();
    *records += settled.extra.0;
    *bytes += settled.extra.1;
}

/// Creates a one-partition input topic on a real broker.
fn create_input_topic(bootstrap: &str, name: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let r = rt.block_on(admin.create_topics([&topic], &opts)).expect("create topic");
    for x in r {
        x.expect("input topic created");
    }
    std::thread::sleep(Duration::from_secs(1));
}
