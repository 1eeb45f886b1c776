//! The disqualification sweep: when does a qualified account stop
//! qualifying if it sends nothing more?
//!
//! With no new event, what a definition reads changes only when a time
//! bucket of the account's history leaves a window (or, for a window with
//! an offset, enters it). So the first moment a rule may stop firing is one
//! of those bucket boundaries: [`next_stop`] evaluates the definition at
//! each, in order, on the account's state as it is, and returns the first
//! at which no rule fires. The engine keeps accounts in an index by that
//! time ([`crate::state::store::Schedule`]) and looks at them again when its
//! event time (the low watermark of its partitions) has passed it: a
//! disqualification is announced then, at that time, even if the account
//! sent nothing; if an event came in between and the account still
//! qualifies, the next stop is computed from there.

use crate::config::definition::CompiledDefinition;
use crate::detect::{evaluate_memoized_into, AccountVar, Evaluation, Memo};
use crate::state::account::{bucket_of, AccountState, WindowSums};

/// At most this many evaluations per call; when they are used up the
/// account is looked at again at the last moment evaluated (it may still
/// qualify then, and the search goes on from there).
pub const MAX_EVALUATIONS: usize = 512;

/// The result of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No rule fires at this event time (ms).
    At(i64),
    /// Still firing at this time; look again then.
    Later(i64),
    /// Fires whatever time passes (a rule that reads no window).
    Never,
}

