//! The engine core: decode -> state -> detect -> emit, for one record at a
//! time, with an explicit [`Engine::commit`] per batch. It does not know
//! whether records come from Kafka, a file, a test or a benchmark: that is
//! what makes `run`, `replay`, the tests and the benches one code path.
//!
//! Evaluation happens after every event that touches an account, at the
//! account's event time, so what is announced does not depend on how the
//! input was cut into batches: a crash and a restart with other batch
//! boundaries give the same announcements with the same ids.
//!
//! An event is applied in three phases (`Engine::apply`): its identity
//! (which account, following the user's links; is it acceptable; the
//! users' side: account link, traits, an alias's merge, a login's link),
//! then its account (clock, buckets, members, signals), then each running
//! definition's decision on the account. The identity phase reads one
//! thing of the account's side (its latest event time, to judge lateness
//! before any user record changes) and files the message id in the dedupe
//! filter all partitions share; the account phase reads nothing of the
//! users' side but what the identity phase hands it (`Resolved`); the
//! announcements then read users' traits for their leads. These are the
//! seams along which the work would be split between threads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::budget::{bypasses, BudgetClock, Ledger};
use crate::config::definition::Budget;
use crate::config::{CompiledDefinition, InputConfig};
use crate::decode::{Decoder, Event, Id, Kind, Reason, Rejection};
use crate::definitions::{Agreement, Definitions, VersionStats};
use crate::detect::{evaluate_memoized_into, evaluate_unnamed, Evaluation, Outcome};
use crate::emit::{self, Announcement, EventInput, Lead, OutputEvent};
use crate::state::account::{bucket_of, email_domain, AccountState, Held, SignalHit};
use crate::state::manifest::Manifest;
use crate::state::prefetch::{Fetched, Prefetcher};
use crate::state::store::{AccountEntry, CommitStats, Prepared};
use crate::state::{StateError, StateReader, StateWriter, Store};
use crate::telemetry::Metrics;

/// Where a partition stands.
#[derive(Debug)]
struct Position {
    topic: String,
    partition: i32,
    /// Next offset to apply.
    next: i64,
    /// Advanced since the last commit.
    pending: bool,
}

/// One input record, wherever it came from.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The message key, kept on dead letters.
    pub key: Option<&'a [u8]>,
    /// `None` is a tombstone (null value).
    pub payload: Option<&'a [u8]>,
    /// Kafka's timestamp of the record, for latency metrics.
    pub timestamp_ms: Option<i64>,
}

/// A rejected input record, for the dead-letter output.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The original bytes, unchanged (empty for a tombstone).
    pub payload: Vec<u8>,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original value was null (a tombstone), not empty.
    pub tombstone: bool,
    pub reason: Reason,
    pub detail: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What processing produced: announcements and dead letters, in order.
#[derive(Debug, Default)]
pub struct Output {
    /// The live definition's announcements.
    pub events: Vec<OutputEvent>,
    pub dead_letters: Vec<DeadLetter>,
    /// Shadow definitions' announcements (`OutputEvent::definition` says
    /// whose), for the shadow topic.
    pub shadow_events: Vec<OutputEvent>,
}

impl Output {
    pub fn clear(&mut self) {
        self.events.clear();
        self.dead_letters.clear();
        self.shadow_events.clear();
    }
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dead_letters.is_empty() && self.shadow_events.is_empty()
    }
}

/// Engine errors: only state (disk) problems. Bad input is never an error,
/// it is a [`DeadLetter`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
}

/// How a signal occurrence of a visitor not logged in names them (never a
/// lead).
pub const ANONYMOUS_PREFIX: &str = "anonymous:";

/// The state key (user and member records) of a visitor's anonymous id:
/// it starts with a NUL byte, which no user id from JSON text has in
/// practice, so it cannot be taken for a user.
pub fn anon_key(anonymous_id: &str) -> String {
    let mut key = String::new();
    anon_key_into(&mut key, anonymous_id);
    key
}

/// [`anon_key`] into `key` (emptied first): the engine looks a visitor up
/// for every event that carries an anonymous id (analytics.js puts one on
/// every event, logged in or not), into a buffer it keeps.
pub fn anon_key_into(key: &mut String, anonymous_id: &str) {
    key.clear();
    key.push_str("\u{0}anon\u{0}");
    key.push_str(anonymous_id);
}

/// How many events ahead of the one being applied the loops over decoded
/// input call [`Engine::prefetch`]: far enough for memory to have answered
/// (an event takes microseconds to apply, memory a tenth of one), near
/// enough that what it brought is still in the processor's caches. 8 and
/// 32 measured the same (BENCHMARKS.md).
pub const PREFETCH_AHEAD: usize = 16;

/// Links followed from one id to the next at most this many times (an
/// alias of an alias...): a longer chain is cut there.
const MAX_LINK_HOPS: usize = 32;

/// An alias whose previous id is an earlier user id: that user (`old`)
/// becomes the event's user. Email domains (of the old user, and of the
/// new one before and after taking the old one's traits) for the
/// account's count of members by domain.
struct Merge {
    old: String,
    old_domain: Option<Id>,
    domain_before: Option<Id>,
    domain_after: Option<Id>,
}

/// An announcement decided for one definition, built once the account's
/// cache entry is released.
struct Pending {
    definition: usize,
    kind: Announcement,
    previous_tier: Option<String>,
    eval: crate::detect::Evaluation,
    signals: Vec<SignalHit>,
    warming_up: Vec<String>,
}

/// What the identity phase found for an event (see
/// [`Engine::resolve_identity`]).
// (Moved once an event, never kept: boxing the large variant would allocate
// an event.)
#[allow(clippy::large_enum_variant)]
enum Identity {
    /// Not applied, and not an error: a visitor with no account, traits of
    /// someone not logged in, an upstream retry.
    Skipped,
    /// Applied to users only: an identify or alias of a user with no
    /// account yet.
    UsersOnly,
    /// To be applied to an account.
    Account(Resolved),
}

/// A login: a user id with the anonymous id the user had before, not yet
/// linked to that user.
struct Login {
    /// The visitor's user record (its key among users).
    visitor: String,
    /// The account the visitor was active in.
    account: Option<Id>,
    /// The visitor was linked to no user before (only then does its
    /// account become the user's, and its activity the user's).
    first: bool,
}

/// The account an accepted event belongs to, and what its users' side
/// changed that the account's side follows.
struct Resolved {
    account: Id,
    /// An alias that merged an earlier user into this one.
    merge: Option<Merge>,
    /// A login's link of a visitor to the user.
    link: Option<Login>,
    /// Signals the event's traits changed into (more are added from the
    /// event itself on the account's side).
    hits: Vec<u64>,
    /// An email domain that changed with this identify: (old, new).
    email_change: Option<(Option<Id>, Option<Id>)>,
    /// The user's email domain, for a user's first usage event in the
    /// account (it counts for the account then).
    user_domain: Option<Id>,
}

#[path = "engine_commit.rs"]
pub mod commit;
#[path = "engine_outcomes.rs"]
mod outcomes;
pub use outcomes::{announcements, publish_rule_gauges};

/// Memo slots per running definition (see `Detector::memos`).
const MEMO_SLOTS: usize = 4096;

/// Events an account has had before its evaluations use the memo.
const MEMO_BUSY: u64 = 64;

/// The engine. Owns the state; one per process (or per partition worker).
pub struct Engine {
    defs: Arc<Definitions>,
    decoder: Decoder,
    store: Store,
    metrics: Metrics,
    clock: Box<dyn Fn() -> i64 + Send>,
    /// Next offset to apply per partition, as far as applied in memory
    /// (committed or pending). A short list (the assigned partitions),
    /// searched without allocating.
    positions: Vec<Position>,
    retention_ms: i64,
    retention_buckets: u32,
    /// Records applied since the last commit (for latency metrics).
    batch_oldest_ts: Option<i64>,
    /// `metrics.events` per event kind and `metrics.batch_seconds` of
    /// "apply", looked up on first use and kept (a labelled lookup hashes
    /// the labels under a lock, per event).
    kind_counters: [Option<prometheus::IntCounter>; Kind::ALL.len()],
    apply_seconds: Option<prometheus::Histogram>,
    /// The definitions' decisions, with their memos.
    detector: Detector,
    /// Per definition version: what it announced since it was loaded.
    stats: BTreeMap<String, VersionStats>,
    /// Per definition version: the accounts it qualified since it was
    /// loaded (for the agreement of shadows with the live definition).
    qualified: HashMap<String, HashSet<String>>,
    /// Per definition (index as in `defs`): events accepted that its own
    /// longest window would have judged too late (the state keeps the
    /// longest window of all definitions).
    late_for: Vec<u64>,
    /// What the state holds, as of the last definition change.
    manifest: Manifest,
    /// Earliest and latest event time applied by this engine.
    time_range: Option<(i64, i64)>,
    /// Per input partition: the latest event time seen (kept with the
    /// state, meta record `x|partition_times`). A partition with no event
    /// for a while holds the low watermark back: the sweep is then late,
    /// never early.
    part_times: BTreeMap<i32, i64>,
    part_times_changed: bool,
    /// The event-time low watermark: the least advanced partition's
    /// latest event time. The sweep runs up to it.
    low_ms: i64,
    /// The input partitions this engine owns (`None`: all, as in replay).
    owned: Option<HashSet<i32>>,
    /// Releases of the last day (the budget).
    ledger: Ledger,
    budget_clock: BudgetClock,
    /// Workers counting the budget apart (see [`Engine::set_budget_workers`]).
    budget_workers: u32,
    /// Budget time before which nothing waiting can be released or expire.
    next_release_ms: i64,
    /// Outcomes from sales and the per-rule counts.
    feedback: outcomes::Feedback,
    /// A visitor's state key, made in place for each event (see
    /// [`anon_key_into`]).
    anon_buf: String,
    /// The traits of an `identify` or `group` call, serialized to compare
    /// with a record's (see [`same_traits`]).
    traits_buf: Vec<u8>,
    /// Events applied, counted to time one in [`APPLY_TIMED_EVERY`].
    applied: u32,
}

/// One event in this many has its `apply` time taken: two clock reads and
/// a histogram's update on every event were about 3 % of the engine
/// thread on the long tail (`replay`), and a sample of the stream gives
/// the same quantiles and mean.
const APPLY_TIMED_EVERY: u32 = 16;

/// The definitions' decisions on an account (see [`Detector::decide`]),
/// with what they keep from one event to the next.
#[derive(Default)]
struct Detector {
    /// The last results of rules, derived numbers and score terms, in
    /// [`MEMO_SLOTS`] slots per running definition chosen by the account's
    /// id (see [`crate::detect::Memo`]): the slot of a busy account keeps its
    /// results from one event to the next. Exact whoever last used a slot,
    /// since a result is reused only for the very same inputs (and no
    /// memory per account: the long tail would only pay for it).
    memos: Vec<crate::detect::Memo>,
    /// The evaluation of the event being applied (its vectors reused from
    /// one event to the next, unless an announcement keeps it).
    evaluation: Evaluation,
}

/// Drops the account's map of traits if it was made for other definitions
/// than `defs` (which may read traits it lacks; see
/// [`Definitions::account_fields`]).
fn fields_for(entry: &mut AccountEntry, defs: &Definitions) {
    if entry.traits_for != defs.account_fields_id {
        entry.traits_cel.take();
        entry.traits_for = defs.account_fields_id;
    }
}

impl Detector {
    /// Each running definition's decision on an account just changed (the
    /// live definition, then each shadow, on the same state; each with its
    /// own cooldown bookkeeping): the announcements to make.
    fn decide(
        &mut self,
        defs: &Definitions,
        entry: &mut AccountEntry,
        metrics: &Metrics,
        account: &str,
        now_ms: i64,
    ) -> Vec<Pending> {
        let layout = &defs.layout;
        let now_bucket = bucket_of(now_ms, layout.bucket_seconds);
        let mut pending: Vec<Pending> = Vec::new();
        let busy = entry.state.seq >= MEMO_BUSY;
        let memo_hash = if busy { xxhash_rust::xxh3::xxh3_64(account.as_bytes()) } else { 0 };
        fields_for(entry, defs);
        for (d, def) in defs.all().enumerate() {
            // Only a busy account's evaluations go through the memo: the
            // rare ones of the long tail would only pay for it.
            let memo = if busy {
                let slot = d * MEMO_SLOTS + (memo_hash as usize & (MEMO_SLOTS - 1));
                if self.memos.len() <= slot {
                    self.memos.resize_with((d + 1) * MEMO_SLOTS, Default::default);
                }
                Some(&mut self.memos[slot])
            } else {
                None
            };
            evaluate_memoized_into(
                def,
                &entry.state,
                Some(&mut entry.sums),
                &entry.traits_cel,
                defs.account_var(),
                now_ms,
                memo,
                &mut self.evaluation,
            );
            let eval = &self.evaluation;
            if d == 0 {
                for (i, o) in eval.outcomes.iter().enumerate() {
                    if let Outcome::Error(e) = o {
                        metrics.rule_errors.with_label_values(&[&def.rules[i].name]).inc();
                        tracing::debug!(rule = %def.rules[i].name, account = %account, cause = %e, "rule could not be evaluated");
                    }
                }
            }
            let announced = announced_mut(&mut entry.state, d, def);
            let Some((kind, previous_tier)) = emit::decide(def, announced, eval, now_ms) else {
                continue;
            };
            // (Kept with the announcement: the next evaluation starts anew.)
            let mut eval = std::mem::take(&mut self.evaluation);
            eval.name_values(def);
            let warming_up = def
                .metrics
                .iter()
                .filter(|m| entry.state.warming_up(m, now_bucket, layout.bucket_seconds))
                .map(|m| m.name.clone())
                .collect();
            pending.push(Pending {
                definition: d,
                kind,
                previous_tier,
                eval,
                signals: entry.state.live_signals(def, now_bucket).cloned().collect(),
                warming_up,
            });
        }
        pending
    }
}

/// What the budget did for a definition's announcement.
enum Route {
    Out(&'static str),
    Hold,
}

impl Engine {
    /// An engine running one definition (or a set: live and shadows). Makes
    /// the state serve it first (see [`Store::prepare_layout`]): fails if
    /// the state cannot.
    pub fn new(
        defs: impl Into<Definitions>,
        input: InputConfig,
        store: Store,
        metrics: Metrics,
    ) -> Result<Engine, EngineError> {
        Engine::with_definitions(Arc::new(defs.into()), input, store, metrics)
    }

