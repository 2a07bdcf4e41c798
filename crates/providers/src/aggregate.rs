//! Collects stream events into one non-stream response: for protocols that only stream
//! (Spark's WebSocket) and for any stream a client wants as a single answer.

use tollgate_core::chat::{ChatResponse, Choice, FunctionCall, ResponseMessage, ToolCall};
use tollgate_core::UpstreamError;

use crate::codec::{DecodeCtx, StreamEvent};

/// Accumulates stream events; [`Aggregator::finish`] gives the response.
#[derive(Debug, Default)]
pub struct Aggregator {
    id: Option<String>,
    created: Option<i64>,
    model: Option<String>,
    choices: Vec<(ResponseMessage, Option<String>, Vec<ToolCall>)>,
    usage: Option<tollgate_core::Usage>,
    done: bool,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, ev: StreamEvent) {
        match ev {
            StreamEvent::Usage(u) => self.usage = Some(u),
            StreamEvent::Done => self.done = true,
            StreamEvent::Verbatim(v) => {
                for ev in v.canonical() {
                    self.push(ev);
                }
            }
            StreamEvent::Chunk(c) => {
                self.id.get_or_insert(c.id);
                self.created.get_or_insert(c.created);
                self.model.get_or_insert(c.model);
                for ch in c.choices {
                    let i = ch.index as usize;
                    while self.choices.len() <= i {
                        self.choices
                            .push((ResponseMessage::assistant(None), None, Vec::new()));
                    }
                    let (msg, finish, calls) = &mut self.choices[i];
                    if let Some(t) = ch.delta.content {
                        msg.content.get_or_insert_with(String::new).push_str(&t);
                    }
                    if let Some(t) = ch.delta.reasoning_content {
                        msg.reasoning_content
                            .get_or_insert_with(String::new)
                            .push_str(&t);
                    }
                    if let Some(t) = ch.delta.refusal {
                        msg.refusal.get_or_insert_with(String::new).push_str(&t);
                    }
                    for tc in ch.delta.tool_calls.unwrap_or_default() {
                        let j = tc.index as usize;
                        while calls.len() <= j {
                            calls.push(ToolCall {
                                id: String::new(),
                                kind: "function".to_owned(),
                                function: FunctionCall {
                                    name: String::new(),
                                    arguments: String::new(),
                                },
                            });
                        }
                        let call = &mut calls[j];
                        if let Some(id) = tc.id {
                            call.id = id;
                        }
                        if let Some(f) = tc.function {
                            if let Some(n) = f.name {
                                call.function.name.push_str(&n);
                            }
                            if let Some(a) = f.arguments {
                                call.function.arguments.push_str(&a);
                            }
                        }
                    }
                    if ch.finish_reason.is_some() {
                        *finish = ch.finish_reason;
                    }
                }
            }
        }
    }

    /// Whether the stream ended normally.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The response, or an error if the stream never ended normally.
    pub fn finish(self, ctx: &DecodeCtx) -> Result<ChatResponse, UpstreamError> {
        if !self.done {
            return Err(UpstreamError::protocol("the upstream stream ended early"));
        }
        let choices = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, (mut msg, finish, calls))| {
                if !calls.is_empty() {
                    msg.tool_calls = Some(calls);
                }
                Choice {
                    index: i as u32,
                    message: msg,
                    finish_reason: finish.or_else(|| Some("stop".to_owned())),
                    logprobs: None,
                }
            })
            .collect();
        Ok(ChatResponse {
            id: self.id.unwrap_or_else(|| ctx.request_id.clone()),
            object: "chat.completion".to_owned(),
            created: self.created.unwrap_or(ctx.created),
            model: self.model.unwrap_or_else(|| ctx.model.clone()),
            choices,
            usage: self.usage,
            system_fingerprint: None,
        })
    }
}

/// Collects a whole list of events.
pub fn aggregate(
    events: impl IntoIterator<Item = StreamEvent>,
    ctx: &DecodeCtx,
) -> Result<ChatResponse, UpstreamError> {
    let mut a = Aggregator::new();
    for e in events {
        a.push(e);
    }
    a.finish(ctx)
}
