//! Decode: raw message bytes -> [`Event`], or a [`Rejection`] with a reason
//! that names what is wrong. Nothing here panics on input; a rejection goes
//! to the dead-letter output with the original bytes.
//!
//! Field locations are JSON pointers from the configuration, so other
//! schemas than Segment's can be mapped without code.
//!
//! # How a message is decoded
//!
//! The configured pointers are compiled once ([`Decoder::new`]) into a small
//! tree of object keys. A message is then parsed in one pass by a serde
//! visitor that walks that tree: values at a configured location are kept
//! (borrowed from the input where possible, no allocation), every other value
//! is parsed and validated but not kept, and no `serde_json::Value` tree is
//! built. The checks are those of a full strict parse: JSON syntax, UTF-8,
//! escapes (a lone surrogate is invalid JSON), numbers out of range, nesting
//! deeper than serde_json's limit (128), and the same key twice in any object
//! at any depth (`duplicate_key`). Only then are the kept values checked and
//! turned into an [`Event`], in a fixed order, so a message with several
//! faults always gets the same reason.
//!
//! Traits (identify / group) are the only values built as owned JSON, and only
//! when the event needs them: when the call type is already known to be
//! identify or group as the parser reaches the traits object (the type comes
//! first), the object is built right there; otherwise (e.g. keys in
//! alphabetical order, `traits` before `type`) the message is parsed a second
//! time for that one object.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::config::{FieldPointers, InputConfig};

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
    /// An `alias` call: a previous id (an anonymous id or an earlier user
    /// id) is the same person as the user id.
    Alias,
}

impl Kind {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Track => "track",
            Kind::Page => "page",
            Kind::Identify => "identify",
            Kind::Group => "group",
            Kind::Alias => "alias",
        }
    }

    /// Every kind, for pre-registering metric labels.
    pub const ALL: [Kind; 5] = [Kind::Track, Kind::Page, Kind::Identify, Kind::Group, Kind::Alias];

    /// `track` and `page` are usage: they make a user active and count as
    /// volume. `identify` and `group` carry traits only, and `alias` links
    /// two ids.
    pub fn is_usage(self) -> bool {
        matches!(self, Kind::Track | Kind::Page)
    }
}

/// An id, a name or a page path of an event: kept inline up to 24 bytes
/// (most user and account ids, event names, paths), so decoding an event
/// allocates only for the longer ones (`compact_str`).
pub type Id = compact_str::CompactString;

/// A decoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: Kind,
    /// The user id; for an anonymous event (no user id, an `anonymousId`),
    /// the anonymous id.
    pub user_id: Id,
    /// No user id, only an `anonymousId` (a visitor not logged in).
    pub anonymous: bool,
    /// The `anonymousId` beside a user id: the user was this visitor
    /// before logging in.
    pub anonymous_id: Option<Id>,
    /// The account named by the event itself, if any. When `None`, the
    /// engine uses the user's last known account.
    pub account_id: Option<Id>,
    /// Event time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Track event name, or page name.
    pub name: Option<Id>,
    /// Page path (from the path field, else from the URL).
    pub path: Option<Id>,
    /// Traits of identify / group calls.
    pub traits: Option<Map<String, Value>>,
    pub message_id: Option<Id>,
    /// The `previousId` of an `alias` call (always set for one, `None` for
    /// the other kinds): an anonymous id or an earlier user id that is the
    /// user's.
    pub previous_id: Option<String>,
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
    MissingPreviousId,
    MissingEventName,
    NoAccount,
    MissingTimestamp,
    InvalidTimestamp,
    FutureTimestamp,
    TooLate,
    FieldTooLong,
    DuplicateKey,
    /// A record of the outcomes topic, refused for this reason (see
    /// [`crate::outcome::OutcomeError::reason`]).
    Outcome(&'static str),
}

impl Reason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Reason; 18] = [
        Reason::TooLarge,
        Reason::Empty,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingType,
        Reason::UnsupportedType,
        Reason::WrongFieldType,
        Reason::MissingUserId,
        Reason::MissingPreviousId,
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
            Reason::MissingPreviousId => "missing_previous_id",
            Reason::MissingEventName => "missing_event_name",
            Reason::NoAccount => "no_account",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::TooLate => "too_late",
            Reason::FieldTooLong => "field_too_long",
            Reason::DuplicateKey => "duplicate_key",
            Reason::Outcome(r) => r,
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
    plan: Plan,
}

impl Decoder {
    pub fn new(cfg: InputConfig) -> Self {
        let plan = Plan::new(&cfg.fields);
        Decoder { cfg, plan }
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
        let mut caps = Caps::default();
        let mut de = serde_json::Deserializer::from_str(text);
        let top = Walk { plan: &self.plan, caps: &mut caps, node: ROOT }.deserialize(&mut de).and_then(|top| {
            de.end()?;
            Ok(top)
        });
        match top {
            Ok(OBJECT) => {}
            Ok(other) => return Err(Rejection::new(Reason::NotAnObject, format!("top level is {other}"))),
            Err(e) => {
                let e = e.to_string();
                let reason = if e.starts_with(DUPLICATE_KEY) { Reason::DuplicateKey } else { Reason::InvalidJson };
                return Err(Rejection::new(reason, e));
            }
        }
        self.extract(text, caps, now_ms)
    }

