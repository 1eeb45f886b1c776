//! Configuration: serde structs for the file, layered loading (embedded
//! defaults, then the file, then `PQA_...` environment variables) and
//! validation that reports every problem at once with where it is.
//!
//! The PQA *definition* (metrics, signals, rules, score, tiers) lives in
//! [`definition`]; everything else here is plumbing: Kafka, input field
//! locations, state, HTTP.

pub mod definition;
pub mod deliver;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use definition::{CompiledDefinition, DefinitionConfig};
pub use deliver::DeliverConfig;

/// Most workers (`kafka.workers`) a process runs.
pub const MAX_WORKERS: usize = 64;

/// The configuration shipped in `config/pqa-engine.toml`, embedded so that
/// `demo` and tests need no file on disk.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/pqa-engine.toml");

/// Everything wrong with a configuration, each with where it is.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the configuration:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Where: a dotted path such as `definition.rules[2].when`.
    pub path: String,
    /// What is wrong, in the user's terms.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection, topics and librdkafka pass-through properties.
    pub kafka: KafkaConfig,
    /// Where fields live in the input events, and input limits.
    pub input: InputConfig,
    /// Local state (RocksDB).
    pub state: StateConfig,
    /// HTTP endpoints: metrics, health, account queries.
    pub http: HttpConfig,
    /// The PQA definition: metrics, signals, rules, score, tiers, cooldown.
    pub definition: DefinitionConfig,
    /// Candidate definitions judged on the same state beside the live one;
    /// their announcements go to `kafka.shadow_topic`, never to the live
    /// topic.
    #[serde(default)]
    pub shadow: Vec<ShadowConfig>,
    /// `pqa-engine deliver`: the destinations (Slack, webhook, HubSpot,
    /// Salesforce) the PQA topic's announcements are sent to.
    #[serde(default)]
    pub deliver: DeliverConfig,
    /// How outcomes from sales are joined to announcements.
    #[serde(default)]
    pub outcomes: OutcomesConfig,
}

/// `[outcomes]`: joining what sales reports back to the announcements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesConfig {
    /// An outcome without a `pqa_event_id` answers the account's latest
    /// announcement at most this long before it (`90d`, `12w`, `2160h`).
    #[serde(default = "default_attribution_window")]
    pub attribution_window: String,
}

fn default_attribution_window() -> String {
    "90d".into()
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        OutcomesConfig { attribution_window: default_attribution_window() }
    }
}

impl OutcomesConfig {
    /// The window in milliseconds (the config was validated).
    pub fn attribution_window_ms(&self) -> i64 {
        crate::config::definition::parse_duration_seconds(&self.attribution_window)
            .map_or(crate::outcome::DEFAULT_ATTRIBUTION_WINDOW_MS, |s| s * 1000)
    }
}

/// A shadow definition: a file read like `--config` (layered over the
/// shipped defaults); its `[definition]` is what counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Relative paths are relative to the config file's directory.
    pub file: PathBuf,
}

