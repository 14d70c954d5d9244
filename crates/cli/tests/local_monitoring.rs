//! The monitoring machine of a local fleet, with the real Prometheus and node exporter this
//! host has (`scripts/test` installs Debian's `prometheus` and `prometheus-node-exporter`):
//! every binary, agent and node exporter target is up, with flotilla's labels, and a grown fleet's
//! targets appear without a Prometheus restart.

mod common;

use std::time::Duration;

use common::monitoring::*;
use common::*;

fn spec(tag: &str, count: u32) -> String {
    format!(
        "tag: {tag}
provider: local
monitoring:
  instance_type: t4g.small
  storage_size: 10
  storage_class: gp3
  dashboard: dashboard.json
instances:
- name: node
  count: {count}
  region: local
  instance_type: t4g.small
  storage_size: 10
  storage_class: gp3
  binary: {{fleet_app}}
  config: config.conf
  profiling: false
  health: {{http: {{port: 9090, path: /health}}}}
  on_hosts_change: {{signal: SIGHUP}}
ports: []
update: {{batch_size: 2, health_deadline: 20s}}
"
    )
}

#[test]
fn prometheus_on_the_monitoring_machine_sees_every_target_up_and_follows_membership() {
    require_monitoring_programs();
    let tag = "monitoring-local";
    let fleet = TestFleet::with_spec(tag, &spec(tag, 2));
    let rows = fleet.create();
    let monitoring = row(&rows, "monitoring");
    let services: Vec<&str> = monitoring["services"]
        .as_array()
        .unwrap_or_else(|| panic!("the monitoring row lists its services: {monitoring}"))
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(services, ["prometheus", "node-exporter"], "{monitoring}");
    let ip = ip_of(monitoring);

    let series = wait_for("every target up in Prometheus", Duration::from_secs(60), || {
        all_up(ip, &expected_targets(&node_names(2)))
    });
    let node_0 = series
        .iter()
        .find(|s| s["metric"]["job"] == "binary" && s["metric"]["name"] == "node-0")
        .expect("node-0's binary target");
    let version = row(&rows, "node-0")["version"].as_str().expect("a version").to_owned();
    for (label, value) in [
        ("deployment", tag),
        ("region", "local"),
        ("instance_type", "local"),
        ("market", "local"),
        ("version", version.as_str()),
    ] {
        assert_eq!(node_0["metric"][label], value, "label {label} of {node_0}");
    }
    let started =
        prometheus(ip, "/api/v1/status/runtimeinfo").expect("runtime info")["startTime"].clone();

    // One more node: its targets appear, Prometheus is the same process.
    let path = fleet.work.path().join("fleet.yaml");
    fs_err::write(
        &path,
        spec(tag, 3).replace("{fleet_app}", &fleet_app_bin().display().to_string()),
    )
    .expect("the spec is written");
    fleet.run_ok(&["update", "--config", &path.display().to_string(), "--output", "json"]);
    wait_for("the new node's targets up", Duration::from_secs(60), || {
        all_up(ip, &expected_targets(&node_names(3)))
    });
    let restarted =
        prometheus(ip, "/api/v1/status/runtimeinfo").expect("runtime info")["startTime"].clone();
    assert_eq!(restarted, started, "Prometheus was not restarted for a membership change");

    // A version that cannot start is rolled back; the failed rollout fires an alert, which
    // `status` shows on the machines it names.
    let broken = fleet.work.path().join("broken.sh");
    fs_err::write(&broken, "#!/bin/sh\necho broken build >&2\nexit 1\n").unwrap();
    fs_err::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs_err::write(&path, spec(tag, 3).replace("{fleet_app}", &broken.display().to_string()))
        .expect("the spec is written");
    let output = fleet.run(&["update", "--config", &path.display().to_string()]);
    assert!(!output.status.success(), "a broken version fails the update");
    let alerts = wait_for("the failed rollout's alert in status", Duration::from_secs(60), || {
        let status = fleet.status();
        let alerts = row(&status, "node-0")["alerts"].as_array()?.clone();
        alerts.iter().any(|a| a["alert"] == "FlotillaRolloutFailed").then_some(alerts)
    });
    let alert = alerts.iter().find(|a| a["alert"] == "FlotillaRolloutFailed").unwrap();
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert!(
        alert["summary"].as_str().is_some_and(|s| s.contains("node-0")),
        "the summary names the machine: {alert}"
    );
    let table = fleet.run_ok(&["status", "--tag", tag]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("alert FlotillaRolloutFailed"), "{table}");
}
