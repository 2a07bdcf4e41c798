//! Provider ids and model names.
//!
//! A *provider* is a configured upstream (an id such as `deepseek`, or any name of an
//! `openai_compatible` instance); its [`ProviderKind`] says which wire protocol it speaks.
//! A client names a model as `provider/model`, as a bare model id served by exactly one
//! provider, or (later) as a virtual model.

use std::fmt;
use std::str::FromStr;

/// The wire protocol family of a provider: which codec talks to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Gemini,
    Mistral,
    DeepSeek,
    Moonshot,
    Zhipu,
    Doubao,
    Qwen,
    Ernie,
    Spark,
    Hunyuan,
    /// Any server speaking OpenAI's API (vLLM, llama.cpp, Ollama, ...).
    OpenAiCompatible,
}

impl ProviderKind {
    /// Every kind, in a stable order.
    pub const ALL: [ProviderKind; 13] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Mistral,
        ProviderKind::DeepSeek,
        ProviderKind::Moonshot,
        ProviderKind::Zhipu,
        ProviderKind::Doubao,
        ProviderKind::Qwen,
        ProviderKind::Ernie,
        ProviderKind::Spark,
        ProviderKind::Hunyuan,
        ProviderKind::OpenAiCompatible,
    ];

    /// The id used in config and in `provider/model` names.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Mistral => "mistral",
            ProviderKind::DeepSeek => "deepseek",
            ProviderKind::Moonshot => "moonshot",
            ProviderKind::Zhipu => "zhipu",
            ProviderKind::Doubao => "doubao",
            ProviderKind::Qwen => "qwen",
            ProviderKind::Ernie => "ernie",
            ProviderKind::Spark => "spark",
            ProviderKind::Hunyuan => "hunyuan",
            ProviderKind::OpenAiCompatible => "openai_compatible",
        }
    }

    /// The vendor's public API base URL (what `base_url` defaults to).
    pub fn default_base_url(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
            ProviderKind::Mistral => "https://api.mistral.ai/v1",
            ProviderKind::DeepSeek => "https://api.deepseek.com",
            ProviderKind::Moonshot => "https://api.moonshot.cn/v1",
            ProviderKind::Zhipu => "https://open.bigmodel.cn/api/paas/v4",
            ProviderKind::Doubao => "https://ark.cn-beijing.volces.com/api/v3",
            ProviderKind::Qwen => "https://dashscope.aliyuncs.com",
            ProviderKind::Ernie => "https://aip.baidubce.com",
            ProviderKind::Spark => "wss://spark-api.xf-yun.com",
            ProviderKind::Hunyuan => "https://hunyuan.tencentcloudapi.com",
            ProviderKind::OpenAiCompatible => "http://127.0.0.1:8000/v1",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown provider kind '{s}' (known: {})", known.join(", "))
            })
    }
}

/// A model as a client names it: `provider/model` or a bare id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef<'a> {
    /// The provider part, when the name had one.
    pub provider: Option<&'a str>,
    pub model: &'a str,
}

impl<'a> ModelRef<'a> {
    /// Splits at the first `/`. A name whose prefix is not a configured provider is a
    /// bare id that contains a slash (e.g. `meta-llama/Llama-3-8B` on vLLM): the caller
    /// decides with `is_provider`.
    pub fn parse(name: &'a str, is_provider: impl Fn(&str) -> bool) -> Self {
        match name.split_once('/') {
            Some((p, m)) if !m.is_empty() && is_provider(p) => ModelRef {
                provider: Some(p),
                model: m,
            },
            _ => ModelRef {
                provider: None,
                model: name,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in ProviderKind::ALL {
            assert_eq!(k.as_str().parse::<ProviderKind>().unwrap(), k);
        }
        assert!("nope".parse::<ProviderKind>().is_err());
    }

    #[test]
    fn model_refs() {
        let known = |p: &str| p == "deepseek" || p == "vllm";
        assert_eq!(
            ModelRef::parse("deepseek/deepseek-chat", known),
            ModelRef {
                provider: Some("deepseek"),
                model: "deepseek-chat"
            }
        );
        assert_eq!(ModelRef::parse("gpt-4o", known).provider, None);
        let r = ModelRef::parse("meta-llama/Llama-3", known);
        assert_eq!((r.provider, r.model), (None, "meta-llama/Llama-3"));
        let r = ModelRef::parse("vllm/meta-llama/Llama-3", known);
        assert_eq!((r.provider, r.model), (Some("vllm"), "meta-llama/Llama-3"));
    }
}
