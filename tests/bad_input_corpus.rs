//! Bad input never crashes or stalls the engine and is never silently lost.
//!
//! `tests/corpus/` holds one bad message per file, named
//! `<expected reason>--<short name>.bin`, where the reason is the exact
//! `Reason::as_str()` label the engine must give it. Files ending in `.gen`
//! are generated here instead of committed (the 1 MiB+ ones): their first line
//! is the total size in bytes, the rest a template whose `{FILL}` is replaced
//! by as many `x` as make that size.
//!
//! Both tests mix the corpus with good Segment events for three accounts (one
//! of them hand-raises, so a PQA must come out) and check that every bad
//! message is dead-lettered exactly once, with its reason and its original
//! bytes, that no good event is, and that the PQA of the good events is
//! produced: once through `replay` (NDJSON, one line per message), once
//! through `run` against librdkafka's mock cluster (raw message values, plus
//! a tombstone, which only exists on Kafka).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pqa_engine::decode::Reason;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pqa-engine.toml");
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

/// The account that hand-raises, and the one PQA the good events make.
const HAND_RAISER: &str = "acct-b";

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Case {
    /// File stem, e.g. `invalid_json--truncated`.
    name: String,
    /// Expected `Reason::as_str()`.
    reason: String,
    bytes: Vec<u8>,
    /// Generated (1 MiB and more): sent last on Kafka, see the Kafka test.
    big: bool,
}

impl Case {
    /// Can this case be one NDJSON line? Replay splits on `\n`, strips a
    /// trailing `\r` and skips blank (all-whitespace) lines, so cases that
    /// are about those bytes are covered on Kafka only.
    fn replayable(&self) -> bool {
        !self.bytes.contains(&b'\n') && !self.bytes.ends_with(b"\r") && !self.bytes.iter().all(u8::is_ascii_whitespace)
    }

    /// `too_late` needs the account's good events first.
    fn deferred(&self) -> bool {
        self.reason == Reason::TooLate.as_str()
    }
}

fn expand_gen(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let (size, template) = text.split_once('\n').unwrap_or_else(|| panic!("{}: no size line", path.display()));
    let size: usize = size.trim().parse().unwrap_or_else(|e| panic!("{}: size: {e}", path.display()));
    let fixed = template.len() - "{FILL}".len();
    assert!(template.contains("{FILL}") && size > fixed, "{}: bad template", path.display());
    let out = template.replacen("{FILL}", &"x".repeat(size - fixed), 1).into_bytes();
    assert_eq!(out.len(), size);
    out
}

fn corpus() -> Vec<Case> {
    let labels: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    let mut cases = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(CORPUS).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let (stem, ext) = file.rsplit_once('.').unwrap_or_else(|| panic!("{file}: no extension"));
        let (reason, _) = stem.split_once("--").unwrap_or_else(|| panic!("{file}: not <reason>--<name>.<ext>"));
        assert!(labels.contains(reason), "{file}: `{reason}` is not a Reason::as_str() label");
        let (bytes, big) = match ext {
            "bin" | "json" => (std::fs::read(&path).unwrap(), false),
            "gen" => (expand_gen(&path), true),
            other => panic!("{file}: unknown extension .{other}"),
        };
        cases.push(Case { name: stem.to_string(), reason: reason.to_string(), bytes, big });
    }
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    assert!(cases.len() >= 20, "at least 20 cases, found {}", cases.len());
    cases
}

#[test]
fn corpus_covers_every_reason() {
    let cases = corpus();
    let covered: BTreeSet<&str> = cases.iter().map(|c| c.reason.as_str()).collect();
    for r in Reason::ALL {
        assert!(covered.contains(r.as_str()), "no corpus case for `{}`", r.as_str());
    }
    // Exact bytes: one message per file, no stray trailing newline.
    for c in &cases {
        assert!(!c.bytes.ends_with(b"\n") || c.name.contains("line"), "{}: trailing newline", c.name);
    }
    let deep = cases.iter().find(|c| c.name == "invalid_json--nested-5000-deep").unwrap();
    assert!(deep.bytes.windows(5).filter(|w| w == b"{\"a\":").count() >= 5000);
    let nul = cases.iter().find(|c| c.name == "invalid_json--nul-byte").unwrap();
    assert!(nul.bytes.contains(&0), "a raw NUL byte, not an escaped one");
    assert!(cases.iter().any(|c| c.reason == "too_large" && c.bytes.len() > 1 << 20));
}

// ---------------------------------------------------------------------------
// Good events
// ---------------------------------------------------------------------------

