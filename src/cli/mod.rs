//! The commands of the `dakkio-gateway` binary other than `run`: one file
//! per command, each writing its output through [`Out`] so that a closed
//! pipe (`queue stats | head -1`) ends it cleanly instead of panicking.
//! Exit codes: 0 done, 1 runtime failure, 2 bad configuration or usage.

mod check;
mod dead_letters;
mod keys;
mod queue;
mod rejects;
mod reload;
mod try_input;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use dakkio_gateway::config::{self, units, Config};
use dakkio_gateway::reading::now_ms;
use dakkio_gateway::store::{self, Reader};

#[derive(Parser)]
#[command(
    name = "dakkio-gateway",
    version,
    about = "Edge gateway: keeps every sensor reading in a local queue and forwards it to dakkio"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long, short, env = "DAKKIO_GATEWAY_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway (the daemon).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Use this data directory instead of `gateway.data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a configuration file and print a summary.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The annotated example configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect the queue (works while the daemon runs).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Key tools for the local API.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Points dakkio refused: list them, put them back in the queue, or purge them.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
    /// Inputs that could not become readings: list, show, replay after a config fix, purge.
    #[command(subcommand)]
    Rejects(RejectsCommand),
    /// Feed one MQTT message or serial line through the configuration and print what it becomes.
    Try(TryArgs),
    /// The systemd unit's `ExecReload`: signal the daemon and wait until it
    /// has applied (exit 0) or refused (exit 1) its configuration.
    Reload {
        /// The daemon's pid (`$MAINPID`).
        #[arg(long)]
        pid: i32,
        /// Give up after this long.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    units::parse_duration(s)
}

pub use rejects::RejectsCommand;

#[derive(Args)]
pub struct TryArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The MQTT topic the payload arrives on.
    #[arg(long, conflicts_with = "port")]
    pub topic: Option<String>,
    /// The serial port (its `path` or `name`) the line arrives on.
    #[arg(long)]
    pub port: Option<String>,
    /// The payload or line; `-` or none: read it from stdin.
    pub payload: Option<String>,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the annotated example configuration.
    Example,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print the SHA-256 (hex) of a key read from stdin, for `api.admin_key_sha256`:
    /// `printf %s "$KEY" | dakkio-gateway keys hash`.
    Hash,
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Per bucket: queued, oldest queued, delivered, dead letters, dropped; rejects; size.
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters with dakkio's answer.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put dead letters back into the queue (after fixing the cause in dakkio).
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Dead letter ids as shown by `list`.
        ids: Vec<i64>,
    },
    /// Delete every dead letter (the ledger keeps counting them).
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Run a command other than `run`.
pub fn execute(command: Command) -> ExitCode {
    match command {
        Command::Run { .. } => unreachable!("`run` is the daemon, started by main"),
        Command::Check { config } => match load(&config.config, None) {
            Ok(c) => finish(to_stdout(|out| check::check(out, &config.config, &c))),
            Err(code) => code,
        },
        Command::Config(ConfigCommand::Example) => finish(to_stdout(|out| {
            Ok(out.write_all(config::EXAMPLE.as_bytes())?)
        })),
        Command::Queue(QueueCommand::Stats {
            config,
            data_dir,
            json,
        }) => with_config(&config.config, data_dir, |out, c| {
            queue::stats(out, c, json)
        }),
        Command::DeadLetters(cmd) => dead_letters::execute(cmd),
        Command::Rejects(cmd) => rejects::execute(cmd),
        Command::Try(args) => try_input::execute(args),
        Command::Keys(KeysCommand::Hash) => keys::hash(),
        Command::Reload { pid, timeout } => reload::reload(pid, timeout),
    }
}

/// Where a command writes: stdout, buffered.
pub type Out<'a> = &'a mut dyn Write;

/// Run `f` with a buffered stdout and flush it; errors (a closed pipe
/// among them) are returned, never a panic as from `println!`.
fn to_stdout(f: impl FnOnce(Out) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    f(&mut out)?;
    out.flush()?;
    Ok(())
}

/// The exit code of a command: a reader that went away (`| head -1`) is
/// a clean end, like a pipeline's other tools treat it.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Load the config or print every problem and exit 2.
pub fn load(path: &Path, data_dir: Option<PathBuf>) -> Result<Config, ExitCode> {
    match config::load(path) {
        Ok(mut c) => {
            if let Some(d) = data_dir {
                c.gateway.data_dir = d;
            }
            Ok(c)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Load the configuration (exit 2 if it is invalid), then run `f` writing
/// to stdout.
fn with_config(
    path: &Path,
    data_dir: Option<PathBuf>,
    f: impl FnOnce(Out, &Config) -> anyhow::Result<()>,
) -> ExitCode {
    let config = match load(path, data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    finish(to_stdout(|out| f(out, &config)))
}

/// The runtime of the daemon (and of commands that open the store).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("gateway")
        .enable_all()
        .build()
}

fn open_reader(config: &Config) -> anyhow::Result<Reader> {
    let path = config.gateway.data_dir.join(store::FILE_NAME);
    if !path.exists() {
        anyhow::bail!(
            "no database at `{}`; has the gateway run with this `gateway.data_dir`?",
            path.display()
        );
    }
    Ok(Reader::open_existing(&path)?)
}

/// Open the store for a short write from the command line (SQLite's locking
/// lets this run beside a running daemon).
fn with_store<T, F, Fut>(config: &Config, f: F) -> anyhow::Result<T>
where
    F: FnOnce(store::StoreHandle) -> Fut,
    Fut: std::future::Future<Output = Result<T, store::StoreError>>,
{
    if !config.gateway.data_dir.join(store::FILE_NAME).exists() {
        open_reader(config)?;
    }
    let rt = runtime()?;
    rt.block_on(async {
        let (h, writer) = store::open(&config.store, &config.gateway.data_dir)?;
        let r = f(h).await;
        tokio::task::spawn_blocking(move || writer.join()).await??;
        Ok(r?)
    })
}

/// How long ago a Unix-ms time was, `-` for none.
fn age(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ts) => {
            let secs = ((now_ms() - ts).max(0) / 1000) as u64;
            units::format_duration(std::time::Duration::from_secs(secs))
        }
    }
}
