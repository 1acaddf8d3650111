//! `try`: one input through the current configuration, printed — the
//! readings it would produce (bucket, data source, time, values, metadata)
//! or the reject reason with a hint. Nothing is stored and no daemon is
//! needed; the decoders are the daemon's (`ingest::replay`), so what `try`
//! shows is what the gateway does. Exit 0 when it becomes readings (or is
//! skipped), 1 when it is rejected, 2 for a bad configuration or usage.

use std::io::Read;
use std::process::ExitCode;

use dakkio_gateway::config::Config;
use dakkio_gateway::ingest::replay::{self, Input, Outcome};
use dakkio_gateway::reading::{format_timestamp, now_ms, Reading};

use super::{finish, load, to_stdout, Out, TryArgs};

pub fn execute(args: TryArgs) -> ExitCode {
    let config = match load(&args.config.config, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let payload: Vec<u8> = match &args.payload {
        Some(p) if p != "-" => p.clone().into_bytes(),
        _ => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("error: cannot read the input from stdin: {e}");
                return ExitCode::FAILURE;
            }
            // A line typed or piped ends with a newline the device did not send.
            if args.port.is_some() {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
            }
            buf
        }
    };
    let input = match (&args.topic, &args.port) {
        (Some(topic), None) => Input::Mqtt {
            topic,
            payload: &payload,
        },
        (None, Some(name)) => match replay::find_port(&config, name) {
            Some(port) => Input::Serial {
                port,
                line: &payload,
            },
            None => {
                let known: Vec<String> = config
                    .serial
                    .iter()
                    .map(|p| format!("`{}` ({})", p.path, p.name))
                    .collect();
                eprintln!(
                    "error: no `[[serial]]` port has the path or name `{name}`; configured: {}",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("error: give `--topic <topic>` (MQTT) or `--port <path or name>` (serial)");
            return ExitCode::from(2);
        }
    };
    let outcome = replay::run(&config, input, now_ms());
    let rejected = matches!(outcome, Outcome::Rejected { .. });
    let code = finish(to_stdout(|out| print(out, &config, &outcome)));
    if rejected && code == ExitCode::SUCCESS {
        return ExitCode::FAILURE;
    }
    code
}

fn print(out: Out, config: &Config, outcome: &Outcome) -> anyhow::Result<()> {
    match outcome {
        Outcome::Readings(rs) => readings(out, config, rs)?,
        Outcome::Skipped(why) => {
            writeln!(out, "skipped ({why}): nothing stored, nothing rejected")?
        }
        Outcome::Rejected {
            reason,
            detail,
            readings: partial,
        } => {
            if !partial.is_empty() {
                readings(out, config, partial)?;
            }
            writeln!(out, "rejected: {reason}: {detail}")?;
            writeln!(out, "hint: {}", replay::hint(reason))?;
        }
    }
    Ok(())
}

fn readings(out: Out, config: &Config, rs: &[Reading]) -> anyhow::Result<()> {
    writeln!(out, "{} reading(s)", rs.len())?;
    for r in rs {
        let bucket = config
            .buckets
            .iter()
            .find(|b| b.id == r.bucket_id)
            .map(|b| format!(" ({})", b.name))
            .unwrap_or_default();
        writeln!(out, "bucket {}{bucket}", r.bucket_id)?;
        writeln!(out, "  data source {}", r.data_source_id)?;
        writeln!(out, "  time        {}", format_timestamp(r.timestamp_ms))?;
        writeln!(
            out,
            "  values      {}",
            serde_json::to_string_pretty(&r.values)?.replace('\n', "\n              ")
        )?;
        if !r.metadata.is_empty() {
            writeln!(
                out,
                "  metadata    {}",
                serde_json::to_string_pretty(&r.metadata)?.replace('\n', "\n              ")
            )?;
        }
    }
    Ok(())
}
