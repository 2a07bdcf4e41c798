//! Anthropic's Messages API spoken *inbound*: pure translation for tollgate's own
//! `POST /v1/messages`, so clients built for Claude can be served by any provider.
//!
//! - [`request_to_canonical`]: an Anthropic request body → [`ChatRequest`]; errors name
//!   the Anthropic field at fault (`messages[2].content[0].source`).
//! - [`response_from_canonical`]: a [`ChatResponse`] → an Anthropic `Message`.
//! - [`AnthropicStreamEncoder`]: canonical [`StreamEvent`]s → Anthropic's named events
//!   (`message_start`, `content_block_start/delta/stop`, `message_delta`, `message_stop`).
//! - [`error_body`], [`error_status`], [`error_type`]: Anthropic-shaped errors.
//!
//! Usage goes back the Anthropic way: `input_tokens` excludes cache reads and writes,
//! which travel as `cache_read_input_tokens` / `cache_creation_input_tokens`. Reasoning
//! text is not sent back (Anthropic's thinking blocks need a signature only Anthropic
//! can make).

use serde_json::{json, Map, Value};
use tollgate_core::chat::{
    ChatRequest, ChatResponse, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, Message,
    NamedFunction, Role, Stop, Tool, ToolCall, ToolChoice, Usage,
};
use tollgate_core::error::ErrorKind;
use tollgate_core::GatewayError;

use crate::codec::StreamEvent;

fn bad(param: impl Into<String>, message: &str) -> GatewayError {
    let param = param.into();
    GatewayError::invalid_param(&param, message)
}

fn text_part(text: &str) -> ContentPart {
    ContentPart {
        kind: "text".to_owned(),
        text: Some(text.to_owned()),
        image_url: None,
        extra: Map::new(),
    }
}

/// An Anthropic text block as a canonical part, keeping `cache_control`.
fn text_block(block: &Value, param: &str) -> Result<ContentPart, GatewayError> {
    let text = block["text"]
        .as_str()
        .ok_or_else(|| bad(format!("{param}.text"), "a text block needs 'text'"))?;
    let mut part = text_part(text);
    if let Some(cc) = block.get("cache_control").filter(|c| !c.is_null()) {
        part.extra.insert("cache_control".into(), cc.clone());
    }
    Ok(part)
}

fn image_block(block: &Value, param: &str) -> Result<ContentPart, GatewayError> {
    let src = &block["source"];
    let url = match src["type"].as_str() {
        Some("base64") => {
            let mime = src["media_type"].as_str().ok_or_else(|| {
                bad(
                    format!("{param}.source.media_type"),
                    "a base64 image needs 'media_type'",
                )
            })?;
            let data = src["data"].as_str().ok_or_else(|| {
                bad(
                    format!("{param}.source.data"),
                    "a base64 image needs 'data'",
                )
            })?;
            format!("data:{mime};base64,{data}")
        }
        Some("url") => src["url"]
            .as_str()
            .ok_or_else(|| bad(format!("{param}.source.url"), "a url image needs 'url'"))?
            .to_owned(),
        _ => {
            return Err(bad(
                format!("{param}.source.type"),
                "image source must be 'base64' or 'url'",
            ))
        }
    };
    Ok(ContentPart {
        kind: "image_url".to_owned(),
        text: None,
        image_url: Some(ImageUrl { url, detail: None }),
        extra: Map::new(),
    })
}

