//! [`FieldMap`], the map of a reading's values and of its metadata: names
//! to values, kept in one vector sorted by name.
//!
//! A reading holds a handful of values and metadata fields (one to a dozen)
//! and is built and dropped once per message. A `BTreeMap` allocated a
//! 700-byte node for the first entry, walked it on every insert and again
//! on drop: about a tenth of routing a Shelly or OwnTracks message. Here a
//! map is one allocation of exactly its entries, an insert in name order is
//! a push, and a drop frees one block.
//!
//! Invariants:
//! - the entries are sorted by name (bytes, as `str` orders) and no name
//!   appears twice, so iteration order, equality, `Debug` and serialisation
//!   are the ones a `BTreeMap` gave;
//! - inserting a name already present replaces its value and returns the
//!   old one, and deserialising a JSON object with a key repeated keeps the
//!   last, as `BTreeMap` did.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Name;

/// Names to values, sorted by name (see the module doc).
#[derive(Clone, PartialEq)]
pub struct FieldMap<V> {
    entries: Vec<(Name, V)>,
}

/// `(name, value)` of an entry, by reference.
type RefPair<'a, V> = (&'a Name, &'a V);

pub type Iter<'a, V> =
    std::iter::Map<std::slice::Iter<'a, (Name, V)>, fn(&'a (Name, V)) -> RefPair<'a, V>>;

fn pair<V>(e: &(Name, V)) -> RefPair<'_, V> {
    (&e.0, &e.1)
}

impl<V> Default for FieldMap<V> {
    fn default() -> Self {
        FieldMap {
            entries: Vec::new(),
        }
    }
}

