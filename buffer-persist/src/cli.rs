//! The `buffer-persist` command line: `run`, `drain`, `push`, `stores`, `limits`, `flush`,
//! `retry`, `pause`, `resume`, `coalesce`, `serve`.
//!
//! Every flag can also come from an environment variable (`BUFFER_REDIS_URL`, `BUFFER_OUT`…),
//! which is how a systemd unit or a container usually configures it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use buffer_core::{Buffer, BufferConfig, FailureRecord};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Compression, Format, PersistConfig, parse_size};
// buffer-tui parses its `--interval`-style flags the same way.
pub use crate::config::parse_duration;
use crate::persister::Persister;

mod coalesce;
mod limits;
mod operate;
mod push;
mod serve;
mod store_setting;
pub use coalesce::{CoalesceAction, CoalesceArgs, CoalesceSetArgs};
pub use limits::{LimitsAction, LimitsArgs, SetArgs};
pub use operate::{RetryArgs, StoreActionArgs};
pub use push::{EXIT_BAD_LINES, EXIT_LIMITED, PushArgs};
pub use serve::ServeArgs;
pub use store_setting::{ClearArgs, ListArgs};

/// Drains buffer stores from Redis into files, exactly once.
#[derive(Debug, Parser)]
#[command(name = "buffer-persist", version, about, long_about = None)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "BUFFER_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// How logs are written (to stderr).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the persister until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Persist every store and every prepared batch now, then exit.
    Drain(DrainArgs),
    /// Push JSON Lines from stdin into a store (with --idempotent, safe to run again after a
    /// failure). Exits 2 when lines are not records, 3 when a limit of the store refused lines
    /// (both say which on stderr).
    Push(PushArgs),
    /// List stores and prepared batches with their locks.
    Stores(StoresArgs),
    /// Set, list or clear per-store limits (records, bytes, records per second).
    Limits(LimitsArgs),
    /// Prepare a store now, so the running persisters write it at their next poll.
    Flush(StoreActionArgs),
    /// Clear a failing batch's backoff, so the persisters try it at their next poll.
    Retry(RetryArgs),
    /// Stop persisting a store (it is still pushed to, and still limited) until `resume`.
    Pause(StoreActionArgs),
    /// Persist a paused store again.
    Resume(StoreActionArgs),
    /// Set, list or clear coalescing rules (a store whose writes merge into one row per entity).
    Coalesce(CoalesceArgs),
    /// Serve the HTTP ingest API (docs/http.md) until SIGINT/SIGTERM, which stops accepting,
    /// finishes the requests in flight and exits 0.
    Serve(ServeArgs),
}

/// How to reach Redis.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis URL: `redis://[user:password@]host:port[/db]`, `rediss://` for TLS,
    /// `redis+unix:///path/to/socket`, or a comma-separated list of Redis Cluster node URLs
    /// (one node of a cluster is enough: cluster mode is detected).
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "BUFFER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,
    /// Key namespace.
    #[arg(long, env = "BUFFER_NAMESPACE", default_value = "buf")]
    pub namespace: String,
    /// Timeout for each Redis reply, e.g. `5s`.
    #[arg(long, env = "BUFFER_REDIS_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub redis_timeout: Duration,
}

/// How writes wait for replicas: only on the commands that write (`run`, `drain`, `push`).
#[derive(Debug, Args)]
pub struct ReplicaArgs {
    /// Acknowledge a push, and write a batch's file, only once this many replicas of the
    /// master have it (`WAIT`): with 1, a master killed under load loses no acknowledged push
    /// and duplicates nothing. 0 waits for none. See docs/operations.md, "What
    /// --wait-replicas guarantees and costs".
    #[arg(long, env = "BUFFER_WAIT_REPLICAS", default_value_t = 0)]
    pub wait_replicas: u32,
    /// How long each write waits for `--wait-replicas` replicas before it fails as not
    /// replicated (its outcome unknown), e.g. `1s`; shorter than `--redis-timeout`.
    #[arg(long, env = "BUFFER_WAIT_REPLICAS_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub wait_replicas_timeout: Duration,
}

