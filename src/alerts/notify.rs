//! Delivering queued notifications: a webhook POST or an MQTT publish per
//! row of `alert_deliveries`, one at a time, on a task of its own (ingest
//! never waits for it). What to do after an attempt is decided in one
//! function, [`decide`].
//!
//! - 2xx (or a PUBACK) → delivered (the row is deleted, counted);
//! - a URL the allow-list no longer names → given up `not_allowed`;
//! - 3xx → given up `redirect` (redirects are not followed: they could
//!   lead outside the allow-list); 4xx other than 408/429 → given up
//!   `refused` (the receiver will not take it);
//! - anything else (5xx, 408, 429, timeouts, connection errors) → tried
//!   again after a delay that doubles from one second up to
//!   `alerts.retry_max_delay` (backon), until `alerts.give_up_after` has
//!   passed since the firing → given up `expired`.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tracing::{debug, info, warn};

use crate::config::{AlertsConfig, Config};
use crate::store::{AlertOp, DeliveryRow};

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered,
    /// An HTTP answer that is not 2xx.
    Status(u16),
    /// No answer (connection, timeout, broker); the text says why.
    Failed(String),
    NotAllowed,
}

/// The store op after an attempt at `now` (Unix ms).
pub fn decide(d: &DeliveryRow, attempt: &Attempt, cfg: &AlertsConfig, now: i64) -> AlertOp {
    let give_up = |reason: &str| AlertOp::GiveUp {
        id: d.id,
        reason: reason.to_owned(),
    };
    let error = match attempt {
        Attempt::Delivered => return AlertOp::Delivered(d.id),
        Attempt::NotAllowed => return give_up("not_allowed"),
        Attempt::Status(s) if (300..400).contains(s) => return give_up("redirect"),
        Attempt::Status(s) if (400..500).contains(s) && *s != 408 && *s != 429 => {
            return give_up("refused")
        }
        Attempt::Status(s) => format!("answered {s}"),
        Attempt::Failed(why) => why.clone(),
    };
    if now - d.created_at >= cfg.give_up_after.as_millis() as i64 {
        return give_up("expired");
    }
    let delay = crate::retry::exponential(Duration::from_secs(1), cfg.retry_max_delay)
        .build()
        .nth(d.attempts.clamp(0, 64) as usize)
        .unwrap_or(cfg.retry_max_delay);
    AlertOp::Retry {
        id: d.id,
        next_at: now + delay.as_millis() as i64,
        error,
    }
}

/// Sends notifications: one HTTP client (no redirects) and, when
/// `alerts.mqtt_topic` is set, the broker settings of `[mqtt]`.
pub struct Sender {
    http: reqwest::Client,
    config: Arc<Config>,
}

impl Sender {
    pub fn new(config: Arc<Config>) -> Result<Sender, super::AlertsError> {
        crate::uplink::client::install_crypto_provider();
        let tls = crate::tls::client_config(crate::tls::Trust::Webpki, None)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.alerts.webhook_timeout)
            .connect_timeout(config.alerts.webhook_timeout)
            .user_agent(concat!("dakkio-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender { http, config })
    }

    pub async fn attempt(&self, d: &DeliveryRow) -> Attempt {
        match d.target.as_str() {
            "webhook" => self.post(d).await,
            "mqtt" => self.publish(d).await,
            other => Attempt::Failed(format!("unknown target `{other}`")),
        }
    }

    async fn post(&self, d: &DeliveryRow) -> Attempt {
        if super::check_url(&d.destination, &self.config.alerts).is_err() {
            return Attempt::NotAllowed;
        }
        let r = self
            .http
            .post(&d.destination)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(d.payload.clone())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => Attempt::Delivered,
            Ok(resp) => Attempt::Status(resp.status().as_u16()),
            Err(e) => Attempt::Failed(error_chain(&e)),
        }
    }

