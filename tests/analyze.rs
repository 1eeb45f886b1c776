//! `pqa-engine analyze`: on seeded histories where hand-raisers (and the
//! accounts sales won) showed planted behaviours before the label, beside
//! decoys (common usage, a behaviour that only follows the label, an event
//! everyone does), the planted behaviours rank first and the decoys below
//! them; the suggested definition validates and, backtested, announces the
//! planted accounts. And a history small enough to count by hand.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use pqa_engine::sim::{SimConfig, Simulator};

use common::BIN;

/// One row of signals.csv.
#[derive(Debug, Clone)]
struct Row {
    rank: usize,
    signal: String,
    kind: String,
    in_definition: String,
    positives: u64,
    negatives: u64,
    precision: f64,
    recall: f64,
    negative_share: f64,
    positives_after: String,
    ranked: bool,
}

fn signals(out: &Path) -> Vec<Row> {
    let mut rd = csv::Reader::from_path(out.join("signals.csv")).unwrap();
    let header: Vec<String> =
        rd.headers().unwrap().iter().map(|h| h.trim_start_matches('\u{feff}').to_string()).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"));
    rd.records()
        .map(Result::unwrap)
        .map(|r| Row {
            rank: r[col("rank")].parse().unwrap(),
            signal: r[col("signal")].to_string(),
            kind: r[col("kind")].to_string(),
            in_definition: r[col("in_definition")].to_string(),
            positives: r[col("positives")].parse().unwrap(),
            negatives: r[col("negatives")].parse().unwrap(),
            precision: r[col("precision")].parse().unwrap(),
            recall: r[col("recall")].parse().unwrap(),
            negative_share: r[col("negative_share")].parse().unwrap(),
            positives_after: r[col("positives_after")].to_string(),
            ranked: &r[col("ranked")] == "yes",
        })
        .collect()
}

fn row<'a>(rows: &'a [Row], signal: &str) -> &'a Row {
    rows.iter().find(|r| r.signal == signal).unwrap_or_else(|| panic!("no candidate {signal}"))
}

