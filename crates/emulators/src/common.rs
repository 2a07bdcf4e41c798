//! What every emulator shares: its state (key, faults, request counter), the
//! `/_emulator/*` control routes, fault application, and streaming helpers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::mpsc;

use crate::faults::Faults;

/// Options an emulator starts with.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The credential the emulator accepts (a bearer key, or `id.secret`, or a
    /// `key:secret` pair, as the vendor's auth needs).
    pub api_key: String,
    /// A second secret for vendors that sign (API secret, SecretKey, Secret Key).
    pub secret_key: String,
    /// An app id, for vendors that need one.
    pub app_id: String,
    /// Faults applied to every request (until replaced at run time).
    pub faults: Faults,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            api_key: "emulator-key".to_owned(),
            secret_key: "emulator-secret".to_owned(),
            app_id: "emulator-app".to_owned(),
            faults: Faults::default(),
        }
    }
}

/// Shared state of one emulator instance.
#[derive(Debug)]
pub struct EmuState {
    pub vendor: &'static str,
    pub opts: EmulatorOptions,
    faults: RwLock<Faults>,
    requests: AtomicU64,
}

/// The faults in force for one request and its sequence number.
#[derive(Debug, Clone)]
pub struct RequestFaults {
    pub faults: Faults,
    /// Whether the error fault (`status` / `rate_limit`) applies to this request.
    pub error: bool,
}

impl EmuState {
    pub fn new(vendor: &'static str, opts: EmulatorOptions) -> Arc<Self> {
        Arc::new(EmuState {
            vendor,
            faults: RwLock::new(opts.faults.clone()),
            opts,
            requests: AtomicU64::new(0),
        })
    }

    /// Counts the request and picks its faults: the `x-emulator-fault` header wins over
    /// the instance's faults. A malformed header is the test's bug: a plain 400.
    #[allow(clippy::result_large_err)] // the Err is the response to send; it is rare
    pub fn begin(&self, headers: &HeaderMap) -> Result<RequestFaults, Response> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let faults = match headers.get("x-emulator-fault").map(HeaderValue::to_str) {
            Some(Ok(spec)) => Faults::parse(spec).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("bad x-emulator-fault: {e}"),
                )
                    .into_response()
            })?,
            Some(Err(_)) => {
                return Err((StatusCode::BAD_REQUEST, "bad x-emulator-fault").into_response())
            }
            None => self.faults.read().map(|f| f.clone()).unwrap_or_default(),
        };
        let error = faults.errs_on(n);
        Ok(RequestFaults { faults, error })
    }

    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Routes every emulator serves besides the vendor's API:
/// `POST /_emulator/faults` (body: a fault spec) replaces the faults,
/// `DELETE /_emulator/faults` clears them, `GET /_emulator/stats` counts requests.
pub fn control_routes(state: Arc<EmuState>) -> Router {
    Router::new()
        .route("/_emulator/faults", post(set_faults).delete(clear_faults))
        .route("/_emulator/stats", get(stats))
        .with_state(state)
}

async fn set_faults(State(s): State<Arc<EmuState>>, body: String) -> Response {
    match Faults::parse(&body) {
        Ok(f) => {
            if let Ok(mut g) = s.faults.write() {
                *g = f;
            }
            s.requests.store(0, Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn clear_faults(State(s): State<Arc<EmuState>>) -> StatusCode {
    if let Ok(mut g) = s.faults.write() {
        *g = Faults::default();
    }
    StatusCode::NO_CONTENT
}

async fn stats(State(s): State<Arc<EmuState>>) -> Response {
    axum::Json(serde_json::json!({"vendor": s.vendor, "requests": s.request_count()}))
        .into_response()
}

/// Sleeps for the configured latency, if any.
pub async fn apply_latency(f: &Faults) {
    if let Some(d) = f.latency {
        tokio::time::sleep(d).await;
    }
}

/// A JSON response with an exact Content-Type (some SDKs compare it with `==`).
pub fn json_response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    r
}

/// One item of a stream the emulator writes.
pub enum Piece {
    /// Bytes to write.
    Bytes(Bytes),
    /// Abort the connection here, without a proper end.
    Abort,
}

/// A streaming response fed by a task: pieces are written with `interval` between
/// them; when the client goes away the task stops at the next piece.
pub fn stream_response(
    content_type: &'static str,
    first_delay: Option<Duration>,
    interval: Option<Duration>,
    pieces: Vec<Piece>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        if let Some(d) = first_delay {
            tokio::time::sleep(d).await;
        }
        for (i, p) in pieces.into_iter().enumerate() {
            if i > 0 {
                if let Some(d) = interval {
                    tokio::time::sleep(d).await;
                }
            }
            let item = match p {
                Piece::Bytes(b) => Ok(b),
                Piece::Abort => {
                    // Let what was sent reach the wire before the connection is cut.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Err(std::io::Error::other("emulated disconnect"))
                }
            };
            let abort = item.is_err();
            if tx.send(item).await.is_err() || abort {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

/// Reads a bearer token from `Authorization`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Like the vendors' front ends: small writes go out at once (TCP_NODELAY).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
