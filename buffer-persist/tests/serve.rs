//! `buffer-persist serve` as a process on a private Redis: pushes from curl and a Python
//! standard-library client, every error status with its body, limits, idempotency, encodings,
//! SIGTERM under load, a slow client, and Redis killed or frozen under requests.

use buffer_tests::CommandWithin;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buffer_tests::{RedisServer, free_port};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// A `buffer-persist serve` child on a free port, killed on drop.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(redis_url: &str, flags: &[&str]) -> Self {
        Self::start_logging(redis_url, flags, "info")
    }

    /// As [`Serve::start`], logging at `rust_log`.
    fn start_logging(redis_url: &str, flags: &[&str], rust_log: &str) -> Self {
        let port = free_port();
        let child = Command::new(BINARY)
            .args(["serve", "--redis", redis_url, "--redis-timeout", "1s"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(flags)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let serve = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "serve did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// One HTTP/1.1 request on a new connection: (status, headers text, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        let split = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&reply[..split]).into_owned();
        let status = head[9..12].parse().unwrap();
        (status, head, reply[split + 4..].to_vec())
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Value) {
        let (status, head, body) = self.request(method, path, headers, body);
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        (status, head, value)
    }

    fn terminate(mut self) -> (i32, String) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status_in_time();
        let output = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NDJSON: (&str, &str) = ("Content-Type", "application/x-ndjson");

/// Every byte but letters, digits, `-`, `_` and `~` as `%XX`: a `.` too, since clients remove
/// the dot segments `.` and `..` of a path before sending it (docs/http.md).
fn percent_encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn live_records(redis: &RedisServer, store: &str) -> u64 {
    redis
        .buffer()
        .await
        .stores()
        .await
        .unwrap()
        .iter()
        .find(|s| s.store.as_str() == store)
        .map_or(0, |s| s.records)
}

const HOSTILE: [&str; 5] = ["a/b c", "100%{x}:*", "ünïcødé €", "..", "?query#frag"];

#[tokio::test(flavor = "multi_thread")]
async fn curl_and_python_push_to_hostile_store_names_and_read_receipts() {
    let redis = RedisServer::start();
    let serve = Serve::start(&redis.url(), &[]);
    for name in HOSTILE {
        let path = format!("/v1/stores/{}", percent_encode(name));
        let output = Command::new("curl")
            .args([
                "-sS",
                "-H",
                "Content-Type: application/x-ndjson",
                "--data-binary",
                "{\"n\":1}\n{\"n\":2}\n",
                &serve.url(&path),
            ])
            .output_in_time();
        let receipt: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(receipt["store"], name, "{receipt}");
        assert_eq!(receipt["pushed"], 2);
        assert_eq!(receipt["receipt"]["records"], 2);
        let python = format!(
            "import json, urllib.request, urllib.parse\n\
             req = urllib.request.Request('{}' + urllib.parse.quote({:?}, safe=''), data=json.dumps([{{'n': 3}}]).encode(), headers={{'Content-Type': 'application/json'}})\n\
             print(json.load(urllib.request.urlopen(req))['receipt']['records'])\n",
            serve.url("/v1/stores/"),
            name
        );
        let output = Command::new("python3")
            .args(["-c", &python])
            .output_in_time();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "3",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(live_records(&redis, name).await, 3);
        let (status, _, store) = serve.json("GET", &path, &[], b"");
        assert_eq!(status, 200);
        assert_eq!(store["stores"][0]["records"], 3, "{store}");
    }
    let (status, _, list) = serve.json("GET", "/v1/stores", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(list["stores"].as_array().unwrap().len(), HOSTILE.len());
    let (code, stderr) = serve.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("undeclared status"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_status_has_a_body_naming_what_was_wrong() {
    let redis = RedisServer::start();
    let serve = Serve::start(&redis.url(), &["--max-body", "1KiB"]);
    // 400: every bad line listed, nothing stored.
    let (status, _, body) = serve.json(
        "POST",
        "/v1/stores/s",
        &[NDJSON],
        b"{\"a\":1}\n[1]\n{\"b\":\nnull\n",
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_records");
    let lines: Vec<u64> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 4], "{body}");
    assert_eq!(live_records(&redis, "s").await, 0);
    // The same under an Idempotency-Key (push_once), and a line that is not UTF-8.
    let keyed: &[(&str, &str)] = &[NDJSON, ("Idempotency-Key", "bad-1")];
    let (status, _, body) = serve.json(
        "POST",
        "/v1/stores/s",
        keyed,
        b"{\"a\":1}\n\xff\n\"x\"\n{\"b\":2}\n[]\n",
    );
    assert_eq!(status, 400, "{body}");
    let lines: Vec<u64> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 5], "{body}");
    let (status, _, body) = serve.json("POST", "/v1/stores/s", keyed, b"{\"a\":1}\n7\n");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["line"], 2, "{body}");
    assert_eq!(live_records(&redis, "s").await, 0);
    let (status, _, body) = serve.json(
        "POST",
        "/v1/stores/s",
        &[("Content-Type", "application/json")],
        b"[{\"a\":1}, 2]",
    );
    assert_eq!(
        (status, body["errors"][0]["element"].as_u64()),
        (400, Some(1)),
        "{body}"
    );
    // 413 while reading.
    let (status, _, body) = serve.json("POST", "/v1/stores/s", &[NDJSON], &vec![b' '; 2048]);
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    // 415.
    let (status, _, body) = serve.json(
        "POST",
        "/v1/stores/s",
        &[("Content-Type", "text/plain")],
        b"{}",
    );
    assert_eq!(status, 415);
    assert!(
        body["message"].as_str().unwrap().contains("text/plain"),
        "{body}"
    );
    let (status, _, _) = serve.json(
        "POST",
        "/v1/stores/s",
        &[NDJSON, ("Content-Encoding", "br")],
        b"{}",
    );
    assert_eq!(status, 415);
    // 404, 405.
    let (status, _, body) = serve.json("GET", "/v2/nothing", &[], b"");
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, head, body) = serve.json("DELETE", "/v1/stores/s", &[], b"");
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert!(head.to_lowercase().contains("allow: get, post"), "{head}");
    // 400 for a bad Idempotency-Key.
    let (status, _, body) = serve.json(
        "POST",
        "/v1/stores/s",
        &[NDJSON, ("Idempotency-Key", "no spaces")],
        b"{\"a\":1}",
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_idempotency_key")),
        "{body}"
    );
    assert_eq!(live_records(&redis, "s").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_refusal_is_429_with_retry_after_and_stores_nothing() {
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    buffer
        .set_limits(
            "limited",
            buffer_core::StoreLimits {
                max_records: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let serve = Serve::start(&redis.url(), &["--retry-after", "7s"]);
    let (status, _, _) = serve.json(
        "POST",
        "/v1/stores/limited",
        &[NDJSON],
        b"{\"a\":1}\n{\"a\":2}\n",
    );
    assert_eq!(status, 200);
    let (status, head, body) = serve.json(
        "POST",
        "/v1/stores/limited",
        &[NDJSON],
        b"{\"a\":3}\n{\"a\":4}\n",
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["limit"], "max-records", "{body}");
    assert!(head.to_lowercase().contains("retry-after: 7"), "{head}");
    assert_eq!(live_records(&redis, "limited").await, 2);
    // The rate limit: Retry-After is 1 s, when its one-second window opens again.
    buffer
        .set_limits(
            "fast",
            buffer_core::StoreLimits {
                max_rate: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let four = b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":4}\n";
    let (status, head, body) = serve.json("POST", "/v1/stores/fast", &[NDJSON], four);
    assert_eq!(
        (status, body["limit"].as_str()),
        (429, Some("max-rate")),
        "{body}"
    );
    assert!(head.to_lowercase().contains("retry-after: 1\r\n"), "{head}");
    assert_eq!(live_records(&redis, "fast").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_idempotency_key_retried_five_times_at_once_stores_once() {
    let redis = RedisServer::start();
    let serve = std::sync::Arc::new(Serve::start(&redis.url(), &[]));
    let body: String = (0..50).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let threads: Vec<_> = (0..5)
        .map(|_| {
            let serve = serve.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                serve.json(
                    "POST",
                    "/v1/stores/once",
                    &[NDJSON, ("Idempotency-Key", "order-17")],
                    body.as_bytes(),
                )
            })
        })
        .collect();
    let replies: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        replies.iter().all(|(status, _, _)| *status == 200),
        "{replies:?}"
    );
    assert_eq!(
        replies
            .iter()
            .filter(|(_, _, b)| b["duplicate"] == false)
            .count(),
        1,
        "{replies:?}"
    );
    assert_eq!(live_records(&redis, "once").await, 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_and_zstd_bodies_and_a_body_over_the_limit_only_once_decompressed() {
    use std::io::Write as _;
    let redis = RedisServer::start();
    let serve = Serve::start(&redis.url(), &["--max-body", "64KiB"]);
    let body: String = (0..100).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let (status, _, reply) = serve.json(
        "POST",
        "/v1/stores/gz",
        &[NDJSON, ("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    );
    assert_eq!(
        (status, reply["pushed"].as_u64()),
        (200, Some(100)),
        "{reply}"
    );
    let zst = zstd::encode_all(body.as_bytes(), 3).unwrap();
    let (status, _, reply) = serve.json(
        "POST",
        "/v1/stores/zst",
        &[NDJSON, ("Content-Encoding", "zstd")],
        &zst,
    );
    assert_eq!(
        (status, reply["pushed"].as_u64()),
        (200, Some(100)),
        "{reply}"
    );
    // 1 MiB of one record's padding compresses far under 64 KiB, and is 413 once decompressed.
    let big = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(1 << 20));
    let zst = zstd::encode_all(big.as_bytes(), 3).unwrap();
    assert!(zst.len() < 64 * 1024);
    let (status, _, reply) = serve.json(
        "POST",
        "/v1/stores/bomb",
        &[NDJSON, ("Content-Encoding", "zstd")],
        &zst,
    );
    assert_eq!(status, 413, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("decompressed"),
        "{reply}"
    );
    assert_eq!(live_records(&redis, "bomb").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_is_cut_off_by_the_header_timeout() {
    let redis = RedisServer::start();
    let serve = Serve::start(&redis.url(), &["--header-timeout", "1s"]);
    let mut stream = TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    let started = Instant::now();
    let head =
        b"POST /v1/stores/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n";
    let mut cut = false;
    for byte in head {
        if stream.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        // A closed connection reads as end of file (or reset).
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(_) => {
                cut = true;
                break;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
        stream.set_nonblocking(false).unwrap();
    }
    assert!(cut, "the slow client was never cut off");
    // 1 s timeout, one byte a second: cut within 3 × the timeout plus the polling second.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Pushes 10-record bodies from 4 threads until told to stop; returns the records of every
/// acknowledged (200) push and counts of each status.
fn load(
    serve: &std::sync::Arc<Serve>,
    store: &'static str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, Vec<u16>)>> {
    (0..4).map(|t| {
        let serve = serve.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acked = 0;
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body: String = (0..10).map(|i| format!("{{\"t\":{t},\"n\":{n},\"i\":{i}}}\n")).collect();
                n += 1;
                let mut stream = match TcpStream::connect(("127.0.0.1", serve.port)) { Ok(s) => s, Err(_) => break };
                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let head = format!("POST /v1/stores/{store} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n", body.len());
                if stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).is_err() { continue; }
                let mut reply = Vec::new();
                if stream.read_to_end(&mut reply).is_err() || reply.len() < 12 { continue; }
                let status: u16 = String::from_utf8_lossy(&reply[9..12]).parse().unwrap_or(0);
                if status == 200 { acked += 10; }
                statuses.push(status);
            }
            (acked, statuses)
        })
    }).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_requests_in_flight_and_loses_no_acknowledged_record() {
    let redis = RedisServer::start();
    let serve = std::sync::Arc::new(Serve::start(&redis.url(), &[]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads = load(&serve, "term", &stop);
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .arg("-TERM")
        .arg(serve.child.id().to_string())
        .status_in_time();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: u64 = threads.into_iter().map(|t| t.join().unwrap().0).sum();
    let serve = std::sync::Arc::into_inner(serve).unwrap();
    let (code, stderr) = serve.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(acked > 0);
    // Persisted by a drain afterwards: every acknowledged record is in the files.
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(BINARY)
        .args(["drain", "--redis", &redis.url(), "--out"])
        .arg(out.path())
        .status_in_time();
    assert!(status.success());
    let persisted = buffer_tests::published_records(out.path()).len() as u64;
    assert_eq!(
        persisted, acked,
        "every push answered 200 is persisted, and only those"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_frozen_or_killed_under_requests_is_504_or_503_and_loses_no_acknowledged_record() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let serve = std::sync::Arc::new(Serve::start(&redis.url(), &["--retry-after", "2s"]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads = load(&serve, "faults", &stop);
    std::thread::sleep(Duration::from_millis(500));
    redis.signal("STOP");
    // A keyed push Redis does not answer within --redis-timeout: 504, outcome unknown.
    let keyed: &[(&str, &str)] = &[NDJSON, ("Idempotency-Key", "frozen-1")];
    let seven: String = (0..7).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let frozen_at = Instant::now();
    let (status, _, body) = serve.json("POST", "/v1/stores/frozen-once", keyed, seven.as_bytes());
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("outcome_unknown")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(frozen_at.elapsed()));
    redis.signal("CONT");
    // Its retry with the same key after Redis is back: 200, and the records are stored once
    // whether or not the frozen attempt ran.
    let (status, _, body) = serve.json("POST", "/v1/stores/frozen-once", keyed, seven.as_bytes());
    assert_eq!(status, 200, "{body}");
    assert_eq!(live_records(&redis, "frozen-once").await, 7, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    let (status, head, body) = serve.json("POST", "/v1/stores/faults", &[NDJSON], b"{\"a\":1}");
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("redis_unavailable")),
        "{body}"
    );
    assert!(head.to_lowercase().contains("retry-after: 2"), "{head}");
    let (status, _, body) = serve.json("GET", "/readyz", &[], b"");
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("not_ready")),
        "{body}"
    );
    redis.restart();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<(u64, Vec<u16>)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let acked: u64 = results.iter().map(|r| r.0).sum();
    let statuses: Vec<u16> = results.iter().flat_map(|r| r.1.clone()).collect();
    assert!(
        statuses.contains(&504),
        "a frozen Redis answers 504: {statuses:?}"
    );
    assert!(
        statuses.contains(&503),
        "a dead Redis answers 503: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 503, 504].contains(s)),
        "{statuses:?}"
    );
    // 504s may or may not be stored; every 200 must be.
    assert!(live_records(&redis, "faults").await >= acked);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_401_without_403_outside_their_scope_and_never_logged() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        "# producers\nall-0f9e8d7c\nscoped-1a2b3c4d orders* audit\n",
    )
    .unwrap();
    // Not even debug logs may show a token.
    let serve = Serve::start_logging(
        &redis.url(),
        &["--token-file", file.to_str().unwrap()],
        "debug",
    );
    let (status, head, body) = serve.json("POST", "/v1/stores/orders", &[NDJSON], b"{\"a\":1}");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert!(
        head.to_lowercase().contains("www-authenticate: bearer"),
        "{head}"
    );
    let wrong: &[(&str, &str)] = &[NDJSON, ("Authorization", "Bearer all-0f9e8d7d")];
    let (status, _, body) = serve.json("POST", "/v1/stores/orders", wrong, b"{\"a\":1}");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not one of"),
        "{body}"
    );
    let scoped: &[(&str, &str)] = &[NDJSON, ("Authorization", "Bearer scoped-1a2b3c4d")];
    let (status, _, body) = serve.json("POST", "/v1/stores/orders%2Feu", scoped, b"{\"a\":1}");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = serve.json("POST", "/v1/stores/audit", scoped, b"{\"a\":1}");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = serve.json("POST", "/v1/stores/billing", scoped, b"{\"a\":1}");
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    assert_eq!(body["store"], "billing", "{body}");
    let all: &[(&str, &str)] = &[NDJSON, ("Authorization", "Bearer all-0f9e8d7c")];
    let (status, _, _) = serve.json("POST", "/v1/stores/billing", all, b"{\"a\":1}");
    assert_eq!(status, 200);
    assert_eq!(live_records(&redis, "billing").await, 1);
    // A scoped token lists only its stores; the probes need no token.
    let (status, _, list) = serve.json("GET", "/v1/stores", &scoped[1..], b"");
    assert_eq!(status, 200);
    let mut names: Vec<&str> = list["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["audit", "orders/eu"], "{list}");
    let (status, _, body) = serve.json("GET", "/v1/stores/billing", &scoped[1..], b"");
    assert_eq!(status, 403, "{body}");
    assert_eq!(serve.json("GET", "/healthz", &[], b"").0, 200);
    assert_eq!(serve.json("GET", "/readyz", &[], b"").0, 200);
    let (code, stderr) = serve.terminate();
    assert_eq!(code, 0, "{stderr}");
    for token in ["0f9e8d7c", "1a2b3c4d", "0f9e8d7d"] {
        assert!(!stderr.contains(token), "a token in the logs: {stderr}");
    }
}

#[test]
fn a_non_loopback_address_needs_a_token_file_or_allow_unauthenticated() {
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let output = Command::new(BINARY)
        .args([
            "serve",
            "--redis",
            "redis://127.0.0.1:1",
            "--listen",
            &listen,
        ])
        .output_in_time();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--token-file") && stderr.contains("--allow-unauthenticated"),
        "{stderr}"
    );
    // With --allow-unauthenticated it listens (and says it is not ready: no Redis there).
    let child = Command::new(BINARY)
        .args([
            "serve",
            "--redis",
            "redis://127.0.0.1:1",
            "--redis-timeout",
            "1s",
        ])
        .args(["--listen", &listen, "--allow-unauthenticated"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let serve = Serve { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(serve.json("GET", "/healthz", &[], b"").0, 200);
    let (status, head, body) = serve.json("GET", "/readyz", &[], b"");
    assert_eq!(status, 503, "{body}");
    assert!(head.to_lowercase().contains("retry-after"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_and_metrics_show_the_stores_and_count_requests_records_and_bytes() {
    let redis = RedisServer::start();
    redis
        .buffer()
        .await
        .set_limits(
            "orders",
            buffer_core::StoreLimits {
                max_records: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let serve = Serve::start(&redis.url(), &[]);
    let pushed = b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
    for _ in 0..2 {
        assert_eq!(
            serve.json("POST", "/v1/stores/orders", &[NDJSON], pushed).0,
            200
        );
    }
    assert_eq!(
        serve.json("POST", "/v1/stores/orders", &[NDJSON], b"[1]").0,
        400
    );
    let (status, _, store) = serve.json("GET", "/v1/stores/orders", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(store["store"], "orders");
    assert_eq!(store["stores"][0]["records"], 6, "{store}");
    assert_eq!(store["limits"]["max_records"], 100, "{store}");
    let (status, _, body) = serve.json("GET", "/healthz", &[], b"");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _, body) = serve.json("GET", "/readyz", &[], b"");
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let (status, head, metrics) = serve.request("GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "buffer_http_requests_total{route=\"POST /v1/stores/{store}\",status=\"200\"} 2",
        "buffer_http_requests_total{route=\"POST /v1/stores/{store}\",status=\"400\"} 1",
        "buffer_http_requests_total{route=\"GET /v1/stores/{store}\",status=\"200\"} 1",
        "buffer_http_records_ingested_total 6",
        &format!("buffer_http_ingested_bytes_total {}", 2 * pushed.len()),
        "buffer_http_request_duration_seconds_count{route=\"POST /v1/stores/{store}\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no line {line:?} in:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_slower_than_the_body_timeout_is_408_and_stores_nothing() {
    let redis = RedisServer::start();
    let serve = Serve::start(&redis.url(), &["--body-timeout", "1s"]);
    let mut stream = TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/stores/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: 20\r\n\r\n{\"n\":")
        .unwrap();
    // The rest of the body never comes: the server answers 408 after --body-timeout.
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"error\":\"body_timeout\""), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(live_records(&redis, "slow").await, 0);
}

/// The Python examples of docs/http.md, each run against a server (its address put for
/// `127.0.0.1:8080`), each printing what it shows.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_examples_of_docs_http_md_run_against_a_server() {
    let redis = RedisServer::start();
    let serve = Serve::start(&redis.url(), &[]);
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/http.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split("```python\n")
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap())
        .collect();
    let expected = [
        "'records': 100",
        "/readyz 200 {'status': 'ready'}",
        "400 bad_records",
        "'duplicate': True",
    ];
    assert_eq!(
        blocks.len(),
        expected.len(),
        "one expectation per python block"
    );
    let base = serve.url("");
    for (block, shows) in blocks.iter().zip(expected) {
        let script = block.replace("http://127.0.0.1:8080", &base);
        let output = Command::new("python3")
            .args(["-c", &script])
            .output_in_time();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains(shows), "{script}\nprinted: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_serves_several_requests_and_closes_an_idle_connection_after_the_header_timeout()
{
    let redis = RedisServer::start();
    let serve = Serve::start(&redis.url(), &["--header-timeout", "1s"]);
    let mut stream = TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = b"{\"n\":1}\n";
    for _ in 0..3 {
        let head = format!(
            "POST /v1/stores/kept HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        // Read one reply: its head, then Content-Length bytes.
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            reply.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&reply).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut receipt = vec![0u8; length];
        stream.read_exact(&mut receipt).unwrap();
    }
    assert_eq!(live_records(&redis, "kept").await, 3);
    // Idle past the header timeout: the server closes the connection (end of file).
    let idle = Instant::now();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "{:?}",
        idle.elapsed()
    );
    assert!(
        idle.elapsed() < Duration::from_secs(5),
        "{:?}",
        idle.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_past_max_requests_wait_for_a_turn_and_probes_do_not() {
    let redis = RedisServer::start();
    let serve = Serve::start(
        &redis.url(),
        &["--max-requests", "1", "--body-timeout", "2s"],
    );
    // The one turn: a push whose body stops arriving holds it until its 408.
    let mut holder = TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    holder
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    holder
        .write_all(b"POST /v1/stores/held HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: 20\r\n\r\n{")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    // A probe takes no turn: answered at once.
    assert_eq!(serve.json("GET", "/healthz", &[], b"").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // A read takes one: answered only once the holder's turn ends (about 1.8 s from now).
    let (status, _, body) = serve.json("GET", "/v1/stores", &[], b"");
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "answered in {:?}",
        started.elapsed()
    );
    let mut reply = Vec::new();
    let _ = holder.read_to_end(&mut reply);
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

/// One keyed push of 10 records on a new connection: `Some(status)`, or `None` when no reply
/// came (the server died or refused the connection).
fn keyed_push(port: u16, key: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head = format!(
        "POST /v1/stores/crash HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-ndjson\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    String::from_utf8_lossy(reply.get(9..12)?).parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_with_9_under_load_loses_no_acknowledged_push_and_keyed_retries_store_once()
{
    let redis = RedisServer::start();
    let mut serve = Serve::start(&redis.url(), &[]);
    let port = serve.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = |t: usize, n: usize| -> String {
        (0..10)
            .map(|i| format!("{{\"t\":{t},\"n\":{n},\"i\":{i}}}\n"))
            .collect()
    };
    // Each thread pushes keyed bodies until stopped: (key, body, answered 200).
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("k-{t}-{n}");
                    let text = body(t, n);
                    let status = keyed_push(port, &key, &text);
                    let dead = status.is_none();
                    sent.push((key, text, status == Some(200)));
                    n += 1;
                    if dead {
                        break;
                    }
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: Vec<(String, String, bool)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let acked = sent.iter().filter(|s| s.2).count() as u64;
    assert!(
        acked > 0 && sent.iter().any(|s| !s.2),
        "the kill hit no load: {} sent",
        sent.len()
    );
    // Nothing acknowledged is lost: every 200 is in Redis (unanswered pushes may be too).
    assert!(live_records(&redis, "crash").await >= acked * 10);
    // A new server; each client retries what got no 200 with its key: all stored exactly once.
    let serve = Serve::start(&redis.url(), &[]);
    for (key, text, answered) in &sent {
        if !answered {
            assert_eq!(keyed_push(serve.port, key, text), Some(200), "{key}");
        }
    }
    assert_eq!(live_records(&redis, "crash").await, sent.len() as u64 * 10);
}
