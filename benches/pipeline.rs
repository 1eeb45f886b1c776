//! Throughput benchmarks of the engine core, in events per second.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench pipeline
//! ```
//!
//! (one group only: `cargo bench --bench pipeline -- engine_process`).
//! Input is simulated Segment JSON from [`pqa_engine::sim::Simulator`]; the
//! numbers criterion reports as `thrpt` are events (or evaluations) per second
//! on one core.
//!
//! - `decode/segment_json`: [`Decoder::decode`] of 20k pre-generated Segment
//!   JSON lines (bytes -> `Event`): UTF-8 check, JSON parse, field lookup by
//!   JSON pointer, timestamp parsing. One iteration = all 20k lines.
//! - `decode/segment_json_sorted_keys`: the same events with the keys of
//!   every object in alphabetical order (`traits` comes before `type`).
//! - `decode/parse_ignored_any`: the parsing limit, the same 20k lines
//!   through `serde_json::from_slice::<IgnoredAny>` (JSON syntax and UTF-8
//!   checked, nothing kept); `decode/parse_value`: the same into a
//!   `serde_json::Value` tree. Neither extracts or checks any field.
//!   `PQA_DECODE_FILE=history.ndjson` takes the first 20k lines of that file
//!   instead of simulated ones (the parsing limit of a given history).
//! - `detect/busiest_account`: [`evaluate`] (metrics over the hourly
//!   buckets, derived numbers, CEL rules, score, tier) for the account with
//!   the most events, after a whole 60-day simulation of 200 accounts (~53k
//!   events, every window full) went through an engine and its state was read
//!   back from RocksDB.
//! - `detect/all_accounts`: the same, once for every account of that run (a
//!   realistic mix of small and busy accounts); one element = one evaluation.
//! - `engine_process/chunk_10k`: [`Engine::process`] + [`Engine::commit`], the
//!   whole core (decode, RocksDB-backed state behind its cache, detect, emit),
//!   over a RocksDB state in a temporary directory. One iteration = 10k
//!   records and one commit. The input is an endless stream from a
//!   20k-account simulator, generated outside the timed region, so no event is
//!   applied twice and the state grows the way it does in production. The
//!   first 300k records (the first month of event time, while accounts
//!   sign up) are applied before measuring, so the figure is for a populated
//!   state; it still drifts slowly as state accumulates over the run.
//!
//! - `encode/account_long_tail`, `encode/member`: [`encode_value`] of an
//!   account record as the long tail's look at a commit (seven hourly
//!   buckets, two features, a user, the shipped definition's one counter
//!   and three signals: about 150 bytes) and of a member record, what `run`
//!   does for each record it writes.
//!
//! - after the groups, `allocations`: heap allocations per event in
//!   [`Engine::process`] and per commit, counted (by a counting wrapper of
//!   the system allocator, this thread only) over 50k records of the same
//!   stream once it is populated: the hot path's own allocations.
//!   `PQA_ALLOC_SITES=N`: where every Nth is made. `PQA_ANON_IDS=1`: the
//!   stream's events carry an `anonymousId` beside their user id, as
//!   analytics.js sends them (for every group).
//!
//! Sample sizes and measurement times are set per group and kept small, so
//! that the whole file (setup included) runs in about a minute on a 2-core
//! machine; raise them in the code for tighter confidence intervals.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use pqa_engine::config::Config;
use pqa_engine::decode::Decoder;
use pqa_engine::detect::{evaluate, traits_to_cel};
use pqa_engine::engine::{Engine, InputRecord, Output};
use pqa_engine::sim::{SimConfig, SimEvent, Simulator};
use pqa_engine::state::{AccountState, Store};
use pqa_engine::telemetry::Metrics;

/// The system allocator, counting this thread's allocations (and
/// reallocations) while `COUNTING` is on: a thread-local count, so the
/// wrapper costs the timed groups next to nothing.
struct Counting;

