//! Column family names, in one place.

/// Account records: windowed counters, signals, traits, announcements.
pub const ACCOUNTS: &str = "accounts";
/// (account, user) records: a user's activity inside an account.
pub const MEMBERS: &str = "members";
/// User records: last known account and traits.
pub const USERS: &str = "users";
/// Recently applied message ids (hashed), for deduplicating upstream
/// retries. Expire by event time.
pub const DEDUPE: &str = "dedupe";
/// Consumed offsets and engine metadata. Written in the same batch as the
/// state they produced.
pub const META: &str = "meta";

/// Every column family the engine opens.
pub const ALL: [&str; 5] = [ACCOUNTS, MEMBERS, USERS, DEDUPE, META];