/// Where and how batches are written.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Where batches go: each batch goes to OUT/PATH_TEMPLATE. A local or mounted directory,
    /// or `s3://bucket/prefix` (credentials, region and endpoint from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP), or
    /// `postgres://user[:password]@host[:port]/db[?sslmode=…&schema=…]` (also `postgresql://`;
    /// the password from PGPASSWORD when the URL has none; see docs/postgres.md); other URL
    /// schemes are refused.
    #[arg(long, env = "BUFFER_OUT")]
    pub out: PathBuf,
    /// Where a batch's file goes under OUT. Placeholders: {store} (percent-encoded), {batch},
    /// {ext}, and the UTC {date} (YYYY-MM-DD), {year}, {month}, {day}, {hour} of the batch's
    /// first write; e.g. `store={store}/dt={date}/hour={hour}/{batch}.{ext}` for Hive-style
    /// partitions. Persisters sharing OUT must use the same template.
    #[arg(long, env = "BUFFER_PATH_TEMPLATE", default_value = crate::DEFAULT_PATH_TEMPLATE)]
    pub path_template: String,
    /// File format: jsonl, csv or parquet.
    #[arg(long, env = "BUFFER_FORMAT", default_value = "jsonl", value_parser = format)]
    pub format: Format,
    /// Compression: none, gzip or zstd.
    #[arg(long, env = "BUFFER_COMPRESS", default_value = "none", value_parser = compression)]
    pub compress: Compression,
    /// How many batches are written at once.
    #[arg(long, env = "BUFFER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// TTL of the locks, extended while a batch is written, e.g. `30s`.
    #[arg(long, env = "BUFFER_LOCK_TTL", default_value = "30s", value_parser = duration)]
    pub lock_ttl: Duration,
    /// CSV and Parquet: at most this many named columns (the batch's first sorted keys); a
    /// record's other keys go into one trailing column as a JSON object.
    #[arg(long, env = "BUFFER_CSV_MAX_COLUMNS", default_value_t = crate::DEFAULT_CSV_MAX_COLUMNS)]
    pub csv_max_columns: usize,
    /// Object storage only: a batch whose encoded output grows past this size is published as
    /// several complete objects (`<batch>.part-00001.<ext>`, ...), each held in memory until
    /// uploaded. Persisters sharing a prefix must use the same value.
    #[arg(long, env = "BUFFER_PART_SIZE", default_value = "32MiB", value_parser = size)]
    pub part_size: u64,
    /// PostgreSQL only: the table of a store's records, {store} standing for its name; always
    /// quoted as one identifier (at most 63 bytes).
    #[arg(long, env = "BUFFER_TABLE_TEMPLATE", default_value = crate::DEFAULT_TABLE_TEMPLATE)]
    pub table_template: String,
    /// PostgreSQL only: create a missing table from its first batch's keys (typed as in
    /// Parquet files, plus a `_rest jsonb` column).
    #[arg(long, env = "BUFFER_CREATE_TABLES")]
    pub create_tables: bool,
    /// PostgreSQL only: the ledger table, one row per batch applied (created when missing).
    #[arg(long, env = "BUFFER_LEDGER_TABLE", default_value = crate::DEFAULT_LEDGER_TABLE)]
    pub ledger_table: String,
    /// PostgreSQL only: statement_timeout of every statement, and the client's bound on each
    /// round trip (plus 5 s) and on connecting (at most 10 s unless the URL says
    /// connect_timeout), e.g. `60s`.
    #[arg(long, env = "BUFFER_STATEMENT_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub statement_timeout: Duration,
}

