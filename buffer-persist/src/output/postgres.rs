//! PostgreSQL as an output: each batch applied exactly once, in one transaction that also
//! records it in a ledger table.
//!
//! A batch of store S goes to the table named by `--table-template` (`{store}` by default),
//! always quoted as one identifier. Its records are loaded with `COPY … FROM STDIN` (text
//! format), page by page as the batch is read from Redis, so memory stays one page whatever
//! the batch's size; PostgreSQL parses each value as its column's type, so a table's columns
//! type the records. In the same transaction the ledger (`buffer_batches` by default) gets a
//! row (store, batch, rows, applied_at) whose primary key is (store, batch): a batch whose
//! ledger row exists was applied, and its next attempt (after a crash between COMMIT and the
//! Redis delete, say) only deletes it from Redis; two attempts racing cannot both commit,
//! the second's ledger insert conflicting with the first. The lock is checked in Redis right
//! before COMMIT (as the file output does before `link`), and the heartbeat keeps it through
//! the transaction; a lost lock rolls the transaction back.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use buffer_core::{Buffer, CoalesceRules, LockGuard, MergeRule, Page, PreparedBatch, StoreName};
use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::config::PersistConfig;
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::output::copy_text::{CopyTextEncoder, RowError};
use crate::output::postgres_tls::{MakeRustlsConnect, RootCertificates, SslMode};
use crate::parquet::{ColumnType, ParquetLayout};
use crate::writer::Published;

/// PostgreSQL's longest identifier in bytes (NAMEDATALEN - 1); a longer one would be
/// truncated silently, and two stores could share a table.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The most columns a created table gets from a batch's keys (PostgreSQL's limit is 1600; one
/// is kept for `_rest`). Other keys go into `_rest`.
const MAX_CREATED_COLUMNS: usize = 1599;

/// The column that takes a record's keys that name no other column, when a table has it.
const REST_COLUMN: &str = "_rest";

/// A coalesced row's metadata fields (buffer-core's coalescing rows): writes merged into it,
/// its first and last write (Unix ms). Each goes to a column of its name when the table has
/// one, merged by adding, the earliest and the latest.
const METADATA_FIELDS: [&str; 3] = ["_writes", "_first_write", "_last_write"];

/// The temporary table a batch is loaded into before it is merged (a coalesced batch) or
/// given its defaults (an append batch naming columns with defaults).
const STAGE_TABLE: &str = "buffer_stage";

/// The staging table's column holding, per row, the positions (in the COPY's column list) of
/// the columns with a default whose key the record lacks. A space keeps it from any name a
/// store's keys give the columns copied next to it in practice.
const MISSING_COLUMN: &str = "buffer missing keys";

/// The most the client waits beyond `statement_timeout` before it gives up on a round trip
/// (it waits the statement timeout again when that is shorter): the server ends a statement
/// at the timeout, so only a server that does not answer at all (frozen, unreachable) takes
/// the client's bound.
const MAX_CLIENT_MARGIN: Duration = Duration::from_secs(5);

/// The counters of the PostgreSQL output ([`PostgresStats`] reads them).
#[derive(Debug, Default)]
pub(crate) struct PostgresCounters {
    /// Rows loaded by committed transactions.
    pub(crate) rows: AtomicU64,
    /// Transactions committed (one per batch applied).
    pub(crate) transactions: AtomicU64,
    /// Batches found in the ledger already (applied by an earlier attempt), deleted from
    /// Redis without being applied again.
    pub(crate) ledger_hits: AtomicU64,
}

/// What the PostgreSQL output did since the persister started (its metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostgresStats {
    /// Rows loaded by committed transactions.
    pub rows: u64,
    /// Transactions committed, one per batch applied.
    pub transactions: u64,
    /// Batches found in the ledger (applied by an earlier attempt, or by one whose commit
    /// landed meanwhile), deleted from Redis without being applied again.
    pub ledger_hits: u64,
}

/// A PostgreSQL database as an output.
pub(crate) struct PostgresOutput {
    /// The connection settings parsed from the URL (password from `PGPASSWORD` when the URL
    /// has none).
    connect: tokio_postgres::Config,
    /// `?schema=`: the schema of the tables and the ledger; the search path's first otherwise.
    schema: Option<String>,
    table_template: String,
    ledger: String,
    create_tables: bool,
    statement_timeout: Duration,
    /// The URL without its password, for messages.
    display: String,
    /// libpq's `sslmode` (the URL's, else `PGSSLMODE`, else `prefer`).
    sslmode: SslMode,
    /// The TLS connector of `sslmode`, or None when the connection is never encrypted
    /// (`disable`, a unix socket).
    tls: Option<MakeRustlsConnect>,
    counters: PostgresCounters,
}

