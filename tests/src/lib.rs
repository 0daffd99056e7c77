//! Test support for the `buffer` workspace: private `redis-server` processes on free ports.
//!
//! Tests never share a server and never touch one they did not start. The binary is taken
//! from `BUFFER_REDIS_SERVER` or `PATH`. Each server runs with `--save ""` in its own
//! temporary directory, is ready when `start` returns (it answered PING), and is killed when
//! dropped; if the test is failing at that moment, the end of the server's log is printed.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use buffer_core::local_server::LocalRedis;
use buffer_core::{Buffer, BufferConfig};

pub mod cluster;
pub mod http_proxy;
pub mod postgres;
pub mod python;
pub mod s3;

/// The redis-server binary to run.
pub fn redis_server_binary() -> PathBuf {
    buffer_core::local_server::redis_server_binary()
}

/// A free TCP port on 127.0.0.1 (free when this returns; callers retry on a lost race).
pub fn free_port() -> u16 {
    buffer_core::local_server::free_port().unwrap()
}

/// A private redis-server, killed on drop: buffer-core's [`LocalRedis`] (the one launcher of
/// the workspace, shared with the demo) plus what tests need around it: panics instead of
/// errors, the log printed when a test fails, blocking connections and signals.
pub struct RedisServer {
    server: LocalRedis,
}

impl RedisServer {
    /// Starts a server with the default test settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments, e.g.
    /// `&["--maxmemory", "2mb"]` or `&["--appendonly", "yes"]`.
    pub fn start_with(extra_args: &[&str]) -> Self {
        match LocalRedis::start(extra_args) {
            Ok(server) => Self { server },
            Err(err) => panic!("{err}"),
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// The server's working directory (where an AOF would be written).
    pub fn dir(&self) -> &Path {
        self.server.dir()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// A blocking connection for setting up and inspecting test state.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Runs one command on this server (for tests outside this crate that plant or inspect
    /// keys without a Redis client of their own) and returns its reply as text.
    pub fn command(&self, args: &[&str]) -> String {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        let value: redis::Value = command.query(&mut self.conn()).unwrap();
        format!("{value:?}")
    }

    /// The server's clients from `CLIENT LIST`, each as its fields by name (`name`, `cmd`,
    /// `qbuf`…).
    pub fn clients(&self) -> Vec<std::collections::BTreeMap<String, String>> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.conn())
            .expect("CLIENT LIST");
        list.lines()
            .map(|line| {
                line.split(' ')
                    .filter_map(|field| field.split_once('='))
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect()
            })
            .collect()
    }

    /// A configuration for this server with a short response timeout.
    pub fn config(&self) -> BufferConfig {
        BufferConfig::new(self.url()).response_timeout(Duration::from_secs(3))
    }

    /// A connected buffer on this server.
    pub async fn buffer(&self) -> Buffer {
        Buffer::connect(self.config()).await.unwrap()
    }

    /// Sends a signal to the server (`"STOP"`, `"CONT"`, `"KILL"`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        self.server.stop();
    }

    /// Starts the server again on the same port and directory (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        if let Err(err) = self.server.restart() {
            panic!("redis-server did not restart: {err}");
        }
    }

    /// Every key in the server's database 0, for tests that check what is left behind.
    /// Uses SCAN: this is test code inspecting its own private server.
    pub fn all_keys(&self) -> Vec<String> {
        let mut conn = self.conn();
        let mut keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = self.server.log_tail(30);
            eprintln!(
                "--- redis-server :{} log (last {} lines) ---\n{tail}",
                self.port(),
                tail.lines().count()
            );
        }
        // Dropping `server` continues a stopped process and kills it.
    }
}

/// One command's counters in `INFO commandstats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandStat {
    /// `calls`: every call, failed or not.
    pub calls: u64,
    /// `failed_calls`: calls that ran and returned an error.
    pub failed_calls: u64,
}

impl CommandStat {
    /// Calls that ran to a reply that was not an error.
    pub fn ran(&self) -> u64 {
        self.calls - self.failed_calls
    }
}

/// `INFO commandstats` parsed: each command by its name as Redis spells it (lowercase,
/// subcommands as `cluster|slots`), a script's own commands included. One parser for every
/// test that counts commands.
pub fn parse_commandstats(info: &str) -> std::collections::BTreeMap<String, CommandStat> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |wanted: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(wanted)?.strip_prefix('='))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0)
            };
            let stat = CommandStat {
                calls: field("calls"),
                failed_calls: field("failed_calls"),
            };
            Some((name.to_owned(), stat))
        })
        .collect()
}

