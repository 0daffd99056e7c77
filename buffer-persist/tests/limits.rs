//! `buffer-persist limits` and `push` under limits, as operators run the real binary.

use buffer_tests::CommandWithin;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use buffer_core::StoreLimits;
use buffer_tests::RedisServer;

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

fn limits_command(server: &RedisServer, args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("limits")
        .args(args)
        .args(["--redis", &server.url()])
        .env("RUST_LOG", "warn")
        .output_in_time()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn push_lines(server: &RedisServer, store: &str, batch: usize, lines: &str) -> Output {
    let mut child = Command::new(BINARY)
        .args(["push", "--redis", &server.url(), "--batch"])
        .arg(batch.to_string())
        .arg(store)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_round_trip_through_the_cli_and_the_library() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;

    let set = limits_command(
        &server,
        &[
            "set",
            "orders",
            "--max-records",
            "1000",
            "--max-bytes",
            "1MiB",
            "--max-rate",
            "50/s",
        ],
    );
    assert!(set.status.success(), "{set:?}");
    assert_eq!(
        buffer.limits("orders").await.unwrap(),
        Some(StoreLimits {
            max_records: Some(1000),
            max_bytes: Some(1 << 20),
            max_rate: Some(50),
        })
    );
    // Set by the library, listed by the CLI.
    let clicks = StoreLimits {
        max_rate: Some(7),
        ..Default::default()
    };
    buffer.set_limits("clicks", clicks).await.unwrap();
    let list = limits_command(&server, &["list"]);
    assert!(list.status.success(), "{list:?}");
    let table = stdout(&list);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["clicks", "-", "-", "7/s"],
            vec!["orders", "1000", "1048576", "50/s"]
        ],
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&limits_command(&server, &["list", "--json"]))).unwrap();
    assert_eq!(json[0]["store"], "clicks");
    assert_eq!(json[0]["max_rate"], 7);
    assert_eq!(json[1]["max_bytes"], 1 << 20);

    let clear = limits_command(&server, &["clear", "orders"]);
    assert!(clear.status.success(), "{clear:?}");
    assert_eq!(buffer.limits("orders").await.unwrap(), None);
    let list = stdout(&limits_command(&server, &["list"]));
    assert!(
        !list.contains("orders") && list.contains("clicks"),
        "{list}"
    );

    // Nothing to set, or a rate that is not one, is refused naming the problem.
    let empty = limits_command(&server, &["set", "orders"]);
    assert_eq!(empty.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("--max-records"),
        "{empty:?}"
    );
    let bad = limits_command(&server, &["set", "orders", "--max-rate", "fast"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("fast"),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_exits_3_naming_the_store_and_limit_and_lands_the_lines_not_refused() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer
        .set_limits(
            "orders",
            StoreLimits {
                max_records: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Batches of two: lines 1-2 and 3-4 land, 5-6 would make six records and are refused
    // whole, 7 still fits.
    let lines: String = (1..=7).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let output = push_lines(&server, "orders", 2, &lines);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("lines 5-6 refused") && stderr.contains("\"orders\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("max-records is 5, the store holds 4 records and the push adds 2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pushed 5 records") && stderr.contains("2 by a limit"),
        "{stderr}"
    );
    let mut reader = buffer.reader(
        &buffer
            .prepare_to_persist("orders", std::time::Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap(),
    );
    let page = reader.next_page().await.unwrap().unwrap();
    assert_eq!(
        page,
        [
            "{\"n\":1}",
            "{\"n\":2}",
            "{\"n\":3}",
            "{\"n\":4}",
            "{\"n\":7}"
        ]
    );

    // Without a limit refusal, a push exits 0.
    let output = push_lines(&server, "free", 2, "{\"n\":1}\n");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}
