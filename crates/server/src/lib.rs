//! The gateway: HTTP routes, authentication, the upstream client, the streaming relay
//! and the admin API. The only crate that speaks HTTP.
//!
//! # Layout
//! - [`config`]: the TOML config, parsed ([`config::RawConfig`]) then validated ([`Config`]).
//! - [`state`]: [`AppState`]: providers, the model index, the key cache.
//! - [`chat`]: `POST /v1/chat/completions`, the request lifecycle from accept to relay.
//! - [`messages`]: `POST /v1/messages`, Anthropic's API inbound, on the same lifecycle;
//!   [`wire`] writes answers and streams in either API's shape.
//! - [`metering`]: admission (rate limits, budget reservation) and settlement (cost,
//!   ledger row) of one request; [`budget`], [`limits`] and [`tokens`] do the parts.
//! - [`route`]: virtual models: candidates, per-request controls, the plan with health
//!   signals (the decision itself is `tollgate_core::routing`).
//! - [`health`]: circuit breakers, TTFT EWMAs and free-tier usage per upstream model.
//! - [`ledger`]: rows appended to the journal on the request path, and the importer thread.
//! - [`admin`]: `/admin/keys` and `/admin/health` (admin key required).
//! - [`api`]: `GET /v1/prices` and `GET /admin/usage`; [`reports`] builds the usage tables.
//! - [`upstream`]: the one pooled upstream client with its timeouts.
//! - [`error`]: the one mapping from errors to HTTP responses.
//! - [`window`]: a sliding minute in 100 ms buckets (rate limits, free-tier counters).
//!
//! [`app`] builds the router (tests drive it with `oneshot`); [`run`] serves it on a
//! listener until a shutdown future resolves, then drains in-flight requests.

pub mod admin;
pub mod api;
pub mod budget;
pub mod chat;
pub mod config;
pub mod error;
pub mod h1;
pub mod health;
pub mod ledger;
pub mod limits;
pub mod messages;
pub mod metering;
pub mod metrics;
pub mod reports;
pub mod route;
pub mod state;
pub mod tokens;
pub mod upstream;
pub mod window;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use config::Config;
pub use state::{AppState, Stores};

use crate::error::ApiError;

/// `map[key]`, created with `new` on first use; a key already there costs no allocation
/// (`HashMap::entry` needs an owned key on every call). For the per-request counters.
/// A hash map for the gateway's own keys (model ids, key ids, budget and limit scopes:
/// names from the config and the key store, never a client's bytes): FxHash, several
/// times cheaper than std's SipHash on these short strings, and looked up about twenty
/// times a request. Maps keyed by what a client sends (the key cache: hashes of presented
/// keys, unknown ones included) keep std's randomly seeded SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

pub(crate) fn slot<'a, V>(
    map: &'a mut FastMap<String, V>,
    key: &str,
    new: impl FnOnce() -> V,
) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), new());
    }
    map.get_mut(key)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

/// The id of one request, on every response as `x-tollgate-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The low 16 bits of the process id, read once (`std::process::id` is a system call).
static PID16: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn next_request_id() -> RequestId {
    let ms = chrono::Utc::now().timestamp_millis();
    let seq = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = *PID16.get_or_init(|| std::process::id() & 0xffff);
    let mut id = String::with_capacity(32);
    id.push_str("req_");
    push_hex(&mut id, ms as u64, 12);
    push_hex(&mut id, u64::from(pid), 4);
    push_hex(&mut id, seq, 8);
    RequestId(id)
}

/// `v` in lowercase hex, zero-padded to at least `min_digits` (what `{v:0Nx}` writes),
/// without the formatting machinery: request ids are made per request.
fn push_hex(out: &mut String, v: u64, min_digits: u32) {
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(min_digits);
    for i in (0..digits).rev() {
        let nibble = ((v >> (4 * i)) & 0xf) as u8;
        out.push(char::from(if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        }));
    }
}

async fn request_id(mut req: Request, next: Next) -> Response {
    let rid = next_request_id();
    req.extensions_mut().insert(rid.clone());
    let resp = next.run(req).await;
    with_request_id(resp, &rid)
}

fn with_request_id(mut resp: Response, rid: &RequestId) -> Response {
    if let Ok(v) = HeaderValue::from_str(&rid.0) {
        resp.headers_mut().insert(chat::hdr::REQUEST_ID, v);
    }
    resp
}

/// The service each connection runs: `POST /v1/chat/completions` (and `/chat/completions`,
/// `/v1/messages`) go straight to their handlers, everything else through the [`app`]
/// router. The same handlers either way, with the same request id header; the direct
/// call skips what the router costs per request on the hot routes (path matching, the
/// middleware's boxed `Next`, the extensions map for the request id, a copy of the
/// header map for the extractor, more boxed futures): 6,300 of the 132,700 instructions
/// a request cost (callgrind; bench/README.md, "Session 5").
#[derive(Clone)]
struct Front {
    state: Arc<AppState>,
    router: Router,
}

