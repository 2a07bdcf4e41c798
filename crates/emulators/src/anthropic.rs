//! Emulator of Anthropic's Messages API: `POST /v1/messages` with either auth style
//! (`x-api-key` + `anthropic-version: 2023-06-01`, or `Authorization: Bearer` with a
//! newer version as anthropic ≥ 2.0 sends), required `max_tokens`, the named-event
//! stream, tool use, cache usage and Anthropic's error bodies (529 `overloaded_error`,
//! `event: error` mid-stream).
//!
//! Cache rule (deterministic, so the gateway's cache pricing can be tested): when any
//! block of the request (system, message content or tool) carries `cache_control`, the
//! prompt before the last message counts as a cache read (`cache_read_input_tokens`),
//! and the last message counts as a cache write (`cache_creation_input_tokens`) if it
//! carries `cache_control` itself; `input_tokens` is the rest. Without `cache_control`
//! both are 0.

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
use crate::text;

/// The emulator's routes: `POST /v1/messages` and the `/_emulator/*` control routes.
pub fn router(opts: EmulatorOptions) -> Router {
    let state = EmuState::new("anthropic", opts);
    Router::new()
        .route("/v1/messages", post(messages))
        .with_state(state.clone())
        .merge(control_routes(state))
}

fn request_id(state: &EmuState) -> String {
    format!("req_emu{:020}", state.request_count())
}

/// Anthropic's `error.type` for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

fn error(state: &EmuState, status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let rid = request_id(state);
    let body = json!({"type": "error", "error": {"type": error_type(status), "message": message},
        "request_id": rid});
    let mut r = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        body.to_string().into_bytes(),
    );
    if let Ok(v) = HeaderValue::from_str(&rid) {
        r.headers_mut().insert("request-id", v);
    }
    if let Some(s) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the key and version the way the API does: a missing or wrong key is a 401,
/// a missing or malformed `anthropic-version` a 400. `Some` is the rejection.
fn check_auth(state: &EmuState, headers: &HeaderMap) -> Option<Response> {
    let key = header(headers, "x-api-key").or_else(|| bearer(headers));
    if key != Some(state.opts.api_key.as_str()) {
        return Some(error(state, 401, "invalid x-api-key", None));
    }
    let version = header(headers, "anthropic-version").unwrap_or_default();
    let well_formed = version.len() == 10
        && version.chars().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if version.is_empty() {
        return Some(error(
            state,
            400,
            "anthropic-version: header is required",
            None,
        ));
    }
    if !well_formed || version < "2023-01-01" {
        return Some(error(
            state,
            400,
            &format!("anthropic-version: invalid version '{version}'"),
            None,
        ));
    }
    None
}

