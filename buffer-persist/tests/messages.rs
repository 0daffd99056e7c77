//! What `buffer-persist` says when something is wrong (issue 24, "Messages to fix"): each
//! message names what is wrong and what to do, in the user's terms (the variable they set,
//! the forms a value takes), with no Rust debug forms and no cause printed twice. The binary
//! as users run it; a real `redis-server` where a command needs one.

use buffer_tests::CommandWithin;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use buffer_tests::{RedisServer, free_port};

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// The command with no `BUFFER_*` variable of the test's own environment leaking in.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("BUFFER_") || name == "RUST_LOG" || name == "NO_COLOR" {
            command.env_remove(name);
        }
    }
    command
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `args` to its end; its stderr, asserting it failed.
fn failing(args: &[&str]) -> String {
    let output = command(args).output_in_time();
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{args:?} succeeded: {stderr}");
    stderr
}

/// Every `: `-separated segment of each `error:` line at most once (short ones, such as a
/// store name, may recur legitimately).
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

/// Reads `child`'s stderr until a line contains `wanted` (within 30 s); every line read.
fn read_until(child: &mut Child, wanted: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receiver.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(wanted) {
                    // Keep the reader going so the child never blocks on a full pipe.
                    std::thread::spawn(move || while receiver.recv().is_ok() {});
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    panic!("no line with {wanted:?} within 30 s; stderr so far:\n{seen}");
}

/// Sends SIGTERM to a child this test started and waits for it.
fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status_in_time();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the persister did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_url_that_does_not_parse_is_called_not_a_redis_url_with_the_forms_accepted() {
    for url in [
        "redis//127.0.0.1:6379",
        "127.0.0.1:6379",
        "redis://u:secret@h:1,127.0.0.1:6379",
    ] {
        for args in [
            vec!["stores", "--redis", url],
            vec!["drain", "--redis", url, "--out", "/tmp/never-used"],
            vec!["limits", "list", "--redis", url],
        ] {
            let stderr = failing(&args);
            assert!(stderr.contains("not a Redis URL"), "{args:?}: {stderr}");
            for form in [
                "redis://host:port[/db]",
                "rediss://",
                "redis+unix:///",
                "user:password@",
                "comma-separated list",
            ] {
                assert!(stderr.contains(form), "{args:?} lacks {form}: {stderr}");
            }
            assert!(!stderr.contains("InvalidClientConfig"), "{stderr}");
            assert!(!stderr.contains("cannot reach"), "{stderr}");
            assert!(
                !stderr.contains("secret"),
                "the password is hidden: {stderr}"
            );
        }
    }
}

#[test]
fn an_out_that_is_a_regular_file_is_called_a_file_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    let out = file.to_str().unwrap();
    // Refused before Redis is asked: the port below has no server.
    let redis = format!("redis://127.0.0.1:{}", free_port());
    for sub in ["drain", "run"] {
        let stderr = failing(&[sub, "--redis", &redis, "--out", out]);
        assert!(
            stderr.contains(&format!("--out {out}: is a file, not a directory")),
            "{sub}: {stderr}"
        );
        assert!(!stderr.contains("os error 17"), "{stderr}");
    }
}

#[test]
fn metrics_addr_takes_a_host_name_and_a_bad_one_asks_for_host_port() {
    let stderr = failing(&[
        "run",
        "--out",
        "/tmp/never-used",
        "--metrics-addr",
        "no-such-host.invalid:9187",
    ]);
    assert!(stderr.contains("write IP:port or host:port"), "{stderr}");

    let redis = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut child = command(&[
        "run",
        "--redis",
        &redis.url(),
        "--out",
        out.path().to_str().unwrap(),
        "--metrics-addr",
        &format!("localhost:{port}"),
    ])
    .env("RUST_LOG", "info")
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let seen = read_until(&mut child, "serving metrics");
    assert!(seen.contains(&format!(":{port}")), "{seen}");
    terminate(&mut child);
}

#[test]
fn a_bad_value_from_the_environment_is_reported_under_the_variables_name() {
    let output = command(&["run", "--out", "/tmp/never-used"])
        .env("BUFFER_MAX_AGE", "abc")
        .output_in_time();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"abc\" in the environment variable BUFFER_MAX_AGE (it sets --max-age)"),
        "{stderr}"
    );
    assert!(stderr.contains("write e.g. 200ms, 10s, 5m"), "{stderr}");

    let output = command(&["stores"])
        .env("BUFFER_LOG_FORMAT", "xml")
        .output_in_time();
    let stderr = stderr_of(&output);
    assert!(stderr.contains("BUFFER_LOG_FORMAT"), "{stderr}");
    assert!(stderr.contains("human, json"), "{stderr}");

    // Typed on the command line, the flag is what is named, even with the variable set.
    let output = command(&["run", "--out", "/tmp/never-used", "--max-age", "abc"])
        .env("BUFFER_MAX_AGE", "abc")
        .output_in_time();
    let stderr = stderr_of(&output);
    assert!(stderr.contains("for '--max-age"), "{stderr}");
    assert!(!stderr.contains("BUFFER_MAX_AGE"), "{stderr}");
}

