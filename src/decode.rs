//! Decode: raw message bytes -> [`Event`], or a [`Rejection`] with a reason
//! that names what is wrong. Nothing here panics on input; a rejection goes
//! to the dead-letter output with the original bytes.
//!
//! Field locations are JSON pointers from the configuration, so other
//! schemas than Segment's can be mapped without code.

use serde_json::{Map, Value};

use crate::config::InputConfig;

/// A Segment call type the engine understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A `track` call: a product action.
    Track,
    /// A `page` (or `screen`) call: a view.
    Page,
    /// An `identify` call: user traits.
    Identify,
    /// A `group` call: user -> account, account traits.
    Group,
}

impl Kind {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Track => "track",
            Kind::Page => "page",
            Kind::Identify => "identify",
            Kind::Group => "group",
        }
    }

    /// `track` and `page` are usage: they make a user active and count as
    /// volume. `identify` and `group` carry traits only.
    pub fn is_usage(self) -> bool {
        matches!(self, Kind::Track | Kind::Page)
    }
}

/// A decoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: Kind,
    pub user_id: String,
    /// The account named by the event itself, if any. When `None`, the
    /// engine uses the user's last known account.
    pub account_id: Option<String>,
    /// Event time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Track event name, or page name.
    pub name: Option<String>,
    /// Page path (from the path field, else from the URL).
    pub path: Option<String>,
    /// Traits of identify / group calls.
    pub traits: Option<Map<String, Value>>,
    pub message_id: Option<String>,
}

/// Why a message was rejected. The label set is closed, so it is safe as a
/// metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    TooLarge,
    Empty,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingType,
    UnsupportedType,
    WrongFieldType,
    MissingUserId,
    MissingEventName,
    NoAccount,
    MissingTimestamp,
    InvalidTimestamp,
    FutureTimestamp,
    TooLate,
    FieldTooLong,
    DuplicateKey,
}

impl Reason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Reason; 17] = [
        Reason::TooLarge,
        Reason::Empty,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingType,
        Reason::UnsupportedType,
        Reason::WrongFieldType,
        Reason::MissingUserId,
        Reason::MissingEventName,
        Reason::NoAccount,
        Reason::MissingTimestamp,
        Reason::InvalidTimestamp,
        Reason::FutureTimestamp,
        Reason::TooLate,
        Reason::FieldTooLong,
        Reason::DuplicateKey,
    ];

    /// Stable snake_case name: header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::Empty => "empty",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingType => "missing_type",
            Reason::UnsupportedType => "unsupported_type",
            Reason::WrongFieldType => "wrong_field_type",
            Reason::MissingUserId => "missing_user_id",
            Reason::MissingEventName => "missing_event_name",
            Reason::NoAccount => "no_account",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::TooLate => "too_late",
            Reason::FieldTooLong => "field_too_long",
            Reason::DuplicateKey => "duplicate_key",
        }
    }
}

/// A rejected message: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }
}

/// Longest user id, account id, message id, event or page name (bytes).
/// Ids become RocksDB keys and names are stored per account, so a huge
/// string is rejected instead of bloating state.
pub const MAX_ID_BYTES: usize = crate::state::keys::MAX_ID_BYTES;
/// Longest page path (bytes).
pub const MAX_PATH_BYTES: usize = 4096;
/// Largest traits object of one identify / group call (bytes of JSON).
pub const MAX_TRAITS_BYTES: usize = 64 * 1024;

/// Earliest plausible event time (2000-01-01): older is a broken clock.
const MIN_TIME_MS: i64 = 946_684_800_000;

/// Decodes messages according to the input configuration.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: InputConfig,
}

impl Decoder {
    pub fn new(cfg: InputConfig) -> Self {
        Decoder { cfg }
    }

