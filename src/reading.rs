//! `Reading`, the one record that flows through the pipeline, and the small
//! helpers every stage needs for it: dakkio's 24-hex ids and ISO-8601 UTC
//! timestamps (milliseconds since the Unix epoch inside the gateway).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One measured value. dakkio data source schemas allow `number`, `string`
/// and `boolean`; non-finite numbers are never constructed (decoders reject
/// NaN and infinities as bad input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }
}

mod map;

pub use map::FieldMap;

/// Measurement name → value, ordered so that encodings are stable.
pub type Values = FieldMap<Value>;

/// A value's name. Up to [`Name::INLINE`] bytes (nearly every name a
/// device sends, `aenergy.total`, `temperature.tC`) it is held in place,
/// so building a reading allocates nothing per value name; longer names
/// go to the heap. Compares, orders, hashes, prints and serialises as the
/// text it holds, and borrows as `str` (`values["t"]`, `values.get(k)`).
pub struct Name(NameRepr);

/// `repr(u8)`: the tag is byte 0 (0 for `Inline`, the first variant),
/// and an inline name's length byte 1 and its buffer bytes 2 to 31, which
/// [`push_named`] writes in place.
#[repr(u8)]
enum NameRepr {
    /// Invariant: `buf[..len]` is the UTF-8 of a whole `str`, and the
    /// rest of `buf` is zero.
    Inline {
        len: u8,
        buf: [u8; Name::INLINE],
    },
    Heap(Box<str>),
}

impl Name {
    /// Bytes held without an allocation (the type is 32 bytes).
    pub const INLINE: usize = 30;

    /// Always inlined (the long-name case is a call of its own): built
    /// per value of every message, and whether the compiler inlined it
    /// moved a decoding bench by 10 %.
    #[inline(always)]
    pub fn new(s: &str) -> Name {
        if s.len() <= Name::INLINE {
            Name(NameRepr::Inline {
                len: s.len() as u8,
                buf: inline_copy(s.as_bytes()),
            })
        } else {
            Name::heap(s)
        }
    }

    /// `Name::new(s)` written straight into `dst`: a name built on the
    /// stack in pieces and then moved whole was read back before its
    /// pieces were stored (a stalled load per value: about an eighth of
    /// routing a Shelly status went to pushing its values).
    ///
    /// # Safety
    /// `dst` is valid for writing a `Name` (it may be uninitialised;
    /// nothing there is dropped).
    #[inline(always)]
    unsafe fn write_new(dst: *mut Name, s: &str) {
        // SAFETY: `dst` is writable for a `Name` (the caller's promise);
        // the writes below stay within its 32 bytes, and read `s`'s `n`.
        unsafe {
            let n = s.len();
            if n > Name::INLINE {
                dst.write(Name::heap(s));
                return;
            }
            let d = dst.cast::<u8>();
            // The layout of `NameRepr` (`repr(u8)`): tag 0 and the zero
            // padding, the length, then the bytes.
            std::ptr::write_bytes(d, 0, std::mem::size_of::<Name>());
            *d.add(1) = n as u8;
            copy_short(s.as_ptr(), d.add(2), n);
        }
    }

    #[inline(never)]
    fn heap(s: &str) -> Name {
        Name(NameRepr::Heap(s.into()))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            NameRepr::Inline { len, buf } => {
                // SAFETY: `buf[..len]` was copied from a whole `str` in
                // `Name::new` and never changed (the representation's
                // invariant), so it is valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(&buf[..usize::from(*len)]) }
            }
            NameRepr::Heap(s) => s,
        }
    }
}

/// `b` (at most [`Name::INLINE`] bytes) at the start of a zeroed buffer,
/// by [`copy_short`]: a name is built per value of every message, and a
/// copy of a run-time length was a call to `memcpy` (the single hottest
/// line of line-protocol decoding).
#[inline(always)]
fn inline_copy(b: &[u8]) -> [u8; Name::INLINE] {
    let mut buf = [0u8; Name::INLINE];
    let n = b.len();
    assert!(n <= Name::INLINE);
    // SAFETY: `b` is readable for its `n` bytes, `buf` writable for
    // `Name::INLINE` of them, at least `n`; they are distinct.
    unsafe { copy_short(b.as_ptr(), buf.as_mut_ptr(), n) };
    buf
}

