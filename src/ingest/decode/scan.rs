//! The single pass of `stream.rs` without serde: a byte scanner that
//! follows the route's paths the same way (`Node`'s rules, event for
//! event, into the same `Cx`) through a trie of them built once per spec
//! (`paths.rs`), skips everything else with its whole grammar checked
//! (`skip.rs`: a string's end found 16, then 32 bytes at a time), and
//! reads strings without escapes straight from the text.
//! For an 882-byte TTN uplink most of the text is skipped (`rx_metadata`,
//! `settings`, ids), which is where serde's per-value dispatch cost most.
//!
//! Invariants:
//! - it only ever says "this is the walk serde would have made" or "not
//!   sure" (`None`): any syntax error, any escape in a string it must read
//!   (keys on a path or below the values, text values), a number outside
//!   what it reads exactly, a captured object or array, a nesting past the
//!   route's depth limit (or 100 levels): `None`, and `stream.rs` walks the text with serde from a fresh
//!   state, so errors (and their messages) are serde's, unchanged;
//! - what it accepts is a subset of what serde_json accepts: strings stop
//!   at `"`, `\` or a control byte; skipped escapes are checked as
//!   serde_json's `ignore_str` does (`\uXXXX` with four hex digits, no
//!   surrogate check, as serde when it skips); numbers follow JSON's
//!   grammar; whitespace is JSON's four bytes; nothing may follow the root;
//! - numbers it reads come out as serde's visitor gets them: an integer of
//!   at most 19 digits as `u64` (negative: `-(n as f64)`, which is what
//!   serde's `i64`, or `-0.0`, gives), a number with a fraction or exponent
//!   by Rust's `f64` parser (correctly rounded, as serde_json with
//!   `float_roundtrip`); an out-of-range one is `None` (serde's error).

use serde_json::Value as J;

use super::document::Arrays;
use super::paths::{self, PathTrie};
use super::skip;
use super::stream::{itoa, Cx, Found, Leaf, Walk, TIME, VALUES};
use super::time::TimeSpec;

/// Deeper documents are left to serde (its own limit is 128).
const MAX_DEPTH: usize = 100;

/// Walk `text` from its root into `cx` as `stream.rs`'s `Node` would.
/// `None`: not sure (see the module doc); `cx` is then partly written and
/// must be discarded.
pub(super) fn walk(
    cx: &mut Cx<'_>,
    text: &str,
    targets: u64,
    root: Walk,
    max_depth: usize,
) -> Option<()> {
    if max_depth > MAX_DEPTH {
        return None;
    }
    let trie = paths::of(cx.spec);
    let mut s = Scan {
        b: text.as_bytes(),
        s: text,
        i: 0,
        max: max_depth,
        trie,
    };
    s.node(cx, 0, targets, trie.root(), root)?;
    match s.ws() {
        None => Some(()),
        Some(_) => None,
    }
}

/// A number as serde's visitor receives it.
#[derive(Clone, Copy)]
enum Num {
    /// A non-negative integer (`visit_u64`).
    U(u64),
    /// A negative integer of this magnitude (`visit_i64`, or `-0.0`).
    Neg(u64),
    /// With a fraction or an exponent (`visit_f64`).
    F(f64),
}

impl Num {
    fn f64(self) -> f64 {
        match self {
            Num::U(n) => n as f64,
            Num::Neg(n) => -(n as f64),
            Num::F(f) => f,
        }
    }

    /// The `serde_json::Value` serde builds for it.
    fn json(self) -> J {
        match self {
            Num::U(n) => J::from(n),
            Num::Neg(n) if n > 0 && n <= i64::MAX as u64 + 1 => J::from((n as i64).wrapping_neg()),
            other => serde_json::Number::from_f64(other.f64()).map_or(J::Null, J::Number),
        }
    }
}