/// `run`'s arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    replicas: ReplicaArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Flush a store once its first record is this old, e.g. `60s`.
    #[arg(long, env = "BUFFER_MAX_AGE", default_value = "60s", value_parser = duration)]
    pub max_age: Duration,
    /// Flush a store once it holds this many bytes, e.g. `8MiB`.
    #[arg(long, env = "BUFFER_MAX_BYTES", value_parser = size)]
    pub max_bytes: Option<u64>,
    /// Flush a store once it holds this many records.
    #[arg(long, env = "BUFFER_MAX_RECORDS")]
    pub max_records: Option<u64>,
    /// Time between polls, e.g. `1s`.
    #[arg(long, env = "BUFFER_INTERVAL", default_value = "1s", value_parser = duration)]
    pub interval: Duration,
    /// Serve Prometheus metrics on this address, e.g. `127.0.0.1:9187`, `0.0.0.0:9187` or
    /// `localhost:9187` (a host name is resolved once, at start).
    #[arg(long, env = "BUFFER_METRICS_ADDR", value_parser = socket_address)]
    pub metrics_addr: Option<SocketAddr>,
}

/// `drain`'s arguments.
#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    replicas: ReplicaArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// How long to wait for batches locked by other persisters (default 2 × --lock-ttl).
    #[arg(long, env = "BUFFER_DRAIN_WAIT", value_parser = duration)]
    pub wait: Option<Duration>,
}

/// `stores`' arguments.
#[derive(Debug, Args)]
pub struct StoresArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|err| err.to_string())
}

/// `IP:port` as is, or `host:port` resolved (its first address).
fn socket_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let hint = "write IP:port or host:port, e.g. 127.0.0.1:9187 or localhost:9187";
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|err| format!("{text:?} is not an address ({err}); {hint}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address; {hint}"))
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|err| err.to_string())
}

fn format(text: &str) -> Result<Format, String> {
    text.parse().map_err(|err: crate::Error| err.to_string())
}

fn compression(text: &str) -> Result<Compression, String> {
    text.parse().map_err(|err: crate::Error| err.to_string())
}

impl RedisArgs {
    /// The buffer configuration these arguments describe, writes waiting for `replicas`
    /// when given.
    ///
    /// # Errors
    /// When `--redis` is not a Redis URL (nor a list of them): the message shows the forms
    /// taken (`redis::Client` would only say `InvalidClientConfig`).
    fn buffer_config(&self, replicas: Option<&ReplicaArgs>) -> anyhow::Result<BufferConfig> {
        check_redis_urls(&self.url)?;
        let config = BufferConfig::new(&self.url)
            .namespace(&self.namespace)
            // One setting bounds both: a server that accepts connections and never answers
            // must fail after `--redis-timeout`, not after the library's default connect
            // timeout.
            .response_timeout(self.redis_timeout)
            .connect_timeout(self.redis_timeout);
        Ok(match replicas {
            Some(replicas) => {
                config.wait_replicas(replicas.wait_replicas, replicas.wait_replicas_timeout)
            }
            None => config,
        })
    }

    /// Connects for a command that only reads or sets metadata (`stores`, `limits`).
    async fn connect(&self) -> anyhow::Result<Buffer> {
        self.connect_config(self.buffer_config(None)?).await
    }

    /// Connects for a command that writes, waiting for `replicas` as configured.
    async fn connect_writing(&self, replicas: &ReplicaArgs) -> anyhow::Result<Buffer> {
        self.connect_config(self.buffer_config(Some(replicas))?)
            .await
    }

    async fn connect_config(&self, config: BufferConfig) -> anyhow::Result<Buffer> {
        config.validate()?;
        let redacted = config.redacted_url();
        Buffer::connect(config)
            .await
            .with_context(|| format!("cannot reach Redis at {redacted}"))
    }
}

