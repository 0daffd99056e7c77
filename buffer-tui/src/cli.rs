//! The `buffer-tui` command line: the dashboard on a Redis, or the self-contained demo.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use buffer_core::{Buffer, BufferConfig};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppConfig};
use crate::dashboard::Dashboard;
use crate::demo::{DemoOptions, run_demo};

/// The live dashboard of buffer: every store, its size, age, lock and prepared batches, push
/// and persist rates, and the persister's events.
#[derive(Debug, Parser)]
#[command(name = "buffer-tui", version, about, long_about = None)]
pub struct Cli {
    /// Redis URL (`redis://[user:password@]host:port/db`, `rediss://` for TLS), or a
    /// comma-separated list of Redis Cluster node URLs (one node of a cluster is enough:
    /// cluster mode is detected). Ignored with `--demo`.
    #[arg(
        long = "redis",
        env = "BUFFER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,
    /// Key namespace.
    #[arg(long, env = "BUFFER_NAMESPACE", default_value = "buf")]
    pub namespace: String,
    /// Time between refreshes, e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub interval: Duration,
    /// The persister's `--max-age`, to show when each store is flushed on age.
    #[arg(long, env = "BUFFER_MAX_AGE", value_parser = duration)]
    pub max_age: Option<Duration>,
    /// Run the demo: a private redis-server, a load generator, a persister and the dashboard.
    #[arg(long)]
    pub demo: bool,
    /// With `--demo`: run it on a private Redis Cluster of three masters instead of one
    /// server, to watch the stores spread over its nodes.
    #[arg(long, requires = "demo")]
    pub cluster: bool,
    /// Where the demo's persister writes its files.
    #[arg(long, default_value = "demo-out", requires = "demo")]
    pub out: PathBuf,
    /// Show no action (flush, retry, pause, limits): only watch. Also the default when the
    /// Redis user lacks write rights.
    #[arg(long)]
    pub read_only: bool,
    /// Write logs (the persister's, in the demo) to this file; the screen belongs to the
    /// dashboard.
    #[arg(long, env = "BUFFER_TUI_LOG")]
    pub log_file: Option<PathBuf>,
}

fn duration(text: &str) -> Result<Duration, String> {
    let duration = buffer_persist::cli::parse_duration(text).map_err(|err| err.to_string())?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

/// Runs what the command line asks for, until `q` or SIGINT/SIGTERM/SIGHUP.
///
/// # Errors
/// A bad URL or namespace, an unusable terminal, a demo that cannot start.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    if let Some(path) = &cli.log_file {
        init_logging(path)?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    if cli.demo {
        let options = DemoOptions {
            out: cli.out.clone(),
            interval: cli.interval,
            cluster: cli.cluster,
        };
        let summary = run_demo(options, shutdown).await.context("demo")?;
        println!("{summary}");
        return Ok(());
    }
    let config = BufferConfig::new(&cli.url)
        .namespace(&cli.namespace)
        .holder_id("buffer-tui")
        .response_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(3));
    let address = config.redacted_url();
    // Lazy: the dashboard starts (and says so) while Redis is away.
    let buffer = Buffer::connect_lazy(config).context("connecting to Redis")?;
    let app = App::new(AppConfig {
        address,
        namespace: cli.namespace.clone(),
        max_age: cli.max_age,
        demo_out: None,
        now_ms: buffer.now_ms(),
        read_only: cli.read_only,
        no_color: crate::terminal::no_color(),
    });
    Dashboard::new(buffer, app, cli.interval)
        .run(shutdown)
        .await
        .context("dashboard")?;
    Ok(())
}

fn init_logging(path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(())
}

/// Cancels `shutdown` on SIGINT, SIGTERM or SIGHUP, so the terminal is restored and the demo's
/// redis-server stopped when the dashboard is killed politely.
async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "buffer-tui",
            "--redis",
            "redis://h:1",
            "--interval",
            "250ms",
            "--max-age",
            "1m",
        ])
        .unwrap();
        assert_eq!(cli.url, "redis://h:1");
        assert_eq!(cli.interval, Duration::from_millis(250));
        assert_eq!(cli.max_age, Some(Duration::from_secs(60)));
        assert!(!cli.demo);
        let demo = Cli::try_parse_from(["buffer-tui", "--demo", "--out", "x"]).unwrap();
        assert!(demo.demo);
        assert_eq!(demo.out, PathBuf::from("x"));
        assert!(
            Cli::try_parse_from(["buffer-tui", "--out", "x"]).is_err(),
            "--out needs --demo"
        );
        assert!(Cli::try_parse_from(["buffer-tui", "--interval", "0s"]).is_err());
        let cluster = Cli::try_parse_from(["buffer-tui", "--demo", "--cluster"]).unwrap();
        assert!(cluster.demo && cluster.cluster);
        assert!(!demo.cluster);
        let alone = Cli::try_parse_from(["buffer-tui", "--cluster"]).unwrap_err();
        assert!(
            alone.to_string().contains("--demo"),
            "--cluster alone names what it needs: {alone}"
        );
    }
}
