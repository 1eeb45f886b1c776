//! Don't flood sales: the budget holds a flood of qualifying accounts to
//! its caps and releases the best first (in `replay`, in event time, and in
//! `run` across a kill -9); hand-raisers bypass it; and the disqualification
//! sweep announces a quiet account at the event time its windows stop
//! holding, without any event of that account (in `replay`, and in `run`,
//! where a lagging partition holds it back).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::producer::Producer;
use serde_json::Value;

const MIN: i64 = 60_000;
const H: i64 = 3_600_000;
const D: i64 = 86_400_000;
/// 2026-03-02T00:00:00Z, on an hour boundary.
const T0: i64 = 1_772_409_600_000;

fn ts(ms: i64) -> String {
    pqa_engine::emit::format_time_ms(ms)
}

fn track_at(user: &str, account: &str, event: &str, at: i64) -> String {
    String::from_utf8(track(user, Some(account), event, &ts(at))).unwrap()
}

fn page_at(user: &str, account: &str, path: &str, at: i64) -> String {
    format!(
        r#"{{"type":"page","name":"p","userId":"{user}","timestamp":"{}","properties":{{"path":"{path}"}},"context":{{"groupId":"{account}"}}}}"#,
        ts(at)
    )
}

/// `n` users of `account` active at `at` (one "Report Viewed" each): the
/// last one makes 7+ users, so `team_adoption` fires then.
fn team(account: &str, n: usize, at: i64) -> Vec<(i64, String)> {
    team_using(account, n, at, 1)
}

/// [`team`], the users spread over `features` distinct track events (the
/// score's feature-breadth term).
fn team_using(account: &str, n: usize, at: i64, features: usize) -> Vec<(i64, String)> {
    (0..n)
        .map(|i| {
            let t = at + i as i64;
            (t, track_at(&format!("{account}-u{i}"), account, &format!("Feature {}", i % features), t))
        })
        .collect()
}

/// Page views of a bystander account every `every` ms over [from, to]: the
/// event time moves on (the budget's and the sweep's clock in replay).
fn clock(from: i64, to: i64, every: i64) -> Vec<(i64, String)> {
    let mut v = Vec::new();
    let mut t = from;
    while t <= to {
        v.push((t, page_at("clock-u", "clock", "/home", t)));
        t += every;
    }
    v
}

fn write_lines(path: &Path, mut lines: Vec<(i64, String)>) {
    lines.sort_by_key(|l| l.0);
    let text: String = lines.into_iter().map(|l| l.1 + "\n").collect();
    std::fs::write(path, text).unwrap();
}

fn replay(dir: &Path, config: &Path, input: &Path, name: &str) -> (Vec<Value>, PathBuf) {
    let out = dir.join(format!("{name}.ndjson"));
    let state = dir.join(format!("{name}-state"));
    let st = Command::new(BIN)
        .args(["replay", "--config"])
        .arg(config)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .arg("--state-dir")
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success());
    let events: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for e in &events {
        assert_valid_event(e, name);
    }
    (events, state)
}

