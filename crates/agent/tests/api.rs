//! The API's door and its answers: who may connect, what errors look like, and the metrics page.

mod common;

use std::sync::Arc;

use common::{Deployment, IDLE, Version};
use flotilla_core::pki::{
    CertificateAuthority, IssuedCert, crypto_provider, parse_certs, parse_key,
};
use reqwest::StatusCode;

/// A client that trusts the deployment CA and presents `client` (or nothing).
fn client(deployment: &Deployment, client: Option<&IssuedCert>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(deployment.ca.cert_pem()).expect("the CA certificate parses") {
        roots.add(cert).expect("the CA certificate is a trust anchor");
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(Arc::new(roots));
    let config = match client {
        Some(client) => builder
            .with_client_auth_cert(
                parse_certs(&client.cert_pem).expect("the client certificate parses"),
                parse_key(&client.key_pem).expect("the client key parses"),
            )
            .expect("the key matches the certificate"),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder().tls_backend_preconfigured(config).build().expect("a client")
}

#[tokio::test]
async fn only_the_deployment_client_certificate_gets_in() {
    let deployment = Deployment::new("127.200.4.1");
    let agent = deployment.start().await;
    let url = deployment.url("/v1/status");

    let other_ca = CertificateAuthority::generate("t1").unwrap();
    let refused = [
        ("no certificate", client(&deployment, None)),
        (
            "a client certificate of another deployment's CA",
            client(&deployment, Some(&other_ca.issue_client("t1").unwrap())),
        ),
        (
            "an agent certificate (server auth only) of this deployment",
            client(
                &deployment,
                Some(&deployment.ca.issue_agent("node-1", "t1", &[deployment.address]).unwrap()),
            ),
        ),
    ];
    for (what, client) in refused {
        let result = client.get(&url).send().await;
        assert!(result.is_err(), "{what} got in: {result:?}");
    }

    // The deployment's client gets in, by address and by the agent's DNS name.
    assert_eq!(deployment.status().await.tag, "t1");
    let by_name = reqwest::Client::builder()
        .tls_backend_preconfigured(
            flotilla_core::pki::client_config(deployment.ca.cert_pem(), &deployment.client_cert)
                .unwrap(),
        )
        .resolve("node-0.t1.flotilla", agent.api_address())
        .build()
        .unwrap();
    let response = by_name.get("https://node-0.t1.flotilla:7443/v1/status").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let deployment = Deployment::new("127.200.4.2");
    let agent = deployment.start().await;
    let error_of = |body: &str| -> String {
        let value: serde_json::Value = serde_json::from_str(body).expect("an ApiError");
        value["error"].as_str().expect("an error message").to_owned()
    };

    let (code, body) = deployment.get("/v1/nothing").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "no such endpoint: GET /v1/nothing");
    let response = deployment.http.delete(deployment.url("/v1/status")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let (code, body) = deployment.get("/v1/logs?lines=abc").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("`lines`"), "{body}");

    let response =
        deployment.http.put(deployment.url("/v1/manifest")).body("{}").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(&response.text().await.unwrap()).starts_with("bad manifest: missing field"));

    let response = deployment
        .http
        .put(deployment.url("/v1/manifest"))
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(&response.text().await.unwrap()).contains("larger than 1048576 bytes"));

    let mut manifest = deployment.publish(&Version::script(IDLE));
    manifest.env.insert("BAD=NAME".to_owned(), "x".to_owned());
    let (code, answer) = deployment.apply(&manifest).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().contains("`env.BAD=NAME`"), "{answer}");

    // Durations past the spec's bounds: `580000000000y` made the supervisor panic at the first
    // restart, `300000000000y` the rollout's deadline.
    let years = |n: u64| std::time::Duration::from_secs(n * 31_557_600);
    let mut manifest = deployment.publish(&Version::script(IDLE));
    manifest.restart.initial_backoff = years(580_000_000_000);
    manifest.restart.max_backoff = years(580_000_000_000);
    let (code, answer) = deployment.apply(&manifest).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("must be at most 1h"), "{answer}");
    let mut manifest = deployment.publish(&Version::script(IDLE));
    manifest.health_deadline = years(300_000_000_000);
    let (code, answer) = deployment.apply(&manifest).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("at most 6h"), "{answer}");

    // Logs before any version: empty, not an error.
    assert_eq!(
        deployment.logs(5).await.lines().filter(|l| !l.contains("[flotilla-agent]")).count(),
        0
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_report_the_binary_and_the_agent() {
    let deployment = Deployment::new("127.200.4.3");
    let agent = deployment.start().await;
    let idle = deployment.metrics().await;
    for expected in [
        "flotilla_binary_up 0\n",
        "flotilla_binary_health_state{state=\"idle\"} 1\n",
        "flotilla_binary_restarts_total 0\n",
        "flotilla_binary_uptime_seconds 0.0\n",
        "# EOF\n",
    ] {
        assert!(idle.contains(expected), "{expected:?} missing from\n{idle}");
    }
    assert!(!idle.contains("flotilla_binary_version_info{"), "{idle}");

    let manifest = deployment.publish(&Version::script(IDLE));
    deployment.install(&manifest).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = deployment.http.get(deployment.metrics_url("/metrics")).send().await.unwrap();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let running = response.text().await.unwrap();
    let version_line =
        format!("flotilla_binary_version_info{{version=\"{}\"}} 1\n", manifest.version());
    for expected in [
        "flotilla_binary_up 1\n",
        "flotilla_binary_health_state{state=\"healthy\"} 1\n",
        "flotilla_binary_health_state{state=\"starting\"} 0\n",
        "flotilla_binary_health_state{state=\"idle\"} 0\n",
        version_line.as_str(),
        "# TYPE flotilla_binary_restarts counter\n",
    ] {
        assert!(running.contains(expected), "{expected:?} missing from\n{running}");
    }
    let gauge = |name: &str| -> f64 {
        running
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{running}"))
    };
    assert!(gauge("flotilla_agent_uptime_seconds") >= 1.0);
    assert!(gauge("flotilla_binary_uptime_seconds") >= 1.0);
    assert!(gauge("flotilla_agent_uptime_seconds") >= gauge("flotilla_binary_uptime_seconds"));

    deployment.post("/v1/stop").await;
    let stopped = deployment.metrics().await;
    assert!(stopped.contains("flotilla_binary_up 0\n"), "{stopped}");
    assert!(stopped.contains("flotilla_binary_health_state{state=\"stopped\"} 1\n"), "{stopped}");

    let response = deployment.http.get(deployment.metrics_url("/other")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    agent.shutdown().await.unwrap();
}
