//! The canonical chat types: OpenAI's Chat Completions request, response and stream chunk.
//!
//! Clients speak OpenAI, so the canonical form *is* OpenAI's shape; every provider codec
//! translates between it and the vendor's own. Fields the gateway acts on are typed;
//! everything else a client sends is kept in `extra` and forwarded where the vendor
//! accepts it (`#[serde(flatten)]`). `null` is read as absent, because some SDKs spell
//! out every optional field as `null`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"none" | "auto" | "required" | {"type":"function","function":{"name":..}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every field tollgate does not know, forwarded as-is where the vendor accepts it.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client asked for the final usage chunk of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The output cap the client set, whichever of the two spellings it used.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether any message carries an image part.
    pub fn has_images(&self) -> bool {
        self.messages.iter().any(|m| match &m.content {
            Some(Content::Parts(parts)) => parts.iter().any(|p| p.kind == "image_url"),
            _ => false,
        })
    }

    /// Whether the request declares tools the model may call.
    pub fn uses_tools(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| !t.is_empty())
            && !matches!(&self.tool_choice, Some(ToolChoice::Mode(m)) if m == "none")
    }

    /// Whether the request asks for JSON output (JSON mode or a JSON schema).
    pub fn wants_json(&self) -> bool {
        self.response_format
            .as_ref()
            .is_some_and(|f| f.kind == "json_object" || f.kind == "json_schema")
    }

    /// Checks what serde cannot: value ranges and message structure. The error names
    /// the offending field as a JSON path, as OpenAI's `param` does.
    pub fn validate(&self) -> Result<(), crate::GatewayError> {
        use crate::GatewayError as E;
        if self.model.trim().is_empty() {
            return Err(E::invalid_param(
                "model",
                "you must provide a model parameter",
            ));
        }
        if self.messages.is_empty() {
            return Err(E::invalid_param(
                "messages",
                "'messages' must contain at least one message",
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            match m.role {
                Role::Tool if m.tool_call_id.is_none() => {
                    return Err(E::invalid_param(
                        &format!("messages[{i}].tool_call_id"),
                        "messages with role 'tool' must have a 'tool_call_id'",
                    ))
                }
                Role::Assistant => {}
                _ if m.content.is_none() => {
                    return Err(E::invalid_param(
                        &format!("messages[{i}].content"),
                        "this message must have content",
                    ))
                }
                _ => {}
            }
            if let Some(Content::Parts(parts)) = &m.content {
                for (j, p) in parts.iter().enumerate() {
                    if p.kind == "text" && p.text.is_none() {
                        return Err(E::invalid_param(
                            &format!("messages[{i}].content[{j}].text"),
                            "a text part must have 'text'",
                        ));
                    }
                    if p.kind == "image_url" && p.image_url.is_none() {
                        return Err(E::invalid_param(
                            &format!("messages[{i}].content[{j}].image_url"),
                            "an image_url part must have 'image_url'",
                        ));
                    }
                }
            }
        }
        range(self.temperature, 0.0, 2.0, "temperature")?;
        range(self.top_p, 0.0, 1.0, "top_p")?;
        range(self.presence_penalty, -2.0, 2.0, "presence_penalty")?;
        range(self.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
        if let Some(n) = self.n {
            if !(1..=128).contains(&n) {
                return Err(E::invalid_param("n", "'n' must be between 1 and 128"));
            }
        }
        if matches!(self.max_tokens, Some(0)) {
            return Err(E::invalid_param(
                "max_tokens",
                "'max_tokens' must be at least 1",
            ));
        }
        if matches!(self.max_completion_tokens, Some(0)) {
            return Err(E::invalid_param(
                "max_completion_tokens",
                "'max_completion_tokens' must be at least 1",
            ));
        }
        if let Some(Stop::Many(v)) = &self.stop {
            if v.len() > 4 {
                return Err(E::invalid_param("stop", "'stop' takes at most 4 sequences"));
            }
        }
        if let Some(tools) = &self.tools {
            for (i, t) in tools.iter().enumerate() {
                if t.kind != "function" {
                    return Err(E::invalid_param(
                        &format!("tools[{i}].type"),
                        "only 'function' tools are supported",
                    ));
                }
                if t.function.name.is_empty() {
                    return Err(E::invalid_param(
                        &format!("tools[{i}].function.name"),
                        "a function must have a name",
                    ));
                }
            }
        }
        match &self.tool_choice {
            Some(ToolChoice::Mode(m)) if !matches!(m.as_str(), "none" | "auto" | "required") => {
                return Err(E::invalid_param(
                    "tool_choice",
                    "'tool_choice' must be 'none', 'auto', 'required' or a named function",
                ))
            }
            Some(ToolChoice::Named { .. }) if self.tools.is_none() => {
                return Err(E::invalid_param(
                    "tool_choice",
                    "'tool_choice' names a function but no 'tools' were given",
                ))
            }
            _ => {}
        }
        if let Some(f) = &self.response_format {
            if !matches!(f.kind.as_str(), "text" | "json_object" | "json_schema") {
                return Err(E::invalid_param(
                    "response_format.type",
                    "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                ));
            }
            if f.kind == "json_schema" && f.json_schema.is_none() {
                return Err(E::invalid_param(
                    "response_format.json_schema",
                    "'json_schema' is required when response_format.type is 'json_schema'",
                ));
            }
        }
        Ok(())
    }
}

fn range(v: Option<f64>, lo: f64, hi: f64, name: &str) -> Result<(), crate::GatewayError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => {
            Err(crate::GatewayError::invalid_param(
                name,
                &format!("'{name}' must be between {lo} and {hi}"),
            ))
        }
        _ => Ok(()),
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    /// The stop sequences as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// A message role.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A plain text message.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: Some(Content::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Map::new(),
        }
    }

    /// The message's text: the string content, or its text parts joined.
    pub fn text_content(&self) -> String {
        self.content.as_ref().map(Content::text).unwrap_or_default()
    }
}

/// Message content: a string, or a list of typed parts (text, image_url, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The text parts joined (images and other parts left out).
    pub fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join(""),
        }
    }
}

