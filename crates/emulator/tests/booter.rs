//! The booter runs a running instance's user data with the contract's environment, in its own
//! process group, and stops it when the instance terminates.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{Aws, base64, eventually};
use flotilla_emulator::control::{BootState, BootedInstance};

const BOOT_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes its environment and process group, says hello, then stays (as an exec'd agent would).
const USER_DATA: &str = r#"#!/bin/sh
env > "$FLOTILLA_ROOT/env.txt.tmp" && mv "$FLOTILLA_ROOT/env.txt.tmp" "$FLOTILLA_ROOT/env.txt"
echo "hello from user data"
exec sleep 600
"#;

async fn boot(aws: &Aws) -> (String, BootedInstance, BTreeMap<String, String>) {
    aws.instant_states().await;
    let id = aws.launch(1, &[("UserData", &base64(USER_DATA))]).await.remove(0);
    let booted = aws
        .emulator
        .wait_booted(&id, BOOT_TIMEOUT, |b| b.state == BootState::Running)
        .await
        .expect("booted");
    let env_file = booted.root.join("env.txt");
    let text = eventually("the user data's env.txt", BOOT_TIMEOUT, || {
        let env_file = env_file.clone();
        async move { fs_err::read_to_string(&env_file).ok() }
    })
    .await;
    let env = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (id, booted, env)
}

fn alive(pid: u32) -> bool {
    fs_err::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn process_group(pid: u32) -> Option<u32> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(2)?.parse().ok()
}

#[tokio::test]
async fn user_data_runs_with_the_contracts_environment_and_stops_on_terminate() {
    let aws = Aws::new("booter");
    let (id, booted, env) = boot(&aws).await;
    let ip = booted.public_ip.to_string();
    assert_eq!(booted.imds_endpoint, format!("http://{ip}:1338"));
    assert_eq!(env["FLOTILLA_ROOT"], booted.root.display().to_string());
    assert_eq!(env["FLOTILLA_IMDS_ENDPOINT"], booted.imds_endpoint);
    assert_eq!(env["FLOTILLA_S3_ENDPOINT"], aws.emulator.endpoint());
    assert_eq!(env["FLOTILLA_LISTEN"], ip);
    assert_eq!(env["FLOTILLA_SERVICE"], "foreground");
    assert!(
        env["PATH"].starts_with(&format!("{}/usr/local/bin:", booted.root.display())),
        "{}",
        env["PATH"]
    );
    assert!(
        !env.contains_key("AWS_ACCESS_KEY_ID"),
        "the booter's own credentials must not leak: {env:?}"
    );
    assert!(!env.contains_key("AWS_ENDPOINT_URL"));
    let health: serde_json::Value = reqwest::get(format!("{}/health", aws.emulator.control_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    match health["agent_seed"].as_str() {
        Some(seed) => assert_eq!(env["FLOTILLA_AGENT_SEED"], seed),
        None => assert!(!env.contains_key("FLOTILLA_AGENT_SEED")),
    }

    let pid = booted.pid.expect("the script's pid");
    assert!(alive(pid));
    assert_eq!(process_group(pid), Some(pid), "the script leads its own process group");
    let log = booted.root.join("var/log/cloud-init-output.log");
    eventually("the script's output in cloud-init-output.log", BOOT_TIMEOUT, || {
        let log = log.clone();
        async move { fs_err::read_to_string(&log).ok().filter(|t| t.contains("hello from user data")) }
    })
    .await;

    aws.terminate(std::slice::from_ref(&id)).await;
    let stopped = aws
        .emulator
        .wait_booted(&id, BOOT_TIMEOUT, |b| b.state == BootState::Stopped)
        .await
        .unwrap();
    assert_eq!(stopped.pid, Some(pid));
    assert!(!alive(pid), "the user data's process is gone");
    let imds = reqwest::Client::new()
        .put(format!("{}/latest/api/token", booted.imds_endpoint))
        .send()
        .await;
    assert!(imds.is_err(), "its IMDS is closed");
    assert!(Path::new(&booted.root).exists(), "the root stays for post-mortems");
}

#[tokio::test]
async fn the_agent_seed_can_be_switched_off_per_scope() {
    let aws = Aws::new("noseed");
    aws.scope.set_agent_seed(false).await.unwrap();
    let (id, _, env) = boot(&aws).await;
    assert!(!env.contains_key("FLOTILLA_AGENT_SEED"), "{env:?}");
    aws.terminate(&[id]).await;
}

/// An image tagged `flotilla-emulator:boot=none` models one without cloud-init: its instance
/// runs, but nothing runs its user data.
#[tokio::test]
async fn an_image_without_cloud_init_runs_no_user_data() {
    use flotilla_emulator::control::IMAGE_BOOT_TAG;
    let aws = Aws::new("booter-no-cloud-init");
    aws.instant_states().await;
    let name = format!("no-cloud-init-{}", aws.key());
    let image = aws
        .ec2(
            "RegisterImage",
            &[
                ("Name", name.as_str()),
                ("TagSpecification.1.ResourceType", "image"),
                ("TagSpecification.1.Tag.1.Key", IMAGE_BOOT_TAG),
                ("TagSpecification.1.Tag.1.Value", "none"),
            ],
        )
        .await
        .ok()
        .expect_value("imageId");
    let user_data = base64(USER_DATA);
    let params = [
        ("ImageId", image.as_str()),
        ("MinCount", "1"),
        ("MaxCount", "1"),
        ("UserData", user_data.as_str()),
    ];
    let id = aws.ec2("RunInstances", &params).await.ok().expect_value("instanceId");
    let booted = aws
        .emulator
        .wait_booted(&id, BOOT_TIMEOUT, |b| b.state != BootState::Failed)
        .await
        .expect("booted");
    assert_eq!(
        (booted.state, booted.pid),
        (BootState::Exited, None),
        "nothing started: {booted:?}"
    );
    assert!(!booted.root.join("env.txt").exists(), "the script never ran");
    assert_eq!(aws.state(&id).await.0, "running", "the instance runs all the same");
    aws.terminate(&[id]).await;
}
