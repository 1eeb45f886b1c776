//! Outcomes: what sales made of the accounts the engine announced. A CRM
//! sync or a sales rep's button writes one record per outcome, on the
//! outcomes topic or in an NDJSON file for the offline commands:
//!
//! ```json
//! {"account_id":"acct-42","outcome":"opportunity","at":"2026-11-20T15:04:00Z",
//!  "pqa_event_id":"43d35f6cf5cf1dbf4dc31f5f8f96de01","rule":"hand_raiser","amount":24000}
//! ```
//!
//! - `account_id` (string or integer) and `outcome` (`accepted`,
//!   `rejected`, `opportunity`, `won`, `lost`; case-insensitive) and `at`
//!   (RFC 3339, or an epoch number: seconds below 1e11, milliseconds above,
//!   as for events) are required;
//! - `pqa_event_id` (the `id` of the announcement it answers), `rule` (the
//!   rule it is about) and `amount` (a number, the deal's value) are
//!   optional; `null` is the same as absent. Other fields are ignored.
//!
//! This module parses records ([`parse_outcome`]: a bad record is a value
//! with a stable [`OutcomeError::reason`], for the dead-letter topic),
//! reads outcome files ([`read_outcomes`]: bad lines are reported with their
//! line numbers, never dropped silently), joins an outcome to the
//! announcement it answers ([`attribute`]) and counts, per rule, what the
//! announcements heard back ([`tally_account`], [`RuleTally`]). The join and
//! the counts are pure functions over one account's announcements and
//! outcomes, shared by `backtest --outcomes` and the live engine.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead};
use std::path::Path;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// What sales reported about an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    /// Sales took the account on (worth a conversation).
    Accepted,
    /// Sales turned it down (not a fit, bad timing, spam).
    Rejected,
    /// A sales opportunity was opened.
    Opportunity,
    /// The deal was won.
    Won,
    /// The deal was lost.
    Lost,
}

impl OutcomeKind {
    /// Every kind, in the order of a deal's life.
    pub const ALL: [OutcomeKind; 5] =
        [OutcomeKind::Accepted, OutcomeKind::Rejected, OutcomeKind::Opportunity, OutcomeKind::Won, OutcomeKind::Lost];

    /// The wire name (`accepted`, ...): also a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Accepted => "accepted",
            OutcomeKind::Rejected => "rejected",
            OutcomeKind::Opportunity => "opportunity",
            OutcomeKind::Won => "won",
            OutcomeKind::Lost => "lost",
        }
    }

    /// The kind named `s` (ASCII case-insensitive, surrounding blanks
    /// ignored).
    pub fn parse(s: &str) -> Option<OutcomeKind> {
        let s = s.trim();
        OutcomeKind::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(s))
    }

    /// An opportunity or a win: what a PQA is for. Precision counts these.
    pub fn is_positive(self) -> bool {
        matches!(self, OutcomeKind::Opportunity | OutcomeKind::Won)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OutcomeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        OutcomeKind::parse(s)
            .ok_or_else(|| format!("`{s}` is not an outcome (one of accepted, rejected, opportunity, won, lost)"))
    }
}

/// Parses a comma-separated list of outcome kinds (`won,opportunity`).
pub fn parse_kinds(s: &str) -> Result<Vec<OutcomeKind>, String> {
    let mut kinds = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let k: OutcomeKind = part.parse()?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    if kinds.is_empty() {
        return Err("name at least one outcome (accepted, rejected, opportunity, won, lost)".into());
    }
    Ok(kinds)
}

/// One outcome record.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub account_id: String,
    pub outcome: OutcomeKind,
    /// When it happened (the CRM's time), milliseconds since the epoch.
    pub at_ms: i64,
    /// The announcement (`id` of the CloudEvent) it answers, when the CRM
    /// kept it.
    pub pqa_event_id: Option<String>,
    /// The rule it is about, when the CRM kept it.
    pub rule: Option<String>,
    /// The deal's value.
    pub amount: Option<f64>,
}

impl Outcome {
    /// The record in the wire format, one line of JSON (`at` in RFC 3339
    /// UTC); [`parse_outcome`] reads it back to the same value.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("account_id".into(), Value::String(self.account_id.clone()));
        m.insert("outcome".into(), Value::String(self.outcome.as_str().into()));
        m.insert("at".into(), Value::String(crate::emit::format_time_ms(self.at_ms)));
        if let Some(id) = &self.pqa_event_id {
            m.insert("pqa_event_id".into(), Value::String(id.clone()));
        }
        if let Some(r) = &self.rule {
            m.insert("rule".into(), Value::String(r.clone()));
        }
        if let Some(a) = self.amount.and_then(serde_json::Number::from_f64) {
            m.insert("amount".into(), Value::Number(a));
        }
        Value::Object(m).to_string()
    }
}

/// Largest outcome record accepted (bytes): an outcome is a few hundred
/// bytes; anything this large is not one.
pub const MAX_OUTCOME_BYTES: usize = 64 * 1024;
/// Longest account id, event id or rule name (bytes), as for events.
pub const MAX_FIELD_BYTES: usize = crate::state::keys::MAX_ID_BYTES;
/// Earliest plausible time (2000-01-01), as for events.
const MIN_TIME_MS: i64 = 946_684_800_000;
/// Latest plausible time (9999-12-31).
const MAX_TIME_MS: i64 = 253_402_300_799_000;