/// Kafka settings. Anything librdkafka understands can be passed through the
/// `properties`, `consumer_properties` and `producer_properties` maps
/// (SASL/SSL included); secrets given there are never logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group id; instances with the same id share the partitions.
    pub group_id: String,
    /// Topics carrying Segment-Spec JSON events.
    pub input_topics: Vec<String>,
    /// Topic the PQA CloudEvents are produced to (key = account id).
    pub output_topic: String,
    /// Dead-letter topic: rejected input with the reason in headers.
    pub dlq_topic: String,
    /// Topic for the announcements of shadow definitions; empty means
    /// `<output_topic>.shadow`.
    #[serde(default)]
    pub shadow_topic: String,
    /// At most this many messages form one processing batch (one RocksDB
    /// write, one producer flush, one offset store).
    #[serde(default = "default_max_batch_messages")]
    pub max_batch_messages: usize,
    /// A batch is closed after this long even if not full.
    #[serde(default = "default_max_batch_wait_ms")]
    pub max_batch_wait_ms: u64,
    /// A batch is closed once the records it changed (accounts and users)
    /// reach about this many: each is written whole at the commit and stays
    /// cached until then, so this bounds a batch's memory and its write,
    /// whatever the number of messages. (Checked as records are applied:
    /// the records decoded ahead, up to a few thousand messages, still join
    /// the batch.)
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// Keep a compacted changelog topic of the state (the Kafka Streams
    /// way): when a partition moves to another instance of the group, its
    /// state is restored from the changelog before it is processed. Needs
    /// one input topic, keyed by account.
    #[serde(default = "default_true")]
    pub changelog: bool,
    /// Consumers in this process, each a member of the group with its own
    /// partitions, state directory, cache and thread (Kafka Streams'
    /// `num.stream.threads`): a worker owns the accounts of its partitions,
    /// so no state is shared between threads. More than one needs the
    /// changelog (a partition can move between workers as between
    /// instances). The caches, the message ids kept in memory and the
    /// budget are split between the workers. Workers beyond the input's
    /// partition count sit idle.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// The changelog topic; empty means `<group_id>-changelog`. Created if
    /// missing (compacted, as many partitions as the input topic).
    #[serde(default)]
    pub changelog_topic: String,
    /// Replication factor when the engine creates the changelog topic
    /// (-1: the broker's default).
    #[serde(default = "default_changelog_replication")]
    pub changelog_replication_factor: i32,
    /// What sales made of the announced accounts (`accepted`, `rejected`,
    /// `opportunity`, `won`, `lost`; see [`crate::outcome`]), written by a
    /// CRM sync: read in the same consumer group as the input, keyed by
    /// account id like it. Created if missing with as many partitions as
    /// the input topic. Empty: no outcomes are read.
    #[serde(default = "default_outcomes_topic")]
    pub outcomes_topic: String,
    /// librdkafka properties applied to both consumer and producer
    /// (e.g. `security.protocol`, `sasl.mechanism`, `ssl.ca.location`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
}

const fn default_workers() -> usize {
    1
}
const fn default_true() -> bool {
    true
}
const fn default_changelog_replication() -> i32 {
    -1
}
fn default_outcomes_topic() -> String {
    "pqa.outcomes".into()
}

impl KafkaConfig {
    /// The shadow topic's name.
    pub fn shadow_topic_name(&self) -> String {
        if self.shadow_topic.trim().is_empty() {
            format!("{}.shadow", self.output_topic)
        } else {
            self.shadow_topic.clone()
        }
    }

    /// The changelog topic's name.
    pub fn changelog_topic_name(&self) -> String {
        if self.changelog_topic.trim().is_empty() {
            format!("{}-changelog", self.group_id)
        } else {
            self.changelog_topic.clone()
        }
    }
}

const fn default_max_batch_messages() -> usize {
    50_000
}
const fn default_max_batch_wait_ms() -> u64 {
    50
}
const fn default_max_batch_records() -> usize {
    20_000
}

/// Input handling: field locations (JSON pointers, RFC 6901) and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Messages larger than this are dead-lettered (`too_large`).
    pub max_message_bytes: usize,
    /// Events whose time is further than this ahead of the wall clock are
    /// dead-lettered (`future_timestamp`).
    pub max_future_seconds: i64,
    /// Events whose `messageId` was already applied within this much event
    /// time are counted once (upstream retries). 0 turns it off. The ids
    /// (16-byte hashes) are kept in memory up to `dedupe_memory_ids`, made
    /// durable as one block per batch; past that, in RocksDB one key each.
    pub dedupe_window_seconds: i64,
    /// At most this many message ids of the dedupe window are kept in
    /// memory (up to about 70 bytes each); 0 keeps them all in RocksDB.
    pub dedupe_memory_ids: usize,
    /// Where each field is found; the first pointer that resolves wins.
    pub fields: FieldPointers,
}

/// JSON pointers for each field of an event. Lists are tried in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldPointers {
    /// The Segment call type: `track`, `page`, `identify`, `group`,
    /// `alias` (`screen` is read as `page`).
    pub r#type: Vec<String>,
    /// The track event name.
    pub event: Vec<String>,
    /// The page name.
    pub page_name: Vec<String>,
    /// The page path (e.g. `/legal/privacy`).
    pub page_path: Vec<String>,
    /// The page URL, used for the path when no path is given.
    pub page_url: Vec<String>,
    /// The user id.
    pub user_id: Vec<String>,
    /// The account (group) id.
    pub account_id: Vec<String>,
    /// Event time: RFC 3339 strings or epoch milliseconds.
    pub timestamp: Vec<String>,
    /// Traits object of identify / group calls.
    pub traits: Vec<String>,
    /// Unique message id.
    pub message_id: Vec<String>,
    /// The anonymous id of a visitor not logged in (used when there is no
    /// user id).
    #[serde(default = "default_anonymous_id")]
    pub anonymous_id: Vec<String>,
    /// The previous id of an `alias` call (an anonymous id or an earlier
    /// user id that becomes the user id).
    #[serde(default = "default_previous_id")]
    pub previous_id: Vec<String>,
}