/// The hot routes [`Front`] answers without the router.
#[derive(Clone, Copy)]
enum Hot {
    Chat,
    Messages,
}

impl Hot {
    fn of(method: &axum::http::Method, path: &str) -> Option<Hot> {
        if method != axum::http::Method::POST {
            return None;
        }
        match path {
            "/v1/chat/completions" | "/chat/completions" => Some(Hot::Chat),
            "/v1/messages" => Some(Hot::Messages),
            _ => None,
        }
    }
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Front {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        match Hot::of(req.method(), req.uri().path()) {
            Some(hot) => {
                let state = self.state.clone();
                Box::pin(async move {
                    let rid = next_request_id();
                    let (parts, body) = req.into_parts();
                    let body = axum::body::Body::new(body);
                    let resp = match hot {
                        Hot::Chat => chat::handle(&state, &rid, &parts.headers, body)
                            .await
                            .unwrap_or_else(IntoResponse::into_response),
                        Hot::Messages => messages::answer(&state, &rid, &parts.headers, body).await,
                    };
                    Ok(with_request_id(resp, &rid))
                })
            }
            None => {
                use tower::ServiceExt;
                let router = self.router.clone();
                Box::pin(async move { router.oneshot(req.map(axum::body::Body::new)).await })
            }
        }
    }
}

