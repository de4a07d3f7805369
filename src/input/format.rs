//! What kind of file the input is, and where a spreadsheet row's prompt comes from.

use std::path::Path;

use super::Template;

/// The input formats (`--format`); by default chosen by the file's extension
/// ([`InputFormat::of_path`]).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// One JSON request per line: a Batch API line or a plain request body
    #[default]
    Jsonl,
    /// A spreadsheet saved as comma-separated values, with a header row: one request per row
    Csv,
    /// A spreadsheet saved as tab-separated values, with a header row: one request per row
    Tsv,
    /// Plain text: one prompt per line (blank lines are skipped)
    Txt,
}

impl InputFormat {
    /// The format a file's extension says (any case): `.csv`, `.tsv` (or `.tab`), `.txt`;
    /// anything else, no extension included (`/dev/stdin`), is JSONL, as it always was.
    pub fn of_path(path: &Path) -> InputFormat {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("csv") => InputFormat::Csv,
            Some("tsv" | "tab") => InputFormat::Tsv,
            Some("txt") => InputFormat::Txt,
            _ => InputFormat::Jsonl,
        }
    }

    /// The name used in messages and by `--format`.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Jsonl => "jsonl",
            InputFormat::Csv => "csv",
            InputFormat::Tsv => "tsv",
            InputFormat::Txt => "txt",
        }
    }

    /// Whether the file has a header row and columns (CSV, TSV).
    pub fn has_columns(self) -> bool {
        self.delimiter().is_some()
    }

    /// The cell delimiter of a spreadsheet format.
    pub(super) fn delimiter(self) -> Option<u8> {
        match self {
            InputFormat::Csv => Some(b','),
            InputFormat::Tsv => Some(b'\t'),
            InputFormat::Jsonl | InputFormat::Txt => None,
        }
    }
}

/// Where a spreadsheet row's prompt comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFrom {
    /// The column named `prompt`; else the only column besides an id column.
    #[default]
    Auto,
    /// The column of this name (`--prompt-column`).
    Column(String),
    /// The template over the row's cells (`--template`).
    Template(Template),
}
