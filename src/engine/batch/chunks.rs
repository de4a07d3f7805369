//! Pending requests cut into hosted Batch API input files: one group per endpoint (`url`) and
//! model (OpenAI takes one of each per file), each chunk within [`ChunkLimits`], as the exact
//! JSONL bytes to upload with their blake3 hash. Pure: no I/O.
//!
//! [`Chunker`] takes lines one at a time and hands back a chunk as soon as one is full, so a
//! caller streaming requests out of the journal holds at most one open chunk per group.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Lines the hosted Batch API takes per input file.
pub const MAX_LINES: usize = 50_000;
/// Bytes the hosted Batch API takes per input file (200 MB).
pub const MAX_BYTES: usize = 200 * 1024 * 1024;

/// How big a chunk may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Lines per chunk, at most [`MAX_LINES`] for OpenAI.
    pub max_lines: usize,
    /// Bytes per chunk (newlines included), at most [`MAX_BYTES`] for OpenAI.
    pub max_bytes: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_lines: MAX_LINES,
            max_bytes: MAX_BYTES,
        }
    }
}

/// One pending request, as a Batch input line will carry it.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchLine {
    /// The request key; becomes `custom_id`, which results are matched by.
    pub custom_id: String,
    /// `POST` for every endpoint the Batch API serves.
    pub method: String,
    /// e.g. `/v1/chat/completions`; the batch's endpoint.
    pub url: String,
    /// The request body; its `model` picks the group.
    pub body: Value,
}

/// A finished chunk: one input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The endpoint every line carries.
    pub endpoint: String,
    /// The model every line's body names.
    pub model: String,
    /// The `custom_id`s, in file order.
    pub custom_ids: Vec<String>,
    /// The file: one JSON object per line, each ending in `\n`.
    pub bytes: Vec<u8>,
    /// blake3 of [`Chunk::bytes`]: the same requests always make the same file and hash.
    pub hash: blake3::Hash,
}

/// Why a line cannot go into a Batch input file.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// One line alone is over `max_bytes`.
    #[error(
        "request {custom_id} is {bytes} bytes as a batch line, over the {max_bytes}-byte file \
         limit; send it without --via batch or shrink it"
    )]
    LineTooLarge {
        /// The request.
        custom_id: String,
        /// Its line's size, newline included.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The body names no model, so it fits no one-model file.
    #[error("request {custom_id} has no \"model\" in its body; the Batch API needs one per file")]
    NoModel {
        /// The request.
        custom_id: String,
    },
    /// Limits that can hold nothing.
    #[error("batch chunk limits must allow at least one line and one byte")]
    EmptyLimits,
}

/// An input line in the key order of `OPENAI-FACTS.md`.
#[derive(Serialize)]
struct InputLine<'a> {
    custom_id: &'a str,
    method: &'a str,
    url: &'a str,
    body: &'a Value,
}

/// One line of an input file, as the bytes [`Chunker`] puts in it (`\n` included).
pub fn encode_line(line: &BatchLine) -> Vec<u8> {
    let mut encoded = serde_json::to_vec(&InputLine {
        custom_id: &line.custom_id,
        method: &line.method,
        url: &line.url,
        body: &line.body,
    })
    // Serializing a `Value` and strings cannot fail: the map keys are all strings.
    .unwrap_or_default();
    encoded.push(b'\n');
    encoded
}

/// The chunk being filled for one (endpoint, model).
#[derive(Debug, Default)]
struct Open {
    custom_ids: Vec<String>,
    bytes: Vec<u8>,
}

/// Groups lines by endpoint and model and cuts each group at the limits.
#[derive(Debug)]
pub struct Chunker {
    limits: ChunkLimits,
    open: BTreeMap<(String, String), Open>,
}

impl Chunker {
    /// A chunker with these limits.
    ///
    /// # Errors
    /// [`ChunkError::EmptyLimits`] when either limit is zero.
    pub fn new(limits: ChunkLimits) -> Result<Chunker, ChunkError> {
        if limits.max_lines == 0 || limits.max_bytes == 0 {
            return Err(ChunkError::EmptyLimits);
        }
        Ok(Chunker {
            limits,
            open: BTreeMap::new(),
        })
    }

    /// Adds a line; returns its group's chunk when the line did not fit beside it (the line
    /// then starts the group's next chunk) or filled it to `max_lines`.
    ///
    /// # Errors
    /// [`ChunkError`] for a line that fits no file; the chunker is unchanged and can go on.
    pub fn push(&mut self, line: &BatchLine) -> Result<Option<Chunk>, ChunkError> {
        let model = line
            .body
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| ChunkError::NoModel {
                custom_id: line.custom_id.clone(),
            })?
            .to_owned();
        let encoded = encode_line(line);
        if encoded.len() > self.limits.max_bytes {
            return Err(ChunkError::LineTooLarge {
                custom_id: line.custom_id.clone(),
                bytes: encoded.len(),
                max_bytes: self.limits.max_bytes,
            });
        }
        let group = (line.url.clone(), model);
        let open = self.open.entry(group.clone()).or_default();
        let mut full = None;
        if open.bytes.len() + encoded.len() > self.limits.max_bytes {
            full = Some(seal(&group, std::mem::take(open)));
        }
        open.bytes.extend_from_slice(&encoded);
        open.custom_ids.push(line.custom_id.clone());
        if full.is_none() && open.custom_ids.len() >= self.limits.max_lines {
            full = Some(seal(&group, std::mem::take(open)));
        }
        Ok(full)
    }

    /// The chunks still open, ordered by endpoint then model.
    pub fn finish(self) -> Vec<Chunk> {
        self.open
            .into_iter()
            .filter(|(_, open)| !open.custom_ids.is_empty())
            .map(|(group, open)| seal(&group, open))
            .collect()
    }
}

