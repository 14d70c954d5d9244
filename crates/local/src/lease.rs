//! Loopback address leases, so deployments that exist at the same time never share an address.
//!
//! Addresses come in blocks of 254 (`127.A.B.1` … `127.A.B.254`, A in 100..=199). A block is
//! leased by creating `<lease dir>/127.A.B` holding the owner's local state directory; the lease
//! directory is machine-wide (`$FLOTILLA_LEASE_DIR`, default `/tmp/flotilla-<uid>/leases`), not
//! per `$FLOTILLA_HOME`, because two homes on one machine share one loopback network. Allocation
//! runs under an exclusive flock of `<lease dir>/.lock`. A lease whose owner directory is gone is
//! stale and may be taken over. Each address handed out is also probed by binding the agent's
//! port, so an address some other program uses is skipped.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the lease directory (read by the commands, which pass its value
/// to [`lease_dir`]).
pub const LEASE_DIR_ENV: &str = "FLOTILLA_LEASE_DIR";
/// Second octets of leased blocks.
const FIRST_OCTET_RANGE: std::ops::RangeInclusive<u8> = 100..=199;

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    /// The owner's local-provider state directory.
    owner: PathBuf,
    tag: String,
}

/// The lease directory: `configured` (`$FLOTILLA_LEASE_DIR`), or the default for this user.
pub fn lease_dir(configured: Option<&Path>) -> PathBuf {
    match configured {
        Some(dir) => dir.to_path_buf(),
        None => std::env::temp_dir()
            .join(format!("flotilla-{}", rustix::process::getuid().as_raw()))
            .join("leases"),
    }
}

/// A block of 254 addresses: `127.a.b.1` … `127.a.b.254`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Block {
    pub a: u8,
    pub b: u8,
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "127.{}.{}.0/24", self.a, self.b)
    }
}

impl Block {
    fn file_name(self) -> String {
        format!("127.{}.{}", self.a, self.b)
    }

    /// The block a lease file is named after (`127.A.B`).
    fn from_file_name(name: &str) -> Option<Block> {
        let rest = name.strip_prefix("127.")?;
        let (a, b) = rest.split_once('.')?;
        let block = Block { a: a.parse().ok()?, b: b.parse().ok()? };
        (FIRST_OCTET_RANGE.contains(&block.a) && block.file_name() == name).then_some(block)
    }

    pub fn address(self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.a, self.b, host)
    }

    /// Whether `address` is one of the block's.
    pub fn contains(self, address: Ipv4Addr) -> bool {
        let [first, a, b, _] = address.octets();
        (first, a, b) == (127, self.a, self.b)
    }

    fn all() -> impl Iterator<Item = Block> {
        FIRST_OCTET_RANGE.flat_map(|a| (0..=255u8).map(move |b| Block { a, b }))
    }
}

/// Leases blocks under the lease directory's lock.
#[derive(Debug)]
pub struct Leases {
    dir: PathBuf,
    _lock: fs_err::File,
}

