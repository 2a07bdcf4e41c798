//! Emulator of Alibaba's DashScope: the native generation API
//! (`/api/v1/services/aigc/{text,multimodal}-generation/generation`) and the
//! OpenAI-compatible mode (`/compatible-mode/v1/chat/completions`).
//!
//! Native API, as `dashscope==2.0.2` expects it:
//! - bearer key; a wrong one is 401 `{"code":"InvalidApiKey","message":"Invalid
//!   API-key provided.","request_id"}` (the 1.x SDK returns it, the 2.0 one raises);
//! - body `{"model","input":{"messages"|"prompt"},"parameters":{..}}`; a stream is asked
//!   for with `X-DashScope-SSE: enable` (or `Accept: text/event-stream`), never a body
//!   field; `result_format:"message"` answers `output.choices[]`, anything else the old
//!   `output.text` + `output.finish_reason`;
//! - stream events `id:N` / `event:result` / `:HTTP_STATUS/200` / `data:{..}` with no
//!   space after the colons, under `text/event-stream;charset=UTF-8` (the SDK requires
//!   the type); `finish_reason` is the string `"null"` until the last event; each event
//!   carries the usage so far; with `incremental_output:true` each event has only the
//!   new text, otherwise the whole text so far; no `[DONE]`;
//! - an error inside a stream is `event:error` (no space: the SDK compares the rest of the
//!   line with `"error"`) with a flat body;
//! - models must look like DashScope's (`qwen*`, `qwq*`, `qvq*`, `deepseek*`), else 400
//!   `InvalidParameter` "Model not exist.".
//!
//! Compatible mode speaks OpenAI's protocol (usage chunk with `include_usage`,
//! `data: [DONE]`) with DashScope's error bodies (`invalid_api_key`,
//! `model_not_found`, ... plus `request_id`).

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
use crate::text;

/// The emulator's routes (native and compatible), plus the control routes.
pub fn router(opts: EmulatorOptions) -> Router {
    let state = EmuState::new("dashscope", opts);
    Router::new()
        .route(
            "/api/v1/services/aigc/text-generation/generation",
            post(text_generation),
        )
        .route(
            "/api/v1/services/aigc/multimodal-generation/generation",
            post(multimodal_generation),
        )
        .route("/compatible-mode/v1/chat/completions", post(compatible))
        .with_state(state.clone())
        .merge(control_routes(state))
}

const REQUEST_ID: &str = "7f2b0e1c-emul-9a3d-dash-scope00000001";
const SSE: &str = "text/event-stream;charset=UTF-8";

fn with_retry_after(mut r: Response, retry_after: Option<u64>) -> Response {
    if let Some(s) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        r.headers_mut().insert("retry-after", s);
    }
    r
}

/// A native error: flat `{"code","message","request_id"}`.
fn native_error(status: u16, code: &str, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({"code": code, "message": message, "request_id": REQUEST_ID});
    with_retry_after(
        json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "application/json",
            body.to_string().into_bytes(),
        ),
        retry_after,
    )
}

fn native_code(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("InvalidParameter", "The parameters are not valid."),
        401 => ("InvalidApiKey", "Invalid API-key provided."),
        403 => ("AccessDenied", "Access denied."),
        404 => ("ModelNotFound", "Model can not be found."),
        429 => (
            "Throttling.RateQuota",
            "Requests rate limit exceeded, please try again later.",
        ),
        503 => ("ServiceUnavailable", "The service is unavailable."),
        _ => (
            "InternalError",
            "An internal error has occured, please try again later or contact service support.",
        ),
    }
}

/// A compatible-mode error: OpenAI's body plus `request_id`.
fn compat_error(status: u16, code: &str, message: &str, retry_after: Option<u64>) -> Response {
    let etype = match status {
        400 | 401 | 404 => "invalid_request_error",
        429 => "limit_requests",
        _ => "internal_error",
    };
    let body = json!({"error": {"message": message, "type": etype, "param": null, "code": code},
        "request_id": REQUEST_ID});
    with_retry_after(
        json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "application/json",
            body.to_string().into_bytes(),
        ),
        retry_after,
    )
}

fn compat_code(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_parameter_error", "The parameters are not valid."),
        401 => ("invalid_api_key", "Incorrect API key provided. "),
        403 => ("access_denied", "Access denied."),
        404 => (
            "model_not_found",
            "The model does not exist or you do not have access to it.",
        ),
        429 => (
            "limit_requests",
            "Requests rate limit exceeded, please try again later.",
        ),
        _ => (
            "internal_error",
            "An internal error has occured, please try again later or contact service support.",
        ),
    }
}

