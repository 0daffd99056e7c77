//! What a new user meets in the first hour with the `buffer-persist` binary (issue 24): a
//! drain stopped by Ctrl-C or SIGTERM leaves nothing locked and says so, `--redis-timeout`
//! bounds the connect to a server that never answers, and logs written into a file carry no
//! colour codes.

use buffer_tests::CommandWithin;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use buffer_tests::{RedisServer, output_records};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// A TCP proxy to `127.0.0.1:upstream` that hands the server's replies on in chunks of at
/// most 8 KiB, each after `delay`: a batch read through it takes seconds, so a signal sent
/// while its file is written lands mid-batch. Returns the proxy's URL; its threads end with
/// the test process.
fn slow_reply_proxy(upstream: u16, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut client_read, mut server_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut server_read, mut client_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = client_read.read(&mut buf) {
                    if n == 0 || server_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 8 * 1024];
                while let Ok(n) = server_read.read(&mut buf) {
                    std::thread::sleep(delay);
                    if n == 0 || client_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = client_write.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    format!("redis://127.0.0.1:{port}/0")
}

fn drain_command(redis_url: &str, out: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["drain", "--redis", redis_url, "--out"])
        .arg(out)
        .env("RUST_LOG", "warn")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status_in_time();
    assert!(sent.success(), "kill -{name} {pid}");
}

/// Issue 24, item 1: a drain stopped by `signal` mid-batch abandons the batch in hand (it
/// stays prepared, its lock released), prints a line saying what was left and that the next
/// drain picks it up at once, and exits with `code`; a drain started right after finishes in
/// far less than the lock TTL, and every record is in exactly one file.
async fn a_signal_during_a_drain_leaves_nothing_locked(signal_name: &str, code: i32) {
    const RECORDS: u64 = 40_000;
    const LOCK_TTL: Duration = Duration::from_secs(30);
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let records: Vec<Value> = (0..RECORDS)
        .map(|id| json!({"id": id, "pad": "s".repeat(120)}))
        .collect();
    for chunk in records.chunks(5000) {
        buffer.push_many("big", chunk).await.unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let proxy = slow_reply_proxy(server.port(), Duration::from_millis(5));
    let mut drain = drain_command(&proxy, out.path())
        .args(["--lock-ttl", "30s"])
        .spawn()
        .unwrap();
    // Wait until it is writing the batch (its temporary file exists in the store's
    // directory: the marker's temporary file, at the top of OUT, comes before any batch),
    // then stop it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while buffer_tests::batch_temp_files(out.path()).is_empty() {
        assert!(Instant::now() < deadline, "the drain never started writing");
        assert!(
            drain.try_wait().unwrap().is_none(),
            "the drain ended before it was signalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(drain.id(), signal_name);
    let status = drain.wait().unwrap();
    let mut stderr = String::new();
    drain
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(
        status.code(),
        Some(code),
        "exit status {status}; stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("drain stopped by SIG{signal_name}"))
            && stderr.contains("none locked by this drain")
            && stderr.contains("the next drain or run picks it up at once"),
        "the clear line: {stderr}"
    );
    let prepared = buffer.get_prepared().await.unwrap();
    assert_eq!(
        prepared.len(),
        1,
        "the batch in hand stays prepared: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "left: batch {} of store \"big\" (prepared, not locked)",
            prepared[0].id
        )),
        "names the batch left: {stderr}"
    );
    assert_eq!(
        buffer
            .lock_info(&prepared[0].store, Some(&prepared[0].id))
            .await
            .unwrap(),
        None,
        "the batch's lock is released"
    );

    let started = Instant::now();
    let second = drain_command(&server.url(), out.path())
        .args(["--lock-ttl", "30s"])
        .output_in_time();
    let elapsed = started.elapsed();
    assert!(
        second.status.success(),
        "second drain: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        elapsed < LOCK_TTL / 6,
        "the second drain took {elapsed:?}: it waited for a lock (TTL {LOCK_TTL:?})"
    );
    let mut ids: Vec<u64> = output_records(out.path())
        .values()
        .flatten()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..RECORDS).collect::<Vec<_>>(),
        "each record exactly once"
    );
    assert!(buffer.get_prepared().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_drain_releases_the_batch_and_exits_130() {
    a_signal_during_a_drain_leaves_nothing_locked("INT", 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_releases_the_batch_and_exits_143() {
    a_signal_during_a_drain_leaves_nothing_locked("TERM", 143).await;
}

/// Issue 24, item 2: against a socket that accepts connections and never replies, `stores`
/// fails after `--redis-timeout` (±20 %), not after a fixed 5 s, and says how long it waited.
#[test]
fn redis_timeout_bounds_the_connect_to_a_server_that_never_answers() {
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", black_hole.local_addr().unwrap());
    // Accepted connections are kept open, never read, never answered.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in black_hole.incoming() {
            held.push(conn);
        }
    });
    for (flag, expected, text) in [
        ("500ms", Duration::from_millis(500), "500 ms"),
        ("2s", Duration::from_secs(2), "2000 ms"),
    ] {
        let started = Instant::now();
        let output = Command::new(BINARY)
            .args(["stores", "--redis", &url, "--redis-timeout", flag])
            .stdin(Stdio::null())
            .output_in_time();
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            elapsed >= expected.mul_f64(0.8) && elapsed <= expected.mul_f64(1.2),
            "--redis-timeout {flag}: failed after {elapsed:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("did not answer within {text}")),
            "--redis-timeout {flag}: the message names the time waited: {stderr}"
        );
    }
}

