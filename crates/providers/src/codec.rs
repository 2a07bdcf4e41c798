//! The codec contract every provider module fulfils: pure translation, no IO.
//!
//! A codec turns the canonical request into the vendor's request (URL, headers, signed
//! body, or a WebSocket URL and first frame) and the vendor's bytes back into canonical
//! responses or stream events. The server's one upstream client does all IO around it:
//!
//! ```text
//! ChatRequest --encode--> Outbound --(server sends)--> status + bytes
//!        bytes --decode / stream_decoder().feed--> ChatResponse | StreamEvent*
//! ```
//!
//! Time and credentials come in through [`EncodeCtx`], so signing is deterministic and
//! tested against the vendors' published worked examples.
//!
//! A codec whose vendor speaks OpenAI's Chat Completions exactly (OpenAI itself) also
//! offers a verbatim path for clients that speak it too: the client's body goes out with
//! only the model replaced ([`Codec::encode_verbatim`]), and the vendor's answer or
//! stream chunks come back as sent, with only the cost added ([`Codec::verbatim`],
//! [`Codec::verbatim_stream_decoder`]). Anything unusual falls back to the canonical path.

use chrono::{DateTime, Utc};
use tollgate_core::chat::{ChatChunk, ChatRequest, ChatResponse, Usage};
use tollgate_core::{GatewayError, Secret, UpstreamError};

/// Credentials of one provider, as configured. Which fields a vendor needs is the
/// codec's business; the server only stores and passes them.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Bearer key (OpenAI family, Anthropic, Gemini, Zhipu `id.secret`, Ark, DashScope),
    /// Baidu API Key, iFlytek APIKey, Tencent SecretId.
    pub api_key: Option<Secret>,
    /// Baidu Secret Key, iFlytek APISecret, Tencent SecretKey.
    pub secret_key: Option<Secret>,
    /// iFlytek AppID, Tencent AppId.
    pub app_id: Option<String>,
    /// A token fetched at run time (ERNIE's OAuth access token); set by the server.
    pub access_token: Option<Secret>,
}

/// What a codec needs to encode one request.
#[derive(Debug, Clone)]
pub struct EncodeCtx<'a> {
    /// The provider's base URL, without a trailing slash.
    pub base_url: &'a str,
    /// The model id the vendor expects (after aliasing and endpoint-id mapping).
    pub upstream_model: &'a str,
    pub credentials: &'a Credentials,
    /// The time to sign with.
    pub now: DateTime<Utc>,
    /// Whether to ask the vendor for a stream.
    pub stream: bool,
}

/// What a codec needs to decode: values to fill in where the vendor sends none.
#[derive(Debug, Clone)]
pub struct DecodeCtx {
    /// Used as the response id when the vendor sends none.
    pub request_id: String,
    /// Unix seconds, used when the vendor sends no `created`.
    pub created: i64,
    /// The model name to report when the vendor sends none.
    pub model: String,
}

/// One HTTP request, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A WebSocket exchange: connect to `url`, send `frame`, read frames until the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub frame: String,
}

/// What to send upstream.
///
/// A WebSocket exchange is always a stream: the server feeds each text message to the
/// codec's [`StreamDecoder`] and, when the client asked for no stream, collects the
/// events with [`crate::aggregate::aggregate`]. An HTTP request is a stream when
/// [`EncodeCtx::stream`] was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Http(HttpRequest),
    WebSocket(WsRequest),
}

/// A canonical stream event decoded from the vendor's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A chunk with content, tool-call fragments or a finish reason (`usage` unset).
    Chunk(ChatChunk),
    /// Usage so far. Vendors report it once, cumulatively or repeatedly: last wins.
    Usage(Usage),
    /// The vendor's normal end of stream (`[DONE]`, `message_stop`, a final frame).
    Done,
    /// A chunk to relay to an OpenAI client as the vendor wrote it; only decoders from
    /// [`Codec::verbatim_stream_decoder`] make these.
    Verbatim(VerbatimChunk),
}

/// One stream chunk in OpenAI's shape, kept as the vendor wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct VerbatimChunk {
    /// The chunk's JSON (an SSE event's data).
    pub json: String,
    /// The text it carries (content, reasoning, tool-call arguments), to count the tokens
    /// of a stream cut before the vendor's usage.
    pub text: String,
    /// The usage, when this is the chunk that reports it (then it has no choices); the
    /// gateway adds the cost to it ([`Verbatim::with_cost`]) or drops it.
    pub usage: Option<Verbatim>,
}

impl VerbatimChunk {
    /// The canonical events this chunk stands for, for a consumer that needs them (an
    /// aggregator, another wire format).
    pub fn canonical(&self) -> Vec<StreamEvent> {
        crate::openai::canonical_chunk(&self.json)
    }
}

/// Decodes one stream, incrementally.
pub trait StreamDecoder: Send {
    /// Feeds the next bytes of an HTTP body, or one whole WebSocket message, and pushes
    /// the events they complete. An `Err` is a vendor error reported in the stream.
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError>;

    /// The upstream closed the stream. Vendors whose streams end at EOF push
    /// [`StreamEvent::Done`] here; others push nothing, and a missing `Done` tells the
    /// server the stream was cut.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError>;
}