thread_local! {
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

thread_local! {
    /// With `PQA_ALLOC_SITES` set: the engine's function nearest to every
    /// `SITE_EVERY`th allocation counted (a backtrace each, so only then),
    /// those of the events' `process` apart from those of the commits.
    static SITES: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
    /// Every how many allocations a site is taken (`PQA_ALLOC_SITES=N`, N at
    /// least 2; 256 for anything else, as `PQA_ALLOC_SITES=1` always gave).
    static SITE_EVERY: std::cell::Cell<u64> = const { std::cell::Cell::new(256) };
}

fn note_allocation() {
    // (`try_with`: an allocation may come while the thread's locals are
    // being torn down.)
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let n = ALLOCATIONS.try_with(|n| {
                n.set(n.get() + 1);
                n.get()
            });
            if n.is_ok_and(|n| n % SITE_EVERY.with(|e| e.get()) == 0) && SITES.with(|s| s.borrow().is_some()) {
                on.set(false);
                let trace = std::backtrace::Backtrace::force_capture().to_string();
                // The engine's nearest frame, where in the source, and its caller.
                let lines: Vec<&str> = trace.lines().map(str::trim).collect();
                let mut frames = lines.iter().enumerate().filter(|(_, l)| {
                    l.split_once(": ")
                        .is_some_and(|(_, f)| f.starts_with("pqa_engine::") || f.starts_with("<pqa_engine::"))
                });
                let mut site = String::new();
                if let Some((i, l)) = frames.next() {
                    site.push_str(l.split_once(": ").map_or(*l, |(_, f)| f));
                    if let Some(at) = lines.get(i + 1).and_then(|a| a.strip_prefix("at ")) {
                        site.push_str(&format!(" ({})", at.rsplit('/').next().unwrap_or(at)));
                    }
                }
                if let Some((_, l)) = frames.next() {
                    site.push_str(" <- ");
                    site.push_str(l.split_once(": ").map_or(*l, |(_, f)| f));
                }
                SITES.with(|s| s.borrow_mut().as_mut().map(|v| v.push(site)));
                on.set(true);
            }
        }
    });
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_allocation();
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_allocation();
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_in<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(|n| n.get());
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, ALLOCATIONS.with(|n| n.get()) - before)
}

const DAY_MS: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z.
const START_UNIX: i64 = 1_767_225_600;
/// Lines for the decode bench and for building detect's account states.
const DECODE_LINES: usize = 20_000;
/// Records per measured iteration (and per commit) of `engine_process`.
const CHUNK: usize = 10_000;
/// Records applied before `engine_process` starts measuring.
const PREFILL: usize = 300_000;

fn small_sim() -> SimConfig {
    SimConfig { seed: 7, accounts: 2000, start_unix: START_UNIX, days: 60 }
}

/// The first `n` events of a simulation.
fn generate(cfg: SimConfig, n: usize) -> Vec<SimEvent> {
    let events: Vec<SimEvent> = Simulator::new(cfg).take(n).collect();
    assert_eq!(events.len(), n, "the simulation is shorter than {n} events");
    events
}

/// An engine over a fresh RocksDB state in `dir`, with a fixed clock far
/// enough ahead that no simulated event counts as "from the future".
fn engine_in(dir: &std::path::Path) -> Engine {
    let mut cfg = Config::default_config();
    cfg.state.dir = dir.to_path_buf();
    let def = Arc::new(cfg.validate().expect("default configuration validates"));
    let store = Store::open(&cfg.state).expect("open RocksDB state");
    // 2100-01-01: the endless simulated stream of `engine_process` runs years ahead.
    Engine::new(def, cfg.input.clone(), store, Metrics::new()).expect("engine").with_clock(|| 4_102_444_800_000)
}

fn bench_decode(c: &mut Criterion) {
    let (lines, now_ms) = match std::env::var_os("PQA_DECODE_FILE") {
        // A history of one's own (the long tail of benches/longtail.py):
        // its first lines, judged from the year 2100.
        Some(path) => {
            let text = std::fs::read(&path).expect("PQA_DECODE_FILE");
            let lines: Vec<Vec<u8>> =
                text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).take(DECODE_LINES).map(<[u8]>::to_vec).collect();
            (lines, 4_102_444_800_000)
        }
        None => {
            let events = generate(small_sim(), DECODE_LINES);
            let now_ms = events.last().unwrap().time * 1000 + DAY_MS;
            (events.into_iter().map(|e| e.json.into_bytes()).collect(), now_ms)
        }
    };
    let decoder = Decoder::new(Config::default_config().input);
    let rejected = lines.iter().filter(|l| decoder.decode(Some(l), now_ms).is_err()).count();
    assert_eq!(rejected, 0, "simulated lines must all decode");
    let bytes: usize = lines.iter().map(Vec::len).sum();
    eprintln!("decode: {} lines, {:.0} bytes/line on average", lines.len(), bytes as f64 / lines.len() as f64);

    let mut g = c.benchmark_group("decode");
    // One iteration is ~30 ms: 10 samples keep criterion's linear sampling
    // (55 iterations at least) within the measurement time.
    g.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("segment_json", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(decoder.decode(Some(black_box(l.as_slice())), now_ms));
            }
        })
    });
    // The same events with every object's keys in alphabetical order, as
    // some pipelines deliver them (`traits` before `type`: identify and group
    // calls then take the decoder's second pass for their traits).
    let sorted: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(l).unwrap()).unwrap())
        .collect();
    g.bench_function("segment_json_sorted_keys", |b| {
        b.iter(|| {
            for l in &sorted {
                let _ = black_box(decoder.decode(Some(black_box(l.as_slice())), now_ms));
            }
        })
    });
    // The parsing limit: the same lines through serde_json into `IgnoredAny`
    // (syntax and UTF-8 checked, nothing kept), and into a `Value` tree.
    g.bench_function("parse_ignored_any", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(l.as_slice())));
            }
        })
    });
    g.bench_function("parse_value", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(serde_json::from_slice::<serde_json::Value>(black_box(l.as_slice())));
            }
        })
    });
    g.finish();
}

