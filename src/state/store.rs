//! RocksDB-backed state with a bounded in-memory cache in front.
//!
//! The engine reads and changes records through the cache during a batch;
//! [`Store::commit`] writes every changed record *and* the consumed offsets
//! of the batch in one `WriteBatch`, so state and progress are atomic: after
//! a crash the engine resumes exactly at the offsets that produced the state
//! it finds. After the write, the cache is trimmed back to its capacity
//! (once a thirty-second over it: see [`excess`]), so memory is bounded by
//! `cache_accounts`, not by the number of accounts.
//!
//! Values are `last_seen_ms (i64 BE) | postcard(record)`: the fixed-width
//! prefix lets the compaction filter expire idle records without decoding.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, LruCacheOptions, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::account::{AccountState, MemberState, UserState, WindowSums};
use super::cache::Records;
use super::disk_ids::DiskIds;
use super::expiry::{self, Expired, Found};
use super::ids::IdMap;
use super::layout::Layout;
use super::manifest::{migrate_v1, Manifest};
use super::members::Members;
use super::prefetch::{self, Fetched, Prefetcher, RecentWrites};
use super::spill::{SpillList, Spilled};
use super::{cf, keys};
use crate::config::{CompiledDefinition, StateConfig};

/// State errors. All are internal or environmental (disk, corruption):
/// none is caused by an input event.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt {what} record: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("state directory {path}: {detail}")]
    Dir { path: String, detail: String },
    /// The definition asks for something the state cannot serve.
    #[error("{0}")]
    Incompatible(String),
    /// The thread that makes a batch durable could not start, or panicked.
    #[error("the commit thread {0}")]
    CommitThread(String),
}

/// Schema version of the stored records; a mismatch refuses to start
/// rather than misreading state. Version 1 (before account records listed
/// the ids of their columns) is migrated in place on start
/// ([`Store::prepare_layout`]).
pub const SCHEMA_VERSION: &[u8] = b"3";
const SCHEMA_V1: &[u8] = b"1";
/// Schema 2: every member in a record of its own. Schema 3 reads it as it
/// is (an account record without members inside it is one of those) and
/// marks the state 3 at open, so that an engine of schema 2, which would
/// not see the members inside the records this one writes, refuses it.
const SCHEMA_V2: &[u8] = b"2";

/// Whether this engine reads records of the named schema (a changelog
/// account record names its own).
pub fn schema_readable(schema: &[u8]) -> bool {
    [SCHEMA_VERSION, SCHEMA_V2, SCHEMA_V1].contains(&schema)
}

/// (topic, partition).
pub type TopicPartition = (String, i32);

/// Hashing of dedupe keys (`d` + a 128-bit xxh3 of the message id): they
/// are hashes already, so 8 of their bytes are the hash (SipHash over the
/// whole key cost more than the lookup it served).
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        match bytes.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => self.0 ^= u64::from_le_bytes(b),
            None => {
                for &x in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(x);
                }
            }
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = self.0.rotate_left(17) ^ n as u64;
    }
}

type IdHash = std::hash::BuildHasherDefault<IdHasher>;

/// How many ids ahead the loops that file or expire message ids in memory
/// ask the processor for the next one's place (see [`IdMap::prefetch`]).
const IDS_AHEAD: usize = 8;

/// How many records ahead a commit's loops over cached records ask the
/// processor for the next one's slot (see [`Records::prefetch_slot`]).
const SLOTS_AHEAD: usize = 4;

/// A cached account with the members touched while it was cached.
#[derive(Debug, Default, Clone)]
pub struct AccountEntry {
    pub state: AccountState,
    pub dirty: bool,
    /// (A short list inside the entry for a few members; see
    /// [`super::members`].)
    pub members: Members,
    /// The account traits as a CEL value, derived from `state.traits_json`
    /// on first use (reset when the traits change).
    pub traits_cel: std::sync::OnceLock<cel::Value>,
    /// The [`crate::definitions::Definitions::account_fields_id`] of the
    /// traits `traits_cel` was made with.
    pub traits_for: u64,
    /// Running sums of the account's `events` metrics (derived from
    /// `state`, never stored).
    pub sums: WindowSums,
    /// Input partition of the event that last touched the account (its
    /// changelog partition).
    pub partition: i32,
    /// RocksDB may hold member records of the account: its record was read
    /// from there without its members inside, or its members were written
    /// apart. Not so for an account new to RocksDB (on the long tail, a
    /// quarter of the events), nor for one whose record holds its members
    /// (see [`INLINE_MEMBERS`]): the entry has all its members, and its
    /// users are looked up there only (see [`StateReader::member_into`]).
    members_on_disk: bool,
    /// Its record and changed members, encoded at the end of the event
    /// that changed them (see [`Store::encode_early`]): these records of
    /// [`Store::early`] (first, count), written as they are by the commit.
    early: Option<(u32, u32)>,
    /// Handed out again after its early encoding in the batch being made:
    /// encoded by the commit.
    late: bool,
    /// Listed in the store's touched list for the next commit.
    touched: bool,
    /// The layout `state` was last conformed to.
    generation: u64,
    /// The account's place in the sweep and queue indexes as RocksDB has
    /// it, and as the in-memory [`Schedule`] has it.
    db_mark: Mark,
    mem_mark: Mark,
    /// The partition it is filed under in the in-memory sweep index.
    mem_partition: i32,
}

impl AccountEntry {
    /// Its record or one of its cached members changed since written.
    fn changed(&self) -> bool {
        self.dirty || self.members.values().any(|m| m.dirty)
    }

    /// Whether writing it whole (as an eviction does) writes its record:
    /// it changed, or its members leave it for records of their own.
    fn writes_record(&self, inline_members: usize) -> bool {
        if keeps_members_inside(self, inline_members) {
            self.changed()
        } else {
            self.dirty || !self.members_on_disk
        }
    }

    /// The member records of their own that writing it whole writes: none
    /// while its record keeps its members inside; all of them the first
    /// time they leave it; after that, the changed ones.
    fn members_written(&self, inline_members: usize) -> impl Iterator<Item = (&str, &MemberEntry)> {
        let apart = !keeps_members_inside(self, inline_members);
        let all = !self.members_on_disk;
        self.members.iter().filter(move |(_, m)| apart && (all || m.dirty))
    }

    /// As it is once written whole (see [`Sink::whole_account`]): nothing
    /// changed since, and members past those a record keeps inside on
    /// disk.
    fn written(&mut self, inline_members: usize) {
        if !keeps_members_inside(self, inline_members) {
            self.members_on_disk = true;
        }
        self.dirty = false;
        for m in self.members.values_mut() {
            m.dirty = false;
        }
    }
}

/// An account's place in the schedule indexes: its sweep time (0: none)
/// and its queue priority.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Mark {
    due: i64,
    queue: Option<keys::Priority>,
    /// Listed in the `h` index (announcements or outcomes).
    heard: bool,
}

impl Mark {
    fn of(state: &AccountState) -> Mark {
        Mark {
            due: state.sweep_due_ms,
            queue: state.held.as_ref().map(|h| h.priority()),
            heard: !state.sent.is_empty() || !state.outcomes.is_empty(),
        }
    }
}

/// The disqualification sweep's and the budget queue's indexes, in memory
/// (one entry per scheduled or waiting account: bounded by the qualified
/// accounts, not all), mirrored in RocksDB (meta keys `s…`, `q…`) in the
/// same atomic write as the account records they follow. The account
/// record is the truth; an index key that disagrees with its record (left
/// behind by a changelog restore) is dropped when the index is loaded.
#[derive(Debug, Default)]
pub struct Schedule {
    /// (input partition, due, account): each partition's event time
    /// sweeps its own accounts.
    pub sweep: BTreeMap<(i32, i64, String), ()>,
    /// (priority, account) -> input partition; the first is released first.
    pub queue: BTreeMap<(keys::Priority, String), i32>,
}

#[derive(Debug, Default, Clone)]
pub struct MemberEntry {
    pub state: MemberState,
    /// Known to exist in RocksDB or changed since load.
    pub dirty: bool,
}

#[derive(Debug, Default, Clone)]
pub struct UserEntry {
    pub state: UserState,
    pub dirty: bool,
    /// Input partition of the event that last touched the user.
    pub partition: i32,
    touched: bool,
}

impl UserEntry {
    /// Moves the record's idle-TTL clock to `time_ms` if it is more than
    /// `every_ms` behind (see [`idle_refresh_ms`]): a refresh is a write.
    pub fn keep_alive(&mut self, time_ms: i64, every_ms: i64) {
        if time_ms > self.state.updated_ms + every_ms {
            self.state.updated_ms = time_ms;
            self.dirty = true;
        }
    }
}

/// A state record for the changelog topic: the RocksDB key (its first byte
/// names the kind, see [`keys`]) and value, on the changelog partition equal
/// to the input partition the record belongs to. A partition's records of
/// one commit are followed by its offset record (the marker that makes them
/// complete): `keys::offset(topic, partition)` -> `next offset | watermark`.
///
/// An empty value is a tombstone (sent with no payload): no record of the
/// state has an empty value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRecord<'a> {
    pub partition: i32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A commit's [`ChangeRecord`]s, in order, their keys and values in one
/// buffer: a commit of thousands of small records allocates a few times,
/// not twice a record.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct ChangeRecords {
    bytes: Vec<u8>,
    /// Per record: its partition, and where its key starts, its value
    /// starts and its value ends in `bytes`.
    spans: Vec<(i32, usize, usize, usize)>,
}

impl ChangeRecords {
    /// Room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        ChangeRecords { bytes: Vec::with_capacity(bytes), spans: Vec::with_capacity(records) }
    }

    /// Adds a record (an empty `value`: a tombstone).
    pub fn push(&mut self, partition: i32, key: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let split = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.spans.push((partition, start, split, self.bytes.len()));
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The bytes of every key and value.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    fn at(&self, &(partition, start, split, end): &(i32, usize, usize, usize)) -> ChangeRecord<'_> {
        ChangeRecord { partition, key: &self.bytes[start..split], value: &self.bytes[split..end] }
    }

    /// The records, in the order they were added.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = ChangeRecord<'_>> + ExactSizeIterator + '_ {
        self.spans.iter().map(|s| self.at(s))
    }

    pub fn last(&self) -> Option<ChangeRecord<'_>> {
        self.spans.last().map(|s| self.at(s))
    }

    /// The `i`th record.
    pub fn get(&self, i: usize) -> ChangeRecord<'_> {
        self.at(&self.spans[i])
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }
}

impl std::fmt::Debug for ChangeRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> FromIterator<ChangeRecord<'a>> for ChangeRecords {
    fn from_iter<I: IntoIterator<Item = ChangeRecord<'a>>>(records: I) -> Self {
        let mut all = ChangeRecords::default();
        for r in records {
            all.push(r.partition, r.key, r.value);
        }
        all
    }
}

/// Bytes per id in a dedupe block: the id's 128-bit hash, its event time.
const DEDUPE_BLOCK_ENTRY: usize = 16 + 8;

/// Whether column family `name` holds no record. (In total order: the
/// dedupe column family's hash memtable shows nothing to an iterator in its
/// default prefix mode.)
///
/// Asked of RocksDB's counts first: a column family with no entry in its
/// memtables and no table file is empty. Only otherwise is an iterator
/// made, since one over the dedupe column family's hash memtable (a million
/// buckets) walks and sorts the whole table: about 0.1 s, paid twice by
/// every `replay` before this check.
fn cf_is_empty(db: &DB, name: &str) -> bool {
    let h = db.cf_handle(name).expect("column family");
    let count = |p: &str| db.property_int_value_cf(h, p).ok().flatten();
    let nothing =
        ["rocksdb.num-entries-active-mem-table", "rocksdb.num-entries-imm-mem-tables", "rocksdb.total-sst-files-size"]
            .iter()
            .all(|p| count(p) == Some(0));
    if nothing {
        return true;
    }
    let mut ro = ReadOptions::default();
    ro.set_total_order_seek(true);
    db.iterator_cf_opt(h, ro, IteratorMode::Start).next().is_none()
}

/// A commit encoded but not written yet: the RocksDB batch and, when the
/// changelog is on, the same records for the changelog topic.
pub struct Prepared {
    batch: WriteBatch,
    pub changelog: ChangeRecords,
    stats: CommitStats,
    /// Records a write-back store evicted, encoded into `batch` by
    /// [`StateWriter::write`] (on the commit thread).
    spilled: Option<Evicted>,
    /// The consumed offsets it commits: (topic, partition, next offset).
    pub offsets: Vec<(String, i32, i64)>,
    /// Oldest Kafka timestamp among the batch's records (set by the engine,
    /// for the end-to-end latency metric).
    pub oldest_ts: Option<i64>,
}

/// What a write-back commit evicted, to be encoded into its batch (see
/// [`super::spill`]).
struct Evicted {
    accounts: Arc<SpillList<AccountEntry>>,
    users: Arc<SpillList<UserEntry>>,
    inline_members: usize,
}

impl Evicted {
    /// Their records into `batch`, in the order evicted.
    fn encode(
        &self,
        sink: &mut Sink<'_>,
        batch: &mut WriteBatch,
        (acf, mcf, ucf): (&rocksdb::ColumnFamily, &rocksdb::ColumnFamily, &rocksdb::ColumnFamily),
    ) {
        for (id, e) in self.accounts.in_order() {
            sink.whole_account(batch, (acf, mcf), id, e);
        }
        for (id, u) in self.users.in_order() {
            sink.whole_user(batch, ucf, id, u);
        }
    }
}

/// Writes prepared commits; cheap to clone and usable from another thread,
/// so that a batch can be made durable while the next one is applied (see
/// [`Store::written`] for what the cache must do in between).
#[derive(Clone)]
pub struct StateWriter {
    db: Arc<DB>,
    sync: bool,
    /// Whether writes go through the write-ahead log (not for a state
    /// thrown away after use: see [`Store::open_ephemeral`]).
    wal: bool,
}

impl StateWriter {
    /// Writes a prepared batch, with the changelog positions (next offset
    /// per changelog partition) its records reached, in one atomic write.
    pub fn write(&self, prepared: Prepared, changelog_next: &[(i32, i64)]) -> Result<CommitStats, StateError> {
        let Prepared { mut batch, mut stats, spilled, .. } = prepared;
        if let Some(evicted) = spilled {
            let cfs = (
                self.db.cf_handle(cf::ACCOUNTS).expect("cf"),
                self.db.cf_handle(cf::MEMBERS).expect("cf"),
                self.db.cf_handle(cf::USERS).expect("cf"),
            );
            let (mut buf, mut key) = (Vec::with_capacity(4096), Vec::with_capacity(256));
            let mut sink = Sink {
                changelog: None,
                buf: &mut buf,
                key: &mut key,
                stats: &mut stats,
                inline_members: evicted.inline_members,
            };
            evicted.encode(&mut sink, &mut batch, cfs);
        }
        let meta = self.db.cf_handle(cf::META).expect("cf");
        for (p, next) in changelog_next {
            batch.put_cf(meta, keys::changelog_position(*p), next.to_be_bytes());
        }
        self.db.write_opt(batch, &write_options(self.sync, self.wal))?;
        Ok(stats)
    }
}

/// How a batch is written: synced when `sync`; through the write-ahead
/// log unless the state is thrown away after use (`!wal`: a `replay` into
/// a temporary state, which no crash can leave behind to be read; the log
/// was a second copy of every record written, hundreds of MiB on a long
/// history).
fn write_options(sync: bool, wal: bool) -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(sync && wal);
    wo.disable_wal(!wal);
    wo
}

/// Read-only access to the database, shared with the HTTP server.
#[derive(Clone)]
pub struct StateReader {
    db: Arc<DB>,
    /// Whether member records may be in RocksDB (false in a write-back
    /// store that has written none yet: [`StateReader::member_into`] then
    /// skips the lookup).
    members_on_disk: bool,
}

impl StateReader {
    /// Opens a state directory read-only, beside a running engine (RocksDB
    /// takes no lock for this): for `validate --state-dir` and `inspect`.
    pub fn open_read_only(dir: &std::path::Path) -> Result<StateReader, StateError> {
        let opts = Options::default();
        let db = DB::open_cf_for_read_only(&opts, dir, cf::ALL, false)?;
        Ok(StateReader { db: Arc::new(db), members_on_disk: true })
    }

    /// Whether the directory's records still need the migration from
    /// schema 1 (which the engine does on start).
    pub fn needs_migration(&self) -> Result<bool, StateError> {
        Ok(self.schema()?.as_bytes() == SCHEMA_V1)
    }

    pub fn account(&self, id: &str) -> Result<Option<AccountState>, StateError> {
        Ok(self.account_record(id)?.map(|(state, _)| state))
    }

    /// The account's record, with its members when they are kept inside it
    /// (see [`INLINE_MEMBERS`]; `None`: each in a record of its own).
    pub fn account_record(&self, id: &str) -> Result<Option<(AccountState, Option<InlineMembers>)>, StateError> {
        let cf = self.db.cf_handle(cf::ACCOUNTS).expect("accounts column family");
        match self.db.get_pinned_cf(cf, keys::account(id))? {
            None => Ok(None),
            Some(v) => decode_account_record(&v).map(Some),
        }
    }

    pub fn user(&self, id: &str) -> Result<Option<UserState>, StateError> {
        get(&self.db, cf::USERS, &keys::user(id), "user")
    }

