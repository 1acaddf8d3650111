//! `queue stats`: per bucket the queue and the ledger, rejects by reason,
//! MQTT messages skipped and payload parts ignored (counted, not stored),
//! the uplink's call budget and pacing, alert rules, firings and
//! notifications, the serial ports, the database
//! size. Reads beside a running daemon; the uplink's and the ports'
//! persisted values come through their owners' typed readers
//! ([`UplinkStatus`], [`PortStatus`]), never by key name here.

use std::collections::BTreeMap;

use dakkio_gateway::config::{units, Config};
use dakkio_gateway::ingest::modbus::BusStatus;
use dakkio_gateway::ingest::serial::PortStatus;
use dakkio_gateway::reading::now_ms;
use dakkio_gateway::store::{Reader, StoreStats};
use dakkio_gateway::uplink::UplinkStatus;

use super::{age, open_reader, Out};

/// `queue stats [--json]`.
pub fn stats(out: Out, config: &Config, json: bool) -> anyhow::Result<()> {
    let reader = open_reader(config)?;
    let stats: StoreStats = reader.stats_blocking()?;
    // The uplink's persisted counters (calls per month) and state (pacing
    // delay per bucket, dakkio's last `X-RateLimit-Remaining`).
    let uplink = UplinkStatus::read(&reader)?;
    // MQTT messages skipped whole and payload parts set aside, counted in
    // the ledger (`mqtt:skipped:retained`, `mqtt:ignored:array` …).
    let mqtt = reader.counters_blocking("mqtt:")?;
    let alerts = reader.alert_stats_blocking()?;
    if json {
        let mut v = serde_json::to_value(&stats)?;
        v["alerts"] = serde_json::to_value(&alerts)?;
        v["mqtt"] = serde_json::to_value(&mqtt)?;
        let mut u = serde_json::to_value(&uplink)?;
        u["max_calls_per_month"] = serde_json::json!(config.uplink.max_calls_per_month);
        v["uplink"] = u;
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>12} {:>8} {:>10}  dropped reasons",
        "bucket", "queued", "oldest", "delivered", "dead", "dropped"
    )?;
    let name = |id: &str| {
        config
            .bucket(id)
            .map_or_else(|| format!("{id} (not configured)"), |b| b.name.clone())
    };
    for b in &stats.buckets {
        let reasons: Vec<String> = b
            .dropped_by_reason
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>12} {:>8} {:>10}  {}",
            name(&b.bucket_id),
            b.queued,
            age(b.oldest_queued_ms),
            b.delivered,
            b.dead_lettered,
            b.dropped,
            reasons.join(" ")
        )?;
    }
    for b in &config.buckets {
        if stats.bucket(&b.id).is_none() {
            writeln!(
                out,
                "{:<24} {:>10} {:>10} {:>12} {:>8} {:>10}",
                b.name, 0, "-", 0, 0, 0
            )?;
        }
    }
    let rejects: Vec<String> = stats
        .rejected_by_reason
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    writeln!(
        out,
        "rejects   {} kept{}{}; by reason: {}",
        stats.rejects_kept,
        if stats.rejects_evicted > 0 {
            format!(
                " ({} removed to stay within `store.max_size`)",
                stats.rejects_evicted
            )
        } else {
            String::new()
        },
        if stats.rejects_replayed > 0 {
            format!(", {} replayed into the queue", stats.rejects_replayed)
        } else {
            String::new()
        },
        if rejects.is_empty() {
            "none".into()
        } else {
            rejects.join(" ")
        }
    )?;
    let held: Vec<String> = stats
        .buckets
        .iter()
        .filter(|b| b.held_for_clock > 0)
        .map(|b| format!("{}={}", name(&b.bucket_id), b.held_for_clock))
        .collect();
    if !held.is_empty() {
        writeln!(
            out,
            "clock     waiting for a synchronised clock (part of queued): {}",
            held.join(" ")
        )?;
    }
    if !mqtt.is_empty() {
        let counts: Vec<String> = mqtt
            .iter()
            .map(|(k, n)| format!("{}={n}", k.trim_start_matches("mqtt:")))
            .collect();
        writeln!(out, "mqtt      counted, not stored: {}", counts.join(" "))?;
    }
    let evicted: Vec<String> = stats
        .buckets
        .iter()
        .filter(|b| b.dead_letters_evicted > 0)
        .map(|b| format!("{}={}", name(&b.bucket_id), b.dead_letters_evicted))
        .collect();
    if !evicted.is_empty() {
        writeln!(
            out,
            "dead letters removed to stay within `store.max_size` (still counted as dead): {}",
            evicted.join(" ")
        )?;
    }
    let used = uplink.calls_in_month_of(now_ms());
    let budget = match config.uplink.max_calls_per_month {
        Some(limit) => format!(
            "{used} of {limit} calls this month ({} left)",
            (limit as i64 - used).max(0)
        ),
        None => format!("{used} calls this month counted (no `uplink.max_calls_per_month`)"),
    };
    let pacing: Vec<String> = uplink
        .pacing_ms
        .iter()
        .filter(|(_, ms)| **ms != 0)
        .map(|(b, ms)| format!("{b} every {ms} ms"))
        .collect();
    writeln!(
        out,
        "uplink    {budget}; pacing: {}; dakkio quota remaining: {}",
        if pacing.is_empty() {
            "off".into()
        } else {
            pacing.join(", ")
        },
        uplink.ratelimit_remaining.as_deref().unwrap_or("unknown")
    )?;

    let failed: Vec<String> = alerts
        .failed_by_reason
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    writeln!(
        out,
        "alerts    {} rules ({} active); {} fired ({} dropped); notifications: {} delivered, \
         {} pending, {} failed{}",
        alerts.rules,
        alerts.rules_active,
        alerts.fired,
        alerts.firings_dropped,
        alerts.delivered,
        alerts.pending,
        alerts.failed,
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(" "))
        }
    )?;
    print_serial_ports(out, config, &reader)?;
    print_modbus_buses(out, config, &reader)?;
    writeln!(
        out,
        "database  {} in use of {} max; file {}, WAL {}",
        units::format_size(stats.used_bytes),
        units::format_size(config.store.max_size),
        units::format_size(stats.file_bytes),
        units::format_size(stats.wal_bytes)
    )?;
    match stats.written_bytes_per_day {
        Some(v) => writeln!(
            out,
            "disk      the gateway writes {}/day (over up to the last day; compare with \
             the card's endurance)",
            units::format_size(v)
        )?,
        None => writeln!(
            out,
            "disk      bytes written per day: not measured yet (after a few minutes running)"
        )?,
    }
    Ok(())
}

