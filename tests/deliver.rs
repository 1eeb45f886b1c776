//! `pqa-engine deliver` against a local HTTP server that plays Slack, a
//! webhook receiver, HubSpot and Salesforce, each checking the requests'
//! paths, headers, signatures and bodies against the API's documented shape
//! and keeping what a real one would keep (messages, companies, accounts,
//! tasks). The server injects 429s (with `Retry-After`), 500s and timeouts;
//! the real binary is killed with SIGKILL mid-delivery three times and
//! restarted. At the end every announcement is at every destination
//! exactly once by id, none lost:
//!
//! - webhook: every CloudEvent id arrived, signed, byte-identical to the
//!   topic's record (a receiver deduplicates on `webhook-id`);
//! - HubSpot and Salesforce: exactly one task per qualified / tier-changed
//!   announcement (never a second, whatever the kills), one company /
//!   account per PQA account, the existing ones matched (by domain, by
//!   external id) and their owners given the tasks;
//! - Slack (no idempotency key of its own): every message there; a repeat
//!   only in the moment between Slack's answer and the id being recorded,
//!   at most one per kill;
//! - a permanent refusal (HubSpot 400) and a record that is not a PQA event
//!   are on the dead-letter topic with the response; offsets are committed
//!   to the end; no secret is in any log.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const HS_TOKEN: &str = "pat-na1-TESTHUBSPOTTOKEN0001";
const SF_TOKEN: &str = "00D000000000001!TESTSALESFORCETOKEN";
const SLACK_PATH: &str = "/slack/services/T0001/B0001/TESTSLACKSECRETPATH";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PUBLIC: &str = "https://pqa.example.com";
const KILLS: usize = 3;
const PARTITIONS: i32 = 2;

/// What the fake APIs keep and what they saw wrong.
#[derive(Default)]
struct Fake {
    /// Requests that do not match the documented shape.
    errors: Vec<String>,
    /// Requests per service, which drives the injected faults.
    requests: HashMap<&'static str, u64>,
    /// Faults injected, by service and kind.
    faults: BTreeMap<(&'static str, &'static str), u64>,
    /// The original record of each event id (to compare webhook bodies).
    originals: HashMap<String, Vec<u8>>,
    slack_messages: Vec<String>,
    hook_deliveries: Vec<String>,
    hook_processed: BTreeSet<String>,
    /// (service, event id) -> when a 429 with Retry-After was answered,
    /// and in which run of the binary.
    throttled: HashMap<(&'static str, String), (Instant, u64)>,
    retry_after_honoured: u64,
    hs_companies: Vec<(String, serde_json::Map<String, Value>)>,
    hs_tasks: Vec<(String, serde_json::Map<String, Value>)>,
    sf_accounts: Vec<(String, serde_json::Map<String, Value>)>,
    /// Task external id -> (Id, fields, creations).
    sf_tasks: BTreeMap<String, (String, serde_json::Map<String, Value>, u32)>,
    next_id: u64,
    /// Extra time every answer takes.
    latency_ms: u64,
}

type Shared = Arc<(Mutex<Fake>, AtomicU64)>;

fn err(s: &Shared, what: String) {
    s.0.lock().unwrap().errors.push(what);
}

/// Which fault (if any) the n-th request to a service gets.
enum Fault {
    None,
    Throttle,
    ServerError,
    Timeout,
}

fn fault(s: &Shared, service: &'static str) -> Fault {
    let mut f = s.0.lock().unwrap();
    let n = f.requests.entry(service).or_default();
    *n += 1;
    let n = *n;
    let kind = if n % 50 == 7 {
        Fault::Throttle
    } else if n % 9 == 4 {
        Fault::ServerError
    } else if n % 23 == 5 {
        Fault::Timeout
    } else {
        Fault::None
    };
    let name = match kind {
        Fault::None => return Fault::None,
        Fault::Throttle => "429",
        Fault::ServerError => "500",
        Fault::Timeout => "timeout",
    };
    *f.faults.entry((service, name)).or_default() += 1;
    kind
}

/// Answers an injected fault, or `None` to go on. A timed-out request has
/// no effect (as if it never got through).
async fn inject(s: &Shared, service: &'static str, event: Option<&str>) -> Option<Response> {
    match fault(s, service) {
        Fault::None => {
            let ms = 3 + s.0.lock().unwrap().latency_ms;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            None
        }
        Fault::Throttle => {
            if let Some(id) = event {
                let run = s.1.load(Ordering::SeqCst);
                s.0.lock().unwrap().throttled.insert((service, id.to_string()), (Instant::now(), run));
            }
            Some((StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "rate limited").into_response())
        }
        Fault::ServerError => Some((StatusCode::INTERNAL_SERVER_ERROR, "upstream hiccup").into_response()),
        Fault::Timeout => {
            tokio::time::sleep(Duration::from_millis(800)).await;
            Some((StatusCode::OK, "too late").into_response())
        }
    }
}

/// A request for an event after a 429 must come at least `Retry-After`
/// later (within one run of the binary).
fn check_retry_after(s: &Shared, service: &'static str, id: &str) {
    let run = s.1.load(Ordering::SeqCst);
    let mut f = s.0.lock().unwrap();
    if let Some((at, r)) = f.throttled.remove(&(service, id.to_string())) {
        if r == run {
            if at.elapsed() < Duration::from_millis(950) {
                f.errors.push(format!("{service}: {id} retried {:?} after a 429 with Retry-After: 1", at.elapsed()));
            } else {
                f.retry_after_honoured += 1;
            }
        }
    }
}

fn bearer(h: &HeaderMap, token: &str) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {token}"))
}

