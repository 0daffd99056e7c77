//! The one connection type every operation sends its commands through: one Redis server or a
//! Redis Cluster, found out from the server itself.
//!
//! [`Connection`] implements [`redis::aio::ConnectionLike`], so every operation keeps writing
//! `query_async(&mut conn)` and never knows which kind of deployment it talks to.
//!
//! - **One server**: today's `ConnectionManager` (one multiplexed socket that reconnects).
//! - **Cluster**: [`ClusterRouter`], this module's own: the slot map (`CLUSTER SLOTS`) and one
//!   `ConnectionManager` per master, each request sent to the master of its key's slot. It
//!   retries only what provably did not run: `MOVED` (the slot map is refreshed and the
//!   request sent to the named node), `ASK` (`ASKING` + the request, in one write, on the
//!   named node), `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `READONLY` and a
//!   refused connection (after a short doubling backoff and a slot map refresh). Every other
//!   error reaches the caller as it came, so `Error::is_outcome_unknown` stays true where it
//!   was.
//!
//!   Why not `redis::cluster_async`: it resends a request after *any* connection error, also
//!   after the request was written and may have run (a push applied twice, an unknown
//!   outcome hidden from the caller); with its retries off it follows no redirect either; and
//!   in redis 1.8 its slot refresh can wait for ever on its own lock while requests are in
//!   flight (seen in this crate's tests after a slot moved), stalling every later request.
//!
//! A pipeline cannot cross slots on a cluster. On a cluster a pipeline is therefore cut into
//! its *units*: a MULTI…EXEC block (all its keys share one hash tag, so it is one slot and
//! atomic) or a single command. Each unit is sent on its own, all of them at once (the
//! cluster client writes requests for one node on one socket, so this is still about one
//! round trip), retried on its own, and the replies are put back in order. Sending a
//! pipeline's units apart is also what makes a retry safe: a redirect or `TRYAGAIN` in one
//! unit says nothing ran *in that unit*, while the others may have run.
//!
//! Which kind a URL names is asked of the server (`INFO cluster` → `cluster_enabled:1`) at the
//! first command, so `Buffer::connect_lazy` still does no I/O and one URL of any cluster node
//! is enough. Several URLs always mean a cluster (they are its seed nodes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all, select_ok};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::OnceCell;

/// How many times one unit is sent again after a reply that proves it did not run.
const MAX_RETRIES: u32 = 24;
/// The first wait before a retry after `TRYAGAIN`/`CLUSTERDOWN`/...; it doubles up to
/// [`MAX_BACKOFF`]. Redirects are followed at once.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;
/// How often a node that stopped answering is looked at again (its slot map entry and a
/// `PING`), until it answers or the slot map no longer routes to it.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A request for a node under suspicion refreshes the slot map first when the map is older
/// than this (a failover may have moved its slots), at most that often.
const SUSPECT_REFRESH: Duration = Duration::from_millis(100);

/// Where and how to connect; shared by every clone of a [`Connection`].
#[derive(Debug)]
pub(crate) struct ConnectionSettings {
    /// The node URLs, as configured (one server, or seed nodes of a cluster).
    pub(crate) urls: Vec<String>,
    pub(crate) response_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl ConnectionSettings {
    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(self.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1))
    }
}

/// What [`Connection`] talks to, decided at the first command.
#[derive(Clone)]
enum Backend {
    /// One server.
    Single(Arc<SingleServer>),
    /// A cluster.
    Cluster(Arc<ClusterRouter>),
}

/// One server: its main connection, and the one for writes followed by a `WAIT` (see
/// [`Lane`]), made when the first such write comes.
struct SingleServer {
    main: ConnectionManager,
    waits: OnceCell<ConnectionManager>,
    client: Client,
    config: ConnectionManagerConfig,
}

impl SingleServer {
    async fn on(&self, lane: Lane) -> RedisResult<ConnectionManager> {
        match lane {
            Lane::Main => Ok(self.main.clone()),
            Lane::Waits => self
                .waits
                .get_or_try_init(|| {
                    ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
                })
                .await
                .cloned(),
        }
    }
}

/// The connection every operation of a `Buffer` uses. Cheap to clone: clones share the
/// backend (created once, at the first command, by whichever clone gets there first).
#[derive(Clone)]
pub(crate) struct Connection {
    settings: Arc<ConnectionSettings>,
    /// Set once, by the first command that finds the server; a failed attempt leaves it empty
    /// so the next command tries again (a dashboard starts while Redis is away).
    backend: Arc<OnceCell<Backend>>,
    /// The database of a single server's URL (0 on a cluster).
    db: i64,
    /// The first URL, parsed: the one server's address and credentials.
    first: Arc<ConnectionInfo>,
}

impl Connection {
    /// A connection that connects at its first command. Only parses: no I/O.
    ///
    /// # Errors
    /// The `redis` crate's error for a URL it cannot parse (the caller names the URL).
    pub(crate) fn lazy(settings: ConnectionSettings) -> RedisResult<Self> {
        let mut first = None;
        for url in &settings.urls {
            let info = Client::open(url.as_str())?.get_connection_info().clone();
            first.get_or_insert(info);
        }
        let first = first.ok_or_else(|| {
            RedisError::from((ErrorKind::InvalidClientConfig, "no Redis URL given"))
        })?;
        Ok(Self {
            db: first.redis_settings().db(),
            settings: Arc::new(settings),
            backend: Arc::new(OnceCell::new()),
            first: Arc::new(first),
        })
    }

    /// True when the URL(s) name a cluster; connects if no command did yet.
    pub(crate) async fn cluster_mode(&self) -> RedisResult<bool> {
        Ok(matches!(self.backend().await?, Backend::Cluster(_)))
    }

    /// The backend, connecting (and finding out what the URL names) if no command did yet.
    async fn backend(&self) -> RedisResult<&Backend> {
        self.backend.get_or_try_init(|| self.open()).await
    }