    /// Every member of an account in RocksDB: inside its record, or in
    /// records of their own.
    pub fn members(&self, account: &str) -> Result<Vec<(String, MemberState)>, StateError> {
        if let Some((_, Some(inline))) = self.account_record(account)? {
            return Ok(inline);
        }
        let prefix = keys::member_prefix(account);
        let cf = self.db.cf_handle(cf::MEMBERS).expect("members column family");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some(user) = keys::member_user(&k, &prefix) {
                out.push((user.to_string(), decode_value(&v, "member")?));
            }
        }
        Ok(out)
    }

    /// The member (account, user) in RocksDB: in a record of its own, or
    /// inside its account's.
    pub fn member(&self, account: &str, user: &str) -> Result<Option<MemberState>, StateError> {
        if let Some(m) = self.member_record(account, user)? {
            return Ok(Some(m));
        }
        Ok(match self.account_record(account)? {
            Some((_, Some(inline))) => inline.into_iter().find(|(u, _)| u == user).map(|(_, m)| m),
            _ => None,
        })
    }

    /// The record of its own of the member (account, user), if it has one.
    pub fn member_record(&self, account: &str, user: &str) -> Result<Option<MemberState>, StateError> {
        get(&self.db, cf::MEMBERS, &keys::member_lookup(account, user), "member")
    }

    /// The member record of (account, user), loaded into the account's
    /// cache entry if it is not there yet.
    pub fn member_into<'e>(
        &self,
        entry: &'e mut AccountEntry,
        account: &str,
        user: &str,
    ) -> Result<&'e mut MemberEntry, StateError> {
        let on_disk = self.members_on_disk && entry.members_on_disk;
        entry.members.try_get_or_insert_with(user, || {
            // A member record is written with its account's record or
            // after it, and never outlives it (its clock is never ahead
            // of the account's, and a restore's tombstone of an account
            // takes its members): an account with no record in RocksDB
            // has no members there. (Unless both are idle past the TTL
            // and compaction has dropped the account's first: then the
            // member's record is as good as gone, and is not read.)
            let state: Option<MemberState> =
                if on_disk { get(&self.db, cf::MEMBERS, &keys::member_lookup(account, user), "member")? } else { None };
            Ok(MemberEntry { state: state.unwrap_or_default(), dirty: false })
        })
    }

    /// The input partition an account is filed under in the sweep index.
    fn sweep_partition(&self, due: i64, id: &str) -> Result<i32, StateError> {
        let meta = self.db.cf_handle(cf::META).expect("meta column family");
        Ok(self
            .db
            .get_pinned_cf(meta, keys::sweep(due, id))?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok().map(i32::from_be_bytes))
            .unwrap_or(0))
    }

    /// The consumed offset (next to read) stored for a partition.
    pub fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StateError> {
        let cf = self.db.cf_handle(cf::META).expect("meta column family");
        Ok(self
            .db
            .get_pinned_cf(cf, keys::offset(topic, partition))?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes)))
    }

    /// The next changelog offset this state has applied or written for a
    /// changelog partition (`None`: nothing yet).
    pub fn changelog_position(&self, partition: i32) -> Result<Option<i64>, StateError> {
        let cf = self.db.cf_handle(cf::META).expect("meta column family");
        Ok(self
            .db
            .get_pinned_cf(cf, keys::changelog_position(partition))?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes)))
    }

    /// Every stored (topic, partition) -> next offset.
    pub fn offsets(&self) -> Result<Vec<(TopicPartition, i64)>, StateError> {
        let cf = self.db.cf_handle(cf::META).expect("meta column family");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&[keys::OFFSET], rocksdb::Direction::Forward)) {
            let (k, v) = item?;
            if k.first() != Some(&keys::OFFSET) {
                break;
            }
            if let (Some(tp), Ok(b)) = (keys::parse_offset(&k), <[u8; 8]>::try_from(v.as_ref())) {
                out.push((tp, i64::from_be_bytes(b)));
            }
        }
        Ok(out)
    }

    /// What the state holds and since when (`None`: nothing recorded yet).
    pub fn manifest(&self) -> Result<Option<Manifest>, StateError> {
        let cf = self.db.cf_handle(cf::META).expect("meta column family");
        match self.db.get_pinned_cf(cf, keys::meta("manifest"))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StateError::Corrupt { what: "manifest", detail: e.to_string() }),
        }
    }

    /// The state's schema version as stored.
    pub fn schema(&self) -> Result<String, StateError> {
        let cf = self.db.cf_handle(cf::META).expect("meta column family");
        Ok(self
            .db
            .get_pinned_cf(cf, keys::meta("schema"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default())
    }

    /// The engine's event-time watermark as last committed.
    pub fn watermark_ms(&self) -> Result<i64, StateError> {
        let cf = self.db.cf_handle(cf::META).expect("meta column family");
        Ok(self
            .db
            .get_pinned_cf(cf, keys::meta("watermark"))?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Approximate number of records and bytes on disk, for metrics.
    pub fn size_estimate(&self) -> (u64, u64) {
        let mut keys_n = 0;
        let mut bytes = 0;
        for name in [cf::ACCOUNTS, cf::MEMBERS, cf::USERS] {
            if let Some(h) = self.db.cf_handle(name) {
                keys_n += self.db.property_int_value_cf(h, "rocksdb.estimate-num-keys").ok().flatten().unwrap_or(0);
                bytes += self.db.property_int_value_cf(h, "rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
                bytes += self.db.property_int_value_cf(h, "rocksdb.size-all-mem-tables").ok().flatten().unwrap_or(0);
            }
        }
        (keys_n, bytes)
    }
}

/// The engine's state: RocksDB plus the write-back cache.
pub struct Store {
    reader: StateReader,
    accounts: Records<AccountEntry>,
    users: Records<UserEntry>,
    capacity: usize,
    /// Users kept cached (`state.cache_users`).
    users_capacity: usize,
    sync_writes: bool,
    /// See [`idle_refresh_ms`].
    idle_refresh_ms: i64,
    /// `state.idle_ttl_days` in milliseconds.
    idle_ttl_ms: i64,
    /// What the idle-TTL compaction filter dropped, for the changelog's
    /// tombstones (see [`super::expiry`]).
    expired: Arc<Expired>,
    /// The input partitions this instance owns (`run`; `None`: not told,
    /// as in `replay`): where the tombstones of records without a
    /// partition of their own go.
    owned: Option<Vec<i32>>,
    /// [`INLINE_MEMBERS`] (tests of members in records of their own set 0).
    inline_members: usize,
    /// Event-time watermark shared with the compaction filter.
    watermark: Arc<AtomicI64>,
    /// Message ids applied since the last commit (key -> event time, partition).
    pending_ids: HashMap<[u8; 17], (i64, i32), IdHash>,
    /// Ids of the prepared batch not yet known to be written (while a batch
    /// is written on another thread, the next one must still see them),
    /// with their event times (and partitions: the map was `pending_ids`).
    inflight_ids: HashMap<[u8; 17], (i64, i32), IdHash>,
    /// The ids in flight go to `memory_ids` once written (their batch
    /// carries them as blocks, not one key each).
    inflight_to_memory: bool,
    /// Ids of the cache entries handed out since the last commit (the
    /// only ones that can be dirty).
    /// (A write-back store lists only crowded accounts, see [`CROWDED`].)
    /// (Ids inline when short, as in the cache: a first touch in a batch
    /// allocates nothing.)
    touched_accounts: Vec<(compact_str::CompactString, u32)>,
    touched_users: Vec<(compact_str::CompactString, u32)>,
    /// Records were handed out since the last prepared commit.
    changed: bool,
    /// Input partition of the record being applied.
    partition: i32,
    /// Build changelog records at commit.
    changelog: bool,
    /// The size of the previous commit's write batch (bytes) and changelog
    /// (records, bytes): the next one is allocated at that size at once,
    /// rather than grown (and copied, and its fresh pages zeroed) step by
    /// step.
    last_commit_size: (usize, usize, usize),
    /// Shared with the dedupe compaction filter.
    dedupe_window: Arc<AtomicI64>,
    /// What account records are conformed to when they are handed out.
    layout: Option<Arc<Layout>>,
    /// The directory holds schema-1 records, to migrate before use.
    legacy_v1: bool,
    dir: String,
    /// The sweep and queue indexes.
    schedule: Schedule,
    /// Meta records to write with the next commit (name -> value).
    meta_pending: BTreeMap<String, Vec<u8>>,
    /// Thrown away after use: no flush at the end.
    ephemeral: bool,
    /// Accounts written in the batch in flight with many members cached:
    /// their member cache is dropped once the batch is durable.
    crowded: Vec<String>,
    /// Records of accounts encoded early in the batch being made (see
    /// [`Store::encode_early`]), and the slot of the account handed out
    /// last.
    early: ChangeRecords,
    early_buf: (Vec<u8>, Vec<u8>),
    /// A written batch's changelog records, kept for the next prepare's
    /// (see [`Store::recycle`]).
    spare_changelog: Option<ChangeRecords>,
    last_slot: u32,
    /// Write-back (see [`Store::set_write_back`]): changed records stay in
    /// the cache and are written only when evicted.
    write_back: bool,
    /// Write-back: entries evicted into the batch being written, readable
    /// here until it is durable, and encoded by the commit thread (see
    /// [`super::spill`]). Their flags are as before the write: an entry
    /// taken back is [`written`](AccountEntry::written) then.
    spilled_accounts: Spilled<AccountEntry>,
    spilled_users: Spilled<UserEntry>,
    /// Whether RocksDB may hold records of each kind. A write-back store
    /// opened empty has none until its first eviction: looking up a record
    /// not in the cache then needs no read.
    accounts_on_disk: bool,
    users_on_disk: bool,
    /// Message ids of the dedupe window kept in memory (id -> event time),
    /// with the ids filed by the hour of their event time for expiry. What
    /// makes them durable is a block per commit and input partition (the
    /// value of its `keys::DEDUPE_BLOCK_INDEX` entry, written with the
    /// batch's state and offsets), from which they are loaded again when the
    /// store opens (or drops its cache). A write-back store keeps them in
    /// memory only. Ids past `memory_ids_cap` go to RocksDB one key each.
    /// (Keyed by the id's 16-byte hash alone: 24 bytes an entry.)
    memory_ids: IdMap,
    memory_ids_by_hour: BTreeMap<i64, Vec<[u8; 16]>>,
    /// The ids of a written batch on their way into `memory_ids` (the
    /// buffer kept from one commit to the next).
    filing: Vec<([u8; 16], i64)>,
    /// Per input partition, the buffer of a commit's dedupe block (see
    /// `prepare`), kept for the next commit.
    id_blocks: BTreeMap<i32, (i64, Vec<u8>)>,
    memory_ids_cap: usize,
    /// `memory_ids` holds what the blocks in RocksDB hold (it is loaded on
    /// the first lookup after opening, a restore or a dropped cache).
    ids_loaded: bool,
    /// Whether RocksDB may hold message ids one key each (the dedupe column
    /// family): ids past the memory's cap, ids restored from an older
    /// changelog, or a state written by an earlier version.
    ids_on_disk: bool,
    /// While `ids_on_disk`: which ids the dedupe column family may hold
    /// (see [`DiskIds`]), so that a new id is not a RocksDB read. `None`
    /// until built by a scan of the column family (after opening a state
    /// that holds some, or restoring some from a changelog); every id
    /// written to it is added.
    disk_ids: Option<DiskIds>,
    /// Lookups of message ids in the dedupe column family, for the tests.
    disk_id_reads: u64,
    /// Per input partition, the oldest newest-id time of its dedupe blocks
    /// in RocksDB (`i64::MAX`: none), as the last look at the index left
    /// it and the blocks written since lowered it: while that time is in
    /// the window, no block has left it and the index is not read. Not
    /// known (absent) until the index is first read, and forgotten when
    /// blocks are written otherwise (a restore) or the cache is dropped.
    oldest_block: HashMap<i32, i64>,
    /// Reading ahead of the engine (see [`prefetch`]): what is shared with
    /// the readers, what the last commits wrote, and the records read ahead
    /// for the event being applied.
    prefetch: Arc<prefetch::Shared>,
    writes: RecentWrites,
    fetched: Fetched,
}

/// By default a store keeps at most this many message ids in memory (at
/// most about 70 bytes each with their table and expiry lists, so about
/// 70 MiB); more go to RocksDB one key each (`input.dedupe_memory_ids`).
const MEMORY_IDS: usize = 1_000_000;

/// An account with more members cached than this is crowded: its changed
/// members are written with each commit (also by a write-back store), and
/// dropped from the cache once durable.
const CROWDED: usize = 256;

/// Accounts with at most this many cached members are encoded early (see
/// [`Store::encode_early`]).
const EARLY_MEMBERS: usize = 4;

/// An account with at most this many members keeps them inside its own
/// record, not in records of their own: one record written a batch where
/// there were two (on a long tail of small accounts, nearly every event
/// changed an account and one of its members), and one read when the
/// account comes back into the cache. Once it has more, its members move
/// to records of their own, for good (an account never goes back: it need
/// not know which of its members are on disk). The members inside a record
/// are all of them, in user order, and expire with it.
pub const INLINE_MEMBERS: usize = EARLY_MEMBERS;

/// The members kept inside an account's record: (user, member), by user.
pub type InlineMembers = Vec<(String, MemberState)>;

/// What follows the account in a record with its members inside: then
/// the members (postcard, a sequence of (user, member)).
const INLINE_MARK: u8 = 1;

/// How often, in event time, a user's (or a visitor's, or an alias link's)
/// idle-TTL clock is moved forward by the events that use the record: a
/// sixteenth of the TTL, 1 to 30 days (25 days at the default 400). Each
/// refresh is a write (and a changelog record), and in a long tail of
/// small accounts most events found a user whose clock was over a day old:
/// 0.76 user writes an event refreshing daily, 0.19 at this interval. The
/// users' column family keeps records this much longer than the TTL, so
/// that no record is dropped before `idle_ttl_days` without use.
pub fn idle_refresh_ms(idle_ttl_days: u32) -> i64 {
    (i64::from(idle_ttl_days) * 86_400_000 / 16).clamp(86_400_000, 30 * 86_400_000)
}

impl Store {
    /// Opens (or creates) the state directory.
    pub fn open(cfg: &StateConfig) -> Result<Store, StateError> {
        Store::open_with(cfg, false)
    }

    /// A state that is thrown away after use (a `replay` or `backtest`
    /// into a temporary directory): nothing is flushed at the end, and
    /// nothing is written to the write-ahead log (see [`write_options`]).
    /// Everything else is as [`Store::open`]: the same code path, the same
    /// results.
    pub fn open_ephemeral(cfg: &StateConfig) -> Result<Store, StateError> {
        Store::open_with(cfg, true)
    }

    fn open_with(cfg: &StateConfig, ephemeral: bool) -> Result<Store, StateError> {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| StateError::Dir { path: cfg.dir.display().to_string(), detail: e.to_string() })?;
        let watermark = Arc::new(AtomicI64::new(0));
        let dedupe_window = Arc::new(AtomicI64::new(0));
        // Few shards: a block larger than its shard is never cached, and
        // with the default 64 shards of a 128 MiB cache (2 MiB each) the
        // filter of every large SST was read from disk and checksummed on
        // nearly every lookup once the state outgrew the memtables (a
        // 10x slowdown at 500k accounts). There is one writer thread, so
        // little contention to spread.
        let mut lru = LruCacheOptions::default();
        lru.set_capacity(cfg.block_cache_bytes.max(8 << 20));
        lru.set_num_shard_bits(2);
        let cache = Cache::new_lru_cache_opts(&lru);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        // RocksDB's flushes and compactions at the lowest CPU priority
        // (`nice` 19 for its background threads; the default environment,
        // shared by every state the process opens): on a machine whose
        // cores are all busy they take the time the engine's threads leave,
        // instead of taking the engine thread's core from it, which then
        // waited in the run queue as long as a third of its own CPU time
        // (`run` of the long tail on 2 cores). Where a core is free, nothing
        // changes. A flush that falls behind stalls the commit thread's
        // write, which idles the engine's threads, which lets the flush
        // run: the work is the same, only who waits is chosen.
        let mut env = rocksdb::Env::new()?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        db_opts.set_env(&env);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(3);
        // A column family that rarely fills its memtable (the offsets in
        // `meta`) would otherwise keep every write-ahead log alive: the log
        // grew to 800 MiB in a long run, and recovery after a crash replays
        // it (about 5 ms per MiB). Past this size the oldest column
        // families are flushed and the log files freed.
        db_opts.set_max_total_wal_size(128 << 20);
        // The hash memtable of the dedupe ids cannot take concurrent
        // writers (there is only one writer anyway).
        db_opts.set_allow_concurrent_memtable_write(false);
        // A state thrown away after use is not flushed when closed (the
        // option has no setter of its own in the bindings).
        let db_opts =
            if ephemeral { db_opts.get_options_from_string("avoid_flush_during_shutdown=true")? } else { db_opts };
        let ttl_ms = i64::from(cfg.idle_ttl_days) * 86_400_000;
        let refresh_ms = idle_refresh_ms(cfg.idle_ttl_days);
        let expired = Arc::new(Expired::default());
        let cfs = cf::ALL.iter().map(|name| {
            let mut o = Options::default();
            let mut t = BlockBasedOptions::default();
            if ephemeral {
                // No block cache for a state thrown away after one replay:
                // its records are read back at random, once each, after the
                // record cache evicted them (the memtables answer those
                // evicted lately), so a data block was seldom found cached,
                // and putting each one read into the LRU cost more than the
                // hits saved. A lookup reads its block from the file (the
                // OS's page cache) and decompresses it. `h10m`: 7 % faster,
                // 10 % less CPU and 125 MiB less memory (BENCHMARKS.md,
                // eighth session).
                t.disable_cache();
            } else {
                t.set_block_cache(&cache);
            }
            t.set_bloom_filter(10.0, false);
            if ephemeral {
                // A state thrown away after one replay: each table's filter
                // and index held whole by its reader, outside the block
                // cache (the filter's 10 bits a record and the index, not
                // capped: 25 MiB more at the peak on `h10m`), so that a
                // lookup in a table asks the cache only for
                // the data block. Through the cache each also asked for a
                // filter and an index partition, and the cache's lookups
                // were 15 % of `h10m`'s reader thread; `h10m` 9-15 % faster
                // (BENCHMARKS.md, seventh session).
                t.set_cache_index_and_filter_blocks(false);
            } else {
                // Partitioned filters and index (small blocks, loaded on
                // demand, under a pinned top level): whole-file filters of
                // several MiB are not cached well, and not needed whole;
                // the state's memory stays within the block cache however
                // large the state grows.
                t.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
                t.set_partition_filters(true);
                t.set_metadata_block_size(4096);
                t.set_cache_index_and_filter_blocks(true);
                t.set_pin_top_level_index_and_filter(true);
                t.set_pin_l0_filter_and_index_blocks_in_cache(true);
            }
            o.set_block_based_table_factory(&t);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            o.set_write_buffer_size(32 << 20);
            if *name != cf::DEDUPE {
                // A bloom filter over the memtable's keys: most lookups of
                // a long tail of small accounts are for records that do not
                // exist yet (a new account, member or user), and each
                // searched the whole skiplist to find nothing.
                o.set_memtable_prefix_bloom_ratio(0.05);
                o.set_memtable_whole_key_filtering(true);
            }
            if *name == cf::USERS || *name == cf::ACCOUNTS {
                // Looked up by the whole key (on the long tail, about once
                // an event each: accounts and users outnumber the cache),
                // and iterated only in total order (whether the family is
                // empty; a migration, see `manifest::migrate_v1`): a hash
                // table memtable (the "prefix" is the whole key, so a bucket
                // holds one record's versions) finds a record written since
                // the last flush in constant time, where the skiplist's
                // search of its height in cache misses was a quarter of
                // `replay`'s reading ahead. The sorted order a flush needs
                // is built by the flush, in the background.
                o.set_prefix_extractor(rocksdb::SliceTransform::create_noop());
                o.set_memtable_factory(rocksdb::MemtableFactory::HashLinkList { bucket_count: 1 << 19 });
            }
            if *name == cf::DEDUPE {
                // One random 17-byte key per event, written and looked up
                // (nearly always a miss) but never iterated: a hash table
                // memtable (the "prefix" is the whole key, so a bucket holds
                // about one id) does both in constant time, where a skiplist
                // spent a search of its height in cache misses on each. The
                // sorted order a flush needs is built by the flush, in the
                // background.
                o.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(keys::DEDUPE_KEY_LEN));
                o.set_memtable_factory(rocksdb::MemtableFactory::HashLinkList { bucket_count: 1 << 20 });
                // Nearly every lookup is of an id never seen: a bloom
                // filter answers it without walking a bucket.
                o.set_memtable_prefix_bloom_ratio(0.05);
                // Ids expire once older (in event time) than the window.
                let wm = watermark.clone();
                let win = dedupe_window.clone();
                o.set_compaction_filter("pqa-dedupe-window", move |_level: u32, _key: &[u8], value: &[u8]| {
                    let w = wm.load(Ordering::Relaxed);
                    let window = win.load(Ordering::Relaxed);
                    match <[u8; 8]>::try_from(value) {
                        Ok(b) if w > 0 && i64::from_be_bytes(b).saturating_add(window) < w => Decision::Remove,
                        _ => Decision::Keep,
                    }
                });
            } else if *name != cf::META {
                let wm = watermark.clone();
                let ttl_ms = idle_ttl_of(name, ttl_ms, refresh_ms);
                let expired = expired.clone();
                let accounts = *name == cf::ACCOUNTS;
                o.set_compaction_filter("pqa-idle-ttl", move |_level: u32, key: &[u8], value: &[u8]| {
                    if !idle_past(value, ttl_ms, wm.load(Ordering::Relaxed)) {
                        return Decision::Keep;
                    }
                    // Noted for the changelog's tombstone (an account names
                    // its partition; see `expiry`).
                    if expired.collecting() {
                        let partition =
                            if accounts { decode_account_value(value).ok().and_then(|a| a.partition) } else { None };
                        expired.note(key, partition);
                    }
                    Decision::Remove
                });
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&db_opts, &cfg.dir, cfs)?;
        let meta = db.cf_handle(cf::META).expect("meta column family");
        let mut legacy_v1 = false;
        match db.get_cf(meta, keys::meta("schema"))? {
            None => db.put_cf(meta, keys::meta("schema"), SCHEMA_VERSION)?,
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v == SCHEMA_V2 => db.put_cf(meta, keys::meta("schema"), SCHEMA_VERSION)?,
            Some(v) if v == SCHEMA_V1 => legacy_v1 = true,
            Some(v) => {
                return Err(StateError::Dir {
                    path: cfg.dir.display().to_string(),
                    detail: format!(
                        "state schema {} is not the {} this version reads; use a new state dir",
                        String::from_utf8_lossy(&v),
                        String::from_utf8_lossy(SCHEMA_VERSION)
                    ),
                })
            }
        }
        let ids_on_disk = !cf_is_empty(&db, cf::DEDUPE);
        let reader = StateReader { db: Arc::new(db), members_on_disk: true };
        watermark.store(reader.watermark_ms()?, Ordering::Relaxed);
        // The cache holds its capacity, and what a batch adds to it until
        // the commit.
        let room = |capacity: usize| capacity.saturating_add(capacity / 8).min(1 << 22);
        let users_capacity = cfg.users_capacity(ephemeral);
        Ok(Store {
            reader,
            accounts: Records::with_capacity(room(cfg.cache_accounts)),
            users: Records::with_capacity(room(users_capacity)),
            capacity: cfg.cache_accounts,
            users_capacity,
            sync_writes: cfg.sync_writes,
            watermark,
            pending_ids: HashMap::default(),
            inflight_ids: HashMap::default(),
            inflight_to_memory: false,
            dedupe_window,
            touched_accounts: Vec::new(),
            touched_users: Vec::new(),
            changed: false,
            partition: 0,
            changelog: false,
            last_commit_size: (0, 0, 0),
            layout: None,
            legacy_v1,
            dir: cfg.dir.display().to_string(),
            schedule: Schedule::default(),
            meta_pending: BTreeMap::new(),
            ephemeral,
            idle_refresh_ms: refresh_ms,
            idle_ttl_ms: ttl_ms,
            expired,
            owned: None,
            inline_members: INLINE_MEMBERS,
            crowded: Vec::new(),
            early: ChangeRecords::default(),
            early_buf: (Vec::with_capacity(4096), Vec::with_capacity(256)),
            spare_changelog: None,
            last_slot: u32::MAX,
            write_back: false,
            spilled_accounts: Spilled::default(),
            spilled_users: Spilled::default(),
            accounts_on_disk: true,
            users_on_disk: true,
            memory_ids: IdMap::default(),
            memory_ids_by_hour: BTreeMap::new(),
            id_blocks: BTreeMap::new(),
            filing: Vec::new(),
            memory_ids_cap: MEMORY_IDS,
            ids_loaded: false,
            ids_on_disk,
            // (An empty column family's filter is empty.)
            disk_ids: (!ids_on_disk).then(|| DiskIds::new(MEMORY_IDS)),
            disk_id_reads: 0,
            oldest_block: HashMap::new(),
            prefetch: Arc::new(prefetch::Shared {
                accounts_on_disk: true.into(),
                users_on_disk: true.into(),
                members_on_disk: true.into(),
                ..Default::default()
            }),
            writes: RecentWrites::default(),
            fetched: Fetched::default(),
        })
        .and_then(|mut s| {
            s.load_schedule()?;
            Ok(s)
        })
    }

    /// The sweep and queue indexes.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Takes an account out of the in-memory indexes without touching
    /// RocksDB (its partition belongs to another instance now; loading the
    /// indexes again brings it back).
    pub fn unschedule_in_memory(&mut self, account: &str) {
        let acct = account.to_string();
        self.schedule.sweep.retain(|(_, _, a), _| *a != acct);
        self.schedule.queue.retain(|(_, a), _| *a != acct);
        if let Some(e) = self.accounts.peek_mut(account) {
            e.mem_mark = Mark::default();
        }
    }

    /// Files a message id applied at event time `t` in memory (again, if
    /// it was seen long ago: its old hour's expiry keeps it, see `prepare`).
    fn remember_id(&mut self, k: [u8; 16], t: i64) {
        self.memory_ids.insert(k, t);
        self.memory_ids_by_hour.entry(t.div_euclid(3_600_000)).or_default().push(k);
    }

    /// Loads the message ids of the dedupe window from the blocks that made
    /// them durable (see `memory_ids`). Those past the cap are written one
    /// key each, so that every id of the window is in memory or in the
    /// dedupe column family.
    fn load_ids(&mut self) -> Result<(), StateError> {
        self.ids_loaded = true;
        self.memory_ids.clear();
        self.memory_ids_by_hour.clear();
        let window = self.dedupe_window.load(Ordering::Relaxed);
        let watermark = self.watermark.load(Ordering::Relaxed);
        let db = self.reader.db.clone();
        let meta = db.cf_handle(cf::META).expect("cf");
        let dcf = db.cf_handle(cf::DEDUPE).expect("cf");
        let mut past_cap = WriteBatch::default();
        let prefix = [keys::DEDUPE_BLOCK_INDEX];
        for item in db.iterator_cf(meta, IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            for id in v.chunks_exact(DEDUPE_BLOCK_ENTRY) {
                let t = i64::from_be_bytes(id[16..].try_into().expect("8 bytes"));
                if t.saturating_add(window) < watermark {
                    continue;
                }
                let hash: [u8; 16] = id[..16].try_into().expect("16 bytes");
                if self.memory_ids.len() < self.memory_ids_cap {
                    self.remember_id(hash, t);
                } else {
                    let mut key = [0u8; keys::DEDUPE_KEY_LEN];
                    key[0] = keys::DEDUPE;
                    key[1..].copy_from_slice(&hash);
                    past_cap.put_cf(dcf, key, t.to_be_bytes());
                    if let Some(d) = &mut self.disk_ids {
                        d.insert(&hash, t, window, watermark);
                    }
                }
            }
        }
        if !past_cap.is_empty() {
            db.write_opt(past_cap, &write_options(self.sync_writes, !self.ephemeral))?;
            self.ids_on_disk = true;
        }
        Ok(())
    }

    /// Reads the indexes from RocksDB, dropping keys that disagree with
    /// their account records.
    pub fn load_schedule(&mut self) -> Result<(), StateError> {
        let db = &self.reader.db;
        let meta = db.cf_handle(cf::META).expect("meta column family");
        let mut schedule = Schedule::default();
        let mut stale = Vec::new();
        for prefix in [keys::SWEEP, keys::QUEUE] {
            for item in db.iterator_cf(meta, IteratorMode::From(&[prefix], rocksdb::Direction::Forward)) {
                let (k, v) = item?;
                if k.first() != Some(&prefix) {
                    break;
                }
                let partition = <[u8; 4]>::try_from(v.as_ref()).map(i32::from_be_bytes).unwrap_or(0);
                if prefix == keys::SWEEP {
                    let Some((due, account)) = keys::parse_sweep(&k) else { continue };
                    match self.reader.account(&account)? {
                        Some(a) if a.sweep_due_ms == due => {
                            schedule.sweep.insert((partition, due, account), ());
                        }
                        _ => stale.push(k.to_vec()),
                    }
                } else {
                    let Some((p, account)) = keys::parse_queue(&k) else { continue };
                    match self.reader.account(&account)? {
                        Some(a) if a.held.as_ref().map(|h| h.priority()) == Some(p) => {
                            schedule.queue.insert((p, account), partition);
                        }
                        _ => stale.push(k.to_vec()),
                    }
                }
            }
        }
        if !stale.is_empty() {
            let mut batch = WriteBatch::default();
            for k in &stale {
                batch.delete_cf(meta, k);
            }
            db.write(batch)?;
        }
        self.schedule = schedule;
        let cached: Vec<(String, i64)> = self
            .accounts
            .iter()
            .filter(|(_, e)| e.db_mark.due != 0)
            .map(|(id, e)| (id.to_string(), e.db_mark.due))
            .collect();
        for (_, e) in self.accounts.iter_mut() {
            e.mem_mark = e.db_mark;
        }
        for (id, due) in cached {
            let p = self.reader.sweep_partition(due, &id)?;
            if let Some(e) = self.accounts.peek_mut(&id) {
                e.mem_partition = p;
            }
        }
        Ok(())
    }

    /// Puts the account (after a change of its `sweep_due_ms` or `held`)
    /// in its place in the in-memory indexes, under the input partition
    /// set last; RocksDB follows at the next commit.
    pub fn reindex(&mut self, id: &str) {
        let partition = self.partition;
        let Some(e) = self.accounts.peek_mut(id) else { return };
        let now = Mark::of(&e.state);
        let was = e.mem_mark;
        if now == was {
            return;
        }
        if was.due != 0 {
            self.schedule.sweep.remove(&(e.mem_partition, was.due, id.to_string()));
        }
        if let Some(p) = was.queue {
            self.schedule.queue.remove(&(p, id.to_string()));
        }
        if now.due != 0 {
            self.schedule.sweep.insert((partition, now.due, id.to_string()), ());
        }
        if let Some(p) = now.queue {
            self.schedule.queue.insert((p, id.to_string()), partition);
        }
        e.mem_mark = now;
        e.mem_partition = partition;
    }

    /// Takes one entry out of the in-memory sweep index (one that its
    /// account's record does not back; see `Engine::advance`). RocksDB's
    /// copy of the index is reconciled with the records when loaded.
    pub fn drop_sweep_entry(&mut self, partition: i32, due: i64, id: &str) {
        self.schedule.sweep.remove(&(partition, due, id.to_string()));
    }

    /// Puts an entry into the in-memory sweep index, whatever the
    /// account's record says (tests of what a broken index does).
    #[cfg(test)]
    pub fn schedule_sweep_entry_for_test(&mut self, partition: i32, due: i64, id: &str) {
        self.schedule.sweep.insert((partition, due, id.to_string()), ());
    }

    /// The accounts listed in the `h` index (announcements or outcomes),
    /// with the input partition each was filed under.
    pub fn heard_accounts(&self) -> Result<Vec<(String, i32)>, StateError> {
        let db = &self.reader.db;
        let meta = db.cf_handle(cf::META).expect("meta column family");
        let mut found = Vec::new();
        for item in db.iterator_cf(meta, IteratorMode::From(&[keys::HEARD], rocksdb::Direction::Forward)) {
            let (k, v) = item?;
            if k.first() != Some(&keys::HEARD) {
                break;
            }
            let partition = <[u8; 4]>::try_from(v.as_ref()).map(i32::from_be_bytes).unwrap_or(0);
            if let Ok(account) = std::str::from_utf8(&k[1..]) {
                found.push((account.to_string(), partition));
            }
        }
        if self.write_back {
            // Write-back: the index is written with the account, when it
            // is evicted; accounts still in memory are listed from there.
            let listed: HashSet<String> = found.iter().map(|(a, _)| a.clone()).collect();
            for (id, e) in self.accounts.iter().chain(self.spilled_accounts.iter()) {
                if Mark::of(&e.state).heard && !listed.contains(id) {
                    found.push((id.to_string(), e.partition));
                }
            }
        }
        Ok(found)
    }

    /// The account as the batch sees it (cached, else as written), without
    /// touching it: `None` when it does not exist.
    pub fn peek_account(&self, id: &str) -> Result<Option<AccountState>, StateError> {
        if let Some(e) = self.accounts.peek(id).or_else(|| self.spilled_accounts.get(id)) {
            return Ok((e.state.first_seen_ms != 0 || e.dirty).then(|| e.state.clone()));
        }
        if !self.prefetch.account_on_disk(id) {
            return Ok(None);
        }
        self.reader.account(id)
    }

    /// Meta records (`x|name`) whose name starts with `prefix`: pending
    /// for the next commit, else as written.
    pub fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let db = &self.reader.db;
        let meta = db.cf_handle(cf::META).expect("meta column family");
        let start = keys::meta(prefix);
        let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for item in db.iterator_cf(meta, IteratorMode::From(&start, rocksdb::Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&start) {
                break;
            }
            if let Ok(name) = std::str::from_utf8(&k[1..]) {
                found.insert(name.to_string(), v.to_vec());
            }
        }
        for (name, v) in self.meta_pending.iter().filter(|(n, _)| n.starts_with(prefix)) {
            found.insert(name.clone(), v.clone());
        }
        Ok(found.into_iter().collect())
    }

    /// A meta record (`x|name`) to write with the next commit.
    pub fn put_meta(&mut self, name: &str, value: Vec<u8>) {
        self.meta_pending.insert(name.to_string(), value);
    }

    /// A meta record (`x|name`): as pending for the next commit, else as
    /// written.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(v) = self.meta_pending.get(name) {
            return Ok(Some(v.clone()));
        }
        let cf = self.reader.db.cf_handle(cf::META).expect("meta column family");
        Ok(self.reader.db.get_cf(cf, keys::meta(name))?)
    }

    /// Makes the state serve `layout` (the definitions the engine runs, the
    /// live one first): migrates a schema-1 directory in place, refuses a
    /// layout the state cannot serve (another `bucket_seconds`), and updates
    /// the manifest of what the state holds and since when. Account records
    /// handed out from now on are conformed to the layout. Call it before
    /// the first event and on every change of definitions, between batches.
    pub fn prepare_layout(&mut self, layout: Arc<Layout>, live: &CompiledDefinition) -> Result<Manifest, StateError> {
        let old = self.reader.manifest()?;
        if let Some(m) = &old {
            if m.bucket_seconds != layout.bucket_seconds {
                return Err(StateError::Incompatible(format!(
                    "definition.bucket_seconds is {} but the state in {} was built with {}: windows cannot be \
                     re-cut. Keep bucket_seconds = {}, or rebuild the state under the new definition: `pqa-engine \
                     replay --config NEW.toml --input HISTORY --state-dir NEW_DIR` (or `run` with a new state.dir and \
                     a new kafka.group_id)",
                    layout.bucket_seconds, self.dir, m.bucket_seconds, m.bucket_seconds
                )));
            }
        }
        if self.legacy_v1 {
            migrate_v1(&self.reader.db, &layout, live)?;
            self.legacy_v1 = false;
            self.forget_reads();
        }
        let mut manifest = Manifest::next(old.as_ref(), &layout, self.watermark_ms());
        manifest.live = live.version.clone();
        let meta = self.reader.db.cf_handle(cf::META).expect("cf");
        self.reader.db.put_cf(meta, keys::meta("manifest"), serde_json::to_vec(&manifest).expect("manifest"))?;
        self.layout = Some(layout);
        Ok(manifest)
    }

    /// A changelog value of an account written by an engine of schema 1
    /// (a peer not yet upgraded), in the current form for this layout.
    pub fn convert_v1_account(&self, value: &[u8]) -> Result<Vec<u8>, StateError> {
        let layout = self.layout.as_ref().ok_or_else(|| StateError::Corrupt {
            what: "changelog",
            detail: "a schema-1 record arrived before the definitions were set".into(),
        })?;
        let state = super::manifest::convert_v1(value, layout)?;
        let mut buf = Vec::new();
        encode_value(&mut buf, state.last_seen_ms, &state);
        Ok(buf)
    }

    /// A read-only handle for other threads (HTTP).
    pub fn reader(&self) -> StateReader {
        self.reader.clone()
    }

    /// The event-time watermark (latest event time seen).
    pub fn watermark_ms(&self) -> i64 {
        self.watermark.load(Ordering::Relaxed)
    }

    pub fn set_watermark_ms(&self, t: i64) {
        self.watermark.fetch_max(t, Ordering::Relaxed);
    }

    /// See [`idle_refresh_ms`].
    pub fn idle_refresh_ms(&self) -> i64 {
        self.idle_refresh_ms
    }

    /// Sets the input partition of the record being applied: records
    /// touched from now on belong to it (in the changelog).
    pub fn set_partition(&mut self, partition: i32) {
        self.partition = partition;
    }

    /// Takes back a written batch's changelog records: the next prepare
    /// fills the same buffers, where a fresh one of megabytes was faulted
    /// in and zeroed page by page on the engine thread (about 4 % of it on
    /// a long tail of small accounts through Kafka).
    pub fn recycle(&mut self, mut spare: ChangeRecords) {
        spare.clear();
        self.spare_changelog = Some(spare);
    }

    /// The account and user records touched since the last prepared
    /// commit (each is written at that commit).
    pub fn touched_records(&self) -> usize {
        self.touched_accounts.len() + self.touched_users.len()
    }

    /// Whether records were touched or meta records set since the last
    /// prepared commit.
    pub fn has_changes(&self) -> bool {
        self.changed || !self.meta_pending.is_empty()
    }

    /// The input partition set last.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Turns on building changelog records at commit.
    pub fn set_changelog(&mut self, on: bool) {
        self.changelog = on;
        self.expired.set_collecting(on);
    }

    /// Compacts every column family now (tests: the idle-TTL filter runs).
    #[cfg(test)]
    pub(crate) fn compact_all(&self) {
        let db = &self.reader.db;
        for name in cf::ALL {
            db.compact_range_cf(db.cf_handle(name).expect("cf"), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Members in records of their own from the first (for the tests of
    /// those: a store otherwise keeps up to [`INLINE_MEMBERS`] inside the
    /// account's record).
    #[cfg(test)]
    pub(crate) fn members_apart(&mut self) {
        self.inline_members = 0;
    }

    /// The input partitions this instance owns now (`run`, after each
    /// rebalance): the changelog partitions that get the tombstone of an
    /// idle record without a partition of its own (see [`super::expiry`]).
    pub fn set_owned(&mut self, partitions: Vec<i32>) {
        self.owned = Some(partitions);
    }

    /// Turns on write-back, for a state that only this process reads and
    /// that is thrown away after use (a `replay` or `backtest` into a
    /// temporary directory, never with a changelog). A commit then writes
    /// only what the cache evicts (accounts and users past
    /// `state.cache_accounts`, the members of an account with many cached),
    /// with the offsets; the rest stays in memory, where every read finds
    /// it. Message ids of the dedupe window stay in memory only (up to the
    /// cap, see [`Store::set_dedupe_memory_ids`]). Until the first eviction of a kind of record,
    /// lookups of records not in the cache skip RocksDB, which has none.
    /// RocksDB alone is then not the state: nothing may read it directly
    /// (`discard_cache` would lose changes; only a failed run calls it).
    /// (Once on, it stays on: entries are then no longer listed for the
    /// commit when touched.)
    pub fn set_write_back(&mut self, on: bool) -> Result<(), StateError> {
        debug_assert!(on || !self.write_back, "write-back cannot be turned off");
        if on && !self.write_back {
            let db = &self.reader.db;
            self.accounts_on_disk = !cf_is_empty(db, cf::ACCOUNTS);
            self.users_on_disk = !cf_is_empty(db, cf::USERS);
            self.reader.members_on_disk = !cf_is_empty(db, cf::MEMBERS);
            self.ids_on_disk = !cf_is_empty(db, cf::DEDUPE);
            if !self.ids_on_disk {
                self.disk_ids = Some(DiskIds::new(self.memory_ids_cap));
            }
            // Opened empty, RocksDB holds only what evictions write from
            // now on: a record never evicted is not looked for there (see
            // `super::written`).
            if !self.accounts_on_disk {
                let _ = self.prefetch.written_accounts.set(Default::default());
            }
            if !self.users_on_disk {
                let _ = self.prefetch.written_users.set(Default::default());
            }
            self.share_on_disk();
        }
        self.write_back = on;
        Ok(())
    }

    /// The account's cache entry (to read or change), loaded from RocksDB or new.
    /// (One hash lookup when it is cached: this is on every event's path.)
    pub fn account(&mut self, id: &str) -> Result<&mut AccountEntry, StateError> {
        let Store { accounts, spilled_accounts, reader, fetched, writes, inline_members, prefetch, .. } = self;
        let (slot, e) = accounts.get_or_try_insert_at(id, || match spilled_accounts.take(id) {
            // Evicted into the batch in flight: back, unchanged since, as
            // that batch writes it.
            Some(mut e) => {
                e.written(*inline_members);
                Ok(e)
            }
            None => match fetched.account.take_if(|f| f.id == id && writes.holds(fetched.epoch, Some(id), None)) {
                // Read ahead, and still what RocksDB holds.
                Some(read) => {
                    let read = *read;
                    let mut e = account_entry(reader, read.record, id)?;
                    if let Some((user, m)) = read.member {
                        // (Not over a member the record holds inside it.)
                        e.members
                            .get_or_insert_with(&user, || MemberEntry { state: m.unwrap_or_default(), dirty: false });
                    }
                    Ok(e)
                }
                None => load_account(reader, prefetch.account_on_disk(id), id),
            },
        })?;
        if let Some(layout) = &self.layout {
            if e.generation != layout.generation {
                // Written in its new shape with the next change.
                e.state.conform(layout);
                e.sums.clear();
                e.generation = layout.generation;
            }
        }
        if let Some(read) =
            self.fetched.member.take_if(|f| f.account == id && self.writes.holds(self.fetched.epoch, Some(id), None))
        {
            // The member record read ahead: what RocksDB still holds (its
            // writes are noted under the account's id), needed unless the
            // entry has it.
            let read = *read;
            e.members
                .get_or_insert_with(&read.user, || MemberEntry { state: read.state.unwrap_or_default(), dirty: false });
        }
        e.partition = self.partition;
        if e.early.take().is_some() {
            // To be changed again: what was encoded early is out of date.
            e.late = true;
        }
        self.last_slot = slot;
        // (A write-back store writes only what it evicts, and the members of
        // crowded accounts: only those are listed for the commit.)
        if !e.touched && (!self.write_back || e.members.len() > CROWDED) {
            e.touched = true;
            self.touched_accounts.push((id.into(), slot));
        }
        self.changed = true;
        Ok(e)
    }

    /// Encodes the account's record and its changed members now, at the
    /// end of the event that changed them, while they are still in the
    /// processor's caches: the commit writes these bytes as they are,
    /// unless the account is handed out again before it (then the commit
    /// encodes it, once, as before). A long tail's account changes once a
    /// batch, and encoding it at the commit read it back from memory
    /// (BENCHMARKS.md: `run` of the long tail, the engine thread -7 %).
    /// Only for a store that writes every change (not write-back), and
    /// accounts with a few members (a busy account changes many times a
    /// batch).
    ///
    /// **Why the bytes are never stale.** Outside this module an account's
    /// entry is reached only through [`Store::account`], which drops what
    /// was encoded early (the entry is then `late` until the commit); in
    /// here, nothing else changes an entry's record or members before the
    /// commit (the schedule's marks are not in the record, and a crowded
    /// account's members leave its entry only after a commit).
    pub fn encode_early(&mut self, id: &str) {
        if self.write_back {
            return;
        }
        let Store { accounts, early, early_buf: (buf, key), last_slot, inline_members, .. } = self;
        let Some(e) = accounts.at_mut(*last_slot, id) else { return };
        if e.late || e.early.is_some() || !e.touched || e.members.len() > EARLY_MEMBERS {
            return;
        }
        let first = early.len();
        if keeps_members_inside(e, *inline_members) {
            if !e.changed() {
                return;
            }
            encode_account_with_members(buf, key, id, e);
            early.push(e.partition, key, buf);
            e.early = Some((first as u32, 1));
            return;
        }
        if !e.dirty || !e.members_on_disk {
            // (Leaving the members inside is the commit's to write.)
            return;
        }
        encode_account(buf, key, id, &e.state);
        early.push(e.partition, key, buf);
        let mut dirty: smallvec::SmallVec<[(&str, &MemberEntry); EARLY_MEMBERS]> =
            e.members.iter().filter(|(_, m)| m.dirty).collect();
        dirty.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (user, m) in dirty {
            encode_member(buf, key, id, user, &m.state);
            early.push(e.partition, key, buf);
        }
        e.early = Some((first as u32, (early.len() - first) as u32));
    }

    /// The user's cache entry (to read or change), loaded from RocksDB or new.
    /// (One hash lookup when it is cached.)
    pub fn user(&mut self, id: &str) -> Result<&mut UserEntry, StateError> {
        let Store { users, spilled_users, reader, fetched, writes, prefetch, .. } = self;
        let (slot, u) = users.get_or_try_insert_at(id, || match spilled_users.take(id) {
            Some(mut u) => {
                u.dirty = false;
                Ok(u)
            }
            None if fetched.user.as_ref().is_some_and(|f| f.0 == id && writes.holds(fetched.epoch, None, Some(id))) => {
                // Read ahead, and still what RocksDB holds.
                let state = fetched.user.take().and_then(|f| f.1).unwrap_or_default();
                Ok(UserEntry { state, ..Default::default() })
            }
            None if prefetch.user_on_disk(id) => {
                Ok::<_, StateError>(UserEntry { state: reader.user(id)?.unwrap_or_default(), ..Default::default() })
            }
            None => Ok(UserEntry::default()),
        })?;
        u.partition = self.partition;
        if !u.touched && !self.write_back {
            u.touched = true;
            self.touched_users.push((id.into(), slot));
        }
        self.changed = true;
        Ok(u)
    }

    /// Sets the message-id dedupe window in milliseconds of event time (0 = off).
    pub fn set_dedupe_window_ms(&mut self, ms: i64) {
        self.dedupe_window.store(ms.max(0), Ordering::Relaxed);
    }

    /// At most this many message ids of the dedupe window are kept in
    /// memory (the rest go to RocksDB one key each); 0 keeps every id in
    /// RocksDB.
    pub fn set_dedupe_memory_ids(&mut self, cap: usize) {
        self.memory_ids_cap = cap;
    }

    /// Asks the processor for where `message_id`'s probe of the ids in
    /// memory starts (for an event a few ahead; see `Engine::prefetch`).
    /// Changes nothing.
    #[inline]
    pub fn prefetch_id(&self, message_id: &str) {
        if self.ids_loaded && self.dedupe_window.load(Ordering::Relaxed) > 0 {
            let key = keys::dedupe(message_id);
            self.memory_ids.prefetch(key[1..].try_into().expect("16 bytes"));
        }
    }

    /// Message ids of the dedupe window in memory now.
    pub fn ids_in_memory(&self) -> usize {
        self.memory_ids.len()
    }

    /// Whether `message_id` (of an event at `time_ms`) was already applied
    /// within the dedupe window; if not, remembers it for the next commit.
    pub fn seen_before(&mut self, message_id: &str, time_ms: i64) -> Result<bool, StateError> {
        let window = self.dedupe_window.load(Ordering::Relaxed);
        if window <= 0 {
            return Ok(false);
        }
        if !self.ids_loaded {
            self.load_ids()?;
        }
        let key = keys::dedupe(message_id);
        if self.pending_ids.contains_key(&key) || self.inflight_ids.contains_key(&key) {
            return Ok(true);
        }
        let hash: [u8; 16] = key[1..].try_into().expect("16 bytes");
        let watermark = self.watermark_ms();
        if self.write_back && !self.ids_on_disk && self.memory_ids.len() < self.memory_ids_cap {
            // The common case of a write-back store, in one probe: every
            // id of the window is in memory.
            if self.memory_ids.held_or_file(hash, time_ms, |seen| seen.saturating_add(window) >= watermark) {
                return Ok(true);
            }
            // New, or seen long ago (out of the window): filed (again)
            // under its hour (an old hour's expiry keeps it: see
            // `prepare`).
            self.memory_ids_by_hour.entry(time_ms.div_euclid(3_600_000)).or_default().push(hash);
            return Ok(false);
        }
        if let Some(seen_at) = self.memory_ids.get(&hash) {
            if seen_at.saturating_add(window) >= watermark {
                return Ok(true);
            }
        }
        if self.ids_on_disk && self.disk_may_hold(&hash, window, watermark)? {
            self.disk_id_reads += 1;
            let cf = self.reader.db.cf_handle(cf::DEDUPE).expect("dedupe column family");
            if let Some(v) = self.reader.db.get_pinned_cf(cf, key)? {
                let seen_at = <[u8; 8]>::try_from(v.as_ref()).map(i64::from_be_bytes).unwrap_or(0);
                if seen_at.saturating_add(window) >= self.watermark_ms() {
                    return Ok(true);
                }
            }
        }
        if self.write_back && self.memory_ids.len() < self.memory_ids_cap {
            // An id seen long ago (out of the window) is filed again, under
            // its new hour (its old hour's expiry keeps it: see `prepare`).
            self.remember_id(hash, time_ms);
            return Ok(false);
        }
        self.pending_ids.insert(key, (time_ms, self.partition));
        Ok(false)
    }

    /// Loads the message ids of the dedupe window now: those kept in
    /// memory, and the filter in front of those in RocksDB (a scan of
    /// them). The first event's lookup would do it otherwise, and after a
    /// restart with a day of ids past the memory's cap that event waited
    /// for both (a scan of millions of keys). `run` calls it before it
    /// consumes, while not yet ready. Returns what it loaded now: the ids
    /// into memory and those into the filter (nothing, when both were
    /// loaded already).
    pub fn load_dedupe_ids(&mut self) -> Result<(usize, usize), StateError> {
        let window = self.dedupe_window.load(Ordering::Relaxed);
        if window <= 0 {
            return Ok((0, 0));
        }
        let mut in_memory = 0;
        if !self.ids_loaded {
            self.load_ids()?;
            in_memory = self.memory_ids.len();
        }
        let mut on_disk = 0;
        if self.ids_on_disk && self.disk_ids.is_none() {
            on_disk = self.build_disk_ids(window, self.watermark_ms())?;
        }
        Ok((in_memory, on_disk))
    }

    /// Whether the dedupe column family may hold `id` (see [`DiskIds`]),
    /// the filter built first by a scan of it if there is none.
    fn disk_may_hold(&mut self, id: &[u8; 16], window: i64, watermark: i64) -> Result<bool, StateError> {
        if self.disk_ids.is_none() {
            self.build_disk_ids(window, watermark)?;
        }
        Ok(self.disk_ids.as_mut().is_some_and(|d| d.may_hold(id, window, watermark)))
    }

    /// Builds the filter in front of the dedupe column family by a scan of
    /// it; returns the ids it took.
    fn build_disk_ids(&mut self, window: i64, watermark: i64) -> Result<usize, StateError> {
        let mut n = 0;
        let mut d = DiskIds::new(self.memory_ids_cap);
        let db = self.reader.db.clone();
        let cf = db.cf_handle(cf::DEDUPE).expect("dedupe column family");
        // (In total order: see `cf_is_empty`. Once through, so the
        // blocks it reads do not push the records' out of the cache.)
        let mut ro = ReadOptions::default();
        ro.set_total_order_seek(true);
        ro.fill_cache(false);
        for item in db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
            let (k, v) = item?;
            let (Some(hash), Ok(t)) = (k.get(1..17), <[u8; 8]>::try_from(v.as_ref()).map(i64::from_be_bytes)) else {
                continue;
            };
            // (Ids out of the window never count again.)
            if t.saturating_add(window) >= watermark {
                d.insert(hash.try_into().expect("16 bytes"), t, window, watermark);
                n += 1;
            }
        }
        // And the ids of the batch in flight and of the next, which may
        // be written after this scan. (None are, today: an id reaches a
        // batch only past this filter, and a restore needs a clean
        // cache. So that a change to either cannot lose a duplicate.)
        for (k, &(t, _)) in self.inflight_ids.iter().chain(&self.pending_ids) {
            d.insert(k[1..].try_into().expect("16 bytes"), t, window, watermark);
        }
        self.disk_ids = Some(d);
        Ok(n)
    }

    /// Members of an account: RocksDB overlaid with the cached (possibly
    /// unflushed) ones.
    pub fn members(&self, account: &str) -> Result<Vec<(String, MemberState)>, StateError> {
        let cached = self.accounts.peek(account).or_else(|| self.spilled_accounts.get(account));
        let mut all: HashMap<String, MemberState> = match cached {
            // The entry has them all (see `AccountEntry::members_on_disk`).
            Some(e) if !e.members_on_disk => HashMap::new(),
            _ => self.reader.members(account)?.into_iter().collect(),
        };
        if let Some(e) = cached {
            for (u, m) in e.members.iter() {
                all.insert(u.to_string(), m.state.clone());
            }
        }
        Ok(all.into_iter().collect())
    }

    /// A user's state, from the cache if present.
    pub fn peek_user(&self, id: &str) -> Result<Option<UserState>, StateError> {
        match self.users.peek(id).or_else(|| self.spilled_users.get(id)) {
            Some(u) => Ok(Some(u.state.clone())),
            None if self.prefetch.user_on_disk(id) => self.reader.user(id),
            None => Ok(None),
        }
    }

    /// Writes every changed record and the given consumed offsets (next
    /// offset to read, per partition) in one atomic batch, then trims the
    /// cache to its capacity.
    pub fn commit(&mut self, offsets: &[(String, i32, i64)]) -> Result<CommitStats, StateError> {
        let prepared = self.prepare(offsets);
        self.write(prepared, &[])
    }

    /// Encodes every changed record and the consumed offsets into one
    /// RocksDB batch (and into changelog records when the changelog is on).
    /// Nothing is written until [`Store::write`].
    pub fn prepare(&mut self, offsets: &[(String, i32, i64)]) -> Prepared {
        let db = &self.reader.db;
        let (acf, mcf, ucf, meta) = (
            db.cf_handle(cf::ACCOUNTS).expect("cf"),
            db.cf_handle(cf::MEMBERS).expect("cf"),
            db.cf_handle(cf::USERS).expect("cf"),
            db.cf_handle(cf::META).expect("cf"),
        );
        let (batch_bytes, changelog_len, changelog_bytes) = self.last_commit_size;
        let mut batch = WriteBatch::with_capacity_bytes(batch_bytes);
        let mut stats = CommitStats::default();
        // (The last written batch's buffers, cleared, if they came back.)
        let mut changelog =
            self.spare_changelog.take().unwrap_or_else(|| ChangeRecords::with_capacity(changelog_len, changelog_bytes));
        let (mut buf, mut key) = (Vec::with_capacity(4096), Vec::with_capacity(256));
        let mut sink = Sink {
            changelog: self.changelog.then_some(&mut changelog),
            buf: &mut buf,
            key: &mut key,
            stats: &mut stats,
            inline_members: self.inline_members,
        };
        // The touched records are walked in the order they were first
        // touched, not sorted: the accounts' and users' memtables are hash
        // tables (see `open`), which gain nothing from key order, and a
        // long tail's entries touched in a row sit in slots filled in a
        // row, where a walk in key order jumped across the cache (sorting
        // and that walk were 7 % of `run`'s engine thread on the long
        // tail; BENCHMARKS.md). An account's members still go in sorted,
        // together (`Sink::account`).
        // (Each with its cache slot, where it is read without a lookup: a
        // touched record stays in the cache until written.)
        // What is written is noted for the readers ahead (see `prefetch`);
        // with none, only that the commit noted nothing.
        self.changed = false;
        let note = self.prefetch.readers.load(Ordering::Acquire);
        self.writes.unnoted |= !note;
        let (wrote_accounts, wrote_users) = &mut self.writes.pending;
        // (Each slot asked of the processor a few records ahead: on a long
        // tail they are far apart in memory.)
        let mut touched = self.touched_accounts.drain(..);
        while let Some((id, slot)) = touched.next() {
            if let Some(&(_, ahead)) = touched.as_slice().get(SLOTS_AHEAD) {
                self.accounts.prefetch_slot(ahead);
            }
            let Some(e) = self.accounts.at_mut(slot, &id) else { continue };
            e.touched = false;
            e.late = false;
            let crowded = e.members.len() > CROWDED;
            if note && (!self.write_back || crowded) {
                wrote_accounts.insert(prefetch::id_hash(&id));
            }
            if let Some((first, n)) = e.early.take() {
                sink.early(&mut batch, (acf, mcf, meta), &id, e, &self.early, first, n);
            } else if !self.write_back {
                sink.account(&mut batch, (acf, mcf, meta), &id, e, true);
            } else if crowded {
                // Only its members, so that they can leave the cache.
                sink.account(&mut batch, (acf, mcf, meta), &id, e, false);
            }
            if crowded {
                self.crowded.push(id.into());
            }
        }
        drop(touched);
        self.early.clear();
        let mut touched = self.touched_users.drain(..);
        while let Some((id, slot)) = touched.next() {
            if let Some(&(_, ahead)) = touched.as_slice().get(SLOTS_AHEAD) {
                self.users.prefetch_slot(ahead);
            }
            let Some(u) = self.users.at_mut(slot, &id) else { continue };
            u.touched = false;
            if !self.write_back {
                if note {
                    wrote_users.insert(prefetch::id_hash(&id));
                }
                sink.user(&mut batch, ucf, &id, u);
            }
        }
        drop(touched);
        let mut spilled = None;
        if self.write_back {
            // What the cache holds past its capacity (once it is past it
            // by a margin: see [`excess`]) is written now, and stays
            // readable until the batch is durable (see `written`). The
            // commit thread encodes it (see [`super::spill`]); here only
            // what the records' keys and marks need.
            // (Sized at once: entries are large, and a vector grown step by
            // step copied them again at each step.)
            let n = excess(self.capacity, self.accounts.len());
            let mut evicted: Vec<(String, AccountEntry)> = Vec::with_capacity(n);
            let least = self.accounts.least_recent(n);
            for (k, &i) in least.iter().enumerate() {
                if let Some(&ahead) = least.get(k + SLOTS_AHEAD) {
                    self.accounts.prefetch_slot(ahead);
                }
                let Some((id, e)) = self.accounts.remove_at(i) else { continue };
                if e.changed() {
                    evicted.push((id, e));
                }
            }
            // (In the order evicted, as touched records are in the order
            // touched: see above and `spill`.)
            for (id, e) in &mut evicted {
                let hash = prefetch::id_hash(id);
                if note {
                    wrote_accounts.insert(hash);
                }
                if let Some(w) = self.prefetch.written_accounts.get() {
                    w.insert(hash);
                }
                if e.writes_record(self.inline_members) {
                    Sink::indexes(&mut batch, meta, id, e);
                }
                if e.members_written(self.inline_members).next().is_some() {
                    self.reader.members_on_disk = true;
                }
                self.accounts_on_disk = true;
            }
            let accounts = self.spilled_accounts.hold(evicted);
            let n = excess(self.users_capacity, self.users.len());
            let mut evicted: Vec<(String, UserEntry)> = Vec::with_capacity(n);
            let least = self.users.least_recent(n);
            for (k, &i) in least.iter().enumerate() {
                if let Some(&ahead) = least.get(k + SLOTS_AHEAD) {
                    self.users.prefetch_slot(ahead);
                }
                let Some((id, u)) = self.users.remove_at(i) else { continue };
                if u.dirty {
                    evicted.push((id, u));
                }
            }
            for (id, _) in &evicted {
                let hash = prefetch::id_hash(id);
                if note {
                    wrote_users.insert(hash);
                }
                if let Some(w) = self.prefetch.written_users.get() {
                    w.insert(hash);
                }
                self.users_on_disk = true;
            }
            let users = self.spilled_users.hold(evicted);
            if sink.stats.members > 0 {
                self.reader.members_on_disk = true;
            }
            self.share_on_disk();
            let evicted = Evicted { accounts, users, inline_members: self.inline_members };
            if self.changelog {
                // (Its records must be in the changelog before the commit
                // thread writes that: encoded here.)
                evicted.encode(&mut sink, &mut batch, (acf, mcf, ucf));
            } else {
                spilled = Some(evicted);
            }
        }
        // Message ids out of the window leave the memory (an hour whose
        // last millisecond has left it).
        let window = self.dedupe_window.load(Ordering::Relaxed);
        let watermark = self.watermark.load(Ordering::Relaxed);
        while let Some(entry) = self.memory_ids_by_hour.first_entry() {
            if (entry.key() + 1) * 3_600_000 - 1 + window >= watermark {
                break;
            }
            let hour = entry.remove();
            for (n, k) in hour.iter().enumerate() {
                if let Some(ahead) = hour.get(n + IDS_AHEAD) {
                    self.memory_ids.prefetch(ahead);
                }
                if self.memory_ids.get(k).is_some_and(|t| t.saturating_add(window) < watermark) {
                    self.memory_ids.remove(k);
                }
            }
        }
        // The blocks this batch writes: (input partition, newest id's time).
        let mut new_blocks: Vec<(i32, i64)> = Vec::new();
        if !self.pending_ids.is_empty() {
            // Kept in memory once written, and made durable by one block
            // per input partition (the value of its index entry), unless
            // that would pass the cap, or an id has no offset of its
            // partition to name its block: then one key each, as a
            // write-back store's ids past its cap.
            let to_memory = !self.write_back
                && self.memory_ids.len() + self.pending_ids.len() <= self.memory_ids_cap
                && self.pending_ids.values().all(|(_, p)| offsets.iter().any(|(_, q, _)| q == p));
            self.inflight_to_memory = to_memory;
            if !to_memory {
                self.ids_on_disk = true;
            }
            let dcf = db.cf_handle(cf::DEDUPE).expect("cf");
            // Per input partition: the newest event time and the ids, for
            // one changelog record (a dedupe block) rather than one per id.
            // (The buffers of the commit before, emptied: a batch's block is
            // hundreds of KiB, and grown afresh each commit its pages were
            // faulted in and copied again.)
            let mut blocks = std::mem::take(&mut self.id_blocks);
            for (newest, ids) in blocks.values_mut() {
                *newest = i64::MIN;
                ids.clear();
            }
            // No need to sort: the dedupe column family's memtable is a hash
            // table (see `open`).
            for (k, &(t, p)) in &self.pending_ids {
                if !to_memory {
                    batch.put_cf(dcf, k, t.to_be_bytes());
                    if let Some(d) = &mut self.disk_ids {
                        d.insert(k[1..].try_into().expect("16 bytes"), t, window, watermark);
                    }
                }
                if self.changelog || to_memory {
                    let b = blocks.entry(p).or_insert_with(|| (i64::MIN, Vec::new()));
                    b.0 = b.0.max(t);
                    b.1.extend_from_slice(&k[1..]);
                    b.1.extend_from_slice(&t.to_be_bytes());
                }
            }
            // The pending ids are now in flight: the map itself moves (and
            // the emptied one, its table kept, takes the next batch's).
            if self.inflight_ids.is_empty() {
                std::mem::swap(&mut self.pending_ids, &mut self.inflight_ids);
            } else {
                self.inflight_ids.extend(self.pending_ids.drain());
            }
            for (&p, &(newest, ref ids)) in &blocks {
                if ids.is_empty() {
                    continue;
                }
                match offsets.iter().find(|(_, q, _)| *q == p) {
                    Some((_, _, next)) => {
                        let key = keys::dedupe_block(p, newest, *next);
                        let durable: &[u8] = if to_memory { ids } else { &[] };
                        batch.put_cf(meta, keys::dedupe_block_index(&key), durable);
                        new_blocks.push((p, newest));
                        if self.changelog {
                            changelog.push(p, &key, ids);
                        }
                    }
                    None => {
                        // Ids without an offset of their partition to name
                        // the block (not from `run`): one changelog record
                        // each. (Only with the changelog: without it, blocks
                        // are made only when every partition has an offset.)
                        let mut key = [keys::DEDUPE; 17];
                        for id in ids.chunks_exact(DEDUPE_BLOCK_ENTRY) {
                            key[1..].copy_from_slice(&id[..16]);
                            changelog.push(p, &key, &id[16..]);
                        }
                    }
                }
            }
            self.id_blocks = blocks;
        }
        // Dedupe blocks whose newest id has left the window leave the index
        // and, with a tombstone each, the compacted changelog (each
        // partition's own, written before its marker).
        let in_window = |newest: i64| window > 0 && newest.saturating_add(window) >= watermark;
        for (_, p, _) in offsets {
            if self.oldest_block.get(p).is_some_and(|&o| o == i64::MAX || in_window(o)) {
                continue;
            }
            // What is left once the expired blocks are gone (none, unless
            // the loop stops at one in the window).
            let mut left = i64::MAX;
            let prefix = keys::dedupe_block_index_prefix(*p);
            // Keys only: an index entry's value holds its block's ids (a
            // block of a batch in memory), which this has no use for.
            let mut it = db.raw_iterator_cf(meta);
            it.seek(prefix);
            loop {
                let Some(k) = it.key() else {
                    if it.status().is_err() {
                        left = i64::MIN; // (not known: looked at again next time)
                    }
                    break;
                };
                let Some(newest) = keys::dedupe_block_newest(k).filter(|_| k.starts_with(&prefix)) else {
                    break;
                };
                if in_window(newest) {
                    left = newest;
                    break;
                }
                batch.delete_cf(meta, k);
                if self.changelog {
                    let mut key = k.to_vec();
                    key[0] = keys::DEDUPE_BLOCK;
                    changelog.push(*p, &key, &[]);
                }
                it.next();
            }
            self.oldest_block.insert(*p, left);
        }
        // (After the look at the index, which cannot see them yet.)
        for (p, newest) in new_blocks {
            if let Some(oldest) = self.oldest_block.get_mut(&p) {
                *oldest = (*oldest).min(newest);
            }
        }
        if self.changelog {
            // (Before the markers: a restore applies what precedes one.)
            self.tombstone_expired(&mut changelog);
        }
        for (topic, partition, next) in offsets {
            let key = keys::offset(topic, *partition);
            batch.put_cf(meta, &key, next.to_be_bytes());
            if self.changelog {
                // The marker goes last: it completes the partition's records.
                let mut value = [0u8; 16];
                value[..8].copy_from_slice(&next.to_be_bytes());
                value[8..].copy_from_slice(&watermark.to_be_bytes());
                changelog.push(*partition, &key, &value);
            }
        }
        batch.put_cf(meta, keys::meta("watermark"), watermark.to_be_bytes());
        for (name, v) in std::mem::take(&mut self.meta_pending) {
            batch.put_cf(meta, keys::meta(&name), v);
        }
        // (Capped, so that one unusual batch does not set every next one.)
        self.last_commit_size =
            (batch.size_in_bytes().min(64 << 20), changelog.len().min(1 << 20), changelog.bytes().min(64 << 20));
        Prepared { batch, changelog, stats, offsets: offsets.to_vec(), oldest_ts: None, spilled }
    }

    /// Tombstones on the changelog for the records the idle-TTL filter
    /// dropped that are really gone (see [`super::expiry`]). On the engine
    /// thread, with no commit in flight: RocksDB holds every commit's
    /// writes, and the cache what has been used since.
    fn tombstone_expired(&self, changelog: &mut ChangeRecords) {
        let lost = self.expired.take_lost();
        if lost > 0 {
            tracing::warn!(
                records = lost,
                "more idle records dropped at once than are noted; their changelog keys stay (a restore skips them)"
            );
        }
        let found = self.expired.take(expiry::PER_COMMIT);
        if found.is_empty() {
            return;
        }
        let watermark = self.watermark.load(Ordering::Relaxed);
        // The partitions of the accounts dropped with them: a member whose
        // account is gone too goes with it.
        let dropped: HashMap<&str, i32> =
            found.iter().filter_map(|f| Some((keys::parse_account(&f.key)?, f.partition?))).collect();
        let mut again = Vec::new();
        let now = std::time::Instant::now();
        for mut f in found.iter().cloned() {
            if f.retry_at.is_some_and(|t| t > now) {
                again.push(f);
                continue;
            }
            match self.expired_state(&f, watermark, &dropped) {
                Ok(Gone::Yes(partition)) => {
                    let owned = self.owned.as_deref().unwrap_or_default();
                    let to: &[i32] = match &partition {
                        Some(p) if owned.contains(p) => std::slice::from_ref(p),
                        Some(_) => &[],
                        None => owned,
                    };
                    for p in to {
                        changelog.push(*p, &f.key, &[]);
                    }
                }
                Ok(Gone::NotYet) if now.duration_since(f.noted) < expiry::PATIENCE => {
                    f.retry_at = Some(now + expiry::RETRY);
                    again.push(f);
                }
                Ok(Gone::NotYet | Gone::Alive) => {}
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot tell whether an idle record is gone; its changelog key stays");
                }
            }
        }
        self.expired.again(again);
    }

    /// Whether a record the idle-TTL filter dropped is gone, and then the
    /// input partition it belongs to, when known.
    fn expired_state(&self, f: &Found, watermark: i64, dropped: &HashMap<&str, i32>) -> Result<Gone, StateError> {
        let db = &self.reader.db;
        // (Alive in RocksDB, or still there and idle: its compaction is
        // not installed yet.)
        let on_disk = |cf_name: &str| -> Result<Option<Gone>, StateError> {
            let h = db.cf_handle(cf_name).expect("cf");
            let ttl = idle_ttl_of(cf_name, self.idle_ttl_ms, self.idle_refresh_ms);
            Ok(db
                .get_pinned_cf(h, &f.key)?
                .map(|v| if idle_past(&v, ttl, watermark) { Gone::NotYet } else { Gone::Alive }))
        };
        match f.key.first() {
            Some(&keys::ACCOUNT) => {
                let Some(id) = keys::parse_account(&f.key) else { return Ok(Gone::Alive) };
                if self.accounts.peek(id).is_some() || self.spilled_accounts.contains_key(id) {
                    return Ok(Gone::Alive);
                }
                Ok(on_disk(cf::ACCOUNTS)?.unwrap_or(Gone::Yes(f.partition)))
            }
            Some(&keys::MEMBER) => {
                let Some((account, user)) = keys::parse_member(&f.key) else { return Ok(Gone::Alive) };
                let cached = self.accounts.peek(account).or_else(|| self.spilled_accounts.get(account));
                if cached.is_some_and(|e| e.members.contains_key(user)) {
                    return Ok(Gone::Alive);
                }
                if let Some(state) = on_disk(cf::MEMBERS)? {
                    return Ok(state);
                }
                // With its account, wherever that is now.
                let partition = match cached {
                    Some(e) => Some(e.partition),
                    None => self
                        .reader
                        .account(account)?
                        .and_then(|a| a.partition)
                        .or_else(|| dropped.get(account).copied()),
                };
                Ok(Gone::Yes(partition))
            }
            Some(&keys::USER) => {
                let id = std::str::from_utf8(&f.key[1..]).unwrap_or_default();
                if self.users.peek(id).is_some() || self.spilled_users.contains_key(id) {
                    return Ok(Gone::Alive);
                }
                Ok(on_disk(cf::USERS)?.unwrap_or(Gone::Yes(None)))
            }
            _ => Ok(Gone::Alive),
        }
    }

    /// A reader ahead of the engine, for the thread that decodes its input
    /// (see [`prefetch`]); what it reads is handed back with
    /// [`Store::set_fetched`].
    pub fn prefetcher(&self) -> Prefetcher {
        Prefetcher::new(self.reader.clone(), self.prefetch.clone(), self.capacity, self.users_capacity)
    }

    /// The first step of bringing the cached records of an event a few
    /// events ahead into the processor's caches: where the index holds its
    /// account (when the event names one) and its user (see
    /// [`Records::prefetch_index`](super::cache::Records::prefetch_index)).
    #[inline]
    pub fn prefetch_index(&self, account: Option<&str>, user: &str) {
        if let Some(a) = account {
            self.accounts.prefetch_index(a);
        }
        self.users.prefetch_index(user);
    }

    /// The second step: their records (see
    /// [`Records::prefetch`](super::cache::Records::prefetch)).
    #[inline]
    pub fn prefetch(&self, account: Option<&str>, user: &str) {
        if let Some(a) = account {
            self.accounts.prefetch(a);
        }
        self.users.prefetch(user);
    }

    /// The third step, nearer the event: what the
    /// account's cached record points at (its latest buckets, its running
    /// sums, the features it used, a few members' latest days), now that the
    /// record itself is in the processor's caches.
    #[inline]
    pub fn prefetch_deep(&self, account: &str) {
        if let Some(e) = self.accounts.peek(account) {
            let b = &e.state.buckets;
            super::cache::prefetch(b.as_ptr().wrapping_add(b.len().saturating_sub(2)).cast());
            e.sums.prefetch();
            let h = &e.state.user_hist;
            super::cache::prefetch(h.as_ptr().wrapping_add(h.len().saturating_sub(1)).cast());
            super::cache::prefetch(e.state.features.as_ptr().cast());
            // Read when the record is encoded (each its own allocation).
            super::cache::prefetch(e.state.columns.as_ptr().cast());
            super::cache::prefetch(e.state.signal_columns.as_ptr().cast());
            e.members.prefetch();
        }
    }

    /// The records read ahead for the event about to be applied (what is
    /// left of the previous event's is dropped).
    pub fn set_fetched(&mut self, fetched: Fetched) {
        self.fetched = fetched;
    }

    /// Records were written other than by a commit: reads ahead so far are refused.
    fn forget_reads(&mut self) {
        let epoch = self.writes.forget();
        self.prefetch.epoch.store(epoch, Ordering::Release);
        self.fetched = Fetched::default();
    }

    fn share_on_disk(&self) {
        let p = &self.prefetch;
        p.accounts_on_disk.store(self.accounts_on_disk, Ordering::Relaxed);
        p.users_on_disk.store(self.users_on_disk, Ordering::Relaxed);
        p.members_on_disk.store(self.reader.members_on_disk, Ordering::Relaxed);
    }

    /// The writer of prepared batches, for another thread.
    pub fn writer(&self) -> StateWriter {
        StateWriter { db: self.reader.db.clone(), sync: self.sync_writes, wal: !self.ephemeral }
    }

    /// Writes a prepared batch (see [`StateWriter::write`]), then trims the
    /// cache.
    pub fn write(&mut self, prepared: Prepared, changelog_next: &[(i32, i64)]) -> Result<CommitStats, StateError> {
        let mut stats = self.writer().write(prepared, changelog_next)?;
        stats.cached_accounts = self.written();
        Ok(stats)
    }

    /// Users in the cache (bounded by `state.cache_users` after a commit).
    pub fn cached_users(&self) -> usize {
        self.users.len()
    }

    /// Call once the last prepared batch is written (by [`StateWriter`]).
    /// Trims the cache to its capacity and returns the number of cached
    /// accounts. Batches may be prepared while the previous one is still
    /// being written, so only entries untouched since the last prepare are
    /// evicted: their latest version is in RocksDB, whereas an entry
    /// touched since may hold changes no write carries yet. (Untouched
    /// entries are the least recently used ones: every touch promotes.)
    pub fn written(&mut self) -> usize {
        let epoch = self.writes.completed();
        self.prefetch.epoch.store(epoch, Ordering::Release);
        if std::mem::take(&mut self.inflight_to_memory) {
            let mut ids = std::mem::take(&mut self.inflight_ids);
            // (Listed first, so that each id's place in the table is asked
            // of the processor a few ids ahead: with a million ids in
            // memory, nearly every one is a cache miss.)
            let mut filing = std::mem::take(&mut self.filing);
            filing.extend(ids.drain().map(|(k, (t, _))| (<[u8; 16]>::try_from(&k[1..]).expect("16 bytes"), t)));
            self.inflight_ids = ids;
            for (n, &(k, t)) in filing.iter().enumerate() {
                if let Some((ahead, _)) = filing.get(n + IDS_AHEAD) {
                    self.memory_ids.prefetch(ahead);
                }
                self.remember_id(k, t);
            }
            filing.clear();
            self.filing = filing;
        } else {
            self.inflight_ids.clear();
        }
        // Write-back: evicted at prepare, and now durable.
        self.spilled_accounts.clear();
        self.spilled_users.clear();
        if !self.write_back {
            let n = excess(self.capacity, self.accounts.len());
            for i in self.accounts.least_recent(n) {
                if self.accounts.record_at(i).is_none_or(|e| e.touched) {
                    break;
                }
                self.accounts.remove_at(i);
            }
            let n = excess(self.users_capacity, self.users.len());
            for i in self.users.least_recent(n) {
                if self.users.record_at(i).is_none_or(|u| u.touched) {
                    break;
                }
                self.users.remove_at(i);
            }
        }
        // Members of a cached account are bounded with it (only accounts
        // the batch wrote can have grown: no walk over the whole cache).
        for id in std::mem::take(&mut self.crowded) {
            if let Some(e) = self.accounts.peek_mut(&id) {
                if e.members.len() > CROWDED && !e.touched {
                    // (Written by the batch just made durable: read back
                    // from RocksDB when needed again.)
                    e.members.clear();
                    e.members_on_disk = true;
                }
            }
        }
        self.accounts.len()
    }

    /// Applies changelog records of one input partition (one or more
    /// complete commits, each ending with its offset marker) in one write,
    /// with the changelog position reached. The cache must be clean; it is
    /// dropped, as it may hold older versions of these records.
    pub fn apply_changelog(
        &mut self,
        partition: i32,
        records: &[(Vec<u8>, Vec<u8>)],
        changelog_next: i64,
    ) -> Result<(), StateError> {
        let db = &self.reader.db;
        let mut batch = WriteBatch::default();
        let mut watermark = self.watermark.load(Ordering::Relaxed);
        // What a record's idleness is judged against: the latest watermark
        // of these commits' markers (in a compacted changelog nearly every
        // record comes before the one marker left; a record rewritten
        // later is put again by its later version).
        let idle_against = records
            .iter()
            .filter(|(k, _)| k.first() == Some(&keys::OFFSET))
            .filter_map(|(_, v)| v.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()))
            .map(i64::from_be_bytes)
            .fold(watermark, i64::max);
        // User records put (or deleted: `None`) by this call so far (see
        // the tombstones below).
        let mut users_now: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
        for (k, v) in records {
            let corrupt = |detail: &str| StateError::Corrupt { what: "changelog", detail: detail.to_string() };
            let name = match k.first() {
                Some(&keys::ACCOUNT) => cf::ACCOUNTS,
                Some(&keys::MEMBER) => cf::MEMBERS,
                Some(&keys::USER) => cf::USERS,
                Some(&keys::DEDUPE) => {
                    // (Of an earlier version: one record per id. The
                    // filter in front of them is built again.)
                    self.ids_on_disk = true;
                    self.disk_ids = None;
                    cf::DEDUPE
                }
                Some(&keys::DEDUPE_BLOCK) => {
                    // A commit's message ids (or, empty, the tombstone of
                    // one that left the window).
                    let meta = db.cf_handle(cf::META).expect("cf");
                    if keys::dedupe_block_newest(k).is_none() || v.len() % DEDUPE_BLOCK_ENTRY != 0 {
                        return Err(corrupt("malformed dedupe block"));
                    }
                    // Kept as the writer keeps it: the block is the value of
                    // its index entry, loaded into memory on the next lookup.
                    if v.is_empty() {
                        batch.delete_cf(meta, keys::dedupe_block_index(k));
                    } else {
                        batch.put_cf(meta, keys::dedupe_block_index(k), v);
                    }
                    continue;
                }
                Some(&keys::OFFSET) => {
                    let next = v.get(..8).ok_or_else(|| corrupt("offset marker shorter than 8 bytes"))?;
                    if let Some(w) = v.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                        watermark = watermark.max(i64::from_be_bytes(w));
                    }
                    batch.put_cf(db.cf_handle(cf::META).expect("cf"), k, next);
                    continue;
                }
                other => return Err(corrupt(&format!("unknown record kind {other:?}"))),
            };
            let h = db.cf_handle(name).expect("cf");
            if name != cf::DEDUPE {
                // A tombstone (its writer's record was dropped for
                // idleness, see `expiry`), or a record idle past the TTL
                // already, which compaction would drop: gone here too.
                let ttl = idle_ttl_of(name, self.idle_ttl_ms, self.idle_refresh_ms);
                if v.is_empty() && name == cf::USERS {
                    // A user's tombstone goes to every partition its writer
                    // owned (a user record names no partition), so it can
                    // come after a newer record of the user restored from
                    // another partition: it deletes only a record idle past
                    // the TTL (the version it was written for, or one that
                    // compaction would drop anyway), never a live one.
                    let live = match users_now.get(&k[..]) {
                        Some(now) => now.is_some_and(|c| !idle_past(c, ttl, idle_against)),
                        None => db.get_cf(h, k)?.is_some_and(|c| !idle_past(&c, ttl, idle_against)),
                    };
                    if live {
                        continue;
                    }
                }
                if v.is_empty() || idle_past(v, ttl, idle_against) {
                    if name == cf::USERS {
                        users_now.insert(k, None);
                    }
                    batch.delete_cf(h, k);
                    continue;
                }
            }
            if name == cf::USERS {
                users_now.insert(k, Some(v));
            }
            batch.put_cf(h, k, v);
            if name == cf::ACCOUNTS {
                // The account's index keys (stale keys of its earlier
                // versions are dropped by `load_schedule` below).
                let meta = db.cf_handle(cf::META).expect("cf");
                let account = std::str::from_utf8(k.get(3..).unwrap_or_default()).unwrap_or_default();
                let state = decode_account_value(v)?;
                let mark = Mark::of(&state);
                if mark.due != 0 {
                    batch.put_cf(meta, keys::sweep(mark.due, account), partition.to_be_bytes());
                }
                if let Some(q) = mark.queue {
                    batch.put_cf(meta, keys::queue(q, account), partition.to_be_bytes());
                }
                if mark.heard {
                    batch.put_cf(meta, keys::heard(account), partition.to_be_bytes());
                }
            }
        }
        let meta = db.cf_handle(cf::META).expect("cf");
        batch.put_cf(meta, keys::changelog_position(partition), changelog_next.to_be_bytes());
        batch.put_cf(meta, keys::meta("watermark"), watermark.to_be_bytes());
        db.write_opt(batch, &write_options(self.sync_writes, !self.ephemeral))?;
        self.watermark.fetch_max(watermark, Ordering::Relaxed);
        self.discard_cache();
        self.load_schedule()
    }

    /// Drops the whole cache without writing (after a failed batch: the
    /// next batch starts again from what RocksDB holds).
    pub fn discard_cache(&mut self) {
        if self.write_back {
            tracing::error!("a write-back state dropped its cache: what it held is lost");
        }
        self.forget_reads();
        self.pending_ids.clear();
        self.inflight_ids.clear();
        self.spilled_accounts.clear();
        self.spilled_users.clear();
        self.memory_ids.clear();
        self.memory_ids_by_hour.clear();
        // (Read back from their blocks on the next lookup.)
        self.ids_loaded = false;
        self.oldest_block.clear();
        self.inflight_to_memory = false;
        self.touched_accounts.clear();
        self.touched_users.clear();
        self.early.clear();
        self.changed = false;
        self.accounts.clear();
        self.users.clear();
        self.meta_pending.clear();
        if let Ok(w) = self.reader.watermark_ms() {
            self.watermark.store(w, Ordering::Relaxed);
        }
        if let Err(e) = self.load_schedule() {
            tracing::error!(cause = %e, "cannot read the sweep and queue indexes back");
        }
    }

    /// Keys of the meta column family that start with `prefix` (tests).
    #[cfg(test)]
    fn meta_prefix_keys(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        let db = &self.reader.db;
        let meta = db.cf_handle(cf::META).expect("cf");
        db.iterator_cf(meta, IteratorMode::From(prefix, rocksdb::Direction::Forward))
            .map_while(|item| item.ok())
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.to_vec())
            .collect()
    }

    /// Flushes memtables to disk (clean shutdown makes the next start fast).
    pub fn flush_to_disk(&self) -> Result<(), StateError> {
        if self.ephemeral {
            return Ok(());
        }
        for name in cf::ALL {
            if let Some(h) = self.reader.db.cf_handle(name) {
                self.reader.db.flush_cf(h)?;
            }
        }
        Ok(())
    }
}

