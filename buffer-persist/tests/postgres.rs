//! PostgreSQL as an output, against a real private PostgreSQL server and a real Redis: the
//! `buffer-persist` binary drains into tables, exactly once (a ledger row per batch in the
//! same transaction), and every fault and data error is a failure record that loses nothing.

use std::collections::BTreeSet;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buffer_core::{Buffer, CoalesceRules, MergeRule};
use buffer_persist::{PersistConfig, Persister, PostgresStats};
use buffer_tests::postgres::{PostgresServer, TestCertificates, TlsPolicy};
use buffer_tests::{
    CommandWithin, KillOnDrop, Ledger, RedisServer, eventually, process_state, produce,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_buffer-persist");

/// `buffer-persist drain` into `url` with `extra` arguments (a 5 s lock TTL and a 10 s
/// statement timeout unless `extra` sets them), to be run.
fn drain_command(redis: &RedisServer, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(["drain", "--redis", &redis.url(), "--out", url]);
    if !extra.contains(&"--lock-ttl") {
        command.args(["--lock-ttl", "5s"]);
    }
    if !extra.contains(&"--statement-timeout") {
        command.args(["--statement-timeout", "10s"]);
    }
    command
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// `buffer-persist drain` into `url` with `extra` arguments; returns its output (a drain
/// still running after the suites' `COMMAND_DEADLINE` is killed and fails its test).
fn drain(redis: &RedisServer, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    drain_command(redis, url, extra, env).output_in_time()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn push_ids(buffer: &Buffer, store: &str, ids: std::ops::Range<u64>) {
    for id in ids {
        buffer
            .push(store, &json!({"id": id, "name": format!("n{id}")}))
            .await
            .unwrap();
    }
}

/// The failure records in Redis, as (store, last error).
async fn failures(buffer: &Buffer) -> Vec<(String, String)> {
    buffer
        .failures()
        .await
        .unwrap()
        .into_iter()
        .map(|work| (work.store.to_string(), work.record.last_error))
        .collect()
}

#[test]
fn private_server_keeps_commits_across_an_immediate_stop_and_is_gone_on_drop() {
    let mut server = PostgresServer::start();
    assert_eq!(
        server.query("SELECT current_setting('server_version_num')::int >= 150000"),
        "t"
    );

    // The unix socket is in the server's private directory.
    let socket = server
        .socket_dir()
        .join(format!(".s.PGSQL.{}", server.port()));
    assert!(socket.exists(), "no socket at {}", socket.display());

    server.query("CREATE TABLE \"we;ird\"\"name\" (n int)");
    server.query("INSERT INTO \"we;ird\"\"name\" SELECT generate_series(1, 100)");

    // An immediate stop (SIGQUIT, like a crash) and a restart keep what was committed.
    let first_pid = server.pid().unwrap();
    server.stop_immediately();
    assert!(server.pid().is_none());
    let down = server.try_query("SELECT 1").unwrap_err();
    assert!(
        down.contains("Connection refused") || down.contains("could not connect"),
        "a stopped server still answered: {down}"
    );
    server.restart();
    assert_ne!(server.pid().unwrap(), first_pid);
    assert_eq!(
        server.query("SELECT count(*), sum(n) FROM \"we;ird\"\"name\""),
        "100|5050"
    );

    // A query error is reported with PostgreSQL's message.
    let err = server.try_query("SELECT * FROM missing_table").unwrap_err();
    assert!(
        err.contains("relation \"missing_table\" does not exist"),
        "{err}"
    );

    // Dropped: the postmaster is gone and its directory removed.
    let pid = server.pid().unwrap();
    let dir = server.socket_dir().to_path_buf();
    drop(server);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "postgres {pid} still runs after drop"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn append_batch_lands_once() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query(
        "CREATE TABLE events (id bigint PRIMARY KEY, name text, at timestamptz, \
         score numeric, ok boolean, tags jsonb, note text DEFAULT 'none', _rest jsonb)",
    );
    let buffer = redis.buffer().await;
    push_ids(&buffer, "events", 0..500).await;
    buffer
        .push(
            "events",
            &json!({"id": 500, "name": "tab\there\nnewline \\ back", "at": "2026-01-02T03:04:05Z",
                    "score": 12.5, "ok": true, "tags": ["a", {"b": 1}], "extra": {"k": "v"}}),
        )
        .await
        .unwrap();

    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        pg.query("SELECT count(*), sum(id) FROM events"),
        "501|125250"
    );
    assert_eq!(
        pg.query(
            "SELECT name, at = '2026-01-02T03:04:05Z', score, ok, tags::text, note, _rest::text \
             FROM events WHERE id = 500"
        ),
        "tab\there\nnewline \\ back|t|12.5|t|[\"a\", {\"b\": 1}]|none|{\"extra\": {\"k\": \"v\"}}"
    );
    // A key no record has takes the column default; a row without `_rest` keys has NULL there.
    assert_eq!(
        pg.query("SELECT note, _rest IS NULL FROM events WHERE id = 7"),
        "none|t"
    );
    assert_eq!(
        pg.query("SELECT store, rows FROM buffer_batches"),
        "events|501"
    );
    assert!(
        redis.all_keys().iter().all(|key| !key.contains("events")),
        "{:?}",
        redis.all_keys()
    );
}

#[tokio::test]
async fn a_kill_between_commit_and_the_redis_delete_is_a_ledger_hit_not_applied_again() {
    buffer_tests::require_failpoints!();
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE s (id bigint, name text)");
    let buffer = redis.buffer().await;
    push_ids(&buffer, "s", 0..300).await;

    // Aborts right after COMMIT: the rows and the ledger row are in, the batch still in Redis.
    let crashed = drain(
        &redis,
        &pg.url(),
        &[],
        &[("BUFFER_FAILPOINT", "after-commit")],
    );
    assert!(!crashed.status.success());
    assert!(
        stderr(&crashed).contains("failpoint after-commit"),
        "{}",
        stderr(&crashed)
    );
    assert_eq!(pg.query("SELECT count(*) FROM s"), "300");
    assert_eq!(buffer.get_prepared().await.unwrap().len(), 1);

    let again = drain(&redis, &pg.url(), &[], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already applied (found in the ledger)"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        pg.query("SELECT count(*), count(DISTINCT id) FROM s"),
        "300|300"
    );
    assert_eq!(pg.query("SELECT count(*) FROM buffer_batches"), "1");
    assert!(buffer.get_prepared().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_kill_before_commit_applies_nothing_and_the_retry_applies_once() {
    buffer_tests::require_failpoints!();
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE s (id bigint, name text)");
    let buffer = redis.buffer().await;
    push_ids(&buffer, "s", 0..200).await;
    let crashed = drain(
        &redis,
        &pg.url(),
        &[],
        &[("BUFFER_FAILPOINT", "before-commit")],
    );
    assert!(!crashed.status.success());
    assert_eq!(pg.query("SELECT count(*) FROM s"), "0");
    assert_eq!(pg.query("SELECT count(*) FROM buffer_batches"), "0");
    let again = drain(&redis, &pg.url(), &[], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        pg.query("SELECT count(*), count(DISTINCT id) FROM s"),
        "200|200"
    );
    assert_eq!(pg.query("SELECT count(*) FROM buffer_batches"), "1");
}

#[tokio::test]
async fn hostile_store_names_land_in_their_own_tables_or_fail_alone() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE victims (n int); INSERT INTO victims VALUES (1)");
    let buffer = redis.buffer().await;
    let long = "x".repeat(200);
    let hostile = [
        "a\"b",
        "x\"; DROP TABLE victims; --",
        "ünïcødé ☃",
        "semi;colon",
    ];
    for store in hostile.iter().copied().chain([long.as_str()]) {
        push_ids(&buffer, store, 0..5).await;
    }
    let output = drain(&redis, &pg.url(), &["--create-tables"], &[]);
    assert!(
        !output.status.success(),
        "the 200-byte store cannot succeed"
    );
    for store in hostile {
        let table = format!("\"{}\"", store.replace('"', "\"\""));
        assert_eq!(
            pg.query(&format!("SELECT count(*), sum(id) FROM {table}")),
            "5|10",
            "store {store:?}"
        );
    }
    assert_eq!(pg.query("SELECT n FROM victims"), "1");
    let failed = failures(&buffer).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, long);
    assert!(
        failed[0]
            .1
            .contains("is 200 bytes long; PostgreSQL identifiers hold at most 63"),
        "{}",
        failed[0].1
    );
    // Nothing of it is lost: its 5 records wait in Redis.
    let prepared = buffer.get_prepared().await.unwrap();
    assert_eq!(prepared.len(), 1);
    assert_eq!(records_in_redis(&buffer).await, 5);
}

#[tokio::test]
async fn a_data_error_is_a_failure_record_with_its_sqlstate_and_row_and_loses_nothing() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE m (id bigint, name text)");
    pg.query("CREATE TABLE c (id bigint CONSTRAINT id_not_negative CHECK (id >= 0), name text)");
    let buffer = redis.buffer().await;
    // A type mismatch in store m, a constraint violation in store c; store ok is fine.
    push_ids(&buffer, "m", 0..3).await;
    buffer
        .push("m", &json!({"id": "seven", "name": "bad"}))
        .await
        .unwrap();
    push_ids(&buffer, "c", 0..2).await;
    buffer
        .push("c", &json!({"id": -1, "name": "negative"}))
        .await
        .unwrap();
    pg.query("CREATE TABLE ok (id bigint, name text)");
    push_ids(&buffer, "ok", 0..4).await;
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(!output.status.success());
    let failed = failures(&buffer).await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let error_of = |store: &str| {
        failed
            .iter()
            .find(|(name, _)| name == store)
            .map(|(_, error)| error.clone())
            .unwrap()
    };
    let mismatch = error_of("m");
    assert!(mismatch.contains("SQLSTATE 22P02"), "{mismatch}");
    assert!(
        mismatch.contains("line 4, column id: \"seven\""),
        "{mismatch}"
    );
    let violation = error_of("c");
    assert!(violation.contains("SQLSTATE 23514"), "{violation}");
    assert!(
        violation.contains("violates check constraint \"id_not_negative\""),
        "{violation}"
    );
    assert!(
        violation.contains("Failing row contains (-1, negative)"),
        "{violation}"
    );
    assert_eq!(pg.query("SELECT count(*) FROM m"), "0");
    assert_eq!(pg.query("SELECT count(*) FROM c"), "0");
    // The failing stores touched nothing else.
    assert_eq!(pg.query("SELECT count(*) FROM ok"), "4");
    assert_eq!(pg.query("SELECT store FROM buffer_batches"), "ok");
    // Nothing lost: both batches wait in Redis, whole.
    assert_eq!(records_in_redis(&buffer).await, 7);

    // Fixed on the database side, the same batches land whole.
    pg.query("ALTER TABLE m ALTER COLUMN id TYPE text");
    pg.query("ALTER TABLE c DROP CONSTRAINT id_not_negative");
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(pg.query("SELECT count(*) FROM m"), "4");
    assert_eq!(pg.query("SELECT count(*), sum(id) FROM c"), "3|0");
    assert!(failures(&buffer).await.is_empty());
    assert_eq!(records_in_redis(&buffer).await, 0);
}

#[tokio::test]
async fn a_key_without_a_column_or_a_missing_table_fails_naming_it() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE k (id bigint)");
    let buffer = redis.buffer().await;
    buffer
        .push("k", &json!({"id": 1, "surprise": 2}))
        .await
        .unwrap();
    buffer.push("nowhere", &json!({"id": 1})).await.unwrap();
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(!output.status.success());
    let failed = failures(&buffer).await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let by_store = |store: &str| {
        failed
            .iter()
            .find(|(name, _)| name == store)
            .map(|(_, error)| error.clone())
            .unwrap()
    };
    let unknown = by_store("k");
    assert!(
        unknown.contains("has the key \"surprise\", which names no column of \"k\""),
        "{unknown}"
    );
    let missing = by_store("nowhere");
    assert!(
        missing
            .contains("table \"nowhere\" does not exist; create it, or run with --create-tables"),
        "{missing}"
    );
    assert_eq!(buffer.get_prepared().await.unwrap().len(), 2);
    assert_eq!(pg.query("SELECT count(*) FROM k"), "0");
}

