//! A route's JSON document read in one pass, following the route's paths
//! while parsing: only the nodes on the way to the values object, the time
//! and the metadata fields are looked at; everything else is skipped by the
//! parser without being built (no tree, no key strings). Leaves below the
//! values object go straight into the point. The result is the one
//! `document::decode_root` gives for the parsed tree. The walk is made by
//! the byte scanner of `scan.rs` first (no serde, same rules); where it is
//! not sure (bad syntax, escapes it would have to read, …) by serde from a
//! fresh state, so errors stay serde's.
//!
//! Invariants:
//! - syntax errors come first (the whole text is parsed before any other
//!   error is decided), then the errors in `decode_root`'s order: the time
//!   path, a missing values object, the default time keys;
//! - the time and metadata fields are small: they are kept as
//!   `serde_json::Value`s, as are the default time keys (`timestamp`, `ts`,
//!   `time`) beside the values, which are decided once all are seen;
//! - a shape the single pass does not follow (the values object inside a
//!   time or metadata field, 62 metadata fields or more) is decoded from
//!   the parsed tree instead, so the result never differs;
//! - one exception, a key repeated in one object (JSON leaves its meaning
//!   open): the tree keeps the last occurrence, the single pass reads each
//!   (`{"a":{"b":1},"a":2}` gives `a.b` and `a`, `{"a":{"b":1},"a":{"c":2}}`
//!   gives `a.b` and `a.c`; a leaf repeated gives the last, as the tree);
//! - an `auto` route's object ([`decode_auto_object`]) is told apart from
//!   dakkio's point shape in the same pass: the root's last `values` key
//!   being an object, as the tree's lookup would find it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as J;

use super::document::{decode_root, lookup_in, parse, read_time, usable, Ignored, Walker};
use super::document::{Arrays, PayloadSpec, TextPolicy};
use super::json::{check_depth, json_error_for};
use super::time::TimeSpec;
use super::{snippet, DecodeError, DecodeOptions, Decoded, Value, TIMESTAMP_KEYS};
use crate::reading::{FieldMap, Name};

/// Targets: bit 0 the values object, bit 1 the time, bit 2 + i the i-th
/// metadata field.
pub(super) const VALUES: u64 = 1;
pub(super) const TIME: u64 = 2;

/// What the values object turned out to be.
pub(super) enum Found {
    Missing,
    Object,
    Array,
    Leaf(J),
}

pub(super) struct Cx<'s> {
    pub(super) spec: &'s PayloadSpec,
    pub(super) out: Decoded,
    pub(super) ignored: Ignored,
    /// The dotted name of the current value (from the values object).
    pub(super) key: String,
    pub(super) values: Found,
    pub(super) time: Option<J>,
    /// The time read where it was found (a field that is only the time:
    /// no `serde_json::Value` built for it); reported in `finish` in the
    /// order `time` would be.
    pub(super) time_read: Option<Result<Option<i64>, DecodeError>>,
    pub(super) received_ms: i64,
    pub(super) metadata: Vec<Option<J>>,
    /// The values read in the walk, in document order: they become
    /// `out.point.values` in one step at the end (`flush_values`), which
    /// is cheaper than a sorted insert per value.
    pub(super) vals: Vec<(Name, Value)>,
    /// The metadata read in the walk (text values) and then the metadata
    /// fields, in that order: `out.point.metadata` in one step
    /// (`flush_meta`), one allocation with room for the caller's fields
    /// (`DecodeOptions::metadata_room`), where an insert per field grew
    /// the map twice and moved its entries (a fifteenth of routing a TTN
    /// uplink).
    pub(super) meta: Vec<(Name, J)>,
    /// `timestamp`, `ts`, `time` beside the values (no time path).
    pub(super) default_time: [Option<J>; 3],
    /// The first error of a value (reported after the time's).
    pub(super) value_error: Option<DecodeError>,
    /// A shape the single pass does not follow: decode the tree.
    pub(super) fallback: bool,
    /// The lengths of the dotted names, below the values object, of the
    /// time and metadata paths that lie there ([`len_bit`]; decided once,
    /// so that names of other lengths are not compared).
    pub(super) skip_lens: u64,
    /// The first bytes of those names (ASCII, by [`first_bit`]): with the
    /// length, most keys of the right length are told apart without a
    /// comparison (OwnTracks' `tst` beside `acc`, `lat`, `lon`, `tid`).
    pub(super) skip_firsts: u128,
    /// Those names (`PathTrie::skipped`).
    pub(super) skipped: &'s [Box<str>],
    /// The lengths of the ignore entries ([`len_bit`]; bit 63: one is 63
    /// bytes or longer, and names are checked in full).
    pub(super) ignore_lens: u64,
    /// `auto` format: note whether the root's (last) `values` is an
    /// object, which makes the payload dakkio's point shape.
    pub(super) detect_point: bool,
    /// The root's `values` key is being read.
    pub(super) probing: bool,
    pub(super) root_values_object: bool,
}

