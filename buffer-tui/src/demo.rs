//! `buffer-tui --demo`: a private `redis-server` (or, with `--cluster`, a private Redis
//! Cluster of three masters), a load generator, an in-process persister and the dashboard, all
//! stopped on quit.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use buffer_core::local_server::{LocalCluster, LocalRedis, redis_server_binary};
use buffer_core::{Buffer, BufferConfig, CoalesceRules, MergeRule};
use buffer_persist::{PersistConfig, Persister};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{Action, App, AppConfig, DemoStats};
use crate::dashboard::Dashboard;
use crate::error::{Error, Result};

/// How the demo runs.
#[derive(Clone, Debug)]
pub(crate) struct DemoOptions {
    /// Where the persister writes.
    pub(crate) out: PathBuf,
    /// How often the dashboard polls.
    pub(crate) interval: Duration,
    /// Run on a private 3-master Redis Cluster instead of one server.
    pub(crate) cluster: bool,
}

/// The masters of the demo's cluster (no replicas: the demo shows stores spreading, not
/// failover).
const DEMO_MASTERS: usize = 3;

/// The demo's persister thresholds: short, so files appear within seconds.
const DEMO_MAX_AGE: Duration = Duration::from_secs(10);
const DEMO_MAX_RECORDS: u64 = 3_000;
const DEMO_MAX_BYTES: u64 = 1024 * 1024;

/// Starts the demo's private `redis-server` (buffer-core's one launcher, on a blocking thread:
/// it waits for PING with std sockets). Without an append-only file: the demo keeps nothing.
///
/// # Errors
/// [`Error::RedisServerNotFound`] when the binary is missing; [`Error::RedisServerStart`] when
/// it exits or does not answer within 10 s; [`Error::Io`] for the temporary directory or port.
async fn start_redis(binary: PathBuf) -> Result<LocalRedis> {
    tokio::task::spawn_blocking(move || {
        LocalRedis::start_with_binary(binary, &["--appendonly", "no"])
    })
    .await
    .map_err(|join| Error::RedisServerStart {
        reason: format!("the task starting it failed: {join}"),
        log: String::new(),
    })?
    .map_err(Error::from)
}

/// The demo's private Redis: one server, or a cluster. Each node is killed when it is dropped.
enum DemoRedis {
    Single(LocalRedis),
    Cluster(LocalCluster),
}

impl DemoRedis {
    /// Starts what `cluster` asks for, on a blocking thread (the launchers wait with std
    /// sockets and processes).
    ///
    /// # Errors
    /// As [`start_redis`]; for a cluster also when `redis-cli --cluster create` fails or the
    /// nodes do not agree in time ([`Error::RedisServerStart`]).
    async fn start(cluster: bool) -> Result<Self> {
        if !cluster {
            return start_redis(redis_server_binary()).await.map(Self::Single);
        }
        tokio::task::spawn_blocking(|| LocalCluster::start(DEMO_MASTERS, 0))
            .await
            .map_err(|join| Error::RedisServerStart {
                reason: format!("the task starting the cluster failed: {join}"),
                log: String::new(),
            })?
            .map(Self::Cluster)
            .map_err(Error::from)
    }

    /// The URL the demo connects with: the server's, or one node's (cluster mode is found out
    /// from the node).
    fn url(&self) -> String {
        match self {
            Self::Single(redis) => redis.url(),
            Self::Cluster(cluster) => cluster.urls().swap_remove(0),
        }
    }

    /// What was started, for the summary: `redis-server (pid 4242, port 41234)`.
    fn describe(&self) -> String {
        match self {
            Self::Single(redis) => {
                format!("redis-server (pid {}, port {})", redis.pid(), redis.port())
            }
            Self::Cluster(cluster) => {
                let ports: Vec<String> = cluster.ports().iter().map(u16::to_string).collect();
                format!(
                    "Redis Cluster of {} masters (ports {})",
                    ports.len(),
                    ports.join(", ")
                )
            }
        }
    }

    /// Kills every server and waits for it to exit.
    fn stop(self) {
        match self {
            Self::Single(mut redis) => redis.stop(),
            Self::Cluster(cluster) => drop(cluster),
        }
    }
}

/// One store of the load generator.
#[derive(Clone, Copy, Debug)]
struct StoreLoad {
    name: &'static str,
    per_second: u64,
    shape: Shape,
}

/// The kinds of records the generator makes: different sizes and key sets.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Order,
    Click,
    Metric,
    Audit,
    Signup,
    /// A page view, merged into its page's row (the coalescing store).
    PageView,
}

/// The demo's coalescing store: page views merged into one row per page.
const PAGE_VIEWS: &str = "pageviews";

