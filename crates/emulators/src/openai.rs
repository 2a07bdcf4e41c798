//! Emulator of OpenAI's Chat Completions API and its dialects (DeepSeek, Moonshot,
//! Mistral): bearer auth, non-stream and SSE answers, tool calls, JSON mode,
//! `stream_options.include_usage`, each dialect's usage placement and error bodies.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::common::{
    apply_latency, bearer, control_routes, json_response, stream_response, EmuState,
    EmulatorOptions, Piece,
};
use crate::text;

/// Which dialect to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    DeepSeek,
    Moonshot,
    Mistral,
}

impl Dialect {
    fn vendor(&self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::DeepSeek => "deepseek",
            Dialect::Moonshot => "moonshot",
            Dialect::Mistral => "mistral",
        }
    }
}

struct Emu {
    state: Arc<EmuState>,
    dialect: Dialect,
}

/// The emulator's routes: `POST /v1/chat/completions` (also without `/v1`, as DeepSeek
/// serves it), `GET /v1/models`, and the `/_emulator/*` control routes.
pub fn router(dialect: Dialect, opts: EmulatorOptions) -> Router {
    let state = EmuState::new(dialect.vendor(), opts);
    let emu = Arc::new(Emu {
        state: state.clone(),
        dialect,
    });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .with_state(emu)
        .merge(control_routes(state))
}

async fn models(State(emu): State<Arc<Emu>>, headers: HeaderMap) -> Response {
    if bearer(&headers) != Some(emu.state.opts.api_key.as_str()) {
        return error(emu.dialect, 401, "Incorrect API key provided", None);
    }
    axum::Json(json!({"object":"list","data":[{"id":"emulated","object":"model","created":0,"owned_by":emu.dialect.vendor()}]}))
        .into_response()
}

/// The vendor-shaped error body for a status.
fn error(dialect: Dialect, status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let (etype, code) = match status {
        400 => ("invalid_request_error", Value::Null),
        401 => ("invalid_request_error", json!("invalid_api_key")),
        402 => ("invalid_request_error", json!("insufficient_balance")),
        403 => ("permission_error", Value::Null),
        404 => ("invalid_request_error", json!("model_not_found")),
        422 => ("invalid_request_error", Value::Null),
        429 => ("requests", json!("rate_limit_exceeded")),
        503 => ("server_error", json!("overloaded")),
        _ => ("server_error", Value::Null),
    };
    let body = match (dialect, status) {
        (Dialect::Mistral, 401) => json!({"message":"Unauthorized","request_id":"emu"}),
        (Dialect::Mistral, _) => {
            json!({"object":"error","message":message,"type":etype,"param":null,"code":code})
        }
        (Dialect::Moonshot, _) => {
            let t = match status {
                401 => "invalid_authentication_error",
                429 => "rate_limit_reached_error",
                404 => "resource_not_found_error",
                503 => "engine_overloaded_error",
                _ => etype,
            };
            json!({"error":{"message":message,"type":t}})
        }
        _ => json!({"error":{"message":message,"type":etype,"param":null,"code":code}}),
    };
    let mut r = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        body.to_string().into_bytes(),
    );
    if let Some(s) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

/// Fields Mistral's API knows; anything else is a 422, as the real API answers.
const MISTRAL_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "safe_prompt",
    "parallel_tool_calls",
    "prediction",
    "prompt_mode",
];