impl<V> FieldMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `n` entries without growing.
    pub fn with_capacity(n: usize) -> Self {
        FieldMap {
            entries: Vec::with_capacity(n),
        }
    }

    /// Room for `n` more entries without growing (a router adding the
    /// topic's fields to a decoded point's metadata: one growth, not one
    /// per field).
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve_exact(n);
    }

    /// Where `k` is, or where it would go.
    #[inline]
    fn find(&self, k: &str) -> Result<usize, usize> {
        // Most maps are built in name order or nearly: the last entry
        // first, then a binary search (a dozen entries at most in practice).
        match self.entries.last() {
            None => Err(0),
            Some((last, _)) => match cmp(last, k) {
                std::cmp::Ordering::Less => Err(self.entries.len()),
                std::cmp::Ordering::Equal => Ok(self.entries.len() - 1),
                std::cmp::Ordering::Greater => self.entries.binary_search_by(|(n, _)| cmp(n, k)),
            },
        }
    }

    /// The map of `entries` pushed in any order (a name pushed again
    /// replaces the earlier value, as [`insert`](Self::insert) would), in
    /// one allocation of exactly their number; `entries` is left empty
    /// with its capacity, for the next message. A decoder collects a
    /// message's values so: no insert per value, no growth of the map.
    pub fn take_from(entries: &mut Vec<(Name, V)>) -> Self {
        Self::take_from_with_room(entries, 0)
    }

    /// [`take_from`](Self::take_from), with room for `room` more entries
    /// (fields the caller adds next: one allocation in all).
    pub fn take_from_with_room(entries: &mut Vec<(Name, V)>, room: usize) -> Self {
        let n = entries.len();
        // Already in name order, no name twice (a document whose keys are
        // sorted, as OwnTracks sends them; one entry): moved as they are.
        if entries.windows(2).all(|w| w[0].0 < w[1].0) {
            let mut exact = Vec::with_capacity(n + room);
            exact.append(entries);
            return FieldMap { entries: exact };
        }
        Self::take_unsorted(entries, room)
    }

    /// [`take_from_with_room`](Self::take_from_with_room) of entries out
    /// of order: sorted (stable), the last of each name kept.
    fn take_unsorted(entries: &mut Vec<(Name, V)>, room: usize) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let n = entries.len();
        let mut kept = 0;
        for i in 0..n {
            let last_of_name = i + 1 == n || entries[i].0.cmp(&entries[i + 1].0).is_ne();
            if last_of_name {
                // In place already unless a name came twice (a swap of
                // an entry with itself went through the stack).
                if kept != i {
                    entries.swap(kept, i);
                }
                kept += 1;
            }
        }
        entries.truncate(kept);
        let mut exact = Vec::with_capacity(kept + room);
        exact.append(entries);
        FieldMap { entries: exact }
    }

    /// Set `k` to `v`; the value it replaced, if any.
    #[inline]
    pub fn insert(&mut self, k: Name, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, v)),
            Err(i) if i == self.entries.len() => {
                self.entries.push((k, v));
                None
            }
            Err(i) => {
                self.entries.insert(i, (k, v));
                None
            }
        }
    }

    pub fn get<Q: AsRef<str> + ?Sized>(&self, k: &Q) -> Option<&V> {
        self.find(k.as_ref()).ok().map(|i| &self.entries[i].1)
    }

    pub fn contains_key<Q: AsRef<str> + ?Sized>(&self, k: &Q) -> bool {
        self.find(k.as_ref()).is_ok()
    }

    pub fn remove<Q: AsRef<str> + ?Sized>(&mut self, k: &Q) -> Option<V> {
        match self.find(k.as_ref()) {
            Ok(i) => Some(self.entries.remove(i).1),
            Err(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in name order.
    pub fn iter(&self) -> Iter<'_, V> {
        self.entries
            .iter()
            .map(pair as fn(&(Name, V)) -> RefPair<'_, V>)
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Name> + ExactSizeIterator + '_ {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator + '_ {
        self.entries.iter().map(|(_, v)| v)
    }
}

/// As `str` orders, in line (names are short: a `memcmp` call per
/// comparison was most of an insert).
#[inline]
fn cmp(a: &Name, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

impl<V> std::ops::Index<&str> for FieldMap<V> {
    type Output = V;
    fn index(&self, k: &str) -> &V {
        self.get(k).expect("no entry of that name in the map")
    }
}

impl<V> Extend<(Name, V)> for FieldMap<V> {
    fn extend<I: IntoIterator<Item = (Name, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<V> FromIterator<(Name, V)> for FieldMap<V> {
    fn from_iter<I: IntoIterator<Item = (Name, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut m = FieldMap::with_capacity(iter.size_hint().0);
        m.extend(iter);
        m
    }
}

impl<V, const N: usize> From<[(Name, V); N]> for FieldMap<V> {
    fn from(entries: [(Name, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<V> IntoIterator for FieldMap<V> {
    type Item = (Name, V);
    type IntoIter = std::vec::IntoIter<(Name, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, V> IntoIterator for &'a FieldMap<V> {
    type Item = (&'a Name, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<V: fmt::Debug> fmt::Debug for FieldMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Serialize> Serialize for FieldMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for FieldMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = FieldMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut m = FieldMap::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = access.next_entry::<Name, V>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A small deterministic sequence (no dependency on a random crate).
    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn behaves_as_a_btree_map_under_random_inserts_and_removes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..200 {
            let mut ours: FieldMap<u64> = FieldMap::new();
            let mut theirs: BTreeMap<String, u64> = BTreeMap::new();
            for step in 0..(round % 40 + 1) {
                let r = xorshift(&mut seed);
                // Names with shared prefixes and of several lengths.
                let k = format!(
                    "{}{}",
                    ["a", "ab", "b", "temperature.t", ""][r as usize % 5],
                    r % 7
                );
                if r % 5 == 0 {
                    assert_eq!(ours.remove(k.as_str()), theirs.remove(&k), "{round}/{step}");
                } else {
                    assert_eq!(
                        ours.insert(Name::new(&k), step),
                        theirs.insert(k.clone(), step)
                    );
                }
                assert_eq!(ours.get(k.as_str()), theirs.get(&k));
            }
            let a: Vec<(String, u64)> = ours.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let b: Vec<(String, u64)> = theirs.into_iter().collect();
            assert_eq!(a, b, "round {round}");
        }
    }

    #[test]
    fn a_map_taken_from_pushed_entries_is_the_map_their_inserts_make() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let mut scratch = Vec::new();
        // Sorted and unsorted pushes; names held in place and on the
        // heap, and values that own memory (a replaced one is dropped
        // once: a double drop would abort the test).
        for round in 0..300 {
            let mut inserted: FieldMap<String> = FieldMap::new();
            let names = 1 + round % 70;
            for step in 0..(round % 90) {
                let n = xorshift(&mut seed) % names;
                let k = Name::new(&match n % 3 {
                    0 => format!("k{n}"),
                    _ => format!("a_name_longer_than_thirty_bytes_{n}"),
                });
                scratch.push((k.clone(), step.to_string()));
                inserted.insert(k, step.to_string());
            }
            let room = (round % 3) as usize;
            let taken = FieldMap::take_from_with_room(&mut scratch, room);
            assert_eq!(taken, inserted, "round {round}");
            assert_eq!(
                taken.entries.capacity(),
                taken.len() + room,
                "one exact allocation, with the room asked for"
            );
            assert!(scratch.is_empty());
        }
    }

    #[test]
    fn serialises_as_a_json_object_in_name_order_and_keeps_the_last_repeat() {
        let m: FieldMap<i64> =
            serde_json::from_str(r#"{"b":1,"a":2,"b":3}"#).expect("a JSON object");
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":2,"b":3}"#);
        assert_eq!(format!("{m:?}"), r#"{"a": 2, "b": 3}"#);
        assert_eq!(m["b"], 3);
        assert!(serde_json::from_str::<FieldMap<i64>>("[1]").is_err());
    }

    #[test]
    fn equal_maps_compare_equal_whatever_the_insert_order() {
        let a: FieldMap<i32> = [(Name::new("x"), 1), (Name::new("y"), 2)].into();
        let b: FieldMap<i32> = [(Name::new("y"), 2), (Name::new("x"), 1)].into();
        assert_eq!(a, b);
        assert_ne!(a, FieldMap::from([(Name::new("x"), 1)]));
    }
}
