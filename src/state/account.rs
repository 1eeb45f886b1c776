//! The records kept per account, per (account, user) and per user, and the
//! window arithmetic over their time buckets.
//!
//! Time is event time, cut into buckets of `bucket_seconds` (one hour by
//! default). A trailing window of `w` buckets at bucket `now` covers buckets
//! `now - w + 1 ..= now`; with an offset `o` it covers
//! `now - o - w + 1 ..= now - o`. So a window boundary is exact to one bucket.
//!
//! Distinct users are exact: each (account, user) record holds the user's
//! last-seen bucket, and the account holds a histogram of users by last-seen
//! bucket, so "users active in the last 28 days" is a sum over that
//! histogram. Distinct features work the same way with a small map.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::layout::Layout;
use crate::config::definition::{CompiledDefinition, Metric, MetricKind};

/// At most this many distinct feature names are tracked per account (the
/// least recently used is dropped), so a misbehaving event-name generator
/// cannot blow up a record.
pub const MAX_FEATURES: usize = 512;
/// At most this many occurrences of one signal are kept per account.
pub const MAX_SIGNAL_HITS: usize = 64;

/// Events of one time bucket; one count per counter slot of the definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub idx: u32,
    /// Inline up to four columns (the shipped definition has one): a new
    /// bucket, on the long tail one nearly every event, allocates nothing.
    /// Encoded as a `Vec` is (a length, then the counts).
    pub counts: Counts,
}

/// A bucket's counts, one per column.
pub type Counts = smallvec::SmallVec<[u32; 4]>;

/// One occurrence of a signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalHit {
    /// What the signal means ([`crate::config::definition::signal_id`]).
    pub signal: u64,
    pub user: String,
    pub at_ms: i64,
}

/// What has been announced for the account (cooldown bookkeeping).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Announced {
    /// Rule name -> event time it was last announced.
    pub rules: Vec<(String, i64)>,
    /// The tier last announced and when.
    pub tier: Option<(String, i64)>,
    /// A qualification is standing (announced, no disqualification since).
    pub active: bool,
}

/// A counter or signal an account keeps: what it means, and from which
/// bucket on it holds everything (0: since the account began). A column
/// added to an account that already had events starts after its latest
/// event: windows reaching further back are *warming up*.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub id: u64,
    pub from: u32,
}

/// Per-account state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    /// Event time the account was first seen (any call); 0 = never.
    pub first_seen_ms: i64,
    /// The account's clock: the latest event time applied to it.
    pub last_seen_ms: i64,
    /// Events applied to this account: part of deterministic output ids.
    pub seq: u64,
    /// The counters of `buckets`, column by column.
    pub columns: Vec<Column>,
    /// Sorted by `idx`; `counts[i]` is column `i`.
    pub buckets: Vec<Bucket>,
    /// Last-seen bucket -> number of users whose last activity is there.
    /// Sorted by bucket.
    pub user_hist: Vec<(u32, u32)>,
    /// Feature (track event name) -> last-seen bucket.
    pub features: Vec<(CompactString, u32)>,
    /// The signals kept in `signals`.
    pub signal_columns: Vec<Column>,
    /// Sorted by time.
    pub signals: Vec<SignalHit>,
    /// Everything before this bucket has been dropped (history is complete
    /// from here on). It only grows: a definition with a longer window than
    /// the one before finds the history it needs missing until it has
    /// passed.
    pub kept_from: u32,
    /// Account traits from `group` calls, as a JSON object.
    pub traits_json: String,
    /// Email domains of the account's users (those with an email and a
    /// usage event in it): domain -> users. Gives the company domain and
    /// whether it is a personal account.
    pub email_domains: Vec<(CompactString, u32)>,
    /// The live definition's announcements (cooldowns, by rule name: they
    /// carry over when the definition changes).
    pub announced: Announced,
    /// Each shadow definition's own announcements, by its version.
    pub shadow_announced: Vec<(String, Announced)>,
    // Fields below were added after schema 2 was released: a record
    // written before them is read by [`decode_account`] as a
    // [`AccountStateV2`] and given their defaults.
    /// When the disqualification sweep looks at the account again (event
    /// time; 0: not scheduled): the first moment a running definition may
    /// stop qualifying it with no further event.
    pub sweep_due_ms: i64,
    /// The live definition's announcement waiting for budget, if any.
    pub held: Option<Held>,
    /// A qualification of the live definition reached the output topic and
    /// no disqualification has followed (what sales has been told; the
    /// same as `announced.active` unless the budget held or dropped an
    /// announcement).
    pub announced_out: bool,
    // Fields below were added after `announced_out`: a record written
    // before them is read as an [`AccountStateV3`].
    /// The input partition of the account's latest event (an outcome that
    /// arrives on another partition of the outcomes topic is applied here,
    /// or dead-lettered when that partition belongs to another instance).
    pub partition: Option<i32>,
    /// The running definitions' announcements (qualifications), oldest
    /// first, at most [`MAX_SENT`]: what outcomes are joined to.
    pub sent: Vec<Sent>,
    /// What sales reported about the account, in the order received, at
    /// most [`MAX_OUTCOMES`].
    pub outcomes: Vec<StoredOutcome>,
}

/// Announcements kept per account to join outcomes to.
pub const MAX_SENT: usize = 64;
/// Outcomes kept per account.
pub const MAX_OUTCOMES: usize = 64;

/// A qualification a definition announced (live: what reached the output
/// topic; a shadow: what it would have announced).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    /// The definition's version.
    pub version: String,
    /// The CloudEvent id.
    pub id: String,
    pub rules: Vec<String>,
    /// Event time of the announcement.
    pub at_ms: i64,
}

/// An outcome as kept with its account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOutcome {
    pub outcome: crate::outcome::OutcomeKind,
    pub at_ms: i64,
    pub pqa_event_id: Option<String>,
    pub rule: Option<String>,
    pub amount: Option<f64>,
    /// Where it was read: outcomes-topic partition and offset.
    pub partition: i32,
    pub offset: i64,
}

impl StoredOutcome {
    /// The outcome record it was read from.
    pub fn outcome(&self, account: &str) -> crate::outcome::Outcome {
        crate::outcome::Outcome {
            account_id: account.to_string(),
            outcome: self.outcome,
            at_ms: self.at_ms,
            pqa_event_id: self.pqa_event_id.clone(),
            rule: self.rule.clone(),
            amount: self.amount,
        }
    }
}

