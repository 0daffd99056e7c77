//! buffer-core against a real redis-server: receipts, prepare atomicity, locks, discovery,
//! hostile names, errors inside EXEC, out-of-memory and timeouts.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buffer_core::{
    Buffer, BufferConfig, Clock, Error, FORGET_SILENT_PERSISTERS_AFTER, ManualClock, PersisterInfo,
    StoreName, SystemClock,
};
use buffer_tests::{RedisServer, eventually};
use serde_json::{Value, json};

/// The lock TTL of batches these tests prepare and hold.
const HOLD: Duration = Duration::from_secs(30);

fn record(i: usize) -> Value {
    json!({"id": i, "payload": "x".repeat(i % 17)})
}

async fn batch_records(buffer: &Buffer, batch: &buffer_core::PreparedBatch) -> Vec<String> {
    let mut reader = buffer.reader(batch);
    let mut out = Vec::new();
    while let Some(page) = reader.next_page().await.unwrap() {
        out.extend(page);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_exact_under_200_concurrent_pushers() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let pushers = 200;
    let per_pusher = 10;
    let mut tasks = Vec::new();
    for p in 0..pushers {
        let buffer = buffer.clone();
        tasks.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            for i in 0..per_pusher {
                let rec = json!({"pusher": p, "i": i, format!("k{}", p % 5): true});
                let size = rec.to_string().len() as u64;
                receipts.push((buffer.push("orders", &rec).await.unwrap(), size));
            }
            receipts
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let total = (pushers * per_pusher) as u64;
    let total_bytes: u64 = all.iter().map(|(_, size)| size).sum();
    // Every receipt reports a distinct list length: each push saw exactly its own effect.
    let counts: BTreeSet<u64> = all.iter().map(|(r, _)| r.records).collect();
    assert_eq!(counts, (1..=total).collect::<BTreeSet<_>>());
    let last = all
        .iter()
        .map(|(r, _)| r)
        .max_by_key(|r| r.records)
        .unwrap();
    assert_eq!(last.records, total);
    assert_eq!(last.bytes, total_bytes);
    assert_eq!(last.keys, 2 + 5, "pusher, i and k0..k4");
    let first: HashSet<u64> = all.iter().map(|(r, _)| r.first_write_ms).collect();
    assert_eq!(first.len(), 1, "every receipt reports the same first write");

    let stores = buffer.stores().await.unwrap();
    assert_eq!(stores.len(), 1);
    assert_eq!((stores[0].records, stores[0].bytes), (total, total_bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_during_prepare_land_in_exactly_one_place() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let pushed = 4000;
    let producer = {
        let buffer = buffer.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for chunk in 0..8 {
                let buffer = buffer.clone();
                tasks.push(tokio::spawn(async move {
                    for i in (chunk..pushed).step_by(8) {
                        buffer.push("s", &json!({"n": i})).await.unwrap();
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        })
    };
    let mut batches = Vec::new();
    while !producer.is_finished() {
        if let Some(batch) = buffer.prepare_to_persist("s", HOLD).await.unwrap() {
            batches.push(batch);
        }
        tokio::task::yield_now().await;
    }
    producer.await.unwrap();
    if let Some(batch) = buffer.prepare_to_persist("s", HOLD).await.unwrap() {
        batches.push(batch);
    }
    assert!(batches.len() > 1, "prepares interleaved with pushes");
    let mut seen = Vec::new();
    for batch in &batches {
        let records = batch_records(&buffer, batch).await;
        assert_eq!(
            records.len() as u64,
            batch.records,
            "batch count matches its contents"
        );
        for text in records {
            let value: Value = serde_json::from_str(&text).unwrap();
            seen.push(value["n"].as_u64().unwrap());
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..pushed as u64).collect::<Vec<_>>(),
        "each push in exactly one batch"
    );
    assert_eq!(buffer.get_prepared().await.unwrap().len(), batches.len());
    assert!(
        buffer.stores().await.unwrap().is_empty(),
        "live buffer is empty after the last prepare"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prepares_in_the_same_millisecond_make_two_batches() {
    let server = RedisServer::start();
    let clock = ManualClock::new(1_700_000_000_000);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    buffer.push("s", &json!({"a": 1})).await.unwrap();
    let first = buffer.prepare_to_persist("s", HOLD).await.unwrap().unwrap();
    buffer.push("s", &json!({"a": 2})).await.unwrap();
    let second = buffer.prepare_to_persist("s", HOLD).await.unwrap().unwrap();
    assert_eq!(
        first.id.created_ms(),
        second.id.created_ms(),
        "same millisecond"
    );
    assert_ne!(first.id, second.id);
    assert_eq!((first.records, second.records), (1, 1));
    let store = StoreName::new("s").unwrap();
    let a = buffer.get_contents(&store, &first.id).await.unwrap();
    let b = buffer.get_contents(&store, &second.id).await.unwrap();
    assert_eq!(a.records, vec![json!({"a": 1})]);
    assert_eq!(b.records, vec![json!({"a": 2})]);
    assert_eq!(buffer.get_prepared().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preparing_an_empty_store_returns_none() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    assert!(
        buffer
            .prepare_to_persist("nothing", HOLD)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        server.all_keys().is_empty(),
        "an empty prepare writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongtype_key_inside_exec_is_an_error_not_a_receipt() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.push("victim", &json!({"a": 1})).await.unwrap();
    let mut conn = server.conn();
    let keys = server.all_keys();
    let records_key = keys
        .iter()
        .find(|k| k.ends_with(":s:victim:records"))
        .unwrap()
        .clone();
    let _: () = redis::cmd("DEL")
        .arg(&records_key)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&records_key)
        .arg("not a list")
        .query(&mut conn)
        .unwrap();

    let err = buffer.push("victim", &json!({"a": 2})).await.unwrap_err();
    assert!(err.is_wrong_type(), "{err:?}");
    assert!(err.to_string().contains("victim"), "{err}");
    // Preparing refuses too, naming the key, and moves nothing.
    let err = buffer.prepare_to_persist("victim", HOLD).await.unwrap_err();
    assert!(err.is_wrong_type(), "{err:?}");
    assert!(err.to_string().contains(&records_key), "{err}");
    let value: String = redis::cmd("GET")
        .arg(&records_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(value, "not a list", "the foreign value is untouched");

    // A wrong type planted at the key set: the record is still stored, the push still fails.
    buffer.push("other", &json!({"b": 1})).await.unwrap();
    let keys_key = records_key.replace(":s:victim:records", ":s:other:keys");
    let keys_key = server
        .all_keys()
        .into_iter()
        .find(|k| k.ends_with(":s:other:keys"))
        .unwrap_or(keys_key);
    let _: () = redis::cmd("DEL").arg(&keys_key).query(&mut conn).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&keys_key)
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let err = buffer.push("other", &json!({"b": 2})).await.unwrap_err();
    assert!(err.is_wrong_type(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_a_cannot_be_taken_or_released_by_b_and_expires() {
    let server = RedisServer::start();
    let a = Buffer::connect(server.config().holder_id("A"))
        .await
        .unwrap();
    let b = Buffer::connect(server.config().holder_id("B"))
        .await
        .unwrap();
    let ttl = Duration::from_millis(400);
    let guard_a = a
        .lock("s", None, ttl)
        .await
        .unwrap()
        .expect("A takes the free lock");
    assert!(
        b.lock("s", None, ttl).await.unwrap().is_none(),
        "B cannot take A's lock"
    );

    let store = StoreName::new("s").unwrap();
    let info = b.lock_info(&store, None).await.unwrap().unwrap();
    assert_eq!(info.holder, "A");
    assert!(info.ttl.unwrap() <= Duration::from_millis(400));

    // B's guard for the same key (taken after expiry) cannot be released by A's stale guard.
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.lock_info(&store, None).await.unwrap().is_none()
        })
        .await,
        "the lock expires"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before its TTL"
    );
    let guard_b = b
        .lock("s", None, ttl * 10)
        .await
        .unwrap()
        .expect("B takes the expired lock");
    assert!(!guard_a.is_held().await.unwrap());
    assert!(guard_a.extend(ttl).await.unwrap_err().is_lock_lost());
    assert!(
        !guard_a.release().await.unwrap(),
        "A's stale release does nothing"
    );
    assert_eq!(
        b.lock_info(&store, None).await.unwrap().unwrap().holder,
        "B"
    );
    guard_b.extend(Duration::from_secs(60)).await.unwrap();
    assert!(
        b.lock_info(&store, None)
            .await
            .unwrap()
            .unwrap()
            .ttl
            .unwrap()
            > Duration::from_secs(10)
    );
    assert!(guard_b.release().await.unwrap());
    assert!(a.lock_info(&store, None).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_lock_is_handed_to_the_batch_and_a_lost_lock_never_deletes() {
    let server = RedisServer::start();
    let a = Buffer::connect(server.config().holder_id("A"))
        .await
        .unwrap();
    let b = Buffer::connect(server.config().holder_id("B"))
        .await
        .unwrap();
    a.push("s", &json!({"x": 1})).await.unwrap();
    let mut guard = a
        .lock("s", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let batch = guard.prepare().await.unwrap().unwrap();
    let store = StoreName::new("s").unwrap();
    assert!(
        a.lock_info(&store, None).await.unwrap().is_none(),
        "store lock is free again"
    );
    let batch_lock = a.lock_info(&store, Some(&batch.id)).await.unwrap().unwrap();
    assert_eq!(batch_lock.holder, "A");
    assert!(
        batch_lock.ttl.unwrap() > Duration::from_millis(25_000),
        "the remaining TTL moved with it"
    );
    assert!(
        b.lock("s", Some(&batch.id), Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );

    // Someone removes A's lock (as expiry would) and B takes the batch: A must not delete it.
    let mut conn = server.conn();
    let _: () = redis::cmd("DEL").arg(guard.key()).query(&mut conn).unwrap();
    let guard_b = b
        .lock("s", Some(&batch.id), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let err = guard.empty_batch().await.unwrap_err();
    assert!(err.is_lock_lost(), "{err:?}");
    assert_eq!(
        a.batch_info(&store, &batch.id)
            .await
            .unwrap()
            .unwrap()
            .records,
        1
    );
    guard_b.empty_batch().await.unwrap();
    assert!(a.batch_info(&store, &batch.id).await.unwrap().is_none());
    assert!(
        server.all_keys().is_empty(),
        "emptied batch, index entry and lock are all gone"
    );

    // A lost store lock prepares nothing.
    a.push("s", &json!({"x": 2})).await.unwrap();
    let mut guard = a
        .lock("s", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let _: () = redis::cmd("DEL").arg(guard.key()).query(&mut conn).unwrap();
    assert!(guard.prepare().await.unwrap_err().is_lock_lost());
    assert!(a.get_prepared().await.unwrap().is_empty());
    assert_eq!(a.stores().await.unwrap()[0].records, 1);
}

/// Regression (issue 8, item 8): a lock was extended only between pages. A guard's heartbeat
/// keeps it alive for as long as the guard lives, reports when it is lost, and stops on drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_lock_outlives_its_ttl_until_dropped_and_reports_when_lost() {
    let server = RedisServer::start();
    let a = Buffer::connect(server.config().holder_id("A"))
        .await
        .unwrap();
    let b = Buffer::connect(server.config().holder_id("B"))
        .await
        .unwrap();
    let store = StoreName::new("s").unwrap();
    // 1 s, with a heartbeat every third of it: a loaded machine's scheduling delays stay
    // well inside it (300 ms failed no run but left too thin a margin).
    let ttl = Duration::from_secs(1);
    let mut guard = a.lock("s", None, ttl).await.unwrap().unwrap();
    guard.keep_alive().unwrap();
    guard.keep_alive().unwrap(); // idempotent: still one heartbeat

    // For three TTLs, B never gets the lock and it always has a TTL.
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        assert!(
            b.lock("s", None, ttl).await.unwrap().is_none(),
            "B took A's kept-alive lock after {:?}",
            started.elapsed()
        );
        let info = a.lock_info(&store, None).await.unwrap().unwrap();
        assert_eq!(info.holder, "A");
        assert!(info.ttl.unwrap() > Duration::from_millis(0));
        guard.check_held().unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // The lock is removed behind A's back and B takes it: A's heartbeat notices, and neither
    // extends nor shortens B's lock.
    let mut conn = server.conn();
    let _: () = redis::cmd("DEL").arg(guard.key()).query(&mut conn).unwrap();
    let guard_b = b
        .lock("s", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            guard.check_held().is_err()
        })
        .await,
        "the heartbeat reports the lost lock"
    );
    assert!(guard.check_held().unwrap_err().is_lock_lost());
    assert!(guard.extend(ttl).await.unwrap_err().is_lock_lost());
    let info = b.lock_info(&store, None).await.unwrap().unwrap();
    assert_eq!(info.holder, "B");
    assert!(info.ttl.unwrap() > Duration::from_millis(25_000));
    drop(guard);
    assert!(guard_b.release().await.unwrap());

    // Dropping a kept-alive guard stops its heartbeat: the lock then expires by its TTL.
    let mut guard = a.lock("s", None, ttl).await.unwrap().unwrap();
    guard.keep_alive().unwrap();
    drop(guard);
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.lock_info(&store, None).await.unwrap().is_none()
        })
        .await,
        "a dropped guard's lock expires"
    );

    // Without a heartbeat, the guard knows its TTL ran out.
    let guard = a.lock("s", None, ttl).await.unwrap().unwrap();
    guard.check_held().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            guard.check_held().is_err()
        })
        .await
    );
}

/// Regression (issue 8, item 9): `empty` deleted a batch without any lock. A batch from
/// `prepare_to_persist` is locked to its caller and kept alive while held, and `empty`
/// deletes only under that lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_with_a_lost_lock_deletes_nothing_and_says_so() {
    let server = RedisServer::start();
    let a = Buffer::connect(server.config().holder_id("A"))
        .await
        .unwrap();
    let b = Buffer::connect(server.config().holder_id("B"))
        .await
        .unwrap();
    a.push_many("s", &[json!({"x": 1}), json!({"x": 2})])
        .await
        .unwrap();
    let ttl = Duration::from_secs(1);
    let held = a.prepare_to_persist("s", ttl).await.unwrap().unwrap();
    let store = StoreName::new("s").unwrap();
    assert!(
        a.lock_info(&store, None).await.unwrap().is_none(),
        "the store lock moved to the batch"
    );
    // Held past its TTL, the batch stays A's.
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        let lock = a.lock_info(&store, Some(&held.id)).await.unwrap().unwrap();
        assert_eq!(lock.holder, "A");
        assert!(
            b.lock("s", Some(&held.id), ttl).await.unwrap().is_none(),
            "B took a held batch"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    held.check_held().unwrap();

    // A's lock disappears (as it would after a long freeze) and B takes the batch.
    let mut conn = server.conn();
    let _: () = redis::cmd("DEL")
        .arg(held.guard().key())
        .query(&mut conn)
        .unwrap();
    let guard_b = b
        .lock("s", Some(&held.id), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let id = held.id.clone();
    let err = a.empty(held).await.unwrap_err();
    assert!(matches!(err, Error::LockLost { .. }), "{err:?}");
    assert!(err.is_lock_lost());
    assert_eq!(a.batch_info(&store, &id).await.unwrap().unwrap().records, 2);
    assert_eq!(a.get_prepared().await.unwrap().len(), 1);
    assert_eq!(
        a.lock_info(&store, Some(&id))
            .await
            .unwrap()
            .unwrap()
            .holder,
        "B"
    );
    guard_b.empty_batch().await.unwrap();
    assert!(server.all_keys().is_empty(), "{:?}", server.all_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_exactly_our_stores_and_batches_among_unrelated_keys() {
    let server = RedisServer::start();
    let clock = ManualClock::new(1_000_000);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    let mut conn = server.conn();
    // Unrelated keys, some shaped like ours, in the same database.
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.set(format!("other:{i}"), i).ignore();
    }
    pipe.set("buf:junk", 1)
        .ignore()
        .rpush("buf:{buf:1}:s:fake:records", "{}")
        .ignore()
        // Malformed entries in our own indexes (a foreign writer) are skipped, not fatal.
        .zadd("buf:{buf:1}:stores", "%zz", 1)
        .ignore()
        .zadd("buf:{buf:1}:prepared", "not-a-batch:x", 1)
        .ignore();
    let _: () = pipe.query(&mut conn).unwrap();

    buffer.push("old", &json!({"a": 1})).await.unwrap();
    clock.advance_ms(10_000);
    buffer.push("young", &json!({"a": 1})).await.unwrap();
    buffer
        .push_many("big", &[json!({"a": "x".repeat(100)}), json!({"b": 2})])
        .await
        .unwrap();
    buffer.push("prepared", &json!({"a": 1})).await.unwrap();
    let batch = buffer
        .prepare_to_persist("prepared", HOLD)
        .await
        .unwrap()
        .unwrap();
    clock.advance_ms(1_000);

    let old: Vec<String> = buffer
        .get_old(Duration::from_secs(5))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.store.to_string())
        .collect();
    assert_eq!(old, ["old"]);
    let all: Vec<String> = buffer
        .stores()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.store.to_string())
        .collect();
    assert_eq!(all, ["big", "old", "young"]);
    let large = buffer.get_large(Some(100), None).await.unwrap();
    assert_eq!(large.len(), 1);
    assert_eq!((large[0].store.as_str(), large[0].records), ("big", 2));
    let many = buffer.get_large(None, Some(2)).await.unwrap();
    assert_eq!(
        many.iter().map(|s| s.store.as_str()).collect::<Vec<_>>(),
        ["big"]
    );
    let prepared = buffer.get_prepared().await.unwrap();
    assert_eq!(prepared.len(), 1);
    assert_eq!(
        (prepared[0].store.as_str(), &prepared[0].id),
        ("prepared", &batch.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_stay_confined_to_their_own_keys() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let names: Vec<String> = [
        "*",
        "?",
        "[",
        "]",
        "{a}",
        "{",
        "}",
        ":",
        "a:b",
        "\\",
        "../x",
        "/",
        ".",
        "..",
        "%",
        "%2A",
        "ünïcødé 🚀",
        " ",
        "s:records",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "é".repeat(128), // 256 bytes of two-byte characters
        "x".repeat(256),
    ])
    .collect();
    for (i, name) in names.iter().enumerate() {
        buffer
            .push(name.as_str(), &json!({"owner": name, "i": i}))
            .await
            .unwrap();
    }
    // Every key belongs to exactly one store's key prefix or is an index key.
    let all_keys = server.all_keys();
    let stores = buffer.stores().await.unwrap();
    assert_eq!(stores.len(), names.len());
    for summary in &stores {
        assert_eq!(
            summary.records, 1,
            "{:?} has only its own record",
            summary.store
        );
    }
    let data_keys: Vec<&String> = all_keys.iter().filter(|k| k.contains(":s:")).collect();
    // records, first, keys, bytes and runs of each store.
    assert_eq!(data_keys.len(), names.len() * 5);
    for name in &names {
        let batch = buffer
            .prepare_to_persist(name.as_str(), HOLD)
            .await
            .unwrap()
            .unwrap();
        let contents = buffer.get_contents(&batch.store, &batch.id).await.unwrap();
        assert_eq!(contents.records.len(), 1);
        assert_eq!(
            contents.records[0]["owner"],
            json!(name),
            "store {name:?} holds its own record"
        );
        assert_eq!(
            contents.keys,
            BTreeSet::from(["i".to_owned(), "owner".to_owned()])
        );
        buffer.empty(batch).await.unwrap();
    }
    assert!(
        server.all_keys().is_empty(),
        "nothing stray left: {:?}",
        server.all_keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_typed_error_and_redis_is_untouched() {
    let server = RedisServer::start();
    let buffer = Buffer::connect(server.config().max_record_bytes(64))
        .await
        .unwrap();
    assert!(matches!(
        buffer.push("", &json!({"a": 1})).await,
        Err(Error::InvalidStoreName { .. })
    ));
    assert!(matches!(
        buffer.push("x".repeat(257), &json!({"a": 1})).await,
        Err(Error::InvalidStoreName { .. })
    ));
    assert!(matches!(
        buffer.push("s", &json!([1, 2])).await,
        Err(Error::InvalidRecord { .. })
    ));
    assert!(matches!(
        buffer.push("s", &json!("text")).await,
        Err(Error::InvalidRecord { .. })
    ));
    let err = buffer
        .push_many("s", &[json!({"ok": 1}), json!({"big": "x".repeat(100)})])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RecordTooLarge {
                index: 1,
                max: 64,
                ..
            }
        ),
        "{err:?}"
    );
    let err = buffer
        .push_json("s", &["{\"ok\":1}", "not json"])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidRecord { index: 1, .. }),
        "{err:?}"
    );
    assert!(matches!(
        buffer.push_many::<_, Value>("s", &[]).await,
        Err(Error::NoRecords { .. })
    ));
    assert!(err.is_invalid_input());
    assert!(server.all_keys().is_empty(), "nothing reached Redis");
    assert!(matches!(
        Buffer::connect_lazy(BufferConfig::new("redis://x").namespace("a{b}")),
        Err(Error::InvalidNamespace { .. })
    ));
    assert!(matches!(
        Buffer::connect(BufferConfig::new("nonsense://x")).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contents_are_read_in_pages_in_push_order() {
    let server = RedisServer::start();
    let buffer = Buffer::connect(server.config().page_size(7)).await.unwrap();
    let records: Vec<Value> = (0..100).map(record).collect();
    let receipt = buffer.push_many("paged", &records).await.unwrap();
    assert_eq!(receipt.records, 100);
    let batch = buffer
        .prepare_to_persist("paged", HOLD)
        .await
        .unwrap()
        .unwrap();
    let mut reader = buffer.reader(&batch);
    let mut pages = 0;
    let mut texts = Vec::new();
    while let Some(page) = reader.next_page().await.unwrap() {
        assert!(page.len() <= 7);
        pages += 1;
        texts.extend(page);
    }
    assert_eq!(pages, 15);
    let parsed: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert_eq!(parsed, records);
    let contents = buffer.get_contents(&batch.store, &batch.id).await.unwrap();
    assert_eq!(contents.records, records);
    assert_eq!(
        batch.bytes,
        texts.iter().map(|t| t.len() as u64).sum::<u64>()
    );

    // Big records make small pages: at most `page_bytes` a page, whatever `page_size` says.
    let big: Vec<Value> = (0..12)
        .map(|i| json!({"i": i, "blob": "b".repeat(300_000)}))
        .collect();
    let roomy = Buffer::connect(server.config().page_size(1000).page_bytes(1_000_000))
        .await
        .unwrap();
    roomy.push_many("big", &big).await.unwrap();
    let big_batch = roomy
        .prepare_to_persist("big", HOLD)
        .await
        .unwrap()
        .unwrap();
    let mut reader = roomy.reader(&big_batch);
    let mut sizes = Vec::new();
    while let Some(page) = reader.next_page().await.unwrap() {
        sizes.push(page.len());
    }
    assert_eq!(sizes, [3, 3, 3, 3], "pages of at most 1 MB");

    // Reading an emptied batch is a clear error.
    let (store, id) = (batch.store.clone(), batch.id.clone());
    buffer.empty(batch).await.unwrap();
    let err = buffer.get_contents(&store, &id).await.unwrap_err();
    assert!(matches!(err, Error::BatchNotFound { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_unlock_work_when_redis_is_out_of_memory() {
    let server =
        RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let buffer = server.buffer().await;
    buffer.push("s", &json!({"a": 1})).await.unwrap();
    let mut guard = buffer
        .lock("s", None, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let batch = guard.prepare().await.unwrap().unwrap();
    let other = {
        buffer.push("t", &json!({"a": 1})).await.unwrap();
        buffer.prepare_to_persist("t", HOLD).await.unwrap().unwrap()
    };
    // A third batch whose lock is only released (given back, not persisted) under OOM.
    let given_back = {
        buffer.push("u", &json!({"a": 1})).await.unwrap();
        buffer.prepare_to_persist("u", HOLD).await.unwrap().unwrap()
    };
    let filler: Vec<Value> = (0..100)
        .map(|i| json!({"fill": "y".repeat(1000), "i": i}))
        .collect();
    let mut oom = None;
    for _ in 0..1000 {
        match buffer.push_many("fill", &filler).await {
            Ok(_) => {}
            Err(err) => {
                oom = Some(err);
                break;
            }
        }
    }
    let oom = oom.expect("maxmemory is reached");
    assert!(oom.is_out_of_memory(), "{oom:?}");
    assert!(oom.is_transient());
    // Top memory up with small pushes: the first refusal is again an OOM error, never Ok.
    let mut small_oom = None;
    for i in 0..100_000 {
        if let Err(err) = buffer.push("small", &json!({"i": i})).await {
            small_oom = Some(err);
            break;
        }
    }
    let small_oom = small_oom.expect("small pushes hit maxmemory too");
    assert!(small_oom.is_out_of_memory(), "{small_oom:?}");

    let (given_back_store, given_back_id) = (given_back.store.clone(), given_back.id.clone());
    assert!(given_back.release().await.unwrap(), "released under OOM");
    assert!(
        buffer
            .lock_info(&given_back_store, Some(&given_back_id))
            .await
            .unwrap()
            .is_none(),
        "the lock is gone"
    );
    assert!(
        buffer
            .batch_info(&given_back_store, &given_back_id)
            .await
            .unwrap()
            .is_some(),
        "the released batch stays prepared"
    );
    guard.empty_batch().await.unwrap();
    let (other_store, other_id) = (other.store.clone(), other.id.clone());
    buffer.empty(other).await.unwrap();
    assert!(
        buffer
            .batch_info(&batch.store, &batch.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        buffer
            .batch_info(&other_store, &other_id)
            .await
            .unwrap()
            .is_none()
    );
    let left: Vec<_> = buffer
        .get_prepared()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(left, vec![given_back_id], "only the released batch is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keys_of_a_store_share_one_cluster_slot() {
    let server = RedisServer::start();
    let cluster = RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let buffer = server.buffer().await;
    let names = ["orders", "{tagged}", "a:b", "ünï", "x"];
    for name in names {
        buffer.push(name, &json!({"k": 1})).await.unwrap();
        let _held = buffer
            .prepare_to_persist(name, HOLD)
            .await
            .unwrap()
            .unwrap();
        buffer.push(name, &json!({"k": 2})).await.unwrap();
        let mut guard = buffer
            .lock(name, None, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let _batch = guard.prepare().await.unwrap().unwrap();
        buffer.push(name, &json!({"k": 3})).await.unwrap();
        let _store_lock = buffer
            .lock(name, None, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
    }
    let mut cluster_conn = cluster.conn();
    let mut slot_of = |key: &str| -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut cluster_conn)
            .unwrap()
    };
    let keys = server.all_keys();
    assert!(keys.len() > names.len() * 10);
    for name in names {
        let store = StoreName::new(name).unwrap();
        let own: Vec<&String> = keys
            .iter()
            .filter(|k| {
                k.ends_with(&format!(":{}", store.encoded()))
                    || k.contains(&format!(":{}:", store.encoded()))
            })
            .collect();
        // live (4) + two batches (4 each) + store lock + batch lock
        assert!(own.len() >= 11, "{name}: {own:?}");
        let group_tag = own[0].split_once('}').unwrap().0.to_owned();
        let slots: HashSet<i64> = own.iter().map(|k| slot_of(k)).collect();
        assert_eq!(slots.len(), 1, "{name}: {own:?}");
        let index_slot = slot_of(&format!("{group_tag}}}:stores"));
        assert!(
            slots.contains(&index_slot),
            "{name}'s group index shares the slot"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_gives_a_transient_error_within_the_timeout() {
    let server = RedisServer::start();
    let config = server
        .config()
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300));
    let buffer = Buffer::connect(config).await.unwrap();
    buffer.push("s", &json!({"a": 1})).await.unwrap();
    server.signal("STOP");
    let started = Instant::now();
    let err = buffer.push("s", &json!({"a": 2})).await.unwrap_err();
    let waited = started.elapsed();
    server.signal("CONT");
    assert!(err.is_transient(), "{err:?}");
    // The freeze hit the push: it waited the whole timeout (it was not refused at once) and
    // may have been applied; and it gave up at the timeout, not much later (1 s: more than
    // 3 times the 300 ms, for a loaded machine).
    assert!(
        matches!(err, buffer_core::Error::Timeout { .. }) && err.is_outcome_unknown(),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(300),
        "failed before the timeout, after {waited:?}: {err:?}"
    );
    assert!(waited < Duration::from_secs(1), "returned after {waited:?}");
    // Once Redis is back, the same handle works again.
    assert!(
        eventually(Duration::from_secs(10), || async {
            buffer.push("s", &json!({"a": 3})).await.is_ok()
        })
        .await,
        "recovers after Redis returns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_are_used_and_never_shown() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let port = server.port();
    let good = BufferConfig::new(format!("redis://:s3cret@127.0.0.1:{port}/0"));
    assert_eq!(
        good.redacted_url(),
        format!("redis://:***@127.0.0.1:{port}/0")
    );
    let buffer = Buffer::connect(good).await.unwrap();
    buffer.push("s", &json!({"a": 1})).await.unwrap();
    assert!(!format!("{buffer:?}").contains("s3cret"), "{buffer:?}");

    let bad = BufferConfig::new(format!("redis://:wrong@127.0.0.1:{port}/0"));
    let err = Buffer::connect(bad).await.unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(text.contains("auth") || text.contains("password"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password is not echoed: {err}"
    );
    let anonymous = BufferConfig::new(server.url());
    let err = Buffer::connect(anonymous).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("auth"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?}");
    };
    std::fs::write(path("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.crt"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &path("server.key"),
        "-out",
        &path("server.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("san.cnf"),
        "-out",
        &path("server.crt"),
    ]);
    let tls_port = buffer_tests::free_port().to_string();
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    // The test CA is not in the system's trust store: `#insecure` skips verification.
    let url = format!("rediss://127.0.0.1:{tls_port}/#insecure");
    let buffer = Buffer::connect(BufferConfig::new(url)).await.unwrap();
    let receipt = buffer.push("tls", &json!({"over": "tls"})).await.unwrap();
    assert_eq!(receipt.records, 1);
    let stores = server.buffer().await.stores().await.unwrap();
    assert_eq!(
        stores[0].store.as_str(),
        "tls",
        "the plain port sees what came over TLS"
    );
    // Pages of a batch come back over TLS too: on the main connection, since the reader's
    // own page sockets are plain TCP (docs/operations.md, "Running in production").
    let batch = buffer
        .prepare_to_persist("tls", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let page = buffer.reader(&batch).next_records().await.unwrap().unwrap();
    assert_eq!(page.as_lines(), "{\"over\":\"tls\"}\n");
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.conn())
        .unwrap();
    assert!(clients.contains("name="), "{clients}");
    assert!(!clients.contains("buffer-page-reader"), "{clients}");
    // Verification is on by default: the untrusted test CA is refused.
    let strict = Buffer::connect(
        BufferConfig::new(format!("rediss://127.0.0.1:{tls_port}/"))
            .connect_timeout(Duration::from_secs(2)),
    )
    .await;
    let err = strict.expect_err("an untrusted certificate must be refused");
    let text = format!("{err} {err:?}").to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls") || text.contains("ssl"),
        "the error names the TLS failure: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_announcements_are_listed_retired_and_forgotten_after_silence() {
    let server = RedisServer::start();
    let clock = ManualClock::new(10_000_000_000);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    let announcement = |holder: &str, heartbeat_ms| PersisterInfo {
        holder: holder.to_owned(),
        max_age: Duration::from_secs(60),
        max_bytes: None,
        max_records: Some(100),
        out: "/out".to_owned(),
        heartbeat_ms,
        batches_persisted: 0,
        records_persisted: 0,
        version: None,
        interval: None,
    };
    let forget_ms = FORGET_SILENT_PERSISTERS_AFTER.as_millis() as u64;
    let now = 10_000_000_000;
    // "killed" last spoke just before the cutoff, "quiet" just after it.
    let killed = announcement("host/1", now - forget_ms - 1);
    let quiet = announcement("host/2", now - forget_ms + 1);
    let live = announcement("host/3", now);
    for info in [&killed, &quiet] {
        buffer.announce_persister(info).await.unwrap();
    }
    // A hand-written entry that is not an announcement at all.
    server.command(&["HSET", "buf:persisters", "junk", "not json"]);
    buffer.announce_persister(&live).await.unwrap();

    let holders =
        |list: Vec<PersisterInfo>| -> Vec<String> { list.into_iter().map(|p| p.holder).collect() };
    // The killed one and the junk are gone from Redis, not only filtered out.
    assert_eq!(
        holders(buffer.persisters(Duration::MAX).await.unwrap()),
        ["host/2", "host/3"]
    );
    assert_eq!(server.command(&["HLEN", "buf:persisters"]), "int(2)");
    // Readers choose how much silence they accept.
    assert_eq!(
        holders(buffer.persisters(Duration::from_secs(1)).await.unwrap()),
        ["host/3"]
    );
    assert_eq!(
        buffer.persisters(Duration::from_secs(1)).await.unwrap()[0],
        live
    );
    buffer.retire_persister("host/3").await.unwrap();
    assert_eq!(
        holders(buffer.persisters(Duration::MAX).await.unwrap()),
        ["host/2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_counts_are_exact_per_live_store_in_one_call() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.push("x", &json!({"a": 1, "b": 2})).await.unwrap();
    let receipt = buffer.push("x", &json!({"b": 3, "c": 4})).await.unwrap();
    buffer.push("z", &json!({"only": true})).await.unwrap();
    let stores: Vec<StoreName> = ["x", "never-pushed", "z"]
        .into_iter()
        .map(|s| StoreName::new(s).unwrap())
        .collect();
    assert_eq!(buffer.store_key_counts(&stores).await.unwrap(), [3, 0, 1]);
    assert_eq!(receipt.keys, 3);
    assert!(buffer.store_key_counts(&[]).await.unwrap().is_empty());
    // A prepared store's keys left with its batch.
    let _held = buffer.prepare_to_persist("x", HOLD).await.unwrap().unwrap();
    assert_eq!(buffer.store_key_counts(&stores[..1]).await.unwrap(), [0]);

    // A key set replaced by a foreign writer is a typed error, not a wrong count.
    let z_keys = server
        .buffer_keys()
        .into_iter()
        .find(|k| k.ends_with(":s:z:keys"))
        .unwrap();
    server.command(&["DEL", &z_keys]);
    server.command(&["SET", &z_keys, "not a set"]);
    let err = buffer.store_key_counts(&stores).await.unwrap_err();
    assert!(err.is_wrong_type(), "{err:?}");
}

/// The key that serde_json's `arbitrary_precision` feature treats as a number in disguise.
const MAGIC_KEY: &str = "$serde_json::private::Number";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_byte_exact_including_the_magic_key_and_huge_numbers() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    // (as pushed, as stored): push_json keeps every token's text and drops only the
    // whitespace between tokens.
    let texts = [
        (format!(r#"{{"{MAGIC_KEY}":"42"}}"#), None),
        (format!(r#"{{"a":{{"{MAGIC_KEY}":"42"}}}}"#), None),
        (format!(r#"{{"{MAGIC_KEY}":42,"b":[{{"{MAGIC_KEY}":"x"}}]}}"#), None),
        (
            "{ \"n\" : 123456789012345678901234567890.123456789,\n \"e\": 1e400, \"z\": -0.0 }"
                .to_owned(),
            Some("{\"n\":123456789012345678901234567890.123456789,\"e\":1e400,\"z\":-0.0}"),
        ),
        (
            r#"{"u":18446744073709551616,"i":-9223372036854775809,"f":0.1000000000000000055511151231257827}"#
                .to_owned(),
            None,
        ),
        (r#"{"dup":1,"dup":2}"#.to_owned(), None),
    ];
    let sent: Vec<&str> = texts.iter().map(|(text, _)| text.as_str()).collect();
    let expected: Vec<String> = texts
        .iter()
        .map(|(text, stored)| stored.map_or_else(|| text.clone(), str::to_owned))
        .collect();
    let receipt = buffer.push_json("exact", &sent).await.unwrap();
    assert_eq!(receipt.records, texts.len() as u64);
    assert_eq!(
        buffer.latest_records("exact", texts.len()).await.unwrap(),
        expected
    );
    // push of a Value carrying the key, flat and nested, is stored as that Value's JSON.
    let values = [
        json!({ MAGIC_KEY: "42" }),
        json!({"a": { MAGIC_KEY: "42" }}),
        json!({ MAGIC_KEY: {"a": 1} }),
    ];
    for value in &values {
        buffer.push("exact", value).await.unwrap();
    }
    let batch = buffer
        .prepare_to_persist("exact", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let mut all = expected.clone();
    all.extend(values.iter().map(|v| v.to_string()));
    assert_eq!(batch_records(&buffer, &batch).await, all, "byte-exact");
    assert!(
        buffer
            .batch_keys(&batch.store, &batch.id)
            .await
            .unwrap()
            .contains(MAGIC_KEY)
    );

    // get_contents gives Values, which cannot hold 1e400: a typed error, pointing to the reader.
    let err = buffer
        .get_contents(&batch.store, &batch.id)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotAValue { index: 3, .. }), "{err:?}");
    buffer.empty(batch).await.unwrap();
    // Without such a number, the magic key comes back as the plain key it is.
    buffer.push_json("plain", &sent[..3]).await.unwrap();
    buffer.push_many("plain", &values).await.unwrap();
    let batch = buffer
        .prepare_to_persist("plain", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let contents = buffer.get_contents(&batch.store, &batch.id).await.unwrap();
    assert_eq!(contents.records[0], json!({ MAGIC_KEY: "42" }));
    assert_eq!(contents.records[1], json!({"a": { MAGIC_KEY: "42" }}));
    assert_eq!(contents.records[3..], values);
}

/// A clock that runs a settable number of milliseconds ahead of (or behind) the system clock.
#[derive(Debug, Clone, Default)]
struct SkewedClock(Arc<std::sync::atomic::AtomicI64>);

impl SkewedClock {
    fn new(skew_ms: i64) -> Self {
        let clock = Self::default();
        clock.set(skew_ms);
        clock
    }

    fn set(&self, skew_ms: i64) {
        self.0.store(skew_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> u64 {
        let skew = self.0.load(std::sync::atomic::Ordering::SeqCst);
        SystemClock.now_ms().saturating_add_signed(skew)
    }
}

/// Redis's own clock, in Unix ms.
fn redis_time_ms(server: &RedisServer) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    secs * 1000 + micros / 1000
}

const HOUR_MS: i64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_clock_an_hour_ahead_neither_delays_the_age_flush_nor_skews_stamps() {
    let server = RedisServer::start();
    let ahead = SkewedClock::new(HOUR_MS);
    let producer = Buffer::connect(server.config().clock(Arc::new(ahead)))
        .await
        .unwrap();
    let offset = producer.clock_offset_ms().unwrap();
    assert!(
        (offset + HOUR_MS).abs() < 2_000,
        "measured at connect: {offset}"
    );
    let receipt = producer.push("skewed", &json!({"a": 1})).await.unwrap();
    let redis_now = redis_time_ms(&server);
    assert!(
        receipt.first_write_ms.abs_diff(redis_now) < 2_000,
        "first write {} vs Redis {redis_now}",
        receipt.first_write_ms
    );
    let indexed = producer.stores().await.unwrap()[0].first_write_ms;
    assert_eq!(indexed, receipt.first_write_ms, "the index score too");

    // A persister with a correct clock sees the store age in real time: not selected while
    // young, selected once it is really older than max_age (not an hour later).
    let persister = server.buffer().await;
    let max_age = Duration::from_secs(2);
    assert!(persister.get_old(max_age).await.unwrap().is_empty());
    assert!(
        eventually(Duration::from_secs(20), || async {
            !persister.get_old(max_age).await.unwrap().is_empty()
        })
        .await,
        "the store was never old enough"
    );
    // Selected once its age on Redis's clock passed max_age: not before, and not an hour
    // late (the bound is 4 times max_age, for a loaded machine's polling delays).
    let age_ms = redis_time_ms(&server) - receipt.first_write_ms;
    assert!(
        (2_000..8_000).contains(&age_ms),
        "selected at an age of {age_ms} ms"
    );

    // Batch ids, the persister-side stamps, are on Redis time too, from either clock.
    producer.push("skewed", &json!({"a": 2})).await.unwrap();
    let batch = producer
        .prepare_to_persist("skewed", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(batch.id.created_ms().abs_diff(redis_time_ms(&server)) < 2_000);
    assert!(producer.now_ms().abs_diff(persister.now_ms()) < 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_producer_corrects_its_first_push_and_follows_a_stepped_clock() {
    let server = RedisServer::start();
    let clock = SkewedClock::new(-HOUR_MS);
    let producer = Buffer::connect_lazy(
        server
            .config()
            .clock(Arc::new(clock.clone()))
            .clock_sync_interval(Duration::from_millis(100)),
    )
    .unwrap();
    assert_eq!(
        producer.clock_offset_ms(),
        None,
        "nothing measured before first use"
    );
    reset_command_stats(&server);
    let receipt = producer.push("late", &json!({"a": 1})).await.unwrap();
    assert!(receipt.first_write_ms.abs_diff(redis_time_ms(&server)) < 2_000);
    // Correcting the clock adds its own TIME, never a second transaction.
    assert_eq!(
        atomic_units_run(&server),
        1,
        "the first push is one transaction or script"
    );
    let _batch = producer
        .prepare_to_persist("late", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();

    // The clock steps two hours forward: the offset is measured again in the background, and
    // stamps follow Redis time again, with no push waiting for it.
    clock.set(HOUR_MS);
    assert!(
        eventually(Duration::from_secs(10), || async {
            producer.now_ms().abs_diff(redis_time_ms(&server)) < 2_000
        })
        .await,
        "the offset was never measured again"
    );
    reset_command_stats(&server);
    let receipt = producer.push("late", &json!({"a": 2})).await.unwrap();
    assert!(receipt.first_write_ms.abs_diff(redis_time_ms(&server)) < 2_000);
    assert_eq!(
        atomic_units_run(&server),
        1,
        "a push after a stepped clock is one transaction or script"
    );
}

fn reset_command_stats(server: &RedisServer) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut server.conn())
        .unwrap();
}

/// How many atomic units the server ran since its stats were last reset: EXECs plus
/// scripts that ran (an EVALSHA refused with NOSCRIPT, then loaded and sent again, ran once).
fn atomic_units_run(server: &RedisServer) -> u64 {
    let stats = buffer_tests::command_stats(&mut server.conn());
    let ran = |command: &str| stats.get(command).map_or(0, |stat| stat.ran());
    ran("exec") + ran("evalsha") + ran("eval")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_clock_is_used_exactly_and_never_measured() {
    let server = RedisServer::start();
    let clock = ManualClock::new(5_000);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    assert_eq!(buffer.clock_offset_ms(), None);
    assert_eq!(
        buffer
            .push("m", &json!({"a": 1}))
            .await
            .unwrap()
            .first_write_ms,
        5_000
    );
    clock.advance_ms(7);
    assert_eq!(buffer.now_ms(), 5_007);
}

/// Reads a batch page by page, returning the pages' record counts and byte sizes.
async fn page_shapes(
    buffer: &Buffer,
    batch: &buffer_core::PreparedBatch,
) -> (Vec<String>, Vec<(usize, usize)>) {
    let mut reader = buffer.reader(batch);
    let mut texts = Vec::new();
    let mut shapes = Vec::new();
    while let Some(page) = reader.next_page().await.unwrap() {
        shapes.push((page.len(), page.iter().map(String::len).sum()));
        texts.extend(page);
    }
    (texts, shapes)
}

/// Tiny records, then big ones right after them, then tiny ones again, in pushes of various
/// sizes: the batch's average record size says nothing about any one page.
async fn push_mixed_sizes(buffer: &Buffer, store: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut id = 0;
    let mut push = |records: Vec<Value>| {
        all.extend(records.iter().cloned());
        records
    };
    for _ in 0..20 {
        let records = push(
            (0..100)
                .map(|_| {
                    id += 1;
                    json!({"id": id})
                })
                .collect(),
        );
        buffer.push_many(store, &records).await.unwrap();
    }
    // One push mixing tiny and big records, then big ones one by one.
    let records = push(
        (0..6)
            .map(|i| {
                id += 1;
                json!({"id": id, "blob": "m".repeat(if i % 2 == 0 { 10 } else { 300_000 })})
            })
            .collect(),
    );
    buffer.push_many(store, &records).await.unwrap();
    for _ in 0..8 {
        id += 1;
        let record = push(vec![json!({"id": id, "blob": "b".repeat(400_000)})]);
        buffer.push_many(store, &record).await.unwrap();
    }
    let records = push(
        (0..3000)
            .map(|_| {
                id += 1;
                json!({"id": id})
            })
            .collect(),
    );
    buffer.push_many(store, &records).await.unwrap();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_stay_within_their_byte_budget_whatever_the_mix_of_record_sizes() {
    let server = RedisServer::start();
    let budget = 1_000_000;
    let buffer = Buffer::connect(server.config().page_size(5000).page_bytes(budget))
        .await
        .unwrap();
    let records = push_mixed_sizes(&buffer, "mixed").await;
    let batch = buffer
        .prepare_to_persist("mixed", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(
        server
            .all_keys()
            .iter()
            .any(|k| k.contains(":p:") && k.ends_with(":runs")),
        "the run list moved with the batch: {:?}",
        server.all_keys()
    );
    let (texts, shapes) = page_shapes(&buffer, &batch).await;
    for (len, bytes) in &shapes {
        assert!(
            *bytes <= budget || *len == 1,
            "a page of {len} records and {bytes} bytes: {shapes:?}"
        );
    }
    // The big records do not make the tiny ones crawl: tiny records still come in big pages.
    assert!(shapes.iter().any(|(len, _)| *len >= 2000), "{shapes:?}");
    let parsed: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert_eq!(parsed, records);

    // A record larger than the whole budget is a page of its own, never refused.
    let small_budget = Buffer::connect(server.config().page_bytes(100_000))
        .await
        .unwrap();
    let (_, shapes) = page_shapes(&small_budget, &batch).await;
    for (len, bytes) in &shapes {
        assert!(*bytes <= 100_000 || *len == 1, "{shapes:?}");
    }
    assert_eq!(
        shapes.iter().map(|(len, _)| len).sum::<usize>(),
        records.len()
    );

    // Emptying deletes the run list with the rest of the batch.
    buffer.empty(batch).await.unwrap();
    assert!(server.all_keys().is_empty(), "{:?}", server.all_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_without_a_run_list_is_read_whole_with_pages_sized_by_bytes_seen() {
    let server = RedisServer::start();
    let budget = 1_000_000;
    let buffer = Buffer::connect(server.config().page_size(5000).page_bytes(budget))
        .await
        .unwrap();
    let records = push_mixed_sizes(&buffer, "old").await;
    let batch = buffer
        .prepare_to_persist("old", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    // As an older version left it: no run list.
    let runs: Vec<String> = server
        .all_keys()
        .into_iter()
        .filter(|k| k.ends_with(":runs"))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    server.command(&["DEL", &runs[0]]);
    let (texts, shapes) = page_shapes(&buffer, &batch).await;
    let parsed: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert_eq!(parsed, records);
    // Pages start small, shrink at once after a big record and grow at most twofold.
    assert!(shapes[0].0 <= 16, "{shapes:?}");
    for pair in shapes.windows(2) {
        let ((len, bytes), (next_len, _)) = (pair[0], pair[1]);
        assert!(next_len <= len * 2, "{shapes:?}");
        let largest = bytes / len; // a lower bound of the largest record's size
        if largest > budget / 4 {
            assert!(
                next_len <= 4,
                "did not shrink after big records: {shapes:?}"
            );
        }
    }

    // A run list that lies about its records (a foreign write) is noticed, and reading goes on.
    buffer.push_many("liar", &records).await.unwrap();
    let liar = buffer
        .prepare_to_persist("liar", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let runs: Vec<String> = server
        .all_keys()
        .into_iter()
        .filter(|k| k.ends_with(":liar:runs"))
        .collect();
    server.command(&["DEL", &runs[0]]);
    server.command(&["RPUSH", &runs[0], "5:50:10"]);
    let (texts, _) = page_shapes(&buffer, &liar).await;
    assert_eq!(texts.len(), records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lock_always_expires_even_when_the_store_lock_had_no_ttl_left() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let store = StoreName::new("s").unwrap();
    let pttl = |key: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut server.conn())
            .unwrap()
    };

    // The store lock's key has no expiry left (PTTL -1): the batch lock still gets the TTL.
    buffer.push("s", &json!({"x": 1})).await.unwrap();
    let mut guard = buffer
        .lock("s", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    server.command(&["PERSIST", guard.key()]);
    assert_eq!(pttl(guard.key()), -1);
    let batch = guard.prepare().await.unwrap().unwrap();
    let ttl = pttl(guard.key());
    assert!(ttl > 0 && ttl <= 30_000, "batch lock PTTL {ttl}");
    let info = buffer
        .lock_info(&store, Some(&batch.id))
        .await
        .unwrap()
        .unwrap();
    assert!(info.ttl.is_some_and(|ttl| !ttl.is_zero()), "{info:?}");
    guard.empty_batch().await.unwrap();

    // The store lock is about to expire: the batch lock gets the full TTL, not the remnant.
    buffer.push("s", &json!({"x": 2})).await.unwrap();
    let mut guard = buffer
        .lock("s", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    server.command(&["PEXPIRE", guard.key(), "500"]);
    guard.prepare().await.unwrap().unwrap();
    let ttl = pttl(guard.key());
    assert!(
        ttl > 10_000,
        "batch lock PTTL {ttl}: the store lock's remnant was copied"
    );
    guard.empty_batch().await.unwrap();
    assert!(server.all_keys().is_empty(), "{:?}", server.all_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_first_write_is_read_with_one_command_per_group() {
    let server = RedisServer::start();
    let clock = ManualClock::new(1_000_000);
    let buffer = Buffer::connect(server.config().clock(Arc::new(clock.clone())))
        .await
        .unwrap();
    assert_eq!(buffer.oldest_first_write_ms().await.unwrap(), None);
    for i in 0..2000u64 {
        clock.set_ms(2_000_000 - i);
        buffer
            .push(format!("store-{i}").as_str(), &json!({"i": i}))
            .await
            .unwrap();
    }
    let expected = buffer
        .stores()
        .await
        .unwrap()
        .iter()
        .map(|s| s.first_write_ms)
        .min();
    let mut conn = server.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let oldest = buffer.oldest_first_write_ms().await.unwrap();
    let stats = buffer_tests::command_stats(&mut conn);
    assert!(expected.is_some());
    assert_eq!(oldest, expected);
    let calls: Vec<(String, u64)> = stats
        .iter()
        .filter(|(name, _)| *name != "info" && *name != "config|resetstat")
        .map(|(name, stat)| (name.clone(), stat.calls))
        .collect();
    assert_eq!(calls, [("zrange".to_owned(), 256)], "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_appends_one_exact_run_entry_in_the_same_step() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let texts =
        |records: &[Value]| -> Vec<usize> { records.iter().map(|r| r.to_string().len()).collect() };
    let entry = |sizes: Vec<usize>| {
        format!(
            "{}:{}:{}",
            sizes.len(),
            sizes.iter().sum::<usize>(),
            sizes.iter().max().unwrap()
        )
    };
    let one = [json!({"a": 1})];
    let many = [json!({"b": "xx"}), json!({"b": "x".repeat(50)}), json!({})];
    let once = [json!({"c": [1, 2, 3]}), json!({"c": null})];
    buffer.push("s", &one[0]).await.unwrap();
    buffer.push_many("s", &many).await.unwrap();
    assert!(
        !buffer
            .push_once("s", "id-1", &once)
            .await
            .unwrap()
            .duplicate
    );
    // A duplicate adds neither records nor a run entry.
    assert!(
        buffer
            .push_once("s", "id-1", &once)
            .await
            .unwrap()
            .duplicate
    );
    let runs: Vec<String> = server
        .all_keys()
        .into_iter()
        .filter(|k| k.ends_with(":runs"))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let entries: Vec<String> = redis::cmd("LRANGE")
        .arg(&runs[0])
        .arg(0)
        .arg(-1)
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(
        entries,
        [entry(texts(&one)), entry(texts(&many)), entry(texts(&once))]
    );
    let batch = buffer
        .prepare_to_persist("s", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.records, 6);
    let keys = server.all_keys();
    assert!(
        keys.iter().all(|k| !k.contains(":s:s:")),
        "the run list moved with the batch: {keys:?}"
    );
    buffer.empty(batch).await.unwrap();
    assert!(
        server.all_keys().iter().all(|k| k.contains(":id:")),
        "{:?}",
        server.all_keys()
    );
}

/// File paths are made from a batch's first write, so a recovering persister (which reads it
/// with `batch_info`) must see the value the preparing one got, also for a store whose
/// first-write stamp is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_first_write_reads_the_same_at_prepare_and_at_recovery() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let receipt = buffer.push("stamped", &json!({"a": 1})).await.unwrap();
    buffer.push("stampless", &json!({"a": 1})).await.unwrap();
    let first_key = server
        .all_keys()
        .into_iter()
        .find(|k| k.ends_with(":s:stampless:first"))
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&first_key)
        .query(&mut server.conn())
        .unwrap();

    let stamped = buffer
        .prepare_to_persist("stamped", HOLD)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stamped.batch().first_write_ms, receipt.first_write_ms);
    let stampless = buffer
        .prepare_to_persist("stampless", HOLD)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stampless.batch().first_write_ms,
        stampless.batch().id.created_ms(),
        "no stamp: the batch's own time"
    );
    for locked in [&stamped, &stampless] {
        let prepared = locked.batch();
        let recovered = buffer
            .batch_info(&prepared.store, &prepared.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            recovered.first_write_ms, prepared.first_write_ms,
            "{}",
            prepared.store
        );
    }
}

/// The one launcher (buffer-core's `LocalRedis`, behind `RedisServer` and the demo) turns a
/// server that exits at start into a typed error that says why, and a missing binary into
/// `NotFound`; a server it started is gone, with its directory, once dropped.
#[test]
fn the_private_server_launcher_reports_why_a_server_did_not_start_and_cleans_up() {
    use buffer_core::local_server::{LocalRedis, LocalServerError};

    let err = LocalRedis::start(&["--no-such-option", "1"]).unwrap_err();
    match &err {
        LocalServerError::DidNotStart { reason, .. } => {
            assert!(reason.contains("no-such-option"), "{reason}");
        }
        other => panic!("expected DidNotStart, got {other:?}"),
    }

    let missing = std::path::PathBuf::from("/nonexistent/redis-server-for-test");
    let err = LocalRedis::start_with_binary(missing, &[]).unwrap_err();
    assert!(matches!(err, LocalServerError::NotFound { .. }), "{err:?}");

    let server = LocalRedis::start(&[]).unwrap();
    let (pid, dir) = (server.pid(), server.dir().to_path_buf());
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut conn)
        .unwrap();
    assert_eq!(save, ["save", ""], "no RDB snapshots");
    drop(server);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("State:\tZ"),
        "redis-server {pid} still runs: {status}"
    );
    assert!(!dir.exists(), "its temporary directory is removed");
}

/// A record of the pipeline tests: its size depends on `i`, its keys on `tag`.
fn tagged(tag: &str, i: usize) -> Value {
    json!({"i": i, tag: "y".repeat(i % 11)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_pushes_to_twenty_stores_returns_the_receipts_of_twenty_single_pushes() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    // Every store already has records, so receipts carry earlier totals and first writes.
    for i in 0..20 {
        for prefix in ["piped", "single"] {
            buffer
                .push(format!("{prefix}-{i}").as_str(), &tagged("old", i))
                .await
                .unwrap();
        }
    }
    let texts = |i: usize| {
        vec![
            tagged("json", i).to_string(),
            tagged("more", i + 1).to_string(),
        ]
    };
    let many = |i: usize| {
        (0..=i % 4)
            .map(|j| tagged("many", i + j))
            .collect::<Vec<_>>()
    };

    let mut pipeline = buffer.pipeline();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let store = format!("piped-{i}");
            match i % 3 {
                0 => pipeline.push(store.as_str(), &tagged("one", i)),
                1 => pipeline.push_many(store.as_str(), &many(i)),
                _ => pipeline.push_json(store.as_str(), &texts(i)),
            }
        })
        .collect();
    assert_eq!(pipeline.len(), 20);
    pipeline.execute().await.unwrap();

    for (i, handle) in handles.iter().enumerate() {
        let store = format!("single-{i}");
        let single = match i % 3 {
            0 => buffer.push(store.as_str(), &tagged("one", i)).await,
            1 => buffer.push_many(store.as_str(), &many(i)).await,
            _ => buffer.push_json(store.as_str(), &texts(i)).await,
        }
        .unwrap();
        let piped = handle.receipt().unwrap();
        assert_eq!(
            (piped.bytes, piped.records, piped.keys),
            (single.bytes, single.records, single.keys),
            "store {i}"
        );
        assert!(piped.records >= 2, "store {i}: {piped:?}");
        assert!(
            piped.first_write_ms.abs_diff(single.first_write_ms) < 5_000,
            "store {i}: {piped:?} vs {single:?}"
        );
    }
    // What landed is the same too: the indexes and the records.
    let stores = buffer.stores().await.unwrap();
    for i in 0..20 {
        let find = |name: String| {
            let s = stores.iter().find(|s| s.store.as_str() == name).unwrap();
            (s.bytes, s.records)
        };
        assert_eq!(find(format!("piped-{i}")), find(format!("single-{i}")));
        assert_eq!(
            buffer
                .latest_records(format!("piped-{i}").as_str(), 10)
                .await
                .unwrap(),
            buffer
                .latest_records(format!("single-{i}").as_str(), 10)
                .await
                .unwrap()
        );
    }
    // Each pushed store can be prepared and read page by page (its run list is right).
    let batch = buffer
        .prepare_to_persist("piped-1", HOLD)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        batch_records(&buffer, &batch).await.len() as u64,
        batch.records
    );
    buffer.empty(batch).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongtype_push_in_a_pipeline_fails_alone_and_the_others_land() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.push("victim", &json!({"a": 1})).await.unwrap();
    let records_key = server
        .all_keys()
        .into_iter()
        .find(|k| k.ends_with(":s:victim:records"))
        .unwrap();
    let mut conn = server.conn();
    let _: () = redis::cmd("SET")
        .arg(&records_key)
        .arg("not a list")
        .query(&mut conn)
        .unwrap();

    let mut pipeline = buffer.pipeline();
    let before: Vec<_> = (0..5)
        .map(|i| pipeline.push(format!("a-{i}").as_str(), &json!({"i": i})))
        .collect();
    let victim = pipeline.push("victim", &json!({"a": 2}));
    let bad_name = pipeline.push("", &json!({"a": 3}));
    let bad_record = pipeline.push_json("refused", &["[1, 2]"]);
    let no_records = pipeline.push_many::<_, Value>("refused", &[]);
    let after: Vec<_> = (0..5)
        .map(|i| {
            pipeline.push_many(
                format!("b-{i}").as_str(),
                &[json!({"i": i}), json!({"j": i})],
            )
        })
        .collect();
    assert_eq!(pipeline.len(), 11, "refused input is not queued");
    pipeline.execute().await.unwrap();

    let err = victim.receipt().unwrap_err();
    assert!(err.is_wrong_type(), "{err:?}");
    assert!(err.to_string().contains("victim"), "{err}");
    for handle in [&bad_name, &bad_record, &no_records] {
        let err = handle.receipt().unwrap_err();
        assert!(err.is_invalid_input(), "{err:?}");
    }
    for handle in &before {
        assert_eq!(handle.receipt().unwrap().records, 1);
    }
    for handle in &after {
        let receipt = handle.receipt().unwrap();
        assert_eq!((receipt.records, receipt.keys), (2, 2));
    }
    let stores: BTreeSet<String> = buffer
        .stores()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.store.to_string())
        .collect();
    for i in 0..5 {
        assert!(stores.contains(&format!("a-{i}")), "{stores:?}");
        assert!(stores.contains(&format!("b-{i}")), "{stores:?}");
    }
    assert!(
        !server.all_keys().iter().any(|k| k.contains("refused")),
        "nothing of refused input was sent"
    );
    let value: String = redis::cmd("GET")
        .arg(&records_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(value, "not a list", "the foreign value is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_tasks_with_their_own_pipelines_never_get_each_others_results() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let rounds = 5;
    let mut tasks = Vec::new();
    for task in 0..50usize {
        let buffer = buffer.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                let mut pipeline = buffer.pipeline();
                // Store j of this task takes a count of records no other store takes, and
                // records with a key naming the task: a receipt of someone else's push
                // would show another count or another key count.
                let mut expected = Vec::new();
                for j in 0..4 {
                    let n = task * 4 + j + 1;
                    let records: Vec<Value> = (0..n)
                        .map(|i| json!({"i": i, format!("t{task}"): round}))
                        .collect();
                    let bytes: u64 = records.iter().map(|r| r.to_string().len() as u64).sum();
                    let handle = pipeline.push_many(format!("t{task}-s{j}").as_str(), &records);
                    expected.push((handle, n as u64, bytes));
                }
                pipeline.execute().await.unwrap();
                for (handle, n, bytes) in expected {
                    let receipt = handle.receipt().unwrap();
                    assert_eq!(receipt.records, n * (round + 1), "task {task}");
                    assert_eq!(receipt.bytes, bytes * (round + 1), "task {task}");
                    assert_eq!(receipt.keys, 2, "task {task}");
                }
            }
            task
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stores = buffer.stores().await.unwrap();
    assert_eq!(stores.len(), 200);
    for summary in stores {
        let (task, j) = summary.store.as_str()[1..].split_once("-s").unwrap();
        let n = task.parse::<u64>().unwrap() * 4 + j.parse::<u64>().unwrap() + 1;
        assert_eq!(summary.records, n * rounds, "{}", summary.store);
    }
}

/// What a reusable function does with a caller's pipeline: adds its own push, keeps its
/// handle, and reads its own result once the caller ran the pipeline.
fn add_audit(pipeline: &mut buffer_core::PushPipeline, order: u64) -> buffer_core::PushHandle {
    pipeline.push("audit", &json!({"order": order}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_handle_read_before_execute_is_a_typed_error() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.pipeline().execute().await.unwrap();

    let mut pipeline = buffer.pipeline();
    let order = pipeline.push("orders", &json!({"id": 1}));
    let audit = add_audit(&mut pipeline, 1);
    for handle in [&order, &audit] {
        let err = handle.receipt().unwrap_err();
        assert!(err.is_not_executed(), "{err:?}");
        assert!(!handle.is_ready());
    }
    assert!(
        server.all_keys().is_empty(),
        "nothing is sent before execute"
    );
    pipeline.execute().await.unwrap();
    // The pipeline is gone; the handles hold their own results.
    assert_eq!(order.receipt().unwrap().records, 1);
    assert_eq!(audit.receipt().unwrap().records, 1);
    assert!(audit.clone().is_ready());

    // A pipeline dropped without executing sends nothing, and its handles say so.
    let mut dropped = buffer.pipeline();
    let lost = dropped.push("never", &json!({"a": 1}));
    drop(dropped);
    assert!(lost.receipt().unwrap_err().is_not_executed());
    assert!(!server.all_keys().iter().any(|k| k.contains("never")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_fails_every_push_of_a_pipeline_with_an_unknown_outcome() {
    let server = RedisServer::start();
    let config = server
        .config()
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300));
    let buffer = Buffer::connect(config).await.unwrap();
    let mut pipeline = buffer.pipeline();
    let handles: Vec<_> = (0..3)
        .map(|i| pipeline.push(format!("s{i}").as_str(), &json!({"i": i})))
        .collect();
    server.signal("STOP");
    let started = Instant::now();
    let err = pipeline.execute().await.unwrap_err();
    let waited = started.elapsed();
    server.signal("CONT");
    assert!(err.is_outcome_unknown(), "{err:?}");
    // It waited the whole 300 ms timeout (the freeze hit it), and gave up at the timeout,
    // not much later (1 s: more than three times the timeout, for a loaded machine).
    assert!(
        waited >= Duration::from_millis(300),
        "failed before the timeout, after {waited:?}"
    );
    assert!(waited < Duration::from_secs(1), "returned after {waited:?}");
    for (i, handle) in handles.iter().enumerate() {
        let err = handle.receipt().unwrap_err();
        assert!(err.is_outcome_unknown(), "{err:?}");
        assert!(err.to_string().contains(&format!("\"s{i}\"")), "{err}");
    }
}

/// Issue 13: `prepare` on a batch lock and `empty_batch` on a store lock are refused with
/// their own error naming the operation, store and lock kinds, not a catch-all `Config`; the
/// batch and the store are left as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_of_the_wrong_kind_is_refused_with_wrong_lock_kind() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.push("kinds", &json!({"a": 1})).await.unwrap();
    let batch = buffer
        .prepare_to_persist("kinds", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let id = batch.id.clone();
    assert!(batch.release().await.unwrap());
    buffer.push("kinds", &json!({"a": 2})).await.unwrap();

    let mut batch_guard = buffer
        .lock("kinds", Some(&id), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let err = batch_guard.prepare().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::WrongLockKind { op: "prepare", store, needs: "store", held: "batch" }
                if store == "kinds"
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "prepare on store \"kinds\" needs a store lock, not a batch lock"
    );
    assert!(batch_guard.release().await.unwrap());

    let store_guard = buffer
        .lock("kinds", None, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let err = store_guard.empty_batch().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::WrongLockKind {
                op: "empty_batch",
                needs: "batch",
                held: "store",
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing was prepared or deleted: the batch and the live store are still there.
    let prepared = buffer.get_prepared().await.unwrap();
    assert_eq!(prepared.len(), 1);
    assert_eq!(prepared[0].id, id);
    assert_eq!(buffer.stores().await.unwrap()[0].records, 1);
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct TypedOrder {
    id: u64,
    total: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_pages_decode_every_record_and_name_the_index_of_one_that_does_not() {
    let server = RedisServer::start();
    let buffer = Buffer::connect(server.config().page_size(7)).await.unwrap();
    let orders: Vec<Value> = (0..20u64)
        .map(|i| json!({"id": i, "total": i as f64 + 0.5}))
        .collect();
    buffer.push_many("typed", &orders).await.unwrap();
    let batch = buffer
        .prepare_to_persist("typed", HOLD)
        .await
        .unwrap()
        .unwrap();
    let mut reader = buffer.reader(&batch);
    let mut decoded = Vec::new();
    while let Some(page) = reader.next_page_as::<TypedOrder>().await.unwrap() {
        assert!(page.len() <= 7, "a typed page keeps the page size");
        decoded.extend(page);
    }
    let expected: Vec<TypedOrder> = (0..20u64)
        .map(|i| TypedOrder {
            id: i,
            total: i as f64 + 0.5,
        })
        .collect();
    assert_eq!(decoded, expected);
    buffer.empty(batch).await.unwrap();

    // Record 10 (on the second page of 7) has a string id: that page is an error naming it.
    let mut mixed = orders.clone();
    mixed[10] = json!({"id": "ten", "total": 10.5});
    buffer.push_many("typed", &mixed).await.unwrap();
    let batch = buffer
        .prepare_to_persist("typed", HOLD)
        .await
        .unwrap()
        .unwrap();
    let mut reader = buffer.reader(&batch);
    let first = reader.next_page_as::<TypedOrder>().await.unwrap().unwrap();
    assert_eq!(first, expected[..7]);
    match reader.next_page_as::<TypedOrder>().await {
        Err(Error::RecordNotDecoded {
            store,
            batch: id,
            index,
            type_name,
            reason,
        }) => {
            assert_eq!(store, "typed");
            assert_eq!(id, batch.id.to_string());
            assert_eq!(index, 10);
            assert!(type_name.ends_with("TypedOrder"), "{type_name}");
            assert!(reason.contains("invalid type"), "{reason}");
        }
        other => panic!("expected RecordNotDecoded for record 10, got {other:?}"),
    }
    // Nothing was lost: the batch still holds all 20 records, exactly as pushed.
    let texts = batch_records(&buffer, &batch).await;
    assert_eq!(texts.len(), 20);
    assert_eq!(texts[10], r#"{"id":"ten","total":10.5}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_streams_record_by_record_in_push_order_across_pages() {
    use futures::TryStreamExt;

    let server = RedisServer::start();
    let buffer = Buffer::connect(server.config().page_size(7)).await.unwrap();
    let pushed: Vec<Value> = (0..50).map(record).collect();
    for chunk in pushed.chunks(9) {
        buffer.push_many("streamed", chunk).await.unwrap();
    }
    let batch = buffer
        .prepare_to_persist("streamed", HOLD)
        .await
        .unwrap()
        .unwrap();
    let streamed: Vec<String> = buffer
        .reader(&batch)
        .into_stream()
        .try_collect()
        .await
        .unwrap();
    let expected: Vec<String> = pushed.iter().map(Value::to_string).collect();
    assert_eq!(streamed, expected);
    assert_eq!(streamed, batch_records(&buffer, &batch).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stream_yields_batch_not_found_once_and_ends_when_the_batch_vanishes() {
    use futures::StreamExt;

    let server = RedisServer::start();
    let buffer = Buffer::connect(server.config().page_size(7)).await.unwrap();
    let pushed: Vec<Value> = (0..20).map(record).collect();
    buffer.push_many("vanishing", &pushed).await.unwrap();
    let batch = buffer
        .prepare_to_persist("vanishing", HOLD)
        .await
        .unwrap()
        .unwrap();
    let mut records = std::pin::pin!(buffer.reader(&batch).into_stream());
    for expected in &pushed[..7] {
        assert_eq!(records.next().await.unwrap().unwrap(), expected.to_string());
    }
    // Someone deletes the batch's records behind the reader's back.
    let records_key = server
        .all_keys()
        .into_iter()
        .find(|key| key.contains(":p:") && key.ends_with(":records"))
        .unwrap();
    server.command(&["DEL", &records_key]);
    match records.next().await {
        Some(Err(Error::BatchNotFound { store, .. })) => assert_eq!(store, "vanishing"),
        other => panic!("expected BatchNotFound, got {other:?}"),
    }
    assert!(
        records.next().await.is_none(),
        "the stream ends after its error"
    );
}

/// A heartbeat needs a runtime to run on: asked for outside one, `keep_alive` says so with its
/// own error (not a configuration error), and the lock stays held, without a heartbeat.
#[test]
fn keep_alive_outside_a_runtime_is_refused_with_no_runtime_and_the_lock_stays() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (buffer, mut guard) = runtime.block_on(async {
        let buffer = server.buffer().await;
        let guard = buffer
            .lock("s", None, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        (buffer, guard)
    });
    // This thread is not inside the runtime (block_on has returned).
    let err = guard.keep_alive().unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoRuntime {
                op: "LockGuard::keep_alive"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
    runtime.block_on(async {
        let store = StoreName::new("s").unwrap();
        let info = buffer.lock_info(&store, None).await.unwrap().unwrap();
        assert!(info.ttl.unwrap() > Duration::from_secs(20), "{info:?}");
        assert!(guard.release().await.unwrap());
    });
}

/// A `WAIT` for a replica that does not come blocks the connection it is sent on, on the
/// server, for its whole timeout. Writes with a `WAIT` go on a connection of their own, so
/// lock heartbeats, lock takes and reads on the same `Buffer` are not queued behind it (they
/// used to be, and a heartbeat could miss its lock's TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_replicas_does_not_delay_locks_and_reads_on_the_same_buffer() {
    let server = RedisServer::start();
    let wait = Duration::from_millis(1500);
    let buffer = Buffer::connect(server.config().wait_replicas(1, wait))
        .await
        .unwrap();
    buffer.stores().await.unwrap();
    let waiting = {
        let buffer = buffer.clone();
        tokio::spawn(async move { buffer.push("waited", &json!({"a": 1})).await })
    };
    // Let the push and its WAIT reach the server first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let guard = buffer
        .lock("other", None, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    guard.extend(Duration::from_secs(5)).await.unwrap();
    buffer.stores().await.unwrap();
    guard.release().await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "lock, extend, read and release took {took:?} behind a {wait:?} WAIT"
    );
    // The push itself waited its WAIT out and says the replica did not confirm it.
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ReplicasNotConfirmed { .. }), "{err:?}");
}
