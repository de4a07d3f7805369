//! `runner completions` and `runner man`: shell completion scripts and roff man pages, generated
//! from the clap definitions of [`super::Cli`], so they never drift from the flags.

use std::io::{self, Write};
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;

use super::Cli;

/// The name the scripts and pages complete and describe.
const BIN: &str = "runner";

/// The completion script of `shell` for `runner` and every subcommand.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    // Generated into memory: the generators panic on a failed write, a Vec never fails.
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    script
}

/// `runner.1`: the top-level man page, listing the subcommands.
///
/// # Errors
/// None in practice: rendering into memory does not fail.
pub fn man_page() -> io::Result<Vec<u8>> {
    let mut page = Vec::new();
    Man::new(command()).render(&mut page)?;
    Ok(page)
}

/// Writes `runner.1` and one page per subcommand (`runner-submit.1`, …) into `dir`, created if
/// missing; returns the number of pages written.
///
/// # Errors
/// `dir` cannot be created or a page cannot be written.
pub fn write_man_pages(dir: &Path) -> io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = command();
    cmd.build();
    let mut pages = 0;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        Man::new(sub.clone()).generate_to(dir)?;
        pages += 1;
    }
    Man::new(cmd).generate_to(dir)?;
    Ok(pages + 1)
}

/// `runner completions SHELL`: the script to stdout.
///
/// # Errors
/// Writing to stdout fails (a closed pipe is reported as such, and is not a failure for
/// [`crate::exit_code`]).
pub fn print_completions(shell: Shell) -> io::Result<()> {
    write_stdout(&completion_script(shell))
}

/// `runner man`: the top-level page to stdout, or every page into `dir`.
///
/// # Errors
/// Writing to stdout or into `dir` fails.
pub fn print_man(dir: Option<&Path>) -> io::Result<()> {
    match dir {
        None => write_stdout(&man_page()?),
        Some(dir) => {
            let pages = write_man_pages(dir)?;
            crate::say!("runner: wrote {pages} man pages to {}", dir.display());
            Ok(())
        }
    }
}

/// The clap command, without the `help` subcommand (it has no page of its own).
fn command() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}
