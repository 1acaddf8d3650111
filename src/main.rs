//! The `dakkio-gateway` command: parses the command line, starts telemetry,
//! hands over to the library and maps the outcome to an exit code:
//! 0 clean stop, 1 runtime failure, 2 bad configuration or usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use dakkio_gateway::config::{self, units, BucketKeyState, Config};
use dakkio_gateway::reading::{format_timestamp, now_ms};
use dakkio_gateway::store::{self, Reader, StoreStats};
use dakkio_gateway::{app, telemetry};

#[derive(Parser)]
#[command(
    name = "dakkio-gateway",
    version,
    about = "Edge gateway: keeps every sensor reading in a local queue and forwards it to dakkio"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// The configuration file.
    #[arg(long, short, env = "DAKKIO_GATEWAY_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
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
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the annotated example configuration.
    Example,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the SHA-256 (hex) of a key read from stdin, for `api.admin_key_sha256`:
    /// `printf %s "$KEY" | dakkio-gateway keys hash`.
    Hash,
}

#[derive(Subcommand)]
enum QueueCommand {
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
enum DeadLetterCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, data_dir } => run(&config.config, data_dir),
        Command::Check { config } => check(&config.config),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::EXAMPLE);
            ExitCode::SUCCESS
        }
        Command::Queue(QueueCommand::Stats {
            config,
            data_dir,
            json,
        }) => with_config(&config.config, data_dir, |c| queue_stats(c, json)),
        Command::DeadLetters(cmd) => dead_letters(cmd),
        Command::Keys(KeysCommand::Hash) => keys_hash(),
    }
}

/// `keys hash`: the key comes from stdin so it is in no shell history or
/// process list; surrounding whitespace (a trailing newline) is ignored.
fn keys_hash() -> ExitCode {
    use std::io::Read;
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
    println!("{hex}");
    ExitCode::SUCCESS
}

