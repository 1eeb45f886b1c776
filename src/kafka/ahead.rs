//! Consumed records decoded ahead of the engine on a second thread (`run`).
//!
//! The consumer loop copies each record it takes into a chunk; a full chunk
//! goes to a decoder thread (JSON parse and field extraction, the part of an
//! event that needs no state), which hands it back with every record
//! decoded, in the order the chunks went. The engine applies the decoded
//! records in that same order, so what it sees is exactly the sequence of
//! records the consumer returned: the same state, the same output, the same
//! offsets. Nothing is stored for Kafka or in RocksDB about a record before
//! the engine applied it, so a record still in a chunk when the process dies
//! is simply consumed again.
//!
//! The loop applies everything in hand (`Worker::drain` in `source.rs`) before it waits
//! for the broker, before a batch is cut and before a rebalance is handled,
//! so a record never waits for a chunk to fill while the consumer is idle,
//! and a partition never moves with records of it not yet applied.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

use rdkafka::message::Message;

use crate::decode::{Decoder, Event, Rejection};
use crate::engine::InputRecord;

/// Records per chunk: large enough that handing a chunk over costs little
/// per record, small enough that the engine starts soon. Each hand-over
/// wakes the decoder, and on 2 cores the woken thread often takes the
/// engine's core for a moment: with 64 records a chunk, the engine thread
/// spent about 1.1 s of a 10 s run over a backlog waiting at hand-overs;
/// 1,024 made `run` 4-7 % faster than 256 (BENCHMARKS.md). It adds no
/// wait when the input is slow: whatever is in hand is applied whenever
/// the consumer has nothing more (see the module docs).
const CHUNK_RECORDS: usize = 1024;

/// Chunks handed to the decoder and not yet applied, at most.
const IN_FLIGHT: usize = 4;

/// One consumed record, its bytes in its chunk's buffer.
struct Raw {
    /// Index in the chunk's `topics`.
    topic: usize,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    consumed: Instant,
}

/// Consumed records, and once decoded, their events.
#[derive(Default)]
pub struct Chunk {
    bytes: Vec<u8>,
    topics: Vec<String>,
    raws: Vec<Raw>,
    decoded: Vec<Result<Event, Rejection>>,
}

impl Chunk {
    fn clear(&mut self) {
        self.bytes.clear();
        self.topics.clear();
        self.raws.clear();
        self.decoded.clear();
    }

    fn is_empty(&self) -> bool {
        self.raws.is_empty()
    }

    fn push<M: Message>(&mut self, m: &M, consumed: Instant) {
        let topic = match self.topics.iter().position(|t| t == m.topic()) {
            Some(i) => i,
            None => {
                self.topics.push(m.topic().to_string());
                self.topics.len() - 1
            }
        };
        let mut copy = |b: Option<&[u8]>| {
            b.map(|b| {
                let start = self.bytes.len();
                self.bytes.extend_from_slice(b);
                start..self.bytes.len()
            })
        };
        let key = copy(m.key());
        let payload = copy(m.payload());
        self.raws.push(Raw {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key,
            payload,
            consumed,
        });
    }

    fn decode(&mut self, decoder: &Decoder) {
        let now = chrono::Utc::now().timestamp_millis();
        for r in &self.raws[self.decoded.len()..] {
            let payload = r.payload.clone().map(|p| &self.bytes[p]);
            self.decoded.push(decoder.decode(payload, now));
        }
    }