fn inspect(state: &Path, config: &Path, account: &str) -> Value {
    let out = Command::new(BIN)
        .args(["inspect", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .arg(account)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["state"].clone()
}

fn time_ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().timestamp_millis()
}

/// The flood: two early qualifiers use the hour's budget; then six
/// accounts qualify (two hot, four warm of different scores: more features
/// used, a higher score when they qualify) and wait; a
/// hand-raiser goes out at once; the queue is released best first as the
/// hour frees up, the day's cap stops it, and what is left expires.
fn flood() -> Vec<(i64, String)> {
    let mut lines = Vec::new();
    lines.extend(team("early1", 7, T0 + MIN));
    lines.extend(team("early2", 7, T0 + 2 * MIN));
    for i in 0..4 {
        lines.extend(team_using(&format!("warm{}", i + 1), 7, T0 + (10 + i as i64) * MIN, i + 1));
    }
    for i in 0..2 {
        let a = format!("hot{}", i + 1);
        let at = T0 + (15 + i as i64) * MIN;
        lines.push((at - 1, page_at(&format!("{a}-u0"), &a, "/security", at - 1)));
        lines.extend(team_using(&a, 7, at, i + 1));
    }
    lines.push((T0 + 20 * MIN, track_at("hr-u0", "raiser", "Demo Requested", T0 + 20 * MIN)));
    lines.extend(clock(T0, T0 + 12 * H, 30 * MIN));
    lines
}

const BUDGET: &str = r#"
[definition.budget]
per_hour = 2
per_day = 5
max_wait = "6h"
"#;

#[test]
fn a_flood_is_held_to_the_budget_best_first_and_hand_raisers_bypass_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("budget.toml");
    std::fs::write(&config, BUDGET).unwrap();
    let input = dir.path().join("flood-input.ndjson");
    write_lines(&input, flood());
    let (events, state) = replay(dir.path(), &config, &input, "flood");

    let qualified: Vec<&Value> = events.iter().filter(|e| e["type"] == "pqa.account.qualified").collect();
    let order: Vec<&str> = qualified.iter().map(|e| e["subject"].as_str().unwrap()).collect();
    // Early ones as they come (room), the hand-raiser at once, then the
    // queue best first: hot (by score), then the best warm one; the day's
    // cap (5, the hand-raiser outside it) leaves the rest waiting until
    // they expire.
    assert_eq!(order, ["early1", "early2", "raiser", "hot2", "hot1", "warm4"], "{events:#?}");
    let by: BTreeMap<&str, &Value> = qualified.iter().map(|e| (e["subject"].as_str().unwrap(), *e)).collect();
    // Released when the hour had room again, in event time; qualified_at
    // keeps the moment each qualified.
    assert_eq!(time_ms(&by["hot2"]["time"]), T0 + 90 * MIN);
    assert_eq!(time_ms(&by["hot1"]["time"]), T0 + 90 * MIN);
    assert_eq!(time_ms(&by["warm4"]["time"]), T0 + 150 * MIN);
    // hot2 qualified at its third user (the security page seen: an
    // enterprise evaluation), then rose to hot at its seventh while waiting:
    // the wait keeps its first moment.
    assert_eq!(time_ms(&by["hot2"]["data"]["qualified_at"]), T0 + 16 * MIN + 2);
    assert_eq!(time_ms(&by["warm4"]["data"]["qualified_at"]), T0 + 13 * MIN + 6);
    assert_eq!(by["hot2"]["data"]["tier"], "hot");
    assert!(by["hot2"]["data"]["score"].as_u64() > by["hot1"]["data"]["score"].as_u64());
    // The hand-raiser did not wait, and not counting it, no hour holds
    // more than 2 and the day no more than 5.
    assert_eq!(time_ms(&by["raiser"]["time"]), T0 + 20 * MIN);
    assert_eq!(by["raiser"]["time"], by["raiser"]["data"]["qualified_at"]);
    let times: Vec<i64> = qualified.iter().filter(|e| e["subject"] != "raiser").map(|e| time_ms(&e["time"])).collect();
    for &t in &times {
        assert!(times.iter().filter(|&&x| x > t - H && x <= t).count() <= 2, "{times:?}");
    }
    assert_eq!(times.len(), 5);
    // The others expired (nothing was ever said about them: no
    // disqualification either), and the state says so.
    for a in ["warm1", "warm2", "warm3"] {
        assert!(events.iter().all(|e| e["subject"] != a), "{a} went out");
        let v = inspect(&state, &config, a);
        assert_eq!(v["budget"]["waiting"], false, "{v:#}");
        assert_eq!(v["announced"]["delivered"], false, "{v:#}");
    }
    // Deterministic: the same input gives the same output.
    let (again, _) = replay(dir.path(), &config, &input, "flood-again");
    assert_eq!(again, events);

    // Stopped while they wait: the account view says so, and why.
    let cut = dir.path().join("flood-2h.ndjson");
    write_lines(&cut, flood().into_iter().filter(|l| l.0 <= T0 + 2 * H).collect());
    let (_, state) = replay(dir.path(), &config, &cut, "flood-2h");
    let v = inspect(&state, &config, "warm1");
    assert_eq!(v["budget"]["waiting"], true, "{v:#}");
    assert_eq!(time_ms(&v["budget"]["expires_at"]), T0 + 10 * MIN + 6 + 6 * H);
    let why = v["budget"]["why"].as_str().unwrap();
    assert!(why.contains("2 per hour") && why.contains("5 per day"), "{why}");
}

