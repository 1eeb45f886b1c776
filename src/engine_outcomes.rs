//! Outcomes from sales in the live engine: read from the outcomes topic,
//! kept with their account (RocksDB and the changelog), joined to the
//! announcements they answer, and counted per definition version and rule.
//!
//! Every instance reads every partition of the outcomes topic (a few
//! records a day per sales rep: nothing to share out), at positions kept
//! in RocksDB with the state. An outcome is applied by the instance that
//! owns its account's input partition; the others keep it aside (meta
//! records `pending_outcome|…`) and apply it if the partition comes to
//! them, so nothing depends on how the outcomes topic is partitioned or
//! how the group assigns it. An account keeps each outcome once (by the
//! outcomes-topic partition and offset it was read from), so the copy
//! restored from the changelog and the one kept aside never count twice.

use std::collections::{BTreeMap, HashMap};

use super::{Engine, EngineError, InputRecord, Output};
use crate::decode::{Reason, Rejection};
use crate::definitions::Definitions;
use crate::outcome::{self, tally_account, AccountTally, Announcement, AttributedBy, Outcome, RuleReport};
use crate::state::account::{Sent, StoredOutcome, MAX_OUTCOMES, MAX_SENT};
use crate::telemetry::Metrics;

const POSITIONS: &str = "outcome_positions";
const PENDING: &str = "pending_outcome|";

/// The engine's outcome bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Feedback {
    /// The outcomes topic (`None`: outcomes are not read).
    topic: Option<String>,
    window_ms: i64,
    max_future_seconds: u64,
    /// Next offset to read per outcomes-topic partition.
    positions: BTreeMap<i32, i64>,
    positions_changed: bool,
    /// What the accounts' announcements heard back.
    tallies: Tallies,
    changed: bool,
    /// The label sets (version, role, rule) the per-rule gauges were last
    /// published for, in the order of the reports.
    published: Vec<(String, &'static str, String)>,
}

/// Per account with announcements or outcomes in a partition this engine
/// owns: its input partition, and its tally per running definition (index
/// as in the definitions); and their sums, kept up to date as accounts are
/// counted again, come or go. (Summing them at each commit cost a pass over
/// every account ever announced: a year's backtest made that a pass over
/// hundreds of thousands, with an allocation per rule of each.)
#[derive(Debug, Default)]
struct Tallies {
    by_account: HashMap<String, (i32, Vec<AccountTally>)>,
    /// Per running definition: the sum of the accounts' tallies.
    sums: Vec<AccountTally>,
}

impl Tallies {
    /// Sets an account's tallies (replacing those it had).
    fn insert(&mut self, account: String, partition: i32, tallies: Vec<AccountTally>) {
        if self.sums.len() < tallies.len() {
            self.sums.resize_with(tallies.len(), Default::default);
        }
        for (sum, t) in self.sums.iter_mut().zip(&tallies) {
            sum.add(t);
        }
        if let Some((_, old)) = self.by_account.insert(account, (partition, tallies)) {
            for (sum, t) in self.sums.iter_mut().zip(&old) {
                sum.sub(t);
            }
        }
    }

    /// Keeps the accounts whose partition passes `keep`.
    fn retain(&mut self, mut keep: impl FnMut(i32) -> bool) {
        let sums = &mut self.sums;
        self.by_account.retain(|_, (p, tallies)| {
            let kept = keep(*p);
            if !kept {
                for (sum, t) in sums.iter_mut().zip(tallies.iter()) {
                    sum.sub(t);
                }
            }
            kept
        });
    }

    fn clear(&mut self) {
        self.by_account.clear();
        self.sums.clear();
    }
}

impl Engine {
    /// Reads outcomes from `topic` (`None`: not at all), joining an outcome
    /// without an event id to the latest announcement at most `window_ms`
    /// before it. Loads the outcome positions and the per-rule counts of
    /// the accounts in the state.
    pub fn set_outcomes(
        &mut self,
        topic: Option<String>,
        window_ms: i64,
        max_future_seconds: u64,
    ) -> Result<(), EngineError> {
        self.feedback.topic = topic;
        self.feedback.window_ms = window_ms;
        self.feedback.max_future_seconds = max_future_seconds;
        self.feedback.positions =
            self.store.meta(POSITIONS)?.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default();
        self.load_tallies(None)
    }

    /// The outcomes topic, when outcomes are read.
    pub fn outcomes_topic(&self) -> Option<&str> {
        self.feedback.topic.as_deref()
    }

