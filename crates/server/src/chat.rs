//! `POST /v1/chat/completions`: the request lifecycle.
//!
//! accept (body limit) → authenticate → decode (unknown fields kept) → validate →
//! resolve the model → check the key may use it → encode with the provider's codec →
//! send through the one upstream client → relay: decode the vendor's answer or stream
//! back into OpenAI's shape, chunk by chunk → report (headers, logs).
//!
//! A virtual model is routed first ([`crate::route`]): its candidates are tried in the
//! plan's order. A retryable failure before the vendor accepted the request (connect
//! error, timeout before the first byte, 429, 5xx, overload codes) moves on to the next
//! candidate after a capped exponential backoff with jitter, within the virtual model's
//! deadline and attempt limit; nothing is retried once the vendor answered 200 (it may
//! bill), so never after a stream's first byte went to the client. A non-retryable
//! error (the request is invalid) returns at once. Every attempt lands in the ledger
//! row's `attempts`; the row's provider/model is the candidate that served.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tollgate_core::chat::{ChatRequest, Usage};
use tollgate_core::error::ErrorKind;
use tollgate_core::{GatewayError, UpstreamError};
use tollgate_providers::{DecodeCtx, EncodeCtx, Outbound, StreamDecoder, StreamEvent};
use tollgate_store::KeyRecord;

use crate::error::ApiError;
use crate::metering::{self, Outcome, Ticket};
use crate::route::{self, Route};
use crate::state::{AppState, Resolved};
use crate::tokens;
use crate::upstream::UpstreamBody;
use crate::wire::{StreamWriter, Wire};
use crate::RequestId;

/// Largest upstream body read for a non-stream answer.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// The presented key: `Authorization: Bearer KEY`, or `x-api-key: KEY`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        return Some(
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
                .trim(),
        );
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Reads a request body, refusing more than `limit` bytes with a 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(GatewayError::new(
                ErrorKind::PayloadTooLarge,
                format!("The request body is larger than the limit of {limit} bytes"),
            )
            .with_code("request_too_large"))
        }
        Err(_) => Err(GatewayError::invalid_request(
            "The request body could not be read",
        )),
    }
}

/// Decodes JSON into `T`, naming the offending field in the error.
pub fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    // The fast path; a body that fails is decoded again to name the field at fault.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            GatewayError::invalid_request(format!(
                "We could not parse the JSON body of your request ({inner}). \
                 The body must be a JSON object."
            ))
            .with_code("invalid_json")
        } else if path == "." || path.is_empty() {
            GatewayError::invalid_request(format!("Invalid request body: {inner}"))
                .with_code("invalid_request_body")
        } else {
            GatewayError::invalid_param(&path, &format!("Invalid value for '{path}': {inner}"))
        }
    })?;
    de.end().map_err(|_| {
        GatewayError::invalid_request("We could not parse the JSON body of your request (trailing characters after the JSON value)")
            .with_code("invalid_json")
    })?;
    Ok(value)
}

/// The handler, as the router calls it.
pub async fn chat_completions(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    handle(&state, &rid, &headers, body).await
}

/// The handler's work; `crate::Front` calls it directly, past the router.
pub async fn handle(
    state: &Arc<AppState>,
    rid: &RequestId,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = state.authenticate(presented_key(headers)).await?;
    let bytes = read_body(body, state.config.max_body_bytes).await?;
    let req: ChatRequest = decode_json(&bytes)?;
    req.validate()?;
    let route = route_for(state, &key, &req, headers)?;
    let first = route.first()?;
    let ticket = metering::admit(state, rid, &key, &req, &first).await?;
    let wire = Wire::OpenAi {
        include_usage: req.wants_stream_usage(),
    };
    // Boxed: the handler's future stays small for the layers that box and move it.
    let raw = Some(&bytes[..]);
    Ok(Box::pin(complete_routed(state, rid, &req, raw, route, ticket, wire)).await?)
}

