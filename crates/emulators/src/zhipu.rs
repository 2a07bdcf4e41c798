//! Emulator of Zhipu's GLM v4 API (`/api/paas/v4/chat/completions`): the plain console
//! key or an HS256 JWT minted from it, Zhipu's error codes, usage on the finish chunk,
//! `data: [DONE]`.
//!
//! The console key is `id.secret`: the emulator's `api_key` when it holds a `.`,
//! otherwise `"{api_key}.{secret_key}"` (so the default options give
//! `emulator-key.emulator-secret`). A bearer token is accepted when it is that key, or
//! a JWT whose `api_key` claim is `id`, whose HS256 signature verifies with `secret`,
//! and whose `exp` (milliseconds) is in the future. Failures answer as Zhipu does:
//! 401 with code 1001 (no header), 1000 (wrong key or bad signature), 1003 (expired).
//!
//! The official SDK sends `Accept: application/json` even for streams, so the body's
//! `stream` alone decides; explicit `null` fields are read as absent. Models must look
//! like Zhipu's (`glm-*`, `charglm-*`, `codegeex-*`, `emohaa`), else 400 code 1211.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::{
    apply_latency, bearer, control_routes, json_response, stream_response, EmuState,
    EmulatorOptions, Piece,
};
use crate::reply::{Reply, ReplyOptions};

/// The emulator's routes under `/api/paas/v4`, plus the control routes.
pub fn router(opts: EmulatorOptions) -> Router {
    let state = EmuState::new("zhipu", opts);
    Router::new()
        .route("/api/paas/v4/chat/completions", post(chat))
        .with_state(state.clone())
        .merge(control_routes(state))
}

/// The console key `id.secret` this instance accepts.
pub fn console_key(opts: &EmulatorOptions) -> String {
    if opts.api_key.contains('.') {
        opts.api_key.clone()
    } else {
        format!("{}.{}", opts.api_key, opts.secret_key)
    }
}

