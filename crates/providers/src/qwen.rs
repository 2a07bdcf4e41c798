//! Alibaba Qwen on DashScope: the native text-generation API ([`QwenCodec`]) and the
//! OpenAI-compatible mode ([`QwenCompatibleCodec`]).
//!
//! Native API (../shared/vendors/PROTOCOLS.md §9b, checked against `dashscope==2.0.2`):
//! - `POST {base}/api/v1/services/aigc/text-generation/generation`; a request with
//!   image parts goes to `.../multimodal-generation/generation`, where every message's
//!   content is a list of `{"text"}` / `{"image"}` items.
//! - Body `{"model","input":{"messages"},"parameters":{..}}`. tollgate always asks for
//!   `result_format:"message"` (OpenAI-like `output.choices[].message`, tool calls
//!   included). A stream is asked for with the header `X-DashScope-SSE: enable` (there is
//!   no `stream` field) and always with `incremental_output:true`, so every event carries
//!   only the new text; events are decoded as deltas (a server ignoring the flag and
//!   repeating the whole text is not guessed at).
//! - Sampling: `temperature` in [0, 2), `top_p` in (0, 1): 2 becomes 1.99, a `top_p` ≥ 1
//!   becomes 0.9999 and ≤ 0 becomes 0.0001. Vendor switches a client puts in the request
//!   (`enable_search`, `search_options`, `enable_thinking`, `thinking_budget`, `top_k`,
//!   `repetition_penalty`, ...) go into `parameters`.
//! - Usage: `input_tokens`/`output_tokens` (+ `prompt_tokens_details.cached_tokens`,
//!   `output_tokens_details.reasoning_tokens`). In a stream every event carries the
//!   usage so far: each one is pushed, last wins.
//! - Stream framing: `id:N` / `event:result` / `:HTTP_STATUS/200` / `data:{..}`, no
//!   `[DONE]`; `finish_reason` is the *string* `"null"` until the last event. The stream
//!   ends at EOF, so [`StreamEvent::Done`] is pushed at the end only if a real finish
//!   reason was seen. An error in a stream is `event:error` with a flat body.
//! - Errors: flat `{"code","message","request_id"}`, classified by [`dashscope_code_kind`].
//!
//! Compatible mode (§9a): `POST {base}/compatible-mode/v1/chat/completions`, OpenAI's
//! protocol; errors `{"error":{..,"code":"DataInspectionFailed"}}` use the same table.
//!
//! Base URL: both codecs take the DashScope root (`https://dashscope.aliyuncs.com`) and
//! add their path; a base that already ends with `/api/v1` (native) or
//! `/compatible-mode/v1` (compatible) is used as it is.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::chat::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, Message,
    ResponseMessage, Role, ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use tollgate_core::sse::{SseEvent, SseParser};
use tollgate_core::{GatewayError, UpstreamError, UpstreamErrorKind};

use crate::codec::{
    excerpt, join_url, Codec, DecodeCtx, EncodeCtx, HttpRequest, Outbound, StreamDecoder,
    StreamEvent,
};
use crate::dialect::{reclassify, DialectStream, Finish};
use crate::openai::{decode_openai_error, Flavor, OpenAiCodec};

/// DashScope's native text-generation API.
#[derive(Debug, Clone, Default)]
pub struct QwenCodec;

impl QwenCodec {
    pub fn new() -> Self {
        QwenCodec
    }
}

/// Parameters a client may set in the request's unknown fields that DashScope takes.
const VENDOR_PARAMETERS: &[&str] = &[
    "enable_search",
    "search_options",
    "enable_thinking",
    "thinking_budget",
    "top_k",
    "repetition_penalty",
    "translation_options",
    "vl_high_resolution_images",
    "logprobs",
    "top_logprobs",
    "enable_code_interpreter",
];

fn native_url(base: &str, multimodal: bool) -> String {
    let root = base.trim_end_matches('/');
    let root = root.strip_suffix("/api/v1").unwrap_or(root);
    let service = if multimodal {
        "multimodal-generation"
    } else {
        "text-generation"
    };
    join_url(root, &format!("api/v1/services/aigc/{service}/generation"))
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Developer => "system",
        other => other.as_str(),
    }
}

