//! Anthropic's Messages API (`POST {base}/v1/messages`), spoken upstream.
//!
//! Translation rules (../shared/vendors/PROTOCOLS.md §2):
//! - `system`/`developer` messages become the top-level `system` (a string, or text
//!   blocks when a part carries `cache_control`); roles alternate strictly, so
//!   consecutive messages of one role are merged, and `tool` messages become
//!   `tool_result` blocks of a user message.
//! - `max_tokens` is required by Anthropic: the client's cap, else [`DEFAULT_MAX_TOKENS`].
//! - `temperature` is clamped to Anthropic's [0, 1]; `stop` becomes `stop_sequences`;
//!   `user` becomes `metadata.user_id`; JSON mode (which Anthropic lacks) becomes an
//!   instruction appended to `system`.
//! - Usage: Anthropic's `input_tokens` excludes cache reads and writes, so
//!   `prompt_tokens = input + cache_creation + cache_read`.
//! - Streams are named events ending with `message_stop`; `message_delta` repeats the
//!   cumulative usage (last wins); `event: error` is a mid-stream failure.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::chat::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, FunctionCall,
    FunctionDelta, ResponseMessage, Role, ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use tollgate_core::sse::{SseEvent, SseParser};
use tollgate_core::{GatewayError, UpstreamError, UpstreamErrorKind};

use crate::codec::{
    excerpt, join_url, tool_call_input, Codec, DecodeCtx, EncodeCtx, HttpRequest, Outbound,
    StreamDecoder, StreamEvent,
};
use crate::media::parse_data_url;

/// The `anthropic-version` tollgate speaks upstream.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the client set none (Anthropic requires one). 4096 is within the
/// output limit of every current Claude model.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Request fields a client may send in `extra` that Anthropic understands as-is.
const PASSTHROUGH: &[&str] = &["top_k", "thinking", "service_tier"];

/// The Anthropic Messages codec.
#[derive(Debug, Clone, Default)]
pub struct AnthropicCodec;

impl AnthropicCodec {
    pub fn new() -> Self {
        AnthropicCodec
    }
}

/// One message being built: a role and its content blocks.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

fn bad(param: String, message: &str) -> GatewayError {
    GatewayError::invalid_param(&param, message)
}

/// A content part (`text` or `image_url`) as an Anthropic block.
fn part_block(p: &tollgate_core::chat::ContentPart, param: String) -> Result<Value, GatewayError> {
    let mut block = match p.kind.as_str() {
        "text" => json!({"type": "text", "text": p.text.clone().unwrap_or_default()}),
        "image_url" => {
            let url = p.image_url.as_ref().map(|u| u.url.as_str()).unwrap_or("");
            if let Some((mime, data)) = parse_data_url(url) {
                json!({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}})
            } else if url.starts_with("http://") || url.starts_with("https://") {
                json!({"type": "image", "source": {"type": "url", "url": url}})
            } else {
                return Err(bad(
                    format!("{param}.image_url.url"),
                    "an image must be an http(s) URL or a base64 data: URL",
                ));
            }
        }
        other => {
            return Err(bad(
                format!("{param}.type"),
                &format!("content parts of type '{other}' cannot be sent to Anthropic"),
            ))
        }
    };
    if let Some(cc) = p.extra.get("cache_control") {
        block["cache_control"] = cc.clone();
    }
    Ok(block)
}

fn content_blocks(content: &Option<Content>, param: &str) -> Result<Vec<Value>, GatewayError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Content::Text(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| part_block(p, format!("{param}.content[{j}]")))
            .collect(),
    }
}