/// An account record as written before `partition`, `sent` and `outcomes`
/// existed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountStateV3 {
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub seq: u64,
    pub columns: Vec<Column>,
    pub buckets: Vec<Bucket>,
    pub user_hist: Vec<(u32, u32)>,
    pub features: Vec<(CompactString, u32)>,
    pub signal_columns: Vec<Column>,
    pub signals: Vec<SignalHit>,
    pub kept_from: u32,
    pub traits_json: String,
    pub email_domains: Vec<(CompactString, u32)>,
    pub announced: Announced,
    pub shadow_announced: Vec<(String, Announced)>,
    pub sweep_due_ms: i64,
    pub held: Option<Held>,
    pub announced_out: bool,
}

impl From<AccountStateV3> for AccountState {
    fn from(v: AccountStateV3) -> AccountState {
        AccountState {
            first_seen_ms: v.first_seen_ms,
            last_seen_ms: v.last_seen_ms,
            seq: v.seq,
            columns: v.columns,
            buckets: v.buckets,
            user_hist: v.user_hist,
            features: v.features,
            signal_columns: v.signal_columns,
            signals: v.signals,
            kept_from: v.kept_from,
            traits_json: v.traits_json,
            email_domains: v.email_domains,
            announced: v.announced,
            shadow_announced: v.shadow_announced,
            sweep_due_ms: v.sweep_due_ms,
            held: v.held,
            announced_out: v.announced_out,
            partition: None,
            sent: Vec::new(),
            outcomes: Vec::new(),
        }
    }
}

/// An announcement of the live definition waiting for budget (see
/// [`crate::budget`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The event id (kept when a later announcement replaces the content).
    pub id: String,
    /// `pqa.account.qualified` or `pqa.account.tier_changed`.
    pub event_type: String,
    pub rules: Vec<String>,
    pub tier: String,
    /// Rank of the tier in the definition (0: the highest).
    pub tier_rank: u16,
    pub score: u32,
    /// Event time the account qualified (`data.qualified_at`).
    pub qualified_at_ms: i64,
    /// When it was queued (budget clock: wall time in `run`, event time in
    /// `replay`).
    pub queued_at_ms: i64,
    /// The input partition the account belongs to.
    pub partition: i32,
    /// The CloudEvent as built, `time` replaced at release.
    pub payload: Vec<u8>,
}

impl Held {
    /// The queue's order: tier (highest first), then score (highest
    /// first), then age (oldest first), then account id.
    pub fn priority(&self) -> (u16, u32, i64) {
        (self.tier_rank, u32::MAX - self.score, self.qualified_at_ms)
    }
}

/// An account record as written before `sweep_due_ms`, `held` and
/// `announced_out` existed (postcard is not self-describing: such a record
/// ends where these fields would begin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountStateV2 {
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub seq: u64,
    pub columns: Vec<Column>,
    pub buckets: Vec<Bucket>,
    pub user_hist: Vec<(u32, u32)>,
    pub features: Vec<(CompactString, u32)>,
    pub signal_columns: Vec<Column>,
    pub signals: Vec<SignalHit>,
    pub kept_from: u32,
    pub traits_json: String,
    pub email_domains: Vec<(CompactString, u32)>,
    pub announced: Announced,
    pub shadow_announced: Vec<(String, Announced)>,
}

impl From<AccountStateV2> for AccountState {
    fn from(v: AccountStateV2) -> AccountState {
        AccountState {
            announced_out: v.announced.active,
            first_seen_ms: v.first_seen_ms,
            last_seen_ms: v.last_seen_ms,
            seq: v.seq,
            columns: v.columns,
            buckets: v.buckets,
            user_hist: v.user_hist,
            features: v.features,
            signal_columns: v.signal_columns,
            signals: v.signals,
            kept_from: v.kept_from,
            traits_json: v.traits_json,
            email_domains: v.email_domains,
            announced: v.announced,
            shadow_announced: v.shadow_announced,
            sweep_due_ms: 0,
            held: None,
            partition: None,
            sent: Vec::new(),
            outcomes: Vec::new(),
        }
    }
}

/// Decodes the postcard body of an account record, of either shape, and
/// returns what follows the account (the members a record keeps inside it,
/// see `store::INLINE_MEMBERS`; nothing after a record of an older shape).
pub fn decode_account_rest(body: &[u8]) -> Result<(AccountState, &[u8]), postcard::Error> {
    match postcard::take_from_bytes::<AccountState>(body) {
        Ok(s) => Ok(s),
        Err(e) => postcard::from_bytes::<AccountStateV3>(body)
            .map(AccountState::from)
            .or_else(|_| postcard::from_bytes::<AccountStateV2>(body).map(AccountState::from))
            .map(|s| (s, &[][..]))
            .map_err(|_| e),
    }
}

/// Decodes the postcard body of an account record, of either shape.
pub fn decode_account(body: &[u8]) -> Result<AccountState, postcard::Error> {
    decode_account_rest(body).map(|(s, _)| s)
}

/// A user's activity inside one account.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberState {
    pub first_seen_ms: i64,
    /// Latest usage event time; 0 = none yet.
    pub last_seen_ms: i64,
    /// Usage events per day (day index since epoch), sorted.
    pub days: Vec<(u32, u32)>,
}

/// A user: the account they belong to, and their traits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// (Inline when short, as most ids are: read at every event of the
    /// user, without a second memory access. Encoded as a `String` is.)
    pub account: Option<compact_str::CompactString>,
    /// Traits from `identify` calls, as a JSON object.
    pub traits_json: String,
    pub updated_ms: i64,
    /// The domain of the `email` trait, lower-case (kept apart so that
    /// usage events need not parse the traits).
    pub email_domain: Option<compact_str::CompactString>,
    /// For the record of an anonymous id: the user it turned out to be.
    pub linked_to: Option<String>,
}

/// At most this many email domains are counted per account (the least
/// common is dropped).
pub const MAX_EMAIL_DOMAINS: usize = 32;

