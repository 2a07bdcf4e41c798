//! Baidu ERNIE on Qianfan: the legacy `wenxinworkshop` API (OAuth access token in the
//! query, one URL slug per model, `system` as a top-level field, HTTP-200 error bodies,
//! `data: ` events ended by `is_end`) and the v2 OpenAI-compatible endpoint.
//!
//! Request shaping (PROTOCOLS.md §10a):
//! - `messages` must be odd in number, alternating user/assistant, starting and ending
//!   with user: system/developer messages go to `system`; consecutive same-role messages
//!   are merged with a blank line; a leading or trailing assistant turn is dropped; tool
//!   results become user text.
//! - `temperature` must lie in (0, 1]: values above 1 become 1, and 0 (or less) becomes
//!   0.01, the smallest value the API documents as accepted in practice.
//! - `penalty_score` (repetition penalty, [1, 2]) is taken from the client's own
//!   `penalty_score` if given, else derived from a positive `frequency_penalty` as
//!   `1 + frequency_penalty / 2`; `presence_penalty` has no equivalent and is dropped.
//! - `max_tokens` becomes `max_output_tokens` (at least 2, the API's minimum).

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::chat::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, FunctionCall, FunctionDelta,
    ResponseMessage, ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use tollgate_core::sse::SseEvent;
use tollgate_core::{GatewayError, Secret, UpstreamError, UpstreamErrorKind};

use crate::codec::{
    excerpt, join_url, Codec, Credentials, DecodeCtx, EncodeCtx, FetchedToken, HttpRequest,
    Outbound, StreamDecoder, StreamEvent,
};
use crate::framing::{Framed, SseOrJson};
use crate::openai::{decode_openai_error, Flavor, OpenAiCodec};
use crate::turns::{plain_turns, system_prompt, Side};
use crate::urlenc;

/// The v2 OpenAI-compatible endpoint's base URL.
pub const OPENAI_BASE_URL: &str = "https://qianfan.baidubce.com/v2";

/// The path of the chat API under the base URL; the model's slug follows.
const CHAT_PATH: &str = "rpc/2.0/ai_custom/v1/wenxinworkshop/chat";

/// The URL slug of a model: the table the API defines for the ERNIE models (matched
/// without regard to case, so catalog ids like `ernie-speed-8k` work), else the name
/// lower-cased.
pub fn endpoint_slug(model: &str) -> String {
    let lower = model.to_ascii_lowercase();
    let slug = match lower.as_str() {
        "ernie-4.0-8k" | "ernie-bot-4" => "completions_pro",
        "ernie-3.5-8k" | "ernie-bot" => "completions",
        "ernie-speed-8k" | "ernie-speed" => "ernie_speed",
        "ernie-speed-128k" => "ernie-speed-128k",
        "ernie-lite-8k" | "ernie-lite-8k-0308" => "ernie-lite-8k",
        "ernie-tiny-8k" => "ernie-tiny-8k",
        "ernie-bot-turbo" | "ernie-lite-8k-0922" => "eb-instant",
        _ => return lower,
    };
    slug.to_owned()
}

/// The legacy ERNIE codec.
#[derive(Debug, Clone, Default)]
pub struct ErnieCodec;

impl ErnieCodec {
    pub fn new() -> Self {
        ErnieCodec
    }
}