    /// Decodes one message. `now_ms` is the wall clock, for the future check.
    ///
    /// ```
    /// use pqa_engine::config::Config;
    /// use pqa_engine::decode::{Decoder, Kind, Reason};
    ///
    /// let decoder = Decoder::new(Config::default_config().input);
    /// let now = 1_790_000_000_000; // 2026-09-21
    /// let line = br#"{"type":"page","userId":"u7","timestamp":"2026-09-02T10:00:00Z",
    ///   "properties":{"url":"https://acme.example/legal/privacy?ref=footer"},
    ///   "context":{"groupId":"acct-42"}}"#;
    /// let event = decoder.decode(Some(line), now).unwrap();
    /// assert_eq!(event.kind, Kind::Page);
    /// assert_eq!(event.account_id.as_deref(), Some("acct-42"));
    /// assert_eq!(event.path.as_deref(), Some("/legal/privacy"));
    ///
    /// let bad = decoder.decode(Some(br#"{"type":"track","event":"x"}"#), now).unwrap_err();
    /// assert_eq!(bad.reason, Reason::MissingUserId);
    /// ```
    pub fn decode(&self, payload: Option<&[u8]>, now_ms: i64) -> Result<Event, Rejection> {
        let bytes = match payload {
            None => return Err(Rejection::new(Reason::Empty, "null message value (tombstone)")),
            Some([]) => return Err(Rejection::new(Reason::Empty, "empty message")),
            Some(b) => b,
        };
        if bytes.len() > self.cfg.max_message_bytes {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!("{} bytes, limit is {}", bytes.len(), self.cfg.max_message_bytes),
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| Rejection::new(Reason::InvalidUtf8, e.to_string()))?;
        let value: Value = match serde_json::from_str::<Strict>(text) {
            Ok(v) => v.0,
            Err(e) if e.to_string().starts_with(DUPLICATE_KEY) => {
                return Err(Rejection::new(Reason::DuplicateKey, e.to_string()))
            }
            Err(e) => return Err(Rejection::new(Reason::InvalidJson, e.to_string())),
        };
        let Value::Object(_) = &value else {
            return Err(Rejection::new(Reason::NotAnObject, format!("top level is {}", type_name(&value))));
        };
        self.decode_value(&value, now_ms)
    }

    fn decode_value(&self, v: &Value, now_ms: i64) -> Result<Event, Rejection> {
        let f = &self.cfg.fields;
        let kind = match string_field(v, &f.r#type, "type")? {
            None => return Err(Rejection::new(Reason::MissingType, "no `type` field")),
            Some(t) => match t.as_str() {
                "track" => Kind::Track,
                "page" | "screen" => Kind::Page,
                "identify" => Kind::Identify,
                "group" => Kind::Group,
                other => {
                    return Err(Rejection::new(
                        Reason::UnsupportedType,
                        format!("type `{}` is not one of track, page, screen, identify, group", truncate(other, 64)),
                    ))
                }
            },
        };
        let user_id = match id_field(v, &f.user_id, "userId")? {
            Some(u) => u,
            None => return Err(Rejection::new(Reason::MissingUserId, "no user id")),
        };
        let account_id = id_field(v, &f.account_id, "account id")?;
        let time_ms = match first(v, &f.timestamp) {
            None => {
                return Err(Rejection::new(Reason::MissingTimestamp, "no timestamp, originalTimestamp or receivedAt"))
            }
            Some((_, t)) => parse_time(t)?,
        };
        if time_ms > now_ms.saturating_add(self.cfg.max_future_seconds.saturating_mul(1000)) {
            return Err(Rejection::new(
                Reason::FutureTimestamp,
                format!(
                    "event time {} is more than {} s ahead of the clock",
                    crate::emit::format_time_ms(time_ms),
                    self.cfg.max_future_seconds
                ),
            ));
        }
        let mut event = Event {
            kind,
            user_id,
            account_id,
            time_ms,
            name: None,
            path: None,
            traits: None,
            message_id: string_field(v, &f.message_id, "messageId")?,
        };
        match kind {
            Kind::Track => match string_field(v, &f.event, "event")? {
                Some(n) if !n.is_empty() => event.name = Some(n),
                _ => return Err(Rejection::new(Reason::MissingEventName, "track call without an `event` name")),
            },
            Kind::Page => {
                event.name = string_field(v, &f.page_name, "name")?;
                event.path = match string_field(v, &f.page_path, "path")? {
                    Some(p) => Some(strip_query(&p).to_string()),
                    None => string_field(v, &f.page_url, "url")?.map(|u| url_path(&u).to_string()),
                };
            }
            Kind::Identify | Kind::Group => {
                event.traits = match first(v, &f.traits) {
                    None | Some((_, Value::Null)) => None,
                    Some((_, Value::Object(m))) => Some(m.clone()),
                    Some((p, other)) => {
                        return Err(Rejection::new(
                            Reason::WrongFieldType,
                            format!("`{p}` must be an object, is {}", type_name(other)),
                        ))
                    }
                };
            }
        }
        check_len("user id", Some(&event.user_id), MAX_ID_BYTES)?;
        check_len("account id", event.account_id.as_deref(), MAX_ID_BYTES)?;
        check_len("messageId", event.message_id.as_deref(), MAX_ID_BYTES)?;
        check_len("event / page name", event.name.as_deref(), MAX_ID_BYTES)?;
        check_len("page path", event.path.as_deref(), MAX_PATH_BYTES)?;
        if let Some(t) = &event.traits {
            let size = serde_json::to_vec(t).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_TRAITS_BYTES {
                return Err(Rejection::new(
                    Reason::FieldTooLong,
                    format!("traits are {size} bytes of JSON, limit is {MAX_TRAITS_BYTES}"),
                ));
            }
        }
        Ok(event)
    }
}

