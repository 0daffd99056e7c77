//! A private `redis-server` process for the demo and the tests (feature `local-server`).
//!
//! One launcher for everything in the workspace that needs a Redis of its own: it runs
//! `redis-server` (from `BUFFER_REDIS_SERVER` or `PATH`) on a free port of 127.0.0.1, with
//! `--save ""` in a temporary directory that also holds its log, returns once the server
//! answers PING, and kills it on drop. It never touches a server it did not start.
//!
//! It is blocking (std processes and sockets) so that synchronous tests can use it; async
//! callers start it on a blocking thread.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
pub use self::cluster::{ClusterNode, LocalCluster, SLOTS, key_slot, redis_cli_binary};

/// How long a server gets to answer PING after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports are tried: a port found free can be taken before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// Why a [`LocalRedis`] could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalServerError {
    /// The `redis-server` binary does not exist.
    #[error(
        "`{}` was not found. Install Redis (Debian/Ubuntu: `sudo apt-get install redis-server`, \
         Fedora: `sudo dnf install redis`, macOS: `brew install redis`) or set \
         BUFFER_REDIS_SERVER to the redis-server binary",
        binary.display()
    )]
    NotFound {
        /// The binary that was looked for.
        binary: PathBuf,
    },
    /// The server exited at start or did not answer PING in time, on every port tried.
    #[error("redis-server did not start: {reason}; its log says:\n{log}")]
    DidNotStart {
        /// Why the last attempt failed.
        reason: String,
        /// The end of its log.
        log: String,
    },
    /// A file system or socket operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file, directory or address.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
}

/// The `redis-server` binary to run: `BUFFER_REDIS_SERVER`, else `redis-server` on `PATH`.
pub fn redis_server_binary() -> PathBuf {
    std::env::var_os("BUFFER_REDIS_SERVER")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// A free TCP port on 127.0.0.1: free when this returns, so callers retry on a lost race.
///
/// # Errors
/// The operating system's error when no port can be bound.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private `redis-server` on a free port of 127.0.0.1, without RDB snapshots, in its own
/// temporary directory (removed on drop). Killed when dropped.
#[derive(Debug)]
pub struct LocalRedis {
    /// `None` while stopped.
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl LocalRedis {
    /// Starts [`redis_server_binary`] with `extra_args` (`--option value` pairs, e.g.
    /// `["--maxmemory", "2mb"]`, or a `--tls-port` next to the plain one) and waits until it
    /// answers PING. A `-NOAUTH` reply counts as an answer, so `--requirepass` servers start.
    ///
    /// # Errors
    /// [`LocalServerError::NotFound`] when the binary is missing;
    /// [`LocalServerError::DidNotStart`] when it exits or stays silent for 10 s on every port
    /// tried; [`LocalServerError::Io`] when no temporary directory or port can be had.
    pub fn start(extra_args: &[&str]) -> Result<Self, LocalServerError> {
        Self::start_with_binary(redis_server_binary(), extra_args)
    }

    /// [`LocalRedis::start`] with an explicit binary.
    ///
    /// # Errors
    /// As [`LocalRedis::start`].
    pub fn start_with_binary(
        binary: PathBuf,
        extra_args: &[&str],
    ) -> Result<Self, LocalServerError> {
        Self::start_on_port(binary, extra_args, free_port)
    }

    /// [`LocalRedis::start_with_binary`] on ports from `pick_port` (a cluster node needs its
    /// bus port, port + 10000, free too).
    pub(crate) fn start_on_port(
        binary: PathBuf,
        extra_args: &[&str],
        pick_port: fn() -> std::io::Result<u16>,
    ) -> Result<Self, LocalServerError> {
        let dir = tempfile::Builder::new()
            .prefix("buffer-redis-")
            .tempdir()
            .map_err(|source| LocalServerError::Io {
                action: "creating a temporary directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let mut server = Self {
            child: None,
            binary,
            port: 0,
            dir,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        let mut reason = String::new();
        for _attempt in 0..PORT_ATTEMPTS {
            server.port = pick_port().map_err(|source| LocalServerError::Io {
                action: "finding a free port on",
                path: PathBuf::from("127.0.0.1"),
                source,
            })?;
            match server.spawn()? {
                Ok(()) => return Ok(server),
                Err(why) => reason = why,
            }
        }
        Err(LocalServerError::DidNotStart {
            reason,
            log: server.log_tail(15),
        })
    }

    /// Spawns the process on `self.port` and waits for PING. `Ok(Err(reason))` when it exited
    /// (the port was taken, a bad argument) or did not answer in time: worth another try.
    fn spawn(&mut self) -> Result<Result<(), String>, LocalServerError> {
        let spawned = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Only what redis-server says before its log file is open (bad arguments) comes
            // here; it is read when the process exits at start.
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalServerError::NotFound {
                    binary: self.binary.clone(),
                });
            }
            Err(source) => {
                return Err(LocalServerError::Io {
                    action: "starting",
                    path: self.binary.clone(),
                    source,
                });
            }
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Ok(Err(format!(
                    "it exited at start ({status}): {}",
                    stderr.trim()
                )));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(Ok(()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Err(format!(
                    "it did not answer PING within {}s",
                    READY_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port, directory and arguments, after
    /// [`LocalRedis::stop`] (or kills it first). Retries for 10 s while the port is not yet
    /// free again.
    ///
    /// # Errors
    /// As [`LocalRedis::start`].
    pub fn restart(&mut self) -> Result<(), LocalServerError> {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn()? {
                Ok(()) => return Ok(()),
                Err(reason) if Instant::now() >= deadline => {
                    return Err(LocalServerError::DidNotStart {
                        reason,
                        log: self.log_tail(15),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's process id, 0 while stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The temporary directory it runs in (where an AOF would be written).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The log so far (empty when there is none yet).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A server stopped with SIGSTOP (tests do that) ignores SIGKILL on some systems
            // until it is continued.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.stop();
    }
}

/// Whether a server on `port` answers PING. `-NOAUTH` (a server with a password) is an
/// answer too.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    match stream.read(&mut reply) {
        Ok(n) => reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH"),
        Err(_) => false,
    }
}
