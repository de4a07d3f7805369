//! A spreadsheet header's column names, and how the names the options give are found in it.

/// A header's column names, with the lookup that the options' names go through.
#[derive(Clone, Debug)]
pub(super) struct Columns {
    /// The names, in order, as written.
    pub(super) names: Vec<String>,
}

impl Columns {
    /// The columns of a header whose cells are `names`.
    pub(super) fn new(names: Vec<String>) -> Columns {
        Columns { names }
    }

    /// The column called `name`: its exact spelling, else the one column whose name is the same
    /// ignoring case and surrounding spaces (spreadsheets often say `Prompt` or `prompt `).
    pub(super) fn find(&self, name: &str) -> Option<usize> {
        if let Some(exact) = self.names.iter().position(|n| n == name) {
            return Some(exact);
        }
        let loose = |n: &String| n.trim().eq_ignore_ascii_case(name.trim());
        let mut matches = self.names.iter().enumerate().filter(|(_, n)| loose(n));
        match (matches.next(), matches.next()) {
            (Some((index, _)), None) => Some(index),
            _ => None,
        }
    }

    /// The names for a message: `'id', 'review', 'prompt'`.
    pub(super) fn list(&self) -> String {
        self.names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
