//! `plan` shows the kernel settings AWS machines get at boot: the network tuning (BBR and fq)
//! by default, the spec's `boot.sysctl` over it, none of the tuning with `tune_network: false`;
//! and none locally, where kernel settings do not apply. Offline: no account is asked.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use common::*;
use serde_json::{Value, json};

fn spec(provider: &str, entry_boot: &str) -> String {
    let native = if std::env::consts::ARCH == "aarch64" { "c7g.large" } else { "c7i.large" };
    format!(
        "tag: tuning\nprovider: {provider}\nmonitoring:\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n- name: web\n  region: us-east-1\n  instance_type: {native}\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: config.conf\n  profiling: false\n- name: quiet\n  region: us-east-1\n  instance_type: {native}\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: config.conf\n  profiling: false\n{entry_boot}ports: []\n",
        binary = fleet_app_bin().display(),
    )
}

fn workdir(spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("dashboard.json"), "{}").unwrap();
    fs_err::write(dir.path().join("config.conf"), "port = 9090\n").unwrap();
    fs_err::write(dir.path().join("fleet.yaml"), spec).unwrap();
    dir
}

fn group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["groups"].as_array().unwrap().iter().find(|g| g["name"] == name).unwrap()
}

#[test]
fn plan_shows_the_network_tuning_aws_machines_get_by_default() {
    // `quiet` turns the tuning off and sets a kernel setting of its own.
    let quiet = "  boot: {tune_network: false, sysctl: {net.core.somaxconn: 4096}}\n";
    let dir = workdir(&spec("aws", quiet));
    let output = offline(dir.path(), &["plan", "--config", "fleet.yaml", "--output", "json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let tuning = json!({"net.core.default_qdisc": "fq", "net.ipv4.tcp_congestion_control": "bbr"});
    for name in ["monitoring", "web"] {
        let group = group(&report, name);
        assert_eq!(group["kernel_settings"], tuning, "{group:#}");
        assert_eq!(group["network_tuning"], true);
    }
    let quiet = group(&report, "quiet");
    assert_eq!(quiet["kernel_settings"], json!({"net.core.somaxconn": "4096"}), "{quiet:#}");
    assert_eq!(quiet["network_tuning"], false);

    let output = offline(dir.path(), &["plan", "--config", "fleet.yaml"]);
    let table = String::from_utf8_lossy(&output.stdout);
    let tuned = "sysctl net.core.default_qdisc=fq, net.ipv4.tcp_congestion_control=bbr (the network tuning, BBR and fq, is on by default on AWS; `boot: {tune_network: false}` leaves it out)";
    assert!(table.contains(&format!("boot: web: {tuned}\n")), "{table}");
    assert!(table.contains(&format!("boot: monitoring: {tuned}\n")), "{table}");
    assert!(table.contains("boot: quiet: sysctl net.core.somaxconn=4096\n"), "{table}");
}

#[test]
fn a_local_plan_shows_no_kernel_settings() {
    let dir = workdir(&spec("local", ""));
    let output = offline(dir.path(), &["plan", "--config", "fleet.yaml", "--output", "json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    for name in ["monitoring", "web", "quiet"] {
        assert_eq!(group(&report, name)["kernel_settings"], json!({}), "{report:#}");
    }
    let output = offline(dir.path(), &["plan", "--config", "fleet.yaml"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!table.contains("boot:"), "{table}");
}
