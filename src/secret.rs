//! `Secret`: a string (an API key, a password) that never shows itself in
//! `Debug`, `Display` or logs, and compares in constant time; and the safe
//! way to read the small files secrets and configs live in.
//!
//! Invariants of [`read_small_file`]: it never blocks (a FIFO or a device
//! in place of a key file is refused, not waited on) and never reads more
//! than its cap plus one byte (`/dev/zero` or a huge file cannot fill the
//! memory); only regular files (or symlinks to them) are read.

use std::fmt;
use std::io::Read;
use std::path::Path;

use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The plaintext, for the one place that must send it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first `n` characters, e.g. `dakkio_w_` + a few: safe to show.
    pub fn prefix(&self, n: usize) -> &str {
        let end = self
            .0
            .char_indices()
            .nth(n)
            .map_or(self.0.len(), |(i, _)| i);
        &self.0[..end]
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where `s` holds something shaped like a dakkio key (`dakkio_a_`,
/// `dakkio_w_` or `dakkio_r_` followed by letters and digits): the byte
/// range of each, prefix included.
fn key_spans(s: &str) -> Vec<std::ops::Range<usize>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = s[from..].find("dakkio_").map(|i| from + i) {
        let kind = b.get(at + 7).copied();
        let tail = at + 9;
        if matches!(kind, Some(b'a' | b'w' | b'r'))
            && b.get(at + 8) == Some(&b'_')
            && b.get(tail).is_some_and(u8::is_ascii_alphanumeric)
        {
            let end = b[tail..]
                .iter()
                .position(|c| !c.is_ascii_alphanumeric())
                .map_or(b.len(), |n| tail + n);
            out.push(at..end);
            from = end;
        } else {
            from = at + 7;
        }
    }
    out
}

/// Whether `s` holds a key-shaped value (a key pasted where a variable
/// name, a path or an id was expected).
pub fn looks_like_key(s: &str) -> bool {
    !key_spans(s).is_empty()
}

/// `s` with every key-shaped value cut to its kind, `dakkio_w_…`: for any
/// message that may quote what someone typed.
pub fn mask_keys(s: &str) -> std::borrow::Cow<'_, str> {
    let spans = key_spans(s);
    if spans.is_empty() {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for r in spans {
        out.push_str(&s[last..r.start]);
        out.push_str(&s[r.start..r.start + 9]);
        out.push('…');
        last = r.end;
    }
    out.push_str(&s[last..]);
    std::borrow::Cow::Owned(out)
}

/// The most a key or password file may hold.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The most a config or TLS file (a CA bundle, say) may hold.
pub const MAX_FILE: u64 = 4 * 1024 * 1024;

/// Why a small file was not read. The message says what is wrong with the
/// file, not which file: callers name it (and its config key) themselves.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is larger than {cap} bytes")]
    TooLarge { cap: u64 },
}

impl FileError {
    /// The file does not exist (callers may add a hint).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// The file's metadata if it is a regular file (or a symlink to one),
/// without opening it.
pub fn regular_file(path: &Path) -> Result<std::fs::Metadata, FileError> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind_of(meta.file_type())));
    }
    Ok(meta)
}

/// Read a regular file of at most `cap` bytes, without ever blocking: the
/// type is checked before opening, the file is opened with `O_NONBLOCK`
/// (so a FIFO swapped in meanwhile does not wait for a writer) and checked
/// again on the open descriptor, and at most `cap + 1` bytes are read.
pub fn read_small_file(path: &Path, cap: u64) -> Result<Vec<u8>, FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    regular_file(path)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() > cap {
        return Err(FileError::TooLarge { cap });
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(FileError::TooLarge { cap });
    }
    Ok(out)
}

/// [`read_small_file`] as UTF-8 text.
pub fn read_small_text(path: &Path, cap: u64) -> Result<String, FileError> {
    String::from_utf8(read_small_file(path, cap)?).map_err(|_| {
        FileError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shaped_values_are_masked() {
        assert_eq!(
            mask_keys("file `/etc/dakkio_w_AbC123xyz.key` is missing"),
            "file `/etc/dakkio_w_….key` is missing"
        );
        assert_eq!(
            mask_keys("dakkio_a_1 and dakkio_r_Zz9, dakkio_w_x"),
            "dakkio_a_… and dakkio_r_…, dakkio_w_…"
        );
        // Mentions of a kind, and other words, stay as they are.
        for s in [
            "(`dakkio_w_…`)",
            "dakkio_x_abc",
            "dakkio_w_",
            "DAKKIO_KEY_BARN",
            "dakkio_",
        ] {
            assert_eq!(mask_keys(s), s);
            assert!(!looks_like_key(s), "{s}");
        }
        assert!(looks_like_key(" dakkio_w_abc123 "));
        assert_eq!(mask_keys("é dakkio_w_ab é"), "é dakkio_w_… é");
    }

    #[test]
    fn small_files_only_and_never_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("k");
        std::fs::write(&ok, "dakkio_w_abc\n").unwrap();
        assert_eq!(read_small_text(&ok, 64).unwrap(), "dakkio_w_abc\n");
        assert_eq!(read_small_text(&ok, 13).unwrap().len(), 13);
        let e = read_small_file(&ok, 12).unwrap_err();
        assert_eq!(e.to_string(), "it is larger than 12 bytes");

        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_small_file(&fifo, 64).unwrap_err();
        assert_eq!(e.to_string(), "it is a FIFO, not a regular file");

        // /dev/zero would never end: refused by type, nothing read.
        let e = read_small_file(Path::new("/dev/zero"), 64).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is a character device, not a regular file"
        );
        let e = read_small_file(dir.path(), 64).unwrap_err();
        assert_eq!(e.to_string(), "it is a directory, not a regular file");
        let e = read_small_file(&dir.path().join("missing"), 64).unwrap_err();
        assert!(e.is_not_found(), "{e}");

        // A symlink to a regular file is read (LoadCredential= uses them).
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert!(read_small_file(&link, 64).is_ok());
    }

    #[test]
    fn never_shown() {
        let s = Secret::new("dakkio_w_supersecret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.prefix(9), "dakkio_w_");
        assert_eq!(s, Secret::new("dakkio_w_supersecret"));
        assert_ne!(s, Secret::new("dakkio_w_other"));
    }
}