fn bench_detect(c: &mut Criterion) {
    // Realistic account states: 60 days of a 200-account simulation through
    // the real engine, then read back from RocksDB.
    let events: Vec<SimEvent> = Simulator::new(SimConfig { accounts: 200, ..small_sim() }).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = engine_in(dir.path());
    let mut out = Output::default();
    for (i, e) in events.iter().enumerate() {
        let rec = InputRecord {
            topic: "bench",
            partition: 0,
            offset: i as i64,
            key: None,
            payload: Some(e.json.as_bytes()),
            timestamp_ms: None,
        };
        engine.process(&rec, &mut out).expect("process");
        out.clear();
    }
    engine.commit().expect("commit");
    let def = engine.definition().clone();
    let reader = engine.reader();
    let mut ids: Vec<&str> = events.iter().map(|e| e.account.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let accounts: Vec<(String, AccountState)> =
        ids.iter().filter_map(|id| reader.account(id).expect("read account").map(|s| (id.to_string(), s))).collect();
    assert!(!accounts.is_empty(), "no account state after the simulation");
    let (busiest_id, busiest) = accounts.iter().max_by_key(|(_, s)| s.seq).unwrap();
    eprintln!(
        "detect: {} events, {} accounts; busiest {busiest_id}: {} events, {} hourly buckets, {} users in the histogram, {} signals",
        events.len(),
        accounts.len(),
        busiest.seq,
        busiest.buckets.len(),
        busiest.user_hist.iter().map(|h| h.1).sum::<u32>(),
        busiest.signals.len()
    );
    let traits = traits_to_cel("{\"employees\":1200}");

    let mut g = c.benchmark_group("detect");
    g.sample_size(20).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    let now_ms = busiest.last_seen_ms;
    g.bench_function("busiest_account", |b| b.iter(|| black_box(evaluate(&def, black_box(busiest), &traits, now_ms))));
    g.throughput(Throughput::Elements(accounts.len() as u64));
    g.bench_function("all_accounts", |b| {
        b.iter(|| {
            for (_, s) in &accounts {
                black_box(evaluate(&def, black_box(s), &traits, s.last_seen_ms));
            }
        })
    });
    g.finish();
    drop(engine);
    drop(dir);
}

/// An endless simulated stream: when one simulation ends, the next one (new
/// seed, same account ids) starts where it stopped in event time.
struct Stream {
    cfg: SimConfig,
    sim: Simulator,
    /// `PQA_ANON_IDS=1`: every event with a user id also carries an
    /// `anonymousId` (`a-` and the user id), as analytics.js sends them
    /// once a visitor has logged in; the simulator alone sends none.
    anon_ids: bool,
    /// Every user id the stream has sent so far.
    users: std::collections::HashSet<String>,
    /// For each record of the last `fill`: whether it is its user's first.
    firsts: Vec<bool>,
}

impl Stream {
    fn new() -> Stream {
        let cfg = SimConfig { seed: 11, accounts: 20_000, start_unix: START_UNIX, days: 365 };
        let anon_ids = std::env::var_os("PQA_ANON_IDS").is_some_and(|v| v == "1");
        Stream { sim: Simulator::new(cfg.clone()), cfg, anon_ids, users: Default::default(), firsts: Vec::new() }
    }

    fn fill(&mut self, buf: &mut Vec<Vec<u8>>, n: usize) {
        buf.clear();
        while buf.len() < n {
            match self.sim.next() {
                Some(e) if self.anon_ids => {
                    let json = match e.json.split_once("\"userId\":\"") {
                        Some((head, tail)) => {
                            let user = tail.split('"').next().unwrap_or_default();
                            format!("{head}\"anonymousId\":\"a-{user}\",\"userId\":\"{tail}")
                        }
                        None => e.json,
                    };
                    buf.push(json.into_bytes())
                }
                Some(e) => buf.push(e.json.into_bytes()),
                None => {
                    self.cfg.seed += 1;
                    self.cfg.start_unix += i64::from(self.cfg.days) * 86_400;
                    self.sim = Simulator::new(self.cfg.clone());
                }
            }
        }
        self.firsts.clear();
        for json in buf.iter() {
            let user = json_field(std::str::from_utf8(json).unwrap_or_default(), "userId");
            let first = !self.users.contains(user) && self.users.insert(user.to_string());
            self.firsts.push(first);
        }
    }
}

/// The string field `name` of a simulated event's JSON (its first
/// occurrence), or `""`: enough to sort the bench's events, read outside
/// what is timed or counted.
fn json_field<'a>(json: &'a str, name: &str) -> &'a str {
    json.split(&format!("\"{name}\":\"")).nth(1).and_then(|t| t.split('"').next()).unwrap_or_default()
}

