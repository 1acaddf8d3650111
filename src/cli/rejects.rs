//! `rejects list`: the newest inputs that could not become readings, kept
//! for inspection (bounded: `store.max_rejects` rows, truncated, and the
//! first thing removed when the store needs room; every reject stays
//! counted by reason in `queue stats`).

use dakkio_gateway::config::Config;
use dakkio_gateway::reading::format_timestamp;

use super::{open_reader, Out};

/// Characters of the raw input shown per reject.
const RAW_SHOWN: usize = 200;

pub fn list(out: Out, config: &Config, limit: usize) -> anyhow::Result<()> {
    let rows = open_reader(config)?.rejects_blocking(limit)?;
    if rows.is_empty() {
        writeln!(out, "no rejects kept")?;
    }
    for r in rows {
        let raw = String::from_utf8_lossy(&r.raw);
        let mut shown: String = raw
            .chars()
            .take(RAW_SHOWN)
            .collect::<String>()
            .escape_debug()
            .collect();
        if raw.chars().count() > RAW_SHOWN {
            shown.push('…');
        }
        writeln!(
            out,
            "{:>6}  {}  {}  {}: {}\n        raw ({} bytes kept) \"{}\"",
            r.id,
            format_timestamp(r.at_ms),
            r.origin,
            r.reason,
            r.detail,
            r.raw.len(),
            shown
        )?;
    }
    Ok(())
}
