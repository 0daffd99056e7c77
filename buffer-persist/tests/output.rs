//! The output directory as the `buffer-persist` binary sets it up: the marker that makes
//! persisters sharing `OUT` agree on their settings, and `--out` values it refuses.

use buffer_tests::CommandWithin;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use buffer_persist::MARKER_FILE;
use buffer_tests::RedisServer;

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// A `drain` of `server` into `out` with `extra` flags, not yet started.
fn drain(server: &RedisServer, out: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("drain")
        .arg("--redis")
        .arg(server.url())
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn marker(out: &Path) -> String {
    fs::read_to_string(out.join(MARKER_FILE)).unwrap()
}

#[test]
fn two_persisters_starting_together_on_a_fresh_out_both_start_fifty_times_in_a_row() {
    let server = RedisServer::start();
    for round in 0..50 {
        let out = tempfile::tempdir().unwrap();
        let first = drain(&server, out.path(), &[]).spawn().unwrap();
        let second = drain(&server, out.path(), &[]).spawn().unwrap();
        for child in [first, second] {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}: {}",
                stderr(&output)
            );
        }
        assert_eq!(marker(out.path()), "format=jsonl\ncompression=none\n");
        let names: Vec<String> = fs::read_dir(out.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [MARKER_FILE],
            "round {round}: no temporary file left"
        );
    }
}

#[test]
fn persisters_with_different_settings_starting_together_never_both_start() {
    let server = RedisServer::start();
    for round in 0..20 {
        let out = tempfile::tempdir().unwrap();
        let jsonl = drain(&server, out.path(), &[]).spawn().unwrap();
        let csv = drain(&server, out.path(), &["--format", "csv"])
            .spawn()
            .unwrap();
        let outputs = [jsonl, csv].map(|child| child.wait_with_output().unwrap());
        let started: Vec<bool> = outputs.iter().map(|o| o.status.success()).collect();
        assert_eq!(
            started.iter().filter(|s| **s).count(),
            1,
            "round {round}: exactly one starts: {:?}",
            outputs.iter().map(stderr).collect::<Vec<_>>()
        );
        let refused = &outputs[usize::from(started[0])];
        assert!(
            stderr(refused).contains("persisters sharing a directory must use the same"),
            "round {round}: {}",
            stderr(refused)
        );
        let expected = if started[0] {
            "format=jsonl\ncompression=none\n"
        } else {
            "format=csv\ncompression=none\ncsv-max-columns=1024\n"
        };
        assert_eq!(marker(out.path()), expected, "round {round}");
    }
}

#[test]
fn a_half_made_marker_is_not_a_mismatch() {
    let server = RedisServer::start();
    // Empty, as a persister of an older version killed between creating and writing it leaves
    // it: after a short grace it is taken as left by a crashed start and replaced.
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join(MARKER_FILE), "").unwrap();
    let output = drain(&server, out.path(), &[]).output_in_time();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(marker(out.path()), "format=jsonl\ncompression=none\n");

    // Cut short the same way, with other settings: replaced too, never compared.
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join(MARKER_FILE), "format=csv\ncompr").unwrap();
    let output = drain(&server, out.path(), &[]).output_in_time();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(marker(out.path()), "format=jsonl\ncompression=none\n");
}

#[test]
fn a_half_made_marker_that_gets_completed_is_read_once_complete() {
    let server = RedisServer::start();
    for (written, starts) in [
        ("format=jsonl\ncompression=none\n", true),
        ("format=csv\ncompression=gzip\n", false),
    ] {
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join(MARKER_FILE);
        fs::write(&path, "").unwrap();
        let mut child = drain(&server, out.path(), &[])
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap();
        // Once the persister says it is waiting for the half-made marker, its slow writer
        // finishes it (in place, as that writer would): the persister compares what was
        // written, not the empty file it first saw.
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            assert!(
                log.read_line(&mut line).unwrap() > 0,
                "exited early: {seen}"
            );
            seen.push_str(&line);
            if line.contains("half-made") {
                break;
            }
        }
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(written.as_bytes())
            .unwrap();
        log.read_to_string(&mut seen).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.success(), starts, "{seen}");
        if !starts {
            assert!(seen.contains("format=csv, compression=gzip"), "{seen}");
        }
        assert_eq!(marker(out.path()), written, "the marker is never replaced");
    }
}