fn encode_body(req: &ChatRequest, stream: bool) -> Result<Value, GatewayError> {
    if req.has_images() {
        return Err(GatewayError::invalid_param(
            "messages",
            "ERNIE's chat API does not accept images",
        ));
    }
    let turns = plain_turns(req);
    if turns.is_empty() {
        return Err(GatewayError::invalid_param(
            "messages",
            "ERNIE needs at least one user message",
        ));
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(side, text)| {
            let role = if side == Side::Assistant {
                "assistant"
            } else {
                "user"
            };
            json!({"role": role, "content": text})
        })
        .collect();
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), Value::Bool(stream));
    if let Some(s) = system_prompt(req) {
        body.insert("system".into(), Value::String(s));
    }
    if let Some(t) = req.temperature {
        let t = if t <= 0.0 { 0.01 } else { t.min(1.0) };
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.extra.get("penalty_score").and_then(Value::as_f64) {
        body.insert("penalty_score".into(), json!(p.clamp(1.0, 2.0)));
    } else if let Some(f) = req.frequency_penalty.filter(|f| *f > 0.0) {
        body.insert(
            "penalty_score".into(),
            json!((1.0 + f / 2.0).clamp(1.0, 2.0)),
        );
    }
    if let Some(m) = req.max_output_tokens() {
        body.insert("max_output_tokens".into(), json!(m.max(2)));
    }
    if let Some(stop) = &req.stop {
        body.insert("stop".into(), json!(stop.to_vec()));
    }
    if let Some(u) = &req.user {
        body.insert("user_id".into(), json!(u));
    }
    if req.wants_json() {
        body.insert("response_format".into(), json!("json_object"));
    }
    if req.uses_tools() {
        let functions: Vec<Value> = req
            .tools
            .iter()
            .flatten()
            .map(|t| {
                let mut f = json!({"name": t.function.name,
                    "parameters": t.function.parameters.clone().unwrap_or_else(|| json!({"type":"object","properties":{}}))});
                if let Some(d) = &t.function.description {
                    f["description"] = json!(d);
                }
                f
            })
            .collect();
        body.insert("functions".into(), Value::Array(functions));
        if let Some(ToolChoice::Named { function, .. }) = &req.tool_choice {
            body.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": function.name}}),
            );
        }
    }
    for key in ["disable_search", "enable_citation", "user_setting"] {
        if let Some(v) = req.extra.get(key) {
            body.insert(key.into(), v.clone());
        }
    }
    Ok(Value::Object(body))
}

impl Codec for ErnieCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let token = ctx
            .credentials
            .access_token
            .as_ref()
            .filter(|t| !t.is_empty())
            .ok_or_else(GatewayError::internal)?;
        let body = encode_body(req, ctx.stream)?;
        let url = format!(
            "{}/{}?access_token={}",
            join_url(ctx.base_url, CHAT_PATH),
            endpoint_slug(ctx.upstream_model),
            urlenc::encode(token.expose())
        );
        Ok(Outbound::Http(HttpRequest {
            method: "POST",
            url,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: serde_json::to_vec(&body).map_err(|_| GatewayError::internal())?,
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
        if v.get("error_code").is_some() || v.get("error").is_some() {
            return Err(self.decode_error(status, body, None));
        }
        let wire: WireResponse = serde_json::from_value(v)
            .map_err(|e| UpstreamError::protocol(format!("unexpected response shape: {e}")))?;
        let tool_calls = wire.function_call.as_ref().map(|f| {
            vec![ToolCall {
                id: call_id(&ctx.request_id),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: f.name.clone(),
                    arguments: f.arguments.clone(),
                },
            }]
        });
        let mut message = ResponseMessage::assistant(Some(wire.result.clone()));
        let finish = wire.finish_reason();
        if tool_calls.is_some() {
            message.tool_calls = tool_calls;
            if wire.result.is_empty() {
                message.content = None;
            }
        }
        Ok(ChatResponse {
            id: wire.id.unwrap_or_else(|| ctx.request_id.clone()),
            object: "chat.completion".to_owned(),
            created: wire.created.unwrap_or(ctx.created),
            model: ctx.model.clone(),
            choices: vec![Choice {
                index: 0,
                message,
                finish_reason: Some(finish.to_owned()),
                logprobs: None,
            }],
            usage: wire.usage,
            system_fingerprint: None,
        })
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        decode_ernie_error(status, body, retry_after)
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(ErnieStream::new(ctx.clone(), content_type))
    }

    fn token_request(&self, base_url: &str, credentials: &Credentials) -> Option<HttpRequest> {
        let ak = credentials.api_key.as_ref()?;
        let sk = credentials.secret_key.as_ref()?;
        Some(HttpRequest {
            method: "POST",
            url: format!(
                "{}?grant_type=client_credentials&client_id={}&client_secret={}",
                join_url(base_url, "oauth/2.0/token"),
                urlenc::encode(ak.expose()),
                urlenc::encode(sk.expose())
            ),
            headers: vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("accept".to_owned(), "application/json".to_owned()),
            ],
            body: Vec::new(),
        })
    }

    fn decode_token(&self, status: u16, body: &[u8]) -> Result<FetchedToken, UpstreamError> {
        #[derive(Deserialize)]
        struct WireToken {
            #[serde(default)]
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
            #[serde(default)]
            error: Option<String>,
        }
        let wire: Option<WireToken> = serde_json::from_slice(body).ok();
        match wire {
            Some(w) if w.error.is_none() && !w.access_token.is_empty() && status < 400 => {
                Ok(FetchedToken {
                    token: Secret::new(w.access_token),
                    expires_in_secs: w.expires_in.unwrap_or(2_592_000),
                })
            }
            _ => Err(decode_ernie_error(status, body, None)),
        }
    }
}

