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
//!
//! Tokenizing is not free (tiktoken costs about 260 instructions per character and its
//! tables take 26 MB), so for OpenAI models a request first reserves a strict upper
//! bound: one token per byte of text (a BPE token is at least one byte), plus the
//! framing. Only when that bound does not fit a budget or a TPM window is the prompt
//! tokenized exactly ([`exact_reservation`]) and the reservation retried. A request far
//! from its limits never pays for tiktoken; one near them is never refused for want of
//! an exact count, and neither is ever reserved below its true size.

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

/// Which of OpenAI's encodings a model uses (`true`: o200k, `false`: cl100k), if it is
/// an OpenAI model tollgate knows.
fn openai_family(model: &str) -> Option<bool> {
    let m = model.to_ascii_lowercase();
    if ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt"]
        .iter()
        .any(|p| m.starts_with(p))
    {
        Some(true)
    } else if m.starts_with("gpt-4") || m.starts_with("gpt-3.5") {
        Some(false)
    } else {
        None
    }
}

/// The tokenizer OpenAI uses for a model.
fn openai_bpe(model: &str) -> Option<&'static CoreBPE> {
    if openai_family(model)? {
        o200k()
    } else {
        cl100k()
    }
}

/// Tokens of one text: exact for OpenAI models, conservative otherwise.
pub fn count_text(text: &str, bpe: Option<&CoreBPE>) -> u64 {
    match bpe {
        Some(b) => b.encode_ordinary(text).len() as u64,
        None => estimate_text(text),
    }
}

/// The conservative estimate for non-OpenAI tokenizers: one token per CJK character,
/// one per three others.
///
/// Runs on every prompt and every streamed chunk, so it works on bytes: characters are
/// the bytes that do not continue a UTF-8 sequence (a loop the compiler vectorizes), and
/// every CJK range here is made of three-byte sequences, so only their lead bytes
/// (0xE0-0xEF) are decoded. ~19 instructions a byte decoding every `char` before; about
/// one now on ASCII text.
pub fn estimate_text(text: &str) -> u64 {
    let b = text.as_bytes();
    if b.is_ascii() {
        return (b.len() as u64).div_ceil(3);
    }
    let chars = b.iter().filter(|x| (**x & 0xC0) != 0x80).count() as u64;
    let mut cjk = 0u64;
    let mut i = 0;
    while i + 2 < b.len() {
        let lead = b[i];
        if lead & 0xF0 == 0xE0 {
            let c = (u32::from(lead & 0x0F) << 12)
                | (u32::from(b[i + 1] & 0x3F) << 6)
                | u32::from(b[i + 2] & 0x3F);
            if matches!(c, 0x2E80..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF) {
                cjk += 1;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    cjk + (chars - cjk).div_ceil(3)
}

/// Cheap counts of one request's prompt for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptCount {
    /// A conservative estimate, for routing and for usage tollgate must estimate.
    pub estimate: u64,
    /// What to reserve first: never below the vendor's count.
    pub reserve: u64,
    /// Whether [`exact_reservation`] can do better (an OpenAI tokenizer exists).
    pub exact_possible: bool,
}

fn is_openai_tokenized(kind: ProviderKind, model: &str) -> bool {
    matches!(kind, ProviderKind::OpenAi | ProviderKind::OpenAiCompatible)
        && openai_family(model).is_some()
}

/// Counts a prompt without tokenizing it.
pub fn count(req: &ChatRequest, kind: ProviderKind, model: &str) -> PromptCount {
    let estimate = count_with(req, Counter::Estimate);
    if is_openai_tokenized(kind, model) {
        PromptCount {
            estimate,
            reserve: count_with(req, Counter::Bytes),
            exact_possible: true,
        }
    } else {
        PromptCount {
            estimate,
            reserve: reservation_tokens(estimate),
            exact_possible: false,
        }
    }
}

/// The reservation from tiktoken's exact count, for OpenAI models.
pub fn exact_reservation(req: &ChatRequest, kind: ProviderKind, model: &str) -> Option<u64> {
    if !is_openai_tokenized(kind, model) {
        return None;
    }
    let bpe = openai_bpe(model)?;
    Some(reservation_tokens(count_with(req, Counter::Bpe(bpe))))
}

/// The conservative estimate of a prompt (no tokenizer).
pub fn prompt_tokens(req: &ChatRequest, _kind: ProviderKind, _model: &str) -> u64 {
    count_with(req, Counter::Estimate)
}

#[derive(Clone, Copy)]
enum Counter<'a> {
    Estimate,
    /// One token per byte: a strict upper bound for byte-level BPE.
    Bytes,
    Bpe(&'a CoreBPE),
}

impl Counter<'_> {
    fn text(&self, t: &str) -> u64 {
        match self {
            Counter::Estimate => estimate_text(t),
            Counter::Bytes => t.len() as u64,
            Counter::Bpe(b) => b.encode_ordinary(t).len() as u64,
        }
    }
}

fn count_with(req: &ChatRequest, c: Counter<'_>) -> u64 {
    let bpe_framing = !matches!(c, Counter::Estimate);
    let per_message = if bpe_framing { 3 } else { 4 };
    let mut n = 3u64;
    for m in &req.messages {
        n += per_message;
        match &m.content {
            Some(Content::Text(t)) => n += c.text(t),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    if let Some(t) = &p.text {
                        n += c.text(t);
                    }
                    if p.kind == "image_url" {
                        n += 1_600;
                    }
                }
            }
            None => {}
        }
        for tc in m.tool_calls.iter().flatten() {
            n += 3 + c.text(&tc.function.name) + c.text(&tc.function.arguments);
        }
        if let Some(name) = &m.name {
            n += 1 + c.text(name);
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
            + c.text(&t.function.name)
            + c.text(t.function.description.as_deref().unwrap_or(""))
            + c.text(&schema);
    }
    n
}