/// The text of a `tool_result`'s content (a string, or text blocks).
fn tool_result_text(content: &Value, param: &str) -> Result<String, GatewayError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (k, b) in blocks.iter().enumerate() {
                match b["type"].as_str() {
                    Some("text") => out.push_str(b["text"].as_str().unwrap_or_default()),
                    _ => {
                        return Err(bad(
                            format!("{param}.content[{k}].type"),
                            "only text content is supported inside tool_result",
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            format!("{param}.content"),
            "tool_result content must be a string or a list of blocks",
        )),
    }
}

fn message(role: Role, content: Option<Content>) -> Message {
    Message {
        role,
        content,
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: Map::new(),
    }
}

/// Parts as content: a lone plain text part becomes a string.
fn parts_content(parts: Vec<ContentPart>) -> Content {
    if parts.len() == 1 && parts[0].kind == "text" && parts[0].extra.is_empty() {
        Content::Text(parts[0].text.clone().unwrap_or_default())
    } else {
        Content::Parts(parts)
    }
}

/// An Anthropic `POST /v1/messages` body as a canonical request.
pub fn request_to_canonical(body: &Value) -> Result<ChatRequest, GatewayError> {
    let obj = body
        .as_object()
        .ok_or_else(|| GatewayError::invalid_request("the request body must be a JSON object"))?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| bad("model", "model: Field required"))?;
    let max_tokens = match obj.get("max_tokens") {
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("max_tokens", "max_tokens: must be a positive integer"))?,
        _ => return Err(bad("max_tokens", "max_tokens: Field required")),
    };
    let mut messages = Vec::new();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                messages.push(Message::text(Role::System, s.clone()));
            }
        }
        Some(Value::Array(blocks)) => {
            let parts = blocks
                .iter()
                .enumerate()
                .map(|(i, b)| text_block(b, &format!("system[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if !parts.is_empty() {
                messages.push(message(Role::System, Some(parts_content(parts))));
            }
        }
        Some(_) => {
            return Err(bad(
                "system",
                "system must be a string or a list of text blocks",
            ))
        }
    }
    let list = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("messages", "messages: Field required (a non-empty list)"))?;
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m["role"].as_str() {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            _ => {
                return Err(bad(
                    format!("{param}.role"),
                    "role must be 'user' or 'assistant'",
                ))
            }
        };
        let blocks = match &m["content"] {
            Value::String(s) => {
                messages.push(Message::text(role, s.clone()));
                continue;
            }
            Value::Array(b) => b,
            _ => {
                return Err(bad(
                    format!("{param}.content"),
                    "content must be a string or a list of blocks",
                ))
            }
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let bp = format!("{param}.content[{j}]");
            match (b["type"].as_str(), role) {
                (Some("text"), _) => parts.push(text_block(b, &bp)?),
                (Some("image"), Role::User) => parts.push(image_block(b, &bp)?),
                (Some("tool_result"), Role::User) => {
                    let id = b["tool_use_id"].as_str().ok_or_else(|| {
                        bad(
                            format!("{bp}.tool_use_id"),
                            "tool_result needs 'tool_use_id'",
                        )
                    })?;
                    let mut text = tool_result_text(&b["content"], &bp)?;
                    if b["is_error"] == true && !text.starts_with("Error") {
                        text = format!("Error: {text}");
                    }
                    let mut msg = Message::text(Role::Tool, text);
                    msg.tool_call_id = Some(id.to_owned());
                    results.push(msg);
                }
                (Some("tool_use"), Role::Assistant) => {
                    let id = b["id"]
                        .as_str()
                        .ok_or_else(|| bad(format!("{bp}.id"), "tool_use needs 'id'"))?;
                    let name = b["name"]
                        .as_str()
                        .ok_or_else(|| bad(format!("{bp}.name"), "tool_use needs 'name'"))?;
                    let input = match &b["input"] {
                        Value::Null => json!({}),
                        v => v.clone(),
                    };
                    calls.push(ToolCall {
                        id: id.to_owned(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: name.to_owned(),
                            arguments: input.to_string(),
                        },
                    });
                }
                // Thinking blocks of an earlier turn only matter to Anthropic itself.
                (Some("thinking") | Some("redacted_thinking"), Role::Assistant) => {}
                (t, _) => {
                    return Err(bad(
                        format!("{bp}.type"),
                        &format!(
                            "content blocks of type '{}' are not supported in a {} message",
                            t.unwrap_or("?"),
                            role.as_str()
                        ),
                    ))
                }
            }
        }
        // OpenAI wants tool results right after the assistant turn that asked for them.
        messages.extend(results);
        if role == Role::Assistant {
            let mut msg = message(
                Role::Assistant,
                (!parts.is_empty()).then(|| {
                    Content::Text(parts.iter().filter_map(|p| p.text.as_deref()).collect())
                }),
            );
            if !calls.is_empty() {
                msg.tool_calls = Some(calls);
            }
            if msg.content.is_some() || msg.tool_calls.is_some() {
                messages.push(msg);
            }
        } else if !parts.is_empty() {
            messages.push(message(Role::User, Some(parts_content(parts))));
        }
    }
    let mut req = ChatRequest {
        model: model.to_owned(),
        messages,
        max_tokens: Some(max_tokens),
        ..ChatRequest::default()
    };
    if let Some(t) = obj.get("temperature").filter(|v| !v.is_null()) {
        req.temperature = Some(t.as_f64().filter(|t| (0.0..=1.0).contains(t)).ok_or_else(
            || {
                bad(
                    "temperature",
                    "temperature: must be a number between 0 and 1",
                )
            },
        )?);
    }
    if let Some(p) = obj.get("top_p").filter(|v| !v.is_null()) {
        req.top_p = Some(
            p.as_f64()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| bad("top_p", "top_p: must be a number between 0 and 1"))?,
        );
    }
    if let Some(s) = obj.get("stop_sequences").filter(|v| !v.is_null()) {
        let seqs: Vec<String> = s
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| {
                bad(
                    "stop_sequences",
                    "stop_sequences: must be a list of strings",
                )
            })?;
        if !seqs.is_empty() {
            req.stop = Some(Stop::Many(seqs));
        }
    }
    if let Some(s) = obj.get("stream").filter(|v| !v.is_null()) {
        req.stream = Some(
            s.as_bool()
                .ok_or_else(|| bad("stream", "stream: must be a boolean"))?,
        );
    }
    if let Some(u) = body["metadata"]["user_id"].as_str() {
        req.user = Some(u.to_owned());
    }
    if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| bad("tools", "tools: must be a list"))?;
        let mut out = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if t.get("type")
                .and_then(Value::as_str)
                .is_some_and(|k| k != "custom")
            {
                return Err(bad(
                    format!("tools[{i}].type"),
                    "only client tools (with 'name' and 'input_schema') are supported",
                ));
            }
            let name = t["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| bad(format!("tools[{i}].name"), "a tool needs a 'name'"))?;
            let schema = t
                .get("input_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    bad(
                        format!("tools[{i}].input_schema"),
                        "a tool needs an 'input_schema' object",
                    )
                })?;
            out.push(Tool {
                kind: "function".to_owned(),
                function: FunctionDef {
                    name: name.to_owned(),
                    description: t["description"].as_str().map(str::to_owned),
                    parameters: Some(schema.clone()),
                    strict: None,
                },
            });
        }
        if !out.is_empty() {
            req.tools = Some(out);
        }
    }
    if let Some(tc) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        let mode = |m: &str| Some(ToolChoice::Mode(m.to_owned()));
        req.tool_choice = match tc["type"].as_str() {
            Some("auto") => mode("auto"),
            Some("any") => mode("required"),
            Some("none") => mode("none"),
            Some("tool") => Some(ToolChoice::Named {
                kind: "function".to_owned(),
                function: NamedFunction {
                    name: tc["name"]
                        .as_str()
                        .ok_or_else(|| {
                            bad(
                                "tool_choice.name",
                                "tool_choice of type 'tool' needs 'name'",
                            )
                        })?
                        .to_owned(),
                },
            }),
            _ => {
                return Err(bad(
                    "tool_choice.type",
                    "tool_choice.type must be 'auto', 'any', 'tool' or 'none'",
                ))
            }
        };
        if tc["disable_parallel_tool_use"] == true {
            req.parallel_tool_calls = Some(false);
        }
    }
    Ok(req)
}

