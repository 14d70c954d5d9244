//! SIGHUP makes a running node reread its hosts.yaml: real processes on 127.202.0.1-3, the file
//! replaced the way the flotilla agent replaces it (written aside, renamed over), the result
//! read back through `/peers`, `/metrics` and the log, and the process never restarted.

#![allow(clippy::unwrap_used, reason = "a failed step should panic with its error")]

mod common;

use common::{Fleet, INTERVAL_MS, Node, wait_for};
use rustix::process::Signal;
use serde_json::Value;

const NODES: [Node; 3] = [
    Node { name: "node-0", ip: "127.202.0.1" },
    Node { name: "node-1", ip: "127.202.0.2" },
    Node { name: "node-2", ip: "127.202.0.3" },
];
/// A peer heard from this recently counts as answering (ten gossip rounds).
const FRESH_MS: u64 = 10 * INTERVAL_MS;

/// Node 0's peers as `(name, last_seen_ms_ago)`, in its /peers order.
fn peers_of_node_0(fleet: &Fleet) -> Option<Vec<(String, Option<u64>)>> {
    let peers = fleet.peers(0)?;
    let list = peers["peers"].as_array().expect("peers is a list");
    let entry = |peer: &Value| {
        let name = peer["name"].as_str().expect("a name").to_owned();
        let index = NODES.iter().position(|node| node.name == name).expect("a known name");
        assert_eq!(peer["ip"], NODES[index].ip, "{name}'s address");
        (name, peer["last_seen_ms_ago"].as_u64())
    };
    Some(list.iter().map(entry).collect())
}

/// Whether node 0 lists exactly `names` as peers and has heard from each lately.
fn node_0_sees_exactly(fleet: &Fleet, names: &[&str]) -> bool {
    peers_of_node_0(fleet).is_some_and(|peers| {
        peers.iter().map(|(name, _)| name.as_str()).eq(names.iter().copied())
            && peers.iter().all(|(_, ago)| ago.is_some_and(|ago| ago <= FRESH_MS))
    })
}

/// How long ago node `index` last heard from node 0 directly, per its /peers.
fn heard_node_0_ms_ago(fleet: &Fleet, index: usize) -> Option<u64> {
    let peers = fleet.peers(index)?;
    let list = peers["peers"].as_array().expect("peers is a list");
    let node_0 = list.iter().find(|peer| peer["name"] == NODES[0].name).expect("lists node-0");
    node_0["last_seen_ms_ago"].as_u64()
}

fn count_in_log(fleet: &Fleet, index: usize, text: &str) -> usize {
    fleet.log(index).matches(text).count()
}

#[test]
fn sighup_rereads_hosts_yaml_and_keeps_the_old_peers_when_the_new_file_is_bad() {
    let mut fleet = Fleet::new("hosts-reload", &NODES, "hi");
    // node-0 starts knowing node-1 only; the others know all three.
    fleet.write_hosts(0, &[0, 1]);
    fleet.write_hosts(1, &[0, 1, 2]);
    fleet.write_hosts(2, &[0, 1, 2]);
    for index in 0..NODES.len() {
        fleet.spawn(index);
    }
    let pid = fleet.pid(0);
    wait_for("node-0 to see node-1, its only peer", || node_0_sees_exactly(&fleet, &["node-1"]));
    assert!(fleet.metrics_have(0, "fleet_app_peers 1"));

    // Membership change: node-1 leaves node-0's file, node-2 joins it.
    fleet.write_hosts(0, &[0, 2]);
    fleet.signal(0, Signal::HUP);
    wait_for("node-0 to see node-2 and forget node-1", || node_0_sees_exactly(&fleet, &["node-2"]));
    wait_for("node-0's metrics to count the new set", || {
        fleet.metrics_have(0, "fleet_app_peers 1")
            && fleet.metrics_have(0, "fleet_app_peers_seen 1")
            && fleet.metrics_have(0, r#"fleet_app_hosts_reloads_total{outcome="ok"} 1"#)
    });
    assert!(
        fleet.log(0).contains("node-0 reloaded hosts.yaml: 1 peer (added node-2; removed node-1)"),
        "the reload is one line:\n{}",
        fleet.log(0)
    );
    // node-0 no longer contacts node-1 (and refuses its gossip): node-1 stops hearing from it.
    wait_for("node-1 to stop hearing from node-0", || {
        heard_node_0_ms_ago(&fleet, 1).is_some_and(|ago| ago > 2 * FRESH_MS)
    });
    let (status, body) = fleet.get(0, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(!body.contains(r#"node="node-1""#), "no series for the removed node:\n{body}");
    assert!(body.contains(r#"fleet_app_counter{node="node-2"}"#), "{body}");

    // A file that is not valid, then one that no longer lists node-0: both are refused with the
    // reason, and node-0 goes on with node-2.
    let hosts_path = fleet.hosts_path(0).display().to_string();
    fleet.replace_hosts_file(0, "monitoring: {public: 127.0.0.9, private: 127.0.0.9}\nhosts: 7\n");
    fleet.signal(0, Signal::HUP);
    wait_for("node-0 to log the invalid file", || {
        count_in_log(&fleet, 0, "cannot reload hosts.yaml") == 1
    });
    assert!(
        fleet.log(0).contains(&format!(
            "node-0 cannot reload hosts.yaml, keeping its 1 peers: \
             {hosts_path}:2: hosts: expected a list of hosts"
        )),
        "the reason names the file and line:\n{}",
        fleet.log(0)
    );
    fleet.write_hosts(0, &[1, 2]);
    fleet.signal(0, Signal::HUP);
    wait_for("node-0 to log the file without it", || {
        count_in_log(&fleet, 0, "cannot reload hosts.yaml") == 2
    });
    assert!(
        fleet
            .log(0)
            .contains(&format!("{hosts_path} no longer lists node-0 (it lists: node-1, node-2)")),
        "{}",
        fleet.log(0)
    );
    assert!(fleet.metrics_have(0, r#"fleet_app_hosts_reloads_total{outcome="failed"} 2"#));
    assert!(fleet.metrics_have(0, r#"fleet_app_hosts_reloads_total{outcome="ok"} 1"#));
    assert!(
        node_0_sees_exactly(&fleet, &["node-2"]),
        "the old set is kept: {:?}",
        peers_of_node_0(&fleet)
    );
    assert_eq!(fleet.get(0, "/health").unwrap().0, 200, "a failed reload is not unhealthy");

    // Growing back to all three: node-1 is contacted and counted again.
    fleet.write_hosts(0, &[0, 1, 2]);
    fleet.signal(0, Signal::HUP);
    wait_for("node-0 to see both peers", || node_0_sees_exactly(&fleet, &["node-1", "node-2"]));
    wait_for("node-0's metrics to count both", || {
        fleet.metrics_have(0, "fleet_app_peers_seen 2")
            && fleet.metrics_have(0, r#"fleet_app_hosts_reloads_total{outcome="ok"} 2"#)
    });
    assert!(fleet.log(0).contains("node-0 reloaded hosts.yaml: 2 peers (added node-1)"));

    // All along one process: same pid, started once, still running; SIGTERM still stops it.
    assert!(fleet.is_running(0), "node-0 is still running");
    assert_eq!(fleet.pid(0), pid);
    assert_eq!(
        count_in_log(&fleet, 0, "node-0 listening on"),
        1,
        "started once:\n{}",
        fleet.log(0)
    );
    assert_eq!(fleet.terminate(0).code(), Some(0), "node-0 exits 0 after SIGTERM");
    assert!(fleet.log(0).contains("node-0 got SIGTERM"));
}
