//! Emulator of Google's Generative Language API: `POST /{v1beta|v1}/models/{model}:generateContent`
//! and `:streamGenerateContent` (SSE with `alt=sse`, written `data: ` with the space and
//! CRLF; a JSON array without), key in `x-goog-api-key` or `?key=`, function calling,
//! cumulative `usageMetadata` in every stream event, google.rpc error bodies (a bad key
//! is a 400 `API_KEY_INVALID`).
//!
//! Usage rules (deterministic): `cachedContentTokenCount` is reported when the request
//! names a `cachedContent`, as the prompt before the last turn; models whose name
//! contains `pro` or `thinking` report `thoughtsTokenCount` (32 per answer).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::common::{
    apply_latency, control_routes, json_response, stream_response, EmuState, EmulatorOptions, Piece,
};
use crate::text;

const JSON: &str = "application/json; charset=UTF-8";

/// The emulator's routes: both API versions, and the `/_emulator/*` control routes.
pub fn router(opts: EmulatorOptions) -> Router {
    let state = EmuState::new("gemini", opts);
    Router::new()
        .route("/v1beta/models/{action}", post(models_v1beta))
        .route("/v1/models/{action}", post(models_v1))
        .with_state(state.clone())
        .merge(control_routes(state))
}

/// google.rpc's status name for an HTTP status.
fn rpc_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn error_value(status: u16, message: &str, details: Option<Value>) -> Value {
    let mut e = json!({"code": status, "message": message, "status": rpc_status(status)});
    if let Some(d) = details {
        e["details"] = d;
    }
    json!({"error": e})
}

fn error(status: u16, message: &str, details: Option<Value>) -> Response {
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        JSON,
        error_value(status, message, details)
            .to_string()
            .into_bytes(),
    )
}

/// The body Google sends for a wrong key (PROTOCOLS.md §3).
fn bad_key() -> Response {
    error(
        400,
        "API key not valid. Please pass a valid API key.",
        Some(json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID", "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"}}])),
    )
}

async fn models_v1beta(
    state: State<Arc<EmuState>>,
    path: Path<String>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, path, query, headers, body).await
}

async fn models_v1(
    state: State<Arc<EmuState>>,
    path: Path<String>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, path, query, headers, body).await
}

async fn handle(
    State(state): State<Arc<EmuState>>,
    Path(action): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rf = match state.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or(query.get("key").map(String::as_str));
    match key {
        None => {
            return error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                None,
            )
        }
        Some(k) if k != state.opts.api_key => return bad_key(),
        Some(_) => {}
    }
    let Some((model, method)) = action.split_once(':') else {
        return error(404, &format!("models/{action} is not found"), None);
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => {
            return error(
                404,
                &format!("Method {method} is not found for models/{model}"),
                None,
            )
        }
    };
    let sse = query.get("alt").is_some_and(|a| a == "sse");
    let f = &rf.faults;
    if rf.error {
        apply_latency(f).await;
        if let Some(secs) = f.rate_limit {
            return error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                Some(json!([
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}
                ])),
            );
        }
        if let Some(status) = f.status {
            if let Some(b) = &f.body {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    JSON,
                    b.clone().into_bytes(),
                );
            }
            let message = match status {
                503 => "The model is overloaded. Please try again later.",
                429 => "Resource has been exhausted (e.g. check quota).",
                _ => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            };
            return error(status, message, None);
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error(400, "Invalid JSON payload received.", None),
    };
    let answer = match Answer::build(model, &req, f.chunks, state.request_count()) {
        Ok(a) => a,
        Err(msg) => return error(400, &msg, None),
    };
    if f.malformed {
        apply_latency(f).await;
        return if stream && sse {
            stream_response(
                "text/event-stream",
                None,
                None,
                vec![Piece::Bytes(Bytes::from_static(
                    b"data: {\"candidates\": [{\"content\"\r\n\r\n",
                ))],
            )
        } else {
            json_response(StatusCode::OK, JSON, b"{\"candidates\": [".to_vec())
        };
    }
    if !stream {
        apply_latency(f).await;
        return json_response(StatusCode::OK, JSON, answer.full().to_string().into_bytes());
    }
    let events = answer.stream_events();
    let mut pieces = Vec::new();
    let n = events.len();
    for (i, ev) in events.into_iter().enumerate() {
        if f.disconnect_after.is_some_and(|d| i as u32 >= d) {
            pieces.push(Piece::Abort);
            break;
        }
        if f.stream_error_after.is_some_and(|d| i as u32 >= d) {
            let e = error_value(
                503,
                "The model is overloaded. Please try again later.",
                None,
            );
            pieces.push(Piece::Bytes(Bytes::from(if sse {
                format!("data: {e}\r\n\r\n")
            } else {
                format!("{}{e}]", if i == 0 { "[" } else { ",\r\n" })
            })));
            break;
        }
        let text = if sse {
            format!("data: {ev}\r\n\r\n")
        } else {
            let open = if i == 0 { "[" } else { ",\r\n" };
            let close = if i + 1 == n { "]" } else { "" };
            format!("{open}{ev}{close}")
        };
        pieces.push(Piece::Bytes(Bytes::from(text)));
    }
    let ct = if sse { "text/event-stream" } else { JSON };
    let mut r = stream_response(ct, f.latency, f.chunk_interval, pieces);
    r.headers_mut().insert(
        "x-gemini-service-tier",
        HeaderValue::from_static("standard"),
    );
    r
}

