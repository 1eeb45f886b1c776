//! The dashboard and the alerts in `deploy/` against the real engine: every
//! metric (and every label in a selector) that
//! `deploy/grafana/pqa-engine.json` and `deploy/prometheus/alerts.yml`
//! name must be in the `/metrics` of a running `pqa-engine run`. A renamed
//! metric breaks this test, not the dashboard.
//!
//! The engine runs against librdkafka's mock cluster with a definition that
//! makes every labelled metric family appear: a rule that fires (PQAs,
//! announcements), a rule that fails for one account (rule errors), a bad
//! message (dead letters).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/pqa-engine.json");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");

/// Names Prometheus makes itself, not the engine.
const PROMETHEUS_MADE: &[&str] = &["up"];
/// Target labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// A metric referenced by a query, with the label names its selector uses.
#[derive(Debug, Default, PartialEq)]
struct Reference {
    labels: BTreeSet<String>,
}

/// The metric names (and the label names of their selectors) in a PromQL
/// expression. Functions, keywords, label names in `by (...)`/`on (...)`
/// lists, strings, numbers and durations are not metric names. Grafana
/// variables (`$job`, `$__rate_interval`) only occur inside strings and
/// brackets, which are skipped.
fn promql_metrics(expr: &str) -> BTreeMap<String, Reference> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    ];
    // Aggregation operators, which may be followed by `by (...)` before
    // their parenthesis.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let b = expr.as_bytes();
    let mut out: BTreeMap<String, Reference> = BTreeMap::new();
    let mut i = 0;
    let mut last_ident: Option<String> = None; // the previous token, if an identifier
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    // The end of a quoted string starting at `j` (the quote).
    let string_end = |j: usize| {
        let q = b[j];
        let mut k = j + 1;
        while k < b.len() && b[k] != q {
            if b[k] == b'\\' && q != b'`' {
                k += 1;
            }
            k += 1;
        }
        k + 1
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = string_end(i);
            last_ident = None;
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'[' {
            // Range or subquery: durations and Grafana variables.
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
            last_ident = None;
        } else if c == b'{' {
            // Label matchers: `name op "value"`, comma-separated.
            let mut labels = BTreeSet::new();
            i += 1;
            loop {
                i = skip_ws(i);
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                if b[i] == b',' {
                    i += 1;
                } else if b[i] == b'"' || b[i] == b'\'' || b[i] == b'`' {
                    i = string_end(i);
                } else if ident_start(b[i]) {
                    let s = i;
                    while i < b.len() && ident_char(b[i]) {
                        i += 1;
                    }
                    labels.insert(expr[s..i].to_string());
                } else {
                    i += 1; // an operator: = != =~ !~
                }
            }
            if let Some(name) = last_ident.take() {
                out.entry(name).or_default().labels.extend(labels);
            }
        } else if c.is_ascii_digit() || (c == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit()) {
            // A number (1e3, 0x1f, 0.8) or a duration (5m).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            last_ident = None;
        } else if ident_start(c) {
            let s = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            let word = &expr[s..i];
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) && next < b.len() && b[next] == b'(' {
                // A list of label names, not metrics.
                i = next;
                while i < b.len() && b[i] != b')' {
                    i += 1;
                }
                i += 1;
                last_ident = None;
            } else if next < b.len() && b[next] == b'(' {
                last_ident = None; // a function call
            } else if KEYWORDS.contains(&lower.as_str()) || AGGREGATIONS.contains(&lower.as_str()) {
                last_ident = None;
            } else {
                out.entry(word.to_string()).or_default();
                last_ident = Some(word.to_string());
            }
        } else {
            if !c.is_ascii_whitespace() {
                last_ident = None;
            }
            i += 1;
        }
    }
    out
}

/// Every query of the dashboard, with where it is: panel targets and the
/// templating variables (`label_values(<selector>, <label>)`).
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel `{title}` ({})", t["refId"].as_str().unwrap_or("?")), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("variable query").trim();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(',').map(|x| x.0))
            .unwrap_or_else(|| {
                panic!("variable `{}`: only label_values(<selector>, <label>) is understood: {q}", v["name"])
            });
        out.push((format!("variable `{}`", v["name"].as_str().unwrap_or("?")), inner.to_string()));
    }
    out
}

