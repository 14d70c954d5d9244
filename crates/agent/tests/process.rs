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
    let rss = resident_kilobytes(agent.id());
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    eprintln!("idle agent process ({build} build, inside the test harness): VmRSS {rss} kB");
    assert!(rss < 15 * 1024, "the idle agent uses {rss} kB");

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
