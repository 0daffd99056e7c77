//! `buffer-persist coalesce` and coalesced batches through the real binary: rules set,
//! listed and cleared; lines pushed merge into rows; a bad line refuses its whole push; drain
//! writes one row per entity in JSON Lines and CSV.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use buffer_tests::RedisServer;

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

fn run(server: &RedisServer, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .args(["--redis", &server.url()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(std::fs::read_to_string(path).unwrap());
    }
    out
}

const LINES: &str = r#"{"page":"/a","views":1,"seen":5,"refs":["x"]}
{"page":"/b","views":9007199254740993,"seen":1,"title":"B"}
{"page":"/a","views":2,"seen":3,"refs":["y","x"]}
{"page":"/b","views":9007199254740993,"seen":2}
"#;

#[test]
fn the_cli_sets_rules_merges_pushes_and_drains_one_row_per_entity() {
    let server = RedisServer::start();
    let set = run(
        &server,
        &[
            "coalesce", "set", "views", "--key", "page", "--sum", "views", "--max", "seen",
            "--union", "refs",
        ],
        "",
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert_eq!(
        text(&set.stdout).trim(),
        "views: key=page sum=views max=seen union=refs"
    );
    let list = run(&server, &["coalesce", "list"], "");
    assert!(
        text(&list.stdout).contains("views"),
        "{}",
        text(&list.stdout)
    );

    // A line a rule cannot take is refused (exit 2), naming line, field and rule; the
    // library refused the whole push, and the CLI pushed the other lines again.
    let bad = run(
        &server,
        &["push", "views"],
        "{\"page\":\"/a\",\"views\":1}\n{\"page\":\"/c\",\"views\":\"many\"}\n",
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let err = text(&bad.stderr);
    assert!(
        err.contains("line 2: field \"views\" (rule sum): not a number"),
        "{err}"
    );

    let push = run(&server, &["push", "views"], LINES);
    assert!(push.status.success(), "{}", text(&push.stderr));
    // Clearing the rules is refused while the store holds rows.
    let clear = run(&server, &["coalesce", "clear", "views"], "");
    assert!(!clear.status.success());
    assert!(
        text(&clear.stderr).contains("drain it first"),
        "{}",
        text(&clear.stderr)
    );

    let out = tempfile::tempdir().unwrap();
    let drain = run(
        &server,
        &["drain", "--out", out.path().to_str().unwrap()],
        "",
    );
    assert!(drain.status.success(), "{}", text(&drain.stderr));
    let jsonl = files(&out.path().join("views")).concat();
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{jsonl}"); // "/c" was never pushed
    let a = rows.iter().find(|r| r["page"] == "/a").unwrap();
    let b = rows.iter().find(|r| r["page"] == "/b").unwrap();
    assert_eq!(a["views"], 4);
    assert_eq!(a["seen"], 5);
    assert_eq!(a["refs"], serde_json::json!(["x", "y"]));
    assert_eq!(a["_writes"], 3);
    // 2 × (2^53 + 1), exact: a double would have rounded each term.
    assert!(jsonl.contains("\"views\":18014398509481986"), "{jsonl}");
    assert_eq!(b["title"], "B");

    // The same shape as CSV: a header of the batch's fields, one line per entity.
    run(&server, &["push", "views"], LINES);
    let csv_out = tempfile::tempdir().unwrap();
    let drain = run(
        &server,
        &[
            "drain",
            "--format",
            "csv",
            "--out",
            csv_out.path().to_str().unwrap(),
        ],
        "",
    );
    assert!(drain.status.success(), "{}", text(&drain.stderr));
    let csv = files(&csv_out.path().join("views")).concat();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].contains("_writes") && lines[0].contains("views"),
        "{csv}"
    );
    assert!(csv.contains("18014398509481986"), "{csv}");

    let clear = run(&server, &["coalesce", "clear", "views"], "");
    assert!(clear.status.success(), "{}", text(&clear.stderr));
    let list = run(&server, &["coalesce", "list"], "");
    assert!(text(&list.stdout).contains("(no coalescing stores)"));
}

/// Each entity's row, as DuckDB reads a file: `[page, views as text, _writes]`, sorted.
const DUCKDB_ROWS: &str = r#"
import json, sys
import duckdb
path, kind = sys.argv[1], sys.argv[2]
reader = {"jsonl": "read_json_auto", "csv": "read_csv_auto", "parquet": "read_parquet"}[kind]
rows = duckdb.connect().execute(
    f"SELECT page, CAST(views AS VARCHAR), CAST(_writes AS BIGINT) FROM {reader}(?) ORDER BY page",
    [path]).fetchall()
print(json.dumps([list(r) for r in rows]))
"#;

#[test]
fn duckdb_reads_one_row_per_entity_from_jsonl_csv_and_parquet() {
    let server = RedisServer::start();
    let set = run(
        &server,
        &[
            "coalesce", "set", "views", "--key", "page", "--sum", "views",
        ],
        "",
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    for format in ["jsonl", "csv", "parquet"] {
        let push = run(&server, &["push", "views"], LINES);
        assert!(push.status.success(), "{}", text(&push.stderr));
        let out = tempfile::tempdir().unwrap();
        let drain = run(
            &server,
            &[
                "drain",
                "--format",
                format,
                "--out",
                out.path().to_str().unwrap(),
            ],
            "",
        );
        assert!(drain.status.success(), "{}", text(&drain.stderr));
        let dir = out.path().join("views");
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let output = Command::new(buffer_tests::python::python())
            .arg("-c")
            .arg(DUCKDB_ROWS)
            .arg(&file)
            .arg(format)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            rows,
            serde_json::json!([["/a", "3", 2], ["/b", "18014398509481986", 2]]),
            "{format}"
        );
    }
}

/// A persister killed (abort at a failpoint: the effect of kill -9 at that step) at each step
/// of a coalesced batch, and Redis killed and restarted from its AOF (`appendfsync always`)
/// between merges pushed by 4 concurrent tasks: after recovery every entity's rows, over every file, add up to exactly
/// what was pushed (sums and write counts): nothing lost, nothing counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_crashes_and_a_redis_restart_lose_and_double_nothing() {
    let compiled_in = cfg!(feature = "failpoints");
    if !compiled_in {
        panic!(
            "this test needs buffer-persist built with --features failpoints (cargo test --workspace does that)"
        );
    }
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let set = run(
        &server,
        &["coalesce", "set", "c", "--key", "k", "--sum", "n"],
        "",
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    let out = tempfile::tempdir().unwrap();
    let mut expected: std::collections::BTreeMap<u64, (i128, u64)> = Default::default();
    let steps = [
        "after-prepare",
        "after-temp-write",
        "after-fsync",
        "after-link",
        "after-delete",
    ];
    for (round, step) in steps.iter().enumerate() {
        let mut buffer = server.buffer().await;
        for half in 0..2u64 {
            let records: Vec<serde_json::Value> = (0..100u64)
                .map(|i| {
                    let k = (i + half) % 13;
                    let n: i64 = if k == 0 { (1 << 53) + 1 } else { i as i64 };
                    let e = expected.entry(k).or_default();
                    e.0 += i128::from(n);
                    e.1 += 1;
                    serde_json::json!({"k": k, "n": n})
                })
                .collect();
            // From 4 tasks at once, so the pushes go in group commits (coalesce_group.rs).
            futures::future::join_all(records.chunks(25).map(|chunk| {
                let buffer = buffer.clone();
                let chunk = chunk.to_vec();
                async move { buffer.push_many("c", &chunk).await.unwrap() }
            }))
            .await;
            if half == 0 && round % 2 == 0 {
                // Redis dies between merges; the merged rows come back from the AOF.
                server.restart();
                buffer = server.buffer().await;
            }
        }
        drop(buffer);
        let crashed = Command::new(BINARY)
            .args([
                "drain",
                "--redis",
                &server.url(),
                "--lock-ttl",
                "300ms",
                "--out",
            ])
            .arg(out.path())
            .env("BUFFER_FAILPOINT", step)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "the persister crashed at {step}");
        let recovered = Command::new(BINARY)
            .args([
                "drain",
                "--redis",
                &server.url(),
                "--lock-ttl",
                "300ms",
                "--wait",
                "10s",
                "--out",
            ])
            .arg(out.path())
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(recovered.status.success(), "{}", text(&recovered.stderr));
    }
    let mut seen: std::collections::BTreeMap<u64, (i128, u64)> = Default::default();
    let dir = out.path().join("c");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with('.') {
            continue; // a temporary file left by a crash, never published
        }
        let mut in_file = std::collections::BTreeSet::new();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let k = row["k"].as_u64().unwrap();
            assert!(in_file.insert(k), "entity {k} twice in {}", path.display());
            let e = seen.entry(k).or_default();
            e.0 += row["n"].to_string().parse::<i128>().unwrap();
            e.1 += row["_writes"].as_u64().unwrap();
        }
    }
    assert_eq!(seen, expected);
}