    /// Where to read each outcomes-topic partition from (the next offset
    /// not yet applied; partitions not listed: from the start).
    pub fn outcome_positions(&self) -> BTreeMap<i32, i64> {
        self.feedback.positions.clone()
    }

    /// Applies one record of the outcomes topic. A bad record is a dead
    /// letter with its reason; records at offsets already applied are
    /// skipped.
    pub fn process_outcome(&mut self, rec: &InputRecord<'_>, out: &mut Output) -> Result<(), EngineError> {
        if rec.offset < self.feedback.positions.get(&rec.partition).copied().unwrap_or(0) {
            self.metrics.duplicates_skipped.inc();
            return Ok(());
        }
        let now = (self.clock)();
        let parsed = outcome::parse_outcome(rec.payload.unwrap_or_default())
            .and_then(|o| outcome::check_not_future(&o, now, self.feedback.max_future_seconds).map(|()| o));
        match parsed {
            Ok(o) => {
                let joined = self.take_outcome(&o, rec.partition, rec.offset, true)?;
                self.metrics.outcomes.with_label_values(&[o.outcome.as_str(), joined]).inc();
            }
            Err(e) => self.dead_letter(rec, Rejection::new(Reason::Outcome(e.reason()), e.to_string()), out),
        }
        self.feedback.positions.insert(rec.partition, rec.offset + 1);
        self.feedback.positions_changed = true;
        Ok(())
    }

