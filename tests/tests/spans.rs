//! The library's tracing spans, in a test binary of their own: a subscriber set for one thread
//! meets tracing's global callsite interest cache, and a test of another binary registering a
//! callsite at the same moment (with no subscriber) could cache "never" for it. Alone in its
//! process, this test cannot race with one.

use std::sync::Arc;
use std::time::Duration;

use buffer_tests::RedisServer;
use serde_json::{Value, json};

/// A `MakeWriter` collecting everything written into one shared buffer.
#[derive(Clone, Default)]
struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Issue 13: push, lock, prepare, read page and empty each run in a debug-level span named
/// after the operation and carrying the store (and the batch where there is one).
#[tokio::test(flavor = "current_thread")]
async fn library_operations_open_tracing_spans_with_their_store() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(log.clone())
        .finish();
    // This thread only (the runtime is current-thread, so every poll of these futures).
    let _default = tracing::subscriber::set_default(subscriber);
    // Tests of this binary run beside this one with no subscriber: a callsite they register
    // while this subscriber is being added may have cached "never" without asking it.
    // Recompute every callsite's interest now that it is there.
    tracing::callsite::rebuild_interest_cache();
    buffer
        .push_many("traced", &[json!({"a": 1}), json!({"a": 2})])
        .await
        .unwrap();
    let batch = buffer
        .prepare_to_persist("traced", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let id = batch.id.to_string();
    let mut reader = buffer.reader(&batch);
    while reader.next_page().await.unwrap().is_some() {}
    buffer.empty(batch).await.unwrap();
    drop(_default);

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let closed: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["fields"]["message"] == "close")
        .collect();
    let span = |name: &str| {
        closed
            .iter()
            .find(|line| line["span"]["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span in:\n{text}"))["span"]
            .clone()
    };
    assert_eq!(span("push")["store"], "traced");
    assert_eq!(span("push")["records"], 2);
    assert_eq!(span("lock")["store"], "traced");
    assert_eq!(span("prepare")["store"], "traced");
    assert_eq!(span("read_page")["store"], "traced");
    assert_eq!(span("read_page")["batch"], id.as_str());
    assert_eq!(span("empty_batch")["store"], "traced");
}
