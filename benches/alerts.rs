//! Alert evaluation cost (harness = false): what the store's writer thread
//! spends per committed reading on alert rules.
//!
//! 100 rules on 10 data sources (10 each: thresholds in words and symbols,
//! equality, a duration rule and a no-data rule), readings of those sources
//! with realistic values (a few meet their rules; cooldowns hold most
//! firings back), and the same readings for 10 sources without rules (the
//! no-rule path). CPU time of this thread (CLOCK_THREAD_CPUTIME_ID) per
//! reading, median of several runs; target ≤ 1 µs per reading. In the same
//! run, as a reference of what the writer already does per reading: the
//! JSON encoding of its values (`serde_json::to_string`, as `apply.rs`
//! does before the INSERT).
//!
//! Run (release): `cargo bench --bench alerts`
//! Sizes: ALERTS_BENCH_READINGS (default 1000000), ALERTS_BENCH_RUNS (5).

use std::time::Duration;

use dakkio_gateway::alerts::condition;
use dakkio_gateway::alerts::eval::{Evaluator, Firing, RuleSpec};
use dakkio_gateway::reading::{Origin, Reading, Value};

const BUCKET: &str = "507f1f77bcf86cd799439011";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn source(n: usize) -> String {
    format!("507f1f77bcf86cd7994{n:05x}")
}

const CONDITIONS: [&str; 10] = [
    "temperature is greater than 30",
    "temperature exceeds 35",
    "temperature drops below 2",
    "temperature <= 0",
    "humidity > 90",
    "humidity is less than 10",
    "status equals 3",
    "status != 1",
    "temperature > 28 for 5 minutes",
    "no data received for 30 minutes",
];

fn evaluator() -> Evaluator {
    let mut e = Evaluator::new();
    for s in 0..10 {
        for (i, c) in CONDITIONS.iter().enumerate() {
            e.upsert(
                RuleSpec {
                    id: format!("{s:02}{i:02}"),
                    bucket_id: BUCKET.into(),
                    data_source_id: source(s),
                    condition: condition::parse(c).unwrap(),
                    cooldown: Duration::from_secs(300),
                    active: true,
                    last_triggered: None,
                },
                0,
            );
        }
    }
    assert_eq!(e.len(), 100);
    e
}

/// Readings round-robin over 10 sources (`offset` 0: the sources with
/// rules; 100: sources without).
fn readings(n: usize, offset: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            bucket_id: BUCKET.into(),
            data_source_id: source(offset + i % 10),
            timestamp_ms: i as i64 * 100,
            values: [
                ("temperature".into(), Value::Number(20.0 + (i % 17) as f64)),
                ("humidity".into(), Value::Number(40.0 + (i % 53) as f64)),
                ("status".into(), Value::Number((i % 4) as f64)),
            ]
            .into(),
            metadata: Default::default(),
            origin: Origin::Mqtt,
            receive_time: false,
        })
        .collect()
}

/// CPU ns per reading of `f` over `readings`, with the time moving 100 ms
/// per reading (so cooldowns end and timers run).
fn per_reading(readings: &[Reading], mut f: impl FnMut(&Reading, i64)) -> f64 {
    let start = thread_cpu_ns();
    for (i, r) in readings.iter().enumerate() {
        f(r, i as i64 * 100);
    }
    (thread_cpu_ns() - start) as f64 / readings.len() as f64
}

fn main() {
    let n = env("ALERTS_BENCH_READINGS", 1_000_000) as usize;
    let runs = env("ALERTS_BENCH_RUNS", 5) as usize;
    let with_rules = readings(n, 0);
    let without = readings(n, 100);
    let (mut rules_ns, mut none_ns, mut json_ns, mut fired) = (vec![], vec![], vec![], 0);
    for _ in 0..runs {
        let mut e = evaluator();
        let mut out: Vec<Firing> = Vec::new();
        rules_ns.push(per_reading(&with_rules, |r, now| {
            e.on_reading(r, now, &mut out);
            // The timer's share: one tick per second of readings time.
            if now % 1000 == 0 {
                e.on_tick(now, &mut out);
            }
            fired += out.len();
            out.clear();
        }));
        let mut e = evaluator();
        none_ns.push(per_reading(&without, |r, now| {
            e.on_reading(r, now, &mut out);
            out.clear();
        }));
        let mut bytes = 0usize;
        json_ns.push(per_reading(&with_rules, |r, _| {
            bytes += serde_json::to_string(&r.values).map_or(0, |s| s.len());
        }));
        std::hint::black_box(bytes);
    }
    let (rules, none, json) = (median(rules_ns), median(none_ns), median(json_ns));
    println!(
        "alert evaluation, 100 rules on 10 data sources, {n} readings, median of {runs} runs:"
    );
    println!("  readings of sources with rules (10 rules each): {rules:>7.1} ns CPU per reading");
    println!("  readings of sources without rules:              {none:>7.1} ns CPU per reading");
    println!("  reference, JSON encoding of the values:         {json:>7.1} ns CPU per reading");
    println!(
        "  firings: {} per run (cooldown 5 min, 100 ms between readings)",
        fired / runs
    );
    println!(
        "  target ≤ 1000 ns per reading evaluated: {}",
        if rules <= 1000.0 { "met" } else { "NOT MET" }
    );
}
