//! iFlytek Spark: the WebSocket API (URL signed with HMAC-SHA256 over host, date and
//! request line; one JSON frame out; frames with `status` 0/1/2 back, usage on the last)
//! and the HTTP OpenAI-compatible endpoint (bearer APIPassword, vendor `code` fields).
//!
//! Model → `parameter.chat.domain` and URL path (PROTOCOLS.md §11a): `lite` → `/v1.1/chat`,
//! `generalv3` (Pro) → `/v3.1/chat`, `pro-128k` → `/chat/pro-128k`, `generalv3.5` (Max) →
//! `/v3.5/chat`, `max-32k` → `/chat/max-32k`, `4.0Ultra` → `/v4.0/chat`. Catalog-style
//! aliases (`spark-lite`, `spark-max`, ...) are accepted too.
//!
//! Request shaping: system and developer messages become one leading `system` message;
//! the rest alternate user/assistant (merged, tool results as user text);
//! `temperature` is clamped into (0, 1] (0 becomes 0.01), `max_tokens` into [1, 8192];
//! `top_k` is passed on when the client sends it. Tools become `payload.functions.text`.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use tollgate_core::chat::{
    ChatChunk, ChatRequest, ChatResponse, ChunkChoice, Delta, FunctionDelta, ToolCallDelta, Usage,
};
use tollgate_core::sse::{SseEvent, SseParser};
use tollgate_core::{GatewayError, UpstreamError, UpstreamErrorKind};

use crate::aggregate::aggregate;
use crate::codec::{
    excerpt, Codec, DecodeCtx, EncodeCtx, Outbound, StreamDecoder, StreamEvent, WsRequest,
};
use crate::openai::{decode_openai_error, Flavor, OpenAiCodec};
use crate::turns::{plain_turns, system_prompt, Side};
use crate::urlenc;

/// The HTTP OpenAI-compatible endpoint's base URL.
pub const OPENAI_BASE_URL: &str = "https://spark-api-open.xf-yun.com/v1";

/// The `domain` and URL path of a model, or `None` for an unknown model.
pub fn domain_and_path(model: &str) -> Option<(&'static str, &'static str)> {
    let m = model.to_ascii_lowercase();
    let m = m.strip_prefix("spark-").unwrap_or(&m);
    Some(match m {
        "lite" | "general" => ("lite", "/v1.1/chat"),
        "generalv2" | "v2.0" => ("generalv2", "/v2.1/chat"),
        "generalv3" | "pro" | "v3.0" => ("generalv3", "/v3.1/chat"),
        "pro-128k" => ("pro-128k", "/chat/pro-128k"),
        "generalv3.5" | "max" | "v3.5" => ("generalv3.5", "/v3.5/chat"),
        "max-32k" => ("max-32k", "/chat/max-32k"),
        "4.0ultra" | "ultra" | "4.0-ultra" | "v4.0" => ("4.0Ultra", "/v4.0/chat"),
        _ => return None,
    })
}

