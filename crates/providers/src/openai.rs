//! The OpenAI Chat Completions protocol and the vendors that speak a dialect of it:
//! OpenAI, DeepSeek, Moonshot, Mistral and any `openai_compatible` server.
//!
//! Dialects ([`Flavor`]) differ in small, documented ways (../shared/vendors/PROTOCOLS.md):
//! - Mistral rejects unknown fields and `stream_options`, spells `seed` as
//!   `random_seed`, and always sends usage on the final stream chunk;
//! - Moonshot takes temperature in [0, 1] and puts stream usage inside the choice;
//! - DeepSeek reports cache hits as `prompt_cache_hit_tokens`.
//!
//! On a stream tollgate always asks for usage (`stream_options.include_usage`) where the
//! vendor accepts it; the server passes the usage chunk on only to clients that asked.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::{Map, Value};
use tollgate_core::chat::{
    ChatChunk, ChatRequest, ChatResponse, ChunkChoice, StreamOptions, Usage,
};
use tollgate_core::sse::{SseEvent, SseParser};
use tollgate_core::{GatewayError, UpstreamError, UpstreamErrorKind};

use crate::codec::{
    excerpt, join_url, Codec, DecodeCtx, EncodeCtx, HttpRequest, Outbound, StreamDecoder,
    StreamEvent, Verbatim, VerbatimChunk,
};
use crate::jscan::{ScanError, Walk};

/// Which dialect of the OpenAI protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    DeepSeek,
    Moonshot,
    Mistral,
    /// vLLM, llama.cpp, Ollama, ...: forward everything, ask for stream usage.
    Compatible,
}

/// The OpenAI-family codec.
#[derive(Debug, Clone)]
pub struct OpenAiCodec {
    pub flavor: Flavor,
}

impl OpenAiCodec {
    pub fn new(flavor: Flavor) -> Self {
        OpenAiCodec { flavor }
    }
}

/// Request fields Mistral's API accepts; anything else is dropped, since Mistral
/// answers unknown fields with a 422.
const MISTRAL_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "safe_prompt",
    "parallel_tool_calls",
    "prediction",
    "prompt_mode",
];

impl Codec for OpenAiCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let mut req = req.clone();
        req.model = ctx.upstream_model.to_owned();
        req.stream = Some(ctx.stream);
        if ctx.stream && self.flavor != Flavor::Mistral {
            let opts = req
                .stream_options
                .get_or_insert_with(StreamOptions::default);
            opts.include_usage = Some(true);
        } else {
            req.stream_options = None;
        }
        if self.flavor == Flavor::Moonshot {
            if let Some(t) = req.temperature.as_mut() {
                *t = t.clamp(0.0, 1.0);
            }
        }
        let body = if self.flavor == Flavor::Mistral {
            let mut body = serde_json::to_value(&req).map_err(|_| GatewayError::internal())?;
            if let Value::Object(map) = &mut body {
                if let Some(seed) = map.remove("seed") {
                    map.insert("random_seed".into(), seed);
                }
                if let Some(m) = map.remove("max_completion_tokens") {
                    map.entry("max_tokens").or_insert(m);
                }
                map.retain(|k, _| MISTRAL_FIELDS.contains(&k.as_str()));
            }
            serde_json::to_vec(&body)
        } else {
            serde_json::to_vec(&req)
        }
        .map_err(|_| GatewayError::internal())?;
        Ok(Outbound::Http(openai_http(ctx, body)))
    }

    /// OpenAI itself only (the dialects rewrite fields). The client's body goes out with
    /// its `model` replaced by the upstream model id and, on a stream, `stream_options`
    /// asking for usage added; everything else as the client wrote it. A body whose
    /// `stream`/`stream_options` would need rewriting is left to [`Codec::encode`].
    fn encode_verbatim(
        &self,
        body: &[u8],
        _req: &ChatRequest,
        ctx: &EncodeCtx<'_>,
    ) -> Option<Outbound> {
        if self.flavor != Flavor::OpenAi {
            return None;
        }
        let body = verbatim_request(body, ctx.upstream_model, ctx.stream)?;
        Some(Outbound::Http(openai_http(ctx, body)))
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
        // DeepSeek may send blank lines before the JSON while the request queues.
        let trimmed = trim_ascii_start(body);
        // Straight into the typed answer (no intermediate `Value`: this is the hot path);
        // only a body that is not an answer is looked at again, for an error object.
        let mut resp: ChatResponse = match serde_json::from_slice(trimmed) {
            Ok(r) => r,
            Err(shape) => {
                let v: Value = serde_json::from_slice(trimmed)
                    .map_err(|e| UpstreamError::protocol(format!("response is not JSON: {e}")))?;
                if v.get("error").is_some_and(|e| !e.is_null()) {
                    return Err(self.decode_error(status, trimmed, None));
                }
                return Err(UpstreamError::protocol(format!(
                    "unexpected response shape: {shape}"
                )));
            }
        };
        if resp.id.is_empty() {
            resp.id.clone_from(&ctx.request_id);
        }
        Ok(resp)
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        decode_openai_error(status, body, retry_after)
    }

    /// OpenAI's own answers only: the dialects' usage is rewritten into OpenAI's shape
    /// (DeepSeek's and Moonshot's cache fields), and `openai_compatible` servers vary.
    fn verbatim(&self, body: &[u8]) -> Option<Verbatim> {
        if self.flavor != Flavor::OpenAi {
            return None;
        }
        verbatim_answer(body)
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        _content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStream::new(ctx.clone()))
    }

    /// OpenAI's own streams only, as for [`Codec::verbatim`].
    fn verbatim_stream_decoder(&self, ctx: &DecodeCtx) -> Option<Box<dyn StreamDecoder>> {
        (self.flavor == Flavor::OpenAi)
            .then(|| Box::new(OpenAiVerbatimStream::new(ctx.clone())) as Box<dyn StreamDecoder>)
    }
}

/// A Chat Completions answer that can be relayed as it is: a JSON object with a
/// non-empty string `id`, an integer `created`, a string `model`, a `choices` array, a
/// usage object without a `cost`, and no error. See [`Codec::verbatim`]. The body is
/// validated as JSON whole ([`crate::jscan`]); only the usage is parsed.
pub fn verbatim_answer(body: &[u8]) -> Option<Verbatim> {
    let [id, created, model, choices, usage, error] = crate::jscan::top_level(
        body,
        ["id", "created", "model", "choices", "usage", "error"],
    )
    .ok()?;
    let text = |r: &std::ops::Range<usize>| &body[r.clone()];
    let starts = |r: &Option<std::ops::Range<usize>>, c: u8| {
        r.as_ref().is_some_and(|r| text(r).first() == Some(&c))
    };
    let id_ok = starts(&id, b'"') && id.as_ref().is_some_and(|r| r.len() > 2);
    let no_error = error.as_ref().is_none_or(|r| text(r) == b"null");
    if !(id_ok && starts(&model, b'"') && starts(&choices, b'[') && no_error) {
        return None;
    }
    std::str::from_utf8(text(&created?))
        .ok()?
        .parse::<i64>()
        .ok()?;
    usage_at(body, usage?)
}