/// The forms `--redis` takes, for the message refusing one that is none of them.
const REDIS_URL_FORMS: &str = "redis://host:port[/db], rediss://host:port[/db] for TLS, \
    redis+unix:///path/to/redis.sock, with user:password@ before the host when Redis asks for \
    a login, or a comma-separated list of cluster node URLs such as \
    redis://a:7000,redis://b:7000";

/// Checks that every URL of a `--redis` list parses as a Redis URL.
///
/// # Errors
/// Naming the first that does not (its password hidden) and the accepted forms.
fn check_redis_urls(list: &str) -> anyhow::Result<()> {
    use redis::IntoConnectionInfo;
    let urls: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        bail!("--redis is empty; write {REDIS_URL_FORMS}");
    }
    for url in urls {
        if url.into_connection_info().is_err() {
            bail!(
                "--redis {}: not a Redis URL; write {REDIS_URL_FORMS}",
                buffer_core::redact_url(url)
            );
        }
    }
    Ok(())
}

impl OutputArgs {
    fn config(&self) -> PersistConfig {
        let mut config = PersistConfig::new(&self.out);
        config.format = self.format;
        config.compression = self.compress;
        config.concurrency = self.concurrency;
        config.lock_ttl = self.lock_ttl;
        config.csv_max_columns = self.csv_max_columns;
        config.path_template = self.path_template.clone();
        config.part_size = self.part_size;
        config.table_template = self.table_template.clone();
        config.create_tables = self.create_tables;
        config.ledger_table = self.ledger_table.clone();
        config.statement_timeout = self.statement_timeout;
        config
    }
}

/// Whether human logs are coloured: only when stderr is a terminal (never into a file or a
/// pipe, which would hold escape codes), and never when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Sets up logging to stderr: `RUST_LOG` filters (default `info`); colour as
/// `colour_on_stderr` says.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        // Each line carries the fields of the span it was logged in (a batch's store, id,
        // records and outcome), so a batch's lines can be selected with a JSON filter.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// An error and its causes on one line, as the binary prints it after `error: `: the
/// `{:#}` chain without the causes that repeat what is printed already.
///
/// buffer-core's errors include their source's text (`connect: Connection refused (os error
/// 111)`) and also return it as `source()`, whose own source is often the same I/O error, so
/// `{:#}` printed one refusal three times. A cause whose text the line already contains adds
/// nothing and is left out; every other cause is printed once, in order.
pub fn error_chain_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// Parses the process's command line and environment, exiting with clap's message (and code 2)
/// when they are wrong. A bad value that came from an environment variable is reported under
/// the variable's name (`BUFFER_MAX_AGE=abc`), not only under the flag the user never typed.
pub fn parse_args() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => {
            if let Some(text) = env_value_error(&err, &args, |name| std::env::var(name).ok()) {
                eprintln!("error: {text}");
                std::process::exit(2);
            }
            err.exit()
        }
    }
}

/// The message for a bad value that came from an environment variable rather than from
/// `args`, or `None` for any other error (clap's own message is right for those).
fn env_value_error(
    err: &clap::Error,
    args: &[std::ffi::OsString],
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let ContextValue::String(arg) = err.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let ContextValue::String(value) = err.get(ContextKind::InvalidValue)? else {
        return None;
    };
    let flag = arg.split_whitespace().next()?;
    let long = flag.strip_prefix("--")?;
    let typed = args.iter().any(|arg| {
        arg.to_str().is_some_and(|arg| {
            arg == flag
                || arg
                    .strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
        })
    });
    if typed {
        return None;
    }
    let variable = env_of_flag(&<Cli as clap::CommandFactory>::command(), long)?;
    if env(&variable).as_deref() != Some(value.as_str()) {
        return None;
    }
    let reason = match (
        std::error::Error::source(err),
        err.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("possible values: {}", valid.join(", "))
        }
        _ => "not a valid value".to_owned(),
    };
    Some(format!(
        "invalid value {value:?} in the environment variable {variable} (it sets {flag}): {reason}"
    ))
}

