//! `[[buckets]]`: the dakkio buckets this gateway forwards to, each with its
//! write key (from an environment variable, a credentials file or inline).

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
}

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
}

impl Bucket {
    pub fn write_key(&self) -> Option<&Secret> {
        match &self.key {
            BucketKeyState::Ready(k) => Some(k),
            BucketKeyState::Missing(_) => None,
        }
    }
}

pub(crate) fn validate_all(raw: Vec<RawBucket>, ctx: &mut Ctx) -> Vec<Bucket> {
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
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
        let (state, source, inline) = resolve_key(&b, &key, ctx);
        out.push(Bucket {
            id,
            name,
            key: state,
            key_source: source,
            key_source_inline: inline,
        });
    }
    out
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
