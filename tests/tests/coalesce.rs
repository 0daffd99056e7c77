//! Coalescing stores against real Redis: the rules round-trip through the library, and are
//! changed only while the store holds no records, live or prepared (nothing is changed when
//! refused).

use std::time::Duration;

use buffer_core::{CoalesceRules, Error, MergeRule};
use buffer_tests::RedisServer;
use futures::StreamExt;
use serde_json::json;

const HOLD: Duration = Duration::from_secs(60);

fn page_views() -> CoalesceRules {
    CoalesceRules::new("page")
        .with("views", MergeRule::Sum)
        .with("last_seen", MergeRule::Max)
        .with("referrers", MergeRule::Union)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_round_trip_through_the_library() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    assert_eq!(buffer.coalesce_rules("views").await.unwrap(), None);
    buffer.set_coalesce("views", &page_views()).await.unwrap();
    buffer
        .set_coalesce("users", &CoalesceRules::new("id").with("n", MergeRule::Sum))
        .await
        .unwrap();
    assert_eq!(
        buffer.coalesce_rules("views").await.unwrap(),
        Some(page_views())
    );
    let all = buffer.all_coalesce_rules().await.unwrap();
    let names: Vec<&str> = all.iter().map(|(store, _)| store.as_str()).collect();
    assert_eq!(names, ["users", "views"]);
    assert_eq!(all[1].1, page_views());
    // Replacing rules of an empty store is allowed.
    let other = CoalesceRules::new("page").with("views", MergeRule::Max);
    buffer.set_coalesce("views", &other).await.unwrap();
    assert_eq!(buffer.coalesce_rules("views").await.unwrap(), Some(other));
    assert!(buffer.clear_coalesce("views").await.unwrap());
    assert!(!buffer.clear_coalesce("views").await.unwrap());
    assert_eq!(buffer.coalesce_rules("views").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_are_refused_before_anything_is_written() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let bad = CoalesceRules::new("page").with("page", MergeRule::Sum);
    let err = buffer.set_coalesce("views", &bad).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidCoalesceRules { store, reason }
            if store == "views" && reason.contains("key field \"page\"")),
        "{err}"
    );
    assert!(server.all_keys().is_empty(), "{:?}", server.all_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_do_not_change_while_the_store_holds_records() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.push("clicks", &json!({"page": "/"})).await.unwrap();
    // A store holding appended records cannot become coalescing.
    let err = buffer
        .set_coalesce("clicks", &page_views())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CoalesceStoreNotEmpty { store, live: 1, batches: 0 } if store == "clicks"),
        "{err}"
    );
    assert!(err.to_string().contains("drain it first"), "{err}");
    assert_eq!(buffer.coalesce_rules("clicks").await.unwrap(), None);
    // Nor while its records wait in a prepared batch.
    let batch = buffer
        .prepare_to_persist("clicks", HOLD)
        .await
        .unwrap()
        .unwrap();
    let err = buffer
        .set_coalesce("clicks", &page_views())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::CoalesceStoreNotEmpty {
                live: 0,
                batches: 1,
                ..
            }
        ),
        "{err}"
    );
    // Once the batch is persisted (emptied), the store is empty and may become coalescing.
    buffer.empty(batch).await.unwrap();
    buffer.set_coalesce("clicks", &page_views()).await.unwrap();
    // Clearing is refused the same way while it holds a record.
    buffer.push("clicks", &json!({"page": "/"})).await.unwrap();
    let err = buffer.clear_coalesce("clicks").await.unwrap_err();
    assert!(matches!(err, Error::CoalesceStoreNotEmpty { .. }), "{err}");
    assert_eq!(
        buffer.coalesce_rules("clicks").await.unwrap(),
        Some(page_views())
    );
}

