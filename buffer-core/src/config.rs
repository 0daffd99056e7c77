//! [`BufferConfig`]: how to reach Redis and how to lay out keys there.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::keys::DEFAULT_GROUPS;
use crate::name::Namespace;

/// How to reach Redis and how to lay out keys there.
///
/// Built one way: every setter takes a value and returns the config, and nothing is checked
/// until the config is used. [`Buffer::connect`](crate::Buffer::connect) and
/// [`Buffer::connect_lazy`](crate::Buffer::connect_lazy) check all of it with
/// [`BufferConfig::validate`] (call it yourself to check a config early, e.g. at start-up),
/// and refuse it with an error naming the first setting that is wrong.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use buffer_core::{BufferConfig, Error};
///
/// let config = BufferConfig::new("redis://127.0.0.1:6379/0")
///     .namespace("orders-service")
///     .response_timeout(Duration::from_secs(2));
/// config.validate()?;
/// assert_eq!(config.namespace_name(), "orders-service");
///
/// let wrong = BufferConfig::new("redis://127.0.0.1:6379/0").namespace("a{b}");
/// assert!(matches!(wrong.validate(), Err(Error::InvalidNamespace { .. })));
/// # Ok::<(), buffer_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BufferConfig {
    /// One server's URL, or seed nodes of a cluster (see [`BufferConfig::nodes`]).
    pub(crate) urls: Vec<String>,
    pub(crate) namespace: String,
    pub(crate) groups: u16,
    pub(crate) response_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_record_bytes: usize,
    pub(crate) page_size: usize,
    pub(crate) page_bytes: usize,
    pub(crate) holder_id: String,
    pub(crate) push_id_ttl: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) clock_sync_interval: Duration,
    /// `WAIT` after every push and prepare: how many replicas, and how long to wait for them
    /// (see [`BufferConfig::wait_replicas`]); `None` waits for none.
    pub(crate) wait_replicas: Option<(u32, Duration)>,
    /// Whether batch pages are read on the reader's own sockets (see
    /// [`BufferConfig::direct_page_reads`]).
    pub(crate) direct_page_reads: bool,
    /// The most distinct entities one group commit of coalescing pushes merges into one
    /// script (see [`BufferConfig::coalesce_group_entities`]); 0 sends each push alone.
    pub(crate) coalesce_group_entities: usize,
}

impl BufferConfig {
    /// A configuration for the Redis at `url` (`redis://[user:password@]host:port/db`,
    /// `rediss://` for TLS) with every other setting at its default.
    ///
    /// `url` may also be a comma-separated list of Redis Cluster nodes (as the CLIs'
    /// `--redis` takes): see [`BufferConfig::nodes`]. A comma in a password must be
    /// percent-encoded (`%2C`) here.
    pub fn new(url: impl Into<String>) -> Self {
        let url: String = url.into();
        Self::nodes(url.split(',').map(str::trim).filter(|url| !url.is_empty()))
    }

