//! The PQA definition: named metrics over event-time windows, named signals
//! (event / page-path / trait-change patterns), rules written in CEL, score
//! weights, tiers and the announcement cooldown. All of it is configuration;
//! [`DefinitionConfig::compile`] turns it into a [`CompiledDefinition`] the
//! engine evaluates, or lists everything wrong with it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cel::{Context, Env, Program, Value};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Variables every rule can use besides the metrics it defines.
pub const BUILTIN_VARIABLES: &[&str] = &["account_age_days", "account"];

/// The definition as written in the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionConfig {
    /// Version of this rule set; it goes into every output event. Change it
    /// whenever the definition changes.
    pub version: String,
    /// Width of a time bucket in seconds (at most 3600). A window boundary is
    /// exact to one bucket.
    #[serde(default = "default_bucket_seconds")]
    pub bucket_seconds: u32,
    /// An account is not announced again for the same rule within this much
    /// event time, unless its tier rises (e.g. `30d`).
    pub cooldown: String,
    /// How many leads (people) an event lists at most.
    #[serde(default = "default_max_leads")]
    pub max_leads: usize,
    /// Which user traits a lead carries (from `identify` calls).
    #[serde(default)]
    pub lead_traits: Vec<String>,
    /// Email domains of free mail providers: a lead with only such an
    /// address is ranked below those with a work email, and an account all
    /// of whose users are on them is a `personal_account`.
    #[serde(default = "default_free_mail_domains")]
    pub free_mail_domains: Vec<String>,
    /// Words in a user's `seniority` or `title` trait that make them a
    /// senior lead (case-insensitive, whole words).
    #[serde(default = "default_senior_keywords")]
    pub senior_keywords: Vec<String>,
    /// Named numbers over windows; rules refer to them by name.
    #[serde(default)]
    pub metrics: Vec<MetricConfig>,
    /// Numbers computed from metrics by a CEL expression (e.g. velocity).
    #[serde(default)]
    pub derived: Vec<DerivedConfig>,
    /// Named behavioural signals.
    #[serde(default)]
    pub signals: Vec<SignalConfig>,
    /// The rules; an account is a PQA when any fires.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// How the 0-100 score is made.
    #[serde(default)]
    pub score: ScoreConfig,
    /// Tiers by minimum score, e.g. `hot` >= 70, `warm` >= 0.
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
    /// How many announcements may reach sales per hour and per day; the
    /// rest wait in priority order (see [`crate::budget`]). Not serialised
    /// when empty, so the fingerprint of a definition without one is what
    /// it was before budgets existed.
    #[serde(default, skip_serializing_if = "BudgetConfig::is_empty")]
    pub budget: BudgetConfig,
}

/// `[definition.budget]`: caps on what reaches sales. Counted in wall-clock
/// time by `run` (sales' hours are real hours) and in event time by
/// `replay` and `backtest` (so that history shows what the budget would
/// have let through, and the same input gives the same output).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// At most this many announcements in any 60 minutes (none: no cap).
    #[serde(default)]
    pub per_hour: Option<u32>,
    /// At most this many in any 24 hours (none: no cap).
    #[serde(default)]
    pub per_day: Option<u32>,
    /// An announcement waiting longer than this is dropped (e.g. `7d`).
    #[serde(default)]
    pub max_wait: Option<String>,
    /// Per rule: its own caps, or `bypass = true` (hand-raisers: announced
    /// at once, outside the budget).
    #[serde(default)]
    pub rules: std::collections::BTreeMap<String, RuleBudgetConfig>,
    /// `event` counts the budget in event time in `run` too (releases then
    /// follow the input, as in `replay`); the default is wall-clock time in
    /// `run`, event time offline.
    #[serde(default)]
    pub clock: Option<String>,
}

impl BudgetConfig {
    pub fn is_empty(&self) -> bool {
        self.per_hour.is_none()
            && self.per_day.is_none()
            && self.max_wait.is_none()
            && self.rules.is_empty()
            && self.clock.is_none()
    }
}

/// `[definition.budget.rules.NAME]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBudgetConfig {
    #[serde(default)]
    pub per_hour: Option<u32>,
    #[serde(default)]
    pub per_day: Option<u32>,
    /// Announcements listing this rule go out at once and do not count.
    #[serde(default)]
    pub bypass: bool,
}