    async fn open(&self) -> RedisResult<Backend> {
        let settings = &self.settings;
        let cluster = match settings.urls.as_slice() {
            [one] => self.names_a_cluster(one).await?,
            _ => true,
        };
        if cluster {
            Ok(Backend::Cluster(
                ClusterRouter::open(self.settings.clone()).await?,
            ))
        } else {
            let client = Client::open((*self.first).clone())?;
            let config = settings.manager_config();
            let main = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
            Ok(Backend::Single(Arc::new(SingleServer {
                main,
                waits: OnceCell::new(),
                client,
                config,
            })))
        }
    }

    /// Asks the server at `url` whether it runs in cluster mode, on a connection of its own.
    async fn names_a_cluster(&self, url: &str) -> RedisResult<bool> {
        let settings = &self.settings;
        let client = Client::open(url)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        match redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(&mut conn)
            .await
        {
            Ok(info) => Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1")),
            // INFO refused for good (an ACL without it, a renamed command): ask `CLUSTER
            // SLOTS`, which a cluster node must allow for this client anyway and one server
            // refuses with "cluster support disabled". Only when both are refused is it taken
            // for one server.
            Err(err) if refused_for_good(&err) => {
                match redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut conn)
                    .await
                {
                    Ok(slots) => Ok(!slot_ranges(&slots).is_empty()),
                    Err(err) if refused_for_good(&err) => Ok(false),
                    Err(err)
                        if err
                            .to_string()
                            .to_lowercase()
                            .contains("cluster support disabled") =>
                    {
                        Ok(false)
                    }
                    Err(err) => Err(err),
                }
            }
            // Anything else (LOADING, a timeout, a dropped connection) says nothing of what
            // the server is: the error goes to the caller and the next command asks again,
            // so one transient refusal never makes a cluster a single server for good.
            Err(err) => Err(err),
        }
    }

    /// The addresses (`host:port`) of the masters serving slots, in slot order (asked of the
    /// cluster now); for one server, its address.
    ///
    /// # Errors
    /// The `redis` crate's error when no node answers.
    pub(crate) async fn masters(&self) -> RedisResult<Vec<String>> {
        match self.backend().await? {
            Backend::Single(_) => Ok(vec![self.first.addr().to_string()]),
            Backend::Cluster(router) => {
                router.refresh(None).await?;
                Ok(router.masters())
            }
        }
    }

    /// How to reach, on a socket of one's own, the server that holds `key` now: the one
    /// server, or the master of the key's slot in the current slot map (`None` when the map
    /// does not know it yet). For the batch reader's page sockets (`page_socket.rs`), which
    /// fall back to this connection whenever that server turns out to be the wrong one.
    ///
    /// # Errors
    /// The `redis` crate's error when no server answers.
    pub(crate) async fn server_of(&self, key: &[u8]) -> RedisResult<Option<ConnectionInfo>> {
        match self.backend().await? {
            Backend::Single(_) => Ok(Some((*self.first).clone())),
            Backend::Cluster(router) => Ok(router
                .master_of(Some(key_slot(key)))
                .ok()
                .and_then(|address| router.node_info(&address).ok())),
        }
    }

    /// The master (`host:port`) of `key`'s slot in the slot map as last read (no I/O once
    /// connected); `None` on one server.
    ///
    /// # Errors
    /// The `redis` crate's error when connecting first fails, or when no master serves the
    /// slot.
    pub(crate) async fn master_of_key(&self, key: &[u8]) -> RedisResult<Option<String>> {
        match self.backend().await? {
            Backend::Single(_) => Ok(None),
            Backend::Cluster(router) => router.master_of(Some(key_slot(key))).map(Some),
        }
    }

    /// Sends `cmd` to the node at `address` (`host:port`, as [`Connection::masters`] gives):
    /// for per-node facts (`INFO`). On one server the address is ignored.
    ///
    /// # Errors
    /// The `redis` crate's error.
    pub(crate) async fn on_node(&self, address: &str, cmd: Cmd) -> RedisResult<Value> {
        match self.backend().await? {
            Backend::Single(server) => server.main.clone().req_packed_command(&cmd).await,
            Backend::Cluster(router) => router.node(address).await?.req_packed_command(&cmd).await,
        }
    }

    /// How to reach, each on a socket of one's own, the nodes a pub/sub subscriber may try
    /// in turn (`PUBLISH` on a cluster reaches every node, so any node that answers will do):
    /// the masters of the slot map as last read, then the configured URLs, each once; for
    /// one server, its URL. No I/O once connected.
    ///
    /// # Errors
    /// The `redis` crate's error when connecting first fails.
    pub(crate) async fn pubsub_candidates(&self) -> RedisResult<Vec<ConnectionInfo>> {
        match self.backend().await? {
            Backend::Single(_) => Ok(vec![(*self.first).clone()]),
            Backend::Cluster(router) => {
                let mut candidates: Vec<ConnectionInfo> = Vec::new();
                let masters = router.masters().into_iter();
                let masters = masters.filter_map(|address| router.node_info(&address).ok());
                let urls = self.settings.urls.iter().filter_map(|url| {
                    Some(
                        Client::open(url.as_str())
                            .ok()?
                            .get_connection_info()
                            .clone(),
                    )
                });
                for info in masters.chain(urls) {
                    if !candidates.iter().any(|known| known.addr() == info.addr()) {
                        candidates.push(info);
                    }
                }
                Ok(candidates)
            }
        }
    }
}