fn default_anonymous_id() -> Vec<String> {
    vec!["/anonymousId".to_string()]
}

fn default_previous_id() -> Vec<String> {
    vec!["/previousId".to_string()]
}

/// Local state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// RocksDB directory. It holds the counters and the consumed offsets.
    pub dir: PathBuf,
    /// Accounts kept hot in memory (an LRU in front of RocksDB). Memory is
    /// bounded by this, not by the number of accounts.
    pub cache_accounts: usize,
    /// Users kept hot in memory, apart from the accounts; unset: twice
    /// `cache_accounts` (see [`StateConfig::users_capacity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_users: Option<usize>,
    /// RocksDB block cache, in bytes.
    pub block_cache_bytes: usize,
    /// fsync the write-ahead log on every batch. Off, a process crash
    /// (`kill -9`) still loses nothing; only an OS crash or power loss can.
    pub sync_writes: bool,
    /// Account, user and member records not touched for this long (in event
    /// time) are dropped by compaction. Must exceed the longest window.
    pub idle_ttl_days: u32,
}

impl StateConfig {
    /// How many users the cache keeps: `cache_users`, or twice
    /// `cache_accounts`. A product has more users than accounts: with as
    /// many users as accounts cached, the users' side of the cache was the
    /// one evicting (a long tail's `run` spent a tenth of its engine thread
    /// reading evicted users back). Four times as many was faster still but
    /// took the 3 M-account memory run to 939 MiB, near the 1 GiB that
    /// `deploy/` gives the engine (BENCHMARKS.md, "Users cached apart").
    /// A temporary state (`temporary`: a `replay` or `backtest` without a
    /// state directory) has no block cache, and the memory a kept state
    /// gives it goes to users: four times `cache_accounts` (`h10m` 6 %
    /// faster, its peak memory where it was with the block cache:
    /// BENCHMARKS.md, eighth session).
    pub fn users_capacity(&self, temporary: bool) -> usize {
        let times = if temporary { 4 } else { 2 };
        self.cache_users.unwrap_or(self.cache_accounts.saturating_mul(times))
    }
}

/// HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address; localhost by default. Empty string disables HTTP.
    pub addr: String,
    /// Bearer token for the admin endpoints (`POST /admin/reload`). Empty
    /// (the default) turns them off. Set it from the environment
    /// (`PQA_HTTP__ADMIN_TOKEN`) rather than in a file; it is never logged.
    #[serde(default)]
    pub admin_token: String,
}

impl Config {
    /// The configuration of worker `i` of `n` (`kafka.workers`): worker 0
    /// keeps the state directory (so that going from one worker to several
    /// keeps its state), worker `i` uses `<dir>/workers/<i>`; each gets
    /// `1/n` of the caches and of the message ids kept in memory.
    pub fn for_worker(&self, i: usize, n: usize) -> Config {
        let mut c = self.clone();
        if n <= 1 {
            return c;
        }
        if i > 0 {
            c.state.dir = self.state.dir.join("workers").join(i.to_string());
        }
        let share = |v: usize| v.div_ceil(n).max(1);
        c.state.cache_accounts = share(self.state.cache_accounts);
        c.state.cache_users = self.state.cache_users.map(share);
        c.state.block_cache_bytes = share(self.state.block_cache_bytes);
        c.input.dedupe_memory_ids = share(self.input.dedupe_memory_ids);
        c
    }

    /// The embedded default configuration.
    pub fn default_config() -> Config {
        Config::load_layers(None, false).expect("embedded default configuration is valid")
    }

    /// The embedded defaults with one rule (`r`, firing on `when`) and no
    /// score terms (tests).
    #[cfg(test)]
    pub(crate) fn with_one_rule(when: &str, points: u32) -> Config {
        let mut cfg = Config::default_config();
        cfg.definition.score.bonus.clear();
        cfg.definition.rules = vec![definition::RuleConfig {
            name: "r".into(),
            description: String::new(),
            when: when.into(),
            points,
            bypass_budget: false,
        }];
        cfg
    }

