//! Per-store limits against real Redis: the record, byte and rate limits refuse whole pushes
//! and store nothing of them, concurrent producers stay within the documented overshoot bound,
//! and limits round-trip through the library.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use buffer_core::{Buffer, Error, LimitKind, StoreLimits};
use buffer_tests::RedisServer;
use serde_json::json;

fn records_limit(max: u64) -> StoreLimits {
    StoreLimits {
        max_records: Some(max),
        ..Default::default()
    }
}

/// Every key with its type, serialized value (DUMP) and whether it expires: what a refused push
/// must leave exactly as it was.
fn dump_keys(server: &RedisServer) -> BTreeMap<String, (Vec<u8>, bool)> {
    let mut conn = server.conn();
    server
        .all_keys()
        .into_iter()
        .map(|key| {
            let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut conn).unwrap();
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
            (key, (dump, ttl >= 0))
        })
        .collect()
}

fn llen(server: &RedisServer, store_records_key: &str) -> u64 {
    redis::cmd("LLEN")
        .arg(store_records_key)
        .query(&mut server.conn())
        .unwrap()
}

/// The live record count of `store`, as the library reports it.
async fn live_records(buffer: &Buffer, store: &str) -> u64 {
    buffer
        .stores()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.store.as_str() == store)
        .map_or(0, |s| s.records)
}

