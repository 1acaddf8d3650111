//! `keys hash`: the SHA-256 of an admin key for `api.admin_key_sha256`.
//! The key comes from stdin so it is in no shell history or process list.

use std::io::Read;
use std::process::ExitCode;

use dakkio_gateway::config;

/// Surrounding whitespace (a trailing newline) is ignored.
pub fn hash() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().take(4096).read_to_string(&mut input) {
        eprintln!("error: cannot read the key from stdin: {e}");
        return ExitCode::from(2);
    }
    let key = input.trim();
    if key.is_empty() {
        eprintln!("error: no key on stdin; e.g. `printf %s \"$KEY\" | dakkio-gateway keys hash`");
        return ExitCode::from(2);
    }
    if !key.starts_with("dakkio_a_") {
        eprintln!(
            "warning: this is not an admin key (`dakkio_a_…`); `api.admin_key_sha256` expects one"
        );
    }
    let hex: String = config::key_sha256(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    super::finish(super::to_stdout(|out| Ok(writeln!(out, "{hex}")?)))
}