/// The usage object at `range` of `json`, if it is one without a `cost`. `json` must be
/// checked JSON (accepted by `jscan::top_level`, or a serde `RawValue`): the object is
/// read without checking its grammar again.
fn usage_at(json: &[u8], range: std::ops::Range<usize>) -> Option<Verbatim> {
    let raw = &json[range.clone()];
    if raw.first() != Some(&b'{') {
        return None;
    }
    // `raw` is a member of an answer `jscan::top_level` accepted: no second check.
    let found = crate::jscan::top_level_checked(raw, USAGE_KEYS).ok()?;
    // A `cost` of any type already there (an aggregator's) would be duplicated.
    if found[0].is_some() {
        return None;
    }
    let usage = match usage_fields(raw, &found) {
        Some(fields) => Usage::from_fields(fields),
        None => serde_json::from_slice(raw).ok()?,
    };
    Some(Verbatim {
        usage,
        usage_close: range.end - 1,
        usage_has_members: !raw[1..raw.len() - 1].trim_ascii().is_empty(),
    })
}

/// The usage members [`usage_at`] looks for; `cost` first.
const USAGE_KEYS: [&str; 9] = [
    "cost",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "prompt_cache_hit_tokens",
    "cached_tokens",
    "cache_creation_input_tokens",
];

/// The members of a usage object (`raw`, already checked by [`crate::jscan`], with the
/// spans of [`USAGE_KEYS`] in `found`) read without serde, when every one present is
/// what vendors send: a plain integer, `null`, or for the details an object of those.
/// `None` otherwise (a float, a sign, an exponent, a number past `u64`, a string...):
/// serde decides those, so both readers always agree (a test checks it). Serde took
/// ~5,500 instructions for OpenAI's usage object; this ~2,800, most of it `jscan`
/// checking the two details objects.
fn usage_fields(
    raw: &[u8],
    found: &[Option<std::ops::Range<usize>>; 9],
) -> Option<tollgate_core::chat::UsageFields> {
    /// `Some(None)` for absent or `null`, `Some(Some(n))` for digits that fit.
    fn count(raw: &[u8], span: &Option<std::ops::Range<usize>>) -> Option<Option<u64>> {
        let Some(r) = span else { return Some(None) };
        let v = &raw[r.clone()];
        if v == b"null" {
            return Some(None);
        }
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // At most 20 digits, and jscan allows no leading zeros: `parse` decides the rest.
        std::str::from_utf8(v).ok()?.parse::<u64>().ok().map(Some)
    }
    /// An object's one count member, as serde reads it into a details struct.
    fn detail(raw: &[u8], span: &Option<std::ops::Range<usize>>, key: &str) -> Option<Option<u64>> {
        let Some(r) = span else { return Some(None) };
        let v = &raw[r.clone()];
        if v == b"null" {
            return Some(None);
        }
        if v.first() != Some(&b'{') {
            return None;
        }
        let [inner] = crate::jscan::top_level_checked(v, [key]).ok()?;
        Some(Some(count(v, &inner)?.unwrap_or(0)))
    }
    Some(tollgate_core::chat::UsageFields {
        prompt_tokens: count(raw, &found[1])?.unwrap_or(0),
        completion_tokens: count(raw, &found[2])?.unwrap_or(0),
        total_tokens: count(raw, &found[3])?.unwrap_or(0),
        details_cached_tokens: detail(raw, &found[4], "cached_tokens")?,
        details_reasoning_tokens: detail(raw, &found[5], "reasoning_tokens")?,
        prompt_cache_hit_tokens: count(raw, &found[6])?,
        cached_tokens: count(raw, &found[7])?,
        cache_creation_input_tokens: count(raw, &found[8])?,
        cost: None,
    })
}

/// A stream chunk that can be relayed as it is (see [`Codec::verbatim_stream_decoder`]):
/// what [`verbatim_answer`] requires of an answer, except that the usage may be absent
/// or `null`; a chunk with usage must have no choices (OpenAI's last chunk). `Err` gives
/// the chunk back for the plain decoder, which re-encodes it (or reports the error it
/// carries).
///
/// Chunks are small and many (one per token or so), so one validating pass reads the
/// checks, the text of the choices and where the usage is: [`Walk`]. It accepts what the
/// plain decoder's serde structs accept, minus rare shapes it leaves to that decoder (a
/// struct written as an array, unknown members nested past 127); the tests compare it with
/// serde's reading (`serde_probe`). serde's derive probe cost ~5.4k instructions a
/// chunk.
///
/// [`Walk`]: crate::jscan::Walk
pub fn verbatim_chunk(json: String) -> Result<VerbatimChunk, String> {
    match read_chunk(&json) {
        Ok((text, usage_span, choices)) => {
            let usage = match usage_span {
                Some(span) => match usage_at(json.as_bytes(), span) {
                    Some(v) if choices == 0 => Some(v),
                    _ => return Err(json),
                },
                None => None,
            };
            Ok(VerbatimChunk { json, text, usage })
        }
        Err(_) => Err(json),
    }
}

/// One string value's text: borrowed, or unescaped by serde_json (which also refuses
/// what it refuses, such as a lone surrogate).
#[inline(always)]
fn string_text(json: &str, span: Range<usize>, escaped: bool) -> Result<Cow<'_, str>, ScanError> {
    if !escaped {
        return Ok(Cow::Borrowed(json.get(span).ok_or(ScanError::Invalid)?));
    }
    unescape(json, span).map(Cow::Owned)
}

/// A member's key, as bytes to compare with the names wanted.
#[inline(always)]
fn key_bytes(json: &str, span: Range<usize>, escaped: bool) -> Result<Cow<'_, [u8]>, ScanError> {
    Ok(match string_text(json, span, escaped)? {
        Cow::Borrowed(k) => Cow::Borrowed(k.as_bytes()),
        Cow::Owned(k) => Cow::Owned(k.into_bytes()),
    })
}

/// The text of an escaped string (`span` is its content, inside the quotes).
#[cold]
fn unescape(json: &str, span: Range<usize>) -> Result<String, ScanError> {
    let start = span.start.checked_sub(1).ok_or(ScanError::Invalid)?;
    let quoted = json.get(start..span.end + 1).ok_or(ScanError::Invalid)?;
    serde_json::from_str::<String>(quoted).map_err(|_| ScanError::Invalid)
}

/// Marks a member as read; a member read twice is refused, as serde's derive refuses a
/// repeated field.
fn once(seen: &mut bool) -> Result<(), ScanError> {
    if std::mem::replace(seen, true) {
        Err(ScanError::Ambiguous)
    } else {
        Ok(())
    }
}

/// A string or `null` (serde's `Option<Cow<str>>`).
fn opt_text<'j>(
    w: &mut Walk<'j>,
    json: &'j str,
    seen: &mut bool,
) -> Result<Option<Cow<'j, str>>, ScanError> {
    once(seen)?;
    if w.null()? {
        return Ok(None);
    }
    let (span, escaped) = w.string()?;
    string_text(json, span, escaped).map(Some)
}

/// Reads a chunk's members in one pass: the text of its choices (content, reasoning,
/// tool-call arguments, in that order per choice, as `serde_probe` joins them), the
/// span of a non-null `usage`, and the number of choices. `Err` when the chunk is not
/// one to relay as it is.
fn read_chunk(json: &str) -> Result<(String, Option<Range<usize>>, usize), ScanError> {
    let mut w = Walk::new(json);
    let mut text = String::new();
    let (mut id, mut created, mut model, mut choices_seen) = (false, false, false, false);
    let mut choices = 0;
    let (mut usage, mut usage_seen, mut error_seen) = (None, false, false);
    w.object(0, |w, key, escaped| {
        match &*key_bytes(json, key, escaped)? {
            b"id" => {
                once(&mut id)?;
                let (span, _) = w.string()?;
                // Escapes never make an empty text, nor remove all of one.
                if span.is_empty() {
                    return Err(ScanError::Invalid);
                }
            }
            b"created" => {
                once(&mut created)?;
                let span = w.skip(1)?;
                // serde_json reads `-0` as a float (it keeps the sign), which an `i64`
                // field refuses.
                let n = json.get(span).ok_or(ScanError::Invalid)?;
                if n == "-0" || n.parse::<i64>().is_err() {
                    return Err(ScanError::Invalid);
                }
            }
            b"model" => {
                once(&mut model)?;
                w.string()?;
            }
            b"choices" => {
                once(&mut choices_seen)?;
                let mut n = 0;
                w.array(1, |w| {
                    n += 1;
                    read_choice(w, json, &mut text)
                })?;
                choices = n;
            }
            b"usage" => {
                once(&mut usage_seen)?;
                if !w.null()? {
                    usage = Some(w.skip(1)?);
                }
            }
            b"error" => {
                once(&mut error_seen)?;
                if !w.null()? {
                    return Err(ScanError::Ambiguous);
                }
            }
            _ => {
                w.skip(1)?;
            }
        }
        Ok(())
    })?;
    w.end()?;
    if id && created && model && choices_seen {
        Ok((text, usage, choices))
    } else {
        Err(ScanError::Invalid)
    }
}

