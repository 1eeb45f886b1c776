//! The metrics of `pqa-engine deliver`, their names in one place. Labels
//! are the destination's name and kind (bounded by the configuration),
//! never an account or event id.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Why an announcement did not reach a destination (the `reason` label of
/// `pqa_deliver_failed_total` and the `pqa.reason` header of its dead
/// letter).
pub const REJECTED: &str = "rejected";
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// A record on the PQA topic that is not an announcement.
pub const INVALID_EVENT: &str = "invalid_event";

#[derive(Clone)]
pub struct DeliverMetrics {
    registry: Registry,
    /// Announcements a destination acknowledged.
    pub delivered: IntCounterVec,
    /// Attempts that failed and were tried again.
    pub retries: IntCounterVec,
    /// Announcements dead-lettered, by reason.
    pub failed: IntCounterVec,
    /// Announcements not sent: `duplicate` (already delivered, by id) or
    /// `filtered` (a type the destination does not take).
    pub skipped: IntCounterVec,
    /// From the first attempt to the acknowledgement (retries included).
    pub latency: HistogramVec,
    /// Records on the PQA topic that are not PQA announcements.
    pub invalid: IntCounter,
    /// Offsets committed to Kafka after delivery.
    pub commits: IntCounter,
    /// Partitions of the PQA topic assigned to this instance.
    pub assigned_partitions: IntGauge,
}

impl DeliverMetrics {
    pub fn new() -> DeliverMetrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let dk = &["destination", "kind"];
        DeliverMetrics {
            delivered: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pqa_deliver_delivered_total", "Announcements a destination acknowledged"),
                    dk,
                )
                .unwrap(),
            ),
            retries: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("pqa_deliver_retries_total", "Failed attempts tried again (429, 5xx, timeouts)"),
                    dk,
                )
                .unwrap(),
            ),
            failed: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_deliver_failed_total",
                        "Announcements dead-lettered, by reason (rejected, retries_exhausted)",
                    ),
                    &["destination", "kind", "reason"],
                )
                .unwrap(),
            ),
            skipped: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pqa_deliver_skipped_total",
                        "Announcements not sent, by reason (duplicate: already delivered by id; filtered: a type the destination does not take)",
                    ),
                    &["destination", "kind", "reason"],
                )
                .unwrap(),
            ),
            latency: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "pqa_deliver_latency_seconds",
                        "From the first attempt to the destination's acknowledgement, retries included",
                    )
                    .buckets(prometheus::exponential_buckets(0.005, 2.0, 16).unwrap()),
                    dk,
                )
                .unwrap(),
            ),
            invalid: reg(
                &registry,
                IntCounter::new(
                    "pqa_deliver_invalid_events_total",
                    "Records on the PQA topic that are not PQA announcements (dead-lettered)",
                )
                .unwrap(),
            ),
            commits: reg(
                &registry,
                IntCounter::new("pqa_deliver_offset_commits_total", "Offset commits after delivery").unwrap(),
            ),
            assigned_partitions: reg(
                &registry,
                IntGauge::new("pqa_deliver_assigned_partitions", "Partitions of the PQA topic assigned here").unwrap(),
            ),
            registry,
        }
    }

    /// Creates every series of a destination at 0, so dashboards and
    /// alerts see it before the first event.
    pub fn register_destination(&self, name: &str, kind: &str) {
        self.delivered.with_label_values(&[name, kind]);
        self.retries.with_label_values(&[name, kind]);
        self.latency.with_label_values(&[name, kind]);
        for r in [REJECTED, RETRIES_EXHAUSTED] {
            self.failed.with_label_values(&[name, kind, r]);
        }
        for r in ["duplicate", "filtered"] {
            self.skipped.with_label_values(&[name, kind, r]);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for DeliverMetrics {
    fn default() -> Self {
        DeliverMetrics::new()
    }
}