/// The environment variable of the flag `--long`, in `command` or any of its subcommands.
fn env_of_flag(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| env_of_flag(sub, long))
        })
}

/// Runs a parsed command line. Returns the process exit code.
///
/// # Errors
/// Whatever stopped the command, with its context chain.
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Drain(args) => drain(args).await,
        Command::Push(args) => push::push(args).await,
        Command::Stores(args) => stores(args).await,
        Command::Limits(args) => limits::limits(args).await,
        Command::Flush(args) => operate::store_action(operate::StoreVerb::Flush, args).await,
        Command::Retry(args) => operate::retry(args).await,
        Command::Pause(args) => operate::store_action(operate::StoreVerb::Pause, args).await,
        Command::Resume(args) => operate::store_action(operate::StoreVerb::Resume, args).await,
        Command::Coalesce(args) => coalesce::coalesce(args).await,
        Command::Serve(args) => serve::serve(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let mut config = args.output.config();
    config.max_age = args.max_age;
    config.max_bytes = args.max_bytes;
    config.max_records = args.max_records;
    config.interval = args.interval;
    config.validate()?;
    // Connect lazily: a persister started before Redis waits for it instead of exiting.
    let buffer_config = args.redis.buffer_config(Some(&args.replicas))?;
    let buffer = Buffer::connect_lazy(buffer_config)?;
    let persister = Persister::new(buffer, config);
    if let Some(addr) = args.metrics_addr {
        let (bound, _task) =
            crate::serve_metrics(addr, persister.clone(), shutdown.clone()).await?;
        tracing::info!(%bound, "serving metrics");
    }
    persister.run(shutdown).await?;
    Ok(0)
}

/// A signal that asks the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The exit code of a command this signal stopped before it was done: 128 + the
    /// signal's number, as a shell reports a process the signal killed (docs/persister.md,
    /// "Draining once").
    pub(crate) fn exit_code(self) -> i32 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM. Returns where the handler task records which
/// signal it was, before it cancels `shutdown` (empty until then; `drain` reads it for its
/// exit code).
///
/// The handlers are registered before this returns, not inside the spawned task: a SIGTERM
/// that arrives right after start-up must still be a clean shutdown, not the default action
/// that kills the process mid-batch.
pub(crate) fn spawn_signal_handler(
    shutdown: CancellationToken,
) -> std::sync::Arc<std::sync::OnceLock<StopSignal>> {
    let received = std::sync::Arc::new(std::sync::OnceLock::new());
    let record = received.clone();
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|err| tracing::warn!(error = %err, "cannot listen for SIGINT"))
        .ok();
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|err| tracing::warn!(error = %err, "cannot listen for SIGTERM"))
        .ok();
    tokio::spawn(async move {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        let signal = tokio::select! {
            () = next(&mut interrupt) => StopSignal::Interrupt,
            () = next(&mut terminate) => StopSignal::Terminate,
        };
        let _ = record.set(signal);
        tracing::info!(signal = signal.name(), "shutdown requested: finishing up");
        shutdown.cancel();
    });
    received
}

async fn drain(args: DrainArgs) -> anyhow::Result<i32> {
    let mut config = args.output.config();
    config.drain_wait = args.wait;
    // Before connecting: a bad setting (an `--out` URL, say) is the error to report, not
    // whether Redis happens to be reachable.
    config.validate()?;
    let shutdown = CancellationToken::new();
    let signal = spawn_signal_handler(shutdown.clone());
    let buffer = args.redis.connect_writing(&args.replicas).await?;
    let persister = Persister::new(buffer, config);
    let report = persister.drain_until(shutdown).await?;
    if report.interrupted {
        return Ok(drain_interrupted(&report, signal.get().copied()));
    }
    eprintln!(
        "drained {}, {}",
        crate::units::count(report.batches, "batch", "batches"),
        crate::units::count(report.records, "record", "records")
    );
    // Paused on purpose (`buffer-persist pause`): said, not an error.
    for paused in &report.paused {
        eprintln!("left in Redis: {paused} (resume it to persist it)");
    }
    if report.failures.is_empty() {
        Ok(0)
    } else {
        for failure in &report.failures {
            eprintln!("error: {failure}");
        }
        // One failure line per store or batch: the count is of those, nothing else.
        let n = report.failures.len();
        bail!(
            "{n} {} of the drain could not be persisted; {} in Redis",
            if n == 1 {
                "store or batch"
            } else {
                "stores and batches"
            },
            if n == 1 { "it stays" } else { "they stay" }
        )
    }
}

