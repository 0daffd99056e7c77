//! `buffer-persist push` as operators run it: `--idempotent` run again after a failure, and
//! what a failed push says. Real `redis-server`s, a `FaultProxy` to lose a reply.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use buffer_core::Buffer;
use buffer_tests::{FaultProxy, RedisServer, eventually, free_port};

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// The records of the first test input: identical lines at different positions, and a line
/// with whitespace between its tokens.
const LINES: [&str; 6] = [
    r#"{"n":1}"#,
    r#"{"n":2}"#,
    r#"{"n":1}"#,
    r#"{ "n" : 3 }"#,
    r#"{"n":2}"#,
    r#"{"n":1}"#,
];

/// What the store must hold once `LINES` are pushed: each line once, in order, compact.
const STORED: [&str; 6] = [
    r#"{"n":1}"#,
    r#"{"n":2}"#,
    r#"{"n":1}"#,
    r#"{"n":3}"#,
    r#"{"n":2}"#,
    r#"{"n":1}"#,
];

fn input(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

fn push_command(url: &str, store: &str, flags: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["push", "--redis", url])
        .args(flags)
        .arg(store)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs `push` with `input` on stdin to its end.
fn push(url: &str, store: &str, flags: &[&str], input: &str) -> (Output, String) {
    let mut child = push_command(url, store, flags).spawn().unwrap();
    // A push that fails early may exit before reading all of it: that is not the test's error.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

async fn live_records(buffer: &Buffer, store: &str) -> u64 {
    buffer
        .stores()
        .await
        .unwrap()
        .iter()
        .find(|summary| summary.store.as_str() == store)
        .map_or(0, |summary| summary.records)
}

/// Every record of the store, in order (prepares the store into a batch).
async fn stored(buffer: &Buffer, store: &str) -> Vec<String> {
    let batch = buffer
        .prepare_to_persist(store, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let mut reader = buffer.reader(&batch);
    let mut records = Vec::new();
    while let Some(page) = reader.next_page().await.unwrap() {
        records.extend(page);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_push_run_twice_stores_each_line_once_and_the_second_run_finds_all_stored() {
    let server = RedisServer::start();
    let url = server.url();
    let flags = ["--idempotent", "--batch", "4"];

    let (first, stderr) = push(&url, "s", &flags, &input(&LINES));
    assert!(first.status.success(), "{stderr}");
    assert!(
        stderr.contains("pushed 6 new records to \"s\", 0 lines were already stored"),
        "{stderr}"
    );

    let (second, stderr) = push(&url, "s", &flags, &input(&LINES));
    assert!(second.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "pushed 0 new records to \"s\", 6 lines were already stored by an earlier run"
        ),
        "{stderr}"
    );

    let buffer = server.buffer().await;
    assert_eq!(stored(&buffer, "s").await, STORED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_push_cut_midway_then_run_again_stores_each_line_exactly_once() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let proxy = FaultProxy::start(server.port());
    let flags = ["--idempotent", "--batch", "1"];

    // Lines 1-3 land; then the connection is cut right after line 4's push is sent, so line 4
    // is applied but its reply lost, and the run stops there.
    let mut child = push_command(&proxy.url(), "s", &flags).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input(&LINES[..3]).as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            live_records(&buffer, "s").await == 3
        })
        .await,
        "lines 1-3 were pushed"
    );
    proxy.cut_after("EVALSHA");
    let _ = stdin.write_all(input(&LINES[3..]).as_bytes());
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(proxy.cuts(), 1);
    assert!(
        stderr.contains("line 4 may or may not be stored"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the lines before 4 are done: 3 stored by this run"),
        "{stderr}"
    );
    assert_eq!(live_records(&buffer, "s").await, 4, "line 4 was applied");

    // The same command again, straight to Redis: lines 1-4 are recognised, 5-6 stored.
    let (again, stderr) = push(&server.url(), "s", &flags, &input(&LINES));
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "pushed 2 new records to \"s\", 4 lines were already stored by an earlier run"
        ),
        "{stderr}"
    );
    assert_eq!(stored(&buffer, "s").await, STORED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_an_unknown_outcome_that_points_to_idempotent_not_nothing_stored() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let lines = input(&LINES[..2]);

    // A plain push: the reply of its first push is lost.
    proxy.cut_after("EVALSHA");
    let (output, stderr) = push(&proxy.url(), "plain", &["--batch", "2"], &lines);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("lines 1-2 may or may not be stored"),
        "{stderr}"
    );
    assert!(
        stderr.contains("push with --idempotent so that running it again is safe"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("nothing") && !stderr.contains("not stored"),
        "{stderr}"
    );

    // With --idempotent, the message says that running it again is safe.
    proxy.cut_after("EVALSHA");
    let (output, stderr) = push(
        &proxy.url(),
        "once",
        &["--batch", "2", "--idempotent"],
        &lines,
    );
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("lines 1-2 may or may not be stored"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Running the same command again on the same input is safe (--idempotent)"),
        "{stderr}"
    );
    assert_eq!(proxy.cuts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_not_confirmed_by_replicas_says_it_is_stored_on_the_master() {
    let server = RedisServer::start();
    let flags = ["--wait-replicas", "1", "--wait-replicas-timeout", "200ms"];
    let (output, stderr) = push(&server.url(), "s", &flags, &input(&LINES[..1]));
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "line 1 is stored on the master but not confirmed by replicas: a failover may still lose it"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("--idempotent"), "{stderr}");
    assert!(!stderr.contains("nothing"), "{stderr}");
    let buffer = server.buffer().await;
    assert_eq!(live_records(&buffer, "s").await, 1, "it is in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_printed_once_in_the_error_chain() {
    // Nobody listens on a free port.
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let (output, stderr) = push(&url, "s", &[], &input(&LINES[..1]));
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
}
