//! The shipped default definition (`config/pqa-engine.toml`) against the
//! table in PRODUCT.md, through the real binary's `replay` command.
//!
//! Each scenario is one account with a short story of Segment events and the
//! `(account, rule)` pairs it must produce; near misses expect nothing. All
//! scenarios go into one input file (one process, accounts must not leak into
//! each other), and each also runs alone, so a failure shows whether it is the
//! rule or the interaction that is wrong.
//!
//! Windows are built from one-hour buckets, so every story keeps its events
//! several hours (usually days) away from any window edge. All timestamps are
//! in 2025: the engine rejects events in the wall-clock future.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_pqa-engine");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pqa-engine.toml");

const QUALIFIED: &str = "pqa.account.qualified";
const RULES: [&str; 4] = ["team_adoption", "enterprise_evaluation", "usage_spike", "hand_raiser"];

// ---------------------------------------------------------------------------
// Building events
// ---------------------------------------------------------------------------

/// One input line and its event time (the combined file is sorted by it, as a
/// real topic would roughly be).
#[derive(Clone)]
struct Ev {
    ts: DateTime<Utc>,
    line: String,
}

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 6, 9, 0, 0).unwrap()
}

/// `start` plus whole days and hours.
fn at(start: DateTime<Utc>, days: i64, hours: i64) -> DateTime<Utc> {
    start + Duration::days(days) + Duration::hours(hours)
}

/// `n` instants evenly spaced over `[from, to)`.
fn spread(n: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let step = (to - from).num_seconds() / n as i64;
    (0..n as i64).map(|i| from + Duration::seconds(i * step)).collect()
}

