//! Serial byte stream → lines, with memory bounded whatever the device sends.
//!
//! A serial port delivers arbitrary chunks: a line may arrive split across
//! many reads, many lines may arrive in one read, a device with the wrong baud
//! rate sends noise, and a broken one may never send a newline at all.
//! [`LineFramer`] turns that into [`Frame`]s with these invariants:
//!
//! - **Chunking never matters.** Feeding a stream whole or split at any byte
//!   positions yields the same frames (tested at every split point).
//! - **Bounded memory.** Only a partial line is buffered, and never more than
//!   `max_line` bytes of it (`max_line + 1` with a custom delimiter, to allow
//!   its trailing `\r`): a longer line switches to discarding mode until its
//!   end, so 10 MB without a newline costs nothing. The buffer's capacity
//!   stays within 2 × `max_line` (in practice within `max_line`).
//! - **Line ends.** With the default `\n` delimiter a lone `\r` also ends a
//!   line (many devices send CR only), so `\n`, `\r\n` and `\r` all work and
//!   may be mixed. Empty lines are skipped, which is what turns the `\n` of a
//!   `\r\n` pair into nothing. With another delimiter only that byte ends a
//!   line and one trailing `\r` is dropped.
//! - **Overlong lines** are discarded and reported once, as
//!   [`Frame::Overlong`], when their end is seen; the next line is parsed
//!   normally, so the framer resynchronises at every line end.
//! - Bytes are bytes: NUL and invalid UTF-8 pass through, and the line decoder
//!   rejects them ([`line_to_str`] for UTF-8).
//! - [`LineFramer::reset`] (after a re-plug) drops any partial line: a partial
//!   line is never completed with bytes from another connection.

use super::decode::DecodeError;

/// The config's default `max_line` (defined there, config being plain data).
pub use crate::config::DEFAULT_MAX_LINE;

/// One unit of output of the framer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete, non-empty line without its delimiter or trailing `\r`.
    Line(&'a [u8]),
    /// A line longer than `max_line` ended; its `discarded` bytes (delimiter
    /// not counted) were dropped.
    Overlong { discarded: usize },
}

/// Cuts a byte stream into lines; see the module doc for the invariants.
#[derive(Debug)]
pub struct LineFramer {
    delimiter: u8,
    max_line: usize,
    /// Bytes the buffer may hold: `max_line`, plus one with a custom
    /// delimiter so that a line of exactly `max_line` bytes followed by
    /// `\r` still fits before the `\r` is stripped.
    limit: usize,
    /// The partial line (only ever the start of the current line).
    buf: Vec<u8>,
    /// `Some(n)`: inside an overlong line, `n` bytes of it dropped so far.
    discarding: Option<usize>,
}

impl Default for LineFramer {
    fn default() -> Self {
        LineFramer::new(b'\n', DEFAULT_MAX_LINE)
    }
}

impl LineFramer {
    /// A framer splitting on `delimiter`, keeping lines of at most `max_line`
    /// bytes (at least 1). Nothing is allocated until a partial line must be
    /// kept.
    pub fn new(delimiter: u8, max_line: usize) -> Self {
        let max_line = max_line.max(1);
        let limit = if delimiter == b'\n' {
            max_line
        } else {
            max_line + 1
        };
        LineFramer {
            delimiter,
            max_line,
            limit,
            buf: Vec::new(),
            discarding: None,
        }
    }

    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes of a partial line currently held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes allocated for the partial line (for memory assertions and
    /// metrics): never more than 2 × `max_line`.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Forget any partial or overlong line, e.g. after the device was
    /// unplugged: what follows starts a fresh line.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = None;
    }

