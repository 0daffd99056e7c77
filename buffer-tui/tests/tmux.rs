//! End to end: the real `buffer-tui` binary in a private tmux server, against a private Redis
//! or a private Redis Cluster.
//!
//! Keys go in with `send-keys`; what a person would see comes back with `capture-pane`,
//! polled until a deadline.

use buffer_tests::CommandWithin;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use buffer_tests::RedisServer;
use buffer_tests::cluster::TestCluster;
use serde_json::json;

#[path = "tmux/actions.rs"]
mod actions;

/// A tmux server on its own socket, killed on drop (and only that one).
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16, command: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let tmux = Self {
            socket: format!("buffer-tui-test-{}-{nanos}", std::process::id()),
        };
        let out = tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            command,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed (is tmux installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (install it: apt-get install -y tmux)")
    }

    fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn display(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", "t", format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Polls the pane until `check` holds; panics with the last screen after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture();
            if check(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen was:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The record count in the table row of `store`: the first cell after the name.
fn table_count(screen: &str, store: &str) -> Option<String> {
    screen.lines().find_map(|line| {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '│' || c == '▶')
            .filter(|w| !w.is_empty())
            .collect();
        let at = words.iter().position(|w| *w == store)?;
        // The table row has numbers after the name; the store panel's title has a border.
        words.get(at + 1).map(|w| (*w).to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_pushed_stores_filters_and_quits_cleanly() {
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    for (store, records) in [("alpha", 3u64), ("beta", 5), ("gamma-orders", 7)] {
        for i in 0..records {
            buffer
                .push(store, &json!({"i": i, "store": store}))
                .await
                .unwrap();
        }
    }

    let tmux = dashboard_in_tmux(&redis.url(), 120, 40);

    let screen = tmux.wait_for(
        "the three stores with their counts",
        Duration::from_secs(20),
        |s| {
            table_count(s, "alpha").as_deref() == Some("3")
                && table_count(s, "beta").as_deref() == Some("5")
                && table_count(s, "gamma-orders").as_deref() == Some("7")
        },
    );
    assert!(screen.contains("connected"), "{screen}");
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "1",
        "the dashboard uses the alternate screen"
    );

    tmux.send(&["/"]);
    tmux.send(&["-l", "gam"]);
    tmux.send(&["Enter"]);
    let screen = tmux.wait_for(
        "the filter to leave only gamma-orders",
        Duration::from_secs(10),
        |s| s.contains("filter /gam") && !s.contains("alpha") && !s.contains("beta"),
    );
    assert_eq!(
        table_count(&screen, "gamma-orders").as_deref(),
        Some("7"),
        "{screen}"
    );

    tmux.send(&["q"]);
    let screen = tmux.wait_for("the dashboard to exit", Duration::from_secs(10), |s| {
        s.contains(REPORT_END)
    });
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert_terminal_restored(&tmux, &screen);
    assert!(
        !screen.contains("Stores"),
        "the dashboard was cleared away:\n{screen}"
    );
}

/// The pids of the processes whose parent is `parent`, from `/proc` (no procps needed).
fn children(parent: &str) -> Vec<String> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((_, after_comm)) = stat.rsplit_once(')') else {
            continue;
        };
        if after_comm.split_whitespace().nth(1) == Some(parent) {
            pids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    pids
}

/// The number after `label` in the demo's summary, e.g. `records pushed     17828`.
fn summary_number(screen: &str, label: &str) -> u64 {
    let line = screen
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{screen}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

/// What the demo's summary says against its files: every appended record and every merged
/// page view is persisted exactly once (the page views' rows in `pageviews/` count as many
/// writes as were merged, and the records persisted are the appended ones plus those rows).
/// Returns the records in the files.
fn assert_demo_output_adds_up(screen: &str, out: &std::path::Path) -> u64 {
    let pushed = summary_number(screen, "records pushed");
    let merged = summary_number(screen, "writes merged");
    let persisted = summary_number(screen, "records persisted");
    let outputs = buffer_tests::output_records(out);
    let rows: Vec<&serde_json::Value> = outputs
        .iter()
        .filter(|(path, _)| path.starts_with(out.join("pageviews")))
        .flat_map(|(_, records)| records)
        .collect();
    assert!(merged > 0 && !rows.is_empty(), "{screen}");
    let writes: u64 = rows
        .iter()
        .map(|row| row["_writes"].as_u64().unwrap())
        .sum();
    assert_eq!(
        writes, merged,
        "every merged page view is in exactly one row"
    );
    let views: u64 = rows.iter().map(|row| row["views"].as_u64().unwrap()).sum();
    assert_eq!(views, merged, "each page view adds 1 to its page's views");
    assert_eq!(
        persisted,
        pushed - merged + rows.len() as u64,
        "the final drain persists the rest:\n{screen}"
    );
    outputs.values().map(|records| records.len() as u64).sum()
}

#[test]
fn the_demo_persists_what_it_pushed_and_quits_without_leaving_redis_behind() {
    let out = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_buffer-tui");
    let command = format!(
        "{binary} --demo --out {} --interval 300ms; echo EXIT=$?; sleep 600",
        out.path().display()
    );
    let tmux = Tmux::start(120, 40, &command);

    // The demo's persister flushes on a 10 s age: wait until files have been written.
    let screen = tmux.wait_for(
        "the demo to push and persist",
        Duration::from_secs(60),
        |s| s.contains("connected") && s.contains("persisted") && !s.contains("files 0 "),
    );
    assert!(screen.contains("clicks"), "{screen}");

    // The private redis-server is a child of the dashboard, which is a child of the pane.
    let pane = tmux.display("#{pane_pid}");
    let dashboard = children(&pane);
    assert_eq!(dashboard.len(), 1, "one dashboard process under the pane");
    let redis: Vec<String> = children(&dashboard[0])
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "redis-server")
        })
        .collect();
    assert_eq!(redis.len(), 1, "the demo runs one redis-server");

    tmux.send(&["q"]);
    let screen = tmux.wait_for("the demo summary", Duration::from_secs(30), |s| {
        s.contains("EXIT=")
    });
    assert!(screen.contains("EXIT=0"), "{screen}");
    let files = summary_number(&screen, "files written");
    let pushed = summary_number(&screen, "records pushed");
    assert!(pushed > 0, "{screen}");
    assert_eq!(summary_number(&screen, "left in Redis"), 0);
    let records = assert_demo_output_adds_up(&screen, out.path());

    let on_disk: Vec<_> = buffer_tests::files_under(out.path())
        .into_iter()
        .filter(|p| p.file_name() != Some(std::ffi::OsStr::new(".buffer-persist")))
        .collect();
    assert_eq!(on_disk.len() as u64, files, "{on_disk:?}");
    assert_eq!(
        records,
        summary_number(&screen, "records persisted"),
        "every persisted record is in a file"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{}", redis[0])).exists(),
        "the demo's redis-server (pid {}) is gone after q",
        redis[0]
    );
}

/// Shell code that prints the exit status and when the program ended (`EXITED_AT_MS`, Unix
/// ms), the terminal's canonical-mode and echo flags
/// (`TTY:icanon`, `TTY:echo` when restored), then [`REPORT_END`], then keeps the pane open.
const AFTER_EXIT: &str = "s=$?; t=$(date +%s%3N); echo EXIT=$s EXITED_AT_MS=$t; stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | sed 's/^/TTY:/'; echo REPORT-END; sleep 600";

/// The last line [`AFTER_EXIT`] prints: a screen holding it holds the whole report (a capture
/// taken while the report is being printed would show only part of it).
const REPORT_END: &str = "REPORT-END";

/// The dashboard on the Redis at `url` in a `width`x`height` pane. After it exits, the shell
/// prints its status and the terminal mode ([`AFTER_EXIT`]) and stays, so the pane can be read.
fn dashboard_in_tmux(url: &str, width: u16, height: u16) -> Tmux {
    let binary = env!("CARGO_BIN_EXE_buffer-tui");
    let command = format!("{binary} --redis {url} --interval 200ms; {AFTER_EXIT}");
    Tmux::start(width, height, &command)
}

fn assert_terminal_restored(tmux: &Tmux, screen: &str) {
    assert!(screen.contains("TTY:icanon"), "canonical mode:\n{screen}");
    assert!(screen.contains("TTY:echo"), "echo:\n{screen}");
    assert!(
        !screen.contains("TTY:-"),
        "no raw-mode flag left:\n{screen}"
    );
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "back on the main screen"
    );
    assert_eq!(tmux.display("#{cursor_flag}"), "1", "cursor shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_the_terminal_back_and_exits_zero() {
    let redis = RedisServer::start();
    redis
        .buffer()
        .await
        .push("alpha", &json!({"i": 1}))
        .await
        .unwrap();
    let tmux = dashboard_in_tmux(&redis.url(), 100, 30);
    tmux.wait_for("the table", Duration::from_secs(20), |s| {
        table_count(s, "alpha").as_deref() == Some("1")
    });
    let pane = tmux.display("#{pane_pid}");
    let dashboard = children(&pane);
    assert_eq!(dashboard.len(), 1, "the dashboard runs under the pane");
    let killed = Command::new("kill")
        .args(["-TERM", &dashboard[0]])
        .status_in_time();
    assert!(killed.success());
    let screen = tmux.wait_for("the dashboard to exit", Duration::from_secs(10), |s| {
        s.contains(REPORT_END)
    });
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert_terminal_restored(&tmux, &screen);
}

/// Not a test on its own: `a_panic_gives_the_terminal_back_and_the_message_stays_readable`
/// runs it in tmux. It takes over the terminal the way the dashboard does, draws a frame, and
/// panics.
#[test]
#[ignore = "run inside tmux by a_panic_gives_the_terminal_back_and_the_message_stays_readable"]
fn panic_with_the_terminal_taken_over() {
    use ratatui::widgets::Paragraph;
    let mut guard = buffer_tui::TerminalGuard::enter().expect("a terminal");
    guard
        .terminal()
        .draw(|frame| frame.render_widget(Paragraph::new("drawn, about to panic"), frame.area()))
        .expect("draw");
    std::thread::sleep(Duration::from_millis(300));
    panic!("deliberate panic with the terminal taken over");
}

#[test]
fn a_panic_gives_the_terminal_back_and_the_message_stays_readable() {
    // This test binary runs its own ignored helper above as the program that panics.
    let test_binary = std::env::current_exe().unwrap();
    let command = format!(
        "RUST_BACKTRACE=0 {} --exact panic_with_the_terminal_taken_over --ignored --nocapture --test-threads 1; {AFTER_EXIT}",
        test_binary.display()
    );
    let tmux = Tmux::start(100, 30, &command);
    let screen = tmux.wait_for("the helper to panic", Duration::from_secs(20), |s| {
        s.contains(REPORT_END)
    });
    assert!(
        screen.contains("EXIT=101"),
        "a failed test exits 101:\n{screen}"
    );
    assert!(
        screen.contains("deliberate panic with the terminal taken over"),
        "the panic message is on the main screen:\n{screen}"
    );
    assert_terminal_restored(&tmux, &screen);
}

/// The header cell of the master on `port`, `127.0.0.1:<port> up` or `... down`, is on the
/// screen.
fn master_shown(screen: &str, port: u16, health: &str) -> bool {
    screen.contains(&format!("127.0.0.1:{port} {health}"))
}

/// The distinct `127.0.0.1:<port>` addresses on the table rows of `stores`.
fn nodes_of_rows(screen: &str, stores: &[&str]) -> std::collections::BTreeSet<String> {
    screen
        .lines()
        .filter(|line| stores.iter().any(|store| line.contains(store)) && line.contains('│'))
        .flat_map(|line| {
            line.split(|c: char| c.is_whitespace() || c == '│')
                .filter(|word| word.starts_with("127.0.0.1:"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_dashboard_shows_each_master_the_node_of_a_store_and_a_master_going_away()
{
    let mut cluster = TestCluster::start();
    let buffer = cluster.buffer().await;
    let stores = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    for store in stores {
        buffer.push(store, &json!({"store": store})).await.unwrap();
    }
    // The master holding `alpha`, the first store in name order and so the selected one.
    let alpha_key = cluster
        .all_keys()
        .into_iter()
        .find(|key| key.contains(":s:alpha:"))
        .unwrap();
    let alpha_master = cluster.master_for_key(&alpha_key);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);

    let tmux = dashboard_in_tmux(&cluster.url(), 120, 40);
    let screen = tmux.wait_for(
        "the three masters up in the header and the stores",
        Duration::from_secs(30),
        |s| {
            masters.iter().all(|port| master_shown(s, *port, "up"))
                && s.contains("3 masters")
                && stores
                    .iter()
                    .all(|store| table_count(s, store).as_deref() == Some("1"))
        },
    );
    assert!(screen.contains("cluster"), "{screen}");
    // The selected store's panel names its node, and so does the table's node column.
    let alpha_node = format!("node 127.0.0.1:{alpha_master}");
    let screen = tmux.wait_for(
        "the node of the selected store",
        Duration::from_secs(10),
        |s| s.contains(&alpha_node) && nodes_of_rows(s, &stores).len() == 3,
    );
    assert!(
        screen
            .lines()
            .any(|line| line.contains("alpha")
                && line.contains(&format!("127.0.0.1:{alpha_master}"))),
        "alpha's row names its master:\n{screen}"
    );
    tmux.send(&["Enter"]);
    tmux.wait_for(
        "the store view with its node",
        Duration::from_secs(10),
        |s| s.contains("Latest") && s.contains(&alpha_node),
    );
    tmux.send(&["Escape"]);

    cluster.kill(alpha_master);
    let screen = tmux.wait_for(
        "the killed master shown down, the others up",
        Duration::from_secs(30),
        |s| {
            master_shown(s, alpha_master, "down")
                && masters
                    .iter()
                    .filter(|port| **port != alpha_master)
                    .all(|port| master_shown(s, *port, "up"))
                && s.contains("1 down")
        },
    );
    assert!(
        screen.contains(&format!("{alpha_node} (down)")),
        "the store panel says its node is down:\n{screen}"
    );
    // Still running: it answers keys, and quits cleanly.
    tmux.send(&["?"]);
    tmux.wait_for("the help", Duration::from_secs(10), |s| {
        s.contains("any key closes")
    });
    tmux.send(&["Escape"]);
    tmux.send(&["q"]);
    let screen = tmux.wait_for("the dashboard to exit", Duration::from_secs(20), |s| {
        s.contains(REPORT_END)
    });
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert_terminal_restored(&tmux, &screen);
}

#[test]
fn the_cluster_demo_spreads_its_stores_over_three_nodes_and_stops_them_on_quit() {
    let out = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_buffer-tui");
    let command = format!(
        "{binary} --demo --cluster --out {} --interval 300ms; echo EXIT=$?; sleep 600",
        out.path().display()
    );
    let tmux = Tmux::start(160, 45, &command);
    let stores = [
        "clicks",
        "orders",
        "metrics/cpu",
        "metrics/mem",
        "audit log",
        "signups",
    ];
    let screen = tmux.wait_for(
        "the demo's stores on three nodes",
        Duration::from_secs(90),
        |s| s.contains("3 masters") && nodes_of_rows(s, &stores).len() == 3,
    );
    assert!(screen.contains("cluster"), "{screen}");
    assert!(!screen.contains(" down"), "every master answers:\n{screen}");

    // The cluster's three redis-server processes are children of the dashboard.
    let pane = tmux.display("#{pane_pid}");
    let dashboard = children(&pane);
    assert_eq!(dashboard.len(), 1, "one dashboard process under the pane");
    let redis: Vec<String> = children(&dashboard[0])
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "redis-server")
        })
        .collect();
    assert_eq!(redis.len(), 3, "the cluster demo runs three redis-servers");

    tmux.wait_for("files written", Duration::from_secs(60), |s| {
        !s.contains("files 0 ")
    });
    tmux.send(&["q"]);
    let screen = tmux.wait_for("the demo summary", Duration::from_secs(60), |s| {
        s.contains("EXIT=")
    });
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(screen.contains("Redis Cluster of 3 masters"), "{screen}");
    assert!(summary_number(&screen, "records pushed") > 0, "{screen}");
    assert_eq!(summary_number(&screen, "left in Redis"), 0);
    assert_demo_output_adds_up(&screen, out.path());
    for pid in &redis {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the demo's redis-server {pid} is gone after q"
        );
    }
}

/// Unix time in ms, on the clock `date` reads in [`AFTER_EXIT`].
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .try_into()
        .unwrap()
}

/// Presses `q` and returns how long the dashboard took to exit, from the key to the shell's
/// `EXITED_AT_MS` (so neither the capture polling nor the report's printing is counted),
/// with the screen after it.
fn quit_and_time(tmux: &Tmux) -> (Duration, String) {
    let pressed = unix_ms();
    tmux.send(&["q"]);
    let screen = tmux.wait_for("the dashboard to exit", Duration::from_secs(90), |s| {
        s.contains(REPORT_END)
    });
    let exited: u64 = screen
        .split_whitespace()
        .find_map(|word| word.strip_prefix("EXITED_AT_MS="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no exit time on the screen:\n{screen}"));
    (
        Duration::from_millis(exited.saturating_sub(pressed)),
        screen,
    )
}

/// The node (port) among `ports` with a subscriber on the default namespace's events channel
/// (`PUBSUB NUMSUB` counts only a node's own clients), asked with `redis-cli`.
fn subscribed_node(ports: &[u16]) -> Option<u16> {
    ports.iter().copied().find(|port| {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PUBSUB", "NUMSUB", "buf:events"])
            .output()
            .expect("redis-cli runs");
        // Two lines: the channel, then its subscriber count.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|count| count.trim().parse::<u64>().ok())
            .is_some_and(|count| count > 0)
    })
}

/// The cluster's six stores, one record each, pushed through `buffer`.
const CLUSTER_STORES: [&str; 6] = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];

/// A private cluster with [`CLUSTER_STORES`] in it and the dashboard on it, shown healthy
/// with every row's details (its node) read.
async fn dashboard_on_a_cluster() -> (TestCluster, buffer_core::Buffer, Tmux) {
    let cluster = TestCluster::start();
    let buffer = cluster.buffer().await;
    for store in CLUSTER_STORES {
        buffer.push(store, &json!({"store": store})).await.unwrap();
    }
    let masters = cluster.masters();
    let tmux = dashboard_in_tmux(&cluster.url(), 120, 40);
    tmux.wait_for(
        "the three masters up, the stores and the live event feed",
        Duration::from_secs(30),
        |s| {
            masters.iter().all(|port| master_shown(s, *port, "up"))
                && CLUSTER_STORES
                    .iter()
                    .all(|store| table_count(s, store).as_deref() == Some("1"))
                && s.contains("Persister events live")
                && nodes_of_rows(s, &CLUSTER_STORES).len() == 3
        },
    );
    (cluster, buffer, tmux)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_master_killed_events_follow_another_node_and_q_quits_within_two_seconds() {
    let (mut cluster, buffer, tmux) = dashboard_on_a_cluster().await;
    let masters = cluster.masters();
    let subscribed = subscribed_node(&masters).expect("the dashboard subscribed on a master");

    cluster.kill(subscribed);
    // Events published after the kill reach the dashboard through its new subscription (the
    // test publishes through the cluster's first URL, which may be the dead node).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let screen = loop {
        let event = buffer_core::Event {
            kind: buffer_core::EventKind::Persisted,
            store: "after-kill".into(),
            batch: "b".into(),
            records: 1,
            bytes: 10,
            at_ms: buffer.now_ms(),
            holder: "test".into(),
            detail: None,
        };
        let _ = buffer.publish_event(&event).await;
        let screen = tmux.capture();
        if screen.contains("after-kill") {
            break screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event after the kill reached the dashboard:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(screen.contains("Persister events live"), "{screen}");

    // What a person sees with the master down: that master named down, the others up, and
    // the stores of the last good poll still listed.
    let screen = tmux.wait_for(
        "the killed master shown down",
        Duration::from_secs(30),
        |s| master_shown(s, subscribed, "down") && s.contains("1 down"),
    );
    eprintln!("the screen with a master killed:\n{screen}");
    for port in masters.iter().filter(|port| **port != subscribed) {
        assert!(master_shown(&screen, *port, "up"), "{screen}");
    }
    for store in CLUSTER_STORES {
        assert_eq!(
            table_count(&screen, store).as_deref(),
            Some("1"),
            "{screen}"
        );
    }
    // A poll or two into the outage, so one is waiting on the dead master as q is pressed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (took, screen) = quit_and_time(&tmux);
    eprintln!("q took {took:?}");
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(took < Duration::from_secs(2), "q took {took:?}");
    assert_terminal_restored(&tmux, &screen);
}

/// Sends SIGCONT to a node frozen with SIGSTOP when dropped, so the cluster shuts down
/// cleanly whether the test passes or fails.
struct Frozen<'a> {
    cluster: &'a TestCluster,
    port: u16,
}

impl<'a> Frozen<'a> {
    fn stop(cluster: &'a TestCluster, port: u16) -> Self {
        cluster.signal(port, "STOP");
        Self { cluster, port }
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.cluster.signal(self.port, "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_master_frozen_q_quits_within_two_seconds() {
    let (cluster, _buffer, tmux) = dashboard_on_a_cluster().await;
    let masters = cluster.masters();
    // The subscribed master, so the event feed is cut too.
    let frozen_port = subscribed_node(&masters).expect("the dashboard subscribed on a master");
    let frozen = Frozen::stop(&cluster, frozen_port);

    let screen = tmux.wait_for(
        "the frozen master shown down",
        Duration::from_secs(40),
        |s| master_shown(s, frozen_port, "down") && s.contains("1 down"),
    );
    eprintln!("the screen with a master frozen:\n{screen}");
    for store in CLUSTER_STORES {
        assert_eq!(
            table_count(&screen, store).as_deref(),
            Some("1"),
            "{screen}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (took, screen) = quit_and_time(&tmux);
    eprintln!("q took {took:?}");
    drop(frozen);
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(took < Duration::from_secs(2), "q took {took:?}");
    assert_terminal_restored(&tmux, &screen);
}

/// A coalescing store as a person sees it: entities beside merged writes in the table; on its
/// screen its rules and its top entities, which follow new merges live and which `t` ranks
/// by the next summed field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalescing_store_shows_its_top_entities_live_and_t_changes_the_field() {
    use buffer_core::{CoalesceRules, MergeRule};
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    let rules = CoalesceRules::new("page")
        .with("views", MergeRule::Sum)
        .with("ms", MergeRule::Sum)
        .with("last_seen", MergeRule::Max);
    buffer.set_coalesce("pageviews", &rules).await.unwrap();
    for (page, views, ms) in [("/", 1, 900), ("/docs", 5, 10), ("/", 2, 50), ("/x", 1, 1)] {
        buffer
            .push(
                "pageviews",
                &json!({"page": page, "views": views, "ms": ms, "last_seen": 1}),
            )
            .await
            .unwrap();
    }
    let tmux = dashboard_in_tmux(&redis.url(), 120, 40);
    let screen = tmux.wait_for(
        "the store with 3 entities from 4 writes",
        Duration::from_secs(20),
        |s| s.contains("3 (4)") && s.contains("top by ms"),
    );
    assert_eq!(table_count(&screen, "pageviews").as_deref(), Some("3"));
    tmux.send(&["Enter"]);
    let screen = tmux.wait_for("the store screen", Duration::from_secs(10), |s| {
        s.contains("Top 3 entities by ms")
    });
    for text in [
        "3 entities",
        "4 writes merged",
        "coalescing",
        "sum   ms,views",
        "max   last_seen",
        "t top by",
    ] {
        assert!(screen.contains(text), "{text:?} in\n{screen}");
    }
    let rank = |screen: &str, entity: &str| -> Option<(String, String)> {
        screen.lines().find_map(|line| {
            let words: Vec<&str> = line
                .split(|c: char| c.is_whitespace() || c == '│')
                .filter(|w| !w.is_empty())
                .collect();
            let at = words.iter().position(|w| *w == entity)?;
            Some((
                words.get(at.checked_sub(1)?)?.to_string(),
                words.get(at + 1)?.to_string(),
            ))
        })
    };
    assert_eq!(
        rank(&screen, "/"),
        Some(("1".into(), "950".into())),
        "{screen}"
    );
    // A new page overtakes the leader: the list follows at the next refresh.
    buffer
        .push(
            "pageviews",
            &json!({"page": "/new", "views": 1, "ms": 5000}),
        )
        .await
        .unwrap();
    let screen = tmux.wait_for("the new leader", Duration::from_secs(10), |s| {
        s.contains("Top 4 entities by ms") && s.contains("5 writes merged")
    });
    assert_eq!(
        rank(&screen, "/new"),
        Some(("1".into(), "5000".into())),
        "{screen}"
    );
    assert_eq!(
        rank(&screen, "/"),
        Some(("2".into(), "950".into())),
        "{screen}"
    );
    tmux.send(&["t"]);
    let screen = tmux.wait_for("the top by views", Duration::from_secs(10), |s| {
        s.contains("Top 4 entities by views")
    });
    assert_eq!(
        rank(&screen, "/docs"),
        Some(("1".into(), "5".into())),
        "{screen}"
    );
    tmux.send(&["q"]);
    let screen = tmux.wait_for("the dashboard to exit", Duration::from_secs(10), |s| {
        s.contains(REPORT_END)
    });
    assert!(screen.contains("EXIT=0"), "{screen}");
}

/// On an 80×24 terminal: writes merged into a coalescing store count in the push rate (its
/// entities do not grow), and its top 10 entities are all on screen, on the main screen (the
/// store's panel then takes the whole width) and on its own screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_80x24_a_coalescing_store_shows_its_top_ten_and_its_writes_count_in_the_push_rate() {
    use buffer_core::{CoalesceRules, MergeRule};
    let redis = RedisServer::start();
    let buffer = redis.buffer().await;
    let rules = CoalesceRules::new("page").with("views", MergeRule::Sum);
    buffer.set_coalesce("pageviews", &rules).await.unwrap();
    // Page k has 100 + k views: the top 10 are /p11 (111) down to /p2 (102).
    let pages: Vec<_> = (0..12)
        .map(|k| json!({"page": format!("/p{k}"), "views": 100 + k}))
        .collect();
    buffer.push_many("pageviews", &pages).await.unwrap();
    // An append store, listed first and so selected: its panel leaves the rates on screen.
    buffer.push("other", &json!({"n": 1})).await.unwrap();
    let tmux = dashboard_in_tmux(&redis.url(), 80, 24);
    tmux.wait_for("both stores", Duration::from_secs(20), |s| {
        s.contains("12 (12)") && s.contains("Rates, records/s")
    });
    // Writes to an existing entity: the entities stay 12, the push rate must not stay 0.
    let producer = {
        let buffer = buffer.clone();
        tokio::spawn(async move {
            for _ in 0..600 {
                let view = json!({"page": "/p0", "views": 0});
                buffer.push("pageviews", &view).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let push_rate = |screen: &str| -> Option<String> {
        let line = screen.lines().find(|line| line.contains("push "))?;
        let at = line.find("push ")? + 5;
        let rest = line[at..].trim_start();
        Some(rest[..rest.find("/s")?].trim().to_owned())
    };
    let screen = tmux.wait_for(
        "merged writes in the push rate",
        Duration::from_secs(20),
        |s| {
            s.lines()
                .any(|l| l.contains("pageviews") && l.contains("12 ("))
                && push_rate(s).is_some_and(|rate| rate != "0" && rate != "–")
        },
    );
    assert!(!screen.contains(" 13 ("), "no entity was added:\n{screen}");
    producer.abort();
    // The coalescing store: its top 10, ranked, across the whole width.
    tmux.send(&["Down"]);
    let screen = tmux.wait_for("the top 10 in the panel", Duration::from_secs(10), |s| {
        s.contains("top by views")
    });
    for (rank, page) in (1..=10).zip((2..=11).rev()) {
        let cell = format!("{rank} /p{page} ");
        assert!(screen.contains(&cell), "{cell:?} in\n{screen}");
    }
    assert!(!screen.contains("/p1 "), "11th is not listed:\n{screen}");
    tmux.send(&["Enter"]);
    let screen = tmux.wait_for("the store screen", Duration::from_secs(10), |s| {
        s.contains("Top 10 entities by views")
    });
    for page in 2..=11 {
        assert!(
            screen.contains(&format!("/p{page} ")),
            "/p{page} in\n{screen}"
        );
    }
    tmux.send(&["q"]);
    let screen = tmux.wait_for("the dashboard to exit", Duration::from_secs(10), |s| {
        s.contains(REPORT_END)
    });
    assert!(screen.contains("EXIT=0"), "{screen}");
}
