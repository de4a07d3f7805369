//! Small leaf helpers every layer may use: the clock, private files, locks, printable text,
//! stderr lines that never panic (`say!`), the answer budget and spool files. Nothing here
//! imports another module of the crate outside `util`.

pub mod clock;
pub mod fs;
pub mod say;
pub mod spool;
pub mod sync;
pub mod text;
