//! Writing to stderr without panicking.

/// `eprintln!` that never panics. `eprintln!` panics when stderr is closed (`runner submit … 2>&1
/// | head -1` once `head` has exited), and a panic at the end of a run skipped what follows the
/// summary line: releasing the job's lease and the exit code. A line that cannot be written is
/// dropped; the journal holds everything the runner says.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}
