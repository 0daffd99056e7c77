//! Property tests: arbitrary store names and JSON records either round-trip byte for byte
//! through push → persister → file, or are refused with a typed error that leaves Redis
//! untouched. Records are pushed both as `Value`s (`push`) and as JSON texts whose numbers
//! no `Value` can hold (`push_json`), with keys that serde_json once treated as special.

use buffer_core::{Buffer, Error, StoreName};
use buffer_persist::{PersistConfig, Persister, store_dir};
use buffer_tests::{RedisServer, file_lines, files_under};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

/// Object keys: anything, plus the keys serde_json's `arbitrary_precision` and `raw_value`
/// features treat as a number or raw text in disguise.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        1 => Just("$serde_json::private::Number".to_owned()),
        1 => Just("$serde_json::private::RawValue".to_owned()),
    ]
}

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
            prop::collection::vec((key(), inner), 0..6).prop_map(|entries| Value::Object(
                entries.into_iter().collect::<Map<String, Value>>()
            )),
        ]
    })
}

/// A JSON text as a tree whose numbers are kept as text, so it can hold numbers beyond any
/// `i64`, `u64` or `f64` (and duplicate keys), which a `Value` cannot.
#[derive(Clone, Debug)]
enum JsonText {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Array(Vec<JsonText>),
    Object(Vec<(String, JsonText)>),
}

impl JsonText {
    /// The text, with `gap` (JSON whitespace) between every two tokens.
    fn render(&self, gap: &str) -> String {
        let mut out = String::new();
        self.render_into(gap, &mut out);
        out
    }

    fn render_into(&self, gap: &str, out: &mut String) {
        let string = |s: &str| serde_json::to_string(s).unwrap();
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Number(n) => out.push_str(n),
            Self::Str(s) => out.push_str(&string(s)),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { gap } else { "," });
                    out.push_str(gap);
                    item.render_into(gap, out);
                }
                out.push_str(gap);
                out.push(']');
            }
            Self::Object(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    out.push_str(if i == 0 { gap } else { "," });
                    out.push_str(gap);
                    out.push_str(&string(key));
                    out.push_str(gap);
                    out.push(':');
                    out.push_str(gap);
                    value.render_into(gap, out);
                }
                out.push_str(gap);
                out.push('}');
            }
        }
    }
}

/// Numbers as written: machine-sized ones, and huge or precise ones (`1e400`, 40 digits).
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f).to_string()),
        "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,40})?([eE][+-]?[0-9]{1,4})?",
    ]
}

fn json_text() -> impl Strategy<Value = JsonText> {
    let leaf = prop_oneof![
        Just(JsonText::Null),
        any::<bool>().prop_map(JsonText::Bool),
        number_text().prop_map(JsonText::Number),
        any::<String>().prop_map(JsonText::Str),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(JsonText::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(JsonText::Object),
        ]
    })
}

/// The whitespace put between tokens of a pushed text (push_json must drop it all).
fn gap() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\r\n")]
}

/// Store names: hostile ones of every kind, and (weighted so that about half the cases
/// round-trip, not only get refused) plain ones, some with unicode.
fn store_name() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => "[./\\\\*?{}:%~ a-z]{0,12}",
        1 => prop::collection::vec(any::<char>(), 200..300)
            .prop_map(|chars| chars.into_iter().collect()),
        1 => Just(String::new()),
        1 => Just("a\0b".to_owned()),
        6 => "[a-z0-9_.é✓-]{1,24}",
    ]
}

/// A record to push: mostly an object (what a store takes), sometimes any JSON value.
fn record_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::collection::vec((key(), json_value()), 0..6)
            .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<String, Value>>())),
        1 => json_value(),
    ]
}

/// A record to push as text: mostly an object, sometimes any JSON text.
fn record_text() -> impl Strategy<Value = JsonText> {
    prop_oneof![
        3 => prop::collection::vec((key(), json_text()), 0..6).prop_map(JsonText::Object),
        1 => json_text(),
    ]
}