/// Resolves what the client named: a virtual model is planned (with the routing
/// headers' controls), anything else resolved and authorized as one candidate.
pub fn route_for(
    state: &AppState,
    key: &KeyRecord,
    req: &ChatRequest,
    headers: &HeaderMap,
) -> Result<Route, GatewayError> {
    let controls = route::Controls::from_headers(state, headers)?;
    match state.virtual_models.get(&req.model) {
        Some(vr) => route::plan_virtual(state, vr, key, req, &controls),
        None => {
            let resolved = state.resolve(&req.model)?;
            authorize(key, &resolved)?;
            route::check_direct_cost(state, &resolved, req, &controls)?;
            Ok(Route::direct(resolved))
        }
    }
}

/// 403 when the key may not use the model.
pub fn authorize(key: &KeyRecord, r: &Resolved) -> Result<(), GatewayError> {
    if key.allows(&r.provider.cfg.id, &r.model) {
        Ok(())
    } else {
        Err(GatewayError::new(
            ErrorKind::PermissionDenied,
            format!(
                "This API key may not use the model '{}/{}'",
                r.provider.cfg.id, r.model
            ),
        )
        .with_code("model_not_allowed")
        .with_param("model"))
    }
}

fn upstream_err(r: &Resolved, e: &UpstreamError) -> GatewayError {
    tracing::warn!(provider = %r.provider.cfg.id, model = %r.model, error = %e, "upstream error");
    e.to_gateway_error(&r.provider.cfg.id)
}

/// A failed call: the client's error, and whether the vendor answered 200 first (then it
/// has likely billed the request).
struct Failure {
    error: GatewayError,
    billed: bool,
    /// The vendor refused the credentials: a fetched token may have expired.
    retry_with_new_token: bool,
    /// What the upstream did; `None` when the request could not be encoded for it.
    upstream: Option<tollgate_core::UpstreamErrorKind>,
}

impl Failure {
    fn before_answer(error: GatewayError) -> Self {
        Failure {
            error,
            billed: false,
            retry_with_new_token: false,
            upstream: None,
        }
    }

    /// Whether another candidate may be tried: the vendor did not accept the request,
    /// and the failure was the upstream's (or this vendor could not take the request).
    fn may_fall_back(&self) -> bool {
        !self.billed && self.upstream.is_none_or(|k| k.retryable())
    }
}

/// What the upstream call produced.
enum Answer {
    Full(tollgate_core::ChatResponse),
    /// An OpenAI answer relayed as the vendor wrote it ([`tollgate_providers::Codec::verbatim`]).
    Verbatim(Bytes, tollgate_providers::Verbatim),
    Stream {
        body: UpstreamBody,
        decoder: Box<dyn StreamDecoder>,
        first: Vec<StreamEvent>,
        ended: bool,
    },
}

/// One call, with a token refresh and a second try when a token-based vendor (ERNIE)
/// says the token is invalid or expired.
async fn call(
    state: &Arc<AppState>,
    req: &ChatRequest,
    r: &Resolved,
    dctx: &DecodeCtx,
    raw: Option<&[u8]>,
) -> Result<(Answer, std::time::Duration), Failure> {
    let p = &r.provider;
    let fail = |e: &UpstreamError| Failure {
        upstream: Some(e.kind),
        ..Failure::before_answer(upstream_err(r, e))
    };
    let creds = state
        .tokens
        .credentials(
            &state.upstream,
            &p.cfg.id,
            &p.cfg.base_url,
            p.codec.as_ref(),
            &p.cfg.credentials,
            false,
        )
        .await
        .map_err(|e| fail(&e))?;
    match call_once(state, req, r, dctx, &creds, raw).await {
        Err(f) if f.retry_with_new_token && creds.access_token.is_some() => {
            let creds = state
                .tokens
                .credentials(
                    &state.upstream,
                    &p.cfg.id,
                    &p.cfg.base_url,
                    p.codec.as_ref(),
                    &p.cfg.credentials,
                    true,
                )
                .await
                .map_err(|e| fail(&e))?;
            // The rare second try is boxed so it adds nothing to this future's size.
            Box::pin(call_once(state, req, r, dctx, &creds, raw)).await
        }
        other => other,
    }
}

