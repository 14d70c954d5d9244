//! A rehearsal IMDS, served by the agent itself under the local provider (bootstrap
//! `imds.rehearsal_notices`), so that `flotilla notice` can rehearse a machine's interruption
//! hooks. The agent polls it over HTTP exactly as it polls EC2's, so the rehearsal runs the
//! code a cloud machine runs.
//!
//! It is the emulator's IMDS code (`imds_server`: IMDSv2's token rules and routes) over this
//! machine's facts: the metadata the lifecycle's macros read (`instance-id` is `local-<name>`,
//! `instance-type` `local`, the region, a zone `<region>a`, `public-ipv4`, `local-ipv4`), and
//! the three event routes, read on every request from the notices file
//! (`flotilla_spec::imds::RehearsalNotices`, written atomically by `flotilla notice`): absent
//! notices are 404. Hosted in the agent rather than a process of its own, so a machine stays
//! one process to start, adopt and stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use flotilla_spec::identity::IdentityBundle;
use flotilla_spec::imds::RehearsalNotices;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::AgentError;
use crate::imds_server::{ImdsServer, MetadataSource, Notices, listing};

/// This machine, as its rehearsal IMDS describes it.
struct Rehearsal {
    notices: PathBuf,
    metadata: Vec<(&'static str, String)>,
}

impl MetadataSource for Rehearsal {
    fn metadata(&self, key: &str, _wall: SystemTime) -> Option<String> {
        if key.is_empty() {
            let mut keys: Vec<&str> = self.metadata.iter().map(|(name, _)| *name).collect();
            keys.retain(|name| !name.starts_with("placement/"));
            keys.extend(["events/", "placement/", "spot/"]);
            keys.sort_unstable();
            return Some(listing(&keys));
        }
        if key == "placement" {
            return Some(listing(&["availability-zone", "region"]));
        }
        self.metadata.iter().find(|(name, _)| *name == key).map(|(_, value)| value.clone())
    }

    fn user_data(&self) -> Option<Vec<u8>> {
        None
    }

    fn identity_document(&self) -> Option<String> {
        None
    }

    fn notices(&self) -> Result<Notices, String> {
        let notices = RehearsalNotices::read(&self.notices)?;
        Ok(Notices {
            spot: notices.spot,
            rebalance: notices.rebalance,
            scheduled: (!notices.scheduled.is_empty()).then_some(notices.scheduled),
        })
    }
}

/// Binds `endpoint` and returns the server to spawn (it ends at `shutdown`).
pub(crate) async fn serve(
    endpoint: &str,
    notices: PathBuf,
    identity: &IdentityBundle,
    shutdown: watch::Receiver<bool>,
) -> Result<impl Future<Output = ()> + Send + 'static, AgentError> {
    let address: SocketAddr =
        endpoint.trim_start_matches("http://").parse().map_err(|_| AgentError::Listen {
            what: "rehearsal IMDS",
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            source: std::io::Error::other(format!("{endpoint} is not http://IP:PORT")),
        })?;
    let listener = TcpListener::bind(address).await.map_err(|source| AgentError::Listen {
        what: "rehearsal IMDS",
        address,
        source,
    })?;
    let server = Arc::new(ImdsServer::new(Rehearsal {
        notices,
        metadata: vec![
            ("instance-id", format!("local-{}", identity.name)),
            ("instance-type", "local".to_owned()),
            ("placement/region", identity.region.clone()),
            ("placement/availability-zone", format!("{}a", identity.region)),
            ("public-ipv4", identity.public_ip.to_string()),
            ("local-ipv4", identity.private_ip.to_string()),
        ],
    }));
    Ok(crate::imds_server::serve(listener, server, shutdown))
}