/// Reads every row of a store's next batch through the library's reader, keyed by entity.
async fn drain_rows(
    buffer: &buffer_core::Buffer,
    store: &str,
    key: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let batch = buffer
        .prepare_to_persist(store, HOLD)
        .await
        .unwrap()
        .unwrap();
    let mut reader = buffer.reader(&batch);
    let mut rows = std::collections::BTreeMap::new();
    while let Some(page) = reader.next_page().await.unwrap() {
        for text in page {
            let row: serde_json::Value = serde_json::from_str(&text).unwrap();
            let id = row[key].to_string();
            assert!(rows.insert(id, row).is_none(), "entity twice: {text}");
        }
    }
    buffer.empty(batch).await.unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_merge_into_one_row_per_entity() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let rules = CoalesceRules::new("page")
        .with("views", MergeRule::Sum)
        .with("seen", MergeRule::Max)
        .with("low", MergeRule::Min)
        .with("origin", MergeRule::First)
        .with("refs", MergeRule::Union);
    buffer.set_coalesce("pages", &rules).await.unwrap();
    const PRODUCERS: i64 = 4;
    const WRITES: i64 = 50;
    const ENTITIES: i64 = 7;
    let big: i64 = 1 << 53;
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let buffer = buffer.clone();
        tasks.push(tokio::spawn(async move {
            for w in 0..WRITES {
                let page = (p + w) % ENTITIES;
                let record = json!({"page": format!("/p{page}"), "views": big + w, "seen": w * 10 + p,
                    "low": -(w * p), "origin": "x", "refs": [format!("r{}", w % 3)], "title": "t"});
                if w % 2 == 0 {
                    buffer.push("pages", &record).await.unwrap();
                } else {
                    buffer.push_many("pages", &[record]).await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The reduction, computed here in i128 (exact).
    let mut expected: std::collections::BTreeMap<String, (i128, i64, i64, i64)> =
        Default::default();
    for p in 0..PRODUCERS {
        for w in 0..WRITES {
            let page = (p + w) % ENTITIES;
            let e = expected
                .entry(format!("\"/p{page}\""))
                .or_insert((0, i64::MIN, i64::MAX, 0));
            e.0 += i128::from(big + w);
            e.1 = e.1.max(w * 10 + p);
            e.2 = e.2.min(-(w * p));
            e.3 += 1;
        }
    }
    let rows = drain_rows(&buffer, "pages", "page").await;
    assert_eq!(rows.len(), ENTITIES as usize);
    for (id, (sum, max, min, writes)) in expected {
        let row = &rows[&id];
        // Beyond 2^53: compared as text, which a double could not hold exactly.
        assert_eq!(row["views"].to_string(), sum.to_string(), "{row}");
        assert!(sum > i128::from(big) * 2);
        assert_eq!(row["seen"], json!(max), "{row}");
        assert_eq!(row["low"], json!(min), "{row}");
        assert_eq!(row["origin"], json!("x"));
        assert_eq!(row["title"], json!("t"));
        assert_eq!(row["_writes"], json!(writes), "{row}");
        let mut refs: Vec<String> = serde_json::from_value(row["refs"].clone()).unwrap();
        refs.sort();
        assert_eq!(refs, ["r0", "r1", "r2"], "{row}");
        assert!(row["_first_write"].as_u64().unwrap() <= row["_last_write"].as_u64().unwrap());
    }
    // The batch is gone; a new write starts a new row.
    buffer
        .push("pages", &json!({"page": "/p1", "views": 1}))
        .await
        .unwrap();
    let rows = drain_rows(&buffer, "pages", "page").await;
    assert_eq!(rows["\"/p1\""]["views"], json!(1));
    assert_eq!(rows["\"/p1\""]["_writes"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_refused_whole_and_named() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let rules = CoalesceRules::new("id").with("n", MergeRule::Sum);
    buffer.set_coalesce("counts", &rules).await.unwrap();
    buffer
        .push("counts", &json!({"id": 1, "n": i64::MAX - 1}))
        .await
        .unwrap();
    let good = json!({"id": 2, "n": 5});
    let cases = [
        (json!({"n": 1}), "id", "key", "no key field"),
        (
            json!({"id": {"a": 1}, "n": 1}),
            "id",
            "key",
            "string or an integer",
        ),
        (json!({"id": 3, "n": "7"}), "n", "sum", "not a number"),
        (json!({"id": 1, "n": 2}), "n", "sum", "overflows"),
        (
            json!({"id": 3, "n": 1, "_writes": 4}),
            "_writes",
            "metadata",
            "kept",
        ),
        (
            json!({"id": 3, "n": 1, "a\u{1e}b": 4}),
            "a\u{1e}b",
            "name",
            "control character",
        ),
    ];
    for (bad, field_name, rule_name, words) in cases {
        let err = buffer
            .push_many("counts", &[good.clone(), bad.clone()])
            .await
            .unwrap_err();
        match &err {
            Error::CoalesceRecordRefused {
                index: 1,
                field,
                rule,
                reason,
                ..
            } if field == field_name && rule == rule_name && reason.contains(words) => {}
            other => panic!("{bad}: {other}"),
        }
    }
    // Nothing of the refused pushes was applied: entity 2 never appeared, 1 is unchanged.
    let rows = drain_rows(&buffer, "counts", "id").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows["1"]["n"], json!(i64::MAX - 1));
    assert_eq!(rows["1"]["_writes"], json!(1));
}

/// Small integers are summed and compared as doubles in the merge script (exact below 2^53),
/// longer ones digit by digit: sums and maxima crossing from one to the other stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_and_maxima_stay_exact_across_the_fast_and_the_digit_paths() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let rules = CoalesceRules::new("id")
        .with("n", MergeRule::Sum)
        .with("hi", MergeRule::Max)
        .with("lo", MergeRule::Min);
    buffer.set_coalesce("exact", &rules).await.unwrap();
    let values: [i64; 8] = [
        999_999_999_999_999,
        999_999_999_999_999,
        7,
        9_007_199_254_740_993,
        -9_007_199_254_740_993,
        -1_000_000_000_000_001,
        3,
        1 << 60,
    ];
    let mut sum: i64 = 0;
    for (i, n) in values.iter().enumerate() {
        sum += n;
        let record = json!({"id": 1, "n": n, "hi": n, "lo": n});
        if i % 2 == 0 {
            buffer.push("exact", &record).await.unwrap();
        } else {
            // Two writes of one entity in one push merge in the script's own table.
            buffer
                .push_many("exact", &[record, json!({"id": 1, "n": 0})])
                .await
                .unwrap();
        }
    }
    // Both sides of 2^53 by one: a double would call them equal.
    buffer
        .push_many(
            "exact",
            &[
                json!({"id": 2, "hi": 9_007_199_254_740_992_i64, "lo": 9_007_199_254_740_993_i64}),
                json!({"id": 2, "hi": 9_007_199_254_740_993_i64, "lo": 9_007_199_254_740_992_i64}),
            ],
        )
        .await
        .unwrap();
    let rows = drain_rows(&buffer, "exact", "id").await;
    assert_eq!(rows["1"]["n"], json!(sum), "{:?}", rows["1"]);
    assert_eq!(rows["1"]["hi"], json!(1_i64 << 60));
    assert_eq!(rows["1"]["lo"], json!(-9_007_199_254_740_993_i64));
    assert_eq!(rows["1"]["_writes"], json!(12));
    assert_eq!(rows["2"]["hi"], json!(9_007_199_254_740_993_i64));
    assert_eq!(rows["2"]["lo"], json!(9_007_199_254_740_992_i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_once_merges_once_and_prepare_is_a_constant_number_of_commands() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer
        .set_coalesce(
            "users",
            &CoalesceRules::new("user").with("n", MergeRule::Sum),
        )
        .await
        .unwrap();
    let records: Vec<_> = (0..2000).map(|u| json!({"user": u, "n": 1})).collect();
    for _ in 0..2 {
        let outcome = buffer.push_once("users", "once-1", &records).await.unwrap();
        assert_eq!(outcome.receipt.records, 2000);
    }
    let renames_before = rename_calls(&server);
    let rows = drain_rows(&buffer, "users", "user").await;
    let renames = rename_calls(&server) - renames_before;
    assert_eq!(rows.len(), 2000);
    assert!(
        rows.values()
            .all(|row| row["n"] == json!(1) && row["_writes"] == json!(1))
    );
    // entities, rows, first, keys, bytes: one RENAME each, whatever the entity count.
    assert_eq!(renames, 5, "RENAMEs for 2000 entities");
}

fn rename_calls(server: &RedisServer) -> u64 {
    command_counts(server).get("rename").copied().unwrap_or(0)
}

/// Merges and prepares interleave freely: producers push while batches are prepared, read and
/// emptied; summed over every batch, each entity's sum and write count are what was pushed,
/// so each write landed in exactly one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_and_prepares_interleaved_split_writes_across_batches_exactly() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer
        .set_coalesce("hits", &CoalesceRules::new("k").with("n", MergeRule::Sum))
        .await
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..3u64 {
        let buffer = buffer.clone();
        producers.push(tokio::spawn(async move {
            let mut pushed: std::collections::BTreeMap<u64, (i128, u64)> = Default::default();
            let mut state = p * 7919 + 1;
            for _ in 0..150 {
                let records: Vec<_> = (0..3)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let k = (state >> 33) % 11;
                        // Beyond 2^53 for some entities, small for others.
                        let n: i64 = if k == 0 {
                            (1 << 53) + 1
                        } else {
                            (state >> 40) as i64 % 100
                        };
                        let e = pushed.entry(k).or_default();
                        e.0 += i128::from(n);
                        e.1 += 1;
                        json!({"k": k, "n": n})
                    })
                    .collect();
                if state % 2 == 0 {
                    buffer.push_many("hits", &records).await.unwrap();
                } else {
                    let mut pipeline = buffer.pipeline();
                    let handle = pipeline.push_many("hits", &records);
                    pipeline.execute().await.unwrap();
                    handle.receipt().unwrap();
                }
            }
            pushed
        }));
    }
    let drainer = {
        let buffer = buffer.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: std::collections::BTreeMap<u64, (i128, u64)> = Default::default();
            let mut batches = 0;
            loop {
                let last = done.load(std::sync::atomic::Ordering::SeqCst);
                if let Some(batch) = buffer.prepare_to_persist("hits", HOLD).await.unwrap() {
                    batches += 1;
                    let mut reader = buffer.reader(&batch);
                    while let Some(page) = reader.next_page().await.unwrap() {
                        for text in page {
                            let row: serde_json::Value = serde_json::from_str(&text).unwrap();
                            let e = seen.entry(row["k"].as_u64().unwrap()).or_default();
                            e.0 += row["n"].to_string().parse::<i128>().unwrap();
                            e.1 += row["_writes"].as_u64().unwrap();
                        }
                    }
                    buffer.empty(batch).await.unwrap();
                } else if last {
                    return (seen, batches);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut expected: std::collections::BTreeMap<u64, (i128, u64)> = Default::default();
    for producer in producers {
        for (k, (sum, writes)) in producer.await.unwrap() {
            let e = expected.entry(k).or_default();
            e.0 += sum;
            e.1 += writes;
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, batches) = drainer.await.unwrap();
    assert!(batches > 1, "only {batches} batch: no interleaving");
    assert_eq!(seen, expected);
}

/// Every command Redis ran since the last `CONFIG RESETSTAT`, by name (a script's own
/// commands included), from INFO commandstats.
fn command_counts(server: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    buffer_tests::command_stats(&mut server.conn())
        .into_iter()
        .map(|(name, stat)| (name, stat.calls))
        .collect()
}

/// Prepare of a store of 1 M entities sends the same commands as of a store of 10 (a fixed
/// number of RENAMEs), and none of them is slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_of_a_million_entities_is_a_constant_number_of_fast_commands() {
    let server = RedisServer::start();
    // Filling the store takes 100 pushes of 10 000 merges: on a machine loaded by other
    // builds one can take seconds, and their speed is not what this test is about.
    let config = server.config().response_timeout(Duration::from_secs(60));
    let buffer = buffer_core::Buffer::connect(config).await.unwrap();
    let rules = CoalesceRules::new("u").with("n", MergeRule::Sum);
    for store in ["small", "large"] {
        buffer.set_coalesce(store, &rules).await.unwrap();
    }
    let texts: Vec<String> = (0..10).map(|u| format!(r#"{{"u":{u},"n":1}}"#)).collect();
    buffer.push_json("small", &texts).await.unwrap();
    const ENTITIES: u64 = 1_000_000;
    // Pushes of 10 000 records: each well within the response timeout on a loaded machine.
    const CHUNK: u64 = 10_000;
    for chunk in 0..ENTITIES / CHUNK {
        let texts: Vec<String> = (chunk * CHUNK..(chunk + 1) * CHUNK)
            .map(|u| format!(r#"{{"u":{u},"n":1}}"#))
            .collect();
        buffer.push_json("large", &texts).await.unwrap();
    }
    // Two entities of the large store pass the others; the top list follows.
    buffer
        .push_json(
            "large",
            &[
                r#"{"u":500000,"n":5}"#.to_owned(),
                r#"{"u":999999,"n":3}"#.to_owned(),
            ],
        )
        .await
        .unwrap();
    // A first prepare loads the scripts (NOSCRIPT, SCRIPT LOAD): not counted.
    buffer.set_coalesce("warm", &rules).await.unwrap();
    buffer.push_json("warm", &texts).await.unwrap();
    let warm = buffer.prepare_to_persist("warm", HOLD).await.unwrap();
    assert!(warm.is_some());
    let mut conn = server.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(20_000)
        .query(&mut conn)
        .unwrap();
    // The dashboard's view of the live rows (merged writes, top 10 by a sum) is as cheap
    // with 1 M entities as with 10: the same commands, none slow.
    let mut views = Vec::new();
    for store in ["small", "large"] {
        let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut conn).unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut conn)
            .unwrap();
        let view = buffer.coalesced_view(store, Some("n")).await.unwrap();
        let mut seen = command_counts(&server);
        seen.remove("info");
        let slow: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").query(&mut conn).unwrap();
        assert!(slow.is_empty(), "{store}: slow commands {slow:?}");
        views.push((view, seen));
    }
    assert_eq!(views[0].1, views[1].1, "commands of the view: 10 vs 1 M");
    assert_eq!(views[0].0.writes, 10);
    assert_eq!(views[1].0.writes, ENTITIES + 2);
    let top: Vec<(&str, &str)> = views[1]
        .0
        .top
        .iter()
        .map(|t| (t.entity.as_str(), t.sum.as_str()))
        .collect();
    assert_eq!(top.len(), 10, "{top:?}");
    assert_eq!(&top[..2], [("500000", "6"), ("999999", "4")]);
    assert!(top[2..].iter().all(|(_, sum)| *sum == "1"), "{top:?}");
    assert!(views[1].0.top_exact);
    let mut counts = Vec::new();
    for store in ["small", "large"] {
        let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut conn).unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut conn)
            .unwrap();
        let batch = buffer
            .prepare_to_persist(store, HOLD)
            .await
            .unwrap()
            .unwrap();
        let mut seen = command_counts(&server);
        // The INFO call reading them is not the prepare's.
        seen.remove("info");
        let slow: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").query(&mut conn).unwrap();
        assert!(slow.is_empty(), "{store}: slow commands {slow:?}");
        counts.push((batch.records, seen));
    }
    assert_eq!(counts[0].0, 10);
    assert_eq!(counts[1].0, ENTITIES);
    // The view counts the live rows: the prepared ones are gone from it.
    let after = buffer.coalesced_view("large", Some("n")).await.unwrap();
    assert_eq!((after.writes, after.top.len()), (0, 0));
    assert_eq!(
        counts[0].1, counts[1].1,
        "commands of prepare: 10 vs 1 M entities"
    );
    assert!(counts[1].1["rename"] <= 7, "{:?}", counts[1].1);
}

/// On a 3-master Redis Cluster: rules, merges (single, pipelined, once), prepare, the
/// coalesced read and the empty all work, each store's keys in its own slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_works_on_a_cluster() {
    let cluster = buffer_tests::cluster::TestCluster::start();
    let buffer = cluster.buffer().await;
    let rules = CoalesceRules::new("id")
        .with("n", MergeRule::Sum)
        .with("tags", MergeRule::Union);
    let stores = ["c-one", "c-two", "c-three", "c-four"];
    for store in stores {
        buffer.set_coalesce(store, &rules).await.unwrap();
    }
    for round in 0..3 {
        let mut pipeline = buffer.pipeline();
        let handles: Vec<_> = stores
            .iter()
            .map(|store| {
                pipeline.push(
                    *store,
                    &json!({"id": 1, "n": (1i64 << 53) + 1, "tags": [round]}),
                )
            })
            .collect();
        pipeline.execute().await.unwrap();
        for handle in handles {
            // The store's entities after the push: 1, then 2 once the push_once below ran.
            assert_eq!(
                handle.receipt().unwrap().records,
                if round == 0 { 1 } else { 2 }
            );
        }
        for store in stores {
            buffer
                .push_once(store, &format!("r{round}"), &[json!({"id": 2, "n": 1})])
                .await
                .unwrap();
            buffer.push(store, &json!({"id": 2, "n": 1})).await.unwrap();
        }
    }
    let mut all = std::collections::BTreeSet::new();
    for store in stores {
        let rows = drain_rows(&buffer, store, "id").await;
        assert_eq!(
            rows["1"]["n"].to_string(),
            (3 * ((1i128 << 53) + 1)).to_string()
        );
        assert_eq!(rows["1"]["tags"], json!([0, 1, 2]));
        assert_eq!(rows["2"]["n"], json!(6));
        assert_eq!(rows["2"]["_writes"], json!(6));
        all.insert(store);
    }
    assert_eq!(all.len(), 4);
    assert!(
        cluster
            .buffer_keys()
            .iter()
            .all(|key| !key.contains(":rows") && !key.contains(":entities")),
        "{:?}",
        cluster.buffer_keys()
    );
}

/// A producer that last saw the store without rules appends its next push (its reply tells it
/// of the rules) and merges from then on; the appended record is not lost: the batch holds it
/// before the rows, as it was pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_has_not_seen_the_rules_appends_once_then_merges() {
    let server = RedisServer::start();
    let stale = server.buffer().await;
    let admin = server.buffer().await;
    // `stale` learns that "late" has no rules (and no limits), then the store is emptied.
    stale.push("late", &json!({"id": 0, "n": 1})).await.unwrap();
    stale.push("late", &json!({"id": 0, "n": 1})).await.unwrap();
    let batch = admin
        .prepare_to_persist("late", HOLD)
        .await
        .unwrap()
        .unwrap();
    admin.empty(batch).await.unwrap();
    admin
        .set_coalesce("late", &CoalesceRules::new("id").with("n", MergeRule::Sum))
        .await
        .unwrap();
    stale.push("late", &json!({"id": 1, "n": 5})).await.unwrap();
    stale.push("late", &json!({"id": 1, "n": 7})).await.unwrap();
    stale.push("late", &json!({"id": 1, "n": 9})).await.unwrap();
    let batch = admin
        .prepare_to_persist("late", HOLD)
        .await
        .unwrap()
        .unwrap();
    let lines: Vec<String> = admin
        .reader(&batch)
        .into_stream()
        .map(|line| line.unwrap())
        .collect()
        .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0], r#"{"id":1,"n":5}"#,
        "the appended record, as pushed"
    );
    let row: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(row["n"], json!(16), "{row}");
    assert_eq!(row["_writes"], json!(2), "{row}");
}

/// A producer pushing through a script (a store with limits) learns of new rules within a
/// second (it trusts "no rules" that long), and its records are not lost meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_of_a_limited_store_merges_within_a_second_of_new_rules() {
    let server = RedisServer::start();
    let stale = server.buffer().await;
    let admin = server.buffer().await;
    admin
        .set_limits(
            "lim",
            buffer_core::StoreLimits {
                max_records: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    stale.push("lim", &json!({"id": 0, "n": 1})).await.unwrap();
    let batch = admin
        .prepare_to_persist("lim", HOLD)
        .await
        .unwrap()
        .unwrap();
    admin.empty(batch).await.unwrap();
    admin
        .set_coalesce("lim", &CoalesceRules::new("id").with("n", MergeRule::Sum))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stale.push("lim", &json!({"id": 1, "n": 5})).await.unwrap();
    stale.push("lim", &json!({"id": 1, "n": 7})).await.unwrap();
    let rows = drain_rows(&admin, "lim", "id").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows["1"]["n"], json!(12));
    assert_eq!(rows["1"]["_writes"], json!(2));
}

/// One step of the property below: a merge push of `(entity, n)` records, or a prepare that
/// freezes what is live into a batch (read and emptied at once).
#[derive(Clone, Debug)]
enum Step {
    Merge(Vec<(u8, i64)>),
    Prepare,
}

/// Property: any sequence of merges and prepares gives batches whose rows, summed, equal the
/// sums pushed (i64 values of any size whose per-entity sums stay within i64), each write in
/// exactly one batch: per batch, every entity's row sum and write count are exactly those of
/// the merges since the previous prepare.
#[test]
fn any_interleaving_of_merges_and_prepares_splits_writes_exactly_across_batches() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let buffer = runtime.block_on(server.buffer());
    runtime
        .block_on(buffer.set_coalesce("prop", &CoalesceRules::new("e").with("n", MergeRule::Sum)))
        .unwrap();
    // |n| < 2^59 and at most 15 writes per case: no per-entity sum leaves i64.
    let value = prop_oneof![-5i64..5, -(1i64 << 59)..(1i64 << 59)];
    let step = prop_oneof![
        3 => proptest::collection::vec((0u8..4, value), 1..4).prop_map(Step::Merge),
        1 => Just(Step::Prepare),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(step, 1..6), |steps| {
            runtime.block_on(async {
                let mut pending: std::collections::BTreeMap<u8, (i128, u64)> = Default::default();
                let mut batches = Vec::new();
                let mut expected = Vec::new();
                for step in steps.iter().chain([&Step::Prepare]) {
                    match step {
                        Step::Merge(records) => {
                            let json: Vec<_> = records
                                .iter()
                                .map(|(e, n)| {
                                    let p = pending.entry(*e).or_default();
                                    p.0 += i128::from(*n);
                                    p.1 += 1;
                                    json!({"e": e, "n": n})
                                })
                                .collect();
                            buffer.push_many("prop", &json).await.unwrap();
                        }
                        Step::Prepare => {
                            let rows = match buffer.prepare_to_persist("prop", HOLD).await.unwrap()
                            {
                                None => Default::default(),
                                Some(batch) => {
                                    let mut reader = buffer.reader(&batch);
                                    let mut rows: std::collections::BTreeMap<u8, (i128, u64)> =
                                        Default::default();
                                    while let Some(page) = reader.next_page().await.unwrap() {
                                        for text in page {
                                            let row: serde_json::Value =
                                                serde_json::from_str(&text).unwrap();
                                            let e =
                                                u8::try_from(row["e"].as_u64().unwrap()).unwrap();
                                            let sum = row["n"].to_string().parse::<i128>().unwrap();
                                            let writes = row["_writes"].as_u64().unwrap();
                                            assert!(rows.insert(e, (sum, writes)).is_none());
                                        }
                                    }
                                    buffer.empty(batch).await.unwrap();
                                    rows
                                }
                            };
                            batches.push(rows);
                            expected.push(std::mem::take(&mut pending));
                        }
                    }
                }
                if batches == expected {
                    Ok(())
                } else {
                    Err(TestCaseError::fail(format!(
                        "{steps:?}: batches {batches:?}, expected {expected:?}"
                    )))
                }
            })
        })
        .unwrap();
}

/// The top entities the merge script keeps are exactly the largest sums however the merges
/// arrive (single pushes, `push_many`, pipelines, sums beyond 2^53), the merged writes are
/// counted exactly, and a sum going down in a full list marks the list as no longer exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_entities_are_the_largest_sums_and_the_writes_are_counted() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.set_coalesce("pages", &page_views()).await.unwrap();
    let view = buffer.coalesced_view("pages", Some("views")).await.unwrap();
    assert_eq!((view.writes, view.top.len(), view.top_exact), (0, 0, true));
    let mut sums: std::collections::BTreeMap<u64, i128> = Default::default();
    let mut writes = 0u64;
    let mut state = 12345u64;
    for round in 0..60 {
        let records: Vec<_> = (0..5)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let page = (state >> 33) % 40;
                let views: i64 = if page == 7 && round == 30 {
                    1 << 60
                } else {
                    ((state >> 45) % 50) as i64
                };
                *sums.entry(page).or_default() += i128::from(views);
                json!({"page": page, "views": views, "last_seen": round})
            })
            .collect();
        writes += records.len() as u64;
        match round % 3 {
            0 => drop(buffer.push_many("pages", &records).await.unwrap()),
            1 => {
                for record in &records {
                    buffer.push("pages", record).await.unwrap();
                }
            }
            _ => {
                let mut pipeline = buffer.pipeline();
                let handle = pipeline.push_many("pages", &records);
                pipeline.execute().await.unwrap();
                handle.receipt().unwrap();
            }
        }
        let view = buffer.coalesced_view("pages", Some("views")).await.unwrap();
        let mut expected: Vec<(i128, u64)> = sums.iter().map(|(p, s)| (*s, *p)).collect();
        expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.to_string().cmp(&b.1.to_string())));
        let expected_sums: Vec<String> = expected
            .iter()
            .take(10)
            .map(|(s, _)| s.to_string())
            .collect();
        let seen_sums: Vec<String> = view.top.iter().map(|t| t.sum.clone()).collect();
        assert_eq!(seen_sums, expected_sums, "round {round}");
        for entity in &view.top {
            let page: u64 = entity.entity.parse().unwrap();
            assert_eq!(entity.sum, sums[&page].to_string(), "round {round}");
        }
        assert!(view.top_exact);
        assert_eq!(view.writes, writes);
    }
    // A field that is not summed has no list; the key order of the list is the rows' sums.
    let other = buffer
        .coalesced_view("pages", Some("last_seen"))
        .await
        .unwrap();
    assert!(other.top.is_empty());
    // A sum in the full list going down: another entity may now be larger, and the view says
    // the list is no longer exact.
    let leader = buffer
        .coalesced_view("pages", Some("views"))
        .await
        .unwrap()
        .top[0]
        .clone();
    let page: u64 = leader.entity.parse().unwrap();
    buffer
        .push("pages", &json!({"page": page, "views": -(1i64 << 61)}))
        .await
        .unwrap();
    let view = buffer.coalesced_view("pages", Some("views")).await.unwrap();
    assert!(!view.top_exact);
    assert_eq!(view.writes, writes + 1);
    // The batch still holds one row per entity, and the counts are not rows.
    let rows = drain_rows(&buffer, "pages", "page").await;
    assert_eq!(rows.len(), sums.len());
    let view = buffer.coalesced_view("pages", Some("views")).await.unwrap();
    assert_eq!((view.writes, view.top.len(), view.top_exact), (0, 0, true));
}

