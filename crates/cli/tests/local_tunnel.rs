//! `flotilla monitoring` on a local fleet: the monitoring machine's Prometheus port (served
//! here by an HTTP server the test starts on that machine's own address, unless a real
//! Prometheus already listens there) answers through the local port the command prints,
//! tunnelled through the agent's mTLS API; a service that does not run there gets a closed
//! connection and a line saying why; a client without the deployment's certificate gets
//! nothing from the agent, and one with it cannot open a tunnel to any other port.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls_pki_types::pem::PemObject;

/// The answer of the stand-in for Prometheus.
const STAND_IN_BODY: &str = "prometheus stand-in on the monitoring machine";

/// An HTTP server on `address` answering every request with [`STAND_IN_BODY`], or `None`
/// when something (a real Prometheus) listens there already.
fn start_stand_in(address: SocketAddr) -> Option<()> {
    let listener = TcpListener::bind(address).ok()?;
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else { continue };
            let mut head = [0u8; 1024];
            let _ = connection.read(&mut head);
            let _ = write!(
                connection,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{STAND_IN_BODY}",
                STAND_IN_BODY.len()
            );
        }
    });
    Some(())
}

/// `flotilla monitoring` running, and the URLs it printed by service.
struct Tunnel {
    child: Child,
    urls: Vec<(String, SocketAddr)>,
}

