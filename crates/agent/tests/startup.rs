//! Starting the agent: the instance lock, waiting for and checking the identity bundle, and
//! restoring the installed version (also after an interrupted rollout or a damaged version).

mod common;

use std::time::Duration;

use common::{Deployment, IDLE, Version, mode, process_alive};
use flotilla_agent::{AgentError, Fetchers};
use flotilla_spec::HealthCheck;
use flotilla_spec::api::{BinaryState, RolloutPhase};

#[tokio::test]
async fn a_second_agent_for_the_same_directory_is_refused() {
    let deployment = Deployment::new("127.200.6.1");
    let agent = deployment.start().await;
    let error = flotilla_agent::start(deployment.bootstrap(), Fetchers::default())
        .await
        .expect_err("the directory is taken");
    assert!(matches!(error, AgentError::AlreadyRunning { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!("another agent (pid {})", std::process::id())), "{message}");
    assert!(message.contains("agent.lock"), "{message}");
    agent.shutdown().await.unwrap();
    // Once the first one is gone, the directory is free.
    let agent = deployment.start().await;
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_identity_is_awaited_and_must_belong_to_the_deployment() {
    let deployment = Deployment::new("127.200.6.2");
    let bundle = deployment.identity_bundle();

    // It appears while the agent waits.
    fs_err::remove_file(&deployment.identity_path).unwrap();
    let writer = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        deployment.write_identity(&bundle);
    };
    let (agent, ()) = tokio::join!(deployment.start(), writer);
    assert_eq!(deployment.status().await.name, "node-0");
    agent.shutdown().await.unwrap();

    // It never appears.
    fs_err::remove_file(&deployment.identity_path).unwrap();
    let bootstrap = deployment.bootstrap_with(serde_json::json!({"identity_timeout": "600ms"}));
    let error = flotilla_agent::start(bootstrap, Fetchers::default()).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, AgentError::IdentityTimeout { .. }), "{message}");
    assert!(message.contains("did not appear within 600ms") && message.contains("does not exist"));

    // It belongs to another deployment.
    let mut other = bundle.clone();
    other.tag = "someone-else".to_owned();
    deployment.write_identity(&other);
    let error =
        flotilla_agent::start(deployment.bootstrap(), Fetchers::default()).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, AgentError::IdentityForOtherDeployment { .. }), "{message}");
    assert!(message.contains("`someone-else`") && message.contains("`t1`"), "{message}");

    // Its key does not parse: the error says so without showing the key.
    let mut broken = bundle.clone();
    broken.key = flotilla_spec::Secret::new("-----BEGIN NOTHING-----\nsecret-material\n");
    deployment.write_identity(&broken);
    let error =
        flotilla_agent::start(deployment.bootstrap(), Fetchers::default()).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("`key`") && !message.contains("secret-material"), "{message}");
    assert!(!format!("{error:?}").contains("secret-material"));
}

#[tokio::test]
async fn the_installed_version_is_restored_and_an_interrupted_rollout_is_forgotten() {
    let deployment = Deployment::new("127.200.6.3");
    let agent = deployment.start().await;
    let installed = deployment.publish(&Version::script(IDLE));
    let first = deployment.install(&installed).await;
    agent.shutdown().await.unwrap();
    assert!(!process_alive(first.pid.unwrap()), "shutdown stops the binary");

    let agent = deployment.start().await;
    let restored = deployment.wait_healthy(&installed).await;
    assert_ne!(restored.pid, first.pid);
    assert_eq!(mode(&deployment.dir.join("agent-state.json")), 0o600);

    // The agent stops while a new version is held to its deadline: the next start runs the
    // installed version and removes the other one.
    let mut unfinished = Version::script(&format!("echo unfinished\n{IDLE}"));
    unfinished.health = HealthCheck::Tcp { port: 9 };
    let unfinished = deployment.publish(&unfinished);
    deployment.apply(&unfinished).await;
    let during = deployment
        .wait_for("the new version to run", |status| {
            status.rollout.as_ref().is_some_and(|r| r.phase == RolloutPhase::Starting)
                && status.pid.is_some()
        })
        .await;
    agent.shutdown().await.unwrap();
    assert!(!process_alive(during.pid.unwrap()));
    let agent = deployment.start().await;
    let status = deployment.wait_healthy(&installed).await;
    assert_eq!(status.rollout, None);
    let versions: Vec<_> = fs_err::read_dir(deployment.dir.join("versions"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(versions, vec![installed.version()]);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_damaged_version_is_not_run_and_the_previous_one_is() {
    let deployment = Deployment::new("127.200.6.4");
    let agent = deployment.start().await;
    let v1 = deployment.publish(&Version::script(&format!("echo v1\n{IDLE}")));
    let v2 = deployment.publish(&Version::script(&format!("echo v2\n{IDLE}")));
    deployment.install(&v1).await;
    deployment.install(&v2).await;
    agent.shutdown().await.unwrap();

    // Someone changed the installed binary on disk.
    let binary = deployment.dir.join("versions").join(v2.version()).join("binary");
    fs_err::write(&binary, "#!/bin/sh\necho tampered\n").unwrap();
    let agent = deployment.start().await;
    let status = deployment.wait_healthy(&v1).await;
    let rollout = status.rollout.expect("the fallback is reported");
    assert_eq!(rollout.phase, RolloutPhase::RolledBack);
    assert_eq!(rollout.version, v2.version());
    let reason = rollout.reason.unwrap();
    assert!(reason.contains("the binary at") && reason.contains("the manifest says"), "{reason}");
    assert!(!deployment.logs(1000).await.contains("tampered"));
    agent.shutdown().await.unwrap();

    // With no sound version left, nothing runs, and the agent says why.
    let binary = deployment.dir.join("versions").join(v1.version()).join("binary");
    fs_err::write(&binary, "#!/bin/sh\necho tampered\n").unwrap();
    let agent = deployment.start().await;
    let status = deployment.status().await;
    assert_eq!((status.state, status.version), (BinaryState::Idle, None));
    assert_eq!(status.rollout.unwrap().phase, RolloutPhase::Failed);
    agent.shutdown().await.unwrap();
}