    /// [`Engine::new`] with a shared set of definitions.
    pub fn with_definitions(
        defs: Arc<Definitions>,
        input: InputConfig,
        mut store: Store,
        metrics: Metrics,
    ) -> Result<Engine, EngineError> {
        store.set_dedupe_window_ms(input.dedupe_window_seconds.saturating_mul(1000));
        store.set_dedupe_memory_ids(input.dedupe_memory_ids);
        let manifest = store.prepare_layout(defs.layout.clone(), &defs.live)?;
        let mut engine = Engine {
            defs: defs.clone(),
            decoder: Decoder::new(input),
            store,
            metrics,
            clock: Box::new(|| chrono::Utc::now().timestamp_millis()),
            positions: Vec::new(),
            retention_ms: 0,
            retention_buckets: 0,
            batch_oldest_ts: None,
            kind_counters: Default::default(),
            apply_seconds: None,
            detector: Detector::default(),
            stats: BTreeMap::new(),
            qualified: HashMap::new(),
            late_for: Vec::new(),
            manifest,
            time_range: None,
            part_times: BTreeMap::new(),
            part_times_changed: false,
            low_ms: 0,
            owned: None,
            ledger: Ledger::default(),
            budget_clock: BudgetClock::Event,
            budget_workers: 1,
            next_release_ms: 0,
            feedback: Default::default(),
            anon_buf: String::new(),
            traits_buf: Vec::new(),
            applied: 0,
        };
        engine.load_meta()?;
        engine.adopt(defs);
        Ok(engine)
    }

    /// Switches to other definitions (a reload, a shadow added or
    /// promoted). Call it between batches (after a commit): every event
    /// after it is judged by the new definitions only. Cooldowns carry over
    /// by rule name; shadows keep theirs by version. Fails, changing
    /// nothing, if the state cannot serve them.
    pub fn set_definitions(&mut self, defs: Arc<Definitions>) -> Result<&Manifest, EngineError> {
        self.manifest = self.store.prepare_layout(defs.layout.clone(), &defs.live)?;
        self.adopt(defs);
        self.load_tallies(None)?;
        Ok(&self.manifest)
    }

    fn adopt(&mut self, defs: Arc<Definitions>) {
        self.retention_ms = defs.layout.retention_seconds * 1000;
        self.retention_buckets = defs.layout.retention_buckets();
        let versions: Vec<String> = defs.all().map(|d| d.version.clone()).collect();
        self.stats.retain(|v, _| versions.contains(v));
        self.qualified.retain(|v, _| versions.contains(v));
        for v in &versions {
            self.stats.entry(v.clone()).or_default();
            self.qualified.entry(v.clone()).or_default();
        }
        self.late_for = vec![0; defs.len()];
        self.metrics.definition_info.reset();
        self.metrics.metric_warming_up.reset();
        for (i, d) in defs.all().enumerate() {
            self.metrics.definition_info.with_label_values(&[&d.version, &d.fingerprint, Definitions::role(i)]).set(1);
        }
        self.defs = defs;
        self.next_release_ms = 0;
        self.recompute_agreement();
        self.update_warming_gauge();
    }

    /// The agreement of each shadow with the live definition, from the sets
    /// of accounts each qualified.
    fn recompute_agreement(&mut self) {
        let live = self.defs.live.version.clone();
        let empty = HashSet::new();
        let l = self.qualified.get(&live).unwrap_or(&empty);
        for s in &self.defs.shadows {
            let sh = self.qualified.get(&s.version).unwrap_or(&empty);
            let both = l.intersection(sh).count() as u64;
            let a = Agreement { both, live_only: l.len() as u64 - both, shadow_only: sh.len() as u64 - both };
            if let Some(st) = self.stats.get_mut(&s.version) {
                st.agreement = Some(a);
            }
            self.set_agreement_gauges(&s.version, a);
        }
        if let Some(st) = self.stats.get_mut(&live) {
            st.agreement = None;
        }
    }

    fn set_agreement_gauges(&self, version: &str, a: Agreement) {
        let g = &self.metrics.shadow_agreement;
        g.with_label_values(&[version, "both"]).set(a.both as i64);
        g.with_label_values(&[version, "live_only"]).set(a.live_only as i64);
        g.with_label_values(&[version, "shadow_only"]).set(a.shadow_only as i64);
    }

    /// An account was qualified by definition `d`: the agreement counts.
    fn note_qualified(&mut self, d: usize, account: &str) {
        let version = self.defs.get(d).version.clone();
        let newly = self.qualified.entry(version.clone()).or_default().insert(account.to_string());
        if !newly {
            return;
        }
        let live = self.defs.live.version.clone();
        let in_live = self.qualified.get(&live).is_some_and(|s| s.contains(account));
        let mut changed = Vec::new();
        for (i, s) in self.defs.shadows.iter().enumerate() {
            let st = self.stats.entry(s.version.clone()).or_default();
            let a = st.agreement.get_or_insert_with(Agreement::default);
            if d == 0 {
                if self.qualified.get(&s.version).is_some_and(|x| x.contains(account)) {
                    a.both += 1;
                    a.shadow_only -= 1;
                } else {
                    a.live_only += 1;
                }
            } else if d == i + 1 {
                if in_live {
                    a.both += 1;
                    a.live_only -= 1;
                } else {
                    a.shadow_only += 1;
                }
            } else {
                continue;
            }
            changed.push((s.version.clone(), *a));
        }
        for (v, a) in changed {
            self.set_agreement_gauges(&v, a);
        }
    }

    /// Sets `pqa_metric_warming_up` from the manifest.
    /// Called after every commit: it only sets values (the series of
    /// definitions no longer running are dropped in `adopt`), so a scrape
    /// never sees the gauge empty.
    fn update_warming_gauge(&self) {
        let g = &self.metrics.metric_warming_up;
        let mut m = self.manifest.clone();
        m.updated_at_ms = self.store.watermark_ms();
        for d in self.defs.all() {
            for st in m.status(d, None) {
                g.with_label_values(&[&d.version, &st.name]).set(i64::from(st.warming));
            }
        }
    }

    /// The definitions it runs.
    pub fn definitions(&self) -> &Arc<Definitions> {
        &self.defs
    }

    /// What the state holds and since when, as of the last definition change.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Announcements per definition version since each was loaded.
    pub fn stats(&self) -> &BTreeMap<String, VersionStats> {
        &self.stats
    }

    /// Events accepted that definition `i` alone would have dead-lettered
    /// as too late (its longest window is shorter than another's).
    pub fn late_for(&self, i: usize) -> u64 {
        self.late_for.get(i).copied().unwrap_or(0)
    }

    /// Earliest and latest event time of the events it applied.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        self.time_range
    }

