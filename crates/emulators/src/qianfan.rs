//! Emulator of Baidu Qianfan: the OAuth token endpoint (`/oauth/2.0/token`, API key and
//! secret key in the query), the legacy ERNIE chat API
//! (`/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{slug}?access_token=`) with its HTTP-200
//! `error_code` bodies, odd/alternating message check and `data: ` stream with no
//! `[DONE]`, and the v2 OpenAI-compatible `/v2/chat/completions`.
//!
//! Tokens live `token_ttl_secs` (default 30 days, as Baidu's do). Tests expire them with
//! `POST /_emulator/token_ttl_secs` (body: seconds, for tokens issued from then on) or
//! `POST /_emulator/expire_tokens` (every token issued so far is expired now): the next
//! chat call answers `error_code` 111, as Baidu does for an expired token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tollgate_providers::urlenc::query_param;

use crate::common::{
    apply_latency, control_routes, json_response, stream_response, EmuState, EmulatorOptions, Piece,
};
use crate::compat::{self, Style};
use crate::text;

/// Token lifetime Baidu announces: 30 days.
const DEFAULT_TTL_SECS: u64 = 2_592_000;

struct Emu {
    state: Arc<EmuState>,
    ttl: AtomicU64,
    issued: AtomicU64,
    /// Token → its expiry (Unix seconds).
    tokens: Mutex<HashMap<String, i64>>,
}

/// The emulator's routes.
pub fn router(opts: EmulatorOptions) -> Router {
    let state = EmuState::new("qianfan", opts);
    let emu = Arc::new(Emu {
        state: state.clone(),
        ttl: AtomicU64::new(DEFAULT_TTL_SECS),
        issued: AtomicU64::new(0),
        tokens: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/oauth/2.0/token", post(token).get(token))
        .route(
            "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{slug}",
            post(chat),
        )
        .route("/v2/chat/completions", post(v2_chat))
        .route("/_emulator/token_ttl_secs", post(set_ttl))
        .route("/_emulator/expire_tokens", post(expire_tokens))
        .with_state(emu)
        .merge(control_routes(state))
}

async fn set_ttl(State(emu): State<Arc<Emu>>, body: String) -> Response {
    match body.trim().parse::<u64>() {
        Ok(n) => {
            emu.ttl.store(n, Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(_) => (StatusCode::BAD_REQUEST, "body must be a number of seconds").into_response(),
    }
}

async fn expire_tokens(State(emu): State<Arc<Emu>>) -> StatusCode {
    let now = chrono::Utc::now().timestamp();
    if let Ok(mut t) = emu.tokens.lock() {
        for exp in t.values_mut() {
            *exp = now - 1;
        }
    }
    StatusCode::NO_CONTENT
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        "application/json",
        json!({"error": error, "error_description": description})
            .to_string()
            .into_bytes(),
    )
}

async fn token(State(emu): State<Arc<Emu>>, RawQuery(q): RawQuery) -> Response {
    let q = q.unwrap_or_default();
    if query_param(&q, "grant_type").as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The authorization grant type is not supported",
        );
    }
    let opts = &emu.state.opts;
    if query_param(&q, "client_id").as_deref() != Some(opts.api_key.as_str()) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client id",
        );
    }
    if query_param(&q, "client_secret").as_deref() != Some(opts.secret_key.as_str()) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let ttl = emu.ttl.load(Ordering::Relaxed);
    let n = emu.issued.fetch_add(1, Ordering::Relaxed) + 1;
    let now = chrono::Utc::now().timestamp();
    let tok = format!(
        "24.{:032x}.{ttl}.{now}.{n}-emulator",
        u128::from(n) * 0x9e37_79b9
    );
    if let Ok(mut t) = emu.tokens.lock() {
        t.insert(tok.clone(), now + ttl as i64);
    }
    json_response(
        StatusCode::OK,
        "application/json",
        json!({"refresh_token": format!("25.{n}-emulator"), "expires_in": ttl,
            "session_key": "emulator-session", "access_token": tok,
            "scope": "public brain_all_scope wenxinworkshop_mgr", "session_secret": "emulator"})
        .to_string()
        .into_bytes(),
    )
}

