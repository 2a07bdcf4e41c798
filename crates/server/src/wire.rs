//! The client's wire format: OpenAI's Chat Completions (`/v1/chat/completions`) or
//! Anthropic's Messages (`/v1/messages`). The request lifecycle is the same; only how
//! the answer, the stream events and a mid-stream error are written differs.

use axum::body::Bytes;
use tollgate_core::chat::{ChatChunk, ChatResponse};
use tollgate_core::GatewayError;
use tollgate_providers::anthropic_inbound::{self, AnthropicStreamEncoder};
use tollgate_providers::StreamEvent;

use crate::metering::Priced;

/// Which API the client speaks.
#[derive(Debug, Clone)]
pub enum Wire {
    OpenAi {
        /// `stream_options.include_usage`: write the final usage chunk.
        include_usage: bool,
    },
    Anthropic {
        /// The model as the client named it (echoed in the answer).
        model: String,
    },
}

/// Writes one stream's events in a wire format.
pub trait StreamWriter: Send {
    /// Bytes for one canonical event (possibly none).
    fn event(&mut self, ev: &StreamEvent) -> Vec<Bytes>;
    /// The closing bytes of a stream that completed and was recorded.
    fn finish(&mut self, priced: &Priced) -> Vec<Bytes>;
    /// The closing bytes of a stream that failed midway.
    fn error(&mut self, e: &GatewayError) -> Vec<Bytes>;
}

impl Wire {
    /// The body of a non-stream answer.
    pub fn full_body(&self, out: &ChatResponse) -> Result<Vec<u8>, GatewayError> {
        let v = match self {
            Wire::OpenAi { .. } => serde_json::to_vec(out),
            Wire::Anthropic { model } => {
                serde_json::to_vec(&anthropic_inbound::response_from_canonical(out, model))
            }
        };
        v.map_err(|_| GatewayError::internal())
    }

    /// A writer for one stream.
    pub fn stream_writer(
        &self,
        request_id: &str,
        model: &str,
        prompt_estimate: u64,
    ) -> Box<dyn StreamWriter> {
        match self {
            Wire::OpenAi { include_usage } => Box::new(OpenAiWriter {
                include_usage: *include_usage,
                last: None,
                fallback: (request_id.to_owned(), model.to_owned()),
                usage_chunk: None,
            }),
            Wire::Anthropic { model } => Box::new(AnthropicWriter {
                enc: AnthropicStreamEncoder::new(request_id, model.clone(), prompt_estimate),
            }),
        }
    }
}

fn data_line(json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(json.len() + 8);
    line.extend_from_slice(b"data: ");
    line.extend_from_slice(json);
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

/// OpenAI's SSE: `data: {chunk}` lines, the usage chunk when asked for, `data: [DONE]`;
/// a failure is a final `data: {"error": ...}` (the SDKs raise it) with no `[DONE]`.
struct OpenAiWriter {
    include_usage: bool,
    /// id, created, model of the last chunk: they label the usage chunk.
    last: Option<(String, i64, String)>,
    fallback: (String, String),
    /// The vendor's own usage chunk (verbatim relay): written at the end, with the cost.
    usage_chunk: Option<(String, tollgate_providers::Verbatim)>,
}

impl StreamWriter for OpenAiWriter {
    fn event(&mut self, ev: &StreamEvent) -> Vec<Bytes> {
        let c = match ev {
            StreamEvent::Chunk(c) => c,
            StreamEvent::Verbatim(v) => {
                return match &v.usage {
                    // Held until the cost is known, and dropped unless the client asked.
                    Some(u) => {
                        self.usage_chunk = Some((v.json.clone(), u.clone()));
                        Vec::new()
                    }
                    None => vec![data_line(v.json.as_bytes())],
                };
            }
            StreamEvent::Usage(_) | StreamEvent::Done => return Vec::new(),
        };
        self.last = Some((c.id.clone(), c.created, c.model.clone()));
        let mut c = c.clone();
        c.usage = None;
        serde_json::to_vec(&c)
            .map(|j| vec![data_line(&j)])
            .unwrap_or_default()
    }

    fn finish(&mut self, priced: &Priced) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let (true, Some((json, v))) = (self.include_usage, self.usage_chunk.take()) {
            let json = match &priced.cost {
                Some(cost) => v.with_cost(json.as_bytes(), &cost.to_string()),
                None => json.into_bytes(),
            };
            out.push(data_line(&json));
        } else if self.include_usage {
            let (id, created, model) = self.last.clone().unwrap_or_else(|| {
                (
                    self.fallback.0.clone(),
                    chrono::Utc::now().timestamp(),
                    self.fallback.1.clone(),
                )
            });
            let mut usage = priced.usage.clone();
            usage.cost = priced.cost.as_ref().map(ToString::to_string);
            let chunk = ChatChunk {
                id,
                object: "chat.completion.chunk".to_owned(),
                created,
                model,
                choices: Vec::new(),
                system_fingerprint: None,
                usage: Some(usage),
            };
            if let Ok(j) = serde_json::to_vec(&chunk) {
                out.push(data_line(&j));
            }
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn error(&mut self, e: &GatewayError) -> Vec<Bytes> {
        vec![data_line(e.to_openai_json().to_string().as_bytes())]
    }
}

/// Anthropic's named events, from `message_start` to `message_stop`; a failure is an
/// `event: error`.
struct AnthropicWriter {
    enc: AnthropicStreamEncoder,
}

fn frames(events: Vec<(String, serde_json::Value)>) -> Vec<Bytes> {
    events
        .into_iter()
        .map(|(name, data)| Bytes::from(anthropic_inbound::sse_frame(&name, &data)))
        .collect()
}

impl StreamWriter for AnthropicWriter {
    fn event(&mut self, ev: &StreamEvent) -> Vec<Bytes> {
        frames(self.enc.push(ev))
    }

    fn finish(&mut self, priced: &Priced) -> Vec<Bytes> {
        frames(self.enc.finish(Some(&priced.usage)))
    }

    fn error(&mut self, e: &GatewayError) -> Vec<Bytes> {
        vec![Bytes::from(anthropic_inbound::sse_frame(
            "error",
            &anthropic_inbound::error_body_for(e),
        ))]
    }
}
