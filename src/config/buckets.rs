//! `[[buckets]]`: the dakkio buckets this gateway forwards to, each with its
//! write key (from an environment variable, a credentials file or inline)
//! and its share of the store (`store_share`, checked against
//! `store.max_size` by [`check_shares`]).

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::secrets::{self, Lookup};
use super::Ctx;
use crate::reading::is_object_id;
use crate::secret::{looks_like_key, mask_keys, Secret};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBucket {
    id: Spanned<String>,
    name: Option<Spanned<String>>,
    write_key_env: Option<Spanned<String>>,
    write_key_file: Option<Spanned<String>>,
    write_key: Option<Spanned<String>>,
    #[serde(default)]
    allow_admin_key: bool,
    store_share: Option<Spanned<String>>,
}

/// A bucket's share of the store's size budget (`store_share`): what the
/// store keeps for its undelivered readings when another bucket fills it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StoreShare {
    /// A percentage of the budget, in (0, 100].
    Percent(f64),
    /// Bytes of the budget.
    Bytes(u64),
}

impl StoreShare {
    /// The share as a fraction of a budget of `budget` bytes (at most 1).
    pub fn fraction(&self, budget: u64) -> f64 {
        match *self {
            StoreShare::Percent(p) => p / 100.0,
            StoreShare::Bytes(b) => (b as f64 / budget.max(1) as f64).min(1.0),
        }
    }
}

impl std::fmt::Display for StoreShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreShare::Percent(p) => write!(f, "{p}%"),
            StoreShare::Bytes(b) => f.write_str(&super::units::format_size(*b)),
        }
    }
}

/// `"30%"` or a size such as `"200MiB"`.
fn parse_share(s: &str) -> Result<StoreShare, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("`{p}` is not a number"))?;
        if !(v > 0.0 && v <= 100.0) {
            return Err(format!(
                "a percentage must be above 0 and at most 100; got `{t}`"
            ));
        }
        return Ok(StoreShare::Percent(v));
    }
    let b = super::units::parse_size(t)?;
    if b < MIN_SHARE_BYTES {
        return Err(format!("a size must be at least 1MiB; got `{t}`"));
    }
    Ok(StoreShare::Bytes(b))
}

/// The smallest share given as a size.
const MIN_SHARE_BYTES: u64 = 1 << 20;