async fn chat(State(emu): State<Arc<Emu>>, headers: HeaderMap, body: Bytes) -> Response {
    let rf = match emu.state.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let d = emu.dialect;
    if bearer(&headers) != Some(emu.state.opts.api_key.as_str()) {
        return error(d, 401, "Incorrect API key provided", None);
    }
    let f = &rf.faults;
    if rf.error {
        apply_latency(f).await;
        if let Some(secs) = f.rate_limit {
            return error(d, 429, "Rate limit reached for requests", Some(secs));
        }
        if let Some(status) = f.status {
            if let Some(b) = &f.body {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "application/json",
                    b.clone().into_bytes(),
                );
            }
            return error(
                d,
                status,
                "The server had an error while processing your request",
                None,
            );
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                d,
                400,
                "We could not parse the JSON body of your request.",
                None,
            )
        }
    };
    if d == Dialect::Mistral {
        if let Some(bad) = req
            .as_object()
            .and_then(|m| m.keys().find(|k| !MISTRAL_FIELDS.contains(&k.as_str())))
        {
            return error(
                d,
                422,
                &format!("Extra inputs are not permitted: body.{bad}"),
                None,
            );
        }
    }
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(d, 400, "'messages' is a required property", None);
    };
    if model.is_empty() {
        return error(d, 400, "you must provide a model parameter", None);
    }
    let answer = Answer::build(d, &model, messages, &req, f.chunks);
    let stream = req["stream"].as_bool().unwrap_or(false);
    if f.malformed {
        apply_latency(f).await;
        if stream {
            return stream_response(
                "text/event-stream",
                None,
                None,
                vec![Piece::Bytes(Bytes::from_static(
                    b"data: {\"id\":\"x\",\"choices\":[{\"delta\"\n\n",
                ))],
            );
        }
        return json_response(
            StatusCode::OK,
            "application/json",
            b"{\"id\":\"x\",\"choices\":[".to_vec(),
        );
    }
    if stream {
        let include_usage = req["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        let pieces =
            answer.stream_pieces(d, include_usage, f.disconnect_after, f.stream_error_after);
        stream_response("text/event-stream", f.latency, f.chunk_interval, pieces)
    } else {
        apply_latency(f).await;
        json_response(
            StatusCode::OK,
            "application/json",
            answer.full_body(d).to_string().into_bytes(),
        )
    }
}

/// A deterministic answer to one request.
struct Answer {
    id: String,
    created: i64,
    model: String,
    content: Option<String>,
    tool_calls: Vec<(String, String, String)>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    finish_reason: &'static str,
}

impl Answer {
    fn build(
        d: Dialect,
        model: &str,
        messages: &[Value],
        req: &Value,
        chunks: Option<u32>,
    ) -> Answer {
        let texts: Vec<String> = messages.iter().map(message_text).collect();
        let prompt_tokens = text::prompt_tokens(texts.iter().map(String::as_str));
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(message_text)
            .unwrap_or_default();
        let last_role = messages
            .last()
            .map(|m| m["role"].as_str().unwrap_or(""))
            .unwrap_or("");
        let tools = req["tools"].as_array().cloned().unwrap_or_default();
        let choice = &req["tool_choice"];
        let mut tool_calls = Vec::new();
        if !tools.is_empty() && choice != "none" && last_role != "tool" {
            let named = choice["function"]["name"].as_str();
            let parallel = req["parallel_tool_calls"].as_bool() != Some(false);
            for (i, t) in tools.iter().enumerate() {
                let name = t["function"]["name"].as_str().unwrap_or("tool");
                if named.is_some_and(|n| n != name) {
                    continue;
                }
                let args = text::example_for_schema(&t["function"]["parameters"]).to_string();
                let id = match d {
                    Dialect::Mistral => format!("abc{:06}", i),
                    _ => format!("call_emu{i}"),
                };
                tool_calls.push((id, name.to_owned(), args));
                if !parallel || named.is_some() || tool_calls.len() == 3 {
                    break;
                }
            }
        }
        let rf = &req["response_format"];
        let content = if !tool_calls.is_empty() {
            None
        } else if rf["type"] == "json_schema" {
            Some(text::example_for_schema(&rf["json_schema"]["schema"]).to_string())
        } else if rf["type"] == "json_object" {
            Some(
                json!({"answer": text::reply_text(d.vendor(), model, &last_user, None)})
                    .to_string(),
            )
        } else {
            Some(text::reply_text(d.vendor(), model, &last_user, chunks))
        };
        let mut completion_tokens = content.as_deref().map(text::count_tokens).unwrap_or(0)
            + tool_calls
                .iter()
                .map(|(_, n, a)| 3 + text::count_tokens(n) + text::count_tokens(a))
                .sum::<u64>();
        let mut finish_reason = if tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        let max = req["max_completion_tokens"]
            .as_u64()
            .or(req["max_tokens"].as_u64());
        let mut content = content;
        if let (Some(max), Some(c)) = (max, content.as_mut()) {
            if completion_tokens > max {
                let keep: String = c.chars().take((max as usize) * 4).collect();
                *c = keep;
                completion_tokens = max;
                finish_reason = "length";
            }
        }
        // Prefix caching, as the vendors do it: everything before the last message is
        // "cached" in 64-token blocks once the conversation has history.
        let history = texts[..texts.len().saturating_sub(1)]
            .iter()
            .map(|t| 4 + text::count_tokens(t))
            .sum::<u64>();
        let cached_tokens = if messages.len() > 1 {
            history / 64 * 64
        } else {
            0
        };
        Answer {
            id: match d {
                Dialect::Mistral => "7f3c0a0e5d2b4c3a9e8f6d5c4b3a2918".to_owned(),
                _ => format!("chatcmpl-emu{}", prompt_tokens),
            },
            created: chrono::Utc::now().timestamp(),
            model: model.to_owned(),
            content,
            tool_calls,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            finish_reason,
        }
    }

