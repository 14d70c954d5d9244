//! The YAML loader: one document into the located tree of [`crate::tree`].
//!
//! The tree is built from `saphyr-parser`'s events. Scalars are not resolved to numbers or
//! booleans while loading: the decoder reads each scalar the way serde_yaml 0.9 (the commonware
//! deployer's YAML library) would for the Rust type of the field, so `tag: 12345` stays the
//! string `12345` and `storage_size: '10'` is refused.
//!
//! What the loader refuses, as serde_yaml 0.9 does: a UTF-8 byte order mark, tabs used for
//! indentation (the scanner's own error), and more than one document. What it accepts although
//! saphyr's scanner does not, as libyaml does: a tab after a key's `:`. Mapping keys are kept in
//! file order with duplicates, so the decoder can name both places of a repeated key. Aliases
//! are expanded (a copy of the anchored node, placed at the alias), with a budget against
//! "billion laughs" documents. Merge keys (`<<`) are not applied: they stay an ordinary
//! key, which is what the deployer's parser does.

use saphyr_parser::{Event, Parser, ScanError, Span};

pub use crate::tree::{Entry, Integer, Node, NodeValue, Scalar, ScalarStyle, SyntaxError};

use crate::diagnostic::Location;

/// The most nodes that alias expansion may copy in one document.
const ALIAS_EXPANSION_BUDGET: usize = 100_000;
/// The deepest nesting of sequences and mappings accepted (serde_yaml's limit too).
pub(crate) const MAX_NESTING_DEPTH: usize = 128;

/// Parses `source` as exactly one YAML document.
///
/// An empty file, or one holding only comments, is a document whose root is an empty plain
/// scalar, so the decoder reports it as "expected a mapping".
pub fn parse_single_document(source: &str) -> Result<Node, SyntaxError> {
    if source.starts_with('\u{feff}') {
        return Err(SyntaxError {
            location: Location { line: 1, column: 1 },
            message: "the file starts with a UTF-8 byte order mark (BOM)".to_owned(),
            help: "the deployer's YAML parser refuses a BOM: save the file as UTF-8 without one"
                .to_owned(),
        });
    }
    let mut source = std::borrow::Cow::Borrowed(source);
    let builder = loop {
        match build_tree(&source) {
            Ok(builder) => break builder,
            Err(BuildError::Syntax(error)) => return Err(error),
            Err(BuildError::Scan(error)) => match separate_value_with_space(&source, &error) {
                Some(fixed) => source = std::borrow::Cow::Owned(fixed),
                None => return Err(scan_error(error)),
            },
        }
    };
    Ok(builder.root.unwrap_or(Node {
        value: NodeValue::Scalar(Scalar {
            text: String::new(),
            style: ScalarStyle::Plain,
            tag: None,
        }),
        location: Location { line: 1, column: 1 },
    }))
}

/// Why building the tree stopped: the scanner's error, or one of the loader's own.
enum BuildError {
    Scan(ScanError),
    Syntax(SyntaxError),
}

fn build_tree(source: &str) -> Result<TreeBuilder, BuildError> {
    let mut builder = TreeBuilder::default();
    for event in Parser::new_from_str(source) {
        let (event, span) = event.map_err(BuildError::Scan)?;
        builder.on_event(event, span).map_err(BuildError::Syntax)?;
    }
    Ok(builder)
}

/// libyaml (under serde_yaml, so the deployer) accepts a tab as the separator after a key's
/// `:` (`key:<tab>value`); saphyr's scanner refuses it. When that is the scanner's error, this
/// returns the source with that one tab replaced by a space, which changes no value and no
/// position (a tab and a space are one character each), so the caller can parse again.
fn separate_value_with_space(source: &str, error: &ScanError) -> Option<String> {
    if !error.info().contains("':' must be followed by a valid YAML whitespace") {
        return None;
    }
    // The marker is on the first character after the tabs; walk back to the `:`.
    let characters: Vec<(usize, char)> = source.char_indices().collect();
    let mut position = error.marker().index();
    while position > 0 && characters.get(position - 1).is_some_and(|(_, c)| *c == '\t') {
        position -= 1;
    }
    let (_, before) = characters.get(position.checked_sub(1)?)?;
    let (tab_offset, tab) = characters.get(position)?;
    if *before != ':' || *tab != '\t' {
        return None;
    }
    let mut fixed = source.to_owned();
    fixed.replace_range(*tab_offset..*tab_offset + 1, " ");
    Some(fixed)
}

fn location_of(span: Span) -> Location {
    Location { line: span.start.line(), column: span.start.col() + 1 }
}

