//! Emulator of Volcengine Ark's chat API (`/api/v3/chat/completions`), where Doubao
//! models are served: bearer API key, OpenAI shapes, `stream_options.include_usage`,
//! Ark's dotted error codes.
//!
//! The Ark SDK spells out about 25 optional fields as `null`: null is read as absent and
//! unknown fields are never refused. `model` must be an inference endpoint id (`ep-`
//! prefix, which the console creates per user: any is accepted) or a model name Ark
//! serves (`doubao-*`, `deepseek-*`); anything else is 404
//! `InvalidEndpointOrModel.NotFound`, as Ark answers for an endpoint it does not know.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::common::{
    apply_latency, bearer, control_routes, json_response, stream_response, EmuState,
    EmulatorOptions, Piece,
};
use crate::reply::{halves, Reply, ReplyOptions};

/// The emulator's routes under `/api/v3`, plus the control routes.
pub fn router(opts: EmulatorOptions) -> Router {
    let state = EmuState::new("doubao", opts);
    Router::new()
        .route("/api/v3/chat/completions", post(chat))
        .with_state(state.clone())
        .merge(control_routes(state))
}

const REQUEST_ID: &str = "021700000000000emulatorark00000000000000000000";

/// Ark's error body.
fn error(
    status: u16,
    code: &str,
    etype: &str,
    message: &str,
    retry_after: Option<u64>,
) -> Response {
    let body = json!({"error": {"code": code, "message": format!("{message} Request id: {REQUEST_ID}"),
        "param": "", "type": etype}});
    let mut r = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        body.to_string().into_bytes(),
    );
    if let Some(s) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        r.headers_mut().insert("retry-after", s);
    }
    r
}

/// The error Ark sends for an HTTP status (the `status=` fault).
fn error_for_status(status: u16) -> Response {
    let (code, etype, msg) = match status {
        400 => (
            "InvalidParameter",
            "BadRequest",
            "A parameter specified in the request is not valid.",
        ),
        401 => (
            "AuthenticationError",
            "Unauthorized",
            "The API key or AK/SK in the request is missing or invalid.",
        ),
        403 => (
            "AccessDenied",
            "Forbidden",
            "The request failed because you do not have access to the requested resource.",
        ),
        404 => (
            "InvalidEndpointOrModel.NotFound",
            "NotFound",
            "The model or endpoint does not exist or you do not have access to it.",
        ),
        429 => (
            "RateLimitExceeded.EndpointRPMExceeded",
            "TooManyRequests",
            "The request failed because you have exceeded the RPM limit of the endpoint.",
        ),
        503 => (
            "ServerOverloaded",
            "TooManyRequests",
            "The service is currently unable to handle additional requests due to server overload.",
        ),
        _ => (
            "InternalServiceError",
            "InternalServiceError",
            "The service encountered an unexpected internal error.",
        ),
    };
    error(status, code, etype, msg, None)
}

fn model_known(m: &str) -> bool {
    m.starts_with("ep-") || m.starts_with("doubao-") || m.starts_with("deepseek-")
}

