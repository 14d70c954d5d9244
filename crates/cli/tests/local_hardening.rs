//! The hostile probe's findings on the local provider, each reproduced end to end with the real
//! `flotilla` binary, real agents and the example app: names the deployer accepts, crashes at
//! chosen moments, corrupt state, processes flotilla did not start, the operator's environment
//! and limits, file modes, and a restored machine that crash-loops.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A small fleet of the example app: one entry per `(name, count)` (no `count` key for 0).
fn spec(tag: &str, entries: &[(&str, u32)]) -> String {
    let mut text = format!(
        "tag: {tag}\nprovider: local\nmonitoring:\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n"
    );
    for (name, count) in entries {
        let count = if *count == 0 { String::new() } else { format!("  count: {count}\n") };
        text.push_str(&format!(
            "- name: '{name}'\n{count}  region: local\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {{fleet_app}}\n  config: config.conf\n  profiling: false\n  health: {{http: {{port: 9090, path: /health}}}}\n"
        ));
    }
    text.push_str("ports: []\nupdate: {batch_size: 2, health_deadline: 20s}\n");
    text
}

fn names(rows: &[Value]) -> Vec<String> {
    rows.iter().map(|r| r["name"].as_str().unwrap_or_default().to_owned()).collect()
}

fn assert_all_healthy(rows: &[Value]) {
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        assert_eq!(row["health"], "healthy", "{row}");
    }
}

