//! Benchmark: local fleets of the example app through the real `flotilla` binary.
//!
//! For each fleet size: `create` until every node is healthy, then (when this host has
//! Prometheus and node exporter, which the monitoring machine runs) how long after `create`
//! returned the monitoring machine's Prometheus sees every binary, agent and node exporter
//! target up, the agents', binaries' and services' memory once idle, a rolling `update` (new
//! config, the spec's default batch of 25 %), and `destroy`.
//! Prints one line per figure. Run it with:
//!
//! ```text
//! cargo build --release -p fleet-app && cargo bench -p flotilla-cli --bench local_fleet -- 50 100 200
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)] // A benchmark prints its figures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("fleet sizes are numbers"))
        .collect();
    let sizes = if sizes.is_empty() { vec![50, 200] } else { sizes };
    let flotilla = PathBuf::from(env!("CARGO_BIN_EXE_flotilla"));
    let fleet_app = flotilla.parent().unwrap().join("fleet-app");
    assert!(
        fleet_app.exists(),
        "{} is missing: run `cargo build --release -p fleet-app` first",
        fleet_app.display()
    );
    println!("machine: {} cores, {}", cores(), cpu_model());
    for size in sizes {
        bench(&flotilla, &fleet_app, size);
    }
}

fn bench(flotilla: &Path, fleet_app: &Path, size: u32) {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let tag = format!("bench-{size}");
    let spec = |config: &str| {
        format!(
            "tag: {tag}\nprovider: local\nmonitoring:\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n- name: node\n  count: {size}\n  region: local\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {}\n  config: {config}\n  profiling: false\n  health:\n    http:\n      port: 9090\n      path: /health\nports: []\n",
            fleet_app.display()
        )
    };
    fs_err::write(work.path().join("dashboard.json"), "{}").unwrap();
    for (name, greeting) in [("v1.conf", "hello"), ("v2.conf", "bonjour")] {
        fs_err::write(work.path().join(name), format!("port = 9090\ngreeting = \"{greeting}\"\n"))
            .unwrap();
    }
    fs_err::write(work.path().join("v1.yaml"), spec("v1.conf")).unwrap();
    fs_err::write(work.path().join("v2.yaml"), spec("v2.conf")).unwrap();
    let run = |args: &[&str]| {
        let start = Instant::now();
        let output = Command::new(flotilla)
            .args(args)
            .current_dir(work.path())
            .env("FLOTILLA_HOME", home.path())
            .output()
            .unwrap();
        let elapsed = start.elapsed();
        assert!(
            output.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        elapsed
    };

    let create = run(&["create", "--config", "v1.yaml"]);
    println!("{size:>4} instances  create → all healthy     {:>7.2} s", create.as_secs_f64());
    // The monitoring machine is the first address of the fleet's block; its Prometheus scrapes
    // every binary, every agent (monitoring's too) and every node exporter.
    let hosts =
        fs_err::read_to_string(home.path().join("deployments").join(&tag).join("hosts.yaml"))
            .unwrap();
    let monitoring = hosts
        .lines()
        .find_map(|l| l.trim().strip_prefix("private: "))
        .expect("hosts.yaml names the monitoring machine")
        .to_owned();
    let targets = 3 * size + 2;
    let since_create = Instant::now();
    // A Prometheus that has not answered yet may be starting, or busy with its first scrapes
    // of a large fleet: only one that never answers within a minute counts as missing.
    let mut answered = false;
    let up = loop {
        if let Some(up) = count_up(&monitoring) {
            answered = true;
            if up >= targets {
                break Some(since_create.elapsed());
            }
        } else if !answered && since_create.elapsed() > Duration::from_secs(60) {
            println!(
                "{size:>4} instances  no Prometheus on the monitoring machine: scrape not measured"
            );
            break None;
        }
        if since_create.elapsed() > Duration::from_secs(300) {
            println!("{size:>4} instances  not every target up after 300 s");
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Some(up) = up {
        println!(
            "{size:>4} instances  create returned → {targets} targets up {:>7.2} s (scrape interval 5 s)",
            up.as_secs_f64()
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let root = home.path().join("deployments").join(&tag).join("local").join("instances");
    let (agents, binaries, services) = rss_under(&root);
    println!(
        "{size:>4} instances  idle agent RSS          {:>7.1} MiB mean, {:.1} max ({} agents)",
        mean(&agents),
        max(&agents),
        agents.len()
    );
    println!(
        "{size:>4} instances  idle fleet-app RSS      {:>7.1} MiB mean ({} binaries)",
        mean(&binaries),
        binaries.len()
    );
    println!(
        "{size:>4} instances  idle services RSS       {:>7.1} MiB mean, {:.1} max ({} services)",
        mean(&services),
        max(&services),
        services.len()
    );
    let update = run(&["update", "--config", "v2.yaml"]);
    println!("{size:>4} instances  rolling update (25 %)   {:>7.2} s", update.as_secs_f64());
    let destroy = run(&["destroy", "--tag", &tag]);
    println!("{size:>4} instances  destroy                 {:>7.2} s", destroy.as_secs_f64());
}

/// How many targets the Prometheus at `address`:9090 reports up; `None` when it does not answer.
fn count_up(address: &str) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((address, 9090)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET /api/v1/query?query=count(up%3D%3D1) HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let body = answer.split_once("\r\n\r\n")?.1;
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let Some(result) = value["data"]["result"].as_array() else { return Some(0) };
    Some(result.first().and_then(|r| r["value"][1].as_str()?.parse().ok()).unwrap_or(0))
}

/// RSS in MiB of agents (cwd = an instance directory), binaries (cwd = its `work/`) and
/// services (cwd = its `services/<name>/`).
fn rss_under(root: &Path) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut agents, mut binaries, mut services) = (Vec::new(), Vec::new(), Vec::new());
    for entry in fs_err::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else { continue };
        if !cwd.starts_with(root) {
            continue;
        }
        let Some(rss) = rss_kib(pid) else { continue };
        let mib = rss as f64 / 1024.0;
        if cwd.ends_with("work") {
            binaries.push(mib);
        } else if cwd.parent().is_some_and(|parent| parent.ends_with("services")) {
            services.push(mib);
        } else {
            agents.push(mib);
        }
    }
    (agents, binaries, services)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn cpu_model() -> String {
    fs_err::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
