//! The persister end to end: real redis-server, real files, real processes.

use buffer_tests::CommandWithin;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use buffer_core::{Buffer, ManualClock, StoreName};
use buffer_persist::{
    BatchOutcome, Compression, FileSink, Format, PersistConfig, Persister, open_decoded,
};
use buffer_tests::{RedisServer, eventually, files_under, output_records};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "persist/actions.rs"]
mod actions;

fn config(out: &Path) -> PersistConfig {
    let mut config = PersistConfig::new(out);
    config.interval = Duration::from_millis(50);
    config.max_age = Duration::from_millis(200);
    config.max_records = Some(500);
    config.lock_ttl = Duration::from_secs(5);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_records_over_twenty_stores_land_exactly_once() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    let persister = Persister::new(buffer.clone(), config(out.path()));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let persister = persister.clone();
        let shutdown = shutdown.clone();
        async move { persister.run(shutdown).await }
    });
    let stores = 20;
    let total = 50_000;
    let mut producers = Vec::new();
    for p in 0..10 {
        let buffer = buffer.clone();
        producers.push(tokio::spawn(async move {
            // Producer p pushes the ids i ≡ p (mod 10), to store i mod 20, 25 records a call.
            let mut pending: HashMap<usize, Vec<Value>> = HashMap::new();
            for i in (p..total).step_by(10) {
                let store = i % stores;
                let chunk = pending.entry(store).or_default();
                chunk.push(
                    json!({"id": i, "store": format!("store-{store}"), "pad": "p".repeat(i % 50)}),
                );
                if chunk.len() == 25 {
                    let records = std::mem::take(chunk);
                    buffer
                        .push_many(format!("store-{store}"), &records)
                        .await
                        .unwrap();
                }
            }
            for (store, records) in pending {
                if !records.is_empty() {
                    buffer
                        .push_many(format!("store-{store}"), &records)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let report = persister.drain().await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    let output = output_records(out.path());
    let mut ids: Vec<u64> = Vec::new();
    for (dir, records) in &output {
        let store = dir.file_name().unwrap().to_string_lossy().to_string();
        for record in records {
            assert_eq!(
                record["store"],
                json!(store),
                "record in its store's directory"
            );
            ids.push(record["id"].as_u64().unwrap());
        }
    }
    assert_eq!(output.len(), stores);
    ids.sort_unstable();
    let persisted = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), persisted, "no duplicates");
    assert_eq!(ids, (0..total as u64).collect::<Vec<_>>(), "every record");
    assert!(
        server.buffer_keys().is_empty(),
        "no buffer keys left: {:?}",
        server.buffer_keys()
    );
    let stats = persister.stats();
    assert_eq!(stats.records_persisted, total as u64);
    assert!(
        stats.batches_persisted > stores as u64,
        "thresholds made many batches: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_store_is_flushed_on_age_alone() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    buffer.push("quiet", &json!({"a": 1})).await.unwrap();
    let mut config = config(out.path());
    config.max_age = Duration::from_secs(60);
    config.max_records = None;
    let persister = Persister::new(buffer.clone(), config);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let persister = persister.clone();
        let shutdown = shutdown.clone();
        async move { persister.run(shutdown).await }
    });
    // Polls pass at 59 s of age (the lag gauge shows one ran after the clock moved): nothing
    // is flushed.
    clock.advance_ms(59_000);
    assert!(
        eventually(Duration::from_secs(10), || async {
            persister.stats().oldest_store_age_ms >= 59_000
        })
        .await,
        "lag gauge follows the oldest store"
    );
    let polls = persister.stats().polls;
    assert!(
        eventually(Duration::from_secs(10), || async {
            persister.stats().polls >= polls + 2
        })
        .await,
        "more polls ran at 59 s of age"
    );
    assert_eq!(persister.stats().batches_persisted, 0);
    // It announces its thresholds, so a dashboard can count down to the age flush.
    let announced = buffer.persisters(Duration::from_secs(60)).await.unwrap();
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0].max_age, Duration::from_secs(60));
    assert_eq!(announced[0].holder, buffer.holder_id());
    clock.advance_ms(2_000);
    assert!(
        eventually(Duration::from_secs(10), || async {
            persister.stats().batches_persisted == 1
        })
        .await
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert!(
        buffer
            .persisters(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "retired on clean exit"
    );
    let output = output_records(out.path());
    assert_eq!(
        output.values().flatten().collect::<Vec<_>>(),
        [&json!({"a": 1})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_gzip_and_zstd_hold_the_same_records() {
    let server = RedisServer::start();
    let records: Vec<Value> = (0..300)
        .map(|i| json!({"id": i, "name": format!("n,\"{i}\"\n"), "nested": {"x": i}, "opt": if i % 3 == 0 { Value::Null } else { json!(i * 2) }}))
        .collect();
    let mut outputs = HashMap::new();
    for (ns, format, compression) in [
        ("plain", Format::JsonLines, Compression::None),
        ("gz", Format::JsonLines, Compression::Gzip),
        ("zst", Format::JsonLines, Compression::Zstd),
        ("csv", Format::Csv, Compression::None),
        ("csvzst", Format::Csv, Compression::Zstd),
    ] {
        let buffer = Buffer::connect(server.config().namespace(ns))
            .await
            .unwrap();
        buffer.push_many("s", &records).await.unwrap();
        // A second record shape in the same batch: CSV columns are the union of keys.
        buffer.push("s", &json!({"extra": true})).await.unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut config = PersistConfig::new(out.path());
        config.format = format;
        config.compression = compression;
        let report = Persister::new(buffer, config).drain().await.unwrap();
        assert_eq!((report.batches, report.records), (1, 301));
        let files: Vec<PathBuf> = files_under(out.path())
            .into_iter()
            .filter(|p| !p.ends_with(buffer_persist::MARKER_FILE))
            .collect();
        assert_eq!(files.len(), 1);
        let suffix = format!(".{}{}", format.extension(), compression.suffix());
        assert!(files[0].to_string_lossy().ends_with(&suffix), "{files:?}");
        let mut bytes = Vec::new();
        open_decoded(&files[0])
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        outputs.insert(ns, bytes);
        drop(out);
    }
    assert_eq!(
        outputs["gz"], outputs["plain"],
        "gzip decompresses to the plain bytes"
    );
    assert_eq!(
        outputs["zst"], outputs["plain"],
        "zstd decompresses to the plain bytes"
    );
    assert_eq!(outputs["csvzst"], outputs["csv"]);

    let mut reader = csv::Reader::from_reader(outputs["csv"].as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        ["extra", "id", "name", "nested", "opt"],
        "sorted unique keys"
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 301);
    for (row, record) in rows.iter().zip(&records) {
        assert_eq!(&row[0], "");
        assert_eq!(&row[1], record["id"].to_string());
        assert_eq!(
            &row[2],
            record["name"].as_str().unwrap(),
            "strings survive quoting"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&row[3]).unwrap(),
            record["nested"]
        );
        let opt = if record["opt"].is_null() {
            String::new()
        } else {
            record["opt"].to_string()
        };
        assert_eq!(&row[4], opt);
    }
    assert_eq!(&rows[300][0], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_store_names_write_only_under_out() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("a").join("out");
    let names = [
        "../../etc/x",
        "/",
        ".",
        "..",
        "..\\..\\x",
        "ünï/cødé",
        "~",
        &"../".repeat(85),
    ];
    for name in names {
        buffer.push(name, &json!({"name": name})).await.unwrap();
    }
    let report = Persister::new(buffer, PersistConfig::new(&out))
        .drain()
        .await
        .unwrap();
    assert_eq!(report.batches, names.len() as u64);
    let all = files_under(root.path());
    for path in &all {
        assert!(path.starts_with(&out), "{} escaped", path.display());
    }
    let output = output_records(&out);
    let mut seen: Vec<String> = output
        .values()
        .flatten()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    for (dir, records) in output {
        let store = StoreName::new(records[0]["name"].as_str().unwrap()).unwrap();
        assert_eq!(dir, buffer_persist::store_dir(&out, &store));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_out_is_a_clear_error_and_the_batch_stays() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.push("s", &json!({"a": 1})).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    // A file where the store's directory should be: creating the directory fails (this works
    // when the tests run as root, where permission bits would not stop anything).
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("s"), "in the way").unwrap();
    let report = Persister::new(buffer.clone(), PersistConfig::new(&out))
        .drain()
        .await
        .unwrap();
    assert_eq!(report.batches, 0);
    assert_eq!(report.failures.len(), 1);
    assert!(
        report.failures[0].contains("create directory"),
        "{:?}",
        report.failures
    );
    assert!(
        report.failures[0].contains(&out.join("s").display().to_string()),
        "{:?}",
        report.failures
    );
    let prepared = buffer.get_prepared().await.unwrap();
    assert_eq!(prepared.len(), 1, "the batch stays in Redis");
    assert_eq!(
        buffer
            .batch_info(&prepared[0].store, &prepared[0].id)
            .await
            .unwrap()
            .unwrap()
            .records,
        1
    );

    // An output path that is a file is refused before anything is prepared.
    let file_out = root.path().join("file");
    std::fs::write(&file_out, "x").unwrap();
    let err = Persister::new(buffer.clone(), PersistConfig::new(&file_out))
        .drain()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is a file, not a directory"),
        "{err}"
    );

    // Once the way is clear, the batch is written exactly once.
    std::fs::remove_file(out.join("s")).unwrap();
    let report = Persister::new(buffer.clone(), PersistConfig::new(&out))
        .drain()
        .await
        .unwrap();
    assert_eq!((report.batches, report.records), (1, 1));
    assert_eq!(output_records(&out).values().flatten().count(), 1);
}

/// A sink that accepts `capacity` bytes, then fails like a full disk.
struct FullDisk {
    file: std::fs::File,
    left: Arc<AtomicU64>,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device",
            ));
        }
        let n = (buf.len() as u64).min(left) as usize;
        self.left.fetch_sub(n as u64, Ordering::SeqCst);
        self.file.write(&buf[..n])
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl FileSink for FullDisk {
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_the_batch_and_publishes_nothing() {
    let server = RedisServer::start();
    let buffer = Buffer::connect(server.config().page_size(100))
        .await
        .unwrap();
    let records: Vec<Value> = (0..2000)
        .map(|i| json!({"id": i, "pad": "z".repeat(100)}))
        .collect();
    buffer.push_many("s", &records).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let space = Arc::new(AtomicU64::new(50_000));
    let persister = Persister::new(buffer.clone(), PersistConfig::new(out.path()))
        .with_sink_factory(Arc::new({
            let space = space.clone();
            move |path: &Path| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)?;
                Ok(Box::new(FullDisk {
                    file,
                    left: space.clone(),
                }) as Box<dyn FileSink>)
            }
        }));
    let report = persister.drain().await.unwrap();
    assert_eq!(report.batches, 0);
    assert!(
        report.failures[0].contains("No space left"),
        "{:?}",
        report.failures
    );
    assert!(
        output_records(out.path()).is_empty(),
        "no partial file published, no temp left"
    );
    assert_eq!(
        buffer.get_prepared().await.unwrap().len(),
        1,
        "the batch stays in Redis"
    );

    space.store(u64::MAX, Ordering::SeqCst);
    let report = persister.drain().await.unwrap();
    assert_eq!((report.batches, report.records), (1, 2000));
    let ids: Vec<u64> = output_records(out.path())
        .values()
        .flatten()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..2000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_mid_batch_keeps_the_batch_and_publishes_nothing() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let config = server
        .config()
        .page_size(50)
        .response_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500));
    let buffer = Buffer::connect(config).await.unwrap();
    let records: Vec<Value> = (0..1000).map(|i| json!({"id": i})).collect();
    buffer.push_many("s", &records).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    // The sink stops Redis (SIGKILL) when the first bytes reach the file.
    let redis_pid = server.pid();
    // The dead attempt cannot release its lock (Redis is gone) and the AOF keeps it, so the
    // next drain waits for its TTL: keep that short here.
    let mut short_locks = PersistConfig::new(out.path());
    short_locks.lock_ttl = Duration::from_millis(500);
    let persister = Persister::new(buffer.clone(), short_locks.clone()).with_sink_factory(
        Arc::new(move |path: &Path| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            Ok(Box::new(KillOnWrite {
                file,
                pid: Some(redis_pid),
            }) as Box<dyn FileSink>)
        }),
    );
    let report = persister.drain().await.unwrap();
    assert_eq!(report.batches, 0);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(output_records(out.path()).is_empty(), "nothing published");

    server.restart();
    let prepared = buffer.get_prepared().await.unwrap();
    assert_eq!(prepared.len(), 1, "the batch survived in Redis");
    let report = Persister::new(buffer.clone(), short_locks)
        .drain()
        .await
        .unwrap();
    assert_eq!(
        (report.batches, report.records),
        (1, 1000),
        "{:?}",
        report.failures
    );
    assert_eq!(output_records(out.path()).values().flatten().count(), 1000);
}