/// Good Segment events for acct-a (3 users), acct-b (3 users, one hand-raise,
/// the last event) and acct-c (2 users), in time order, all in 2026-01.
/// None of them but the hand-raise makes a PQA.
fn good_events() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for (acct, name, users) in [
        ("acct-a", "Acme", &["a1", "a2", "a3"][..]),
        ("acct-b", "Bolt", &["b1", "b2", "b3"]),
        ("acct-c", "Cobalt", &["c1", "c2"]),
    ] {
        v.push((
            acct.into(),
            format!(
                r#"{{"type":"group","userId":"{}","groupId":"{acct}","timestamp":"2026-01-03T09:00:00Z","traits":{{"name":"{name}","employees":40,"plan":"free"}}}}"#,
                users[0]
            ),
        ));
        for (i, u) in users.iter().enumerate() {
            v.push((
                acct.into(),
                format!(
                    r#"{{"type":"identify","userId":"{u}","timestamp":"2026-01-03T10:00:00Z","traits":{{"email":"{u}@{acct}.example","role":"member"}}}}"#
                ),
            ));
            v.push((
                acct.into(),
                String::from_utf8(track(u, Some(acct), "Board Created", &format!("2026-01-0{}T1{i}:00:00Z", 4 + i)))
                    .unwrap(),
            ));
            // No account in the event: the user's last known account.
            v.push((
                acct.into(),
                String::from_utf8(track(u, None, "Card Moved", &format!("2026-01-0{}T1{i}:30:00Z", 4 + i))).unwrap(),
            ));
        }
        v.push((
            acct.into(),
            format!(
                r#"{{"type":"page","name":"Pricing","userId":"{}","timestamp":"2026-01-08T09:00:00Z","properties":{{"path":"/pricing","url":"https://app.example/pricing"}},"context":{{"groupId":"{acct}"}}}}"#,
                users[0]
            ),
        ));
    }
    v.push((
        HAND_RAISER.into(),
        String::from_utf8(track("b2", Some(HAND_RAISER), "Contact Sales Submitted", "2026-01-12T15:00:00Z")).unwrap(),
    ));
    v.into_iter().map(|(a, s)| (a, s.into_bytes())).collect()
}

/// One input message, good or bad.
#[derive(Debug, Clone)]
enum Item {
    Good { account: String, bytes: Vec<u8> },
    Bad(Case),
}

/// Good events and bad cases interleaved evenly; deferred cases (`too_late`)
/// at the very end, after the good events of their account.
fn mix(good: Vec<(String, Vec<u8>)>, bad: Vec<Case>) -> Vec<Item> {
    let (late, bad): (Vec<Case>, Vec<Case>) = bad.into_iter().partition(Case::deferred);
    let mut out = Vec::new();
    let mut gi = 0;
    for (j, c) in bad.iter().enumerate() {
        while gi < good.len() && gi * bad.len() <= j * good.len() {
            out.push(Item::Good { account: good[gi].0.clone(), bytes: good[gi].1.clone() });
            gi += 1;
        }
        out.push(Item::Bad(c.clone()));
    }
    for (account, bytes) in &good[gi..] {
        out.push(Item::Good { account: account.clone(), bytes: bytes.clone() });
    }
    out.extend(late.into_iter().map(Item::Bad));
    out
}

/// (account, rule) of every `pqa.account.qualified` event.
fn qualified(events: &[Value]) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for v in events {
        if v["type"] == "pqa.account.qualified" {
            for rule in v["data"]["rules"].as_array().unwrap() {
                pairs.insert((v["subject"].as_str().unwrap().to_string(), rule.as_str().unwrap().to_string()));
            }
        }
    }
    pairs
}