fn print_modbus_buses(out: Out, config: &Config, reader: &Reader) -> anyhow::Result<()> {
    let mut buses: BTreeMap<String, BusStatus> = config
        .modbus
        .iter()
        .map(|b| (b.name.clone(), BusStatus::default()))
        .collect();
    buses.extend(BusStatus::read_all(reader)?);
    if buses.is_empty() {
        return Ok(());
    }
    writeln!(out, "modbus buses")?;
    for (name, b) in &buses {
        let configured = config.modbus.iter().any(|c| &c.name == name);
        let exceptions: Vec<String> = b
            .exceptions
            .iter()
            .map(|(code, n)| format!("{code}={n}"))
            .collect();
        writeln!(
            out,
            "  {name}{}: connected {}, readings {}, timeouts {}, exceptions {}{}, not answering: {}",
            if configured { "" } else { " (not configured)" },
            b.connected.as_deref().unwrap_or("-"),
            b.readings,
            b.timeouts,
            b.exceptions.values().sum::<i64>(),
            if exceptions.is_empty() {
                String::new()
            } else {
                format!(" (by code: {})", exceptions.join(" "))
            },
            if b.down.is_empty() {
                "none".to_owned()
            } else {
                b.down.join(", ")
            }
        )?;
    }
    Ok(())
}

fn print_serial_ports(out: Out, config: &Config, reader: &Reader) -> anyhow::Result<()> {
    let mut ports: BTreeMap<String, PortStatus> = config
        .serial
        .iter()
        .map(|s| (s.path.clone(), PortStatus::default()))
        .collect();
    ports.extend(PortStatus::read_all(reader)?);
    if ports.is_empty() {
        return Ok(());
    }
    writeln!(out, "serial ports")?;
    for (path, p) in &ports {
        let name = match config.serial.iter().find(|s| &s.path == path) {
            Some(s) if s.name != *path => format!("{path} ({})", s.name),
            Some(_) => path.clone(),
            None => format!("{path} (not configured)"),
        };
        let total: i64 = p.rejected.values().sum();
        let reasons: Vec<String> = p.rejected.iter().map(|(r, n)| format!("{r}={n}")).collect();
        writeln!(
            out,
            "  {name}: connected {}, lines ok {}, rejected {total}{}, last line {}",
            p.connected.as_deref().unwrap_or("-"),
            p.lines_ok,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(" "))
            },
            match p.last_line_ms {
                Some(ms) => format!("{} ago", age(Some(ms))),
                None => "never".into(),
            }
        )?;
    }
    Ok(())
}