    /// Turns the values found by the parse into an event, or the first
    /// rejection in a fixed order of checks.
    fn extract<'de>(&self, text: &'de str, mut caps: Caps<'de>, now_ms: i64) -> Result<Event, Rejection> {
        let kind = match self.string(&mut caps, Field::Type, "type")? {
            None => return Err(Rejection::new(Reason::MissingType, "no `type` field")),
            Some(t) => match kind_of(&t) {
                Some(k) => k,
                None => {
                    return Err(Rejection::new(
                        Reason::UnsupportedType,
                        format!(
                            "type `{}` is not one of track, page, screen, identify, group, alias",
                            truncate(&t, 64)
                        ),
                    ))
                }
            },
        };
        let (user_id, anonymous, anonymous_id) = match self.id(&mut caps, Field::UserId, "userId")? {
            // The anonymous id beside a user id links the two; one of an
            // unexpected type is ignored (the user id is what counts).
            Some(u) => (u, false, self.id(&mut caps, Field::AnonymousId, "anonymousId").ok().flatten()),
            None => match self.id(&mut caps, Field::AnonymousId, "anonymousId")? {
                Some(a) => (a, true, None),
                None => return Err(Rejection::new(Reason::MissingUserId, "no user id and no anonymousId")),
            },
        };
        // An alias names the user the previous id becomes: both are needed.
        let previous_id = if kind == Kind::Alias {
            if anonymous {
                return Err(Rejection::new(Reason::MissingUserId, "alias call without a userId"));
            }
            match self.id(&mut caps, Field::PreviousId, "previousId")? {
                Some(p) => Some(p),
                None => return Err(Rejection::new(Reason::MissingPreviousId, "alias call without a previousId")),
            }
        } else {
            None
        };
        let account_id = self.id(&mut caps, Field::AccountId, "account id")?;
        let time_ms = match caps.take(Field::Timestamp) {
            None => {
                return Err(Rejection::new(Reason::MissingTimestamp, "no timestamp, originalTimestamp or receivedAt"))
            }
            Some((_, t)) => parse_time(&t)?,
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
        let message_id = self.string(&mut caps, Field::MessageId, "messageId")?;
        let (mut name, mut path, mut traits) = (None, None, None);
        match kind {
            Kind::Track => match self.string(&mut caps, Field::Event, "event")? {
                Some(n) if !n.is_empty() => name = Some(n),
                _ => return Err(Rejection::new(Reason::MissingEventName, "track call without an `event` name")),
            },
            Kind::Page => {
                name = self.string(&mut caps, Field::PageName, "name")?;
                path = match self.string(&mut caps, Field::PagePath, "path")? {
                    Some(p) => Some(Id::from(strip_query(&p))),
                    None => self.string(&mut caps, Field::PageUrl, "url")?.map(|u| Id::from(url_path(&u))),
                };
            }
            Kind::Identify | Kind::Group => {
                traits = match caps.take(Field::Traits) {
                    None => None,
                    Some((i, Cap::Object)) => match caps.traits.take() {
                        Some((j, m)) if j == i => Some(m),
                        _ => self.fetch_traits(text, i),
                    },
                    Some((i, other)) => {
                        return Err(Rejection::new(
                            Reason::WrongFieldType,
                            format!("`{}` must be an object, is {}", self.pointer(Field::Traits, i), other.type_name()),
                        ))
                    }
                };
            }
            Kind::Alias => {}
        }
        check_len("user id", Some(&user_id), MAX_ID_BYTES)?;
        check_len("previousId", previous_id.as_deref(), MAX_ID_BYTES)?;
        let anonymous_id = anonymous_id.filter(|a| a.len() <= MAX_ID_BYTES && *a != user_id);
        check_len("account id", account_id.as_deref(), MAX_ID_BYTES)?;
        check_len("messageId", message_id.as_deref(), MAX_ID_BYTES)?;
        check_len("event / page name", name.as_deref(), MAX_ID_BYTES)?;
        check_len("page path", path.as_deref(), MAX_PATH_BYTES)?;
        // Serialised compactly, a JSON text is at most 8 times as long as
        // the text it was parsed from (only numbers grow: `1e5` becomes
        // `100000.0`, and no float takes more than 24 bytes), so traits from
        // a message of at most 1/8 of the limit need no counting.
        if let Some(t) = traits.as_ref().filter(|_| text.len() > MAX_TRAITS_BYTES / 8) {
            let size = json_len(t);
            if size > MAX_TRAITS_BYTES {
                return Err(Rejection::new(
                    Reason::FieldTooLong,
                    format!("traits are {size} bytes of JSON, limit is {MAX_TRAITS_BYTES}"),
                ));
            }
        }
        Ok(Event {
            kind,
            user_id: Id::from(user_id),
            anonymous,
            anonymous_id: anonymous_id.map(Id::from),
            account_id: account_id.map(Id::from),
            time_ms,
            name: name.map(Id::from),
            path,
            traits,
            message_id: message_id.map(Id::from),
            previous_id: previous_id.map(Cow::into_owned),
        })
    }

    /// The configured pointer number `i` of `field`, for messages.
    fn pointer(&self, field: Field, i: usize) -> &str {
        pointers(&self.cfg.fields, field).get(i).map_or("", String::as_str)
    }

    /// A string field; anything else than a string (or null/absent) is a type error.
    fn string<'de>(&self, caps: &mut Caps<'de>, field: Field, what: &str) -> Result<Option<Cow<'de, str>>, Rejection> {
        match caps.take(field) {
            None => Ok(None),
            Some((_, Cap::Str(s))) => Ok(Some(s)),
            Some((i, other)) => Err(Rejection::new(
                Reason::WrongFieldType,
                format!("{what} (`{}`) must be a string, is {}", self.pointer(field, i), other.type_name()),
            )),
        }
    }

    /// An identifier: a non-empty string, or an integer (some sources send
    /// numeric ids). Blank strings count as absent (they are never kept).
    fn id<'de>(&self, caps: &mut Caps<'de>, field: Field, what: &str) -> Result<Option<Cow<'de, str>>, Rejection> {
        match caps.take(field) {
            Some((_, Cap::Num(n))) if n.is_i64() || n.is_u64() => Ok(Some(Cow::Owned(n.to_string()))),
            other => {
                caps.best[field as usize] = other;
                self.string(caps, field, what)
            }
        }
    }

    /// The second pass for traits not built during the first: the object at
    /// traits pointer `i`, which the first pass found and validated.
    fn fetch_traits(&self, text: &str, i: usize) -> Option<Map<String, Value>> {
        let tokens = self.plan.traits.get(i)?.as_deref()?;
        let mut de = serde_json::Deserializer::from_str(text);
        match (Fetch { tokens }).deserialize(&mut de) {
            Ok(Some(Value::Object(m))) => Some(m),
            _ => None,
        }
    }
}

/// The pointers configured for `field`.
fn pointers(f: &FieldPointers, field: Field) -> &[String] {
    match field {
        Field::Type => &f.r#type,
        Field::Event => &f.event,
        Field::PageName => &f.page_name,
        Field::PagePath => &f.page_path,
        Field::PageUrl => &f.page_url,
        Field::UserId => &f.user_id,
        Field::AccountId => &f.account_id,
        Field::Timestamp => &f.timestamp,
        Field::Traits => &f.traits,
        Field::MessageId => &f.message_id,
        Field::AnonymousId => &f.anonymous_id,
        Field::PreviousId => &f.previous_id,
    }
}

