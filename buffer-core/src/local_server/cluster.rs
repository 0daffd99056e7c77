//! A private Redis Cluster for the demo and the tests (feature `local-server`), re-exported as
//! `local_server::LocalCluster`.
//!
//! `masters` (default 3) nodes and `replicas` replicas of each, every one a [`LocalRedis`]
//! started with `--cluster-enabled yes` in its own temporary directory, on a free port whose
//! cluster bus port (port + 10000) is free too. They are joined with `redis-cli --cluster
//! create`, and the cluster is ready when every node says `cluster_state:ok` and every node
//! describes the same slot map. Every node is killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{LocalRedis, LocalServerError, free_port, redis_server_binary};

/// How long a new cluster gets to agree on its slot map.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = crate::connection::SLOTS;

/// The `redis-cli` binary: `BUFFER_REDIS_CLI`, else the `redis-cli` next to
/// `BUFFER_REDIS_SERVER`, else `redis-cli` on `PATH`.
pub fn redis_cli_binary() -> PathBuf {
    if let Some(cli) = std::env::var_os("BUFFER_REDIS_CLI") {
        return PathBuf::from(cli);
    }
    let server = redis_server_binary();
    match server.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("redis-cli"),
        _ => PathBuf::from("redis-cli"),
    }
}

/// A free port whose cluster bus port (port + 10000) is free too, as far as can be known now.
fn free_cluster_port() -> std::io::Result<u16> {
    for _attempt in 0..200 {
        let port = free_port()?;
        if port <= u16::MAX - 10_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "no free port with a free cluster bus port (port + 10000)",
    ))
}

/// The hash slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key, mod 16384), as
/// Redis Cluster computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    crate::connection::key_slot(key)
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// Its node id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// True for a master.
    pub master: bool,
    /// The slot ranges it serves (inclusive), empty for a replica.
    pub slots: Vec<(u16, u16)>,
}

/// A private Redis Cluster of [`LocalRedis`] nodes, killed on drop.
#[derive(Debug)]
pub struct LocalCluster {
    /// Every node, masters first as `redis-cli --cluster create` was given them.
    nodes: Vec<LocalRedis>,
    /// The password every node requires (`--requirepass`, `--masterauth`), if any.
    password: Option<String>,
}

impl LocalCluster {
    /// Starts `masters` masters with `replicas` replicas each, joins them and waits until the
    /// cluster is ready.
    ///
    /// # Errors
    /// As [`LocalRedis::start`] for each node; [`LocalServerError::DidNotStart`] when
    /// `redis-cli --cluster create` fails or the nodes do not agree within 30 s.
    pub fn start(masters: usize, replicas: usize) -> Result<Self, LocalServerError> {
        Self::start_with(masters, replicas, None)
    }

