//! The operator's actions (`OperatorAction`: flush, retry, pause/resume, limits) raced
//! against three producers and two persisters on one Redis: every acknowledged record lands
//! in exactly one file, and no refused record anywhere. Each race pushes for about 1.5 s.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use buffer_core::{BatchId, Buffer, StoreLimits, StoreName};
use buffer_persist::{FileSink, OperatorAction, PersistConfig, Persister};
use buffer_tests::{RedisServer, output_records};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const STORES: [&str; 2] = ["race-a", "race-b"];
const PUSHING_FOR: Duration = Duration::from_millis(1500);

fn race_config(out: &Path) -> PersistConfig {
    let mut config = PersistConfig::new(out);
    config.interval = Duration::from_millis(20);
    config.max_age = Duration::from_millis(150);
    config.max_records = Some(300);
    config.lock_ttl = Duration::from_secs(5);
    config
}

/// What the producers saw: the ids acknowledged and the ids refused by a limit.
#[derive(Default)]
struct Pushed {
    acknowledged: BTreeSet<u64>,
    refused: BTreeSet<u64>,
}

/// Runs three producers (10-record `push_many` calls over [`STORES`]) and two persisters
/// for [`PUSHING_FOR`], with `act` called in a loop meanwhile (its argument counts the
/// calls); then `settle` (undo what the action left: resume, clear limits), stops the
/// persisters, drains, and checks that the files hold every acknowledged id exactly once
/// and no refused one. Returns what was pushed and the batch ids written per store.
async fn race<A, F>(
    server: &RedisServer,
    persisters: [Persister; 2],
    act: A,
    settle: Vec<OperatorAction>,
    out: &Path,
) -> Pushed
where
    A: Fn(Buffer, u64) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send,
{
    let buffer = server.buffer().await;
    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    for persister in &persisters {
        let (persister, shutdown) = (persister.clone(), shutdown.clone());
        running.push(tokio::spawn(async move { persister.run(shutdown).await }));
    }
    let next_id = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..3u64 {
        let (buffer, next_id, stop) = (buffer.clone(), next_id.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut pushed = Pushed::default();
            let mut round = p;
            while !stop.load(Ordering::Relaxed) {
                let first = next_id.fetch_add(10, Ordering::Relaxed);
                let store = STORES[(round % 2) as usize];
                round += 1;
                let records: Vec<Value> = (first..first + 10)
                    .map(|id| json!({"id": id, "store": store}))
                    .collect();
                match buffer.push_many(store, &records).await {
                    Ok(_) => pushed.acknowledged.extend(first..first + 10),
                    Err(err) if err.is_backpressure() => pushed.refused.extend(first..first + 10),
                    Err(err) => panic!("push failed: {err}"),
                }
            }
            pushed
        }));
    }
    let acting = tokio::spawn({
        let (buffer, stop) = (buffer.clone(), stop.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                act(buffer.clone(), n).await;
                n += 1;
            }
            n
        }
    });
    tokio::time::sleep(PUSHING_FOR).await;
    stop.store(true, Ordering::Relaxed);
    let mut pushed = Pushed::default();
    for producer in producers {
        let one = producer.await.unwrap();
        pushed.acknowledged.extend(one.acknowledged);
        pushed.refused.extend(one.refused);
    }
    let actions = acting.await.unwrap();
    assert!(actions >= 5, "the action ran {actions} times only");
    for action in settle {
        action.execute(&buffer).await.unwrap();
    }
    shutdown.cancel();
    for run in running {
        run.await.unwrap().unwrap();
    }
    let report = persisters[0].drain().await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.paused.is_empty(), "{:?}", report.paused);

    let mut written: Vec<u64> = output_records(out)
        .values()
        .flatten()
        .map(|record| record["id"].as_u64().unwrap())
        .collect();
    written.sort_unstable();
    let count = written.len();
    written.dedup();
    assert_eq!(written.len(), count, "a record was written twice");
    let written: BTreeSet<u64> = written.into_iter().collect();
    assert_eq!(
        written.difference(&pushed.acknowledged).count(),
        0,
        "only acknowledged records are written"
    );
    assert_eq!(
        pushed.acknowledged.difference(&written).count(),
        0,
        "every acknowledged record is written"
    );
    assert!(
        pushed.acknowledged.len() > 1000,
        "{}",
        pushed.acknowledged.len()
    );
    let left: Vec<String> = server
        .buffer_keys()
        .into_iter()
        .filter(|key| !key.ends_with(":persisters"))
        .collect();
    assert!(left.is_empty(), "keys left: {left:?}");
    pushed
}

/// Two persisters sharing `out`, each its own holder.
async fn two_persisters(server: &RedisServer, out: &Path) -> [Persister; 2] {
    let mut made = Vec::new();
    for holder in ["race/1", "race/2"] {
        let buffer = Buffer::connect(server.config().holder_id(holder))
            .await
            .unwrap();
        made.push(Persister::new(buffer, race_config(out)));
    }
    made.try_into().unwrap()
}

fn store(name: &str) -> StoreName {
    StoreName::new(name).unwrap()
}