fn json_body(h: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let ct = h.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !ct.starts_with("application/json") {
        return Err(format!("content-type {ct}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))
}

// ---------------------------------------------------------------- Slack

async fn slack(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    let m = match json_body(&h, &body) {
        Ok(v) => v,
        Err(e) => {
            err(&s, format!("slack: {e}"));
            return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
        }
    };
    let text = m.to_string();
    let id = regex::Regex::new(r"id ([0-9a-f]{32})").unwrap().captures(&text).map(|c| c[1].to_string());
    let Some(id) = id else {
        err(&s, format!("slack: no event id in the message: {text}"));
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    check_retry_after(&s, "slack", &id);
    if let Some(r) = inject(&s, "slack", Some(&id)).await {
        return r;
    }
    // Block Kit as incoming webhooks take it.
    let mut problems = Vec::new();
    if m["text"].as_str().is_none_or(str::is_empty) {
        problems.push("no fallback `text`".to_string());
    }
    let blocks = m["blocks"].as_array().cloned().unwrap_or_default();
    if blocks.is_empty() || blocks[0]["type"] != "header" || blocks[0]["text"]["type"] != "plain_text" {
        problems.push("the first block is not a plain_text header".into());
    }
    for b in &blocks {
        match b["type"].as_str() {
            Some("header") => {
                if b["text"]["text"].as_str().is_none_or(|t| t.chars().count() > 150) {
                    problems.push("header text missing or over 150 characters".into());
                }
            }
            Some("section") => {
                if b["text"]["type"] != "mrkdwn" || b["text"]["text"].as_str().is_none_or(|t| t.chars().count() > 3000)
                {
                    problems.push(format!("bad section {b}"));
                }
            }
            Some("context") => {
                if b["elements"].as_array().is_none_or(Vec::is_empty) {
                    problems.push("empty context".into());
                }
            }
            other => problems.push(format!("unexpected block type {other:?}")),
        }
    }
    let original: Value = {
        let f = s.0.lock().unwrap();
        f.originals.get(&id).map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null)
    };
    let account = original["data"]["account_id"].as_str().unwrap_or("?");
    if !text.contains(account) {
        problems.push(format!("the account {account} is not in the message"));
    }
    if !text.contains(&format!("<{PUBLIC}/accounts/{account}|")) {
        problems.push("no link to /accounts/{id}".into());
    }
    if original["type"] != "pqa.account.disqualified" && !text.contains("*Why*") {
        problems.push("no rules in words".into());
    }
    if !problems.is_empty() {
        err(&s, format!("slack {id}: {problems:?}"));
        return (StatusCode::BAD_REQUEST, "invalid_blocks").into_response();
    }
    s.0.lock().unwrap().slack_messages.push(id);
    (StatusCode::OK, "ok").into_response()
}

// ---------------------------------------------------------------- webhook

fn verify_signature(key: &[u8], id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header.split(' ').any(|sig| sig.strip_prefix("v1,") == Some(want.as_str()))
}

async fn hook(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (id, ts, sig) = (get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"));
    check_retry_after(&s, "webhook", &id);
    if let Some(r) = inject(&s, "webhook", Some(&id)).await {
        return r;
    }
    let key = base64::engine::general_purpose::STANDARD.decode(WHSEC.strip_prefix("whsec_").unwrap()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let fresh = ts.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300);
    if id.is_empty() || !fresh || !verify_signature(&key, &id, &ts, &body, &sig) {
        err(&s, format!("webhook: bad signature headers id={id} ts={ts} sig={sig}"));
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    if get("content-type") != "application/cloudevents+json; charset=utf-8" {
        err(&s, format!("webhook: content-type {}", get("content-type")));
    }
    let mut f = s.0.lock().unwrap();
    match f.originals.get(&id) {
        Some(orig) if orig.as_slice() == body.as_ref() => {}
        Some(_) => f.errors.push(format!("webhook: the body of {id} differs from the record on the topic")),
        None => f.errors.push(format!("webhook: unknown id {id}")),
    }
    f.hook_deliveries.push(id.clone());
    // Standard Webhooks: process each webhook-id once.
    f.hook_processed.insert(id);
    (StatusCode::NO_CONTENT, "").into_response()
}

// ---------------------------------------------------------------- HubSpot

fn hs_object(id: &str, props: &serde_json::Map<String, Value>) -> Value {
    json!({"id": id, "properties": props, "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z", "archived": false})
}

fn hs_filter(body: &Value) -> Option<(String, String)> {
    let f = &body["filterGroups"][0]["filters"][0];
    if f["operator"] != "EQ" {
        return None;
    }
    Some((f["propertyName"].as_str()?.to_string(), f["value"].as_str()?.to_string()))
}

const PQA_PROPS: [&str; 4] = ["pqa_tier", "pqa_score", "pqa_rules", "pqa_definition_version"];

async fn hubspot(
    State(s): State<Shared>,
    method: Method,
    Path(rest): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    if !bearer(&h, HS_TOKEN) {
        err(&s, format!("hubspot: {method} /crm/v3/{rest} without the bearer token"));
        return (StatusCode::UNAUTHORIZED, "{}").into_response();
    }
    let b = match json_body(&h, &body) {
        Ok(v) => v,
        Err(e) => {
            err(&s, format!("hubspot {rest}: {e}"));
            return (StatusCode::BAD_REQUEST, "{}").into_response();
        }
    };
    if let Some(r) = inject(&s, "hubspot", None).await {
        return r;
    }
    let mut f = s.0.lock().unwrap();
    let bad = |f: &mut Fake, what: String| {
        f.errors.push(format!("hubspot {method} {rest}: {what}"));
        (StatusCode::BAD_REQUEST, json!({"status": "error", "message": what}).to_string()).into_response()
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["objects", "companies", "search"]) => {
            let Some((prop, value)) = hs_filter(&b) else { return bad(&mut f, "filter".into()) };
            if prop != "domain" || b["limit"].as_u64().is_none() {
                return bad(&mut f, format!("search by {prop}"));
            }
            let results: Vec<Value> = f
                .hs_companies
                .iter()
                .filter(|c| c.1["domain"] == value.as_str())
                .map(|c| hs_object(&c.0, &c.1))
                .collect();
            Json(json!({"total": results.len(), "results": results})).into_response()
        }
        ("PATCH", ["objects", "companies", id]) => {
            let Some(props) = b["properties"].as_object().cloned() else { return bad(&mut f, "no properties".into()) };
            if PQA_PROPS.iter().any(|p| !props.contains_key(*p)) || !props["pqa_score"].is_string() {
                return bad(&mut f, format!("PQA properties missing or not strings: {props:?}"));
            }
            let Some(c) = f.hs_companies.iter_mut().find(|c| c.0 == *id) else {
                return (StatusCode::NOT_FOUND, "{}").into_response();
            };
            c.1.extend(props);
            let v = hs_object(&c.0, &c.1);
            Json(v).into_response()
        }
        ("POST", ["objects", "companies", "batch", "upsert"]) => {
            let input = &b["inputs"][0];
            let (Some(idp), Some(key), Some(props)) =
                (input["idProperty"].as_str(), input["id"].as_str(), input["properties"].as_object().cloned())
            else {
                return bad(&mut f, "inputs[0] needs idProperty, id, properties".into());
            };
            if idp != "pqa_account_id" || PQA_PROPS.iter().any(|p| !props.contains_key(*p)) {
                return bad(&mut f, format!("upsert by {idp} with {props:?}"));
            }
            if key == "acct-reject" {
                // A refusal for good: dead-lettered with this body.
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"status": "error", "message": "Property values were not valid", "category": "VALIDATION_ERROR"})
                        .to_string(),
                )
                    .into_response();
            }
            let (id, new) = match f.hs_companies.iter_mut().find(|c| c.1.get("pqa_account_id") == Some(&json!(key))) {
                Some(c) => {
                    c.1.extend(props);
                    (c.0.clone(), false)
                }
                None => {
                    f.next_id += 1;
                    let id = format!("{}", 9000 + f.next_id);
                    let mut p = props;
                    p.insert("pqa_account_id".into(), json!(key));
                    f.hs_companies.push((id.clone(), p));
                    (id, true)
                }
            };
            let c = f.hs_companies.iter().find(|c| c.0 == id).unwrap();
            let mut o = hs_object(&c.0, &c.1);
            o["new"] = json!(new);
            Json(json!({"status": "COMPLETE", "results": [o]})).into_response()
        }
        ("POST", ["objects", "tasks", "search"]) => {
            let Some((prop, value)) = hs_filter(&b) else { return bad(&mut f, "filter".into()) };
            if prop != "pqa_event_id" {
                return bad(&mut f, format!("task search by {prop}"));
            }
            let results: Vec<Value> = f
                .hs_tasks
                .iter()
                .filter(|t| t.1["pqa_event_id"] == value.as_str())
                .map(|t| hs_object(&t.0, &t.1))
                .collect();
            Json(json!({"total": results.len(), "results": results})).into_response()
        }
        ("POST", ["objects", "tasks"]) => {
            let Some(p) = b["properties"].as_object().cloned() else { return bad(&mut f, "no properties".into()) };
            for k in ["hs_timestamp", "hs_task_subject", "hs_task_body", "hs_task_status", "pqa_event_id"] {
                if p.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                    return bad(&mut f, format!("task without {k}"));
                }
            }
            if chrono::DateTime::parse_from_rfc3339(p["hs_timestamp"].as_str().unwrap()).is_err() {
                return bad(&mut f, "hs_timestamp is not a date-time".into());
            }
            let a = &b["associations"][0];
            let to = a["to"]["id"].as_str().unwrap_or_default().to_string();
            if a["types"][0] != json!({"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 192})
                || !f.hs_companies.iter().any(|c| c.0 == to)
            {
                return bad(&mut f, format!("association {a}"));
            }
            f.next_id += 1;
            let id = format!("{}", 50_000 + f.next_id);
            let mut p = p;
            p.insert("company".into(), json!(to));
            f.hs_tasks.push((id.clone(), p.clone()));
            (StatusCode::CREATED, Json(hs_object(&id, &p))).into_response()
        }
        _ => bad(&mut f, "no such endpoint".into()),
    }
}

use axum::Json;

// ---------------------------------------------------------------- Salesforce

async fn salesforce(
    State(s): State<Shared>,
    method: Method,
    Path((version, rest)): Path<(String, String)>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    if !bearer(&h, SF_TOKEN) {
        err(&s, format!("salesforce: {method} {rest} without the bearer token"));
        return (StatusCode::UNAUTHORIZED, r#"[{"errorCode":"INVALID_SESSION_ID"}]"#).into_response();
    }
    if version != "v62.0" {
        err(&s, format!("salesforce: API version {version}"));
    }
    let b = if method == Method::PATCH {
        match json_body(&h, &body) {
            Ok(v) => v,
            Err(e) => {
                err(&s, format!("salesforce {rest}: {e}"));
                return (StatusCode::BAD_REQUEST, "[]").into_response();
            }
        }
    } else {
        Value::Null
    };
    if let Some(r) = inject(&s, "salesforce", None).await {
        return r;
    }
    let mut f = s.0.lock().unwrap();
    let bad = |f: &mut Fake, what: String| {
        f.errors.push(format!("salesforce {method} {rest}: {what}"));
        (StatusCode::BAD_REQUEST, json!([{"errorCode": "INVALID_FIELD", "message": what}]).to_string()).into_response()
    };
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]).to_string(),
        )
            .into_response()
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let fields = b.as_object().cloned().unwrap_or_default();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["sobjects", "Account", "PQA_Account_Id__c", ext]) => {
            match f.sf_accounts.iter().find(|a| a.1["PQA_Account_Id__c"] == *ext) {
                Some(a) => Json(json!({
                    "attributes": {"type": "Account", "url": format!("/services/data/v62.0/sobjects/Account/{}", a.0)},
                    "Id": a.0, "OwnerId": a.1["OwnerId"],
                }))
                .into_response(),
                None => not_found(),
            }
        }
        ("PATCH", ["sobjects", "Account", "PQA_Account_Id__c", ext]) => {
            if fields.get("PQA_Tier__c").is_none() || !fields.get("PQA_Score__c").is_some_and(Value::is_number) {
                return bad(&mut f, format!("PQA fields missing: {fields:?}"));
            }
            if let Some(a) = f.sf_accounts.iter_mut().find(|a| a.1["PQA_Account_Id__c"] == *ext) {
                a.1.extend(fields);
                let id = a.0.clone();
                return Json(json!({"id": id, "success": true, "errors": [], "created": false})).into_response();
            }
            if fields.get("Name").and_then(Value::as_str).is_none_or(str::is_empty) {
                return (StatusCode::BAD_REQUEST, r#"[{"errorCode":"REQUIRED_FIELD_MISSING","fields":["Name"]}]"#)
                    .into_response();
            }
            f.next_id += 1;
            let id = format!("001{:015}", f.next_id);
            let mut fields = fields;
            fields.insert("PQA_Account_Id__c".into(), json!(ext));
            fields.insert("OwnerId".into(), json!("005APIUSER"));
            f.sf_accounts.push((id.clone(), fields));
            (StatusCode::CREATED, Json(json!({"id": id, "success": true, "errors": [], "created": true})))
                .into_response()
        }
        ("PATCH", ["sobjects", "Account", id]) => {
            if fields.contains_key("Name") {
                return bad(&mut f, "renames an existing account".into());
            }
            match f.sf_accounts.iter_mut().find(|a| a.0 == *id) {
                Some(a) => {
                    a.1.extend(fields);
                    StatusCode::NO_CONTENT.into_response()
                }
                None => not_found(),
            }
        }
        ("PATCH", ["sobjects", "Task", "PQA_Event_Id__c", ext]) => {
            for k in ["Subject", "Description", "WhatId", "Status", "Priority", "ActivityDate"] {
                if fields.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                    return bad(&mut f, format!("task without {k}"));
                }
            }
            let what = fields["WhatId"].as_str().unwrap();
            if !f.sf_accounts.iter().any(|a| a.0 == what) {
                return bad(&mut f, format!("WhatId {what} is no account"));
            }
            if let Some(t) = f.sf_tasks.get_mut(*ext) {
                t.1.extend(fields);
                let id = t.0.clone();
                return Json(json!({"id": id, "success": true, "errors": [], "created": false})).into_response();
            }
            f.next_id += 1;
            let id = format!("00T{:015}", f.next_id);
            f.sf_tasks.insert(ext.to_string(), (id.clone(), fields, 1));
            (StatusCode::CREATED, Json(json!({"id": id, "success": true, "errors": [], "created": true})))
                .into_response()
        }
        _ => bad(&mut f, "no such endpoint".into()),
    }
}

