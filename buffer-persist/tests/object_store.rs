//! `--out s3://bucket/prefix`: the `buffer-persist` binary against a private S3-compatible
//! server (moto, `buffer_tests::s3::S3Server`) and private redis-servers. Each persister
//! process runs in a working directory of its own: they share no disk, only Redis and the
//! bucket.

use buffer_tests::CommandWithin;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use buffer_tests::http_proxy::{HttpFault, HttpFaultProxy};
use buffer_tests::s3::S3Server;
use buffer_tests::{
    KillOnDrop, Ledger, PeakRun, RedisServer, eventually, produce, wait_with_peak_rss,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// The prefix the persisters write under; nothing may land outside it.
const PREFIX: &str = "land/x";

/// A persister command writing to `s3://<bucket>/<PREFIX>`, run in a fresh working directory
/// of its own (kept alive by the returned guard).
fn persist_command(
    redis: &RedisServer,
    s3: &S3Server,
    subcommand: &str,
) -> (Command, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    let mut command = Command::new(BINARY);
    command
        .current_dir(work.path())
        .arg(subcommand)
        .arg("--redis")
        .arg(redis.url())
        .arg("--out")
        .arg(s3.url(PREFIX))
        .envs(s3.env())
        .env("RUST_LOG", "error")
        .env_remove("BUFFER_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    (command, work)
}

/// Runs a command to its end; its exit status and stderr.
fn run(mut command: Command) -> (std::process::ExitStatus, String) {
    let output = buffer_tests::output_within(&mut command, buffer_tests::COMMAND_DEADLINE);
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn drain(redis: &RedisServer, s3: &S3Server, extra: &[&str]) {
    let (mut command, _work) = persist_command(redis, s3, "drain");
    command
        .args(["--lock-ttl", "1s", "--wait", "20s"])
        .args(extra);
    let (status, stderr) = run(command);
    assert!(status.success(), "drain failed: {stderr}");
}

/// A batch object's records, decompressed as its name says.
fn decode(key: &str, bytes: &[u8]) -> Vec<Value> {
    let mut text = String::new();
    if key.ends_with(".gz") {
        // One gzip member: each part must be a complete stream of its own.
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .unwrap();
    } else if key.ends_with(".zst") {
        zstd::stream::read::Decoder::new(bytes)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
    } else {
        text = String::from_utf8(bytes.to_vec()).unwrap();
    }
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Every object of the bucket: checks none is outside the prefix and every one is the marker
/// or a batch object named `<PREFIX>/<store>/<batch id>[.part-NNNNN].<ext>`, then returns the
/// batch objects' records by key.
async fn batch_objects(s3: &S3Server, ext: &str) -> BTreeMap<String, Vec<Value>> {
    let mut objects = BTreeMap::new();
    for key in s3.keys().await {
        let relative = key
            .strip_prefix(&format!("{PREFIX}/"))
            .unwrap_or_else(|| panic!("object {key} is outside the prefix {PREFIX}"));
        if relative == ".buffer-persist" {
            continue;
        }
        let (_store, file) = relative
            .split_once('/')
            .unwrap_or_else(|| panic!("{key} is not <store>/<file>"));
        let stem = file
            .strip_suffix(&format!(".{ext}"))
            .unwrap_or_else(|| panic!("{key} is not a .{ext} object"));
        let (id, part) = match stem.split_once(".part-") {
            Some((id, part)) => (id, Some(part)),
            None => (stem, None),
        };
        assert!(
            id.len() == 30 && id.as_bytes()[13] == b'-',
            "{key}: not a batch id"
        );
        if let Some(part) = part {
            assert!(
                part.len() == 5 && part.bytes().all(|b| b.is_ascii_digit()),
                "{key}"
            );
        }
        let records = decode(&key, &s3.get(&key).await);
        objects.insert(key, records);
    }
    objects
}

/// Every acknowledged id is in exactly one object, no id nobody pushed, nothing left in Redis.
fn check_exactly_once(
    objects: &BTreeMap<String, Vec<Value>>,
    ledger: &Ledger,
    redis: &RedisServer,
) -> usize {
    let ids: Vec<u64> = objects
        .values()
        .flatten()
        .map(|record| record["id"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "duplicates in the bucket");
    let lost: Vec<&u64> = ledger.acknowledged.difference(&unique).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        unique
            .iter()
            .all(|id| ledger.acknowledged.contains(id) || ledger.unknown.contains(id)),
        "records nobody pushed"
    );
    // Only the announcements of persisters killed with -9 may stay (they had no chance to
    // retire; they are forgotten an hour after their last heartbeat).
    let left: Vec<String> = redis
        .buffer_keys()
        .into_iter()
        .filter(|key| key != "buf:persisters")
        .collect();
    assert!(left.is_empty(), "buffer keys left: {left:?}");
    ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_server_refuses_a_second_conditional_create() {
    let s3 = S3Server::start();
    s3.put_if_absent("probe/once", "first").await.unwrap();
    let second = s3.put_if_absent("probe/once", "second").await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "the server took a second If-None-Match: * create: {second:?}"
    );
    assert_eq!(&s3.get("probe/once").await[..], b"first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_with_an_unsupported_scheme_is_refused_at_start_naming_it() {
    let redis = RedisServer::start();
    let (status, stderr) = run({
        let mut command = Command::new(BINARY);
        command
            .args(["drain", "--redis", &redis.url(), "--out", "gs://bucket/x"])
            .stdin(Stdio::null());
        command
    });
    assert!(!status.success());
    assert!(stderr.contains("gs://"), "{stderr}");
    assert!(stderr.contains("s3://bucket/prefix"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_persisters_without_a_shared_disk_killed_with_9_land_every_record_exactly_once() {
    buffer_tests::require_failpoints!();
    let seed = buffer_tests::fault_seed("s3 kill -9 persisters");
    let mut rng = StdRng::seed_from_u64(seed);
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    // Small parts (a batch of 150 records is some 9 KiB), so batches are split, and killed
    // between parts too.
    // Runner 0 stops itself (SIGSTOP) after uploading a batch's first part, with the
    // upload open: killing it there is a kill mid-upload on every run, not by luck. Its
    // lock TTL is longer, so it still holds the batch when it stops.
    let spawn_with = |failpoint: Option<&str>| {
        let (mut command, work) = persist_command(&redis, &s3, "run");
        command
            .args([
                "--interval",
                "20ms",
                "--max-age",
                "100ms",
                "--max-records",
                "150",
            ])
            .args(["--lock-ttl", if failpoint.is_some() { "3s" } else { "1s" }])
            .args(["--part-size", "2KiB"])
            .stderr(Stdio::null());
        if let Some(failpoint) = failpoint {
            command.env("BUFFER_FAILPOINT", failpoint);
        }
        (KillOnDrop::new(command.spawn().unwrap()), work)
    };
    let spawn = || spawn_with(None);
    let spawn_stopping = || spawn_with(Some("after-part:stop"));
    let mut runners: Vec<(KillOnDrop, tempfile::TempDir)> =
        vec![spawn_stopping(), spawn(), spawn()];
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let total = 6_000u64;
    let producers: Vec<_> = (0..3)
        .map(|p| {
            tokio::spawn(produce(
                buffer.clone(),
                p * total / 3..(p + 1) * total / 3,
                4,
                40,
                ledger.clone(),
            ))
        })
        .collect();
    let mut kills = 0;
    let mut kills_mid_upload = 0;
    while !producers.iter().all(|p| p.is_finished()) || kills < 3 || kills_mid_upload == 0 {
        assert!(
            kills < 200,
            "runner 0 never stopped mid-upload in {kills} kills"
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
        if buffer_tests::process_state(runners[0].0.id()) == Some('T') {
            runners[0].0.kill().unwrap();
            runners[0].0.wait().unwrap();
            runners[0] = spawn_stopping();
            kills_mid_upload += 1;
            kills += 1;
        }
        // The random kills spare runner 0, so it lives to take a batch and stop.
        let victim = rng.random_range(1..runners.len());
        runners[victim].0.kill().unwrap();
        runners[victim].0.wait().unwrap();
        runners[victim] = spawn();
        kills += 1;
    }
    for producer in producers {
        producer.await.unwrap();
    }
    // Runner 0 would stop again at its next upload: a plain runner takes its place.
    let mut killed = std::mem::replace(&mut runners[0], spawn()).0.take();
    killed.kill().unwrap();
    killed.wait().unwrap();
    // The runners must land everything themselves (recovering what the kills left); the
    // final drain then finds nothing to write.
    let persisted_by_runners = eventually(Duration::from_secs(60), || async {
        buffer_tests::buffer_is_drained(&buffer).await
    })
    .await;
    assert!(persisted_by_runners, "the runners left records for 60 s");
    for (mut runner, _work) in runners {
        runner.kill().unwrap();
        runner.wait().unwrap();
    }
    let objects_by_runners = batch_objects(&s3, "jsonl").await.len();
    drain(&redis, &s3, &["--part-size", "2KiB"]);
    println!("s3 kill -9 persisters: {kills} kills, {kills_mid_upload} with an upload open");
    assert_eq!(
        batch_objects(&s3, "jsonl").await.len(),
        objects_by_runners,
        "the final drain found something to write"
    );
    let objects = batch_objects(&s3, "jsonl").await;
    let parts = objects.keys().filter(|k| k.contains(".part-")).count();
    println!("{} objects, {parts} of them parts", objects.len());
    assert!(parts > 0, "no batch was split into parts");
    let persisted = check_exactly_once(&objects, &ledger.lock().unwrap(), &redis);
    assert_eq!(persisted as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_wait_in_redis_while_the_s3_server_is_stopped_and_land_after() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    let spawn = || {
        let (mut command, work) = persist_command(&redis, &s3, "run");
        command
            .args([
                "--interval",
                "50ms",
                "--max-age",
                "100ms",
                "--lock-ttl",
                "1s",
            ])
            .args(["--part-size", "4KiB"])
            .stderr(Stdio::null());
        (KillOnDrop::new(command.spawn().unwrap()), work)
    };
    // Guarded: a failed assertion must not leave three runners polling a dead server.
    let mut runners: Vec<(KillOnDrop, tempfile::TempDir)> = (0..3).map(|_| spawn()).collect();
    // The marker is published once a runner is up: wait for it, then stop the server.
    let marker = format!("{PREFIX}/.buffer-persist");
    let up = eventually(Duration::from_secs(20), || async {
        s3.keys().await.contains(&marker)
    })
    .await;
    assert!(up, "no runner published the marker");
    // Every runner past its start (the marker checked, announced after its first poll), so
    // the pause meets their uploads, not their start-up.
    let running = eventually(Duration::from_secs(60), || async {
        buffer
            .persisters(Duration::from_secs(60))
            .await
            .unwrap()
            .len()
            >= 3
    })
    .await;
    assert!(running, "the three runners never all announced themselves");
    s3.pause();
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let producers: Vec<_> = (0..3)
        .map(|p| {
            tokio::spawn(produce(
                buffer.clone(),
                p * 500..(p + 1) * 500,
                3,
                40,
                ledger.clone(),
            ))
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    // A runner killed while the server is down: its batch waits for its lock to expire.
    runners[0].0.kill().unwrap();
    runners[0].0.wait().unwrap();
    runners[0] = spawn();
    // While the server is stopped, the batches stay in Redis: prepared (and locked by a
    // persister waiting on its PUT) or live, every record of them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let live: u64 = buffer
        .stores()
        .await
        .unwrap()
        .iter()
        .map(|s| s.records)
        .sum();
    let mut prepared = 0;
    // A runner tried to upload while the server was stopped: a prepared batch is held under
    // its lock (the upload hangs) or has a failure recorded (the upload timed out).
    let mut attempted = 0;
    let failing = buffer.failures().await.unwrap().len();
    for batch in buffer.get_prepared().await.unwrap() {
        let info = buffer.batch_info(&batch.store, &batch.id).await.unwrap();
        prepared += info.map_or(0, |info| info.records);
        if buffer
            .lock_info(&batch.store, Some(&batch.id))
            .await
            .unwrap()
            .is_some()
        {
            attempted += 1;
        }
    }
    assert_eq!(
        live + prepared,
        1500,
        "records left Redis while S3 was down"
    );
    assert!(
        prepared > 0 && attempted + failing > 0,
        "no upload was attempted while the server was stopped ({prepared} records prepared, \
         {attempted} batches locked, {failing} failing)"
    );
    s3.resume();
    let landed = eventually(Duration::from_secs(120), || async {
        buffer_tests::buffer_is_drained(&buffer).await
    })
    .await;
    // Dropping the guards kills and reaps the runners.
    drop(runners);
    assert!(
        landed,
        "the batches did not land after the server came back"
    );
    let objects = batch_objects(&s3, "jsonl").await;
    let persisted = check_exactly_once(&objects, &ledger.lock().unwrap(), &redis);
    assert_eq!(persisted, 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_part_size_lands_as_parts_and_a_crash_between_parts_is_recovered_exactly_once()
 {
    buffer_tests::require_failpoints!();
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    // Random text, so gzip cannot shrink the batch under one part.
    let mut rng = StdRng::seed_from_u64(7);
    let records: Vec<Value> = (0..3000)
        .map(|i| {
            let pad: String = (0..100)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect();
            json!({"id": i, "pad": pad})
        })
        .collect();
    buffer.push_many("big", &records).await.unwrap();
    let settings = ["--part-size", "64KiB", "--compress", "gzip"];

    // The first drain dies (abort, as kill -9 would) right after its first part is published.
    let (mut command, _work) = persist_command(&redis, &s3, "drain");
    command
        .args(settings)
        .args(["--lock-ttl", "1s"])
        .env("BUFFER_FAILPOINT", "after-part");
    let (status, stderr) = run(command);
    assert!(!status.success(), "the failpoint did not fire: {stderr}");
    let after_crash = batch_objects(&s3, "jsonl.gz").await;
    assert_eq!(after_crash.len(), 1, "{:?}", after_crash.keys());
    let (first_key, _) = after_crash.iter().next().unwrap();
    assert!(first_key.ends_with(".part-00001.jsonl.gz"), "{first_key}");
    let first_bytes = s3.get(first_key).await;
    assert_eq!(buffer.get_prepared().await.unwrap().len(), 1);

    // The next drain takes the batch over once the dead one's lock expires, finds part 1,
    // verifies it and publishes the rest.
    drain(&redis, &s3, &settings);
    let objects = batch_objects(&s3, "jsonl.gz").await;
    assert!(objects.len() > 2, "{:?}", objects.keys());
    let keys: Vec<&String> = objects.keys().collect();
    for (index, key) in keys.iter().enumerate() {
        assert!(
            key.ends_with(&format!(".part-{:05}.jsonl.gz", index + 1)),
            "{key}"
        );
        // Each part is one complete gzip stream (decoded above with a single-member decoder)
        // of the part size, give or take what gzip buffers (32 KiB) and one record; each but
        // the last was closed once it reached the part size.
        let size = s3.get(key).await.len();
        assert!(size <= 64 * 1024 + 40 * 1024, "{key}: {size} bytes");
        if index + 1 < keys.len() {
            assert!(size >= 64 * 1024, "{key}: {size} bytes");
        }
    }
    assert_eq!(s3.get(first_key).await, first_bytes, "part 1 was rewritten");
    // Every record once, in order across the parts.
    let ids: Vec<u64> = objects
        .values()
        .flatten()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..3000).collect::<Vec<_>>());
    assert!(redis.buffer_keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_zstd_parts_each_open_alone_with_their_own_header() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    // 20 000 random records, some 1.4 MB of CSV: about ten parts.
    let records = padded_records(11, 20000);
    buffer.push_many("csv", &records).await.unwrap();
    drain(
        &redis,
        &s3,
        &[
            "--format",
            "csv",
            "--compress",
            "zstd",
            "--part-size",
            "16KiB",
        ],
    );
    let keys: Vec<String> = s3
        .keys()
        .await
        .into_iter()
        .filter(|key| key.ends_with(".csv.zst"))
        .collect();
    assert!(keys.len() > 2, "{keys:?}");
    let mut ids = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        assert!(
            key.ends_with(&format!(".part-{:05}.csv.zst", index + 1)),
            "{key}"
        );
        let bytes = s3.get(key).await;
        // zstd puts nothing out before a whole 128 KiB block of input: a part passes the part
        // size by at most about one compressed block.
        assert!(
            bytes.len() <= (16 + 132) * 1024,
            "{key}: {} bytes",
            bytes.len()
        );
        // One complete zstd frame per part: the frame decoder stops at its end, and the
        // frame is the whole object.
        let mut text = String::new();
        zstd::stream::read::Decoder::new(&bytes[..])
            .unwrap()
            .single_frame()
            .read_to_string(&mut text)
            .unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(reader.headers().unwrap(), vec!["id", "pad"], "{key}");
        for row in reader.records() {
            ids.push(row.unwrap()[0].parse::<u64>().unwrap());
        }
    }
    assert_eq!(ids, (0..20000).collect::<Vec<_>>());
    assert!(redis.buffer_keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_parts_each_read_alone_in_pyarrow_with_every_record_once() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    // 10 000 random records, some 400 KiB of zstd Parquet: about a dozen 32 KiB parts.
    let records = padded_records(12, 10000);
    buffer.push_many("pq", &records).await.unwrap();
    let part_size = 32 * 1024;
    drain(
        &redis,
        &s3,
        &[
            "--format",
            "parquet",
            "--compress",
            "zstd",
            "--part-size",
            "32KiB",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<std::path::PathBuf> = s3
        .download(PREFIX, dir.path())
        .await
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "parquet"))
        .collect();
    files.sort();
    assert!(files.len() > 2, "{files:?}");
    for (index, file) in files.iter().enumerate() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(&format!(".part-{:05}.parquet", index + 1)),
            "{name}"
        );
        // A part ends at the first row group that takes it past the part size, and row groups
        // are kept to the part size: a part is at most about two part sizes and the footer.
        let bytes = std::fs::metadata(file).unwrap().len();
        println!("{name}: {bytes} bytes");
        assert!(bytes <= 3 * part_size, "{name}: {bytes} bytes");
    }
    // Each part read alone, as a complete Parquet file with the batch's schema.
    let script = "import json, sys\n\
                  import pyarrow.parquet as pq\n\
                  for path in sys.argv[1:]:\n\
                  \x20   table = pq.read_table(path)\n\
                  \x20   print(json.dumps({'schema': [f'{f.name}:{f.type}' for f in table.schema], 'ids': table.column('id').to_pylist(), 'pads': sum(len(p) for p in table.column('pad').to_pylist())}))\n";
    let output = Command::new(buffer_tests::python::python())
        .arg("-c")
        .arg(script)
        .args(&files)
        .output_in_time();
    assert!(
        output.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parts: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(parts.len(), files.len(), "{stdout}");
    let mut ids = Vec::new();
    let mut pads = 0;
    for part in &parts {
        assert_eq!(part["schema"], json!(["id:int64", "pad:string"]));
        let part_ids = part["ids"].as_array().unwrap();
        assert!(!part_ids.is_empty(), "an empty part");
        ids.extend(part_ids.iter().map(|id| id.as_u64().unwrap()));
        pads += part["pads"].as_u64().unwrap();
    }
    assert_eq!(ids, (0..10000).collect::<Vec<_>>());
    assert_eq!(pads, 10000 * 60);
    assert!(redis.buffer_keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_under_the_part_size_is_one_object_under_the_template_name() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    let records: Vec<Value> = (0..100).map(|i| json!({"id": i})).collect();
    buffer.push_many("small", &records).await.unwrap();
    drain(&redis, &s3, &[]);
    let objects = batch_objects(&s3, "jsonl").await;
    assert_eq!(objects.len(), 1);
    let (key, records) = objects.iter().next().unwrap();
    assert!(key.starts_with(&format!("{PREFIX}/small/")), "{key}");
    assert!(!key.contains(".part-"), "{key}");
    assert_eq!(records.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marker_on_s3_is_created_once_and_other_settings_are_refused() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    drain(&redis, &s3, &["--part-size", "1MiB"]);
    let marker = format!("{PREFIX}/.buffer-persist");
    let text = s3.get(&marker).await;
    assert_eq!(
        std::str::from_utf8(&text).unwrap(),
        "format=jsonl\ncompression=none\npart-size=1048576\n"
    );
    // The same settings start; other ones (a part size, a format) are refused, naming the
    // difference, and the marker is unchanged.
    drain(&redis, &s3, &["--part-size", "1MiB"]);
    for other in [
        &["--part-size", "2MiB"][..],
        &["--part-size", "1MiB", "--format", "csv"],
    ] {
        let (mut command, _work) = persist_command(&redis, &s3, "drain");
        command.args(other);
        let (status, stderr) = run(command);
        assert!(!status.success(), "{other:?} started");
        assert!(stderr.contains("not \""), "{stderr}");
        assert!(stderr.contains(&marker), "{stderr}");
    }
    assert_eq!(s3.get(&marker).await, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_object_with_other_contents_is_a_conflict_and_the_batch_stays() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    buffer.push("s", &json!({"id": 1})).await.unwrap();
    let locked = buffer
        .prepare_to_persist("s", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let batch = locked.batch().clone();
    drop(locked);
    let key = format!("{PREFIX}/s/{}.jsonl", batch.id);
    s3.put_if_absent(&key, "{\"id\":2}\n").await.unwrap();
    let (mut command, _work) = persist_command(&redis, &s3, "drain");
    command.args(["--lock-ttl", "1s", "--wait", "5s"]);
    let (status, stderr) = run(command);
    assert!(!status.success());
    assert!(stderr.contains("does not hold batch"), "{stderr}");
    assert_eq!(&s3.get(&key).await[..], b"{\"id\":2}\n");
    assert_eq!(buffer.get_prepared().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_drain_of_a_batch_many_parts_large_peaks_under_64_mib_plus_one_part() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    // 96 MiB in one batch, in records of 1 MiB: twelve parts of 8 MiB.
    let blob = "b".repeat(1024 * 1024 - 32);
    for i in 0..96u64 {
        buffer
            .push("huge", &json!({"id": i, "blob": blob}))
            .await
            .unwrap();
    }
    drop(blob);
    let (mut command, _work) = persist_command(&redis, &s3, "drain");
    command.args(["--part-size", "8MiB"]);
    let PeakRun {
        status,
        peak_kib,
        stderr,
    } = wait_with_peak_rss(command.spawn().unwrap());
    assert!(status.success(), "drain failed: {stderr}");
    eprintln!("s3 drain peak RSS: {peak_kib} KiB");
    assert!(peak_kib > 0, "the drain's memory was never read");
    assert!(
        peak_kib <= (64 + 8) * 1024,
        "drain peaked at {} MiB",
        peak_kib / 1024
    );
    let keys: Vec<String> = s3
        .keys()
        .await
        .into_iter()
        .filter(|k| k.contains(".part-"))
        .collect();
    assert!(keys.len() >= 11, "{keys:?}");
    assert!(redis.buffer_keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_template_on_s3_reads_back_in_duckdb_with_counts_per_partition() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    let counts = [("eu", 120u64), ("us", 45), ("ap", 7)];
    // A batch's date is its first write's: between these two readings of the UTC date
    // (which differ only in a run across midnight UTC).
    let date_before = chrono_free_utc_date();
    for (region, count) in counts {
        let records: Vec<Value> = (0..count).map(|i| json!({"id": i, "v": i * 2})).collect();
        buffer
            .push_many(format!("orders-{region}"), &records)
            .await
            .unwrap();
    }
    let template = "store={store}/dt={date}/hour={hour}/{batch}.{ext}";
    drain(&redis, &s3, &["--path-template", template]);
    // DuckDB's httpfs extension is downloaded at run time, which the test machines cannot do:
    // copy the objects to a directory and read them there, hive partitions and all.
    let dir = tempfile::tempdir().unwrap();
    let files = s3.download(PREFIX, dir.path()).await;
    assert_eq!(files.len(), 4, "{files:?}"); // three batches and the marker
    let script = format!(
        "import duckdb\n\
         rows = duckdb.sql(\"SELECT store, dt, count(*) AS n, sum(v) AS v FROM read_json_auto('{}/store=*/dt=*/hour=*/*.jsonl', hive_partitioning=1) GROUP BY ALL ORDER BY store\").fetchall()\n\
         for store, dt, n, v in rows: print(store, dt, n, v)\n",
        dir.path().display()
    );
    let output = Command::new(buffer_tests::python::python())
        .args(["-c", &script])
        .output_in_time();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let date_after = chrono_free_utc_date();
    let mut wanted: Vec<String> = counts
        .iter()
        .map(|(region, count)| {
            let sum: u64 = (0..*count).map(|i| i * 2).sum();
            format!("orders-{region} DATE {count} {sum}")
        })
        .collect();
    wanted.sort();
    let lines: Vec<String> = stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 4, "{line}");
            assert!(
                fields[1] == date_before || fields[1] == date_after,
                "{line}: not the date of the push ({date_before} or {date_after})"
            );
            format!("{} DATE {} {}", fields[0], fields[2], fields[3])
        })
        .collect();
    assert_eq!(lines, wanted, "{stdout}");
}

/// Today's UTC date as `YYYY-MM-DD`, from Python (this suite has no date crate), as the
/// template's `{date}` renders it.
fn chrono_free_utc_date() -> String {
    let output = Command::new(buffer_tests::python::python())
        .args([
            "-c",
            "import datetime; print(datetime.datetime.now(datetime.timezone.utc).date())",
        ])
        .output_in_time();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `count` records `{"id": i, "pad": <60 random letters>}`, the same for the same `seed`:
/// random enough that compression cannot shrink them to nothing, so parts fill up.
fn padded_records(seed: u64, count: u64) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let pad: String = (0..60)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect();
            json!({"id": i, "pad": pad})
        })
        .collect()
}

/// `text` without the terminal colour codes of the persister's human log format.
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('\x1b') {
        plain.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = match rest.find('m') {
            Some(end) => &rest[end + 1..],
            None => "",
        };
    }
    plain.push_str(rest);
    plain
}

/// `count` record texts `{"id":i,"words":"…"}` of words from a small vocabulary: compressible
/// enough that gzip's levels give clearly different sizes, so they split a batch differently.
fn wordy_texts(seed: u64, count: usize) -> Vec<String> {
    const WORDS: [&str; 24] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra",
        "tango", "uniform", "victor", "whiskey", "yankee",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let words: Vec<&str> = (0..30)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            format!("{{\"id\":{i},\"words\":\"{}\"}}", words.join(" "))
        })
        .collect()
}

/// The gzip parts the object output cuts a batch of `texts` into at `level` and `part_size`,
/// byte for byte: each record written as the output writes it (its text, then a newline) into
/// one gzip stream, the part closed at the first record after which the stream has put out
/// `part_size` bytes, unless it is the last record. Returns each part's bytes and the index of
/// its last record.
fn gzip_parts(texts: &[String], level: u32, part_size: usize) -> Vec<(Vec<u8>, usize)> {
    use std::io::Write;
    let start = || flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    let mut parts = Vec::new();
    let mut part = start();
    for (index, text) in texts.iter().enumerate() {
        part.write_all(text.as_bytes()).unwrap();
        part.write_all(b"\n").unwrap();
        if part.get_ref().len() >= part_size && index + 1 < texts.len() {
            let full = std::mem::replace(&mut part, start());
            parts.push((full.finish().unwrap(), index));
        }
    }
    parts.push((part.finish().unwrap(), texts.len() - 1));
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_marker_records_the_compression_level_and_a_persister_follows_the_markers_level() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    let marker = format!("{PREFIX}/.buffer-persist");

    // A fresh prefix: the marker records this version's level (zstd 3), after the part size.
    drain(&redis, &s3, &["--compress", "zstd", "--part-size", "64KiB"]);
    assert_eq!(
        std::str::from_utf8(&s3.get(&marker).await).unwrap(),
        "format=jsonl\ncompression=zstd\npart-size=65536\ncompression-level=3\n"
    );

    // A prefix whose marker names gzip level 9 (as a version compressing at 9 would have
    // written it): this version, whose own gzip level is 2, compresses at 9, so its parts are
    // exactly the ones a level-9 writer cuts, and not the level-2 ones.
    let gzip_9 = "format=jsonl\ncompression=gzip\npart-size=65536\ncompression-level=9\n";
    s3.replace(&marker, gzip_9).await;
    let texts = wordy_texts(22, 6000);
    buffer.push_json("levels", &texts).await.unwrap();
    let (mut command, _work) = persist_command(&redis, &s3, "drain");
    command
        .args([
            "--compress",
            "gzip",
            "--part-size",
            "64KiB",
            "--lock-ttl",
            "1s",
        ])
        .env("RUST_LOG", "info");
    let (status, stderr) = run(command);
    let stderr = without_colours(&stderr);
    assert!(status.success(), "drain failed: {stderr}");
    assert!(
        stderr.contains("compressing at the level of the prefix's marker")
            && stderr.contains("marker_level=9")
            && stderr.contains("own_level=2"),
        "the switch to the marker's level is not logged: {stderr}"
    );
    let objects = batch_objects(&s3, "jsonl.gz").await;
    let mut published = Vec::new();
    for key in objects.keys() {
        published.push(s3.get(key).await.to_vec());
    }
    let at_9 = gzip_parts(&texts, 9, 64 * 1024);
    let at_2 = gzip_parts(&texts, 2, 64 * 1024);
    let last_records = |parts: &[(Vec<u8>, usize)]| parts.iter().map(|p| p.1).collect::<Vec<_>>();
    println!(
        "levels: parts end at records {:?} at level 9, {:?} at level 2",
        last_records(&at_9),
        last_records(&at_2)
    );
    assert!(at_9.len() > 1, "the batch must be split to show anything");
    assert_ne!(
        last_records(&at_9),
        last_records(&at_2),
        "the two levels must split this batch differently for the test to mean something"
    );
    assert_eq!(published.len(), at_9.len(), "{:?}", objects.keys());
    assert!(
        published
            .iter()
            .zip(&at_9)
            .all(|(ours, (theirs, _))| ours == theirs),
        "the parts are not the level-9 writer's, byte for byte"
    );
    // gzip's header says so too: XFL 2 is "maximum compression".
    assert!(published.iter().all(|part| part[8] == 2));
    let ids: Vec<u64> = objects
        .values()
        .flatten()
        .map(|record| record["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..6000).collect::<Vec<_>>());
    assert_eq!(
        std::str::from_utf8(&s3.get(&marker).await).unwrap(),
        gzip_9,
        "the marker is never rewritten"
    );

    // A Parquet prefix at a level this version cannot write its columns at is refused, naming
    // both levels; nothing is written.
    s3.replace(
        &marker,
        "format=parquet\ncompression=zstd\ncsv-max-columns=64\npart-size=65536\ncompression-level=5\n",
    )
    .await;
    buffer.push_json("refused", &texts[..10]).await.unwrap();
    let (mut command, _work) = persist_command(&redis, &s3, "drain");
    command.args([
        "--format",
        "parquet",
        "--compress",
        "zstd",
        "--part-size",
        "64KiB",
        "--csv-max-columns",
        "64",
    ]);
    let (status, stderr) = run(command);
    assert!(
        !status.success(),
        "a Parquet drain at another level started"
    );
    assert!(
        stderr.contains(&marker) && stderr.contains("level 5") && stderr.contains("level 1"),
        "{stderr}"
    );
    assert!(
        !s3.keys().await.iter().any(|key| key.contains("/refused/")),
        "a refused persister wrote an object"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_while_the_s3_server_is_stopped_waits_logging_each_retry_then_persists_once() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let buffer = redis.buffer().await;
    s3.pause();
    // Requests time out after 1 s, so the old start-up (one marker PUT, then exit) would have
    // given up after about a second.
    let short_timeouts = [("AWS_TIMEOUT", "1s"), ("AWS_CONNECT_TIMEOUT", "1s")];
    let (mut command, _work) = persist_command(&redis, &s3, "run");
    command
        .args([
            "--interval",
            "50ms",
            "--max-age",
            "100ms",
            "--lock-ttl",
            "1s",
        ])
        .envs(short_timeouts)
        .env("RUST_LOG", "warn");
    let started = std::time::Instant::now();
    let mut runner = command.spawn().unwrap();
    // A second one, asked to stop while it is still waiting for S3.
    let (mut command, _stopped_work) = persist_command(&redis, &s3, "run");
    let stopped = command.envs(short_timeouts).spawn().unwrap();
    // Its log, line by line, as it comes.
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = std::thread::spawn({
        let lines = lines.clone();
        let stderr = runner.stderr.take().unwrap();
        move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                lines.lock().unwrap().push(without_colours(&line.unwrap()));
            }
        }
    });
    let retries = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains("cannot set up the output; trying again"))
            .cloned()
            .collect::<Vec<_>>()
    };

    // A drain meanwhile fails, saying what it could not reach.
    let (mut command, _drain_work) = persist_command(&redis, &s3, "drain");
    command.envs(short_timeouts);
    let (status, drain_stderr) = run(command);
    assert_eq!(status.code(), Some(1), "{drain_stderr}");
    assert!(
        drain_stderr.contains(&format!("{}/.buffer-persist", s3.url(PREFIX)))
            && drain_stderr.contains("error: publish"),
        "{drain_stderr}"
    );
    println!("drain while S3 is stopped: {}", drain_stderr.trim());

    let waited = eventually(Duration::from_secs(60), || async { retries().len() >= 4 }).await;
    assert!(
        waited,
        "not four retries logged: {:?}",
        lines.lock().unwrap()
    );
    assert!(
        runner.try_wait().unwrap().is_none(),
        "the persister exited while S3 was stopped"
    );
    let logged = retries();
    println!(
        "alive after {:?} with {} retries logged, the last: {}",
        started.elapsed(),
        logged.len(),
        logged.last().unwrap()
    );
    // Each line names what failed (the marker object) and when the next try is.
    assert!(
        logged
            .iter()
            .all(|line| line.contains(".buffer-persist") && line.contains("retry_in")),
        "{logged:?}"
    );
    assert!(logged[0].contains("retry_in=1s") && logged[1].contains("retry_in=2s"));
    assert!(logged[0].contains("timed out"), "{}", logged[0]);
    // Shutdown while it waits: exit 0.
    let asked = std::time::Instant::now();
    buffer_tests::stop_and_expect_success(stopped);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    s3.resume();
    let ledger = Arc::new(std::sync::Mutex::new(buffer_tests::Ledger::default()));
    produce(buffer.clone(), 0..300, 3, 30, ledger.clone()).await;
    let landed = eventually(Duration::from_secs(90), || async {
        buffer_tests::buffer_is_drained(&buffer).await
    })
    .await;
    assert!(
        landed,
        "the records did not land once S3 was back: {:?}",
        lines.lock().unwrap()
    );
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .all(|line| !line.contains("ERROR")),
        "{:?}",
        lines.lock().unwrap()
    );
    // SIGTERM: a clean exit.
    let terminated = Command::new("kill")
        .arg("-TERM")
        .arg(runner.id().to_string())
        .status_in_time();
    assert!(terminated.success());
    let status = runner.wait().unwrap();
    reader.join().unwrap();
    assert!(
        status.success(),
        "exit {status}: {:?}",
        lines.lock().unwrap()
    );
    let objects = batch_objects(&s3, "jsonl").await;
    let persisted = check_exactly_once(&objects, &ledger.lock().unwrap(), &redis);
    assert_eq!(persisted, 300);
}

/// The printed `error:` line of a failed command, checked for a cause printed twice: each
/// `: `-separated segment of the chain at most once.
fn assert_no_segment_repeats(stderr: &str) {
    for line in stderr.lines().filter(|line| line.starts_with("error: ")) {
        let segments: Vec<&str> = line.split(": ").collect();
        for (i, segment) in segments.iter().enumerate() {
            assert!(
                segment.len() < 12 || !segments[i + 1..].contains(segment),
                "{segment:?} is printed twice in: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_endpoint_without_aws_allow_http_names_the_variable_to_set() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let (mut command, _work) = persist_command(&redis, &s3, "drain");
    command.env_remove("AWS_ALLOW_HTTP");
    let (status, stderr) = run(command);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("AWS_ALLOW_HTTP=true"),
        "the message names the variable: {stderr}"
    );
    assert!(stderr.contains(&s3.endpoint()), "{stderr}");
    assert!(!stderr.contains("builder error"), "{stderr}");
    assert_no_segment_repeats(&stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_does_not_exist_is_named_as_missing_and_its_error_printed_once() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let work = tempfile::tempdir().unwrap();
    let mut command = Command::new(BINARY);
    command
        .current_dir(work.path())
        .args([
            "drain",
            "--redis",
            &redis.url(),
            "--out",
            "s3://no-such-bucket/land",
        ])
        .envs(s3.env())
        .env("RUST_LOG", "error");
    let (status, stderr) = run(command);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("the bucket no-such-bucket does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("not found"), "{stderr}");
    assert_eq!(
        stderr.matches("NoSuchBucket").count(),
        stderr.contains("NoSuchBucket") as usize,
        "the S3 error at most once: {stderr}"
    );
    assert_no_segment_repeats(&stderr);
}

/// A drain through the fault proxy: the same command, with the S3 endpoint pointed at it.
fn drain_through(
    redis: &RedisServer,
    s3: &S3Server,
    proxy: &HttpFaultProxy,
    extra: &[&str],
) -> (std::process::ExitStatus, String) {
    let (mut command, _work) = persist_command(redis, s3, "drain");
    command
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .args(["--lock-ttl", "1s", "--wait", "20s"])
        .args(extra);
    run(command)
}

/// What a real store does under load or in a crash, on every upload (the marker, a batch's
/// single object, a batch's part objects): throttling and
/// server errors, a node that dies with half a body received, and one that commits and dies
/// before it answers. The client retries; where a retry finds its own object already there,
/// the persister compares it and takes it as written. Every record lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_error_replies_cut_uploads_and_lost_answers_land_every_record_once() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let proxy = HttpFaultProxy::start(s3.port());
    let buffer = redis.buffer().await;
    // One store of small records (one PUT each batch) and one of padded ones, split into
    // parts of 2 KiB (a multipart upload).
    let mut ledger = Ledger::default();
    let small: Vec<Value> = (0..200).map(|id| json!({"id": id})).collect();
    buffer.push_many("single", &small).await.unwrap();
    let padded: Vec<Value> = padded_records(7, 200)
        .into_iter()
        .enumerate()
        .map(|(i, mut record)| {
            record["id"] = json!(1000 + i as u64);
            record
        })
        .collect();
    buffer.push_many("parts", &padded).await.unwrap();
    ledger.acknowledged.extend(0..200);
    ledger.acknowledged.extend(1000..1200);
    // Faults on the marker's PUT, on the single object's and on the parts' PUTs.
    let under = |store: &str| format!("PUT /{}/{PREFIX}/{store}", s3.bucket());
    let marker = format!("PUT /{}/{PREFIX}/.buffer-persist", s3.bucket());
    for (matching, fault) in [
        (
            marker.clone(),
            HttpFault::Reply {
                status: 503,
                code: "SlowDown",
            },
        ),
        (marker, HttpFault::DropResponse),
        (
            under("single/"),
            HttpFault::Reply {
                status: 503,
                code: "SlowDown",
            },
        ),
        (under("single/"), HttpFault::CutRequestBody),
        (under("single/"), HttpFault::DropResponse),
        (
            under("parts/"),
            HttpFault::Reply {
                status: 500,
                code: "InternalError",
            },
        ),
        (under("parts/"), HttpFault::DropResponse),
        (under("parts/"), HttpFault::CutRequestBody),
        (under("parts/"), HttpFault::DropResponse),
    ] {
        proxy.inject(&matching, fault);
    }
    let mut attempts = Vec::new();
    loop {
        let (status, stderr) = drain_through(&redis, &s3, &proxy, &["--part-size", "2KiB"]);
        attempts.push((status, stderr));
        let left = !buffer.stores().await.unwrap().is_empty()
            || !buffer.get_prepared().await.unwrap().is_empty();
        if !left || attempts.len() == 4 {
            break;
        }
    }
    println!(
        "faults applied: {:#?}\n{} requests, {} drains: {:?}",
        proxy.applied(),
        proxy.requests(),
        attempts.len(),
        attempts
            .iter()
            .map(|(status, _)| status.code())
            .collect::<Vec<_>>()
    );
    // Every planned fault met its request.
    assert_eq!(
        proxy.pending(),
        0,
        "faults left unapplied: {:?}",
        proxy.applied()
    );
    let (last_status, last_stderr) = attempts.last().unwrap();
    assert!(
        last_status.success(),
        "the last drain failed: {last_stderr}"
    );
    let objects = batch_objects(&s3, "jsonl").await;
    assert!(
        objects.keys().any(|k| k.contains(".part-")),
        "no multipart upload: {:?}",
        objects.keys()
    );
    let persisted = check_exactly_once(&objects, &ledger, &redis);
    assert_eq!(persisted, 400);
}

/// Replies held 1.5 s each, longer than the 1 s lock TTL: the heartbeat keeps the batch,
/// a second drain started meanwhile writes nothing twice, and the batch lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_s3_replies_keep_the_lock_and_land_once() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let proxy = HttpFaultProxy::start(s3.port());
    let buffer = redis.buffer().await;
    let records: Vec<Value> = (0..300).map(|id| json!({"id": id})).collect();
    buffer.push_many("slow", &records).await.unwrap();
    proxy.set_reply_delay(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let slow = std::thread::spawn({
        let (mut command, work) = persist_command(&redis, &s3, "drain");
        command.env("AWS_ENDPOINT_URL", proxy.endpoint()).args([
            "--lock-ttl",
            "1s",
            "--wait",
            "20s",
        ]);
        move || {
            let result = run(command);
            drop(work);
            result
        }
    });
    // Once the slow drain holds the batch, a second one (straight to the server) finds it
    // locked and leaves it.
    let held = eventually(Duration::from_secs(30), || async {
        let prepared = buffer.get_prepared().await.unwrap();
        match prepared.first() {
            Some(batch) => buffer
                .lock_info(&batch.store, Some(&batch.id))
                .await
                .unwrap()
                .is_some(),
            None => false,
        }
    })
    .await;
    assert!(held, "the slow drain never held the batch");
    let (mut rival, _work) = persist_command(&redis, &s3, "drain");
    rival.args(["--lock-ttl", "1s"]);
    let (rival_status, rival_stderr) = run(rival);
    assert!(rival_status.success(), "{rival_stderr}");
    let (status, stderr) = slow.join().unwrap();
    assert!(status.success(), "{stderr}");
    let elapsed = started.elapsed();
    // The marker's PUT and the batch's PUT each waited 1.5 s at least.
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert!(proxy.requests() >= 2, "{} requests", proxy.requests());
    let objects = batch_objects(&s3, "jsonl").await;
    let ledger = Ledger {
        acknowledged: (0..300).collect(),
        unknown: BTreeSet::new(),
    };
    assert_eq!(check_exactly_once(&objects, &ledger, &redis), 300);
}
