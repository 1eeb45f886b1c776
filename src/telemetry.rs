//! Metrics, with their names in one place. Counters are
//! `pqa_<noun>_total`, durations in seconds; labels are bounded sets (event
//! type, reason, rule, tier): never an account or user id.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::proto::{MetricFamily, MetricType};

use crate::decode::{Kind, Reason};

/// Families a process with workers takes from its own metrics only: the
/// per-rule numbers, which the process sets from the workers' merged
/// reports (a precision or a median is not a sum of the workers').
const PROCESS_ONLY: &[&str] = &[
    "pqa_rule_announced",
    "pqa_rule_answered",
    "pqa_rule_outcomes",
    "pqa_rule_positive",
    "pqa_rule_precision",
    "pqa_rule_lead_time_days",
];
/// Gauges merged over the workers by their largest value (every other
/// gauge is a sum: records, cache entries, lag, queue lengths).
const MERGED_BY_MAX: &[&str] =
    &["pqa_ready", "pqa_event_time_watermark_seconds", "pqa_definition_info", "pqa_metric_warming_up"];
/// Gauges merged by their smallest value other than 0 (0: a worker with
/// nothing applied yet).
const MERGED_BY_MIN: &[&str] = &["pqa_low_watermark_seconds"];

/// Every metric the engine exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Valid events applied, by call type.
    pub events: IntCounterVec,
    /// Messages dead-lettered, by reason.
    pub dead_letters: IntCounterVec,
    /// Input messages skipped because their offset was already applied
    /// (replayed by Kafka after a rebalance or restart).
    pub duplicates_skipped: IntCounter,
    /// Events counted once because their `messageId` was already applied.
    pub duplicate_events: IntCounter,
    /// Announcements produced, by type.
    pub announcements: IntCounterVec,
    /// Qualified announcements by rule and tier (a rule listed in an event).
    pub pqas: IntCounterVec,
    /// Rule evaluation errors, by rule.
    pub rule_errors: IntCounterVec,
    /// Time to process a batch (decode, state, detect, emit), by stage.
    pub batch_seconds: HistogramVec,
    /// From a message's Kafka timestamp to its batch being committed.
    pub end_to_end_seconds: Histogram,
    /// 1 when `/readyz` would answer 200, else 0 (set at each scrape).
    pub ready: IntGauge,
    /// The engine's share of the latency: from `run` receiving a message
    /// to the announcement it led to being handed to the producer.
    pub engine_latency: Histogram,
    /// The broker's share: from a record's Kafka timestamp to `run`
    /// receiving it.
    pub broker_latency: Histogram,
    /// Batches committed.
    pub batches: IntCounter,
    /// State commits (RocksDB write batches) and offset commits to Kafka.
    pub commits: IntCounterVec,
    /// Messages per batch.
    pub batch_messages: Histogram,
    /// Batches the consumer loop closed, by the limit that closed them
    /// (`messages`, `records`, `wait`; `error` after a consumer error).
    pub batches_closed: IntCounterVec,
    /// Producer delivery failures (retried).
    pub delivery_failures: IntCounter,
    /// Accounts in the in-memory cache.
    pub cache_accounts: IntGauge,
    pub cache_users: IntGauge,
    pub dedupe_ids_in_memory: IntGauge,
    /// Estimated records and bytes of state.
    pub state_records: IntGauge,
    pub state_bytes: IntGauge,
    /// Event-time watermark (Unix seconds).
    pub watermark_seconds: IntGauge,
    /// Partitions currently assigned, by input topic.
    pub assigned_partitions: IntGaugeVec,
    /// Consumer lag (messages) summed over assigned partitions.
    pub consumer_lag: IntGauge,
    /// State records written to the changelog topic (markers included).
    pub changelog_records: IntCounter,
    /// Changelog records read back into state when partitions arrived.
    pub restored_records: IntCounter,
    /// Changelog records still to read for the partitions being restored.
    pub restore_remaining: IntGauge,
    /// Partitions being restored right now.
    pub restoring_partitions: IntGauge,
    /// Time to restore one partition's state.
    pub restore_seconds: Histogram,
    /// Input ranges a broker skipped after a seek, by what became of them.
    pub input_gaps: IntCounterVec,
    /// Offsets in those ranges, by what became of them.
    pub input_gap_records: IntCounterVec,
    /// The same for the changelog restore.
    pub changelog_gaps: IntCounterVec,
    pub changelog_gap_records: IntCounterVec,
    /// Valid events counted and skipped (normal traffic that cannot count:
    /// a visitor with no account), by reason.
    pub events_skipped: IntCounterVec,
    /// Events of an account that arrived on another input partition than
    /// the account's previous event: the input is not keyed by account,
    /// which several instances or workers need (see README, "What scale-out
    /// needs from the input").
    pub account_partition_changes: IntCounter,
    /// Announcements of the live definition by what the budget did with
    /// them: `queued` (no room: waits), `released` (went out after
    /// waiting), `direct` (went out at once, within the budget), `bypassed`
    /// (a rule that bypasses the budget), `expired` (waited longer than
    /// `max_wait`), `dropped` (the account stopped qualifying while it
    /// waited).
    pub budget: IntCounterVec,
    /// Announcements waiting for budget now.
    pub budget_queue_length: IntGauge,
    /// Qualified accounts disqualified by the sweep (no event: their
    /// windows no longer hold), by definition role.
    pub sweep_disqualified: IntCounterVec,
    /// Accounts the sweep looked at.
    pub sweep_checks: IntCounter,
    /// The engine's event-time low watermark (the least advanced of its
    /// partitions), in seconds.
    pub low_watermark_seconds: IntGauge,
    /// 1 per definition running: `{version, fingerprint, role}` (role
    /// `live` or `shadow`).
    pub definition_info: IntGaugeVec,
    /// Announcements of every definition (live and shadow), by version,
    /// role and type (`qualified`, `tier_changed`, `disqualified`).
    pub definition_announcements: IntCounterVec,
    /// Qualified announcements of every definition by version, role, rule
    /// listed and tier.
    pub definition_qualified: IntCounterVec,
    /// Per shadow version: accounts qualified by both it and the live
    /// definition, by the live one only, by the shadow only.
    pub shadow_agreement: IntGaugeVec,
    /// 1 while a metric of a definition is warming up (its window reaches
    /// back before what the state holds), else 0.
    pub metric_warming_up: IntGaugeVec,
    /// Definition reloads that took effect, and reloads refused (invalid
    /// file, or a change the state cannot serve).
    pub definition_reloads: IntCounter,
    pub definition_reload_failures: IntCounter,
    /// Outcome records read from the outcomes topic, by outcome and what
    /// they were joined to (`event_id`, `time`, `none`: no announcement of
    /// the live definition; `pending`: the account is not (yet) in a
    /// partition of this instance).
    pub outcomes: IntCounterVec,
    /// Per definition version, role and rule (`*`: all rules), over the
    /// accounts of this instance's partitions (sum over instances):
    /// announcements kept with the accounts, those with an outcome, and
    /// those with each kind of outcome.
    pub rule_announced: IntGaugeVec,
    pub rule_answered: IntGaugeVec,
    pub rule_outcomes: IntGaugeVec,
    /// Announcements with an opportunity or a win.
    pub rule_positive: IntGaugeVec,
    /// Opportunities or wins over the announcements with an outcome.
    pub rule_precision: GaugeVec,
    /// Days from the first announcement to the opportunity or win, median
    /// and 90th percentile (`quantile` 0.5, 0.9).
    pub rule_lead_time_days: GaugeVec,
    /// The workers' own metrics (`kafka.workers` > 1), merged into this
    /// one's exposition (see [`Metrics::render`]).
    workers: Arc<Mutex<Vec<Metrics>>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let events = reg(
            &registry,
            IntCounterVec::new(Opts::new("pqa_events_total", "Valid input events applied, by call type"), &["type"])
                .unwrap(),
        );
        for k in Kind::ALL {
            events.with_label_values(&[k.as_str()]);
        }
        let dead_letters = reg(
            &registry,
            IntCounterVec::new(
                Opts::new("pqa_dead_letters_total", "Input messages dead-lettered, by reason"),
                &["reason"],
            )
            .unwrap(),
        );
        for r in Reason::ALL {
            dead_letters.with_label_values(&[r.as_str()]);
        }
        let m = Metrics {
            events,
            dead_letters,
            duplicates_skipped: reg(
                &registry,
                IntCounter::new(
                    "pqa_duplicate_messages_skipped_total",
                    "Input messages skipped because their offset was already applied to state",
                )
                .unwrap(),
            ),
            duplicate_events: reg(
                &registry,
                IntCounter::new(
                    "pqa_duplicate_events_total",
                    "Events ignored because their messageId was already applied (upstream retries)",
                )
                .unwrap(),
            ),
            announcements: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pqa_announcements_total", "Events produced to the output topic, by type"),
                    &["type"],
                )
                .unwrap(),
            ),
            pqas: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pqa_qualified_total", "Qualified announcements, by rule listed and tier"),
                    &["rule", "tier"],
                )
                .unwrap(),
            ),
            rule_errors: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pqa_rule_errors_total", "Rule conditions that failed to evaluate"),
                    &["rule"],
                )
                .unwrap(),
            ),
            batch_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("pqa_batch_duration_seconds", "Time spent per batch, by stage")
                        .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).unwrap()),
                    &["stage"],
                )
                .unwrap(),
            ),
            end_to_end_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pqa_processing_latency_seconds",
                        "From a message's Kafka timestamp to its batch being durable",
                    )
                    .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).unwrap()),
                )
                .unwrap(),
            ),
            ready: reg(
                &registry,
                IntGauge::new("pqa_ready", "1 when /readyz answers 200 (consuming, partitions assigned, no problem), else 0")
                    .unwrap(),
            ),
            engine_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pqa_engine_latency_seconds",
                        "From a message received by the consumer loop to the announcement it led to handed to the producer",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap()),
                )
                .unwrap(),
            ),
            broker_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pqa_broker_latency_seconds",
                        "From a message's Kafka timestamp to the consumer loop receiving it",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap()),
                )
                .unwrap(),
            ),
            batches: reg(&registry, IntCounter::new("pqa_batches_total", "Batches processed and committed").unwrap()),
            commits: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pqa_commits_total", "Commits, by kind (state, kafka_offsets)"),
                    &["kind"],
                )
                .unwrap(),
            ),
            batch_messages: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("pqa_batch_messages", "Messages per batch")
                        .buckets(prometheus::exponential_buckets(1.0, 4.0, 9).unwrap()),
                )
                .unwrap(),
            ),
            batches_closed: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_batches_closed_total",
                        "Batches the consumer loop closed, by what closed them (messages, records, wait, error)",
                    ),
                    &["by"],
                )
                .unwrap(),
            ),
            delivery_failures: reg(
                &registry,
                IntCounter::new(
                    "pqa_producer_delivery_failures_total",
                    "Output messages whose delivery failed (retried)",
                )
                .unwrap(),
            ),
            cache_accounts: reg(
                &registry,
                IntGauge::new("pqa_cache_accounts", "Accounts in the in-memory cache").unwrap(),
            ),
            cache_users: reg(&registry, IntGauge::new("pqa_cache_users", "Users in the in-memory cache").unwrap()),
            dedupe_ids_in_memory: reg(
                &registry,
                IntGauge::new(
                    "pqa_dedupe_ids_in_memory",
                    "Message ids of the dedupe window kept in memory (at most input.dedupe_memory_ids)",
                )
                .unwrap(),
            ),
            state_records: reg(&registry, IntGauge::new("pqa_state_records", "Estimated records in RocksDB").unwrap()),
            state_bytes: reg(
                &registry,
                IntGauge::new("pqa_state_size_bytes", "Estimated RocksDB size (SST + memtables)").unwrap(),
            ),
            watermark_seconds: reg(
                &registry,
                IntGauge::new("pqa_event_time_watermark_seconds", "Latest event time applied (Unix seconds)").unwrap(),
            ),
            assigned_partitions: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("pqa_assigned_partitions", "Input partitions assigned to this instance"),
                    &["topic"],
                )
                .unwrap(),
            ),
            consumer_lag: reg(
                &registry,
                IntGauge::new("pqa_consumer_lag_messages", "Messages behind the log end").unwrap(),
            ),
            changelog_records: reg(
                &registry,
                IntCounter::new("pqa_changelog_records_total", "State records written to the changelog topic").unwrap(),
            ),
            restored_records: reg(
                &registry,
                IntCounter::new("pqa_changelog_restored_records_total", "Changelog records restored into state")
                    .unwrap(),
            ),
            restore_remaining: reg(
                &registry,
                IntGauge::new(
                    "pqa_changelog_restore_remaining_records",
                    "Changelog records still to restore for arriving partitions",
                )
                .unwrap(),
            ),
            restoring_partitions: reg(
                &registry,
                IntGauge::new("pqa_changelog_restoring_partitions", "Partitions whose state is being restored")
                    .unwrap(),
            ),
            restore_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("pqa_changelog_restore_seconds", "Time to restore one partition's state")
                        .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
                )
                .unwrap(),
            ),
            input_gaps: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_input_gaps_total",
                        "Input ranges the broker skipped after a seek, by outcome (recovered, empty, truncated, unreadable)",
                    ),
                    &["outcome"],
                )
                .unwrap(),
            ),
            input_gap_records: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pqa_input_gap_records_total", "Offsets in input ranges the broker skipped, by outcome"),
                    &["outcome"],
                )
                .unwrap(),
            ),
            changelog_gaps: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pqa_changelog_gaps_total", "Changelog ranges the broker skipped during a restore, by outcome"),
                    &["outcome"],
                )
                .unwrap(),
            ),
            changelog_gap_records: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_changelog_gap_records_total",
                        "Offsets in changelog ranges the broker skipped during a restore, by outcome",
                    ),
                    &["outcome"],
                )
                .unwrap(),
            ),
            account_partition_changes: reg(
                &registry,
                IntCounter::new(
                    "pqa_account_partition_changes_total",
                    "Events of an account on another input partition than its previous event (input not keyed by account)",
                )
                .unwrap(),
            ),
            events_skipped: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_events_skipped_total",
                        "Valid events that cannot count and are skipped, not dead-lettered, by reason",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            budget: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_budget_announcements_total",
                        "Live announcements by what the budget did: queued, released, direct, bypassed, expired, dropped",
                    ),
                    &["outcome"],
                )
                .unwrap(),
            ),
            outcomes: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_outcomes_total",
                        "Outcome records read from the outcomes topic, by outcome and what they were joined to",
                    ),
                    &["outcome", "joined"],
                )
                .unwrap(),
            ),
            rule_announced: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("pqa_rule_announced", "Announcements kept to join outcomes to, per definition and rule"),
                    &["version", "role", "rule"],
                )
                .unwrap(),
            ),
            rule_answered: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("pqa_rule_answered", "Announcements with at least one outcome, per definition and rule"),
                    &["version", "role", "rule"],
                )
                .unwrap(),
            ),
            rule_outcomes: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pqa_rule_outcomes",
                        "Announcements with an outcome of each kind, per definition, rule and outcome",
                    ),
                    &["version", "role", "rule", "outcome"],
                )
                .unwrap(),
            ),
            rule_positive: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("pqa_rule_positive", "Announcements with an opportunity or a win, per definition and rule"),
                    &["version", "role", "rule"],
                )
                .unwrap(),
            ),
            rule_precision: reg(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "pqa_rule_precision",
                        "Opportunities or wins over the announcements with an outcome, per definition and rule",
                    ),
                    &["version", "role", "rule"],
                )
                .unwrap(),
            ),
            rule_lead_time_days: reg(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "pqa_rule_lead_time_days",
                        "Days from the first announcement to the opportunity or win (median, p90)",
                    ),
                    &["version", "role", "rule", "quantile"],
                )
                .unwrap(),
            ),
            budget_queue_length: reg(
                &registry,
                IntGauge::new("pqa_budget_queue_length", "Announcements waiting for budget").unwrap(),
            ),
            sweep_disqualified: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_sweep_disqualified_total",
                        "Accounts disqualified by the sweep (quiet: their windows no longer hold), by role",
                    ),
                    &["role"],
                )
                .unwrap(),
            ),
            sweep_checks: reg(
                &registry,
                IntCounter::new("pqa_sweep_checks_total", "Accounts the disqualification sweep looked at").unwrap(),
            ),
            low_watermark_seconds: reg(
                &registry,
                IntGauge::new(
                    "pqa_low_watermark_seconds",
                    "Event-time low watermark (the least advanced partition), Unix seconds",
                )
                .unwrap(),
            ),
            definition_info: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("pqa_definition_info", "Definitions running (1 each), by version, fingerprint and role"),
                    &["version", "fingerprint", "role"],
                )
                .unwrap(),
            ),
            definition_announcements: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_definition_announcements_total",
                        "Announcements of each definition (live and shadow), by version, role and type",
                    ),
                    &["version", "role", "type"],
                )
                .unwrap(),
            ),
            definition_qualified: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_definition_qualified_total",
                        "Qualified announcements of each definition, by version, role, rule listed and tier",
                    ),
                    &["version", "role", "rule", "tier"],
                )
                .unwrap(),
            ),
            shadow_agreement: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pqa_shadow_agreement_accounts",
                        "Accounts qualified since the shadow was loaded: by both it and the live definition, live only, shadow only",
                    ),
                    &["version", "agreement"],
                )
                .unwrap(),
            ),
            metric_warming_up: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pqa_metric_warming_up",
                        "1 while a definition's metric reaches back before what the state holds (new, or a longer window)",
                    ),
                    &["version", "metric"],
                )
                .unwrap(),
            ),
            definition_reloads: reg(
                &registry,
                IntCounter::new("pqa_definition_reloads_total", "Definition reloads that took effect").unwrap(),
            ),
            definition_reload_failures: reg(
                &registry,
                IntCounter::new(
                    "pqa_definition_reload_failures_total",
                    "Definition reloads refused (invalid file, or a change the state cannot serve)",
                )
                .unwrap(),
            ),
            registry,
            workers: Arc::default(),
        };
        for o in crate::gaps::GapOutcome::ALL {
            for c in [&m.input_gaps, &m.input_gap_records, &m.changelog_gaps, &m.changelog_gap_records] {
                c.with_label_values(&[o.as_str()]);
            }
        }
        for r in ["anonymous_without_account", "anonymous_traits"] {
            m.events_skipped.with_label_values(&[r]);
        }
        for o in ["queued", "released", "direct", "bypassed", "expired", "dropped"] {
            m.budget.with_label_values(&[o]);
        }
        for r in ["live", "shadow"] {
            m.sweep_disqualified.with_label_values(&[r]);
        }
        m.commits.with_label_values(&["state"]);
        m.commits.with_label_values(&["kafka_offsets"]);
        m
    }

    /// A worker's metrics (`kafka.workers` > 1): a registry of its own,
    /// merged into this one's exposition from now on.
    pub fn worker(&self) -> Metrics {
        let w = Metrics::new();
        self.workers.lock().expect("lock").push(w.clone());
        w
    }

    /// The Prometheus text exposition. With workers, each series is the
    /// merge of the workers' series of the same labels (and this one's):
    /// counters and histograms summed, gauges summed unless named in
    /// [`MERGED_BY_MAX`] or [`MERGED_BY_MIN`], the [`PROCESS_ONLY`]
    /// families taken from this one. So the names, labels and meaning are
    /// the same whatever the number of workers.
    pub fn render(&self) -> String {
        let workers = self.workers.lock().expect("lock").clone();
        let families = if workers.is_empty() {
            self.registry.gather()
        } else {
            merge_families(self.registry.gather(), workers.iter().map(|w| w.registry.gather()).collect())
        };
        let mut buf = Vec::new();
        TextEncoder::new().encode(&families, &mut buf).expect("text encoding");
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process's families merged with its workers' (see [`Metrics::render`]).
fn merge_families(own: Vec<MetricFamily>, workers: Vec<Vec<MetricFamily>>) -> Vec<MetricFamily> {
    // (A family without a series yet is not gathered: a worker's may be
    // the only one.)
    let mut by_name: BTreeMap<String, (Option<MetricFamily>, Vec<MetricFamily>)> = BTreeMap::new();
    for f in own {
        let name = f.name().to_string();
        by_name.entry(name).or_default().0 = Some(f);
    }
    for f in workers.into_iter().flatten() {
        let name = f.name().to_string();
        by_name.entry(name).or_default().1.push(f);
    }
    let mut out = Vec::with_capacity(by_name.len());
    for (name, (own, theirs)) in by_name {
        if PROCESS_ONLY.contains(&name.as_str()) {
            out.extend(own);
            continue;
        }
        let mut fam = match own {
            Some(f) => f,
            None => {
                let mut f = theirs[0].clone();
                f.take_metric();
                f
            }
        };
        let by_min = MERGED_BY_MIN.contains(&name.as_str());
        let by_max = MERGED_BY_MAX.contains(&name.as_str());
        let kind = fam.get_field_type();
        // Series by their labels, in the order first seen.
        let mut series: Vec<prometheus::proto::Metric> = Vec::new();
        // (The process's own value of a gauge merged by its smallest value
        // is not one: it applies nothing.)
        let own_metrics = if by_min { Vec::new() } else { fam.take_metric() };
        for m in own_metrics.into_iter().chain(theirs.into_iter().flat_map(|mut f| f.take_metric())) {
            let same = series.iter_mut().find(|s| {
                s.get_label().len() == m.get_label().len()
                    && s.get_label()
                        .iter()
                        .zip(m.get_label())
                        .all(|(a, b)| a.name() == b.name() && a.value() == b.value())
            });
            let Some(s) = same else {
                if !(by_min && kind == MetricType::GAUGE && m.get_gauge().get_value() == 0.0) {
                    series.push(m);
                }
                continue;
            };
            match kind {
                MetricType::COUNTER => {
                    let mut c = s.get_counter().clone();
                    c.set_value(c.get_value() + m.get_counter().get_value());
                    s.set_counter(c);
                }
                MetricType::GAUGE => {
                    let (a, b) = (s.get_gauge().get_value(), m.get_gauge().get_value());
                    let v = if by_max {
                        a.max(b)
                    } else if by_min {
                        if b == 0.0 {
                            a
                        } else {
                            a.min(b)
                        }
                    } else {
                        a + b
                    };
                    let mut g = s.get_gauge().clone();
                    g.set_value(v);
                    s.set_gauge(g);
                }
                MetricType::HISTOGRAM => {
                    let (a, b) = (s.get_histogram(), m.get_histogram());
                    let mut h = a.clone();
                    h.set_sample_count(a.get_sample_count() + b.get_sample_count());
                    h.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
                    let buckets = a
                        .get_bucket()
                        .iter()
                        .zip(b.get_bucket())
                        .map(|(x, y)| {
                            let mut z = x.clone();
                            z.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
                            z
                        })
                        .collect();
                    h.set_bucket(buckets);
                    s.set_histogram(h);
                }
                // (The engine registers no summaries or untyped metrics.)
                _ => {}
            }
        }
        // (The exposition has no empty families.)
        if !series.is_empty() {
            fam.set_metric(series);
            out.push(fam);
        }
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_pre_registered_labels() {
        let m = super::Metrics::new();
        m.dead_letters.with_label_values(&["too_large"]).inc();
        let text = m.render();
        assert!(text.contains("pqa_dead_letters_total{reason=\"too_large\"} 1"));
        assert!(text.contains("pqa_events_total{type=\"track\"} 0"));
    }

    /// With workers, a series is the workers' merged: counters and
    /// histograms summed, most gauges summed, the watermarks by their
    /// largest and smallest, the per-rule numbers the process's own.
    #[test]
    fn a_process_with_workers_shows_their_merged_series() {
        let m = super::Metrics::new();
        let (a, b) = (m.worker(), m.worker());
        a.events.with_label_values(&["track"]).inc_by(3);
        b.events.with_label_values(&["track"]).inc_by(4);
        a.cache_accounts.set(10);
        b.cache_accounts.set(5);
        a.watermark_seconds.set(100);
        b.watermark_seconds.set(90);
        a.low_watermark_seconds.set(80);
        b.low_watermark_seconds.set(0);
        a.batch_seconds.with_label_values(&["apply"]).observe(0.5);
        b.batch_seconds.with_label_values(&["apply"]).observe(0.25);
        a.rule_precision.with_label_values(&["v1", "live", "r"]).set(0.1);
        m.rule_precision.with_label_values(&["v1", "live", "r"]).set(0.5);
        m.definition_reloads.inc();
        // (A family only the workers have a series of.)
        a.assigned_partitions.with_label_values(&["events"]).inc();
        b.assigned_partitions.with_label_values(&["events"]).add(2);
        let text = m.render();
        for line in [
            "pqa_events_total{type=\"track\"} 7",
            "pqa_cache_accounts 15",
            "pqa_event_time_watermark_seconds 100",
            "pqa_low_watermark_seconds 80",
            "pqa_batch_duration_seconds_sum{stage=\"apply\"} 0.75",
            "pqa_batch_duration_seconds_count{stage=\"apply\"} 2",
            "pqa_rule_precision{role=\"live\",rule=\"r\",version=\"v1\"} 0.5",
            "pqa_definition_reloads_total 1",
            "pqa_assigned_partitions{topic=\"events\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("# TYPE pqa_events_total").count(), 1, "one family each");
    }
}
