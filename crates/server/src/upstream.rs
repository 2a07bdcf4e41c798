//! The one upstream client: pooled HTTP/1.1 connections over TLS or plain TCP
//! ([`crate::h1`]) and WebSocket exchanges (iFlytek Spark), with connect, first-byte and
//! idle-between-chunks timeouts, plus the cache of fetched access tokens (ERNIE's OAuth).
//! Codecs build the requests; this module only sends them and reads bytes.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tollgate_core::{UpstreamError, UpstreamErrorKind};
use tollgate_providers::{Codec, Credentials, HttpRequest, WsRequest};

use crate::config::Timeouts;

type HttpClient = crate::h1::Client;

/// How long an idle pooled connection is kept: under the 60 s idle timeout common in
/// load balancers, so that the upstream rarely closes one just as it is reused.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(50);

thread_local! {
    /// Which of [`Upstream`]'s pools this thread uses (see [`set_thread_slot`]).
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tells the upstream client which connection pool the calling thread owns. Each serving
/// thread runs its own event loop; a pooled connection is driven by a task on the loop
/// that opened it, so a thread that used another thread's connections would wake that
/// thread for every read and write (and would break when that loop ends). Threads that
/// never call this share pool 0.
pub fn set_thread_slot(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

/// The pooled clients: one connection pool per serving thread.
#[derive(Clone)]
pub struct Upstream {
    clients: std::sync::Arc<[HttpClient]>,
    tls: std::sync::Arc<rustls::ClientConfig>,
    pub timeouts: Timeouts,
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An upstream body being read: an HTTP body, or the messages of a WebSocket.
pub enum UpstreamBody {
    Http(crate::h1::Body),
    Ws(Box<WsStream>),
}

/// A response whose head has arrived.
pub type UpstreamResponse = crate::h1::Response;

impl Upstream {
    /// A client with `pools` connection pools (one per serving thread, at least one).
    pub fn new(timeouts: Timeouts, pools: usize) -> Result<Self, String> {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let ws_tls = rustls::ClientConfig::builder_with_provider(rustls_ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http_tls = ws_tls.clone();
        http_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http_tls = std::sync::Arc::new(http_tls);
        let clients: Vec<HttpClient> = (0..pools.max(1))
            .map(|_| HttpClient::new(http_tls.clone(), timeouts.connect, POOL_IDLE, 256))
            .collect();
        Ok(Upstream {
            clients: clients.into(),
            tls: std::sync::Arc::new(ws_tls),
            timeouts,
        })
    }

    fn client(&self) -> &HttpClient {
        let slot = SLOT.with(std::cell::Cell::get);
        &self.clients[slot % self.clients.len()]
    }

    /// Opens a WebSocket and sends the request frame. A refused handshake (the vendor's
    /// 401/403) is decoded by the codec.
    pub async fn websocket(
        &self,
        req: &WsRequest,
        codec: &dyn Codec,
    ) -> Result<UpstreamBody, UpstreamError> {
        let mut request = req.url.as_str().into_client_request().map_err(|e| {
            UpstreamError::new(
                UpstreamErrorKind::Connect,
                format!("invalid WebSocket URL: {e}"),
            )
        })?;
        for (k, v) in &req.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                request.headers_mut().insert(name, value);
            }
        }
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
        let limit = self.timeouts.connect + self.timeouts.first_byte;
        let (mut ws, _) = match tokio::time::timeout(limit, connect).await {
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::Timeout,
                    "WebSocket handshake timed out",
                ))
            }
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                return Err(codec.decode_error(status, &body, None));
            }
            Ok(Err(tokio_tungstenite::tungstenite::Error::Io(_))) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::Connect,
                    "could not connect to the upstream",
                ))
            }
            Ok(Err(e)) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::Protocol,
                    format!("WebSocket handshake failed: {e}"),
                ))
            }
            Ok(Ok(x)) => x,
        };
        ws.send(Message::text(req.frame.clone()))
            .await
            .map_err(|e| {
                UpstreamError::new(
                    UpstreamErrorKind::Connect,
                    format!("WebSocket send failed: {e}"),
                )
            })?;
        Ok(UpstreamBody::Ws(Box::new(ws)))
    }

    /// The next piece of an upstream body: HTTP bytes, or one WebSocket message.
    pub async fn next(&self, body: &mut UpstreamBody) -> Result<Option<Bytes>, UpstreamError> {
        match body {
            UpstreamBody::Http(b) => self.next_chunk(b).await,
            UpstreamBody::Ws(ws) => loop {
                let msg = match tokio::time::timeout(self.timeouts.idle, ws.next()).await {
                    Err(_) => {
                        return Err(UpstreamError::new(
                            UpstreamErrorKind::Timeout,
                            format!(
                                "upstream went silent for {} ms",
                                self.timeouts.idle.as_millis()
                            ),
                        ))
                    }
                    Ok(None) => return Ok(None),
                    Ok(Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))) => {
                        return Ok(None)
                    }
                    Ok(Some(Err(e))) => {
                        return Err(UpstreamError::new(
                            UpstreamErrorKind::Protocol,
                            format!("upstream WebSocket failed: {e}"),
                        ))
                    }
                    Ok(Some(Ok(m))) => m,
                };
                match msg {
                    Message::Text(t) => return Ok(Some(Bytes::copy_from_slice(t.as_bytes()))),
                    Message::Binary(b) => return Ok(Some(b)),
                    Message::Close(_) => return Ok(None),
                    _ => continue,
                }
            },
        }
    }

    /// Sends `req` and waits for the response head, within the first-byte timeout.
    pub async fn send(&self, req: &HttpRequest) -> Result<UpstreamResponse, UpstreamError> {
        let sent = self
            .client()
            .send(req.method, &req.url, &req.headers, &req.body);
        match tokio::time::timeout(self.timeouts.first_byte, sent).await {
            Err(_) => Err(UpstreamError::new(
                UpstreamErrorKind::Timeout,
                format!(
                    "no response within {} ms",
                    self.timeouts.first_byte.as_millis()
                ),
            )),
            Ok(r) => r,
        }
    }

    /// The next data of a body; `None` at its end. Fails after `idle` of silence.
    pub async fn next_chunk(
        &self,
        body: &mut crate::h1::Body,
    ) -> Result<Option<Bytes>, UpstreamError> {
        match tokio::time::timeout(self.timeouts.idle, body.chunk()).await {
            Err(_) => Err(UpstreamError::new(
                UpstreamErrorKind::Timeout,
                format!(
                    "upstream went silent for {} ms",
                    self.timeouts.idle.as_millis()
                ),
            )),
            Ok(r) => r,
        }
    }

    /// A whole body, at most `limit` bytes.
    pub async fn read_all(
        &self,
        mut body: crate::h1::Body,
        limit: usize,
    ) -> Result<Bytes, UpstreamError> {
        let mut buf = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut body).await? {
            if buf.len() + chunk.len() > limit {
                return Err(UpstreamError::protocol(format!(
                    "upstream response larger than {limit} bytes"
                )));
            }
            if buf.is_empty() {
                // Most bodies arrive in one frame: avoid a copy.
                if let Some(next) = self.next_chunk(&mut body).await? {
                    buf.extend_from_slice(&chunk);
                    buf.extend_from_slice(&next);
                } else {
                    return Ok(chunk);
                }
            } else {
                buf.extend_from_slice(&chunk);
            }
        }
        Ok(Bytes::from(buf))
    }
}

