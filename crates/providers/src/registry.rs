//! Which codec speaks for which provider kind.

use std::sync::Arc;

use tollgate_core::ProviderKind;

use crate::codec::Codec;
use crate::doubao::DoubaoCodec;
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

/// The codec for a provider kind in a mode, or why there is none.
pub fn codec_for(kind: ProviderKind, mode: Mode) -> Result<Arc<dyn Codec>, String> {
    let openai = |f| -> Arc<dyn Codec> { Arc::new(OpenAiCodec::new(f)) };
    match (kind, mode) {
        (ProviderKind::OpenAi, _) => Ok(openai(Flavor::OpenAi)),
        (ProviderKind::DeepSeek, _) => Ok(openai(Flavor::DeepSeek)),
        (ProviderKind::Moonshot, _) => Ok(openai(Flavor::Moonshot)),
        (ProviderKind::Mistral, _) => Ok(openai(Flavor::Mistral)),
        (ProviderKind::OpenAiCompatible, _) => Ok(openai(Flavor::Compatible)),
        // Zhipu's v4 API is OpenAI-shaped either way; the mode picks the auth: the
        // vendor's own signed JWT (native) or the raw key as an OpenAI client sends it.
        (ProviderKind::Zhipu, Mode::Native) => Ok(Arc::new(ZhipuCodec::new(ZhipuAuth::Jwt))),
        (ProviderKind::Zhipu, Mode::OpenAi) => Ok(Arc::new(ZhipuCodec::new(ZhipuAuth::ApiKey))),
        // Ark's native API is OpenAI's; both modes are the same protocol.
        (ProviderKind::Doubao, _) => Ok(Arc::new(DoubaoCodec::new())),
        (ProviderKind::Qwen, Mode::Native) => Ok(Arc::new(QwenCodec::new())),
        (ProviderKind::Qwen, Mode::OpenAi) => Ok(Arc::new(QwenCompatibleCodec::new())),
        (other, _) => Err(format!(
            "provider kind '{other}' has no codec in this build yet"
        )),
    }
}
