//! The monitoring machine's Prometheus, asked through its HTTP API, and the programs the
//! monitoring tests need.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;

use super::http_get;

/// Fails loudly when the host lacks the programs the test needs.
pub fn require_monitoring_programs() {
    for program in ["prometheus", "prometheus-node-exporter"] {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
        });
        assert!(
            found,
            "{program} is not installed: run scripts/test, or apt-get install prometheus prometheus-node-exporter"
        );
    }
}

/// Prometheus's JSON answer to `path`, once it answers.
pub fn prometheus(ip: IpAddr, path: &str) -> Option<Value> {
    let body = http_get(ip, 9090, path)?;
    let value: Value = serde_json::from_str(&body).ok()?;
    (value["status"] == "success").then(|| value["data"].clone())
}

/// Every (job, name) target Prometheus scrapes, once all of `expected` are up; `None` before.
pub fn all_up(ip: IpAddr, expected: &BTreeSet<(String, String)>) -> Option<Vec<Value>> {
    let up = prometheus(ip, "/api/v1/query?query=up")?;
    let series = up["result"].as_array()?.clone();
    let seen: BTreeSet<(String, String)> = series
        .iter()
        .filter(|s| s["value"][1] == "1")
        .map(|s| {
            let label = |name: &str| s["metric"][name].as_str().unwrap_or_default().to_owned();
            (label("job"), label("name"))
        })
        .collect();
    (&seen == expected && series.len() == expected.len()).then_some(series)
}

/// The (job, name) targets of a fleet whose binary machines are `binaries`: each machine's
/// agent and node exporter, the monitoring machine's included, and each binary.
pub fn expected_targets(binaries: &[String]) -> BTreeSet<(String, String)> {
    let mut expected = BTreeSet::new();
    for name in std::iter::once("monitoring").chain(binaries.iter().map(String::as_str)) {
        expected.insert(("flotilla_agent".to_owned(), name.to_owned()));
        expected.insert(("node".to_owned(), name.to_owned()));
        if name != "monitoring" {
            expected.insert(("binary".to_owned(), name.to_owned()));
        }
    }
    expected
}

/// `node-0` … `node-{count - 1}`.
pub fn node_names(count: u32) -> Vec<String> {
    (0..count).map(|i| format!("node-{i}")).collect()
}
