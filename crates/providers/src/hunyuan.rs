//! Tencent Hunyuan: the native Tencent Cloud API 3.0 action `ChatCompletions` (PascalCase
//! body, `X-TC-*` headers, TC3-HMAC-SHA256 signing over the exact body bytes; answers
//! wrapped in `Response`, errors as HTTP 200 `Response.Error`; an SSE stream of unwrapped
//! events with cumulative `Usage` and no `[DONE]`) and the OpenAI-compatible endpoint.
//!
//! Request shaping (PROTOCOLS.md §12a): one `system` message first (system and developer
//! messages joined); then user(/tool) and assistant turns alternate, starting with user
//! and ending with user or tool: consecutive user or assistant messages are merged, a
//! leading or trailing assistant turn is dropped. `Temperature` is clamped into [0, 2],
//! `TopP` into [0, 1], `Seed` into [1, 10000]; the API has no max-tokens field, so
//! `max_tokens` is not sent. `tool_choice: "required"` has no equivalent and becomes
//! `auto`; a named function becomes `custom` with `CustomTool`.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tollgate_core::chat::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, FunctionCall,
    FunctionDelta, Message, ResponseMessage, Role, ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use tollgate_core::sse::SseEvent;
use tollgate_core::{GatewayError, UpstreamError, UpstreamErrorKind};

use crate::codec::{
    excerpt, Codec, DecodeCtx, EncodeCtx, HttpRequest, Outbound, StreamDecoder, StreamEvent,
};
use crate::framing::{Framed, SseOrJson};
use crate::turns::{alternate, system_prompt, Side};

/// The OpenAI-compatible endpoint's base URL.
pub const OPENAI_BASE_URL: &str = "https://api.hunyuan.cloud.tencent.com/v1";