    /// [`LocalCluster::start`] with every node requiring `password` (and replicas using it
    /// to reach their masters).
    ///
    /// # Errors
    /// As [`LocalCluster::start`].
    pub fn start_with(
        masters: usize,
        replicas: usize,
        password: Option<&str>,
    ) -> Result<Self, LocalServerError> {
        if masters < 3 {
            return Err(LocalServerError::DidNotStart {
                reason: format!("a Redis Cluster needs at least 3 masters, not {masters}"),
                log: String::new(),
            });
        }
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--appendonly",
            "no",
        ];
        if let Some(password) = password {
            args.extend(["--requirepass", password, "--masterauth", password]);
        }
        let mut nodes = Vec::new();
        for _node in 0..masters * (replicas + 1) {
            nodes.push(LocalRedis::start_on_port(
                redis_server_binary(),
                &args,
                free_cluster_port,
            )?);
        }
        let cluster = Self {
            nodes,
            password: password.map(str::to_owned),
        };
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        create.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let args: Vec<&str> = create.iter().map(String::as_str).collect();
        cluster.cli(None, &args)?;
        cluster.wait_until_ready(READY_TIMEOUT)?;
        Ok(cluster)
    }

    /// Every node (running or killed), masters first as the cluster was created.
    pub fn nodes(&self) -> &[LocalRedis] {
        &self.nodes
    }

    /// The URL of every running node (`redis://[:password@]127.0.0.1:<port>`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|node| node.pid() != 0)
            .map(|node| self.url_of(node.port()))
            .collect()
    }

    /// The URL of the node on `port`, with the password if there is one.
    pub fn url_of(&self, port: u16) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{port}"),
            None => format!("redis://127.0.0.1:{port}"),
        }
    }

    /// The ports of every node, masters first.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(LocalRedis::port).collect()
    }

    /// The process ids of every node (0 for a killed one).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(LocalRedis::pid).collect()
    }

    /// The nodes as a running node describes them (`CLUSTER NODES`).
    ///
    /// # Errors
    /// [`LocalServerError::DidNotStart`] when no node answers.
    pub fn topology(&self) -> Result<Vec<ClusterNode>, LocalServerError> {
        let mut last = None;
        for node in self.nodes.iter().filter(|node| node.pid() != 0) {
            match self.cli(Some(node.port()), &["CLUSTER", "NODES"]) {
                Ok(text) => return Ok(parse_nodes(&text)),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| LocalServerError::DidNotStart {
            reason: "no node of the cluster is running".into(),
            log: String::new(),
        }))
    }

    /// The ports of the masters that serve slots.
    ///
    /// # Errors
    /// As [`LocalCluster::topology`].
    pub fn masters(&self) -> Result<Vec<u16>, LocalServerError> {
        Ok(self
            .topology()?
            .into_iter()
            .filter(|node| node.master && !node.slots.is_empty())
            .map(|node| node.port)
            .collect())
    }

    /// The port of the master serving `slot`.
    ///
    /// # Errors
    /// As [`LocalCluster::topology`]; [`LocalServerError::DidNotStart`] when no master
    /// serves it.
    pub fn master_for_slot(&self, slot: u16) -> Result<u16, LocalServerError> {
        self.topology()?
            .into_iter()
            .find(|node| {
                node.master
                    && node
                        .slots
                        .iter()
                        .any(|&(first, last)| (first..=last).contains(&slot))
            })
            .map(|node| node.port)
            .ok_or_else(|| LocalServerError::DidNotStart {
                reason: format!("no master serves slot {slot}"),
                log: String::new(),
            })
    }

    /// The port of the master serving `key`'s slot.
    ///
    /// # Errors
    /// As [`LocalCluster::master_for_slot`].
    pub fn master_for_key(&self, key: &str) -> Result<u16, LocalServerError> {
        self.master_for_slot(key_slot(key.as_bytes()))
    }

    /// Kills the node on `port` with SIGKILL (no shutdown, nothing saved) and waits for it to
    /// exit. Returns false when no running node has that port.
    pub fn kill(&mut self, port: u16) -> bool {
        match self
            .nodes
            .iter_mut()
            .find(|node| node.port() == port && node.pid() != 0)
        {
            Some(node) => {
                node.stop();
                true
            }
            None => false,
        }
    }

    /// Runs `redis-cli` with `args` (against the node on `port`, if given), with the
    /// cluster's password, and returns its output.
    ///
    /// # Errors
    /// [`LocalServerError::NotFound`] when `redis-cli` is missing;
    /// [`LocalServerError::DidNotStart`] when it fails or prints an error reply.
    pub fn cli(&self, port: Option<u16>, args: &[&str]) -> Result<String, LocalServerError> {
        let binary = redis_cli_binary();
        let mut command = Command::new(&binary);
        if let Some(port) = port {
            command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        }
        if let Some(password) = &self.password {
            command.args(["-a", password, "--no-auth-warning"]);
        }
        // A frozen node (SIGSTOP) still accepts the connection and never answers, and
        // redis-cli has no reply timeout: past the deadline it is killed and this is an error,
        // so `topology` goes on to the next node. `--cluster` commands wait on the whole
        // cluster and get longer.
        let deadline = if args.first().is_some_and(|arg| *arg == "--cluster") {
            Duration::from_secs(300)
        } else {
            CLI_DEADLINE
        };
        command.args(args).stdin(Stdio::null());
        let output =
            output_within(&mut command, deadline).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => LocalServerError::NotFound {
                    binary: binary.clone(),
                },
                _ => LocalServerError::Io {
                    action: "running",
                    path: binary.clone(),
                    source,
                },
            })?;
        let Some(output) = output else {
            return Err(LocalServerError::DidNotStart {
                reason: format!(
                    "redis-cli {} got no answer within {deadline:?} (node frozen?)",
                    args.join(" ")
                ),
                log: self.log_tail(10),
            });
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        // redis-cli exits 0 after an error reply when not on a terminal: look at the text too.
        let refused =
            stdout.starts_with("ERR") || stdout.starts_with("(error)") || stdout.contains("[ERR]");
        if !output.status.success() || refused {
            return Err(LocalServerError::DidNotStart {
                reason: format!(
                    "redis-cli {} failed ({}): {}{}",
                    args.join(" "),
                    output.status,
                    stdout.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                log: self.log_tail(10),
            });
        }
        Ok(stdout)
    }

    /// Waits until every running node says `cluster_state:ok` and they all describe the same
    /// slot map (each master with the same slot ranges).
    ///
    /// # Errors
    /// [`LocalServerError::DidNotStart`] when that does not happen within `timeout`.
    pub fn wait_until_ready(&self, timeout: Duration) -> Result<(), LocalServerError> {
        let deadline = Instant::now() + timeout;
        let mut why = String::new();
        while Instant::now() < deadline {
            match self.agreed() {
                Ok(None) => return Ok(()),
                Ok(Some(reason)) => why = reason,
                Err(err) => why = err.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(LocalServerError::DidNotStart {
            reason: format!("the cluster was not ready within {timeout:?}: {why}"),
            log: self.log_tail(10),
        })
    }

    /// `None` when every running node is ok and agrees; else why not.
    fn agreed(&self) -> Result<Option<String>, LocalServerError> {
        let mut maps = Vec::new();
        for node in self.nodes.iter().filter(|node| node.pid() != 0) {
            let info = self.cli(Some(node.port()), &["CLUSTER", "INFO"])?;
            if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
                return Ok(Some(format!("node {} is not ok yet", node.port())));
            }
            let text = self.cli(Some(node.port()), &["CLUSTER", "NODES"])?;
            let mut map: Vec<(u16, Vec<(u16, u16)>)> = parse_nodes(&text)
                .into_iter()
                .filter(|node| node.master && !node.slots.is_empty())
                .map(|node| (node.port, node.slots))
                .collect();
            map.sort();
            maps.push((node.port(), map));
        }
        let Some((_, first)) = maps.first() else {
            return Ok(Some("no node is running".into()));
        };
        let covered: u32 = first
            .iter()
            .flat_map(|(_, ranges)| ranges)
            .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
            .sum();
        if covered != u32::from(SLOTS) {
            return Ok(Some(format!("{covered} slots are served")));
        }
        if let Some((port, _)) = maps.iter().find(|(_, map)| map != first) {
            return Ok(Some(format!("node {port} sees another slot map")));
        }
        Ok(None)
    }

    /// The end of every running node's log, each under its port.
    pub fn log_tail(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|node| format!("--- node {} ---\n{}", node.port(), node.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The nodes of a `CLUSTER NODES` text:
/// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let id = (*fields.first()?).to_owned();
            let address = fields.get(1)?.split('@').next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags = fields.get(2)?;
            let master = flags.split(',').any(|flag| flag == "master");
            let slots = fields
                .iter()
                .skip(8)
                // Migrating/importing markers (`[slot->-id]`) are not served ranges.
                .filter(|field| !field.starts_with('['))
                .filter_map(|field| match field.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => {
                        let slot = field.parse().ok()?;
                        Some((slot, slot))
                    }
                })
                .collect();
            Some(ClusterNode {
                id,
                port,
                master,
                slots,
            })
        })
        .collect()
}