/// Says what an interrupted drain did and left, on stderr, and returns its exit code (the
/// signal's, docs/persister.md, "Draining once").
fn drain_interrupted(report: &crate::DrainReport, signal: Option<StopSignal>) -> i32 {
    let signal = signal.unwrap_or(StopSignal::Interrupt);
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    eprintln!(
        "drain stopped by {}: {} ({}) persisted; {} left in Redis, none locked by this drain: \
         the next drain or run picks {} up at once",
        signal.name(),
        plural(
            usize::try_from(report.batches).unwrap_or(usize::MAX),
            "batch",
            "batches"
        ),
        plural(
            usize::try_from(report.records).unwrap_or(usize::MAX),
            "record",
            "records"
        ),
        plural(report.left.len(), "store or batch", "stores and batches"),
        if report.left.len() == 1 { "it" } else { "them" },
    );
    for left in &report.left {
        eprintln!("  left: {left}");
    }
    for failure in &report.failures {
        eprintln!("error: {failure}");
    }
    signal.exit_code()
}

async fn stores(args: StoresArgs) -> anyhow::Result<i32> {
    let buffer = args.redis.connect().await?;
    let report = crate::store_report::StoresReport::gather(&buffer).await?;
    let now = report.now;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report.json())?)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<32} {:>10} {:>12} {:>9}  LOCK",
        "STORE", "RECORDS", "BYTES", "AGE"
    )?;
    for (s, lock) in &report.stores {
        writeln!(
            out,
            "{:<32} {:>10} {:>12} {:>9}  {}",
            shorten(s.store.as_str(), 32),
            s.records,
            s.bytes,
            short_duration(now.saturating_sub(s.first_write_ms)),
            lock_text(lock.as_ref())
        )?;
        if let Some(record) = report.failure(&s.store, None) {
            writeln!(out, "{}", failure_text(record, now))?;
        }
        if let Some(since) = report.paused_since(&s.store) {
            writeln!(out, "{}", paused_text(&s.store, since, now))?;
        }
    }
    if report.stores.is_empty() {
        writeln!(out, "(no live stores)")?;
    }
    // A paused store without live records is not in the table, but still paused.
    for (store, since) in &report.paused {
        if !report.stores.iter().any(|(s, _)| &s.store == store) {
            writeln!(
                out,
                "{:<32} (no live records){}",
                shorten(store.as_str(), 32),
                paused_text(store, *since, now)
            )?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<32} {:<30} {:>10} {:>12} {:>9}  LOCK",
        "PREPARED BATCH OF", "BATCH", "RECORDS", "BYTES", "AGE"
    )?;
    for (p, lock, info) in &report.prepared {
        writeln!(
            out,
            "{:<32} {:<30} {:>10} {:>12} {:>9}  {}",
            shorten(p.store.as_str(), 32),
            p.id.to_string(),
            info.as_ref().map_or("-".into(), |i| i.records.to_string()),
            info.as_ref().map_or("-".into(), |i| i.bytes.to_string()),
            short_duration(now.saturating_sub(p.id.created_ms())),
            lock_text(lock.as_ref())
        )?;
        if let Some(record) = report.failure(&p.store, Some(&p.id)) {
            writeln!(out, "{}", failure_text(record, now))?;
        }
    }
    if report.prepared.is_empty() {
        writeln!(out, "(no prepared batches)")?;
    }
    Ok(0)
}