/// A table's name: its schema (when given) and name, each a whole identifier.
#[derive(Clone, Debug)]
struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    /// The name as SQL: each part quoted (`"` doubled), so any text is one identifier.
    fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&self.name)),
            None => quote(&self.name),
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// `name` as a quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One column of an existing table.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    /// `json` or `jsonb`: a value goes in as its JSON text (a string keeps its quotes).
    json: bool,
    /// The type's name (`pg_type.typname`: `int8`, `jsonb`, …).
    type_name: String,
    /// Its default expression as SQL, when it has one (not for a generated column).
    default: Option<String>,
}

use crate::config::redact_password as redact;

/// Percent-decodes `text` (a query parameter's value).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = text.get(index + 1..index + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl PostgresOutput {
    /// The counters now.
    pub(crate) fn stats(&self) -> PostgresStats {
        let c = &self.counters;
        PostgresStats {
            rows: c.rows.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            ledger_hits: c.ledger_hits.load(Ordering::Relaxed),
        }
    }

    /// Checks `url` and the PostgreSQL settings of `config` without connecting.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong.
    pub(crate) fn check(url: &str, config: &PersistConfig) -> Result<()> {
        Self::new(url, config).map(drop)
    }

    /// The output `url` names (`postgres://` or `postgresql://`, libpq's URL form; `?schema=`
    /// is ours), with `config`'s table template, ledger and timeouts.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL the driver does not take, an `sslmode` this build cannot
    /// honour (it speaks no TLS), or a ledger or template that cannot name a table.
    pub(crate) fn new(url: &str, config: &PersistConfig) -> Result<Self> {
        let display = redact(url);
        let bad = |what: String| Error::Config(format!("--out {display}: {what}"));
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = None;
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_decode(value).ok_or_else(|| {
                bad(format!(
                    "the value of {key} is not valid percent-encoded UTF-8"
                ))
            })?;
            match key {
                "schema" => {
                    check_identifier(&decoded)
                        .map_err(|why| bad(format!("schema {decoded:?} {why}")))?;
                    schema = Some(decoded);
                }
                // libpq's TLS settings are ours (postgres_tls.rs): the driver knows only
                // disable, prefer and require, and no root certificates.
                "sslmode" => sslmode = Some(decoded),
                "sslrootcert" => sslrootcert = Some(decoded),
                _ => kept.push(pair),
            }
        }
        let sslmode = match sslmode.or_else(|| std::env::var("PGSSLMODE").ok()) {
            None => SslMode::Prefer,
            Some(text) => SslMode::parse(&text).ok_or_else(|| {
                bad(format!(
                    "sslmode={text} is not a mode; use disable, allow, prefer, require, verify-ca or verify-full"
                ))
            })?,
        };
        let stripped = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut connect: tokio_postgres::Config = stripped
            .parse()
            .map_err(|err| bad(format!("not a PostgreSQL URL ({}); write postgres://user[:password]@host[:port]/database[?sslmode=…&schema=…]", error_chain(&err))))?;
        if connect.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            connect.password(password);
        }
        if connect.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .map_err(|_| bad("names no user, and neither PGUSER nor USER is set".into()))?;
            connect.user(user);
        }
        if connect.get_connect_timeout().is_none() {
            connect.connect_timeout(config.statement_timeout.min(Duration::from_secs(10)));
        }
        connect.application_name("buffer-persist");
        // libpq never encrypts a unix socket connection, whatever the mode (PostgreSQL does
        // not offer TLS there).
        let unix_only = connect.get_hostaddrs().is_empty()
            && connect
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, tokio_postgres::config::Host::Tcp(_)));
        let tls = if sslmode == SslMode::Disable || unix_only {
            connect.ssl_mode(DriverSslMode::Disable);
            None
        } else {
            connect.ssl_mode(match sslmode {
                // `allow` first connects without TLS, then with (`connect`).
                SslMode::Disable | SslMode::Allow => DriverSslMode::Disable,
                SslMode::Prefer => DriverSslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    DriverSslMode::Require
                }
            });
            let roots = RootCertificates::locate(sslrootcert.as_deref());
            Some(MakeRustlsConnect::new(sslmode, roots).map_err(bad)?)
        };
        if !config.table_template.contains("{store}") {
            return Err(Error::Config(format!(
                "--table-template {:?} has no {{store}}: every store would share one table",
                config.table_template
            )));
        }
        check_identifier(&config.ledger_table).map_err(|why| {
            Error::Config(format!("--ledger-table {:?} {why}", config.ledger_table))
        })?;
        if config.statement_timeout.is_zero() {
            return Err(Error::Config(
                "--statement-timeout must be more than 0".into(),
            ));
        }
        Ok(Self {
            connect,
            schema,
            table_template: config.table_template.clone(),
            ledger: config.ledger_table.clone(),
            create_tables: config.create_tables,
            statement_timeout: config.statement_timeout,
            display,
            sslmode,
            tls,
            counters: PostgresCounters::default(),
        })
    }

    /// The table of `store`'s records.
    ///
    /// # Errors
    /// [`Error::Postgres`] (not transient) when the name cannot be a table: over 63 bytes, or
    /// holding a NUL.
    fn table_for(&self, store: &StoreName) -> Result<TableName> {
        let name = self.table_template.replace("{store}", store.as_str());
        // The reason first: a failure record is cut at a bound, and the name may be long.
        check_identifier(&name).map_err(|why| Error::Postgres {
            action: "naming the store's table".to_owned(),
            sqlstate: None,
            message: format!(
                "the table name {why}; choose a shorter --table-template or store name (store {:?}, table {name:?})",
                store.as_str()
            ),
            transient: false,
        })?;
        Ok(TableName {
            schema: self.schema.clone(),
            name,
        })
    }

    fn ledger(&self) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name: self.ledger.clone(),
        }
    }

    /// Runs `future` (one round trip or a few) under the client's bound.
    async fn bounded<T>(
        &self,
        action: impl Fn() -> String,
        future: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let margin = self.statement_timeout.min(MAX_CLIENT_MARGIN);
        match tokio::time::timeout(self.statement_timeout + margin, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(pg_error(action(), &err)),
            Err(_) => Err(Error::Postgres {
                action: action(),
                sqlstate: None,
                message: format!(
                    "no answer within {} (the statement timeout {} plus {}); the server may be frozen or unreachable",
                    humantime::format_duration(self.statement_timeout + margin),
                    humantime::format_duration(self.statement_timeout),
                    humantime::format_duration(margin)
                ),
                transient: true,
            }),
        }
    }

    /// A new connection with the statement timeout set.
    async fn connect(&self) -> Result<Client> {
        let action = || format!("connecting to {}", self.display);
        let client = match (&self.tls, self.sslmode) {
            (None, _) => spawn_connection(
                self.bounded(action, self.connect.connect(NoTls))
                    .await
                    .map_err(|err| self.with_tls_hint(err))?,
            ),
            // libpq's `allow`: without TLS first, with TLS (as `require`) when that fails.
            (Some(tls), SslMode::Allow) => {
                match self.bounded(action, self.connect.connect(NoTls)).await {
                    Ok(connected) => spawn_connection(connected),
                    Err(plain) => {
                        let mut encrypted = self.connect.clone();
                        encrypted.ssl_mode(DriverSslMode::Require);
                        let connected = self
                            .bounded(action, encrypted.connect(tls.clone()))
                            .await
                            .map_err(|err| {
                                append(
                                    self.with_tls_hint(err),
                                    &format!(" (sslmode=allow tried without TLS first: {plain})"),
                                )
                            })?;
                        spawn_connection(connected)
                    }
                }
            }
            (Some(tls), _) => spawn_connection(
                self.bounded(action, self.connect.connect(tls.clone()))
                    .await
                    .map_err(|err| self.with_tls_hint(err))?,
            ),
        };
        let millis = self.statement_timeout.as_millis();
        self.bounded(
            || "setting statement_timeout".to_owned(),
            client.batch_execute(&format!("SET statement_timeout = {millis}")),
        )
        .await?;
        Ok(client)
    }

    /// `err` (a failed connection) with what to change when TLS decided it: a mode needing
    /// TLS against a server without it, or no TLS against a server that requires it.
    fn with_tls_hint(&self, err: Error) -> Error {
        let Error::Postgres {
            sqlstate, message, ..
        } = &err
        else {
            return err;
        };
        let hint = if message.contains("server does not support TLS") {
            format!(
                "; sslmode={} needs TLS, which this server does not offer (ssl = off in its postgresql.conf); sslmode=prefer falls back to an unencrypted connection",
                self.sslmode.as_str()
            )
        } else if sqlstate.as_deref() == Some("28000") && message.contains("no encryption") {
            format!(
                "; the server takes this connection over TLS only (a hostssl line in its pg_hba.conf), and sslmode={} did not encrypt it: use sslmode=verify-full (or require, verify-ca, prefer)",
                self.sslmode.as_str()
            )
        } else {
            return err;
        };
        append(err, &hint)
    }

    /// Sets the output up before any batch: connects, and creates the ledger table when it
    /// is missing.
    ///
    /// # Errors
    /// [`Error::Postgres`]: transient when the server cannot be reached.
    pub(crate) async fn prepare(&self) -> Result<()> {
        let client = self.connect().await?;
        let ledger = self.ledger();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (store text NOT NULL, batch text NOT NULL, \
             rows bigint NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (store, batch))"
        );
        match self
            .bounded(
                || format!("creating the ledger {ledger}"),
                client.batch_execute(&create),
            )
            .await
        {
            Ok(()) => Ok(()),
            // Two persisters creating it at once: one wins, the other sees a duplicate type
            // or table; it is there either way.
            Err(Error::Postgres {
                sqlstate: Some(code),
                ..
            }) if code == "23505" || code == "42P07" => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Applies `batch` in one transaction with its ledger row, or finds it applied already.
    /// Returns [`Published::Written`] (the path is the table's quoted name) or, for a ledger
    /// hit, [`Published::AlreadyThere`].
    ///
    /// # Errors
    /// [`Error::Postgres`] (the transaction is rolled back), a lost lock, Redis errors,
    /// [`Error::CountMismatch`], [`Error::Abandoned`] on shutdown.
    pub(crate) async fn write_batch(
        &self,
        buffer: &Buffer,
        guard: &LockGuard,
        batch: &PreparedBatch,
        lock_ttl: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Published> {
        let table = self.table_for(&batch.store)?;
        let path = std::path::PathBuf::from(table.quoted());
        let client = self.connect().await?;
        let ledger = self.ledger();
        let store = batch.store.as_str();
        let batch_id = batch.id.to_string();
        let hit = self
            .bounded(
                || format!("reading the ledger {ledger}"),
                client.query_opt(
                    &format!("SELECT rows FROM {ledger} WHERE store = $1 AND batch = $2"),
                    &[&store, &batch_id],
                ),
            )
            .await?;
        if hit.is_some() {
            self.counters.ledger_hits.fetch_add(1, Ordering::Relaxed);
            tracing::info!(table = %table, "already applied (found in the ledger); deleting it from Redis");
            return Ok(Published::AlreadyThere { path });
        }
        // A coalescing store's batch is one row per entity, merged into the table's rows.
        let rules = buffer.coalesce_rules(batch.store.as_str()).await?;
        let columns = match self.columns(&client, &table).await? {
            Some(columns) => columns,
            None if self.create_tables => {
                let unique_key = rules.as_ref().map(|rules| rules.key.as_str());
                self.create_table(&client, buffer, batch, &table, unique_key)
                    .await?;
                self.columns(&client, &table)
                    .await?
                    .ok_or_else(|| Error::Postgres {
                        action: format!("creating table {table}"),
                        sqlstate: None,
                        message: "the table is still missing after CREATE TABLE".into(),
                        transient: true,
                    })?
            }
            None => {
                return Err(Error::Postgres {
                    action: format!("loading table {table}"),
                    sqlstate: Some("42P01".into()),
                    message: format!(
                        "table {table} does not exist; create it, or run with --create-tables"
                    ),
                    transient: false,
                });
            }
        };
        // The COPY names only the columns some record of the batch has: a column no record
        // names takes its default.
        let mut named = Vec::new();
        for column in columns.iter().filter(|column| column.name != REST_COLUMN) {
            // A coalesced row's metadata fields are no pushed keys: named when the table has
            // their columns.
            let metadata = rules.is_some() && METADATA_FIELDS.contains(&column.name.as_str());
            if metadata
                || buffer
                    .batch_has_key(&batch.store, &batch.id, &column.name)
                    .await?
            {
                named.push(column.clone());
            }
        }
        let rest = columns
            .iter()
            .any(|column| column.name == REST_COLUMN && column.json);
        let mut list: Vec<String> = named.iter().map(|column| quote(&column.name)).collect();
        if rest {
            list.push(quote(REST_COLUMN));
        }
        if list.is_empty() {
            return Err(Error::Postgres {
                action: format!("loading table {table}"),
                sqlstate: None,
                message: format!(
                    "no key of the batch names a column of {table}, and it has no {REST_COLUMN} jsonb column"
                ),
                transient: false,
            });
        }
        // Metadata fields without a column are left out, not put into `_rest`.
        let dropped: Vec<String> = match rules {
            Some(_) => METADATA_FIELDS
                .iter()
                .filter(|field| !named.iter().any(|column| column.name == **field))
                .map(|field| (*field).to_owned())
                .collect(),
            None => Vec::new(),
        };
        let upsert = match &rules {
            Some(rules) => Some(
                self.upsert_statement(&client, &table, rules, &named, rest, &columns)
                    .await?,
            ),
            None => None,
        };
        // An append batch naming columns that have a default: a record without the key takes
        // the default, which COPY (PostgreSQL 15) cannot say per field. The batch goes through
        // the staging table with, per row, the positions of those columns it lacks.
        let defaulted: Vec<usize> = if upsert.is_none() {
            named
                .iter()
                .enumerate()
                .filter(|(_, column)| column.default.is_some())
                .map(|(position, _)| position)
                .collect()
        } else {
            Vec::new()
        };
        let merge = match upsert {
            Some(upsert) => Some(upsert),
            None if !defaulted.is_empty() => Some(defaults_statement(&table, &named, rest)),
            None => None,
        };
        let has_defaults = !defaulted.is_empty();
        let mapping = Mapping {
            table: table.clone(),
            encoder: CopyTextEncoder::new(
                named
                    .iter()
                    .map(|column| (column.name.clone(), column.json))
                    .collect(),
                rest,
                dropped,
                defaulted,
            ),
            has_defaults,
        };
        self.bounded(|| "BEGIN".to_owned(), client.batch_execute("BEGIN"))
            .await?;
        // A coalesced batch goes through a staging table of the same columns (no constraints),
        // merged into the table by one INSERT … ON CONFLICT; an append batch straight in, or
        // through the staging table when defaults are to be filled in.
        let mut copy_list = list.clone();
        if mapping.has_defaults {
            copy_list.push(quote(MISSING_COLUMN));
        }
        let target = if merge.is_some() {
            let mut stage = format!(
                "CREATE TEMP TABLE {STAGE_TABLE} ON COMMIT DROP AS SELECT {} FROM {table} WITH NO DATA",
                list.join(", ")
            );
            if mapping.has_defaults {
                stage.push_str(&format!(
                    "; ALTER TABLE pg_temp.{STAGE_TABLE} ADD COLUMN {} int[]",
                    quote(MISSING_COLUMN)
                ));
            }
            self.bounded(
                || format!("creating the staging table for {table}"),
                client.batch_execute(&stage),
            )
            .await?;
            format!("pg_temp.{STAGE_TABLE}")
        } else {
            table.quoted()
        };
        let copy = format!("COPY {target} ({}) FROM STDIN", copy_list.join(", "));
        let copy_action = || format!("loading table {table}");
        let sink = self
            .bounded(copy_action, client.copy_in::<_, Bytes>(&copy))
            .await?;
        futures::pin_mut!(sink);
        let mut reader = buffer.reader(batch);
        let mut index: u64 = 0;
        let mut current = reader.next_records().await?;
        while let Some(page) = current {
            if shutdown.is_cancelled() {
                // Dropping the client ends the connection; the server rolls back.
                return Err(Error::Abandoned {
                    store: batch.store.to_string(),
                    batch: batch.id.to_string(),
                });
            }
            let first = index;
            index += page.len() as u64;
            // The next page is asked for first and read while this one is encoded and sent,
            // so Redis, this process and PostgreSQL work at once rather than in turn (two
            // pages in memory at most, as the invariant allows).
            let send = async {
                let mut encoded = Vec::new();
                mapping.encode_page(&page, first, &mut encoded)?;
                drop(page);
                self.bounded(copy_action, sink.send(Bytes::from(encoded)))
                    .await
            };
            let (next, sent) = tokio::join!(reader.next_records(), send);
            sent?;
            guard.check_held()?;
            current = next?;
        }
        let rows = self.bounded(copy_action, sink.as_mut().finish()).await?;
        if rows != batch.records {
            return Err(Error::CountMismatch {
                store: batch.store.to_string(),
                batch: batch.id.to_string(),
                expected: batch.records,
                written: rows,
            });
        }
        if let Some(merge) = &merge {
            self.bounded(
                || format!("moving the batch's rows into table {table}"),
                client.batch_execute(merge),
            )
            .await?;
        }
        let rows_signed = i64::try_from(rows).unwrap_or(i64::MAX);
        let recorded = self
            .bounded(
                || format!("recording the batch in the ledger {ledger}"),
                client.execute(
                    &format!("INSERT INTO {ledger} (store, batch, rows) VALUES ($1, $2, $3)"),
                    &[&store, &batch_id, &rows_signed],
                ),
            )
            .await;
        match recorded {
            Ok(_) => {}
            // Another transaction recorded the batch since the ledger was read, and committed
            // (the insert waited for it): an earlier attempt whose COMMIT reached the server
            // but not its answer (a frozen or restarting server, a killed persister), or a
            // persister that lost its lock to us mid-commit. Its rows are in; this
            // transaction is rolled back when the connection is dropped.
            Err(Error::Postgres {
                sqlstate: Some(code),
                ..
            }) if code == "23505" => {
                self.counters.ledger_hits.fetch_add(1, Ordering::Relaxed);
                tracing::info!(table = %table, "already applied (found in the ledger, committed by another attempt meanwhile); deleting it from Redis");
                return Ok(Published::AlreadyThere { path });
            }
            Err(err) => return Err(err),
        }
        failpoint("before-commit");
        // The check before committing, in Redis rather than from the heartbeat's last word
        // (as the file output's before `link`); the heartbeat keeps the lock through the
        // COMMIT and the delete that follow.
        guard.extend(lock_ttl).await?;
        self.bounded(|| "COMMIT".to_owned(), client.batch_execute("COMMIT"))
            .await?;
        failpoint("after-commit");
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.counters.rows.fetch_add(rows, Ordering::Relaxed);
        Ok(Published::Written { path, bytes: 0 })
    }

    /// The `INSERT … ON CONFLICT (key) DO UPDATE` that merges the staged rows into `table`
    /// with each field's rule, after checking that the key column exists and is unique on its
    /// own, and that each union field's column is json or jsonb.
    async fn upsert_statement(
        &self,
        client: &Client,
        table: &TableName,
        rules: &CoalesceRules,
        named: &[Column],
        rest: bool,
        columns: &[Column],
    ) -> Result<String> {
        let refuse = |message: String| Error::Postgres {
            action: format!("merging into table {table}"),
            sqlstate: None,
            message,
            transient: false,
        };
        if !columns.iter().any(|column| column.name == rules.key) {
            return Err(refuse(format!(
                "the coalescing store's key field {:?} names no column of {table}",
                rules.key
            )));
        }
        let quoted = table.quoted();
        let unique = self
            .bounded(
                || format!("looking up the unique constraints of table {table}"),
                client.query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a                      ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]                      WHERE i.indrelid = to_regclass($1::text) AND i.indisunique                      AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL                      AND a.attname = $2)",
                    &[&quoted, &rules.key],
                ),
            )
            .await?;
        if !unique.get::<_, bool>(0) {
            return Err(refuse(format!(
                "{table} has no unique constraint on {key} alone, which merging a coalescing store's rows by its key needs (INSERT … ON CONFLICT ({key})); add one: ALTER TABLE {table} ADD UNIQUE ({key})",
                key = quote(&rules.key)
            )));
        }
        let mut list: Vec<String> = named.iter().map(|column| quote(&column.name)).collect();
        if rest {
            list.push(quote(REST_COLUMN));
        }
        let mut sets = Vec::new();
        for column in named.iter().filter(|column| column.name != rules.key) {
            let c = quote(&column.name);
            let (old, new) = (format!("t.{c}"), format!("EXCLUDED.{c}"));
            let expression = match column.name.as_str() {
                "_writes" => format!("COALESCE({old} + {new}, {old}, {new})"),
                "_first_write" => format!("LEAST({old}, {new})"),
                "_last_write" => format!("GREATEST({old}, {new})"),
                field => match rules.rule_of(field) {
                    MergeRule::Sum => format!("COALESCE({old} + {new}, {old}, {new})"),
                    MergeRule::Max => format!("GREATEST({old}, {new})"),
                    MergeRule::Min => format!("LEAST({old}, {new})"),
                    MergeRule::First => format!("COALESCE({old}, {new})"),
                    MergeRule::Union => {
                        if !column.json {
                            return Err(refuse(format!(
                                "field {field:?} merges by union, so its column must be json or jsonb (it is {})",
                                column.type_name
                            )));
                        }
                        // Distinct elements, the row's first, then the batch's new ones.
                        format!(
                            "(SELECT jsonb_agg(x ORDER BY o) FROM (SELECT x, min(o) AS o                              FROM jsonb_array_elements(COALESCE({old}::jsonb, '[]') ||                              COALESCE({new}::jsonb, '[]')) WITH ORDINALITY AS u(x, o)                              GROUP BY x) AS d)::{}",
                            column.type_name
                        )
                    }
                    // Last, and any rule added later: the batch's value when it has one.
                    _ => format!("COALESCE({new}, {old})"),
                },
            };
            sets.push(format!("{c} = {expression}"));
        }
        if rest {
            let c = quote(REST_COLUMN);
            sets.push(format!("{c} = COALESCE(EXCLUDED.{c}, t.{c})"));
        }
        let action = if sets.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", sets.join(", "))
        };
        Ok(format!(
            "INSERT INTO {table} AS t ({list}) SELECT {list} FROM pg_temp.{STAGE_TABLE}              ON CONFLICT ({key}) {action}",
            list = list.join(", "),
            key = quote(&rules.key)
        ))
    }

    /// The columns of `table`, or `None` when it does not exist.
    async fn columns(&self, client: &Client, table: &TableName) -> Result<Option<Vec<Column>>> {
        let quoted = table.quoted();
        let exists = self
            .bounded(
                || format!("looking up table {table}"),
                client.query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&quoted]),
            )
            .await?;
        if !exists.get::<_, bool>(0) {
            return Ok(None);
        }
        let rows = self
            .bounded(
                || format!("reading the columns of table {table}"),
                client.query(
                    "SELECT a.attname::text, t.typname::text, \
                     CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                     WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 \
                     AND NOT a.attisdropped ORDER BY a.attnum",
                    &[&quoted],
                ),
            )
            .await?;
        Ok(Some(
            rows.iter()
                .map(|row| {
                    let type_name: String = row.get(1);
                    Column {
                        name: row.get(0),
                        json: matches!(type_name.as_str(), "json" | "jsonb"),
                        type_name,
                        default: row.get(2),
                    }
                })
                .collect(),
        ))
    }

    /// Creates `table` from `batch`'s keys, typed as in Parquet files, plus `_rest jsonb`.
    async fn create_table(
        &self,
        client: &Client,
        buffer: &Buffer,
        batch: &PreparedBatch,
        table: &TableName,
        unique_key: Option<&str>,
    ) -> Result<()> {
        let layout = ParquetLayout::of_batch(buffer, batch, MAX_CREATED_COLUMNS).await?;
        let mut columns: Vec<String> = layout
            .columns()
            .iter()
            .filter(|(name, _)| name != REST_COLUMN)
            .map(|(name, column_type)| format!("{} {}", quote(name), sql_type(*column_type)))
            .collect();
        columns.push(format!("{} jsonb", quote(REST_COLUMN)));
        // A coalescing store's table is merged into by its key: it needs it unique.
        if let Some(key) = unique_key
            && layout.columns().iter().any(|(name, _)| name == key)
        {
            columns.push(format!("UNIQUE ({})", quote(key)));
        }
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} ({})",
            columns.join(", ")
        );
        tracing::info!(table = %table, columns = columns.len(), "creating table");
        match self
            .bounded(
                || format!("creating table {table}"),
                client.batch_execute(&create),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(Error::Postgres {
                sqlstate: Some(code),
                ..
            }) if code == "23505" || code == "42P07" => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// The `INSERT … SELECT` that moves an append batch's staged rows into `table`, a column with
/// a default taking it where the record lacked the key (and the value, `NULL` included,
/// where it had it).
fn defaults_statement(table: &TableName, named: &[Column], rest: bool) -> String {
    let mut list: Vec<String> = named.iter().map(|column| quote(&column.name)).collect();
    let mut values: Vec<String> = named
        .iter()
        .enumerate()
        .map(|(position, column)| match &column.default {
            Some(default) => format!(
                "CASE WHEN {position} = ANY({missing}) THEN {default} ELSE {c} END",
                missing = quote(MISSING_COLUMN),
                c = quote(&column.name)
            ),
            None => quote(&column.name),
        })
        .collect();
    if rest {
        list.push(quote(REST_COLUMN));
        values.push(quote(REST_COLUMN));
    }
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM pg_temp.{STAGE_TABLE}",
        list.join(", "),
        values.join(", ")
    )
}

