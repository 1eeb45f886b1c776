//! Emit: decide whether an evaluation is announced (cooldown, tier rise,
//! disqualification) and build the CloudEvents 1.0 envelope.
//!
//! Announcement rules, all in event time:
//! - `pqa.account.qualified` when a firing rule was not announced for this
//!   account within the cooldown; it lists every rule that fires.
//! - `pqa.account.tier_changed` when no rule is new but the tier rose above
//!   the tier announced within the cooldown.
//! - `pqa.account.disqualified` when no rule fires any more after a
//!   qualification was announced (once per announcement).
//!
//! Ids are deterministic: a hash of the account, the kind, the rules and the
//! account's event sequence number, so the same input gives the same ids and
//! a repeat after a crash carries the id of its first copy.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::CompiledDefinition;
use crate::detect::Evaluation;
use crate::state::account::{Announced, SignalHit};

pub const TYPE_QUALIFIED: &str = "pqa.account.qualified";
pub const TYPE_TIER_CHANGED: &str = "pqa.account.tier_changed";
pub const TYPE_DISQUALIFIED: &str = "pqa.account.disqualified";
pub const SOURCE: &str = "pqa-engine";

/// What kind of announcement an evaluation leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    Qualified,
    TierChanged,
    Disqualified,
}

impl Announcement {
    /// `qualified`, `tier_changed` or `disqualified` (metric labels).
    pub fn short_name(self) -> &'static str {
        match self {
            Announcement::Qualified => "qualified",
            Announcement::TierChanged => "tier_changed",
            Announcement::Disqualified => "disqualified",
        }
    }

    pub fn event_type(self) -> &'static str {
        match self {
            Announcement::Qualified => TYPE_QUALIFIED,
            Announcement::TierChanged => TYPE_TIER_CHANGED,
            Announcement::Disqualified => TYPE_DISQUALIFIED,
        }
    }
}

/// Decides what (if anything) to announce, and updates the bookkeeping.
/// Returns the announcement and the previously announced tier.
pub fn decide(
    def: &CompiledDefinition,
    announced: &mut Announced,
    eval: &Evaluation,
    now_ms: i64,
) -> Option<(Announcement, Option<String>)> {
    let cooldown = def.cooldown_seconds * 1000;
    let within = |t: i64| now_ms < t.saturating_add(cooldown);
    if eval.fired.is_empty() {
        if announced.active {
            announced.active = false;
            let prev = announced.tier.as_ref().map(|t| t.0.clone());
            return Some((Announcement::Disqualified, prev));
        }
        return None;
    }
    let is_new = |name: &str| !announced.rules.iter().any(|(r, t)| r == name && within(*t));
    let any_new = eval.fired.iter().any(|&i| is_new(&def.rules[i].name));
    let tier_name = &def.tiers[eval.tier].0;
    // Tiers are sorted highest first: a smaller index is a higher tier.
    let tier_rank = |name: &str| def.tiers.iter().position(|t| t.0 == name).unwrap_or(usize::MAX);
    let prev_tier = announced.tier.as_ref().filter(|t| within(t.1)).map(|t| t.0.as_str());
    let tier_rose = prev_tier.is_some_and(|p| eval.tier < tier_rank(p));
    let kind = if any_new {
        Announcement::Qualified
    } else if tier_rose {
        Announcement::TierChanged
    } else {
        return None;
    };
    // (Copied only for an announcement: most evaluations make none.)
    let prev_tier = prev_tier.map(str::to_string);
    for &i in &eval.fired {
        let name = &def.rules[i].name;
        match announced.rules.iter_mut().find(|(r, _)| r == name) {
            Some(e) => e.1 = now_ms,
            None => announced.rules.push((name.clone(), now_ms)),
        }
    }
    announced.tier = Some((tier_name.clone(), now_ms));
    announced.active = true;
    Some((kind, prev_tier))
}

/// A lead: a person inside the account sales can talk to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lead {
    pub user_id: String,
    pub why: Vec<String>,
    pub events_28d: u64,
    pub traits: Map<String, Value>,
}