/// The line under a paused store: for how long, and how to undo it.
fn paused_text(store: &buffer_core::StoreName, since: u64, now: u64) -> String {
    format!(
        "    paused for {}: persisters leave it until `buffer-persist resume {}`",
        short_duration(now.saturating_sub(since)),
        store.as_str()
    )
}

/// The line under a failing store or batch: attempts, when it is retried, the last error.
fn failure_text(record: &FailureRecord, now: u64) -> String {
    let retry = match record.next_retry_ms.saturating_sub(now) {
        0 => "retry due".to_owned(),
        ms => format!("next retry in {}", short_duration(ms)),
    };
    let attempts = match record.attempts {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    };
    format!(
        "  ↳ FAILING: {attempts}, {retry}, last {} ago: {}",
        short_duration(now.saturating_sub(record.last_ms)),
        shorten(&record.last_error, 160)
    )
}

fn lock_text(lock: Option<&buffer_core::LockInfo>) -> String {
    match lock {
        None => "-".into(),
        Some(lock) => match lock.ttl {
            Some(ttl) => format!(
                "{} ({})",
                lock.holder,
                short_duration(buffer_core::millis(ttl))
            ),
            None => format!("{} (no expiry)", lock.holder),
        },
    }
}

/// A duration in ms, short: `0.4s`, `4.2s`, `42s`, `3m05s`, `2h03m`, `3d04h`. The one
/// spelling of ages and TTLs for operators: `stores` prints it and the dashboard uses it.
pub fn short_duration(ms: u64) -> String {
    let secs = ms / 1000;
    match ms {
        0..=9_999 => format!("{}.{}s", ms / 1000, (ms % 1000) / 100),
        10_000..=59_999 => format!("{secs}s"),
        60_000..=3_599_999 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600_000..=86_399_999 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_error_chain_prints_each_cause_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        // What `{:#}` printed: the context, then buffer-core's error (which includes its
        // source's text), then the source, then the source's source.
        #[derive(Debug, thiserror::Error)]
        #[error("Connection refused (os error 111)")]
        struct Client(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("connect: {0}")]
        struct Core(#[source] Client);
        let err = anyhow::Error::new(Core(Client(io))).context("cannot reach Redis at redis://h");
        assert_eq!(
            format!("{err:#}").matches("Connection refused").count(),
            3,
            "the repetition this removes"
        );
        assert_eq!(
            error_chain_text(&err),
            "cannot reach Redis at redis://h: connect: Connection refused (os error 111)"
        );
        // Causes that add something are all kept, in order.
        let err = anyhow::anyhow!("disk full")
            .context("writing batch 7")
            .context("store \"s\"");
        assert_eq!(
            error_chain_text(&err),
            "store \"s\": writing batch 7: disk full"
        );
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(short_duration(1500), "1.5s");
        assert_eq!(short_duration(42_000), "42s");
        assert_eq!(short_duration(75_000), "1m15s");
        assert_eq!(short_duration(7_260_000), "2h01m");
        assert_eq!(short_duration(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn bad_flags_are_refused_with_the_value() {
        let err = Cli::try_parse_from(["buffer-persist", "run", "--out", "x", "--max-age", "soon"])
            .unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
        let err = Cli::try_parse_from([
            "buffer-persist",
            "run",
            "--out",
            "x",
            "--max-bytes",
            "8 parsecs",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("parsecs"), "{err}");
        let ok = Cli::try_parse_from([
            "buffer-persist",
            "run",
            "--out",
            "x",
            "--max-bytes",
            "8MiB",
            "--compress",
            "zstd",
        ])
        .unwrap();
        let Command::Run(run) = ok.command else {
            panic!()
        };
        assert_eq!(run.max_bytes, Some(8 * 1024 * 1024));
    }
}
