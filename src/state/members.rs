//! An account's cached members, by user id.
//!
//! Most accounts have one or two users (on a long tail, nearly all). Their
//! members are kept in a short list inside the account's cache entry and
//! searched in order: finding the event's user reads the entry's own slot,
//! which the engine asks the processor for ahead of the event (see
//! [`super::store::Store::prefetch`]; [`Members::prefetch`] asks for their
//! day lists), and a new account's first member allocates nothing. A hash
//! map's lookup, by contrast, waits on its control bytes, then on its
//! bucket, each a cache miss of its own, and its first insertion allocates
//! the table (BENCHMARKS.md: 6 % of the engine thread on the long tail
//! through a broker). Past [`FEW`] members the list becomes a hash map, as
//! it always was before: a busy account's lookup stays one probe.

use compact_str::CompactString;
use smallvec::SmallVec;

use super::store::MemberEntry;

/// Up to this many members are a list searched in order; more, a hash map.
const FEW: usize = 8;

/// Members kept inside the entry itself (more go to the heap, still a list
/// up to [`FEW`]).
const INSIDE: usize = 2;

/// An account's cached members, by user id (in no particular order).
#[derive(Debug, Clone)]
pub struct Members(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Few(SmallVec<[(CompactString, MemberEntry); INSIDE]>),
    Many(hashbrown::HashMap<String, MemberEntry>),
}

impl Default for Members {
    fn default() -> Members {
        Members(Repr::Few(SmallVec::new()))
    }
}

