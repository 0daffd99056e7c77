//! The batch reader's own sockets: a page of records read with `LRANGE` and parsed by this
//! module straight into one [`Page`] buffer, instead of through redis-rs's `Value`.
//!
//! Why: reading pages is the drain's main cost, and redis-rs decodes every element of an
//! `LRANGE` reply into a `Value` of its own (one allocation, about 1 500 instructions per
//! 200 B record, then a copy and a UTF-8 check per `String`; BENCHMARKS.md, "CPU per record").
//! Here a reply is parsed as it arrives: each element's bytes are copied once, into the page's
//! single buffer, each followed by a newline, and the whole page is checked as UTF-8 at once.
//!
//! This is only a faster road for the common case. Whenever it cannot give the exact answer
//! the page is read again on the general road (the crate's [`Connection`], which follows
//! redirects and reports errors the one way every other command does): a `rediss://` URL
//! (these sockets are plain TCP or unix), a cluster whose slot map does not know the key's
//! master yet, an error reply (a `MOVED` after a reshard, `WRONGTYPE`, …), a record that is
//! not UTF-8, or a socket that failed. A handshake the server refuses (AUTH, SELECT) turns the
//! road off for that server for a while (a second after a transient refusal such as
//! `LOADING`, a minute otherwise, with a warning), never for good: one refusal during a
//! restart must not slow every later drain of the process.
//!
//! [`Connection`]: crate::connection::Connection

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::page::Page;

/// How many idle sockets are kept per server (a persister reads with one per batch in flight).
const IDLE_PER_SERVER: usize = 8;
/// How long the road stays off for a server after it refused the handshake: briefly for a
/// refusal that says "later" (a server loading its data, busy, or a master down), a minute
/// for any other (wrong password, no permission), after which the handshake is tried again.
const OFF_AFTER_TRANSIENT_REFUSAL: Duration = Duration::from_secs(1);
const OFF_AFTER_REFUSAL: Duration = Duration::from_secs(60);
/// The name of the page sockets in `CLIENT LIST`.
pub(crate) const CLIENT_NAME: &str = "buffer-page-reader";
/// The read buffer of a socket: a reply streams through it into the page.
const READ_BUFFER: usize = 64 * 1024;

/// Idle sockets by server address, shared by every clone of a `Buffer`.
#[derive(Debug, Default)]
pub(crate) struct PageSockets {
    idle: Mutex<HashMap<String, Vec<PageSocket>>>,
    /// Servers that refused this road's handshake, with when to try it again: until then,
    /// their pages take the general road.
    off: Mutex<HashMap<String, Instant>>,
}

/// Why a page was not read on this road (it is then read on the general one).
#[derive(Debug)]
pub(crate) enum Detour {
    /// The road is off, or does not go to this server (TLS).
    Unavailable,
    /// The server answered with an error; the socket is still good.
    ErrorReply(String),
    /// The records are not all UTF-8.
    NotText,
    /// Connecting, the handshake, or the exchange failed; the socket is dropped.
    Failed(std::io::Error),
}

impl std::fmt::Display for Detour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable => write!(f, "no page socket goes to this server"),
            Self::ErrorReply(reply) => write!(f, "the server answered {reply}"),
            Self::NotText => write!(f, "a record is not UTF-8"),
            Self::Failed(err) => write!(f, "the page socket failed: {err}"),
        }
    }
}

