//! Coalescing stores against real Redis: the rules round-trip through the library, and are
//! changed only while the store holds no records, live or prepared (nothing is changed when
//! refused).

use std::time::Duration;

use buffer_core::{CoalesceRules, Error, MergeRule};
use buffer_tests::RedisServer;
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