/// The domain of an email address, lower-case (inline: a domain is rarely
/// longer than 24 bytes, so a new user's email allocates nothing here).
pub fn email_domain(email: &str) -> Option<CompactString> {
    let (_, d) = email.trim().rsplit_once('@')?;
    let d = d.trim().trim_end_matches('.');
    if d.is_empty() || !d.contains('.') {
        return None;
    }
    Some(if d.is_ascii() {
        let mut c = CompactString::from(d);
        c.make_ascii_lowercase();
        c
    } else {
        d.to_lowercase().into()
    })
}

/// Bucket index of an event time.
pub fn bucket_of(time_ms: i64, bucket_seconds: i64) -> u32 {
    u32::try_from(time_ms.max(0) / 1000 / bucket_seconds).unwrap_or(u32::MAX)
}

/// The inclusive bucket range a metric covers at bucket `now`.
pub fn window_range(now: u32, window_buckets: u32, offset_buckets: u32) -> (u32, u32) {
    let hi = now.saturating_sub(offset_buckets);
    let lo = (u64::from(hi) + 1).saturating_sub(u64::from(window_buckets)) as u32;
    (lo, hi)
}

/// Running sums of an account's `events` windows, kept next to its cached
/// state (never stored) so that evaluating after every event does not sum
/// hundreds of buckets per metric: per window of the layout (see
/// [`crate::state::layout::Layout::windows`]), the range `lo..=hi` last
/// computed and its sum. A window that slid forward is brought up to date by
/// the few buckets that left and entered it; events added inside it are
/// counted in as they are applied. Every answer is the exact integer
/// [`AccountState::metric`] gives (debug builds check it).
#[derive(Debug, Default, Clone)]
pub struct WindowSums {
    sums: Vec<Option<(u32, u32, u64)>>,
    /// Per `events` window: where its first bucket and the bucket after its
    /// last were in the account's buckets when last summed. A hint only:
    /// used when it still holds (checked against the two neighbours), so
    /// that a window sliding forward walks from its edges instead of
    /// searching for them.
    edges: Vec<(u32, u32)>,
    /// The same for `active_users` metrics, by their (window buckets,
    /// offset buckets): users whose last-seen bucket is in the window.
    users: Vec<(u32, u32, Option<Sum>)>,
}

/// A window's sum: (first bucket, last bucket, sum).
type Sum = (u32, u32, u64);

/// The sum over `lo..=hi` from the window's last sum `was`, when the window
/// only slid forward (or not at all): what left it taken out, what entered
/// it added (`between` sums a bucket range); else counted afresh.
fn slide(was: Option<Sum>, lo: u32, hi: u32, between: impl Fn(u32, u32) -> u64) -> u64 {
    match was {
        Some((l0, h0, s0)) if lo >= l0 && hi >= h0 && lo <= h0.saturating_add(1) => {
            let left = if lo > l0 { between(l0, lo - 1) } else { 0 };
            let entered = if hi > h0 { between(h0 + 1, hi) } else { 0 };
            s0 - left + entered
        }
        _ => between(lo, hi),
    }
}

impl WindowSums {
    /// Asks the processor for the sums' vectors (see
    /// [`Store::prefetch_deep`](super::store::Store::prefetch_deep)).
    #[inline]
    pub fn prefetch(&self) {
        super::cache::prefetch(self.sums.as_ptr().cast());
        super::cache::prefetch(self.edges.as_ptr().cast());
        super::cache::prefetch(self.users.as_ptr().cast());
    }
    /// Forgets every sum.
    pub fn clear(&mut self) {
        self.sums.clear();
        self.edges.clear();
        self.users.clear();
    }

    /// A user's last-seen bucket moved as [`AccountState::move_user`]
    /// answered: out of `left` (if they had one counted) into `entered`.
    pub fn user_moved(&mut self, (left, entered): (Option<u32>, u32)) {
        for (_, _, s) in &mut self.users {
            if let Some((lo, hi, sum)) = s {
                if left.is_some_and(|b| *lo <= b && b <= *hi) {
                    *sum -= 1;
                }
                if *lo <= entered && entered <= *hi {
                    *sum += 1;
                }
            }
        }
    }

    /// One usage event was counted in bucket `idx` under columns `slots`
    /// (each increment took effect: none saturated). `windows` are the
    /// layout's.
    pub fn added(&mut self, windows: &[(usize, u32, u32)], idx: u32, slots: &[usize]) {
        for (i, s) in self.sums.iter_mut().enumerate() {
            if let Some((lo, hi, sum)) = s {
                if *lo <= idx && idx <= *hi {
                    let column = windows.get(i).map_or(usize::MAX, |w| w.0);
                    *sum += slots.iter().filter(|&&c| c == column).count() as u64;
                }
            }
        }
    }

    /// Buckets before `cutoff` were dropped.
    pub fn pruned(&mut self, cutoff: u32) {
        for s in self.sums.iter_mut().chain(self.users.iter_mut().map(|u| &mut u.2)) {
            if s.is_some_and(|(lo, _, _)| lo < cutoff) {
                *s = None;
            }
        }
    }

    /// The value of metric `m` (of kind `active_users`) at bucket `now`.
    pub fn active_users(&mut self, acct: &AccountState, m: &Metric, now: u32) -> f64 {
        let (lo, hi) = window_range(now, m.window_buckets, m.offset_buckets);
        let i = match self.users.iter().position(|u| (u.0, u.1) == (m.window_buckets, m.offset_buckets)) {
            Some(i) => i,
            None => {
                self.users.push((m.window_buckets, m.offset_buckets, None));
                self.users.len() - 1
            }
        };
        let sum = slide(self.users[i].2, lo, hi, |a, b| acct.users_between(a, b));
        self.users[i].2 = Some((lo, hi, sum));
        debug_assert_eq!(sum as f64, acct.metric(m, now, 3600), "window sum of {}", m.name);
        sum as f64
    }

