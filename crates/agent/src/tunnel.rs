//! `OpenTunnel` (`POST /v1/tunnel/<port>`, `Upgrade: flotilla-tunnel`): a TCP stream through
//! the mTLS API to one of the machine's telemetry ports, so that `flotilla monitoring` reaches
//! Grafana and Prometheus without their ports being open to anyone.
//!
//! The spec's API refuses every port but the telemetry ones (`flotilla_spec::api::TUNNEL_PORTS`)
//! before this module is reached. Here the agent connects to that port on the machine's own
//! address: the address the API listens on, or loopback when it listens on every address (a
//! cloud machine, whose services listen on loopback or every address). Locally each machine has
//! its own 127.x address, so a tunnel of one machine never reaches another's services. Only
//! once the connection is made does the agent answer `101 Switching Protocols`; a port nothing
//! listens on is a 502 with the reason, so the CLI can say which service is not running. Then
//! bytes are copied both ways until either side closes or the agent stops.
//!
//! At most [`MAX_TUNNELS`] tunnels are open at once (a browser opens a handful per page); more
//! are answered 503. Upgraded connections leave the API's connection slots when they switch
//! protocols, so this bound is their own.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_spec::api::{ApiError, TUNNEL_UPGRADE, tunnel_service};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

/// Tunnels open at once.
pub(crate) const MAX_TUNNELS: usize = 32;
/// Time to connect to the telemetry port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// The tunnels of one API server: where they connect and how many may be open.
#[derive(Debug)]
pub(crate) struct Tunnels {
    target: IpAddr,
    open: Arc<Semaphore>,
}

impl Tunnels {
    /// Tunnels of an API listening on `listen`.
    pub(crate) fn new(listen: IpAddr) -> Tunnels {
        Tunnels { target: own_address(listen), open: Arc::new(Semaphore::new(MAX_TUNNELS)) }
    }

    /// Answers `request` (an `OpenTunnel` to `port`): connects, switches protocols and copies
    /// bytes both ways in a task of its own until either side closes or `shutdown` turns true.
    pub(crate) async fn open(
        &self,
        mut request: hyper::Request<Incoming>,
        port: u16,
        mut shutdown: watch::Receiver<bool>,
    ) -> Response<ApiBody> {
        let asks_upgrade = request
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(TUNNEL_UPGRADE));
        if !asks_upgrade {
            return error(
                StatusCode::UPGRADE_REQUIRED,
                format!("a tunnel needs `Connection: upgrade` and `Upgrade: {TUNNEL_UPGRADE}`"),
            );
        }
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_TUNNELS} tunnels are open already; close some and try again"),
            );
        };
        let service = tunnel_service(port).unwrap_or("telemetry");
        let address = SocketAddr::new(self.target, port);
        let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(reason)) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "could not connect to {service} at {address}: {reason}; is it running on this machine?"
                    ),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "{service} at {address} did not accept a connection within {CONNECT_TIMEOUT:?}"
                    ),
                );
            }
        };
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let _permit = permit;
            let upgraded = match upgrade.await {
                Ok(upgraded) => upgraded,
                Err(reason) => {
                    tracing::debug!("tunnel to {address}: the upgrade failed: {reason}");
                    return;
                }
            };
            let mut client = TokioIo::new(upgraded);
            let mut upstream = upstream;
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(reason) = copied {
                        tracing::debug!("tunnel to {address} ended: {reason}");
                    }
                }
                _ = crate::shutdown_signalled(&mut shutdown) => {}
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, TUNNEL_UPGRADE)
            .body(Empty::new().boxed_unsync())
            .expect("a response with static headers builds")
    }
}

/// Where a tunnel connects on a machine whose API listens on `listen`: that address, or
/// loopback when it is every address.
fn own_address(listen: IpAddr) -> IpAddr {
    match listen {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn error(status: StatusCode, error: String) -> Response<ApiBody> {
    let json = serde_json::to_vec(&ApiError { error }).expect("API answers serialize to JSON");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json)).boxed_unsync())
        .expect("a response with static headers builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_connects_to_the_api_address_or_loopback_when_it_is_every_address() {
        let local: IpAddr = "127.100.3.7".parse().unwrap();
        assert_eq!(own_address(local), local);
        assert_eq!(own_address("0.0.0.0".parse().unwrap()), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(own_address("::".parse().unwrap()), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