#[tokio::test]
async fn postgres_down_is_a_failure_record_and_the_batch_lands_after_a_restart() {
    let redis = RedisServer::start();
    let mut pg = PostgresServer::start();
    pg.query("CREATE TABLE d (id bigint, name text)");
    let url = pg.url();
    let buffer = redis.buffer().await;
    push_ids(&buffer, "d", 0..50).await;
    pg.stop_immediately();
    let output = drain(&redis, &url, &[], &[]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("connecting to postgres://postgres@127.0.0.1"),
        "{text}"
    );
    // Nothing lost: the 50 records wait in Redis (live, or in a batch with a failure record).
    assert_eq!(records_in_redis(&buffer).await, 50);
    pg.restart();
    let output = drain(&redis, &url, &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(pg.query("SELECT count(*) FROM d"), "50");
}

/// Records in live stores and prepared batches.
async fn records_in_redis(buffer: &Buffer) -> u64 {
    let live: u64 = buffer
        .stores()
        .await
        .unwrap()
        .iter()
        .map(|store| store.records)
        .sum();
    let mut prepared = 0;
    for batch in buffer.get_prepared().await.unwrap() {
        if let Some(info) = buffer.batch_info(&batch.store, &batch.id).await.unwrap() {
            prepared += info.records;
        }
    }
    live + prepared
}

#[tokio::test]
async fn url_forms_unix_socket_schema_and_pgpassword() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE SCHEMA app; CREATE TABLE app.u (id bigint, name text)");
    pg.query("ALTER USER postgres PASSWORD 'pw'");
    let buffer = redis.buffer().await;
    push_ids(&buffer, "u", 0..10).await;
    // postgresql://, the socket directory as the host, ?schema=; the server trusts local
    // connections, so PGPASSWORD is only carried here.
    let socket = pg.socket_dir().display().to_string().replace('/', "%2F");
    let url = format!(
        "postgresql://postgres@{socket}:{}/postgres?schema=app&sslmode=disable",
        pg.port()
    );
    let output = drain(&redis, &url, &[], &[("PGPASSWORD", "pw")]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(pg.query("SELECT count(*) FROM app.u"), "10");
    assert_eq!(pg.query("SELECT count(*) FROM app.buffer_batches"), "1");

    // A unix socket is never encrypted (as libpq): verify-full there needs no certificate.
    push_ids(&buffer, "u", 10..12).await;
    let url = format!(
        "postgresql://postgres@{socket}:{}/postgres?schema=app&sslmode=verify-full",
        pg.port()
    );
    let output = drain(&redis, &url, &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));

    // `require` against a server without TLS: refused naming the mode and the fix, without
    // printing the password; nothing lost, and the records land with `prefer`, which (like
    // `allow`) connects without TLS to a server that offers none.
    push_ids(&buffer, "u", 12..15).await;
    let output = drain(
        &redis,
        &format!(
            "postgres://postgres:secret@127.0.0.1:{}/postgres?schema=app&sslmode=require",
            pg.port()
        ),
        &[],
        &[],
    );
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("server does not support TLS; sslmode=require needs TLS, which this server does not offer"),
        "{text}"
    );
    assert!(!text.contains("secret"), "the password leaked: {text}");
    assert_eq!(records_in_redis(&buffer).await, 3);
    for (mode, ids) in [("prefer", 15..17), ("allow", 17..20)] {
        push_ids(&buffer, "u", ids).await;
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?schema=app&sslmode={mode}",
            pg.port()
        );
        let output = drain(&redis, &url, &[], &[]);
        assert!(output.status.success(), "{mode}: {}", stderr(&output));
    }
    assert_eq!(pg.query("SELECT count(DISTINCT id) FROM app.u"), "20");
    assert_eq!(pg.query("SELECT count(*) FROM app.u"), "20");
    // The verifying modes need root certificates: refused at start naming sslrootcert (HOME
    // elsewhere, so no ~/.postgresql/root.crt is found).
    let home = tempfile::tempdir().unwrap();
    for mode in ["verify-ca", "verify-full"] {
        let output = drain(
            &redis,
            &format!(
                "postgres://postgres:secret@127.0.0.1:{}/postgres?sslmode={mode}",
                pg.port()
            ),
            &[],
            &[("HOME", home.path().to_str().unwrap())],
        );
        assert!(!output.status.success());
        let text = stderr(&output);
        assert!(
            text.contains(&format!("sslmode={mode} verifies the server's certificate, so it needs the CA certificates to trust: give sslrootcert=")),
            "{text}"
        );
        assert!(!text.contains("secret"), "the password leaked: {text}");
    }
}