/// One chunk of `engine_process`: every record through the engine, then one commit.
fn apply_chunk(engine: &mut Engine, chunk: &[Vec<u8>], offset: &mut i64, out: &mut Output) {
    for payload in chunk {
        let rec = InputRecord {
            topic: "bench",
            partition: 0,
            offset: *offset,
            key: None,
            payload: Some(payload.as_slice()),
            timestamp_ms: None,
        };
        *offset += 1;
        engine.process(&rec, out).expect("process");
    }
    engine.commit().expect("commit");
}

fn bench_engine(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = engine_in(dir.path());
    let mut stream = Stream::new();
    let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(CHUNK);
    let mut out = Output::default();
    // The next offset. It lives outside the measured closure on purpose: the
    // engine skips offsets it has already applied, so it must keep growing
    // across criterion's iterations and samples.
    let mut offset: i64 = 0;
    let (mut announcements, mut dead_letters) = (0usize, 0usize);
    while (offset as usize) < PREFILL {
        stream.fill(&mut chunk, CHUNK);
        apply_chunk(&mut engine, &chunk, &mut offset, &mut out);
        out.clear();
    }
    let first_measured_s = engine.metrics().watermark_seconds.get();

    let mut g = c.benchmark_group("engine_process");
    g.sample_size(10).warm_up_time(Duration::from_secs(3)).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(CHUNK as u64));
    g.bench_function("chunk_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Untimed: produce the next 10k records of the stream.
                stream.fill(&mut chunk, CHUNK);
                let started = Instant::now();
                apply_chunk(&mut engine, &chunk, &mut offset, &mut out);
                total += started.elapsed();
                announcements += out.events.len();
                dead_letters += out.dead_letters.len();
                out.clear();
            }
            total
        })
    });
    g.finish();
    eprintln!(
        "engine_process: {} records measured or warmed up, event days {:.1} to {:.1} of the stream, {announcements} announcements, {dead_letters} dead letters",
        offset as usize - PREFILL,
        (first_measured_s - START_UNIX) as f64 / 86_400.0,
        (engine.metrics().watermark_seconds.get() - START_UNIX) as f64 / 86_400.0,
    );
    // Allocations on the populated state: per event in `process`, per
    // commit (the hot path is `process`; a commit is once a batch).
    if let Some(every) = std::env::var_os("PQA_ALLOC_SITES") {
        let every = every.to_str().and_then(|e| e.parse::<u64>().ok()).filter(|&e| e > 1).unwrap_or(256);
        SITE_EVERY.with(|e| e.set(every));
        SITES.with(|s| *s.borrow_mut() = Some(Vec::new()));
    }
    let mut commit_sites: Option<Vec<String>> = None;
    let (mut in_process, mut in_commit, mut events) = (0u64, 0u64, 0u64);
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    // The same count by what the event is to the engine: an announcement
    // (its output is made), the first event of its user (records made),
    // an `identify` or `group` (traits decoded), or an ordinary one (a
    // track or page call of a known user that announces nothing: the hot
    // path). A user is new at the stream's first event of theirs (warm-up
    // included; see `Stream::firsts`).
    let mut classes = std::collections::BTreeMap::<&str, (u64, u64)>::new();
    let mut class_sites = std::collections::BTreeMap::<&str, Vec<String>>::new();
    for _ in 0..5 {
        stream.fill(&mut chunk, CHUNK);
        for (payload, &first) in chunk.iter().zip(&stream.firsts) {
            let rec = InputRecord {
                topic: "bench",
                partition: 0,
                offset,
                key: None,
                payload: Some(payload.as_slice()),
                timestamp_ms: None,
            };
            offset += 1;
            let announced_before = out.events.len();
            let sites_before = SITES.with(|s| s.borrow().as_ref().map_or(0, Vec::len));
            let (r, n) = allocations_in(|| engine.process(&rec, &mut out));
            r.expect("process");
            in_process += n;
            events += 1;
            let kind = json_field(std::str::from_utf8(payload).unwrap_or_default(), "type");
            let class = match kind {
                _ if out.events.len() > announced_before => "announcing",
                _ if first => "a new user's first",
                "identify" | "group" => "identify or group",
                _ => "ordinary (track or page, known user, nothing announced)",
            };
            let c = classes.entry(class).or_default();
            c.0 += 1;
            c.1 += n;
            SITES.with(|s| {
                if let Some(s) = s.borrow().as_ref() {
                    class_sites.entry(class).or_default().extend(s[sites_before..].iter().cloned());
                }
            });
            if n > 0 {
                *kinds.entry(kind.to_string()).or_default() += n;
            }
        }
        // The commit's sites apart from the events'.
        let event_sites = SITES.with(|s| s.borrow_mut().replace(commit_sites.take().unwrap_or_default()));
        let (r, n) = allocations_in(|| engine.commit());
        commit_sites = SITES.with(|s| std::mem::replace(&mut *s.borrow_mut(), event_sites));
        r.expect("commit");
        in_commit += n;
        out.clear();
    }
    eprintln!(
        "allocations: {:.2} per event in process ({in_process} over {events} events; by call type: {kinds:?}), {:.0} per commit of {CHUNK}",
        in_process as f64 / events as f64,
        in_commit as f64 / 5.0,
    );
    for (class, (n, allocs)) in &classes {
        eprintln!("  {:.2} per event over {n} events: {class}", *allocs as f64 / *n as f64);
    }
    let every = SITE_EVERY.with(|e| e.get());
    let mut all = vec![("process", SITES.with(|s| s.borrow_mut().take()))];
    // (The sites of the events that are not announcements, by class.)
    all.extend(class_sites.into_iter().filter(|c| c.0 != "announcing").map(|(c, s)| (c, Some(s))));
    all.push(("commit", commit_sites));
    for (of, sites) in all {
        let Some(sites) = sites else { continue };
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        for site in &sites {
            *counts.entry(site.as_str()).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        eprintln!("allocation sites in {of} (every {every}th, {} sampled):", sites.len());
        for (site, n) in counts.iter().take(25) {
            eprintln!("{:6.1} %  {site}", *n as f64 * 100.0 / sites.len() as f64);
        }
    }
    drop(engine);
    drop(dir);
}

