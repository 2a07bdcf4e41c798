//! Emulator of Tencent Hunyuan's Cloud API 3.0 action `ChatCompletions` (`POST /`):
//! TC3-HMAC-SHA256 verified exactly (recomputed over the `Host` header as received, the
//! signed headers the client lists and the body bytes), errors as HTTP 200
//! `{"Response":{"Error":{..},"RequestId"}}` under Content-Type exactly
//! `application/json` (the SDK ignores errors under any other spelling), streams under
//! exactly `text/event-stream` with cumulative `Usage` in every event and no `[DONE]`;
//! plus the OpenAI-compatible `/v1/chat/completions` with a bearer key.
//!
//! Credentials: SecretId = `EmulatorOptions::api_key`, SecretKey = `secret_key`; the
//! OpenAI-compatible endpoint takes `api_key` as its bearer key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tollgate_providers::hunyuan::{
    canonical_request, signature, signing_key, string_to_sign, tc3_date, API_VERSION, SERVICE,
};

use crate::common::{
    apply_latency, control_routes, json_response, stream_response, EmuState, EmulatorOptions, Piece,
};
use crate::compat::{self, Style};
use crate::text;

const NOTE: &str = "以上内容为AI生成，不代表开发者立场，请勿删除或修改本标记";

/// The emulator's routes.
pub fn router(opts: EmulatorOptions) -> Router {
    let state = EmuState::new("hunyuan", opts);
    Router::new()
        .route("/", post(action))
        .route("/v1/chat/completions", post(openai_chat))
        .with_state(state.clone())
        .merge(control_routes(state))
}

async fn openai_chat(State(s): State<Arc<EmuState>>, headers: HeaderMap, body: Bytes) -> Response {
    compat::chat(&s, Style::Hunyuan, &headers, &body).await
}

fn request_id() -> String {
    let n = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        n as u32,
        (n >> 32) as u16,
        (n >> 8) & 0xfff,
        (n >> 20) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// A Tencent Cloud error: HTTP 200, Content-Type exactly `application/json`.
fn tc_error(code: &str, message: &str) -> Response {
    let body = json!({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id()}});
    json_response(
        StatusCode::OK,
        "application/json",
        body.to_string().into_bytes(),
    )
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Verifies the TC3 signature; `Err` is the error answer.
// The error is the HTTP answer itself, built once per rejected request.
#[allow(clippy::result_large_err)]
fn verify(opts: &EmulatorOptions, h: &HeaderMap, body: &[u8]) -> Result<(), Response> {
    let auth = header(h, "authorization");
    let Some(rest) = auth.strip_prefix("TC3-HMAC-SHA256 ") else {
        return Err(tc_error(
            "AuthFailure.InvalidAuthorization",
            "Authorization header format error.",
        ));
    };
    let mut credential = "";
    let mut signed_headers = "";
    let mut sig = "";
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = v;
        }
    }
    let cred: Vec<&str> = credential.split('/').collect();
    if cred.len() != 4 || signed_headers.is_empty() || sig.is_empty() {
        return Err(tc_error(
            "AuthFailure.InvalidAuthorization",
            "Authorization header format error.",
        ));
    }
    let Ok(ts) = header(h, "x-tc-timestamp").parse::<i64>() else {
        return Err(tc_error(
            "MissingParameter",
            "The request is missing a required parameter `Timestamp`.",
        ));
    };
    let now = chrono::Utc::now().timestamp();
    if (now - ts).abs() > 300 {
        return Err(tc_error(
            "AuthFailure.SignatureExpire",
            &format!("Signature expired. Timestamp: {ts}; server time: {now}. The time deviation must be within 5 minutes."),
        ));
    }
    if cred[0] != opts.api_key {
        return Err(tc_error(
            "AuthFailure.SecretIdNotFound",
            "The SecretId is not found, please ensure that your SecretId is correct.",
        ));
    }
    let failure = || {
        tc_error(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature is correct.",
        )
    };
    if cred[1] != tc3_date(ts) || cred[2] != SERVICE || cred[3] != "tc3_request" {
        return Err(failure());
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"content-type") || !names.contains(&"host") {
        return Err(failure());
    }
    let values: Vec<(&str, &str)> = names.iter().map(|n| (*n, header(h, n))).collect();
    let unsigned = header(h, "x-tc-content-sha256") == "UNSIGNED-PAYLOAD";
    let payload: &[u8] = if unsigned { b"UNSIGNED-PAYLOAD" } else { body };
    let creq = canonical_request(&values, payload);
    let expected = signature(
        &signing_key(&opts.secret_key, cred[1], SERVICE),
        &string_to_sign(ts, SERVICE, &creq),
    );
    if expected != sig {
        return Err(failure());
    }
    Ok(())
}