impl Connection {
    /// Sends a pipeline of single commands (no MULTI) and gives each command's own result:
    /// on a cluster a command whose master does not answer fails alone, and the others'
    /// replies still come back (discovery reads every group, and one frozen master must not
    /// hide the stores of the others). On one server the pipeline is one round trip, so its
    /// commands succeed or fail together. Error replies stay values, for the caller to check.
    ///
    /// # Errors
    /// The `redis` crate's error when connecting first fails, or, on one server, when the
    /// round trip fails.
    pub(crate) async fn query_each(
        &self,
        pipeline: &Pipeline,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        match self.backend().await? {
            Backend::Single(server) => {
                let count = pipeline.len();
                let replies = server
                    .main
                    .clone()
                    .req_packed_commands(pipeline, 0, count)
                    .await?;
                Ok(replies.into_iter().map(Ok).collect())
            }
            Backend::Cluster(router) => {
                let sends = pipeline.cmd_iter().map(|cmd| async move {
                    let mut replies = router.send(Unit::Command(cmd)).await?;
                    replies.pop().ok_or_else(|| no_reply("a command"))
                });
                Ok(join_all(sends).await)
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.backend().await? {
                Backend::Single(server) => server.main.clone().req_packed_command(cmd).await,
                Backend::Cluster(router) => router.command(cmd).await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.backend().await? {
                Backend::Single(server) => {
                    server
                        .on(Lane::of(pipeline.cmd_iter()))
                        .await?
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                Backend::Cluster(router) => {
                    if pipeline.is_transaction() {
                        // `pipe().atomic()`: one MULTI/EXEC, so one unit already (a CROSSSLOT
                        // error if its keys are not in one slot).
                        let mut block = redis::pipe();
                        block.cmd("MULTI");
                        for cmd in pipeline.cmd_iter() {
                            block.add_command(cmd.clone());
                        }
                        block.cmd("EXEC");
                        let replies = router.send(Unit::Block(&block)).await?;
                        return Ok(replies.into_iter().skip(offset).take(count).collect());
                    }
                    let units = units(pipeline);
                    // A `SCRIPT LOAD` in the pipeline (the limits script, ahead of its EVALSHAs)
                    // goes to every master first, so no EVALSHA of the pipeline, on whichever
                    // master its keys live, can run before its script is known there.
                    let mut loaded = Vec::new();
                    for unit in &units {
                        if let PipelineUnit::Command(cmd) = unit
                            && command_name(cmd).eq_ignore_ascii_case(b"SCRIPT")
                        {
                            loaded.push(router.command(cmd).await.map(|reply| vec![reply]));
                        }
                    }
                    let mut loaded = loaded.into_iter();
                    let sends = units.iter().map(|unit| {
                        let done = match unit {
                            PipelineUnit::Command(cmd)
                                if command_name(cmd).eq_ignore_ascii_case(b"SCRIPT") =>
                            {
                                loaded.next()
                            }
                            _ => None,
                        };
                        async move {
                            match (done, unit) {
                                (Some(result), _) => result,
                                (None, PipelineUnit::Command(cmd)) => {
                                    router.send(Unit::Command(cmd)).await
                                }
                                (None, PipelineUnit::Block(block)) => {
                                    router.send(Unit::Block(block)).await
                                }
                            }
                        }
                    });
                    // Every unit runs to its end: one failing says nothing of the others.
                    let replies = combine_units(join_all(sends).await)?;
                    Ok(replies.into_iter().skip(offset).take(count).collect())
                }
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

/// Which of a node's two connections a request takes. A `WAIT` blocks the connection it is
/// sent on, on the server, for up to its timeout: every later request on that socket queues
/// behind it. Requests carrying a `WAIT` therefore go on a connection of their own, so a
/// lagging replica never delays a lock heartbeat, a discovery read or an unwaited push.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// Everything without a `WAIT`.
    Main,
    /// Writes followed by their `WAIT` (`replicas.rs`); the write and its `WAIT` share it, as
    /// `WAIT` needs.
    Waits,
}

impl Lane {
    fn of<'c>(mut commands: impl Iterator<Item = &'c Cmd>) -> Self {
        if commands.any(|cmd| command_name(cmd).eq_ignore_ascii_case(b"WAIT")) {
            Self::Waits
        } else {
            Self::Main
        }
    }
}

/// A Redis Cluster client: the slot map and one connection per node.
pub(crate) struct ClusterRouter {
    settings: Arc<ConnectionSettings>,
    /// How to reach a node: the first URL's credentials, TLS and database, any host and port.
    template: ConnectionInfo,
    /// For each slot, the address of its master, from the last `CLUSTER SLOTS`. A std lock,
    /// never held across an await.
    slots: RwLock<Vec<Option<Arc<str>>>>,
    /// Bumped by every refresh that wrote `slots`: a refresh that waited for another one in
    /// flight and sees it changed does not ask again (single flight).
    map_generation: AtomicU64,
    /// When `slots` was last written.
    refreshed_at: Mutex<Instant>,
    /// Held by the one slot map refresh in flight; others wait for it instead of sending
    /// their own `CLUSTER SLOTS` (hundreds of requests failing at once ask once), and an
    /// older answer can never overwrite a newer map.
    refreshing: tokio::sync::Mutex<()>,
    /// One connection per node address and lane, made at first use; each reconnects on its
    /// own. The lock is held only to look up or insert, never across a connect.
    nodes: tokio::sync::Mutex<HashMap<(String, Lane), ConnectionManager>>,
    /// Nodes that did not answer in time (a frozen process, a black-holed network), with
    /// when: requests for them fail at once, unsent, instead of each waiting the response
    /// timeout, until a probe task (one per suspect, started by [`ClusterRouter::suspect`])
    /// sees the node answer `PING` or the slot map route its slots elsewhere.
    suspects: Mutex<HashMap<String, Instant>>,
    /// This router, for the probe tasks it starts (they end when it is dropped).
    me: Weak<ClusterRouter>,
}

impl ClusterRouter {
    async fn open(settings: Arc<ConnectionSettings>) -> RedisResult<Arc<Self>> {
        let template = Client::open(settings.urls[0].as_str())?
            .get_connection_info()
            .clone();
        let router = Arc::new_cyclic(|me| Self {
            settings,
            template,
            slots: RwLock::new(vec![None; usize::from(SLOTS)]),
            map_generation: AtomicU64::new(0),
            refreshed_at: Mutex::new(Instant::now()),
            refreshing: tokio::sync::Mutex::new(()),
            nodes: tokio::sync::Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            me: me.clone(),
        });
        router.refresh(None).await?;
        Ok(router)
    }

    /// The main connection to the node at `address`, made if there is none yet.
    async fn node(&self, address: &str) -> RedisResult<ConnectionManager> {
        self.node_on(address, Lane::Main).await
    }

    /// The connection of `lane` to the node at `address`, made if there is none yet.
    async fn node_on(&self, address: &str, lane: Lane) -> RedisResult<ConnectionManager> {
        let key = (address.to_owned(), lane);
        if let Some(conn) = self.nodes.lock().await.get(&key) {
            return Ok(conn.clone());
        }
        let info = self.node_info(address)?;
        // Connected without the lock held, so a node that does not answer delays only the
        // requests for it; when two requests connect at once, the first one kept wins.
        let conn =
            ConnectionManager::new_with_config(Client::open(info)?, self.settings.manager_config())
                .await?;
        Ok(self.nodes.lock().await.entry(key).or_insert(conn).clone())
    }

    /// How to reach the node at `address` (`host:port`): the first URL's credentials, TLS
    /// and database with that host and port.
    ///
    /// # Errors
    /// An address that is not `host:port`; a first URL that is a unix socket.
    fn node_info(&self, address: &str) -> RedisResult<ConnectionInfo> {
        let (host, port) = split_address(address)?;
        let mut addr = self.template.addr().clone();
        match &mut addr {
            ConnectionAddr::Tcp(h, p) => (*h, *p) = (host, port),
            ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => (*h, *p) = (host, port),
            _ => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "a cluster is reached over TCP, not a unix socket",
                )));
            }
        }
        Ok(self.template.clone().set_addr(addr))
    }

    fn is_suspect(&self, address: &str) -> bool {
        self.suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(address)
    }

    /// Marks `address` as not answering and starts its probe task, unless it has one.
    fn suspect(&self, address: &str) {
        let newly = self
            .suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_owned(), Instant::now())
            .is_none();
        if !newly {
            return;
        }
        tracing::warn!(
            node = address,
            "a cluster node stopped answering; requests for it fail at once until it answers again or its slots move"
        );
        let (me, address) = (self.me.clone(), address.to_owned());
        // The probe runs on whatever runtime the request ran on; a router outside one (none
        // here: every request is async) would simply keep the suspicion until a refresh.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe(me, address));
        }
    }

    fn clear_suspect(&self, address: &str) {
        let was = self
            .suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(address);
        if let Some(since) = was {
            tracing::info!(node = address, after = ?since.elapsed(), "a cluster node is back in use");
        }
    }

    /// Reads the slot map again, single-flight: a caller that finds a refresh in flight waits
    /// for it and uses its map. The candidates (`first`, the node a MOVED named, then the
    /// known masters, then the configured URLs) are asked all at once and the first good
    /// answer wins, so one node that hangs costs nothing; nodes under suspicion are asked
    /// only when no other answers.
    async fn refresh(&self, first: Option<&str>) -> RedisResult<()> {
        let seen = self.map_generation.load(Ordering::Acquire);
        let _in_flight = self.refreshing.lock().await;
        if self.map_generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let mut candidates: Vec<String> = first.map(str::to_owned).into_iter().collect();
        for address in self.masters() {
            if !candidates.contains(&address) {
                candidates.push(address);
            }
        }
        for url in &self.settings.urls {
            if let Ok(client) = Client::open(url.as_str()) {
                let address = client.get_connection_info().addr().to_string();
                if !candidates.contains(&address) {
                    candidates.push(address);
                }
            }
        }
        let (healthy, suspects): (Vec<String>, Vec<String>) = candidates
            .into_iter()
            .partition(|address| !self.is_suspect(address));
        let mut last = None;
        for group in [healthy, suspects] {
            if group.is_empty() {
                continue;
            }
            let asks = group.iter().map(
                |address| -> BoxFuture<'_, RedisResult<Vec<(u16, u16, String)>>> {
                    Box::pin(self.slot_ranges_of(address))
                },
            );
            match select_ok(asks).await {
                Ok((ranges, _rest)) => {
                    self.write_map(ranges);
                    return Ok(());
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((
                ErrorKind::ClusterConnectionNotFound,
                "no cluster node answered CLUSTER SLOTS",
            ))
        }))
    }

    /// Refreshes the slot map unless it was written less than `age` ago.
    async fn refresh_if_older(&self, age: Duration) -> RedisResult<()> {
        let written = *self.refreshed_at.lock().unwrap_or_else(|e| e.into_inner());
        if written.elapsed() < age {
            return Ok(());
        }
        self.refresh(None).await
    }

    /// The slot ranges `CLUSTER SLOTS` gives at `address`; an error when it gives none (a
    /// node that knows no slot, such as one just restarted without its config).
    async fn slot_ranges_of(&self, address: &str) -> RedisResult<Vec<(u16, u16, String)>> {
        let mut conn = self.node(address).await?;
        let reply = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(&mut conn)
            .await?;
        let ranges = slot_ranges(&reply);
        if ranges.is_empty() {
            return Err(RedisError::from((
                ErrorKind::ClusterConnectionNotFound,
                "a cluster node knows no slot",
                address.to_owned(),
            )));
        }
        Ok(ranges)
    }

    fn write_map(&self, ranges: Vec<(u16, u16, String)>) {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        slots.iter_mut().for_each(|slot| *slot = None);
        for (start, end, master) in ranges {
            let master: Arc<str> = Arc::from(master.as_str());
            for slot in start..=end.min(SLOTS - 1) {
                slots[usize::from(slot)] = Some(master.clone());
            }
        }
        drop(slots);
        *self.refreshed_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.map_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The masters of the current slot map, each once, in slot order.
    fn masters(&self) -> Vec<String> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        let mut masters: Vec<String> = Vec::new();
        for master in slots.iter().flatten() {
            if !masters.iter().any(|known| known.as_str() == &**master) {
                masters.push(master.to_string());
            }
        }
        masters
    }

    /// The masters of the current slot map, those answering first.
    fn masters_answering_first(&self) -> Vec<String> {
        let (mut answering, suspects): (Vec<String>, Vec<String>) = self
            .masters()
            .into_iter()
            .partition(|address| !self.is_suspect(address));
        answering.extend(suspects);
        answering
    }

    /// The master of `slot`, or, for a command without a key (`None`), the first master of
    /// the slot map not under suspicion.
    fn master_of(&self, slot: Option<u16>) -> RedisResult<String> {
        let master = match slot {
            Some(slot) => self
                .slots
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(usize::from(slot))
                .cloned()
                .flatten()
                .map(|m| m.to_string()),
            None => self.masters_answering_first().into_iter().next(),
        };
        master.ok_or_else(|| {
            RedisError::from((
                ErrorKind::ClusterConnectionNotFound,
                "no master serves the slot",
                format!("{slot:?}"),
            ))
        })
    }

    /// One command. A command without a key goes to any master that answers: `TIME`, `PING`
    /// and `ECHO` to all of them at once (the first answer wins, so one frozen master costs
    /// nothing), `SCRIPT LOAD` to every master at once (it succeeds where it can: a master
    /// that missed it answers `NOSCRIPT` later, and the caller runs the script by `EVAL`
    /// there), anything else to the first master that takes it. Everything else is one
    /// unit, sent to its slot's master.
    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let name = command_name(cmd).to_ascii_uppercase();
        if first_key(cmd).is_none() && !name.is_empty() {
            let everywhere = matches!(name.as_slice(), b"TIME" | b"PING" | b"ECHO" | b"SCRIPT");
            if everywhere {
                let masters = self.masters_answering_first();
                let sends =
                    masters
                        .iter()
                        .map(|address| -> BoxFuture<'_, RedisResult<Vec<Value>>> {
                            Box::pin(self.send_to(address, Unit::Command(cmd)))
                        });
                if masters.is_empty() {
                    return Err(RedisError::from((
                        ErrorKind::ClusterConnectionNotFound,
                        "the slot map names no master",
                    )));
                }
                if name.as_slice() == b"SCRIPT" {
                    // Every master is to have it: all are waited for (never cancelled at the
                    // first success), and it is enough that one took it.
                    let mut last = None;
                    let mut loaded = None;
                    for result in join_all(sends).await {
                        match result {
                            Ok(mut replies) => loaded = replies.pop(),
                            Err(err) => last = Some(err),
                        }
                    }
                    return match (loaded, last) {
                        (Some(reply), _) => Ok(reply),
                        (None, Some(err)) => Err(err),
                        (None, None) => Err(no_reply("SCRIPT")),
                    };
                }
                let (mut replies, _rest) = select_ok(sends).await?;
                return replies.pop().ok_or_else(|| no_reply("a command"));
            }
        }
        let mut replies = self.send(Unit::Command(cmd)).await?;
        replies.pop().ok_or_else(|| no_reply("a command"))
    }

    /// Sends `unit` once to the node at `address` (no retry), keeping suspicion up to date.
    async fn send_to(&self, address: &str, unit: Unit<'_>) -> RedisResult<Vec<Value>> {
        if self.is_suspect(address) {
            return Err(not_answering(address));
        }
        let sent = self.attempt(address, false, &unit).await;
        if let Err(err) = &sent {
            self.note_failure(address, Lane::of(unit.commands().iter()), err);
        }
        sent
    }

    /// Puts the node at `address` under suspicion after `err` when the node itself did not
    /// answer. A timeout on the `WAIT` lane proves less: the `WAIT`s queued there block the
    /// socket for as long as the replicas lag (a promoted master without a replica yet makes
    /// every one of them wait out its timeout), while the node answers everything else. So
    /// the node is suspected then only if a `PING` on its main connection goes unanswered
    /// too, checked in the background: a failover test once saw a live, promoted master put
    /// under suspicion this way, its stores left out of every read for seconds.
    fn note_failure(&self, address: &str, lane: Lane, err: &RedisError) {
        if !unanswered(err) || self.is_suspect(address) {
            return;
        }
        if lane == Lane::Main || !err.is_timeout() {
            self.suspect(address);
            return;
        }
        let (Some(me), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let address = address.to_owned();
        runtime.spawn(async move {
            let ping = async {
                let mut conn = me.node(&address).await?;
                redis::cmd("PING").query_async::<Value>(&mut conn).await
            };
            let answered = tokio::time::timeout(me.settings.response_timeout, ping).await;
            if !matches!(answered, Ok(Ok(_))) {
                me.suspect(&address);
            }
        });
    }

    /// One write of `unit` (after `ASKING` when `asking`) to the node at `address`, on the
    /// lane its commands need. A redirect or refusal among the replies is the unit's error.
    async fn attempt(
        &self,
        address: &str,
        asking: bool,
        unit: &Unit<'_>,
    ) -> RedisResult<Vec<Value>> {
        let commands = unit.commands();
        // Each step bounded here, not only by the caller: a connect to a frozen node would
        // otherwise outlast the caller's own timeout, which drops this future before the
        // node can be put under suspicion, and every later request would wait on it again.
        let connecting = self.node_on(address, Lane::of(commands.iter()));
        let mut conn = tokio::time::timeout(self.settings.connect_timeout, connecting)
            .await
            .map_err(|_| timed_out(address, "connecting"))??;
        let mut pipe = redis::pipe();
        if asking {
            // ASKING lets the next command (or, after MULTI, the whole block) use the slot the
            // node is importing; one write, so nothing comes between.
            pipe.cmd("ASKING");
        }
        for cmd in commands {
            pipe.add_command(cmd);
        }
        let exchange = conn.req_packed_commands(&pipe, usize::from(asking), unit.len());
        let replies = tokio::time::timeout(self.settings.response_timeout, exchange)
            .await
            .map_err(|_| timed_out(address, "waiting for its reply"))??;
        // A redirect or refusal among the replies (of the command, or inside a MULTI block,
        // whose EXEC then aborted) is the unit's error.
        match replies.iter().find_map(redirect_in) {
            Some(err) => Err(err),
            None => Ok(replies),
        }
    }

    /// Sends one unit to the master of its slot, following redirects and retrying it only
    /// while its error proves it did not run. Returns one reply per command of the unit.
    ///
    /// A master that timed out is under suspicion: the unit is then not sent (unless a fresh
    /// slot map routes it elsewhere) and the error says so, at once, so the callers of every
    /// other master go on. A timeout or broken connection is never retried (the unit may have
    /// run); it refreshes the slot map, so a failover is followed by the next request. Retries
    /// of what did not run stop once half the response timeout is spent, so the caller learns
    /// "not sent" rather than its own timeout's "outcome unknown".
    async fn send(&self, unit: Unit<'_>) -> RedisResult<Vec<Value>> {
        let slot = unit.slot();
        let started = Instant::now();
        let retry_budget = self.settings.response_timeout / 2;
        let mut backoff = FIRST_BACKOFF;
        let mut target: Option<Retry> = None;
        let mut retries = 0;
        loop {
            let routed = match &target {
                None | Some(Retry::Later) => self.master_of(slot).map(|address| (address, false)),
                Some(Retry::Moved(address)) => Ok((address.clone(), false)),
                Some(Retry::Ask(address)) => Ok((address.clone(), true)),
            };
            let sent = match routed {
                Ok((address, asking)) => {
                    let address = if !asking && self.is_suspect(&address) {
                        // A failover may have moved the slot since the node stopped answering.
                        drop(self.refresh_if_older(SUSPECT_REFRESH).await);
                        let now = self.master_of(slot).unwrap_or(address);
                        if self.is_suspect(&now) {
                            return Err(not_answering(&now));
                        }
                        now
                    } else {
                        address
                    };
                    let sent = self.attempt(&address, asking, &unit).await;
                    if let Err(err) = &sent {
                        self.note_failure(&address, Lane::of(unit.commands().iter()), err);
                    }
                    sent
                }
                Err(err) => Err(err),
            };
            let err = match sent {
                Ok(replies) => return Ok(replies),
                Err(err) => err,
            };
            let Some(retry) = retry_for(&err) else {
                if err.is_timeout() || err.is_io_error() {
                    // It may have run: not resent. The map may be stale (a failover): read it
                    // again in the background, so the next request goes where the slot is now.
                    if let Some(me) = self.me.upgrade()
                        && let Ok(runtime) = tokio::runtime::Handle::try_current()
                    {
                        runtime.spawn(async move { drop(me.refresh(None).await) });
                    }
                }
                return Err(err);
            };
            retries += 1;
            if retries > MAX_RETRIES || started.elapsed() >= retry_budget {
                return Err(err);
            }
            match &retry {
                // The slot map is stale: read it again from the node that knows.
                Retry::Moved(address) => drop(self.refresh(Some(address)).await),
                Retry::Ask(_) => {}
                Retry::Later => {
                    tracing::debug!(error = %err, "the cluster refused a request that did not run; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    drop(self.refresh(None).await);
                }
            }
            target = Some(retry);
        }
    }
}

/// Looks at a node under suspicion every [`PROBE_INTERVAL`] until it answers `PING` or the
/// slot map no longer names it as a master; then requests go to it (or past it) again. Ends
/// when the router is dropped.
async fn probe(router: Weak<ClusterRouter>, address: String) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(router) = router.upgrade() else {
            return;
        };
        drop(router.refresh_if_older(PROBE_INTERVAL).await);
        if !router.masters().contains(&address) {
            router.clear_suspect(&address);
            return;
        }
        let ping = async {
            let mut conn = router.node(&address).await?;
            redis::cmd("PING").query_async::<Value>(&mut conn).await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(router.settings.response_timeout, ping).await {
            router.clear_suspect(&address);
            return;
        }
    }
}

