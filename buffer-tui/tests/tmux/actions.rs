//! The operator console end to end: each action driven from the keyboard of the real
//! `buffer-tui` in tmux, on a private Redis with a running persister (in this process), and
//! its effect checked where it lands: files, Redis, refused pushes.

use std::path::Path;
use std::time::Duration;

use buffer_core::{Backoff, Buffer, StoreName};
use buffer_persist::{PersistConfig, Persister};
use buffer_tests::RedisServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Tmux, dashboard_in_tmux, table_count};

/// A persister polling every 200 ms with `max_age`, writing under `out`, until dropped.
struct RunningPersister {
    shutdown: CancellationToken,
}

impl RunningPersister {
    async fn start(redis: &RedisServer, out: &Path, max_age: Duration) -> Self {
        let buffer = Buffer::connect(redis.config().holder_id("tmux-persister/1"))
            .await
            .unwrap();
        let mut config = PersistConfig::new(out);
        config.interval = Duration::from_millis(200);
        config.max_age = max_age;
        let shutdown = CancellationToken::new();
        let persister = Persister::new(buffer, config);
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { persister.run(shutdown).await }
        });
        Self { shutdown }
    }
}

impl Drop for RunningPersister {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The records written for `store` under `out`.
fn written(out: &Path, store: &str) -> usize {
    buffer_tests::files_under(&out.join(store))
        .iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| buffer_tests::file_records(p).len())
        .sum()
}

/// Waits (at most `timeout`) until `check` holds, polling.
async fn within(timeout: Duration, what: &str, check: impl Fn() -> bool) {
    assert!(
        buffer_tests::eventually(timeout, || std::future::ready(check())).await,
        "timed out: {what}"
    );
}

