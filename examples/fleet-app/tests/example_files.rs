//! Keeps the example fleet specs and the dashboard in step with the program and with each other.
//!
//! The full spec validation belongs to flotilla's own parser; this only checks what this package
//! owns: the paths the specs name exist, the ports agree with the config, the local specs ask for
//! SIGHUP on a hosts change (which the program handles), the v2 spec differs only in its config,
//! and the dashboard is JSON that plots the metrics the program exports.

#![allow(clippy::unwrap_used, reason = "a failed step should panic with its error")]

use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, YamlOwned};

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load_spec(name: &str) -> YamlOwned {
    let text = fs_err::read_to_string(repository_root().join("examples").join(name)).unwrap();
    let mut documents = YamlOwned::load_from_str(&text).unwrap();
    assert_eq!(documents.len(), 1, "{name} holds one document");
    documents.remove(0)
}

/// The spec as `key: value` text lines with comments dropped, for comparing two specs.
fn significant_lines(name: &str) -> Vec<String> {
    let text = fs_err::read_to_string(repository_root().join("examples").join(name)).unwrap();
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_local_fleet_specs_name_existing_files_and_agree_on_the_port() {
    for (name, config) in [
        ("local-fleet.yaml", "examples/fleet-app/config.conf"),
        ("local-fleet-v2.yaml", "examples/fleet-app/config-v2.conf"),
    ] {
        let spec = load_spec(name);
        assert_eq!(spec["tag"].as_str(), Some("flotilla-demo"), "{name}");
        assert_eq!(spec["provider"].as_str(), Some("local"), "{name}");
        let dashboard = spec["monitoring"]["dashboard"].as_str().unwrap();
        assert!(repository_root().join(dashboard).is_file(), "{name}: {dashboard} exists");
        let instances = spec["instances"].as_vec().unwrap();
        assert_eq!(instances.len(), 1, "{name}: one entry, replicated with count");
        let node = &instances[0];
        assert_eq!(node["count"].as_integer(), Some(5), "{name}");
        assert_eq!(node["binary"].as_str(), Some("target/debug/fleet-app"), "{name}");
        assert_eq!(node["config"].as_str(), Some(config), "{name}");
        assert!(repository_root().join(config).is_file(), "{name}: {config} exists");
        let config_text = fs_err::read_to_string(repository_root().join(config)).unwrap();
        assert!(config_text.lines().any(|line| line == "port = 9090"), "{config} uses 9090");
        assert_eq!(node["health"]["http"]["port"].as_integer(), Some(9090), "{name}");
        assert_eq!(node["health"]["http"]["path"].as_str(), Some("/health"), "{name}");
        // fleet-app rereads hosts.yaml on SIGHUP, so a membership change need not restart it.
        assert_eq!(node["on_hosts_change"]["signal"].as_str(), Some("SIGHUP"), "{name}");
        assert_eq!(spec["ports"][0]["port"].as_integer(), Some(9090), "{name}");
        assert_eq!(spec["update"]["max_unavailable"].as_str(), Some("40%"), "{name}");
        assert_eq!(spec["update"]["health_deadline"].as_str(), Some("30s"), "{name}");
    }
}

#[test]
fn the_v2_spec_differs_only_in_its_config() {
    let v1 = significant_lines("local-fleet.yaml");
    let v2 = significant_lines("local-fleet-v2.yaml");
    let differences: Vec<(&String, &String)> =
        v1.iter().zip(&v2).filter(|(left, right)| left != right).collect();
    assert_eq!(v1.len(), v2.len());
    assert_eq!(
        differences,
        [(
            &"  config: examples/fleet-app/config.conf".to_owned(),
            &"  config: examples/fleet-app/config-v2.conf".to_owned()
        )]
    );
}

#[test]
fn the_dashboard_plots_the_exported_metrics() {
    let text = fs_err::read_to_string(repository_root().join("examples/fleet-app/dashboard.json"))
        .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["title"].is_string());
    let expressions: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap())
        .map(|target| target["expr"].as_str().unwrap())
        .collect();
    for metric in [
        "fleet_app_peers_seen",
        "fleet_app_counter",
        "fleet_app_info",
        "fleet_app_hosts_reloads_total",
    ] {
        assert!(
            expressions.iter().any(|expression| expression.contains(metric)),
            "{metric} is plotted: {expressions:?}"
        );
    }
}
