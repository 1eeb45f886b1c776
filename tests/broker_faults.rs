//! Broker faults (issue 3, item 7): the real engine runs as a child process
//! against librdkafka's mock cluster while the test injects faults: request
//! errors on Produce, Fetch and OffsetCommit (single errors and bursts),
//! partition leader changes on a 3-broker cluster, a broker down, a
//! leaderless partition, every broker down, a producer queue of 10 messages,
//! and deliveries that time out. Each time the output topic and the
//! dead-letter topic must equal a clean `pqa-engine replay` of the same
//! input (the same event ids, a repeat byte-identical to its first copy;
//! the same dead letters), the engine must keep running and exit 0 on
//! SIGTERM, and `/readyz` must say not ready exactly while it cannot make
//! progress.

mod common;
mod fault_support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{free_port, EngineProcess};
use fault_support::*;
use rdkafka::mocking::MockCoordinator;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use RDKafkaRespErr::*;

const PARTITIONS: i32 = 6;

/// The tests of this file run one at a time: each runs an engine and a
/// mock cluster, and CI has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn assert_alive(engine: &mut EngineProcess) {
    if let Some(st) = engine.child.try_wait().unwrap() {
        panic!("engine exited with {st} during the faults:\n{}", engine.log());
    }
}

fn readyz(engine: &EngineProcess) -> Option<(u16, String)> {
    engine.http_get("/readyz")
}

/// The engine's log, then what it says of its input now: whether the
/// consumer still lags (records not fetched or not applied) or only Kafka's
/// committed offsets do, gaps, and readiness. (The request-errors test
/// once ended with one partition 4 records short of its end for 60 s and
/// a quiet log: this tells the two apart next time.)
fn diagnosis(engine: &EngineProcess) -> String {
    let mut s = engine.log();
    if let Some((_, metrics)) = engine.http_get("/metrics") {
        s.push_str("\n-- /metrics of the input:\n");
        let wanted = ["pqa_consumer_lag", "pqa_input_gaps", "pqa_assigned_partitions", "pqa_batches_closed"];
        for l in metrics.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))) {
            s.push_str(l);
            s.push('\n');
        }
    }
    if let Some((code, body)) = readyz(engine) {
        s.push_str(&format!("-- /readyz: {code} {body}\n"));
    }
    s
}

/// Waits for the group to commit the end of the input, stops the engine
/// with SIGTERM (exit 0, quickly), then reads both topics and compares
/// them with the reference.
fn finish_and_compare(
    mock: &Mock,
    feeder: &Feeder,
    mut engine: EngineProcess,
    reference: &Reference,
    what: &str,
) -> Compared {
    wait_caught_up(&mock.bootstrap, &feeder.ends, Duration::from_secs(60), &|| diagnosis(&engine));
    assert_alive(&mut engine);
    let t = Instant::now();
    let st = engine.terminate(Duration::from_secs(30));
    assert!(st.success(), "{what}: SIGTERM exit {st}:\n{}", engine.log());
    assert!(t.elapsed() < Duration::from_secs(15), "{what}: SIGTERM took {:?}", t.elapsed());
    feeder.assert_topic_matches(&mock.bootstrap);
    let out = read_all(&mock.bootstrap, "out", OUT_PARTITIONS, Duration::from_secs(30));
    let dlq = read_all(&mock.bootstrap, "dlq", DLQ_PARTITIONS, Duration::from_secs(30));
    let c = compare(&out, &dlq, reference);
    eprintln!(
        "{what}: {} announcements and {} dead letters in the reference; topics held {} and {} records ({} and {} repeats)",
        reference.events.len(),
        reference.dead.len(),
        c.out_records,
        c.dead_records,
        c.out_repeats,
        c.dead_repeats
    );
    c
}

fn reference_for(dir: &std::path::Path, records: &[(String, Vec<u8>)]) -> Reference {
    let reference = replay_reference(dir, records, None);
    assert!(reference.events.len() >= 15, "the input must produce announcements ({})", reference.events.len());
    assert!(reference.dead.len() >= 100, "the input must produce dead letters ({})", reference.dead.len());
    reference
}

