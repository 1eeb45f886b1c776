//! The state layout: which counters and signals the state keeps, in which
//! column, for the definitions the engine runs (the live one and its
//! shadows). A counter is known by what it means (its event filter), a
//! signal by its name and patterns, never by a position in a file
//! ([`counter_id`], [`signal_id`]). Each account record lists the ids of
//! its columns, so a record written under one layout is read correctly
//! under any other ([`AccountState::conform`]): what both hold continues,
//! what is new starts counting, what is gone is dropped.
//!
//! [`counter_id`]: crate::config::definition::counter_id
//! [`signal_id`]: crate::config::definition::signal_id
//! [`AccountState::conform`]: super::account::AccountState::conform

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::definition::{counter_id, CompiledDefinition, MetricKind, Signal};

/// Makes every layout distinguishable from the one before it, so that a
/// cached account can tell it was conformed to an older one.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The union of what a set of definitions reads.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Changes with every layout built in this process.
    pub generation: u64,
    pub bucket_seconds: i64,
    /// The longest window + offset of any definition.
    pub retention_seconds: i64,
    /// Counter columns: what each means and its event filter. Column 0
    /// counts every track/page event.
    pub counter_ids: Vec<u64>,
    pub counters: Vec<Option<HashSet<String>>>,
    /// Signals (each once), to match events against.
    pub signals: Vec<Signal>,
    /// `events` windows: (column, window buckets, offset buckets).
    pub windows: Vec<(usize, u32, u32)>,
    /// The versions of the shadow definitions (their cooldown bookkeeping
    /// is kept per account under these names).
    pub shadow_versions: Vec<String>,
    /// What a `track` event of each name that a counter or signal reads
    /// counts in and is (one lookup per event, rather than one per counter
    /// and signal).
    pub track: hashbrown::HashMap<String, TrackMatch>,
}

/// What a `track` event name counts in and is.
#[derive(Debug, Clone, Default)]
pub struct TrackMatch {
    /// The counter columns past 0 that count it, in column order.
    pub columns: Vec<usize>,
    /// The signals it is, in the layout's order.
    pub signals: Vec<u64>,
}

impl Layout {
    /// The layout of `defs` (the live definition first). Binds every
    /// definition's metrics to the layout's columns and windows.
    pub fn bind(defs: &mut [&mut CompiledDefinition]) -> Layout {
        let mut layout = Layout {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            bucket_seconds: defs.first().map_or(3600, |d| d.bucket_seconds),
            retention_seconds: 0,
            counter_ids: vec![counter_id(None)],
            counters: vec![None],
            signals: Vec::new(),
            windows: Vec::new(),
            shadow_versions: defs.iter().skip(1).map(|d| d.version.clone()).collect(),
            track: Default::default(),
        };
        for def in defs.iter_mut() {
            layout.retention_seconds = layout.retention_seconds.max(def.retention_seconds);
            for s in &def.signals {
                if !layout.signals.iter().any(|x| x.id == s.id) {
                    layout.signals.push(s.clone());
                }
            }
            for m in def.metrics.iter_mut().filter(|m| m.kind == MetricKind::Events) {
                let column = match layout.counter_ids.iter().position(|&id| id == m.counter_id) {
                    Some(c) => c,
                    None => {
                        let own = def.counters.iter().find(|c| counter_id(c.as_ref()) == m.counter_id);
                        layout.counter_ids.push(m.counter_id);
                        layout.counters.push(own.cloned().flatten());
                        layout.counter_ids.len() - 1
                    }
                };
                let w = (column, m.window_buckets, m.offset_buckets);
                let slot = layout.windows.iter().position(|x| *x == w).unwrap_or_else(|| {
                    layout.windows.push(w);
                    layout.windows.len() - 1
                });
                m.column = column;
                m.window_slot = slot;
            }
        }
        layout.index_track_events();
        layout
    }

    /// The layout of one definition alone. Its metrics are bound already:
    /// a compiled definition's own columns are the layout's.
    pub fn single(def: &CompiledDefinition) -> Layout {
        let mut layout = Layout {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            bucket_seconds: def.bucket_seconds,
            retention_seconds: def.retention_seconds,
            counter_ids: def.counters.iter().map(|c| counter_id(c.as_ref())).collect(),
            counters: def.counters.clone(),
            signals: Vec::new(),
            windows: def.windows.clone(),
            shadow_versions: Vec::new(),
            track: Default::default(),
        };
        for s in &def.signals {
            if !layout.signals.iter().any(|x| x.id == s.id) {
                layout.signals.push(s.clone());
            }
        }
        debug_assert!(def.metrics.iter().filter(|m| m.kind == MetricKind::Events).all(|m| {
            layout.counter_ids[m.column] == m.counter_id
                && layout.windows[m.window_slot] == (m.column, m.window_buckets, m.offset_buckets)
        }));
        layout.index_track_events();
        layout
    }

    /// Fills `track` from the counters and signals.
    fn index_track_events(&mut self) {
        let mut track: hashbrown::HashMap<String, TrackMatch> = Default::default();
        for (i, c) in self.counters.iter().enumerate().skip(1) {
            for name in c.iter().flatten() {
                track.entry(name.clone()).or_default().columns.push(i);
            }
        }
        for s in &self.signals {
            for name in &s.track_events {
                track.entry(name.clone()).or_default().signals.push(s.id);
            }
        }
        self.track = track;
    }

    /// Retention in buckets (what an account keeps behind its clock).
    pub fn retention_buckets(&self) -> u32 {
        u32::try_from(self.retention_seconds / self.bucket_seconds + 1).unwrap_or(u32::MAX)
    }

    pub fn signal_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.signals.iter().map(|s| s.id)
    }
}
