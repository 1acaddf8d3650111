//! The byte scanner's (`scan.rs`) validating skips: the end of a string's
//! plain run, of a string, of a number, of a whole value, with as few
//! steps and branches per token as the grammar allows (a TTN uplink is
//! about a hundred short tokens). A string's end is looked for in its
//! first 16 bytes, then 32 at a time (SSE2 on x86_64, words elsewhere):
//! a key or a short value ends in one check, where the word loop took
//! one to three rounds and a hard-to-predict exit; a number's digits are
//! found in one word; strings and numbers are skipped in the caller's
//! loop, a whole object or array here in one loop without calls.
//!
//! Invariants:
//! - a skip accepts exactly what serde_json accepts when it skips the same
//!   value (`IgnoredAny`), and says `None` where serde refuses (the caller
//!   then leaves the whole text to serde, whose error is reported);
//!   nothing is skipped lazily: control bytes and escapes in strings
//!   (`\uXXXX` with four hex digits, no surrogate check, as serde when it
//!   skips), numbers by JSON's grammar, literals, commas, colons and
//!   brackets are all checked as they go by; whitespace is JSON's four
//!   bytes;
//! - nesting is bounded: a skip that would open more than `room` brackets
//!   at once is `None` (the caller's depth limit);
//! - the block searches ([`str_stop`], [`digit_end`]) return the first
//!   matching byte exactly; the SSE2 search and the portable one agree
//!   (tests compare both with a byte loop).

/// Skip whitespace from `i`: the index of the next other byte (or the
/// end).
#[inline(always)]
pub(super) fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        // Nearly always the first byte, in compact JSON.
        if c > b' ' || !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// `"`, `\` or a control byte: where a string's plain run stops.