/// Whether a bucket's write key is available.
#[derive(Debug, Clone, PartialEq)]
pub enum BucketKeyState {
    Ready(Secret),
    /// Valid configuration, no key yet: readings queue locally. The reason
    /// names the variable or file, never a key.
    Missing(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// dakkio's 24-hex bucket id.
    pub id: String,
    /// For people: logs, `queue stats` (default: the id).
    pub name: String,
    pub key: BucketKeyState,
    /// Where the key comes from, for messages (`env DAKKIO_KEY_BARN`).
    pub key_source: String,
    pub(crate) key_source_inline: bool,
    /// `None`: an equal part of what the explicit shares leave.
    pub store_share: Option<StoreShare>,
}

impl Bucket {
    pub fn write_key(&self) -> Option<&Secret> {
        match &self.key {
            BucketKeyState::Ready(k) => Some(k),
            BucketKeyState::Missing(_) => None,
        }
    }
}

pub(crate) fn validate_all(raw: &[RawBucket], ctx: &mut Ctx) -> Vec<Bucket> {
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let key = format!("buckets[{i}]");
        let id = b.id.get_ref().trim().to_ascii_lowercase();
        if looks_like_key(b.id.get_ref()) {
            ctx.error(
                Some(b.id.span()),
                &format!("{key}.id"),
                format!(
                    "`{key}.id` holds what looks like a dakkio key, pasted where the bucket \
                     id was expected (the key is not shown); `id` is dakkio's 24-hex bucket \
                     id, e.g. `507f1f77bcf86cd799439011`, and the key goes in a file named \
                     by `write_key_file` or a variable named by `write_key_env`"
                ),
            );
        } else if !is_object_id(&id) {
            ctx.error(
                Some(b.id.span()),
                &format!("{key}.id"),
                format!(
                    "`{key}.id` must be dakkio's 24-hex bucket id, e.g. \
                     `507f1f77bcf86cd799439011`; got `{}`",
                    b.id.get_ref()
                ),
            );
        } else if !ids.insert(id.clone()) {
            ctx.error(
                Some(b.id.span()),
                &format!("{key}.id"),
                format!("`{key}.id` `{id}` appears twice; each bucket is listed once"),
            );
        }
        let name = match &b.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                ctx.error(
                    Some(n.span()),
                    &format!("{key}.name"),
                    format!("`{key}.name` must not be empty, e.g. `greenhouse`"),
                );
                id.clone()
            }
            Some(n) => n.get_ref().trim().to_owned(),
            None => id.clone(),
        };
        if !names.insert(name.clone()) && b.name.is_some() {
            ctx.error(
                b.name.as_ref().map(|n| n.span()),
                &format!("{key}.name"),
                format!("`{key}.name` `{name}` is used by another bucket"),
            );
        }
        let (state, source, inline) = resolve_key(b, &key, ctx);
        let store_share = b.store_share.as_ref().and_then(|v| {
            parse_share(v.get_ref())
                .map_err(|why| {
                    ctx.error(
                        Some(v.span()),
                        &format!("{key}.store_share"),
                        format!(
                            "`{key}.store_share` must be a percentage of `store.max_size` \
                             such as `\"30%\"` or a size such as `\"200MiB\"`: {why}"
                        ),
                    )
                })
                .ok()
        });
        out.push(Bucket {
            id,
            name,
            key: state,
            key_source: source,
            key_source_inline: inline,
            store_share,
        });
    }
    out
}

/// The explicit shares together must leave room: at most the whole
/// budget, and something for each bucket without one. Sizes are compared
/// with `store.max_size`.
pub(crate) fn check_shares(raw: &[RawBucket], buckets: &[Bucket], max_size: u64, ctx: &mut Ctx) {
    let mut total = 0.0;
    let mut last = None;
    for (i, (r, b)) in raw.iter().zip(buckets).enumerate() {
        if let Some(s) = b.store_share {
            total += s.fraction(max_size);
            last = Some((i, r.store_share.as_ref().map(|v| v.span())));
        }
    }
    let Some((i, span)) = last else { return };
    let implicit = buckets.iter().filter(|b| b.store_share.is_none()).count();
    let key = format!("buckets[{i}].store_share");
    if total > 1.0 + 1e-9 {
        ctx.error(
            span,
            &key,
            format!(
                "the `store_share` of the buckets add up to {:.0}% of `store.max_size` \
                 ({}); together they must be at most 100%, e.g. `\"30%\"` and `\"70%\"`",
                total * 100.0,
                super::units::format_size(max_size)
            ),
        );
    } else if implicit > 0 && total > 1.0 - 0.01 {
        ctx.error(
            span,
            &key,
            format!(
                "the `store_share` of the buckets add up to {:.0}% of `store.max_size`, \
                 leaving nothing for the {implicit} bucket(s) without one; give those a \
                 `store_share` too or lower these",
                total * 100.0
            ),
        );
    }
}

