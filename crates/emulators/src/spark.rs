//! Emulator of iFlytek Spark: the WebSocket chat API on its version paths (`/v1.1/chat`,
//! `/v3.5/chat`, `/chat/max-32k`, ...), with the signed-URL check done before the upgrade
//! exactly as the gateway in front of Spark does it (401/403 plain HTTP answers), one
//! request frame in, `status` 0/1/2 frames out (usage on the last), then close; and the
//! HTTP OpenAI-compatible `/v1/chat/completions` with the APIPassword as bearer
//! (`EmulatorOptions::api_key`).
//!
//! The signature is recomputed over the `Host` header as received (the official SDK
//! sends `host:port`) and the request path; the `authorization` line is parsed
//! tolerantly (the SDK puts stray spaces before `headers=`; `api_key="…"` and
//! `hmac username="…"` are both accepted).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use tollgate_providers::spark::signature;
use tollgate_providers::urlenc::query_param;

use crate::common::{control_routes, json_response, EmuState, EmulatorOptions, RequestFaults};
use crate::compat::{self, Style};
use crate::faults::Faults;
use crate::text;

/// Version paths and the domains each accepts.
const PATHS: &[(&str, &[&str])] = &[
    ("/v1.1/chat", &["lite", "general"]),
    ("/v2.1/chat", &["generalv2"]),
    ("/v3.1/chat", &["generalv3"]),
    ("/chat/pro-128k", &["pro-128k"]),
    ("/v3.5/chat", &["generalv3.5"]),
    ("/chat/max-32k", &["max-32k"]),
    ("/v4.0/chat", &["4.0Ultra"]),
];

/// The emulator's routes.
pub fn router(opts: EmulatorOptions) -> Router {
    let state = EmuState::new("spark", opts);
    let mut r = Router::new();
    for (path, _) in PATHS {
        r = r.route(path, get(ws_chat));
    }
    r.route("/v1/chat/completions", post(http_chat))
        .with_state(state.clone())
        .merge(control_routes(state))
}

async fn http_chat(State(s): State<Arc<EmuState>>, headers: HeaderMap, body: Bytes) -> Response {
    compat::chat(&s, Style::Spark, &headers, &body).await
}

fn refuse(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        "application/json; charset=utf-8",
        json!({ "message": message }).to_string().into_bytes(),
    )
}

/// The fields of a decoded `authorization` line.
#[derive(Debug, Default, PartialEq, Eq)]
struct AuthLine {
    key: String,
    algorithm: String,
    headers: String,
    signature: String,
}

/// Parses `api_key="k", algorithm="hmac-sha256", headers="…", signature="…"` (or
/// `hmac username="k", …`) with any spacing between the fields.
fn parse_auth_line(line: &str) -> Option<AuthLine> {
    let mut a = AuthLine::default();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().trim_start_matches(',').trim();
        let after = rest[eq + 1..].trim_start();
        let after = after.strip_prefix('"')?;
        let end = after.find('"')?;
        let value = after[..end].to_owned();
        match name {
            "api_key" | "hmac username" | "username" => a.key = value,
            "algorithm" => a.algorithm = value,
            "headers" => a.headers = value,
            "signature" => a.signature = value,
            _ => {}
        }
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim();
    }
    (!a.key.is_empty() && !a.signature.is_empty()).then_some(a)
}