/// The error of a step with the node at `address` that did not finish in time: an I/O
/// timeout, so `is_timeout` holds and the caller's outcome is unknown.
fn timed_out(address: &str, step: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("cluster node {address} did not answer in time ({step})"),
    ))
}

/// True when `err` says the node did not answer: a timeout, a failed or refused connect, a
/// broken connection. Such a node is put under suspicion.
fn unanswered(err: &RedisError) -> bool {
    err.is_timeout() || err.is_io_error() || err.is_connection_dropped()
}

/// The error of a request not sent because its node is under suspicion: a refusal (nothing
/// ran, so `Error::is_outcome_unknown` is false and `is_transient` true).
fn not_answering(address: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!(
            "cluster node {address} did not answer recently and its slots have not moved; \
             the request was not sent"
        ),
    ))
}

/// The error of a reply that redirects or refuses the request (so it did not run), if it
/// is one. Other error replies (WRONGTYPE...) stay replies, for the caller to check.
fn redirect_in(reply: &Value) -> Option<RedisError> {
    match reply {
        Value::ServerError(err) => {
            let err = RedisError::from(err.clone());
            retry_for(&err).map(|_| err)
        }
        _ => None,
    }
}

/// A pipeline's unit, owned (see [`Unit`]).
enum PipelineUnit {
    Command(Cmd),
    Block(Pipeline),
}

