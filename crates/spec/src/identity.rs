//! The identity bundle: what one machine needs to serve the deployment's mTLS API.
//!
//! The deployer issues it after it knows the machine's addresses and stores it where only that
//! machine can read it (the instance's 0700 directory locally; the deployment's S3 prefix,
//! readable through the instance role, on AWS). The CA's private key is never in it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityBundle {
    /// The machine's name (`monitoring` for the monitoring instance).
    pub name: String,
    pub tag: String,
    pub region: String,
    /// The address hosts.yaml gives for this machine (`FLOTILLA_IP`).
    pub public_ip: IpAddr,
    /// The machine's private address (`FLOTILLA_PRIVATE_IP`).
    pub private_ip: IpAddr,
    /// The deployment CA certificate (PEM): client certificates must chain to it.
    pub ca_cert: String,
    /// This machine's certificate (PEM), issued by the deployment CA, SANs: its DNS name
    /// ([`agent_dns_name`]) and both addresses.
    pub cert: String,
    /// This machine's private key (PKCS#8 PEM).
    pub key: Secret,
}

pub use crate::names::agent_dns_name;
