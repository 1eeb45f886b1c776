//! Definitions that change under a running engine, against an in-process
//! Kafka: reloads by SIGHUP, by a change of the config file and by `POST
//! /admin/reload` while events flow, with an invalid file in between; and
//! shadow definitions beside the live one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pqa_engine::definitions::{load_definition_file, Definitions};
use pqa_engine::engine::{Engine, InputRecord, Output};
use pqa_engine::sim::{SimConfig, SimEvent, Simulator};
use pqa_engine::telemetry::Metrics;
use serde_json::Value;

/// The shipped `[definition]` under another version, with text replaced.
fn definition(version: &str, replace: &[(&str, &str)]) -> String {
    let shipped = pqa_engine::config::DEFAULT_CONFIG_TOML;
    let mut d = shipped[shipped.find("[definition]").unwrap()..].replace("default-2026.11.1", version);
    for (a, b) in replace {
        assert!(d.contains(a), "{a} not in the shipped definition");
        d = d.replace(a, b);
    }
    d
}

fn post(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(70))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "POST {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
}

fn definitions_json(port: u16) -> Value {
    serde_json::from_str(&http_get(port, "/definitions").expect("GET /definitions").1).unwrap()
}

/// Waits until the live version is `version`; returns the offsets it took
/// over at (partition -> next offset).
fn wait_live(engine: &EngineProcess, version: &str) -> BTreeMap<i32, i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = definitions_json(engine.http_port);
        if d["live"] == version {
            return d["live_from_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["partition"].as_i64().unwrap() as i32, o["offset"].as_i64().unwrap()))
                .collect();
        }
        assert!(Instant::now() < deadline, "{version} never went live: {d}\n{}", engine.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(port: u16, name: &str) -> f64 {
    let text = http_get(port, "/metrics").unwrap().1;
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).map_or(0.0, |v| v.parse().unwrap())
}

fn history(seed: u64, accounts: usize, days: u32) -> Vec<SimEvent> {
    Simulator::new(SimConfig { seed, accounts, start_unix: 1_767_225_600, days }).collect()
}

/// The reference: each partition's records in offset order through its own
/// engine, switching definitions at the given offsets (accounts live in one
/// partition, so this is what one engine does with them).
fn reference(
    records: &BTreeMap<i32, Vec<(i64, Vec<u8>)>>,
    versions: &[(Arc<Definitions>, BTreeMap<i32, i64>)],
    dir: &Path,
) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (p, recs) in records {
        let mut cfg = pqa_engine::config::Config::default_config();
        cfg.state.dir = dir.join(format!("ref-{p}"));
        let store = pqa_engine::state::Store::open(&cfg.state).unwrap();
        let mut engine =
            Engine::with_definitions(versions[0].0.clone(), cfg.input.clone(), store, Metrics::new()).unwrap();
        let mut next = 1;
        let mut o = Output::default();
        for (offset, payload) in recs {
            while next < versions.len() && *offset >= versions[next].1.get(p).copied().unwrap_or(0) {
                engine.commit().unwrap();
                engine.set_definitions(versions[next].0.clone()).unwrap();
                next += 1;
            }
            let rec = InputRecord {
                topic: "events",
                partition: *p,
                offset: *offset,
                key: None,
                payload: Some(payload),
                timestamp_ms: None,
            };
            engine.process(&rec, &mut o).unwrap();
        }
        for e in o.events.drain(..) {
            out.insert(e.id.clone(), e.payload.clone());
        }
    }
    out
}