/// One content part. Typed where tollgate looks inside; the rest passes through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<ImageUrl>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `image_url` of a content part: an http(s) URL or a `data:` URL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A tool the model may call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

/// A function declaration: name, description, JSON-schema parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `"none"`, `"auto"` or `"required"`.
    Mode(String),
    /// `{"type":"function","function":{"name":"f"}}`.
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

/// The function named by `tool_choice`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamedFunction {
    pub name: String,
}

/// `response_format`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Value>,
}

/// A tool call made by the model. `arguments` is a JSON *string*, as OpenAI sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

/// The function a tool call invokes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A non-streaming response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

/// One choice of a non-streaming response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    /// `stop | length | tool_calls | content_filter`.
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

/// The assistant's message in a response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResponseMessage {
    #[serde(default = "assistant_role")]
    pub role: String,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Always written (as `null` when absent): OpenAI's schema requires the key.
    #[serde(default)]
    pub refusal: Option<String>,
    /// Reasoning text of thinking models (DeepSeek, Zhipu, Qwen, ...), passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

impl ResponseMessage {
    /// An assistant message with text only.
    pub fn assistant(content: Option<String>) -> Self {
        ResponseMessage {
            role: assistant_role(),
            content,
            tool_calls: None,
            refusal: None,
            reasoning_content: None,
        }
    }
}

/// One chunk of a stream (`chat.completion.chunk`). Usage travels separately in the
/// gateway (see `StreamEvent` in the providers crate); `usage` here is only set on the
/// final usage chunk written to clients that asked for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatChunk {
    pub id: String,
    #[serde(default = "chunk_object")]
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Always written (as `null` on ordinary chunks), as OpenAI does.
    #[serde(default)]
    pub usage: Option<Usage>,
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

impl ChatChunk {
    /// A chunk with one choice.
    pub fn single(id: &str, created: i64, model: &str, choice: ChunkChoice) -> Self {
        ChatChunk {
            id: id.to_owned(),
            object: chunk_object(),
            created,
            model: model.to_owned(),
            choices: vec![choice],
            system_fingerprint: None,
            usage: None,
        }
    }
}