async fn chat(State(s): State<Arc<EmuState>>, headers: HeaderMap, body: Bytes) -> Response {
    let rf = match s.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if bearer(&headers) != Some(s.opts.api_key.as_str()) {
        return error_for_status(401);
    }
    let f = &rf.faults;
    if rf.error {
        apply_latency(f).await;
        if let Some(secs) = f.rate_limit {
            return error(
                429,
                "RateLimitExceeded.EndpointRPMExceeded",
                "TooManyRequests",
                "The request failed because you have exceeded the RPM limit of the endpoint.",
                Some(secs),
            );
        }
        if let Some(status) = f.status {
            if let Some(b) = &f.body {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "application/json",
                    b.clone().into_bytes(),
                );
            }
            return error_for_status(status);
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                400,
                "InvalidParameter",
                "BadRequest",
                "The request body is not valid JSON.",
                None,
            )
        }
    };
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    if model.is_empty() {
        return error(
            400,
            "MissingParameter",
            "BadRequest",
            "The request failed because it is missing one or multiple required parameters: model.",
            None,
        );
    }
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(400, "MissingParameter", "BadRequest", "The request failed because it is missing one or multiple required parameters: messages.", None);
    };
    if !model_known(&model) {
        return error(
            404,
            "InvalidEndpointOrModel.NotFound",
            "NotFound",
            &format!(
                "The model or endpoint {model} does not exist or you do not have access to it."
            ),
            None,
        );
    }
    let tools = req["tools"].as_array().cloned().unwrap_or_default();
    let max = req["max_completion_tokens"]
        .as_u64()
        .or(req["max_tokens"].as_u64());
    let reply = Reply::build(
        messages,
        &ReplyOptions {
            vendor: "doubao",
            model: &model,
            tools: &tools,
            tool_choice: Some(&req["tool_choice"]),
            max_tokens: max,
            json: matches!(
                req["response_format"]["type"].as_str(),
                Some("json_object" | "json_schema")
            ),
            chunks: f.chunks,
            call_id_prefix: "call_emuark",
        },
    );
    let id = format!("0217{:012}emulator", reply.prompt_tokens);
    let created = chrono::Utc::now().timestamp();
    let usage = json!({"completion_tokens": reply.completion_tokens, "prompt_tokens": reply.prompt_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0}});
    let stream = req["stream"].as_bool().unwrap_or(false);
    if f.malformed {
        apply_latency(f).await;
        if stream {
            return stream_response(
                "text/event-stream",
                None,
                None,
                vec![Piece::Bytes(Bytes::from_static(
                    b"data: {\"choices\":[{\"delta\"\n\n",
                ))],
            );
        }
        return json_response(
            StatusCode::OK,
            "application/json",
            b"{\"choices\":[".to_vec(),
        );
    }
    if !stream {
        apply_latency(f).await;
        let mut message =
            json!({"content": reply.content.clone().unwrap_or_default(), "role": "assistant"});
        if !reply.tool_calls.is_empty() {
            message["tool_calls"] = reply.tool_calls_json(false);
        }
        let body = json!({"choices": [{"finish_reason": reply.finish_reason, "index": 0, "logprobs": null, "message": message}],
            "created": created, "id": id, "model": model, "service_tier": "default", "object": "chat.completion",
            "usage": usage});
        return json_response(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        );
    }
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({"choices": [{"delta": delta, "index": 0, "finish_reason": finish}],
            "created": created, "id": id, "model": model, "service_tier": "default",
            "object": "chat.completion.chunk", "usage": null})
    };
    let mut events = Vec::new();
    for p in reply.pieces() {
        events.push(chunk(json!({"content": p, "role": "assistant"}), None));
    }
    for (i, (cid, name, args)) in reply.tool_calls.iter().enumerate() {
        events.push(chunk(
            json!({"content": "", "role": "assistant", "tool_calls": [{"index": i, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        let (a, b) = halves(args);
        for part in [a, b] {
            events.push(chunk(
                json!({"content": "", "role": "assistant", "tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                None,
            ));
        }
    }
    events.push(chunk(
        json!({"content": "", "role": "assistant"}),
        Some(reply.finish_reason),
    ));
    if include_usage {
        events.push(
            json!({"choices": [], "created": created, "id": id, "model": model,
            "service_tier": "default", "object": "chat.completion.chunk", "usage": usage}),
        );
    }
    let mut pieces = Vec::new();
    let mut ended = true;
    for (i, ev) in events.into_iter().enumerate() {
        if f.disconnect_after.is_some_and(|n| i as u32 >= n) {
            pieces.push(Piece::Abort);
            ended = false;
            break;
        }
        if f.stream_error_after.is_some_and(|n| i as u32 >= n) {
            let e = json!({"error": {"code": "InternalServiceError", "message": format!("The service encountered an unexpected internal error. Request id: {REQUEST_ID}"),
                "param": "", "type": "InternalServiceError"}});
            pieces.push(Piece::Bytes(Bytes::from(format!("data: {e}\n\n"))));
            ended = false;
            break;
        }
        pieces.push(Piece::Bytes(Bytes::from(format!("data: {ev}\n\n"))));
    }
    if ended {
        pieces.push(Piece::Bytes(Bytes::from_static(b"data: [DONE]\n\n")));
    }
    stream_response("text/event-stream", f.latency, f.chunk_interval, pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn post(body: Value) -> (u16, Value) {
        let r = router(EmulatorOptions::default())
            .oneshot(
                Request::post("/api/v3/chat/completions")
                    .header("authorization", "Bearer emulator-key")
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn explicit_nulls_and_unknown_fields_are_fine() {
        let (status, v) = post(
            json!({"model":"ep-20250101000000-x","messages":[{"role":"user","content":"hi"}],
            "stream":null,"max_tokens":null,"tools":null,"tool_choice":null,"thinking":null,
            "stream_options":null,"frequency_penalty":null,"some_future_field":1}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert!(v["usage"]["total_tokens"].as_u64() > Some(0));
    }

    #[tokio::test]
    async fn unknown_model_is_invalid_endpoint() {
        let (status, v) =
            post(json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]})).await;
        assert_eq!(status, 404);
        assert_eq!(v["error"]["code"], "InvalidEndpointOrModel.NotFound");
        assert_eq!(v["error"]["type"], "NotFound");
    }
}