fn redis_second(server: &RedisServer) -> u64 {
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_round_trip_through_the_library() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    assert_eq!(buffer.limits("orders").await.unwrap(), None);
    assert!(buffer.all_limits().await.unwrap().is_empty());

    let orders = StoreLimits {
        max_records: Some(1000),
        max_bytes: Some(1 << 20),
        max_rate: Some(50),
    };
    let clicks = StoreLimits {
        max_rate: Some(7),
        ..Default::default()
    };
    buffer.set_limits("orders", orders).await.unwrap();
    buffer.set_limits("clicks/eu 1", clicks).await.unwrap();
    assert_eq!(buffer.limits("orders").await.unwrap(), Some(orders));
    // Another producer (a fresh connection) reads the same limits from Redis.
    let other = server.buffer().await;
    let all = other.all_limits().await.unwrap();
    let names: Vec<(&str, StoreLimits)> = all.iter().map(|(s, l)| (s.as_str(), *l)).collect();
    assert_eq!(names, vec![("clicks/eu 1", clicks), ("orders", orders)]);

    // Setting replaces, clearing removes (and says whether there was anything).
    buffer.set_limits("orders", records_limit(5)).await.unwrap();
    assert_eq!(
        other.limits("orders").await.unwrap(),
        Some(records_limit(5))
    );
    assert!(buffer.clear_limits("orders").await.unwrap());
    assert!(!buffer.clear_limits("orders").await.unwrap());
    assert_eq!(other.limits("orders").await.unwrap(), None);

    // Nothing to set, or more than a script can count exactly, is a clear error.
    let err = buffer
        .set_limits("orders", StoreLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = buffer
        .set_limits("orders", records_limit(u64::MAX))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max-records"), "{err}");
    assert!(matches!(
        buffer.set_limits("", clicks).await.unwrap_err(),
        Error::InvalidStoreName { .. }
    ));

    // The limit keys share the store's hash tag (one cluster slot with its data).
    let keys = server.buffer_keys();
    assert!(keys.iter().any(|k| k.ends_with(":limits")), "{keys:?}");
    for key in keys {
        assert!(key.starts_with("buf:{buf:"), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_limit_refuses_a_push_whole_naming_the_store_and_the_limit() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;

    buffer.set_limits("orders", records_limit(3)).await.unwrap();
    let two = [json!({"n": 1}), json!({"n": 2})];
    assert_eq!(buffer.push_many("orders", &two).await.unwrap().records, 2);
    let err = buffer.push_many("orders", &two).await.unwrap_err();
    assert!(err.is_backpressure(), "{err}");
    assert!(!err.is_transient() && !err.is_invalid_input());
    let Error::LimitExceeded {
        ref store,
        limit,
        max,
        current,
        requested,
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (store.as_str(), limit, max, current, requested),
        ("orders", LimitKind::Records, 3, 2, 2)
    );
    assert!(err.to_string().contains("\"orders\""), "{err}");
    assert!(err.to_string().contains("max-records"), "{err}");
    // What fits is still admitted.
    assert_eq!(
        buffer
            .push("orders", &json!({"n": 3}))
            .await
            .unwrap()
            .records,
        3
    );
    assert!(
        buffer
            .push("orders", &json!({"n": 4}))
            .await
            .unwrap_err()
            .is_backpressure()
    );

    let record = json!({"payload": "x".repeat(80)});
    let size = serde_json::to_string(&record).unwrap().len() as u64;
    let bytes = StoreLimits {
        max_bytes: Some(size * 2),
        ..Default::default()
    };
    buffer.set_limits("blobs", bytes).await.unwrap();
    buffer
        .push_many("blobs", &[&record, &record])
        .await
        .unwrap();
    let err = buffer.push("blobs", &record).await.unwrap_err();
    assert!(
        matches!(err, Error::LimitExceeded { limit: LimitKind::Bytes, max, current, requested, .. }
            if max == size * 2 && current == size * 2 && requested == size),
        "{err}"
    );

    // A store other than the limited ones is not affected.
    assert_eq!(
        buffer.push("free", &json!({"n": 1})).await.unwrap().records,
        1
    );
    // Clearing the limit admits again.
    buffer.clear_limits("orders").await.unwrap();
    assert_eq!(
        buffer
            .push("orders", &json!({"n": 4}))
            .await
            .unwrap()
            .records,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_push_leaves_redis_unchanged() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let limits = StoreLimits {
        max_records: Some(4),
        max_bytes: Some(10_000),
        max_rate: Some(1_000),
    };
    buffer.set_limits("orders", limits).await.unwrap();
    let records: Vec<_> = (0..4).map(|i| json!({"i": i, "k": i})).collect();
    buffer.push_many("orders", &records).await.unwrap();
    // Also a prepared batch and a push-once marker, so every kind of key is in the dump.
    let batch = buffer
        .prepare_to_persist("orders", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    batch.release().await.unwrap();
    buffer.push_many("orders", &records).await.unwrap();

    let before = dump_keys(&server);
    let new_keys = [json!({"never": 1, "seen": 2})];
    let err = buffer.push_many("orders", &new_keys).await.unwrap_err();
    assert!(err.is_backpressure(), "{err}");
    let err = buffer
        .push_json("orders", &[r#"{"never":1}"#])
        .await
        .unwrap_err();
    assert!(err.is_backpressure(), "{err}");
    let err = buffer
        .push_once("orders", "id-1", &new_keys)
        .await
        .unwrap_err();
    assert!(err.is_backpressure(), "{err}");
    let mut pipeline = buffer.pipeline();
    let refused = pipeline.push("orders", &json!({"never": 3}));
    pipeline.execute().await.unwrap();
    assert!(refused.receipt().unwrap_err().is_backpressure());
    // A producer that has never pushed to the store is refused too.
    let other = server.buffer().await;
    assert!(
        other
            .push("orders", &json!({"never": 4}))
            .await
            .unwrap_err()
            .is_backpressure()
    );
    assert_eq!(dump_keys(&server), before);

    // A refused push_once set no marker: once there is room, the same id is applied.
    buffer.set_limits("orders", records_limit(5)).await.unwrap();
    let outcome = buffer.push_once("orders", "id-1", &new_keys).await.unwrap();
    assert!(!outcome.duplicate);
    assert_eq!(outcome.receipt.records, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_refuses_the_excess_of_a_burst_and_admits_again_in_the_next_window() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let max_rate = 20;
    let rate = StoreLimits {
        max_rate: Some(max_rate),
        ..Default::default()
    };
    buffer.set_limits("clicks", rate).await.unwrap();
    // A burst of 50 single-record pushes from 50 tasks. It is counted when it falls in one
    // second of Redis's clock (a burst that straddles two windows is retried).
    let mut exact_bursts = 0;
    for _ in 0..20 {
        let start = redis_second(&server);
        let pushes = (0..50).map(|i| {
            let buffer = buffer.clone();
            tokio::spawn(async move { buffer.push("clicks", &json!({"i": i})).await })
        });
        let results: Vec<_> = futures::future::join_all(pushes)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        if redis_second(&server) != start {
            continue;
        }
        let admitted = results.iter().filter(|r| r.is_ok()).count() as u64;
        for err in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(err, Error::LimitExceeded { limit: LimitKind::Rate, max, .. } if *max == max_rate),
                "{err}"
            );
        }
        // The previous burst may have used part of this window; never more than the limit.
        assert!(admitted <= max_rate, "{admitted} admitted in one second");
        if admitted == max_rate {
            exact_bursts += 1;
            // The next window admits again: poll until Redis's second changes.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match buffer.push("clicks", &json!({"after": true})).await {
                    Ok(_) => {
                        assert_ne!(redis_second(&server), start, "admitted in the full window");
                        break;
                    }
                    Err(err) if err.is_backpressure() => {
                        assert!(Instant::now() < deadline, "never admitted again");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(err) => panic!("{err}"),
                }
            }
            break;
        }
    }
    assert_eq!(
        exact_bursts, 1,
        "no burst fell in one second of Redis's clock"
    );
}

/// Producers (separate connections, several tasks each) push single records concurrently to a
/// store whose record limit was set before they started: every push goes through the limits
/// script, which checks and appends atomically, so the store ends with exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_never_exceed_a_record_limit_set_before_they_start() {
    let server = RedisServer::start();
    let max = 500;
    server
        .buffer()
        .await
        .set_limits("orders", records_limit(max))
        .await
        .unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let buffer = server.buffer().await;
        for t in 0..8 {
            let buffer = buffer.clone();
            let admitted = admitted.clone();
            tasks.push(tokio::spawn(async move {
                let mut refused = 0;
                // Each task keeps pushing (one or two records) until refused 20 times, or 200
                // pushes (far more than the limit admits) if the limit is not enforced.
                for i in 1..=200 {
                    if refused == 20 {
                        break;
                    }
                    let records = vec![json!({"t": t, "i": i}); 1 + i % 2];
                    match buffer.push_many("orders", &records).await {
                        Ok(receipt) => {
                            assert!(receipt.records <= max, "{receipt:?}");
                            admitted.fetch_add(records.len() as u64, Ordering::Relaxed);
                        }
                        Err(err) if err.is_backpressure() => refused += 1,
                        Err(err) => panic!("{err}"),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let buffer = server.buffer().await;
    let live = live_records(&buffer, "orders").await;
    assert!(live <= max, "{live} records over a limit of {max}");
    assert_eq!(live, admitted.load(Ordering::Relaxed));
    let records_key = server
        .buffer_keys()
        .into_iter()
        .find(|k| k.ends_with(":s:orders:records"))
        .unwrap();
    assert_eq!(llen(&server, &records_key), live);
}

/// The limit is set while producers are pushing to a store they know to be unlimited: only the
/// pushes each producer already had in flight when it learned of the limit go unchecked, so
/// the overshoot is at most (tasks pushing at once) × (records per push). Prints what it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_set_during_a_push_storm_is_overshot_by_at_most_the_pushes_in_flight() {
    let server = RedisServer::start();
    let (producers, tasks_per_producer, per_push) = (4u64, 8u64, 3u64);
    let max = 400;
    let setter = server.buffer().await;
    let limit_set = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut storm_buffers = Vec::new();
    for _ in 0..producers {
        let buffer = server.buffer().await;
        storm_buffers.push(buffer.clone());
        for t in 0..tasks_per_producer {
            let buffer = buffer.clone();
            let limit_set = limit_set.clone();
            tasks.push(tokio::spawn(async move {
                // Keep going until the limit is set and has refused this task 20 times, or for
                // 200 pushes after it was set if it is not enforced.
                let (mut refused, mut after_set) = (0, 0);
                let mut i = 0;
                while refused < 20 && after_set < 200 {
                    i += 1;
                    let set = limit_set.load(Ordering::Relaxed);
                    let records = vec![json!({"t": t, "i": i}); per_push as usize];
                    match buffer.push_many("orders", &records).await {
                        Ok(_) => {}
                        Err(err) if err.is_backpressure() => refused += 1,
                        Err(err) => panic!("{err}"),
                    }
                    if set {
                        after_set += 1;
                    }
                }
                refused
            }));
        }
    }
    // Set the limit while the storm runs, just above the store's size at that moment, so the
    // pushes in flight are what can overshoot it. The limit is written in the stored text form
    // in one MULTI with the LLEN that tells the store's size at that instant (what any other
    // language's tool would write), and read back through the library.
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_records(&setter, "orders").await < 150 {
        assert!(Instant::now() < deadline, "the producers never pushed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let keys = server.buffer_keys();
    let records_key = keys
        .iter()
        .find(|k| k.ends_with(":s:orders:records"))
        .unwrap();
    let limits_key = records_key.replace(":s:orders:records", ":limits");
    let (live_at_set, _): (u64, u64) = redis::pipe()
        .atomic()
        .llen(records_key)
        .hset(&limits_key, "orders", format!("records={max}"))
        .query(&mut server.conn())
        .unwrap();
    limit_set.store(true, Ordering::Relaxed);
    assert_eq!(
        setter.limits("orders").await.unwrap(),
        Some(records_limit(max))
    );
    // Every task of the storm met the limit itself (20 refusals), none stopped because
    // 200 of its pushes after the limit were admitted.
    for task in tasks {
        assert_eq!(
            task.await.unwrap(),
            20,
            "a storm task was not refused 20 times"
        );
    }
    let live = live_records(&setter, "orders").await;
    let bound = producers * tasks_per_producer * per_push;
    // Records admitted after the limit was written beyond it (the store may already have been
    // over it then: those were pushed before there was a limit).
    let ceiling = max.max(live_at_set);
    println!(
        "record limit {max} set mid-storm at {live_at_set} records: store ended at {live} \
         (overshoot {}, bound {bound})",
        live.saturating_sub(ceiling)
    );
    assert!(
        live <= ceiling + bound,
        "{live} records: over {ceiling} + {bound}"
    );
    // Once every producer has seen the limit, nothing more is admitted: by the storm's own
    // connections as by a fresh one.
    for buffer in storm_buffers.iter().chain([&setter]) {
        let err = buffer
            .push("orders", &json!({"late": 1}))
            .await
            .expect_err("admitted over the limit");
        assert!(err.is_backpressure(), "{err:?}");
    }
    assert_eq!(live_records(&setter, "orders").await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_obeys_each_stores_limits_push_by_push() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.set_limits("small", records_limit(2)).await.unwrap();
    // Learn that "free" is unlimited, so the pipeline mixes transactions and script calls.
    buffer.push("free", &json!({"n": 0})).await.unwrap();
    let mut pipeline = buffer.pipeline();
    let small: Vec<_> = (0..4)
        .map(|i| pipeline.push("small", &json!({"i": i})))
        .collect();
    let free = pipeline.push_many("free", &[json!({"n": 1}), json!({"n": 2})]);
    let fresh = pipeline.push("fresh", &json!({"n": 1}));
    pipeline.execute().await.unwrap();
    let records: Vec<_> = small
        .iter()
        .map(|h| {
            h.receipt()
                .map(|r| r.records)
                .map_err(|e| e.is_backpressure())
        })
        .collect();
    assert_eq!(records, vec![Ok(1), Ok(2), Err(true), Err(true)]);
    assert_eq!(free.receipt().unwrap().records, 3);
    assert_eq!(fresh.receipt().unwrap().records, 1);
    assert_eq!(live_records(&buffer, "small").await, 2);
}