/// Every `expr:` of a Prometheus rules file, with the name of its alert.
/// Understands the forms the file uses: `expr: <inline>` and block scalars
/// (`expr: |`, `expr: >-`); anything else fails the test rather than being
/// skipped.
fn alert_queries(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut alert = String::from("?");
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        if let Some(name) = t.strip_prefix("- alert:").or(t.strip_prefix("alert:")) {
            alert = name.trim().to_string();
        }
        if let Some(v) = t.strip_prefix("- expr:").or(t.strip_prefix("expr:")) {
            let v = v.trim();
            let expr = if v.starts_with('|') || v.starts_with('>') {
                let mut body = Vec::new();
                let mut j = i + 1;
                while j < lines.len() && (lines[j].trim().is_empty() || indent(lines[j]) > indent(l)) {
                    body.push(lines[j].trim());
                    j += 1;
                }
                i = j - 1;
                body.join("\n")
            } else if v.starts_with('"') {
                assert!(!v.contains('\\'), "alert {alert}: escapes in a quoted expr are not understood: {v}");
                v.trim_matches('"').to_string()
            } else if v.starts_with('\'') {
                v.trim_matches('\'').replace("''", "'")
            } else {
                v.to_string()
            };
            assert!(!expr.trim().is_empty(), "alert {alert}: empty expr");
            out.push((format!("alert `{alert}`"), expr));
        }
        i += 1;
    }
    let alerts = lines.iter().filter(|l| l.trim_start().starts_with("- alert:")).count();
    assert_eq!(out.len(), alerts, "every alert must have exactly one expr");
    out
}

/// Metric names in a Prometheus text exposition, each with the label names
/// its samples carry. Histogram samples appear under their `_bucket`,
/// `_sum` and `_count` names; the family name is added from `# TYPE`.
fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.entry(name.to_string()).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let close = line.find('}').expect("closing brace");
            for pair in line[end + 1..close].split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

