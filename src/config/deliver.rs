//! `[deliver]` and `[[deliver.destinations]]`: where `pqa-engine deliver`
//! sends the announcements of the PQA topic (Slack, a signed webhook,
//! HubSpot, Salesforce), and how hard it tries.
//!
//! Secrets (`token`, `secret`, and a Slack `url`, which is one) can be
//! given inline or named by an environment variable (`token_env = "..."`);
//! they are read when `deliver` starts and are never logged: the `Debug`
//! of a destination shows `***` in their place.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The `deliver` command's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverConfig {
    /// Consumer group of `deliver` on the PQA topic (`kafka.output_topic`):
    /// its own, so delivery never slows detection. Must differ from
    /// `kafka.group_id`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Where a new group starts reading when it has no committed offset:
    /// `latest` (only what is announced from now on: a first start does not
    /// send the topic's history to sales) or `earliest`.
    #[serde(default = "default_auto_offset_reset")]
    pub auto_offset_reset: String,
    /// Dead-letter topic for announcements a destination refused for good
    /// (or kept failing for `max_retry_seconds`), with its response.
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// RocksDB directory holding, per destination, the ids of the events
    /// delivered (or dead-lettered), so that a redelivered event is not
    /// sent twice.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Delivered ids are kept this long (then dropped by compaction).
    #[serde(default = "default_delivered_ids_ttl_days")]
    pub delivered_ids_ttl_days: u32,
    /// Base URL under which the engine's HTTP API is reachable for sales
    /// (e.g. `https://pqa.internal.example.com`): messages and tasks link
    /// to `<base>/accounts/{id}`. Empty: no link.
    #[serde(default)]
    pub public_base_url: String,
    /// `/metrics`, `/healthz`, `/readyz` of `deliver`; localhost by
    /// default. Empty string disables HTTP.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// At most this many announcements are delivered between two offset
    /// commits.
    #[serde(default = "default_max_batch_messages")]
    pub max_batch_messages: usize,
    /// When partitions are taken away (rebalance) or on SIGTERM, deliveries
    /// under way get this long to finish; what is left is not committed
    /// and is delivered again later (by id, so not twice where it was
    /// recorded).
    #[serde(default = "default_drain_timeout_seconds")]
    pub drain_timeout_seconds: u64,
    /// The destinations; every announcement goes to each.
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
}

fn default_group_id() -> String {
    "pqa-deliver".into()
}
fn default_auto_offset_reset() -> String {
    "latest".into()
}
fn default_dlq_topic() -> String {
    "pqa.deliver.dead-letter".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("./pqa-deliver-state")
}
const fn default_delivered_ids_ttl_days() -> u32 {
    90
}
fn default_http_addr() -> String {
    "127.0.0.1:9465".into()
}
const fn default_max_batch_messages() -> usize {
    100
}
const fn default_drain_timeout_seconds() -> u64 {
    30
}

impl Default for DeliverConfig {
    fn default() -> Self {
        DeliverConfig {
            group_id: default_group_id(),
            auto_offset_reset: default_auto_offset_reset(),
            dlq_topic: default_dlq_topic(),
            state_dir: default_state_dir(),
            delivered_ids_ttl_days: default_delivered_ids_ttl_days(),
            public_base_url: String::new(),
            http_addr: default_http_addr(),
            max_batch_messages: default_max_batch_messages(),
            drain_timeout_seconds: default_drain_timeout_seconds(),
            destinations: Vec::new(),
        }
    }
}