/// Builds the Anthropic request body (without `stream`).
fn encode_body(req: &ChatRequest, model: &str) -> Result<Value, GatewayError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(bad(
            "n".into(),
            "Anthropic returns one choice; 'n' must be 1",
        ));
    }
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                let blocks = content_blocks(&m.content, &param)?;
                if blocks.iter().any(|b| b["type"] != "text") {
                    return Err(bad(
                        format!("{param}.content"),
                        "a system message may only contain text",
                    ));
                }
                system.extend(blocks);
                continue;
            }
            Role::User => ("user", content_blocks(&m.content, &param)?),
            Role::Assistant => {
                let mut blocks = content_blocks(&m.content, &param)?;
                for (j, tc) in m.tool_calls.iter().flatten().enumerate() {
                    let input = tool_call_input(&tc.function.arguments, &param, j)?;
                    blocks.push(json!({"type": "tool_use", "id": tc.id, "name": tc.function.name, "input": input}));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let id = m.tool_call_id.clone().unwrap_or_default();
                let mut block = json!({"type": "tool_result", "tool_use_id": id});
                let text = m.text_content();
                if !text.is_empty() {
                    block["content"] = json!(text);
                }
                ("user", vec![block])
            }
            Role::Function => {
                return Err(bad(
                    format!("{param}.role"),
                    "the legacy 'function' role is not supported; use 'tool'",
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(t) if t.role == role => t.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    if turns.is_empty() {
        return Err(bad(
            "messages".into(),
            "Anthropic needs at least one user or assistant message",
        ));
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|t| {
            // A lone plain text block reads better as a string, as Anthropic's docs write it.
            let single_text = t.blocks.len() == 1
                && t.blocks[0]["type"] == "text"
                && t.blocks[0].get("cache_control").is_none();
            let content = if single_text {
                t.blocks[0]["text"].clone()
            } else {
                Value::Array(t.blocks)
            };
            json!({"role": t.role, "content": content})
        })
        .collect();

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if req.wants_json() {
        let mut hint = "Respond with a single JSON object and nothing else.".to_owned();
        if let Some(schema) = req
            .response_format
            .as_ref()
            .and_then(|f| f.json_schema.as_ref())
            .and_then(|s| s.get("schema"))
        {
            hint.push_str(&format!(" It must conform to this JSON schema: {schema}"));
        }
        system.push(json!({"type": "text", "text": hint}));
    }
    if !system.is_empty() {
        let cached = system.iter().any(|b| b.get("cache_control").is_some());
        let texts: Vec<&str> = system.iter().filter_map(|b| b["text"].as_str()).collect();
        if cached {
            body.insert("system".into(), Value::Array(system));
        } else {
            body.insert("system".into(), json!(texts.join("\n\n")));
        }
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = &req.stop {
        let v = stop.to_vec();
        if !v.is_empty() {
            body.insert("stop_sequences".into(), json!(v));
        }
    }
    let mut metadata = req
        .extra
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(u) = &req.user {
        metadata.insert("user_id".into(), json!(u));
    }
    metadata.retain(|k, _| k == "user_id");
    if !metadata.is_empty() {
        body.insert("metadata".into(), Value::Object(metadata));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut schema = t
                    .function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                if schema.get("type").is_none() {
                    schema["type"] = json!("object");
                }
                let mut tool = json!({"name": t.function.name, "input_schema": schema});
                if let Some(d) = &t.function.description {
                    tool["description"] = json!(d);
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        let mut choice = match &req.tool_choice {
            None => json!({"type": "auto"}),
            Some(ToolChoice::Mode(m)) => match m.as_str() {
                "required" => json!({"type": "any"}),
                "none" => json!({"type": "none"}),
                _ => json!({"type": "auto"}),
            },
            Some(ToolChoice::Named { function, .. }) => {
                json!({"type": "tool", "name": function.name})
            }
        };
        if req.parallel_tool_calls == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        if req.tool_choice.is_some() || req.parallel_tool_calls == Some(false) {
            body.insert("tool_choice".into(), choice);
        }
    }
    for k in PASSTHROUGH {
        if let Some(v) = req.extra.get(*k).filter(|v| !v.is_null()) {
            body.insert((*k).into(), v.clone());
        }
    }
    Ok(Value::Object(body))
}

impl Codec for AnthropicCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let mut body = encode_body(req, ctx.upstream_model)?;
        if ctx.stream {
            body["stream"] = json!(true);
        }
        let body = serde_json::to_vec(&body).map_err(|_| GatewayError::internal())?;
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            (
                "accept".to_owned(),
                if ctx.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                }
                .to_owned(),
            ),
            ("anthropic-version".to_owned(), API_VERSION.to_owned()),
        ];
        if let Some(key) = &ctx.credentials.api_key {
            headers.push(("x-api-key".to_owned(), key.expose().to_owned()));
        }
        Ok(Outbound::Http(HttpRequest {
            method: "POST",
            url: join_url(ctx.base_url, "v1/messages"),
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
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| UpstreamError::protocol(format!("response is not JSON: {e}")))?;
        if v["type"] == "error" {
            return Err(self.decode_error(status, body, None));
        }
        let msg: WireMessage = serde_json::from_value(v)
            .map_err(|e| UpstreamError::protocol(format!("unexpected response shape: {e}")))?;
        let mut text: Option<String> = None;
        let mut reasoning: Option<String> = None;
        let mut calls = Vec::new();
        for b in msg.content {
            match b {
                WireBlock::Text { text: t } => text.get_or_insert_with(String::new).push_str(&t),
                WireBlock::Thinking { thinking } => reasoning
                    .get_or_insert_with(String::new)
                    .push_str(&thinking),
                WireBlock::ToolUse { id, name, input } => calls.push(ToolCall {
                    id,
                    kind: "function".to_owned(),
                    function: FunctionCall {
                        name,
                        arguments: input.to_string(),
                    },
                }),
                WireBlock::Other => {}
            }
        }
        let mut message = ResponseMessage::assistant(text);
        message.reasoning_content = reasoning;
        if !calls.is_empty() {
            message.tool_calls = Some(calls);
        }
        Ok(ChatResponse {
            id: if msg.id.is_empty() {
                ctx.request_id.clone()
            } else {
                msg.id
            },
            object: "chat.completion".to_owned(),
            created: ctx.created,
            model: if msg.model.is_empty() {
                ctx.model.clone()
            } else {
                msg.model
            },
            choices: vec![Choice {
                index: 0,
                message,
                finish_reason: Some(finish_reason(msg.stop_reason.as_deref()).to_owned()),
                logprobs: None,
            }],
            usage: msg.usage.map(|u| u.to_usage()),
            system_fingerprint: None,
        })
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        decode_anthropic_error(Some(status), body, retry_after)
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        _content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(AnthropicStream::new(ctx.clone()))
    }
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// The classification of an Anthropic `error.type`.
fn kind_for_type(etype: &str) -> Option<UpstreamErrorKind> {
    use UpstreamErrorKind as K;
    Some(match etype {
        "invalid_request_error" | "request_too_large" => K::BadRequest,
        "authentication_error" => K::Auth,
        "billing_error" => K::QuotaExhausted,
        "permission_error" => K::PermissionDenied,
        "not_found_error" => K::NotFound,
        "rate_limit_error" => K::RateLimited,
        "overloaded_error" => K::Overloaded,
        "timeout_error" => K::Timeout,
        "api_error" => K::Server,
        _ => return None,
    })
}

/// Reads `{"type":"error","error":{"type","message"}}`. `status` is `None` for an
/// `event: error` inside a stream (HTTP said 200).
pub fn decode_anthropic_error(
    status: Option<u16>,
    body: &[u8],
    retry_after: Option<u64>,
) -> UpstreamError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = &v["error"];
    let etype = err["type"].as_str().unwrap_or_default();
    let message = err["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| match status {
            Some(s) if body.is_empty() => format!("HTTP {s} with an empty body"),
            _ => excerpt(body),
        });
    let kind = kind_for_type(etype).unwrap_or_else(|| match status {
        Some(s) => UpstreamError::kind_for_status(s),
        None => UpstreamErrorKind::Server,
    });
    let mut e = UpstreamError::new(kind, message).with_retry_after(retry_after);
    if let Some(s) = status {
        e = e.with_status(s);
    }
    if !etype.is_empty() {
        e = e.with_vendor_code(etype);
    }
    e
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Anthropic usage; every field may be absent or `null` (message_delta repeats some).
#[derive(Deserialize, Default, Debug, Clone)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    fn to_usage(&self) -> Usage {
        let input = self.input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        let read = self.cache_read_input_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: input + write + read,
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: 0,
            cost: None,
        }
    }

    /// Fields present in `newer` replace ours (cumulative counts: last wins).
    fn merge(&mut self, newer: &WireUsage) {
        let pick = |old: &mut Option<u64>, new: Option<u64>| {
            if new.is_some() {
                *old = new;
            }
        };
        pick(&mut self.input_tokens, newer.input_tokens);
        pick(&mut self.output_tokens, newer.output_tokens);
        pick(
            &mut self.cache_creation_input_tokens,
            newer.cache_creation_input_tokens,
        );
        pick(
            &mut self.cache_read_input_tokens,
            newer.cache_read_input_tokens,
        );
    }
}

