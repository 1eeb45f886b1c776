//! One pass over the history: every line decoded with the engine's
//! decoder, every event kept as 12 bytes in its account's log (time,
//! candidate, user), and every occurrence of the definition's signals
//! beside it. What `analyze` needs afterwards (each account's moment, what
//! it did before, its metrics then) is read from these logs, not from the
//! file again.
//!
//! Accounts are found as the engine finds them: the event's account, else
//! the account its user last named. A visitor's event (only an
//! `anonymousId`) with an account counts for the account, not for its
//! users; without one it is skipped, as the engine skips it. (The engine's
//! login link, which moves a visitor's past activity onto the user, is not
//! replayed here: such activity stays the account's but counts for no
//! user.)

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use super::paths;
use crate::config::CompiledDefinition;
use crate::decode::{Decoder, Kind};

type Map<K, V> = HashMap<K, V, Xxh3DefaultBuilder>;

/// Event times are kept as seconds since this instant (2000-01-01, the
/// earliest the decoder accepts): a `u32` reaches 2136.
pub const EPOCH_S: i64 = 946_684_800;

/// Seconds since [`EPOCH_S`] of an event time in milliseconds.
pub fn secs(time_ms: i64) -> u32 {
    (time_ms / 1000 - EPOCH_S).clamp(0, u32::MAX as i64) as u32
}

/// Milliseconds of a time kept as [`secs`].
pub fn ms(t: u32) -> i64 {
    (t as i64 + EPOCH_S) * 1000
}

/// What kind of behaviour a candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CandidateKind {
    /// A `track` event name.
    Track,
    /// A page path pattern.
    Page,
    /// A user trait becoming a value (`identify`).
    Trait,
    /// A call that touches the account but is no candidate (an `identify`
    /// or `group` without a trait change).
    Touch,
}

impl CandidateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Track => "track",
            CandidateKind::Page => "page",
            CandidateKind::Trait => "trait",
            CandidateKind::Touch => "touch",
        }
    }
}

/// A behaviour an account may show.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: CandidateKind,
    /// The event name, the path pattern (`/boards/:id`), or for a trait
    /// `name` and value (lower-case) as `name = value`.
    pub text: String,
    /// For a trait: its name and value apart.
    pub trait_name: String,
    pub trait_value: String,
    /// For a page pattern: up to three paths as they appeared.
    pub examples: Vec<String>,
    /// For a track event: the definition's filtered counters it counts in
    /// (their columns).
    pub counters: Vec<usize>,
}

/// One event in an account's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEvent {
    /// [`secs`] of its time.
    pub t: u32,
    /// Index into [`History::candidates`].
    pub item: u32,
    /// Index into the users; [`NO_USER`] for a visitor.
    pub user: u32,
}

/// The user of a visitor's event (counts for no user).
pub const NO_USER: u32 = u32::MAX;

/// An occurrence of one of the definition's signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalHit {
    pub t: u32,
    /// Index into the definition's signals.
    pub signal: u16,
    pub user: u32,
}

/// One account's history.
#[derive(Debug, Clone, Default)]
pub struct AccountLog {
    /// In time order (stable: same-second events keep file order).
    pub events: Vec<LogEvent>,
    /// In time order.
    pub signals: Vec<SignalHit>,
}

impl AccountLog {
    /// Time of its first event.
    pub fn first_t(&self) -> Option<u32> {
        self.events.first().map(|e| e.t)
    }

    /// Events with `lo <= t < hi`.
    pub fn between(&self, lo: u32, hi: u32) -> &[LogEvent] {
        let a = self.events.partition_point(|e| e.t < lo);
        let b = self.events.partition_point(|e| e.t < hi);
        &self.events[a..b.max(a)]
    }
}