/// Someone writes junk into the rules hash (`HSET` by hand, a foreign writer): every
/// producer, the one holding the old rules in its cache included, gets a clear error naming
/// the store and what is wrong (the field and its unknown rule), and nothing is merged; the
/// listing skips the entry; rules put right make pushes work again. An unknown rule's name
/// given to the library is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_rules_hash_is_a_clear_error_naming_the_store_and_field() {
    let server = RedisServer::start();
    let cached = server.buffer().await;
    cached.set_coalesce("views", &page_views()).await.unwrap();
    cached
        .push("views", &json!({"page": "/", "views": 1}))
        .await
        .unwrap();
    drain_rows(&cached, "views", "page").await;
    let rules_key = server
        .all_keys()
        .into_iter()
        .find(|key| key.ends_with(":coalesce"))
        .unwrap();
    let keys_before = server.all_keys();
    let mut conn = server.conn();
    let cases = [
        (
            r#"{"key":"page","fields":{"views":"avg"}}"#,
            "field \"views\": unknown rule \"avg\": the rules are sum, max",
        ),
        ("not json", "not rules as JSON"),
        (r#"{"key":"_page"}"#, "starts with '_'"),
    ];
    for (junk, reason) in cases {
        let _: () = redis::cmd("HSET")
            .arg(&rules_key)
            .arg("views")
            .arg(junk)
            .query(&mut conn)
            .unwrap();
        let fresh = server.buffer().await;
        for (who, buffer) in [("cached", &cached), ("fresh", &fresh)] {
            let err = buffer
                .push("views", &json!({"page": "/", "views": 1}))
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Corrupt { .. }), "{who}: {text}");
            assert!(!err.is_transient(), "{who}: {text}");
            assert!(text.contains("store \"views\""), "{who}: {text}");
            assert!(text.contains(reason), "{who}: {reason:?} in {text}");
        }
        let err = fresh.coalesce_rules("views").await.unwrap_err();
        assert!(err.to_string().contains("store \"views\""), "{err}");
        assert!(fresh.all_coalesce_rules().await.unwrap().is_empty());
        assert_eq!(server.all_keys(), keys_before, "nothing was merged");
    }
    let err = "avg".parse::<MergeRule>().unwrap_err();
    assert!(err.contains("unknown rule \"avg\""), "{err}");
    // Rules put right: pushes merge again, also for the producer that saw the junk.
    let _: () = redis::cmd("HSET")
        .arg(&rules_key)
        .arg("views")
        .arg(r#"{"key":"page","fields":{"views":"sum"}}"#)
        .query(&mut conn)
        .unwrap();
    for _ in 0..2 {
        cached
            .push("views", &json!({"page": "/", "views": 2}))
            .await
            .unwrap();
    }
    let rows = drain_rows(&cached, "views", "page").await;
    assert_eq!(rows["\"/\""]["views"], json!(4));
}

