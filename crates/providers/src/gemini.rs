//! Google Gemini's Generative Language API (`generateContent`), spoken upstream.
//!
//! Translation rules (../shared/vendors/PROTOCOLS.md §3):
//! - `POST {base}/v1beta/models/{model}:generateContent`, or
//!   `:streamGenerateContent?alt=sse` for streams; the key goes in `x-goog-api-key`.
//! - Roles are `user` and `model`; system messages become `systemInstruction`;
//!   consecutive turns of one role are merged (tool results of one assistant turn must
//!   arrive together in one `user` turn).
//! - Tools become `functionDeclarations`, their JSON schemas cut down to the OpenAPI
//!   subset Gemini accepts ([`gemini_schema`]). Calls carry no id on Gemini's side, so
//!   ids are synthesized as `call_<request id>_<n>`; a tool result's function name is
//!   looked up from the call id of the earlier assistant turn, and a non-object result
//!   is wrapped as `{"result": ...}`.
//! - Usage: `completion_tokens = candidatesTokenCount + thoughtsTokenCount`;
//!   `cached_tokens = cachedContentTokenCount`. Streams carry cumulative usage in every
//!   event and end at EOF (no `[DONE]`): `Done` is pushed in `finish` only after a
//!   `finishReason` was seen.
//! - A prompt blocked by safety filters (`promptFeedback.blockReason`, no candidates)
//!   is reported as a `ContentFilter` error, so the client gets a 400 `content_filter`.

use std::collections::HashMap;

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
use crate::media::{guess_image_type, parse_data_url};

/// The API version tollgate speaks upstream.
pub const API_VERSION: &str = "v1beta";

/// Request fields a client may send in `extra` that Gemini understands as-is.
const PASSTHROUGH: &[&str] = &["safetySettings", "cachedContent", "labels"];

/// Schema keywords Gemini's `Schema` object accepts; everything else (`additionalProperties`,
/// `$schema`, `strict`, `$ref`, ...) is dropped, since Gemini answers unknown ones with a 400.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// The Gemini codec.
#[derive(Debug, Clone, Default)]
pub struct GeminiCodec;

impl GeminiCodec {
    pub fn new() -> Self {
        GeminiCodec
    }
}

fn bad(param: String, message: &str) -> GatewayError {
    GatewayError::invalid_param(&param, message)
}