/// A request field by its camelCase name, or its snake_case spelling: proto-JSON
/// accepts both, and google-genai sends some fields (`parameters_json_schema`) in
/// snake_case.
fn field<'a>(v: &'a Value, camel: &str) -> &'a Value {
    match v.get(camel) {
        Some(x) => x,
        None => {
            let mut snake = String::with_capacity(camel.len() + 4);
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    snake.push('_');
                    snake.push(c.to_ascii_lowercase());
                } else {
                    snake.push(c);
                }
            }
            v.get(&snake).unwrap_or(&Value::Null)
        }
    }
}

fn parts_text(parts: &Value) -> String {
    parts
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            if let Some(t) = p["text"].as_str() {
                t.to_owned()
            } else if let Some(fc) = Some(field(p, "functionCall")).filter(|x| !x.is_null()) {
                fc.to_string()
            } else if let Some(fr) = Some(field(p, "functionResponse")).filter(|x| !x.is_null()) {
                fr["response"].to_string()
            } else {
                String::new()
            }
        })
        .collect::<Vec<_>>()
        .join("")
}

/// A deterministic answer to one request.
struct Answer {
    model: String,
    response_id: String,
    text: Option<String>,
    calls: Vec<(String, Value)>,
    finish: &'static str,
    prompt: u64,
    candidates: u64,
    thoughts: u64,
    cached: u64,
}

impl Answer {
    fn build(model: &str, req: &Value, chunks: Option<u32>, n: u64) -> Result<Answer, String> {
        let contents = req["contents"]
            .as_array()
            .filter(|c| !c.is_empty())
            .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
        for (i, c) in contents.iter().enumerate() {
            match c["role"].as_str() {
                None | Some("user") | Some("model") => {}
                Some(other) => {
                    return Err(format!(
                        "* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model. Got '{other}'."
                    ))
                }
            }
            if c["parts"].as_array().is_none_or(|p| p.is_empty()) {
                return Err(format!(
                    "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
                ));
            }
        }
        let system = parts_text(&field(req, "systemInstruction")["parts"]);
        let texts: Vec<String> = std::iter::once(system)
            .filter(|s| !s.is_empty())
            .chain(contents.iter().map(|c| parts_text(&c["parts"])))
            .collect();
        let prompt = text::prompt_tokens(texts.iter().map(String::as_str));
        let last = contents.last().unwrap_or(&Value::Null);
        let last_is_response = last["parts"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| !field(p, "functionResponse").is_null()));
        let last_user = contents
            .iter()
            .rev()
            .find(|c| c["role"] != "model")
            .map(|c| parts_text(&c["parts"]))
            .unwrap_or_default();
        let gen = field(req, "generationConfig");
        let fc = field(field(req, "toolConfig"), "functionCallingConfig");
        let allowed: Vec<&str> = field(fc, "allowedFunctionNames")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let decls: Vec<&Value> = req["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| {
                field(t, "functionDeclarations")
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .collect();
        let mut calls = Vec::new();
        if !decls.is_empty() && field(fc, "mode") != "NONE" && !last_is_response {
            // Parallel calls, as Gemini makes them: each allowed function, up to three.
            for d in decls.iter().filter(|d| {
                allowed.is_empty() || d["name"].as_str().is_some_and(|n| allowed.contains(&n))
            }) {
                let params = [field(d, "parameters"), field(d, "parametersJsonSchema")]
                    .into_iter()
                    .find(|p| !p.is_null());
                let args = params.map_or(json!({}), text::example_for_schema);
                calls.push((d["name"].as_str().unwrap_or("f").to_owned(), args));
                if calls.len() == 3 {
                    break;
                }
            }
        }
        let mut finish = "STOP";
        let text_out = if !calls.is_empty() {
            None
        } else if field(gen, "responseMimeType") == "application/json" {
            Some(
                match [
                    field(gen, "responseSchema"),
                    field(gen, "responseJsonSchema"),
                ]
                .into_iter()
                .find(|s| !s.is_null())
                {
                    Some(s) => text::example_for_schema(s).to_string(),
                    None => json!({"answer": text::reply_text("gemini", model, &last_user, None)})
                        .to_string(),
                },
            )
        } else {
            Some(text::reply_text("gemini", model, &last_user, chunks))
        };
        let mut candidates = text_out.as_deref().map_or(0, text::count_tokens)
            + calls
                .iter()
                .map(|(n, a)| 3 + text::count_tokens(n) + text::count_tokens(&a.to_string()))
                .sum::<u64>();
        let mut text_out = text_out;
        if let (Some(max), Some(t)) = (field(gen, "maxOutputTokens").as_u64(), text_out.as_mut()) {
            if candidates > max {
                *t = t.chars().take(max as usize * 4).collect();
                candidates = max;
                finish = "MAX_TOKENS";
            }
        }
        let cached = if !field(req, "cachedContent").is_null() {
            prompt.saturating_sub(4 + text::count_tokens(&parts_text(&last["parts"])) + 3)
        } else {
            0
        };
        let thoughts = if model.contains("pro") || model.contains("thinking") {
            32
        } else {
            0
        };
        Ok(Answer {
            model: model.to_owned(),
            response_id: format!("emu{n:08}{prompt:06}"),
            text: text_out,
            calls,
            finish,
            prompt,
            candidates: candidates.max(1),
            thoughts,
            cached,
        })
    }

