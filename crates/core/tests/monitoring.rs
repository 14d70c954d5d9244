//! The monitoring configs checked by the real tools: `promtool check config` and `promtool
//! check rules` accept every generated file, `promtool test rules` shows each alert firing
//! (and not firing) on series like the agent's and node exporter's, and a real Prometheus
//! scrapes generated targets (`up == 1` through its HTTP API) and picks up a machine added by
//! rewriting the target files, without a restart.
//!
//! The dashboard's PromQL is parsed by promtool too (as recording rules).
//!
//! promtool and prometheus come from Debian's `prometheus` package (`scripts/test` installs it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_core::monitoring::MonitoredMachine;
use flotilla_core::monitoring::grafana::{PROMETHEUS_UID, fleet_dashboard};
use flotilla_core::monitoring::prometheus::{
    DEFAULT_SCRAPE_INTERVAL, Ports, PrometheusSettings, prometheus_config,
    render_prometheus_config, targets_files,
};
use flotilla_core::monitoring::rules::{flotilla_rules, render_rules};

const INSTALL: &str = "install Debian's `prometheus` package: apt-get install prometheus";

fn tool(name: &str) -> PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| panic!("{name} is not on PATH: {INSTALL}"))
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let output = Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("promtool does not run ({error}): {INSTALL}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn machine(
    name: &str,
    address: Ipv4Addr,
    version: Option<&str>,
    runs_binary: bool,
) -> MonitoredMachine {
    MonitoredMachine {
        name: name.to_owned(),
        region: "us-east-1".to_owned(),
        instance_type: "c7g.large".to_owned(),
        market: "spot".to_owned(),
        version: version.map(str::to_owned),
        address: address.into(),
        runs_binary,
    }
}

/// Writes prometheus.yml, the rules and the target files for `machines` under `dir`.
fn write_configs(dir: &Path, machines: &[MonitoredMachine], ports: Ports, interval: Duration) {
    fs_err::create_dir_all(dir.join("targets")).expect("a targets directory");
    let settings = PrometheusSettings {
        deployment: "t1".to_owned(),
        targets_dir: dir.join("targets").display().to_string(),
        rule_files: vec![dir.join("flotilla-rules.yml").display().to_string()],
        scrape_interval: interval,
    };
    fs_err::write(
        dir.join("prometheus.yml"),
        render_prometheus_config(&prometheus_config(&settings)),
    )
    .expect("prometheus.yml is written");
    fs_err::write(dir.join("flotilla-rules.yml"), render_rules(&flotilla_rules()))
        .expect("the rules are written");
    write_targets(dir, machines, ports);
}

/// Rewrites the target files as a deployment does when membership changes: each atomically.
fn write_targets(dir: &Path, machines: &[MonitoredMachine], ports: Ports) {
    for (name, text) in targets_files("t1", machines, ports) {
        let temporary = dir.join("targets").join(format!(".{name}.new"));
        fs_err::write(&temporary, text).expect("a target file is written");
        fs_err::rename(&temporary, dir.join("targets").join(name))
            .expect("a target file is renamed");
    }
}

#[test]
fn promtool_accepts_every_generated_file() {
    let temp = tempfile::tempdir().unwrap();
    let machines = [
        machine("monitoring", Ipv4Addr::new(10, 0, 0, 5), None, false),
        machine("node-0", Ipv4Addr::new(10, 1, 0, 7), Some("4f2a"), true),
        machine("odd \"name\": yes", Ipv4Addr::new(10, 1, 0, 8), Some("4f2a"), true),
    ];
    write_configs(temp.path(), &machines, Ports::default(), DEFAULT_SCRAPE_INTERVAL);
    let config = promtool(&["check", "config", "prometheus.yml"], temp.path());
    assert!(config.contains("SUCCESS"), "{config}");
    assert!(config.contains("SUCCESS: 1 rule files found"), "{config}");
    let rules = promtool(&["check", "rules", "flotilla-rules.yml"], temp.path());
    assert!(rules.contains("SUCCESS: 8 rules found"), "{rules}");
    for file in ["binary.json", "flotilla_agent.json", "node.json"] {
        let text = fs_err::read_to_string(temp.path().join("targets").join(file)).unwrap();
        let groups: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected = if file == "binary.json" { 2 } else { 3 };
        assert_eq!(groups.as_array().unwrap().len(), expected, "{file}: {text}");
        assert_eq!(groups[expected - 1]["labels"]["name"], "odd \"name\": yes");
    }
}