/// Checks the signed URL; `Err` is the plain HTTP answer Spark's gateway gives.
// The error is the HTTP answer itself, built once per rejected request.
#[allow(clippy::result_large_err)]
fn verify(
    opts: &EmulatorOptions,
    uri: &Uri,
    query: &str,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let unauthorized = || refuse(StatusCode::UNAUTHORIZED, "Unauthorized");
    let auth = query_param(query, "authorization").ok_or_else(unauthorized)?;
    let date = query_param(query, "date").ok_or_else(unauthorized)?;
    let cannot = || {
        refuse(
            StatusCode::UNAUTHORIZED,
            "HMAC signature cannot be verified",
        )
    };
    let line = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(cannot)?;
    let a = parse_auth_line(&line).ok_or_else(cannot)?;
    if a.key != opts.api_key || a.algorithm != "hmac-sha256" {
        return Err(cannot());
    }
    let skew_ok = chrono::DateTime::parse_from_rfc2822(&date)
        .map(|d| (chrono::Utc::now().timestamp() - d.timestamp()).abs() <= 300)
        .unwrap_or(false);
    if !skew_ok {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication",
        ));
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let expected = signature(&opts.secret_key, host, &date, uri.path());
    if expected != a.signature {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "HMAC signature does not match",
        ));
    }
    Ok(())
}

async fn ws_chat(
    State(s): State<Arc<EmuState>>,
    uri: Uri,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if let Err(r) = verify(&s.opts, &uri, &q.unwrap_or_default(), &headers) {
        return r;
    }
    let rf = match s.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "this endpoint speaks WebSocket only",
            )
        }
    };
    let domains: &'static [&'static str] = PATHS
        .iter()
        .find(|(p, _)| *p == uri.path())
        .map(|(_, d)| *d)
        .unwrap_or(&[]);
    let app_id = s.opts.app_id.clone();
    ws.on_upgrade(move |socket| session(socket, rf, domains, app_id))
}

fn sid() -> String {
    format!(
        "cht000emu{:08x}",
        chrono::Utc::now().timestamp_subsec_nanos()
    )
}

fn error_frame(code: i64, message: &str, sid: &str) -> String {
    json!({"header": {"code": code, "message": message, "sid": sid, "status": 2}}).to_string()
}

