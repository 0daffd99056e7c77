//! The one connection type every operation sends its commands through: one Redis server or a
//! Redis Cluster, found out from the server itself.
//!
//! [`Connection`] implements [`redis::aio::ConnectionLike`], so every operation keeps writing
//! `query_async(&mut conn)` and never knows which kind of deployment it talks to.
//!
//! - **One server**: today's `ConnectionManager` (one multiplexed socket that reconnects).
//! - **Cluster**: `redis::cluster_async::ClusterConnection`, with the crate's own retries
//!   turned off. The crate retries a request after *any* connection error, also after the
//!   request was written and may have run: a push would then be applied twice, and an
//!   unknown outcome would be hidden from the caller. Instead this module retries only what
//!   provably did not run: `MOVED` (sent to the named node), `ASK` (`ASKING` + the request,
//!   on the named node), `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `READONLY` (after
//!   a short doubling backoff), a refused connection and a node the client has no connection
//!   to (nothing was written). Every other error reaches the caller as it came, so
//!   `Error::is_outcome_unknown` stays true where it was.
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

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult,
    ServerErrorKind, Value,
};
use tokio::sync::OnceCell;

/// How many times one unit is sent again after a reply that proves it did not run.
const MAX_RETRIES: u32 = 24;
/// The first wait before a retry after `TRYAGAIN`/`CLUSTERDOWN`/...; it doubles up to
/// [`MAX_BACKOFF`]. Redirects are followed at once.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Where and how to connect; shared by every clone of a [`Connection`].
#[derive(Debug)]
pub(crate) struct ConnectionSettings {
    /// The node URLs, as configured (one server, or seed nodes of a cluster).
    pub(crate) urls: Vec<String>,
    pub(crate) response_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

/// What [`Connection`] talks to, decided at the first command.
#[derive(Clone)]
enum Backend {
    /// One server.
    Single(ConnectionManager),
    /// A cluster; `masters` is not cached: topology changes, so it is asked when needed.
    Cluster(ClusterConnection),
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
}

impl Connection {
    /// A connection that connects at its first command. Only parses: no I/O.
    ///
    /// # Errors
    /// The `redis` crate's error for a URL it cannot parse (the caller names the URL).
    pub(crate) fn lazy(settings: ConnectionSettings) -> RedisResult<Self> {
        let mut db = 0;
        for url in &settings.urls {
            db = Client::open(url.as_str())?
                .get_connection_info()
                .redis_settings()
                .db();
        }
        Ok(Self {
            settings: Arc::new(settings),
            backend: Arc::new(OnceCell::new()),
            db,
        })
    }

