//! The line that opens the `submit` of a new file: how many requests, their tokens, and what
//! they will cost both ways, before the first is sent.
//!
//! The check has counted the file's requests; the first [`SAMPLE`] of them are read again and
//! counted (`input::tally`), and a longer file is scaled from them, which the line says. Their
//! prompts are counted by size, a token per 4 bytes: the tokenizer would cost every submit
//! about 40 MB of memory for one line. `runner estimate FILE` counts the whole file with the
//! tokenizer, and the line names it.

use crate::domain::price::Usd;
use crate::input::InputReader;
use crate::input::tally::{EXPECTED_OUTPUT_SHARE, Share, Tally};

use super::config::{JobSettings, Via};

/// Requests read with the tokenizer at most.
pub const SAMPLE: u64 = 1_000;

/// The opening line of a submit of `file` into `job`, whose check found `requests` requests
/// (without the job's name, which the caller puts before it); `None` when the file has none,
/// or its first requests cannot be read again.
pub fn opening(
    file: &str,
    reader: InputReader,
    requests: u64,
    settings: &JobSettings,
) -> Option<String> {
    let share = Share::Fraction(EXPECTED_OUTPUT_SHARE);
    let mut tally = Tally::new(u64::from(settings.default_output_tokens), share, false);
    for read in reader {
        // The check found the file good; a line --skip-invalid records is not a request.
        if let Ok(prompt) = read {
            tally.add(&prompt);
        }
        if tally.requests >= SAMPLE {
            break;
        }
    }
    let counted = tally.requests;
    if counted == 0 {
        return None;
    }
    let scale = requests as f64 / counted as f64;
    let priced = tally.price(&settings.price_table());
    let input: u64 = priced.groups.iter().map(|g| g.input_tokens).sum();
    let input = (input as f64 * scale).round() as u64;
    let (direct, batch) = (
        priced.usd_direct.times(scale),
        priced.usd_batch.times(scale),
    );
    let n = |v: u64| indicatif::HumanCount(v).to_string();
    let mut line = format!(
        "{} requests, ≈ {} input tokens by size",
        n(requests),
        n(input)
    );
    let priced_any = priced.groups.iter().any(|g| g.usd_direct.is_some());
    if priced_any {
        let (first, second) = match settings.batch.via {
            Via::Batch | Via::Auto => (("via batch", batch), ("sent directly", direct)),
            Via::Sync => (("sent directly", direct), ("via batch", batch)),
        };
        line += &format!(
            "; cost ≈ {} (at most {}) {}, ≈ {} {}",
            Usd(first.1.expected),
            Usd(first.1.at_most),
            first.0,
            Usd(second.1.expected),
            second.0
        );
    }
    if !priced.unpriced.is_empty() {
        line += &format!("; no price for {}", priced.unpriced.join(", "));
    }
    if let Some(cap) = settings.max_cost {
        line += &format!("; --max-cost {}", Usd(cap));
    }
    line += &match scale > 1.0 {
        true => format!(
            " (from its first {}: `runner estimate {file}` counts all with the tokenizer)",
            n(counted)
        ),
        false => format!(" (`runner estimate {file}` counts with the tokenizer)"),
    };
    Some(line)
}