/// What a destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// A Slack incoming webhook: one readable message per announcement.
    Slack,
    /// Any HTTP endpoint: the CloudEvent, signed the Standard Webhooks way.
    Webhook,
    /// HubSpot CRM API v3 with a private-app token.
    Hubspot,
    /// Salesforce REST API with an OAuth access token.
    Salesforce,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Slack => "slack",
            DestinationKind::Webhook => "webhook",
            DestinationKind::Hubspot => "hubspot",
            DestinationKind::Salesforce => "salesforce",
        }
    }

    /// Announcement types delivered unless `events` says otherwise: Slack
    /// is for people, so no disqualifications by default; the others get
    /// all three (a CRM record's tier goes back to `none`).
    pub fn default_events(self) -> &'static [&'static str] {
        match self {
            DestinationKind::Slack => &["qualified", "tier_changed"],
            _ => &["qualified", "tier_changed", "disqualified"],
        }
    }

    /// Requests per second unless `max_per_second` is set: Slack allows
    /// one message per second per incoming webhook; HubSpot private apps
    /// 100-190 requests per 10 s (a delivery makes up to four); Salesforce
    /// counts API calls per day rather than per second.
    pub fn default_rate(self) -> f64 {
        match self {
            DestinationKind::Slack => 1.0,
            DestinationKind::Webhook => 20.0,
            DestinationKind::Hubspot => 8.0,
            DestinationKind::Salesforce => 10.0,
        }
    }

    /// The API's base URL when `url` is not set (HubSpot has one; the
    /// others are the user's own).
    pub fn default_url(self) -> Option<&'static str> {
        match self {
            DestinationKind::Hubspot => Some("https://api.hubapi.com"),
            _ => None,
        }
    }
}

/// The announcement types by their short names.
pub const EVENT_NAMES: [&str; 3] = ["qualified", "tier_changed", "disqualified"];

/// One destination. Keys that belong to another kind are errors.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Unique name: the `destination` label of the metrics and the key of
    /// its delivered ids. Default: the kind (`slack`, ...).
    #[serde(default)]
    pub name: String,
    pub kind: DestinationKind,
    /// Slack: the incoming webhook URL (a secret: prefer `url_env`).
    /// Webhook: the endpoint. HubSpot: the API base (default
    /// `https://api.hubapi.com`). Salesforce: the instance URL
    /// (`https://MyDomain.my.salesforce.com`).
    #[serde(default)]
    pub url: String,
    /// Read `url` from this environment variable instead.
    #[serde(default)]
    pub url_env: String,
    /// HubSpot private-app token, or Salesforce OAuth access token.
    #[serde(default)]
    pub token: String,
    /// Read `token` from this environment variable instead.
    #[serde(default)]
    pub token_env: String,
    /// Webhook signing secret, `whsec_<base64 key>` (Standard Webhooks).
    #[serde(default)]
    pub secret: String,
    /// Read `secret` from this environment variable instead.
    #[serde(default)]
    pub secret_env: String,
    /// Announcement types to deliver (`qualified`, `tier_changed`,
    /// `disqualified`); default: all three, except Slack (no
    /// `disqualified`).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Per request.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
    /// Rate limit (token bucket); 0 means the kind's default (Slack 1,
    /// webhook 20, HubSpot 8, Salesforce 10).
    #[serde(default)]
    pub max_per_second: f64,
    /// Requests allowed at once above the rate; 0 means one second's worth.
    #[serde(default)]
    pub burst: u32,
    /// First retry after about this long (exponential backoff with full
    /// jitter; a `Retry-After` header is honoured).
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest wait between two attempts.
    #[serde(default = "default_max_backoff_seconds")]
    pub max_backoff_seconds: u64,
    /// An announcement still failing (429, 5xx, timeouts) this long after
    /// its first attempt is dead-lettered (`retries_exhausted`).
    #[serde(default = "default_max_retry_seconds")]
    pub max_retry_seconds: u64,
    /// Leads shown in a Slack message or a CRM task.
    #[serde(default = "default_max_leads")]
    pub max_leads: usize,
    /// Webhook: `structured` (the CloudEvent JSON as the body,
    /// `application/cloudevents+json`) or `binary` (`data` as the body,
    /// the attributes in `ce-*` headers).
    #[serde(default)]
    pub content_mode: Option<String>,
    /// HubSpot / Salesforce: create a task for the owner on `qualified`
    /// and `tier_changed` (default true).
    #[serde(default)]
    pub create_tasks: Option<bool>,
    /// HubSpot / Salesforce: the task's owner when the company/account has
    /// none (HubSpot owner id, Salesforce User id).
    #[serde(default)]
    pub owner_id: Option<String>,
    /// HubSpot: find the company by its `domain` first (default true); else,
    /// or without a domain, upsert by `id_property`.
    #[serde(default)]
    pub match_by_domain: Option<bool>,
    /// HubSpot: company property with unique values holding the account id
    /// (default `pqa_account_id`).
    #[serde(default)]
    pub id_property: Option<String>,
    /// HubSpot: task property holding the CloudEvent id, searched before a
    /// task is created (default `pqa_event_id`).
    #[serde(default)]
    pub task_id_property: Option<String>,
    /// Salesforce: REST API version (default `v62.0`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Salesforce: Account external-id field holding the account id
    /// (default `PQA_Account_Id__c`).
    #[serde(default)]
    pub account_external_id_field: Option<String>,
    /// Salesforce: Task external-id field holding the CloudEvent id; tasks
    /// are upserted by it (default `PQA_Event_Id__c`).
    #[serde(default)]
    pub task_external_id_field: Option<String>,
}

