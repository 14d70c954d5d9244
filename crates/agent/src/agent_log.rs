//! The agent's own log: where its `tracing` lines go, and which ones.
//!
//! Without `logs.agent_log` in the bootstrap config, the lines go to stderr (on a cloud machine,
//! systemd's journal). With it, they go to that file, 0600, rotated by size like the binary's
//! log (`logs.max_bytes`, `logs.keep`; `log_file`), so that no log the agent writes grows
//! without bound. The lines are the agent's `info` and above, or what `-v` asks (`-vv` debug,
//! `-vvv` trace); a `RUST_LOG` filter given as [`LogFilter::directives`] overrides both.
//!
//! The subscriber is process-wide, so only [`crate::run`] installs it, once the bootstrap config
//! says where the lines go; [`crate::start`] leaves logging to its caller.

use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use flotilla_spec::bootstrap::LogRotation;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::error::AgentError;
use crate::instance_dir::PRIVATE_DIR_MODE;
use crate::log_file::RotatingFile;

/// Which of the agent's own log lines are written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// How many `-v`: 0 and 1 info, 2 debug, 3 or more trace.
    pub verbosity: u8,
    /// A `RUST_LOG`-style filter (`info,hyper=debug`); overrides `verbosity` when it parses.
    pub directives: Option<String>,
}

impl LogFilter {
    fn env_filter(&self) -> EnvFilter {
        let level = match self.verbosity {
            0 | 1 => "info",
            2 => "debug",
            _ => "trace",
        };
        self.directives
            .as_deref()
            .and_then(|directives| EnvFilter::try_new(directives).ok())
            .unwrap_or_else(|| EnvFilter::new(level))
    }
}

/// Sends the agent's log lines to stderr (before the bootstrap config is read, or when the
/// agent's log cannot be opened, so that the reason is seen).
pub(crate) fn log_to_stderr(filter: &LogFilter) {
    // A subscriber installed before (in tests, several agents share a process) stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter.env_filter())
        .with_writer(io::stderr)
        .with_target(false)
        .try_init();
}

/// Sends the agent's log lines where `logs` says: to `logs.agent_log`, rotated, or to stderr.
pub(crate) fn log_as_configured(filter: &LogFilter, logs: &LogRotation) -> Result<(), AgentError> {
    let Some(path) = logs.agent_log.as_deref() else {
        log_to_stderr(filter);
        return Ok(());
    };
    let file = AgentLogFile::open(path, logs).map_err(|source| {
        log_to_stderr(filter);
        AgentError::AgentLog { path: path.to_path_buf(), source }
    })?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter.env_filter())
        .with_writer(file)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    Ok(())
}

/// The agent's log file, written one formatted line at a time.
#[derive(Debug)]
pub(crate) struct AgentLogFile {
    inner: Mutex<AgentLogState>,
}

#[derive(Debug)]
struct AgentLogState {
    file: RotatingFile,
    /// Whether the last write failed: said once on stderr, not for every line.
    failing: bool,
}

impl AgentLogFile {
    /// Opens (appends to) `path`, creating its directory (0700) when it is missing.
    pub(crate) fn open(path: &Path, logs: &LogRotation) -> io::Result<AgentLogFile> {
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(parent)?;
        }
        let file = RotatingFile::open(path.to_path_buf(), logs.max_bytes, logs.keep)?;
        Ok(AgentLogFile { inner: Mutex::new(AgentLogState { file, failing: false }) })
    }

    fn lock(&self) -> MutexGuard<'_, AgentLogState> {
        // A file and a flag: nothing a panicking writer could leave half-changed.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<'a> MakeWriter<'a> for AgentLogFile {
    type Writer = AgentLogLine<'a>;

    fn make_writer(&'a self) -> AgentLogLine<'a> {
        AgentLogLine(self)
    }
}

/// Writes the lines of one event (tracing formats an event, then writes it whole).
#[derive(Debug)]
pub(crate) struct AgentLogLine<'a>(&'a AgentLogFile);

impl Write for AgentLogLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.0.lock();
        match state.file.append(bytes) {
            Ok(()) => state.failing = false,
            Err(error) if !state.failing => {
                state.failing = true;
                // Not through tracing: that would come back here.
                let path = state.file.path().display().to_string();
                let _ = writeln!(io::stderr(), "flotilla agent: could not write {path}: {error}");
            }
            Err(_) => {}
        }
        // A log line that could not be written is not the caller's error.
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn lines_go_to_a_rotated_private_file_in_a_new_directory() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("new/agent.log");
        let logs = LogRotation { max_bytes: 4096, keep: 2, agent_log: Some(path.clone()) };
        let file = AgentLogFile::open(&path, &logs).unwrap();
        for n in 0..100 {
            let line = format!("2026-01-01T00:00:00Z INFO line {n:03} {}\n", "x".repeat(60));
            file.make_writer().write_all(line.as_bytes()).unwrap();
        }
        let mode = |path: &Path| fs_err::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&temp.path().join("new")), 0o700);
        for name in ["agent.log", "agent.log.1", "agent.log.2"] {
            let rotated = temp.path().join("new").join(name);
            assert_eq!(mode(&rotated), 0o600, "{name}");
            assert!(fs_err::metadata(&rotated).unwrap().len() <= 4096, "{name}");
        }
        assert!(!temp.path().join("new/agent.log.3").exists());
        let current = fs_err::read_to_string(&path).unwrap();
        assert!(current.ends_with(&format!("line 099 {}\n", "x".repeat(60))), "{current}");
    }

    #[test]
    fn the_filter_follows_the_verbosity_unless_directives_override_it() {
        let filter = |verbosity, directives: Option<&str>| {
            LogFilter { verbosity, directives: directives.map(str::to_owned) }
                .env_filter()
                .to_string()
        };
        assert_eq!(filter(0, None), "info");
        assert_eq!(filter(1, None), "info");
        assert_eq!(filter(2, None), "debug");
        assert_eq!(filter(3, None), "trace");
        assert_eq!(filter(0, Some("warn,hyper=debug")), "hyper=debug,warn");
        assert_eq!(filter(2, Some("not a [filter")), "debug");
    }
}
