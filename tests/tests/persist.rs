//! The persister end to end: real redis-server, real files, real processes.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use buffer_core::{Buffer, ManualClock, StoreName};
use buffer_persist::{Compression, FileSink, Format, PersistConfig, Persister, open_decoded};
use buffer_tests::{RedisServer, eventually, files_under, output_records};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

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
    // Several polls pass at 59 s of age: nothing is flushed.
    clock.advance_ms(59_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(persister.stats().batches_persisted, 0);
    assert!(
        persister.stats().oldest_store_age_ms >= 59_000,
        "lag gauge follows the oldest store"
    );
    // It announces its thresholds, so a dashboard can count down to the age flush.
    let announced = buffer.persisters(60_000).await.unwrap();
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0].max_age_ms, 60_000);
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
        buffer.persisters(60_000).await.unwrap().is_empty(),
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
        let buffer = Buffer::connect(server.config().namespace(ns).unwrap())
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
    assert!(err.to_string().contains("create output directory"), "{err}");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_as_prometheus_text() {
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
    let (addr, _task) =
        buffer_persist::serve_metrics("127.0.0.1:0".parse().unwrap(), persister, shutdown.clone())
            .await
            .unwrap();
    let body = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        socket.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap();
    shutdown.cancel();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("buffer_persist_records_total 2\n"), "{body}");
    assert!(body.contains("buffer_persist_batches_total 1\n"), "{body}");
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
    assert!(err.to_string().contains("--compression"), "{err}");
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
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    // Reading every store's scores (three per store) would be 6000 ZSCOREs per poll.
    assert_eq!(calls("zscore"), 0, "{stats}");
    // Each poll reads the group indexes: prepared, old stores and the gauge, 256 ZRANGEs each.
    let zranges = calls("zrange");
    assert!(zranges > 0 && zranges % 256 == 0, "{stats}");
    assert_eq!(persister.stats().batches_persisted, 0);
}
