//! The columns of a CSV export: the standard layout of every job ([`super::CSV_COLUMNS`]), and
//! the input layout of a job submitted from a spreadsheet, which opens beside the original: its
//! columns first, in their order, with their names and values, then the answer columns.

use std::borrow::Cow;

use serde_json::Value;

use crate::domain::price::UsageTokens;
use crate::domain::{AttemptClass, RequestState};
use crate::http::response::output_text;
use crate::input::TableLayout;
use crate::inspect::prices::PriceTable;
use crate::store::db::RequestRow;
use crate::util::clock::rfc3339;

use super::prompt::prompt_text;

/// One answer column: what the runner knows of a request beyond its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    CustomId,
    Status,
    HttpStatus,
    Attempts,
    OutputText,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    Model,
    RequestId,
    ErrorCode,
    ErrorMessage,
    LatencyMs,
    FinishedAt,
    ErrorClass,
    Line,
    Metadata,
    Prompt,
    CostUsd,
    Via,
}

/// The standard layout, in [`super::CSV_COLUMNS`] order.
pub(super) const STANDARD: [Answer; 20] = [
    Answer::CustomId,
    Answer::Status,
    Answer::HttpStatus,
    Answer::Attempts,
    Answer::OutputText,
    Answer::PromptTokens,
    Answer::CompletionTokens,
    Answer::TotalTokens,
    Answer::Model,
    Answer::RequestId,
    Answer::ErrorCode,
    Answer::ErrorMessage,
    Answer::LatencyMs,
    Answer::FinishedAt,
    Answer::ErrorClass,
    Answer::Line,
    Answer::Metadata,
    Answer::Prompt,
    Answer::CostUsd,
    Answer::Via,
];

impl Answer {
    /// The column's name in the standard header.
    pub(super) fn name(self) -> &'static str {
        match self {
            Answer::CustomId => "custom_id",
            Answer::Status => "status",
            Answer::HttpStatus => "http_status",
            Answer::Attempts => "attempts",
            Answer::OutputText => "output_text",
            Answer::PromptTokens => "prompt_tokens",
            Answer::CompletionTokens => "completion_tokens",
            Answer::TotalTokens => "total_tokens",
            Answer::Model => "model",
            Answer::RequestId => "request_id",
            Answer::ErrorCode => "error_code",
            Answer::ErrorMessage => "error_message",
            Answer::LatencyMs => "latency_ms",
            Answer::FinishedAt => "finished_at",
            Answer::ErrorClass => "error_class",
            Answer::Line => "line",
            Answer::Metadata => "metadata",
            Answer::Prompt => "prompt",
            Answer::CostUsd => "cost_usd",
            Answer::Via => "via",
        }
    }

    fn cell(self, row: &Row<'_>) -> Cow<'static, str> {
        let r = row.request;
        let text = |value: Option<&String>| Cow::Owned(value.cloned().unwrap_or_default());
        match self {
            Answer::CustomId => Cow::Owned(r.key.clone()),
            Answer::Status => Cow::Borrowed(r.state.as_str()),
            Answer::HttpStatus => opt(r.http_status),
            Answer::Attempts => Cow::Owned(r.attempts.to_string()),
            Answer::OutputText => text(row.output.as_ref()),
            Answer::PromptTokens => opt(r.prompt_tokens),
            Answer::CompletionTokens => opt(r.completion_tokens),
            Answer::TotalTokens => opt(r.total_tokens),
            Answer::Model => text(r.model.as_ref()),
            Answer::RequestId => text(r.x_request_id.as_ref()),
            Answer::ErrorCode => text(r.error_code.as_ref()),
            Answer::ErrorMessage => text(r.error_message.as_ref()),
            Answer::LatencyMs => opt(r.latency_ms),
            Answer::FinishedAt => Cow::Owned(r.finished_at.map(rfc3339).unwrap_or_default()),
            Answer::ErrorClass => Cow::Borrowed(r.error_class.map_or("", AttemptClass::as_str)),
            Answer::Line => Cow::Owned(r.line.to_string()),
            Answer::Metadata => text(r.metadata.as_ref()),
            Answer::Prompt => text(row.prompt.as_ref()),
            Answer::CostUsd => {
                Cow::Owned(row.cost.map(|usd| format!("{usd:.8}")).unwrap_or_default())
            }
            Answer::Via => Cow::Borrowed(via(r).unwrap_or_default()),
        }
    }
}