fn scan_error(error: ScanError) -> SyntaxError {
    let marker = error.marker();
    let info = error.info();
    let help = if info.contains("unprintable") {
        "the file holds control characters or binary data, which YAML does not allow: is it the \
         right file?"
    } else if info.contains("recursion limit") {
        "sequences and mappings nest far deeper than a fleet spec needs: is it the right file?"
    } else if info.contains("tab") {
        "indent with spaces: YAML does not allow tabs for indentation"
    } else if info.contains("':' must be followed") {
        "put a space after the `:` of a key"
    } else if info.contains("unknown anchor") {
        "define the anchor (`&name`) before the alias (`*name`) that uses it"
    } else {
        "fix the YAML syntax at this place"
    };
    SyntaxError {
        location: Location { line: marker.line(), column: marker.col() + 1 },
        message: format!("invalid YAML: {info}"),
        help: help.to_owned(),
    }
}

/// A sequence or mapping being built.
enum OpenCollection {
    Sequence { items: Vec<Node>, location: Location, anchor: usize },
    Mapping { entries: Vec<Entry>, pending_key: Option<Node>, location: Location, anchor: usize },
}

/// Builds the tree from parser events.
#[derive(Default)]
struct TreeBuilder {
    open: Vec<OpenCollection>,
    anchors: std::collections::HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    alias_budget_used: usize,
}

impl TreeBuilder {
    fn on_event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let location = location_of(span);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SyntaxError {
                        location,
                        message: "a second YAML document starts here".to_owned(),
                        help: "a fleet spec is one document: remove this `---` and what follows, \
                               or move it to a file of its own"
                            .to_owned(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                // `!!int` and the verbatim `!<tag:yaml.org,2002:int>` are the same tag.
                let tag = tag.map(|tag| {
                    let full = format!("{}{}", tag.handle, tag.suffix);
                    match full.strip_prefix("tag:yaml.org,2002:") {
                        Some(core) => format!("!!{core}"),
                        None => full,
                    }
                });
                let node = Node {
                    value: NodeValue::Scalar(Scalar { text: text.into_owned(), style, tag }),
                    location,
                };
                self.complete(node, anchor)?;
            }
            Event::SequenceStart(anchor, _tag) => {
                self.check_depth(location)?;
                self.open.push(OpenCollection::Sequence { items: Vec::new(), location, anchor });
            }
            Event::MappingStart(anchor, _tag) => {
                self.check_depth(location)?;
                self.open.push(OpenCollection::Mapping {
                    entries: Vec::new(),
                    pending_key: None,
                    location,
                    anchor,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.open.pop() {
                    Some(OpenCollection::Sequence { items, location, anchor }) => {
                        (Node { value: NodeValue::Sequence(items), location }, anchor)
                    }
                    Some(OpenCollection::Mapping { entries, location, anchor, .. }) => {
                        (Node { value: NodeValue::Mapping(entries), location }, anchor)
                    }
                    None => {
                        return Err(SyntaxError {
                            location,
                            message: "invalid YAML: a collection ends that never started"
                                .to_owned(),
                            help: "fix the YAML syntax at this place".to_owned(),
                        });
                    }
                };
                self.complete(node, anchor)?;
            }
            Event::Alias(anchor) => {
                let Some(target) = self.anchors.get(&anchor) else {
                    return Err(SyntaxError {
                        location,
                        message: "invalid YAML: this alias names no anchor".to_owned(),
                        help: "define the anchor (`&name`) before the alias (`*name`) that uses it"
                            .to_owned(),
                    });
                };
                self.alias_budget_used += count_nodes(target);
                if self.alias_budget_used > ALIAS_EXPANSION_BUDGET {
                    return Err(SyntaxError {
                        location,
                        message: format!(
                            "aliases expand to more than {ALIAS_EXPANSION_BUDGET} nodes"
                        ),
                        help: "a fleet spec needs far fewer: use fewer nested aliases".to_owned(),
                    });
                }
                // The copy takes the alias's place, so that a problem in it is reported where
                // this use of the anchor is, not where the anchor was defined.
                let mut copy = target.clone();
                relocate(&mut copy, location);
                self.complete(copy, 0)?;
            }
        }
        Ok(())
    }

    fn check_depth(&self, location: Location) -> Result<(), SyntaxError> {
        if self.open.len() >= MAX_NESTING_DEPTH {
            return Err(SyntaxError {
                location,
                message: format!("sequences and mappings nest deeper than {MAX_NESTING_DEPTH}"),
                help: "a fleet spec nests only a few levels: check the indentation".to_owned(),
            });
        }
        Ok(())
    }

    /// Places a finished node in the open collection (or as the root) and records its anchor.
    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.open.last_mut() {
            None => self.root = Some(node),
            Some(OpenCollection::Sequence { items, .. }) => items.push(node),
            Some(OpenCollection::Mapping { entries, pending_key, .. }) => {
                match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => entries.push(Entry { key, value: node }),
                }
            }
        }
        Ok(())
    }
}

