//! Pure provider codecs: the canonical chat form to each vendor's native protocol and
//! back, plus each vendor's signing. No IO happens here (STYLE.md, convention 1).
//!
//! # Layout
//! - [`aggregate`]: stream events collected into one response.
//! - [`anthropic`]: Anthropic's Messages API, upstream.
//! - [`anthropic_inbound`]: Anthropic's Messages API, inbound: pure translation between
//!   Anthropic requests/responses/streams and the canonical form, for `/v1/messages`.
//! - [`codec`]: the contract ([`Codec`], [`StreamDecoder`], [`Outbound`]).
//! - [`ernie`]: Baidu ERNIE on Qianfan (legacy OAuth-token API, v2 OpenAI-compatible).
//! - [`hunyuan`]: Tencent Hunyuan (TC3-signed `ChatCompletions`, OpenAI-compatible).
//! - [`framing`]: SSE bodies that may instead be one JSON error object (ERNIE, Hunyuan).
//! - [`gemini`]: Google Gemini's `generateContent` API.
//! - [`media`]: image references (`data:` URLs).
//! - [`dialect`]: OpenAI streams read through a vendor's finish-reason and error tables.
//! - [`doubao`]: ByteDance Doubao on Volcengine Ark (OpenAI-shaped, Ark's error codes).
//! - [`openai`]: OpenAI and its dialects (DeepSeek, Moonshot, Mistral, any compatible server).
//! - [`qwen`]: Alibaba Qwen on DashScope: native text generation and compatible mode.
//! - [`registry`]: which codec serves which provider kind and mode.
//! - [`spark`]: iFlytek Spark (signed WebSocket API, HTTP OpenAI-compatible).
//! - `turns`: merging messages into the alternating form ERNIE, Hunyuan and Spark demand.
//! - [`urlenc`]: query-string percent-encoding for signed URLs.
//! - [`zhipu`]: Zhipu GLM v4 (OpenAI-shaped, JWT or plain key, Zhipu's codes).

pub mod aggregate;
pub mod anthropic;
pub mod anthropic_inbound;
pub mod codec;
pub mod dialect;
pub mod doubao;
pub mod ernie;
pub mod framing;
pub mod gemini;
pub mod hunyuan;
pub mod jscan;
pub mod media;
pub mod openai;
pub mod qwen;
pub mod registry;
pub mod spark;
mod turns;
pub mod urlenc;
pub mod zhipu;

pub use codec::{
    Codec, Credentials, DecodeCtx, EncodeCtx, FetchedToken, HttpRequest, Outbound, StreamDecoder,
    StreamEvent, Verbatim, VerbatimChunk, WsRequest,
};
pub use registry::{codec_for, Mode};
