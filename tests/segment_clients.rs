//! Input made by Segment's own client library (segment-analytics-python
//! 2.4.0, captured by `tests/segment/capture.py` from its HTTP upload), not
//! only by our simulator: a visitor not logged in (`"userId": null` and an
//! `anonymousId`) on the marketing site, then in the product, then three
//! logged-in users; then two `alias` calls: a second visitor signs up (its
//! anonymous id becomes a 4th user) and a user changes ids (still 4 users,
//! the old id's later event is the new id's). Nothing of it is
//! dead-lettered; the visitor's visit to the security page counts as a
//! signal for the account, not as a user.

mod common;

use std::process::Command;

use common::{assert_valid_event, BIN};
use serde_json::Value;

#[test]
fn events_made_by_segments_python_library_are_read_without_dead_letters() {
    let input = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/segment/analytics-python-2.4.0.ndjson");
    let dir = tempfile::tempdir().unwrap();
    let (out, dlq, state) = (dir.path().join("out.ndjson"), dir.path().join("dlq.ndjson"), dir.path().join("state"));
    let run = Command::new(BIN)
        .args(["replay", "--input", input, "--output"])
        .arg(&out)
        .arg("--dead-letter")
        .arg(&dlq)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read_to_string(&dlq).unwrap(), "", "normal traffic is never dead-lettered");
    let events: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for e in &events {
        assert_valid_event(e, "segment-python");
    }
    let e = events.iter().find(|e| e["subject"] == "acct-seg").expect("acct-seg qualifies");
    assert_eq!(e["data"]["rules"], serde_json::json!(["enterprise_evaluation"]));
    assert_eq!(e["data"]["metrics"]["active_users_28d"], 3, "the visitor is not a user");
    assert_eq!(e["data"]["signals"][0]["name"], "legal_page_visit");
    assert_eq!(e["data"]["signals"][0]["user_id"], "anonymous:anon-7f3");
    assert_eq!(e["data"]["leads"].as_array().unwrap().len(), 3);
    assert_eq!(e["data"]["account"]["domain"], "segco.example");
    // After the aliases: 4 users, the old id's events under the new one.
    let inspect = Command::new(BIN).args(["inspect", "--state-dir"]).arg(&state).arg("acct-seg").output().unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let view: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(view["state"]["metrics"]["active_users_28d"].as_f64(), Some(4.0));
    let members: Vec<(&str, u64)> = view["state"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap(), m["events_90d"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        members,
        [("seg-user-0-sso", 3), ("seg-user-1", 1), ("seg-user-2", 1), ("seg-user-3", 1)],
        "seg-user-0 is seg-user-0-sso; the visitor who signed up is seg-user-3"
    );
}