/// Bad input through the CLI: an unknown rule (`--avg`), rules for a store holding appended
/// records, and a line whose key is an object are each refused with an error naming what was
/// wrong, and change nothing in Redis.
#[test]
fn bad_input_through_the_cli_is_named_and_changes_nothing() {
    let server = RedisServer::start();
    let unknown = run(
        &server,
        &[
            "coalesce", "set", "views", "--key", "page", "--avg", "views",
        ],
        "",
    );
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown.stderr));
    assert!(
        text(&unknown.stderr).contains("--avg"),
        "{}",
        text(&unknown.stderr)
    );
    assert!(server.all_keys().is_empty(), "{:?}", server.all_keys());

    let push = run(
        &server,
        &["push", "plain"],
        "{\"page\":\"/\",\"views\":1}\n",
    );
    assert!(push.status.success(), "{}", text(&push.stderr));
    let keys = server.all_keys();
    let set = run(
        &server,
        &[
            "coalesce", "set", "plain", "--key", "page", "--sum", "views",
        ],
        "",
    );
    assert!(!set.status.success());
    let err = text(&set.stderr);
    assert!(
        err.contains("plain") && err.contains("1 live record") && err.contains("drain it first"),
        "{err}"
    );
    assert_eq!(server.all_keys(), keys, "nothing written");
    let list = run(&server, &["coalesce", "list"], "");
    assert!(text(&list.stdout).contains("(no coalescing stores)"));

    let set = run(
        &server,
        &[
            "coalesce", "set", "views", "--key", "page", "--sum", "views",
        ],
        "",
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    let keys = server.all_keys();
    let object = run(
        &server,
        &["push", "views"],
        "{\"page\":{\"path\":\"/\"},\"views\":1}\n",
    );
    assert_eq!(object.status.code(), Some(2), "{}", text(&object.stderr));
    let err = text(&object.stderr);
    assert!(
        err.contains("line 1: field \"page\" (rule key)")
            && err.contains("the key must be a string or an integer"),
        "{err}"
    );
    assert_eq!(server.all_keys(), keys, "nothing merged");
}
