//! What the connection's history means, decided without I/O: which
//! connect/disconnect lines to log (at most one "lost" line a minute, with
//! the count of the others), when a reconnect found the broker's session
//! gone, and when the disconnects look like another client taking over the
//! client id. The poll task feeds it every ConnAck and connection error
//! with the time; tests feed it made-up times.
//!
//! Takeover: an MQTT broker allows one connection per client id and closes
//! the older one when another connects with the same id. Two programs on
//! one id therefore throw each other out as soon as each reconnects. Seen
//! from here: the broker closes the connection (no error of our own: no
//! keepalive timeout, no refused connect) shortly after accepting it, over
//! and over. [`TAKEOVER_CLOSES`] such closes within [`TAKEOVER_WINDOW`] are
//! reported once, and from then on each reconnect waits a growing delay
//! (up to [`TAKEOVER_MAX_DELAY`]) so the fight costs little while the
//! operator fixes the ids. A connection that lasts [`TAKEOVER_WINDOW`]
//! ends the episode.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most one "connection lost" line per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// A connection the broker closes within this time of accepting it is a
/// takeover suspect.
pub const SHORT_LIVED: Duration = Duration::from_secs(10);
/// Suspect closes are counted over this window.
pub const TAKEOVER_WINDOW: Duration = Duration::from_secs(60);
/// Suspect closes within the window that make a takeover fight. A broker
/// restarted that often looks the same (it too closes the connection
/// soon after accepting it); five a minute is rarer than a duplicated
/// client id, and the ERROR names both.
pub const TAKEOVER_CLOSES: usize = 5;
/// The first delay once a takeover fight is reported; it doubles.
const TAKEOVER_MIN_DELAY: Duration = Duration::from_secs(2);
pub const TAKEOVER_MAX_DELAY: Duration = Duration::from_secs(120);

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The broker closed it (end of stream, reset): what a takeover does.
    ByPeer,
    /// Anything else: a refused or failed connect, a keepalive timeout, a
    /// protocol or TLS error.
    Other,
}

/// What to say about a connection error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Log the "lost" line, with the number of losses not logged since the
    /// last one; `None`: only counted.
    pub log: Option<u64>,
    /// The connection was up (false: a connect attempt failed).
    pub was_connected: bool,
    /// Never connected yet: "waiting for the broker".
    pub never_connected: bool,
    /// A takeover fight has just been recognised: log one ERROR, with the
    /// number of suspect closes seen.
    pub takeover_detected: Option<usize>,
    /// The least delay before the next attempt (a takeover fight).
    pub min_delay: Option<Duration>,
}

/// What to say about a ConnAck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// Log the connect line (and the subscriptions that follow): the first
    /// connect, or the end of an outage whose "lost" line was logged.
    pub log: bool,
    /// After an outage (false: the first connect).
    pub restored: bool,
    /// The broker had no session for us though one was expected.
    pub session_lost: bool,
    /// How long the gateway was disconnected, when it was.
    pub away_for: Option<Duration>,
}

/// See the module doc.
#[derive(Debug)]
pub struct Watch {
    /// `clean_session = false` and a session existed (this run or, as the
    /// store records, an earlier one).
    session_expected: bool,
    persistent: bool,
    connected_at: Option<Instant>,
    away_since: Option<Instant>,
    ever_connected: bool,
    last_lost_line: Option<Instant>,
    unlogged: u64,
    outage_logged: bool,
    suspect_closes: VecDeque<Instant>,
    takeover_delay: Option<Duration>,
}

impl Watch {
    /// `persistent`: `clean_session = false`; `had_session`: an earlier run
    /// subscribed on this client id.
    pub fn new(persistent: bool, had_session: bool) -> Watch {
        Watch {
            session_expected: persistent && had_session,
            persistent,
            connected_at: None,
            away_since: None,
            ever_connected: false,
            last_lost_line: None,
            unlogged: 0,
            outage_logged: false,
            suspect_closes: VecDeque::new(),
            takeover_delay: None,
        }
    }

    pub fn handle_connack(&mut self, now: Instant, session_present: bool) -> Connected {
        let restored = self.ever_connected;
        let log = !restored || self.outage_logged;
        let session_lost = self.session_expected && !session_present;
        let away_for = self.away_since.take().map(|t| now.duration_since(t));
        self.ever_connected = true;
        self.session_expected = self.persistent;
        self.connected_at = Some(now);
        Connected {
            log,
            restored,
            session_lost,
            away_for,
        }
    }

