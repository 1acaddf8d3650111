//! `rejects list | show | replay | purge`: inputs that could not become
//! readings, kept for inspection (bounded: `store.max_rejects` rows,
//! inputs cut to 1 KiB, the first thing removed when the store needs room;
//! every reject stays counted by reason in `queue stats`).
//!
//! `replay` runs the selected rejects through the *current* configuration
//! with the daemon's decoders (`ingest::replay`) and moves the ones that
//! now decode whole into the queue, in one transaction that also takes
//! them out of the `rejected` counts (see `store/rejects.rs`). It works
//! beside a running daemon: it writes through a store handle of its own,
//! and SQLite's locking orders the two writers (the daemon's writer begins
//! every transaction IMMEDIATE and rereads its sequence inside it), so
//! stopping the gateway is not needed. `purge` deletes rows and keeps the
//! counts.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use dakkio_gateway::config::Config;
use dakkio_gateway::ingest::replay::{self, Outcome};
use dakkio_gateway::reading::{format_timestamp, Reading};
use dakkio_gateway::store::{RejectFilter, RejectRow};

use super::{open_reader, with_config, with_store, ConfigArg, Out};

/// Characters of the raw input shown per reject in `list`.
const RAW_SHOWN: usize = 200;

#[derive(Subcommand)]
pub enum RejectsCommand {
    /// List the newest kept rejects: id, time, origin, reason, explanation, the input.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// One reject in full, and what the current configuration makes of it.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// The id shown by `list`.
        id: i64,
    },
    /// Run kept rejects through the current configuration; store those that now decode.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Every kept reject (with --reason/--origin: every matching one).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Say what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Reject ids as shown by `list`.
        ids: Vec<i64>,
    },
    /// Delete kept rejects (they stay counted by reason).
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Every kept reject (with --reason/--origin: every matching one).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Reject ids as shown by `list`.
        ids: Vec<i64>,
    },
}

#[derive(Args, Clone, Default)]
pub struct FilterArgs {
    /// Only rejects with this reason (e.g. `invalid_json`).
    #[arg(long)]
    reason: Option<String>,
    /// Only rejects whose origin starts with this (`mqtt:`, `mqtt:zigbee2mqtt/`, `serial:/dev/ttyUSB0`).
    #[arg(long)]
    origin: Option<String>,
}

impl FilterArgs {
    fn filter(&self, ids: Vec<i64>) -> RejectFilter {
        RejectFilter {
            ids: (!ids.is_empty()).then_some(ids),
            reason: self.reason.clone(),
            origin: self.origin.clone(),
        }
    }
}

pub fn execute(cmd: RejectsCommand) -> ExitCode {
    match cmd {
        RejectsCommand::List {
            config,
            data_dir,
            limit,
            filter,
        } => with_config(&config.config, data_dir, |out, c| {
            list(out, c, &filter.filter(Vec::new()), limit)
        }),
        RejectsCommand::Show {
            config,
            data_dir,
            id,
        } => with_config(&config.config, data_dir, |out, c| show(out, c, id)),
        RejectsCommand::Replay {
            config,
            data_dir,
            all,
            dry_run,
            filter,
            ids,
        } => {
            if !all && ids.is_empty() {
                eprintln!("error: name reject ids (see `rejects list`) or give --all");
                return ExitCode::from(2);
            }
            with_config(&config.config, data_dir, |out, c| {
                replay(out, c, &filter.filter(ids), dry_run)
            })
        }
        RejectsCommand::Purge {
            config,
            data_dir,
            all,
            filter,
            ids,
        } => {
            if !all && ids.is_empty() {
                eprintln!(
                    "error: name reject ids (see `rejects list`) or give --all \
                     (with --reason or --origin to narrow it)"
                );
                return ExitCode::from(2);
            }
            let filter = filter.filter(ids);
            with_config(&config.config, data_dir, |out, c| {
                let n = with_store(c, |h| async move { h.purge_rejects(filter).await })?;
                writeln!(
                    out,
                    "{n} reject(s) deleted (still counted by reason in `queue stats`)"
                )?;
                Ok(())
            })
        }
    }
}

/// Printable text of an input: escaped, cut to `max` characters.
fn shown(raw: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut s: String = text
        .chars()
        .take(max)
        .collect::<String>()
        .escape_debug()
        .collect();
    if text.chars().count() > max {
        s.push('…');
    }
    s
}

