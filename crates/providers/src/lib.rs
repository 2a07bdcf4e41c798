//! Pure provider codecs: the canonical chat form to each vendor's native protocol and
//! back, plus each vendor's signing. No IO happens here (STYLE.md, convention 1).
//!
//! # Layout
//! - [`aggregate`]: stream events collected into one response.
//! - [`codec`]: the contract ([`Codec`], [`StreamDecoder`], [`Outbound`]).
//! - [`dialect`]: OpenAI streams read through a vendor's finish-reason and error tables.
//! - [`doubao`]: ByteDance Doubao on Volcengine Ark (OpenAI-shaped, Ark's error codes).
//! - [`openai`]: OpenAI and its dialects (DeepSeek, Moonshot, Mistral, any compatible server).
//! - [`qwen`]: Alibaba Qwen on DashScope: native text generation and compatible mode.
//! - [`registry`]: which codec serves which provider kind and mode.
//! - [`zhipu`]: Zhipu GLM v4 (OpenAI-shaped, JWT or plain key, Zhipu's codes).

pub mod aggregate;
pub mod codec;
pub mod dialect;
pub mod doubao;
pub mod openai;
pub mod qwen;
pub mod registry;
pub mod zhipu;

pub use codec::{
    Codec, Credentials, DecodeCtx, EncodeCtx, FetchedToken, HttpRequest, Outbound, StreamDecoder,
    StreamEvent, WsRequest,
};
pub use registry::{codec_for, Mode};