/// An account as RocksDB has it (or new), for the cache.
fn load_account(reader: &StateReader, on_disk: bool, id: &str) -> Result<AccountEntry, StateError> {
    account_entry(reader, if on_disk { reader.account_record(id)? } else { None }, id)
}

/// How many of `cached` records to evict: none until the cache is a
/// thirty-second past its `capacity`, then down to the capacity. (Each
/// eviction looks at every record's last use: evicting at every commit, a
/// few hundred records at a time, cost 2.4 % of a long tail's engine
/// thread, and 1.4 % this way. The readers ahead count on the most recent
/// `capacity` records staying cached, which they do.)
fn excess(capacity: usize, cached: usize) -> usize {
    if cached > capacity.saturating_add(capacity / 32) {
        cached - capacity
    } else {
        0
    }
}

/// The cache entry of an account as RocksDB has it (`None`: no record),
/// with the members its record holds, if it holds them.
fn account_entry(
    reader: &StateReader,
    record: Option<(AccountState, Option<InlineMembers>)>,
    id: &str,
) -> Result<AccountEntry, StateError> {
    let (state, inline) = record.map_or((None, None), |(s, m)| (Some(s), m));
    // (A record with its members inside has them all: none on disk.)
    let members_on_disk = state.is_some() && inline.is_none();
    let state = state.unwrap_or_default();
    let mark = Mark::of(&state);
    let mem_partition = if mark.due != 0 { reader.sweep_partition(mark.due, id)? } else { 0 };
    let members = inline
        .unwrap_or_default()
        .into_iter()
        .map(|(user, state)| (user, MemberEntry { state, dirty: false }))
        .collect();
    Ok(AccountEntry {
        state,
        members,
        db_mark: mark,
        mem_mark: mark,
        mem_partition,
        members_on_disk,
        ..Default::default()
    })
}