/// The rules of [`PAGE_VIEWS`]: views and seconds on the page added up, the latest view kept,
/// every referrer seen.
fn page_view_rules() -> CoalesceRules {
    CoalesceRules::new("page")
        .with("views", MergeRule::Sum)
        .with("seconds", MergeRule::Sum)
        .with("last_seen", MergeRule::Max)
        .with("referrers", MergeRule::Union)
}

/// The demo's stores: a busy one that hits the record threshold, a steady one, quiet ones
/// that are flushed on age, names that need encoding, and a coalescing one.
const STORES: [StoreLoad; 7] = [
    StoreLoad {
        name: "clicks",
        per_second: 400,
        shape: Shape::Click,
    },
    StoreLoad {
        name: "orders",
        per_second: 60,
        shape: Shape::Order,
    },
    StoreLoad {
        name: "metrics/cpu",
        per_second: 25,
        shape: Shape::Metric,
    },
    StoreLoad {
        name: "metrics/mem",
        per_second: 25,
        shape: Shape::Metric,
    },
    StoreLoad {
        name: "audit log",
        per_second: 4,
        shape: Shape::Audit,
    },
    StoreLoad {
        name: "signups",
        per_second: 1,
        shape: Shape::Signup,
    },
    StoreLoad {
        name: PAGE_VIEWS,
        per_second: 300,
        shape: Shape::PageView,
    },
];

fn pick<'a>(items: &[&'a str]) -> &'a str {
    items[rand::random_range(0..items.len())]
}

fn record(shape: Shape, seq: u64, now_ms: u64) -> Value {
    match shape {
        Shape::Order => {
            let items: Vec<Value> = (0..rand::random_range(1..4u32))
                .map(|_| json!({"sku": format!("SKU-{:04}", rand::random_range(0..500u32)), "qty": rand::random_range(1..5u32)}))
                .collect();
            json!({
                "id": seq,
                "customer": format!("c-{}", rand::random_range(1000..9999u32)),
                "total": (rand::random_range(100..50_000u32) as f64) / 100.0,
                "currency": pick(&["EUR", "USD", "GBP"]),
                "items": items,
                "at": now_ms,
            })
        }
        Shape::Click => {
            let mut click = json!({
                "page": pick(&["/", "/pricing", "/docs", "/blog/redis-buffers", "/signup"]),
                "user": rand::random_range(1..5000u32),
                "ms": rand::random_range(5..900u32),
                "at": now_ms,
            });
            // Optional keys make the store's key set grow over time.
            if rand::random_bool(0.2) {
                click["referrer"] = json!(pick(&["news.ycombinator.com", "google", "t.co"]));
            }
            if rand::random_bool(0.05) {
                click[format!("exp_{}", rand::random_range(0..8u32))] = json!(true);
            }
            click
        }
        Shape::Metric => json!({
            "host": pick(&["web-1", "web-2", "db-1"]),
            "value": (rand::random_range(0..10_000u32) as f64) / 100.0,
            "load": [rand::random_range(0..400u32), rand::random_range(0..400u32), rand::random_range(0..400u32)],
            "at": now_ms,
        }),
        Shape::Audit => json!({
            "actor": pick(&["alice", "bob", "deploy-bot"]),
            "action": pick(&["login", "update", "delete", "grant"]),
            "target": format!("resource/{}", rand::random_range(1..200u32)),
            "reason": "routine change with a fairly long free-text explanation attached to it",
            "at": now_ms,
        }),
        Shape::PageView => {
            // A few pages draw most of the views, so the top entities have a clear order.
            let page = format!("/page/{}", rand::random_range(0..40u32).pow(2) / 40);
            json!({
                "page": page,
                "views": 1,
                "seconds": rand::random_range(1..120u32),
                "last_seen": now_ms,
                "referrers": [pick(&["google", "news.ycombinator.com", "t.co", "direct"])],
            })
        }
        Shape::Signup => json!({
            "email": format!("user{seq}@example.com"),
            "plan": pick(&["free", "pro", "team"]),
            "utm_source": pick(&["newsletter", "ads", "friend"]),
            "at": now_ms,
        }),
    }
}