/// Each alert on input series shaped like the agent's and node exporter's: when it fires (with
/// its labels and summary), and the cases it must not fire on.
const RULE_TESTS: &str = r#"
rule_files: [flotilla-rules.yml]
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
  - series: 'flotilla_binary_up{job="flotilla_agent",instance="a:9101",name="node-0",region="r1"}'
    values: '0x10'
  - series: 'flotilla_binary_health_state{job="flotilla_agent",instance="a:9101",name="node-0",state="idle"}'
    values: '0x10'
  - series: 'flotilla_binary_up{job="flotilla_agent",instance="m:9101",name="monitoring",region="r1"}'
    values: '0x10'
  - series: 'flotilla_binary_health_state{job="flotilla_agent",instance="m:9101",name="monitoring",state="idle"}'
    values: '1x10'
  alert_rule_test:
  - eval_time: 5m
    alertname: FlotillaBinaryDown
    exp_alerts:
    - exp_labels: {severity: critical, job: flotilla_agent, instance: "a:9101", name: node-0, region: r1}
      exp_annotations: {summary: "The binary on node-0 (r1) is not running"}
  - eval_time: 30s
    alertname: FlotillaBinaryDown
    exp_alerts: []
- interval: 1m
  input_series:
  - series: 'up{job="node",instance="a:9100",name="node-0"}'
    values: '1 1 0 0 0 0'
  alert_rule_test:
  - eval_time: 3m
    alertname: FlotillaTargetDown
    exp_alerts: []
  - eval_time: 5m
    alertname: FlotillaTargetDown
    exp_alerts:
    - exp_labels: {severity: warning, job: node, instance: "a:9100", name: node-0}
      exp_annotations: {summary: "node on node-0 cannot be scraped at a:9100"}
- interval: 1m
  input_series:
  - series: 'flotilla_binary_restarts_total{job="flotilla_agent",instance="a:9101",name="node-0"}'
    values: '0 1 2 3 4 5 6 7 8'
  - series: 'flotilla_binary_restarts_total{job="flotilla_agent",instance="b:9101",name="node-1"}'
    values: '0 0 1 1 1 1 1 1 1'
  alert_rule_test:
  - eval_time: 8m
    alertname: FlotillaBinaryCrashLooping
    exp_alerts:
    - exp_labels: {severity: critical, job: flotilla_agent, instance: "a:9101", name: node-0}
      exp_annotations: {summary: "The binary on node-0 keeps exiting"}
- interval: 1m
  input_series:
  - series: 'node_filesystem_avail_bytes{job="node",instance="a:9100",name="node-0",mountpoint="/",fstype="ext4",device="/dev/root"}'
    values: '5x10'
  - series: 'node_filesystem_size_bytes{job="node",instance="a:9100",name="node-0",mountpoint="/",fstype="ext4",device="/dev/root"}'
    values: '100x10'
  - series: 'node_filesystem_avail_bytes{job="node",instance="a:9100",name="node-0",mountpoint="/run",fstype="tmpfs",device="tmpfs"}'
    values: '1x10'
  - series: 'node_filesystem_size_bytes{job="node",instance="a:9100",name="node-0",mountpoint="/run",fstype="tmpfs",device="tmpfs"}'
    values: '100x10'
  alert_rule_test:
  - eval_time: 6m
    alertname: FlotillaDiskFreeLow
    exp_alerts:
    - exp_labels: {severity: warning, job: node, instance: "a:9100", name: node-0, mountpoint: "/", fstype: ext4, device: /dev/root}
      exp_annotations: {summary: "/ on node-0 has 5% free"}
