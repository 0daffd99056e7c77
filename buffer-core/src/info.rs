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

impl ServerInfo {
    /// Several masters' facts as one: the version and mode of the first, and the sums of
    /// memory, memory limits, ops/s and clients over all of them. `None` when there are none.
    pub fn total<'a>(masters: impl IntoIterator<Item = &'a ServerInfo>) -> Option<ServerInfo> {
        let mut masters = masters.into_iter();
        let mut total = masters.next()?.clone();
        for master in masters {
            total.used_memory += master.used_memory;
            total.maxmemory += master.maxmemory;
            total.ops_per_sec += master.ops_per_sec;
            total.clients += master.clients;
        }
        Some(total)
    }
}

impl Buffer {
    /// Reads server version, mode, memory, ops/s and clients. On a cluster: the version and
    /// mode of the first master that answered and the sums over the masters that answered
    /// ([`ServerInfo::total`]); [`Buffer::masters_status`] gives each master, and which did
    /// not answer.
    ///
    /// # Errors
    /// Transient errors; on a cluster, the first master's error when none answered.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        if self.is_cluster().await? {
            let mut infos = Vec::new();
            let mut first_error = None;
            for (_address, answer) in self.ask_masters().await? {
                match answer {
                    Ok(info) => infos.push(info),
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            // None answered: the first one's error, as a single server's would be.
            return ServerInfo::total(&infos).ok_or_else(|| {
                first_error.unwrap_or_else(|| crate::error::Error::Corrupt {
                    what: "the cluster lists no master".into(),
                })
            });
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
