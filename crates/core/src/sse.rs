//! An incremental Server-Sent-Events parser.
//!
//! Tolerant of what vendors actually send: `data:` with or without a space, CRLF or LF
//! line endings, comment lines (`: keep-alive`, DashScope's `:HTTP_STATUS/200`), named
//! events (`event: message_start`), and events split across reads at any byte.

/// One complete event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// Feed bytes as they arrive; take out complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and pushes every event they complete onto `out`.
    ///
    /// Lines are read where they lie: only an unfinished last line is copied (into the
    /// buffer, to wait for its end), and a line becomes text without a copy when it is
    /// valid UTF-8 (replacement characters otherwise).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        if self.buf.is_empty() {
            let used = self.lines(bytes, out);
            self.buf.extend_from_slice(&bytes[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.buf);
            buf.extend_from_slice(bytes);
            let used = self.lines(&buf, out);
            buf.drain(..used);
            self.buf = buf;
        }
    }

    /// Handles every complete line of `bytes`; returns how many bytes that was.
    fn lines(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> usize {
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &bytes[start..]) {
            let end = start + nl;
            let mut line = &bytes[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            match std::str::from_utf8(line) {
                Ok(text) => self.line(text, out),
                Err(_) => self.line(&String::from_utf8_lossy(line), out),
            }
            start = end + 1;
        }
        start
    }

    /// Ends the input: an event not closed by a blank line is still delivered.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8_lossy(&rest);
            let line = line.trim_end_matches('\r').to_owned();
            self.line(&line, out);
        }
        self.dispatch(out);
    }

    /// Whether bytes of an unfinished event are buffered.
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty() || self.has_data
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_owned()),
            "id" => self.current.id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data || self.current.event.is_some() {
            out.push(std::mem::take(&mut self.current));
        }
        self.current = SseEvent::default();
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in input.chunks(piece) {
            p.feed(c, &mut out);
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn tolerates_vendor_quirks_at_any_split() {
        let input = b"id:1\r\nevent:result\r\n:HTTP_STATUS/200\r\ndata:{\"a\":1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n";
        for piece in 1..input.len() {
            let ev = parse_in_pieces(input, piece);
            assert_eq!(ev.len(), 2, "piece {piece}");
            assert_eq!(ev[0].event.as_deref(), Some("result"));
            assert_eq!(ev[0].id.as_deref(), Some("1"));
            assert_eq!(ev[0].data, "{\"a\":1}");
            assert_eq!(ev[1].data, "[DONE]");
        }
    }

    #[test]
    fn multi_line_data_and_invalid_utf8_at_any_split() {
        let input = "data: {\"a\":\r\ndata: \"caf\u{e9} \u{1F600}\"}\n\ndata:x\n\nevent: ping\n\n";
        let mut bytes = input.as_bytes().to_vec();
        // An invalid byte in place of the 'x': replaced, not dropped or panicked on.
        let x = bytes.iter().position(|b| *b == b'x').unwrap();
        bytes[x] = 0xff;
        for piece in 1..bytes.len() {
            let ev = parse_in_pieces(&bytes, piece);
            assert_eq!(ev.len(), 3, "piece {piece}");
            assert_eq!(ev[0].data, "{\"a\":\n\"caf\u{e9} \u{1F600}\"}");
            assert_eq!(ev[1].data, "\u{FFFD}");
            assert_eq!(
                (ev[2].event.as_deref(), ev[2].data.as_str()),
                (Some("ping"), "")
            );
        }
    }

    #[test]
    fn unterminated_last_event_is_delivered() {
        let ev = parse_in_pieces(b"data: {\"x\":2}", 3);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "{\"x\":2}");
    }
}