/// A server that takes the TCP connection but never answers (frozen: the kernel still
/// accepts) is given up on within the connection's bound, the statement timeout plus as much
/// again, naming the connection; the records wait in Redis and land once it answers.
#[tokio::test]
async fn a_server_that_never_answers_the_connection_is_given_up_on_in_bounded_time() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE c (id bigint, name text)");
    let buffer = redis.buffer().await;
    push_ids(&buffer, "c", 0..10).await;
    pg.freeze();
    let started = Instant::now();
    let output = drain(&redis, &pg.url(), &["--statement-timeout", "1s"], &[]);
    let took = started.elapsed();
    pg.thaw();
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "connecting to postgres://postgres@127.0.0.1:{}/postgres: no answer within 2s",
            pg.port()
        )),
        "{text}"
    );
    // The bound is 2 s per attempt to connect; a drain makes one for the output's set-up and
    // gives up. Three times that, for a loaded machine.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(records_in_redis(&buffer).await, 10);
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(pg.query("SELECT count(DISTINCT id) FROM c"), "10");
}

#[tokio::test]
async fn a_statement_over_the_timeout_is_cancelled_and_the_batch_lands_later() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    // A trigger that takes 30 s: the COPY cannot finish within a 1 s statement timeout.
    pg.query(
        "CREATE TABLE slow (id bigint, name text); \
         CREATE FUNCTION nap() RETURNS trigger LANGUAGE plpgsql AS \
         $$BEGIN PERFORM pg_sleep(30); RETURN NULL; END$$; \
         CREATE TRIGGER nap BEFORE INSERT ON slow FOR EACH STATEMENT EXECUTE FUNCTION nap()",
    );
    let buffer = redis.buffer().await;
    push_ids(&buffer, "slow", 0..20).await;
    let started = Instant::now();
    let output = drain(&redis, &pg.url(), &["--statement-timeout", "1s"], &[]);
    let took = started.elapsed();
    assert!(!output.status.success());
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let failed = failures(&buffer).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let error = &failed[0].1;
    assert!(
        error.contains("canceling statement due to statement timeout (SQLSTATE 57014)"),
        "{error}"
    );
    assert_eq!(pg.query("SELECT count(*) FROM buffer_batches"), "0");
    assert_eq!(records_in_redis(&buffer).await, 20);

    pg.query("DROP TRIGGER nap ON slow");
    let output = drain(&redis, &pg.url(), &["--statement-timeout", "1s"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        pg.query("SELECT count(*), count(DISTINCT id) FROM slow"),
        "20|20"
    );
    assert_eq!(pg.query("SELECT rows FROM buffer_batches"), "20");
    assert_eq!(records_in_redis(&buffer).await, 0);
}