/// One message in DashScope's shape.
fn message(m: &Message, multimodal: bool) -> Value {
    let mut out = Map::new();
    out.insert("role".into(), role_name(m.role).into());
    let content = if multimodal {
        let items: Vec<Value> = match &m.content {
            Some(Content::Text(t)) => vec![json!({"text": t})],
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| match (p.kind.as_str(), &p.text, &p.image_url) {
                    ("text", Some(t), _) => Some(json!({"text": t})),
                    ("image_url", _, Some(img)) => Some(json!({"image": img.url})),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        Value::Array(items)
    } else {
        Value::String(m.text_content())
    };
    out.insert("content".into(), content);
    if let Some(calls) = &m.tool_calls {
        out.insert(
            "tool_calls".into(),
            serde_json::to_value(calls).unwrap_or(Value::Null),
        );
    }
    if let Some(id) = &m.tool_call_id {
        out.insert("tool_call_id".into(), id.clone().into());
    }
    if let Some(n) = &m.name {
        out.insert("name".into(), n.clone().into());
    }
    Value::Object(out)
}

fn parameters(req: &ChatRequest, stream: bool) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("result_format".into(), "message".into());
    if stream {
        p.insert("incremental_output".into(), true.into());
    }
    if let Some(m) = req.max_output_tokens() {
        p.insert("max_tokens".into(), m.into());
    }
    if let Some(t) = req.temperature {
        p.insert("temperature".into(), t.clamp(0.0, 1.99).into());
    }
    if let Some(tp) = req.top_p {
        p.insert("top_p".into(), tp.clamp(0.0001, 0.9999).into());
    }
    if let Some(s) = req.seed {
        p.insert("seed".into(), s.into());
    }
    if let Some(s) = &req.stop {
        p.insert("stop".into(), json!(s.to_vec()));
    }
    if let Some(x) = req.presence_penalty {
        p.insert("presence_penalty".into(), x.into());
    }
    if let Some(n) = req.n {
        p.insert("n".into(), n.into());
    }
    if let Some(f) = &req.response_format {
        if f.kind != "text" {
            p.insert("response_format".into(), json!({"type": "json_object"}));
        }
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        p.insert(
            "tools".into(),
            serde_json::to_value(tools).unwrap_or(Value::Null),
        );
        let choice = match &req.tool_choice {
            None => None,
            Some(ToolChoice::Mode(m)) if m == "none" => Some(json!("none")),
            Some(ToolChoice::Mode(_)) => Some(json!("auto")),
            Some(ToolChoice::Named { function, .. }) => {
                Some(json!({"type": "function", "function": {"name": function.name}}))
            }
        };
        if let Some(c) = choice {
            p.insert("tool_choice".into(), c);
        }
        if let Some(par) = req.parallel_tool_calls {
            p.insert("parallel_tool_calls".into(), par.into());
        }
    }
    for k in VENDOR_PARAMETERS {
        if let Some(v) = req.extra.get(*k).filter(|v| !v.is_null()) {
            p.insert((*k).to_owned(), v.clone());
        }
    }
    p
}

impl Codec for QwenCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let multimodal = req.has_images();
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| message(m, multimodal))
            .collect();
        let body = json!({
            "model": ctx.upstream_model,
            "input": {"messages": messages},
            "parameters": parameters(req, ctx.stream),
        });
        let body = serde_json::to_vec(&body).map_err(|_| GatewayError::internal())?;
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if ctx.stream {
            headers.push(("accept".to_owned(), "text/event-stream".to_owned()));
            headers.push(("x-dashscope-sse".to_owned(), "enable".to_owned()));
        } else {
            headers.push(("accept".to_owned(), "application/json".to_owned()));
        }
        if let Some(key) = &ctx.credentials.api_key {
            headers.push((
                "authorization".to_owned(),
                format!("Bearer {}", key.expose()),
            ));
        }
        Ok(Outbound::Http(HttpRequest {
            method: "POST",
            url: native_url(ctx.base_url, multimodal),
            headers,
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
        let wire: WireResponse = serde_json::from_slice(body).map_err(|e| {
            UpstreamError::protocol(format!(
                "unexpected response shape ({e}): {}",
                excerpt(body)
            ))
        })?;
        let Some(output) = wire.output else {
            return Err(self.decode_error(status, body, None));
        };
        let choices = output
            .into_choices()
            .into_iter()
            .enumerate()
            .map(|(i, c)| Choice {
                index: i as u32,
                message: ResponseMessage {
                    role: "assistant".to_owned(),
                    content: c.message.content.and_then(content_text),
                    tool_calls: c
                        .message
                        .tool_calls
                        .filter(|t| !t.is_empty())
                        .map(|t| t.into_iter().map(WireToolCall::into_call).collect()),
                    refusal: None,
                    reasoning_content: c.message.reasoning_content.filter(|r| !r.is_empty()),
                },
                finish_reason: finish(c.finish_reason.as_deref()),
                logprobs: None,
            })
            .collect();
        Ok(ChatResponse {
            id: wire
                .request_id
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| ctx.request_id.clone()),
            object: "chat.completion".to_owned(),
            created: ctx.created,
            model: ctx.model.clone(),
            choices,
            usage: wire.usage.map(WireUsage::into_usage),
            system_fingerprint: None,
        })
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        classify(decode_openai_error(status, body, retry_after))
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        _content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(QwenStream {
            sse: SseParser::new(),
            events: Vec::new(),
            ctx: ctx.clone(),
            started: Vec::new(),
            finished: false,
        })
    }
}

