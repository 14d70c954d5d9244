//! The public-IP pool's address blocks, leased machine-wide with [`flotilla_local::lease`] so
//! the emulator's instances never share an address with local fleets or another emulator.
//!
//! The lease's owner is `/proc/<this pid>`: it exists exactly as long as this process, so the
//! blocks become free by themselves if the emulator is killed, and are released at a clean exit.

use std::path::{Path, PathBuf};

use flotilla_local::lease::{Block, Leases, lease_dir};

/// The tag recorded in each lease file.
const LEASE_TAG: &str = "flotilla-emulator";

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
