//! Helpers shared by the spec tests: a small valid spec and line edits on it.

#![allow(dead_code, reason = "each test binary uses a different part of the helpers")]

use std::path::Path;

use flotilla_spec::{SpecDocument, SpecErrors, parse_fleet_spec};

/// A minimal spec the deployer accepts. Monitoring keys are indented by 2, instance keys by 4,
/// port keys by 4 after `- `, so every line is unique and edits can name lines exactly.
pub const BASE: &str = "\
tag: demo
monitoring:
  instance_type: t4g.small
  storage_size: 20
  storage_class: gp3
  dashboard: dashboard.json
instances:
  - name: node
    region: us-east-1
    instance_type: c7g.large
    storage_size: 10
    storage_class: gp3
    binary: target/release/node
    config: node.conf
    profiling: false
ports:
  - protocol: tcp
    port: 4545
    cidr: 0.0.0.0/0
";

/// `BASE` with whole lines replaced: each `(line, replacement)` names one line exactly
/// (with its indentation); the replacement may hold several lines, or be empty to delete it.
pub fn edited(edits: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = BASE.lines().map(str::to_owned).collect();
    for (line, replacement) in edits {
        let positions: Vec<usize> =
            lines.iter().enumerate().filter(|(_, l)| l == line).map(|(i, _)| i).collect();
        assert_eq!(positions.len(), 1, "the edit must name exactly one line: {line:?}");
        lines[positions[0]] = (*replacement).to_owned();
    }
    let mut text: String =
        lines.into_iter().filter(|line| !line.is_empty()).collect::<Vec<_>>().join("\n");
    text.push('\n');
    text
}

pub fn parse(source: &str) -> Result<SpecDocument, SpecErrors> {
    parse_fleet_spec(source, Path::new("fleet.yaml"))
}

/// The rendered errors of a spec that must fail.
pub fn errors_of(source: &str) -> String {
    match parse(source) {
        Ok(document) => panic!("expected errors, the spec parsed: {:#?}\n{source}", document.spec),
        Err(errors) => errors.to_string(),
    }
}