#[test]
fn stray_marker_temporary_files_from_crashed_starts_are_removed() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let stray = out
        .path()
        .join(format!("{MARKER_FILE}.0123456789abcdef.tmp"));
    fs::write(&stray, "format=csv\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let output = drain(&server, out.path(), &[]).output_in_time();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stray.exists(), "the stray temporary file is gone");
    assert_eq!(marker(out.path()), "format=jsonl\ncompression=none\n");
}

#[test]
fn an_out_with_an_unsupported_scheme_is_refused_by_name() {
    // Nothing listens on this port: the setting must be refused before Redis is tried.
    let redis = format!("redis://127.0.0.1:{}", buffer_tests::free_port());
    let cwd = tempfile::tempdir().unwrap();
    for subcommand in ["drain", "run"] {
        let output = Command::new(BINARY)
            .current_dir(cwd.path())
            .args([subcommand, "--redis", &redis, "--out", "file:///bucket/x"])
            .output_in_time();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{subcommand}: {text}");
        assert!(
            text.contains("--out file:///bucket/x uses the file:// scheme")
                && text.contains("s3://bucket/prefix"),
            "{subcommand}: {text}"
        );
    }
    let output = Command::new(BINARY)
        .current_dir(cwd.path())
        .args(["drain", "--redis", &redis])
        .env("BUFFER_OUT", "gs://bucket")
        .output_in_time();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("gs://bucket"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "no directory named after the scheme"
    );
}

#[test]
fn a_path_template_that_could_misplace_a_file_is_refused_by_name_before_anything_is_written() {
    // Nothing listens on this port: the template must be refused before Redis is tried.
    let redis = format!("redis://127.0.0.1:{}", buffer_tests::free_port());
    let cwd = tempfile::tempdir().unwrap();
    for (subcommand, template, problem) in [
        (
            "drain",
            "../{store}/{batch}.{ext}",
            "could leave the output directory",
        ),
        (
            "run",
            "{store}/{bacth}.{ext}",
            "{bacth} is not a placeholder",
        ),
        ("drain", "{batch}.{ext}", "has no {store}"),
    ] {
        let output = Command::new(BINARY)
            .current_dir(cwd.path())
            .args([subcommand, "--redis", &redis, "--out", "out"])
            .env("BUFFER_PATH_TEMPLATE", template)
            .output_in_time();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{template}: {text}");
        assert!(text.contains("--path-template"), "{template}: {text}");
        assert!(text.contains(problem), "{template}: {text}");
    }
    assert_eq!(
        fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "no output directory was created"
    );
}

#[test]
fn the_path_template_flag_puts_files_in_hive_partitions() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let first_write_ms = runtime.block_on(async {
        let buffer = server.buffer().await;
        buffer
            .push("orders", &serde_json::json!({"n": 1}))
            .await
            .unwrap()
            .first_write_ms
    });
    let template = "store={store}/dt={date}/hour={hour}/{batch}.{ext}";
    let output = drain(
        &server,
        out.path(),
        &["--path-template", template, "--compress", "gzip"],
    )
    .output_in_time();
    assert!(output.status.success(), "{}", stderr(&output));
    // The partition of the first write, by `date -u`.
    let date = Command::new("date")
        .arg("-u")
        .arg("-d")
        .arg(format!("@{}", first_write_ms / 1000))
        .arg("+dt=%F/hour=%H")
        .output_in_time();
    let partition = String::from_utf8(date.stdout).unwrap();
    let dir = out.path().join("store=orders").join(partition.trim());
    let files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?} in {dir:?}");
    assert!(files[0].ends_with(".jsonl.gz"), "{files:?}");
    assert!(marker(out.path()).contains(&format!("path-template={template}\n")));
}

