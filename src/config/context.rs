//! The validation context: collects every problem with its position, and the
//! helpers that turn spans into lines and serde's wording into ours.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{ConfigError, Environment};

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is not tied to a place in the text.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The key path, e.g. `buckets[1].write_key` (empty for the document).
    pub key: String,
    /// Lowercase; names the key in backticks, shows the value, gives an example.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A problem before its span is turned into a line and column.
#[derive(Debug)]
pub(crate) struct RawProblem {
    pub span: Option<Range<usize>>,
    pub key: String,
    pub message: String,
}

pub struct Ctx<'a> {
    pub(crate) file: &'a Path,
    text: &'a str,
    pub(crate) env: &'a dyn Environment,
    problems: Vec<Problem>,
    pub(crate) warnings: Vec<String>,
    /// Files secrets were read from (`credential_path`), for the reload's
    /// watch list. Interior mutability: the lookup only has `&Ctx`.
    pub(crate) secret_files: std::cell::RefCell<Vec<std::path::PathBuf>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str, env: &'a dyn Environment) -> Ctx<'a> {
        Ctx {
            file,
            text,
            env,
            problems: Vec::new(),
            warnings: Vec::new(),
            secret_files: Default::default(),
        }
    }

    /// Record a problem at `span` (a byte range of the text, from
    /// `toml::Spanned`). The message should name `key` in backticks itself.
    pub fn error(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        self.push_problem(RawProblem {
            span,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, message: impl Into<String>) {
        let message = message.into();
        self.warnings
            .push(crate::secret::mask_keys(&message).into_owned());
    }

    pub(crate) fn push_problem(&mut self, mut raw: RawProblem) {
        // Nothing that looks like a key is ever shown, whatever was typed.
        raw.message = crate::secret::mask_keys(&raw.message).into_owned();
        let (line, column) = match raw.span {
            Some(span) => {
                let (l, c) = line_column(self.text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        let message = if raw.key.is_empty() || raw.message.contains(&format!("`{}`", raw.key)) {
            raw.message
        } else {
            format!("`{}`: {}", raw.key, raw.message)
        };
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            column,
            key: raw.key,
            message,
        });
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    pub(crate) fn into_error(self) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            problems: self.problems,
        }
    }

    /// Resolve a relative path against the directory of the config file.
    pub fn relative_to_config(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_owned();
        }
        match self.file.parent() {
            Some(dir) => dir.join(p),
            None => p.to_owned(),
        }
    }
}

/// Byte offset → (1-based line, 1-based column in characters).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Reword serde's messages: lowercase, and for unknown keys add the closest
/// accepted key (`unknown key `wirte_key`; did you mean `write_key`?`).
pub(crate) fn describe_serde_message(message: &str) -> String {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        if let Some((unknown, expected)) = names.split_first() {
            let mut out = format!("unknown key `{unknown}`");
            match closest(unknown, expected) {
                Some(best) => out.push_str(&format!("; did you mean `{best}`?")),
                None if !expected.is_empty() => {
                    let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
                    out.push_str(&format!("; accepted keys: {}", list.join(", ")));
                }
                None => out.push_str("; this table takes no keys"),
            }
            return out;
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        if let Some((unknown, expected)) = names.split_first() {
            let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            let mut out = format!(
                "unknown value `{unknown}`; expected one of {}",
                list.join(", ")
            );
            if let Some(best) = closest(unknown, expected) {
                out.push_str(&format!(" (did you mean `{best}`?)"));
            }
            return out;
        }
    }
    let message = message
        .replace("expected i64", "expected an integer")
        .replace("expected u64", "expected an integer")
        .replace("expected a boolean", "expected `true` or `false`");
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The `…` pieces of a serde message, in order.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, p)| p.to_owned())
        .collect()
}

/// The candidate nearest to `word` if it is plausibly a typo of it.
pub fn closest<'c>(word: &str, candidates: &'c [String]) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// Levenshtein distance with adjacent transpositions counted as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

use std::time::Duration;
use toml::Spanned;

impl Ctx<'_> {
    /// A duration key such as `commit_max_delay = "50ms"`, or its default.
    pub fn duration(
        &mut self,
        key: &str,
        value: &Option<Spanned<String>>,
        default: Duration,
        example: &str,
    ) -> Duration {
        self.parsed(
            key,
            value,
            default,
            example,
            "a duration",
            super::units::parse_duration,
        )
    }

    /// A size key such as `max_size = "1GiB"`, or its default.
    pub fn size(
        &mut self,
        key: &str,
        value: &Option<Spanned<String>>,
        default: u64,
        example: &str,
    ) -> u64 {
        self.parsed(
            key,
            value,
            default,
            example,
            "a size",
            super::units::parse_size,
        )
    }

    /// A string key parsed by `parse`, or its default; a parse error is
    /// recorded as `` `key` must be KIND such as `EXAMPLE`: WHY ``.
    fn parsed<T>(
        &mut self,
        key: &str,
        value: &Option<Spanned<String>>,
        default: T,
        example: &str,
        kind: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> T {
        let Some(v) = value else { return default };
        match parse(v.get_ref()) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.error(
                    Some(v.span()),
                    key,
                    format!("`{key}` must be {kind} such as `{example}`: {why}"),
                );
                default
            }
        }
    }

    /// An integer key that must lie in `range`, or its default.
    pub fn int_in(
        &mut self,
        key: &str,
        value: &Option<Spanned<i64>>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        let Some(v) = value else { return default };
        let n = *v.get_ref();
        if range.contains(&n) {
            n
        } else {
            self.error(
                Some(v.span()),
                key,
                format!(
                    "`{key}` must be between {} and {}; got {n}",
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    }
}