/// The units of a pipeline, in order: each MULTI…EXEC block, and each command outside one.
fn units(pipeline: &Pipeline) -> Vec<PipelineUnit> {
    let mut units = Vec::new();
    let mut block: Option<Pipeline> = None;
    for cmd in pipeline.cmd_iter() {
        let name = command_name(cmd);
        if let Some(open) = block.as_mut() {
            open.add_command(cmd.clone());
            if name.eq_ignore_ascii_case(b"EXEC") || name.eq_ignore_ascii_case(b"DISCARD") {
                units.extend(block.take().map(PipelineUnit::Block));
            }
        } else if name.eq_ignore_ascii_case(b"WAIT")
            && let Some(previous) = units.pop()
        {
            units.push(with_wait(previous, cmd.clone()));
        } else if name.eq_ignore_ascii_case(b"MULTI") {
            let mut open = redis::pipe();
            open.add_command(cmd.clone());
            block = Some(open);
        } else {
            units.push(PipelineUnit::Command(cmd.clone()));
        }
    }
    // A MULTI without EXEC is sent as it is; Redis answers it as it would on one server.
    units.extend(block.map(PipelineUnit::Block));
    units
}

/// `unit` with the `WAIT` that follows it in the pipeline (`replicas.rs`), sent as one unit:
/// `WAIT` counts the replicas that have the writes sent before it *on its connection*, so it
/// must reach the node that took the unit's write, and a redirect or retry must resend both.
/// `WAIT` names no key, so the unit is still routed by the slot of the unit's keys.
fn with_wait(unit: PipelineUnit, wait: Cmd) -> PipelineUnit {
    let mut block = match unit {
        PipelineUnit::Block(block) => block,
        PipelineUnit::Command(cmd) => {
            let mut block = redis::pipe();
            block.add_command(cmd);
            block
        }
    };
    block.add_command(wait);
    PipelineUnit::Block(block)
}

