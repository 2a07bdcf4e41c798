//! Conversation shaping for the vendors that demand strict turn-taking (ERNIE, Hunyuan,
//! Spark): system prompts pulled out, consecutive same-side messages merged, a leading or
//! trailing assistant turn dropped, and tool traffic rendered as text where the vendor has
//! no tool roles.

use tollgate_core::chat::{ChatRequest, Message, Role};

/// Which side of the conversation a turn belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The user's side; merged with adjacent user turns.
    User,
    /// The model's side; merged with adjacent assistant turns.
    Assistant,
    /// On the user's side for alternation, but never merged (Hunyuan's `tool` turns).
    UserKept,
}

/// Orders `items` into the alternating form `user, assistant, user, ...`, starting and
/// ending with a user-side turn: adjacent mergeable turns of the same side are merged
/// with `merge`, leading and trailing assistant turns are dropped.
pub(crate) fn alternate<T>(
    items: Vec<T>,
    side: impl Fn(&T) -> Side,
    merge: impl Fn(&mut T, T),
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        let s = side(&item);
        if out.is_empty() && s == Side::Assistant {
            continue;
        }
        if let Some(last) = out.last_mut() {
            let ls = side(last);
            if ls == s && s != Side::UserKept {
                merge(last, item);
                continue;
            }
        }
        out.push(item);
    }
    while out.last().is_some_and(|t| side(t) == Side::Assistant) {
        out.pop();
    }
    out
}

/// The system and developer messages joined with a blank line, if any.
pub(crate) fn system_prompt(req: &ChatRequest) -> Option<String> {
    let parts: Vec<String> = req
        .messages
        .iter()
        .filter(|m| matches!(m.role, Role::System | Role::Developer))
        .map(Message::text_content)
        .filter(|t| !t.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// A message as plain text for vendors without tool roles: a tool result says which
/// call it answers; an assistant turn that only called tools says which calls it made.
pub(crate) fn plain_text(m: &Message) -> String {
    let text = m.text_content();
    match m.role {
        Role::Tool | Role::Function => {
            let id = m
                .tool_call_id
                .as_deref()
                .or(m.name.as_deref())
                .unwrap_or("tool");
            format!("Tool result ({id}): {text}")
        }
        Role::Assistant => {
            let calls: Vec<String> = m
                .tool_calls
                .iter()
                .flatten()
                .map(|c| format!("[called {}({})]", c.function.name, c.function.arguments))
                .collect();
            match (text.is_empty(), calls.is_empty()) {
                (_, true) => text,
                (true, false) => calls.join("\n"),
                (false, false) => format!("{text}\n{}", calls.join("\n")),
            }
        }
        _ => text,
    }
}

/// Plain `(role, text)` turns of a request for vendors with only user and assistant
/// roles: tool results become user text; system messages are left out (see
/// [`system_prompt`]); the result alternates as [`alternate`] makes it.
pub(crate) fn plain_turns(req: &ChatRequest) -> Vec<(Side, String)> {
    let items: Vec<(Side, String)> = req
        .messages
        .iter()
        .filter(|m| !matches!(m.role, Role::System | Role::Developer))
        .map(|m| {
            let side = if m.role == Role::Assistant {
                Side::Assistant
            } else {
                Side::User
            };
            (side, plain_text(m))
        })
        .collect();
    alternate(
        items,
        |t| t.0,
        |a, b| {
            if a.1.is_empty() {
                a.1 = b.1;
            } else if !b.1.is_empty() {
                a.1.push_str("\n\n");
                a.1.push_str(&b.1);
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_drops_and_renders_tools() {
        let req: ChatRequest = serde_json::from_value(json!({"model":"m","messages":[
            {"role":"assistant","content":"leading, dropped"},
            {"role":"system","content":"be brief"},
            {"role":"user","content":"a"},
            {"role":"user","content":"b"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"42"},
            {"role":"developer","content":"and exact"},
            {"role":"assistant","content":"trailing, dropped"}
        ]}))
        .unwrap();
        assert_eq!(
            system_prompt(&req).as_deref(),
            Some("be brief\n\nand exact")
        );
        let turns = plain_turns(&req);
        assert_eq!(
            turns,
            vec![
                (Side::User, "a\n\nb".to_owned()),
                (Side::Assistant, "[called f({})]".to_owned()),
                (Side::User, "Tool result (c1): 42".to_owned()),
            ]
        );
    }
}