    /// The next offset to apply for every partition it has seen.
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        self.positions.iter().map(|p| (p.topic.clone(), p.partition, p.next)).collect()
    }

    /// Reads the budget ledger and the partitions' event times back from
    /// the state.
    fn load_meta(&mut self) -> Result<(), EngineError> {
        self.ledger = Ledger::decode(self.store.meta("budget")?.as_deref());
        self.part_times = self
            .store
            .meta("partition_times")?
            .and_then(|v| serde_json::from_slice::<BTreeMap<i32, i64>>(&v).ok())
            .unwrap_or_default();
        self.part_times_changed = false;
        self.low_ms = self.low_watermark();
        self.next_release_ms = 0;
        self.metrics.budget_queue_length.set(self.store.schedule().queue.len() as i64);
        Ok(())
    }

    /// Counts the budget in wall-clock time (`run`) rather than event time
    /// (the default: `replay`, `backtest`, tests).
    pub fn set_budget_clock(&mut self, clock: BudgetClock) {
        self.budget_clock = clock;
        self.next_release_ms = 0;
    }

    /// Counts `1/n` of the budget's caps (rounded up): this engine is one
    /// of `n` workers of a process (`kafka.workers`), each counting its
    /// own budget.
    pub fn set_budget_workers(&mut self, n: u32) {
        self.budget_workers = n.max(1);
    }

    /// This engine's share of `budget` (see [`Engine::set_budget_workers`]).
    fn budget_share<'b>(&self, budget: &'b Budget) -> std::borrow::Cow<'b, Budget> {
        if self.budget_workers > 1 {
            std::borrow::Cow::Owned(budget.share(self.budget_workers))
        } else {
            std::borrow::Cow::Borrowed(budget)
        }
    }

    /// The budget's clock now.
    fn budget_now(&self) -> i64 {
        match self.budget_clock {
            BudgetClock::Wall => (self.clock)(),
            BudgetClock::Event => self.low_ms,
        }
    }

    /// The event-time low watermark: the least advanced of the partitions
    /// it owns that are not idle (0 before any event).
    pub fn low_watermark(&self) -> i64 {
        self.part_times.iter().filter(|(p, _)| self.owns(**p)).map(|(_, t)| *t).min().unwrap_or(self.low_ms)
    }

    /// Tells the store which partitions are this engine's (the changelog
    /// partitions of its tombstones, see `state::expiry`).
    fn share_owned(&mut self) {
        if let Some(o) = &self.owned {
            let mut owned: Vec<i32> = o.iter().copied().collect();
            owned.sort_unstable();
            self.store.set_owned(owned);
        }
    }

    fn owns(&self, partition: i32) -> bool {
        self.owned.as_ref().is_none_or(|o| o.contains(&partition))
    }

    /// Partitions newly assigned to this engine (`run`): they count for the
    /// low watermark, and their accounts' schedules are read again.
    pub fn assigned(&mut self, partitions: &[i32]) -> Result<(), EngineError> {
        self.owned.get_or_insert_with(HashSet::new).extend(partitions.iter().copied());
        self.share_owned();
        self.store.load_schedule()?;
        self.outcomes_assigned(partitions)?;
        self.metrics.budget_queue_length.set(self.store.schedule().queue.len() as i64);
        Ok(())
    }

    /// Work that time alone brings (`run`, between batches): announcements
    /// waiting for budget that the wall clock now lets out or expires.
    pub fn tick(&mut self, out: &mut Output) -> Result<(), EngineError> {
        self.release(out)
    }

    /// Takes back a written batch's changelog buffers (see
    /// [`crate::state::store::Store::recycle`]).
    pub fn recycle(&mut self, spare: crate::state::store::ChangeRecords) {
        self.store.recycle(spare);
    }

    /// The account and user records changed since the last commit (see
    /// `kafka.max_batch_records`).
    pub fn touched_records(&self) -> usize {
        self.store.touched_records()
    }

    /// Whether anything was changed since the last commit.
    pub fn has_changes(&self) -> bool {
        self.store.has_changes() || self.part_times_changed
    }

    /// Announcements waiting for budget.
    pub fn queue_len(&self) -> usize {
        self.store.schedule().queue.len()
    }

    /// Replaces the wall clock (used to reject events from the future, and
    /// as the budget's clock in `run`).
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + 'static) -> Engine {
        self.clock = Box::new(clock);
        self
    }

    /// The live definition.
    pub fn definition(&self) -> &Arc<CompiledDefinition> {
        &self.defs.live
    }

    pub fn reader(&self) -> StateReader {
        self.store.reader()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The next offset to apply for a partition: what this engine applied,
    /// else what RocksDB says was committed.
    pub fn position(&mut self, topic: &str, partition: i32) -> Result<Option<i64>, EngineError> {
        Ok(self.slot(topic, partition)?.map(|i| self.positions[i].next))
    }

    /// Index of the partition's position, loaded from RocksDB on first use
    /// (`None`: nothing applied or committed yet).
    fn slot(&mut self, topic: &str, partition: i32) -> Result<Option<usize>, EngineError> {
        if let Some(i) = self.positions.iter().position(|p| p.partition == partition && p.topic == topic) {
            return Ok(Some(i));
        }
        Ok(match self.store.reader().offset(topic, partition)? {
            Some(next) => {
                self.positions.push(Position { topic: topic.to_string(), partition, next, pending: false });
                Some(self.positions.len() - 1)
            }
            None => None,
        })
    }

    /// Applies one record. Records at offsets already applied are skipped,
    /// so Kafka redelivering after a restart or rebalance changes nothing.
    pub fn process(&mut self, rec: &InputRecord<'_>, out: &mut Output) -> Result<(), EngineError> {
        self.process_with(rec, None, out)
    }

    /// [`Engine::process`] of a record already decoded by a copy of
    /// [`Engine::decoder`] (on another thread: `replay` parses the next
    /// lines while this one applies).
    pub fn process_decoded(
        &mut self,
        rec: &InputRecord<'_>,
        decoded: Result<Event, Rejection>,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        self.process_with(rec, Some(decoded), out)
    }

    /// [`Engine::process_decoded`], with the records read ahead for it by a
    /// [`Engine::prefetcher`] (see [`crate::state::prefetch`]).
    pub fn process_fetched(
        &mut self,
        rec: &InputRecord<'_>,
        decoded: Result<Event, Rejection>,
        fetched: Fetched,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        self.store.set_fetched(fetched);
        let r = self.process_with(rec, Some(decoded), out);
        self.store.set_fetched(Fetched::default());
        r
    }

    /// Brings what the events after the one about to be applied will need
    /// of the cache into the processor's caches, so that their lookups do
    /// not wait on memory (on the long tail, nearly every account and user
    /// is a miss of the processor's caches). In three steps, each asking
    /// for what the one before brought in: [`PREFETCH_AHEAD`] events ahead
    /// where the index holds their records, half as far ahead the cached
    /// records themselves (see
    /// [`Records::prefetch`](crate::state::cache::Records::prefetch)), a
    /// quarter as far what an account's record points at; half as far
    /// ahead too, where the message id's probe of the ids in memory starts.
    /// `upcoming`: the decoded events that follow, in order. Changes
    /// nothing.
    #[inline]
    pub fn prefetch(&self, upcoming: &[Result<Event, Rejection>]) {
        let at = |n: usize| match upcoming.get(n.wrapping_sub(1)) {
            Some(Ok(ev)) if !ev.anonymous => Some(ev),
            _ => None,
        };
        if let Some(ev) = at(PREFETCH_AHEAD) {
            self.store.prefetch_index(ev.account_id.as_deref(), &ev.user_id);
        }
        if let Some(ev) = at(PREFETCH_AHEAD / 2) {
            self.store.prefetch(ev.account_id.as_deref(), &ev.user_id);
        }
        if let Some(Ok(Event { message_id: Some(id), .. })) = upcoming.get(PREFETCH_AHEAD / 2 - 1) {
            self.store.prefetch_id(id);
        }
        if let Some(a) = at(PREFETCH_AHEAD / 4).and_then(|ev| ev.account_id.as_deref()) {
            self.store.prefetch_deep(a);
        }
    }

    /// A reader of state records ahead of the engine, for the thread that
    /// decodes its input (see [`Engine::process_fetched`]).
    pub fn prefetcher(&self) -> Prefetcher {
        self.store.prefetcher()
    }

    /// The decoder of the input configuration, to decode records
    /// elsewhere (see [`Engine::process_decoded`]); its `now_ms` is the wall
    /// clock.
    pub fn decoder(&self) -> Decoder {
        self.decoder.clone()
    }

    fn process_with(
        &mut self,
        rec: &InputRecord<'_>,
        decoded: Option<Result<Event, Rejection>>,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let slot = self.slot(rec.topic, rec.partition)?;
        if let Some(i) = slot {
            if rec.offset < self.positions[i].next {
                self.metrics.duplicates_skipped.inc();
                return Ok(());
            }
        }
        self.store.set_partition(rec.partition);
        if let Some(ts) = rec.timestamp_ms {
            self.batch_oldest_ts = Some(self.batch_oldest_ts.map_or(ts, |o| o.min(ts)));
        }
        let decoded = match decoded {
            Some(d) => d,
            None => self.decoder.decode(rec.payload, (self.clock)()),
        };
        let result = match decoded {
            Ok(ev) => {
                // Event time moves on: the sweep first (what time alone
                // did happened before this event), then the event.
                let t = self.part_times.entry(rec.partition).or_insert(i64::MIN);
                if ev.time_ms > *t {
                    *t = ev.time_ms;
                    self.part_times_changed = true;
                    self.advance(rec.partition, out)?;
                    self.store.set_partition(rec.partition);
                }
                self.apply(ev, out)?
            }
            Err(r) => Err(r),
        };
        if let Err(rej) = result {
            self.dead_letter(rec, rej, out);
        }
        let i = match slot {
            Some(i) => i,
            None => {
                self.positions.push(Position {
                    topic: rec.topic.to_string(),
                    partition: rec.partition,
                    next: 0,
                    pending: false,
                });
                self.positions.len() - 1
            }
        };
        self.positions[i].next = rec.offset + 1;
        self.positions[i].pending = true;
        if self.budget_clock == BudgetClock::Event {
            self.release(out)?;
        }
        Ok(())
    }

    /// Counts a refused record and keeps it, as it came, for the
    /// dead-letter topic.
    fn dead_letter(&self, rec: &InputRecord<'_>, rej: Rejection, out: &mut Output) {
        self.metrics.dead_letters.with_label_values(&[rej.reason.as_str()]).inc();
        out.dead_letters.push(DeadLetter {
            payload: rec.payload.map(<[u8]>::to_vec).unwrap_or_default(),
            key: rec.key.map(<[u8]>::to_vec),
            tombstone: rec.payload.is_none(),
            reason: rej.reason,
            detail: rej.detail,
            topic: rec.topic.to_string(),
            partition: rec.partition,
            offset: rec.offset,
        });
    }

    /// Encodes what changed since the last commit (and its changelog
    /// records, when the changelog is on) without writing it: only
    /// through [`commit::Committer`], which keeps the order of the steps.
    fn prepare_commit(&mut self) -> Prepared {
        let offsets: Vec<(String, i32, i64)> = self
            .positions
            .iter_mut()
            .filter(|p| p.pending)
            .map(|p| {
                p.pending = false;
                (p.topic.clone(), p.partition, p.next)
            })
            .collect();
        if self.part_times_changed {
            self.store.put_meta("partition_times", serde_json::to_vec(&self.part_times).expect("times serialise"));
            self.part_times_changed = false;
        }
        self.metrics.budget_queue_length.set(self.store.schedule().queue.len() as i64);
        self.prepare_outcomes();
        let mut prepared = self.store.prepare(&offsets);
        prepared.oldest_ts = self.batch_oldest_ts.take();
        prepared
    }

    /// The writer of prepared commits (see [`commit::Committer`]).
    fn writer(&self) -> StateWriter {
        self.store.writer()
    }

    /// Bookkeeping after a prepared commit is written (by the
    /// [`commit::Committer`]): trims the cache, updates the metrics
    /// (`written_ms`: wall-clock time of the write).
    fn committed(&mut self, mut stats: CommitStats, oldest_ts: Option<i64>, written_ms: i64) -> CommitStats {
        stats.cached_accounts = self.store.written();
        self.metrics.commits.with_label_values(&["state"]).inc();
        self.metrics.cache_accounts.set(stats.cached_accounts as i64);
        self.metrics.cache_users.set(self.store.cached_users() as i64);
        self.metrics.dedupe_ids_in_memory.set(self.store.ids_in_memory() as i64);
        self.metrics.watermark_seconds.set(self.store.watermark_ms() / 1000);
        self.update_warming_gauge();
        self.publish_rule_metrics();
        if let Some(ts) = oldest_ts {
            self.metrics.end_to_end_seconds.observe(((written_ms - ts).max(0) as f64) / 1000.0);
        }
        stats
    }

    /// Forgets everything applied since the last commit (the batch's output
    /// could not be delivered): the next records are applied again on top
    /// of the committed state.
    pub fn abort(&mut self) {
        self.positions.clear();
        self.batch_oldest_ts = None;
        self.store.discard_cache();
        if let Err(e) = self.load_meta() {
            tracing::error!(cause = %e, "cannot read the budget ledger back");
        }
    }

    /// Forgets in-memory positions for partitions this instance no longer
    /// owns (after a rebalance), so that their state is read again from
    /// RocksDB if they come back.
    pub fn release_partitions(&mut self, parts: &[(String, i32)]) {
        self.positions.retain(|p| !parts.iter().any(|(t, n)| *n == p.partition && *t == p.topic));
    }

    /// Partitions revoked from this engine (`run`): their accounts are
    /// neither swept nor released here any more.
    pub fn revoked(&mut self, parts: &[(String, i32)]) {
        if let Some(o) = &mut self.owned {
            for (_, p) in parts {
                o.remove(p);
            }
        }
        self.share_owned();
        let numbers: Vec<i32> = parts.iter().map(|(_, p)| *p).collect();
        self.outcomes_revoked(&numbers);
    }

    /// The state, for restoring it from a changelog.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Flushes RocksDB memtables (clean shutdown).
    pub fn close(&mut self) -> Result<(), EngineError> {
        self.store.flush_to_disk()?;
        Ok(())
    }

    /// The user an id stands for: itself, or the user an alias merged it
    /// into (through later aliases too). The link records followed are
    /// added to `followed`.
    fn resolve_user(&mut self, id: String, followed: &mut Vec<String>) -> Result<String, EngineError> {
        Ok(self.resolve_user_account(id.into(), followed)?.0.into())
    }

    /// The user an id stands for (following alias links), and the account
    /// that user's record names (read in the same lookup: this is on
    /// every event's path).
    fn resolve_user_account(
        &mut self,
        mut id: Id,
        followed: &mut Vec<String>,
    ) -> Result<(Id, Option<Id>), EngineError> {
        for _ in 0..MAX_LINK_HOPS {
            let state = &self.store.user(&id)?.state;
            match &state.linked_to {
                Some(next) if *next != id => {
                    let next = Id::from(next.as_str());
                    followed.push(std::mem::replace(&mut id, next).into());
                }
                _ => {
                    // (Inline, as the event's own ids: no allocation.)
                    let account = state.account.clone();
                    return Ok((id, account));
                }
            }
        }
        // Too many hops: the last id's record, as it is.
        let account = self.store.user(&id)?.state.account.clone();
        Ok((id, account))
    }

    /// Applies one decoded event: [`Engine::resolve_identity`] (which
    /// account, is it acceptable, the users' side), then
    /// [`Engine::apply_to_account`] (the account's side), then the
    /// definitions' decisions on the account, announced.
    fn apply(&mut self, mut ev: Event, out: &mut Output) -> Result<Result<(), Rejection>, EngineError> {
        self.applied = self.applied.wrapping_add(1);
        let started = (self.applied % APPLY_TIMED_EVERY == 0).then(Instant::now);
        let defs = self.defs.clone();
        let r = match self.resolve_identity(&defs, &mut ev)? {
            Err(rej) => return Ok(Err(rej)),
            Ok(Identity::Skipped) => return Ok(Ok(())),
            Ok(Identity::UsersOnly) => {
                self.count_applied(ev.kind, started);
                return Ok(Ok(()));
            }
            Ok(Identity::Account(r)) => r,
        };
        let (account, now_ms, pending) = self.apply_to_account(&defs, &ev, r)?;
        if !pending.is_empty() {
            self.announce(&account, pending, ev.time_ms, now_ms, out)?;
        }
        self.count_applied(ev.kind, started);
        self.schedule_sweep(&account, now_ms)?;
        // Done with the account for this event: its records are encoded
        // while they are hot (see `Store::encode_early`).
        self.store.encode_early(&account);
        Ok(Ok(()))
    }

    /// The identity phase of [`Engine::apply`]: which account the event
    /// belongs to (following the user's links), whether it is acceptable
    /// (lateness, a retried message), and its users' side: the user's
    /// account link, traits and trait-change signals, an alias's merge, a
    /// login's link to the visitor it was. Decided before anything is
    /// changed, so a rejected event leaves no trace in state.
    ///
    /// Its one read of the account's side is the account's latest event
    /// time (lateness); it also files the event's message id in the
    /// dedupe filter, which all partitions share.
    fn resolve_identity(
        &mut self,
        defs: &Definitions,
        ev: &mut Event,
    ) -> Result<Result<Identity, Rejection>, EngineError> {
        let layout = &defs.layout;
        // The link records followed (their idle-TTL clock is refreshed
        // once the event is accepted).
        let mut followed: Vec<String> = Vec::new();
        // A visitor already linked to a user (an identify or an alias
        // carried both ids): their anonymous events are the user's.
        if ev.anonymous {
            let mut key = std::mem::take(&mut self.anon_buf);
            anon_key_into(&mut key, &ev.user_id);
            if let Some(u) = self.store.user(&key)?.state.linked_to.as_deref() {
                ev.user_id = Id::from(u);
                ev.anonymous = false;
                followed.push(key.clone());
            }
            self.anon_buf = key;
        }
        // A user id that an alias merged into another: its events are that
        // user's.
        let mut known = None;
        if !ev.anonymous {
            (ev.user_id, known) = self.resolve_user_account(std::mem::take(&mut ev.user_id), &mut followed)?;
        }
        // An alias: its previous id is an earlier user id (a user record
        // exists), whose user becomes this one, or else an anonymous id,
        // linked as an identify with both ids links it.
        let mut merge: Option<Merge> = None;
        if let Some(p) = ev.previous_id.take() {
            let prev = &self.store.user(&p)?.state;
            let earlier = if prev.updated_ms > 0 || prev.linked_to.is_some() {
                Some(self.resolve_user(p.clone(), &mut Vec::new())?)
            } else {
                match self.store.user(&anon_key(&p))?.state.linked_to.clone() {
                    // A visitor who already logged in as someone else.
                    Some(u) => Some(self.resolve_user(u, &mut Vec::new())?),
                    None => None,
                }
            };
            match earlier {
                Some(o) if o == ev.user_id => {} // already one person
                Some(o) => merge = Some(Merge { old: o, old_domain: None, domain_before: None, domain_after: None }),
                None if p == ev.user_id => {}
                None => ev.anonymous_id = Some(p.into()),
            }
        }
        // A user id with the anonymous id they had before logging in: the
        // link, and the account that visitor was active in (not yet linked
        // to this user: its activity becomes the user's below).
        let mut link: Option<Login> = None;
        if let (false, Some(x)) = (ev.anonymous, &ev.anonymous_id) {
            let mut key = std::mem::take(&mut self.anon_buf);
            anon_key_into(&mut key, x);
            let a = &self.store.user(&key)?.state;
            if a.linked_to.as_deref() != Some(ev.user_id.as_str()) {
                link = Some(Login { visitor: key.clone(), account: a.account.clone(), first: a.linked_to.is_none() });
            }
            self.anon_buf = key;
        }
        if let (None, Some(m)) = (&known, &merge) {
            // The new id of a user who changed ids: the old one's account.
            known = self.store.user(&m.old)?.state.account.clone();
        }
        // So that a login (an identify with no account) can qualify the
        // account the visitor was using.
        // (Moved, not copied: whether the event named its account is what
        // is asked of it below.)
        let named_account = ev.account_id.is_some();
        let account = ev
            .account_id
            .take()
            .or(known)
            .or_else(|| link.as_ref().filter(|l| l.first).and_then(|l| l.account.clone()));
        if ev.anonymous && (account.is_none() || !ev.kind.is_usage()) {
            // Normal traffic, not an error: a visitor of the marketing site
            // with no account, or traits of someone not logged in.
            let reason = if ev.kind.is_usage() { "anonymous_without_account" } else { "anonymous_traits" };
            self.metrics.events_skipped.with_label_values(&[reason]).inc();
            return Ok(Ok(Identity::Skipped));
        }
        match &account {
            None if !matches!(ev.kind, Kind::Identify | Kind::Alias) => {
                return Ok(Err(Rejection::new(
                    Reason::NoAccount,
                    "no account id in the event and no account known for the user (send a group call or context.groupId)",
                )));
            }
            None => {}
            Some(a) => {
                // Lateness is judged per account: an event older than every
                // window of its account's clock can no longer count anywhere.
                // (A global watermark would reject a lagging partition's
                // events during a backfill.)
                let last = self.store.account(a)?.state.last_seen_ms;
                if last > 0 && ev.time_ms < last - self.retention_ms {
                    return Ok(Err(Rejection::new(
                        Reason::TooLate,
                        format!(
                            "event time {} is older than the longest window ({} days) before the account's latest event {}",
                            emit::format_time_ms(ev.time_ms),
                            self.retention_ms / 86_400_000,
                            emit::format_time_ms(last)
                        ),
                    )));
                }
                if last > 0 && defs.len() > 1 {
                    for (i, d) in defs.all().enumerate() {
                        if ev.time_ms < last - d.retention_seconds * 1000 {
                            self.late_for[i] += 1;
                        }
                    }
                }
            }
        }

        // Counted once per messageId, and only once accepted: a retried
        // copy of a rejected event is judged again, not taken for a
        // duplicate of something that never counted.
        if let Some(id) = &ev.message_id {
            if self.store.seen_before(id, ev.time_ms)? {
                self.metrics.duplicate_events.inc();
                return Ok(Ok(Identity::Skipped));
            }
        }
        let refresh_ms = self.store.idle_refresh_ms();
        for key in &followed {
            // A link in use is not idle (refreshed now and then: see
            // `idle_refresh_ms`).
            self.store.user(key)?.keep_alive(ev.time_ms, refresh_ms);
        }
        if let Some(m) = &mut merge {
            // The old id becomes the new one: later events under it are
            // redirected (above), and what is known of the user carries
            // over where the new id knows nothing.
            let old = self.store.user(&m.old)?;
            old.state.linked_to = Some(ev.user_id.to_string());
            old.state.updated_ms = old.state.updated_ms.max(ev.time_ms);
            old.dirty = true;
            let old = old.state.clone();
            let user = self.store.user(&ev.user_id)?;
            m.old_domain.clone_from(&old.email_domain);
            m.domain_before.clone_from(&user.state.email_domain);
            let mut traits: Map<String, Value> = serde_json::from_str(&user.state.traits_json).unwrap_or_default();
            let before = traits.len();
            for (k, v) in serde_json::from_str::<Map<String, Value>>(&old.traits_json).unwrap_or_default() {
                traits.entry(k).or_insert(v);
            }
            if traits.len() != before {
                user.state.traits_json = Value::Object(traits).to_string();
                user.dirty = true;
            }
            if user.state.email_domain.is_none() && old.email_domain.is_some() {
                user.state.email_domain = old.email_domain;
                user.dirty = true;
            }
            m.domain_after.clone_from(&user.state.email_domain);
        }

        // The user: account link, traits, trait-change signals (of every
        // definition: signals are matched once, for the layout).
        let mut hits: Vec<u64> = Vec::new();
        // An email domain that changed with this identify: (old, new).
        let mut email_change: Option<(Option<Id>, Option<Id>)> = None;
        // For a user's first usage event in an account (its email domain
        // counts for the account then).
        // (Inline: a domain is rarely longer than 24 bytes.)
        let mut user_domain: Option<Id> = None;
        // A visitor not logged in (only an anonymousId) has no user record:
        // their events count toward the account's volume and signals, not
        // its users.
        if !ev.anonymous {
            let user = self.store.user(&ev.user_id)?;
            if let Some(a) = account.as_ref().filter(|_| named_account || user.state.account.is_none()) {
                if user.state.account.as_ref() != Some(a) {
                    user.state.account = Some(a.clone());
                    user.dirty = true;
                }
            }
            if ev.kind == Kind::Identify {
                if let Some(new) = &ev.traits {
                    // (The merged traits' email is the call's when it names one.)
                    if let Some(email) = new.get("email") {
                        let domain = email.as_str().and_then(email_domain);
                        if domain != user.state.email_domain {
                            email_change = Some((user.state.email_domain.clone(), domain.clone()));
                            user.state.email_domain = domain;
                            user.dirty = true;
                        }
                    }
                    // (The same traits sent again, as analytics.js does on
                    // every page load, change nothing, and are neither parsed
                    // nor merged: a trait's change needs a value that differs.)
                    if !same_traits(&mut self.traits_buf, new, &user.state.traits_json) {
                        let known = known_traits(&user.state.traits_json);
                        for s in &layout.signals {
                            if let Some((name, becomes)) = &s.trait_change {
                                let matches = |v: Option<&Value>| {
                                    v.and_then(Value::as_str)
                                        .is_some_and(|x| becomes.iter().any(|b| b.eq_ignore_ascii_case(x)))
                                };
                                let before = known.as_ref().and_then(|k| k.get(name));
                                if new.contains_key(name) && matches(new.get(name)) && !matches(before) {
                                    hits.push(s.id);
                                }
                            }
                        }
                        // (Traits already known, among others the record
                        // holds, change nothing either, and write nothing.)
                        if merge_traits(&mut user.state.traits_json, known, new) {
                            user.dirty = true;
                        }
                    }
                }
            }
            user_domain = if ev.kind.is_usage() || link.is_some() { user.state.email_domain.clone() } else { None };
            // Refresh the user's idle-TTL clock now and then (each refresh
            // is a write).
            user.keep_alive(ev.time_ms, refresh_ms);
        }
        if ev.anonymous {
            // The visitor's record: the account they are active in (kept
            // with an idle TTL like a user's).
            anon_key_into(&mut self.anon_buf, &ev.user_id);
            let a = self.store.user(&self.anon_buf)?;
            if a.state.account != account {
                a.state.account.clone_from(&account);
                a.dirty = true;
            }
            a.keep_alive(ev.time_ms, refresh_ms);
        }
        if let Some(Login { visitor, .. }) = &link {
            let a = self.store.user(visitor)?;
            a.state.linked_to = Some(ev.user_id.to_string());
            a.state.updated_ms = a.state.updated_ms.max(ev.time_ms);
            a.dirty = true;
        }
        let Some(account) = account else {
            // An identify (or alias) of a user with no account yet: traits
            // and links only, an event applied all the same.
            return Ok(Ok(Identity::UsersOnly));
        };
        Ok(Ok(Identity::Account(Resolved { account, merge, link, hits, email_change, user_domain })))
    }

    /// The account phase of [`Engine::apply`]: the event's signals, then the
    /// account's clock, buckets, members and signal hits, then the
    /// definitions' decisions on it. Returns the account, its event time
    /// after the event, and the announcements to make.
    fn apply_to_account(
        &mut self,
        defs: &Definitions,
        ev: &Event,
        r: Resolved,
    ) -> Result<(Id, i64, Vec<Pending>), EngineError> {
        let Resolved { account, merge, link, mut hits, email_change, user_domain } = r;
        let layout = &defs.layout;
        match ev.kind {
            Kind::Track => {
                let name = ev.name.as_deref().unwrap_or_default();
                if let Some(t) = layout.track.get(name) {
                    hits.extend_from_slice(&t.signals);
                }
            }
            Kind::Page => {
                if let Some(path) = ev.path.as_deref() {
                    hits.extend(
                        layout
                            .signals
                            .iter()
                            .filter(|s| s.page_path.as_ref().is_some_and(|r| r.is_match(path)))
                            .map(|s| s.id),
                    );
                }
            }
            _ => {}
        }

        // The account.
        self.store.set_watermark_ms(ev.time_ms);
        self.time_range = Some(match self.time_range {
            Some((lo, hi)) => (lo.min(ev.time_ms), hi.max(ev.time_ms)),
            None => (ev.time_ms, ev.time_ms),
        });
        let reader = self.store.reader();
        let entry = self.store.account(&account)?;
        let st = &mut entry.state;
        if st.first_seen_ms == 0 || ev.time_ms < st.first_seen_ms {
            st.first_seen_ms = ev.time_ms;
        }
        st.last_seen_ms = st.last_seen_ms.max(ev.time_ms);
        st.seq += 1;
        if st.partition.is_some_and(|p| p != entry.partition) {
            // Fine for one instance with one worker; several would each
            // hold part of this account (README, "What scale-out needs
            // from the input").
            self.metrics.account_partition_changes.inc();
        }
        st.partition = Some(entry.partition);
        entry.dirty = true;
        let idx = bucket_of(ev.time_ms, layout.bucket_seconds);
        if ev.kind == Kind::Group {
            if let Some(new) = &ev.traits {
                // (Each new user's `group` call names the company again:
                // the account's traits, and their CEL values, stay as
                // they are unless one changed.)
                if !same_traits(&mut self.traits_buf, new, &entry.state.traits_json) {
                    let known = known_traits(&entry.state.traits_json);
                    if merge_traits(&mut entry.state.traits_json, known, new) {
                        entry.traits_cel.take();
                    }
                }
            }
        }
        if let Some(m) = &merge {
            // One person, two ids: the old id's activity in the account is
            // the new one's, and the two count as one active user.
            let old = reader.member_into(entry, &account, &m.old)?.state.clone();
            let member = reader.member_into(entry, &account, &ev.user_id)?;
            let was_member = member.state.first_seen_ms > 0;
            if old.first_seen_ms > 0 {
                let before = (member.state.last_seen_ms > 0)
                    .then(|| bucket_of(member.state.last_seen_ms, layout.bucket_seconds));
                member.state.merge(&old);
                member.dirty = true;
                let now = bucket_of(member.state.last_seen_ms, layout.bucket_seconds);
                if old.last_seen_ms > 0 {
                    entry.state.remove_user(bucket_of(old.last_seen_ms, layout.bucket_seconds));
                }
                entry.state.move_user(before, now);
                // (Rare: the window sums of users are counted again.)
                entry.sums.clear();
                let gone = reader.member_into(entry, &account, &m.old)?;
                gone.state = Default::default();
                gone.dirty = true;
                if let Some(d) = &m.old_domain {
                    entry.state.count_email_domain(d, -1);
                }
            }
            // Email domains count members: the merged one under its
            // domain now.
            if was_member {
                if let Some(d) = &m.domain_before {
                    entry.state.count_email_domain(d, -1);
                }
            }
            if was_member || old.first_seen_ms > 0 {
                if let Some(d) = &m.domain_after {
                    entry.state.count_email_domain(d, 1);
                }
            }
            for h in entry.state.signals.iter_mut().filter(|h| h.user == m.old) {
                h.user.clear();
                h.user.push_str(&ev.user_id);
            }
            entry.traits_cel.take();
        }
        if let Some(Login { visitor: key, account: Some(a), first: true }) = &link {
            if *a == account {
                // The user was this visitor: their activity in the account
                // becomes the user's, who is an active user from now on
                // (so a login can qualify the account).
                let visitor = reader.member_into(entry, &account, key)?.state.clone();
                if visitor.first_seen_ms > 0 {
                    let member = reader.member_into(entry, &account, &ev.user_id)?;
                    let new_member = member.state.first_seen_ms == 0;
                    let old = (member.state.last_seen_ms > 0)
                        .then(|| bucket_of(member.state.last_seen_ms, layout.bucket_seconds));
                    member.state.merge(&visitor);
                    member.dirty = true;
                    let now = bucket_of(member.state.last_seen_ms, layout.bucket_seconds);
                    if let Some(moved) = entry.state.move_user(old, now) {
                        entry.sums.user_moved(moved);
                    }
                    if let (true, Some(d)) = (new_member, &user_domain) {
                        entry.state.count_email_domain(d, 1);
                    }
                    entry.traits_cel.take();
                    let gone = reader.member_into(entry, &account, key)?;
                    gone.state = Default::default();
                    gone.dirty = true;
                }
            }
        }
        if ev.kind.is_usage() {
            let mut slots = [0usize; 8];
            let mut n = 1;
            if ev.kind == Kind::Track {
                let name = ev.name.as_deref().unwrap_or_default();
                for &i in layout.track.get(name).map_or(&[][..], |t| &t.columns[..]) {
                    if n < slots.len() {
                        slots[n] = i;
                        n += 1;
                    }
                }
            }
            if entry.state.add_event_exact(idx, &slots[..n], layout.counters.len()) {
                entry.sums.added(&layout.windows, idx, &slots[..n]);
            } else {
                entry.sums.clear();
            }
            if ev.kind == Kind::Track {
                entry.state.touch_feature(ev.name.as_deref().unwrap_or_default(), idx);
            }
            if !ev.anonymous {
                let member = reader.member_into(entry, &account, &ev.user_id)?;
                let new_member = member.state.first_seen_ms == 0;
                let old = (member.state.last_seen_ms > 0)
                    .then(|| bucket_of(member.state.last_seen_ms, layout.bucket_seconds));
                member.state.add_event(ev.time_ms);
                // Leads count a user's events of the last 28 days, whatever the
                // definitions' windows.
                member.state.prune(ev.time_ms, ((self.retention_ms / 86_400_000) as u32 + 1).max(29));
                member.dirty = true;
                if let Some(moved) = entry.state.move_user(old, idx) {
                    entry.sums.user_moved(moved);
                }
                if let (true, Some(d)) = (new_member, &user_domain) {
                    entry.state.count_email_domain(d, 1);
                    entry.traits_cel.take();
                }
            } else {
                // The visitor's activity, kept apart (not a user of the
                // account) until a login links it to one.
                anon_key_into(&mut self.anon_buf, &ev.user_id);
                let member = reader.member_into(entry, &account, &self.anon_buf)?;
                member.state.add_event(ev.time_ms);
                member.state.prune(ev.time_ms, ((self.retention_ms / 86_400_000) as u32 + 1).max(29));
                member.dirty = true;
            }
        }
        if let Some((old, new)) = &email_change {
            // A member's email changed: it counts under its new domain.
            if reader.member_into(entry, &account, &ev.user_id)?.state.first_seen_ms > 0 {
                if let Some(d) = old {
                    entry.state.count_email_domain(d, -1);
                }
                if let Some(d) = new {
                    entry.state.count_email_domain(d, 1);
                }
                entry.traits_cel.take();
            }
        }
        if ev.anonymous && !hits.is_empty() {
            let who = format!("{ANONYMOUS_PREFIX}{}", ev.user_id);
            for &s in &hits {
                entry.state.add_signal(s, &who, ev.time_ms);
            }
        } else {
            for &s in &hits {
                entry.state.add_signal(s, &ev.user_id, ev.time_ms);
            }
        }
        let now_ms = entry.state.last_seen_ms;
        let now_bucket = bucket_of(now_ms, layout.bucket_seconds);
        entry.state.prune(now_bucket, self.retention_buckets, layout.bucket_seconds);
        entry.sums.pruned(now_bucket.saturating_sub(self.retention_buckets));
        let pending = self.detector.decide(defs, entry, &self.metrics, &account, now_ms);
        Ok((account, now_ms, pending))
    }

    /// `pqa_events_total` for an event applied, and its `apply` time when
    /// it was taken (see [`APPLY_TIMED_EVERY`]).
    fn count_applied(&mut self, kind: Kind, started: Option<Instant>) {
        let kind_counter = &mut self.kind_counters[kind_index(kind)];
        kind_counter.get_or_insert_with(|| self.metrics.events.with_label_values(&[kind.as_str()])).inc();
        if let Some(started) = started {
            self.apply_seconds
                .get_or_insert_with(|| self.metrics.batch_seconds.with_label_values(&["apply"]))
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Builds and routes the announcements decided for an account at event
    /// time `time_ms`: shadows' to the shadow output; the live
    /// definition's through the budget (out now, held, or suppressed: a
    /// disqualification of a qualification sales never received).
    fn announce(
        &mut self,
        account: &str,
        pending: Vec<Pending>,
        time_ms: i64,
        now_ms: i64,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let defs = self.defs.clone();
        let entry = self.store.account(account)?;
        let mut account_traits: Map<String, Value> = serde_json::from_str(&entry.state.traits_json).unwrap_or_default();
        let (domain, personal) = entry.state.identity(&defs.live.free_mail_domains);
        if let Some(d) = domain {
            account_traits.insert("domain".into(), Value::String(d));
        }
        account_traits.insert("personal_account".into(), Value::Bool(personal));
        let (seq, first_seen_ms) = (entry.state.seq, entry.state.first_seen_ms);
        let held = entry.state.held.as_ref().map(|h| (h.event_type == emit::TYPE_QUALIFIED, h.qualified_at_ms));
        let told = entry.state.announced_out;
        for p in pending {
            let def = defs.get(p.definition);
            let live = p.definition == 0;
            let mut kind = p.kind;
            let mut qualified_at = (kind != Announcement::Disqualified).then_some(time_ms);
            if let (true, Some((was_qualified, at)), false) = (live, held, kind == Announcement::Disqualified) {
                // Replaces what waits for budget: sales has not heard of
                // the account yet if that was its qualification.
                if was_qualified {
                    kind = Announcement::Qualified;
                }
                qualified_at = Some(at);
            }
            let role = Definitions::role(p.definition);
            let short = kind.short_name();
            self.metrics.definition_announcements.with_label_values(&[&def.version, role, short]).inc();
            let stats = self.stats.entry(def.version.clone()).or_default();
            *stats.announcements.entry(short.to_string()).or_default() += 1;
            if live && kind == Announcement::Disqualified && !told {
                // Sales never received the qualification: nothing to take
                // back; what waited is dropped.
                self.drop_held(account, "dropped")?;
                continue;
            }
            let leads = if kind == Announcement::Disqualified {
                Vec::new()
            } else {
                self.leads(def, account, &p.signals, now_ms)?
            };
            let mut event = emit::build(EventInput {
                def,
                kind,
                previous_tier: p.previous_tier,
                account_id: account,
                seq,
                time_ms,
                eval: &p.eval,
                signals: p.signals.iter().collect(),
                leads,
                account_traits: account_traits.clone(),
                first_seen_ms,
                warming_up: p.warming_up,
                qualified_at_ms: qualified_at,
            });
            event.definition = p.definition;
            if kind == Announcement::Qualified {
                let stats = self.stats.entry(def.version.clone()).or_default();
                for r in &event.rules {
                    *stats.by_rule.entry(r.clone()).or_default().entry(event.tier.clone()).or_default() += 1;
                    self.metrics.definition_qualified.with_label_values(&[&def.version, role, r, &event.tier]).inc();
                }
                self.note_qualified(p.definition, account);
            }
            if !live {
                if kind == Announcement::Qualified {
                    self.record_sent(account, p.definition, &event.id, &event.rules, time_ms)?;
                }
                out.shadow_events.push(event);
                continue;
            }
            match self.route(&event, kind)? {
                Route::Out(outcome) => {
                    if kind != Announcement::Disqualified {
                        self.metrics.budget.with_label_values(&[outcome]).inc();
                    }
                    let entry = self.store.account(account)?;
                    entry.state.announced_out = kind != Announcement::Disqualified;
                    entry.dirty = true;
                    if entry.state.held.is_some() {
                        // Superseded by what goes out now.
                        entry.state.held = None;
                        self.store.reindex(account);
                    }
                    if kind == Announcement::Qualified {
                        self.record_sent(account, 0, &event.id, &event.rules, time_ms)?;
                    }
                    self.count_live(&event);
                    out.events.push(event);
                }
                Route::Hold => self.hold(account, event, kind, qualified_at.unwrap_or(time_ms), &p.eval)?,
            }
        }
        Ok(())
    }

    /// Counts an event of the live definition going to the output topic.
    fn count_live(&self, event: &OutputEvent) {
        self.metrics.announcements.with_label_values(&[event.event_type]).inc();
        if event.event_type == emit::TYPE_QUALIFIED {
            for r in &event.rules {
                self.metrics.pqas.with_label_values(&[r, &event.tier]).inc();
            }
        }
    }

    /// What the budget does with a live announcement.
    fn route(&mut self, event: &OutputEvent, kind: Announcement) -> Result<Route, EngineError> {
        if kind == Announcement::Disqualified {
            return Ok(Route::Out("direct"));
        }
        let budget = &self.budget_share(&self.defs.live.budget);
        if !budget.is_capped() {
            return Ok(Route::Out("direct"));
        }
        if bypasses(budget, &event.rules) {
            return Ok(Route::Out("bypassed"));
        }
        let now = self.budget_now();
        self.ledger.prune(now);
        if self.ledger.room(budget, &event.rules, now) {
            self.ledger.record(&event.rules, now);
            self.store.put_meta("budget", self.ledger.encode());
            if let Some(t) = self.ledger.next_change(now) {
                self.next_release_ms = self.next_release_ms.min(t);
            }
            return Ok(Route::Out("direct"));
        }
        Ok(Route::Hold)
    }

    /// Puts a live announcement in the queue (or replaces the one the
    /// account has there, keeping its place in time).
    fn hold(
        &mut self,
        account: &str,
        event: OutputEvent,
        kind: Announcement,
        qualified_at_ms: i64,
        eval: &crate::detect::Evaluation,
    ) -> Result<(), EngineError> {
        let now = self.budget_now();
        let defs = self.defs.clone();
        let tier_rank = defs.live.tiers.iter().position(|t| t.0 == event.tier).unwrap_or(0) as u16;
        let partition = self.store.partition();
        let entry = self.store.account(account)?;
        let queued_at_ms = entry.state.held.as_ref().map_or(now, |h| h.queued_at_ms);
        let new = entry.state.held.is_none();
        entry.state.held = Some(Held {
            id: event.id,
            event_type: kind.event_type().to_string(),
            rules: event.rules,
            tier: event.tier,
            tier_rank,
            score: eval.score,
            qualified_at_ms,
            queued_at_ms,
            partition,
            payload: event.payload,
        });
        entry.dirty = true;
        self.store.reindex(account);
        if new {
            self.metrics.budget.with_label_values(&["queued"]).inc();
        }
        let expires = queued_at_ms.saturating_add(defs.live.budget.max_wait_seconds * 1000);
        self.next_release_ms = self.next_release_ms.min(expires);
        self.metrics.budget_queue_length.set(self.store.schedule().queue.len() as i64);
        Ok(())
    }

    /// Takes the account's announcement out of the queue, if it has one,
    /// counting why (`dropped`, `expired`).
    fn drop_held(&mut self, account: &str, why: &'static str) -> Result<(), EngineError> {
        let entry = self.store.account(account)?;
        if entry.state.held.take().is_some() {
            entry.dirty = true;
            self.store.reindex(account);
            self.metrics.budget.with_label_values(&[why]).inc();
            tracing::debug!(account, why, "announcement taken out of the budget queue");
            self.metrics.budget_queue_length.set(self.store.schedule().queue.len() as i64);
        }
        Ok(())
    }

    /// Releases what waits for budget, best first, as far as the budget
    /// allows now; drops what waited longer than `max_wait`.
    fn release(&mut self, out: &mut Output) -> Result<(), EngineError> {
        if self.store.schedule().queue.is_empty() {
            return Ok(());
        }
        let now = self.budget_now();
        if now < self.next_release_ms {
            return Ok(());
        }
        let defs = self.defs.clone();
        let budget = &self.budget_share(&defs.live.budget);
        let max_wait_ms = budget.max_wait_seconds * 1000;
        self.ledger.prune(now);
        let waiting: Vec<(String, i32)> =
            self.store.schedule().queue.iter().map(|((_, a), p)| (a.clone(), *p)).collect();
        let mut next = i64::MAX;
        let mut changed = false;
        for (account, partition) in waiting {
            if !self.owns(partition) {
                self.store.unschedule_in_memory(&account);
                continue;
            }
            self.store.set_partition(partition);
            let Some(h) = self.store.account(&account)?.state.held.clone() else { continue };
            let expires = h.queued_at_ms.saturating_add(max_wait_ms);
            if !budget.is_capped() || bypasses(budget, &h.rules) {
                // The budget was lifted (a reload): out at once.
            } else if now >= expires {
                self.drop_held(&account, "expired")?;
                continue;
            } else if !self.ledger.room(budget, &h.rules, now) {
                next = next.min(expires);
                continue;
            }
            if budget.is_capped() {
                self.ledger.record(&h.rules, now);
                changed = true;
            }
            let entry = self.store.account(&account)?;
            entry.state.held = None;
            entry.state.announced_out = true;
            entry.dirty = true;
            self.store.reindex(&account);
            let event_type =
                if h.event_type == emit::TYPE_QUALIFIED { emit::TYPE_QUALIFIED } else { emit::TYPE_TIER_CHANGED };
            let event = OutputEvent {
                id: h.id,
                key: account.clone(),
                event_type,
                payload: emit::retime(&h.payload, now),
                rules: h.rules,
                tier: h.tier,
                definition: 0,
                consumed_at: None,
            };
            self.metrics.budget.with_label_values(&["released"]).inc();
            if event_type == emit::TYPE_QUALIFIED {
                self.record_sent(&account, 0, &event.id, &event.rules, now)?;
            }
            self.count_live(&event);
            out.events.push(event);
        }
        if changed {
            self.store.put_meta("budget", self.ledger.encode());
        }
        if let Some(t) = self.ledger.next_change(now) {
            next = next.min(t);
        }
        self.next_release_ms = next;
        self.metrics.budget_queue_length.set(self.store.schedule().queue.len() as i64);
        Ok(())
    }

    /// A partition's event time moved on: the sweep looks at each of its
    /// accounts whose time has passed. Each partition's event time sweeps
    /// its own accounts: a partition that lags (a backfill, a slow
    /// producer) cannot have its accounts disqualified early by the others'
    /// progress, and the output does not depend on how partitions
    /// interleave (the same as `replay` of the same history).
    fn advance(&mut self, partition: i32, out: &mut Output) -> Result<(), EngineError> {
        let low = self.low_watermark();
        if low != self.low_ms {
            self.low_ms = low;
            self.metrics.low_watermark_seconds.set(low / 1000);
        }
        let Some(&now) = self.part_times.get(&partition) else { return Ok(()) };
        if !self.owns(partition) {
            return Ok(());
        }
        let mut last: Option<(i64, String)> = None;
        loop {
            let next = self.store.schedule().sweep.range((partition, i64::MIN, String::new())..).next();
            let Some(((p, due, account), _)) = next else { break };
            if *p != partition || *due >= now {
                break;
            }
            let (due, account) = (*due, account.clone());
            if last.as_ref().is_some_and(|(d, a)| *d == due && *a == account) {
                // The look just taken left the account's entry where it
                // was: the index and the account's record disagree, which
                // nothing correct does. Dropped, so that the sweep moves
                // on instead of looking at it for ever.
                tracing::warn!(account, due, "sweep index entry disagrees with the account's record; dropped");
                self.store.drop_sweep_entry(partition, due, &account);
                continue;
            }
            self.metrics.sweep_checks.inc();
            self.store.set_partition(partition);
            self.wake(&account, due, out)?;
            last = Some((due, account));
        }
        Ok(())
    }

    /// The sweep's look at an account at event time `t`: each definition
    /// that qualifies it and no longer would at `t` disqualifies it (the
    /// announcement at `t`); the next look is scheduled.
    fn wake(&mut self, account: &str, t: i64, out: &mut Output) -> Result<(), EngineError> {
        let defs = self.defs.clone();
        let entry = self.store.account(account)?;
        let mut pending = Vec::new();
        if entry.state.last_seen_ms <= t {
            fields_for(entry, &defs);
            let now_bucket = bucket_of(t, defs.layout.bucket_seconds);
            for (d, def) in defs.all().enumerate() {
                if !is_active(&entry.state, d, def) {
                    continue;
                }
                let eval = evaluate_unnamed(def, &entry.state, None, &entry.traits_cel, defs.account_var(), t);
                if !eval.fired.is_empty() {
                    continue;
                }
                let signals: Vec<SignalHit> = entry.state.live_signals(def, now_bucket).cloned().collect();
                let announced = announced_mut(&mut entry.state, d, def);
                if let Some((kind, previous_tier)) = emit::decide(def, announced, &eval, t) {
                    let mut eval = eval;
                    eval.name_values(def);
                    self.metrics.sweep_disqualified.with_label_values(&[Definitions::role(d)]).inc();
                    let warming_up = def
                        .metrics
                        .iter()
                        .filter(|m| entry.state.warming_up(m, now_bucket, defs.layout.bucket_seconds))
                        .map(|m| m.name.clone())
                        .collect();
                    pending.push(Pending { definition: d, kind, previous_tier, eval, signals, warming_up });
                }
            }
        }
        let from = t.max(self.store.account(account)?.state.last_seen_ms);
        if !pending.is_empty() {
            self.announce(account, pending, t, t, out)?;
        }
        self.schedule_sweep(account, from)
    }

    /// Schedules the sweep's next look at the account: the first moment
    /// after `from_ms` at which a definition that qualifies it would stop
    /// doing so with no further event. Nothing when none qualifies it, or
    /// when the look already scheduled is still ahead.
    fn schedule_sweep(&mut self, account: &str, from_ms: i64) -> Result<(), EngineError> {
        let defs = self.defs.clone();
        let entry = self.store.account(account)?;
        // Called after every event: no allocation unless a search is due.
        let mut active = defs.all().enumerate().filter(|(d, def)| is_active(&entry.state, *d, def));
        let due = entry.state.sweep_due_ms;
        if active.next().is_none() {
            if due != 0 {
                entry.state.sweep_due_ms = 0;
                entry.dirty = true;
                self.store.reindex(account);
            }
            return Ok(());
        }
        if due > from_ms {
            return Ok(());
        }
        let next = defs
            .all()
            .enumerate()
            .filter(|(d, def)| is_active(&entry.state, *d, def))
            .filter_map(|(_, def)| match crate::sweep::next_stop(def, &entry.state, from_ms) {
                crate::sweep::Stop::At(t) | crate::sweep::Stop::Later(t) => Some(t),
                crate::sweep::Stop::Never => None,
            })
            .min()
            .unwrap_or(0);
        if next != due {
            entry.state.sweep_due_ms = next;
            entry.dirty = true;
            self.store.reindex(account);
        }
        Ok(())
    }

    /// The people sales should talk to, best first: those with a work
    /// email before those without; then those behind the definition's
    /// signals (who raised a hand, visited the legal pages, became admin),
    /// the admins and owners, senior titles, and finally the most active.
    /// Each says why in words.
    fn leads(
        &self,
        def: &CompiledDefinition,
        account: &str,
        signals: &[SignalHit],
        now_ms: i64,
    ) -> Result<Vec<Lead>, EngineError> {
        let members = self.store.members(account)?;
        // Behind signals: each user's signals, most recent first.
        let mut roles: Vec<(String, Vec<String>)> = Vec::new();
        for h in signals.iter().rev().filter(|h| !h.user.starts_with(ANONYMOUS_PREFIX)) {
            let what = def.signal(h.signal).map_or_else(String::new, |s| s.description.clone());
            match roles.iter_mut().find(|w| w.0 == h.user) {
                Some(w) if !w.1.contains(&what) => w.1.push(what),
                Some(_) => {}
                None => roles.push((h.user.clone(), vec![what])),
            }
        }
        // Candidates: the users behind signals and the 500 most active.
        let mut active: Vec<(&String, u64)> = members
            .iter()
            .filter(|(u, _)| !u.starts_with('\u{0}'))
            .map(|(u, m)| (u, m.events_in_days(now_ms, 28)))
            .filter(|(_, n)| *n > 0)
            .collect();
        active.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let top_activity = active.first().map_or(0, |a| a.1);
        let mut candidates: Vec<String> = roles.iter().map(|r| r.0.clone()).collect();
        for (u, _) in active.iter().take(500) {
            if !candidates.contains(u) {
                candidates.push((*u).clone());
            }
        }
        // A candidate's traits as a map (for a lead: its traits are copied).
        let traits_of = |user: &str| -> Result<Map<String, Value>, EngineError> {
            Ok(self.store.peek_user(user)?.and_then(|u| serde_json::from_str(&u.traits_json).ok()).unwrap_or_default())
        };
        // What they say, for the ranking: read from the record's JSON in
        // place, only the four traits it asks about made into strings, and
        // those only when escaped (a key that is escaped reads the map).
        let rank_facts = |user: &str| -> Result<LeadFacts, EngineError> {
            let Some(u) = self.store.peek_user(user)? else {
                return Ok(lead_facts(def, |_| None));
            };
            Ok(match serde_json::from_str::<BTreeMap<&str, &RawValue>>(&u.traits_json) {
                Ok(raw) => lead_facts(def, |k| raw.get(k).and_then(|v| json_string(v))),
                Err(_) => {
                    let traits: Map<String, Value> = serde_json::from_str(&u.traits_json).unwrap_or_default();
                    lead_facts(def, |k| traits.get(k).and_then(Value::as_str).map(Cow::Borrowed))
                }
            })
        };
        let signals_of = |user: &str| roles.iter().find(|r| r.0 == user).map(|r| r.1.as_slice()).unwrap_or_default();
        // Ranked on what decides the order; only the `max_leads` first are
        // then made into leads (their reasons written, their traits copied),
        // not every candidate of a large account.
        struct Rank {
            user: String,
            work_email: bool,
            signals: usize,
            admin: bool,
            senior: bool,
            events_28d: u64,
        }
        let mut ranked = Vec::with_capacity(candidates.len());
        for user in candidates {
            let f = rank_facts(&user)?;
            let events_28d = members.iter().find(|m| m.0 == user).map_or(0, |m| m.1.events_in_days(now_ms, 28));
            ranked.push(Rank {
                work_email: f.domain.is_some() && f.free_domain.is_none(),
                signals: signals_of(&user).len(),
                admin: f.admin.is_some(),
                senior: f.senior.is_some(),
                events_28d,
                user,
            });
        }
        ranked.sort_by(|a, b| {
            b.work_email
                .cmp(&a.work_email)
                .then_with(|| b.signals.cmp(&a.signals))
                .then_with(|| b.admin.cmp(&a.admin))
                .then_with(|| b.senior.cmp(&a.senior))
                .then_with(|| b.events_28d.cmp(&a.events_28d))
                .then_with(|| a.user.cmp(&b.user))
        });
        ranked.truncate(def.max_leads);
        let mut leads = Vec::with_capacity(ranked.len());
        for r in ranked {
            let traits_all = traits_of(&r.user)?;
            let f = lead_facts(def, |k| traits_all.get(k).and_then(Value::as_str).map(Cow::Borrowed));
            let mut why = signals_of(&r.user).to_vec();
            if let Some(role) = &f.admin {
                why.push(format!("{role} of the workspace"));
            }
            if let Some(title) = f.senior {
                why.push(title);
            }
            if r.events_28d > 0 {
                let most = if r.events_28d == top_activity { "most active: " } else { "" };
                let n = r.events_28d;
                why.push(format!("{most}{n} event{} in the last 28 days", if n == 1 { "" } else { "s" }));
            }
            match &f.free_domain {
                Some(d) => why.push(format!("no work email ({d})")),
                None if !r.work_email => why.push("no email known".into()),
                None => {}
            }
            let traits = traits_all.into_iter().filter(|(k, _)| def.lead_traits.iter().any(|t| t == k)).collect();
            leads.push(Lead { user_id: r.user, why, events_28d: r.events_28d, traits });
        }
        Ok(leads)
    }
}

/// What a user's traits say about them as a lead (see `Engine::leads`).
struct LeadFacts {
    domain: Option<Id>,
    free_domain: Option<String>,
    admin: Option<String>,
    senior: Option<String>,
}

/// A lead's facts from their traits, as `text` gives each string trait by
/// name (`None`: absent, or not a string).
fn lead_facts<'a>(def: &CompiledDefinition, text: impl Fn(&str) -> Option<Cow<'a, str>>) -> LeadFacts {
    let email = text("email");
    let role = text("role");
    fn trimmed<'b>(v: &'b Option<Cow<'_, str>>) -> Option<&'b str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    let domain = trimmed(&email).and_then(email_domain);
    let free_domain = domain.as_deref().filter(|d| def.free_mail_domains.contains(*d)).map(String::from);
    let admin = trimmed(&role)
        .filter(|r| r.eq_ignore_ascii_case("admin") || r.eq_ignore_ascii_case("owner"))
        .map(str::to_lowercase);
    let senior = ["title", "seniority"].iter().find_map(|k| {
        let raw = text(k);
        let v = trimmed(&raw)?;
        let lower = v.to_lowercase();
        let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric() && c != '-').collect();
        let senior = def.senior_keywords.iter().any(|kw| words.contains(&kw.as_str()));
        senior.then(|| if *k == "title" { v.to_string() } else { format!("{v} (seniority)") })
    });
    LeadFacts { domain, free_domain, admin, senior }
}