/// The command counters of the server behind `conn` (`INFO commandstats`, parsed).
pub fn command_stats(
    conn: &mut impl redis::ConnectionLike,
) -> std::collections::BTreeMap<String, CommandStat> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    parse_commandstats(&info)
}

/// True when the buffer holds no live store and no prepared batch, as read from *every* slot
/// group: the tolerant reads (`stores`, `get_prepared`) leave out the groups of a master that
/// does not answer, so "empty" from them can mean "not looked at" (a test once called a
/// buffer drained while a promoted master's batches were merely unread).
pub async fn buffer_is_drained(buffer: &buffer_core::Buffer) -> bool {
    let stores = buffer.stores_partial().await;
    let prepared = buffer.get_prepared_partial().await;
    matches!((stores, prepared), (Ok(stores), Ok(prepared))
        if stores.is_complete() && stores.found.is_empty()
            && prepared.is_complete() && prepared.found.is_empty())
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A TCP proxy in front of a server that can cut a connection at a chosen moment.
///
/// Connections are forwarded byte for byte. When armed with [`FaultProxy::cut_after`], the
/// next client→server chunk containing that command is forwarded to the server, and then the
/// connection is closed before the server's reply reaches the client: the command ran, but the
/// client never learns its result.
pub struct FaultProxy {
    port: u16,
    armed: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    faults: std::sync::Arc<ReplyFaults>,
}

/// The faults a [`FaultProxy`] applies to replies, besides the cut.
#[derive(Default)]
struct ReplyFaults {
    /// Milliseconds each reply chunk is held before it is forwarded.
    delay_ms: std::sync::atomic::AtomicU64,
    /// Armed by [`FaultProxy::truncate_reply_to`]: the command whose reply is cut in half.
    truncate: std::sync::Mutex<Option<Vec<u8>>>,
    /// How many replies were truncated so far.
    truncated: std::sync::atomic::AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream_port` on a free port (threads end with the process).
    pub fn start(upstream_port: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(std::sync::Mutex::new(None));
        let cuts = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(ReplyFaults::default());
        let (armed_in, cuts_in, faults_in) = (armed.clone(), cuts.clone(), faults.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (armed, cuts, faults) = (armed_in.clone(), cuts_in.clone(), faults_in.clone());
                std::thread::spawn(move || forward_pair(client, server, armed, cuts, faults));
            }
        });
        Self {
            port,
            armed,
            cuts,
            faults,
        }
    }

    /// Holds every reply `delay` before forwarding it (zero: none): a slow server or
    /// network, for requests already sent as for new ones.
    pub fn set_reply_delay(&self, delay: Duration) {
        self.faults.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Arms the proxy: the next `command` goes through and runs, but only the first half of
    /// the reply chunk that follows reaches the client, and then the connection is closed (a
    /// reply truncated mid-way).
    pub fn truncate_reply_to(&self, command: &str) {
        *self.faults.truncate.lock().unwrap() = Some(format!("{command}\r\n").into_bytes());
    }

    /// How many replies were truncated so far.
    pub fn truncated(&self) -> u64 {
        self.faults
            .truncated
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Arms the proxy: the next `command` (e.g. `"EXEC"`, `"EVALSHA"`) goes through, its
    /// reply does not.
    pub fn cut_after(&self, command: &str) {
        let marker = format!("{command}\r\n").into_bytes();
        *self.armed.lock().unwrap() = Some(marker);
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn forward_pair(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    armed: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    faults: std::sync::Arc<ReplyFaults>,
) {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (mut client_read, mut server_write) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut server_read, mut client_write) = (server, client);
    // Set when this connection is being cut: from then on, replies are dropped.
    let cut = Arc::new(AtomicBool::new(false));
    // Set when the next reply chunk is to be truncated.
    let truncating = Arc::new(AtomicBool::new(false));
    let replies = std::thread::spawn({
        let cut = cut.clone();
        let truncating = truncating.clone();
        let faults = faults.clone();
        move || {
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n) = server_read.read(&mut buf) {
                if n == 0 || cut.load(Ordering::SeqCst) {
                    break;
                }
                let delay = faults.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    std::thread::sleep(Duration::from_millis(delay));
                }
                if truncating.load(Ordering::SeqCst) {
                    let _ = client_write.write_all(&buf[..n.div_ceil(2)]);
                    faults.truncated.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                if client_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown(std::net::Shutdown::Both);
        }
    });
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = client_read.read(&mut buf) {
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let hit = {
            let mut armed = armed.lock().unwrap();
            let found = armed
                .as_ref()
                .is_some_and(|marker| chunk.windows(marker.len()).any(|w| w == marker.as_slice()));
            if found {
                *armed = None;
            }
            found
        };
        let truncate = {
            let mut armed = faults.truncate.lock().unwrap();
            let found = armed
                .as_ref()
                .is_some_and(|marker| chunk.windows(marker.len()).any(|w| w == marker.as_slice()));
            if found {
                *armed = None;
            }
            found
        };
        if truncate {
            truncating.store(true, Ordering::SeqCst);
        }
        if hit {
            cut.store(true, Ordering::SeqCst);
            cuts.fetch_add(1, Ordering::SeqCst);
            let _ = server_write.write_all(chunk);
            // Give the server time to run the transaction (its reply is dropped), then cut.
            std::thread::sleep(Duration::from_millis(50));
            let _ = client_read.shutdown(std::net::Shutdown::Both);
            break;
        }
        if server_write.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = server_write.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
}

/// The name of the marker's temporary file (`.buffer-persist.<16 hex digits>.tmp`): a
/// persister killed while it publishes the marker at its start leaves one, and docs/outputs.md says so
/// ("Marker temporary files older than a minute are removed" by a later start). A kill -9 test
/// may hit that moment; it is not a batch's temporary file.
fn is_marker_temp(name: &str) -> bool {
    name.strip_prefix(".buffer-persist.")
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The temporary files of batches being written under `out`: `.tmp` files in a store's
/// directory. The marker's temporary file sits at the top of `out` and is written before any
/// batch, so a test waiting for "a batch is being written" must not take it for one.
pub fn batch_temp_files(out: &Path) -> Vec<PathBuf> {
    files_under(out)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp") && p.parent() != Some(out))
        .collect()
}

/// The records of every batch file under `out`, by the directory (store) they are in.
/// Decodes `.gz` and `.zst` by name. Fails the test on a temporary file left behind (any
/// other dot-file except the persister's marker and a marker temporary file of a killed
/// start).
pub fn output_records(out: &Path) -> std::collections::BTreeMap<PathBuf, Vec<serde_json::Value>> {
    let mut by_dir: std::collections::BTreeMap<PathBuf, Vec<serde_json::Value>> =
        Default::default();
    for path in files_under(out) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('.') {
            assert!(
                name == ".buffer-persist" || is_marker_temp(&name),
                "temporary file left: {}",
                path.display()
            );
            continue;
        }
        let records = by_dir
            .entry(path.parent().unwrap().to_path_buf())
            .or_default();
        records.extend(file_records(&path));
    }
    by_dir
}

/// The records of every published batch file under `out`, while persisters may still be
/// writing: their temporary files (dot-files) are skipped, not treated as left behind. A
/// published file is complete (it is linked into place only after its fsync).
pub fn published_records(out: &Path) -> Vec<serde_json::Value> {
    files_under(out)
        .into_iter()
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .flat_map(|path| file_records(&path))
        .collect()
}

/// The records of one JSON Lines batch file (plain, `.gz` or `.zst`).
pub fn file_records(path: &Path) -> Vec<serde_json::Value> {
    file_lines(path)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The lines of one JSON Lines batch file (plain, `.gz` or `.zst`), as written: for checks
/// that a record's text came through byte for byte.
pub fn file_lines(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let mut text = String::new();
    let name = path.to_string_lossy();
    if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(file)
            .read_to_string(&mut text)
            .unwrap();
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(file)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
    } else {
        std::io::BufReader::new(file)
            .read_to_string(&mut text)
            .unwrap();
    }
    text.lines().map(str::to_owned).collect()
}

impl RedisServer {
    /// The keys of the default namespace (`buf`) left in this server.
    pub fn buffer_keys(&self) -> Vec<String> {
        self.all_keys()
            .into_iter()
            .filter(|k| k.starts_with("buf:"))
            .collect()
    }
}

/// How a child process ended, what it wrote to its piped stderr, and the most memory it held.
pub struct PeakRun {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Its peak resident set (`VmHWM`), in KiB; 0 when it was never read.
    pub peak_kib: u64,
    /// Its standard error (the child must have been spawned with `Stdio::piped()` for it).
    pub stderr: String,
}

/// Waits for `child`, polling its `VmHWM` every millisecond. VmHWM only grows while the process
/// lives, so its last reading before exit is the peak (up to the last millisecond).
pub fn wait_with_peak_rss(mut child: std::process::Child) -> PeakRun {
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    PeakRun {
        status,
        peak_kib,
        stderr,
    }
}

/// The seed of a randomized fault test: `BUFFER_FAULT_SEED` when set (to replay a failure),
/// else the clock; printed with the line that replays it.
pub fn fault_seed(test: &str) -> u64 {
    let seed = std::env::var("BUFFER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos() as u64)
        });
    println!("{test}: seed {seed} (replay with BUFFER_FAULT_SEED={seed})");
    seed
}

/// Fails the calling test, saying how to run it, unless the crate it expands in was built
/// with its `failpoints` feature (a macro, so `cfg!` reads the caller's features: the
/// failpoints are buffer-persist's, which `cargo test --workspace` turns on).
#[macro_export]
macro_rules! require_failpoints {
    () => {
        if !cfg!(feature = "failpoints") {
            panic!(
                "this test needs buffer-persist built with --features failpoints (cargo test --workspace does that)"
            );
        }
    };
}

/// The state letter of a process from `/proc/PID/stat` (`R` running, `S` sleeping, `T`
/// stopped, `Z` zombie…), or `None` once it is gone. Tests use it to see that a process a
/// failpoint stopped (SIGSTOP) is stopped before they act on it.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the state follows the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`, with that
/// of the children it has reaped when `with_reaped_children`; zero once it is gone. Linux
/// reports in USER_HZ, 100 per second on every architecture it runs on.
pub fn process_cpu_time(pid: u32, with_reaped_children: bool) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // utime stime cutime cstime are fields 14-17 of stat, 12-15 after `(comm)`'s end.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields = if with_reaped_children { 4 } else { 2 };
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(fields)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The peak resident set (`VmHWM`, KiB) of a running process, or `None` once it has exited.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How many tiny records [`push_mixed_size_batch`] pushes before its 40 records of 4 MiB.
pub const MIXED_TINY_RECORDS: u64 = 200_000;

/// Pushes the batch the bounded-memory drains are measured on into `store`: 200 000 tiny
/// records, then 40 records of 4 MiB right after them (160 MiB in all). The average record is
/// under 1 KiB, so a page sized by the average would hold all 40 big records at once.
pub async fn push_mixed_size_batch(buffer: &Buffer, store: &str) {
    let tiny = MIXED_TINY_RECORDS;
    for chunk in (0..tiny).collect::<Vec<_>>().chunks(1000) {
        let records: Vec<serde_json::Value> =
            chunk.iter().map(|i| serde_json::json!({"id": i})).collect();
        buffer.push_many(store, &records).await.unwrap();
    }
    let blob = "b".repeat(4 * 1024 * 1024);
    for i in tiny..tiny + 40 {
        buffer
            .push(store, &serde_json::json!({"id": i, "blob": blob}))
            .await
            .unwrap();
    }
}

/// What producers know about their pushes: ids acknowledged, and ids whose push failed with an
/// outcome that is unknown (applied or not). The exactly-once tests check files against it.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Ids whose push was acknowledged: each must be in exactly one file.
    pub acknowledged: std::collections::BTreeSet<u64>,
    /// Ids whose push failed transiently: each may be in one file, or in none.
    pub unknown: std::collections::BTreeSet<u64>,
}

/// Pushes ids `ids` as single-record pushes `{"id": id}` (plus `"pad"`: `pad` x's, when `pad`
/// is not 0) spread over `stores` stores `store-<id % stores>`, recording each outcome in the
/// ledger. A push refused for good (not transient) panics: the tests make none.
pub async fn produce(
    buffer: Buffer,
    ids: std::ops::Range<u64>,
    stores: u64,
    pad: usize,
    ledger: std::sync::Arc<std::sync::Mutex<Ledger>>,
) {
    for id in ids {
        let record = if pad == 0 {
            serde_json::json!({"id": id})
        } else {
            serde_json::json!({"id": id, "pad": "x".repeat(pad)})
        };
        let result = buffer.push(format!("store-{}", id % stores), &record).await;
        let mut ledger = ledger.lock().unwrap();
        match result {
            Ok(_) => {
                ledger.acknowledged.insert(id);
            }
            // Connection trouble or a timeout: may or may not have been applied.
            Err(err) if err.is_transient() => {
                ledger.unknown.insert(id);
            }
            Err(err) => panic!("push {id}: {err}"),
        }
    }
}

/// Sends SIGTERM to a persister process and checks that it exits 0 (its piped stderr is in the
/// message when it does not).
pub fn stop_and_expect_success(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = wait_within(&mut child, COMMAND_DEADLINE)
        .expect("the persister did not exit within COMMAND_DEADLINE of SIGTERM");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    assert!(status.success(), "persister exited with {status}: {stderr}");
}

/// How long a test waits for a `buffer-persist` command that should end on its own (a
/// `drain`, a `push`, a one-shot subcommand) before it calls it hung: generous, so a
/// loaded machine never trips it, but finite, so a regression fails the test instead of
/// hanging CI.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// A child process (a persister, a helper) killed if the test ends before it is stopped,
/// e.g. by a failed assertion: no process outlives its test. Derefs to the `Child`.
pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    /// The child, no longer guarded (to stop it cleanly and check its exit).
    pub fn take(mut self) -> std::process::Child {
        self.0.take().expect("a guarded child")
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("a guarded child")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("a guarded child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // A stopped child must go on before SIGKILL's clean-up can end it.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .stderr(std::process::Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A long-running child's piped stderr, read by a thread as it comes: a pipe nobody reads
/// fills after 64 KiB and then blocks the child on its next log line (a persister stalled
/// that way looks like a bug of the persister). What it printed so far is in [`Self::text`],
/// for failure messages.
pub struct StderrLog(std::sync::Arc<std::sync::Mutex<String>>);

impl StderrLog {
    /// Takes `child`'s stderr (which must be piped) and reads it to the end in a thread.
    pub fn capture(child: &mut std::process::Child) -> Self {
        let mut pipe = child.stderr.take().expect("the child's stderr is piped");
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(read @ 1..) = pipe.read(&mut chunk) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..read]));
            }
        });
        Self(text)
    }

    /// Everything the child printed to stderr so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// [`Command::output`] and [`Command::status`] with [`COMMAND_DEADLINE`]: a command that
