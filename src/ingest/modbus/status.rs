//! What a bus task persists for `queue stats` (counters and state in the
//! store, keyed `modbus:<bus>:<field>`), and reading it back typed.

use std::collections::BTreeMap;

use crate::store::{Reader, StoreError};

/// The store key of a bus's counter or state field.
pub(super) fn status_key(bus: &str, field: &str) -> String {
    format!("{PREFIX}{bus}:{field}")
}

const PREFIX: &str = "modbus:";
/// State: `yes` / `no`.
pub(super) const CONNECTED: &str = "connected";
/// State: names of the devices not answering, comma-separated.
pub(super) const DOWN: &str = "down";
/// Counter: readings handed to the store.
pub(super) const READINGS: &str = "readings";
/// Counter: requests that got no usable answer after their retries.
pub(super) const TIMEOUTS: &str = "timeouts";
/// Counter prefix: exception responses by code (`exception:<code>`).
pub(super) const EXCEPTION: &str = "exception:";
/// Counter prefix: values skipped by reason (`bad_value:<reason>`).
pub(super) const BAD_VALUE: &str = "bad_value:";

/// One bus's persisted status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusStatus {
    pub readings: i64,
    pub timeouts: i64,
    /// Exception responses by code.
    pub exceptions: BTreeMap<u8, i64>,
    pub bad_values: BTreeMap<String, i64>,
    /// `yes` / `no`; `None` before the bus first ran.
    pub connected: Option<String>,
    /// Devices not answering at the last flush.
    pub down: Vec<String>,
}

impl BusStatus {
    /// Every bus that persisted something, by name (blocking).
    pub fn read_all(reader: &Reader) -> Result<BTreeMap<String, BusStatus>, StoreError> {
        let mut out: BTreeMap<String, BusStatus> = BTreeMap::new();
        // Names may contain `:` (a TCP address): split on the known fields.
        for (key, n) in reader.counters_blocking(PREFIX)? {
            let Some(key) = key.strip_prefix(PREFIX) else {
                continue;
            };
            if let Some(bus) = key.strip_suffix(&format!(":{READINGS}")) {
                out.entry(bus.to_owned()).or_default().readings += n;
            } else if let Some(bus) = key.strip_suffix(&format!(":{TIMEOUTS}")) {
                out.entry(bus.to_owned()).or_default().timeouts += n;
            } else if let Some((bus, code)) = key.rsplit_once(&format!(":{EXCEPTION}")) {
                if let Ok(code) = code.parse() {
                    *out.entry(bus.to_owned())
                        .or_default()
                        .exceptions
                        .entry(code)
                        .or_default() += n;
                }
            } else if let Some((bus, reason)) = key.rsplit_once(&format!(":{BAD_VALUE}")) {
                *out.entry(bus.to_owned())
                    .or_default()
                    .bad_values
                    .entry(reason.to_owned())
                    .or_default() += n;
            }
        }
        for (key, v) in reader.state_blocking(PREFIX)? {
            let Some(key) = key.strip_prefix(PREFIX) else {
                continue;
            };
            if let Some(bus) = key.strip_suffix(&format!(":{CONNECTED}")) {
                out.entry(bus.to_owned()).or_default().connected = Some(v);
            } else if let Some(bus) = key.strip_suffix(&format!(":{DOWN}")) {
                out.entry(bus.to_owned()).or_default().down = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys written as the bus task writes them read back typed, with a
    /// TCP address (which holds `:`) as the bus name.
    #[tokio::test]
    async fn what_a_bus_writes_reads_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let (h, writer) =
            crate::store::open(&crate::config::StoreConfig::default(), dir.path()).unwrap();
        let bus = "10.0.0.5:502";
        h.add_counters(vec![
            (status_key(bus, READINGS), 7),
            (status_key(bus, TIMEOUTS), 2),
            (status_key(bus, &format!("{EXCEPTION}2")), 3),
            (status_key(bus, &format!("{BAD_VALUE}not_finite")), 1),
        ])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
        h.set_state(vec![
            (status_key(bus, CONNECTED), "yes".into()),
            (status_key(bus, DOWN), "meter,pump".into()),
        ])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
        let all = BusStatus::read_all(h.reader()).unwrap();
        let s = &all[bus];
        assert_eq!((s.readings, s.timeouts), (7, 2));
        assert_eq!(s.exceptions[&2], 3);
        assert_eq!(s.bad_values["not_finite"], 1);
        assert_eq!(s.connected.as_deref(), Some("yes"));
        assert_eq!(s.down, vec!["meter".to_owned(), "pump".to_owned()]);
        drop(h);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap()
            .unwrap();
    }
}