/// An ERNIE error: always HTTP 200, as Baidu sends them.
fn ernie_error(code: i64, msg: &str) -> Response {
    json_response(
        StatusCode::OK,
        "application/json",
        json!({"error_code": code, "error_msg": msg})
            .to_string()
            .into_bytes(),
    )
}

/// The ERNIE error code the fault `status=S` stands for.
fn code_for_status(status: u16) -> (i64, &'static str) {
    match status {
        400 | 422 => (336003, "invalid parameter(s)"),
        401 => (110, "Access token invalid or no longer valid"),
        403 => (6, "No permission to access data"),
        404 => (336005, "API name not exist"),
        429 => (336501, "Rpm limit reached"),
        503 | 529 => (336100, "Server high load, please try again later"),
        _ => (336000, "Internal error"),
    }
}

/// Checks the messages the way the API does: odd count, user first, alternating
/// user(/function) and assistant.
fn check_messages(messages: &[Value]) -> Result<(), &'static str> {
    if messages.is_empty() {
        return Err("the messages must not be empty");
    }
    if messages.len().is_multiple_of(2) {
        return Err("the length of messages must be an odd number");
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        let ok = if i % 2 == 0 {
            role == "user" || role == "function"
        } else {
            role == "assistant"
        };
        if !ok {
            return Err(if i % 2 == 0 {
                "the role of message with even index in the messages must be user or function"
            } else {
                "the role of message with odd index in the messages must be assistant"
            });
        }
    }
    Ok(())
}

async fn chat(
    State(emu): State<Arc<Emu>>,
    Path(slug): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rf = match emu.state.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let token = query_param(&q.unwrap_or_default(), "access_token").unwrap_or_default();
    let expiry = emu.tokens.lock().ok().and_then(|t| t.get(&token).copied());
    match expiry {
        None => return ernie_error(110, "Access token invalid or no longer valid"),
        Some(exp) if exp < chrono::Utc::now().timestamp() => {
            return ernie_error(111, "Access token expired")
        }
        Some(_) => {}
    }
    let f = &rf.faults;
    apply_latency(f).await;
    if rf.error {
        if f.rate_limit.is_some() {
            return ernie_error(18, "Open api qps request limit reached");
        }
        if let Some(status) = f.status {
            if let Some(b) = &f.body {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    "application/json",
                    b.clone().into_bytes(),
                );
            }
            let (code, msg) = code_for_status(status);
            return ernie_error(code, msg);
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return ernie_error(336002, "Invalid JSON"),
    };
    let empty = Vec::new();
    let messages = req["messages"].as_array().unwrap_or(&empty);
    if let Err(msg) = check_messages(messages) {
        return ernie_error(336006, msg);
    }
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        if t <= 0.0 || t > 1.0 {
            return ernie_error(
                336003,
                "the value of temperature should be in range (0, 1.0]",
            );
        }
    }
    let answer = Answer::build(&slug, &req, messages, f.chunks);
    let stream = req["stream"].as_bool().unwrap_or(false);
    if f.malformed {
        if stream {
            return stream_response(
                "text/event-stream",
                None,
                None,
                vec![Piece::Bytes(Bytes::from_static(
                    b"data: {\"id\":\"as-x\",\"result\":\n\n",
                ))],
            );
        }
        return json_response(StatusCode::OK, "application/json", b"{\"id\":".to_vec());
    }
    if !stream {
        return json_response(
            StatusCode::OK,
            "application/json",
            answer.full_body().to_string().into_bytes(),
        );
    }
    stream_response(
        "text/event-stream",
        None,
        f.chunk_interval,
        answer.stream_pieces(f.disconnect_after, f.stream_error_after),
    )
}

async fn v2_chat(State(emu): State<Arc<Emu>>, headers: HeaderMap, body: Bytes) -> Response {
    compat::chat(&emu.state, Style::Qianfan, &headers, &body).await
}

