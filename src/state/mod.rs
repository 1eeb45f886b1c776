//! State: per-account windowed counters in RocksDB, behind a bounded cache.
//!
//! - [`keys`]: key encoding (prefix byte, length-prefixed ids, big-endian).
//! - [`cf`]: column family names.
//! - [`account`]: the records and their window arithmetic.
//! - [`store`]: RocksDB, the cache, atomic commit of state + offsets.
//! - [`cache`]: the cache's table of records by id, in order of use.
//! - [`prefetch`]: records read ahead of the engine, on the decoder's thread.
//! - `disk_ids`: a filter in front of the message ids kept in RocksDB (past
//!   the memory's cap), so that a new id is not a read.
//! - `probe`: the open-addressing table under the cache's index and the
//!   message ids kept in memory.
//! - [`expiry`]: records dropped for idleness, tombstoned on the changelog.

pub mod account;
pub mod cache;
pub mod cf;
mod disk_ids;
pub(crate) mod expiry;
mod ids;
mod index;
pub mod keys;
pub mod layout;
pub mod manifest;
pub mod members;
pub mod prefetch;
mod probe;
pub(crate) mod spill;
pub mod store;
mod written;

pub use account::{AccountState, MemberState, UserState};
pub use store::{StateError, StateReader, StateWriter, Store};
