//! Where an answer's JSON is read from: a body in memory (`[u8]`), or a [`Spooled`] one, read
//! in pieces so that memory holds only the fields asked for, never the body. Both give the same
//! verdicts: a spooled body is parsed by the same `serde_json` rules, through a reader that only
//! shortens the runs of whitespace between tokens (`Squeezed`).

use std::io::{self, BufReader, Read};

use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::util::spool::{SPOOL_PIECE, Spooled};

/// A body whose JSON the runner reads.
pub trait BodySource {
    /// The body as a `T`: `Ok(None)` when it is not one (not JSON, or another shape).
    ///
    /// # Errors
    /// The body could not be read (a spool file's I/O error): no verdict.
    fn parse<T: DeserializeOwned>(&self) -> io::Result<Option<T>>;

    /// The body as text (invalid UTF-8 replaced), trimmed as `str::trim` trims: its first
    /// `max_chars` characters, and whether more follow.
    ///
    /// # Errors
    /// As [`BodySource::parse`].
    fn trimmed_head(&self, max_chars: usize) -> io::Result<(String, bool)>;
}

impl BodySource for [u8] {
    fn parse<T: DeserializeOwned>(&self) -> io::Result<Option<T>> {
        Ok(serde_json::from_slice(self).ok())
    }

    fn trimmed_head(&self, max_chars: usize) -> io::Result<(String, bool)> {
        let text = String::from_utf8_lossy(self);
        let text = text.trim();
        Ok(match text.char_indices().nth(max_chars) {
            Some((cut, _)) => (text[..cut].to_owned(), true),
            None => (text.to_owned(), false),
        })
    }
}

impl BodySource for Spooled {
    fn parse<T: DeserializeOwned>(&self) -> io::Result<Option<T>> {
        let reader = BufReader::with_capacity(SPOOL_PIECE, Squeezed::new(self.reader()));
        match serde_json::from_reader(reader) {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_io() => Err(e.into()),
            Err(_) => Ok(None),
        }
    }

    fn trimmed_head(&self, max_chars: usize) -> io::Result<(String, bool)> {
        Spooled::trimmed_head(self, max_chars)
    }
}

/// A JSON value read as strictly as `serde_json::Value` reads it (every string decoded, every
/// number in range), then dropped: only whether it was an object is kept. A large `error` is
/// checked without building its tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsObject(pub bool);

impl<'de> serde::Deserialize<'de> for IsObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IsObject, D::Error> {
        deserializer.deserialize_any(Checker).map(IsObject)
    }
}

/// [`IsObject`]'s visitor: accepts what `Value` accepts.
struct Checker;

impl<'de> Visitor<'de> for Checker {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_none<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(Checker)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IsObject>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        // Keys are decoded as `Value` decodes them (as strings).
        while map.next_entry::<String, IsObject>()?.is_some() {}
        Ok(true)
    }
}

/// A reader that turns each run of JSON whitespace between tokens (never inside a string) into
/// one space. The tokens, and so every verdict and value `serde_json` reads, are the same; but a
/// body padded with hundreds of megabytes of whitespace is parsed in the time its tokens take.
pub(crate) struct Squeezed<R> {
    inner: R,
    raw: Vec<u8>,
    out: Vec<u8>,
    at: usize,
    in_string: bool,
    escaped: bool,
    in_space: bool,
}

impl<R: Read> Squeezed<R> {
    pub(crate) fn new(inner: R) -> Squeezed<R> {
        Squeezed {
            inner,
            raw: vec![0; SPOOL_PIECE],
            out: Vec::with_capacity(SPOOL_PIECE),
            at: 0,
            in_string: false,
            escaped: false,
            in_space: false,
        }
    }

    /// Reads raw bytes until some output is ready, or the end.
    fn fill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.at = 0;
        while self.out.is_empty() {
            let n = self.inner.read(&mut self.raw)?;
            if n == 0 {
                return Ok(());
            }
            let raw = &self.raw[..n];
            let mut i = 0;
            while i < n {
                let byte = raw[i];
                if self.in_string && self.escaped {
                    self.escaped = false;
                    self.out.push(byte);
                    i += 1;
                } else if self.in_string {
                    let end = i + plain_run(&raw[i..]);
                    self.out.extend_from_slice(&raw[i..end]);
                    if let Some(&special) = raw.get(end) {
                        self.escaped = special == b'\\';
                        self.in_string = self.escaped;
                        self.out.push(special);
                    }
                    i = end + 1;
                } else if is_space(byte) {
                    if !self.in_space {
                        self.in_space = true;
                        self.out.push(b' ');
                    }
                    i += space_run(&raw[i..]);
                } else {
                    self.in_space = false;
                    self.in_string = byte == b'"';
                    self.out.push(byte);
                    i += 1;
                }
            }
        }
        Ok(())
    }
}