/// Bringing a killed node back (the failover tests of `--wait-replicas`).
impl LocalCluster {
    /// Starts the node on `port` again after [`LocalCluster::kill`], with its directory and
    /// `nodes.conf`: a master that was failed over meanwhile rejoins as a replica of the one
    /// that replaced it. Returns false when no node has that port.
    ///
    /// # Errors
    /// As [`LocalRedis::restart`].
    pub fn restart_node(&mut self, port: u16) -> Result<bool, LocalServerError> {
        match self.nodes.iter_mut().find(|node| node.port() == port) {
            Some(node) => node.restart().map(|()| true),
            None => Ok(false),
        }
    }
}

/// How long a `redis-cli` command of one node may take before the node is taken as not
/// answering.
const CLI_DEADLINE: Duration = Duration::from_secs(3);

/// Runs `command` to its end with its output captured, like [`Command::output`]; `Ok(None)`
/// (the process killed) when it is still running after `limit`.
fn output_within(
    command: &mut Command,
    limit: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use std::io::Read;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(status.map(|status| std::process::Output {
        status,
        stdout,
        stderr,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
    }

    #[test]
    fn cluster_nodes_text_is_parsed() {
        let text = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b2]\n\
                    b2 127.0.0.1:7001@17001 slave a1 0 0 1 connected\n";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].port, 7000);
        assert!(nodes[0].master);
        assert_eq!(nodes[0].slots, [(0, 5460)]);
        assert!(!nodes[1].master);
    }
}
