//! The one commit pipeline, used by `run`, `replay` (and `backtest`
//! through it), [`Engine::commit`] and the benches.
//!
//! A batch is made durable in two steps: first what the caller must do
//! before the state may say the batch is done (deliver its output, write
//! its changelog records), then the state and its offsets in one RocksDB
//! write. [`Committer::hand_over`] does both on a thread of their own
//! while the engine applies the next batch; [`Committer::commit_now`] does
//! them in place. At most one batch is in flight, and the order is kept
//! by the types, not by convention:
//!
//! - a batch can only be prepared through the committer, which settles the
//!   one in flight first, so the engine is told a batch is durable
//!   ([`Engine::committed`]) before the next one is prepared;
//! - the engine is told only once the state write returned; if any step
//!   failed, everything not durable is dropped from the engine
//!   ([`Engine::abort`]) and the error returned.

use std::thread::JoinHandle;

use super::{Engine, EngineError};
use crate::state::store::{ChangeRecords, CommitStats, Prepared};
use crate::state::StateError;

/// What the caller does with a prepared batch before its state is written:
/// gets the batch (its changelog records and offsets) and returns the
/// changelog positions the records reached (next offset per changelog
/// partition; empty without a changelog) and anything to hand back once the
/// batch is durable.
pub type BeforeWrite<X, E> = Box<dyn FnOnce(&mut Prepared) -> Result<(Vec<(i32, i64)>, X), E> + Send>;

/// A batch made durable.
#[derive(Debug)]
pub struct Settled<X> {
    pub stats: CommitStats,
    /// What the caller's step returned.
    pub extra: X,
}

struct Durable<X> {
    stats: CommitStats,
    /// The batch's changelog records, written: their buffers go back to the
    /// store for the next batch (a fresh one of megabytes is faulted in and
    /// zeroed page by page on the engine thread).
    spare: ChangeRecords,
    oldest_ts: Option<i64>,
    written_ms: i64,
    extra: X,
}

/// The commit pipeline (see the module docs).
pub struct Committer<X, E> {
    inflight: Option<JoinHandle<Result<Durable<X>, E>>>,
}

impl<X, E> Default for Committer<X, E> {
    fn default() -> Self {
        Committer { inflight: None }
    }
}

/// The work of one batch, wherever it runs.
fn make_durable<X, E: From<StateError>>(
    mut prepared: Prepared,
    writer: crate::state::store::StateWriter,
    before: BeforeWrite<X, E>,
    timer: prometheus::Histogram,
) -> Result<Durable<X>, E> {
    let (changelog_next, extra) = before(&mut prepared)?;
    let oldest_ts = prepared.oldest_ts;
    let spare = std::mem::take(&mut prepared.changelog);
    let writing = std::time::Instant::now();
    let stats = writer.write(prepared, &changelog_next)?;
    timer.observe(writing.elapsed().as_secs_f64());
    Ok(Durable { stats, spare, oldest_ts, written_ms: chrono::Utc::now().timestamp_millis(), extra })
}

impl<X: Send + 'static, E: From<StateError> + Send + 'static> Committer<X, E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no batch is in flight.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_none()
    }

    /// Waits for the batch in flight, if any (see [`Committer::finish`]).
    pub fn settle(&mut self, engine: &mut Engine) -> Result<Option<Settled<X>>, E> {
        let Some(handle) = self.inflight.take() else { return Ok(None) };
        // A panic is an error like the others (this may run inside a
        // librdkafka callback, where unwinding must not go).
        let done = handle.join().unwrap_or_else(|_| Err(E::from(StateError::CommitThread("panicked".into()))));
        Self::finish(engine, done).map(Some)
    }

    /// Tells the engine a batch is durable (it trims its cache), or, if the
    /// batch failed, drops everything not durable.
    fn finish(engine: &mut Engine, done: Result<Durable<X>, E>) -> Result<Settled<X>, E> {
        match done {
            Ok(d) => {
                engine.recycle(d.spare);
                let stats = engine.committed(d.stats, d.oldest_ts, d.written_ms);
                Ok(Settled { stats, extra: d.extra })
            }
            Err(e) => {
                engine.abort();
                Err(e)
            }
        }
    }

    /// Settles the batch in flight (returning it), then prepares everything
    /// the engine changed since and hands it to a thread: `before` first,
    /// then the state write.
    pub fn hand_over(&mut self, engine: &mut Engine, before: BeforeWrite<X, E>) -> Result<Option<Settled<X>>, E> {
        let settled = self.settle(engine)?;
        let prepared = engine.prepare_commit();
        let (writer, timer) = (engine.writer(), state_commit_timer(engine));
        let work = move || make_durable(prepared, writer, before, timer);
        match std::thread::Builder::new().name("pqa-commit".into()).spawn(work) {
            Ok(h) => self.inflight = Some(h),
            Err(e) => {
                engine.abort();
                return Err(E::from(StateError::CommitThread(format!("cannot start: {e}"))));
            }
        }
        Ok(settled)
    }

    /// Settles the batch in flight, then makes everything applied since
    /// durable in place: when this returns, all of it is.
    pub fn commit_now(&mut self, engine: &mut Engine, before: BeforeWrite<X, E>) -> Result<Settled<X>, E> {
        self.settle(engine)?;
        let prepared = engine.prepare_commit();
        let done = make_durable(prepared, engine.writer(), before, state_commit_timer(engine));
        Self::finish(engine, done)
    }
}

/// `pqa_batch_duration_seconds{stage="state_commit"}`.
fn state_commit_timer(engine: &Engine) -> prometheus::Histogram {
    engine.metrics.batch_seconds.with_label_values(&["state_commit"])
}

impl Engine {
    /// Makes everything applied since the last commit durable, now: state
    /// and consumed offsets in one RocksDB write. Call it only after the
    /// batch's output has been delivered.
    pub fn commit(&mut self) -> Result<CommitStats, EngineError> {
        let mut c: Committer<(), EngineError> = Committer::new();
        Ok(c.commit_now(self, Box::new(|_| Ok((Vec::new(), ()))))?.stats)
    }
}