    /// The value of metric `m` (of kind `events`) at bucket `now`.
    pub fn events(&mut self, acct: &AccountState, m: &Metric, now: u32) -> f64 {
        let (lo, hi) = window_range(now, m.window_buckets, m.offset_buckets);
        let i = m.window_slot;
        if self.sums.len() <= i {
            self.sums.resize(i + 1, None);
            self.edges.resize(i + 1, (0, 0));
        }
        let b = &acct.buckets;
        let count = |k: usize| u64::from(b[k].counts.get(m.column).copied().unwrap_or(0));
        // Where the first bucket at or after `x` is: at the hint `p`, or
        // next to it (a prune or a late bucket moves it by one or two), or
        // searched for.
        let edge = |p: usize, x: u32| p <= b.len() && (p == 0 || b[p - 1].idx < x) && (p == b.len() || b[p].idx >= x);
        let locate = |p: usize, x: u32| {
            [p, p.wrapping_sub(1), p.wrapping_sub(2), p + 1]
                .into_iter()
                .find(|&q| edge(q, x))
                .unwrap_or_else(|| b.partition_point(|y| y.idx < x))
        };
        let (pl, ph) = (self.edges[i].0 as usize, self.edges[i].1 as usize);
        let (sum, pl, ph) = match self.sums[i] {
            Some((l0, h0, s0)) if (l0, h0) == (lo, hi) => (s0, pl, ph),
            // Slid forward (overlapping or adjacent): what left it and what
            // entered it, walked from its edges.
            Some((l0, h0, s0)) if lo >= l0 && hi >= h0 && lo <= h0.saturating_add(1) => {
                let (mut sum, mut pl, mut ph) = (s0, locate(pl, l0), locate(ph, h0.saturating_add(1)));
                while pl < b.len() && b[pl].idx < lo {
                    sum -= count(pl);
                    pl += 1;
                }
                while ph < b.len() && b[ph].idx <= hi {
                    sum += count(ph);
                    ph += 1;
                }
                (sum, pl, ph)
            }
            _ => {
                let pl = b.partition_point(|x| x.idx < lo);
                let ph = pl + b[pl..].partition_point(|x| x.idx <= hi);
                ((pl..ph).map(count).sum(), pl, ph)
            }
        };
        self.sums[i] = Some((lo, hi, sum));
        self.edges[i] = (pl as u32, ph as u32);
        debug_assert_eq!(sum as f64, acct.metric(m, now, 3600), "window sum of {}", m.name);
        sum as f64
    }
}

impl AccountState {
    /// Events of counter slot `counter` in buckets `lo..=hi`.
    pub fn events_between(&self, counter: usize, lo: u32, hi: u32) -> u64 {
        let start = self.buckets.partition_point(|b| b.idx < lo);
        self.buckets[start..]
            .iter()
            .take_while(|b| b.idx <= hi)
            .map(|b| u64::from(b.counts.get(counter).copied().unwrap_or(0)))
            .sum()
    }

    /// Adds one usage event to bucket `idx`, counting it in `slots`.
    pub fn add_event(&mut self, idx: u32, slots: &[usize], n_counters: usize) {
        self.add_event_exact(idx, slots, n_counters);
    }

    /// [`AccountState::add_event`]; `false` if some count was already at
    /// its maximum (and so did not change).
    pub fn add_event_exact(&mut self, idx: u32, slots: &[usize], n_counters: usize) -> bool {
        // Events come mostly in time order: the latest bucket, or a new
        // one after it, is checked before searching.
        let pos = match self.buckets.last() {
            Some(b) if b.idx == idx => self.buckets.len() - 1,
            Some(b) if b.idx > idx => match self.buckets.binary_search_by_key(&idx, |b| b.idx) {
                Ok(p) => p,
                Err(p) => {
                    self.buckets.insert(p, Bucket { idx, counts: smallvec::smallvec![0; n_counters] });
                    p
                }
            },
            _ => {
                self.buckets.push(Bucket { idx, counts: smallvec::smallvec![0; n_counters] });
                self.buckets.len() - 1
            }
        };
        let b = &mut self.buckets[pos];
        if b.counts.len() < n_counters {
            b.counts.resize(n_counters, 0);
        }
        let mut exact = true;
        for &s in slots {
            exact &= b.counts[s] != u32::MAX;
            b.counts[s] = b.counts[s].saturating_add(1);
        }
        exact
    }

    /// A user's last-seen bucket moves from `old` (if they had one) to
    /// `new`. Answers what changed, if anything (for
    /// [`WindowSums::user_moved`]): the bucket a user left (`None` when none
    /// was counted) and the one they entered.
    pub fn move_user(&mut self, old: Option<u32>, new: u32) -> Option<(Option<u32>, u32)> {
        let mut left = None;
        if let Some(o) = old {
            if o >= new {
                return None;
            }
            if let Ok(p) = self.user_hist.binary_search_by_key(&o, |e| e.0) {
                // (A count is never 0, an emptied entry being removed; one
                // read from an odd record stays 0 and counted nowhere.)
                if self.user_hist[p].1 > 0 {
                    left = Some(o);
                }
                self.user_hist[p].1 = self.user_hist[p].1.saturating_sub(1);
                if self.user_hist[p].1 == 0 {
                    self.user_hist.remove(p);
                }
            }
        }
        // (Mostly the latest bucket, or one after it.)
        match self.user_hist.last_mut() {
            Some(e) if e.0 == new => e.1 += 1,
            Some(e) if e.0 > new => match self.user_hist.binary_search_by_key(&new, |e| e.0) {
                Ok(p) => self.user_hist[p].1 += 1,
                Err(p) => self.user_hist.insert(p, (new, 1)),
            },
            _ => self.user_hist.push((new, 1)),
        }
        Some((left, new))
    }

    /// Users whose last-seen bucket is in `lo..=hi`.
    pub fn users_between(&self, lo: u32, hi: u32) -> u64 {
        let start = self.user_hist.partition_point(|e| e.0 < lo);
        self.user_hist[start..].iter().take_while(|e| e.0 <= hi).map(|e| u64::from(e.1)).sum()
    }

    /// A user whose last-seen bucket was `last` is no longer one of the
    /// account's users (merged into another by an alias).
    pub fn remove_user(&mut self, last: u32) {
        if let Ok(p) = self.user_hist.binary_search_by_key(&last, |e| e.0) {
            self.user_hist[p].1 = self.user_hist[p].1.saturating_sub(1);
            if self.user_hist[p].1 == 0 {
                self.user_hist.remove(p);
            }
        }
    }

    /// Records that feature `name` was used in bucket `idx`.
    pub fn touch_feature(&mut self, name: &str, idx: u32) {
        if let Some(f) = self.features.iter_mut().find(|f| f.0 == name) {
            f.1 = f.1.max(idx);
            return;
        }
        if self.features.len() >= MAX_FEATURES {
            if let Some(oldest) = self.features.iter().enumerate().min_by_key(|(_, f)| f.1).map(|(i, _)| i) {
                self.features.swap_remove(oldest);
            }
        }
        self.features.push((name.into(), idx));
    }