fn call_id(request_id: &str) -> String {
    format!("call_{request_id}_0")
}

#[derive(Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    result: String,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    need_clear_history: bool,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
    #[serde(default)]
    usage: Option<Usage>,
}

impl WireResponse {
    fn finish_reason(&self) -> &'static str {
        if self.function_call.is_some() {
            "tool_calls"
        } else if self.need_clear_history {
            "content_filter"
        } else if self.is_truncated {
            "length"
        } else {
            match self.finish_reason.as_deref() {
                Some("length") => "length",
                Some("content_filter") => "content_filter",
                Some("function_call") => "tool_calls",
                _ => "stop",
            }
        }
    }
}

/// The kind of an ERNIE `error_code` (qianfan's `APIErrorCode` table).
pub fn error_kind(code: i64) -> UpstreamErrorKind {
    use UpstreamErrorKind as K;
    match code {
        110 | 111 | 13 | 14 | 15 => K::Auth,
        17 | 18 | 19 | 336501 | 336502 => K::RateLimited,
        2 | 4 | 336100 => K::Overloaded,
        6 | 336004 => K::PermissionDenied,
        336005 => K::NotFound,
        3 | 100 | 336001..=336003 | 336006..=336099 | 336101..=336105 => K::BadRequest,
        _ => K::Server,
    }
}

/// Reads any ERNIE error body: `{"error_code","error_msg"}` (HTTP 200 included), the
/// OAuth endpoint's `{"error","error_description"}`, or an OpenAI-shaped v2 error.
pub fn decode_ernie_error(status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(code) = v.get("error_code").and_then(Value::as_i64) {
        let msg = v
            .get("error_msg")
            .and_then(Value::as_str)
            .unwrap_or("ERNIE error")
            .to_owned();
        let mut e = UpstreamError::new(error_kind(code), msg)
            .with_vendor_code(code.to_string())
            .with_retry_after(retry_after);
        if status != 200 {
            e = e.with_status(status);
        }
        return e;
    }
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        let msg = v
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or(err)
            .to_owned();
        let kind = if err == "invalid_client" || status == 401 {
            UpstreamErrorKind::Auth
        } else {
            UpstreamError::kind_for_status(status.max(400))
        };
        return UpstreamError::new(kind, msg)
            .with_vendor_code(err)
            .with_status(status);
    }
    if status >= 400 {
        return decode_openai_error(status, body, retry_after);
    }
    UpstreamError::protocol(format!("unexpected ERNIE body: {}", excerpt(body)))
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(default)]
    is_end: bool,
    #[serde(flatten)]
    rest: WireResponse,
}

/// Decodes ERNIE's SSE stream, or the JSON error body sent instead of one.
pub struct ErnieStream {
    ctx: DecodeCtx,
    /// SSE, or the plain JSON error some answers to stream requests are.
    body: SseOrJson,
    sent_role: bool,
    done: bool,
}

impl ErnieStream {
    pub fn new(ctx: DecodeCtx, content_type: Option<&str>) -> Self {
        let is_json = content_type.is_some_and(|c| c.contains("json"));
        ErnieStream {
            ctx,
            body: SseOrJson::new(is_json),
            sent_role: false,
            done: false,
        }
    }