/// One choice of a stream chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

/// The increment a chunk carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// A fragment of a tool call in a stream: the first carries id, type and name; later
/// ones carry pieces of `arguments`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
}

/// Name and/or an arguments fragment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// Token usage, canonical. `prompt_tokens` includes cached and cache-write tokens;
/// `completion_tokens` includes reasoning tokens (OpenAI's convention). Written to
/// clients in OpenAI's shape, plus `cost` when the gateway priced the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cache reads: part of `prompt_tokens` billed at the cached-input price.
    pub cached_tokens: u64,
    /// Cache writes (Anthropic's cache creation): part of `prompt_tokens`.
    pub cache_write_tokens: u64,
    /// Reasoning ("thinking") tokens: part of `completion_tokens`.
    pub reasoning_tokens: u64,
    /// The cost the gateway computed, e.g. `"0.000412 CNY"`; written as `usage.cost`.
    pub cost: Option<String>,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

#[derive(Serialize, Deserialize, Default)]
struct UsageWire {
    #[serde(default, deserialize_with = "null_as_zero")]
    prompt_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    completion_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek reports cache hits here (hit + miss = prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_cache_hit_tokens: Option<u64>,
    /// Moonshot's context-cache hits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_creation_input_tokens: Option<u64>,
    /// Written by tollgate; read back only as text (a vendor's own cost, e.g. a number
    /// from an aggregator, is not ours to report and is ignored).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_ignored"
    )]
    cost: Option<String>,
}

fn text_or_ignored<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOr {
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    Ok(match TextOr::deserialize(d)? {
        TextOr::Text(s) => Some(s),
        TextOr::Other(_) => None,
    })
}

#[derive(Serialize, Deserialize, Default)]
struct PromptDetails {
    #[serde(default, deserialize_with = "null_as_zero")]
    cached_tokens: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct CompletionDetails {
    #[serde(default, deserialize_with = "null_as_zero")]
    reasoning_tokens: u64,
}

fn null_as_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

impl Serialize for Usage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        UsageWire {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens(),
            prompt_tokens_details: Some(PromptDetails {
                cached_tokens: self.cached_tokens,
            }),
            completion_tokens_details: Some(CompletionDetails {
                reasoning_tokens: self.reasoning_tokens,
            }),
            prompt_cache_hit_tokens: None,
            cached_tokens: None,
            cache_creation_input_tokens: (self.cache_write_tokens > 0)
                .then_some(self.cache_write_tokens),
            cost: self.cost.clone(),
        }
        .serialize(s)
    }
}