/// The API version of the `ChatCompletions` action.
pub const API_VERSION: &str = "2023-09-01";
/// The signing service name.
pub const SERVICE: &str = "hunyuan";
const CONTENT_TYPE: &str = "application/json";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    match HmacSha256::new_from_slice(key) {
        Ok(mut m) => {
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The UTC date (`YYYY-MM-DD`) of a Unix timestamp, as TC3 scopes it.
pub fn tc3_date(timestamp: i64) -> String {
    chrono::DateTime::from_timestamp(timestamp, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The canonical request of a POST to `/` with the given signed headers (in order, with
/// their values) and body. Names and values are lower-cased and trimmed, as TC3 says.
pub fn canonical_request(headers: &[(&str, &str)], body: &[u8]) -> String {
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| {
            format!(
                "{}:{}\n",
                k.to_ascii_lowercase(),
                v.trim().to_ascii_lowercase()
            )
        })
        .collect();
    let signed: Vec<String> = headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    format!(
        "POST\n/\n\n{canonical_headers}\n{}\n{}",
        signed.join(";"),
        sha256_hex(body)
    )
}

/// `kSigning`: `HMAC(HMAC(HMAC("TC3"+secret, date), service), "tc3_request")`.
pub fn signing_key(secret_key: &str, date: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    signing_key_from_date(&k_date, service)
}

/// The rest of the derivation from `kDate` on (what the CVM doc example publishes).
pub fn signing_key_from_date(k_date: &[u8], service: &str) -> Vec<u8> {
    let k_service = hmac(k_date, service.as_bytes());
    hmac(&k_service, b"tc3_request")
}

/// The string to sign for a canonical request.
pub fn string_to_sign(timestamp: i64, service: &str, canonical_request: &str) -> String {
    format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{}/{service}/tc3_request\n{}",
        tc3_date(timestamp),
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The hex signature.
pub fn signature(signing_key: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac(signing_key, string_to_sign.as_bytes()))
}

/// The `Authorization` header for a Hunyuan request signed over `content-type;host`.
pub fn authorization(
    secret_id: &str,
    secret_key: &str,
    host: &str,
    body: &[u8],
    timestamp: i64,
) -> String {
    let headers = [("content-type", CONTENT_TYPE), ("host", host)];
    let creq = canonical_request(&headers, body);
    let date = tc3_date(timestamp);
    let sig = signature(
        &signing_key(secret_key, &date, SERVICE),
        &string_to_sign(timestamp, SERVICE, &creq),
    );
    format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{date}/{SERVICE}/tc3_request, SignedHeaders=content-type;host, Signature={sig}"
    )
}

/// The host (with port, if the URL has one) of a base URL: what the client sends as
/// `Host`, and so what is signed.
pub fn host_of(base_url: &str) -> &str {
    let rest = base_url.split_once("://").map_or(base_url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The native Hunyuan codec.
#[derive(Debug, Clone, Default)]
pub struct HunyuanCodec;

impl HunyuanCodec {
    pub fn new() -> Self {
        HunyuanCodec
    }
}

fn wire_content(m: &Message, msg: &mut Map<String, Value>) {
    match &m.content {
        Some(Content::Parts(parts)) if parts.iter().any(|p| p.kind == "image_url") => {
            let contents: Vec<Value> = parts
                .iter()
                .filter_map(|p| match p.kind.as_str() {
                    "text" => {
                        Some(json!({"Type":"text","Text": p.text.clone().unwrap_or_default()}))
                    }
                    "image_url" => p
                        .image_url
                        .as_ref()
                        .map(|u| json!({"Type":"image_url","ImageUrl":{"Url": u.url}})),
                    _ => None,
                })
                .collect();
            msg.insert("Contents".into(), Value::Array(contents));
        }
        _ => {
            msg.insert("Content".into(), json!(m.text_content()));
        }
    }
}

fn encode_messages(req: &ChatRequest) -> Vec<Value> {
    let items: Vec<Map<String, Value>> = req
        .messages
        .iter()
        .filter(|m| !matches!(m.role, Role::System | Role::Developer))
        .map(|m| {
            let mut msg = Map::new();
            match m.role {
                Role::Tool | Role::Function => {
                    msg.insert("Role".into(), json!("tool"));
                    msg.insert("Content".into(), json!(m.text_content()));
                    let id = m.tool_call_id.clone().or_else(|| m.name.clone());
                    msg.insert("ToolCallId".into(), json!(id.unwrap_or_default()));
                }
                Role::Assistant => {
                    msg.insert("Role".into(), json!("assistant"));
                    msg.insert("Content".into(), json!(m.text_content()));
                    if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) {
                        let calls: Vec<Value> = calls
                            .iter()
                            .map(|c| json!({"Id": c.id, "Type": "function",
                                "Function": {"Name": c.function.name, "Arguments": c.function.arguments}}))
                            .collect();
                        msg.insert("ToolCalls".into(), Value::Array(calls));
                    }
                }
                _ => {
                    msg.insert("Role".into(), json!("user"));
                    wire_content(m, &mut msg);
                }
            }
            msg
        })
        .collect();
    let side = |m: &Map<String, Value>| match m.get("Role").and_then(Value::as_str) {
        Some("assistant") => Side::Assistant,
        Some("tool") => Side::UserKept,
        _ => Side::User,
    };
    let merged = alternate(items, side, |a, b| {
        let text = |m: &Map<String, Value>| {
            m.get("Content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (ta, tb) = (text(a), text(&b));
        if a.contains_key("Contents") || b.contains_key("Contents") {
            // Vision turns: concatenate the part lists.
            let parts = |m: &Map<String, Value>, t: String| -> Vec<Value> {
                match m.get("Contents") {
                    Some(Value::Array(p)) => p.clone(),
                    _ if t.is_empty() => Vec::new(),
                    _ => vec![json!({"Type":"text","Text": t})],
                }
            };
            let mut all = parts(a, ta);
            all.extend(parts(&b, tb));
            a.remove("Content");
            a.insert("Contents".into(), Value::Array(all));
            return;
        }
        let joined = match (ta.is_empty(), tb.is_empty()) {
            (true, _) => tb,
            (false, true) => ta,
            (false, false) => format!("{ta}\n\n{tb}"),
        };
        a.insert("Content".into(), json!(joined));
        if let Some(Value::Array(more)) = b.get("ToolCalls") {
            match a.get_mut("ToolCalls") {
                Some(Value::Array(calls)) => calls.extend(more.iter().cloned()),
                _ => {
                    a.insert("ToolCalls".into(), Value::Array(more.clone()));
                }
            }
        }
    });
    let mut out = Vec::with_capacity(merged.len() + 1);
    if let Some(s) = system_prompt(req) {
        out.push(json!({"Role":"system","Content": s}));
    }
    out.extend(merged.into_iter().map(Value::Object));
    out
}

/// The PascalCase body of a `ChatCompletions` request.
pub fn encode_body(req: &ChatRequest, model: &str, stream: bool) -> Result<Value, GatewayError> {
    let messages = encode_messages(req);
    if !messages
        .iter()
        .any(|m| m["Role"] == "user" || m["Role"] == "tool")
    {
        return Err(GatewayError::invalid_param(
            "messages",
            "Hunyuan needs at least one user message",
        ));
    }
    let mut body = Map::new();
    body.insert("Model".into(), json!(model));
    body.insert("Messages".into(), Value::Array(messages));
    body.insert("Stream".into(), json!(stream));
    if let Some(t) = req.temperature {
        body.insert("Temperature".into(), json!(t.clamp(0.0, 2.0)));
    }
    if let Some(p) = req.top_p {
        body.insert("TopP".into(), json!(p.clamp(0.0, 1.0)));
    }
    if let Some(s) = req.seed {
        body.insert("Seed".into(), json!(s.clamp(1, 10_000)));
    }
    if let Some(stop) = &req.stop {
        body.insert("Stop".into(), json!(stop.to_vec()));
    }
    if let Some(v) = req.extra.get("enable_enhancement") {
        body.insert("EnableEnhancement".into(), v.clone());
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let wire: Vec<Value> = tools
            .iter()
            .map(|t| {
                let params = t
                    .function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type":"object","properties":{}}));
                json!({"Type":"function","Function":{
                    "Name": t.function.name,
                    "Description": t.function.description.clone().unwrap_or_default(),
                    "Parameters": params.to_string()}})
            })
            .collect();
        let choice = match &req.tool_choice {
            Some(ToolChoice::Mode(m)) if m == "none" => json!("none"),
            Some(ToolChoice::Named { function, .. }) => {
                if let Some(t) = wire.iter().find(|t| t["Function"]["Name"] == function.name) {
                    body.insert("CustomTool".into(), t.clone());
                }
                json!("custom")
            }
            _ => json!("auto"),
        };
        body.insert("Tools".into(), Value::Array(wire));
        body.insert("ToolChoice".into(), choice);
    }
    Ok(Value::Object(body))
}

impl Codec for HunyuanCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let c = ctx.credentials;
        let (Some(id), Some(key)) = (c.api_key.as_ref(), c.secret_key.as_ref()) else {
            return Err(GatewayError::internal());
        };
        let body = serde_json::to_vec(&encode_body(req, ctx.upstream_model, ctx.stream)?)
            .map_err(|_| GatewayError::internal())?;
        let host = host_of(ctx.base_url);
        let ts = ctx.now.timestamp();
        let auth = authorization(id.expose(), key.expose(), host, &body, ts);
        let url = format!("{}/", ctx.base_url.trim_end_matches('/'));
        Ok(Outbound::Http(HttpRequest {
            method: "POST",
            url,
            headers: vec![
                ("content-type".to_owned(), CONTENT_TYPE.to_owned()),
                ("host".to_owned(), host.to_owned()),
                ("x-tc-action".to_owned(), "ChatCompletions".to_owned()),
                ("x-tc-version".to_owned(), API_VERSION.to_owned()),
                ("x-tc-timestamp".to_owned(), ts.to_string()),
                ("authorization".to_owned(), auth),
            ],
            body,
        }))
    }

    fn decode(
        &self,
        status: u16,
        body: &[u8],
        ctx: &DecodeCtx,
    ) -> Result<ChatResponse, UpstreamError> {
        if status >= 400 {
            return Err(self.decode_error(status, body, None));
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| UpstreamError::protocol(format!("response is not JSON: {e}")))?;
        let Some(resp) = v.get("Response") else {
            return Err(UpstreamError::protocol(format!(
                "response has no 'Response': {}",
                excerpt(body)
            )));
        };
        if resp.get("Error").is_some() {
            return Err(self.decode_error(status, body, None));
        }
        let wire: WireResponse = serde_json::from_value(resp.clone())
            .map_err(|e| UpstreamError::protocol(format!("unexpected response shape: {e}")))?;
        let choices = wire
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let m = c.message.unwrap_or_default();
                let calls: Vec<ToolCall> = m
                    .tool_calls
                    .into_iter()
                    .map(|t| ToolCall {
                        id: t.id,
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: t.function.name,
                            arguments: t.function.arguments,
                        },
                    })
                    .collect();
                let mut msg = ResponseMessage::assistant(
                    (!m.content.is_empty() || calls.is_empty()).then_some(m.content),
                );
                if !calls.is_empty() {
                    msg.tool_calls = Some(calls);
                }
                msg.reasoning_content = m.reasoning_content.filter(|r| !r.is_empty());
                Choice {
                    index: c.index.unwrap_or(i as u32),
                    message: msg,
                    finish_reason: finish_reason(&c.finish_reason)
                        .or_else(|| Some("stop".to_owned())),
                    logprobs: None,
                }
            })
            .collect();
        Ok(ChatResponse {
            id: wire
                .id
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| ctx.request_id.clone()),
            object: "chat.completion".to_owned(),
            created: wire.created.unwrap_or(ctx.created),
            model: ctx.model.clone(),
            choices,
            usage: wire.usage.map(WireUsage::canonical),
            system_fingerprint: None,
        })
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        decode_hunyuan_error(status, body, retry_after)
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(HunyuanStream::new(ctx.clone(), content_type))
    }
}