const fn default_timeout_seconds() -> f64 {
    10.0
}
const fn default_initial_backoff_ms() -> u64 {
    500
}
const fn default_max_backoff_seconds() -> u64 {
    60
}
const fn default_max_retry_seconds() -> u64 {
    900
}
const fn default_max_leads() -> usize {
    3
}

impl fmt::Debug for DestinationConfig {
    /// Secrets (and a Slack URL, which is one) are never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |s: &str| if s.is_empty() { "" } else { "***" };
        let url = if self.kind == DestinationKind::Slack { hide(&self.url) } else { self.url.as_str() };
        f.debug_struct("DestinationConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &url)
            .field("url_env", &self.url_env)
            .field("token", &hide(&self.token))
            .field("token_env", &self.token_env)
            .field("secret", &hide(&self.secret))
            .field("secret_env", &self.secret_env)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// A secret value read from the configuration or the environment. Its
/// `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl DestinationConfig {
    /// The name, or the kind when none is given.
    pub fn label(&self) -> String {
        if self.name.trim().is_empty() {
            self.kind.as_str().to_string()
        } else {
            self.name.clone()
        }
    }

    /// The announcement types this destination takes.
    pub fn wanted_events(&self) -> Vec<String> {
        match &self.events {
            Some(e) => e.clone(),
            None => self.kind.default_events().iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        if self.max_per_second > 0.0 {
            self.max_per_second
        } else {
            self.kind.default_rate()
        }
    }

    /// A value given inline or through the environment; `Ok(None)` when
    /// neither is set. `at` is the destination's path for errors.
    fn resolve(&self, at: &str, key: &str, inline: &str, env: &str) -> Result<Option<Secret>, ConfigError> {
        if !inline.is_empty() {
            return Ok(Some(Secret::new(inline)));
        }
        if env.is_empty() {
            return Ok(None);
        }
        match std::env::var(env) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
            _ => Err(ConfigError::new(
                format!("{at}.{key}_env"),
                format!("the environment variable {env} is not set (or empty)"),
            )),
        }
    }

    /// The URL (with `url_env` and the kind's default), read at start.
    pub fn resolve_url(&self, at: &str) -> Result<Secret, ConfigError> {
        match self.resolve(at, "url", &self.url, &self.url_env)? {
            Some(u) => Ok(u),
            None => match self.kind.default_url() {
                Some(u) => Ok(Secret::new(u)),
                None => Err(ConfigError::new(format!("{at}.url"), "is required")),
            },
        }
    }

    /// The token (HubSpot, Salesforce), read at start.
    pub fn resolve_token(&self, at: &str) -> Result<Secret, ConfigError> {
        self.resolve(at, "token", &self.token, &self.token_env)?
            .ok_or_else(|| ConfigError::new(format!("{at}.token"), "is required (or token_env)"))
    }

    /// The webhook signing key (the bytes behind `whsec_`), read at start.
    pub fn resolve_secret_key(&self, at: &str) -> Result<Vec<u8>, ConfigError> {
        let s = self
            .resolve(at, "secret", &self.secret, &self.secret_env)?
            .ok_or_else(|| ConfigError::new(format!("{at}.secret"), "is required (or secret_env)"))?;
        let key = if self.secret.is_empty() { format!("{at}.secret_env") } else { format!("{at}.secret") };
        decode_whsec(s.expose()).map_err(|m| ConfigError::new(key, m))
    }
}

/// The key of a Standard Webhooks secret `whsec_<base64>`.
pub fn decode_whsec(s: &str) -> Result<Vec<u8>, String> {
    let Some(b64) = s.strip_prefix("whsec_") else {
        return Err("must look like `whsec_<base64 key>` (Standard Webhooks)".into());
    };
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(k) if k.len() >= 16 => Ok(k),
        Ok(_) => Err("the key behind `whsec_` is shorter than 16 bytes (24 to 64 are usual)".into()),
        Err(_) => Err("the part after `whsec_` is not valid base64".into()),
    }
}

