//! The server-sent events framing: bytes in, `(event, data)` pairs out.

use super::StreamError;

/// The server-sent events framing (the WHATWG "event stream" grammar): bytes in, `(event, data)`
/// pairs out. Holds only the unfinished line and the unfinished event.
#[derive(Debug)]
pub(super) struct Framer {
    limit: usize,
    /// Bytes of the line not ended yet.
    line: Vec<u8>,
    /// The last chunk ended in CR: an LF at the start of the next belongs to the same line end.
    skip_lf: bool,
    /// No line has ended yet (a byte order mark may open the stream).
    first_line: bool,
    /// The `event:` name of the pending event.
    event: String,
    /// The pending event's `data:` lines, each followed by `\n`.
    data: String,
}

impl Framer {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            line: Vec::new(),
            skip_lf: false,
            first_line: true,
            event: String::new(),
            data: String::new(),
        }
    }

    pub(super) fn feed(
        &mut self,
        mut chunk: &[u8],
        sink: &mut impl FnMut(&str, &str) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (piece, rest) = chunk.split_at(end);
            self.take(piece)?;
            chunk = match rest {
                [b'\r', b'\n', rest @ ..] => rest,
                [b'\r'] => {
                    self.skip_lf = true;
                    &[]
                }
                [_, rest @ ..] => rest,
                [] => &[],
            };
            self.end_line(sink)?;
        }
        self.take(chunk)
    }

    /// Ends the body: the last line counts even without its line end, the last event even
    /// without its blank line.
    pub(super) fn flush(
        &mut self,
        sink: &mut impl FnMut(&str, &str) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        if !self.line.is_empty() {
            self.end_line(sink)?;
        }
        self.dispatch(sink)
    }

    fn take(&mut self, piece: &[u8]) -> Result<(), StreamError> {
        if self.line.len() + self.data.len() + piece.len() > self.limit {
            return Err(StreamError::TooLong { limit: self.limit });
        }
        self.line.extend_from_slice(piece);
        Ok(())
    }

    fn end_line(
        &mut self,
        sink: &mut impl FnMut(&str, &str) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        let mut line: &[u8] = &self.line;
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.line.clear();
            return self.dispatch(sink);
        }
        if !line.starts_with(b":") {
            // The stream is UTF-8 and its line ends are ASCII, so no character straddles two
            // lines; the standard replaces invalid bytes rather than rejecting the stream.
            let text = String::from_utf8_lossy(line);
            let (field, value) = match text.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (&*text, ""),
            };
            match field {
                "data" => {
                    self.data.push_str(value);
                    self.data.push('\n');
                }
                "event" => value.clone_into(&mut self.event),
                // Not a standard field: llama.cpp's server reports an error inside a stream as
                // an `error: {...}` line, which a strict parser would drop, losing the reason.
                "error" => {
                    "error".clone_into(&mut self.event);
                    self.data.push_str(value);
                    self.data.push('\n');
                }
                // `id` and `retry` matter to a browser reconnecting, not to an answer.
                _ => {}
            }
        }
        // Cleared, not replaced: the buffer's allocation serves the next line.
        self.line.clear();
        Ok(())
    }

    fn dispatch(
        &mut self,
        sink: &mut impl FnMut(&str, &str) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        let result = if self.data.is_empty() {
            Ok(())
        } else {
            let data = self.data.strip_suffix('\n').unwrap_or(&self.data);
            let event = if self.event.is_empty() {
                "message"
            } else {
                &self.event
            };
            sink(event, data)
        };
        self.event.clear();
        self.data.clear();
        result
    }
}