/// What the pass read.
#[derive(Debug, Default)]
pub struct History {
    pub account_ids: Vec<String>,
    pub accounts: Vec<AccountLog>,
    /// Candidate 0 is [`CandidateKind::Touch`].
    pub candidates: Vec<Candidate>,
    pub users: u64,
    /// Non-blank lines read.
    pub lines: u64,
    /// Events kept.
    pub events: u64,
    /// Lines the decoder refused, by reason.
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
    /// Events with no account to count for (visitors without one, calls
    /// of users with no known account).
    pub without_account: u64,
    /// Page views without a path (screens): they count as usage but are no
    /// candidate.
    pub pages_without_path: u64,
    /// Earliest and latest event time kept (ms).
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Per trait name, how many distinct values it took.
    pub trait_values: std::collections::BTreeMap<String, u64>,
}

impl History {
    pub fn account_index(&self) -> Map<&str, usize> {
        self.account_ids.iter().enumerate().map(|(i, a)| (a.as_str(), i)).collect()
    }
}

/// Longest trait value kept as a candidate (longer ones are free text).
const MAX_TRAIT_VALUE: usize = 64;

/// The state of the pass.
struct Pass<'a> {
    def: &'a CompiledDefinition,
    h: History,
    accounts: Map<String, u32>,
    users: Map<String, u32>,
    /// Per user: the account they last named.
    user_account: Vec<u32>,
    /// Per user: trait name id -> value id (lower-case); values of other
    /// types are forgotten.
    user_traits: Vec<Vec<(u32, u32)>>,
    trait_names: Map<String, u32>,
    trait_name_list: Vec<String>,
    trait_value_ids: Map<String, u32>,
    trait_value_list: Vec<String>,
    /// Candidates by kind (track, page, trait) and text.
    cands: [Map<String, u32>; 3],
    /// Per trait candidate (name id, value id) -> candidate.
    trait_cands: Map<(u32, u32), u32>,
    /// Per track candidate: the signals it is (indices).
    track_signals: Vec<Vec<u16>>,
    /// Per definition signal with a trait: (name id, lower-case values).
    signal_traits: Vec<(u16, String, Vec<String>)>,
    distinct_trait_values: Map<(u32, u32), ()>,
}

const NO_ACCOUNT: u32 = u32::MAX;