/// The router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/chat/completions", post(chat::chat_completions))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/models", get(models))
        .route("/v1/prices", get(api::prices))
        .route("/admin/usage", get(api::usage))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/admin/keys", get(admin::list_keys).post(admin::create_key))
        .route("/admin/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/admin/health", get(admin::health))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// `GET /metrics`: Prometheus text format (no key: scrape it from inside your network).
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let body = state
        .metrics
        .render(&state.health.snapshot(chrono::Utc::now()));
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /v1/models`: the models this key may use, as `provider/model`.
async fn models(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let key = state.authenticate(chat::presented_key(&headers)).await?;
    let mut data = Vec::new();
    for (id, p) in &state.providers {
        for m in &p.models {
            if key.allows(id, m) {
                data.push(serde_json::json!({
                    "id": format!("{id}/{m}"),
                    "object": "model",
                    "created": 0,
                    "owned_by": p.cfg.kind.as_str(),
                }));
            }
        }
    }
    Ok(axum::Json(serde_json::json!({"object": "list", "data": data})).into_response())
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests and streams finish for up to the configured grace period.
///
/// The connections are served by `config.threads` threads, each running its own
/// single-threaded event loop (thread per core, as nginx runs a worker process per
/// core): a connection, its request, the upstream call on that thread's own connection
/// pool and the ledger append all stay on one thread, so serving a request wakes no
/// other thread. Every thread accepts from the same listening socket, then hands the
/// connection to the thread serving the fewest connections (`Balancer`): left to the
/// kernel, the first thread to wake takes a whole burst of new connections (wrk's 20
/// paced connections all landed on one thread, and each burst of their requests then
/// queued behind one core while the other idled).
///
/// Connections are served by hyper directly (HTTP/1.1, and HTTP/2 with prior knowledge,
/// h2c) rather than through `axum::serve`, to bound what each connection may hold: a
/// 64 KiB read buffer, 30 s to send the request head (a slow-loris client cannot hold a
/// connection open), TCP_NODELAY so small answers and stream events leave at once.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let threads = state.config.threads.max(1);
    let grace = state.config.shutdown_grace;
    let listener = listener.into_std()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut done = Vec::with_capacity(threads);
    let mut inboxes = Vec::with_capacity(threads);
    let mut senders = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        inboxes.push(rx);
    }
    let balancer = Arc::new(Balancer::new(senders));
    for (slot, inbox) in inboxes.into_iter().enumerate() {
        let listener = listener.try_clone()?;
        let state = state.clone();
        let balancer = balancer.clone();
        let mut stop = stop_rx.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("tollgate-http-{slot}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        upstream::set_thread_slot(slot);
                        rt.block_on(async move {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            let stop = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            let here = Here {
                                slot,
                                inbox,
                                balancer,
                            };
                            serve_loop(listener, here, state, stop).await
                        })
                    });
                let _ = done_tx.send(result);
            })?;
        done.push(done_rx);
    }
    drop(listener);
    let outcome = |r: Result<std::io::Result<()>, _>| match r {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other("a serving thread panicked")),
    };
    let mut result = Ok(());
    // Until the shutdown signal, or until a serving thread stops on its own (it cannot
    // build its event loop, or it panicked): then everything stops, rather than serving
    // on with part of the threads.
    let early = {
        let any = futures_util::future::select_all(done.iter_mut());
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => None,
            (r, i, _) = any => Some((i, r)),
        }
    };
    match early {
        None => tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: draining in-flight requests"
        ),
        Some((i, r)) => {
            let e = outcome(r).err().unwrap_or_else(|| {
                std::io::Error::other("a serving thread stopped before the shutdown")
            });
            tracing::error!(thread = i, error = %e, "a serving thread stopped; shutting down");
            done.remove(i);
            result = Err(e);
        }
    }
    let _ = stop_tx.send(true);
    for d in done {
        if let Err(e) = outcome(d.await) {
            result = Err(e);
        }
    }
    result
}

/// Spreads connections over the serving threads: each accepted connection goes to the
/// thread serving the fewest (the accepting thread on a tie, so nothing moves when the
/// threads are even). Moving a connection costs one channel send and a wake of its new
/// thread, once per connection, not per request.
struct Balancer {
    /// Connections open on each thread.
    open: Vec<std::sync::atomic::AtomicUsize>,
    /// Each thread's inbox for connections accepted elsewhere.
    inbox: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, Held)>>,
}

impl Balancer {
    fn new(
        inbox: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, Held)>>,
    ) -> Balancer {
        Balancer {
            open: inbox
                .iter()
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
            inbox,
        }
    }

    /// Picks the thread to serve a connection accepted on thread `here` and counts the
    /// connection there at once (so a burst of accepts spreads, rather than all going
    /// to the thread that looked idle before any of them arrived).
    fn pick(self: &Arc<Self>, here: usize) -> Held {
        let mut best = here;
        let mut least = self.open[here].load(Ordering::Relaxed);
        for (i, n) in self.open.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n < least {
                best = i;
                least = n;
            }
        }
        self.open[best].fetch_add(1, Ordering::Relaxed);
        Held {
            balancer: self.clone(),
            slot: best,
        }
    }
}

/// One open connection on a thread, counted by the [`Balancer`].
struct Held {
    balancer: Arc<Balancer>,
    slot: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.balancer.open[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a serving thread knows of itself and its peers.
struct Here {
    slot: usize,
    inbox: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, Held)>,
    balancer: Arc<Balancer>,
}

/// One serving thread's accept loop, on its own event loop.
async fn serve_loop(
    listener: tokio::net::TcpListener,
    mut here: Here,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let grace = state.config.shutdown_grace;
    let front = Front {
        router: app(state.clone()),
        state,
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, held) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let held = here.balancer.pick(here.slot);
                    if held.slot == here.slot {
                        (stream, held)
                    } else {
                        // Handed over: the other thread registers it with its own loop.
                        // Should that thread be gone (shutting down), the connection
                        // closes, as one still in the backlog would.
                        if let Ok(stream) = stream.into_std() {
                            let _ = here.balancer.inbox[held.slot].send((stream, held));
                        }
                        continue;
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            Some((stream, held)) = here.inbox.recv() => {
                match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => (stream, held),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not take over a connection");
                        continue;
                    }
                }
            }
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), front.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
            drop(held);
        });
    }
    drop(listener);
    here.inbox.close();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
    Ok(())
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn hex_is_what_format_writes() {
        for v in [
            0u64,
            1,
            0xf,
            0x10,
            0xabc,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ] {
            for min in [4u32, 8, 12] {
                let mut s = String::new();
                super::push_hex(&mut s, v, min);
                assert_eq!(s, format!("{v:0width$x}", width = min as usize));
            }
        }
        let id = super::next_request_id().0;
        assert!(id.starts_with("req_") && id.len() == 28, "{id}");
    }
}

#[cfg(test)]
mod balancer_tests {
    use super::*;

    fn balancer(threads: usize) -> Arc<Balancer> {
        let senders = (0..threads)
            .map(|_| tokio::sync::mpsc::unbounded_channel().0)
            .collect();
        Arc::new(Balancer::new(senders))
    }

    fn open(b: &Balancer) -> Vec<usize> {
        b.open.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn a_burst_accepted_on_one_thread_is_spread_over_all() {
        let b = balancer(3);
        // Twenty connections accepted back to back by thread 0, before any is served:
        // each is counted where it goes at once, so the burst spreads evenly.
        let held: Vec<Held> = (0..20).map(|_| b.pick(0)).collect();
        assert_eq!(open(&b), [7, 7, 6]);
        // Ties stay on the accepting thread (nothing is handed over needlessly).
        assert_eq!(held[0].slot, 0);
        drop(held);
        assert_eq!(open(&b), [0, 0, 0]);
        assert_eq!(b.pick(2).slot, 2);
    }

    #[test]
    fn new_connections_go_where_fewest_are_open() {
        let b = balancer(2);
        let mut on_0: Vec<Held> = (0..4).map(|_| b.pick(0)).collect();
        assert_eq!(open(&b), [2, 2]);
        // Thread 1's connections close; the next ones go to it, whoever accepts them.
        let (_kept, gone): (Vec<Held>, Vec<Held>) = on_0.drain(..).partition(|h| h.slot == 0);
        drop(gone);
        assert_eq!(open(&b), [2, 0]);
        assert_eq!(b.pick(0).slot, 1);
        let h = b.pick(0);
        assert_eq!(h.slot, 1);
        assert_eq!(open(&b), [2, 1]);
    }
}