fn command_name(cmd: &Cmd) -> &[u8] {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => name,
        _ => b"",
    }
}

/// Why a unit's error says it did not run, and so may be sent again.
enum Retry {
    /// `MOVED`: send it to this node (`host:port`).
    Moved(String),
    /// `ASK`: send `ASKING` and it to this node, once.
    Ask(String),
    /// The cluster is busy or reconfiguring: wait, then send it by slot again.
    Later,
}

fn retry_for(err: &RedisError) -> Option<Retry> {
    let redirect = || {
        err.redirect_node()
            .map(|(address, _slot)| address.to_owned())
    };
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::Moved) => redirect().map(Retry::Moved),
        ErrorKind::Server(ServerErrorKind::Ask) => redirect().map(Retry::Ask),
        ErrorKind::Server(
            ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::ReadOnly,
        )
        | ErrorKind::ClusterConnectionNotFound => Some(Retry::Later),
        // Refused: the request was never written.
        _ if err.is_connection_refusal() => Some(Retry::Later),
        _ => None,
    }
}

/// One thing a cluster request can be: it goes to one node as a whole.
enum Unit<'a> {
    /// A single command.
    Command(&'a Cmd),
    /// A MULTI…EXEC block, all its keys in one slot.
    Block(&'a Pipeline),
}

impl Unit<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Command(_) => 1,
            Self::Block(block) => block.len(),
        }
    }

    fn commands(&self) -> Vec<Cmd> {
        match self {
            Self::Command(cmd) => vec![(*cmd).clone()],
            Self::Block(block) => block.cmd_iter().cloned().collect(),
        }
    }

    /// The slot of the unit's first key; `None` for a unit without keys.
    fn slot(&self) -> Option<u16> {
        match self {
            Self::Command(cmd) => first_key(cmd).map(key_slot),
            Self::Block(block) => block.cmd_iter().find_map(first_key).map(key_slot),
        }
    }
}

