//! Stream bodies that are SSE when all is well and one plain JSON object when the vendor
//! refuses the request: ERNIE and Hunyuan answer errors with HTTP 200 and a JSON body
//! even to stream requests. [`SseOrJson`] decides from the Content-Type, or else from
//! the first non-blank byte, and hands back either SSE events or the whole JSON body.

use tollgate_core::sse::{SseEvent, SseParser};

/// What a piece of the body completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// SSE events (possibly none yet).
    Events,
    /// The body was a JSON object, now complete: the vendor's error answer.
    Json(Vec<u8>),
}

/// An SSE parser that recognises a plain JSON body.
#[derive(Debug)]
pub struct SseOrJson {
    sse: SseParser,
    /// `Some` once the body turned out to be JSON.
    json: Option<Vec<u8>>,
    decided: bool,
}

impl SseOrJson {
    /// `json_content_type`: the response said it is JSON, so it is not SSE.
    pub fn new(json_content_type: bool) -> Self {
        SseOrJson {
            sse: SseParser::new(),
            json: json_content_type.then(Vec::new),
            decided: json_content_type,
        }
    }

    /// Feeds bytes; SSE events go to `events`.
    pub fn feed(&mut self, data: &[u8], events: &mut Vec<SseEvent>) -> Framed {
        if !self.decided {
            match data.iter().find(|b| !b.is_ascii_whitespace()) {
                None => return Framed::Events,
                Some(b'{') => self.json = Some(Vec::new()),
                Some(_) => {}
            }
            self.decided = true;
        }
        if let Some(buf) = self.json.as_mut() {
            buf.extend_from_slice(data);
            if serde_json::from_slice::<serde::de::IgnoredAny>(buf).is_ok() {
                return Framed::Json(std::mem::take(buf));
            }
            return Framed::Events;
        }
        self.sse.feed(data, events);
        Framed::Events
    }

    /// The body ended; a JSON body that never completed is returned as it is.
    pub fn finish(&mut self, events: &mut Vec<SseEvent>) -> Framed {
        if let Some(buf) = self.json.take() {
            if buf.iter().any(|b| !b.is_ascii_whitespace()) {
                return Framed::Json(buf);
            }
            return Framed::Events;
        }
        self.sse.finish(events);
        Framed::Events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_sse_from_json_at_any_split() {
        let json = br#"  {"error_code":110,"error_msg":"Access token invalid"}"#;
        for piece in 1..json.len() {
            let mut f = SseOrJson::new(false);
            let mut ev = Vec::new();
            let mut got = None;
            for c in json.chunks(piece) {
                if let Framed::Json(b) = f.feed(c, &mut ev) {
                    got = Some(b);
                }
            }
            // Leading blanks may be dropped before the body is recognised as JSON.
            assert_eq!(
                got.as_deref().map(<[u8]>::trim_ascii_start),
                Some(json.trim_ascii_start()),
                "piece {piece}"
            );
            assert!(ev.is_empty());
        }
        let mut f = SseOrJson::new(false);
        let mut ev = Vec::new();
        assert_eq!(f.feed(b"data: {\"a\":1}\n\n", &mut ev), Framed::Events);
        assert_eq!(ev.len(), 1);
        let mut f = SseOrJson::new(true);
        assert_eq!(f.feed(b"{\"x\":", &mut ev), Framed::Events);
        assert_eq!(f.finish(&mut ev), Framed::Json(b"{\"x\":".to_vec()));
    }
}