fn finish_reason(f: &str) -> Option<String> {
    match f {
        "" => None,
        "sensitive" => Some("content_filter".to_owned()),
        "tool_calls" | "function_call" => Some("tool_calls".to_owned()),
        "length" => Some("length".to_owned()),
        _ => Some("stop".to_owned()),
    }
}

/// The kind of a Tencent Cloud error code (`AuthFailure.SignatureFailure`, ...).
pub fn error_kind(code: &str) -> UpstreamErrorKind {
    use UpstreamErrorKind as K;
    let is = |p: &str| code == p || code.starts_with(&format!("{p}."));
    if is("AuthFailure") {
        K::Auth
    } else if is("RequestLimitExceeded") || is("LimitExceeded") {
        K::RateLimited
    } else if matches!(
        code,
        "FailedOperation.ServiceStopArrears"
            | "ResourceUnavailable.InArrears"
            | "ResourceUnavailable.LowBalance"
            | "ResourceInsufficient.ChargeResourceExhaust"
            | "FailedOperation.FreeResourcePackExhausted"
            | "FailedOperation.ResourcePackExhausted"
    ) {
        K::QuotaExhausted
    } else if matches!(
        code,
        "FailedOperation.ServiceNotActivated" | "FailedOperation.ServiceStop"
    ) || is("OperationDenied")
        || is("UnauthorizedOperation")
        || is("ResourceUnavailable")
    {
        K::PermissionDenied
    } else if code == "FailedOperation.EngineRequestTimeout" {
        K::Timeout
    } else if code == "FailedOperation.EngineServerLimitExceeded"
        || code == "FailedOperation.EngineServerError"
    {
        K::Overloaded
    } else if is("InvalidParameter")
        || is("InvalidParameterValue")
        || is("MissingParameter")
        || is("UnknownParameter")
        || is("InvalidAction")
        || is("UnsupportedOperation")
        || is("RequestSizeLimitExceeded")
        || is("UnsupportedProtocol")
    {
        K::BadRequest
    } else if is("ResourceNotFound") {
        K::NotFound
    } else {
        K::Server
    }
}

