//! End to end on this machine: the real `flotilla` binary, real agent processes on loopback
//! addresses, the real example app.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

/// create → healthy → peers see each other → update → broken update rolled back → a killed
/// binary restarts → destroy leaves no process.
#[test]
fn a_fleet_lives_through_updates_failures_and_destroy() {
    let fleet = TestFleet::new("lifecycle", FleetOptions::default());
    let rows = fleet.create();
    assert_eq!(rows.len(), 4, "monitoring and three nodes: {rows:?}");
    for name in ["node-0", "node-1", "node-2"] {
        let row = row(&rows, name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_eq!(row["state"], "running");
        assert_eq!(row["region"], "local");
        assert_eq!(row["restarts"], 0);
        assert!(row["version"].as_str().is_some_and(|v| v.len() == 12), "{row}");
    }
    assert_eq!(row(&rows, "monitoring")["health"], "idle");

    // Every node sees the two others (gossip over the addresses hosts.yaml gives).
    let status = fleet.status();
    for name in ["node-0", "node-1", "node-2"] {
        let ip = ip_of(row(&status, name));
        wait_for(&format!("{name} to see its peers"), Duration::from_secs(15), || {
            let metrics = http_get(ip, 9090, "/metrics")?;
            metrics.lines().any(|l| l == "fleet_app_peers_seen 2").then_some(())
        });
    }
    // hosts.yaml on a machine is the deployer's format, listing every node and monitoring.
    let hosts = fs_err::read_to_string(fleet.deployment_dir().join("hosts.yaml")).unwrap();
    assert!(hosts.starts_with("monitoring:\n  public: 127."), "{hosts}");
    assert_eq!(hosts.matches("- name: node-").count(), 3, "{hosts}");

    // An update with a new config: the new version is healthy and serves the new greeting.
    let old_version = row(&status, "node-0")["version"].clone();
    fleet.write_config("config-v2.conf", "bonjour");
    let v2 = fleet.write_spec(
        "fleet-v2.yaml",
        &fleet_app_bin(),
        "config-v2.conf",
        &FleetOptions::default(),
    );
    let output =
        fleet.run_ok(&["update", "--config", &v2.display().to_string(), "--output", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let new_version = row(&rows, "node-0")["version"].clone();
    assert_ne!(new_version, old_version);
    for name in ["node-0", "node-1", "node-2"] {
        let row = row(&rows, name);
        assert_eq!(row["health"], "healthy", "{row}");
        assert_eq!(row["version"], new_version);
        let body = http_get(ip_of(row), 9090, "/health").expect("health answers");
        assert!(body.contains("greeting=bonjour"), "{body}");
    }

    // logs: the binary's output and the agent's events, the last N lines.
    let output = fleet.run_ok(&["logs", "--tag", "lifecycle", "node-1", "--lines", "40"]);
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(logs.contains("greeting=\"bonjour\""), "{logs}");
    assert!(logs.contains("[flotilla-agent]"), "{logs}");
    assert!(logs.lines().count() <= 40, "{logs}");
    let output = fleet.run(&["logs", "--tag", "lifecycle", "node-9"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("node-0, node-1, node-2"));

    // The same spec again changes nothing: no binary restarts.
    let pids_before: Vec<_> = rows.iter().map(|r| r["pid"].clone()).collect();
    fleet.run_ok(&["update", "--config", &v2.display().to_string()]);
    let again = fleet.status();
    let pids_after: Vec<_> = again.iter().map(|r| r["pid"].clone()).collect();
    assert_eq!(pids_before, pids_after);

    // An update to a binary that exits 1 fails, names the machines and the reason, and the
    // version before it serves again.
    let broken = fleet.work.path().join("broken.sh");
    fs_err::write(&broken, "#!/bin/sh\necho \"broken build: missing feature flag\" >&2\nexit 1\n")
        .unwrap();
    fs_err::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v3 = fleet.write_spec("fleet-v3.yaml", &broken, "config-v2.conf", &FleetOptions::default());
    let output = fleet.run(&["update", "--config", &v3.display().to_string()]);
    assert_eq!(output.status.code(), Some(1), "a failed rollout exits 1");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("update stopped at batch 1 of 2"), "{stderr}");
    assert!(stderr.contains("node-0"), "{stderr}");
    assert!(
        stderr.contains("broken build: missing feature flag"),
        "the log tail is shown: {stderr}"
    );
    let status = fleet.status();
    for name in ["node-0", "node-1", "node-2"] {
        let row = row(&status, name);
        assert_eq!(row["version"], new_version, "{name} runs the version before: {row}");
        assert_eq!(row["health"], "healthy", "{row}");
        let body = http_get(ip_of(row), 9090, "/health").expect("the old version serves");
        assert!(body.contains("greeting=bonjour"), "{body}");
    }
    let failed = row(&status, "node-0");
    assert_eq!(failed["rollout"]["phase"], "rolled-back", "status says why: {failed}");
    assert!(failed["rollout"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{failed}");
    // The second batch was never touched.
    assert_ne!(row(&status, "node-2")["rollout"]["phase"], "rolled-back");

    // kill -9 of a binary: the agent restarts it.
    let victim = row(&status, "node-1");
    let pid = victim["pid"].as_u64().expect("a pid") as u32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let restarted = wait_for("node-1 to be restarted and healthy", Duration::from_secs(20), || {
        let status = fleet.status();
        let row = row(&status, "node-1").clone();
        (row["pid"].as_u64() != Some(pid as u64) && row["health"] == "healthy").then_some(row)
    });
    assert_eq!(restarted["restarts"], 1, "{restarted}");

    // destroy: every agent and binary of the deployment is gone, checked by pid.
    let local_root = fleet.deployment_dir().join("local");
    let pids = pids_under(&local_root);
    assert!(pids.len() >= 7, "four agents and three binaries run: {pids:?}");
    let output = fleet.run_ok(&["destroy", "--tag", "lifecycle"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("destroyed"));
    for pid in &pids {
        assert!(!is_alive(*pid), "pid {pid} survived destroy");
    }
    assert!(pids_under(&local_root).is_empty());
    assert!(!local_root.join("instances").exists(), "instance directories are removed");
    // Destroy is idempotent; a destroyed tag is not re-created by accident.
    let output = fleet.run_ok(&["destroy", "--tag", "lifecycle"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("already destroyed"));
    let output = fleet.run(&["create", "--config", &fleet.spec_arg()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
    let output = fleet.run_ok(&["list", "--output", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list[0]["tag"], "lifecycle");
    assert_eq!(list[0]["status"], "destroyed");
}

/// The CLI killed with SIGKILL part-way through create, then run again: it converges, and no
/// machine runs two agents or two binaries.
#[test]
fn create_converges_after_the_cli_is_killed() {
    let fleet = TestFleet::new("crash", FleetOptions { count: 6, ..FleetOptions::default() });
    let spec = fleet.spec_arg();
    // Kill at different points: before, during and after agents start.
    for delay_ms in [30u64, 150, 400] {
        let mut child = fleet.command(&["create", "--config", &spec]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    let rows = fleet.create();
    assert_eq!(rows.len(), 7);
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
    }
    for name in ["monitoring", "node-0", "node-1", "node-2", "node-3", "node-4", "node-5"] {
        let bootstrap = fleet.instance_dir(name).join("bootstrap.json");
        let agents = pids_with_arg(&bootstrap.display().to_string());
        assert_eq!(agents.len(), 1, "{name} runs exactly one agent: {agents:?}");
        if name != "monitoring" {
            let binaries = pids_under(&fleet.instance_dir(name).join("work"));
            assert_eq!(binaries.len(), 1, "{name} runs exactly one binary: {binaries:?}");
        }
    }
    // A further create is a no-op for running machines.
    let before: Vec<_> = fleet.status().iter().map(|r| r["pid"].clone()).collect();
    fleet.create();
    let after: Vec<_> = fleet.status().iter().map(|r| r["pid"].clone()).collect();
    assert_eq!(before, after);
}

/// State is private, and the CLI refuses an agent whose certificate is not the machine's.
#[test]
fn state_is_private_and_agents_must_prove_who_they_are() {
    let fleet = TestFleet::new("security", FleetOptions { count: 2, ..FleetOptions::default() });
    fleet.create();
    let home = fleet.home.path();
    let deployment = fleet.deployment_dir();
    assert_eq!(mode(home), 0o700);
    assert_eq!(mode(&deployment), 0o700);
    for file in ["ca.key", "cli.key", "ca.crt", "cli.crt", "metadata.json"] {
        assert_eq!(mode(&deployment.join(file)), 0o600, "{file}");
    }
    for name in ["monitoring", "node-0", "node-1"] {
        let dir = fleet.instance_dir(name);
        assert_eq!(mode(&dir), 0o700, "{name}");
        assert_eq!(mode(&dir.join("identity.json")), 0o600, "{name}");
    }
    // No private key in any process's arguments.
    for pid in pids_under(&deployment) {
        let cmdline = fs_err::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&cmdline).contains("PRIVATE KEY"));
    }

    // node-0's agent restarted with node-1's identity: it answers on node-0's address with a
    // certificate for another machine, and the CLI refuses it.
    let node0 = fleet.instance_dir("node-0");
    let bootstrap = node0.join("bootstrap.json").display().to_string();
    let agent_pid = pids_with_arg(&bootstrap)[0];
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent_pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    wait_for("node-0's agent to stop", Duration::from_secs(20), || {
        (!is_alive(agent_pid)).then_some(())
    });
    fs_err::copy(fleet.instance_dir("node-1").join("identity.json"), node0.join("identity.json"))
        .unwrap();
    let mut impostor = std::process::Command::new(flotilla_bin())
        .args(["agent", "--bootstrap", &bootstrap])
        .current_dir(&node0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let node0_ip = ip_of(row(&fleet.status(), "node-0"));
    wait_for("the impostor to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect((node0_ip, 7443)).ok().map(drop)
    });
    let status = fleet.status();
    let refused = row(&status, "node-0");
    assert_eq!(refused["state"], "unreachable", "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains("certificate"), "the TLS refusal is explained: {error}");
    assert_eq!(row(&status, "node-1")["health"], "healthy");
    let _ = impostor.kill();
    let _ = impostor.wait();
}

/// Bad input is refused before anything is created.
#[test]
fn an_invalid_spec_changes_nothing() {
    let fleet = TestFleet::new("invalid", FleetOptions::default());
    let bad = fleet.work.path().join("bad.yaml");
    let spec = fs_err::read_to_string(&fleet.spec)
        .unwrap()
        .replace("storage_class: gp3\n  binary", "storage_class: gp9\n  binary")
        .replace("config: config.conf", "config: missing.conf");
    fs_err::write(&bad, spec).unwrap();
    let bad = bad.display().to_string();
    let output = fleet.run(&["create", "--config", &bad]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("instances[0].storage_class"), "{stderr}");
    assert!(!fleet.deployment_dir().exists(), "nothing was written");

    let output = fleet.run(&["validate", "--config", &bad, "--output", "json"]);
    assert_eq!(output.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let output = fleet.run(&["validate", "--config", &fleet.spec_arg()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
}