/// Input for building one output event.
pub struct EventInput<'a> {
    pub def: &'a CompiledDefinition,
    pub kind: Announcement,
    pub previous_tier: Option<String>,
    pub account_id: &'a str,
    pub seq: u64,
    pub time_ms: i64,
    pub eval: &'a Evaluation,
    pub signals: Vec<&'a SignalHit>,
    pub leads: Vec<Lead>,
    pub account_traits: Map<String, Value>,
    pub first_seen_ms: i64,
    /// Metrics of the definition whose window reaches back before what the
    /// state holds (new to the state, or longer than the history kept).
    pub warming_up: Vec<String>,
    /// Event time the account qualified (`data.qualified_at`; none for a
    /// disqualification). The same as `time_ms` unless the announcement
    /// replaces one that waited for budget.
    pub qualified_at_ms: Option<i64>,
}

/// One output record: key = account id, value = the CloudEvent JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputEvent {
    pub id: String,
    pub key: String,
    pub event_type: &'static str,
    pub payload: Vec<u8>,
    /// Rule names listed in the event (for metrics).
    pub rules: Vec<String>,
    pub tier: String,
    /// Which definition made it: 0 is the live one, then the shadows in
    /// order (see [`crate::definitions::Definitions::get`]).
    pub definition: usize,
    /// When `run`'s consumer loop received the message that led to it
    /// (for the engine's share of the latency).
    pub consumed_at: Option<std::time::Instant>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    source: &'static str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    account_id: &'a str,
    definition_version: &'a str,
    rules: &'a [String],
    score: u32,
    tier: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qualified_at: Option<String>,
    metrics: Map<String, Value>,
    warming_up: &'a [String],
    signals: Vec<SignalOut<'a>>,
    leads: &'a [Lead],
    account: Map<String, Value>,
}

#[derive(Serialize)]
struct SignalOut<'a> {
    name: &'a str,
    user_id: &'a str,
    at: String,
}

/// Deterministic event id (32 hex digits).
pub fn event_id(account_id: &str, kind: Announcement, rules: &[String], seq: u64) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(account_id.as_bytes());
    h.update(&[0]);
    h.update(kind.event_type().as_bytes());
    for r in rules {
        h.update(&[0]);
        h.update(r.as_bytes());
    }
    h.update(&seq.to_be_bytes());
    format!("{:032x}", h.digest128())
}

/// Builds the CloudEvent for an announcement.
pub fn build(input: EventInput<'_>) -> OutputEvent {
    let def = input.def;
    let rules: Vec<String> = input.eval.fired.iter().map(|&i| def.rules[i].name.clone()).collect();
    let id = event_id(input.account_id, input.kind, &rules, input.seq);
    let tier = if input.kind == Announcement::Disqualified { "none" } else { def.tiers[input.eval.tier].0.as_str() };
    let mut metrics = Map::new();
    for (k, v) in &input.eval.values {
        metrics.insert(k.clone(), number(*v));
    }
    metrics.insert("account_age_days".into(), number((input.eval.account_age_days * 10.0).floor() / 10.0));
    let mut account = input.account_traits;
    account.insert("first_seen".into(), Value::String(format_time_ms(input.first_seen_ms)));
    let event = CloudEvent {
        specversion: "1.0",
        id: &id,
        event_type: input.kind.event_type(),
        source: SOURCE,
        subject: input.account_id,
        time: format_time_ms(input.time_ms),
        datacontenttype: "application/json",
        data: Data {
            account_id: input.account_id,
            definition_version: &def.version,
            rules: &rules,
            score: input.eval.score,
            tier,
            previous_tier: input.previous_tier.as_deref(),
            qualified_at: input.qualified_at_ms.map(format_time_ms),
            metrics,
            warming_up: &input.warming_up,
            signals: input
                .signals
                .iter()
                .map(|h| SignalOut { name: def.signal_name(h.signal), user_id: &h.user, at: format_time_ms(h.at_ms) })
                .collect(),
            leads: &input.leads,
            account,
        },
    };
    let payload = serde_json::to_vec(&event).expect("CloudEvent serialises");
    OutputEvent {
        id,
        key: input.account_id.to_string(),
        event_type: input.kind.event_type(),
        payload,
        rules,
        tier: tier.to_string(),
        definition: 0,
        consumed_at: None,
    }
}

/// The payload of an announcement released later (it waited for budget),
/// with the CloudEvent `time` of its release. The envelope's `time` is the
/// first `"time":"` in the payload (it precedes `data`, and a quote inside
/// a JSON string is escaped).
pub fn retime(payload: &[u8], time_ms: i64) -> Vec<u8> {
    const FIELD: &[u8] = b"\"time\":\"";
    let Some(start) = payload.windows(FIELD.len()).position(|w| w == FIELD).map(|p| p + FIELD.len()) else {
        return payload.to_vec();
    };
    let Some(len) = payload[start..].iter().position(|&b| b == b'"') else { return payload.to_vec() };
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&payload[..start]);
    out.extend_from_slice(format_time_ms(time_ms).as_bytes());
    out.extend_from_slice(&payload[start + len..]);
    out
}

