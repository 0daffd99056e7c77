//! `buffer-persist serve`: the HTTP ingest API (docs/http.md) on `--listen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use buffer_core::Buffer;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{RedisArgs, ReplicaArgs, duration, size, socket_address};
use crate::serve::ServeConfig;
use crate::serve::auth::Tokens;

/// `serve`'s arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    replicas: ReplicaArgs,
    /// Address to listen on, e.g. `127.0.0.1:8080` or `0.0.0.0:8080` (a non-loopback address
    /// needs --token-file or --allow-unauthenticated).
    #[arg(long, env = "BUFFER_LISTEN", default_value = "127.0.0.1:8080", value_parser = socket_address)]
    pub listen: SocketAddr,
    /// Bearer tokens, one per line: `TOKEN` (every store) or `TOKEN prefix* name ...` (the
    /// stores whose names start with `prefix`, and `name`). Without it every request is let in.
    #[arg(long, env = "BUFFER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without a token file.
    #[arg(long, env = "BUFFER_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// The largest request body, as sent and once decompressed, e.g. `16MiB`.
    #[arg(long, env = "BUFFER_MAX_BODY", default_value = "16MiB", value_parser = size)]
    pub max_body: u64,
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection is kept.
    #[arg(long, env = "BUFFER_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body (408 after it).
    #[arg(long, env = "BUFFER_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub body_timeout: Duration,
    /// Requests served at once; more wait for a turn.
    #[arg(long, env = "BUFFER_MAX_REQUESTS", default_value_t = 256)]
    pub max_requests: usize,
    /// `Retry-After` of a 503 (Redis unreachable) and of a 429 by a records or bytes limit
    /// (a 429 by the rate limit says 1 s, when its window opens).
    #[arg(long, env = "BUFFER_RETRY_AFTER", default_value = "5s", value_parser = duration)]
    pub retry_after: Duration,
}

/// Runs `serve` until SIGINT or SIGTERM; exits 0 once the requests in flight are answered.
///
/// # Errors
/// A bad setting (a non-loopback `--listen` without tokens, an unreadable token file), or an
/// address that cannot be bound.
pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let tokens = match &args.token_file {
        Some(path) => Some(Tokens::read(path)?),
        None => None,
    };
    if tokens.is_none() && !args.listen.ip().is_loopback() && !args.allow_unauthenticated {
        bail!(
            "--listen {} is reachable from other hosts and there is no --token-file: give one \
             (one bearer token per line), listen on 127.0.0.1, or pass \
             --allow-unauthenticated to serve anyone who can connect",
            args.listen
        );
    }
    if args.max_requests == 0 {
        bail!("--max-requests must be at least 1");
    }
    let shutdown = CancellationToken::new();
    super::spawn_signal_handler(shutdown.clone());
    // Connect lazily: the server starts before Redis does, and `/readyz` says when it answers.
    let buffer = Buffer::connect_lazy(args.redis.buffer_config(Some(&args.replicas))?)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(
        %bound,
        authenticated = tokens.is_some(),
        "serving the HTTP API"
    );
    let config = ServeConfig {
        max_body: args.max_body,
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        max_requests: args.max_requests,
        retry_after: args.retry_after,
        tokens,
    };
    crate::serve::serve(listener, buffer, config, shutdown).await;
    tracing::info!("stopped: every request in flight was answered");
    Ok(0)
}