struct KillOnWrite {
    file: std::fs::File,
    pid: Option<u32>,
}

impl Write for KillOnWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(pid) = self.pid.take() {
            Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status()?;
        }
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl FileSink for KillOnWrite {
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// GETs `path` from `addr` with hyper's HTTP/1 client: the status, content type and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Issue 13: the endpoint is served by hyper and encoded by prometheus-client; every metric
/// docs/operations.md lists keeps its name, the batch histograms count each persisted batch in the right
/// bucket, and paths other than `/metrics` are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_http_with_counters_and_batch_histograms() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    buffer
        .push_many("s", &[json!({"a": 1}), json!({"a": 2})])
        .await
        .unwrap();
    let persister = Persister::new(buffer, PersistConfig::new(out.path()));
    persister.drain().await.unwrap();
    let shutdown = CancellationToken::new();
    let (addr, task) =
        buffer_persist::serve_metrics("127.0.0.1:0".parse().unwrap(), persister, shutdown.clone())
            .await
            .unwrap();

    let (status, content_type, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for name in [
        "buffer_persist_batches_total",
        "buffer_persist_records_total",
        "buffer_persist_bytes_total",
        "buffer_persist_files_written_total",
        "buffer_persist_batches_recovered_total",
        "buffer_persist_errors_total",
        "buffer_persist_batch_failures_total",
        "buffer_persist_polls_total",
        "buffer_persist_batches_in_backoff",
        "buffer_persist_oldest_store_age_seconds",
        "buffer_persist_prepared_batches",
        "buffer_persist_flush_duration_seconds_count",
        "buffer_persist_batch_bytes_count",
        "buffer_persist_prepare_to_persisted_seconds_count",
    ] {
        assert!(
            body.lines()
                .any(|line| line.starts_with(&format!("{name} "))),
            "{name} missing:\n{body}"
        );
    }
    assert!(
        body.contains("\nbuffer_persist_records_total 2\n"),
        "{body}"
    );
    assert!(
        body.contains("\nbuffer_persist_batches_total 1\n"),
        "{body}"
    );
    // One batch of 2 records: counted once, summing to 2, in every bucket from `le=4` up and
    // in none below 2.
    assert!(
        body.contains("# TYPE buffer_persist_batch_records histogram\n"),
        "{body}"
    );
    assert!(
        body.contains("\nbuffer_persist_batch_records_count 1\n"),
        "{body}"
    );
    assert!(
        body.contains("\nbuffer_persist_batch_records_sum 2.0\n"),
        "{body}"
    );
    assert!(
        body.contains("\nbuffer_persist_batch_records_bucket{le=\"1.0\"} 0\n"),
        "{body}"
    );
    assert!(
        body.contains("\nbuffer_persist_batch_records_bucket{le=\"4.0\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("\nbuffer_persist_batch_records_bucket{le=\"+Inf\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("\nbuffer_persist_flush_duration_seconds_count 1\n"),
        "{body}"
    );

    let (status, _, _) = http_get(addr, "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = http_get(addr, "/metrics/extra").await;
    assert_eq!(status, 404);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisters_with_another_format_refuse_a_shared_out() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    Persister::new(buffer.clone(), PersistConfig::new(out.path()))
        .drain()
        .await
        .unwrap();
    let mut config = PersistConfig::new(out.path());
    config.compression = Compression::Zstd;
    let err = Persister::new(buffer, config).drain().await.unwrap_err();
    assert!(err.to_string().contains("--compress"), "{err}");
}

/// Drains the default namespace of `buffer` into a fresh directory with `configure`d settings
/// and returns the decompressed bytes of the one file written.
async fn drain_one_csv(buffer: &Buffer, configure: impl FnOnce(&mut PersistConfig)) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let mut config = PersistConfig::new(out.path());
    config.format = Format::Csv;
    configure(&mut config);
    let report = Persister::new(buffer.clone(), config)
        .drain()
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.batches, 1);
    let files: Vec<PathBuf> = files_under(out.path())
        .into_iter()
        .filter(|p| !p.ends_with(buffer_persist::MARKER_FILE))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = Vec::new();
    open_decoded(&files[0])
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// A CSV file's rows put back together as records: named columns that are not empty, plus
/// the keys of the trailing `_rest` column's JSON object.
fn reassemble(csv_bytes: &[u8], rest: &str) -> Vec<serde_json::Map<String, Value>> {
    let mut reader = csv::Reader::from_reader(csv_bytes);
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            let mut record = serde_json::Map::new();
            for (name, field) in header.iter().zip(row.iter()) {
                if field.is_empty() {
                    continue;
                }
                if name == rest {
                    let Value::Object(others) = serde_json::from_str(field).unwrap() else {
                        panic!("{field}")
                    };
                    record.extend(others);
                } else {
                    record.insert(name.clone(), Value::String(field.to_owned()));
                }
            }
            record
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_of_many_distinct_keys_stays_proportional_and_keeps_every_key() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    // 20 000 records with one distinct key each, and one whose key is the trailing column's
    // usual name, so that column must take another.
    let mut records: Vec<Value> = (0..20_000)
        .map(|i| json!({ format!("k{i:05}"): format!("v{i}") }))
        .collect();
    records.push(json!({"_rest": "mine"}));
    for chunk in records.chunks(1000) {
        buffer.push_many("wide", chunk).await.unwrap();
    }
    let input: usize = records.iter().map(|r| r.to_string().len() + 1).sum();
    // A file is at most its records plus one separator per named column per row: with 16
    // columns and records of ~20 bytes that is under 3× (without the bound: 20 001 columns
    // in every row, about 400 MB).
    let bytes = drain_one_csv(&buffer, |config| config.csv_max_columns = 16).await;
    assert!(
        bytes.len() < 3 * input,
        "{} bytes of CSV for {input} bytes of records",
        bytes.len()
    );
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let mut expected_header = vec!["_rest".to_owned()];
    expected_header.extend((0..15).map(|i| format!("k{i:05}")));
    expected_header.push("_rest_".to_owned());
    assert_eq!(
        header, expected_header,
        "the first 16 sorted keys, then the rest"
    );
    let back = reassemble(&bytes, "_rest_");
    let expected: Vec<serde_json::Map<String, Value>> = records
        .iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect();
    assert_eq!(back.len(), expected.len());
    assert!(back == expected, "every record's keys and values come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_csv_file_reads_back_as_exactly_the_batch_records_even_without_keys() {
    let server = RedisServer::start();
    let batches: [(&str, Vec<Value>, usize); 4] = [
        ("empty", vec![json!({}), json!({}), json!({})], 1024),
        ("mixed", vec![json!({}), json!({"a": 1}), json!({})], 1024),
        ("one", vec![json!({})], 1024),
        ("nocolumns", vec![json!({}), json!({"a": 1}), json!({})], 0),
    ];
    for (ns, records, max_columns) in batches {
        let buffer = Buffer::connect(server.config().namespace(ns))
            .await
            .unwrap();
        buffer.push_many("s", &records).await.unwrap();
        let bytes = drain_one_csv(&buffer, |config| config.csv_max_columns = max_columns).await;
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        assert_eq!(
            reader.records().count(),
            records.len(),
            "{ns}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        let back = reassemble(&bytes, "_rest");
        let expected: Vec<serde_json::Map<String, Value>> = records
            .iter()
            .map(|r| {
                let mut map = serde_json::Map::new();
                for (key, value) in r.as_object().unwrap() {
                    // Named columns come back as text, the trailing column as JSON.
                    let value = if max_columns == 0 {
                        value.clone()
                    } else {
                        Value::String(value.to_string())
                    };
                    map.insert(key.clone(), value);
                }
                map
            })
            .collect();
        assert_eq!(back, expected, "{ns}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_writes_values_exactly_as_pushed_whatever_their_keys() {
    use serde_json::value::RawValue;
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    // Pushed as raw text, so the records reach Redis exactly as written here.
    let texts = [
        r#"{"a":{"$serde_json::private::Number":"42"}}"#,
        r#"{"$serde_json::private::Number":"1"}"#,
        r#"{"$serde_json::private::Number":"not a number"}"#,
        r#"{"n":123456789012345678901234567890.5}"#,
    ];
    let records: Vec<std::collections::BTreeMap<String, Box<RawValue>>> = texts
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();
    buffer.push_many("magic", &records).await.unwrap();
    let bytes = drain_one_csv(&buffer, |_| {}).await;
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        concat!(
            "$serde_json::private::Number,a,n\n",
            ",\"{\"\"$serde_json::private::Number\"\":\"\"42\"\"}\",\n",
            "1,,\n",
            "not a number,,\n",
            ",,123456789012345678901234567890.5\n",
        )
    );
    assert!(server.buffer_keys().is_empty(), "the batch persisted");
}

/// A file whose fsync blocks until the test lets it finish: a slow disk, under the test's
/// control. Only the first file opened gets the gate.
struct GatedSync {
    file: std::fs::File,
    /// Tells the test the fsync started, then waits for its go.
    gate: Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>,
}

impl Write for GatedSync {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl FileSink for GatedSync {
    fn sync(&mut self) -> io::Result<()> {
        if let Some((entered, go)) = self.gate.take() {
            let _ = entered.send(());
            let _ = go.recv();
        }
        self.file.sync_all()
    }
}

/// Regression (issue 8, item 8): the lock was only extended between pages, so an fsync or a
/// publish longer than the lock TTL let the lock expire under a live persister.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_slower_than_the_lock_ttl_persists_once_and_no_one_else_takes_the_batch() {
    let server = RedisServer::start();
    let buffer = Buffer::connect(server.config().holder_id("slow"))
        .await
        .unwrap();
    let rival_buffer = Buffer::connect(server.config().holder_id("rival"))
        .await
        .unwrap();
    let records: Vec<Value> = (0..500).map(|i| json!({"id": i})).collect();
    buffer.push_many("slow", &records).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(1);
    let mut config = PersistConfig::new(out.path());
    config.lock_ttl = ttl;

    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(std::sync::Mutex::new(Some((entered_tx, go_rx))));
    let slow = Persister::new(buffer.clone(), config.clone()).with_sink_factory(Arc::new(
        move |path: &Path| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            Ok(Box::new(GatedSync {
                file,
                gate: gate.lock().unwrap().take(),
            }) as Box<dyn FileSink>)
        },
    ));
    let store = StoreName::new("slow").unwrap();
    let writing = tokio::spawn({
        let (slow, store) = (slow.clone(), store.clone());
        async move { slow.flush_store(&store, &CancellationToken::new()).await }
    });
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the slow persister reached its fsync");
    let prepared = buffer.get_prepared().await.unwrap();
    assert_eq!(prepared.len(), 1);
    let batch = prepared[0].id.clone();

    // The fsync lasts three lock TTLs. All along, a rival persister finds the batch locked by
    // the slow one, and the lock never runs out.
    let rival = Persister::new(rival_buffer.clone(), config.clone());
    let started = std::time::Instant::now();
    let mut attempts = 0;
    while started.elapsed() < ttl * 3 {
        let outcome = rival
            .recover_batch(&store, &batch, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            outcome,
            BatchOutcome::Busy,
            "the rival took the batch {:?} into a slow fsync",
            started.elapsed()
        );
        let lock = rival_buffer
            .lock_info(&store, Some(&batch))
            .await
            .unwrap()
            .expect("the batch stays locked");
        assert_eq!(lock.holder, "slow");
        assert!(lock.ttl.unwrap() > Duration::from_millis(0));
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(attempts >= 5, "{attempts} attempts");

    go_tx.send(()).unwrap();
    let outcome = writing.await.unwrap().unwrap();
    assert!(
        matches!(outcome, BatchOutcome::Persisted { records: 500, .. }),
        "{outcome:?}"
    );
    let files: Vec<PathBuf> = files_under(out.path())
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(files.len(), 1, "exactly one file: {files:?}");
    let ids: Vec<u64> = output_records(out.path())
        .values()
        .flatten()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..500).collect::<Vec<_>>());
    assert_eq!(slow.stats().files_written, 1);
    assert_eq!(rival.stats().batches_persisted, 0);
    assert!(
        server.buffer_keys().is_empty(),
        "batch and lock are gone: {:?}",
        server.buffer_keys()
    );
}

/// Regression (issue 8, item 9): `prepare_to_persist` made a batch with no lock, so a
/// persister's recovery pass wrote (and deleted) a batch the library user was still reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_by_a_library_user_is_never_taken_by_a_persister() {
    let server = RedisServer::start();
    let user = Buffer::connect(server.config().holder_id("user").page_size(10))
        .await
        .unwrap();
    let records: Vec<Value> = (0..100).map(|i| json!({"id": i})).collect();
    user.push_many("held", &records).await.unwrap();
    let ttl = Duration::from_secs(1);
    let batch = user.prepare_to_persist("held", ttl).await.unwrap().unwrap();

    // A persister polls every 20 ms; nothing is old or big, so all it can do is recover.
    let out = tempfile::tempdir().unwrap();
    let mut config = PersistConfig::new(out.path());
    config.interval = Duration::from_millis(20);
    config.max_age = Duration::from_secs(3600);
    config.lock_ttl = ttl;
    let persister = Persister::new(server.buffer().await, config);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (persister, shutdown) = (persister.clone(), shutdown.clone());
        async move { persister.run(shutdown).await }
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            persister.stats().prepared_waiting == 1
        })
        .await,
        "the persister sees the prepared batch"
    );

    // The user reads slowly: ten pages over about three and a half lock TTLs.
    let started = std::time::Instant::now();
    let mut copy = Vec::new();
    let mut reader = user.reader(&batch);
    while let Some(page) = reader.next_page().await.unwrap() {
        copy.extend(
            page.iter()
                .map(|t| serde_json::from_str::<Value>(t).unwrap()),
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        batch.check_held().unwrap();
        let lock = user
            .lock_info(&batch.store, Some(&batch.id))
            .await
            .unwrap()
            .expect("the batch stays locked");
        assert_eq!(lock.holder, "user");
        assert!(
            output_records(out.path()).is_empty(),
            "the persister wrote a batch the user holds"
        );
        assert_eq!(persister.stats().batches_persisted, 0);
    }
    assert!(started.elapsed() > ttl * 3, "held past the lock TTL");
    assert_eq!(copy, records, "the user read the whole batch");

    user.empty(batch).await.unwrap();
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let stats = persister.stats();
    assert_eq!((stats.batches_persisted, stats.batches_recovered), (0, 0));
    assert!(
        output_records(out.path()).is_empty(),
        "the user's copy is the only one"
    );
    assert!(user.get_prepared().await.unwrap().is_empty());
    assert!(
        server.buffer_keys().is_empty(),
        "nothing left: {:?}",
        server.buffer_keys()
    );
}

/// A disk whose fsync takes `delay_ms`: a persister on it always has batches in flight.
struct SlowSync {
    file: std::fs::File,
    delay_ms: u64,
}

impl Write for SlowSync {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl FileSink for SlowSync {
    fn sync(&mut self) -> io::Result<()> {
        // A slow device, not a wait for an event: the batch stays locked meanwhile.
        std::thread::sleep(Duration::from_millis(self.delay_ms));
        self.file.sync_all()
    }
}

/// Issue 8 item 6: `drain` beside a `run` persister that keeps preparing new batches (slow
/// disk, producers that never stop) persists what there was when it started, waits for the
/// batches the other persister holds, chases nothing prepared later, and reports no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_beside_a_busy_run_persister_persists_its_snapshot_and_reports_no_failure() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    // One batch at a time, each held for a second by the fsync, and the next poll at once:
    // the runner nearly always holds a batch it prepared.
    let mut run_config = config(out.path());
    run_config.interval = Duration::from_millis(1);
    run_config.max_age = Duration::from_millis(100);
    run_config.max_records = None;
    run_config.concurrency = 1;
    let runner =
        Persister::new(buffer.clone(), run_config).with_sink_factory(Arc::new(|path: &Path| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            Ok(Box::new(SlowSync {
                file,
                delay_ms: 1000,
            }) as Box<dyn FileSink>)
        }));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (runner, shutdown) = (runner.clone(), shutdown.clone());
        async move { runner.run(shutdown).await }
    });
    // One producer, ids in order, into eight stores; `acked` counts acknowledged ids.
    let acked = Arc::new(AtomicU64::new(0));
    let stop_pushing = CancellationToken::new();
    let producer = tokio::spawn({
        let (buffer, acked, stop_pushing) = (buffer.clone(), acked.clone(), stop_pushing.clone());
        async move {
            let mut next = 0u64;
            while !stop_pushing.is_cancelled() {
                let records: Vec<Value> = (next..next + 10).map(|id| json!({"id": id})).collect();
                buffer
                    .push_many(format!("busy-{}", next / 10 % 8), &records)
                    .await
                    .unwrap();
                next += 10;
                acked.store(next, Ordering::SeqCst);
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(20), || async {
            runner.stats().batches_persisted >= 1
        })
        .await,
        "the runner is at work"
    );

    let before = acked.load(Ordering::SeqCst);
    let mut drain_config = PersistConfig::new(out.path());
    drain_config.drain_wait = Some(Duration::from_secs(4));
    let drainer = Persister::new(server.buffer().await, drain_config);
    let report = drainer.drain().await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // The published files (the runner may be writing a temporary file right now).
    let written: std::collections::HashSet<u64> = files_under(out.path())
        .iter()
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .flat_map(|path| buffer_tests::file_records(path))
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    let missing: Vec<u64> = (0..before).filter(|id| !written.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the drain, not in a file after it: {missing:?}"
    );

    stop_pushing.cancel();
    producer.await.unwrap();
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let report = Persister::new(buffer.clone(), PersistConfig::new(out.path()))
        .drain()
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let mut ids: Vec<u64> = output_records(out.path())
        .values()
        .flatten()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "no duplicates");
    assert_eq!(ids, (0..acked.load(Ordering::SeqCst)).collect::<Vec<_>>());
    assert!(
        server.buffer_keys().is_empty(),
        "{:?}",
        server.buffer_keys()
    );
}

