//! A real Modbus slave for the tests: pymodbus's server (written and
//! maintained by others, so the gateway's framing, CRC and exception
//! handling meet an independent implementation), driven over its stdin.
//! RTU on a socat pty ([`crate::pty::PtyPair`]) or TCP on loopback.
//!
//! pymodbus is a test dependency installed by `scripts/test.sh` (pinned);
//! when it is missing, [`ModbusSlave`] panics with that hint instead of
//! letting a test wait for answers that never come.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/modbus_slave.py");

pub struct ModbusSlave {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Panic with a clear message when python3 or pymodbus is missing.
pub fn require_pymodbus() {
    let ok = Command::new("python3")
        .args(["-c", "import pymodbus, serial"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the Modbus tests need python3 with pymodbus and pyserial: \
         `python3 -m pip install 'pymodbus[serial]==3.11.4'` (scripts/test.sh does it)"
    );
}

impl ModbusSlave {
    /// An RTU slave on the serial device `path` (the host end of a pty pair).
    pub fn rtu(path: &Path, spec: &serde_json::Value, dir: &Path) -> ModbusSlave {
        Self::start(&format!("rtu:{}", path.display()), spec, dir)
    }

    /// A TCP slave on `127.0.0.1:port`.
    pub fn tcp(port: u16, spec: &serde_json::Value, dir: &Path) -> ModbusSlave {
        Self::start(&format!("tcp:{port}"), spec, dir)
    }

    fn start(target: &str, spec: &serde_json::Value, dir: &Path) -> ModbusSlave {
        require_pymodbus();
        let spec_path = dir.join(format!("modbus-spec-{}.json", std::process::id()));
        std::fs::write(&spec_path, spec.to_string()).expect("write the slave's spec");
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg(target)
            .arg(&spec_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut s = ModbusSlave {
            child,
            stdin,
            stdout,
        };
        s.expect("ready");
        s
    }

    fn expect(&mut self, want: &str) {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the slave's output");
        assert_eq!(line.trim(), want, "the Modbus slave said {line:?}");
    }

    fn command(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to the slave");
        self.stdin.flush().ok();
        self.expect("ok");
    }

    /// The unit stops answering (as a device whose power was cut).
    pub fn mute(&mut self, unit: u8) {
        self.command(&format!("mute {unit}"));
    }

    pub fn unmute(&mut self, unit: u8) {
        self.command(&format!("unmute {unit}"));
    }

    /// Write `values` from `address` of `table` (`hr`, `ir`, `co`, `di`).
    pub fn set(&mut self, unit: u8, table: &str, address: u16, values: &[u16]) {
        let v: Vec<String> = values.iter().map(u16::to_string).collect();
        self.command(&format!("set {unit} {table} {address} {}", v.join(" ")));
    }

    /// Stop the slave (and wait for it).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for ModbusSlave {
    fn drop(&mut self) {
        self.kill();
    }
}
