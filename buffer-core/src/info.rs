//! What the dashboard shows about the Redis server itself.

use serde::Serialize;

use crate::buffer::Buffer;
use crate::error::Result;

/// A few facts from `INFO`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// `redis_version`.
    pub version: String,
    /// `standalone`, `cluster` or `sentinel`.
    pub mode: String,
    /// `used_memory` in bytes.
    pub used_memory: u64,
    /// `maxmemory` in bytes (0 = no limit).
    pub maxmemory: u64,
    /// `instantaneous_ops_per_sec`.
    pub ops_per_sec: u64,
    /// `connected_clients`.
    pub clients: u64,
}

impl ServerInfo {
    /// Reads the fields it knows from the text of `INFO`.
    pub fn parse(info: &str) -> Self {
        let mut out = Self::default();
        for line in info.lines() {
            let Some((field, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            let number = || value.parse().unwrap_or(0);
            match field {
                "redis_version" => out.version = value.to_owned(),
                "redis_mode" => out.mode = value.to_owned(),
                "used_memory" => out.used_memory = number(),
                "maxmemory" => out.maxmemory = number(),
                "instantaneous_ops_per_sec" => out.ops_per_sec = number(),
                "connected_clients" => out.clients = number(),
                _ => {}
            }
        }
        out
    }
}

/// The `INFO` sections [`ServerInfo`] reads.
pub(crate) fn info_command() -> redis::Cmd {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("server").arg("memory").arg("stats").arg("clients");
    cmd
}

impl Buffer {
    /// Reads server version, mode, memory, ops/s and clients. On a cluster: the version and
    /// mode of the first master and the sums over every master ([`Buffer::masters_info`]
    /// gives each).
    ///
    /// # Errors
    /// Transient errors.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        if self.is_cluster().await? {
            let masters = self.masters_info().await?;
            let mut total = masters
                .first()
                .map(|master| master.info.clone())
                .unwrap_or_default();
            for master in masters.iter().skip(1) {
                total.used_memory += master.info.used_memory;
                total.maxmemory += master.info.maxmemory;
                total.ops_per_sec += master.info.ops_per_sec;
                total.clients += master.info.clients;
            }
            return Ok(total);
        }
        let mut conn = self.conn();
        let text: String = self
            .run("server info", "", async move {
                info_command().query_async(&mut conn).await
            })
            .await?;
        Ok(ServerInfo::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_parsed() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n# Memory\r\nused_memory:1024\r\nmaxmemory:0\r\ninstantaneous_ops_per_sec:12\r\nconnected_clients:3\r\n";
        let parsed = ServerInfo::parse(info);
        assert_eq!(parsed.version, "7.0.15");
        assert_eq!(parsed.mode, "standalone");
        assert_eq!(
            (parsed.used_memory, parsed.ops_per_sec, parsed.clients),
            (1024, 12, 3)
        );
    }
}