/// Moves the selection to `store` (the table is sorted by name) and waits for its row.
fn select(tmux: &Tmux, store: &str) {
    tmux.send(&["g"]);
    for _ in 0..20 {
        let screen = tmux.capture();
        if screen
            .lines()
            .any(|line| line.contains('▶') && line.contains(store))
        {
            return;
        }
        tmux.send(&["j"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{store} never selected:\n{}", tmux.capture());
}

/// Presses `key` and confirms the action after its confirmation naming `says` is shown.
fn act(tmux: &Tmux, key: &str, says: &str) {
    tmux.send(&[key]);
    tmux.wait_for("the confirmation", Duration::from_secs(5), |s| {
        s.contains("Confirm") && s.contains(says)
    });
    tmux.send(&["y"]);
}

async fn push(buffer: &Buffer, store: &str, n: u64) {
    for i in 0..n {
        buffer.push(store, &json!({"i": i})).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_flushes_the_selected_store_and_the_running_persister_writes_it() {
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    let out = tempfile::tempdir().unwrap();
    push(&buffer, "orders", 3).await;
    push(&buffer, "quiet", 1).await;
    // Nothing is old enough for this persister: only the flush makes it write.
    let _persister = RunningPersister::start(&redis, out.path(), Duration::from_secs(3600)).await;
    let tmux = dashboard_in_tmux(&redis.url(), 100, 30);
    tmux.wait_for("orders", Duration::from_secs(20), |s| {
        table_count(s, "orders").as_deref() == Some("3")
    });
    select(&tmux, "orders");
    act(&tmux, "f", "Flush \"orders\" now");
    within(Duration::from_secs(5), "the flushed store's file", || {
        written(out.path(), "orders") == 3
    })
    .await;
    tmux.wait_for("the outcome line", Duration::from_secs(5), |s| {
        s.contains("orders: prepared batch")
    });
    assert_eq!(written(out.path(), "quiet"), 0, "only the flushed store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_retries_a_failing_batch_which_is_written_at_the_next_poll() {
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    let out = tempfile::tempdir().unwrap();
    push(&buffer, "stuck", 4).await;
    // A prepared batch that failed and waits an hour before its next attempt.
    let buffer_core::FlushOutcome::Prepared(batch) = buffer
        .flush_now("stuck", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("not prepared")
    };
    let hour = Duration::from_secs(3600);
    let store = StoreName::new("stuck").unwrap();
    buffer
        .record_failure(
            &store,
            Some(&batch.id),
            "disk full",
            Backoff {
                base: hour,
                cap: hour,
            },
        )
        .await
        .unwrap()
        .unwrap();
    let _persister = RunningPersister::start(&redis, out.path(), hour).await;
    let tmux = dashboard_in_tmux(&redis.url(), 100, 30);
    tmux.wait_for("the failing batch", Duration::from_secs(20), |s| {
        s.contains("1 ✗1")
    });
    // Several polls pass: the persister waits for the retry time.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(written(out.path(), "stuck"), 0, "backing off");
    select(&tmux, "stuck");
    act(&tmux, "r", "Retry batch");
    within(Duration::from_secs(5), "the retried batch's file", || {
        written(out.path(), "stuck") == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_pauses_a_store_past_its_max_age_with_no_file_until_resumed() {
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    let out = tempfile::tempdir().unwrap();
    push(&buffer, "late", 2).await;
    let tmux = dashboard_in_tmux(&redis.url(), 100, 30);
    tmux.wait_for("late", Duration::from_secs(20), |s| {
        table_count(s, "late").as_deref() == Some("2")
    });
    select(&tmux, "late");
    act(&tmux, "p", "Pause \"late\"");
    let paused = buffer_tests::eventually(Duration::from_secs(5), || async {
        buffer.paused_stores().await.unwrap().len() == 1
    });
    assert!(paused.await, "the pause is in Redis");
    tmux.wait_for("the paused mark", Duration::from_secs(5), |s| {
        s.contains("‖ late")
    });
    // The persister flushes at 1 s of age; the store is older than that for a while.
    let _persister = RunningPersister::start(&redis, out.path(), Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(written(out.path(), "late"), 0, "paused past its max age");
    act(&tmux, "p", "Resume \"late\"");
    within(Duration::from_secs(5), "the resumed store's file", || {
        written(out.path(), "late") == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l_sets_limits_from_the_form_and_the_next_push_is_refused() {
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    let out = tempfile::tempdir().unwrap();
    push(&buffer, "capped", 2).await;
    let _persister = RunningPersister::start(&redis, out.path(), Duration::from_secs(3600)).await;
    let tmux = dashboard_in_tmux(&redis.url(), 100, 30);
    tmux.wait_for("capped", Duration::from_secs(20), |s| {
        table_count(s, "capped").as_deref() == Some("2")
    });
    select(&tmux, "capped");
    tmux.send(&["l"]);
    tmux.wait_for("the form", Duration::from_secs(5), |s| {
        s.contains("Limits of capped")
    });
    tmux.send(&["2", "Enter"]);
    tmux.wait_for("the confirmation", Duration::from_secs(5), |s| {
        s.contains("max-records=2")
    });
    tmux.send(&["y"]);
    let limited = buffer_tests::eventually(Duration::from_secs(5), || async {
        buffer.limits("capped").await.unwrap().is_some()
    });
    assert!(limited.await, "the limits are in Redis");
    // A producer's next push is refused (one that pushed to the store before the limit may
    // send one push more before it learns of it: docs/producing.md, "Limits and
    // backpressure"; a new producer, as a `buffer-persist push`, learns at its first).
    let producer = redis.buffer().await;
    let refused = producer.push("capped", &json!({"i": 3})).await.unwrap_err();
    assert!(refused.is_backpressure(), "{refused}");
    let _ = buffer.push("capped", &json!({"i": 4})).await;
    let refused = buffer.push("capped", &json!({"i": 5})).await.unwrap_err();
    assert!(refused.is_backpressure(), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_shows_no_action() {
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    push(&buffer, "orders", 1).await;
    redis.command(&[
        "ACL", "SETUSER", "viewer", "on", ">pw", "~*", "&*", "+@all", "-@write",
    ]);
    let viewer = format!("redis://viewer:pw@127.0.0.1:{}", redis.port());
    // A Redis user without write rights: read-only by itself.
    let tmux = dashboard_in_tmux(&viewer, 100, 30);
    let screen = tmux.wait_for("read-only", Duration::from_secs(20), |s| {
        s.contains("read-only") && table_count(s, "orders").as_deref() == Some("1")
    });
    assert!(!screen.contains("f flush"), "{screen}");
    tmux.send(&["f"]);
    tmux.send(&["?"]);
    let help = tmux.wait_for("the help", Duration::from_secs(5), |s| s.contains("Help"));
    for action in ["flush now", "pause persisting", "its limits", "retry its"] {
        assert!(!help.contains(action), "{action}: {help}");
    }
    assert!(!help.contains("Confirm"), "f did nothing: {help}");
    // `--read-only` with every right: the same.
    let binary = env!("CARGO_BIN_EXE_buffer-tui");
    let flagged = Tmux::start(
        100,
        30,
        &format!(
            "{binary} --redis {} --interval 200ms --read-only",
            redis.url()
        ),
    );
    let screen = flagged.wait_for("read-only", Duration::from_secs(20), |s| {
        s.contains("read-only") && table_count(s, "orders").as_deref() == Some("1")
    });
    assert!(
        !screen.contains("f flush") && !screen.contains("p pause"),
        "{screen}"
    );
    // And the same dashboard without the flag offers them.
    let operator = dashboard_in_tmux(&redis.url(), 100, 30);
    operator.wait_for("the actions", Duration::from_secs(20), |s| {
        s.contains("f flush") && s.contains("p pause")
    });
}
