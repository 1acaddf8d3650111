//! `[alerts]`: edge alert rules — where their notifications may go (the
//! allow-list), the optional MQTT topic every firing is also published on,
//! and the bounds of the notification queue.
//!
//! Invariant: with no `allow` entry no rule can be created (every webhook
//! URL is refused), so an API key cannot make the gateway send requests
//! into the LAN unless the operator named where.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Ctx;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    allow: Option<Vec<Spanned<String>>>,
    mqtt_topic: Option<Spanned<String>>,
    max_rules: Option<Spanned<i64>>,
    max_pending: Option<Spanned<i64>>,
    webhook_timeout: Option<Spanned<String>>,
    retry_max_delay: Option<Spanned<String>>,
    give_up_after: Option<Spanned<String>>,
}

/// One `alerts.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// An address range (`192.168.1.0/24`; a bare address is a /32 or
    /// /128), any port unless one is given (`192.168.1.20:8123`).
    Net {
        addr: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
    /// A host name as written in the URL (`siren.local`), any port unless
    /// one is given (`siren.local:8080`). Case-insensitive; never matched
    /// against the addresses it resolves to.
    Host { name: String, port: Option<u16> },
}

impl AllowEntry {
    /// Parse `192.168.1.0/24`, `10.0.0.5`, `10.0.0.5:8080`, `[fd00::1]:80`,
    /// `fd00::/8`, `siren.local`, `siren.local:8080`.
    pub fn parse(s: &str) -> Result<AllowEntry, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty".into());
        }
        if s.contains("://") {
            return Err("give a host, an address or a network, not a URL".into());
        }
        if let Some((net, bits)) = s.split_once('/') {
            let addr: IpAddr = net
                .parse()
                .map_err(|_| format!("`{net}` is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = bits
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`/{bits}` is not a prefix length (0 to {max})"))?;
            return Ok(AllowEntry::Net {
                addr,
                prefix,
                port: None,
            });
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(AllowEntry::Net {
                addr,
                prefix: if addr.is_ipv4() { 32 } else { 128 },
                port: None,
            });
        }
        if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            return Ok(AllowEntry::Net {
                addr: sa.ip(),
                prefix: if sa.is_ipv4() { 32 } else { 128 },
                port: Some(sa.port()),
            });
        }
        let (name, port) = match s.rsplit_once(':') {
            Some((n, p)) => (
                n,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("`{p}` is not a port number"))?,
                ),
            ),
            None => (s, None),
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !ok {
            return Err(format!("`{name}` is not a host name"));
        }
        Ok(AllowEntry::Host {
            name: name.to_ascii_lowercase(),
            port,
        })
    }

    /// Does the entry allow a URL with this host (as written) and port?
    /// `ip` is the host when it is an address literal.
    pub fn allows(&self, host: &str, ip: Option<IpAddr>, port: u16) -> bool {
        match self {
            AllowEntry::Net {
                addr,
                prefix,
                port: p,
            } => p.is_none_or(|p| p == port) && ip.is_some_and(|ip| in_net(ip, *addr, *prefix)),
            AllowEntry::Host { name, port: p } => {
                p.is_none_or(|p| p == port) && ip.is_none() && host.eq_ignore_ascii_case(name)
            }
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = match (ip, net) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        _ => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    /// Where webhook notifications may go; empty: nowhere (no rule can be
    /// created).
    pub allow: Vec<AllowEntry>,
    /// Every firing is also published here (QoS 1) on the `[mqtt]` broker.
    pub mqtt_topic: Option<String>,
    /// Rules the gateway keeps at most.
    pub max_rules: usize,
    /// Notifications waiting for delivery at most; beyond, the oldest is
    /// given up (reason `queue_full`).
    pub max_pending: usize,
    /// One webhook request, answer included.
    pub webhook_timeout: Duration,
    /// Retry delays double from one second up to this.
    pub retry_max_delay: Duration,
    /// A notification not delivered by then is given up (reason `expired`).
    pub give_up_after: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            allow: Vec::new(),
            mqtt_topic: None,
            max_rules: 1000,
            max_pending: 10_000,
            webhook_timeout: Duration::from_secs(10),
            retry_max_delay: Duration::from_secs(300),
            give_up_after: Duration::from_secs(86_400),
        }
    }
}

