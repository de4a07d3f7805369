//! CSV and TSV: a header row, then one chat request per row.
//!
//! The rows are split by `csv_core`, the csv crate's own parser (quoted cells, doubled quotes,
//! newlines inside quotes, CRLF, a UTF-8 byte order mark), driven here from the reader's buffer
//! rather than through `csv::Reader`, for two things that one does not give: the physical line
//! where each row starts (its positions skip blank lines and count a CRLF late), and a bound on
//! memory (a quote never closed makes the rest of the file one cell; here a row is read up to
//! `--max-line-bytes` and the rest of it passed over, as an over-long JSONL line is).
//!
//! The header names the columns. The prompt is the `prompt` column (`--prompt-column` names
//! another, `--template` writes one over several); the request's custom_id is the `custom_id`
//! or `id` column, when there is one; every other column is the request's metadata, which the
//! export puts back beside the answer ([`TableLayout`]). A row without an id gets the key derived
//! from its body, as a JSONL line without custom_id does, so a resubmit of the edited
//! spreadsheet sends only the rows whose requests changed.

use csv_core::ReadRecordResult;
use serde_json::{Map, Value};

use super::columns::Columns;
use super::template::Bound;
use super::{BOM, InputError, InputReader, Prompt, PromptFrom};

/// First size of a row's cell buffer; it grows to `--max-line-bytes` at most.
const FIRST_ROW_BYTES: usize = 4096;
/// First count of a row's cell ends; it grows with the cells.
const FIRST_ROW_CELLS: usize = 64;

/// Where a spreadsheet job's columns go: stored with the job when its file is read (as JSON,
/// see [`TableLayout::to_json`]), so that the export writes them back in their order, with their
/// names, before the answer columns.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableLayout {
    /// The header's column names, in order, as written.
    pub columns: Vec<String>,
    /// The column whose cells are the custom_ids, if any.
    pub id_column: Option<String>,
    /// The column whose cells are the prompts; `None` when a template writes them.
    pub prompt_column: Option<String>,
}