/// A request's cost from its journaled usage: prompt and completion tokens at its answering
/// model's price, half through the Batch API. Reasoning tokens are in `completion_tokens`.
/// Which way a finished request's last attempt went: `batch` (the hosted Batch API) or
/// `direct`; `None` while it is not finished.
pub(super) fn via(request: &RequestRow) -> Option<&'static str> {
    match request.state {
        RequestState::Succeeded | RequestState::Failed => {
            Some(if request.batch { "batch" } else { "direct" })
        }
        RequestState::Pending | RequestState::InFlight | RequestState::Batched => None,
    }
}

/// What a request's answer cost, USD: its usage at its model's price (half through the Batch
/// API); `None` without usage or a price.
pub(super) fn request_cost(request: &RequestRow, prices: &PriceTable) -> Option<f64> {
    let tokens = UsageTokens {
        prompt: request.prompt_tokens,
        cached: request.cached_tokens,
        completion: request.completion_tokens,
    };
    prices.usage_cost(request.model.as_deref()?, tokens, request.batch)
}

fn opt<T: ToString>(value: Option<T>) -> Cow<'static, str> {
    Cow::Owned(value.map(|v| v.to_string()).unwrap_or_default())
}

/// A request as the export reads it: the row, and what is parsed out of its bodies once.
struct Row<'a> {
    request: &'a RequestRow,
    output: Option<String>,
    prompt: Option<String>,
    /// What its answer cost, in USD: its usage at its model's price (half through the Batch
    /// API); unknown without usage or a price.
    cost: Option<f64>,
}

impl<'a> Row<'a> {
    fn new(request: &'a RequestRow, prices: &PriceTable) -> Row<'a> {
        let output = match request.state {
            RequestState::Succeeded => request
                .response
                .as_deref()
                .and_then(|r| serde_json::from_str::<Value>(r).ok())
                .and_then(|body| output_text(&body)),
            RequestState::Pending
            | RequestState::InFlight
            | RequestState::Batched
            | RequestState::Failed => None,
        };
        let prompt = prompt_text(&request.body);
        let cost = request_cost(request, prices);
        Row {
            request,
            cost,
            output,
            prompt,
        }
    }
}

/// The columns of a CSV export.
#[derive(Clone, Debug)]
pub enum CsvLayout {
    /// [`super::CSV_COLUMNS`], for every job.
    Standard,
    /// A spreadsheet job's columns, then the answers.
    Input(InputColumns),
}

/// The input layout of a spreadsheet job: its columns, then the answer columns that say
/// something the input columns do not (see [`InputColumns::new`]).
#[derive(Clone, Debug)]
pub struct InputColumns {
    layout: TableLayout,
    /// Each answer column with its header name.
    answers: Vec<(Answer, String)>,
}

/// Prefix of an answer column whose name the input already uses (a `status` column of the
/// user's own, say): both are kept, told apart by it.
const COLLISION_PREFIX: &str = "runner_";

impl InputColumns {
    /// The layout of a job read from a spreadsheet with `layout`. The answer columns are the
    /// standard ones less what the input columns already hold: `metadata` (the columns
    /// themselves), `custom_id` when there is an id column, `prompt` when a column holds the
    /// prompts (it stays for a template: the text that was sent).
    pub fn new(layout: TableLayout) -> InputColumns {
        let answers = STANDARD
            .iter()
            .filter(|answer| match answer {
                Answer::Metadata => false,
                Answer::CustomId => layout.id_column.is_none(),
                Answer::Prompt => layout.prompt_column.is_none(),
                _ => true,
            })
            .map(|answer| {
                let mut name = answer.name().to_owned();
                while layout.columns.contains(&name) {
                    name.insert_str(0, COLLISION_PREFIX);
                }
                (*answer, name)
            })
            .collect();
        InputColumns { layout, answers }
    }
}

impl CsvLayout {
    /// The header row.
    pub fn header(&self) -> Vec<&str> {
        match self {
            CsvLayout::Standard => STANDARD.iter().map(|a| a.name()).collect(),
            CsvLayout::Input(input) => input
                .layout
                .columns
                .iter()
                .map(String::as_str)
                .chain(input.answers.iter().map(|(_, name)| name.as_str()))
                .collect(),
        }
    }