/// The PostgreSQL type of a created table's column: the Parquet mapping (README), with
/// nested values and mixed kinds as `jsonb`.
fn sql_type(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::Int64 => "bigint",
        ColumnType::Float64 => "double precision",
        ColumnType::Boolean => "boolean",
        ColumnType::Utf8 => "text",
        ColumnType::Json => "jsonb",
    }
}

/// `err` and its causes, `: `-separated (the driver's "invalid connection string" names the
/// option only in its cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        text.push_str(": ");
        text.push_str(&current.to_string());
        cause = current.source();
    }
    text
}

/// Spawns the I/O task of a new connection and returns its client.
fn spawn_connection<S, T>(
    (client, connection): (Client, tokio_postgres::Connection<S, T>),
) -> Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The connection's I/O runs on its own task; it ends when `client` is dropped (and a
    // transaction still open then is rolled back by the server).
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "PostgreSQL connection ended");
        }
    });
    client
}

/// `err` with `text` added to its message (an [`Error::Postgres`]; others as they are).
fn append(mut err: Error, text: &str) -> Error {
    if let Error::Postgres { message, .. } = &mut err {
        message.push_str(text);
    }
    err
}

/// Why `name` cannot be an identifier, if it cannot.
fn check_identifier(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        Err("is empty".into())
    } else if name.contains('\0') {
        Err("holds a NUL character, which PostgreSQL identifiers cannot".into())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Err(format!(
            "is {} bytes long; PostgreSQL identifiers hold at most {MAX_IDENTIFIER_BYTES}",
            name.len()
        ))
    } else {
        Ok(())
    }
}