/// Prompt tokens with tiktoken where it applies, else the estimate.
pub fn prompt_tokens_exact(req: &ChatRequest, kind: ProviderKind, model: &str) -> u64 {
    match is_openai_tokenized(kind, model)
        .then(|| openai_bpe(model))
        .flatten()
    {
        Some(bpe) => count_with(req, Counter::Bpe(bpe)),
        None => count_with(req, Counter::Estimate),
    }
}

/// The count to reserve: the estimate plus a 10% margin and 16 tokens.
pub fn reservation_tokens(estimate: u64) -> u64 {
    estimate + estimate / 10 + 16
}

#[cfg(test)]
mod tests {

    /// The estimate as it was first written (a `char` at a time), to check the byte one.
    fn estimate_text_reference(text: &str) -> u64 {
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

    #[test]
    fn byte_estimate_matches_the_char_one() {
        // Boundaries of every CJK range, their neighbours, and 1- to 4-byte characters.
        let mut alphabet: Vec<char> = "aZ09 \n\u{7f}\u{80}\u{7ff}\u{800}é中文한국어ｱ！😀𝄞\u{ffff}"
            .chars()
            .collect();
        for (lo, hi) in [
            (0x2E80u32, 0x9FFF),
            (0xAC00, 0xD7AF),
            (0xF900, 0xFAFF),
            (0xFF00, 0xFFEF),
        ] {
            for c in [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1] {
                alphabet.extend(char::from_u32(c));
            }
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..300 {
            let mut s = String::new();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            assert_eq!(estimate_text(&s), estimate_text_reference(&s), "{s:?}");
        }
        assert_eq!(estimate_text(""), 0);
        assert_eq!(estimate_text("abcd"), 2);
        assert_eq!(estimate_text("中文abc"), 3);
    }
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
            prompt_tokens_exact(&req, ProviderKind::OpenAi, "gpt-4o"),
            3 + 3 + 4
        );
        assert!(prompt_tokens(&req, ProviderKind::DeepSeek, "deepseek-chat") >= 10);
        assert_eq!(reservation_tokens(100), 126);
        // For an OpenAI model the first reservation is the byte bound (never below the
        // exact count); the exact reservation is tighter.
        let c = count(&req, ProviderKind::OpenAi, "gpt-4o");
        assert!(c.exact_possible);
        assert_eq!(c.reserve, 3 + 3 + "Hello, world!".len() as u64);
        assert_eq!(
            exact_reservation(&req, ProviderKind::OpenAi, "gpt-4o"),
            Some(reservation_tokens(10))
        );
        let c = count(&req, ProviderKind::DeepSeek, "deepseek-chat");
        assert!(!c.exact_possible);
        assert_eq!(c.reserve, reservation_tokens(c.estimate));
    }
}