/// What one content block of the stream is.
#[derive(Clone, Copy)]
enum OpenBlock {
    Text,
    Thinking,
    /// A tool_use block, with its OpenAI tool-call index.
    Tool(u32),
    Other,
}

/// Decodes Anthropic's named-event stream.
pub struct AnthropicStream {
    sse: SseParser,
    events: Vec<SseEvent>,
    ctx: DecodeCtx,
    id: String,
    model: String,
    usage: WireUsage,
    /// Content block index → what it is.
    blocks: Vec<(u64, OpenBlock)>,
    tools: u32,
    done: bool,
}

impl AnthropicStream {
    pub fn new(ctx: DecodeCtx) -> Self {
        AnthropicStream {
            sse: SseParser::new(),
            events: Vec::new(),
            id: ctx.request_id.clone(),
            model: ctx.model.clone(),
            ctx,
            usage: WireUsage::default(),
            blocks: Vec::new(),
            tools: 0,
            done: false,
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> StreamEvent {
        StreamEvent::Chunk(ChatChunk::single(
            &self.id,
            self.ctx.created,
            &self.model,
            ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(str::to_owned),
                logprobs: None,
            },
        ))
    }

    fn block(&self, index: u64) -> OpenBlock {
        self.blocks
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| *b)
            .unwrap_or(OpenBlock::Other)
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
        let name = ev
            .event
            .clone()
            .or_else(|| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match name.as_str() {
            "message_start" => {
                let m = &v["message"];
                if let Some(id) = m["id"].as_str().filter(|s| !s.is_empty()) {
                    self.id = id.to_owned();
                }
                if let Some(model) = m["model"].as_str().filter(|s| !s.is_empty()) {
                    self.model = model.to_owned();
                }
                if let Ok(u) = serde_json::from_value::<WireUsage>(m["usage"].clone()) {
                    self.usage.merge(&u);
                    out.push(StreamEvent::Usage(self.usage.to_usage()));
                }
                out.push(self.chunk(
                    Delta {
                        role: Some("assistant".to_owned()),
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                ));
            }
            "content_block_start" => {
                let index = v["index"].as_u64().unwrap_or(0);
                let b = &v["content_block"];
                let kind = match b["type"].as_str().unwrap_or_default() {
                    "text" => {
                        if let Some(t) = b["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(self.chunk(
                                Delta {
                                    content: Some(t.to_owned()),
                                    ..Delta::default()
                                },
                                None,
                            ));
                        }
                        OpenBlock::Text
                    }
                    "thinking" => OpenBlock::Thinking,
                    "tool_use" => {
                        let ti = self.tools;
                        self.tools += 1;
                        // Input arrives as input_json_delta; a non-empty start input
                        // (rare) is sent whole.
                        let start_args = match &b["input"] {
                            Value::Object(m) if !m.is_empty() => b["input"].to_string(),
                            _ => String::new(),
                        };
                        out.push(self.chunk(
                            Delta {
                                tool_calls: Some(vec![ToolCallDelta {
                                    index: ti,
                                    id: b["id"].as_str().map(str::to_owned),
                                    kind: Some("function".to_owned()),
                                    function: Some(FunctionDelta {
                                        name: b["name"].as_str().map(str::to_owned),
                                        arguments: Some(start_args),
                                    }),
                                }]),
                                ..Delta::default()
                            },
                            None,
                        ));
                        OpenBlock::Tool(ti)
                    }
                    _ => OpenBlock::Other,
                };
                self.blocks.push((index, kind));
            }
            "content_block_delta" => {
                let index = v["index"].as_u64().unwrap_or(0);
                let d = &v["delta"];
                let delta = match (d["type"].as_str().unwrap_or_default(), self.block(index)) {
                    ("text_delta", _) => Delta {
                        content: d["text"].as_str().map(str::to_owned),
                        ..Delta::default()
                    },
                    ("thinking_delta", _) => Delta {
                        reasoning_content: d["thinking"].as_str().map(str::to_owned),
                        ..Delta::default()
                    },
                    ("input_json_delta", OpenBlock::Tool(ti)) => {
                        let part = d["partial_json"].as_str().unwrap_or_default();
                        if part.is_empty() {
                            return Ok(());
                        }
                        Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: ti,
                                id: None,
                                kind: None,
                                function: Some(FunctionDelta {
                                    name: None,
                                    arguments: Some(part.to_owned()),
                                }),
                            }]),
                            ..Delta::default()
                        }
                    }
                    _ => return Ok(()),
                };
                out.push(self.chunk(delta, None));
            }
            "message_delta" => {
                if let Ok(u) = serde_json::from_value::<WireUsage>(v["usage"].clone()) {
                    self.usage.merge(&u);
                }
                if let Some(reason) = v["delta"]["stop_reason"].as_str() {
                    out.push(self.chunk(Delta::default(), Some(finish_reason(Some(reason)))));
                }
                out.push(StreamEvent::Usage(self.usage.to_usage()));
            }
            "message_stop" => {
                self.done = true;
                out.push(StreamEvent::Done);
            }
            "error" => return Err(decode_anthropic_error(None, data.as_bytes(), None)),
            // ping, content_block_stop, and event types added later.
            _ => {}
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