    fn usage(&self, d: Dialect) -> Value {
        let mut u = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        });
        match d {
            Dialect::OpenAi => {
                u["prompt_tokens_details"] =
                    json!({"cached_tokens": self.cached_tokens, "audio_tokens": 0});
                u["completion_tokens_details"] = json!({"reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0});
            }
            Dialect::DeepSeek => {
                u["prompt_cache_hit_tokens"] = json!(self.cached_tokens);
                u["prompt_cache_miss_tokens"] = json!(self.prompt_tokens - self.cached_tokens);
                u["prompt_tokens_details"] = json!({"cached_tokens": self.cached_tokens});
            }
            Dialect::Moonshot => {
                if self.cached_tokens > 0 {
                    u["cached_tokens"] = json!(self.cached_tokens);
                }
            }
            Dialect::Mistral => {}
        }
        u
    }

    fn full_body(&self, d: Dialect) -> Value {
        let mut message = json!({"role": "assistant", "content": self.content});
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(
                self.tool_calls
                    .iter()
                    .map(|(id, n, a)| json!({"id": id, "type": "function", "function": {"name": n, "arguments": a}}))
                    .collect(),
            );
        }
        if d == Dialect::OpenAi {
            message["refusal"] = Value::Null;
        }
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": self.finish_reason}],
            "usage": self.usage(d),
            "system_fingerprint": "fp_emulator",
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": "fp_emulator",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }

    fn stream_pieces(
        &self,
        d: Dialect,
        include_usage: bool,
        disconnect_after: Option<u32>,
        error_after: Option<u32>,
    ) -> Vec<Piece> {
        let mut events: Vec<Value> =
            vec![self.chunk(json!({"role": "assistant", "content": ""}), None)];
        if let Some(c) = &self.content {
            for piece in text::split_chunks(c) {
                events.push(self.chunk(json!({"content": piece}), None));
            }
        }
        for (i, (id, name, args)) in self.tool_calls.iter().enumerate() {
            events.push(self.chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            let mid = args
                .char_indices()
                .nth(args.chars().count() / 2)
                .map(|(b, _)| b)
                .unwrap_or(0);
            for part in [&args[..mid], &args[mid..]] {
                events.push(self.chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                    None,
                ));
            }
        }
        let mut last = self.chunk(json!({}), Some(self.finish_reason));
        match d {
            Dialect::Mistral => last["usage"] = self.usage(d),
            Dialect::Moonshot => last["choices"][0]["usage"] = self.usage(d),
            _ => {}
        }
        events.push(last);
        if include_usage && d != Dialect::Mistral {
            let mut u = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": "fp_emulator", "choices": []});
            u["usage"] = self.usage(d);
            events.push(u);
        }
        let mut pieces = Vec::new();
        for (i, mut ev) in events.into_iter().enumerate() {
            if disconnect_after.is_some_and(|n| i as u32 >= n) {
                pieces.push(Piece::Abort);
                return pieces;
            }
            if error_after.is_some_and(|n| i as u32 >= n) {
                let e = json!({"error": {"message": "The server had an error while processing your request", "type": "server_error", "param": null, "code": null}});
                pieces.push(Piece::Bytes(Bytes::from(format!("data: {e}\n\n"))));
                return pieces;
            }
            if (d == Dialect::OpenAi || d == Dialect::DeepSeek) && ev.get("usage").is_none() {
                ev["usage"] = Value::Null;
            }
            pieces.push(Piece::Bytes(Bytes::from(format!("data: {ev}\n\n"))));
        }
        pieces.push(Piece::Bytes(Bytes::from_static(b"data: [DONE]\n\n")));
        pieces
    }
}

fn message_text(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => m["tool_calls"].to_string(),
    }
}