/// Four tasks of one producer merging while Redis is frozen (SIGSTOP), so their pushes go in
/// group commits: pushes time out with an error that says the outcome is unknown (a group's
/// timeout is each member's answer); once Redis runs again (SIGCONT), every push is applied
/// whole or not at all (each adds 1 to three entities, so their sums stay equal), and the
/// sums are at least the acknowledged pushes and at most those plus the unknown ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_into_a_frozen_redis_time_out_unknown_and_are_never_half_applied() {
    let server = RedisServer::start();
    let config = server
        .config()
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300));
    let buffer = buffer_core::Buffer::connect(config).await.unwrap();
    buffer
        .set_coalesce("frozen", &CoalesceRules::new("k").with("n", MergeRule::Sum))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (buffer, stop) = (buffer.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acknowledged, mut unknown) = (0u64, 0u64);
                let records: Vec<_> = ["a", "b", "c"]
                    .iter()
                    .map(|k| json!({"k": k, "n": 1}))
                    .collect();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match buffer.push_many("frozen", &records).await {
                        Ok(_) => acknowledged += 1,
                        Err(err) if err.is_outcome_unknown() => unknown += 1,
                        Err(err) => {
                            panic!("a push failed other than with an unknown outcome: {err}")
                        }
                    }
                }
                (acknowledged, unknown)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("CONT");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut acknowledged, mut unknown) = (0, 0);
    for producer in producers {
        let (a, u) = producer.await.unwrap();
        acknowledged += a;
        unknown += u;
    }
    assert!(unknown >= 1, "no push met the frozen Redis");
    assert!(acknowledged >= 2, "pushes before and after: {acknowledged}");
    let rows = drain_rows(&buffer, "frozen", "k").await;
    let sums: Vec<u64> = ["\"a\"", "\"b\"", "\"c\""]
        .iter()
        .map(|k| rows[*k]["n"].as_u64().unwrap())
        .collect();
    assert!(
        sums.iter().all(|sum| *sum == sums[0]),
        "a push was half-applied: {sums:?}"
    );
    assert!(
        (acknowledged..=acknowledged + unknown).contains(&sums[0]),
        "sum {} outside [{acknowledged}, {}]",
        sums[0],
        acknowledged + unknown
    );
    assert_eq!(rows["\"a\""]["_writes"].as_u64(), Some(sums[0]));
}

