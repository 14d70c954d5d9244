//! An error found in one of the input files, with the line it is on when there is one.
//!
//! Parsers return it without knowing the file's path; the caller names the file with
//! [`FileError::in_file`], so messages read `path:line: what is wrong` like a compiler's.

use std::fmt;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// 1-based line, when the problem is on one line.
    pub line: Option<usize>,
    pub message: String,
}

impl FileError {
    pub fn at_line(line: usize, message: impl Into<String>) -> FileError {
        FileError { line: Some(line), message: message.into() }
    }

    pub fn whole_file(message: impl Into<String>) -> FileError {
        FileError { line: None, message: message.into() }
    }

    /// The message with the file's path in front: `path:line: message`.
    pub fn in_file(&self, path: &Path) -> String {
        match self.line {
            Some(line) => format!("{}:{line}: {}", path.display(), self.message),
            None => format!("{}: {}", path.display(), self.message),
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
