//! Small leaf helpers every layer may use: the clock, private files, locks, printable text,
//! stderr lines that never panic (`say!`). Nothing here imports another module of the crate.

pub mod clock;
pub mod fs;
pub mod say;
pub mod sync;
pub mod text;
