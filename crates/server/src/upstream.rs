//! The one upstream HTTP client: pooled connections (HTTP/1.1 and HTTP/2 over TLS or
//! plain TCP), with connect, first-byte and idle-between-chunks timeouts. Codecs build
//! the requests; this module only sends them and reads bytes.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_core::{UpstreamError, UpstreamErrorKind};
use tollgate_providers::HttpRequest;

use crate::config::Timeouts;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, Full<Bytes>>,
    pub timeouts: Timeouts,
}

/// A response whose head has arrived.
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<u64>,
    pub body: Incoming,
}

impl Upstream {
    pub fn new(timeouts: Timeouts) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeouts.connect));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls_ring_provider())
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(tls);
        Ok(Upstream { client, timeouts })
    }

    /// Sends `req` and waits for the response head, within the first-byte timeout.
    pub async fn send(&self, req: &HttpRequest) -> Result<UpstreamResponse, UpstreamError> {
        let mut b = hyper::Request::builder().method(req.method).uri(&req.url);
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let request = b
            .body(Full::new(Bytes::from(req.body.clone())))
            .map_err(|e| {
                UpstreamError::new(
                    UpstreamErrorKind::Connect,
                    format!("invalid upstream request: {e}"),
                )
            })?;
        let resp = match tokio::time::timeout(
            self.timeouts.first_byte,
            self.client.request(request),
        )
        .await
        {
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::Timeout,
                    format!(
                        "no response within {} ms",
                        self.timeouts.first_byte.as_millis()
                    ),
                ))
            }
            Ok(Err(e)) => return Err(classify_client_error(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type");
        let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        Ok(UpstreamResponse {
            status,
            content_type,
            retry_after,
            body: resp.into_body(),
        })
    }

    /// The next data frame of a body; `None` at its end. Fails after `idle` of silence.
    pub async fn next_chunk(&self, body: &mut Incoming) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            let frame = match tokio::time::timeout(self.timeouts.idle, body.frame()).await {
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
                Ok(Some(Err(e))) => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Protocol,
                        format!("upstream connection failed mid-body: {e}"),
                    ))
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                return Ok(Some(data));
            }
        }
    }

    /// A whole body, at most `limit` bytes.
    pub async fn read_all(&self, mut body: Incoming, limit: usize) -> Result<Bytes, UpstreamError> {
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

/// Connect failures are safe to retry elsewhere; others may have reached the vendor.
fn classify_client_error(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        let timed_out = format!("{e:?}").contains("ConnectTimeout")
            || std::error::Error::source(e).is_some_and(|s| s.to_string().contains("timed out"));
        let kind = if timed_out {
            UpstreamErrorKind::Timeout
        } else {
            UpstreamErrorKind::Connect
        };
        UpstreamError::new(kind, "could not connect to the upstream")
    } else {
        UpstreamError::new(
            UpstreamErrorKind::Server,
            "the upstream connection failed before a response",
        )
    }
}