/// The Spark error code the fault `status=S` stands for.
fn code_for_status(status: u16) -> (i64, &'static str) {
    match status {
        400 | 422 => (10005, "invalid parameter value"),
        401 => (11500, "auth error"),
        403 => (10016, "appid not authorised"),
        429 => (11202, "AppIdQpsOverFlowError"),
        503 | 529 => (10008, "service capacity is insufficient"),
        _ => (10010, "engine internal error"),
    }
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn session(
    mut socket: WebSocket,
    rf: RequestFaults,
    domains: &'static [&'static str],
    app_id: String,
) {
    let first = tokio::time::timeout(Duration::from_secs(30), socket.recv()).await;
    let text = match first {
        Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_owned(),
        Ok(Some(Ok(Message::Binary(b)))) => String::from_utf8_lossy(&b).into_owned(),
        _ => return,
    };
    let sid = sid();
    let f = &rf.faults;
    if let Some(d) = f.latency {
        tokio::time::sleep(d).await;
    }
    let req: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => {
            send(&mut socket, error_frame(10003, "bad message format", &sid)).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let frames = match answer(&req, &rf, domains, &app_id, &sid) {
        Ok(frames) => frames,
        Err(e) => vec![e],
    };
    for (i, fr) in frames.into_iter().enumerate() {
        if i > 0 {
            if let Some(d) = f.chunk_interval {
                tokio::time::sleep(d).await;
            }
        }
        if f.disconnect_after.is_some_and(|n| i as u32 >= n) {
            // Abrupt end: drop the socket with no status-2 frame and no close frame.
            return;
        }
        if f.stream_error_after.is_some_and(|n| i as u32 >= n) {
            send(
                &mut socket,
                error_frame(10010, "engine internal error", &sid),
            )
            .await;
            break;
        }
        if !send(&mut socket, fr).await {
            return;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// The frames answering one request frame, or the one error frame.
fn answer(
    req: &Value,
    rf: &RequestFaults,
    domains: &[&str],
    app_id: &str,
    sid: &str,
) -> Result<Vec<String>, String> {
    let f: &Faults = &rf.faults;
    if req["header"]["app_id"].as_str() != Some(app_id) {
        return Err(error_frame(10313, "appid cannot be verified", sid));
    }
    if rf.error {
        if f.rate_limit.is_some() {
            return Err(error_frame(11202, "AppIdQpsOverFlowError", sid));
        }
        if let Some(status) = f.status {
            let (code, msg) = code_for_status(status);
            return Err(error_frame(code, msg, sid));
        }
    }
    if f.malformed {
        return Ok(vec!["{\"header\":{\"code\":0,\"sid\":".to_owned()]);
    }
    let domain = req["parameter"]["chat"]["domain"].as_str().unwrap_or("");
    if !domains.contains(&domain) {
        return Err(error_frame(
            10404,
            &format!("domain '{domain}' is not served on this path"),
            sid,
        ));
    }
    let empty = Vec::new();
    let messages = req["payload"]["message"]["text"]
        .as_array()
        .unwrap_or(&empty);
    if messages.is_empty() {
        return Err(error_frame(10004, "payload.message.text is empty", sid));
    }
    let texts: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    let prompt = text::prompt_tokens(texts.iter().copied());
    let question = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .map(text::count_tokens)
        .unwrap_or(0);
    let last = messages.last();
    let last_user = last.and_then(|m| m["content"].as_str()).unwrap_or_default();
    let function = req["payload"]["functions"]["text"]
        .as_array()
        .and_then(|f| f.first())
        .filter(|_| last.is_some_and(|m| m["role"] == "user"));
    let frame = |status: i64, seq: usize, text: Value, usage: Option<Value>| {
        let mut v = json!({"header": {"code": 0, "message": "Success", "sid": sid, "status": status},
            "payload": {"choices": {"status": status, "seq": seq, "text": [text]}}});
        if let Some(u) = usage {
            v["payload"]["usage"] = json!({ "text": u });
        }
        v.to_string()
    };
    let usage = |completion: u64| {
        json!({"question_tokens": question, "prompt_tokens": prompt,
            "completion_tokens": completion, "total_tokens": prompt + completion})
    };
    if let Some(func) = function {
        let name = func["name"].as_str().unwrap_or("function");
        let args = text::example_for_schema(&func["parameters"]).to_string();
        let completion = 3 + text::count_tokens(name) + text::count_tokens(&args);
        let t = json!({"content": "", "role": "assistant", "content_type": "text", "index": 0,
            "function_call": {"name": name, "arguments": args}});
        return Ok(vec![frame(2, 0, t, Some(usage(completion)))]);
    }
    let reply = text::reply_text("spark", domain, last_user, f.chunks);
    let pieces = text::split_chunks(&reply);
    let completion = text::count_tokens(&reply);
    let n = pieces.len();
    let mut frames = Vec::with_capacity(n + 1);
    for (i, p) in pieces.into_iter().enumerate() {
        let status = if i == 0 { 0 } else { 1 };
        frames.push(frame(
            status,
            i,
            json!({"content": p, "role": "assistant", "index": 0}),
            None,
        ));
    }
    frames.push(frame(
        2,
        n,
        json!({"content": "", "role": "assistant", "index": 0}),
        Some(usage(completion)),
    ));
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sdk_line_with_stray_spaces_and_the_username_form() {
        let sdk = "api_key=\"k1\", algorithm=\"hmac-sha256\",         headers=\"host date request-line\", signature=\"c2ln\"";
        assert_eq!(
            parse_auth_line(sdk),
            Some(AuthLine {
                key: "k1".into(),
                algorithm: "hmac-sha256".into(),
                headers: "host date request-line".into(),
                signature: "c2ln".into()
            })
        );
        let one_api = "hmac username=\"k2\", algorithm=\"hmac-sha256\", headers=\"host date request-line\", signature=\"x\"";
        assert_eq!(parse_auth_line(one_api).unwrap().key, "k2");
        assert_eq!(parse_auth_line("garbage"), None);
    }
}
