//! The CLI's client for agents' mTLS API.
//!
//! It trusts only the deployment CA, presents the CLI's client certificate, and addresses each
//! agent by the DNS name in its certificate (`<name>.<tag>.flotilla`) while connecting to the
//! endpoint the provider reports. So an agent that presents another machine's certificate, or
//! one from another deployment, is refused even when it answers on the expected address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes_stream::BytesStream;
use flotilla_spec::Manifest;
use flotilla_spec::api::{AgentStatus, ApiError, ApplyResponse, KeepaliveReport, Request};
use flotilla_spec::identity::agent_dns_name;

use crate::pki::{self, IssuedCert, PkiError};
use crate::provider::Machine;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request other than a followed log may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a `Profile` answer may take beyond its recording.
const PROFILE_MARGIN: Duration = Duration::from_secs(180);
/// How long a drain may take: the `stopping` hooks, the binary's stop grace and the undo of
/// records and volumes (each bounded by the agent).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no machine named `{0}` in this deployment")]
    UnknownMachine(String),
    #[error("agent on {name} ({endpoint}) is unreachable: {detail}")]
    Unreachable {
        name: String,
        endpoint: SocketAddr,
        detail: String,
        /// The failure cannot heal by waiting (see [`is_permanent_failure`]).
        permanent: bool,
    },
    #[error("agent on {name} refused the request ({status}): {message}")]
    Refused { name: String, status: u16, message: String },
    #[error("agent on {name} sent an answer that could not be read: {detail}")]
    BadAnswer { name: String, detail: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("could not build the HTTPS client: {0}")]
    Build(String),
}

impl ClientError {
    /// The agent answered, refusing (HTTP 4xx/5xx), as opposed to not answering at all.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Refused { .. })
    }

    /// Waiting will not mend this: the agent refused the request, or the TLS handshake failed
    /// on a certificate (another deployment's agent, a certificate for another name).
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => *status != 409,
            ClientError::Unreachable { permanent, .. } => *permanent,
            ClientError::UnknownMachine(_) | ClientError::Pki(_) | ClientError::Build(_) => true,
            ClientError::BadAnswer { .. } => false,
        }
    }
}

/// Whether `error`'s causes hold a TLS failure that no retry mends: a certificate that does
/// not verify (unknown issuer, wrong name, wrong usage, expired), a server name that is not a
/// valid DNS name, or the peer refusing our certificate. A refused or reset connection, a
/// timeout or an agent that is not listening yet are not permanent: a booting machine shows
/// all of them.
pub fn is_permanent_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as Alert;
    let mut next = Some(error);
    while let Some(cause) = next {
        // tokio-rustls wraps the TLS error in an io::Error, which a connector may wrap again;
        // an io::Error's `source` skips its inner error, so the layers are opened here.
        let mut tls = cause.downcast_ref::<rustls::Error>();
        let mut io = cause.downcast_ref::<std::io::Error>();
        while let (None, Some(layer)) = (tls, io) {
            let inner = layer.get_ref();
            tls = inner.and_then(|inner| inner.downcast_ref::<rustls::Error>());
            io = inner.and_then(|inner| inner.downcast_ref::<std::io::Error>());
        }
        if let Some(tls) = tls {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
                    | rustls::Error::AlertReceived(
                        Alert::BadCertificate
                            | Alert::UnsupportedCertificate
                            | Alert::CertificateRevoked
                            | Alert::CertificateExpired
                            | Alert::CertificateUnknown
                            | Alert::UnknownCA
                            | Alert::AccessDenied
                            | Alert::CertificateRequired
                    )
            );
        }
        if cause.downcast_ref::<rustls_pki_types::InvalidDnsNameError>().is_some() {
            return true;
        }
        next = cause.source();
    }
    false
}

/// Renders an error with its chain of causes: `a: b: c`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A client for every agent of one deployment.
#[derive(Clone, Debug)]
pub struct AgentClient {
    http: reqwest::Client,
    tag: String,
    endpoints: HashMap<String, SocketAddr>,
}

impl AgentClient {
    pub fn new(
        tag: &str,
        ca_pem: &str,
        identity: &IssuedCert,
        machines: &[Machine],
    ) -> Result<AgentClient, ClientError> {
        let tls = pki::client_config(ca_pem, identity)?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy();
        let mut endpoints = HashMap::new();
        for machine in machines {
            builder = builder.resolve(&agent_dns_name(&machine.name, tag), machine.agent_endpoint);
            endpoints.insert(machine.name.clone(), machine.agent_endpoint);
        }
        let http = builder.build().map_err(|e| ClientError::Build(error_chain(&e)))?;
        Ok(AgentClient { http, tag: tag.to_owned(), endpoints })
    }