/// A hand-raiser and a team go quiet; a third account stays busy. The sweep
/// disqualifies the quiet ones when their windows stop holding (30 days
/// after the hand raise, 28 days after the users' last activity), though
/// neither sends anything, and leaves the busy one alone.
#[test]
fn quiet_accounts_are_disqualified_by_the_sweep_at_the_right_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("default.toml");
    std::fs::write(&config, "").unwrap();
    let mut lines = vec![(T0 + 5 * MIN, track_at("q-u0", "quiet", "Demo Requested", T0 + 5 * MIN))];
    lines.extend(team("team", 7, T0 + 10 * MIN));
    let mut t = T0 + 10 * MIN;
    while t < T0 + 40 * D {
        lines.extend(team("busy", 7, t));
        t += 2 * D;
    }
    lines.extend(clock(T0, T0 + 40 * D, 6 * H));
    let input = dir.path().join("quiet-input.ndjson");
    write_lines(&input, lines);
    let (events, _) = replay(dir.path(), &config, &input, "quiet");
    let of = |a: &str| -> Vec<(String, i64)> {
        events
            .iter()
            .filter(|e| e["subject"] == a)
            .map(|e| (e["type"].as_str().unwrap().to_string(), time_ms(&e["time"])))
            .collect()
    };
    assert_eq!(
        of("quiet"),
        [("pqa.account.qualified".to_string(), T0 + 5 * MIN), ("pqa.account.disqualified".to_string(), T0 + 30 * D)]
    );
    assert_eq!(
        of("team"),
        [
            ("pqa.account.qualified".to_string(), T0 + 10 * MIN + 6),
            ("pqa.account.disqualified".to_string(), T0 + 28 * D)
        ]
    );
    assert!(of("busy").iter().all(|e| e.0 != "pqa.account.disqualified"), "{:?}", of("busy"));
    let disq = events.iter().find(|e| e["subject"] == "quiet" && e["type"] == "pqa.account.disqualified").unwrap();
    assert_eq!(disq["data"]["previous_tier"], "warm");
    assert!(disq["data"].get("qualified_at").is_none());
}