fn relocate(node: &mut Node, location: Location) {
    node.location = location;
    match &mut node.value {
        NodeValue::Scalar(_) => {}
        NodeValue::Sequence(items) => items.iter_mut().for_each(|item| relocate(item, location)),
        NodeValue::Mapping(entries) => entries.iter_mut().for_each(|entry| {
            relocate(&mut entry.key, location);
            relocate(&mut entry.value, location);
        }),
    }
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        NodeValue::Scalar(_) => 1,
        NodeValue::Sequence(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeValue::Mapping(entries) => {
            1 + entries
                .iter()
                .map(|entry| count_nodes(&entry.key) + count_nodes(&entry.value))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Scalar {
        Scalar { text: text.to_owned(), style, tag: tag.map(str::to_owned) }
    }

    fn plain(text: &str) -> Scalar {
        scalar(text, ScalarStyle::Plain, None)
    }

    #[test]
    fn integers_follow_serde_yaml_grammar() {
        let value = |text: &str| plain(text).as_integer().and_then(Integer::value);
        for (text, expected) in [
            ("10", Some(10)),
            ("0", Some(0)),
            ("-0", Some(0)),
            ("+7", Some(7)),
            ("-5", Some(-5)),
            ("0x10", Some(16)),
            ("0xFF", Some(255)),
            ("+0x10", Some(16)),
            ("-0x10", Some(-16)),
            ("0o17", Some(15)),
            ("0b101", Some(5)),
            ("-0b1", Some(-1)),
            ("0x010", Some(16)),
            ("010", None),
            ("-010", None),
            ("00", None),
            ("0X10", None),
            ("0x", None),
            ("0x-5", None),
            ("+-5", None),
            ("--5", None),
            ("1_000", None),
            ("10.0", None),
            ("1e3", None),
            ("1000-2000", None),
            ("", None),
            ("ten", None),
        ] {
            assert_eq!(value(text), expected, "{text:?}");
        }
        let huge = plain("999999999999999999999999999999999999999999").as_integer().unwrap();
        assert_eq!(huge.magnitude, None);
        let minus_zero = plain("-0").as_integer().unwrap();
        assert!(minus_zero.negative);
    }

    #[test]
    fn integers_must_be_unquoted_unless_a_tagged_literal() {
        assert_eq!(scalar("10", ScalarStyle::SingleQuoted, None).as_integer(), None);
        assert_eq!(scalar("10", ScalarStyle::DoubleQuoted, Some("!!int")).as_integer(), None);
        assert!(scalar("10", ScalarStyle::Plain, Some("!!str")).as_integer().is_some());
        assert!(scalar("10", ScalarStyle::Literal, Some("!!int")).as_integer().is_some());
        assert_eq!(scalar("10", ScalarStyle::Literal, None).as_integer(), None);
    }

    #[test]
    fn booleans_are_yaml_1_2_words_only() {
        for text in ["true", "True", "TRUE"] {
            assert_eq!(plain(text).as_bool(), Some(true), "{text}");
        }
        for text in ["false", "False", "FALSE"] {
            assert_eq!(plain(text).as_bool(), Some(false), "{text}");
        }
        for text in ["yes", "no", "on", "tRUE", "1", ""] {
            assert_eq!(plain(text).as_bool(), None, "{text}");
        }
        assert_eq!(scalar("true", ScalarStyle::SingleQuoted, None).as_bool(), None);
    }

    #[test]
    fn null_is_decided_like_serde_yaml_options() {
        for text in ["~", "null", "Null", "NULL", ""] {
            assert!(plain(text).is_null(), "{text:?}");
        }
        assert!(!plain("nil").is_null());
        assert!(!scalar("null", ScalarStyle::SingleQuoted, None).is_null());
        assert!(!scalar("null", ScalarStyle::Plain, Some("!!str")).is_null());
        assert!(scalar("null", ScalarStyle::Plain, Some("!!null")).is_null());
    }

    #[test]
    fn tree_keeps_raw_text_style_tags_and_one_based_locations() {
        let root = parse_single_document("a: 0x10\nb: !!str 123\n'c': \"x\"\n").unwrap();
        let NodeValue::Mapping(entries) = &root.value else { panic!("{root:?}") };
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].value.as_scalar().unwrap(), &plain("0x10"));
        assert_eq!(entries[0].value.location, Location { line: 1, column: 4 });
        assert_eq!(
            entries[1].value.as_scalar().unwrap(),
            &scalar("123", ScalarStyle::Plain, Some("!!str"))
        );
        assert_eq!(entries[2].key.as_scalar().unwrap().style, ScalarStyle::SingleQuoted);
        assert_eq!(entries[2].key.location, Location { line: 3, column: 1 });
    }

    #[test]
    fn core_tags_read_the_same_in_short_and_verbatim_form() {
        for source in ["a: !!null ~\n", "a: !<tag:yaml.org,2002:null> ~\n"] {
            let root = parse_single_document(source).unwrap();
            let NodeValue::Mapping(entries) = &root.value else { panic!("{root:?}") };
            let value = entries[0].value.as_scalar().unwrap();
            assert_eq!(value.tag.as_deref(), Some("!!null"), "{source}");
            assert!(value.is_null());
        }
        let root = parse_single_document("a: !local x\n").unwrap();
        let NodeValue::Mapping(entries) = &root.value else { panic!("{root:?}") };
        assert_eq!(entries[0].value.as_scalar().unwrap().tag.as_deref(), Some("!local"));
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_decoder() {
        let root = parse_single_document("a: 1\na: 2\n").unwrap();
        let NodeValue::Mapping(entries) = &root.value else { panic!("{root:?}") };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn aliases_copy_the_anchored_node_and_merge_keys_stay_keys() {
        let root = parse_single_document("base: &b {x: 1}\nm:\n  <<: *b\n  y: *b\n").unwrap();
        let NodeValue::Mapping(entries) = &root.value else { panic!("{root:?}") };
        let NodeValue::Mapping(merged) = &entries[1].value.value else { panic!("{root:?}") };
        assert_eq!(merged[0].key.as_scalar().unwrap().text, "<<");
        let NodeValue::Mapping(copy) = &merged[1].value.value else { panic!("{root:?}") };
        assert_eq!(copy[0].value.as_scalar().unwrap().text, "1");
        // The copy is placed at the alias, where this use of the anchor is.
        assert_eq!(merged[1].value.location, Location { line: 4, column: 6 });
        assert_eq!(copy[0].value.location, Location { line: 4, column: 6 });
    }

    #[test]
    fn refuses_bom_tabs_second_document_and_alias_bombs() {
        let error = parse_single_document("\u{feff}tag: x\n").unwrap_err();
        assert_eq!(error.location, Location { line: 1, column: 1 });
        assert!(error.message.contains("byte order mark"));

        let error = parse_single_document("monitoring:\n\tinstance_type: x\n").unwrap_err();
        assert_eq!(error.location.line, 2);
        assert!(error.help.contains("tabs"), "{error:?}");

        let error = parse_single_document("tag: a\n---\ntag: b\n").unwrap_err();
        assert_eq!(error.location, Location { line: 2, column: 1 });
        assert_eq!(error.message, "a second YAML document starts here");

        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..8 {
            let previous = level - 1;
            bomb.push_str(&format!(
                "l{level}: &l{level} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                p = if previous == 0 { "a".to_owned() } else { format!("l{previous}") }
            ));
        }
        let error = parse_single_document(&bomb).unwrap_err();
        assert!(error.message.contains("aliases expand"), "{error:?}");
    }

    #[test]
    fn accepts_a_tab_after_a_colon_as_libyaml_does() {
        let root = parse_single_document("é: x\nb:\t\t1\nc: {d:\t2}\ne: \"f:\tg\"\n").unwrap();
        let NodeValue::Mapping(entries) = &root.value else { panic!("{root:?}") };
        assert_eq!(entries[1].value.as_scalar().unwrap().text, "1");
        assert_eq!(entries[1].value.location, Location { line: 2, column: 5 });
        assert_eq!(entries[3].value.as_scalar().unwrap().text, "f:\tg");
        // A tab inside a plain scalar is still the scanner's error, as in libyaml.
        assert!(parse_single_document("a: x:\ty\n").is_err());
    }

    #[test]
    fn one_document_may_have_markers_and_crlf_line_ends() {
        let root = parse_single_document("%YAML 1.2\r\n---\r\na: 1\r\nb: two\r\n...\r\n").unwrap();
        let NodeValue::Mapping(entries) = &root.value else { panic!("{root:?}") };
        assert_eq!(entries[0].value.as_scalar().unwrap().text, "1");
        assert_eq!(entries[1].value.as_scalar().unwrap().text, "two");
        assert_eq!(entries[1].key.location, Location { line: 4, column: 1 });
    }

    #[test]
    fn refuses_deep_nesting() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let error = parse_single_document(&deep).unwrap_err();
        assert!(error.message.contains("nest deeper"), "{error:?}");
    }

    #[test]
    fn empty_file_is_an_empty_scalar_and_flow_documents_parse() {
        let root = parse_single_document("# only a comment\n").unwrap();
        assert_eq!(root.as_scalar().unwrap(), &plain(""));
        let root = parse_single_document("{\"tag\": \"x\", \"ports\": []}").unwrap();
        assert!(matches!(root.value, NodeValue::Mapping(ref entries) if entries.len() == 2));
    }
}
