//! A private S3-compatible server for the object-storage suites: moto's server (from the
//! test venv, `python::python()`) on a free port, with one bucket, killed on drop.
//!
//! moto enforces `If-None-Match: *` on PUT, which every exactly-once test relies on; the
//! first test of `buffer-persist/tests/object_store.rs` proves it, so those tests cannot pass
//! against a server that ignores it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

/// The region the test client and the persisters name (moto takes any).
const REGION: &str = "us-east-1";

/// moto's S3 server on 127.0.0.1, with one bucket; killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    bucket: String,
    /// Holds moto's log.
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts moto on a free port, waits until it answers and creates the bucket `bucket`.
    /// Panics, with moto's log, when it does not come up within 60 s.
    pub fn start() -> Self {
        let python = crate::python::python();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = crate::free_port();
            let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
            // `python -m moto.server`: the venv's console scripts carry the venv's absolute
            // path in their shebang, which does not survive a copied venv.
            let child = Command::new(&python)
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start moto with {}: {err}", python.display()));
            let mut server = Self {
                child,
                port,
                bucket: "landing".to_owned(),
                dir,
            };
            if server.wait_ready(Duration::from_secs(60)) {
                let status = server.http("PUT", &format!("/{}", server.bucket));
                assert!(
                    status == 200,
                    "creating the bucket answered {status}: {}",
                    server.log()
                );
                return server;
            }
            // The port was taken between choosing and binding: try another one.
            eprintln!("moto did not come up on port {port}: {}", server.log());
            drop(server);
        }
        panic!("moto did not start on any of 5 ports");
    }

    /// True once moto answers an HTTP request, false when it exited or `timeout` passed.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.try_http("GET", "/").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// One unsigned HTTP/1.1 request (moto does not check signatures); its status code.
    fn http(&self, method: &str, path: &str) -> u16 {
        self.try_http(method, path)
            .unwrap_or_else(|| panic!("{method} {path} got no answer: {}", self.log()))
    }

    fn try_http(&self, method: &str, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.split_whitespace().nth(1)?.parse().ok()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port moto listens on (for a proxy in front of it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// moto's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment a persister needs to reach this server (the standard AWS variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// A client of the bucket, as a persister builds it.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(REGION)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .build()
            .unwrap();
        Arc::new(store)
    }

    /// Every object key in the bucket, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let store = self.store();
        let mut stream = store.list(None);
        let mut keys = Vec::new();
        while let Some(meta) = stream.next().await {
            keys.push(meta.unwrap().location.to_string());
        }
        keys.sort();
        keys
    }

    /// An object's bytes.
    pub async fn get(&self, key: &str) -> Bytes {
        self.store()
            .get(&ObjectPath::parse(key).unwrap())
            .await
            .unwrap_or_else(|err| panic!("get {key}: {err}"))
            .bytes()
            .await
            .unwrap()
    }

    /// Creates `key` with a conditional create (`If-None-Match: *`); the store's answer.
    pub async fn put_if_absent(&self, key: &str, body: &'static str) -> object_store::Result<()> {
        self.store()
            .put_opts(
                &ObjectPath::parse(key).unwrap(),
                PutPayload::from_static(body.as_bytes()),
                PutMode::Create.into(),
            )
            .await
            .map(|_| ())
    }

    /// Replaces `key` with `body` (delete, then conditional create): how a test puts a marker
    /// of its own in place of the one a persister wrote.
    pub async fn replace(&self, key: &str, body: &'static str) {
        let path = ObjectPath::parse(key).unwrap();
        self.store()
            .delete(&path)
            .await
            .unwrap_or_else(|err| panic!("delete {key}: {err}"));
        self.put_if_absent(key, body)
            .await
            .unwrap_or_else(|err| panic!("create {key}: {err}"));
    }

    /// Copies every object under `prefix` into `dir` (same relative names), for readers that
    /// cannot read S3 themselves. Returns the files written.
    pub async fn download(&self, prefix: &str, dir: &std::path::Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for key in self.keys().await {
            let Some(relative) = key.strip_prefix(prefix) else {
                continue;
            };
            let relative = relative.trim_start_matches('/');
            let path = dir.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, self.get(&key).await).unwrap();
            files.push(path);
        }
        files
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel but never answered,
    /// as with a store that is down or unreachable behind a load balancer.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", self.child.id());
    }

    /// moto's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // A paused server must be let go on before it can die of SIGKILL's cleanup.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let start = log.len().saturating_sub(4000);
            eprintln!("--- moto log (end) ---\n{}", &log[start..]);
        }
    }
}
