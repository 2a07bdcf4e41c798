//! The HTTP/1.1 client every vendor call goes through (plain TCP or TLS), with a
//! keep-alive pool.
//!
//! Why not hyper's pooled client: each pooled hyper connection is a spawned task plus a
//! dispatch channel (a request travels to the connection's task and the answer back
//! through a oneshot), ~17 KB of state per open upstream stream and two extra task hops
//! per request. Here the request's own future owns its connection: it writes the request,
//! parses the head with `httparse`, and the [`Body`] reads the rest from the same socket
//! (content-length, chunked or to-close framing); a body read to its end puts the
//! connection back in the pool, a body dropped early closes it. One read buffer of
//! 4 KiB per connection (stream events are small).
//!
//! What it does not do, on purpose: HTTP/2 (every vendor speaks HTTP/1.1; TLS offers
//! only `http/1.1` in ALPN), pipelining, request bodies other than one buffer, and
//! retries after a request was written (the vendor may have taken it: see
//! [`Client::send`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tollgate_core::{UpstreamError, UpstreamErrorKind};

/// Read buffer growth step: stream events are small; a large non-stream body reads in
/// bigger steps (see [`Body::fill`]).
const READ_STEP: usize = 4 * 1024;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response head.
const MAX_HEADERS: usize = 64;

/// A connection: TCP, or TLS over TCP.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open connection and what has been read from it but not consumed.
struct Conn {
    io: Io,
    buf: BytesMut,
}

impl Conn {
    /// Whether an idle pooled connection can take a request: nothing may arrive on an
    /// idle HTTP/1.1 connection but its close, so a read that does not return
    /// "pending" means closed (or broken). No system call when the reactor saw nothing;
    /// one `recv` when readiness was left over from the last answer. Over TLS the read
    /// also takes in what the server may send after an answer (TLS 1.3 session tickets,
    /// which carry no data) and sees a `close_notify`.
    fn looks_alive(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }
}

/// Where a request goes, borrowed from its URL.
struct Target<'a> {
    /// `scheme://authority`: the pool key.
    origin: &'a str,
    tls: bool,
    /// The `Host` header: the authority as written.
    authority: &'a str,
    host: &'a str,
    port: u16,
    /// Path and query (`/` when the URL has none).
    path: &'a str,
}

fn invalid(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(UpstreamErrorKind::Connect, msg)
}

fn parse_url(url: &str) -> Result<Target<'_>, UpstreamError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(invalid(
            "invalid upstream URL: the scheme must be http or https",
        ));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let origin = &url[..url.len() - rest.len() + end];
    let path = match &rest[end..] {
        "" => "/",
        p if p.starts_with('?') => {
            return Err(invalid(format!(
                "invalid upstream URL: a query needs a path ({p})"
            )))
        }
        p => p.split('#').next().unwrap_or(p),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid(
            "invalid upstream URL: no host (or user info in it)",
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let close = v6
            .find(']')
            .ok_or_else(|| invalid("invalid upstream URL: unclosed IPv6 address"))?;
        let port = match &v6[close + 1..] {
            "" => default_port,
            p => parse_port(p.strip_prefix(':').unwrap_or("x"))?,
        };
        (&v6[..close], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p)?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(invalid("invalid upstream URL: no host"));
    }
    Ok(Target {
        origin,
        tls,
        authority,
        host,
        port,
        path,
    })
}

fn parse_port(p: &str) -> Result<u16, UpstreamError> {
    p.parse()
        .map_err(|_| invalid(format!("invalid upstream URL: bad port '{p}'")))
}

/// An origin's idle connections, each with the moment it must not be used after.
type Idle = (Arc<str>, Vec<(Conn, Instant)>);

/// Idle connections per origin (a gateway talks to a handful: a list is enough).
struct Pool {
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    max_idle_per_origin: usize,
}