/// A JSON schema cut down to what Gemini's `Schema` accepts: unknown keywords dropped,
/// `type: [T, "null"]` as `type: T, nullable: true`, `const` as a one-value `enum`.
pub fn gemini_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in map {
        match k.as_str() {
            "properties" => {
                if let Value::Object(props) = v {
                    let props: Map<String, Value> = props
                        .iter()
                        .map(|(name, s)| (name.clone(), gemini_schema(s)))
                        .collect();
                    out.insert(k.clone(), Value::Object(props));
                }
            }
            "items" => {
                out.insert(k.clone(), gemini_schema(v));
            }
            "anyOf" => {
                if let Value::Array(list) = v {
                    out.insert(k.clone(), list.iter().map(gemini_schema).collect());
                }
            }
            "type" => match v {
                Value::Array(types) => {
                    let mut non_null = types.iter().filter(|t| *t != "null");
                    if let Some(t) = non_null.next() {
                        out.insert("type".into(), t.clone());
                    }
                    if types.iter().any(|t| t == "null") {
                        out.insert("nullable".into(), json!(true));
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            _ if SCHEMA_KEYS.contains(&k.as_str()) => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    // Gemini requires enum values to be strings.
    if let Some(Value::Array(vals)) = out.get_mut("enum") {
        for v in vals.iter_mut() {
            if !v.is_string() {
                *v = json!(v.to_string());
            }
        }
    }
    Value::Object(out)
}

/// Whether a schema declares no parameters at all (Gemini rejects an OBJECT with no
/// properties, so such a declaration is sent without `parameters`).
fn is_empty_object(schema: &Value) -> bool {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_none_or(|p| p.is_empty())
        && schema.get("anyOf").is_none()
}

fn content_parts(content: &Option<Content>, param: &str) -> Result<Vec<Value>, GatewayError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Content::Text(s)) => Ok(vec![json!({"text": s})]),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match p.kind.as_str() {
                    "text" => out.push(json!({"text": p.text.clone().unwrap_or_default()})),
                    "image_url" => {
                        let url = p.image_url.as_ref().map(|u| u.url.as_str()).unwrap_or("");
                        if let Some((mime, data)) = parse_data_url(url) {
                            out.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
                        } else if url.starts_with("http://") || url.starts_with("https://") {
                            out.push(json!({"fileData": {"mimeType": guess_image_type(url), "fileUri": url}}));
                        } else {
                            return Err(bad(
                                format!("{param}.content[{j}].image_url.url"),
                                "an image must be an http(s) URL or a base64 data: URL",
                            ));
                        }
                    }
                    other => {
                        return Err(bad(
                            format!("{param}.content[{j}].type"),
                            &format!("content parts of type '{other}' cannot be sent to Gemini"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

/// A tool result as a `functionResponse.response` object.
fn response_object(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(v) => json!({"result": v}),
        Err(_) => json!({"result": text}),
    }
}

/// Google's documented stand-in for a `thoughtSignature` tollgate cannot replay: Gemini 3
/// and later reject a replayed `functionCall` part without one (400 "Function call is
/// missing a thought_signature"), and the canonical form has nowhere to keep the real
/// signature between requests.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Whether a model wants thought signatures on replayed function calls (Gemini 3+).
fn needs_signatures(model: &str) -> bool {
    model
        .strip_prefix("gemini-")
        .and_then(|rest| rest.chars().next())
        .and_then(|c| c.to_digit(10))
        .is_some_and(|major| major >= 3)
}

/// Builds the Gemini request body.
fn encode_body(req: &ChatRequest, model: &str) -> Result<Value, GatewayError> {
    let signatures = needs_signatures(model);
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                system.extend(content_parts(&m.content, &param)?);
                continue;
            }
            Role::User => ("user", content_parts(&m.content, &param)?),
            Role::Assistant => {
                let mut parts = content_parts(&m.content, &param)?;
                for (j, tc) in m.tool_calls.iter().flatten().enumerate() {
                    let args = tool_call_input(&tc.function.arguments, &param, j)?;
                    call_names.insert(tc.id.as_str(), tc.function.name.as_str());
                    let mut part =
                        json!({"functionCall": {"name": tc.function.name, "args": args}});
                    if signatures {
                        part["thoughtSignature"] = json!(SKIP_SIGNATURE);
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = call_names
                    .get(id)
                    .copied()
                    .or(m.name.as_deref())
                    .ok_or_else(|| {
                        bad(
                            format!("{param}.tool_call_id"),
                            "no earlier assistant tool call has this id",
                        )
                    })?;
                let response = response_object(&m.text_content());
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
            Role::Function => {
                return Err(bad(
                    format!("{param}.role"),
                    "the legacy 'function' role is not supported; use 'tool'",
                ))
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((r, p)) if *r == role => p.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    if contents.is_empty() {
        return Err(bad(
            "messages".into(),
            "Gemini needs at least one user or assistant message",
        ));
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect(),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.function.name});
                if let Some(desc) = &t.function.description {
                    d["description"] = json!(desc);
                }
                if let Some(p) = t
                    .function
                    .parameters
                    .as_ref()
                    .filter(|p| !is_empty_object(p))
                {
                    d["parameters"] = gemini_schema(p);
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        let config = match &req.tool_choice {
            None => None,
            Some(ToolChoice::Mode(m)) => Some(match m.as_str() {
                "required" => json!({"mode": "ANY"}),
                "none" => json!({"mode": "NONE"}),
                _ => json!({"mode": "AUTO"}),
            }),
            Some(ToolChoice::Named { function, .. }) => {
                Some(json!({"mode": "ANY", "allowedFunctionNames": [function.name]}))
            }
        };
        if let Some(c) = config {
            body.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
        }
    }
    let mut gen = Map::new();
    if let Some(t) = req.temperature {
        gen.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        gen.insert("topP".into(), json!(p));
    }
    if let Some(m) = req.max_output_tokens() {
        gen.insert("maxOutputTokens".into(), json!(m));
    }
    if let Some(stop) = &req.stop {
        let v = stop.to_vec();
        if !v.is_empty() {
            gen.insert("stopSequences".into(), json!(v));
        }
    }
    if let Some(n) = req.n {
        gen.insert("candidateCount".into(), json!(n));
    }
    if let Some(p) = req.presence_penalty {
        gen.insert("presencePenalty".into(), json!(p));
    }
    if let Some(p) = req.frequency_penalty {
        gen.insert("frequencyPenalty".into(), json!(p));
    }
    if let Some(s) = req.seed {
        gen.insert("seed".into(), json!(s));
    }
    if let Some(f) = &req.response_format {
        if f.kind == "json_object" || f.kind == "json_schema" {
            gen.insert("responseMimeType".into(), json!("application/json"));
        }
        if let Some(schema) = f.json_schema.as_ref().and_then(|s| s.get("schema")) {
            gen.insert("responseSchema".into(), gemini_schema(schema));
        }
    }
    if let Some(Value::Object(extra_gen)) = req.extra.get("generationConfig") {
        for (k, v) in extra_gen {
            gen.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if !gen.is_empty() {
        body.insert("generationConfig".into(), Value::Object(gen));
    }
    for k in PASSTHROUGH {
        if let Some(v) = req.extra.get(*k).filter(|v| !v.is_null()) {
            body.insert((*k).into(), v.clone());
        }
    }
    Ok(Value::Object(body))
}

impl Codec for GeminiCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let model = ctx
            .upstream_model
            .strip_prefix("models/")
            .unwrap_or(ctx.upstream_model);
        let body = encode_body(req, model)?;
        let body = serde_json::to_vec(&body).map_err(|_| GatewayError::internal())?;
        let path = if ctx.stream {
            format!("{API_VERSION}/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("{API_VERSION}/models/{model}:generateContent")
        };
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(key) = &ctx.credentials.api_key {
            headers.push(("x-goog-api-key".to_owned(), key.expose().to_owned()));
        }
        Ok(Outbound::Http(HttpRequest {
            method: "POST",
            url: join_url(ctx.base_url, &path),
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
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Err(self.decode_error(status, body, None));
        }
        check_blocked(&v)?;
        let mut choices = Vec::new();
        for (pos, cand) in v["candidates"].as_array().into_iter().flatten().enumerate() {
            let index = cand["index"].as_u64().unwrap_or(pos as u64) as u32;
            let mut text: Option<String> = None;
            let mut reasoning: Option<String> = None;
            let mut calls = Vec::new();
            for part in cand["content"]["parts"].as_array().into_iter().flatten() {
                if let Some(t) = part["text"].as_str() {
                    let slot = if part["thought"] == true {
                        &mut reasoning
                    } else {
                        &mut text
                    };
                    slot.get_or_insert_with(String::new).push_str(t);
                } else if let Some(fc) = part.get("functionCall") {
                    calls.push(ToolCall {
                        id: call_id(&ctx.request_id, index, calls.len()),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: fc["name"].as_str().unwrap_or_default().to_owned(),
                            arguments: args_string(&fc["args"]),
                        },
                    });
                }
            }
            let finish = finish_reason(cand["finishReason"].as_str(), !calls.is_empty());
            let mut message = ResponseMessage::assistant(text);
            message.reasoning_content = reasoning;
            if !calls.is_empty() {
                message.tool_calls = Some(calls);
            }
            choices.push(Choice {
                index,
                message,
                finish_reason: Some(finish.unwrap_or("stop").to_owned()),
                logprobs: None,
            });
        }
        if choices.is_empty() {
            return Err(UpstreamError::protocol(
                "Gemini answered with no candidates",
            ));
        }
        Ok(ChatResponse {
            id: v["responseId"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| ctx.request_id.clone()),
            object: "chat.completion".to_owned(),
            created: ctx.created,
            model: v["modelVersion"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| ctx.model.clone()),
            choices,
            usage: v.get("usageMetadata").map(usage),
            system_fingerprint: None,
        })
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        decode_gemini_error(Some(status), body, retry_after)
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        let json_array = content_type.is_some_and(|c| c.contains("json"));
        Box::new(GeminiStream::new(ctx.clone(), json_array))
    }
}

/// The synthesized id of a function call: Gemini sends none.
fn call_id(request_id: &str, candidate: u32, n: usize) -> String {
    if candidate == 0 {
        format!("call_{request_id}_{n}")
    } else {
        format!("call_{request_id}_{candidate}_{n}")
    }
}

fn args_string(args: &Value) -> String {
    if args.is_null() {
        "{}".to_owned()
    } else {
        args.to_string()
    }
}

/// Gemini's `finishReason` as an OpenAI `finish_reason` (`None` while not finished).
pub fn finish_reason(reason: Option<&str>, has_calls: bool) -> Option<&'static str> {
    Some(match reason? {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        "FINISH_REASON_UNSPECIFIED" => return None,
        _ if has_calls => "tool_calls",
        _ => "stop",
    })
}

/// A prompt blocked before any candidate was generated.
fn check_blocked(v: &Value) -> Result<(), UpstreamError> {
    let no_candidates = v["candidates"].as_array().is_none_or(|c| c.is_empty());
    match v["promptFeedback"]["blockReason"].as_str() {
        Some(reason) if no_candidates => Err(UpstreamError::new(
            UpstreamErrorKind::ContentFilter,
            format!("Gemini blocked the prompt ({reason})"),
        )
        .with_vendor_code(reason)),
        _ => Ok(()),
    }
}

/// `usageMetadata` as canonical usage.
fn usage(u: &Value) -> Usage {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    Usage {
        prompt_tokens: n("promptTokenCount"),
        completion_tokens: n("candidatesTokenCount") + thoughts,
        cached_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
        cost: None,
    }
}

/// Parses a google.rpc duration such as `"41s"` or `"0.5s"` into whole seconds (up).
fn parse_duration_secs(s: &str) -> Option<u64> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs >= 0.0).then(|| secs.ceil() as u64)
}

/// Reads a google.rpc error body (`{"error":{code,message,status,details}}`, or a
/// one-element array of it, as a non-SSE stream sends) and classifies it.
pub fn decode_gemini_error(
    status: Option<u16>,
    body: &[u8],
    retry_after: Option<u64>,
) -> UpstreamError {
    use UpstreamErrorKind as K;
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let v = match &v {
        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
        _ => v,
    };
    let err = &v["error"];
    let rpc_status = err["status"].as_str().unwrap_or_default();
    let message = err["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| match status {
            Some(s) if body.is_empty() => format!("HTTP {s} with an empty body"),
            _ => excerpt(body),
        });
    let details = err["details"].as_array().cloned().unwrap_or_default();
    let reason = details
        .iter()
        .find_map(|d| d["reason"].as_str())
        .unwrap_or_default()
        .to_owned();
    let retry_delay = details
        .iter()
        .find_map(|d| d["retryDelay"].as_str())
        .and_then(parse_duration_secs);
    let http = status.or_else(|| err["code"].as_u64().map(|c| c as u16));
    let kind = match (rpc_status, reason.as_str()) {
        (_, "API_KEY_INVALID") | (_, "API_KEY_EXPIRED") | ("UNAUTHENTICATED", _) => K::Auth,
        ("PERMISSION_DENIED", _) => K::PermissionDenied,
        ("INVALID_ARGUMENT", _) | ("FAILED_PRECONDITION", _) | ("OUT_OF_RANGE", _) => K::BadRequest,
        ("NOT_FOUND", _) => K::NotFound,
        ("RESOURCE_EXHAUSTED", _) => K::RateLimited,
        ("UNAVAILABLE", _) => K::Overloaded,
        ("DEADLINE_EXCEEDED", _) => K::Timeout,
        ("INTERNAL", _) | ("UNKNOWN", _) | ("CANCELLED", _) => K::Server,
        _ => http.map_or(K::Server, UpstreamError::kind_for_status),
    };
    let mut e = UpstreamError::new(kind, message).with_retry_after(retry_delay.or(retry_after));
    if let Some(s) = status {
        e = e.with_status(s);
    }
    let code = if !reason.is_empty() {
        reason
    } else {
        rpc_status.to_owned()
    };
    if !code.is_empty() {
        e = e.with_vendor_code(code);
    }
    e
}

/// Decodes `streamGenerateContent` (SSE with `alt=sse`, or one JSON array without).
pub struct GeminiStream {
    sse: SseParser,
    events: Vec<SseEvent>,
    ctx: DecodeCtx,
    /// Set when the body is a JSON array (no `alt=sse`): buffered and read at the end.
    json_array: Option<Vec<u8>>,
    id: Option<String>,
    model: Option<String>,
    /// Per candidate: whether the role was sent, and how many calls so far.
    candidates: HashMap<u32, (bool, usize)>,
    finished: bool,
}

impl GeminiStream {
    pub fn new(ctx: DecodeCtx, json_array: bool) -> Self {
        GeminiStream {
            sse: SseParser::new(),
            events: Vec::new(),
            ctx,
            json_array: json_array.then(Vec::new),
            id: None,
            model: None,
            candidates: HashMap::new(),
            finished: false,
        }
    }

    fn handle_value(&mut self, v: &Value, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Err(decode_gemini_error(None, v.to_string().as_bytes(), None));
        }
        check_blocked(v)?;
        if self.id.is_none() {
            self.id = v["responseId"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
        }
        if self.model.is_none() {
            self.model = v["modelVersion"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
        }
        let mut choices = Vec::new();
        for (pos, cand) in v["candidates"].as_array().into_iter().flatten().enumerate() {
            let index = cand["index"].as_u64().unwrap_or(pos as u64) as u32;
            let (role_sent, calls) = self.candidates.entry(index).or_insert((false, 0));
            let mut delta = Delta::default();
            if !*role_sent {
                delta.role = Some("assistant".to_owned());
                *role_sent = true;
            }
            let mut tool_calls = Vec::new();
            for part in cand["content"]["parts"].as_array().into_iter().flatten() {
                if let Some(t) = part["text"].as_str() {
                    let slot = if part["thought"] == true {
                        &mut delta.reasoning_content
                    } else {
                        &mut delta.content
                    };
                    slot.get_or_insert_with(String::new).push_str(t);
                } else if let Some(fc) = part.get("functionCall") {
                    tool_calls.push(ToolCallDelta {
                        index: *calls as u32,
                        id: Some(call_id(&self.ctx.request_id, index, *calls)),
                        kind: Some("function".to_owned()),
                        function: Some(FunctionDelta {
                            name: fc["name"].as_str().map(str::to_owned),
                            arguments: Some(args_string(&fc["args"])),
                        }),
                    });
                    *calls += 1;
                }
            }
            if !tool_calls.is_empty() {
                delta.tool_calls = Some(tool_calls);
            }
            let finish = finish_reason(cand["finishReason"].as_str(), *calls > 0);
            if finish.is_some() {
                self.finished = true;
            }
            choices.push(ChunkChoice {
                index,
                delta,
                finish_reason: finish.map(str::to_owned),
                logprobs: None,
            });
        }
        if !choices.is_empty() {
            out.push(StreamEvent::Chunk(ChatChunk {
                id: self
                    .id
                    .clone()
                    .unwrap_or_else(|| self.ctx.request_id.clone()),
                object: "chat.completion.chunk".to_owned(),
                created: self.ctx.created,
                model: self.model.clone().unwrap_or_else(|| self.ctx.model.clone()),
                choices,
                system_fingerprint: None,
                usage: None,
            }));
        }
        if let Some(u) = v.get("usageMetadata") {
            out.push(StreamEvent::Usage(usage(u)));
        }
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            let data = ev.data.trim();
            if data.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(data).map_err(|e| {
                UpstreamError::protocol(format!(
                    "stream event is not JSON ({e}): {}",
                    excerpt(data.as_bytes())
                ))
            })?;
            self.handle_value(&v, out)?;
        }
        Ok(())
    }
}

impl StreamDecoder for GeminiStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        if let Some(buf) = self.json_array.as_mut() {
            buf.extend_from_slice(data);
            return Ok(());
        }
        self.sse.feed(data, &mut self.events);
        self.drain(out)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        if let Some(buf) = self.json_array.take() {
            let v: Value = serde_json::from_slice(&buf).map_err(|e| {
                UpstreamError::protocol(format!("stream body is not a JSON array ({e})"))
            })?;
            let items = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            for item in &items {
                self.handle_value(item, out)?;
            }
        } else {
            self.sse.finish(&mut self.events);
            self.drain(out)?;
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

    fn ectx<'a>(creds: &'a Credentials, stream: bool) -> EncodeCtx<'a> {
        EncodeCtx {
            base_url: "http://127.0.0.1:9",
            upstream_model: "gemini-2.5-flash",
            credentials: creds,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream,
        }
    }

    fn dctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "req1".into(),
            created: 9,
            model: "gemini-2.5-flash".into(),
        }
    }

    fn encode(req: Value, stream: bool) -> Result<(HttpRequest, Value), GatewayError> {
        let creds = Credentials {
            api_key: Some(Secret::new("AIza-up")),
            ..Default::default()
        };
        let req: ChatRequest = serde_json::from_value(req).unwrap();
        match GeminiCodec::new().encode(&req, &ectx(&creds, stream))? {
            Outbound::Http(h) => {
                let body = serde_json::from_slice(&h.body).unwrap();
                Ok((h, body))
            }
            Outbound::WebSocket(_) => unreachable!(),
        }
    }

    #[test]
    fn encodes_roles_tools_results_and_generation_config() {
        let (h, body) = encode(
            json!({"model":"gemini/gemini-2.5-flash","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"what is this?"},
                    {"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/4A"}}]},
                {"role":"assistant","content":"Checking.","tool_calls":[
                    {"id":"call_a","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"cat\"}"}},
                    {"id":"call_b","type":"function","function":{"name":"count","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_a","content":"{\"animal\":\"cat\"}"},
                {"role":"tool","tool_call_id":"call_b","content":"3"},
                {"role":"user","content":"ok"}],
              "tools":[{"type":"function","function":{"name":"lookup","description":"find",
                  "parameters":{"$schema":"http://json-schema.org/draft-07/schema#","type":"object",
                    "properties":{"q":{"type":["string","null"],"description":"query"},
                      "mode":{"const":"fast"},"n":{"type":"integer","enum":[1,2]}},
                    "required":["q"],"additionalProperties":false},"strict":true}},
                {"type":"function","function":{"name":"count","parameters":{"type":"object","properties":{}}}}],
              "tool_choice":{"type":"function","function":{"name":"lookup"}},
              "temperature":1.5,"top_p":0.8,"max_tokens":256,"stop":["END"],"n":2,"seed":4,
              "response_format":{"type":"json_schema","json_schema":{"name":"r","strict":true,
                  "schema":{"type":"object","properties":{"a":{"type":"string"}},"additionalProperties":false}}},
              "safetySettings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_NONE"}]}),
            true,
        )
        .unwrap();
        assert_eq!(
            h.url,
            "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert!(h
            .headers
            .contains(&("x-goog-api-key".into(), "AIza-up".into())));
        assert_eq!(
            body,
            json!({
                "contents":[
                    {"role":"user","parts":[{"text":"what is this?"},{"inlineData":{"mimeType":"image/jpeg","data":"/9j/4A"}}]},
                    {"role":"model","parts":[{"text":"Checking."},
                        {"functionCall":{"name":"lookup","args":{"q":"cat"}}},
                        {"functionCall":{"name":"count","args":{}}}]},
                    {"role":"user","parts":[
                        {"functionResponse":{"name":"lookup","response":{"animal":"cat"}}},
                        {"functionResponse":{"name":"count","response":{"result":3}}},
                        {"text":"ok"}]}],
                "systemInstruction":{"parts":[{"text":"be brief"}]},
                "tools":[{"functionDeclarations":[
                    {"name":"lookup","description":"find","parameters":{"type":"object",
                        "properties":{"q":{"type":"string","nullable":true,"description":"query"},
                            "mode":{"enum":["fast"]},"n":{"type":"integer","enum":["1","2"]}},
                        "required":["q"]}},
                    {"name":"count"}]}],
                "toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["lookup"]}},
                "generationConfig":{"temperature":1.5,"topP":0.8,"maxOutputTokens":256,"stopSequences":["END"],
                    "candidateCount":2,"seed":4,"responseMimeType":"application/json",
                    "responseSchema":{"type":"object","properties":{"a":{"type":"string"}}}},
                "safetySettings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_NONE"}]
            })
        );
        let (h, body) = encode(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto"}),
            false,
        )
        .unwrap();
        assert_eq!(
            h.url,
            "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig":{"mode":"AUTO"}})
        );
        assert!(body.get("generationConfig").is_none());
    }

    #[test]
    fn gemini_3_replays_calls_with_the_signature_sentinel() {
        let req: ChatRequest = serde_json::from_value(json!({"model":"m","messages":[
            {"role":"user","content":"hi"},
            {"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"ok"}]}))
        .unwrap();
        let creds = Credentials::default();
        for (model, signed) in [
            ("gemini-3-pro-preview", true),
            ("models/gemini-3.1-flash", true),
            ("gemini-2.5-flash", false),
        ] {
            let mut ctx = ectx(&creds, false);
            ctx.upstream_model = model;
            let Outbound::Http(h) = GeminiCodec::new().encode(&req, &ctx).unwrap() else {
                unreachable!()
            };
            let body: Value = serde_json::from_slice(&h.body).unwrap();
            let part = &body["contents"][1]["parts"][0];
            assert_eq!(part["functionCall"]["name"], "f");
            assert_eq!(
                part.get("thoughtSignature").is_some(),
                signed,
                "{model}: {part}"
            );
        }
        assert_eq!(SKIP_SIGNATURE, "skip_thought_signature_validator");
    }

    #[test]
    fn unknown_tool_call_id_names_the_field() {
        let e = encode(
            json!({"model":"m","messages":[{"role":"user","content":"hi"},
                {"role":"tool","tool_call_id":"nope","content":"x"}]}),
            false,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[1].tool_call_id"));
    }

    #[test]
    fn decodes_calls_with_synthesized_ids_and_usage() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[
            {"text":"thinking...","thought":true},
            {"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"CiIB"},
            {"functionCall":{"name":"get_time"}}]},"finishReason":"STOP","index":0}],
          "usageMetadata":{"promptTokenCount":83,"candidatesTokenCount":14,"totalTokenCount":201,
            "thoughtsTokenCount":104,"cachedContentTokenCount":64,
            "promptTokensDetails":[{"modality":"TEXT","tokenCount":83}]},
          "modelVersion":"gemini-2.5-flash","responseId":"qpc2abc"}"#;
        let r = GeminiCodec::new().decode(200, body, &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"qpc2abc","object":"chat.completion","created":9,"model":"gemini-2.5-flash",
                "choices":[{"index":0,"finish_reason":"tool_calls","logprobs":null,
                    "message":{"role":"assistant","refusal":null,"content":null,"reasoning_content":"thinking...","tool_calls":[
                        {"id":"call_req1_0","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                        {"id":"call_req1_1","type":"function","function":{"name":"get_time","arguments":"{}"}}]}}],
                "usage":{"prompt_tokens":83,"completion_tokens":118,"total_tokens":201,
                    "prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":104}}})
        );
    }

    #[test]
    fn finish_reasons_and_blocked_prompts() {
        assert_eq!(finish_reason(Some("STOP"), false), Some("stop"));
        assert_eq!(finish_reason(Some("STOP"), true), Some("tool_calls"));
        assert_eq!(finish_reason(Some("MAX_TOKENS"), true), Some("length"));
        for r in [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
        ] {
            assert_eq!(finish_reason(Some(r), false), Some("content_filter"));
        }
        assert_eq!(finish_reason(None, false), None);
        let body = br#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},
            "usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}}"#;
        let e = GeminiCodec::new().decode(200, body, &dctx()).unwrap_err();
        assert_eq!(
            (e.kind, e.vendor_code.as_deref()),
            (UpstreamErrorKind::ContentFilter, Some("SAFETY"))
        );
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Partial"}],"role":"model"},"finishReason":"SAFETY","index":0}]}"#;
        let r = GeminiCodec::new().decode(200, body, &dctx()).unwrap();
        assert_eq!(
            r.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
    }

    #[test]
    fn errors_are_classified() {
        let c = GeminiCodec::new();
        let e = c.decode_error(
            400,
            br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.",
              "status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",
              "reason":"API_KEY_INVALID","domain":"googleapis.com",
              "metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#,
            None,
        );
        assert_eq!(
            (e.kind, e.status, e.vendor_code.as_deref()),
            (UpstreamErrorKind::Auth, Some(400), Some("API_KEY_INVALID"))
        );
        let e = c.decode_error(
            429,
            br#"{"error":{"code":429,"message":"You exceeded your current quota","status":"RESOURCE_EXHAUSTED",
              "details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]},
                {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"41s"}]}}"#,
            Some(2),
        );
        assert_eq!(
            (e.kind, e.retry_after_secs),
            (UpstreamErrorKind::RateLimited, Some(41))
        );
        let cases: &[(u16, &str, UpstreamErrorKind)] = &[
            (400, "INVALID_ARGUMENT", UpstreamErrorKind::BadRequest),
            (
                403,
                "PERMISSION_DENIED",
                UpstreamErrorKind::PermissionDenied,
            ),
            (404, "NOT_FOUND", UpstreamErrorKind::NotFound),
            (500, "INTERNAL", UpstreamErrorKind::Server),
            (503, "UNAVAILABLE", UpstreamErrorKind::Overloaded),
            (504, "DEADLINE_EXCEEDED", UpstreamErrorKind::Timeout),
        ];
        for (status, rpc, kind) in cases {
            let body =
                format!(r#"[{{"error":{{"code":{status},"message":"m","status":"{rpc}"}}}}]"#);
            let e = c.decode_error(*status, body.as_bytes(), None);
            assert_eq!(e.kind, *kind, "{rpc}");
            assert_eq!(e.vendor_code.as_deref(), Some(*rpc));
        }
        assert_eq!(parse_duration_secs("0.5s"), Some(1));
    }

    /// A captured-style `alt=sse` stream: CRLF, cumulative usage in every event,
    /// finishReason on the last, no terminator.
    const STREAM: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The \"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 1,\"totalTokenCount\": 10},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"answer.\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 3,\"totalTokenCount\": 12},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"f\",\"args\": {\"x\": 1}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 8,\"totalTokenCount\": 37,\"thoughtsTokenCount\": 20},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n";

    fn run(input: &str, piece: usize, ct: &str) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = GeminiCodec::new().stream_decoder(&dctx(), Some(ct));
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn stream_decodes_at_every_split() {
        let reference = run(STREAM, STREAM.len(), "text/event-stream").unwrap();
        for piece in 1..STREAM.len() {
            assert_eq!(
                run(STREAM, piece, "text/event-stream").unwrap(),
                reference,
                "piece {piece}"
            );
        }
        let usages = reference
            .iter()
            .filter(|e| matches!(e, StreamEvent::Usage(_)))
            .count();
        assert_eq!(usages, 3);
        assert_eq!(reference.last(), Some(&StreamEvent::Done));
        let r = aggregate(reference, &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"r1","object":"chat.completion","created":9,"model":"gemini-2.5-flash",
                "choices":[{"index":0,"finish_reason":"tool_calls","logprobs":null,
                    "message":{"role":"assistant","refusal":null,"content":"The answer.","tool_calls":[
                        {"id":"call_req1_0","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]}}],
                "usage":{"prompt_tokens":9,"completion_tokens":28,"total_tokens":37,
                    "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":20}}})
        );
        // The same stream as one JSON array (no alt=sse).
        let array = format!(
            "[{}]",
            STREAM
                .split("\r\n\r\n")
                .filter(|s| !s.is_empty())
                .map(|s| s.trim_start_matches("data: "))
                .collect::<Vec<_>>()
                .join(",\r\n")
        );
        for piece in [1, 13, array.len()] {
            let ev = run(&array, piece, "application/json; charset=UTF-8").unwrap();
            assert_eq!(aggregate(ev, &dctx()).unwrap(), r);
        }
    }

    #[test]
    fn cut_stream_has_no_done_and_errors_raise() {
        let cut = &STREAM[..STREAM.rfind("data:").unwrap()];
        assert!(!run(cut, 11, "text/event-stream")
            .unwrap()
            .contains(&StreamEvent::Done));
        let err = "data: {\"error\": {\"code\": 503,\"message\": \"The model is overloaded.\",\"status\": \"UNAVAILABLE\"}}\r\n\r\n";
        let e = run(err, 7, "text/event-stream").unwrap_err();
        assert_eq!((e.kind, e.status), (UpstreamErrorKind::Overloaded, None));
    }
}