/// Serves the four fakes on a free port, on a thread of its own.
fn serve(shared: Shared) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route(SLACK_PATH, post(slack))
        .route("/hook", post(hook))
        .route("/crm/v3/{*rest}", any(hubspot))
        .route("/services/data/{version}/{*rest}", any(salesforce))
        .with_state(shared);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    port
}

fn write_deliver_config(dir: &std::path::Path, bootstrap: &str, fake: u16, http: u16) -> std::path::PathBuf {
    write_config_as(dir, "deliver.toml", "deliver-state", bootstrap, fake, http, true)
}

/// A config with the four destinations, or the webhook alone.
fn write_config_as(
    dir: &std::path::Path,
    name: &str,
    state: &str,
    bootstrap: &str,
    fake: u16,
    http: u16,
    all_four: bool,
) -> std::path::PathBuf {
    let path = dir.join(name);
    let common = "timeout_seconds = 0.5\nmax_per_second = 500\ninitial_backoff_ms = 50\nmax_backoff_seconds = 1\nmax_retry_seconds = 60";
    let webhook = format!(
        r#"[[deliver.destinations]]
name = "zapier"
kind = "webhook"
url = "http://127.0.0.1:{fake}/hook"
secret_env = "IT_WEBHOOK_SECRET"
{common}

"#
    );
    let others = if all_four {
        format!(
            r#"[[deliver.destinations]]
name = "sales-slack"
kind = "slack"
url_env = "IT_SLACK_URL"
{common}

[[deliver.destinations]]
kind = "hubspot"
url = "http://127.0.0.1:{fake}"
token_env = "IT_HUBSPOT_TOKEN"
owner_id = "111"
{common}

[[deliver.destinations]]
kind = "salesforce"
url = "http://127.0.0.1:{fake}"
token_env = "IT_SF_TOKEN"
{common}
"#
        )
    } else {
        String::new()
    };
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
output_topic = "pqa"

[kafka.consumer_properties]
"session.timeout.ms" = "6000"

[deliver]
group_id = "pqa-deliver-it"
auto_offset_reset = "earliest"
dlq_topic = "pqa-dlq"
state_dir = "{state}"
public_base_url = "{PUBLIC}"
http_addr = "127.0.0.1:{http}"
max_batch_messages = 20
drain_timeout_seconds = 5

{webhook}{others}"#,
        state = dir.join(state).display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &std::path::Path, fake: u16, http: u16, dir: &std::path::Path, n: usize) -> EngineProcess {
    let stderr_path = dir.join(format!("deliver-{n}.log"));
    let child = std::process::Command::new(BIN)
        .args(["deliver", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("IT_SLACK_URL", format!("http://127.0.0.1:{fake}{SLACK_PATH}"))
        .env("IT_WEBHOOK_SECRET", WHSEC)
        .env("IT_HUBSPOT_TOKEN", HS_TOKEN)
        .env("IT_SF_TOKEN", SF_TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start pqa-engine deliver");
    EngineProcess { child, http_port: http, stderr_path }
}

#[test]
fn deliver_to_slack_webhook_hubspot_and_salesforce_exactly_once_through_faults_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // Real announcements: a clean replay of a simulated product.
    let sim = pqa_engine::sim::SimConfig { seed: 5, accounts: 100, start_unix: 1_767_225_600, days: 90 };
    let history: Vec<String> = pqa_engine::sim::Simulator::new(sim).map(|e| e.json).collect();
    let (mut events, _) = clean_replay(dir.path(), history.iter().map(String::as_str));
    assert!(events.len() > 60, "{} announcements", events.len());
    // One the HubSpot fake refuses for good (dead-lettered with its answer).
    let mut reject = events.iter().find(|e| e["type"] == "pqa.account.qualified").unwrap().clone();
    reject["id"] = json!("0123456789abcdef0123456789abcdef");
    reject["subject"] = json!("acct-reject");
    reject["data"]["account_id"] = json!("acct-reject");
    reject["data"]["account"]["domain"] = json!("reject.example");
    assert_valid_event(&reject, "the refused event");
    events.push(reject);

    let shared: Shared = Arc::new((Mutex::new(Fake::default()), AtomicU64::new(0)));
    let mut records = Vec::new();
    for e in &events {
        let bytes = serde_json::to_vec(e).unwrap();
        shared.0.lock().unwrap().originals.insert(e["id"].as_str().unwrap().to_string(), bytes.clone());
        records.push((e["subject"].as_str().unwrap().to_string(), bytes));
    }
    let id_of = |pred: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        events.iter().filter(|e| pred(e)).map(|e| e["id"].as_str().unwrap().to_string()).collect()
    };
    let all = id_of(&|_| true);
    let announced = id_of(&|e| e["type"] != "pqa.account.disqualified");
    let crm_tasks: BTreeSet<String> =
        id_of(&|e| e["type"] != "pqa.account.disqualified" && e["subject"] != "acct-reject");

    // Existing CRM records: a HubSpot company with the domain of one PQA
    // account and an owner; a Salesforce account with the external id of
    // another and its owner.
    let first_with_domain = |skip: usize| {
        events
            .iter()
            .filter(|e| e["type"] == "pqa.account.qualified" && e["data"]["account"]["domain"].is_string())
            .map(|e| {
                (
                    e["subject"].as_str().unwrap().to_string(),
                    e["data"]["account"]["domain"].as_str().unwrap().to_string(),
                )
            })
            .nth(skip)
            .unwrap()
    };
    let (hs_acct, hs_domain) = first_with_domain(0);
    let (sf_acct, _) = first_with_domain(1);
    {
        let mut f = shared.0.lock().unwrap();
        let mut p = serde_json::Map::new();
        p.insert("domain".into(), json!(hs_domain));
        p.insert("name".into(), json!("Named by sales"));
        p.insert("hubspot_owner_id".into(), json!("777"));
        f.hs_companies.push(("100".into(), p));
        let mut a = serde_json::Map::new();
        a.insert("PQA_Account_Id__c".into(), json!(sf_acct));
        a.insert("Name".into(), json!("Named by sales"));
        a.insert("OwnerId".into(), json!("005OWNER"));
        f.sf_accounts.push(("001EXISTING".into(), a));
    }
    let fake = serve(shared.clone());

    // Kafka: the PQA topic (keyed by account) with a record that is no PQA
    // event among them, and the dead-letter topic.
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("pqa", PARTITIONS, 1).unwrap();
    cluster.create_topic("pqa-dlq", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap);
    for (i, (key, bytes)) in records.iter().enumerate() {
        if i == 10 {
            p.send(BaseRecord::<str, [u8]>::to("pqa").key("acct-x").payload(b"not a cloud event".as_slice()))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        p.send(BaseRecord::<str, [u8]>::to("pqa").key(key.as_str()).payload(bytes.as_slice()))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();

    let http = free_port();
    let config = write_deliver_config(dir.path(), &bootstrap, fake, http);
    let progress = |s: &Shared| s.0.lock().unwrap().hook_processed.len();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    let started = Instant::now();
    let mut run = 0;
    for k in 0..KILLS {
        let mut d = start(&config, fake, http, dir.path(), run);
        run += 1;
        d.wait_ready(Duration::from_secs(30));
        // Kill it mid-delivery: once something new went out, at a random moment.
        let before = progress(&shared);
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress(&shared) <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(100..900)));
        assert!(d.child.try_wait().unwrap().is_none(), "deliver died: {}", d.log());
        d.child.kill().unwrap(); // SIGKILL
        d.child.wait().unwrap();
        shared.1.fetch_add(1, Ordering::SeqCst);
        eprintln!(
            "kill {} after {:?}: {} of {} webhook ids delivered",
            k + 1,
            started.elapsed(),
            progress(&shared),
            all.len()
        );
    }
    assert!(progress(&shared) < all.len(), "the kills came too late to be mid-delivery");

    // The last run goes to the end.
    let mut d = start(&config, fake, http, dir.path(), run);
    d.wait_ready(Duration::from_secs(30));
    let complete = |f: &Fake| {
        let slack: BTreeSet<&String> = f.slack_messages.iter().collect();
        let hs: BTreeSet<&str> = f.hs_tasks.iter().filter_map(|t| t.1["pqa_event_id"].as_str()).collect();
        f.hook_processed.len() >= all.len()
            && announced.iter().all(|i| slack.contains(i))
            && crm_tasks.iter().all(|i| hs.contains(i.as_str()))
            && announced.iter().all(|i| f.sf_tasks.contains_key(i))
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !complete(&shared.0.lock().unwrap()) {
        assert!(Instant::now() < deadline, "not everything delivered: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Offsets are committed once every destination is done.
    let ends: BTreeMap<i32, i64> = {
        let c: BaseConsumer =
            rdkafka::config::ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        (0..PARTITIONS).map(|p| (p, c.fetch_watermarks("pqa", p, Duration::from_secs(5)).unwrap().1)).collect()
    };
    let committed = || -> BTreeMap<i32, i64> {
        let c: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "pqa-deliver-it")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition("pqa", p);
        }
        let out = match c.committed_offsets(tpl, Duration::from_secs(5)) {
            Ok(t) => t
                .elements()
                .iter()
                .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { -1 }))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        drop(c);
        out
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while committed() != ends {
        assert!(Instant::now() < deadline, "offsets {:?} not committed to the ends {ends:?}", committed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = d.http_get("/metrics").unwrap().1;
    let st = d.terminate(Duration::from_secs(20));
    assert!(st.success(), "SIGTERM exit {st}: {}", d.log());
    let elapsed = started.elapsed();

    let f = shared.0.lock().unwrap();
    assert!(f.errors.is_empty(), "requests not in the documented shape: {:#?}", &f.errors[..f.errors.len().min(10)]);

    // Webhook: every id, each verified; repeats carry the same webhook-id.
    assert_eq!(f.hook_processed, all, "webhook ids");
    // HubSpot: one task per announcement, never two; one company per
    // account; the company found by domain kept its name and gave its owner.
    let mut hs_per_event: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &f.hs_tasks {
        *hs_per_event.entry(t.1["pqa_event_id"].as_str().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = hs_per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "HubSpot tasks created twice: {twice:?}");
    assert_eq!(hs_per_event.keys().map(|k| k.to_string()).collect::<BTreeSet<_>>(), crm_tasks);
    let mut companies: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &f.hs_companies {
        *companies.entry(c.1.get("pqa_account_id").and_then(Value::as_str).unwrap_or("(none)")).or_default() += 1;
    }
    assert!(companies.values().all(|n| *n == 1), "companies per account: {companies:?}");
    let seeded = &f.hs_companies[0].1;
    assert_eq!(
        (seeded["name"].as_str(), seeded["pqa_account_id"].as_str()),
        (Some("Named by sales"), Some(hs_acct.as_str()))
    );
    for t in f.hs_tasks.iter().filter(|t| t.1["company"] == "100") {
        assert_eq!(t.1["hubspot_owner_id"], "777", "the task goes to the company's owner");
    }
    assert!(f.hs_tasks.iter().filter(|t| t.1["company"] != "100").all(|t| t.1["hubspot_owner_id"] == "111"));
    // Salesforce: one task per announcement (upserted by the event id);
    // the existing account kept its name and its owner got the task.
    let created_twice: Vec<_> = f.sf_tasks.iter().filter(|(_, t)| t.2 > 1).collect();
    assert!(created_twice.is_empty(), "{created_twice:?}");
    assert_eq!(f.sf_tasks.keys().cloned().collect::<BTreeSet<_>>(), announced);
    let existing = f.sf_accounts.iter().find(|a| a.0 == "001EXISTING").unwrap();
    assert_eq!(existing.1["Name"], "Named by sales");
    assert!(existing.1["PQA_Tier__c"].is_string());
    for (_, (_, t, _)) in f.sf_tasks.iter().filter(|(_, t)| t.1["WhatId"] == "001EXISTING") {
        assert_eq!(t["OwnerId"], "005OWNER");
    }
    let sf_ext: Vec<&str> = f.sf_accounts.iter().map(|a| a.1["PQA_Account_Id__c"].as_str().unwrap()).collect();
    assert_eq!(sf_ext.len(), sf_ext.iter().collect::<BTreeSet<_>>().len(), "one account per PQA account");
    // Slack: every message there; a repeat only in the moment between
    // Slack's answer and the id being recorded.
    let mut per_id: BTreeMap<&String, usize> = BTreeMap::new();
    for id in &f.slack_messages {
        *per_id.entry(id).or_default() += 1;
    }
    assert_eq!(per_id.keys().map(|k| (*k).clone()).collect::<BTreeSet<_>>(), announced, "Slack messages");
    let slack_repeats: usize = per_id.values().map(|n| n - 1).sum();
    assert!(slack_repeats <= KILLS, "{slack_repeats} Slack repeats for {KILLS} kills");
    // Faults of every kind were injected and ridden out; Retry-After was honoured.
    for service in ["slack", "webhook", "hubspot", "salesforce"] {
        for kind in ["500", "timeout"] {
            assert!(f.faults.get(&(service, kind)).copied().unwrap_or(0) > 0, "no {kind} injected for {service}");
        }
    }
    let throttles: u64 = f.faults.iter().filter(|(k, _)| k.1 == "429").map(|(_, n)| n).sum();
    assert!(throttles >= 4 && f.retry_after_honoured >= 1, "{throttles} 429s, {} honoured", f.retry_after_honoured);
    assert!(metrics.contains(r#"pqa_deliver_delivered_total{destination="sales-slack",kind="slack"}"#), "{metrics}");
    assert!(metrics.contains(r#"pqa_deliver_retries_total{destination="hubspot",kind="hubspot"}"#), "{metrics}");
    eprintln!(
        "{} announcements ({} for sales); {} kills; webhook {} deliveries for {} ids; Slack {} messages ({} repeats); \
         HubSpot {} tasks, {} companies; Salesforce {} tasks; faults {:?}; Retry-After honoured {}; {:?} in all",
        all.len(),
        announced.len(),
        KILLS,
        f.hook_deliveries.len(),
        f.hook_processed.len(),
        f.slack_messages.len(),
        slack_repeats,
        f.hs_tasks.len(),
        f.hs_companies.len(),
        f.sf_tasks.len(),
        f.faults,
        f.retry_after_honoured,
        elapsed
    );
    drop(f);

    // Dead letters: the refusal with HubSpot's answer, and the record that
    // is not a PQA event.
    let reason = |r: &Record| r.headers.get("pqa.reason").cloned().unwrap_or_default();
    let dlq = read_until(&bootstrap, "pqa-dlq", 1, Duration::from_secs(20), |r| {
        r.iter().any(|x| reason(x) == "rejected") && r.iter().any(|x| reason(x) == "invalid_event")
    });
    eprintln!("dead letters: {:?}", dlq.iter().map(reason).collect::<Vec<_>>());
    let refused = dlq.iter().find(|r| reason(r) == "rejected").expect("the refusal is dead-lettered");
    assert_eq!(refused.headers["pqa.destination"], "hubspot");
    assert_eq!(refused.headers["pqa.destination.kind"], "hubspot");
    assert_eq!(refused.headers["pqa.response.status"], "400");
    assert!(refused.headers["pqa.response.body"].contains("VALIDATION_ERROR"));
    assert_eq!(refused.headers["pqa.event.id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(refused.key.as_deref(), Some(b"acct-reject".as_slice()));
    assert_eq!(refused.json()["subject"], "acct-reject", "the dead letter holds the event as it was");
    let invalid = dlq.iter().find(|r| reason(r) == "invalid_event").expect("the record that is no event");
    // Dead-lettered once per run at most: its position is recorded like an id.
    let invalid_copies = dlq.iter().filter(|r| reason(r) == "invalid_event").count();
    assert!((1..=2).contains(&invalid_copies), "{invalid_copies} copies of the invalid record");
    assert_eq!(invalid.payload.as_deref(), Some(b"not a cloud event".as_slice()));
    assert!(invalid.headers["pqa.source.offset"].parse::<i64>().is_ok());

    // Secrets are never logged.
    for n in 0..=run {
        let log = std::fs::read_to_string(dir.path().join(format!("deliver-{n}.log"))).unwrap();
        for secret in [HS_TOKEN, SF_TOKEN, "TESTSLACKSECRETPATH", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
            assert!(!log.contains(secret), "run {n} logged a secret ({secret})");
        }
    }
    drop(cluster);
}

#[test]
fn deliver_configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[deliver]
group_id = "pqa-engine"

[[deliver.destinations]]
kind = "webhook"
url = "https://hooks.example.com/pqa"
secret = "plain-text"

[[deliver.destinations]]
kind = "hubspot"
token_env = "IT_HUBSPOT_TOKEN"
api_version = "v62.0"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(BIN).args(["validate", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for want in [
        "deliver.group_id: `pqa-engine` is the engine's kafka.group_id",
        "deliver.destinations[0].secret: must look like `whsec_<base64 key>`",
        "deliver.destinations[1].api_version: is only for kind = \"salesforce\", not \"hubspot\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // No destination: deliver says what to add; a secret's variable unset: which one.
    let none = dir.path().join("none.toml");
    std::fs::write(&none, "[deliver]\nhttp_addr = \"\"\n").unwrap();
    let out = std::process::Command::new(BIN).args(["deliver", "--config"]).arg(&none).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("deliver.destinations: at least one destination is required"));
    let unset = dir.path().join("unset.toml");
    std::fs::write(
        &unset,
        "[deliver]\nhttp_addr = \"\"\n[[deliver.destinations]]\nkind = \"hubspot\"\ntoken_env = \"IT_SURELY_UNSET_TOKEN\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["deliver", "--config"])
        .arg(&unset)
        .env_remove("IT_SURELY_UNSET_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("deliver.destinations[0].token_env: the environment variable IT_SURELY_UNSET_TOKEN is not set"),
        "{text}"
    );
}

/// Announcements made up for tests that need many, quickly: valid events of
/// `n` accounts.
fn synthetic_events(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let v = json!({
                "specversion": "1.0", "id": format!("{:032x}", 0xabc000 + i), "type": "pqa.account.qualified",
                "source": "pqa-engine", "subject": format!("acct-{i:04}"), "time": "2026-02-08T11:57:03Z",
                "datacontenttype": "application/json",
                "data": {
                    "account_id": format!("acct-{i:04}"), "definition_version": "default-2026.11.1",
                    "rules": ["hand_raiser"], "score": 50, "tier": "warm", "qualified_at": "2026-02-08T11:57:03Z",
                    "metrics": {"account_age_days": 3, "hand_raise_30d": 1},
                    "warming_up": [], "signals": [], "leads": [],
                    "account": {"first_seen": "2026-02-01T00:00:00Z", "personal_account": false},
                },
            });
            assert_valid_event(&v, "synthetic");
            v
        })
        .collect()
}

#[test]
fn a_rebalance_mid_delivery_hands_over_without_loss() {
    // Two instances in one group: the second joins while the first is
    // delivering; the first finishes what it has in hand, commits, and
    // gives up a partition. Every id arrives; a repeat only for the batch
    // in hand (see below).
    let dir = tempfile::tempdir().unwrap();
    let events = synthetic_events(120);
    let shared: Shared = Arc::new((Mutex::new(Fake { latency_ms: 40, ..Default::default() }), AtomicU64::new(0)));
    for e in &events {
        shared
            .0
            .lock()
            .unwrap()
            .originals
            .insert(e["id"].as_str().unwrap().to_string(), serde_json::to_vec(e).unwrap());
    }
    let fake = serve(shared.clone());
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("pqa", PARTITIONS, 1).unwrap();
    cluster.create_topic("pqa-dlq", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap);
    for e in &events {
        let bytes = serde_json::to_vec(e).unwrap();
        p.send(BaseRecord::<str, [u8]>::to("pqa").key(e["subject"].as_str().unwrap()).payload(bytes.as_slice()))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();

    let (http_a, http_b) = (free_port(), free_port());
    let a_cfg = write_config_as(dir.path(), "a.toml", "state-a", &bootstrap, fake, http_a, false);
    let b_cfg = write_config_as(dir.path(), "b.toml", "state-b", &bootstrap, fake, http_b, false);
    let started = Instant::now();
    let mut a = start(&a_cfg, fake, http_a, dir.path(), 0);
    a.wait_ready(Duration::from_secs(30));
    while shared.0.lock().unwrap().hook_processed.len() < 10 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress: {}", a.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut b = start(&b_cfg, fake, http_b, dir.path(), 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.0.lock().unwrap().hook_processed.len() < events.len() {
        assert!(Instant::now() < deadline, "not all delivered:\nA: {}\nB: {}", a.log(), b.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (la, lb) = (a.log(), b.log());
    assert!(la.contains("partitions revoked"), "A gave nothing up: {la}");
    let b_delivered = lb.matches("delivered").count();
    if std::env::var("IT_SHOW_LOGS").is_ok() {
        eprintln!("A:\n{la}\nB:\n{lb}");
    }
    assert!(a.terminate(Duration::from_secs(20)).success());
    assert!(b.terminate(Duration::from_secs(20)).success());
    let f = shared.0.lock().unwrap();
    assert!(f.errors.is_empty(), "{:?}", f.errors);
    let want: BTreeSet<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(f.hook_processed, want);
    // A repeat is possible only for the batch in hand when the rebalance
    // began, if its commit was refused (librdkafka's mock cluster refuses
    // commits while members rejoin; Kafka accepts them until the group
    // syncs), and it carries the same webhook-id.
    let repeats = f.hook_deliveries.len() - want.len();
    assert!(repeats <= 20, "{repeats} repeats: more than the batch in hand (max_batch_messages = 20)");
    eprintln!(
        "{} ids over a rebalance in {:?}; the second instance delivered {} of them; {repeats} repeats; A's refused commits: {}",
        want.len(),
        started.elapsed(),
        b_delivered,
        la.matches("offset commit failed").count()
    );
    assert!(b_delivered > 0, "the second instance took no partition: {lb}");
    drop(f);
    drop(cluster);
}
