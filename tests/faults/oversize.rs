//! Scenario: an oversized message in the broker's session. While the
//! gateway is stopped, a 4 MiB QoS 1 message (16 times `max_packet_size`,
//! far over what the MQTT client accepted by default) is queued at the
//! broker between valid readings. The gateway restarts into that session:
//! the big message is a `too_large` reject, acknowledged, and everything
//! around it is delivered, loss 0 and no duplicate (a session that looped
//! on the message redelivered the readings in flight beside it hundreds of
//! times, each stored again).

use std::time::Duration;

use crate::support::mosquitto;
use testkit::faults::{mqtt_topics, Placement, Rig};

#[test]
fn an_oversized_message_in_the_brokers_session_loses_nothing_and_duplicates_nothing() {
    let _x = crate::support::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(&Placement::loopback(), dir.path(), "", &[]);
    rig.publish(500);
    // Stopped cleanly: the persistent session queues what follows.
    assert!(rig.gateway.terminate().success());
    rig.publish(1000);
    let big = vec![b'9'; 4 << 20];
    let acked = mosquitto::publish_to(
        &rig.broker.host,
        rig.broker.port,
        vec![(mqtt_topics(1)[0].clone(), big)],
        None,
    );
    assert_eq!(acked, 1);
    rig.publish(1000);
    rig.gateway.restart();
    rig.gateway.wait_ready();
    rig.publish(500);
    let t = rig.finish("oversized message in the session", Duration::from_secs(120));
    assert_eq!(t.duplicates, 0, "{t}");
    let c = dakkio_gateway::store::inspect(rig.gateway.db_path()).unwrap();
    let too_large: i64 = c
        .query_row(
            "SELECT count(*) FROM rejects WHERE reason = 'too_large'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(too_large, 1, "rejected once, not once per redelivery");
    assert_eq!(rig.log_count("mqtt broker connection lost"), 0);
}
