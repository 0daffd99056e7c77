//! A private PostgreSQL server for the suites that write into PostgreSQL.
//!
//! Like the private `redis-server` of this crate: each [`PostgresServer`] is its own cluster
//! (`initdb` into a temporary directory), listening on a free port on 127.0.0.1 and on a unix
//! socket in that same private directory, ready when `start` returns, and stopped when
//! dropped (its log printed if the test is failing then). Tests never use a server they did
//! not start.
//!
//! The binaries are Debian's `postgresql` package (`.ci/run` installs it): taken from
//! `BUFFER_PG_BINDIR`, else `pg_config --bindir`, else `/usr/lib/postgresql/15/bin`.
//! PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
//! `postgres` OS user (through `setpriv`, which execs rather than forks, so the pid this holds
//! is the postmaster's own and signals reach it directly), in a directory that user owns.
//! Authentication is `trust` for the superuser `postgres`: the server is private and local.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding `initdb`, `postgres` and `psql`.
pub fn postgres_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BUFFER_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .filter(|dir| dir.join("initdb").exists());
    from_pg_config.unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Certificates for the TLS tests, made with `openssl` in a temporary directory: a CA, a
/// server certificate it signed for `localhost` and 127.0.0.1 (EC P-256), and a second CA
/// that signed nothing (a wrong root to trust).
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Makes them; panics with openssl's message when it cannot.
    pub fn make() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("buffer-pg-certs-")
            .tempdir()
            .unwrap();
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (Debian's `openssl` package) runs");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, subject) in [("ca", "/CN=buffer test CA"), ("other-ca", "/CN=another CA")] {
            let (key, cert) = (format!("{name}.key"), format!("{name}.crt"));
            let mut args = vec!["req", "-x509"];
            args.extend(new_key);
            args.extend([
                "-keyout", &key, "-out", &cert, "-days", "3", "-subj", subject,
            ]);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            run(&args);
        }
        let mut args = vec!["req"];
        args.extend(new_key);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        run(&args);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3",
            "-extfile",
            "server.ext",
        ]);
        Self { dir }
    }

    /// The CA that signed the server's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A CA that signed nothing the server has (PEM).
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    fn server_files(&self) -> [PathBuf; 2] {
        [
            self.dir.path().join("server.crt"),
            self.dir.path().join("server.key"),
        ]
    }
}

/// How a private server takes TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// `ssl = off`: no TLS offered.
    Off,
    /// `ssl = on`: TLS offered, plain connections taken too.
    Offered,
    /// `ssl = on` and `hostssl` lines only in `pg_hba.conf`: a TCP connection without TLS
    /// is refused (unix socket connections still taken).
    Required,
}

/// A private PostgreSQL server, stopped on drop.
pub struct PostgresServer {
    /// The temporary directory: `data/` (the cluster), the socket, `postgres.log`, and the
    /// server's certificate and key when it takes TLS.
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// True when running as root: commands run as the `postgres` OS user.
    as_postgres_user: bool,
    /// `-c` settings beyond the defaults (TLS's), kept for a restart.
    settings: Vec<String>,
}

impl PostgresServer {
    /// Makes a new cluster and starts its server; panics (with the log) when it cannot.
    pub fn start() -> Self {
        Self::start_with_tls(None, TlsPolicy::Off)
    }

