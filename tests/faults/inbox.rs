//! Scenario 12: SIGKILL between dakkio's 2xx and the delivery mark of a
//! batch forwarded straight from the inbox (issue 15). Fresh readings wait
//! in the inbox — the journal file and memory — and the uplink sends them
//! from there, long before they are moved into the database. dakkio
//! accepts one such batch and its answer never arrives (the stand-in's
//! `AcceptThenStall`: the state a kill right after the 2xx leaves, the
//! mark not yet written); the gateway is killed there and restarted. The
//! journal is replayed at start, the batch goes out again with the same
//! `readingId`s — counted as duplicates — and nothing is lost.

use std::time::Duration;

use testkit::standin::Script;

use crate::support::gateway::Gateway;
use crate::support::mosquitto::Mosquitto;
use crate::support::EVENT_TIMEOUT;
use testkit::faults::tally::Tally;
use testkit::faults::{self, MqttProducer, Upstream, B1};

/// Rows of the `readings` table, read from the file.
fn table_rows(g: &Gateway) -> i64 {
    let c = rusqlite::Connection::open_with_flags(
        g.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .unwrap();
    c.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn sigkill_after_dakkio_accepted_a_batch_sent_from_the_inbox_duplicates_and_loses_nothing() {
    let _exclusive = crate::support::exclusive();
    let broker = Mosquitto::start();
    let up = Upstream::start(&[B1]);
    let dir = tempfile::tempdir().unwrap();
    let config = faults::gateway_config(
        &up.url(),
        &[B1],
        "",
        &faults::mqtt_input(broker.port, "gw-faults-inbox", &[B1]),
    );
    let mut g = Gateway::start(dir.path(), &config);
    faults::wait_ready_and_subscribed(&g);
    // One reading first: its data source gets its key in a transaction,
    // and it is delivered; what follows waits in the inbox.
    faults::publish_numbered(
        "127.0.0.1",
        broker.port,
        &faults::mqtt_topics(1),
        0..1,
        0,
        None,
    );
    assert!(
        up.rt
            .block_on(up.standin.wait_for_accepted(1, EVENT_TIMEOUT)),
        "the first reading never arrived: {}",
        g.log_text()
    );
    // The next batch reaches dakkio; its answer never comes back.
    up.standin.script_for(B1, Script::AcceptThenStall);
    let producer = MqttProducer::start_from(broker.port, faults::mqtt_topics(1), Some(200), 100, 1);
    let arrived = up
        .rt
        .block_on(up.standin.wait_for_accepted(2, EVENT_TIMEOUT));
    assert!(arrived, "no batch reached dakkio: {}", g.log_text());
    let sent = up.accepted_for(B1) - 1;
    // Sent from the inbox: none of it is in the table yet.
    let in_table = table_rows(&g);
    assert!(
        in_table == 1,
        "{sent} points went upstream but {in_table} rows are in the table: \
         the batch did not come from the inbox"
    );
    g.kill();
    g.restart();
    g.wait_ready();
    let mut accepted = producer.stop();
    accepted.insert(0);
    let last = *accepted.last().expect("something was published");
    let t = faults::settle(
        "12 sigkill between a 2xx and the mark, from the inbox",
        &g,
        &up,
        &accepted,
        &[last],
        Duration::from_secs(60),
    );
    eprintln!("{}\n{t}", Tally::header());
    assert!(g.terminate().success(), "{}", g.log_text());
    assert_eq!(faults::integrity(&g.db_path()), "ok");
    t.assert_no_loss();
    // The stalled batch went out again after the restart: its points are
    // duplicates, with the same readingId (the journal kept their seqs).
    assert!(
        t.duplicates >= sent as u64,
        "{} duplicates, expected the {sent} points of the unanswered batch again: {t}",
        t.duplicates
    );
    let points = up.standin.accepted_points(B1);
    let first_ids: Vec<_> = points[1..=sent].iter().map(|p| p.reading_id()).collect();
    let again = points[sent + 1..]
        .iter()
        .filter(|p| first_ids.contains(&p.reading_id()))
        .count();
    assert!(
        again >= sent,
        "the re-sent batch must keep its readingIds ({again} of {sent} found again)"
    );
}