impl Pool {
    /// A live idle connection to `origin` (the most recently used), and the origin's
    /// shared key.
    fn checkout(&self, origin: &str) -> (Option<Conn>, Arc<str>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match idle.iter().position(|(k, _)| &**k == origin) {
            Some(i) => i,
            None => {
                idle.push((Arc::from(origin), Vec::new()));
                idle.len() - 1
            }
        };
        let (key, conns) = &mut idle[slot];
        let now = Instant::now();
        while let Some((mut conn, until)) = conns.pop() {
            if now < until && conn.looks_alive() {
                return (Some(conn), key.clone());
            }
        }
        (None, key.clone())
    }

    /// Pools a connection for at most the pool's idle time, or less when the upstream
    /// announced how long it keeps an idle connection (`Keep-Alive: timeout=N`): a
    /// second before that, so a reused connection is not one it is closing just then.
    fn put_back(&self, origin: &Arc<str>, conn: Conn, keep_alive: Option<Duration>) {
        let ttl = match keep_alive {
            Some(t) => self
                .idle_timeout
                .min(t.saturating_sub(Duration::from_secs(1))),
            None => self.idle_timeout,
        };
        if ttl.is_zero() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, conns)) = idle.iter_mut().find(|(k, _)| Arc::ptr_eq(k, origin)) {
            let now = Instant::now();
            conns.retain(|(_, until)| now < *until);
            if conns.len() < self.max_idle_per_origin {
                conns.push((conn, now + ttl));
            }
        }
    }
}

/// The client: a pool plus how to open connections.
pub struct Client {
    pool: Arc<Pool>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

/// A response whose head has arrived.
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<u64>,
    pub body: Body,
}

impl Client {
    /// A client; `tls` should offer only `http/1.1` in ALPN.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle_per_origin: usize,
    ) -> Client {
        Client {
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                idle_timeout,
                max_idle_per_origin,
            }),
            tls: tokio_rustls::TlsConnector::from(tls),
            connect_timeout,
        }
    }

    async fn connect(&self, t: &Target<'_>) -> Result<Conn, UpstreamError> {
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect((t.host, t.port)))
                .await
            {
                Err(_) => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Timeout,
                        "could not connect to the upstream (timed out)",
                    ))
                }
                Ok(Err(_)) => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Connect,
                        "could not connect to the upstream",
                    ))
                }
                Ok(Ok(s)) => s,
            };
        let _ = tcp.set_nodelay(true);
        let io = if t.tls {
            let name = rustls::pki_types::ServerName::try_from(t.host.to_owned())
                .map_err(|_| invalid(format!("invalid upstream host name '{}'", t.host)))?;
            let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
                .await
                .map_err(|_| {
                    UpstreamError::new(
                        UpstreamErrorKind::Timeout,
                        "TLS handshake with the upstream timed out",
                    )
                })?
                .map_err(|e| {
                    UpstreamError::new(
                        UpstreamErrorKind::Connect,
                        format!("TLS handshake with the upstream failed: {e}"),
                    )
                })?;
            Io::Tls(Box::new(tls))
        } else {
            Io::Plain(tcp)
        };
        Ok(Conn {
            io,
            buf: BytesMut::new(),
        })
    }

    /// Sends one request and reads the response head.
    ///
    /// A pooled connection the upstream closed while it sat idle is noticed when it is
    /// taken from the pool (a close shows as readiness) or when writing to it fails; the
    /// request then goes on a new connection. Once the request was written nothing is retried: the vendor may
    /// have taken it.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Response, UpstreamError> {
        let t = parse_url(url)?;
        let request = encode_request(method, &t, headers, body)?;
        let (pooled, origin) = self.pool.checkout(t.origin);
        let mut conn = match pooled {
            Some(mut c) => match write_request(&mut c.io, &request).await {
                Ok(()) => c,
                // Closed while idle: the request did not reach the vendor.
                Err(_) => {
                    let mut c = self.connect(&t).await?;
                    write_request(&mut c.io, &request)
                        .await
                        .map_err(|_| before_response())?;
                    c
                }
            },
            None => {
                let mut c = self.connect(&t).await?;
                write_request(&mut c.io, &request)
                    .await
                    .map_err(|_| before_response())?;
                c
            }
        };
        drop(request);
        let head = read_head(&mut conn, method == "HEAD").await?;
        Ok(Response {
            status: head.status,
            content_type: head.content_type,
            retry_after: head.retry_after,
            body: Body {
                conn: Some(conn),
                framing: head.framing,
                reusable: head.reusable,
                keep_alive: head.keep_alive,
                pool: self.pool.clone(),
                origin,
            },
        })
    }
}

