//! `keepalive:` on the local provider, end to end with the real `flotilla` binary and agents:
//! machines stay up while the deployment keeps talking (`flotilla keepalive`, as a cron job
//! would), and once it goes silent for longer than the keepalive each agent stops its binary
//! and exits (on AWS it would then power the machine off), saying why in the binary's log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const KEEPALIVE_SECS: u64 = 4;

fn agent_pid(fleet: &TestFleet, name: &str) -> u32 {
    let bootstrap = fleet.instance_dir(name).join("bootstrap.json").display().to_string();
    let pids = pids_with_arg(&bootstrap);
    assert_eq!(pids.len(), 1, "one agent for {name}: {pids:?}");
    pids[0]
}

fn binary_pid(row: &Value) -> u32 {
    row["pid"].as_u64().unwrap_or_else(|| panic!("a running binary: {row}")) as u32
}

#[test]
fn machines_live_while_the_deployment_talks_and_stop_once_it_is_silent() {
    let fleet = TestFleet::new("keepalive", FleetOptions { count: 2, ..FleetOptions::default() });
    let spec = fs_err::read_to_string(&fleet.spec).unwrap();
    let spec = spec.replace("  health:\n", &format!("  keepalive: {KEEPALIVE_SECS}s\n  health:\n"));
    fs_err::write(&fleet.spec, spec).unwrap();
    fleet.create();

    let rows = fleet.status();
    let nodes: Vec<&Value> = rows.iter().filter(|r| r["role"] == "binary").collect();
    assert_eq!(nodes.len(), 2, "{rows:?}");
    let mut watched = Vec::new();
    for row in &nodes {
        assert_eq!(row["keepalive"]["limit_secs"], KEEPALIVE_SECS, "{row}");
        let name = row["name"].as_str().unwrap().to_owned();
        watched.push((agent_pid(&fleet, &name), binary_pid(row), name));
    }

    // Talking for twice the keepalive keeps everything running.
    let talking = Instant::now();
    while talking.elapsed() < Duration::from_secs(2 * KEEPALIVE_SECS) {
        let output = fleet.run_ok(&["keepalive", "--tag", &fleet.tag, "--output", "json"]);
        let answers: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(answers.len(), 2, "only binary machines answer: {answers:?}");
        for answer in &answers {
            assert_eq!(answer["keepalive"]["limit_secs"], KEEPALIVE_SECS, "{answer}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    for (agent, binary, name) in &watched {
        assert!(is_alive(*agent) && is_alive(*binary), "{name} stopped while talked to");
    }

    // Silence: each agent stops its binary and exits (no status call: it would be word).
    for (agent, binary, name) in &watched {
        wait_for(&format!("{name}'s agent to exit"), Duration::from_secs(30), || {
            (!is_alive(*agent)).then_some(())
        });
        assert!(!is_alive(*binary), "{name}'s binary outlived its agent");
        let log = fs_err::read_to_string(fleet.instance_dir(name).join("logs/binary.log"))
            .unwrap_or_default();
        assert!(
            log.contains("keepalive: nothing heard from the deployment for"),
            "{name}'s log says why: {log}"
        );
    }
    let rows = fleet.status();
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_ne!(row["state"], "running", "{row}");
    }
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
}