#[inline(always)]
fn stops(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// A word's stop bytes as high bits; the lowest one is exact (borrows
/// only spill above a hit), and none is set without a real stop below it.
#[inline(always)]
fn stops_word(v: u64) -> u64 {
    let quote = v ^ (ONES * u64::from(b'"'));
    let slash = v ^ (ONES * u64::from(b'\\'));
    (quote.wrapping_sub(ONES) & !quote
        | slash.wrapping_sub(ONES) & !slash
        | v.wrapping_sub(ONES * 0x20) & !v)
        & HIGH
}

/// The high bit of each byte of `m` (set only at `0x80`) gathered into
/// bit `k` for byte `k`: one multiplication, no carries (the eight
/// partial products land on distinct bits).
#[inline(always)]
fn pack(m: u64) -> u32 {
    ((m >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// Bit `k` set where `block[k]` stops a string's run; the lowest set bit
/// is exact (bits above it may be spurious): the two halves by
/// [`stops16`].
#[inline(always)]
fn stops32(block: &[u8; 32]) -> u32 {
    halves(block, stops16)
}

/// [`stops32`] by [`stops16_words`] (what [`stops32`] is off x86_64),
/// for the tests on every target.
#[cfg(test)]
fn stops32_words(block: &[u8; 32]) -> u32 {
    halves(block, stops16_words)
}

/// `stops` of each 16-byte half of `block`, the second's bits above the
/// first's. A spurious bit only sits above a real one of the same half,
/// and a half without a stop has no bit, so the lowest bit of the whole
/// is exact.
#[inline(always)]
fn halves(block: &[u8; 32], stops: impl Fn(&[u8; 16]) -> u32) -> u32 {
    let (lo, hi) = block.split_at(16);
    stops(lo.try_into().expect("16 bytes")) | stops(hi.try_into().expect("16 bytes")) << 16
}

/// Bit `k` set where `block[k]` stops a string's run, with SSE2 (part of
/// every x86_64): one 16-byte compare.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn stops16(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 target; `block` holds the 16
    // bytes loaded, and `loadu` needs no alignment.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let slash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, slash), control)) as u32
    }
}

/// [`stops16`] off x86_64.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn stops16(block: &[u8; 16]) -> u32 {
    stops16_words(block)
}

/// [`stops16`] on two words (every target; the one used off x86_64).
#[inline(always)]
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn stops16_words(block: &[u8; 16]) -> u32 {
    let word = |k: usize| {
        let w: [u8; 8] = block[k * 8..k * 8 + 8].try_into().expect("8 bytes");
        pack(stops_word(u64::from_le_bytes(w)))
    };
    word(0) | word(1) << 8
}

/// The index of the first stop byte (`"`, `\` or below 0x20) at or after
/// `i`, or the end.
#[inline(always)]
pub(super) fn str_stop(b: &[u8], mut i: usize) -> usize {
    // Most keys end in the first 16 bytes: half the work of a block.
    if let Some(block) = b.get(i..i + 16) {
        let m = stops16(block.try_into().expect("16 bytes"));
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(block) = b.get(i..i + 32) {
        let m = stops32(block.try_into().expect("32 bytes"));
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 32;
    }
    str_stop_tail(b, i)
}

/// [`str_stop`] in the last 31 bytes: a word at a time, then bytes.
#[inline(never)]
fn str_stop_tail(b: &[u8], mut i: usize) -> usize {
    while let Some(word) = b.get(i..i + 8) {
        let m = stops_word(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !stops(b[i]) {
        i += 1;
    }
    i
}

/// Skip a string's rest, `i` just past its opening quote: the index past
/// its closing quote. Escapes are checked as serde_json skips them.
#[inline(always)]
pub(super) fn skip_str(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i = str_stop(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i = escape(b, i)?,
            _ => return None,
        }
    }
}

/// An escape, `i` on its backslash: the index past it.
#[inline(never)]
fn escape(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 2),
        b'u' => {
            let hex = b.get(i + 2..i + 6)?;
            hex.iter().all(u8::is_ascii_hexdigit).then_some(i + 6)
        }
        _ => None,
    }
}

/// The index of the first byte at or after `i` that is not an ASCII
/// digit (or the end): eight bytes in a word.
#[inline(always)]
pub(super) fn digit_end(b: &[u8], mut i: usize) -> usize {
    while let Some(word) = b.get(i..i + 8) {
        let v = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        // A digit is 0x30..=0x39: its high nibble is 3, and so is that of
        // the byte plus 6. A carry out of a byte only follows a byte
        // above 0xf9 (not a digit), so the lowest non-digit is exact.
        let hi = ONES * 0x30;
        let nd = (v & (ONES * 0xf0)) ^ hi | (v.wrapping_add(ONES * 6) & (ONES * 0xf0)) ^ hi;
        // A high bit per non-zero byte.
        let m = ((nd & !HIGH).wrapping_add(!HIGH) | nd) & HIGH;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Skip a number by JSON's grammar, `i` on its first byte: the index
/// past it.
#[inline(always)]
pub(super) fn skip_number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => {
            i += 1;
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        }
        b'1'..=b'9' => i = digit_end(b, i + 1),
        _ => return None,
    }
    match b.get(i) {
        Some(b'.' | b'e' | b'E') => fraction(b, i),
        _ => Some(i),
    }
}

/// A number's fraction and exponent, `i` on the `.`, `e` or `E`.
#[inline(never)]
fn fraction(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'.') {
        let end = digit_end(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digit_end(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// `word` at `i`: the index past it.
#[inline(always)]
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// A skipped object's key and its colon, `i` before the key (whitespace
/// allowed): the index past the colon.
#[inline(always)]
pub(super) fn key_colon(b: &[u8], i: usize) -> Option<usize> {
    let i = ws(b, i);
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = ws(b, skip_str(b, i + 1)?);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

/// Skip one value from `i` (whitespace before it allowed), checking its
/// whole grammar: the index past it. At most `room` brackets open at once
/// (and never more than 128).
pub(super) fn skip_value(b: &[u8], mut i: usize, room: usize) -> Option<usize> {
    // Open brackets as a bit stack: 1 = object.
    let mut stack = 0u128;
    let mut depth = 0usize;
    let room = room.min(128);
    loop {
        // A value.
        i = ws(b, i);
        match *b.get(i)? {
            b'"' => i = skip_str(b, i + 1)?,
            c @ (b'{' | b'[') => {
                depth += 1;
                if depth > room {
                    return None;
                }
                let object = c == b'{';
                stack = (stack << 1) | u128::from(object);
                i = ws(b, i + 1);
                // `}` is `{` + 2, `]` is `[` + 2.
                if b.get(i) == Some(&(c + 2)) {
                    i += 1;
                    depth -= 1;
                    stack >>= 1;
                } else {
                    if object {
                        i = key_colon(b, i)?;
                    }
                    continue;
                }
            }
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            _ => i = skip_number(b, i)?,
        }
        // After a value: a comma (then the next member) or closers.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = ws(b, i);
            let object = stack & 1 == 1;
            match *b.get(i)? {
                b',' => {
                    i += 1;
                    if object {
                        i = key_colon(b, i)?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            i += 1;
            depth -= 1;
            stack >>= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::test_support::xorshift;

    /// The byte loop the block searches must agree with.
    fn stop_by_bytes(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && !stops(b[i]) {
            i += 1;
        }
        i
    }

    /// The block searches (SSE2 on x86_64 and the portable words) find
    /// the first `"`, `\\` or control byte wherever it sits in or across
    /// 32-byte blocks, past multi-byte characters and bytes that borrow
    /// (0x00, 0x80, 0xff) too.
    #[test]
    fn string_stops_are_found_exactly() {
        let fill: Vec<u8> = "abcdé€xyz0123456789ABCDEFGHIJKLMNOPqrstuvwxyz!#$%&'()*+"
            .bytes()
            .collect();
        let mut x = 0x1234_5678_9abc_def1u64;
        for len in 0..100 {
            for at in 0..=len {
                for stop in [b'"', b'\\', 0x00, 0x01, 0x1f, b'\n'] {
                    let mut t: Vec<u8> = (0..len).map(|k| fill[k % fill.len()]).collect();
                    if at < len {
                        t[at] = stop;
                    }
                    // A second stop after the first, sometimes.
                    xorshift(&mut x);
                    if at + 1 < len && x & 1 == 1 {
                        let later = at + 1 + (x >> 8) as usize % (len - at - 1);
                        t[later] = b'"';
                    }
                    for from in [0, at / 2, at] {
                        assert_eq!(str_stop(&t, from), stop_by_bytes(&t, from), "{t:?} {from}");
                    }
                }
            }
        }
        // Random bytes, every block both ways.
        for _ in 0..20_000 {
            let mut block = [0u8; 32];
            for byte in &mut block {
                xorshift(&mut x);
                // Mostly plain bytes, a few stops and high bytes.
                *byte = match x % 40 {
                    0 => b'"',
                    1 => b'\\',
                    2 => (x >> 8) as u8 % 0x20,
                    3 => 0x80 | (x >> 8) as u8,
                    _ => 0x20 + (x >> 8) as u8 % 0x5f,
                };
            }
            let want = stop_by_bytes(&block, 0);
            let got = |m: u32| {
                if m == 0 {
                    32
                } else {
                    m.trailing_zeros() as usize
                }
            };
            assert_eq!(got(stops32(&block)), want, "{block:?}");
            assert_eq!(got(stops32_words(&block)), want, "{block:?}");
            let half: &[u8; 16] = block[..16].try_into().unwrap();
            let want = stop_by_bytes(half, 0).min(16);
            let got = |m: u32| {
                if m == 0 {
                    16
                } else {
                    m.trailing_zeros() as usize
                }
            };
            assert_eq!(got(stops16(half)), want, "{half:?}");
            assert_eq!(got(stops16_words(half)), want, "{half:?}");
        }
    }

    #[test]
    fn digits_end_exactly() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            xorshift(&mut x);
            let len = (x % 24) as usize;
            let t: Vec<u8> = (0..len)
                .map(|k| {
                    let r = (x >> (k % 8 * 8)) as u8 ^ k as u8;
                    match r % 8 {
                        0 => r, // any byte: 0xfa..0xff carry
                        1 => b'/',
                        2 => b':',
                        _ => b'0' + r % 10,
                    }
                })
                .collect();
            for from in 0..=len {
                let mut want = from;
                while want < len && t[want].is_ascii_digit() {
                    want += 1;
                }
                assert_eq!(digit_end(&t, from), want, "{t:?} {from}");
            }
        }
    }

    fn skip(t: &str) -> bool {
        skip_value(t.as_bytes(), 0, 100).is_some_and(|end| t[end..].trim().is_empty())
    }

    fn serde_skips(t: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()
    }

    /// Random and malformed values (every byte position edited, strings
    /// with escapes across block boundaries, long strings, numbers of
    /// every shape): the skip accepts exactly what serde's skim accepts.
    #[test]
    fn skipping_random_values_agrees_with_serde() {
        let seeds = [
            r#"{"a":[1,2.5e-3,-0,{"b":"x\"y\\z\u00e9\/"}],"c":{},"d":[],"e":null,"f":true,"g":false}"#,
            r#"{"gateway_ids":{"gateway_id":"gtw1","eui":"9C5C8E00001A05C4"},"time":"2024-01-15T10:30:00.100Z","timestamp":2463457000,"rssi":-35,"snr":5.2}"#,
            r#"[ { "a" : 1 } , { "b" : [ [ ] , -0.5E+7 ] } ]"#,
            "\"0123456789abcdefghijklmnopqrstu\\\"vwxyz0123456789abcdefghijklmnopqrstuvwxyz\\u00e9é€\"",
        ];
        let alphabet = b"\"\\{}[],:0123456789-+.eEtrufalsn \n\tx\x01\x7f";
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut accepted = 0;
        for seed in seeds {
            assert!(skip(seed) && serde_skips(seed), "{seed}");
            let bytes = seed.as_bytes();
            for at in 0..bytes.len() {
                for _ in 0..6 {
                    xorshift(&mut x);
                    let mut t = bytes.to_vec();
                    let c = alphabet[(x % alphabet.len() as u64) as usize];
                    match (x >> 8) % 3 {
                        0 => t[at] = c,
                        1 => t.insert(at, c),
                        _ => {
                            t.remove(at);
                        }
                    }
                    let Ok(t) = String::from_utf8(t) else {
                        continue;
                    };
                    let ours = skip(&t);
                    assert_eq!(ours, serde_skips(&t), "{t:?}");
                    accepted += usize::from(ours);
                }
            }
        }
        assert!(accepted > 100, "only {accepted} edits were still JSON");
        // Escapes at every offset of a long string, so that they fall
        // on, before and after each 32-byte block's edge.
        for esc in [
            r#"\""#, r"\\", r"\/", r"\n", r"\u00E9", r"\uD800", r"\u12", r"\x", r"\",
        ] {
            for at in 0..80 {
                let t = format!("\"{}{esc}{}\"", "a".repeat(at), "b".repeat(80 - at));
                assert_eq!(skip(&t), serde_skips(&t), "{t}");
                let t = format!("\"{}{esc}\"", "a".repeat(at));
                assert_eq!(skip(&t), serde_skips(&t), "{t}");
            }
        }
        // Strings as long as blocks, and a control byte at each offset.
        for len in 0..100 {
            let t = format!("[\"{}\",1]", "é".repeat(len));
            assert!(skip(&t), "{t}");
            let t = format!("\"{}\u{1f}{}\"", "a".repeat(len), "b".repeat(len));
            assert!(!skip(&t) && !serde_skips(&t), "{t}");
        }
    }

    /// Nesting past `room` is refused, up to it accepted.
    #[test]
    fn skipping_minds_the_room() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(skip_value(nested(5).as_bytes(), 0, 5).is_some());
        assert!(skip_value(nested(6).as_bytes(), 0, 5).is_none());
        let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        assert!(skip_value(objects(100).as_bytes(), 0, 100).is_some());
        assert!(skip_value(objects(101).as_bytes(), 0, 100).is_none());
        assert!(skip_value(nested(200).as_bytes(), 0, 1000).is_none());
    }
}