/// Copy `n` bytes, at most 32, from `src` to `dst` as two overlapping
/// copies of a fixed size (one to three bytes: the first, middle and last
/// byte), through raw pointers: a name made, or written in place, and a
/// dotted key extended, per value of every message.
///
/// # Safety
/// `src` is readable and `dst` writable for `n` bytes, and they do not
/// overlap.
#[inline(always)]
pub(crate) unsafe fn copy_short(src: *const u8, dst: *mut u8, n: usize) {
    debug_assert!(n <= 32);
    // SAFETY: every copy below reads and writes within the first `n`
    // bytes of `src` and `dst` (the caller's promise).
    unsafe {
        if n >= 16 {
            std::ptr::copy_nonoverlapping(src, dst, 16);
            std::ptr::copy_nonoverlapping(src.add(n - 16), dst.add(n - 16), 16);
        } else if n >= 8 {
            std::ptr::copy_nonoverlapping(src, dst, 8);
            std::ptr::copy_nonoverlapping(src.add(n - 8), dst.add(n - 8), 8);
        } else if n >= 4 {
            std::ptr::copy_nonoverlapping(src, dst, 4);
            std::ptr::copy_nonoverlapping(src.add(n - 4), dst.add(n - 4), 4);
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
    }
}

/// Push `(Name::new(name), value)` onto `entries`, the name written in
/// place ([`Name::write_new`]): what a decoder does per value.
#[inline(always)]
pub(crate) fn push_named<V>(entries: &mut Vec<(Name, V)>, name: &str, value: V) {
    entries.reserve(1);
    let len = entries.len();
    // SAFETY: `reserve` made room for one more entry at `len`; both of its
    // fields are written (the name by `write_new`, which may write to
    // uninitialised memory) before the length takes it in.
    unsafe {
        let slot = entries.as_mut_ptr().add(len);
        Name::write_new(std::ptr::addr_of_mut!((*slot).0), name);
        std::ptr::addr_of_mut!((*slot).1).write(value);
        entries.set_len(len + 1);
    }
}

impl Name {
    /// `dst.write(self.clone())`, an inline name copied as one block of
    /// 32 bytes (a clone is built field by field through the stack, and
    /// read back at once: a stalled load per metadata field of a TTN
    /// uplink).
    ///
    /// # Safety
    /// `dst` is valid for writing a `Name` and does not overlap `self`
    /// (it may be uninitialised; nothing there is dropped).
    #[inline(always)]
    pub(crate) unsafe fn clone_to(&self, dst: *mut Name) {
        // SAFETY: the caller's promise; an inline name owns nothing, so
        // a bitwise copy is an independent value (what `clone` makes).
        unsafe {
            match &self.0 {
                NameRepr::Inline { .. } => std::ptr::copy_nonoverlapping(self, dst, 1),
                NameRepr::Heap(_) => dst.write(self.clone()),
            }
        }
    }

    /// Whether two names are the same bytes in memory (an inline name
    /// with its padding), or hold the same text on the heap.
    #[cfg(test)]
    fn same_bytes_as(&self, other: &Name) -> bool {
        match (&self.0, &other.0) {
            (NameRepr::Heap(a), NameRepr::Heap(b)) => a == b,
            (NameRepr::Inline { .. }, NameRepr::Inline { .. }) => {
                // SAFETY: an inline name is 32 initialised bytes (the
                // tag, the length and a zero-padded buffer).
                let bytes =
                    |n: &Name| unsafe { std::ptr::read(n as *const Name as *const [u8; 32]) };
                bytes(self) == bytes(other)
            }
            _ => false,
        }
    }
}

impl Clone for Name {
    /// A name held in place is copied whole, 32 bytes at once: the
    /// derived clone copied the length and the bytes apart, through the
    /// stack, several times per routed message (bucket, data source,
    /// metadata keys).
    #[inline]
    fn clone(&self) -> Name {
        match &self.0 {
            NameRepr::Inline { .. } => {
                // SAFETY: the inline form owns nothing (a length and
                // bytes), so a bitwise copy of it is an independent value,
                // what `Copy` would make.
                Name(unsafe { std::ptr::read(&self.0) })
            }
            NameRepr::Heap(s) => Name(NameRepr::Heap(s.clone())),
        }
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::new("")
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    /// As `str` orders (bytes), compared in line: names are short, and a
    /// call to `memcmp` per comparison was most of a values map's insert
    /// (`temperature.tC` beside `temperature.tF`).
    #[inline]
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        // Two names held in place: their first eight bytes as one
        // big-endian number order them as the bytes do (the buffer is
        // zero-padded, so a name that is a prefix of the other comes
        // first, or ties and is decided below); most names differ there.
        if let (NameRepr::Inline { buf: x, .. }, NameRepr::Inline { buf: y, .. }) =
            (&self.0, &other.0)
        {
            let head = |b: &[u8; Name::INLINE]| {
                u64::from_be_bytes(b[..8].try_into().expect("eight bytes"))
            };
            match head(x).cmp(&head(y)) {
                std::cmp::Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        let (a, b) = (self.as_bytes(), other.as_bytes());
        for (x, y) in a.iter().zip(b) {
            if x != y {
                return x.cmp(y);
            }
        }
        a.len().cmp(&b.len())
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name::new(s)
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        if s.len() <= Name::INLINE {
            Name::new(&s)
        } else {
            Name(NameRepr::Heap(s.into_boxed_str()))
        }
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        match n.0 {
            NameRepr::Heap(s) => s.into(),
            NameRepr::Inline { .. } => n.as_str().to_owned(),
        }
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, s: &str) -> Result<Name, E> {
                Ok(Name::new(s))
            }
            fn visit_string<E>(self, s: String) -> Result<Name, E> {
                Ok(Name::from(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// Free-form context carried with a reading (dakkio's `metadata`).
pub type Metadata = FieldMap<serde_json::Value>;

/// Where a reading entered the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Mqtt,
    Serial,
    Api,
    /// A dead letter put back into the queue by `dead-letters retry`.
    Retry,
    /// Polled from a `[[modbus]]` device.
    Modbus,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Mqtt => "mqtt",
            Origin::Serial => "serial",
            Origin::Api => "api",
            Origin::Retry => "retry",
            Origin::Modbus => "modbus",
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Origin::Mqtt => 1,
            Origin::Serial => 2,
            Origin::Api => 3,
            Origin::Retry => 4,
            Origin::Modbus => 5,
        }
    }

    pub fn from_code(code: i64) -> Option<Origin> {
        Some(match code {
            1 => Origin::Mqtt,
            2 => Origin::Serial,
            3 => Origin::Api,
            4 => Origin::Retry,
            5 => Origin::Modbus,
            _ => return None,
        })
    }
}

/// A reading ready for the store: routed (bucket and data source known) and
/// timestamped (the device's time, or the gateway's receive time).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub bucket_id: Name,
    pub data_source_id: Name,
    /// Milliseconds since the Unix epoch, UTC.
    pub timestamp_ms: i64,
    pub values: Values,
    pub metadata: Metadata,
    pub origin: Origin,
    /// `timestamp_ms` is the gateway's receive time (the input gave none):
    /// while the system clock is not synchronised such a reading is held
    /// back and re-stamped once it is (`src/store/clock_hold.rs`). Device
    /// timestamps are never touched.
    pub receive_time: bool,
}

/// What a payload or line decoder produces before routing: no bucket yet, and
/// possibly no timestamp (the receive time is used then).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecodedPoint {
    pub timestamp_ms: Option<i64>,
    pub values: Values,
    pub metadata: Metadata,
}

impl DecodedPoint {
    /// Route the point: give it its bucket and data source and fill in the
    /// receive time when the device sent none.
    pub fn into_reading(
        self,
        bucket_id: &str,
        data_source_id: &str,
        received_ms: i64,
        origin: Origin,
    ) -> Reading {
        Reading {
            bucket_id: bucket_id.into(),
            data_source_id: data_source_id.into(),
            timestamp_ms: self.timestamp_ms.unwrap_or(received_ms),
            values: self.values,
            metadata: self.metadata,
            origin,
            receive_time: self.timestamp_ms.is_none(),
        }
    }
}

/// True for dakkio's ids: 24 hexadecimal characters (MongoDB ObjectIds).
pub fn is_object_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new random id in dakkio's format (24 lowercase hex characters).
pub fn new_object_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(24);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// `2024-01-15T10:30:00.000Z`: ISO-8601 UTC with milliseconds, the form the
/// gateway sends upstream and answers locally.
pub fn format_timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parse an ISO-8601 / RFC 3339 timestamp with any UTC offset (`Z`,
/// `+02:00`), with or without fractional seconds, into Unix milliseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A numeric device timestamp: Unix seconds (possibly fractional) or, when it
/// is too large to be seconds in any plausible year, Unix milliseconds.
pub fn timestamp_from_number(n: f64) -> Option<i64> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    // 1e11 seconds is the year 5138; 1e11 milliseconds is 1973.
    let ms = if n >= 1e11 { n } else { n * 1000.0 };
    if ms > 253_402_300_799_999.0 {
        return None; // beyond 9999-12-31T23:59:59.999Z
    }
    Some(ms.round() as i64)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01 (inverse of `civil_from_days`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids() {
        assert!(is_object_id("507f1f77bcf86cd799439011"));
        assert!(!is_object_id("507f1f77bcf86cd79943901"));
        assert!(!is_object_id("507f1f77bcf86cd79943901g"));
        let id = new_object_id();
        assert!(is_object_id(&id));
        assert_eq!(id, id.to_lowercase());
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        let ms = parse_timestamp("2024-01-15T10:30:00Z").unwrap();
        assert_eq!(ms, 1_705_314_600_000);
        assert_eq!(format_timestamp(ms), "2024-01-15T10:30:00.000Z");
        assert_eq!(
            parse_timestamp("2024-01-15T12:30:00.250+02:00"),
            Some(1_705_314_600_250)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
        for days in [-1000, 0, 59, 60, 365, 11_016, 19_737, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn names_behave_as_their_text() {
        use std::collections::BTreeMap;
        let long = "a".repeat(Name::INLINE + 1);
        for s in [
            "",
            "t",
            "aenergy.total",
            "507f1f77bcf86cd799439011",
            "é€",
            &long,
        ] {
            let n = Name::from(s);
            assert_eq!(n.as_str(), s);
            assert_eq!(n, Name::from(s.to_owned()));
            assert_eq!(String::from(n.clone()), s);
            assert_eq!(format!("{n:?}"), format!("{s:?}"));
            assert_eq!(
                serde_json::to_string(&n).unwrap(),
                serde_json::to_string(s).unwrap()
            );
            let back: Name = serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap();
            assert_eq!(back, s);
        }
        assert_eq!(std::mem::size_of::<Name>(), 32);
        // Every length the inline copy handles (its size classes meet at
        // 4, 8 and 16 bytes), and one past it.
        let text = "abcdefghijklmnopqrstuvwxyz0123456789";
        for n in 0..=Name::INLINE + 1 {
            assert_eq!(Name::new(&text[..n]).as_str(), &text[..n], "{n}");
        }
        // A name written in place is the name `new` builds, byte for byte
        // (the layout `write_new` relies on: tag, length, zero padding),
        // and a long one is on the heap as `new` puts it.
        let mut pushed = Vec::new();
        let accented = "é".repeat(20);
        let texts: Vec<&str> = (0..=text.len())
            .map(|n| &text[..n])
            .chain(["é", "aé", "ééé", &accented])
            .collect();
        for t in &texts {
            push_named(&mut pushed, t, t.len());
        }
        for (t, (name, v)) in texts.iter().zip(&pushed) {
            let want = Name::new(t);
            assert_eq!((name.as_str(), *v), (*t, t.len()));
            assert!(name.same_bytes_as(&want), "{t}");
        }
        // Ordered as text, whichever way each is held.
        let mut m: BTreeMap<Name, i32> = BTreeMap::new();
        for (i, s) in ["b", &long, "a.b", "a"].into_iter().enumerate() {
            m.insert(s.into(), i as i32);
        }
        let keys: Vec<&str> = m.keys().map(Name::as_str).collect();
        assert_eq!(keys, ["a", "a.b", &long, "b"]);
        // Compared as `str` compares, prefixes and non-ASCII included.
        let texts = [
            "",
            "a",
            "a.b",
            "ab",
            "b",
            "temperature.tC",
            "temperature.tF",
            "é",
            "z€",
            &long,
            // Ties in the first eight bytes (zero bytes included), which
            // the in-place comparison leaves to the bytes after.
            "a\0",
            "a\0\0",
            "abcdefgh",
            "abcdefgh\0",
            "abcdefghi",
            "abcdefgh.tC",
            "abcdefgh.tF",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(Name::new(a).cmp(&Name::new(b)), a.cmp(b), "{a} {b}");
            }
        }
        assert_eq!(m["a.b"], 2);
    }

    #[test]
    fn numeric_timestamps() {
        assert_eq!(
            timestamp_from_number(1_705_314_600.0),
            Some(1_705_314_600_000)
        );
        assert_eq!(
            timestamp_from_number(1_705_314_600_123.0),
            Some(1_705_314_600_123)
        );
        assert_eq!(timestamp_from_number(f64::NAN), None);
        assert_eq!(timestamp_from_number(-5.0), None);
    }
}
