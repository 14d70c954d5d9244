//! hosts.yaml apart from the version: a manifest that changes only hosts.yaml is applied in
//! place (signal, restart, or nothing, as `on_hosts_change` says), a failed restart puts the old
//! file back, and `Drain` stops the binary for good.

mod common;

use common::{Deployment, IDLE, Version, process_alive, read_pid, wait_until};
use flotilla_spec::api::{BinaryState, RolloutPhase};
use flotilla_spec::fleet::{HostsSignal, OnHostsChange};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// A script that records its pid, appends hosts.yaml's content to `reads` at start and on
/// SIGUSR1, and idles.
fn rereading_script() -> String {
    r#"echo $$ > pid
hosts="$(printf '%s' "$*" | sed -n 's/.*--hosts=\([^ ]*\).*/\1/p')"
cat "$hosts" >> reads
trap 'cat "$hosts" >> reads' USR1
trap 'exit 0' TERM
while true; do sleep 0.05; done
"#
    .to_owned()
}

fn hosts_file(deployment: &Deployment) -> String {
    fs_err::read_to_string(deployment.dir.join("hosts.yaml")).expect("hosts.yaml is in place")
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn a_hosts_only_change_with_a_signal_keeps_the_binary_running() {
    let deployment = Deployment::new("127.200.9.1");
    let agent = deployment.start().await;
    let mut version = Version::script(&rereading_script());
    version.hosts = "hosts: [a]\n".to_owned();
    version.on_hosts_change = OnHostsChange::Signal(HostsSignal::Usr1);
    let first = deployment.publish(&version);
    let running = deployment.install(&first).await;
    let pid = read_pid(&deployment.work().join("pid")).await;
    assert_eq!(running.hosts.as_deref(), Some(digest("hosts: [a]\n").as_str()));

    version.hosts = "hosts: [a, b]\n".to_owned();
    let second = deployment.publish(&version);
    assert_eq!(second.version(), first.version(), "hosts are not part of the version");
    let (code, answer) = deployment.apply(&second).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    let rollout = deployment.wait_rollout_done(&second).await;
    assert_eq!(rollout.phase, RolloutPhase::Healthy, "{rollout:#?}");
    assert!(rollout.hosts_only);
    assert_eq!(hosts_file(&deployment), "hosts: [a, b]\n");

    let reads = deployment.work().join("reads");
    wait_until("the binary to reread hosts.yaml on SIGUSR1", || {
        fs_err::read_to_string(&reads).is_ok_and(|r| r == "hosts: [a]\nhosts: [a, b]\n")
    })
    .await;
    let status = deployment.status().await;
    assert_eq!(status.pid, Some(pid), "not restarted");
    assert!(process_alive(pid));
    assert_eq!(status.restarts, 0);
    assert_eq!(status.version, Some(first.version()));
    assert_eq!(status.hosts.as_deref(), Some(digest("hosts: [a, b]\n").as_str()));
    assert!(deployment.log_text().contains("sent SIGUSR1 to the binary"));

    // The same manifest again: nothing to do.
    let (code, answer) = deployment.apply(&second).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"], "unchanged");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hosts_only_change_restarts_by_default_and_none_leaves_the_binary_alone() {
    let deployment = Deployment::new("127.200.9.2");
    let agent = deployment.start().await;
    let mut version = Version::script(&rereading_script());
    let first = deployment.publish(&version);
    deployment.install(&first).await;
    let pid = read_pid(&deployment.work().join("pid")).await;

    version.hosts = "hosts: [x]\n".to_owned();
    let restart = deployment.publish(&version);
    deployment.apply(&restart).await;
    let rollout = deployment.wait_rollout_done(&restart).await;
    assert_eq!(rollout.phase, RolloutPhase::Healthy, "{rollout:#?}");
    let after = deployment.wait_healthy(&restart).await;
    assert_ne!(after.pid, Some(pid), "restarted onto the new file");
    assert_eq!(hosts_file(&deployment), "hosts: [x]\n");

    version.hosts = "hosts: [y]\n".to_owned();
    version.on_hosts_change = OnHostsChange::None;
    let none = deployment.publish(&version);
    deployment.apply(&none).await;
    let rollout = deployment.wait_rollout_done(&none).await;
    assert_eq!(rollout.phase, RolloutPhase::Healthy, "{rollout:#?}");
    assert_eq!(hosts_file(&deployment), "hosts: [y]\n");
    assert_eq!(deployment.status().await.pid, after.pid, "left alone");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_that_fails_with_the_new_hosts_puts_the_old_file_back() {
    let deployment = Deployment::new("127.200.9.3");
    let agent = deployment.start().await;
    // Refuses to run with a hosts.yaml that names `bad`.
    let script = format!(
        r#"hosts="$(printf '%s' "$*" | sed -n 's/.*--hosts=\([^ ]*\).*/\1/p')"
if grep -q bad "$hosts"; then echo "bad peer in $hosts"; exit 1; fi
{IDLE}"#
    );
    let mut version = Version::script(&script);
    version.hosts = "hosts: [good]\n".to_owned();
    let good = deployment.publish(&version);
    deployment.install(&good).await;

    version.hosts = "hosts: [good, bad]\n".to_owned();
    let bad = deployment.publish(&version);
    deployment.apply(&bad).await;
    let rollout = deployment.wait_rollout_done(&bad).await;
    assert_eq!(rollout.phase, RolloutPhase::RolledBack, "{rollout:#?}");
    let reason = rollout.reason.clone().expect("a reason");
    assert!(reason.contains("the binary with the new hosts.yaml"), "{reason}");
    assert!(rollout.log_tail.iter().any(|l| l.starts_with("bad peer in")), "{rollout:#?}");
    assert_eq!(hosts_file(&deployment), "hosts: [good]\n", "the old file is back");
    let status = deployment.wait_healthy(&good).await;
    assert_eq!(status.hosts.as_deref(), Some(digest("hosts: [good]\n").as_str()));
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_new_version_that_rolls_back_takes_its_hosts_file_with_it() {
    let deployment = Deployment::new("127.200.9.4");
    let agent = deployment.start().await;
    let mut version = Version::script(IDLE);
    version.hosts = "hosts: [one]\n".to_owned();
    let old = deployment.publish(&version);
    deployment.install(&old).await;

    let mut broken = Version::script("exit 3\n");
    broken.hosts = "hosts: [one, two]\n".to_owned();
    let new = deployment.publish(&broken);
    deployment.apply(&new).await;
    let rollout = deployment.wait_rollout_done(&new).await;
    assert_eq!(rollout.phase, RolloutPhase::RolledBack, "{rollout:#?}");
    assert!(!rollout.hosts_only);
    assert_eq!(hosts_file(&deployment), "hosts: [one]\n");
    deployment.wait_healthy(&old).await;
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn drain_stops_the_binary_and_keeps_it_stopped() {
    let deployment = Deployment::new("127.200.9.5");
    let agent = deployment.start().await;
    let manifest = deployment.publish(&Version::script(IDLE));
    let running = deployment.install(&manifest).await;
    let pid = running.pid.expect("a pid");

    let (code, answer) = deployment.post("/v1/drain").await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["state"], "stopped", "{answer}");
    assert!(!process_alive(pid));
    let status = deployment.status().await;
    assert_eq!(status.state, BinaryState::Stopped);
    let log = deployment.log_text();
    assert!(log.contains("draining: this machine is leaving the deployment"), "{log}");
    assert!(log.contains("drained:"), "{log}");
    agent.shutdown().await.unwrap();
}