/// The RFC 1123 date Spark signs, e.g. `Fri, 05 May 2023 10:43:39 GMT`.
pub fn http_date(now: chrono::DateTime<chrono::Utc>) -> String {
    now.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `Base64(HMAC-SHA256(api_secret, "host: H\ndate: D\nGET P HTTP/1.1"))`.
pub fn signature(api_secret: &str, host: &str, date: &str, path: &str) -> String {
    let origin = format!("host: {host}\ndate: {date}\nGET {path} HTTP/1.1");
    let mut mac = match Hmac::<Sha256>::new_from_slice(api_secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(origin.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The `authorization` query value: Base64 of the `api_key="…", algorithm=…` line.
pub fn authorization(api_key: &str, signature: &str) -> String {
    let origin = format!(
        "api_key=\"{api_key}\", algorithm=\"hmac-sha256\", headers=\"host date request-line\", signature=\"{signature}\""
    );
    base64::engine::general_purpose::STANDARD.encode(origin.as_bytes())
}

/// Splits a base URL into (scheme, host[:port], path prefix without trailing slash).
fn split_base(base: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = base.split_once("://")?;
    let (host, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    Some((scheme, host, prefix.trim_end_matches('/')))
}

/// The signed WebSocket URL for `path` under `base_url`.
pub fn signed_url(
    base_url: &str,
    path: &str,
    api_key: &str,
    api_secret: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let (scheme, host, prefix) = split_base(base_url)?;
    let scheme = match scheme {
        "https" => "wss",
        "http" => "ws",
        s => s,
    };
    let full_path = format!("{prefix}{path}");
    let date = http_date(now);
    let sig = signature(api_secret, host, &date, &full_path);
    Some(format!(
        "{scheme}://{host}{full_path}?authorization={}&date={}&host={}",
        urlenc::encode(&authorization(api_key, &sig)),
        urlenc::encode(&date),
        urlenc::encode(host)
    ))
}

/// The Spark WebSocket codec.
#[derive(Debug, Clone, Default)]
pub struct SparkCodec;

impl SparkCodec {
    pub fn new() -> Self {
        SparkCodec
    }
}

fn encode_frame(req: &ChatRequest, domain: &str, app_id: &str) -> Result<Value, GatewayError> {
    if req.has_images() {
        return Err(GatewayError::invalid_param(
            "messages",
            "Spark's chat API does not accept images",
        ));
    }
    let mut text = Vec::new();
    if let Some(s) = system_prompt(req) {
        text.push(json!({"role":"system","content": s}));
    }
    let turns = plain_turns(req);
    if turns.is_empty() {
        return Err(GatewayError::invalid_param(
            "messages",
            "Spark needs at least one user message",
        ));
    }
    for (side, t) in turns {
        let role = if side == Side::Assistant {
            "assistant"
        } else {
            "user"
        };
        text.push(json!({"role": role, "content": t}));
    }
    let mut chat = json!({"domain": domain});
    if let Some(t) = req.temperature {
        chat["temperature"] = json!(if t <= 0.0 { 0.01 } else { t.min(1.0) });
    }
    if let Some(m) = req.max_output_tokens() {
        chat["max_tokens"] = json!(m.clamp(1, 8192));
    }
    if let Some(k) = req.extra.get("top_k").and_then(Value::as_u64) {
        chat["top_k"] = json!(k.clamp(1, 6));
    }
    let uid: String = req
        .user
        .as_deref()
        .unwrap_or("tollgate")
        .chars()
        .take(32)
        .collect();
    let mut frame = json!({
        "header": {"app_id": app_id, "uid": uid},
        "parameter": {"chat": chat},
        "payload": {"message": {"text": text}},
    });
    if req.uses_tools() {
        let functions: Vec<Value> = req
            .tools
            .iter()
            .flatten()
            .map(|t| {
                json!({"name": t.function.name,
                    "description": t.function.description.clone().unwrap_or_default(),
                    "parameters": t.function.parameters.clone().unwrap_or_else(|| json!({"type":"object","properties":{}}))})
            })
            .collect();
        frame["payload"]["functions"] = json!({ "text": functions });
    }
    Ok(frame)
}

impl Codec for SparkCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let (domain, path) = domain_and_path(ctx.upstream_model).ok_or_else(|| {
            GatewayError::invalid_param(
                "model",
                &format!(
                    "Spark has no model '{}' (known: lite, generalv3, pro-128k, generalv3.5, max-32k, 4.0Ultra)",
                    ctx.upstream_model
                ),
            )
        })?;
        let c = ctx.credentials;
        let (Some(key), Some(secret)) = (c.api_key.as_ref(), c.secret_key.as_ref()) else {
            return Err(GatewayError::internal());
        };
        let app_id = c.app_id.as_deref().unwrap_or_default();
        let frame = encode_frame(req, domain, app_id)?;
        let url = signed_url(ctx.base_url, path, key.expose(), secret.expose(), ctx.now)
            .ok_or_else(GatewayError::internal)?;
        Ok(Outbound::WebSocket(WsRequest {
            url,
            headers: Vec::new(),
            frame: frame.to_string(),
        }))
    }

    /// A whole exchange at once: the frames, one per line (or one JSON value).
    fn decode(
        &self,
        status: u16,
        body: &[u8],
        ctx: &DecodeCtx,
    ) -> Result<ChatResponse, UpstreamError> {
        if status >= 400 {
            return Err(self.decode_error(status, body, None));
        }
        let mut d = SparkStream::new(ctx.clone());
        let mut events = Vec::new();
        let text = String::from_utf8_lossy(body);
        let frames: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for f in frames {
            d.feed(f.as_bytes(), &mut events)?;
        }
        d.finish(&mut events)?;
        aggregate(events, ctx)
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if let Some(code) = v["header"]["code"].as_i64().filter(|c| *c != 0) {
            let msg = v["header"]["message"].as_str().unwrap_or("Spark error");
            return frame_error(code, msg);
        }
        // A refused handshake: 401 (bad or missing signature), 403 (clock skew).
        let msg = v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| excerpt(body));
        let kind = match status {
            401 | 403 => UpstreamErrorKind::Auth,
            s => UpstreamError::kind_for_status(s),
        };
        UpstreamError::new(kind, msg)
            .with_status(status)
            .with_retry_after(retry_after)
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        _content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(SparkStream::new(ctx.clone()))
    }
}

/// The kind of a Spark error code (`header.code`, or `code` on the HTTP endpoint).
pub fn error_kind(code: i64) -> UpstreamErrorKind {
    use UpstreamErrorKind as K;
    match code {
        10013 | 10014 | 10019 | 10021 | 10022 => K::ContentFilter,
        11200 => K::QuotaExhausted,
        11201..=11203 | 10007 => K::RateLimited,
        10008 | 10110 => K::Overloaded,
        10003..=10005 | 10163 | 10404 | 10907 | 11501 => K::BadRequest,
        11500 | 10313 => K::Auth,
        10015 | 10016 => K::PermissionDenied,
        _ => K::Server,
    }
}

fn frame_error(code: i64, message: &str) -> UpstreamError {
    UpstreamError::new(error_kind(code), message.to_owned()).with_vendor_code(code.to_string())
}

#[derive(Deserialize)]
struct WireFrame {
    header: WireHeader,
    #[serde(default)]
    payload: Option<WirePayload>,
}

#[derive(Deserialize)]
struct WireHeader {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    status: Option<i64>,
}

#[derive(Deserialize)]
struct WirePayload {
    #[serde(default)]
    choices: Option<WireChoices>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoices {
    #[serde(default)]
    status: Option<i64>,
    #[serde(default)]
    text: Vec<WireText>,
}

#[derive(Deserialize)]
struct WireText {
    #[serde(default)]
    content: String,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct WireUsage {
    text: WireUsageText,
}

#[derive(Deserialize)]
struct WireUsageText {
    /// All input tokens, history included: what is billed.
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

/// Decodes Spark frames: each `feed` is one WebSocket text message.
pub struct SparkStream {
    ctx: DecodeCtx,
    sent_role: bool,
    calls: u32,
    done: bool,
}

impl SparkStream {
    pub fn new(ctx: DecodeCtx) -> Self {
        SparkStream {
            ctx,
            sent_role: false,
            calls: 0,
            done: false,
        }
    }
}

impl StreamDecoder for SparkStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        if self.done || data.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let frame: WireFrame = serde_json::from_slice(data).map_err(|e| {
            UpstreamError::protocol(format!("Spark frame is not JSON ({e}): {}", excerpt(data)))
        })?;
        if frame.header.code != 0 {
            return Err(frame_error(frame.header.code, &frame.header.message));
        }
        let id = frame
            .header
            .sid
            .clone()
            .unwrap_or_else(|| self.ctx.request_id.clone());
        let payload = frame.payload.unwrap_or(WirePayload {
            choices: None,
            usage: None,
        });
        let status = payload
            .choices
            .as_ref()
            .and_then(|c| c.status)
            .or(frame.header.status)
            .unwrap_or(1);
        let mut delta = Delta::default();
        if !self.sent_role {
            delta.role = Some("assistant".to_owned());
            self.sent_role = true;
        }
        let mut content = String::new();
        let mut calls = Vec::new();
        for t in payload.choices.into_iter().flat_map(|c| c.text) {
            content.push_str(&t.content);
            if let Some(f) = t.function_call {
                calls.push(ToolCallDelta {
                    index: self.calls,
                    id: Some(format!("call_{}_{}", self.ctx.request_id, self.calls)),
                    kind: Some("function".to_owned()),
                    function: Some(FunctionDelta {
                        name: Some(f.name),
                        arguments: Some(f.arguments),
                    }),
                });
                self.calls += 1;
            }
        }
        if !content.is_empty() {
            delta.content = Some(content);
        }
        if !calls.is_empty() {
            delta.tool_calls = Some(calls);
        }
        let finish =
            (status == 2).then(|| if self.calls > 0 { "tool_calls" } else { "stop" }.to_owned());
        if delta != Delta::default() || finish.is_some() {
            out.push(StreamEvent::Chunk(ChatChunk::single(
                &id,
                self.ctx.created,
                &self.ctx.model,
                ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: finish,
                    logprobs: None,
                },
            )));
        }
        if let Some(u) = payload.usage {
            let t = u.text;
            let completion = if t.completion_tokens == 0 {
                t.total_tokens.saturating_sub(t.prompt_tokens)
            } else {
                t.completion_tokens
            };
            out.push(StreamEvent::Usage(Usage {
                prompt_tokens: t.prompt_tokens,
                completion_tokens: completion,
                ..Usage::default()
            }));
        }
        if status == 2 {
            self.done = true;
            out.push(StreamEvent::Done);
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        Ok(())
    }
}

/// The HTTP OpenAI-compatible endpoint: OpenAI's protocol, plus `code`/`message`/`sid`
/// in bodies and events (`code != 0` is an error, even under HTTP 200).
#[derive(Debug, Clone)]
pub struct SparkHttpCodec {
    inner: OpenAiCodec,
}

impl Default for SparkHttpCodec {
    fn default() -> Self {
        SparkHttpCodec {
            inner: OpenAiCodec::new(Flavor::Compatible),
        }
    }
}

/// A vendor `code` in an HTTP-endpoint body or event, as an error.
fn http_code_error(v: &Value) -> Option<UpstreamError> {
    let code = v.get("code").and_then(Value::as_i64).filter(|c| *c != 0)?;
    let msg = v
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("Spark error");
    Some(frame_error(code, msg))
}

impl Codec for SparkHttpCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let model = domain_and_path(ctx.upstream_model)
            .map(|(d, _)| d)
            .unwrap_or(ctx.upstream_model);
        let mut req = req.clone();
        if let Some(t) = req.temperature.as_mut() {
            *t = t.clamp(0.0, 2.0);
        }
        let ctx = EncodeCtx {
            upstream_model: model,
            ..ctx.clone()
        };
        self.inner.encode(&req, &ctx)
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
        let mut v: Value = serde_json::from_slice(body)
            .map_err(|e| UpstreamError::protocol(format!("response is not JSON: {e}")))?;
        if let Some(e) = http_code_error(&v) {
            return Err(e);
        }
        // Spark's body carries `sid` but may lack OpenAI's id, created and model.
        if let Value::Object(m) = &mut v {
            let id = m
                .get("id")
                .or_else(|| m.get("sid"))
                .cloned()
                .unwrap_or_else(|| json!(ctx.request_id));
            m.insert("id".into(), id);
            m.entry("created").or_insert_with(|| json!(ctx.created));
            m.entry("model").or_insert_with(|| json!(ctx.model));
        }
        let body = serde_json::to_vec(&v).map_err(|e| UpstreamError::protocol(e.to_string()))?;
        self.inner.decode(status, &body, ctx)
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if let Some(mut e) = http_code_error(&v) {
            if status != 200 {
                e = e.with_status(status);
            }
            return e.with_retry_after(retry_after);
        }
        decode_openai_error(status, body, retry_after)
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(SparkHttpStream {
            inner: self.inner.stream_decoder(ctx, content_type),
            sse: SseParser::new(),
            finished: false,
            done: false,
        })
    }
}

/// The HTTP endpoint's stream: OpenAI's, watched for vendor error codes; ends with
/// `[DONE]`, or (if the server omits it) at EOF after a chunk with a finish reason.
struct SparkHttpStream {
    inner: Box<dyn StreamDecoder>,
    sse: SseParser,
    finished: bool,
    done: bool,
}

impl SparkHttpStream {
    fn check(&mut self, events: &[SseEvent]) -> Result<(), UpstreamError> {
        for ev in events {
            let v: Value = serde_json::from_str(ev.data.trim()).unwrap_or(Value::Null);
            if let Some(e) = http_code_error(&v) {
                return Err(e);
            }
        }
        Ok(())
    }

    fn note(&mut self, out: &[StreamEvent]) {
        for e in out {
            match e {
                StreamEvent::Done => self.done = true,
                StreamEvent::Chunk(c) if c.choices.iter().any(|c| c.finish_reason.is_some()) => {
                    self.finished = true
                }
                _ => {}
            }
        }
    }
}

impl StreamDecoder for SparkHttpStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let mut events = Vec::new();
        self.sse.feed(data, &mut events);
        self.check(&events)?;
        let start = out.len();
        self.inner.feed(data, out)?;
        self.note(&out[start..]);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let mut events = Vec::new();
        self.sse.finish(&mut events);
        self.check(&events)?;
        let start = out.len();
        self.inner.finish(out)?;
        self.note(&out[start..]);
        if self.finished && !self.done {
            out.push(StreamEvent::Done);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Credentials;
    use tollgate_core::Secret;

    fn dctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "req-1".into(),
            created: 7,
            model: "generalv3.5".into(),
        }
    }

    #[test]
    fn signs_the_official_worked_example_byte_for_byte() {
        let now = chrono::DateTime::parse_from_rfc3339("2023-05-05T10:43:39Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let date = http_date(now);
        assert_eq!(date, "Fri, 05 May 2023 10:43:39 GMT");
        let sig = signature(
            "MjlmNzkzNmZkMDQ2OTc0ZDdmNGE2ZTZi",
            "spark-api.xf-yun.com",
            &date,
            "/v1.1/chat",
        );
        assert_eq!(sig, "z5gHdu3pxVV4ADMyk467wOWDQ9q6BQzR3nfMTjc/DaQ=");
        assert_eq!(
            authorization("addd2272b6d8b7c8abdd79531420ca3b", &sig),
            "YXBpX2tleT0iYWRkZDIyNzJiNmQ4YjdjOGFiZGQ3OTUzMTQyMGNhM2IiLCBhbGdvcml0aG09ImhtYWMtc2hhMjU2IiwgaGVhZGVycz0iaG9zdCBkYXRlIHJlcXVlc3QtbGluZSIsIHNpZ25hdHVyZT0iejVnSGR1M3B4VlY0QURNeWs0Njd3T1dEUTlxNkJRelIzbmZNVGpjL0RhUT0i"
        );
        let url = signed_url(
            "wss://spark-api.xf-yun.com",
            "/v1.1/chat",
            "addd2272b6d8b7c8abdd79531420ca3b",
            "MjlmNzkzNmZkMDQ2OTc0ZDdmNGE2ZTZi",
            now,
        )
        .unwrap();
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "wss://spark-api.xf-yun.com/v1.1/chat");
        assert_eq!(
            urlenc::query_param(query, "date").as_deref(),
            Some("Fri, 05 May 2023 10:43:39 GMT")
        );
        assert_eq!(
            urlenc::query_param(query, "host").as_deref(),
            Some("spark-api.xf-yun.com")
        );
        assert_eq!(
            urlenc::query_param(query, "authorization").unwrap(),
            authorization("addd2272b6d8b7c8abdd79531420ca3b", &sig)
        );
    }

    #[test]
    fn encodes_the_frame_and_signs_host_with_port() {
        let creds = Credentials {
            api_key: Some(Secret::new("k")),
            secret_key: Some(Secret::new("s")),
            app_id: Some("app1".into()),
            access_token: None,
        };
        let ctx = EncodeCtx {
            base_url: "ws://127.0.0.1:9999",
            upstream_model: "spark-max",
            credentials: &creds,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream: true,
        };
        let req: ChatRequest = serde_json::from_value(json!({"model":"spark/spark-max","messages":[
            {"role":"user","content":"hi"},{"role":"system","content":"be brief"},{"role":"user","content":"again"}],
            "temperature":0,"max_tokens":100000,"top_k":9,"user":"u1",
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}))
        .unwrap();
        let Outbound::WebSocket(ws) = SparkCodec::new().encode(&req, &ctx).unwrap() else {
            unreachable!()
        };
        let (base, query) = ws.url.split_once('?').unwrap();
        assert_eq!(base, "ws://127.0.0.1:9999/v3.5/chat");
        let date = http_date(ctx.now);
        assert_eq!(
            urlenc::query_param(query, "authorization").unwrap(),
            authorization("k", &signature("s", "127.0.0.1:9999", &date, "/v3.5/chat"))
        );
        let frame: Value = serde_json::from_str(&ws.frame).unwrap();
        assert_eq!(
            frame,
            json!({"header":{"app_id":"app1","uid":"u1"},
                "parameter":{"chat":{"domain":"generalv3.5","temperature":0.01,"max_tokens":8192,"top_k":6}},
                "payload":{"message":{"text":[{"role":"system","content":"be brief"},{"role":"user","content":"hi\n\nagain"}]},
                    "functions":{"text":[{"name":"f","description":"","parameters":{"type":"object"}}]}}})
        );
        let bad = EncodeCtx {
            upstream_model: "gpt-4",
            ..ctx
        };
        assert_eq!(
            SparkCodec::new()
                .encode(&req, &bad)
                .unwrap_err()
                .param
                .as_deref(),
            Some("model")
        );
    }

    fn run(frames: &[&str]) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = SparkCodec::new().stream_decoder(&dctx(), None);
        let mut out = Vec::new();
        for f in frames {
            d.feed(f.as_bytes(), &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decodes_frames_usage_and_end() {
        let frames = [
            r#"{"header":{"code":0,"message":"Success","sid":"cht01","status":0},"payload":{"choices":{"status":0,"seq":0,"text":[{"content":"Hel","role":"assistant","index":0}]}}}"#,
            r#"{"header":{"code":0,"message":"Success","sid":"cht01","status":1},"payload":{"choices":{"status":1,"seq":1,"text":[{"content":"lo","role":"assistant","index":0}]}}}"#,
            r#"{"header":{"code":0,"message":"Success","sid":"cht01","status":2},"payload":{"choices":{"status":2,"seq":2,"text":[{"content":"!","role":"assistant","index":0}]},"usage":{"text":{"question_tokens":4,"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}}}"#,
        ];
        let ev = run(&frames).unwrap();
        assert_eq!(ev.last(), Some(&StreamEvent::Done));
        let r = aggregate(ev, &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"cht01","object":"chat.completion","created":7,"model":"generalv3.5",
                "choices":[{"index":0,"message":{"role":"assistant","content":"Hello!","refusal":null},"finish_reason":"stop","logprobs":null}],
                "usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14,
                    "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
        // Without the status-2 frame the stream is cut.
        let ev = run(&frames[..2]).unwrap();
        assert!(!ev.contains(&StreamEvent::Done));
        // The whole exchange at once.
        let r2 = SparkCodec::new()
            .decode(200, frames.join("\n").as_bytes(), &dctx())
            .unwrap();
        assert_eq!(r2, r);
    }

    #[test]
    fn function_call_becomes_a_tool_call() {
        let frames = [
            r#"{"header":{"code":0,"message":"Success","sid":"s","status":2},"payload":{"choices":{"status":2,"seq":0,"text":[{"content":"","role":"assistant","index":0,"content_type":"text","function_call":{"arguments":"{\"city\":\"Hefei\"}","name":"weather"}}]},"usage":{"text":{"prompt_tokens":50,"completion_tokens":10,"total_tokens":60}}}}"#,
        ];
        let r = aggregate(run(&frames).unwrap(), &dctx()).unwrap();
        let c = &r.choices[0];
        assert_eq!(c.finish_reason.as_deref(), Some("tool_calls"));
        let calls = c.message.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].id, "call_req-1_0");
        assert_eq!(calls[0].function.name, "weather");
        assert_eq!(calls[0].function.arguments, "{\"city\":\"Hefei\"}");
    }

    #[test]
    fn error_frames_and_handshake_failures_are_classified() {
        let e = run(&[r#"{"header":{"code":10013,"message":"input content audit failed","sid":"s","status":2}}"#]).unwrap_err();
        assert_eq!(
            (e.kind, e.vendor_code.as_deref()),
            (UpstreamErrorKind::ContentFilter, Some("10013"))
        );
        let e = run(&[r#"{"header":{"code":11202,"message":"qps limit","sid":"s"}}"#]).unwrap_err();
        assert_eq!(e.kind, UpstreamErrorKind::RateLimited);
        let e = run(&["not json"]).unwrap_err();
        assert_eq!(e.kind, UpstreamErrorKind::Protocol);
        for (code, kind) in [
            (10907, UpstreamErrorKind::BadRequest),
            (11500, UpstreamErrorKind::Auth),
            (10016, UpstreamErrorKind::PermissionDenied),
            (10008, UpstreamErrorKind::Overloaded),
            (11200, UpstreamErrorKind::QuotaExhausted),
            (10010, UpstreamErrorKind::Server),
        ] {
            assert_eq!(error_kind(code), kind, "{code}");
        }
        let e = SparkCodec::new().decode_error(
            401,
            br#"{"message":"HMAC signature does not match"}"#,
            None,
        );
        assert_eq!(
            (e.kind, e.status, e.message.as_str()),
            (
                UpstreamErrorKind::Auth,
                Some(401),
                "HMAC signature does not match"
            )
        );
    }

    #[test]
    fn http_endpoint_codes_and_stream_end() {
        let c = SparkHttpCodec::default();
        let body = br#"{"code":0,"message":"Success","sid":"cha000","choices":[{"message":{"role":"assistant","content":"hi"},"index":0}],"usage":{"prompt_tokens":6,"completion_tokens":42,"total_tokens":48}}"#;
        let r = c.decode(200, body, &dctx()).unwrap();
        assert_eq!(r.id, "cha000");
        assert_eq!(r.choices[0].message.content.as_deref(), Some("hi"));
        assert_eq!(r.usage.unwrap().completion_tokens, 42);
        let e = c
            .decode(
                200,
                br#"{"code":10013,"message":"audit failed","sid":"x"}"#,
                &dctx(),
            )
            .unwrap_err();
        assert_eq!(e.kind, UpstreamErrorKind::ContentFilter);
        let e = c.decode_error(
            401,
            br#"{"error":{"message":"invalid user","type":"api_error","param":null,"code":null}}"#,
            None,
        );
        assert_eq!(e.kind, UpstreamErrorKind::Auth);

        let input = "data:{\"code\":0,\"message\":\"Success\",\"sid\":\"s\",\"id\":\"s\",\"created\":1,\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"你好\"},\"index\":0}]}\n\ndata:{\"code\":0,\"message\":\"Success\",\"sid\":\"s\",\"id\":\"s\",\"created\":1,\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"index\":0,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
        for with_done in [false, true] {
            let full = if with_done {
                format!("{input}data:[DONE]\n\n")
            } else {
                input.to_owned()
            };
            for piece in 1..full.len() {
                let mut d = c.stream_decoder(&dctx(), Some("text/event-stream"));
                let mut out = Vec::new();
                for ch in full.as_bytes().chunks(piece) {
                    d.feed(ch, &mut out).unwrap();
                }
                d.finish(&mut out).unwrap();
                assert_eq!(
                    out.iter().filter(|e| **e == StreamEvent::Done).count(),
                    1,
                    "piece {piece}"
                );
                let r = aggregate(out, &dctx()).unwrap();
                assert_eq!(r.choices[0].message.content.as_deref(), Some("你好"));
            }
        }
        let mut d = c.stream_decoder(&dctx(), None);
        let mut out = Vec::new();
        let e = d
            .feed(
                b"data:{\"code\":10014,\"message\":\"output audit failed\",\"sid\":\"s\"}\n\n",
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.kind, UpstreamErrorKind::ContentFilter);
    }
}
