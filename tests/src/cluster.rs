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

    /// Sends a signal (`"STOP"`, `"CONT"`, `"KILL"`) to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let node = self
            .cluster
            .nodes()
            .iter()
            .find(|node| node.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(node.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
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

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.node(port))
            .unwrap()
    }

    /// Moves `slot`, with every key in it, to the master on `to_port`, the way
    /// `redis-cli --cluster reshard` does: [`TestCluster::begin_migration`],
    /// [`TestCluster::migrate_keys`] until none is left (clients get ASK or TRYAGAIN
    /// meanwhile), [`TestCluster::finish_migration`]. Returns how many keys moved.
    pub fn reshard(&self, slot: u16, to_port: u16) -> usize {
        let Some(migration) = self.begin_migration(slot, to_port) else {
            return 0;
        };
        let mut moved = 0;
        loop {
            let step = self.migrate_keys(&migration, 5);
            if step == 0 {
                break;
            }
            moved += step;
        }
        self.finish_migration(&migration);
        moved
    }

    /// Marks `slot` IMPORTING on the master on `to_port` and MIGRATING on its owner. `None`
    /// when `to_port` owns it already.
    pub fn begin_migration(&self, slot: u16, to_port: u16) -> Option<Migration> {
        let from_port = self.master_for_slot(slot);
        if from_port == to_port {
            return None;
        }
        let migration = Migration {
            slot,
            from_port,
            to_port,
            from_id: self.node_id(from_port),
            to_id: self.node_id(to_port),
        };
        self.setslot(to_port, slot, "IMPORTING", &migration.from_id);
        self.setslot(from_port, slot, "MIGRATING", &migration.to_id);
        Some(migration)
    }

    /// MIGRATEs up to `count` keys of the migration's slot to its target; returns how many.
    pub fn migrate_keys(&self, migration: &Migration, count: usize) -> usize {
        let mut from = self.node(migration.from_port);
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(migration.slot)
            .arg(count)
            .query(&mut from)
            .unwrap();
        if keys.is_empty() {
            return 0;
        }
        self.migrate(migration, &keys);
        keys.len()
    }

    /// MIGRATEs exactly `keys` (of the migration's slot) to its target.
    pub fn migrate(&self, migration: &Migration, keys: &[Vec<u8>]) {
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg("127.0.0.1")
            .arg(migration.to_port)
            .arg("")
            .arg(0)
            .arg(5000);
        if let Some(password) = self.password() {
            migrate.arg("AUTH").arg(password);
        }
        migrate.arg("KEYS").arg(keys);
        let _: redis::Value = migrate.query(&mut self.node(migration.from_port)).unwrap();
    }

    /// Gives the migration's slot to its target on every master (the target first, so it
    /// owns the slot before the source forgets it) and waits until the cluster agrees.
    pub fn finish_migration(&self, migration: &Migration) {
        self.setslot(migration.to_port, migration.slot, "NODE", &migration.to_id);
        self.setslot(
            migration.from_port,
            migration.slot,
            "NODE",
            &migration.to_id,
        );
        for port in self.masters() {
            if port != migration.to_port && port != migration.from_port {
                self.setslot(port, migration.slot, "NODE", &migration.to_id);
            }
        }
        if let Err(err) = self.cluster.wait_until_ready(Duration::from_secs(20)) {
            panic!(
                "the cluster did not settle after moving slot {}: {err}",
                migration.slot
            );
        }
    }

    fn setslot(&self, port: u16, slot: u16, state: &str, id: &str) {
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id)
            .query(&mut self.node(port))
            .unwrap();
    }

    fn password(&self) -> Option<String> {
        let url = self.url();
        let (_, rest) = url.split_once("://:")?;
        Some(rest.split_once('@')?.0.to_owned())
    }

    /// How many error replies of `code` (`TRYAGAIN`, `ASK`, `MOVED`) the node on `port` has
    /// sent (`INFO errorstats`).
    pub fn error_count(&self, port: u16, code: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("errorstats")
            .query(&mut self.node(port))
            .unwrap();
        let prefix = format!("errorstat_{code}:count=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A slot on its way from one master to another (see [`TestCluster::begin_migration`]).
#[derive(Clone, Debug)]
pub struct Migration {
    /// The slot.
    pub slot: u16,
    /// The master it leaves.
    pub from_port: u16,
    /// The master it goes to.
    pub to_port: u16,
    from_id: String,
    to_id: String,
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