/// Checks every reference against what the engine exposes; returns the
/// problems, one line each.
fn problems(queries: &[(String, String)], exposed: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (place, q) in queries {
        for (name, r) in promql_metrics(q) {
            if PROMETHEUS_MADE.contains(&name.as_str()) {
                continue;
            }
            match exposed.get(&name) {
                None => bad.push(format!("{place}: metric `{name}` is not exported by the engine")),
                Some(labels) => {
                    for l in &r.labels {
                        if !TARGET_LABELS.contains(&l.as_str()) && !labels.contains(l) {
                            bad.push(format!("{place}: `{name}` has no label `{l}` (it has {labels:?})"));
                        }
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn promql_names_are_found_and_everything_else_ignored() {
    let names = |e: &str| promql_metrics(e).into_keys().collect::<Vec<_>>();
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.99, sum by (le, stage) (rate(pqa_batch_duration_seconds_bucket{job=~"$job", stage=~"a|b"}[$__rate_interval])))"#,
            &["pqa_batch_duration_seconds_bucket"],
        ),
        ("a / on (instance) group_left (x, y) b", &["a", "b"]),
        (r#"up{job="pqa-engine"} == 0 and on(job) sum by (job) (increase(c_total[1d])) > bool 0"#, &["c_total", "up"]),
        ("time() - max without (le) (x_seconds)", &["x_seconds"]),
        ("sum by (job) (min(x) * on (job) group_right max by (job) (y))", &["x", "y"]),
        ("1e3 * y offset 5m > 0.8 * 10 * 1024", &["y"]),
        (r#"sum(z{reason="pqa_fake_total"}) or vector(0)"#, &["z"]),
        ("(a or on (instance) b * 0) unless ignoring (topic) c", &["a", "b", "c"]),
        ("rate(m[5m:1m]) # a comment naming not_a_metric", &["m"]),
    ];
    for (expr, want) in cases {
        assert_eq!(names(expr), want.to_vec(), "{expr}");
    }
    let r = promql_metrics(r#"rate(x_bucket{job=~"$job", stage="deliver", le!="+Inf"}[1m])"#);
    assert_eq!(r["x_bucket"].labels, ["job", "le", "stage"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn alert_exprs_are_read_in_every_form() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 5m\n      - alert: B\n        expr: |\n          x > 1\n          and y\n        labels: {}\n      - alert: C\n        expr: 'z{a=\"b\"} > 0'\n";
    let q = alert_queries(yaml);
    assert_eq!(
        q,
        vec![
            ("alert `A`".to_string(), "up == 0".to_string()),
            ("alert `B`".to_string(), "x > 1\nand y".to_string()),
            ("alert `C`".to_string(), "z{a=\"b\"} > 0".to_string()),
        ]
    );
}

#[test]
fn dashboard_and_alerts_name_only_metrics_the_engine_exports() {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).expect("dashboard is JSON");
    let alerts_yaml = std::fs::read_to_string(ALERTS).unwrap();
    let mut queries = dashboard_queries(&dash);
    let dashboard_count = queries.len();
    queries.extend(alert_queries(&alerts_yaml));
    assert!(dashboard_count >= 20, "only {dashboard_count} dashboard queries found");
    assert!(queries.len() - dashboard_count >= 8, "only {} alert exprs found", queries.len() - dashboard_count);
    let wanted: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, q)| promql_metrics(q).into_keys())
        .filter(|n| !PROMETHEUS_MADE.contains(&n.as_str()))
        .collect();
    assert!(wanted.len() >= 20, "only {} metric names found: {wanted:?}", wanted.len());

    // The engine, with a definition that makes every labelled family appear.
    let (_cluster, bootstrap) = mock_kafka(2);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let definition = r#"
[kafka.properties]
"statistics.interval.ms" = "500"

[definition]
version = "deploy-test-1"

[[definition.metrics]]
name = "active_users_28d"
kind = "active_users"
window = "28d"

[[definition.tiers]]
name = "warm"
min_score = 0

[[definition.rules]]
name = "any_use"
description = "fires for every account with an active user"
when = "active_users_28d >= 1"
points = 30

[[definition.rules]]
name = "big_company"
description = "fails to evaluate for an account whose employees trait is a string"
when = "has(account.employees) && account.employees >= 1000"
points = 10
"#;
    let config = write_config(dir.path(), &bootstrap, &dir.path().join("state"), port, definition);
    let mut engine = EngineProcess::start(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(45));
    let p = producer(&bootstrap);
    let ts = "2026-01-05T10:00:00Z";
    let group = format!(
        r#"{{"type":"group","userId":"u1","groupId":"a1","timestamp":"{ts}","traits":{{"name":"A","employees":"many"}}}}"#
    );
    let dup = format!(
        r#"{{"type":"track","event":"Board Created","userId":"u2","messageId":"m-1","timestamp":"{ts}","context":{{"groupId":"a2"}}}}"#
    );
    produce(
        &p,
        "events",
        &[
            (Some("a1"), Some(group.into_bytes())),
            (Some("a1"), Some(track("u1", Some("a1"), "Board Created", ts))),
            (Some("a2"), Some(dup.clone().into_bytes())),
            (Some("a2"), Some(dup.into_bytes())),
            (Some("a3"), Some(b"not json".to_vec())),
        ],
    );

    // Poll /metrics until every referenced family is there (labelled
    // families appear with their first sample) or the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (text, found) = loop {
        let text = engine.http_get("/metrics").map(|(_, body)| body).unwrap_or_default();
        let found = exposed(&text);
        let missing = wanted.iter().filter(|n| !found.contains_key(*n)).count();
        if missing == 0 || Instant::now() > deadline {
            break (text, found);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let bad = problems(&queries, &found);
    assert!(
        bad.is_empty(),
        "the dashboard or the alerts name what the engine does not export:\n  {}\n\n/metrics:\n{text}\n\nengine log:\n{}",
        bad.join("\n  "),
        engine.log()
    );
    let unused: Vec<&String> =
        found.keys().filter(|n| n.starts_with("pqa_") && !wanted.iter().any(|w| w.starts_with(n.as_str()))).collect();
    eprintln!("{} metric names checked; exported but on no panel or alert: {unused:?}", wanted.len());
    assert!(engine.terminate(Duration::from_secs(30)).success());
}