/// How a batch's records become COPY rows of one table.
struct Mapping {
    table: TableName,
    /// The COPY's columns (then `_rest`), their keys dropped or defaulted: the encoder.
    encoder: CopyTextEncoder,
    /// Some named column has a default: rows end with the `int[]` of those missing.
    has_defaults: bool,
}

impl Mapping {
    /// Appends the page's records to `out` as COPY text rows; `first` is the index in the
    /// batch of its first record (for messages).
    fn encode_page(&self, page: &Page, first: u64, out: &mut Vec<u8>) -> Result<()> {
        out.reserve(page.text_bytes() + page.len() * 8);
        self.encoder
            .encode(page.iter(), out)
            .map_err(|(offset, why)| {
                let index = first + offset as u64;
                let record = page.iter().nth(offset).unwrap_or_default();
                let message = match why {
                    RowError::NotAnObject(err) => format!(
                        "record {index} of the batch is not a JSON object ({err}): {record}"
                    ),
                    RowError::UnknownKey(key) => format!(
                        "record {index} of the batch has the key {key:?}, which names no column of {} (and it has no {REST_COLUMN} jsonb column for such keys): {record}",
                        self.table
                    ),
                };
                Error::Postgres {
                    action: format!("loading table {}", self.table),
                    sqlstate: None,
                    message,
                    transient: false,
                }
            })
    }
}