    /// Like [`PostgresServer::start`], with TLS by `policy` on the server certificate of
    /// `certificates` (which `Offered` and `Required` need).
    pub fn start_with_tls(certificates: Option<&TestCertificates>, policy: TlsPolicy) -> Self {
        let bindir = postgres_bindir();
        assert!(
            bindir.join("initdb").exists(),
            "no PostgreSQL binaries in {} (install Debian's `postgresql` package, or set \
             BUFFER_PG_BINDIR)",
            bindir.display()
        );
        let as_postgres_user = rustix::process::geteuid().is_root();
        // Under /tmp rather than TMPDIR: the `postgres` user must be able to enter every
        // directory on the path.
        let parent = if as_postgres_user {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("buffer-pg-")
            .tempdir_in(parent)
            .unwrap();
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", dir.path().display());
        }
        let mut server = Self {
            dir,
            bindir,
            port: 0,
            child: None,
            as_postgres_user,
            settings: Vec::new(),
        };
        let output = server
            .command("initdb")
            .arg("-D")
            .arg(server.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if policy != TlsPolicy::Off {
            let certificates = certificates.expect("TLS needs the test certificates");
            // The key must belong to the server's user and be private to it.
            for (source, name) in certificates
                .server_files()
                .iter()
                .zip(["server.crt", "server.key"])
            {
                let target = server.dir.path().join(name);
                std::fs::copy(source, &target).unwrap();
                std::fs::set_permissions(
                    &target,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                if server.as_postgres_user {
                    let status = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&target)
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
                let setting = if name == "server.crt" {
                    "ssl_cert_file"
                } else {
                    "ssl_key_file"
                };
                server
                    .settings
                    .push(format!("{setting}={}", target.display()));
            }
            server.settings.push("ssl=on".to_owned());
        }
        if policy == TlsPolicy::Required {
            std::fs::write(
                server.data_dir().join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )
            .unwrap();
        }
        server.port = crate::free_port();
        server.launch();
        server
    }

    /// A command running `program` from the PostgreSQL binaries, as the `postgres` user when
    /// the tests run as root, in the server's directory (which that user can enter).
    fn command(&self, program: &str) -> Command {
        let binary = self.bindir.join(program);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("setpriv");
            command
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(binary);
            command
        } else {
            Command::new(binary)
        };
        command
            .current_dir(self.dir.path())
            .env_remove("PGPASSWORD");
        if self.as_postgres_user {
            // libpq reads ~/.postgresql (client certificates) from HOME, which would be root's,
            // unreadable to that user: a TLS connection of psql would fail on it.
            command.env("HOME", self.dir.path());
        }
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the postmaster on `self.port` and waits until it accepts queries.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        if self.as_postgres_user {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(self.log_path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                // No fsync: the tests kill processes, never the machine, and a killed
                // server's writes are still in the page cache. Commits stay synchronous (a
                // commit acknowledged before its WAL is written would be lost by an
                // immediate stop, which is what the exactly-once tests do).
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=60",
            ])
            .args(
                self.settings
                    .iter()
                    .flat_map(|setting| ["-c", setting.as_str()]),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.try_query("SELECT 1").is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept queries within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the server's private directory, for a file the server itself reads (a
    /// server-side `COPY … FROM '<path>'`): the `postgres` user can enter that directory, and a
    /// file written there with the default mode is readable to it.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CPU time (user + system) the server has used so far: the postmaster's own and that
    /// of the children it has reaped (backends that ended), from `/proc/<pid>/stat`, plus
    /// that of its children still running. A backend's work counts once its connection
    /// ended, so measure around whole connections.
    pub fn cpu_time(&self) -> Duration {
        let Some(postmaster) = self.pid() else {
            return Duration::ZERO;
        };
        let mut total = crate::process_cpu_time(postmaster, true);
        for pid in self
            .server_pids()
            .into_iter()
            .filter(|pid| *pid != postmaster)
        {
            total += crate::process_cpu_time(pid, false);
        }
        total
    }

    /// The postmaster's pid (None while stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `sql` with `psql` (unaligned, tuples only) and returns its output, or psql's
    /// error text.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let output = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .map_err(|err| err.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout)
                .trim_end()
                .to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Runs `sql` and returns its output; panics with psql's error.
    pub fn query(&self, sql: &str) -> String {
        match self.try_query(sql) {
            Ok(output) => output,
            Err(err) => panic!("psql {sql:?}: {err}"),
        }
    }

    /// Sends a signal to the postmaster: `"QUIT"` is PostgreSQL's immediate shutdown,
    /// `"STOP"`/`"CONT"` freeze and resume the postmaster (not its backends).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("postgres is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// The pids of the postmaster and of its children (backends, checkpointer, WAL writer…),
    /// from `/proc`.
    fn server_pids(&self) -> Vec<u32> {
        let Some(postmaster) = self.pid() else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces, so read after its last `)`.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Sends `signal` to the postmaster and all its children at once.
    fn signal_all(&self, signal: &str) {
        let pids = self.server_pids();
        if pids.is_empty() {
            return;
        }
        // A child may have exited since /proc was read: kill's complaint about it is noise.
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(pids.iter().map(ToString::to_string))
            .stderr(Stdio::null())
            .status();
    }

    /// Freezes the whole server (SIGSTOP to the postmaster and every backend), as a hung
    /// host would: connections stay open, the kernel still accepts bytes on them, nothing
    /// answers. [`PostgresServer::thaw`] resumes it; a drop or an immediate stop does too.
    /// Returns how many processes were stopped.
    pub fn freeze(&self) -> usize {
        let pids = self.server_pids();
        // A backend may end between reading /proc and the signal (a query's connection just
        // closed): kill then fails for that pid alone. What counts is that the postmaster and
        // every process still there are stopped.
        self.signal_all("STOP");
        let postmaster = self.pid().expect("postgres is not running");
        // A signal takes effect when the process is next scheduled: wait until each one is
        // stopped (or gone), the postmaster above all.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // A zombie ('Z', a backend that ended as the postmaster stopped, so it cannot be
            // reaped until the thaw) is as good as gone.
            let settled = pids.iter().all(|pid| {
                matches!(crate::process_state(*pid), Some('T' | 'Z') | None)
                    && (*pid != postmaster || crate::process_state(*pid) == Some('T'))
            });
            if settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server's processes {pids:?} did not all stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        pids.iter()
            .filter(|pid| crate::process_state(**pid) == Some('T'))
            .count()
    }

    /// Resumes a server [`PostgresServer::freeze`] froze.
    pub fn thaw(&self) {
        self.signal_all("CONT");
    }

    /// Stops the server at once (immediate shutdown: open transactions are lost, as in a
    /// crash; the next start recovers from the WAL) and waits for it to exit.
    pub fn stop_immediately(&mut self) {
        // A frozen server (or backend) could not act on SIGQUIT.
        self.thaw();
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: the postmaster ends its backends with SIGQUIT and exits without a
            // checkpoint; a continued process first, in case a test stopped it.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = Command::new("kill")
                .arg("-QUIT")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the server again on the same port and cluster (after
    /// [`PostgresServer::stop_immediately`]), recovering from the WAL.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        self.launch();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!("--- postgres :{} log (last lines) ---\n{tail}", self.port);
        }
        self.stop_immediately();
    }
}
