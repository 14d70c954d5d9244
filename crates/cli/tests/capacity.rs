//! The capacity keys from the command line, without a cloud: `validate` refuses a type of the
//! wrong architecture for the binary (and none for a script's), and `plan` answers from built-in data when it cannot
//! reach the account, saying so.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use common::*;
use serde_json::Value;

/// A type whose architecture cannot run binaries built for this machine, and one that can.
fn foreign_and_native_types() -> (&'static str, &'static str, &'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("c7g.large", "arm64", "x86_64", "c7i.large"),
        "aarch64" => ("c7i.large", "x86_64", "arm64", "c7g.large"),
        other => panic!("no test types for {other}"),
    }
}

fn spec(instance_types: &str, market: &str) -> String {
    format!(
        "tag: cap\nprovider: aws\nmonitoring:\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n- name: node\n  count: 4\n  region: us-east-1\n  instance_types: [{instance_types}]\n  market: {market}\n  storage_size: 10\n  storage_class: gp3\n  binary: {}\n  config: config.conf\n  profiling: false\nports: []\n",
        fleet_app_bin().display()
    )
}

fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("dashboard.json"), "{}").unwrap();
    fs_err::write(dir.path().join("config.conf"), "port = 9090\n").unwrap();
    dir
}

#[test]
fn validate_refuses_a_type_that_cannot_run_the_binary() {
    let (foreign, foreign_arch, native_arch, native) = foreign_and_native_types();
    let dir = workdir();
    fs_err::write(dir.path().join("fleet.yaml"), spec(&format!("{native}, {foreign}"), "spot"))
        .unwrap();
    let output = offline(dir.path(), &["validate", "--config", "fleet.yaml"]);
    assert_eq!(output.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = format!(
        "fleet.yaml:12:31: error: instances[0].instance_types[1]: `{foreign}` is {foreign_arch}, but the binary {} is {native_arch}: it cannot run there",
        fleet_app_bin().display()
    );
    assert!(stdout.contains(&expected), "{stdout}");
    // Only the native type: valid.
    fs_err::write(dir.path().join("fleet.yaml"), spec(native, "spot")).unwrap();
    let output = offline(dir.path(), &["validate", "--config", "fleet.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
}

/// A script (`#!`) runs wherever its interpreter does: no type is refused for its architecture.
#[test]
fn validate_lets_a_script_binary_run_on_either_architecture() {
    let (foreign, _, _, native) = foreign_and_native_types();
    let dir = workdir();
    let script = dir.path().join("node.sh");
    fs_err::write(&script, "#!/bin/sh\nexec sleep 100000\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = spec(&format!("{native}, {foreign}"), "spot")
        .replace(&fleet_app_bin().display().to_string(), "node.sh");
    fs_err::write(dir.path().join("fleet.yaml"), text).unwrap();
    let output = offline(dir.path(), &["validate", "--config", "fleet.yaml"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("cannot run there"), "{stdout}");
}

#[test]
fn plan_answers_from_built_in_data_without_an_account_and_says_so() {
    let (_, _, _, native) = foreign_and_native_types();
    let dir = workdir();
    fs_err::write(dir.path().join("fleet.yaml"), spec(native, "on-demand")).unwrap();
    let output = offline(dir.path(), &["plan", "--config", "fleet.yaml", "--output", "json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["machines"], 5, "{report:#}");
    let node = report["groups"].as_array().unwrap().iter().find(|g| g["name"] == "node").unwrap();
    let placements = node["placements"].as_array().unwrap();
    assert_eq!(placements.len(), 1, "one unnamed zone without the catalog: {node:#}");
    assert_eq!(placements[0]["count"], 4);
    assert_eq!(placements[0]["instance_type"], native);
    assert_eq!(placements[0]["market"], "on-demand");
    assert_eq!(placements[0]["price_source"]["source"], "built-in");
    // The built-in us-east-1 price, four times.
    let table = include_str!("../../capacity/data/ondemand-us-east-1.csv");
    let price: f64 = table
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{native},")))
        .unwrap()
        .parse()
        .unwrap();
    let per_hour = node["usd_per_hour"].as_f64().unwrap();
    assert!((per_hour - 4.0 * price).abs() < 1e-4, "{per_hour} vs 4 × {price}");
    let monthly = report["usd_per_month"].as_f64().unwrap();
    assert!((monthly - report["usd_per_hour"].as_f64().unwrap() * 730.0).abs() < 0.01);
    let notes = report["notes"].to_string();
    assert!(notes.contains("could not read the account's instance catalog"), "{notes}");
    assert!(!dir.path().join("home/deployments").exists(), "plan changes nothing");

    // The table says the same for people.
    let output = offline(dir.path(), &["plan", "--config", "fleet.yaml"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("GROUP"), "{table}");
    assert!(table.contains(&format!("4 × {native} on-demand")), "{table}");
    assert!(table.contains("note: could not read the account's instance catalog"), "{table}");
}

#[test]
fn a_local_plan_costs_nothing_and_create_says_where_machines_go() {
    let fleet = TestFleet::new("local-plan", FleetOptions { count: 2, ..FleetOptions::default() });
    let output = fleet.run_ok(&["plan", "--config", &fleet.spec_arg(), "--output", "json"]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["machines"], 3);
    assert_eq!(report["usd_per_hour"], 0.0);
    assert_eq!(report["provider"], "local");
    let output = fleet.run_ok(&["create", "--config", &fleet.spec_arg()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("3 machines in 1 region (node: 2 on-demand in 1 zone)"), "{stderr}");
}
