//! The JSON5 loader: one JSON5 document (ec2fleetd's config format: JSON with comments,
//! trailing commas, single-quoted strings, unquoted keys, hexadecimal numbers, `+`, `Infinity`
//! and `NaN`, as pyjson5 reads it) into the located tree of [`crate::tree`], parsed by
//! `jsonc-parser` with its JSON5 extensions on.
//!
//! Strings become quoted scalars (double or single, as written) and numbers, booleans and
//! `null` plain ones, so a decoder that reads the tree as serde_yaml reads YAML takes `"10"` as
//! a string and `10` as a number, as JSON means them. Keys are kept in file order with
//! duplicates, for the decoder to name both places. What it refuses: a byte order mark is
//! skipped as JSON5 allows, but an empty document, a second value after the first, missing
//! commas (JSON5 has none) and nesting deeper than [`crate::yaml`]'s limit are errors with
//! their line and column.

use jsonc_parser::ast::{self, ObjectPropName};
use jsonc_parser::{CollectOptions, ParseOptions};

use crate::diagnostic::Location;
use crate::tree::{Entry, Node, NodeValue, Scalar, ScalarStyle, SyntaxError};
use crate::yaml::MAX_NESTING_DEPTH;

/// Parses `source` as one JSON5 document.
pub fn parse_document(source: &str) -> Result<Node, SyntaxError> {
    let lines = LineIndex::new(source);
    // Deep nesting is refused before the recursive parser sees it.
    if let Some(offset) = too_deep(source) {
        return Err(SyntaxError {
            location: lines.location(offset),
            message: format!("nesting deeper than {MAX_NESTING_DEPTH} levels"),
            help: "flatten the document: no config needs this depth".to_owned(),
        });
    }
    let options = ParseOptions {
        allow_comments: true,
        allow_loose_object_property_names: true,
        allow_trailing_commas: true,
        allow_missing_commas: false,
        allow_single_quoted_strings: true,
        allow_hexadecimal_numbers: true,
        allow_unary_plus_numbers: true,
        allow_bare_decimal_point_numbers: true,
        allow_non_finite_numbers: true,
        allow_extended_string_escapes: true,
    };
    let parsed =
        jsonc_parser::parse_to_ast(source, &CollectOptions::default(), &options).map_err(|e| {
            SyntaxError {
            location: lines.location(e.range().start),
            message: e.kind().to_string(),
            help: "write JSON5: `{key: 'value', list: [1, 2,], // comment` and close every bracket"
                .to_owned(),
        }
        })?;
    let Some(value) = parsed.value else {
        return Err(SyntaxError {
            location: Location { line: 1, column: 1 },
            message: "the document is empty".to_owned(),
            help: "write the config as one JSON5 object, `{ … }`".to_owned(),
        });
    };
    Ok(convert(&value, source, &lines))
}

fn convert(value: &ast::Value<'_>, source: &str, lines: &LineIndex) -> Node {
    let plain = |range: &jsonc_parser::common::Range, text: String| Node {
        value: NodeValue::Scalar(Scalar { text, style: ScalarStyle::Plain, tag: None }),
        location: lines.location(range.start),
    };
    match value {
        ast::Value::StringLit(string) => string_node(string, source, lines),
        ast::Value::NumberLit(number) => plain(&number.range, number.value.to_owned()),
        ast::Value::BooleanLit(boolean) => plain(&boolean.range, boolean.value.to_string()),
        ast::Value::NullKeyword(null) => plain(&null.range, "null".to_owned()),
        ast::Value::Array(array) => Node {
            value: NodeValue::Sequence(
                array.elements.iter().map(|element| convert(element, source, lines)).collect(),
            ),
            location: lines.location(array.range.start),
        },
        ast::Value::Object(object) => Node {
            value: NodeValue::Mapping(
                object
                    .properties
                    .iter()
                    .map(|property| Entry {
                        key: match &property.name {
                            ObjectPropName::String(string) => string_node(string, source, lines),
                            ObjectPropName::Word(word) => plain(&word.range, word.value.to_owned()),
                        },
                        value: convert(&property.value, source, lines),
                    })
                    .collect(),
            ),
            location: lines.location(object.range.start),
        },
    }
}

fn string_node(string: &ast::StringLit<'_>, source: &str, lines: &LineIndex) -> Node {
    let style = if source[string.range.start..].starts_with('\'') {
        ScalarStyle::SingleQuoted
    } else {
        ScalarStyle::DoubleQuoted
    };
    Node {
        value: NodeValue::Scalar(Scalar { text: string.value.to_string(), style, tag: None }),
        location: lines.location(string.range.start),
    }
}

