//! `dead-letters`: list the points dakkio refused with its answer, put
//! them back into the queue once the cause is fixed, or purge them (the
//! ledger keeps counting them as dead-lettered).

use std::process::ExitCode;

use dakkio_gateway::reading::format_timestamp;

use super::{open_reader, with_config, with_store, DeadLetterCommand};

/// `dead-letters list | retry | purge`.
pub fn execute(cmd: DeadLetterCommand) -> ExitCode {
    match cmd {
        DeadLetterCommand::List {
            config,
            data_dir,
            limit,
        } => with_config(&config.config, data_dir, |out, c| {
            let rows = open_reader(c)?.dead_letters_blocking(limit)?;
            if rows.is_empty() {
                writeln!(out, "no dead letters")?;
            }
            for d in rows {
                writeln!(
                    out,
                    "{:>6}  bucket {}  source {}  at {}  HTTP {}: {}{}\n        values {}",
                    d.id,
                    d.bucket_id,
                    d.data_source_id,
                    format_timestamp(d.timestamp_ms),
                    d.status,
                    d.message,
                    d.details.map(|x| format!(" {x}")).unwrap_or_default(),
                    d.values_json
                )?;
            }
            Ok(())
        }),
        DeadLetterCommand::Retry {
            config,
            data_dir,
            all,
            ids,
        } => {
            if !all && ids.is_empty() {
                eprintln!("error: name dead letter ids (see `dead-letters list`) or give --all");
                return ExitCode::from(2);
            }
            with_config(&config.config, data_dir, |out, c| {
                let n = with_store(c, |h| async move {
                    h.retry_dead_letters(if all { None } else { Some(ids) })
                        .await
                })?;
                writeln!(out, "{n} dead letter(s) put back into the queue")?;
                Ok(())
            })
        }
        DeadLetterCommand::Purge { config, data_dir } => {
            with_config(&config.config, data_dir, |out, c| {
                let n = with_store(c, |h| async move { h.purge_dead_letters().await })?;
                writeln!(out, "{n} dead letter(s) deleted")?;
                Ok(())
            })
        }
    }
}