- interval: 1m
  input_series:
  - series: 'node_memory_MemAvailable_bytes{job="node",instance="a:9100",name="node-0"}'
    values: '5x10'
  - series: 'node_memory_MemTotal_bytes{job="node",instance="a:9100",name="node-0"}'
    values: '100x10'
  - series: 'node_memory_MemAvailable_bytes{job="node",instance="b:9100",name="node-1"}'
    values: '50x10'
  - series: 'node_memory_MemTotal_bytes{job="node",instance="b:9100",name="node-1"}'
    values: '100x10'
  alert_rule_test:
  - eval_time: 6m
    alertname: FlotillaMemoryPressure
    exp_alerts:
    - exp_labels: {severity: warning, job: node, instance: "a:9100", name: node-0}
      exp_annotations: {summary: "node-0 is short of memory"}
- interval: 1m
  input_series:
  - series: 'flotilla_interruption_notices_total{job="flotilla_agent",instance="a:9101",name="node-0",kind="spot"}'
    values: '0 0 1 1'
  - series: 'flotilla_interruption_notices_total{job="flotilla_agent",instance="a:9101",name="node-0",kind="rebalance"}'
    values: '0 1 1 1'
  alert_rule_test:
  - eval_time: 1m
    alertname: FlotillaInterruptionNotice
    exp_alerts: []
  - eval_time: 3m
    alertname: FlotillaInterruptionNotice
    exp_alerts:
    - exp_labels: {severity: warning, job: flotilla_agent, instance: "a:9101", name: node-0, kind: spot}
      exp_annotations: {summary: "node-0 got a spot notice: it will be interrupted"}
  - eval_time: 2m
    alertname: FlotillaRebalanceRecommendation
    exp_alerts:
    - exp_labels: {severity: info, job: flotilla_agent, instance: "a:9101", name: node-0, kind: rebalance}
      exp_annotations: {summary: "node-0's spot capacity is at risk (rebalance recommendation)"}
- interval: 1m
  input_series:
  - series: 'flotilla_rollout_failed{job="flotilla_agent",instance="a:9101",name="node-0",version="4f2a"}'
    values: '0 1 1 0'
  alert_rule_test:
  - eval_time: 0m
    alertname: FlotillaRolloutFailed
    exp_alerts: []
  - eval_time: 1m
    alertname: FlotillaRolloutFailed
    exp_alerts:
    - exp_labels: {severity: critical, job: flotilla_agent, instance: "a:9101", name: node-0, version: "4f2a"}
      exp_annotations: {summary: "The last rollout on node-0 failed; it runs 4f2a"}
  - eval_time: 3m
    alertname: FlotillaRolloutFailed
    exp_alerts: []
"#;

#[test]
fn each_alert_fires_on_what_it_watches_and_only_then() {
    let temp = tempfile::tempdir().unwrap();
    fs_err::write(temp.path().join("flotilla-rules.yml"), render_rules(&flotilla_rules())).unwrap();
    fs_err::write(temp.path().join("tests.yml"), RULE_TESTS).unwrap();
    let output = promtool(&["test", "rules", "tests.yml"], temp.path());
    assert!(output.contains("SUCCESS"), "{output}");
}

/// A tiny metrics target: answers every request on `listener` with one gauge.
fn serve_metrics(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let body = "# TYPE test_gauge gauge\ntest_gauge 1\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound address").port()
}

