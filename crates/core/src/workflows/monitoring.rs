//! `monitoring`: local ports forwarded to the monitoring machine's telemetry services (Grafana,
//! Prometheus) through its agent's mTLS API, so those services are never open to the internet.
//!
//! Steps: open the deployment, ask the provider for its machines and pick the monitoring one,
//! bind each listener on 127.0.0.1 (a port taken is an error naming it, before anything is
//! forwarded), report the bound addresses, then for each accepted connection open an
//! `OpenTunnel` to the service's port through the agent and copy bytes both ways, until
//! `stop` resolves. A connection whose tunnel the agent refuses (the service is not running
//! there) is closed and the reason logged; the listener goes on.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};

use super::connect;
use crate::client::{AgentClient, error_chain};
use crate::error::CoreError;
use crate::provider::{Provider, ProviderError, Role};
use crate::state::{Deployment, Home};

/// One service to forward: its port on the monitoring machine and the local port (0: any free
/// one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The name `flotilla_spec::api::TUNNEL_PORTS` gives it (`grafana`, `prometheus`).
    pub service: &'static str,
    pub remote_port: u16,
    pub local_port: u16,
}

/// A forward once its listener is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundForward {
    pub forward: Forward,
    pub local: SocketAddr,
}

/// Forwards `forwards` of deployment `tag` until `stop` resolves; `ready` hears the bound
/// addresses once every listener is bound.
pub async fn monitoring<P: Provider>(
    home: &Home,
    tag: &str,
    forwards: &[Forward],
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
    ready: impl FnOnce(&[BoundForward]),
    stop: impl Future<Output = ()>,
) -> Result<(), CoreError> {
    let deployment = home.open(tag)?;
    let provider = make_provider(&deployment)?;
    let machines = provider.machines().await?;
    let Some(monitoring) = machines.into_iter().find(|m| m.role == Role::Monitoring) else {
        return Err(CoreError::Refused(format!(
            "deployment `{tag}` has no monitoring machine running: run `flotilla create` again to bring it back"
        )));
    };
    let client = connect(&deployment, std::slice::from_ref(&monitoring))?;
    let mut listeners = Vec::new();
    for forward in forwards {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, forward.local_port));
        let listener = TcpListener::bind(address).await.map_err(|error| {
            CoreError::Io(format!(
                "could not listen on {address} for {}: {error}; choose another local port with --{}-port (0 picks a free one)",
                forward.service, forward.service
            ))
        })?;
        let local = listener.local_addr()?;
        listeners.push((BoundForward { forward: *forward, local }, listener));
    }
    let bound: Vec<BoundForward> = listeners.iter().map(|(bound, _)| *bound).collect();
    ready(&bound);
    let serving = futures_util::future::join_all(
        listeners
            .into_iter()
            .map(|(bound, listener)| serve(&client, &monitoring.name, bound.forward, listener)),
    );
    tokio::select! {
        _ = serving => {}
        () = stop => {}
    }
    Ok(())
}

/// Accepts connections on `listener` and forwards each through its own tunnel.
async fn serve(client: &AgentClient, machine: &str, forward: Forward, listener: TcpListener) {
    loop {
        let (connection, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("{}: accepting a connection failed: {error}", forward.service);
                continue;
            }
        };
        let client = client.clone();
        let machine = machine.to_owned();
        tokio::spawn(async move {
            if let Err(error) = forward_one(&client, &machine, forward, connection).await {
                tracing::warn!("{} (connection from {peer}): {error}", forward.service);
            }
        });
    }
}

async fn forward_one(
    client: &AgentClient,
    machine: &str,
    forward: Forward,
    mut connection: TcpStream,
) -> Result<(), String> {
    let mut tunnel = client
        .open_tunnel(machine, forward.remote_port)
        .await
        .map_err(|error| format!("no tunnel: {}", error_chain(&error)))?;
    tokio::io::copy_bidirectional(&mut connection, &mut tunnel)
        .await
        .map(drop)
        .map_err(|error| format!("the tunnel ended: {error}"))
}