    /// Gives an outcome to its account if this engine owns the account's
    /// partition, else keeps it aside (when `keep`). Returns what it was
    /// joined to, for the metric.
    fn take_outcome(
        &mut self,
        o: &Outcome,
        partition: i32,
        offset: i64,
        keep: bool,
    ) -> Result<&'static str, EngineError> {
        let home = self.store.peek_account(&o.account_id)?.map(|a| a.partition);
        let owner = match home {
            // An account last seen before accounts recorded their
            // partition: the partition the outcome came on, if owned.
            Some(None) => self.owns(partition).then_some(partition),
            Some(Some(p)) => self.owns(p).then_some(p),
            None => None,
        };
        let Some(p) = owner else {
            if keep {
                let name = format!("{PENDING}{}|{partition}|{offset}", o.account_id);
                self.store.put_meta(&name, o.to_json().into_bytes());
            }
            return Ok("pending");
        };
        self.store.set_partition(p);
        let entry = self.store.account(&o.account_id)?;
        if entry.state.outcomes.iter().any(|s| s.partition == partition && s.offset == offset) {
            return Ok("duplicate");
        }
        entry.state.outcomes.push(StoredOutcome {
            outcome: o.outcome,
            at_ms: o.at_ms,
            pqa_event_id: o.pqa_event_id.clone(),
            rule: o.rule.clone(),
            amount: o.amount,
            partition,
            offset,
        });
        if entry.state.outcomes.len() > MAX_OUTCOMES {
            entry.state.outcomes.remove(0);
        }
        entry.dirty = true;
        let live = self.defs.live.version.clone();
        let sent = announcements(&entry.state.sent, &live);
        let joined = match outcome::attribute(&sent, o, self.feedback.window_ms) {
            Some((_, AttributedBy::EventId)) => "event_id",
            Some((_, AttributedBy::Time)) => "time",
            None => "none",
        };
        self.retally(&o.account_id)?;
        Ok(joined)
    }

    /// Keeps an announcement of definition `d` with its account (the batch
    /// has the account in hand).
    pub(super) fn record_sent(
        &mut self,
        account: &str,
        d: usize,
        id: &str,
        rules: &[String],
        at_ms: i64,
    ) -> Result<(), EngineError> {
        let version = self.defs.get(d).version.clone();
        let entry = self.store.account(account)?;
        entry.state.sent.push(Sent { version, id: id.to_string(), rules: rules.to_vec(), at_ms });
        if entry.state.sent.len() > MAX_SENT {
            entry.state.sent.remove(0);
        }
        entry.dirty = true;
        self.retally(account)
    }

    /// Counts the account again (after an announcement or an outcome).
    fn retally(&mut self, account: &str) -> Result<(), EngineError> {
        let fallback = self.store.partition();
        let entry = self.store.account(account)?;
        let partition = entry.state.partition.unwrap_or(fallback);
        let tallies = tally(&self.defs, &entry.state.sent, &entry.state.outcomes, account, self.feedback.window_ms);
        self.feedback.tallies.insert(account.to_string(), partition, tallies);
        self.feedback.changed = true;
        Ok(())
    }

    /// Counts the accounts of the `h` index again, those of `partitions`
    /// (all when `None`), and applies the outcomes kept aside for them.
    pub(super) fn load_tallies(&mut self, partitions: Option<&[i32]>) -> Result<(), EngineError> {
        if partitions.is_none() {
            self.feedback.tallies.clear();
        }
        for (account, p) in self.store.heard_accounts()? {
            if partitions.is_some_and(|ps| !ps.contains(&p)) || !self.owns(p) {
                continue;
            }
            if let Some(state) = self.store.peek_account(&account)? {
                let t = tally(&self.defs, &state.sent, &state.outcomes, &account, self.feedback.window_ms);
                self.feedback.tallies.insert(account, state.partition.unwrap_or(p), t);
            }
        }
        self.feedback.changed = true;
        if self.feedback.topic.is_none() {
            return Ok(());
        }
        for (name, v) in self.store.meta_prefix(PENDING)? {
            let Some((partition, offset)) = pending_source(&name) else { continue };
            let Ok(o) = outcome::parse_outcome(&v) else { continue };
            let before = self.store.partition();
            self.take_outcome(&o, partition, offset, false)?;
            self.store.set_partition(before);
        }
        Ok(())
    }

    /// Partitions arrived (their state restored): their accounts are
    /// counted, and outcomes kept aside for them applied. Accounts counted
    /// before this engine owned anything (at start-up, all of them) and not
    /// in a partition it owns now are dropped.
    pub(super) fn outcomes_assigned(&mut self, partitions: &[i32]) -> Result<(), EngineError> {
        let owned = self.owned.clone();
        self.feedback.tallies.retain(|p| owned.as_ref().is_none_or(|o| o.contains(&p)));
        self.load_tallies(Some(partitions))
    }

    /// Partitions left: their accounts are counted elsewhere now.
    pub(super) fn outcomes_revoked(&mut self, partitions: &[i32]) {
        self.feedback.tallies.retain(|p| !partitions.contains(&p));
        self.feedback.changed = true;
    }

    /// Before a commit: the outcome positions go with the state.
    pub(super) fn prepare_outcomes(&mut self) {
        if self.feedback.positions_changed {
            let v = serde_json::to_vec(&self.feedback.positions).expect("positions serialise");
            self.store.put_meta(POSITIONS, v);
            self.feedback.positions_changed = false;
        }
    }

    /// Per running definition (live first): what its announcements heard
    /// back, per rule and over all rules, summed over the accounts of this
    /// engine's partitions.
    pub fn rule_reports(&self) -> Vec<RuleReport> {
        let mut reports: Vec<RuleReport> = self
            .defs
            .all()
            .enumerate()
            .map(|(i, d)| RuleReport {
                version: d.version.clone(),
                role: Definitions::role(i),
                rules: d.rules.iter().map(|r| (r.name.clone(), Default::default())).collect(),
                all: Default::default(),
            })
            .collect();
        for (report, sum) in reports.iter_mut().zip(&self.feedback.tallies.sums) {
            // (A rule no account's announcement lists any more is left
            // out, as when the sums were made afresh.)
            for (rule, rt) in sum.by_rule.iter().filter(|(_, rt)| rt.announced > 0) {
                report.rules.insert(rule.clone(), rt.clone());
            }
            report.all = sum.all.clone();
        }
        reports
    }

    /// Sets the per-rule gauges when the counts changed. While the rules
    /// are those of the last time, each gauge is set in place: no label set
    /// is made again (an allocation or more each, about a thousand a commit
    /// with the shipped definition), and a scrape never sees the family
    /// half made. When the rules changed (a definition, a rule whose last
    /// announcement left), the families are made afresh, so none lingers.
    pub fn publish_rule_metrics(&mut self) {
        if !self.feedback.changed {
            return;
        }
        self.feedback.changed = false;
        let reports = self.rule_reports();
        publish_rule_gauges(&self.metrics, &reports, &mut self.feedback.published);
    }

    /// The attribution window in milliseconds.
    pub fn attribution_window_ms(&self) -> i64 {
        self.feedback.window_ms
    }
}

