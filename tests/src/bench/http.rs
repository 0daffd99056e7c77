//! The HTTP ingest figure: records/s pushed through `buffer-persist serve` (release build, a
//! child process) by concurrent keep-alive clients sending 100-record NDJSON bodies, against
//! `push_many` of the same records in this process, in the same run on the same server.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use buffer_tests::{RedisServer, free_port};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::figures::{Aggregate, Figure, Run, Side, Target, Unit, progress, side_order};
use super::tools::{self, records};

/// Concurrent clients on each side: HTTP connections, or tasks sharing one `Buffer`.
const CLIENTS: usize = 50;

/// The store both sides push into.
const STORE: &str = "bench";

/// A `buffer-persist serve` child, killed on drop.
struct ServeProcess {
    child: Child,
    port: u16,
}

impl ServeProcess {
    fn start(persist: &Path, redis_url: &str) -> Result<Self> {
        let port = free_port();
        let child = Command::new(persist)
            .args(["serve", "--redis", redis_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {} serve", persist.display()))?;
        let serve = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "buffer-persist serve did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(serve)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection that POSTs bodies and reads the replies.
struct Client {
    stream: BufReader<TcpStream>,
    reply: Vec<u8>,
}

impl Client {
    async fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            reply: Vec::new(),
        })
    }

    /// POSTs `request` (head and body, prepared once) and returns the reply's status; the
    /// reply's body is read in full so the connection can carry the next request.
    async fn post(&mut self, request: &[u8]) -> Result<u16> {
        self.stream.get_mut().write_all(request).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .get(9..12)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection mid-reply");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().context("a bad Content-Length")?;
            }
        }
        self.reply.resize(length, 0);
        self.stream.read_exact(&mut self.reply).await?;
        ensure!(
            status == 200,
            "the push answered {status}: {}",
            String::from_utf8_lossy(&self.reply)
        );
        Ok(status)
    }
}

/// `requests` POSTs of `request` from [`CLIENTS`] keep-alive connections. Returns records/s.
async fn http_rate(
    port: u16,
    request: Arc<Vec<u8>>,
    requests: usize,
    per_request: usize,
) -> Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(Client::connect(port).await?);
    }
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for mut client in clients {
        let (request, next) = (request.clone(), next.clone());
        set.spawn(async move {
            let mut sent = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                client.post(&request).await?;
                sent += 1;
            }
            Ok::<usize, anyhow::Error>(sent)
        });
    }
    let mut sent = 0;
    while let Some(joined) = set.join_next().await {
        sent += joined.context("a client task panicked")??;
    }
    Ok((sent * per_request) as f64 / started.elapsed().as_secs_f64())
}

/// Records in `store` now.
async fn live_records(buffer: &buffer_core::Buffer) -> Result<u64> {
    Ok(buffer
        .stores()
        .await?
        .iter()
        .find(|s| s.store.as_str() == STORE)
        .map_or(0, |s| s.records))
}

/// The figure: `requests` 100-record NDJSON bodies POSTed from [`CLIENTS`] connections to a
/// `buffer-persist serve` child, against as many `push_many` calls of the same records from
/// [`CLIENTS`] tasks in this process. Every push must be stored: each side's record count is
/// checked in Redis.
pub async fn http(requests: usize, runs: usize, persist: &Path) -> Result<Figure> {
    let server = RedisServer::start();
    let buffer = buffer_core::Buffer::connect(buffer_core::BufferConfig::new(server.url()))
        .await
        .context("connect to the private redis-server")?;
    let serve = ServeProcess::start(persist, &server.url())?;
    let batch = records(0, 100);
    let body: String = batch.iter().map(|r| format!("{r}\n")).collect();
    let mut request = format!(
        "POST /v1/stores/{STORE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
         application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    let request = Arc::new(request);
    let batches: Arc<Vec<Vec<Value>>> = Arc::new(vec![batch]);
    let mut figure = Figure {
        id: "http",
        title: "HTTP ingest, 100-record NDJSON bodies, 50 clients",
        unit: Unit::RecordsPerSec,
        baseline_label: "push_many of the same 100 records in process, 50 tasks",
        method: format!(
            "Ours: {requests} `POST /v1/stores/bench` requests, each an NDJSON body of the same \
             100 records of 200 B, from 50 keep-alive HTTP/1.1 connections (tokio tasks in \
             this process writing prepared requests) to a `buffer-persist serve` child (release \
             build, default settings, no token file, no compression). Baseline: {requests} \
             `Buffer::push_many` calls of the same 100 records from 50 tokio tasks sharing one \
             `Buffer` in this process. Both on the same private redis-server, FLUSHALL before \
             each side, every record counted in Redis after each side."
        ),
        target: Target::RatioAtLeast(0.6),
        aggregate: Aggregate::Median,
        runs: Vec::new(),
        weak: WEAK_HTTP,
    };
    let expected = (requests * 100) as u64;
    for run in 0..runs {
        let mut baseline = 0.0;
        let mut ours = 0.0;
        for side in side_order(run) {
            tools::flush_all(&server)?;
            if side == Side::Baseline {
                baseline =
                    tools::push_rate(&buffer, STORE, batches.clone(), requests, CLIENTS).await?;
            } else {
                ours = http_rate(serve.port, request.clone(), requests, 100).await?;
            }
            let stored = live_records(&buffer).await?;
            ensure!(
                stored == expected,
                "{side:?}: {stored} records in Redis, {expected} pushed"
            );
        }
        progress(figure.id, run, runs, figure.unit, ours, Some(baseline));
        figure.runs.push(Run {
            ours,
            baseline: Some(baseline),
            detail: String::new(),
        });
    }
    drop(serve);
    Ok(figure)
}

const WEAK_HTTP: &str = "On 2 cores the HTTP side runs three processes' work (the clients in \
    this harness, the server, redis-server) where the baseline runs two. Under `perf` (first \
    runs) the server's CPU went to buffer-core's record parse (about 15 %) and to serde_json \
    validating each line a second time in the server's split (about 20 %); lines are now \
    parsed once, by push_json. What remains is push_json's parse, compaction and key \
    extraction, allocation, and the kernel's socket work.";
