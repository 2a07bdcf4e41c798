//! Emulator names, as `tollgate emulate NAME` takes them, and their routers.

use axum::Router;

use crate::common::EmulatorOptions;
use crate::openai::{self, Dialect};
use crate::{anthropic, dashscope, doubao, gemini, zhipu};

/// An emulator `tollgate emulate` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmulatorKind {
    OpenAi,
    DeepSeek,
    Moonshot,
    Mistral,
    Qianfan,
    Spark,
    Hunyuan,
    Anthropic,
    Gemini,
    Zhipu,
    Doubao,
    DashScope,
}

impl EmulatorKind {
    /// Every emulator, in a stable order.
    pub const ALL: &'static [EmulatorKind] = &[
        EmulatorKind::OpenAi,
        EmulatorKind::DeepSeek,
        EmulatorKind::Moonshot,
        EmulatorKind::Mistral,
        EmulatorKind::Qianfan,
        EmulatorKind::Spark,
        EmulatorKind::Hunyuan,
        EmulatorKind::Anthropic,
        EmulatorKind::Gemini,
        EmulatorKind::Zhipu,
        EmulatorKind::Doubao,
        EmulatorKind::DashScope,
    ];

    /// The name `tollgate emulate` takes.
    pub fn name(&self) -> &'static str {
        match self {
            EmulatorKind::OpenAi => "openai",
            EmulatorKind::DeepSeek => "deepseek",
            EmulatorKind::Moonshot => "moonshot",
            EmulatorKind::Mistral => "mistral",
            EmulatorKind::Qianfan => "qianfan",
            EmulatorKind::Spark => "spark",
            EmulatorKind::Hunyuan => "hunyuan",
            EmulatorKind::Anthropic => "anthropic",
            EmulatorKind::Gemini => "gemini",
            EmulatorKind::Zhipu => "zhipu",
            EmulatorKind::Doubao => "doubao",
            EmulatorKind::DashScope => "dashscope",
        }
    }

    /// The path prefix a client appends to `http://host:port` to reach the API root
    /// (what a provider's `base_url` ends with).
    pub fn base_path(&self) -> &'static str {
        match self {
            EmulatorKind::OpenAi
            | EmulatorKind::DeepSeek
            | EmulatorKind::Moonshot
            | EmulatorKind::Mistral => "/v1",
            EmulatorKind::Qianfan | EmulatorKind::Spark | EmulatorKind::Hunyuan => "",
            // The SDKs and codecs append `/v1/messages` and `/v1beta/models/...`.
            EmulatorKind::Anthropic | EmulatorKind::Gemini => "",
            EmulatorKind::Zhipu => "/api/paas/v4",
            EmulatorKind::Doubao => "/api/v3",
            // The native API lives under /api/v1/..., compatible mode under
            // /compatible-mode/v1: the provider's base URL is the root.
            EmulatorKind::DashScope => "",
        }
    }
}

impl std::str::FromStr for EmulatorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EmulatorKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = EmulatorKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown emulator '{s}' (known: {})", names.join(", "))
            })
    }
}

/// The router of an emulator.
pub fn router_for(kind: EmulatorKind, opts: EmulatorOptions) -> Router {
    match kind {
        EmulatorKind::OpenAi => openai::router(Dialect::OpenAi, opts),
        EmulatorKind::DeepSeek => openai::router(Dialect::DeepSeek, opts),
        EmulatorKind::Moonshot => openai::router(Dialect::Moonshot, opts),
        EmulatorKind::Mistral => openai::router(Dialect::Mistral, opts),
        EmulatorKind::Qianfan => crate::qianfan::router(opts),
        EmulatorKind::Spark => crate::spark::router(opts),
        EmulatorKind::Hunyuan => crate::hunyuan::router(opts),
        EmulatorKind::Anthropic => anthropic::router(opts),
        EmulatorKind::Gemini => gemini::router(opts),
        EmulatorKind::Zhipu => zhipu::router(opts),
        EmulatorKind::Doubao => doubao::router(opts),
        EmulatorKind::DashScope => dashscope::router(opts),
    }
}
