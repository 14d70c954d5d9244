//! The running node: binds its address, starts the HTTP server and the gossip loop, rereads
//! hosts.yaml on SIGHUP ([`crate::reload`]), and stops both on SIGTERM or SIGINT.
//!
//! The membership lives in the [`View`], behind the one lock the server and the gossip loop
//! already take, so a reload swaps the peers and their state in one step: no request or round
//! sees half of a change. A round in flight when the file changes finishes with the peers it
//! chose; a reply from a node removed meanwhile is dropped, as gossip from any stranger is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::log::log;
use crate::metrics::Metrics;
use crate::settings::{ENV_IP, ENV_PRIVATE_IP, Settings};
use crate::view::View;
use crate::{gossip, reload, server};

/// A peer counts as seen when it was heard from, or its counter advanced, within this many
/// gossip intervals.
pub const SEEN_INTERVALS: u32 = 5;

/// What the server and the gossip loop share.
#[derive(Debug)]
pub struct App {
    pub name: String,
    pub greeting: String,
    /// The port every node listens on (all nodes read the same config).
    pub port: u16,
    pub interval: Duration,
    /// Peers contacted per gossip round.
    pub fanout: usize,
    /// The `--hosts` file, reread on SIGHUP.
    pub hosts_path: PathBuf,
    /// Every node's state and address, this one's included: the membership.
    view: Mutex<View>,
    pub metrics: Metrics,
}

impl App {
    pub fn view(&self) -> MutexGuard<'_, View> {
        // The view stays consistent whatever panicked while holding the lock: every update is
        // a single max or assignment, and a new membership is built aside and then assigned.
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How recently a peer must have been heard from to count as seen.
    pub fn seen_window(&self) -> Duration {
        self.interval * SEEN_INTERVALS
    }
}

/// Runs the node until SIGTERM or SIGINT asks it to stop; SIGHUP rereads hosts.yaml.
pub async fn run(settings: Settings) -> Result<(), String> {
    // Install the handlers first, so that a SIGTERM from here on means a clean exit and a SIGHUP
    // a reread (before this point SIGHUP's default action would end the process).
    let listen_error = |error: std::io::Error| format!("cannot listen for signals: {error}");
    let mut sigterm = signal(SignalKind::terminate()).map_err(listen_error)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(listen_error)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(listen_error)?;

    let listener = bind(&settings).await?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    let Settings { name, config, hosts_path, hosts, region, tag, .. } = settings;
    let view = View::new(&name, &hosts);
    log!(
        "{name} listening on {address}: greeting={:?}, {} peers, gossip every {} ms \
         (fleet-app {}, region {}, tag {})",
        config.greeting,
        view.peer_count(),
        config.interval.as_millis(),
        env!("CARGO_PKG_VERSION"),
        region.as_deref().unwrap_or("-"),
        tag.as_deref().unwrap_or("-"),
    );
    let app = Arc::new(App {
        view: Mutex::new(view),
        metrics: Metrics::new(&name, &config.greeting),
        name,
        greeting: config.greeting,
        port: config.port,
        interval: config.interval,
        fanout: config.fanout,
        hosts_path,
    });
    let server = tokio::spawn(server::serve(listener, Arc::clone(&app)));
    let gossip = tokio::spawn(gossip::run(Arc::clone(&app)));

    // Several SIGHUPs close together may arrive as one: each reread takes the file as it is
    // then, so the last change is never missed.
    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => reload::reload_hosts(&app),
        }
    };
    server.abort();
    gossip.abort();
    log!("{} got {signal_name}: stopping with own counter {}", app.name, app.view().own_counter());
    Ok(())
}

/// Listens on `FLOTILLA_IP:port`, or on `FLOTILLA_PRIVATE_IP:port` when the first cannot be
/// bound (on EC2 the public address is NATed and belongs to no interface).
async fn bind(settings: &Settings) -> Result<TcpListener, String> {
    let port = settings.config.port;
    let error = match TcpListener::bind((settings.ip, port)).await {
        Ok(listener) => return Ok(listener),
        Err(error) => error,
    };
    let first = SocketAddr::new(settings.ip, port);
    match settings.private_ip {
        Some(private_ip) if private_ip != settings.ip => {
            log!(
                "{} cannot listen on {first} ({ENV_IP}): {error}; listening on {} ({ENV_PRIVATE_IP}) instead",
                settings.name,
                SocketAddr::new(private_ip, port),
            );
            TcpListener::bind((private_ip, port)).await.map_err(|error| {
                format!("cannot listen on {}: {error}", SocketAddr::new(private_ip, port))
            })
        }
        _ => {
            Err(format!("cannot listen on {first}: {error} (and no other {ENV_PRIVATE_IP} to try)"))
        }
    }
}