/// Issue 8 item 6: work another persister holds past the deadline is one failure line per
/// store or batch, naming it (not a line of its own that counts as one more batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_locked_past_the_drain_deadline_is_one_failure_naming_it() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    buffer.push("held", &json!({"a": 1})).await.unwrap();
    let mut guard = buffer
        .lock("held", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let batch = guard.prepare().await.unwrap().unwrap();
    let mut config = PersistConfig::new(out.path());
    config.drain_wait = Some(Duration::from_millis(300));
    let report = Persister::new(buffer.clone(), config)
        .drain()
        .await
        .unwrap();
    assert_eq!(report.batches, 0);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(
        report.failures[0].contains(&batch.id.to_string())
            && report.failures[0].contains("still locked"),
        "{:?}",
        report.failures
    );
    guard.release().await.unwrap();
}

/// A failure record exists only while its batch does: recording a failure of a batch that is
/// gone writes nothing, and a record left behind by a batch emptied without clearing it is
/// swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_records_exist_only_while_their_batch_does() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.push("f", &json!({"a": 1})).await.unwrap();
    let mut guard = buffer
        .lock("f", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let batch = guard.prepare().await.unwrap().unwrap();
    let backoff = buffer_core::Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(4),
    };
    let mut last = None;
    for attempts in 1..=4 {
        let record = buffer
            .record_failure(&batch.store, Some(&batch.id), "disk on fire", backoff)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.attempts, attempts);
        assert_eq!(
            record.next_retry_ms - record.last_ms,
            [1000, 2000, 4000, 4000][attempts as usize - 1]
        );
        last = Some(record);
    }
    let listed = buffer.failures().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].batch.as_ref(), Some(&batch.id));
    assert_eq!(Some(&listed[0].record), last.as_ref());

    // Emptied by a path that does not clear the record: the sweep removes it.
    guard.empty_batch().await.unwrap();
    let kept = buffer.forget_stale_failures(listed).await.unwrap();
    assert!(kept.is_empty());
    assert!(buffer.failures().await.unwrap().is_empty());
    // And a failure recorded after the batch is gone is not written.
    let record = buffer
        .record_failure(&batch.store, Some(&batch.id), "late", backoff)
        .await
        .unwrap();
    assert_eq!(record, None);
    assert!(
        server.buffer_keys().is_empty(),
        "{:?}",
        server.buffer_keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauge_costs_one_command_per_group_not_per_store() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    let stores = 2000;
    for i in 0..stores {
        buffer
            .push(format!("store-{i}").as_str(), &json!({"i": i}))
            .await
            .unwrap();
    }
    let first = buffer
        .stores()
        .await
        .unwrap()
        .iter()
        .map(|s| s.first_write_ms)
        .min()
        .unwrap();
    clock.set_ms(first + 60_000);
    // Nothing is over a threshold: the polls only read indexes and set the gauge.
    let mut config = config(out.path());
    config.max_age = Duration::from_secs(3600);
    config.max_records = None;
    let persister = Persister::new(buffer.clone(), config);
    let mut conn = server.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let persister = persister.clone();
        let shutdown = shutdown.clone();
        async move { persister.run(shutdown).await }
    });
    let gauged = eventually(Duration::from_secs(10), || async {
        persister.stats().oldest_store_age_ms == 60_000
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert!(gauged, "lag gauge: {:?}", persister.stats());
    let stats = buffer_tests::command_stats(&mut conn);
    let calls = |command: &str| stats.get(command).map_or(0, |stat| stat.calls);
    // Reading every store's scores (three per store) would be 6000 ZSCOREs per poll.
    assert_eq!(calls("zscore"), 0, "{stats:?}");
    // Each poll reads the group indexes: prepared, old stores and the gauge, 256 ZRANGEs each.
    let zranges = calls("zrange");
    assert!(zranges > 0 && zranges % 256 == 0, "{stats:?}");
    assert_eq!(persister.stats().batches_persisted, 0);
}

const HIVE: &str = "store={store}/dt={date}/hour={hour}/{batch}.{ext}";

fn hive_config(out: &Path) -> PersistConfig {
    let mut config = PersistConfig::new(out);
    config.path_template = HIVE.to_owned();
    config
}

/// The UTC date and hour of `ms` by `date -u`: an oracle independent of the persister's own
/// calendar arithmetic.
fn utc_date_and_hour(ms: u64) -> (String, String) {
    let output = Command::new("date")
        .arg("-u")
        .arg("-d")
        .arg(format!("@{}", ms / 1000))
        .arg("+%F %H")
        .output_in_time();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let (date, hour) = text.trim().split_once(' ').unwrap();
    (date.to_owned(), hour.to_owned())
}

/// The batch files under `out` (the marker aside).
fn batch_files(out: &Path) -> Vec<PathBuf> {
    files_under(out)
        .into_iter()
        .filter(|p| p.file_name().unwrap() != buffer_persist::MARKER_FILE)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_template_drains_each_store_into_the_partition_of_its_first_write() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    // 2024-02-28T23:59:59.500Z: the stores' first writes fall on both sides of midnight and
    // of a leap day.
    let clock = ManualClock::new(1_709_164_799_500);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for (store, later_ms) in [
        ("orders", 1_000),
        ("clicks/eu", 86_400_000),
        ("é ü", 3_600_000),
    ] {
        let records: Vec<Value> = (0..3).map(|n| json!({"store": store, "n": n})).collect();
        let receipt = buffer.push_many(store, &records).await.unwrap();
        // A later push does not move the store's partition: its first write does.
        clock.advance_ms(later_ms);
        let late = json!({"store": store, "n": 3});
        buffer.push(store, &late).await.unwrap();
        let mut all = records;
        all.push(late);
        expected.push((store, receipt.first_write_ms, all));
    }

    let report = Persister::new(buffer.clone(), hive_config(out.path()))
        .drain()
        .await
        .unwrap();
    assert_eq!(report.batches, 3, "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");

    let files = batch_files(out.path());
    assert_eq!(files.len(), 3, "{files:?}");
    let mut partitions = HashSet::new();
    for (store, first_write_ms, records) in expected {
        let (date, hour) = utc_date_and_hour(first_write_ms);
        partitions.insert((date.clone(), hour.clone()));
        let dir = out.path().join(format!(
            "store={}/dt={date}/hour={hour}",
            StoreName::new(store).unwrap().encoded()
        ));
        let in_dir: Vec<&PathBuf> = files.iter().filter(|f| f.parent() == Some(&dir)).collect();
        assert_eq!(in_dir.len(), 1, "{store}: {dir:?} in {files:?}");
        let name = in_dir[0].file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(".jsonl"), "{name}");
        assert_eq!(buffer_tests::file_records(in_dir[0]), records, "{store}");
    }
    assert_eq!(
        partitions,
        HashSet::from([
            ("2024-02-28".to_owned(), "23".to_owned()),
            ("2024-02-29".to_owned(), "00".to_owned()),
            ("2024-03-01".to_owned(), "00".to_owned()),
        ]),
        "the three first writes fall in three partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_batch_under_a_hive_template_lands_in_the_file_of_its_first_attempt() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    let template: buffer_persist::PathTemplate = HIVE.parse().unwrap();
    let mut targets = Vec::new();
    for store in ["published", "abandoned"] {
        let records: Vec<Value> = (0..5).map(|n| json!({"store": store, "n": n})).collect();
        buffer.push_many(store, &records).await.unwrap();
        // A first persister prepares the batch (and dies: its lock is given back below).
        let locked = buffer
            .prepare_to_persist(store, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        let batch = locked.batch().clone();
        let target = template.batch_path(out.path(), &batch, Format::JsonLines, Compression::None);
        let (date, hour) = utc_date_and_hour(batch.first_write_ms);
        assert_eq!(
            target,
            out.path()
                .join(format!("store={store}/dt={date}/hour={hour}"))
                .join(format!("{}.jsonl", batch.id))
        );
        let dir = target.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        // A temporary file of an attempt that crashed mid-write, beside the target.
        std::fs::write(
            dir.join(format!(".{}.0123456789abcdef.tmp", batch.id)),
            "{\"n\"",
        )
        .unwrap();
        if store == "published" {
            // This attempt got as far as publishing, then crashed before emptying the batch.
            let mut lines = String::new();
            let mut reader = buffer.reader(&batch);
            while let Some(page) = reader.next_page().await.unwrap() {
                for text in page {
                    lines.push_str(&text);
                    lines.push('\n');
                }
            }
            std::fs::write(&target, lines).unwrap();
        }
        assert!(locked.release().await.unwrap());
        targets.push((target, records));
    }

    let second = Persister::new(buffer.clone(), hive_config(out.path()));
    let report = second.drain().await.unwrap();
    assert_eq!(report.batches, 2, "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    let stats = second.stats();
    assert_eq!(stats.batches_recovered, 2);
    assert_eq!(
        stats.files_written, 1,
        "the published batch is found written, not written again"
    );
    // Exactly the two targets, and no temporary file left in their directories.
    let mut wanted: Vec<PathBuf> = targets.iter().map(|(t, _)| t.clone()).collect();
    wanted.sort();
    assert_eq!(batch_files(out.path()), wanted);
    for (target, records) in targets {
        assert_eq!(buffer_tests::file_records(&target), records);
    }
    assert!(buffer.get_prepared().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisters_with_another_path_template_refuse_a_shared_out() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let marker =
        |out: &Path| std::fs::read_to_string(out.join(buffer_persist::MARKER_FILE)).unwrap();

    // The default template leaves the marker exactly as versions before templates wrote it.
    let plain = tempfile::tempdir().unwrap();
    Persister::new(buffer.clone(), PersistConfig::new(plain.path()))
        .drain()
        .await
        .unwrap();
    assert_eq!(marker(plain.path()), "format=jsonl\ncompression=none\n");
    let err = Persister::new(buffer.clone(), hive_config(plain.path()))
        .drain()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--path-template"), "{err}");

    let hive = tempfile::tempdir().unwrap();
    Persister::new(buffer.clone(), hive_config(hive.path()))
        .drain()
        .await
        .unwrap();
    assert_eq!(
        marker(hive.path()),
        format!("format=jsonl\ncompression=none\npath-template={HIVE}\n")
    );
    for other in [
        buffer_persist::DEFAULT_PATH_TEMPLATE,
        "{store}/{date}/{batch}.{ext}",
    ] {
        let mut config = PersistConfig::new(hive.path());
        config.path_template = other.to_owned();
        let err = Persister::new(buffer.clone(), config)
            .drain()
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("--path-template"),
            "{other}: {err}"
        );
    }
}