/// A JSON value's text if it is a string: borrowed unless escaped.
fn json_string(v: &RawValue) -> Option<Cow<'_, str>> {
    let s = v.get();
    if !s.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(s) {
        Ok(b) => Some(Cow::Borrowed(b)),
        Err(_) => serde_json::from_str::<String>(s).ok().map(Cow::Owned),
    }
}

/// Whether the traits of a call (`new`) are exactly those a record keeps as
/// JSON (`stored`): the same object, serialized the same way (into `buf`).
/// Then merging them changes nothing.
fn same_traits(buf: &mut Vec<u8>, new: &Map<String, Value>, stored: &str) -> bool {
    // (A record with none yet gets the call's, even `{}`.)
    if stored.is_empty() {
        return false;
    }
    buf.clear();
    serde_json::to_writer(&mut *buf, new).is_ok() && buf.as_slice() == stored.as_bytes()
}

/// The traits a record keeps as JSON (`stored`), parsed; `None` for a
/// record that holds none yet (an unreadable object counts as empty).
fn known_traits(stored: &str) -> Option<Map<String, Value>> {
    (!stored.is_empty()).then(|| serde_json::from_str(stored).unwrap_or_default())
}

/// Merges the traits of an `identify` or `group` call (`new`) into those a
/// record keeps as JSON (`stored`, parsed as `known` by [`known_traits`]):
/// each trait the call names takes its new value. `stored` is rewritten,
/// and the answer is true, only if something changed: a trait whose value
/// is new, or a record that held no traits (the object it gets is written,
/// even empty). A record with none yet (a new user's first `identify`, a
/// new account's first `group`) takes the call's traits as they are,
/// neither copied nor merged: the same JSON, the object's keys being in
/// order either way.
fn merge_traits(stored: &mut String, known: Option<Map<String, Value>>, new: &Map<String, Value>) -> bool {
    let Some(mut known) = known else {
        // (Cannot fail: string keys and JSON values.)
        *stored = serde_json::to_string(new).unwrap_or_else(|_| "{}".into());
        return true;
    };
    let mut changed = false;
    for (k, v) in new {
        if known.get(k) != Some(v) {
            known.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    if changed {
        *stored = Value::Object(known).to_string();
    }
    changed
}

/// Whether definition `d` (0: live) has a standing qualification of the
/// account.
fn is_active(state: &AccountState, d: usize, def: &CompiledDefinition) -> bool {
    if d == 0 {
        state.announced.active
    } else {
        state.shadow_announced.iter().any(|(v, a)| *v == def.version && a.active)
    }
}

/// Definition `d`'s announcement bookkeeping of the account.
fn announced_mut<'a>(
    state: &'a mut AccountState,
    d: usize,
    def: &CompiledDefinition,
) -> &'a mut crate::state::account::Announced {
    if d == 0 {
        return &mut state.announced;
    }
    let list = &mut state.shadow_announced;
    let p = match list.iter().position(|(v, _)| *v == def.version) {
        Some(p) => p,
        None => {
            list.push((def.version.clone(), Default::default()));
            list.len() - 1
        }
    };
    &mut list[p].1
}

