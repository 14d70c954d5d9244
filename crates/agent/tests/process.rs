//! The agent as its own process, entered through [`flotilla_agent::run`] as the CLI does: the
//! binary dies with an agent killed by SIGKILL (parent-death signal), SIGTERM stops both
//! gracefully, and the idle agent's memory is measured.
//!
//! The agent process is the crate's `agent_process` example, which cargo builds with the tests
//! (see `common::spawn_agent_process`).

mod common;

use std::time::Duration;

use common::{
    Deployment, Version, kill, process_alive, read_pid, spawn_agent_process, wait_for_api,
    wait_for_exit, wait_until, write_bootstrap,
};
use rustix::process::Signal;

fn resident_kilobytes(pid: u32) -> u64 {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status")).expect("a live process");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[tokio::test]
async fn the_binary_dies_with_the_agent_and_sigterm_stops_both() {
    let deployment = Deployment::new("127.200.5.1");
    let bootstrap = write_bootstrap(&deployment, serde_json::json!({}));

    let mut agent = spawn_agent_process(&deployment, &bootstrap, &[]);
    wait_for_api(&deployment, &mut agent).await;
    // The binary's child records its pid, to be found after the agent is killed.
    let manifest = deployment.publish(&Version::script(
        r#"trap 'echo "got SIGTERM"; exit 0' TERM
sleep 100000 &
echo $! > child.pid
wait $!
"#,
    ));
    let binary = deployment.install(&manifest).await.pid.unwrap();
    let child = read_pid(&deployment.work().join("child.pid")).await;

    // Idle: the binary runs and is healthy, nobody asks anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A figure, not a behaviour: printed here, measured in a release build by the lifecycle
    // bench (BENCHMARKS.md, "Idle agent RSS"); a test does not assert it.
    let rss = resident_kilobytes(agent.id());
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    eprintln!("idle agent process ({build} build, inside the test harness): VmRSS {rss} kB");

    // SIGKILL leaves the agent no chance to stop the binary: the parent-death signal does.
    kill(agent.id(), Signal::KILL);
    agent.wait().unwrap();
    wait_until("the binary to die with its agent", || !process_alive(binary)).await;
    // Its child has no parent-death signal: it outlives both, until the next agent starts.
    assert!(process_alive(child));

    // The next agent kills what the old binary left, restores the version; SIGTERM stops the
    // binary, then the agent.
    let mut agent = spawn_agent_process(&deployment, &bootstrap, &[]);
    wait_for_api(&deployment, &mut agent).await;
    assert!(!process_alive(child), "the next agent killed the old binary's child");
    assert!(deployment.log_text().contains(&format!("left behind: pids [{child}]")));
    let binary = deployment.wait_healthy(&manifest).await.pid.unwrap();
    kill(agent.id(), Signal::TERM);
    let exit = wait_for_exit(&mut agent).await;
    assert!(exit.success(), "{exit}");
    assert!(!process_alive(binary));
    let log = deployment.log_text();
    assert!(log.contains("got SIGTERM"), "{log}");
    assert!(log.trim_end().ends_with("agent stopped"), "{log}");
    assert!(!deployment.dir.join("agent.pid").exists());
    assert!(!deployment.dir.join("binary.pgid").exists());
}

#[tokio::test]
async fn the_agents_own_log_goes_to_a_rotated_private_file_when_the_bootstrap_says_so() {
    let deployment = Deployment::new("127.200.5.2");
    let directory = deployment.temp.path().join("agent-logs");
    let agent_log = directory.join("agent.log");
    // Large enough that the start-up lines survive the handshakes of waiting for the API (each
    // writes kilobytes at trace level), small enough that a few more rotate it twice.
    const MAX_BYTES: u64 = 65536;
    let logs = serde_json::json!({"max_bytes": MAX_BYTES, "keep": 2, "agent_log": agent_log});
    let bootstrap = write_bootstrap(&deployment, serde_json::json!({ "logs": logs }));
    let mut agent = spawn_agent_process(&deployment, &bootstrap, &["-vvv"]);
    wait_for_api(&deployment, &mut agent).await;
    let rotated = |n: u32| directory.join(format!("agent.log.{n}"));
    let everything = || {
        [rotated(2), rotated(1), agent_log.clone()]
            .map(|path| fs_err::read_to_string(path).unwrap_or_default())
            .concat()
    };
    let started = everything();
    assert!(started.contains("agent serving: API on 127.200.5.2:7443"), "{started}");

    // At trace level every TLS handshake writes lines: fresh connections rotate the log.
    let tls = flotilla_core::pki::client_config(deployment.ca.cert_pem(), &deployment.client_cert)
        .unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !rotated(2).exists() {
        assert!(tokio::time::Instant::now() < deadline, "no second rotation: {}", everything());
        client.get(deployment.url("/v1/status")).send().await.unwrap();
    }
    kill(agent.id(), Signal::TERM);
    assert!(wait_for_exit(&mut agent).await.success());

    assert_eq!(common::mode(&directory), 0o700);
    for path in [agent_log.clone(), rotated(1), rotated(2)] {
        assert_eq!(common::mode(&path), 0o600, "{}", path.display());
        let size = fs_err::metadata(&path).unwrap().len();
        assert!(size <= MAX_BYTES, "{} has {size} bytes", path.display());
    }
    assert!(!rotated(3).exists());
    let last = fs_err::read_to_string(&agent_log).unwrap();
    assert!(last.contains("INFO SIGTERM: stopping"), "{last}");
    assert!(last.trim_end().ends_with("INFO agent stopped"), "{last}");
    assert!(!last.contains('\u{1b}'), "no terminal colours in a file: {last}");
    // Nothing went to stderr.
    assert_eq!(common::agent_stderr(&deployment), "");
}