impl PageSockets {
    /// Reads `LRANGE key start stop` on a socket to the server `info` names, into a page sized
    /// for `expected_bytes` (it grows if they are more).
    pub(crate) async fn lrange(
        &self,
        info: &ConnectionInfo,
        key: &str,
        (start, stop): (u64, u64),
        expected_bytes: usize,
        timeouts: (Duration, Duration),
    ) -> Result<Page, Detour> {
        let address = info.addr().to_string();
        if self.is_off(&address) {
            return Err(Detour::Unavailable);
        }
        let (connect_timeout, response_timeout) = timeouts;
        let idle = self.take_idle(&address);
        let mut socket = match idle {
            Some(socket) => socket,
            None => match PageSocket::connect(info, connect_timeout).await {
                Ok(socket) => socket,
                Err(Handshake::Refused(reply)) => {
                    let transient = ["LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"]
                        .iter()
                        .any(|code| reply.trim_start_matches('-').starts_with(code));
                    let pause = if transient {
                        OFF_AFTER_TRANSIENT_REFUSAL
                    } else {
                        OFF_AFTER_REFUSAL
                    };
                    tracing::warn!(server = %address, reply = %reply, ?pause,
                        "the server refused the batch reader's own connection; its pages are read through the general connection for a while");
                    self.off
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(address, Instant::now() + pause);
                    return Err(Detour::Unavailable);
                }
                Err(Handshake::Unsupported) => return Err(Detour::Unavailable),
                Err(Handshake::Io(err)) => return Err(Detour::Failed(err)),
            },
        };
        let exchange = socket.lrange(key, (start, stop), expected_bytes);
        let reply = tokio::time::timeout(response_timeout, exchange).await;
        match reply {
            Ok(Ok(reply)) => {
                self.put_idle(address, socket);
                match reply {
                    Reply::Page(page) => Ok(page),
                    Reply::Error(text) => Err(Detour::ErrorReply(text)),
                    Reply::NotText => Err(Detour::NotText),
                }
            }
            Ok(Err(err)) => Err(Detour::Failed(err)),
            Err(_elapsed) => Err(Detour::Failed(timed_out(
                "no reply within the response timeout",
            ))),
        }
    }

    /// True while the road is off for the server at `address`.
    fn is_off(&self, address: &str) -> bool {
        let mut off = self.off.lock().unwrap_or_else(|e| e.into_inner());
        match off.get(address) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                off.remove(address);
                false
            }
            None => false,
        }
    }

    fn take_idle(&self, address: &str) -> Option<PageSocket> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(address).and_then(Vec::pop)
    }

    fn put_idle(&self, address: String, socket: PageSocket) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let sockets = idle.entry(address).or_default();
        if sockets.len() < IDLE_PER_SERVER {
            sockets.push(socket);
        }
    }
}

/// A byte stream to one server.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Stream for T {}