/// Issue 24, item 3: human logs written into a file carry no escape codes, whether
/// `NO_COLOR` is unset or set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_logs_into_a_file_carry_no_escape_codes() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    for no_color in [None, Some("1")] {
        // A batch to persist: its lines are logged at info.
        buffer.push("logged", &json!({"a": 1})).await.unwrap();
        let out = tempfile::tempdir().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(BINARY);
        command
            .args(["drain", "--redis", &server.url(), "--out"])
            .arg(out.path())
            .args(["--log-format", "human"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        match no_color {
            Some(value) => command.env("NO_COLOR", value),
            None => command.env_remove("NO_COLOR"),
        };
        let status = command.status_in_time();
        let written = std::fs::read(log.path()).unwrap();
        let text = String::from_utf8_lossy(&written);
        assert!(status.success(), "NO_COLOR={no_color:?}: {text}");
        assert!(
            text.contains("INFO") && text.contains("persisted"),
            "NO_COLOR={no_color:?}: the drain logged something: {text}"
        );
        assert!(
            !written.contains(&0x1b),
            "NO_COLOR={no_color:?}: escape codes in the log file: {text:?}"
        );
    }
}

/// Issue 24, item 1 (its second half): a drain that fails under `--wait-replicas` (a server
/// with no replica: the prepare's `WAIT`, then the recovery's, confirm nothing) leaves no lock
/// behind, so a drain without it right after finishes at once. (The releases are buffer-core's,
/// from before this test: it guards them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_failing_under_wait_replicas_leaves_nothing_locked() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.push("s", &json!({"id": 0})).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    // First the store's prepare fails to be confirmed, then the recovery of its batch.
    for attempt in ["prepare", "recovery"] {
        let output = drain_command(&server.url(), out.path())
            .args(["--wait-replicas", "1", "--wait-replicas-timeout", "200ms"])
            .args(["--lock-ttl", "30s", "--wait", "1s"])
            .output_in_time();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{attempt}: {stderr}");
        let prepared = buffer.get_prepared().await.unwrap();
        assert_eq!(prepared.len(), 1, "{attempt}: {stderr}");
        let store = &prepared[0].store;
        assert_eq!(
            buffer.lock_info(store, None).await.unwrap(),
            None,
            "{attempt}"
        );
        assert_eq!(
            buffer
                .lock_info(store, Some(&prepared[0].id))
                .await
                .unwrap(),
            None,
            "{attempt}: the batch lock is released"
        );
    }
    let started = Instant::now();
    let output = drain_command(&server.url(), out.path())
        .args(["--lock-ttl", "30s"])
        .output_in_time();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(output_records(out.path()).values().flatten().count(), 1);
}
