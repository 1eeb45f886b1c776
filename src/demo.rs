//! `pqa-engine demo`: nothing to install or configure. It starts an
//! embedded Kafka (librdkafka's mock cluster, real Kafka protocol on
//! loopback), a simulated product whose clock runs fast (weeks pass in
//! seconds), the real engine (`run`) against it, and prints each PQA as it
//! appears on the output topic.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::config::Config;
use crate::http::{self, AppState, Health};
use crate::kafka::produce::{self, SendError, Transient};
use crate::shutdown::Shutdown;
use crate::sim::{SimConfig, Simulator};
use crate::telemetry::Metrics;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    pub accounts: usize,
    pub days: u32,
    /// Wall-clock milliseconds per simulated day.
    pub day_ms: u64,
    pub seed: u64,
    /// HTTP address; if busy, a free port is used instead.
    pub http_addr: String,
    /// Print each announcement as the Slack message `deliver` would post
    /// (mrkdwn rendered plainly) instead of one line.
    pub deliver_stdout: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: None,
            accounts: 300,
            days: 90,
            day_ms: 200,
            seed: 42,
            http_addr: "127.0.0.1:9464".into(),
            deliver_stdout: false,
        }
    }
}

/// What the demo saw, printed at the end.
#[derive(Debug, Default, Clone)]
pub struct DemoSummary {
    pub events_produced: u64,
    pub announcements: u64,
    pub qualified_accounts: u64,
    pub by_rule: BTreeMap<String, u64>,
    /// What the budget did (`direct`, `bypassed`, `queued`, `released`,
    /// `expired`, `dropped`).
    pub budget: BTreeMap<String, u64>,
}

const EVENTS_TOPIC: &str = "segment.events";
/// The demo's budget: announcements per simulated day.
const DEMO_PER_DAY: u32 = 2;