/// An object at nesting `depth` of which one member, `name`, is read: by `read`, when it
/// is there and not null. Other members are checked and skipped; `name` twice is refused,
/// as serde's derive refuses a repeated field.
fn member_of<'j>(
    w: &mut Walk<'j>,
    depth: usize,
    json: &'j str,
    name: &[u8],
    mut read: impl FnMut(&mut Walk<'j>) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let mut seen = false;
    w.object(depth, |w, key, escaped| {
        if *key_bytes(json, key, escaped)? != *name {
            w.skip(depth + 1)?;
            return Ok(());
        }
        once(&mut seen)?;
        if w.null()? {
            return Ok(());
        }
        read(w)
    })
}

/// One element of `choices` (nesting 2): its `delta`'s text fields, joined as serde's
/// reading joins them (content, reasoning, then tool-call arguments).
fn read_choice<'j>(w: &mut Walk<'j>, json: &'j str, text: &mut String) -> Result<(), ScanError> {
    member_of(w, 2, json, b"delta", |w| {
        let (mut content, mut reasoning) = (None, None);
        let (mut content_seen, mut reasoning_seen, mut tools_seen) = (false, false, false);
        let mut arguments = String::new();
        w.object(3, |w, key, escaped| {
            match &*key_bytes(json, key, escaped)? {
                b"content" => content = opt_text(w, json, &mut content_seen)?,
                b"reasoning_content" => reasoning = opt_text(w, json, &mut reasoning_seen)?,
                b"tool_calls" => {
                    once(&mut tools_seen)?;
                    if !w.null()? {
                        w.array(4, |w| {
                            // A tool call (nesting 5): `function.arguments`.
                            member_of(w, 5, json, b"function", |w| {
                                member_of(w, 6, json, b"arguments", |w| {
                                    let (span, escaped) = w.string()?;
                                    arguments.push_str(&string_text(json, span, escaped)?);
                                    Ok(())
                                })
                            })
                        })?;
                    }
                }
                _ => {
                    w.skip(4)?;
                }
            }
            Ok(())
        })?;
        text.push_str(content.as_deref().unwrap_or(""));
        text.push_str(reasoning.as_deref().unwrap_or(""));
        text.push_str(&arguments);
        Ok(())
    })
}

/// The canonical events of a chunk's JSON (what [`OpenAiStream`] would have decoded).
pub fn canonical_chunk(json: &str) -> Vec<StreamEvent> {
    let mut decoder = OpenAiStream::new(DecodeCtx {
        request_id: String::new(),
        created: 0,
        model: String::new(),
    });
    let mut out = Vec::new();
    let ev = SseEvent {
        data: json.to_owned(),
        ..SseEvent::default()
    };
    // A verbatim chunk passed the checks that make this decode succeed.
    let _ = decoder.handle(&ev, &mut out);
    out
}

/// The HTTP request for a Chat Completions body.
fn openai_http(ctx: &EncodeCtx<'_>, body: Vec<u8>) -> HttpRequest {
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
    ];
    if let Some(key) = &ctx.credentials.api_key {
        headers.push((
            "authorization".to_owned(),
            format!("Bearer {}", key.expose()),
        ));
    }
    HttpRequest {
        method: "POST",
        url: join_url(ctx.base_url, "chat/completions"),
        headers,
        body,
    }
}

/// The client's Chat Completions `body` for the upstream: `model` set to `model` and, for
/// a stream, `"stream_options":{"include_usage":true}` added. `None` when the body's
/// `stream` does not say what `stream` says, or a stream has `stream_options` already
/// (then [`Codec::encode`] merges them), or it is not a JSON object with a string `model`.
///
/// `body` must be JSON `serde_json` accepted: the body the [`ChatRequest`] handed to
/// [`Codec::encode_verbatim`] was parsed from. Its grammar is therefore not checked a
/// second time ([`crate::jscan::top_level_checked`]), which for an 8 KB prompt was most
/// of the cost. A test compares the result with the checking scan's on ~8,400 bodies
/// serde accepts. On other text it returns `None` or a wrong body, but never panics.
pub fn verbatim_request(body: &[u8], model: &str, stream: bool) -> Option<Vec<u8>> {
    let spans =
        crate::jscan::top_level_checked(body, ["model", "stream", "stream_options"]).ok()?;
    splice_request(body, spans, model, stream)
}

/// [`verbatim_request`]'s work once the spans of `model`, `stream` and `stream_options`
/// are known.
fn splice_request(
    body: &[u8],
    [model_at, stream_at, options_at]: [Option<Range<usize>>; 3],
    model: &str,
    stream: bool,
) -> Option<Vec<u8>> {
    // Spans are read with `get`: on text serde did not accept they may be anything.
    let text = |r: &Option<Range<usize>>| r.as_ref().and_then(|r| body.get(r.clone()));
    let model_at = model_at?;
    if body.get(model_at.start) != Some(&b'"') {
        return None;
    }
    let says_stream = text(&stream_at) == Some(b"true");
    let stream_ok = says_stream == stream
        && matches!(text(&stream_at), None | Some(b"true" | b"false" | b"null"));
    // A stream gets `stream_options` added (so none may be there, not even `null`); a
    // non-stream request may carry only a `null` one.
    let options_ok = match text(&options_at) {
        None => true,
        Some(v) => !stream && v == b"null",
    };
    if !stream_ok || !options_ok {
        return None;
    }
    // The object's closing brace: the last byte that is not whitespace.
    let close = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    let mut out = Vec::with_capacity(body.len() + model.len() + 40);
    out.extend_from_slice(body.get(..model_at.start)?);
    serde_json::to_writer(&mut out, model).ok()?;
    out.extend_from_slice(body.get(model_at.end..close)?);
    if stream {
        out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
    }
    out.extend_from_slice(body.get(close..)?);
    Some(out)
}

