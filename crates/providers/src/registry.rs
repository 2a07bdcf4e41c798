//! Which codec speaks for which provider kind.

use std::sync::Arc;

use tollgate_core::ProviderKind;

use crate::anthropic::AnthropicCodec;
use crate::codec::Codec;
use crate::doubao::DoubaoCodec;
use crate::gemini::GeminiCodec;
use crate::openai::{Flavor, OpenAiCodec};
use crate::qwen::{QwenCodec, QwenCompatibleCodec};
use crate::zhipu::{ZhipuAuth, ZhipuCodec};

/// Which of a vendor's APIs to speak, where it offers more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The vendor's own protocol (the default).
    #[default]
    Native,
    /// The vendor's OpenAI-compatible endpoint.
    OpenAi,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(Mode::Native),
            "openai" => Ok(Mode::OpenAi),
            other => Err(format!(
                "unknown mode '{other}' (expected 'native' or 'openai')"
            )),
        }
    }
}

/// The codec for a provider kind in a mode.
pub fn codec_for(kind: ProviderKind, mode: Mode) -> Arc<dyn Codec> {
    let openai = |f| -> Arc<dyn Codec> { Arc::new(OpenAiCodec::new(f)) };
    match (kind, mode) {
        (ProviderKind::OpenAi, _) => openai(Flavor::OpenAi),
        (ProviderKind::DeepSeek, _) => openai(Flavor::DeepSeek),
        (ProviderKind::Moonshot, _) => openai(Flavor::Moonshot),
        (ProviderKind::Mistral, _) => openai(Flavor::Mistral),
        (ProviderKind::OpenAiCompatible, _) => openai(Flavor::Compatible),
        (ProviderKind::Ernie, Mode::Native) => Arc::new(crate::ernie::ErnieCodec::new()),
        (ProviderKind::Ernie, Mode::OpenAi) => Arc::new(crate::ernie::ErnieV2Codec::default()),
        (ProviderKind::Spark, Mode::Native) => Arc::new(crate::spark::SparkCodec::new()),
        (ProviderKind::Spark, Mode::OpenAi) => Arc::new(crate::spark::SparkHttpCodec::default()),
        (ProviderKind::Hunyuan, Mode::Native) => Arc::new(crate::hunyuan::HunyuanCodec::new()),
        (ProviderKind::Hunyuan, Mode::OpenAi) => openai(Flavor::Compatible),
        // The native protocol serves either mode; the vendors' OpenAI-compatible
        // endpoints remain reachable as `openai_compatible` providers.
        (ProviderKind::Anthropic, _) => Arc::new(AnthropicCodec::new()),
        (ProviderKind::Gemini, _) => Arc::new(GeminiCodec::new()),
        // Zhipu's v4 API is OpenAI-shaped either way; the mode picks the auth: the
        // vendor's own signed JWT (native) or the raw key as an OpenAI client sends it.
        (ProviderKind::Zhipu, Mode::Native) => Arc::new(ZhipuCodec::new(ZhipuAuth::Jwt)),
        (ProviderKind::Zhipu, Mode::OpenAi) => Arc::new(ZhipuCodec::new(ZhipuAuth::ApiKey)),
        // Ark's native API is OpenAI's; both modes are the same protocol.
        (ProviderKind::Doubao, _) => Arc::new(DoubaoCodec::new()),
        (ProviderKind::Qwen, Mode::Native) => Arc::new(QwenCodec::new()),
        (ProviderKind::Qwen, Mode::OpenAi) => Arc::new(QwenCompatibleCodec::new()),
    }
}

/// Where a provider's API lives when the config names no `base_url`: the vendor's
/// public endpoint, or its OpenAI-compatible endpoint in `openai` mode.
pub fn default_base_url(kind: ProviderKind, mode: Mode) -> &'static str {
    match (kind, mode) {
        (ProviderKind::Ernie, Mode::OpenAi) => crate::ernie::OPENAI_BASE_URL,
        (ProviderKind::Spark, Mode::OpenAi) => crate::spark::OPENAI_BASE_URL,
        (ProviderKind::Hunyuan, Mode::OpenAi) => crate::hunyuan::OPENAI_BASE_URL,
        (ProviderKind::Qwen, Mode::OpenAi) => "https://dashscope.aliyuncs.com/compatible-mode/v1",
        _ => kind.default_base_url(),
    }
}