/// Merge scripts run (EVALSHA, or EVAL where a script was not loaded yet) on `server`.
fn merge_scripts_run(server: &RedisServer) -> u64 {
    let counts = command_counts(server);
    counts.get("evalsha").copied().unwrap_or(0) + counts.get("eval").copied().unwrap_or(0)
}

/// Holds every write (scripts included) of `server` for `ms` milliseconds, so the merge script
/// a producer sends next stays in flight that long and the pushes after it wait for it.
fn pause_writes(server: &RedisServer, ms: u64) {
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query::<()>(&mut server.conn())
        .expect("CLIENT PAUSE");
}

/// Bytes of commands Redis has read but not run yet (every client's `qbuf` but this one's):
/// what was sent behind a command held by `CLIENT PAUSE`.
fn queued_bytes(server: &RedisServer) -> u64 {
    server
        .clients()
        .iter()
        .filter(|client| client.get("cmd").is_none_or(|cmd| cmd != "client|list"))
        .filter_map(|client| client.get("qbuf")?.parse::<u64>().ok())
        .sum()
}

/// Spawns one push per record list, `first` at once and the others while it is held in Redis,
/// and returns every push's result in order (`first`'s first), with the bytes Redis held
/// unread behind it (`queued_bytes`) once the others were pushed.
async fn pushes_behind_one_in_flight(
    buffer: &buffer_core::Buffer,
    server: &RedisServer,
    store: &'static str,
    first: Vec<serde_json::Value>,
    others: Vec<Vec<serde_json::Value>>,
) -> (Vec<Result<buffer_core::PushReceipt, Error>>, u64) {
    pause_writes(server, 800);
    let spawn = |records: Vec<serde_json::Value>| {
        let buffer = buffer.clone();
        tokio::spawn(async move { buffer.push_many(store, &records).await })
    };
    let mut tasks = vec![spawn(first)];
    tokio::time::sleep(Duration::from_millis(150)).await;
    tasks.extend(others.into_iter().map(spawn));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let queued = queued_bytes(server);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    (results, queued)
}

