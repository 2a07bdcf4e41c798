//! Which codec speaks for which provider kind.

use std::sync::Arc;

use tollgate_core::ProviderKind;

use crate::anthropic::AnthropicCodec;
use crate::codec::Codec;
use crate::gemini::GeminiCodec;
use crate::openai::{Flavor, OpenAiCodec};

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

/// The codec for a provider kind in a mode, or why there is none.
pub fn codec_for(kind: ProviderKind, mode: Mode) -> Result<Arc<dyn Codec>, String> {
    let openai = |f| -> Arc<dyn Codec> { Arc::new(OpenAiCodec::new(f)) };
    match (kind, mode) {
        (ProviderKind::OpenAi, _) => Ok(openai(Flavor::OpenAi)),
        (ProviderKind::DeepSeek, _) => Ok(openai(Flavor::DeepSeek)),
        (ProviderKind::Moonshot, _) => Ok(openai(Flavor::Moonshot)),
        (ProviderKind::Mistral, _) => Ok(openai(Flavor::Mistral)),
        (ProviderKind::OpenAiCompatible, _) => Ok(openai(Flavor::Compatible)),
        (ProviderKind::Ernie, Mode::Native) => Ok(Arc::new(crate::ernie::ErnieCodec::new())),
        (ProviderKind::Ernie, Mode::OpenAi) => Ok(Arc::new(crate::ernie::ErnieV2Codec::default())),
        (ProviderKind::Spark, Mode::Native) => Ok(Arc::new(crate::spark::SparkCodec::new())),
        (ProviderKind::Spark, Mode::OpenAi) => {
            Ok(Arc::new(crate::spark::SparkHttpCodec::default()))
        }
        (ProviderKind::Hunyuan, Mode::Native) => Ok(Arc::new(crate::hunyuan::HunyuanCodec::new())),
        (ProviderKind::Hunyuan, Mode::OpenAi) => Ok(openai(Flavor::Compatible)),
        // The native protocol serves either mode; the vendors' OpenAI-compatible
        // endpoints remain reachable as `openai_compatible` providers.
        (ProviderKind::Anthropic, _) => Ok(Arc::new(AnthropicCodec::new())),
        (ProviderKind::Gemini, _) => Ok(Arc::new(GeminiCodec::new())),
        (other, _) => Err(format!(
            "provider kind '{other}' has no codec in this build yet"
        )),
    }
}