impl TableLayout {
    /// As stored.
    pub fn to_json(&self) -> String {
        // Strings only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored layout.
    ///
    /// # Errors
    /// When the text is not a layout.
    pub fn from_json(json: &str) -> Result<TableLayout, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// What the header row settled: the columns, and where the id and the prompt come from.
#[derive(Debug)]
struct Shape {
    columns: Columns,
    id: Option<usize>,
    prompt: RowPrompt,
    layout: TableLayout,
}

#[derive(Debug)]
enum RowPrompt {
    Column(usize),
    Template(Bound),
}

/// What the reader kept of the last row that was not a valid request (`--skip-invalid`).
#[derive(Debug, Default)]
struct Salvage {
    id: Option<String>,
    metadata: Option<String>,
}

/// A spreadsheet being read: the parser's state, the current row's cells, the header's shape.
pub(super) struct Table {
    parser: csv_core::Reader,
    /// `\n` bytes read so far: a row starts on line `newlines + 1`.
    newlines: u64,
    /// Bytes read so far (the byte order mark is only looked for at the start).
    read: u64,
    /// The current row's cells, back to back, and where each one ends.
    cells: Vec<u8>,
    ends: Vec<usize>,
    shape: Option<Shape>,
    salvage: Salvage,
}

/// What reading one row found; its cells are in [`Table`]'s buffers.
struct Row {
    /// The physical line where the row starts.
    line: u64,
    /// Number of cells.
    cells: usize,
    /// The row is longer than the limit: its cells were not kept.
    too_long: bool,
    /// A quoted cell ran to the end of the file: a quote that is never closed.
    unclosed: bool,
}

impl Table {
    pub(super) fn new(delimiter: u8) -> Table {
        Table {
            parser: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            newlines: 0,
            read: 0,
            cells: vec![0; FIRST_ROW_BYTES],
            ends: vec![0; FIRST_ROW_CELLS],
            shape: None,
            salvage: Salvage::default(),
        }
    }

    pub(super) fn layout(&self) -> Option<&TableLayout> {
        self.shape.as_ref().map(|shape| &shape.layout)
    }

    pub(super) fn salvaged_id(&self) -> Option<String> {
        self.salvage.id.clone()
    }

    pub(super) fn salvaged_metadata(&self) -> Option<String> {
        self.salvage.metadata.clone()
    }

    /// The cells of the row just read, each checked to be UTF-8.
    fn texts(&self, row: &Row) -> Result<Vec<&str>, ()> {
        let mut start = 0;
        (0..row.cells)
            .map(|i| {
                let end = self.ends[i];
                let cell = std::str::from_utf8(&self.cells[start..end]).map_err(|_| ());
                start = end;
                cell
            })
            .collect()
    }
}

impl InputReader {
    /// The next request of a spreadsheet; the header row is read first.
    pub(super) fn next_row(&mut self) -> Option<Result<Prompt, InputError>> {
        while !self.done {
            let row = match self.read_row() {
                Ok(Some(row)) => row,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            self.line = row.line;
            let table = self.table.as_deref_mut()?;
            table.salvage = Salvage::default();
            if table.shape.is_none() {
                match self.read_header(&row) {
                    Ok(()) => continue,
                    Err(e) => {
                        // No row can be understood without the header.
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            match self.row_prompt(&row) {
                Ok(Some(prompt)) => return Some(Ok(prompt)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    /// Reads one row into the table's buffers, hashing and counting the bytes it takes; `None`
    /// at the end of the input. Blank lines are passed over by the parser.
    fn read_row(&mut self) -> Result<Option<Row>, InputError> {
        let limit = self.options.max_line_bytes;
        let Some(table) = self.table.as_deref_mut() else {
            return Ok(None);
        };
        let (mut out, mut end) = (0usize, 0usize);
        let mut start = None;
        let mut too_long = false;
        // The last byte of the row that is not a line end: a quoted cell ends with a quote.
        let mut last = None;
        loop {
            let input = match self.source.fill_buf() {
                Ok(input) => input,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(InputError::Io {
                        path: self.path.clone(),
                        source,
                    });
                }
            };
            let at_end = input.is_empty();
            let (result, read, written, ended) =
                table
                    .parser
                    .read_record(input, &mut table.cells[out..], &mut table.ends[end..]);
            let taken = &input[..read];
            let counted = match table.read {
                0 => taken.strip_prefix(BOM).unwrap_or(taken),
                _ => taken,
            };
            for &byte in counted {
                match byte {
                    b'\n' => table.newlines += 1,
                    b'\r' => {}
                    _ => {
                        start.get_or_insert(table.newlines + 1);
                        last = Some(byte);
                    }
                }
            }
            self.hasher.update(taken);
            table.read += read as u64;
            self.source.consume(read);
            out += written;
            end += ended;
            match result {
                // The parser answers an empty input with a row or the end; were it ever to ask
                // for more there, there is no more.
                ReadRecordResult::InputEmpty if at_end => return Ok(None),
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull
                    if too_long || out > limit || end > limit =>
                {
                    // Over the limit: the rest of the row is read past, its cells not kept.
                    too_long = true;
                    (out, end) = (0, 0);
                }
                ReadRecordResult::OutputFull => {
                    let grown = (table.cells.len() * 2).min(limit + 1).max(out + 1);
                    table.cells.resize(grown, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let grown = table.ends.len() * 2;
                    table.ends.resize(grown, 0);
                }
                ReadRecordResult::Record => {
                    let too_long = too_long || out > limit;
                    let last_cell = match (end, too_long) {
                        (0, _) | (_, true) => &[][..],
                        (1, false) => &table.cells[..table.ends[0]],
                        (n, false) => &table.cells[table.ends[n - 2]..table.ends[n - 1]],
                    };
                    // Only a quoted cell holds a line end, and a closed one ends with its quote:
                    // a row that the end of the file cut inside quotes was never closed.
                    let unclosed = at_end && last_cell.contains(&b'\n') && last != Some(b'"');
                    return Ok(Some(Row {
                        line: start.unwrap_or(table.newlines + 1),
                        cells: if too_long { 0 } else { end },
                        too_long,
                        unclosed,
                    }));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    fn columns_error(&self, reason: impl Into<String>) -> InputError {
        InputError::Columns {
            path: self.path.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }

    /// Reads the header row: the column names, the id column, the prompt's source.
    fn read_header(&mut self, row: &Row) -> Result<(), InputError> {
        let Some(table) = self.table.as_deref() else {
            return Ok(());
        };
        if row.too_long || row.unclosed {
            return Err(self.columns_error(format!(
                "the header row is longer than {} bytes: the first row must name the columns \
                 (look for a quote (\") that is never closed)",
                self.options.max_line_bytes
            )));
        }
        let Ok(names) = table.texts(row) else {
            return Err(self.columns_error(
                "the header row is not valid UTF-8: save the file as UTF-8 (in Excel: \"CSV UTF-8\")",
            ));
        };
        let columns = Columns::new(names.iter().map(|n| (*n).to_owned()).collect());
        for (i, name) in columns.names.iter().enumerate() {
            if let Some(j) = columns.names[i + 1..].iter().position(|n| n == name) {
                return Err(self.columns_error(format!(
                    "two columns of the header are named '{name}' (columns {} and {}): give \
                     each column its own name",
                    i + 1,
                    i + j + 2
                )));
            }
        }
        let id = columns
            .find("custom_id")
            .or_else(|| columns.find("id"))
            .filter(|_| columns.names.len() > 1);
        let prompt = match &self.options.prompt {
            PromptFrom::Template(template) => {
                let bound = template.bind(&columns).map_err(|missing| {
                    let missing = missing
                        .iter()
                        .map(|n| format!("{{{n}}}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.columns_error(format!(
                        "the template's {missing} names no column of the header: the columns \
                         are {}; write each placeholder as a column is named",
                        columns.list()
                    ))
                })?;
                RowPrompt::Template(bound)
            }
            PromptFrom::Column(name) => match columns.find(name) {
                Some(index) => RowPrompt::Column(index),
                None => {
                    return Err(self.columns_error(format!(
                        "there is no column '{name}' (--prompt-column): the columns are {}",
                        columns.list()
                    )));
                }
            },
            PromptFrom::Auto => {
                let others: Vec<usize> = (0..columns.names.len())
                    .filter(|i| Some(*i) != id)
                    .collect();
                match (columns.find("prompt"), others.as_slice()) {
                    (Some(index), _) | (None, &[index]) => RowPrompt::Column(index),
                    (None, _) => {
                        return Err(self.columns_error(format!(
                            "no column is named 'prompt' and there are several ({}): pass \
                             --prompt-column NAME to send one column, or --template \
                             'text with {{column}}' to write the prompt over several",
                            columns.list()
                        )));
                    }
                }
            }
        };
        let name = |index: Option<usize>| index.map(|i| columns.names[i].clone());
        let layout = TableLayout {
            columns: columns.names.clone(),
            id_column: name(id),
            prompt_column: match &prompt {
                RowPrompt::Column(index) => name(Some(*index)),
                RowPrompt::Template(_) => None,
            },
        };
        if let Some(table) = self.table.as_deref_mut() {
            table.shape = Some(Shape {
                columns,
                id,
                prompt,
                layout,
            });
        }
        Ok(())
    }

    /// The request of a row; `None` for a row whose every cell is blank (a spreadsheet's empty
    /// row, as a blank line is skipped).
    fn row_prompt(&mut self, row: &Row) -> Result<Option<Prompt>, InputError> {
        let Some(table) = self.table.as_deref() else {
            return Ok(None);
        };
        let Some(shape) = &table.shape else {
            return Ok(None);
        };
        if row.too_long {
            return Err(InputError::TooLong {
                path: self.path.clone(),
                line: self.line,
                limit: self.options.max_line_bytes,
            });
        }
        if row.unclosed {
            return Err(self.invalid(
                "a quote (\") in this row is never closed, so the rest of the file became one \
                 cell: close the quote, or write a quote inside a cell as two (\"\")",
            ));
        }
        let Ok(cells) = table.texts(row) else {
            return Err(InputError::Utf8 {
                path: self.path.clone(),
                line: self.line,
            });
        };
        if cells.iter().all(|c| c.trim().is_empty()) {
            return Ok(None);
        }
        let names = &shape.columns.names;
        if cells.len() != names.len() {
            let delimiter = match self.options.format.delimiter() {
                Some(b'\t') => "a tab",
                _ => "a comma",
            };
            return Err(self.invalid(format!(
                "the row has {} cells but the header has {} columns ({}): a cell that holds {delimiter} \
                 or a line break must be in quotes",
                cells.len(),
                names.len(),
                shape.columns.list()
            )));
        }
        let id = shape.id.map(|i| cells[i].trim().to_owned());
        // Every cell, for the export of a row that is not a valid request.
        let all: Map<String, Value> = names
            .iter()
            .zip(&cells)
            .map(|(name, cell)| (name.clone(), Value::String((*cell).to_owned())))
            .collect();
        let salvage = Salvage {
            id: id.clone().filter(|id| !id.is_empty()),
            metadata: Some(Value::Object(all).to_string()),
        };
        let checked = self.check_row(shape, &cells, id.as_deref());
        let prompt_column = match shape.prompt {
            RowPrompt::Column(index) => Some(index),
            RowPrompt::Template(_) => None,
        };
        let text = match checked {
            Ok(()) => match &shape.prompt {
                RowPrompt::Column(index) => cells[*index].to_owned(),
                RowPrompt::Template(bound) => bound.render(&cells),
            },
            Err(e) => {
                if let Some(table) = self.table.as_deref_mut() {
                    table.salvage = salvage;
                }
                return Err(e);
            }
        };
        let metadata: Map<String, Value> = names
            .iter()
            .zip(&cells)
            .enumerate()
            .filter(|(i, _)| Some(*i) != shape.id && Some(*i) != prompt_column)
            .map(|(_, (name, cell))| (name.clone(), Value::String((*cell).to_owned())))
            .collect();
        let metadata = (!metadata.is_empty()).then(|| Value::Object(metadata).to_string());
        Ok(Some(self.chat_prompt(id, &text, metadata)))
    }

    /// Refuses a row without its id or its prompt.
    fn check_row(&self, shape: &Shape, cells: &[&str], id: Option<&str>) -> Result<(), InputError> {
        if let (Some(index), Some("")) = (shape.id, id) {
            return Err(self.invalid(format!(
                "the '{}' cell is empty: give every row its own id, or remove the column \
                 (rows without ids are told apart by their content)",
                shape.columns.names[index]
            )));
        }
        match &shape.prompt {
            RowPrompt::Column(index) if cells[*index].trim().is_empty() => {
                Err(self.invalid(format!(
                    "the prompt is empty (column '{}'): write one, or delete the row",
                    shape.columns.names[*index]
                )))
            }
            RowPrompt::Template(bound) if bound.columns().all(|i| cells[i].trim().is_empty()) => {
                let used = bound
                    .columns()
                    .map(|i| format!("'{}'", shape.columns.names[i]))
                    .collect::<Vec<_>>()
                    .join(", ");
                Err(self.invalid(format!(
                    "the prompt is empty: the template's columns ({used}) are all empty in this \
                     row; fill them in, or delete the row"
                )))
            }
            RowPrompt::Column(_) | RowPrompt::Template(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
