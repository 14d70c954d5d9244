//! The public-IP pool's address blocks, leased machine-wide with [`flotilla_local::lease`] so
//! the emulator's instances never share an address with local fleets or another emulator.
//!
//! Each address is also probed before moto hands it out ([`PROBED_PORTS`]).
//!
//! The lease's owner is `/proc/<this pid>`: it exists exactly as long as this process, so the
//! blocks become free by themselves if the emulator is killed, and are released at a clean exit.

use std::path::{Path, PathBuf};

use flotilla_local::lease::{Block, Leases, lease_dir};
use flotilla_spec::bootstrap::{DEFAULT_API_PORT, DEFAULT_METRICS_PORT};

use crate::imds::IMDS_PORT;

/// The tag recorded in each lease file.
const LEASE_TAG: &str = "flotilla-emulator";

/// The ports an instance's address must have free: the agent's API and metrics ports (the AWS
/// provider's user data gives the agent the defaults) and the instance's IMDS. moto probes
/// them by binding before it hands an address out, as the local provider probes its own
/// ([`flotilla_local::lease::is_free`]), and skips an address where one is taken: another
/// local fleet, another emulator's instance or any program may listen there.
pub(crate) const PROBED_PORTS: [u16; 3] = [AGENT_PORTS[0], AGENT_PORTS[1], IMDS_PORT];
/// The agent's API and metrics ports; the booter probes them again before it runs user data.
pub(crate) const AGENT_PORTS: [u16; 2] = [DEFAULT_API_PORT, DEFAULT_METRICS_PORT];

/// [`PROBED_PORTS`] as moto reads them: `7443,9101,1338`.
pub(crate) fn probed_ports() -> String {
    PROBED_PORTS.map(|port| port.to_string()).join(",")
}

/// Blocks leased for this process's lifetime.
#[derive(Debug)]
pub(crate) struct PublicBlocks {
    lease_dir: PathBuf,
    owner: PathBuf,
    blocks: Vec<Block>,
}

impl PublicBlocks {
    /// Leases `count` blocks of 254 addresses.
    pub(crate) fn lease(count: u16) -> std::io::Result<PublicBlocks> {
        let configured = std::env::var_os(crate::env::LEASE_DIR).filter(|dir| !dir.is_empty());
        let lease_dir = lease_dir(configured.as_deref().map(Path::new));
        let owner = PathBuf::from(format!("/proc/{}", std::process::id()));
        let leases = Leases::lock(&lease_dir)?;
        let mut blocks = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let block = leases.lease_block(&owner, LEASE_TAG, &blocks)?;
            blocks.push(block);
        }
        Ok(PublicBlocks { lease_dir, owner, blocks })
    }

    /// `127.A.B,127.A.C,…`: the blocks as the Python side reads them.
    pub(crate) fn prefixes(&self) -> String {
        let prefixes: Vec<String> =
            self.blocks.iter().map(|b| format!("127.{}.{}", b.a, b.b)).collect();
        prefixes.join(",")
    }

    /// `127.A.B.0/24,127.A.C.0/24,…`: the address map a CLI is told. The public addresses
    /// instances get are in these loopback blocks and are reached as they are (the map from
    /// public address to local address is the identity).
    pub(crate) fn cidrs(&self) -> String {
        let cidrs: Vec<String> =
            self.blocks.iter().map(|b| format!("127.{}.{}.0/24", b.a, b.b)).collect();
        cidrs.join(",")
    }

    pub(crate) fn address_count(&self) -> usize {
        self.blocks.len() * 254
    }

    /// Gives the blocks back.
    pub(crate) fn release(self) -> std::io::Result<()> {
        Leases::lock(&self.lease_dir)?.release(&self.owner, &self.blocks)
    }
}