/// Where [`Store::prepare`] puts records: the batch, and the changelog
/// when it is on.
struct Sink<'a> {
    changelog: Option<&'a mut ChangeRecords>,
    /// The value being written, and its key (reused record to record).
    buf: &'a mut Vec<u8>,
    key: &'a mut Vec<u8>,
    stats: &'a mut CommitStats,
    /// [`Store::inline_members`].
    inline_members: usize,
}

impl Sink<'_> {
    /// Writes `buf` under `key`.
    fn put(&mut self, batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, partition: i32) {
        Self::write(
            self.changelog.as_deref_mut(),
            batch,
            cf,
            ChangeRecord { partition, key: self.key, value: self.buf },
        );
    }

    /// A record into the batch, and onto the changelog when it is on.
    fn write(
        changelog: Option<&mut ChangeRecords>,
        batch: &mut WriteBatch,
        cf: &rocksdb::ColumnFamily,
        r: ChangeRecord<'_>,
    ) {
        batch.put_cf(cf, r.key, r.value);
        if let Some(c) = changelog {
            c.push(r.partition, r.key, r.value);
        }
    }

    /// The account's record when it changed (with its place in the indexes
    /// when `record`), and its changed members.
    fn account(
        &mut self,
        batch: &mut WriteBatch,
        (acf, mcf, meta): (&rocksdb::ColumnFamily, &rocksdb::ColumnFamily, &rocksdb::ColumnFamily),
        id: &str,
        e: &mut AccountEntry,
        record: bool,
    ) {
        if record || !e.members_on_disk || keeps_members_inside(e, self.inline_members) {
            if e.writes_record(self.inline_members) {
                Self::indexes(batch, meta, id, e);
            }
            self.whole_account(batch, (acf, mcf), id, e);
            e.written(self.inline_members);
            return;
        }
        // Only its changed members (a crowded account's, so that they can
        // leave the cache).
        // (Inline up to a few: most accounts have one or two users.)
        let mut dirty_members: smallvec::SmallVec<[(&str, &mut MemberEntry); 4]> =
            e.members.iter_mut().filter(|(_, m)| m.dirty).collect();
        dirty_members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (user, m) in dirty_members {
            encode_member(self.buf, self.key, id, user, &m.state);
            self.put(batch, mcf, e.partition);
            m.dirty = false;
            self.stats.members += 1;
        }
    }

    /// The account's records when it changed, whole (its members inside,
    /// or each changed one apart, all of them the first time), without
    /// changing the entry or its place in the indexes (see
    /// [`Sink::account`]; an eviction writes the indexes when it evicts):
    /// [`AccountEntry::written`] gives the entry as this leaves it. Also on
    /// the commit thread, for the records a write-back store evicted.
    fn whole_account(
        &mut self,
        batch: &mut WriteBatch,
        (acf, mcf): (&rocksdb::ColumnFamily, &rocksdb::ColumnFamily),
        id: &str,
        e: &AccountEntry,
    ) {
        if e.writes_record(self.inline_members) {
            if keeps_members_inside(e, self.inline_members) {
                encode_account_with_members(self.buf, self.key, id, e);
            } else {
                // (Its members, past those a record keeps inside, in records
                // of their own.)
                encode_account(self.buf, self.key, id, &e.state);
            }
            self.put(batch, acf, e.partition);
            self.stats.accounts += 1;
        }
        let mut members: smallvec::SmallVec<[(&str, &MemberEntry); 4]> =
            e.members_written(self.inline_members).collect();
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (user, m) in members {
            encode_member(self.buf, self.key, id, user, &m.state);
            self.put(batch, mcf, e.partition);
            self.stats.members += 1;
        }
    }

    /// The user's record when it changed, without changing the entry (see
    /// [`Sink::user`]).
    fn whole_user(&mut self, batch: &mut WriteBatch, ucf: &rocksdb::ColumnFamily, id: &str, u: &UserEntry) {
        if u.dirty {
            encode_value(self.buf, u.state.updated_ms, &u.state);
            keys::user_to(self.key, id);
            self.put(batch, ucf, u.partition);
            self.stats.users += 1;
        }
    }

    /// The account's records encoded early (see [`Store::encode_early`]):
    /// `n` records of `early` from `first`, its record then its changed
    /// members, nothing changed since.
    #[allow(clippy::too_many_arguments)]
    fn early(
        &mut self,
        batch: &mut WriteBatch,
        (acf, mcf, meta): (&rocksdb::ColumnFamily, &rocksdb::ColumnFamily, &rocksdb::ColumnFamily),
        id: &str,
        e: &mut AccountEntry,
        early: &ChangeRecords,
        first: u32,
        n: u32,
    ) {
        for i in first..first + n {
            let (cf, what) = if i == first { (acf, &mut self.stats.accounts) } else { (mcf, &mut self.stats.members) };
            Self::write(self.changelog.as_deref_mut(), batch, cf, early.get(i as usize));
            *what += 1;
        }
        e.dirty = false;
        Self::indexes(batch, meta, id, e);
        for m in e.members.values_mut() {
            m.dirty = false;
        }
    }

    /// The account's place in the sweep, queue and heard indexes, as its
    /// record now has it (derived: not in the changelog, whose account
    /// records carry the same).
    fn indexes(batch: &mut WriteBatch, meta: &rocksdb::ColumnFamily, id: &str, e: &mut AccountEntry) {
        let now = Mark::of(&e.state);
        let was = e.db_mark;
        let p = e.partition.to_be_bytes();
        if now.due != was.due {
            if was.due != 0 {
                batch.delete_cf(meta, keys::sweep(was.due, id));
            }
            if now.due != 0 {
                batch.put_cf(meta, keys::sweep(now.due, id), p);
            }
        }
        if now.queue != was.queue {
            if let Some(q) = was.queue {
                batch.delete_cf(meta, keys::queue(q, id));
            }
            if let Some(q) = now.queue {
                batch.put_cf(meta, keys::queue(q, id), p);
            }
        }
        if now.heard && !was.heard {
            batch.put_cf(meta, keys::heard(id), p);
        }
        e.db_mark = now;
    }

    /// The user's record when it changed.
    fn user(&mut self, batch: &mut WriteBatch, ucf: &rocksdb::ColumnFamily, id: &str, u: &mut UserEntry) {
        self.whole_user(batch, ucf, id, u);
        u.dirty = false;
    }
}

