//! Looking a secret up, once for every key and password of the config: from
//! an environment variable, or from a file (a relative path is looked up in
//! `$CREDENTIALS_DIRECTORY`, systemd's `LoadCredential=`, else beside the
//! config file). The lookup only says what it found; each caller keeps its
//! own policy (an error, a warning, a bucket left without a key) and its own
//! messages, which name its config key.
//!
//! Invariant: a [`Lookup`] never leaves this module inside a message — only
//! the caller decides what to show, and it never shows a found value.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::Ctx;
use crate::secret::{read_small_text, FileError, MAX_SECRET_FILE};

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The value as read (not trimmed: the caller's policy decides).
    Found(String),
    /// The environment variable is not set.
    Unset,
    /// Set or readable, but nothing but whitespace.
    Empty,
    /// The file cannot be read: missing, not a regular file (a FIFO would
    /// block, a device never ends), larger than
    /// [`MAX_SECRET_FILE`](crate::secret::MAX_SECRET_FILE), or not UTF-8.
    Unreadable(FileError),
}

impl Lookup {
    fn of(value: String) -> Lookup {
        if value.trim().is_empty() {
            Lookup::Empty
        } else {
            Lookup::Found(value)
        }
    }
}

/// A secret has one source: when more than one of `sources` is given,
/// report `message` at the second under `key` and return `false`.
pub(crate) fn at_most_one(
    sources: [&Option<Spanned<String>>; 3],
    key: &str,
    message: String,
    ctx: &mut Ctx,
) -> bool {
    let mut given = sources.into_iter().flatten();
    match (given.next(), given.next()) {
        (Some(_), Some(second)) => {
            ctx.error(Some(second.span()), key, message);
            false
        }
        _ => true,
    }
}

/// The environment variable `name`.
pub(crate) fn from_env(name: &str, ctx: &Ctx) -> Lookup {
    match ctx.env.var(name) {
        Some(v) => Lookup::of(v),
        None => Lookup::Unset,
    }
}

/// The file `raw` names (see [`credential_path`]), and what it holds.
pub(crate) fn from_file(raw: &str, ctx: &Ctx) -> (PathBuf, Lookup) {
    let path = credential_path(Path::new(raw.trim()), ctx);
    let found = match read_small_text(&path, MAX_SECRET_FILE) {
        Ok(v) => Lookup::of(v),
        Err(e) => Lookup::Unreadable(e),
    };
    (path, found)
}

/// A relative credential file is looked up in `$CREDENTIALS_DIRECTORY`
/// (systemd's `LoadCredential=`) when set, else in `credentials/` beside the
/// config file when it is there, else beside the config file.
/// The path is remembered in `Config::secret_files` (watched by the reload).
pub(crate) fn credential_path(p: &Path, ctx: &Ctx) -> PathBuf {
    let path = if p.is_absolute() {
        p.to_owned()
    } else {
        match ctx.env.var("CREDENTIALS_DIRECTORY") {
            Some(dir) if !dir.is_empty() => Path::new(&dir).join(p),
            // Outside the service (`check` or `queue stats` from a root
            // shell) there is no `$CREDENTIALS_DIRECTORY`: the files are
            // where the operator manual keeps them for `LoadCredential=`,
            // in `credentials/` beside the config.
            _ => {
                let kept = ctx.relative_to_config(&Path::new("credentials").join(p));
                if kept.is_file() {
                    kept
                } else {
                    ctx.relative_to_config(p)
                }
            }
        }
    };
    ctx.secret_files.borrow_mut().push(path.clone());
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::FakeEnv;

    #[test]
    fn the_four_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "dakkio_w_abc\n").unwrap();
        std::fs::write(dir.path().join("blank"), " \n").unwrap();
        let env = FakeEnv(
            [("SET", "v"), ("BLANK", "  ")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let config = dir.path().join("g.toml");
        let ctx = Ctx::new(&config, "", &env);
        assert!(matches!(from_env("SET", &ctx), Lookup::Found(v) if v == "v"));
        assert!(matches!(from_env("BLANK", &ctx), Lookup::Empty));
        assert!(matches!(from_env("NOPE", &ctx), Lookup::Unset));
        let (path, found) = from_file("k", &ctx);
        assert_eq!(path, dir.path().join("k"));
        assert!(matches!(found, Lookup::Found(v) if v == "dakkio_w_abc\n"));
        assert!(matches!(from_file("blank", &ctx).1, Lookup::Empty));
        assert!(matches!(
            from_file("missing", &ctx).1,
            Lookup::Unreadable(_)
        ));
        // Every file looked at is watched by the reload.
        assert_eq!(ctx.secret_files.borrow().len(), 3);
    }

    #[test]
    fn credentials_directory_first() {
        let env = FakeEnv(
            [("CREDENTIALS_DIRECTORY", "/run/credentials/x")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let ctx = Ctx::new(Path::new("/etc/g.toml"), "", &env);
        assert_eq!(
            credential_path(Path::new("k"), &ctx),
            Path::new("/run/credentials/x/k")
        );
        assert_eq!(
            credential_path(Path::new("/abs/k"), &ctx),
            Path::new("/abs/k")
        );
    }
}