fn check_len(what: &str, v: Option<&str>, max: usize) -> Result<(), Rejection> {
    match v {
        Some(s) if s.len() > max => {
            Err(Rejection::new(Reason::FieldTooLong, format!("{what} is {} bytes, limit is {max}", s.len())))
        }
        _ => Ok(()),
    }
}

const DUPLICATE_KEY: &str = "duplicate key";

/// A JSON value parsed strictly: an object with the same key twice (at any
/// depth) is an error, since which one a consumer would see is undefined.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format_args!("{DUPLICATE_KEY} `{}`", truncate(&k, 64))));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn first<'v>(v: &'v Value, pointers: &'v [String]) -> Option<(&'v str, &'v Value)> {
    pointers.iter().find_map(|p| v.pointer(p).filter(|x| !x.is_null()).map(|x| (p.as_str(), x)))
}

/// A string field; anything else than a string (or null/absent) is a type error.
fn string_field(v: &Value, pointers: &[String], what: &str) -> Result<Option<String>, Rejection> {
    match first(v, pointers) {
        None => Ok(None),
        Some((_, Value::String(s))) => Ok(Some(s.clone())),
        Some((p, other)) => Err(Rejection::new(
            Reason::WrongFieldType,
            format!("{what} (`{p}`) must be a string, is {}", type_name(other)),
        )),
    }
}

/// An identifier: a non-empty string, or an integer (some sources send
/// numeric ids). Empty strings count as absent.
fn id_field(v: &Value, pointers: &[String], what: &str) -> Result<Option<String>, Rejection> {
    for p in pointers {
        match v.pointer(p) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s.trim().is_empty() => continue,
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => return Ok(Some(n.to_string())),
            Some(other) => {
                return Err(Rejection::new(
                    Reason::WrongFieldType,
                    format!("{what} (`{p}`) must be a string, is {}", type_name(other)),
                ))
            }
        }
    }
    Ok(None)
}

/// RFC 3339 strings, or epoch numbers (seconds below 1e11, else milliseconds).
fn parse_time(t: &Value) -> Result<i64, Rejection> {
    let ms = match t {
        Value::String(s) => {
            chrono::DateTime::parse_from_rfc3339(s.trim()).map(|d| d.timestamp_millis()).map_err(|e| {
                Rejection::new(Reason::InvalidTimestamp, format!("`{}` is not an RFC 3339 time: {e}", truncate(s, 64)))
            })?
        }
        Value::Number(n) => {
            let x = n
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0 && *x < 1e15)
                .ok_or_else(|| Rejection::new(Reason::InvalidTimestamp, format!("{n} is not an epoch time")))?;
            if x < 1e11 {
                (x * 1000.0) as i64
            } else {
                x as i64
            }
        }
        other => {
            return Err(Rejection::new(
                Reason::WrongFieldType,
                format!("timestamp must be a string or a number, is {}", type_name(other)),
            ))
        }
    };
    if ms < MIN_TIME_MS {
        return Err(Rejection::new(Reason::InvalidTimestamp, "event time before the year 2000"));
    }
    Ok(ms)
}

