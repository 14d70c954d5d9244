//! Fleets that change size, on this machine: `update` with a spec whose `count` grew or shrank,
//! hosts-only changes applied in place (signalled or restarted), with real agents and the
//! example app.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::events::Watch;
use common::*;
use serde_json::Value;

fn spec(tag: &str, count: u32, on_hosts_change: &str) -> String {
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
  on_hosts_change: {on_hosts_change}
ports: []
update: {{batch_size: 2, health_deadline: 20s}}
"
    )
}

fn update(fleet: &TestFleet, spec_text: &str, extra: &[&str]) -> Output {
    let path = fleet.work.path().join("fleet.yaml");
    fs_err::write(&path, spec_text.replace("{fleet_app}", &fleet_app_bin().display().to_string()))
        .expect("the spec is written");
    let path = path.display().to_string();
    let mut args = vec!["update", "--config", path.as_str(), "--output", "json"];
    args.extend_from_slice(extra);
    fleet.run_ok(&args)
}

type Output = std::process::Output;

/// Each node's pid, by name.
fn pids(rows: &[Value]) -> BTreeMap<String, u64> {
    rows.iter()
        .filter(|r| r["role"] == "binary")
        .map(|r| {
            let name = r["name"].as_str().expect("a name");
            (name.to_owned(), r["pid"].as_u64().expect("a running binary has a pid"))
        })
        .collect()
}

/// The names `/peers` of the node in `row` reports.
fn peers_of(row: &Value) -> Option<Vec<String>> {
    let body = http_get(ip_of(row), 9090, "/peers")?;
    let peers: Value = serde_json::from_str(&body).ok()?;
    let mut names: Vec<String> = peers["peers"]
        .as_array()?
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    Some(names)
}

fn node_names(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("node-{i}")).collect()
}

/// Grow 5 → 8 and shrink 8 → 4 with `on_hosts_change: {signal: SIGHUP}`: the right machines
/// start and stop, every remaining binary gets the new hosts.yaml and rereads it on SIGHUP
/// without restarting, and the version stays.
#[test]
fn growing_and_shrinking_signals_the_remaining_binaries_instead_of_restarting_them() {
    let tag = "membership-signal";
    let fleet = TestFleet::with_spec(tag, &spec(tag, 5, "{signal: SIGHUP}"));
    let rows = fleet.create();
    let before = pids(&rows);
    assert_eq!(before.len(), 5);
    let version = row(&rows, "node-0")["version"].clone();
    let first_hosts = row(&rows, "node-0")["hosts"].clone();
    assert!(first_hosts.as_str().is_some_and(|h| h.len() == 12), "{rows:?}");

    // --dry-run says what would change and changes nothing.
    let output = update(&fleet, &spec(tag, 8, "{signal: SIGHUP}"), &["--dry-run"]);
    let planned: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(planned["added"], serde_json::json!(["node-5", "node-6", "node-7"]));
    assert_eq!(planned["removed"], serde_json::json!([]));
    assert_eq!(fleet.status().len(), 6, "a dry run launches nothing");

    // Grow to 8.
    let output = update(&fleet, &spec(tag, 8, "{signal: SIGHUP}"), &[]);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 9, "monitoring and eight nodes: {rows:?}");
    let grown_hosts = row(&rows, "node-7")["hosts"].clone();
    assert_ne!(grown_hosts, first_hosts, "membership changed");
    for name in node_names(0..8) {
        let row = row(&rows, &name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_eq!(row["version"], version, "a membership change keeps the version: {row}");
        assert_eq!(row["hosts"], grown_hosts, "{row}");
    }
    for (name, pid) in &before {
        let row = row(&rows, name);
        assert_eq!(row["pid"].as_u64(), Some(*pid), "{name} was signalled, not restarted");
        assert_eq!(row["restarts"], 0, "{row}");
        assert_eq!(row["rollout"]["hosts_only"], true, "{row}");
        let expected: Vec<String> = node_names(0..8).into_iter().filter(|n| n != name).collect();
        wait_for(&format!("{name} to reread hosts.yaml"), Duration::from_secs(10), || {
            (peers_of(row)? == expected).then_some(())
        });
    }
    let hosts = fs_err::read_to_string(fleet.deployment_dir().join("hosts.yaml")).unwrap();
    assert_eq!(hosts.matches("- name: node-").count(), 8, "{hosts}");

    // Shrink to 4: the highest indexes go.
    let grown = pids(&rows);
    let output = update(&fleet, &spec(tag, 4, "{signal: SIGHUP}"), &[]);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 5, "monitoring and four nodes: {rows:?}");
    for name in node_names(4..8) {
        assert!(!is_alive(grown[&name] as u32), "{name}'s binary was stopped");
        assert!(!fleet.instance_dir(&name).exists(), "{name}'s directory was removed");
    }
    let status = fleet.status();
    assert_eq!(status.len(), 5, "{status:?}");
    let shrunk_hosts = row(&status, "node-0")["hosts"].clone();
    for name in node_names(0..4) {
        let row = row(&status, &name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_eq!(row["pid"].as_u64(), Some(before[&name]), "{name} never restarted");
        assert_eq!(row["hosts"], shrunk_hosts);
        let expected: Vec<String> = node_names(0..4).into_iter().filter(|n| n != &name).collect();
        wait_for(&format!("{name} to see the shrunk fleet"), Duration::from_secs(10), || {
            (peers_of(row)? == expected).then_some(())
        });
    }
    fleet.run_ok(&["destroy", "--tag", tag]);
}

