//! `pqa-engine simulate --topic`: the generated history goes into a Kafka
//! topic (librdkafka's mock cluster here), keyed by account, with the same
//! events as the file output for the same seed.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use common::{mock_kafka, read_until, BIN};

const SIM_ARGS: [&str; 8] = ["--accounts", "60", "--days", "14", "--seed", "7", "--start", "2026-03-01"];

fn account_of(json: &serde_json::Value) -> Option<String> {
    json.pointer("/context/groupId").or_else(|| json.pointer("/groupId")).and_then(|v| v.as_str()).map(str::to_string)
}

#[test]
fn simulate_into_a_topic_matches_the_file_and_is_keyed_by_account() {
    let dir = tempfile::tempdir().unwrap();

    // The file output for the seed, gzip-compressed by its name.
    let file = dir.path().join("history.ndjson.gz");
    let st = Command::new(BIN).arg("simulate").args(SIM_ARGS).arg("-o").arg(&file).status().unwrap();
    assert!(st.success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap()), &mut text)
        .expect("a complete gzip stream");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 1000, "a history of some size: {}", lines.len());
    assert!(lines.len() < 15_000, "small enough for the mock cluster's 5 MiB per partition: {}", lines.len());

    // The same seed into a topic of 4 partitions.
    let (_cluster, bootstrap) = mock_kafka(4);
    let out = Command::new(BIN)
        .arg("simulate")
        .args(SIM_ARGS)
        .args(["--bootstrap-servers", &bootstrap, "--topic", "events", "--progress"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate --topic failed: {stderr}");
    assert!(stderr.contains(&format!("produced {} events", lines.len())), "{stderr}");

    let records = read_until(&bootstrap, "events", 4, Duration::from_secs(60), |r| r.len() >= lines.len());
    assert_eq!(records.len(), lines.len(), "every event arrives, once");

    // Same events as the file (the value bytes are the file's lines).
    let mut from_file: Vec<&str> = lines.clone();
    let mut from_topic: Vec<&str> =
        records.iter().map(|r| std::str::from_utf8(r.payload.as_deref().unwrap()).unwrap()).collect();
    from_file.sort_unstable();
    from_topic.sort_unstable();
    assert!(from_file == from_topic, "the topic holds exactly the file's events");

    // Keyed by account: the key is the event's account, each account lives in
    // one partition, and within it the events keep the file's order.
    let position: HashMap<&str, usize> = lines.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut last_pos: HashMap<String, usize> = HashMap::new();
    let mut partitions_used = HashSet::new();
    let mut with_account = 0;
    // `read_until` gives no partition; re-read each partition on its own.
    for p in 0..4 {
        let recs = read_partition(&bootstrap, p);
        if !recs.is_empty() {
            partitions_used.insert(p);
        }
        for (key, value) in recs {
            let key = String::from_utf8(key.expect("every record has a key")).unwrap();
            assert!(key.starts_with("acct-"), "{key}");
            let json: serde_json::Value = serde_json::from_str(&value).unwrap();
            if let Some(acct) = account_of(&json) {
                assert_eq!(acct, key, "key = account id");
                with_account += 1;
            }
            assert_eq!(*partition_of.entry(key.clone()).or_insert(p), p, "{key} is in one partition");
            let pos = position[value.as_str()];
            if let Some(prev) = last_pos.insert(key.clone(), pos) {
                assert!(prev < pos, "{key}: events in the file's order within the partition");
            }
        }
    }
    assert_eq!(partition_of.len(), 60, "all 60 accounts produced events");
    assert!(partitions_used.len() > 1, "accounts spread over partitions");
    assert!(with_account > lines.len() / 2, "most events name their account");
}

#[test]
fn simulate_into_a_missing_topic_fails_fast() {
    let (_cluster, bootstrap) = mock_kafka(1);
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["simulate", "--accounts", "3", "--days", "2"])
        .args(["--bootstrap-servers", &bootstrap, "--topic", "no-such-topic"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("topic no-such-topic does not exist"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// All (key, value) records of one partition of `events`, in offset order.
fn read_partition(bootstrap: &str, partition: i32) -> Vec<(Option<Vec<u8>>, String)> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "simulate-topic-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("events", partition, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    drop(tpl);
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                assert_eq!(m.partition(), partition);
                out.push((m.key().map(<[u8]>::to_vec), String::from_utf8(m.payload().unwrap().to_vec()).unwrap()));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    out
}