    /// True once the first command found a cluster; `None` before the first command.
    pub(crate) fn is_cluster(&self) -> Option<bool> {
        self.backend
            .get()
            .map(|backend| matches!(backend, Backend::Cluster(_)))
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
            let client = ClusterClientBuilder::new(settings.urls.iter().map(String::as_str))
                .retries(0)
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.response_timeout)
                .build()?;
            Ok(Backend::Cluster(client.get_async_connection().await?))
        } else {
            let client = Client::open(settings.urls[0].as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(settings.response_timeout))
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            Ok(Backend::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
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
        let info: String = match redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await
        {
            Ok(info) => info,
            // A server that refuses INFO (an ACL without it, a renamed command) is taken for
            // one server: a cluster node must answer it for the cluster client anyway.
            Err(err) if matches!(err.kind(), ErrorKind::Server(_) | ErrorKind::Extension) => {
                return Ok(false);
            }
            Err(err) => return Err(err),
        };
        Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
    }

    /// The addresses (`host:port`) of the masters serving slots, in slot order; for one
    /// server, its address.
    ///
    /// # Errors
    /// The `redis` crate's error when no node answers.
    pub(crate) async fn masters(&self) -> RedisResult<Vec<String>> {
        match self.backend().await? {
            Backend::Single(_) => {
                let client = Client::open(self.settings.urls[0].as_str())?;
                Ok(vec![client.get_connection_info().addr().to_string()])
            }
            Backend::Cluster(conn) => {
                let reply = conn
                    .clone()
                    .route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                Ok(masters_from_slots(&reply))
            }
        }
    }

    /// Sends `cmd` to the node at `address` (`host:port`, as [`Connection::masters`] gives):
    /// for per-node facts (`INFO`). On one server the address is ignored.
    ///
    /// # Errors
    /// The `redis` crate's error.
    pub(crate) async fn on_node(&self, address: &str, cmd: Cmd) -> RedisResult<Value> {
        match self.backend().await? {
            Backend::Single(conn) => conn.clone().req_packed_command(&cmd).await,
            Backend::Cluster(conn) => {
                let (host, port) = split_address(address)?;
                conn.clone()
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                    )
                    .await
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.backend().await? {
                Backend::Single(conn) => conn.clone().req_packed_command(cmd).await,
                Backend::Cluster(conn) => {
                    let mut replies = send_unit(conn, Unit::Command(cmd)).await?;
                    replies.pop().ok_or_else(|| no_reply("a command"))
                }
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
                Backend::Single(conn) => {
                    conn.clone()
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                Backend::Cluster(conn) => {
                    if pipeline.is_transaction() {
                        // `pipe().atomic()`: one MULTI/EXEC, so one unit already (a CROSSSLOT
                        // error if its keys are not in one slot).
                        let replies = send_unit(conn, Unit::Block(pipeline)).await?;
                        return Ok(replies.into_iter().skip(offset).take(count).collect());
                    }
                    let units = units(pipeline);
                    let sends = units.iter().map(|unit| match unit {
                        PipelineUnit::Command(cmd) => send_unit(conn, Unit::Command(cmd)),
                        PipelineUnit::Block(block) => send_unit(conn, Unit::Block(block)),
                    });
                    let replies = try_join_all(sends)
                        .await?
                        .into_iter()
                        .flatten()
                        .skip(offset)
                        .take(count)
                        .collect();
                    Ok(replies)
                }
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.db
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
    /// `MOVED`: send it to this node.
    Moved(String, u16),
    /// `ASK`: send `ASKING` and it to this node, once.
    Ask(String, u16),
    /// The cluster is busy or reconfiguring: wait, then send it by slot again.
    Later,
}

fn retry_for(err: &redis::RedisError) -> Option<Retry> {
    let redirect = || {
        err.redirect_node()
            .and_then(|(address, _slot)| split_address(address).ok())
    };
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::Moved) => {
            redirect().map(|(host, port)| Retry::Moved(host, port))
        }
        ErrorKind::Server(ServerErrorKind::Ask) => {
            redirect().map(|(host, port)| Retry::Ask(host, port))
        }
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
    /// A single command: routed by the crate (by its key, or to every node for commands such
    /// as `SCRIPT LOAD`).
    Command(&'a Cmd),
    /// A MULTI…EXEC block (or an atomic pipeline), routed by its keys' slot.
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
}

/// Sends one unit, following redirects and retrying it only while its error proves it did
/// not run. Returns one reply per command of the unit.
async fn send_unit(conn: &ClusterConnection, unit: Unit<'_>) -> RedisResult<Vec<Value>> {
    let count = unit.len();
    let mut conn = conn.clone();
    let mut backoff = FIRST_BACKOFF;
    let mut target: Option<Retry> = None;
    let mut retries = 0;
    loop {
        let sent = match (&target, &unit) {
            (None | Some(Retry::Later), Unit::Command(cmd)) => {
                conn.req_packed_command(cmd).await.map(|reply| vec![reply])
            }
            (None | Some(Retry::Later), Unit::Block(block)) => {
                conn.req_packed_commands(block, 0, count).await
            }
            (Some(Retry::Moved(host, port)), _) => {
                let mut again = redis::pipe();
                for cmd in unit.commands() {
                    again.add_command(cmd);
                }
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                conn.route_pipeline(again, 0, count, route).await
            }
            (Some(Retry::Ask(host, port)), _) => {
                // ASKING lets the next command (or, after MULTI, the whole block) use the
                // slot the node is importing.
                let mut asking = redis::pipe();
                asking.cmd("ASKING");
                for cmd in unit.commands() {
                    asking.add_command(cmd);
                }
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                conn.route_pipeline(asking, 1, count, route).await
            }
        };
        let err = match sent {
            Ok(replies) => return Ok(replies),
            Err(err) => err,
        };
        let Some(retry) = retry_for(&err) else {
            return Err(err);
        };
        retries += 1;
        if retries > MAX_RETRIES {
            return Err(err);
        }
        if matches!(retry, Retry::Later) {
            tracing::debug!(error = %err, "the cluster refused a request that did not run; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        target = Some(retry);
    }
}

/// `host:port` → (host, port).
fn split_address(address: &str) -> RedisResult<(String, u16)> {
    address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
        .ok_or_else(|| {
            redis::RedisError::from((
                ErrorKind::Client,
                "a cluster node address is not host:port",
                address.to_owned(),
            ))
        })
}

fn no_reply(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        ErrorKind::Client,
        "the cluster gave no reply",
        what.to_owned(),
    ))
}

/// The masters of a `CLUSTER SLOTS` reply (`[[start, end, [host, port, id], replicas...]...]`),
/// each once, in slot order.
fn masters_from_slots(reply: &Value) -> Vec<String> {
    let mut ranges: Vec<(i64, String)> = Vec::new();
    if let Value::Array(entries) = reply {
        for entry in entries {
            let Value::Array(fields) = entry else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Array(master))) =
                (fields.first(), fields.get(2))
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
            ranges.push((*start, format!("{host}:{port}")));
        }
    }
    ranges.sort();
    let mut masters: Vec<String> = Vec::new();
    for (_, address) in ranges {
        if !masters.contains(&address) {
            masters.push(address);
        }
    }
    masters
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

    #[test]
    fn addresses_split_at_the_last_colon() {
        assert_eq!(
            split_address("127.0.0.1:7000").unwrap(),
            ("127.0.0.1".to_owned(), 7000)
        );
        assert!(split_address("no-port").is_err());
    }
}
