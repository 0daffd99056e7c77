//! [`Buffer`]: the handle every producer, persister and dashboard uses.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, Stream, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch::BatchId;
use crate::clock::{self, Clock, RedisOffset, SystemClock};
use crate::error::{Error, Result};
use crate::keys::{DEFAULT_GROUPS, KeyLayout};
use crate::lock::{LockTarget, LockedBatch};
use crate::name::{Namespace, StoreName};
use crate::record::{self, EncodedRecord};
use crate::scripts;
use crate::transaction;

/// How to reach Redis and how to lay out keys there.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use buffer_core::BufferConfig;
///
/// let config = BufferConfig::new("redis://127.0.0.1:6379/0")
///     .namespace("orders-service")?
///     .response_timeout(Duration::from_secs(2));
/// assert_eq!(config.namespace_name().as_str(), "orders-service");
/// # Ok::<(), buffer_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BufferConfig {
    url: String,
    namespace: Namespace,
    groups: u16,
    response_timeout: Duration,
    connect_timeout: Duration,
    max_record_bytes: usize,
    page_size: usize,
    page_bytes: usize,
    holder_id: String,
    push_id_ttl: Duration,
    clock: Arc<dyn Clock>,
    clock_sync_interval: Duration,
}

impl BufferConfig {
    /// A configuration for the Redis at `url` (`redis://[user:password@]host:port/db`,
    /// `rediss://` for TLS) with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: Namespace::default(),
            groups: DEFAULT_GROUPS,
            response_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_record_bytes: 8 * 1024 * 1024,
            page_size: 5000,
            page_bytes: 2 * 1024 * 1024,
            holder_id: default_holder_id(),
            push_id_ttl: Duration::from_secs(24 * 3600),
            clock: Arc::new(SystemClock),
            clock_sync_interval: Duration::from_secs(60),
        }
    }

    /// Sets the key namespace (default `buf`).
    ///
    /// # Errors
    /// [`Error::InvalidNamespace`] when it is not 1..=64 bytes of `[A-Za-z0-9._-]`.
    pub fn namespace(mut self, namespace: &str) -> Result<Self> {
        self.namespace = Namespace::new(namespace)?;
        Ok(self)
    }

    /// The configured namespace.
    pub fn namespace_name(&self) -> &Namespace {
        &self.namespace
    }

    /// Sets the number of slot groups (default 256). Every process sharing a namespace must
    /// use the same number, since it decides every key's name.
    ///
    /// # Errors
    /// [`Error::Config`] when `groups` is 0.
    pub fn groups(mut self, groups: u16) -> Result<Self> {
        if groups == 0 {
            return Err(Error::Config(
                "the number of groups must be at least 1".into(),
            ));
        }
        self.groups = groups;
        Ok(self)
    }

    /// How long to wait for any reply before the call fails with a transient error (default 5 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long to wait for a connection to be established (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest record accepted, as compact JSON (default 8 MiB).
    pub fn max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }

    /// How many records a page of a batch holds at most when it is read (default 5000).
    /// Pages are also cut by bytes: see [`BufferConfig::page_bytes`].
    pub fn page_size(mut self, records: usize) -> Self {
        self.page_size = records.max(1);
        self
    }

    /// How many bytes of records a page of a batch holds at most when it is read (default
    /// 2 MiB); a page always holds at least one record, so a page is at most
    /// `max(page_bytes, max_record_bytes)`. The reader knows each record's size bound before
    /// it reads the page (from the batch's run list), so this holds for every page.
    pub fn page_bytes(mut self, bytes: usize) -> Self {
        self.page_bytes = bytes.max(1);
        self
    }

    /// The holder id written into locks this buffer takes (default `<hostname>/<pid>`); a
    /// lock's value is `<holder id>:<random token>`.
    pub fn holder_id(mut self, holder: impl Into<String>) -> Self {
        self.holder_id = holder.into();
        self
    }

    /// How long [`Buffer::push_once`] remembers a push id (default 24 h): a retry later than
    /// that is treated as a new push.
    pub fn push_id_ttl(mut self, ttl: Duration) -> Self {
        self.push_id_ttl = ttl;
        self
    }

    /// The clock used for first-write times, batch ids and ages (default the system clock).
    /// Unless it opts out ([`Clock::corrected_by_redis_time`]), its readings are corrected by
    /// their measured offset to Redis `TIME`, so a skewed clock neither delays nor hastens an
    /// age flush; see [`Buffer::now_ms`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How old the measured offset of the clock to Redis `TIME` may grow before it is measured
    /// again, in the background (default 60 s). A clock that is stepped (NTP, a VM resumed) is
    /// followed again within about this long.
    pub fn clock_sync_interval(mut self, interval: Duration) -> Self {
        self.clock_sync_interval = interval;
        self
    }

    /// The Redis URL with any password replaced by `***`, fit to display or log.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// Replaces the password of a Redis URL (if any) with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                // `redis://password@host` is also accepted by some clients: redact it too.
                format!("{scheme}://***@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

fn default_holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}/{}", std::process::id())
}

/// What a push returns: the live store's state right after the push, read in the same
/// transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PushReceipt {
    /// Total size of the store's records, in bytes of compact JSON.
    pub bytes: u64,
    /// Number of records in the store.
    pub records: u64,
    /// Number of distinct top-level keys seen across the store's records.
    pub keys: u64,
    /// When the first record of the current live buffer was pushed (Unix ms).
    pub first_write_ms: u64,
}

/// What [`Buffer::push_once`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PushOnceOutcome {
    /// The store's state after the call.
    pub receipt: PushReceipt,
    /// True when a push with this id had already been applied, so nothing was added now.
    pub duplicate: bool,
}

/// `records`, unless there are none ([`Error::NoRecords`]: a push adds at least one).
fn not_empty(store: &StoreName, records: Vec<EncodedRecord>) -> Result<Vec<EncodedRecord>> {
    if records.is_empty() {
        return Err(Error::NoRecords {
            store: store.to_string(),
        });
    }
    Ok(records)
}

/// Where a push's totals are among the results of its MULTI/EXEC (which depends on whether
/// it added keys), and the stamp it wrote as first-write time if the store had none.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PushReplies {
    adds_keys: bool,
    now: u64,
}

impl PushReplies {
    /// The receipt in `results`, the replies inside EXEC of the push's transaction.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when a result does not have the expected type.
    pub(crate) fn read(self, store: &StoreName, results: &[Value]) -> Result<PushReceipt> {
        let reply = |index: usize| results.get(index).cloned().unwrap_or(Value::Nil);
        let keys_at = if self.adds_keys { 3 } else { 2 };
        let parse_error = |err: redis::ParsingError| Error::Corrupt {
            what: format!("push to store {store:?}: unexpected reply: {err}"),
        };
        let records: u64 = redis::from_redis_value(reply(0)).map_err(parse_error)?;
        let previous_first: Option<u64> = redis::from_redis_value(reply(1)).map_err(parse_error)?;
        let keys: u64 = redis::from_redis_value(reply(keys_at)).map_err(parse_error)?;
        let bytes: u64 = redis::from_redis_value(reply(keys_at + 1)).map_err(parse_error)?;
        Ok(PushReceipt {
            bytes,
            records,
            keys,
            first_write_ms: previous_first.unwrap_or(self.now),
        })
    }
}

/// A batch made by [`Buffer::prepare_to_persist`] or [`crate::LockGuard::prepare`]: frozen,
/// never changed again, waiting to be written out and emptied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PreparedBatch {
    /// The store it came from.
    #[serde(serialize_with = "serialize_display")]
    pub store: StoreName,
    /// Its id.
    #[serde(serialize_with = "serialize_display")]
    pub id: BatchId,
    /// Number of records.
    pub records: u64,
    /// Total size of the records in bytes.
    pub bytes: u64,
    /// Number of distinct top-level keys.
    pub keys: u64,
    /// When its first record was pushed (Unix ms).
    pub first_write_ms: u64,
}

fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// A live store as the indexes describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StoreSummary {
    /// The store.
    #[serde(serialize_with = "serialize_display")]
    pub store: StoreName,
    /// When its first live record was pushed (Unix ms).
    pub first_write_ms: u64,
    /// Size of its live records in bytes.
    pub bytes: u64,
    /// Number of live records.
    pub records: u64,
}

impl StoreSummary {
    /// A summary of `store` with no records (first write 0, no bytes): the indexes make these,
    /// and a dashboard's tests make their own and set the public fields by name.
    pub fn new(store: StoreName) -> Self {
        Self {
            store,
            first_write_ms: 0,
            bytes: 0,
            records: 0,
        }
    }
}

/// A prepared batch as the indexes describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PreparedSummary {
    /// The store it came from.
    #[serde(serialize_with = "serialize_display")]
    pub store: StoreName,
    /// Its id (which carries its creation time).
    #[serde(serialize_with = "serialize_display")]
    pub id: BatchId,
}

impl PreparedSummary {
    /// The summary of batch `id` of `store`.
    pub fn new(store: StoreName, id: BatchId) -> Self {
        Self { store, id }
    }
}

/// All the records and keys of a batch, loaded at once by [`Buffer::get_contents`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BatchContents {
    /// The records, in push order, as `Value`s (exact for numbers that fit an `i64`, `u64` or
    /// `f64`; [`Buffer::reader`] gives the exact texts).
    pub records: Vec<serde_json::Value>,
    /// The distinct top-level keys, sorted.
    pub keys: BTreeSet<String>,
}

/// The first keys of a batch, from [`Buffer::batch_first_keys`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FirstKeys {
    /// The smallest of the batch's unique top-level keys, sorted.
    pub keys: BTreeSet<String>,
    /// True when the batch has keys beyond these.
    pub more: bool,
}

/// A shared handle to the buffer. Cheap to clone; clones share one multiplexed connection
/// that reconnects on its own.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), buffer_core::Error> {
/// use buffer_core::{Buffer, BufferConfig};
/// use serde_json::json;
///
/// let buffer = Buffer::connect(BufferConfig::new("redis://127.0.0.1:6379")).await?;
/// let receipt = buffer.push("orders", &json!({"id": 1, "total": 9.5})).await?;
/// println!("{} records, {} bytes", receipt.records, receipt.bytes);
///
/// let ttl = std::time::Duration::from_secs(30);
/// if let Some(batch) = buffer.prepare_to_persist("orders", ttl).await? {
///     let mut reader = buffer.reader(&batch);
///     while let Some(page) = reader.next_page().await? {
///         for line in page {
///             println!("{line}");
///         }
///     }
///     buffer.empty(batch).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Buffer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Kept to open dedicated connections (pub/sub) next to the shared one.
    client: Client,
    /// The shared connection; clones of it multiplex over one socket and reconnect on error.
    conn: ConnectionManager,
    layout: KeyLayout,
    config: BufferConfig,
    /// The clock's offset to Redis time: measured by `connect` or the first stamp, refreshed
    /// by a short task `now_ms` spawns when it is stale; read by every clone.
    offset: RedisOffset,
    /// Which stores this producer knows to have limits, learned from its push replies and
    /// read before each push (see `crate::limits`).
    limits: crate::limits::LimitCache,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("url", &self.inner.config.redacted_url())
            .field("namespace", &self.inner.layout.namespace())
            .finish()
    }
}