/// A canonical `finish_reason` as Anthropic's `stop_reason`.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// The Anthropic `usage` object for canonical usage.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens + u.cache_write_tokens),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    })
}

/// `msg_…` for a canonical response id.
fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        let clean: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        format!("msg_{clean}")
    }
}

fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ if arguments.trim().is_empty() => json!({}),
        Ok(v) => json!({"value": v}),
        Err(_) => json!({"arguments": arguments}),
    }
}

/// A canonical response as an Anthropic `Message` (the first choice).
pub fn response_from_canonical(resp: &ChatResponse, requested_model: &str) -> Value {
    let choice = resp.choices.first();
    let mut content = Vec::new();
    if let Some(c) = choice {
        if let Some(t) = c.message.content.as_deref().filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": t}));
        } else if let Some(r) = c.message.refusal.as_deref().filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": r}));
        }
        for tc in c.message.tool_calls.iter().flatten() {
            content.push(
                json!({"type": "tool_use", "id": tc.id, "name": tc.function.name,
                "input": tool_input(&tc.function.arguments)}),
            );
        }
    }
    json!({
        "id": message_id(&resp.id),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.finish_reason.as_deref())),
        "stop_sequence": null,
        "usage": usage_json(&resp.usage.clone().unwrap_or_default()),
    })
}