/// The announcements of one definition version, for the join.
pub fn announcements(sent: &[Sent], version: &str) -> Vec<Announcement> {
    sent.iter()
        .filter(|s| s.version == version)
        .map(|s| Announcement { event_id: s.id.clone(), rules: s.rules.clone(), at_ms: s.at_ms })
        .collect()
}

/// One account's tally per running definition.
fn tally(
    defs: &Definitions,
    sent: &[Sent],
    outcomes: &[StoredOutcome],
    account: &str,
    window_ms: i64,
) -> Vec<AccountTally> {
    let outcomes: Vec<Outcome> = outcomes.iter().map(|o| o.outcome(account)).collect();
    defs.all().map(|d| tally_account(&announcements(sent, &d.version), &outcomes, window_ms)).collect()
}

/// The outcomes-topic partition and offset in a pending record's name.
fn pending_source(name: &str) -> Option<(i32, i64)> {
    let mut parts = name.rsplitn(3, '|');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    Some((partition, offset))
}

/// Sets the per-rule gauges from `reports` (see
/// [`Engine::publish_rule_metrics`]); `published` is the label sets set last
/// time. Also used by a process with workers, for the workers' merged
/// reports.
pub fn publish_rule_gauges(m: &Metrics, reports: &[RuleReport], published: &mut Vec<(String, &'static str, String)>) {
    let labels = || {
        reports.iter().flat_map(|r| {
            r.rules.iter().map(|(k, v)| (k.as_str(), v)).chain([("*", &r.all)]).map(move |(rule, t)| (r, rule, t))
        })
    };
    let same = published.len() == labels().count()
        && published
            .iter()
            .zip(labels())
            .all(|((v, role, rule), (r, k, _))| *v == r.version && *role == r.role && rule == k);
    if !same {
        m.rule_announced.reset();
        m.rule_answered.reset();
        m.rule_outcomes.reset();
        m.rule_positive.reset();
        m.rule_precision.reset();
        m.rule_lead_time_days.reset();
        *published = labels().map(|(r, rule, _)| (r.version.clone(), r.role, rule.to_string())).collect();
    }
    for (r, rule, t) in labels() {
        let l = [r.version.as_str(), r.role, rule];
        m.rule_announced.with_label_values(&l).set(t.announced as i64);
        m.rule_answered.with_label_values(&l).set(t.answered as i64);
        m.rule_positive.with_label_values(&l).set(t.positive as i64);
        for k in outcome::OutcomeKind::ALL {
            let n = match k {
                outcome::OutcomeKind::Accepted => t.accepted,
                outcome::OutcomeKind::Rejected => t.rejected,
                outcome::OutcomeKind::Opportunity => t.opportunity,
                outcome::OutcomeKind::Won => t.won,
                outcome::OutcomeKind::Lost => t.lost,
            };
            m.rule_outcomes.with_label_values(&[l[0], l[1], l[2], k.as_str()]).set(n as i64);
        }
        // (A value there is none of now, such as the precision of a rule
        // whose answered accounts left, is taken out, as a fresh family
        // would not have it.)
        match t.precision() {
            Some(p) => m.rule_precision.with_label_values(&l).set(p),
            None if same => {
                let _ = m.rule_precision.remove_label_values(&l);
            }
            None => {}
        }
        for (q, v) in [("0.5", t.median_lead_days()), ("0.9", t.p90_lead_days())] {
            let l = [l[0], l[1], l[2], q];
            match v {
                Some(v) => m.rule_lead_time_days.with_label_values(&l).set(v),
                None if same => {
                    let _ = m.rule_lead_time_days.remove_label_values(&l);
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::state::Store;
    use crate::telemetry::Metrics;

    fn engine(dir: &std::path::Path) -> Engine {
        let mut cfg = Config::default_config();
        cfg.state.dir = dir.to_path_buf();
        let def = Arc::new(cfg.validate().unwrap());
        let store = Store::open(&cfg.state).unwrap();
        let mut e = Engine::new(def, cfg.input, store, Metrics::new()).unwrap();
        e.set_outcomes(Some("outcomes".into()), outcome::DEFAULT_ATTRIBUTION_WINDOW_MS, 86_400).unwrap();
        e
    }

    fn event(e: &mut Engine, out: &mut Output, partition: i32, offset: i64, json: &str) {
        let rec = InputRecord {
            topic: "events",
            partition,
            offset,
            key: None,
            payload: Some(json.as_bytes()),
            timestamp_ms: None,
        };
        e.process(&rec, out).unwrap();
    }

    fn outcome_rec(e: &mut Engine, out: &mut Output, partition: i32, offset: i64, json: &str) {
        let rec = InputRecord {
            topic: "outcomes",
            partition,
            offset,
            key: None,
            payload: Some(json.as_bytes()),
            timestamp_ms: None,
        };
        e.process_outcome(&rec, out).unwrap();
    }

    fn hand_raise(acct: &str) -> String {
        format!(
            r#"{{"type":"track","event":"Demo Requested","userId":"{acct}-u","context":{{"groupId":"{acct}"}},"timestamp":"2026-01-02T10:00:00Z"}}"#
        )
    }

    fn hand_raiser(e: &Engine) -> outcome::RuleTally {
        e.rule_reports()[0].rules["hand_raiser"].clone()
    }

    /// An outcome for an account of a partition another instance owns is
    /// kept aside, and applied (once) when the partition comes here; the
    /// counts follow the partitions.
    #[test]
    fn outcomes_follow_their_accounts_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path());
        let mut out = Output::default();
        event(&mut e, &mut out, 0, 0, &hand_raise("a"));
        event(&mut e, &mut out, 1, 0, &hand_raise("b"));
        assert_eq!(out.events.len(), 2);
        e.commit().unwrap();
        // This instance now owns input partition 0 only.
        e.assigned(&[0]).unwrap();
        e.revoked(&[("events".into(), 1)]);
        assert_eq!(hand_raiser(&e).announced, 1, "b is counted elsewhere");
        let won = |acct: &str| format!(r#"{{"account_id":"{acct}","outcome":"won","at":"2026-01-20T10:00:00Z"}}"#);
        outcome_rec(&mut e, &mut out, 2, 7, &won("a"));
        outcome_rec(&mut e, &mut out, 2, 8, &won("b"));
        outcome_rec(&mut e, &mut out, 2, 9, r#"{"account_id":"b","outcome":"won"}"#);
        assert_eq!(out.dead_letters.len(), 1);
        assert_eq!(out.dead_letters[0].reason.as_str(), "missing_timestamp");
        // A record read again (a redelivery) is skipped by its offset.
        outcome_rec(&mut e, &mut out, 2, 7, &won("a"));
        e.commit().unwrap();
        let t = hand_raiser(&e);
        assert_eq!((t.announced, t.answered, t.won), (1, 1, 1));
        assert_eq!(e.outcome_positions().get(&2), Some(&10));
        // Partition 1 arrives: b's outcome, kept aside, is applied.
        e.assigned(&[1]).unwrap();
        let t = hand_raiser(&e);
        assert_eq!((t.announced, t.answered, t.won, t.positive), (2, 2, 2, 2));
        assert_eq!(t.lead_times_days, vec![18.0, 18.0]);
        // Arriving again (a restart) applies nothing twice.
        e.commit().unwrap();
        e.assigned(&[0, 1]).unwrap();
        assert_eq!(hand_raiser(&e).won, 2);
        let b = e.reader().account("b").unwrap().unwrap();
        assert_eq!(b.outcomes.len(), 1);
        drop(e);
        // After a restart: positions and counts come back from RocksDB.
        let e = engine(dir.path());
        assert_eq!(e.outcome_positions().get(&2), Some(&10));
        let t = hand_raiser(&e);
        assert_eq!((t.announced, t.answered, t.won), (2, 2, 2));
    }

    /// The per-rule gauges, set in place while the rules stay the same,
    /// say what a family made afresh would: the counts of the moment, and
    /// no precision or lead time once no account of this engine's has one.
    #[test]
    fn rule_gauges_follow_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path());
        let mut out = Output::default();
        let version = e.definition().version.clone();
        let gauge = |e: &Engine, name: &str, extra: &str| {
            let want = format!(r#"{name}{{{extra}role="live",rule="hand_raiser",version="{version}"}} "#);
            let text = e.metrics().render();
            text.lines().find_map(|l| l.strip_prefix(want.as_str()).map(|v| v.parse::<f64>().unwrap()))
        };
        event(&mut e, &mut out, 0, 0, &hand_raise("a"));
        event(&mut e, &mut out, 1, 0, &hand_raise("b"));
        e.commit().unwrap();
        assert_eq!(gauge(&e, "pqa_rule_announced", ""), Some(2.0));
        assert_eq!(gauge(&e, "pqa_rule_precision", ""), None);
        let won = |acct: &str| format!(r#"{{"account_id":"{acct}","outcome":"won","at":"2026-01-20T10:00:00Z"}}"#);
        outcome_rec(&mut e, &mut out, 2, 0, &won("a"));
        outcome_rec(&mut e, &mut out, 2, 1, &won("b"));
        e.commit().unwrap();
        assert_eq!(gauge(&e, "pqa_rule_answered", ""), Some(2.0));
        assert_eq!(gauge(&e, "pqa_rule_outcomes", r#"outcome="won","#), Some(2.0));
        assert_eq!(gauge(&e, "pqa_rule_precision", ""), Some(1.0));
        assert_eq!(gauge(&e, "pqa_rule_lead_time_days", r#"quantile="0.5","#), Some(18.0));
        // b's partition leaves, then a's: the counts go down, and with no
        // answered account the precision and lead times are gone.
        e.assigned(&[0]).unwrap();
        e.revoked(&[("events".into(), 1)]);
        e.commit().unwrap();
        assert_eq!(gauge(&e, "pqa_rule_announced", ""), Some(1.0));
        assert_eq!(gauge(&e, "pqa_rule_outcomes", r#"outcome="won","#), Some(1.0));
        assert_eq!(gauge(&e, "pqa_rule_precision", ""), Some(1.0));
        e.revoked(&[("events".into(), 0)]);
        e.commit().unwrap();
        assert_eq!(gauge(&e, "pqa_rule_announced", ""), Some(0.0));
        assert_eq!(gauge(&e, "pqa_rule_outcomes", r#"outcome="won","#), Some(0.0));
        assert_eq!(gauge(&e, "pqa_rule_precision", ""), None);
        assert_eq!(gauge(&e, "pqa_rule_lead_time_days", r#"quantile="0.5","#), None);
        assert_eq!(gauge(&e, "pqa_rule_lead_time_days", r#"quantile="0.9","#), None);
    }

    /// The sums kept as accounts are counted again, come and go are the
    /// sums made afresh over the accounts left (the lead times as a
    /// multiset: their order is not part of a report).
    #[test]
    fn kept_sums_are_the_accounts_sums() {
        use rand::{Rng, SeedableRng};
        fn tally(rng: &mut rand::rngs::SmallRng) -> AccountTally {
            let mut t = AccountTally::default();
            for rule in ["a", "b", "c"] {
                if rng.random_bool(0.5) {
                    let rt = outcome::RuleTally {
                        announced: rng.random_range(1..4),
                        answered: rng.random_range(0..2),
                        won: rng.random_range(0..2),
                        positive: rng.random_range(0..2),
                        lead_times_days: (0..rng.random_range(0..3))
                            .map(|_| f64::from(rng.random_range(0..5u8)))
                            .collect(),
                        ..Default::default()
                    };
                    t.all.add(&rt);
                    t.by_rule.insert(rule.to_string(), rt);
                }
            }
            t
        }
        fn normal(t: &AccountTally) -> Vec<(String, u64, u64, u64, u64, Vec<u64>)> {
            let mut rows: Vec<_> = t
                .by_rule
                .iter()
                .filter(|(_, rt)| rt.announced > 0)
                .map(|(r, rt)| (r.clone(), rt))
                .chain([("*".to_string(), &t.all)])
                .map(|(r, rt)| {
                    let mut leads: Vec<u64> = rt.lead_times_days.iter().map(|d| d.to_bits()).collect();
                    leads.sort_unstable();
                    (r, rt.announced, rt.answered, rt.won, rt.positive, leads)
                })
                .collect();
            rows.sort();
            rows
        }
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut t = Tallies::default();
        for step in 0..3_000 {
            match rng.random_range(0..10) {
                0 => t.retain(|p| p != rng.random_range(0..4)),
                _ => {
                    let account = format!("acct-{}", rng.random_range(0..60));
                    let tallies = vec![tally(&mut rng), tally(&mut rng)];
                    t.insert(account, rng.random_range(0..4), tallies);
                }
            }
            for d in 0..2 {
                let mut fresh = AccountTally::default();
                for (_, tallies) in t.by_account.values() {
                    fresh.add(&tallies[d]);
                }
                let kept = t.sums.get(d).cloned().unwrap_or_default();
                assert_eq!(normal(&kept), normal(&fresh), "step {step}, definition {d}");
            }
        }
        assert!(t.by_account.len() > 10, "the accounts came and went: {}", t.by_account.len());
    }
}