impl<'s> Cx<'s> {
    pub(super) fn path(&self, target: u32) -> &'s [String] {
        let spec = self.spec;
        match target {
            0 => &spec.values.0,
            1 => &spec.time.as_ref().expect("time target").0,
            i => &spec.metadata_fields[i as usize - 2].1 .0,
        }
    }

    /// How member `k` of an object walked as `walk` at `depth` (with path
    /// targets `targets`) is walked, and whether it probes the point shape
    /// (`values` at the root). A member walked as a child has its dotted
    /// name pushed on `key` (the caller truncates it after). The one rule
    /// of serde's walk here and of the byte scanner's (`scan.rs`).
    pub(super) fn member_walk(
        &mut self,
        walk: Walk,
        default_keys: bool,
        depth: usize,
        targets: u64,
        k: &str,
    ) -> (Walk, bool) {
        let walk = match walk {
            Walk::Base | Walk::Child => match default_keys.then(|| default_time_key(k)).flatten() {
                Some(i) => Walk::DefaultTime(i),
                None => {
                    let from = if self.key.is_empty() {
                        0
                    } else {
                        self.key.len() + 1
                    };
                    push_segment(&mut self.key, k);
                    if self.ignored_since(from) || self.skipped_name() {
                        Walk::No
                    } else {
                        Walk::Child
                    }
                }
            },
            Walk::No | Walk::DefaultTime(_) => Walk::No,
        };
        let walk = if targets & VALUES != 0 && self.path(0).len() == depth + 1 {
            if walk != Walk::No {
                self.fallback = true;
            }
            Walk::Base
        } else {
            walk
        };
        let probe = depth == 0 && self.detect_point && k == "values";
        if probe {
            // The last `values` decides, as in a parsed tree.
            self.root_values_object = false;
            self.probing = true;
        }
        (walk, probe)
    }

    /// Whether the current name is ignored (`PayloadSpec::ignores`), its
    /// parent's name (before `from`) having been found not to be, as it
    /// is in a walk (an ignored object is not walked into): only an
    /// entry ending in the new segment, at a `.` or at its end, can
    /// match, and the entries' lengths (`ignore_lens`) rule out most
    /// names without a comparison (the full rule compared every entry's
    /// prefix with every key).
    #[inline]
    fn ignored_since(&self, from: usize) -> bool {
        if self.ignore_lens == 0 {
            return false;
        }
        let key = self.key.as_bytes();
        let n = key.len();
        let ignored = if n >= 63 || self.ignore_lens & 1 << 63 != 0 {
            self.spec.ignores(&self.key)
        } else {
            let mut bits = self.ignore_lens & u64::MAX << from & u64::MAX >> (63 - n);
            let mut found = false;
            while bits != 0 {
                let l = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if (l == n || key[l] == b'.')
                    && self
                        .spec
                        .ignore
                        .iter()
                        .any(|e| super::paths::same(e, &self.key[..l]))
                {
                    found = true;
                    break;
                }
            }
            found
        };
        debug_assert_eq!(ignored, self.spec.ignores(&self.key), "{:?}", self.key);
        ignored
    }

    /// Whether the current name is a time or metadata path below the
    /// values object (those are not values).
    #[inline]
    pub(super) fn skipped_name(&self) -> bool {
        // No such path's dotted name has this length (most keys).
        if self.skip_lens & len_bit(self.key.len()) == 0
            || self.skip_firsts & first_bit(self.key.as_bytes()) == 0
        {
            return false;
        }
        let skipped = self
            .skipped
            .iter()
            .any(|s| super::paths::same(s, &self.key));
        debug_assert_eq!(skipped, {
            let spec = self.spec;
            let n = spec.values.0.len();
            spec.time
                .iter()
                .chain(spec.metadata_fields.iter().map(|(_, p)| p))
                .any(|p| {
                    p.0.len() > n
                        && p.0.starts_with(&spec.values.0)
                        && dotted_is(&self.key, &p.0[n..])
                })
        });
        skipped
    }

    /// The stored name of the current value (renamed or not).
    fn name(&self) -> &str {
        self.spec.rename.get(&self.key).unwrap_or(&self.key)
    }

    /// A leaf below the values object (`Walker::leaf`, without a tree).
    pub(super) fn leaf(&mut self, v: Leaf<'_>) {
        let value = match v {
            Leaf::Null => return,
            Leaf::Bool(b) => Value::Number(if b { 1.0 } else { 0.0 }),
            Leaf::Number(f) if f.is_finite() => Value::Number(f),
            Leaf::Number(f) => {
                if self.value_error.is_none() {
                    self.value_error = Some(DecodeError::NonFinite {
                        field: snippet(&self.key),
                        value: snippet(&f.to_string()),
                    });
                }
                return;
            }
            Leaf::Str(s) => match self.spec.state(s) {
                Some(n) => Value::Number(n),
                None => match self.spec.text {
                    TextPolicy::Value => Value::Text(s.to_owned()),
                    TextPolicy::Metadata => {
                        let name = self.name().into();
                        self.meta.push((name, J::String(s.to_owned())));
                        return;
                    }
                    TextPolicy::Ignore => {
                        self.ignored.text += 1;
                        return;
                    }
                },
            },
        };
        let name = self.spec.rename.get(&self.key).unwrap_or(&self.key);
        crate::reading::push_named(&mut self.vals, name, value);
    }

    /// The walk's buffers, cleared, for the next document.
    fn take_scratch(&mut self) -> Scratch {
        Scratch {
            key: std::mem::take(&mut self.key),
            metadata: std::mem::take(&mut self.metadata),
            vals: std::mem::take(&mut self.vals),
            meta: std::mem::take(&mut self.meta),
        }
    }

    /// The metadata gathered so far into `out.point.metadata`, before
    /// anything else writes there (a later write wins, as in document
    /// order), with `room` for the fields the caller adds.
    pub(super) fn flush_meta(&mut self, room: usize) {
        if self.meta.is_empty() {
            return;
        }
        if self.out.point.metadata.is_empty() {
            self.out.point.metadata = FieldMap::take_from_with_room(&mut self.meta, room);
        } else {
            self.out.point.metadata.extend(self.meta.drain(..));
        }
    }

    /// The walk's values into `out.point.values`, before anything else
    /// writes there (a later write wins, as in document order).
    fn flush_values(&mut self) {
        if self.vals.is_empty() {
            return;
        }
        if self.out.point.values.is_empty() {
            self.out.point.values = FieldMap::take_from(&mut self.vals);
        } else {
            self.out.point.values.extend(self.vals.drain(..));
        }
    }
}

