//! Liveness and readiness of a running process (`/healthz`, `/readyz`),
//! set by the consumer loop, the commit thread, the changelog and the
//! rebalance callbacks; read by the HTTP server. Kept apart from the HTTP
//! server so that the Kafka code does not depend on it.
//!
//! Readiness is a set of problems, one per [`Source`]: each part sets and
//! clears only its own, so a problem raised by one (the commit thread:
//! "output not acknowledged by Kafka") is never cleared by another's good
//! news (the consumer loop receiving a message). Not ready while any
//! problem stands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::state::StateReader;

/// Who raised a problem. The first standing problem, in this order, is the
/// one `/readyz` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// No broker reachable (librdkafka statistics and errors; cleared by
    /// the consumer loop when a message arrives).
    Brokers,
    /// The output (announcements, dead letters, changelog records) is not
    /// acknowledged (the commit thread).
    Output,
    /// The output cannot be handed to the producer (the consumer loop, which
    /// sends each announcement as soon as it is decided).
    Producing,
    /// State being restored from the changelog, topics being waited for.
    State,
    /// Anything else (`deliver`'s destinations).
    Other,
}

/// Liveness and readiness.
#[derive(Default)]
pub struct Health {
    live: AtomicBool,
    assigned: AtomicBool,
    problems: Mutex<BTreeMap<Source, String>>,
    /// Things an operator must know that do not stop progress (input a
    /// broker would not return): shown by `/readyz`, newest last.
    warnings: Mutex<Vec<String>>,
    reader: Mutex<Option<StateReader>>,
    /// The workers' own health (`kafka.workers` > 1): each worker sets its
    /// own problems, so that one worker's good news never clears
    /// another's; the process is ready when every worker is.
    workers: Mutex<Vec<Arc<Health>>>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }
    /// A worker's health, counted in this one's readiness from now on.
    pub fn worker(&self) -> Arc<Health> {
        let w = Health::new();
        self.workers.lock().expect("lock").push(w.clone());
        w
    }
    /// Whether this process runs workers (`kafka.workers` > 1).
    pub fn has_workers(&self) -> bool {
        !self.workers.lock().expect("lock").is_empty()
    }
    fn workers(&self) -> Vec<Arc<Health>> {
        self.workers.lock().expect("lock").clone()
    }
    pub fn set_live(&self, v: bool) {
        self.live.store(v, Ordering::SeqCst);
    }
    /// The consumer has joined its group and received an assignment.
    pub fn set_assigned(&self, v: bool) {
        self.assigned.store(v, Ordering::SeqCst);
    }
    /// Sets (`Some`) or clears (`None`) the problem of `source`; the others
    /// stay.
    pub fn set(&self, source: Source, p: Option<&str>) {
        let mut g = self.problems.lock().expect("lock");
        if g.get(&source).map(String::as_str) == p {
            return;
        }
        match p {
            Some(p) => {
                tracing::warn!(problem = p, "not ready");
                g.insert(source, p.to_string());
            }
            None => {
                g.remove(&source);
                if g.is_empty() {
                    tracing::info!("ready again");
                }
            }
        }
    }
    /// [`Health::set`] for [`Source::Other`].
    pub fn set_problem(&self, p: Option<&str>) {
        self.set(Source::Other, p);
    }
    /// Clears the problem `which`, whoever raised it (another problem
    /// stays).
    pub fn clear_problem(&self, which: &str) {
        let source = self.problems.lock().expect("lock").iter().find(|(_, p)| p.as_str() == which).map(|(s, _)| *s);
        if let Some(s) = source {
            self.set(s, None);
        }
    }
    /// Records a warning for `/readyz` (the 20 newest are kept).
    pub fn add_warning(&self, w: String) {
        let mut g = self.warnings.lock().expect("lock");
        if g.len() >= 20 {
            g.remove(0);
        }
        g.push(w);
    }
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.warnings.lock().expect("lock").clone();
        for (i, h) in self.workers().iter().enumerate() {
            w.extend(h.warnings().into_iter().map(|x| format!("worker {i}: {x}")));
        }
        w
    }
    pub fn set_reader(&self, r: StateReader) {
        *self.reader.lock().expect("lock") = Some(r);
    }
    /// Live, and so is every worker.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst) && self.workers().iter().all(|w| w.is_live())
    }
    /// `Ok` when ready (and every worker is), else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let workers = self.workers();
        if !workers.is_empty() {
            if !self.live.load(Ordering::SeqCst) {
                return Err("not consuming".into());
            }
            for (i, w) in workers.iter().enumerate() {
                w.readiness().map_err(|why| format!("worker {i}: {why}"))?;
            }
            return Ok(());
        }
        if !self.is_live() {
            return Err("not consuming".into());
        }
        if !self.assigned.load(Ordering::SeqCst) {
            return Err("waiting for a partition assignment from the consumer group".into());
        }
        match self.problems.lock().expect("lock").values().next() {
            Some(p) => Err(p.clone()),
            None => Ok(()),
        }
    }
    /// The state, for the HTTP handlers (the first worker's when there
    /// are workers).
    pub fn reader(&self) -> Option<StateReader> {
        self.readers().into_iter().next()
    }
    /// The state of each worker (one: the process's own).
    pub fn readers(&self) -> Vec<StateReader> {
        let own = self.reader.lock().expect("lock").clone();
        match own {
            Some(r) => vec![r],
            None => self.workers().iter().flat_map(|w| w.readers()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Arc<Health> {
        let h = Health::new();
        h.set_live(true);
        h.set_assigned(true);
        h
    }

    /// The commit thread's problem stands until the commit thread clears
    /// it: a message arriving (the consumer loop clearing the brokers'
    /// problem) does not make the process ready.
    #[test]
    fn one_part_cannot_clear_anothers_problem() {
        let h = ready();
        assert_eq!(h.readiness(), Ok(()));
        h.set(Source::Output, Some("output not acknowledged by Kafka"));
        h.set(Source::Brokers, None);
        assert_eq!(h.readiness(), Err("output not acknowledged by Kafka".into()));
        h.set(Source::Brokers, Some("no Kafka broker is reachable"));
        assert_eq!(h.readiness(), Err("no Kafka broker is reachable".into()), "the first source names it");
        h.set(Source::Brokers, None);
        assert_eq!(h.readiness(), Err("output not acknowledged by Kafka".into()));
        h.set(Source::Output, None);
        assert_eq!(h.readiness(), Ok(()));
        h.set(Source::State, Some("restoring state from the changelog (5 records)"));
        h.clear_problem("restoring state from the changelog (5 records)");
        assert_eq!(h.readiness(), Ok(()));
    }

    /// With workers, the process is ready when every worker is, and a
    /// worker's problem is named with the worker; one worker's good news
    /// does not clear another's problem.
    #[test]
    fn every_worker_must_be_ready() {
        let h = Health::new();
        h.set_live(true);
        let (a, b) = (h.worker(), h.worker());
        assert_eq!(h.readiness(), Err("worker 0: not consuming".into()));
        for w in [&a, &b] {
            w.set_live(true);
        }
        a.set_assigned(true);
        assert_eq!(h.readiness(), Err("worker 1: waiting for a partition assignment from the consumer group".into()));
        b.set_assigned(true);
        assert_eq!(h.readiness(), Ok(()));
        b.set(Source::Output, Some("output not acknowledged by Kafka"));
        a.set(Source::Output, None);
        assert_eq!(h.readiness(), Err("worker 1: output not acknowledged by Kafka".into()));
        b.add_warning("skipped".into());
        assert_eq!(h.warnings(), vec!["worker 1: skipped".to_string()]);
        b.set_live(false);
        assert!(!h.is_live(), "a stopped worker stops the process's liveness");
    }
}