/// The error the fault `status=S` stands for.
fn code_for_status(status: u16) -> (&'static str, &'static str) {
    match status {
        400 | 422 => ("InvalidParameter", "emulated invalid parameter"),
        401 => (
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated.",
        ),
        403 => ("UnauthorizedOperation", "emulated unauthorized operation"),
        404 => ("ResourceNotFound", "emulated resource not found"),
        429 => (
            "RequestLimitExceeded",
            "Your current request times exceeds the frequency limit. Please reduce the frequency of calls.",
        ),
        503 | 529 => (
            "FailedOperation.EngineServerLimitExceeded",
            "engine overloaded, please retry later",
        ),
        _ => ("InternalError", "An internal error has occurred."),
    }
}

/// Checks `Messages` as the API does.
fn check_messages(messages: &[Value]) -> Result<(), String> {
    if messages.is_empty() {
        return Err("Messages 不能为空".to_owned());
    }
    if messages.len() > 40 {
        return Err("Messages 的长度不能超过 40".to_owned());
    }
    let mut expect_user = true;
    for (i, m) in messages.iter().enumerate() {
        let role = m["Role"].as_str().unwrap_or("");
        let has_content = m["Content"].as_str().is_some_and(|c| !c.is_empty())
            || m["Contents"].as_array().is_some_and(|c| !c.is_empty())
            || m["ToolCalls"].as_array().is_some_and(|c| !c.is_empty());
        if !has_content {
            return Err(format!("Messages[{i}].Content 不能为空"));
        }
        match role {
            "system" if i == 0 => continue,
            "system" => return Err("system 角色只能出现在 Messages 的第一个位置".to_owned()),
            "user" | "tool" if expect_user => expect_user = false,
            "tool" if i > 0 && messages[i - 1]["Role"] == "tool" => {}
            "assistant" if !expect_user => expect_user = true,
            "user" | "tool" | "assistant" => {
                return Err(
                    "Messages 中 user(tool) 与 assistant 角色需交替出现，且以 user 开始".to_owned(),
                )
            }
            other => return Err(format!("Messages[{i}].Role `{other}` 不支持")),
        }
    }
    if expect_user {
        return Err("Messages 的最后一个元素的 Role 必须是 user 或 tool".to_owned());
    }
    Ok(())
}