impl Members {
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(v) => v.len(),
            Repr::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, user: &str) -> Option<&MemberEntry> {
        match &self.0 {
            Repr::Few(v) => v.iter().find(|(u, _)| u == user).map(|(_, m)| m),
            Repr::Many(m) => m.get(user),
        }
    }

    pub fn contains_key(&self, user: &str) -> bool {
        self.get(user).is_some()
    }

    /// The user's member, made with `make` when absent.
    pub fn get_or_insert_with(&mut self, user: &str, make: impl FnOnce() -> MemberEntry) -> &mut MemberEntry {
        match self.try_get_or_insert_with(user, || Ok::<_, std::convert::Infallible>(make())) {
            Ok(m) => m,
            Err(never) => match never {},
        }
    }

    /// The user's member, made with `make` when absent (nothing inserted
    /// when it fails).
    pub fn try_get_or_insert_with<E>(
        &mut self,
        user: &str,
        make: impl FnOnce() -> Result<MemberEntry, E>,
    ) -> Result<&mut MemberEntry, E> {
        if let Repr::Few(v) = &mut self.0 {
            // (Where it is, then a borrow to return: one to return taken
            // before the list may change would hold `self` to the end.)
            match v.iter().position(|(u, _)| u == user) {
                Some(i) => {
                    let Repr::Few(v) = &mut self.0 else { unreachable!() };
                    return Ok(&mut v[i].1);
                }
                None if v.len() < FEW => {
                    let member = make()?;
                    let Repr::Few(v) = &mut self.0 else { unreachable!() };
                    v.push((CompactString::from(user), member));
                    return Ok(&mut v.last_mut().expect("just pushed").1);
                }
                None => {
                    let map = v.drain(..).map(|(u, m)| (String::from(u), m)).collect();
                    self.0 = Repr::Many(map);
                }
            }
        }
        let Repr::Many(map) = &mut self.0 else { unreachable!() };
        match map.entry_ref(user) {
            hashbrown::hash_map::EntryRef::Occupied(o) => Ok(o.into_mut()),
            hashbrown::hash_map::EntryRef::Vacant(v) => Ok(v.insert(make()?)),
        }
    }

    /// Every member with its user id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MemberEntry)> {
        let (few, many) = match &self.0 {
            Repr::Few(v) => (Some(v.iter().map(|(u, m)| (u.as_str(), m))), None),
            Repr::Many(m) => (None, Some(m.iter().map(|(u, m)| (u.as_str(), m)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut MemberEntry)> {
        let (few, many) = match &mut self.0 {
            Repr::Few(v) => (Some(v.iter_mut().map(|(u, m)| (u.as_str(), m))), None),
            Repr::Many(m) => (None, Some(m.iter_mut().map(|(u, m)| (u.as_str(), m)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub fn values(&self) -> impl Iterator<Item = &MemberEntry> {
        self.iter().map(|(_, m)| m)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut MemberEntry> {
        self.iter_mut().map(|(_, m)| m)
    }

    /// Drops every member. (A map stays a map, its table kept: a crowded
    /// account, whose members leave the cache after each commit, fills it
    /// again with the next batch.)
    pub fn clear(&mut self) {
        match &mut self.0 {
            Repr::Few(v) => v.clear(),
            Repr::Many(m) => m.clear(),
        }
    }

    /// Asks the processor for what an event of one of a few members
    /// changes and the entry does not hold itself: the latest day of each
    /// one's activity, and a user id too long to be held inside.
    pub fn prefetch(&self) {
        let Repr::Few(v) = &self.0 else { return };
        for (u, m) in v.iter().take(INSIDE) {
            if u.is_heap_allocated() {
                super::cache::prefetch(u.as_ptr());
            }
            let d = &m.state.days;
            super::cache::prefetch(d.as_ptr().wrapping_add(d.len().saturating_sub(1)).cast());
        }
    }
}

impl FromIterator<(String, MemberEntry)> for Members {
    fn from_iter<I: IntoIterator<Item = (String, MemberEntry)>>(iter: I) -> Members {
        let mut members = Members::default();
        for (user, m) in iter {
            let mut m = Some(m);
            let slot = members.get_or_insert_with(&user, || m.take().expect("made once"));
            if let Some(m) = m {
                // (A user listed twice: the later one, as a map's insert.)
                *slot = m;
            }
        }
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::account::MemberState;
    use std::collections::HashMap;

    fn member(seen: i64) -> MemberEntry {
        MemberEntry { state: MemberState { first_seen_ms: seen, last_seen_ms: seen, days: vec![] }, dirty: false }
    }

    /// Inserts and lookups of up to 40 users against a `HashMap`, through
    /// the list, its spill to the heap and its change to a map.
    #[test]
    fn finds_what_a_map_finds_as_it_grows() {
        let mut m = Members::default();
        let mut want: HashMap<String, i64> = HashMap::new();
        for i in 0..40i64 {
            // (Short ids inside, long ids on the heap.)
            let user = if i % 3 == 0 { format!("user-with-a-long-id-of-{i:020}") } else { format!("u{i}") };
            assert!(!m.contains_key(&user));
            let made = m.get_or_insert_with(&user, || member(i));
            assert_eq!(made.state.first_seen_ms, i);
            made.dirty = true;
            want.insert(user, i);
            for (u, &seen) in &want {
                // Present: `make` not called, the member as made.
                let got = m.get_or_insert_with(u, || panic!("{u} made again"));
                assert_eq!(got.state.first_seen_ms, seen, "{u}");
                assert!(got.dirty);
                assert_eq!(m.get(u).map(|g| g.state.first_seen_ms), Some(seen));
            }
            assert_eq!(m.len(), want.len());
            let mut listed: Vec<(String, i64)> =
                m.iter().map(|(u, e)| (u.to_string(), e.state.first_seen_ms)).collect();
            listed.sort();
            let mut wanted: Vec<(String, i64)> = want.iter().map(|(u, &s)| (u.clone(), s)).collect();
            wanted.sort();
            assert_eq!(listed, wanted);
            assert!(!m.contains_key("nobody"));
        }
        assert!(matches!(m.0, Repr::Many(_)), "a map past {FEW}");
        for e in m.values_mut() {
            e.dirty = false;
        }
        assert!(m.values().all(|e| !e.dirty));
        m.clear();
        assert!(m.is_empty() && matches!(m.0, Repr::Many(_)), "a map kept");
        for u in ["a", "b"] {
            m.get_or_insert_with(u, || member(1));
        }
        assert_eq!(m.len(), 2);
        assert!(m.contains_key("a") && !m.contains_key("u1"));
    }

    /// A failed `make` inserts nothing, in the list as in the map.
    #[test]
    fn a_failed_make_inserts_nothing() {
        let mut m = Members::default();
        for users in [1, FEW + 1] {
            m.clear();
            for i in 0..users {
                m.get_or_insert_with(&format!("u{i}"), || member(0));
            }
            let r = m.try_get_or_insert_with("other", || Err("no"));
            assert_eq!(r.err(), Some("no"));
            assert_eq!(m.len(), users);
            assert!(!m.contains_key("other"));
        }
    }

    #[test]
    fn collected_from_records() {
        let m: Members = [("b".to_string(), member(2)), ("a".to_string(), member(1)), ("b".to_string(), member(3))]
            .into_iter()
            .collect();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("b").map(|e| e.state.first_seen_ms), Some(3), "the later one, as a map's insert");
    }
}
