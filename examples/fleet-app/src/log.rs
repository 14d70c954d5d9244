//! The program's log: one line per event on stdout, which the flotilla agent captures.
//!
//! Lines are written through `std::io::Write` so the workspace's `print_stdout` lint keeps
//! guarding against stray prints elsewhere. A failed write is ignored: with stdout gone there is
//! nowhere left to report it.

use std::fmt;
use std::io::Write;

/// Writes one log line to stdout.
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::to_stdout(format_args!($($arg)*))
    };
}
pub(crate) use log;

pub fn to_stdout(line: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// For start-up failures and usage errors: they are for the person who ran the program.
pub fn to_stderr(line: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