    /// Records a signal occurrence.
    pub fn add_signal(&mut self, signal: u64, user: &str, at_ms: i64) {
        let pos = self.signals.partition_point(|h| h.at_ms <= at_ms);
        self.signals.insert(pos, SignalHit { signal, user: user.to_string(), at_ms });
        let count = self.signals.iter().filter(|h| h.signal == signal).count();
        if count > MAX_SIGNAL_HITS {
            if let Some(p) = self.signals.iter().position(|h| h.signal == signal) {
                self.signals.remove(p);
            }
        }
    }

    /// Drops everything older than `retention_buckets` before bucket `now`.
    pub fn prune(&mut self, now: u32, retention_buckets: u32, bucket_seconds: i64) {
        let cutoff = now.saturating_sub(retention_buckets);
        self.kept_from = self.kept_from.max(cutoff);
        // `buckets`, `user_hist` and `signals` are sorted (by bucket, by
        // bucket, by time): what goes is a prefix.
        // (Mostly nothing goes: the first entry is looked at before
        // searching.)
        if self.buckets.first().is_some_and(|b| b.idx < cutoff) {
            let n = self.buckets.partition_point(|b| b.idx < cutoff);
            self.buckets.drain(..n);
        }
        if self.user_hist.first().is_some_and(|e| e.0 < cutoff) {
            let n = self.user_hist.partition_point(|e| e.0 < cutoff);
            self.user_hist.drain(..n);
        }
        if self.features.iter().any(|f| f.1 < cutoff) {
            self.features.retain(|f| f.1 >= cutoff);
        }
        if self.signals.first().is_some_and(|h| bucket_of(h.at_ms, bucket_seconds) < cutoff) {
            let n = self.signals.partition_point(|h| bucket_of(h.at_ms, bucket_seconds) < cutoff);
            self.signals.drain(..n);
        }
    }

    /// The value of a metric at bucket `now`.
    pub fn metric(&self, m: &Metric, now: u32, bucket_seconds: i64) -> f64 {
        let (lo, hi) = window_range(now, m.window_buckets, m.offset_buckets);
        match m.kind {
            MetricKind::Events => self.events_between(m.column, lo, hi) as f64,
            MetricKind::ActiveUsers => self.users_between(lo, hi) as f64,
            MetricKind::DistinctFeatures => self.features.iter().filter(|f| f.1 >= lo && f.1 <= hi).count() as f64,
            MetricKind::Signal => self
                .signals
                .iter()
                .filter(|h| {
                    if h.signal != m.signal_id {
                        return false;
                    }
                    let b = bucket_of(h.at_ms, bucket_seconds);
                    b >= lo && b <= hi
                })
                .count() as f64,
        }
    }

    /// One more (or, with `delta` -1, one less) user on email `domain`.
    pub fn count_email_domain(&mut self, domain: &str, delta: i32) {
        match self.email_domains.iter().position(|d| d.0 == domain) {
            Some(p) => {
                let n = self.email_domains[p].1.saturating_add_signed(delta);
                if n == 0 {
                    self.email_domains.remove(p);
                } else {
                    self.email_domains[p].1 = n;
                }
            }
            None if delta > 0 => {
                if self.email_domains.len() >= MAX_EMAIL_DOMAINS {
                    if let Some(p) = self.email_domains.iter().enumerate().min_by_key(|(_, d)| d.1).map(|(p, _)| p) {
                        self.email_domains.swap_remove(p);
                    }
                }
                self.email_domains.push((domain.into(), delta as u32));
            }
            None => {}
        }
    }