/// Request errors, one kind at a time and in bursts, while a few thousand
/// events flow. The input's leaders are on broker 1 (with the group
/// coordinator), the output's on brokers 2 and 3: Produce errors pushed on
/// 2 and 3 can only reach the engine's producer, Fetch errors on 1 only its
/// consumer, OffsetCommit errors only its auto-commit; the test checks that
/// each injected error was served.
#[test]
fn transient_request_errors_lose_and_skip_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let records = history(21, 20, 5000, 25);
    let reference = reference_for(dir.path(), &records);

    let mock = Mock::new(3, PARTITIONS);
    {
        let c = mock.cluster();
        for p in 0..PARTITIONS {
            c.partition_leader("events", p, Some(1)).unwrap();
        }
        for p in 0..OUT_PARTITIONS {
            c.partition_leader("out", p, Some(2 + p % 2)).unwrap();
        }
        for p in 0..DLQ_PARTITIONS {
            c.partition_leader("dlq", p, Some(3 - p % 2)).unwrap();
        }
        c.coordinator(MockCoordinator::Group(GROUP.into()), 1).unwrap();
    }
    let port = free_port();
    let config = write_config(
        &dir.path().join("engine"),
        &mock.bootstrap,
        &dir.path().join("state"),
        port,
        &Settings::default(),
    );
    let mut engine = start_engine(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));

    let mut feeder = Feeder::new(&mock.bootstrap, PARTITIONS);
    let chunks: Vec<_> = records.chunks(records.len() / 8 + 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        // Injected before the chunk, served while the engine works on it.
        let (api, errs): (RDKafkaApiKey, &[RDKafkaRespErr]) = match i % 4 {
            0 => (
                RDKafkaApiKey::Produce,
                &[
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                ],
            ),
            1 => (
                RDKafkaApiKey::Fetch,
                &[
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                ],
            ),
            2 => (
                RDKafkaApiKey::OffsetCommit,
                &[
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                    RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                ],
            ),
            _ => (RDKafkaApiKey::Produce, &[RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 12]),
        };
        let targets: &[i32] = match api {
            RDKafkaApiKey::Produce => &[2, 3],
            _ => &[1],
        };
        for b in targets {
            mock.push_broker_errors(*b, api, errs);
        }
        if i == 5 {
            // A burst on the whole cluster, every kind at once (the feeder
            // gets its share too).
            let c = mock.cluster();
            c.request_errors(RDKafkaApiKey::Produce, &[RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 20]);
            c.request_errors(RDKafkaApiKey::Fetch, &[RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 20]);
            c.request_errors(RDKafkaApiKey::OffsetCommit, &[RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 5]);
        }
        for (k, v) in chunk.iter() {
            feeder.send(k, v);
        }
        feeder.flush();
        mock.wait_errors_served(api, Duration::from_secs(30), &format!("chunk {i}"), &|| engine.log());
        assert_alive(&mut engine);
    }
    {
        let c = mock.cluster();
        for api in [RDKafkaApiKey::Produce, RDKafkaApiKey::Fetch, RDKafkaApiKey::OffsetCommit] {
            c.clear_request_errors(api);
        }
    }
    finish_and_compare(&mock, &feeder, engine, &reference, "request errors");
}

