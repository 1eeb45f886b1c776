//! A definition changed on live state: metrics reordered, renamed, removed
//! and added, signals reordered and added, a window longer than the history
//! kept. For everything the state already held, the announcements after the
//! change are exactly those of a fresh replay with the new definition; what
//! is new is reported as warming up (in the events and by `validate
//! --state-dir`). Before state was keyed by meaning, reordering two filtered
//! metrics read one's counts as the other's.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pqa_engine::config::definition::{MetricConfig, MetricKind, RuleConfig, SignalConfig};
use pqa_engine::config::Config;
use pqa_engine::replay::{replay, ReplayOptions};
use pqa_engine::sim::{SimConfig, Simulator};
use pqa_engine::telemetry::Metrics;
use serde_json::Value;

use common::BIN;

fn events_metric(name: &str, window: &str, events: &[&str]) -> MetricConfig {
    MetricConfig {
        name: name.into(),
        kind: MetricKind::Events,
        window: window.into(),
        offset: None,
        events: events.iter().map(|e| e.to_string()).collect(),
        signal: None,
    }
}

/// The shipped definition plus two filtered metrics that an asymmetric
/// rule reads (swapping their counts changes what fires) and one unused.
fn definition_a() -> Config {
    let mut cfg = Config::default_config();
    let d = &mut cfg.definition;
    d.version = "a".into();
    d.metrics.push(events_metric("comments_7d", "7d", &["Comment Added"]));
    d.metrics.push(events_metric("uploads_7d", "7d", &["File Uploaded"]));
    d.metrics.push(events_metric("labels_7d", "7d", &["Label Added"]));
    d.rules.push(RuleConfig {
        name: "collaboration".into(),
        description: "many more comments than uploads, and some uploads".into(),
        when: "comments_7d >= 4.0 * uploads_7d && uploads_7d >= 2.0".into(),
        points: 10,
        bypass_budget: false,
    });
    cfg
}

/// The same rules over a changed definition: the two filtered metrics in
/// the other order (first in the file) and one renamed, the unused one
/// removed, signals reordered, and new things: a filtered metric, a signal
/// with a metric, and a window longer than the history A kept.
fn definition_b() -> Config {
    let mut cfg = definition_a();
    let d = &mut cfg.definition;
    d.version = "b".into();
    d.metrics.retain(|m| !["comments_7d", "uploads_7d", "labels_7d"].contains(&m.name.as_str()));
    d.metrics.insert(0, events_metric("uploads_7d", "7d", &["File Uploaded"]));
    d.metrics.insert(0, events_metric("comment_count_7d", "7d", &["Comment Added"]));
    d.metrics.push(events_metric("boards_7d", "7d", &["Board Created"]));
    d.metrics.push(events_metric("events_60d", "60d", &[]));
    d.metrics.push(MetricConfig {
        name: "docs_visits_14d".into(),
        kind: MetricKind::Signal,
        window: "14d".into(),
        offset: None,
        events: Vec::new(),
        signal: Some("docs_visit".into()),
    });
    d.signals.reverse();
    d.signals.push(SignalConfig {
        name: "docs_visit".into(),
        description: "read the docs".into(),
        track_events: Vec::new(),
        page_path: Some("^/docs/".into()),
        trait_change: None,
    });
    let rule = d.rules.iter_mut().find(|r| r.name == "collaboration").unwrap();
    rule.when = "comment_count_7d >= 4.0 * uploads_7d && uploads_7d >= 2.0".into();
    cfg.state.idle_ttl_days = 90;
    cfg
}

fn run_replay(cfg: &Config, input: &Path, state: &Path) -> Vec<Value> {
    let out = input.with_extension(format!("{}.out", state.file_name().unwrap().to_string_lossy()));
    let def = Arc::new(cfg.validate().unwrap_or_else(|e| panic!("{e}")));
    let opts = ReplayOptions {
        input: input.to_path_buf(),
        output: out.clone(),
        dead_letter: None,
        state_dir: Some(state.to_path_buf()),
        batch_lines: 5_000,
        progress: false,
        stop: None,
    };
    replay(cfg, def, &opts, Metrics::new()).unwrap();
    let events: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for e in &events {
        common::assert_valid_event(e, "replay after a definition change");
    }
    events
}

/// The event with what depends on warming metrics taken out: their values,
/// the list itself, and while the new signal is warming up its occurrences
/// and the leads (which put the people behind signals first).
fn held_part(v: &Value, warming: &[String]) -> Value {
    let mut v = v.clone();
    for w in warming {
        v["data"]["metrics"].as_object_mut().unwrap().remove(w);
    }
    if warming.iter().any(|w| w == "docs_visits_14d") {
        let signals = v["data"]["signals"].as_array_mut().unwrap();
        signals.retain(|s| s["name"] != "docs_visit");
        v["data"].as_object_mut().unwrap().remove("leads");
    }
    v["data"].as_object_mut().unwrap().remove("warming_up");
    v
}