/// One record to push, and the line it must become in the file.
#[derive(Debug)]
enum Input {
    /// Pushed with `push`: the file holds `value.to_string()`.
    Value(Value),
    /// Pushed with `push_json`: the file holds `compact`, the same tokens without whitespace.
    Text {
        sent: String,
        compact: String,
        is_object: bool,
    },
}

impl Input {
    fn expected_line(&self) -> String {
        match self {
            Self::Value(value) => value.to_string(),
            Self::Text { compact, .. } => compact.clone(),
        }
    }

    fn is_object(&self) -> bool {
        match self {
            Self::Value(value) => value.is_object(),
            Self::Text { is_object, .. } => *is_object,
        }
    }
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
    let strategy = (store_name(), record_value(), record_text(), gap());
    // Each case is two pushes; how many round-tripped through a file and how many were
    // refused, so a run cannot pass on refusals alone.
    let round_trips = std::sync::atomic::AtomicU64::new(0);
    let refusals = std::sync::atomic::AtomicU64::new(0);
    let count = |round_tripped: bool| {
        let counter = if round_tripped {
            &round_trips
        } else {
            &refusals
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let outcome = runner.run(&strategy, |(name, value, text, gap)| {
        count(check_case(
            &server,
            &runtime,
            &buffer,
            &name,
            &Input::Value(value),
        )?);
        let text = Input::Text {
            sent: text.render(gap),
            compact: text.render(""),
            is_object: matches!(text, JsonText::Object(_)),
        };
        count(check_case(&server, &runtime, &buffer, &name, &text)?);
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let (round_trips, refusals) = (round_trips.into_inner(), refusals.into_inner());
    println!("{round_trips} pushes round-tripped through a file, {refusals} refused");
    assert!(
        round_trips >= 40 && refusals >= 10,
        "too few of either kind: {round_trips} round trips, {refusals} refusals"
    );
}

fn check_case(
    server: &RedisServer,
    runtime: &tokio::runtime::Runtime,
    buffer: &Buffer,
    name: &str,
    input: &Input,
) -> Result<bool, TestCaseError> {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("out");
    let bystander_line = r#"{"me":"bystander"}"#.to_owned();
    runtime
        .block_on(async {
            // A bystander store: whatever the name, it must come out untouched.
            buffer
                .push("bystander", &json!({"me": "bystander"}))
                .await
                .unwrap();
            let pushed = match input {
                Input::Value(value) => buffer.push(name, value).await,
                Input::Text { sent, .. } => buffer.push_json(name, &[sent]).await,
            };
            match pushed {
                Ok(receipt) => {
                    prop_assert!(input.is_object(), "a non-object was accepted");
                    prop_assert_eq!(receipt.records, 1);
                    let store = StoreName::new(name).unwrap();
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
                            file_lines(mine[0]),
                            vec![bystander_line.clone(), input.expected_line()]
                        );
                    } else {
                        prop_assert_eq!(mine.len(), 1);
                        prop_assert_eq!(
                            file_lines(mine[0]),
                            vec![input.expected_line()],
                            "byte-exact round trip"
                        );
                        let bystander = store_dir(&root, &StoreName::new("bystander").unwrap());
                        let theirs: Vec<_> = files
                            .iter()
                            .filter(|f| f.parent() == Some(bystander.as_path()))
                            .collect();
                        prop_assert_eq!(file_lines(theirs[0]), vec![bystander_line.clone()]);
                    }
                    Ok(true)
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
                    let name_ok = StoreName::new(name).is_ok();
                    prop_assert!(
                        !name_ok
                            || !input.is_object()
                            || matches!(err, Error::RecordTooLarge { .. }),
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
                    Ok(false)
                }
            }
        })
        .and_then(|round_tripped| {
            let keys: Vec<String> = server.all_keys();
            prop_assert!(keys.is_empty(), "left behind: {:?}", keys);
            Ok(round_tripped)
        })
}