/// Zhipu's error body.
fn error(status: u16, code: &str, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
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

/// The error Zhipu sends for an HTTP status (the `status=` fault).
fn error_for_status(status: u16) -> Response {
    let (code, msg) = match status {
        400 => ("1210", "API 调用参数有误，请检查文档。"),
        401 => ("1000", "身份验证失败。"),
        403 => ("1220", "您无权访问该API。"),
        404 => ("1211", "模型不存在，请检查模型代码。"),
        429 => (
            "1302",
            "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。",
        ),
        503 => ("1305", "当前API请求过多，请稍后重试。"),
        _ => ("1234", "网络错误，请联系客服。"),
    };
    error(status, code, msg, None)
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthError {
    /// No `Authorization` header: code 1001.
    Missing,
    /// Wrong key, malformed token or bad signature: code 1000.
    Denied,
    /// A valid token past its `exp`: code 1003.
    Expired,
}

impl AuthError {
    fn response(self) -> Response {
        match self {
            AuthError::Missing => error(
                401,
                "1001",
                "Header中未收到Authentication参数，无法进行身份验证。",
                None,
            ),
            AuthError::Denied => error(401, "1000", "身份验证失败。", None),
            AuthError::Expired => error(
                401,
                "1003",
                "Authentication Token已过期，请重新生成/获取。",
                None,
            ),
        }
    }
}

/// Checks the bearer token against the console key `id.secret` at `now_ms`.
fn authenticate(headers: &HeaderMap, key: &str, now_ms: i64) -> Result<(), AuthError> {
    let token = bearer(headers)
        .or_else(|| {
            // one-api sends the JWT without `Bearer `.
            headers.get("authorization")?.to_str().ok().map(str::trim)
        })
        .ok_or(AuthError::Missing)?;
    if token == key {
        return Ok(());
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(AuthError::Denied);
    };
    let (id, secret) = key.split_once('.').unwrap_or((key, ""));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| AuthError::Denied)?;
    mac.update(format!("{h}.{p}").as_bytes());
    let sig_ok = b64
        .decode(s.trim_end_matches('='))
        .is_ok_and(|sig| mac.verify_slice(&sig).is_ok());
    let json = |part: &str| -> Option<Value> {
        let bytes = b64.decode(part.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let (Some(header), Some(claims)) = (json(h), json(p)) else {
        return Err(AuthError::Denied);
    };
    if !sig_ok || header["alg"] != "HS256" || claims["api_key"] != id {
        return Err(AuthError::Denied);
    }
    match claims["exp"].as_i64() {
        Some(exp) if exp > now_ms => Ok(()),
        _ => Err(AuthError::Expired),
    }
}

fn model_known(m: &str) -> bool {
    [
        "glm-",
        "charglm-",
        "codegeex-",
        "emohaa",
        "cogview",
        "cogvideo",
    ]
    .iter()
    .any(|p| m.starts_with(p))
}

fn unit_open(v: &Value) -> bool {
    v.is_null() || v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))
}

async fn chat(State(s): State<Arc<EmuState>>, headers: HeaderMap, body: Bytes) -> Response {
    let rf = match s.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let now = chrono::Utc::now();
    if let Err(e) = authenticate(&headers, &console_key(&s.opts), now.timestamp_millis()) {
        return e.response();
    }
    let f = &rf.faults;
    if rf.error {
        apply_latency(f).await;
        if let Some(secs) = f.rate_limit {
            return error(
                429,
                "1302",
                "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。",
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
        _ => return error(400, "1210", "API 调用参数有误，请检查文档。", None),
    };
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    if model.is_empty() {
        return error(400, "1214", "model 参数非法。", None);
    }
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(400, "1214", "messages 参数非法。请检查文档。", None);
    };
    if !model_known(&model) {
        return error(400, "1211", "模型不存在，请检查模型代码。", None);
    }
    if !unit_open(&req["temperature"]) || !unit_open(&req["top_p"]) {
        return error(400, "1214", "temperature/top_p 参数非法。", None);
    }
    if req["tool_choice"].as_str().is_some_and(|c| c != "auto") {
        return error(400, "1214", "tool_choice 参数非法，仅支持 auto。", None);
    }
    let tools = req["tools"].as_array().cloned().unwrap_or_default();
    let reply = Reply::build(
        messages,
        &ReplyOptions {
            vendor: "zhipu",
            model: &model,
            tools: &tools,
            tool_choice: None,
            max_tokens: req["max_tokens"].as_u64(),
            json: req["response_format"]["type"] == "json_object",
            chunks: f.chunks,
            call_id_prefix: "call_2024052917",
        },
    );
    let id = format!("2024052917{:010}", reply.prompt_tokens);
    let created = now.timestamp();
    let stream = req["stream"].as_bool().unwrap_or(false);
    if f.malformed {
        apply_latency(f).await;
        if stream {
            return stream_response(
                "text/event-stream;charset=UTF-8",
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
            b"{\"id\":\"x\",".to_vec(),
        );
    }
    let usage = json!({"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens});
    if !stream {
        apply_latency(f).await;
        let mut message =
            json!({"role": "assistant", "content": reply.content.clone().unwrap_or_default()});
        if !reply.tool_calls.is_empty() {
            message["content"] = Value::Null;
            message["tool_calls"] = reply.tool_calls_json(true);
        }
        let body = json!({"id": id, "request_id": id, "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": reply.finish_reason, "message": message}],
            "usage": usage});
        return json_response(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        );
    }
    let chunk = |delta: Value| {
        json!({"id": id, "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta}]})
    };
    let mut events = Vec::new();
    for p in reply.pieces() {
        events.push(chunk(json!({"role": "assistant", "content": p})));
    }
    let mut last_delta = json!({"role": "assistant", "content": ""});
    if !reply.tool_calls.is_empty() {
        // Zhipu sends a tool call whole, in the finish chunk.
        last_delta["tool_calls"] = reply.tool_calls_json(true);
    }
    let mut last = chunk(last_delta);
    last["choices"][0]["finish_reason"] = json!(reply.finish_reason);
    last["usage"] = usage;
    events.push(last);
    let mut pieces = Vec::new();
    for (i, ev) in events.into_iter().enumerate() {
        if f.disconnect_after.is_some_and(|n| i as u32 >= n) {
            pieces.push(Piece::Abort);
            return stream_response(
                "text/event-stream;charset=UTF-8",
                f.latency,
                f.chunk_interval,
                pieces,
            );
        }
        if f.stream_error_after.is_some_and(|n| i as u32 >= n) {
            let e = json!({"error": {"code": "1234", "message": "网络错误，请联系客服。"}});
            pieces.push(Piece::Bytes(Bytes::from(format!("data: {e}\n\n"))));
            return stream_response(
                "text/event-stream;charset=UTF-8",
                f.latency,
                f.chunk_interval,
                pieces,
            );
        }
        pieces.push(Piece::Bytes(Bytes::from(format!("data: {ev}\n\n"))));
    }
    pieces.push(Piece::Bytes(Bytes::from_static(b"data: [DONE]\n\n")));
    stream_response(
        "text/event-stream;charset=UTF-8",
        f.latency,
        f.chunk_interval,
        pieces,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_providers::zhipu::mint_jwt;

    fn key() -> String {
        console_key(&EmulatorOptions::default())
    }

    fn auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn auth_accepts_key_and_jwt_and_rejects_as_zhipu() {
        let now = 1_700_000_000_000;
        assert_eq!(key(), "emulator-key.emulator-secret");
        assert!(authenticate(&auth(&format!("Bearer {}", key())), &key(), now).is_ok());
        let jwt = mint_jwt(&key(), now).unwrap();
        assert!(authenticate(&auth(&format!("Bearer {jwt}")), &key(), now).is_ok());
        assert!(authenticate(&auth(&jwt), &key(), now).is_ok());
        // Expired: exp = now + 210 s has passed.
        assert_eq!(
            authenticate(&auth(&format!("Bearer {jwt}")), &key(), now + 211_000),
            Err(AuthError::Expired)
        );
        // Signed with another secret.
        let bad = mint_jwt("emulator-key.wrong", now).unwrap();
        assert_eq!(
            authenticate(&auth(&format!("Bearer {bad}")), &key(), now),
            Err(AuthError::Denied)
        );
        assert_eq!(
            authenticate(&auth("Bearer nope"), &key(), now),
            Err(AuthError::Denied)
        );
        assert_eq!(
            authenticate(&HeaderMap::new(), &key(), now),
            Err(AuthError::Missing)
        );
    }
}

#[cfg(test)]
mod router_tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tollgate_providers::zhipu::mint_jwt;
    use tower::ServiceExt;

    async fn post(auth: &str, body: Value) -> (u16, String) {
        let r = router(EmulatorOptions::default())
            .oneshot(
                Request::post("/api/paas/v4/chat/completions")
                    .header("authorization", auth)
                    .header("accept", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn streams_despite_accept_json_and_ends_with_done() {
        let key = console_key(&EmulatorOptions::default());
        let jwt = mint_jwt(&key, chrono::Utc::now().timestamp_millis()).unwrap();
        let (status, body) = post(
            &format!("Bearer {jwt}"),
            json!({"model":"glm-4-flash","messages":[{"role":"user","content":"hi"}],"stream":true,
                "response_format":null,"thinking":null}),
        )
        .await;
        assert_eq!(status, 200);
        assert!(body.ends_with("data: [DONE]\n\n"));
        let last: Value = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .rfind(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert!(last["usage"]["completion_tokens"].as_u64() > Some(0));
    }

    #[tokio::test]
    async fn an_expired_jwt_is_1003() {
        let key = console_key(&EmulatorOptions::default());
        let jwt = mint_jwt(&key, chrono::Utc::now().timestamp_millis() - 300_000).unwrap();
        let (status, body) = post(
            &format!("Bearer {jwt}"),
            json!({"model":"glm-4","messages":[{"role":"user","content":"hi"}]}),
        )
        .await;
        assert_eq!(status, 401);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "1003");
    }
}