impl Leases {
    /// Takes the lease directory's lock (blocking: allocation is quick). The directory is made
    /// 0700 (with its parent, the per-user `flotilla-<uid>`, when it is the default).
    pub fn lock(dir: &Path) -> std::io::Result<Leases> {
        create_private_dirs(dir)?;
        let lock = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(".lock"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(Leases { dir: dir.to_path_buf(), _lock: lock })
    }

    /// Leases a free block for `owner`, taking over stale leases.
    pub fn lease_block(&self, owner: &Path, tag: &str, skip: &[Block]) -> std::io::Result<Block> {
        for block in Block::all() {
            if skip.contains(&block) {
                continue;
            }
            let path = self.dir.join(block.file_name());
            if let Some(record) = read_record(&path) {
                if record.owner == owner {
                    return Ok(block);
                }
                if record.owner.exists() {
                    continue;
                }
                tracing::debug!(block = %block.file_name(), owner = %record.owner.display(), "taking over a stale lease");
            }
            let record = LeaseRecord { owner: owner.to_path_buf(), tag: tag.to_owned() };
            write_record(&path, &record)?;
            return Ok(block);
        }
        Err(std::io::Error::other(
            "every loopback block 127.100.0.0/16 … 127.199.255.0/24 is leased; destroy unused local deployments",
        ))
    }

    /// Makes sure `block` is leased to `owner`; returns the other, live owner if it is not.
    pub fn reassert(
        &self,
        owner: &Path,
        tag: &str,
        block: Block,
    ) -> std::io::Result<Option<PathBuf>> {
        let path = self.dir.join(block.file_name());
        match read_record(&path) {
            Some(record) if record.owner == owner => Ok(None),
            Some(record) if record.owner.exists() => Ok(Some(record.owner)),
            _ => {
                let record = LeaseRecord { owner: owner.to_path_buf(), tag: tag.to_owned() };
                write_record(&path, &record)?;
                Ok(None)
            }
        }
    }

    /// Every block leased to `owner`, read from the lease files (so that a deployment whose
    /// records are lost still finds its leases).
    pub fn owned_by(&self, owner: &Path) -> std::io::Result<Vec<Block>> {
        let mut blocks = Vec::new();
        for entry in fs_err::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(block) = name.to_str().and_then(Block::from_file_name) else {
                continue;
            };
            if read_record(&entry.path()).is_some_and(|record| record.owner == owner) {
                blocks.push(block);
            }
        }
        blocks.sort();
        Ok(blocks)
    }

    /// Releases `owner`'s blocks.
    pub fn release(&self, owner: &Path, blocks: &[Block]) -> std::io::Result<()> {
        for block in blocks {
            let path = self.dir.join(block.file_name());
            if read_record(&path).is_some_and(|r| r.owner == owner) {
                fs_err::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

/// Writes a lease file, 0600.
fn write_record(path: &Path, record: &LeaseRecord) -> std::io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&json)
}

/// Creates `dir` and its missing parents 0700.
fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|error| {
        std::io::Error::new(error.kind(), format!("creating {}: {error}", dir.display()))
    })
}

fn read_record(path: &Path) -> Option<LeaseRecord> {
    let bytes = fs_err::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `address:port` can be bound now (nothing else listens there).
pub fn is_free(address: Ipv4Addr, port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((address, port))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_get_distinct_blocks_and_keep_theirs() {
        let temp = tempfile::tempdir().unwrap();
        let owner_a = temp.path().join("a");
        let owner_b = temp.path().join("b");
        fs_err::create_dir_all(&owner_a).unwrap();
        fs_err::create_dir_all(&owner_b).unwrap();
        let leases = Leases::lock(&temp.path().join("leases")).unwrap();
        let a = leases.lease_block(&owner_a, "a", &[]).unwrap();
        let b = leases.lease_block(&owner_b, "b", &[]).unwrap();
        assert_ne!(a, b);
        assert_eq!(leases.lease_block(&owner_a, "a", &[]).unwrap(), a, "re-run keeps its block");
        let a2 = leases.lease_block(&owner_a, "a", &[a]).unwrap();
        assert_ne!(a2, a);
        assert_ne!(a2, b);
    }

    #[test]
    fn stale_leases_are_taken_over_and_released_ones_reused() {
        let temp = tempfile::tempdir().unwrap();
        let gone = temp.path().join("gone");
        let live = temp.path().join("live");
        fs_err::create_dir_all(&live).unwrap();
        let leases = Leases::lock(&temp.path().join("leases")).unwrap();
        fs_err::create_dir_all(&gone).unwrap();
        let first = leases.lease_block(&gone, "gone", &[]).unwrap();
        fs_err::remove_dir_all(&gone).unwrap();
        assert_eq!(leases.lease_block(&live, "live", &[]).unwrap(), first);
        leases.release(&live, &[first]).unwrap();
        let other = temp.path().join("other");
        fs_err::create_dir_all(&other).unwrap();
        assert_eq!(leases.lease_block(&other, "other", &[]).unwrap(), first);
    }
}
