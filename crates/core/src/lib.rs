//! tollgate's core: everything that needs no IO.
//!
//! # Layout
//! - [`chat`]: the canonical request and response types. They are OpenAI's Chat
//!   Completions shapes, because that is what clients speak; every provider codec
//!   translates to and from them. Unknown request fields are kept in `extra` maps.
//! - [`error`]: the error kinds of the gateway and of upstreams, with who is to blame
//!   and whether a retry is safe. The one mapping to HTTP lives in the server.
//! - [`provider`]: provider ids (`openai`, `deepseek`, ...) and `provider/model` names.
//! - [`secret`]: [`Secret`], a string that prints as `*****`.
//! - [`sse`]: an incremental Server-Sent-Events parser tolerant of every vendor's quirks.
//! - [`money`]: exact amounts (integer nano-units with their currency) and decimal text
//!   parsed without floats.
//! - [`catalog`]: the dated price catalog (`catalog/*.toml`, compiled in), its
//!   validation and merge rule, and the monthly FX table.
//! - [`pricing`]: the cost of a request (tiers, cache, off-peak, fees; rounded once, up),
//!   worst-case estimates for reservations, and the `tollgate prices` rows and tables.
//! - [`routing`]: virtual-model routing decisions: needs, quality floor, strategies
//!   (cheapest, free-first, latency, weighted, ordered) and the why of each candidate.

pub mod catalog;
pub mod chat;
pub mod error;
pub mod money;
pub mod pricing;
pub mod provider;
pub mod routing;
pub mod secret;
pub mod sse;

pub use catalog::{
    Capabilities, Catalog, CatalogError, Conversion, FxError, FxTable, ModelEntry, PricePeriod,
};
pub use chat::{ChatChunk, ChatRequest, ChatResponse, Usage};
pub use error::{GatewayError, UpstreamError, UpstreamErrorKind};
pub use money::{Currency, Money};
pub use provider::{ModelRef, ProviderKind};
pub use secret::Secret;
