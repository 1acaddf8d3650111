//! `check`: validate a configuration file and print what it configures,
//! one line per part, with its warnings.

use std::path::Path;

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
    for b in &config.buckets {
        let key = match &b.key {
            BucketKeyState::Ready(_) => format!("write key from {}", b.key_source),
            BucketKeyState::Missing(why) => format!("NO KEY YET: {why}"),
        };
        writeln!(out, "bucket    `{}` {} — {key}", b.name, b.id)?;
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
            "api       {}://{}, admin key {}",
            if a.tls.is_some() { "https" } else { "http" },
            a.listen,
            if a.admin_key.is_some() {
                "set"
            } else {
                "NOT SET (key management answers 401)"
            }
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
            "mqtt      {}:{}{}, {} route(s): {}",
            m.host,
            m.port,
            if m.tls.is_some() { " (TLS)" } else { "" },
            m.routes.len(),
            m.routes
                .iter()
                .map(|r| format!("`{}`", r.topic.filter()))
                .collect::<Vec<_>>()
                .join(", ")
        )?,
        None => writeln!(out, "mqtt      disabled")?,
    }
    for p in &config.serial {
        writeln!(
            out,
            "serial    `{}` {} at {} baud",
            p.name, p.path, p.baud_rate
        )?;
    }
    if config.serial.is_empty() {
        writeln!(out, "serial    none")?;
    }
    for w in &config.warnings {
        writeln!(out, "warning   {w}")?;
    }
    Ok(())
}
