//! Key encoding for RocksDB. Every key starts with a one-byte prefix naming
//! its kind; variable-length parts are length-prefixed (u16, big-endian) so
//! that keys of one account sort together and a prefix scan finds exactly
//! that account's records; integers are big-endian so they sort numerically.

/// Account record: `a | len(account) | account`.
pub const ACCOUNT: u8 = b'a';
/// (account, user) record: `m | len(account) | account | user`.
pub const MEMBER: u8 = b'm';
/// User record: `u | user`.
pub const USER: u8 = b'u';
/// Consumed offset of an input partition: `o | len(topic) | topic | partition (u32 BE)`.
pub const OFFSET: u8 = b'o';
/// Applied message id: `d | xxh3-128(message id)`.
pub const DEDUPE: u8 = b'd';
/// The message ids one commit applied from one input partition, as one
/// changelog record (in RocksDB it is the value of its index entry, see
/// [`DEDUPE_BLOCK_INDEX`]): `b | partition (u32 BE) | newest event time
/// (i64, sign-flipped BE) | next input offset (i64 BE)` -> `(xxh3-128 of
/// the id (16 bytes) | event time (i64 BE))*`. Unique per commit; once its
/// newest id has left the dedupe window, its writer sends a tombstone for it,
/// so the compacted changelog keeps only the window's ids.
pub const DEDUPE_BLOCK: u8 = b'b';
/// The dedupe blocks a state has written or restored (meta column family),
/// in the order they expire: `k` followed by the block key without its
/// first byte -> the block's ids as in the changelog record (what makes the
/// store's in-memory ids durable), or nothing (ids kept one key each in the
/// dedupe column family, or written by an earlier version).
pub const DEDUPE_BLOCK_INDEX: u8 = b'k';
/// Next changelog offset this state has seen of a changelog partition:
/// `c | partition (u32 BE)` (in the meta column family).
pub const CHANGELOG: u8 = b'c';
/// Engine metadata: `x | name`.
pub const META: u8 = b'x';
/// The disqualification sweep's index (meta column family):
/// `s | due (i64, sign-flipped BE) | account` -> input partition (i32 BE).
pub const SWEEP: u8 = b's';
/// The budget queue's index (meta column family): `q | tier rank (u16 BE) |
/// u32::MAX - score (u32 BE) | qualified at (i64, sign-flipped BE) |
/// account` -> input partition (i32 BE).
pub const QUEUE: u8 = b'q';

/// Accounts that have announcements or outcomes (meta column family):
/// `h | account` -> input partition (i32 BE). The live engine sums the
/// per-rule outcome counts of these accounts.
pub const HEARD: u8 = b'h';

/// Longest id accepted for accounts, users and topics (bytes).
pub const MAX_ID_BYTES: usize = 1024;

fn push_len_prefixed(k: &mut Vec<u8>, s: &str) {
    let (len, bytes) = len_prefixed(s);
    k.extend_from_slice(&len);
    k.extend_from_slice(bytes);
}

/// A variable-length part of a key: its length (u16, big-endian) and its
/// bytes (at most `u16::MAX` of them).
fn len_prefixed(s: &str) -> ([u8; 2], &[u8]) {
    debug_assert!(s.len() <= u16::MAX as usize);
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    ((bytes.len() as u16).to_be_bytes(), bytes)
}

pub fn account(account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + account.len());
    account_to(&mut k, account);
    k
}

/// [`account`], into `k` (cleared first): a buffer reused from key to key.
pub fn account_to(k: &mut Vec<u8>, account: &str) {
    k.clear();
    k.push(ACCOUNT);
    push_len_prefixed(k, account);
}

/// Prefix of every member key of `account`.
pub fn member_prefix(account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + account.len() + 16);
    k.push(MEMBER);
    push_len_prefixed(&mut k, account);
    k
}

/// [`member`], on the stack when it is short (as most are): the key of a
/// lookup, built without allocating.
pub fn member_lookup(account: &str, user: &str) -> smallvec::SmallVec<[u8; 96]> {
    let (len, account) = len_prefixed(account);
    let mut k = smallvec::SmallVec::new();
    k.push(MEMBER);
    k.extend_from_slice(&len);
    k.extend_from_slice(account);
    k.extend_from_slice(user.as_bytes());
    k
}

pub fn member(account: &str, user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + account.len() + user.len());
    member_to(&mut k, account, user);
    k
}

/// [`member`], into `k` (cleared first).
pub fn member_to(k: &mut Vec<u8>, account: &str, user: &str) {
    k.clear();
    k.push(MEMBER);
    push_len_prefixed(k, account);
    k.extend_from_slice(user.as_bytes());
}

/// The user part of a member key that starts with `prefix`.
pub fn member_user<'k>(key: &'k [u8], prefix: &[u8]) -> Option<&'k str> {
    key.strip_prefix(prefix).and_then(|u| std::str::from_utf8(u).ok())
}