/// Why an outcome record was refused. [`OutcomeError::reason`] is a closed
/// set of labels, safe as a metric label and a dead-letter header.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutcomeError {
    #[error("empty record")]
    Empty,
    #[error("{bytes} bytes, limit is {MAX_OUTCOME_BYTES}")]
    TooLarge { bytes: usize },
    #[error("not UTF-8: {0}")]
    InvalidUtf8(String),
    #[error("not JSON: {0}")]
    InvalidJson(String),
    #[error("the top level is {0}, not an object")]
    NotAnObject(&'static str),
    #[error("the key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("no `account_id` (or an empty one)")]
    MissingAccountId,
    #[error("no `outcome`")]
    MissingOutcome,
    #[error("`{0}` is not an outcome (one of accepted, rejected, opportunity, won, lost)")]
    UnknownOutcome(String),
    #[error("no `at` (when it happened)")]
    MissingTimestamp,
    #[error("`at`: {0}")]
    BadTimestamp(String),
    #[error("`{field}` must be {expected}, is {found}")]
    WrongFieldType { field: &'static str, expected: &'static str, found: &'static str },
    #[error("`{field}` is {bytes} bytes, limit is {MAX_FIELD_BYTES}")]
    FieldTooLong { field: &'static str, bytes: usize },
    #[error("`amount`: {0}")]
    BadAmount(String),
    #[error("`at` {at} is more than {max_future_seconds} s ahead of the clock")]
    FutureTimestamp { at: String, max_future_seconds: u64 },
}

impl OutcomeError {
    /// Every reason label, for pre-registering metric labels.
    pub const REASONS: [&'static str; 15] = [
        "empty",
        "too_large",
        "invalid_utf8",
        "invalid_json",
        "not_an_object",
        "duplicate_key",
        "missing_account_id",
        "missing_outcome",
        "unknown_outcome",
        "missing_timestamp",
        "bad_timestamp",
        "wrong_field_type",
        "field_too_long",
        "bad_amount",
        "future_timestamp",
    ];

    /// A stable snake_case label: the dead-letter reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            OutcomeError::Empty => "empty",
            OutcomeError::TooLarge { .. } => "too_large",
            OutcomeError::InvalidUtf8(_) => "invalid_utf8",
            OutcomeError::InvalidJson(_) => "invalid_json",
            OutcomeError::NotAnObject(_) => "not_an_object",
            OutcomeError::DuplicateKey(_) => "duplicate_key",
            OutcomeError::MissingAccountId => "missing_account_id",
            OutcomeError::MissingOutcome => "missing_outcome",
            OutcomeError::UnknownOutcome(_) => "unknown_outcome",
            OutcomeError::MissingTimestamp => "missing_timestamp",
            OutcomeError::BadTimestamp(_) => "bad_timestamp",
            OutcomeError::WrongFieldType { .. } => "wrong_field_type",
            OutcomeError::FieldTooLong { .. } => "field_too_long",
            OutcomeError::BadAmount(_) => "bad_amount",
            OutcomeError::FutureTimestamp { .. } => "future_timestamp",
        }
    }
}

/// A JSON object whose keys must be unique (a record with a key twice is
/// ambiguous: which value would a consumer see?).
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<UniqueObject, A::Error> {
                let mut m = Map::new();
                while let Some((k, v)) = a.next_entry::<String, Value>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!("{DUPLICATE}{k}")));
                    }
                    m.insert(k, v);
                }
                Ok(UniqueObject(m))
            }
        }
        d.deserialize_map(V)
    }
}