async fn action(State(s): State<Arc<EmuState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = verify(&s.opts, &headers, &body) {
        return r;
    }
    let action = header(&headers, "x-tc-action");
    if action != "ChatCompletions" {
        return tc_error(
            "InvalidAction",
            &format!("The action `{action}` is not valid."),
        );
    }
    let version = header(&headers, "x-tc-version");
    if version != API_VERSION {
        return tc_error(
            "NoSuchVersion",
            &format!("The requested version `{version}` of service `hunyuan` does not exist."),
        );
    }
    let rf = match s.begin(&headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let f = &rf.faults;
    if rf.error {
        apply_latency(f).await;
        if f.rate_limit.is_some() {
            let (c, m) = code_for_status(429);
            return tc_error(c, m);
        }
        if let Some(status) = f.status {
            if let Some(b) = &f.body {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    "application/json",
                    b.clone().into_bytes(),
                );
            }
            let (c, m) = code_for_status(status);
            return tc_error(c, m);
        }
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return tc_error("InvalidParameter", "The request body is not valid JSON."),
    };
    let Some(model) = req["Model"].as_str().filter(|m| !m.is_empty()) else {
        return tc_error(
            "MissingParameter",
            "The request is missing a required parameter `Model`.",
        );
    };
    let Some(messages) = req["Messages"].as_array() else {
        return tc_error(
            "MissingParameter",
            "The request is missing a required parameter `Messages`.",
        );
    };
    if let Err(m) = check_messages(messages) {
        return tc_error("InvalidParameter", &m);
    }
    if let Some(t) = req["Temperature"].as_f64() {
        if !(0.0..=2.0).contains(&t) {
            return tc_error("InvalidParameter", "Temperature must be 2 or less");
        }
    }
    let answer = Answer::build(model, &req, messages, f.chunks);
    let stream = req["Stream"].as_bool().unwrap_or(false);
    if f.malformed {
        if stream {
            return stream_response(
                "text/event-stream",
                None,
                None,
                vec![Piece::Bytes(Bytes::from_static(
                    b"data: {\"Choices\":[\n\n",
                ))],
            );
        }
        return json_response(
            StatusCode::OK,
            "application/json",
            b"{\"Response\":".to_vec(),
        );
    }
    if !stream {
        apply_latency(f).await;
        return json_response(
            StatusCode::OK,
            "application/json",
            answer.full_body().to_string().into_bytes(),
        );
    }
    let mut r = stream_response(
        "text/event-stream",
        f.latency,
        f.chunk_interval,
        answer.stream_pieces(f.disconnect_after, f.stream_error_after),
    );
    if let Ok(v) = HeaderValue::from_str(&answer.request_id) {
        r.headers_mut().insert("x-tc-requestid", v);
    }
    r
}

struct Answer {
    id: String,
    request_id: String,
    created: i64,
    pieces: Vec<String>,
    tool_call: Option<(String, String)>,
    prompt_tokens: u64,
}