    /// Loads the embedded defaults, then `file` on top, then `PQA_...`
    /// environment variables (`PQA_KAFKA__BOOTSTRAP_SERVERS`, `__` nests).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigErrors> {
        Config::load_layers(file, true)
    }

    /// Loads the embedded defaults and `file` on top, without environment
    /// variables: how definition files (`--shadow`, `backtest
    /// --definition`) are read.
    pub fn load_file_only(file: &Path) -> Result<Config, ConfigErrors> {
        Config::load_layers(Some(file), false)
    }

    fn load_layers(file: Option<&Path>, env: bool) -> Result<Config, ConfigErrors> {
        let mut fig = Figment::new().merge(Toml::string(DEFAULT_CONFIG_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigErrors(vec![ConfigError::new(path.display().to_string(), "file not found")]));
            }
            // A file that defines its own rules replaces the shipped ones
            // instead of being merged item by item.
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigErrors(vec![ConfigError::new(path.display().to_string(), e.to_string())]))?;
            let doc: toml::Table = toml::from_str(&text).map_err(|e| {
                ConfigErrors(vec![ConfigError::new(path.display().to_string(), format!("not valid TOML: {e}"))])
            })?;
            if let Some(def) = doc.get("definition").and_then(|d| d.as_table()) {
                if def.contains_key("rules") || def.contains_key("metrics") {
                    fig = Figment::new().merge(Toml::string(&strip_definition_lists()));
                }
            }
            fig = fig.merge(Toml::file(path));
        }
        if env {
            // Only variables naming a section (`PQA_KAFKA__...`), so that
            // unrelated `PQA_*` variables in the environment do not break
            // loading; a typo inside a section is still an error.
            fig = fig.merge(Env::prefixed("PQA_").split("__").filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                ["kafka", "input", "state", "http", "definition", "deliver"]
                    .iter()
                    .any(|s| k.strip_prefix(s).is_some_and(|rest| rest.starts_with('.') || rest.starts_with("__")))
            }));
        }
        let cfg: Config = fig.extract().map_err(|e| {
            ConfigErrors(
                e.into_iter()
                    .map(|e| {
                        let path = if e.path.is_empty() { "config".to_string() } else { e.path.join(".") };
                        let mut msg = e.kind.to_string();
                        if let Some(meta) = &e.metadata {
                            msg.push_str(&format!(" (from {})", meta.name));
                        }
                        ConfigError::new(path, msg)
                    })
                    .collect(),
            )
        })?;
        Ok(cfg)
    }

    /// Checks everything and compiles the definition; every problem at once.
    pub fn validate(&self) -> Result<CompiledDefinition, ConfigErrors> {
        let mut errs = Vec::new();
        if self.kafka.input_topics.is_empty() {
            errs.push(ConfigError::new("kafka.input_topics", "at least one input topic is required"));
        }
        for (i, t) in self.kafka.input_topics.iter().enumerate() {
            if t.trim().is_empty() {
                errs.push(ConfigError::new(format!("kafka.input_topics[{i}]"), "empty topic name"));
            }
        }
        if self.kafka.output_topic.trim().is_empty() {
            errs.push(ConfigError::new("kafka.output_topic", "empty topic name"));
        }
        if self.kafka.dlq_topic.trim().is_empty() {
            errs.push(ConfigError::new("kafka.dlq_topic", "empty topic name"));
        }
        // A topic of the engine's own that is already some other topic.
        let taken = |name: &str| {
            self.kafka.input_topics.iter().any(|t| t == name)
                || name == self.kafka.output_topic
                || name == self.kafka.dlq_topic
        };
        let shadow_topic = self.kafka.shadow_topic_name();
        if taken(&shadow_topic) {
            errs.push(ConfigError::new(
                "kafka.shadow_topic",
                format!("`{shadow_topic}` is already used as an input, output or dead-letter topic"),
            ));
        }
        if self.kafka.input_topics.contains(&self.kafka.output_topic) {
            errs.push(ConfigError::new(
                "kafka.output_topic",
                "must not be one of the input topics (the engine would read its own output)",
            ));
        }
        if !(1..=MAX_WORKERS).contains(&self.kafka.workers) {
            errs.push(ConfigError::new("kafka.workers", format!("must be between 1 and {MAX_WORKERS}")));
        } else if self.kafka.workers > 1 && !self.kafka.changelog {
            errs.push(ConfigError::new(
                "kafka.workers",
                "more than one worker needs kafka.changelog = true: a partition moves between workers as \
                 between instances, and its state follows it through the changelog",
            ));
        }
        if self.kafka.changelog {
            if self.kafka.input_topics.len() > 1 {
                errs.push(ConfigError::new(
                    "kafka.changelog",
                    "the state changelog needs exactly one input topic (partition N of several topics can be \
                     assigned to different instances); use one topic, or set kafka.changelog = false and run \
                     one instance",
                ));
            }
            let name = self.kafka.changelog_topic_name();
            if taken(&name) || name == shadow_topic {
                errs.push(ConfigError::new(
                    "kafka.changelog_topic",
                    format!("`{name}` is already used as an input, output or dead-letter topic"),
                ));
            }
        }
        let outcomes = self.kafka.outcomes_topic.trim();
        if !outcomes.is_empty()
            && (taken(outcomes) || outcomes == shadow_topic || outcomes == self.kafka.changelog_topic_name())
        {
            errs.push(ConfigError::new(
                "kafka.outcomes_topic",
                format!("`{outcomes}` is already used as an input, output, dead-letter or changelog topic"),
            ));
        }
        match crate::config::definition::parse_duration_seconds(&self.outcomes.attribution_window) {
            Ok(s) if s > 0 => {}
            Ok(_) => errs.push(ConfigError::new("outcomes.attribution_window", "must be longer than 0")),
            Err(e) => errs.push(ConfigError::new("outcomes.attribution_window", e)),
        }
        if self.kafka.max_batch_messages == 0 {
            errs.push(ConfigError::new("kafka.max_batch_messages", "must be at least 1"));
        }
        if self.kafka.max_batch_records == 0 {
            errs.push(ConfigError::new("kafka.max_batch_records", "must be at least 1"));
        }
        if self.input.max_message_bytes == 0 {
            errs.push(ConfigError::new("input.max_message_bytes", "must be at least 1"));
        }
        if self.input.dedupe_window_seconds < 0 {
            errs.push(ConfigError::new("input.dedupe_window_seconds", "must not be negative (0 turns it off)"));
        }
        if self.input.max_future_seconds < 0 {
            errs.push(ConfigError::new("input.max_future_seconds", "must not be negative"));
        }
        let f = &self.input.fields;
        for (name, list) in [
            ("type", &f.r#type),
            ("event", &f.event),
            ("page_name", &f.page_name),
            ("page_path", &f.page_path),
            ("page_url", &f.page_url),
            ("user_id", &f.user_id),
            ("account_id", &f.account_id),
            ("timestamp", &f.timestamp),
            ("traits", &f.traits),
            ("message_id", &f.message_id),
            ("anonymous_id", &f.anonymous_id),
            ("previous_id", &f.previous_id),
        ] {
            for (i, p) in list.iter().enumerate() {
                if !p.starts_with('/') {
                    errs.push(ConfigError::new(
                        format!("input.fields.{name}[{i}]"),
                        format!("`{p}` is not a JSON pointer (it must start with `/`, e.g. `/context/groupId`)"),
                    ));
                }
            }
        }
        for (name, list) in [("type", &f.r#type), ("user_id", &f.user_id), ("timestamp", &f.timestamp)] {
            if list.is_empty() {
                errs.push(ConfigError::new(format!("input.fields.{name}"), "needs at least one pointer"));
            }
        }
        self.deliver.check(&self.kafka.group_id, &self.kafka.output_topic, &mut errs);
        if self.state.cache_accounts == 0 {
            errs.push(ConfigError::new("state.cache_accounts", "must be at least 1"));
        }
        if self.state.cache_users == Some(0) {
            errs.push(ConfigError::new("state.cache_users", "must be at least 1"));
        }
        if !self.http.addr.is_empty() && self.http.addr.parse::<SocketAddr>().is_err() {
            errs.push(ConfigError::new(
                "http.addr",
                format!("`{}` is not an address like 127.0.0.1:9464", self.http.addr),
            ));
        }
        let compiled = match self.definition.compile() {
            Ok(c) => Some(c),
            Err(mut e) => {
                errs.append(&mut e);
                None
            }
        };
        if let Some(c) = &compiled {
            let ttl = i64::from(self.state.idle_ttl_days) * 86_400;
            if ttl < c.retention_seconds {
                errs.push(ConfigError::new(
                    "state.idle_ttl_days",
                    format!(
                        "must cover the longest window of the definition ({} days)",
                        (c.retention_seconds + 86_399) / 86_400
                    ),
                ));
            }
        }
        match (errs.is_empty(), compiled) {
            (true, Some(c)) => Ok(c),
            _ => Err(ConfigErrors(errs)),
        }
    }
}

/// The shipped defaults without the definition's lists, used as the base
/// when a file brings its own metrics/rules (lists are replaced, not merged).
fn strip_definition_lists() -> String {
    let mut doc: toml::Table = toml::from_str(DEFAULT_CONFIG_TOML).expect("embedded config parses");
    if let Some(def) = doc.get_mut("definition").and_then(|d| d.as_table_mut()) {
        for k in ["metrics", "derived", "signals", "rules", "tiers", "score"] {
            def.remove(k);
        }
    }
    toml::to_string(&doc).expect("embedded config serialises")
}

/// Names of librdkafka properties whose values must never be logged.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password")
        || n.contains("secret")
        || n.contains("key.pem")
        || n.ends_with(".key")
        || n.contains("token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let cfg = Config::default_config();
        let def = cfg.validate().expect("default validates");
        assert_eq!(def.rules.len(), 4);
        assert_eq!(cfg.http.addr, "127.0.0.1:9464", "HTTP binds to localhost by default");
    }

    #[test]
    fn unknown_field_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[kafka]\nbootstrap_server = 'x:1'\n").unwrap();
        let err = Config::load(Some(&p)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bootstrap_server"), "{text}");
    }

    #[test]
    fn every_error_at_once() {
        let mut cfg = Config::default_config();
        cfg.kafka.input_topics.clear();
        cfg.http.addr = "nope".into();
        cfg.input.fields.user_id = vec!["userId".into()];
        cfg.definition.rules[0].when = "active_users_28d >= ".into();
        let errs = cfg.validate().unwrap_err();
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"kafka.input_topics"), "{paths:?}");
        assert!(paths.contains(&"http.addr"), "{paths:?}");
        assert!(paths.contains(&"input.fields.user_id[0]"), "{paths:?}");
        assert!(paths.iter().any(|p| p.starts_with("definition.rules[0].when")), "{paths:?}");
    }

    /// `state.cache_users` is read from a file (unset: twice the
    /// accounts), and zero is refused by name.
    #[test]
    fn the_users_cache_is_its_own_setting() {
        assert_eq!(Config::default_config().state.users_capacity(false), 200_000);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[state]\ncache_accounts = 10\ncache_users = 25\n").unwrap();
        let cfg = Config::load(Some(&p)).unwrap();
        assert_eq!((cfg.state.cache_accounts, cfg.state.users_capacity(false)), (10, 25));
        std::fs::write(&p, "[state]\ncache_users = 0\n").unwrap();
        let errs = Config::load(Some(&p)).unwrap().validate().unwrap_err();
        assert!(errs.0.iter().any(|e| e.path == "state.cache_users"), "{errs:?}");
    }

    #[test]
    fn file_with_own_rules_replaces_shipped_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            r#"