/// The first key of a command this crate sends: the argument after the name, but after
/// `numkeys` for scripts, and none for commands without keys.
fn first_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        _ => b"0".as_slice(),
    });
    let name = args.next()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let _script = args.next()?;
            let numkeys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
            if numkeys == 0 { None } else { args.next() }
        }
        b"PING" | b"TIME" | b"INFO" | b"SCRIPT" | b"PUBLISH" | b"CLUSTER" | b"ASKING"
        | b"MULTI" | b"EXEC" | b"DISCARD" | b"WAIT" | b"CLIENT" | b"CONFIG" | b"DBSIZE"
        | b"HELLO" | b"AUTH" | b"SELECT" | b"ECHO" => None,
        _ => args.next(),
    }
}

/// The hash slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key, mod 16384), as
/// Redis Cluster computes it.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _bit in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// The error of a pipeline one of whose units failed with `err`. A pipeline's units are sent
/// apart on a cluster, so when another unit ran, the caller cannot learn from one error
/// which of its pushes were applied: the error then says the outcome is unknown (an I/O
/// error, as a lost connection would), never that nothing ran.
fn partial_failure(err: RedisError, ran_somewhere: bool) -> RedisError {
    // An error that may have run says "unknown" already; a refusal (an I/O error too) would
    // say "nothing ran", which is false once another unit ran.
    if !ran_somewhere || may_have_run(&err) {
        return err;
    }
    RedisError::from(std::io::Error::other(format!(
        "part of a pipeline ran on the cluster and part failed ({err}): which parts were \
         applied is unknown"
    )))
}

/// The replies of a pipeline's units, in order, or the pipeline's error: a unit that may have
/// run (a timeout, a broken connection) makes the whole outcome unknown whatever came before
/// it; a unit refused unsent while others ran makes it unknown too (the caller cannot tell
/// from one error which ran); only when nothing ran is the refusal itself the error.
fn combine_units(results: Vec<RedisResult<Vec<Value>>>) -> RedisResult<Vec<Value>> {
    let ran_somewhere = results.iter().any(Result::is_ok);
    if let Some(Err(unknown)) = results
        .iter()
        .find(|result| matches!(result, Err(err) if may_have_run(err)))
    {
        return Err(unknown.clone());
    }
    let mut replies = Vec::new();
    for result in results {
        match result {
            Ok(unit_replies) => replies.extend(unit_replies),
            Err(err) => return Err(partial_failure(err, ran_somewhere)),
        }
    }
    Ok(replies)
}