/// The batch ids written for `store` (from the file names of the default template).
fn written_batches(out: &Path, store: &str) -> Vec<BatchId> {
    buffer_tests::files_under(&out.join(store))
        .iter()
        .filter_map(|path| path.file_stem()?.to_str()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_now_raced_with_producers_and_two_persisters_loses_and_duplicates_nothing() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let persisters = two_persisters(&server, out.path()).await;
    let act = |buffer: Buffer, n: u64| async move {
        let action = OperatorAction::Flush(store(STORES[(n % 2) as usize]));
        action.execute(&buffer).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    race(&server, persisters, act, Vec::new(), out.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_raced_with_producers_and_two_persisters_lose_and_duplicate_nothing() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let persisters = two_persisters(&server, out.path()).await;
    // The windows in which race-a was paused, on Redis's clock: no batch of race-a may be
    // prepared inside one (batch ids carry their prepare's Redis time).
    let windows = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let act = {
        let windows = windows.clone();
        move |buffer: Buffer, _n: u64| {
            let windows = windows.clone();
            async move {
                OperatorAction::Pause(store("race-a"))
                    .execute(&buffer)
                    .await
                    .unwrap();
                let paused_at = buffer.now_ms();
                tokio::time::sleep(Duration::from_millis(120)).await;
                let resumed_at = buffer.now_ms();
                OperatorAction::Resume(store("race-a"))
                    .execute(&buffer)
                    .await
                    .unwrap();
                windows.lock().unwrap().push((paused_at, resumed_at));
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    };
    let settle = vec![OperatorAction::Resume(store("race-a"))];
    race(&server, persisters, act, settle, out.path()).await;
    // Clocks of two connections agree to within a round trip: 20 ms of margin.
    let windows = windows.lock().unwrap().clone();
    for batch in written_batches(out.path(), "race-a") {
        let at = batch.created_ms();
        for &(paused, resumed) in &windows {
            assert!(
                !(paused + 20 < at && at + 20 < resumed),
                "batch {batch} was prepared at {at}, while race-a was paused ({paused}..{resumed})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_and_cleared_raced_with_producers_and_two_persisters_lose_and_duplicate_nothing()
{
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let persisters = two_persisters(&server, out.path()).await;
    let act = |buffer: Buffer, n: u64| async move {
        let target = store(STORES[(n % 2) as usize]);
        let action = if n % 4 < 2 {
            OperatorAction::SetLimits(
                target,
                StoreLimits {
                    max_records: Some(40),
                    max_bytes: None,
                    max_rate: None,
                },
            )
        } else {
            OperatorAction::ClearLimits(target)
        };
        action.execute(&buffer).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    let settle = STORES
        .iter()
        .map(|name| OperatorAction::ClearLimits(store(name)))
        .collect();
    let pushed = race(&server, persisters, act, settle, out.path()).await;
    assert!(
        !pushed.refused.is_empty(),
        "the limits refused some pushes (else this raced nothing)"
    );
}

/// A file that fails every other time it is opened, so batches fail, back off, and are
/// retried.
fn flaky_disk(
    opened: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
) -> Arc<buffer_persist::SinkFactory> {
    Arc::new(move |path: &Path| {
        if !healthy.load(Ordering::SeqCst)
            && opened.fetch_add(1, Ordering::SeqCst).is_multiple_of(2)
        {
            return Err(io::Error::other("simulated write error"));
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(SyncedFile(file)) as Box<dyn FileSink>)
    })
}

struct SyncedFile(std::fs::File);

impl io::Write for SyncedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl FileSink for SyncedFile {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_raced_with_producers_and_two_failing_persisters_loses_and_duplicates_nothing() {
    let server = RedisServer::start();
    let out = tempfile::tempdir().unwrap();
    let (opened, healthy) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let persisters = two_persisters(&server, out.path())
        .await
        .map(|p| p.with_sink_factory(flaky_disk(opened.clone(), healthy.clone())));
    let retried = Arc::new(AtomicU64::new(0));
    let act = {
        let retried = retried.clone();
        move |buffer: Buffer, _n: u64| {
            let retried = retried.clone();
            async move {
                for failing in buffer.failures().await.unwrap() {
                    let action = OperatorAction::Retry(failing.store, failing.batch);
                    let done = action.execute(&buffer).await.unwrap();
                    if done.contains("backoff cleared") {
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    };
    let started = Instant::now();
    let healthy_at_end = healthy.clone();
    let settle = Vec::new();
    // The disk heals before the final drain (which `race` runs after `settle`).
    tokio::spawn(async move {
        tokio::time::sleep(PUSHING_FOR).await;
        healthy_at_end.store(true, Ordering::SeqCst);
    });
    race(&server, persisters, act, settle, out.path()).await;
    assert!(started.elapsed() >= PUSHING_FOR);
    assert!(
        retried.load(Ordering::Relaxed) > 0,
        "some backoff was cleared while batches failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_redis_user_with_write_rights_can_operate() {
    let server = RedisServer::start();
    assert!(server.buffer().await.can_operate().await.unwrap());
    server.command(&[
        "ACL", "SETUSER", "viewer", "on", ">pw", "~*", "&*", "+@all", "-@write",
    ]);
    server.command(&[
        "ACL",
        "SETUSER",
        "noscripts",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-@scripting",
    ]);
    server.command(&[
        "ACL", "SETUSER", "operator", "on", ">pw", "~*", "&*", "+@all",
    ]);
    let as_user = |user: &str| {
        let url = format!("redis://{user}:pw@127.0.0.1:{}", server.port());
        Buffer::connect(buffer_core::BufferConfig::new(url))
    };
    assert!(
        !as_user("viewer")
            .await
            .unwrap()
            .can_operate()
            .await
            .unwrap()
    );
    assert!(
        !as_user("noscripts")
            .await
            .unwrap()
            .can_operate()
            .await
            .unwrap()
    );
    assert!(
        as_user("operator")
            .await
            .unwrap()
            .can_operate()
            .await
            .unwrap()
    );
    // The viewer is refused, as the check said: pause is a write.
    let viewer = as_user("viewer").await.unwrap();
    let refused = viewer.pause("orders").await.unwrap_err();
    assert!(refused.to_string().contains("no permissions"), "{refused}");
}
