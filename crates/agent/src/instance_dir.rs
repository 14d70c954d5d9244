//! The instance directory: where one agent keeps everything it owns, and the lock that makes it
//! the only agent there.
//!
//! ```text
//! <dir>/                         0700
//!   agent.lock                   0600  flock held for the agent's whole life
//!   agent.pid                    0600  the holder's pid, named when a second agent is refused
//!   agent-state.json             0600  {installed, previous, stopped}; replaced atomically
//!   binary.pgid                  0600  the running binary's process group (see process_group)
//!   service-<name>.pgid          0600  a running service's process group, likewise
//!   boot-commands.json           0600  the boot id and the boot commands that succeeded in it
//!   lifecycle-state.json         0600  {started}: the `started` hooks ran on this machine
//!   hosts.yaml                   0600  the membership every version reads; swapped in place
//!   hosts.previous.yaml          0600  the one before, put back when a change fails
//!   hosts.yaml.partial           0600  a download under way
//!   root/                              boot files, when the bootstrap puts them here (local)
//!   versions/                    0700
//!     <version>/                 0700  one verified version, renamed into place when complete
//!       binary                   0700
//!       config.conf              0600
//!       manifest.json            0600  the manifest, to restart this version after a reboot
//!       services/<name>/         0700  a service's program (`program`, 0700) and files (0600)
//!     <version>.partial/         0700  a download under way (removed at start)
//!   work/                        0700  the binary's working directory, kept across versions
//!   services/<name>/             0700  a service's data and working directory (`{data}`), kept
//!   logs/                        0700
//!     binary.log                 0600  the binary's stdout and stderr, and the agent's events
//!     binary.log.1 … .<keep>     0600  rotated
//!     services/<name>/binary.log 0600  a service's output and its supervisor's events, rotated
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs_err::os::unix::fs::OpenOptionsExt;

use crate::error::AgentError;

/// Mode of every directory the agent creates.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file the agent writes, except the binary.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of the binary.
pub(crate) const BINARY_MODE: u32 = 0o700;

/// The paths inside an instance directory.
#[derive(Clone, Debug)]
pub(crate) struct InstanceDir {
    root: PathBuf,
}

impl InstanceDir {
    pub(crate) fn new(root: PathBuf) -> Self {
        InstanceDir { root }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock_file(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    pub(crate) fn pid_file(&self) -> PathBuf {
        self.root.join("agent.pid")
    }

    pub(crate) fn state_file(&self) -> PathBuf {
        self.root.join("agent-state.json")
    }

    /// The running binary's process group, for cleaning up after an agent killed with SIGKILL.
    pub(crate) fn binary_process_group(&self) -> PathBuf {
        self.root.join("binary.pgid")
    }

    pub(crate) fn versions(&self) -> PathBuf {
        self.root.join("versions")
    }

    /// The directory of a complete version. `version` is a checked SHA-256 hex id, so it cannot
    /// climb out of `versions/`.
    pub(crate) fn version(&self, version: &str) -> PathBuf {
        self.versions().join(version)
    }

    pub(crate) fn partial_version(&self, version: &str) -> PathBuf {
        self.versions().join(format!("{version}.partial"))
    }

    /// hosts.yaml, apart from the versions (see `hosts`).
    pub(crate) fn hosts(&self) -> PathBuf {
        self.root.join("hosts.yaml")
    }

    pub(crate) fn previous_hosts(&self) -> PathBuf {
        self.root.join("hosts.previous.yaml")
    }

    pub(crate) fn partial_hosts(&self) -> PathBuf {
        self.root.join("hosts.yaml.partial")
    }

    pub(crate) fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    pub(crate) fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Where service `name`'s log is (`binary.log` inside, rotated like the binary's).
    pub(crate) fn service_logs(&self, name: &str) -> PathBuf {
        self.logs().join("services").join(name)
    }

    /// Service `name`'s data and working directory, kept across versions.
    pub(crate) fn service_data(&self, name: &str) -> PathBuf {
        self.root.join("services").join(name)
    }

    /// The file that records service `name`'s process group while it runs.
    pub(crate) fn service_process_group(&self, name: &str) -> PathBuf {
        self.root.join(format!("service-{name}.pgid"))
    }
}

/// Creates `path` (and its parents) with mode 0700, and sets 0700 if it already existed.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), AgentError> {
    let failed = |source| AgentError::InstanceDir { path: path.to_path_buf(), source };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
        .map_err(failed)?;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(failed)
}

/// Writes `contents` to `path` so that a reader sees the old content or the new one, never a mix:
/// a temporary file beside it (mode `mode`), flushed to disk, then renamed over `path`.
pub(crate) fn write_file_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = fs_err::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs_err::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        // The rename is durable once the directory is flushed too.
        fs_err::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The exclusive lock on an instance directory, held as long as this value lives.
#[derive(Debug)]
pub(crate) struct InstanceLock {
    /// The open lock file: the flock lasts as long as this descriptor.
    _file: fs_err::File,
    pid_file: PathBuf,
}

impl InstanceLock {
    /// Takes the lock without waiting and writes `agent.pid`; a second agent for the same
    /// directory gets [`AgentError::AlreadyRunning`] naming the holder's pid.
    pub(crate) fn acquire(dir: &InstanceDir) -> Result<InstanceLock, AgentError> {
        let lock_path = dir.lock_file();
        let failed = |source| AgentError::InstanceDir { path: lock_path.clone(), source };
        let file = fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(&lock_path)
            .map_err(failed)?;
        match rustix::fs::flock(file.file(), rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = fs_err::read_to_string(dir.pid_file())
                    .ok()
                    .map(|text| text.trim().to_owned())
                    .filter(|pid| !pid.is_empty())
                    .unwrap_or_else(|| "unknown".to_owned());
                return Err(AgentError::AlreadyRunning {
                    dir: dir.root().to_path_buf(),
                    lock: lock_path,
                    holder,
                });
            }
            Err(errno) => return Err(failed(errno.into())),
        }
        let pid_file = dir.pid_file();
        let pid = format!("{}\n", std::process::id());
        write_file_atomically(&pid_file, pid.as_bytes(), PRIVATE_FILE_MODE)
            .map_err(|source| AgentError::InstanceDir { path: pid_file.clone(), source })?;
        Ok(InstanceLock { _file: file, pid_file })
    }

    /// Removes `agent.pid` and lets the lock go (dropping the lock does the same).
    pub(crate) fn release(self) {
        drop(self);
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // The pid file goes first, while the lock is still held: a new agent never finds the
        // lock free and its own pid file removed.
        if let Err(error) = fs_err::remove_file(&self.pid_file) {
            tracing::warn!("could not remove the pid file: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder() {
        let temp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(temp.path().join("instance"));
        create_private_dir(dir.root()).unwrap();
        let first = InstanceLock::acquire(&dir).unwrap();
        let error = InstanceLock::acquire(&dir).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert!(message.contains("agent.lock"), "{message}");
        first.release();
        assert!(!dir.pid_file().exists());
        InstanceLock::acquire(&dir).unwrap();
    }

    #[test]
    fn atomic_writes_replace_content_with_the_given_mode() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("state.json");
        write_file_atomically(&path, b"one", 0o600).unwrap();
        write_file_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(fs_err::read_to_string(&path).unwrap(), "two");
        let mode = fs_err::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!temp.path().join("state.json.tmp").exists());
    }
}
