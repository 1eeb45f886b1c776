//! The budget: how many announcements may reach sales in any hour and any
//! day (`[definition.budget]`), overall and per rule.
//!
//! What was released lately is a short list of (time, rules), kept in the
//! state (meta record `x|budget`, written in the same atomic write as the
//! batch that released them) so that a restart does not hand out a fresh
//! budget. Announcements that find no room wait in the queue kept with the
//! accounts (see [`crate::state::account::Held`]); the engine releases them
//! best first as room frees up.
//!
//! The clock is the engine's: wall-clock time in `run` (sales' hours are
//! real hours), event time in `replay` and `backtest` (history is replayed
//! much faster than it happened; in event time the output shows what the
//! budget would have let through, deterministically).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::definition::Budget;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// Which clock the budget counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetClock {
    /// Wall-clock time (`run`).
    Wall,
    /// The engine's event time: the low watermark of its input (`replay`,
    /// `backtest`, tests).
    Event,
}

/// Releases of the last 24 hours, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub releases: VecDeque<(i64, Vec<String>)>,
}

impl Ledger {
    /// Reads the ledger from its meta record (a damaged record starts an
    /// empty ledger: at worst a day's budget is handed out again).
    pub fn decode(bytes: Option<&[u8]>) -> Ledger {
        bytes.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ledger serialises")
    }

    /// Forgets releases older than a day.
    pub fn prune(&mut self, now_ms: i64) {
        while self.releases.front().is_some_and(|r| r.0 <= now_ms - DAY_MS) {
            self.releases.pop_front();
        }
    }

    fn count(&self, now_ms: i64, span_ms: i64, rule: Option<&str>) -> u32 {
        self.releases
            .iter()
            .rev()
            .take_while(|r| r.0 > now_ms - span_ms)
            .filter(|r| rule.is_none_or(|x| r.1.iter().any(|y| y == x)))
            .count() as u32
    }

    /// Whether the overall caps leave room for one more at `now_ms`.
    pub fn overall_room(&self, b: &Budget, now_ms: i64) -> bool {
        b.per_hour.is_none_or(|c| self.count(now_ms, HOUR_MS, None) < c)
            && b.per_day.is_none_or(|c| self.count(now_ms, DAY_MS, None) < c)
    }

    /// Whether an announcement listing `rules` may go out at `now_ms`:
    /// room overall and under the caps of each of its rules.
    pub fn room(&self, b: &Budget, rules: &[String], now_ms: i64) -> bool {
        self.overall_room(b, now_ms)
            && b.rules.iter().filter(|r| rules.contains(&r.0)).all(|(name, h, d, _)| {
                h.is_none_or(|c| self.count(now_ms, HOUR_MS, Some(name)) < c)
                    && d.is_none_or(|c| self.count(now_ms, DAY_MS, Some(name)) < c)
            })
    }

    /// Counts a release.
    pub fn record(&mut self, rules: &[String], now_ms: i64) {
        self.prune(now_ms);
        self.releases.push_back((now_ms, rules.to_vec()));
    }

    /// The earliest time after `now_ms` at which a release counted now
    /// leaves a window (room may free up then).
    pub fn next_change(&self, now_ms: i64) -> Option<i64> {
        self.releases.iter().flat_map(|r| [r.0 + HOUR_MS, r.0 + DAY_MS]).filter(|&t| t > now_ms).min()
    }
}

/// Whether an announcement listing `rules` goes out at once, outside the
/// budget.
pub fn bypasses(b: &Budget, rules: &[String]) -> bool {
    b.rules.iter().any(|r| r.3 && rules.contains(&r.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hourly_and_daily_caps_slide() {
        let b = Budget { per_hour: Some(2), per_day: Some(3), max_wait_seconds: 0, rules: vec![], clock: None };
        let mut l = Ledger::default();
        let r = rules(&["team_adoption"]);
        assert!(l.room(&b, &r, 0));
        l.record(&r, 0);
        l.record(&r, 10 * 60_000);
        assert!(!l.room(&b, &r, 30 * 60_000), "two in the hour");
        assert_eq!(l.next_change(30 * 60_000), Some(HOUR_MS));
        assert!(!l.room(&b, &r, HOUR_MS - 1));
        assert!(l.room(&b, &r, HOUR_MS), "the window is (now - 1h, now]: the first is out at 1h");
        l.record(&r, HOUR_MS);
        assert!(!l.room(&b, &r, 5 * HOUR_MS), "three in the day");
        assert!(l.room(&b, &r, DAY_MS), "the first left the day");
        l.prune(DAY_MS);
        assert_eq!(l.releases.len(), 2);
        assert_eq!(Ledger::decode(Some(&l.encode())), l);
        assert_eq!(Ledger::decode(Some(b"garbage")), Ledger::default());
    }

    #[test]
    fn rule_caps_and_bypass() {
        let b = Budget {
            per_hour: None,
            per_day: Some(10),
            max_wait_seconds: 0,
            rules: vec![("usage_spike".into(), None, Some(1), false), ("hand_raiser".into(), None, None, true)],
            clock: None,
        };
        let mut l = Ledger::default();
        l.record(&rules(&["usage_spike", "team_adoption"]), 0);
        assert!(!l.room(&b, &rules(&["usage_spike"]), 1), "the rule's cap is used");
        assert!(l.room(&b, &rules(&["team_adoption"]), 1), "another rule is not held by it");
        assert!(bypasses(&b, &rules(&["team_adoption", "hand_raiser"])));
        assert!(!bypasses(&b, &rules(&["team_adoption"])));
    }
}