    pub fn handle_error(&mut self, now: Instant, close: Close) -> Lost {
        let connected_at = self.connected_at.take();
        let was_connected = connected_at.is_some();
        let mut takeover_detected = None;
        if let Some(at) = connected_at {
            let lasted = now.duration_since(at);
            if lasted >= TAKEOVER_WINDOW {
                // A stable connection ends a takeover episode.
                self.suspect_closes.clear();
                self.takeover_delay = None;
            }
            if close == Close::ByPeer && lasted < SHORT_LIVED {
                self.suspect_closes.push_back(now);
                while self
                    .suspect_closes
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > TAKEOVER_WINDOW)
                {
                    self.suspect_closes.pop_front();
                }
                match self.takeover_delay {
                    // Within an episode every suspect close doubles the
                    // delay (the closes are spread out by then).
                    Some(d) => self.takeover_delay = Some((d * 2).min(TAKEOVER_MAX_DELAY)),
                    None if self.suspect_closes.len() >= TAKEOVER_CLOSES => {
                        takeover_detected = Some(self.suspect_closes.len());
                        self.takeover_delay = Some(TAKEOVER_MIN_DELAY);
                    }
                    None => {}
                }
            }
        }
        let mut log = None;
        if self.away_since.is_none() {
            // A new outage (or the first failed connect).
            self.away_since = Some(now);
            let due = self
                .last_lost_line
                .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL);
            if due {
                self.last_lost_line = Some(now);
                log = Some(std::mem::take(&mut self.unlogged));
            } else {
                self.unlogged += 1;
            }
            self.outage_logged = due;
        }
        Lost {
            log,
            was_connected,
            never_connected: !self.ever_connected,
            takeover_detected,
            min_delay: self.takeover_delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn one_outage_logs_one_lost_and_one_restored_line() {
        let t0 = Instant::now();
        let mut w = Watch::new(true, false);
        let c = w.handle_connack(t0, false);
        assert!(c.log && !c.restored && !c.session_lost, "{c:?}");
        let l = w.handle_error(at(t0, 100.0), Close::ByPeer);
        assert_eq!(l.log, Some(0));
        assert!(l.was_connected && !l.never_connected);
        // Failed attempts while away are not new outages.
        assert_eq!(w.handle_error(at(t0, 101.0), Close::Other).log, None);
        let c = w.handle_connack(at(t0, 103.0), true);
        assert!(c.log && c.restored && !c.session_lost);
        assert_eq!(c.away_for, Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_flapping_broker_logs_one_line_a_minute_with_the_count() {
        let t0 = Instant::now();
        let mut w = Watch::new(true, false);
        w.handle_connack(t0, false);
        let mut logged = Vec::new();
        let mut restored_logged = 0;
        // An outage every 2 s for 3 minutes, each connection lasting 1 s.
        for i in 0..90 {
            let t = 2.0 * i as f64 + 30.0;
            if let Some(n) = w.handle_error(at(t0, t), Close::Other).log {
                logged.push((t, n));
            }
            if w.handle_connack(at(t0, t + 1.0), true).log {
                restored_logged += 1;
            }
        }
        assert_eq!(
            logged,
            vec![(30.0, 0), (90.0, 29), (150.0, 29)],
            "one line a minute"
        );
        assert_eq!(restored_logged, 3, "a restore is logged with its loss");
    }

    #[test]
    fn a_lost_session_is_reported_only_where_one_was_expected() {
        let t0 = Instant::now();
        // First start on this client id: no session to lose.
        let mut w = Watch::new(true, false);
        assert!(!w.handle_connack(t0, false).session_lost);
        w.handle_error(at(t0, 1.0), Close::ByPeer);
        assert!(!w.handle_connack(at(t0, 2.0), true).session_lost);
        w.handle_error(at(t0, 3.0), Close::Other);
        assert!(w.handle_connack(at(t0, 4.0), false).session_lost);
        // A restart after earlier runs expects the session at once.
        let mut w = Watch::new(true, true);
        assert!(w.handle_connack(t0, false).session_lost);
        // clean_session = true never has one.
        let mut w = Watch::new(false, true);
        assert!(!w.handle_connack(t0, false).session_lost);
        w.handle_error(at(t0, 1.0), Close::ByPeer);
        assert!(!w.handle_connack(at(t0, 2.0), false).session_lost);
    }

    #[test]
    fn repeated_closes_right_after_connect_are_one_takeover_report_and_a_growing_delay() {
        let t0 = Instant::now();
        let mut w = Watch::new(true, false);
        let mut t = 0.0;
        let mut reports = Vec::new();
        let mut delays = Vec::new();
        for _ in 0..12 {
            w.handle_connack(at(t0, t), true);
            t += 1.0;
            let l = w.handle_error(at(t0, t), Close::ByPeer);
            if let Some(n) = l.takeover_detected {
                reports.push(n);
            }
            delays.push(l.min_delay);
            t += l.min_delay.map_or(0.1, |d| d.as_secs_f64());
        }
        assert_eq!(reports, vec![TAKEOVER_CLOSES], "one report");
        let secs: Vec<u64> = delays
            .iter()
            .map(|d| d.map_or(0, |d| d.as_secs()))
            .collect();
        assert_eq!(secs, vec![0, 0, 0, 0, 2, 4, 8, 16, 32, 64, 120, 120]);
        // A connection that holds ends the episode.
        w.handle_connack(at(t0, t), true);
        t += TAKEOVER_WINDOW.as_secs_f64();
        let l = w.handle_error(at(t0, t), Close::ByPeer);
        assert_eq!((l.takeover_detected, l.min_delay), (None, None));
    }

    #[test]
    fn closes_of_our_own_or_after_a_long_connection_are_no_takeover() {
        let t0 = Instant::now();
        let mut w = Watch::new(true, false);
        let mut t = 0.0;
        for _ in 0..12 {
            w.handle_connack(at(t0, t), true);
            t += 1.0;
            // A keepalive timeout or a refused connect: our own error.
            let l = w.handle_error(at(t0, t), Close::Other);
            assert_eq!((l.takeover_detected, l.min_delay), (None, None));
        }
        for _ in 0..12 {
            w.handle_connack(at(t0, t), true);
            t += SHORT_LIVED.as_secs_f64() + 1.0;
            let l = w.handle_error(at(t0, t), Close::ByPeer);
            assert_eq!((l.takeover_detected, l.min_delay), (None, None));
        }
    }

    #[test]
    fn suspect_closes_spread_over_more_than_the_window_are_no_takeover() {
        let t0 = Instant::now();
        let mut w = Watch::new(true, false);
        for i in 0..10 {
            let t = 40.0 * i as f64;
            w.handle_connack(at(t0, t), true);
            let l = w.handle_error(at(t0, t + 1.0), Close::ByPeer);
            assert_eq!(l.takeover_detected, None, "close {i}");
        }
    }
}