impl Tunnel {
    fn port_of(&self, service: &str) -> SocketAddr {
        self.urls.iter().find(|(s, _)| s == service).map(|(_, a)| *a).expect("a printed URL")
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tunnel(fleet: &TestFleet) -> Tunnel {
    let spec = fleet.spec_arg();
    let mut child = fleet
        .command(&[
            "monitoring",
            "--config",
            &spec,
            "--grafana-port",
            "0",
            "--prometheus",
            "--prometheus-port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(
            fs_err::File::create(fleet.work.path().join("monitoring.stderr"))
                .expect("a log")
                .into_parts()
                .0,
        )
        .spawn()
        .expect("flotilla monitoring starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut urls = Vec::new();
    while urls.len() < 2 {
        let mut line = String::new();
        let read = stdout.read_line(&mut line).expect("read stdout");
        assert!(read > 0, "flotilla monitoring ended before printing its URLs");
        let (service, url) = line.trim().split_once(' ').expect("`service URL`");
        let address = url.trim_start_matches("http://").trim_end_matches('/');
        urls.push((service.to_owned(), address.parse().expect("an address")));
    }
    Tunnel { child, urls }
}

#[test]
fn prometheus_answers_through_the_tunnel_and_a_client_without_a_certificate_gets_nothing() {
    let fleet = TestFleet::new("tunnel", FleetOptions { count: 1, ..FleetOptions::default() });
    let rows = fleet.create();
    let monitoring_ip = ip_of(row(&rows, "monitoring"));
    let node_ip = ip_of(row(&rows, "node-0"));
    assert_ne!(monitoring_ip, node_ip, "each local machine has its own address");
    let real_prometheus = start_stand_in(SocketAddr::new(monitoring_ip, 9090)).is_none();

    let tunnel = start_tunnel(&fleet);
    assert_eq!(
        tunnel.urls.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        ["grafana", "prometheus"]
    );
    let prometheus = tunnel.port_of("prometheus");
    assert!(prometheus.ip().is_loopback() && prometheus.ip() != monitoring_ip);
    let path = if real_prometheus { "/-/healthy" } else { "/api/v1/query?query=up" };
    let body = wait_for("an answer through the tunnel", Duration::from_secs(10), || {
        http_get(prometheus.ip(), prometheus.port(), path)
    });
    if real_prometheus {
        assert!(body.contains("Healthy"), "{body}");
    } else {
        assert_eq!(body, STAND_IN_BODY);
    }
    // Several at once, each its own tunnel.
    let answers: Vec<Option<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| http_get(prometheus.ip(), prometheus.port(), path)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("a GET")).collect()
    });
    assert!(answers.iter().all(|a| a.as_deref() == Some(body.as_str())), "{answers:?}");

    // Nothing listens on the monitoring machine's Grafana port (the local provider runs no
    // Grafana): the local connection is closed without a byte.
    let grafana = tunnel.port_of("grafana");
    let mut connection = TcpStream::connect(grafana).expect("the grafana listener accepts");
    connection.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(connection, "GET / HTTP/1.0\r\n\r\n");
    let mut bytes = Vec::new();
    let _ = connection.read_to_end(&mut bytes);
    assert!(bytes.is_empty(), "no answer without Grafana: {}", String::from_utf8_lossy(&bytes));
    let stderr_path = fleet.work.path().join("monitoring.stderr");
    let said = wait_for("the reason on stderr", Duration::from_secs(10), || {
        let text = fs_err::read_to_string(&stderr_path).unwrap_or_default();
        text.contains("grafana").then_some(text)
    });
    assert!(
        said.contains(&format!("could not connect to grafana at {monitoring_ip}:3000")),
        "the agent's reason reaches the user: {said}"
    );

    // A client without the deployment's certificate: it trusts the CA (so its own side of the
    // handshake succeeds), but the agent requires a client certificate and answers nothing.
    let agent = SocketAddr::new(monitoring_ip, 7443);
    let answer = without_client_certificate(
        &fleet,
        agent,
        "POST /v1/tunnel/9090 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: flotilla-tunnel\r\n\r\n",
    );
    let error = answer.expect_err("the agent refuses the connection");
    assert!(error.contains("CertificateRequired"), "refused for want of a certificate: {error}");
    let answer = without_client_certificate(
        &fleet,
        agent,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let error = answer.expect_err("the agent refuses the connection");
    assert!(error.contains("CertificateRequired"), "refused for want of a certificate: {error}");

    // With the deployment's certificate, the API still opens no port but the telemetry ones:
    // the agent's own API port, node exporter's and the agent's metrics are refused.
    for port in [7443, 9100, 9101, 22] {
        let request = format!(
            "POST /v1/tunnel/{port} HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: flotilla-tunnel\r\n\r\n"
        );
        let answer = with_client_certificate(&fleet, agent, &request);
        let head = String::from_utf8_lossy(&answer);
        assert!(head.starts_with("HTTP/1.1 403"), "port {port}: {head}");
        assert!(head.contains("only the telemetry ports"), "port {port}: {head}");
    }
    drop(tunnel);
    fleet.run_ok(&["destroy", "--tag", &fleet.tag]);
}

/// The TLS client configuration trusting the deployment's CA; `client_auth` completes it.
fn trusting_the_ca(
    fleet: &TestFleet,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let ca = fs_err::read(fleet.deployment_dir().join("ca.crt")).expect("the CA certificate");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("a PEM certificate")).expect("a CA certificate");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
}

/// Sends `request` to the monitoring machine's agent at `agent` with the CLI's certificate;
/// the first bytes of the answer (the agent closes a refused tunnel's connection or keeps it).
fn with_client_certificate(fleet: &TestFleet, agent: SocketAddr, request: &str) -> Vec<u8> {
    let dir = fleet.deployment_dir();
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(dir.join("cli.crt"))
        .expect("the CLI certificate")
        .map(|c| c.expect("a PEM certificate"))
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("cli.key")).expect("a key");
    let config = trusting_the_ca(fleet).with_client_auth_cert(certs, key).expect("a client");
    let name = flotilla_spec::names::agent_dns_name("monitoring", &fleet.tag);
    let server_name = rustls_pki_types::ServerName::try_from(name).expect("a DNS name");
    let mut tls = rustls::ClientConnection::new(Arc::new(config), server_name).expect("a client");
    let mut socket = TcpStream::connect(agent).expect("the agent listens");
    socket.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let mut stream = rustls::Stream::new(&mut tls, &mut socket);
    stream.write_all(request.as_bytes()).expect("the request is sent");
    let mut answer = vec![0u8; 4096];
    let read = stream.read(&mut answer).expect("an answer");
    answer.truncate(read);
    answer
}

/// Sends `request` to the agent at `agent` over TLS trusting the deployment's CA, without a
/// client certificate; the bytes it answered, or the error that ended the connection.
fn without_client_certificate(
    fleet: &TestFleet,
    agent: SocketAddr,
    request: &str,
) -> Result<Vec<u8>, String> {
    let config = trusting_the_ca(fleet).with_no_client_auth();
    let name = flotilla_spec::names::agent_dns_name("monitoring", &fleet.tag);
    let server_name = rustls_pki_types::ServerName::try_from(name).expect("a DNS name");
    let mut tls = rustls::ClientConnection::new(Arc::new(config), server_name).expect("a client");
    let mut socket = TcpStream::connect(agent).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let mut stream = rustls::Stream::new(&mut tls, &mut socket);
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) if answer.is_empty() => Err("closed without a byte".to_owned()),
        Ok(_) => Ok(answer),
        Err(error) => Err(error.to_string()),
    }
}