impl AlertsConfig {
    /// Is a webhook to this host (as written in the URL) and port allowed?
    pub fn allows(&self, host: &str, ip: Option<IpAddr>, port: u16) -> bool {
        self.allow.iter().any(|e| e.allows(host, ip, port))
    }
}

impl RawAlerts {
    pub(crate) fn validate(self, ctx: &mut Ctx, has_mqtt: bool) -> AlertsConfig {
        let d = AlertsConfig::default();
        let mut allow = Vec::new();
        for (i, v) in self.allow.iter().flatten().enumerate() {
            match AllowEntry::parse(v.get_ref()) {
                Ok(e) => allow.push(e),
                Err(why) => ctx.error(
                    Some(v.span()),
                    &format!("alerts.allow[{i}]"),
                    format!(
                        "`alerts.allow` entries must be a network, an address or a host with \
                         an optional port, e.g. `192.168.1.0/24`, `siren.local:8080`; got `{}`: \
                         {why}",
                        v.get_ref()
                    ),
                ),
            }
        }
        let mqtt_topic = match self.mqtt_topic {
            Some(v) => {
                let t = v.get_ref().trim();
                if t.is_empty() || t.contains(['+', '#', '\0']) || t.len() > 1024 {
                    ctx.error(
                        Some(v.span()),
                        "alerts.mqtt_topic",
                        format!(
                            "`alerts.mqtt_topic` must be a topic without wildcards, e.g. \
                             `site/alerts`; got `{}`",
                            v.get_ref()
                        ),
                    );
                } else if !has_mqtt {
                    ctx.error(
                        Some(v.span()),
                        "alerts.mqtt_topic",
                        "`alerts.mqtt_topic` publishes on the `[mqtt]` broker; add an `[mqtt]` \
                         table with its `host`, or remove `alerts.mqtt_topic`",
                    );
                }
                Some(t.to_owned())
            }
            None => None,
        };
        AlertsConfig {
            allow,
            mqtt_topic,
            max_rules: ctx.int_in(
                "alerts.max_rules",
                &self.max_rules,
                0..=100_000,
                d.max_rules as i64,
            ) as usize,
            max_pending: ctx.int_in(
                "alerts.max_pending",
                &self.max_pending,
                1..=1_000_000,
                d.max_pending as i64,
            ) as usize,
            webhook_timeout: ctx.duration(
                "alerts.webhook_timeout",
                &self.webhook_timeout,
                d.webhook_timeout,
                "10s",
            ),
            retry_max_delay: ctx.duration(
                "alerts.retry_max_delay",
                &self.retry_max_delay,
                d.retry_max_delay,
                "5m",
            ),
            give_up_after: ctx.duration(
                "alerts.give_up_after",
                &self.give_up_after,
                d.give_up_after,
                "24h",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn entries_parse_and_match() {
        let net = AllowEntry::parse("192.168.1.0/24").unwrap();
        assert!(net.allows("192.168.1.7", ip("192.168.1.7"), 80));
        assert!(!net.allows("192.168.2.7", ip("192.168.2.7"), 80));
        assert!(
            !net.allows("siren.local", None, 80),
            "names never match networks"
        );
        let one = AllowEntry::parse("10.0.0.5:8080").unwrap();
        assert!(one.allows("10.0.0.5", ip("10.0.0.5"), 8080));
        assert!(!one.allows("10.0.0.5", ip("10.0.0.5"), 8081));
        let host = AllowEntry::parse("Siren.local:8080").unwrap();
        assert!(host.allows("siren.local", None, 8080));
        assert!(!host.allows("siren.local", None, 80));
        assert!(!host.allows("evil.siren.local", None, 8080));
        let any_port = AllowEntry::parse("hooks.example.com").unwrap();
        assert!(any_port.allows("HOOKS.example.com", None, 443));
        let v6 = AllowEntry::parse("fd00::/8").unwrap();
        assert!(v6.allows("fd12::1", ip("fd12::1"), 80));
        let lo = AllowEntry::parse("127.0.0.1").unwrap();
        assert!(lo.allows("::ffff:127.0.0.1", ip("::ffff:127.0.0.1"), 1));
        for bad in ["", "http://x", "10.0.0.0/33", "a b", "host:99999", "x/8"] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad}");
        }
    }
}
