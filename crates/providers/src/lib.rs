//! Pure provider codecs: the canonical chat form to each vendor's native protocol and
//! back, plus each vendor's signing. No IO happens here (STYLE.md, convention 1).
//!
//! # Layout
//! - [`aggregate`]: stream events collected into one response.
//! - [`codec`]: the contract ([`Codec`], [`StreamDecoder`], [`Outbound`]).
//! - [`openai`]: OpenAI and its dialects (DeepSeek, Moonshot, Mistral, any compatible server).
//! - [`registry`]: which codec serves which provider kind and mode.

pub mod aggregate;
pub mod codec;
pub mod openai;
pub mod registry;

pub use codec::{
    Codec, Credentials, DecodeCtx, EncodeCtx, FetchedToken, HttpRequest, Outbound, StreamDecoder,
    StreamEvent, WsRequest,
};
pub use registry::{codec_for, Mode};
