//! Local emulators of each vendor's native API, so the demo, the tests and the
//! benchmarks run with no keys and no network. Each checks auth the way its vendor does,
//! speaks the vendor's framing (quirks included), reports usage the vendor's way, and
//! takes the same injectable [`faults`].
//!
//! # Layout
//! - [`anthropic`]: Anthropic's Messages API.
//! - [`common`]: state, control routes (`/_emulator/faults`, `/_emulator/stats`),
//!   streaming helpers.
//! - [`dashscope`]: Alibaba DashScope: native generation API and compatible mode.
//! - [`doubao`]: Volcengine Ark (Doubao models).
//! - [`faults`]: the fault language.
//! - [`gemini`]: Google Gemini's `generateContent` API.
//! - [`text`]: deterministic answers, token counts, JSON from a schema.
//! - [`openai`]: OpenAI and its dialects (DeepSeek, Moonshot, Mistral).
//! - [`qianfan`]: Baidu Qianfan (OAuth token, legacy ERNIE chat, v2 compatible).
//! - [`spark`]: iFlytek Spark (signed WebSocket API, HTTP compatible endpoint).
//! - [`hunyuan`]: Tencent Hunyuan (TC3-signed `ChatCompletions`, compatible endpoint).
//! - [`compat`]: the OpenAI-compatible endpoints of Qianfan, Spark and Hunyuan.
//! - [`registry`]: emulator names (`tollgate emulate NAME`) to routers.
//! - [`reply`]: a deterministic reply in vendor-neutral terms, for the vendors below.
//! - [`zhipu`]: Zhipu GLM v4 (plain key or JWT).

pub mod anthropic;
pub mod common;
pub mod compat;
pub mod dashscope;
pub mod doubao;
pub mod faults;
pub mod gemini;
pub mod hunyuan;
pub mod openai;
pub mod qianfan;
pub mod registry;
pub mod reply;
pub mod spark;
#[cfg(test)]
mod test_util;
pub mod text;
pub mod zhipu;

pub use common::{serve, EmulatorOptions};
pub use faults::Faults;
pub use registry::{router_for, EmulatorKind};