/// Powers of ten that a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A JSON number read in one pass: its grammar checked, its end found and
/// its digits gathered as they go by (the scanner read each number twice
/// before, once for its span and once for its value).
struct Decimal {
    end: usize,
    neg: bool,
    /// The digits as an integer (wrapping past 19 digits: then `digits`
    /// says so).
    mant: u64,
    /// How many digits, leading zeros included.
    digits: usize,
    /// Digits before the point.
    int_digits: usize,
    /// A fraction or an exponent: a float for serde.
    float: bool,
    /// The power of ten to scale `mant` by (the fraction's digits and the
    /// exponent); meaningful while `exp_small`.
    exp: i32,
    exp_small: bool,
}

impl Decimal {
    /// The number starting at `b[i]`; `None` where JSON's grammar says no.
    #[inline(always)]
    fn read(b: &[u8], mut i: usize) -> Option<Decimal> {
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let mut mant = 0u64;
        let digits_from = i;
        let gather = |i: &mut usize, mant: &mut u64| {
            while let Some(&c) = b.get(*i).filter(|c| c.is_ascii_digit()) {
                *mant = mant.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
                *i += 1;
            }
        };
        match b.get(i)? {
            b'0' => {
                i += 1;
                if b.get(i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => gather(&mut i, &mut mant),
            _ => return None,
        }
        let int_digits = i - digits_from;
        let mut digits = int_digits;
        let (mut float, mut exp, mut exp_small) = (false, 0i32, true);
        if b.get(i) == Some(&b'.') {
            i += 1;
            float = true;
            let from = i;
            gather(&mut i, &mut mant);
            if i == from {
                return None;
            }
            digits += i - from;
            // Past 19 digits the fast path declines anyway.
            exp = -((i - from).min(1000) as i32);
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            float = true;
            let eneg = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let from = i;
            let mut e = 0i32;
            while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
                if e > 1000 {
                    exp_small = false;
                } else {
                    e = e * 10 + i32::from(c - b'0');
                }
                i += 1;
            }
            if i == from {
                return None;
            }
            exp += if eneg { -e } else { e };
        }
        Some(Decimal {
            end: i,
            neg,
            mant,
            digits,
            int_digits,
            float,
            exp,
            exp_small,
        })
    }

    /// The value by Clinger's fast path: at most 19 digits whose value is
    /// below 2^53, scaled by at most 10^22 — both exact in a double, so
    /// one multiplication or division is correctly rounded, the same
    /// double as a full parse. `None`: a full parse is needed.
    #[inline]
    fn fast(&self) -> Option<f64> {
        if self.digits > 19 || self.mant >= 1 << 53 || !self.exp_small {
            return None;
        }
        let f = self.mant as f64;
        let f = match self.exp {
            0..=22 => f * POW10[self.exp as usize],
            -22..=-1 => f / POW10[(-self.exp) as usize],
            _ => return None,
        };
        Some(if self.neg { -f } else { f })
    }
}

/// `t`'s value when it is a JSON number that [`Decimal::fast`] reads
/// exactly (the same double as `t.parse::<f64>()`); `None`: not one, or
/// a full parse is needed. Line protocol's and CSV's numbers come here
/// first (`parse`'s general path was 6 % of a Telegraf message).
pub(super) fn fast_float(t: &str) -> Option<f64> {
    Decimal::read(t.as_bytes(), 0)
        .filter(|d| d.end == t.len())?
        .fast()
}

struct Scan<'t> {
    b: &'t [u8],
    s: &'t str,
    i: usize,
    /// The most brackets that may be open at once (the route's depth
    /// limit): past it, `None` (serde's pass reports it).
    max: usize,
    /// The route's paths (`paths.rs`); each node of the walk on a path
    /// carries its trie node (`at`) beside its targets.
    trie: &'t PathTrie,
}

impl<'t> Scan<'t> {
    /// Skip whitespace; the next byte, if any.
    #[inline(always)]
    fn ws(&mut self) -> Option<u8> {
        self.i = skip::ws(self.b, self.i);
        self.b.get(self.i).copied()
    }