/// The compiled budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budget {
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
    pub max_wait_seconds: i64,
    /// Rule name -> (per hour, per day, bypass).
    pub rules: Vec<(String, Option<u32>, Option<u32>, bool)>,
    /// The clock asked for (`None`: wall-clock in `run`, event time offline).
    pub clock: Option<crate::budget::BudgetClock>,
}

impl Budget {
    /// One worker's share of the caps when `n` workers count the budget
    /// apart (`kafka.workers`): each cap divided by `n`, rounded up (so a
    /// cap of 1 stays 1 per worker).
    pub fn share(&self, n: u32) -> Budget {
        let part = |c: Option<u32>| c.map(|c| c.div_ceil(n.max(1)));
        Budget {
            per_hour: part(self.per_hour),
            per_day: part(self.per_day),
            max_wait_seconds: self.max_wait_seconds,
            rules: self.rules.iter().map(|(r, h, d, b)| (r.clone(), part(*h), part(*d), *b)).collect(),
            clock: self.clock,
        }
    }

    /// Whether any cap is set (otherwise every announcement goes out at once).
    pub fn is_capped(&self) -> bool {
        self.per_hour.is_some() || self.per_day.is_some() || self.rules.iter().any(|r| r.1.is_some() || r.2.is_some())
    }
}

/// How long an announcement waits for budget at most unless configured.
pub const DEFAULT_MAX_WAIT_SECONDS: i64 = 7 * 86_400;

const fn default_bucket_seconds() -> u32 {
    3600
}
const fn default_max_leads() -> usize {
    5
}

/// Free mail providers (overridable with `definition.free_mail_domains`).
pub const FREE_MAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "yahoo.co.uk",
    "yahoo.fr",
    "ymail.com",
    "hotmail.com",
    "hotmail.co.uk",
    "hotmail.fr",
    "outlook.com",
    "live.com",
    "msn.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "pm.me",
    "gmx.de",
    "gmx.net",
    "gmx.com",
    "web.de",
    "mail.com",
    "mail.ru",
    "yandex.ru",
    "yandex.com",
    "qq.com",
    "163.com",
    "126.com",
    "zoho.com",
    "fastmail.com",
    "hey.com",
    "tutanota.com",
    "libero.it",
    "orange.fr",
    "free.fr",
    "t-online.de",
    "naver.com",
    "rediffmail.com",
];

fn default_free_mail_domains() -> Vec<String> {
    FREE_MAIL_DOMAINS.iter().map(|d| d.to_string()).collect()
}

/// Senior titles (overridable with `definition.senior_keywords`).
pub const SENIOR_KEYWORDS: &[&str] = &[
    "chief",
    "ceo",
    "cto",
    "cfo",
    "coo",
    "cio",
    "ciso",
    "cmo",
    "cro",
    "founder",
    "cofounder",
    "co-founder",
    "owner",
    "president",
    "vp",
    "svp",
    "evp",
    "head",
    "director",
    "executive",
    "partner",
    "principal",
];

fn default_senior_keywords() -> Vec<String> {
    SENIOR_KEYWORDS.iter().map(|d| d.to_string()).collect()
}

/// What a metric counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// `track` and `page` events (optionally only some track event names).
    Events,
    /// Distinct users with a `track` or `page` event in the window (exact).
    ActiveUsers,
    /// Distinct `track` event names in the window (exact).
    DistinctFeatures,
    /// Occurrences of a named signal in the window.
    Signal,
}

/// A named metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Name used in rules and in the output's `metrics` object.
    pub name: String,
    /// What it counts.
    pub kind: MetricKind,
    /// Window length, e.g. `28d`, `7d`, `12h`.
    pub window: String,
    /// Shift the window into the past (only for `events` and `signal`):
    /// `window = "28d", offset = "7d"` is the 28 days before the last 7.
    #[serde(default)]
    pub offset: Option<String>,
    /// For `events`: count only these track event names.
    #[serde(default)]
    pub events: Vec<String>,
    /// For `signal`: the signal's name.
    #[serde(default)]
    pub signal: Option<String>,
}

/// A number computed from metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedConfig {
    pub name: String,
    /// CEL expression over metrics (all metrics are doubles: write `4.0`).
    pub expr: String,
}

/// A behavioural signal: matches if any of its patterns match.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalConfig {
    pub name: String,
    /// What it means, in words for sales (a lead's `why`); the name when
    /// empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `track` event names (exact).
    #[serde(default)]
    pub track_events: Vec<String>,
    /// Regular expression matched against the path of `page` events.
    #[serde(default)]
    pub page_path: Option<String>,
    /// A user trait changing to one of some values (from an `identify`).
    #[serde(default, rename = "trait")]
    pub trait_change: Option<TraitChangeConfig>,
}

