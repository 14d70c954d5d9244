//! The agent as its own process, entered through [`flotilla_agent::run`] as the CLI does: the
//! binary dies with an agent killed by SIGKILL (parent-death signal), SIGTERM stops both
//! gracefully, and the idle agent's memory is measured.
//!
//! The agent process is the crate's `agent_process` example, which cargo builds with the tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Deployment, Version, kill, process_alive, read_pid, wait_until};
use rustix::process::Signal;

/// The `agent_process` example beside this test binary (`target/<profile>/deps/..`).
fn agent_process_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let binary = profile_dir.join("examples").join("agent_process");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p flotilla-agent --examples` \
         (cargo test and cargo nextest build it with the tests)",
        binary.display()
    );
    binary
}

fn spawn_agent_process(deployment: &Deployment, bootstrap: &Path) -> Child {
    let stderr = fs_err::File::create(deployment.temp.path().join("agent-stderr.txt"))
        .expect("a file for the agent's stderr");
    Command::new(agent_process_binary())
        .arg(bootstrap)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.into_parts().0))
        .spawn()
        .expect("the agent process starts")
}

async fn wait_for_api(deployment: &Deployment, agent: &mut Child) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        if deployment.http.get(deployment.url("/v1/status")).send().await.is_ok() {
            return;
        }
        let stderr = || fs_err::read_to_string(deployment.temp.path().join("agent-stderr.txt"));
        if let Some(exit) = agent.try_wait().expect("the agent process can be waited for") {
            panic!("the agent process ended ({exit}): {}", stderr().unwrap_or_default());
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("the agent process did not serve in time: {}", stderr().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    let bootstrap = deployment.temp.path().join("bootstrap.json");
    let json = serde_json::json!({
        "tag": deployment.tag,
        "dir": deployment.dir,
        "listen": deployment.address,
        "identity": deployment.identity_path,
        "stop_grace": "2s",
    });
    fs_err::write(&bootstrap, json.to_string()).unwrap();

    let mut agent = spawn_agent_process(&deployment, &bootstrap);
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
    let mut agent = spawn_agent_process(&deployment, &bootstrap);
    wait_for_api(&deployment, &mut agent).await;
    assert!(!process_alive(child), "the next agent killed the old binary's child");
    assert!(deployment.log_text().contains(&format!("left behind: pids [{child}]")));
    let binary = deployment.wait_healthy(&manifest).await.pid.unwrap();
    kill(agent.id(), Signal::TERM);
    let deadline = std::time::Instant::now() + common::WAIT;
    let exit = loop {
        if let Some(exit) = agent.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "the agent did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    assert!(!process_alive(binary));
    let log = deployment.log_text();
    assert!(log.contains("got SIGTERM"), "{log}");
    assert!(log.trim_end().ends_with("agent stopped"), "{log}");
    assert!(!deployment.dir.join("agent.pid").exists());
    assert!(!deployment.dir.join("binary.pgid").exists());
}