/// The members of a usage object in OpenAI's shape and its vendors' variants, as read
/// (absent or `null` counts read as 0 or `None` as serde reads them); [`Usage::from_fields`]
/// makes the canonical [`Usage`]. Public so a reader that finds the members without
/// serde (the verbatim relay's) gets exactly what deserializing gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFields {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`, when `prompt_tokens_details` is an object.
    pub details_cached_tokens: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens`, likewise.
    pub details_reasoning_tokens: Option<u64>,
    pub prompt_cache_hit_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cost: Option<String>,
}

impl Usage {
    /// The canonical usage of what a vendor reported: cache hits from OpenAI's details,
    /// DeepSeek's `prompt_cache_hit_tokens` or Moonshot's top-level `cached_tokens` (in
    /// that order), completion tokens from the total when only that says.
    pub fn from_fields(w: UsageFields) -> Usage {
        let cached = w
            .details_cached_tokens
            .filter(|c| *c > 0)
            .or(w.prompt_cache_hit_tokens)
            .or(w.cached_tokens)
            .unwrap_or(0);
        let completion = if w.completion_tokens == 0 && w.total_tokens > w.prompt_tokens {
            w.total_tokens - w.prompt_tokens
        } else {
            w.completion_tokens
        };
        Usage {
            prompt_tokens: w.prompt_tokens,
            completion_tokens: completion,
            cached_tokens: cached.min(w.prompt_tokens),
            cache_write_tokens: w.cache_creation_input_tokens.unwrap_or(0),
            reasoning_tokens: w.details_reasoning_tokens.unwrap_or(0),
            cost: w.cost,
        }
    }
}

impl<'de> Deserialize<'de> for Usage {
    /// Reads OpenAI's shape and the OpenAI-compatible vendors' variants of it
    /// (DeepSeek's `prompt_cache_hit_tokens`, Moonshot's top-level `cached_tokens`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = UsageWire::deserialize(d)?;
        Ok(Usage::from_fields(UsageFields {
            prompt_tokens: w.prompt_tokens,
            completion_tokens: w.completion_tokens,
            total_tokens: w.total_tokens,
            details_cached_tokens: w.prompt_tokens_details.map(|p| p.cached_tokens),
            details_reasoning_tokens: w.completion_tokens_details.map(|c| c.reasoning_tokens),
            prompt_cache_hit_tokens: w.prompt_cache_hit_tokens,
            cached_tokens: w.cached_tokens,
            cache_creation_input_tokens: w.cache_creation_input_tokens,
            cost: w.cost,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `cargo test --release -p tollgate-core decode_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement"]
    fn decode_speed() {
        // Session 6: `Content` deserialized by hand instead of `untagged` changed neither
        // figure (small ~510 ns, 8 KB ~1,450 ns): the `flatten`ed `extra` maps of
        // `ChatRequest` and `Message` buffer the whole body first either way.
        let small = br#"{"model":"openai/gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark in one short sentence."}],"max_tokens":64,"stream":false}"#.to_vec();
        let mut user = String::from("Say hello");
        while user.len() < 8000 {
            user.push_str(" the quick brown fox jumps over");
        }
        let big = serde_json::to_vec(&serde_json::json!({"model":"openai/gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":user}],"max_tokens":64,"stream":false})).unwrap();
        for (name, body, n) in [("small", &small, 200_000), ("8 KB", &big, 20_000)] {
            let t = std::time::Instant::now();
            let mut k = 0;
            for _ in 0..n {
                k += serde_json::from_slice::<ChatRequest>(std::hint::black_box(&body[..]))
                    .unwrap()
                    .messages
                    .len();
            }
            println!(
                "{name} ({} bytes): {:.0} ns ({k})",
                body.len(),
                t.elapsed().as_nanos() as f64 / n as f64
            );
        }
    }

    #[test]
    fn unknown_fields_are_kept_and_nulls_read_as_absent() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role":"user","content":"hi"}],
            "max_tokens": null, "logit_bias": {"1": 2}, "stream": null
        }))
        .unwrap();
        assert_eq!(req.max_tokens, None);
        assert_eq!(req.extra["logit_bias"], json!({"1": 2}));
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back["logit_bias"], json!({"1": 2}));
        assert!(back.get("stream").is_none());
    }

    #[test]
    fn usage_reads_vendor_variants() {
        let u: Usage = serde_json::from_value(
            json!({"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
            "prompt_cache_hit_tokens":4,"prompt_cache_miss_tokens":6}),
        )
        .unwrap();
        assert_eq!(u.cached_tokens, 4);
        let u: Usage =
            serde_json::from_value(json!({"prompt_tokens":10,"total_tokens":15})).unwrap();
        assert_eq!(u.completion_tokens, 5);
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(v["total_tokens"], 15);
        assert_eq!(v["prompt_tokens_details"]["cached_tokens"], 0);
        // An aggregator's numeric `cost` is not a reason to refuse the usage.
        let u: Usage = serde_json::from_value(
            json!({"prompt_tokens":3,"completion_tokens":1,"cost":0.0002,"is_byok":false}),
        )
        .unwrap();
        assert_eq!((u.prompt_tokens, u.cost), (3, None));
        let u: Usage = serde_json::from_value(json!({"prompt_tokens":3,"cost":"1 USD"})).unwrap();
        assert_eq!(u.cost.as_deref(), Some("1 USD"));
    }

    #[test]
    fn validate_names_the_field() {
        let mut req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role":"user","content":"hi"}], "temperature": 3
        }))
        .unwrap();
        let e = req.validate().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        req.temperature = None;
        req.messages.clear();
        assert_eq!(
            req.validate().unwrap_err().param.as_deref(),
            Some("messages")
        );
    }
}