/// hangs is killed and fails its test, instead of hanging the suite (and CI) for good.
pub trait CommandWithin {
    /// As `output().unwrap()`, within the deadline.
    fn output_in_time(&mut self) -> std::process::Output;
    /// As `status().unwrap()`, within the deadline (stdio as configured, inherited by default).
    fn status_in_time(&mut self) -> std::process::ExitStatus;
}

impl CommandWithin for Command {
    fn output_in_time(&mut self) -> std::process::Output {
        output_within(self, COMMAND_DEADLINE)
    }

    fn status_in_time(&mut self) -> std::process::ExitStatus {
        let mut child = self.spawn().expect("spawn the command");
        wait_within(&mut child, COMMAND_DEADLINE)
            .unwrap_or_else(|| panic!("{self:?} still running after {COMMAND_DEADLINE:?} (killed)"))
    }
}

/// Runs a command to its end like [`Command::output`] (stdout and stderr captured), but
/// kills it and panics, with what it printed so far, if it is still running after `limit`.
pub fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_within(&mut child, limit);
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    match status {
        Some(status) => std::process::Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{command:?} still running after {limit:?} (killed); stderr: {}",
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Waits for a child to exit, at most `limit`; kills it (SIGKILL, by its pid) and returns
/// `None` when it did not exit in time.
pub fn wait_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod commandstats_tests {
    use super::*;

    #[test]
    fn commandstats_lines_parse_into_calls_and_failures() {
        let info = "# Commandstats\r\n\
            cmdstat_evalsha:calls=7,usec=70,usec_per_call=10.00,rejected_calls=1,failed_calls=2\r\n\
            cmdstat_cluster|slots:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
            not a stat line\r\n";
        let stats = parse_commandstats(info);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats["evalsha"].calls, 7);
        assert_eq!(stats["evalsha"].ran(), 5);
        assert_eq!(stats["cluster|slots"].calls, 3);
    }
}
