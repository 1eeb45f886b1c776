//! `pqa-engine run` end to end against an in-process Kafka (librdkafka's
//! mock cluster, the real protocol on loopback): events in, PQAs out on the
//! output topic, bad messages on the dead-letter topic with their reason,
//! HTTP endpoints, SIGTERM, and a restart on the same state dir that does
//! not repeat a PQA.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;

fn qualified_pairs(records: &[Record]) -> BTreeMap<(String, String), usize> {
    let mut pairs = BTreeMap::new();
    for r in records {
        let v = r.json();
        if v["type"] == "pqa.account.qualified" {
            for rule in v["data"]["rules"].as_array().unwrap() {
                *pairs
                    .entry((v["subject"].as_str().unwrap().to_string(), rule.as_str().unwrap().to_string()))
                    .or_insert(0) += 1;
            }
        }
    }
    pairs
}

#[test]
fn run_end_to_end_with_dlq_http_sigterm_and_restart() {
    let (_cluster, bootstrap) = mock_kafka(2);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let config = write_config(dir.path(), &bootstrap, &state, port, "");

    let mut engine = EngineProcess::start(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));

    // Good events: a hand-raiser (acct-h) and a team of 7 (acct-t), plus a
    // team of 6 (acct-six) that must not qualify.
    let p = producer(&bootstrap);
    let mut recs: Vec<(Option<&str>, Option<Vec<u8>>)> = Vec::new();
    recs.push((Some("acct-h"), Some(track("h1", Some("acct-h"), "Board Created", "2026-01-05T09:00:00Z"))));
    recs.push((Some("acct-h"), Some(track("h1", Some("acct-h"), "Contact Sales Submitted", "2026-01-05T10:00:00Z"))));
    let users: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    for (i, u) in users.iter().enumerate() {
        recs.push((
            Some("acct-t"),
            Some(track(u, Some("acct-t"), "Card Moved", &format!("2026-01-06T{:02}:00:00Z", 8 + i))),
        ));
    }
    for i in 0..6 {
        recs.push((
            Some("acct-six"),
            Some(track(&format!("s{i}"), Some("acct-six"), "Card Moved", "2026-01-06T12:00:00Z")),
        ));
    }
    // Bad ones, each with a specific reason.
    let bad: Vec<(Option<Vec<u8>>, &str)> = vec![
        (Some(b"this is not json".to_vec()), "invalid_json"),
        (Some(br#"{"type":"track","event":"x","timestamp":"2026-01-05T09:00:00Z"}"#.to_vec()), "missing_user_id"),
        (None, "empty"),
        (Some(b"[1,2,3]".to_vec()), "not_an_object"),
        (Some(track("nobody", None, "Card Moved", "2026-01-05T09:00:00Z")), "no_account"),
        (Some(vec![b'{', 0xff, b'}']), "invalid_utf8"),
    ];
    for (v, _) in &bad {
        recs.push((Some("bad"), v.clone()));
    }
    produce(&p, "events", &recs);

    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| qualified_pairs(r).len() >= 2);
    let pairs = qualified_pairs(&out);
    let want: BTreeMap<(String, String), usize> =
        [(("acct-h".into(), "hand_raiser".into()), 1), (("acct-t".into(), "team_adoption".into()), 1)]
            .into_iter()
            .collect();
    assert_eq!(pairs, want, "log:\n{}", engine.log());
    for r in &out {
        let v = r.json();
        assert_eq!(r.key.as_deref(), v["subject"].as_str().map(str::as_bytes), "key = account id");
        assert_eq!(r.headers.get("ce_type").map(String::as_str), v["type"].as_str());
        assert_eq!(v["specversion"], "1.0");
    }
    let hand = out.iter().map(Record::json).find(|v| v["subject"] == "acct-h").unwrap();
    assert_eq!(hand["time"], "2026-01-05T10:00:00Z", "time of the triggering event");
    assert_eq!(hand["data"]["leads"][0]["user_id"], "h1");

    let dlq = read_until(&bootstrap, "dlq", 1, Duration::from_secs(30), |r| r.len() >= bad.len());
    assert_eq!(dlq.len(), bad.len(), "every bad message is dead-lettered once");
    let mut reasons: Vec<&str> = dlq.iter().map(|r| r.headers["pqa.reason"].as_str()).collect();
    let mut want_reasons: Vec<&str> = bad.iter().map(|b| b.1).collect();
    reasons.sort_unstable();
    want_reasons.sort_unstable();
    assert_eq!(reasons, want_reasons);
    for r in &dlq {
        assert_eq!(r.headers["pqa.source.topic"], "events");
        assert!(r.headers["pqa.source.partition"].parse::<i32>().is_ok());
        assert!(r.headers["pqa.source.offset"].parse::<i64>().is_ok());
        assert!(!r.headers["pqa.detail"].is_empty());
        let original = bad.iter().find(|b| b.1 == r.headers["pqa.reason"]).unwrap();
        assert_eq!(
            r.payload.clone().unwrap_or_default(),
            original.0.clone().unwrap_or_default(),
            "original bytes kept"
        );
    }

    // HTTP: metrics, readiness, the account explanation.
    let (code, metrics) = engine.http_get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains(r#"pqa_dead_letters_total{reason="invalid_json"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"pqa_events_total{type="track"} 15"#), "{metrics}");
    assert!(metrics.contains(r#"pqa_qualified_total{rule="team_adoption",tier="#), "{metrics}");
    assert_eq!(engine.http_get("/healthz").unwrap().0, 200);
    // Output is acknowledged before state commits: wait for the commit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        let (code, body) = engine.http_get("/accounts/acct-six").unwrap();
        if code == 200 || Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["metrics"]["active_users_28d"], 6.0);
    assert_eq!(v["qualified"], false);
    let team = v["rules"].as_array().unwrap().iter().find(|r| r["name"] == "team_adoption").unwrap();
    assert_eq!(team["fires"], false);
    assert_eq!(team["inputs"]["active_users_28d"], 6.0, "why not: the number it looked at");
    assert_eq!(engine.http_get("/accounts/nope").unwrap().0, 404);

    // SIGTERM: drains, commits, exits 0.
    let st = engine.terminate(Duration::from_secs(30));
    assert!(st.success(), "exit status {st}; log:\n{}", engine.log());
    drop(engine);

    // Restart on the same state: a repeat hand-raise inside the cooldown and
    // a 7th user for acct-six; nothing earlier is announced again.
    let mut engine = EngineProcess::start(&config, port, dir.path(), 2);
    engine.wait_ready(Duration::from_secs(60));
    produce(
        &p,
        "events",
        &[
            (Some("acct-h"), Some(track("h1", Some("acct-h"), "Demo Requested", "2026-01-07T10:00:00Z"))),
            (Some("acct-six"), Some(track("s6", Some("acct-six"), "Card Moved", "2026-01-07T12:00:00Z"))),
        ],
    );
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| qualified_pairs(r).len() >= 3);
    let pairs = qualified_pairs(&out);
    let want: BTreeMap<(String, String), usize> = [
        (("acct-h".into(), "hand_raiser".into()), 1),
        (("acct-six".into(), "team_adoption".into()), 1),
        (("acct-t".into(), "team_adoption".into()), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(pairs, want, "log:\n{}", engine.log());
    let ids: BTreeSet<String> = out.iter().map(|r| r.json()["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), out.len(), "no event repeated");
    // The state is committed right after the output is acknowledged (and
    // the changelog written): wait for it rather than race it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = engine.http_get("/accounts/acct-six").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["metrics"]["active_users_28d"] == 7.0 {
            break;
        }
        assert!(Instant::now() < deadline, "state resumed from RocksDB, not replayed: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, metrics) = engine.http_get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"pqa_events_total{type="track"} 2"#),
        "the restarted engine applied only the 2 new events: {metrics}"
    );
    let st = engine.terminate(Duration::from_secs(30));
    assert!(st.success(), "exit status {st}");
}

#[test]
fn validate_reports_every_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[kafka]
input_topics = []
[http]
addr = "everywhere"
[definition]
version = "x"
cooldown = "30d"
[[definition.metrics]]
name = "users"
kind = "active_users"
window = "28 fortnights"
[[definition.rules]]
name = "big"
when = "userz >= 7"
[[definition.tiers]]
name = "warm"
min_score = 0
"#,
    )
    .unwrap();
    let out = std::process::Command::new(BIN).args(["validate", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in
        ["kafka.input_topics", "http.addr", "definition.metrics[0].window", "definition.rules[0].when", "userz"]
    {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
    let ok = std::process::Command::new(BIN)
        .args(["validate", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/pqa-engine.toml")])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn demo_with_duration_prints_a_pqa_and_exits_zero() {
    let out = std::process::Command::new(BIN)
        .args(["demo", "--duration", "20", "--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let pqa_lines = stdout.lines().filter(|l| l.contains("] PQA ")).count();
    assert!(pqa_lines >= 1, "no PQA printed:\n{stdout}");
}

#[test]
fn broker_outage_makes_it_unready_then_it_resumes_without_loss() {
    let (cluster, bootstrap) = mock_kafka(2);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &bootstrap,
        &dir.path().join("state"),
        port,
        "[kafka.properties]\n\"statistics.interval.ms\" = \"500\"\n",
    );
    let mut engine = EngineProcess::start(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));
    let p = producer(&bootstrap);
    produce(&p, "events", &[(Some("a1"), Some(track("u1", Some("a1"), "Demo Requested", "2026-01-05T10:00:00Z")))]);
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(qualified_pairs(&out).len(), 1);

    // The only broker goes down: /readyz says so.
    cluster.broker_down(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match engine.http_get("/readyz") {
            Some((503, body)) => {
                assert!(body.contains("broker"), "{body}");
                break;
            }
            _ if std::time::Instant::now() > deadline => panic!("still ready with the broker down: {}", engine.log()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    assert_eq!(engine.http_get("/healthz").unwrap().0, 200, "alive, just not ready");

    // Back up: ready again, and events sent meanwhile are processed.
    cluster.broker_up(1).unwrap();
    produce(
        &p,
        "events",
        &[(Some("a2"), Some(track("u2", Some("a2"), "Contact Sales Submitted", "2026-01-05T11:00:00Z")))],
    );
    engine.wait_ready(Duration::from_secs(60));
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| qualified_pairs(r).len() >= 2);
    let want: BTreeMap<(String, String), usize> =
        [(("a1".into(), "hand_raiser".into()), 1), (("a2".into(), "hand_raiser".into()), 1)].into_iter().collect();
    assert_eq!(qualified_pairs(&out), want, "{}", engine.log());
    assert!(engine.terminate(Duration::from_secs(30)).success());
}

/// A batch closes once it changed about `kafka.max_batch_records` records,
/// however many messages it may still take: 30,000 events of 30,000 new
/// accounts (two records each: the account and its user) with room for a
/// million messages and 3 s a batch make batches of about 1,000 applied
/// events, plus the few thousand decoded ahead of the engine. Without the
/// bound they are one or two batches.
#[test]
fn a_batch_closes_at_max_batch_records() {
    const EVENTS: usize = 30_000;
    let (_cluster, bootstrap) = mock_kafka(1);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &bootstrap, &dir.path().join("state"), port, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "max_batch_wait_ms = 20",
        "max_batch_wait_ms = 3000\nmax_batch_messages = 1000000\nmax_batch_records = 2000",
    );
    std::fs::write(&config, text).unwrap();

    let p = producer(&bootstrap);
    let recs: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            let account = format!("acct-{i:05}");
            let body = track(&format!("u-{i:05}"), Some(&account), "Card Moved", "2026-01-06T12:00:00Z");
            (account, body)
        })
        .collect();
    let recs: Vec<(Option<&str>, Option<Vec<u8>>)> =
        recs.iter().map(|(k, v)| (Some(k.as_str()), Some(v.clone()))).collect();
    produce(&p, "events", &recs);

    let mut engine = EngineProcess::start(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.metric("pqa_batch_messages_sum") < EVENTS as f64 {
        assert!(Instant::now() < deadline, "not every event in a closed batch: {}", engine.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let batches = engine.metric("pqa_batch_messages_count");
    let per_batch = EVENTS as f64 / batches;
    // At most 2,000 records (about 1,000 events) applied, then what the
    // decoder holds: 4 chunks of 1,024 and the one filling.
    assert!(batches >= 5.0 && per_batch <= 6_200.0, "{batches} batches of {per_batch:.0} messages on average");
    // Every batch but the last closed by the records it changed; the last
    // by the wait (nothing more came).
    assert_eq!(engine.metric(r#"pqa_batches_closed_total{by="records"}"#), batches - 1.0);
    assert_eq!(engine.metric(r#"pqa_batches_closed_total{by="wait"}"#), 1.0);
    assert_eq!(engine.metric("pqa_events_total"), EVENTS as f64);
    // Every message's share of latency spent in the broker is observed, by
    // the consumer loop's wall clock (the records were produced moments
    // before the engine started, not decades).
    assert_eq!(engine.metric("pqa_broker_latency_seconds_count"), EVENTS as f64);
    let mean = engine.metric("pqa_broker_latency_seconds_sum") / EVENTS as f64;
    assert!(mean > 0.0 && mean < 120.0, "mean broker latency {mean} s");
    // One event in 16 has its `apply` time taken.
    assert_eq!(engine.metric(r#"pqa_batch_duration_seconds_count{stage="apply"}"#), (EVENTS / 16) as f64);
    assert!(engine.terminate(Duration::from_secs(30)).success());
}
