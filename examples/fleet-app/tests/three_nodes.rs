//! Runs the real binary as three nodes on 127.201.0.1-3 and checks that they find each other.
//!
//! The fleet helpers are in `common`: each node on its own loopback address and the same port,
//! polled with a deadline, killed with its log shown if anything fails.

// Helpers outside `#[test]` functions are test code too: clippy's in-test exemptions miss them.
#![allow(clippy::unwrap_used, reason = "a failed step should panic with its error")]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Fleet, Node, wait_for};

const NODES: [Node; 3] = [
    Node { name: "node-0", ip: "127.201.0.1" },
    Node { name: "node-1", ip: "127.201.0.2" },
    Node { name: "node-2", ip: "127.201.0.3" },
];
const GREETING: &str = "hello from the test";

/// Each peer's counter in node `index`'s /peers, if that node sees both others.
fn counters_seen_by(fleet: &Fleet, index: usize) -> Option<Vec<(String, u64)>> {
    let peers = fleet.peers(index)?;
    assert_eq!(peers["greeting"], GREETING);
    let list = peers["peers"].as_array().expect("peers is a list");
    let names: Vec<&str> = list.iter().filter_map(|peer| peer["name"].as_str()).collect();
    let expected: Vec<&str> =
        NODES.iter().map(|node| node.name).filter(|name| *name != NODES[index].name).collect();
    assert_eq!(names, expected, "{} lists its peers", NODES[index].name);
    let mut counters = Vec::new();
    for peer in list {
        let peer_index = NODES.iter().position(|node| peer["ip"] == node.ip).expect("a known ip");
        assert_eq!(peer["name"], NODES[peer_index].name, "the ip goes with the name");
        peer["last_seen_ms_ago"].as_u64()?;
        let counter = peer["counter"].as_u64().expect("counter is a number");
        counters.push((peer["name"].as_str()?.to_owned(), counter));
    }
    Some(counters)
}

fn all_nodes() -> std::ops::Range<usize> {
    0..NODES.len()
}

#[test]
fn three_nodes_gossip_and_stop_cleanly() {
    let mut fleet = Fleet::new("three-nodes", &NODES, GREETING);
    for index in all_nodes() {
        fleet.write_hosts(index, &[0, 1, 2]);
    }
    for index in all_nodes() {
        fleet.spawn(index);
    }
    let port = fleet.port;

    // Every node sees both others, with counters it has heard.
    let mut first_counters = vec![Vec::new(); NODES.len()];
    wait_for("every node to see both peers in /peers", || {
        all_nodes().all(|index| match counters_seen_by(&fleet, index) {
            Some(counters) => {
                first_counters[index] = counters;
                true
            }
            None => false,
        })
    });
    // ... and the counters keep rising.
    wait_for("every counter to rise", || {
        all_nodes().all(|index| {
            counters_seen_by(&fleet, index).is_some_and(|counters| {
                counters
                    .iter()
                    .zip(&first_counters[index])
                    .all(|((_, now), (_, before))| now > before)
            })
        })
    });
    wait_for("fleet_app_peers_seen 2 on every node", || {
        all_nodes().all(|index| fleet.metrics_have(index, "fleet_app_peers_seen 2"))
    });

    for index in all_nodes() {
        let (status, body) = fleet.get(index, "/health").unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.trim_end(), format!("ok {} greeting={GREETING}", NODES[index].name));
    }
    let (status, _) = fleet.get(0, "/nope").unwrap();
    assert_eq!(status, 404);

    for index in all_nodes() {
        let status = fleet.terminate(index);
        assert_eq!(status.code(), Some(0), "{} exits 0 after SIGTERM", NODES[index].name);
    }
    let log = fleet.log(0);
    assert!(
        log.contains(&format!("node-0 listening on {}:{port}", NODES[0].ip)),
        "the start-up line names the address:\n{log}"
    );
    assert!(log.contains("node-0 got SIGTERM"), "the exit is logged:\n{log}");
}

#[test]
fn bad_config_exits_2_naming_the_line() {
    let dir = std::env::temp_dir().join(format!("fleet-app-test-bad-{}", std::process::id()));
    fs_err::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts.yaml");
    let config = dir.join("config.conf");
    fs_err::write(&hosts, "monitoring: {public: 127.0.0.1, private: 127.0.0.1}\nhosts: []\n")
        .unwrap();
    fs_err::write(&config, "greeting = hi\ncolour = blue\n").unwrap();
    let output = run_with(&hosts, &config);
    let _ = fs_err::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:2: unknown key \"colour\"", config.display())),
        "stderr: {stderr}"
    );
}

fn run_with(hosts: &Path, config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-app"))
        .arg(format!("--hosts={}", hosts.display()))
        .arg(format!("--config={}", config.display()))
        .env("FLOTILLA_NAME", "node-0")
        .output()
        .unwrap()
}