impl<'a> Pass<'a> {
    fn new(def: &'a CompiledDefinition) -> Pass<'a> {
        let mut h = History::default();
        h.candidates.push(Candidate {
            kind: CandidateKind::Touch,
            text: String::new(),
            trait_name: String::new(),
            trait_value: String::new(),
            examples: Vec::new(),
            counters: Vec::new(),
        });
        let signal_traits = def
            .signals
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.trait_change
                    .as_ref()
                    .map(|(n, v)| (i as u16, n.clone(), v.iter().map(|x| x.to_ascii_lowercase()).collect()))
            })
            .collect();
        Pass {
            def,
            h,
            accounts: Map::default(),
            users: Map::default(),
            user_account: Vec::new(),
            user_traits: Vec::new(),
            trait_names: Map::default(),
            trait_name_list: Vec::new(),
            trait_value_ids: Map::default(),
            trait_value_list: Vec::new(),
            cands: Default::default(),
            trait_cands: Map::default(),
            track_signals: vec![Vec::new()],
            signal_traits,
            distinct_trait_values: Map::default(),
        }
    }

    fn candidate(&mut self, kind: CandidateKind, text: &str) -> u32 {
        let k = kind as usize;
        if let Some(&c) = self.cands[k].get(text) {
            return c;
        }
        let id = self.h.candidates.len() as u32;
        let counters = if kind == CandidateKind::Track {
            self.def
                .counters
                .iter()
                .enumerate()
                .filter(|(_, c)| c.as_ref().is_some_and(|set| set.contains(text)))
                .map(|(i, _)| i)
                .collect()
        } else {
            Vec::new()
        };
        let signals = if kind == CandidateKind::Track {
            self.def
                .signals
                .iter()
                .enumerate()
                .filter(|(_, s)| s.track_events.contains(text))
                .map(|(i, _)| i as u16)
                .collect()
        } else {
            Vec::new()
        };
        self.h.candidates.push(Candidate {
            kind,
            text: text.to_string(),
            trait_name: String::new(),
            trait_value: String::new(),
            examples: Vec::new(),
            counters,
        });
        self.track_signals.push(signals);
        self.cands[k].insert(text.to_string(), id);
        id
    }

    fn account(&mut self, id: &str) -> u32 {
        if let Some(&a) = self.accounts.get(id) {
            return a;
        }
        let a = self.h.account_ids.len() as u32;
        self.h.account_ids.push(id.to_string());
        self.h.accounts.push(AccountLog::default());
        self.accounts.insert(id.to_string(), a);
        a
    }

    fn user(&mut self, id: &str) -> u32 {
        if let Some(&u) = self.users.get(id) {
            return u;
        }
        let u = self.user_account.len() as u32;
        self.user_account.push(NO_ACCOUNT);
        self.user_traits.push(Vec::new());
        self.users.insert(id.to_string(), u);
        u
    }

    fn intern_trait_name(&mut self, n: &str) -> u32 {
        if let Some(&i) = self.trait_names.get(n) {
            return i;
        }
        let i = self.trait_name_list.len() as u32;
        self.trait_name_list.push(n.to_string());
        self.trait_names.insert(n.to_string(), i);
        i
    }

    fn intern_trait_value(&mut self, v: &str) -> u32 {
        if let Some(&i) = self.trait_value_ids.get(v) {
            return i;
        }
        let i = self.trait_value_list.len() as u32;
        self.trait_value_list.push(v.to_string());
        self.trait_value_ids.insert(v.to_string(), i);
        i
    }

    /// One decoded line (or the decoder's refusal).
    fn line(&mut self, decoded: Result<crate::decode::Event, crate::decode::Rejection>) {
        self.h.lines += 1;
        let ev = match decoded {
            Ok(ev) => ev,
            Err(r) => {
                *self.h.rejected.entry(r.reason.as_str()).or_default() += 1;
                return;
            }
        };
        let user = if ev.anonymous { NO_USER } else { self.user(&ev.user_id) };
        let named = ev.account_id.as_deref().map(|a| self.account(a));
        let account = match (named, user) {
            (Some(a), NO_USER) => a,
            (Some(a), u) => {
                self.user_account[u as usize] = a;
                a
            }
            (None, NO_USER) => NO_ACCOUNT,
            (None, u) => self.user_account[u as usize],
        };
        if ev.anonymous && (account == NO_ACCOUNT || !ev.kind.is_usage()) {
            self.h.without_account += 1;
            return;
        }
        let t = secs(ev.time_ms);
        // Trait changes (identify): candidates, and the definition's trait
        // signals, as the engine judges them (a value becomes one of
        // `becomes`, case-insensitively, from another value or none).
        let mut items: smallvec_lite::Items = smallvec_lite::Items::default();
        let mut hits: smallvec_lite::Items = smallvec_lite::Items::default();
        if ev.kind == Kind::Identify && user != NO_USER {
            if let Some(traits) = &ev.traits {
                for (k, v) in traits {
                    let name = self.intern_trait_name(k);
                    let new = match v {
                        Value::String(s) if s.len() <= 256 => Some(self.intern_trait_value(&s.to_ascii_lowercase())),
                        _ => None,
                    };
                    let cur = self.user_traits[user as usize].iter().position(|x| x.0 == name);
                    let old = cur.map(|p| self.user_traits[user as usize][p].1);
                    if let Some((sig, _, becomes)) =
                        self.signal_traits.iter().find(|(_, n, _)| n == k).map(|x| (x.0, &x.1, &x.2))
                    {
                        let is = |id: Option<u32>| {
                            id.is_some_and(|i| becomes.iter().any(|b| *b == self.trait_value_list[i as usize]))
                        };
                        if is(new) && !is(old) {
                            hits.push(sig as u32);
                        }
                    }
                    match (new, cur) {
                        (Some(n), Some(p)) => self.user_traits[user as usize][p].1 = n,
                        (Some(n), None) => self.user_traits[user as usize].push((name, n)),
                        (None, Some(p)) => {
                            self.user_traits[user as usize].swap_remove(p);
                        }
                        (None, None) => {}
                    }
                    if let Some(n) = new {
                        if old != Some(n) && self.trait_value_list[n as usize].len() <= MAX_TRAIT_VALUE {
                            self.distinct_trait_values.insert((name, n), ());
                            let c = match self.trait_cands.get(&(name, n)) {
                                Some(&c) => c,
                                None => {
                                    let (tn, tv) = (k.clone(), self.trait_value_list[n as usize].clone());
                                    let c = self.candidate(CandidateKind::Trait, &format!("{tn} = {tv}"));
                                    let cand = &mut self.h.candidates[c as usize];
                                    cand.trait_name = tn;
                                    cand.trait_value = tv;
                                    self.trait_cands.insert((name, n), c);
                                    c
                                }
                            };
                            items.push(c);
                        }
                    }
                }
            }
        }
        if account == NO_ACCOUNT {
            if !matches!(ev.kind, Kind::Identify | Kind::Alias) {
                self.h.without_account += 1;
            }
            return;
        }
        match ev.kind {
            Kind::Track => {
                let name = ev.name.as_deref().unwrap_or_default();
                let c = self.candidate(CandidateKind::Track, name);
                for &s in &self.track_signals[c as usize] {
                    hits.push(s as u32);
                }
                items.push(c);
            }
            Kind::Page => match ev.path.as_deref() {
                Some(path) => {
                    for (i, s) in self.def.signals.iter().enumerate() {
                        if s.page_path.as_ref().is_some_and(|r| r.is_match(path)) {
                            hits.push(i as u32);
                        }
                    }
                    let pattern = paths::collapse(path);
                    let c = self.candidate(CandidateKind::Page, &pattern);
                    let ex = &mut self.h.candidates[c as usize].examples;
                    if ex.len() < 3 && !ex.iter().any(|e| e == path) {
                        ex.push(path.to_string());
                    }
                    items.push(c);
                }
                None => {
                    self.h.pages_without_path += 1;
                    items.push(PAGE_WITHOUT_PATH);
                }
            },
            // (An alias links two ids in the engine; the log keeps each id's
            // own events, which is all the candidates need.)
            Kind::Identify | Kind::Group | Kind::Alias => {
                if items.is_empty() {
                    items.push(0);
                }
            }
        }
        let log = &mut self.h.accounts[account as usize];
        for &c in items.as_slice() {
            log.events.push(LogEvent { t, item: c, user });
        }
        for &s in hits.as_slice() {
            log.signals.push(SignalHit { t, signal: s as u16, user });
        }
        self.h.events += 1;
        self.h.first_ms = Some(self.h.first_ms.map_or(ev.time_ms, |f| f.min(ev.time_ms)));
        self.h.last_ms = Some(self.h.last_ms.map_or(ev.time_ms, |l| l.max(ev.time_ms)));
    }

    fn finish(mut self) -> History {
        for log in &mut self.h.accounts {
            if !log.events.windows(2).all(|w| w[0].t <= w[1].t) {
                log.events.sort_by_key(|e| e.t);
            }
            if !log.signals.windows(2).all(|w| w[0].t <= w[1].t) {
                log.signals.sort_by_key(|e| e.t);
            }
            log.events.shrink_to_fit();
        }
        self.h.users = self.user_account.len() as u64;
        for &(name, _) in self.distinct_trait_values.keys() {
            *self.h.trait_values.entry(self.trait_name_list[name as usize].clone()).or_default() += 1;
        }
        self.h
    }
}