fn strip_query(p: &str) -> &str {
    let end = p.find(['?', '#']).unwrap_or(p.len());
    &p[..end]
}

/// The path of a URL (`https://x.io/legal/terms?a=1` -> `/legal/terms`).
fn url_path(u: &str) -> &str {
    let rest = match u.find("://") {
        Some(i) => &u[i + 3..],
        None => u,
    };
    let rest = strip_query(rest);
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "/",
    }
}

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

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(crate::config::Config::default_config().input)
    }
    const NOW: i64 = 1_790_000_000_000; // 2026-09

    fn ok(s: &str) -> Event {
        decoder().decode(Some(s.as_bytes()), NOW).unwrap()
    }
    fn bad(b: &[u8]) -> Reason {
        decoder().decode(Some(b), NOW).unwrap_err().reason
    }

    #[test]
    fn segment_track() {
        let e = ok(
            r#"{"type":"track","event":"Board Created","userId":"u1","timestamp":"2026-08-02T10:00:00Z","context":{"groupId":"acct-42"},"messageId":"m1"}"#,
        );
        assert_eq!(e.kind, Kind::Track);
        assert_eq!(e.user_id, "u1");
        assert_eq!(e.account_id.as_deref(), Some("acct-42"));
        assert_eq!(e.name.as_deref(), Some("Board Created"));
        assert_eq!(e.time_ms, 1_785_664_800_000);
        assert_eq!(e.message_id.as_deref(), Some("m1"));
    }

    #[test]
    fn account_fallbacks_and_time_fallbacks() {
        let e = ok(
            r#"{"type":"track","event":"x","userId":"u1","originalTimestamp":"2026-08-02T10:00:00+02:00","properties":{"accountId":"a9"}}"#,
        );
        assert_eq!(e.account_id.as_deref(), Some("a9"));
        assert_eq!(e.time_ms, 1_785_657_600_000);
        let e =
            ok(r#"{"type":"track","event":"x","userId":"u1","receivedAt":1785664800000,"properties":{"groupId":"g"}}"#);
        assert_eq!(e.account_id.as_deref(), Some("g"));
        assert_eq!(e.time_ms, 1_785_664_800_000);
        let e = ok(
            r#"{"type":"group","userId":"u1","groupId":"acct-1","timestamp":"2026-08-02T10:00:00Z","traits":{"name":"Acme"}}"#,
        );
        assert_eq!(e.account_id.as_deref(), Some("acct-1"));
        assert_eq!(e.traits.unwrap()["name"], "Acme");
        let e = ok(r#"{"type":"track","event":"x","userId":42,"timestamp":"2026-08-02T10:00:00Z"}"#);
        assert_eq!(e.user_id, "42");
        assert_eq!(e.account_id, None);
    }

    #[test]
    fn page_path_from_path_or_url() {
        let e = ok(
            r#"{"type":"page","name":"Terms","userId":"u","timestamp":"2026-08-02T10:00:00Z","properties":{"path":"/legal/terms?x=1"}}"#,
        );
        assert_eq!(e.path.as_deref(), Some("/legal/terms"));
        let e = ok(
            r#"{"type":"page","userId":"u","timestamp":"2026-08-02T10:00:00Z","properties":{"url":"https://acme.io/dpa#top"}}"#,
        );
        assert_eq!(e.path.as_deref(), Some("/dpa"));
        let e = ok(r#"{"type":"screen","userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#);
        assert_eq!(e.kind, Kind::Page);
    }

    #[test]
    fn every_class_of_bad_input_has_its_reason() {
        let ts = r#""timestamp":"2026-08-02T10:00:00Z""#;
        let cases: Vec<(Vec<u8>, Reason)> = vec![
            (b"".to_vec(), Reason::Empty),
            (b"{\"type\":\"track\"".to_vec(), Reason::InvalidJson),
            (b"hello".to_vec(), Reason::InvalidJson),
            (vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'], Reason::InvalidUtf8),
            (b"[1,2]".to_vec(), Reason::NotAnObject),
            (b"42".to_vec(), Reason::NotAnObject),
            (b"null".to_vec(), Reason::NotAnObject),
            (format!(r#"{{"event":"x","userId":"u",{ts}}}"#).into_bytes(), Reason::MissingType),
            (format!(r#"{{"type":"alias","userId":"u",{ts}}}"#).into_bytes(), Reason::UnsupportedType),
            (format!(r#"{{"type":7,"userId":"u",{ts}}}"#).into_bytes(), Reason::WrongFieldType),
            (format!(r#"{{"type":"track","event":["x"],"userId":"u",{ts}}}"#).into_bytes(), Reason::WrongFieldType),
            (format!(r#"{{"type":"track","event":"x","userId":{{"a":1}},{ts}}}"#).into_bytes(), Reason::WrongFieldType),
            (
                format!(r#"{{"type":"identify","userId":"u","traits":"admin",{ts}}}"#).into_bytes(),
                Reason::WrongFieldType,
            ),
            (format!(r#"{{"type":"track","event":"x",{ts}}}"#).into_bytes(), Reason::MissingUserId),
            (format!(r#"{{"type":"track","event":"x","userId":"",{ts}}}"#).into_bytes(), Reason::MissingUserId),
            (format!(r#"{{"type":"track","userId":"u",{ts}}}"#).into_bytes(), Reason::MissingEventName),
            (br#"{"type":"track","event":"x","userId":"u"}"#.to_vec(), Reason::MissingTimestamp),
            (
                br#"{"type":"track","event":"x","userId":"u","timestamp":"yesterday"}"#.to_vec(),
                Reason::InvalidTimestamp,
            ),
            (
                br#"{"type":"track","event":"x","userId":"u","timestamp":"1970-01-01T00:00:00Z"}"#.to_vec(),
                Reason::InvalidTimestamp,
            ),
            (br#"{"type":"track","event":"x","userId":"u","timestamp":-5}"#.to_vec(), Reason::InvalidTimestamp),
            (br#"{"type":"track","event":"x","userId":"u","timestamp":true}"#.to_vec(), Reason::WrongFieldType),
            (
                br#"{"type":"track","event":"x","userId":"u","timestamp":"2031-01-01T00:00:00Z"}"#.to_vec(),
                Reason::FutureTimestamp,
            ),
            ("[".repeat(10_000).into_bytes(), Reason::InvalidJson),
            (
                format!(r#"{{"type":"track","event":"x","userId":"u","userId":"v",{ts}}}"#).into_bytes(),
                Reason::DuplicateKey,
            ),
            (
                format!(
                    r#"{{"type":"track","event":"x","userId":"u","context":{{"groupId":"a","groupId":"b"}},{ts}}}"#
                )
                .into_bytes(),
                Reason::DuplicateKey,
            ),
            (b"{\"type\":\"track\0\"}".to_vec(), Reason::InvalidJson),
            (
                format!(r#"{{"type":"track","event":"x","userId":"{}",{ts}}}"#, "u".repeat(2000)).into_bytes(),
                Reason::FieldTooLong,
            ),
            (
                format!(r#"{{"type":"track","event":"{}","userId":"u",{ts}}}"#, "e".repeat(5000)).into_bytes(),
                Reason::FieldTooLong,
            ),
            (
                format!(r#"{{"type":"identify","userId":"u","traits":{{"bio":"{}"}},{ts}}}"#, "b".repeat(100_000))
                    .into_bytes(),
                Reason::FieldTooLong,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(bad(&input), want, "input {:?}", String::from_utf8_lossy(&input[..input.len().min(80)]));
        }
        assert_eq!(decoder().decode(None, NOW).unwrap_err().reason, Reason::Empty);
        let big = format!(r#"{{"type":"track","event":"{}","userId":"u",{ts}}}"#, "x".repeat(2 << 20));
        assert_eq!(bad(big.as_bytes()), Reason::TooLarge);
    }

    #[test]
    fn reasons_are_unique_labels() {
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