const DUPLICATE: &str = "\u{0}duplicate key: ";

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads one outcome record. Checks, in this order (the first problem is
/// the one reported): size, UTF-8, JSON (keys unique), an object,
/// `account_id`, `outcome`, `at`, then the optional fields.
///
/// ```
/// use pqa_engine::outcome::{parse_outcome, OutcomeKind};
///
/// let o = parse_outcome(br#"{"account_id":"acct-42","outcome":"Won","at":"2026-11-20T15:04:00Z","amount":24000}"#).unwrap();
/// assert_eq!((o.account_id.as_str(), o.outcome), ("acct-42", OutcomeKind::Won));
/// assert_eq!(o.at_ms, 1_795_187_040_000);
/// let bad = parse_outcome(br#"{"account_id":"acct-42","outcome":"maybe","at":"2026-11-20T15:04:00Z"}"#).unwrap_err();
/// assert_eq!(bad.reason(), "unknown_outcome");
/// ```
pub fn parse_outcome(bytes: &[u8]) -> Result<Outcome, OutcomeError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OutcomeError::Empty);
    }
    if bytes.len() > MAX_OUTCOME_BYTES {
        return Err(OutcomeError::TooLarge { bytes: bytes.len() });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| OutcomeError::InvalidUtf8(e.to_string()))?;
    let top: Value = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(e) => return Err(OutcomeError::InvalidJson(e.to_string())),
    };
    if !top.is_object() {
        return Err(OutcomeError::NotAnObject(type_name(&top)));
    }
    let mut obj = match serde_json::from_str::<UniqueObject>(text) {
        Ok(o) => o.0,
        Err(e) => {
            let msg = e.to_string();
            return Err(match msg.strip_prefix(DUPLICATE) {
                Some(rest) => OutcomeError::DuplicateKey(rest.split(" at line ").next().unwrap_or(rest).to_string()),
                None => OutcomeError::InvalidJson(msg),
            });
        }
    };
    let account_id = match obj.remove("account_id") {
        None | Some(Value::Null) => return Err(OutcomeError::MissingAccountId),
        Some(Value::String(s)) if s.trim().is_empty() => return Err(OutcomeError::MissingAccountId),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => {
            return Err(OutcomeError::WrongFieldType {
                field: "account_id",
                expected: "a string or an integer",
                found: type_name(&other),
            })
        }
    };
    check_len("account_id", &account_id)?;
    let outcome = match obj.remove("outcome") {
        None | Some(Value::Null) => return Err(OutcomeError::MissingOutcome),
        Some(Value::String(s)) => {
            OutcomeKind::parse(&s).ok_or_else(|| OutcomeError::UnknownOutcome(truncate(&s, 64)))?
        }
        Some(other) => {
            return Err(OutcomeError::WrongFieldType {
                field: "outcome",
                expected: "a string",
                found: type_name(&other),
            })
        }
    };
    let at_ms = match obj.remove("at") {
        None | Some(Value::Null) => return Err(OutcomeError::MissingTimestamp),
        Some(v) => parse_at(&v)?,
    };
    let pqa_event_id = optional_string(&mut obj, "pqa_event_id")?;
    let rule = optional_string(&mut obj, "rule")?;
    let amount = match obj.remove("amount") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Some(x),
            _ => return Err(OutcomeError::BadAmount(format!("{n} is not a finite number of at least 0"))),
        },
        Some(other) => {
            return Err(OutcomeError::WrongFieldType {
                field: "amount",
                expected: "a number",
                found: type_name(&other),
            })
        }
    };
    Ok(Outcome { account_id, outcome, at_ms, pqa_event_id, rule, amount })
}

/// Refuses an outcome dated more than `max_future_seconds` after `now_ms`
/// (a broken clock would otherwise decide attribution), as events are.
pub fn check_not_future(o: &Outcome, now_ms: i64, max_future_seconds: u64) -> Result<(), OutcomeError> {
    let limit = now_ms.saturating_add((max_future_seconds.min(i64::MAX as u64 / 1000) as i64) * 1000);
    if o.at_ms > limit {
        return Err(OutcomeError::FutureTimestamp { at: crate::emit::format_time_ms(o.at_ms), max_future_seconds });
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn check_len(field: &'static str, s: &str) -> Result<(), OutcomeError> {
    if s.len() > MAX_FIELD_BYTES {
        return Err(OutcomeError::FieldTooLong { field, bytes: s.len() });
    }
    Ok(())
}

fn optional_string(obj: &mut Map<String, Value>, field: &'static str) -> Result<Option<String>, OutcomeError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => {
            check_len(field, &s)?;
            Ok(Some(s))
        }
        Some(other) => Err(OutcomeError::WrongFieldType { field, expected: "a string", found: type_name(&other) }),
    }
}

fn parse_at(v: &Value) -> Result<i64, OutcomeError> {
    let ms = match v {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s.trim())
            .map(|d| d.timestamp_millis())
            .map_err(|e| OutcomeError::BadTimestamp(format!("`{}` is not an RFC 3339 time: {e}", truncate(s, 64))))?,
        Value::Number(n) => {
            let x = n
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0 && *x < 1e15)
                .ok_or_else(|| OutcomeError::BadTimestamp(format!("{n} is not an epoch time")))?;
            if x < 1e11 {
                (x * 1000.0) as i64
            } else {
                x as i64
            }
        }
        other => {
            return Err(OutcomeError::WrongFieldType {
                field: "at",
                expected: "an RFC 3339 string or an epoch number",
                found: type_name(other),
            })
        }
    };
    if !(MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
        return Err(OutcomeError::BadTimestamp(format!(
            "{} is before the year 2000 or after 9999",
            crate::emit::format_time_ms(ms)
        )));
    }
    Ok(ms)
}

// ---------------------------------------------------------------------------
// Files

/// A line of an outcomes file that was not an outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    /// 1-based.
    pub line: u64,
    pub reason: &'static str,
    pub detail: String,
}

/// What an outcomes file held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomeFile {
    /// The good records, in file order.
    pub outcomes: Vec<Outcome>,
    /// Every bad line, with its number.
    pub bad: Vec<BadLine>,
    /// Non-blank lines read.
    pub lines: u64,
}

impl OutcomeFile {
    /// The bad lines for people: a count, then up to `max` of them with
    /// their line numbers. Empty when every line was good.
    pub fn describe_bad(&self, name: &str, max: usize) -> String {
        if self.bad.is_empty() {
            return String::new();
        }
        let mut s = format!("{name}: {} of {} lines are not outcomes and were left out:", self.bad.len(), self.lines);
        for b in self.bad.iter().take(max) {
            s.push_str(&format!("\n  line {}: {} ({})", b.line, b.reason, b.detail));
        }
        if self.bad.len() > max {
            s.push_str(&format!("\n  ... and {} more", self.bad.len() - max));
        }
        s
    }
}