/// Encodes, sends, and reads the answer (or the stream's first events). `raw`: the
/// client's OpenAI body; with it, an OpenAI vendor's request, answer and stream may pass
/// as written (the `Codec` verbatim methods).
async fn call_once(
    state: &Arc<AppState>,
    req: &ChatRequest,
    r: &Resolved,
    dctx: &DecodeCtx,
    creds: &tollgate_providers::Credentials,
    raw: Option<&[u8]>,
) -> Result<(Answer, std::time::Duration), Failure> {
    // Time to the response head (HTTP) or to the first decoded events (streams and
    // WebSocket exchanges): the TTFT health tracks.
    let t0 = tokio::time::Instant::now();
    let stream = req.is_stream();
    let codec = r.provider.codec.as_ref();
    let ctx = EncodeCtx {
        base_url: &r.provider.cfg.base_url,
        upstream_model: &r.upstream_model,
        credentials: creds,
        now: chrono::Utc::now(),
        stream,
    };
    let outbound = match raw.and_then(|body| codec.encode_verbatim(body, req, &ctx)) {
        Some(o) => o,
        None => codec.encode(req, &ctx).map_err(Failure::before_answer)?,
    };
    let fail = |e: &UpstreamError| Failure {
        error: upstream_err(r, e),
        billed: false,
        retry_with_new_token: e.kind == tollgate_core::UpstreamErrorKind::Auth,
        upstream: Some(e.kind),
    };
    let billed = |e: &UpstreamError| Failure {
        error: upstream_err(r, e),
        billed: true,
        retry_with_new_token: false,
        upstream: Some(e.kind),
    };
    let (mut body, content_type) = match outbound {
        Outbound::Http(http) => {
            let resp = state.upstream.send(&http).await.map_err(|e| fail(&e))?;
            let head = t0.elapsed();
            if resp.status >= 400 {
                let body = state
                    .upstream
                    .read_all(resp.body, MAX_UPSTREAM_BODY)
                    .await
                    .unwrap_or_default();
                return Err(fail(&codec.decode_error(
                    resp.status,
                    &body,
                    resp.retry_after,
                )));
            }
            if !stream {
                // From here the vendor has accepted the request and may bill it.
                let body = state
                    .upstream
                    .read_all(resp.body, MAX_UPSTREAM_BODY)
                    .await
                    .map_err(|e| billed(&e))?;
                if raw.is_some() && resp.status == 200 {
                    if let Some(v) = codec.verbatim(&body) {
                        return Ok((Answer::Verbatim(body, v), head));
                    }
                }
                return match codec.decode(resp.status, &body, dctx) {
                    Ok(out) => Ok((Answer::Full(out), head)),
                    // An error the vendor reports inside a 200 (ERNIE, Hunyuan) was not billed.
                    Err(e) if e.kind != tollgate_core::UpstreamErrorKind::Protocol => Err(fail(&e)),
                    Err(e) => Err(billed(&e)),
                };
            }
            (UpstreamBody::Http(resp.body), resp.content_type)
        }
        // A WebSocket exchange always streams; a non-stream client gets it collected.
        // Boxed: the WebSocket handshake's future is large and only Spark needs it.
        Outbound::WebSocket(ws) => (
            Box::pin(state.upstream.websocket(&ws, codec))
                .await
                .map_err(|e| fail(&e))?,
            None,
        ),
    };
    // Read until the decoder yields its first events, so that an error the vendor reports
    // before any content (including HTTP-200 errors) is still a proper HTTP error.
    // An OpenAI client streaming from OpenAI gets the vendor's chunks as they are.
    let verbatim_decoder = if raw.is_some() && stream {
        codec.verbatim_stream_decoder(dctx)
    } else {
        None
    };
    let mut decoder =
        verbatim_decoder.unwrap_or_else(|| codec.stream_decoder(dctx, content_type.as_deref()));
    let mut first = Vec::new();
    let mut ended = false;
    while first.is_empty() {
        match state
            .upstream
            .next(&mut body)
            .await
            .map_err(|e| billed(&e))?
        {
            Some(bytes) => decoder.feed(&bytes, &mut first).map_err(|e| fail(&e))?,
            None => {
                decoder.finish(&mut first).map_err(|e| fail(&e))?;
                ended = true;
                break;
            }
        }
    }
    if first.is_empty() {
        return Err(fail(&UpstreamError::protocol(
            "the upstream stream was empty",
        )));
    }
    let ttft = t0.elapsed();
    if stream {
        return Ok((
            Answer::Stream {
                body,
                decoder,
                first,
                ended,
            },
            ttft,
        ));
    }
    let mut agg = tollgate_providers::aggregate::Aggregator::new();
    let mut events = first;
    loop {
        for ev in events.drain(..) {
            agg.push(ev);
        }
        if ended || agg.is_done() {
            break;
        }
        match state
            .upstream
            .next(&mut body)
            .await
            .map_err(|e| billed(&e))?
        {
            Some(bytes) => decoder.feed(&bytes, &mut events).map_err(|e| billed(&e))?,
            None => {
                decoder.finish(&mut events).map_err(|e| billed(&e))?;
                ended = true;
            }
        }
    }
    agg.finish(dctx)
        .map(|a| (Answer::Full(a), ttft))
        .map_err(|e| billed(&e))
}

