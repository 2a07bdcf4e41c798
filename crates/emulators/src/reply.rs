//! The deterministic reply to a chat request in vendor-neutral terms (text or tool
//! calls, token counts, finish reason), for emulators that render it in their own
//! vendor's shape (Zhipu, Ark, DashScope).
//!
//! Messages are read as JSON in the OpenAI-like shape these vendors share; content may be
//! a string or a list of parts, where a part's text is its `text` field (OpenAI's
//! `{"type":"text","text"}` and DashScope's `{"text"}` alike).

use serde_json::{json, Value};

use crate::text;

/// One reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The text, unless the model calls tools.
    pub content: Option<String>,
    /// `(id, name, arguments JSON)` of each tool call.
    pub tool_calls: Vec<(String, String, String)>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prefix-cache hits, as the vendors count them: the history before the last
    /// message, in 64-token blocks.
    pub cached_tokens: u64,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
}

/// What shapes the reply besides the messages.
#[derive(Debug, Clone, Default)]
pub struct ReplyOptions<'a> {
    pub vendor: &'a str,
    pub model: &'a str,
    /// Function tools in OpenAI's shape (`{"type":"function","function":{..}}`).
    pub tools: &'a [Value],
    /// `"none"` stops tool calls; `{"function":{"name"}}` picks one.
    pub tool_choice: Option<&'a Value>,
    pub max_tokens: Option<u64>,
    /// Answer a JSON object (JSON mode).
    pub json: bool,
    /// The `chunks=N` fault: exactly N words.
    pub chunks: Option<u32>,
    /// A prefix for tool-call ids.
    pub call_id_prefix: &'a str,
}

/// The text of a message: its string content, its parts' text, or its tool calls.
pub fn message_text(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => m["tool_calls"].to_string(),
    }
}

impl Reply {
    /// The reply to `messages` (non-empty).
    pub fn build(messages: &[Value], o: &ReplyOptions<'_>) -> Reply {
        let texts: Vec<String> = messages.iter().map(message_text).collect();
        let prompt_tokens = text::prompt_tokens(texts.iter().map(String::as_str));
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(message_text)
            .unwrap_or_default();
        let last_role = messages
            .last()
            .and_then(|m| m["role"].as_str())
            .unwrap_or("");
        let mut tool_calls = Vec::new();
        let choice = o.tool_choice.unwrap_or(&Value::Null);
        if !o.tools.is_empty() && choice != "none" && last_role != "tool" {
            let named = choice["function"]["name"].as_str();
            if let Some(t) = o
                .tools
                .iter()
                .find(|t| named.is_none_or(|n| t["function"]["name"] == n))
            {
                let name = t["function"]["name"].as_str().unwrap_or("tool");
                let args = text::example_for_schema(&t["function"]["parameters"]).to_string();
                tool_calls.push((format!("{}0", o.call_id_prefix), name.to_owned(), args));
            }
        }
        let mut content = if !tool_calls.is_empty() {
            None
        } else if o.json {
            Some(
                json!({"answer": text::reply_text(o.vendor, o.model, &last_user, None)})
                    .to_string(),
            )
        } else {
            Some(text::reply_text(o.vendor, o.model, &last_user, o.chunks))
        };
        let mut completion_tokens = content.as_deref().map(text::count_tokens).unwrap_or(0)
            + tool_calls
                .iter()
                .map(|(_, n, a)| 3 + text::count_tokens(n) + text::count_tokens(a))
                .sum::<u64>();
        let mut finish_reason = if tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        if let (Some(max), Some(c)) = (o.max_tokens, content.as_mut()) {
            if completion_tokens > max {
                *c = c.chars().take((max as usize) * 4).collect();
                completion_tokens = max;
                finish_reason = "length";
            }
        }
        let history = texts[..texts.len().saturating_sub(1)]
            .iter()
            .map(|t| 4 + text::count_tokens(t))
            .sum::<u64>();
        Reply {
            content,
            tool_calls,
            prompt_tokens,
            completion_tokens,
            cached_tokens: if messages.len() > 1 {
                history / 64 * 64
            } else {
                0
            },
            finish_reason,
        }
    }

    /// The text in stream pieces (one word each); empty when the reply calls tools.
    pub fn pieces(&self) -> Vec<String> {
        self.content
            .as_deref()
            .map(text::split_chunks)
            .unwrap_or_default()
    }

    /// The tool calls in OpenAI's shape, with an `index` on each when `indexed`.
    pub fn tool_calls_json(&self, indexed: bool) -> Value {
        Value::Array(
            self.tool_calls
                .iter()
                .enumerate()
                .map(|(i, (id, n, a))| {
                    let mut c = json!({"id": id, "type": "function", "function": {"name": n, "arguments": a}});
                    if indexed {
                        c["index"] = json!(i);
                    }
                    c
                })
                .collect(),
        )
    }
}

/// Splits a string in two at a character boundary near the middle.
pub fn halves(s: &str) -> (&str, &str) {
    let mid = s
        .char_indices()
        .nth(s.chars().count() / 2)
        .map(|(b, _)| b)
        .unwrap_or(s.len());
    s.split_at(mid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_and_text() {
        let msgs = [json!({"role":"user","content":[{"text":"hi"}]})];
        let tools = [
            json!({"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"integer"}}}}}),
        ];
        let r = Reply::build(
            &msgs,
            &ReplyOptions {
                vendor: "v",
                model: "m",
                tools: &tools,
                call_id_prefix: "call_",
                ..Default::default()
            },
        );
        assert_eq!(
            r.tool_calls,
            vec![("call_0".into(), "f".into(), "{\"a\":42}".into())]
        );
        assert_eq!(r.finish_reason, "tool_calls");
        let r = Reply::build(
            &msgs,
            &ReplyOptions {
                vendor: "v",
                model: "m",
                max_tokens: Some(2),
                ..Default::default()
            },
        );
        assert_eq!((r.finish_reason, r.completion_tokens), ("length", 2));
        assert!(r.content.unwrap().contains("Hello"));
        assert_eq!(halves("abcd"), ("ab", "cd"));
    }
}