    fn handle(&mut self, ev: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let data = ev.data.trim();
        if data.is_empty() || self.done {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            UpstreamError::protocol(format!(
                "stream event is not JSON ({e}): {}",
                excerpt(data.as_bytes())
            ))
        })?;
        if v.get("error_code").is_some() {
            let mut e = decode_ernie_error(200, data.as_bytes(), None);
            e.status = None;
            return Err(e);
        }
        let wire: WireEvent = serde_json::from_value(v)
            .map_err(|e| UpstreamError::protocol(format!("unexpected event shape: {e}")))?;
        let mut delta = Delta::default();
        if !self.sent_role {
            delta.role = Some("assistant".to_owned());
            self.sent_role = true;
        }
        if !wire.rest.result.is_empty() {
            delta.content = Some(wire.rest.result.clone());
        }
        if let Some(f) = &wire.rest.function_call {
            delta.tool_calls = Some(vec![ToolCallDelta {
                index: 0,
                id: Some(call_id(&self.ctx.request_id)),
                kind: Some("function".to_owned()),
                function: Some(FunctionDelta {
                    name: Some(f.name.clone()),
                    arguments: Some(f.arguments.clone()),
                }),
            }]);
        }
        let finish = wire.is_end.then(|| wire.rest.finish_reason().to_owned());
        out.push(StreamEvent::Chunk(ChatChunk::single(
            wire.rest.id.as_deref().unwrap_or(&self.ctx.request_id),
            wire.rest.created.unwrap_or(self.ctx.created),
            &self.ctx.model,
            ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
            },
        )));
        if let Some(u) = wire.rest.usage.filter(|u| u.total_tokens() > 0) {
            out.push(StreamEvent::Usage(u));
        }
        if wire.is_end {
            self.done = true;
            out.push(StreamEvent::Done);
        }
        Ok(())
    }
}

impl StreamDecoder for ErnieStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let mut events = Vec::new();
        if let Framed::Json(body) = self.body.feed(data, &mut events) {
            return Err(decode_ernie_error(200, &body, None));
        }
        for ev in &events {
            self.handle(ev, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let mut events = Vec::new();
        if let Framed::Json(body) = self.body.finish(&mut events) {
            return Err(decode_ernie_error(200, &body, None));
        }
        for ev in &events {
            self.handle(ev, out)?;
        }
        Ok(())
    }
}

/// The v2 OpenAI-compatible endpoint: OpenAI's protocol with lower-case model ids.
#[derive(Debug, Clone)]
pub struct ErnieV2Codec {
    inner: OpenAiCodec,
}

impl Default for ErnieV2Codec {
    fn default() -> Self {
        ErnieV2Codec {
            inner: OpenAiCodec::new(Flavor::Compatible),
        }
    }
}

