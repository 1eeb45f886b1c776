//! Column family names, in one place.

/// Account records: windowed counters, signals, traits, announcements.
pub const ACCOUNTS: &str = "accounts";
/// (account, user) records: a user's activity inside an account.
pub const MEMBERS: &str = "members";
/// User records: last known account and traits.
pub const USERS: &str = "users";
/// Consumed offsets and engine metadata. Written in the same batch as the
/// state they produced.
pub const META: &str = "meta";

/// Every column family the engine opens.
pub const ALL: [&str; 4] = [ACCOUNTS, MEMBERS, USERS, META];