/// The backoff before attempt `n + 1` (n >= 1 attempts made): `backoff * 2^(n-1)`,
/// capped, with "equal jitter" (half fixed, half random) so that clients failing over
/// together spread out.
fn backoff(retry: &crate::config::Retry, n: usize) -> std::time::Duration {
    let base = retry.backoff.as_millis() as u64;
    let exp = base.saturating_mul(1u64 << (n.saturating_sub(1)).min(16));
    let capped = exp.min(retry.backoff_max.as_millis() as u64);
    let half = capped / 2;
    let jitter = if half == 0 {
        0
    } else {
        route::random_u64() % (half + 1)
    };
    std::time::Duration::from_millis(half + jitter)
}

fn attempt_json(
    r: &Resolved,
    outcome: &str,
    error: &GatewayError,
    latency_ms: u128,
) -> serde_json::Value {
    serde_json::json!({
        "provider": r.provider.cfg.id, "model": r.model, "outcome": outcome,
        "http_status": error.kind.http_status(),
        "error": error.code.clone().unwrap_or_default(),
        "message": error.message,
        "latency_ms": latency_ms,
    })
}

/// Tries the route's candidates in order (see the module docs) and answers with the
/// first that serves. `raw`: the client's JSON body, when the client speaks OpenAI's
/// Chat Completions (`None` for other wire formats): with it, an OpenAI vendor is sent
/// that body and its answer or stream is relayed as written (the `Codec` verbatim
/// methods).
pub async fn complete_routed(
    state: &Arc<AppState>,
    rid: &RequestId,
    req: &ChatRequest,
    raw: Option<&[u8]>,
    route: Route,
    mut ticket: Ticket,
    wire: Wire,
) -> Result<Response, GatewayError> {
    let started = tokio::time::Instant::now();
    let max = route.retry.max_attempts as usize;
    let mut tried = 0usize;
    let mut last: Option<GatewayError> = None;
    for (i, (r, verdict)) in route.tries.iter().enumerate() {
        if tried >= max {
            break;
        }
        let name = r.name();
        if i > 0 {
            if tried > 0 {
                let delay = backoff(&route.retry, tried);
                if started.elapsed() + delay > route.retry.deadline {
                    tracing::info!(request_id = %rid.0, "routing deadline reached; no further attempts");
                    break;
                }
                tokio::time::sleep(delay).await;
            }
            if let Err(e) = ticket.retarget(req, r, chrono::Utc::now()) {
                ticket.record_attempt(attempt_json(r, "skipped_budget", &e, 0));
                last = Some(e);
                continue;
            }
        }
        let permit = match state.health.acquire(name) {
            Ok(p) => p,
            Err(why) => {
                let e = GatewayError::new(
                    ErrorKind::Unavailable,
                    format!("The model '{name}' is unavailable: its circuit is open ({why})"),
                )
                .with_code("circuit_open");
                ticket.record_attempt(attempt_json(r, "skipped_circuit_open", &e, 0));
                last = Some(e);
                continue;
            }
        };
        tried += 1;
        if crate::route::has_free_tier(state, r.entry.as_deref(), || name.to_owned()) {
            state.health.free_request(name, chrono::Utc::now());
        }
        let now = chrono::Utc::now();
        let dctx = DecodeCtx {
            request_id: rid.0.clone(),
            created: now.timestamp(),
            model: r.model.clone(),
        };
        let t0 = tokio::time::Instant::now();
        // Boxed: an awaited future is stored in its caller's state (and copied into it),
        // so nesting without a box made this handler's future ~57 KB, memcpy'd by every
        // layer that boxes it. See bench/README.md, session 3.
        match Box::pin(call(state, req, r, &dctx, raw)).await {
            Ok((answer, ttft)) => {
                state.health.success(name, Some(ttft));
                let header = route.header(*verdict, tried);
                return finish(state, rid, r, ticket, answer, header, wire);
            }
            Err(f) => {
                // The breaker counts what says the upstream is unusable: its faults, and
                // credentials it refuses (not retried, but no use calling it again); a
                // request it found invalid says nothing about its health.
                let unusable = |k: tollgate_core::UpstreamErrorKind| {
                    k.retryable()
                        || matches!(
                            k,
                            tollgate_core::UpstreamErrorKind::Auth
                                | tollgate_core::UpstreamErrorKind::PermissionDenied
                        )
                };
                match f.upstream {
                    Some(k) if unusable(k) => state.health.failure(name, &f.error.message),
                    Some(_) => state.health.success(name, None),
                    None => state.health.release(name, permit),
                }
                if f.upstream == Some(tollgate_core::UpstreamErrorKind::RateLimited) {
                    let secs = f.error.retry_after_secs.unwrap_or(60).clamp(1, 86_400);
                    let is_free = r.entry.as_ref().is_some_and(|e| {
                        tollgate_core::routing::free_by_price(e, now)
                            || tollgate_core::routing::has_free_quota(e)
                    });
                    if is_free {
                        state
                            .health
                            .free_throttled(name, now + chrono::Duration::seconds(secs as i64));
                    }
                }
                let more = f.may_fall_back() && i + 1 < route.tries.len() && tried < max;
                if more {
                    tracing::info!(request_id = %rid.0, candidate = %name, error = %f.error.message, "falling back to the next candidate");
                    ticket.record_attempt(attempt_json(
                        r,
                        "upstream_error",
                        &f.error,
                        t0.elapsed().as_millis(),
                    ));
                    last = Some(f.error);
                    continue;
                }
                let status = if f.billed {
                    "upstream_error_after_accept"
                } else {
                    "upstream_error"
                };
                ticket.settle(Outcome {
                    usage: None,
                    completion_estimate: 0,
                    upstream_reached: f.billed,
                    status,
                    http_status: f.error.kind.http_status(),
                    ttft_ms: None,
                })?;
                return Err(f.error);
            }
        }
    }
    let error = last.unwrap_or_else(|| {
        GatewayError::new(ErrorKind::Unavailable, "No candidate could be tried")
            .with_code("no_healthy_candidate")
    });
    ticket.settle(Outcome {
        usage: None,
        completion_estimate: 0,
        upstream_reached: false,
        status: if error.code.as_deref() == Some("circuit_open") {
            "circuit_open"
        } else {
            "upstream_error"
        },
        http_status: error.kind.http_status(),
        ttft_ms: None,
    })?;
    Err(error)
}