fn seal((endpoint, model): &(String, String), open: Open) -> Chunk {
    Chunk {
        endpoint: endpoint.clone(),
        model: model.clone(),
        custom_ids: open.custom_ids,
        hash: blake3::hash(&open.bytes),
        bytes: open.bytes,
    }
}

/// Every chunk of `lines`: the full ones in the order they filled, then the rest by endpoint and
/// model.
///
/// # Errors
/// The first [`ChunkError`].
pub fn chunk_all<'a>(
    lines: impl IntoIterator<Item = &'a BatchLine>,
    limits: ChunkLimits,
) -> Result<Vec<Chunk>, ChunkError> {
    let mut chunker = Chunker::new(limits)?;
    let mut chunks = Vec::new();
    for line in lines {
        chunks.extend(chunker.push(line)?);
    }
    chunks.extend(chunker.finish());
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn line(id: &str, url: &str, model: &str) -> BatchLine {
        BatchLine {
            custom_id: id.to_owned(),
            method: "POST".to_owned(),
            url: url.to_owned(),
            body: json!({"model": model, "messages": [{"role": "user", "content": id}]}),
        }
    }

    const CHAT: &str = "/v1/chat/completions";
    const EMB: &str = "/v1/embeddings";

    /// (endpoint, model, ids) of each chunk.
    fn shape(chunks: &[Chunk]) -> Vec<(String, String, Vec<String>)> {
        chunks
            .iter()
            .map(|c| (c.endpoint.clone(), c.model.clone(), c.custom_ids.clone()))
            .collect()
    }

    fn one_line_bytes() -> usize {
        chunk_all([&line("a", CHAT, "m")], ChunkLimits::default()).unwrap()[0]
            .bytes
            .len()
    }

    #[rstest]
    #[case::grouped_by_endpoint_and_model(
        vec![line("a", CHAT, "m1"), line("b", EMB, "e"), line("c", CHAT, "m2"), line("d", CHAT, "m1")],
        ChunkLimits::default(),
        vec![(CHAT, "m1", vec!["a", "d"]), (CHAT, "m2", vec!["c"]), (EMB, "e", vec!["b"])],
    )]
    #[case::split_at_max_lines(
        vec![line("a", CHAT, "m"), line("b", CHAT, "m"), line("c", CHAT, "m")],
        ChunkLimits { max_lines: 2, max_bytes: MAX_BYTES },
        vec![(CHAT, "m", vec!["a", "b"]), (CHAT, "m", vec!["c"])],
    )]
    #[case::split_at_max_bytes(
        vec![line("a", CHAT, "m"), line("b", CHAT, "m"), line("c", CHAT, "m")],
        // Two lines of this size fit, three do not.
        ChunkLimits { max_lines: MAX_LINES, max_bytes: 2 * one_line_bytes() + 1 },
        vec![(CHAT, "m", vec!["a", "b"]), (CHAT, "m", vec!["c"])],
    )]
    fn chunks(
        #[case] lines: Vec<BatchLine>,
        #[case] limits: ChunkLimits,
        #[case] expected: Vec<(&str, &str, Vec<&str>)>,
    ) {
        let chunks = chunk_all(&lines, limits).unwrap();
        let expected: Vec<(String, String, Vec<String>)> = expected
            .into_iter()
            .map(|(e, m, ids)| {
                (
                    e.into(),
                    m.into(),
                    ids.into_iter().map(String::from).collect(),
                )
            })
            .collect();
        assert_eq!(shape(&chunks), expected);
        for chunk in &chunks {
            assert!(chunk.bytes.len() <= limits.max_bytes);
            assert!(chunk.custom_ids.len() <= limits.max_lines);
            assert_eq!(chunk.hash, blake3::hash(&chunk.bytes));
        }
    }

    #[test]
    fn a_line_over_max_bytes_is_an_error_naming_it() {
        let limits = ChunkLimits {
            max_lines: 10,
            max_bytes: 20,
        };
        let error = chunk_all([&line("too-big", CHAT, "m")], limits).unwrap_err();
        assert!(
            matches!(&error, ChunkError::LineTooLarge { custom_id, .. } if custom_id == "too-big")
        );
        assert!(error.to_string().contains("too-big"), "{error}");
    }

    #[test]
    fn a_body_without_a_model_is_an_error_naming_it() {
        let mut bad = line("nameless", CHAT, "m");
        bad.body = json!({"messages": []});
        let error = chunk_all([&bad], ChunkLimits::default()).unwrap_err();
        assert!(error.to_string().contains("nameless"), "{error}");
    }

    #[test]
    fn bytes_are_exact_batch_lines_and_deterministic() {
        let lines = [line("a", CHAT, "m"), line("b", CHAT, "m")];
        let first = chunk_all(&lines, ChunkLimits::default()).unwrap();
        let again = chunk_all(&lines, ChunkLimits::default()).unwrap();
        assert_eq!(first, again);
        let text = String::from_utf8(first[0].bytes.clone()).unwrap();
        let mut rows = text.split_terminator('\n');
        assert_eq!(
            rows.next().unwrap(),
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"content":"a","role":"user"}],"model":"m"}}"#
        );
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn zero_limits_are_refused() {
        let limits = ChunkLimits {
            max_lines: 0,
            max_bytes: 1,
        };
        assert!(matches!(Chunker::new(limits), Err(ChunkError::EmptyLimits)));
    }
}