    fn endpoint(&self, name: &str) -> Result<SocketAddr, ClientError> {
        self.endpoints.get(name).copied().ok_or_else(|| ClientError::UnknownMachine(name.into()))
    }

    async fn send(
        &self,
        name: &str,
        request: &Request,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let endpoint = self.endpoint(name)?;
        let (method, path, body) = request.to_http();
        let url = format!("https://{}:{}{path}", agent_dns_name(name, &self.tag), endpoint.port());
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("API methods are valid");
        let mut builder = self.http.request(method, url);
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(body) = body {
            builder = builder.header("content-type", "application/json").body(body);
        }
        let response = builder.send().await.map_err(|e| ClientError::Unreachable {
            name: name.to_owned(),
            endpoint,
            detail: error_chain(&e),
            permanent: is_permanent_failure(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&text).map(|e| e.error).unwrap_or(text);
        Err(ClientError::Refused { name: name.to_owned(), status: status.as_u16(), message })
    }

    /// A byte stream to telemetry port `port` of machine `name`, through its agent
    /// ([`Request::OpenTunnel`]): the agent connected to the port before it answered. No
    /// request timeout (the stream lives as long as its user wants); the connect timeout holds.
    pub async fn open_tunnel(
        &self,
        name: &str,
        port: u16,
    ) -> Result<reqwest::Upgraded, ClientError> {
        let endpoint = self.endpoint(name)?;
        let (_, path, _) = Request::OpenTunnel { port }.to_http();
        let url = format!("https://{}:{}{path}", agent_dns_name(name, &self.tag), endpoint.port());
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            name: name.to_owned(),
            endpoint,
            detail: error_chain(&e),
            permanent: is_permanent_failure(&e),
        };
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, flotilla_spec::api::TUNNEL_UPGRADE)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if status == reqwest::StatusCode::SWITCHING_PROTOCOLS {
            return response.upgrade().await.map_err(unreachable);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&text).map(|e| e.error).unwrap_or(text);
        Err(ClientError::Refused { name: name.to_owned(), status: status.as_u16(), message })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        request: &Request,
    ) -> Result<T, ClientError> {
        let response = self.send(name, request, Some(REQUEST_TIMEOUT)).await?;
        read_json(name, response).await
    }

    pub async fn status(&self, name: &str) -> Result<AgentStatus, ClientError> {
        self.json(name, &Request::Status).await
    }

    /// The status once the rollout of `version` has finished, or after `wait` at most.
    pub async fn wait_rollout(
        &self,
        name: &str,
        version: &str,
        wait: Duration,
    ) -> Result<AgentStatus, ClientError> {
        let timeout_ms = wait.as_millis().min(u128::from(flotilla_spec::api::MAX_WAIT_MS)) as u64;
        let request = Request::WaitRollout { version: version.to_owned(), timeout_ms };
        let response = self.send(name, &request, Some(wait + REQUEST_TIMEOUT)).await?;
        read_json(name, response).await
    }

    pub async fn apply(
        &self,
        name: &str,
        manifest: &Manifest,
    ) -> Result<ApplyResponse, ClientError> {
        self.json(name, &Request::ApplyManifest(Box::new(manifest.clone()))).await
    }

    /// Word from the deployment for machine `name`'s keepalive; answers where it stands.
    pub async fn keepalive(&self, name: &str) -> Result<KeepaliveReport, ClientError> {
        self.json(name, &Request::Keepalive).await
    }

    pub async fn restart(&self, name: &str) -> Result<(), ClientError> {
        self.send(name, &Request::Restart, Some(REQUEST_TIMEOUT)).await.map(drop)
    }

    /// Drains machine `name` (its `stopping` hooks, the binary stopped, the lifecycle undone);
    /// answers once all of it is done.
    pub async fn drain(&self, name: &str) -> Result<(), ClientError> {
        self.send(name, &Request::Drain, Some(DRAIN_TIMEOUT)).await.map(drop)
    }

    pub async fn stop(&self, name: &str) -> Result<(), ClientError> {
        self.send(name, &Request::Stop, Some(REQUEST_TIMEOUT)).await.map(drop)
    }

