//! The manifest: what the state holds and since when (event time), kept in
//! RocksDB next to the data, so that any definition can be checked against
//! it before it goes live: which metrics continue exactly, which are
//! warming up and until when, what cannot be served. Also the in-place
//! migration of schema-1 state directories.
//!
//! The manifest is for reporting. What each account holds is recorded in
//! the account itself ([`AccountState::columns`]), so correctness never
//! depends on the manifest.
//!
//! [`AccountState::columns`]: super::account::AccountState::columns

use compact_str::CompactString;
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::account::{AccountState, Announced, Bucket, Column, SignalHit};
use super::layout::Layout;
use super::store::{decode_value, encode_value, StateError};
use super::{cf, keys};
use crate::config::definition::{CompiledDefinition, MetricKind};
use crate::emit::format_time_ms;

/// One counter or signal the state holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// Its id (16 hex digits).
    pub id: String,
    /// What it counts, in words.
    pub what: String,
    /// Event time (ms) from which it has counted (0: from the start).
    pub since_ms: i64,
}

/// What the state holds and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub bucket_seconds: i64,
    /// History kept behind each account's latest event (longest window +
    /// offset of the definitions that ran last).
    pub retention_seconds: i64,
    /// Event time (ms) from which all history is kept: raised when the
    /// retention grows, since what a shorter retention dropped is gone.
    pub history_from_ms: i64,
    pub counters: Vec<Held>,
    pub signals: Vec<Held>,
    /// The versions the state last served: live, then shadows.
    pub live: String,
    pub shadows: Vec<String>,
    /// The event-time watermark when the manifest was written.
    pub updated_at_ms: i64,
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

impl Manifest {
    /// The manifest after the state starts serving `layout` at event time
    /// `watermark_ms`, given the one before (`None`: a new state, or one
    /// from before manifests, which is taken to hold everything).
    pub fn next(old: Option<&Manifest>, layout: &Layout, watermark_ms: i64) -> Manifest {
        let since = |list: Option<&Vec<Held>>, id: u64| -> i64 {
            match (old, list.and_then(|l| l.iter().find(|h| h.id == hex(id)))) {
                (_, Some(h)) => h.since_ms,
                (Some(_), None) => watermark_ms,
                (None, None) => 0,
            }
        };
        let counters = layout
            .counter_ids
            .iter()
            .zip(&layout.counters)
            .map(|(&id, c)| Held {
                id: hex(id),
                what: match c {
                    None => "every track and page event".to_string(),
                    Some(set) => {
                        let mut names: Vec<&str> = set.iter().map(String::as_str).collect();
                        names.sort_unstable();
                        format!("track events {}", names.join(", "))
                    }
                },
                since_ms: since(old.map(|m| &m.counters), id),
            })
            .collect();
        let signals = layout
            .signals
            .iter()
            .map(|s| Held {
                id: hex(s.id),
                what: format!("signal {}", s.name),
                since_ms: since(old.map(|m| &m.signals), s.id),
            })
            .collect();
        let history_from_ms = match old {
            Some(m) if layout.retention_seconds > m.retention_seconds => {
                m.history_from_ms.max(watermark_ms - m.retention_seconds * 1000)
            }
            Some(m) => m.history_from_ms,
            None => 0,
        };
        Manifest {
            bucket_seconds: layout.bucket_seconds,
            retention_seconds: layout.retention_seconds,
            history_from_ms: history_from_ms.max(0),
            counters,
            signals,
            live: String::new(),
            shadows: layout.shadow_versions.clone(),
            updated_at_ms: watermark_ms,
        }
    }

    /// Where each metric of `def` stands on this state.
    pub fn status(&self, def: &CompiledDefinition, before: Option<&Manifest>) -> Vec<MetricStatus> {
        let bucket_ms = self.bucket_seconds * 1000;
        def.metrics
            .iter()
            .map(|m| {
                let (list, before_list, id) = match m.kind {
                    MetricKind::Events => (Some(&self.counters), before.map(|b| &b.counters), m.counter_id),
                    MetricKind::Signal => (Some(&self.signals), before.map(|b| &b.signals), m.signal_id),
                    MetricKind::ActiveUsers | MetricKind::DistinctFeatures => (None, None, 0),
                };
                let since = list.and_then(|l| l.iter().find(|h| h.id == hex(id))).map_or(0, |h| h.since_ms);
                let new = before.is_some()
                    && list.is_some()
                    && !before_list.is_some_and(|l| l.iter().any(|h| h.id == hex(id)));
                let from = since.max(self.history_from_ms);
                let span_ms = i64::from(m.window_buckets + m.offset_buckets) * bucket_ms;
                let warm_at_ms = if from > 0 { from + span_ms } else { 0 };
                MetricStatus {
                    name: m.name.clone(),
                    new,
                    since_ms: since,
                    warm_at_ms,
                    warming: warm_at_ms > self.updated_at_ms,
                }
            })
            .collect()
    }
}

/// Where one metric stands on a state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricStatus {
    pub name: String,
    /// The state did not hold its counter or signal before this definition.
    pub new: bool,
    /// Event time (ms) its counter or signal has counted from (0: always).
    pub since_ms: i64,
    /// Event time (ms) from which its window holds everything (0: now).
    pub warm_at_ms: i64,
    /// At the state's event time, its window still reaches back before
    /// what the state holds.
    pub warming: bool,
}

