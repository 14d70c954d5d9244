//! Diagnostics: errors and warnings about an input file, each with its place and its fix.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A place in a file: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One finding about an input file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// Where in the file, when the finding has a place.
    pub location: Option<Location>,
    /// The field path, e.g. `instances[3].storage_iops` (empty for the whole document).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(file: &Path, location: Option<Location>, field: &str, message: String) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            location,
            field: field.to_owned(),
            message,
            help: None,
        }
    }

    pub fn warning(file: &Path, location: Option<Location>, field: &str, message: String) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, location, field, message)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl std::fmt::Display for Diagnostic {
    /// `fleet.yaml:12:5: error: instances[3].storage_iops: <message>` and, on the next line,
    /// `  help: <fix>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(Location { line, column }) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {severity}: ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// All findings about a file that has at least one error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors {
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecErrors {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }
}

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for diagnostic in &self.diagnostics {
            writeln!(f, "{diagnostic}")?;
        }
        let errors = self.errors().count();
        let file = self.diagnostics.first().map(|d| d.file.display().to_string());
        write!(
            f,
            "{errors} error{} in {}",
            if errors == 1 { "" } else { "s" },
            file.unwrap_or_else(|| "the spec".to_owned())
        )
    }
}

impl std::error::Error for SpecErrors {}