/// Everything the deployer accepts works: a tag that looks like a flag, machine names that are
/// flags, underscores and 64-hex-digit public keys. Before, their certificates could not be
/// issued for such DNS names and create retried until its deadline.
#[test]
fn every_name_the_deployer_accepts_runs() {
    let key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let fleet = TestFleet::with_spec(
        "-rf",
        &spec("-rf", &[("--help", 0), ("_", 2), (key, 0), ("demo-", 0)]),
    );
    let started = Instant::now();
    let rows = fleet.create();
    assert!(started.elapsed() < Duration::from_secs(45), "create took {:?}", started.elapsed());
    assert_eq!(names(&rows), ["monitoring", "--help", "_-0", "_-1", key, "demo-"]);
    assert_all_healthy(&rows);

    // Commands take the tag and names as typed.
    let output = fleet.run_ok(&["status", "--tag", "-rf", "--output", "json"]);
    let status: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_all_healthy(&status);
    let output = fleet.run_ok(&["logs", "--tag", "-rf", "--lines", "5", "--", "--help"]);
    assert!(!output.stdout.is_empty(), "logs of --help");
    // The binaries see each other under those names.
    let ip = ip_of(row(&status, "_-0"));
    wait_for("_-0 to see its peers", Duration::from_secs(15), || {
        let metrics = http_get(ip, 9090, "/metrics")?;
        metrics.lines().any(|l| l == "fleet_app_peers_seen 4").then_some(())
    });

    let local_root = fleet.local_root();
    let pids = pids_under(&local_root);
    let output = fleet.run_ok(&["destroy", "--tag", "-rf"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("destroyed"));
    for pid in pids {
        assert!(!is_alive(pid), "pid {pid} survived destroy");
    }
    assert!(leases_of(&local_root).is_empty(), "leases released");
}

/// The longest tag the deployer can have (it names a directory) works; one byte more is
/// refused before anything is made, at its line, with how to fix it.
#[test]
fn the_longest_tag_works_and_a_longer_one_is_refused_where_it_is_written() {
    let long = "t".repeat(255);
    let fleet = TestFleet::with_spec(&long, &spec(&long, &[("node", 0)]));
    let rows = fleet.create();
    assert_all_healthy(&rows);
    fleet.run_ok(&["destroy", "--tag", &long]);

    let too_long = "t".repeat(256);
    let refused = TestFleet::with_spec(&too_long, &spec(&too_long, &[("node", 0)]));
    let output = refused.run(&["create", "--config", &refused.spec_arg()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fleet.yaml:1:6: error: tag: the tag is 256 bytes long"), "{stderr}");
    assert!(stderr.contains("help: shorten it to at most 255 characters"), "{stderr}");
    assert!(!refused.home.path().join("deployments").exists(), "nothing was written");
}

/// The CLI killed (SIGKILL) right after named steps of create, update and destroy: every run
/// after converges, no machine runs two agents or binaries, and destroy leaves nothing.
#[test]
fn commands_killed_at_chosen_moments_converge() {
    let fleet = TestFleet::new("halted", FleetOptions { count: 4, ..FleetOptions::default() });
    let spec = fleet.spec_arg();
    for point in ["create:recorded", "create:launched", "create:rollout-started"] {
        let output = fleet
            .command(&["create", "--config", &spec])
            .env("FLOTILLA_TEST_HALT_AT", point)
            .output()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&output.status),
            Some(9),
            "create stopped itself at {point}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rows = fleet.create();
    assert_all_healthy(&rows);
    for name in ["monitoring", "node-0", "node-1", "node-2", "node-3"] {
        let bootstrap = fleet.instance_dir(name).join("bootstrap.json");
        assert_eq!(pids_with_arg(&bootstrap.display().to_string()).len(), 1, "{name}: one agent");
    }

    // An update killed mid-rollout, then run again: every machine on the new version.
    fleet.write_config("config-v2.conf", "bonjour");
    let v2 = fleet.write_spec(
        "fleet-v2.yaml",
        &fleet_app_bin(),
        "config-v2.conf",
        &FleetOptions { count: 4, ..FleetOptions::default() },
    );
    let v2 = v2.display().to_string();
    let output = fleet
        .command(&["update", "--config", &v2])
        .env("FLOTILLA_TEST_HALT_AT", "update:rollout-started")
        .output()
        .unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&output.status), Some(9));
    let output = fleet.run_ok(&["update", "--config", &v2, "--output", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_all_healthy(&rows);
    for row in rows.iter().filter(|r| r["role"] == "binary") {
        let body = http_get(ip_of(row), 9090, "/health").expect("health answers");
        assert!(body.contains("greeting=bonjour"), "{body}");
    }

    // destroy killed after marking, then after stopping the agents: the next one finishes.
    let local_root = fleet.local_root();
    let pids = pids_under(&local_root);
    for point in ["destroy:marked", "destroy:agents-stopped"] {
        let output = fleet
            .command(&["destroy", "--tag", "halted"])
            .env("FLOTILLA_TEST_HALT_AT", point)
            .output()
            .unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&output.status), Some(9));
    }
    let listed = fleet.run_ok(&["list", "--output", "json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["status"], "destroying", "{listed}");
    fleet.run_ok(&["destroy", "--tag", "halted"]);
    for pid in pids {
        assert!(!is_alive(pid), "pid {pid} survived");
    }
    assert!(leases_of(&local_root).is_empty());
    let listed = fleet.run_ok(&["list", "--output", "json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["status"], "destroyed", "{listed}");
}

/// Each state file truncated in turn: destroy still ends every process and releases every
/// address, and list shows a deployment whose metadata is unreadable instead of hiding it.
#[test]
fn destroy_works_whatever_state_file_is_corrupt() {
    let corruptions = [
        "metadata.json",
        "local/machines.json",
        "manifests.json",
        "ca.crt",
        "cli.key",
        "local/instances/node-0/agent.pid",
        "local/instances/node-0/bootstrap.json",
    ];
    for file in corruptions {
        let tag = format!("corrupt-{}", file.replace(['/', '.'], "-"));
        let fleet = TestFleet::new(&tag, FleetOptions { count: 2, ..FleetOptions::default() });
        fleet.create();
        let local_root = fleet.local_root();
        let pids = pids_under(&local_root);
        assert!(pids.len() >= 5, "{file}: three agents and two binaries run: {pids:?}");
        let path = fleet.deployment_dir().join(file);
        let text = fs_err::read(&path).unwrap();
        fs_err::write(&path, &text[..text.len() / 2]).unwrap();

        if file == "metadata.json" {
            let output = fleet.run_ok(&["list", "--output", "json"]);
            let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(listed[0]["tag"], tag.as_str(), "{listed}");
            assert_eq!(listed[0]["status"], "unreadable", "{listed}");
            let error = listed[0]["error"].as_str().unwrap_or_default();
            assert!(error.contains(&format!("flotilla destroy --tag {tag}")), "{error}");
            let table = fleet.run_ok(&["list"]);
            let table = String::from_utf8_lossy(&table.stdout);
            assert!(
                table.lines().any(|l| l.starts_with(&tag) && l.contains("unreadable")),
                "{table}"
            );
        }

        let output = fleet.run(&["destroy", "--tag", &tag]);
        assert!(
            output.status.success(),
            "{file}: destroy failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for pid in pids {
            assert!(!is_alive(pid), "{file}: pid {pid} survived destroy");
        }
        assert!(pids_under(&local_root).is_empty(), "{file}");
        assert!(leases_of(&local_root).is_empty(), "{file}: leases released");
    }
}

/// destroy ends what flotilla started and nothing else: a process the user runs in the
/// deployment's directories (a shell, `tail -f` on a log) survives it.
#[test]
fn destroy_leaves_processes_flotilla_did_not_start() {
    let fleet = TestFleet::new("bystander", FleetOptions { count: 1, ..FleetOptions::default() });
    fleet.create();
    let dir = fleet.instance_dir("node-0");
    let mut tail = Command::new("tail")
        .args(["-f", "logs/binary.log"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut shell = Command::new("setsid")
        .args(["sleep", "120"])
        .current_dir(dir.join("work"))
        .spawn()
        .unwrap();
    wait_for("the bystanders to start", Duration::from_secs(5), || {
        (pids_under(&dir).len() >= 3).then_some(())
    });
    fleet.run_ok(&["destroy", "--tag", "bystander"]);
    assert!(is_alive(tail.id()), "tail -f on a log is not flotilla's to kill");
    let sleep_pid = pids_with_arg("120").into_iter().find(|pid| is_alive(*pid));
    assert!(sleep_pid.is_some(), "a process in its own session survives");
    let _ = tail.kill();
    let _ = tail.wait();
    if let Some(pid) = sleep_pid {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    let _ = shell.wait();
}

/// Agents and binaries get a clean environment and sane limits: the operator's secrets and
/// FLOTILLA_HOME (the directory with the CA key) do not reach them, and a low file-size limit
/// in the shell that ran create does not either.
#[test]
fn binaries_get_neither_the_operators_environment_nor_its_limits() {
    let fleet = TestFleet::new("clean-env", FleetOptions { count: 1, ..FleetOptions::default() });
    let output = Command::new("prlimit")
        .arg("--fsize=65536:unlimited")
        .arg(flotilla_bin())
        .args(["create", "--config", &fleet.spec_arg(), "--output", "json"])
        .current_dir(fleet.work.path())
        .env("FLOTILLA_HOME", fleet.home.path())
        .env("OPERATOR_SECRET", "hunter2")
        .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        .env_remove("RUST_LOG")
        .output()
        .expect("prlimit (util-linux) runs flotilla; install util-linux if it is missing");
    let output = succeeded(&["create"], output);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let binary = row(&rows, "node-0")["pid"].as_u64().expect("the binary runs") as u32;
    let agent =
        pids_with_arg(&fleet.instance_dir("node-0").join("bootstrap.json").display().to_string())
            [0];
    for pid in [agent, binary] {
        let environment = environment_of(pid);
        for secret in ["OPERATOR_SECRET", "AWS_SECRET_ACCESS_KEY", "FLOTILLA_HOME"] {
            assert!(
                !environment.iter().any(|e| e.starts_with(&format!("{secret}="))),
                "{secret} reached pid {pid}: {environment:?}"
            );
        }
        assert!(environment.iter().any(|e| e.starts_with("PATH=")), "{environment:?}");
        let limits = fs_err::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let file_size = limits.lines().find(|l| l.starts_with("Max file size")).unwrap();
        assert!(file_size.split_whitespace().nth(3) == Some("unlimited"), "{file_size}");
    }
    assert!(environment_of(binary).contains(&"FLOTILLA_TAG=clean-env".to_owned()));
}

/// Everything flotilla writes is private: the whole state tree, walked, has no file or
/// directory that its group or others may read, and neither have its address leases.
#[test]
fn every_file_flotilla_writes_is_private() {
    let fleet = TestFleet::new("modes", FleetOptions { count: 2, ..FleetOptions::default() });
    fleet.create();
    let mut open = Vec::new();
    for (path, mode) in modes_under(fleet.home.path()) {
        if mode & 0o077 != 0 {
            open.push(format!("{:o} {}", mode, path.display()));
        }
    }
    for lease in leases_of(&fleet.local_root()) {
        let path = lease_dir().join(&lease);
        let mode = fs_err::metadata(&path).unwrap().permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            open.push(format!("{mode:o} {}", path.display()));
        }
    }
    assert!(open.is_empty(), "readable by others:\n{}", open.join("\n"));
}

/// A machine whose agent was restored and whose binary then crash-loops fails create (exit 1,
/// naming it and why) instead of counting as "unchanged" and so as healthy.
#[test]
fn create_fails_when_a_restored_machine_does_not_become_healthy() {
    let fleet = TestFleet::new(
        "restored",
        FleetOptions { count: 2, health_deadline: "4s", ..FleetOptions::default() },
    );
    // The binary runs the example app unless a marker file says to crash.
    let marker = fleet.work.path().join("crash");
    let wrapper = fleet.work.path().join("wrapper.sh");
    fs_err::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'crashing on purpose' >&2; exit 3; fi\nexec '{}' \"$@\"\n",
            marker.display(),
            fleet_app_bin().display()
        ),
    )
    .unwrap();
    fs_err::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let options = FleetOptions { count: 2, health_deadline: "4s", ..FleetOptions::default() };
    let spec = fleet.write_spec("wrapped.yaml", &wrapper, "config.conf", &options);
    let spec = spec.display().to_string();
    fleet.run_ok(&["create", "--config", &spec]);

    // node-0's agent dies (its binary with it) and is started again in its directory, as
    // systemd restarts the agent of a rebooted instance: it restores its version, whose
    // binary now crashes. (An agent that stays dead is a machine gone, which create replaces
    // with a new one instead: see local_retire.rs.)
    fs_err::write(&marker, "").unwrap();
    let node0 = fleet.instance_dir("node-0");
    let bootstrap = node0.join("bootstrap.json").display().to_string();
    let agent = pids_with_arg(&bootstrap)[0];
    let _ = Command::new("kill").args(["-9", &agent.to_string()]).status();
    wait_for("node-0's agent to die", Duration::from_secs(10), || (!is_alive(agent)).then_some(()));
    let mut restored = Command::new(flotilla_bin())
        .args(["agent", "--bootstrap", &bootstrap])
        .current_dir(&node0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the restored agent to write its pid", Duration::from_secs(20), || {
        let pid = fs_err::read_to_string(node0.join("agent.pid")).ok()?;
        (pid.trim() == restored.id().to_string()).then_some(())
    });

    let output = fleet.run(&["create", "--config", &spec]);
    let _ = restored.kill();
    let _ = restored.wait();
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("node-0"), "{stderr}");
    assert!(stderr.contains("did not become healthy within its health deadline"), "{stderr}");
    assert!(!stderr.contains("node-1:"), "node-1 is healthy: {stderr}");
}

/// An error no wait mends ends create at once with its reason: an agent that answers with
/// another machine's certificate is refused in well under the minute create gives agents.
#[test]
fn a_certificate_that_cannot_verify_fails_create_at_once() {
    let fleet = TestFleet::new("impostor", FleetOptions { count: 2, ..FleetOptions::default() });
    fleet.create();
    let node0 = fleet.instance_dir("node-0");
    let bootstrap = node0.join("bootstrap.json").display().to_string();
    let agent = pids_with_arg(&bootstrap)[0];
    let _ = Command::new("kill").arg(agent.to_string()).status();
    wait_for("node-0's agent to stop", Duration::from_secs(20), || {
        (!is_alive(agent)).then_some(())
    });
    // The impostor serves node-1's identity on node-0's address; create's own launch would
    // start node-0's agent with a fresh identity, so the impostor is started first and keeps
    // the machine's lock.
    fs_err::copy(fleet.instance_dir("node-1").join("identity.json"), node0.join("identity.json"))
        .unwrap();
    let mut impostor = Command::new(flotilla_bin())
        .args(["agent", "--bootstrap", &bootstrap])
        .current_dir(&node0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ip = ip_of(row(&fleet.status(), "node-0"));
    wait_for("the impostor to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect((ip, 7443)).ok().map(drop)
    });
    let started = Instant::now();
    let output = fleet.run(&["create", "--config", &fleet.spec_arg()]);
    let took = started.elapsed();
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("node-0") && stderr.contains("certificate"), "{stderr}");
    assert!(took < Duration::from_secs(20), "create gave up after {took:?}, not at once");
}

/// A file that is not a regular file is refused at once as the spec: `/dev/zero` no longer
/// grows without bound and a FIFO no longer blocks.
#[test]
fn only_regular_files_are_read_as_specs() {
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("spec.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in [Path::new("/dev/zero"), fifo.as_path(), work.path()] {
        let started = Instant::now();
        let output = Command::new(flotilla_bin())
            .args(["validate", "--config"])
            .arg(path)
            .env("FLOTILLA_HOME", work.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", path.display());
        assert!(started.elapsed() < Duration::from_secs(5), "{}", path.display());
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("not a regular file"), "{}: {stdout}", path.display());
    }
}

/// Names and paths are escaped when shown: a spec path with an escape sequence and a
/// right-to-left override does not reach the terminal raw.
#[test]
fn control_characters_never_reach_the_terminal_raw() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("evil\u{1b}[31m\u{202e}lmay.yaml");
    fs_err::write(&path, "tag: \"bad\\u202Etag\"\n").unwrap();
    let output = Command::new(flotilla_bin())
        .args(["validate", "--config"])
        .arg(&path)
        .env("FLOTILLA_HOME", work.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text:?}");
    assert!(text.contains("\\u{1b}[31m\\u{202e}lmay.yaml"), "{text}");
    assert!(text.contains("bad\\u{202e}tag"), "{text}");
}

/// 200 connections that trickle a TLS handshake, and 200 that trickle an HTTP request head on
/// the metrics port, while the CLI keeps working: status answers and scrapes are served.
#[test]
fn the_cli_keeps_working_through_a_connection_flood() {
    use std::io::Write;

    let fleet = TestFleet::new("flood", FleetOptions { count: 1, ..FleetOptions::default() });
    fleet.create();
    let ip = ip_of(row(&fleet.status(), "node-0"));
    let mut flood = Vec::new();
    for _ in 0..200 {
        // The first bytes of a TLS ClientHello record, then nothing.
        if let Ok(mut stream) = std::net::TcpStream::connect((ip, 7443)) {
            let _ = stream.write_all(&[0x16, 0x03, 0x01, 0x02]);
            flood.push(stream);
        }
        if let Ok(mut stream) = std::net::TcpStream::connect((ip, 9101)) {
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            flood.push(stream);
        }
    }
    assert!(flood.len() >= 390, "the flood connected: {}", flood.len());
    for _ in 0..3 {
        let started = Instant::now();
        let status = fleet.status();
        assert_eq!(row(&status, "node-0")["health"], "healthy", "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "status took {:?}", started.elapsed());
        let metrics = http_get(ip, 9101, "/metrics").expect("a scrape is served during the flood");
        assert!(metrics.contains("flotilla_binary_up 1"), "{metrics}");
    }
    drop(flood);
}
