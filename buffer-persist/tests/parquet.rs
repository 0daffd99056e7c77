//! `--format parquet`: the type mapping, the codecs, bounded memory, exactly-once after a
//! crash, and Hive-style partitions, each read back the way users read them: pyarrow and
//! DuckDB (from the test venv, `buffer_tests::python`), against real `redis-server`s.

use buffer_tests::CommandWithin;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use buffer_core::{Buffer, ManualClock};
use buffer_persist::{Compression, Format, PersistConfig, Persister};
use buffer_tests::{PeakRun, RedisServer, files_under, push_mixed_size_batch, wait_with_peak_rss};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// Runs `script` with the venv's Python, `args` as `sys.argv[1..]`, and reads the JSON it
/// prints.
fn python_json(script: &str, args: &[&str]) -> Value {
    let output = Command::new(buffer_tests::python::python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output_in_time();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "python printed no JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// pyarrow's view of a file: column types, each column's codec in the first row group, the
/// number of row groups, and the rows.
const PYARROW_READ: &str = r#"
import json, sys
import pyarrow.parquet as pq
path = sys.argv[1]
table = pq.read_table(path)
meta = pq.ParquetFile(path).metadata
print(json.dumps({
    "types": {f.name: str(f.type) for f in table.schema},
    "encoding": {f.name: (f.metadata or {}).get(b"buffer.encoding", b"").decode() for f in table.schema},
    "codecs": sorted({meta.row_group(0).column(i).compression for i in range(meta.num_columns)}),
    "row_groups": meta.num_row_groups,
    "rows": table.to_pylist(),
}))
"#;

/// DuckDB's view of a file: column types and rows (as JSON values).
const DUCKDB_READ: &str = r#"
import json, sys
import duckdb
con = duckdb.connect()
path = sys.argv[1]
types = {name: kind for name, kind, *_ in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()}
cursor = con.execute("SELECT * FROM read_parquet(?)", [path])
names = [d[0] for d in cursor.description]
rows = [dict(zip(names, row)) for row in cursor.fetchall()]
print(json.dumps({"types": types, "rows": rows}))
"#;

fn parquet_config(out: &Path, compression: Compression) -> PersistConfig {
    let mut config = PersistConfig::new(out);
    config.format = Format::Parquet;
    config.compression = compression;
    config
}

/// The batch files under `out` (the marker aside), temporary ones included.
fn batch_files(out: &Path) -> Vec<PathBuf> {
    files_under(out)
        .into_iter()
        .filter(|p| p.file_name().unwrap() != buffer_persist::MARKER_FILE)
        .collect()
}

/// The published batch files under `out` (temporary names start with `.`).
fn published_files(out: &Path) -> Vec<PathBuf> {
    batch_files(out)
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
        .collect()
}

fn only_file(out: &Path) -> PathBuf {
    let files = batch_files(out);
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

async fn drain(buffer: &Buffer, config: PersistConfig) {
    let report = Persister::new(buffer.clone(), config)
        .drain()
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_type_maps_to_its_column_type_and_reads_back_in_pyarrow_and_duckdb() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    // One key per case of the mapping (docs/outputs.md, "Parquet files"). Texts, not `json!`, so numbers
    // reach Redis with exactly these digits.
    let records = [
        r#"{"int":1,"num":1,"flag":true,"text":"plain","nulls":null,"mixed":1,"nested":{"a":[1,2]},"big":18446744073709551616,"pi":3.14159265358979323846264338,"only_first":"x","pair":1}"#,
        r#"{"int":-9223372036854775808,"num":2.5,"flag":false,"text":"é \"quoted\"\n","nulls":null,"mixed":"1","nested":[true,null],"big":1,"pi":1.5,"pair":"one"}"#,
        r#"{"int":9223372036854775807,"num":-1e-3,"flag":null,"text":null,"nulls":null,"mixed":true,"nested":"s","big":2,"pi":2}"#,
    ];
    buffer.push_json("typed", &records).await.unwrap();
    drain(&buffer, parquet_config(out.path(), Compression::None)).await;
    let file = only_file(out.path());
    assert_eq!(file.extension().unwrap(), "parquet");
    let path = file.to_str().unwrap();

    let arrow = python_json(PYARROW_READ, &[path]);
    assert_eq!(
        arrow["types"],
        json!({
            "big": "string", "flag": "bool", "int": "int64", "mixed": "string",
            "nested": "string", "nulls": "string", "num": "double", "only_first": "string",
            "pair": "string", "pi": "string", "text": "string",
        })
    );
    // The text columns that hold JSON say so; plain strings do not.
    assert_eq!(arrow["encoding"]["mixed"], "json");
    assert_eq!(arrow["encoding"]["pair"], "json");
    assert_eq!(arrow["encoding"]["text"], "");
    assert_eq!(
        arrow["rows"],
        json!([
            {"big": "18446744073709551616", "flag": true, "int": 1, "mixed": "1",
             "nested": "{\"a\":[1,2]}", "nulls": null, "num": 1.0, "only_first": "x", "pair": "1",
             "pi": "3.14159265358979323846264338", "text": "plain"},
            {"big": "1", "flag": false, "int": -9223372036854775808i64, "mixed": "\"1\"",
             "nested": "[true,null]", "nulls": null, "num": 2.5, "only_first": null, "pair": "\"one\"",
             "pi": "1.5", "text": "é \"quoted\"\n"},
            {"big": "2", "flag": null, "int": 9223372036854775807i64, "mixed": "true",
             "nested": "\"s\"", "nulls": null, "num": -0.001, "only_first": null, "pair": null,
             "pi": "2", "text": null},
        ])
    );

    let duck = python_json(DUCKDB_READ, &[path]);
    assert_eq!(duck["types"]["int"], "BIGINT");
    assert_eq!(duck["types"]["num"], "DOUBLE");
    assert_eq!(duck["types"]["flag"], "BOOLEAN");
    assert_eq!(duck["types"]["mixed"], "VARCHAR");
    assert_eq!(
        duck["rows"], arrow["rows"],
        "DuckDB reads what pyarrow reads"
    );
    assert!(
        server.buffer_keys().is_empty(),
        "{:?}",
        server.buffer_keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_picks_the_parquet_column_codec_and_the_name_stays_dot_parquet() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    for (compression, codec) in [
        (Compression::None, "UNCOMPRESSED"),
        (Compression::Gzip, "GZIP"),
        (Compression::Zstd, "ZSTD"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let records: Vec<Value> = (0..1000)
            .map(|id| json!({"id": id, "word": format!("word {}", id % 7)}))
            .collect();
        buffer.push_many("codec", &records).await.unwrap();
        drain(&buffer, parquet_config(out.path(), compression)).await;
        let file = only_file(out.path());
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(".parquet"), "{compression}: {name}");
        let read = python_json(PYARROW_READ, &[file.to_str().unwrap()]);
        assert_eq!(read["codecs"], json!([codec]), "{compression}");
        assert_eq!(read["rows"], json!(records), "{compression}");
        let marker = std::fs::read_to_string(out.path().join(buffer_persist::MARKER_FILE)).unwrap();
        assert_eq!(
            marker,
            format!("format=parquet\ncompression={compression}\ncsv-max-columns=1024\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_and_one_distinct_keys_become_capped_columns_and_a_rest_column() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    let keys = 20_001u32;
    let records: Vec<Value> = (0..keys)
        .map(|n| json!({format!("k{n:05}"): n, "_rest": "a key named like the rest column"}))
        .collect();
    for chunk in records.chunks(1000) {
        buffer.push_many("wide", chunk).await.unwrap();
    }
    drain(&buffer, parquet_config(out.path(), Compression::Zstd)).await;
    let file = only_file(out.path());
    // Rebuild every record from its named columns and the rest column's JSON object.
    let script = r#"
import json, sys
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
names = table.schema.names
rest = names[-1]
records = []
for row in table.to_pylist():
    record = {k: v for k, v in row.items() if k != rest and v is not None}
    record.update(json.loads(row[rest]) if row[rest] else {})
    records.append(record)
print(json.dumps({"columns": len(names), "rest": rest, "records": records}))
"#;
    let read = python_json(script, &[file.to_str().unwrap()]);
    assert_eq!(
        read["columns"],
        json!(buffer_persist::DEFAULT_CSV_MAX_COLUMNS + 1)
    );
    // The batch has a key `_rest`: the trailing column takes another name.
    assert_eq!(read["rest"], "_rest_");
    assert_eq!(read["records"], json!(records));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duckdb_recipe_reads_hive_partitions_of_parquet_and_jsonl_with_their_counts() {
    let server = RedisServer::start();
    // 2024-02-29T22:59:59.000Z; the second round of batches is first written two hours later.
    let clock = ManualClock::new(1_709_247_599_000);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    let template = "store={store}/dt={date}/hour={hour}/{batch}.{ext}";
    for format in [Format::Parquet, Format::JsonLines] {
        clock.set_ms(1_709_247_599_000);
        let out = tempfile::tempdir().unwrap();
        let mut config = PersistConfig::new(out.path());
        config.format = format;
        config.compression = Compression::Zstd;
        config.path_template = template.to_owned();
        // Round one: 3 orders and 4 clicks at 22:59:59; a record pushed an hour later to a
        // store whose batch is already open stays in that batch's partition.
        let push = |store: &'static str, n: u32| {
            let buffer = buffer.clone();
            async move {
                let records: Vec<Value> = (0..n).map(|i| json!({"n": i, "kind": store})).collect();
                buffer.push_many(store, &records).await.unwrap();
            }
        };
        push("orders", 3).await;
        push("clicks", 4).await;
        clock.advance_ms(3_600_000);
        push("orders", 1).await;
        drain(&buffer, config.clone()).await;
        // Round two, first written at 00:59:59 the next day (2024-03-01).
        clock.advance_ms(3_600_000);
        push("orders", 5).await;
        drain(&buffer, config.clone()).await;

        let reader = match format {
            Format::Parquet => "read_parquet",
            _ => "read_json_auto",
        };
        let glob = format!("{}/**/*.{}", out.path().display(), config_ext(format));
        let script = format!(
            r#"
import json, sys
import duckdb
rows = duckdb.connect().execute(
    "SELECT store, CAST(dt AS VARCHAR), CAST(hour AS INTEGER), count(*), count(DISTINCT kind) "
    "FROM {reader}(?, hive_partitioning = 1) GROUP BY ALL ORDER BY ALL", [sys.argv[1]]).fetchall()
print(json.dumps(rows))
"#
        );
        assert_eq!(
            python_json(&script, &[&glob]),
            json!([
                ["clicks", "2024-02-29", 22, 4, 1],
                ["orders", "2024-02-29", 22, 4, 1],
                ["orders", "2024-03-01", 0, 5, 1],
            ]),
            "{format}"
        );
    }
}

fn config_ext(format: Format) -> &'static str {
    match format {
        Format::Parquet => "parquet",
        _ => "jsonl.zst",
    }
}

fn drain_command(server: &RedisServer, out: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["drain", "--redis", &server.url(), "--out"])
        .arg(out)
        .args(["--format", "parquet", "--compress", "zstd"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_mixed_size_batch_drains_to_parquet_in_bounded_memory() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    // As the JSON Lines test in process.rs: 200 000 tiny records, then 40 records of 4 MiB in
    // the same 160 MiB batch. The Parquet encoder holds a few copies of the largest value on
    // top of the reader's two pages (the Arrow array, the encoded page, the compressor's window,
    // its statistics), so its bound is 128 MiB where JSON Lines' is 64 MiB: still far below
    // the batch, which is never held whole. About 70 MiB is measured with the binary's fixed
    // mmap threshold (main.rs); glibc's default one made it 110-190 MiB from run to run.
    push_mixed_size_batch(&buffer, "mixed").await;
    let tiny = buffer_tests::MIXED_TINY_RECORDS;

    let PeakRun {
        status,
        peak_kib,
        stderr,
    } = wait_with_peak_rss(drain_command(&server, out.path()).spawn().unwrap());
    assert!(status.success(), "drain failed: {stderr}");
    assert!(peak_kib > 0, "the drain's memory was never read");
    eprintln!("parquet drain peak RSS: {peak_kib} KiB");
    assert!(
        peak_kib <= 128 * 1024,
        "drain peaked at {} MiB",
        peak_kib / 1024
    );

    let file = only_file(out.path());
    let script = r#"
import json, sys
import duckdb
con = duckdb.connect()
print(json.dumps(con.execute(
    "SELECT count(*), count(DISTINCT id), min(id), max(id), count(blob), sum(length(blob)) "
    "FROM read_parquet(?)", [sys.argv[1]]).fetchone()))
"#;
    assert_eq!(
        python_json(script, &[file.to_str().unwrap()]),
        json!([tiny + 40, tiny + 40, 0, tiny + 39, 40, 40 * 4 * 1024 * 1024])
    );
    let groups = python_json(PYARROW_READ_META, &[file.to_str().unwrap()]);
    // The file is written row group by row group, never held whole.
    assert!(groups["row_groups"].as_u64().unwrap() >= 2, "{groups}");
    assert!(server.buffer_keys().is_empty());
}

/// The number of row groups of a file, without reading its rows.
const PYARROW_READ_META: &str = r#"
import json, sys
import pyarrow.parquet as pq
print(json.dumps({"row_groups": pq.ParquetFile(sys.argv[1]).metadata.num_row_groups}))
"#;

/// The publisher compares an earlier attempt's file with its own byte for byte: a crash right
/// after publishing leaves the file and the batch, and the next drain must recognise the file
/// as this batch's (not a conflict), empty the batch, and leave exactly one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_publishing_a_parquet_file_is_recovered_exactly_once() {
    // Failpoints are compiled in by `cargo test --workspace` (or `--features failpoints`);
    // say so plainly instead of failing obscurely.
    let compiled_in = cfg!(feature = "failpoints");
    if !compiled_in {
        panic!(
            "this test needs buffer-persist built with --features failpoints (cargo test --workspace does that)"
        );
    }
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    let records: Vec<Value> = (0..3000)
        .map(|id| json!({"id": id, "v": if id % 2 == 0 { json!(id) } else { json!("odd") }}))
        .collect();
    buffer.push_many("crash", &records).await.unwrap();
    let status = drain_command(&server, out.path())
        .args(["--lock-ttl", "300ms"])
        .env("BUFFER_FAILPOINT", "after-link")
        .status_in_time();
    assert!(!status.success(), "the persister crashed after the link");
    let published = published_files(out.path());
    assert_eq!(published.len(), 1, "{published:?}");
    let published = published.into_iter().next().unwrap();
    let first = std::fs::read(&published).unwrap();
    assert!(!server.buffer_keys().is_empty(), "the batch is still there");

    let output = drain_command(&server, out.path())
        .args(["--lock-ttl", "300ms", "--wait", "10s"])
        .output_in_time();
    assert!(
        output.status.success(),
        "the recovery drain failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Published once, and the crashed attempt's temporary file is gone.
    assert_eq!(only_file(out.path()), published);
    assert_eq!(std::fs::read(&published).unwrap(), first, "not rewritten");
    assert!(
        server.buffer_keys().is_empty(),
        "{:?}",
        server.buffer_keys()
    );
    let read = python_json(PYARROW_READ, &[published.to_str().unwrap()]);
    let expected: Vec<Value> = records
        .iter()
        .map(|r| json!({"id": r["id"], "v": r["v"].to_string()}))
        .collect();
    assert_eq!(read["rows"], json!(expected));
}

/// The LRANGE calls `server` has run so far.
fn lranges(server: &RedisServer) -> u64 {
    buffer_tests::command_stats(&mut server.conn())
        .get("lrange")
        .map_or(0, |stat| stat.calls)
}

/// Pushes `records` into `store` and drains it with a buffer reading pages of `page_size`
/// records into `out` as `format`: the LRANGE calls the drain made.
async fn drain_paged(
    server: &RedisServer,
    store: &str,
    records: &[String],
    page_size: usize,
    out: &Path,
    format: Format,
) -> u64 {
    let buffer = Buffer::connect(server.config().page_size(page_size))
        .await
        .unwrap();
    buffer.push_json(store, records).await.unwrap();
    let mut config = parquet_config(out, Compression::Zstd);
    config.format = format;
    let before = lranges(server);
    drain(&buffer, config).await;
    lranges(server) - before
}

/// The column types come from the batch's first page, which is then written first, so a
/// Parquet batch is read from Redis once, as a JSON Lines one. A value after the first page
/// that the whole batch would type otherwise (a decimal in an integer column) starts the
/// file again with the whole batch's types: the file is exactly the one a batch read in one
/// page gives, whatever the paging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_reads_a_batch_once_and_a_type_change_after_the_first_page_rewrites_it_whole() {
    let server = RedisServer::start();
    let integers: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"id":{i},"v":{}}}"#, i * 2))
        .collect();
    let jsonl = tempfile::tempdir().unwrap();
    let read_once = drain_paged(
        &server,
        "a",
        &integers,
        100,
        jsonl.path(),
        Format::JsonLines,
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let reads = drain_paged(&server, "b", &integers, 100, out.path(), Format::Parquet).await;
    assert_eq!(
        reads, read_once,
        "Parquet read the batch more than JSON Lines did"
    );
    let read = python_json(PYARROW_READ, &[only_file(out.path()).to_str().unwrap()]);
    assert_eq!(read["types"]["v"], "int64");

    // Record 950 (page 10 of 10) holds a decimal: `v` is Float64 for the whole batch.
    let mut changed = integers.clone();
    changed[950] = r#"{"id":950,"v":0.5}"#.into();
    let paged = tempfile::tempdir().unwrap();
    let reads = drain_paged(&server, "c", &changed, 100, paged.path(), Format::Parquet).await;
    assert!(reads > read_once, "no second read ({reads} LRANGEs)");
    let whole = tempfile::tempdir().unwrap();
    drain_paged(&server, "d", &changed, 5000, whole.path(), Format::Parquet).await;
    // Only the published file: the first attempt's temporary file is gone.
    let paged_file = only_file(paged.path());
    assert!(
        std::fs::read(&paged_file).unwrap() == std::fs::read(only_file(whole.path())).unwrap(),
        "the rewritten file differs from the one-page batch's"
    );
    let read = python_json(PYARROW_READ, &[paged_file.to_str().unwrap()]);
    assert_eq!(read["types"]["v"], "double");
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[950], json!({"id": 950, "v": 0.5}));
    assert_eq!(rows[999], json!({"id": 999, "v": 1998.0}));
    assert!(
        server.buffer_keys().is_empty(),
        "{:?}",
        server.buffer_keys()
    );
}
