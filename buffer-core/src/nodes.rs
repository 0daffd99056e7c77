//! The deployment's masters: one server, or every master of a Redis Cluster, for dashboards
//! and for operations that must reach each master (server facts, replica acknowledgement).

use serde::Serialize;

use crate::buffer::Buffer;
use crate::error::Result;
use crate::info::ServerInfo;

/// One master and what its `INFO` says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MasterInfo {
    /// Its address, `host:port`.
    pub address: String,
    /// Its facts.
    pub info: ServerInfo,
}

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
    /// Transient errors, from any master.
    pub async fn masters_info(&self) -> Result<Vec<MasterInfo>> {
        let mut out = Vec::new();
        for address in self.masters().await? {
            let conn = self.conn();
            let node = address.clone();
            let reply = self
                .run("server info", "", async move {
                    conn.on_node(&node, crate::info::info_command()).await
                })
                .await?;
            let text: String =
                redis::from_redis_value(reply).map_err(|err| crate::error::Error::Corrupt {
                    what: format!("INFO of {address} is not text: {err}"),
                })?;
            out.push(MasterInfo {
                address,
                info: ServerInfo::parse(&text),
            });
        }
        Ok(out)
    }
}
