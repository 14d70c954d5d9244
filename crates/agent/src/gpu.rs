//! GPU metrics: on a machine where `nvidia-smi` is on `PATH`, the agent reads every GPU's
//! utilization, memory and temperature from it every [`GPU_POLL`] and exports them as gauges
//! (`flotilla_gpu_*`, see `metrics`).
//!
//! The query is `nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used,memory.total,
//! temperature.gpu --format=csv,noheader,nounits`: one CSV row per GPU, utilization in percent,
//! memory in MiB, temperature in °C; a value the GPU does not report (`[N/A]`, `[Not
//! Supported]`) leaves its gauge out. Where `nvidia-smi` does not exist the poller ends at its
//! first try and nothing is exported; a run that fails, takes longer than [`GPU_QUERY_TIMEOUT`]
//! or prints what does not parse clears the gauges and counts a failure, and the next poll
//! tries again.

use std::ffi::OsString;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::{AgentMetrics, GpuSample};

/// How often the GPUs are read (Prometheus scrapes every 15 s).
pub(crate) const GPU_POLL: Duration = Duration::from_secs(15);
/// The longest one `nvidia-smi` run may take.
pub(crate) const GPU_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The program asked, found on `PATH`.
pub(crate) const NVIDIA_SMI: &str = "nvidia-smi";
/// Its arguments.
pub(crate) const QUERY_ARGS: [&str; 2] = [
    "--query-gpu=index,uuid,utilization.gpu,memory.used,memory.total,temperature.gpu",
    "--format=csv,noheader,nounits",
];

const MIB: f64 = 1024.0 * 1024.0;

/// Why a read of the GPUs failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GpuReadError {
    #[error("{program} is not on PATH")]
    Missing { program: String },
    #[error("could not run {program}: {source}")]
    Run { program: String, source: io::Error },
    #[error("{program} did not answer within {GPU_QUERY_TIMEOUT:?}")]
    Timeout { program: String },
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: String, status: std::process::ExitStatus, stderr: String },
    #[error("{program} printed a line that does not parse: {line:?}: {reason}")]
    Parse { program: String, line: String, reason: String },
}

/// Reads the GPUs every [`GPU_POLL`] with `program` (the agent's is [`NVIDIA_SMI`]) into
/// `metrics` until `stop` turns true, or at once when `program` does not exist.
pub(crate) async fn poll_gpus(
    program: OsString,
    metrics: Arc<AgentMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        match read_gpus(&program).await {
            Ok(samples) => {
                if failing {
                    tracing::info!("gpu: {} answers again", program.to_string_lossy());
                }
                failing = false;
                metrics.set_gpus(&samples);
            }
            Err(GpuReadError::Missing { .. }) => return,
            Err(error) => {
                // Said once per run of failures, not every poll.
                if !failing {
                    tracing::warn!("gpu: {error}");
                }
                failing = true;
                metrics.gpu_read_failed();
            }
        }
        tokio::select! {
            () = tokio::time::sleep(GPU_POLL) => {}
            _ = crate::shutdown_signalled(&mut stop) => return,
        }
    }
}

/// Runs `program` with [`QUERY_ARGS`] once and parses what it prints.
pub(crate) async fn read_gpus(program: &std::ffi::OsStr) -> Result<Vec<GpuSample>, GpuReadError> {
    let name = program.to_string_lossy().into_owned();
    let run = tokio::process::Command::new(program)
        .args(QUERY_ARGS)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(GPU_QUERY_TIMEOUT, run).await {
        Err(_) => return Err(GpuReadError::Timeout { program: name }),
        Ok(Err(source)) if source.kind() == io::ErrorKind::NotFound => {
            return Err(GpuReadError::Missing { program: name });
        }
        Ok(Err(source)) => return Err(GpuReadError::Run { program: name, source }),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim().chars().take(500).collect();
        return Err(GpuReadError::Failed { program: name, status: output.status, stderr });
    }
    parse_query(&output.stdout).map_err(|(line, reason)| GpuReadError::Parse {
        program: name,
        line,
        reason,
    })
}

/// The GPUs in `nvidia-smi --query-gpu=… --format=csv,noheader,nounits` output; a row that
/// does not parse is an error with the row and why.
pub(crate) fn parse_query(output: &[u8]) -> Result<Vec<GpuSample>, (String, String)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(output);
    let mut samples = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| (String::new(), error.to_string()))?;
        let row = record.iter().collect::<Vec<_>>().join(", ");
        let [index, uuid, utilization, used, total, temperature] =
            record.iter().collect::<Vec<_>>()[..]
        else {
            return Err((row, format!("{} fields, not 6", record.len())));
        };
        let index = index.parse().map_err(|_| (row.clone(), format!("index {index:?}")))?;
        let number = |field: &str, what: &str| -> Result<Option<f64>, (String, String)> {
            if field.starts_with('[') {
                // `[N/A]`, `[Not Supported]`: not reported by this GPU.
                return Ok(None);
            }
            match field.parse::<f64>() {
                Ok(value) if value.is_finite() => Ok(Some(value)),
                _ => Err((row.clone(), format!("{what} {field:?}"))),
            }
        };
        samples.push(GpuSample {
            index,
            uuid: uuid.to_owned(),
            utilization: number(utilization, "utilization")?.map(|percent| percent / 100.0),
            memory_used_bytes: number(used, "memory.used")?.map(|mib| mib * MIB),
            memory_total_bytes: number(total, "memory.total")?.map(|mib| mib * MIB),
            temperature_celsius: number(temperature, "temperature")?,
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_samples_in_units_of_their_own() {
        let output = b"0, GPU-aaaa-1111, 45, 1024, 16384, 61\n1, GPU-bbbb-2222, [N/A], 0, 81920, [Not Supported]\n";
        let samples = parse_query(output).unwrap();
        assert_eq!(
            samples,
            [
                GpuSample {
                    index: 0,
                    uuid: "GPU-aaaa-1111".into(),
                    utilization: Some(0.45),
                    memory_used_bytes: Some(1024.0 * MIB),
                    memory_total_bytes: Some(16384.0 * MIB),
                    temperature_celsius: Some(61.0),
                },
                GpuSample {
                    index: 1,
                    uuid: "GPU-bbbb-2222".into(),
                    utilization: None,
                    memory_used_bytes: Some(0.0),
                    memory_total_bytes: Some(81920.0 * MIB),
                    temperature_celsius: None,
                },
            ]
        );
        assert_eq!(parse_query(b"").unwrap(), []);
    }

    #[test]
    fn rows_that_do_not_parse_are_errors_naming_them() {
        let (row, reason) = parse_query(b"0, GPU-a, 45, 1024\n").unwrap_err();
        assert_eq!((row.as_str(), reason.as_str()), ("0, GPU-a, 45, 1024", "4 fields, not 6"));
        let (_, reason) = parse_query(b"x, GPU-a, 45, 1024, 2048, 50\n").unwrap_err();
        assert_eq!(reason, "index \"x\"");
        let (_, reason) = parse_query(b"0, GPU-a, lots, 1024, 2048, 50\n").unwrap_err();
        assert_eq!(reason, "utilization \"lots\"");
    }
}