fn resolve_key(b: &RawBucket, key: &str, ctx: &mut Ctx) -> (BucketKeyState, String, bool) {
    let one = secrets::at_most_one(
        [&b.write_key_env, &b.write_key_file, &b.write_key],
        &format!("{key}.write_key"),
        format!(
            "`{key}` gives more than one of `write_key_env`, `write_key_file` and \
             `write_key`; keep one"
        ),
        ctx,
    );
    if !one {
        return (
            BucketKeyState::Missing("ambiguous".into()),
            "ambiguous".into(),
            false,
        );
    }
    if let Some(var) = &b.write_key_env {
        let name = var.get_ref().trim();
        let source = format!("environment variable `{}`", mask_keys(name));
        if looks_like_key(name) {
            ctx.error(
                Some(var.span()),
                &format!("{key}.write_key_env"),
                format!(
                    "`{key}.write_key_env` holds what looks like a dakkio key, pasted where \
                     the name of an environment variable was expected (the key is not \
                     shown); name the variable that holds the key, e.g. \
                     `write_key_env = \"DAKKIO_KEY_GREENHOUSE\"`"
                ),
            );
            return (BucketKeyState::Missing(source.clone()), source, false);
        }
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            ctx.error(
                Some(var.span()),
                &format!("{key}.write_key_env"),
                format!(
                    "`{key}.write_key_env` must name an environment variable, e.g. \
                     `DAKKIO_KEY_GREENHOUSE`; got `{name}`"
                ),
            );
            return (BucketKeyState::Missing(source.clone()), source, false);
        }
        return match secrets::from_env(name, ctx) {
            Lookup::Found(v) => {
                let state = check_key(&v, b, key, "write_key_env", Some(var.span()), ctx);
                (state, source, false)
            }
            Lookup::Unset | Lookup::Empty | Lookup::Unreadable(_) => (
                BucketKeyState::Missing(format!("{source} is not set")),
                source,
                false,
            ),
        };
    }
    if let Some(file) = &b
        .write_key_file
        .as_ref()
        .filter(|f| looks_like_key(f.get_ref()))
    {
        ctx.error(
            Some(file.span()),
            &format!("{key}.write_key_file"),
            format!(
                "`{key}.write_key_file` holds what looks like a dakkio key, pasted where the \
                 path of a file was expected (the key is not shown); put the key in a file \
                 and name it, e.g. `write_key_file = \"greenhouse.key\"`"
            ),
        );
        let source = "file named by `write_key_file`".to_owned();
        return (BucketKeyState::Missing(source.clone()), source, false);
    }
    if let Some(file) = &b.write_key_file {
        let (path, found) = secrets::from_file(file.get_ref(), ctx);
        let source = format!("file `{}`", mask_keys(&path.display().to_string()));
        return match found {
            Lookup::Found(v) => {
                let state = check_key(&v, b, key, "write_key_file", Some(file.span()), ctx);
                (state, source, false)
            }
            Lookup::Unset | Lookup::Empty => (
                BucketKeyState::Missing(format!("{source} is empty")),
                source,
                false,
            ),
            Lookup::Unreadable(e) => (
                BucketKeyState::Missing(format!("{source} cannot be read: {e}")),
                source,
                false,
            ),
        };
    }
    if let Some(inline) = &b.write_key {
        let state = check_key(
            inline.get_ref(),
            b,
            key,
            "write_key",
            Some(inline.span()),
            ctx,
        );
        return (state, "inline `write_key`".into(), true);
    }
    (
        BucketKeyState::Missing("no write key is configured".into()),
        "none".into(),
        false,
    )
}

