//! `POST /v1/chat/completions`: the request lifecycle.
//!
//! accept (body limit) → authenticate → decode (unknown fields kept) → validate →
//! resolve the model → check the key may use it → encode with the provider's codec →
//! send through the one upstream client → relay: decode the vendor's answer or stream
//! back into OpenAI's shape, chunk by chunk → report (headers, logs).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tollgate_core::chat::{ChatChunk, ChatRequest, Usage};
use tollgate_core::error::ErrorKind;
use tollgate_core::{GatewayError, UpstreamError};
use tollgate_providers::{DecodeCtx, EncodeCtx, Outbound, StreamDecoder, StreamEvent};
use tollgate_store::KeyRecord;

use crate::error::ApiError;
use crate::state::{AppState, Resolved};
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

/// The handler.
pub async fn chat_completions(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = state.authenticate(presented_key(&headers)).await?;
    let bytes = read_body(body, state.config.max_body_bytes).await?;
    let req: ChatRequest = decode_json(&bytes)?;
    req.validate()?;
    let resolved = state.resolve(&req.model)?;
    authorize(&key, &resolved)?;
    let out = complete(&state, &rid, &req, &resolved).await?;
    Ok(out)
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

/// Calls the upstream and builds the client's response (JSON or SSE).
pub async fn complete(
    state: &Arc<AppState>,
    rid: &RequestId,
    req: &ChatRequest,
    r: &Resolved,
) -> Result<Response, GatewayError> {
    let stream = req.is_stream();
    let now = chrono::Utc::now();
    let ctx = EncodeCtx {
        base_url: &r.provider.cfg.base_url,
        upstream_model: &r.upstream_model,
        credentials: &r.provider.cfg.credentials,
        now,
        stream,
    };
    let outbound = r.provider.codec.encode(req, &ctx)?;
    let dctx = DecodeCtx {
        request_id: rid.0.clone(),
        created: now.timestamp(),
        model: r.model.clone(),
    };
    let http = match outbound {
        Outbound::Http(h) => h,
        Outbound::WebSocket(_) => {
            return Err(GatewayError::new(
                ErrorKind::BadGateway,
                "WebSocket upstreams are not supported by this build",
            ))
        }
    };
    let resp = state
        .upstream
        .send(&http)
        .await
        .map_err(|e| upstream_err(r, &e))?;
    if resp.status >= 400 {
        let body = state
            .upstream
            .read_all(resp.body, MAX_UPSTREAM_BODY)
            .await
            .unwrap_or_default();
        let e = r
            .provider
            .codec
            .decode_error(resp.status, &body, resp.retry_after);
        return Err(upstream_err(r, &e));
    }
    if !stream {
        let body = state
            .upstream
            .read_all(resp.body, MAX_UPSTREAM_BODY)
            .await
            .map_err(|e| upstream_err(r, &e))?;
        let out = r
            .provider
            .codec
            .decode(resp.status, &body, &dctx)
            .map_err(|e| upstream_err(r, &e))?;
        let usage = out.usage.clone();
        let json = serde_json::to_vec(&out).map_err(|_| GatewayError::internal())?;
        log_done(rid, r, usage.as_ref(), "ok");
        let mut response = Response::new(Body::from(json));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        add_route_headers(response.headers_mut(), r);
        return Ok(response);
    }
    // Stream: read until the decoder yields its first events, so that an error the vendor
    // reports before any content (including HTTP-200 errors) is still a proper HTTP error.
    let mut decoder = r
        .provider
        .codec
        .stream_decoder(&dctx, resp.content_type.as_deref());
    let mut body = resp.body;
    let mut first = Vec::new();
    let mut ended = false;
    while first.is_empty() {
        match state
            .upstream
            .next_chunk(&mut body)
            .await
            .map_err(|e| upstream_err(r, &e))?
        {
            Some(bytes) => decoder
                .feed(&bytes, &mut first)
                .map_err(|e| upstream_err(r, &e))?,
            None => {
                decoder
                    .finish(&mut first)
                    .map_err(|e| upstream_err(r, &e))?;
                ended = true;
                break;
            }
        }
    }
    if first.is_empty() {
        return Err(upstream_err(
            r,
            &UpstreamError::protocol("the upstream stream was empty"),
        ));
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let relay = Relay {
        state: state.clone(),
        rid: rid.clone(),
        provider: r.provider.cfg.id.clone(),
        model: r.model.clone(),
        wants_usage: req.wants_stream_usage(),
        last: None,
        usage: None,
        done: false,
    };
    tokio::spawn(relay.run(body, decoder, first, ended, tx));
    let mut response = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let h = response.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    add_route_headers(h, r);
    Ok(response)
}

fn add_route_headers(h: &mut HeaderMap, r: &Resolved) {
    if let Ok(v) = HeaderValue::from_str(&r.provider.cfg.id) {
        h.insert("x-tollgate-provider", v);
    }
    if let Ok(v) = HeaderValue::from_str(&r.model) {
        h.insert("x-tollgate-model", v);
    }
}

fn log_done(rid: &RequestId, r: &Resolved, usage: Option<&Usage>, status: &str) {
    tracing::info!(
        request_id = %rid.0,
        provider = %r.provider.cfg.id,
        model = %r.model,
        prompt_tokens = usage.map(|u| u.prompt_tokens),
        completion_tokens = usage.map(|u| u.completion_tokens),
        status,
        "request done"
    );
}

/// Relays one upstream stream to one client.
struct Relay {
    state: Arc<AppState>,
    rid: RequestId,
    provider: String,
    model: String,
    wants_usage: bool,
    /// The last chunk seen: its id/created/model label the usage chunk.
    last: Option<(String, i64, String)>,
    usage: Option<Usage>,
    done: bool,
}

enum Flow {
    Continue,
    ClientGone,
}

impl Relay {
    async fn run(
        mut self,
        mut body: hyper::body::Incoming,
        mut decoder: Box<dyn StreamDecoder>,
        first: Vec<StreamEvent>,
        mut ended: bool,
        tx: mpsc::Sender<Result<Bytes, Infallible>>,
    ) {
        let mut events = first;
        let mut failure: Option<UpstreamError> = None;
        loop {
            if let Flow::ClientGone = self.emit(&mut events, &tx).await {
                self.finish_log("client_disconnected");
                return;
            }
            if ended || self.done || failure.is_some() {
                break;
            }
            let next = tokio::select! {
                _ = tx.closed() => {
                    // The client went away: dropping `body` closes the upstream request now.
                    self.finish_log("client_disconnected");
                    return;
                }
                n = self.state.upstream.next_chunk(&mut body) => n,
            };
            match next {
                Ok(Some(bytes)) => {
                    if let Err(e) = decoder.feed(&bytes, &mut events) {
                        failure = Some(e);
                    }
                }
                Ok(None) => {
                    if let Err(e) = decoder.finish(&mut events) {
                        failure = Some(e);
                    }
                    ended = true;
                }
                Err(e) => failure = Some(e),
            }
        }
        drop(body);
        if failure.is_none() && !self.done {
            failure = Some(UpstreamError::protocol(
                "the upstream stream ended before completion",
            ));
        }
        match failure {
            Some(e) => {
                tracing::warn!(request_id = %self.rid.0, provider = %self.provider, error = %e, "stream failed");
                let ge = e.to_gateway_error(&self.provider);
                let line = format!("data: {}\n\n", ge.to_openai_json());
                let _ = tx.send(Ok(Bytes::from(line))).await;
                self.finish_log("upstream_error");
            }
            None => {
                if self.wants_usage {
                    let (id, created, model) = self.last.clone().unwrap_or_else(|| {
                        (
                            self.rid.0.clone(),
                            chrono::Utc::now().timestamp(),
                            self.model.clone(),
                        )
                    });
                    let chunk = ChatChunk {
                        id,
                        object: "chat.completion.chunk".to_owned(),
                        created,
                        model,
                        choices: Vec::new(),
                        system_fingerprint: None,
                        usage: Some(self.usage.clone().unwrap_or_default()),
                    };
                    if let Ok(json) = serde_json::to_string(&chunk) {
                        let _ = tx.send(Ok(Bytes::from(format!("data: {json}\n\n")))).await;
                    }
                }
                let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                self.finish_log("ok");
            }
        }
    }

    async fn emit(
        &mut self,
        events: &mut Vec<StreamEvent>,
        tx: &mpsc::Sender<Result<Bytes, Infallible>>,
    ) -> Flow {
        for ev in events.drain(..) {
            match ev {
                StreamEvent::Chunk(mut c) => {
                    c.usage = None;
                    self.last = Some((c.id.clone(), c.created, c.model.clone()));
                    let Ok(json) = serde_json::to_vec(&c) else {
                        continue;
                    };
                    let mut line = Vec::with_capacity(json.len() + 8);
                    line.extend_from_slice(b"data: ");
                    line.extend_from_slice(&json);
                    line.extend_from_slice(b"\n\n");
                    if tx.send(Ok(Bytes::from(line))).await.is_err() {
                        return Flow::ClientGone;
                    }
                }
                StreamEvent::Usage(u) => self.usage = Some(u),
                StreamEvent::Done => self.done = true,
            }
        }
        Flow::Continue
    }

    fn finish_log(&self, status: &str) {
        tracing::info!(
            request_id = %self.rid.0,
            provider = %self.provider,
            model = %self.model,
            prompt_tokens = self.usage.as_ref().map(|u| u.prompt_tokens),
            completion_tokens = self.usage.as_ref().map(|u| u.completion_tokens),
            status,
            "stream done"
        );
    }
}

/// `StatusCode` helper for handlers that answer 201.
pub fn created<T: serde::Serialize>(v: &T) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}