/// Runs the demo until `opts.duration` passes or `shutdown` is triggered.
pub fn run_demo(opts: &DemoOptions, shutdown: &Shutdown, out: &mut dyn Write) -> anyhow::Result<DemoSummary> {
    let cluster = MockCluster::new(1).context("starting the embedded Kafka (mock cluster)")?;
    let mut cfg = Config::default_config();
    cluster.create_topic(EVENTS_TOPIC, 4, 1).context("creating the events topic")?;
    cluster.create_topic(&cfg.kafka.output_topic, 1, 1).context("creating the output topic")?;
    cluster.create_topic(&cfg.kafka.dlq_topic, 1, 1).context("creating the dead-letter topic")?;
    cluster.create_topic(&cfg.kafka.outcomes_topic, 1, 1).context("creating the outcomes topic")?;
    let bootstrap = cluster.bootstrap_servers();
    let state = tempfile::Builder::new().prefix("pqa-demo-").tempdir()?;
    cfg.kafka.bootstrap_servers = bootstrap.clone();
    cfg.kafka.group_id = "pqa-demo".into();
    // The mock cluster has no CreateTopics: make the changelog here.
    cluster.create_topic(&cfg.kafka.changelog_topic_name(), 4, 1).context("creating the changelog topic")?;
    cfg.kafka.input_topics = vec![EVENTS_TOPIC.into()];
    cfg.kafka.consumer_properties.insert("session.timeout.ms".into(), "6000".into());
    cfg.state.dir = state.path().to_path_buf();
    cfg.http.addr = opts.http_addr.clone();
    // Sales takes at most two new accounts a (simulated) day; hand-raisers
    // never wait. The demo's clock is the simulated product's, so the
    // budget counts in event time.
    if cfg.definition.budget.per_day.is_none() && cfg.definition.budget.per_hour.is_none() {
        cfg.definition.budget.per_day = Some(DEMO_PER_DAY);
        cfg.definition.budget.clock = Some("event".into());
    }
    let def = Arc::new(cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?);

    let stop = Shutdown::new();
    let metrics = Metrics::new();
    let health = Health::new();
    let app = AppState::new(def.clone(), metrics.clone(), health.clone());
    let published = app.published.clone();
    let shown = app.published.clone();
    let (http_addr, http_thread) = match http::spawn(&opts.http_addr, app.clone(), stop.clone()) {
        Ok(x) => x,
        Err(_) => http::spawn("127.0.0.1:0", app, stop.clone()).context("starting the HTTP server")?,
    };

    let now = chrono::Utc::now().timestamp();
    let start_unix = (now / 86_400 - i64::from(opts.days)) * 86_400;
    writeln!(out, "pqa-engine demo")?;
    writeln!(out, "  embedded Kafka      {bootstrap}  (librdkafka mock cluster, topic {EVENTS_TOPIC} x4)")?;
    writeln!(
        out,
        "  simulated product   {} accounts, {} days of usage, 1 day every {} ms",
        opts.accounts, opts.days, opts.day_ms
    )?;
    writeln!(out, "  definition          {}  (config/pqa-engine.toml)", def.version)?;
    writeln!(
        out,
        "  budget              {} a day reach sales, the rest wait best first; hand-raisers never wait",
        def.budget.per_day.map_or_else(|| "no cap:".to_string(), |n| n.to_string())
    )?;
    writeln!(out, "  metrics             http://{http_addr}/metrics   accounts: http://{http_addr}/accounts/<id>")?;
    writeln!(out)?;
    out.flush()?;

    // `--deliver stdout`: what sales would see in Slack.
    let glossary = crate::deliver::event::Glossary::new(&def);
    // The engine: the same `run` as production, against the embedded Kafka.
    let engine_cfg = cfg.clone();
    let (engine_stop, engine_health, engine_metrics) = (stop.clone(), health.clone(), metrics.clone());
    let engine = std::thread::Builder::new().name("pqa-engine".into()).spawn(move || {
        let hooks = crate::source::RunHooks { published: Some(published), ..Default::default() };
        let defs = Arc::new(crate::definitions::Definitions::single(def));
        crate::source::run_definitions(&engine_cfg, defs, engine_metrics, engine_health, &engine_stop, hooks)
    })?;

    // The simulated product, paced by its fast clock.
    let produced = Arc::new(Mutex::new(0u64));
    let sim_stop = stop.clone();
    let sim_produced = produced.clone();
    let sim_cfg = SimConfig { seed: opts.seed, accounts: opts.accounts, start_unix, days: opts.days };
    let day_ms = opts.day_ms.max(1);
    let sim_bootstrap = bootstrap.clone();
    let sim = std::thread::Builder::new().name("pqa-sim".into()).spawn(move || -> anyhow::Result<()> {
        let producer: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", &sim_bootstrap).set("linger.ms", "5").create()?;
        let t0 = Instant::now();
        for ev in Simulator::new(sim_cfg) {
            if sim_stop.is_triggered() {
                break;
            }
            let due = Duration::from_millis(((ev.time - start_unix).max(0) as u64) * day_ms / 86_400);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                producer.poll(Duration::ZERO);
                if sim_stop.sleep(wait) {
                    break;
                }
            }
            let rec = BaseRecord::<str, str>::to(EVENTS_TOPIC).key(&ev.account).payload(&ev.json);
            match produce::send(&producer, rec, Transient::Fail, &|| sim_stop.is_triggered()) {
                Ok(()) => {}
                Err(SendError::Stopped) => break,
                Err(e) => return Err(e.into()),
            }
            *sim_produced.lock().expect("lock") += 1;
        }
        producer.flush(Duration::from_secs(10))?;
        Ok(())
    })?;

    // The live view: read the output topic and print each announcement.
    let viewer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "pqa-demo-viewer")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.kafka.output_topic, 0, Offset::Beginning)?;
    viewer.assign(&tpl)?;
    drop(tpl);

    let public_base = format!("http://{http_addr}");
    // The demo's sales team answers each qualification on the outcomes
    // topic, as a CRM sync would.
    let sales: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "5").create()?;
    let mut answered = 0u64;
    let started = Instant::now();
    let mut summary = DemoSummary::default();
    let mut qualified = std::collections::BTreeSet::new();
    loop {
        if shutdown.is_triggered() || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        match viewer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(v) = m.payload().and_then(|p| serde_json::from_slice::<Value>(p).ok()) {
                    summary.announcements += 1;
                    if v["type"] == crate::emit::TYPE_QUALIFIED {
                        let account = v["subject"].as_str().unwrap_or_default();
                        qualified.insert(account.to_string());
                        for o in sales_answers(&v, chrono::Utc::now().timestamp_millis()) {
                            let rec = BaseRecord::<str, str>::to(&cfg.kafka.outcomes_topic).key(account).payload(&o);
                            if produce::send(&sales, rec, Transient::Fail, &|| stop.is_triggered()).is_ok() {
                                answered += 1;
                            }
                        }
                        for r in v["data"]["rules"].as_array().into_iter().flatten() {
                            *summary.by_rule.entry(r.as_str().unwrap_or_default().to_string()).or_default() += 1;
                        }
                    }
                    match m.payload().map(crate::deliver::event::Announcement::parse) {
                        Some(Ok(a)) if opts.deliver_stdout => {
                            let link = a.link(&public_base);
                            let msg = crate::deliver::slack::message(&a, &glossary, 3, link.as_deref());
                            writeln!(out, "{}\n", crate::deliver::slack::render_plain(&msg))?;
                        }
                        _ => writeln!(out, "{}", render_line(&v))?,
                    }
                    out.flush()?;
                }
            }
            Some(Err(e)) => tracing::debug!(cause = %e, "viewer"),
            None => {}
        }
        if engine.is_finished() {
            writeln!(out, "the engine stopped unexpectedly")?;
            break;
        }
    }
    // What sales made of it, as the engine counted it (before stopping: the
    // outcomes sent last are counted by then, or not at all).
    let _ = sales.flush(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let reports = shown.rules.lock().expect("lock").clone();
    stop.trigger();
    let engine_result = engine.join().map_err(|_| anyhow::anyhow!("engine thread panicked"))?;
    let _ = sim.join();
    let _ = http_thread.join();
    drop(viewer);
    engine_result.context("engine")?;
    summary.events_produced = *produced.lock().expect("lock");
    summary.qualified_accounts = qualified.len() as u64;
    writeln!(out)?;
    writeln!(
        out,
        "{} events produced, {} announcements, {} accounts qualified",
        summary.events_produced, summary.announcements, summary.qualified_accounts
    )?;
    for (rule, n) in &summary.by_rule {
        writeln!(out, "  {rule:<24} {n}")?;
    }
    let b = |o: &str| metrics.budget.with_label_values(&[o]).get();
    summary.budget = ["direct", "bypassed", "queued", "released", "expired", "dropped"]
        .iter()
        .map(|o| (o.to_string(), b(o)))
        .collect();
    writeln!(
        out,
        "budget: {} went out at once, {} hand-raisers bypassed it; {} waited: {} went out later, {} expired, {} \
         dropped (stopped qualifying), {} still waiting",
        b("direct"),
        b("bypassed"),
        b("queued"),
        b("released"),
        b("expired"),
        b("dropped"),
        metrics.budget_queue_length.get()
    )?;
    if let Some(live) = reports.first() {
        writeln!(
            out,
            "sales answered: {answered} outcomes sent back on {} (a seeded sales team); precision per rule \
             (GET /definitions/{}/rules):",
            cfg.kafka.outcomes_topic, live.version
        )?;
        for (rule, t) in live.rules.iter().filter(|(_, t)| t.announced > 0) {
            let precision = t.precision().map_or("-".to_string(), |p| format!("{:.0}%", p * 100.0));
            let lead = t.median_lead_days().map_or(String::new(), |d| format!(", median lead time {d:.1} days"));
            writeln!(
                out,
                "  {rule:<24} {} announced, {} answered, {} opportunity or won: precision {precision}{lead}",
                t.announced, t.answered, t.positive
            )?;
        }
    }
    drop(cluster);
    Ok(summary)
}