/// Anthropic's `error.type` for a gateway error kind.
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest
        | ErrorKind::ContentFilter
        | ErrorKind::MethodNotAllowed
        | ErrorKind::UnsupportedMediaType => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::InsufficientQuota => "billing_error",
        ErrorKind::Unavailable => "overloaded_error",
        ErrorKind::GatewayTimeout => "timeout_error",
        ErrorKind::BadGateway | ErrorKind::Internal => "api_error",
    }
}

/// The HTTP status of an Anthropic-shaped error: Anthropic's own statuses, so the
/// `anthropic` SDK raises the matching exception (402 billing, 529 `OverloadedError`).
pub fn error_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InsufficientQuota => 402,
        ErrorKind::Unavailable => 529,
        other => other.http_status(),
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn error_body(kind: ErrorKind, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(kind), "message": message}})
}

/// A gateway error as an Anthropic error body (the `param`, when known, is named in
/// the message, as Anthropic does: `messages.1.content: ...`).
pub fn error_body_for(e: &GatewayError) -> Value {
    let message = match &e.param {
        Some(p) if !e.message.starts_with(p.as_str()) => format!("{p}: {}", e.message),
        _ => e.message.clone(),
    };
    error_body(e.kind, &message)
}

/// The block the encoder has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// A tool_use block for this canonical tool-call index.
    Tool(u32),
}

/// Canonical stream events → Anthropic's named stream events. Feed every event with
/// [`push`](Self::push), then call [`finish`](Self::finish) once; write each returned
/// pair as `event: NAME\ndata: JSON\n\n`.
#[derive(Debug)]
pub struct AnthropicStreamEncoder {
    msg_id: String,
    model: String,
    input_tokens_estimate: u64,
    started: bool,
    open: Option<(u32, Block)>,
    next_index: u32,
    /// Canonical tool-call index → content block index.
    tool_blocks: Vec<(u32, u32)>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    finished: bool,
}

impl AnthropicStreamEncoder {
    pub fn new(
        msg_id: impl Into<String>,
        model: impl Into<String>,
        input_tokens_estimate: u64,
    ) -> Self {
        AnthropicStreamEncoder {
            msg_id: message_id(&msg_id.into()),
            model: model.into(),
            input_tokens_estimate,
            started: false,
            open: None,
            next_index: 0,
            tool_blocks: Vec::new(),
            finish_reason: None,
            usage: None,
            finished: false,
        }
    }