/// A user trait that becomes one of `becomes` (case-insensitive), from any
/// other value or from none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraitChangeConfig {
    pub name: String,
    pub becomes: Vec<String>,
}

/// A rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// What it means, for people reading the output and `/accounts`.
    #[serde(default)]
    pub description: String,
    /// CEL condition over metrics, derived numbers, `account_age_days` and
    /// `account` (the account's traits from `group` calls).
    pub when: String,
    /// Score points when the rule fires.
    #[serde(default)]
    pub points: u32,
    /// Announcements listing this rule go out at once, outside
    /// `[definition.budget]` (the shipped definition's `hand_raiser`: a
    /// person asking for sales never waits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bypass_budget: bool,
}

/// Score = points of the rules that fire + bonus terms, clamped to 0..=100.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// CEL expressions (numbers) added to the rule points when any rule
    /// fires. A term that fails to evaluate for an account adds 0.
    #[serde(default)]
    pub bonus: Vec<String>,
}

/// A tier: accounts with at least `min_score` get this tier (the highest
/// that matches).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    pub min_score: u32,
}

/// A metric ready to evaluate: windows in buckets.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub window_buckets: u32,
    pub offset_buckets: u32,
    /// For `events`: what its counter means ([`counter_id`]), and the
    /// column of a bucket that holds it in the state layout the definition
    /// is bound to (see [`crate::state::layout`]).
    pub counter_id: u64,
    pub column: usize,
    /// For `events`: the running window sum it reads (an index into the
    /// layout's windows).
    pub window_slot: usize,
    /// For `signal`: what the signal means ([`Signal::id`]) and its name.
    pub signal_id: u64,
    pub signal_name: String,
}

/// A signal ready to match.
#[derive(Debug, Clone)]
pub struct Signal {
    /// What the signal means: a hash of its name and patterns
    /// ([`signal_id`]). State keeps its occurrences under this id.
    pub id: u64,
    pub name: String,
    /// In words for sales (the name when none was given).
    pub description: String,
    pub track_events: HashSet<String>,
    pub page_path: Option<Regex>,
    pub trait_change: Option<(String, Vec<String>)>,
}

/// A compiled rule.
pub struct Rule {
    pub name: String,
    pub description: String,
    pub when: String,
    pub program: Program,
    pub points: u32,
    /// Variables the condition reads, for explanations.
    pub references: Vec<String>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule").field("name", &self.name).field("when", &self.when).finish()
    }
}

/// The definition ready to evaluate. Shared read-only (`Arc`) by the engine
/// and the HTTP server.
pub struct CompiledDefinition {
    pub version: String,
    /// A hash of the whole definition as written (16 hex digits): two
    /// definitions with the same version but other content differ here.
    pub fingerprint: String,
    pub bucket_seconds: i64,
    pub cooldown_seconds: i64,
    /// How far back in event time state must reach (longest window+offset).
    pub retention_seconds: i64,
    pub max_leads: usize,
    pub lead_traits: Vec<String>,
    /// Lower-case.
    pub free_mail_domains: HashSet<String>,
    /// Lower-case.
    pub senior_keywords: Vec<String>,
    pub metrics: Vec<Metric>,
    /// The counters its `events` metrics read: `None` counts every
    /// track/page event, `Some(names)` only those track events. The first is
    /// always `None`. In the order the metrics name them.
    pub counters: Vec<Option<HashSet<String>>>,
    /// The `events` windows its metrics read: (counter index, window
    /// buckets, offset buckets), each once, in the order the metrics name them.
    pub windows: Vec<(usize, u32, u32)>,
    pub signals: Vec<Signal>,
    pub derived: Vec<(String, Program)>,
    pub rules: Vec<Rule>,
    pub bonus: Vec<Program>,
    /// Highest first.
    pub tiers: Vec<(String, u32)>,
    pub budget: Budget,
    pub env: Arc<Env>,
    /// The derived numbers, rules and score terms with their names resolved
    /// for the native fast path.
    pub plans: crate::detect::Plans,
}

impl std::fmt::Debug for CompiledDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledDefinition").field("version", &self.version).field("rules", &self.rules).finish()
    }
}

/// Longest duration accepted anywhere in a definition (100 years), so that
/// window arithmetic can never overflow.
pub const MAX_DURATION_SECONDS: i64 = 100 * 365 * 86_400;

