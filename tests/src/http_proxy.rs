//! An HTTP/1.1 proxy in front of a test server (moto's S3) that injects the faults a real
//! object store shows: error replies it makes itself (`503 SlowDown`, `500 InternalError`),
//! a request cut in the middle of its body (a node that crashes mid-upload), a request the
//! server runs whose reply never arrives (a crash after the commit), and slow replies.
//!
//! Each request travels on its own connection (`Connection: close` is set both ways), so a
//! fault always hits a whole request and the client never reuses a connection the proxy cut.
//! Bodies must carry a `Content-Length` (the S3 client's always do); a chunked request fails
//! the test loudly instead of being mis-framed.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to one request.
#[derive(Clone, Debug)]
pub enum HttpFault {
    /// Answered by the proxy with this status and S3 error code; the server never sees it.
    Reply {
        /// The HTTP status, e.g. 503.
        status: u16,
        /// The S3 error code in the XML body, e.g. `SlowDown`.
        code: &'static str,
    },
    /// Half of the request's body reaches the server, then both connections close: the
    /// request never completes there (a node crashed mid-upload).
    CutRequestBody,
    /// The whole request reaches the server, which runs it; its reply is thrown away and the
    /// client's connection closed (a crash after the commit, before the answer).
    DropResponse,
}

/// The proxy; stops accepting when dropped (connections in flight run to their end).
pub struct HttpFaultProxy {
    port: u16,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    upstream_port: u16,
    /// Faults to apply, each to the next request whose `METHOD path` contains its pattern.
    planned: Mutex<VecDeque<(String, HttpFault)>>,
    delay_ms: AtomicU64,
    requests: AtomicU64,
    /// `METHOD path: fault` of every fault applied, in order.
    applied: Mutex<Vec<String>>,
    stopped: std::sync::atomic::AtomicBool,
}

impl HttpFaultProxy {
    /// A proxy on a free port of 127.0.0.1 to the server on `upstream_port`.
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            upstream_port,
            ..ProxyState::default()
        });
        let accepting = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let state = accepting.clone();
                std::thread::spawn(move || {
                    if let Err(err) = serve_one(client, &state) {
                        eprintln!("http fault proxy: {err}");
                    }
                });
            }
        });
        Self { port, state }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Plans `fault` for the next request whose `METHOD path` contains `matching` (e.g.
    /// `"PUT "`, or `"PUT /bucket/prefix/store/"`), after the faults planned before it that
    /// match the same request.
    pub fn inject(&self, matching: &str, fault: HttpFault) {
        self.state
            .planned
            .lock()
            .unwrap()
            .push_back((matching.to_owned(), fault));
    }

    /// Holds every reply `delay` before it goes back to the client (zero: none).
    pub fn set_reply_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// How many requests came through so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The faults applied so far, `METHOD path: fault`, in order.
    pub fn applied(&self) -> Vec<String> {
        self.state.applied.lock().unwrap().clone()
    }

    /// How many planned faults have not met their request yet.
    pub fn pending(&self) -> usize {
        self.state.planned.lock().unwrap().len()
    }
}

impl Drop for HttpFaultProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One request: read it whole, apply the planned fault or forward it.
fn serve_one(mut client: TcpStream, state: &ProxyState) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (head, mut body) = read_head(&mut client)?;
    if head.is_empty() {
        return Ok(());
    }
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head_text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head_text.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    assert!(
        header("transfer-encoding").is_none(),
        "http fault proxy: chunked request {request_line}: not supported"
    );
    let length: usize = header("content-length")
        .map(|v| v.parse().expect("a numeric Content-Length"))
        .unwrap_or(0);
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(64 * 1024)];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let fault = {
        let mut planned = state.planned.lock().unwrap();
        let request = format!("{method} {path}");
        let index = planned
            .iter()
            .position(|(m, _)| request.contains(m.as_str()));
        index
            .and_then(|i| planned.remove(i))
            .map(|(_, fault)| fault)
    };
    if let Some(fault) = &fault {
        state
            .applied
            .lock()
            .unwrap()
            .push(format!("{method} {path}: {fault:?}"));
    }
    let forwarded_head = with_connection_close(&head_text);
    match fault {
        Some(HttpFault::Reply { status, code }) => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                 <Message>injected by the test proxy</Message></Error>"
            );
            let reason = if status == 503 {
                "Service Unavailable"
            } else {
                "Internal Server Error"
            };
            let reply = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            );
            client.write_all(reply.as_bytes())?;
            client.shutdown(Shutdown::Both)
        }
        Some(HttpFault::CutRequestBody) => {
            let mut server = TcpStream::connect(("127.0.0.1", state.upstream_port))?;
            server.write_all(forwarded_head.as_bytes())?;
            server.write_all(&body[..body.len() / 2])?;
            let _ = server.shutdown(Shutdown::Both);
            client.shutdown(Shutdown::Both)
        }
        Some(HttpFault::DropResponse) => {
            let mut server = TcpStream::connect(("127.0.0.1", state.upstream_port))?;
            server.set_read_timeout(Some(Duration::from_secs(60)))?;
            server.write_all(forwarded_head.as_bytes())?;
            server.write_all(&body)?;
            // Wait for the server to have answered (so it ran the request), then drop it.
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink);
            client.shutdown(Shutdown::Both)
        }
        None => {
            let mut server = TcpStream::connect(("127.0.0.1", state.upstream_port))?;
            server.set_read_timeout(Some(Duration::from_secs(60)))?;
            server.write_all(forwarded_head.as_bytes())?;
            server.write_all(&body)?;
            let delay = state.delay_ms.load(Ordering::SeqCst);
            let (reply_head, rest) = read_head(&mut server)?;
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            let reply_head = with_connection_close(&String::from_utf8_lossy(&reply_head));
            client.write_all(reply_head.as_bytes())?;
            client.write_all(&rest)?;
            std::io::copy(&mut server, &mut client)?;
            client.shutdown(Shutdown::Both)
        }
    }
}

/// Reads up to and including the blank line that ends a head; the head (with its final
/// `\r\n\r\n`) and the bytes read past it. An empty head: the peer closed first.
fn read_head(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut read = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = read.split_off(end + 4);
            return Ok((read, rest));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        read.extend_from_slice(&chunk[..n]);
    }
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn with_connection_close(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            !line
                .split_once(':')
                .is_some_and(|(key, _)| key.trim().eq_ignore_ascii_case("connection"))
        })
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}