/// An [`Error::Postgres`] from a driver error: the server's SQLSTATE, message, detail and
/// context (a COPY's names the line, which is the record's index in the batch plus one, and
/// the column), or the client's error and its causes.
fn pg_error(action: String, err: &tokio_postgres::Error) -> Error {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code().to_owned();
        let mut message = format!("{} (SQLSTATE {code})", db.message());
        if let Some(detail) = db.detail() {
            message.push_str("; ");
            message.push_str(detail);
        }
        if let Some(context) = db.where_() {
            message.push_str("; ");
            message.push_str(context);
            if context.starts_with("COPY ") {
                message.push_str(" (COPY line N is record N-1 of the batch)");
            }
        }
        // Waiting helps when the server is shutting down, starting, overloaded, or when the
        // transaction lost a race it can retry; not for data and schema errors.
        let transient = code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || matches!(code.as_str(), "40001" | "40P01" | "55P03" | "57014");
        return Error::Postgres {
            action,
            sqlstate: Some(code),
            message,
            transient,
        };
    }
    let mut message = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(current) = cause {
        let line = current.to_string();
        if !message.contains(&line) {
            message.push_str(": ");
            message.push_str(&line);
        }
        cause = current.source();
    }
    Error::Postgres {
        action,
        sqlstate: None,
        message,
        transient: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whole() {
        assert_eq!(
            quote("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
        assert_eq!(
            TableName {
                schema: Some("s\"".into()),
                name: "t".into()
            }
            .quoted(),
            "\"s\"\"\".\"t\""
        );
        assert!(
            check_identifier(&"x".repeat(64))
                .unwrap_err()
                .contains("64 bytes")
        );
        assert!(check_identifier("a\0b").unwrap_err().contains("NUL"));
        assert!(check_identifier(&"é".repeat(31)).is_ok());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?sslmode=disable"),
            "postgres://u:***@h:5432/db?sslmode=disable"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn every_libpq_sslmode_is_taken_and_others_are_refused_naming_them() {
        let config = PersistConfig::new("postgres://u@h/db");
        for mode in ["disable", "allow", "prefer", "require"] {
            let url = format!("postgres://u:pw@h/db?sslmode={mode}");
            assert!(PostgresOutput::check(&url, &config).is_ok(), "{mode}");
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        for mode in ["verify-ca", "verify-full"] {
            let url = format!(
                "postgres://u:pw@h/db?sslmode={mode}&sslrootcert={}",
                missing.display()
            );
            let err = PostgresOutput::check(&url, &config)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "sslrootcert={}: cannot read it",
                    missing.display()
                )),
                "{err}"
            );
            assert!(!err.contains("pw@"), "{err}");
        }
        // Client certificates are not supported: the driver refuses the option, naming it.
        let err = PostgresOutput::check("postgres://u:pw@h/db?sslcert=c.crt&sslkey=c.key", &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option `sslcert`"), "{err}");
        let err = PostgresOutput::check("postgres://u:pw@h/db?sslmode=bogus&schema=s", &config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "--out postgres://u:***@h/db?sslmode=bogus&schema=s: sslmode=bogus is not a mode"
            ),
            "{err}"
        );
    }
}