#[tokio::test]
async fn a_frozen_postgres_times_out_and_a_commit_it_took_is_found_in_the_ledger_after() {
    buffer_tests::require_failpoints!();
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE f (id bigint, name text)");
    let buffer = redis.buffer().await;
    push_ids(&buffer, "f", 0..100).await;

    // The persister stops itself with the rows and the ledger row sent, right before COMMIT;
    // the whole server is frozen then, and the persister resumed: its COMMIT goes into the
    // frozen backend's socket and no answer comes.
    let child = drain_command(
        &redis,
        &pg.url(),
        &["--statement-timeout", "1s"],
        &[("BUFFER_FAILPOINT", "before-commit:stop")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_state(pid) != Some('T') {
        assert!(
            Instant::now() < deadline,
            "the persister never reached before-commit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let frozen = pg.freeze();
    assert!(frozen >= 2, "only {frozen} server processes frozen");
    let started = Instant::now();
    let resumed = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(resumed.success());
    let output = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    // The client's bound: the statement timeout plus as much again (at most 5 s).
    assert!(
        text.contains("COMMIT: no answer within 2s (the statement timeout 1s plus 1s)"),
        "{text}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let failed = failures(&buffer).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.contains("no answer within"), "{failed:?}");
    assert_eq!(records_in_redis(&buffer).await, 100);

    // Thawed, the server runs the COMMIT it had received: the outcome the persister could not
    // know. The next attempt finds the batch in the ledger and only deletes it from Redis.
    pg.thaw();
    let again = drain(&redis, &pg.url(), &[], &[]);
    let text = stderr(&again);
    assert!(again.status.success(), "{text}");
    assert!(
        text.contains("already applied (found in the ledger"),
        "{text}"
    );
    assert_eq!(
        pg.query("SELECT count(*), count(DISTINCT id) FROM f"),
        "100|100"
    );
    assert_eq!(
        pg.query("SELECT count(*), sum(rows) FROM buffer_batches"),
        "1|100"
    );
    assert_eq!(records_in_redis(&buffer).await, 0);
    assert!(failures(&buffer).await.is_empty());
}

/// Sends SIGKILL to `child` and reaps it.
fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn spawn_runner(redis: &RedisServer, url: &str) -> Child {
    Command::new(BINARY)
        .args(["run", "--redis", &redis.url(), "--out", url])
        .args([
            "--interval",
            "20ms",
            "--max-age",
            "50ms",
            "--max-records",
            "100",
        ])
        .args(["--lock-ttl", "1s", "--redis-timeout", "1s"])
        .args(["--statement-timeout", "2s"])
        .env("RUST_LOG", "error")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisters_killed_with_9_and_postgres_restarted_mid_run_apply_every_record_once() {
    let seed = buffer_tests::fault_seed("postgres kill -9");
    let mut rng = StdRng::seed_from_u64(seed);
    let redis = RedisServer::start();
    let mut pg = PostgresServer::start();
    let stores = 4u64;
    for store in 0..stores {
        pg.query(&format!("CREATE TABLE \"store-{store}\" (id bigint)"));
    }
    // And a coalescing store: 50 counters, each push adding 1 to one of them.
    pg.query("CREATE TABLE counters (k bigint PRIMARY KEY, hits bigint, _writes bigint)");
    let url = pg.url();
    let buffer = redis.buffer().await;
    buffer
        .set_coalesce(
            "counters",
            &CoalesceRules::new("k").with("hits", MergeRule::Sum),
        )
        .await
        .unwrap();
    // Guarded: a failed assertion kills them rather than leave them running.
    let mut runners: Vec<KillOnDrop> = (0..3)
        .map(|_| KillOnDrop::new(spawn_runner(&redis, &url)))
        .collect();
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let total = 12_000u64;
    let producers: Vec<_> = (0..4)
        .map(|p| {
            tokio::spawn(produce(
                buffer.clone(),
                p * total / 4..(p + 1) * total / 4,
                stores,
                0,
                ledger.clone(),
            ))
        })
        .collect();
    let counting = {
        let buffer = buffer.clone();
        tokio::spawn(async move {
            let (mut acknowledged, mut unknown) = (0u64, 0u64);
            for n in 0..3_000u64 {
                match buffer
                    .push("counters", &json!({"k": n % 50, "hits": 1}))
                    .await
                {
                    Ok(_) => acknowledged += 1,
                    Err(err) if err.is_transient() => unknown += 1,
                    Err(err) => panic!("counter push refused: {err}"),
                }
            }
            (acknowledged, unknown)
        })
    };
    let count_rows = |pg: &PostgresServer| -> u64 {
        let union = (0..stores)
            .map(|store| format!("SELECT count(*) AS n FROM \"store-{store}\""))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        pg.query(&format!("SELECT sum(n) FROM ({union}) AS counts"))
            .parse()
            .unwrap()
    };
    let started = Instant::now();
    let mut kills = 0;
    let mut restarted = false;
    while !(producers.iter().all(|p| p.is_finished()) && restarted && kills >= 3) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        if !restarted && (started.elapsed() > Duration::from_millis(500)) {
            // Mid-run: rows are in and records still wait in Redis.
            let before = count_rows(&pg);
            let waiting = records_in_redis(&buffer).await;
            pg.stop_immediately();
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
            pg.restart();
            println!("postgres restarted with {before} rows in and {waiting} records waiting");
            assert!(
                before > 0 && waiting > 0,
                "{before} rows, {waiting} waiting"
            );
            restarted = true;
        }
        let victim = rng.random_range(0..runners.len());
        kill_9(&mut runners[victim]);
        runners[victim] = KillOnDrop::new(spawn_runner(&redis, &url));
        kills += 1;
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let (hits_acknowledged, hits_unknown) = counting.await.unwrap();
    let caught_up = eventually(Duration::from_secs(20), || async {
        records_in_redis(&buffer).await == 0
    })
    .await;
    for runner in &mut runners {
        kill_9(runner);
    }
    // What the runners left (a batch in hand at the last kills) is drained.
    let output = drain(&redis, &url, &["--wait", "10s"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    println!(
        "{kills} kills, runners caught up before the last kills: {caught_up}, {:?} in all",
        started.elapsed()
    );

    let union = (0..stores)
        .map(|store| format!("SELECT id FROM \"store-{store}\""))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let ids: Vec<u64> = pg
        .query(&union)
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    let ledger = ledger.lock().unwrap();
    let lost: Vec<&u64> = ledger.acknowledged.difference(&unique).collect();
    println!(
        "acknowledged {}, outcome unknown {}, rows {}, distinct {}",
        ledger.acknowledged.len(),
        ledger.unknown.len(),
        ids.len(),
        unique.len()
    );
    assert_eq!(ids.len(), unique.len(), "a record applied twice");
    assert!(lost.is_empty(), "{} acknowledged records lost", lost.len());
    assert!(
        unique
            .iter()
            .all(|id| ledger.acknowledged.contains(id) || ledger.unknown.contains(id)),
        "rows nobody pushed"
    );
    // Every counter's total is exact: each acknowledged push added once, none twice.
    let hits: u64 = pg.query("SELECT sum(hits) FROM counters").parse().unwrap();
    println!("counter hits {hits}: acknowledged {hits_acknowledged}, unknown {hits_unknown}");
    assert!(
        (hits_acknowledged..=hits_acknowledged + hits_unknown).contains(&hits),
        "counter totals {hits}, acknowledged {hits_acknowledged}"
    );
    assert_eq!(pg.query("SELECT count(*) FROM counters"), "50");
    assert_eq!(
        pg.query("SELECT count(*) FROM counters WHERE hits <> _writes"),
        "0"
    );
    // The ledger has a row per batch applied, and its counts are the tables' rows.
    for store in 0..stores {
        let table = format!("store-{store}");
        assert_eq!(
            pg.query(&format!(
                "SELECT coalesce(sum(rows), 0) FROM buffer_batches WHERE store = '{table}'"
            )),
            pg.query(&format!("SELECT count(*) FROM \"{table}\"")),
            "store {table}"
        );
    }
    let (batches, ledger_rows) = pg
        .query("SELECT count(*), sum(rows) FROM buffer_batches")
        .split_once('|')
        .map(|(batches, rows)| (batches.to_owned(), rows.parse::<usize>().unwrap()))
        .unwrap();
    println!("{batches} batches in the ledger");
    let counter_entities: usize = pg
        .query("SELECT coalesce(sum(rows), 0) FROM buffer_batches WHERE store = 'counters'")
        .parse()
        .unwrap();
    assert_eq!(ledger_rows, ids.len() + counter_entities);
    // Nothing is left in Redis but push-id markers, the announcements of killed runners, the
    // coalescing rules, and the batch locks of runners killed holding them (a lock outlives
    // its holder by its TTL: that is how a successor knows to wait).
    let left: Vec<String> = redis
        .all_keys()
        .into_iter()
        .filter(|k| {
            k.starts_with("buf:")
                && k != "buf:persisters"
                && !k.contains(":id:")
                && !k.contains(":lock:")
                && !k.ends_with(":coalesce")
        })
        .collect();
    assert!(left.is_empty(), "buffer keys left: {left:?}");
}

#[tokio::test]
async fn metrics_count_rows_transactions_and_ledger_hits() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE a (id bigint, name text); CREATE TABLE b (id bigint, name text)");
    let buffer = redis.buffer().await;
    push_ids(&buffer, "a", 0..30).await;
    push_ids(&buffer, "b", 0..12).await;
    let mut config = PersistConfig::new(pg.url());
    config.lock_ttl = Duration::from_secs(5);
    let persister = Persister::new(buffer.clone(), config);
    assert_eq!(persister.postgres_stats(), None, "no output used yet");
    let report = persister.drain().await.unwrap();
    assert_eq!(report.batches, 2);
    let stats = persister.postgres_stats().unwrap();
    assert_eq!(
        stats,
        PostgresStats {
            rows: 42,
            transactions: 2,
            ledger_hits: 0
        }
    );
    assert_eq!(persister.stats().files_written, 0);

    let shutdown = CancellationToken::new();
    let (addr, server) = buffer_persist::serve_metrics(
        "127.0.0.1:0".parse().unwrap(),
        persister.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let body = scrape(addr).await;
    shutdown.cancel();
    server.await.unwrap();
    for line in [
        "buffer_persist_postgres_rows_total 42",
        "buffer_persist_postgres_transactions_total 2",
        "buffer_persist_postgres_ledger_hits_total 0",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in:\n{body}");
    }
}

/// `GET /metrics` over a plain HTTP/1.0 connection; returns the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap()
}

#[tokio::test]
async fn a_coalescing_store_is_merged_by_each_fields_rule_exactly_once() {
    buffer_tests::require_failpoints!();
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    // No _first_write column: that metadata field is left out.
    pg.query(
        "CREATE TABLE pages (page text PRIMARY KEY, views bigint, peak bigint, low numeric, \
         referrer text, title text, tags jsonb, _writes bigint, _last_write bigint); \
         INSERT INTO pages VALUES ('a', 10, 5, 5, 'old', 'old', '[\"x\"]', 3, 0)",
    );
    let buffer = redis.buffer().await;
    let rules = CoalesceRules::new("page")
        .with("views", MergeRule::Sum)
        .with("peak", MergeRule::Max)
        .with("low", MergeRule::Min)
        .with("referrer", MergeRule::First)
        .with("tags", MergeRule::Union);
    buffer.set_coalesce("pages", &rules).await.unwrap();
    for record in [
        json!({"page": "a", "views": 1, "peak": 7, "low": 2.5, "referrer": "r1", "title": "t1", "tags": ["y"]}),
        json!({"page": "b", "views": 5, "peak": 1, "low": 1, "referrer": "rb", "title": "tb", "tags": ["q"]}),
        json!({"page": "a", "views": 2, "peak": 3, "low": 9, "referrer": "r2", "title": "t2", "tags": ["x", "z"]}),
    ] {
        buffer.push("pages", &record).await.unwrap();
    }
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let row = |page: &str| {
        pg.query(&format!(
            "SELECT views, peak, low, referrer, title, tags::text, _writes, _last_write > 0 \
             FROM pages WHERE page = '{page}'"
        ))
    };
    // a merged into the row that was there: sum, max, min, first kept, last, union, writes.
    assert_eq!(row("a"), "13|7|2.5|old|t2|[\"x\", \"y\", \"z\"]|5|t");
    // b inserted as the batch had it.
    assert_eq!(row("b"), "5|1|1|rb|tb|[\"q\"]|1|t");
    assert_eq!(
        pg.query("SELECT store, rows FROM buffer_batches"),
        "pages|2"
    );

    // A kill after COMMIT: the next drain finds the ledger row and adds nothing again.
    buffer
        .push("pages", &json!({"page": "a", "views": 4}))
        .await
        .unwrap();
    let crashed = drain(
        &redis,
        &pg.url(),
        &[],
        &[("BUFFER_FAILPOINT", "after-commit")],
    );
    assert!(!crashed.status.success());
    assert_eq!(pg.query("SELECT views FROM pages WHERE page = 'a'"), "17");
    let again = drain(&redis, &pg.url(), &[], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already applied (found in the ledger)"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        pg.query("SELECT views, title, _writes FROM pages WHERE page = 'a'"),
        "17|t2|6"
    );
    assert_eq!(pg.query("SELECT count(*) FROM pages"), "2");
    assert_eq!(records_in_redis(&buffer).await, 0);

    // Without a unique constraint on the key, the batch fails naming the fix, and stays.
    pg.query("CREATE TABLE counts (page text, views bigint)");
    buffer
        .set_coalesce(
            "counts",
            &CoalesceRules::new("page").with("views", MergeRule::Sum),
        )
        .await
        .unwrap();
    buffer
        .push("counts", &json!({"page": "a", "views": 1}))
        .await
        .unwrap();
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(!output.status.success());
    let failed = failures(&buffer).await;
    assert_eq!(failed.len(), 1, "{failed:?} {}", stderr(&output));
    assert!(
        failed[0].1.contains(
            "\"counts\" has no unique constraint on \"page\" alone, which merging a coalescing store's rows by its key needs"
        ) && failed[0].1.contains("ALTER TABLE \"counts\" ADD UNIQUE (\"page\")"),
        "{}",
        failed[0].1
    );
    assert_eq!(records_in_redis(&buffer).await, 1);
    pg.query("ALTER TABLE counts ADD UNIQUE (page)");
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(pg.query("SELECT page, views FROM counts"), "a|1");

    // A union field needs a json or jsonb column.
    pg.query("CREATE TABLE tagged (page text UNIQUE, tags text)");
    buffer
        .set_coalesce(
            "tagged",
            &CoalesceRules::new("page").with("tags", MergeRule::Union),
        )
        .await
        .unwrap();
    buffer
        .push("tagged", &json!({"page": "a", "tags": ["x"]}))
        .await
        .unwrap();
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(!output.status.success());
    let failed = failures(&buffer).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].1.contains(
            "field \"tags\" merges by union, so its column must be json or jsonb (it is text)"
        ),
        "{}",
        failed[0].1
    );
    pg.query("DROP TABLE tagged");

    // --create-tables makes the key column unique, and a second batch merges into the rows.
    for round in 0..2 {
        buffer
            .push("tagged", &json!({"page": "a", "tags": [round]}))
            .await
            .unwrap();
        let output = drain(&redis, &pg.url(), &["--create-tables"], &[]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    // (The batch that failed and the new one may be applied in either order.)
    assert_eq!(
        pg.query(
            "SELECT page, jsonb_array_length(tags), tags @> '[\"x\", 0, 1]'::jsonb FROM tagged"
        ),
        "a|3|t"
    );
}

#[tokio::test]
async fn a_record_without_a_key_takes_the_columns_default_and_a_null_stays_null() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query(
        "CREATE TABLE d (id bigint, note text DEFAULT 'none', n bigint DEFAULT 7, \
         seq bigserial, at timestamptz DEFAULT now(), name text)",
    );
    let buffer = redis.buffer().await;
    for record in [
        json!({"id": 1, "note": "given", "n": 1, "name": "a"}),
        json!({"id": 2, "name": "b"}),
        json!({"id": 3, "note": null, "n": null}),
        json!({"id": 4, "n": 4, "at": "2026-01-02T03:04:05Z"}),
    ] {
        buffer.push("d", &record).await.unwrap();
    }
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        pg.query(
            "SELECT id, coalesce(note, 'NULL'), coalesce(n::text, 'NULL'), seq > 0, \
             at IS NOT NULL, coalesce(name, 'NULL') FROM d ORDER BY id"
        ),
        "1|given|1|t|t|a\n2|none|7|t|t|b\n3|NULL|NULL|t|t|NULL\n4|none|4|t|t|NULL"
    );
    assert_eq!(
        pg.query("SELECT at = '2026-01-02T03:04:05Z' FROM d WHERE id = 4"),
        "t"
    );
    assert_eq!(pg.query("SELECT rows FROM buffer_batches"), "4");
    assert_eq!(records_in_redis(&buffer).await, 0);
}

#[tokio::test]
async fn a_holder_that_lost_its_lock_mid_transaction_rolls_back_and_the_new_holder_applies_once() {
    buffer_tests::require_failpoints!();
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE r (id bigint, name text)");
    let buffer = redis.buffer().await;
    push_ids(&buffer, "r", 0..50).await;

    // A stops itself with its rows and its ledger row sent, its transaction open, and stays
    // stopped past its lock's TTL.
    let first = drain_command(
        &redis,
        &pg.url(),
        &["--lock-ttl", "1s"],
        &[("BUFFER_FAILPOINT", "before-commit:stop")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let first_pid = first.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_state(first_pid) != Some('T') {
        assert!(Instant::now() < deadline, "A never reached before-commit");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));

    // B takes the batch, loads it, and its ledger insert waits on A's uncommitted row.
    let second = drain_command(&redis, &pg.url(), &[], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg.query(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE 'INSERT INTO%buffer_batches%'",
    ) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "B's ledger insert never waited on A's"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A resumes: its check before COMMIT finds the lock gone, so it never commits; its
    // transaction is rolled back and B's goes through.
    let resumed = Command::new("kill")
        .args(["-CONT", &first_pid.to_string()])
        .status()
        .unwrap();
    assert!(resumed.success());
    let first = first.wait_with_output().unwrap();
    let first_text = stderr(&first);
    // A lost lock is not the batch's failure (the new holder has it): A drained nothing.
    assert!(
        first_text.contains("lost the lock; another persister has the batch")
            && first_text.contains("drained 0 batches"),
        "{first_text}"
    );
    let second = second.wait_with_output().unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        pg.query("SELECT count(*), count(DISTINCT id) FROM r"),
        "50|50"
    );
    assert_eq!(
        pg.query("SELECT count(*), sum(rows) FROM buffer_batches"),
        "1|50"
    );
    assert_eq!(records_in_redis(&buffer).await, 0);
}

/// A persister writing into PostgreSQL announces its output (which the dashboard shows) with
/// the password hidden: not in the announcement, not anywhere in Redis.
#[tokio::test]
async fn a_running_persister_announces_its_database_with_the_password_hidden() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let buffer = redis.buffer().await;
    let url = format!(
        "postgres://postgres:s3cret-pw@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port()
    );
    let runner = Command::new(BINARY)
        .args(["run", "--redis", &redis.url(), "--out", &url])
        .args(["--interval", "50ms"])
        .env("RUST_LOG", "error")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let announced = eventually(Duration::from_secs(20), || {
        let buffer = buffer.clone();
        async move {
            !buffer
                .persisters(Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        }
    })
    .await;
    let persisters = buffer.persisters(Duration::from_secs(60)).await.unwrap();
    let everything = redis.command(&["HGETALL", "buf:persisters"]);
    buffer_tests::stop_and_expect_success(runner);
    assert!(announced, "the persister never announced itself");
    assert_eq!(
        persisters[0].out,
        format!(
            "postgres://postgres:***@127.0.0.1:{}/postgres?sslmode=disable",
            pg.port()
        )
    );
    assert!(!everything.contains("s3cret"), "{everything}");
}

/// A TLS-only server (`hostssl` in pg_hba.conf) with a certificate from a private CA:
/// verify-full lands batches (so over TLS), with the root from the URL or `PGSSLROOTCERT`;
/// a wrong CA, a host name the certificate does not hold, and a plaintext URL each fail
/// naming what was wrong, the records waiting in Redis, and land once the URL is right.
#[tokio::test]
async fn tls_verify_full_lands_and_a_wrong_ca_host_name_or_plaintext_fails_naming_it() {
    let certificates = TestCertificates::make();
    let redis = RedisServer::start();
    let pg = PostgresServer::start_with_tls(Some(&certificates), TlsPolicy::Required);
    pg.query("CREATE TABLE t (id bigint, name text)");
    let buffer = redis.buffer().await;
    let port = pg.port();
    let ca = certificates.ca().display().to_string();
    let other_ca = certificates.other_ca().display().to_string();
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let home_dir_with_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(home_dir_with_root.path().join(".postgresql")).unwrap();
    std::fs::copy(
        certificates.ca(),
        home_dir_with_root.path().join(".postgresql/root.crt"),
    )
    .unwrap();
    let home_with_root = home_dir_with_root.path().display().to_string();
    push_ids(&buffer, "t", 0..10).await;

    let failing = [
        (
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={other_ca}"),
            format!("error performing TLS handshake: the server's certificate is not signed by a CA of sslrootcert={other_ca} (invalid peer certificate: UnknownIssuer)"),
        ),
        (
            // hostaddr connects to the server; the name checked is the host's.
            format!("postgres://postgres@db.invalid:{port}/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"),
            "the server's certificate does not name the host \"db.invalid\" of the URL (invalid peer certificate: certificate not valid for name \"db.invalid\"; certificate is only valid for DnsName(\"localhost\") or IpAddress(127.0.0.1)); sslmode=verify-full checks it".to_owned(),
        ),
        (
            // require checks the chain too when given roots (as libpq).
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require&sslrootcert={other_ca}"),
            format!("the server's certificate is not signed by a CA of sslrootcert={other_ca}"),
        ),
        (
            // The system's roots do not hold the private CA.
            format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert=system"),
            "sslrootcert=system".to_owned(),
        ),
        (
            // Channel binding is not offered, so a URL that requires it cannot connect.
            format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
            "server did not use channel binding".to_owned(),
        ),
        (
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"),
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption (SQLSTATE 28000); the server takes this connection over TLS only (a hostssl line in its pg_hba.conf), and sslmode=disable did not encrypt it".to_owned(),
        ),
    ];
    // PGSSLMODE stands for a URL without sslmode.
    let output = drain(
        &redis,
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        &[],
        &[("HOME", home), ("PGSSLMODE", "disable")],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("and sslmode=disable did not encrypt it"),
        "{}",
        stderr(&output)
    );
    for (url, expected) in &failing {
        let output = drain(&redis, url, &[], &[("HOME", home)]);
        let text = stderr(&output);
        assert!(!output.status.success(), "{url}: {text}");
        assert!(text.contains(expected.as_str()), "{url}: {text}");
        assert_eq!(records_in_redis(&buffer).await, 10, "{url}");
    }
    assert_eq!(pg.query("SELECT count(*) FROM t"), "0");

    // Fixed: verify-full with the right CA, by host name and by IP address (the
    // certificate holds both), from the URL and from PGSSLROOTCERT; verify-ca to a host the
    // certificate does not name; allow, which falls back to TLS when refused without.
    let landing = [
        (
            format!(
                "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
            ),
            vec![],
        ),
        (
            format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full"),
            vec![("PGSSLROOTCERT", ca.as_str())],
        ),
        (
            format!(
                "postgres://postgres@db.invalid:{port}/postgres?hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={ca}"
            ),
            vec![],
        ),
        // libpq's default root file, ~/.postgresql/root.crt.
        (
            format!("postgres://postgres@localhost:{port}/postgres?sslmode=verify-full"),
            vec![("HOME", home_with_root.as_str())],
        ),
        (
            format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=allow"),
            vec![],
        ),
        (
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            vec![],
        ),
    ];
    for (round, (url, env)) in landing.iter().enumerate() {
        if round > 0 {
            let first = 10 * round as u64;
            push_ids(&buffer, "t", first..first + 10).await;
        }
        let mut env = env.clone();
        if !env.iter().any(|(key, _)| *key == "HOME") {
            env.push(("HOME", home));
        }
        let output = drain(&redis, url, &[], &env);
        assert!(output.status.success(), "{url}: {}", stderr(&output));
        assert_eq!(records_in_redis(&buffer).await, 0, "{url}");
    }
    assert_eq!(
        pg.query("SELECT count(*), count(DISTINCT id) FROM t"),
        "60|60"
    );
    assert_eq!(
        pg.query("SELECT count(*), sum(rows) FROM buffer_batches"),
        "6|60"
    );
}

/// Relays TCP connections from a local port to `target`, but passes only the first byte
/// the server sends (PostgreSQL's `S`, yes to TLS) and none after: the server's side of the
/// TLS handshake never arrives, as from a server that hangs mid-handshake. Returns the port.
fn relay_that_stalls_after_the_first_byte(target: u16) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            let (mut client_reader, mut server_writer) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_reader, &mut server_writer);
            });
            std::thread::spawn(move || {
                let mut first = [0u8; 1];
                if server.read_exact(&mut first).is_ok() && client.write_all(&first).is_ok() {
                    // Read and drop the rest until either side closes.
                    let _ = std::io::copy(&mut server, &mut std::io::sink());
                }
            });
        }
    });
    port
}