/// The offset of the first bracket that opens a level deeper than the limit, outside strings
/// and comments.
fn too_deep(source: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    let mut depth = 0usize;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            quote @ (b'"' | b'\'') => {
                index += 1;
                while index < bytes.len() && bytes[index] != quote {
                    index += if bytes[index] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(index + 1) == Some(&b'/') => {
                while index < bytes.len() && bytes[index] != b'\n' {
                    index += 1;
                }
            }
            b'/' if bytes.get(index + 1) == Some(&b'*') => {
                index += 2;
                while index + 1 < bytes.len() && !(bytes[index] == b'*' && bytes[index + 1] == b'/')
                {
                    index += 1;
                }
                index += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING_DEPTH {
                    return Some(index);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        index += 1;
    }
    None
}

/// Byte offsets to one-based lines and columns (in characters).
struct LineIndex<'s> {
    source: &'s str,
    starts: Vec<usize>,
}

impl<'s> LineIndex<'s> {
    fn new(source: &'s str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { source, starts }
    }

    fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.source.len());
        let line = self.starts.partition_point(|start| *start <= offset);
        let start = self.starts[line - 1];
        let column = self.source.get(start..offset).map_or(1, |text| text.chars().count() + 1);
        Location { line, column }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> (&str, ScalarStyle) {
        let scalar = node.as_scalar().expect("a scalar");
        (scalar.text.as_str(), scalar.style)
    }

    fn mapping(node: &Node) -> &[Entry] {
        match &node.value {
            NodeValue::Mapping(entries) => entries,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    /// pyjson5's grammar, construct by construct, and where each lands.
    #[test]
    fn every_json5_construct_reads_into_the_located_tree() {
        let source = "// a comment\n{\n  unquoted: 'single',\n  \"quoted\": \"dou\\x41ble\", /* block */\n  hex: 0x1F,\n  plus: +1,\n  half: .5,\n  inf: Infinity,\n  list: [1, 2,],\n  yes: true, nothing: null,\n  lines: 'a\\\n b',\n}\n";
        let root = parse_document(source).expect("valid JSON5");
        assert_eq!(root.location, Location { line: 2, column: 1 });
        let entries = mapping(&root);
        let keys: Vec<&str> = entries.iter().map(|e| scalar(&e.key).0).collect();
        assert_eq!(
            keys,
            ["unquoted", "quoted", "hex", "plus", "half", "inf", "list", "yes", "nothing", "lines"]
        );
        assert_eq!(scalar(&entries[0].value), ("single", ScalarStyle::SingleQuoted));
        assert_eq!(entries[0].value.location, Location { line: 3, column: 13 });
        assert_eq!(scalar(&entries[1].value), ("douAble", ScalarStyle::DoubleQuoted));
        assert_eq!(scalar(&entries[2].value), ("0x1F", ScalarStyle::Plain));
        assert_eq!(
            entries[2].value.as_scalar().and_then(Scalar::as_integer).and_then(|i| i.value()),
            Some(31)
        );
        assert_eq!(scalar(&entries[3].value), ("+1", ScalarStyle::Plain));
        assert_eq!(scalar(&entries[4].value), (".5", ScalarStyle::Plain));
        assert_eq!(scalar(&entries[5].value), ("Infinity", ScalarStyle::Plain));
        let NodeValue::Sequence(items) = &entries[6].value.value else { panic!("a sequence") };
        assert_eq!(items.len(), 2);
        assert_eq!(entries[7].value.as_scalar().and_then(Scalar::as_bool), Some(true));
        assert!(entries[8].value.as_scalar().is_some_and(Scalar::is_null));
        assert_eq!(scalar(&entries[9].value).0, "a b");
    }

    #[test]
    fn duplicate_keys_are_kept_in_file_order() {
        let root = parse_document("{a: 1, a: 2}").expect("valid");
        let entries = mapping(&root);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].key.location, Location { line: 1, column: 8 });
    }

    #[test]
    fn errors_are_located() {
        // A missing comma is found where the value before it ends.
        let error = parse_document("{\n  a: 1\n  b: 2\n}").expect_err("missing comma");
        assert_eq!(error.location, Location { line: 2, column: 7 }, "{error:?}");
        assert_eq!(error.message, "Expected comma");
        let error = parse_document("{a: [1, 2}").expect_err("unclosed");
        assert_eq!(error.location.line, 1, "{error:?}");
        let error = parse_document("  // only a comment\n").expect_err("empty");
        assert_eq!(error.message, "the document is empty");
        let error = parse_document("{} {}").expect_err("two values");
        assert_eq!(error.location, Location { line: 1, column: 4 }, "{error:?}");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let error = parse_document(&deep).expect_err("too deep");
        assert_eq!(error.location, Location { line: 1, column: 129 });
        // Brackets in strings and comments do not count.
        let quoted = format!("{{a: '{}', /* {} */ b: 1}}", "[".repeat(300), "{".repeat(300));
        assert!(parse_document(&quoted).is_ok());
    }
}