    fn usage(&self, candidates: u64, thoughts: u64) -> Value {
        let mut u = json!({
            "promptTokenCount": self.prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.prompt + candidates + thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
        });
        if thoughts > 0 {
            u["thoughtsTokenCount"] = json!(thoughts);
        }
        if self.cached > 0 {
            u["cachedContentTokenCount"] = json!(self.cached);
            u["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": self.cached}]);
        }
        u
    }

    fn response(&self, parts: Vec<Value>, finish: Option<&str>, candidates: u64) -> Value {
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        json!({"candidates": [cand], "usageMetadata": self.usage(candidates, self.thoughts),
            "modelVersion": self.model, "responseId": self.response_id})
    }

    fn call_parts(&self) -> Vec<Value> {
        self.calls
            .iter()
            .map(|(name, args)| json!({"functionCall": {"name": name, "args": args}}))
            .collect()
    }

    fn full(&self) -> Value {
        let mut parts = Vec::new();
        if let Some(t) = &self.text {
            parts.push(json!({"text": t}));
        }
        parts.extend(self.call_parts());
        self.response(parts, Some(self.finish), self.candidates)
    }

    /// Stream events: text a few words at a time, usage cumulative in each, the finish
    /// reason (and any function call, whole) on the last.
    fn stream_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut so_far = 0;
        if let Some(t) = &self.text {
            let words = text::split_chunks(t);
            let last = words.len().saturating_sub(1);
            for (i, w) in words.into_iter().enumerate() {
                so_far += text::count_tokens(&w);
                let done = i == last && self.calls.is_empty();
                let count = if done {
                    self.candidates
                } else {
                    so_far.min(self.candidates)
                };
                events.push(self.response(
                    vec![json!({"text": w})],
                    done.then_some(self.finish),
                    count,
                ));
            }
        }
        if !self.calls.is_empty() {
            events.push(self.response(self.call_parts(), Some(self.finish), self.candidates));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{call, collect};
    use tollgate_providers::gemini::GeminiCodec;
    use tollgate_providers::{Codec, DecodeCtx};

    fn post(
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> axum::http::Request<axum::body::Body> {
        let mut b = axum::http::Request::post(path).header("content-type", "application/json");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::from(body.to_string())).unwrap()
    }

    const KEY: &[(&str, &str)] = &[("x-goog-api-key", "emulator-key")];

    fn hi() -> Value {
        json!({"contents":[{"role":"user","parts":[{"text":"hi"}]}]})
    }

    fn ctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "r".into(),
            created: 1,
            model: "gemini-2.5-flash".into(),
        }
    }

    #[tokio::test]
    async fn both_versions_and_both_key_styles() {
        for path in [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1/models/gemini-2.5-flash:generateContent",
        ] {
            let (status, headers, body) =
                call(router(EmulatorOptions::default()), post(path, hi(), KEY)).await;
            assert_eq!(status, 200);
            assert_eq!(headers["content-type"], JSON);
            let r = GeminiCodec::new().decode(200, &body, &ctx()).unwrap();
            assert!(r.choices[0]
                .message
                .content
                .as_deref()
                .unwrap()
                .contains("gemini emulator"));
            assert!(r.usage.unwrap().prompt_tokens > 0);
        }
        let (status, _, _) = call(
            router(EmulatorOptions::default()),
            post(
                "/v1beta/models/m:generateContent?key=emulator-key",
                hi(),
                &[],
            ),
        )
        .await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn bad_key_is_400_api_key_invalid() {
        let (status, _, body) = call(
            router(EmulatorOptions::default()),
            post(
                "/v1beta/models/m:generateContent",
                hi(),
                &[("x-goog-api-key", "nope")],
            ),
        )
        .await;
        assert_eq!(status, 400);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"error":{"code":400,"message":"API key not valid. Please pass a valid API key.",
                "status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",
                "reason":"API_KEY_INVALID","domain":"googleapis.com",
                "metadata":{"service":"generativelanguage.googleapis.com"}}]}})
        );
        let e = GeminiCodec::new().decode_error(400, &body, None);
        assert_eq!(e.kind, tollgate_core::UpstreamErrorKind::Auth);
    }

    #[tokio::test]
    async fn rate_limit_fault_carries_retry_delay() {
        let mut h = KEY.to_vec();
        h.push(("x-emulator-fault", "rate_limit=41"));
        let (status, _, body) = call(
            router(EmulatorOptions::default()),
            post("/v1beta/models/m:generateContent", hi(), &h),
        )
        .await;
        assert_eq!(status, 429);
        let e = GeminiCodec::new().decode_error(429, &body, None);
        assert_eq!(e.retry_after_secs, Some(41));
    }

    #[tokio::test]
    async fn sse_and_array_streams_with_function_calls_round_trip() {
        let req = json!({"contents":[{"role":"user","parts":[{"text":"weather?"}]}],
            "tools":[{"functionDeclarations":[{"name":"get_weather",
                "parameters":{"type":"OBJECT","properties":{"city":{"type":"STRING"}}}}]}]});
        for (path, ct) in [
            (
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                "text/event-stream",
            ),
            ("/v1/models/gemini-2.5-pro:streamGenerateContent", JSON),
        ] {
            let (status, headers, body) = call(
                router(EmulatorOptions::default()),
                post(path, req.clone(), KEY),
            )
            .await;
            assert_eq!(status, 200);
            assert_eq!(headers["content-type"], ct);
            if ct == "text/event-stream" {
                assert!(body.starts_with(b"data: {"));
                assert!(body.ends_with(b"\r\n\r\n"));
            }
            let r = collect(
                GeminiCodec::new().stream_decoder(&ctx(), Some(ct)),
                &body,
                &ctx(),
            );
            let calls = r.choices[0].message.tool_calls.clone().unwrap();
            assert_eq!(calls[0].function.name, "get_weather");
            assert_eq!(calls[0].function.arguments, "{\"city\":\"example\"}");
            assert_eq!(calls[0].id, "call_r_0");
            assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
            let u = r.usage.unwrap();
            assert_eq!(u.reasoning_tokens, 32);
        }
    }

    #[tokio::test]
    async fn text_stream_usage_is_cumulative() {
        let (_, _, body) = call(
            router(EmulatorOptions::default()),
            post(
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                hi(),
                KEY,
            ),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        let counts: Vec<u64> = text
            .split("\r\n\r\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                serde_json::from_str::<Value>(&s[6..]).unwrap()["usageMetadata"]
                    ["candidatesTokenCount"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert!(counts.len() > 3);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        let r = collect(
            GeminiCodec::new().stream_decoder(&ctx(), Some("text/event-stream")),
            &body,
            &ctx(),
        );
        assert_eq!(r.usage.unwrap().completion_tokens, *counts.last().unwrap());
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("stop"));
    }
}