    /// Feed the next chunk read from the port; `emit` is called for every
    /// line completed by it, in order. The remainder is kept for the next
    /// call.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(Frame<'_>)) {
        while let Some(end) = self.find_end(bytes) {
            self.finish_line(&bytes[..end], &mut emit);
            bytes = &bytes[end + 1..];
        }
        if !bytes.is_empty() {
            self.keep_partial(bytes);
        }
    }

    fn find_end(&self, bytes: &[u8]) -> Option<usize> {
        if self.delimiter == b'\n' {
            bytes.iter().position(|&b| b == b'\n' || b == b'\r')
        } else {
            let d = self.delimiter;
            bytes.iter().position(|&b| b == d)
        }
    }

    /// The line end was found; `tail` is the part of the line in this chunk.
    fn finish_line(&mut self, tail: &[u8], emit: &mut impl FnMut(Frame<'_>)) {
        if let Some(n) = self.discarding.take() {
            emit(Frame::Overlong {
                discarded: n.saturating_add(tail.len()),
            });
            return;
        }
        let total = self.buf.len() + tail.len();
        if total > self.limit {
            self.buf.clear();
            emit(Frame::Overlong { discarded: total });
            return;
        }
        if self.buf.is_empty() {
            // Fast path: the whole line is inside this chunk, no copy.
            emit_line(tail, self.max_line, emit);
        } else {
            self.append(tail);
            emit_line(&self.buf, self.max_line, emit);
            self.buf.clear();
        }
    }

    /// No line end in `bytes`: keep them, or start/continue discarding.
    fn keep_partial(&mut self, bytes: &[u8]) {
        if let Some(n) = &mut self.discarding {
            *n = n.saturating_add(bytes.len());
            return;
        }
        let total = self.buf.len() + bytes.len();
        if total > self.limit {
            self.buf.clear();
            self.discarding = Some(total);
        } else {
            self.append(bytes);
        }
    }

    /// Append, growing the buffer at most to `limit`: the caller checked
    /// that the result fits, so the capacity never exceeds `limit`.
    fn append(&mut self, bytes: &[u8]) {
        let need = self.buf.len() + bytes.len();
        if need > self.buf.capacity() {
            let target = need.max(self.buf.capacity() * 2).min(self.limit);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// Strip one trailing `\r`, skip empty lines, and apply `max_line` to what
/// remains (only a custom-delimiter line can be `max_line + 1` here, when it
/// did not end with `\r`).
fn emit_line(line: &[u8], max_line: usize, emit: &mut impl FnMut(Frame<'_>)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_line {
        emit(Frame::Overlong {
            discarded: line.len(),
        });
    } else if !line.is_empty() {
        emit(Frame::Line(line));
    }
}

/// A framed line as text; invalid UTF-8 is bad input (`invalid_utf8`).
pub fn line_to_str(line: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(line).map_err(|e| DecodeError::invalid_utf8(line, e.valid_up_to()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owned copy of a frame, so tests can collect them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Line(Vec<u8>),
        Overlong(usize),
    }

    fn feed(framer: &mut LineFramer, chunks: &[&[u8]]) -> Vec<Out> {
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, |f| {
                out.push(match f {
                    Frame::Line(l) => Out::Line(l.to_vec()),
                    Frame::Overlong { discarded } => Out::Overlong(discarded),
                })
            });
        }
        out
    }

    fn lines(input: &[u8], delimiter: u8, max_line: usize) -> Vec<Out> {
        feed(&mut LineFramer::new(delimiter, max_line), &[input])
    }

    fn l(s: &str) -> Out {
        Out::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_lines_and_keeps_the_partial_tail() {
        let mut f = LineFramer::default();
        let out = feed(&mut f, &[b"a=1\nb=2\nc="]);
        assert_eq!(out, vec![l("a=1"), l("b=2")]);
        assert_eq!(f.buffered(), 2);
        let out = feed(&mut f, &[b"3\n"]);
        assert_eq!(out, vec![l("c=3")]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn cr_lf_mixes_and_empty_lines() {
        let out = lines(b"a\r\nb\rc\n\r\n\n\rd\n\re\r\r", b'\n', 64);
        assert_eq!(out, vec![l("a"), l("b"), l("c"), l("d"), l("e")]);
        // A CR/LF pair split across reads is still one line end.
        let mut f = LineFramer::default();
        assert_eq!(
            feed(&mut f, &[b"x\r", b"\ny\r", b"\n"]),
            vec![l("x"), l("y")]
        );
    }

    #[test]
    fn custom_delimiter_strips_one_trailing_cr() {
        let out = lines(b"a\r;b;\r\n;c\rd;", b';', 64);
        // Only `;` ends a line; a CR in the middle is kept for the decoder
        // to judge, a CR at the end is dropped.
        assert_eq!(out, vec![l("a"), l("b"), l("\r\n"), l("c\rd")]);
    }

    #[test]
    fn line_exactly_at_the_limit_and_one_byte_over() {
        let max = 16;
        let at = "x".repeat(max);
        let over = "y".repeat(max + 1);
        for split in [false, true] {
            let mut f = LineFramer::new(b'\n', max);
            let input = format!("{at}\n{over}\nok\n{at}\r\n");
            let out = if split {
                let (a, b) = input.as_bytes().split_at(max / 2);
                feed(&mut f, &[a, b])
            } else {
                feed(&mut f, &[input.as_bytes()])
            };
            assert_eq!(
                out,
                vec![l(&at), Out::Overlong(max + 1), l("ok"), l(&at)],
                "split={split}"
            );
        }
        // Custom delimiter: the limit is on the line without its `\r`.
        let out = lines(format!("{at}\r;{at}y;").as_bytes(), b';', max);
        assert_eq!(out, vec![l(&at), Out::Overlong(max + 1)]);
    }

    #[test]
    fn overlong_line_reported_once_at_its_end() {
        let mut f = LineFramer::new(b'\n', 8);
        let mut out = feed(&mut f, &[b"good\n0123456", b"789abcdef", b"ghij"]);
        assert_eq!(out, vec![l("good")]);
        assert_eq!(f.buffered(), 0, "an overlong line is not kept");
        out = feed(&mut f, &[b"klm\r\nnext\n"]);
        assert_eq!(out, vec![Out::Overlong(23), l("next")]);
    }

    #[test]
    fn ten_megabytes_without_a_newline_stay_bounded() {
        let max = 1024;
        let mut f = LineFramer::new(b'\n', max);
        let chunk = vec![b'z'; 4096];
        let mut frames = 0;
        for _ in 0..(10 * 1024 * 1024 / chunk.len()) {
            f.push(&chunk, |_| frames += 1);
            assert!(f.capacity() <= 2 * max, "capacity {}", f.capacity());
        }
        assert_eq!(frames, 0);
        let out = feed(&mut f, &[b"\nt=1\n"]);
        assert_eq!(out, vec![Out::Overlong(10 * 1024 * 1024), l("t=1")]);
        assert!(f.capacity() <= 2 * max);
    }

    #[test]
    fn memory_bounded_under_one_byte_pushes() {
        let max = 100;
        let mut f = LineFramer::new(b'\n', max);
        for i in 0..10_000u32 {
            let b = [if i % 150 == 149 { b'\n' } else { b'a' }];
            f.push(&b, |_| {});
            assert!(f.capacity() <= 2 * max);
        }
    }

    #[test]
    fn garbage_then_good_lines_resynchronise() {
        let mut input: Vec<u8> = Vec::new();
        // Noise as from a wrong baud rate: NULs, high bytes, CRs, no LF for a while.
        let mut x: u32 = 12345;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            input.push((x >> 8) as u8);
        }
        input.extend_from_slice(b"\nt=21.5 h=40\n{\"t\":1}\n");
        let out = lines(&input, b'\n', 256);
        let n = out.len();
        assert!(n >= 2);
        assert_eq!(out[n - 2..], [l("t=21.5 h=40"), l("{\"t\":1}")]);
    }

    #[test]
    fn nul_bytes_are_just_bytes() {
        assert_eq!(
            lines(b"a\0b\n\0\n", b'\n', 64),
            vec![Out::Line(b"a\0b".to_vec()), Out::Line(b"\0".to_vec())]
        );
    }

    #[test]
    fn reset_drops_partial_and_overlong_state() {
        let mut f = LineFramer::new(b'\n', 4);
        assert!(feed(&mut f, &[b"t=2"]).is_empty());
        f.reset();
        assert_eq!(feed(&mut f, &[b"1\n"]), vec![l("1")]);
        assert!(feed(&mut f, &[b"waytoolong"]).is_empty());
        f.reset();
        assert_eq!(feed(&mut f, &[b"ok\n"]), vec![l("ok")]);
    }

    /// A small deterministic generator, so the property tests need no
    /// extra dependency and fail reproducibly.
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn chunk_boundaries_never_change_the_output() {
        let inputs: Vec<Vec<u8>> = vec![
            b"a=1\r\nbb=22\rccc=333\n\n\r\r\ndddd\n".to_vec(),
            b"0123456789abcdef\nshort\n0123456789abcdefg\r\nx\r".to_vec(),
            b"\r\n\r\n\xff\xfe\0\n{\"t\": 1}\r\n0123456789abcdef0123456789\n".to_vec(),
        ];
        for delimiter in [b'\n', b';'] {
            for input in &inputs {
                let whole = lines(input, delimiter, 16);
                // Every single split point.
                for i in 0..=input.len() {
                    let (a, b) = input.split_at(i);
                    let mut f = LineFramer::new(delimiter, 16);
                    assert_eq!(feed(&mut f, &[a, b]), whole, "split at {i}");
                }
                // Every pair of split points.
                for i in 0..=input.len() {
                    for j in i..=input.len() {
                        let mut f = LineFramer::new(delimiter, 16);
                        let got = feed(&mut f, &[&input[..i], &input[i..j], &input[j..]]);
                        assert_eq!(got, whole, "split at {i} and {j}");
                    }
                }
                // Byte by byte.
                let mut f = LineFramer::new(delimiter, 16);
                let chunks: Vec<&[u8]> = input.chunks(1).collect();
                assert_eq!(feed(&mut f, &chunks), whole);
            }
        }
    }

    #[test]
    fn random_streams_random_chunks_match_whole_and_stay_bounded() {
        let alphabet = b"ab=1 \r\n\n;\0\xff";
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for round in 0..300 {
            let len = (xorshift(&mut seed) % 400) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(xorshift(&mut seed) % alphabet.len() as u64) as usize])
                .collect();
            let max = 1 + (xorshift(&mut seed) % 24) as usize;
            let delimiter = if round % 3 == 0 { b';' } else { b'\n' };
            let whole = lines(&input, delimiter, max);
            let mut f = LineFramer::new(delimiter, max);
            let mut got = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + (xorshift(&mut seed) % 40) as usize;
                let (chunk, tail) = rest.split_at(n.min(rest.len()));
                got.extend(feed(&mut f, &[chunk]));
                assert!(f.capacity() <= 2 * max);
                rest = tail;
            }
            assert_eq!(got, whole, "round {round}");
            for o in &whole {
                match o {
                    Out::Line(line) => {
                        assert!(!line.is_empty() && line.len() <= max);
                        assert!(!line.contains(&delimiter));
                        if delimiter == b'\n' {
                            assert!(!line.contains(&b'\r'));
                        }
                    }
                    Out::Overlong(n) => assert!(*n > max),
                }
            }
        }
    }

    #[test]
    fn line_to_str_rejects_invalid_utf8() {
        assert_eq!(line_to_str(b"t=1").unwrap(), "t=1");
        let err = line_to_str(b"t=\xff\xfe").unwrap_err();
        assert_eq!(err.reason(), "invalid_utf8");
        assert!(err.to_string().contains("byte 2"), "{err}");
    }
}
