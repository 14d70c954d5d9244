//! The commonware deployer's parser table (refs/commonware-deployer.md §1, "What the parser
//! accepts"), row by row: what it accepts flotilla accepts with the same value, what it rejects
//! flotilla rejects. Rows the deployer accepts but that fail later at AWS (`storage_size: -5`,
//! `cidr: nonsense`, an unknown storage class) are refused by flotilla before any cloud call;
//! those rows say so.

mod common;

use common::{BASE, edited, parse};
use flotilla_spec::{FleetSpec, Severity};

/// What flotilla must do with a row's input.
enum Outcome {
    /// Parses without errors; the check holds on the spec; this many warnings.
    Accepted { check: fn(&FleetSpec) -> bool, warnings: usize },
    /// Fails with an error at `field` whose message contains `message`.
    Rejected { field: &'static str, message: &'static str },
}

use Outcome::{Accepted, Rejected};

struct Row {
    input: &'static str,
    source: String,
    outcome: Outcome,
}

fn row(input: &'static str, source: String, outcome: Outcome) -> Row {
    Row { input, source, outcome }
}

fn accepted(check: fn(&FleetSpec) -> bool) -> Outcome {
    Accepted { check, warnings: 0 }
}

const ANCHORED_SPEC: &str = "\
tag: demo
monitoring: &monitoring
  instance_type: t4g.small
  storage_size: 20
  storage_class: gp3
  dashboard: dashboard.json
instances:
  - &node
    name: node
    region: us-east-1
    instance_type: c7g.large
    storage_size: 10
    storage_class: gp3
    binary: target/release/node
    config: node.conf
    profiling: false
  - name: other
    region: *region
    instance_type: c7g.large
    storage_size: 10
    storage_class: gp3
    binary: target/release/node
    config: node.conf
    profiling: false
ports: []
";