/// A canonical finish reason for DashScope's (`"null"` means "not yet").
fn finish(r: Option<&str>) -> Option<String> {
    match r {
        None | Some("null") | Some("") => None,
        Some(other) => Some(other.to_owned()),
    }
}

/// Message content as text: a string, or the `text` items of a multimodal list.
fn content_text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.get("text").and_then(Value::as_str))
                .collect::<String>(),
        ),
        _ => None,
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    output: Option<WireOutput>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct WireOutput {
    #[serde(default)]
    choices: Option<Vec<WireChoice>>,
    /// `result_format:"text"`: the text and finish reason sit on `output`.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

impl WireOutput {
    fn into_choices(self) -> Vec<WireChoice> {
        match self.choices {
            Some(c) => c,
            None => vec![WireChoice {
                finish_reason: self.finish_reason,
                message: WireMessage {
                    content: self.text.map(Value::String),
                    ..Default::default()
                },
            }],
        }
    }
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    message: WireMessage,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    function: WireFunction,
}

#[derive(Deserialize, Default)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl WireToolCall {
    fn into_call(self) -> ToolCall {
        ToolCall {
            id: self.id.unwrap_or_default(),
            kind: "function".to_owned(),
            function: tollgate_core::chat::FunctionCall {
                name: self.function.name.unwrap_or_default(),
                arguments: self.function.arguments.unwrap_or_default(),
            },
        }
    }

    fn into_delta(self, position: usize) -> ToolCallDelta {
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let name = nonempty(self.function.name);
        let arguments = nonempty(self.function.arguments);
        ToolCallDelta {
            index: self.index.unwrap_or(position as u32),
            id: nonempty(self.id),
            kind: nonempty(self.kind),
            function: (name.is_some() || arguments.is_some())
                .then_some(tollgate_core::chat::FunctionDelta { name, arguments }),
        }
    }
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WireCached>,
    #[serde(default)]
    output_tokens_details: Option<WireReasoning>,
}

#[derive(Deserialize, Default)]
struct WireCached {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Deserialize, Default)]
struct WireReasoning {
    #[serde(default)]
    reasoning_tokens: u64,
}

impl WireUsage {
    fn into_usage(self) -> Usage {
        let completion = if self.output_tokens == 0 && self.total_tokens > self.input_tokens {
            self.total_tokens - self.input_tokens
        } else {
            self.output_tokens
        };
        Usage {
            prompt_tokens: self.input_tokens,
            completion_tokens: completion,
            cached_tokens: self
                .prompt_tokens_details
                .map(|d| d.cached_tokens)
                .unwrap_or(0)
                .min(self.input_tokens),
            cache_write_tokens: 0,
            reasoning_tokens: self
                .output_tokens_details
                .map(|d| d.reasoning_tokens)
                .unwrap_or(0),
            cost: None,
        }
    }
}

/// Decodes DashScope's native SSE stream.
struct QwenStream {
    sse: SseParser,
    events: Vec<SseEvent>,
    ctx: DecodeCtx,
    /// Per choice: whether its first chunk (carrying the role) was sent.
    started: Vec<bool>,
    finished: bool,
}

