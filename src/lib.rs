//! # pqa-engine
//!
//! A real-time engine for product-led sales: it reads Segment-Spec product
//! usage events from Kafka, keeps sliding-window counters per account in
//! RocksDB, recognises Product Qualified Accounts (PQAs) with a definition
//! written as configuration, and publishes CloudEvents to an output topic.
//!
//! # Layout
//!
//! Data flows one way, one module a stage:
//!
//! ```text
//! source -> decode -> state -> detect -> emit -> sink
//! ```
//!
//! - [`source`]: the Kafka consumer loop (`run`): batches, rebalances,
//!   offsets, seeking to the offsets stored in RocksDB.
//! - [`decode`]: message bytes -> [`decode::Event`], or a rejection with a
//!   reason (dead letter).
//! - [`state`]: RocksDB state behind a bounded cache: time-bucketed
//!   counters, exact distinct users, signals, traits, consumed offsets; key
//!   encoding and column families.
//! - [`detect`]: evaluates metrics, derived numbers and CEL rules for an
//!   account; score and tier.
//! - [`emit`]: cooldown / tier / disqualification decisions and the
//!   CloudEvents envelope with deterministic ids.
//! - [`budget`]: the per-hour / per-day caps on what reaches sales; the
//!   rest waits in a queue kept with the state.
//! - [`sweep`]: when a qualified account that goes quiet stops qualifying
//!   (the disqualification sweep).
//! - [`sink`]: the Kafka producer for PQA events and dead letters.
//! - [`changelog`]: the compacted state changelog topic: written with every
//!   commit, read back when a partition arrives from another instance.
//! - [`gaps`]: finds and recovers ranges a broker skipped after a seek
//!   (input and changelog).
//! - [`engine`]: the core that ties decode, state, detect and emit together
//!   for one record at a time; shared by Kafka, replay, tests and benches.
//! - [`config`]: configuration structs, layered loading, validation and the
//!   compiled definition.
//! - [`telemetry`]: Prometheus metrics, their names in one place.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/accounts/{id}`,
//!   `/definitions`, `/definitions/{version}/rules`.
//! - [`health`]: liveness and readiness (one problem per source), set by
//!   the Kafka code and read by the HTTP server.
//! - [`kafka`]: everything that talks to Kafka ([`source`], [`sink`],
//!   [`changelog`], the outcomes topic's reader, and the one send loop).
//! - [`definitions`]: the live definition and its shadows, bound to one
//!   state layout ([`state::layout`]); what the HTTP server shows of them.
//! - [`reload`]: hot reload (SIGHUP, a changed file, `POST /admin/reload`),
//!   validated first, swapped between two batches.
//! - [`replay`]: the engine over an NDJSON file, no Kafka.
//! - [`analyze`]: signal discovery on history: what hand-raisers (or won
//!   accounts) did before, ranked, with a suggested signal and rule.
//! - [`backtest`] and [`report`]: several definitions side by side over one
//!   history, and the CSV, summary and plots that compare them.
//! - [`outcome`]: what sales made of an announcement (accepted, rejected,
//!   opportunity, won, lost): the record, files of them, the join to the
//!   announcement it answers and the counts per rule.
//! - [`outcome_report`]: `backtest --outcomes`: precision, recall and lead
//!   time per definition and rule, and the outcomes no definition saw
//!   coming.
//! - [`sim`]: a seeded simulated product (Segment events) for the demo,
//!   tests and benchmarks.
//! - [`demo`]: embedded Kafka (librdkafka's mock cluster) + simulator +
//!   engine + a live view.
//! - [`shutdown`]: the SIGTERM/SIGINT flag every loop watches.
//! - [`deliver`]: `pqa-engine deliver`, a consumer of the PQA topic in its
//!   own group that sends each announcement to Slack, a signed webhook,
//!   HubSpot and Salesforce (retries, rate limits, dead letters, delivered
//!   ids so a redelivery is not sent twice).
//!
//! `main.rs` only parses the command line and wires these together.

pub mod analyze;
pub mod backtest;
pub mod budget;
pub mod config;
pub mod decode;
pub mod definitions;
pub mod deliver;
pub mod demo;
pub mod detect;
pub mod emit;
pub mod engine;
pub mod gaps;
pub mod health;
pub mod http;
pub mod kafka;
pub mod outcome;
pub mod outcome_report;
pub mod reload;
pub mod replay;
pub mod report;
pub mod shutdown;
pub mod sim;
pub mod state;
pub mod sweep;
pub mod telemetry;

pub use kafka::{changelog, sink, source};