fn before_response() -> UpstreamError {
    UpstreamError::new(
        UpstreamErrorKind::Server,
        "the upstream connection failed before a response",
    )
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The request as bytes: head and body in one buffer, one write.
fn encode_request(
    method: &str,
    t: &Target<'_>,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Vec<u8>, UpstreamError> {
    let hlen: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(64 + t.path.len() + t.authority.len() + hlen + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(t.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(t.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        // Framing is ours to set.
        if k.eq_ignore_ascii_case("host")
            || k.eq_ignore_ascii_case("content-length")
            || k.eq_ignore_ascii_case("transfer-encoding")
            || k.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        if !is_token(k) || v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(invalid(format!(
                "invalid upstream request: header '{}' has a bad name or value",
                k.escape_debug()
            )));
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        use std::io::Write as _;
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

async fn write_request(io: &mut Io, request: &[u8]) -> std::io::Result<()> {
    io.write_all(request).await?;
    io.flush().await
}

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Chunked transfer coding, in this state.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    /// Read to its end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a size line.
    Size,
    /// This many data bytes remain in the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines up to an empty one.
    Trailers,
}

struct Head {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<u64>,
    framing: Framing,
    reusable: bool,
    /// `Keep-Alive: timeout=N`: how long the upstream keeps the connection idle.
    keep_alive: Option<Duration>,
}

fn protocol(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(UpstreamErrorKind::Protocol, msg)
}

/// Reads more bytes into `conn.buf`; `Ok(0)` at the end of the stream.
async fn fill(conn: &mut Conn, step: usize) -> std::io::Result<usize> {
    if conn.buf.capacity() - conn.buf.len() < step / 4 {
        conn.buf.reserve(step);
    }
    conn.io.read_buf(&mut conn.buf).await
}

async fn read_head(conn: &mut Conn, head_request: bool) -> Result<Head, UpstreamError> {
    loop {
        // Parse what is buffered; read more while the head is incomplete.
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&conn.buf) {
                Ok(httparse::Status::Complete(len)) => Some(interpret(&resp, len, head_request)?),
                Ok(httparse::Status::Partial) => None,
                Err(e) => return Err(protocol(format!("invalid upstream response head: {e}"))),
            }
        };
        match parsed {
            // An interim answer (100 Continue, 103 Early Hints): the real one follows.
            Some((len, None)) => conn.buf.advance(len),
            Some((len, Some(head))) => {
                conn.buf.advance(len);
                return Ok(head);
            }
            None => {
                if conn.buf.len() > MAX_HEAD {
                    return Err(protocol("upstream response head too large"));
                }
                match fill(conn, READ_STEP).await {
                    Ok(0) if conn.buf.is_empty() => {
                        return Err(UpstreamError::new(
                            UpstreamErrorKind::Server,
                            "the upstream closed the connection before a response",
                        ))
                    }
                    Ok(0) => return Err(protocol("the upstream response head was cut short")),
                    Ok(_) => {}
                    Err(_) => return Err(before_response()),
                }
            }
        }
    }
}

/// The head's meaning: its length, and `None` for an interim (1xx) answer.
fn interpret(
    resp: &httparse::Response<'_, '_>,
    len: usize,
    head_request: bool,
) -> Result<(usize, Option<Head>), UpstreamError> {
    let status = resp.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        return Ok((len, None));
    }
    let mut content_type = None;
    let mut retry_after = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    let mut keep_alive = None;
    for h in resp.headers.iter() {
        let value = || std::str::from_utf8(h.value).ok().map(str::trim);
        if h.name.eq_ignore_ascii_case("content-type") {
            content_type = value().map(str::to_owned);
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = value().and_then(|v| v.parse::<u64>().ok());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = value()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| protocol("invalid upstream content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(protocol("conflicting upstream content-length headers"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = value().unwrap_or("");
            chunked = v
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                close = true; // an unknown coding: read to the close
            }
        } else if h.name.eq_ignore_ascii_case("keep-alive") {
            keep_alive = value().and_then(|v| {
                v.split(',').find_map(|p| {
                    let (k, n) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("timeout")
                        .then(|| n.trim().parse::<u64>().ok())
                        .flatten()
                        .map(Duration::from_secs)
                })
            });
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value().unwrap_or("");
            if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                close = true;
            } else if resp.version == Some(0)
                && v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
            {
                close = false;
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if close && length.is_none() {
        Framing::Close
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => {
                close = true;
                Framing::Close
            }
        }
    };
    Ok((
        len,
        Some(Head {
            status,
            content_type,
            retry_after,
            framing,
            reusable: !close && status != 101,
            keep_alive,
        }),
    ))
}

/// A response body being read. Read to its end, its connection goes back to the pool;
/// dropped before, the connection is closed.
pub struct Body {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    keep_alive: Option<Duration>,
    pool: Arc<Pool>,
    origin: Arc<str>,
}

fn cut_short() -> UpstreamError {
    protocol("upstream connection failed mid-body: the body was cut short")
}

impl Body {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            if let Some(data) = step(&mut self.framing, &mut conn.buf)? {
                return Ok(Some(data));
            }
            if self.framing == Framing::Done {
                self.release();
                return Ok(None);
            }
            let want = match self.framing {
                // A large body reads in larger steps (the buffer goes with the answer).
                Framing::Length(n) => usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .clamp(READ_STEP, 64 * 1024),
                _ => READ_STEP,
            };
            match fill(conn, want).await {
                Ok(0) if self.framing == Framing::Close => {
                    self.framing = Framing::Done;
                    self.reusable = false;
                }
                Ok(0) => {
                    self.conn = None;
                    return Err(cut_short());
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Err(protocol(format!(
                        "upstream connection failed mid-body: {e}"
                    )));
                }
            }
        }
    }

    /// The body was read to its end: the connection goes back to the pool when it can
    /// take another request (nothing extra buffered, no `Connection: close`).
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                self.pool.put_back(&self.origin, conn, self.keep_alive);
            }
        }
    }
}