/// JSON's whitespace.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// `byte` in each of 8 lanes.
const fn lanes(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// Whether any of the 8 bytes of `word` is `byte` (the classic zero-byte test, exact as a
/// yes or no).
fn has_byte(word: u64, byte: u8) -> bool {
    let x = word ^ lanes(byte);
    x.wrapping_sub(lanes(1)) & !x & lanes(0x80) != 0
}

/// The length of the run of whitespace `bytes` start with; 8 bytes at a time through runs of
/// spaces or newlines (what padding is made of).
fn space_run(bytes: &[u8]) -> usize {
    let (words, _) = bytes.as_chunks::<8>();
    let mut n = 0;
    for word in words {
        let word = u64::from_ne_bytes(*word);
        if word != lanes(b' ') && word != lanes(b'\n') {
            break;
        }
        n += 8;
    }
    while n < bytes.len() && is_space(bytes[n]) {
        n += 1;
    }
    n
}

/// The length of the run of string content before the next `"` or `\\`, 8 bytes at a time.
fn plain_run(bytes: &[u8]) -> usize {
    let (words, _) = bytes.as_chunks::<8>();
    let mut n = 0;
    for word in words {
        let word = u64::from_ne_bytes(*word);
        if has_byte(word, b'"') || has_byte(word, b'\\') {
            break;
        }
        n += 8;
    }
    while n < bytes.len() && !matches!(bytes[n], b'"' | b'\\') {
        n += 1;
    }
    n
}

impl<R: Read> Read for Squeezed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.out.len() {
            self.fill()?;
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squeezed(text: &str) -> String {
        let mut out = String::new();
        Squeezed::new(text.as_bytes())
            .read_to_string(&mut out)
            .expect("read");
        out
    }

    #[test]
    fn whitespace_between_tokens_shrinks_and_strings_keep_theirs() {
        assert_eq!(
            squeezed("{ \n\t\"a b\\\"  c\" :\r\n [1,   2] }   "),
            "{ \"a b\\\"  c\" : [1, 2] } "
        );
        assert_eq!(squeezed(r#""\\"   1"#), r#""\\" 1"#);
        assert_eq!(squeezed(""), "");
    }

    proptest::proptest! {
        /// Against a byte-at-a-time reference, on text made of what matters: quotes, escapes,
        /// whitespace, long runs of both.
        #[test]
        fn squeezing_keeps_strings_and_shrinks_only_whitespace_between_tokens(
            parts in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just("\"".to_owned()),
                proptest::strategy::Just("\\".to_owned()),
                proptest::strategy::Just(" ".repeat(20)),
                proptest::strategy::Just("\n".repeat(9)),
                proptest::strategy::Just("a".repeat(17)),
                "[ \t\r\na:1{}]{0,5}",
            ], 0..12),
        ) {
            let text = parts.concat();
            let mut expected = Vec::new();
            let (mut in_string, mut escaped, mut in_space) = (false, false, false);
            for &byte in text.as_bytes() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if byte == b'\\' {
                        escaped = true;
                    } else if byte == b'"' {
                        in_string = false;
                    }
                    expected.push(byte);
                } else if is_space(byte) {
                    if !in_space {
                        expected.push(b' ');
                    }
                    in_space = true;
                } else {
                    in_space = false;
                    in_string = byte == b'"';
                    expected.push(byte);
                }
            }
            proptest::prop_assert_eq!(squeezed(&text).into_bytes(), expected);
        }
    }

    #[rstest::rstest]
    #[case(r#"{"error":{"a":[1,{"b":null}]}}"#, Some(true))]
    #[case(r#"{"error":"x"}"#, Some(false))]
    #[case(r#"{"error":[{}]}"#, Some(false))]
    #[case(r#"{"error":null}"#, None)]
    #[case(r#"{"error":{"a":"\ud800"}}"#, None)]
    #[case(r#"{"error":1e400}"#, None)]
    fn is_object_accepts_what_value_accepts(#[case] body: &str, #[case] object: Option<bool>) {
        #[derive(serde::Deserialize)]
        struct Probe<E> {
            error: Option<E>,
        }
        let checked = serde_json::from_str::<Probe<IsObject>>(body)
            .ok()
            .and_then(|p| p.error.map(|e| e.0));
        let value = serde_json::from_str::<Probe<serde_json::Value>>(body)
            .ok()
            .and_then(|p| p.error.map(|e| e.is_object()));
        assert_eq!(checked, value, "{body}");
        assert_eq!(checked, object, "{body}");
    }
}
