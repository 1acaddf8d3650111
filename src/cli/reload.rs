//! `reload --pid PID`: the unit's `ExecReload`. Sends SIGHUP to the daemon
//! and returns only once it has applied (or refused) the configuration, so
//! that `systemctl reload` means "done" on systemd 252, which has no
//! `Type=notify-reload`. The daemon writes each reload's outcome to
//! `$RUNTIME_DIRECTORY/reload` after applying it (`app::reload`); this
//! command waits for a new outcome of that process. A refused
//! configuration exits 1 (`systemctl reload` fails); its reason is in the
//! daemon's log, not repeated here.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dakkio_gateway::app::reload::outcome_file;

/// How often the outcome file is looked at.
const POLL: Duration = Duration::from_millis(20);

pub fn reload(pid: i32, timeout: Duration) -> ExitCode {
    let Some(path) = outcome_file() else {
        eprintln!(
            "error: `reload` is the systemd unit's `ExecReload` (it needs \
             `$RUNTIME_DIRECTORY`); run `systemctl reload dakkio-gateway`, or send \
             SIGHUP yourself: `kill -HUP {pid}`"
        );
        return ExitCode::from(2);
    };
    let read = || std::fs::read_to_string(&path).ok();
    let before = read();
    // SAFETY: kill has no memory preconditions; a bad pid is an error.
    if pid <= 0 || unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        eprintln!(
            "error: cannot signal the gateway (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    while started.elapsed() < timeout {
        let now = read();
        if now != before {
            if let Some(outcome) = now.as_deref().and_then(|t| parse(t, pid)) {
                return match outcome {
                    "applied" | "unchanged" => ExitCode::SUCCESS,
                    _ => {
                        eprintln!(
                            "configuration refused; the gateway keeps running on the previous \
                             one (the reason: `journalctl -u dakkio-gateway -n 20`)"
                        );
                        ExitCode::FAILURE
                    }
                };
            }
        }
        std::thread::sleep(POLL);
    }
    eprintln!(
        "error: the gateway (pid {pid}) did not report the reload within {}s",
        timeout.as_secs()
    );
    ExitCode::FAILURE
}

/// The outcome in `<pid> <count> <outcome>`, if written by `pid`.
fn parse(text: &str, pid: i32) -> Option<&str> {
    let mut f = text.split_whitespace();
    let by: i32 = f.next()?.parse().ok()?;
    f.next()?;
    (by == pid).then_some(f.next()?)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn only_the_outcome_of_the_signalled_process_counts() {
        assert_eq!(parse("42 3 applied\n", 42), Some("applied"));
        assert_eq!(parse("41 3 applied\n", 42), None);
        assert_eq!(parse("42 3", 42), None);
        assert_eq!(parse("", 42), None);
    }
}
