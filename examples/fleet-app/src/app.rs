//! The running node: binds its address, starts the HTTP server and the gossip loop, and stops
//! both on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::hosts::Host;
use crate::log::log;
use crate::metrics::Metrics;
use crate::settings::{ENV_IP, ENV_PRIVATE_IP, Settings};
use crate::view::View;
use crate::{gossip, server};

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
    /// Every node in hosts.yaml but this one.
    pub peers: Vec<Host>,
    view: Mutex<View>,
    pub metrics: Metrics,
}

impl App {
    pub fn view(&self) -> MutexGuard<'_, View> {
        // The view stays consistent whatever panicked while holding the lock: every update is
        // a single max or assignment.
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How recently a peer must have been heard from to count as seen.
    pub fn seen_window(&self) -> Duration {
        self.interval * SEEN_INTERVALS
    }
}

/// Runs the node until a signal asks it to stop.
pub async fn run(settings: Settings) -> Result<(), String> {
    // Install the handlers first, so that a SIGTERM from here on means a clean exit.
    let listen_error = |error: std::io::Error| format!("cannot listen for signals: {error}");
    let mut sigterm = signal(SignalKind::terminate()).map_err(listen_error)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(listen_error)?;

    let listener = bind(&settings).await?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    let Settings { name, config, peers, all_names, region, tag, .. } = settings;
    log!(
        "{name} listening on {address}: greeting={:?}, {} peers, gossip every {} ms \
         (fleet-app {}, region {}, tag {})",
        config.greeting,
        peers.len(),
        config.interval.as_millis(),
        env!("CARGO_PKG_VERSION"),
        region.as_deref().unwrap_or("-"),
        tag.as_deref().unwrap_or("-"),
    );
    let app = Arc::new(App {
        view: Mutex::new(View::new(&name, all_names.iter().map(String::as_str))),
        metrics: Metrics::new(&name, &config.greeting),
        name,
        greeting: config.greeting,
        port: config.port,
        interval: config.interval,
        fanout: config.fanout,
        peers,
    });
    let server = tokio::spawn(server::serve(listener, Arc::clone(&app)));
    let gossip = tokio::spawn(gossip::run(Arc::clone(&app)));

    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
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