fn run(args: &[&str], paths: &[(&str, &Path)]) -> (bool, String) {
    let mut c = Command::new(BIN);
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    let out = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn shipped(dir: &Path) -> PathBuf {
    let p = dir.join("live.toml");
    let shipped = pqa_engine::config::DEFAULT_CONFIG_TOML;
    std::fs::write(&p, &shipped[shipped.find("[definition]").unwrap()..]).unwrap();
    p
}

const START: i64 = 1_767_225_600; // 2026-01-01

fn history(dir: &Path) -> (PathBuf, SimConfig) {
    let cfg = SimConfig { seed: 21, accounts: 400, start_unix: START, days: 60 };
    (common::write_history(&dir.join("history.ndjson"), cfg.clone()), cfg)
}

#[test]
fn hand_raisers_planted_behaviours_rank_first_and_the_suggestion_announces_them() {
    let dir = tempfile::tempdir().unwrap();
    let (input, cfg) = history(dir.path());
    let out = dir.path().join("analysis");
    let (ok, log) = run(&["analyze", "--label", "hand_raise"], &[("--input", &input), ("--out", &out)]);
    assert!(ok, "{log}");
    let rows = signals(&out);

    // The two planted behaviours, first.
    let top: BTreeSet<&str> = rows.iter().take(2).map(|r| r.signal.as_str()).collect();
    assert_eq!(top, BTreeSet::from(["/docs/sso", "Plan Limit Reached"]), "{log}");
    let planted_rank = rows[1].rank;
    for r in &rows[..2] {
        assert!(r.ranked && r.precision > 0.6 && r.recall > 0.3, "{r:?}");
    }
    // The decoys, below them.
    let call = row(&rows, "Sales Call Scheduled");
    assert_eq!(call.positives, 0, "only follows the label: {call:?}");
    assert!(call.positives_after.parse::<u64>().unwrap() > 5, "{call:?}");
    assert!(call.rank > planted_rank);
    for common_usage in ["Board Viewed", "Card Moved", "/boards/:id", "/home"] {
        let r = row(&rows, common_usage);
        assert!(r.rank > planted_rank && r.negative_share > 0.3, "{r:?}");
    }
    // The label itself never comes before its own first occurrence.
    for label in ["Demo Requested", "Contact Sales Submitted"] {
        let r = row(&rows, label);
        assert_eq!((r.positives, r.in_definition.as_str()), (0, "hand_raise"), "{r:?}");
    }
    // Numbers are candidates too (a threshold each).
    assert!(rows.iter().any(|r| r.kind == "number" && r.signal == "active_users_28d"));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let followed = &report[report.find("## What followed the label").expect("the decoy is explained")..];
    assert!(followed.lines().take(8).any(|l| l.starts_with("- `Sales Call Scheduled`")), "{followed}");
    for png in ["top_candidates.png", "hist_active_users_28d.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "{png}");
    }

    // The suggestion takes both, validates, and is what backtest runs.
    let suggested = out.join("suggested.toml");
    let text = std::fs::read_to_string(&suggested).unwrap();
    assert!(text.contains(r#"track_events = ["Plan Limit Reached"]"#) && text.contains("/docs/sso"), "{text}");
    let (ok, v) = run(&["validate"], &[("--config", &suggested)]);
    assert!(ok && v.contains("like_hand_raise"), "{v}");
    let bt = dir.path().join("bt");
    let live = shipped(dir.path());
    let (ok, log) = run(&["backtest"], &[("--input", &input), ("-d", &live), ("-d", &suggested), ("--out", &bt)]);
    assert!(ok, "{log}");
    let mut rd = csv::Reader::from_path(bt.join("pqas.csv")).unwrap();
    let mut announced: BTreeMap<String, String> = BTreeMap::new();
    for r in rd.records().map(Result::unwrap) {
        if &r[2] == "default-2026.11.1-hand_raise" && &r[4] == "qualified" && r[7].contains("like_hand_raise") {
            announced.entry(r[3].to_string()).or_insert(r[0].to_string());
        }
    }
    // The planted accounts: hand-raisers that read /docs/sso or hit the plan
    // limit in the 14 days before their hand raise. Each is announced by the
    // suggested rule, before it raised its hand.
    let mut raised: BTreeMap<String, i64> = BTreeMap::new();
    let mut planted: BTreeMap<String, i64> = BTreeMap::new();
    for e in Simulator::new(cfg) {
        if e.json.contains(r#""event":"Demo Requested""#) || e.json.contains(r#""event":"Contact Sales Submitted""#) {
            raised.entry(e.account.clone()).or_insert(e.time);
        }
        if (e.json.contains(r#""path":"/docs/sso""#) || e.json.contains(r#""event":"Plan Limit Reached""#))
            && !raised.contains_key(&e.account)
        {
            planted.entry(e.account.clone()).or_insert(e.time);
        }
    }
    let planted: Vec<(&String, i64)> = planted
        .iter()
        .filter_map(|(a, &t)| raised.get(a).filter(|&&r| r - t <= 14 * 86_400).map(|&r| (a, r)))
        .collect();
    assert!(planted.len() >= 10, "{} planted hand-raisers say little", planted.len());
    for (acct, raised_at) in &planted {
        let at = announced.get(*acct).unwrap_or_else(|| panic!("{acct} is not announced by like_hand_raise"));
        let at = chrono::DateTime::parse_from_rfc3339(at).unwrap().timestamp();
        assert!(at < *raised_at, "{acct}: announced at {at}, raised its hand at {raised_at}");
    }
}

#[test]
fn what_won_accounts_did_before_ranks_first() {
    let dir = tempfile::tempdir().unwrap();
    let (input, cfg) = history(dir.path());
    let outcomes = dir.path().join("outcomes.ndjson.gz");
    pqa_engine::sim::write_outcomes(&Simulator::new(cfg), &outcomes).unwrap();
    let out = dir.path().join("analysis");
    let (ok, log) = run(
        &["analyze", "--positive", "won,opportunity", "--lookback", "10d"],
        &[("--input", &input), ("--outcomes", &outcomes), ("--out", &out)],
    );
    assert!(ok, "{log}");
    let rows = signals(&out);
    assert_eq!(rows[0].signal, "Audit Log Exported", "{log}");
    assert!(rows[0].precision > 0.8 && rows[0].recall > 0.5, "{:?}", rows[0]);
    for common_usage in ["Board Viewed", "Card Moved", "/boards/:id"] {
        let r = row(&rows, common_usage);
        assert!(r.rank > 1 && r.precision < 0.5, "{r:?}");
    }
    let suggested = out.join("suggested.toml");
    assert!(std::fs::read_to_string(&suggested).unwrap().contains(r#""Audit Log Exported""#));
    let (ok, v) = run(&["validate"], &[("--config", &suggested)]);
    assert!(ok && v.contains("like_won_or_opportunity"), "{v}");

    // A signal the definition does not have, and an outcomes file with a
    // bad line: refused, and reported by its number.
    let (ok, log) = run(&["analyze", "--label", "no_such_signal"], &[("--input", &input), ("--out", &out)]);
    assert!(!ok && log.contains("no_such_signal") && log.contains("hand_raise"), "{log}");
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"account_id\":\"acct-00001\",\"outcome\":\"won\",\"at\":\"2026-02-01T00:00:00Z\"}\nnot json\n",
    )
    .unwrap();
    let (ok, log) = run(&["analyze"], &[("--input", &input), ("--outcomes", &bad), ("--out", &out)]);
    assert!(ok && log.contains("line 2: invalid_json"), "{log}");
}

/// Six positives did `Widget Built` five days before their `Demo
/// Requested`, `Exact Same Second` at the same second as it, `After Thing` a
/// day after; twenty negatives (two of them also built a widget) are each
/// at the same age, ten days after their first event.
#[test]
fn strictly_before_counted_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let at = |day: i64, acct: &str, ev: &str| {
        let t = chrono::DateTime::from_timestamp(START + day * 86_400 + 10 * 3600, 0).unwrap();
        format!(
            r#"{{"type":"track","event":"{ev}","userId":"{acct}-u1","timestamp":"{}","context":{{"groupId":"{acct}"}}}}"#,
            t.format("%Y-%m-%dT%H:%M:%SZ")
        )
    };
    let mut lines = Vec::new();
    for i in 0..6 {
        let a = format!("p{i}");
        for (day, ev) in [
            (0, "Board Created"),
            (5, "Widget Built"),
            (9, "Board Viewed"),
            (10, "Demo Requested"),
            (10, "Exact Same Second"),
            (11, "After Thing"),
        ] {
            lines.push((day, at(day, &a, ev)));
        }
    }
    for i in 0..20 {
        let a = format!("n{i}");
        for (day, ev) in [(0, "Board Created"), (9, "Board Viewed"), (10, "Board Viewed"), (12, "After Thing")] {
            lines.push((day, at(day, &a, ev)));
        }
        if i < 2 {
            lines.push((6, at(6, &a, "Widget Built")));
        }
    }
    lines.sort_by_key(|l| l.0);
    let input = dir.path().join("h.ndjson");
    std::fs::write(&input, lines.iter().map(|l| l.1.as_str()).collect::<Vec<_>>().join("\n")).unwrap();
    let out = dir.path().join("a");
    let (ok, log) = run(&["analyze", "--label", "hand_raise"], &[("--input", &input), ("--out", &out)]);
    assert!(ok, "{log}");
    let rows = signals(&out);
    let w = &rows[0];
    assert_eq!((w.signal.as_str(), w.positives, w.negatives, w.ranked), ("Widget Built", 6, 2, true), "{rows:?}");
    assert_eq!((w.precision, w.recall), (0.75, 1.0));
    let same = row(&rows, "Exact Same Second");
    assert_eq!((same.positives, same.negatives, same.positives_after.as_str()), (0, 0, "0"));
    let after = row(&rows, "After Thing");
    assert_eq!((after.positives, after.positives_after.as_str()), (0, "6"));
    // Negatives are at their day-10 event: their day-12 After Thing is
    // after it, their day-9 and day-10 Board Viewed one before it.
    assert_eq!(after.negatives, 0);
    let viewed = row(&rows, "Board Viewed");
    assert_eq!((viewed.positives, viewed.negatives), (6, 20));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("- **Positives:** 6 accounts") && report.contains("the other 20 accounts"), "{report}");
    assert!(report.contains("- `After Thing` (track): 6 of 6 positives after, 0 before"), "{report}");
}
