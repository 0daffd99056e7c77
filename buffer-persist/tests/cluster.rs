//! The `buffer-persist` binary against a real Redis Cluster (3 masters, from
//! `buffer_tests::cluster`): the end-to-end exactly-once run, and slots moving between masters
//! while producers push and persisters drain.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use buffer_core::{Buffer, StoreName};
use buffer_tests::cluster::TestCluster;
use buffer_tests::{eventually, files_under, output_records, stop_and_expect_success};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// Names that try to escape the output directory or break key and path encodings, and
/// plain ones, so the stores fall into many groups on every master.
fn store_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "../../etc/x",
        "/",
        ".",
        "..",
        "..\\..\\x",
        "ünï/cødé",
        "~",
        "a{b}c",
        "{buf:3}",
        "x:y:z",
        "\u{202e}rtl",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    names.extend((0..21).map(|i| format!("load-{i}")));
    names
}

fn persist_command(redis: &str, out: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg(subcommand)
        .arg("--redis")
        .arg(redis)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A running `buffer-persist run`, killed if the test fails before [`stop`] (so no process
/// outlives its test).
struct Runner(Option<Child>);

/// SIGTERM, then checks the process exits 0.
fn stop(mut runner: Runner) {
    let child = runner.0.take().expect("a runner is stopped once");
    stop_and_expect_success(child);
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_runner(redis: &str, out: &Path) -> Runner {
    let child = persist_command(redis, out, "run")
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
        .spawn()
        .unwrap();
    Runner(Some(child))
}

fn drain(redis: &str, out: &Path) {
    let output = buffer_tests::output_within(
        &mut persist_command(redis, out, "drain"),
        buffer_tests::COMMAND_DEADLINE,
    );
    assert!(
        output.status.success(),
        "drain failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Producers push ids `p, p + P, p + 2P, …` in chunks of 20 into the stores of
/// [`store_names`] until `stop` is set (or `limit` chunks each); `acked[p]` counts the
/// acknowledged ids of producer `p`, which pushes them in order.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Vec<Arc<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    const PRODUCERS: u64 = 4;

    fn start(buffer: &Buffer, limit: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Vec<Arc<AtomicU64>> = (0..Self::PRODUCERS).map(|_| Arc::default()).collect();
        let names = Arc::new(store_names());
        let tasks = acked
            .iter()
            .enumerate()
            .map(|(p, acked)| {
                let (buffer, stop, acked, names) =
                    (buffer.clone(), stop.clone(), acked.clone(), names.clone());
                tokio::spawn(async move {
                    let mut count = 0u64;
                    while !stop.load(Ordering::SeqCst) && count / 20 < limit {
                        let records: Vec<Value> = (count..count + 20)
                            .map(|i| json!({"id": p as u64 + Self::PRODUCERS * i}))
                            .collect();
                        let store = &names[((count / 20 + p as u64) % names.len() as u64) as usize];
                        buffer.push_many(store.as_str(), &records).await.unwrap();
                        count += 20;
                        acked.store(count, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Self { stop, acked, tasks }
    }

    /// Stops the producers and returns every acknowledged id, sorted.
    async fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Waits for the producers to push all they were given; returns every acknowledged id,
    /// sorted.
    async fn join(self) -> Vec<u64> {
        for task in self.tasks {
            task.await.unwrap();
        }
        let mut ids: Vec<u64> = self
            .acked
            .iter()
            .enumerate()
            .flat_map(|(p, acked)| {
                (0..acked.load(Ordering::SeqCst)).map(move |i| p as u64 + Self::PRODUCERS * i)
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// Every acknowledged id is in exactly one file, and no key of the buffer is left.
fn assert_exactly_once(cluster: &TestCluster, out: &Path, acknowledged: &[u64]) {
    let mut written: Vec<u64> = output_records(out)
        .values()
        .flatten()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    written.sort_unstable();
    let n = written.len();
    written.dedup();
    assert_eq!(n, written.len(), "duplicates: {}", n - written.len());
    assert_eq!(written, acknowledged, "every acknowledged record, once");
    assert_eq!(
        cluster.buffer_keys(),
        Vec::<String>::new(),
        "nothing left in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stores_from_concurrent_producers_land_exactly_once_on_a_cluster() {
    let cluster = TestCluster::start();
    let out = tempfile::tempdir().unwrap();
    let buffer = cluster.buffer().await;
    // One runner through a comma list of every node, one through a single node's URL.
    let list = cluster.urls().join(",");
    let single = cluster.url_of(cluster.ports()[2]);
    let runners = [
        spawn_runner(&list, out.path()),
        spawn_runner(&single, out.path()),
    ];
    let load = Load::start(&buffer, 100);
    let acknowledged = load.join().await;
    assert_eq!(acknowledged.len(), 4 * 100 * 20);
    let persisted_by_runners = eventually(Duration::from_secs(30), || {
        buffer_tests::buffer_is_drained(&buffer)
    })
    .await;
    assert!(persisted_by_runners, "the runners left records for 30 s");
    for runner in runners {
        stop(runner);
    }
    let files_by_runners = files_under(out.path()).len();
    drain(&single, out.path());
    assert_eq!(
        files_under(out.path()).len(),
        files_by_runners,
        "the final drain found something to write"
    );
    for path in files_under(out.path()) {
        assert!(path.starts_with(out.path()), "{} escaped", path.display());
    }
    assert_exactly_once(&cluster, out.path(), &acknowledged);
}

/// The slot of the keys whose name contains `part` (all keys of a store or batch share one).
fn slot_of_key_containing(cluster: &TestCluster, part: &str) -> Option<u16> {
    cluster
        .all_keys()
        .into_iter()
        .find(|key| key.contains(part))
        .map(|key| TestCluster::slot(&key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moving_between_masters_under_load_lose_and_duplicate_nothing() {
    let cluster = Arc::new(TestCluster::start());
    let out = tempfile::tempdir().unwrap();
    let buffer = cluster.buffer().await;
    let redis = cluster.urls().join(",");
    let runners = [
        spawn_runner(&redis, out.path()),
        spawn_runner(&redis, out.path()),
    ];
    let load = Load::start(&buffer, u64::MAX);
    assert!(
        eventually(Duration::from_secs(20), || async {
            !files_under(out.path()).is_empty()
        })
        .await,
        "the runners write"
    );
    // Hold a prepared batch of three stores, so slots holding prepared batches move too.
    let mut held = Vec::new();
    let mut slots = BTreeSet::new();
    for name in ["load-1", "load-2", "ünï/cødé"] {
        // The runners may hold the store or have just emptied it: try until it has records.
        let mut prepared = None;
        for _attempt in 0..500 {
            prepared = buffer
                .prepare_to_persist(name, Duration::from_secs(30))
                .await
                .unwrap();
            if prepared.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let batch = prepared.unwrap_or_else(|| panic!("store {name} never had records to prepare"));
        slots.insert(slot_of_key_containing(&cluster, &format!(":p:{}:", batch.id)).unwrap());
        held.push(batch);
    }
    // And the slots of live stores.
    for name in ["load-3", "load-4", "../../etc/x", "a{b}c"] {
        let encoded = StoreName::new(name).unwrap().encoded().to_owned();
        if let Some(slot) = slot_of_key_containing(&cluster, &format!(":s:{encoded}:")) {
            slots.insert(slot);
        }
    }
    let masters = cluster.masters();
    let moved = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || {
            let mut moved = 0;
            for slot in slots {
                let from = cluster.master_for_slot(slot);
                let to = masters[(masters.iter().position(|&m| m == from).unwrap() + 1) % 3];
                moved += cluster.reshard(slot, to);
                assert_eq!(cluster.master_for_slot(slot), to);
            }
            moved
        }
    })
    .await
    .unwrap();
    assert!(moved > 0, "the moved slots held keys");
    // The held batches go back to the persisters, from their new masters.
    for batch in held {
        assert!(batch.release().await.unwrap());
    }
    let acknowledged = load.finish().await;
    assert!(
        eventually(Duration::from_secs(30), || {
            buffer_tests::buffer_is_drained(&buffer)
        })
        .await,
        "the runners persist everything after the moves"
    );
    for runner in runners {
        stop(runner);
    }
    let files_by_runners = files_under(out.path()).len();
    drain(&redis, out.path());
    assert_eq!(
        files_under(out.path()).len(),
        files_by_runners,
        "the final drain found something to write"
    );
    assert_exactly_once(&cluster, out.path(), &acknowledged);
}
