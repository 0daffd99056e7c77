//! [`Buffer`]: the handle every producer, persister and dashboard uses.

use std::future::Future;
use std::sync::Arc;

use redis::Client;

use crate::clock::{self, RedisOffset};
use crate::config::BufferConfig;
use crate::connection::{Connection, ConnectionSettings};
use crate::error::{Error, Result};
use crate::keys::KeyLayout;
use crate::name::StoreName;

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
    /// The shared connection to one server or a cluster (`connection.rs`); clones of it
    /// multiplex over one socket per node and reconnect on error.
    conn: Connection,
    layout: KeyLayout,
    config: BufferConfig,
    /// The clock's offset to Redis time: measured by `connect` or the first stamp, refreshed
    /// by a short task `now_ms` spawns when it is stale; read by every clone.
    offset: RedisOffset,
    /// Which stores this producer knows to have limits, learned from its push replies and
    /// read before each push (see `crate::limits`).
    limits: crate::limit_cache::LimitCache,
    /// Which stores this producer knows to be coalescing, and under which rules.
    rules: crate::limit_cache::RulesCache,
    /// The pushes to each coalescing store waiting for its merge script in flight
    /// (coalesce_group.rs).
    groups: crate::coalesce_group::GroupCommits,
    /// The batch reader's own sockets (page_socket.rs).
    pages: crate::page_socket::PageSockets,
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
    /// As [`BufferConfig::validate`] for a wrong setting; [`Error::Config`] for a malformed URL;
    /// [`Error::Redis`] or [`Error::Timeout`] when the server cannot be reached or refuses the
    /// credentials.
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
    /// As [`BufferConfig::validate`] for a wrong setting; [`Error::Config`] for a malformed URL.
    pub fn connect_lazy(config: BufferConfig) -> Result<Self> {
        let namespace = config.checked_namespace()?;
        install_tls_provider();
        let invalid = |err: redis::RedisError| {
            Error::Config(format!(
                "invalid Redis URL {}: {err}",
                config.redacted_url()
            ))
        };
        let Some(first) = config.urls.first() else {
            return Err(Error::Config("no Redis URL given".into()));
        };
        // Pub/sub goes through the first node: on a cluster, PUBLISH reaches every node.
        let client = Client::open(first.as_str()).map_err(invalid)?;
        let conn = Connection::lazy(ConnectionSettings {
            urls: config.urls.clone(),
            response_timeout: config.response_timeout,
            connect_timeout: config.connect_timeout,
        })
        .map_err(invalid)?;
        let layout = KeyLayout::new(namespace, config.groups);
        let offset = RedisOffset::new(config.clock_sync_interval);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                layout,
                config,
                offset,
                limits: Default::default(),
                rules: Default::default(),
                groups: Default::default(),
                pages: Default::default(),
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

    pub(crate) fn rules_cache(&self) -> &crate::limit_cache::RulesCache {
        &self.inner.rules
    }

    pub(crate) fn group_commits(&self) -> &crate::coalesce_group::GroupCommits {
        &self.inner.groups
    }

    pub(crate) fn limit_cache(&self) -> &crate::limit_cache::LimitCache {
        &self.inner.limits
    }

    pub(crate) fn page_sockets(&self) -> &crate::page_socket::PageSockets {
        &self.inner.pages
    }

    pub(crate) fn conn(&self) -> Connection {
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
                timeout: config.response_timeout,
            }),
            Ok(Err(err)) => Err(Error::from_redis(op, store, err)),
            Err(_elapsed) => Err(Error::Timeout {
                op,
                store: store.to_owned(),
                timeout: limit,
            }),
        }
    }

    /// One field of a hash (`HGET key field`) as text, `None` when it is absent: the read
    /// behind every per-store setting and failure record. `op` names the operation and
    /// `store` the store in errors and spans.
    pub(crate) async fn hget_field(
        &self,
        op: &'static str,
        store: &StoreName,
        key: String,
        field: String,
    ) -> Result<Option<String>> {
        let mut conn = self.conn();
        self.run(op, store.as_str(), async move {
            redis::cmd("HGET")
                .arg(key)
                .arg(field)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// Runs a pipeline of single-command reads under the response timeout and gives each
    /// command's own result (`Connection::query_each`): on a cluster, the commands of a master
    /// that does not answer fail alone.
    ///
    /// # Errors
    /// As [`Buffer::run`] when the exchange as a whole fails (connecting, or one server).
    pub(crate) async fn run_each(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Result<redis::Value>>> {
        let conn = self.conn();
        let replies = self.run(op, "", conn.query_each(pipe)).await?;
        let timeout = self.inner.config.response_timeout;
        Ok(replies
            .into_iter()
            .map(|reply| {
                reply.map_err(|err| {
                    if err.is_timeout() {
                        Error::Timeout {
                            op,
                            store: String::new(),
                            timeout,
                        }
                    } else {
                        Error::from_redis(op, "", err)
                    }
                })
            })
            .collect())
    }

    /// The pub/sub channel events are published on, `<namespace>:events`.
    pub(crate) fn events_channel(&self) -> String {
        self.layout().events_channel()
    }
}

pub(crate) use crate::clock::millis;

fn install_tls_provider() {
    // rustls needs one process-wide crypto provider; installing fails harmlessly when another
    // part of the program already installed one.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