impl DeliverConfig {
    /// Checks `[deliver]`; `engine_group` and `output_topic` are the
    /// engine's (`kafka.group_id`, `kafka.output_topic`).
    pub fn check(&self, engine_group: &str, output_topic: &str, errs: &mut Vec<ConfigError>) {
        if self.group_id.trim().is_empty() {
            errs.push(ConfigError::new("deliver.group_id", "must not be empty"));
        } else if self.group_id == engine_group {
            errs.push(ConfigError::new(
                "deliver.group_id",
                format!("`{}` is the engine's kafka.group_id: deliver needs a group of its own", self.group_id),
            ));
        }
        if !["earliest", "latest"].contains(&self.auto_offset_reset.as_str()) {
            errs.push(ConfigError::new("deliver.auto_offset_reset", "must be `latest` or `earliest`"));
        }
        if self.dlq_topic.trim().is_empty() {
            errs.push(ConfigError::new("deliver.dlq_topic", "empty topic name"));
        } else if self.dlq_topic == output_topic {
            errs.push(ConfigError::new("deliver.dlq_topic", "must not be the PQA topic it reads"));
        }
        if self.max_batch_messages == 0 {
            errs.push(ConfigError::new("deliver.max_batch_messages", "must be at least 1"));
        }
        if self.delivered_ids_ttl_days == 0 {
            errs.push(ConfigError::new("deliver.delivered_ids_ttl_days", "must be at least 1"));
        }
        if !self.http_addr.is_empty() && self.http_addr.parse::<std::net::SocketAddr>().is_err() {
            errs.push(ConfigError::new(
                "deliver.http_addr",
                format!("`{}` is not an address like 127.0.0.1:9465", self.http_addr),
            ));
        }
        if !self.public_base_url.is_empty() && !is_http_url(&self.public_base_url) {
            errs.push(ConfigError::new("deliver.public_base_url", "must be an http:// or https:// URL"));
        }
        let mut names = HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let at = format!("deliver.destinations[{i}]");
            if !names.insert(d.label()) {
                errs.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("`{}` is already the name of another destination (names must be unique)", d.label()),
                ));
            }
            d.check(&at, errs);
        }
    }
}

fn is_http_url(s: &str) -> bool {
    match reqwest::Url::parse(s) {
        Ok(u) => matches!(u.scheme(), "http" | "https") && u.host().is_some(),
        Err(_) => false,
    }
}