    /// The cells of one request, in header order, as stored (not yet neutralised).
    pub fn cells(&self, request: &RequestRow, prices: &PriceTable) -> Vec<Cow<'static, str>> {
        match self {
            CsvLayout::Standard => {
                let row = Row::new(request, prices);
                STANDARD.iter().map(|answer| answer.cell(&row)).collect()
            }
            CsvLayout::Input(input) => {
                let layout = &input.layout;
                let row = Row::new(request, prices);
                let metadata = request
                    .metadata
                    .as_deref()
                    .and_then(|m| serde_json::from_str::<Value>(m).ok());
                let inputs = layout.columns.iter().map(|column| {
                    match metadata.as_ref().and_then(|m| m.get(column)) {
                        Some(Value::String(cell)) => Cow::Owned(cell.clone()),
                        Some(Value::Null) => Cow::Borrowed(""),
                        Some(other) => Cow::Owned(other.to_string()),
                        None if layout.id_column.as_ref() == Some(column) => {
                            Cow::Owned(request.custom_id.clone().unwrap_or_default())
                        }
                        None if layout.prompt_column.as_ref() == Some(column) => {
                            Cow::Owned(row.prompt.clone().unwrap_or_default())
                        }
                        None => Cow::Borrowed(""),
                    }
                });
                inputs
                    .chain(input.answers.iter().map(|(answer, _)| answer.cell(&row)))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_layout_is_the_header_contract() {
        assert_eq!(
            CsvLayout::Standard.header(),
            super::super::CSV_COLUMNS.to_vec()
        );
    }

    fn layout(columns: &[&str], id: Option<&str>, prompt: Option<&str>) -> TableLayout {
        TableLayout {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            id_column: id.map(str::to_owned),
            prompt_column: prompt.map(str::to_owned),
        }
    }

    #[rstest::rstest]
    #[case::id_and_prompt(
        layout(&["id", "review", "prompt"], Some("id"), Some("prompt")),
        &["id", "review", "prompt", "status", "http_status"],
        &["custom_id", "metadata", "runner_prompt"]
    )]
    #[case::template_keeps_the_sent_prompt(
        layout(&["review"], None, None),
        &["review", "custom_id", "status"],
        &["metadata"]
    )]
    #[case::a_column_named_like_an_answer(
        layout(&["prompt", "status"], None, Some("prompt")),
        &["prompt", "status", "custom_id", "runner_status"],
        &["metadata"]
    )]
    fn the_input_layout_puts_the_columns_first(
        #[case] layout: TableLayout,
        #[case] starts: &[&str],
        #[case] absent: &[&str],
    ) {
        let csv = CsvLayout::Input(InputColumns::new(layout));
        let header = csv.header();
        let mut order = header.iter();
        for name in starts {
            assert!(
                order.any(|h| h == name),
                "{name} missing or out of order: {header:?}"
            );
        }
        assert_eq!(header[..starts.len().min(2)], starts[..starts.len().min(2)]);
        for name in absent {
            assert!(!header.contains(name), "{name} in {header:?}");
        }
        let mut unique = header.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), header.len(), "names repeat: {header:?}");
    }
}
