//! The published JSON Schema of the output (`schemas/pqa-event.schema.json`,
//! draft 2020-12) describes every event the engine emits: all three event
//! types from a simulated product's history, with leads, signals and
//! warming-up metrics; and it refuses events that break the contract. (The
//! other tests validate every event they read through `common`.)

mod common;

use std::process::Command;

use common::{assert_valid_event, BIN, EVENT_SCHEMA};
use pqa_engine::sim::SimConfig;
use serde_json::{json, Value};

#[test]
fn every_event_of_a_simulated_history_matches_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::write_history(
        &dir.path().join("history.ndjson"),
        SimConfig { seed: 9, accounts: 200, start_unix: 1_767_225_600, days: 90 },
    );
    let out = dir.path().join("out.ndjson");
    let st = Command::new(BIN).arg("replay").arg("-i").arg(&input).arg("-o").arg(&out).status().unwrap();
    assert!(st.success());
    let events: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for e in &events {
        assert_valid_event(e, "replay of a simulated history");
    }
    for t in ["pqa.account.qualified", "pqa.account.tier_changed", "pqa.account.disqualified"] {
        assert!(events.iter().any(|e| e["type"] == t), "the history has no {t} to check");
    }
    assert!(events.iter().any(|e| !e["data"]["signals"].as_array().unwrap().is_empty()));
    assert!(events.iter().any(|e| !e["data"]["leads"].as_array().unwrap().is_empty()));
}

#[test]
fn the_schema_refuses_what_breaks_the_contract() {
    let schema: Value = serde_json::from_str(EVENT_SCHEMA).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let good = json!({
        "specversion": "1.0", "id": "0123456789abcdef0123456789abcdef", "type": "pqa.account.qualified",
        "source": "pqa-engine", "subject": "acct-1", "time": "2026-03-04T10:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "account_id": "acct-1", "definition_version": "v1", "rules": ["team_adoption"], "score": 57,
            "tier": "warm", "qualified_at": "2026-03-04T10:00:00Z",
            "metrics": {"active_users_28d": 7, "account_age_days": 12.5}, "warming_up": [],
            "signals": [{"name": "hand_raise", "user_id": "u1", "at": "2026-03-04T09:00:00.250Z"}],
            "leads": [{"user_id": "u1", "why": ["hand_raise"], "events_28d": 3, "traits": {"email": "a@b.example"}}],
            "account": {"name": "Acme", "first_seen": "2026-02-20T08:00:00Z", "domain": "acme.example", "personal_account": false}
        }
    });
    assert!(validator.is_valid(&good), "{:?}", validator.iter_errors(&good).map(|e| e.to_string()).collect::<Vec<_>>());
    type Breakage<'a> = (&'a str, Box<dyn Fn(&mut Value)>);
    let broken: Vec<Breakage> = vec![
        ("score above 100", Box::new(|v| v["data"]["score"] = json!(101))),
        ("a field nobody documented", Box::new(|v| v["data"]["surprise"] = json!(1))),
        ("qualified without rules", Box::new(|v| v["data"]["rules"] = json!([]))),
        (
            "qualified without the moment it qualified",
            Box::new(|v| {
                v["data"].as_object_mut().unwrap().remove("qualified_at");
            }),
        ),
        ("an id that is not 32 hex digits", Box::new(|v| v["id"] = json!("abc"))),
        ("a time that is not UTC RFC 3339", Box::new(|v| v["time"] = json!("2026-03-04 10:00"))),
        (
            "a lead without why",
            Box::new(|v| v["data"]["leads"][0].as_object_mut().unwrap().remove("why").map(drop).unwrap()),
        ),
        ("a metric that is not a number", Box::new(|v| v["data"]["metrics"]["x"] = json!("7"))),
        (
            "disqualified with a tier",
            Box::new(|v| {
                v["type"] = json!("pqa.account.disqualified");
                v["data"]["rules"] = json!([]);
            }),
        ),
        ("tier change without the previous tier", Box::new(|v| v["type"] = json!("pqa.account.tier_changed"))),
        (
            "disqualified with the moment it qualified",
            Box::new(|v| {
                v["type"] = json!("pqa.account.disqualified");
                v["data"]["rules"] = json!([]);
                v["data"]["tier"] = json!("none");
                v["data"]["score"] = json!(0);
                v["data"]["leads"] = json!([]);
                v["data"]["previous_tier"] = json!("warm");
            }),
        ),
        (
            "no warming_up list",
            Box::new(|v| v["data"].as_object_mut().unwrap().remove("warming_up").map(drop).unwrap()),
        ),
        (
            "personal_account that is not a boolean",
            Box::new(|v| v["data"]["account"]["personal_account"] = json!("no")),
        ),
    ];
    for (what, change) in broken {
        let mut v = good.clone();
        change(&mut v);
        assert!(!validator.is_valid(&v), "the schema accepts an event with {what}");
    }
}
