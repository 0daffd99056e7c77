//! The batch reader's page sockets (buffer-core's page_socket.rs, ARCHITECTURE.md "Reading a
//! batch"): pages are read on sockets of their own with the crate's own reply parser, and every
//! case that road cannot serve exactly is read on the general connection, with the same
//! records and the same errors.

use std::time::Duration;

use buffer_core::{Buffer, Page};
use buffer_tests::RedisServer;
use serde_json::{Value, json};

const HOLD: Duration = Duration::from_secs(60);

/// Records of every size up to several read buffers (64 KiB), some with multi-byte text, so a
/// reply arrives in many pieces and splits headers and records anywhere.
fn varied_records() -> Vec<Value> {
    (0..400)
        .map(|i| match i % 5 {
            0 => json!({"i": i}),
            1 => json!({"i": i, "text": "é✓🦀".repeat(i)}),
            2 => json!({"i": i, "blob": "x".repeat(70_000 + i)}),
            3 => json!({"i": i, "nested": {"a": [1, 2, {"b": null}]}, "s": "tab\tquote\"nl\n"}),
            _ => json!({"i": i, "n": -1.5e-7, "big": 12_345_678_901_234_567_u64}),
        })
        .collect()
}

/// Every page of a batch, read with `next_records`.
async fn read_all(buffer: &Buffer, store: &str) -> (Vec<Page>, buffer_core::LockedBatch) {
    let batch = buffer
        .prepare_to_persist(store, HOLD)
        .await
        .unwrap()
        .expect("a batch");
    let mut reader = buffer.reader(&batch);
    let mut pages = Vec::new();
    while let Some(page) = reader.next_records().await.unwrap() {
        pages.push(page);
    }
    (pages, batch)
}

/// The names and last commands of the server's clients, from `CLIENT LIST`.
fn clients(server: &RedisServer) -> Vec<(String, String)> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.conn())
        .unwrap();
    list.lines()
        .map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(&format!("{name}=")))
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("name"), field("cmd"))
        })
        .collect()
}

#[tokio::test]
async fn pages_are_read_on_a_page_socket_with_every_text_exactly_as_pushed() {
    let server = RedisServer::start();
    let buffer = Buffer::connect(server.config().page_bytes(300_000))
        .await
        .unwrap();
    let records = varied_records();
    let texts: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    for chunk in texts.chunks(37) {
        buffer.push_json("varied", chunk).await.unwrap();
    }
    let (pages, batch) = read_all(&buffer, "varied").await;
    assert!(pages.len() > 10, "{} pages", pages.len());
    let read: Vec<&str> = pages.iter().flat_map(Page::iter).collect();
    assert_eq!(read, texts);
    for page in &pages {
        let lines: String = page.iter().map(|text| format!("{text}\n")).collect();
        assert_eq!(page.as_lines(), lines);
        assert_eq!(page.text_bytes(), page.iter().map(str::len).sum::<usize>());
    }
    assert_eq!(
        batch.bytes,
        texts.iter().map(|t| t.len() as u64).sum::<u64>()
    );
    // The pages came over the page socket, not over the general connection.
    let clients = clients(&server);
    assert!(
        clients
            .iter()
            .any(|(name, cmd)| name == "buffer-page-reader" && cmd == "lrange"),
        "{clients:?}"
    );
    // `next_page` gives the same texts as Strings.
    let mut reader = buffer.reader(&batch);
    let mut strings = Vec::new();
    while let Some(page) = reader.next_page().await.unwrap() {
        strings.extend(page);
    }
    assert_eq!(strings, texts);
}

#[tokio::test]
async fn a_server_with_a_password_and_a_database_serves_the_page_socket() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret pass"]);
    let url = format!("redis://:s3cret%20pass@127.0.0.1:{}/3", server.port());
    let buffer = Buffer::connect(
        buffer_core::BufferConfig::new(url).response_timeout(Duration::from_secs(3)),
    )
    .await
    .unwrap();
    let records = varied_records();
    buffer.push_many("secret", &records).await.unwrap();
    let (pages, _batch) = read_all(&buffer, "secret").await;
    let read: Vec<Value> = pages
        .iter()
        .flat_map(Page::iter)
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();
    assert_eq!(read, records);
    let mut admin = redis::Client::open(format!(
        "redis://:s3cret%20pass@127.0.0.1:{}/0",
        server.port()
    ))
    .unwrap()
    .get_connection()
    .unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    assert!(
        list.lines()
            .any(|line| line.contains("name=buffer-page-reader") && line.contains(" db=3 ")),
        "{list}"
    );
}

#[tokio::test]
async fn a_record_that_is_not_utf8_fails_the_read_the_same_way_on_either_road() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer
        .push_many("broken", &[json!({"a": 1}), json!({"a": 2})])
        .await
        .unwrap();
    let batch = buffer
        .prepare_to_persist("broken", HOLD)
        .await
        .unwrap()
        .unwrap();
    // Someone (not this crate) overwrites a record with bytes that are not text.
    let records_key = server
        .all_keys()
        .into_iter()
        .find(|key| key.contains(&format!(":p:{}:", batch.id)) && key.ends_with(":records"))
        .expect("the batch's record list");
    let _: () = redis::cmd("LSET")
        .arg(&records_key)
        .arg(1)
        .arg(b"{\"a\":\xff}".as_slice())
        .query(&mut server.conn())
        .unwrap();
    let mut reader = buffer.reader(&batch);
    let err = reader.next_records().await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("read batch"), "{err}");
    // Nothing was taken: the batch is still there, whole.
    let again = buffer.batch_info(&batch.store, &batch.id).await.unwrap();
    assert_eq!(again.map(|b| b.records), Some(2));
}

#[tokio::test]
async fn an_error_reply_on_the_page_socket_is_the_same_error_as_on_the_main_connection() {
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    buffer
        .push_many("clobbered", &[json!({"a": 1}), json!({"a": 2})])
        .await
        .unwrap();
    let batch = buffer
        .prepare_to_persist("clobbered", HOLD)
        .await
        .unwrap()
        .unwrap();
    // Someone replaces the batch's record list with a string: LRANGE answers WRONGTYPE, and
    // the page is read again on the main connection, whose error the caller gets.
    let records_key = server
        .all_keys()
        .into_iter()
        .find(|key| key.contains(&format!(":p:{}:", batch.id)) && key.ends_with(":records"))
        .expect("the batch's record list");
    server.command(&["DEL", &records_key]);
    server.command(&["SET", &records_key, "not a list"]);
    let err = buffer
        .reader(&batch)
        .next_records()
        .await
        .expect_err("a string is no page");
    assert!(err.is_wrong_type(), "{err}");
    assert!(err.to_string().contains("read batch"), "{err}");
}