impl MetricStatus {
    /// One line for people: `continues`, or when it is warm.
    pub fn describe(&self) -> String {
        match (self.new, self.warming) {
            (true, _) => format!(
                "new: counts from {} on, warming up until {}",
                format_time_ms(self.since_ms),
                format_time_ms(self.warm_at_ms)
            ),
            (false, true) => format!(
                "warming up until {} (its window reaches back before what the state holds)",
                format_time_ms(self.warm_at_ms)
            ),
            (false, false) => "continues".to_string(),
        }
    }
}

/// The account record of schema 1: counters by position in the definition
/// that wrote them, signal occurrences by signal name.
#[derive(Serialize, Deserialize)]
pub(crate) struct AccountV1 {
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub seq: u64,
    pub buckets: Vec<Bucket>,
    pub user_hist: Vec<(u32, u32)>,
    pub features: Vec<(CompactString, u32)>,
    pub signals: Vec<HitV1>,
    pub traits_json: String,
    pub announced: Announced,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct HitV1 {
    pub signal: String,
    pub user: String,
    pub at_ms: i64,
}

/// An account record of schema 1 in the current form. Schema 1 did not
/// record which definition wrote a record; its documentation required the
/// definition's filtered counters to stay in place, so positions are read as
/// the live definition's counters (the layout's first columns, in the live
/// definition's order) and signal names as the layout's signals (the live
/// definition's first); occurrences of signals it does not name are dropped.
pub(crate) fn convert_v1(value: &[u8], layout: &Layout) -> Result<AccountState, StateError> {
    let old: AccountV1 = decode_value(value, "account (schema 1)")?;
    let bucket_of = |ms: i64| super::account::bucket_of(ms, layout.bucket_seconds);
    let first = if old.first_seen_ms > 0 { bucket_of(old.first_seen_ms) } else { 0 };
    // What a shorter retention may have dropped: everything before the
    // oldest bucket left, unless that is where the account began.
    let kept_from = match old.buckets.first() {
        Some(b) if b.idx <= first => 0,
        Some(b) => b.idx,
        None => bucket_of(old.last_seen_ms),
    };
    let width = old.buckets.iter().map(|b| b.counts.len()).max().unwrap_or(1).clamp(1, layout.counter_ids.len());
    let signals: Vec<SignalHit> = old
        .signals
        .iter()
        .filter_map(|h| {
            let s = layout.signals.iter().find(|s| s.name == h.signal)?;
            Some(SignalHit { signal: s.id, user: h.user.clone(), at_ms: h.at_ms })
        })
        .collect();
    let mut new = AccountState {
        first_seen_ms: old.first_seen_ms,
        last_seen_ms: old.last_seen_ms,
        seq: old.seq,
        columns: layout.counter_ids[..width].iter().map(|&id| Column { id, from: 0 }).collect(),
        buckets: old
            .buckets
            .into_iter()
            .map(|mut b| {
                b.counts.resize(width, 0);
                b
            })
            .collect(),
        user_hist: old.user_hist,
        features: old.features,
        signal_columns: Vec::new(),
        signals,
        kept_from,
        traits_json: old.traits_json,
        email_domains: Vec::new(),
        announced_out: old.announced.active,
        announced: old.announced,
        shadow_announced: Vec::new(),
        sweep_due_ms: 0,
        held: None,
        partition: None,
        sent: Vec::new(),
        outcomes: Vec::new(),
    };
    // Signals it held, by name: the first of the layout's signals with
    // each name (the live definition's). The others start now (`conform`).
    let mut names: Vec<&str> = Vec::new();
    for s in &layout.signals {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
            new.signal_columns.push(Column { id: s.id, from: 0 });
        }
    }
    new.conform(layout);
    Ok(new)
}

/// Rewrites every schema-1 account record in the current form (see
/// [`convert_v1`]). Resumes where it stopped if interrupted.
pub(crate) fn migrate_v1(db: &DB, layout: &Layout, live: &CompiledDefinition) -> Result<(), StateError> {
    let acf = db.cf_handle(cf::ACCOUNTS).expect("cf");
    let meta = db.cf_handle(cf::META).expect("cf");
    let cursor_key = keys::meta("migrate-v2-cursor");
    let mut start: Vec<u8> = db.get_cf(meta, &cursor_key)?.unwrap_or_default();
    let mut migrated = 0u64;
    tracing::warn!(
        definition = %live.version,
        "migrating the state from schema 1: filtered counters are read by their position in this definition, signals by name"
    );
    loop {
        let mut batch = WriteBatch::default();
        let mut last = None;
        let mut buf = Vec::new();
        // (In total order: the family's memtable is a hash table, see
        // `Store::open`.)
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_total_order_seek(true);
        let iter = db.iterator_cf_opt(acf, ro, IteratorMode::From(&start, rocksdb::Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !start.is_empty() && *k == *start {
                continue;
            }
            let new = convert_v1(&v, layout)?;
            encode_value(&mut buf, new.last_seen_ms, &new);
            batch.put_cf(acf, &k, &buf);
            last = Some(k.to_vec());
            migrated += 1;
            if batch.len() >= 10_000 {
                break;
            }
        }
        match last {
            Some(k) => {
                batch.put_cf(meta, &cursor_key, &k);
                db.write(batch)?;
                start = k;
            }
            None => {
                let mut done = WriteBatch::default();
                done.delete_cf(meta, &cursor_key);
                done.put_cf(meta, keys::meta("schema"), super::store::SCHEMA_VERSION);
                db.write(done)?;
                tracing::warn!(accounts = migrated, "state migrated to schema 2");
                return Ok(());
            }
        }
    }
}