/// Longest CEL expression accepted (bytes). The `cel` crate parses and
/// evaluates recursively: a deeply chained expression of some kilobytes
/// overflows a thread's stack. No sensible rule comes near this.
pub const MAX_EXPR_BYTES: usize = 2048;

/// Parses `28d`, `7d`, `12h`, `90 days` (at most 100 years).
pub fn parse_duration_seconds(s: &str) -> Result<i64, String> {
    let d =
        humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}` is not a duration like `28d` or `12h`: {e}"))?;
    match i64::try_from(d.as_secs()) {
        Ok(secs) if secs <= MAX_DURATION_SECONDS => Ok(secs),
        _ => Err(format!("`{s}` is longer than 100 years")),
    }
}

impl DefinitionConfig {
    /// Compiles and checks the definition. Every problem is reported, each
    /// with its place (`definition.rules[1].when`).
    pub fn compile(&self) -> Result<CompiledDefinition, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let env = Arc::new(Env::stdlib());
        if self.version.trim().is_empty() {
            errs.push(ConfigError::new("definition.version", "must not be empty"));
        }
        let bucket = i64::from(self.bucket_seconds);
        if !(60..=3600).contains(&bucket) || 3600 % bucket != 0 {
            errs.push(ConfigError::new(
                "definition.bucket_seconds",
                "must divide 3600 and be between 60 and 3600 (a window boundary may be off by one bucket)",
            ));
        }
        let bucket = bucket.clamp(60, 3600);
        let cooldown_seconds = match parse_duration_seconds(&self.cooldown) {
            Ok(s) => s,
            Err(e) => {
                errs.push(ConfigError::new("definition.cooldown", e));
                0
            }
        };

        let mut names: HashMap<String, String> = HashMap::new();
        let mut claim = |name: &str, path: String, errs: &mut Vec<ConfigError>| {
            if !is_identifier(name) {
                errs.push(ConfigError::new(
                    format!("{path}.name"),
                    format!("`{name}` must be an identifier (letters, digits, `_`, not starting with a digit)"),
                ));
            } else if BUILTIN_VARIABLES.contains(&name) {
                errs.push(ConfigError::new(format!("{path}.name"), format!("`{name}` is a built-in variable")));
            } else if let Some(prev) = names.insert(name.to_string(), path.clone()) {
                errs.push(ConfigError::new(format!("{path}.name"), format!("`{name}` is already defined at {prev}")));
            }
        };

        // Signals.
        let mut signals = Vec::new();
        let mut signal_index = HashMap::new();
        for (i, s) in self.signals.iter().enumerate() {
            let path = format!("definition.signals[{i}]");
            if signal_index.insert(s.name.clone(), i).is_some() {
                errs.push(ConfigError::new(format!("{path}.name"), format!("signal `{}` is defined twice", s.name)));
            }
            let page_path = match &s.page_path {
                Some(re) => match Regex::new(re) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        errs.push(ConfigError::new(
                            format!("{path}.page_path"),
                            format!("invalid regular expression: {e}"),
                        ));
                        None
                    }
                },
                None => None,
            };
            if s.track_events.is_empty() && s.page_path.is_none() && s.trait_change.is_none() {
                errs.push(ConfigError::new(
                    path.clone(),
                    "a signal needs at least one of track_events, page_path, trait",
                ));
            }
            let trait_change = s.trait_change.as_ref().map(|t| {
                if t.becomes.is_empty() {
                    errs.push(ConfigError::new(format!("{path}.trait.becomes"), "needs at least one value"));
                }
                (t.name.clone(), t.becomes.iter().map(|v| v.to_lowercase()).collect())
            });
            signals.push(Signal {
                id: signal_id(s),
                name: s.name.clone(),
                description: if s.description.trim().is_empty() { s.name.clone() } else { s.description.clone() },
                track_events: s.track_events.iter().cloned().collect(),
                page_path,
                trait_change,
            });
        }

        // Metrics.
        let mut metrics = Vec::new();
        let mut counters: Vec<Option<HashSet<String>>> = vec![None];
        let mut windows: Vec<(usize, u32, u32)> = Vec::new();
        let mut retention = 0i64;
        for (i, m) in self.metrics.iter().enumerate() {
            let path = format!("definition.metrics[{i}]");
            claim(&m.name, path.clone(), &mut errs);
            let window = match parse_duration_seconds(&m.window) {
                Ok(0) => {
                    errs.push(ConfigError::new(format!("{path}.window"), "must be longer than zero"));
                    bucket
                }
                Ok(w) => w,
                Err(e) => {
                    errs.push(ConfigError::new(format!("{path}.window"), e));
                    bucket
                }
            };
            let offset = match &m.offset {
                None => 0,
                Some(o) => match parse_duration_seconds(o) {
                    Ok(s) => s,
                    Err(e) => {
                        errs.push(ConfigError::new(format!("{path}.offset"), e));
                        0
                    }
                },
            };
            if offset > 0 && matches!(m.kind, MetricKind::ActiveUsers | MetricKind::DistinctFeatures) {
                errs.push(ConfigError::new(
                    format!("{path}.offset"),
                    "distinct counts (active_users, distinct_features) are exact over trailing windows only; remove the offset",
                ));
            }
            if !m.events.is_empty() && m.kind != MetricKind::Events {
                errs.push(ConfigError::new(format!("{path}.events"), "only `events` metrics take an event filter"));
            }
            let mut counter = 0;
            if m.kind == MetricKind::Events && !m.events.is_empty() {
                let set: HashSet<String> = m.events.iter().cloned().collect();
                counter = match counters.iter().position(|c| c.as_ref() == Some(&set)) {
                    Some(p) => p,
                    None => {
                        counters.push(Some(set));
                        counters.len() - 1
                    }
                };
            }
            let mut signal_id = 0;
            if m.kind == MetricKind::Signal {
                match m.signal.as_ref().and_then(|s| signal_index.get(s)) {
                    Some(&s) => signal_id = signals[s].id,
                    None => errs.push(ConfigError::new(
                        format!("{path}.signal"),
                        match &m.signal {
                            Some(s) => format!("no signal named `{s}` is defined in definition.signals"),
                            None => "a `signal` metric needs `signal = \"<name>\"`".to_string(),
                        },
                    )),
                }
            } else if m.signal.is_some() {
                errs.push(ConfigError::new(format!("{path}.signal"), "only `signal` metrics name a signal"));
            }
            retention = retention.max(window + offset);
            let buckets = |s: i64| u32::try_from((s + bucket - 1) / bucket).unwrap_or(u32::MAX);
            let (window_buckets, offset_buckets) = (buckets(window).max(1), buckets(offset));
            let mut window_slot = 0;
            if m.kind == MetricKind::Events {
                let w = (counter, window_buckets, offset_buckets);
                window_slot = windows.iter().position(|x| *x == w).unwrap_or_else(|| {
                    windows.push(w);
                    windows.len() - 1
                });
            }
            metrics.push(Metric {
                name: m.name.clone(),
                kind: m.kind,
                window_buckets,
                offset_buckets,
                counter_id: counter_id(counters[counter].as_ref()),
                column: counter,
                window_slot,
                signal_id,
                signal_name: if m.kind == MetricKind::Signal {
                    m.signal.clone().unwrap_or_default()
                } else {
                    String::new()
                },
            });
        }

        // Derived numbers and rules: compile, then try them on sample
        // accounts so that unknown names and type errors show up now, not
        // on the first event.
        let mut known: Vec<String> = metrics.iter().map(|m| m.name.clone()).collect();
        let mut derived = Vec::new();
        for (i, d) in self.derived.iter().enumerate() {
            let path = format!("definition.derived[{i}]");
            claim(&d.name, path.clone(), &mut errs);
            if let Some(p) = compile_expr(&env, &d.expr, &format!("{path}.expr"), &known, &mut errs, ExpectType::Number)
            {
                derived.push((d.name.clone(), p));
            }
            known.push(d.name.clone());
        }
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let path = format!("definition.rules[{i}]");
            claim(&r.name, path.clone(), &mut errs);
            if let Some(program) =
                compile_expr(&env, &r.when, &format!("{path}.when"), &known, &mut errs, ExpectType::Bool)
            {
                let refs = program.references();
                let references = known
                    .iter()
                    .chain(BUILTIN_VARIABLES.iter().map(|s| s.to_string()).collect::<Vec<_>>().iter())
                    .filter(|k| refs.has_variable(k.as_str()))
                    .cloned()
                    .collect();
                rules.push(Rule {
                    name: r.name.clone(),
                    description: r.description.clone(),
                    when: r.when.clone(),
                    program,
                    points: r.points,
                    references,
                });
            }
        }
        if self.rules.is_empty() {
            errs.push(ConfigError::new("definition.rules", "at least one rule is required"));
        }
        let bonus = self
            .score
            .bonus
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                compile_expr(&env, b, &format!("definition.score.bonus[{i}]"), &known, &mut errs, ExpectType::Number)
            })
            .collect();

        let mut tiers: Vec<(String, u32)> = self.tiers.iter().map(|t| (t.name.clone(), t.min_score)).collect();
        for (i, t) in self.tiers.iter().enumerate() {
            if t.min_score > 100 {
                errs.push(ConfigError::new(format!("definition.tiers[{i}].min_score"), "must be 0..=100"));
            }
            if self.tiers.iter().filter(|o| o.name == t.name).count() > 1 {
                errs.push(ConfigError::new(format!("definition.tiers[{i}].name"), "tier names must be unique"));
            }
        }
        if tiers.is_empty() {
            errs.push(ConfigError::new("definition.tiers", "at least one tier is required"));
        } else if !tiers.iter().any(|t| t.1 == 0) {
            errs.push(ConfigError::new(
                "definition.tiers",
                "one tier must have min_score = 0, so that every PQA has a tier",
            ));
        }
        tiers.sort_by_key(|t| std::cmp::Reverse(t.1));

        // Budget.
        let b = &self.budget;
        let max_wait_seconds = match &b.max_wait {
            None => DEFAULT_MAX_WAIT_SECONDS,
            Some(w) => match parse_duration_seconds(w) {
                Ok(0) => {
                    errs.push(ConfigError::new("definition.budget.max_wait", "must be longer than 0"));
                    0
                }
                Ok(s) => s,
                Err(e) => {
                    errs.push(ConfigError::new("definition.budget.max_wait", e));
                    0
                }
            },
        };
        for (key, v) in [("per_hour", b.per_hour), ("per_day", b.per_day)] {
            if v == Some(0) {
                errs.push(ConfigError::new(
                    format!("definition.budget.{key}"),
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
        }
        let mut budget_rules: Vec<(String, Option<u32>, Option<u32>, bool)> =
            self.rules.iter().filter(|r| r.bypass_budget).map(|r| (r.name.clone(), None, None, true)).collect();
        for (name, r) in &b.rules {
            let path = format!("definition.budget.rules.{name}");
            if !self.rules.iter().any(|x| &x.name == name) {
                let known: Vec<&str> = self.rules.iter().map(|x| x.name.as_str()).collect();
                errs.push(ConfigError::new(
                    path.clone(),
                    format!("no rule is named `{name}` (rules: {})", known.join(", ")),
                ));
            }
            for (key, v) in [("per_hour", r.per_hour), ("per_day", r.per_day)] {
                if v == Some(0) {
                    errs.push(ConfigError::new(
                        format!("{path}.{key}"),
                        "must be at least 1 (leave it out for no cap)",
                    ));
                }
            }
            if r.bypass && (r.per_hour.is_some() || r.per_day.is_some()) {
                errs.push(ConfigError::new(
                    path.clone(),
                    "a rule that bypasses the budget cannot have caps of its own",
                ));
            }
            match budget_rules.iter_mut().find(|x| x.0 == *name) {
                Some(_) if r.per_hour.is_some() || r.per_day.is_some() => errs.push(ConfigError::new(
                    path.clone(),
                    format!("rule `{name}` bypasses the budget (bypass_budget = true): it cannot have caps"),
                )),
                Some(_) => {}
                None => budget_rules.push((name.clone(), r.per_hour, r.per_day, r.bypass)),
            }
        }
        let clock = match b.clock.as_deref() {
            None => None,
            Some("wall") => Some(crate::budget::BudgetClock::Wall),
            Some("event") => Some(crate::budget::BudgetClock::Event),
            Some(other) => {
                errs.push(ConfigError::new("definition.budget.clock", format!("`{other}` is not `wall` or `event`")));
                None
            }
        };
        let budget = Budget { per_hour: b.per_hour, per_day: b.per_day, max_wait_seconds, rules: budget_rules, clock };

        if !errs.is_empty() {
            return Err(errs);
        }
        let mut def = CompiledDefinition {
            version: self.version.clone(),
            fingerprint: self.fingerprint(),
            bucket_seconds: bucket,
            cooldown_seconds,
            retention_seconds: retention.max(bucket),
            max_leads: self.max_leads,
            lead_traits: self.lead_traits.clone(),
            free_mail_domains: self.free_mail_domains.iter().map(|d| d.trim().to_lowercase()).collect(),
            senior_keywords: self.senior_keywords.iter().map(|k| k.trim().to_lowercase()).collect(),
            metrics,
            counters,
            windows,
            signals,
            derived,
            rules,
            bonus,
            tiers,
            budget,
            env,
            plans: Default::default(),
        };
        def.plans = crate::detect::Plans::new(&def);
        Ok(def)
    }
}

impl DefinitionConfig {
    /// A hash of the definition as written (16 hex digits).
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).expect("a definition serialises");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }
}