    /// A connection of its own per notification (firings are rare): connect,
    /// publish at QoS 1, wait for the PUBACK, disconnect.
    async fn publish(&self, d: &DeliveryRow) -> Attempt {
        let Some(mqtt) = &self.config.mqtt else {
            return Attempt::Failed("no `[mqtt]` broker is configured".into());
        };
        let client_id = format!(
            "{}-alerts-{:08x}",
            mqtt.client_id_or(&self.config.gateway.id),
            rand::random::<u32>()
        );
        let mut o = rumqttc::MqttOptions::new(client_id, mqtt.host.clone(), mqtt.port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(64 * 1024, d.payload.len() + 64 * 1024);
        if let Some(user) = &mqtt.username {
            let pw = mqtt.password.as_ref().map_or("", |p| p.expose());
            o.set_credentials(user.clone(), pw.to_owned());
        }
        if let Some(tls) = &mqtt.tls {
            let trust = tls
                .ca_file
                .as_deref()
                .map_or(crate::tls::Trust::Webpki, crate::tls::Trust::Only);
            let auth = tls
                .client_auth
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            match crate::tls::client_config(trust, auth) {
                Ok(c) => {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(Arc::new(c)),
                    ));
                }
                Err(e) => return Attempt::Failed(format!("`mqtt.tls`: {e}")),
            }
        }
        let (client, mut events) = rumqttc::AsyncClient::new(o, 10);
        let publish = client.publish(
            d.destination.clone(),
            rumqttc::QoS::AtLeastOnce,
            false,
            d.payload.clone().into_bytes(),
        );
        if let Err(e) = publish.await {
            return Attempt::Failed(format!("mqtt: {e}"));
        }
        let acked = async {
            use rumqttc::{Event, Incoming, Outgoing};
            let mut pkid = None;
            loop {
                match events.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(id))) => pkid = Some(id),
                    Ok(Event::Incoming(Incoming::PubAck(ack))) if Some(ack.pkid) == pkid => {
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("mqtt: {e}")),
                }
            }
        };
        let out = match tokio::time::timeout(self.config.alerts.webhook_timeout, acked).await {
            Ok(Ok(())) => Attempt::Delivered,
            Ok(Err(e)) => Attempt::Failed(e),
            Err(_) => Attempt::Failed("mqtt: no PUBACK in time".into()),
        };
        let _ = client.try_disconnect();
        out
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Log an attempt's outcome (never the payload or the URL's query).
pub fn log_outcome(d: &DeliveryRow, op: &AlertOp) {
    match op {
        AlertOp::Delivered(_) => {
            info!(rule = %d.rule_id, target = %d.target, attempts = d.attempts + 1, "alert notification delivered")
        }
        AlertOp::Retry { error, next_at, .. } => warn!(
            rule = %d.rule_id,
            target = %d.target,
            attempt = d.attempts + 1,
            error = %error,
            retry_in_ms = next_at - crate::reading::now_ms(),
            "alert notification failed; will retry"
        ),
        AlertOp::GiveUp { reason, .. } => warn!(
            rule = %d.rule_id,
            target = %d.target,
            reason = %reason,
            "alert notification given up"
        ),
        other => debug!(?other, "alert notification"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(attempts: i64) -> DeliveryRow {
        DeliveryRow {
            id: 7,
            rule_id: "r".into(),
            target: "webhook".into(),
            destination: "http://10.0.0.1/".into(),
            payload: "{}".into(),
            created_at: 0,
            attempts,
            next_at: 0,
            status: "pending".into(),
            reason: None,
        }
    }

    #[test]
    fn retry_is_decided_in_one_place() {
        let cfg = AlertsConfig {
            retry_max_delay: Duration::from_secs(8),
            give_up_after: Duration::from_secs(3600),
            ..AlertsConfig::default()
        };
        assert_eq!(
            decide(&row(0), &Attempt::Delivered, &cfg, 5),
            AlertOp::Delivered(7)
        );
        let next = |attempts, now| match decide(&row(attempts), &Attempt::Status(503), &cfg, now) {
            AlertOp::Retry { next_at, .. } => next_at - now,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            [next(0, 0), next(1, 0), next(2, 0), next(3, 0), next(9, 0)],
            [1000, 2000, 4000, 8000, 8000]
        );
        for (a, reason) in [
            (Attempt::Status(404), "refused"),
            (Attempt::Status(301), "redirect"),
            (Attempt::NotAllowed, "not_allowed"),
        ] {
            assert_eq!(
                decide(&row(0), &a, &cfg, 0),
                AlertOp::GiveUp {
                    id: 7,
                    reason: reason.into()
                }
            );
        }
        assert!(matches!(
            decide(&row(0), &Attempt::Status(429), &cfg, 0),
            AlertOp::Retry { .. }
        ));
        assert_eq!(
            decide(&row(3), &Attempt::Failed("refused".into()), &cfg, 3_600_000),
            AlertOp::GiveUp {
                id: 7,
                reason: "expired".into()
            }
        );
    }
}