    /// A string without escapes, the cursor on its opening quote.
    #[inline]
    fn read_str(&mut self) -> Option<&'t str> {
        let start = self.i + 1;
        let end = skip::str_stop(self.b, start);
        if self.b.get(end) != Some(&b'"') {
            return None;
        }
        self.i = end + 1;
        // SAFETY: `start` follows a `"` and `end` (not before it, and in
        // the text: a byte was read there) is on one; `"` is ASCII, so
        // both are character boundaries of `s`.
        Some(unsafe { self.s.get_unchecked(start..end) })
    }

    fn number(&mut self) -> Option<Num> {
        let d = Decimal::read(self.b, self.i)?;
        let start = self.i;
        self.i = d.end;
        if d.float {
            let f = match d.fast() {
                Some(f) => f,
                None => self.s[start..d.end].parse().ok()?,
            };
            // serde_json refuses what overflows (`number out of range`).
            return f.is_finite().then_some(Num::F(f));
        }
        if d.int_digits > 19 {
            return None; // beyond u64: serde reads it as a float
        }
        // At most 19 digits: below 10^19, no wrapping happened.
        Some(if d.neg {
            Num::Neg(d.mant)
        } else {
            Num::U(d.mant)
        })
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// Skip one value (`skip.rs`), checking its whole grammar; the value
    /// sits below `depth` brackets. A string or a number (most skipped
    /// values) is skipped here, without the call and its dispatch.
    #[inline(always)]
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        let i = skip::ws(self.b, self.i);
        self.i = match *self.b.get(i)? {
            b'"' => skip::skip_str(self.b, i + 1)?,
            b'-' | b'0'..=b'9' => skip::skip_number(self.b, i)?,
            _ => skip::skip_value(self.b, i, self.max.checked_sub(depth)?)?,
        };
        Some(())
    }

    /// A leaf as the `serde_json::Value` serde would build; `None` for an
    /// object or array (left to serde) or bad syntax.
    fn leaf_json(&mut self) -> Option<J> {
        Some(match self.ws()? {
            b'"' => J::String(self.read_str()?.to_owned()),
            b't' => {
                self.literal(b"true")?;
                J::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                J::Bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                J::Null
            }
            b'{' | b'[' => return None,
            _ => self.number()?.json(),
        })
    }

    /// `Node::deserialize`.
    fn node(
        &mut self,
        cx: &mut Cx<'_>,
        depth: usize,
        targets: u64,
        at: u32,
        walk: Walk,
    ) -> Option<()> {
        // A time or metadata path that ends here.
        let capture =
            matches!(walk, Walk::DefaultTime(_)) || targets & !VALUES & self.trie.ends(at) != 0;
        if !capture {
            return self.visit(cx, depth, at, walk);
        }
        if targets == TIME && walk == Walk::No {
            let spec = TimeSpec {
                format: cx.spec.time_format,
                zone: cx.spec.time_zone,
            };
            let read = match self.ws()? {
                b'"' => spec.from_text(self.read_str()?, cx.received_ms).map(Some),
                b'n' => {
                    self.literal(b"null")?;
                    Ok(None)
                }
                b'{' | b'[' => return None,
                b't' | b'f' => {
                    let v = self.leaf_json()?;
                    super::document::read_time(&v, &spec, cx.received_ms)
                }
                _ => spec
                    .from_number(self.number()?.f64(), cx.received_ms)
                    .map(Some),
            };
            cx.time_read = Some(read);
            return Some(());
        }
        // A time or metadata field (or a default time key) kept whole.
        if walk == Walk::Child {
            return None; // a path below the values: left to serde
        }
        let mut v = Some(self.leaf_json()?);
        let keeps = matches!(walk, Walk::DefaultTime(_));
        let mut bits = targets;
        while bits != 0 {
            let t = bits.trailing_zeros();
            bits &= bits - 1;
            // A leaf has nothing below it: a path going on finds nothing.
            // The last user takes the value, the others copy it.
            let found = if cx.path(t).len() > depth {
                None
            } else if bits == 0 && !keeps {
                v.take()
            } else {
                v.clone()
            };
            match t {
                0 => cx.fallback |= found.is_some(),
                1 => cx.time = found,
                i => cx.metadata[i as usize - 2] = found,
            }
        }
        if let Walk::DefaultTime(i) = walk {
            cx.default_time[i] = v;
        }
        Some(())
    }

    /// `Node`'s visitor: an object, an array or a leaf.
    fn visit(&mut self, cx: &mut Cx<'_>, depth: usize, at: u32, walk: Walk) -> Option<()> {
        match self.ws()? {
            // A bracket opened here is the `depth + 1`-th.
            b'{' | b'[' if depth >= self.max => None,
            b'{' => self.map(cx, depth, at, walk),
            b'[' => self.seq(cx, depth, at, walk),
            b'"' => {
                let s = self.read_str()?;
                self.leaf(cx, walk, Leaf::Str(s))
            }
            b't' => {
                self.literal(b"true")?;
                self.leaf(cx, walk, Leaf::Bool(true))
            }
            b'f' => {
                self.literal(b"false")?;
                self.leaf(cx, walk, Leaf::Bool(false))
            }
            b'n' => {
                self.literal(b"null")?;
                self.leaf(cx, walk, Leaf::Null)
            }
            _ => {
                let n = self.number()?;
                self.leaf(cx, walk, Leaf::Number(n.f64()))
            }
        }
    }

    /// `Node::leaf`.
    fn leaf(&mut self, cx: &mut Cx<'_>, walk: Walk, v: Leaf<'_>) -> Option<()> {
        match walk {
            Walk::Base => {
                cx.values = Found::Leaf(match v {
                    Leaf::Null => J::Null,
                    Leaf::Bool(b) => J::Bool(b),
                    Leaf::Number(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
                    Leaf::Str(s) => J::String(s.to_owned()),
                })
            }
            Walk::Child => cx.leaf(v),
            Walk::No | Walk::DefaultTime(_) => {}
        }
        Some(())
    }

    /// `Node::visit_map`, the cursor on `{`.
    fn map(&mut self, cx: &mut Cx<'_>, depth: usize, at: u32, walk: Walk) -> Option<()> {
        self.i += 1;
        if walk == Walk::Base {
            cx.values = Found::Object;
        }
        if depth == 1 && cx.probing {
            cx.root_values_object = true;
        }
        let default_keys = walk == Walk::Base && cx.spec.time.is_none();
        if self.ws()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            if self.ws()? != b'"' {
                return None;
            }
            let k = self.read_str()?;
            if self.ws()? != b':' {
                return None;
            }
            self.i += 1;
            // `child_targets`, from the trie.
            let (child, child_at) = self.trie.member(at, k);
            if child == 0 && walk == Walk::No && !(depth == 0 && cx.detect_point) {
                // Off every path and outside the values, and no point
                // shape to probe: what `member_walk` decides for it
                // (`Walk::No`, no probe, the name untouched), without the
                // call — most keys of a TTN uplink.
                self.skip_value(depth + 1)?;
                match self.ws()? {
                    b',' => {
                        self.i += 1;
                        continue;
                    }
                    b'}' => {
                        self.i += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
            let base = cx.key.len();
            let (child_walk, probe) = cx.member_walk(walk, default_keys, depth, child, k);
            if child == 0 && child_walk == Walk::No && !probe {
                self.skip_value(depth + 1)?;
            } else if child == 0 && child_walk == Walk::Child {
                // A plain value: nothing to capture (`node` would only
                // call `visit`).
                self.visit(cx, depth + 1, paths::NONE, Walk::Child)?;
            } else {
                self.node(cx, depth + 1, child, child_at, child_walk)?;
            }
            cx.probing = false;
            cx.key.truncate(base);
            match self.ws()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `Node::visit_seq`, the cursor on `[`.
    fn seq(&mut self, cx: &mut Cx<'_>, depth: usize, at: u32, walk: Walk) -> Option<()> {
        self.i += 1;
        if walk == Walk::Base {
            cx.values = Found::Array;
        }
        let values = matches!(walk, Walk::Base | Walk::Child);
        let flatten = values && cx.spec.arrays == Arrays::Flatten;
        if values && !flatten {
            cx.ignored.arrays += 1;
        }
        if self.ws()? == b']' {
            self.i += 1;
            return Some(());
        }
        let mut i = 0usize;
        loop {
            // Two segments naming this index: not sure.
            let (child, child_at) = self.trie.element(at, i)?;
            let base = cx.key.len();
            let mut child_walk = if flatten {
                if base > 0 {
                    cx.key.push('.');
                }
                cx.key.push_str(itoa(i, &mut [0; 20]));
                if cx.spec.ignores(&cx.key) || cx.skipped_name() {
                    Walk::No
                } else {
                    Walk::Child
                }
            } else {
                Walk::No
            };
            if child & VALUES != 0 && cx.path(0).len() == depth + 1 {
                if child_walk != Walk::No {
                    cx.fallback = true;
                }
                child_walk = Walk::Base;
            }
            if child == 0 && child_walk == Walk::No {
                self.skip_value(depth + 1)?;
            } else {
                self.node(cx, depth + 1, child, child_at, child_walk)?;
            }
            cx.key.truncate(base);
            match self.ws()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::document::{FieldPath, PayloadSpec, TextPolicy};
    use crate::ingest::decode::stream::{new_cx, root_targets};
    use crate::ingest::decode::test_support::xorshift;

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    /// Whether the scanner walked `text` itself (no serde pass).
    fn scanned(text: &str, spec: &PayloadSpec) -> bool {
        let mut cx = new_cx(spec, Default::default(), 0, false);
        let (targets, root) = root_targets(spec);
        walk(&mut cx, text, targets, root, 32).is_some()
    }

    /// The presets' payloads are read by the scanner, not left to serde
    /// (the speed-up would be gone without a word otherwise); what they
    /// decode to is `stream.rs`'s differential test.
    #[test]
    fn reads_the_preset_payloads_itself() {
        let ttn = PayloadSpec {
            values: p("uplink_message.decoded_payload"),
            time: Some(p("received_at")),
            metadata_fields: vec![
                ("devEui".into(), p("end_device_ids.dev_eui")),
                ("fCnt".into(), p("uplink_message.f_cnt")),
                ("rssi".into(), p("uplink_message.rx_metadata.0.rssi")),
                (
                    "gatewayId".into(),
                    p("uplink_message.rx_metadata.0.gateway_ids.gateway_id"),
                ),
            ],
            ..PayloadSpec::default()
        };
        let uplink = r#"{"end_device_ids":{"device_id":"dev1","dev_eui":"0004A30B001C0530"},"correlation_ids":["as:up:01\u00e9"],"received_at":"2024-01-15T10:30:00.123Z","uplink_message":{"f_cnt":42,"frm_payload":"VGVtcA==","decoded_payload":{"temperature":21.0,"humidity":45},"rx_metadata":[{"gateway_ids":{"gateway_id":"gtw1"},"rssi":-35,"snr":5.2}],"settings":{"data_rate":{"lora":{"bandwidth":125000}}}}}"#;
        assert!(scanned(uplink, &ttn));
        let owntracks = PayloadSpec {
            time: Some(p("tst")),
            text: TextPolicy::Metadata,
            ..PayloadSpec::default()
        };
        let location = r#"{"_type":"location","acc":13,"batt":98,"lat":48.856826,"lon":2.34916,"tid":"j1","tst":1707057574,"inregions":["home"]}"#;
        assert!(scanned(location, &owntracks));
        let shelly = PayloadSpec {
            ignore: vec!["id".into(), "source".into()],
            ..PayloadSpec::default()
        };
        let status = r#"{"id":0,"source":"timer","output":false,"apower":8.9,"aenergy":{"total":6.532,"by_minute":[45.199,47.141,88.397],"minute_ts":1654511972},"temperature":{"tC":23.5,"tF":74.4}}"#;
        assert!(scanned(status, &shelly));
        // An escape in a string it must read: serde's.
        assert!(!scanned(
            r#"{"t":1,"name":"a\"b"}"#,
            &PayloadSpec::default()
        ));
    }

    fn skip(t: &str) -> Option<usize> {
        let mut s = Scan {
            b: t.as_bytes(),
            s: t,
            i: 0,
            max: MAX_DEPTH,
            trie: &PathTrie::default(),
        };
        s.skip_value(0)?;
        Some(s.i)
    }

    /// The skipper accepts exactly the JSON values serde_json accepts when
    /// it skips them (`IgnoredAny`), on valid and malformed input alike.
    #[test]
    fn skipping_agrees_with_serde() {
        let cases = [
            r#"{"a":[1,2.5e-3,-0,{"b":"x\"y\\z\u00e9\/"}],"c":{},"d":[],"e":null,"f":true,"g":false}"#,
            r#"[{"a":1},{"b":[[]]}]"#,
            r#""plain""#,
            "-12.5E+3",
            "0",
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":"x\q"}"#,
            r#"{"a":"\u12G4"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b":1]}"#,
            r#"{"a":1"#,
            r#"{"a":"#,
            r#"{"a""#,
            r#"{1:2}"#,
            r#"[1 2]"#,
            r#""unterminated"#,
            r#"{"a":"\"#,
        ];
        for t in cases {
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok();
            let ours = skip(t).is_some_and(|end| t[end..].trim().is_empty());
            assert_eq!(ours, serde, "{t}");
        }
    }

    /// The fast path gives the double a full parse gives, or declines.
    #[test]
    fn fast_floats_are_exact() {
        let cases = [
            "0.0",
            "-0.0",
            "44.72",
            "237.5",
            "0.039",
            "6.532",
            "1e22",
            "1e23",
            "9007199254740991.5",
            "9007199254740993.0",
            "123456789.123456789",
            "1.7976931348623157e308",
            "5e-324",
            "2.2250738585072014e-308",
            "0.1",
            "0.30000000000000004",
            "-12.5E+3",
            "1E-22",
            "3.0e-23",
            "4503599627370497.5",
            "0.000001",
            "99999999999999999e-17",
        ];
        let mut fast = 0;
        for t in cases {
            let full: f64 = t.parse().unwrap();
            if let Some(f) = fast_float(t) {
                fast += 1;
                assert_eq!(f.to_bits(), full.to_bits(), "{t}");
            }
        }
        assert!(fast >= 10, "the fast path took {fast}");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            xorshift(&mut x);
            let t = format!(
                "{}.{}e{}",
                x % 100_000_000,
                (x >> 27) % 1_000_000,
                (x >> 50) % 45
            );
            let t = t.replacen('e', "e-", usize::from(x & 1 == 1));
            if let Some(f) = fast_float(&t) {
                assert_eq!(f.to_bits(), t.parse::<f64>().unwrap().to_bits(), "{t}");
            }
        }
    }

    /// The one-pass number reader agrees with serde on every number it
    /// reads (the same value, integer or float, as serde's visitor gets
    /// it) and with JSON's grammar on where a number ends or is refused:
    /// exponents, signs, leading zeros, long fractions, huge exponents.
    #[test]
    fn numbers_read_in_one_pass_as_serde_reads_them() {
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "7",
            "-7",
            "0.5",
            "-0.5",
            "1e5",
            "1E+5",
            "1e-5",
            "-2.5E-3",
            "0e0",
            "10.000",
            "123456789012345678",
            "1234567890123456789",
            "12345678901234567890",
            "0.1234567890123456789",
            "1.5e22",
            "1.5e23",
            "9007199254740993",
            "4e-320",
            "1e0400",
            "1e-0400",
            "00",
            "-01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e+",
            "+1",
            "1.e5",
            "--1",
            "1ee5",
            "0x10",
        ]
        .map(String::from)
        .into();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            xorshift(&mut x);
            let sign = if x & 1 == 1 { "-" } else { "" };
            let int = (x >> 8) % 10u64.pow(((x >> 4) % 12) as u32 + 1);
            let frac = match (x >> 40) % 3 {
                0 => String::new(),
                _ => format!(".{:0w$}", (x >> 20) % 100_000, w = ((x >> 50) % 6) as usize),
            };
            let exp = match (x >> 44) % 4 {
                0 => format!("e{}", (x >> 30) % 40),
                1 => format!("E-{}", (x >> 30) % 40),
                _ => String::new(),
            };
            texts.push(format!("{sign}{int}{frac}{exp}"));
        }
        for t in &texts {
            // What serde makes of the number alone (a trailing byte that
            // ends a number, as inside a document).
            let doc = format!("{t},");
            let mut s = Scan {
                b: doc.as_bytes(),
                s: &doc,
                i: 0,
                max: MAX_DEPTH,
                trie: &PathTrie::default(),
            };
            let ours = s.number().map(|n| (n.json(), s.i));
            match serde_json::from_str::<J>(t) {
                Ok(want) => {
                    // Declined only where it does not read exactly: an
                    // integer beyond 19 digits (serde: a float).
                    let digits = t.trim_start_matches('-');
                    if ours.is_none() && !digits.contains(['.', 'e', 'E']) && digits.len() > 19 {
                        continue;
                    }
                    let (got, end) = ours.unwrap_or_else(|| panic!("refused {t}"));
                    assert_eq!(end, t.len(), "{t}");
                    assert_eq!(format!("{got:?}"), format!("{want:?}"), "{t}");
                    if let (Some(a), Some(b)) = (got.as_f64(), want.as_f64()) {
                        assert_eq!(a.to_bits(), b.to_bits(), "{t}");
                    }
                }
                // serde refuses it, or reads past what JSON allows: the
                // scanner must not accept it as a whole number.
                Err(_) => assert!(ours.is_none_or(|(_, end)| end < t.len()), "{t}"),
            }
        }
    }

    #[test]
    fn numbers_as_serde_visits_them() {
        for (t, want) in [
            ("0", "Number(0)"),
            ("-0", "Number(-0.0)"),
            ("-7", "Number(-7)"),
            ("9999999999999999999", "Number(9999999999999999999)"),
            ("-9223372036854775808", "Number(-9223372036854775808)"),
            ("-9223372036854775809", "Number(-9.223372036854776e+18)"),
            ("2.5e-3", "Number(0.0025)"),
            ("1E2", "Number(100.0)"),
        ] {
            let mut s = Scan {
                b: t.as_bytes(),
                s: t,
                i: 0,
                max: MAX_DEPTH,
                trie: &PathTrie::default(),
            };
            let ours = format!("{:?}", s.leaf_json().unwrap());
            let serde = format!("{:?}", serde_json::from_str::<J>(t).unwrap());
            assert_eq!(ours, serde, "{t}");
            assert_eq!(ours, want, "{t}");
        }
        // Beyond what it reads exactly: left to serde.
        for t in [
            "1e400",
            "-1e400",
            "18446744073709551615",
            "123456789012345678901",
        ] {
            let mut s = Scan {
                b: t.as_bytes(),
                s: t,
                i: 0,
                max: MAX_DEPTH,
                trie: &PathTrie::default(),
            };
            assert!(s.leaf_json().is_none(), "{t}");
        }
    }
}
