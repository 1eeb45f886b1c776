//! The ids each destination has taken: what makes a redelivered event (after
//! a crash, a rebalance, or an offset reset) not go out a second time.
//!
//! A small RocksDB (`deliver.state_dir`) keyed by destination name and
//! CloudEvent id. An id is written right after the destination
//! acknowledged it (or after its dead letter was acknowledged by Kafka),
//! with the write-ahead log, so a process crash (`kill -9`) loses no
//! recorded id; only the moment between the acknowledgement and the write
//! is unprotected (see the README: destinations with an idempotency key of
//! their own cover it). Records expire after `deliver.delivered_ids_ttl_days`
//! (RocksDB's TTL compaction).

use std::path::Path;
use std::time::Duration;

use rocksdb::{Options, DB};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the delivered-ids store at {dir}: {source} (is another `deliver` running on it?)")]
    Open { dir: String, source: rocksdb::Error },
    #[error("the delivered-ids store failed: {0}")]
    Io(#[from] rocksdb::Error),
}

/// What became of an event at a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `delivered` or `dead_lettered`.
    pub outcome: String,
    /// What the destination made of it (e.g. `company 123, task 456`), or
    /// the dead letter's reason.
    pub reference: String,
}

/// Delivered ids per destination.
pub struct DeliveredStore {
    db: DB,
}

impl DeliveredStore {
    pub fn open(dir: &Path, ttl: Duration) -> Result<DeliveredStore, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(3);
        let db = DB::open_with_ttl(&opts, dir, ttl)
            .map_err(|source| StoreError::Open { dir: dir.display().to_string(), source })?;
        Ok(DeliveredStore { db })
    }

    fn key(destination: &str, id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(destination.len() + 1 + id.len());
        k.extend_from_slice(destination.as_bytes());
        k.push(0);
        k.extend_from_slice(id.as_bytes());
        k
    }

    /// What became of `id` at `destination`, if it was recorded.
    pub fn get(&self, destination: &str, id: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.db.get_pinned(Self::key(destination, id))?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Records `id` at `destination`. A point write to the write-ahead log
    /// (no fsync): microseconds, so it is done on the async worker.
    pub fn put(&self, destination: &str, id: &str, record: &Record) -> Result<(), StoreError> {
        let v = serde_json::to_vec(record).expect("JSON");
        Ok(self.db.put(Self::key(destination, id), v)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_per_destination_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record { at_ms: 1, outcome: "delivered".into(), reference: "task 7".into() };
        {
            let s = DeliveredStore::open(dir.path(), Duration::from_secs(86_400)).unwrap();
            assert_eq!(s.get("slack", "abc").unwrap(), None);
            s.put("slack", "abc", &r).unwrap();
        }
        let s = DeliveredStore::open(dir.path(), Duration::from_secs(86_400)).unwrap();
        assert_eq!(s.get("slack", "abc").unwrap(), Some(r));
        assert_eq!(s.get("hubspot", "abc").unwrap(), None);
        // A name that is a prefix of another does not see its ids.
        assert_eq!(s.get("slac", "kabc").unwrap(), None);
    }
}