    fn start(&mut self, out: &mut Vec<(String, Value)>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push((
            "message_start".to_owned(),
            json!({"type": "message_start", "message": {
                "id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens_estimate, "output_tokens": 0}}}),
        ));
    }

    fn close(&mut self, out: &mut Vec<(String, Value)>) {
        if let Some((index, _)) = self.open.take() {
            out.push((
                "content_block_stop".to_owned(),
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open_block(&mut self, block: Value, kind: Block, out: &mut Vec<(String, Value)>) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        out.push((
            "content_block_start".to_owned(),
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        self.open = Some((index, kind));
        index
    }

    fn delta(index: u32, delta: Value) -> (String, Value) {
        (
            "content_block_delta".to_owned(),
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    }

    /// The Anthropic events one canonical event makes.
    pub fn push(&mut self, ev: &StreamEvent) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.start(&mut out);
        match ev {
            StreamEvent::Usage(u) => self.usage = Some(u.clone()),
            StreamEvent::Done => {}
            StreamEvent::Verbatim(v) => {
                for ev in v.canonical() {
                    out.extend(self.push(&ev));
                }
            }
            StreamEvent::Chunk(chunk) => {
                for choice in chunk.choices.iter().filter(|c| c.index == 0) {
                    let d = &choice.delta;
                    let text = d
                        .content
                        .as_deref()
                        .or(d.refusal.as_deref())
                        .filter(|t| !t.is_empty());
                    if let Some(t) = text {
                        let index = match self.open {
                            Some((i, Block::Text)) => i,
                            _ => self.open_block(
                                json!({"type": "text", "text": ""}),
                                Block::Text,
                                &mut out,
                            ),
                        };
                        out.push(Self::delta(index, json!({"type": "text_delta", "text": t})));
                    }
                    for tc in d.tool_calls.iter().flatten() {
                        let known = self
                            .tool_blocks
                            .iter()
                            .find(|(t, _)| *t == tc.index)
                            .map(|(_, b)| *b);
                        let index = match known {
                            Some(b) => b,
                            None => {
                                let name = tc
                                    .function
                                    .as_ref()
                                    .and_then(|f| f.name.clone())
                                    .unwrap_or_default();
                                let id = tc.id.clone().unwrap_or_else(|| {
                                    format!("toolu_{}_{}", self.msg_id, tc.index)
                                });
                                let b = self.open_block(
                                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                                    Block::Tool(tc.index),
                                    &mut out,
                                );
                                self.tool_blocks.push((tc.index, b));
                                b
                            }
                        };
                        if let Some(args) = tc
                            .function
                            .as_ref()
                            .and_then(|f| f.arguments.as_deref())
                            .filter(|a| !a.is_empty())
                        {
                            out.push(Self::delta(
                                index,
                                json!({"type": "input_json_delta", "partial_json": args}),
                            ));
                        }
                    }
                    if let Some(f) = &choice.finish_reason {
                        self.finish_reason = Some(f.clone());
                    }
                }
            }
        }
        out
    }

    /// The closing events: the open block's stop, `message_delta` (stop reason and
    /// usage; `usage` wins over what was pushed), `message_stop`.
    pub fn finish(&mut self, usage: Option<&Usage>) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.start(&mut out);
        self.close(&mut out);
        self.finished = true;
        let usage = usage.cloned().or_else(|| self.usage.clone());
        let usage = match usage {
            Some(u) => usage_json(&u),
            None => json!({"output_tokens": 0}),
        };
        out.push((
            "message_delta".to_owned(),
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
                "usage": usage}),
        ));
        out.push(("message_stop".to_owned(), json!({"type": "message_stop"})));
        out
    }
}

/// Writes one event the way Anthropic frames it.
pub fn sse_frame(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::chat::{
        ChatChunk, Choice, ChunkChoice, Delta, FunctionDelta, ResponseMessage, ToolCallDelta,
    };

    #[test]
    fn request_translates_every_block_kind() {
        let body = json!({
            "model": "qwen/qwen-plus", "max_tokens": 512,
            "system": [{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}],
            "messages": [
                {"role":"user","content":[{"type":"text","text":"what is this?"},
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}},
                    {"type":"image","source":{"type":"url","url":"https://x.test/a.png"}}]},
                {"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"s"},
                    {"type":"text","text":"Let me look."},
                    {"type":"tool_use","id":"toolu_1","name":"lookup","input":{"q":"cat"}}]},
                {"role":"user","content":[
                    {"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"a cat"}]},
                    {"type":"text","text":"and?"}]}],
            "tools":[{"name":"lookup","description":"find","input_schema":{"type":"object","properties":{"q":{"type":"string"}}}}],
            "tool_choice":{"type":"any","disable_parallel_tool_use":true},
            "stop_sequences":["END"],"temperature":0.2,"top_p":0.9,"top_k":5,"stream":true,
            "metadata":{"user_id":"u-9"}
        });
        let req = request_to_canonical(&body).unwrap();
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({
                "model":"qwen/qwen-plus","max_tokens":512,"stream":true,"temperature":0.2,"top_p":0.9,
                "stop":["END"],"user":"u-9","parallel_tool_calls":false,"tool_choice":"required",
                "tools":[{"type":"function","function":{"name":"lookup","description":"find",
                    "parameters":{"type":"object","properties":{"q":{"type":"string"}}}}}],
                "messages":[
                    {"role":"system","content":[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}]},
                    {"role":"user","content":[{"type":"text","text":"what is this?"},
                        {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR"}},
                        {"type":"image_url","image_url":{"url":"https://x.test/a.png"}}]},
                    {"role":"assistant","content":"Let me look.","tool_calls":[
                        {"id":"toolu_1","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"cat\"}"}}]},
                    {"role":"tool","content":"a cat","tool_call_id":"toolu_1"},
                    {"role":"user","content":"and?"}]
            })
        );
        req.validate().unwrap();
    }

    #[test]
    fn request_errors_name_the_field() {
        let cases = [
            (
                json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
                "max_tokens",
            ),
            (json!({"max_tokens":5,"messages":[]}), "model"),
            (
                json!({"model":"m","max_tokens":5,"messages":[]}),
                "messages",
            ),
            (
                json!({"model":"m","max_tokens":5,"messages":[{"role":"system","content":"x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document","source":{}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file"}}]}]}),
                "messages[0].content[0].source.type",
            ),
            (
                json!({"model":"m","max_tokens":5,"temperature":1.5,"messages":[{"role":"user","content":"x"}]}),
                "temperature",
            ),
            (
                json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],
                "tools":[{"type":"web_search_20250305","name":"web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"tool"}}),
                "tool_choice.name",
            ),
        ];
        for (body, param) in cases {
            let e = request_to_canonical(&body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.kind, ErrorKind::InvalidRequest);
        }
    }

    fn response(content: Option<&str>, calls: Vec<ToolCall>, finish: &str) -> ChatResponse {
        let mut message = ResponseMessage::assistant(content.map(str::to_owned));
        if !calls.is_empty() {
            message.tool_calls = Some(calls);
        }
        ChatResponse {
            id: "chatcmpl-42".into(),
            object: "chat.completion".into(),
            created: 1,
            model: "glm-4-flash".into(),
            choices: vec![Choice {
                index: 0,
                message,
                finish_reason: Some(finish.into()),
                logprobs: None,
            }],
            usage: Some(Usage {
                prompt_tokens: 1200,
                completion_tokens: 30,
                cached_tokens: 1000,
                cache_write_tokens: 50,
                ..Usage::default()
            }),
            system_fingerprint: None,
        }
    }

    #[test]
    fn response_maps_blocks_stop_reason_and_usage() {
        let r = response(
            Some("Checking."),
            vec![ToolCall {
                id: "call_1".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "lookup".into(),
                    arguments: "{\"q\":\"cat\"}".into(),
                },
            }],
            "tool_calls",
        );
        assert_eq!(
            response_from_canonical(&r, "zhipu/glm-4-flash"),
            json!({"id":"msg_chatcmpl-42","type":"message","role":"assistant","model":"zhipu/glm-4-flash",
                "content":[{"type":"text","text":"Checking."},
                    {"type":"tool_use","id":"call_1","name":"lookup","input":{"q":"cat"}}],
                "stop_reason":"tool_use","stop_sequence":null,
                "usage":{"input_tokens":150,"output_tokens":30,"cache_creation_input_tokens":50,"cache_read_input_tokens":1000}})
        );
        for (f, s) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("content_filter", "refusal"),
        ] {
            assert_eq!(
                response_from_canonical(&response(Some("x"), vec![], f), "m")["stop_reason"],
                json!(s)
            );
        }
    }

    fn chunk(delta: Delta, finish: Option<&str>) -> StreamEvent {
        StreamEvent::Chunk(ChatChunk::single(
            "c1",
            1,
            "m",
            ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(str::to_owned),
                logprobs: None,
            },
        ))
    }

    fn tool_delta(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> Delta {
        Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                id: id.map(str::to_owned),
                kind: id.map(|_| "function".to_owned()),
                function: Some(FunctionDelta {
                    name: name.map(str::to_owned),
                    arguments: Some(args.to_owned()),
                }),
            }]),
            ..Delta::default()
        }
    }