/// Integers as JSON integers, other numbers rounded to 2 decimals.
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64((v * 100.0).round() / 100.0).map(Value::Number).unwrap_or(Value::Null)
    }
}

/// RFC 3339 UTC with milliseconds when they are not zero.
pub fn format_time_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if ms % 1000 == 0 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const D: i64 = 86_400_000;

    fn eval(def: &CompiledDefinition, fired: &[&str], tier: &str) -> Evaluation {
        Evaluation {
            values: vec![],
            outcomes: vec![],
            fired: fired.iter().map(|f| def.rules.iter().position(|r| r.name == *f).unwrap()).collect(),
            score: 50,
            tier: def.tiers.iter().position(|t| t.0 == tier).unwrap(),
            account_age_days: 0.0,
        }
    }

    #[test]
    fn cooldown_per_rule_and_tier_rise() {
        let def = Config::default_config().validate().unwrap();
        let mut a = Announced::default();
        let k = |r: Option<(Announcement, Option<String>)>| r.map(|x| x.0);
        assert_eq!(k(decide(&def, &mut a, &eval(&def, &["team_adoption"], "warm"), 0)), Some(Announcement::Qualified));
        // Same rule, same tier, inside the cooldown: silent.
        assert_eq!(k(decide(&def, &mut a, &eval(&def, &["team_adoption"], "warm"), D)), None);
        // A new rule: announced, listing both.
        assert_eq!(
            k(decide(&def, &mut a, &eval(&def, &["team_adoption", "hand_raiser"], "warm"), 2 * D)),
            Some(Announcement::Qualified)
        );
        // Tier rises: announced as a tier change.
        let r = decide(&def, &mut a, &eval(&def, &["team_adoption", "hand_raiser"], "hot"), 3 * D).unwrap();
        assert_eq!(r, (Announcement::TierChanged, Some("warm".into())));
        // Tier falls back: silent.
        assert_eq!(k(decide(&def, &mut a, &eval(&def, &["team_adoption"], "warm"), 4 * D)), None);
        // Nothing fires: disqualified, once.
        assert_eq!(k(decide(&def, &mut a, &eval(&def, &[], "warm"), 5 * D)), Some(Announcement::Disqualified));
        assert_eq!(k(decide(&def, &mut a, &eval(&def, &[], "warm"), 6 * D)), None);
        // Fires again inside the cooldown of its last announcement: silent.
        assert_eq!(k(decide(&def, &mut a, &eval(&def, &["team_adoption"], "warm"), 20 * D)), None);
        // After the cooldown (30 days after day 4's refresh): announced again.
        assert_eq!(
            k(decide(&def, &mut a, &eval(&def, &["team_adoption"], "warm"), 35 * D)),
            Some(Announcement::Qualified)
        );
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let r = vec!["team_adoption".to_string()];
        assert_eq!(event_id("a", Announcement::Qualified, &r, 7), event_id("a", Announcement::Qualified, &r, 7));
        assert_ne!(event_id("a", Announcement::Qualified, &r, 7), event_id("a", Announcement::Qualified, &r, 8));
        assert_ne!(event_id("a", Announcement::Qualified, &r, 7), event_id("b", Announcement::Qualified, &r, 7));
        assert_eq!(event_id("a", Announcement::Qualified, &r, 7).len(), 32);
    }

    #[test]
    fn retime_replaces_the_envelope_time_only() {
        let p = br#"{"specversion":"1.0","id":"x","subject":"a\"time\":\"b","time":"2026-01-01T00:00:00Z","data":{"qualified_at":"2026-01-01T00:00:00Z","time":"k"}}"#;
        let out = retime(p, 1_785_664_800_000);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-08-02T10:00:00Z");
        assert_eq!(v["subject"], "a\"time\":\"b");
        assert_eq!(v["data"]["qualified_at"], "2026-01-01T00:00:00Z");
        assert_eq!(v["data"]["time"], "k");
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time_ms(1_785_664_800_000), "2026-08-02T10:00:00Z");
        assert_eq!(format_time_ms(1_785_664_800_123), "2026-08-02T10:00:00.123Z");
    }
}
