//! Deterministic answers for emulators: the reply text, its chunks, realistic token
//! counts, and JSON values that fit a JSON schema (for JSON mode and tool arguments).

use serde_json::{json, Map, Value};

/// A token count in the spirit of real BPE tokenizers: about four characters of Latin
/// text per token, one token per CJK character. Deterministic, so tests can predict it.
pub fn count_tokens(text: &str) -> u64 {
    let mut tokens = 0u64;
    let mut latin = 0u64;
    for c in text.chars() {
        if is_cjk(c) {
            tokens += 1;
        } else {
            latin += 1;
        }
    }
    tokens + latin.div_ceil(4)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3000..=0x303F | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF)
}

/// Prompt tokens of a list of (role, text) messages: text tokens plus 4 per message
/// and 3 for the reply's priming, as OpenAI's chat format counts.
pub fn prompt_tokens<'a>(messages: impl IntoIterator<Item = &'a str>) -> u64 {
    3 + messages
        .into_iter()
        .map(|t| 4 + count_tokens(t))
        .sum::<u64>()
}

/// The reply an emulator gives: names the vendor and model and echoes the start of the
/// last user message, so a test can tell who answered what.
pub fn reply_text(vendor: &str, model: &str, last_user: &str, chunks: Option<u32>) -> String {
    let echo: String = last_user.chars().take(80).collect();
    let base = format!("Hello from the {vendor} emulator ({model}). You said: {echo}");
    match chunks {
        None => base,
        Some(n) => {
            // Exactly n words, so a stream of one word per chunk has n chunks.
            let words: Vec<&str> = base.split_whitespace().collect();
            (0..n as usize)
                .map(|i| words.get(i % words.len().max(1)).copied().unwrap_or("word"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
}

/// Splits a reply into stream pieces: one word (with its leading space) per piece.
pub fn split_chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, w) in text.split(' ').enumerate() {
        if i > 0 {
            cur.push(' ');
        }
        cur.push_str(w);
        out.push(std::mem::take(&mut cur));
    }
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// A value that satisfies a (simple) JSON schema: objects get every listed property,
/// strings, numbers, booleans, arrays and enums a plausible value.
pub fn example_for_schema(schema: &Value) -> Value {
    example(schema, 0)
}

fn example(schema: &Value, depth: usize) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(e) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return e.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return example(first, depth + 1);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_ascii_lowercase(),
        _ if schema.get("properties").is_some() => "object".to_owned(),
        _ => "string".to_owned(),
    };
    match ty.as_str() {
        "object" => {
            let mut m = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    m.insert(k.clone(), example(v, depth + 1));
                }
            }
            Value::Object(m)
        }
        "array" => json!([example(
            schema.get("items").unwrap_or(&json!({})),
            depth + 1
        )]),
        "integer" => json!(42),
        "number" => json!(3.5),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("example"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_plausible() {
        assert_eq!(count_tokens("abcd"), 1);
        assert_eq!(count_tokens("abcde"), 2);
        assert_eq!(count_tokens("你好"), 2);
        assert_eq!(prompt_tokens(["hi"]), 3 + 4 + 1);
    }

    #[test]
    fn chunks_rejoin_and_count() {
        let t = reply_text("openai", "gpt-4o", "what is up", Some(100));
        let c = split_chunks(&t);
        assert_eq!(c.len(), 100);
        assert_eq!(c.concat(), t);
    }

    #[test]
    fn schema_examples() {
        let s = json!({"type":"object","properties":{"city":{"type":"string"},"n":{"type":"integer"},
            "unit":{"enum":["c","f"]},"tags":{"type":"array","items":{"type":"string"}}},"required":["city"]});
        assert_eq!(
            example_for_schema(&s),
            json!({"city":"example","n":42,"unit":"c","tags":["example"]})
        );
    }
}