    /// The company domain (from the `domain` or `website` trait, else the
    /// most common work-email domain of its users) and whether every user
    /// with an email is on a free mail provider.
    pub fn identity(&self, free_mail: &std::collections::HashSet<String>) -> (Option<String>, bool) {
        let traits: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.traits_json).unwrap_or_default();
        let from_traits =
            ["domain", "website"].iter().find_map(|k| traits.get(*k).and_then(|v| v.as_str())).and_then(|w| {
                let w = w.trim().to_lowercase();
                let w = w.split("://").last().unwrap_or(&w).trim_start_matches("www.");
                let host = w.split(['/', '?', '#', ':']).next().unwrap_or("");
                (host.contains('.')).then(|| host.to_string())
            });
        let mut work: Vec<&(CompactString, u32)> =
            self.email_domains.iter().filter(|d| !free_mail.contains(d.0.as_str())).collect();
        work.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let personal = !self.email_domains.is_empty() && work.is_empty();
        (from_traits.or_else(|| work.first().map(|d| d.0.to_string())), personal)
    }

    /// Conforms the record to `layout`: columns (counters and signals) the
    /// layout has and the record holds continue exactly, whatever their
    /// place; those it lacks start empty, complete only after the
    /// account's latest event; those the layout no longer has are dropped,
    /// with the cooldown bookkeeping of shadows that are gone. Returns
    /// whether anything changed.
    pub fn conform(&mut self, layout: &Layout) -> bool {
        let same_counters = self.columns.len() == layout.counter_ids.len()
            && self.columns.iter().zip(&layout.counter_ids).all(|(c, id)| c.id == *id);
        let same_signals = self.signal_columns.len() == layout.signals.len()
            && self.signal_columns.iter().zip(layout.signal_ids()).all(|(c, id)| c.id == id);
        let same_shadows = self.shadow_announced.iter().all(|(v, _)| layout.shadow_versions.contains(v));
        if same_counters && same_signals && same_shadows {
            return false;
        }
        // Events already applied have times up to `last_seen_ms`: a new
        // column holds everything from the bucket after it.
        let fresh_from =
            if self.last_seen_ms > 0 { bucket_of(self.last_seen_ms, layout.bucket_seconds) + 1 } else { 0 };
        if !same_counters {
            let old: Vec<Option<usize>> =
                layout.counter_ids.iter().map(|id| self.columns.iter().position(|c| c.id == *id)).collect();
            self.columns = layout
                .counter_ids
                .iter()
                .zip(&old)
                .map(|(&id, o)| Column { id, from: o.map_or(fresh_from, |i| self.columns[i].from) })
                .collect();
            for b in &mut self.buckets {
                b.counts = old.iter().map(|o| o.and_then(|i| b.counts.get(i).copied()).unwrap_or(0)).collect();
            }
            self.buckets.retain(|b| b.counts.iter().any(|&c| c > 0));
        }
        if !same_signals {
            let kept: Vec<Column> = layout
                .signal_ids()
                .map(|id| {
                    let from = self.signal_columns.iter().find(|c| c.id == id).map_or(fresh_from, |c| c.from);
                    Column { id, from }
                })
                .collect();
            self.signals.retain(|h| kept.iter().any(|c| c.id == h.signal));
            self.signal_columns = kept;
        }
        self.shadow_announced.retain(|(v, _)| layout.shadow_versions.contains(v));
        true
    }

    /// The first bucket from which the record holds all of a column with
    /// `from` (see [`Column`]) and all history (see `kept_from`).
    fn complete_from(&self, from: u32, bucket_seconds: i64) -> u32 {
        // Nothing was dropped before the account began.
        let first = if self.first_seen_ms > 0 { bucket_of(self.first_seen_ms, bucket_seconds) } else { 0 };
        let kept = if self.kept_from <= first { 0 } else { self.kept_from };
        kept.max(if from <= first { 0 } else { from })
    }

    /// Whether metric `m` at bucket `now` reads a window that reaches back
    /// before what the record holds completely: a counter or signal added
    /// after the account began, or a window longer than the history kept.
    pub fn warming_up(&self, m: &Metric, now: u32, bucket_seconds: i64) -> bool {
        let (lo, _) = window_range(now, m.window_buckets, m.offset_buckets);
        let from = match m.kind {
            MetricKind::Events => self.columns.get(m.column).filter(|c| c.id == m.counter_id).map(|c| c.from),
            MetricKind::Signal => self.signal_columns.iter().find(|c| c.id == m.signal_id).map(|c| c.from),
            MetricKind::ActiveUsers | MetricKind::DistinctFeatures => Some(0),
        };
        match from {
            Some(from) => lo < self.complete_from(from, bucket_seconds),
            // Not conformed to this definition's layout: nothing is known.
            None => self.last_seen_ms > 0,
        }
    }

    /// Whole days since the account was first seen, at `now_ms` (fractional).
    pub fn age_days(&self, now_ms: i64) -> f64 {
        if self.first_seen_ms == 0 {
            return 0.0;
        }
        (now_ms - self.first_seen_ms).max(0) as f64 / 86_400_000.0
    }

    /// Signal occurrences that some metric of the definition counts at `now`.
    pub fn live_signals<'a>(
        &'a self,
        def: &'a CompiledDefinition,
        now: u32,
    ) -> impl Iterator<Item = &'a SignalHit> + 'a {
        self.signals.iter().filter(move |h| {
            let b = bucket_of(h.at_ms, def.bucket_seconds);
            def.metrics.iter().any(|m| {
                if m.kind != MetricKind::Signal || m.signal_id != h.signal {
                    return false;
                }
                let (lo, hi) = window_range(now, m.window_buckets, m.offset_buckets);
                b >= lo && b <= hi
            })
        })
    }
}

impl MemberState {
    /// Counts one usage event at `time_ms`.
    pub fn add_event(&mut self, time_ms: i64) {
        let day = (time_ms.max(0) / 86_400_000) as u32;
        // (Mostly the latest day, or one after it.)
        match self.days.last_mut() {
            Some(d) if d.0 == day => d.1 = d.1.saturating_add(1),
            Some(d) if d.0 > day => match self.days.binary_search_by_key(&day, |d| d.0) {
                Ok(p) => self.days[p].1 = self.days[p].1.saturating_add(1),
                Err(p) => self.days.insert(p, (day, 1)),
            },
            _ => self.days.push((day, 1)),
        }
        if self.first_seen_ms == 0 || time_ms < self.first_seen_ms {
            self.first_seen_ms = time_ms;
        }
        self.last_seen_ms = self.last_seen_ms.max(time_ms);
    }

    /// Adds another record's activity (a visitor's, once linked to the user).
    pub fn merge(&mut self, other: &MemberState) {
        for &(day, n) in &other.days {
            match self.days.binary_search_by_key(&day, |d| d.0) {
                Ok(p) => self.days[p].1 = self.days[p].1.saturating_add(n),
                Err(p) => self.days.insert(p, (day, n)),
            }
        }
        if other.first_seen_ms > 0 && (self.first_seen_ms == 0 || other.first_seen_ms < self.first_seen_ms) {
            self.first_seen_ms = other.first_seen_ms;
        }
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
    }

    /// Usage events in the `days` days up to `now_ms` (day granularity).
    pub fn events_in_days(&self, now_ms: i64, days: u32) -> u64 {
        let today = (now_ms.max(0) / 86_400_000) as u32;
        let from = (today + 1).saturating_sub(days);
        self.days.iter().filter(|d| d.0 >= from && d.0 <= today).map(|d| u64::from(d.1)).sum()
    }

