//! Health checks against real listeners: `http` (python3's http.server), `tcp` (a python3
//! socket that opens and closes on request) and `none`.

mod common;

use std::time::{Duration, Instant};

use common::{Deployment, IDLE, Version};
use flotilla_spec::HealthCheck;
use flotilla_spec::api::BinaryState;

#[tokio::test]
async fn http_health_follows_the_answers() {
    let deployment = Deployment::new("127.200.2.1");
    let agent = deployment.start().await;
    let mut version = Version::script(
        r#"mkdir -p site && echo ok > site/health
exec python3 -m http.server --bind "$FLOTILLA_PRIVATE_IP" --directory site 8080
"#,
    );
    version.health = HealthCheck::Http { port: 8080, path: "/health".to_owned() };
    let manifest = deployment.publish(&version);
    let healthy = deployment.install(&manifest).await;
    assert_eq!(healthy.health_error, None);

    // A 404 three times in a row: unhealthy, with the answer as the error.
    let page = deployment.work().join("site/health");
    fs_err::remove_file(&page).unwrap();
    let unhealthy =
        deployment.wait_for("unhealthy", |status| status.state == BinaryState::Unhealthy).await;
    let error = unhealthy.health_error.expect("the failed check is reported");
    assert!(error.starts_with("http://127.200.2.1:8080/health answered HTTP/1.0 404"), "{error}");
    assert_eq!(unhealthy.pid, healthy.pid, "an unhealthy binary is not restarted");
    let metrics = deployment.metrics().await;
    assert!(metrics.contains("flotilla_binary_health_state{state=\"unhealthy\"} 1\n"), "{metrics}");
    assert!(metrics.contains("flotilla_binary_health_state{state=\"healthy\"} 0\n"), "{metrics}");
    assert!(deployment.log_text().contains("is unhealthy: http://127.200.2.1:8080/health"));

    fs_err::write(&page, "ok\n").unwrap();
    let again = deployment.wait_healthy(&manifest).await;
    assert_eq!(again.health_error, None);
    assert!(deployment.log_text().contains("is healthy again"));
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn tcp_health_follows_the_listener() {
    let deployment = Deployment::new("127.200.2.2");
    let agent = deployment.start().await;
    // Listens after 1 s; closes the listener while `close` exists (and keeps running).
    let mut version = Version::script(
        r#"exec python3 -u - <<'EOF'
import os, socket, time
address = (os.environ["FLOTILLA_PRIVATE_IP"], 8081)
time.sleep(1)
listener = None
while True:
    wanted = not os.path.exists("close")
    if wanted and listener is None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(16)
        listener.setblocking(False)
        print("listening")
    elif not wanted and listener is not None:
        listener.close()
        listener = None
        print("closed")
    if listener is not None:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            pass
    time.sleep(0.05)
EOF
"#,
    );
    version.health = HealthCheck::Tcp { port: 8081 };
    let manifest = deployment.publish(&version);
    let (code, _) = deployment.apply(&manifest).await;
    assert_eq!(code, reqwest::StatusCode::ACCEPTED);
    // Before it listens, it is starting, and the refused connection is the error.
    let starting = deployment
        .wait_for("a failed check while starting", |status| status.health_error.is_some())
        .await;
    assert_eq!(starting.state, BinaryState::Starting);
    let error = starting.health_error.unwrap();
    assert!(error.starts_with("tcp 127.200.2.2:8081: Connection refused"), "{error}");
    deployment.wait_healthy(&manifest).await;

    fs_err::write(deployment.work().join("close"), "").unwrap();
    let unhealthy =
        deployment.wait_for("unhealthy", |status| status.state == BinaryState::Unhealthy).await;
    assert!(unhealthy.health_error.unwrap().contains("refused"));
    fs_err::remove_file(deployment.work().join("close")).unwrap();
    deployment.wait_healthy(&manifest).await;
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_health_check_means_healthy_after_two_seconds_up() {
    let deployment = Deployment::new("127.200.2.3");
    let agent = deployment.start().await;
    let manifest = deployment.publish(&Version::script(IDLE));
    let (code, _) = deployment.apply(&manifest).await;
    assert_eq!(code, reqwest::StatusCode::ACCEPTED);
    let starting = deployment.wait_for("the binary to run", |status| status.pid.is_some()).await;
    let seen_starting = Instant::now();
    assert_eq!(starting.state, BinaryState::Starting);
    deployment.wait_healthy(&manifest).await;
    // Healthy 2 s after the start, which was before it was first seen running.
    let waited = seen_starting.elapsed();
    assert!(waited <= Duration::from_millis(2500), "{waited:?}");
    assert!(waited >= Duration::from_millis(1000), "{waited:?}");
    let log = deployment.log_text();
    let started = log.find("started version").unwrap();
    assert!(log[started..].contains("is healthy"), "{log}");
    agent.shutdown().await.unwrap();
}