impl QwenStream {
    fn handle(&mut self, ev: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if ev.event.as_deref().map(str::trim) == Some("error") {
            let mut e = classify(decode_openai_error(200, data.as_bytes(), None));
            // The `:HTTP_STATUS/400` comment is not a status we were sent: the HTTP
            // status was 200. Unknown codes stay a vendor failure (Server).
            e.status = None;
            return Err(e);
        }
        let wire: WireResponse = serde_json::from_str(data).map_err(|e| {
            UpstreamError::protocol(format!(
                "stream event is not DashScope JSON ({e}): {}",
                excerpt(data.as_bytes())
            ))
        })?;
        let Some(output) = wire.output else {
            // An event with a code and no output is an error sent as a result.
            let e = classify(decode_openai_error(200, data.as_bytes(), None));
            return Err(UpstreamError { status: None, ..e });
        };
        let id = wire
            .request_id
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| self.ctx.request_id.clone());
        let mut choices = Vec::new();
        for (i, c) in output.into_choices().into_iter().enumerate() {
            while self.started.len() <= i {
                self.started.push(false);
            }
            let content = c
                .message
                .content
                .and_then(content_text)
                .filter(|s| !s.is_empty());
            let reasoning = c.message.reasoning_content.filter(|s| !s.is_empty());
            let calls: Vec<ToolCallDelta> = c
                .message
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(j, t)| t.into_delta(j))
                .collect();
            let finish_reason = finish(c.finish_reason.as_deref());
            let first = !self.started[i];
            if !(first
                || content.is_some()
                || reasoning.is_some()
                || !calls.is_empty()
                || finish_reason.is_some())
            {
                continue;
            }
            self.started[i] = true;
            self.finished |= finish_reason.is_some();
            choices.push(ChunkChoice {
                index: i as u32,
                delta: Delta {
                    role: first.then(|| "assistant".to_owned()),
                    content: content.or_else(|| first.then(String::new)),
                    reasoning_content: reasoning,
                    tool_calls: (!calls.is_empty()).then_some(calls),
                    refusal: None,
                },
                finish_reason,
                logprobs: None,
            });
        }
        if !choices.is_empty() {
            out.push(StreamEvent::Chunk(ChatChunk {
                id,
                object: "chat.completion.chunk".to_owned(),
                created: self.ctx.created,
                model: self.ctx.model.clone(),
                choices,
                system_fingerprint: None,
                usage: None,
            }));
        }
        if let Some(u) = wire.usage {
            out.push(StreamEvent::Usage(u.into_usage()));
        }
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            self.handle(ev, out)?;
        }
        Ok(())
    }
}

impl StreamDecoder for QwenStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        self.sse.feed(data, &mut self.events);
        self.drain(out)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        self.sse.finish(&mut self.events);
        self.drain(out)?;
        if self.finished {
            out.push(StreamEvent::Done);
        }
        Ok(())
    }
}

fn classify(e: UpstreamError) -> UpstreamError {
    reclassify(e, dashscope_code_kind)
}

/// DashScope's error codes as upstream error kinds.
pub fn dashscope_code_kind(code: &str) -> Option<UpstreamErrorKind> {
    use UpstreamErrorKind as K;
    Some(match code {
        "InvalidApiKey" | "invalid_api_key" => K::Auth,
        "DataInspectionFailed" | "data_inspection_failed" => K::ContentFilter,
        "Arrearage" => K::QuotaExhausted,
        "ModelNotFound" | "model_not_found" => K::NotFound,
        "RequestTimeOut" => K::Timeout,
        "ServiceUnavailable" | "ModelServingError" => K::Overloaded,
        c if c.starts_with("Throttling") || c == "limit_requests" => K::RateLimited,
        c if c.starts_with("AccessDenied") || c.starts_with("Model.AccessDenied") => {
            K::PermissionDenied
        }
        c if c.starts_with("InvalidParameter") || c == "invalid_parameter_error" => K::BadRequest,
        c if c.starts_with("InternalError") => K::Server,
        _ => return None,
    })
}

/// DashScope's OpenAI-compatible mode: OpenAI's protocol under `/compatible-mode/v1`,
/// errors read through [`dashscope_code_kind`].
#[derive(Debug, Clone)]
pub struct QwenCompatibleCodec {
    openai: OpenAiCodec,
}

impl Default for QwenCompatibleCodec {
    fn default() -> Self {
        QwenCompatibleCodec {
            openai: OpenAiCodec::new(Flavor::Compatible),
        }
    }
}

