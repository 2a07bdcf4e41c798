//! Prompt token counts for reservations (budgets, TPM) before the vendor has said
//! anything. Billing never uses these: it uses the vendor's reported usage.
//!
//! - OpenAI models: tiktoken's BPE (`o200k_base` for GPT-4o/4.1/o-series/GPT-5,
//!   `cl100k_base` for GPT-4/3.5), bundled in the binary, plus OpenAI's chat framing
//!   (3 tokens per message, 3 to prime the reply).
//! - Everyone else: a conservative estimate that errs high, since an estimate below the
//!   vendor's count could let a budget be overspent: one token per CJK character (most
//!   Chinese tokenizers use 0.6–1.0), one per 3 other characters (BPE tokenizers average
//!   about 4 on English), 4 tokens of framing per message, an image at 1,600 tokens.
//!
//! Either way a 10% margin plus 16 tokens is added ([`reservation_tokens`]).

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;
use tollgate_core::chat::{ChatRequest, Content};
use tollgate_core::ProviderKind;

static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn o200k() -> Option<&'static CoreBPE> {
    O200K
        .get_or_init(|| tiktoken_rs::o200k_base().ok())
        .as_ref()
}

fn cl100k() -> Option<&'static CoreBPE> {
    CL100K
        .get_or_init(|| tiktoken_rs::cl100k_base().ok())
        .as_ref()
}

/// Loads the BPE tables now (about 0.2 s) rather than on the first OpenAI request.
pub fn warm_up() {
    let _ = o200k();
    let _ = cl100k();
}

/// The tokenizer OpenAI uses for a model, if it is an OpenAI model tollgate knows.
fn openai_bpe(model: &str) -> Option<&'static CoreBPE> {
    let m = model.to_ascii_lowercase();
    if m.starts_with("gpt-4o")
        || m.starts_with("gpt-4.1")
        || m.starts_with("gpt-5")
        || m.starts_with("o1")
        || m.starts_with("o3")
        || m.starts_with("o4")
        || m.starts_with("chatgpt")
    {
        o200k()
    } else if m.starts_with("gpt-4") || m.starts_with("gpt-3.5") {
        cl100k()
    } else {
        None
    }
}

/// Tokens of one text: exact for OpenAI models, conservative otherwise.
pub fn count_text(text: &str, bpe: Option<&CoreBPE>) -> u64 {
    match bpe {
        Some(b) => b.encode_ordinary(text).len() as u64,
        None => estimate_text(text),
    }
}

/// The conservative estimate for non-OpenAI tokenizers.
pub fn estimate_text(text: &str) -> u64 {
    let mut cjk = 0u64;
    let mut other = 0u64;
    for c in text.chars() {
        if matches!(c as u32, 0x2E80..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF)
        {
            cjk += 1;
        } else {
            other += 1;
        }
    }
    cjk + other.div_ceil(3)
}

/// Prompt tokens of a request (messages, tool definitions, images).
pub fn prompt_tokens(req: &ChatRequest, kind: ProviderKind, model: &str) -> u64 {
    let bpe = if matches!(kind, ProviderKind::OpenAi | ProviderKind::OpenAiCompatible) {
        openai_bpe(model)
    } else {
        None
    };
    let per_message = if bpe.is_some() { 3 } else { 4 };
    let mut n = 3u64;
    for m in &req.messages {
        n += per_message;
        match &m.content {
            Some(Content::Text(t)) => n += count_text(t, bpe),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    if let Some(t) = &p.text {
                        n += count_text(t, bpe);
                    }
                    if p.kind == "image_url" {
                        n += 1_600;
                    }
                }
            }
            None => {}
        }
        for tc in m.tool_calls.iter().flatten() {
            n += 3 + count_text(&tc.function.name, bpe) + count_text(&tc.function.arguments, bpe);
        }
        if let Some(name) = &m.name {
            n += 1 + count_text(name, bpe);
        }
    }
    for t in req.tools.iter().flatten() {
        let schema = t
            .function
            .parameters
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        n += 8
            + count_text(&t.function.name, bpe)
            + count_text(t.function.description.as_deref().unwrap_or(""), bpe)
            + count_text(&schema, bpe);
    }
    n
}

/// The count to reserve: the estimate plus a 10% margin and 16 tokens.
pub fn reservation_tokens(estimate: u64) -> u64 {
    estimate + estimate / 10 + 16
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::chat::{Message, Role};

    #[test]
    fn openai_counts_are_exact_and_others_err_high() {
        let bpe = o200k().unwrap();
        assert_eq!(count_text("Hello, world!", Some(bpe)), 4);
        // The estimate is above the real count on English and on Chinese.
        let en = "The quick brown fox jumps over the lazy dog and keeps on running far away.";
        assert!(estimate_text(en) >= count_text(en, Some(bpe)));
        let zh = "今天天气很好，我们去公园散步吧。";
        assert!(estimate_text(zh) >= count_text(zh, Some(bpe)));
    }

    #[test]
    fn prompt_counts_include_framing() {
        let req = ChatRequest {
            model: "gpt-4o".into(),
            messages: vec![Message::text(Role::User, "Hello, world!")],
            ..Default::default()
        };
        assert_eq!(
            prompt_tokens(&req, ProviderKind::OpenAi, "gpt-4o"),
            3 + 3 + 4
        );
        assert!(prompt_tokens(&req, ProviderKind::DeepSeek, "deepseek-chat") >= 10);
        assert_eq!(reservation_tokens(100), 126);
    }
}