/// Reads an NDJSON outcomes file: plain or gzip, `-` for standard input
/// (like history input). Blank lines are skipped; every other bad line is
/// kept in [`OutcomeFile::bad`] with its number.
pub fn read_outcomes(path: &Path) -> io::Result<OutcomeFile> {
    read_outcomes_from(crate::replay::open_input(path)?)
}

/// [`read_outcomes`] from any reader.
pub fn read_outcomes_from(mut r: impl BufRead) -> io::Result<OutcomeFile> {
    let mut file = OutcomeFile::default();
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        file.lines += 1;
        match parse_outcome(&line) {
            Ok(o) => file.outcomes.push(o),
            Err(e) => file.bad.push(BadLine { line: n, reason: e.reason(), detail: e.to_string() }),
        }
    }
    Ok(file)
}

// ---------------------------------------------------------------------------
// The join

/// How long after an announcement an outcome without a `pqa_event_id` is
/// still taken as its answer, by default: 90 days.
pub const DEFAULT_ATTRIBUTION_WINDOW_MS: i64 = 90 * 86_400_000;

/// An announcement the engine made (a `pqa.account.qualified` event) of one
/// account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The CloudEvent `id`.
    pub event_id: String,
    /// The rules it listed.
    pub rules: Vec<String>,
    /// Its event time.
    pub at_ms: i64,
}

/// How an outcome found its announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributedBy {
    /// Its `pqa_event_id` is the announcement's id.
    EventId,
    /// The latest announcement at or before it within the window.
    Time,
}

/// The announcement of `announcements` (one account's, any order) that
/// `outcome` answers, and how it was found:
///
/// 1. the one whose id is the outcome's `pqa_event_id`, wherever it is in
///    time;
/// 2. otherwise (no id, or an id this list does not hold, e.g. another
///    definition's) the latest announcement at or before `at` and at most
///    `window_ms` before it; among those, when the outcome names a `rule`,
///    the latest that lists that rule if any does. Ties in time go to the
///    later one in the list.
///
/// `None` when no announcement qualifies: sales heard of the account some
/// other way, or the definition did not see it coming.
pub fn attribute(announcements: &[Announcement], outcome: &Outcome, window_ms: i64) -> Option<(usize, AttributedBy)> {
    if let Some(id) = &outcome.pqa_event_id {
        if let Some(i) = announcements.iter().position(|a| &a.event_id == id) {
            return Some((i, AttributedBy::EventId));
        }
    }
    let lo = outcome.at_ms.saturating_sub(window_ms.max(0));
    let in_window = |a: &Announcement| a.at_ms <= outcome.at_ms && a.at_ms >= lo;
    let latest = |filter: &dyn Fn(&Announcement) -> bool| -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, a) in announcements.iter().enumerate() {
            if in_window(a) && filter(a) && best.is_none_or(|b| a.at_ms >= announcements[b].at_ms) {
                best = Some(i);
            }
        }
        best
    };
    let by_rule = outcome.rule.as_ref().and_then(|r| latest(&|a: &Announcement| a.rules.contains(r)));
    by_rule.or_else(|| latest(&|_: &Announcement| true)).map(|i| (i, AttributedBy::Time))
}

/// A set of outcome kinds, one bit each (small enough to keep per
/// announcement in state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KindSet(pub u8);

impl KindSet {
    pub fn insert(&mut self, k: OutcomeKind) {
        self.0 |= k.bit();
    }
    pub fn contains(self, k: OutcomeKind) -> bool {
        self.0 & k.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Holds an opportunity or a win.
    pub fn any_positive(self) -> bool {
        self.contains(OutcomeKind::Opportunity) || self.contains(OutcomeKind::Won)
    }
}

/// What the announcements of one rule (or of all rules) heard back.
///
/// The unit is the announcement: an account announced twice (after the
/// cooldown) counts twice in `announced`, and each outcome counts for the
/// one announcement it answers ([`attribute`]). An outcome that names a
/// `rule` the announcement listed counts for that rule only; otherwise for
/// every rule the announcement listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleTally {
    /// Announcements listing the rule.
    pub announced: u64,
    /// Of those, announcements with at least one outcome.
    pub answered: u64,
    /// Announcements with at least one outcome of each kind.
    pub accepted: u64,
    pub rejected: u64,
    pub opportunity: u64,
    pub won: u64,
    pub lost: u64,
    /// Announcements with an opportunity or a win.
    pub positive: u64,
    /// One per account whose announcements of the rule led to an
    /// opportunity or a win: days from its first announcement of the rule
    /// (within the attribution window before that outcome) to the first
    /// such outcome.
    pub lead_times_days: Vec<f64>,
}

