//! Local emulators of each vendor's native API, so the demo, the tests and the
//! benchmarks run with no keys and no network. Each checks auth the way its vendor does,
//! speaks the vendor's framing (quirks included), reports usage the vendor's way, and
//! takes the same injectable [`faults`].
//!
//! # Layout
//! - [`common`]: state, control routes (`/_emulator/faults`, `/_emulator/stats`),
//!   streaming helpers.
//! - [`dashscope`]: Alibaba DashScope: native generation API and compatible mode.
//! - [`doubao`]: Volcengine Ark (Doubao models).
//! - [`faults`]: the fault language.
//! - [`text`]: deterministic answers, token counts, JSON from a schema.
//! - [`openai`]: OpenAI and its dialects (DeepSeek, Moonshot, Mistral).
//! - [`registry`]: emulator names (`tollgate emulate NAME`) to routers.
//! - [`reply`]: a deterministic reply in vendor-neutral terms, for the vendors below.
//! - [`zhipu`]: Zhipu GLM v4 (plain key or JWT).

pub mod common;
pub mod dashscope;
pub mod doubao;
pub mod faults;
pub mod openai;
pub mod registry;
pub mod reply;
pub mod text;
pub mod zhipu;

pub use common::{serve, EmulatorOptions};
pub use faults::Faults;
pub use registry::{router_for, EmulatorKind};
