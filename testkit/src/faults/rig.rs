//! [`Rig`]: a QoS 1 publisher → a real mosquitto → the real gateway binary
//! → the dakkio stand-in, in one value that remembers every id the broker
//! acknowledged; on loopback or with the gateway in a network namespace
//! ([`Placement`]). Built from the same parts as the other scenarios
//! ([`Upstream`], [`gateway_config`], [`publish_numbered`], [`Tally`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::host::NetNs;
use super::{
    gateway_config, mqtt_input_at, mqtt_topics, publish_numbered, Tally, Upstream, B1, FIELD,
};
use crate::gateway::Gateway;
use crate::mosquitto::Mosquitto;
use crate::EVENT_TIMEOUT;

/// Where the broker and the stand-in listen and where the gateway runs.
pub struct Placement<'a> {
    /// Address the broker and the stand-in listen on.
    pub host: String,
    /// The gateway's namespace, if not the host's.
    pub netns: Option<&'a NetNs>,
}

impl Placement<'_> {
    pub fn loopback() -> Placement<'static> {
        Placement {
            host: "127.0.0.1".into(),
            netns: None,
        }
    }
}

impl<'a> Placement<'a> {
    pub fn across(ns: &'a NetNs) -> Placement<'a> {
        Placement {
            host: ns.host_ip.clone(),
            netns: Some(ns),
        }
    }
}

/// Publisher → mosquitto → gateway → stand-in (bucket [`B1`]), and the ids
/// the broker acknowledged. Fields drop in order: the gateway first.
pub struct Rig {
    pub gateway: Gateway,
    pub broker: Mosquitto,
    pub up: Upstream,
    /// Ids the broker acknowledged (PUBACK): the gateway owes all of them.
    pub accepted: BTreeSet<u64>,
    next: u64,
    /// Bytes of padding per message (to fill a disk faster).
    pub pad: usize,
}

impl Rig {
    /// Start everything; `dir` holds the gateway's config and data
    /// directory; `uplink` goes into `[uplink]` (e.g. `batch_size = 10`).
    pub fn start(at: &Placement, dir: &Path, uplink: &str, env: &[(&str, &str)]) -> Rig {
        Self::start_with(at, dir, uplink, "", env)
    }

    /// [`Rig::start`] with more configuration appended (whole sections,
    /// e.g. `[store]\ninbox_readings = 1000\n`).
    pub fn start_with(
        at: &Placement,
        dir: &Path,
        uplink: &str,
        sections: &str,
        env: &[(&str, &str)],
    ) -> Rig {
        let up = Upstream::start_on(&at.host, &[B1]);
        let broker = Mosquitto::start_on(&at.host);
        let client = format!("gw-faults-{}", up.standin.addr().port());
        // Plain http is refused for a non-loopback upstream unless allowed
        // (the namespace placement); slower backoff than the default rig.
        let mut extra = String::from("allow_insecure_http = true\n");
        for (k, v) in [("backoff_min", "\"100ms\""), ("backoff_max", "\"1s\"")] {
            if !uplink.contains(k) {
                extra.push_str(&format!("{k} = {v}\n"));
            }
        }
        extra.push_str(uplink);
        let config = gateway_config(
            &up.url(),
            &[B1],
            &extra,
            &format!(
                "{}\n{sections}",
                mqtt_input_at(&at.host, broker.port, &client, &[B1])
            ),
        );
        let dir = dir.to_owned();
        let start = move || {
            let g = Gateway::start_with_env(&dir, &config, env);
            g.wait_ready();
            g
        };
        let gateway = match at.netns {
            Some(ns) => ns.run(start),
            None => start(),
        };
        let rig = Rig {
            gateway,
            broker,
            up,
            accepted: BTreeSet::new(),
            next: 0,
            pad: 0,
        };
        rig.expect_log("mqtt subscriptions active");
        rig
    }

    /// Publish `count` new ids with QoS 1; all must be acknowledged by the
    /// broker (the publisher panics if it loses the broker).
    pub fn publish(&mut self, count: u64) {
        let ids = self.next..self.next + count;
        let (host, port) = (&self.broker.host, self.broker.port);
        publish_numbered(host, port, &mqtt_topics(1), ids.clone(), self.pad, None);
        self.accepted.extend(ids);
        self.next += count;
    }

    /// Await a log line (panics with the log when it does not come).
    pub fn expect_log(&self, needle: &str) -> String {
        self.expect_log_within(needle, EVENT_TIMEOUT)
    }

    pub fn expect_log_within(&self, needle: &str, timeout: Duration) -> String {
        self.gateway
            .wait_for_log(needle, timeout)
            .unwrap_or_else(|| {
                panic!(
                    "no `{needle}` within {timeout:?}; gateway log:\n{}",
                    self.gateway.log_text()
                )
            })
    }

    /// How many log lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.gateway
            .log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Await until every accepted id has reached the stand-in, or
    /// `timeout` passes.
    pub fn wait_delivered(&self, timeout: Duration) -> bool {
        self.up.wait_delivered(&self.accepted, timeout)
    }

    /// The scenario's end: everything delivered (or accounted for by the
    /// ledger), printed as a tally row, loss 0.
    pub fn finish(&self, scenario: &str, timeout: Duration) -> Tally {
        let all = self.wait_delivered(timeout);
        let t = Tally::reckon(
            scenario,
            &self.accepted,
            FIELD,
            &self.up.points(),
            &self.gateway.stats().buckets,
        );
        if !all {
            eprintln!("gateway log:\n{}", self.gateway.log_text());
        }
        t.assert_no_loss();
        // In these scenarios the fault ends: everything must arrive, not
        // merely stay accounted for in the queue.
        assert!(all, "{scenario}: not everything was delivered: {t}");
        t
    }
}
