//! CPU profiles of the running binary, recorded on request (`Profile`) with Linux `perf` and
//! answered as `perf script` text, which the Firefox Profiler opens as it is.
//!
//! One profile at a time: `perf record -F <frequency> -g -p <pid> -o <dir>/profiles/perf.data
//! -- sleep <duration>` samples every thread of the binary with its call stack for the
//! duration, then `perf script` turns the samples into text with the symbols this machine
//! resolves (the binary's own, when it is not stripped). The data file is removed afterwards.
//! `perf` must be on the agent's PATH (Debian: `linux-perf`; Ubuntu:
//! `linux-tools-$(uname -r)`), and the kernel must let the agent's user sample the binary
//! (`kernel.perf_event_paranoid`; root may always).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::instance_dir::{InstanceDir, create_private_dir};
use crate::versions::Refusal;

/// How long `perf` may take beyond the recording itself (attaching, writing, symbolizing).
const PERF_MARGIN: Duration = Duration::from_secs(120);

/// Records one profile at a time.
#[derive(Debug, Default)]
pub(crate) struct Profiler {
    busy: tokio::sync::Mutex<()>,
}

impl Profiler {
    /// Records `pid` for `duration` at `frequency` Hz and answers `perf script`'s text.
    pub(crate) async fn record(
        &self,
        dir: &InstanceDir,
        pid: u32,
        duration: Duration,
        frequency: u32,
    ) -> Result<Vec<u8>, Refusal> {
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(Refusal::Conflict(
                "a profile is being recorded already; ask again when it is done".to_owned(),
            ));
        };
        let profiles = dir.root().join("profiles");
        create_private_dir(&profiles).map_err(|e| Refusal::Internal(e.to_string()))?;
        let data = profiles.join("perf.data");
        let recorded = record(&data, pid, duration, frequency).await;
        let script = match recorded {
            Ok(()) => script(&data).await,
            Err(error) => Err(error),
        };
        if let Err(error) = fs_err::remove_file(&data)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {error}", data.display());
        }
        script
    }
}

fn perf_missing(error: &std::io::Error) -> Option<Refusal> {
    (error.kind() == std::io::ErrorKind::NotFound).then(|| {
        Refusal::Internal(
            "perf is not installed on this machine: install it (Debian: apt-get install linux-perf; Ubuntu: apt-get install linux-tools-$(uname -r))"
                .to_owned(),
        )
    })
}

/// Runs `command` to its end within `limit`; its stdout, or why it failed with its stderr.
async fn run(
    mut command: tokio::process::Command,
    what: &str,
    limit: Duration,
) -> Result<Vec<u8>, Refusal> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = command.spawn().map_err(|error| {
        perf_missing(&error).unwrap_or_else(|| Refusal::Internal(format!("{what}: {error}")))
    })?;
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.map_err(|error| Refusal::Internal(format!("{what}: {error}")))?,
        Err(_) => {
            return Err(Refusal::Internal(format!(
                "{what} did not finish within {}",
                humantime::format_duration(limit)
            )));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(5).collect();
        let last: Vec<&str> = last.into_iter().rev().collect();
        return Err(Refusal::Internal(format!(
            "{what} failed ({}): {}",
            output.status,
            last.join(" / ")
        )));
    }
    Ok(output.stdout)
}

async fn record(
    data: &PathBuf,
    pid: u32,
    duration: Duration,
    frequency: u32,
) -> Result<(), Refusal> {
    let mut command = tokio::process::Command::new("perf");
    command
        .arg("record")
        .args(["-F", &frequency.to_string(), "-g", "-p", &pid.to_string(), "-o"])
        .arg(data)
        .args(["--", "sleep", &format!("{:.3}", duration.as_secs_f64())]);
    run(command, "perf record", duration + PERF_MARGIN).await.map(|_| ())
}

async fn script(data: &PathBuf) -> Result<Vec<u8>, Refusal> {
    let mut command = tokio::process::Command::new("perf");
    command.arg("script").arg("-i").arg(data);
    run(command, "perf script", PERF_MARGIN).await
}