impl Drop for Body {
    /// A body dropped once its data was taken (a stream stops reading at its `[DONE]`)
    /// often has its end already buffered or waiting in the socket: finish it without
    /// waiting, so the connection can be reused; otherwise it is closed.
    fn drop(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if !self.reusable || matches!(self.framing, Framing::Close) {
            return;
        }
        for attempt in 0..2 {
            match step(&mut self.framing, &mut conn.buf) {
                // Unread data: the body was abandoned, not finished.
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if self.framing == Framing::Done => {
                    self.release();
                    return;
                }
                Ok(None) => {}
            }
            // One look at the socket (plain TCP only), without blocking.
            let Io::Plain(tcp) = &conn.io else { return };
            if attempt == 1 {
                return;
            }
            let mut probe = [0u8; 512];
            match tcp.try_read(&mut probe) {
                Ok(n) if n > 0 => conn.buf.extend_from_slice(&probe[..n]),
                _ => return,
            }
        }
    }
}

/// Takes what `buf` holds of the body: data, or progress through the framing (`None`
/// when more bytes are needed or the body is done).
fn step(framing: &mut Framing, buf: &mut BytesMut) -> Result<Option<Bytes>, UpstreamError> {
    loop {
        match *framing {
            Framing::Done => return Ok(None),
            Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(None);
            }
            Framing::Length(n) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                *framing = Framing::Length(n - take as u64);
                return Ok(Some(buf.split_to(take).freeze()));
            }
            Framing::Close => {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(buf.split().freeze()));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > 4096 {
                        return Err(protocol("invalid chunked upstream body: long size line"));
                    }
                    return Ok(None);
                };
                let line = std::str::from_utf8(&buf[..nl])
                    .map_err(|_| protocol("invalid chunked upstream body"))?;
                let hex = line.trim_end_matches('\r');
                let hex = hex.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(hex, 16)
                    .map_err(|_| protocol("invalid chunked upstream body: bad chunk size"))?;
                buf.advance(nl + 1);
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Data(n)) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                let left = n - take as u64;
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Ok(Some(buf.split_to(take).freeze()));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                // CRLF (a bare LF is tolerated).
                match buf.first() {
                    None => return Ok(None),
                    Some(b'\n') => buf.advance(1),
                    Some(b'\r') if buf.len() < 2 => return Ok(None),
                    Some(b'\r') if buf[1] == b'\n' => buf.advance(2),
                    Some(_) => return Err(protocol("invalid chunked upstream body")),
                }
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_HEAD {
                        return Err(protocol("upstream trailers too large"));
                    }
                    return Ok(None);
                };
                let empty = buf[..nl].iter().all(|&b| b == b'\r');
                buf.advance(nl + 1);
                if empty {
                    *framing = Framing::Done;
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn urls_split_into_origin_host_port_and_path() {
        let t = parse_url("https://api.openai.com/v1/chat/completions?x=1").unwrap();
        assert_eq!(
            (t.origin, t.tls, t.authority, t.host, t.port, t.path),
            (
                "https://api.openai.com",
                true,
                "api.openai.com",
                "api.openai.com",
                443,
                "/v1/chat/completions?x=1"
            )
        );
        let t = parse_url("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (t.origin, t.host, t.port, t.path),
            ("http://127.0.0.1:9000", "127.0.0.1", 9000, "/")
        );
        let t = parse_url("http://[::1]:8080/v1#frag").unwrap();
        assert_eq!(
            (t.host, t.port, t.path, t.authority),
            ("::1", 8080, "/v1", "[::1]:8080")
        );
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:99999/").is_err());
        assert!(parse_url("http://user:pw@h/").is_err());
    }

    #[test]
    fn headers_that_could_split_the_request_are_refused() {
        let t = parse_url("http://h/p").unwrap();
        let bad = vec![("x-a".to_owned(), "v\r\nx-b: 1".to_owned())];
        assert!(encode_request("POST", &t, &bad, b"{}").is_err());
        let bad = vec![("x a".to_owned(), "v".to_owned())];
        assert!(encode_request("POST", &t, &bad, b"{}").is_err());
        let ok = vec![
            ("authorization".to_owned(), "Bearer k".to_owned()),
            ("Content-Length".to_owned(), "999".to_owned()),
        ];
        let out = encode_request("POST", &t, &ok, b"{}").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p HTTP/1.1\r\nhost: h\r\nauthorization: Bearer k\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    /// A server that answers each connection's requests with the given raw responses
    /// (one per request, in order), then keeps or closes the connection.
    async fn server(
        answers: Vec<Vec<u8>>,
        close_after: bool,
    ) -> (String, tokio::task::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/x", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let mut accepted = 0;
            let mut answers = answers.into_iter();
            while let Ok((mut s, _)) = l.accept().await {
                accepted += 1;
                let mut buf = vec![0u8; 65536];
                loop {
                    // One request per read is enough for these small requests.
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let Some(a) = answers.next() else {
                        return accepted;
                    };
                    s.write_all(&a).await.unwrap();
                    let says_close = a
                        .windows(17)
                        .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
                    if close_after || says_close {
                        break;
                    }
                }
                if answers.len() == 0 {
                    return accepted;
                }
            }
            accepted
        });
        (url, h)
    }

    fn client() -> Client {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Client::new(
            Arc::new(cfg),
            Duration::from_secs(2),
            Duration::from_secs(30),
            8,
        )
    }

    async fn body_of(mut b: Body) -> Result<Vec<u8>, UpstreamError> {
        let mut out = Vec::new();
        while let Some(c) = b.chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn length_chunked_and_close_framings_and_reuse() {
        let answers = vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
        ];
        let (url, server) = server(answers, false).await;
        let c = client();
        let r = c.send("POST", &url, &[], b"{}").await.unwrap();
        assert_eq!(
            (r.status, r.content_type.as_deref()),
            (200, Some("application/json"))
        );
        assert_eq!(body_of(r.body).await.unwrap(), b"hello");
        let r = c.send("POST", &url, &[], b"{}").await.unwrap();
        assert_eq!((r.status, r.retry_after), (429, Some(7)));
        assert_eq!(body_of(r.body).await.unwrap(), b"abcde");
        let r = c.send("POST", &url, &[], b"{}").await.unwrap();
        assert_eq!(body_of(r.body).await.unwrap(), b"until the end");
        // All three on one connection; the last said close, so it is not pooled.
        assert_eq!(server.await.unwrap(), 1);
        assert!(c.pool.checkout(parse_url(&url).unwrap().origin).0.is_none());
    }

    #[tokio::test]
    async fn an_announced_keep_alive_timeout_shortens_pooling() {
        // timeout=1: pooled for 0 s, so not at all; timeout=5: pooled (for 4 s).
        let short =
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok"
                .to_vec();
        let long =
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let (url, server) = server(vec![short, long.clone(), long], false).await;
        let c = client();
        for _ in 0..3 {
            let r = c.send("POST", &url, &[], b"{}").await.unwrap();
            assert_eq!(body_of(r.body).await.unwrap(), b"ok");
        }
        drop(c);
        // The first answer's connection was not pooled; the second's served the third.
        assert_eq!(server.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_cut_body_is_an_error_and_its_connection_is_not_reused() {
        let answers = vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()];
        let (url, _server) = server(answers, true).await;
        let c = client();
        let r = c.send("POST", &url, &[], b"{}").await.unwrap();
        assert!(body_of(r.body).await.is_err());
        assert!(c.pool.checkout(parse_url(&url).unwrap().origin).0.is_none());
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_by_the_upstream_is_not_used() {
        // Each connection answers once and is closed by the server.
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let (url, server) = server(vec![ok.clone(), ok], true).await;
        let c = client();
        let r = c.send("POST", &url, &[], b"{}").await.unwrap();
        assert_eq!(body_of(r.body).await.unwrap(), b"ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = c.send("POST", &url, &[], b"{}").await.unwrap();
        assert_eq!(body_of(r.body).await.unwrap(), b"ok");
        assert_eq!(server.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_and_garbage_a_protocol_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        let e = client().send("POST", &url, &[], b"{}").await.err().unwrap();
        assert_eq!(e.kind, UpstreamErrorKind::Connect);
        let (url, _s) = server(vec![b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()], true).await;
        let e = client().send("POST", &url, &[], b"{}").await.err().unwrap();
        assert_eq!(e.kind, UpstreamErrorKind::Protocol);
    }

    /// The TLS path end to end (every real vendor is HTTPS): a `localhost` certificate
    /// signed by a test CA (crates/server/src/testdata, made with openssl, valid for a
    /// century), ALPN http/1.1, three answers over one pooled connection.
    #[tokio::test]
    async fn tls_answers_and_its_connection_is_reused() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let cert = CertificateDer::from(include_bytes!("testdata/localhost.crt.der").to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            include_bytes!("testdata/localhost.key.der").to_vec(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        server_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            let mut served = 0;
            while served < 3 {
                let (tcp, _) = l.accept().await.unwrap();
                accepted += 1;
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut buf = vec![0u8; 4096];
                while served < 3 {
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    assert!(buf[..n].starts_with(b"POST /v1/x HTTP/1.1\r\nhost: localhost:"));
                    tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                    served += 1;
                }
            }
            accepted
        });
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(
                include_bytes!("testdata/test-ca.crt.der").to_vec(),
            ))
            .unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let c = Client::new(
            Arc::new(cfg),
            Duration::from_secs(2),
            Duration::from_secs(30),
            8,
        );
        let url = format!("https://localhost:{port}/v1/x");
        for _ in 0..3 {
            let r = c.send("POST", &url, &[], b"{}").await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(body_of(r.body).await.unwrap(), b"ok");
        }
        assert_eq!(
            server.await.unwrap(),
            1,
            "one TLS connection for three requests"
        );
        // A certificate the client does not trust is a connect error, not a hang.
        let untrusting = client();
        let e = untrusting.send("POST", &url, &[], b"{}").await.err();
        assert!(e.is_some());
    }
}