async fn messages(State(state): State<Arc<EmuState>>, headers: HeaderMap, body: Bytes) -> Response {
    let rf = match state.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(r) = check_auth(&state, &headers) {
        return r;
    }
    let f = &rf.faults;
    if rf.error {
        apply_latency(f).await;
        if let Some(secs) = f.rate_limit {
            return error(
                &state,
                429,
                "Number of request tokens has exceeded your per-minute rate limit",
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
            let message = match status {
                529 | 503 => "Overloaded",
                _ => "Internal server error",
            };
            return error(&state, status, message, None);
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                &state,
                400,
                "There was an error parsing the body of your request",
                None,
            )
        }
    };
    let answer = match Answer::build(&req, f.chunks) {
        Ok(a) => a,
        Err(msg) => return error(&state, 400, &msg, None),
    };
    let rid = request_id(&state);
    let stream = req["stream"].as_bool().unwrap_or(false);
    let mut resp = if f.malformed {
        apply_latency(f).await;
        if stream {
            stream_response(
                "text/event-stream",
                None,
                None,
                vec![Piece::Bytes(Bytes::from_static(
                    b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\n\n",
                ))],
            )
        } else {
            json_response(
                StatusCode::OK,
                "application/json",
                b"{\"id\":\"msg_".to_vec(),
            )
        }
    } else if stream {
        let pieces = answer.stream_pieces(f.disconnect_after, f.stream_error_after);
        stream_response("text/event-stream", f.latency, f.chunk_interval, pieces)
    } else {
        apply_latency(f).await;
        json_response(
            StatusCode::OK,
            "application/json",
            answer.message(true).to_string().into_bytes(),
        )
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

/// The text of a content value (string or blocks), tool results and inputs included.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b["type"].as_str() {
                Some("text") => b["text"].as_str().unwrap_or_default().to_owned(),
                Some("tool_result") => content_text(&b["content"]),
                Some("tool_use") => b["input"].to_string(),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn has_cache_control(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("cache_control") || m.values().any(has_cache_control),
        Value::Array(a) => a.iter().any(has_cache_control),
        _ => false,
    }
}

/// A deterministic answer to one request.
struct Answer {
    id: String,
    model: String,
    text: Option<String>,
    calls: Vec<(String, String, Value)>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    input_tokens: u64,
    cache_read: u64,
    cache_write: u64,
    output_tokens: u64,
}

impl Answer {
    /// Validates the request as the API does and builds the answer.
    fn build(req: &Value, chunks: Option<u32>) -> Result<Answer, String> {
        let model = req["model"]
            .as_str()
            .filter(|m| !m.is_empty())
            .ok_or("model: Field required")?;
        let max_tokens = match &req["max_tokens"] {
            Value::Null => return Err("max_tokens: Field required".into()),
            v => v
                .as_u64()
                .filter(|n| *n >= 1)
                .ok_or("max_tokens: Input should be a valid positive integer")?,
        };
        let messages = req["messages"]
            .as_array()
            .filter(|m| !m.is_empty())
            .ok_or("messages: Field required")?;
        for (i, m) in messages.iter().enumerate() {
            if !matches!(m["role"].as_str(), Some("user") | Some("assistant")) {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ));
            }
        }
        if let Some(t) = req["temperature"].as_f64() {
            if !(0.0..=1.0).contains(&t) {
                return Err("temperature: range: 0..1".into());
            }
        }
        // Token counts: the system prompt and each message, as text.
        let system = content_text(&req["system"]);
        let texts: Vec<String> = std::iter::once(system.clone())
            .filter(|s| !s.is_empty())
            .chain(messages.iter().map(|m| content_text(&m["content"])))
            .collect();
        let total = text::prompt_tokens(texts.iter().map(String::as_str))
            + req["tools"].as_array().map_or(0, |t| {
                t.iter().map(|t| text::count_tokens(&t.to_string())).sum()
            });
        let (mut cache_read, mut cache_write) = (0, 0);
        if has_cache_control(req) {
            let last = messages.last().unwrap_or(&Value::Null);
            let last_tokens = 4 + text::count_tokens(&content_text(&last["content"]));
            cache_read = total.saturating_sub(last_tokens + 3);
            if has_cache_control(last) {
                cache_write = last_tokens;
            }
        }
        let input_tokens = total.saturating_sub(cache_read + cache_write).max(1);

        let last = messages.last().unwrap_or(&Value::Null);
        let last_is_result = last["role"] == "user"
            && last["content"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"));
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| content_text(&m["content"]))
            .unwrap_or_default();
        let tools = req["tools"].as_array().cloned().unwrap_or_default();
        let choice = &req["tool_choice"];
        // Like the API: every fitting tool may be called in one turn (up to three here),
        // unless a tool is named or `disable_parallel_tool_use` is set.
        let mut calls = Vec::new();
        if !tools.is_empty() && choice["type"] != "none" && !last_is_result {
            let named = choice["name"].as_str();
            let single = named.is_some() || choice["disable_parallel_tool_use"] == true;
            for t in tools
                .iter()
                .filter(|t| named.is_none_or(|n| t["name"] == n))
            {
                let name = t["name"].as_str().unwrap_or("tool").to_owned();
                let input = text::example_for_schema(&t["input_schema"]);
                let id = format!("toolu_emu{:012}{:04}", total, calls.len());
                calls.push((id, name, input));
                if single || calls.len() == 3 {
                    break;
                }
            }
        }
        let mut stop_reason = "end_turn";
        let mut stop_sequence = None;
        let mut text_out = None;
        let mut output_tokens;
        if !calls.is_empty() {
            stop_reason = "tool_use";
            output_tokens = calls
                .iter()
                .map(|(_, name, input)| {
                    3 + text::count_tokens(name) + text::count_tokens(&input.to_string())
                })
                .sum();
        } else {
            let mut t = text::reply_text("anthropic", model, &last_user, chunks);
            for s in req["stop_sequences"].as_array().into_iter().flatten() {
                if let Some(pos) = s.as_str().filter(|s| !s.is_empty()).and_then(|s| t.find(s)) {
                    t.truncate(pos);
                    stop_reason = "stop_sequence";
                    stop_sequence = s.as_str().map(str::to_owned);
                    break;
                }
            }
            output_tokens = text::count_tokens(&t);
            if output_tokens > max_tokens {
                t = t.chars().take((max_tokens as usize) * 4).collect();
                output_tokens = max_tokens;
                stop_reason = "max_tokens";
                stop_sequence = None;
            }
            text_out = Some(t);
        }
        Ok(Answer {
            id: format!("msg_emu{:016}", total),
            model: model.to_owned(),
            text: text_out,
            calls,
            stop_reason,
            stop_sequence,
            input_tokens,
            cache_read,
            cache_write,
            output_tokens: output_tokens.max(1),
        })
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({"input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": output_tokens,
            "service_tier": "standard"})
    }

    /// The Message object; `complete` false gives the empty shell of `message_start`.
    fn message(&self, complete: bool) -> Value {
        let mut content = Vec::new();
        if complete {
            if let Some(t) = &self.text {
                content.push(json!({"type": "text", "text": t}));
            }
            for (id, name, input) in &self.calls {
                content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
            }
        }
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": content,
            "stop_reason": if complete { json!(self.stop_reason) } else { Value::Null },
            "stop_sequence": if complete { json!(self.stop_sequence) } else { Value::Null },
            "usage": self.usage(if complete { self.output_tokens } else { 1 }),
        })
    }

    /// The stream's events, in Anthropic's grammar.
    fn events(&self) -> Vec<(&'static str, Value)> {
        let mut ev = vec![(
            "message_start",
            json!({"type": "message_start", "message": self.message(false)}),
        )];
        ev.push(("ping", json!({"type": "ping"})));
        let mut index = 0;
        if let Some(t) = &self.text {
            ev.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
            ));
            for piece in text::split_chunks(t) {
                ev.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
            ev.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        }
        for (id, name, input) in &self.calls {
            ev.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ));
            let args = input.to_string();
            let mid = args
                .char_indices()
                .nth(args.chars().count() / 2)
                .map(|(b, _)| b)
                .unwrap_or(0);
            for part in ["", &args[..mid], &args[mid..]] {
                ev.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
            ev.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        }
        ev.push((
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                "usage": self.usage(self.output_tokens)}),
        ));
        ev.push(("message_stop", json!({"type": "message_stop"})));
        ev
    }

    fn stream_pieces(&self, disconnect_after: Option<u32>, error_after: Option<u32>) -> Vec<Piece> {
        let mut pieces = Vec::new();
        for (i, (name, data)) in self.events().into_iter().enumerate() {
            if disconnect_after.is_some_and(|n| i as u32 >= n) {
                pieces.push(Piece::Abort);
                return pieces;
            }
            if error_after.is_some_and(|n| i as u32 >= n) {
                let e = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
                pieces.push(Piece::Bytes(Bytes::from(format!(
                    "event: error\ndata: {e}\n\n"
                ))));
                return pieces;
            }
            pieces.push(Piece::Bytes(Bytes::from(format!(
                "event: {name}\ndata: {data}\n\n"
            ))));
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{call, collect};

    fn opts() -> EmulatorOptions {
        EmulatorOptions::default()
    }

    fn post(body: Value, headers: &[(&str, &str)]) -> axum::http::Request<axum::body::Body> {
        let mut b =
            axum::http::Request::post("/v1/messages").header("content-type", "application/json");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::from(body.to_string())).unwrap()
    }

    const OLD: &[(&str, &str)] = &[
        ("x-api-key", "emulator-key"),
        ("anthropic-version", "2023-06-01"),
    ];
    const NEW: &[(&str, &str)] = &[
        ("authorization", "Bearer emulator-key"),
        ("anthropic-version", "2026-10-21"),
    ];

    fn hi() -> Value {
        json!({"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"hi"}]})
    }

    #[tokio::test]
    async fn both_auth_styles_and_auth_errors() {
        for h in [OLD, NEW] {
            let (status, _, body) = call(router(opts()), post(hi(), h)).await;
            assert_eq!(status, 200);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["type"], "message");
            assert_eq!(v["stop_reason"], "end_turn");
        }
        let (status, headers, body) = call(
            router(opts()),
            post(
                hi(),
                &[("x-api-key", "wrong"), ("anthropic-version", "2023-06-01")],
            ),
        )
        .await;
        assert_eq!(status, 401);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["error"],
            json!({"type":"authentication_error","message":"invalid x-api-key"})
        );
        assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
        assert!(headers.contains_key("request-id"));
        let (status, _, body) =
            call(router(opts()), post(hi(), &[("x-api-key", "emulator-key")])).await;
        assert_eq!(status, 400);
        assert!(String::from_utf8_lossy(&body).contains("anthropic-version"));
        let mut no_max = hi();
        no_max.as_object_mut().unwrap().remove("max_tokens");
        let (status, _, body) = call(router(opts()), post(no_max, OLD)).await;
        assert_eq!(status, 400);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    #[tokio::test]
    async fn faults_map_to_anthropic_errors() {
        let mut h = OLD.to_vec();
        h.push(("x-emulator-fault", "status=529"));
        let (status, _, body) = call(router(opts()), post(hi(), &h)).await;
        assert_eq!(status, 529);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        let mut h = OLD.to_vec();
        h.push(("x-emulator-fault", "rate_limit=7"));
        let (status, headers, _) = call(router(opts()), post(hi(), &h)).await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "7");
    }

    #[tokio::test]
    async fn cache_control_reports_cache_usage() {
        let req = json!({"model":"claude","max_tokens":50,
            "system":[{"type":"text","text":"A long reference document. ".repeat(40),"cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":"summarise"}]});
        let (_, _, body) = call(router(opts()), post(req, OLD)).await;
        let u = serde_json::from_slice::<Value>(&body).unwrap()["usage"].clone();
        assert!(u["cache_read_input_tokens"].as_u64().unwrap() > 200, "{u}");
        assert_eq!(u["cache_creation_input_tokens"], 0);
        let (_, _, body) = call(router(opts()), post(hi(), OLD)).await;
        let u = serde_json::from_slice::<Value>(&body).unwrap()["usage"].clone();
        assert_eq!(u["cache_read_input_tokens"], 0);
    }

    #[tokio::test]
    async fn stream_with_tool_use_round_trips_through_the_codec() {
        use tollgate_providers::anthropic::AnthropicCodec;
        use tollgate_providers::{Codec, DecodeCtx};
        let req = json!({"model":"claude","max_tokens":200,"stream":true,
            "messages":[{"role":"user","content":"weather in Paris?"}],
            "tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}]});
        let (status, headers, body) = call(router(opts()), post(req, NEW)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/event-stream");
        let ctx = DecodeCtx {
            request_id: "r".into(),
            created: 1,
            model: "claude".into(),
        };
        let r = collect(
            AnthropicCodec::new().stream_decoder(&ctx, None),
            &body,
            &ctx,
        );
        let call0 = &r.choices[0].message.tool_calls.as_ref().unwrap()[0];
        assert_eq!(call0.function.name, "get_weather");
        assert_eq!(call0.function.arguments, "{\"city\":\"example\"}");
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        assert!(r.usage.unwrap().completion_tokens > 0);
    }

    #[tokio::test]
    async fn stream_error_fault_ends_with_an_error_event() {
        let req = json!({"model":"claude","max_tokens":200,"stream":true,
            "messages":[{"role":"user","content":"hi"}]});
        let mut h = OLD.to_vec();
        h.push(("x-emulator-fault", "stream_error_after=3"));
        let (_, _, body) = call(router(opts()), post(req.clone(), &h)).await;
        let text = String::from_utf8_lossy(&body);
        let (head, last) = text.trim_end().rsplit_once("\n\n").unwrap_or_default();
        assert!(!head.is_empty(), "{text}");
        let data = last
            .strip_prefix("event: error\ndata: ")
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        assert_eq!(
            v,
            json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
            "{text}"
        );
        assert_eq!(text.matches("event: ").count(), 4);
    }
}