fn kind_of(t: &str) -> Option<Kind> {
    match t {
        "track" => Some(Kind::Track),
        "page" | "screen" => Some(Kind::Page),
        "identify" => Some(Kind::Identify),
        "group" => Some(Kind::Group),
        "alias" => Some(Kind::Alias),
        _ => None,
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

/// Length of `m` serialised as compact JSON, without building the string.
fn json_len(m: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, m) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

// ---------------------------------------------------------------------------
// The configured locations, compiled
// ---------------------------------------------------------------------------

/// The event fields that are read from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Type,
    Event,
    PageName,
    PagePath,
    PageUrl,
    UserId,
    AccountId,
    Timestamp,
    Traits,
    MessageId,
    AnonymousId,
    PreviousId,
}

const FIELDS: [Field; 12] = [
    Field::Type,
    Field::Event,
    Field::PageName,
    Field::PagePath,
    Field::PageUrl,
    Field::UserId,
    Field::AccountId,
    Field::Timestamp,
    Field::Traits,
    Field::MessageId,
    Field::AnonymousId,
    Field::PreviousId,
];

/// All configured pointers as one tree of keys: node [`ROOT`] is the message,
/// each child a key (or array index) under its parent.
#[derive(Debug, Clone)]
struct Plan {
    nodes: Vec<Node>,
    /// The tokens of each traits pointer (`None`: the pointer can never
    /// resolve), for the second pass.
    traits: Vec<Option<Vec<String>>>,
}

const ROOT: usize = 0;

#[derive(Debug, Clone, Default)]
struct Node {
    children: Vec<Child>,
    /// Some child names an array index.
    indexed: bool,
    /// `(field, n)`: pointer number `n` of `field` ends here.
    slots: Vec<(Field, usize)>,
}

#[derive(Debug, Clone)]
struct Child {
    /// The key, unescaped (`~1` -> `/`, `~0` -> `~`).
    token: String,
    /// The array index the token names, as `serde_json::Value::pointer` reads it.
    index: Option<usize>,
    node: usize,
}

impl Plan {
    fn new(fields: &FieldPointers) -> Plan {
        let mut plan = Plan { nodes: vec![Node::default()], traits: Vec::new() };
        for field in FIELDS {
            for (n, p) in pointers(fields, field).iter().enumerate() {
                let tokens = pointer_tokens(p);
                if field == Field::Traits {
                    plan.traits.push(tokens.clone());
                }
                let Some(tokens) = tokens else { continue };
                let mut node = ROOT;
                for t in tokens {
                    node = match plan.nodes[node].children.iter().find(|c| c.token == t) {
                        Some(c) => c.node,
                        None => {
                            let child = plan.nodes.len();
                            plan.nodes.push(Node::default());
                            let index = parse_index(&t);
                            let parent = &mut plan.nodes[node];
                            parent.indexed |= index.is_some();
                            parent.children.push(Child { token: t, index, node: child });
                            child
                        }
                    };
                }
                plan.nodes[node].slots.push((field, n));
            }
        }
        plan
    }
}

/// The tokens of a JSON pointer (RFC 6901), as `serde_json::Value::pointer`
/// splits them; `None` for a string that is not a pointer (never resolves).
fn pointer_tokens(p: &str) -> Option<Vec<String>> {
    if p.is_empty() {
        return Some(Vec::new());
    }
    if !p.starts_with('/') {
        return None;
    }
    Some(p.split('/').skip(1).map(|x| x.replace("~1", "/").replace("~0", "~")).collect())
}

/// An array index token, as `serde_json::Value::pointer` accepts it.
fn parse_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() != 1) {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------------------
// The first pass: one strict parse that keeps only the configured values
// ---------------------------------------------------------------------------

/// A value found at a configured location: strings and numbers as they are
/// (strings borrowed from the message unless they contain escapes), other
/// values by their type only. Nulls are never kept: they count as absent.
#[derive(Debug)]
enum Cap<'de> {
    Str(Cow<'de, str>),
    Num(Number),
    Bool,
    Array,
    Object,
}

impl Cap<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Cap::Bool => "a boolean",
            Cap::Num(_) => "a number",
            Cap::Str(_) => "a string",
            Cap::Array => "an array",
            Cap::Object => OBJECT,
        }
    }
}

const OBJECT: &str = "an object";

/// What the first pass keeps: per field, the value of its first pointer
/// (in configuration order) that resolves to a non-null value.
#[derive(Debug, Default)]
struct Caps<'de> {
    best: [Option<(usize, Cap<'de>)>; FIELDS.len()],
    /// The call type, known as soon as the first type pointer was read.
    kind_hint: Option<Kind>,
    /// Traits object of traits pointer `.0`, built during the first pass.
    traits: Option<(usize, Map<String, Value>)>,
}

impl<'de> Caps<'de> {
    /// Would a value at pointer `n` of `field` be kept?
    fn wants(&self, field: Field, n: usize) -> bool {
        self.best[field as usize].as_ref().is_none_or(|(b, _)| n < *b)
    }

    fn offer(&mut self, field: Field, n: usize, cap: Cap<'de>) {
        if let Cap::Str(s) = &cap {
            // Blank ids count as absent: the next pointer is tried.
            if matches!(field, Field::UserId | Field::AccountId | Field::AnonymousId | Field::PreviousId)
                && s.trim().is_empty()
            {
                return;
            }
            if field == Field::Type && n == 0 {
                self.kind_hint = kind_of(s);
            }
        }
        if self.wants(field, n) {
            self.best[field as usize] = Some((n, cap));
        }
    }

    fn take(&mut self, field: Field) -> Option<(usize, Cap<'de>)> {
        self.best[field as usize].take()
    }
}

/// Parses one value at `node` of the plan, keeping it for the fields whose
/// pointers end there and descending into the keys the plan names; returns
/// the value's type name.
struct Walk<'a, 'de> {
    plan: &'a Plan,
    caps: &'a mut Caps<'de>,
    node: usize,
}

impl<'de> Walk<'_, 'de> {
    fn put(&mut self, cap: impl Fn() -> Cap<'de>) {
        for &(field, n) in &self.plan.nodes[self.node].slots {
            if self.caps.wants(field, n) {
                self.caps.offer(field, n, cap());
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, 'de> {
    type Value = &'static str;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, 'de> {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(mut self, _: bool) -> Result<&'static str, E> {
        self.put(|| Cap::Bool);
        Ok("a boolean")
    }
    fn visit_i64<E>(mut self, v: i64) -> Result<&'static str, E> {
        self.put(|| Cap::Num(v.into()));
        Ok("a number")
    }
    fn visit_u64<E>(mut self, v: u64) -> Result<&'static str, E> {
        self.put(|| Cap::Num(v.into()));
        Ok("a number")
    }
    fn visit_f64<E>(mut self, v: f64) -> Result<&'static str, E> {
        // Not finite: cannot come out of a JSON parse; treated as null.
        let Some(n) = Number::from_f64(v) else { return Ok("null") };
        self.put(|| Cap::Num(n.clone()));
        Ok("a number")
    }
    fn visit_borrowed_str<E>(mut self, v: &'de str) -> Result<&'static str, E> {
        self.put(|| Cap::Str(Cow::Borrowed(v)));
        Ok("a string")
    }
    fn visit_str<E>(mut self, v: &str) -> Result<&'static str, E> {
        self.put(|| Cap::Str(Cow::Owned(v.to_owned())));
        Ok("a string")
    }
    fn visit_unit<E>(self) -> Result<&'static str, E> {
        Ok("null")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<&'static str, A::Error> {
        self.put(|| Cap::Array);
        let plan = self.plan;
        let node = &plan.nodes[self.node];
        let mut i = 0;
        loop {
            let child = if node.indexed { node.children.iter().find(|c| c.index == Some(i)) } else { None };
            let more = match child {
                Some(c) => seq.next_element_seed(Walk { plan, caps: &mut *self.caps, node: c.node })?.is_some(),
                None => seq.next_element_seed(Skip)?.is_some(),
            };
            if !more {
                return Ok("an array");
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<&'static str, A::Error> {
        self.put(|| Cap::Object);
        let plan = self.plan;
        let node = &plan.nodes[self.node];
        // Traits the event will need: build them now (the last pass over them).
        if node.children.is_empty()
            && self.node != ROOT
            && matches!(self.caps.kind_hint, Some(Kind::Identify | Kind::Group))
        {
            let wanted = node.slots.iter().find(|&&(f, n)| f == Field::Traits && self.caps.best_is(f, n));
            if let Some(&(_, n)) = wanted {
                if let Value::Object(m) = StrictVisitor.visit_map(map)? {
                    self.caps.traits = Some((n, m));
                }
                return Ok(OBJECT);
            }
        }
        let mut keys = Keys::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match node.children.iter().find(|c| same(&c.token, &key)) {
                Some(c) => map.next_value_seed(Walk { plan, caps: &mut *self.caps, node: c.node }).map(drop)?,
                None => map.next_value_seed(Skip)?,
            }
            keys.insert(key)?;
        }
        Ok(OBJECT)
    }
}