/// Reads `{"Response":{"Error":{"Code","Message"},"RequestId"}}` (sent with HTTP 200),
/// or whatever came with another status.
pub fn decode_hunyuan_error(status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = &v["Response"]["Error"];
    if let Some(code) = err["Code"].as_str() {
        let msg = err["Message"].as_str().unwrap_or(code).to_owned();
        let mut e = UpstreamError::new(error_kind(code), msg)
            .with_vendor_code(code)
            .with_retry_after(retry_after);
        if status != 200 {
            e = e.with_status(status);
        }
        return e;
    }
    if let Some(code) = v["ErrorMsg"]["Code"].as_i64() {
        return stream_error(
            code,
            v["ErrorMsg"]["Msg"].as_str().unwrap_or("stream error"),
        );
    }
    let msg = if body.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        excerpt(body)
    };
    let kind = if status >= 400 {
        UpstreamError::kind_for_status(status)
    } else {
        UpstreamErrorKind::Protocol
    };
    UpstreamError::new(kind, msg)
        .with_status(status)
        .with_retry_after(retry_after)
}

fn stream_error(code: i64, msg: &str) -> UpstreamError {
    let kind = if code == 4001 {
        UpstreamErrorKind::Timeout
    } else {
        UpstreamErrorKind::Server
    };
    UpstreamError::new(kind, msg.to_owned()).with_vendor_code(code.to_string())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    finish_reason: String,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    delta: Option<WireMessage>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct WireMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireToolCall {
    #[serde(default)]
    id: String,
    #[serde(default)]
    index: Option<u32>,
    function: WireFunction,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireFunction {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

impl WireUsage {
    fn canonical(self) -> Usage {
        let completion = if self.completion_tokens == 0 {
            self.total_tokens.saturating_sub(self.prompt_tokens)
        } else {
            self.completion_tokens
        };
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: completion,
            ..Usage::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireEvent {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Decodes Hunyuan's SSE stream, or the JSON error body sent instead of one.
pub struct HunyuanStream {
    ctx: DecodeCtx,
    /// SSE, or the plain JSON error some answers to stream requests are.
    body: SseOrJson,
    sent_role: bool,
    finished: bool,
}

impl HunyuanStream {
    pub fn new(ctx: DecodeCtx, content_type: Option<&str>) -> Self {
        let is_json = content_type.is_some_and(|c| c.contains("json") || c.contains("text/plain"));
        HunyuanStream {
            ctx,
            body: SseOrJson::new(is_json),
            sent_role: false,
            finished: false,
        }
    }

    fn handle(&mut self, ev: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            UpstreamError::protocol(format!(
                "stream event is not JSON ({e}): {}",
                excerpt(data.as_bytes())
            ))
        })?;
        if let Some(code) = v["ErrorMsg"]["Code"].as_i64() {
            return Err(stream_error(
                code,
                v["ErrorMsg"]["Msg"].as_str().unwrap_or("stream error"),
            ));
        }
        if v["Response"]["Error"].is_object() {
            let mut e = decode_hunyuan_error(200, data.as_bytes(), None);
            e.status = None;
            return Err(e);
        }
        let wire: WireEvent = serde_json::from_value(v)
            .map_err(|e| UpstreamError::protocol(format!("unexpected event shape: {e}")))?;
        let id = wire
            .id
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| self.ctx.request_id.clone());
        let created = wire.created.unwrap_or(self.ctx.created);
        let mut choices = Vec::new();
        for (i, c) in wire.choices.into_iter().enumerate() {
            let d = c.delta.or(c.message).unwrap_or_default();
            let mut delta = Delta::default();
            if !self.sent_role {
                delta.role = Some("assistant".to_owned());
                self.sent_role = true;
            }
            if !d.content.is_empty() {
                delta.content = Some(d.content);
            }
            delta.reasoning_content = d.reasoning_content.filter(|r| !r.is_empty());
            if !d.tool_calls.is_empty() {
                delta.tool_calls = Some(
                    d.tool_calls
                        .into_iter()
                        .enumerate()
                        .map(|(j, t)| ToolCallDelta {
                            index: t.index.unwrap_or(j as u32),
                            id: (!t.id.is_empty()).then_some(t.id),
                            kind: Some("function".to_owned()),
                            function: Some(FunctionDelta {
                                name: (!t.function.name.is_empty()).then_some(t.function.name),
                                arguments: Some(t.function.arguments),
                            }),
                        })
                        .collect(),
                );
            }
            let finish = finish_reason(&c.finish_reason);
            if finish.is_some() {
                self.finished = true;
            }
            if delta != Delta::default() || finish.is_some() {
                choices.push(ChunkChoice {
                    index: c.index.unwrap_or(i as u32),
                    delta,
                    finish_reason: finish,
                    logprobs: None,
                });
            }
        }
        if !choices.is_empty() {
            out.push(StreamEvent::Chunk(ChatChunk {
                id,
                object: "chat.completion.chunk".to_owned(),
                created,
                model: self.ctx.model.clone(),
                choices,
                system_fingerprint: None,
                usage: None,
            }));
        }
        if let Some(u) = wire.usage {
            out.push(StreamEvent::Usage(u.canonical()));
        }
        Ok(())
    }
}

impl StreamDecoder for HunyuanStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let mut events = Vec::new();
        if let Framed::Json(body) = self.body.feed(data, &mut events) {
            return Err(decode_hunyuan_error(200, &body, None));
        }
        for ev in &events {
            self.handle(ev, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let mut events = Vec::new();
        if let Framed::Json(body) = self.body.finish(&mut events) {
            return Err(decode_hunyuan_error(200, &body, None));
        }
        for ev in &events {
            self.handle(ev, out)?;
        }
        if self.finished {
            out.push(StreamEvent::Done);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::aggregate;
    use crate::codec::Credentials;
    use tollgate_core::Secret;

    fn dctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "req-1".into(),
            created: 7,
            model: "hunyuan-lite".into(),
        }
    }

    #[test]
    fn official_cvm_vector_from_kdate_on() {
        let body = br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        assert_eq!(
            sha256_hex(body),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let creq = canonical_request(
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("host", "cvm.tencentcloudapi.com"),
                ("X-TC-Action", "DescribeInstances"),
            ],
            body,
        );
        assert_eq!(
            sha256_hex(creq.as_bytes()),
            "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84"
        );
        assert_eq!(tc3_date(1551113065), "2019-02-25");
        let k_date =
            hex::decode("da98fb70dcf6b112dc21038d1eeeb3a95c74b4dcb12c1131f864f6066bd02be0")
                .unwrap();
        let k_service = hmac(&k_date, b"cvm");
        assert_eq!(
            hex::encode(&k_service),
            "8d70cbefb03939f929db64d32dc2ba89b1095620119fe3e050e2b18c5bd2752f"
        );
        let k_signing = signing_key_from_date(&k_date, "cvm");
        assert_eq!(
            hex::encode(&k_signing),
            "b596b923aad85185e2d1f6659d2a062e0a86731226e021e61bfe06f7ed05f5af"
        );
        assert_eq!(
            signature(&k_signing, &string_to_sign(1551113065, "cvm", &creq)),
            "10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f"
        );
    }

    #[test]
    fn hunyuan_vector_both_header_sets() {
        let body = br#"{"Model":"hunyuan-lite","Messages":[{"Role":"user","Content":"hi"}],"Stream":false}"#;
        assert_eq!(
            sha256_hex(body),
            "c371332eb9f59f25b54b547b7e22c0729884f1924477e3ab60706930918936c5"
        );
        let host = "hunyuan.tencentcloudapi.com";
        let key = signing_key("secretkeyEXAMPLE", "2023-11-14", SERVICE);
        let two = canonical_request(&[("content-type", CONTENT_TYPE), ("host", host)], body);
        assert_eq!(
            sha256_hex(two.as_bytes()),
            "ac399ae4c55ba2092befd98a9fc3be6d17ab30fff47d00958057939ac6d0f598"
        );
        assert_eq!(
            signature(&key, &string_to_sign(1_700_000_000, SERVICE, &two)),
            "ff2ff872a9e3b5905db92921280b7f9940b6bc73124c56c1c1e3af3e5c87b7b3"
        );
        let three = canonical_request(
            &[
                ("content-type", CONTENT_TYPE),
                ("host", host),
                ("x-tc-action", "chatcompletions"),
            ],
            body,
        );
        assert_eq!(
            sha256_hex(three.as_bytes()),
            "9942add5d3d2484393f8cf16a110b9b1890ac9fd3dc42f9ee1ef7bbe941182a3"
        );
        assert_eq!(
            signature(&key, &string_to_sign(1_700_000_000, SERVICE, &three)),
            "d4beeb1d088b762bec505fd713b14452c158c884aab9e2c2a62ab1c0e498680d"
        );
        assert_eq!(
            authorization("AKIDEXAMPLE", "secretkeyEXAMPLE", host, body, 1_700_000_000),
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/hunyuan/tc3_request, SignedHeaders=content-type;host, Signature=ff2ff872a9e3b5905db92921280b7f9940b6bc73124c56c1c1e3af3e5c87b7b3"
        );
    }

    #[test]
    fn encodes_pascal_case_alternating_and_signed() {
        let creds = Credentials {
            api_key: Some(Secret::new("AKIDEXAMPLE")),
            secret_key: Some(Secret::new("secretkeyEXAMPLE")),
            ..Default::default()
        };
        let ctx = EncodeCtx {
            base_url: "http://127.0.0.1:8123",
            upstream_model: "hunyuan-turbo",
            credentials: &creds,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream: true,
        };
        let req: ChatRequest = serde_json::from_value(json!({"model":"m","messages":[
            {"role":"assistant","content":"dropped"},
            {"role":"system","content":"sys"},
            {"role":"user","content":"a"},{"role":"user","content":"b"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"42"}],
            "temperature":2.5,"top_p":0.5,"seed":0,"stop":"x","max_tokens":10,
            "tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object"}}}],
            "tool_choice":{"type":"function","function":{"name":"f"}}}))
        .unwrap();
        let Outbound::Http(h) = HunyuanCodec::new().encode(&req, &ctx).unwrap() else {
            unreachable!()
        };
        assert_eq!(h.url, "http://127.0.0.1:8123/");
        let body: Value = serde_json::from_slice(&h.body).unwrap();
        let tool = json!({"Type":"function","Function":{"Name":"f","Description":"d","Parameters":"{\"type\":\"object\"}"}});
        assert_eq!(
            body,
            json!({"Model":"hunyuan-turbo","Stream":true,"Temperature":2.0,"TopP":0.5,"Seed":1,"Stop":["x"],
                "Messages":[{"Role":"system","Content":"sys"},{"Role":"user","Content":"a\n\nb"},
                    {"Role":"assistant","Content":"","ToolCalls":[{"Id":"c1","Type":"function","Function":{"Name":"f","Arguments":"{}"}}]},
                    {"Role":"tool","Content":"42","ToolCallId":"c1"}],
                "Tools":[tool.clone()],"ToolChoice":"custom","CustomTool":tool})
        );
        let header = |k: &str| {
            h.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(header("x-tc-action"), "ChatCompletions");
        assert_eq!(header("x-tc-version"), "2023-09-01");
        assert_eq!(header("x-tc-timestamp"), "1700000000");
        assert_eq!(header("host"), "127.0.0.1:8123");
        assert_eq!(
            header("authorization"),
            authorization(
                "AKIDEXAMPLE",
                "secretkeyEXAMPLE",
                "127.0.0.1:8123",
                &h.body,
                1_700_000_000
            )
        );
    }

    #[test]
    fn decodes_response_tool_calls_and_errors() {
        let body = r#"{"Response":{"Id":"e465","Created":1710902312,"Note":"以上内容为AI生成","Choices":[{"Index":0,"FinishReason":"tool_calls","Message":{"Role":"assistant","Content":"","ToolCalls":[{"Id":"call_x","Type":"function","Index":0,"Function":{"Name":"f","Arguments":"{}"}}]}}],"Usage":{"PromptTokens":3,"CompletionTokens":14,"TotalTokens":17},"RequestId":"r"}}"#;
        let r = HunyuanCodec::new()
            .decode(200, body.as_bytes(), &dctx())
            .unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"e465","object":"chat.completion","created":1710902312,"model":"hunyuan-lite",
                "choices":[{"index":0,"finish_reason":"tool_calls","logprobs":null,"message":{"role":"assistant","content":null,
                    "tool_calls":[{"id":"call_x","type":"function","function":{"name":"f","arguments":"{}"}}],"refusal":null}}],
                "usage":{"prompt_tokens":3,"completion_tokens":14,"total_tokens":17,
                    "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
        let err = br#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"The provided credentials could not be validated."},"RequestId":"188c"}}"#;
        let e = HunyuanCodec::new().decode(200, err, &dctx()).unwrap_err();
        assert_eq!(
            (e.kind, e.vendor_code.as_deref(), e.status),
            (
                UpstreamErrorKind::Auth,
                Some("AuthFailure.SignatureFailure"),
                None
            )
        );
        for (code, kind) in [
            ("RequestLimitExceeded", UpstreamErrorKind::RateLimited),
            ("LimitExceeded.Concurrency", UpstreamErrorKind::RateLimited),
            ("InvalidParameter", UpstreamErrorKind::BadRequest),
            ("InvalidParameterValue.Model", UpstreamErrorKind::BadRequest),
            ("MissingParameter", UpstreamErrorKind::BadRequest),
            ("ResourceNotFound.Model", UpstreamErrorKind::NotFound),
            (
                "FailedOperation.ServiceNotActivated",
                UpstreamErrorKind::PermissionDenied,
            ),
            (
                "FailedOperation.ServiceStopArrears",
                UpstreamErrorKind::QuotaExhausted,
            ),
            (
                "FailedOperation.EngineServerError",
                UpstreamErrorKind::Overloaded,
            ),
            ("FailedOperation.Unknown", UpstreamErrorKind::Server),
            ("InternalError", UpstreamErrorKind::Server),
            ("UnauthorizedOperation", UpstreamErrorKind::PermissionDenied),
            ("OperationDenied", UpstreamErrorKind::PermissionDenied),
            ("RequestSizeLimitExceeded", UpstreamErrorKind::BadRequest),
        ] {
            assert_eq!(error_kind(code), kind, "{code}");
        }
    }

    fn stream(input: &str, piece: usize, ct: &str) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = HunyuanCodec::new().stream_decoder(&dctx(), Some(ct));
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    const STREAM: &str = concat!(
        "data: {\"Note\":\"n\",\"Choices\":[{\"Delta\":{\"Role\":\"assistant\",\"Content\":\"你\"},\"FinishReason\":\"\"}],\"Created\":5,\"Id\":\"h1\",\"Usage\":{\"PromptTokens\":3,\"CompletionTokens\":1,\"TotalTokens\":4}}\n\n",
        "data: {\"Note\":\"n\",\"Choices\":[{\"Delta\":{\"Role\":\"assistant\",\"Content\":\"好\"},\"FinishReason\":\"\"}],\"Created\":5,\"Id\":\"h1\",\"Usage\":{\"PromptTokens\":3,\"CompletionTokens\":2,\"TotalTokens\":5}}\n\n",
        "data: {\"Note\":\"n\",\"Choices\":[{\"Delta\":{\"Role\":\"assistant\",\"Content\":\"\"},\"FinishReason\":\"stop\"}],\"Created\":5,\"Id\":\"h1\",\"Usage\":{\"PromptTokens\":3,\"CompletionTokens\":2,\"TotalTokens\":5}}\n\n",
    );

    #[test]
    fn stream_in_every_split() {
        for piece in 1..STREAM.len() {
            let ev = stream(STREAM, piece, "text/event-stream").unwrap();
            assert_eq!(ev.last(), Some(&StreamEvent::Done), "piece {piece}");
            let r = aggregate(ev, &dctx()).unwrap();
            assert_eq!(r.id, "h1");
            assert_eq!(r.choices[0].message.content.as_deref(), Some("你好"));
            assert_eq!(r.choices[0].finish_reason.as_deref(), Some("stop"));
            let u = r.usage.unwrap();
            assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 2));
        }
        // Cut before the final event: no Done.
        let cut = &STREAM[..STREAM.rfind("data:").unwrap()];
        assert!(!stream(cut, 9, "text/event-stream")
            .unwrap()
            .contains(&StreamEvent::Done));
    }

    #[test]
    fn stream_errors_sensitive_and_json_answers() {
        let s = "data: {\"Choices\":[{\"Delta\":{\"Role\":\"assistant\",\"Content\":\"\"},\"FinishReason\":\"sensitive\"}],\"Usage\":{\"PromptTokens\":3,\"CompletionTokens\":0,\"TotalTokens\":3}}\n\n";
        let r = aggregate(stream(s, 4, "text/event-stream").unwrap(), &dctx()).unwrap();
        assert_eq!(
            r.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
        let s = "data: {\"Choices\":[],\"ErrorMsg\":{\"Code\":4001,\"Msg\":\"model timeout\"}}\n\n";
        assert_eq!(
            stream(s, 3, "text/event-stream").unwrap_err().kind,
            UpstreamErrorKind::Timeout
        );
        let j = r#"{"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"slow down"},"RequestId":"x"}}"#;
        for ct in ["application/json", "text/event-stream"] {
            for piece in [1, 5, 1000] {
                let e = stream(j, piece, ct).unwrap_err();
                assert_eq!(e.kind, UpstreamErrorKind::RateLimited, "{ct} {piece}");
            }
        }
    }
}