/// Why a socket could not be made.
enum Handshake {
    /// TLS: not on this road.
    Unsupported,
    /// The server answered AUTH or SELECT with an error.
    Refused(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Handshake {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

/// One connection and its read buffer (`buffer[start..end]` holds bytes not parsed yet).
#[derive(Debug)]
struct PageSocket {
    stream: Box<dyn Stream>,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
}

/// What an exchange brought back.
enum Reply {
    Page(Page),
    Error(String),
    NotText,
}

impl PageSocket {
    async fn connect(info: &ConnectionInfo, timeout: Duration) -> Result<Self, Handshake> {
        let connecting = async {
            let stream: Box<dyn Stream> = match info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
                ConnectionAddr::Unix(path) => Box::new(UnixStream::connect(path).await?),
                _ => return Err(Handshake::Unsupported),
            };
            Ok(stream)
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| Handshake::Io(timed_out("connect timed out")))??;
        let mut socket = Self {
            stream,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = vec!["AUTH".as_bytes()];
            if let Some(user) = settings.username() {
                auth.push(user.as_bytes());
            }
            auth.push(password.as_bytes());
            socket.handshake(&auth, timeout).await?;
        }
        // Named, so `CLIENT LIST` tells these sockets from the general connection's. A server
        // that refuses the name (an ACL without CLIENT) still serves the pages.
        let named = socket
            .handshake(
                &[b"CLIENT".as_slice(), b"SETNAME", CLIENT_NAME.as_bytes()],
                timeout,
            )
            .await;
        if let Err(Handshake::Io(err)) = named {
            return Err(Handshake::Io(err));
        }
        if settings.db() != 0 {
            let db = settings.db().to_string();
            socket
                .handshake(&[b"SELECT".as_slice(), db.as_bytes()], timeout)
                .await?;
        }
        Ok(socket)
    }

    /// Sends a command whose reply must be `+OK`.
    async fn handshake(&mut self, args: &[&[u8]], timeout: Duration) -> Result<(), Handshake> {
        let exchange = async {
            self.stream.write_all(&encode(args)).await?;
            self.line().await
        };
        let line = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Handshake::Io(timed_out("handshake timed out")))??;
        match line.strip_prefix('+') {
            Some(_) => Ok(()),
            None => Err(Handshake::Refused(line)),
        }
    }

    /// Reads one reply line (without its CRLF).
    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            let pending = &self.buffer[self.start..self.end];
            if let Some(at) = memchr::memchr(b'\n', pending) {
                let line = String::from_utf8_lossy(&pending[..at])
                    .trim_end_matches('\r')
                    .to_owned();
                self.start += at + 1;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes after those not parsed yet (moved to the front first).
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buffer.len() {
            return Err(protocol("a reply line longer than the read buffer"));
        }
        let read = self.stream.read(&mut self.buffer[self.end..]).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.end += read;
        Ok(())
    }

    async fn lrange(
        &mut self,
        key: &str,
        (start, stop): (u64, u64),
        expected_bytes: usize,
    ) -> std::io::Result<Reply> {
        if self.start != self.end {
            return Err(protocol("bytes left over from an earlier reply"));
        }
        let (start, stop) = (start.to_string(), stop.to_string());
        let request = encode(&[b"LRANGE", key.as_bytes(), start.as_bytes(), stop.as_bytes()]);
        self.stream.write_all(&request).await?;
        let mut parser = ReplyParser::new(expected_bytes);
        loop {
            let (used, done) = parser.feed(&self.buffer[self.start..self.end])?;
            self.start += used;
            if let Some(done) = done {
                if self.start != self.end {
                    return Err(protocol("bytes after the reply"));
                }
                return Ok(done);
            }
            self.fill().await?;
        }
    }
}

/// A command in RESP.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn timed_out(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

fn protocol(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("unexpected reply to LRANGE: {what}"),
    )
}

/// Where the parser is in an `LRANGE` reply: an array of bulk strings.
#[derive(Debug, Default)]
enum State {
    /// Before `*<count>` (or `-<error>`).
    #[default]
    Array,
    /// Before an element's `$<length>`.
    Element,
    /// Inside an element of this many bytes, none of them taken yet.
    Body(usize),
    /// Inside an element that did not arrive in one piece: this many of its bytes still to
    /// take (those taken wait in `pending`).
    Rest(usize),
    /// After an element: this many bytes of its CRLF still to skip.
    Crlf(usize),
}

/// Parses an `LRANGE` reply as it arrives into a [`Page`]: each element's text followed by a
/// newline in one buffer, and where each element ends. Each element is checked as UTF-8 as it
/// is appended (with SIMD), so the page needs no second pass.
#[derive(Debug, Default)]
struct ReplyParser {
    state: State,
    /// Elements not started yet.
    left: usize,
    lines: String,
    ends: Vec<usize>,
    /// The bytes so far of an element that arrives in several pieces.
    pending: Vec<u8>,
    /// A record was not UTF-8: the rest of the reply is read, and dropped.
    not_text: bool,
    /// How many bytes the page will likely take (records and newlines), to size it once.
    expected_bytes: usize,
}

impl ReplyParser {
    fn new(expected_bytes: usize) -> Self {
        Self {
            expected_bytes,
            ..Self::default()
        }
    }

    /// Appends one whole element, if it is text.
    fn append(&mut self, bytes: &[u8]) {
        match simdutf8::basic::from_utf8(bytes) {
            Ok(text) if !self.not_text => {
                self.lines.push_str(text);
                self.ends.push(self.lines.len());
                self.lines.push('\n');
            }
            _ => self.not_text = true,
        }
    }