fn check_key(
    value: &str,
    b: &RawBucket,
    key: &str,
    field: &str,
    span: Option<std::ops::Range<usize>>,
    ctx: &mut Ctx,
) -> BucketKeyState {
    let v = value.trim();
    let tail_ok = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric());
    let path = format!("{key}.{field}");
    let refused = |why: String| BucketKeyState::Missing(why);
    if let Some(tail) = v.strip_prefix("dakkio_w_") {
        if tail_ok(tail) {
            return BucketKeyState::Ready(Secret::new(v));
        }
    } else if let Some(tail) = v.strip_prefix("dakkio_a_") {
        if tail_ok(tail) {
            if b.allow_admin_key {
                return BucketKeyState::Ready(Secret::new(v));
            }
            ctx.error(
                span,
                &path,
                format!(
                    "`{path}` holds an admin key (`dakkio_a_…`); the uplink needs only a \
                     bucket write key (`dakkio_w_…`, created under the bucket's API keys). \
                     An admin key can do everything in the organisation if the gateway is \
                     compromised; set `{key}.allow_admin_key = true` to accept it anyway"
                ),
            );
            return refused("admin key refused".into());
        }
    } else if v.starts_with("dakkio_r_") {
        ctx.error(
            span,
            &path,
            format!(
                "`{path}` holds a read key (`dakkio_r_…`), which cannot ingest data; use \
                 the bucket's write key (`dakkio_w_…`)"
            ),
        );
        return refused("read key refused".into());
    }
    ctx.error(
        span,
        &path,
        format!(
            "`{path}` is not a dakkio write key: expected `dakkio_w_` followed by letters \
             and digits (the value is not shown)"
        ),
    );
    refused("malformed key".into())
}

#[cfg(test)]
mod share_tests {
    use std::path::Path;

    use super::super::{parse, Problem, ProcessEnv};
    use super::StoreShare;

    const A: &str = "507f1f77bcf86cd799439011";
    const B: &str = "507f1f77bcf86cd799439021";

    fn two(a: &str, b: &str) -> String {
        format!(
            "[store]\nmax_size = \"100MiB\"\n\
             [[buckets]]\nid = \"{A}\"\n{a}\n[[buckets]]\nid = \"{B}\"\n{b}\n"
        )
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, Path::new("/etc/g.toml"), &ProcessEnv)
            .expect_err("config should be refused")
            .problems
    }

    #[test]
    fn shares_are_percentages_or_sizes_and_default_to_none() {
        let c = parse(
            &two("store_share = \"30%\"", "store_share = \"20MiB\""),
            Path::new("/etc/g.toml"),
            &ProcessEnv,
        )
        .unwrap();
        assert_eq!(c.buckets[0].store_share, Some(StoreShare::Percent(30.0)));
        assert_eq!(c.buckets[1].store_share, Some(StoreShare::Bytes(20 << 20)));
        let c = parse(&two("", ""), Path::new("/etc/g.toml"), &ProcessEnv).unwrap();
        assert_eq!(c.buckets[0].store_share, None);
    }

    #[test]
    fn a_bad_share_is_refused_with_its_line_and_key() {
        for (bad, why) in [
            ("\"0%\"", "above 0 and at most 100"),
            ("\"120%\"", "above 0 and at most 100"),
            ("\"lots%\"", "is not a number"),
            ("\"12 parsecs\"", "store_share"),
            ("\"10KiB\"", "at least 1MiB"),
        ] {
            let p = problems(&two("", &format!("store_share = {bad}")));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert_eq!(p[0].key, "buckets[1].store_share");
            assert_eq!(p[0].line, Some(8), "{bad}");
            assert!(p[0].message.contains(why), "{bad}: {}", p[0].message);
            assert!(p[0].message.contains("e.g.") || p[0].message.contains("such as"));
        }
    }

    #[test]
    fn shares_must_fit_the_store_and_leave_room_for_the_others() {
        let p = problems(&two("store_share = \"60%\"", "store_share = \"50MiB\""));
        assert_eq!(p[0].key, "buckets[1].store_share");
        assert!(p[0].message.contains("110%"), "{}", p[0].message);
        let p = problems(&two("store_share = \"100%\"", ""));
        assert_eq!(p[0].key, "buckets[0].store_share");
        assert!(p[0].message.contains("leaving nothing"), "{}", p[0].message);
        // All explicit and below 100 %: fine (the rest is borrowed with
        // `drop_oldest`, unused with `reject`).
        parse(
            &two("store_share = \"30%\"", "store_share = \"30%\""),
            Path::new("/etc/g.toml"),
            &ProcessEnv,
        )
        .unwrap();
    }
}
