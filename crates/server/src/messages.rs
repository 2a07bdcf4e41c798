//! `POST /v1/messages`: Anthropic's Messages API inbound, served by any configured
//! provider. The request is translated into the canonical form and follows the same
//! lifecycle as a chat completion; answers, stream events and errors are written in
//! Anthropic's shapes, so tools built for Claude run on GLM, Qwen or DeepSeek.
//!
//! Auth takes a tollgate key as `x-api-key` (anthropic SDK ≤ 1.x) or as a bearer token
//! (anthropic ≥ 2.0). `anthropic-version` is required, as Anthropic requires it; every
//! version is accepted, since the translation does not depend on it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tollgate_core::error::ErrorKind;
use tollgate_core::GatewayError;
use tollgate_providers::anthropic_inbound;

use crate::chat::{complete_routed, decode_json, presented_key, read_body, route_for};
use crate::metering;
use crate::state::AppState;
use crate::wire::Wire;
use crate::RequestId;

/// The handler, as the router calls it.
pub async fn messages(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&state, &rid, &headers, body).await
}

/// The handler's work, errors in Anthropic's shape; `crate::Front` calls it directly.
pub(crate) async fn answer(
    state: &Arc<AppState>,
    rid: &RequestId,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    match handle(state, rid, headers, body).await {
        Ok(r) => r,
        Err(e) => anthropic_error(&e),
    }
}

async fn handle(
    state: &Arc<AppState>,
    rid: &RequestId,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    let key = state.authenticate(presented_key(headers)).await?;
    if headers.get("anthropic-version").is_none() {
        return Err(GatewayError::invalid_request(
            "anthropic-version: header is required",
        ));
    }
    let bytes = read_body(body, state.config.max_body_bytes).await?;
    let value: serde_json::Value = decode_json(&bytes)?;
    let req = anthropic_inbound::request_to_canonical(&value)?;
    req.validate()?;
    // Virtual models route here too (x-tollgate-* headers included).
    let route = route_for(state, &key, &req, headers)?;
    let first = route.first()?;
    let ticket = metering::admit(state, rid, &key, &req, &first).await?;
    let wire = Wire::Anthropic {
        model: req.model.clone(),
    };
    Box::pin(complete_routed(state, rid, &req, None, route, ticket, wire)).await
}

/// An error in Anthropic's shape, with the status its SDK maps to the right exception.
fn anthropic_error(e: &GatewayError) -> Response {
    if e.kind == ErrorKind::Internal {
        tracing::error!(message = %e.message, "internal error");
    }
    let status = StatusCode::from_u16(anthropic_inbound::error_status(e.kind))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(anthropic_inbound::error_body_for(e))).into_response();
    if let Some(secs) = e.retry_after_secs {
        if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert("retry-after", v);
        }
    }
    resp
}