    /// Drops day counts older than `keep_days` before `now_ms`.
    pub fn prune(&mut self, now_ms: i64, keep_days: u32) {
        let today = (now_ms.max(0) / 86_400_000) as u32;
        let from = today.saturating_sub(keep_days);
        if self.days.first().is_some_and(|d| d.0 < from) {
            self.days.retain(|d| d.0 >= from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_email_domain_is_lower_case_and_has_a_dot() {
        assert_eq!(email_domain(" Ada@Example.COM. ").as_deref(), Some("example.com"));
        assert_eq!(email_domain("a@b@Sub.Example.org").as_deref(), Some("sub.example.org"));
        assert_eq!(email_domain("bo@ÜBER.de").as_deref(), Some("über.de"));
        assert_eq!(
            email_domain("x@a-very-long-company-domain.example.com").as_deref(),
            Some("a-very-long-company-domain.example.com")
        );
        assert_eq!(email_domain("root@localhost"), None);
        assert_eq!(email_domain("no-at-sign.example.com"), None);
        assert_eq!(email_domain("x@ "), None);
    }

    const H: i64 = 3600;

    fn metric(kind: MetricKind, window_h: u32, offset_h: u32) -> Metric {
        Metric {
            name: "m".into(),
            kind,
            window_buckets: window_h,
            offset_buckets: offset_h,
            counter_id: 0,
            column: 0,
            window_slot: 0,
            signal_id: 0,
            signal_name: String::new(),
        }
    }

    #[test]
    fn window_edges() {
        // 28 days = 672 hourly buckets: at bucket 1000 the window is 329..=1000.
        assert_eq!(window_range(1000, 672, 0), (329, 1000));
        // 28 days before the last 7: 161..=832.
        assert_eq!(window_range(1000, 672, 168), (161, 832));
        // Near zero it saturates instead of wrapping.
        assert_eq!(window_range(3, 672, 0), (0, 3));
        assert_eq!(window_range(3, 672, 168), (0, 0));
    }

    #[test]
    fn events_window_counts_exactly_the_buckets_inside() {
        let mut a = AccountState::default();
        for idx in [328, 329, 500, 1000, 1001] {
            a.add_event(idx, &[0], 1);
        }
        let m = metric(MetricKind::Events, 672, 0);
        // 328 is one bucket too old; 1001 is in the future of `now`.
        assert_eq!(a.metric(&m, 1000, H), 3.0);
        assert_eq!(a.metric(&m, 1001, H), 3.0); // 329 drops out, 1001 comes in
                                                // Window 501..=1172: only 1000 and 1001 are left.
        assert_eq!(a.metric(&m, 1172, H), 2.0);
    }

    #[test]
    fn active_users_are_exact_at_seven() {
        let mut a = AccountState::default();
        // 7 users, last seen at buckets 100..=106.
        for u in 0..7 {
            a.move_user(None, 100 + u);
        }
        let m = metric(MetricKind::ActiveUsers, 672, 0);
        assert_eq!(a.metric(&m, 106, H), 7.0);
        // At bucket 771 the window is 100..=771: still 7.
        assert_eq!(a.metric(&m, 771, H), 7.0);
        // One bucket later the first user (bucket 100) is out: 6.
        assert_eq!(a.metric(&m, 772, H), 6.0);
        // A user seen again moves, and is not counted twice.
        a.move_user(Some(100), 772);
        assert_eq!(a.metric(&m, 772, H), 7.0);
        // An out-of-order (older) event of a user does not move them back.
        a.move_user(Some(772), 500);
        assert_eq!(a.metric(&m, 772, H), 7.0);
        assert_eq!(a.user_hist.iter().map(|e| e.1).sum::<u32>(), 7);
    }

    #[test]
    fn prune_drops_old_buckets_only() {
        let mut a = AccountState::default();
        a.add_event(10, &[0], 1);
        a.add_event(900, &[0], 1);
        a.move_user(None, 10);
        a.add_signal(7, "u", 10 * 3600 * 1000);
        a.touch_feature("f", 10);
        a.prune(900, 840, H);
        assert_eq!(a.buckets.len(), 1);
        assert!(a.user_hist.is_empty() && a.signals.is_empty() && a.features.is_empty());
    }

    #[test]
    fn signals_keep_time_order_and_are_bounded() {
        let mut a = AccountState::default();
        for i in (0..100).rev() {
            a.add_signal(7, "u", i * 1000);
        }
        assert_eq!(a.signals.len(), MAX_SIGNAL_HITS);
        assert!(a.signals.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }

    /// A bucket's counts are encoded as the `Vec` they were: records
    /// written before they were held inline read the same, both ways.
    #[test]
    fn inline_counts_encode_as_a_vec_did() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before {
            idx: u32,
            counts: Vec<u32>,
        }
        // (No larger than with a `Vec`.)
        assert_eq!(std::mem::size_of::<Bucket>(), 32);
        for counts in [vec![], vec![3], vec![1, 2, 3, 4], vec![1, 2, 3, 4, 5, u32::MAX]] {
            let now = Bucket { idx: 7, counts: counts.iter().copied().collect() };
            let before = Before { idx: 7, counts };
            let bytes = postcard::to_allocvec(&now).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
            assert_eq!(postcard::from_bytes::<Bucket>(&bytes).unwrap(), now);
            assert_eq!(postcard::from_bytes::<Before>(&bytes).unwrap(), before);
        }
    }

    /// Feature names and email domains (inline when short) are encoded as
    /// the `String`s they were: records written before read the same, both
    /// ways.
    #[test]
    fn inline_names_encode_as_strings_did() {
        let long = "a feature name longer than twenty-four bytes";
        let before: Vec<(String, u32)> =
            vec![("Search Performed".into(), 7), (long.into(), u32::MAX), (String::new(), 0)];
        let now: Vec<(CompactString, u32)> = before.iter().map(|(n, i)| (n.as_str().into(), *i)).collect();
        let bytes = postcard::to_allocvec(&now).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
        assert_eq!(postcard::from_bytes::<Vec<(CompactString, u32)>>(&bytes).unwrap(), now);
        assert_eq!(postcard::from_bytes::<Vec<(String, u32)>>(&bytes).unwrap(), before);
        let mut a = AccountState::default();
        a.touch_feature("Search Performed", 3);
        a.touch_feature(long, 4);
        a.touch_feature("Search Performed", 5);
        assert_eq!(a.features, [("Search Performed".into(), 5), (long.into(), 4)]);
    }

    /// A user's account and email domain (inline when short) are encoded
    /// as the `String`s they were, both ways, in records and in JSON.
    #[test]
    fn a_users_inline_ids_encode_as_strings_did() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before {
            account: Option<String>,
            traits_json: String,
            updated_ms: i64,
            email_domain: Option<String>,
            linked_to: Option<String>,
        }
        let long = "a-company-whose-id-is-longer-than-24-bytes".to_string();
        for (account, domain) in [
            (None, None),
            (Some("acct-1".to_string()), Some("example.com".to_string())),
            (Some(long.clone()), Some(long)),
        ] {
            let before = Before {
                account: account.clone(),
                traits_json: "{}".into(),
                updated_ms: 7,
                email_domain: domain.clone(),
                linked_to: None,
            };
            let now = UserState {
                account: account.map(Into::into),
                traits_json: "{}".into(),
                updated_ms: 7,
                email_domain: domain.map(Into::into),
                linked_to: None,
            };
            let bytes = postcard::to_allocvec(&now).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
            assert_eq!(postcard::from_bytes::<UserState>(&bytes).unwrap(), now);
            assert_eq!(serde_json::to_string(&now).unwrap(), serde_json::to_string(&before).unwrap());
        }
    }

    #[test]
    fn member_days() {
        let mut m = MemberState::default();
        let day = 86_400_000;
        m.add_event(10 * day + 5);
        m.add_event(10 * day + 6);
        m.add_event(40 * day);
        assert_eq!(m.events_in_days(40 * day, 28), 1);
        assert_eq!(m.events_in_days(37 * day, 28), 2);
        assert_eq!(m.first_seen_ms, 10 * day + 5);
    }

    proptest! {
        /// The histogram always equals a brute-force distinct count.
        #[test]
        fn histogram_matches_brute_force(events in proptest::collection::vec((0u8..20, 0u32..2000), 1..300), now in 0u32..2500, w in 1u32..1000) {
            let mut a = AccountState::default();
            let mut last: std::collections::HashMap<u8, u32> = Default::default();
            for (u, b) in &events {
                let old = last.get(u).copied();
                a.move_user(old, *b);
                let e = last.entry(*u).or_insert(*b);
                *e = (*e).max(*b);
            }
            let (lo, hi) = window_range(now, w, 0);
            let brute = last.values().filter(|&&b| b >= lo && b <= hi).count() as f64;
            prop_assert_eq!(a.metric(&metric(MetricKind::ActiveUsers, w, 0), now, H), brute);
        }

        /// The running sums of active users give what counting afresh
        /// gives, whatever the moves, prunes and evaluations in between.
        #[test]
        fn active_user_sums_equal_counting_afresh(
            ops in proptest::collection::vec((0u8..4, 0u8..12, 0u32..600), 1..300),
            windows in proptest::collection::vec((1u32..300, 0u32..100), 1..4),
        ) {
            let mut a = AccountState::default();
            let mut sums = WindowSums::default();
            let mut last: std::collections::HashMap<u8, u32> = Default::default();
            let mut now = 0u32;
            for (op, u, b) in ops {
                match op {
                    // A user's event in bucket b (the clock moves forward).
                    0 | 1 => {
                        now = now.max(b);
                        if let Some(moved) = a.move_user(last.get(&u).copied(), b) {
                            sums.user_moved(moved);
                        }
                        let e = last.entry(u).or_insert(b);
                        *e = (*e).max(b);
                    }
                    // Old history dropped.
                    2 => {
                        let cutoff = b.min(now);
                        a.prune(now, now - cutoff, H);
                        sums.pruned(cutoff);
                        // (Users keep their last-seen bucket, as members do.)
                    }
                    // Evaluated, at the clock or a little before it.
                    _ => {
                        let at = now.saturating_sub(u32::from(u));
                        for &(w, o) in &windows {
                            let m = metric(MetricKind::ActiveUsers, w, o);
                            prop_assert_eq!(sums.active_users(&a, &m, at), a.metric(&m, at, H));
                        }
                    }
                }
            }
        }

        /// Events in any order (mostly forward, as they come, with late
        /// ones): buckets and a member's days stay sorted and unique, and
        /// count what a brute-force count gives, before and after a prune.
        #[test]
        fn counts_in_any_order_equal_a_brute_force_count(
            events in proptest::collection::vec((0u32..400, proptest::bool::ANY), 1..300),
            keep in 1u32..400,
        ) {
            let mut a = AccountState::default();
            let mut m = MemberState::default();
            let mut brute: std::collections::BTreeMap<u32, u32> = Default::default();
            let mut now = 0u32;
            for (b, late) in events {
                // Forward from the clock, or late by up to b buckets.
                let idx = if late { now.saturating_sub(b) } else { now + b % 3 };
                now = now.max(idx);
                prop_assert!(a.add_event_exact(idx, &[0], 1));
                m.add_event(i64::from(idx) * 86_400_000 + 1);
                *brute.entry(idx).or_default() += 1;
            }
            let got: Vec<(u32, u32)> = a.buckets.iter().map(|b| (b.idx, b.counts[0])).collect();
            prop_assert_eq!(&got, &brute.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
            prop_assert_eq!(&m.days, &got);
            a.prune(now, keep, 86_400);
            m.prune(i64::from(now) * 86_400_000, keep);
            let cutoff = now.saturating_sub(keep);
            let kept: Vec<(u32, u32)> = brute.range(cutoff..).map(|(k, v)| (*k, *v)).collect();
            let got: Vec<(u32, u32)> = a.buckets.iter().map(|b| (b.idx, b.counts[0])).collect();
            prop_assert_eq!(&got, &kept);
            prop_assert_eq!(&m.days, &kept);
        }

        /// The running sums of events give what counting afresh gives,
        /// whatever the events (late ones too), prunes and evaluations in
        /// between: the windows' edges are only hints.
        #[test]
        fn event_sums_equal_counting_afresh(
            ops in proptest::collection::vec((0u8..5, 0u32..40, 0u32..600), 1..300),
            windows in proptest::collection::vec((1u32..300, 0u32..100), 1..4),
        ) {
            let mut a = AccountState::default();
            let mut sums = WindowSums::default();
            let mut now = 0u32;
            let metrics: Vec<Metric> = windows
                .iter()
                .enumerate()
                .map(|(i, &(w, o))| Metric { window_slot: i, ..metric(MetricKind::Events, w, o) })
                .collect();
            for (op, d, b) in ops {
                match op {
                    // An event at bucket b (the clock moves forward), or
                    // late by d buckets.
                    0 | 1 => {
                        let idx = if op == 0 { b } else { now.saturating_sub(d) };
                        now = now.max(idx);
                        if a.add_event_exact(idx, &[0], 1) {
                            sums.added(&[(0, 0, 0)].repeat(metrics.len()), idx, &[0]);
                        } else {
                            sums.clear();
                        }
                    }
                    // Old history dropped.
                    2 => {
                        let cutoff = b.min(now);
                        a.prune(now, now - cutoff, H);
                        sums.pruned(cutoff);
                    }
                    // Evaluated, at the clock or a little before it.
                    _ => {
                        let at = now.saturating_sub(d % 4);
                        for m in &metrics {
                            prop_assert_eq!(sums.events(&a, m, at), a.metric(m, at, H));
                        }
                    }
                }
            }
        }

        #[test]
        fn window_has_exactly_w_buckets(now in 2000u32..100_000, w in 1u32..1500, o in 0u32..500) {
            let (lo, hi) = window_range(now, w, o);
            prop_assert_eq!(hi - lo + 1, w);
            prop_assert_eq!(hi, now - o);
        }
    }
}