fn rfc3339(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn message_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("msg-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn ev(ts: DateTime<Utc>, value: Value) -> Ev {
    Ev { ts, line: value.to_string() }
}

fn context(account: Option<&str>) -> Value {
    match account {
        Some(a) => json!({ "groupId": a }),
        None => json!({}),
    }
}

fn track(user: &str, account: Option<&str>, event: &str, ts: DateTime<Utc>) -> Ev {
    ev(
        ts,
        json!({
            "type": "track", "messageId": message_id(), "userId": user, "event": event,
            "timestamp": rfc3339(ts), "context": context(account), "properties": {},
        }),
    )
}

fn page(user: &str, account: Option<&str>, path: &str, ts: DateTime<Utc>) -> Ev {
    ev(
        ts,
        json!({
            "type": "page", "messageId": message_id(), "userId": user, "name": path,
            "timestamp": rfc3339(ts), "context": context(account),
            "properties": { "path": path, "url": format!("https://app.example.com{path}") },
        }),
    )
}

fn identify(user: &str, traits: Value, ts: DateTime<Utc>) -> Ev {
    ev(
        ts,
        json!({
            "type": "identify", "messageId": message_id(), "userId": user,
            "timestamp": rfc3339(ts), "traits": traits,
        }),
    )
}

fn group(user: &str, account: &str, ts: DateTime<Utc>) -> Ev {
    ev(
        ts,
        json!({
            "type": "group", "messageId": message_id(), "userId": user, "groupId": account,
            "timestamp": rfc3339(ts), "traits": { "name": format!("{account} Inc."), "plan": "free" },
        }),
    )
}

/// User ids are scoped to their account so no user ever links two scenarios.
fn users(account: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{account}-u{i}")).collect()
}

/// Plain usage events (no signal) from each of `who`, one per day for `days`
/// days starting at `from`, hours staggered per user.
fn daily_usage(account: &str, who: &[String], from: DateTime<Utc>, days: i64) -> Vec<Ev> {
    let mut out = Vec::new();
    for d in 0..days {
        for (i, u) in who.iter().enumerate() {
            out.push(track(u, Some(account), "Board Edited", at(from, d, i as i64)));
        }
    }
    out
}

/// `n` plain usage events over `[from, to)`, round-robin over `who`.
fn volume(account: &str, who: &[String], n: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Ev> {
    spread(n, from, to)
        .into_iter()
        .enumerate()
        .map(|(i, ts)| track(&who[i % who.len()], Some(account), "Board Edited", ts))
        .collect()
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// A check beyond the (account, rule) set, given the scenario's own output
/// events (all types, in output order).
type Extra = fn(&Scenario, &[&Value]) -> Result<(), String>;

struct Scenario {
    name: &'static str,
    account: String,
    events: Vec<Ev>,
    expected: Vec<&'static str>,
    extra: Option<Extra>,
}

impl Scenario {
    fn expected_pairs(&self) -> BTreeSet<(String, String)> {
        self.expected.iter().map(|r| (self.account.clone(), r.to_string())).collect()
    }
}

fn scenario(
    name: &'static str,
    start: DateTime<Utc>,
    expected: &[&'static str],
    story: impl FnOnce(&str, DateTime<Utc>) -> Vec<Ev>,
) -> Scenario {
    let account = format!("acct-{name}");
    let events = story(&account, start);
    Scenario { name, account, events, expected: expected.to_vec(), extra: None }
}

/// 3 users active on day 0, then one of them does `signal` on day 1, then
/// ordinary usage a few hours later (so the rule is evaluated after the
/// signal even if a non-usage call like `identify` does not trigger it).
fn three_users_then(a: &str, s: DateTime<Utc>, signal: impl FnOnce(&str, DateTime<Utc>) -> Vec<Ev>) -> Vec<Ev> {
    let u = users(a, 3);
    let mut e = daily_usage(a, &u, s, 1);
    e.extend(signal(&u[0], at(s, 1, 0)));
    e.push(track(&u[1], Some(a), "Board Edited", at(s, 1, 4)));
    e
}

fn legal_page(path: &'static str) -> impl FnOnce(&str, DateTime<Utc>) -> Vec<Ev> {
    move |a, s| three_users_then(a, s, |u, t| vec![page(u, Some(a), path, t)])
}

fn scenarios() -> Vec<Scenario> {
    // Each scenario starts two days after the previous one, so qualifications
    // in the combined run are spread out in time (a global budget, if any,
    // never has to choose between them).
    let mut k = 0;
    let mut next = || {
        k += 1;
        at(base(), 2 * (k - 1), 0)
    };
    let mut list = vec![
        // 1. Seven distinct users inside 28 days (first on day 0, last on day 12).
        scenario("team-adoption", next(), &["team_adoption"], |a, s| {
            let mut e = Vec::new();
            for (i, u) in users(a, 7).iter().enumerate() {
                let day = 2 * i as i64;
                e.push(track(u, Some(a), "Board Created", at(s, day, 0)));
                e.push(track(u, Some(a), "Board Edited", at(s, day, 3)));
            }
            e
        }),
        // 2. Six users, plenty of events: one short of the magic number.
        scenario("six-users", next(), &[], |a, s| volume(a, &users(a, 6), 150, s, at(s, 21, 0))),
        // 3. Seven users in total, but never seven inside one 28-day window:
        //    four users on days 0-2, three others on day 40 (38 days later).
        scenario("seven-users-spread-out", next(), &[], |a, s| {
            let u = users(a, 7);
            let mut e = daily_usage(a, &u[..4], s, 3);
            e.extend(daily_usage(a, &u[4..], at(s, 40, 0), 1));
            e
        }),
        // 4. Enterprise evaluation through a legal/trust page visit.
        scenario("legal-privacy", next(), &["enterprise_evaluation"], legal_page("/legal/privacy")),
        scenario("legal-terms", next(), &["enterprise_evaluation"], legal_page("/terms")),
        scenario("legal-security", next(), &["enterprise_evaluation"], legal_page("/security")),
        scenario("legal-dpa", next(), &["enterprise_evaluation"], legal_page("/dpa")),
        // 4'. An ordinary page is not a signal.
        scenario("ordinary-pages", next(), &[], |a, s| {
            three_users_then(a, s, |u, t| {
                vec![page(u, Some(a), "/pricing", t), page(u, Some(a), "/docs/getting-started", at(t, 0, 1))]
            })
        }),
        // 5. The visit is on day 0 (the visitor's only activity); the other two
        //    users show up on day 20. Three users are active from day 20 on,
        //    when the visit is 20 days old (> 14).
        scenario("legal-visit-too-old", next(), &[], |a, s| {
            let u = users(a, 3);
            let mut e = vec![page(&u[0], Some(a), "/legal/privacy", s)];
            e.extend(daily_usage(a, &u[1..], at(s, 20, 0), 2));
            e
        }),
        // 6. A fresh legal visit, but only two users.
        scenario("legal-visit-two-users", next(), &[], |a, s| {
            let u = users(a, 2);
            let mut e = daily_usage(a, &u, s, 3);
            e.push(page(&u[0], Some(a), "/legal/terms", at(s, 1, 5)));
            e
        }),
        // 7. Enterprise evaluation through an admin switch.
        scenario("admin-role-granted", next(), &["enterprise_evaluation"], |a, s| {
            three_users_then(a, s, |u, t| vec![track(u, Some(a), "Admin Role Granted", t)])
        }),
        scenario("workspace-owner-changed", next(), &["enterprise_evaluation"], |a, s| {
            three_users_then(a, s, |u, t| vec![track(u, Some(a), "Workspace Owner Changed", t)])
        }),
        scenario("identify-becomes-admin", next(), &["enterprise_evaluation"], |a, s| {
            // The user is known as a member on day 0 (after their first event,
            // so their account is known), then identified as admin on day 1.
            three_users_then(a, s, |u, t| {
                vec![
                    identify(u, json!({ "email": format!("{u}@example.com"), "role": "member" }), at(s, 0, 6)),
                    identify(u, json!({ "email": format!("{u}@example.com"), "role": "admin" }), t),
                ]
            })
        }),
        // 8. Hand-raisers fire at once, whatever the other numbers.
        Scenario {
            extra: Some(fires_at_trigger_time),
            ..scenario("contact-sales", next(), &["hand_raiser"], |a, s| {
                vec![track(&users(a, 1)[0], Some(a), "Contact Sales Submitted", s)]
            })
        },
        Scenario {
            extra: Some(fires_at_trigger_time),
            ..scenario("demo-requested", next(), &["hand_raiser"], |a, s| {
                vec![track(&users(a, 1)[0], Some(a), "Demo Requested", s)]
            })
        },
        scenario("contact-sales-viewed", next(), &[], |a, s| {
            let u = &users(a, 1)[0];
            vec![
                track(u, Some(a), "Pricing Viewed", s),
                track(u, Some(a), "Contact Sales Viewed", at(s, 0, 1)),
                track(u, Some(a), "Board Edited", at(s, 0, 2)),
            ]
        }),
        // 13. Users known only through `group` calls are not active users.
        scenario("group-only-users", next(), &[], |a, s| {
            let u = users(a, 8);
            let mut e: Vec<Ev> = u[3..].iter().enumerate().map(|(i, u)| group(u, a, at(s, 0, i as i64))).collect();
            e.extend(daily_usage(a, &u[..3], at(s, 1, 0), 3));
            e
        }),
        // 13'. Three users whose events carry no account, linked by an earlier
        //      `group` call, plus four users with context.groupId: seven active.
        scenario("attributed-through-group", next(), &["team_adoption"], |a, s| {
            let u = users(a, 7);
            let mut e: Vec<Ev> = u[..3].iter().enumerate().map(|(i, u)| group(u, a, at(s, 0, i as i64))).collect();
            for d in 1..4 {
                for (i, user) in u.iter().enumerate() {
                    let account = if i < 3 { None } else { Some(a) };
                    e.push(track(user, account, "Board Edited", at(s, d, i as i64)));
                }
            }
            e
        }),
        // 14. Cooldown: the same hand-raise five days later is not announced again.
        Scenario {
            extra: Some(announced_once),
            ..scenario("cooldown", next(), &["hand_raiser"], |a, s| {
                let u = &users(a, 1)[0];
                vec![
                    track(u, Some(a), "Contact Sales Submitted", s),
                    track(u, Some(a), "Board Edited", at(s, 2, 0)),
                    track(u, Some(a), "Contact Sales Submitted", at(s, 5, 0)),
                ]
            })
        },
        // 10. A new account's busy first week has no baseline: not a spike.
        scenario("busy-first-week", next(), &[], |a, s| volume(a, &users(a, 3), 300, s, at(s, 6, 12))),
    ];

    // The usage-spike stories are long (up to eight weeks), so they come last.
    list.extend([
        // 9. First seen day 0; 3 events a day (21/week) for six weeks, then
        //    175 events in days 42-48: >= 100 and >= 2x the 21/week baseline.
        scenario("usage-spike", next(), &["usage_spike"], |a, s| {
            let u = users(a, 3);
            let mut e = Vec::new();
            for d in 0..42 {
                for (i, h) in [0, 4, 8].into_iter().enumerate() {
                    e.push(track(&u[(d as usize + i) % 3], Some(a), "Board Edited", at(s, d, h)));
                }
            }
            e.extend(volume(a, &u, 175, at(s, 42, 0), at(s, 48, 12)));
            e
        }),
        // 11. 12x the baseline, but only 60 events in the week (< 100).
        scenario("spike-under-100", next(), &[], |a, s| {
            let u = users(a, 3);
            let mut e = Vec::new();
            for d in (0..49).filter(|d| d % 7 < 5) {
                e.push(track(&u[d as usize % 3], Some(a), "Board Edited", at(s, d, 1)));
            }
            e.extend(volume(a, &u, 60, at(s, 50, 0), at(s, 56, 12)));
            e
        }),
        // 12. 100 events/week for five weeks, then 150 in a week: 1.5x, not 2x.
        scenario("spike-not-2x", next(), &[], |a, s| {
            let u = users(a, 3);
            let mut e = volume(a, &u, 500, s, at(s, 35, 0));
            e.extend(volume(a, &u, 150, at(s, 35, 0), at(s, 42, 0)));
            e
        }),
    ]);
    list
}

/// A hand-raiser's qualified event carries the hand-raise's event time.
fn fires_at_trigger_time(s: &Scenario, out: &[&Value]) -> Result<(), String> {
    let trigger = s.events[0].ts;
    let q: Vec<_> = out.iter().filter(|e| e["type"] == QUALIFIED).collect();
    let first = q.first().ok_or("no qualified event")?;
    let time = first["time"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    match time {
        Some(t) if t == trigger => Ok(()),
        _ => Err(format!("qualified `time` is {}, the hand-raise was at {}", first["time"], rfc3339(trigger))),
    }
}

/// Exactly one qualified event lists hand_raiser. PRODUCT.md lets a rule be
/// re-announced within the cooldown only when the tier rises, so a second
/// one is tolerated only as a strict warm -> hot step.
fn announced_once(_: &Scenario, out: &[&Value]) -> Result<(), String> {
    let tiers: Vec<&str> = out
        .iter()
        .filter(|e| e["type"] == QUALIFIED && rules_of(e).contains(&"hand_raiser"))
        .map(|e| e["data"]["tier"].as_str().unwrap_or("?"))
        .collect();
    match tiers.as_slice() {
        [_] | ["warm", "hot"] => Ok(()),
        _ => Err(format!("expected one qualified event listing hand_raiser, got {} (tiers {tiers:?})", tiers.len())),
    }
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

struct Run {
    raw: Vec<u8>,
    events: Vec<Value>,
    dead_letter: String,
}

/// One `replay` over `events` (sorted by event time, stable) in a fresh
/// state directory.
fn replay(events: &[Ev]) -> Run {
    let mut events = events.to_vec();
    events.sort_by_key(|e| e.ts);
    let mut input = String::new();
    for e in &events {
        input.push_str(&e.line);
        input.push('\n');
    }

    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (inp, out, dlq) = (dir.path().join("in.ndjson"), dir.path().join("out.ndjson"), dir.path().join("dlq.ndjson"));
    std::fs::write(&inp, input).unwrap();

    let result = Command::new(BIN)
        .args(["replay", "--config", CONFIG])
        .arg("--input")
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .arg("--dead-letter")
        .arg(&dlq)
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .expect("run pqa-engine");
    assert!(
        result.status.success(),
        "pqa-engine replay failed: {}\nstderr:\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );

    let raw = std::fs::read(&out).expect("output file written");
    let events = String::from_utf8(raw.clone())
        .expect("output is UTF-8")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("output line is not JSON ({e}): {l}")))
        .collect::<Vec<Value>>();
    for e in &events {
        common::assert_valid_event(e, "replay");
    }
    let dead_letter = std::fs::read_to_string(&dlq).unwrap_or_default();
    Run { raw, events, dead_letter }
}

fn rules_of(e: &Value) -> Vec<&str> {
    e["data"]["rules"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn account_of(e: &Value) -> &str {
    e["data"]["account_id"].as_str().or_else(|| e["subject"].as_str()).unwrap_or("?")
}

fn qualified_pairs(events: &[Value]) -> BTreeSet<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == QUALIFIED)
        .flat_map(|e| rules_of(e).into_iter().map(move |r| (account_of(e).to_owned(), r.to_owned())))
        .collect()
}

fn compare_pairs(expected: &BTreeSet<(String, String)>, actual: &BTreeSet<(String, String)>) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "qualified (account, rule) pairs differ\n  missing:    {:?}\n  unexpected: {:?}\n  expected:   {expected:?}\n  actual:     {actual:?}",
        expected.difference(actual).collect::<Vec<_>>(),
        actual.difference(expected).collect::<Vec<_>>(),
    ))
}

/// Our input is all valid Segment events: anything dead-lettered would
/// silently change what the engine saw.
fn no_dead_letters(run: &Run) -> Result<(), String> {
    match run.dead_letter.trim() {
        "" => Ok(()),
        dlq => Err(format!("valid input was dead-lettered:\n{dlq}")),
    }
}

fn check_scenario_extras(list: &[Scenario], events: &[Value]) -> Vec<String> {
    let mut errors = Vec::new();
    for s in list {
        if let Some(extra) = s.extra {
            let own: Vec<&Value> = events.iter().filter(|e| account_of(e) == s.account).collect();
            if let Err(e) = extra(s, &own) {
                errors.push(format!("[{}] {e}", s.name));
            }
        }
    }
    errors
}

fn all_events(list: &[Scenario]) -> Vec<Ev> {
    list.iter().flat_map(|s| s.events.iter().cloned()).collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn all_scenarios_in_one_run_match_the_table() {
    let list = scenarios();
    let run = replay(&all_events(&list));
    let expected: BTreeSet<_> = list.iter().flat_map(Scenario::expected_pairs).collect();
    let actual = qualified_pairs(&run.events);

    let mut errors = Vec::new();
    errors.extend(no_dead_letters(&run).err());
    errors.extend(compare_pairs(&expected, &actual).err());
    errors.extend(check_scenario_extras(&list, &run.events));
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn each_scenario_alone_matches_the_table() {
    let list = scenarios();
    let results: Vec<(&Scenario, Run)> = std::thread::scope(|scope| {
        let handles: Vec<_> = list.iter().map(|s| scope.spawn(move || (s, replay(&s.events)))).collect();
        handles.into_iter().map(|h| h.join().expect("replay thread")).collect()
    });

    let mut errors = Vec::new();
    for (s, run) in &results {
        let mut problems = Vec::new();
        problems.extend(no_dead_letters(run).err());
        problems.extend(compare_pairs(&s.expected_pairs(), &qualified_pairs(&run.events)).err());
        errors.extend(problems.into_iter().map(|p| format!("[{}] {p}", s.name)));
        // Already prefixed with the scenario name.
        errors.extend(check_scenario_extras(std::slice::from_ref(*s), &run.events));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn replay_is_deterministic() {
    let input = all_events(&scenarios());
    let first = replay(&input);
    let second = replay(&input);
    assert!(!first.events.is_empty(), "expected some output to compare");
    if first.raw != second.raw {
        let a = String::from_utf8_lossy(&first.raw);
        let b = String::from_utf8_lossy(&second.raw);
        let diff = a.lines().zip(b.lines()).enumerate().find(|(_, (x, y))| x != y);
        panic!(
            "two replays of the same input differ ({} vs {} bytes); first differing line: {diff:?}",
            first.raw.len(),
            second.raw.len()
        );
    }
}

#[test]
fn every_output_event_is_a_well_formed_cloudevent() {
    let run = replay(&all_events(&scenarios()));
    let known_types = [QUALIFIED, "pqa.account.tier_changed", "pqa.account.disqualified"];
    let mut errors = Vec::new();
    let mut ids = BTreeMap::new();

    for (n, e) in run.events.iter().enumerate() {
        let mut bad = |what: &str| errors.push(format!("output line {}: {what}\n  {e}", n + 1));
        let str_field = |v: &Value| v.as_str().filter(|s| !s.is_empty()).is_some();
        let ty = e["type"].as_str().unwrap_or("");

        if e["specversion"] != "1.0" {
            bad("specversion is not \"1.0\"");
        }
        if !known_types.contains(&ty) {
            bad("unknown type");
        }
        match e["id"].as_str().filter(|s| !s.is_empty()) {
            Some(id) => {
                if let Some(prev) = ids.insert(id.to_owned(), n + 1) {
                    bad(&format!("id {id:?} already used on line {prev}"));
                }
            }
            None => bad("id is not a non-empty string"),
        }
        if !str_field(&e["source"]) {
            bad("source is not a non-empty string");
        }
        if !str_field(&e["subject"]) {
            bad("subject is not a non-empty string");
        }
        if e["time"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).is_none() {
            bad("time is not an RFC 3339 timestamp");
        }
        if ty != QUALIFIED {
            continue;
        }

        let d = &e["data"];
        if e["datacontenttype"] != "application/json" {
            bad("datacontenttype is not application/json");
        }
        if !d["account_id"].is_string() || e["subject"] != d["account_id"] {
            bad("subject differs from data.account_id");
        }
        if !str_field(&d["definition_version"]) {
            bad("data.definition_version is not a non-empty string");
        }
        let rules = rules_of(e);
        if rules.is_empty() || rules.iter().any(|r| !RULES.contains(r)) {
            bad("data.rules is empty or names an unknown rule");
        }
        if !matches!(d["score"].as_i64(), Some(0..=100)) {
            bad("data.score is not an integer in 0..=100");
        }
        if !matches!(d["tier"].as_str(), Some("hot" | "warm")) {
            bad("data.tier is not hot or warm");
        }
        if d["metrics"].get("active_users_28d").is_none() {
            bad("data.metrics has no active_users_28d");
        }
        if !d["signals"].is_array() {
            bad("data.signals is not an array");
        }
        if !d["leads"].is_array() {
            bad("data.leads is not an array");
        }
        if !d["account"].is_object() {
            bad("data.account is not an object");
        }
    }
    assert!(run.events.iter().any(|e| e["type"] == QUALIFIED), "no qualified events at all");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
