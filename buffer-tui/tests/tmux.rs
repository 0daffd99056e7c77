//! End to end: the real `buffer-tui` binary in a private tmux server, against a private Redis.
//!
//! Keys go in with `send-keys`; what a person would see comes back with `capture-pane`,
//! polled until a deadline.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use buffer_tests::RedisServer;
use serde_json::json;

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

    let binary = env!("CARGO_BIN_EXE_buffer-tui");
    // After the dashboard exits, the shell prints its status and the terminal mode, and
    // stays so the pane can be read.
    let command = format!(
        "{binary} --redis {} --interval 200ms; echo EXIT=$?; stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | sed 's/^/TTY:/'; sleep 600",
        redis.url()
    );
    let tmux = Tmux::start(120, 40, &command);

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
        s.contains("EXIT=") && s.contains("TTY:")
    });
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(
        screen.contains("TTY:icanon"),
        "canonical mode restored:\n{screen}"
    );
    assert!(screen.contains("TTY:echo"), "echo restored:\n{screen}");
    assert!(
        !screen.contains("TTY:-"),
        "no raw-mode flag left:\n{screen}"
    );
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "back on the main screen"
    );
    assert!(
        !screen.contains("Stores"),
        "the dashboard was cleared away:\n{screen}"
    );
}