fn expected_pqas() -> BTreeSet<(String, String)> {
    [(HAND_RAISER.to_string(), "hand_raiser".to_string())].into_iter().collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The number written just before `label` in `text` ("12 dead letters").
fn number_before(text: &str, label: &str) -> u64 {
    let at = text.find(label).unwrap_or_else(|| panic!("`{label}` not in {text:?}"));
    let word = text[..at].trim_end().rsplit([' ', ',', ':']).next().unwrap();
    word.parse().unwrap_or_else(|e| panic!("`{word}` before `{label}`: {e}"))
}

// ---------------------------------------------------------------------------
// replay
// ---------------------------------------------------------------------------

#[test]
fn replay_dead_letters_every_corpus_line_once_with_its_reason() {
    let all = corpus();
    let (bad, skipped): (Vec<Case>, Vec<Case>) = all.into_iter().partition(Case::replayable);
    eprintln!(
        "replay: {} corpus lines; Kafka only: {:?}",
        bad.len(),
        skipped.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()
    );
    let items = mix(good_events(), bad.clone());

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let output = dir.path().join("out.ndjson");
    let dlq = dir.path().join("dlq.ndjson");
    let state = dir.path().join("state");
    let mut text = Vec::new();
    // line number (1-based) -> item
    let mut by_line: BTreeMap<u64, &Item> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let bytes = match item {
            Item::Good { bytes, .. } => bytes,
            Item::Bad(c) => &c.bytes,
        };
        text.extend_from_slice(bytes);
        text.push(b'\n');
        by_line.insert(i as u64 + 1, item);
    }
    std::fs::write(&input, &text).unwrap();

    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["replay", "--config", CONFIG, "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--dead-letter")
        .arg(&dlq)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_reader = {
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut err, &mut s).unwrap();
            s
        })
    };
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("replay stalled: still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = stderr_reader.join().unwrap();
    assert!(status.success(), "replay exited with {status}:\n{stderr}");

    // Dead letters: every corpus line exactly once, with its reason and bytes.
    let dead: Vec<Value> = std::fs::read_to_string(&dlq)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("DLQ line {l:?}: {e}")))
        .collect();
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for d in &dead {
        let line = d["line"].as_u64().unwrap_or_else(|| panic!("DLQ record without a line: {d}"));
        *seen.entry(line).or_default() += 1;
        let reason = d["reason"].as_str().unwrap();
        assert!(!d["detail"].as_str().unwrap_or_default().is_empty(), "no detail: {d}");
        match by_line.get(&line) {
            None => panic!("DLQ names line {line}, which is not in the input"),
            Some(Item::Good { bytes, .. }) => {
                panic!("good line {line} dead-lettered as {reason}: {}", String::from_utf8_lossy(bytes))
            }
            Some(Item::Bad(c)) => {
                if reason != c.reason {
                    wrong.push(format!("{}: expected {}, got {reason} ({})", c.name, c.reason, d["detail"]));
                }
                let original = match d.get("original_hex") {
                    Some(h) => {
                        assert!(std::str::from_utf8(&c.bytes).is_err(), "{}: original_hex on UTF-8 input", c.name);
                        hex(h.as_str().unwrap())
                    }
                    None => {
                        assert!(std::str::from_utf8(&c.bytes).is_ok(), "{}: no original_hex on non-UTF-8", c.name);
                        d["original"].as_str().unwrap().as_bytes().to_vec()
                    }
                };
                assert!(original == c.bytes, "{}: DLQ original differs from the input bytes", c.name);
            }
        }
    }
    assert!(wrong.is_empty(), "cases with another reason than expected:\n{}", wrong.join("\n"));
    for (line, item) in &by_line {
        if let Item::Bad(c) = item {
            assert_eq!(seen.get(line).copied().unwrap_or(0), 1, "{} (line {line}) dead-lettered once", c.name);
        }
    }
    assert_eq!(dead.len(), bad.len());

    // The good events did their job.
    let out: Vec<Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(qualified(&out), expected_pqas(), "output:\n{out:#?}");
    let pqa = out.iter().find(|v| v["subject"] == HAND_RAISER).unwrap();
    assert_eq!(pqa["time"], "2026-01-12T15:00:00Z");
    assert_eq!(pqa["data"]["leads"][0]["user_id"], "b2");

    // The summary counts.
    let good = items.iter().filter(|i| matches!(i, Item::Good { .. })).count() as u64;
    let summary = stderr.lines().find(|l| l.contains("events applied")).unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(number_before(summary, "events applied"), good, "{summary}");
    assert_eq!(number_before(summary, "dead letters"), bad.len() as u64, "{summary}");
    assert_eq!(number_before(summary, "announcements"), out.len() as u64, "{summary}");
    eprintln!("replay: {summary}; {:.2} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// run (Kafka)
// ---------------------------------------------------------------------------

/// A bad message sent to Kafka: a corpus case, or the tombstone.
#[derive(Debug, Clone)]
struct Sent {
    name: String,
    reason: String,
    /// `None` = tombstone.
    value: Option<Vec<u8>>,
}

fn big_producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap()
}

