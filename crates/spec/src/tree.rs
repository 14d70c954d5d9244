//! The located tree every input format is read into: every node knows its line and column,
//! and every scalar keeps its raw text, quoting style and tag. The YAML loader ([`crate::yaml`])
//! and the JSON5 loader ([`crate::json5`]) both build it, so one decoder reads both formats and
//! reports errors the same way.
//!
//! Scalars are not resolved to numbers or booleans while loading: a decoder reads each scalar
//! the way serde_yaml 0.9 (the commonware deployer's YAML library) would for the Rust type of the
//! field ([`Scalar::as_integer`], [`Scalar::as_bool`], [`Scalar::is_null`]). JSON5 maps onto it
//! directly: its strings are quoted scalars, its numbers, booleans and `null` plain ones.

pub use saphyr_parser::ScalarStyle;

use crate::diagnostic::Location;

/// One node of the tree and where it starts in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub value: NodeValue,
    /// Where the node starts: its first character (or its tag or anchor, when it has one).
    pub location: Location,
}

/// The content of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeValue {
    Scalar(Scalar),
    Sequence(Vec<Node>),
    /// Entries in file order. A key may appear more than once: the loader keeps every entry.
    Mapping(Vec<Entry>),
}

/// One `key: value` entry of a mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Node,
    pub value: Node,
}

/// A scalar as written: its text after YAML unescaping and folding, its style and its tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scalar {
    pub text: String,
    pub style: ScalarStyle,
    /// The tag as written in short form: `!!str` for a core-schema tag, `!name` for a local one.
    pub tag: Option<String>,
}

/// Why a file is not one well-formed YAML document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub location: Location,
    pub message: String,
    pub help: String,
}

/// An integer read the way serde_yaml 0.9 reads one: its sign and its magnitude.
///
/// The magnitude is kept apart from the sign so that `-0` can be told from `0` (serde_yaml
/// refuses any leading `-` for an unsigned type) and so that huge values are "out of range"
/// rather than "not an integer".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Integer {
    pub negative: bool,
    /// `None` when the digits do not fit in 128 bits.
    pub magnitude: Option<u128>,
}

impl Integer {
    /// The value as an `i128`, when it fits.
    pub fn value(self) -> Option<i128> {
        let magnitude = i128::try_from(self.magnitude?).ok()?;
        Some(if self.negative { -magnitude } else { magnitude })
    }
}

impl Node {
    /// The scalar, when this node is one.
    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            NodeValue::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    /// A short description of the node for messages: "`10.0`", "the quoted string '10'",
    /// "a sequence", "a mapping".
    pub fn describe(&self) -> String {
        match &self.value {
            NodeValue::Scalar(scalar) => scalar.describe(),
            NodeValue::Sequence(_) => "a sequence".to_owned(),
            NodeValue::Mapping(_) => "a mapping".to_owned(),
        }
    }
}

impl Scalar {
    fn has_core_tag(&self, suffix: &str) -> bool {
        self.tag.as_deref().and_then(|tag| tag.strip_prefix("!!")) == Some(suffix)
    }

    /// Whether serde_yaml 0.9 would read this scalar as a number or boolean at all: plain, or a
    /// literal block scalar carrying the matching core tag (`!!int |`).
    fn is_plain_or_tagged_literal(&self, core_tag_suffix: &str) -> bool {
        match self.style {
            ScalarStyle::Plain => true,
            ScalarStyle::Literal => self.has_core_tag(core_tag_suffix),
            _ => false,
        }
    }

    /// Whether an `Option` field holding this scalar is `None`, as serde_yaml 0.9 decides it:
    /// a plain, untagged `~`, `null`, `Null`, `NULL` or empty value, or one of those with the
    /// `!!null` tag. Quoted scalars and scalars with any other tag are values.
    pub fn is_null(&self) -> bool {
        if self.style != ScalarStyle::Plain {
            return false;
        }
        match &self.tag {
            Some(_) if self.has_core_tag("null") => is_null_word(&self.text),
            Some(_) => false,
            None => self.text.is_empty() || is_null_word(&self.text),
        }
    }

    /// The scalar as serde_yaml 0.9 reads a `bool`: only `true`, `True`, `TRUE`, `false`,
    /// `False` and `FALSE` (YAML 1.2), and only unquoted.
    pub fn as_bool(&self) -> Option<bool> {
        if !self.is_plain_or_tagged_literal("bool") {
            return None;
        }
        match self.text.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => None,
        }
    }

    /// The scalar as serde_yaml 0.9 reads an integer: unquoted, decimal without leading zeros
    /// or `0x`/`0o`/`0b` with lower-case prefix, an optional `+` or `-` sign, no `_` separators.
    /// Range checks for the target type are the caller's.
    pub fn as_integer(&self) -> Option<Integer> {
        if !self.is_plain_or_tagged_literal("int") {
            return None;
        }
        parse_integer_text(&self.text)
    }

    /// The scalar for messages: "`text`" when plain, "the quoted string 'text'" otherwise.
    pub fn describe(&self) -> String {
        match self.style {
            ScalarStyle::Plain if self.text.is_empty() => "an empty value".to_owned(),
            ScalarStyle::Plain if self.text == "null" => "null".to_owned(),
            ScalarStyle::Plain if self.is_null() => format!("null (`{}`)", self.text),
            ScalarStyle::Plain => format!("`{}`", self.text),
            ScalarStyle::SingleQuoted => format!("the quoted string '{}'", self.text),
            ScalarStyle::DoubleQuoted => format!("the quoted string \"{}\"", self.text),
            ScalarStyle::Literal | ScalarStyle::Folded => {
                format!("the block string \"{}\"", self.text.escape_debug())
            }
        }
    }
}

fn is_null_word(text: &str) -> bool {
    matches!(text, "~" | "null" | "Null" | "NULL")
}

/// Reads integer text with serde_yaml 0.9's grammar (see [`Scalar::as_integer`]).
fn parse_integer_text(text: &str) -> Option<Integer> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = if let Some(rest) = unsigned.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = unsigned.strip_prefix("0o") {
        (8, rest)
    } else if let Some(rest) = unsigned.strip_prefix("0b") {
        (2, rest)
    } else {
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // YAML 1.2 reads a decimal with a leading zero (`010`) as a string, and so does serde_yaml.
    if radix == 10 && digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    Some(Integer { negative, magnitude: u128::from_str_radix(digits, radix).ok() })
}