impl Caps<'_> {
    /// Is pointer `n` of `field` the one kept for it now?
    fn best_is(&self, field: Field, n: usize) -> bool {
        matches!(&self.best[field as usize], Some((b, _)) if *b == n)
    }
}

/// Parses and validates one value, keeps nothing.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = Keys::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            map.next_value_seed(Skip)?;
            keys.insert(key)?;
        }
        Ok(())
    }
}

/// An object key, borrowed from the message unless it contains escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Keys up to this many per object are checked for duplicates without
/// allocating; beyond (or for a key with escapes), a hash set takes over.
const SMALL_KEYS: usize = 32;

/// The keys of one object so far, to reject a key seen twice.
struct Keys<'de> {
    small: [&'de str; SMALL_KEYS],
    len: usize,
    spilled: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> Keys<'de> {
    fn new() -> Self {
        Keys { small: [""; SMALL_KEYS], len: 0, spilled: None }
    }

    fn insert<E: serde::de::Error>(&mut self, key: Cow<'de, str>) -> Result<(), E> {
        if self.spilled.is_none() {
            if self.small[..self.len].iter().any(|k| same(k, &key)) {
                return Err(duplicate(&key));
            }
            if let (Cow::Borrowed(k), true) = (&key, self.len < SMALL_KEYS) {
                self.small[self.len] = k;
                self.len += 1;
                return Ok(());
            }
        }
        let set =
            self.spilled.get_or_insert_with(|| self.small[..self.len].iter().map(|k| Cow::Borrowed(*k)).collect());
        if set.contains(&key) {
            return Err(duplicate(&key));
        }
        set.insert(key);
        Ok(())
    }
}

/// `a == b`, without calling `memcmp` for keys that differ in length or in
/// their first byte (most of them).
#[inline]
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

const DUPLICATE_KEY: &str = "duplicate key";

fn duplicate<E: serde::de::Error>(key: &str) -> E {
    E::custom(format_args!("{DUPLICATE_KEY} `{}`", truncate(key, 64)))
}

// ---------------------------------------------------------------------------
// Building JSON values: traits
// ---------------------------------------------------------------------------

/// A JSON value parsed strictly: an object with the same key twice (at any
/// depth) is an error, since which one a consumer would see is undefined.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
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
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&k) {
                return Err(duplicate(&k));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// The second pass: the value at `tokens`, built strictly; everything else
/// is skipped (the first pass has validated it all).
struct Fetch<'p> {
    tokens: &'p [String],
}