/// Pushes that arrive while a merge script of this producer is in flight for the store wait
/// for it and are then sent as one script, their records merged by entity first: the rows are
/// those of every push applied one by one, and a group holds at most
/// `coalesce_group_entities` entities (a push is never split).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_waiting_for_a_merge_in_flight_are_sent_as_one_script() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer.set_coalesce("views", &page_views()).await.unwrap();
    // Rules read and the script loaded before Redis holds writes.
    buffer
        .push("views", &json!({"page": "/warm"}))
        .await
        .unwrap();
    let push = |i: i64| -> Vec<serde_json::Value> {
        (0..10)
            .map(|j| {
                json!({"page": format!("/{}", (i + j) % 5), "views": i * 10 + j + 1,
                    "last_seen": 1000 - (i * 7 + j * 13) % 50, "referrers": [format!("r{}", j % 3)]})
            })
            .collect()
    };
    let before = merge_scripts_run(&server);
    let (results, queued) = pushes_behind_one_in_flight(
        &buffer,
        &server,
        "views",
        push(0),
        (1..20).map(push).collect(),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(queued, 0, "nothing is sent while the group forms");
    assert_eq!(
        merge_scripts_run(&server) - before,
        2,
        "one script for the first push, one for the 19 that waited for it"
    );
    let mut expected: std::collections::BTreeMap<String, (i64, i64, u64)> = Default::default();
    for record in (0..20).flat_map(push) {
        let e = expected
            .entry(record["page"].to_string())
            .or_insert((0, i64::MIN, 0));
        e.0 += record["views"].as_i64().unwrap();
        e.1 = e.1.max(record["last_seen"].as_i64().unwrap());
        e.2 += 1;
    }
    let rows = drain_rows(&buffer, "views", "page").await;
    assert_eq!(rows.len(), 6, "{rows:?}");
    for (page, (views, last_seen, writes)) in expected {
        let row = &rows[&page];
        assert_eq!(row["views"], json!(views), "{row}");
        assert_eq!(row["last_seen"], json!(last_seen), "{row}");
        assert_eq!(row["_writes"], json!(writes), "{row}");
        // Elements in first-seen order, which depends on the order the tasks' pushes arrived.
        let mut referrers: Vec<&str> = row["referrers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        referrers.sort_unstable();
        assert_eq!(referrers, ["r0", "r1", "r2"], "{row}");
    }

    // At most 10 entities a group: 19 pushes of 5 new entities each go 2 by 2, and a full
    // group is sent at once, behind the script in flight rather than after it.
    let capped = buffer_core::Buffer::connect(server.config().coalesce_group_entities(10))
        .await
        .unwrap();
    capped.set_coalesce("capped", &page_views()).await.unwrap();
    capped
        .push("capped", &json!({"page": "/warm"}))
        .await
        .unwrap();
    let push = |i: i64| -> Vec<serde_json::Value> {
        (0..5)
            .map(|j| json!({"page": format!("/{}", i * 5 + j), "views": 1}))
            .collect()
    };
    let before = merge_scripts_run(&server);
    let (results, queued) = pushes_behind_one_in_flight(
        &capped,
        &server,
        "capped",
        push(0),
        (1..20).map(push).collect(),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Nine full groups' scripts, each over 400 bytes (its 13 key names alone are).
    assert!(
        queued >= 9 * 400,
        "{queued} bytes sent behind the paused script"
    );
    assert_eq!(merge_scripts_run(&server) - before, 1 + 10);
    let rows = drain_rows(&capped, "capped", "page").await;
    assert_eq!(rows.len(), 101);
    assert!(rows.values().all(|row| row["_writes"] == json!(1)));
}

/// A group Redis refuses (a sum that would leave i64, a limit) is sent again push by push, so
/// each push gets its own answer: the push Redis refuses is refused alone, naming its record,
/// and every other push of the group is applied; a limit admits the pushes that fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_redis_refuses_is_sent_again_push_by_push() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let rules = CoalesceRules::new("id").with("n", MergeRule::Sum);
    buffer.set_coalesce("counts", &rules).await.unwrap();
    buffer
        .push("counts", &json!({"id": 1, "n": i64::MAX - 1}))
        .await
        .unwrap();
    let others = (0..10)
        .map(|i| {
            if i == 4 {
                vec![json!({"id": 3, "n": 1}), json!({"id": 1, "n": 5})]
            } else {
                vec![json!({"id": 2, "n": 1})]
            }
        })
        .collect();
    let before = merge_scripts_run(&server);
    let (results, _) = pushes_behind_one_in_flight(
        &buffer,
        &server,
        "counts",
        vec![json!({"id": 2, "n": 1})],
        others,
    )
    .await;
    for (i, result) in results.iter().enumerate() {
        if i == 5 {
            match result {
                Err(Error::CoalesceRecordRefused {
                    index: 1,
                    field,
                    rule,
                    reason,
                    ..
                }) if field == "n" && rule == "sum" && reason.contains("overflows") => {}
                other => panic!("the overflowing push: {other:?}"),
            }
        } else {
            assert!(result.is_ok(), "push {i}: {result:?}");
        }
    }
    // The first push, the group (refused), then each of the 10 alone.
    assert_eq!(merge_scripts_run(&server) - before, 1 + 1 + 10);
    let rows = drain_rows(&buffer, "counts", "id").await;
    assert_eq!(rows.len(), 2, "nothing of the refused push: {rows:?}");
    assert_eq!(rows["1"]["n"], json!(i64::MAX - 1));
    assert_eq!(rows["1"]["_writes"], json!(1));
    assert_eq!(rows["2"]["n"], json!(10));
    assert_eq!(rows["2"]["_writes"], json!(10));

    // At most 12 entities: after the first push's 2, five pushes of 3 new entities each make
    // a group of 15 records that does not fit; alone, three fit and two are refused.
    buffer
        .set_limits(
            "counts",
            buffer_core::StoreLimits {
                max_records: Some(12),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let push = |i: i64| -> Vec<serde_json::Value> {
        (0..3)
            .map(|j| json!({"id": 100 + i * 3 + j, "n": 1}))
            .collect()
    };
    let (results, _) = pushes_behind_one_in_flight(
        &buffer,
        &server,
        "counts",
        vec![json!({"id": 1, "n": 1}), json!({"id": 2, "n": 1})],
        (0..5).map(push).collect(),
    )
    .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let refused = results[1..]
        .iter()
        .filter(|result| match result {
            Err(err) => {
                assert!(err.is_backpressure(), "{err}");
                true
            }
            Ok(_) => false,
        })
        .count();
    assert_eq!(refused, 2, "{results:?}");
    let rows = drain_rows(&buffer, "counts", "id").await;
    assert_eq!(rows.len(), 2 + 3 * 3);
}

/// Property: merging a push's records by entity before sending them (what a group commit
/// sends) gives the rows, or the refusal, that sending every record as its own entry gives:
/// sums of integers of any size (runs that overflow included) and of floats, maxima and
/// minima mixing small and long integers, floats and ties, first and last values, unions of
/// scalars and arrays.
#[test]
fn merging_a_pushs_records_by_entity_first_gives_the_same_rows_and_refusals() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let (folded, one_by_one) = runtime.block_on(async {
        let folded = server.buffer().await;
        let one_by_one = buffer_core::Buffer::connect(server.config().coalesce_group_entities(0))
            .await
            .unwrap();
        (folded, one_by_one)
    });
    let rules = CoalesceRules::new("e")
        .with("s", MergeRule::Sum)
        .with("f", MergeRule::Sum)
        .with("hi", MergeRule::Max)
        .with("lo", MergeRule::Min)
        .with("a", MergeRule::First)
        .with("u", MergeRule::Union);
    for store in ["folded", "one_by_one"] {
        runtime
            .block_on(folded.set_coalesce(store, &rules))
            .unwrap();
    }
    let sum = prop_oneof![
        4 => -3i64..4,
        1 => (i64::MAX / 3)..(i64::MAX / 2),
        1 => (i64::MIN / 2)..(i64::MIN / 3),
        1 => 0i64..1_000_000_000_000_000,
    ]
    .prop_map(|n| json!(n));
    // Exact binary fractions: their float sums do not depend on the order of the additions.
    let float = prop_oneof![Just(0.25), Just(1.5), Just(-0.75)].prop_map(|x| json!(x));
    let extreme = prop_oneof![
        (-5i64..5).prop_map(|n| json!(n)),
        (-5i64..5).prop_map(|n| json!(n as f64)),
        (-5i64..5).prop_map(|n| json!(n as f64 + 0.5)),
        (0i64..3).prop_map(|n| json!((1i64 << 55) + n)),
        (0i64..3).prop_map(|n| json!(-(1i64 << 55) - n)),
    ];
    let union = prop_oneof![
        prop_oneof![Just("x"), Just("y"), Just(""), Just("z")].prop_map(|s| json!(s)),
        proptest::collection::vec(prop_oneof![Just(json!(1)), Just(json!("x"))], 0..3)
            .prop_map(|v| json!(v)),
    ];
    let record = (
        0u8..3,
        proptest::option::of(sum),
        proptest::option::of(float),
        proptest::option::of(extreme.clone()),
        proptest::option::of(extreme),
        proptest::option::of(0u8..9),
        proptest::option::of(union),
        proptest::option::of(0u8..9),
    )
        .prop_map(|(e, s, f, hi, lo, a, u, z)| {
            let mut record = serde_json::Map::new();
            record.insert("e".into(), json!(e));
            for (name, value) in [
                ("s", s),
                ("f", f),
                ("hi", hi),
                ("lo", lo),
                ("a", a.map(|a| json!(a))),
                ("u", u),
                ("z", z.map(|z| json!(z))),
            ] {
                if let Some(value) = value {
                    record.insert(name.into(), value);
                }
            }
            serde_json::Value::Object(record)
        });
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(record, 1..16), |records| {
            runtime.block_on(async {
                let a = folded.push_many("folded", &records).await;
                let b = one_by_one.push_many("one_by_one", &records).await;
                let rows = |rows: std::collections::BTreeMap<String, serde_json::Value>| {
                    rows.into_values()
                        .map(|mut row| {
                            let row = row.as_object_mut().unwrap();
                            row.remove("_first_write");
                            row.remove("_last_write");
                            serde_json::Value::Object(row.clone())
                        })
                        .collect::<Vec<_>>()
                };
                let outcome = |result: Result<buffer_core::PushReceipt, Error>| match result {
                    Ok(receipt) => Ok(receipt.records),
                    Err(err) => Err(err.to_string()),
                };
                let (a, b) = (outcome(a), outcome(b));
                let (a_rows, b_rows) = match (&a, &b) {
                    (Ok(_), Ok(_)) => (
                        rows(drain_rows(&folded, "folded", "e").await),
                        rows(drain_rows(&one_by_one, "one_by_one", "e").await),
                    ),
                    _ => (Vec::new(), Vec::new()),
                };
                let a = a.map_err(|err| err.replace("\"folded\"", "\"one_by_one\""));
                if a == b && a_rows == b_rows {
                    Ok(())
                } else {
                    Err(TestCaseError::fail(format!(
                        "{records:?}: merged first {a:?} {a_rows:?}, one by one {b:?} {b_rows:?}"
                    )))
                }
            })
        })
        .unwrap();
}

/// A push waiting in a group whose sending task stops with its runtime (one `Buffer` used from
/// two runtimes, one shut down) fails at once with an error whose outcome is unknown, rather
/// than waiting for ever; its group was never sent, so nothing of it is applied, and the
/// store's next push starts a new group.
#[test]
fn a_push_whose_group_sender_stops_with_its_runtime_fails_with_an_unknown_outcome() {
    let runtime = |workers| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap()
    };
    let (main, other) = (runtime(2), runtime(1));
    let server = RedisServer::start();
    // Connected from `main`, so the connection outlives `other`.
    let buffer = main.block_on(server.buffer());
    let rules = CoalesceRules::new("k").with("n", MergeRule::Sum);
    main.block_on(async {
        buffer.set_coalesce("s", &rules).await.unwrap();
        buffer
            .push("s", &json!({"k": "warm", "n": 1}))
            .await
            .unwrap();
    });
    pause_writes(&server, 1500);
    // The first push, from `other`, starts the store's sending task there; its script waits
    // behind the pause.
    let first = buffer.clone();
    other.spawn(async move {
        let _ = first.push("s", &json!({"k": "a", "n": 1})).await;
    });
    std::thread::sleep(Duration::from_millis(200));
    // The second joins the group forming behind it.
    let second = buffer.clone();
    let waiting = main.spawn(async move { second.push("s", &json!({"k": "b", "n": 1})).await });
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    other.shutdown_background();
    let err = main
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), waiting).await })
        .expect("the waiting push is answered, not left waiting")
        .unwrap()
        .expect_err("the group's sender is gone");
    assert!(err.is_outcome_unknown(), "{err}");
    assert!(err.to_string().contains("group commit"), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "answered before the pause ended: {:?}",
        started.elapsed()
    );
    main.block_on(async {
        buffer.push("s", &json!({"k": "b", "n": 1})).await.unwrap();
        let rows = drain_rows(&buffer, "s", "k").await;
        assert_eq!(rows["\"b\""]["n"], json!(1), "{rows:?}");
        assert_eq!(rows["\"b\""]["_writes"], json!(1), "{rows:?}");
        // The first push's script was on the wire before its runtime stopped: applied once,
        // or not at all.
        assert!(
            rows.get("\"a\"").is_none_or(|row| row["n"] == json!(1)),
            "{rows:?}"
        );
    });
}