/// A server that hangs during TLS negotiation, frozen (SIGSTOP) before its answer to the
/// TLS request or silent after its yes, is given up on within the connection's bound (the
/// statement timeout plus as much again), naming the connection; nothing is lost, and the
/// records land once it answers.
#[tokio::test]
async fn a_server_that_hangs_during_the_tls_handshake_is_given_up_on_in_bounded_time() {
    let certificates = TestCertificates::make();
    let redis = RedisServer::start();
    let pg = PostgresServer::start_with_tls(Some(&certificates), TlsPolicy::Offered);
    pg.query("CREATE TABLE h (id bigint, name text)");
    let buffer = redis.buffer().await;
    push_ids(&buffer, "h", 0..10).await;
    let ca = certificates.ca().display().to_string();
    let stalled = relay_that_stalls_after_the_first_byte(pg.port());
    let url_to = |port: u16| {
        format!(
            "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
        )
    };
    for frozen in [true, false] {
        let url = if frozen {
            url_to(pg.port())
        } else {
            url_to(stalled)
        };
        if frozen {
            pg.freeze();
        }
        let started = Instant::now();
        let output = drain(&redis, &url, &["--statement-timeout", "1s"], &[]);
        let took = started.elapsed();
        if frozen {
            pg.thaw();
        }
        let text = stderr(&output);
        assert!(!output.status.success(), "{text}");
        assert!(
            text.contains(&format!("connecting to {url}: no answer within 2s")),
            "{text}"
        );
        // 2 s per attempt to connect, one attempt; three times that for a loaded machine.
        assert!(
            took < Duration::from_secs(8),
            "frozen {frozen}: took {took:?}"
        );
        assert_eq!(records_in_redis(&buffer).await, 10);
    }
    let output = drain(&redis, &url_to(pg.port()), &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        pg.query("SELECT count(DISTINCT id), count(*) FROM h"),
        "10|10"
    );
}

