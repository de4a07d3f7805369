//! The "Examples:" blocks at the end of `runner --help` and `runner submit --help`: a few
//! command lines people can copy, each with one line on what it does.

use clap::builder::{StyledStr, Styles};

/// The typical flow, from trying the tool to reading the answers.
const TOP_LEVEL: &[(&str, &str)] = &[
    (
        "runner demo",
        "Try it on the built-in mock API: no key, no network, a results CSV at the end",
    ),
    (
        "runner doctor",
        "Check the key, the network and the API before a big job",
    ),
    (
        "runner submit prompts.csv --model gpt-4o-mini",
        "Send one request per row; after Ctrl-C, `runner resume` carries on",
    ),
    (
        "runner status",
        "Progress, what failed and why, tokens and the estimated cost",
    ),
    (
        "runner export --output results.csv",
        "The answers as a spreadsheet, one row per request",
    ),
];

/// `runner submit`: spreadsheets, JSONL, limits, and what comes after.
const SUBMIT: &[(&str, &str)] = &[
    (
        "runner submit prompts.csv --model gpt-4o-mini",
        "One chat request per row; the prompt is the column named prompt",
    ),
    (
        "runner submit prompts.csv --model gpt-4o-mini --template 'Answer this review: {review}'",
        "Build each row's prompt from its cells",
    ),
    (
        "runner submit batch.jsonl --rpm 500 --tpm 200000",
        "Stay under your account's requests and tokens per minute",
    ),
    (
        "runner submit batch.jsonl --via batch",
        "Through the Batch API: half the price, answers within 24 hours",
    ),
    (
        "runner resume",
        "Carry on after Ctrl-C or a crash; nothing that succeeded is sent again",
    ),
    (
        "runner export --output results.csv",
        "Write the answers, one row per request",
    ),
];

/// The block under `runner --help`.
pub fn top_level() -> StyledStr {
    block(TOP_LEVEL)
}

/// The block under `runner submit --help`.
pub fn submit() -> StyledStr {
    block(SUBMIT)
}

/// "Examples:" styled as clap styles its own headings, then each command line (styled as a
/// flag) with its explanation indented below it, as long help lays out options. Clap drops the
/// styles when the output is not a terminal, and the man pages keep only the text.
fn block(examples: &[(&str, &str)]) -> StyledStr {
    let styles = Styles::styled();
    let header = styles.get_header();
    let literal = styles.get_literal();
    let mut text = format!("{header}Examples:{header:#}\n");
    for (command, what) in examples {
        text.push_str(&format!("  {literal}{command}{literal:#}\n      {what}\n"));
    }
    StyledStr::from(text.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    /// Splits a command line as a shell would, for the quoting the examples use ('...').
    fn words(line: &str) -> Vec<String> {
        line.split('\'')
            .enumerate()
            .flat_map(|(i, part)| match i % 2 {
                1 => vec![part.to_owned()],
                _ => part.split_whitespace().map(str::to_owned).collect(),
            })
            .collect()
    }

    #[test]
    fn every_example_parses_as_it_is_written() {
        for (command, what) in TOP_LEVEL.iter().chain(SUBMIT) {
            assert!(!what.is_empty(), "{command}");
            if let Err(e) = Cli::try_parse_from(words(command)) {
                panic!("{command}: {e}");
            }
        }
        assert_eq!(
            words("runner submit f.csv --template 'a: {b}'"),
            ["runner", "submit", "f.csv", "--template", "a: {b}"]
        );
    }

    #[test]
    fn the_block_reads_as_plain_text_without_a_terminal() {
        let text = submit().to_string();
        assert!(text.starts_with("Examples:\n  runner submit "), "{text}");
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}