fn bench_encode(c: &mut Criterion) {
    use pqa_engine::state::account::{Bucket, Column};
    use pqa_engine::state::store::encode_value;
    use pqa_engine::state::{AccountState, MemberState};
    let hour = 497_000u32;
    let account = AccountState {
        first_seen_ms: 1_789_000_000_000,
        last_seen_ms: 1_789_300_000_000,
        seq: 7,
        columns: vec![Column { id: 0x8d87_b592_df28_cfc0, from: 0 }],
        buckets: (0..7).map(|i| Bucket { idx: hour + 40 * i, counts: [1u32].into_iter().collect() }).collect(),
        user_hist: vec![(hour + 240, 1)],
        features: vec![("Dashboard Opened".into(), hour + 40), ("Search Performed".into(), hour + 200)],
        signal_columns: [0xd3ef_acd0_808e_a993u64, 0x26bd_83fa_d7de_c9a7, 0xb590_a1b0_96cc_bbd9]
            .into_iter()
            .map(|id| Column { id, from: 0 })
            .collect(),
        kept_from: hour - 2_000,
        partition: Some(1),
        ..Default::default()
    };
    let member = MemberState {
        first_seen_ms: 1_789_000_000_000,
        last_seen_ms: 1_789_300_000_000,
        days: vec![(20_706, 3), (20_709, 1)],
    };
    let mut buf = Vec::with_capacity(4096);
    encode_value(&mut buf, account.last_seen_ms, &account);
    let mut g = c.benchmark_group("encode");
    g.sample_size(50).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("account_long_tail", |b| {
        b.iter(|| {
            encode_value(&mut buf, account.last_seen_ms, black_box(&account));
            black_box(buf.len())
        })
    });
    encode_value(&mut buf, member.last_seen_ms, &member);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("member", |b| {
        b.iter(|| {
            encode_value(&mut buf, member.last_seen_ms, black_box(&member));
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_detect, bench_engine, bench_encode);
criterion_main!(benches);