/// A batch of several pages (5 000 records each): each page is read while the one before is
/// encoded and sent. A record on the third page with a key no column has fails the batch
/// naming its index in the batch; nothing is applied; once the column exists, every record
/// lands once.
#[tokio::test]
async fn a_batch_of_several_pages_lands_whole_and_a_bad_record_is_named_by_its_index() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.query("CREATE TABLE pages (id bigint, name text)");
    let buffer = redis.buffer().await;
    let total: u64 = 12_345;
    let bad: u64 = 11_000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
        let records: Vec<serde_json::Value> = chunk
            .iter()
            .map(|id| {
                if *id == bad {
                    json!({"id": id, "name": format!("n{id}"), "surprise": 1})
                } else {
                    json!({"id": id, "name": format!("n\t{id}")})
                }
            })
            .collect();
        buffer.push_many("pages", &records).await.unwrap();
    }
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "record {bad} of the batch has the key \"surprise\", which names no column of \"pages\""
        )),
        "{text}"
    );
    assert_eq!(pg.query("SELECT count(*) FROM pages"), "0");
    assert_eq!(records_in_redis(&buffer).await, total);
    pg.query("ALTER TABLE pages ADD COLUMN surprise int");
    let output = drain(&redis, &pg.url(), &[], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        pg.query("SELECT count(*), count(DISTINCT id), sum(id), count(surprise), bool_and(name = 'n' || chr(9) || id OR id = 11000) FROM pages"),
        format!("{total}|{total}|{}|1|t", total * (total - 1) / 2)
    );
    assert_eq!(records_in_redis(&buffer).await, 0);
}