    /// Takes what it can of `input`: the bytes used, and the reply once it is complete.
    fn feed(&mut self, input: &[u8]) -> std::io::Result<(usize, Option<Reply>)> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Element if self.left > 0 && rest.first() == Some(&b'$') => {
                    // The hot path, once per record: `$<digits>\r\n` read in one pass.
                    let Some((wanted, header)) = bulk_header(rest)? else {
                        return Ok((at, None));
                    };
                    at += header;
                    self.left -= 1;
                    self.state = State::Body(wanted);
                }
                State::Array | State::Element => {
                    let Some(end) = memchr::memchr(b'\n', rest) else {
                        return Ok((at, None));
                    };
                    let line = rest[..end]
                        .strip_suffix(b"\r")
                        .ok_or_else(|| protocol("a line without CR"))?;
                    at += end + 1;
                    let (kind, value) = line
                        .split_first()
                        .ok_or_else(|| protocol("an empty line"))?;
                    match (&self.state, kind) {
                        (State::Array, b'-') => {
                            let text = String::from_utf8_lossy(value).into_owned();
                            return Ok((at, Some(Reply::Error(text))));
                        }
                        (State::Array, b'*') => {
                            self.left = length(value)?;
                            self.lines.reserve(self.expected_bytes);
                            self.ends.reserve(self.left);
                            self.state = State::Element;
                        }
                        (State::Element, b'$') if self.left > 0 => {
                            self.left -= 1;
                            self.state = State::Body(length(value)?);
                        }
                        _ => return Err(protocol("not an array of bulk strings")),
                    }
                }
                State::Body(wanted) if rest.len() >= wanted + 2 => {
                    // The common case: the whole element and its CRLF are in the buffer.
                    if &rest[wanted..wanted + 2] != b"\r\n" {
                        return Err(protocol("an element not followed by CRLF"));
                    }
                    self.append(&rest[..wanted]);
                    at += wanted + 2;
                    self.state = State::Element;
                }
                State::Body(wanted) | State::Rest(wanted) => {
                    let take = wanted.min(rest.len());
                    self.pending.extend_from_slice(&rest[..take]);
                    at += take;
                    if take < wanted {
                        self.state = State::Rest(wanted - take);
                        return Ok((at, None));
                    }
                    let pending = std::mem::take(&mut self.pending);
                    self.append(&pending);
                    self.pending = pending;
                    self.pending.clear();
                    self.state = State::Crlf(2);
                }
                State::Crlf(wanted) => {
                    let take = wanted.min(rest.len());
                    at += take;
                    if take < wanted {
                        self.state = State::Crlf(wanted - take);
                        return Ok((at, None));
                    }
                    self.state = State::Element;
                }
            }
            if matches!(self.state, State::Element) && self.left == 0 {
                if self.not_text {
                    return Ok((at, Some(Reply::NotText)));
                }
                let lines = std::mem::take(&mut self.lines);
                let ends = std::mem::take(&mut self.ends);
                return Ok((at, Some(Reply::Page(Page::from_lines(lines, ends)))));
            }
        }
    }
}

/// A bulk string's header at the start of `input` (`$<digits>\r\n`): its length and the
/// header's size, or `None` when the header has not all arrived yet.
fn bulk_header(input: &[u8]) -> std::io::Result<Option<(usize, usize)>> {
    let bad = || protocol("a bulk length that is not a non-negative number");
    let mut length = 0usize;
    for (index, &byte) in input.iter().enumerate().skip(1) {
        match byte {
            b'0'..=b'9' if index <= 18 => length = length * 10 + usize::from(byte - b'0'),
            b'\r' if index > 1 => {
                return match input.get(index + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((length, index + 2))),
                    Some(_) => Err(protocol("a line without LF")),
                };
            }
            _ => return Err(bad()),
        }
    }
    Ok(None)
}

/// A non-negative length of a RESP header (`-1`, a nil, is not expected in an LRANGE reply).
fn length(digits: &[u8]) -> std::io::Result<usize> {
    let bad = || protocol("a length that is not a non-negative number");
    if digits.is_empty() || digits.len() > 18 {
        return Err(bad());
    }
    digits.iter().try_fold(0usize, |number, digit| match digit {
        b'0'..=b'9' => Ok(number * 10 + usize::from(digit - b'0')),
        _ => Err(bad()),
    })
}