/// GETs `path` from Prometheus at `address`; the body (an error answer is a panic).
fn prometheus_get(address: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// The `up` series Prometheus has now: (job, name, version, value).
fn up_series(address: SocketAddr) -> Vec<(String, String, String, String)> {
    let Some(answer) = prometheus_get(address, "/api/v1/query?query=up") else { return Vec::new() };
    let mut series: Vec<_> = answer["data"]["result"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let label = |name: &str| s["metric"][name].as_str().unwrap_or_default().to_owned();
            let value = s["value"][1].as_str().unwrap_or_default().to_owned();
            (label("job"), label("name"), label("version"), value)
        })
        .collect();
    series.sort();
    series
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_real_prometheus_scrapes_the_targets_and_follows_membership_without_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    // Every job's port on two loopback machines, each served by a tiny target.
    let first = Ipv4Addr::new(127, 200, 13, 1);
    let second = Ipv4Addr::new(127, 200, 13, 2);
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let listener = TcpListener::bind((first, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listeners.push(listener);
        listeners.push(TcpListener::bind((second, port)).unwrap());
        ports.push(port);
    }
    for listener in listeners {
        serve_metrics(listener);
    }
    let ports = Ports { binary: ports[0], agent: ports[1], node_exporter: ports[2] };
    let one = [machine("node-0", first, Some("v1"), true)];
    write_configs(temp.path(), &one, ports, Duration::from_secs(1));

    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = fs_err::File::create(temp.path().join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", temp.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", temp.path().join("data").display()))
        .arg(format!("--web.listen-address={address}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.into_parts().0))
        .spawn()
        .unwrap_or_else(|error| panic!("prometheus does not start ({error}): {INSTALL}"));
    let mut prometheus = Prometheus(child);
    let pid = prometheus.0.id();
    let log = || fs_err::read_to_string(temp.path().join("prometheus.log")).unwrap_or_default();

    let up = |name: &str, version: &str| {
        ["binary", "flotilla_agent", "node"]
            .map(|job| (job.to_owned(), name.to_owned(), version.to_owned(), "1".to_owned()))
            .to_vec()
    };
    let expected = up("node-0", "v1");
    wait_for("node-0's three targets to be up", Duration::from_secs(30), || {
        up_series(address) == expected
    });

    // The fleet grows: only the target files change, and the same Prometheus scrapes the new
    // machine.
    let two =
        [machine("node-0", first, Some("v1"), true), machine("node-1", second, Some("v1"), true)];
    write_targets(temp.path(), &two, ports);
    let mut expected = up("node-0", "v1");
    expected.extend(up("node-1", "v1"));
    expected.sort();
    wait_for("node-1's targets to be up too", Duration::from_secs(30), || {
        up_series(address) == expected
    });
    assert!(prometheus.0.try_wait().unwrap().is_none(), "prometheus exited:\n{}", log());
    assert_eq!(prometheus.0.id(), pid);
    let config_reloads = log().matches("Completed loading of configuration file").count();
    assert_eq!(config_reloads, 1, "the configuration was loaded once:\n{}", log());
}

#[test]
fn promtool_parses_every_promql_query_of_the_dashboard() {
    let temp = tempfile::tempdir().unwrap();
    let dashboard = fleet_dashboard();
    let mut rules = Vec::new();
    for panel in dashboard.panels.iter().filter(|p| p.datasource.uid == PROMETHEUS_UID) {
        for query in &panel.targets {
            rules.push(serde_json::json!({
                "record": format!("dashboard:panel_{}_{}", panel.id, query.ref_id),
                // Grafana fills the variable in; any value does for parsing.
                "expr": query.expr.replace("$deployment", "t1"),
            }));
        }
    }
    assert!(rules.len() >= 8, "{rules:?}");
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    fs_err::write(temp.path().join("dashboard-queries.yml"), file.to_string()).unwrap();
    let output = promtool(&["check", "rules", "dashboard-queries.yml"], temp.path());
    assert!(output.contains(&format!("SUCCESS: {} rules found", rules.len())), "{output}");
}