impl RuleTally {
    /// Opportunities or wins over the announcements with an outcome;
    /// `None` when no announcement has one yet.
    pub fn precision(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.positive as f64 / self.answered as f64)
    }

    /// Adds another tally (another account's) into this one.
    pub fn add(&mut self, o: &RuleTally) {
        self.announced += o.announced;
        self.answered += o.answered;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.opportunity += o.opportunity;
        self.won += o.won;
        self.lost += o.lost;
        self.positive += o.positive;
        self.lead_times_days.extend_from_slice(&o.lead_times_days);
    }

    /// Takes out a tally added before (an account counted again, or gone):
    /// its counts, and one of each of its lead times.
    pub fn sub(&mut self, o: &RuleTally) {
        self.announced -= o.announced;
        self.answered -= o.answered;
        self.accepted -= o.accepted;
        self.rejected -= o.rejected;
        self.opportunity -= o.opportunity;
        self.won -= o.won;
        self.lost -= o.lost;
        self.positive -= o.positive;
        for d in &o.lead_times_days {
            if let Some(i) = self.lead_times_days.iter().rposition(|x| x.to_bits() == d.to_bits()) {
                self.lead_times_days.swap_remove(i);
            }
        }
    }

    /// Median lead time in days.
    pub fn median_lead_days(&self) -> Option<f64> {
        quantile(&self.lead_times_days, 0.5)
    }

    /// 90th percentile lead time in days.
    pub fn p90_lead_days(&self) -> Option<f64> {
        quantile(&self.lead_times_days, 0.9)
    }

    fn count(&mut self, kinds: KindSet) {
        self.announced += 1;
        if kinds.is_empty() {
            return;
        }
        self.answered += 1;
        self.accepted += kinds.contains(OutcomeKind::Accepted) as u64;
        self.rejected += kinds.contains(OutcomeKind::Rejected) as u64;
        self.opportunity += kinds.contains(OutcomeKind::Opportunity) as u64;
        self.won += kinds.contains(OutcomeKind::Won) as u64;
        self.lost += kinds.contains(OutcomeKind::Lost) as u64;
        self.positive += kinds.any_positive() as u64;
    }
}

/// The `q` quantile (0..=1) of `values` with linear interpolation between
/// closest ranks (numpy's default); `None` for no values.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// One account's contribution to the per-rule counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountTally {
    /// Per rule.
    pub by_rule: BTreeMap<String, RuleTally>,
    /// All announcements, whatever their rules.
    pub all: RuleTally,
    /// For each outcome (in the order given): the announcement it answers.
    pub attributed: Vec<Option<(usize, AttributedBy)>>,
}

impl AccountTally {
    /// Adds another account's tally into this one (`attributed` is not
    /// carried over: it is per account).
    pub fn add(&mut self, o: &AccountTally) {
        for (r, t) in &o.by_rule {
            match self.by_rule.get_mut(r) {
                Some(mine) => mine.add(t),
                None => {
                    self.by_rule.insert(r.clone(), t.clone());
                }
            }
        }
        self.all.add(&o.all);
    }

    /// Takes out an account's tally added before ([`RuleTally::sub`]).
    /// A rule's entry stays when its counts come to nothing.
    pub fn sub(&mut self, o: &AccountTally) {
        for (r, t) in &o.by_rule {
            if let Some(mine) = self.by_rule.get_mut(r) {
                mine.sub(t);
            }
        }
        self.all.sub(&o.all);
    }
}