/// Pushes records to one store at its rate until `shutdown`, in small batches every 100 ms.
async fn generate(
    buffer: Buffer,
    load: StoreLoad,
    pushed: Arc<AtomicU64>,
    merged: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    // Tenths of a record owed, so slow stores still push at their rate.
    let mut owed = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        owed += load.per_second;
        // Jitter: bursts and lulls around the average rate.
        let due = owed / 10;
        if due == 0 {
            continue;
        }
        let n = if due > 2 {
            rand::random_range(due / 2..=due * 3 / 2)
        } else {
            due
        };
        owed = owed.saturating_sub(n * 10);
        let now = buffer.now_ms();
        let records: Vec<Value> = (0..n)
            .map(|_| {
                seq += 1;
                record(load.shape, seq, now)
            })
            .collect();
        if buffer.push_many(load.name, &records).await.is_ok() {
            pushed.fetch_add(n, Ordering::Relaxed);
            if load.name == PAGE_VIEWS {
                merged.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// What the demo did, printed after it ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DemoSummary {
    /// Records the load generator pushed (acknowledged pushes).
    pub(crate) pushed: u64,
    /// Of those, the page views merged into the rows of the coalescing store.
    pub(crate) merged: u64,
    /// Records the persister wrote, including the final drain.
    pub(crate) persisted: u64,
    /// Files written.
    pub(crate) files: u64,
    /// Records still in Redis when it was stopped (0 after a complete final drain).
    pub(crate) left_in_redis: u64,
    /// Where the files are.
    pub(crate) out: PathBuf,
    /// The Redis that was stopped: `redis-server (pid 4242, port 41234)` or the cluster's
    /// ports.
    pub(crate) redis: String,
    /// Errors the persister counted.
    pub(crate) persist_errors: u64,
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "buffer demo summary")?;
        writeln!(f, "  records pushed     {}", self.pushed)?;
        writeln!(
            f,
            "  writes merged      {} of them, into one row per page of \"{PAGE_VIEWS}\"",
            self.merged
        )?;
        writeln!(
            f,
            "  records persisted  {} (appended records and merged rows, including a final drain on quit)",
            self.persisted
        )?;
        writeln!(
            f,
            "  files written      {} under {}",
            self.files,
            self.out.display()
        )?;
        writeln!(f, "  left in Redis      {} records", self.left_in_redis)?;
        if self.persist_errors > 0 {
            writeln!(f, "  persister errors   {}", self.persist_errors)?;
        }
        write!(
            f,
            "  {} stopped and its temporary directories removed",
            self.redis
        )
    }
}

/// Runs the whole demo until `q` (or `shutdown`), then stops everything and returns what it did.
///
/// # Errors
/// [`Error::RedisServerNotFound`] and [`Error::RedisServerStart`] before anything is shown;
/// [`Error::Io`] when the output directory cannot be created; [`Error::Persist`] when the
/// persister cannot use it; [`Error::Terminal`].
pub(crate) async fn run_demo(
    options: DemoOptions,
    shutdown: CancellationToken,
) -> Result<DemoSummary> {
    std::fs::create_dir_all(&options.out).map_err(|source| Error::Io {
        action: "creating the output directory",
        path: options.out.clone(),
        source,
    })?;
    let redis = DemoRedis::start(options.cluster).await?;
    let described = redis.describe();
    let url = redis.url();
    let result = run_with_redis(&url, &options, shutdown).await;
    redis.stop();
    let mut summary = result?;
    summary.redis = described;
    Ok(summary)
}

async fn run_with_redis(
    url: &str,
    options: &DemoOptions,
    shutdown: CancellationToken,
) -> Result<DemoSummary> {
    let config = BufferConfig::new(url).response_timeout(Duration::from_secs(2));
    let load_buffer = Buffer::connect(config.clone().holder_id("demo-load")).await?;
    let persist_buffer = Buffer::connect(config.clone().holder_id("demo-persister")).await?;
    let view_buffer = Buffer::connect_lazy(config.holder_id("dashboard"))?;

    let mut persist = PersistConfig::new(&options.out);
    persist.interval = Duration::from_millis(500);
    persist.max_age = DEMO_MAX_AGE;
    persist.max_records = Some(DEMO_MAX_RECORDS);
    persist.max_bytes = Some(DEMO_MAX_BYTES);
    persist.lock_ttl = Duration::from_secs(10);
    persist.drain_wait = Some(Duration::from_secs(5));
    let persister = Persister::new(persist_buffer, persist);

    // Every background task of the demo stops when `work` is cancelled, after the dashboard.
    let work = CancellationToken::new();
    let tracker = TaskTracker::new();
    let pushed = Arc::new(AtomicU64::new(0));
    let merged = Arc::new(AtomicU64::new(0));
    load_buffer
        .set_coalesce(PAGE_VIEWS, &page_view_rules())
        .await?;
    for load in STORES {
        tracker.spawn(generate(
            load_buffer.clone(),
            load,
            pushed.clone(),
            merged.clone(),
            work.clone(),
        ));
    }
    // The persister ends the dashboard if it fails (say, the output directory is unusable).
    let dashboard_stop = shutdown.child_token();
    let persister_run = {
        let (persister, work, stop) = (persister.clone(), work.clone(), dashboard_stop.clone());
        tracker.spawn(async move {
            let result = persister.run(work).await;
            if result.is_err() {
                stop.cancel();
            }
            result
        })
    };

    let app = App::new(AppConfig {
        address: buffer_core::redact_url(url),
        namespace: view_buffer.config().namespace_name().to_owned(),
        max_age: Some(DEMO_MAX_AGE),
        demo_out: Some(options.out.display().to_string()),
        now_ms: view_buffer.now_ms(),
        read_only: false,
        no_color: crate::terminal::no_color(),
    });
    let dashboard = Dashboard::new(view_buffer.clone(), app, options.interval);
    tracker.spawn(report_stats(
        dashboard.sender(),
        persister.clone(),
        pushed.clone(),
        work.clone(),
    ));
    tracker.close();

    let shown = dashboard.run(dashboard_stop).await;

    work.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), tracker.wait()).await;
    let persister_result = match persister_run.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    };
    shown?;
    persister_result?;

    // Write out what is left so the counts add up; bounded, so quitting stays quick.
    let _ = tokio::time::timeout(Duration::from_secs(15), persister.drain()).await;
    let stats = persister.stats();
    let left_in_redis = match view_buffer.stores().await {
        Ok(stores) => stores.iter().map(|s| s.records).sum(),
        Err(_) => 0,
    };
    Ok(DemoSummary {
        pushed: pushed.load(Ordering::Relaxed),
        merged: merged.load(Ordering::Relaxed),
        persisted: stats.records_persisted,
        files: stats.files_written,
        left_in_redis,
        out: options.out.clone(),
        redis: String::new(),
        persist_errors: stats.errors,
    })
}