/// A vendor protocol.
pub trait Codec: Send + Sync + 'static {
    /// The vendor's request for `req`. Fails (as a client error) only when the request
    /// cannot be expressed in the vendor's protocol.
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError>;

    /// For vendors that take OpenAI's Chat Completions as clients write it: the vendor's
    /// request made from the client's own JSON `body` (of which `req` is the parsed and
    /// validated form), changing only what [`Codec::encode`] would change, so the request
    /// is not re-serialized field by field. `None`: use [`Codec::encode`].
    fn encode_verbatim(
        &self,
        _body: &[u8],
        _req: &ChatRequest,
        _ctx: &EncodeCtx<'_>,
    ) -> Option<Outbound> {
        None
    }

    /// A complete non-stream response. Vendors that report errors with HTTP 200 are
    /// recognised here too.
    fn decode(
        &self,
        status: u16,
        body: &[u8],
        ctx: &DecodeCtx,
    ) -> Result<ChatResponse, UpstreamError>;

    /// The error a failed response carries (any status ≥ 400, or a non-stream body sent
    /// in answer to a stream request). `retry_after` is the header's value, if any.
    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError;

    /// For vendors that speak OpenAI's Chat Completions as OpenAI writes it: a successful
    /// non-stream body that an OpenAI client may be sent exactly as the vendor wrote it,
    /// adding only `usage.cost` ([`Verbatim::with_cost`]), instead of decoding it into
    /// the canonical answer and encoding that again. Nothing the vendor sent is lost
    /// (fields tollgate does not know pass through) and the hot path skips two passes.
    ///
    /// `None` means "decode it": another protocol, or a body that is not plainly an
    /// answer with usage (no usage, an error object, a `cost` already in the usage, a
    /// missing id, ...). Called only for status 200.
    fn verbatim(&self, _body: &[u8]) -> Option<Verbatim> {
        None
    }

    /// For vendors whose stream chunks an OpenAI client can be sent as they are: a decoder
    /// that yields [`StreamEvent::Verbatim`] for plain chunks (and the usual events for
    /// `[DONE]` and errors). `None`: use [`Codec::stream_decoder`].
    fn verbatim_stream_decoder(&self, _ctx: &DecodeCtx) -> Option<Box<dyn StreamDecoder>> {
        None
    }

    /// A decoder for one stream. `content_type` is the response's Content-Type.
    fn stream_decoder(&self, ctx: &DecodeCtx, content_type: Option<&str>)
        -> Box<dyn StreamDecoder>;

    /// For vendors that need a token fetched before the call (ERNIE's OAuth access
    /// token): the request that fetches it. The server sends it, caches the token
    /// (refreshing before it expires, and once more when a call fails with
    /// [`UpstreamErrorKind::Auth`](tollgate_core::UpstreamErrorKind::Auth)), and passes it
    /// back in [`Credentials::access_token`].
    fn token_request(&self, _base_url: &str, _credentials: &Credentials) -> Option<HttpRequest> {
        None
    }

    /// Reads the answer to [`Codec::token_request`].
    fn decode_token(&self, status: u16, body: &[u8]) -> Result<FetchedToken, UpstreamError> {
        Err(self.decode_error(status, body, None))
    }
}

/// What [`Codec::verbatim`] read from a body it lets through unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Verbatim {
    /// The vendor's usage, read as [`Codec::decode`] would have.
    pub usage: Usage,
    /// Byte offset of the usage object's closing `}` in the body.
    pub usage_close: usize,
    /// Whether the usage object has members (an added one needs a comma first).
    pub usage_has_members: bool,
}

impl Verbatim {
    /// `body` with `"cost": cost` added as the usage object's last member.
    pub fn with_cost(&self, body: &[u8], cost: &str) -> Vec<u8> {
        let (head, tail) = body.split_at(self.usage_close);
        let mut out = Vec::with_capacity(body.len() + cost.len() + 10);
        out.extend_from_slice(head);
        if self.usage_has_members {
            out.push(b',');
        }
        out.extend_from_slice(b"\"cost\":");
        // A cost is digits, a dot and a currency code; written as a JSON string anyway.
        let _ = serde_json::to_writer(&mut out, cost);
        out.extend_from_slice(tail);
        out
    }
}

/// A token fetched by [`Codec::token_request`].
#[derive(Debug, Clone)]
pub struct FetchedToken {
    pub token: tollgate_core::Secret,
    /// Lifetime the vendor announced.
    pub expires_in_secs: u64,
}

/// Joins a base URL and a path with exactly one slash.
pub fn join_url(base: &str, path: &str) -> String {
    let (base, path) = (base.trim_end_matches('/'), path.trim_start_matches('/'));
    let mut url = String::with_capacity(base.len() + 1 + path.len());
    url.push_str(base);
    url.push('/');
    url.push_str(path);
    url
}

/// A short, safe excerpt of an unparseable body for an error message.
pub fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// A tool call's `arguments` (a JSON string in OpenAI's shape) as the JSON object the
/// vendors that take structured input want (Anthropic `input`, Gemini `args`); empty
/// means `{}`. The error names the field, e.g. `messages[2].tool_calls[0].function.arguments`.
pub fn tool_call_input(
    arguments: &str,
    message_param: &str,
    index: usize,
) -> Result<serde_json::Value, GatewayError> {
    let args = arguments.trim();
    if args.is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_str(args).map_err(|_| {
        GatewayError::invalid_param(
            &format!("{message_param}.tool_calls[{index}].function.arguments"),
            "tool call arguments must be a JSON object",
        )
    })
}