/// A temporary file whose drop takes a second, as closing a file can when its last writes
/// wait for a slow disk (a buffer flushed, a pending `fdatasync`). Notes where and when the
/// drop ran.
struct SlowToDrop {
    file: fs::File,
    drops: std::sync::Arc<std::sync::Mutex<Vec<DropSeen>>>,
}

#[derive(Clone, Copy, Debug)]
struct DropSeen {
    thread: std::thread::ThreadId,
    started: std::time::Instant,
    ended: std::time::Instant,
}

impl Write for SlowToDrop {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl buffer_persist::FileSink for SlowToDrop {
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

impl Drop for SlowToDrop {
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        self.drops.lock().unwrap().push(DropSeen {
            thread: std::thread::current().id(),
            started,
            ended: std::time::Instant::now(),
        });
    }
}

#[test]
fn a_batch_abandoned_on_the_only_async_worker_is_cleaned_up_off_it_while_other_tasks_run() {
    use buffer_persist::{FileSink, PersistConfig, Persister};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tokio_util::sync::CancellationToken;

    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    // One thread runs every task: a drop that blocks it stops the ticker below.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let worker = std::thread::current().id();
    runtime.block_on(async {
        let buffer = buffer_core::Buffer::connect(server.config().page_size(10))
            .await
            .unwrap();
        let texts: Vec<String> = (0..100).map(|i| format!("{{\"id\":{i}}}")).collect();
        buffer.push_json("s", &texts).await.unwrap();
        let shutdown = CancellationToken::new();
        let drops: Arc<Mutex<Vec<DropSeen>>> = Arc::default();
        // The temporary file is opened, then shutdown is asked for: the persister abandons the
        // batch at its first page, dropping the open file on the async side.
        let persister = Persister::new(buffer.clone(), PersistConfig::new(out.path()))
            .with_sink_factory(Arc::new({
                let (shutdown, drops) = (shutdown.clone(), drops.clone());
                move |path: &Path| {
                    let file = fs::File::options()
                        .write(true)
                        .create_new(true)
                        .open(path)?;
                    shutdown.cancel();
                    Ok(Box::new(SlowToDrop {
                        file,
                        drops: drops.clone(),
                    }) as Box<dyn FileSink>)
                }
            }));
        let ticks: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let store = buffer_core::StoreName::new("s").unwrap();
        let err = persister.flush_store(&store, &shutdown).await.unwrap_err();
        let returned = Instant::now();
        assert!(err.is_abandoned(), "{err}");
        let dropped = buffer_tests::eventually(Duration::from_secs(10), || async {
            !drops.lock().unwrap().is_empty()
        })
        .await;
        assert!(dropped, "the abandoned file was never dropped");
        let seen = drops.lock().unwrap()[0];
        ticker.abort();
        let ticks_meanwhile = ticks
            .lock()
            .unwrap()
            .iter()
            .filter(|tick| **tick > seen.started && **tick < seen.ended)
            .count();
        println!(
            "abandoned file dropped in {:?}, {ticks_meanwhile} ticks of another task meanwhile",
            seen.ended - seen.started
        );
        assert_ne!(seen.thread, worker, "dropped on the async worker");
        assert!(returned < seen.ended, "flush_store waited for the drop");
        assert!(
            ticks_meanwhile >= 20,
            "the other task ran {ticks_meanwhile} times during a 1 s drop"
        );
        // The clean-up is complete: no temporary file, the batch still in Redis.
        let cleaned = buffer_tests::eventually(Duration::from_secs(5), || async {
            buffer_tests::files_under(out.path())
                .iter()
                .all(|path| !path.to_string_lossy().ends_with(".tmp"))
        })
        .await;
        assert!(cleaned, "{:?}", buffer_tests::files_under(out.path()));
        assert_eq!(buffer.get_prepared().await.unwrap().len(), 1);
    });
}