impl StreamDecoder for AnthropicStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        self.sse.feed(data, &mut self.events);
        self.drain(out)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        self.sse.finish(&mut self.events);
        self.drain(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::aggregate;
    use crate::codec::Credentials;
    use tollgate_core::Secret;

    fn ectx<'a>(creds: &'a Credentials, stream: bool) -> EncodeCtx<'a> {
        EncodeCtx {
            base_url: "http://127.0.0.1:9/",
            upstream_model: "claude-sonnet-4-5",
            credentials: creds,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream,
        }
    }

    fn dctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "req-1".into(),
            created: 7,
            model: "claude-sonnet-4-5".into(),
        }
    }

    fn encode(req: Value, stream: bool) -> (HttpRequest, Value) {
        let creds = Credentials {
            api_key: Some(Secret::new("sk-ant-up")),
            ..Default::default()
        };
        let req: ChatRequest = serde_json::from_value(req).unwrap();
        match AnthropicCodec::new()
            .encode(&req, &ectx(&creds, stream))
            .unwrap()
        {
            Outbound::Http(h) => {
                let body = serde_json::from_slice(&h.body).unwrap();
                (h, body)
            }
            Outbound::WebSocket(_) => unreachable!(),
        }
    }

    #[test]
    fn encodes_system_tools_results_images_and_merges_roles() {
        let (h, body) = encode(
            json!({"model":"anthropic/claude","messages":[
                {"role":"system","content":"be brief"},
                {"role":"developer","content":"use tools"},
                {"role":"user","content":[{"type":"text","text":"look"},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR"}},
                    {"type":"image_url","image_url":{"url":"https://x.test/a.jpg"}}]},
                {"role":"user","content":"and weather?"},
                {"role":"assistant","content":null,"tool_calls":[
                    {"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                    {"id":"toolu_2","type":"function","function":{"name":"get_time","arguments":""}}]},
                {"role":"tool","tool_call_id":"toolu_1","content":"18C"},
                {"role":"tool","tool_call_id":"toolu_2","content":"noon"},
                {"role":"user","content":"thanks"}],
              "tools":[{"type":"function","function":{"name":"get_weather","description":"w",
                  "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
                {"type":"function","function":{"name":"get_time"}}],
              "tool_choice":"required","parallel_tool_calls":false,
              "temperature":1.7,"top_p":0.9,"stop":"END","user":"u-1","max_completion_tokens":300,
              "logit_bias":{"1":1},"top_k":5}),
            true,
        );
        assert_eq!(h.url, "http://127.0.0.1:9/v1/messages");
        assert!(h
            .headers
            .contains(&("x-api-key".into(), "sk-ant-up".into())));
        assert!(h
            .headers
            .contains(&("anthropic-version".into(), "2023-06-01".into())));
        assert!(!h.headers.iter().any(|(k, _)| k == "authorization"));
        assert_eq!(
            body,
            json!({
                "model":"claude-sonnet-4-5","max_tokens":300,"system":"be brief\n\nuse tools",
                "messages":[
                    {"role":"user","content":[{"type":"text","text":"look"},
                        {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}},
                        {"type":"image","source":{"type":"url","url":"https://x.test/a.jpg"}},
                        {"type":"text","text":"and weather?"}]},
                    {"role":"assistant","content":[
                        {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}},
                        {"type":"tool_use","id":"toolu_2","name":"get_time","input":{}}]},
                    {"role":"user","content":[
                        {"type":"tool_result","tool_use_id":"toolu_1","content":"18C"},
                        {"type":"tool_result","tool_use_id":"toolu_2","content":"noon"},
                        {"type":"text","text":"thanks"}]}],
                "temperature":1.0,"top_p":0.9,"stop_sequences":["END"],"metadata":{"user_id":"u-1"},
                "tools":[{"name":"get_weather","description":"w","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}},
                    {"name":"get_time","input_schema":{"type":"object","properties":{}}}],
                "tool_choice":{"type":"any","disable_parallel_tool_use":true},
                "top_k":5,"stream":true
            })
        );
    }

    #[test]
    fn default_max_tokens_named_choice_cache_control_and_json_mode() {
        let (_, body) = encode(
            json!({"model":"m","messages":[
                {"role":"system","content":[{"type":"text","text":"long doc","cache_control":{"type":"ephemeral"}}]},
                {"role":"user","content":"hi"}],
              "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}],
              "tool_choice":{"type":"function","function":{"name":"f"}},
              "response_format":{"type":"json_object"}}),
            false,
        );
        assert_eq!(body["max_tokens"], json!(4096));
        assert_eq!(body["tool_choice"], json!({"type":"tool","name":"f"}));
        assert_eq!(
            body["system"],
            json!([{"type":"text","text":"long doc","cache_control":{"type":"ephemeral"}},
                {"type":"text","text":"Respond with a single JSON object and nothing else."}])
        );
        assert!(body.get("stream").is_none());
        assert_eq!(body["messages"], json!([{"role":"user","content":"hi"}]));
    }

    #[test]
    fn bad_arguments_and_n_name_the_field() {
        let creds = Credentials::default();
        let req: ChatRequest = serde_json::from_value(json!({"model":"m","messages":[
            {"role":"user","content":"hi"},
            {"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}))
        .unwrap();
        let e = AnthropicCodec::new()
            .encode(&req, &ectx(&creds, false))
            .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[1].tool_calls[0].function.arguments")
        );
        let req: ChatRequest = serde_json::from_value(
            json!({"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}),
        )
        .unwrap();
        let e = AnthropicCodec::new()
            .encode(&req, &ectx(&creds, false))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
    }

    #[test]
    fn decodes_text_tool_use_and_cache_usage() {
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
          "content":[{"type":"thinking","thinking":"hmm","signature":"sig"},
            {"type":"text","text":"Let me check."},
            {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city":"Paris"}},
            {"type":"server_tool_use","id":"srv","name":"web_search","input":{}}],
          "stop_reason":"tool_use","stop_sequence":null,
          "usage":{"input_tokens":20,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,
            "output_tokens":30,"service_tier":"standard","cache_creation":{"ephemeral_5m_input_tokens":100}}}"#;
        let r = AnthropicCodec::new().decode(200, body, &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"msg_01","object":"chat.completion","created":7,"model":"claude-sonnet-4-5-20250929",
                "choices":[{"index":0,"finish_reason":"tool_calls","logprobs":null,
                    "message":{"role":"assistant","refusal":null,"content":"Let me check.","reasoning_content":"hmm",
                        "tool_calls":[{"id":"toolu_01","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}}],
                "usage":{"prompt_tokens":1120,"completion_tokens":30,"total_tokens":1150,
                    "prompt_tokens_details":{"cached_tokens":1000},"completion_tokens_details":{"reasoning_tokens":0},
                    "cache_creation_input_tokens":100}})
        );
        for (reason, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            assert_eq!(finish_reason(Some(reason)), want);
        }
    }

    #[test]
    fn errors_are_classified() {
        let c = AnthropicCodec::new();
        let cases: &[(u16, &str, UpstreamErrorKind)] = &[
            (400, "invalid_request_error", UpstreamErrorKind::BadRequest),
            (401, "authentication_error", UpstreamErrorKind::Auth),
            (402, "billing_error", UpstreamErrorKind::QuotaExhausted),
            (403, "permission_error", UpstreamErrorKind::PermissionDenied),
            (404, "not_found_error", UpstreamErrorKind::NotFound),
            (413, "request_too_large", UpstreamErrorKind::BadRequest),
            (429, "rate_limit_error", UpstreamErrorKind::RateLimited),
            (500, "api_error", UpstreamErrorKind::Server),
            (529, "overloaded_error", UpstreamErrorKind::Overloaded),
        ];
        for (status, etype, kind) in cases {
            let body = format!(
                r#"{{"type":"error","error":{{"type":"{etype}","message":"m"}},"request_id":"req_1"}}"#
            );
            let e = c.decode_error(*status, body.as_bytes(), Some(4));
            assert_eq!(e.kind, *kind, "{etype}");
            assert_eq!(e.vendor_code.as_deref(), Some(*etype));
            assert_eq!((e.status, e.retry_after_secs), (Some(*status), Some(4)));
        }
        let e = c.decode_error(503, b"upstream connect error", None);
        assert_eq!(e.kind, UpstreamErrorKind::Overloaded);
        assert_eq!(e.message, "upstream connect error");
    }

    /// A stream with every event type, as the API sends it.
    const STREAM: &str = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2048,\"output_tokens\":1}}}\r\n\r\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Plan.\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQB\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking \"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"now.\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":40}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":2048,\"output_tokens\":42}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn run(input: &str, piece: usize) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = AnthropicCodec::new().stream_decoder(&dctx(), Some("text/event-stream"));
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn stream_decodes_at_every_split() {
        let reference = run(STREAM, STREAM.len()).unwrap();
        for piece in 1..STREAM.len() {
            assert_eq!(run(STREAM, piece).unwrap(), reference, "piece {piece}");
        }
        assert_eq!(reference.last(), Some(&StreamEvent::Done));
        let r = aggregate(reference.clone(), &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"msg_1","object":"chat.completion","created":7,"model":"claude-x",
                "choices":[{"index":0,"finish_reason":"tool_calls","logprobs":null,
                    "message":{"role":"assistant","refusal":null,"content":"Checking now.","reasoning_content":"Plan.",
                        "tool_calls":[{"id":"toolu_9","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]}}],
                "usage":{"prompt_tokens":2073,"completion_tokens":42,"total_tokens":2115,
                    "prompt_tokens_details":{"cached_tokens":2048},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
        // The first tool fragment carries id, type and name; later ones only arguments.
        let frags: Vec<&ToolCallDelta> = reference
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Chunk(c) => c.choices[0].delta.tool_calls.as_ref(),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(frags.len(), 3);
        assert_eq!(frags[0].id.as_deref(), Some("toolu_9"));
        assert!(frags[1].id.is_none() && frags[2].function.as_ref().unwrap().name.is_none());
    }

    #[test]
    fn stream_error_event_and_cut_stream() {
        let input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let e = run(input, 9).unwrap_err();
        assert_eq!(
            (e.kind, e.status, e.message.as_str()),
            (UpstreamErrorKind::Overloaded, None, "Overloaded")
        );
        let cut = &STREAM[..STREAM.find("event: message_delta").unwrap()];
        assert!(!run(cut, 17).unwrap().contains(&StreamEvent::Done));
    }
}