impl QwenCompatibleCodec {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Codec for QwenCompatibleCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let root = ctx.base_url.trim_end_matches('/');
        let base = if root.ends_with("/compatible-mode/v1") {
            root.to_owned()
        } else {
            join_url(root, "compatible-mode/v1")
        };
        let ctx = EncodeCtx {
            base_url: &base,
            ..ctx.clone()
        };
        self.openai.encode(req, &ctx)
    }

    fn decode(
        &self,
        status: u16,
        body: &[u8],
        ctx: &DecodeCtx,
    ) -> Result<ChatResponse, UpstreamError> {
        self.openai.decode(status, body, ctx).map_err(classify)
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        classify(decode_openai_error(status, body, retry_after))
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        _content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(DialectStream::new(
            ctx.clone(),
            |r| Finish::Reason(r.to_owned()),
            classify,
        ))
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
            model: "qwen-plus".into(),
        }
    }

    fn encode_with(codec: &dyn Codec, base: &str, v: Value, stream: bool) -> HttpRequest {
        let creds = Credentials {
            api_key: Some(Secret::new("sk-ds")),
            ..Default::default()
        };
        let ctx = EncodeCtx {
            base_url: base,
            upstream_model: "qwen-plus",
            credentials: &creds,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream,
        };
        match codec
            .encode(&serde_json::from_value(v).unwrap(), &ctx)
            .unwrap()
        {
            Outbound::Http(h) => h,
            Outbound::WebSocket(_) => unreachable!(),
        }
    }

    fn has(h: &HttpRequest, k: &str, v: &str) -> bool {
        h.headers.contains(&(k.to_owned(), v.to_owned()))
    }

    #[test]
    fn encodes_the_native_request() {
        let h = encode_with(
            &QwenCodec,
            "http://127.0.0.1:9",
            json!({"model":"qwen/qwen-plus","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":"weather?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"w","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"sunny"}],
              "stream":true,"max_tokens":100,"temperature":2,"top_p":1,"seed":3,"stop":"x",
              "tools":[{"type":"function","function":{"name":"w","parameters":{"type":"object"}}}],
              "tool_choice":"required","enable_search":true,"logit_bias":{"1":1}}),
            true,
        );
        assert_eq!(
            h.url,
            "http://127.0.0.1:9/api/v1/services/aigc/text-generation/generation"
        );
        assert!(has(&h, "x-dashscope-sse", "enable"));
        assert!(has(&h, "authorization", "Bearer sk-ds"));
        let b: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(
            b,
            json!({"model":"qwen-plus","input":{"messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":"weather?"},
                {"role":"assistant","content":"","tool_calls":[{"id":"call_1","type":"function","function":{"name":"w","arguments":"{}"}}]},
                {"role":"tool","content":"sunny","tool_call_id":"call_1"}]},
              "parameters":{"result_format":"message","incremental_output":true,"max_tokens":100,
                "temperature":1.99,"top_p":0.9999,"seed":3,"stop":["x"],
                "tools":[{"type":"function","function":{"name":"w","parameters":{"type":"object"}}}],
                "tool_choice":"auto","enable_search":true}})
        );
        // Non-stream: no SSE header, no incremental_output; a base ending /api/v1 is fine.
        let h = encode_with(
            &QwenCodec,
            "http://127.0.0.1:9/api/v1/",
            json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
            false,
        );
        assert_eq!(
            h.url,
            "http://127.0.0.1:9/api/v1/services/aigc/text-generation/generation"
        );
        assert!(!h.headers.iter().any(|(k, _)| k == "x-dashscope-sse"));
        let b: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(b["parameters"], json!({"result_format":"message"}));
    }

    #[test]
    fn images_go_to_the_multimodal_api() {
        let h = encode_with(
            &QwenCodec,
            "http://127.0.0.1:9",
            json!({"model":"m","messages":[
                {"role":"system","content":"look"},
                {"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/cat.png"}},{"type":"text","text":"what?"}]}]}),
            false,
        );
        assert_eq!(
            h.url,
            "http://127.0.0.1:9/api/v1/services/aigc/multimodal-generation/generation"
        );
        let b: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(
            b["input"]["messages"],
            json!([{"role":"system","content":[{"text":"look"}]},
                {"role":"user","content":[{"image":"https://x/cat.png"},{"text":"what?"}]}])
        );
    }

    #[test]
    fn decodes_a_native_response() {
        let body = br#"{"output":{"choices":[{"finish_reason":"tool_calls","message":{"role":"assistant","content":"",
            "tool_calls":[{"function":{"name":"get_weather","arguments":"{\"city\":\"Hangzhou\"}"},"index":0,"id":"call_f0b3","type":"function"}]}}]},
          "usage":{"total_tokens":250,"output_tokens":20,"input_tokens":230,"prompt_tokens_details":{"cached_tokens":128}},
          "request_id":"d18b7c0e-94ad-9b5e-9d4b-8a2d2f2b2e1a"}"#;
        let r = QwenCodec.decode(200, body, &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"d18b7c0e-94ad-9b5e-9d4b-8a2d2f2b2e1a","object":"chat.completion","created":7,"model":"qwen-plus",
              "choices":[{"index":0,"message":{"role":"assistant","content":"",
                "refusal":null,"tool_calls":[{"id":"call_f0b3","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Hangzhou\"}"}}]},
                "finish_reason":"tool_calls","logprobs":null}],
              "usage":{"prompt_tokens":230,"completion_tokens":20,"total_tokens":250,
                "prompt_tokens_details":{"cached_tokens":128},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
        // result_format "text" (the old default), read defensively.
        let body = br#"{"output":{"text":"Hi","finish_reason":"stop"},"usage":{"input_tokens":3,"output_tokens":1,"total_tokens":4},"request_id":"r"}"#;
        let r = QwenCodec.decode(200, body, &dctx()).unwrap();
        assert_eq!(r.choices[0].message.content.as_deref(), Some("Hi"));
        assert_eq!(r.usage.unwrap().completion_tokens, 1);
    }

    const STREAM: &str = concat!(
        "id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"\",\"reasoning_content\":\"The\",\"role\":\"assistant\"},\"finish_reason\":\"null\"}]},\"usage\":{\"total_tokens\":290,\"output_tokens\":3,\"input_tokens\":287,\"output_tokens_details\":{\"reasoning_tokens\":1}},\"request_id\":\"a195\"}\n\n",
        "id:2\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"你好\",\"role\":\"assistant\"},\"finish_reason\":\"null\"}]},\"usage\":{\"total_tokens\":292,\"output_tokens\":5,\"input_tokens\":287,\"output_tokens_details\":{\"reasoning_tokens\":1}},\"request_id\":\"a195\"}\n\n",
        "id:3\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"！\",\"role\":\"assistant\"},\"finish_reason\":\"stop\"}]},\"usage\":{\"total_tokens\":293,\"output_tokens\":6,\"input_tokens\":287,\"output_tokens_details\":{\"reasoning_tokens\":1}},\"request_id\":\"a195\"}\n\n",
    );

    fn run(input: &str, piece: usize) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = QwenCodec.stream_decoder(&dctx(), Some("text/event-stream"));
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn native_stream_at_every_split() {
        let whole = run(STREAM, STREAM.len()).unwrap();
        for piece in 1..STREAM.len() {
            assert_eq!(run(STREAM, piece).unwrap(), whole, "piece {piece}");
        }
        assert_eq!(whole.last(), Some(&StreamEvent::Done));
        let usages = whole
            .iter()
            .filter(|e| matches!(e, StreamEvent::Usage(_)))
            .count();
        assert_eq!(usages, 3);
        let r = crate::aggregate::aggregate(whole, &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"a195","object":"chat.completion","created":7,"model":"qwen-plus",
              "choices":[{"index":0,"message":{"role":"assistant","content":"你好！","reasoning_content":"The","refusal":null},
                "finish_reason":"stop","logprobs":null}],
              "usage":{"prompt_tokens":287,"completion_tokens":6,"total_tokens":293,
                "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":1}}})
        );
    }

    #[test]
    fn native_stream_tool_call_fragments() {
        let input = concat!(
            "id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"w\",\"arguments\":\"\"}}],\"role\":\"assistant\"},\"finish_reason\":\"null\"}]},\"usage\":{\"total_tokens\":20,\"output_tokens\":1,\"input_tokens\":19},\"request_id\":\"r\"}\n\n",
            "id:2\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"\",\"tool_calls\":[{\"index\":0,\"id\":\"\",\"type\":\"function\",\"function\":{\"arguments\":\"{\\\"city\\\":\"}}],\"role\":\"assistant\"},\"finish_reason\":\"null\"}]},\"usage\":{\"total_tokens\":24,\"output_tokens\":5,\"input_tokens\":19},\"request_id\":\"r\"}\n\n",
            "id:3\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"\",\"tool_calls\":[{\"index\":0,\"id\":\"\",\"type\":\"function\",\"function\":{\"arguments\":\"\\\"x\\\"}\"}}],\"role\":\"assistant\"},\"finish_reason\":\"tool_calls\"}]},\"usage\":{\"total_tokens\":27,\"output_tokens\":8,\"input_tokens\":19},\"request_id\":\"r\"}\n\n",
        );
        let r = crate::aggregate::aggregate(run(input, 11).unwrap(), &dctx()).unwrap();
        let calls = r.choices[0].message.tool_calls.clone().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (
                calls[0].id.as_str(),
                calls[0].function.name.as_str(),
                calls[0].function.arguments.as_str()
            ),
            ("call_1", "w", "{\"city\":\"x\"}")
        );
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn cut_stream_has_no_done_and_errors_are_classified() {
        let cut: String = STREAM
            .split("\n\n")
            .take(2)
            .collect::<Vec<_>>()
            .join("\n\n");
        assert!(!run(&cut, 7).unwrap().contains(&StreamEvent::Done));
        let err = "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{\"code\":\"DataInspectionFailed\",\"message\":\"Output data may contain inappropriate content.\",\"request_id\":\"r\"}\n\n";
        let e = run(err, 5).unwrap_err();
        assert_eq!(
            (e.kind, e.vendor_code.as_deref()),
            (
                UpstreamErrorKind::ContentFilter,
                Some("DataInspectionFailed")
            )
        );
    }

    #[test]
    fn native_error_codes() {
        let cases: &[(u16, &str, UpstreamErrorKind)] = &[
            (401, "InvalidApiKey", UpstreamErrorKind::Auth),
            (
                400,
                "DataInspectionFailed",
                UpstreamErrorKind::ContentFilter,
            ),
            (
                400,
                "data_inspection_failed",
                UpstreamErrorKind::ContentFilter,
            ),
            (429, "Throttling", UpstreamErrorKind::RateLimited),
            (429, "Throttling.RateQuota", UpstreamErrorKind::RateLimited),
            (
                429,
                "Throttling.AllocationQuota",
                UpstreamErrorKind::RateLimited,
            ),
            (400, "InvalidParameter", UpstreamErrorKind::BadRequest),
            (404, "ModelNotFound", UpstreamErrorKind::NotFound),
            (400, "Arrearage", UpstreamErrorKind::QuotaExhausted),
            (
                403,
                "AccessDenied.Unpurchased",
                UpstreamErrorKind::PermissionDenied,
            ),
            (500, "InternalError", UpstreamErrorKind::Server),
            (500, "InternalError.Algo", UpstreamErrorKind::Server),
        ];
        for (status, code, kind) in cases {
            let body = json!({"code":code,"message":"m","request_id":"r"}).to_string();
            let e = QwenCodec.decode_error(*status, body.as_bytes(), None);
            assert_eq!(
                (e.kind, e.vendor_code.as_deref()),
                (*kind, Some(*code)),
                "{code}"
            );
            assert_eq!(e.message, "m");
        }
    }

    #[test]
    fn compatible_mode() {
        let c = QwenCompatibleCodec::new();
        for base in [
            "http://127.0.0.1:9",
            "http://127.0.0.1:9/compatible-mode/v1/",
        ] {
            let h = encode_with(
                &c,
                base,
                json!({"model":"m","messages":[{"role":"user","content":"hi"}],"enable_search":true}),
                true,
            );
            assert_eq!(
                h.url,
                "http://127.0.0.1:9/compatible-mode/v1/chat/completions"
            );
            let b: Value = serde_json::from_slice(&h.body).unwrap();
            assert_eq!(b["enable_search"], true);
            assert_eq!(b["stream_options"], json!({"include_usage":true}));
        }
        let e = c.decode_error(
            400,
            br#"{"error":{"message":"Input data may contain inappropriate content.","type":"data_inspection_failed","param":null,"code":"data_inspection_failed"},"id":"chatcmpl-1","request_id":"r"}"#,
            None,
        );
        assert_eq!(e.kind, UpstreamErrorKind::ContentFilter);
        let e = c.decode_error(
            401,
            br#"{"error":{"message":"Incorrect API key provided. ","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"r"}"#,
            None,
        );
        assert_eq!(e.kind, UpstreamErrorKind::Auth);
    }
}