/// What the demo's sales team makes of a qualification, seeded by its id
/// (so a rerun answers the same): every hand-raiser is taken on and half
/// of them become opportunities; other accounts are taken on three times
/// in five, and a third of those become opportunities. Each answer comes
/// a simulated day after the announcement (never after `now_ms`).
fn sales_answers(v: &Value, now_ms: i64) -> Vec<String> {
    let id = v["id"].as_str().unwrap_or_default();
    let account = v["subject"].as_str().unwrap_or_default();
    let roll = u64::from_str_radix(id.get(..16).unwrap_or("0"), 16).unwrap_or(0);
    let (a, b) = (roll % 100, (roll / 100) % 100);
    let hand_raiser = v["data"]["rules"].as_array().into_iter().flatten().any(|r| r == "hand_raiser");
    let time = v["time"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let Some(time) = time.map(|t| t.timestamp_millis()) else { return Vec::new() };
    let at = |days: i64| crate::emit::format_time_ms((time + days * 86_400_000).min(now_ms));
    let answer = |kind: &str, days: i64| {
        format!(r#"{{"account_id":"{account}","outcome":"{kind}","at":"{}","pqa_event_id":"{id}"}}"#, at(days))
    };
    let taken = hand_raiser || a < 60;
    if !taken {
        return vec![answer("rejected", 1)];
    }
    let opportunity = if hand_raiser { b < 50 } else { b < 33 };
    let mut out = vec![answer("accepted", 1)];
    if opportunity {
        out.push(answer("opportunity", 3));
    }
    out
}

/// One readable line per announcement.
pub fn render_line(v: &Value) -> String {
    let d = &v["data"];
    let time = v["time"].as_str().unwrap_or_default();
    let day = time.get(..16).unwrap_or(time).replace('T', " ");
    let account = d["account_id"].as_str().unwrap_or_default();
    let name = d["account"]["name"].as_str().unwrap_or("");
    let kind = match v["type"].as_str().unwrap_or_default() {
        crate::emit::TYPE_QUALIFIED => "PQA         ",
        crate::emit::TYPE_TIER_CHANGED => "TIER UP     ",
        crate::emit::TYPE_DISQUALIFIED => "DISQUALIFIED",
        _ => "?           ",
    };
    let rules: Vec<&str> = d["rules"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let lead = d["leads"]
        .get(0)
        .map(|l| {
            let who = l["traits"]["email"].as_str().or(l["user_id"].as_str()).unwrap_or_default();
            let why: Vec<&str> = l["why"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            format!("  lead {who} ({})", why.first().copied().unwrap_or_default())
        })
        .unwrap_or_default();
    let waited = match (d["qualified_at"].as_str(), v["time"].as_str()) {
        (Some(q), Some(t)) if q != t => {
            let secs = |x: &str| chrono::DateTime::parse_from_rfc3339(x).map(|d| d.timestamp()).unwrap_or(0);
            let m = (secs(t) - secs(q)).max(0) / 60;
            match (m / 1440, (m / 60) % 24, m % 60) {
                (0, 0, m) => format!("  (waited {m}m for budget)"),
                (0, h, m) => format!("  (waited {h}h {m:02}m for budget)"),
                (d, h, _) => format!("  (waited {d}d {h}h for budget)"),
            }
        }
        _ => String::new(),
    };
    format!(
        "[{day}] {kind} {account:<12} {name:<12} {:<40} score {:>3} {:<4}{lead}{waited}",
        rules.join("+"),
        d["score"].as_u64().unwrap_or(0),
        d["tier"].as_str().unwrap_or_default(),
    )
}
