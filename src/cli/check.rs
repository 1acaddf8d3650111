//! `check`: validate a configuration file and print what it configures,
//! one line per part, with its warnings.

use std::path::Path;

use dakkio_gateway::clock::ClockSource;
use dakkio_gateway::config::{self, units, BucketKeyState, Config};

use super::Out;

/// Print the summary of a valid configuration.
pub fn check(out: Out, path: &Path, config: &Config) -> anyhow::Result<()> {
    writeln!(out, "{}: ok", path.display())?;
    writeln!(
        out,
        "gateway   id `{}`, data in `{}`",
        config.gateway.id,
        config.gateway.data_dir.display()
    )?;
    let s = &config.store;
    writeln!(
        out,
        "store     max {} ({} when full), synchronous {}, groups of {} or {}, history kept {}",
        units::format_size(s.max_size),
        match s.on_full {
            config::OnFull::DropOldest => "drop_oldest",
            config::OnFull::Reject => "reject",
        },
        match s.synchronous {
            config::Synchronous::Full => "full",
            config::Synchronous::Normal => "normal",
        },
        s.commit_max_readings,
        units::format_duration(s.commit_max_delay),
        units::format_duration(s.retention),
    )?;
    if config.buckets.is_empty() {
        writeln!(out, "buckets   none")?;
    }
    // Each bucket's fair share of the store (`store_share`).
    let budget = s.max_size - dakkio_gateway::store::headroom(s.max_size);
    let table = config
        .buckets
        .iter()
        .map(|b| (b.id.clone(), b.store_share))
        .collect();
    let shares = dakkio_gateway::store::fractions(&table, budget, &[]);
    for b in &config.buckets {
        let key = match &b.key {
            BucketKeyState::Ready(_) => format!("write key from {}", b.key_source),
            BucketKeyState::Missing(why) => format!("NO KEY YET: {why}"),
        };
        let share = shares.get(&b.id).copied().unwrap_or(0.0);
        writeln!(
            out,
            "bucket    `{}` {} — {key}; store share {:.0}% ({})",
            b.name,
            b.id,
            share * 100.0,
            units::format_size((share * budget as f64) as u64)
        )?;
    }
    let u = &config.uplink;
    writeln!(
        out,
        "uplink    {}, a batch at {} queued (or after {}), up to {} per request{}",
        u.url,
        u.batch_size,
        units::format_duration(u.max_batch_age),
        u.max_request_points,
        u.max_calls_per_month
            .map(|n| format!(", paced to {n} calls a month"))
            .unwrap_or_default()
    )?;
    let a = &config.api;
    if a.enabled {
        writeln!(
            out,
            "api       {}://{}, admin key {}, status page {}",
            if a.tls.is_some() { "https" } else { "http" },
            a.listen,
            if a.admin_key.is_some() {
                "set"
            } else {
                "NOT SET (key management answers 401)"
            },
            if a.status_page { "at /" } else { "off" }
        )?;
    } else {
        writeln!(out, "api       disabled")?;
    }
    let al = &config.alerts;
    writeln!(
        out,
        "alerts    webhooks allowed to {}{}",
        if al.allow.is_empty() {
            "nowhere (`alerts.allow` is empty: creating a rule is refused)".to_owned()
        } else {
            format!(
                "{} entr{}",
                al.allow.len(),
                if al.allow.len() == 1 { "y" } else { "ies" }
            )
        },
        al.mqtt_topic
            .as_ref()
            .map(|t| format!(", also published on `{t}`"))
            .unwrap_or_default()
    )?;
    match &config.mqtt {
        Some(m) => writeln!(
            out,
            "mqtt      {}:{}{}{}, {} route(s): {}",
            m.host,
            m.port,
            if m.tls.is_some() { " (TLS)" } else { "" },
            m.shared_group
                .as_ref()
                .map(|g| format!(", shared group `{g}`"))
                .unwrap_or_default(),
            m.routes.len(),
            m.routes
                .iter()
                .map(|r| match r.preset {
                    Some(p) => format!("`{}` (preset {p})", r.topic.filter()),
                    None => format!("`{}`", r.topic.filter()),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )?,
        None => writeln!(out, "mqtt      disabled")?,
    }
    for p in &config.serial {
        writeln!(
            out,
            "serial    `{}` {} at {} baud, {}",
            p.name,
            p.path,
            p.baud_rate,
            p.line.describe()
        )?;
    }
    if config.serial.is_empty() {
        writeln!(out, "serial    none")?;
    }
    for b in &config.modbus {
        let line = match &b.transport {
            config::ModbusTransport::Rtu {
                path, baud_rate, ..
            } => format!("RTU {path} at {baud_rate} baud"),
            config::ModbusTransport::Tcp { address } => format!("TCP {address}"),
        };
        let devices: Vec<String> = b
            .devices
            .iter()
            .map(|d| {
                format!(
                    "`{}` (unit {}, {} register(s) every {})",
                    d.name,
                    d.unit,
                    d.registers.len(),
                    units::format_duration(d.every)
                )
            })
            .collect();
        writeln!(
            out,
            "modbus    `{}` {line}, timeout {}, {} retr{}: {}",
            b.name,
            units::format_duration(b.timeout),
            b.retries,
            if b.retries == 1 { "y" } else { "ies" },
            devices.join(", ")
        )?;
    }
    let c = &config.clock;
    let now = if dakkio_gateway::clock::SystemClock.status().synced {
        "synchronised now"
    } else {
        "NOT synchronised now"
    };
    if c.hold_unsynced {
        writeln!(
            out,
            "clock     {now}; receive-time readings held until it is; an earlier boot's {} after {}",
            match c.earlier_boot {
                config::EarlierBoot::Forward => "forwarded as estimated",
                config::EarlierBoot::Keep => "kept as dead letters",
            },
            units::format_duration(c.earlier_boot_wait)
        )?;
    } else {
        writeln!(
            out,
            "clock     {now}; readings are not held (`clock.hold_unsynced = false`)"
        )?;
    }
    for w in &config.warnings {
        writeln!(out, "warning   {w}")?;
    }
    Ok(())
}