impl Answer {
    fn build(model: &str, req: &Value, messages: &[Value], chunks: Option<u32>) -> Answer {
        let texts: Vec<&str> = messages
            .iter()
            .filter_map(|m| m["Content"].as_str())
            .collect();
        let prompt_tokens = text::prompt_tokens(texts.iter().copied());
        let last = messages.last();
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["Role"] == "user")
            .and_then(|m| m["Content"].as_str())
            .unwrap_or_default();
        let tool_call = req["Tools"]
            .as_array()
            .and_then(|t| t.first())
            .filter(|_| req["ToolChoice"] != "none" && last.is_some_and(|m| m["Role"] != "tool"))
            .map(|t| {
                let f = &t["Function"];
                let schema: Value = f["Parameters"]
                    .as_str()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or(Value::Null);
                (
                    f["Name"].as_str().unwrap_or("tool").to_owned(),
                    text::example_for_schema(&schema).to_string(),
                )
            });
        let pieces = if tool_call.is_some() {
            Vec::new()
        } else {
            text::split_chunks(&text::reply_text("hunyuan", model, last_user, chunks))
        };
        let request_id = request_id();
        Answer {
            id: request_id.replace('-', ""),
            request_id,
            created: chrono::Utc::now().timestamp(),
            pieces,
            tool_call,
            prompt_tokens,
        }
    }

    fn usage(&self, upto: usize) -> Value {
        let c = text::count_tokens(&self.pieces[..upto].concat())
            + self
                .tool_call
                .as_ref()
                .map(|(n, a)| 3 + text::count_tokens(n) + text::count_tokens(a))
                .unwrap_or(0);
        json!({"PromptTokens": self.prompt_tokens, "CompletionTokens": c, "TotalTokens": self.prompt_tokens + c})
    }

    fn tool_calls(&self) -> Option<Value> {
        self.tool_call.as_ref().map(|(n, a)| {
            json!([{"Id": "call_emu0", "Type": "function", "Index": 0,
                "Function": {"Name": n, "Arguments": a}}])
        })
    }

    fn finish(&self) -> &'static str {
        if self.tool_call.is_some() {
            "tool_calls"
        } else {
            "stop"
        }
    }

    fn full_body(&self) -> Value {
        let mut message = json!({"Role": "assistant", "Content": self.pieces.concat()});
        if let Some(tc) = self.tool_calls() {
            message["ToolCalls"] = tc;
        }
        json!({"Response": {"Id": self.id, "Created": self.created, "Note": NOTE,
            "Choices": [{"Index": 0, "FinishReason": self.finish(), "Message": message}],
            "Usage": self.usage(self.pieces.len()), "RequestId": self.request_id}})
    }

    fn event(&self, delta: Value, finish: &str, upto: usize) -> Piece {
        let ev = json!({"Note": NOTE, "Choices": [{"Delta": delta, "FinishReason": finish}],
            "Created": self.created, "Id": self.id, "Usage": self.usage(upto)});
        Piece::Bytes(Bytes::from(format!("data: {ev}\n\n")))
    }

    fn stream_pieces(&self, disconnect_after: Option<u32>, error_after: Option<u32>) -> Vec<Piece> {
        let mut events = Vec::new();
        for (i, p) in self.pieces.iter().enumerate() {
            events.push(self.event(json!({"Role": "assistant", "Content": p}), "", i + 1));
        }
        let mut last = json!({"Role": "assistant", "Content": ""});
        if let Some(tc) = self.tool_calls() {
            last["ToolCalls"] = tc;
        }
        events.push(self.event(last, self.finish(), self.pieces.len()));
        let mut out = Vec::new();
        for (i, ev) in events.into_iter().enumerate() {
            if disconnect_after.is_some_and(|n| i as u32 >= n) {
                out.push(Piece::Abort);
                return out;
            }
            if error_after.is_some_and(|n| i as u32 >= n) {
                let e = json!({"Note": NOTE, "Choices": [], "Created": self.created, "Id": self.id,
                    "ErrorMsg": {"Code": 4000, "Msg": "emulated internal error"}});
                out.push(Piece::Bytes(Bytes::from(format!("data: {e}\n\n"))));
                return out;
            }
            out.push(ev);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternation_rules() {
        let m = |v: Value| v.as_array().cloned().unwrap_or_default();
        assert!(check_messages(&m(
            json!([{"Role":"system","Content":"s"},{"Role":"user","Content":"a"}])
        ))
        .is_ok());
        assert!(check_messages(&m(json!([{"Role":"user","Content":"a"},{"Role":"assistant","ToolCalls":[{"Id":"c"}],"Content":""},
            {"Role":"tool","Content":"1","ToolCallId":"c"},{"Role":"tool","Content":"2","ToolCallId":"d"}]))).is_ok());
        assert!(check_messages(&m(
            json!([{"Role":"user","Content":"a"},{"Role":"user","Content":"b"}])
        ))
        .is_err());
        assert!(check_messages(&m(
            json!([{"Role":"assistant","Content":"a"},{"Role":"user","Content":"b"}])
        ))
        .is_err());
        assert!(check_messages(&m(
            json!([{"Role":"user","Content":"a"},{"Role":"assistant","Content":"b"}])
        ))
        .is_err());
        assert!(check_messages(&m(
            json!([{"Role":"user","Content":"a"},{"Role":"system","Content":"b"}])
        ))
        .is_err());
        assert!(check_messages(&m(json!([{"Role":"user","Content":""}]))).is_err());
    }
}