/// In `run`, through Kafka: the sweep waits for the least advanced
/// partition. An account on partition 0 hand-raises and goes quiet; partition
/// 1 runs 40 days ahead: nothing happens until partition 0 moves on too.
#[test]
fn in_run_a_lagging_partition_holds_the_sweep_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, bootstrap) = mock_kafka(2);
    let port = free_port();
    let state = dir.path().join("state");
    let config = write_config(dir.path(), &bootstrap, &state, port, "");
    // Two accounts on partition 0, one on partition 1.
    let on = |p: i32| (0..).map(|i| format!("acct-{i}")).filter(move |a| partition_of(a, 2) == p);
    let mut p0 = on(0);
    let (quiet, other, ahead) = (p0.next().unwrap(), p0.next().unwrap(), on(1).next().unwrap());
    let send = |p: &rdkafka::producer::BaseProducer, account: &str, json: String| {
        let part = partition_of(account, 2);
        let rec = rdkafka::producer::BaseRecord::<str, str>::to("events").key(account).payload(&json).partition(part);
        p.send(rec).map_err(|(e, _)| e).unwrap();
    };
    let prod = producer(&bootstrap);
    send(&prod, &quiet, track_at("q-u0", &quiet, "Demo Requested", T0 + 5 * MIN));
    let mut t = T0;
    while t <= T0 + 40 * D {
        send(&prod, &ahead, page_at("a-u0", &ahead, "/home", t));
        t += 12 * H;
    }
    prod.flush(Duration::from_secs(10)).unwrap();
    let mut engine = EngineProcess::start(&config, port, dir.path(), 0);
    engine.wait_ready(Duration::from_secs(30));
    let out = read_until(&bootstrap, "out", 2, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(out.len(), 1, "the hand raise");
    // Partition 1 is 40 days ahead, partition 0 is not: no sweep yet.
    let metrics_low = || -> i64 {
        let body = engine_metrics(port);
        body.lines()
            .find(|l| l.starts_with("pqa_low_watermark_seconds "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metrics_low() != (T0 + 5 * MIN) / 1000 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metrics_low(), (T0 + 5 * MIN) / 1000, "the low watermark is partition 0's");
    std::thread::sleep(Duration::from_secs(1));
    let out = read_until(&bootstrap, "out", 2, Duration::from_secs(2), |_| false);
    assert_eq!(
        out.len(),
        1,
        "nothing swept while partition 0 lags: {:?}",
        out.iter().map(Record::json).collect::<Vec<_>>()
    );
    // Partition 0 moves on (another account): the quiet one is
    // disqualified at the time its hand raise left the 30-day window.
    send(&prod, &other, page_at("o-u0", &other, "/home", T0 + 35 * D));
    prod.flush(Duration::from_secs(10)).unwrap();
    let out = read_until(&bootstrap, "out", 2, Duration::from_secs(30), |r| r.len() >= 2);
    let disq: Vec<Value> = out.iter().map(Record::json).filter(|e| e["type"] == "pqa.account.disqualified").collect();
    assert_eq!(disq.len(), 1, "{out:?}");
    assert_eq!(disq[0]["subject"], quiet.as_str());
    assert_eq!(time_ms(&disq[0]["time"]), T0 + 30 * D);
    engine.terminate(Duration::from_secs(20));
}

fn engine_metrics(port: u16) -> String {
    http_get(port, "/metrics").map(|r| r.1).unwrap_or_default()
}

/// In `run` with the budget in event time: the queue is kept with the
/// state, so a kill -9 while accounts wait loses none and repeats none
/// (beyond a repeat of the batch in flight, with the same id); the output
/// is the clean replay's.
#[test]
fn the_queue_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, bootstrap) = mock_kafka(1);
    let port = free_port();
    let state = dir.path().join("state");
    let extra = format!("{BUDGET}clock = \"event\"\n");
    let config = write_config(dir.path(), &bootstrap, &state, port, &extra);
    let mut lines = flood();
    lines.sort_by_key(|l| l.0);
    let (first, rest): (Vec<_>, Vec<_>) = lines.into_iter().partition(|l| l.0 <= T0 + 60 * MIN);
    let prod = producer(&bootstrap);
    let records: Vec<(Option<&str>, Option<Vec<u8>>)> =
        first.iter().map(|l| (None, Some(l.1.clone().into_bytes()))).collect();
    produce(&prod, "events", &records);
    let mut engine = EngineProcess::start(&config, port, dir.path(), 0);
    engine.wait_ready(Duration::from_secs(30));
    // Six wait (hot1, hot2, warm1..4).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !engine_metrics(port).contains("pqa_budget_queue_length 6") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(engine_metrics(port).contains("pqa_budget_queue_length 6"), "{}", engine_metrics(port));
    // The gauge follows the queue in memory; the account view reads what
    // the last commit made durable, a moment later.
    let waiting = || {
        let (_, body) = http_get(port, "/accounts/hot1").unwrap_or_default();
        serde_json::from_str::<Value>(&body).unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while waiting()["budget"]["waiting"] != true && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = waiting();
    assert_eq!(v["budget"]["waiting"], true, "{v:#}");
    std::thread::sleep(Duration::from_millis(300));
    engine.child.kill().unwrap();
    engine.child.wait().unwrap();
    drop(engine);

    let records: Vec<(Option<&str>, Option<Vec<u8>>)> =
        rest.iter().map(|l| (None, Some(l.1.clone().into_bytes()))).collect();
    produce(&prod, "events", &records);
    let mut engine = EngineProcess::start(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(30));
    let all: Vec<&str> = first.iter().chain(&rest).map(|l| l.1.as_str()).collect();
    let (clean, _) = clean_replay_with(dir.path(), &config, all.into_iter());
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| first_copies(r).len() >= clean.len());
    let (distinct, _) = assert_same_output(&out, &clean, "after kill -9");
    assert_eq!(distinct, 6, "early1, early2, raiser, hot2, hot1, warm4");
    engine.terminate(Duration::from_secs(20));
}

/// A clean replay with a config file.
fn clean_replay_with<'a>(dir: &Path, config: &Path, lines: impl Iterator<Item = &'a str>) -> (Vec<Value>, PathBuf) {
    let input = dir.join("clean-input.ndjson");
    let text: String = lines.map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    replay(dir, config, &input, "clean")
}