impl CompiledDefinition {
    /// The signal with this id.
    pub fn signal(&self, id: u64) -> Option<&Signal> {
        self.signals.iter().find(|s| s.id == id)
    }

    /// The name of the signal with this id (empty if it is not part of
    /// this definition).
    pub fn signal_name(&self, id: u64) -> &str {
        self.signal(id).map_or("", |s| s.name.as_str())
    }
}

/// What a counter means, as a number: the same event filter gives the same
/// id whatever its place in the file, the metric's name or the order of the
/// names in the filter. `None` is the counter of every track/page event.
pub fn counter_id(events: Option<&HashSet<String>>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    match events {
        None => h.update(b"counter:all"),
        Some(set) => {
            let mut names: Vec<&String> = set.iter().collect();
            names.sort_unstable();
            h.update(b"counter:events");
            for n in names {
                h.update(&[0]);
                h.update(n.as_bytes());
            }
        }
    }
    h.digest()
}

/// What a signal means, as a number: its name and patterns (track event
/// names in any order, the page-path expression, the trait and its values).
/// Changing any of them makes it a new signal, which starts counting anew.
pub fn signal_id(s: &SignalConfig) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(b"signal\0");
    h.update(s.name.as_bytes());
    let mut events: Vec<&String> = s.track_events.iter().collect();
    events.sort_unstable();
    events.dedup();
    h.update(b"\0track");
    for e in events {
        h.update(&[0]);
        h.update(e.as_bytes());
    }
    h.update(b"\0page\0");
    if let Some(p) = &s.page_path {
        h.update(p.as_bytes());
    }
    h.update(b"\0trait\0");
    if let Some(t) = &s.trait_change {
        h.update(t.name.as_bytes());
        let mut values: Vec<String> = t.becomes.iter().map(|v| v.to_lowercase()).collect();
        values.sort_unstable();
        values.dedup();
        for v in values {
            h.update(&[0]);
            h.update(v.as_bytes());
        }
    }
    h.digest()
}