fn rustls_ring_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Access tokens fetched with a codec's `token_request` (ERNIE's OAuth), per provider,
/// reused until 90% of their announced lifetime has passed.
#[derive(Default)]
pub struct TokenCache {
    tokens: std::sync::Mutex<
        std::collections::HashMap<String, (tollgate_core::Secret, tokio::time::Instant)>,
    >,
    /// One fetch at a time per cache, so a burst does not fetch N tokens.
    fetching: tokio::sync::Mutex<()>,
}

impl TokenCache {
    /// `credentials` with a valid access token when the codec needs one.
    pub async fn credentials(
        &self,
        upstream: &Upstream,
        provider: &str,
        base_url: &str,
        codec: &dyn Codec,
        credentials: &Credentials,
        force_refresh: bool,
    ) -> Result<Credentials, UpstreamError> {
        let Some(req) = codec.token_request(base_url, credentials) else {
            return Ok(credentials.clone());
        };
        // Boxed: only token-based vendors get here, and a fetch (a whole upstream call)
        // would otherwise add its size to every request's future.
        Box::pin(self.fetch(upstream, provider, codec, credentials, req, force_refresh)).await
    }

    async fn fetch(
        &self,
        upstream: &Upstream,
        provider: &str,
        codec: &dyn Codec,
        credentials: &Credentials,
        req: HttpRequest,
        force_refresh: bool,
    ) -> Result<Credentials, UpstreamError> {
        let _guard = self.fetching.lock().await;
        if !force_refresh {
            if let Some(tok) = self.valid(provider) {
                return Ok(Credentials {
                    access_token: Some(tok),
                    ..credentials.clone()
                });
            }
        }
        let resp = upstream.send(&req).await?;
        let status = resp.status;
        let body = upstream.read_all(resp.body, 1024 * 1024).await?;
        let fetched = codec.decode_token(status, &body)?;
        let lifetime = std::time::Duration::from_secs(fetched.expires_in_secs.max(1) * 9 / 10);
        if let Ok(mut m) = self.tokens.lock() {
            m.insert(
                provider.to_owned(),
                (
                    fetched.token.clone(),
                    tokio::time::Instant::now() + lifetime,
                ),
            );
        }
        Ok(Credentials {
            access_token: Some(fetched.token),
            ..credentials.clone()
        })
    }

    fn valid(&self, provider: &str) -> Option<tollgate_core::Secret> {
        let m = self.tokens.lock().ok()?;
        let (tok, until) = m.get(provider)?;
        (tokio::time::Instant::now() < *until).then(|| tok.clone())
    }
}