/// Joins one account's outcomes to its announcements ([`attribute`]) and
/// counts, per rule and over all rules, what the announcements heard back
/// ([`RuleTally`]).
pub fn tally_account(announcements: &[Announcement], outcomes: &[Outcome], window_ms: i64) -> AccountTally {
    // Per announcement: the kinds over all its rules, and per rule (index
    // into its `rules`).
    let mut all: Vec<KindSet> = vec![KindSet::default(); announcements.len()];
    let mut per_rule: Vec<Vec<KindSet>> =
        announcements.iter().map(|a| vec![KindSet::default(); a.rules.len()]).collect();
    // Per rule: the first positive outcome attributed to it; over all rules.
    let mut first_positive: BTreeMap<&str, i64> = BTreeMap::new();
    let mut first_positive_all: Option<i64> = None;
    let mut attributed = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let at = attribute(announcements, o, window_ms);
        attributed.push(at);
        let Some((i, _)) = at else { continue };
        let a = &announcements[i];
        all[i].insert(o.outcome);
        let named = o.rule.as_ref().and_then(|r| a.rules.iter().position(|x| x == r));
        for (j, rule) in a.rules.iter().enumerate() {
            if named.is_some_and(|n| n != j) {
                continue;
            }
            per_rule[i][j].insert(o.outcome);
            if o.outcome.is_positive() {
                let e = first_positive.entry(rule.as_str()).or_insert(o.at_ms);
                *e = (*e).min(o.at_ms);
            }
        }
        if o.outcome.is_positive() {
            first_positive_all = Some(first_positive_all.map_or(o.at_ms, |t| t.min(o.at_ms)));
        }
    }
    let mut t = AccountTally { attributed, ..Default::default() };
    for (i, a) in announcements.iter().enumerate() {
        t.all.count(all[i]);
        let mut seen: Vec<&str> = Vec::new();
        for (j, rule) in a.rules.iter().enumerate() {
            if seen.contains(&rule.as_str()) {
                continue; // a rule listed twice counts once
            }
            seen.push(rule);
            let mut kinds = per_rule[i][j];
            for (k, other) in a.rules.iter().enumerate().skip(j + 1) {
                if other == rule {
                    kinds.0 |= per_rule[i][k].0;
                }
            }
            t.by_rule.entry(rule.clone()).or_default().count(kinds);
        }
    }
    let lead = |positive_at: i64, lists: &dyn Fn(&Announcement) -> bool| -> Option<f64> {
        announcements
            .iter()
            .filter(|a| lists(a) && a.at_ms <= positive_at && a.at_ms >= positive_at.saturating_sub(window_ms))
            .map(|a| a.at_ms)
            .min()
            .map(|first| (positive_at - first) as f64 / 86_400_000.0)
    };
    for (rule, at) in first_positive {
        if let Some(d) = lead(at, &|a: &Announcement| a.rules.iter().any(|r| r == rule)) {
            if let Some(rt) = t.by_rule.get_mut(rule) {
                rt.lead_times_days.push(d);
            }
        }
    }
    if let Some(at) = first_positive_all {
        if let Some(d) = lead(at, &|_: &Announcement| true) {
            t.all.lead_times_days.push(d);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const T0: i64 = 1_790_000_000_000; // 2026-09-21T14:13:20Z

    fn o(kind: OutcomeKind, at: i64) -> Outcome {
        Outcome { account_id: "a".into(), outcome: kind, at_ms: at, pqa_event_id: None, rule: None, amount: None }
    }

    fn ann(id: &str, rules: &[&str], at: i64) -> Announcement {
        Announcement { event_id: id.into(), rules: rules.iter().map(|r| r.to_string()).collect(), at_ms: at }
    }

    #[test]
    fn kinds() {
        for k in OutcomeKind::ALL {
            assert_eq!(OutcomeKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<OutcomeKind>(&format!("\"{}\"", k.as_str())).unwrap(), k);
        }
        assert_eq!(OutcomeKind::parse(" WON "), Some(OutcomeKind::Won));
        assert_eq!(OutcomeKind::parse("closed-won"), None);
        let positive: Vec<_> = OutcomeKind::ALL.into_iter().filter(|k| k.is_positive()).collect();
        assert_eq!(positive, [OutcomeKind::Opportunity, OutcomeKind::Won]);
        assert_eq!(parse_kinds("won, opportunity,won").unwrap(), [OutcomeKind::Won, OutcomeKind::Opportunity]);
        assert!(parse_kinds("won,maybe").unwrap_err().contains("maybe"));
        assert!(parse_kinds(" , ").is_err());
    }

    #[test]
    fn parses_the_format() {
        let full = br#"{"account_id":"acct-42","outcome":"opportunity","at":"2026-11-20T16:04:00+01:00",
            "pqa_event_id":"43d35f6cf5cf1dbf4dc31f5f8f96de01","rule":"hand_raiser","amount":24000.5,"crm":"x"}"#;
        let got = parse_outcome(full).unwrap();
        assert_eq!(
            got,
            Outcome {
                account_id: "acct-42".into(),
                outcome: OutcomeKind::Opportunity,
                at_ms: 1_795_187_040_000,
                pqa_event_id: Some("43d35f6cf5cf1dbf4dc31f5f8f96de01".into()),
                rule: Some("hand_raiser".into()),
                amount: Some(24000.5),
            }
        );
        // Round trip through the wire format.
        assert_eq!(parse_outcome(got.to_json().as_bytes()).unwrap(), got);
        // Integer account ids, epoch seconds and milliseconds, nulls.
        let a =
            parse_outcome(br#"{"account_id":42,"outcome":"won","at":1795187040,"rule":null,"amount":null}"#).unwrap();
        assert_eq!((a.account_id.as_str(), a.at_ms, a.rule, a.amount), ("42", 1_795_187_040_000, None, None));
        let b = parse_outcome(br#"{"account_id":"x","outcome":"lost","at":1795187040123,"pqa_event_id":""}"#).unwrap();
        assert_eq!((b.at_ms, b.pqa_event_id), (1_795_187_040_123, None));
    }

    #[test]
    fn bad_records_have_stable_reasons() {
        let long = format!(r#"{{"account_id":"{}","outcome":"won","at":"2026-11-20T15:04:00Z"}}"#, "x".repeat(2000));
        let huge =
            format!(r#"{{"account_id":"a","outcome":"won","at":"2026-11-20T15:04:00Z","n":"{}"}}"#, "x".repeat(70_000));
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty"),
            (b"  ", "empty"),
            (huge.as_bytes(), "too_large"),
            (b"{\"account_id\":\"\xff\"}", "invalid_utf8"),
            (b"{\"account_id\":", "invalid_json"),
            (b"[1,2]", "not_an_object"),
            (b"null", "not_an_object"),
            (br#"{"account_id":"a","account_id":"b","outcome":"won","at":1795187040}"#, "duplicate_key"),
            (br#"{"outcome":"won","at":"2026-11-20T15:04:00Z"}"#, "missing_account_id"),
            (br#"{"account_id":" ","outcome":"won","at":"2026-11-20T15:04:00Z"}"#, "missing_account_id"),
            (br#"{"account_id":1.5,"outcome":"won","at":"2026-11-20T15:04:00Z"}"#, "wrong_field_type"),
            (long.as_bytes(), "field_too_long"),
            (br#"{"account_id":"a","at":"2026-11-20T15:04:00Z"}"#, "missing_outcome"),
            (br#"{"account_id":"a","outcome":"closed_won","at":"2026-11-20T15:04:00Z"}"#, "unknown_outcome"),
            (br#"{"account_id":"a","outcome":3,"at":"2026-11-20T15:04:00Z"}"#, "wrong_field_type"),
            (br#"{"account_id":"a","outcome":"won"}"#, "missing_timestamp"),
            (br#"{"account_id":"a","outcome":"won","at":"yesterday"}"#, "bad_timestamp"),
            (br#"{"account_id":"a","outcome":"won","at":"1999-12-31T23:59:59Z"}"#, "bad_timestamp"),
            (br#"{"account_id":"a","outcome":"won","at":-5}"#, "bad_timestamp"),
            (br#"{"account_id":"a","outcome":"won","at":true}"#, "wrong_field_type"),
            (br#"{"account_id":"a","outcome":"won","at":1795187040,"rule":7}"#, "wrong_field_type"),
            (br#"{"account_id":"a","outcome":"won","at":1795187040,"amount":"12"}"#, "wrong_field_type"),
            (br#"{"account_id":"a","outcome":"won","at":1795187040,"amount":-1}"#, "bad_amount"),
        ];
        for (bytes, reason) in cases {
            let e = parse_outcome(bytes).unwrap_err();
            assert_eq!(e.reason(), reason, "{} -> {e}", String::from_utf8_lossy(&bytes[..bytes.len().min(80)]));
            assert!(OutcomeError::REASONS.contains(&e.reason()));
            assert!(!e.to_string().is_empty());
        }
        let dup = parse_outcome(br#"{"account_id":"a","outcome":"won","outcome":"lost","at":1795187040}"#).unwrap_err();
        assert_eq!(dup, OutcomeError::DuplicateKey("outcome".into()));
    }

    #[test]
    fn future_outcomes_are_refused() {
        let x = o(OutcomeKind::Won, T0 + 2 * DAY);
        assert!(check_not_future(&x, T0, 86_400 * 3).is_ok());
        assert_eq!(check_not_future(&x, T0, 86_400).unwrap_err().reason(), "future_timestamp");
    }

    #[test]
    fn files_report_bad_lines_with_their_numbers() {
        let text = b"{\"account_id\":\"a\",\"outcome\":\"won\",\"at\":\"2026-11-20T15:04:00Z\"}\r\n\n\
                     not json\n{\"account_id\":\"b\",\"outcome\":\"maybe\",\"at\":1795187040}\n   \n\
                     {\"account_id\":\"c\",\"outcome\":\"lost\",\"at\":1795187040}";
        let f = read_outcomes_from(&text[..]).unwrap();
        assert_eq!(f.lines, 4);
        assert_eq!(f.outcomes.iter().map(|o| o.account_id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(
            f.bad.iter().map(|b| (b.line, b.reason)).collect::<Vec<_>>(),
            [(3, "invalid_json"), (4, "unknown_outcome")]
        );
        let d = f.describe_bad("o.ndjson", 1);
        assert!(d.starts_with("o.ndjson: 2 of 4 lines are not outcomes"), "{d}");
        assert!(d.contains("line 3: invalid_json") && d.contains("and 1 more"), "{d}");
        // gzip, through the same reader as history input.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.ndjson.gz");
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, text).unwrap();
        gz.finish().unwrap();
        assert_eq!(read_outcomes(&p).unwrap(), f);
    }

    #[test]
    fn attribution_by_id_then_latest_within_the_window() {
        let anns = vec![
            ann("e1", &["team_adoption"], T0),
            ann("e2", &["hand_raiser"], T0 + 10 * DAY),
            ann("e3", &["team_adoption", "usage_spike"], T0 + 40 * DAY),
        ];
        let w = DEFAULT_ATTRIBUTION_WINDOW_MS;
        // By id, even before the announcement or far after it.
        let mut x = o(OutcomeKind::Won, T0 + 500 * DAY);
        x.pqa_event_id = Some("e1".into());
        assert_eq!(attribute(&anns, &x, w), Some((0, AttributedBy::EventId)));
        // An id this list does not know: by time.
        x.pqa_event_id = Some("other-definition".into());
        x.at_ms = T0 + 20 * DAY;
        assert_eq!(attribute(&anns, &x, w), Some((1, AttributedBy::Time)));
        // Exactly at an announcement's time counts; just before it does not.
        assert_eq!(attribute(&anns, &o(OutcomeKind::Won, T0 + 40 * DAY), w), Some((2, AttributedBy::Time)));
        assert_eq!(attribute(&anns, &o(OutcomeKind::Won, T0 + 40 * DAY - 1), w), Some((1, AttributedBy::Time)));
        assert_eq!(attribute(&anns, &o(OutcomeKind::Won, T0 - 1), w), None);
        // The window: 90 days after e3, still e3; a millisecond later, none.
        assert_eq!(attribute(&anns, &o(OutcomeKind::Lost, T0 + 130 * DAY), w), Some((2, AttributedBy::Time)));
        assert_eq!(attribute(&anns, &o(OutcomeKind::Lost, T0 + 130 * DAY + 1), w), None);
        // A named rule picks the latest announcement listing it.
        let mut r = o(OutcomeKind::Rejected, T0 + 50 * DAY);
        r.rule = Some("hand_raiser".into());
        assert_eq!(attribute(&anns, &r, w), Some((1, AttributedBy::Time)));
        r.rule = Some("not_in_any".into());
        assert_eq!(attribute(&anns, &r, w), Some((2, AttributedBy::Time)));
        assert_eq!(attribute(&[], &r, w), None);
    }

    #[test]
    fn tally_by_hand() {
        // Account A: announced by team_adoption (day 0), then team_adoption
        // + usage_spike (day 35, after the cooldown). Outcomes: accepted on
        // day 2 (-> e1), opportunity day 36 and won day 60 (-> e2), a
        // rejected day 37 about usage_spike only (-> e2, that rule only).
        let anns = vec![ann("e1", &["team_adoption"], T0), ann("e2", &["team_adoption", "usage_spike"], T0 + 35 * DAY)];
        let mut rej = o(OutcomeKind::Rejected, T0 + 37 * DAY);
        rej.rule = Some("usage_spike".into());
        let outs = vec![
            o(OutcomeKind::Accepted, T0 + 2 * DAY),
            o(OutcomeKind::Opportunity, T0 + 36 * DAY),
            rej,
            o(OutcomeKind::Won, T0 + 60 * DAY),
            o(OutcomeKind::Lost, T0 - DAY), // before any announcement
        ];
        let t = tally_account(&anns, &outs, DEFAULT_ATTRIBUTION_WINDOW_MS);
        assert_eq!(
            t.attributed,
            [
                Some((0, AttributedBy::Time)),
                Some((1, AttributedBy::Time)),
                Some((1, AttributedBy::Time)),
                Some((1, AttributedBy::Time)),
                None
            ]
        );
        let team = &t.by_rule["team_adoption"];
        assert_eq!((team.announced, team.answered, team.accepted, team.rejected), (2, 2, 1, 0));
        assert_eq!((team.opportunity, team.won, team.lost, team.positive), (1, 1, 0, 1));
        assert_eq!(team.precision(), Some(0.5));
        // From the first team_adoption announcement (day 0) to the
        // opportunity (day 36).
        assert_eq!(team.lead_times_days, [36.0]);
        let spike = &t.by_rule["usage_spike"];
        assert_eq!((spike.announced, spike.answered, spike.rejected, spike.positive), (1, 1, 1, 1));
        assert_eq!(spike.precision(), Some(1.0));
        assert_eq!(spike.lead_times_days, [1.0]);
        assert_eq!((t.all.announced, t.all.answered, t.all.positive, t.all.rejected), (2, 2, 1, 1));
        assert_eq!(t.all.lead_times_days, [36.0]);

        // Account B: announced, never answered.
        let b = tally_account(&[ann("b1", &["team_adoption"], T0)], &[], DEFAULT_ATTRIBUTION_WINDOW_MS);
        let mut sum = t.clone();
        sum.add(&b);
        let team = &sum.by_rule["team_adoption"];
        assert_eq!((team.announced, team.answered, team.positive), (3, 2, 1));
        assert_eq!(team.precision(), Some(0.5));
        assert_eq!(RuleTally::default().precision(), None);
    }

    #[test]
    fn lead_time_starts_within_the_window() {
        // A first announcement 200 days before the win is another story:
        // the lead time counts from the one inside the window.
        let anns = vec![ann("old", &["r"], T0), ann("new", &["r"], T0 + 200 * DAY)];
        let t = tally_account(&anns, &[o(OutcomeKind::Won, T0 + 210 * DAY)], DEFAULT_ATTRIBUTION_WINDOW_MS);
        assert_eq!(t.by_rule["r"].lead_times_days, [10.0]);
        assert_eq!(t.by_rule["r"].announced, 2);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0], 0.9), Some(3.0));
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 0.5), Some(2.5));
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.9), Some(10.0));
        assert_eq!(quantile(&[1.0, 2.0], 0.9), Some(1.9));
        let t = RuleTally { lead_times_days: vec![1.0, 2.0, 3.0, 10.0], ..Default::default() };
        assert_eq!(t.median_lead_days(), Some(2.5));
        assert!((t.p90_lead_days().unwrap() - 7.9).abs() < 1e-9);
    }
}

/// What one definition's announcements heard back, per rule and over all
/// rules (the live engine's `GET /definitions/{version}/rules`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleReport {
    pub version: String,
    /// `live` or `shadow`.
    pub role: &'static str,
    pub rules: BTreeMap<String, RuleTally>,
    pub all: RuleTally,
}

impl RuleReport {
    /// Adds another worker's report of the same definition into this one.
    pub fn add(&mut self, o: &RuleReport) {
        for (rule, t) in &o.rules {
            self.rules.entry(rule.clone()).or_default().add(t);
        }
        self.all.add(&o.all);
    }
}