    /// A CPU profile of machine `name`'s binary, recorded for `duration` at `frequency` Hz, as
    /// `perf script` text.
    pub async fn profile(
        &self,
        name: &str,
        duration: Duration,
        frequency: u32,
    ) -> Result<Vec<u8>, ClientError> {
        let duration_ms = duration.as_millis().min(u128::from(u64::MAX)) as u64;
        let request = Request::Profile { duration_ms, frequency };
        // Recording takes the duration; perf attaching and symbolizing, a margin beyond it.
        let timeout = duration + PROFILE_MARGIN;
        let response = self.send(name, &request, Some(timeout)).await?;
        let bytes = response.bytes().await.map_err(|e| ClientError::BadAnswer {
            name: name.to_owned(),
            detail: error_chain(&e),
        })?;
        Ok(bytes.to_vec())
    }

    /// The last `lines` lines of the binary's log and, with `follow`, every new line until the
    /// returned stream is dropped.
    pub async fn logs(
        &self,
        name: &str,
        lines: usize,
        follow: bool,
    ) -> Result<BytesStream, ClientError> {
        let timeout = if follow { None } else { Some(REQUEST_TIMEOUT) };
        let response = self.send(name, &Request::Logs { lines, follow }, timeout).await?;
        Ok(BytesStream::new(name, response))
    }
}

/// Reads a JSON answer from agent `name`.
async fn read_json<T: serde::de::DeserializeOwned>(
    name: &str,
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ClientError::BadAnswer { name: name.to_owned(), detail: error_chain(&e) })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::BadAnswer { name: name.to_owned(), detail: e.to_string() })
}

mod bytes_stream {
    //! A log stream from an agent, chunk by chunk.

    use super::{ClientError, error_chain};

    /// Chunks of a log answer.
    #[derive(Debug)]
    pub struct BytesStream {
        name: String,
        response: reqwest::Response,
    }

    impl BytesStream {
        pub(super) fn new(name: &str, response: reqwest::Response) -> Self {
            BytesStream { name: name.to_owned(), response }
        }

        /// The next chunk, `None` at the end.
        pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
            self.response.chunk().await.map(|c| c.map(|c| c.to_vec())).map_err(|e| {
                ClientError::BadAnswer { name: self.name.clone(), detail: error_chain(&e) }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use super::*;
    use crate::pki::{CertificateAuthority, crypto_provider, parse_certs, parse_key};
    use crate::provider::{MachineState, Role};

    fn machine(name: &str, endpoint: SocketAddr) -> Machine {
        Machine {
            name: name.to_owned(),
            role: Role::Binary,
            region: "local".to_owned(),
            id: name.to_owned(),
            public_ip: endpoint.ip(),
            private_ip: endpoint.ip(),
            agent_endpoint: endpoint,
            state: MachineState::Running,
            state_reason: None,
            placement: None,
        }
    }

    /// Serves TLS with `name`'s certificate from `ca` on a loopback port, for handshakes only.
    async fn serve_as(ca: &CertificateAuthority, name: &str) -> SocketAddr {
        let issued = ca.issue_agent(name, "t1", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                parse_certs(&issued.cert_pem).unwrap(),
                parse_key(&issued.key_pem).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(stream).await;
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn a_certificate_for_another_machine_is_a_permanent_failure() {
        let ca = CertificateAuthority::generate("t1").unwrap();
        let client_identity = ca.issue_client("t1").unwrap();
        let address = serve_as(&ca, "node-1").await;
        let client =
            AgentClient::new("t1", ca.cert_pem(), &client_identity, &[machine("node-0", address)])
                .unwrap();
        let error = client.status("node-0").await.unwrap_err();
        assert!(error.is_permanent(), "{error:?}");
        assert!(error.to_string().contains("certificate"), "{error}");
    }

    #[tokio::test]
    async fn another_deployments_agent_is_a_permanent_failure() {
        let ours = CertificateAuthority::generate("t1").unwrap();
        let theirs = CertificateAuthority::generate("t1").unwrap();
        let address = serve_as(&theirs, "node-0").await;
        let identity = ours.issue_client("t1").unwrap();
        let client =
            AgentClient::new("t1", ours.cert_pem(), &identity, &[machine("node-0", address)])
                .unwrap();
        let error = client.status("node-0").await.unwrap_err();
        assert!(error.is_permanent(), "{error:?}");
    }

    #[tokio::test]
    async fn an_agent_not_listening_yet_is_not_permanent() {
        let ca = CertificateAuthority::generate("t1").unwrap();
        let identity = ca.issue_client("t1").unwrap();
        // A port nothing listens on: connection refused, as a booting machine answers.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let client =
            AgentClient::new("t1", ca.cert_pem(), &identity, &[machine("node-0", address)])
                .unwrap();
        let error = client.status("node-0").await.unwrap_err();
        assert!(!error.is_permanent(), "{error:?}");
    }
}
