//! The local provider's `retire` and relaunch under a name, on real agent processes: a machine
//! retired through the provider API is gone (agent, binary, directory, address), the others
//! untouched; `create` brings it back under its name as a new machine; a machine whose agent
//! was killed with -9 is replaced afresh the same way.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use flotilla_core::progress::NoProgress;
use flotilla_core::provider::{Machine, MachineState, Provider};
use flotilla_core::state::Home;
use flotilla_local::LocalProvider;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// The deployment's local provider, as the CLI builds it.
fn provider(fleet: &TestFleet) -> LocalProvider {
    let deployment = Home::at(fleet.home.path()).open(&fleet.tag).expect("the deployment exists");
    LocalProvider::new(&deployment, flotilla_bin(), lease_dir()).expect("the local provider")
}

fn machines(fleet: &TestFleet) -> BTreeMap<String, Machine> {
    let machines = runtime().block_on(provider(fleet).machines()).expect("machines");
    machines.into_iter().map(|m| (m.name.clone(), m)).collect()
}

fn retire(fleet: &TestFleet, machines: &[Machine]) {
    runtime().block_on(provider(fleet).retire(machines, &NoProgress)).expect("retire");
}

/// The pid of `name`'s one agent.
fn agent_of(fleet: &TestFleet, name: &str) -> u32 {
    let bootstrap = fleet.instance_dir(name).join("bootstrap.json");
    let agents = pids_with_arg(&bootstrap.display().to_string());
    assert_eq!(agents.len(), 1, "{name} runs one agent: {agents:?}");
    agents[0]
}

/// Every machine's agent pid and binary pid (from `status`).
fn pids(fleet: &TestFleet, names: &[&str]) -> BTreeMap<String, (u32, Option<u64>)> {
    let status = fleet.status();
    names
        .iter()
        .map(|name| {
            let binary = row(&status, name)["pid"].as_u64();
            ((*name).to_owned(), (agent_of(fleet, name), binary))
        })
        .collect()
}

#[test]
fn a_retired_or_dead_machine_comes_back_under_its_name_as_a_new_machine() {
    let fleet = TestFleet::new("retire", FleetOptions::default());
    fleet.create();
    let before = machines(&fleet);
    assert_eq!(before.len(), 4, "monitoring and three nodes: {before:?}");
    let pids_before = pids(&fleet, &["monitoring", "node-0", "node-1", "node-2"]);
    let node2 = before["node-2"].clone();
    let (node2_agent, node2_binary) = pids_before["node-2"];
    let node2_binary = node2_binary.expect("node-2's binary runs") as u32;
    let node2_dir = fleet.instance_dir("node-2");
    assert!(!pids_under(&node2_dir).is_empty());

    // Retire node-2: its agent drains (its binary stopped with it), its directory and address
    // are freed, and the provider no longer lists it.
    retire(&fleet, std::slice::from_ref(&node2));
    assert!(!is_alive(node2_agent), "node-2's agent {node2_agent} is gone");
    assert!(!is_alive(node2_binary), "node-2's binary {node2_binary} is gone");
    assert!(pids_under(&node2_dir).is_empty(), "nothing of node-2 runs");
    assert!(!node2_dir.exists(), "its directory is removed");
    let address = match node2.agent_endpoint.ip() {
        std::net::IpAddr::V4(address) => address,
        other => panic!("a local machine has an IPv4 address: {other}"),
    };
    assert!(flotilla_local::lease::is_free(address, node2.agent_endpoint.port()));
    let after = machines(&fleet);
    let names: Vec<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(names, ["monitoring", "node-0", "node-1"]);
    for (name, machine) in &after {
        assert_eq!(machine.id, before[name].id, "{name} keeps its id");
        assert_eq!(machine.state, MachineState::Running, "{name}");
    }
    assert_eq!(
        pids(&fleet, &["monitoring", "node-0", "node-1"]),
        pids_before.iter().filter(|(n, _)| *n != "node-2").map(|(n, p)| (n.clone(), *p)).collect(),
        "no other agent or binary was touched"
    );
    assert_eq!(leases_of(&fleet.local_root()).len(), 1, "the others still use the block");

    // Retiring it again (a re-run after a crash) is success and changes nothing.
    retire(&fleet, std::slice::from_ref(&node2));
    assert_eq!(machines(&fleet).len(), 3);

    // create again: node-2 is back under its name, a new machine (new id, new agent), healthy;
    // the others are adopted as they are.
    let rows = fleet.create();
    assert_eq!(row(&rows, "node-2")["health"], "healthy", "{rows:?}");
    let back = machines(&fleet);
    assert_eq!(back.len(), 4);
    assert_ne!(back["node-2"].id, node2.id, "a new machine under the old name");
    for name in ["monitoring", "node-0", "node-1"] {
        assert_eq!(back[name].id, before[name].id, "{name} was adopted");
    }
    let pids_back = pids(&fleet, &["monitoring", "node-0", "node-1", "node-2"]);
    assert_ne!(pids_back["node-2"].0, node2_agent, "node-2 runs a new agent");
    for name in ["monitoring", "node-0", "node-1"] {
        assert_eq!(pids_back[name], pids_before[name], "{name}'s agent and binary are untouched");
    }

    // node-1's agent dies with -9 (its binary dies with it): the machine is gone. Whatever its
    // directory held is not the new machine's: the replacement starts afresh.
    let node1 = back["node-1"].clone();
    let (node1_agent, _) = pids_back["node-1"];
    let node1_dir = fleet.instance_dir("node-1");
    let remnant = node1_dir.join("left-by-the-dead-machine");
    fs_err::write(&remnant, "").unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(node1_agent as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_for("node-1's agent and binary to die", Duration::from_secs(10), || {
        pids_under(&node1_dir).is_empty().then_some(())
    });
    let dead = machines(&fleet);
    assert_eq!(dead["node-1"].state, MachineState::Stopped, "{:?}", dead["node-1"]);
    assert_eq!(dead["node-1"].id, node1.id);
    let rows = fleet.create();
    assert_eq!(row(&rows, "node-1")["health"], "healthy", "{rows:?}");
    let replaced = machines(&fleet);
    assert_ne!(replaced["node-1"].id, node1.id, "the replacement is a new machine");
    assert_eq!(replaced["node-1"].agent_endpoint, node1.agent_endpoint, "at the same address");
    assert!(!remnant.exists(), "the new machine did not inherit the dead one's directory");
    assert_ne!(agent_of(&fleet, "node-1"), node1_agent);
    let pids_now = pids(&fleet, &["monitoring", "node-0", "node-2"]);
    for name in ["monitoring", "node-0", "node-2"] {
        assert_eq!(pids_now[name], pids_back[name], "{name}'s agent and binary are untouched");
        assert_eq!(replaced[name].id, back[name].id);
    }

    // The dead machine's id is retired already: retiring it leaves its replacement alone.
    let node1_agent_now = agent_of(&fleet, "node-1");
    retire(&fleet, std::slice::from_ref(&node1));
    assert!(is_alive(node1_agent_now), "a stale id does not reach the replacement");
    assert_eq!(machines(&fleet).len(), 4);

    // Retiring every machine frees the deployment's address block too.
    let local_root = fleet.local_root();
    let all: Vec<Machine> = machines(&fleet).into_values().collect();
    retire(&fleet, &all);
    assert!(machines(&fleet).is_empty());
    assert!(pids_under(&local_root).is_empty(), "nothing of the deployment runs");
    assert!(leases_of(&local_root).is_empty(), "no address block is leased any more");
}
