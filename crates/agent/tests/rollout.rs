//! Rollouts: a new version replaces the old one, a failing one is rolled back, the same manifest
//! twice is a no-op, bad artifacts are refused, and requests wait for a rollout under way.

mod common;

use common::{Deployment, IDLE, Version, process_alive};
use flotilla_spec::HealthCheck;
use flotilla_spec::api::{BinaryState, RolloutPhase};
use reqwest::StatusCode;

fn version_dirs(deployment: &Deployment) -> Vec<String> {
    let mut names: Vec<String> = fs_err::read_dir(deployment.dir.join("versions"))
        .expect("the versions directory exists")
        .map(|entry| entry.expect("an entry").file_name().into_string().expect("a version id"))
        .collect();
    names.sort();
    names
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn state_file(deployment: &Deployment) -> serde_json::Value {
    let text = fs_err::read_to_string(deployment.dir.join("agent-state.json"))
        .expect("the state file exists");
    serde_json::from_str(&text).expect("the state file is JSON")
}

#[tokio::test]
async fn a_new_version_replaces_the_old_one_and_old_versions_are_removed() {
    let deployment = Deployment::new("127.200.3.1");
    let agent = deployment.start().await;
    let v1 = deployment.publish(&Version::script(&format!("echo v1\n{IDLE}")));
    let v2 = deployment.publish(&Version::script(&format!("echo v2\n{IDLE}")));
    let v3 = deployment.publish(&Version::script(&format!("echo v3\n{IDLE}")));

    let first = deployment.install(&v1).await;
    let state = state_file(&deployment);
    assert_eq!(state["installed"], v1.version());
    assert_eq!(state["previous"], serde_json::Value::Null);

    let (code, answer) = deployment.apply(&v2).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(answer, serde_json::json!({"result": "accepted", "version": v2.version()}));
    let rollout = deployment.wait_rollout_done(&v2).await;
    assert_eq!(rollout.phase, RolloutPhase::Healthy, "{rollout:#?}");
    assert_eq!(rollout.previous, Some(v1.version()));
    assert_eq!(rollout.reason, None);
    assert!(rollout.finished_at.is_some());
    let second = deployment.wait_healthy(&v2).await;
    assert!(!process_alive(first.pid.unwrap()), "the old version was stopped");
    assert_ne!(second.pid, first.pid);
    let state = state_file(&deployment);
    assert_eq!(state["installed"], v2.version());
    assert_eq!(state["previous"], v1.version());
    assert_eq!(version_dirs(&deployment), sorted(vec![v1.version(), v2.version()]));

    // Versions older than the previous one go.
    deployment.install(&v3).await;
    assert_eq!(version_dirs(&deployment), sorted(vec![v2.version(), v3.version()]));
    let log = deployment.logs(1000).await;
    assert!(log.contains("v3\n"), "{log}");
    assert!(log.contains("rollout of version") && log.contains("succeeded"), "{log}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_version_is_rolled_back_to_the_previous_one() {
    let deployment = Deployment::new("127.200.3.2");
    let agent = deployment.start().await;
    let good = deployment.publish(&Version::script(IDLE));
    let bad = deployment.publish(&Version::script("echo 'boom: the config is wrong'\nexit 1\n"));
    let before = deployment.install(&good).await;

    let (code, _) = deployment.apply(&bad).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let rollout = deployment.wait_rollout_done(&bad).await;
    assert_eq!(rollout.phase, RolloutPhase::RolledBack, "{rollout:#?}");
    let reason = rollout.reason.expect("the reason is reported");
    assert!(
        reason.contains("exited 3 times without becoming healthy")
            && reason.contains("exited with code 1"),
        "{reason}"
    );
    assert!(
        rollout.log_tail.iter().any(|line| line == "boom: the config is wrong"),
        "{:#?}",
        rollout.log_tail
    );
    assert!(rollout.log_tail.len() <= 50);

    // The previous version serves again, and nothing recorded the failed one.
    let after = deployment.wait_healthy(&good).await;
    let pid = after.pid.unwrap();
    assert!(process_alive(pid));
    assert_ne!(Some(pid), before.pid, "the previous version was restarted");
    assert_eq!(after.version, Some(good.version()));
    assert_eq!(state_file(&deployment)["installed"], good.version());
    assert_eq!(version_dirs(&deployment), vec![good.version()]);
    assert!(deployment.log_text().contains("rolling back to version"));
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_manifest_again_changes_nothing() {
    let deployment = Deployment::new("127.200.3.3");
    let agent = deployment.start().await;
    let version = Version::script(IDLE);
    let manifest = deployment.publish(&version);
    let running = deployment.install(&manifest).await;

    let (code, answer) = deployment.apply(&manifest).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(answer, serde_json::json!({"result": "unchanged", "version": manifest.version()}));
    // The same content from another place is the same version.
    let elsewhere = deployment.publish(&version);
    assert_ne!(elsewhere.binary.as_ref().unwrap().url, manifest.binary.as_ref().unwrap().url);
    let (code, answer) = deployment.apply(&elsewhere).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(answer["result"], "unchanged");

    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = deployment.status().await;
    assert_eq!(status.pid, running.pid);
    assert_eq!(status.restarts, 0);
    assert_eq!(deployment.log_text().matches("started version").count(), 1);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_artifacts_are_refused_and_the_running_version_is_untouched() {
    let deployment = Deployment::new("127.200.3.4");
    let agent = deployment.start().await;
    let good = deployment.publish(&Version::script(IDLE));
    let running = deployment.install(&good).await;

    let mut wrong_digest = deployment.publish(&Version::script(&format!("echo other\n{IDLE}")));
    wrong_digest.binary.as_mut().unwrap().sha256 = "0".repeat(64);
    let (code, _) = deployment.apply(&wrong_digest).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let rollout = deployment.wait_rollout_done(&wrong_digest).await;
    assert_eq!(rollout.phase, RolloutPhase::RolledBack);
    let reason = rollout.reason.unwrap();
    assert!(
        reason.contains("has sha256") && reason.contains("but the manifest says 0000"),
        "{reason}"
    );

    let mut wrong_size = deployment.publish(&Version::script(&format!("echo size\n{IDLE}")));
    wrong_size.config.as_mut().unwrap().size += 1;
    deployment.apply(&wrong_size).await;
    let rollout = deployment.wait_rollout_done(&wrong_size).await;
    assert_eq!(rollout.phase, RolloutPhase::RolledBack);
    assert!(rollout.reason.unwrap().contains("the config.conf at"), "names the artifact");

    // hosts.yaml is fetched only when its content is not the one in place already.
    let mut other_hosts = Version::script(&format!("echo missing\n{IDLE}"));
    other_hosts.hosts = "hosts: [elsewhere]\n".to_owned();
    let mut missing = deployment.publish(&other_hosts);
    missing.hosts.url = format!("file://{}/nowhere", deployment.temp.path().display());
    deployment.apply(&missing).await;
    let rollout = deployment.wait_rollout_done(&missing).await;
    assert!(rollout.reason.unwrap().contains("nowhere does not exist"));

    // Nothing was restarted, and nothing was left behind.
    let status = deployment.status().await;
    assert_eq!(status.pid, running.pid);
    assert_eq!(status.restarts, 0);
    assert_eq!(status.state, BinaryState::Healthy);
    assert_eq!(version_dirs(&deployment), vec![good.version()]);

    // Malformed manifests are refused before anything starts.
    let mut malformed = good.clone();
    malformed.binary.as_mut().unwrap().sha256 = "XYZ".to_owned();
    let (code, answer) = deployment.apply(&malformed).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().contains("`binary.sha256`"), "{answer}");
    let mut unknown_scheme = good.clone();
    unknown_scheme.args.push("x".to_owned());
    unknown_scheme.config.as_mut().unwrap().url = "s3://bucket/config.conf".to_owned();
    let (code, answer) = deployment.apply(&unknown_scheme).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("no fetcher for the `s3` scheme"), "{error}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_first_version_that_fails_leaves_nothing_running() {
    let deployment = Deployment::new("127.200.3.5");
    let agent = deployment.start().await;
    let bad = deployment.publish(&Version::script("echo 'no luck'\nexit 2\n"));
    let (code, _) = deployment.apply(&bad).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let rollout = deployment.wait_rollout_done(&bad).await;
    assert_eq!(rollout.phase, RolloutPhase::Failed);
    assert_eq!(rollout.previous, None);
    assert!(rollout.log_tail.contains(&"no luck".to_owned()), "{:#?}", rollout.log_tail);
    let status = deployment.status().await;
    assert_eq!((status.state, status.pid, status.version), (BinaryState::Idle, None, None));
    assert!(!deployment.dir.join("agent-state.json").exists());

    // A failed version is not "installed": applying it again tries again.
    let (code, answer) = deployment.apply(&bad).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    deployment.wait_rollout_done(&bad).await;
    let good = deployment.publish(&Version::script(IDLE));
    deployment.install(&good).await;
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_version_that_never_becomes_healthy_is_rolled_back_at_its_deadline() {
    let deployment = Deployment::new("127.200.3.6");
    let agent = deployment.start().await;
    let good = deployment.publish(&Version::script(IDLE));
    deployment.install(&good).await;

    let mut never_healthy = Version::script(&format!("echo slow\n{IDLE}"));
    never_healthy.health = HealthCheck::Tcp { port: 9 };
    never_healthy.health_deadline = std::time::Duration::from_secs(3);
    let never_healthy = deployment.publish(&never_healthy);
    let other = deployment.publish(&Version::script(&format!("echo other\n{IDLE}")));
    let (code, _) = deployment.apply(&never_healthy).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    deployment
        .wait_for("the new version to start", |status| {
            status.rollout.as_ref().is_some_and(|rollout| rollout.phase == RolloutPhase::Starting)
        })
        .await;

    // While it is under way: the same version is accepted again, others wait.
    let (code, answer) = deployment.apply(&never_healthy).await;
    assert_eq!((code, &answer["result"]), (StatusCode::ACCEPTED, &serde_json::json!("accepted")));
    let (code, answer) = deployment.apply(&other).await;
    assert_eq!(code, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("is under way"), "{answer}");
    for path in ["/v1/restart", "/v1/stop"] {
        let (code, answer) = deployment.post(path).await;
        assert_eq!(code, StatusCode::CONFLICT, "{path}: {answer}");
    }

    let rollout = deployment.wait_rollout_done(&never_healthy).await;
    assert_eq!(rollout.phase, RolloutPhase::RolledBack);
    let reason = rollout.reason.unwrap();
    assert!(
        reason.contains("did not become healthy within its health deadline of 3s")
            && reason.contains("last health check: tcp 127.200.3.6:9"),
        "{reason}"
    );
    assert!(rollout.log_tail.contains(&"slow".to_owned()), "{:#?}", rollout.log_tail);
    deployment.wait_healthy(&good).await;
    deployment.install(&other).await;
    agent.shutdown().await.unwrap();
}
