//! The `dakkio-gateway` command: parses the command line, sets up the
//! allocator (`memory::tune_allocator`), starts telemetry, runs the
//! gateway (`app::run_with`) until SIGTERM or SIGINT
//! and maps the outcome to an exit code: 0 clean stop, 1 runtime failure,
//! 2 bad configuration or usage. The other commands are in `cli/`.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use dakkio_gateway::{app, memory, telemetry};

fn main() -> ExitCode {
    match cli::Cli::parse().command {
        cli::Command::Run { config, data_dir } => run(&config.config, data_dir),
        other => cli::execute(other),
    }
}

fn run(path: &Path, data_dir: Option<PathBuf>) -> ExitCode {
    // Before any thread starts: each would get an arena of its own.
    memory::tune_allocator();
    let options = app::RunOptions {
        data_dir_override: data_dir.clone(),
        reload: true,
    };
    let config = match cli::load(path, data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(&config.log.level);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        "starting dakkio-gateway"
    );
    let rt = match cli::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
        let r = app::run_with(config, shutdown, options).await;
        signals.abort();
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what systemd sends) and SIGINT stop the gateway.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL only");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "stop requested");
    shutdown.cancel();
}
