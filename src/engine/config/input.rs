//! How a job reads its file (`--format`, `--prompt-column`, `--template`, `--system`,
//! `--max-tokens`): stored with the job's settings, so that a resubmit of the same file without
//! the flags builds the same requests (and resumes), and a resume that reads the rest of the
//! file reads it the same way.

use serde::{Deserialize, Serialize};

use crate::cli::{SubmitArgs, UsageError};
use crate::input::{CHAT_ENDPOINT, InputFormat, PromptFrom};

use super::JobSettings;

/// The input settings of a job (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSettings {
    /// The format of the file last submitted: `--format`, else by its extension.
    #[serde(default)]
    pub format: InputFormat,
    /// Where a spreadsheet row's prompt comes from.
    #[serde(default)]
    pub prompt: PromptFrom,
    /// The system message of spreadsheet rows and text lines.
    #[serde(default)]
    pub system: Option<String>,
    /// `max_tokens` of every request that has no output limit.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Whether a request's key leaves out the model that `--model` filled in: true for every
    /// job made since, so that a new `--model` fixes the requests in place instead of adding
    /// copies; false for a job stored before, whose keys hold the model.
    #[serde(default)]
    pub own_content_keys: bool,
}

impl InputSettings {
    /// A new job's: read by its extension, keys of the lines' own content.
    pub fn new_job() -> InputSettings {
        InputSettings {
            own_content_keys: true,
            ..InputSettings::default()
        }
    }
}

impl JobSettings {
    /// Takes submit's input flags over the stored ones, the format from `--format` or the file's
    /// extension. Call it after `--model` and `--endpoint` are applied.
    ///
    /// # Errors
    /// [`UsageError`] for flags that make no sense with the file's format (`--template` with
    /// JSONL, `--endpoint` with a spreadsheet), and for rows that would name no model.
    pub fn apply_input(&mut self, args: &SubmitArgs) -> Result<(), UsageError> {
        let format = args
            .format
            .unwrap_or_else(|| InputFormat::of_path(&args.file));
        let file = args.file.display();
        let items = match format.has_columns() {
            true => "rows",
            false => "lines",
        };
        let read_as = match args.format {
            Some(_) => format!("is read as {} (--format)", format.as_str()),
            None => format!("is read as {} (by its extension)", format.as_str()),
        };
        let columns_flags = [
            ("--template", args.template.is_some()),
            ("--prompt-column", args.prompt_column.is_some()),
        ];
        if let (false, Some((flag, _))) = (
            format.has_columns(),
            columns_flags.iter().find(|(_, given)| *given),
        ) {
            return Err(UsageError(format!(
                "{flag} needs a spreadsheet's columns, and {file} {read_as}: use it with a .csv or \
                 .tsv file with a header row (or pass --format csv if {file} is one)"
            )));
        }
        if format == InputFormat::Jsonl && args.system.is_some() {
            return Err(UsageError(format!(
                "--system is for spreadsheets and .txt files, and {file} {read_as}: a JSONL line \
                 carries its own messages, so put the system message into them"
            )));
        }
        if let (true, Some(endpoint)) = (format != InputFormat::Jsonl, &args.endpoint)
            && endpoint != CHAT_ENDPOINT
        {
            return Err(UsageError(format!(
                "{file} {read_as}, whose {items} are sent to {CHAT_ENDPOINT}: --endpoint \
                 {endpoint} is for JSONL files"
            )));
        }
        self.input.format = format;
        if let Some(template) = &args.template {
            self.input.prompt = PromptFrom::Template(template.clone());
        }
        if let Some(column) = &args.prompt_column {
            self.input.prompt = PromptFrom::Column(column.clone());
        }
        if let Some(system) = &args.system {
            self.input.system = Some(system.clone());
        }
        if let Some(n) = args.max_tokens {
            self.input.max_tokens = Some(n.get());
        }
        if format != InputFormat::Jsonl && self.model.is_none() {
            return Err(UsageError(format!(
                "{file} {read_as}: each of its {items} becomes a chat request, which needs a \
                 model: pass --model, e.g. --model gpt-4o-mini"
            )));
        }
        Ok(())
    }
}