#[test]
fn wait_replicas_is_offered_only_where_it_means_something() {
    for args in [
        vec!["run", "--help"],
        vec!["drain", "--help"],
        vec!["push", "--help"],
    ] {
        let help = String::from_utf8(command(&args).output_in_time().stdout).unwrap();
        assert!(help.contains("--wait-replicas"), "{args:?}");
    }
    for args in [
        vec!["stores", "--help"],
        vec!["limits", "list", "--help"],
        vec!["limits", "set", "--help"],
        vec!["limits", "clear", "--help"],
    ] {
        let help = String::from_utf8(command(&args).output_in_time().stdout).unwrap();
        assert!(!help.contains("--wait-replicas"), "{args:?}: {help}");
        // --redis is optional: the usage line does not ask for it, the help shows its default.
        assert!(help.contains("[default: redis://127.0.0.1:6379]"), "{help}");
        let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap();
        assert!(!usage.contains("--redis"), "{usage}");
    }
    let stderr = failing(&["stores", "--wait-replicas", "1"]);
    assert!(
        stderr.contains("unexpected argument '--wait-replicas'"),
        "{stderr}"
    );
}

#[test]
fn a_max_rate_of_0_is_refused_saying_it_would_refuse_every_push() {
    for rate in ["0", "0/s"] {
        let stderr = failing(&["limits", "set", "orders", "--max-rate", rate]);
        assert!(
            stderr.contains("a rate of 0 would refuse every push"),
            "{stderr}"
        );
        assert!(stderr.contains("limits clear STORE"), "{stderr}");
    }
}

#[test]
fn an_empty_store_name_is_refused_before_stdin_is_read_or_redis_asked() {
    let redis = format!("redis://127.0.0.1:{}", free_port());
    // stdin stays open and empty: a push that read it first would wait for ever.
    let mut child = command(&["push", "--redis", &redis, ""])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("push \"\" waited on stdin");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = stderr_of(&output);
    assert!(!status.success());
    assert!(stderr.contains("a store name cannot be empty"), "{stderr}");
    assert!(!stderr.contains("cannot reach Redis"), "{stderr}");
}

#[test]
fn logs_print_sizes_durations_and_counts_in_human_units_and_plurals() {
    let redis = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let out = out.path().to_str().unwrap();
    let mut child = command(&[
        "run",
        "--redis",
        &redis.url(),
        "--out",
        out,
        "--max-bytes",
        "8MiB",
    ])
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let seen = read_until(&mut child, "persister started");
    let started = seen.lines().last().unwrap();
    // The `BufReader` thread `read_until` left keeps the pipe drained until the child exits.
    assert!(started.contains("max_age=60 s"), "{started}");
    assert!(started.contains("max_bytes=8 MiB"), "{started}");
    assert!(started.contains("max_records=none"), "{started}");
    assert!(!started.contains("Some("), "{started}");
    terminate(&mut child);

    // The stop line, from a persister whose stderr is read to the end.
    let mut child = command(&["run", "--redis", &redis.url(), "--out", out])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("persister started") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "no start line");
    }
    terminate(&mut child);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let stopped = rest
        .lines()
        .find(|line| line.contains("persister stopped"))
        .unwrap_or_else(|| panic!("no stop line: {rest}"));
    assert!(!stopped.contains("StatsSnapshot"), "{stopped}");
    assert!(
        stopped.contains("0 batches (0 records, 0 B) persisted"),
        "{stopped}"
    );

    // A drain of one record: singular nouns.
    let mut push = command(&["push", "--redis", &redis.url(), "orders"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut push.stdin.take().unwrap(), b"{\"id\":1}\n").unwrap();
    let output = push.wait_with_output().unwrap();
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("pushed 1 record to \"orders\", 0 lines refused"),
        "{stderr}"
    );
    let output = command(&["drain", "--redis", &redis.url(), "--out", out]).output_in_time();
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("drained 1 batch, 1 record"), "{stderr}");
}

#[test]
fn no_cause_is_printed_twice_in_any_failure_of_the_cli() {
    let refused = format!("redis://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();
    let missing_socket = format!("redis+unix://{}/no.sock", dir.path().display());
    let cases: Vec<Vec<&str>> = vec![
        vec!["stores", "--redis", &refused],
        vec!["stores", "--redis", &missing_socket],
        vec!["limits", "list", "--redis", &refused],
        vec![
            "limits",
            "set",
            "s",
            "--max-records",
            "1",
            "--redis",
            &refused,
        ],
        vec!["limits", "clear", "s", "--redis", &refused],
        vec!["drain", "--redis", &refused, "--out", "/tmp/never-used"],
        vec!["drain", "--redis", "127.0.0.1:6379", "--out", "/tmp/x"],
        vec!["drain", "--out", file],
        vec!["drain", "--out", "gs://bucket/x"],
        vec!["push", "--redis", &refused, "s"],
        vec!["push", ""],
    ];
    for args in &cases {
        let stderr = failing(args);
        assert!(stderr.contains("error: "), "{args:?}: {stderr}");
        assert_no_segment_repeats(&stderr);
        // The refusal itself, once.
        if args.contains(&refused.as_str()) {
            assert_eq!(
                stderr.matches("Connection refused").count(),
                1,
                "{args:?}: {stderr}"
            );
        }
    }
}
