//! A component that dies takes the agent down. The supervisor, the API server and the metrics
//! server are made to die through failpoints (the `failpoints` feature, which only the agent's
//! own tests enable); the agent must say why, stop the binary and exit with an error, never go
//! on answering for a binary nobody supervises.

mod common;

use common::{
    Deployment, Version, agent_stderr, process_alive, read_pid, spawn_agent_process, wait_for_api,
    wait_for_exit, wait_until, write_bootstrap,
};
use flotilla_agent::Fetchers;
use flotilla_agent::failpoint::Failpoint;
use flotilla_spec::api::BinaryState;

#[tokio::test]
async fn an_agent_whose_supervisor_panics_stops_the_binary_and_exits_with_an_error() {
    let deployment = Deployment::new("127.200.7.1");
    let bootstrap = write_bootstrap(&deployment, serde_json::json!({}));
    let failpoint = ["--failpoint", "supervisor-panics-on-restart"];
    let mut agent = spawn_agent_process(&deployment, &bootstrap, &failpoint);
    wait_for_api(&deployment, &mut agent).await;
    // The binary's child has no parent-death signal: the agent has to kill it.
    let manifest = deployment.publish(&Version::script(
        r#"trap 'echo "got SIGTERM"; exit 0' TERM
sleep 100000 &
echo $! > child.pid
wait $!
"#,
    ));
    let binary = deployment.install(&manifest).await.pid.unwrap();
    let child = read_pid(&deployment.work().join("child.pid")).await;

    // Restart makes the supervisor panic. The request may be answered or cut off; any answer
    // must not call the binary running.
    if let Ok(response) = deployment.http.post(deployment.url("/v1/restart")).send().await
        && let Ok(status) = response.json::<flotilla_spec::api::AgentStatus>().await
    {
        assert_eq!((status.state, status.pid), (BinaryState::Stopped, None), "{status:#?}");
    }
    let exit = wait_for_exit(&mut agent).await;
    assert_eq!(exit.code(), Some(1), "{exit}");
    wait_until("the binary to be gone", || !process_alive(binary)).await;
    assert!(!process_alive(child), "the agent killed what was left of the binary's group");

    let expected = "the supervisor panicked: failpoint SupervisorPanicsOnRestart";
    let log = deployment.log_text();
    assert!(log.contains(&format!("{expected}: stopping the agent")), "{log}");
    assert!(log.contains("killed what was left of the binary's process group"), "{log}");
    assert!(log.trim_end().ends_with("agent stopped"), "{log}");
    let stderr = agent_stderr(&deployment);
    assert!(stderr.contains(expected), "{stderr}");

    // Restarted (as systemd does), the agent runs the installed version again.
    let mut agent = spawn_agent_process(&deployment, &bootstrap, &[]);
    wait_for_api(&deployment, &mut agent).await;
    deployment.wait_healthy(&manifest).await;
    common::kill(agent.id(), rustix::process::Signal::TERM);
    assert!(wait_for_exit(&mut agent).await.success());
}

#[tokio::test]
async fn an_agent_whose_metrics_server_ends_exits_with_an_error() {
    let deployment = Deployment::new("127.200.7.2");
    let bootstrap = write_bootstrap(&deployment, serde_json::json!({}));
    let failpoint = ["--failpoint", "metrics-server-returns-on-accept"];
    let mut agent = spawn_agent_process(&deployment, &bootstrap, &failpoint);
    wait_for_api(&deployment, &mut agent).await;
    let _ = deployment.http.get(deployment.metrics_url("/metrics")).send().await;
    let exit = wait_for_exit(&mut agent).await;
    assert_eq!(exit.code(), Some(1), "{exit}");
    let expected = "the metrics server ended while the agent was running";
    assert!(deployment.log_text().contains(expected), "{}", deployment.log_text());
    assert!(agent_stderr(&deployment).contains(expected), "{}", agent_stderr(&deployment));
}

#[tokio::test]
async fn a_panic_in_the_api_server_is_reported_as_its_death() {
    let deployment = Deployment::new("127.200.7.3");
    let mut agent = flotilla_agent::start_with_failpoints(
        deployment.bootstrap(),
        Fetchers::default(),
        &[Failpoint::ApiServerPanicsOnAccept],
    )
    .await
    .expect("the agent starts");
    let _connection = tokio::net::TcpStream::connect(agent.api_address()).await.unwrap();
    let death = tokio::time::timeout(common::WAIT, agent.component_death())
        .await
        .expect("the death is reported in time");
    assert_eq!(death.to_string(), "the API server panicked: failpoint ApiServerPanicsOnAccept");
    agent.shutdown().await.unwrap();
}