/// Settles a served answer and builds the client's response.
#[allow(clippy::too_many_arguments)]
fn finish(
    state: &Arc<AppState>,
    rid: &RequestId,
    r: &Resolved,
    mut ticket: Ticket,
    answer: Answer,
    route_header: Option<String>,
    wire: Wire,
) -> Result<Response, GatewayError> {
    let ttft = Some(ticket.elapsed_ms());
    match answer {
        Answer::Verbatim(body, v) => {
            // Settling does not need them: taken, not copied.
            let rate_headers = std::mem::take(&mut ticket.rate_headers);
            let priced = ticket.settle(Outcome {
                usage: Some(v.usage.clone()),
                completion_estimate: 0,
                upstream_reached: true,
                status: "ok",
                http_status: 200,
                ttft_ms: ttft,
            })?;
            let body = match &priced.cost {
                Some(cost) => Bytes::from(v.with_cost(&body, &cost.to_string())),
                None => body,
            };
            let mut response = Response::new(Body::from(body));
            *response.headers_mut() =
                full_headers(r, route_header.as_deref(), &priced, rate_headers);
            Ok(response)
        }
        Answer::Full(mut out) => {
            // Settling does not need them: taken, not copied.
            let rate_headers = std::mem::take(&mut ticket.rate_headers);
            let priced = ticket.settle(Outcome {
                usage: out.usage.clone(),
                completion_estimate: completion_tokens_of(&out),
                upstream_reached: true,
                status: "ok",
                http_status: 200,
                ttft_ms: ttft,
            })?;
            if let Some(u) = out.usage.as_mut() {
                u.cost = priced.cost.as_ref().map(ToString::to_string);
            }
            let json = wire.full_body(&out)?;
            let mut response = Response::new(Body::from(json));
            *response.headers_mut() =
                full_headers(r, route_header.as_deref(), &priced, rate_headers);
            Ok(response)
        }
        Answer::Stream {
            body,
            decoder,
            first,
            ended,
        } => {
            let headers = stream_headers(r, route_header.as_deref(), &ticket);
            let relay = Relay {
                writer: wire.stream_writer(&rid.0, &r.model, ticket.prompt_estimate()),
                rid: rid.clone(),
                provider: r.provider.cfg.id.clone(),
                model: r.model.clone(),
                usage: None,
                done: false,
                completion_estimate: 0,
                ttft,
                upstream: state.upstream.clone(),
                body: Some(body),
                decoder,
                events: first,
                ended,
                failure: None,
                out: std::collections::VecDeque::new(),
                finished: false,
                ticket: Some(ticket),
            };
            let mut response = Response::new(Body::from_stream(futures_util::stream::unfold(
                relay,
                |mut relay| async move {
                    let bytes = relay.next_bytes().await?;
                    Some((Ok::<_, Infallible>(bytes), relay))
                },
            )));
            *response.headers_mut() = headers;
            Ok(response)
        }
    }
}