/// Of `targets` (paths with `depth` segments consumed), those whose next
/// segment `matches`.
pub(super) fn child_targets(
    cx: &Cx<'_>,
    depth: usize,
    targets: u64,
    matches: impl Fn(&str) -> bool,
) -> u64 {
    let mut out = 0;
    let mut bits = targets;
    while bits != 0 {
        let t = bits.trailing_zeros();
        bits &= bits - 1;
        let path = cx.path(t);
        if path.len() > depth && matches(&path[depth]) {
            out |= 1 << t;
        }
    }
    out
}

/// Append `seg` to the dotted name `key` (after a `.` unless `key` is
/// empty). A key is a few bytes: copied in line (`reading::copy_short`),
/// where `push_str` called `memcpy` for each (most of the copying in
/// routing a Shelly status).
#[inline(always)]
pub(super) fn push_segment(key: &mut String, seg: &str) {
    if !key.is_empty() {
        key.push('.');
    }
    let n = seg.len();
    if n > 16 {
        key.push_str(seg);
        return;
    }
    key.reserve(n);
    // SAFETY: `reserve` made room for `n` more bytes after the length,
    // `copy_short` writes exactly the bytes `len..len + n` from `seg`'s
    // `n` bytes, and `seg` is a whole `str`, so the key stays UTF-8.
    unsafe {
        let v = key.as_mut_vec();
        let len = v.len();
        crate::reading::copy_short(seg.as_ptr(), v.as_mut_ptr().add(len), n);
        v.set_len(len + n);
    }
}

/// A length as one bit of a 64-bit set (63 and above share the last).
pub(super) fn len_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// A name's first byte as one bit of a 128-bit set (non-ASCII bytes and
/// the empty name share the last).
fn first_bit(name: &[u8]) -> u128 {
    1 << name.first().map_or(127, |&b| b.min(127))
}

/// Which of the default time keys ([`TIMESTAMP_KEYS`]) `k` is: all three
/// start with `t` and are 2, 4 or 9 bytes long, which rules out nearly
/// every key before a comparison.
#[inline]
fn default_time_key(k: &str) -> Option<usize> {
    if !k.starts_with('t') || !matches!(k.len(), 2 | 4 | 9) {
        return None;
    }
    TIMESTAMP_KEYS.iter().position(|t| *t == k)
}

/// Whether `key` is `segs` joined with dots.
fn dotted_is(key: &str, segs: &[String]) -> bool {
    let joined = segs.iter().map(String::len).sum::<usize>() + segs.len().saturating_sub(1);
    if key.len() != joined {
        return false;
    }
    // Bytes compared in line rather than `strip_prefix` (a `memcmp` call
    // per key of the right length and first byte: OwnTracks' `tid`).
    let mut rest = key.as_bytes();
    for (i, s) in segs.iter().enumerate() {
        if i > 0 {
            match rest.split_first() {
                Some((b'.', r)) => rest = r,
                _ => return false,
            }
        }
        let s = s.as_bytes();
        if rest.len() < s.len() || !rest.iter().zip(s).all(|(a, b)| a == b) {
            return false;
        }
        rest = &rest[s.len()..];
    }
    rest.is_empty()
}

pub(super) enum Leaf<'a> {
    Null,
    Bool(bool),
    Number(f64),
    Str(&'a str),
}

/// How a node takes part in the values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Walk {
    /// Not a value (outside the values object, ignored or skipped).
    No,
    /// The values object itself.
    Base,
    /// A value named by `Cx::key`.
    Child,
    /// The i-th default time key beside the values.
    DefaultTime(usize),
}

/// One node of the document: the targets whose paths pass through it
/// (`depth` segments consumed) and its part in the values.
struct Node<'c, 's> {
    cx: &'c mut Cx<'s>,
    depth: usize,
    targets: u64,
    walk: Walk,
}

impl Node<'_, '_> {
    fn ends_here(&self, t: u32) -> bool {
        self.cx.path(t).len() == self.depth
    }

    /// The targets of a child reached by `matches(segment)`.
    fn child_targets(&self, matches: impl Fn(&str) -> bool) -> u64 {
        child_targets(self.cx, self.depth, self.targets, matches)
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let mut capture = matches!(self.walk, Walk::DefaultTime(_));
        let mut bits = self.targets & !VALUES;
        while bits != 0 {
            let t = bits.trailing_zeros();
            bits &= bits - 1;
            capture |= self.ends_here(t);
        }
        if !capture {
            return d.deserialize_any(self);
        }
        if self.targets == TIME && self.walk == Walk::No {
            // Only the time (its path ends here: `capture`).
            let cx = self.cx;
            let spec = TimeSpec {
                format: cx.spec.time_format,
                zone: cx.spec.time_zone,
            };
            cx.time_read = Some(d.deserialize_any(TimeSeed {
                spec,
                received_ms: cx.received_ms,
            })?);
            return Ok(());
        }
        // A time or metadata field (or a default time key): kept whole;
        // the values object found in it is a shape for the tree.
        let v = <J as de::Deserialize>::deserialize(d)?;
        // The last user of `v` takes it; the others copy what they need.
        let walk_keeps = matches!(self.walk, Walk::DefaultTime(_) | Walk::Child);
        let mut v = Some(v);
        let mut bits = self.targets;
        while bits != 0 {
            let t = bits.trailing_zeros();
            bits &= bits - 1;
            let rest = &self.cx.path(t)[self.depth..];
            let whole = v.as_ref().expect("kept until its last user");
            let found = if !rest.is_empty() {
                lookup_in(whole, rest).cloned()
            } else if bits == 0 && !walk_keeps {
                v.take()
            } else {
                Some(whole.clone())
            };
            match t {
                0 => self.cx.fallback |= found.is_some(),
                1 => self.cx.time = found,
                i => self.cx.metadata[i as usize - 2] = found,
            }
        }
        let Some(v) = v else {
            return Ok(());
        };
        match self.walk {
            Walk::DefaultTime(i) => self.cx.default_time[i] = Some(v),
            Walk::Child => {
                let cx = &mut *self.cx;
                let mut walker = Walker {
                    spec: cx.spec,
                    skip: &[],
                    time_key: None,
                    out: &mut cx.out,
                    ignored: &mut cx.ignored,
                    key: std::mem::take(&mut cx.key),
                };
                let r = walker.child(&v);
                cx.key = walker.key;
                if let Err(e) = r {
                    cx.value_error.get_or_insert(e);
                }
            }
            Walk::No | Walk::Base => {}
        }
        Ok(())
    }
}