[definition]
version = "mine-1"
[[definition.metrics]]
name = "active_users_7d"
kind = "active_users"
window = "7d"
[[definition.rules]]
name = "small_team"
when = "active_users_7d >= 2"
points = 50
[[definition.tiers]]
name = "warm"
min_score = 0
"#,
        )
        .unwrap();
        let cfg = Config::load(Some(&p)).unwrap();
        let def = cfg.validate().unwrap();
        assert_eq!(def.rules.len(), 1);
        assert_eq!(def.version, "mine-1");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn environment_overrides_sections_and_ignores_other_pqa_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PQA_KAFKA__GROUP_ID", "from-env");
            jail.set_env("PQA_BIN", "/usr/local/bin/pqa-engine");
            let cfg = Config::load(None).expect("unrelated PQA_BIN is ignored");
            assert_eq!(cfg.kafka.group_id, "from-env");
            jail.set_env("PQA_KAFKA__GROUP_IDD", "typo");
            let r = Config::load(None);
            assert!(r.is_err(), "a typo inside a section is reported: {:?}", r.map(|c| c.kafka.group_id));
            Ok(())
        });
    }

    #[test]
    fn secrets_are_recognised() {
        assert!(is_secret_property("sasl.password"));
        assert!(is_secret_property("ssl.key.password"));
        assert!(is_secret_property("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_property("bootstrap.servers"));
    }
}