    /// The events of a text + two tool calls stream, as (name, data) pairs.
    pub(crate) fn sample_stream() -> Vec<(String, Value)> {
        let mut enc = AnthropicStreamEncoder::new("chatcmpl-7", "claude-via-glm", 12);
        let text = |t: &str| Delta {
            content: Some(t.to_owned()),
            ..Delta::default()
        };
        let events = [
            chunk(
                Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Delta::default()
                },
                None,
            ),
            chunk(text("Let me "), None),
            chunk(text("check."), None),
            chunk(tool_delta(0, Some("call_a"), Some("lookup"), ""), None),
            chunk(tool_delta(0, None, None, "{\"q\":"), None),
            chunk(tool_delta(0, None, None, "\"cat\"}"), None),
            chunk(tool_delta(1, Some("call_b"), Some("count"), "{}"), None),
            chunk(Delta::default(), Some("tool_calls")),
            StreamEvent::Usage(Usage {
                prompt_tokens: 20,
                completion_tokens: 9,
                cached_tokens: 8,
                ..Usage::default()
            }),
            StreamEvent::Done,
        ];
        let mut out = Vec::new();
        for e in &events {
            out.extend(enc.push(e));
        }
        out.extend(enc.finish(None));
        assert!(enc.finish(None).is_empty());
        out
    }

    #[test]
    fn stream_encoder_emits_the_exact_grammar() {
        let out = sample_stream();
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for (name, data) in &out {
            assert_eq!(data["type"], json!(name));
        }
        assert_eq!(out[0].1["message"]["id"], json!("msg_chatcmpl-7"));
        assert_eq!(out[0].1["message"]["usage"]["input_tokens"], json!(12));
        assert_eq!(
            out[5].1,
            json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_a","name":"lookup","input":{}}})
        );
        assert_eq!(
            out[7].1,
            json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"cat\"}"}})
        );
        assert_eq!(
            out[12].1,
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},
                "usage":{"input_tokens":12,"output_tokens":9,"cache_creation_input_tokens":0,"cache_read_input_tokens":8}})
        );
    }

    #[test]
    fn encoded_stream_decodes_back_to_the_same_answer() {
        use crate::anthropic::AnthropicCodec;
        use crate::codec::{Codec, DecodeCtx};
        let sse: String = sample_stream()
            .iter()
            .map(|(n, d)| sse_frame(n, d))
            .collect();
        let ctx = DecodeCtx {
            request_id: "r".into(),
            created: 1,
            model: "m".into(),
        };
        let mut dec = AnthropicCodec::new().stream_decoder(&ctx, None);
        let mut events = Vec::new();
        dec.feed(sse.as_bytes(), &mut events).unwrap();
        dec.finish(&mut events).unwrap();
        let r = crate::aggregate::aggregate(events, &ctx).unwrap();
        let m = &r.choices[0].message;
        assert_eq!(m.content.as_deref(), Some("Let me check."));
        let calls = m.tool_calls.as_ref().unwrap();
        assert_eq!(
            calls
                .iter()
                .map(|c| (
                    c.id.as_str(),
                    c.function.name.as_str(),
                    c.function.arguments.as_str()
                ))
                .collect::<Vec<_>>(),
            [
                ("call_a", "lookup", "{\"q\":\"cat\"}"),
                ("call_b", "count", "{}")
            ]
        );
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        let u = r.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.completion_tokens),
            (20, 8, 9)
        );
    }

    #[test]
    fn empty_stream_still_has_a_message() {
        let mut enc = AnthropicStreamEncoder::new("msg_x", "m", 3);
        let names: Vec<String> = enc.finish(None).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
    }

    #[test]
    fn errors_are_anthropic_shaped() {
        assert_eq!(
            error_body(ErrorKind::Authentication, "invalid x-api-key"),
            json!({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}})
        );
        assert_eq!(error_status(ErrorKind::Unavailable), 529);
        assert_eq!(error_type(ErrorKind::Unavailable), "overloaded_error");
        assert_eq!(error_status(ErrorKind::RateLimited), 429);
        assert_eq!(error_status(ErrorKind::InsufficientQuota), 402);
        let e = GatewayError::invalid_param("max_tokens", "Field required");
        assert_eq!(
            error_body_for(&e)["error"]["message"],
            json!("max_tokens: Field required")
        );
    }

    /// Writes the sample stream and a sample message where the conformance check
    /// (../shared/conformance/validate_anthropic.py) can read them:
    /// `TOLLGATE_DUMP_DIR=/tmp/x cargo test -p tollgate-providers dump_samples`.
    #[test]
    fn dump_samples_for_conformance() {
        let Ok(dir) = std::env::var("TOLLGATE_DUMP_DIR") else {
            return;
        };
        let sse: String = sample_stream()
            .iter()
            .map(|(n, d)| sse_frame(n, d))
            .collect();
        std::fs::write(format!("{dir}/inbound_stream.txt"), sse).unwrap();
        let r = response(Some("Hi"), vec![], "stop");
        std::fs::write(
            format!("{dir}/inbound_message.json"),
            response_from_canonical(&r, "m").to_string(),
        )
        .unwrap();
        std::fs::write(
            format!("{dir}/inbound_error.json"),
            error_body(ErrorKind::Unavailable, "overloaded").to_string(),
        )
        .unwrap();
    }
}