/// The item of a page view without a path: usage, no candidate. Never an
/// index into the candidates.
pub const PAGE_WITHOUT_PATH: u32 = u32::MAX;

/// A few items per event without allocating.
mod smallvec_lite {
    #[derive(Default)]
    pub struct Items {
        n: usize,
        inline: [u32; 8],
        more: Vec<u32>,
    }

    impl Items {
        pub fn push(&mut self, x: u32) {
            if self.n < self.inline.len() {
                self.inline[self.n] = x;
            } else {
                if self.more.is_empty() {
                    self.more.extend_from_slice(&self.inline);
                }
                self.more.push(x);
            }
            self.n += 1;
        }
        pub fn is_empty(&self) -> bool {
            self.n == 0
        }
        pub fn as_slice(&self) -> &[u32] {
            if self.n <= self.inline.len() {
                &self.inline[..self.n]
            } else {
                &self.more
            }
        }
    }
}

/// Counts the bytes read from the file (for the progress bar: compressed
/// bytes, for a gzip file).
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

/// An opened input: the reader, the number of bytes read so far, and the
/// file's size when it has one.
pub type Opened = (Box<dyn BufRead + Send>, Arc<AtomicU64>, Option<u64>);

/// The input, plain or gzip, `-` for standard input; with the number of
/// bytes read so far and the file's size when it has one.
pub fn open(path: &Path) -> io::Result<Opened> {
    let n = Arc::new(AtomicU64::new(0));
    let (raw, size): (Box<dyn Read + Send>, Option<u64>) = if path == Path::new("-") {
        (Box::new(io::stdin()), None)
    } else {
        let f = std::fs::File::open(path)?;
        let size = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
        (Box::new(f), size)
    };
    let mut buf = BufReader::with_capacity(1 << 20, Counting { inner: raw, n: n.clone() });
    let gz = buf.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let r: Box<dyn BufRead + Send> = if gz {
        Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(buf)))
    } else {
        Box::new(buf)
    };
    Ok((r, n, size))
}

