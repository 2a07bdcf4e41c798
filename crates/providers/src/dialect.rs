//! Helpers for vendors whose wire protocol is OpenAI's with their own error codes and
//! finish reasons (Zhipu, Doubao): an OpenAI stream decoder whose finish reasons and
//! in-stream errors are re-read through the vendor's tables.

use tollgate_core::{UpstreamError, UpstreamErrorKind};

use crate::codec::{DecodeCtx, StreamDecoder, StreamEvent};
use crate::openai::OpenAiStream;

/// What a vendor's finish reason means canonically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// A canonical finish reason (`stop`, `length`, `tool_calls`, `content_filter`).
    Reason(String),
    /// The vendor ended the answer with a failure (Zhipu's `network_error`).
    Error(UpstreamError),
}

/// Maps a vendor's finish reason.
pub type FinishMap = fn(&str) -> Finish;

/// Re-classifies an error by the vendor's own code.
pub type Classify = fn(UpstreamError) -> UpstreamError;

/// An [`OpenAiStream`] whose finish reasons and errors follow a vendor's tables.
pub struct DialectStream {
    inner: OpenAiStream,
    finish: FinishMap,
    classify: Classify,
    failed: bool,
}

impl DialectStream {
    pub fn new(ctx: DecodeCtx, finish: FinishMap, classify: Classify) -> Self {
        DialectStream {
            inner: OpenAiStream::new(ctx),
            finish,
            classify,
            failed: false,
        }
    }

    fn map(&mut self, start: usize, out: &mut [StreamEvent]) -> Result<(), UpstreamError> {
        for ev in out.iter_mut().skip(start) {
            if let StreamEvent::Chunk(c) = ev {
                for ch in &mut c.choices {
                    if let Some(r) = ch.finish_reason.as_deref() {
                        match (self.finish)(r) {
                            Finish::Reason(r) => ch.finish_reason = Some(r),
                            Finish::Error(e) => {
                                self.failed = true;
                                return Err(e);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl StreamDecoder for DialectStream {
    fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        if self.failed {
            return Ok(());
        }
        let start = out.len();
        self.inner.feed(data, out).map_err(self.classify)?;
        self.map(start, out)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), UpstreamError> {
        if self.failed {
            return Ok(());
        }
        let start = out.len();
        self.inner.finish(out).map_err(self.classify)?;
        self.map(start, out)
    }
}

/// The kind for a vendor code from a table, else the error's kind unchanged.
pub fn reclassify(
    mut e: UpstreamError,
    table: fn(&str) -> Option<UpstreamErrorKind>,
) -> UpstreamError {
    if let Some(kind) = e.vendor_code.as_deref().and_then(table) {
        e.kind = kind;
    }
    e
}
