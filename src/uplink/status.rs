//! What the uplink persists for other processes (`queue stats`), and the
//! typed reader for it. The keys are built here and nowhere else: the
//! forwarders write through [`pacing_key`] and [`RATELIMIT_REMAINING_KEY`],
//! the call budget through [`super::budget::counter_name`], and
//! [`UplinkStatus::read`] parses the same names, so a rename changes both.

use std::collections::BTreeMap;

use crate::store::{Reader, StoreError};

/// Every key the uplink writes starts with this.
const PREFIX: &str = "uplink:";
const PACING_SUFFIX: &str = ":pacing_ms";
/// Calls counters: `uplink:calls:<YYYY-MM>` (see `budget::counter_name`).
const CALLS_PREFIX: &str = "uplink:calls:";

/// Counters: points dakkio accepted per bucket and UTC day,
/// `uplink:delivered:<YYYY-MM-DD>:<bucket name>` (the status page's
/// "delivered today"; one small ledger row per bucket and day).
const DELIVERED_PREFIX: &str = "uplink:delivered:";

/// The counter of points delivered for `bucket_name` on the UTC day of `at_ms`.
pub fn delivered_key(at_ms: i64, bucket_name: &str) -> String {
    format!("{DELIVERED_PREFIX}{}:{bucket_name}", day_of(at_ms))
}

/// `YYYY-MM-DD` of `at_ms` (UTC).
fn day_of(at_ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Points delivered on the UTC day of `at_ms`, by bucket name (blocking).
pub fn delivered_on_day_of(
    reader: &Reader,
    at_ms: i64,
) -> Result<BTreeMap<String, i64>, StoreError> {
    let prefix = format!("{DELIVERED_PREFIX}{}:", day_of(at_ms));
    Ok(reader
        .counters_blocking(&prefix)?
        .into_iter()
        .filter_map(|(k, n)| k.strip_prefix(&prefix).map(|b| (b.to_owned(), n)))
        .collect())
}

/// State key: dakkio's last `X-RateLimit-Remaining`.
pub const RATELIMIT_REMAINING_KEY: &str = "uplink:ratelimit_remaining";

/// State key: a bucket's pacing delay in ms (the call budget spreads calls).
pub fn pacing_key(bucket_name: &str) -> String {
    format!("{PREFIX}{bucket_name}{PACING_SUFFIX}")
}

/// The uplink's persisted counters and state, read from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UplinkStatus {
    /// Calls counted per month, by `YYYY-MM`.
    pub calls_by_month: BTreeMap<String, i64>,
    /// The pacing delay per bucket name, in ms (0 = not pacing).
    pub pacing_ms: BTreeMap<String, u64>,
    /// dakkio's last `X-RateLimit-Remaining`, if one was seen.
    pub ratelimit_remaining: Option<String>,
}

impl UplinkStatus {
    /// Read what the forwarders and the call budget persisted (blocking).
    pub fn read(reader: &Reader) -> Result<UplinkStatus, StoreError> {
        let mut out = UplinkStatus::default();
        for (key, n) in reader.counters_blocking(CALLS_PREFIX)? {
            if let Some(month) = key.strip_prefix(CALLS_PREFIX) {
                out.calls_by_month.insert(month.to_owned(), n);
            }
        }
        for (key, v) in reader.state_blocking(PREFIX)? {
            if key == RATELIMIT_REMAINING_KEY {
                out.ratelimit_remaining = Some(v);
            } else if let Some(bucket) = key
                .strip_prefix(PREFIX)
                .and_then(|k| k.strip_suffix(PACING_SUFFIX))
            {
                out.pacing_ms
                    .insert(bucket.to_owned(), v.parse().unwrap_or(0));
            }
        }
        Ok(out)
    }

    /// Calls counted in the month of `now_ms` (UTC).
    pub fn calls_in_month_of(&self, now_ms: i64) -> i64 {
        let name = super::budget::counter_name(super::budget::month_of(now_ms));
        name.strip_prefix(CALLS_PREFIX)
            .and_then(|m| self.calls_by_month.get(m))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    /// Written the way the forwarders and the budget write them, read back
    /// typed: a renamed key breaks this test, not `queue stats` silently.
    #[tokio::test]
    async fn what_the_uplink_writes_reads_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let (h, writer) = crate::store::open(&StoreConfig::default(), dir.path()).unwrap();
        let now = crate::reading::now_ms();
        let month = super::super::budget::counter_name(super::super::budget::month_of(now));
        h.add_counters(vec![(month, 7)])
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        h.set_state(vec![
            (pacing_key("barn:north"), "1500".into()),
            (RATELIMIT_REMAINING_KEY.into(), "42".into()),
        ])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
        let day = 1_765_000_000_000; // 2025-12-06 05:46:40 UTC
        h.add_counters(vec![
            (delivered_key(day, "barn:north"), 40),
            (delivered_key(day, "attic"), 2),
            (delivered_key(day - 86_400_000, "attic"), 9),
        ])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
        assert_eq!(delivered_key(day, "x"), "uplink:delivered:2025-12-06:x");
        let today = delivered_on_day_of(h.reader(), day).unwrap();
        assert_eq!(today.len(), 2, "{today:?}");
        assert_eq!(today["barn:north"], 40);
        assert_eq!(today["attic"], 2);
        let s = UplinkStatus::read(h.reader()).unwrap();
        assert_eq!(s.calls_in_month_of(now), 7);
        assert_eq!(s.pacing_ms["barn:north"], 1500);
        assert_eq!(s.ratelimit_remaining.as_deref(), Some("42"));
        drop(h);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap()
            .unwrap();
    }
}
