//! A lifecycle with volumes, Route 53 records and notifications needs a cloud on the machine:
//! on the local provider `validate`, `plan` and `create` refuse it before anything runs, each
//! key located at its line in the spec; on AWS (where the agent runs them) `validate` accepts
//! it.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use common::*;

/// A spec for `provider` whose one instance entry's lifecycle (lines 18 to 37) has a volume
/// (line 22), a record (line 26), an exec hook and a notification (line 34).
fn workdir(provider: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("dashboard.json"), "{}").unwrap();
    fs_err::write(dir.path().join("config.conf"), "port = 9090\n").unwrap();
    let spec = format!(
        "tag: lc\n\
         provider: {provider}\n\
         monitoring:\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\n\
         instances:\n\
         - name: node\n  count: 2\n  region: us-east-1\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: config.conf\n  profiling: false\n  lifecycle:\n    domains:\n      btcn.example.com:\n        attach-volume:\n        - device: /dev/xvdf\n          source: p\n          pool-name: btc-nodes\n        update-route53:\n        - hostedzone: Z0123456789ABCDEFGHIJ\n          name: node-{{ami-i}}.btcn.example.com\n          ttl: 300\n        exec:\n        - on: [started]\n          lines:\n          - argv: [/bin/systemctl, start, bitcoin.service]\n        notify:\n        - backend: aws-sns\n          options:\n            region: us-east-1\n            topic: arn:aws:sns:us-east-1:123456789012:btc-events\n\
         ports: []\n",
        binary = fleet_app_bin().display()
    );
    fs_err::write(dir.path().join("fleet.yaml"), spec).unwrap();
    dir
}

/// The refusal's lines, one per key, each at the key's value (its first item) in the spec.
fn expected_refusals() -> [String; 3] {
    let key = |line: u32, column: u32, key: &str| {
        format!(
            "fleet.yaml:{line}:{column}: error: instances[0].lifecycle.domains.btcn.example.com.{key}: `domains.btcn.example.com.{key}`: the local provider has no cloud to run `{key}` on (locally only `exec` hooks run)"
        )
    };
    [key(22, 11, "attach-volume"), key(26, 11, "update-route53"), key(34, 11, "notify")]
}

#[test]
fn on_aws_validate_accepts_volumes_records_and_notifications() {
    let dir = workdir("aws");
    let output = offline(dir.path(), &["validate", "--config", "fleet.yaml"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("lifecycle"), "{stdout}");
}

#[test]
fn validate_plan_and_create_refuse_what_needs_a_cloud_on_the_local_provider_before_anything_runs() {
    let dir = workdir("local");
    // `validate` refuses what a local fleet cannot run, as `plan` and `create` do.
    let output = offline(dir.path(), &["validate", "--config", "fleet.yaml"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    for expected in expected_refusals() {
        assert!(stdout.contains(&expected), "validate: missing {expected:?} in:\n{stdout}");
    }

    for command in ["plan", "create"] {
        let output = offline(dir.path(), &[command, "--config", "fleet.yaml"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        for expected in expected_refusals() {
            assert!(stderr.contains(&expected), "{command}: missing {expected:?} in:\n{stderr}");
        }
        assert!(!stderr.contains("btcn.example.com.exec"), "exec hooks run: {stderr}");
        // Refused before anything runs: no connection error, no deployment recorded.
        assert!(!stderr.contains("127.0.0.1:9"), "{command} tried the account: {stderr}");
        assert!(!dir.path().join("home/deployments").exists(), "{command} recorded nothing");
    }
}

/// An entry on a dedicated host pool: the local provider has no hosts, so `plan` and `create`
/// refuse it at its `host_pool`, before anything runs, and say where it can run.
#[test]
fn plan_and_create_refuse_a_host_pool_on_the_local_provider_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("dashboard.json"), "{}").unwrap();
    fs_err::write(dir.path().join("config.conf"), "port = 9090\n").unwrap();
    let spec = format!(
        "tag: hp\nprovider: local\nhost_pools:\n  metal: {{instance_type: m5.metal, zones: {{us-east-1a: {{max: 1}}}}}}\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: db, count: 1, region: us-east-1, host_pool: metal, instance_type: m5.metal, storage_size: 10, storage_class: gp3, binary: {}, config: config.conf, profiling: false}}\nports: []\n",
        fleet_app_bin().display()
    );
    fs_err::write(dir.path().join("fleet.yaml"), spec).unwrap();
    for command in ["plan", "create"] {
        let output = offline(dir.path(), &[command, "--config", "fleet.yaml"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("instances[0].host_pool: `db` launches onto host pool `metal`, and the local provider has no dedicated hosts"),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("--provider aws"), "{command}: {stderr}");
        assert!(!dir.path().join("home/deployments").exists(), "{command} recorded nothing");
    }
}

/// An entry with data disks: the local provider has no volumes, so `plan` and `create` refuse
/// each disk at its device, before anything runs.
#[test]
fn plan_and_create_refuse_data_disks_on_the_local_provider_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("dashboard.json"), "{}").unwrap();
    fs_err::write(dir.path().join("config.conf"), "port = 9090\n").unwrap();
    let spec = format!(
        "tag: dd\nprovider: local\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: db\n  count: 1\n  region: us-east-1\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {}\n  config: config.conf\n  profiling: false\n  disks:\n    /dev/sdf: {{type: gp3, size: 10, mount: /data}}\n    /dev/sdg: {{type: st1, size: 500}}\nports: []\n",
        fleet_app_bin().display()
    );
    fs_err::write(dir.path().join("fleet.yaml"), spec).unwrap();
    for command in ["plan", "create"] {
        let output = offline(dir.path(), &[command, "--config", "fleet.yaml"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        for (line, device) in [(15, "/dev/sdf"), (16, "/dev/sdg")] {
            let expected = format!(
                "fleet.yaml:{line}:5: error: instances[0].disks.{device}: `db` asks for a data disk at `{device}`, and the local provider has no volumes to create"
            );
            assert!(stderr.contains(&expected), "{command}: missing {expected:?} in:\n{stderr}");
        }
        assert!(stderr.contains("--provider aws"), "{command}: {stderr}");
        assert!(!dir.path().join("home/deployments").exists(), "{command} recorded nothing");
    }
}
