//! The deployment's masters: one server, or every master of a Redis Cluster, for dashboards
//! and for operations that must reach each master (server facts, replica acknowledgement).

use serde::Serialize;

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::info::ServerInfo;
use crate::name::StoreName;

/// One master and what its `INFO` says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MasterInfo {
    /// Its address, `host:port`.
    pub address: String,
    /// Its facts.
    pub info: ServerInfo,
}

/// Whether a master answered when it was last asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum MasterHealth {
    /// It answered `INFO`: its facts.
    Up(ServerInfo),
    /// It did not answer within the timeouts: why, in a few words (`refused`,
    /// `connection lost`, `no answer in 6s`).
    Down(String),
}

/// One master and its health: what [`Buffer::masters_status`] gives for each master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MasterStatus {
    /// Its address, `host:port`.
    pub address: String,
    /// Whether it answered, and its facts when it did.
    pub health: MasterHealth,
}

impl MasterStatus {
    /// A master's status (for dashboards' tests; [`Buffer::masters_status`] makes them).
    pub fn new(address: impl Into<String>, health: MasterHealth) -> Self {
        Self {
            address: address.into(),
            health,
        }
    }

    /// Its facts, when it answered.
    pub fn info(&self) -> Option<&ServerInfo> {
        match &self.health {
            MasterHealth::Up(info) => Some(info),
            MasterHealth::Down(_) => None,
        }
    }

    /// True when it answered.
    pub fn is_up(&self) -> bool {
        self.info().is_some()
    }
}

/// Longest reason kept for a master that did not answer: a dashboard shows it on one line.
const MAX_REASON_CHARS: usize = 60;

impl Buffer {
    /// True when the URL(s) name a Redis Cluster (asked of the server at the first command;
    /// this connects if nothing did yet).
    ///
    /// # Errors
    /// Transient errors while connecting.
    pub async fn is_cluster(&self) -> Result<bool> {
        let conn = self.conn();
        self.run("cluster mode", "", async move { conn.cluster_mode().await })
            .await
    }

    /// The addresses (`host:port`) of the masters: the one server, or every master of the
    /// cluster serving slots, in slot order. Asked of the cluster at each call, so it follows
    /// resharding and failover.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn masters(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        self.run("masters", "", async move { conn.masters().await })
            .await
    }

    /// [`ServerInfo`] of each master, in the order of [`Buffer::masters`].
    ///
    /// # Errors
    /// Transient errors, from any master ([`Buffer::masters_status`] gives each master's
    /// answer or error instead of failing whole).
    pub async fn masters_info(&self) -> Result<Vec<MasterInfo>> {
        let mut out = Vec::new();
        for (address, info) in self.ask_masters().await? {
            out.push(MasterInfo {
                address,
                info: info?,
            });
        }
        Ok(out)
    }

    /// Each master, in the order of [`Buffer::masters`], with its health: its facts when it
    /// answered `INFO`, or why not. The masters are asked at once, each within the response
    /// timeout, so one that is gone or frozen delays the answer by at most that timeout and
    /// never hides the others. A master that answers again is `Up` at the next call: each
    /// node's connection reconnects by itself.
    ///
    /// On a cluster, a master stays listed while the cluster still gives it its slots (a
    /// dead master without a replica to replace it); after a failover the promoted replica
    /// is listed instead.
    ///
    /// # Errors
    /// Transient errors when the masters cannot be listed: the one server, or no node of the
    /// cluster, answers.
    pub async fn masters_status(&self) -> Result<Vec<MasterStatus>> {
        Ok(self
            .ask_masters()
            .await?
            .into_iter()
            .map(|(address, info)| {
                let health = match info {
                    Ok(info) => MasterHealth::Up(info),
                    Err(err) => MasterHealth::Down(short_reason(&err)),
                };
                MasterStatus { address, health }
            })
            .collect())
    }

    /// The master (`host:port`) holding `store` on a cluster: the master of the slot of the
    /// store's hash tag, where every key of the store, its batches and its locks live. Read
    /// from the slot map as this buffer last saw it (at connect, after a `MOVED`, at each
    /// [`Buffer::masters`] or [`Buffer::masters_status`]), so it sends nothing once
    /// connected. `None` on one server.
    ///
    /// # Errors
    /// Transient errors when this connects first.
    pub async fn node_of(&self, store: &StoreName) -> Result<Option<String>> {
        let conn = self.conn();
        let key = self.layout().group_for(store).stores;
        self.run("node of store", store.as_str(), async move {
            conn.master_of_key(key.as_bytes()).await
        })
        .await
    }

    /// Every master and its `INFO` or the error asking it, all asked at once.
    pub(crate) async fn ask_masters(&self) -> Result<Vec<(String, Result<ServerInfo>)>> {
        let masters = self.masters().await?;
        let asks = masters.into_iter().map(|address| async move {
            let conn = self.conn();
            let node = address.clone();
            let reply = self
                .run("server info", "", async move {
                    conn.on_node(&node, crate::info::info_command()).await
                })
                .await;
            let info = reply.and_then(|reply| {
                let text: String =
                    redis::from_redis_value(reply).map_err(|err| Error::Corrupt {
                        what: format!("INFO of {address} is not text: {err}"),
                    })?;
                Ok(ServerInfo::parse(&text))
            });
            (address, info)
        });
        Ok(futures::future::join_all(asks).await)
    }
}

/// Why a master did not answer, in a few words: a dashboard shows it after the master's
/// address in a cell of under 40 columns.
fn short_reason(err: &Error) -> String {
    let text = match err {
        Error::Timeout { timeout, .. } => format!("no answer in {}s", timeout.as_secs_f32()),
        Error::Redis { source, .. } if source.is_timeout() => "no answer in time".to_owned(),
        Error::Redis { source, .. } if source.is_connection_refusal() => "refused".to_owned(),
        Error::Redis { source, .. } if source.is_connection_dropped() => {
            "connection lost".to_owned()
        }
        Error::Redis { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= MAX_REASON_CHARS {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(MAX_REASON_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reasons_are_short_and_on_one_line() {
        let timeout = Error::Timeout {
            op: "server info",
            store: String::new(),
            timeout: Duration::from_millis(2500),
        };
        assert_eq!(short_reason(&timeout), "no answer in 2.5s");
        let refused = Error::Redis {
            op: "server info",
            store: String::new(),
            source: redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )),
        };
        assert_eq!(short_reason(&refused), "refused");
        let long = Error::Config(format!("{}\nsecond line", "x".repeat(200)));
        let reason = short_reason(&long);
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
        assert!(reason.ends_with('…') && !reason.contains('\n'));
    }
}