/// Index of a kind in `Engine::kind_counters`.
fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Track => 0,
        Kind::Page => 1,
        Kind::Identify => 2,
        Kind::Group => 3,
        Kind::Alias => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    struct T {
        engine: Engine,
        out: Output,
        offset: i64,
        _dir: tempfile::TempDir,
    }

    impl T {
        fn new() -> T {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = Config::default_config();
            cfg.state.dir = dir.path().to_path_buf();
            let def = Arc::new(cfg.validate().unwrap());
            let store = Store::open(&cfg.state).unwrap();
            T {
                engine: Engine::new(def, cfg.input, store, Metrics::new()).unwrap(),
                out: Output::default(),
                offset: 0,
                _dir: dir,
            }
        }
        fn send(&mut self, json: &str) {
            let rec = InputRecord {
                topic: "t",
                partition: 0,
                offset: self.offset,
                key: None,
                payload: Some(json.as_bytes()),
                timestamp_ms: None,
            };
            self.offset += 1;
            self.engine.process(&rec, &mut self.out).unwrap();
        }
        fn track(&mut self, user: &str, acct: &str, event: &str, day: u32) {
            self.send(&format!(
                r#"{{"type":"track","event":"{event}","userId":"{user}","context":{{"groupId":"{acct}"}},"timestamp":"2026-01-{day:02}T10:00:00Z"}}"#
            ));
        }
        fn identify(&mut self, user: &str, role: &str, day: u32) {
            self.send(&format!(
                r#"{{"type":"identify","userId":"{user}","traits":{{"role":"{role}","email":"{user}@x.example"}},"timestamp":"2026-01-{day:02}T11:00:00Z"}}"#
            ));
        }
        fn signals(&mut self, acct: &str) -> Vec<String> {
            self.engine.commit().unwrap();
            let def = self.engine.definition().clone();
            self.engine
                .reader()
                .account(acct)
                .unwrap()
                .unwrap()
                .signals
                .iter()
                .map(|h| def.signal_name(h.signal).to_string())
                .collect()
        }
    }

    /// An account's event on another input partition than its last is
    /// counted (the input is not keyed by account); a first event, or one
    /// on the same partition, is not.
    #[test]
    fn events_of_an_account_on_two_partitions_are_counted() {
        let mut t = T::new();
        t.track("u1", "a", "x", 2);
        t.track("u2", "a", "x", 3);
        let changes = |t: &T| t.engine.metrics.account_partition_changes.get();
        assert_eq!(changes(&t), 0);
        let on = |t: &mut T, partition: i32, offset: i64, acct: &str| {
            let json = format!(
                r#"{{"type":"track","event":"x","userId":"u9","context":{{"groupId":"{acct}"}},"timestamp":"2026-01-04T10:00:00Z"}}"#
            );
            let rec = InputRecord {
                topic: "t",
                partition,
                offset,
                key: None,
                payload: Some(json.as_bytes()),
                timestamp_ms: None,
            };
            t.engine.process(&rec, &mut t.out).unwrap();
        };
        on(&mut t, 1, 0, "b");
        assert_eq!(changes(&t), 0, "an account's first event");
        on(&mut t, 1, 1, "a");
        assert_eq!(changes(&t), 1);
    }

    /// An account's map of traits holds what the running definitions read;
    /// a definition swapped in that reads another trait gets a map made for
    /// it, not the one made for the definition before.
    #[test]
    fn a_definition_swapped_in_reads_the_traits_it_names() {
        let defs_with =
            |when: &str| Arc::new(Definitions::single(Arc::new(Config::with_one_rule(when, 50).validate().unwrap())));
        let keys = |t: &mut T| -> Vec<String> {
            match t.engine.store_mut().account("a").unwrap().traits_cel.get() {
                Some(cel::Value::Map(m)) => m.map.keys().map(|k| format!("{k:?}")).collect(),
                other => panic!("no map of traits: {other:?}"),
            }
        };
        let mut t = T::new();
        t.engine.set_definitions(defs_with("has(account.employees) && account.employees > 100000")).unwrap();
        t.send(
            r#"{"type":"group","userId":"u1","groupId":"a","traits":{"name":"Acme","employees":50,"plan":"pro"},"timestamp":"2026-01-02T09:00:00Z"}"#,
        );
        t.track("u1", "a", "x", 2);
        assert_eq!(keys(&mut t), [r#"String("employees")"#]);
        assert!(t.out.events.is_empty());
        t.engine.commit().unwrap();
        t.engine.set_definitions(defs_with("has(account.plan) && account.plan == 'pro'")).unwrap();
        t.track("u1", "a", "x", 2);
        assert_eq!(keys(&mut t), [r#"String("plan")"#]);
        assert_eq!(t.out.events.len(), 1, "the new rule reads the plan and fires");
    }

    /// The cache gauges count what a commit leaves cached: accounts and
    /// users apart.
    #[test]
    fn the_cache_gauges_count_accounts_and_users_apart() {
        let mut t = T::new();
        for u in ["u1", "u2", "u3"] {
            t.track(u, "a1", "Board Created", 5);
        }
        t.track("u4", "a2", "Board Created", 5);
        t.engine.commit().unwrap();
        let m = t.engine.metrics();
        assert_eq!((m.cache_accounts.get(), m.cache_users.get()), (2, 4));
    }

    /// Every event applied is counted by kind; one in
    /// [`APPLY_TIMED_EVERY`] has its `apply` time taken.
    #[test]
    fn one_event_in_sixteen_is_timed_and_every_one_counted() {
        let mut t = T::new();
        for i in 0..(3 * APPLY_TIMED_EVERY + 5) {
            t.track(&format!("u{}", i % 3), "a1", "Board Created", 5);
        }
        let m = t.engine.metrics();
        assert_eq!(m.events.with_label_values(&["track"]).get(), u64::from(3 * APPLY_TIMED_EVERY + 5));
        let apply = m.batch_seconds.with_label_values(&["apply"]);
        assert_eq!(apply.get_sample_count(), 3);
        assert!(apply.get_sample_sum() > 0.0);
    }

    /// A sweep index entry that the account's record does not back (only
    /// a bug or a broken state makes one) is looked at once and dropped:
    /// the sweep moves on instead of spinning on it.
    #[test]
    fn a_sweep_entry_its_account_disagrees_with_does_not_stall_the_engine() {
        let mut t = T::new();
        t.track("u1", "a", "x", 1);
        t.engine.commit().unwrap();
        // "a" qualifies for nothing: its record has no sweep time.
        assert_eq!(t.engine.reader().account("a").unwrap().unwrap().sweep_due_ms, 0);
        let stray = chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z").unwrap().timestamp_millis();
        t.engine.store_mut().schedule_sweep_entry_for_test(0, stray, "a");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            t.track("u1", "a", "x", 3);
            tx.send(t).ok();
        });
        let mut t =
            rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the next event is applied, not stalled");
        assert!(t.engine.store_mut().schedule().sweep.is_empty(), "the stray entry is gone");
        assert_eq!(t.engine.reader().account("a").unwrap().unwrap().seq, 1, "nothing committed the event yet");
    }

    /// An `identify` or `group` call that repeats what is known (clients
    /// send them at every login, every new user's names the company again)
    /// changes nothing: the user's record is not written again, and the
    /// account's traits keep their CEL values. One that changes a trait
    /// does both.
    #[test]
    fn traits_sent_again_unchanged_write_nothing() {
        let mut t = T::new();
        let group = |t: &mut T, user: &str, plan: &str| {
            t.send(&format!(
                r#"{{"type":"group","userId":"{user}","groupId":"a","traits":{{"name":"Acme","plan":"{plan}"}},"timestamp":"2026-01-02T09:00:00Z"}}"#
            ))
        };
        t.identify("u1", "member", 2);
        group(&mut t, "u1", "pro");
        t.track("u1", "a", "x", 2);
        assert_eq!(t.engine.commit().unwrap().users, 1);

        // The same again, the same day: nothing of the user's to write.
        t.identify("u1", "member", 2);
        t.track("u1", "a", "x", 2);
        assert_eq!(t.engine.commit().unwrap().users, 0);
        // A changed trait is written, and kept.
        t.identify("u1", "admin", 2);
        assert_eq!(t.engine.commit().unwrap().users, 1);
        let user = t.engine.reader().user("u1").unwrap().unwrap();
        assert!(user.traits_json.contains(r#""role":"admin""#), "{}", user.traits_json);

        // The account's traits as CEL values, as an evaluation that reads
        // them makes them: the same map through a `group` call that repeats
        // them, a new one after a call that changes them (the old one is
        // held here, so the new one cannot be at its address).
        let cel = |t: &mut T| {
            let entry = t.engine.store_mut().account("a").unwrap();
            let free_mail = Default::default();
            let var = crate::detect::AccountVar { free_mail: &free_mail, fields: &crate::detect::TraitFields::All };
            match entry.traits_cel.get_or_init(|| crate::detect::account_to_cel(&entry.state, var)) {
                cel::Value::Map(m) => m.map.clone(),
                other => panic!("the account's traits as CEL values: {other:?}"),
            }
        };
        let before = cel(&mut t);
        group(&mut t, "u2", "pro");
        assert!(Arc::ptr_eq(&before, &cel(&mut t)), "the same traits made again");
        group(&mut t, "u2", "enterprise");
        assert!(!Arc::ptr_eq(&before, &cel(&mut t)), "changed traits kept their old CEL values");
        t.track("u2", "a", "x", 2);
        t.engine.commit().unwrap();
        let account = t.engine.reader().account("a").unwrap().unwrap();
        assert!(account.traits_json.contains(r#""plan":"enterprise""#), "{}", account.traits_json);
    }

    /// The same traits sent again are recognised by their JSON alone; any
    /// other call (a trait more or less, a changed value, a record with none
    /// yet) is merged.
    #[test]
    fn the_same_traits_are_recognised_without_parsing_the_record() {
        let map = |j: &str| serde_json::from_str::<Map<String, Value>>(j).unwrap();
        let mut buf = Vec::new();
        let stored = Value::Object(map(r#"{"role":"admin","name":"Ada","n":3}"#)).to_string();
        assert!(same_traits(&mut buf, &map(r#"{"name":"Ada","n":3,"role":"admin"}"#), &stored));
        assert!(!same_traits(&mut buf, &map(r#"{"name":"Ada","role":"admin"}"#), &stored));
        assert!(!same_traits(&mut buf, &map(r#"{"name":"Ada","n":4,"role":"admin"}"#), &stored));
        assert!(!same_traits(&mut buf, &map(r#"{"name":"Ada","n":3,"role":"admin","x":1}"#), &stored));
        assert!(!same_traits(&mut buf, &map("{}"), ""));
        assert!(same_traits(&mut buf, &map("{}"), "{}"));
    }

    #[test]
    fn a_retried_message_counts_once() {
        let mut t = T::new();
        let msg = |id: &str, user: &str| {
            format!(
                r#"{{"type":"track","event":"Card Moved","userId":"{user}","messageId":"{id}","context":{{"groupId":"a"}},"timestamp":"2026-01-05T10:00:00Z"}}"#
            )
        };
        for u in 0..6 {
            t.send(&msg(&format!("m{u}"), &format!("u{u}")));
        }
        t.engine.commit().unwrap();
        // The 6th user's message again (a producer retry), in this batch and
        // in a later one: still 6 users, no PQA, 6 events.
        t.send(&msg("m5", "u5"));
        t.send(&msg("m5", "u5"));
        t.engine.commit().unwrap();
        t.send(&msg("m5", "u5"));
        assert!(t.out.events.is_empty());
        assert_eq!(t.engine.metrics().duplicate_events.get(), 3);
        t.engine.commit().unwrap();
        let acct = t.engine.reader().account("a").unwrap().unwrap();
        assert_eq!(acct.seq, 6);
        // A new message from a 7th user qualifies the account.
        t.send(&msg("m6", "u6"));
        assert_eq!(t.out.events.len(), 1);
    }

    #[test]
    fn a_retried_copy_of_a_rejected_message_is_judged_again() {
        let mut t = T::new();
        let orphan = r#"{"type":"track","event":"Card Moved","userId":"lone","messageId":"r1","timestamp":"2026-01-05T10:00:00Z"}"#;
        t.send(orphan);
        assert_eq!(t.out.dead_letters.len(), 1, "no account yet");
        t.send(orphan);
        assert_eq!(t.out.dead_letters.len(), 2, "the retry is dead-lettered again, not taken for a duplicate");
        assert_eq!(t.engine.metrics().duplicate_events.get(), 0);
        // Once the user belongs to an account, the retry counts (once).
        t.send(r#"{"type":"group","userId":"lone","groupId":"g","timestamp":"2026-01-05T09:00:00Z"}"#);
        t.send(orphan);
        t.send(orphan);
        assert_eq!(t.out.dead_letters.len(), 2);
        assert_eq!(t.engine.metrics().duplicate_events.get(), 1);
        t.engine.commit().unwrap();
        assert_eq!(t.engine.reader().account("g").unwrap().unwrap().seq, 2, "the group call and one track");
    }

    #[test]
    fn late_events_are_judged_per_account() {
        let mut t = T::new();
        t.track("u1", "a", "x", 1);
        t.send(r#"{"type":"track","event":"x","userId":"u2","context":{"groupId":"b"},"timestamp":"2026-03-01T10:00:00Z"}"#);
        // Account `a` is two months behind `b`, but its own clock is what
        // matters: an event of `a` from January still counts.
        t.track("u1", "a", "x", 2);
        assert!(t.out.dead_letters.is_empty(), "{:?}", t.out.dead_letters);
        // For `b`, January is older than every window: too late.
        t.track("u2", "b", "x", 2);
        assert_eq!(t.out.dead_letters.len(), 1);
        assert_eq!(t.out.dead_letters[0].reason, Reason::TooLate);
    }

    #[test]
    fn a_rejected_event_leaves_no_trace() {
        let mut t = T::new();
        t.track("x1", "acct-old", "x", 1);
        t.send(r#"{"type":"track","event":"x","userId":"x1","context":{"groupId":"acct-new"},"timestamp":"2026-05-02T10:00:00Z"}"#);
        t.send(r#"{"type":"track","event":"x","userId":"x2","context":{"groupId":"acct-old"},"timestamp":"2026-05-01T10:00:00Z"}"#);
        // Late for acct-old (whose clock is now May): rejected, and x1 stays
        // in acct-new.
        t.track("x1", "acct-old", "x", 2);
        assert_eq!(t.out.dead_letters.len(), 1);
        assert_eq!(t.out.dead_letters[0].reason, Reason::TooLate);
        t.send(r#"{"type":"track","event":"Demo Requested","userId":"x1","timestamp":"2026-05-03T10:00:00Z"}"#);
        assert_eq!(t.out.events.len(), 1);
        assert_eq!(t.out.events[0].key, "acct-new");
        // An event without any account from an unknown user: rejected, and
        // nothing is stored for that user.
        t.send(r#"{"type":"track","event":"x","userId":"ghost","timestamp":"2026-05-03T10:00:00Z"}"#);
        assert_eq!(t.out.dead_letters.last().unwrap().reason, Reason::NoAccount);
        t.engine.commit().unwrap();
        assert_eq!(t.engine.reader().user("ghost").unwrap(), None);
    }

    #[test]
    fn admin_switch_only_on_a_change_of_role() {
        let mut t = T::new();
        t.track("u1", "a", "x", 1);
        t.identify("u1", "member", 1);
        assert!(t.signals("a").is_empty());
        t.identify("u1", "admin", 2);
        assert_eq!(t.signals("a"), ["admin_switch"]);
        t.identify("u1", "admin", 3);
        assert_eq!(t.signals("a"), ["admin_switch"], "still admin: no new switch");
        t.identify("u1", "Owner", 4);
        assert_eq!(t.signals("a"), ["admin_switch"], "admin -> owner stays in the set");
    }

    #[test]
    fn applied_offsets_are_skipped_and_abort_forgets_the_batch() {
        let mut t = T::new();
        t.track("u1", "a", "Contact Sales Submitted", 1);
        assert_eq!(t.out.events.len(), 1);
        t.engine.commit().unwrap();
        // Kafka redelivers offset 0: skipped, nothing announced again.
        t.offset = 0;
        t.track("u1", "a", "Contact Sales Submitted", 1);
        assert_eq!(t.out.events.len(), 1);
        assert_eq!(t.engine.metrics().duplicates_skipped.get(), 1);
        // A batch that is aborted (output not delivered) leaves no trace:
        // processing it again gives the same announcement, same id.
        t.out.clear();
        t.track("u2", "b", "Demo Requested", 2);
        let first = t.out.events[0].clone();
        t.engine.abort();
        t.out.clear();
        t.offset -= 1;
        t.track("u2", "b", "Demo Requested", 2);
        assert_eq!(t.out.events.len(), 1);
        assert_eq!(t.out.events[0].id, first.id);
        assert_eq!(t.out.events[0].payload, first.payload);
    }

    #[test]
    fn leads_name_the_people_behind_the_signals() {
        let mut t = T::new();
        for u in ["u1", "u2", "u3"] {
            t.track(u, "a", "Card Moved", 1);
        }
        t.track("u2", "a", "Card Moved", 1);
        t.identify("u3", "admin", 2);
        let e = t.out.events.last().expect("enterprise_evaluation announced");
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["data"]["rules"], serde_json::json!(["enterprise_evaluation"]));
        let leads = v["data"]["leads"].as_array().unwrap();
        assert_eq!(leads[0]["user_id"], "u3");
        assert_eq!(
            leads[0]["why"],
            serde_json::json!(["became an admin or owner", "admin of the workspace", "1 event in the last 28 days"])
        );
        assert_eq!(leads[0]["traits"]["email"], "u3@x.example");
        assert_eq!(leads[1]["user_id"], "u2", "then the most active");
        assert_eq!(leads[1]["why"], serde_json::json!(["most active: 2 events in the last 28 days", "no email known"]));
        assert_eq!(leads[1]["events_28d"], 2);
    }

    /// The ranking reads a candidate's traits in place; what it finds is
    /// what the whole map says, escaped values and keys included.
    #[test]
    fn a_leads_traits_read_in_place_say_what_the_map_says() {
        let t = T::new();
        let def = t.engine.definition().clone();
        let facts_both = |json: &str| {
            let map: Map<String, Value> = serde_json::from_str(json).unwrap();
            let owned = lead_facts(&def, |k| map.get(k).and_then(Value::as_str).map(Cow::Borrowed));
            let raw = serde_json::from_str::<BTreeMap<&str, &RawValue>>(json)
                .ok()
                .map(|raw| lead_facts(&def, |k| raw.get(k).and_then(|v| json_string(v))));
            let show = |f: &LeadFacts| (f.domain.clone(), f.free_domain.clone(), f.admin.clone(), f.senior.clone());
            (show(&owned), raw.as_ref().map(show))
        };
        for json in [
            r#"{"email":" Ada@Acme.example ","role":"Owner","title":"VP Engineering"}"#,
            r#"{"email":"bo@gmail.com","seniority":"director","n":3,"role":["admin"]}"#,
            r#"{"email":"c\u0040acme.example","title":"Head of \"Growth\""}"#,
            r#"{"email":5,"title":null}"#,
        ] {
            let (owned, raw) = facts_both(json);
            assert_eq!(raw.as_ref(), Some(&owned), "{json}");
        }
        let (owned, raw) = facts_both(r#"{"ro\u006ce":"admin","email":"d@acme.example"}"#);
        assert_eq!(raw, None, "an escaped key is not read in place (the map is read)");
        assert_eq!(owned.2.as_deref(), Some("admin"));
        let (owned, _) = facts_both(r#"{"email":"c\u0040acme.example","title":"Head of \"Growth\""}"#);
        assert_eq!(owned.0.as_deref(), Some("acme.example"));
        assert!(owned.3.is_some(), "a head is senior");
    }

    /// The order sales wants: work email first; then the people behind
    /// signals, admins and owners, senior titles, and the most active; the
    /// intern on gmail who clicks the most comes last.
    #[test]
    fn leads_come_in_the_order_sales_wants_with_reasons_in_words() {
        let mut t = T::new();
        let who = [
            ("intern", "intern@gmail.com", r#""title":"Intern""#, 30),
            ("dev", "dev@acme.io", r#""seniority":"mid""#, 12),
            ("dir", "dir@acme.io", r#""title":"Director of Engineering""#, 2),
            ("adm", "adm@acme.io", r#""role":"admin""#, 4),
            ("legal", "legal@acme.io", r#""seniority":"entry""#, 3),
        ];
        for (u, email, extra, n) in who {
            t.send(&format!(
                r#"{{"type":"identify","userId":"{u}","traits":{{"email":"{email}",{extra}}},"timestamp":"2026-01-02T08:00:00Z"}}"#
            ));
            for _ in 0..n {
                t.track(u, "acme", "Card Moved", 3);
            }
        }
        t.send(r#"{"type":"page","userId":"legal","properties":{"path":"/security"},"context":{"groupId":"acme"},"timestamp":"2026-01-03T12:00:00Z"}"#);
        let e = t.out.events.last().expect("enterprise_evaluation announced");
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        let leads = v["data"]["leads"].as_array().unwrap();
        let order: Vec<&str> = leads.iter().map(|l| l["user_id"].as_str().unwrap()).collect();
        // `adm` was admin before using the product (no admin switch in
        // this account): a signal ranks above the role.
        assert_eq!(order, ["legal", "adm", "dir", "dev", "intern"]);
        let why = |i: usize| {
            leads[i]["why"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(why(0), ["read the terms, privacy, security or DPA pages", "4 events in the last 28 days"]);
        assert_eq!(why(1), ["admin of the workspace", "4 events in the last 28 days"]);
        assert_eq!(why(2), ["Director of Engineering", "2 events in the last 28 days"]);
        assert_eq!(why(4), ["most active: 30 events in the last 28 days", "no work email (gmail.com)"]);
        assert_eq!(v["data"]["account"]["domain"], "acme.io", "the most common work-email domain");
        assert_eq!(v["data"]["account"]["personal_account"], false);
    }

    /// Visitors not logged in (only an `anonymousId`, as Segment's own
    /// libraries send for them): with an account they count toward its
    /// volume and signals but not its users, and are never leads; without
    /// one they are counted and skipped, never dead-lettered.
    #[test]
    fn anonymous_events_count_toward_the_account_not_its_users() {
        let mut t = T::new();
        for u in ["u1", "u2", "u3"] {
            t.track(u, "a", "Card Moved", 1);
        }
        // A marketing-site visit with no account: skipped.
        t.send(r#"{"type":"page","anonymousId":"v-9","properties":{"path":"/pricing"},"timestamp":"2026-01-01T12:00:00Z"}"#);
        // Anonymous traits: skipped.
        t.send(r#"{"type":"identify","anonymousId":"v-9","traits":{"email":"x@y.example"},"timestamp":"2026-01-01T12:00:00Z"}"#);
        assert!(t.out.dead_letters.is_empty(), "{:?}", t.out.dead_letters);
        assert!(t.out.events.is_empty());
        let skipped = |t: &T, r: &str| t.engine.metrics().events_skipped.with_label_values(&[r]).get();
        assert_eq!((skipped(&t, "anonymous_without_account"), skipped(&t, "anonymous_traits")), (1, 1));
        // Someone not logged in, in account `a`, reads the security page:
        // the signal counts (3 users + a legal page visit qualify `a`).
        t.send(r#"{"type":"page","anonymousId":"v-1","properties":{"path":"/security"},"context":{"groupId":"a"},"timestamp":"2026-01-01T13:00:00Z"}"#);
        let e = t.out.events.last().expect("enterprise_evaluation announced");
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["data"]["rules"], serde_json::json!(["enterprise_evaluation"]));
        assert_eq!(v["data"]["metrics"]["active_users_28d"], 3, "not a user");
        assert_eq!(v["data"]["metrics"]["events_7d"], 4, "but volume");
        assert_eq!(v["data"]["signals"][0]["user_id"], "anonymous:v-1");
        let leads: Vec<&str> =
            v["data"]["leads"].as_array().unwrap().iter().map(|l| l["user_id"].as_str().unwrap()).collect();
        assert_eq!(leads, ["u1", "u2", "u3"], "a visitor is never a lead");
        t.engine.commit().unwrap();
        assert_eq!(t.engine.reader().user("v-1").unwrap(), None, "no user record");
        let members = t.engine.reader().members("a").unwrap();
        assert!(members.iter().all(|m| m.0.starts_with('u') || m.0 == anon_key("v-1")), "{members:?}");
        assert_eq!(members.len(), 4, "three users, and the visitor's activity kept apart until a login");
    }

    /// A visitor who logs in: an identify with both ids links them. What
    /// they did before becomes the user's, who counts as an active user
    /// from the link on, so the login itself qualifies the account; their
    /// later anonymous events are the user's.
    #[test]
    fn a_login_links_the_visitor_and_can_qualify_the_account() {
        let mut t = T::new();
        t.track("u1", "a", "Card Moved", 1);
        t.track("u2", "a", "Card Moved", 1);
        let anon = |path: &str, h: u32| {
            format!(
                r#"{{"type":"page","anonymousId":"v-1","userId":null,"properties":{{"path":"{path}"}},"context":{{"groupId":"a"}},"timestamp":"2026-01-02T{h:02}:00:00Z"}}"#
            )
        };
        t.send(&anon("/docs", 9));
        t.send(&anon("/security", 10));
        assert!(t.out.events.is_empty(), "2 users and a visitor: not 3 users");
        // The login: no account in the identify, the visitor's account is used.
        t.send(r#"{"type":"identify","userId":"u3","anonymousId":"v-1","traits":{"email":"c@acme.example"},"timestamp":"2026-01-02T11:00:00Z"}"#);
        let e = t.out.events.last().expect("the login qualifies the account");
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["subject"], "a");
        assert_eq!(v["data"]["rules"], serde_json::json!(["enterprise_evaluation"]));
        assert_eq!(v["data"]["metrics"]["active_users_28d"], 3);
        let u3 = v["data"]["leads"].as_array().unwrap().iter().find(|l| l["user_id"] == "u3").expect("u3 is a lead");
        assert_eq!(u3["events_28d"], 2, "the visitor's two page views are u3's");
        // Later anonymous events of that visitor are u3's.
        t.send(&anon("/pricing", 12));
        t.engine.commit().unwrap();
        let members = t.engine.reader().members("a").unwrap();
        let u3 = members.iter().find(|m| m.0 == "u3").unwrap();
        assert_eq!(u3.1.events_in_days(u3.1.last_seen_ms, 28), 3);
        assert_eq!(t.engine.reader().user("u3").unwrap().unwrap().account.as_deref(), Some("a"));
        let visitor = members.iter().find(|m| m.0.starts_with('\u{0}')).map(|m| m.1.clone()).unwrap_or_default();
        assert_eq!(visitor.first_seen_ms, 0, "nothing left under the visitor");
    }

    /// Active users of an account in its trailing 28 days (committed).
    fn active_users(t: &mut T, acct: &str) -> u64 {
        t.engine.commit().unwrap();
        let st = t.engine.reader().account(acct).unwrap().unwrap();
        let def = t.engine.definition().clone();
        let m = def.metrics.iter().find(|m| m.name == "active_users_28d").unwrap();
        st.metric(m, bucket_of(st.last_seen_ms, def.bucket_seconds), def.bucket_seconds) as u64
    }

    /// An alias whose previous id is an anonymous id does what a login
    /// does: the visitor's activity is the user's, who counts as an active
    /// user from then on (so the alias can qualify the account), and the
    /// visitor's later events are the user's.
    #[test]
    fn an_alias_of_an_anonymous_id_makes_the_visitor_the_user() {
        let mut t = T::new();
        t.track("u1", "a", "Card Moved", 1);
        t.track("u2", "a", "Card Moved", 1);
        let anon = |path: &str, h: u32| {
            format!(
                r#"{{"type":"page","anonymousId":"v-1","properties":{{"path":"{path}"}},"context":{{"groupId":"a"}},"timestamp":"2026-01-02T{h:02}:00:00Z"}}"#
            )
        };
        t.send(&anon("/docs", 9));
        t.send(&anon("/security", 10));
        assert!(t.out.events.is_empty(), "2 users and a visitor: not 3 users");
        assert_eq!(active_users(&mut t, "a"), 2);
        // Segment's shape: no account in the call.
        t.send(r#"{"type":"alias","previousId":"v-1","userId":"u3","timestamp":"2026-01-02T11:00:00Z"}"#);
        assert!(t.out.dead_letters.is_empty(), "{:?}", t.out.dead_letters);
        let e = t.out.events.last().expect("the alias qualifies the account");
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["subject"], "a");
        assert_eq!(v["data"]["rules"], serde_json::json!(["enterprise_evaluation"]));
        assert_eq!(v["data"]["metrics"]["active_users_28d"], 3);
        let u3 = v["data"]["leads"].as_array().unwrap().iter().find(|l| l["user_id"] == "u3").expect("u3 is a lead");
        assert_eq!(u3["events_28d"], 2, "the visitor's two page views are u3's");
        t.send(&anon("/pricing", 12));
        assert_eq!(active_users(&mut t, "a"), 3);
        let members = t.engine.reader().members("a").unwrap();
        let u3 = members.iter().find(|m| m.0 == "u3").unwrap();
        assert_eq!(u3.1.events_in_days(u3.1.last_seen_ms, 28), 3, "a later anonymous event is u3's");
        assert_eq!(t.engine.reader().user("u3").unwrap().unwrap().account.as_deref(), Some("a"));
        assert_eq!(t.engine.reader().user(&anon_key("v-1")).unwrap().unwrap().linked_to.as_deref(), Some("u3"));
        assert_eq!(t.engine.metrics().events.with_label_values(&["alias"]).get(), 1);
    }

    /// One person with two user ids in one account (a changed id, a
    /// second login): two active users until an alias says they are one,
    /// one after it, and the old id's later events are the new id's,
    /// counted once.
    #[test]
    fn an_alias_of_an_earlier_user_id_merges_the_two_users() {
        let mut t = T::new();
        t.send(r#"{"type":"identify","userId":"old","traits":{"email":"ada@acme.example","role":"admin"},"timestamp":"2026-01-01T08:00:00Z"}"#);
        for u in ["u1", "u2", "old", "new"] {
            t.track(u, "a", "Card Moved", 1);
        }
        t.send(r#"{"type":"page","userId":"old","properties":{"path":"/security"},"context":{"groupId":"a"},"timestamp":"2026-01-01T12:00:00Z"}"#);
        assert_eq!(active_users(&mut t, "a"), 4);
        let acct = t.engine.reader().account("a").unwrap().unwrap();
        assert_eq!(acct.email_domains, [("acme.example".into(), 1)]);
        t.send(r#"{"type":"alias","previousId":"old","userId":"new","timestamp":"2026-01-02T09:00:00Z"}"#);
        assert!(t.out.dead_letters.is_empty(), "{:?}", t.out.dead_letters);
        assert_eq!(active_users(&mut t, "a"), 3, "old and new are one person");
        let r = t.engine.reader();
        let old = r.user("old").unwrap().unwrap();
        assert_eq!(old.linked_to.as_deref(), Some("new"));
        let new = r.user("new").unwrap().unwrap();
        assert_eq!(new.account.as_deref(), Some("a"));
        assert_eq!(new.email_domain.as_deref(), Some("acme.example"), "the old id's traits carry over");
        let traits: serde_json::Value = serde_json::from_str(&new.traits_json).unwrap();
        assert_eq!(traits["role"], "admin");
        let acct = r.account("a").unwrap().unwrap();
        assert_eq!(acct.email_domains, [("acme.example".into(), 1)], "one member on that domain");
        assert!(acct.signals.iter().all(|h| h.user == "new"), "the old id's signal is the new id's");
        let events = |t: &T, u: &str| {
            let m = t.engine.reader().members("a").unwrap();
            m.iter().find(|m| m.0 == u).map_or(0, |m| m.1.events_in_days(m.1.last_seen_ms, 28))
        };
        assert_eq!((events(&t, "new"), events(&t, "old")), (3, 0), "track + page of old, track of new");
        // Later events under the old id are the new id's.
        t.track("old", "a", "Card Moved", 3);
        t.track("new", "a", "Card Moved", 3);
        assert_eq!(active_users(&mut t, "a"), 3);
        assert_eq!((events(&t, "new"), events(&t, "old")), (5, 0));
        // The new id is the lead, with what the old id said about itself.
        t.track("old", "a", "Demo Requested", 3);
        let e = t.out.events.last().expect("hand-raiser");
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        let leads: Vec<&str> =
            v["data"]["leads"].as_array().unwrap().iter().map(|l| l["user_id"].as_str().unwrap()).collect();
        assert_eq!(leads[0], "new");
        assert!(!leads.contains(&"old"), "{leads:?}");
        assert_eq!(v["data"]["metrics"]["active_users_28d"], 3);
        // An alias of the new id: the old one follows (and an alias back
        // to an id already merged changes nothing).
        t.send(r#"{"type":"alias","previousId":"new","userId":"newer","timestamp":"2026-01-04T09:00:00Z"}"#);
        t.send(r#"{"type":"alias","previousId":"newer","userId":"old","timestamp":"2026-01-04T10:00:00Z"}"#);
        t.track("old", "a", "Card Moved", 4);
        assert_eq!(active_users(&mut t, "a"), 3);
        assert_eq!((events(&t, "newer"), events(&t, "new"), events(&t, "old")), (7, 0, 0));
        assert!(t.out.dead_letters.is_empty(), "{:?}", t.out.dead_letters);
    }

    /// An alias needs both ids: without a previous id it is dead-lettered
    /// with its own reason; without an account it is not (like an
    /// identify: the link and traits only).
    #[test]
    fn an_alias_without_a_previous_id_is_dead_lettered_and_one_without_an_account_is_not() {
        let mut t = T::new();
        t.send(r#"{"type":"alias","userId":"n1","timestamp":"2026-01-02T09:00:00Z"}"#);
        assert_eq!(t.out.dead_letters.len(), 1);
        assert_eq!(t.out.dead_letters[0].reason, Reason::MissingPreviousId);
        assert_eq!(t.out.dead_letters[0].detail, "alias call without a previousId");
        t.send(r#"{"type":"alias","anonymousId":"v-2","previousId":"v-1","timestamp":"2026-01-02T09:00:00Z"}"#);
        assert_eq!(t.out.dead_letters.len(), 2);
        assert_eq!(t.out.dead_letters[1].reason, Reason::MissingUserId);
        // No account anywhere: an earlier user id (known by its traits
        // only) and an id never seen (taken for an anonymous id).
        t.send(r#"{"type":"identify","userId":"o1","traits":{"email":"o@acme.example"},"timestamp":"2026-01-02T08:00:00Z"}"#);
        t.send(r#"{"type":"alias","previousId":"o1","userId":"n1","timestamp":"2026-01-02T09:00:00Z"}"#);
        t.send(r#"{"type":"alias","previousId":"v-9","userId":"n2","timestamp":"2026-01-02T09:00:00Z"}"#);
        assert_eq!(t.out.dead_letters.len(), 2, "{:?}", t.out.dead_letters);
        assert!(t.out.events.is_empty());
        // Applied, and counted as applied.
        let applied = |t: &T, kind: &str| t.engine.metrics().events.with_label_values(&[kind]).get();
        assert_eq!((applied(&t, "identify"), applied(&t, "alias")), (1, 2));
        t.engine.commit().unwrap();
        let r = t.engine.reader();
        assert_eq!(r.user("o1").unwrap().unwrap().linked_to.as_deref(), Some("n1"));
        assert_eq!(r.user("n1").unwrap().unwrap().email_domain.as_deref(), Some("acme.example"));
        assert_eq!(r.user(&anon_key("v-9")).unwrap().unwrap().linked_to.as_deref(), Some("n2"));
        // The merged user joins an account later: once.
        t.track("o1", "b", "Card Moved", 3);
        t.track("n1", "b", "Card Moved", 3);
        assert_eq!(active_users(&mut t, "b"), 1);
        let acct = t.engine.reader().account("b").unwrap().unwrap();
        assert_eq!(acct.email_domains, [("acme.example".into(), 1)]);
    }

    /// An account whose users are all on free mail is a personal account:
    /// the shipped score gives it 20 points fewer.
    #[test]
    fn a_personal_account_scores_lower() {
        let mut t = T::new();
        let score = |t: &mut T, acct: &str, domain: &str| {
            for u in 0..2 {
                t.send(&format!(
                    r#"{{"type":"identify","userId":"{acct}-{u}","traits":{{"email":"p{u}@{domain}"}},"timestamp":"2026-01-02T08:00:00Z"}}"#
                ));
                t.track(&format!("{acct}-{u}"), acct, "Card Moved", 3);
            }
            t.track(&format!("{acct}-0"), acct, "Demo Requested", 4);
            let v: serde_json::Value = serde_json::from_slice(&t.out.events.last().unwrap().payload).unwrap();
            assert_eq!(v["subject"], acct);
            (v["data"]["score"].as_i64().unwrap(), v["data"]["account"]["personal_account"].clone())
        };
        let (company, c) = score(&mut t, "company", "initech.example");
        let (personal, p) = score(&mut t, "personal", "gmail.com");
        assert_eq!((c, p), (serde_json::json!(false), serde_json::json!(true)));
        assert_eq!(personal, company - 20);
    }
}