#[test]
fn reloads_by_sighup_file_and_http_while_events_flow() {
    let (cluster, bootstrap) = mock_kafka(2);
    cluster.create_topic("out.shadow", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let token = "s3cret-admin-token";
    let texts = [
        definition("v1", &[]),
        definition("v2", &[("cooldown = \"30d\"", "cooldown = \"5d\"")]),
        definition("v3", &[("active_users_28d >= 7\"", "active_users_28d >= 5\"")]),
        definition("v4", &[("active_users_28d >= 7\"", "active_users_28d >= 6\""), ("points = 45", "points = 60")]),
    ];
    let config =
        |def: &str| write_config(dir.path(), &bootstrap, &state, port, &format!("admin_token = \"{token}\"\n{def}"));
    let cfg_path = config(&texts[0]);
    let mut engine = EngineProcess::start(&cfg_path, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));
    let pid = engine.child.id().to_string();

    // Events flow in the background for the whole test.
    let events = history(21, 150, 70);
    let events_copy = events.clone();
    let total = events.len();
    let producing = {
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            let p = producer(&bootstrap);
            let mut ends = BTreeMap::new();
            for chunk in events.chunks(1_000) {
                produce_by_account(&p, chunk, 2, &mut ends);
                std::thread::sleep(Duration::from_millis(250));
            }
            ends
        })
    };
    let flowing = |engine: &EngineProcess| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let start = metric(engine.http_port, "pqa_events_total{type=\"track\"}");
        while metric(engine.http_port, "pqa_events_total{type=\"track\"}") < start + 500.0 {
            assert!(Instant::now() < deadline, "no events flow: {}", engine.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut switches: Vec<BTreeMap<i32, i64>> = vec![BTreeMap::new()];

    // 1. SIGHUP.
    flowing(&engine);
    config(&texts[1]);
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    switches.push(wait_live(&engine, "v2"));

    // 2. An invalid file: refused by HTTP (422, with the problem's place)
    //    and by the file watcher; v2 stays.
    flowing(&engine);
    config(&definition("v-bad", &[("when = \"active_users_28d >= 7\"", "when = \"active_usrs_28d >= 7\"")]));
    let (status, body) = post(port, "/admin/reload", Some(token));
    assert_eq!(status, 422, "{body}");
    let problems: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problems["problems"][0]["at"], "definition.rules[0].when", "{body}");
    assert!(metric(port, "pqa_definition_reload_failures_total") >= 1.0);
    assert_eq!(definitions_json(port)["live"], "v2");

    // 3. A change of the file on disk.
    flowing(&engine);
    config(&texts[2]);
    switches.push(wait_live(&engine, "v3"));

    // 4. HTTP: no token, a wrong token, then the right one.
    flowing(&engine);
    config(&texts[3]);
    assert_eq!(post(port, "/admin/reload", None).0, 401);
    assert_eq!(post(port, "/admin/reload", Some("wrong")).0, 401);
    let (status, body) = post(port, "/admin/reload", Some(token));
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "applied", "{body}");
    assert_eq!(answer["applied"]["live"], "v4");
    switches.push(wait_live(&engine, "v4"));

    let ends = producing.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !caught_up(&bootstrap, &ends) {
        assert!(Instant::now() < deadline, "engine did not catch up: {}", engine.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(metric(port, "pqa_definition_reloads_total") >= 3.0);
    assert!(engine.child.try_wait().unwrap().is_none(), "the same process all along");
    let log = engine.log();
    assert_eq!(log.matches("partitions assigned").count(), 1, "the group was not rejoined:\n{log}");
    assert_eq!(log.matches("definition reloaded").count(), 3, "{log}");
    assert!(log.contains("active_usrs_28d"), "the invalid file's problem is logged:\n{log}");
    for (i, s) in switches.iter().enumerate().skip(1) {
        let at: i64 = s.values().sum();
        assert!(at > 0 && at < total as i64, "reload {i} happened while events flowed ({at} of {total})");
    }

    // Against a clean replay that switches at the same offsets.
    // The input as the broker holds it: the topic was empty, so each
    // partition's offsets count its records in the order they were produced.
    let mut by_partition: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
    for e in &events_copy {
        let list = by_partition.entry(partition_of(&e.account, 2)).or_default();
        list.push((list.len() as i64, e.json.clone().into_bytes()));
    }
    for (p, list) in &by_partition {
        assert_eq!(list.len() as i64, ends[p]);
    }
    let versions: Vec<(Arc<Definitions>, BTreeMap<i32, i64>)> = texts
        .iter()
        .zip(&switches)
        .enumerate()
        .map(|(i, (t, s))| {
            let f = dir.path().join(format!("ref-{i}.toml"));
            std::fs::write(&f, t).unwrap();
            (Arc::new(Definitions::single(Arc::new(load_definition_file(&f).unwrap()))), s.clone())
        })
        .collect();
    let want = reference(&by_partition, &versions, dir.path());
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(10), |_| false);
    let got = first_copies(&out);
    let got_ids: BTreeSet<&String> = got.keys().collect();
    let want_ids: BTreeSet<&String> = want.keys().collect();
    assert_eq!(
        got_ids.len(),
        want_ids.len(),
        "as many announcements as the clean replay that switches at the same offsets"
    );
    assert_eq!(got_ids, want_ids);
    let mut per_version: BTreeMap<String, usize> = BTreeMap::new();
    for (id, payload) in &got {
        assert_eq!(payload, &want[id], "{id} differs from the clean replay");
        let v: Value = serde_json::from_slice(payload).unwrap();
        *per_version.entry(v["data"]["definition_version"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for v in ["v1", "v2", "v3", "v4"] {
        assert!(per_version.get(v).copied().unwrap_or(0) > 0, "{v} announced nothing: {per_version:?}");
    }
    assert!(engine.terminate(Duration::from_secs(30)).success());
}

#[test]
fn shadows_announce_to_the_shadow_topic_and_agree_with_a_backtest() {
    let (cluster, bootstrap) = mock_kafka(2);
    cluster.create_topic("out.shadow", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let live = definition("live-1", &[]);
    let shadow = definition(
        "shadow-1",
        &[("active_users_28d >= 7\"", "active_users_28d >= 5\""), ("cooldown = \"30d\"", "cooldown = \"7d\"")],
    );
    std::fs::write(dir.path().join("shadow.toml"), &shadow).unwrap();
    let cfg_path =
        write_config(dir.path(), &bootstrap, &state, port, &format!("{live}\n[[shadow]]\nfile = \"shadow.toml\"\n"));
    let mut engine = EngineProcess::start(&cfg_path, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));

    let events = history(8, 150, 60);
    let mut ends = BTreeMap::new();
    produce_by_account(&producer(&bootstrap), &events, 2, &mut ends);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !caught_up(&bootstrap, &ends) {
        assert!(Instant::now() < deadline, "engine did not catch up: {}", engine.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Published after the last commit.
    std::thread::sleep(Duration::from_millis(1200));
    let out = first_copies(&read_until(&bootstrap, "out", 1, Duration::from_secs(10), |_| false));
    let shadow_records = read_until(&bootstrap, "out.shadow", 1, Duration::from_secs(10), |_| false);
    assert!(shadow_records.iter().all(|r| r.headers.get("pqa_role").map(String::as_str) == Some("shadow")));
    let shadow_out = first_copies(&shadow_records);
    let version_of = |p: &Vec<u8>| serde_json::from_slice::<Value>(p).unwrap()["data"]["definition_version"].clone();
    assert!(out.values().all(|p| version_of(p) == "live-1"), "only the live definition on the live topic");
    assert!(shadow_out.values().all(|p| version_of(p) == "shadow-1"), "only the shadow on the shadow topic");

    // A backtest of the same history with the same two definitions.
    let input = dir.path().join("history.ndjson");
    std::fs::write(&input, events.iter().map(|e| e.json.as_str()).collect::<Vec<_>>().join("\n")).unwrap();
    std::fs::write(dir.path().join("live.toml"), &live).unwrap();
    let report = dir.path().join("report");
    let st = Command::new(BIN)
        .arg("backtest")
        .arg("-i")
        .arg(&input)
        .arg("-d")
        .arg(dir.path().join("live.toml"))
        .arg("-d")
        .arg(dir.path().join("shadow.toml"))
        .arg("--out")
        .arg(&report)
        .status()
        .unwrap();
    assert!(st.success());
    let mut rows = csv::Reader::from_path(report.join("pqas.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    let ids = |v: &str| rows.iter().filter(|r| &r[2] == v).map(|r| r[11].to_string()).collect::<BTreeSet<_>>();
    assert_eq!(out.keys().cloned().collect::<BTreeSet<_>>(), ids("live-1"));
    assert_eq!(shadow_out.keys().cloned().collect::<BTreeSet<_>>(), ids("shadow-1"));
    assert!(!shadow_out.is_empty() && ids("shadow-1") != ids("live-1"), "the shadow differs from the live definition");

    let qualified = |v: &str| {
        rows.iter().filter(|r| &r[2] == v && &r[4] == "qualified").map(|r| r[3].to_string()).collect::<BTreeSet<_>>()
    };
    let (l, s) = (qualified("live-1"), qualified("shadow-1"));
    let both = l.intersection(&s).count() as f64;
    let gauge = |which: &str| {
        metric(port, &format!("pqa_shadow_agreement_accounts{{agreement=\"{which}\",version=\"shadow-1\"}}"))
    };
    assert_eq!(gauge("both"), both);
    assert_eq!(gauge("live_only"), l.len() as f64 - both);
    assert_eq!(gauge("shadow_only"), s.len() as f64 - both);
    let defs = definitions_json(port);
    assert_eq!(defs["definitions"][1]["role"], "shadow");
    assert_eq!(defs["definitions"][1]["agreement_with_live"]["both"].as_f64().unwrap(), both);
    assert!(engine.terminate(Duration::from_secs(30)).success());
}