struct Answer {
    id: String,
    created: i64,
    pieces: Vec<String>,
    function_call: Option<(String, String)>,
    prompt_tokens: u64,
    truncated: bool,
}

impl Answer {
    fn build(slug: &str, req: &Value, messages: &[Value], chunks: Option<u32>) -> Answer {
        let mut texts: Vec<&str> = messages
            .iter()
            .filter_map(|m| m["content"].as_str())
            .collect();
        if let Some(s) = req["system"].as_str() {
            texts.push(s);
        }
        let prompt_tokens = text::prompt_tokens(texts.iter().copied());
        let last = messages.last();
        let last_user = last.and_then(|m| m["content"].as_str()).unwrap_or_default();
        let function_call = req["functions"]
            .as_array()
            .and_then(|f| f.first())
            .filter(|_| last.is_some_and(|m| m["role"] != "function"))
            .map(|f| {
                (
                    f["name"].as_str().unwrap_or("function").to_owned(),
                    text::example_for_schema(&f["parameters"]).to_string(),
                )
            });
        let mut reply = if function_call.is_some() {
            String::new()
        } else {
            text::reply_text("qianfan", slug, last_user, chunks)
        };
        let mut truncated = false;
        if let Some(max) = req["max_output_tokens"].as_u64() {
            if text::count_tokens(&reply) > max {
                reply = reply.chars().take(max as usize * 4).collect();
                truncated = true;
            }
        }
        let pieces = if reply.is_empty() {
            vec![String::new()]
        } else {
            text::split_chunks(&reply)
        };
        Answer {
            id: format!("as-emu{prompt_tokens}"),
            created: chrono::Utc::now().timestamp(),
            pieces,
            function_call,
            prompt_tokens,
            truncated,
        }
    }

    fn completion_tokens(&self, upto: usize) -> u64 {
        let text: String = self.pieces[..upto].concat();
        text::count_tokens(&text)
            + self
                .function_call
                .as_ref()
                .map(|(n, a)| 3 + text::count_tokens(n) + text::count_tokens(a))
                .unwrap_or(0)
    }

    fn usage(&self, upto: usize) -> Value {
        let c = self.completion_tokens(upto);
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c})
    }

    fn full_body(&self) -> Value {
        let mut b = json!({"id": self.id, "object": "chat.completion", "created": self.created,
            "result": self.pieces.concat(), "is_truncated": self.truncated, "need_clear_history": false,
            "finish_reason": if self.truncated { "length" } else { "normal" },
            "usage": self.usage(self.pieces.len())});
        if let Some((n, a)) = &self.function_call {
            b["function_call"] =
                json!({"name": n, "arguments": a, "thoughts": "I should call a function."});
            b["finish_reason"] = json!("function_call");
        }
        b
    }

    fn stream_pieces(&self, disconnect_after: Option<u32>, error_after: Option<u32>) -> Vec<Piece> {
        let mut out = Vec::new();
        let n = self.pieces.len();
        for (i, p) in self.pieces.iter().enumerate() {
            if disconnect_after.is_some_and(|d| i as u32 >= d) {
                out.push(Piece::Abort);
                return out;
            }
            if error_after.is_some_and(|d| i as u32 >= d) {
                let e = json!({"error_code": 336000, "error_msg": "Internal error"});
                out.push(Piece::Bytes(Bytes::from(format!("data: {e}\n\n"))));
                return out;
            }
            let is_end = i + 1 == n;
            let mut ev = json!({"id": self.id, "object": "chat.completion", "created": self.created,
                "sentence_id": i, "is_end": is_end, "is_truncated": is_end && self.truncated,
                "result": p, "need_clear_history": false,
                "finish_reason": if is_end { if self.truncated { "length" } else { "normal" } } else { "" },
                "usage": self.usage(i + 1)});
            if is_end {
                if let Some((name, args)) = &self.function_call {
                    ev["function_call"] = json!({"name": name, "arguments": args, "thoughts": "I should call a function."});
                    ev["finish_reason"] = json!("function_call");
                }
            }
            out.push(Piece::Bytes(Bytes::from(format!("data: {ev}\n\n"))));
        }
        out
    }
}