impl DestinationConfig {
    fn check(&self, at: &str, errs: &mut Vec<ConfigError>) {
        use DestinationKind::*;
        let kind = self.kind;
        let mut err = |key: &str, msg: String| errs.push(ConfigError::new(format!("{at}.{key}"), msg));
        for (key, inline, env) in [
            ("url", &self.url, &self.url_env),
            ("token", &self.token, &self.token_env),
            ("secret", &self.secret, &self.secret_env),
        ] {
            if !inline.is_empty() && !env.is_empty() {
                err(key, format!("give `{key}` or `{key}_env`, not both"));
            }
        }
        // A Slack URL carries its own credentials; the others' URLs are
        // plain endpoints.
        if !self.url.is_empty() && !is_http_url(&self.url) {
            err("url", "must be an http:// or https:// URL".into());
        }
        let needs_url = matches!(kind, Slack | Webhook | Salesforce);
        if needs_url && self.url.is_empty() && self.url_env.is_empty() {
            err("url", format!("is required for kind = \"{}\" (or url_env)", kind.as_str()));
        }
        let needs_token = matches!(kind, Hubspot | Salesforce);
        if needs_token && self.token.is_empty() && self.token_env.is_empty() {
            err("token", format!("is required for kind = \"{}\" (or token_env)", kind.as_str()));
        }
        let has_token = !self.token.is_empty() || !self.token_env.is_empty();
        if !needs_token && has_token {
            err("token", format!("is not used by kind = \"{}\"", kind.as_str()));
        }
        if kind == Webhook {
            if self.secret.is_empty() && self.secret_env.is_empty() {
                err("secret", "is required for kind = \"webhook\" (`whsec_<base64 key>`, or secret_env)".into());
            }
            if !self.secret.is_empty() {
                if let Err(m) = decode_whsec(&self.secret) {
                    err("secret", m);
                }
            }
        } else if !(self.secret.is_empty() && self.secret_env.is_empty()) {
            err("secret", format!("is not used by kind = \"{}\"", kind.as_str()));
        }
        if let Some(events) = &self.events {
            if events.is_empty() {
                err("events", "must name at least one of qualified, tier_changed, disqualified".into());
            }
            for (j, e) in events.iter().enumerate() {
                if !EVENT_NAMES.contains(&e.as_str()) {
                    err(&format!("events[{j}]"), format!("`{e}` is not one of qualified, tier_changed, disqualified"));
                }
            }
        }
        if !(self.timeout_seconds > 0.0 && self.timeout_seconds <= 600.0) {
            err("timeout_seconds", "must be more than 0 and at most 600".into());
        }
        if !(self.max_per_second >= 0.0 && self.max_per_second.is_finite()) {
            err("max_per_second", "must be 0 (the kind's default) or more".into());
        }
        if self.initial_backoff_ms == 0 {
            err("initial_backoff_ms", "must be at least 1".into());
        }
        if self.max_backoff_seconds == 0 {
            err("max_backoff_seconds", "must be at least 1".into());
        }
        if let Some(m) = &self.content_mode {
            if kind != Webhook {
                err("content_mode", format!("is only for kind = \"webhook\", not \"{}\"", kind.as_str()));
            } else if m != "structured" && m != "binary" {
                err("content_mode", format!("`{m}` is not `structured` or `binary`"));
            }
        }
        let crm = matches!(kind, Hubspot | Salesforce);
        for (key, set) in [("create_tasks", self.create_tasks.is_some()), ("owner_id", self.owner_id.is_some())] {
            if set && !crm {
                err(key, format!("is only for kind = \"hubspot\" or \"salesforce\", not \"{}\"", kind.as_str()));
            }
        }
        for (key, set, for_kind) in [
            ("match_by_domain", self.match_by_domain.is_some(), Hubspot),
            ("id_property", self.id_property.is_some(), Hubspot),
            ("task_id_property", self.task_id_property.is_some(), Hubspot),
            ("api_version", self.api_version.is_some(), Salesforce),
            ("account_external_id_field", self.account_external_id_field.is_some(), Salesforce),
            ("task_external_id_field", self.task_external_id_field.is_some(), Salesforce),
        ] {
            if set && kind != for_kind {
                err(key, format!("is only for kind = \"{}\", not \"{}\"", for_kind.as_str(), kind.as_str()));
            }
        }
        if let Some(v) = &self.api_version {
            let ok = v.strip_prefix('v').and_then(|n| n.parse::<f64>().ok()).is_some_and(|n| n >= 20.0);
            if !ok {
                err("api_version", format!("`{v}` is not a Salesforce API version like `v62.0`"));
            }
        }
        for (key, v) in [
            ("id_property", &self.id_property),
            ("task_id_property", &self.task_id_property),
            ("account_external_id_field", &self.account_external_id_field),
            ("task_external_id_field", &self.task_external_id_field),
        ] {
            if let Some(v) = v {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    err(key, format!("`{v}` is not a property/field name (letters, digits, `_`)"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(toml_text: &str) -> DestinationConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn errors(d: DestinationConfig) -> Vec<String> {
        let cfg = DeliverConfig { destinations: vec![d], ..Default::default() };
        let mut errs = Vec::new();
        cfg.check("pqa-engine", "pqa.qualified", &mut errs);
        errs.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn each_kind_says_what_it_is_missing_with_the_key() {
        let e = errors(dest("kind = 'webhook'\nurl = 'https://hooks.example.com/x'"));
        assert_eq!(e, ["deliver.destinations[0].secret: is required for kind = \"webhook\" (`whsec_<base64 key>`, or secret_env)"]);
        let e = errors(dest("kind = 'salesforce'"));
        assert!(e.iter().any(|m| m.starts_with("deliver.destinations[0].url: is required")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("deliver.destinations[0].token: is required")), "{e:?}");
        let e = errors(dest("kind = 'hubspot'\ntoken_env = 'HUBSPOT_TOKEN'"));
        assert!(e.is_empty(), "HubSpot has a default URL: {e:?}");
        let e = errors(dest(
            "kind = 'slack'\nurl_env = 'SLACK_URL'\ncontent_mode = 'binary'\nevents = ['qualified', 'won']",
        ));
        assert_eq!(
            e,
            [
                "deliver.destinations[0].events[1]: `won` is not one of qualified, tier_changed, disqualified",
                "deliver.destinations[0].content_mode: is only for kind = \"webhook\", not \"slack\""
            ]
        );
    }

    #[test]
    fn secrets_are_checked_and_never_shown() {
        let e = errors(dest("kind = 'webhook'\nurl = 'https://h.example.com'\nsecret = 'not-a-whsec'"));
        assert_eq!(e, ["deliver.destinations[0].secret: must look like `whsec_<base64 key>` (Standard Webhooks)"]);
        let d = dest("kind = 'slack'\nurl = 'https://hooks.slack.com/services/T000/B000/XXXXSECRET'");
        let shown = format!("{d:?}");
        assert!(!shown.contains("XXXXSECRET"), "{shown}");
        let d = dest("kind = 'hubspot'\ntoken = 'pat-na1-SECRET'");
        assert!(!format!("{d:?}").contains("SECRET"));
        assert_eq!(format!("{:?} {}", Secret::new("x"), Secret::new("x")), "Secret(***) ***");
    }

    #[test]
    fn names_are_unique_and_the_group_is_not_the_engines() {
        let d = dest("kind = 'slack'\nurl = 'https://hooks.slack.com/services/x'");
        let cfg =
            DeliverConfig { group_id: "pqa-engine".into(), destinations: vec![d.clone(), d], ..Default::default() };
        let mut errs = Vec::new();
        cfg.check("pqa-engine", "pqa.qualified", &mut errs);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["deliver.group_id", "deliver.destinations[1].name"]);
    }

    #[test]
    fn environment_secrets_name_their_variable_when_missing() {
        let d = dest("kind = 'hubspot'\ntoken_env = 'PQA_TEST_SURELY_UNSET_TOKEN'");
        let e = d.resolve_token("deliver.destinations[0]").unwrap_err();
        assert_eq!(e.path, "deliver.destinations[0].token_env");
        assert!(e.message.contains("PQA_TEST_SURELY_UNSET_TOKEN"));
        assert_eq!(d.resolve_url("x").unwrap().expose(), "https://api.hubapi.com");
    }
}