fn model_known(m: &str) -> bool {
    ["qwen", "qwq", "qvq", "deepseek"]
        .iter()
        .any(|p| m.starts_with(p))
}

/// Which API a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Text,
    Multimodal,
}

async fn text_generation(s: State<Arc<EmuState>>, h: HeaderMap, b: Bytes) -> Response {
    native(s, h, b, Api::Text).await
}

async fn multimodal_generation(s: State<Arc<EmuState>>, h: HeaderMap, b: Bytes) -> Response {
    native(s, h, b, Api::Multimodal).await
}

async fn native(
    State(s): State<Arc<EmuState>>,
    headers: HeaderMap,
    body: Bytes,
    api: Api,
) -> Response {
    let rf = match s.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if bearer(&headers) != Some(s.opts.api_key.as_str()) {
        let (code, msg) = native_code(401);
        return native_error(401, code, msg, None);
    }
    let f = &rf.faults;
    if rf.error {
        apply_latency(f).await;
        if let Some(secs) = f.rate_limit {
            let (code, msg) = native_code(429);
            return native_error(429, code, msg, Some(secs));
        }
        if let Some(status) = f.status {
            if let Some(b) = &f.body {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "application/json",
                    b.clone().into_bytes(),
                );
            }
            let (code, msg) = native_code(status);
            return native_error(status, code, msg, None);
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return native_error(
                400,
                "InvalidParameter",
                "The request body is not valid JSON.",
                None,
            )
        }
    };
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    if model.is_empty() {
        return native_error(400, "InvalidParameter", "Model not specified.", None);
    }
    let messages: Vec<Value> = match (&req["input"]["messages"], &req["input"]["prompt"]) {
        (Value::Array(m), _) if !m.is_empty() => m.clone(),
        (_, Value::String(p)) => vec![json!({"role": "user", "content": p})],
        _ => {
            return native_error(
                400,
                "InvalidParameter",
                "Field required: input.messages",
                None,
            )
        }
    };
    if !model_known(&model) {
        return native_error(400, "InvalidParameter", "Model not exist.", None);
    }
    let p = &req["parameters"];
    let tools = p["tools"].as_array().cloned().unwrap_or_default();
    let reply = Reply::build(
        &messages,
        &ReplyOptions {
            vendor: "dashscope",
            model: &model,
            tools: &tools,
            tool_choice: Some(&p["tool_choice"]),
            max_tokens: p["max_tokens"].as_u64(),
            json: p["response_format"]["type"] == "json_object",
            chunks: f.chunks,
            call_id_prefix: "call_emuds",
        },
    );
    let as_message = p["result_format"] == "message";
    let incremental = p["incremental_output"].as_bool().unwrap_or(false);
    let header_is = |name: &str, needle: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains(needle))
    };
    let stream = header_is("x-dashscope-sse", "enable") || header_is("accept", "text/event-stream");
    let r = Render {
        reply: &reply,
        as_message,
        multimodal: api == Api::Multimodal,
    };
    if f.malformed {
        apply_latency(f).await;
        if stream {
            return stream_response(
                SSE,
                None,
                None,
                vec![Piece::Bytes(Bytes::from_static(
                    b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[\n\n",
                ))],
            );
        }
        return json_response(StatusCode::OK, "application/json", b"{\"output\":".to_vec());
    }
    if !stream {
        apply_latency(f).await;
        let content = reply.content.clone().unwrap_or_default();
        let body = r.event(&content, true, reply.completion_tokens, true);
        return json_response(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        );
    }
    // (text of this event, whether it is the last, output tokens so far, tool calls)
    let mut events: Vec<Value> = Vec::new();
    let mut so_far = String::new();
    let pieces = reply.pieces();
    for (i, piece) in pieces.iter().enumerate() {
        so_far.push_str(piece);
        let last = i + 1 == pieces.len();
        let text = if incremental {
            piece.as_str()
        } else {
            so_far.as_str()
        };
        let tokens = if last {
            reply.completion_tokens
        } else {
            text::count_tokens(&so_far)
        };
        events.push(r.event(text, last, tokens, false));
    }
    if !reply.tool_calls.is_empty() {
        if incremental {
            for (i, (id, name, args)) in reply.tool_calls.iter().enumerate() {
                let (a, b) = halves(args);
                let frags = [
                    json!({"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}),
                    json!({"index": i, "id": "", "type": "function", "function": {"arguments": a}}),
                    json!({"index": i, "id": "", "type": "function", "function": {"arguments": b}}),
                ];
                let n = frags.len();
                for (j, frag) in frags.into_iter().enumerate() {
                    let last = j + 1 == n;
                    let mut ev = r.event(
                        "",
                        last,
                        if last {
                            reply.completion_tokens
                        } else {
                            1 + j as u64
                        },
                        false,
                    );
                    ev["output"]["choices"][0]["message"]["tool_calls"] = json!([frag]);
                    events.push(ev);
                }
            }
        } else {
            let mut ev = r.event("", true, reply.completion_tokens, false);
            ev["output"]["choices"][0]["message"]["tool_calls"] = reply.tool_calls_json(true);
            events.push(ev);
        }
    }
    let mut out = Vec::new();
    for (i, ev) in events.into_iter().enumerate() {
        let n = i + 1;
        if f.disconnect_after.is_some_and(|k| i as u32 >= k) {
            out.push(Piece::Abort);
            break;
        }
        if f.stream_error_after.is_some_and(|k| i as u32 >= k) {
            let (code, msg) = native_code(500);
            let e = json!({"code": code, "message": msg, "request_id": REQUEST_ID});
            out.push(Piece::Bytes(Bytes::from(format!(
                "id:{n}\nevent:error\n:HTTP_STATUS/500\ndata:{e}\n\n"
            ))));
            break;
        }
        out.push(Piece::Bytes(Bytes::from(format!(
            "id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{ev}\n\n"
        ))));
    }
    stream_response(SSE, f.latency, f.chunk_interval, out)
}

/// Renders native events and bodies.
struct Render<'a> {
    reply: &'a Reply,
    as_message: bool,
    multimodal: bool,
}

impl Render<'_> {
    /// One event (or the whole body): `text`, finished or not, with usage so far.
    fn event(&self, text: &str, last: bool, output_tokens: u64, whole: bool) -> Value {
        let reply = self.reply;
        let finish = if last { reply.finish_reason } else { "null" };
        let mut usage = json!({"input_tokens": reply.prompt_tokens, "output_tokens": output_tokens,
            "total_tokens": reply.prompt_tokens + output_tokens});
        if reply.cached_tokens > 0 {
            usage["prompt_tokens_details"] = json!({"cached_tokens": reply.cached_tokens});
        }
        let output = if self.as_message || self.multimodal {
            let content = if self.multimodal {
                json!([{"text": text}])
            } else {
                json!(text)
            };
            let mut message = json!({"role": "assistant", "content": content});
            if whole && !reply.tool_calls.is_empty() {
                message["tool_calls"] = reply.tool_calls_json(true);
            }
            json!({"choices": [{"finish_reason": finish, "message": message}]})
        } else {
            json!({"text": text, "finish_reason": finish})
        };
        json!({"output": output, "usage": usage, "request_id": REQUEST_ID})
    }
}

