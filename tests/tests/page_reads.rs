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
    server
        .clients()
        .into_iter()
        .map(|mut client| {
            let mut field = |name: &str| client.remove(name).unwrap_or_default();
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
    // The general connection's road gives the same pages, record for record.
    let general = Buffer::connect(server.config().page_bytes(300_000).direct_page_reads(false))
        .await
        .unwrap();
    let mut reader = general.reader(&batch);
    let mut general_pages = Vec::new();
    while let Some(page) = reader.next_records().await.unwrap() {
        general_pages.push(page.iter().map(str::to_owned).collect::<Vec<_>>());
    }
    let direct_pages: Vec<Vec<String>> = pages
        .iter()
        .map(|page| page.iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(general_pages, direct_pages);
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
    // The page socket met the bytes first (and handed the page over), and the general
    // connection alone fails the same way.
    assert!(
        clients(&server)
            .iter()
            .any(|(name, cmd)| name == "buffer-page-reader" && cmd == "lrange"),
        "the page socket did not read"
    );
    let general = Buffer::connect(server.config().direct_page_reads(false))
        .await
        .unwrap();
    let general_err = general.reader(&batch).next_records().await.unwrap_err();
    assert_eq!(general_err.to_string(), err.to_string());
    assert_eq!(general_err.is_transient(), err.is_transient());
    // Nothing was taken: the batch is still there, whole.
    let again = buffer.batch_info(&batch.store, &batch.id).await.unwrap();
    assert_eq!(again.map(|b| b.records), Some(2));
}

#[tokio::test]
async fn an_error_reply_on_the_page_socket_is_the_same_error_as_on_the_main_connection() {
    let server = RedisServer::start();
    // Pages of one record, so the reader has read a page (and sized the batch) before the
    // list is clobbered: the next page's LRANGE is the first command that meets it.
    let direct = Buffer::connect(server.config().page_size(1)).await.unwrap();
    let general = Buffer::connect(server.config().page_size(1).direct_page_reads(false))
        .await
        .unwrap();
    direct
        .push_many("clobbered", &[json!({"a": 1}), json!({"a": 2})])
        .await
        .unwrap();
    let batch = direct
        .prepare_to_persist("clobbered", HOLD)
        .await
        .unwrap()
        .unwrap();
    let mut on_page_socket = direct.reader(&batch);
    let mut on_general = general.reader(&batch);
    assert_eq!(
        on_page_socket.next_records().await.unwrap().unwrap().len(),
        1
    );
    assert_eq!(on_general.next_records().await.unwrap().unwrap().len(), 1);
    // Someone replaces the batch's record list with a string: LRANGE answers WRONGTYPE, and
    // the page is read again on the main connection, whose error the caller gets.
    let records_key = server
        .all_keys()
        .into_iter()
        .find(|key| key.contains(&format!(":p:{}:", batch.id)) && key.ends_with(":records"))
        .expect("the batch's record list");
    server.command(&["DEL", &records_key]);
    server.command(&["SET", &records_key, "not a list"]);
    server.command(&["CONFIG", "RESETSTAT"]);
    let err = on_page_socket
        .next_records()
        .await
        .expect_err("a string is no page");
    assert!(err.is_wrong_type(), "{err}");
    assert!(err.to_string().contains("read batch"), "{err}");
    // Two WRONGTYPE replies: the page socket's LRANGE, then the general connection's.
    assert_eq!(wrongtype_replies(&server), 2);
    let general_err = on_general
        .next_records()
        .await
        .expect_err("a string is no page");
    assert_eq!(general_err.to_string(), err.to_string());
    assert!(general_err.is_wrong_type(), "{general_err}");
    assert_eq!(wrongtype_replies(&server), 3, "the general road asks once");
}

/// How many WRONGTYPE error replies the server sent since its stats were reset.
fn wrongtype_replies(server: &RedisServer) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("errorstats")
        .query(&mut server.conn())
        .unwrap();
    stats
        .lines()
        .find_map(|line| line.strip_prefix("errorstat_WRONGTYPE:count="))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}