    /// The records with their decoded events, in order: (record, event,
    /// when it was consumed).
    /// Hands each record to `f` in order, as it came and as decoded, with
    /// the decoded records that follow it in the chunk (for
    /// [`Engine::prefetch`](crate::engine::Engine::prefetch)). Stops at
    /// `f`'s first error.
    pub fn each_record<E>(
        &mut self,
        mut f: impl FnMut(InputRecord<'_>, Result<Event, Rejection>, Instant, &[Result<Event, Rejection>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let Chunk { bytes, topics, raws, decoded } = self;
        let mut decoded = decoded.drain(..);
        for r in raws.iter() {
            let Some(d) = decoded.next() else { break };
            let rec = InputRecord {
                topic: &topics[r.topic],
                partition: r.partition,
                offset: r.offset,
                key: r.key.clone().map(|k| &bytes[k]),
                payload: r.payload.clone().map(|p| &bytes[p]),
                timestamp_ms: r.timestamp_ms,
            };
            f(rec, d, r.consumed, decoded.as_slice())?;
        }
        Ok(())
    }
}

/// The chunk being filled, the chunks at the decoder, and the thread.
pub struct Ahead {
    decoder: Decoder,
    filling: Chunk,
    to_decoder: Option<SyncSender<Chunk>>,
    from_decoder: Receiver<Chunk>,
    in_flight: usize,
    spare: VecDeque<Chunk>,
    thread: Option<JoinHandle<()>>,
}

impl Ahead {
    /// Starts the decoder thread.
    pub fn new(decoder: Decoder) -> Self {
        let (to_decoder, inbox) = sync_channel::<Chunk>(IN_FLIGHT);
        let (outbox, from_decoder) = sync_channel::<Chunk>(IN_FLIGHT);
        let d = decoder.clone();
        let thread = std::thread::Builder::new()
            .name("pqa-decode".into())
            .spawn(move || {
                for mut chunk in inbox {
                    chunk.decode(&d);
                    if outbox.send(chunk).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| tracing::warn!(cause = %e, "no decoder thread: records are decoded on the consumer loop's"))
            .ok();
        Ahead {
            decoder,
            filling: Chunk::default(),
            to_decoder: thread.as_ref().map(|_| to_decoder),
            from_decoder,
            in_flight: 0,
            spare: VecDeque::new(),
            thread,
        }
    }

    /// Whether records are in hand and not yet applied.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.in_flight == 0 && self.filling.is_empty()
    }

    /// Takes a consumed record. A chunk that fills goes to the decoder.
    pub fn push<M: Message>(&mut self, m: &M, consumed: Instant) {
        self.filling.push(m, consumed);
        if self.filling.raws.len() >= CHUNK_RECORDS && self.in_flight < IN_FLIGHT {
            if let Some(tx) = &self.to_decoder {
                let next = self.spare.pop_front().unwrap_or_default();
                let chunk = std::mem::replace(&mut self.filling, next);
                if tx.send(chunk).is_err() {
                    decoder_gone();
                }
                self.in_flight += 1;
            }
        }
    }

    /// A decoded chunk, in order: the oldest one at the decoder if it is
    /// back (or, with `wait`, once it is).
    pub fn decoded(&mut self, wait: bool) -> Option<Chunk> {
        if self.in_flight == 0 {
            return None;
        }
        let chunk = if wait {
            self.from_decoder.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            self.from_decoder.try_recv()
        };
        match chunk {
            Ok(chunk) => {
                self.in_flight -= 1;
                Some(chunk)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => decoder_gone(),
        }
    }

    /// Whether the decoder holds as many chunks as it may: the one filling
    /// grows until one comes back.
    pub fn is_full(&self) -> bool {
        self.in_flight >= IN_FLIGHT && self.filling.raws.len() >= CHUNK_RECORDS
    }

    /// The chunk being filled, decoded on this thread (to be applied after
    /// every chunk at the decoder: it holds the newest records).
    pub fn take_filling(&mut self) -> Option<Chunk> {
        if self.filling.is_empty() {
            return None;
        }
        let next = self.spare.pop_front().unwrap_or_default();
        let mut chunk = std::mem::replace(&mut self.filling, next);
        chunk.decode(&self.decoder);
        Some(chunk)
    }

    /// Gives an applied chunk's buffers back.
    pub fn recycle(&mut self, mut chunk: Chunk) {
        if self.spare.len() < IN_FLIGHT + 1 {
            chunk.clear();
            self.spare.push_back(chunk);
        }
    }
}

/// The decoder thread ended with records of ours (it can only have
/// panicked): they cannot be applied in order, and the ones after them must
/// not be applied without them. Stop, as a panic in the engine itself
/// would; the records are consumed again from the stored offsets.
fn decoder_gone() -> ! {
    panic!("the decoder thread stopped with consumed records in hand")
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // The decoder ends once its inbox is closed (it never blocks handing
        // a chunk back: at most `IN_FLIGHT` are out, the channel holds that).
        self.to_decoder = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;
    use crate::config::Config;

    fn message(i: usize) -> OwnedMessage {
        let payload = match i % 7 {
            // A tombstone, an empty message and a bad line among the events.
            3 => None,
            5 => Some(Vec::new()),
            6 => Some(b"{not json".to_vec()),
            _ => Some(
                format!(
                    r#"{{"type":"track","event":"e{i}","userId":"u{i}","timestamp":"2026-09-02T10:00:00Z","context":{{"groupId":"a{}"}}}}"#,
                    i % 13
                )
                .into_bytes(),
            ),
        };
        let key = (i % 2 == 0).then(|| format!("a{}", i % 13).into_bytes());
        let topic = if i % 11 == 0 { "other" } else { "events" };
        OwnedMessage::new(payload, key, topic.into(), Timestamp::CreateTime(i as i64), (i % 3) as i32, i as i64, None)
    }

    /// Records come back in the order they were taken, whole, decoded as the
    /// decoder decodes them, whether they went through the decoder thread or
    /// were decoded in hand: the engine sees what the consumer returned.
    #[test]
    fn records_come_back_in_order_and_whole() {
        let decoder = Decoder::new(Config::default_config().input);
        let mut ahead = Ahead::new(decoder.clone());
        let now = chrono::Utc::now().timestamp_millis();
        let total = CHUNK_RECORDS * (IN_FLIGHT + 3) + 17;
        let mut seen = 0usize;
        let mut looked_ahead = 0usize;
        let mut check = |chunk: &mut Chunk, seen: &mut usize| {
            let r: Result<(), ()> = chunk.each_record(|rec, decoded, _, upcoming| {
                let m = message(*seen);
                assert_eq!(rec.topic, m.topic());
                assert_eq!(rec.partition, m.partition());
                assert_eq!(rec.offset, *seen as i64);
                assert_eq!(rec.key, m.key());
                assert_eq!(rec.payload, m.payload());
                assert_eq!(rec.timestamp_ms, Some(*seen as i64));
                let want = decoder.decode(m.payload(), now);
                assert_eq!(decoded, want, "record {seen}");
                // And the records after it in the chunk.
                for (k, later) in upcoming.iter().enumerate().take(3) {
                    assert_eq!(later, &decoder.decode(message(*seen + 1 + k).payload(), now), "{k} after {seen}");
                    looked_ahead += 1;
                }
                *seen += 1;
                Ok(())
            });
            r.expect("no error");
        };
        for i in 0..total {
            ahead.push(&message(i), Instant::now());
            assert!(!ahead.is_empty());
            if ahead.is_full() {
                let mut c = ahead.decoded(true).expect("a chunk at the decoder");
                check(&mut c, &mut seen);
                ahead.recycle(c);
            }
            // Now and then, take what is back, as the consumer loop does.
            if i % 300 == 0 {
                while let Some(mut c) = ahead.decoded(false) {
                    check(&mut c, &mut seen);
                    ahead.recycle(c);
                }
            }
        }
        while let Some(mut c) = ahead.decoded(true) {
            check(&mut c, &mut seen);
            ahead.recycle(c);
        }
        let mut last = ahead.take_filling().expect("the newest records in hand");
        check(&mut last, &mut seen);
        assert_eq!(seen, total);
        assert!(looked_ahead > total, "{looked_ahead} events seen ahead of {total}");
        assert!(ahead.is_empty());
        assert!(ahead.take_filling().is_none());
    }

    /// Nothing is decoded ahead beyond the limit: the chunk in hand grows
    /// until one comes back, and the consumer loop is told to wait.
    #[test]
    fn the_decoder_holds_at_most_its_limit() {
        let mut ahead = Ahead::new(Decoder::new(Config::default_config().input));
        for i in 0..CHUNK_RECORDS * (IN_FLIGHT + 1) {
            ahead.push(&message(i), Instant::now());
        }
        assert!(ahead.is_full());
        assert_eq!(ahead.in_flight, IN_FLIGHT);
        let c = ahead.decoded(true).expect("back");
        assert_eq!(c.raws.len(), CHUNK_RECORDS);
        ahead.recycle(c);
        // The next record sends the full chunk in hand.
        ahead.push(&message(0), Instant::now());
        assert_eq!(ahead.in_flight, IN_FLIGHT);
        assert_eq!(ahead.filling.raws.len(), 0);
    }
}