impl Buffer {
    /// Connects to Redis and checks that it answers.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL; [`Error::Redis`] or [`Error::Timeout`] when the
    /// server cannot be reached or refuses the credentials.
    pub async fn connect(config: BufferConfig) -> Result<Self> {
        let buffer = Self::connect_lazy(config)?;
        let mut conn = buffer.conn();
        buffer
            .run("connect", "", async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await?;
        if buffer.inner.config.clock.corrected_by_redis_time() && buffer.inner.offset.try_begin() {
            buffer.measure_offset().await?;
        }
        Ok(buffer)
    }

    /// Sets up the connection without waiting for Redis: the first call connects. Used by
    /// long-running jobs and the dashboard, which must start while Redis is away.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL.
    pub fn connect_lazy(config: BufferConfig) -> Result<Self> {
        install_tls_provider();
        let client = Client::open(config.url.as_str()).map_err(|err| {
            Error::Config(format!(
                "invalid Redis URL {}: {err}",
                config.redacted_url()
            ))
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|err| Error::Config(format!("{}: {err}", config.redacted_url())))?;
        let layout = KeyLayout::new(config.namespace.clone(), config.groups);
        let offset = RedisOffset::new(config.clock_sync_interval);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                layout,
                config,
                offset,
                limits: Default::default(),
            }),
        })
    }

    /// The configuration this buffer was made with.
    pub fn config(&self) -> &BufferConfig {
        &self.inner.config
    }

    /// The holder id written into the locks this buffer takes.
    pub fn holder_id(&self) -> &str {
        &self.inner.config.holder_id
    }

    /// The current time on Redis's timeline (Unix ms): the configured clock plus its measured
    /// offset to Redis `TIME`, or the clock itself for a clock that opts out of correction
    /// ([`crate::ManualClock`]). Every time this buffer writes or compares in Redis is this.
    ///
    /// Never waits: when the offset is stale (or not measured yet, after
    /// [`Buffer::connect_lazy`]) it starts a measurement in the background, if called inside a
    /// Tokio runtime, and answers with the offset it has (none before the first measurement).
    pub fn now_ms(&self) -> u64 {
        let clock = &self.inner.config.clock;
        if !clock.corrected_by_redis_time() {
            return clock.now_ms();
        }
        if self.inner.offset.is_due()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && self.inner.offset.try_begin()
        {
            // Bounded by the response timeout; holding a clone only keeps the connection open
            // until then. A failure is retried by a later call after a short rest.
            let buffer = self.clone();
            runtime.spawn(async move {
                if let Err(err) = buffer.measure_offset().await {
                    tracing::debug!(error = %err, "could not measure the clock offset to Redis");
                }
            });
        }
        self.inner.offset.apply(clock.now_ms())
    }

    /// The measured offset of this buffer's clock to Redis `TIME` (Redis − clock, ms), or
    /// `None` when it is not measured (yet, or ever: a clock that opts out of correction).
    pub fn clock_offset_ms(&self) -> Option<i64> {
        self.inner.offset.offset_ms()
    }

    /// [`Buffer::now_ms`] for a time about to be written to or compared in Redis: the first
    /// such call after [`Buffer::connect_lazy`] measures the offset first (one extra round
    /// trip, once), so not even the first push of a lazily connected producer is stamped by
    /// a skewed clock.
    pub(crate) async fn stamp_ms(&self) -> Result<u64> {
        if self.inner.config.clock.corrected_by_redis_time()
            && self.inner.offset.offset_ms().is_none()
            && self.inner.offset.try_begin()
        {
            self.measure_offset().await?;
        }
        Ok(self.now_ms())
    }

    /// Measures the clock's offset to Redis `TIME`; the caller holds the measurement claimed
    /// with `RedisOffset::try_begin`, which this releases on every way out.
    ///
    /// A refusal of `TIME` itself (an ACL without it, a renamed command) is not fatal: it is
    /// logged and the clock is used uncorrected (offset 0) until the next interval. Every
    /// other error is returned, and the next stamp tries again.
    async fn measure_offset(&self) -> Result<()> {
        let clock = self.inner.config.clock.clone();
        let mut conn = self.conn();
        let before = clock.now_ms();
        let reply = self
            .run("clock offset", "", async move {
                redis::cmd("TIME")
                    .query_async::<(u64, u64)>(&mut conn)
                    .await
            })
            .await;
        let after = clock.now_ms();
        match reply {
            Ok((secs, micros)) => {
                let offset = clock::offset_from_round_trip(before, after, secs, micros);
                self.inner.offset.end(Some(offset));
                Ok(())
            }
            Err(err) if err.is_command_refused() => {
                tracing::warn!(error = %err, "Redis refused TIME: using this process's clock uncorrected");
                self.inner.offset.end(Some(0));
                Ok(())
            }
            Err(err) => {
                self.inner.offset.end(None);
                Err(err)
            }
        }
    }

    pub(crate) fn layout(&self) -> &KeyLayout {
        &self.inner.layout
    }

    pub(crate) fn limit_cache(&self) -> &crate::limits::LimitCache {
        &self.inner.limits
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Runs one Redis exchange under the response timeout, mapping its error.
    ///
    /// The connection manager has its own response timeout; this outer one also bounds
    /// connecting and reconnecting, so no call can hang on a frozen server.
    pub(crate) async fn run<T>(
        &self,
        op: &'static str,
        store: &str,
        exchange: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let config = &self.inner.config;
        let limit = config.response_timeout + config.connect_timeout;
        match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if err.is_timeout() => Err(Error::Timeout {
                op,
                store: store.to_owned(),
                timeout_ms: millis(config.response_timeout),
            }),
            Ok(Err(err)) => Err(Error::from_redis(op, store, err)),
            Err(_elapsed) => Err(Error::Timeout {
                op,
                store: store.to_owned(),
                timeout_ms: millis(limit),
            }),
        }
    }

    /// Appends one record to a store.
    ///
    /// The record must serialize to a JSON object. One MULTI/EXEC appends it, records the
    /// first-write time if this is the store's first record, adds its top-level keys to the
    /// store's key set, counts its bytes, updates the group indexes and reads the store's
    /// totals back. The push is acknowledged (`Ok`) only when EXEC succeeded and every reply
    /// inside it was a success of the expected type. A store that has (or may have) limits
    /// gets one script instead, which checks them and does the same (see
    /// [`Buffer::set_limits`]).
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`], [`Error::InvalidRecord`], [`Error::RecordTooLarge`] before
    /// anything is sent; [`Error::LimitExceeded`] when a limit of the store refused the push
    /// (nothing of it was stored); [`Error::WrongType`] or [`Error::OutOfMemory`] when Redis
    /// refused a command of the transaction; transient errors when Redis is unreachable or slow. After
    /// a timeout the push may or may not have been applied.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// #[derive(serde::Serialize)]
    /// struct Order { id: u64, total: f64 }
    /// let receipt = buffer.push("orders", &Order { id: 7, total: 12.5 }).await?;
    /// assert!(receipt.records >= 1);
    /// # Ok(()) }
    /// ```
    pub async fn push<S, T>(&self, store: S, record: &T) -> Result<PushReceipt>
    where
        S: TryInto<StoreName, Error = Error>,
        T: Serialize + ?Sized,
    {
        let store = store.try_into()?;
        let encoded = self.encode_record(&store, record)?;
        self.push_encoded(&store, encoded).await
    }

    /// Appends several records to a store in one transaction: all of them or none.
    ///
    /// # Errors
    /// As [`Buffer::push`]; every record is checked before anything is sent, and the error
    /// names the index of the first bad one. [`Error::NoRecords`] for an empty slice.
    pub async fn push_many<S, T>(&self, store: S, records: &[T]) -> Result<PushReceipt>
    where
        S: TryInto<StoreName, Error = Error>,
        T: Serialize,
    {
        let store = store.try_into()?;
        let encoded = self.encode_records(&store, records)?;
        self.push_encoded(&store, encoded).await
    }

    /// Appends records given as JSON texts (one object each, as in a JSON Lines file), in one
    /// transaction.
    ///
    /// # Errors
    /// As [`Buffer::push_many`]; a text that is not a JSON object is [`Error::InvalidRecord`].
    pub async fn push_json<S, J>(&self, store: S, texts: &[J]) -> Result<PushReceipt>
    where
        S: TryInto<StoreName, Error = Error>,
        J: AsRef<str>,
    {
        let store = store.try_into()?;
        let encoded = self.parse_records(&store, texts)?;
        self.push_encoded(&store, encoded).await
    }

    /// Appends records at most once per `push_id`: retrying with the same id after an error
    /// whose outcome is unknown ([`Error::is_outcome_unknown`]) never stores them twice. The
    /// id is remembered for the configured push-id TTL (default 24 h), also after the store
    /// is prepared or persisted. One atomic script: all records or none.
    ///
    /// # Errors
    /// As [`Buffer::push_many`]; [`Error::InvalidPushId`] unless the id is 1..=128 bytes of
    /// `[A-Za-z0-9._-]`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// let records = [serde_json::json!({"order": 17})];
    /// let outcome = loop {
    ///     match buffer.push_once("orders", "order-17", &records).await {
    ///         Err(err) if err.is_outcome_unknown() => continue, // safe to retry
    ///         other => break other?,
    ///     }
    /// };
    /// println!("duplicate: {}", outcome.duplicate);
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(level = "debug", skip_all, fields(push_id = push_id, records = records.len()))]
    pub async fn push_once<S, T>(
        &self,
        store: S,
        push_id: &str,
        records: &[T],
    ) -> Result<PushOnceOutcome>
    where
        S: TryInto<StoreName, Error = Error>,
        T: Serialize,
    {
        let store = store.try_into()?;
        let id_ok = (1..=128).contains(&push_id.len())
            && push_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(Error::InvalidPushId {
                id: crate::name::shorten(push_id),
            });
        }
        let max = self.inner.config.max_record_bytes;
        let records = records
            .iter()
            .enumerate()
            .map(|(index, record)| record::encode(&store, index, record, max))
            .collect::<Result<Vec<_>>>()?;
        if records.is_empty() {
            return Err(Error::NoRecords {
                store: store.to_string(),
            });
        }
        let layout = self.layout();
        let live = layout.live(&store);
        let group = layout.group_for(&store);
        let now = self.stamp_ms().await?;
        let bytes: usize = records.iter().map(|r| r.json.len()).sum();
        let keys = record::unique_keys(&records)?;
        let mut invocation = scripts::PUSH_ONCE.prepare_invoke();
        for key in live.all() {
            invocation.key(key);
        }
        invocation
            .key(&group.stores)
            .key(&group.bytes)
            .key(&group.count)
            .key(layout.push_id(&store, push_id))
            .key(&group.limits)
            .key(layout.rate(&store))
            .arg(now)
            .arg(store.encoded())
            .arg(bytes)
            .arg(records.len())
            .arg(millis(self.inner.config.push_id_ttl).max(1))
            .arg(keys.len())
            .arg(&keys);
        drop(keys);
        for record in records {
            invocation.arg(record.json);
        }
        let mut conn = self.conn();
        let reply: Vec<i64> = self
            .run("push_once", store.as_str(), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if let Some(refused) = crate::limits::refusal(&store, &reply) {
            return Err(refused);
        }
        let counts: Option<Vec<u64>> = reply.iter().map(|n| u64::try_from(*n).ok()).collect();
        let Some([duplicate, records, bytes, keys, first]) =
            counts.as_deref().and_then(|c| <[u64; 5]>::try_from(c).ok())
        else {
            return Err(Error::Corrupt {
                what: format!("push_once script replied {reply:?}"),
            });
        };
        Ok(PushOnceOutcome {
            receipt: PushReceipt {
                bytes,
                records,
                keys,
                first_write_ms: first,
            },
            duplicate: duplicate == 1,
        })
    }

    #[tracing::instrument(
        level = "debug",
        name = "push",
        skip_all,
        fields(store = %store, records = records.len())
    )]
    async fn push_encoded(
        &self,
        store: &StoreName,
        records: Vec<EncodedRecord>,
    ) -> Result<PushReceipt> {
        let now = self.stamp_ms().await?;
        if self.limit_cache().needs_script(store) {
            return self.push_limited(store, records, now).await;
        }
        let (commands, receipt) = self.push_transaction(store, records, now)?;
        let replies = transaction::exec(self, "push", store.as_str(), commands).await?;
        crate::limits::observe_probe(self, store, &replies);
        receipt.read(store, &replies)
    }

    /// The encoded record of a `push`, checked before anything is sent.
    pub(crate) fn encode_record<T: Serialize + ?Sized>(
        &self,
        store: &StoreName,
        record: &T,
    ) -> Result<Vec<EncodedRecord>> {
        let max = self.inner.config.max_record_bytes;
        Ok(vec![record::encode(store, 0, record, max)?])
    }

    /// The encoded records of a `push_many`, every one checked before anything is sent.
    pub(crate) fn encode_records<T: Serialize>(
        &self,
        store: &StoreName,
        records: &[T],
    ) -> Result<Vec<EncodedRecord>> {
        let max = self.inner.config.max_record_bytes;
        let encoded = records
            .iter()
            .enumerate()
            .map(|(index, record)| record::encode(store, index, record, max))
            .collect::<Result<Vec<_>>>()?;
        not_empty(store, encoded)
    }

    /// The encoded records of a `push_json`, every text checked before anything is sent.
    pub(crate) fn parse_records<J: AsRef<str>>(
        &self,
        store: &StoreName,
        texts: &[J],
    ) -> Result<Vec<EncodedRecord>> {
        let max = self.inner.config.max_record_bytes;
        let encoded = texts
            .iter()
            .enumerate()
            .map(|(index, text)| record::parse(store, index, text.as_ref(), max))
            .collect::<Result<Vec<_>>>()?;
        not_empty(store, encoded)
    }

    /// The commands of one push's MULTI/EXEC, stamped `now`, and how to read its receipt
    /// from their results. The one place a push is spelled: [`Buffer::push`] and
    /// [`crate::PushPipeline`] both send exactly this, so their receipts agree.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a record is not a JSON object, which encoding rules out.
    pub(crate) fn push_transaction(
        &self,
        store: &StoreName,
        records: Vec<EncodedRecord>,
        now: u64,
    ) -> Result<(Vec<Cmd>, PushReplies)> {
        let layout = self.layout();
        let live = layout.live(store);
        let group = layout.group_for(store);
        let bytes: usize = records.iter().map(|r| r.json.len()).sum();
        let count = records.len();
        let run = run_entry(&records);
        // The SADD is built from borrowed keys (its arguments are copied into the command), so
        // no key is cloned, and the record texts then move into the RPUSH without a copy.
        let unique_keys = record::unique_keys(&records)?;
        let add_keys =
            (!unique_keys.is_empty()).then(|| redis::Cmd::sadd(&live.keys, &unique_keys));
        drop(unique_keys);
        let jsons: Vec<String> = records.into_iter().map(|r| r.json).collect();

        let mut set_first = redis::cmd("SET");
        set_first.arg(&live.first).arg(now).arg("NX").arg("GET");
        let mut add_to_index = redis::cmd("ZADD");
        add_to_index
            .arg(&group.stores)
            .arg("NX")
            .arg(now)
            .arg(store.encoded());
        let mut commands = vec![
            redis::Cmd::rpush(&live.records, jsons),
            set_first,
            redis::Cmd::scard(&live.keys),
            redis::Cmd::incr(&live.bytes, bytes),
            add_to_index,
            redis::Cmd::zincr(&group.bytes, store.encoded(), bytes),
            redis::Cmd::zincr(&group.count, store.encoded(), count),
            // After the totals, so the replies read below keep their places: this push's entry
            // in the run list that lets readers size pages by bytes (see `BatchReader`).
            redis::Cmd::rpush(&live.runs, run),
        ];
        // Last: whether the store has limits, and when Redis ran this, so the producer's next
        // push to it goes through the limits script once it has (see `crate::limits`).
        commands.extend(crate::limits::probe(self, store));
        let adds_keys = add_keys.is_some();
        if let Some(add_keys) = add_keys {
            // Before SCARD, so the count includes this push's keys.
            commands.insert(2, add_keys);
        }
        Ok((commands, PushReplies { adds_keys, now }))
    }

    /// Freezes a store's records into a new batch, atomically, and returns it locked to the
    /// caller: pushes that follow land in a fresh live buffer, and the batch never changes
    /// again.
    ///
    /// The batch is created under a lock with time to live `ttl` (taken on the store, handed to
    /// the batch in the same script that creates it), and a heartbeat extends it every `ttl`/3
    /// while the returned [`LockedBatch`] lives. So a persister's recovery pass, which takes
    /// only batches whose lock is free, never writes or deletes a batch you hold. Read it with
    /// [`Buffer::reader`], then delete it with [`Buffer::empty`] (or hand it back to the
    /// persisters with [`LockedBatch::release`]). If your process dies, the lock expires after
    /// `ttl` and a persister writes the batch.
    ///
    /// Returns `Ok(None)` when there is nothing to prepare for you now: the store has no
    /// records, or another process holds the store's lock because it is preparing the store
    /// this very moment (its batch then takes the records).
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; [`Error::Config`] for a zero TTL; [`Error::WrongType`]
    /// when a key of the store holds the wrong type (nothing is moved then); transient errors.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use std::time::Duration;
    /// match buffer.prepare_to_persist("orders", Duration::from_secs(30)).await? {
    ///     Some(batch) => {
    ///         println!("batch {} holds {} records", batch.id, batch.records);
    ///         buffer.empty(batch).await?;
    ///     }
    ///     None => println!("nothing to persist"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn prepare_to_persist<S>(
        &self,
        store: S,
        ttl: Duration,
    ) -> Result<Option<LockedBatch>>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        let Some(mut guard) = self.lock_target(LockTarget::Store(store), ttl).await? else {
            return Ok(None);
        };
        // The heartbeat starts on the store lock and moves with it to the batch's lock, so
        // the batch is never unlocked, not even between its creation and this return.
        let prepared = match guard.keep_alive() {
            Ok(()) => guard.prepare().await,
            Err(err) => Err(err),
        };
        match prepared {
            Ok(Some(batch)) => Ok(Some(LockedBatch::new(batch, guard))),
            Ok(None) => {
                guard.release().await?;
                Ok(None)
            }
            Err(err) => {
                // Nothing was prepared; free the store lock for the next preparer (if this
                // fails too, it expires after `ttl`).
                let _ = guard.release().await;
                Err(err)
            }
        }
    }

    /// Runs the prepare script, retrying with a new id when the id is already taken (two
    /// prepares of one store in the same millisecond never merge). With `lock_value`, the
    /// store lock must hold it, and the batch lock is set to it for `lock_ttl`.
    #[tracing::instrument(level = "debug", skip_all, fields(store = %store))]
    pub(crate) async fn prepare(
        &self,
        store: &StoreName,
        lock_value: Option<&str>,
        lock_ttl: Duration,
    ) -> Result<PrepareOutcome> {
        let layout = self.layout();
        let live = layout.live(store);
        let group = layout.group_for(store);
        for _attempt in 0..16 {
            let id = BatchId::new(self.stamp_ms().await?);
            let batch = layout.batch(store, &id);
            let mut invocation = scripts::PREPARE.prepare_invoke();
            for key in live.all().into_iter().chain(batch.all()) {
                invocation.key(key);
            }
            invocation
                .key(&group.stores)
                .key(&group.bytes)
                .key(&group.count)
                .key(&group.prepared)
                .key(layout.store_lock(store))
                .key(layout.batch_lock(store, &id))
                .arg(store.encoded())
                .arg(KeyLayout::prepared_member(store, &id))
                .arg(id.created_ms())
                .arg(lock_value.unwrap_or(""))
                .arg(millis(lock_ttl));
            let mut conn = self.conn();
            let reply: Vec<i64> = self
                .run("prepare_to_persist", store.as_str(), async move {
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            let count = |value: &i64| u64::try_from(*value).unwrap_or(0);
            match reply.as_slice() {
                [0] => return Ok(PrepareOutcome::Empty),
                [-1] => return Ok(PrepareOutcome::LockLost),
                [-2] => {}
                [1, records, bytes, keys, first] => {
                    // A store without a first-write stamp (the script replies 0) takes the
                    // batch's own time, as `batch_info` does: a batch's first write must read
                    // the same when it is prepared and when it is recovered (file paths are
                    // made from it).
                    let first_write_ms = match count(first) {
                        0 => id.created_ms(),
                        stamp => stamp,
                    };
                    return Ok(PrepareOutcome::Prepared(PreparedBatch {
                        store: store.clone(),
                        id,
                        records: count(records),
                        bytes: count(bytes),
                        keys: count(keys),
                        first_write_ms,
                    }));
                }
                other => {
                    return Err(Error::Corrupt {
                        what: format!("prepare script replied {other:?}"),
                    });
                }
            }
            tracing::debug!(store = %store, batch = %id, "batch id already taken, picking another");
        }
        Err(Error::Corrupt {
            what: format!("could not find a free batch id for store {store:?} in 16 attempts"),
        })
    }

    pub(crate) async fn lock_value_matches(&self, key: &str, value: &str) -> Result<bool> {
        let mut conn = self.conn();
        let key = key.to_owned();
        let current: Option<String> = self
            .run("lock", "", async move {
                redis::cmd("GET").arg(key).query_async(&mut conn).await
            })
            .await?;
        Ok(current.as_deref() == Some(value))
    }

    /// Reads a batch's counts, or `None` when it does not exist (it was emptied).
    ///
    /// # Errors
    /// [`Error::WrongType`] when a batch key holds the wrong type; transient errors.
    pub async fn batch_info(
        &self,
        store: &StoreName,
        batch: &BatchId,
    ) -> Result<Option<PreparedBatch>> {
        let keys = self.layout().batch(store, batch);
        let mut pipe = redis::pipe();
        pipe.exists(&keys.records)
            .llen(&keys.records)
            .get(&keys.bytes)
            .scard(&keys.keys)
            .get(&keys.first);
        let mut conn = self.conn();
        let (exists, records, bytes, key_count, first): (bool, u64, Option<u64>, u64, Option<u64>) =
            self.run("batch_info", store.as_str(), async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        Ok(exists.then(|| PreparedBatch {
            store: store.clone(),
            id: batch.clone(),
            records,
            bytes: bytes.unwrap_or(0),
            keys: key_count,
            first_write_ms: first.unwrap_or(batch.created_ms()),
        }))
    }

    /// A reader that streams a batch's records page by page, in push order, as the JSON texts
    /// that were pushed. A page holds at most `page_size` records and at most `page_bytes`
    /// bytes of them (or one record, when that record alone is larger), whatever the batch's
    /// mix of record sizes: the reader plans each page from the batch's run list before it
    /// reads it.
    pub fn reader(&self, batch: &PreparedBatch) -> BatchReader {
        let config = &self.inner.config;
        let keys = self.layout().batch(&batch.store, &batch.id);
        BatchReader {
            buffer: self.clone(),
            key: keys.records,
            runs_key: keys.runs,
            store: batch.store.clone(),
            batch: batch.id.clone(),
            next: 0,
            total: batch.records,
            page_size: config.page_size as u64,
            page_bytes: config.page_bytes as u64,
            sizing: PageSizing::Runs {
                ahead: VecDeque::new(),
                next_entry: 0,
                exhausted: false,
            },
        }
    }

    /// Loads a whole batch: its records as `serde_json::Value`s and its sorted unique keys.
    /// Use [`Buffer::reader`] for batches that may not fit in memory, and for the records'
    /// exact texts.
    ///
    /// A `Value` holds a number as an `i64`, a `u64` or an `f64`, so this form is exact for
    /// every number that fits one of those; a longer integer or a decimal with more digits
    /// than an `f64` holds becomes the nearest `f64`. The texts in Redis (and so in the
    /// persister's files and from [`Buffer::reader`]) keep every number exactly as pushed.
    ///
    /// # Errors
    /// [`Error::BatchNotFound`] when the batch does not exist; [`Error::NotAValue`] when a
    /// record is valid JSON that no `Value` can hold (a number beyond `f64`'s range such as
    /// `1e400`, or nesting deeper than 128); [`Error::Corrupt`] when a record is not JSON;
    /// transient errors.
    pub async fn get_contents(&self, store: &StoreName, batch: &BatchId) -> Result<BatchContents> {
        let info = self
            .batch_info(store, batch)
            .await?
            .ok_or_else(|| Error::BatchNotFound {
                store: store.to_string(),
                batch: batch.to_string(),
            })?;
        let mut reader = self.reader(&info);
        let mut records = Vec::with_capacity(usize::try_from(info.records).unwrap_or(0));
        while let Some(page) = reader.next_page().await? {
            for text in page {
                let index = records.len() as u64;
                records.push(record::to_value(&text).map_err(|failure| match failure {
                    record::ValueFailure::NotJson(err) => Error::Corrupt {
                        what: format!(
                            "record {index} of batch {batch} of store {store:?} is not JSON: {err}"
                        ),
                    },
                    record::ValueFailure::NotRepresentable(err) => Error::NotAValue {
                        store: store.to_string(),
                        batch: batch.to_string(),
                        index,
                        reason: err.to_string(),
                    },
                })?);
            }
        }
        let keys = self.batch_keys(store, batch).await?;
        Ok(BatchContents { records, keys })
    }

    /// The sorted unique top-level keys of a batch's records (read with SSCAN, so a huge key
    /// set never blocks Redis).
    ///
    /// # Errors
    /// Transient errors; [`Error::WrongType`].
    pub async fn batch_keys(&self, store: &StoreName, batch: &BatchId) -> Result<BTreeSet<String>> {
        let key = self.layout().batch(store, batch).keys;
        self.scan_set(store, key, usize::MAX).await
    }

    /// The `limit` smallest of a batch's unique top-level keys, sorted, and whether it has
    /// more. Reads the set with SSCAN and keeps at most `limit` keys in memory, so a batch with
    /// millions of distinct keys costs no more than `limit` of them. A prepared batch never
    /// changes, so the answer is the same every time.
    ///
    /// # Errors
    /// Transient errors; [`Error::WrongType`].
    pub async fn batch_first_keys(
        &self,
        store: &StoreName,
        batch: &BatchId,
        limit: usize,
    ) -> Result<FirstKeys> {
        let key = self.layout().batch(store, batch).keys;
        let mut first = FirstKeys::default();
        let mut cursor: u64 = 0;
        loop {
            let (next, page) = self.sscan_page(store, &key, cursor).await?;
            for member in page {
                // SSCAN may return a member twice: only a key outside the kept set is "more".
                if first.keys.contains(&member) {
                    continue;
                }
                first.keys.insert(member);
                if first.keys.len() > limit {
                    first.keys.pop_last();
                    first.more = true;
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(first);
            }
        }
    }

    /// Whether `key` is one of a batch's unique top-level keys (one SISMEMBER).
    ///
    /// # Errors
    /// Transient errors; [`Error::WrongType`].
    pub async fn batch_has_key(
        &self,
        store: &StoreName,
        batch: &BatchId,
        key: &str,
    ) -> Result<bool> {
        let set = self.layout().batch(store, batch).keys;
        let member = key.to_owned();
        let mut conn = self.conn();
        self.run("check key", store.as_str(), async move {
            redis::cmd("SISMEMBER")
                .arg(set)
                .arg(member)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// How many unique top-level keys each live store has (exact: one SCARD each, in one
    /// pipelined round trip), in the order given; 0 for a store with no live records.
    ///
    /// # Errors
    /// Transient errors; a Redis error (`is_wrong_type()`) when a key was tampered with.
    pub async fn store_key_counts(&self, stores: &[StoreName]) -> Result<Vec<u64>> {
        if stores.is_empty() {
            return Ok(Vec::new());
        }
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for store in stores {
            pipe.scard(layout.live(store).keys);
        }
        let mut conn = self.conn();
        self.run("count keys", "", async move {
            pipe.query_async(&mut conn).await
        })
        .await
    }

    /// Up to `limit` of the unique top-level keys of a live store, sorted.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; transient errors.
    pub async fn store_keys<S>(&self, store: S, limit: usize) -> Result<BTreeSet<String>>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        let key = self.layout().live(&store).keys;
        self.scan_set(&store, key, limit).await
    }

    /// One SSCAN step over a key set: the next cursor (0 when done) and a page of members, which
    /// may repeat members of earlier pages. COUNT 500 keeps every step short on the server.
    async fn sscan_page(
        &self,
        store: &StoreName,
        key: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<String>)> {
        let mut conn = self.conn();
        let key = key.to_owned();
        self.run("scan keys", store.as_str(), async move {
            redis::cmd("SSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    async fn scan_set(
        &self,
        store: &StoreName,
        key: String,
        limit: usize,
    ) -> Result<BTreeSet<String>> {
        let mut members = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page) = self.sscan_page(store, &key, cursor).await?;
            members.extend(page);
            cursor = next;
            if cursor == 0 || members.len() >= limit {
                break;
            }
        }
        while members.len() > limit {
            members.pop_last();
        }
        Ok(members)
    }

    /// The last `count` records pushed to a live store, oldest first, as JSON texts.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; transient errors.
    pub async fn latest_records<S>(&self, store: S, count: usize) -> Result<Vec<String>>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let key = self.layout().live(&store).records;
        let mut conn = self.conn();
        let start = -i64::try_from(count).unwrap_or(i64::MAX);
        self.run("latest_records", store.as_str(), async move {
            redis::cmd("LRANGE")
                .arg(key)
                .arg(start)
                .arg(-1)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// Deletes a batch you hold (from [`Buffer::prepare_to_persist`]) with its index entry and
    /// its lock, only if the lock is still yours: a caller whose lock expired or was taken
    /// deletes nothing. One script of GET, UNLINK, ZREM and DEL (no MULTI), so it works when
    /// Redis is out of memory.
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock is no longer yours (nothing was deleted; whoever holds
    /// the batch now writes it); transient errors (the batch stays, and is recovered by a
    /// persister once the lock expires).
    pub async fn empty(&self, batch: LockedBatch) -> Result<()> {
        batch.empty().await
    }

    /// Every live store, with its first-write time, bytes and records, from the group indexes.
    /// Index entries that are not encoded names (foreign writes) are skipped with a warning.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn stores(&self) -> Result<Vec<StoreSummary>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            let group = layout.group(g);
            pipe.zrange_withscores(&group.stores, 0, -1)
                .zrange_withscores(&group.bytes, 0, -1)
                .zrange_withscores(&group.count, 0, -1);
        }
        let mut conn = self.conn();
        let replies: Vec<Vec<(String, f64)>> = self
            .run(
                "stores",
                "",
                async move { pipe.query_async(&mut conn).await },
            )
            .await?;
        let mut out = Vec::new();
        for chunk in replies.chunks(3) {
            let [stores, bytes, counts] = chunk else {
                continue;
            };
            let bytes: HashMap<&str, f64> = bytes.iter().map(|(m, s)| (m.as_str(), *s)).collect();
            let counts: HashMap<&str, f64> = counts.iter().map(|(m, s)| (m.as_str(), *s)).collect();
            for (member, first) in stores {
                let Some(store) = index_entry(member) else {
                    continue;
                };
                out.push(StoreSummary {
                    store,
                    first_write_ms: score(*first),
                    bytes: bytes.get(member.as_str()).copied().map_or(0, score),
                    records: counts.get(member.as_str()).copied().map_or(0, score),
                });
            }
        }
        out.sort_by(|a, b| a.store.cmp(&b.store));
        Ok(out)
    }

    /// The live stores whose first write is at least `older_than` ago, oldest first.
    ///
    /// # Errors
    /// As [`Buffer::stores`].
    pub async fn get_old(&self, older_than: Duration) -> Result<Vec<StoreSummary>> {
        let cutoff = self.stamp_ms().await?.saturating_sub(millis(older_than));
        self.select_by_score(Selector::FirstWriteAtMost(cutoff))
            .await
    }

    /// When the oldest live store's first record was pushed (Unix ms), or `None` when no store
    /// has live records. One `ZRANGE <stores> 0 0 WITHSCORES` per group in one pipeline, so
    /// it costs the same with ten stores or ten thousand (the persister's lag gauge).
    ///
    /// # Errors
    /// Transient errors.
    pub async fn oldest_first_write_ms(&self) -> Result<Option<u64>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            pipe.zrange_withscores(layout.group(g).stores, 0, 0);
        }
        let mut conn = self.conn();
        let oldest: Vec<Vec<(String, f64)>> = self
            .run("oldest store", "", async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        Ok(oldest
            .into_iter()
            .flatten()
            .map(|(_member, first)| score(first))
            .min())
    }

    /// The live stores holding at least `min_bytes` bytes or at least `min_records` records.
    ///
    /// # Errors
    /// As [`Buffer::stores`].
    pub async fn get_large(
        &self,
        min_bytes: Option<u64>,
        min_records: Option<u64>,
    ) -> Result<Vec<StoreSummary>> {
        let mut found: Vec<StoreSummary> = Vec::new();
        if let Some(min) = min_bytes {
            found.extend(self.select_by_score(Selector::BytesAtLeast(min)).await?);
        }
        if let Some(min) = min_records {
            found.extend(self.select_by_score(Selector::RecordsAtLeast(min)).await?);
        }
        found.sort_by(|a, b| a.store.cmp(&b.store));
        found.dedup_by(|a, b| a.store == b.store);
        Ok(found)
    }

    async fn select_by_score(&self, selector: Selector) -> Result<Vec<StoreSummary>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            let group = layout.group(g);
            let (key, min, max) = match selector {
                Selector::FirstWriteAtMost(cutoff) => {
                    (group.stores, "-inf".to_owned(), cutoff.to_string())
                }
                Selector::BytesAtLeast(min) => (group.bytes, min.to_string(), "+inf".to_owned()),
                Selector::RecordsAtLeast(min) => (group.count, min.to_string(), "+inf".to_owned()),
            };
            pipe.cmd("ZRANGE").arg(key).arg(min).arg(max).arg("BYSCORE");
        }
        let mut conn = self.conn();
        let members: Vec<Vec<String>> = self
            .run("select stores", "", async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        // Second round trip: the three scores of just the selected stores.
        let mut selected = Vec::new();
        let mut pipe = redis::pipe();
        for (g, members) in (0..layout.groups()).zip(members) {
            let group = layout.group(g);
            for member in members {
                pipe.zscore(&group.stores, &member)
                    .zscore(&group.bytes, &member)
                    .zscore(&group.count, &member);
                selected.push(member);
            }
        }
        if selected.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let scores: Vec<Option<f64>> = self
            .run("select stores", "", async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        let mut out = Vec::with_capacity(selected.len());
        for (member, scores) in selected.iter().zip(scores.chunks(3)) {
            let [first, bytes, records] = scores else {
                continue;
            };
            // A store prepared between the two round trips has no first-write entry: skip it.
            let Some(first) = first else { continue };
            let Some(store) = index_entry(member) else {
                continue;
            };
            out.push(StoreSummary {
                store,
                first_write_ms: score(*first),
                bytes: bytes.map_or(0, score),
                records: records.map_or(0, score),
            });
        }
        out.sort_by_key(|s| s.first_write_ms);
        Ok(out)
    }

    /// Every prepared batch waiting to be persisted, oldest first, from the group indexes.
    /// Malformed entries (foreign writes) are skipped with a warning.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn get_prepared(&self) -> Result<Vec<PreparedSummary>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            pipe.zrange(layout.group(g).prepared, 0, -1);
        }
        let mut conn = self.conn();
        let groups: Vec<Vec<String>> = self
            .run("get_prepared", "", async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        let mut out = Vec::new();
        for member in groups.into_iter().flatten() {
            let parsed = member.split_once(':').and_then(|(id, encoded)| {
                Some(PreparedSummary {
                    id: id.parse().ok()?,
                    store: index_entry(encoded)?,
                })
            });
            match parsed {
                Some(summary) => out.push(summary),
                None => {
                    tracing::warn!(entry = %member, "skipping a malformed prepared-index entry")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The pub/sub channel events are published on, `<namespace>:events`.
    pub(crate) fn events_channel(&self) -> String {
        self.layout().events_channel()
    }
}

#[derive(Clone, Copy)]
enum Selector {
    FirstWriteAtMost(u64),
    BytesAtLeast(u64),
    RecordsAtLeast(u64),
}

pub(crate) enum PrepareOutcome {
    Prepared(PreparedBatch),
    Empty,
    LockLost,
}

/// Streams one batch's records page by page (LRANGE in pages, so no command reads much and
/// no page holds much).
///
/// Pages are bounded by bytes as well as by records. Every push also appended one entry
/// `<count>:<bytes>:<max record bytes>` to the store's run list in the same transaction, and
/// prepare renamed that list with the batch, so the runs describe the batch's records exactly.
/// The reader reads runs ahead (small entries, 1024 at a time) and plans each page
/// so that the bound on its bytes, `min(k × max, run bytes left)` summed over its runs, stays
/// within `page_bytes` (at least one record), then LRANGEs exactly that range.
///
/// A batch without a run list (written by an older version), or whose runs turn out not to
/// match its records, is read with pages sized by the bytes actually seen: the next page
/// shrinks at once to what the largest record seen would allow, and grows at most twofold.
#[derive(Debug)]
pub struct BatchReader {
    buffer: Buffer,
    key: String,
    runs_key: String,
    store: StoreName,
    batch: BatchId,
    next: u64,
    total: u64,
    page_size: u64,
    page_bytes: u64,
    sizing: PageSizing,
}

/// How many run entries one read of the run list fetches (about 20 bytes each).
const RUNS_PER_READ: u64 = 1024;

/// How the next page's length is chosen.
#[derive(Debug)]
enum PageSizing {
    /// From the batch's run list: `ahead` starts with the run holding record `next` (counts
    /// and bytes of that run already read are subtracted); `next_entry` is the index of the
    /// first run-list entry not fetched yet.
    Runs {
        ahead: VecDeque<Run>,
        next_entry: u64,
        exhausted: bool,
    },
    /// No usable run list: the length of the next page, adapted to the bytes seen.
    Adaptive { next_len: u64 },
}

/// One push's records, as its run entry describes them (what is left of them to read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    count: u64,
    bytes: u64,
    max: u64,
}

impl Run {
    fn parse(entry: &str) -> Option<Self> {
        let mut parts = entry.split(':').map(str::parse::<u64>);
        let run = Self {
            count: parts.next()?.ok()?,
            bytes: parts.next()?.ok()?,
            max: parts.next()?.ok()?,
        };
        (parts.next().is_none() && run.count > 0).then_some(run)
    }
}

/// The entry of one push in its store's run list: `<count>:<bytes>:<max record bytes>`.
fn run_entry(records: &[EncodedRecord]) -> String {
    let bytes: usize = records.iter().map(|r| r.json.len()).sum();
    let max = records.iter().map(|r| r.json.len()).max().unwrap_or(0);
    format!("{}:{bytes}:{max}", records.len())
}

/// The first page a batch without a run list is read with: small, since nothing is known of
/// its records yet.
const ADAPTIVE_FIRST_PAGE: u64 = 16;

/// Plans the next page from the runs ahead: how many records it takes so that the bound on its
/// bytes stays within `budget` (at least one record) and its length within `cap`. Returns that
/// count, and whether more runs must be read first to decide (every run ahead fits and `more`
/// says the run list goes on).
fn plan_from_runs(ahead: &VecDeque<Run>, cap: u64, budget: u64, more: bool) -> (u64, bool) {
    let mut planned = 0u64;
    let mut bytes = 0u64;
    for run in ahead {
        let room = cap - planned;
        if run.count <= room && bytes.saturating_add(run.bytes) <= budget {
            planned += run.count;
            bytes += run.bytes;
            if planned == cap {
                return (planned, false);
            }
            continue;
        }
        // Only part of this run fits: as many records as its largest one allows.
        let left = budget.saturating_sub(bytes);
        let by_bytes = if run.bytes <= left {
            run.count
        } else {
            left / run.max.max(1)
        };
        let take = room.min(run.count).min(by_bytes);
        // A record larger than the whole budget still makes a page, of its own.
        let take = if planned == 0 { take.max(1) } else { take };
        return (planned + take, false);
    }
    (planned, more)
}

/// Takes a page just read off the runs ahead. False when the runs did not tell the truth about
/// it (a record larger than its run's max, a run's bytes exceeded, or no run left).
fn consume_runs(ahead: &mut VecDeque<Run>, page: &[String]) -> bool {
    for record in page {
        let len = record.len() as u64;
        let Some(run) = ahead.front_mut() else {
            return false;
        };
        if len > run.max || len > run.bytes {
            return false;
        }
        run.count -= 1;
        run.bytes -= len;
        if run.count == 0 {
            ahead.pop_front();
        }
    }
    true
}

impl BatchReader {
    /// The next page of records as JSON texts, or `None` after the last one.
    ///
    /// # Errors
    /// [`Error::BatchNotFound`] when the batch disappeared (or shrank) while being read;
    /// transient errors.
    #[tracing::instrument(
        level = "debug",
        name = "read_page",
        skip_all,
        fields(store = %self.store, batch = %self.batch, from = self.next)
    )]
    pub async fn next_page(&mut self) -> Result<Option<Vec<String>>> {
        if self.next >= self.total {
            return Ok(None);
        }
        let cap = self.page_size.min(self.total - self.next);
        let want = self.plan(cap).await?;
        let start = self.next;
        let stop = start + want - 1;
        let key = self.key.clone();
        let mut conn = self.buffer.conn();
        let page: Vec<String> = self
            .buffer
            .run("read batch", self.store.as_str(), async move {
                redis::cmd("LRANGE")
                    .arg(key)
                    .arg(start)
                    .arg(stop)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if page.len() as u64 != want {
            return Err(Error::BatchNotFound {
                store: self.store.to_string(),
                batch: self.batch.to_string(),
            });
        }
        self.next += want;
        self.account(&page);
        Ok(Some(page))
    }

    /// The next page of records, each decoded from its JSON text into a `T`, or `None` after
    /// the last page. The page is planned and read as by [`BatchReader::next_page`].
    ///
    /// # Errors
    /// [`Error::RecordNotDecoded`], naming the record's index in the batch, when a record of
    /// the page does not decode into a `T` (the reader has then moved past that page; the
    /// batch itself is untouched in Redis, and a new [`Buffer::reader`] reads it again from
    /// the start); otherwise as [`BatchReader::next_page`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64, total: f64 }
    ///
    /// if let Some(batch) = buffer.prepare_to_persist("orders", Duration::from_secs(30)).await? {
    ///     let mut reader = buffer.reader(&batch);
    ///     while let Some(orders) = reader.next_page_as::<Order>().await? {
    ///         for order in orders {
    ///             println!("order {} of {}", order.id, order.total);
    ///         }
    ///     }
    ///     buffer.empty(batch).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_page_as<T: DeserializeOwned>(&mut self) -> Result<Option<Vec<T>>> {
        let Some(page) = self.next_page().await? else {
            return Ok(None);
        };
        let first = self.next - page.len() as u64;
        page.iter()
            .zip(first..)
            .map(|(text, index)| {
                serde_json::from_str(text).map_err(|err| Error::RecordNotDecoded {
                    store: self.store.to_string(),
                    batch: self.batch.to_string(),
                    index,
                    type_name: std::any::type_name::<T>(),
                    reason: err.to_string(),
                })
            })
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }

    /// The batch's records, one by one in push order, as the JSON texts that were pushed: a
    /// [`Stream`] over [`BatchReader::next_page`], reading one page at a time as it is
    /// consumed, so it holds at most one page in memory.
    ///
    /// The stream ends after the last record, or after yielding the first error (a transient
    /// error, or [`Error::BatchNotFound`] when the batch disappeared while being read).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use std::time::Duration;
    /// use futures::TryStreamExt;
    ///
    /// if let Some(batch) = buffer.prepare_to_persist("orders", Duration::from_secs(30)).await? {
    ///     let mut records = std::pin::pin!(buffer.reader(&batch).into_stream());
    ///     while let Some(record) = records.try_next().await? {
    ///         println!("{record}");
    ///     }
    ///     buffer.empty(batch).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn into_stream(self) -> impl Stream<Item = Result<String>> + Send + 'static {
        stream::try_unfold(self, |mut reader| async move {
            let page = reader.next_page().await?;
            Ok(page.map(|page| (stream::iter(page.into_iter().map(Ok)), reader)))
        })
        .try_flatten()
    }

    /// How many records have been returned so far.
    pub fn records_read(&self) -> u64 {
        self.next
    }

    /// How many records the next page reads (1..=cap), reading more runs when needed.
    async fn plan(&mut self, cap: u64) -> Result<u64> {
        loop {
            let (next_entry, exhausted) = match &self.sizing {
                PageSizing::Adaptive { next_len } => return Ok((*next_len).clamp(1, cap)),
                PageSizing::Runs {
                    ahead,
                    next_entry,
                    exhausted,
                } => {
                    let (planned, needs_more) =
                        plan_from_runs(ahead, cap, self.page_bytes, !*exhausted);
                    if planned > 0 && !needs_more {
                        return Ok(planned);
                    }
                    (*next_entry, *exhausted)
                }
            };
            if exhausted {
                // The runs describe fewer records than the batch holds: there are none (a
                // batch written by an older version) or they are not this batch's.
                if next_entry > 0 {
                    tracing::warn!(store = %self.store, batch = %self.batch,
                        "the batch's run list ends before its records; sizing pages by bytes seen");
                }
                self.sizing = PageSizing::Adaptive {
                    next_len: ADAPTIVE_FIRST_PAGE,
                };
                continue;
            }
            let key = self.runs_key.clone();
            let mut conn = self.buffer.conn();
            let entries: Vec<String> = self
                .buffer
                .run("read batch runs", self.store.as_str(), async move {
                    redis::cmd("LRANGE")
                        .arg(key)
                        .arg(next_entry)
                        .arg(next_entry + RUNS_PER_READ - 1)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let runs: Option<Vec<Run>> = entries.iter().map(|e| Run::parse(e)).collect();
            match (&mut self.sizing, runs) {
                (
                    PageSizing::Runs {
                        ahead,
                        next_entry,
                        exhausted,
                    },
                    Some(runs),
                ) => {
                    *next_entry += entries.len() as u64;
                    *exhausted = (entries.len() as u64) < RUNS_PER_READ;
                    ahead.extend(runs);
                }
                _ => {
                    tracing::warn!(store = %self.store, batch = %self.batch,
                        "malformed entry in the batch's run list; sizing pages by bytes seen");
                    self.sizing = PageSizing::Adaptive {
                        next_len: ADAPTIVE_FIRST_PAGE,
                    };
                }
            }
        }
    }

    /// Accounts for a page just read: takes it off the runs ahead (falling back to sizing by
    /// bytes seen when they did not describe it), or sets the next adaptive page length.
    fn account(&mut self, page: &[String]) {
        let largest = page.iter().map(String::len).max().unwrap_or(0) as u64;
        // How many records as large as the largest one seen fit the budget (at least one).
        let fit = (self.page_bytes / largest.max(1)).max(1);
        match &mut self.sizing {
            PageSizing::Runs { ahead, .. } => {
                if !consume_runs(ahead, page) {
                    tracing::warn!(store = %self.store, batch = %self.batch,
                        "the batch's run list does not match its records; sizing pages by bytes seen");
                    self.sizing = PageSizing::Adaptive {
                        next_len: fit.min(ADAPTIVE_FIRST_PAGE),
                    };
                }
            }
            PageSizing::Adaptive { next_len } => {
                // Shrink at once to what the largest record seen allows; grow at most twofold.
                *next_len = fit.min((page.len() as u64).saturating_mul(2)).max(1);
            }
        }
    }
}

/// Decodes a store name from an index. A malformed entry (only a foreign writer can make one)
/// is skipped with a warning, so one bad entry cannot hide every other store.
fn index_entry(encoded: &str) -> Option<StoreName> {
    match StoreName::from_encoded(encoded) {
        Ok(store) => Some(store),
        Err(err) => {
            tracing::warn!(entry = %encoded, error = %err, "skipping a malformed index entry");
            None
        }
    }
}

pub(crate) use crate::clock::millis;

fn score(value: f64) -> u64 {
    // Scores are integers we wrote (ms, byte and record counts), exact below 2^53.
    if value.is_finite() && value > 0.0 {
        value as u64
    } else {
        0
    }
}

fn install_tls_provider() {
    // rustls needs one process-wide crypto provider; installing fails harmlessly when another
    // part of the program already installed one.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(list: &[(u64, u64, u64)]) -> VecDeque<Run> {
        list.iter()
            .map(|&(count, bytes, max)| Run { count, bytes, max })
            .collect()
    }

    #[test]
    fn pages_are_planned_within_the_byte_budget() {
        // Whole runs while they fit, then as many records of the next run as its max allows.
        let ahead = runs(&[(1000, 20_000, 20), (40, 160 << 20, 4 << 20)]);
        assert_eq!(plan_from_runs(&ahead, 5000, 2 << 20, false), (1000, false));
        // A record larger than the budget is a page of its own.
        let ahead = runs(&[(40, 160 << 20, 4 << 20)]);
        assert_eq!(plan_from_runs(&ahead, 5000, 2 << 20, false), (1, false));
        // A run whose bytes fit is taken whole even if its max times its count would not.
        let ahead = runs(&[(10, 1000, 900), (5, 50, 10)]);
        assert_eq!(plan_from_runs(&ahead, 5000, 1000, true), (10, false));
        // The record cap wins over bytes; every run ahead fitting asks for more runs.
        assert_eq!(
            plan_from_runs(&runs(&[(10, 100, 10)]), 4, 1000, true),
            (4, false)
        );
        assert_eq!(
            plan_from_runs(&runs(&[(10, 100, 10)]), 50, 1000, true),
            (10, true)
        );
        assert_eq!(
            plan_from_runs(&VecDeque::new(), 50, 1000, false),
            (0, false)
        );
        assert_eq!(
            Run::parse("3:30:12"),
            Some(Run {
                count: 3,
                bytes: 30,
                max: 12
            })
        );
        assert_eq!(Run::parse("0:0:0"), None);
        assert_eq!(Run::parse("3:30"), None);
        assert_eq!(Run::parse("3:30:12:1"), None);
    }

    #[test]
    fn the_default_holder_id_is_host_slash_pid() {
        let holder = default_holder_id();
        let (host, pid) = holder.rsplit_once('/').unwrap();
        assert!(!host.is_empty(), "{holder}");
        assert_eq!(pid, std::process::id().to_string());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("rediss://:secret@h:1"), "rediss://:***@h:1");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("redis://pw@h"), "redis://***@h");
    }
}
