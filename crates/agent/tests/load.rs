//! The agent under a flood of connections that prove nothing: handshakes trickled byte by byte
//! on the API, request heads trickled on the metrics port. Authenticated clients and scrapes
//! keep getting answers (policy in the agent's `admission` module).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Deployment;
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Connections in each flood: more than every budget of the agent.
const FLOOD: usize = 200;
/// How long a client may take for one answer while the flood runs (the handshake timeout the
/// flood exploited was 10 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Requests made while the flood runs.
const REQUESTS: usize = 8;

/// `FLOOD` connections to `address`, each sent `start` at once.
async fn open_flood(address: SocketAddr, start: &[u8]) -> Vec<TcpStream> {
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut stream = TcpStream::connect(address).await.expect("the agent accepts");
        stream.write_all(start).await.expect("the first bytes are sent");
        flood.push(stream);
    }
    flood
}

/// Sends every flood connection one more byte (a connection the agent closed is skipped).
async fn trickle(flood: &mut [TcpStream], byte: u8) {
    for stream in flood {
        let _ = stream.write_all(&[byte]).await;
    }
}

/// The deployment's client without a connection pool (every request makes its own
/// connection, and on the API its own handshake), giving up after [`ANSWER_WITHIN`].
fn client_without_pool(deployment: &Deployment) -> reqwest::Client {
    let tls = flotilla_core::pki::client_config(deployment.ca.cert_pem(), &deployment.client_cert)
        .expect("a client TLS config");
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(0)
        .timeout(ANSWER_WITHIN)
        .build()
        .expect("an HTTPS client")
}

#[tokio::test]
async fn trickled_handshakes_do_not_keep_authenticated_clients_out() {
    let deployment = Deployment::new("127.200.8.1");
    let agent = deployment.start().await;
    // A TLS record header announcing a 512-byte ClientHello, then its bytes one at a time.
    let mut flood = open_flood(agent.api_address(), &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    let client = client_without_pool(&deployment);
    for n in 0..REQUESTS {
        trickle(&mut flood, 0).await;
        let response = client.get(deployment.url("/v1/status")).send().await;
        let response = response.unwrap_or_else(|error| panic!("request {n}: {error:?}"));
        assert_eq!(response.status(), StatusCode::OK, "request {n}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(flood);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn trickled_request_heads_do_not_keep_scrapes_out() {
    let deployment = Deployment::new("127.200.8.2");
    let agent = deployment.start().await;
    let mut flood =
        open_flood(agent.metrics_address(), b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let client = client_without_pool(&deployment);
    for n in 0..REQUESTS {
        trickle(&mut flood, b'a').await;
        let response = client.get(deployment.metrics_url("/metrics")).send().await;
        let response = response.unwrap_or_else(|error| panic!("scrape {n}: {error:?}"));
        assert_eq!(response.status(), StatusCode::OK, "scrape {n}");
        let text = response.text().await.expect("a body");
        assert!(text.contains("flotilla_binary_up 0\n"), "{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(flood);
    agent.shutdown().await.unwrap();
}