/// The head of a non-stream answer (sized once: a map grown insert by insert rehashes).
fn full_headers(
    r: &Resolved,
    route_header: Option<&str>,
    priced: &metering::Priced,
    rate_headers: Vec<(axum::http::HeaderName, HeaderValue)>,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(16);
    h.insert(
        hdr::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_route_headers(&mut h, r);
    if let Some(v) = route_header {
        insert(&mut h, hdr::ROUTE, v);
    }
    if let Some(v) = crate::state::shared_header(priced.header()) {
        h.insert(hdr::COST, v);
    }
    if let Some(c) = priced.converted_header() {
        insert(&mut h, hdr::COST_CONVERTED, &c);
    }
    for (k, v) in rate_headers {
        h.insert(k, v);
    }
    h
}

/// The head of a streamed answer.
fn stream_headers(r: &Resolved, route_header: Option<&str>, ticket: &Ticket) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(16);
    h.insert(
        hdr::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(hdr::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(hdr::X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    add_route_headers(&mut h, r);
    if let Some(v) = route_header {
        insert(&mut h, hdr::ROUTE, v);
    }
    if let Some(max) = &ticket.max_cost {
        insert(&mut h, hdr::COST_MAX, &max.to_string());
    }
    for (k, v) in &ticket.rate_headers {
        h.insert(k.clone(), v.clone());
    }
    h
}

fn insert(h: &mut HeaderMap, name: axum::http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Names of the headers tollgate adds, built once (inserting by `&str` parses the name
/// on every insert).
pub mod hdr {
    use axum::http::HeaderName;

    pub use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
    pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
    pub const PROVIDER: HeaderName = HeaderName::from_static("x-tollgate-provider");
    pub const MODEL: HeaderName = HeaderName::from_static("x-tollgate-model");
    pub const ROUTE: HeaderName = HeaderName::from_static("x-tollgate-route");
    pub const COST: HeaderName = HeaderName::from_static("x-tollgate-cost");
    pub const COST_CONVERTED: HeaderName = HeaderName::from_static("x-tollgate-cost-converted");
    pub const COST_MAX: HeaderName = HeaderName::from_static("x-tollgate-cost-max");
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-tollgate-request-id");
}

/// Completion tokens tollgate counts itself in an answer (used only when the vendor
/// reports no usage).
fn completion_tokens_of(out: &tollgate_core::ChatResponse) -> u64 {
    out.choices
        .iter()
        .map(|c| {
            let m = &c.message;
            tokens::estimate_text(m.content.as_deref().unwrap_or(""))
                + tokens::estimate_text(m.reasoning_content.as_deref().unwrap_or(""))
                + m.tool_calls
                    .iter()
                    .flatten()
                    .map(|t| tokens::estimate_text(&t.function.arguments) + 3)
                    .sum::<u64>()
        })
        .sum()
}

fn add_route_headers(h: &mut HeaderMap, r: &Resolved) {
    // Made once per provider and model (`state::Provider`): a clone shares the bytes.
    if let Some(v) = &r.provider.id_header {
        h.insert(hdr::PROVIDER, v.clone());
    }
    if let Some(v) = &r.model_header {
        h.insert(hdr::MODEL, v.clone());
    }
}

/// Relays one upstream stream to one client, and settles its ticket at the end. It is
/// the response body itself: hyper asks it for the next bytes when the client's socket
/// takes more, so the upstream is read only as fast as the client reads (no task, no
/// channel per stream). A client that goes away drops it: [`Drop`] records the row.
struct Relay {
    /// Writes the client's wire format.
    writer: Box<dyn StreamWriter>,
    rid: RequestId,
    provider: String,
    model: String,
    usage: Option<Usage>,
    done: bool,
    /// Tokens of the content relayed so far (for a stream cut before the vendor's usage).
    completion_estimate: u64,
    ticket: Option<Ticket>,
    ttft: Option<i64>,
    upstream: crate::upstream::Upstream,
    /// The upstream body; `None` once it is finished with.
    body: Option<UpstreamBody>,
    decoder: Box<dyn StreamDecoder>,
    /// Decoded events not yet written.
    events: Vec<StreamEvent>,
    /// The upstream body ended.
    ended: bool,
    failure: Option<UpstreamError>,
    /// Bytes ready for the client.
    out: std::collections::VecDeque<Bytes>,
    /// The closing bytes are in `out`: nothing follows them.
    finished: bool,
}

impl Relay {
    /// The next bytes for the client; `None` after the closing bytes.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some(b);
            }
            if self.finished {
                return None;
            }
            // Events first: usage may arrive in the same read as the end.
            if !self.events.is_empty() {
                self.emit();
                continue;
            }
            if self.ended || self.done || self.failure.is_some() {
                self.close();
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                self.ended = true;
                continue;
            };
            match self.upstream.next(body).await {
                Ok(Some(bytes)) => {
                    if let Err(e) = self.decoder.feed(&bytes, &mut self.events) {
                        self.failure = Some(e);
                    }
                }
                Ok(None) => {
                    if let Err(e) = self.decoder.finish(&mut self.events) {
                        self.failure = Some(e);
                    }
                    self.ended = true;
                }
                Err(e) => self.failure = Some(e),
            }
        }
    }

    /// Settles the row and queues the closing bytes. The row is written before the
    /// closing bytes go out: a client that saw the end of the stream is in the ledger.
    fn close(&mut self) {
        // Done with the upstream: a finished body returns its connection to the pool.
        self.body = None;
        if self.failure.is_none() && !self.done {
            self.failure = Some(UpstreamError::protocol(
                "the upstream stream ended before completion",
            ));
        }
        let closing = match self.failure.take() {
            Some(e) => {
                tracing::warn!(request_id = %self.rid.0, provider = %self.provider, error = %e, "stream failed");
                self.settle("upstream_cut", 200);
                self.writer.error(&e.to_gateway_error(&self.provider))
            }
            None => match self.settle("ok", 200) {
                Some(Ok(priced)) => self.writer.finish(&priced),
                Some(Err(ge)) => self.writer.error(&ge),
                None => Vec::new(),
            },
        };
        self.out.extend(closing);
        self.finished = true;
    }

    /// Settles the ticket once; `None` if it was settled already.
    fn settle(
        &mut self,
        status: &'static str,
        http_status: u16,
    ) -> Option<Result<metering::Priced, GatewayError>> {
        let ticket = self.ticket.take()?;
        let r = ticket.settle(Outcome {
            usage: self.usage.clone(),
            completion_estimate: self.completion_estimate,
            upstream_reached: true,
            status,
            http_status,
            ttft_ms: self.ttft,
        });
        tracing::debug!(
            request_id = %self.rid.0,
            provider = %self.provider,
            model = %self.model,
            prompt_tokens = self.usage.as_ref().map(|u| u.prompt_tokens),
            completion_tokens = self.usage.as_ref().map(|u| u.completion_tokens),
            status,
            "stream done"
        );
        Some(r)
    }

    /// Turns the decoded events into the client's bytes, counting what they carry.
    fn emit(&mut self) {
        for ev in self.events.drain(..) {
            match &ev {
                StreamEvent::Chunk(c) => {
                    for ch in &c.choices {
                        let d = &ch.delta;
                        self.completion_estimate +=
                            tokens::estimate_text(d.content.as_deref().unwrap_or(""))
                                + tokens::estimate_text(
                                    d.reasoning_content.as_deref().unwrap_or(""),
                                );
                        for tc in d.tool_calls.iter().flatten() {
                            if let Some(f) = &tc.function {
                                self.completion_estimate +=
                                    tokens::estimate_text(f.arguments.as_deref().unwrap_or(""));
                            }
                        }
                    }
                }
                StreamEvent::Verbatim(c) => {
                    self.completion_estimate += tokens::estimate_text(&c.text);
                    if let Some(v) = &c.usage {
                        self.usage = Some(v.usage.clone());
                    }
                }
                StreamEvent::Usage(u) => self.usage = Some(u.clone()),
                StreamEvent::Done => self.done = true,
            }
            self.out.extend(self.writer.event(&ev));
        }
    }
}

impl Drop for Relay {
    /// The client went away before the end (hyper drops the body): the upstream
    /// request is closed with it, and the row records what was relayed.
    fn drop(&mut self) {
        if self.ticket.is_some() {
            self.body = None;
            self.settle("client_disconnected", 499);
        }
    }
}

/// `StatusCode` helper for handlers that answer 201.
pub fn created<T: serde::Serialize>(v: &T) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}
