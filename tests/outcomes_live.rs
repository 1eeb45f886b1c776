//! Outcomes from sales through a broker, live: `run` reads the outcomes
//! topic while events flow, keeps each outcome with its account, joins it to
//! the announcement it answers, and shows precision per rule in
//! `/definitions/{version}/rules`, the `pqa_rule_*` metrics and
//! `/accounts/{id}`. A kill -9 in the middle loses no outcome and counts
//! none twice; a bad outcome record goes to the dead-letter topic.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const VERSION: &str = "default-2026.11.1";
const OUTCOMES: &str = "pqa.outcomes";

fn outcome(account: &str, kind: &str, at: &str, id: Option<&str>) -> Vec<u8> {
    let id = id.map(|i| format!(r#","pqa_event_id":"{i}""#)).unwrap_or_default();
    format!(r#"{{"account_id":"{account}","outcome":"{kind}","at":"{at}"{id}}}"#).into_bytes()
}

fn rules(engine: &EngineProcess) -> Option<Value> {
    match engine.http_get(&format!("/definitions/{VERSION}/rules")) {
        Some((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn rule<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["rules"].as_array().unwrap().iter().find(|r| r["rule"] == name).unwrap_or_else(|| panic!("no rule {name}: {v}"))
}

/// Waits until `check` holds for `/definitions/{VERSION}/rules`.
fn wait_rules(engine: &EngineProcess, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = rules(engine) {
            if check(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("{what}: {v}\n{}", engine.log());
            }
        } else if Instant::now() > deadline {
            panic!("{what}: no answer\n{}", engine.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(body: &str, line_start: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn outcomes_join_announcements_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, bootstrap) = mock_kafka(2);
    // Not partitioned like the input (3 partitions, keys hashed by
    // another client): every instance reads every outcome.
    cluster.create_topic(OUTCOMES, 3, 1).unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let config = write_config(dir.path(), &bootstrap, &state, port, "");
    let mut engine = EngineProcess::start(&config, port, dir.path(), 0);
    engine.wait_ready(Duration::from_secs(60));

    // Eight accounts, each with a hand-raiser on 2 November: eight
    // announcements of `hand_raiser`.
    let p = producer(&bootstrap);
    let accounts: Vec<String> = (0..8).map(|i| format!("acct-{i}")).collect();
    let events: Vec<(Option<&str>, Option<Vec<u8>>)> = accounts
        .iter()
        .map(|a| (Some(a.as_str()), Some(track(&format!("{a}-u"), Some(a), "Demo Requested", "2026-11-02T10:00:00Z"))))
        .collect();
    produce(&p, "events", &events);
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| r.len() >= 8);
    assert_eq!(out.len(), 8, "{}", engine.log());
    let ids: BTreeMap<String, String> = out
        .iter()
        .map(|r| {
            let v = r.json();
            assert_eq!(v["data"]["rules"], serde_json::json!(["hand_raiser"]));
            (v["subject"].as_str().unwrap().to_string(), v["id"].as_str().unwrap().to_string())
        })
        .collect();
    wait_rules(&engine, "eight announcements", |v| rule(v, "hand_raiser")["announced"] == 8);

    // First half: acct-0 accepted (by event id), acct-1 rejected (by time),
    // and a record that is not an outcome.
    produce(
        &p,
        OUTCOMES,
        &[
            (Some("acct-0"), Some(outcome("acct-0", "accepted", "2026-11-04T10:00:00Z", Some(&ids["acct-0"])))),
            (Some("acct-1"), Some(outcome("acct-1", "rejected", "2026-11-05T10:00:00Z", None))),
            (
                Some("acct-1"),
                Some(br#"{"account_id":"acct-1","outcome":"maybe","at":"2026-11-05T10:00:00Z"}"#.to_vec()),
            ),
        ],
    );
    wait_rules(&engine, "the first outcomes", |v| rule(v, "hand_raiser")["answered"] == 2);

    // Second half while events flow (usage that qualifies nothing new: the
    // rule's cooldown), and kill -9 while they are being applied.
    let usage: Vec<(Option<&str>, Option<Vec<u8>>)> = (0..400)
        .map(|i| {
            let a = &accounts[i % 8];
            let ts = format!("2026-11-{:02}T{:02}:00:00Z", 3 + i / 24 % 20, i % 24);
            (Some(a.as_str()), Some(track(&format!("{a}-u"), Some(a), "Report Viewed", &ts)))
        })
        .collect();
    produce(&p, "events", &usage[..200]);
    produce(
        &p,
        OUTCOMES,
        &[
            (Some("acct-0"), Some(outcome("acct-0", "opportunity", "2026-11-12T10:00:00Z", Some(&ids["acct-0"])))),
            (Some("acct-2"), Some(outcome("acct-2", "won", "2026-11-22T10:00:00Z", None))),
            (Some("acct-3"), Some(outcome("acct-3", "lost", "2026-11-20T10:00:00Z", None))),
            // Before any announcement of acct-5: answers nothing.
            (Some("acct-5"), Some(outcome("acct-5", "opportunity", "2026-10-01T10:00:00Z", None))),
            // An account the engine never saw.
            (Some("acct-x"), Some(outcome("acct-x", "won", "2026-11-20T10:00:00Z", None))),
        ],
    );
    produce(&p, "events", &usage[200..]);
    engine.child.kill().unwrap(); // SIGKILL
    engine.child.wait().unwrap();
    let mut engine = EngineProcess::start(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));

    // Counted by hand: 8 announcements of hand_raiser; answered: acct-0
    // (accepted, then an opportunity 10 days after the announcement),
    // acct-1 (rejected), acct-2 (won 20 days after), acct-3 (lost): 4, of
    // which 2 positive. Precision 2/4; lead times 10 and 20 days.
    let v = wait_rules(&engine, "every outcome after the restart", |v| rule(v, "hand_raiser")["answered"] == 4);
    std::thread::sleep(Duration::from_secs(1)); // nothing more arrives
    let v2 = rules(&engine).unwrap();
    assert_eq!(v, v2, "the counts settled");
    let h = rule(&v, "hand_raiser");
    let want = serde_json::json!({
        "rule": "hand_raiser", "announced": 8, "answered": 4, "accepted": 1, "rejected": 1,
        "opportunity": 1, "won": 1, "lost": 1, "positive": 2, "precision": 0.5,
        "lead_time_days": {"median": 15.0, "p90": 19.0, "n": 2},
    });
    assert_eq!(h, &want, "{v}");
    assert_eq!(v["all"]["announced"], 8);
    assert_eq!(v["all"]["positive"], 2);
    assert_eq!(v["role"], "live");
    assert_eq!(rule(&v, "team_adoption")["announced"], 0);
    assert_eq!(v["attribution_window_days"], 90.0);

    // The same numbers as metrics.
    let (_, m) = engine.http_get("/metrics").unwrap();
    let l = format!(r#"{{role="live",rule="hand_raiser",version="{VERSION}"}}"#);
    assert_eq!(metric(&m, &format!("pqa_rule_precision{l}")), Some(0.5), "{m}");
    assert_eq!(metric(&m, "pqa_ready"), Some(1.0), "ready, and the gauge says so");
    assert_eq!(metric(&m, &format!("pqa_rule_announced{l}")), Some(8.0));
    assert_eq!(metric(&m, &format!("pqa_rule_answered{l}")), Some(4.0));
    assert_eq!(metric(&m, &format!("pqa_rule_positive{l}")), Some(2.0));
    assert_eq!(
        metric(
            &m,
            &format!(r#"pqa_rule_outcomes{{outcome="won",role="live",rule="hand_raiser",version="{VERSION}"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!(r#"pqa_rule_lead_time_days{{quantile="0.5",role="live",rule="hand_raiser",version="{VERSION}"}}"#)
        ),
        Some(15.0)
    );

    // The account shows its outcomes beside its announcements.
    let (status, body) = engine.http_get("/accounts/acct-0").unwrap();
    assert_eq!(status, 200, "{body}");
    let a: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(a["announcements"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a["announcements"][0]["id"], ids["acct-0"].as_str());
    let outs = a["outcomes"].as_array().unwrap();
    assert_eq!(outs.len(), 2, "each outcome once: {a}");
    assert_eq!(outs[0]["outcome"], "accepted");
    assert_eq!(outs[1]["outcome"], "opportunity");
    for o in outs {
        assert_eq!(o["answers"][VERSION]["id"], ids["acct-0"].as_str());
        assert_eq!(o["answers"][VERSION]["by"], "event_id");
    }
    let (_, body) = engine.http_get("/accounts/acct-2").unwrap();
    let a: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(a["outcomes"][0]["answers"][VERSION]["by"], "time", "{a}");
    let (_, body) = engine.http_get("/accounts/acct-5").unwrap();
    let a: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(a["outcomes"][0]["answers"], serde_json::json!({}), "before the announcement: {a}");

    // The bad record is a dead letter with its reason and source.
    let dlq = read_until(&bootstrap, "dlq", 1, Duration::from_secs(20), |r| !r.is_empty());
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers["pqa.reason"], "unknown_outcome");
    assert_eq!(dlq[0].headers["pqa.source.topic"], OUTCOMES);
    assert!(dlq[0].headers["pqa.detail"].contains("maybe"), "{:?}", dlq[0].headers);

    // The usage was applied too (every event of the killed batches once),
    // and no account was announced again.
    let (_, body) = engine.http_get("/accounts/acct-0").unwrap();
    let a: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(a["metrics"]["events_28d"].as_f64(), Some(51.0), "1 hand raise + 50 usage events: {a}");
    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(3), |_| false);
    let again: std::collections::BTreeSet<_> =
        out.iter().map(|r| r.json()["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(again.len(), 8);

    // A definition that is not running.
    assert_eq!(engine.http_get("/definitions/nope/rules").unwrap().0, 404);
    assert_eq!(engine.terminate(Duration::from_secs(30)).code(), Some(0));
}