/// Leaders move under the engine on a 3-broker cluster (every partition of
/// the input, output and dead-letter topics, while records flow), a broker
/// goes down, partitions are led by a broker that is down for a while;
/// then every broker goes
/// down: `/readyz` must turn 503 and stay so until they are back, then 200.
#[test]
fn leader_changes_and_outages_lose_nothing_and_readiness_follows() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let records = history(22, 20, 5000, 25);
    let reference = reference_for(dir.path(), &records);

    let mock = Mock::new(3, PARTITIONS);
    mock.cluster().coordinator(MockCoordinator::Group(GROUP.into()), 1).unwrap();
    let port = free_port();
    let config = write_config(
        &dir.path().join("engine"),
        &mock.bootstrap,
        &dir.path().join("state"),
        port,
        &Settings { consumer: &[("debug", "consumer,cgrp,topic,fetch,broker")], ..Settings::default() },
    );
    // The consumer's librdkafka debug log, kept if the group falls behind
    // (see `wait_caught_up`): once in many runs it stopped consuming after
    // broker 3 came back, with no error, and passed every run since.
    let mut engine = start_engine_logging(&config, port, dir.path(), 1, "info,librdkafka=debug");
    engine.wait_ready(Duration::from_secs(60));

    let mut feeder = Feeder::new(&mock.bootstrap, PARTITIONS);
    let chunks: Vec<_> = records.chunks(records.len() / 8 + 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let (a, b) = chunk.split_at(chunk.len() / 2);
        for (k, v) in a {
            feeder.send(k, v);
        }
        match i {
            // Every leader moves, mid-chunk.
            0..=3 => mock.rotate_leaders(PARTITIONS, i as i32 + 1),
            // Broker 3 goes down once it leads nothing.
            4 => {
                let c = mock.cluster();
                for (topic, n) in [("events", PARTITIONS), ("out", OUT_PARTITIONS), ("dlq", DLQ_PARTITIONS)] {
                    for p in 0..n {
                        c.partition_leader(topic, p, Some(1 + p % 2)).unwrap();
                    }
                }
                c.broker_down(3).unwrap();
            }
            // An input, an output and a dead-letter partition get broker 3
            // as their leader while it is still down: unavailable until it
            // is back. (A leaderless partition would be the same test, but
            // the mock broker crashes answering a Produce for one: it
            // writes the CurrentLeader tag from a NULL leader.)
            5 => {
                let c = mock.cluster();
                c.partition_leader("events", 0, Some(3)).unwrap();
                c.partition_leader("out", 0, Some(3)).unwrap();
                c.partition_leader("dlq", 1, Some(3)).unwrap();
            }
            _ => {}
        }
        if i == 5 {
            // Send the rest of the chunk from a thread (partition 0 waits
            // for its leader), give the engine time to run into it.
            std::thread::scope(|s| {
                let h = s.spawn(|| {
                    for (k, v) in b {
                        feeder.send(k, v);
                    }
                    feeder.flush();
                });
                std::thread::sleep(Duration::from_millis(1500));
                mock.cluster().broker_up(3).unwrap();
                h.join().unwrap();
            });
        } else {
            for (k, v) in b {
                feeder.send(k, v);
            }
            feeder.flush();
        }
        assert_alive(&mut engine);
        assert_eq!(engine.http_get("/healthz").map(|x| x.0), Some(200));

        if i == 6 {
            // Every broker down: not ready within a few statistics
            // intervals, and not ready for as long as they stay down.
            wait_caught_up(&mock.bootstrap, &feeder.ends, Duration::from_secs(60), &|| diagnosis(&engine));
            mock.cluster().broker_down(-1).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match readyz(&engine) {
                    Some((503, body)) => {
                        assert!(body.contains("broker"), "{body}");
                        break;
                    }
                    other => assert!(
                        Instant::now() < deadline,
                        "still ready with every broker down: {other:?}\n{}",
                        engine.log()
                    ),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let r = readyz(&engine);
                assert_eq!(r.as_ref().map(|x| x.0), Some(503), "ready while every broker is down: {r:?}");
                assert_eq!(engine.http_get("/healthz").map(|x| x.0), Some(200), "alive, just not ready");
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_alive(&mut engine);
            mock.cluster().broker_up(-1).unwrap();
            engine.wait_ready(Duration::from_secs(30));
        }
    }
    finish_and_compare(&mock, &feeder, engine, &reference, "leader changes");
}