/// Load the config or print every problem and exit 2.
fn load(path: &Path, data_dir: Option<PathBuf>) -> Result<Config, ExitCode> {
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

fn with_config(
    path: &Path,
    data_dir: Option<PathBuf>,
    f: impl FnOnce(&Config) -> anyhow::Result<()>,
) -> ExitCode {
    let config = match load(path, data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match f(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("gateway")
        .enable_all()
        .build()
}

fn run(path: &Path, data_dir: Option<PathBuf>) -> ExitCode {
    let options = app::RunOptions {
        data_dir_override: data_dir.clone(),
        reload: true,
    };
    let config = match load(path, data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(&config.log.level);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        "starting dakkio-gateway"
    );
    let rt = match runtime() {
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

fn check(path: &Path) -> ExitCode {
    let config = match load(path, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("{}: ok", path.display());
    println!(
        "gateway   id `{}`, data in `{}`",
        config.gateway.id,
        config.gateway.data_dir.display()
    );
    let s = &config.store;
    println!(
        "store     max {} ({} when full), synchronous {}, groups of {} or {}, history kept {}",
        units::format_size(s.max_size),
        match s.on_full {
            config::OnFull::DropOldest => "drop_oldest",
            config::OnFull::Reject => "reject",
        },
        match s.synchronous {
            config::Synchronous::Full => "full",
            config::Synchronous::Normal => "normal",
        },
        s.commit_max_readings,
        units::format_duration(s.commit_max_delay),
        units::format_duration(s.retention),
    );
    if config.buckets.is_empty() {
        println!("buckets   none");
    }
    for b in &config.buckets {
        let key = match &b.key {
            BucketKeyState::Ready(_) => format!("write key from {}", b.key_source),
            BucketKeyState::Missing(why) => format!("NO KEY YET: {why}"),
        };
        println!("bucket    `{}` {} — {key}", b.name, b.id);
    }
    let u = &config.uplink;
    println!(
        "uplink    {}, a batch at {} queued (or after {}), up to {} per request{}",
        u.url,
        u.batch_size,
        units::format_duration(u.max_batch_age),
        u.max_request_points,
        u.max_calls_per_month
            .map(|n| format!(", paced to {n} calls a month"))
            .unwrap_or_default()
    );
    let a = &config.api;
    if a.enabled {
        println!(
            "api       {}://{}, admin key {}",
            if a.tls.is_some() { "https" } else { "http" },
            a.listen,
            if a.admin_key.is_some() {
                "set"
            } else {
                "NOT SET (key management answers 401)"
            }
        );
    } else {
        println!("api       disabled");
    }
    match &config.mqtt {
        Some(m) => println!(
            "mqtt      {}:{}{}, {} route(s): {}",
            m.host,
            m.port,
            if m.tls.is_some() { " (TLS)" } else { "" },
            m.routes.len(),
            m.routes
                .iter()
                .map(|r| format!("`{}`", r.topic.filter()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => println!("mqtt      disabled"),
    }
    for p in &config.serial {
        println!("serial    `{}` {} at {} baud", p.name, p.path, p.baud_rate);
    }
    if config.serial.is_empty() {
        println!("serial    none");
    }
    for w in &config.warnings {
        println!("warning   {w}");
    }
    ExitCode::SUCCESS
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

fn age(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ts) => {
            let secs = ((now_ms() - ts).max(0) / 1000) as u64;
            units::format_duration(std::time::Duration::from_secs(secs))
        }
    }
}

fn queue_stats(config: &Config, json: bool) -> anyhow::Result<()> {
    let reader = open_reader(config)?;
    let stats: StoreStats = reader.stats_blocking()?;
    // The uplink's persisted counters (calls per month) and state (pacing
    // delay per bucket, dakkio's last `X-RateLimit-Remaining`).
    let uplink_calls = reader.counters_blocking("uplink:")?;
    let uplink_state = reader.state_blocking("uplink:")?;
    if json {
        let mut v = serde_json::to_value(&stats)?;
        v["uplink"] = serde_json::json!({
            "max_calls_per_month": config.uplink.max_calls_per_month,
            "counters": uplink_calls,
            "state": uplink_state,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>10} {:>10} {:>12} {:>8} {:>10}  dropped reasons",
        "bucket", "queued", "oldest", "delivered", "dead", "dropped"
    );
    let name = |id: &str| {
        config
            .bucket(id)
            .map_or_else(|| format!("{id} (not configured)"), |b| b.name.clone())
    };
    for b in &stats.buckets {
        let reasons: Vec<String> = b
            .dropped_by_reason
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        println!(
            "{:<24} {:>10} {:>10} {:>12} {:>8} {:>10}  {}",
            name(&b.bucket_id),
            b.queued,
            age(b.oldest_queued_ms),
            b.delivered,
            b.dead_lettered,
            b.dropped,
            reasons.join(" ")
        );
    }
    for b in &config.buckets {
        if stats.bucket(&b.id).is_none() {
            println!(
                "{:<24} {:>10} {:>10} {:>12} {:>8} {:>10}",
                b.name, 0, "-", 0, 0, 0
            );
        }
    }
    let rejects: Vec<String> = stats
        .rejected_by_reason
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    println!(
        "rejects   {} kept; by reason: {}",
        stats.rejects_kept,
        if rejects.is_empty() {
            "none".into()
        } else {
            rejects.join(" ")
        }
    );
    let month = dakkio_gateway::uplink::budget::month_of(now_ms());
    let used = uplink_calls
        .get(&dakkio_gateway::uplink::budget::counter_name(month))
        .copied()
        .unwrap_or(0);
    let budget = match config.uplink.max_calls_per_month {
        Some(limit) => format!(
            "{used} of {limit} calls this month ({} left)",
            (limit as i64 - used).max(0)
        ),
        None => format!("{used} calls this month counted (no `uplink.max_calls_per_month`)"),
    };
    let pacing: Vec<String> = uplink_state
        .iter()
        .filter_map(|(k, v)| {
            let b = k.strip_prefix("uplink:")?.strip_suffix(":pacing_ms")?;
            (v != "0").then(|| format!("{b} every {v} ms"))
        })
        .collect();
    println!(
        "uplink    {budget}; pacing: {}; dakkio quota remaining: {}",
        if pacing.is_empty() {
            "off".into()
        } else {
            pacing.join(", ")
        },
        uplink_state
            .get("uplink:ratelimit_remaining")
            .map_or("unknown", String::as_str)
    );

    print_serial_ports(config, &reader)?;
    println!(
        "database  {} in use of {} max; file {}, WAL {}",
        units::format_size(stats.used_bytes),
        units::format_size(config.store.max_size),
        units::format_size(stats.file_bytes),
        units::format_size(stats.wal_bytes)
    );
    Ok(())
}

/// The "serial ports" block of `queue stats`: per port, from the counters
/// and state the serial tasks persist (`serial:<path>:…`), plus configured
/// ports that have not run yet.
fn print_serial_ports(config: &Config, reader: &Reader) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Port {
        ok: i64,
        rejected: BTreeMap<String, i64>,
        connected: Option<String>,
        last_line_ms: Option<i64>,
    }
    let mut ports: BTreeMap<String, Port> = config
        .serial
        .iter()
        .map(|s| (s.path.clone(), Port::default()))
        .collect();
    // Paths may contain `:` (by-path names do), so split on the known suffixes.
    for (key, n) in reader.counters_blocking("serial:")? {
        let key = &key["serial:".len()..];
        if let Some(path) = key.strip_suffix(":lines_ok") {
            ports.entry(path.to_owned()).or_default().ok += n;
        } else if let Some((path, reason)) = key.rsplit_once(":rejected:") {
            *ports
                .entry(path.to_owned())
                .or_default()
                .rejected
                .entry(reason.to_owned())
                .or_default() += n;
        }
    }
    for (key, v) in reader.state_blocking("serial:")? {
        let key = &key["serial:".len()..];
        if let Some(path) = key.strip_suffix(":connected") {
            ports.entry(path.to_owned()).or_default().connected = Some(v);
        } else if let Some(path) = key.strip_suffix(":last_line_ms") {
            ports.entry(path.to_owned()).or_default().last_line_ms = v.parse().ok();
        }
    }
    if ports.is_empty() {
        return Ok(());
    }
    println!("serial ports");
    for (path, p) in &ports {
        let name = match config.serial.iter().find(|s| &s.path == path) {
            Some(s) if s.name != *path => format!("{path} ({})", s.name),
            Some(_) => path.clone(),
            None => format!("{path} (not configured)"),
        };
        let total: i64 = p.rejected.values().sum();
        let reasons: Vec<String> = p.rejected.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!(
            "  {name}: connected {}, lines ok {}, rejected {total}{}, last line {}",
            p.connected.as_deref().unwrap_or("-"),
            p.ok,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(" "))
            },
            match p.last_line_ms {
                Some(ms) => format!("{} ago", age(Some(ms))),
                None => "never".into(),
            }
        );
    }
    Ok(())
}

fn dead_letters(cmd: DeadLetterCommand) -> ExitCode {
    match cmd {
        DeadLetterCommand::List {
            config,
            data_dir,
            limit,
        } => with_config(&config.config, data_dir, |c| {
            let rows = open_reader(c)?.dead_letters_blocking(limit)?;
            if rows.is_empty() {
                println!("no dead letters");
            }
            for d in rows {
                println!(
                    "{:>6}  bucket {}  source {}  at {}  HTTP {}: {}{}\n        values {}",
                    d.id,
                    d.bucket_id,
                    d.data_source_id,
                    format_timestamp(d.timestamp_ms),
                    d.status,
                    d.message,
                    d.details.map(|x| format!(" {x}")).unwrap_or_default(),
                    d.values_json
                );
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
            with_config(&config.config, data_dir, |c| {
                let n = with_store(c, |h| async move {
                    h.retry_dead_letters(if all { None } else { Some(ids) })
                        .await
                })?;
                println!("{n} dead letter(s) put back into the queue");
                Ok(())
            })
        }
        DeadLetterCommand::Purge { config, data_dir } => {
            with_config(&config.config, data_dir, |c| {
                let n = with_store(c, |h| async move { h.purge_dead_letters().await })?;
                println!("{n} dead letter(s) deleted");
                Ok(())
            })
        }
    }
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