    /// A configuration for a Redis Cluster reached through any of `urls` (its seed nodes; one
    /// node is enough, more keep the client able to start while some are down). Each URL is
    /// taken as it is. Whether one URL names a cluster node or a single server is asked of the
    /// server (`INFO cluster`) at the first command; several URLs always mean a cluster. TLS
    /// (`rediss://`) and credentials (`user:password@`) of the first URL apply to every node.
    pub fn nodes<I, U>(urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            namespace: Namespace::default().as_str().to_owned(),
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
            wait_replicas: None,
            direct_page_reads: true,
            coalesce_group_entities: 1000,
        }
    }

    /// Sets the key namespace (default `buf`): 1..=64 bytes of `[A-Za-z0-9._-]`, checked by
    /// [`BufferConfig::validate`].
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The configured namespace, as given.
    pub fn namespace_name(&self) -> &str {
        &self.namespace
    }

    /// Sets the number of slot groups (default 256, at least 1). Every process sharing a
    /// namespace must use the same number, since it decides every key's name.
    pub fn groups(mut self, groups: u16) -> Self {
        self.groups = groups;
        self
    }

    /// Checks every setting, naming the first that is wrong.
    ///
    /// # Errors
    /// [`Error::InvalidNamespace`] for a namespace that is not 1..=64 bytes of
    /// `[A-Za-z0-9._-]`; [`Error::Config`] for an empty URL, zero groups, a zero timeout, page
    /// size, page bytes, maximum record size, push-id TTL or clock-sync interval.
    pub fn validate(&self) -> Result<()> {
        self.checked_namespace().map(drop)
    }

    /// [`BufferConfig::validate`], giving the validated namespace to build the key layout with.
    pub(crate) fn checked_namespace(&self) -> Result<Namespace> {
        let namespace = Namespace::new(&self.namespace)?;
        let zero = |setting: &str, why: &str| Err(Error::Config(format!("{setting} {why}")));
        if self.urls.is_empty() {
            return zero("the Redis URL", "is empty (give one URL, or cluster nodes)");
        }
        if self.groups == 0 {
            return zero("groups", "must be at least 1");
        }
        if self.response_timeout.is_zero() {
            return zero("response_timeout", "must be more than 0");
        }
        if self.connect_timeout.is_zero() {
            return zero("connect_timeout", "must be more than 0");
        }
        if self.max_record_bytes == 0 {
            return zero("max_record_bytes", "must be at least 1");
        }
        if self.page_size == 0 {
            return zero("page_size", "must be at least 1 record");
        }
        if self.page_bytes == 0 {
            return zero("page_bytes", "must be at least 1 byte");
        }
        if self.push_id_ttl < Duration::from_millis(1) {
            return zero("push_id_ttl", "must be at least 1 ms");
        }
        if self.clock_sync_interval.is_zero() {
            return zero("clock_sync_interval", "must be more than 0");
        }
        if let Some((_, timeout)) = self.wait_replicas {
            // WAIT runs inside the push's round trip, which the response timeout bounds: a
            // longer WAIT would turn every slow replica into a timeout instead of the typed
            // error naming the replicas.
            if timeout < Duration::from_millis(1) || timeout >= self.response_timeout {
                return zero(
                    "wait_replicas",
                    "timeout must be at least 1 ms and shorter than response_timeout",
                );
            }
        }
        Ok(namespace)
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
        self.page_size = records;
        self
    }

    /// How many bytes of records a page of a batch holds at most when it is read (default
    /// 2 MiB); a page always holds at least one record, so a page is at most
    /// `max(page_bytes, max_record_bytes)`. The reader knows each record's size bound before
    /// it reads the page (from the batch's run list), so this holds for every page.
    pub fn page_bytes(mut self, bytes: usize) -> Self {
        self.page_bytes = bytes;
        self
    }

    /// Whether the batch reader reads pages on sockets of its own, with its own reply parser
    /// (default `true`: it is the faster road, ARCHITECTURE.md, `page_socket.rs`). `false`
    /// reads every page through the general connection, as commands of redis-rs: for a
    /// proxy in front of Redis that extra sockets should not bypass, or to compare the two
    /// roads. The records and errors are the same either way.
    pub fn direct_page_reads(mut self, direct: bool) -> Self {
        self.direct_page_reads = direct;
        self
    }

    /// How many distinct entities one group commit of pushes to a coalescing store merges at
    /// most (default 1000; 0 turns group commits off). While a merge script of this producer
    /// is in flight for a store, the pushes that arrive for it wait and are then sent as one
    /// script with their records merged by entity first, so Redis reads and writes each entity
    /// once per group; each push is still applied or refused whole and on its own
    /// (docs/coalescing.md, "Group commit"). Redis runs a script without interruption, and its
    /// time grows with the group's entities (about 13 µs each on the machine of
    /// BENCHMARKS.md: 1000 entities hold Redis about 13 ms), so this bounds how long one group
    /// holds Redis. A group that reaches it is sent at once, beside the script in flight; a
    /// single push larger than this is never split. Turn grouping off where concurrent pushes
    /// rarely share entities: it then gains nothing.
    pub fn coalesce_group_entities(mut self, entities: usize) -> Self {
        self.coalesce_group_entities = entities;
        self
    }

    /// The holder id written into locks this buffer takes (default `<hostname>/<pid>`); a
    /// lock's value is `<holder id>:<random token>`.
    pub fn holder_id(mut self, holder: impl Into<String>) -> Self {
        self.holder_id = holder.into();
        self
    }

    /// How long [`crate::Buffer::push_once`] remembers a push id (default 24 h): a retry later than
    /// that is treated as a new push.
    pub fn push_id_ttl(mut self, ttl: Duration) -> Self {
        self.push_id_ttl = ttl;
        self
    }

    /// The clock used for first-write times, batch ids and ages (default the system clock).
    /// Unless it opts out ([`Clock::corrected_by_redis_time`]), its readings are corrected by
    /// their measured offset to Redis `TIME`, so a skewed clock neither delays nor hastens an
    /// age flush; see [`crate::Buffer::now_ms`].
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

    /// Makes every write that must survive a failover wait for `replicas` replicas of the
    /// master that took it (`WAIT replicas timeout`, sent right after it on the same
    /// connection, so it counts that write): each push (`push`, `push_many`, `push_json`,
    /// `push_once`, each push of a [`crate::PushPipeline`]) and each prepare (before the
    /// persister writes the batch's file). `replicas` 0 (the default) waits for nothing.
    ///
    /// A write confirmed by fewer replicas within `timeout` fails with
    /// [`Error::ReplicasNotConfirmed`]: it is applied on the master, but a failover may
    /// still lose it ([`Error::is_outcome_unknown`] is true; `push_once` may be retried with
    /// the same id). `timeout` must be shorter than the response timeout (checked by
    /// [`BufferConfig::validate`]). What it guarantees and costs: docs/operations.md, "What
    /// --wait-replicas guarantees and costs".
    pub fn wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// The Redis URL (or the comma-separated node URLs) with any password replaced by
    /// `***`, fit to display or log.
    pub fn redacted_url(&self) -> String {
        let urls: Vec<String> = self.urls.iter().map(|url| redact_url(url)).collect();
        urls.join(",")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_holder_id_is_host_slash_pid() {
        let holder = default_holder_id();
        let (host, pid) = holder.rsplit_once('/').unwrap();
        assert!(!host.is_empty(), "{holder}");
        assert_eq!(pid, std::process::id().to_string());
    }

    #[test]
    fn validate_names_the_first_wrong_setting() {
        let ok = BufferConfig::new("redis://h:1/0");
        assert!(ok.validate().is_ok());
        assert!(matches!(
            ok.clone().namespace("a b").validate(),
            Err(Error::InvalidNamespace { .. })
        ));
        let cases: [(BufferConfig, &str); 11] = [
            (
                ok.clone().wait_replicas(1, Duration::from_secs(5)),
                "wait_replicas",
            ),
            (ok.clone().wait_replicas(1, Duration::ZERO), "wait_replicas"),
            (BufferConfig::new(" "), "the Redis URL"),
            (ok.clone().groups(0), "groups"),
            (
                ok.clone().response_timeout(Duration::ZERO),
                "response_timeout",
            ),
            (
                ok.clone().connect_timeout(Duration::ZERO),
                "connect_timeout",
            ),
            (ok.clone().max_record_bytes(0), "max_record_bytes"),
            (ok.clone().page_size(0), "page_size"),
            (ok.clone().page_bytes(0), "page_bytes"),
            (
                ok.clone().push_id_ttl(Duration::from_micros(10)),
                "push_id_ttl",
            ),
            (
                ok.clone().clock_sync_interval(Duration::ZERO),
                "clock_sync_interval",
            ),
        ];
        for (config, setting) in cases {
            match config.validate() {
                Err(Error::Config(message)) => assert!(message.starts_with(setting), "{message}"),
                other => panic!("{setting}: {other:?}"),
            }
            // A buffer is never made from it either.
            assert!(crate::Buffer::connect_lazy(config).is_err(), "{setting}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("rediss://:secret@h:1"), "rediss://:***@h:1");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("redis://pw@h"), "redis://***@h");
    }
}