/// Whether a record value (`last_seen_ms | ...`) has gone unused for more
/// than `ttl_ms` by `watermark` (none is before any event time is known):
/// what the idle-TTL filter drops, and what a tombstone and a restore judge.
fn idle_past(value: &[u8], ttl_ms: i64, watermark: i64) -> bool {
    value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .is_some_and(|b| watermark > 0 && i64::from_be_bytes(b).saturating_add(ttl_ms) < watermark)
}

/// The idle TTL of a column family's records: a user record's clock lags
/// its last use by up to the refresh interval (see [`idle_refresh_ms`]).
fn idle_ttl_of(cf_name: &str, ttl_ms: i64, refresh_ms: i64) -> i64 {
    if cf_name == cf::USERS {
        ttl_ms + refresh_ms
    } else {
        ttl_ms
    }
}

/// What became of a record the idle-TTL filter dropped.
#[derive(Debug, PartialEq)]
enum Gone {
    /// Gone from the cache and RocksDB (with its input partition, when
    /// known): its changelog key gets a tombstone.
    Yes(Option<i32>),
    /// Still in RocksDB and idle (its compaction not installed yet).
    NotYet,
    /// In use again, or another version of it is.
    Alive,
}

/// What a commit wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    pub accounts: usize,
    pub members: usize,
    pub users: usize,
    pub cached_accounts: usize,
}

/// A state record's value, into `buf` (cleared first): its clock
/// (`last_seen_ms`, big-endian, what the idle-TTL filter reads), then the
/// record in postcard.
pub fn encode_value<T: Serialize>(buf: &mut Vec<u8>, last_seen_ms: i64, record: &T) {
    buf.clear();
    buf.extend_from_slice(&last_seen_ms.to_be_bytes());
    // postcard into a Vec cannot fail for these plain records. Straight
    // into `buf`, not through a Vec of its own.
    let out = postcard::to_extend(record, std::mem::take(buf)).expect("state records serialise");
    *buf = out;
}

/// An account's record: its key into `key`, its value into `buf`.
fn encode_account(buf: &mut Vec<u8>, key: &mut Vec<u8>, id: &str, state: &AccountState) {
    encode_value(buf, state.last_seen_ms, state);
    keys::account_to(key, id);
}

/// Whether the account's record keeps its members inside it: all of them
/// are cached (none has a record of its own), and they are few.
fn keeps_members_inside(e: &AccountEntry, inline_members: usize) -> bool {
    !e.members_on_disk && e.members.len() <= inline_members
}

/// An account's record with its members inside (see [`INLINE_MEMBERS`]):
/// the account's record, [`INLINE_MARK`], then its members by user. Its
/// clock is the account's (no member's is later: every use of a member is
/// one of its account).
fn encode_account_with_members(buf: &mut Vec<u8>, key: &mut Vec<u8>, id: &str, e: &AccountEntry) {
    encode_account(buf, key, id, &e.state);
    let mut members: smallvec::SmallVec<[(&str, &MemberState); INLINE_MEMBERS]> =
        e.members.iter().map(|(u, m)| (u, &m.state)).collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    buf.push(INLINE_MARK);
    let out = postcard::to_extend(&members, std::mem::take(buf)).expect("state records serialise");
    *buf = out;
}

