//! The `buffer-persist` binary as operators run it: several processes at once, killed
//! mid-batch, fed from stdin. Lives in this crate so cargo builds the binary under test with
//! the same features (`failpoints` comes in through buffer-tests' dev-dependency when the
//! whole workspace is tested).

use buffer_tests::{CommandWithin, KillOnDrop};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use buffer_persist::open_decoded;
use buffer_tests::{
    PeakRun, RedisServer, eventually, files_under, output_records, published_records,
    push_mixed_size_batch, stop_and_expect_success as stop, wait_with_peak_rss,
};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

fn ids(out: &Path) -> Vec<u64> {
    output_records(out)
        .values()
        .flatten()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

fn persist_command(server: &RedisServer, out: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg(subcommand)
        .arg("--redis")
        .arg(server.url())
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn spawn_runner(server: &RedisServer, out: &Path, extra: &[&str]) -> Child {
    persist_command(server, out, "run")
        .args([
            "--interval",
            "50ms",
            "--max-age",
            "100ms",
            "--max-records",
            "200",
            "--lock-ttl",
            "2s",
        ])
        .args(extra)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_persister_processes_never_write_a_batch_twice() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    let runners: Vec<KillOnDrop> = (0..3)
        .map(|_| KillOnDrop::new(spawn_runner(&server, out.path(), &[])))
        .collect();
    let total = 12_000u64;
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let buffer = buffer.clone();
        producers.push(tokio::spawn(async move {
            for chunk in (p * 3000..(p + 1) * 3000).collect::<Vec<_>>().chunks(20) {
                let records: Vec<Value> = chunk.iter().map(|i| json!({"id": i})).collect();
                buffer
                    .push_many(format!("s{}", chunk[0] % 6), &records)
                    .await
                    .unwrap();
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    // The three runners must persist everything themselves: the final drain is only a
    // check that nothing is left, and it must find nothing to write.
    let persisted_by_runners = eventually(Duration::from_secs(30), || async {
        buffer_tests::buffer_is_drained(&buffer).await
    })
    .await;
    assert!(persisted_by_runners, "the runners left records for 30 s");
    for runner in runners {
        stop(runner.take());
    }
    let files_by_runners = files_under(out.path()).len();
    let drained = buffer_tests::output_within(
        &mut persist_command(&server, out.path(), "drain"),
        buffer_tests::COMMAND_DEADLINE,
    );
    assert!(drained.status.success());
    assert_eq!(
        files_under(out.path()).len(),
        files_by_runners,
        "the final drain found something to write"
    );
    let mut ids = ids(out.path());
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "duplicates: {}", n - ids.len());
    assert_eq!(ids, (0..total).collect::<Vec<_>>());
    assert!(server.buffer_keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_left_by_a_killed_persister_is_recovered_by_the_next_run() {
    buffer_tests::require_failpoints!();
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    let records: Vec<Value> = (0..500).map(|i| json!({"id": i})).collect();
    buffer.push_many("s", &records).await.unwrap();
    // The first persister dies (abort, like SIGKILL) right after preparing: the batch is
    // prepared and locked by a dead process.
    let status = persist_command(&server, out.path(), "drain")
        .args(["--lock-ttl", "1s"])
        .env("BUFFER_FAILPOINT", "after-prepare")
        .status_in_time();
    assert!(!status.success(), "the failpoint killed it");
    let prepared = buffer.get_prepared().await.unwrap();
    assert_eq!(prepared.len(), 1);
    let lock = buffer
        .lock_info(&prepared[0].store, Some(&prepared[0].id))
        .await
        .unwrap();
    assert!(lock.is_some(), "locked by the dead one");
    assert!(output_records(out.path()).is_empty());

    let runner = spawn_runner(&server, out.path(), &[]);
    let done = eventually(Duration::from_secs(20), || async {
        buffer.get_prepared().await.unwrap().is_empty()
    })
    .await;
    stop(runner);
    assert!(done, "recovered once the dead holder's lock expired");
    assert_eq!(ids(out.path()), (0..500).collect::<Vec<_>>());
    assert!(server.buffer_keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pushes_json_lines_and_reports_bad_lines() {
    let server = RedisServer::start();
    let mut child = Command::new(BINARY)
        .args([
            "push",
            "--redis",
            &server.url(),
            "--batch",
            "2",
            "cli store",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"a\":1}\nnot json\n\n[1,2]\n{\"a\":2}\n{\"a\":3}\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2:") && stderr.contains("not valid JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 4:") && stderr.contains("an array"),
        "{stderr}"
    );
    assert!(stderr.contains("pushed 3 records"), "{stderr}");
    let buffer = server.buffer().await;
    let batch = buffer
        .prepare_to_persist("cli store", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let contents = buffer.get_contents(&batch.store, &batch.id).await.unwrap();
    assert_eq!(
        contents.records,
        [json!({"a": 1}), json!({"a": 2}), json!({"a": 3})]
    );

    // `stores --json` lists the prepared batch.
    let listed = buffer_tests::output_within(
        Command::new(BINARY).args(["stores", "--json", "--redis", &server.url()]),
        buffer_tests::COMMAND_DEADLINE,
    );
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["prepared"][0]["store"], json!("cli store"));
    assert_eq!(listed["prepared"][0]["records"], json!(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_and_bad_flags_are_clear_errors() {
    let port = buffer_tests::free_port();
    let out = tempfile::tempdir().unwrap();
    let output = buffer_tests::output_within(
        Command::new(BINARY)
            .args([
                "drain",
                "--redis",
                &format!("redis://:hunter2@127.0.0.1:{port}"),
                "--out",
            ])
            .arg(out.path())
            .args(["--redis-timeout", "500ms"]),
        buffer_tests::COMMAND_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "cannot reach Redis at redis://:***@127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");

    let output = buffer_tests::output_within(
        Command::new(BINARY).args(["run", "--out", "x", "--max-bytes", "lots"]),
        buffer_tests::COMMAND_DEADLINE,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("\"lots\" is not a size"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_setting_can_come_from_the_environment() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    buffer.push("env", &json!({"id": 1})).await.unwrap();
    let status = Command::new(BINARY)
        .arg("drain")
        .env("BUFFER_REDIS_URL", server.url())
        .env("BUFFER_OUT", out.path())
        .env("BUFFER_FORMAT", "csv")
        .env("BUFFER_COMPRESS", "gzip")
        .env("BUFFER_LOCK_TTL", "5s")
        .env("BUFFER_CSV_MAX_COLUMNS", "0")
        .env("BUFFER_LOG_FORMAT", "json")
        .status_in_time();
    assert!(status.success());
    let files: Vec<PathBuf> = files_under(out.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".csv.gz"))
        .collect();
    assert_eq!(files.len(), 1, "{:?}", files_under(out.path()));
    let mut text = String::new();
    open_decoded(&files[0])
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    // No named column: the record's keys are all in the trailing JSON column.
    assert_eq!(text, "_rest\n\"{\"\"id\"\":1}\"\n");
}

/// Issue 8 item 6: `drain` next to a busy `run` persister and producers that never stop. It
/// persists what there was when it started (whoever writes each batch), exits 0, and chases
/// nothing prepared later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_beside_a_running_persister_under_load_exits_zero_and_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    let runner = spawn_runner(&server, out.path(), &[]);
    // Four producers push without pause into 24 stores; each acknowledged id is counted.
    const PRODUCERS: u64 = 4;
    let stop_pushing = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicU64>> = (0..PRODUCERS).map(|_| Arc::default()).collect();
    let mut producers = Vec::new();
    for (p, acked) in acked.iter().enumerate() {
        let (buffer, stop_pushing, acked) = (buffer.clone(), stop_pushing.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            // Producer p pushes ids p, p + 4, p + 8, … in chunks of 20, in order; `acked`
            // is how many of its ids are acknowledged.
            let mut count = 0u64;
            while !stop_pushing.load(Ordering::SeqCst) {
                let records: Vec<Value> = (count..count + 20)
                    .map(|i| json!({"id": p as u64 + PRODUCERS * i, "pad": "x".repeat(200)}))
                    .collect();
                buffer
                    .push_many(format!("load-{}", (count / 20 + p as u64) % 24), &records)
                    .await
                    .unwrap();
                count += 20;
                acked.store(count, Ordering::SeqCst);
            }
        }));
    }
    // Let the runner get going, with batches in flight.
    assert!(
        eventually(Duration::from_secs(20), || async {
            !files_under(out.path()).is_empty()
        })
        .await,
        "the runner writes"
    );
    // Everything acknowledged by now is in the drain's snapshot (or persisted already).
    let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let drain = tokio::task::spawn_blocking({
        let mut command = persist_command(&server, out.path(), "drain");
        command.args(["--lock-ttl", "2s"]);
        move || buffer_tests::output_within(&mut command, buffer_tests::COMMAND_DEADLINE)
    });
    let drained = drain.await.unwrap();
    let stderr = String::from_utf8_lossy(&drained.stderr);
    assert!(drained.status.success(), "drain failed: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    // Drain said it is all written: check before anything else runs. The runner is still
    // writing, so its temporary files are skipped here (the final check below counts them).
    let mut written: Vec<u64> = published_records(out.path())
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    written.sort_unstable();
    for (p, count) in before.iter().enumerate() {
        for i in 0..*count {
            let id = p as u64 + PRODUCERS * i;
            assert!(
                written.binary_search(&id).is_ok(),
                "id {id}, acknowledged before the drain started, is not in a file after it exited 0"
            );
        }
    }

    stop_pushing.store(true, Ordering::SeqCst);
    for producer in producers {
        producer.await.unwrap();
    }
    stop(runner);
    let status = persist_command(&server, out.path(), "drain").status_in_time();
    assert!(status.success());
    let total: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let mut expected: Vec<u64> = (0..PRODUCERS)
        .flat_map(|p| (0..total[p as usize]).map(move |i| p + PRODUCERS * i))
        .collect();
    expected.sort_unstable();
    let mut all = ids(out.path());
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(n, all.len(), "duplicates: {}", n - all.len());
    assert_eq!(all, expected, "every acknowledged record, once");
    assert!(
        server.buffer_keys().is_empty(),
        "{:?}",
        server.buffer_keys()
    );
}

/// Issue 8 item 11: a batch that fails every time (its target path is a directory) is retried
/// with a growing wait instead of at every poll, shows as failing in `stores --json`, and is
/// persisted once the cause is gone, its failure record removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_batch_backs_off_shows_in_stores_and_is_persisted_once_fixed() {
    use buffer_persist::{Compression, Format, PersistConfig, Persister, batch_path};
    use tokio_util::sync::CancellationToken;

    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    let records: Vec<Value> = (0..3).map(|i| json!({"id": i})).collect();
    buffer.push_many("poisoned", &records).await.unwrap();
    // Prepare the batch to learn its id, and put a directory where its file must go.
    let mut guard = buffer
        .lock("poisoned", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let batch = guard.prepare().await.unwrap().unwrap();
    guard.release().await.unwrap();
    let target = batch_path(
        out.path(),
        &batch.store,
        &batch.id,
        Format::JsonLines,
        Compression::None,
    );
    std::fs::create_dir_all(&target).unwrap();

    let mut config = PersistConfig::new(out.path());
    config.interval = Duration::from_millis(50);
    config.max_age = Duration::from_millis(100);
    let persister = Persister::new(buffer.clone(), config);
    let shutdown = CancellationToken::new();
    let started = std::time::Instant::now();
    let running = tokio::spawn({
        let (persister, shutdown) = (persister.clone(), shutdown.clone());
        async move { persister.run(shutdown).await }
    });
    // Retrying at every poll would be 40 attempts in 40 polls. Backing off from 50 ms and
    // doubling, attempt n + 1 comes at least 50 ms × (2^n - 1) after the first: in t ms, at
    // most 1 + log2(t / 50 + 1) attempts (6 in the 2 s that 40 polls take at best).
    assert!(
        eventually(Duration::from_secs(60), || async {
            persister.stats().polls >= 40
        })
        .await
    );
    let stats = persister.stats();
    let elapsed_ms = started.elapsed().as_millis() as f64;
    let most = 1 + (elapsed_ms / 50.0 + 1.0).log2().floor() as u64;
    assert!(
        (2..=most).contains(&stats.batch_failures),
        "attempts at the poisoned batch in {} polls and {elapsed_ms} ms: {} (at most {most})",
        stats.polls,
        stats.batch_failures
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            persister.stats().in_backoff == 1
        })
        .await,
        "the backoff gauge counts it: {:?}",
        persister.stats()
    );

    // `stores` (another process) shows it failing: attempts, last error, next retry.
    let listed = buffer_tests::output_within(
        Command::new(BINARY).args(["stores", "--json", "--redis", &server.url()]),
        buffer_tests::COMMAND_DEADLINE,
    );
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let failure = &listed["prepared"][0]["failure"];
    assert_eq!(listed["prepared"][0]["batch"], json!(batch.id.to_string()));
    let attempts = failure["attempts"].as_u64().unwrap();
    assert!((1..=stats.batch_failures).contains(&attempts), "{failure}");
    let error = failure["last_error"].as_str().unwrap();
    assert!(error.contains(&target.display().to_string()), "{error}");
    assert!(
        failure["next_retry_ms"].as_u64().unwrap() > failure["last_ms"].as_u64().unwrap(),
        "{failure}"
    );
    let human = buffer_tests::output_within(
        Command::new(BINARY).args(["stores", "--redis", &server.url()]),
        buffer_tests::COMMAND_DEADLINE,
    );
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("FAILING: "), "{human}");
    assert!(human.contains(&target.display().to_string()), "{human}");

    // Once the directory is gone, the next retry writes the batch and the record goes.
    std::fs::remove_dir(&target).unwrap();
    let persisted = eventually(Duration::from_secs(30), || async {
        buffer.get_prepared().await.unwrap().is_empty()
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert!(persisted, "persisted after the cause was removed");
    assert_eq!(ids(out.path()), [0, 1, 2]);
    assert!(buffer.failures().await.unwrap().is_empty());
    assert!(
        server.buffer_keys().is_empty(),
        "{:?}",
        server.buffer_keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_size_batch_drains_in_bounded_memory_with_no_slow_command() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    // 200 000 tiny records, then 40 records of 4 MiB right after them in the same store: the
    // batch's average record is under 1 KiB, so a page sized by the average would hold all
    // 40 big records at once.
    push_mixed_size_batch(&buffer, "mixed").await;
    let tiny = buffer_tests::MIXED_TINY_RECORDS;
    // No command may scale with the batch (a whole-batch LRANGE or DEL of 160 MiB takes
    // hundreds of ms). The slowest one expected, a page of 4 MiB records, takes about 2 ms:
    // 50 ms leaves 25 times that for a redis-server preempted on a loaded machine (20 ms
    // left only 10 times, and SLOWLOG counts the time a preempted command waits).
    server.command(&["CONFIG", "SET", "slowlog-log-slower-than", "50000"]);
    server.command(&["SLOWLOG", "RESET"]);

    let PeakRun {
        status,
        peak_kib,
        stderr,
    } = wait_with_peak_rss(
        persist_command(&server, out.path(), "drain")
            .spawn()
            .unwrap(),
    );
    assert!(status.success(), "drain failed: {stderr}");
    assert!(peak_kib > 0, "the drain's memory was never read");
    assert!(
        peak_kib <= 64 * 1024,
        "drain peaked at {} MiB",
        peak_kib / 1024
    );
    eprintln!("drain peak RSS: {peak_kib} KiB");
    // `SLOWLOG LEN` answers an integer; the test crate reads replies as text.
    let slow = server.command(&["SLOWLOG", "LEN"]);
    let slow: String = slow.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(
        slow,
        "0",
        "commands over 50 ms during the drain: {}",
        server.command(&["SLOWLOG", "GET", "128"])
    );

    // Every record, in push order, read line by line (the file is 160 MiB).
    let files: Vec<PathBuf> = files_under(out.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1, "{:?}", files_under(out.path()));
    let mut lines = 0u64;
    let reader = std::io::BufReader::new(open_decoded(&files[0]).unwrap());
    for line in std::io::BufRead::lines(reader) {
        let record: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(record["id"], json!(lines));
        lines += 1;
    }
    assert_eq!(lines, tiny + 40);
    assert!(server.buffer_keys().is_empty());
}

/// Issue 13: each batch the persister handles is a span (store, batch, records, outcome), and
/// the JSON log puts those fields on every line logged inside it, so one batch's lines can be
/// picked out of the log by its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_batch_span_on_each_line_of_a_batch() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = server.buffer().await;
    buffer
        .push_many(
            "logged",
            &[json!({"id": 1}), json!({"id": 2}), json!({"id": 3})],
        )
        .await
        .unwrap();
    let output = buffer_tests::output_within(
        persist_command(&server, out.path(), "drain")
            .env("BUFFER_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,buffer_persist=debug"),
        buffer_tests::COMMAND_DEADLINE,
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let in_batch: Vec<&Value> = lines
        .iter()
        .filter(|line| line["span"]["name"] == "batch")
        .collect();
    let persisted = in_batch
        .iter()
        .find(|line| line["fields"]["message"] == "persisted")
        .unwrap_or_else(|| panic!("no `persisted` line in a batch span:\n{stderr}"));
    let span = &persisted["span"];
    assert_eq!(span["store"], "logged", "{persisted}");
    assert_eq!(span["records"], 3, "{persisted}");
    assert_eq!(span["outcome"], "persisted", "{persisted}");
    let batch = span["batch"].as_str().unwrap();
    let (ms, random) = batch.split_once('-').unwrap();
    assert!(ms.parse::<u64>().is_ok() && random.len() == 16, "{batch}");
    // The file it names is the one written.
    let file = persisted["fields"]["file"].as_str().unwrap();
    assert!(
        files_under(out.path()).contains(&PathBuf::from(file)),
        "{file} not in {:?}",
        files_under(out.path())
    );
    // Every line of the attempt carries the same store and batch id: the debug `prepared`
    // line (logged before the id was known to anyone else), `persisted`, and the end line.
    let messages: Vec<&str> = in_batch
        .iter()
        .map(|line| line["fields"]["message"].as_str().unwrap())
        .collect();
    for wanted in ["prepared", "persisted", "batch attempt ended"] {
        assert!(messages.contains(&wanted), "{wanted} not in {messages:?}");
    }
    for line in &in_batch {
        assert_eq!(line["span"]["batch"], batch, "{line}");
        assert_eq!(line["span"]["store"], "logged", "{line}");
    }
    let ended = in_batch
        .iter()
        .find(|line| line["fields"]["message"] == "batch attempt ended")
        .unwrap();
    assert_eq!(ended["span"]["outcome"], "persisted", "{ended}");
}

/// The value of `name` in a live process's environment (`/proc/<pid>/environ`), or `None`.
fn environment_value(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    environ
        .split(|&byte| byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix(prefix.as_str()).map(str::to_owned))
}

/// The binary runs with glibc's mmap threshold fixed at 4 MiB, in the process that was started
/// (it replaces itself, so the pid a supervisor holds is the persister's), and a threshold
/// the user set is kept (main.rs; what it does for memory is checked by
/// `a_large_mixed_size_batch_drains_to_parquet_in_bounded_memory` in parquet.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_with_a_fixed_mmap_threshold_and_keeps_the_users_own() {
    let server = RedisServer::start();
    for (given, expected) in [(None, "4194304"), (Some("1048576"), "1048576")] {
        let out = tempfile::tempdir().unwrap();
        let mut command = persist_command(&server, out.path(), "run");
        command.env_remove("MALLOC_MMAP_THRESHOLD_");
        if let Some(value) = given {
            command.env("MALLOC_MMAP_THRESHOLD_", value);
        }
        let runner = command.spawn().unwrap();
        let pid = runner.id();
        // The new image's environment shows once it has replaced the first one; the output
        // marker, once it is running (and handles SIGTERM).
        let seen = eventually(Duration::from_secs(10), || async {
            environment_value(pid, "MALLOC_MMAP_THRESHOLD_").as_deref() == Some(expected)
                && out.path().join(".buffer-persist").exists()
        })
        .await;
        let last = environment_value(pid, "MALLOC_MMAP_THRESHOLD_");
        stop(runner);
        assert!(
            seen,
            "given {given:?}, the persister (pid {pid}) ran with MALLOC_MMAP_THRESHOLD_={last:?}, \
             not {expected}"
        );
    }
}