/// The first bucket boundary after `from_ms` at which `def` no longer
/// qualifies the account, as its state is now.
pub fn next_stop(def: &CompiledDefinition, state: &AccountState, from_ms: i64) -> Stop {
    let bucket_ms = def.bucket_seconds * 1000;
    let from = bucket_of(from_ms, def.bucket_seconds);
    // Buckets holding something a metric reads, in order.
    let mut data: Vec<u32> =
        Vec::with_capacity(state.buckets.len() + state.user_hist.len() + state.features.len() + state.signals.len());
    data.extend(state.buckets.iter().map(|b| b.idx));
    data.extend(state.user_hist.iter().map(|h| h.0));
    data.extend(state.features.iter().map(|f| f.1));
    data.extend(state.signals.iter().map(|h| bucket_of(h.at_ms, def.bucket_seconds)));
    data.sort_unstable();
    data.dedup();
    // A bucket `b` is in the window (in buckets) `w` with offset `o` at
    // bucket `now` while now - o - w < b <= now - o: it enters at b + o and
    // leaves at b + o + w. The boundaries after `from` are the data's
    // buckets shifted by each of these distances, so they come in order
    // from a merge of one sorted run per distance, of which only the first
    // MAX_EVALUATIONS + 1 are needed.
    let mut shifts: Vec<u32> = def
        .metrics
        .iter()
        .flat_map(|m| [m.offset_buckets.saturating_add(m.window_buckets), m.offset_buckets])
        .collect();
    shifts.sort_unstable();
    shifts.dedup();
    let mut runs: Vec<(u32, &[u32])> =
        shifts.iter().map(|&k| (k, &data[data.partition_point(|&b| b.saturating_add(k) <= from)..])).collect();
    let mut candidates = std::iter::from_fn(move || {
        let c = runs.iter().filter_map(|(k, r)| r.first().map(|b| b.saturating_add(*k))).min()?;
        // Every run at `c` moves past it: each boundary comes once.
        for (k, r) in &mut runs {
            while r.first().is_some_and(|b| b.saturating_add(*k) <= c) {
                *r = &r[1..];
            }
        }
        Some(c)
    });
    // (Made once, on first use, for every evaluation below; the window sums
    // slide forward from one boundary to the next rather than being
    // counted again at each.)
    let traits = std::sync::OnceLock::new();
    let mut sums = WindowSums::default();
    // (One evaluation's vectors for every look; from one boundary to the
    // next most of what rules read is unchanged, so they go through a memo
    // of this search's own.)
    let mut eval = Evaluation::default();
    let mut memo = Memo::default();
    let mut last = from_ms;
    for n in 0..=MAX_EVALUATIONS {
        let Some(c) = candidates.next() else { break };
        if n == MAX_EVALUATIONS {
            return Stop::Later(last);
        }
        let t = i64::from(c) * bucket_ms;
        evaluate_memoized_into(
            def,
            state,
            Some(&mut sums),
            &traits,
            AccountVar { free_mail: &def.free_mail_domains, fields: def.plans.account_fields() },
            t,
            Some(&mut memo),
            &mut eval,
        );
        if eval.fired.is_empty() {
            return Stop::At(t);
        }
        last = t;
    }
    Stop::Never
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::detect::evaluate_unnamed;

    const H: i64 = 3_600_000;

    #[test]
    fn a_hand_raise_stops_qualifying_when_it_leaves_its_window() {
        let def = Config::default_config().validate().unwrap();
        let mut s = AccountState::default();
        let hand_raise = def.signals.iter().find(|x| x.name == "hand_raise").unwrap().id;
        s.conform(&crate::state::layout::Layout::single(&def));
        let t0 = 1000 * H + 5 * 60_000;
        s.first_seen_ms = t0;
        s.last_seen_ms = t0;
        s.add_signal(hand_raise, "u1", t0);
        // hand_raise_30d: the hit's bucket (1000) is in the window while
        // now - 720 < 1000, i.e. up to bucket 1719; out from 1720.
        assert_eq!(next_stop(&def, &s, t0), Stop::At(1720 * H));
        assert_eq!(next_stop(&def, &s, 1719 * H + 1), Stop::At(1720 * H));
    }

    #[test]
    fn an_account_that_never_qualified_stops_at_the_first_boundary() {
        let def = Config::default_config().validate().unwrap();
        let s = AccountState { buckets: vec![], user_hist: vec![(10, 1)], ..Default::default() };
        // Nothing fires anywhere: the first candidate is the answer.
        assert!(matches!(next_stop(&def, &s, 0), Stop::At(_)));
        assert_eq!(next_stop(&def, &AccountState::default(), 0), Stop::Never);
    }

    /// The search as it was first written: every boundary after `from_ms`
    /// collected in a set, and every window counted again at each.
    fn reference_next_stop(def: &CompiledDefinition, state: &AccountState, from_ms: i64) -> Stop {
        use std::collections::BTreeSet;
        let bucket_ms = def.bucket_seconds * 1000;
        let from = bucket_of(from_ms, def.bucket_seconds);
        let mut data: BTreeSet<u32> = BTreeSet::new();
        data.extend(state.buckets.iter().map(|b| b.idx));
        data.extend(state.user_hist.iter().map(|h| h.0));
        data.extend(state.features.iter().map(|f| f.1));
        data.extend(state.signals.iter().map(|h| bucket_of(h.at_ms, def.bucket_seconds)));
        let shapes: BTreeSet<(u32, u32)> = def.metrics.iter().map(|m| (m.window_buckets, m.offset_buckets)).collect();
        let mut candidates: BTreeSet<u32> = BTreeSet::new();
        for &b in &data {
            for &(w, o) in &shapes {
                for c in [b.saturating_add(o).saturating_add(w), b.saturating_add(o)] {
                    if c > from {
                        candidates.insert(c);
                    }
                }
            }
        }
        let traits = std::sync::OnceLock::new();
        let var = AccountVar { free_mail: &def.free_mail_domains, fields: def.plans.account_fields() };
        let mut last = from_ms;
        for (n, &c) in candidates.iter().enumerate() {
            if n == MAX_EVALUATIONS {
                return Stop::Later(last);
            }
            let t = i64::from(c) * bucket_ms;
            if evaluate_unnamed(def, state, None, &traits, var, t).fired.is_empty() {
                return Stop::At(t);
            }
            last = t;
        }
        Stop::Never
    }

    proptest::proptest! {
        /// Random accounts (users, events, features, signals over two
        /// months of hourly buckets, so that searches also run out of
        /// evaluations) searched from any moment: the merged boundaries and
        /// sliding sums find exactly what the first search found.
        #[test]
        fn the_search_finds_what_evaluating_every_boundary_afresh_finds(
            ops in proptest::collection::vec((0u8..4, 0usize..12, 0i64..60 * 24, 0usize..4), 0..300),
            from_h in 0i64..100 * 24,
        ) {
            use std::sync::LazyLock;
            static DEF: LazyLock<CompiledDefinition> = LazyLock::new(|| Config::default_config().validate().unwrap());
            let def = &*DEF;
            let t0 = 1000 * H;
            let mut s = AccountState::default();
            s.conform(&crate::state::layout::Layout::single(def));
            let mut users: std::collections::HashMap<usize, u32> = std::collections::HashMap::new();
            for &(kind, user, h, k) in &ops {
                let t = t0 + h * H + 17;
                let b = bucket_of(t, def.bucket_seconds);
                if s.first_seen_ms == 0 {
                    s.first_seen_ms = t;
                }
                s.last_seen_ms = s.last_seen_ms.max(t);
                if kind == 3 {
                    s.add_signal(def.signals[k % def.signals.len()].id, "u0", t);
                    continue;
                }
                s.add_event(b, &[0], def.counters.len());
                let old = users.get(&user).copied();
                s.move_user(old, b);
                let e = users.entry(user).or_insert(b);
                *e = (*e).max(b);
                if kind == 2 {
                    s.touch_feature(["f0", "f1", "f2", "f3"][k], b);
                }
            }
            let from = t0 + from_h * H - 5 * 24 * H + 1234;
            proptest::prop_assert_eq!(next_stop(def, &s, from), reference_next_stop(def, &s, from));
        }
    }
}