fn warming_of(v: &Value) -> Vec<String> {
    v["data"]["warming_up"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

#[test]
fn a_changed_definition_continues_what_the_state_held_and_warms_up_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    // 80 accounts over 80 days, in time order.
    let lines: Vec<String> = Simulator::new(SimConfig { seed: 11, accounts: 80, start_unix: 1_767_225_600, days: 80 })
        .map(|e| e.json)
        .collect();
    let time_of = |l: &str| -> String {
        let v: Value = serde_json::from_str(l).unwrap();
        v["timestamp"].as_str().unwrap().to_string()
    };
    // The switch: halfway, where event time moves on (a clean boundary).
    let mut cut = lines.len() / 2;
    while time_of(&lines[cut]) == time_of(&lines[cut - 1]) {
        cut += 1;
    }
    let switch_time = time_of(&lines[cut]);
    let write = |name: &str, ls: &[String]| {
        let p = dir.path().join(name);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        for l in ls {
            writeln!(f, "{l}").unwrap();
        }
        p
    };
    let first_half = write("first.ndjson", &lines[..cut]);
    let whole = write("whole.ndjson", &lines);

    // A over the first half, then B over the rest on the same state (replay
    // resumes after the lines already applied).
    let live = dir.path().join("live");
    run_replay(&definition_a(), &first_half, &live);

    // Before B goes live, `validate --state-dir` says where each metric
    // stands.
    let b_file = dir.path().join("b.toml");
    std::fs::write(&b_file, toml::to_string(&definition_b()).unwrap()).unwrap();
    let v =
        Command::new(BIN).arg("validate").arg("--config").arg(&b_file).arg("--state-dir").arg(&live).output().unwrap();
    let report = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(v.status.success(), "{report}\n{}", String::from_utf8_lossy(&v.stderr));
    let line =
        |name: &str| report.lines().find(|l| l.trim_start().starts_with(&format!("{name} "))).unwrap_or_default();
    for held in ["comment_count_7d", "uploads_7d", "active_users_28d", "events_7d", "hand_raise_30d"] {
        assert!(line(held).ends_with("continues"), "{held}: {report}");
    }
    for new in ["boards_7d", "docs_visits_14d"] {
        assert!(line(new).contains("new: counts from"), "{new}: {report}");
    }
    assert!(line("events_60d").contains("warming up until"), "{report}");
    assert!(report.contains("track events Label Added"), "the dropped counter is named: {report}");

    let after_switch = run_replay(&definition_b(), &whole, &live);
    let fresh = run_replay(&definition_b(), &whole, &dir.path().join("fresh"));
    let fresh_after: BTreeMap<String, &Value> = fresh
        .iter()
        .filter(|v| v["time"].as_str().unwrap() >= switch_time.as_str())
        .map(|v| (v["id"].as_str().unwrap().to_string(), v))
        .collect();
    let got: BTreeMap<String, &Value> =
        after_switch.iter().map(|v| (v["id"].as_str().unwrap().to_string(), v)).collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        fresh_after.keys().collect::<Vec<_>>(),
        "the same announcements after the switch as a fresh replay with B"
    );
    let mut warming_seen = BTreeMap::new();
    for (id, v) in &got {
        let warming = warming_of(v);
        for w in &warming {
            assert!(["boards_7d", "docs_visits_14d", "events_60d"].contains(&w.as_str()), "{w} is held, not warming");
            *warming_seen.entry(w.clone()).or_insert(0) += 1;
        }
        assert_eq!(held_part(v, &warming), held_part(fresh_after[id], &warming), "{id} differs from the fresh replay");
        assert!(warming_of(fresh_after[id]).is_empty(), "a fresh replay has nothing warming");
    }
    assert!(got.len() >= 10, "the test says little with {} announcements", got.len());
    let collaboration = got.values().filter(|v| v["data"]["rules"].to_string().contains("collaboration")).count();
    assert!(collaboration >= 1, "the rule over the reordered metrics fires after the switch");
    for w in ["boards_7d", "docs_visits_14d", "events_60d"] {
        assert!(warming_seen.contains_key(w), "{w} reported warming up right after the switch: {warming_seen:?}");
    }
    // Windows fill: 7 days after the switch nothing 7-day is warming any more.
    let week_later = chrono::DateTime::parse_from_rfc3339(&switch_time).unwrap() + chrono::Duration::days(8);
    for v in
        got.values().filter(|v| chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap() > week_later)
    {
        assert!(!warming_of(v).contains(&"boards_7d".to_string()), "boards_7d still warming a week later: {v}");
    }
}

#[test]
fn another_bucket_width_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("h.ndjson");
    let lines: Vec<String> = Simulator::new(SimConfig { seed: 3, accounts: 5, start_unix: 1_767_225_600, days: 3 })
        .map(|e| e.json)
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let state = dir.path().join("s");
    run_replay(&Config::default_config(), &input, &state);
    let mut cfg = Config::default_config();
    cfg.definition.bucket_seconds = 1800;
    let file = dir.path().join("half-hour.toml");
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    let out =
        Command::new(BIN).arg("validate").arg("--config").arg(&file).arg("--state-dir").arg(&state).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("definition.bucket_seconds") && err.contains("replay"), "{err}");
    let run = Command::new(BIN)
        .args(["replay", "--config"])
        .arg(&file)
        .arg("--input")
        .arg(&input)
        .arg("--state-dir")
        .arg(&state)
        .args(["--output", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("definition.bucket_seconds"), "{err}");
}