pub fn list(out: Out, config: &Config, filter: &RejectFilter, limit: usize) -> anyhow::Result<()> {
    let rows = open_reader(config)?.rejects_matching_blocking(filter, limit)?;
    if rows.is_empty() {
        writeln!(out, "no rejects kept")?;
    }
    for r in rows {
        writeln!(
            out,
            "{:>6}  {}  {}  {}: {}\n        raw ({} bytes kept) \"{}\"",
            r.id,
            format_timestamp(r.at_ms),
            r.origin,
            r.reason,
            r.detail,
            r.raw.len(),
            shown(&r.raw, RAW_SHOWN)
        )?;
    }
    Ok(())
}

fn show(out: Out, config: &Config, id: i64) -> anyhow::Result<()> {
    let filter = RejectFilter {
        ids: Some(vec![id]),
        ..RejectFilter::default()
    };
    let Some(r) = open_reader(config)?
        .rejects_matching_blocking(&filter, 1)?
        .pop()
    else {
        anyhow::bail!("no reject {id} is kept; `rejects list` shows the ids");
    };
    writeln!(out, "id       {}", r.id)?;
    writeln!(out, "at       {}", format_timestamp(r.at_ms))?;
    writeln!(out, "origin   {}", r.origin)?;
    writeln!(out, "reason   {}", r.reason)?;
    writeln!(out, "detail   {}", r.detail)?;
    writeln!(out, "raw      {} bytes kept", r.raw.len())?;
    match std::str::from_utf8(&r.raw) {
        Ok(text) => writeln!(out, "{text}")?,
        Err(_) => {
            writeln!(out, "\"{}\"", shown(&r.raw, usize::MAX))?;
            writeln!(out, "hex      {}", hex(&r.raw))?;
        }
    }
    write!(out, "now      ")?;
    match replay::reject(config, &r) {
        Err(why) => writeln!(out, "not replayable: {why}")?,
        Ok(o) => describe(out, &o)?,
    }
    Ok(())
}

fn hex(raw: &[u8]) -> String {
    raw.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line on what an input becomes under the current configuration.
fn describe(out: Out, o: &Outcome) -> anyhow::Result<()> {
    match o {
        Outcome::Readings(rs) => writeln!(
            out,
            "decodes to {} reading(s) with the current configuration (`rejects replay` stores them)",
            rs.len()
        )?,
        Outcome::Skipped(why) => writeln!(out, "skipped with the current configuration ({why})")?,
        Outcome::Rejected { reason, detail, .. } => writeln!(
            out,
            "still rejected: {reason}: {detail}\n         hint: {}",
            replay::hint(reason)
        )?,
    }
    Ok(())
}

fn replay(out: Out, config: &Config, filter: &RejectFilter, dry_run: bool) -> anyhow::Result<()> {
    let rows: Vec<RejectRow> =
        open_reader(config)?.rejects_matching_blocking(filter, usize::MAX)?;
    let mut items: Vec<(i64, Vec<Reading>)> = Vec::new();
    let mut kept = 0usize;
    // Oldest first, so readings enter the queue in their arrival order.
    for r in rows.iter().rev() {
        match replay::reject(config, r) {
            Ok(Outcome::Readings(rs)) => items.push((r.id, rs)),
            Ok(Outcome::Skipped(why)) => {
                kept += 1;
                writeln!(
                    out,
                    "{:>6}  kept: skipped with the current configuration ({why})",
                    r.id
                )?;
            }
            Ok(Outcome::Rejected { reason, detail, .. }) => {
                kept += 1;
                writeln!(out, "{:>6}  kept: still rejected: {reason}: {detail}", r.id)?;
            }
            Err(why) => {
                kept += 1;
                writeln!(out, "{:>6}  kept: not replayable: {why}", r.id)?;
            }
        }
    }
    if dry_run {
        for (id, rs) in &items {
            writeln!(out, "{id:>6}  would store {} reading(s)", rs.len())?;
        }
        writeln!(
            out,
            "dry run: {} reject(s) would be replayed, {kept} kept",
            items.len()
        )?;
        return Ok(());
    }
    let done = if items.is_empty() {
        Default::default()
    } else {
        with_store(config, |h| async move { h.replay_rejects(items).await })?
    };
    for id in &done.ids {
        writeln!(out, "{id:>6}  replayed into the queue")?;
    }
    writeln!(
        out,
        "{} reject(s) replayed into the queue ({} reading(s)), {kept} kept",
        done.ids.len(),
        done.readings
    )?;
    Ok(())
}