/// Hand-raisers in 2000 accounts (each qualifies at once) and 2000 bad
/// messages, all in the topic before the engine starts, so that a batch
/// carries thousands of announcements and dead letters, through a producer
/// whose queue holds 10 messages. A full queue is backpressure: nothing
/// may be dropped.
#[test]
fn a_full_producer_queue_is_backpressure_not_loss() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for i in 0..2000 {
        let acct = format!("hr-{i:05}");
        let ts = format!("2026-03-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i % 60);
        records.push((acct.clone(), common::track(&format!("{acct}-u"), Some(&acct), "Demo Requested", &ts)));
        records.push((acct, bad_line(i).0));
    }
    let reference = replay_reference(dir.path(), &records, None);
    assert_eq!(reference.events.len(), 2000, "one PQA per hand-raiser");
    assert_eq!(reference.dead.len(), 2000);

    let mock = Mock::new(1, PARTITIONS);
    let mut feeder = Feeder::new(&mock.bootstrap, PARTITIONS);
    for (k, v) in &records {
        feeder.send(k, v);
    }
    feeder.flush();
    let port = free_port();
    let settings = Settings {
        producer: &[("queue.buffering.max.messages", "10"), ("linger.ms", "5")],
        kafka: "max_batch_wait_ms = 2000\n",
        ..Settings::default()
    };
    let config = write_config(&dir.path().join("engine"), &mock.bootstrap, &dir.path().join("state"), port, &settings);
    let engine = start_engine(&config, port, dir.path(), 1);
    // Slow acknowledgements keep the queue full for longer.
    mock.cluster().broker_round_trip_time(1, Duration::from_millis(5)).unwrap();
    let t = Instant::now();
    wait_caught_up(&mock.bootstrap, &feeder.ends, Duration::from_secs(90), &|| diagnosis(&engine));
    let took = t.elapsed();
    let (_, metrics) = engine.http_get("/metrics").unwrap();
    let per_batch = metric_sum(&metrics, "pqa_batch_messages_sum") / metric_sum(&metrics, "pqa_batch_messages_count");
    assert!(per_batch >= 100.0, "batches must be large for the queue to fill ({per_batch:.0} messages per batch)");
    mock.cluster().broker_round_trip_time(1, Duration::ZERO).unwrap();
    let c = finish_and_compare(&mock, &feeder, engine, &reference, "queue of 10");
    eprintln!("caught up in {took:?}, {per_batch:.0} input messages per batch");
    assert_eq!(c.out_repeats + c.dead_repeats, 0, "nothing to repeat without a failure");
}

/// The output's leader becomes unreachable for longer than
/// `message.timeout.ms`: deliveries fail, the sink sends them again, and
/// `/readyz` says not ready until they go through. Nothing is lost; repeats
/// carry the same ids.
#[test]
fn deliveries_that_time_out_are_sent_again_not_dropped() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let records = history(23, 20, 4000, 20);
    let reference = reference_for(dir.path(), &records);

    let mock = Mock::new(2, PARTITIONS);
    {
        let c = mock.cluster();
        for p in 0..PARTITIONS {
            c.partition_leader("events", p, Some(1)).unwrap();
        }
        for p in 0..OUT_PARTITIONS {
            c.partition_leader("out", p, Some(2)).unwrap();
        }
        for p in 0..DLQ_PARTITIONS {
            c.partition_leader("dlq", p, Some(2)).unwrap();
        }
        // Only the output goes away here, not the state changelog (which
        // would block the batch after delivery, before any output fails).
        for p in 0..PARTITIONS {
            c.partition_leader("pqa-it-changelog", p, Some(1)).unwrap();
        }
        c.coordinator(MockCoordinator::Group(GROUP.into()), 1).unwrap();
    }
    let port = free_port();
    let settings = Settings { producer: &[("message.timeout.ms", "1500")], ..Settings::default() };
    let config = write_config(&dir.path().join("engine"), &mock.bootstrap, &dir.path().join("state"), port, &settings);
    let mut engine = start_engine(&config, port, dir.path(), 1);
    engine.wait_ready(Duration::from_secs(60));

    let mut feeder = Feeder::new(&mock.bootstrap, PARTITIONS);
    let half = records.len() / 2;
    for (k, v) in &records[..half] {
        feeder.send(k, v);
    }
    feeder.flush();
    wait_caught_up(&mock.bootstrap, &feeder.ends, Duration::from_secs(60), &|| diagnosis(&engine));

    // The output's broker goes away; the second half arrives.
    mock.cluster().broker_down(2).unwrap();
    for (k, v) in &records[half..] {
        feeder.send(k, v);
    }
    feeder.flush();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((503, _)) = readyz(&engine) {
            break;
        }
        assert!(Instant::now() < deadline, "ready while the output cannot be delivered:\n{}", engine.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Long enough for several delivery timeouts and resends.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = engine.http_get("/metrics").unwrap();
        if metric_sum(&m, "pqa_producer_delivery_failures_total") > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery failed with the output broker down:\n{}", engine.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(readyz(&engine).map(|x| x.0), Some(503), "not ready while deliveries fail");
    assert!(!caught_up(&mock.bootstrap, &feeder.ends), "nothing committed while the output is undelivered");
    assert_alive(&mut engine);
    mock.cluster().broker_up(2).unwrap();
    engine.wait_ready(Duration::from_secs(30));
    let (_, m) = engine.http_get("/metrics").unwrap();
    let failures = metric_sum(&m, "pqa_producer_delivery_failures_total");
    finish_and_compare(&mock, &feeder, engine, &reference, "delivery timeouts");
    eprintln!("{failures} delivery failures, resent");
}

