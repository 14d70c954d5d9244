//! A small YAML writer for the monitoring configs: a serializable value (a typed config)
//! written as block YAML, keys in the order the type declares them, every string
//! double-quoted with JSON's escapes (a subset of YAML's), so that no value can read back as
//! another type or break the structure. Keys that are plain identifiers stay bare.
//!
//! The value goes through JSON text, which keeps a struct's field order, and is read back into
//! [`Node`], which keeps it too (`serde_json::Value` would sort the keys).

use std::fmt;

use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// `value` as a YAML document, ending with a newline.
pub(crate) fn to_yaml(value: &impl Serialize) -> String {
    let json = serde_json::to_string(value).expect("a config of strings and numbers serializes");
    let node: Node = serde_json::from_str(&json).expect("JSON just written reads back");
    let mut out = String::new();
    match &node {
        Node::Map(entries) if !entries.is_empty() => write_mapping(&mut out, entries, 0),
        Node::Seq(items) if !items.is_empty() => write_sequence(&mut out, items, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

/// A JSON value that keeps its keys' order.
#[derive(Debug, PartialEq)]
enum Node {
    /// Null, a boolean or a number, as JSON writes it.
    Plain(String),
    String(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }
    fn visit_bool<E>(self, value: bool) -> Result<Node, E> {
        Ok(Node::Plain(value.to_string()))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Node, E> {
        Ok(Node::Plain(value.to_string()))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Node, E> {
        Ok(Node::Plain(value.to_string()))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Node, E> {
        Ok(Node::Plain(
            serde_json::Number::from_f64(value).map_or("null".to_owned(), |n| n.to_string()),
        ))
    }
    fn visit_str<E>(self, value: &str) -> Result<Node, E> {
        Ok(Node::String(value.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Plain("null".to_owned()))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Plain("null".to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Node>()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

fn write_mapping(out: &mut String, entries: &[(String, Node)], indent: usize) {
    for (key, value) in entries {
        out.push_str(&" ".repeat(indent));
        out.push_str(&plain_key(key));
        out.push(':');
        write_nested(out, value, indent);
    }
}

fn write_sequence(out: &mut String, items: &[Node], indent: usize) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Node::Map(entries) if !entries.is_empty() => {
                // The first key on the dash's line, the others under it.
                for (position, (key, value)) in entries.iter().enumerate() {
                    if position == 0 {
                        out.push(' ');
                    } else {
                        out.push_str(&" ".repeat(indent + 2));
                    }
                    out.push_str(&plain_key(key));
                    out.push(':');
                    write_nested(out, value, indent + 2);
                }
            }
            Node::Seq(inner) if !inner.is_empty() => {
                out.push('\n');
                write_sequence(out, inner, indent + 2);
            }
            scalar => {
                out.push(' ');
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
    }
}

/// What follows `key:`: a scalar on the same line, a collection below it.
fn write_nested(out: &mut String, value: &Node, indent: usize) {
    match value {
        Node::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            write_mapping(out, entries, indent + 2);
        }
        Node::Seq(items) if !items.is_empty() => {
            out.push('\n');
            write_sequence(out, items, indent);
        }
        scalar => {
            out.push(' ');
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

/// A scalar, or an empty collection, in flow style.
fn inline(value: &Node) -> String {
    match value {
        Node::Plain(text) => text.clone(),
        Node::String(text) => quoted(text),
        Node::Map(_) => "{}".to_owned(),
        Node::Seq(_) => "[]".to_owned(),
    }
}

/// A key as it is when it is a plain identifier no YAML reader takes for anything else,
/// else quoted.
fn plain_key(key: &str) -> String {
    const SPECIAL: &[&str] = &["true", "false", "null", "yes", "no", "on", "off", "y", "n"];
    let identifier = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier && !SPECIAL.contains(&key.to_ascii_lowercase().as_str()) {
        key.to_owned()
    } else {
        quoted(key)
    }
}

fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_values_are_block_yaml_in_declared_order_with_quoted_strings() {
        #[derive(Serialize)]
        struct Job {
            name: &'static str,
            files: Vec<&'static str>,
            n: u32,
            empty: Vec<u32>,
        }
        #[derive(Serialize)]
        struct Root {
            zeta: bool,
            global: std::collections::BTreeMap<&'static str, &'static str>,
            jobs: Vec<Job>,
            ratio: f64,
        }
        let value = Root {
            zeta: true,
            global: [("scrape_interval", "15s"), ("b", "")].into(),
            jobs: vec![
                Job { name: "a: b", files: vec!["x.json", "y.json"], n: 3, empty: vec![] },
                Job { name: "line\nbreak", files: vec![], n: 0, empty: vec![] },
            ],
            ratio: 0.5,
        };
        let expected = r#"zeta: true
global:
  b: ""
  scrape_interval: "15s"
jobs:
- name: "a: b"
  files:
  - "x.json"
  - "y.json"
  "n": 3
  empty: []
- name: "line\nbreak"
  files: []
  "n": 0
  empty: []
ratio: 0.5
"#;
        assert_eq!(to_yaml(&value), expected);
    }
}