/// Sends the demo's counters to the dashboard twice a second.
async fn report_stats(
    actions: mpsc::UnboundedSender<Action>,
    persister: Persister,
    pushed: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stats = persister.stats();
        let demo = DemoStats {
            pushed: pushed.load(Ordering::Relaxed),
            persisted: stats.records_persisted,
            files: stats.files_written,
        };
        if actions.send(Action::Demo(demo)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_shape_makes_a_json_object() {
        for load in STORES {
            let value = record(load.shape, 1, 1_700_000_000_000);
            assert!(value.is_object(), "{load:?}");
            match load.shape {
                Shape::PageView => assert!(value.get("last_seen").is_some(), "{load:?}"),
                _ => assert!(value.get("at").is_some(), "{load:?}"),
            }
        }
    }

    /// The page views merge into one row per page under the demo's rules.
    #[tokio::test]
    async fn page_views_merge_into_one_row_per_page() {
        let mut redis = start_redis(redis_server_binary()).await.unwrap();
        let buffer = Buffer::connect(BufferConfig::new(redis.url()))
            .await
            .unwrap();
        buffer
            .set_coalesce(PAGE_VIEWS, &page_view_rules())
            .await
            .unwrap();
        let views: Vec<Value> = (0..200)
            .map(|seq| record(Shape::PageView, seq, 1_700_000_000_000 + seq))
            .collect();
        let receipt = buffer.push_many(PAGE_VIEWS, &views).await.unwrap();
        let pages: std::collections::BTreeSet<&str> =
            views.iter().map(|v| v["page"].as_str().unwrap()).collect();
        assert_eq!(receipt.records, pages.len() as u64);
        let view = buffer
            .coalesced_view(PAGE_VIEWS, Some("views"))
            .await
            .unwrap();
        assert_eq!(view.writes, 200);
        assert_eq!(view.top.len(), pages.len().min(buffer_core::TOP_ENTITIES));
        redis.stop();
    }

    #[tokio::test]
    async fn a_private_redis_starts_answers_and_is_gone_after_stop() {
        let mut redis = start_redis(redis_server_binary()).await.unwrap();
        let pid = redis.pid();
        assert!(pid > 0);
        let buffer = Buffer::connect(BufferConfig::new(redis.url()))
            .await
            .unwrap();
        buffer.push("s", &json!({"a": 1})).await.unwrap();
        let dir = redis.dir().to_path_buf();
        redis.stop();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .map(|s| s.contains("State:\tZ"))
                    .unwrap_or(true),
            "redis-server {pid} is still running"
        );
        drop(redis);
        assert!(!dir.exists(), "temporary directory removed");
    }

    #[tokio::test]
    async fn a_missing_redis_server_is_a_clear_error_with_an_install_hint() {
        let missing = "/nonexistent/redis-server-for-test";
        let found = start_redis(PathBuf::from(missing)).await;
        let err = found.err().unwrap();
        assert!(matches!(err, Error::RedisServerNotFound { .. }), "{err}");
        assert!(err.to_string().contains("apt-get install redis-server"));
    }
}