/// An account record's value: the account, and its members when they are
/// inside it.
pub(crate) fn decode_account_record(v: &[u8]) -> Result<(AccountState, Option<InlineMembers>), StateError> {
    let corrupt = |detail: String| StateError::Corrupt { what: "account", detail };
    let body = v.get(8..).ok_or_else(|| corrupt("shorter than its header".into()))?;
    let (state, rest) = super::account::decode_account_rest(body).map_err(|e| corrupt(e.to_string()))?;
    match rest.split_first() {
        Some((&INLINE_MARK, members)) => {
            let members: InlineMembers =
                postcard::from_bytes(members).map_err(|e| corrupt(format!("its members: {e}")))?;
            Ok((state, Some(members)))
        }
        _ => Ok((state, None)),
    }
}

/// A member's record: its key into `key`, its value into `buf` (its clock
/// the later of its first and latest use).
fn encode_member(buf: &mut Vec<u8>, key: &mut Vec<u8>, account: &str, user: &str, state: &MemberState) {
    encode_value(buf, state.last_seen_ms.max(state.first_seen_ms), state);
    keys::member_to(key, account, user);
}

pub(crate) fn decode_value<T: DeserializeOwned>(v: &[u8], what: &'static str) -> Result<T, StateError> {
    let body = v.get(8..).ok_or_else(|| StateError::Corrupt { what, detail: "shorter than its header".into() })?;
    postcard::from_bytes(body).map_err(|e| StateError::Corrupt { what, detail: e.to_string() })
}

/// An account record's value (`last_seen_ms | postcard`), of either shape
/// (see [`super::account::decode_account`]).
pub(crate) fn decode_account_value(v: &[u8]) -> Result<AccountState, StateError> {
    let body =
        v.get(8..).ok_or_else(|| StateError::Corrupt { what: "account", detail: "shorter than its header".into() })?;
    super::account::decode_account(body).map_err(|e| StateError::Corrupt { what: "account", detail: e.to_string() })
}

