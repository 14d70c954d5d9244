//! The spec's `boot:` on the local provider, end to end with the real `flotilla` binary, real
//! agents and the example app: files and commands are done before the binary starts (the binary
//! checks), kernel settings are reported as not applicable, and a failing critical command
//! keeps the binary from starting and shows in `status`, in the table and in JSON.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::Value;

/// A fleet of one machine whose binary is `wrapper.sh`: it checks that the boot file and the
/// command's mark are there (its working directory is the machine's `work/`, the command's is
/// the machine's directory, files land under its `root/`), copies the file, then runs the
/// example app.
fn fleet_with_boot(tag: &str, commands: &str) -> TestFleet {
    let fleet = TestFleet::new(tag, FleetOptions { count: 1, ..FleetOptions::default() });
    let wrapper = fleet.work.path().join("wrapper.sh");
    fs_err::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             [ -f ../root/etc/fleet/extra.conf ] || {{ echo 'the boot file is missing' >&2; exit 7; }}\n\
             [ -f ../prepared ] || {{ echo 'the boot command did not run' >&2; exit 8; }}\n\
             cp ../root/etc/fleet/extra.conf seen.conf\n\
             exec '{}' \"$@\"\n",
            fleet_app_bin().display()
        ),
    )
    .expect("the wrapper is written");
    fs_err::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("the wrapper is made executable");
    let spec = format!(
        "tag: {tag}\nprovider: local\nmonitoring:\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n- name: node\n  count: 1\n  region: local\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: config.conf\n  profiling: false\n  health:\n    http:\n      port: 9090\n      path: /health\n  boot:\n    files:\n    - path: /etc/fleet/extra.conf\n      mode: \"0640\"\n      content: \"greeting = boot\\n\"\n    sysctl:\n      net.core.somaxconn: \"4096\"\n    commands:\n{commands}ports: []\nupdate:\n  batch_size: 1\n  health_deadline: 20s\n",
        binary = wrapper.display(),
    );
    fs_err::write(&fleet.spec, spec).expect("the spec is written");
    fleet
}

fn status_json(fleet: &TestFleet) -> Vec<Value> {
    let output = fleet.run(&["status", "--tag", &fleet.tag, "--output", "json"]);
    serde_json::from_slice(&output.stdout).expect("status prints JSON")
}

fn steps(row: &Value) -> Vec<(String, String, String)> {
    row["boot"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("a boot report: {row}"))
        .iter()
        .map(|step| {
            let text = |key: &str| step[key].as_str().unwrap_or_default().to_owned();
            (text("kind"), text("target"), text("outcome"))
        })
        .collect()
}

#[test]
fn boot_files_and_commands_are_done_before_the_binary_starts() {
    let fleet = fleet_with_boot(
        "boot-ok",
        "    - argv: [sh, -c, \"echo prepared by $FLOTILLA_NAME > prepared\"]\n",
    );
    let rows = fleet.create();
    let node = row(&rows, "node-0");
    assert_eq!(node["health"], "healthy", "{node}");

    let dir = fleet.instance_dir("node-0");
    assert_eq!(fs_err::read_to_string(dir.join("work/seen.conf")).unwrap(), "greeting = boot\n");
    assert_eq!(mode(&dir.join("root/etc/fleet/extra.conf")), 0o640);
    assert_eq!(fs_err::read_to_string(dir.join("prepared")).unwrap(), "prepared by node-0\n");

    let status = status_json(&fleet);
    let node = row(&status, "node-0");
    assert_eq!(node["boot"]["blocked"], false, "{node}");
    let command = "sh -c echo prepared by $FLOTILLA_NAME > prepared";
    assert_eq!(
        steps(node),
        [
            ("file", "/etc/fleet/extra.conf", "applied"),
            ("sysctl", "net.core.somaxconn=4096", "not-applicable"),
            ("command", command, "applied"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
    assert_eq!(
        node["boot"]["steps"][1]["message"], "not applicable on the local provider",
        "{node}"
    );
    // The table has no note for a boot that went well.
    let output = fleet.run_ok(&["status", "--tag", &fleet.tag]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!table.contains("boot"), "{table}");
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
}

#[test]
fn a_failing_critical_boot_command_keeps_the_binary_from_starting_and_shows_in_status() {
    let fleet = fleet_with_boot(
        "boot-fails",
        "    - argv: [sh, -c, \"echo prepared > prepared\"]\n    - argv: [sh, -c, \"echo probing /dev/nvme1; echo 'mount: no such device' >&2; exit 4\"]\n",
    );
    let spec = fleet.spec_arg();
    let output = fleet.run(&["create", "--config", &spec]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node-0"), "{stderr}");
    assert!(stderr.contains("exited with code 4"), "{stderr}");
    let dir = fleet.instance_dir("node-0");
    assert!(!dir.join("work/seen.conf").exists(), "the binary never started");

    let status = status_json(&fleet);
    let node = row(&status, "node-0");
    assert_eq!(node["pid"], Value::Null, "{node}");
    assert_eq!(node["boot"]["blocked"], true, "{node}");
    let failed = &node["boot"]["steps"][3];
    assert_eq!(
        (failed["outcome"].as_str(), failed["critical"].as_bool()),
        (Some("failed"), Some(true))
    );
    assert_eq!(failed["exit_code"], 4);
    assert_eq!(failed["output"], "probing /dev/nvme1\nmount: no such device\n", "{node}");

    let output = fleet.run(&["status", "--tag", &fleet.tag]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("failed: exited with code 4 (the binary was not started)"), "{table}");
    assert!(table.contains("  | mount: no such device"), "{table}");
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
}