impl Codec for ErnieV2Codec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let model = ctx.upstream_model.to_ascii_lowercase();
        let ctx = EncodeCtx {
            upstream_model: &model,
            ..ctx.clone()
        };
        self.inner.encode(req, &ctx)
    }

    fn decode(
        &self,
        status: u16,
        body: &[u8],
        ctx: &DecodeCtx,
    ) -> Result<ChatResponse, UpstreamError> {
        self.inner.decode(status, body, ctx)
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        let mut e = decode_openai_error(status, body, retry_after);
        if e.vendor_code.as_deref() == Some("invalid_iam_token") {
            e.kind = UpstreamErrorKind::Auth;
        }
        e
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        self.inner.stream_decoder(ctx, content_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::aggregate;

    fn dctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "req-1".into(),
            created: 7,
            model: "ERNIE-Speed-8K".into(),
        }
    }

    fn creds() -> Credentials {
        Credentials {
            api_key: Some(Secret::new("ak/1")),
            secret_key: Some(Secret::new("sk+2")),
            app_id: None,
            access_token: Some(Secret::new("24.abc.2592000")),
        }
    }

    #[test]
    fn slugs() {
        for (m, s) in [
            ("ERNIE-4.0-8K", "completions_pro"),
            ("ERNIE-3.5-8K", "completions"),
            ("ERNIE-Speed-8K", "ernie_speed"),
            ("ernie-speed-8k", "ernie_speed"),
            ("ERNIE-Speed-128K", "ernie-speed-128k"),
            ("ERNIE-Lite-8K", "ernie-lite-8k"),
            ("ERNIE-Lite-8K-0308", "ernie-lite-8k"),
            ("ERNIE-Tiny-8K", "ernie-tiny-8k"),
            ("ERNIE-4.0-Turbo-8K", "ernie-4.0-turbo-8k"),
        ] {
            assert_eq!(endpoint_slug(m), s, "{m}");
        }
    }

    #[test]
    fn encodes_url_system_merged_turns_and_clamps() {
        let c = creds();
        let ctx = EncodeCtx {
            base_url: "http://127.0.0.1:9/",
            upstream_model: "ERNIE-Speed-8K",
            credentials: &c,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream: true,
        };
        let req: ChatRequest =
            serde_json::from_value(json!({"model":"ernie/ERNIE-Speed-8K","messages":[
            {"role":"system","content":"be brief"},
            {"role":"assistant","content":"hello there"},
            {"role":"user","content":"a"},{"role":"user","content":"b"},
            {"role":"assistant","content":"c"},{"role":"assistant","content":"d"},
            {"role":"user","content":"e"}],
            "temperature":0,"top_p":1.5,"frequency_penalty":1.0,"presence_penalty":1.0,
            "max_tokens":1,"stop":"x","user":"u1"}))
            .unwrap();
        let Outbound::Http(h) = ErnieCodec::new().encode(&req, &ctx).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            h.url,
            "http://127.0.0.1:9/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ernie_speed?access_token=24.abc.2592000"
        );
        let body: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(
            body,
            json!({"messages":[{"role":"user","content":"a\n\nb"},{"role":"assistant","content":"c\n\nd"},{"role":"user","content":"e"}],
                "stream":true,"system":"be brief","temperature":0.01,"top_p":1.0,"penalty_score":1.5,
                "max_output_tokens":2,"stop":["x"],"user_id":"u1"})
        );
        let none = Credentials {
            access_token: None,
            ..creds()
        };
        assert!(ErnieCodec::new()
            .encode(
                &req,
                &EncodeCtx {
                    credentials: &none,
                    ..ctx
                }
            )
            .is_err());
    }

    #[test]
    fn token_request_and_answers() {
        let r = ErnieCodec::new()
            .token_request("https://aip.baidubce.com", &creds())
            .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.url,
            "https://aip.baidubce.com/oauth/2.0/token?grant_type=client_credentials&client_id=ak%2F1&client_secret=sk%2B2"
        );
        let t = ErnieCodec::new()
            .decode_token(200, br#"{"refresh_token":"25.x","expires_in":2592000,"session_key":"s","access_token":"24.tok","scope":"a","session_secret":"b"}"#)
            .unwrap();
        assert_eq!((t.token.expose(), t.expires_in_secs), ("24.tok", 2_592_000));
        let e = ErnieCodec::new()
            .decode_token(
                401,
                br#"{"error":"invalid_client","error_description":"unknown client id"}"#,
            )
            .unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str(), e.vendor_code.as_deref()),
            (
                UpstreamErrorKind::Auth,
                "unknown client id",
                Some("invalid_client")
            )
        );
    }

    #[test]
    fn decodes_response_and_http_200_errors() {
        let body = br#"{"id":"as-1","object":"chat.completion","created":5,"result":"Hi","is_truncated":true,"need_clear_history":false,"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        let r = ErnieCodec::new().decode(200, body, &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"as-1","object":"chat.completion","created":5,"model":"ERNIE-Speed-8K",
                "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null},"finish_reason":"length","logprobs":null}],
                "usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,
                    "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
        let fc = br#"{"id":"as-2","created":5,"result":"","function_call":{"name":"f","arguments":"{\"a\":1}","thoughts":"t"},"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        let r = ErnieCodec::new().decode(200, fc, &dctx()).unwrap();
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(r.choices[0].message.content, None);
        assert_eq!(
            r.choices[0].message.tool_calls.as_ref().unwrap()[0]
                .function
                .arguments,
            "{\"a\":1}"
        );
        for (code, kind) in [
            (110, UpstreamErrorKind::Auth),
            (111, UpstreamErrorKind::Auth),
            (17, UpstreamErrorKind::RateLimited),
            (18, UpstreamErrorKind::RateLimited),
            (336501, UpstreamErrorKind::RateLimited),
            (336502, UpstreamErrorKind::RateLimited),
            (336100, UpstreamErrorKind::Overloaded),
            (336003, UpstreamErrorKind::BadRequest),
            (336006, UpstreamErrorKind::BadRequest),
            (6, UpstreamErrorKind::PermissionDenied),
            (336000, UpstreamErrorKind::Server),
        ] {
            let b = format!(r#"{{"error_code":{code},"error_msg":"m"}}"#);
            let e = ErnieCodec::new()
                .decode(200, b.as_bytes(), &dctx())
                .unwrap_err();
            assert_eq!(
                (e.kind, e.status, e.vendor_code),
                (kind, None, Some(code.to_string())),
                "{code}"
            );
        }
    }

    #[test]
    fn moderation_flag_is_a_content_filter_finish() {
        let body = br#"{"id":"as-3","created":5,"result":"I cannot answer that.","is_truncated":false,"need_clear_history":true,"ban_round":-1,"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        let r = ErnieCodec::new().decode(200, body, &dctx()).unwrap();
        assert_eq!(
            r.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"as-9\",\"object\":\"chat.completion\",\"created\":5,\"sentence_id\":0,\"is_end\":false,\"is_truncated\":false,\"result\":\"你好\",\"need_clear_history\":false,\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":0,\"total_tokens\":3}}\n\n",
        "data: {\"id\":\"as-9\",\"object\":\"chat.completion\",\"created\":5,\"sentence_id\":1,\"is_end\":true,\"is_truncated\":false,\"result\":\"！\",\"need_clear_history\":false,\"usage\":{\"prompt_tokens\":3,\"total_tokens\":9}}\n\n",
    );

    fn stream(input: &str, piece: usize, ct: &str) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = ErnieCodec::new().stream_decoder(&dctx(), Some(ct));
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn stream_in_every_split() {
        for piece in 1..STREAM.len() {
            let ev = stream(STREAM, piece, "text/event-stream").unwrap();
            assert_eq!(ev.last(), Some(&StreamEvent::Done), "piece {piece}");
            let r = aggregate(ev, &dctx()).unwrap();
            assert_eq!(r.id, "as-9");
            assert_eq!(r.choices[0].message.content.as_deref(), Some("你好！"));
            assert_eq!(r.choices[0].finish_reason.as_deref(), Some("stop"));
            let u = r.usage.unwrap();
            assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 6));
        }
        let cut = &STREAM[..STREAM.rfind("data:").unwrap()];
        assert!(!stream(cut, 7, "text/event-stream")
            .unwrap()
            .contains(&StreamEvent::Done));
    }

    #[test]
    fn json_error_instead_of_a_stream() {
        let j = r#"{"error_code":111,"error_msg":"Access token expired"}"#;
        for ct in ["application/json", "text/event-stream", "text/plain"] {
            for piece in [1, 4, 1000] {
                let e = stream(j, piece, ct).unwrap_err();
                assert_eq!(
                    (e.kind, e.vendor_code.as_deref()),
                    (UpstreamErrorKind::Auth, Some("111")),
                    "{ct} {piece}"
                );
            }
        }
    }

    #[test]
    fn v2_lowercases_the_model() {
        let c = Credentials {
            api_key: Some(Secret::new("bce-v3/ALTAK-x/y")),
            ..Default::default()
        };
        let ctx = EncodeCtx {
            base_url: OPENAI_BASE_URL,
            upstream_model: "ERNIE-4.0-8K",
            credentials: &c,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream: false,
        };
        let req: ChatRequest = serde_json::from_value(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
        )
        .unwrap();
        let Outbound::Http(h) = ErnieV2Codec::default().encode(&req, &ctx).unwrap() else {
            unreachable!()
        };
        assert_eq!(h.url, "https://qianfan.baidubce.com/v2/chat/completions");
        let body: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(body["model"], "ernie-4.0-8k");
        let e = ErnieV2Codec::default().decode_error(
            401,
            br#"{"error":{"code":"invalid_iam_token","message":"IAM Certification failed","type":"invalid_request_error"}}"#,
            None,
        );
        assert_eq!(e.kind, UpstreamErrorKind::Auth);
    }
}
