//! The OpenAI-compatible endpoints that ERNIE (Qianfan v2), Spark (HTTP API) and Hunyuan
//! serve beside their native APIs: bearer auth, OpenAI request and response shapes, each
//! vendor's quirks (Spark's `code`/`message`/`sid` fields and `data:` without a space),
//! tool calls, and the shared faults.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::common::{apply_latency, bearer, json_response, stream_response, EmuState, Piece};
use crate::text;

/// How one vendor's OpenAI-compatible endpoint differs from OpenAI's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Qianfan v2: OpenAI's shapes; a bad key is 401 `invalid_iam_token`.
    Qianfan,
    /// Spark HTTP: `code`/`message`/`sid` in every body and event; `data:` with no
    /// space; a bad key is 401 `{"error":{"message":"invalid user",...}}`.
    Spark,
    /// Hunyuan: OpenAI's shapes.
    Hunyuan,
}

impl Style {
    fn vendor(&self) -> &'static str {
        match self {
            Style::Qianfan => "qianfan",
            Style::Spark => "spark",
            Style::Hunyuan => "hunyuan",
        }
    }

    fn prefix(&self) -> &'static str {
        match self {
            Style::Spark => "data:",
            _ => "data: ",
        }
    }
}

fn error(style: Style, status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let (etype, code) = match (style, status) {
        (Style::Qianfan, 401) => ("invalid_request_error", json!("invalid_iam_token")),
        (Style::Spark, _) => ("api_error", Value::Null),
        (_, 401) => ("invalid_request_error", json!("invalid_api_key")),
        (_, 429) => ("rate_limit_error", json!("rate_limit_exceeded")),
        (_, 400) => ("invalid_request_error", json!("invalid_argument")),
        _ => ("server_error", json!("internal_error")),
    };
    let body = json!({"error": {"message": message, "type": etype, "param": null, "code": code}});
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

fn message_text(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Serves `POST .../chat/completions` for `style`.
pub async fn chat(state: &EmuState, style: Style, headers: &HeaderMap, body: &Bytes) -> Response {
    let rf = match state.begin(headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let bad_key = match style {
        Style::Spark => "invalid user",
        _ => "Incorrect API key provided",
    };
    if bearer(headers) != Some(state.opts.api_key.as_str()) {
        return error(style, 401, bad_key, None);
    }
    let f = &rf.faults;
    apply_latency(f).await;
    if rf.error {
        if let Some(secs) = f.rate_limit {
            return error(style, 429, "Rate limit reached for requests", Some(secs));
        }
        if let Some(status) = f.status {
            if let Some(b) = &f.body {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "application/json",
                    b.clone().into_bytes(),
                );
            }
            return error(style, status, "emulated upstream error", None);
        }
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error(style, 400, "invalid JSON body", None),
    };
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(style, 400, "messages must not be empty", None);
    };
    if model.is_empty() {
        return error(style, 400, "model is required", None);
    }
    let texts: Vec<String> = messages.iter().map(message_text).collect();
    let prompt = text::prompt_tokens(texts.iter().map(String::as_str));
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(message_text)
        .unwrap_or_default();
    let last_role = messages
        .last()
        .and_then(|m| m["role"].as_str())
        .unwrap_or("");
    let tool = req["tools"]
        .as_array()
        .and_then(|t| t.first())
        .filter(|_| req["tool_choice"] != "none" && last_role != "tool");
    let call = tool.map(|t| {
        let name = t["function"]["name"].as_str().unwrap_or("tool").to_owned();
        let args = text::example_for_schema(&t["function"]["parameters"]).to_string();
        (name, args)
    });
    let content = match call {
        Some(_) => None,
        None => Some(text::reply_text(
            style.vendor(),
            &model,
            &last_user,
            f.chunks,
        )),
    };
    let completion = content.as_deref().map(text::count_tokens).unwrap_or(0)
        + call
            .as_ref()
            .map(|(n, a)| 3 + text::count_tokens(n) + text::count_tokens(a))
            .unwrap_or(0);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let finish = if call.is_some() { "tool_calls" } else { "stop" };
    let id = format!("chatcmpl-{}-{prompt}", style.vendor());
    let created = chrono::Utc::now().timestamp();
    let tool_calls = call.as_ref().map(|(n, a)| {
        json!([{"id": "call_emu0", "type": "function", "function": {"name": n, "arguments": a}}])
    });
    let stream = req["stream"].as_bool().unwrap_or(false);
    if f.malformed {
        if stream {
            return stream_response(
                "text/event-stream",
                None,
                None,
                vec![Piece::Bytes(Bytes::from(format!(
                    "{}{{\"id\":\"x\",\"choices\":[\n\n",
                    style.prefix()
                )))],
            );
        }
        return json_response(StatusCode::OK, "application/json", b"{\"id\":".to_vec());
    }
    let vendor_fields = |v: &mut Value| {
        if style == Style::Spark {
            v["code"] = json!(0);
            v["message"] = json!("Success");
            v["sid"] = json!(id);
        }
    };
    if !stream {
        let mut message = json!({"role": "assistant", "content": content});
        if let Some(tc) = &tool_calls {
            message["tool_calls"] = tc.clone();
        }
        let mut body = json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage});
        vendor_fields(&mut body);
        return json_response(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        );
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        vendor_fields(&mut c);
        c
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for piece in content
        .as_deref()
        .map(text::split_chunks)
        .unwrap_or_default()
    {
        events.push(chunk(json!({"content": piece}), None));
    }
    if let Some(tc) = &tool_calls {
        let mut t = tc.clone();
        t[0]["index"] = json!(0);
        events.push(chunk(json!({"tool_calls": t}), None));
    }
    let mut last = chunk(json!({}), Some(finish));
    last["usage"] = usage;
    events.push(last);
    let mut pieces = Vec::new();
    for (i, ev) in events.into_iter().enumerate() {
        if f.disconnect_after.is_some_and(|n| i as u32 >= n) {
            pieces.push(Piece::Abort);
            return stream_response("text/event-stream", None, f.chunk_interval, pieces);
        }
        if f.stream_error_after.is_some_and(|n| i as u32 >= n) {
            let e = match style {
                Style::Spark => {
                    json!({"code": 10010, "message": "emulated engine error", "sid": id})
                }
                _ => {
                    json!({"error": {"message": "emulated stream error", "type": "server_error", "code": "internal_error"}})
                }
            };
            pieces.push(Piece::Bytes(Bytes::from(format!(
                "{}{e}\n\n",
                style.prefix()
            ))));
            return stream_response("text/event-stream", None, f.chunk_interval, pieces);
        }
        pieces.push(Piece::Bytes(Bytes::from(format!(
            "{}{ev}\n\n",
            style.prefix()
        ))));
    }
    pieces.push(Piece::Bytes(Bytes::from(format!(
        "{}[DONE]\n\n",
        style.prefix()
    ))));
    stream_response("text/event-stream", None, f.chunk_interval, pieces)
}