/// The default `on_hosts_change: restart`: a grown fleet's other binaries restart (health-gated)
/// onto the new hosts.yaml, and keep their version.
#[test]
fn by_default_a_membership_change_restarts_the_binaries_with_the_new_hosts() {
    let tag = "membership-restart";
    let fleet = TestFleet::with_spec(tag, &spec(tag, 2, "restart"));
    let rows = fleet.create();
    let before = pids(&rows);
    let version = row(&rows, "node-0")["version"].clone();

    let output = update(&fleet, &spec(tag, 3, "restart"), &[]);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    for (name, pid) in &before {
        let row = row(&rows, name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_ne!(row["pid"].as_u64(), Some(*pid), "{name} restarted onto the new hosts.yaml");
        assert_eq!(row["version"], version);
        assert_eq!(row["rollout"]["hosts_only"], true, "{row}");
        assert_eq!(row["rollout"]["phase"], "healthy", "{row}");
        let expected: Vec<String> = node_names(0..3).into_iter().filter(|n| n != name).collect();
        wait_for(&format!("{name} to know node-2"), Duration::from_secs(10), || {
            (peers_of(row)? == expected).then_some(())
        });
    }

    // Applying the same spec again changes nothing.
    let after = pids(&rows);
    let output = update(&fleet, &spec(tag, 3, "restart"), &[]);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(pids(&rows), after, "nothing to do, nothing restarted");
    fleet.run_ok(&["destroy", "--tag", tag]);
}

/// Kills `name`'s agent with SIGKILL (its binary dies with it: the parent-death signal).
fn kill_agent(fleet: &TestFleet, name: &str) {
    let agent: i32 = fs_err::read_to_string(fleet.instance_dir(name).join("agent.pid"))
        .expect("the agent's pid file")
        .trim()
        .parse()
        .expect("a pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent).expect("a positive pid"),
        rustix::process::Signal::KILL,
    )
    .expect("the agent is killed");
}

/// How long a test waits for one of watch's events.
const EVENT_WAIT: Duration = Duration::from_secs(60);

/// Kill -9 of an agent under `watch`: the machine is replaced under its name with a new agent,
/// the other binaries get the new hosts.yaml by SIGHUP without restarting; a second watch is
/// refused naming the first; a watch killed mid-replacement finishes it when started again.
#[test]
fn watch_replaces_a_machine_whose_agent_was_killed() {
    let tag = "membership-watch";
    let fleet = TestFleet::with_spec(tag, &spec(tag, 3, "{signal: SIGHUP}"));
    let rows = fleet.create();
    let before = pids(&rows);
    let spec_path = fleet.spec_arg();
    let watch_args = [
        "watch",
        "--config",
        spec_path.as_str(),
        "--interval",
        "200ms",
        "--replace-after",
        "1s",
        "--max-per-hour",
        "2",
        "--output",
        "json",
    ];
    let child = fleet
        .command(&watch_args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("watch starts");
    let mut watch = Watch::new(child, None);
    watch.wait_for("the start", EVENT_WAIT, |e| e["what"] == "started");

    // One watch per deployment.
    let second = fleet.run(&watch_args);
    assert_eq!(second.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&format!("is watched already (pid {})", watch.child.id())), "{stderr}");

    // The agent of node-1 dies with -9 (its binary dies with it).
    kill_agent(&fleet, "node-1");
    let last = watch.wait_for("the replacement", EVENT_WAIT, |e| {
        e["machine"] == "node-1"
            && e["what"] != "replacing"
            && e["action"] != "held back"
            && e["what"].as_str().is_some_and(|w| w.starts_with("replace"))
    });
    assert_eq!(last["what"], "replaced", "{:#?}", watch.seen);
    assert!(
        watch.seen.iter().any(|e| e["machine"] == "node-1" && e["action"] == "replacing"),
        "{:#?}",
        watch.seen
    );

    let status = fleet.status();
    let node1 = row(&status, "node-1");
    assert_eq!(node1["health"], "healthy", "{node1}");
    assert_ne!(node1["pid"].as_u64(), Some(before["node-1"]), "a new binary");
    for name in ["node-0", "node-2"] {
        let row = row(&status, name);
        assert_eq!(row["pid"].as_u64(), Some(before[name]), "{name} was not restarted");
        assert_eq!(row["hosts"], node1["hosts"], "{name} has the new hosts.yaml");
        let expected: Vec<String> = node_names(0..3).into_iter().filter(|n| n != name).collect();
        wait_for(&format!("{name} to see node-1 again"), Duration::from_secs(15), || {
            let peers = http_get(ip_of(row), 9090, "/peers")?;
            let peers: Value = serde_json::from_str(&peers).ok()?;
            let seen: Vec<&str> = peers["peers"]
                .as_array()?
                .iter()
                .filter(|p| p["last_seen_ms_ago"].is_number())
                .filter_map(|p| p["name"].as_str())
                .collect();
            (peers_of(row)? == expected && seen.contains(&"node-1")).then_some(())
        });
    }

    // A rebalance recommendation rehearsed on node-0: watch replaces it (locally the old one
    // goes first: two machines cannot share a name here).
    let node0_pid = row(&status, "node-0")["pid"].as_u64();
    fleet.run_ok(&["notice", "--config", &spec_path, "node-0", "rebalance"]);
    watch.wait_for("the rebalance replacement", EVENT_WAIT, |e| {
        e["machine"] == "node-0" && e["what"] == "replaced"
    });
    assert!(
        watch.seen.iter().any(|e| e["machine"] == "node-0"
            && e["what"].as_str().is_some_and(|w| w.starts_with("rebalance recommendation"))
            && e["action"] == "replacing, the new machine first"),
        "{:#?}",
        watch.seen
    );
    let after = fleet.status();
    assert_eq!(row(&after, "node-0")["health"], "healthy");
    assert_ne!(row(&after, "node-0")["pid"].as_u64(), node0_pid, "a new machine");
    assert_ne!(row(&after, "node-0")["lifecycle"]["last_event"]["event"], "rebalance", "{after:?}");

    // A third loss within the hour: the churn limit holds it back, and status says why.
    kill_agent(&fleet, "node-2");
    let held = watch.wait_for("the churn limit", EVENT_WAIT, |e| {
        e["machine"] == "node-2" && e["action"] == "held back"
    });
    assert!(held["outcome"].as_str().unwrap().contains("(max_per_hour 2)"), "{held}");
    let status =
        wait_for("status to show the held-back replacement", Duration::from_secs(10), || {
            let status = fleet.status();
            row(&status, "node-2")["watch"].as_str().is_some().then_some(status)
        });
    let note = row(&status, "node-2")["watch"].as_str().unwrap().to_owned();
    assert!(
        note.starts_with("watch holds its replacement back: 2 replacements in the last hour"),
        "{note}"
    );
    watch.kill();

    // A watch killed mid-replacement: its journal names node-2; the next watch finishes it.
    let journal = fleet.deployment_dir().join("watch-journal.json");
    let node2 = row(&status, "node-2");
    let id = node2["id"].as_str().unwrap().to_owned();
    fs_err::write(
        &journal,
        format!("{{\"replacing\": {{\"node-2\": \"{id}\"}}, \"started\": []}}"),
    )
    .unwrap();
    let output =
        fleet.run_ok(&["watch", "--config", &spec_path, "--rounds", "1", "--output", "json"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("\"what\":\"resumed\""), "{text}");
    assert!(text.contains("\"machine\":\"node-2\",\"what\":\"replaced\""), "{text}");
    let journal: Value = serde_json::from_str(&fs_err::read_to_string(&journal).unwrap()).unwrap();
    assert_eq!(journal["replacing"], serde_json::json!({}), "the journal is cleared");
    let status = fleet.status();
    assert_eq!(row(&status, "node-2")["health"], "healthy");
    assert_ne!(row(&status, "node-2")["id"].as_str(), Some(id.as_str()), "a new machine");
    assert_eq!(status.len(), 4, "one replacement, not two: {status:?}");
    fleet.run_ok(&["destroy", "--tag", tag]);
}