/// Redis killed (SIGKILL) while a group commit waits behind the merge script in flight (held
/// by `CLIENT PAUSE`): the push in flight fails with an unknown outcome, and the group, sent
/// after it to a dead server, fails too; after a restart from the AOF (`appendfsync always`)
/// none of them is in the rows, since neither script ran, and the producer's next pushes
/// merge again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_a_group_commit_fails_every_push_unknown_and_applies_none() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let buffer = server.buffer().await;
    let rules = CoalesceRules::new("k").with("n", MergeRule::Sum);
    buffer.set_coalesce("s", &rules).await.unwrap();
    buffer
        .push("s", &json!({"k": "warm", "n": 1}))
        .await
        .unwrap();
    pause_writes(&server, 10_000);
    let spawn = |records: Vec<serde_json::Value>| {
        let buffer = buffer.clone();
        tokio::spawn(async move { buffer.push_many("s", &records).await })
    };
    let mut pushes = vec![spawn(vec![json!({"k": "a", "n": 1})])];
    tokio::time::sleep(Duration::from_millis(150)).await;
    pushes
        .extend((0..5).map(|_| spawn(vec![json!({"k": "a", "n": 1}), json!({"k": "b", "n": 1})])));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    for (i, push) in pushes.into_iter().enumerate() {
        let err = push.await.unwrap().expect_err("Redis was killed under it");
        if i == 0 {
            assert!(err.is_outcome_unknown(), "{err}");
        }
    }
    server.restart();
    // The producer reconnects by itself; its first pushes may still meet the old connection.
    let mut attempts = 0;
    while let Err(err) = buffer.push("s", &json!({"k": "a", "n": 1})).await {
        attempts += 1;
        assert!(attempts < 20, "no push merged after the restart: {err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = drain_rows(&buffer, "s", "k").await;
    assert_eq!(rows["\"warm\""]["n"], json!(1), "{rows:?}");
    assert_eq!(rows["\"a\""]["n"], json!(1), "{rows:?}");
    assert_eq!(rows["\"a\""]["_writes"], json!(1), "{rows:?}");
    assert!(!rows.contains_key("\"b\""), "{rows:?}");
}