#[derive(Clone, Copy, PartialEq)]
enum ExpectType {
    Bool,
    Number,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Compiles `src` and runs it against sample values (all zeros, all large)
/// so that unknown variables and type errors are configuration errors.
fn compile_expr(
    env: &Arc<Env>,
    src: &str,
    path: &str,
    known: &[String],
    errs: &mut Vec<ConfigError>,
    expect: ExpectType,
) -> Option<Program> {
    if src.len() > MAX_EXPR_BYTES {
        errs.push(ConfigError::new(
            path,
            format!("expression is {} bytes; the limit is {MAX_EXPR_BYTES} (split it into derived numbers)", src.len()),
        ));
        return None;
    }
    let program = match env.compile(src) {
        Ok(p) => p,
        Err(e) => {
            errs.push(ConfigError::new(path, format!("not a valid CEL expression: {e}")));
            return None;
        }
    };
    let refs = program.references();
    let mut unknown: Vec<&str> = refs
        .variables()
        .into_iter()
        .filter(|v| !known.iter().any(|k| k == v) && !BUILTIN_VARIABLES.contains(v))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        errs.push(ConfigError::new(
            path,
            format!(
                "unknown name(s) {}: define them under definition.metrics or definition.derived (known: {})",
                unknown.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", "),
                known
                    .iter()
                    .chain(BUILTIN_VARIABLES.iter().map(|s| s.to_string()).collect::<Vec<_>>().iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        return None;
    }
    for sample in [0.0, 1.0, 1000.0] {
        let mut ctx = Context::with_env(env.clone());
        for k in known {
            ctx.add_variable_from_value(k.as_str(), Value::Float(sample));
        }
        ctx.add_variable_from_value("account_age_days", Value::Float(sample));
        ctx.add_variable_from_value("account", Value::from(HashMap::<String, Value>::new()));
        match program.execute(&ctx) {
            Ok(Value::Bool(_)) if expect == ExpectType::Bool => {}
            Ok(Value::Float(_) | Value::Int(_) | Value::UInt(_)) if expect == ExpectType::Number => {}
            Ok(other) => {
                errs.push(ConfigError::new(
                    path,
                    format!(
                        "must give a {}, gives {:?} when every metric is {sample}",
                        if expect == ExpectType::Bool { "true/false" } else { "number" },
                        other
                    ),
                ));
                return None;
            }
            Err(e) => {
                errs.push(ConfigError::new(
                    path,
                    format!(
                        "fails when every metric is {sample}: {e} (metrics are doubles: write `2.0 * x`, not `2 * x`)"
                    ),
                ));
                return None;
            }
        }
    }
    Some(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's share of the budget: every cap divided, rounded up (a cap
    /// of 1 stays 1), the rest as it was.
    #[test]
    fn each_worker_counts_its_share_of_the_budget() {
        let b = Budget {
            per_hour: Some(10),
            per_day: Some(1),
            max_wait_seconds: 60,
            rules: vec![("r".into(), Some(7), None, false), ("hand".into(), None, None, true)],
            clock: None,
        };
        let s = b.share(3);
        assert_eq!((s.per_hour, s.per_day, s.max_wait_seconds), (Some(4), Some(1), 60));
        assert_eq!(s.rules, vec![("r".into(), Some(3), None, false), ("hand".into(), None, None, true)]);
        assert_eq!(b.share(1), b);
    }

    fn base() -> DefinitionConfig {
        crate::config::Config::default_config().definition
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_seconds("28d").unwrap(), 28 * 86400);
        assert_eq!(parse_duration_seconds("12h").unwrap(), 12 * 3600);
        assert!(parse_duration_seconds("soon").is_err());
        // Found by fuzzing: these overflowed window arithmetic.
        assert!(parse_duration_seconds("9223372036854775807s").is_err());
        assert!(parse_duration_seconds("5000000000000000000s").is_err());
    }

    #[test]
    fn fuzz_findings_are_errors_not_crashes() {
        let mut d = base();
        d.metrics[0].window = "9223372036854775807s".into();
        d.cooldown = "9223372036854775807s".into();
        // Long chains overflowed the cel crate's recursive parser and
        // evaluator, or panicked while formatting a syntax error.
        d.rules[0].when = format!("{}>0.0", vec!["1.0"; 5000].join("+"));
        d.rules[1].when = format!("has(account{})", ".b".repeat(16_000));
        d.rules[2].when = format!("true &&{})", " ".repeat(65_530));
        let errs = d.compile().unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "definition.cooldown",
            "definition.metrics[0].window",
            "definition.rules[0].when",
            "definition.rules[1].when",
            "definition.rules[2].when",
        ] {
            assert!(paths.contains(&p), "{p} missing in {errs:?}");
        }
    }

    #[test]
    fn default_definition_has_the_product_numbers() {
        let def = base().compile().unwrap();
        let names: Vec<_> = def.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["team_adoption", "enterprise_evaluation", "usage_spike", "hand_raiser"]);
        assert_eq!(def.cooldown_seconds, 30 * 86400);
        assert_eq!(def.bucket_seconds, 3600);
        assert!(def.retention_seconds >= 35 * 86400);
    }

    #[test]
    fn unknown_variable_and_type_errors_are_reported() {
        let mut d = base();
        d.rules[0].when = "active_users_27d >= 7".into();
        d.rules[1].when = "events_7d * 2 > 3".into();
        d.rules[2].when = "events_7d".into();
        let errs = d.compile().unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].message.contains("active_users_27d"));
        assert_eq!(errs[1].path, "definition.rules[1].when");
        assert!(errs[2].message.contains("true/false"));
    }

    #[test]
    fn duplicate_names_and_bad_windows() {
        let mut d = base();
        d.metrics[1].name = d.metrics[0].name.clone();
        d.metrics[2].window = "forever".into();
        let errs = d.compile().unwrap_err();
        assert!(errs.iter().any(|e| e.message.contains("already defined")), "{errs:?}");
        assert!(errs.iter().any(|e| e.path.ends_with(".window")), "{errs:?}");
    }

    #[test]
    fn distinct_metrics_refuse_offsets() {
        let mut d = base();
        let i = d.metrics.iter().position(|m| m.kind == MetricKind::ActiveUsers).unwrap();
        d.metrics[i].offset = Some("7d".into());
        let errs = d.compile().unwrap_err();
        assert!(errs.iter().any(|e| e.path == format!("definition.metrics[{i}].offset")), "{errs:?}");
    }
}