fn trim_ascii_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Reads an OpenAI-style error body (and the variants OpenAI-compatible vendors send:
/// Mistral's flat `{"message"}` / `{"detail"}`, Moonshot's type-only errors, Zhipu's
/// string codes) and classifies it.
pub fn decode_openai_error(status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
    let v: Value = serde_json::from_slice(trim_ascii_start(body)).unwrap_or(Value::Null);
    let err = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
    let message = err
        .get("message")
        .or_else(|| err.get("detail"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if body.is_empty() {
                format!("HTTP {status} with an empty body")
            } else {
                excerpt(body)
            }
        });
    let code = err.get("code").and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let etype = err.get("type").and_then(Value::as_str).unwrap_or_default();
    let mut kind = UpstreamError::kind_for_status(status);
    let tag = format!("{etype} {}", code.as_deref().unwrap_or_default());
    if tag.contains("insufficient_quota") || tag.contains("exceeded_current_quota") {
        kind = UpstreamErrorKind::QuotaExhausted;
    } else if tag.contains("content_filter") || tag.contains("DataInspectionFailed") {
        kind = UpstreamErrorKind::ContentFilter;
    } else if tag.contains("engine_overloaded") {
        kind = UpstreamErrorKind::Overloaded;
    } else if status == 200 {
        // An error object inside a 200 (some OpenAI-compatible servers do this).
        kind = UpstreamErrorKind::Server;
    }
    let mut e = UpstreamError::new(kind, message).with_retry_after(retry_after);
    if status != 200 {
        e = e.with_status(status);
    }
    if let Some(c) = code.or_else(|| (!etype.is_empty()).then(|| etype.to_owned())) {
        e = e.with_vendor_code(c);
    }
    e
}

/// A stream chunk as OpenAI-family vendors send it: OpenAI's chunk, plus Moonshot's
/// usage inside the choice.
#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    system_fingerprint: Option<String>,
    /// A mid-stream failure: `data: {"error": {...}}`.
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: tollgate_core::chat::Delta,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Value>,
    /// Moonshot puts the stream's usage here.
    #[serde(default)]
    usage: Option<Usage>,
}

/// Decodes an OpenAI-style SSE stream.
pub struct OpenAiStream {
    sse: SseParser,
    events: Vec<SseEvent>,
    ctx: DecodeCtx,
    done: bool,
}

impl OpenAiStream {
    pub fn new(ctx: DecodeCtx) -> Self {
        OpenAiStream {
            sse: SseParser::new(),
            events: Vec::new(),
            ctx,
            done: false,
        }
    }

    fn handle(&mut self, ev: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let data = ev.data.trim();
        if data.is_empty() || self.done {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            out.push(StreamEvent::Done);
            return Ok(());
        }
        let wire: WireChunk = serde_json::from_str(data).map_err(|e| {
            UpstreamError::protocol(format!(
                "stream event is not a chunk ({e}): {}",
                excerpt(data.as_bytes())
            ))
        })?;
        if wire.error.as_ref().is_some_and(|e| !e.is_null()) {
            let mut e = decode_openai_error(200, data.as_bytes(), None);
            e.status = None;
            return Err(e);
        }
        let mut usage = wire.usage;
        let mut choices = Vec::with_capacity(wire.choices.len());
        for c in wire.choices {
            if c.usage.is_some() {
                usage = usage.or(c.usage);
            }
            choices.push(ChunkChoice {
                index: c.index,
                delta: c.delta,
                finish_reason: c.finish_reason,
                logprobs: c.logprobs,
            });
        }
        if !choices.is_empty() {
            out.push(StreamEvent::Chunk(ChatChunk {
                id: if wire.id.is_empty() {
                    self.ctx.request_id.clone()
                } else {
                    wire.id
                },
                object: "chat.completion.chunk".to_owned(),
                created: if wire.created == 0 {
                    self.ctx.created
                } else {
                    wire.created
                },
                model: if wire.model.is_empty() {
                    self.ctx.model.clone()
                } else {
                    wire.model
                },
                choices,
                system_fingerprint: wire.system_fingerprint,
                usage: None,
            }));
        }
        if let Some(u) = usage {
            out.push(StreamEvent::Usage(u));
        }
        Ok(())
    }
}

impl StreamDecoder for OpenAiStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        self.sse.feed(data, &mut self.events);
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            self.handle(ev, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        self.sse.finish(&mut self.events);
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            self.handle(ev, out)?;
        }
        Ok(())
    }
}

/// Decodes OpenAI's own stream for an OpenAI client: a plain chunk is passed on as the
/// vendor wrote it ([`StreamEvent::Verbatim`]): unknown fields kept, no decode and
/// re-encode per chunk. `[DONE]`, errors and anything unexpected go through
/// [`OpenAiStream`], which reports them as usual.
pub struct OpenAiVerbatimStream {
    sse: SseParser,
    events: Vec<SseEvent>,
    inner: OpenAiStream,
}

impl OpenAiVerbatimStream {
    pub fn new(ctx: DecodeCtx) -> Self {
        OpenAiVerbatimStream {
            sse: SseParser::new(),
            events: Vec::new(),
            inner: OpenAiStream::new(ctx),
        }
    }

    fn handle_all(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        let events = std::mem::take(&mut self.events);
        for mut ev in events {
            if self.inner.done || ev.data.trim() == "[DONE]" || ev.data.trim().is_empty() {
                self.inner.handle(&ev, out)?;
                continue;
            }
            let data = std::mem::take(&mut ev.data);
            let data = if data.len() == data.trim().len() {
                data
            } else {
                data.trim().to_owned()
            };
            match verbatim_chunk(data) {
                Ok(chunk) => out.push(StreamEvent::Verbatim(chunk)),
                Err(data) => {
                    ev.data = data;
                    self.inner.handle(&ev, out)?;
                }
            }
        }
        Ok(())
    }
}

impl StreamDecoder for OpenAiVerbatimStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        self.sse.feed(data, &mut self.events);
        self.handle_all(out)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        self.sse.finish(&mut self.events);
        self.handle_all(out)
    }
}

/// Removes the fields of `map` whose value is JSON `null`.
pub fn drop_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, v| !v.is_null());
}

#[cfg(test)]
mod serde_probe {
    use super::*;

    /// The text fields of a chunk's choices, borrowed where they have no escapes.
    #[derive(Deserialize)]
    struct TextChoice<'a> {
        #[serde(borrow, default)]
        delta: Option<TextDelta<'a>>,
    }

    #[derive(Deserialize)]
    struct TextDelta<'a> {
        #[serde(borrow, default)]
        content: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        reasoning_content: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        tool_calls: Option<Vec<TextToolCall<'a>>>,
    }

    #[derive(Deserialize)]
    struct TextToolCall<'a> {
        #[serde(borrow, default)]
        function: Option<TextFunction<'a>>,
    }

    #[derive(Deserialize)]
    struct TextFunction<'a> {
        #[serde(borrow, default)]
        arguments: Option<std::borrow::Cow<'a, str>>,
    }

    /// What [`verbatim_chunk`] reads of a chunk, in one pass: the fields the plain decoder
    /// requires, the text of the choices, and where the usage is. Unknown fields are skipped
    /// (and so kept: the chunk goes out as it came).
    #[derive(Deserialize)]
    struct ChunkProbe<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
        #[allow(dead_code)]
        created: i64,
        #[allow(dead_code)]
        #[serde(borrow)]
        model: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        choices: Vec<TextChoice<'a>>,
        #[serde(borrow, default)]
        usage: Option<&'a serde_json::value::RawValue>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }

    /// [`verbatim_chunk`] as serde reads it: the reference its tests compare with (it was
    /// the code until serde's ~5.4k instructions a chunk, a third of a stream's cost, were
    /// replaced by one [`Walk`](crate::jscan::Walk)).
    pub(crate) fn verbatim_chunk_serde(json: String) -> Result<VerbatimChunk, String> {
        let probe: ChunkProbe<'_> = match serde_json::from_str(&json) {
            Ok(p) => p,
            Err(_) => return Err(json),
        };
        if probe.id.is_empty() || probe.error.is_some() {
            return Err(json);
        }
        let mut text = String::new();
        for d in probe.choices.iter().filter_map(|c| c.delta.as_ref()) {
            text.push_str(d.content.as_deref().unwrap_or(""));
            text.push_str(d.reasoning_content.as_deref().unwrap_or(""));
            for t in d.tool_calls.iter().flatten() {
                if let Some(a) = t.function.as_ref().and_then(|f| f.arguments.as_deref()) {
                    text.push_str(a);
                }
            }
        }
        let usage = match probe.usage {
            Some(raw) => {
                // The raw value borrows from `json`: its offset is where it sits.
                let start = raw.get().as_ptr() as usize - json.as_ptr() as usize;
                match usage_at(json.as_bytes(), start..start + raw.get().len()) {
                    Some(v) if probe.choices.is_empty() => Some(v),
                    _ => return Err(json),
                }
            }
            None => None,
        };
        Ok(VerbatimChunk { json, text, usage })
    }
}