/// Where the page road connects for `key`'s server, given the server's connection settings:
/// `None` for a TLS address, which this road does not take.
pub(crate) fn plain(info: ConnectionInfo) -> Option<ConnectionInfo> {
    match info.addr() {
        ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_) => Some(info),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(reply: &[u8], piece: usize) -> Reply {
        let mut parser = ReplyParser::new(16);
        let mut pending = Vec::new();
        for chunk in reply.chunks(piece) {
            pending.extend_from_slice(chunk);
            let (used, done) = parser.feed(&pending).expect("a valid reply");
            pending.drain(..used);
            if let Some(done) = done {
                assert!(pending.is_empty());
                return done;
            }
        }
        panic!("the reply never completed");
    }

    #[test]
    fn a_reply_parses_the_same_whatever_pieces_it_arrives_in() {
        let reply = b"*3\r\n$7\r\n{\"a\":1}\r\n$0\r\n\r\n$12\r\n{\"b\":\"\xc3\xa9\xc3\xa9\"}\r\n";
        for piece in 1..=reply.len() {
            let Reply::Page(page) = parse_in_pieces(reply, piece) else {
                panic!("not a page");
            };
            let records: Vec<&str> = page.iter().collect();
            assert_eq!(
                records,
                ["{\"a\":1}", "", "{\"b\":\"éé\"}"],
                "pieces of {piece}"
            );
            assert_eq!(page.as_lines(), "{\"a\":1}\n\n{\"b\":\"éé\"}\n");
        }
    }

    #[test]
    fn error_replies_empty_arrays_and_non_text_are_told_apart() {
        assert!(matches!(
            parse_in_pieces(b"-MOVED 12 127.0.0.1:7001\r\n", 3),
            Reply::Error(text) if text == "MOVED 12 127.0.0.1:7001"
        ));
        assert!(matches!(parse_in_pieces(b"*0\r\n", 1), Reply::Page(page) if page.is_empty()));
        for piece in 1..12 {
            assert!(matches!(
                parse_in_pieces(b"*2\r\n$2\r\n\xff\xfe\r\n$1\r\na\r\n", piece),
                Reply::NotText
            ));
        }
        let mut parser = ReplyParser::default();
        assert!(parser.feed(b"*1\r\n:5\r\n").is_err());
        assert!(ReplyParser::default().feed(b"*x\r\n").is_err());
        assert!(ReplyParser::default().feed(b"*-1\r\n").is_err());
        // More elements than the array announced.
        let mut parser = ReplyParser::default();
        assert!(
            parser
                .feed(b"*0\r\n$1\r\na\r\n")
                .is_ok_and(|(used, done)| used == 4 && done.is_some())
        );
        assert_eq!(length(b"1234").unwrap(), 1234);
        assert_eq!(bulk_header(b"$12\r\nabc").unwrap(), Some((12, 5)));
        assert_eq!(bulk_header(b"$12\r").unwrap(), None);
        assert_eq!(bulk_header(b"$12").unwrap(), None);
        assert!(bulk_header(b"$\r\n").is_err() && bulk_header(b"$-1\r\n").is_err());
        assert!(bulk_header(b"$1\rx").is_err());
        assert!(length(b"").is_err() && length(b"12a").is_err());
    }

    #[test]
    fn a_refused_handshake_turns_the_road_off_for_that_server_for_a_while_only() {
        let sockets = PageSockets::default();
        let now = Instant::now();
        {
            let mut off = sockets.off.lock().unwrap();
            off.insert("a:1".into(), now + OFF_AFTER_TRANSIENT_REFUSAL);
            off.insert("b:2".into(), now - Duration::from_millis(1));
        }
        assert!(sockets.is_off("a:1"), "off until its pause ends");
        assert!(!sockets.is_off("b:2"), "on again once its pause ended");
        assert!(!sockets.is_off("c:3"), "other servers are never affected");
        assert!(!sockets.off.lock().unwrap().contains_key("b:2"));
    }
}