impl<'de> DeserializeSeed<'de> for Fetch<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        if self.tokens.is_empty() {
            return d.deserialize_any(StrictVisitor).map(Some);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Fetch<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        let (first, rest) = self.tokens.split_first().map_or((None, self.tokens), |(f, r)| (Some(f), r));
        let index = first.and_then(|t| parse_index(t));
        let (mut found, mut i) = (None, 0);
        loop {
            if index == Some(i) {
                match seq.next_element_seed(Fetch { tokens: rest })? {
                    Some(v) => found = v,
                    None => return Ok(found),
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(found);
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let (first, rest) = self.tokens.split_first().map_or((None, self.tokens), |(f, r)| (Some(f), r));
        let mut found = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if first.is_some_and(|t| *t == *key) {
                found = map.next_value_seed(Fetch { tokens: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------
// Field values
// ---------------------------------------------------------------------------

/// RFC 3339 strings, or epoch numbers (seconds below 1e11, else milliseconds).
fn parse_time(t: &Cap) -> Result<i64, Rejection> {
    let ms = match t {
        Cap::Str(s) => match utc_rfc3339_ms(s.trim()) {
            Some(ms) => ms,
            None => chrono::DateTime::parse_from_rfc3339(s.trim()).map(|d| d.timestamp_millis()).map_err(|e| {
                Rejection::new(Reason::InvalidTimestamp, format!("`{}` is not an RFC 3339 time: {e}", truncate(s, 64)))
            })?,
        },
        Cap::Num(n) => {
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
                format!("timestamp must be a string or a number, is {}", other.type_name()),
            ))
        }
    };
    if ms < MIN_TIME_MS {
        return Err(Rejection::new(Reason::InvalidTimestamp, "event time before the year 2000"));
    }
    Ok(ms)
}

/// The common form of an RFC 3339 time, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`
/// with a year from 2000 and at most 9 fractional digits, in milliseconds
/// since the epoch; `None` for anything else (chrono then parses it). For the
/// strings it accepts, it gives exactly what chrono gives.
fn utc_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num =
        |digits: &[u8]| digits.iter().try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')));
    let millis = match b.len() {
        20 if b[19] == b'Z' => 0,
        // `.` and 1 to 9 digits: milliseconds are the first three, truncated.
        n @ 22..=30 if b[19] == b'.' && b[n - 1] == b'Z' => {
            let frac = &b[20..n - 1];
            num(frac)?;
            let ms = num(&frac[..frac.len().min(3)])?;
            ms * 10i64.pow(3u32.saturating_sub(frac.len() as u32))
        }
        _ => return None,
    };
    let (y, m, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hh, mm, ss) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    // Leap seconds (`:60`) are left to chrono.
    if y < 2000 || d == 0 || d > month_days || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's `days_from_civil`, years >= 0).
    let y = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y / 400, y % 400);
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis)
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
    fn segment_alias() {
        let e = ok(
            r#"{"type":"alias","previousId":"anon-1","userId":"a1","anonymousId":"anon-1","timestamp":"2026-08-02T10:00:00Z","messageId":"m2"}"#,
        );
        assert_eq!(e.kind, Kind::Alias);
        assert_eq!(e.kind.as_str(), "alias");
        assert!(!e.kind.is_usage());
        assert_eq!((e.user_id.as_str(), e.anonymous), ("a1", false));
        assert_eq!(e.previous_id.as_deref(), Some("anon-1"));
        assert_eq!(e.account_id, None);
        // Numeric ids, as for user ids.
        let e = ok(r#"{"type":"alias","previousId":41,"userId":42,"timestamp":"2026-08-02T10:00:00Z"}"#);
        assert_eq!((e.user_id.as_str(), e.previous_id.as_deref()), ("42", Some("41")));
        // Other kinds never carry one.
        let e = ok(r#"{"type":"identify","previousId":"p","userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#);
        assert_eq!(e.previous_id, None);
        // A layout of its own.
        let mut cfg = crate::config::Config::default_config().input;
        cfg.fields.previous_id = vec!["/ids/previous".into(), "/previousId".into()];
        let d = Decoder::new(cfg);
        let e = d
            .decode(
                Some(br#"{"type":"alias","ids":{"previous":"old"},"userId":"new","timestamp":"2026-08-02T10:00:00Z"}"#),
                NOW,
            )
            .unwrap();
        assert_eq!(e.previous_id.as_deref(), Some("old"));
        let bad =
            d.decode(Some(br#"{"type":"alias","userId":"new","timestamp":"2026-08-02T10:00:00Z"}"#), NOW).unwrap_err();
        assert_eq!((bad.reason, bad.reason.as_str()), (Reason::MissingPreviousId, "missing_previous_id"));
        assert_eq!(bad.detail, "alias call without a previousId");
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
            (format!(r#"{{"type":"Alias","userId":"u","previousId":"p",{ts}}}"#).into_bytes(), Reason::UnsupportedType),
            (format!(r#"{{"type":"alias","userId":"u",{ts}}}"#).into_bytes(), Reason::MissingPreviousId),
            (
                format!(r#"{{"type":"alias","userId":"u","previousId":" ",{ts}}}"#).into_bytes(),
                Reason::MissingPreviousId,
            ),
            (
                format!(r#"{{"type":"alias","anonymousId":"v","previousId":"p",{ts}}}"#).into_bytes(),
                Reason::MissingUserId,
            ),
            (
                format!(r#"{{"type":"alias","userId":"u","previousId":["p"],{ts}}}"#).into_bytes(),
                Reason::WrongFieldType,
            ),
            (
                format!(r#"{{"type":"alias","userId":"u","previousId":"{}",{ts}}}"#, "p".repeat(2000)).into_bytes(),
                Reason::FieldTooLong,
            ),
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

    /// The decoder as it was before the one-pass parse (a strict
    /// `serde_json::Value` tree, then JSON pointers), kept as the reference
    /// the fast decoder must agree with: same event, or same rejection.
    mod reference {
        use super::super::*;

        pub fn decode(cfg: &InputConfig, payload: Option<&[u8]>, now_ms: i64) -> Result<Event, Rejection> {
            let bytes = match payload {
                None => return Err(Rejection::new(Reason::Empty, "null message value (tombstone)")),
                Some([]) => return Err(Rejection::new(Reason::Empty, "empty message")),
                Some(b) => b,
            };
            if bytes.len() > cfg.max_message_bytes {
                return Err(Rejection::new(
                    Reason::TooLarge,
                    format!("{} bytes, limit is {}", bytes.len(), cfg.max_message_bytes),
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
            decode_value(cfg, &value, now_ms)
        }

        fn decode_value(cfg: &InputConfig, v: &Value, now_ms: i64) -> Result<Event, Rejection> {
            let f = &cfg.fields;
            let kind = match string_field(v, &f.r#type, "type")? {
                None => return Err(Rejection::new(Reason::MissingType, "no `type` field")),
                Some(t) => match t.as_str() {
                    "track" => Kind::Track,
                    "page" | "screen" => Kind::Page,
                    "identify" => Kind::Identify,
                    "group" => Kind::Group,
                    "alias" => Kind::Alias,
                    other => {
                        return Err(Rejection::new(
                            Reason::UnsupportedType,
                            format!(
                                "type `{}` is not one of track, page, screen, identify, group, alias",
                                truncate(other, 64)
                            ),
                        ))
                    }
                },
            };
            let (user_id, anonymous, anonymous_id) = match id_field(v, &f.user_id, "userId")? {
                Some(u) => (u, false, id_field(v, &f.anonymous_id, "anonymousId").ok().flatten()),
                None => match id_field(v, &f.anonymous_id, "anonymousId")? {
                    Some(a) => (a, true, None),
                    None => return Err(Rejection::new(Reason::MissingUserId, "no user id and no anonymousId")),
                },
            };
            let previous_id = match (kind, anonymous) {
                (Kind::Alias, true) => {
                    return Err(Rejection::new(Reason::MissingUserId, "alias call without a userId"));
                }
                (Kind::Alias, false) => match id_field(v, &f.previous_id, "previousId")? {
                    Some(p) => Some(p),
                    None => return Err(Rejection::new(Reason::MissingPreviousId, "alias call without a previousId")),
                },
                _ => None,
            };
            let account_id = id_field(v, &f.account_id, "account id")?;
            let time_ms = match first(v, &f.timestamp) {
                None => {
                    return Err(Rejection::new(
                        Reason::MissingTimestamp,
                        "no timestamp, originalTimestamp or receivedAt",
                    ))
                }
                Some((_, t)) => parse_time(t)?,
            };
            if time_ms > now_ms.saturating_add(cfg.max_future_seconds.saturating_mul(1000)) {
                return Err(Rejection::new(
                    Reason::FutureTimestamp,
                    format!(
                        "event time {} is more than {} s ahead of the clock",
                        crate::emit::format_time_ms(time_ms),
                        cfg.max_future_seconds
                    ),
                ));
            }
            let anonymous_id = anonymous_id.filter(|a| a.len() <= MAX_ID_BYTES && *a != user_id);
            let mut event = Event {
                kind,
                user_id: user_id.into(),
                anonymous,
                anonymous_id: anonymous_id.map(Id::from),
                account_id: account_id.map(Id::from),
                time_ms,
                name: None,
                path: None,
                traits: None,
                message_id: string_field(v, &f.message_id, "messageId")?.map(Id::from),
                previous_id,
            };
            match kind {
                Kind::Track => match string_field(v, &f.event, "event")? {
                    Some(n) if !n.is_empty() => event.name = Some(n.into()),
                    _ => return Err(Rejection::new(Reason::MissingEventName, "track call without an `event` name")),
                },
                Kind::Page => {
                    event.name = string_field(v, &f.page_name, "name")?.map(Id::from);
                    event.path = match string_field(v, &f.page_path, "path")? {
                        Some(p) => Some(Id::from(strip_query(&p))),
                        None => string_field(v, &f.page_url, "url")?.map(|u| Id::from(url_path(&u))),
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
                Kind::Alias => {}
            }
            check_len("user id", Some(&event.user_id), MAX_ID_BYTES)?;
            check_len("previousId", event.previous_id.as_deref(), MAX_ID_BYTES)?;
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

        fn first<'v>(v: &'v Value, pointers: &'v [String]) -> Option<(&'v str, &'v Value)> {
            pointers.iter().find_map(|p| v.pointer(p).filter(|x| !x.is_null()).map(|x| (p.as_str(), x)))
        }

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

        fn parse_time(t: &Value) -> Result<i64, Rejection> {
            let ms = match t {
                Value::String(s) => {
                    chrono::DateTime::parse_from_rfc3339(s.trim()).map(|d| d.timestamp_millis()).map_err(|e| {
                        Rejection::new(
                            Reason::InvalidTimestamp,
                            format!("`{}` is not an RFC 3339 time: {e}", truncate(s, 64)),
                        )
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
    }

    /// Same result as the reference decoder: the same event, or the same
    /// rejection (reason and detail).
    fn same_as_reference(d: &Decoder, input: &[u8]) {
        let fast = d.decode(Some(input), NOW);
        let slow = reference::decode(&d.cfg, Some(input), NOW);
        assert_eq!(fast, slow, "input {:?}", String::from_utf8_lossy(&input[..input.len().min(300)]));
    }

    fn files(dir: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x != "gen") {
                out.push(std::fs::read(p).unwrap());
            }
        }
        assert!(!out.is_empty(), "{}", dir.display());
        out
    }

    /// Hand-written inputs for every path through the parser and the checks.
    fn tricky() -> Vec<String> {
        let ts = r#""timestamp":"2026-08-02T10:00:00Z""#;
        let mut v: Vec<String> = [
            r#"{"type":"track","event":"x","userId":"u","traits":{"a":1,"a":2},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","properties":{"list":[{"k":1,"k":2}]},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","userId":[1,"#,
            r#"{"type":"track","event":"x","userId":"u","u\u0073erId":"v","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"\u0074ype":"track","event":"x","userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"tr\u0061ck","event":"Caf\u00e9","userId":"\u0075","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","properties":{"s":"\ud800"},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","properties":{"n":1e400},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","properties":{"n":-0,"m":1.5e3,"k":18446744073709551616},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":-7,"timestamp":1785664800}"#,
            r#"{"type":"track","event":"x","userId":18446744073709551615,"timestamp":1785664800.5}"#,
            r#"{"type":"track","event":"x","userId":1e3,"timestamp":1785664800}"#,
            r#"{"type":"track","event":"x","userId":" ","context":{"groupId":""},"properties":{"accountId":7},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","context":{"groupId":null},"properties":{"groupId":" ","accountId":true},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","groupId":"late","context":"not an object","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","context":[{"groupId":"g"}],"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","timestamp":null,"originalTimestamp":null,"receivedAt":"2026-08-02T10:00:00+02:00"}"#,
            r#"{"type":"track","event":"x","userId":"u","timestamp":[],"originalTimestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","userId":"u","timestamp":"  2026-08-02T10:00:00Z  "}"#,
            r#"{"type":"track","event":"x","userId":"u","timestamp":99999999999999999999}"#,
            r#"{"type":"track","event":"x","userId":"u","timestamp":946684799999}"#,
            r#"{"type":"track","event":"x","userId":"u","timestamp":"2026-08-02T10:00:00Z","messageId":5}"#,
            r#"{"type":"track","event":null,"userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":{},"userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"page","userId":"u","timestamp":"2026-08-02T10:00:00Z","properties":{"path":5,"url":"https://x/y"}}"#,
            r#"{"type":"page","userId":"u","timestamp":"2026-08-02T10:00:00Z","properties":{"path":null,"url":7}}"#,
            r#"{"type":"page","userId":"u","timestamp":"2026-08-02T10:00:00Z","properties":{"name":"P","url":"https://x/y"},"context":{"page":{"path":"/z#f","url":false}}}"#,
            r#"{"type":"page","name":3,"userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"page","userId":"u","timestamp":"2026-08-02T10:00:00Z","properties":{"url":"no-scheme.example"}}"#,
            r#"{"type":"page","userId":"u","timestamp":"2026-08-02T10:00:00Z","properties":{"url":"https://x.example?q=/a"}}"#,
            r#"{"type":"identify","userId":"u","timestamp":"2026-08-02T10:00:00Z","traits":{"a":{"b":[1,{"c":null}]},"e":"\u00e9"}}"#,
            r#"{"traits":{"email":"a@b"},"timestamp":"2026-08-02T10:00:00Z","type":"identify","userId":"u"}"#,
            r#"{"context":{"traits":{"plan":"pro"}},"timestamp":"2026-08-02T10:00:00Z","type":"group","groupId":"g","userId":"u"}"#,
            r#"{"type":"group","userId":"u","context":{"traits":{"plan":"pro"}},"traits":{"name":"n"},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"group","userId":"u","context":{"traits":{"plan":"pro"}},"traits":null,"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"group","userId":"u","context":{"traits":{"plan":"pro"}},"traits":[1],"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"traits":[1],"type":"group","userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"group","userId":"u","context":{"traits":{"plan":"pro","plan":"x"}},"traits":{"name":"n"},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"identify","userId":"u","traits":{"k":1,"k":2},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"identify","userId":"u","traits":{"k":1,"k":[2,"#,
            r#"{"type":"identify","userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"identify","userId":"u","traits":{},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"alias","userId":"u","traits":{"k":1}}"#,
            r#"{"type":"alias","userId":"u","previousId":"p","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"alias","userId":"u","previousId":7,"anonymousId":"a","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"alias","userId":"u","previousId":"u","context":{"groupId":"g"},"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"alias","userId":"u","previousId":"","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"alias","userId":"u","previousId":null,"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"alias","userId":"u","previousId":1.5,"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"alias","userId":null,"anonymousId":"a","previousId":"p","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"alias","previousId":"p","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"previousId":"p","type":"alias","userId":"u"}"#,
            r#"{"type":"track","event":"x","userId":"u","previousId":[],"timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","anonymousId":" ","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"track","event":"x","anonymousId":"","userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"type":"","userId":"u"}"#,
            r#"{"type":["track"],"userId":"u"}"#,
            r#"{}"#,
            r#"  {"type":"screen","userId":"u","timestamp":"2026-08-02T10:00:00Z"}  "#,
            r#"{"type":"track","event":"x","userId":"u","timestamp":"2026-08-02T10:00:00Z"}{}"#,
            r#"[{"a":1,"a":2}]"#,
            r#"[1,2,"#,
            r#""\ud800""#,
            "{\"type\":\"track\",\"event\":\"x\",\"userId\":\"u\",\"timestamp\":\"2026-08-02T10:00:00Z\"}\n",
            "{\"type\":\"track\",\"event\":\"x\",\"userId\":\"u\",\"timestamp\":\"2026-08-02T10:00:00Z\",\"p\":\"\t\"}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Objects with many keys (the duplicate check switches to a hash set).
        for n in [31, 32, 33, 100] {
            let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            v.push(format!(r#"{{"type":"track","event":"x","userId":"u",{ts},"properties":{{{}}}}}"#, keys.join(",")));
            v.push(format!(
                r#"{{"type":"track","event":"x","userId":"u",{ts},"properties":{{{},"k{}":0}}}}"#,
                keys.join(","),
                n - 1
            ));
            v.push(format!(
                r#"{{"type":"track","event":"x","userId":"u",{ts},"properties":{{{},"k\u0030":0}}}}"#,
                keys.join(",")
            ));
            v.push(format!(
                r#"{{"type":"identify","userId":"u",{ts},"traits":{{{},"k{}":0}}}}"#,
                keys.join(","),
                n / 2
            ));
        }
        // Depth around serde_json's limit of 128.
        for depth in [120, 126, 127, 128, 129] {
            v.push(format!(
                r#"{{"type":"track","event":"x","userId":"u",{ts},"properties":{}1{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            ));
            v.push(format!(
                r#"{{"type":"identify","userId":"u",{ts},"traits":{}1{}}}"#,
                "{\"a\":".repeat(depth),
                "}".repeat(depth)
            ));
        }
        v
    }

    #[test]
    fn agrees_with_the_reference_decoder() {
        let d = decoder();
        let mut inputs: Vec<Vec<u8>> = tricky().into_iter().map(String::into_bytes).collect();
        inputs.extend(files("tests/corpus"));
        inputs.extend(files("fuzz/seeds/decode"));
        let sim = crate::sim::Simulator::new(crate::sim::SimConfig {
            seed: 3,
            accounts: 50,
            start_unix: 1_767_225_600,
            days: 30,
        });
        inputs.extend(sim.take(3000).map(|e| e.json.into_bytes()));
        for input in &inputs {
            same_as_reference(&d, input);
            // Every prefix of the short ones: truncated JSON at every byte.
            if input.len() < 400 {
                for end in 0..input.len() {
                    same_as_reference(&d, &input[..end]);
                }
            }
        }
    }

    #[test]
    fn agrees_with_the_reference_decoder_for_other_field_layouts() {
        let mut cfg = crate::config::Config::default_config().input;
        let f = &mut cfg.fields;
        f.r#type = vec!["/kind".into(), "/type".into(), "/meta/0/type".into()];
        f.user_id = vec!["/ids/user".into(), "/userId".into(), "/ids/list/1".into(), "".into()];
        f.account_id = vec!["/traits/company/id".into(), "/a~1b".into(), "/t~0x".into(), "not a pointer".into()];
        f.timestamp = vec!["/ts".into(), "/meta/0/time".into(), "/timestamp".into()];
        f.traits = vec!["/traits".into(), "/props/01".into(), "/props/1".into(), "/meta".into(), "".into()];
        f.event = vec!["/event".into(), "/ids".into(), "/".into()];
        f.message_id = vec!["/traits/company".into(), "/messageId".into()];
        f.previous_id = vec!["/ids/list/0".into(), "/previousId".into(), "".into()];
        let d = Decoder::new(cfg);
        let docs = [
            r#"{"kind":"identify","userId":"u","timestamp":"2026-08-02T10:00:00Z","traits":{"company":{"id":"c"}}}"#,
            r#"{"traits":{"company":{"id":"c"}},"kind":"identify","userId":"u","timestamp":"2026-08-02T10:00:00Z"}"#,
            r#"{"kind":"group","userId":"u","timestamp":"2026-08-02T10:00:00Z","props":{"01":{"x":1},"1":{"y":2}}}"#,
            r#"{"kind":"group","userId":"u","timestamp":"2026-08-02T10:00:00Z","props":[{"x":1},{"y":2}]}"#,
            r#"{"type":"group","userId":"u","timestamp":"2026-08-02T10:00:00Z","meta":[{"type":"x","time":1785664800000}]}"#,
            r#"{"meta":[{"type":"identify","time":1785664800000}],"ids":{"list":["a","b"]}}"#,
            r#"{"meta":[{"type":"track","time":1785664800000}],"ids":{"list":["a","b"]},"":"e"}"#,
            r#"{"meta":[{"type":"track","time":1785664800000}],"ids":{"list":["a"]},"event":"e","a/b":"ab","t~x":"tx"}"#,
            r#"{"kind":"identify","ts":"2026-08-02T10:00:00Z"}"#,
            r#"{"kind":"track","event":"e","userId":"u","ts":"2026-08-02T10:00:00Z","traits":{"company":"c"}}"#,
            r#"{"kind":"track","event":"e","userId":"u","ts":"2026-08-02T10:00:00Z","traits":{"company":{"id":" "}},"t~x":"tx"}"#,
            r#"{"kind":null,"type":"page","userId":"u","ts":"2026-08-02T10:00:00Z","a/b":"ab"}"#,
            r#"{"kind":"alias","userId":"u","ts":"2026-08-02T10:00:00Z","ids":{"list":["p",1]}}"#,
            r#"{"kind":"alias","userId":"u","ts":"2026-08-02T10:00:00Z","ids":{"list":[" "]},"previousId":"q"}"#,
        ];
        for doc in docs {
            for end in 0..=doc.len() {
                same_as_reference(&d, &doc.as_bytes()[..end]);
            }
        }
    }

    #[test]
    fn serialised_traits_grow_at_most_eightfold() {
        // The worst case is the shortest floats with the longest output.
        for num in ["1e5", "1E5", "2e-7", "1e22", "9e99", "0.1", "1.5", "-1e5", "1e300", "12345678901234567890123"] {
            for text in [format!(r#"{{"k":{num}}}"#), format!(r#"{{"k":[{}]}}"#, vec![num; 100].join(","))] {
                let m: Map<String, Value> = serde_json::from_str(&text).unwrap();
                assert!(json_len(&m) <= 8 * text.len(), "{text}: {} bytes serialised", json_len(&m));
            }
        }
    }

    #[test]
    fn common_rfc3339_times_as_chrono_reads_them() {
        let chrono_ms = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis());
        let mut n = 0;
        for y in [2000, 2001, 2024, 2025, 2026, 2100, 2400, 9999] {
            for m in 0..=13 {
                for d in [0, 1, 15, 28, 29, 30, 31, 32] {
                    for (hh, mm, ss) in [(0, 0, 0), (23, 59, 59), (12, 30, 45), (24, 0, 0), (0, 60, 0), (23, 59, 60)] {
                        for frac in ["", ".5", ".05", ".123", ".1234", ".999999999", ".1234567891", "."] {
                            let s = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}{frac}Z");
                            if let Some(ms) = utc_rfc3339_ms(&s) {
                                assert_eq!(Some(ms), chrono_ms(&s), "{s}");
                                n += 1;
                            } else {
                                assert!(
                                    chrono_ms(&s).is_none_or(|_| frac.len() > 10 || ss == 60),
                                    "{s}: chrono reads it, the fast path should too"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(n > 5_000, "{n}");
        for s in [
            "2026-08-02t10:00:00Z",
            "2026-08-02 10:00:00Z",
            "2026-08-02T10:00:00z",
            "2026-08-02T10:00:00+00:00",
            "2026-08-02T10:00:00",
            "2026-8-02T10:00:00Z",
            "+2026-08-02T10:00:00Z",
            "1999-12-31T23:59:59Z",
            "2026-08-02T10:00:0xZ",
        ] {
            assert_eq!(utc_rfc3339_ms(s), None, "{s}");
        }
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        /// Pieces of Segment-like JSON, valid and not.
        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just("null".to_string()),
                Just("true".to_string()),
                Just("\"\"".to_string()),
                Just("\"  \"".to_string()),
                Just("\"track\"".to_string()),
                Just("\"identify\"".to_string()),
                Just("\"group\"".to_string()),
                Just("\"alias\"".to_string()),
                Just("\"page\"".to_string()),
                Just("\"2026-08-02T10:00:00Z\"".to_string()),
                Just("\"https://x.example/a/b?c#d\"".to_string()),
                Just("\"\\u0074rack\"".to_string()),
                Just("\"\\ud800\"".to_string()),
                Just("1785664800000".to_string()),
                Just("-3".to_string()),
                Just("2.5".to_string()),
                Just("1e400".to_string()),
                "[a-z/]{0,6}".prop_map(|s| format!("\"{s}\"")),
                (0u64..u64::MAX).prop_map(|n| n.to_string()),
            ];
            leaf.prop_recursive(4, 24, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                    prop::collection::vec((key(), inner), 0..6).prop_map(|kv| {
                        let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                        format!("{{{}}}", body.join(","))
                    }),
                ]
            })
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("\"type\""),
                Just("\"event\""),
                Just("\"userId\""),
                Just("\"previousId\""),
                Just("\"anonymousId\""),
                Just("\"timestamp\""),
                Just("\"originalTimestamp\""),
                Just("\"receivedAt\""),
                Just("\"messageId\""),
                Just("\"context\""),
                Just("\"properties\""),
                Just("\"traits\""),
                Just("\"groupId\""),
                Just("\"accountId\""),
                Just("\"name\""),
                Just("\"path\""),
                Just("\"url\""),
                Just("\"page\""),
                Just("\"u\\u0073erId\""),
                Just("\"x\""),
            ]
            .prop_map(str::to_string)
        }

        fn message() -> impl Strategy<Value = Vec<u8>> {
            (prop::collection::vec((key(), value()), 0..10), any::<u16>(), any::<u8>(), any::<bool>()).prop_map(
                |(kv, cut, byte, mutate)| {
                    let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    let mut b = format!("{{{}}}", body.join(",")).into_bytes();
                    if mutate && !b.is_empty() {
                        let i = usize::from(cut) % b.len();
                        if byte % 2 == 0 {
                            b.truncate(i);
                        } else {
                            b[i] = byte;
                        }
                    }
                    b
                },
            )
        }

        proptest! {
            #[test]
            fn common_rfc3339_times_as_chrono_reads_them(s in "(19|20|21|99)[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,11})?[Zz]?") {
                if let Some(ms) = utc_rfc3339_ms(&s) {
                    let chrono_ms = chrono::DateTime::parse_from_rfc3339(&s).map(|d| d.timestamp_millis());
                    prop_assert_eq!(Ok(ms), chrono_ms.map_err(|_| ()), "{}", s);
                }
            }
        }

        proptest! {
            // `PQA_DECODE_CASES=5000000` for a long differential fuzz run.
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PQA_DECODE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
            ))]
            #[test]
            fn agrees_with_the_reference_decoder(msg in message()) {
                let d = decoder();
                let fast = d.decode(Some(&msg), NOW);
                let slow = reference::decode(&d.cfg, Some(&msg), NOW);
                prop_assert_eq!(fast, slow, "input {:?}", String::from_utf8_lossy(&msg));
            }
        }
    }
}
