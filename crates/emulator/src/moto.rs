//! The moto process: our Python module (embedded here, written to the state directory at
//! start) run by the pinned moto's Python, on 127.0.0.1 and a port it picks and announces.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::env::moto as env;

/// The Python side: moto's WSGI app with flotilla's middleware and model patches.
pub(crate) const MODULE: &str = include_str!("../python/flotilla_moto.py");
/// How long moto may take to import, warm up and bind.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long moto gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error("starting {python}: {source}")]
    Spawn { python: PathBuf, source: std::io::Error },
    #[error("moto exited before it was ready ({status}); the end of its log {log}:\n{tail}")]
    Exited { status: String, log: PathBuf, tail: String },
    #[error("moto did not announce its port within {}s; see {log}", START_DEADLINE.as_secs())]
    Timeout { log: PathBuf },
    #[error("moto announced {line:?}, not {{\"port\": N}}")]
    Announcement { line: String },
}

/// What moto is told at start.
#[derive(Debug)]
pub(crate) struct MotoConfig<'a> {
    pub(crate) python: &'a Path,
    pub(crate) module: &'a Path,
    pub(crate) amis: &'a Path,
    pub(crate) log: &'a Path,
    pub(crate) port: u16,
    pub(crate) public_blocks: String,
    pub(crate) latency: Duration,
    pub(crate) pending: Duration,
    pub(crate) shutting_down: Duration,
    pub(crate) volumes: crate::control::VolumeTiming,
}

/// A running moto.
#[derive(Debug)]
pub(crate) struct Moto {
    child: Child,
    /// Kept open: moto writes nothing more, but a closed pipe would turn a stray print into an error.
    _stdout: BufReader<ChildStdout>,
    pub(crate) port: u16,
}

impl Moto {
    pub(crate) async fn start(config: MotoConfig<'_>) -> Result<Moto, MotoError> {
        let spawn_error = |source| MotoError::Spawn { python: config.python.to_path_buf(), source };
        let log = fs_err::File::create(config.log).map_err(spawn_error)?.into_parts().0;
        let mut child = Command::new(config.python)
            .arg(config.module)
            .env(env::AMIS_PATH, config.amis)
            .env(env::PORT, config.port.to_string())
            .env(env::PUBLIC_BLOCKS, &config.public_blocks)
            .env(env::PROBE_PORTS, crate::addresses::probed_ports())
            .env(env::LATENCY_MS, millis(config.latency))
            .env(env::PENDING_MS, millis(config.pending))
            .env(env::SHUTTING_DOWN_MS, millis(config.shutting_down))
            .env(env::ATTACH_MS, millis(config.volumes.attach))
            .env(env::DETACH_MS, millis(config.volumes.detach))
            .env(env::VOLUME_RELEASE_MS, millis(config.volumes.release_after_terminate))
            .env("PYTHONUNBUFFERED", "1")
            // botocore inside moto must not read a person's AWS profile.
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_DEFAULT_PROFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let Some(stdout) = child.stdout.take() else {
            return Err(spawn_error(std::io::Error::other("no stdout pipe")));
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(START_DEADLINE, stdout.read_line(&mut line)).await;
        let exited = |child: &mut Child| {
            let status = match child.try_wait() {
                Ok(Some(status)) => status.to_string(),
                _ => "still running".to_owned(),
            };
            MotoError::Exited { status, log: config.log.to_path_buf(), tail: tail(config.log) }
        };
        match read {
            Err(_) => return Err(MotoError::Timeout { log: config.log.to_path_buf() }),
            Ok(Ok(0)) | Ok(Err(_)) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                return Err(exited(&mut child));
            }
            Ok(Ok(_)) => {}
        }
        let port = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| MotoError::Announcement { line: line.trim().to_owned() })?;
        Ok(Moto { child, _stdout: stdout, port })
    }

    /// Resolves when moto exits on its own; the stack cannot go on without it.
    pub(crate) async fn exited(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(error) => error.to_string(),
        }
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) =
            self.child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = fs_err::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
