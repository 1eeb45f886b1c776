//! Input made by Segment's own client library (segment-analytics-python
//! 2.4.0, captured by `tests/segment/capture.py` from its HTTP upload), not
//! only by our simulator: a visitor not logged in (`"userId": null` and an
//! `anonymousId`) on the marketing site, then in the product, then three
//! logged-in users. Nothing of it is dead-lettered; the visitor's visit to
//! the security page counts as a signal for the account, not as a user.

mod common;

use std::process::Command;

use common::{assert_valid_event, BIN};
use serde_json::Value;

#[test]
fn events_made_by_segments_python_library_are_read_without_dead_letters() {
    let input = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/segment/analytics-python-2.4.0.ndjson");
    let dir = tempfile::tempdir().unwrap();
    let (out, dlq) = (dir.path().join("out.ndjson"), dir.path().join("dlq.ndjson"));
    let run = Command::new(BIN)
        .args(["replay", "--input", input, "--output"])
        .arg(&out)
        .arg("--dead-letter")
        .arg(&dlq)
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
}