/// A time field read where it is found: text and numbers straight from
/// the parser, anything else built as a value for `read_time`'s error.
struct TimeSeed {
    spec: TimeSpec,
    received_ms: i64,
}

type TimeRead = Result<Option<i64>, DecodeError>;

impl TimeSeed {
    fn number(&self, n: f64) -> TimeRead {
        self.spec.from_number(n, self.received_ms).map(Some)
    }

    fn other(&self, v: J) -> TimeRead {
        read_time(&v, &self.spec, self.received_ms)
    }
}

impl<'de> Visitor<'de> for TimeSeed {
    type Value = TimeRead;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a time")
    }
    fn visit_str<E>(self, s: &str) -> Result<TimeRead, E> {
        Ok(self.spec.from_text(s, self.received_ms).map(Some))
    }
    // As `serde_json::Number::as_f64` reads them.
    fn visit_u64<E>(self, n: u64) -> Result<TimeRead, E> {
        Ok(self.number(n as f64))
    }
    fn visit_i64<E>(self, n: i64) -> Result<TimeRead, E> {
        Ok(self.number(n as f64))
    }
    fn visit_f64<E>(self, n: f64) -> Result<TimeRead, E> {
        Ok(self.number(n))
    }
    fn visit_unit<E>(self) -> Result<TimeRead, E> {
        Ok(Ok(None))
    }
    fn visit_bool<E>(self, b: bool) -> Result<TimeRead, E> {
        Ok(self.other(J::Bool(b)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TimeRead, A::Error> {
        let v = <J as de::Deserialize>::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(self.other(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TimeRead, A::Error> {
        let v = <J as de::Deserialize>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(self.other(v))
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl Node<'_, '_> {
    fn leaf<E>(self, v: Leaf<'_>) -> Result<(), E> {
        match self.walk {
            Walk::Base => {
                self.cx.values = Found::Leaf(match v {
                    Leaf::Null => J::Null,
                    Leaf::Bool(b) => J::Bool(b),
                    Leaf::Number(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
                    Leaf::Str(s) => J::String(s.to_owned()),
                })
            }
            Walk::Child => self.cx.leaf(v),
            Walk::No | Walk::DefaultTime(_) => {}
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.walk == Walk::Base {
            self.cx.values = Found::Object;
        }
        if self.depth == 1 && self.cx.probing {
            self.cx.root_values_object = true;
        }
        let default_keys = self.walk == Walk::Base && self.cx.spec.time.is_none();
        while let Some(Key(k)) = map.next_key::<Key>()? {
            let targets = self.child_targets(|seg| seg == k);
            let base = self.cx.key.len();
            let (walk, probe) =
                self.cx
                    .member_walk(self.walk, default_keys, self.depth, targets, &k);
            if targets == 0 && walk == Walk::No && !probe {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Node {
                    cx: &mut *self.cx,
                    depth: self.depth + 1,
                    targets,
                    walk,
                })?;
            }
            self.cx.probing = false;
            self.cx.key.truncate(base);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.walk == Walk::Base {
            self.cx.values = Found::Array;
        }
        let flatten =
            matches!(self.walk, Walk::Base | Walk::Child) && self.cx.spec.arrays == Arrays::Flatten;
        if matches!(self.walk, Walk::Base | Walk::Child) && !flatten {
            self.cx.ignored.arrays += 1;
        }
        let mut i = 0usize;
        loop {
            let targets = self.child_targets(|seg| seg.parse::<usize>() == Ok(i));
            let base = self.cx.key.len();
            let walk = if flatten {
                if base > 0 {
                    self.cx.key.push('.');
                }
                self.cx.key.push_str(itoa(i, &mut [0; 20]));
                if self.cx.spec.ignores(&self.cx.key) || self.cx.skipped_name() {
                    Walk::No
                } else {
                    Walk::Child
                }
            } else {
                Walk::No
            };
            let walk = if targets & VALUES != 0 && self.cx.path(0).len() == self.depth + 1 {
                if walk != Walk::No {
                    self.cx.fallback = true;
                }
                Walk::Base
            } else {
                walk
            };
            let more = if targets == 0 && walk == Walk::No {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Node {
                    cx: &mut *self.cx,
                    depth: self.depth + 1,
                    targets,
                    walk,
                })?
                .is_some()
            };
            self.cx.key.truncate(base);
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.leaf(Leaf::Null)
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.leaf(Leaf::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        self.leaf(Leaf::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<(), E> {
        self.leaf(Leaf::Number(n as f64))
    }
    fn visit_u64<E>(self, n: u64) -> Result<(), E> {
        self.leaf(Leaf::Number(n as f64))
    }
    fn visit_f64<E>(self, n: f64) -> Result<(), E> {
        self.leaf(Leaf::Number(n))
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.leaf(Leaf::Str(s))
    }
}

/// `i` in decimal without allocating.
pub(super) fn itoa(mut i: usize, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (i % 10) as u8;
        i /= 10;
        if i == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("ASCII digits")
}

/// Whether `text` has at most `max` `{` and `[` in all: then it cannot
/// nest deeper than `max`, and the depth scan (a byte at a time, minding
/// strings) is not needed. Counted 64 bytes at a time in byte lanes, which
/// the compiler vectorises.
fn fewer_brackets_than(text: &str, max: usize) -> bool {
    let mut n = 0usize;
    for chunk in text.as_bytes().chunks(64) {
        // `[` is 0x5b, `{` 0x7b: the only bytes that are `{` with 0x20 set.
        n += chunk
            .iter()
            .map(|&b| u8::from((b | 0x20) == b'{'))
            .sum::<u8>() as usize;
        if n > max {
            return false;
        }
    }
    true
}

/// The buffers of a walk, kept per thread from one document to the next
/// (cleared, capacity kept): no allocation per message for the dotted
/// names, the values, the metadata slots and fields; one thread-local
/// taken and put back per document (four were 3 % of an OwnTracks
/// message).
#[derive(Default)]
pub(super) struct Scratch {
    key: String,
    metadata: Vec<Option<J>>,
    vals: Vec<(Name, Value)>,
    meta: Vec<(Name, J)>,
}

impl Scratch {
    const fn new() -> Scratch {
        Scratch {
            key: String::new(),
            metadata: Vec::new(),
            vals: Vec::new(),
            meta: Vec::new(),
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = const { std::cell::Cell::new(Scratch::new()) };
}

/// Decode a JSON document by `spec` in one pass (see the module doc).
pub fn decode_document(
    text: &str,
    spec: &PayloadSpec,
    opts: &DecodeOptions,
    received_ms: i64,
) -> Result<(Decoded, Ignored), DecodeError> {
    match walk(text, spec, opts, received_ms, false)? {
        Walked::Document(r) => r,
        Walked::Point => unreachable!("not asked to detect the point shape"),
    }
}

/// What an `auto` route's JSON object is.
pub enum Walked {
    /// dakkio's point shape (a `values` object at the root, no paths):
    /// for `decode_json`'s point reading.
    Point,
    /// A document, read by the spec.
    Document(Result<(Decoded, Ignored), DecodeError>),
}

/// An `auto` route's JSON object (the text starts with `{`) in one pass:
/// the point shape when the spec reads no paths and the root's `values` is
/// an object, else the document. `Err`: the depth limit or the syntax,
/// which come before the shape is decided (as for a parsed tree).
pub fn decode_auto_object(
    text: &str,
    spec: &PayloadSpec,
    opts: &DecodeOptions,
    received_ms: i64,
) -> Result<Walked, DecodeError> {
    walk(text, spec, opts, received_ms, !spec.uses_paths())
}

fn walk(
    text: &str,
    spec: &PayloadSpec,
    opts: &DecodeOptions,
    received_ms: i64,
    detect_point: bool,
) -> Result<Walked, DecodeError> {
    walk_by(text, spec, opts, received_ms, detect_point, true)
}

/// [`Cx::skip_lens`] and [`Cx::skip_firsts`] of the dotted names, below
/// the values object, of the time and metadata paths that lie there
/// ([`Cx::skipped`]): their lengths and first bytes.
pub(super) fn skipped_names(names: &[Box<str>]) -> (u64, u128) {
    names.iter().fold((0, 0), |(lens, firsts), n| {
        (lens | len_bit(n.len()), firsts | first_bit(n.as_bytes()))
    })
}

/// A fresh walk state.
pub(super) fn new_cx(
    spec: &PayloadSpec,
    scratch: Scratch,
    received_ms: i64,
    detect_point: bool,
) -> Cx<'_> {
    // Decided once per spec, kept with its paths (`paths.rs`).
    let trie = super::paths::of(spec);
    let (skip_lens, skip_firsts) = trie.skipped_names;
    let ignore_lens = trie.ignore_lens;
    let Scratch {
        mut key,
        mut metadata,
        mut vals,
        mut meta,
    } = scratch;
    key.clear();
    vals.clear();
    meta.clear();
    metadata.clear();
    metadata.resize(spec.metadata_fields.len(), None);
    Cx {
        spec,
        out: Decoded::default(),
        ignored: Ignored::default(),
        key,
        values: Found::Missing,
        time: None,
        time_read: None,
        received_ms,
        metadata,
        vals,
        meta,
        default_time: [None, None, None],
        value_error: None,
        fallback: false,
        skip_lens,
        skip_firsts,
        skipped: &trie.skipped,
        ignore_lens,
        detect_point,
        probing: false,
        root_values_object: false,
    }
}

/// The targets of a walk from the root, and the root's part in the values.
pub(super) fn root_targets(spec: &PayloadSpec) -> (u64, Walk) {
    let all = (1u64 << (2 + spec.metadata_fields.len())) - 1;
    let targets = if spec.time.is_none() {
        all & !TIME
    } else {
        all
    };
    let walk = if spec.values.is_root() {
        Walk::Base
    } else {
        Walk::No
    };
    (targets, walk)
}

/// `walk`, with the byte scanner tried first or not (tests compare both).
pub(super) fn walk_by(
    text: &str,
    spec: &PayloadSpec,
    opts: &DecodeOptions,
    received_ms: i64,
    detect_point: bool,
    try_scan: bool,
) -> Result<Walked, DecodeError> {
    if spec.metadata_fields.len() >= 62 {
        // Paths: never the point shape.
        return by_tree(text, spec, opts, received_ms);
    }
    let mut cx = new_cx(spec, SCRATCH.take(), received_ms, detect_point);
    let walked = walk_cx(&mut cx, text, opts, try_scan);
    SCRATCH.set(cx.take_scratch());
    walked
}

/// [`walk_by`] in a fresh walk state `cx` (whose buffers it gives back).
fn walk_cx(
    cx: &mut Cx<'_>,
    text: &str,
    opts: &DecodeOptions,
    try_scan: bool,
) -> Result<Walked, DecodeError> {
    let spec = cx.spec;
    let (received_ms, detect_point) = (cx.received_ms, cx.detect_point);
    let (targets, root_walk) = root_targets(spec);
    // The byte scanner first (`scan.rs`); where it is not sure, serde
    // walks the text again from a fresh state. The scanner keeps to the
    // depth limit itself: a text it reads is valid JSON nested no deeper,
    // which the depth check would have passed.
    let scanned = try_scan.then(|| super::scan::walk(cx, text, targets, root_walk, opts.max_depth));
    let parsed = match scanned.flatten() {
        Some(()) => Ok(()),
        None => {
            *cx = new_cx(spec, cx.take_scratch(), received_ms, detect_point);
            // The depth limit first, then the syntax (serde's).
            if fewer_brackets_than(text, opts.max_depth) {
                Ok(())
            } else {
                check_depth(text, opts.max_depth)
            }
            .and_then(|()| {
                let mut de = serde_json::Deserializer::from_str(text);
                let root = Node {
                    cx: &mut *cx,
                    depth: 0,
                    targets,
                    walk: root_walk,
                };
                root.deserialize(&mut de)
                    .and_then(|()| de.end())
                    .map_err(|e| json_error_for(e, text, opts))
            })
        }
    };
    cx.flush_values();
    parsed?;
    if cx.root_values_object {
        return Ok(Walked::Point);
    }
    if cx.fallback {
        // A values object inside a time or metadata field: paths, so
        // never the point shape.
        return by_tree(text, spec, opts, received_ms);
    }
    Ok(Walked::Document(finish(cx, text, opts, received_ms)))
}

/// The document parsed into a tree and decoded from it (`decode_root`).
fn by_tree(
    text: &str,
    spec: &PayloadSpec,
    opts: &DecodeOptions,
    received_ms: i64,
) -> Result<Walked, DecodeError> {
    let root = parse(text, opts)?;
    Ok(Walked::Document(decode_root(
        &root,
        text,
        spec,
        opts,
        received_ms,
    )))
}

/// The errors and rules `decode_root` applies after the walk. `cx` by
/// reference: the walk state is a few hundred bytes, and moving it here
/// was a `memcpy` per message.
fn finish(
    cx: &mut Cx<'_>,
    text: &str,
    opts: &DecodeOptions,
    received_ms: i64,
) -> Result<(Decoded, Ignored), DecodeError> {
    let spec = cx.spec;
    let time_spec = TimeSpec {
        format: spec.time_format,
        zone: spec.time_zone,
    };
    if let Some(read) = cx.time_read.take() {
        cx.out.point.timestamp_ms = read?;
    } else if let Some(t) = &cx.time {
        cx.out.point.timestamp_ms = read_time(t, &time_spec, received_ms)?;
    }
    match std::mem::replace(&mut cx.values, Found::Missing) {
        Found::Missing => {
            return Err(DecodeError::NoNumericValue {
                snippet: format!("nothing at `{}`", spec.values.dotted()),
            })
        }
        Found::Object => {
            // The default time keys: the last present is the time, the
            // others are values.
            let mut time_key = None;
            for (i, t) in cx.default_time.iter().enumerate() {
                if let Some(t) = t {
                    cx.out.point.timestamp_ms = read_time(t, &time_spec, received_ms)?;
                    time_key = Some(i);
                }
            }
            let defaults = std::mem::take(&mut cx.default_time);
            if defaults.iter().any(Option::is_some) {
                // The walker writes the map itself: what the walk
                // gathered goes first.
                cx.flush_meta(opts.metadata_room);
            }
            for (i, (k, v)) in TIMESTAMP_KEYS.iter().zip(defaults).enumerate() {
                let Some(v) = v.filter(|_| Some(i) != time_key) else {
                    continue;
                };
                let n = spec.values.0.len();
                let skipped = spec.metadata_fields.iter().any(|(_, p)| {
                    p.0.len() == n + 1 && p.0.starts_with(&spec.values.0) && p.0[n] == *k
                });
                if skipped {
                    continue;
                }
                let mut walker = Walker {
                    spec,
                    skip: &[],
                    time_key: None,
                    out: &mut cx.out,
                    ignored: &mut cx.ignored,
                    key: (*k).to_owned(),
                };
                if let Err(e) = walker.child(&v) {
                    cx.value_error.get_or_insert(e);
                }
            }
        }
        Found::Array => {}
        Found::Leaf(leaf) => {
            // A path straight to a single value: named by its last segment.
            cx.flush_meta(opts.metadata_room);
            let mut walker = Walker {
                spec,
                skip: &[],
                time_key: None,
                out: &mut cx.out,
                ignored: &mut cx.ignored,
                key: spec.values.0.last().cloned().unwrap_or_else(|| {
                    opts.scalar_field
                        .clone()
                        .unwrap_or_else(|| super::DEFAULT_FIELD.to_owned())
                }),
            };
            walker.leaf(&leaf)?;
        }
    }
    if let Some(e) = cx.value_error.take() {
        return Err(e);
    }
    let names = &super::paths::of(spec).metadata_names;
    let meta = &mut cx.meta;
    meta.reserve(cx.metadata.len());
    for (key, slot) in names.iter().zip(cx.metadata.iter_mut()) {
        let Some(v) = slot.as_ref().filter(|v| !v.is_null()) else {
            continue;
        };
        let v: *const J = v;
        let len = meta.len();
        // SAFETY: `reserve` made room for every slot; the entry at `len`
        // gets both fields before the length takes it in. The value is
        // moved by one copy of the whole of it (moved as an `Option`
        // and a tuple, it went through the stack in pieces that were read
        // back at once, a stalled load per field: a twentieth of routing
        // a TTN uplink), and its slot is then overwritten with `None`
        // without dropping it, so it is owned once.
        unsafe {
            let dst = meta.as_mut_ptr().add(len);
            key.clone_to(std::ptr::addr_of_mut!((*dst).0));
            std::ptr::copy_nonoverlapping(v, std::ptr::addr_of_mut!((*dst).1), 1);
            std::ptr::write(slot, None);
            meta.set_len(len + 1);
        }
    }
    cx.metadata.clear();
    cx.flush_meta(opts.metadata_room);
    usable(
        std::mem::take(&mut cx.out),
        std::mem::take(&mut cx.ignored),
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::timefmt::{TimeFormat, TimeZone};
    use crate::ingest::decode::document::FieldPath;

    fn base() -> PayloadSpec {
        PayloadSpec::default()
    }

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    /// The in-line copy appends what `push`/`push_str` append, for every
    /// length around its word sizes, non-ASCII included, onto keys with
    /// and without room.
    #[test]
    fn a_segment_is_appended_as_push_str_appends_it() {
        let text = "abcdefghijklmnopqrstuvwxyzé0123456789";
        for prefix in ["", "a", "temperature"] {
            for n in (0..=text.len()).filter(|&n| text.is_char_boundary(n)) {
                let seg = &text[..n];
                let mut want = prefix.to_owned();
                if !want.is_empty() {
                    want.push('.');
                }
                want.push_str(seg);
                for room in [0, 64] {
                    let mut key = String::with_capacity(prefix.len() + room);
                    key.push_str(prefix);
                    push_segment(&mut key, seg);
                    assert_eq!(key, want, "{prefix:?} + {seg:?}");
                }
            }
        }
    }

    /// The single pass gives what the tree gives, result or error, for
    /// documents and specs of every shape (paths through arrays, times and
    /// metadata inside the values, default time keys, flatten, ignores,
    /// renames, text policies, a values object inside a metadata field).
    #[test]
    fn same_as_the_tree() {
        let docs = [
            r#"{"temperature":21.5,"humidity":44.72,"battery":97,"linkquality":120}"#,
            r#"{"state":"ON","power":1.5,"action":"single","n":null,"b":true}"#,
            r#"{"Time":"2024-01-15T11:30:00","AM2301":{"Temperature":21.6,"Humidity":53.4},"TempUnit":"C"}"#,
            r#"{"ts":1705314600,"time":"2024-01-15T10:30:00Z","timestamp":1705314600000,"t":1}"#,
            r#"{"ts":"bad","t":1}"#,
            r#"{"ts":1705314600,"t":1}"#,
            r#"{"apower":12.5,"aenergy":{"total":3.2,"by_minute":[1,2,{"x":"a"}]},"tags":["a"],"raw":{"a":1}}"#,
            r#"{"received_at":"2024-01-15T10:30:00.5Z","uplink_message":{"decoded_payload":{"temp":21.5,"raw":{"a":1},"ok":true},"rx_metadata":[{"rssi":-42},{"rssi":-50}]}}"#,
            r#"{"received_at":"yesterday","uplink_message":{"decoded_payload":{"t":1}}}"#,
            r#"{"uplink_message":{"decoded_payload":21.5}}"#,
            r#"{"uplink_message":{"decoded_payload":[1,2]}}"#,
            r#"{"uplink_message":{"decoded_payload":{"t":"x\"y","k\u00e9":1}}}"#,
            r#"[1,2,{"a":3}]"#,
            r#"{"x":1}"#,
            r#"{"a":{"b":{"c":1,"d":"idle"}},"e":[{"f":2}]}"#,
            r#"{"a":1,"b":{"c":2"#,
            r#"{"a":1} x"#,
            r#"{"Time":null,"v":1}"#,
            r#"{"Time":[1],"v":1}"#,
            r#"{"Time":true,"v":1}"#,
            r#"{"Time":{"a":[1,{"b":2}]},"v":1}"#,
            r#"{"Time":1705314600,"v":1}"#,
            r#"{"Time":-1.5e3,"received_at":"2024-01-15T10:30:00\u005a","v":1}"#,
            r#"{"tst":1705314600123,"received_at":1705314600,"v":"2"}"#,
            // Keys of the length and first byte of a time or metadata
            // path below the values (`tst`, `tid`), and the default time
            // keys' lengths and first byte (`tx`, `tsx`, `tim`).
            r#"{"_type":"location","acc":13,"tid":"j1","tst":1707057574,"tsx":2,"tx":3,"tim":4,"time":5,"x":{"tst":1,"ts":6}}"#,
            // Keys holding dots, beside ignored dotted names: an ignored
            // name may be a dotted prefix of a key's whole name.
            // (No two keys make the same name: the tree would keep the
            // later in key order, the single pass the later in the text.)
            r#"{"a.b":1,"a":{"c":3,"b.x":7,"bc":9},"x":{"a.b":5},"ab":6,"a.bc":8,"b":[{"c.d":1}],"q":{"r.s":{"t":2}}}"#,
        ];
        let mut specs = vec![PayloadSpec::default()];
        let mut s = base();
        s.arrays = Arrays::Flatten;
        s.text = TextPolicy::Metadata;
        s.ignore = vec!["raw".into(), "e.0".into()];
        s.rename = [("temp".to_owned(), "temperature".to_owned())].into();
        specs.push(s);
        let mut s = base();
        s.arrays = Arrays::Flatten;
        s.ignore = ["a.b", "x.a.b", "b.0.c", "ab", "q.r"]
            .map(String::from)
            .into();
        specs.push(s);
        let mut s = base();
        s.values = p("uplink_message.decoded_payload");
        s.time = Some(p("received_at"));
        s.time_format = TimeFormat::Iso8601;
        s.metadata_fields = vec![
            ("rssi".into(), p("uplink_message.rx_metadata.1.rssi")),
            ("missing".into(), p("nope.nope")),
            ("t".into(), p("uplink_message.decoded_payload.t")),
        ];
        s.text = TextPolicy::Ignore;
        specs.push(s.clone());
        s.metadata_fields
            .push(("uplink".into(), p("uplink_message")));
        specs.push(s);
        let mut s = base();
        s.time = Some(p("Time"));
        s.time_format = TimeFormat::Iso8601;
        s.time_zone = TimeZone::Fixed(3600);
        s.metadata_fields = vec![
            ("unit".into(), p("TempUnit")),
            ("a".into(), p("a")),
            ("ab".into(), p("a.b.c")),
            ("f".into(), p("e.0.f")),
        ];
        specs.push(s.clone());
        s.arrays = Arrays::Flatten;
        s.values = p("aenergy");
        specs.push(s);
        // OwnTracks: the time and a metadata field among the values.
        let mut s = base();
        s.time = Some(p("tst"));
        s.time_format = TimeFormat::UnixS;
        s.metadata_fields = vec![("tid".into(), p("tid")), ("xt".into(), p("x.tst"))];
        s.text = TextPolicy::Metadata;
        specs.push(s);
        // More distinct next segments than the scanner's search holds
        // (eight): the targets are searched per key.
        let mut s = base();
        s.metadata_fields = [
            "temperature",
            "humidity",
            "battery",
            "state",
            "power",
            "apower",
            "Time",
            "ts",
            "tst",
            "aenergy.total",
            "a.b.c",
            "x",
        ]
        .iter()
        .enumerate()
        .map(|(i, path)| (format!("m{i}"), p(path)))
        .collect();
        specs.push(s);
        let opts = DecodeOptions::default();
        for (i, spec) in specs.iter().enumerate() {
            for text in docs {
                let tree =
                    parse(text, &opts).and_then(|root| decode_root(&root, text, spec, &opts, 1000));
                for try_scan in [true, false] {
                    let one = match walk_by(text, spec, &opts, 1000, false, try_scan) {
                        Ok(Walked::Document(r)) => r,
                        Ok(Walked::Point) => unreachable!("not detecting"),
                        Err(e) => Err(e),
                    };
                    assert_eq!(
                        format!("{one:?}"),
                        format!("{tree:?}"),
                        "spec {i}, scan {try_scan}, {text}"
                    );
                }
            }
        }
    }

    /// Malformed JSON in a part the route skips (TTN's `rx_metadata`,
    /// `settings`) is still a reject, with serde's message: the scanner
    /// checks the structure of what it skips and leaves any doubt to
    /// serde.
    #[test]
    fn malformed_skipped_parts_are_rejected_as_before() {
        let mut spec = base();
        spec.values = p("uplink_message.decoded_payload");
        spec.time = Some(p("received_at"));
        spec.metadata_fields = vec![("rssi".into(), p("uplink_message.rx_metadata.0.rssi"))];
        let opts = DecodeOptions::default();
        let good = r#"{"received_at":"2024-01-15T10:30:00Z","uplink_message":{"decoded_payload":{"t":1},"rx_metadata":[{"rssi":-35,"x":SKIP}],"settings":{"a":1}}}"#;
        let ok =
            decode_document(&good.replace("SKIP", "\"a\\u00e9\\n\""), &spec, &opts, 0).unwrap();
        assert_eq!(ok.0.point.metadata["rssi"], -35);
        for bad in [
            r#""bad \q escape""#,
            r#""short \u12""#,
            r#""hex \u12g4""#,
            "\"control \u{1} byte\"",
            r#""unterminated"#,
            "01",
            "1.",
            "-",
            "1e+",
            "tru",
            "nul",
            "[1,]",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            "[1 2]",
            r#"{"a":[1}"#,
        ] {
            let text = good.replace("SKIP", bad);
            let e = decode_document(&text, &spec, &opts, 0).unwrap_err();
            assert_eq!(e.reason(), "invalid_json", "{bad}");
            let serde = match walk_by(&text, &spec, &opts, 0, false, false) {
                Ok(Walked::Document(r)) => r.unwrap_err(),
                Ok(Walked::Point) => unreachable!("not detecting"),
                Err(e) => e,
            };
            assert_eq!(e, serde, "{bad}");
        }
        // Trailing text after the document.
        let e = decode_document(&format!("{} x", good.replace("SKIP", "1")), &spec, &opts, 0);
        assert_eq!(e.unwrap_err().reason(), "invalid_json");
    }

    #[test]
    fn bracket_count() {
        assert!(fewer_brackets_than("", 0));
        assert!(fewer_brackets_than(r#"{"a":[1,{"b":"["}]}"#, 4));
        assert!(!fewer_brackets_than(r#"{"a":[1,{"b":"["}]}"#, 3));
        assert!(!fewer_brackets_than(&"[".repeat(200), 130));
        assert!(fewer_brackets_than(&"{}".repeat(100), 100));
        assert!(fewer_brackets_than(&"z{".repeat(100), 100));
        assert!(!fewer_brackets_than(&"z{".repeat(100), 99));
        // The scan still decides when the count cannot.
        let opts = DecodeOptions::default();
        let deep = format!("{}1{}", "[".repeat(33), "]".repeat(33));
        let e = decode_document(&deep, &base(), &opts, 0).unwrap_err();
        assert_eq!(e.reason(), "too_deep");
        let in_text = format!(r#"{{"s":"{}","v":1}}"#, "[".repeat(100));
        assert!(decode_document(&in_text, &base(), &opts, 0).is_ok());
    }

    #[test]
    fn dotted_names_match_their_segments() {
        let segs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (key, path, want) in [
            ("tst", &["tst"][..], true),
            ("tid", &["tst"], false),
            ("a.bc", &["a", "bc"], true),
            ("ab.c", &["a", "bc"], false),
            ("a_bc", &["a", "bc"], false),
            ("a.b", &["a.b"], true),
            ("é.x", &["é", "x"], true),
            ("é.y", &["é", "x"], false),
            ("", &[], true),
            ("x", &[], false),
        ] {
            assert_eq!(dotted_is(key, &segs(path)), want, "{key} {path:?}");
        }
    }

    #[test]
    fn itoa_writes_decimal() {
        for i in [0, 7, 10, 123, usize::MAX] {
            assert_eq!(itoa(i, &mut [0; 20]), i.to_string());
        }
    }
}
