//! A private Redis Cluster for tests: buffer-core's `LocalCluster` (N masters, R replicas
//! each, on free ports whose bus ports are free too, killed on drop) plus what tests need
//! around it: panics instead of errors, the nodes' logs printed when a test fails, blocking
//! connections to one node, key listings over every master, and moving one slot with its
//! live keys to another master while clients keep working.

use std::time::Duration;

use buffer_core::local_server::LocalCluster;
use buffer_core::{Buffer, BufferConfig};

/// A private Redis Cluster, killed on drop.
pub struct TestCluster {
    cluster: LocalCluster,
}

impl TestCluster {
    /// Three masters, no replicas.
    pub fn start() -> Self {
        Self::start_with(3, 0, None)
    }

    /// `masters` masters with `replicas` replicas each, every node requiring `password`.
    pub fn start_with(masters: usize, replicas: usize, password: Option<&str>) -> Self {
        match LocalCluster::start_with(masters, replicas, password) {
            Ok(cluster) => Self { cluster },
            Err(err) => panic!("the test cluster did not start: {err}"),
        }
    }

    /// The launcher underneath.
    pub fn inner(&self) -> &LocalCluster {
        &self.cluster
    }

    /// The URL of the first running node.
    pub fn url(&self) -> String {
        self.cluster.urls().remove(0)
    }

    /// The URL of every running node.
    pub fn urls(&self) -> Vec<String> {
        self.cluster.urls()
    }

    /// The URL of the node on `port`.
    pub fn url_of(&self, port: u16) -> String {
        self.cluster.url_of(port)
    }

    /// The ports of every node, masters first.
    pub fn ports(&self) -> Vec<u16> {
        self.cluster.ports()
    }

    /// The ports of the masters serving slots.
    pub fn masters(&self) -> Vec<u16> {
        self.cluster.masters().unwrap()
    }

    /// The port of the master serving `key`.
    pub fn master_for_key(&self, key: &str) -> u16 {
        self.cluster.master_for_key(key).unwrap()
    }

    /// The port of the master serving `slot`.
    pub fn master_for_slot(&self, slot: u16) -> u16 {
        self.cluster.master_for_slot(slot).unwrap()
    }

    /// The hash slot of `key`.
    pub fn slot(key: &str) -> u16 {
        buffer_core::local_server::key_slot(key.as_bytes())
    }

    /// Kills the node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        assert!(self.cluster.kill(port), "no running node on port {port}");
    }

    /// A configuration for the cluster through one node's URL, with a short response timeout.
    pub fn config(&self) -> BufferConfig {
        BufferConfig::new(self.url()).response_timeout(Duration::from_secs(3))
    }

    /// A connected buffer on the cluster.
    pub async fn buffer(&self) -> Buffer {
        Buffer::connect(self.config()).await.unwrap()
    }

    /// A blocking connection to the node on `port` (no redirects followed).
    pub fn node(&self, port: u16) -> redis::Connection {
        redis::Client::open(self.url_of(port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Every key on every master (SCAN on each: test code inspecting its own cluster).
    pub fn all_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for port in self.masters() {
            let mut conn = self.node(port);
            let found: Vec<String> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter(&mut conn)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            keys.extend(found);
        }
        keys.sort();
        keys
    }

    /// The keys of the default namespace (`buf`) left on the cluster.
    pub fn buffer_keys(&self) -> Vec<String> {
        self.all_keys()
            .into_iter()
            .filter(|k| k.starts_with("buf:"))
            .collect()
    }

    /// Moves `slot`, with every key in it, to the master on `to_port`, the way
    /// `redis-cli --cluster reshard` does: SETSLOT IMPORTING on the target, MIGRATING on the
    /// source, MIGRATE of its keys in small steps (clients get ASK or TRYAGAIN meanwhile),
    /// then SETSLOT NODE on every master. Returns how many keys moved.
    pub fn reshard(&self, slot: u16, to_port: u16) -> usize {
        let from_port = self.master_for_slot(slot);
        if from_port == to_port {
            return 0;
        }
        let id_of = |port: u16| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut self.node(port))
                .unwrap()
        };
        let (from_id, to_id) = (id_of(from_port), id_of(to_port));
        let mut to = self.node(to_port);
        let mut from = self.node(from_port);
        let setslot = |conn: &mut redis::Connection, state: &str, id: &str| {
            let () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .query(conn)
                .unwrap();
        };
        setslot(&mut to, "IMPORTING", &from_id);
        setslot(&mut from, "MIGRATING", &to_id);
        let password = self
            .url_of(to_port)
            .split_once("://:")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(password, _)| password.to_owned());
        let mut moved = 0;
        loop {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(5)
                .query(&mut from)
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to_port)
                .arg("")
                .arg(0)
                .arg(5000);
            if let Some(password) = &password {
                migrate.arg("AUTH").arg(password);
            }
            migrate.arg("KEYS").arg(&keys);
            let _: redis::Value = migrate.query(&mut from).unwrap();
            moved += keys.len();
        }
        // The target first, so it owns the slot before the source forgets it.
        setslot(&mut to, "NODE", &to_id);
        setslot(&mut from, "NODE", &to_id);
        for port in self.masters() {
            if port != to_port && port != from_port {
                setslot(&mut self.node(port), "NODE", &to_id);
            }
        }
        if let Err(err) = self.cluster.wait_until_ready(Duration::from_secs(20)) {
            panic!("the cluster did not settle after moving slot {slot}: {err}");
        }
        moved
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- test cluster logs ---\n{}", self.cluster.log_tail(20));
        }
    }
}

/// Bringing a killed node back (the failover tests of `--wait-replicas`).
impl TestCluster {
    /// Starts the killed node on `port` again; a failed-over master rejoins as a replica.
    pub fn restart(&mut self, port: u16) {
        assert!(
            self.cluster.restart_node(port).unwrap(),
            "no node on port {port}"
        );
    }
}
