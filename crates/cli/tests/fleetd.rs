//! `flotilla fleetd check-config`: ec2fleetd's README configs accepted with what they ask for;
//! a config with many mistakes refused with every one located; JSON for scripts.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/tests/fixtures/fleetd").join(name)
}

fn check(args: &[&str]) -> std::process::Output {
    Command::new(flotilla_bin()).args(["fleetd", "check-config"]).args(args).output().unwrap()
}

#[test]
fn a_readme_config_is_valid_and_shows_what_it_asks_for() {
    let output = check(&[fixture("bitcoin-nodes.jsonc").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "bitcoin-nodes.jsonc: valid (0 warnings)",
        "domain btcn.example.com",
        "p: a free volume of pool btc-nodes in the machine's zone",
        "hook once attached: /bin/mount /mnt/btc   exit codes {0}",
        "record node-{ami-i}.btcn.example.com. A",
        "  on interrupted:\n    /bin/systemctl stop bitcoin.service   exit codes {0}\n    /bin/umount -l /mnt/btc   exit codes {0}\n",
        "AWS calls: ec2:DescribeVolumes, ec2:AttachVolume, ec2:CreateTags, ec2:DetachVolume, route53:ListResourceRecordSets, route53:ChangeResourceRecordSets, route53:GetChange, sns:Publish",
        "hostname (line 5): ec2fleetd reads only `set-hostname`",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

#[test]
fn mistakes_are_all_reported_with_an_error_status() {
    let output = check(&[fixture("mistakes.jsonc").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("mistakes.jsonc: 18 errors, 1 warning"), "{stdout}");
    assert!(
        stdout.contains(
            ":6:39: error: domains.web.attach-volume[0].source: `z` is not a volume source"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("AWS calls"), "no plan for an invalid config: {stdout}");
}

#[test]
fn json_output_carries_the_config_actions_and_differences() {
    let output = check(&[fixture("game-server.jsonc").to_str().unwrap(), "--output", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["valid"], true);
    assert_eq!(json["config"]["domains"][0]["attach_volume"][0]["source"][0], "fixed");
    assert!(json["aws_actions"].as_array().unwrap().iter().any(|a| a == "sns:Publish"));
    assert_eq!(json["differences"].as_array().unwrap().len(), 2);
    // The instance role's policy for standalone fleetd: exactly the config's services.
    let statements = json["iam_policy"]["Statement"].as_array().expect("a policy");
    let actions: Vec<String> = statements
        .iter()
        .flat_map(|s| match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(list) => {
                list.iter().map(|a| a.as_str().unwrap().to_owned()).collect()
            }
            other => panic!("an action: {other}"),
        })
        .collect();
    for needed in ["ec2:AttachVolume", "sns:Publish"] {
        assert!(actions.iter().any(|a| a == needed), "{needed} in {actions:?}");
    }
    assert!(!actions.iter().any(|a| a.starts_with("iam:") || a == "*"), "{actions:?}");
    let missing = check(&["/nonexistent/fleetd.jsonc"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stdout)
            .contains("cannot read the ec2fleetd config: the file does not exist")
    );
}

/// A spec's `lifecycle` named by path is checked with the spec's files: its errors are reported
/// in that file, at its lines, after the spec's.
#[test]
fn validate_checks_a_lifecycle_file_named_by_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let app = fleet_app_bin();
    fs_err::write(dir.path().join("app.conf"), "x\n").unwrap();
    fs_err::write(dir.path().join("dashboard.json"), "{}").unwrap();
    fs_err::write(
        dir.path().join("ops.jsonc"),
        "{domains: {d: {exec: [{on: ['startd'], lines: [{argv: ['true']}]}]}}}\n",
    )
    .unwrap();
    fs_err::write(
        dir.path().join("spec.yaml"),
        format!(
            "tag: lc\nprovider: local\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: n, region: local, instance_type: t3.small, storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false, lifecycle: ops.jsonc}}\nports: []\n",
            app.display()
        ),
    )
    .unwrap();
    let output = Command::new(flotilla_bin())
        .args(["validate", "--config", "spec.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("spec.yaml:5:"), "the spec's line: {stdout}");
    assert!(stdout.contains("instances[0].lifecycle: the ec2fleetd config"), "{stdout}");
    assert!(
        stdout.contains("ops.jsonc:1:29: error: domains.d.exec[0].on[0]: unknown event `startd`"),
        "the file's own line: {stdout}"
    );
    fs_err::write(
        dir.path().join("ops.jsonc"),
        "{domains: {d: {exec: [{on: ['started'], lines: [{argv: ['true']}]}]}}}\n",
    )
    .unwrap();
    let output = Command::new(flotilla_bin())
        .args(["validate", "--config", "spec.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
}

/// A config with only exec hooks needs no AWS call, and says so.
#[test]
fn an_exec_only_config_needs_no_aws_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hooks.json5");
    fs_err::write(
        &path,
        r#"{domains: {app: {exec: [{on: ["interrupted"], lines: [{argv: ["/usr/local/bin/drain", "{name}"], timeout: 30}]}]}}}"#,
    )
    .unwrap();
    let output = check(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("  on interrupted:\n    /usr/local/bin/drain {name}   exit codes {0}, killed after 30s\n"), "{stdout}");
    assert!(stdout.contains("\nAWS calls: none\n"), "{stdout}");
}