fn rows() -> Vec<Row> {
    vec![
        // Unknown keys at any level are accepted and ignored (flotilla warns).
        row(
            "`extra: 1` at the top, `spot: true` in an instance",
            edited(&[
                ("tag: demo", "tag: demo\nextra: 1"),
                ("    profiling: false", "    profiling: false\n    spot: true"),
            ]),
            Accepted { check: |spec| spec.instances.len() == 1, warnings: 2 },
        ),
        // ports: required, may be [], null rejected.
        row(
            "`ports` missing",
            edited(&[
                ("ports:", ""),
                ("  - protocol: tcp", ""),
                ("    port: 4545", ""),
                ("    cidr: 0.0.0.0/0", ""),
            ]),
            Rejected { field: "ports", message: "missing required key `ports`" },
        ),
        row(
            "`ports: null`",
            edited(&[
                ("ports:", "ports: null"),
                ("  - protocol: tcp", ""),
                ("    port: 4545", ""),
                ("    cidr: 0.0.0.0/0", ""),
            ]),
            Rejected { field: "ports", message: "expected a sequence, found null" },
        ),
        row(
            "`ports: ~`",
            edited(&[
                ("ports:", "ports: ~"),
                ("  - protocol: tcp", ""),
                ("    port: 4545", ""),
                ("    cidr: 0.0.0.0/0", ""),
            ]),
            Rejected { field: "ports", message: "expected a sequence, found null (`~`)" },
        ),
        row(
            "`ports: []`",
            edited(&[
                ("ports:", "ports: []"),
                ("  - protocol: tcp", ""),
                ("    port: 4545", ""),
                ("    cidr: 0.0.0.0/0", ""),
            ]),
            accepted(|spec| spec.ports.is_empty()),
        ),
        row(
            "`instances: []`",
            edited(&[
                ("instances:", "instances: []"),
                ("  - name: node", ""),
                ("    region: us-east-1", ""),
                ("    instance_type: c7g.large", ""),
                ("    storage_size: 10", ""),
                ("    storage_class: gp3", ""),
                ("    binary: target/release/node", ""),
                ("    config: node.conf", ""),
                ("    profiling: false", ""),
            ]),
            accepted(|spec| spec.instances.is_empty()),
        ),
        // profiling and dashboard are required.
        row(
            "`profiling` missing",
            edited(&[("    profiling: false", "")]),
            Rejected {
                field: "instances[0].profiling",
                message: "missing required key `profiling`",
            },
        ),
        row(
            "`dashboard` missing",
            edited(&[("  dashboard: dashboard.json", "")]),
            Rejected { field: "monitoring.dashboard", message: "missing required key `dashboard`" },
        ),
        // Booleans: YAML 1.2 words only, unquoted.
        row(
            "`profiling: True`",
            edited(&[("    profiling: false", "    profiling: True")]),
            accepted(|spec| spec.instances[0].profiling),
        ),
        row(
            "`profiling: TRUE`",
            edited(&[("    profiling: false", "    profiling: TRUE")]),
            accepted(|spec| spec.instances[0].profiling),
        ),
        row(
            "`profiling: FALSE`",
            edited(&[("    profiling: false", "    profiling: FALSE")]),
            accepted(|spec| !spec.instances[0].profiling),
        ),
        row(
            "`profiling: yes`",
            edited(&[("    profiling: false", "    profiling: yes")]),
            Rejected {
                field: "instances[0].profiling",
                message: "expected true or false, found `yes`",
            },
        ),
        row(
            "`profiling: 'true'`",
            edited(&[("    profiling: false", "    profiling: 'true'")]),
            Rejected {
                field: "instances[0].profiling",
                message: "expected true or false, found the quoted string 'true'",
            },
        ),
        // Strings take any scalar as written.
        row(
            "`tag: 12345`",
            edited(&[("tag: demo", "tag: 12345")]),
            accepted(|spec| spec.tag == "12345"),
        ),
        row(
            "`tag: true`",
            edited(&[("tag: demo", "tag: true")]),
            accepted(|spec| spec.tag == "true"),
        ),
        row(
            "`tag: null`",
            edited(&[("tag: demo", "tag: null")]),
            accepted(|spec| spec.tag == "null"),
        ),
        row(
            "`tag: !!str 123`",
            edited(&[("tag: demo", "tag: !!str 123")]),
            accepted(|spec| spec.tag == "123"),
        ),
        // Integers.
        row(
            "`storage_size: 0x10`",
            edited(&[("    storage_size: 10", "    storage_size: 0x10")]),
            accepted(|spec| spec.instances[0].storage_size == 16),
        ),
        row(
            "`storage_size: -5` (the deployer's parser accepts it and AWS refuses it later; flotilla refuses it first)",
            edited(&[("    storage_size: 10", "    storage_size: -5")]),
            Rejected {
                field: "instances[0].storage_size",
                message: "storage_size must be at least 1 GiB, found -5",
            },
        ),
        row(
            "`storage_size: '10'`",
            edited(&[("    storage_size: 10", "    storage_size: '10'")]),
            Rejected {
                field: "instances[0].storage_size",
                message: "expected an integer, found the quoted string '10'",
            },
        ),
        row(
            "`storage_size: 10.0`",
            edited(&[("    storage_size: 10", "    storage_size: 10.0")]),
            Rejected {
                field: "instances[0].storage_size",
                message: "expected an integer, found `10.0`",
            },
        ),
        row(
            "`storage_size: 3000000000`",
            edited(&[("    storage_size: 10", "    storage_size: 3000000000")]),
            Rejected {
                field: "instances[0].storage_size",
                message: "`3000000000` does not fit in a 32-bit signed integer",
            },
        ),
        // Options: absent or null is None.
        row(
            "`storage_iops: null`",
            edited(&[("    storage_size: 10", "    storage_size: 10\n    storage_iops: null")]),
            accepted(|spec| spec.instances[0].storage_iops.is_none()),
        ),
        row(
            "`availability_zone_group: null`",
            edited(&[(
                "    region: us-east-1",
                "    region: us-east-1\n    availability_zone_group: null",
            )]),
            accepted(|spec| spec.instances[0].availability_zone_group.is_none()),
        ),
        row(
            "`storage_iops: '3000'`",
            edited(&[("    storage_size: 10", "    storage_size: 10\n    storage_iops: '3000'")]),
            Rejected {
                field: "instances[0].storage_iops",
                message: "expected an integer, found the quoted string '3000'",
            },
        ),
        // Ports.
        row(
            "`port: 70000`",
            edited(&[("    port: 4545", "    port: 70000")]),
            Rejected {
                field: "ports[0].port",
                message: "`70000` is not a port number (1 to 65535)",
            },
        ),
        row(
            "`port: -1`",
            edited(&[("    port: 4545", "    port: -1")]),
            Rejected { field: "ports[0].port", message: "`-1` is not a port number (1 to 65535)" },
        ),
        row(
            "`port: '4545'`",
            edited(&[("    port: 4545", "    port: '4545'")]),
            Rejected {
                field: "ports[0].port",
                message: "expected an integer, found the quoted string '4545'",
            },
        ),
        row(
            "`port: 1000-2000`",
            edited(&[("    port: 4545", "    port: 1000-2000")]),
            Rejected { field: "ports[0].port", message: "expected an integer, found `1000-2000`" },
        ),
        row(
            "`protocol: TCP`",
            edited(&[("  - protocol: tcp", "  - protocol: TCP")]),
            accepted(|spec| spec.ports[0].protocol == "TCP"),
        ),
        row(
            "`cidr: nonsense` (the deployer passes it to AWS unchecked; flotilla refuses it first)",
            edited(&[("    cidr: 0.0.0.0/0", "    cidr: nonsense")]),
            Rejected { field: "ports[0].cidr", message: "`nonsense` is not a CIDR block" },
        ),
        // Duplicates, documents, anchors, merge keys, JSON.
        row(
            "duplicate key",
            edited(&[("tag: demo", "tag: demo\ntag: again")]),
            Rejected { field: "tag", message: "`tag` is given twice (first on line 1)" },
        ),
        row(
            "two YAML documents",
            format!("{BASE}---\n{BASE}"),
            Rejected { field: "", message: "a second YAML document starts here" },
        ),
        row(
            "anchors and aliases",
            ANCHORED_SPEC.replace("    region: us-east-1", "    region: &region us-east-1"),
            accepted(|spec| spec.instances[1].region == "us-east-1"),
        ),
        row(
            "an alias for a whole instance, then the same name twice",
            ANCHORED_SPEC
                .replace("    region: *region", "    region: us-east-1")
                .replace("ports: []", "  - *node\nports: []"),
            Rejected {
                field: "instances[2].name",
                message: "instance name `node` is already taken: instances[0] (line 9)",
            },
        ),
        row(
            "merge key `<<` is not applied, so merged fields are missing",
            edited(&[
                ("    profiling: false", "    profiling: false\n  - <<: *first\n    name: second"),
                ("  - name: node", "  - &first\n    name: node"),
            ]),
            Rejected { field: "instances[1].region", message: "missing required key `region`" },
        ),
        row(
            "JSON (flow) document",
            r#"{"tag": "demo",
                "monitoring": {"instance_type": "t4g.small", "storage_size": 20,
                               "storage_class": "gp3", "dashboard": "dashboard.json"},
                "instances": [{"name": "node", "region": "us-east-1",
                               "instance_type": "c7g.large", "storage_size": 10,
                               "storage_class": "gp3", "binary": "node", "config": "node.conf",
                               "profiling": false}],
                "ports": [{"protocol": "tcp", "port": 4545, "cidr": "0.0.0.0/0"}]}"#
                .to_owned(),
            accepted(|spec| spec.instances[0].storage_size == 10 && spec.ports[0].port == 4545),
        ),
        row(
            "UTF-8 byte order mark",
            format!("\u{feff}{BASE}"),
            Rejected { field: "", message: "the file starts with a UTF-8 byte order mark (BOM)" },
        ),
        row(
            "tab indentation",
            edited(&[("  instance_type: t4g.small", "\tinstance_type: t4g.small")]),
            Rejected { field: "", message: "invalid YAML: tabs disallowed" },
        ),
        row(
            "a tab between a key's `:` and its value (libyaml accepts it)",
            edited(&[("  storage_size: 20", "  storage_size:\t20")]),
            accepted(|spec| spec.monitoring.storage_size == 20),
        ),
        // Values the deployer's parser accepts and AWS judges later.
        row(
            "unknown instance type (left to the provider)",
            edited(&[("    instance_type: c7g.large", "    instance_type: z9.huge")]),
            accepted(|spec| spec.instances[0].instance_type.as_deref() == Some("z9.huge")),
        ),
        row(
            "upper-case region (left to the provider)",
            edited(&[("    region: us-east-1", "    region: US-EAST-1")]),
            accepted(|spec| spec.instances[0].region == "US-EAST-1"),
        ),
        row(
            "unknown storage class (the deployer refuses it at create time, before any resource)",
            edited(&[("    storage_class: gp3", "    storage_class: gp4")]),
            Rejected {
                field: "instances[0].storage_class",
                message: "unknown storage class `gp4`",
            },
        ),
    ]
}

