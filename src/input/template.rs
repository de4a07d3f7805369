//! `--template 'Classify the review: {review}'`: a prompt written over a spreadsheet's columns.
//!
//! `{name}` is replaced by the row's cell in the column `name`; `{{` and `}}` stand for a literal
//! `{` and `}`. A template is checked when it is parsed (on the command line, by clap) and
//! bound to a header once the header row is read: a column it names that the file does not
//! have is an error there, naming the columns that exist.

use std::fmt;
use std::str::FromStr;

use super::columns::Columns;

/// A parsed `--template`. Serialised as its source text (it is stored with the job's settings).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Text as written, escapes resolved.
    Text(String),
    /// `{name}`: the cell of this column.
    Column(String),
}

/// Why a template does not parse. The position is a 1-based character index into the template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` with no `}` after it.
    #[error(
        "the {{ at character {at} is never closed: write {{name}} for a column, or {{{{ for a literal {{"
    )]
    Unclosed {
        /// Where the `{` is.
        at: usize,
    },
    /// A `}` that closes nothing.
    #[error(
        "the }} at character {at} closes nothing: write }}}} for a literal }}, or {{name}} for a column"
    )]
    Stray {
        /// Where the `}` is.
        at: usize,
    },
    /// `{}`, or a name holding `{`.
    #[error(
        "the placeholder at character {at} names no column: write {{name}} with a column of the header, or {{{{ for a literal {{"
    )]
    NoName {
        /// Where the `{` is.
        at: usize,
    },
    /// No placeholder at all: every row would send the same prompt.
    #[error(
        "the template names no column, so every row would send the same text: put a column in it, e.g. {{review}}"
    )]
    NoColumn,
}

impl FromStr for Template {
    type Err = TemplateError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().enumerate().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, next)| *next == '{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, next)| *next == '}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(TemplateError::Stray { at: i + 1 }),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            None => return Err(TemplateError::Unclosed { at: i + 1 }),
                            Some((_, '}')) => break,
                            Some((_, '{')) => return Err(TemplateError::NoName { at: i + 1 }),
                            Some((_, c)) => name.push(c),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(TemplateError::NoName { at: i + 1 });
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Column(name.to_owned()));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
            return Err(TemplateError::NoColumn);
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;

    fn try_from(source: String) -> Result<Self, Self::Error> {
        source.parse()
    }
}

impl From<Template> for String {
    fn from(template: Template) -> String {
        template.source
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Template {
    /// The template with each placeholder tied to a column of `columns`.
    ///
    /// # Errors
    /// The names of the placeholders that match no column, each once, in template order.
    pub(super) fn bind(&self, columns: &Columns) -> Result<Bound, Vec<String>> {
        let mut missing: Vec<String> = Vec::new();
        let parts = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => BoundPart::Text(text.clone()),
                Part::Column(name) => match columns.find(name) {
                    Some(index) => BoundPart::Column(index),
                    None => {
                        if !missing.contains(name) {
                            missing.push(name.clone());
                        }
                        BoundPart::Column(usize::MAX)
                    }
                },
            })
            .collect();
        match missing.is_empty() {
            true => Ok(Bound { parts }),
            false => Err(missing),
        }
    }
}

/// A [`Template`] bound to a header: placeholders are column indices.
#[derive(Clone, Debug)]
pub(super) struct Bound {
    parts: Vec<BoundPart>,
}

#[derive(Clone, Debug)]
enum BoundPart {
    Text(String),
    Column(usize),
}

impl Bound {
    /// The prompt of a row whose cells are `cells` (as many as the header has columns).
    pub(super) fn render(&self, cells: &[&str]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                BoundPart::Text(text) => out.push_str(text),
                BoundPart::Column(index) => out.push_str(cells.get(*index).copied().unwrap_or("")),
            }
        }
        out
    }

    /// The columns the template reads, in template order.
    pub(super) fn columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|part| match part {
            BoundPart::Column(index) => Some(*index),
            BoundPart::Text(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::{Template, TemplateError};
    use crate::input::columns::Columns;

    fn columns(names: &[&str]) -> Columns {
        Columns::new(names.iter().map(|n| (*n).to_owned()).collect())
    }

    #[rstest]
    #[case::plain("Classify: {review}", "Classify: nice")]
    #[case::escapes("{{\"a\": {review}}}", "{\"a\": nice}")]
    #[case::escaped_placeholder("{{review}} is {review}", "{review} is nice")]
    #[case::braced_value("{{{review}}}", "{nice}")]
    #[case::spaced_name("{ review }!", "nice!")]
    #[case::two_columns("{id}: {review}\n{review}", "7: nice\nnice")]
    #[case::non_ascii("Résumé → {review} ✓", "Résumé → nice ✓")]
    fn renders_cells_into_the_text(#[case] source: &str, #[case] expected: &str) {
        let template: Template = source.parse().expect("parses");
        let bound = template.bind(&columns(&["id", "review"])).expect("binds");
        assert_eq!(bound.render(&["7", "nice"]), expected);
        assert_eq!(template.to_string(), source, "kept as written");
    }

    #[rstest]
    #[case::unclosed("Say {review", TemplateError::Unclosed { at: 5 })]
    #[case::stray("a } b {review}", TemplateError::Stray { at: 3 })]
    #[case::empty("{} {review}", TemplateError::NoName { at: 1 })]
    #[case::nested("{a{b}}", TemplateError::NoName { at: 1 })]
    #[case::no_column("just {{text}}", TemplateError::NoColumn)]
    fn refuses_what_it_cannot_read(#[case] source: &str, #[case] expected: TemplateError) {
        assert_eq!(source.parse::<Template>(), Err(expected));
    }

    #[test]
    fn binding_names_every_missing_column_once() {
        let template: Template = "{a} {b} {a} {review} {c}".parse().expect("parses");
        let missing = template
            .bind(&columns(&["review"]))
            .expect_err("a, b and c are missing");
        assert_eq!(missing, ["a", "b", "c"]);
    }

    #[test]
    fn a_column_is_matched_ignoring_case_and_spaces_when_unambiguous() {
        let template: Template = "{Review}".parse().expect("parses");
        assert!(template.bind(&columns(&[" review "])).is_ok());
        assert!(template.bind(&columns(&["review", "REVIEW"])).is_err());
    }

    #[test]
    fn is_stored_as_its_text() {
        let template: Template = "x {a}".parse().expect("parses");
        let json = serde_json::to_string(&template).expect("serialises");
        assert_eq!(json, "\"x {a}\"");
        assert_eq!(
            serde_json::from_str::<Template>(&json).expect("reads"),
            template
        );
        assert!(serde_json::from_str::<Template>("\"x {\"").is_err());
    }
}