/// The length-prefixed id after a key's kind byte, and what follows it.
fn split_len_prefixed(key: &[u8], kind: u8) -> Option<(&str, &[u8])> {
    let rest = key.strip_prefix(&[kind])?;
    let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
    Some((id, &rest[2 + len..]))
}

/// The account id of an account key.
pub fn parse_account(key: &[u8]) -> Option<&str> {
    split_len_prefixed(key, ACCOUNT).filter(|(_, rest)| rest.is_empty()).map(|(id, _)| id)
}

/// The (account, user) of a member key.
pub fn parse_member(key: &[u8]) -> Option<(&str, &str)> {
    let (account, user) = split_len_prefixed(key, MEMBER)?;
    Some((account, std::str::from_utf8(user).ok()?))
}

pub fn user(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + user.len());
    user_to(&mut k, user);
    k
}

/// [`user`], into `k` (cleared first).
pub fn user_to(k: &mut Vec<u8>, user: &str) {
    k.clear();
    k.push(USER);
    k.extend_from_slice(user.as_bytes());
}

pub fn offset(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(7 + topic.len());
    k.push(OFFSET);
    push_len_prefixed(&mut k, topic);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// Decodes an offset key into (topic, partition).
pub fn parse_offset(key: &[u8]) -> Option<(String, i32)> {
    let (topic, rest) = split_len_prefixed(key, OFFSET)?;
    let p = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    Some((topic.to_string(), p as i32))
}

/// Fixed-width key of a message id (a 128-bit hash: ids can be long, and a
/// collision within a dedupe window is vanishingly unlikely).
/// Length of every dedupe key.
pub const DEDUPE_KEY_LEN: usize = 17;

pub fn dedupe(message_id: &str) -> [u8; DEDUPE_KEY_LEN] {
    let mut k = [0u8; DEDUPE_KEY_LEN];
    k[0] = DEDUPE;
    k[1..].copy_from_slice(&xxhash_rust::xxh3::xxh3_128(message_id.as_bytes()).to_be_bytes());
    k
}

/// Length of a dedupe block key (and of its index key).
pub const DEDUPE_BLOCK_KEY_LEN: usize = 21;

/// The changelog key of a dedupe block (see [`DEDUPE_BLOCK`]).
pub fn dedupe_block(partition: i32, newest_ms: i64, next_offset: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(DEDUPE_BLOCK_KEY_LEN);
    k.push(DEDUPE_BLOCK);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    push_i64(&mut k, newest_ms);
    k.extend_from_slice(&next_offset.to_be_bytes());
    k
}

/// The index key of a dedupe block key (see [`DEDUPE_BLOCK_INDEX`]).
pub fn dedupe_block_index(block_key: &[u8]) -> Vec<u8> {
    let mut k = block_key.to_vec();
    if let Some(first) = k.first_mut() {
        *first = DEDUPE_BLOCK_INDEX;
    }
    k
}

/// Prefix of the index keys of `partition`'s dedupe blocks.
pub fn dedupe_block_index_prefix(partition: i32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = DEDUPE_BLOCK_INDEX;
    k[1..].copy_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// The newest event time of a dedupe block, from its key or its index key.
pub fn dedupe_block_newest(key: &[u8]) -> Option<i64> {
    if key.len() != DEDUPE_BLOCK_KEY_LEN {
        return None;
    }
    read_i64(&key[5..13])
}

pub fn changelog_position(partition: i32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = CHANGELOG;
    k[1..].copy_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// An i64 as 8 bytes that sort like the number.
fn push_i64(k: &mut Vec<u8>, v: i64) {
    k.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

fn read_i64(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}

pub fn sweep(due_ms: i64, account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + account.len());
    k.push(SWEEP);
    push_i64(&mut k, due_ms);
    k.extend_from_slice(account.as_bytes());
    k
}

/// Decodes a sweep key into (due, account).
pub fn parse_sweep(key: &[u8]) -> Option<(i64, String)> {
    let rest = key.strip_prefix(&[SWEEP])?;
    Some((read_i64(rest)?, std::str::from_utf8(rest.get(8..)?).ok()?.to_string()))
}

/// Priority of a queued announcement: (tier rank, u32::MAX - score,
/// qualified at).
pub type Priority = (u16, u32, i64);

pub fn queue(p: Priority, account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(15 + account.len());
    k.push(QUEUE);
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(&p.1.to_be_bytes());
    push_i64(&mut k, p.2);
    k.extend_from_slice(account.as_bytes());
    k
}

/// Decodes a queue key into (priority, account).
pub fn parse_queue(key: &[u8]) -> Option<(Priority, String)> {
    let rest = key.strip_prefix(&[QUEUE])?;
    let tier = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    let score = u32::from_be_bytes(rest.get(2..6)?.try_into().ok()?);
    let at = read_i64(rest.get(6..)?)?;
    Some(((tier, score, at), std::str::from_utf8(rest.get(14..)?).ok()?.to_string()))
}

pub fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn heard(account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + account.len());
    k.push(HEARD);
    k.extend_from_slice(account.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_lookup_key_is_the_member_key() {
        let long = "x".repeat(300);
        for (a, u) in [("acct-1", "u-1"), ("", ""), (long.as_str(), "u"), ("a", long.as_str())] {
            assert_eq!(member_lookup(a, u)[..], member(a, u)[..]);
        }
    }

    /// A key built into a reused buffer is the key built afresh, whatever
    /// the buffer held before.
    #[test]
    fn keys_built_into_a_reused_buffer_are_the_keys() {
        let long = "x".repeat(300);
        let mut k = b"left over from a longer key before".to_vec();
        for (a, u) in [("acct-1", "u-1"), ("", ""), (long.as_str(), "u"), ("a", long.as_str())] {
            account_to(&mut k, a);
            assert_eq!(k, account(a));
            member_to(&mut k, a, u);
            assert_eq!(k, member(a, u));
            user_to(&mut k, u);
            assert_eq!(k, user(u));
        }
    }

    use proptest::prelude::*;

    #[test]
    fn table_of_orderings() {
        // (smaller, larger): each pair must sort in this order.
        let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (account("a"), account("b")),
            (account("z"), account("aa")), // length first: fixed-width framing
            (member("acct", "u1"), member("acct", "u2")),
            (member("acct", "zzz"), member("acct2", "a")),
            (offset("t", 1), offset("t", 2)),
            (offset("t", 9), offset("t", 10)), // numeric, not lexical
            (offset("t", 255), offset("t", 256)),
            (account("x"), member("x", "u")),
            (member("x", "u"), offset("t", 0)),
            (offset("t", 0), user("u")),
            (user("u"), meta("m")),
        ];
        for (a, b) in cases {
            assert!(a < b, "{a:?} should sort before {b:?}");
        }
    }

    #[test]
    fn account_and_member_keys_parse_back() {
        assert_eq!(parse_account(&account("acct-1")), Some("acct-1"));
        assert_eq!(parse_account(&account("")), Some(""));
        assert_eq!(parse_account(&member("acct-1", "u")), None);
        assert_eq!(parse_account(&[ACCOUNT, 0, 9, b'x']), None, "shorter than its length");
        assert_eq!(parse_member(&member("acct-1", "u@x")), Some(("acct-1", "u@x")));
        assert_eq!(parse_member(&member("a", "")), Some(("a", "")));
        assert_eq!(parse_member(&account("a")), None);
    }

    #[test]
    fn member_prefix_isolates_accounts() {
        let p = member_prefix("ab");
        assert!(member("ab", "u").starts_with(&p));
        assert!(!member("abc", "u").starts_with(&p), "account `abc` must not match prefix of `ab`");
        assert_eq!(member_user(&member("ab", "user-7"), &p), Some("user-7"));
    }

    proptest! {
        #[test]
        fn offset_roundtrip(topic in "[a-z.\\-]{1,40}", p in 0i32..100_000) {
            prop_assert_eq!(parse_offset(&offset(&topic, p)), Some((topic.clone(), p)));
        }

        #[test]
        fn member_keys_group_by_account(a in "[a-z0-9]{1,12}", b in "[a-z0-9]{1,12}", u in "[a-z0-9]{0,12}", v in "[a-z0-9]{0,12}") {
            // All keys of one account form a contiguous range: comparing two
            // member keys of different accounts is decided by the account.
            if a != b {
                let ka = member(&a, &u);
                let kb = member(&b, &v);
                prop_assert_eq!(ka < kb, member_prefix(&a) < member_prefix(&b));
            }
        }

        #[test]
        fn schedule_keys_roundtrip_and_sort_by_time(a in -2_000_000_000_000i64..4_000_000_000_000, b in -2_000_000_000_000i64..4_000_000_000_000, acct in "[a-z0-9]{1,12}", t in 0u16..4, s in 0u32..200) {
            prop_assert_eq!(parse_sweep(&sweep(a, &acct)), Some((a, acct.clone())));
            prop_assert_eq!(sweep(a, "x") < sweep(b, "x"), a < b);
            prop_assert_eq!(parse_queue(&queue((t, s, a), &acct)), Some(((t, s, a), acct.clone())));
            prop_assert_eq!(queue((t, s, a), "x") < queue((t, s, b), "x"), a < b);
        }

        #[test]
        fn partitions_sort_numerically(x in 0i32..i32::MAX, y in 0i32..i32::MAX) {
            prop_assert_eq!(offset("t", x) < offset("t", y), x < y);
        }
    }
}