fn get<T: DeserializeOwned>(db: &DB, cf_name: &str, key: &[u8], what: &'static str) -> Result<Option<T>, StateError> {
    let cf = db.cf_handle(cf_name).expect("column family");
    match db.get_pinned_cf(cf, key)? {
        None => Ok(None),
        Some(v) => decode_value(&v, what).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ids::ID_SHARDS;
    use std::path::Path;

    /// A track call of `user` in `account`, as the decoder makes it.
    fn track_event(account: &str, user: &str) -> crate::decode::Event {
        crate::decode::Event {
            kind: crate::decode::Kind::Track,
            user_id: user.into(),
            anonymous: false,
            anonymous_id: None,
            account_id: Some(account.into()),
            time_ms: 1,
            name: None,
            path: None,
            traits: None,
            message_id: None,
            previous_id: None,
        }
    }

    fn cfg(dir: &Path) -> StateConfig {
        let mut c = crate::config::Config::default_config().state;
        c.dir = dir.to_path_buf();
        c.cache_accounts = 2;
        c.cache_users = Some(2);
        c
    }

    /// A temporary state's tables keep their filters and indexes whole,
    /// and have no block cache; a kept state's stay partitioned, in the
    /// block cache (its memory bounded by the cache however large it
    /// grows). Read from the options RocksDB writes beside its tables.
    #[test]
    fn only_a_temporary_state_keeps_its_filters_outside_the_block_cache() {
        fn table_options(dir: &Path, cf_name: &str) -> String {
            let options = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("OPTIONS-"))
                .max()
                .expect("an options file");
            let text = std::fs::read_to_string(options).unwrap();
            let header = format!("[TableOptions/BlockBasedTable \"{cf_name}\"]");
            let section = &text[text.find(&header).unwrap_or_else(|| panic!("{header}")) + header.len()..];
            section[..section.find("\n[").unwrap_or(section.len())].to_string()
        }
        let has = |section: &str, line: &str| section.lines().any(|l| l.trim() == line);
        for ephemeral in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let s = if ephemeral { Store::open_ephemeral(&cfg(dir.path())) } else { Store::open(&cfg(dir.path())) };
            let s = s.unwrap();
            for name in [cf::ACCOUNTS, cf::USERS, cf::MEMBERS] {
                let t = table_options(dir.path(), name);
                assert!(has(&t, "filter_policy=bloomfilter"), "{name}: {t}");
                assert_eq!(has(&t, "cache_index_and_filter_blocks=false"), ephemeral, "{name}: {t}");
                assert_eq!(has(&t, "partition_filters=true"), !ephemeral, "{name}: {t}");
                assert_eq!(has(&t, "index_type=kTwoLevelIndexSearch"), !ephemeral, "{name}: {t}");
                assert_eq!(has(&t, "no_block_cache=true"), ephemeral, "{name}: {t}");
            }
            drop(s);
        }
    }

    /// Users are cached apart from accounts: twice as many unless
    /// `cache_users` says otherwise (four times in a temporary state,
    /// which has no block cache), each side trimmed to its own number at a
    /// commit.
    #[test]
    fn users_are_cached_apart_from_accounts_twice_as_many_by_default() {
        for (ephemeral, cache_users, kept_users) in
            [(false, None, 4), (false, Some(3), 3), (true, None, 8), (true, Some(3), 3)]
        {
            let dir = tempfile::tempdir().unwrap();
            let mut c = cfg(dir.path());
            c.cache_users = cache_users;
            assert_eq!(c.users_capacity(ephemeral), kept_users);
            let mut s = if ephemeral { Store::open_ephemeral(&c) } else { Store::open(&c) }.unwrap();
            for i in 0..10 {
                s.account(&format!("a{i}")).unwrap().dirty = true;
                let u = s.user(&format!("u{i}")).unwrap();
                u.state.account = Some(format!("a{i}").as_str().into());
                u.dirty = true;
            }
            let stats = s.commit(&[("t".into(), 0, 10)]).unwrap();
            assert_eq!(stats.cached_accounts, 2, "accounts trimmed to cache_accounts");
            assert_eq!(s.users.len(), kept_users, "users trimmed to their own capacity ({ephemeral}, {cache_users:?})");
            // The most recently used stay; the others are read back whole.
            assert!(s.users.peek("u9").is_some() && s.users.peek("u0").is_none());
            assert_eq!(s.user("u0").unwrap().state.account.as_deref(), Some("a0"));
        }
    }

    /// RocksDB's flush and compaction threads run at the lowest CPU
    /// priority (see `Store::open`): the thread that ran a store's flush
    /// has `nice` 19.
    #[cfg(target_os = "linux")]
    #[test]
    fn rocksdb_background_threads_run_at_the_lowest_priority() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        s.account("a").unwrap().dirty = true;
        let p = s.prepare(&[]);
        s.write(p, &[]).unwrap();
        s.written();
        s.flush_to_disk().unwrap();
        // (`/proc/self/task/<tid>/stat`: "tid (comm) state ...", the nice
        // value the 19th field, the 17th after the name.)
        let nice: Vec<i64> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
                (name == "rocksdb:high").then(|| rest.split(' ').nth(16)?.parse().ok())?
            })
            .collect();
        assert!(nice.contains(&19), "the flush threads' nice values: {nice:?}");
    }

    /// A store's own cap on message ids in memory is the shipped
    /// configuration's default (`input.dedupe_memory_ids`): the number is
    /// written in both places.
    #[test]
    fn the_stores_id_cap_is_the_configured_default() {
        assert_eq!(crate::config::Config::default_config().input.dedupe_memory_ids, MEMORY_IDS);
    }

    /// The ids in memory, spread over their tables, are counted once each
    /// however they are filed, filed again or removed; a stale time is
    /// replaced, a fresh one kept.
    #[test]
    fn ids_in_memory_are_counted_once_across_their_tables() {
        let mut m = IdMap::default();
        let ids: Vec<[u8; 16]> =
            (0..1_000u32).map(|i| keys::dedupe(&format!("m{i}"))[1..].try_into().unwrap()).collect();
        assert!(ids.iter().map(IdMap::table).collect::<HashSet<_>>().len() > ID_SHARDS / 2, "spread");
        for (i, k) in ids.iter().enumerate() {
            assert!(!m.held_or_file(*k, i as i64, |_| true), "new");
        }
        m.insert(ids[0], 5);
        assert_eq!(m.len(), 1_000);
        assert_eq!(m.get(&ids[0]), Some(5));
        assert!(m.held_or_file(ids[1], 99, |t| t == 1), "fresh: held, kept");
        assert_eq!(m.get(&ids[1]), Some(1));
        assert!(!m.held_or_file(ids[1], 99, |_| false), "stale: filed again");
        assert_eq!((m.get(&ids[1]), m.len()), (Some(99), 1_000));
        m.remove(&ids[2]);
        m.remove(&ids[2]);
        assert_eq!((m.get(&ids[2]), m.len()), (None, 999));
        assert!(m.contains_key(&ids[3]) && !m.contains_key(&ids[2]));
        m.clear();
        assert_eq!((m.len(), m.get(&ids[3])), (0, None));
    }

    /// The cache is trimmed once a thirty-second past its capacity, back to
    /// the capacity; a small one at every commit.
    #[test]
    fn the_cache_is_trimmed_past_a_margin_back_to_its_capacity() {
        assert_eq!(excess(3_200, 3_300), 0);
        assert_eq!(excess(3_200, 3_301), 101);
        assert_eq!((excess(2, 2), excess(2, 3), excess(1, 5)), (0, 1, 4));
        assert_eq!(excess(usize::MAX, usize::MAX), 0);
    }

    /// Compaction drops what was not used for `state.idle_ttl_days` of
    /// event time, and nothing sooner: a user record, whose clock the
    /// engine moves only every [`idle_refresh_ms`], is kept that much
    /// longer (its last use may be that much later than its clock).
    #[test]
    fn idle_records_are_dropped_and_users_kept_through_their_refresh_lag() {
        const D: i64 = 86_400_000;
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.idle_ttl_days = 160;
        assert_eq!(idle_refresh_ms(160), 10 * D);
        assert_eq!(idle_refresh_ms(400), 25 * D);
        assert_eq!(idle_refresh_ms(8), D);
        let mut s = Store::open(&c).unwrap();
        let t0 = 1_000 * D;
        for (a, seen) in [("idle", t0), ("recent", t0 + 20 * D)] {
            let e = s.account(a).unwrap();
            e.state.first_seen_ms = seen;
            e.state.last_seen_ms = seen;
            e.dirty = true;
        }
        for (u, clock) in [("idle", t0), ("lagging", t0 + 5 * D)] {
            let e = s.user(u).unwrap();
            e.state.updated_ms = clock;
            e.dirty = true;
        }
        // 172 days on: past the TTL of the idle account and of the idle
        // user's clock (and its lag), not of the lagging user's clock and
        // lag (175 days), nor of the recent account (180).
        s.set_watermark_ms(t0 + 172 * D);
        s.commit(&[]).unwrap();
        let db = &s.reader.db;
        for name in cf::ALL {
            db.compact_range_cf(db.cf_handle(name).unwrap(), None::<&[u8]>, None::<&[u8]>);
        }
        let r = s.reader();
        assert!(r.account("idle").unwrap().is_none(), "an account idle past the TTL is dropped");
        assert!(r.account("recent").unwrap().is_some());
        assert!(r.user("idle").unwrap().is_none(), "a user idle past the TTL and the refresh lag is dropped");
        assert!(r.user("lagging").unwrap().is_some(), "a user whose clock lags its use is kept");
    }

    /// A user's tombstone goes to every partition its writer owned, so a
    /// restore can meet it after a newer record of the user from another
    /// partition (the user came back after its record expired): it spares
    /// that record, and deletes the version it was written for.
    #[test]
    fn a_user_tombstone_from_another_partition_spares_a_live_record() {
        const D: i64 = 86_400_000;
        let t0 = 1_000 * D;
        let user = |updated_ms: i64| {
            let mut v = Vec::new();
            encode_value(
                &mut v,
                updated_ms,
                &UserState { account: Some("a".into()), updated_ms, ..Default::default() },
            );
            (keys::user("u"), v)
        };
        let tombstone = || (keys::user("u"), Vec::new());
        let marker = |partition: i32, next: i64, watermark: i64| {
            (keys::offset("events", partition), [next.to_be_bytes(), watermark.to_be_bytes()].concat())
        };
        let store = |dir: &Path| {
            let mut c = cfg(dir);
            c.idle_ttl_days = 30;
            Store::open(&c).unwrap()
        };
        // Came back at t0 + 100 days on partition 1; the tombstone of its
        // expiry (at t0 + 60 days) is on partition 0, restored after.
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut s = store(a.path());
        s.apply_changelog(1, &[user(t0 + 100 * D), marker(1, 5, t0 + 100 * D)], 2).unwrap();
        s.apply_changelog(0, &[tombstone(), marker(0, 7, t0 + 100 * D)], 2).unwrap();
        let u = s.peek_user("u").unwrap().expect("the live record is spared");
        assert_eq!(u.updated_ms, t0 + 100 * D);

        // The version the tombstone was written for (last used at t0) goes,
        // whether it was restored before the tombstone or in the same call.
        let mut s = store(b.path());
        s.apply_changelog(1, &[user(t0), marker(1, 5, t0 + 10 * D)], 2).unwrap();
        assert!(s.peek_user("u").unwrap().is_some());
        s.apply_changelog(0, &[tombstone(), marker(0, 7, t0 + 60 * D)], 2).unwrap();
        assert!(s.peek_user("u").unwrap().is_none(), "the expired version is deleted");
        s.apply_changelog(2, &[user(t0 + 70 * D), tombstone(), marker(2, 1, t0 + 70 * D)], 2).unwrap();
        assert!(s.peek_user("u").unwrap().is_some(), "put in the same call, live: spared");
        s.apply_changelog(2, &[user(t0 + 70 * D), tombstone(), marker(2, 2, t0 + 150 * D)], 3).unwrap();
        assert!(s.peek_user("u").unwrap().is_none(), "put in the same call, idle by then: deleted");
    }

    /// A record compaction drops for idleness gets a tombstone on the
    /// changelog at the next commit (see [`super::expiry`]): on its own
    /// partition when the record or its account names it and this
    /// instance owns it, on every owned partition when neither does, on
    /// none of a partition owned elsewhere; and none while the record is
    /// in use again or still readable. A restore drops a tombstoned record,
    /// and one already idle past the TTL.
    #[test]
    fn records_dropped_for_idleness_leave_the_changelog() {
        const D: i64 = 86_400_000;
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.idle_ttl_days = 160;
        let mut s = Store::open(&c).unwrap();
        // (Members in records of their own, which expire on their own.)
        s.members_apart();
        s.set_changelog(true);
        s.set_owned(vec![0, 1, 2]);
        let t0 = 1_000 * D;
        let put = |s: &mut Store, account: &str, partition: i32, seen: i64, user: &str, user_seen: i64| {
            s.set_partition(partition);
            let e = s.account(account).unwrap();
            e.state.first_seen_ms = seen;
            e.state.last_seen_ms = seen;
            e.state.partition = Some(partition);
            e.dirty = true;
            let m = s.reader().member_into(s.account(account).unwrap(), account, user).unwrap();
            m.state.first_seen_ms = user_seen;
            m.state.last_seen_ms = user_seen;
            m.dirty = true;
            let u = s.user(user).unwrap();
            u.state.updated_ms = user_seen;
            u.dirty = true;
        };
        put(&mut s, "idle", 2, t0, "u-idle", t0);
        put(&mut s, "elsewhere", 5, t0, "u-elsewhere", t0);
        put(&mut s, "back", 1, t0, "u-back", t0);
        // A live account with an idle member.
        put(&mut s, "recent", 0, t0 + 100 * D, "u-gone", t0);
        let u = s.user("u-fresh").unwrap();
        u.state.updated_ms = t0 + 100 * D;
        u.dirty = true;
        s.set_watermark_ms(t0 + 100 * D);
        s.commit(&[]).unwrap();
        s.discard_cache();
        // 200 days on: everything at t0 is past the TTL; "back" is used
        // again before its compaction.
        s.set_watermark_ms(t0 + 200 * D);
        s.set_partition(1);
        s.account("back").unwrap();
        s.user("u-back").unwrap();
        s.compact_all();
        let p = s.prepare(&[]);
        let mut tombstones: Vec<(Vec<u8>, i32)> =
            p.changelog.iter().filter(|r| r.value.is_empty()).map(|r| (r.key.to_vec(), r.partition)).collect();
        tombstones.sort();
        let all = |k: Vec<u8>| [0, 1, 2].map(|p| (k.clone(), p));
        // A member goes with its account: cached ("back", used again
        // without this member), in RocksDB ("recent"), or dropped with it
        // ("idle"; "elsewhere" is another instance's). A user names no
        // partition: all owned.
        let mut want = vec![
            (keys::account("idle"), 2),
            (keys::member("idle", "u-idle"), 2),
            (keys::member("back", "u-back"), 1),
            (keys::member("recent", "u-gone"), 0),
        ];
        for u in ["u-idle", "u-gone", "u-elsewhere"] {
            want.extend(all(keys::user(u)));
        }
        want.sort();
        assert_eq!(tombstones, want);
        s.write(p, &[]).unwrap();
        assert!(s.prepare(&[]).changelog.is_empty(), "each once");

        // Still readable and idle (not compacted): looked at again, not
        // tombstoned, until given up.
        put(&mut s, "stale", 1, t0, "u-stale", t0 + 150 * D);
        s.commit(&[]).unwrap();
        s.discard_cache();
        s.expired.note(&keys::account("stale"), Some(1));
        for _ in 0..3 {
            let p = s.prepare(&[]);
            assert!(p.changelog.is_empty(), "{:?}", p.changelog);
            s.write(p, &[]).unwrap();
        }
        let waiting = s.expired.take(10);
        assert_eq!(waiting.len(), 1, "looked at again later");
        assert!(waiting[0].retry_at.is_some());
        // Given up once it has waited long enough (a monotonic clock
        // younger than that cannot say so).
        if let Some(long_ago) = std::time::Instant::now().checked_sub(expiry::PATIENCE) {
            s.expired.again(waiting.into_iter().map(|f| Found { noted: long_ago, retry_at: None, ..f }).collect());
            let p = s.prepare(&[]);
            assert!(p.changelog.is_empty(), "{:?}", p.changelog);
            s.write(p, &[]).unwrap();
            assert!(s.expired.take(10).is_empty(), "given up");
        }

        // A restore: a tombstone drops the record, and a record idle past
        // the TTL is not written.
        let rdir = tempfile::tempdir().unwrap();
        let mut r = Store::open(&cfg(rdir.path())).unwrap();
        let mut v = Vec::new();
        let record = |v: &mut Vec<u8>, seen: i64| {
            encode_value(v, seen, &AccountState { last_seen_ms: seen, ..Default::default() });
            v.clone()
        };
        let marker = |next: i64, watermark: i64| {
            let mut m = next.to_be_bytes().to_vec();
            m.extend_from_slice(&watermark.to_be_bytes());
            (keys::offset("events", 1), m)
        };
        let records = vec![
            (keys::account("a"), record(&mut v, t0 + 500 * D)),
            (keys::account("b"), record(&mut v, t0 + 500 * D)),
            marker(10, t0 + 500 * D),
        ];
        r.apply_changelog(1, &records, 3).unwrap();
        assert!(r.reader().account("a").unwrap().is_some());
        let records = vec![
            (keys::account("a"), Vec::new()),
            (keys::account("old"), record(&mut v, t0)),
            (keys::account("b"), record(&mut v, t0 + 501 * D)),
            marker(20, t0 + 501 * D),
        ];
        r.apply_changelog(1, &records, 7).unwrap();
        assert!(r.reader().account("a").unwrap().is_none(), "a tombstone drops the record");
        assert!(r.reader().account("old").unwrap().is_none(), "idle past the TTL: not restored");
        assert_eq!(r.reader().account("b").unwrap().map(|b| b.last_seen_ms), Some(t0 + 501 * D));
        // A compacted changelog read by a new instance: the one marker left
        // comes after every record, and judges them all.
        let fresh = tempfile::tempdir().unwrap();
        let mut r = Store::open(&cfg(fresh.path())).unwrap();
        let records = vec![
            (keys::account("old"), record(&mut v, t0)),
            (keys::account("b"), record(&mut v, t0 + 501 * D)),
            marker(20, t0 + 501 * D),
        ];
        r.apply_changelog(1, &records, 3).unwrap();
        assert!(r.reader().account("old").unwrap().is_none(), "idle as of the marker after it: not restored");
        assert!(r.reader().account("b").unwrap().is_some());
    }

    /// A record read ahead ([`prefetch`]) is taken only while RocksDB still
    /// holds it: not once a commit that wrote it has completed, nor after the
    /// cache was dropped; a record that commit did not write still is.
    #[test]
    fn records_read_ahead_are_taken_only_while_rocksdb_still_holds_them() {
        use crate::decode::Event;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        // (Members read ahead on their own.)
        s.members_apart();
        let set = |s: &mut Store, a: &str, seq: u64| {
            let e = s.account(a).unwrap();
            e.state.seq = seq;
            e.dirty = true;
            let m = s.reader().member_into(s.account(a).unwrap(), a, "u").unwrap();
            m.state.first_seen_ms = seq as i64;
            m.dirty = true;
            let u = s.user("u").unwrap();
            u.state.updated_ms = seq as i64;
            u.dirty = true;
        };
        let ev = |a: &str| track_event(a, "u");
        // Commits, then pushes what it wrote out of the cache (capacity 2),
        // so that the engine would read it from RocksDB.
        let commit_and_evict = |s: &mut Store| {
            s.commit(&[]).unwrap();
            for x in ["x", "y", "z"] {
                s.account(x).unwrap();
                s.user(x).unwrap();
            }
            s.commit(&[]).unwrap();
        };
        set(&mut s, "a", 1);
        set(&mut s, "b", 1);
        commit_and_evict(&mut s);
        let mut p = s.prefetcher();
        let read_a = p.fetch(&ev("a"));
        assert_eq!(read_a.account.as_ref().and_then(|f| f.record.as_ref()).map(|(a, _)| a.seq), Some(1));
        let read_b = s.prefetcher().fetch(&ev("b"));
        // A commit writes "a" (and the user) after the reads began.
        set(&mut s, "a", 2);
        commit_and_evict(&mut s);
        assert!(!s.accounts.contains("a") && !s.accounts.contains("b") && !s.users.contains("u"));
        s.set_fetched(read_a);
        assert_eq!(s.account("a").unwrap().state.seq, 2, "the read ahead of a was refused");
        let m = s.reader().member_into(s.account("a").unwrap(), "a", "u").unwrap().state.first_seen_ms;
        assert_eq!(m, 2, "nor was its member record taken");
        assert_eq!(s.user("u").unwrap().state.updated_ms, 2);
        // "b" was not written since its read: taken as read (the read is
        // marked so that taking it shows).
        let mut read_b = read_b;
        read_b.account.as_mut().unwrap().record.as_mut().unwrap().0.seq = 77;
        s.set_fetched(read_b);
        assert_eq!(s.account("b").unwrap().state.seq, 77, "the read ahead of b was taken");
        // A dropped cache refuses every read before it.
        commit_and_evict(&mut s);
        let mut read_b = s.prefetcher().fetch(&ev("b"));
        read_b.account.as_mut().unwrap().record.as_mut().unwrap().0.seq = 78;
        s.discard_cache();
        s.set_fetched(read_b);
        assert_eq!(s.account("b").unwrap().state.seq, 1, "refused after the cache was dropped");

        // An account cached without the event user's member record: the
        // member alone is read ahead, and taken into the entry while
        // RocksDB still holds it.
        let as_user = |a: &str, u: &str| Event { user_id: u.into(), ..ev(a) };
        set(&mut s, "a", 3);
        commit_and_evict(&mut s);
        assert_eq!(s.account("a").unwrap().members.len(), 0, "loaded without its members");
        let mut p = s.prefetcher();
        assert!(p.fetch(&as_user("a", "v")).account.is_some(), "a not cached yet, as the reader guesses");
        let mut read = p.fetch(&as_user("a", "u"));
        assert!(read.account.is_none(), "a is cached now, as the reader guesses");
        let m = read.member.as_mut().expect("the member alone is read");
        assert_eq!(m.state.as_ref().map(|m| m.first_seen_ms), Some(3));
        m.state.as_mut().unwrap().first_seen_ms = 55;
        assert!(p.fetch(&as_user("a", "u")).member.is_none(), "seen: probably cached now");
        s.set_fetched(read);
        let m = s.reader().member_into(s.account("a").unwrap(), "a", "u").unwrap().state.first_seen_ms;
        assert_eq!(m, 55, "the member read ahead was taken");
        // Refused once the cache was dropped (the engine reads it itself).
        let mut read = p.fetch(&as_user("a", "w"));
        let m = read.member.as_mut().expect("read");
        assert!(m.state.is_none(), "no such member yet");
        m.state = Some(MemberState { first_seen_ms: 56, ..Default::default() });
        s.discard_cache();
        s.set_fetched(read);
        let m = s.reader().member_into(s.account("a").unwrap(), "a", "w").unwrap().state.first_seen_ms;
        assert_eq!(m, 0, "refused after the cache was dropped");
    }

    /// A write-back store writes only what its cache evicts, reads
    /// evicted entries back (from the batch in flight, then RocksDB), and
    /// lists accounts that sales heard of whether they are in memory or
    /// written.
    #[test]
    fn a_write_back_store_writes_what_it_evicts_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open_ephemeral(&cfg(dir.path())).unwrap();
        s.set_write_back(true).unwrap();
        let sent = |id: &str| crate::state::account::Sent {
            version: "v".into(),
            id: id.into(),
            rules: vec!["r".into()],
            at_ms: 5,
        };
        for i in 0..4 {
            let e = s.account(&format!("a{i}")).unwrap();
            e.state.seq = 10 + i;
            e.state.first_seen_ms = 900;
            e.state.last_seen_ms = 1_000;
            if i % 2 == 0 {
                e.state.sent.push(sent(&format!("e{i}")));
            }
            e.dirty = true;
        }
        s.user("u1").unwrap().state.account = Some("a0".into());
        s.user("u1").unwrap().dirty = true;
        let prepared = s.prepare(&[("t".into(), 0, 4)]);
        // In flight: the evicted accounts are read from memory.
        assert_eq!(s.peek_account("a0").unwrap().unwrap().seq, 10);
        assert_eq!(s.reader().account("a0").unwrap(), None, "not written yet");
        // (Encoded by the writer, on the commit thread.)
        let stats = s.writer().write(prepared, &[]).unwrap();
        assert_eq!(stats.accounts, 2, "the two accounts past the cache's 2 are written, no more");
        assert_eq!(stats.users, 0, "the one user fits the cache");
        s.written();
        // Durable: read back from RocksDB, and the cached ones from memory.
        assert_eq!(s.reader().account("a0").unwrap().unwrap().seq, 10);
        assert_eq!(s.reader().account("a2").unwrap(), None, "still only in memory");
        let mut heard = s.heard_accounts().unwrap();
        heard.sort();
        assert_eq!(heard, vec![("a0".to_string(), 0), ("a2".to_string(), 0)]);
        assert_eq!(s.account("a0").unwrap().state.seq, 10);
        assert_eq!(s.account("a1").unwrap().state.seq, 11);
        assert_eq!(s.account("a3").unwrap().state.seq, 13);
    }

    /// An account a write-back commit evicted, handed out again before
    /// that commit is durable (the commit thread encodes it meanwhile),
    /// comes back as the commit writes it: its changes kept, nothing left
    /// to write, and its members in records of their own when there were
    /// more than its record keeps inside. A user likewise.
    #[test]
    fn an_account_evicted_and_handed_out_before_the_write_is_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open_ephemeral(&cfg(dir.path())).unwrap();
        s.set_write_back(true).unwrap();
        // a0 (evicted first) with more members than a record keeps
        // inside, a1 with one, a2 and a3 cached.
        for (i, members) in [(0, INLINE_MEMBERS + 2), (1, 1), (2, 0), (3, 0)] {
            let a = format!("a{i}");
            for u in 0..members {
                let m = s.reader().member_into(s.account(&a).unwrap(), &a, &format!("u{u}")).unwrap();
                m.state.first_seen_ms = u as i64 + 1;
                m.dirty = true;
            }
            let e = s.account(&a).unwrap();
            e.state.seq = 10 + i;
            e.state.first_seen_ms = 900;
            e.dirty = true;
        }
        for u in ["v0", "v1", "v2"] {
            let v = s.user(u).unwrap();
            v.state.account = Some("a0".into());
            v.dirty = true;
        }
        let prepared = s.prepare(&[("t".into(), 0, 4)]);
        assert!(s.accounts.peek("a0").is_none() && s.accounts.peek("a1").is_none(), "both evicted");
        // Handed out again while the batch is in flight.
        let e = s.account("a0").unwrap();
        assert_eq!(e.state.seq, 10);
        assert_eq!(e.members.len(), INLINE_MEMBERS + 2);
        assert!(!e.changed(), "nothing left to write");
        assert!(e.members_on_disk, "its members are written apart");
        let e = s.account("a1").unwrap();
        assert_eq!((e.state.seq, e.members.len()), (11, 1));
        assert!(!e.changed());
        assert!(!e.members_on_disk, "its one member is inside its record");
        let v = s.user("v0").unwrap();
        assert_eq!((v.state.account.as_deref(), v.dirty), (Some("a0"), false));
        let stats = s.writer().write(prepared, &[]).unwrap();
        assert_eq!((stats.accounts, stats.members, stats.users), (2, INLINE_MEMBERS + 2, 1));
        s.written();
        // What RocksDB now holds is what was handed out.
        assert_eq!(s.reader().account("a0").unwrap().unwrap().seq, 10);
        assert_eq!(s.reader().members("a0").unwrap().len(), INLINE_MEMBERS + 2);
        assert_eq!(s.reader().account("a1").unwrap().unwrap().seq, 11);
        assert_eq!(s.reader().user("v0").unwrap().unwrap().account.as_deref(), Some("a0"));
    }

    /// A write-back store with the changelog on encodes what it evicts at
    /// once, so that the records are in the changelog the commit writes
    /// before the state (not left for the commit thread).
    #[test]
    fn a_write_back_store_with_a_changelog_puts_what_it_evicts_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open_ephemeral(&cfg(dir.path())).unwrap();
        s.set_write_back(true).unwrap();
        s.set_changelog(true);
        for i in 0..4 {
            let e = s.account(&format!("a{i}")).unwrap();
            e.state.seq = 10 + i;
            e.state.first_seen_ms = 900;
            e.dirty = true;
        }
        let prepared = s.prepare(&[("t".into(), 0, 4)]);
        let accounts: Vec<Vec<u8>> = prepared
            .changelog
            .iter()
            .filter(|r| r.key.first() == Some(&keys::ACCOUNT))
            .map(|r| r.key.to_vec())
            .collect();
        assert_eq!(
            accounts,
            vec![keys::account("a0"), keys::account("a1")],
            "the two least recent, in the order evicted"
        );
        let stats = s.writer().write(prepared, &[]).unwrap();
        assert_eq!(stats.accounts, 2, "written once");
        s.written();
        assert_eq!(s.reader().account("a1").unwrap().unwrap().seq, 11);
    }

    /// An account with more than [`CROWDED`] members cached has its
    /// changed members written with the next commit, and dropped from the
    /// cache once durable (read back from RocksDB when needed), whether the
    /// store writes back or not (a write-back store finds it crowded when
    /// the account is handed out).
    #[test]
    fn a_crowded_accounts_members_leave_the_cache_once_written() {
        for write_back in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = if write_back {
                let mut s = Store::open_ephemeral(&cfg(dir.path())).unwrap();
                s.set_write_back(true).unwrap();
                s
            } else {
                Store::open(&cfg(dir.path())).unwrap()
            };
            let add_members = |s: &mut Store, from: usize, to: usize| {
                for u in from..to {
                    let m = s.reader().member_into(s.account("big").unwrap(), "big", &format!("u{u}")).unwrap();
                    m.state.first_seen_ms = u as i64 + 1;
                    m.dirty = true;
                }
            };
            add_members(&mut s, 0, CROWDED + 10);
            s.account("big").unwrap().dirty = true;
            s.commit(&[]).unwrap();
            let cached = s.accounts.peek("big").map_or(usize::MAX, |e| e.members.len());
            assert_eq!(cached, 0, "dropped once written (write-back: {write_back})");
            let m = s.reader().member_into(s.account("big").unwrap(), "big", "u7").unwrap();
            assert_eq!(m.state.first_seen_ms, 8, "read back from RocksDB");
        }
    }

    /// An account with no record in RocksDB has no members there: its
    /// users are looked up in its cache entry only, so a member record left
    /// behind without its account (as when compaction drops an idle
    /// account's record before its members') is not read. An account read
    /// from RocksDB reads its members there.
    #[test]
    fn a_new_accounts_members_are_looked_up_in_its_entry_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        // (Members in records of their own, as an account with many has.)
        s.members_apart();
        for a in ["kept", "dropped"] {
            let m = s.reader().member_into(s.account(a).unwrap(), a, "u1").unwrap();
            m.state.first_seen_ms = 7;
            m.dirty = true;
            s.account(a).unwrap().dirty = true;
        }
        s.commit(&[]).unwrap();
        let acf = s.reader.db.cf_handle(cf::ACCOUNTS).unwrap();
        s.reader.db.delete_cf(acf, keys::account("dropped")).unwrap();
        s.discard_cache();
        assert!(s.reader().member("dropped", "u1").unwrap().is_some(), "the member record is still there");
        let m = s.reader().member_into(s.account("dropped").unwrap(), "dropped", "u1").unwrap();
        assert_eq!(m.state.first_seen_ms, 0, "a new account's member is new");
        let m = s.reader().member_into(s.account("kept").unwrap(), "kept", "u1").unwrap();
        assert_eq!(m.state.first_seen_ms, 7, "read back with its account");
    }

    /// An account encoded early (at the end of its event) is written as
    /// encoded; one handed out again before the commit is written as it is
    /// last, in RocksDB and on the changelog alike, once each.
    #[test]
    fn an_account_encoded_early_is_written_as_it_is_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        // (Its member in a record of its own; inside it, see
        // `an_accounts_few_members_are_kept_inside_its_record`.)
        s.members_apart();
        s.set_changelog(true);
        let change = |s: &mut Store, a: &str, seq: u64, seen: i64| {
            let e = s.account(a).unwrap();
            e.state.seq = seq;
            e.dirty = true;
            let m = s.reader().member_into(s.account(a).unwrap(), a, "u1").unwrap();
            m.state.first_seen_ms = seen;
            m.dirty = true;
            s.encode_early(a);
        };
        // (Members written apart from the start: accounts already written.)
        for a in ["once", "twice"] {
            change(&mut s, a, 0, 1);
        }
        s.commit(&[]).unwrap();
        change(&mut s, "once", 1, 5);
        change(&mut s, "twice", 1, 5);
        assert!(s.accounts.peek("twice").unwrap().early.is_some(), "encoded early");
        change(&mut s, "twice", 2, 9);
        assert!(s.accounts.peek("twice").unwrap().early.is_none(), "changed again: left to the commit");
        let p = s.prepare(&[]);
        let records =
            |key: Vec<u8>| p.changelog.iter().filter(|r| r.key == key).map(|r| r.value.to_vec()).collect::<Vec<_>>();
        for (a, seq, seen) in [("once", 1, 5), ("twice", 2, 9)] {
            let accounts = records(keys::account(a));
            assert_eq!(accounts.len(), 1, "{a}: one record");
            assert_eq!(decode_account_value(&accounts[0]).unwrap().seq, seq, "{a}");
            let members = records(keys::member(a, "u1"));
            assert_eq!(members.len(), 1, "{a}: one member record");
            assert_eq!(decode_value::<MemberState>(&members[0], "member").unwrap().first_seen_ms, seen, "{a}");
        }
        s.writer().write(p, &[]).unwrap();
        s.written();
        s.discard_cache();
        for (a, seq, seen) in [("once", 1, 5), ("twice", 2, 9)] {
            assert_eq!(s.reader().account(a).unwrap().unwrap().seq, seq, "{a} in RocksDB");
            assert_eq!(s.reader().member(a, "u1").unwrap().unwrap().first_seen_ms, seen, "{a} in RocksDB");
        }
        assert!(s.early.is_empty(), "nothing left over for the next batch");
    }

    /// An account with at most [`INLINE_MEMBERS`] members keeps them
    /// inside its one record (in RocksDB and on the changelog, where a
    /// restore brings them along); encoded early, it is that one record;
    /// past the limit its members move to records of their own, all in the
    /// batch that passes it, and the record no longer holds them.
    #[test]
    fn an_accounts_few_members_are_kept_inside_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        s.set_changelog(true);
        let add = |s: &mut Store, a: &str, user: &str, seen: i64| {
            s.account(a).unwrap().dirty = true;
            let m = s.reader().member_into(s.account(a).unwrap(), a, user).unwrap();
            m.state.first_seen_ms = seen;
            m.dirty = true;
            s.encode_early(a);
        };
        add(&mut s, "small", "u2", 2);
        add(&mut s, "small", "u1", 1);
        add(&mut s, "early", "u1", 3);
        assert_eq!(s.accounts.peek("early").unwrap().early.map(|(_, n)| n), Some(1), "one record, encoded early");
        assert!(s.accounts.peek("small").unwrap().late, "handed out again: encoded by the commit");
        let p = s.prepare(&[]);
        let mut keys_written: Vec<Vec<u8>> = p.changelog.iter().map(|r| r.key.to_vec()).collect();
        keys_written.sort();
        assert_eq!(keys_written, vec![keys::account("early"), keys::account("small")], "no member records");
        let restore: Vec<(Vec<u8>, Vec<u8>)> = p.changelog.iter().map(|r| (r.key.to_vec(), r.value.to_vec())).collect();
        s.write(p, &[]).unwrap();
        s.written();
        let members_cf = s.reader.db.cf_handle(cf::MEMBERS).unwrap();
        assert!(s.reader.db.iterator_cf(members_cf, IteratorMode::Start).next().is_none(), "none in RocksDB either");
        s.discard_cache();
        let by_user =
            |m: Vec<(String, MemberState)>| m.into_iter().map(|(u, m)| (u, m.first_seen_ms)).collect::<Vec<_>>();
        assert_eq!(by_user(s.reader().members("small").unwrap()), vec![("u1".into(), 1), ("u2".into(), 2)]);
        assert_eq!(s.reader().member("early", "u1").unwrap().unwrap().first_seen_ms, 3);
        let m = s.reader().member_into(s.account("small").unwrap(), "small", "u2").unwrap();
        assert_eq!(m.state.first_seen_ms, 2, "loaded with its account");
        assert!(!s.accounts.peek("small").unwrap().members_on_disk);

        // Restored from the changelog elsewhere: the members come along.
        let other = tempfile::tempdir().unwrap();
        let mut r = Store::open(&cfg(other.path())).unwrap();
        r.apply_changelog(0, &restore, 1).unwrap();
        assert_eq!(by_user(r.reader().members("small").unwrap()), vec![("u1".into(), 1), ("u2".into(), 2)]);

        // Past the limit: every member apart, the record without them.
        for i in 0..INLINE_MEMBERS {
            add(&mut s, "small", &format!("v{i}"), 10 + i as i64);
        }
        let p = s.prepare(&[]);
        let members_written = p.changelog.iter().filter(|r| r.key.first() == Some(&keys::MEMBER)).count();
        assert_eq!(members_written, INLINE_MEMBERS + 2, "all its members, in records of their own");
        let account = p.changelog.iter().find(|r| r.key == keys::account("small")).unwrap().value.to_vec();
        assert_eq!(decode_account_record(&account).unwrap().1, None, "the record without them");
        s.write(p, &[]).unwrap();
        s.written();
        s.discard_cache();
        assert_eq!(s.reader().member_record("small", "u2").unwrap().unwrap().first_seen_ms, 2);
        assert_eq!(s.reader().members("small").unwrap().len(), INLINE_MEMBERS + 2);
        let m = s.reader().member_into(s.account("small").unwrap(), "small", "u1").unwrap();
        assert_eq!(m.state.first_seen_ms, 1, "read from its own record");
        assert!(s.accounts.peek("small").unwrap().members_on_disk);
    }

    /// A schema-2 directory (each member in a record of its own) is read as
    /// it is, and marked with the current schema at open (an engine of
    /// schema 2 would not see members inside records).
    #[test]
    fn a_schema_2_directory_is_read_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(&cfg(dir.path())).unwrap();
            s.members_apart();
            s.account("a").unwrap().dirty = true;
            let m = s.reader().member_into(s.account("a").unwrap(), "a", "u").unwrap();
            m.state.first_seen_ms = 4;
            m.dirty = true;
            s.commit(&[]).unwrap();
            let db = &s.reader.db;
            db.put_cf(db.cf_handle(cf::META).unwrap(), keys::meta("schema"), SCHEMA_V2).unwrap();
        }
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        assert_eq!(s.reader().schema().unwrap().as_bytes(), SCHEMA_VERSION);
        let m = s.reader().member_into(s.account("a").unwrap(), "a", "u").unwrap();
        assert_eq!(m.state.first_seen_ms, 4);
        // Changed, it stays as it is on disk: its member apart.
        m.state.first_seen_ms = 5;
        m.dirty = true;
        s.account("a").unwrap().dirty = true;
        s.commit(&[]).unwrap();
        assert_eq!(s.reader().member_record("a", "u").unwrap().unwrap().first_seen_ms, 5);
    }

    /// A schema-1 directory (counters by position, signals by name) is
    /// migrated in place on start: counts land in the columns of the same
    /// meaning, signals by name, and the schema is the current one afterwards.
    #[test]
    fn a_schema_1_directory_is_migrated_in_place() {
        use crate::state::account::{Announced, Bucket};
        use crate::state::manifest::{AccountV1 as V1, HitV1};
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default_config();
        config.definition.metrics.push(crate::config::definition::MetricConfig {
            name: "uploads_7d".into(),
            kind: crate::config::definition::MetricKind::Events,
            window: "7d".into(),
            offset: None,
            events: vec!["File Uploaded".into()],
            signal: None,
        });
        let def = config.definition.compile().unwrap();
        let h = 3_600_000;
        {
            let s = Store::open(&cfg(dir.path())).unwrap();
            let v1 = V1 {
                first_seen_ms: 1000 * h,
                last_seen_ms: 1010 * h,
                seq: 9,
                buckets: vec![
                    Bucket { idx: 1000, counts: [5, 2].into_iter().collect() },
                    Bucket { idx: 1010, counts: [4, 0].into_iter().collect() },
                ],
                user_hist: vec![(1010, 3)],
                features: vec![("File Uploaded".into(), 1000)],
                signals: vec![
                    HitV1 { signal: "hand_raise".into(), user: "u1".into(), at_ms: 1005 * h },
                    HitV1 { signal: "gone".into(), user: "u2".into(), at_ms: 1006 * h },
                ],
                traits_json: r#"{"name":"Acme"}"#.into(),
                announced: Announced { rules: vec![("hand_raiser".into(), 1005 * h)], tier: None, active: true },
            };
            let mut buf = Vec::new();
            encode_value(&mut buf, v1.last_seen_ms, &v1);
            let db = &s.reader.db;
            db.put_cf(db.cf_handle(cf::ACCOUNTS).unwrap(), keys::account("acme"), &buf).unwrap();
            db.put_cf(db.cf_handle(cf::META).unwrap(), keys::meta("schema"), b"1").unwrap();
        }
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        assert!(s.reader().needs_migration().unwrap());
        s.prepare_layout(Arc::new(Layout::single(&def)), &def).unwrap();
        assert_eq!(s.reader().schema().unwrap().as_bytes(), SCHEMA_VERSION);
        let a = s.reader().account("acme").unwrap().unwrap();
        let uploads = crate::config::definition::counter_id(Some(&["File Uploaded".to_string()].into_iter().collect()));
        assert_eq!(
            a.columns.iter().map(|c| c.id).collect::<Vec<_>>(),
            [crate::config::definition::counter_id(None), uploads]
        );
        assert!(a.columns.iter().all(|c| c.from == 0), "held from the start");
        assert_eq!(a.buckets[0].counts[..], [5, 2]);
        let hand_raise = def.signals.iter().find(|x| x.name == "hand_raise").unwrap().id;
        assert_eq!(
            a.signals.iter().map(|h| h.signal).collect::<Vec<_>>(),
            [hand_raise],
            "by name; unknown names dropped"
        );
        assert_eq!((a.seq, a.announced.active, a.kept_from), (9, true, 0));
        let m = def.metrics.iter().find(|m| m.name == "uploads_7d").unwrap();
        assert_eq!(a.metric(m, 1010, 3600), 2.0);
        assert!(!a.warming_up(m, 1010, 3600));
    }

    #[test]
    fn state_and_offsets_survive_reopen_and_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(&cfg(dir.path())).unwrap();
            for i in 0..5 {
                let e = s.account(&format!("a{i}")).unwrap();
                e.state.seq = i;
                e.state.last_seen_ms = 1_000 + i as i64;
                e.dirty = true;
            }
            let e = s.account("a1").unwrap();
            let mut e_members = std::mem::take(&mut e.members);
            e_members.get_or_insert_with("u1", || MemberEntry {
                state: MemberState { first_seen_ms: 5, last_seen_ms: 6, days: vec![(1, 2)] },
                dirty: true,
            });
            s.account("a1").unwrap().members = e_members;
            s.user("u1").unwrap().state.account = Some("a1".into());
            s.user("u1").unwrap().dirty = true;
            s.set_watermark_ms(777);
            let stats = s.commit(&[("t".into(), 3, 42)]).unwrap();
            assert_eq!(stats.accounts, 5);
            assert_eq!(stats.members, 0, "a1's one member is inside its record");
            assert_eq!(stats.cached_accounts, 2, "cache trimmed to capacity");
        }
        let s = Store::open(&cfg(dir.path())).unwrap();
        let r = s.reader();
        assert_eq!(r.account("a3").unwrap().unwrap().seq, 3);
        assert_eq!(r.offset("t", 3).unwrap(), Some(42));
        assert_eq!(r.offset("t", 4).unwrap(), None);
        assert_eq!(r.offsets().unwrap(), vec![(("t".to_string(), 3), 42)]);
        assert_eq!(s.watermark_ms(), 777);
        assert_eq!(r.user("u1").unwrap().unwrap().account.as_deref(), Some("a1"));
        assert_eq!(r.member("a1", "u1").unwrap().unwrap().days, vec![(1, 2)]);
        let members = r.members("a1").unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].1.days, vec![(1, 2)]);
        assert!(r.members("a").unwrap().is_empty(), "prefix of another account does not leak");
    }

    /// One batch written on another thread while the next is applied: the
    /// next batch must see the previous one's changes and message ids
    /// although they are not in RocksDB yet, and the cache must keep what
    /// the next batch touched until a write carries it.
    #[test]
    fn a_batch_in_flight_is_seen_by_the_next_and_trimming_spares_what_it_touched() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.cache_accounts = 1;
        let mut s = Store::open(&c).unwrap();
        s.set_dedupe_window_ms(86_400_000);
        s.set_watermark_ms(1_000);
        s.account("a").unwrap().state.seq = 1;
        s.account("a").unwrap().dirty = true;
        assert!(!s.seen_before("m1", 1_000).unwrap());
        let first = s.prepare(&[("t".into(), 0, 1)]);
        let writer = s.writer();

        // The next batch, while the first is not written: its id is known,
        // and "a" (in the cache) is the changed one.
        assert!(s.seen_before("m1", 1_000).unwrap(), "an id of the batch in flight is a duplicate");
        assert_eq!(s.account("a").unwrap().state.seq, 1);
        s.account("b").unwrap().state.seq = 7;
        s.account("b").unwrap().dirty = true;
        assert_eq!(s.reader().account("a").unwrap(), None, "not written yet");

        let stats = writer.write(first, &[]).unwrap();
        assert_eq!(stats.accounts, 1);
        // Both were touched by the batch in hand ("a" read again, "b" new):
        // neither is evicted, though the capacity is one; "b" only exists
        // in the cache until the next write.
        assert_eq!(s.written(), 2, "both were touched by the batch in hand");
        let second = s.prepare(&[("t".into(), 0, 2)]);
        s.writer().write(second, &[]).unwrap();
        assert_eq!(s.written(), 1, "trimmed once nothing is in flight");
        assert!(s.seen_before("m1", 1_000).unwrap(), "the id is in RocksDB now");
        assert_eq!(s.account("a").unwrap().state.seq, 1);
        assert_eq!(s.account("b").unwrap().state.seq, 7);
        assert_eq!(s.reader().offset("t", 0).unwrap(), Some(2));

        // An entry untouched since the last prepare is evicted while a later
        // one is in hand, and read back from RocksDB intact.
        let third = s.prepare(&[]);
        s.writer().write(third, &[]).unwrap();
        s.account("c").unwrap().dirty = true;
        assert_eq!(s.written(), 1, "a and b evicted, c (touched, unwritten) kept");
        assert_eq!(s.account("b").unwrap().state.seq, 7);
        assert_eq!(s.account("c").unwrap().state.seq, 0);
    }

    /// With the changelog on, a commit's message ids travel as one dedupe
    /// block per partition (not one record per id); a restore puts them back
    /// in the dedupe column family; once the block's newest id has left the
    /// window its writer tombstones it, and a restore of the tombstone drops
    /// the block from the index.
    #[test]
    fn message_ids_travel_as_one_block_per_commit_and_leave_the_changelog_with_the_window() {
        let h = 3_600_000i64;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut s = Store::open(&cfg(a.path())).unwrap();
        s.set_changelog(true);
        s.set_dedupe_window_ms(24 * h);
        s.set_watermark_ms(100 * h);
        s.set_partition(3);
        assert!(!s.seen_before("m1", 99 * h).unwrap());
        assert!(!s.seen_before("m2", 100 * h).unwrap());
        s.set_partition(4);
        assert!(!s.seen_before("m3", 100 * h).unwrap());
        let mut first = s.prepare(&[("t".into(), 3, 10), ("t".into(), 4, 7)]);
        let blocks: Vec<ChangeRecord<'_>> =
            first.changelog.iter().filter(|r| r.key.first() == Some(&keys::DEDUPE_BLOCK)).collect();
        assert_eq!(blocks.len(), 2, "one block per partition: {:?}", first.changelog);
        assert!(!first.changelog.iter().any(|r| r.key.first() == Some(&keys::DEDUPE)), "no record per id");
        let b3 = blocks.iter().find(|r| r.partition == 3).unwrap();
        assert_eq!(b3.key, keys::dedupe_block(3, 100 * h, 10));
        assert_eq!(b3.value.len(), 2 * DEDUPE_BLOCK_ENTRY);
        let records: Vec<(Vec<u8>, Vec<u8>)> =
            first.changelog.iter().filter(|r| r.partition == 3).map(|r| (r.key.to_vec(), r.value.to_vec())).collect();
        let block_key = b3.key.to_vec();
        let changelog = std::mem::take(&mut first.changelog);
        s.writer().write(first, &[]).unwrap();
        s.written();

        // Another instance restores partition 3: its ids are duplicates there.
        let mut r = Store::open(&cfg(b.path())).unwrap();
        r.set_dedupe_window_ms(24 * h);
        r.apply_changelog(3, &records, 5).unwrap();
        r.set_watermark_ms(100 * h);
        assert!(r.seen_before("m1", 99 * h).unwrap());
        assert!(r.seen_before("m2", 100 * h).unwrap());
        assert!(!r.seen_before("m3", 100 * h).unwrap(), "partition 4's ids are not in partition 3's block");
        assert_eq!(r.meta_prefix_keys(&keys::dedupe_block_index_prefix(3)), vec![keys::dedupe_block_index(&block_key)]);

        // Within the window: no tombstone. Past it: one, before the marker.
        s.set_watermark_ms(120 * h);
        let p = s.prepare(&[("t".into(), 3, 11)]);
        assert!(!p.changelog.iter().any(|r| r.value.is_empty()), "{:?}", p.changelog);
        s.writer().write(p, &[]).unwrap();
        s.written();
        s.set_watermark_ms(125 * h);
        let p = s.prepare(&[("t".into(), 3, 12)]);
        let tombstones: Vec<ChangeRecord<'_>> = p.changelog.iter().filter(|r| r.value.is_empty()).collect();
        assert_eq!(tombstones.len(), 1, "{:?}", p.changelog);
        assert_eq!(tombstones[0].key, block_key);
        assert_eq!(p.changelog.last().unwrap().key.first(), Some(&keys::OFFSET), "the marker ends the commit");
        let tombstone = (tombstones[0].key.to_vec(), Vec::new());
        s.writer().write(p, &[]).unwrap();
        assert!(s.meta_prefix_keys(&keys::dedupe_block_index_prefix(3)).is_empty(), "the index forgets it");
        assert!(changelog.iter().any(|r| r.partition == 4), "partition 4's block is still indexed");
        assert_eq!(s.meta_prefix_keys(&keys::dedupe_block_index_prefix(4)).len(), 1);

        r.apply_changelog(3, &[tombstone], 6).unwrap();
        assert!(r.meta_prefix_keys(&keys::dedupe_block_index_prefix(3)).is_empty());
    }

    /// A commit that wrote the batch (prepare, write, written).
    fn commit_at(s: &mut Store, partition: i32, next: i64) {
        let p = s.prepare(&[("t".into(), partition, next)]);
        s.writer().write(p, &[]).unwrap();
        s.written();
    }

    fn opened(dir: &Path, window_ms: i64, watermark_ms: i64) -> Store {
        let mut s = Store::open(&cfg(dir)).unwrap();
        s.set_dedupe_window_ms(window_ms);
        s.set_watermark_ms(watermark_ms);
        s
    }

    /// Emptiness as RocksDB's counts tell it, and as an iterator tells it
    /// when they do not: a record in the memtable, in a table file only,
    /// and one deleted (a tombstone is an entry, but no record).
    #[test]
    fn a_column_family_is_empty_only_with_no_record_in_memtables_or_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = opened(dir.path(), 3_600_000, 0);
        let db = &s.reader.db;
        for name in [cf::DEDUPE, cf::ACCOUNTS] {
            let h = db.cf_handle(name).unwrap();
            let key = [keys::DEDUPE; 17];
            assert!(cf_is_empty(db, name), "{name}: new");
            db.put_cf(h, key, b"x").unwrap();
            assert!(!cf_is_empty(db, name), "{name}: in the memtable");
            db.flush_cf(h).unwrap();
            assert_eq!(db.property_int_value_cf(h, "rocksdb.num-entries-active-mem-table").unwrap(), Some(0));
            assert!(!cf_is_empty(db, name), "{name}: in a table file only");
            db.delete_cf(h, key).unwrap();
            assert!(cf_is_empty(db, name), "{name}: deleted");
        }
    }

    /// Message ids are kept in memory once their batch is written, made
    /// durable by one block per commit and partition (no key per id), read
    /// back from the blocks when the store opens again or drops its cache
    /// (not those of a batch never written), and forgotten, with their
    /// block, once they leave the window.
    #[test]
    fn message_ids_live_in_memory_and_are_durable_as_one_block_per_commit() {
        let h = 3_600_000i64;
        let dir = tempfile::tempdir().unwrap();
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_partition(2);
        assert!(!s.seen_before("m1", 99 * h).unwrap());
        assert!(!s.seen_before("m2", 100 * h).unwrap());
        commit_at(&mut s, 2, 10);
        assert!(cf_is_empty(&s.reader.db, cf::DEDUPE), "no key per id");
        let meta = s.reader.db.cf_handle(cf::META).unwrap();
        let index = s.meta_prefix_keys(&keys::dedupe_block_index_prefix(2));
        assert_eq!(index, vec![keys::dedupe_block_index(&keys::dedupe_block(2, 100 * h, 10))]);
        let block = s.reader.db.get_cf(meta, &index[0]).unwrap().unwrap();
        assert_eq!(block.len(), 2 * DEDUPE_BLOCK_ENTRY, "the block holds both ids");
        assert!(s.seen_before("m1", 99 * h).unwrap(), "in memory");
        drop(s);

        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_partition(2);
        assert!(s.seen_before("m1", 99 * h).unwrap(), "read back from its block");
        assert!(s.seen_before("m2", 100 * h).unwrap());
        assert!(!s.seen_before("m3", 100 * h).unwrap());
        // A batch that never becomes durable: its id is forgotten with it
        // (its event will be applied again), the written ones are not.
        let _lost = s.prepare(&[("t".into(), 2, 11)]);
        s.discard_cache();
        assert!(!s.seen_before("m3", 100 * h).unwrap(), "its batch was dropped");
        assert!(s.seen_before("m1", 99 * h).unwrap(), "read back after the cache was dropped");
        commit_at(&mut s, 2, 11);

        // Past the window: out of memory, and the blocks leave the index.
        s.set_watermark_ms(130 * h);
        commit_at(&mut s, 2, 12);
        assert!(s.meta_prefix_keys(&keys::dedupe_block_index_prefix(2)).is_empty());
        assert!(!s.memory_ids.contains_key(&keys::dedupe("m1")[1..]));
        assert!(!s.seen_before("m1", 130 * h).unwrap(), "seen more than a window ago");
        drop(s);
        let mut s = opened(dir.path(), 24 * h, 130 * h);
        assert!(!s.seen_before("m2", 130 * h).unwrap());
        assert!(cf_is_empty(&s.reader.db, cf::DEDUPE));
    }

    /// Each commit's block holds that commit's ids only, and a partition
    /// with none in a commit gets no block (the buffers are kept from one
    /// commit to the next).
    #[test]
    fn a_commit_blocks_only_its_own_ids() {
        let h = 3_600_000i64;
        let dir = tempfile::tempdir().unwrap();
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        let offsets = |next: i64| [("t".to_string(), 2, next), ("t".to_string(), 3, next)];
        for (p, id) in [(2, "m1"), (2, "m2"), (3, "m3")] {
            s.set_partition(p);
            assert!(!s.seen_before(id, 100 * h).unwrap());
        }
        let prepared = s.prepare(&offsets(10));
        s.writer().write(prepared, &[]).unwrap();
        s.written();
        s.set_partition(2);
        assert!(!s.seen_before("m4", 100 * h).unwrap());
        let prepared = s.prepare(&offsets(11));
        s.writer().write(prepared, &[]).unwrap();
        s.written();
        let meta = s.reader.db.cf_handle(cf::META).unwrap();
        let sizes = |p: i32| -> Vec<usize> {
            let keys = s.meta_prefix_keys(&keys::dedupe_block_index_prefix(p));
            keys.iter().map(|k| s.reader.db.get_cf(meta, k).unwrap().unwrap().len() / DEDUPE_BLOCK_ENTRY).collect()
        };
        assert_eq!(sizes(2), [2, 1], "the second block holds m4 alone");
        assert_eq!(sizes(3), [1], "no block for a partition without ids");
        drop(s);
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        for id in ["m1", "m2", "m3", "m4"] {
            assert!(s.seen_before(id, 100 * h).unwrap(), "{id} read back");
        }
    }

    /// Past the memory's cap, ids go to RocksDB one key each: a batch that
    /// would pass it, and, on opening with a smaller cap, the ids of the
    /// blocks that do not fit. Every id of the window stays a duplicate.
    #[test]
    fn message_ids_past_the_memory_cap_go_to_rocksdb_one_key_each() {
        let h = 3_600_000i64;
        let dir = tempfile::tempdir().unwrap();
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_dedupe_memory_ids(2);
        assert!(!s.seen_before("m1", 100 * h).unwrap());
        assert!(!s.seen_before("m2", 100 * h).unwrap());
        commit_at(&mut s, 0, 2);
        assert!(cf_is_empty(&s.reader.db, cf::DEDUPE));
        assert!(!s.seen_before("m3", 100 * h).unwrap());
        commit_at(&mut s, 0, 3);
        assert!(!cf_is_empty(&s.reader.db, cf::DEDUPE), "the third id passed the cap");
        assert_eq!(s.ids_in_memory(), 2);
        drop(s);

        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_dedupe_memory_ids(1);
        for id in ["m1", "m2", "m3"] {
            assert!(s.seen_before(id, 100 * h).unwrap(), "{id}");
        }
        assert_eq!(s.ids_in_memory(), 1);
        drop(s);
        // Nothing in memory at all: every id from RocksDB.
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_dedupe_memory_ids(0);
        for id in ["m1", "m2", "m3"] {
            assert!(s.seen_before(id, 100 * h).unwrap(), "{id}");
        }
        assert!(!s.seen_before("m4", 100 * h).unwrap());
        commit_at(&mut s, 0, 4);
        assert_eq!(s.ids_in_memory(), 0);
        assert!(s.seen_before("m4", 100 * h).unwrap());
    }

    /// Past the memory's cap, a new id is not a RocksDB read: a filter in
    /// front of the ids there answers for nearly all of them, and never
    /// misses one that is there (nor after reopening, when it is built by
    /// a scan, nor once an id is out of the window and back).
    #[test]
    fn new_ids_past_the_cap_are_answered_without_reading_rocksdb() {
        let h = 3_600_000i64;
        let new_ids = |prefix: &str| (0..1000).map(|n| format!("{prefix}{n}")).collect::<Vec<_>>();
        let ids = new_ids("m");
        let dir = tempfile::tempdir().unwrap();
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_dedupe_memory_ids(10);
        for id in &ids {
            assert!(!s.seen_before(id, 100 * h).unwrap());
        }
        commit_at(&mut s, 0, 1000);
        assert!(!cf_is_empty(&s.reader.db, cf::DEDUPE), "past the cap");
        let reads = s.disk_id_reads;
        let newer = new_ids("n");
        for id in &newer {
            assert!(!s.seen_before(id, 100 * h).unwrap());
        }
        let new_reads = s.disk_id_reads - reads;
        assert!(new_reads < 50, "{new_reads} reads for 1000 new ids");
        for id in &ids {
            assert!(s.seen_before(id, 100 * h).unwrap(), "{id} is a duplicate");
        }
        commit_at(&mut s, 0, 2000);
        drop(s);

        // Reopened: the filter is built by a scan of what RocksDB holds.
        let mut s = opened(dir.path(), 24 * h, 101 * h);
        s.set_dedupe_memory_ids(10);
        for id in ids.iter().chain(&newer) {
            assert!(s.seen_before(id, 101 * h).unwrap(), "{id} is a duplicate after reopening");
        }
        let reads = s.disk_id_reads;
        for id in new_ids("o") {
            assert!(!s.seen_before(&id, 101 * h).unwrap());
        }
        assert!(s.disk_id_reads - reads < 50, "the filter was built again");
        // A day later, the ids of 100 h are out of the window: new again.
        s.set_watermark_ms(125 * h);
        assert!(!s.seen_before("m400", 125 * h).unwrap());
        assert!(s.seen_before("m400", 125 * h).unwrap(), "and seen now");

        // `replay`'s write-back store: the same.
        let dir = tempfile::tempdir().unwrap();
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_write_back(true).unwrap();
        s.set_dedupe_memory_ids(10);
        for id in &ids {
            assert!(!s.seen_before(id, 100 * h).unwrap());
        }
        commit_at(&mut s, 0, 1000);
        assert_eq!(s.ids_in_memory(), 10);
        let reads = s.disk_id_reads;
        for id in &newer {
            assert!(!s.seen_before(id, 100 * h).unwrap());
        }
        assert!(s.disk_id_reads - reads < 50);
        for id in &ids {
            assert!(s.seen_before(id, 100 * h).unwrap(), "{id} is a duplicate");
        }
    }

    /// `run` loads the window's message ids before it consumes: after a
    /// reopening, those kept in memory and the filter in front of those in
    /// RocksDB are there before the first lookup, which then reads
    /// nothing it would not have read anyway.
    #[test]
    fn the_window_s_message_ids_load_before_the_first_event() {
        let h = 3_600_000i64;
        let dir = tempfile::tempdir().unwrap();
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_dedupe_memory_ids(10);
        // A batch that fits in memory, then one that does not.
        for n in 0..5 {
            assert!(!s.seen_before(&format!("k{n}"), 100 * h).unwrap());
        }
        commit_at(&mut s, 0, 5);
        for n in 0..1000 {
            assert!(!s.seen_before(&format!("m{n}"), 100 * h).unwrap());
        }
        commit_at(&mut s, 0, 1005);
        drop(s);
        let mut s = opened(dir.path(), 24 * h, 100 * h);
        s.set_dedupe_memory_ids(10);
        assert!(!s.ids_loaded && s.disk_ids.is_none(), "loaded lazily unless asked");
        assert_eq!(s.load_dedupe_ids().unwrap(), (5, 1000));
        assert!(s.ids_loaded && s.disk_ids.is_some());
        assert_eq!(s.load_dedupe_ids().unwrap(), (0, 0), "once");
        let reads = s.disk_id_reads;
        assert!(s.seen_before("k4", 100 * h).unwrap());
        assert!(s.seen_before("m999", 100 * h).unwrap());
        assert!(!s.seen_before("new", 100 * h).unwrap());
        assert!(s.disk_id_reads - reads <= 2);
        // No dedupe window: nothing to load.
        let dir = tempfile::tempdir().unwrap();
        let mut s = opened(dir.path(), 0, 100 * h);
        assert_eq!(s.load_dedupe_ids().unwrap(), (0, 0));
    }

    /// A write-back store opened empty looks in RocksDB only for records an
    /// eviction wrote: a new account or user is read neither ahead of the
    /// engine nor by it, and an evicted one is read back as it was.
    #[test]
    fn records_never_written_are_not_looked_for_in_rocksdb() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open_ephemeral(&cfg(dir.path())).unwrap();
        s.set_write_back(true).unwrap();
        let mut ahead = s.prefetcher();
        for i in 0..10u64 {
            let e = s.account(&format!("a{i}")).unwrap();
            e.state.seq = i + 1;
            e.dirty = true;
            let u = s.user(&format!("u{i}")).unwrap();
            u.state.updated_ms = i as i64 + 1;
            u.dirty = true;
        }
        // The cache keeps 2 of each: the others are written as evicted.
        commit_at(&mut s, 0, 10);
        assert!(!cf_is_empty(&s.reader.db, cf::ACCOUNTS) && !cf_is_empty(&s.reader.db, cf::USERS));
        let ev = track_event;
        let f = ahead.fetch(&ev("new", "unew"));
        assert!(f.account.is_none() && f.user.is_none(), "nothing read for records never written");
        let f = ahead.fetch(&ev("a0", "u0"));
        assert_eq!(f.account.and_then(|r| r.record).map(|(a, _)| a.seq), Some(1), "an evicted account, read ahead");
        assert_eq!(f.user.and_then(|u| u.1).map(|u| u.updated_ms), Some(1), "an evicted user, read ahead");
        assert_eq!(s.account("a1").unwrap().state.seq, 2, "read back by the engine");
        assert_eq!(s.user("u1").unwrap().state.updated_ms, 2);
        assert_eq!(s.account("new").unwrap().state.seq, 0);
        // Looked at without being loaded, through the same filter.
        assert_eq!(s.peek_account("a3").unwrap().map(|a| a.seq), Some(4), "an evicted account, peeked");
        assert_eq!(s.peek_user("u3").unwrap().map(|u| u.updated_ms), Some(4), "an evicted user, peeked");
        assert!(s.peek_user("unew").unwrap().is_none());
        // A store opened on records it did not write looks for every one.
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        s.account("a").unwrap().dirty = true;
        commit_at(&mut s, 0, 1);
        drop(s);
        let mut s = Store::open(&cfg(dir.path())).unwrap();
        s.set_write_back(true).unwrap();
        let f = s.prefetcher().fetch(&ev("a", "u"));
        assert!(f.account.is_some_and(|r| r.record.is_some()), "a record it did not write is read");
    }
}
