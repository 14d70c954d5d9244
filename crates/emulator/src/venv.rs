//! The pinned moto, in a Python virtual environment created on first use.
//!
//! `python3 -m venv DIR`, then `DIR/bin/python -m pip install 'moto[server]==5.2.5'` (about
//! 35 s and 320 MB; pip's progress goes to stderr), then a marker file, written last, says the
//! environment is complete. An environment without the marker is half made and is rebuilt.
//! Creation runs under a lock file beside the directory, so two emulators starting at once
//! build it once.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::env;

/// What pip installs.
pub(crate) const MOTO_REQUIREMENT: &str = "moto[server]==5.2.5";
/// Written once the environment is complete.
const READY_MARKER: &str = ".flotilla-moto-5.2.5";
/// The one command that installs what creating the environment needs (Debian and Ubuntu).
pub(crate) const INSTALL_PYTHON: &str = "sudo apt-get install -y python3 python3-venv python3-pip";

#[derive(Debug, thiserror::Error)]
pub enum VenvError {
    #[error("python3 was not found on PATH; install it with `{INSTALL_PYTHON}`")]
    PythonMissing,
    #[error(
        "`python3 -m venv {dir}` failed ({status}); the venv module or pip is missing, install them with `{INSTALL_PYTHON}`"
    )]
    Create { dir: PathBuf, status: ExitStatus },
    #[error(
        "`pip install '{MOTO_REQUIREMENT}'` into {dir} failed ({status}); see pip's output above (is PyPI reachable?)"
    )]
    Install { dir: PathBuf, status: ExitStatus },
    #[error("preparing the Python environment {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// `$FLOTILLA_EMULATOR_VENV`, else `$XDG_CACHE_HOME` or `~/.cache`, then
/// `flotilla/emulator-venv-5.2.5`.
pub(crate) fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(env::VENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("flotilla").join("emulator-venv-5.2.5")
}

/// The environment's Python, creating the environment first if needed.
pub(crate) fn ensure(dir: &Path) -> Result<PathBuf, VenvError> {
    let python = dir.join("bin").join("python");
    if dir.join(READY_MARKER).exists() {
        return Ok(python);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VenvError::Io { path, source }
    };
    let parent = dir.parent().unwrap_or(Path::new("/"));
    fs_err::create_dir_all(parent).map_err(io(parent))?;
    // `<dir>.lock`: with_extension would cut the `.5` of `…-5.2.5`.
    let mut lock_name = dir.file_name().unwrap_or(dir.as_os_str()).to_os_string();
    lock_name.push(".lock");
    let lock_path = dir.with_file_name(lock_name);
    let lock = fs_err::File::create(&lock_path).map_err(io(&lock_path))?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        tracing::info!(
            "waiting for another flotilla-emulator to finish creating {}",
            dir.display()
        );
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| VenvError::Io { path: lock_path.clone(), source: e.into() })?;
    }
    if dir.join(READY_MARKER).exists() {
        return Ok(python);
    }
    if dir.exists() {
        tracing::info!("removing the incomplete Python environment {}", dir.display());
        fs_err::remove_dir_all(dir).map_err(io(dir))?;
    }
    tracing::info!("creating the Python environment {} (first use only)", dir.display());
    let status = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(dir)
        .stdout(stderr_stdio().map_err(io(dir))?)
        .status()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VenvError::PythonMissing,
            _ => VenvError::Io { path: dir.to_path_buf(), source: e },
        })?;
    if !status.success() {
        return Err(VenvError::Create { dir: dir.to_path_buf(), status });
    }
    tracing::info!("installing {MOTO_REQUIREMENT} (about 35 s)");
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", MOTO_REQUIREMENT])
        .stdout(stderr_stdio().map_err(io(dir))?)
        .status()
        .map_err(io(&python))?;
    if !status.success() {
        return Err(VenvError::Install { dir: dir.to_path_buf(), status });
    }
    let marker = dir.join(READY_MARKER);
    fs_err::write(&marker, MOTO_REQUIREMENT).map_err(io(&marker))?;
    tracing::info!("Python environment ready");
    Ok(python)
}

/// A child's stdout that goes to our stderr: stdout carries only the emulator's environment.
fn stderr_stdio() -> std::io::Result<Stdio> {
    Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
}