/// True when the server refused a command for good: not allowed by the user's ACL
/// (`NOPERM`) or unknown (renamed, disabled).
fn refused_for_good(err: &RedisError) -> bool {
    err.code() == Some("NOPERM")
        || matches!(err.kind(), ErrorKind::Server(ServerErrorKind::NoPerm))
        || err.to_string().to_lowercase().contains("unknown command")
}

/// True when a request that failed with `err` may still have run: its reply was lost to a
/// timeout or a broken connection, not refused before it was written.
fn may_have_run(err: &RedisError) -> bool {
    !err.is_connection_refusal()
        && (err.is_io_error() || err.is_timeout() || err.is_connection_dropped())
}

/// `host:port` → (host, port).
fn split_address(address: &str) -> RedisResult<(String, u16)> {
    address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
        .ok_or_else(|| {
            RedisError::from((
                ErrorKind::Client,
                "a cluster node address is not host:port",
                address.to_owned(),
            ))
        })
}

fn no_reply(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "the cluster gave no reply",
        what.to_owned(),
    ))
}

/// The slot ranges and their masters (`host:port`) of a `CLUSTER SLOTS` reply
/// (`[[start, end, [host, port, id], replicas...]...]`).
fn slot_ranges(reply: &Value) -> Vec<(u16, u16, String)> {
    let mut ranges = Vec::new();
    let Value::Array(entries) = reply else {
        return ranges;
    };
    for entry in entries {
        let Value::Array(fields) = entry else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) {
            ranges.push((start, end, format!("{host}:{port}")));
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_is_cut_into_blocks_and_single_commands() {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("a");
        pipe.cmd("MULTI")
            .cmd("SET")
            .arg("{t}x")
            .arg(1)
            .cmd("INCR")
            .arg("{t}y");
        pipe.cmd("EXEC");
        pipe.cmd("GET").arg("b");
        let units = units(&pipe);
        let lens: Vec<usize> = units
            .iter()
            .map(|unit| match unit {
                PipelineUnit::Command(_) => 1,
                PipelineUnit::Block(block) => block.len(),
            })
            .collect();
        assert_eq!(lens, [1, 4, 1]);
    }

    #[test]
    fn a_wait_goes_with_the_unit_before_it() {
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI").cmd("SET").arg("{t}x").arg(1).cmd("EXEC");
        pipe.cmd("WAIT").arg(1).arg(100);
        pipe.cmd("EVALSHA").arg("sha").arg(1).arg("{u}k");
        pipe.cmd("WAIT").arg(1).arg(100);
        let lens: Vec<usize> = units(&pipe)
            .iter()
            .map(|unit| match unit {
                PipelineUnit::Command(_) => 1,
                PipelineUnit::Block(block) => block.len(),
            })
            .collect();
        assert_eq!(lens, [4, 2]);
    }

    fn refused() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    fn timed_out_unit() -> RedisError {
        timed_out("127.0.0.1:1", "waiting for its reply")
    }

    #[test]
    fn a_unit_that_may_have_run_makes_the_whole_pipeline_outcome_unknown() {
        // A refusal first, a timeout after it: the timeout decides (it may have run), not the
        // refusal's "nothing ran".
        let err = combine_units(vec![Err(refused()), Err(timed_out_unit())]).unwrap_err();
        assert!(may_have_run(&err), "{err}");
        // Nothing ran, nothing may have: the refusal as it is.
        let err = combine_units(vec![Err(refused()), Err(refused())]).unwrap_err();
        assert!(err.is_connection_refusal(), "{err}");
        // One unit ran and one was refused: which pushes applied is unknown.
        let err = combine_units(vec![Ok(vec![Value::Okay]), Err(refused())]).unwrap_err();
        assert!(may_have_run(&err), "{err}");
        assert_eq!(
            combine_units(vec![Ok(vec![Value::Okay]), Ok(vec![Value::Int(1)])]).unwrap(),
            vec![Value::Okay, Value::Int(1)]
        );
    }

    #[test]
    fn a_request_for_a_node_under_suspicion_is_a_refusal_not_an_unknown_outcome() {
        let err = not_answering("127.0.0.1:1");
        assert!(err.is_connection_refusal());
        assert!(!may_have_run(&err));
        assert!(may_have_run(&timed_out_unit()));
    }

    #[test]
    fn addresses_split_at_the_last_colon() {
        assert_eq!(
            split_address("127.0.0.1:7000").unwrap(),
            ("127.0.0.1".to_owned(), 7000)
        );
        assert!(split_address("no-port").is_err());
    }

    fn reply_error(line: &str) -> RedisError {
        redis::parse_redis_value(line.as_bytes())
            .expect("a RESP error line parses")
            .extract_error()
            .expect_err("an error line is an error")
    }

    #[test]
    fn only_replies_proving_a_command_did_not_run_are_retried() {
        for line in [
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
        ] {
            assert!(
                matches!(retry_for(&reply_error(line)), Some(Retry::Later)),
                "{line:?} must be retried later"
            );
        }
        match retry_for(&reply_error("-MOVED 3999 127.0.0.1:6381\r\n")) {
            Some(Retry::Moved(node)) => assert_eq!(node, "127.0.0.1:6381"),
            _ => panic!("MOVED must be followed to its node"),
        }
        match retry_for(&reply_error("-ASK 3999 127.0.0.1:6382\r\n")) {
            Some(Retry::Ask(node)) => assert_eq!(node, "127.0.0.1:6382"),
            _ => panic!("ASK must be followed to its node"),
        }
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(retry_for(&refused), Some(Retry::Later)));
        // A reply that may follow a command that ran, or no reply at all: never resent.
        for err in [
            reply_error("-ERR something\r\n"),
            reply_error("-BUSY Redis is busy running a script.\r\n"),
            reply_error("-OOM command not allowed\r\n"),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        ] {
            assert!(retry_for(&err).is_none(), "{err} must not be resent");
        }
    }
}