/// Reads the history in `input` on three threads: one reads (and
/// decompresses) blocks of whole lines, one decodes them with the engine's
/// decoder, and the calling thread keeps what they hold (the part that needs
/// the order of the lines: accounts, users, traits). `progress(lines)` is
/// called every block.
pub fn read_history(
    input: Box<dyn BufRead + Send>,
    def: &CompiledDefinition,
    input_cfg: crate::config::InputConfig,
    now_ms: i64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<History> {
    const BLOCK: usize = 4 << 20;
    /// Whole lines, and where each ends (found while reading, so that no
    /// other thread scans for line breaks).
    struct Block {
        data: Vec<u8>,
        ends: Vec<usize>,
    }
    type Decoded = Vec<Result<crate::decode::Event, crate::decode::Rejection>>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Block>>(4);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Block>();
    let (dtx, drx) = std::sync::mpsc::sync_channel::<io::Result<Decoded>>(4);
    let reader = std::thread::Builder::new().name("analyze-read".into()).spawn(move || {
        let mut input = input;
        loop {
            let mut block = back_rx.try_recv().unwrap_or_else(|_| Block {
                data: Vec::with_capacity(BLOCK + 4096),
                ends: Vec::with_capacity(BLOCK / 128),
            });
            block.data.clear();
            block.ends.clear();
            while block.data.len() < BLOCK {
                match input.read_until(b'\n', &mut block.data) {
                    Ok(0) => break,
                    Ok(_) => block.ends.push(block.data.len()),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            if block.data.is_empty() {
                return;
            }
            if tx.send(Ok(block)).is_err() {
                return;
            }
        }
    })?;
    let decoder = Decoder::new(input_cfg);
    let decoding = std::thread::Builder::new().name("analyze-decode".into()).spawn(move || {
        for block in rx {
            let block = match block {
                Ok(b) => b,
                Err(e) => {
                    let _ = dtx.send(Err(e));
                    return;
                }
            };
            let mut out = Vec::with_capacity(block.ends.len());
            let mut start = 0;
            for &end in &block.ends {
                let mut line = &block.data[start..end];
                start = end;
                while let [rest @ .., b'\n' | b'\r'] = line {
                    line = rest;
                }
                if !line.iter().all(u8::is_ascii_whitespace) {
                    out.push(decoder.decode(Some(line), now_ms));
                }
            }
            let _ = back_tx.send(block);
            if dtx.send(Ok(out)).is_err() {
                return;
            }
        }
    })?;
    let mut pass = Pass::new(def);
    for decoded in drx {
        for d in decoded? {
            pass.line(d);
        }
        progress(pass.h.lines);
    }
    reader.join().map_err(|_| io::Error::other("the reading thread panicked"))?;
    decoding.join().map_err(|_| io::Error::other("the decoding thread panicked"))?;
    Ok(pass.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn read(lines: &[&str]) -> History {
        let cfg = Config::default_config();
        let def = cfg.definition.compile().unwrap();
        let text = lines.join("\n");
        read_history(Box::new(io::Cursor::new(text.into_bytes())), &def, cfg.input, i64::MAX / 2, &mut |_| {}).unwrap()
    }

    #[test]
    fn accounts_users_candidates_and_signals() {
        let h = read(&[
            r#"{"type":"identify","userId":"u1","timestamp":"2026-03-01T09:00:00Z","traits":{"role":"Member","email":"a@x.io"}}"#,
            r#"{"type":"group","userId":"u1","groupId":"acct-1","timestamp":"2026-03-01T09:00:01Z","traits":{"name":"X"}}"#,
            r#"{"type":"track","event":"Board Created","userId":"u1","timestamp":"2026-03-01T10:00:00Z"}"#,
            r#"{"type":"page","userId":"u1","timestamp":"2026-03-01T10:01:00Z","properties":{"path":"/boards/b-7"}}"#,
            r#"{"type":"page","userId":"u1","timestamp":"2026-03-01T10:02:00Z","properties":{"path":"/boards/b-8"}}"#,
            r#"{"type":"page","userId":"u1","timestamp":"2026-03-01T10:03:00Z","properties":{"path":"/legal/privacy"}}"#,
            r#"{"type":"identify","userId":"u1","timestamp":"2026-03-01T11:00:00Z","traits":{"role":"ADMIN"}}"#,
            r#"{"type":"identify","userId":"u1","timestamp":"2026-03-01T11:30:00Z","traits":{"role":"admin"}}"#,
            r#"{"type":"track","event":"Demo Requested","anonymousId":"v1","timestamp":"2026-03-01T09:30:00Z","context":{"groupId":"acct-1"}}"#,
            r#"{"type":"track","event":"Board Viewed","anonymousId":"v2","timestamp":"2026-03-01T09:30:00Z"}"#,
            r#"{"type":"track","event":"Board Viewed","userId":"u9","timestamp":"2026-03-01T09:30:00Z"}"#,
            r#"not json"#,
        ]);
        assert_eq!(h.account_ids, ["acct-1"]);
        assert_eq!((h.lines, h.events, h.without_account), (12, 8, 2));
        assert_eq!(h.rejected.get("invalid_json"), Some(&1));
        let text = |i: u32| h.candidates[i as usize].text.clone();
        let log = &h.accounts[0];
        // The visitor's Demo Requested (09:30) sorts before the track at 10:00.
        let names: Vec<String> = log.events.iter().map(|e| text(e.item)).collect();
        assert_eq!(
            names,
            ["", "Demo Requested", "Board Created", "/boards/:id", "/boards/:id", "/legal/privacy", "role = admin", ""]
        );
        assert_eq!(log.events[1].user, NO_USER);
        let boards = h.candidates.iter().find(|c| c.text == "/boards/:id").unwrap();
        assert_eq!(boards.examples, ["/boards/b-7", "/boards/b-8"]);
        // The first identify had no account yet: its trait change (role =
        // member) counted for no account. ADMIN then admin: one change.
        assert!(h.candidates.iter().any(|c| c.text == "role = member"));
        // Signals: hand_raise (visitor), legal_page_visit, admin_switch once.
        let def = Config::default_config().definition.compile().unwrap();
        let sig: Vec<&str> = log.signals.iter().map(|s| def.signals[s.signal as usize].name.as_str()).collect();
        assert_eq!(sig, ["hand_raise", "legal_page_visit", "admin_switch"]);
        assert_eq!(h.trait_values.get("role"), Some(&2));
        assert_eq!(h.users, 2);
    }
}