async fn compatible(State(s): State<Arc<EmuState>>, headers: HeaderMap, body: Bytes) -> Response {
    let rf = match s.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if bearer(&headers) != Some(s.opts.api_key.as_str()) {
        let (code, msg) = compat_code(401);
        return compat_error(401, code, msg, None);
    }
    let f = &rf.faults;
    if rf.error {
        apply_latency(f).await;
        if let Some(secs) = f.rate_limit {
            let (code, msg) = compat_code(429);
            return compat_error(429, code, msg, Some(secs));
        }
        if let Some(status) = f.status {
            if let Some(b) = &f.body {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "application/json",
                    b.clone().into_bytes(),
                );
            }
            let (code, msg) = compat_code(status);
            return compat_error(status, code, msg, None);
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return compat_error(
                400,
                "invalid_parameter_error",
                "The request body is not valid JSON.",
                None,
            )
        }
    };
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return compat_error(
            400,
            "invalid_parameter_error",
            "messages must not be empty",
            None,
        );
    };
    if !model_known(&model) {
        return compat_error(
            404,
            "model_not_found",
            &format!("The model `{model}` does not exist or you do not have access to it."),
            None,
        );
    }
    let tools = req["tools"].as_array().cloned().unwrap_or_default();
    let reply = Reply::build(
        messages,
        &ReplyOptions {
            vendor: "dashscope",
            model: &model,
            tools: &tools,
            tool_choice: Some(&req["tool_choice"]),
            max_tokens: req["max_completion_tokens"]
                .as_u64()
                .or(req["max_tokens"].as_u64()),
            json: matches!(
                req["response_format"]["type"].as_str(),
                Some("json_object" | "json_schema")
            ),
            chunks: f.chunks,
            call_id_prefix: "call_emuds",
        },
    );
    let id = format!("chatcmpl-7f2b0e1c-emul-{:012}", reply.prompt_tokens);
    let created = chrono::Utc::now().timestamp();
    let usage = json!({"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens}});
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
            json!({"role": "assistant", "content": reply.content.clone().unwrap_or_default()});
        if !reply.tool_calls.is_empty() {
            message["tool_calls"] = reply.tool_calls_json(true);
        }
        let body = json!({"choices": [{"message": message, "finish_reason": reply.finish_reason, "index": 0, "logprobs": null}],
            "object": "chat.completion", "usage": usage, "created": created, "system_fingerprint": null,
            "model": model, "id": id});
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
        json!({"choices": [{"delta": delta, "finish_reason": finish, "index": 0, "logprobs": null}],
            "object": "chat.completion.chunk", "usage": null, "created": created,
            "system_fingerprint": null, "model": model, "id": id})
    };
    let mut events = vec![chunk(json!({"content": "", "role": "assistant"}), None)];
    for p in reply.pieces() {
        events.push(chunk(json!({"content": p}), None));
    }
    for (i, (cid, name, args)) in reply.tool_calls.iter().enumerate() {
        events.push(chunk(json!({"tool_calls": [{"index": i, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
        let (a, b) = halves(args);
        for part in [a, b] {
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                None,
            ));
        }
    }
    events.push(chunk(json!({"content": ""}), Some(reply.finish_reason)));
    if include_usage {
        let mut u = chunk(json!({}), None);
        u["choices"] = json!([]);
        u["usage"] = usage;
        events.push(u);
    }
    let mut out = Vec::new();
    let mut ended = true;
    for (i, ev) in events.into_iter().enumerate() {
        if f.disconnect_after.is_some_and(|k| i as u32 >= k) {
            out.push(Piece::Abort);
            ended = false;
            break;
        }
        if f.stream_error_after.is_some_and(|k| i as u32 >= k) {
            let (code, msg) = compat_code(500);
            let e = json!({"error": {"message": msg, "type": "internal_error", "param": null, "code": code}, "request_id": REQUEST_ID});
            out.push(Piece::Bytes(Bytes::from(format!("data: {e}\n\n"))));
            ended = false;
            break;
        }
        out.push(Piece::Bytes(Bytes::from(format!("data: {ev}\n\n"))));
    }
    if ended {
        out.push(Piece::Bytes(Bytes::from_static(b"data: [DONE]\n\n")));
    }
    stream_response("text/event-stream", f.latency, f.chunk_interval, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn post(path: &str, headers: &[(&str, &str)], body: Value) -> (u16, String, String) {
        let mut b = Request::post(path).header("authorization", "Bearer emulator-key");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = router(EmulatorOptions::default())
            .oneshot(b.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8(bytes.to_vec()).unwrap())
    }

    const GEN: &str = "/api/v1/services/aigc/text-generation/generation";

    #[tokio::test]
    async fn native_stream_framing_is_dashscope_s() {
        let req = json!({"model":"qwen-plus","input":{"messages":[{"role":"user","content":"hi"}]},
            "parameters":{"result_format":"message","incremental_output":true}});
        let (status, ct, body) = post(GEN, &[("x-dashscope-sse", "enable")], req.clone()).await;
        assert_eq!((status, ct.as_str()), (200, SSE));
        assert!(body.starts_with("id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"));
        assert!(!body.contains("[DONE]") && !body.contains("data: "));
        let events: Vec<Value> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(events[0]["output"]["choices"][0]["finish_reason"], "null");
        assert_eq!(
            events.last().unwrap()["output"]["choices"][0]["finish_reason"],
            "stop"
        );
        assert!(events
            .iter()
            .all(|e| e["usage"]["input_tokens"].as_u64() > Some(0)));

        let (_, _, body) = post(
            GEN,
            &[
                ("x-dashscope-sse", "enable"),
                ("x-emulator-fault", "stream_error_after=1"),
            ],
            req,
        )
        .await;
        assert!(body.contains("\nevent:error\n"), "{body}");
    }

    #[tokio::test]
    async fn native_errors_are_flat() {
        let (status, ct, body) = post(
            GEN,
            &[],
            json!({"model":"gpt-4o","input":{"messages":[{"role":"user","content":"hi"}]}}),
        )
        .await;
        assert_eq!((status, ct.as_str()), (400, "application/json"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["code"].as_str(), v["message"].as_str()),
            (Some("InvalidParameter"), Some("Model not exist."))
        );
        let (status, _, body) = post(GEN, &[("x-emulator-fault", "status=429")], json!({})).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status, v["code"].as_str()),
            (429, Some("Throttling.RateQuota"))
        );
    }
}
