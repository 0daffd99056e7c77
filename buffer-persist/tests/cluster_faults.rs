//! The cluster under the faults production clusters see, beyond a clean crash: a replica that
//! lags behind a prepare, a master that hangs (SIGSTOP: a long fork, a stalled disk, a network
//! black hole), and the master of slot 0 gone. Each test drives the real `buffer-persist`
//! binary against a private local cluster and checks that healthy masters keep working and
//! that no record is written twice (docs/cluster.md, faults tested).

use buffer_tests::CommandWithin;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use buffer_core::{Buffer, BufferConfig, StoreLimits, StoreName};
use buffer_tests::cluster::TestCluster;
use buffer_tests::{eventually, published_records, stop_and_expect_success};
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

fn persist(urls: &str, out: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg(subcommand)
        .arg("--redis")
        .arg(urls)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The replica of the master on `master` (from each replica's `INFO replication`).
fn replica_of(cluster: &TestCluster, master: u16) -> u16 {
    let masters = cluster.masters();
    cluster
        .ports()
        .into_iter()
        .filter(|port| !masters.contains(port))
        .find(|&port| {
            cluster
                .inner()
                .cli(Some(port), &["INFO", "replication"])
                .is_ok_and(|info| info.contains(&format!("master_port:{master}")))
        })
        .unwrap_or_else(|| panic!("no replica follows the master on {master}"))
}

/// Waits until every replica is in sync with its master (a replica promoted before its first
/// sync holds nothing).
async fn wait_for_replicas(cluster: &TestCluster) {
    let synced = eventually(Duration::from_secs(60), || async {
        cluster.masters().into_iter().all(|port| {
            cluster
                .inner()
                .cli(Some(port), &["INFO", "replication"])
                .is_ok_and(|info| info.contains("state=online"))
        })
    })
    .await;
    assert!(synced, "the replicas did not sync with their masters");
}

/// The port in a `host:port` address.
fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// A store name whose master (by the slot map) is, or is not, the node on `port`.
async fn store_on(buffer: &Buffer, port: u16, on_it: bool, prefix: &str) -> String {
    for n in 0.. {
        let name = format!("{prefix}-{n}");
        let store = StoreName::new(name.as_str()).unwrap();
        let node = buffer.node_of(&store).await.unwrap().unwrap();
        if (port_of(&node) == port) == on_it {
            return name;
        }
    }
    unreachable!()
}

/// (1) A prepare that a lagging replica never saw, then a failover that promotes that replica:
/// the batch must not be written while its prepare is unconfirmed (the recovery waits for the
/// replicas too), so after the failover the records, live again on the promoted replica, are
/// written once. Before the fix the recovery wrote the batch without waiting and the records
/// landed twice (two files, 20 lines for 10 records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_a_lagging_replica_missed_is_never_written_twice_across_a_failover() {
    let mut cluster = TestCluster::start_with(3, 1, None);
    wait_for_replicas(&cluster).await;
    let urls = cluster.urls().join(",");
    let buffer = Buffer::connect(
        BufferConfig::new(urls.as_str())
            .response_timeout(Duration::from_secs(3))
            .wait_replicas(1, Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let store = StoreName::new("lagging").unwrap();
    let master = port_of(&buffer.node_of(&store).await.unwrap().unwrap());
    let replica = replica_of(&cluster, master);
    for n in 0..10 {
        buffer.push(&store, &json!({"n": n})).await.unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let drain_waiting = || {
        persist(&urls, out.path(), "drain")
            .args(["--wait-replicas", "1", "--wait-replicas-timeout", "300ms"])
            .args(["--lock-ttl", "1s", "--wait", "1s"])
            .output_in_time()
    };

    // The replica stops (it lags from here on): the prepare runs on the master, its WAIT fails.
    cluster.signal(replica, "STOP");
    let first = drain_waiting();
    assert!(!first.status.success(), "{}", text(&first));
    assert!(
        published_records(out.path()).is_empty(),
        "nothing may be written while the prepare is not on the replica: {}",
        text(&first)
    );
    // The batch is prepared on the master; a second drain recovers it, and must wait for the
    // replica again rather than write it.
    assert_eq!(buffer.get_prepared().await.unwrap().len(), 1);
    let second = drain_waiting();
    assert!(!second.status.success(), "{}", text(&second));
    assert!(
        text(&second).contains("replicas"),
        "the failure names the replicas: {}",
        text(&second)
    );
    assert!(
        published_records(out.path()).is_empty(),
        "a recovery must confirm the prepare on the replicas before writing: {}",
        text(&second)
    );

    // The master dies; the replica, which never saw the prepare, comes back and is promoted.
    cluster.kill(master);
    cluster.signal(replica, "CONT");
    let promoted = eventually(Duration::from_secs(30), || async {
        cluster
            .inner()
            .cli(Some(replica), &["CLUSTER", "INFO"])
            .is_ok_and(|info| info.contains("cluster_state:ok"))
            && cluster.masters().contains(&replica)
    })
    .await;
    assert!(promoted, "the replica was not promoted");
    let last = persist(&urls, out.path(), "drain").output_in_time();
    assert!(last.status.success(), "{}", text(&last));

    let mut written: Vec<u64> = published_records(out.path())
        .iter()
        .map(|record| record["n"].as_u64().unwrap())
        .collect();
    written.sort_unstable();
    assert_eq!(written, (0..10).collect::<Vec<u64>>(), "every record once");
}

/// (2) A master frozen for 30 s under load: the stores of the healthy masters keep draining
/// (none waits more than 2 × interval + max-age), the frozen master's stores drain once its
/// replica took over, without restarting the persister, and a new process whose `--redis`
/// list starts with the frozen node connects through the others. Before the fix every poll
/// failed on the frozen node's timeout and nothing drained at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_stalls_neither_the_healthy_masters_nor_the_failover() {
    const INTERVAL: Duration = Duration::from_millis(500);
    const MAX_AGE: Duration = Duration::from_millis(500);
    const FREEZE: Duration = Duration::from_secs(30);
    // Two replicas per master: after the failover the promoted replica still has one, so
    // pushes and prepares with --wait-replicas 1 can be confirmed again.
    let cluster = TestCluster::start_with(3, 2, None);
    wait_for_replicas(&cluster).await;
    let urls = cluster.urls().join(",");
    let out = tempfile::tempdir().unwrap();
    let runner = persist(&urls, out.path(), "run")
        .args(["--interval", "500ms", "--max-age", "500ms"])
        .args(["--lock-ttl", "3s", "--redis-timeout", "1s"])
        .args(["--wait-replicas", "1", "--wait-replicas-timeout", "500ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut runner = buffer_tests::KillOnDrop::new(runner);
    let runner_log = buffer_tests::StderrLog::capture(&mut runner);
    let buffer = Buffer::connect(
        BufferConfig::new(urls.as_str())
            .response_timeout(Duration::from_secs(1))
            .wait_replicas(1, Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let frozen = cluster.masters()[1];
    let mut healthy = Vec::new();
    let mut on_frozen = Vec::new();
    for n in 0..3 {
        healthy.push(store_on(&buffer, frozen, false, &format!("healthy{n}")).await);
        on_frozen.push(store_on(&buffer, frozen, true, &format!("frozen{n}")).await);
    }

    // Producers: every store, all the time; only acknowledged pushes are expected in files.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let next = Arc::new(AtomicU64::new(0));
    let acknowledged_on_frozen = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let mut producers = Vec::new();
    let all_stores: Vec<String> = healthy.iter().chain(&on_frozen).cloned().collect();
    for store in all_stores {
        let (buffer, stop, acknowledged, next) = (
            buffer.clone(),
            stop.clone(),
            acknowledged.clone(),
            next.clone(),
        );
        let on_frozen_master = on_frozen
            .contains(&store)
            .then(|| acknowledged_on_frozen.clone());
        producers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                match buffer.push(store.as_str(), &json!({"id": id})).await {
                    Ok(_) => {
                        acknowledged.lock().unwrap().push(id);
                        if let Some(list) = &on_frozen_master {
                            list.lock().unwrap().push((Instant::now(), id));
                        }
                    }
                    // Refused unsent (the frozen node) or unknown: not counted either way.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.signal(frozen, "STOP");
    let frozen_at = Instant::now();
    let watcher =
        Buffer::connect(BufferConfig::new(urls.as_str()).response_timeout(Duration::from_secs(1)))
            .await
            .unwrap();
    // A new process listing the frozen node first still pushes to a healthy master.
    let frozen_first = format!(
        "{},{}",
        cluster.url_of(frozen),
        cluster
            .urls()
            .into_iter()
            .filter(|url| *url != cluster.url_of(frozen))
            .collect::<Vec<_>>()
            .join(",")
    );
    let started = Instant::now();
    let mut push = Command::new(BINARY)
        .args([
            "push",
            "--redis",
            &frozen_first,
            "--redis-timeout",
            "2s",
            &healthy[0],
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = push.stdin.take().unwrap();
        writeln!(stdin, r#"{{"id": "cli"}}"#).unwrap();
    }
    let pushed = push.wait_with_output().unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a CLI push listing a frozen node first took {:?}",
        started.elapsed()
    );

    // While frozen: the healthy masters' stores never get older than the persister allows.
    // The first poll after the freeze waits one timeout for the frozen node (then it is
    // avoided): the bound is checked from one redis-timeout after the freeze.
    let bound = INTERVAL * 2 + MAX_AGE;
    // The oldest healthy store seen: its age, its name, and when (into the freeze).
    let mut worst = (Duration::ZERO, String::new(), Duration::ZERO);
    let mut samples = 0usize;
    let mut failed_over_at = None;
    while frozen_at.elapsed() < FREEZE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = watcher.now_ms();
        let asked = Instant::now();
        let stores = watcher.stores().await.unwrap_or_default();
        if frozen_at.elapsed() > Duration::from_secs(1) {
            samples += usize::from(asked.elapsed() < Duration::from_secs(1));
            for summary in stores
                .iter()
                .filter(|s| healthy.contains(&s.store.to_string()))
            {
                let age = Duration::from_millis(now.saturating_sub(summary.first_write_ms));
                if age > worst.0 {
                    worst = (age, summary.store.to_string(), frozen_at.elapsed());
                }
            }
        }
        if failed_over_at.is_none() && !serves_slots(&cluster, frozen) {
            failed_over_at = Some(frozen_at.elapsed());
        }
    }
    // A reader started after the freeze sees the healthy masters too: it paid the frozen
    // node's connect timeout once, then avoided it.
    assert!(
        samples > 100,
        "only {samples} reads of the stores answered within 1 s during the freeze"
    );
    let (worst_age, worst_store, worst_at) = worst;
    assert!(
        worst_age <= bound + Duration::from_millis(300),
        "healthy store {worst_store} waited {worst_age:?} (bound {bound:?} + sampling), seen \
         {worst_at:?} into the freeze (failover {failed_over_at:?} into it); persister log:\n{}",
        runner_log.text()
    );
    let failed_over_at = failed_over_at.expect("the frozen master's replica took over");
    // After the failover, the frozen master's stores drained too, with the persister that
    // was running all along: records acknowledged by the promoted replica are in files.
    let after_failover: Vec<u64> = acknowledged_on_frozen
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at > frozen_at + failed_over_at + Duration::from_secs(1))
        .map(|(_, id)| *id)
        .collect();
    let published: Vec<u64> = published_records(out.path())
        .iter()
        .filter_map(|record| record["id"].as_u64())
        .collect();
    assert!(
        after_failover.iter().any(|id| published.contains(id)),
        "no record pushed to the failed-over master's stores was written during the freeze ({} acknowledged)",
        after_failover.len()
    );
    let ages_now: BTreeMap<String, Duration> = {
        let now = watcher.now_ms();
        watcher
            .stores()
            .await
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    s.store.to_string(),
                    Duration::from_millis(now.saturating_sub(s.first_write_ms)),
                )
            })
            .collect()
    };
    for store in &on_frozen {
        if let Some(age) = ages_now.get(store) {
            assert!(
                *age <= bound + Duration::from_secs(1),
                "store {store} on the failed-over master is {age:?} old ({failed_over_at:?} into the freeze)"
            );
        }
    }

    cluster.signal(frozen, "CONT");
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let empty = eventually(Duration::from_secs(30), || async {
        buffer_tests::buffer_is_drained(&watcher).await
    })
    .await;
    assert!(
        empty,
        "the persister did not drain everything after the freeze; its log:\n{}",
        runner_log.text()
    );
    stop_and_expect_success(runner.take());

    let mut written: Vec<u64> = published_records(out.path())
        .iter()
        .filter_map(|record| record["id"].as_u64())
        .collect();
    written.sort_unstable();
    let total = written.len();
    written.dedup();
    assert_eq!(total, written.len(), "no record written twice");
    let mut acknowledged = acknowledged.lock().unwrap().clone();
    acknowledged.sort_unstable();
    let missing: Vec<u64> = acknowledged
        .iter()
        .filter(|id| written.binary_search(id).is_err())
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not written: {missing:?}"
    );
}

/// (3) The master of slot 0 dead (it used to receive every command without a key: `TIME`,
/// `SCRIPT LOAD`) and the script cache flushed on the others: pushes of every kind and a
/// drain still reach the healthy masters, from a new process whose `--redis` list names the
/// dead node first; the drain reports the stores it could not reach instead of exiting 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_masters_work_with_the_slot_0_master_dead_and_scripts_flushed() {
    let mut cluster = TestCluster::start();
    let dead = cluster.master_for_slot(0);
    let dead_url = cluster.url_of(dead);
    let mut urls = vec![dead_url.clone()];
    urls.extend(cluster.urls().into_iter().filter(|url| *url != dead_url));
    let urls = urls.join(",");
    // Without full coverage required, the other masters keep serving their slots while one
    // is gone (the default refuses every command until the slots are covered again).
    for port in cluster.ports() {
        cluster
            .inner()
            .cli(
                Some(port),
                &["CONFIG", "SET", "cluster-require-full-coverage", "no"],
            )
            .unwrap();
    }
    let setup = Buffer::connect(BufferConfig::new(urls.as_str()))
        .await
        .unwrap();
    let plain = store_on(&setup, dead, false, "plain").await;
    let limited = store_on(&setup, dead, false, "limited").await;
    let on_dead = store_on(&setup, dead, true, "gone").await;
    setup
        .set_limits(
            limited.as_str(),
            StoreLimits {
                max_records: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    setup
        .push(on_dead.as_str(), &json!({"id": "lost-with-the-node"}))
        .await
        .unwrap();
    drop(setup);
    cluster.kill(dead);
    for port in cluster.masters().into_iter().filter(|&port| port != dead) {
        cluster
            .inner()
            .cli(Some(port), &["SCRIPT", "FLUSH"])
            .unwrap();
    }

    // A new library user, the dead node first in its list.
    let buffer =
        Buffer::connect(BufferConfig::new(urls.as_str()).response_timeout(Duration::from_secs(2)))
            .await
            .unwrap();
    buffer
        .push(plain.as_str(), &json!({"id": "plain"}))
        .await
        .unwrap();
    buffer
        .push(limited.as_str(), &json!({"id": "limited"}))
        .await
        .unwrap();
    buffer
        .push_once(plain.as_str(), "once-1", &[json!({"id": "once"})])
        .await
        .unwrap();
    let mut pipeline = buffer.pipeline();
    let first = pipeline.push(plain.as_str(), &json!({"id": "piped-plain"}));
    let second = pipeline.push(limited.as_str(), &json!({"id": "piped-limited"}));
    pipeline.execute().await.unwrap();
    first.receipt().unwrap();
    second.receipt().unwrap();

    // A new CLI process, the dead node first.
    let mut push = Command::new(BINARY)
        .args(["push", "--redis", &urls, "--redis-timeout", "2s", &plain])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(push.stdin.take().unwrap(), r#"{{"id": "cli"}}"#).unwrap();
    }
    let pushed = push.wait_with_output().unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed));

    // The drain writes what the healthy masters hold and names what it could not reach.
    let out = tempfile::tempdir().unwrap();
    let drained = persist(&urls, out.path(), "drain")
        .args(["--redis-timeout", "2s"])
        .output_in_time();
    let mut ids: Vec<String> = published_records(out.path())
        .iter()
        .map(|record| record["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "cli",
            "limited",
            "once",
            "piped-limited",
            "piped-plain",
            "plain"
        ],
        "{}",
        text(&drained)
    );
    assert!(!drained.status.success(), "{}", text(&drained));
    assert!(
        text(&drained).contains("unreachable master"),
        "{}",
        text(&drained)
    );

    // A persister polling every 50 ms for 3 s with the master dead: each poll's reads leave
    // its groups out, but the warning comes once per read kind (and again every 30 s), not
    // once per poll (about 6 reads × 60 polls used to print some 360 lines).
    let mut runner = persist(&urls, out.path(), "run")
        .args(["--interval", "50ms", "--redis-timeout", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = buffer_tests::StderrLog::capture(&mut runner);
    let runner = buffer_tests::KillOnDrop::new(runner);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_and_expect_success(runner.take());
    let left_out = log
        .text()
        .lines()
        .filter(|line| line.contains("slot groups were not read"))
        .count();
    assert!(
        (1..=24).contains(&left_out),
        "{left_out} warnings about left-out slot groups in 3 s:\n{}",
        log.text()
    );
}

/// Whether the node on `port` still serves slots, as the other nodes see it (`CLUSTER NODES`
/// asked of each of them in turn, never of `port` itself, which may be frozen).
fn serves_slots(cluster: &TestCluster, port: u16) -> bool {
    let marker = format!(":{port}@");
    for other in cluster.ports().into_iter().filter(|&p| p != port) {
        let Ok(nodes) = cluster.inner().cli(Some(other), &["CLUSTER", "NODES"]) else {
            continue;
        };
        if let Some(line) = nodes.lines().find(|line| line.contains(&marker)) {
            // id address flags master ping pong epoch link [slot ranges...]
            return line.split_whitespace().count() > 8;
        }
    }
    true
}

/// (4) A master whose only replica hangs: its writes' `WAIT`s time out and, queued on their
/// own connection, some pass the response timeout; but the master answers everything else,
/// so it is not put under suspicion and reads from the same client keep seeing its stores
/// while the pushes go on. Before the fix a `WAIT` timeout marked the master as not
/// answering, and its stores vanished from `stores()` for as long as the replica hung (a
/// failover test then took the buffer for drained while a promoted master still held
/// batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_does_not_hide_its_live_master_from_reads() {
    let cluster = TestCluster::start_with(3, 1, None);
    wait_for_replicas(&cluster).await;
    let buffer = Buffer::connect(
        BufferConfig::new(cluster.urls().join(","))
            .response_timeout(Duration::from_secs(1))
            .wait_replicas(1, Duration::from_millis(400)),
    )
    .await
    .unwrap();
    let store = StoreName::new("replica-hangs").unwrap();
    let master = port_of(&buffer.node_of(&store).await.unwrap().unwrap());
    let replica = replica_of(&cluster, master);
    buffer.push(&store, &json!({"n": 0})).await.unwrap();

    cluster.signal(replica, "STOP");
    // Four producers at once: each WAIT waits out its 400 ms, so the queue on the WAIT
    // connection passes the 1 s response timeout within the first round.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let mut producers = Vec::new();
    for _ in 0..4 {
        let (buffer, store, stop, outcomes) = (
            buffer.clone(),
            store.clone(),
            stop.clone(),
            outcomes.clone(),
        );
        producers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let outcome = match buffer.push(&store, &json!({"n": 1})).await {
                    Ok(_) => "acknowledged".to_string(),
                    Err(err) if err.is_outcome_unknown() => "unknown".to_string(),
                    Err(err) => format!("refused: {err}"),
                };
                *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
            }
        }));
    }
    let started = Instant::now();
    let (mut reads, mut incomplete) = (0usize, Vec::new());
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let read = buffer.stores_partial().await.unwrap();
        reads += 1;
        let seen = read.found.iter().any(|s| s.store == store);
        if !read.is_complete() || !seen {
            incomplete.push(format!(
                "{:?}: seen={seen} missed={:?}",
                started.elapsed(),
                read.missed
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    cluster.signal(replica, "CONT");
    let outcomes = outcomes.lock().unwrap().clone();
    // The fault was hit: pushes ran into the hung replica (no push is acknowledged while it
    // hangs) and some waited past the response timeout.
    assert!(
        outcomes.get("unknown").copied().unwrap_or(0) >= 4,
        "the hung replica was not felt: {outcomes:?}"
    );
    assert!(
        !outcomes.contains_key("acknowledged"),
        "a push was acknowledged without its replica: {outcomes:?}"
    );
    assert!(reads >= 20, "only {reads} reads in 4 s");
    assert!(
        incomplete.is_empty(),
        "reads left the live master out while its replica hung ({} of {reads}; pushes {outcomes:?}): {incomplete:#?}",
        incomplete.len()
    );
}