#[test]
fn deployer_parse_table() {
    let mut failures = Vec::new();
    for Row { input, source, outcome } in rows() {
        let result = parse(&source);
        match (&outcome, &result) {
            (Accepted { check, warnings }, Ok(document)) => {
                if !check(&document.spec) {
                    failures.push(format!("{input}: accepted, but the value is wrong"));
                }
                if document.warnings.len() != *warnings {
                    failures.push(format!(
                        "{input}: expected {warnings} warnings, got {:#?}",
                        document.warnings
                    ));
                }
            }
            (Accepted { .. }, Err(errors)) => {
                failures.push(format!("{input}: expected to be accepted, got\n{errors}"));
            }
            (Rejected { field, message }, Err(errors)) => {
                let matching = errors.diagnostics.iter().any(|diagnostic| {
                    diagnostic.severity == Severity::Error
                        && diagnostic.field == *field
                        && diagnostic.message.contains(message)
                });
                if !matching {
                    failures.push(format!(
                        "{input}: expected an error at `{field}` containing {message:?}, got\n{errors}"
                    ));
                }
            }
            (Rejected { .. }, Ok(document)) => {
                failures
                    .push(format!("{input}: expected to be rejected, parsed {:?}", document.spec));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn base_spec_is_valid() {
    let document = parse(BASE).unwrap();
    assert!(document.warnings.is_empty());
    assert_eq!(document.spec.instances[0].name, "node");
}