/// Regression: the sink waited for `in_flight_count()` (librdkafka's
/// `outq_len`) to reach 0, but that also counts events waiting in the reply
/// queue (statistics, logs, errors), which `flush` does not serve once no
/// message is left: one such event arriving after the last delivery report
/// stalled the engine for ever ("output not acknowledged by Kafka"). With
/// producer statistics every millisecond, each delivery must still return.
#[test]
fn delivery_is_not_stalled_by_other_events_in_the_producer_queue() {
    use pqa_engine::decode::Reason;
    use pqa_engine::engine::{DeadLetter, Output};
    use pqa_engine::shutdown::Shutdown;
    use pqa_engine::sink::KafkaSink;

    let _serial = serial();
    let mock = Mock::new(1, 1);
    let mut cfg = pqa_engine::config::Config::default_config().kafka;
    cfg.bootstrap_servers = mock.bootstrap.clone();
    cfg.output_topic = "out".into();
    cfg.dlq_topic = "dlq".into();
    cfg.producer_properties.insert("statistics.interval.ms".into(), "1".into());
    let sink = KafkaSink::new(&cfg, 1 << 20, pqa_engine::telemetry::Metrics::new()).unwrap();
    let shutdown = Shutdown::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..100i64 {
                if shutdown.is_triggered() {
                    return;
                }
                let out = Output {
                    events: Vec::new(),
                    shadow_events: Vec::new(),
                    dead_letters: vec![DeadLetter {
                        payload: format!("bad {i}").into_bytes(),
                        key: None,
                        tombstone: false,
                        reason: Reason::InvalidJson,
                        detail: "test".into(),
                        topic: "events".into(),
                        partition: 0,
                        offset: i,
                    }],
                };
                let r = sink.deliver(&out, &shutdown, &|_| {});
                let _ = done_tx.send((i, r.map_err(|e| e.to_string())));
            }
        });
        for _ in 0..100 {
            match done_rx.recv_timeout(Duration::from_secs(10)) {
                Ok((i, r)) => assert!(r.is_ok(), "delivery {i}: {r:?}"),
                Err(_) => {
                    shutdown.trigger(); // the stuck delivery gives up after its grace period
                    panic!("a delivery did not return within 10 s");
                }
            }
        }
    });
    let dlq = read_all(&mock.bootstrap, "dlq", DLQ_PARTITIONS, Duration::from_secs(10));
    assert_eq!(dlq.len(), 100);
}