#[cfg(test)]
mod usage_reader_tests {
    use super::*;

    /// What `usage_at` gave before the serde-free reader: serde for every object.
    fn by_serde(raw: &[u8]) -> Option<Usage> {
        if raw.first() != Some(&b'{') {
            return None;
        }
        if crate::jscan::top_level(raw, ["cost"]).ok()?[0].is_some() {
            return None;
        }
        serde_json::from_slice(raw).ok()
    }

    #[test]
    fn the_fast_usage_reader_agrees_with_serde() {
        let values = [
            "0",
            "1",
            "7",
            "42",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "-1",
            "-0",
            "1.0",
            "1e3",
            "2E1",
            "null",
            "\"5\"",
            "true",
            "[]",
            "{}",
            "[3]",
        ];
        let details = |key: &str| -> Vec<String> {
            let mut d: Vec<String> = vec!["null".into(), "{}".into(), "[]".into(), "7".into()];
            for v in values {
                d.push(format!(r#"{{"{key}":{v}}}"#));
                d.push(format!(r#"{{"x":1,"{key}":{v},"y":[{{"z":null}}]}}"#));
            }
            d.push(format!(r#"{{"{key}":1,"{key}":2}}"#));
            d.push(format!(r#"{{"\u0078":1,"{key}":2}}"#));
            d.push("[5]".into());
            d
        };
        let mut cases: Vec<String> = vec![
            "{}".into(),
            " { } ".into(),
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}"#.into(),
            r#"{"prompt_tokens":10,"total_tokens":15}"#.into(),
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_cache_hit_tokens":4,"prompt_cache_miss_tokens":6}"#.into(),
            r#"{"prompt_tokens":10,"completion_tokens":5,"cached_tokens":3}"#.into(),
            r#"{"prompt_tokens":10,"completion_tokens":5,"cost":"0.1 USD"}"#.into(),
            r#"{"prompt_tokens":10,"completion_tokens":5,"cost":0.1}"#.into(),
            r#"{"prompt_tokens":10,"prompt_tokens":11}"#.into(),
            r#"{"prompt\u005ftokens":10}"#.into(),
            r#"{"prompt_tokens":10,"\u0061":1}"#.into(),
            r#"{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":20}}"#.into(),
            "[1,2]".into(),
        ];
        let keys = [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_cache_hit_tokens",
            "cached_tokens",
            "cache_creation_input_tokens",
        ];
        for key in keys {
            for v in values {
                cases.push(format!(
                    r#"{{"prompt_tokens":100,"completion_tokens":9,"{key}":{v}}}"#
                ));
                cases.push(format!(
                    r#"{{"{key}":{v},"other":{{"prompt_tokens":"x"}}}}"#
                ));
            }
        }
        for (key, inner) in [
            ("prompt_tokens_details", "cached_tokens"),
            ("completion_tokens_details", "reasoning_tokens"),
        ] {
            for d in details(inner) {
                cases.push(format!(
                    r#"{{"prompt_tokens":50,"completion_tokens":30,"total_tokens":80,"{key}":{d}}}"#
                ));
                cases.push(format!(
                    r#"{{"{key}":{d},"prompt_cache_hit_tokens":3,"prompt_tokens":2}}"#
                ));
            }
        }
        let mut fast_hits = 0;
        for case in &cases {
            let raw = case.as_bytes();
            let json = format!(r#"{{"usage":{case}}}"#);
            let start = json.find(case.as_str()).unwrap();
            let got = usage_at(json.as_bytes(), start..start + case.len()).map(|v| v.usage);
            assert_eq!(got, by_serde(raw), "{case}");
            if let Ok(found) = crate::jscan::top_level(raw, USAGE_KEYS) {
                if found[0].is_none() && usage_fields(raw, &found).is_some() {
                    fast_hits += 1;
                }
            }
        }
        // The odd cases went to serde (and agreed); the plain ones took the fast reader,
        // OpenAI's own shape among them.
        assert!(fast_hits > 100, "{fast_hits} of {}", cases.len());
        let openai = br#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#;
        let found = crate::jscan::top_level(openai, USAGE_KEYS).unwrap();
        assert!(usage_fields(openai, &found).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Credentials;
    use serde_json::json;
    use tollgate_core::Secret;

    /// Chunks as vendors send them and the shapes around them: text with escapes,
    /// reasoning, tool calls, the usage chunk, errors, nulls, missing and repeated fields,
    /// escaped keys, odd `created` values, arrays where objects go, deep unknown members.
    fn chunk_corpus() -> Vec<String> {
        let base = r#"{"choices":[{"delta":{"content":"Hello","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796680930,"id":"chatcmpl-emu20","model":"gpt-4o-mini","object":"chat.completion.chunk","system_fingerprint":"fp_emulator","usage":null}"#;
        let mut c: Vec<String> = vec![
            base.into(),
            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"line\nnext \"q\" caf\u00e9 \ud83d\ude00 \\ /"},"finish_reason":null}]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[{"delta":{"reasoning_content":"think","content":"say"}}]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":"}},{"function":{"arguments":"1}"}},{"function":null},{}]}}]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[{"delta":{"tool_calls":null,"content":null,"reasoning_content":null}},{"delta":null},{}]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}}}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[],"usage":[1]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[],"error":{"message":"boom"}}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[],"error":null}"#.into(),
            r#"{"id":"","created":1,"model":"m","choices":[]}"#.into(),
            r#"{"id":"\u0041","created":1,"model":"m","choices":[]}"#.into(),
            r#"{"created":1,"model":"m","choices":[]}"#.into(),
            r#"{"id":"c1","model":"m","choices":[]}"#.into(),
            r#"{"id":"c1","created":1,"choices":[]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m"}"#.into(),
            r#"{"id":"c1","id":"c2","created":1,"model":"m","choices":[]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[{"delta":{"content":"a","content":"b"}}]}"#.into(),
            r#"{"\u0069d":"c1","created":1,"model":"m","choices":[]}"#.into(),
            r#"{"id":"c1","created":1.0,"model":"m","choices":[]}"#.into(),
            r#"{"id":"c1","created":-0,"model":"m","choices":[]}"#.into(),
            r#"{"id":"c1","created":99999999999999999999,"model":"m","choices":[]}"#.into(),
            r#"{"id":"c1","created":"1","model":"m","choices":[]}"#.into(),
            r#"{"id":"c1","created":1,"model":7,"choices":[]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[["x"]]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[null]}"#.into(),
            r#"["c1",1,"m",[]]"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[{"delta":{"content":"\ud800"}}]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[{"delta":{"content":7}}]}"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[{"delta":{"content":"ok","x":{"y":[1,2,{"z":[true,false,null,-1.5e-3]}]}}}],"extra":{"a":[[[]]]}}"#.into(),
            " \n{ \"id\" : \"c1\" , \"created\" : 1 , \"model\" : \"m\" , \"choices\" : [ { \"delta\" : { \"content\" : \"hi\" } } ] } \r\n".into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[]} x"#.into(),
            r#"{"id":"c1","created":1,"model":"m","choices":[],}"#.into(),
        ];
        // Deep unknown members: at serde_json's nesting limit and past it.
        for depth in [120usize, 126, 127, 128] {
            c.push(format!(
                r#"{{"id":"c1","created":1,"model":"m","choices":[],"deep":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            ));
        }
        c
    }

    /// The one-pass chunk reader against serde's: whatever it relays, serde would have
    /// relayed with the same text and usage; whatever it declines but serde relays is one
    /// of the shapes it leaves to the plain decoder on purpose; and on realistic chunks
    /// (and on every one-byte change of them) it declines nothing serde relays.
    #[test]
    fn chunks_read_in_one_pass_as_serde_reads_them() {
        let on_purpose = |t: &str| {
            // A struct written as an array, which serde's derive also reads.
            t.trim_start().starts_with('[')
                // serde skips unknown members without a nesting limit; the walk keeps
                // serde_json's limit of 128 for every value.
                || t.contains(&"[".repeat(127))
        };
        let check = |t: &str, exhaustive: bool| {
            let ours = verbatim_chunk(t.to_owned());
            let theirs = serde_probe::verbatim_chunk_serde(t.to_owned());
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{t}"),
                (Ok(_), Err(_)) => panic!("relayed what serde declines: {t}"),
                (Err(back), _) => {
                    assert_eq!(back, t, "the chunk comes back unchanged");
                    if theirs.is_ok() && exhaustive {
                        panic!("declined what serde relays: {t}");
                    }
                }
            }
            ours.is_ok()
        };
        let mut relayed = 0;
        for t in chunk_corpus() {
            if check(&t, !on_purpose(&t)) {
                relayed += 1;
            }
        }
        assert_eq!(relayed, 13, "chunks relayed as they are");
        for t in [
            chunk_corpus()[0].clone(),
            chunk_corpus()[1].clone(),
            chunk_corpus()[3].clone(),
            chunk_corpus()[5].clone(),
        ] {
            let b = t.as_bytes();
            for i in 0..b.len() {
                let mut d = b.to_vec();
                d.remove(i);
                if let Ok(d) = String::from_utf8(d) {
                    check(&d, !on_purpose(&d));
                }
                for c in [
                    b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b' ', b'0', b'-', b'e', b'n',
                    b'x',
                ] {
                    let mut m = b.to_vec();
                    m[i] = c;
                    if let Ok(m) = String::from_utf8(m) {
                        check(&m, !on_purpose(&m));
                    }
                }
            }
        }
    }

    fn ctx<'a>(creds: &'a Credentials, stream: bool) -> EncodeCtx<'a> {
        EncodeCtx {
            base_url: "http://127.0.0.1:9/v1/",
            upstream_model: "deepseek-chat",
            credentials: creds,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream,
        }
    }

    fn dctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "req-1".into(),
            created: 1,
            model: "m".into(),
        }
    }

    fn body(o: &Outbound) -> Value {
        match o {
            Outbound::Http(h) => serde_json::from_slice(&h.body).unwrap(),
            Outbound::WebSocket(_) => unreachable!(),
        }
    }

    fn request(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn encode_injects_stream_usage_and_keeps_unknown_fields() {
        let creds = Credentials {
            api_key: Some(Secret::new("sk-up")),
            ..Default::default()
        };
        let req = request(
            json!({"model":"deepseek/deepseek-chat","messages":[{"role":"user","content":"hi"}],
            "stream":true,"logit_bias":{"5":1}}),
        );
        let out = OpenAiCodec::new(Flavor::DeepSeek)
            .encode(&req, &ctx(&creds, true))
            .unwrap();
        let Outbound::Http(h) = &out else {
            unreachable!()
        };
        assert_eq!(h.url, "http://127.0.0.1:9/v1/chat/completions");
        assert!(h
            .headers
            .contains(&("authorization".into(), "Bearer sk-up".into())));
        assert_eq!(
            body(&out),
            json!({"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}],"stream":true,
                "stream_options":{"include_usage":true},"logit_bias":{"5":1}})
        );
    }

    #[test]
    fn mistral_drops_unknown_fields_and_renames_seed() {
        let creds = Credentials::default();
        let req = request(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7,
            "logit_bias":{"5":1},"stream":true,"stream_options":{"include_usage":true},"user":"u"}),
        );
        let out = OpenAiCodec::new(Flavor::Mistral)
            .encode(&req, &ctx(&creds, true))
            .unwrap();
        assert_eq!(
            body(&out),
            json!({"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}],"stream":true,"random_seed":7})
        );
    }

    #[test]
    fn moonshot_clamps_temperature() {
        let creds = Credentials::default();
        let req = request(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1.6}),
        );
        let out = OpenAiCodec::new(Flavor::Moonshot)
            .encode(&req, &ctx(&creds, false))
            .unwrap();
        assert_eq!(body(&out)["temperature"], json!(1.0));
    }

    #[test]
    fn decodes_deepseek_usage_with_cache_hits() {
        let body = br#"

{"id":"x","object":"chat.completion","created":5,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
"usage":{"prompt_tokens":100,"completion_tokens":7,"total_tokens":107,"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}}"#;
        let r = OpenAiCodec::new(Flavor::DeepSeek)
            .decode(200, body, &dctx())
            .unwrap();
        let u = r.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (100, 7, 64)
        );
    }

    fn stream_all(
        flavor: Flavor,
        input: &str,
        piece: usize,
    ) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = OpenAiCodec::new(flavor).stream_decoder(&dctx(), Some("text/event-stream"));
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn moonshot_usage_inside_choice_and_trailing_usage_last_wins() {
        let input = concat!(
            "data: {\"id\":\"c\",\"created\":1,\"model\":\"moonshot-v1-8k\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"created\":1,\"model\":\"moonshot-v1-8k\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}]}\n\n",
            "data: {\"id\":\"c\",\"created\":1,\"model\":\"moonshot-v1-8k\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}\n\n",
            "data: [DONE]\n\n"
        );
        for piece in [1, 7, 1000] {
            let ev = stream_all(Flavor::Moonshot, input, piece).unwrap();
            let chunks = ev
                .iter()
                .filter(|e| matches!(e, StreamEvent::Chunk(_)))
                .count();
            let usages: Vec<_> = ev
                .iter()
                .filter_map(|e| match e {
                    StreamEvent::Usage(u) => Some(u),
                    _ => None,
                })
                .collect();
            assert_eq!(chunks, 2);
            assert_eq!(usages.len(), 2);
            assert_eq!(usages.last().unwrap().completion_tokens, 5);
            assert_eq!(ev.last(), Some(&StreamEvent::Done));
        }
    }

    #[test]
    fn mid_stream_error_is_an_error() {
        let input = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
        let e = stream_all(Flavor::OpenAi, input, 5).unwrap_err();
        assert_eq!(e.message, "overloaded");
    }

    #[test]
    fn truncated_stream_has_no_done() {
        let input = "data: {\"id\":\"c\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
        let ev = stream_all(Flavor::OpenAi, input, 3).unwrap();
        assert!(!ev.contains(&StreamEvent::Done));
    }

    #[test]
    fn error_bodies_are_classified() {
        let e = decode_openai_error(
            429,
            br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
            Some(3),
        );
        assert_eq!(
            (e.kind, e.retry_after_secs),
            (UpstreamErrorKind::RateLimited, Some(3))
        );
        let e = decode_openai_error(
            429,
            br#"{"error":{"message":"quota","type":"insufficient_quota"}}"#,
            None,
        );
        assert_eq!(e.kind, UpstreamErrorKind::QuotaExhausted);
        let e = decode_openai_error(
            400,
            br#"{"error":{"message":"high risk","type":"content_filter"}}"#,
            None,
        );
        assert_eq!(e.kind, UpstreamErrorKind::ContentFilter);
        let e = decode_openai_error(401, br#"{"message":"Unauthorized","request_id":"r"}"#, None);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (UpstreamErrorKind::Auth, "Unauthorized")
        );
        let e = decode_openai_error(
            402,
            br#"{"error":{"message":"Insufficient Balance"}}"#,
            None,
        );
        assert_eq!(e.kind, UpstreamErrorKind::QuotaExhausted);
        let e = decode_openai_error(502, b"<html>bad gateway</html>", None);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (UpstreamErrorKind::Server, "<html>bad gateway</html>")
        );
    }

    /// An answer with fields tollgate has no type for, as OpenAI sends it.
    const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\"","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":1,"accepted_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_1"}"#;

    #[test]
    fn openai_answers_are_relayed_verbatim_with_cost_added() {
        let codec = OpenAiCodec::new(Flavor::OpenAi);
        let v = codec.verbatim(ANSWER.as_bytes()).expect("verbatim");
        // The usage is read exactly as the decode path reads it.
        let decoded = codec.decode(200, ANSWER.as_bytes(), &dctx()).unwrap();
        assert_eq!(Some(&v.usage), decoded.usage.as_ref());
        assert_eq!((v.usage.cached_tokens, v.usage.reasoning_tokens), (4, 1));

        let out = v.with_cost(ANSWER.as_bytes(), "0.0000123 USD");
        let mut got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got["usage"]["cost"], "0.0000123 USD");
        got["usage"].as_object_mut().unwrap().remove("cost");
        // Everything else, unknown fields included, is byte for byte what the vendor sent.
        assert_eq!(got, serde_json::from_str::<Value>(ANSWER).unwrap());
        let plain = String::from_utf8(out).unwrap();
        assert_eq!(
            plain.replace(r#","cost":"0.0000123 USD""#, ""),
            ANSWER,
            "only the cost is added"
        );
    }

    #[test]
    fn verbatim_handles_empty_and_spaced_usage_objects() {
        let body = r#"{"id":"a","created":1,"model":"m","choices":[],"usage": { } }"#;
        let v = verbatim_answer(body.as_bytes()).unwrap();
        assert!(!v.usage_has_members);
        let out = v.with_cost(body.as_bytes(), "1 USD");
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap()["usage"],
            json!({"cost": "1 USD"})
        );

        let body = "\n {\"usage\" :\n{\"prompt_tokens\": 2 ,\"completion_tokens\":1\n}\t, \"choices\":[{}],\"model\":\"m\",\"created\":1,\"id\":\"x\"}";
        let v = verbatim_answer(body.as_bytes()).unwrap();
        assert_eq!((v.usage.prompt_tokens, v.usage.completion_tokens), (2, 1));
        let out = v.with_cost(body.as_bytes(), "2 CNY");
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got["usage"]["cost"], "2 CNY");
        assert_eq!(got["usage"]["prompt_tokens"], 2);
    }

    #[test]
    fn bodies_that_are_not_plain_answers_are_decoded_instead() {
        let answer: Value = serde_json::from_str(ANSWER).unwrap();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = answer.clone();
            f(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "no usage",
                with(&|v| {
                    v.as_object_mut().unwrap().remove("usage");
                }),
            ),
            ("null usage", with(&|v| v["usage"] = Value::Null)),
            ("usage not an object", with(&|v| v["usage"] = json!([1]))),
            ("a cost already", with(&|v| v["usage"]["cost"] = json!(0.5))),
            (
                "a string cost already",
                with(&|v| v["usage"]["cost"] = json!("1 USD")),
            ),
            (
                "an error object",
                with(&|v| v["error"] = json!({"message": "x"})),
            ),
            ("empty id", with(&|v| v["id"] = json!(""))),
            (
                "no choices",
                with(&|v| {
                    v.as_object_mut().unwrap().remove("choices");
                }),
            ),
            (
                "no model",
                with(&|v| {
                    v.as_object_mut().unwrap().remove("model");
                }),
            ),
            ("not an object", b"[1,2]".to_vec()),
            ("cut short", ANSWER.as_bytes()[..ANSWER.len() - 1].to_vec()),
            ("trailing bytes", format!("{ANSWER} x").into_bytes()),
            (
                "duplicate usage",
                ANSWER
                    .replacen("\"usage\":", "\"usage\":{},\"usage\":", 1)
                    .into_bytes(),
            ),
        ];
        for (what, body) in cases {
            assert!(verbatim_answer(&body).is_none(), "{what}");
            // The decode path then reports what is wrong (or reads what it can).
            let _ = OpenAiCodec::new(Flavor::OpenAi).decode(200, &body, &dctx());
        }
        // A null error is no error.
        assert!(verbatim_answer(&with(&|v| v["error"] = Value::Null)).is_some());
        // Only OpenAI itself: the dialects' usage is rewritten into OpenAI's shape.
        for flavor in [
            Flavor::DeepSeek,
            Flavor::Moonshot,
            Flavor::Mistral,
            Flavor::Compatible,
        ] {
            assert!(OpenAiCodec::new(flavor)
                .verbatim(ANSWER.as_bytes())
                .is_none());
        }
    }

    fn run_verbatim(input: &str) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = OpenAiCodec::new(Flavor::OpenAi)
            .verbatim_stream_decoder(&dctx())
            .unwrap();
        let mut out = Vec::new();
        // Byte by byte: chunks split anywhere come out whole.
        for b in input.as_bytes().chunks(7) {
            d.feed(b, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn openai_stream_chunks_pass_verbatim() {
        let chunk = r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"gpt-4o","service_tier":"default","obfuscation":"x1","choices":[{"index":0,"delta":{"content":"caf\u00e9 ","reasoning_content":"hm"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
        let tool = r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]},"finish_reason":null}]}"#;
        let usage = r#"{"id":"c1","object":"chat.completion.chunk","created":5,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#;
        let input =
            format!("data: {chunk}\n\ndata:{tool}\r\n\r\ndata: {usage}\n\ndata: [DONE]\n\n");
        let out = run_verbatim(&input).unwrap();
        assert_eq!(out.len(), 4, "{out:?}");
        let StreamEvent::Verbatim(c) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (c.json.as_str(), c.text.as_str(), c.usage.is_none()),
            (chunk, "café hm", true)
        );
        let StreamEvent::Verbatim(t) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!((t.json.as_str(), t.text.as_str()), (tool, "{\"a\":1}"));
        let StreamEvent::Verbatim(u) = &out[2] else {
            panic!("{out:?}")
        };
        let v = u.usage.as_ref().unwrap();
        assert_eq!((v.usage.prompt_tokens, v.usage.completion_tokens), (4, 2));
        let with: Value = serde_json::from_slice(&v.with_cost(u.json.as_bytes(), "1 USD")).unwrap();
        assert_eq!(with["usage"]["cost"], "1 USD");
        assert_eq!(out[3], StreamEvent::Done);
        // What a consumer of canonical events sees is what the plain decoder makes.
        let mut plain = Vec::new();
        let mut d = OpenAiStream::new(dctx());
        d.feed(input.as_bytes(), &mut plain).unwrap();
        let canonical: Vec<StreamEvent> = out
            .iter()
            .flat_map(|e| match e {
                StreamEvent::Verbatim(v) => v.canonical(),
                other => vec![other.clone()],
            })
            .collect();
        assert_eq!(canonical, plain);
    }

    #[test]
    fn verbatim_stream_falls_back_for_what_is_not_a_plain_chunk() {
        // An error event is an error, as with the plain decoder.
        let e =
            run_verbatim("data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n")
                .unwrap_err();
        assert!(e.message.contains("boom"));
        // A chunk without an id is decoded (and given the request's id).
        let out = run_verbatim(
            "data: {\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
        )
        .unwrap();
        assert!(
            matches!(&out[..], [StreamEvent::Chunk(c)] if c.id == "req-1"),
            "{out:?}"
        );
        // Usage with choices, or with a cost of its own, is decoded too (never duplicated).
        for body in [
            r#"{"id":"a","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}"#,
            r#"{"id":"a","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1,"cost":0.1}}"#,
        ] {
            let out = run_verbatim(&format!("data: {body}\n\n")).unwrap();
            assert!(
                out.iter().all(|e| !matches!(e, StreamEvent::Verbatim(_))),
                "{out:?}"
            );
            assert!(
                out.iter().any(|e| matches!(e, StreamEvent::Usage(_))),
                "{out:?}"
            );
        }
        // Not JSON: the plain decoder's protocol error.
        assert!(run_verbatim("data: {nope\n\n").is_err());
        // Nothing after [DONE] counts.
        let out = run_verbatim(
            "data: [DONE]\n\ndata: {\"id\":\"a\",\"created\":1,\"model\":\"m\",\"choices\":[]}\n\n",
        )
        .unwrap();
        assert_eq!(out, vec![StreamEvent::Done]);
        // Only OpenAI itself.
        for flavor in [
            Flavor::DeepSeek,
            Flavor::Moonshot,
            Flavor::Mistral,
            Flavor::Compatible,
        ] {
            assert!(OpenAiCodec::new(flavor)
                .verbatim_stream_decoder(&dctx())
                .is_none());
        }
    }

    #[test]
    fn client_bodies_go_upstream_verbatim_with_the_model_replaced() {
        let codec = OpenAiCodec::new(Flavor::OpenAi);
        let creds = Credentials {
            api_key: Some(Secret::new(String::from("sk-up"))),
            ..Credentials::default()
        };
        let body = r#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"caf\u00e9"}],"max_tokens":null,"logit_bias":{"1":2},"metadata":{"k":"v"}}"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        let mut ctx = ctx(&creds, false);
        ctx.upstream_model = "gpt-4o";
        let Some(Outbound::Http(http)) = codec.encode_verbatim(body.as_bytes(), &req, &ctx) else {
            panic!("not verbatim")
        };
        let sent = String::from_utf8(http.body.clone()).unwrap();
        assert_eq!(sent, body.replace("openai/gpt-4o", "gpt-4o"));
        // Same URL and headers as the field-by-field encoding.
        let Outbound::Http(plain) = codec.encode(&req, &ctx).unwrap() else {
            panic!()
        };
        assert_eq!((http.url, http.headers), (plain.url, plain.headers));

        // A stream asks for usage.
        let body = "{\"model\":\"m\",\"stream\":true,\"messages\":[]}\n";
        let mut sctx = ctx.clone();
        sctx.stream = true;
        let out = verbatim_request(body.as_bytes(), "gpt-4o", true).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"model": "gpt-4o", "stream": true, "messages": [],
            "stream_options": {"include_usage": true}})
        );
        assert!(codec
            .encode_verbatim(body.as_bytes(), &req, &sctx)
            .is_some());
    }

    /// `verbatim_request` skips the grammar check serde already made: on every body serde
    /// accepts as a `ChatRequest` (a corpus, and every one-byte deletion and a set of
    /// one-byte substitutions of it that serde still accepts), it returns what the
    /// checking scan (`jscan::top_level`) followed by the same splice returns.
    #[test]
    fn request_bodies_serde_accepted_are_spliced_as_the_checking_scan_splices_them() {
        fn checking(body: &[u8], model: &str, stream: bool) -> Option<Vec<u8>> {
            let keys = ["model", "stream", "stream_options"];
            splice_request(
                body,
                crate::jscan::top_level(body, keys).ok()?,
                model,
                stream,
            )
        }
        let corpus = [
            r#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
            " \n{ \"model\" : \"m\" , \"stream\" : true , \"messages\" : [ ] } \t\n",
            r#"{"messages":[{"role":"user","content":"a \"}\" ] { \\ \u00e9 \ud83d\ude00"}],"model":"m"}"#,
            r#"{"model":"m","stream":false,"stream_options":null,"max_tokens":64,"temperature":0.5e1,"messages":[]}"#,
            r#"{"model":"m","stream":null,"metadata":{"a":[1,{"b":"}"}],"c":-0.0},"user":"u","messages":[]}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
            r#"{"mod\u0065l":"m","messages":[]}"#,
            r#"{"model":"m\"q\\","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
            r#"{"model":"m","messages":[],"logit_bias":{"1":2,"\u0031":3},"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#,
        ];
        // Runs of plain text past 64 bytes (prompts) are skipped another way.
        let long = format!(
            r#"{{"messages":[{{"role":"user","content":"{}\"{}\\n{}"}}],"model":"m","stream":false}}"#,
            "p".repeat(70),
            "q".repeat(65),
            "r".repeat(130)
        );
        let accepted = |b: &[u8]| serde_json::from_slice::<ChatRequest>(b).is_ok();
        let mut compared = 0;
        for body in corpus.iter().copied().chain([long.as_str()]) {
            let b = body.as_bytes();
            assert!(accepted(b), "{body}");
            let mut variants = vec![b.to_vec()];
            for i in 0..b.len() {
                let mut d = b.to_vec();
                d.remove(i);
                variants.push(d);
                for c in [
                    b' ', b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'x', b'n',
                ] {
                    let mut m = b.to_vec();
                    m[i] = c;
                    variants.push(m);
                }
            }
            for v in variants.iter().filter(|v| accepted(v)) {
                for (model, stream) in [("gpt-4o", false), ("gpt-4o", true), ("a\"b", false)] {
                    assert_eq!(
                        verbatim_request(v, model, stream),
                        checking(v, model, stream),
                        "{}",
                        String::from_utf8_lossy(v)
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 1_000, "{compared}");
    }

    #[test]
    fn bodies_the_codec_must_rewrite_are_encoded_field_by_field() {
        for (body, stream) in [
            // stream_options to merge with, or to drop.
            (
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
                true,
            ),
            (r#"{"model":"m","stream":true,"stream_options":null}"#, true),
            (
                r#"{"model":"m","stream_options":{"include_usage":true}}"#,
                false,
            ),
            // stream disagreeing with what is asked of the vendor, or not a boolean.
            (r#"{"model":"m","stream":false}"#, true),
            (r#"{"model":"m"}"#, true),
            (r#"{"model":"m","stream":"yes"}"#, false),
            // Not a plain object with a string model.
            (r#"{"model":7}"#, false),
            (r#"{"messages":[]}"#, false),
            (r#"{"model":"a","model":"b"}"#, false),
            (r#"{"model":"m","#, false),
            ("[]", false),
        ] {
            assert!(
                verbatim_request(body.as_bytes(), "x", stream).is_none(),
                "{body}"
            );
        }
        assert!(verbatim_request(br#"{"model":"m","stream_options":null}"#, "x", false).is_some());
        assert!(verbatim_request(br#"{"model":"m","stream":null}"#, "x", false).is_some());
        let creds = Credentials::default();
        let req: ChatRequest = serde_json::from_str(r#"{"model":"m","messages":[]}"#).unwrap();
        for flavor in [
            Flavor::DeepSeek,
            Flavor::Moonshot,
            Flavor::Mistral,
            Flavor::Compatible,
        ] {
            let c = OpenAiCodec::new(flavor);
            assert!(c
                .encode_verbatim(br#"{"model":"m","messages":[]}"#, &req, &ctx(&creds, false))
                .is_none());
        }
    }
}
