//! Property tests: arbitrary store names and JSON values either round-trip exactly through
//! push → persister → file, or are refused with a typed error that leaves Redis untouched.

use buffer_core::{Buffer, Error, StoreName};
use buffer_persist::{PersistConfig, Persister, store_dir};
use buffer_tests::{RedisServer, file_records, files_under};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC*".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6).prop_map(
                |entries| Value::Object(entries.into_iter().collect::<Map<String, Value>>())
            ),
        ]
    })
}

fn store_name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[./\\\\*?{}:%~ a-z]{0,12}",
        prop::collection::vec(any::<char>(), 200..300)
            .prop_map(|chars| chars.into_iter().collect()),
        Just(String::new()),
        Just("a\0b".to_owned()),
    ]
}

/// One server and runtime for every case (starting a server per case would dominate), owned
/// by the test so the server is stopped when it ends (a `static` one would outlive the test
/// process's last drop and leak the redis-server).
#[test]
fn names_and_values_round_trip_or_are_refused() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let buffer = runtime
        .block_on(Buffer::connect(server.config().max_record_bytes(64 * 1024)))
        .unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&(store_name(), json_value()), |(name, value)| {
        check_case(&server, &runtime, &buffer, name, value)
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

fn check_case(
    server: &RedisServer,
    runtime: &tokio::runtime::Runtime,
    buffer: &Buffer,
    name: String,
    value: Value,
) -> Result<(), TestCaseError> {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("out");
    runtime.block_on(async {
        // A bystander store: whatever the name, it must come out untouched.
        buffer
            .push("bystander", &json!({"me": "bystander"}))
            .await
            .unwrap();
        match buffer.push(name.as_str(), &value).await {
            Ok(receipt) => {
                prop_assert!(value.is_object(), "a non-object was accepted");
                prop_assert_eq!(receipt.records, 1);
                let store = StoreName::new(name.clone()).unwrap();
                let report = Persister::new(buffer.clone(), PersistConfig::new(&root))
                    .drain()
                    .await
                    .unwrap();
                prop_assert!(report.failures.is_empty(), "{:?}", report.failures);
                let files: Vec<_> = files_under(&root)
                    .into_iter()
                    .filter(|p| !p.ends_with(buffer_persist::MARKER_FILE))
                    .collect();
                prop_assert!(files.iter().all(|f| f.starts_with(&root)));
                let mine: Vec<_> = files
                    .iter()
                    .filter(|f| f.parent() == Some(store_dir(&root, &store).as_path()))
                    .collect();
                if name == "bystander" {
                    prop_assert_eq!(
                        file_records(mine[0]),
                        vec![json!({"me": "bystander"}), value.clone()]
                    );
                } else {
                    prop_assert_eq!(mine.len(), 1);
                    prop_assert_eq!(
                        file_records(mine[0]),
                        vec![value.clone()],
                        "exact round trip"
                    );
                    let bystander = store_dir(&root, &StoreName::new("bystander").unwrap());
                    let theirs: Vec<_> = files
                        .iter()
                        .filter(|f| f.parent() == Some(bystander.as_path()))
                        .collect();
                    prop_assert_eq!(file_records(theirs[0]), vec![json!({"me": "bystander"})]);
                }
            }
            Err(err) => {
                prop_assert!(
                    matches!(
                        err,
                        Error::InvalidStoreName { .. }
                            | Error::InvalidRecord { .. }
                            | Error::RecordTooLarge { .. }
                    ),
                    "untyped refusal: {err:?}"
                );
                let name_ok = StoreName::new(name.clone()).is_ok();
                prop_assert!(
                    !name_ok || !value.is_object() || matches!(err, Error::RecordTooLarge { .. }),
                    "{err}"
                );
                // Nothing of the refused push reached Redis: only the bystander is there.
                let stores = buffer.stores().await.unwrap();
                prop_assert_eq!(stores.len(), 1);
                prop_assert_eq!(stores[0].records, 1);
                Persister::new(buffer.clone(), PersistConfig::new(&root))
                    .drain()
                    .await
                    .unwrap();
            }
        }
        Ok(())
    })?;
    let keys: Vec<String> = server.all_keys();
    prop_assert!(keys.is_empty(), "left behind: {:?}", keys);
    Ok(())
}
