//! Diagnostics: errors and warnings about an input file, each with its place and its fix.

use std::borrow::Cow;
use std::fmt::Write as _;
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

/// Whether `c` would change how a terminal shows the text around it: control characters
/// (escape sequences, carriage returns, newlines) and the Unicode marks that reorder or hide
/// text (bidirectional overrides and isolates, zero-width characters, the BOM).
fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// `text` as it may be shown on a terminal: characters that could move the cursor, recolour
/// the screen or reorder what is read ([`is_unsafe_for_terminal`]) are written as Rust escapes
/// (`\n`, `\u{1b}`, `\u{202e}`). Values from files and command lines are shown through it.
pub fn escape_for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_for_terminal) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if is_unsafe_for_terminal(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

impl std::fmt::Display for Diagnostic {
    /// `fleet.yaml:12:5: error: instances[3].storage_iops: <message>` and, on the next line,
    /// `  help: <fix>`. Every part is shown through [`escape_for_terminal`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", escape_for_terminal(&self.file.display().to_string()))?;
        if let Some(Location { line, column }) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {severity}: ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", escape_for_terminal(&self.field))?;
        }
        write!(f, "{}", escape_for_terminal(&self.message))?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {}", escape_for_terminal(help))?;
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
        let file = self
            .diagnostics
            .first()
            .map(|d| escape_for_terminal(&d.file.display().to_string()).into_owned());
        write!(
            f,
            "{errors} error{} in {}",
            if errors == 1 { "" } else { "s" },
            file.unwrap_or_else(|| "the spec".to_owned())
        )
    }
}

impl std::error::Error for SpecErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_tricks_are_escaped() {
        assert_eq!(escape_for_terminal("node-0"), "node-0");
        assert_eq!(escape_for_terminal("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(escape_for_terminal("evil\u{202e}lmth.exe"), "evil\\u{202e}lmth.exe");
        assert_eq!(escape_for_terminal("two\nlines\r"), "two\\nlines\\r");
        assert_eq!(escape_for_terminal("zero\u{200b}width"), "zero\\u{200b}width");
        assert_eq!(escape_for_terminal("é ünicode ✓"), "é ünicode ✓");
    }
}