fn send_all(p: &BaseProducer, records: &[(String, Option<Vec<u8>>)]) {
    for (k, v) in records {
        let mut r: BaseRecord<'_, str, [u8]> = BaseRecord::to("events").key(k.as_str());
        if let Some(v) = v {
            r = r.payload(v.as_slice());
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// `pqa_dead_letters_total` per reason, from the /metrics text.
fn dead_letter_metrics(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("pqa_dead_letters_total{reason=\"") {
            let (reason, n) = rest.split_once("\"} ").unwrap();
            m.insert(reason.to_string(), n.trim().parse::<f64>().unwrap() as u64);
        }
    }
    m
}

fn log_tail(engine: &EngineProcess) -> String {
    let log = engine.log();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!("({} log lines, last 40)\n{}", lines.len(), lines[from..].join("\n"))
}

/// Checks the DLQ records against what was sent: every bad message exactly
/// once, matched by source offset (via the key read back from the input
/// topic), with its reason and original bytes.
fn check_dead_letters(dlq: &[Record], offset_key: &HashMap<i64, String>, sent: &BTreeMap<String, Sent>) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for r in dlq {
        assert_eq!(r.headers.get("pqa.source.topic").map(String::as_str), Some("events"), "{:?}", r.headers);
        assert_eq!(r.headers.get("pqa.source.partition").map(String::as_str), Some("0"), "{:?}", r.headers);
        assert!(r.headers.get("pqa.detail").is_some_and(|d| !d.is_empty()), "no detail: {:?}", r.headers);
        let offset: i64 = r.headers["pqa.source.offset"].parse().unwrap();
        let key = offset_key.get(&offset).unwrap_or_else(|| panic!("DLQ names offset {offset}, never produced"));
        let s = sent
            .get(key)
            .unwrap_or_else(|| panic!("good message {key} at offset {offset} dead-lettered: {:?}", r.headers));
        *seen.entry(s.name.as_str()).or_default() += 1;
        let reason = r.headers.get("pqa.reason").map(String::as_str).unwrap_or("<none>");
        if reason != s.reason {
            wrong.push(format!("{}: expected {}, got {reason} ({:?})", s.name, s.reason, r.headers.get("pqa.detail")));
        }
        let (got, original) = (r.payload.clone().unwrap_or_default(), s.value.clone().unwrap_or_default());
        if s.reason == "too_large" {
            // Over the size limit: the first `max_message_bytes` bytes, and
            // the original size in a header.
            assert_eq!(r.headers.get("pqa.original.size"), Some(&original.len().to_string()), "{}", s.name);
            assert!(got.len() == 1 << 20 && original.starts_with(&got), "{}: not the original's prefix", s.name);
        } else {
            assert!(got == original, "{}: DLQ payload differs from the original bytes", s.name);
        }
        assert_eq!(r.key.as_deref(), Some(key.as_bytes()), "{}: the original key is kept", s.name);
        assert_eq!(r.headers.contains_key("pqa.tombstone"), s.value.is_none(), "{}: tombstone header", s.name);
    }
    assert!(wrong.is_empty(), "cases with another reason than expected:\n{}", wrong.join("\n"));
    for s in sent.values() {
        assert_eq!(seen.get(s.name.as_str()).copied().unwrap_or(0), 1, "{} dead-lettered exactly once", s.name);
    }
}

#[test]
fn run_dead_letters_every_bad_message_once_with_reason_and_bytes() {
    let started = Instant::now();
    // One partition: the order of the input (too_late after its account's
    // good events) is the order the engine sees.
    let (_cluster, bootstrap) = mock_kafka(1);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let config = write_config(dir.path(), &bootstrap, &state, port, "");
    let mut engine = EngineProcess::start(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));

    let (big, small): (Vec<Case>, Vec<Case>) = corpus().into_iter().partition(|c| c.big);
    let items = mix(good_events(), small);
    let mut records: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut good_n = 0;
    for (i, item) in items.iter().enumerate() {
        match item {
            Item::Good { account, bytes } => {
                // Unique keys so that offsets map back to messages.
                records.push((format!("good-{i}-{account}"), Some(bytes.clone())));
                good_n += 1;
            }
            Item::Bad(c) => {
                records.push((c.name.clone(), Some(c.bytes.clone())));
                sent.insert(
                    c.name.clone(),
                    Sent { name: c.name.clone(), reason: c.reason.clone(), value: Some(c.bytes.clone()) },
                );
            }
        }
        if i == items.len() / 2 {
            records.push(("tomb".into(), None));
            sent.insert("tomb".into(), Sent { name: "empty--tombstone".into(), reason: "empty".into(), value: None });
        }
    }
    let p = big_producer(&bootstrap);
    send_all(&p, &records);

    // Read the input back: offset -> key (the tombstone and the empty
    // message have the same empty payload; keys tell them apart).
    let input = read_until(&bootstrap, "events", 1, Duration::from_secs(30), |r| r.len() >= records.len());
    assert_eq!(input.len(), records.len(), "all input produced");
    let mut offset_key: HashMap<i64, String> =
        input.iter().map(|r| (r.offset, String::from_utf8(r.key.clone().unwrap()).unwrap())).collect();
    let tomb = input.iter().find(|r| r.key.as_deref() == Some(b"tomb")).unwrap();
    assert!(tomb.payload.is_none(), "the tombstone has a null value");

    let dlq = read_until(&bootstrap, "dlq", 1, Duration::from_secs(60), |r| r.len() >= sent.len());
    assert_eq!(dlq.len(), sent.len(), "every bad message dead-lettered once; {}", log_tail(&engine));
    check_dead_letters(&dlq, &offset_key, &sent);

    let out = read_until(&bootstrap, "out", 1, Duration::from_secs(60), |r| {
        qualified(&r.iter().map(Record::json).collect::<Vec<_>>()).len() >= expected_pqas().len()
    });
    let out_json: Vec<Value> = out.iter().map(Record::json).collect();
    assert_eq!(qualified(&out_json), expected_pqas(), "{}", log_tail(&engine));
    assert_eq!(out[0].key.as_deref(), Some(HAND_RAISER.as_bytes()));

    // Counted in the metric, per reason; the engine is still healthy.
    let mut want: BTreeMap<String, u64> = Reason::ALL.iter().map(|r| (r.as_str().to_string(), 0)).collect();
    for s in sent.values() {
        *want.get_mut(&s.reason).unwrap() += 1;
    }
    let (code, metrics) = engine.http_get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(dead_letter_metrics(&metrics), want, "pqa_dead_letters_total");
    assert!(
        metrics.contains(&format!("pqa_events_total{{type=\"track\"}} {}", 3 * 2 + 3 * 2 + 2 * 2 + 1)),
        "{metrics}"
    );
    assert_eq!(engine.http_get("/healthz").unwrap().0, 200);
    assert_eq!(engine.http_get("/readyz").unwrap().0, 200);
    eprintln!("kafka: {good_n} good, {} bad dead-lettered, {:.2} s", sent.len(), started.elapsed().as_secs_f64());

    // Last, the 1 MiB+ messages, in their own batch, so that a failure here
    // is told apart from the rest.
    let mut big_records = Vec::new();
    for c in &big {
        big_records.push((c.name.clone(), Some(c.bytes.clone())));
        sent.insert(
            c.name.clone(),
            Sent { name: c.name.clone(), reason: c.reason.clone(), value: Some(c.bytes.clone()) },
        );
    }
    send_all(&p, &big_records);
    let input =
        read_until(&bootstrap, "events", 1, Duration::from_secs(30), |r| r.len() >= records.len() + big_records.len());
    if input.len() < records.len() + big_records.len() {
        // The brief allows this: then `too_large` is covered by replay only.
        panic!("the mock broker did not accept the 1 MiB+ messages; too_large is covered by replay only");
    }
    for r in &input[records.len()..] {
        offset_key.insert(r.offset, String::from_utf8(r.key.clone().unwrap()).unwrap());
    }
    let dlq = read_until(&bootstrap, "dlq", 1, Duration::from_secs(30), |r| r.len() >= sent.len());
    if dlq.len() != sent.len() {
        // Stuck: say how (readiness, last log lines) and whether SIGTERM
        // still stops it.
        let readyz = engine.http_get("/readyz");
        let tail = log_tail(&engine);
        let _ = Command::new("kill").args(["-TERM", &engine.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut exit = None;
        while exit.is_none() && Instant::now() < deadline {
            exit = engine.child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the 1 MiB+ messages ({}) were not dead-lettered within 30 s ({} of {} dead letters): the engine is \
             stuck; /readyz said {readyz:?}; after SIGTERM: {}; {tail}",
            big.iter().map(|c| format!("{} = {} bytes", c.name, c.bytes.len())).collect::<Vec<_>>().join(", "),
            dlq.len(),
            sent.len(),
            exit.map_or("still running 15 s later".to_string(), |st| format!("exited with {st}")),
        );
    }
    check_dead_letters(&dlq, &offset_key, &sent);

    let st = engine.terminate(Duration::from_secs(30));
    assert!(st.success(), "exit status {st}; {}", log_tail(&engine));
    eprintln!("kafka test: {:.2} s", started.elapsed().as_secs_f64());
}
