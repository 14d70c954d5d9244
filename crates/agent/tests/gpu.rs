//! GPU metrics: the agent process, with a stand-in `nvidia-smi` first on its `PATH`, exports
//! each GPU's utilization, memory and temperature as the stand-in prints them; a stand-in that
//! fails clears them and counts the failure; without `nvidia-smi` nothing GPU is exported.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Deployment, kill, wait_for_api, wait_for_exit};
use rustix::process::Signal;

/// The query the agent must make, checked by the stand-ins.
const CHECK_ARGUMENTS: &str = r#"if [ "$1" != "--query-gpu=index,uuid,utilization.gpu,memory.used,memory.total,temperature.gpu" ] || [ "$2" != "--format=csv,noheader,nounits" ] || [ $# -ne 2 ]; then
  echo "unexpected arguments: $*" >&2
  exit 2
fi
"#;

/// Writes `script` as `<dir>/nvidia-smi`, executable.
fn stand_in(dir: &Path, script: &str) {
    fs_err::create_dir_all(dir).expect("the stand-in's directory");
    let path = dir.join("nvidia-smi");
    fs_err::write(&path, format!("#!/bin/sh\n{CHECK_ARGUMENTS}{script}"))
        .expect("the stand-in is written");
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("the stand-in is made executable");
}

/// Starts the agent process with `path` as its `PATH`.
async fn agent_with_path(deployment: &Deployment, path: &str) -> Child {
    let bootstrap = deployment.temp.path().join("bootstrap.json");
    fs_err::write(
        &bootstrap,
        serde_json::to_vec(&deployment.bootstrap()).expect("a bootstrap serializes"),
    )
    .expect("the bootstrap is written");
    // Found on the test's PATH: the child's PATH would be searched otherwise.
    let setpriv = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("setpriv"))
        .find(|candidate| candidate.is_file())
        .expect("setpriv on PATH (util-linux: apt-get install util-linux)");
    let stderr = fs_err::File::create(deployment.temp.path().join("agent-stderr.txt"))
        .expect("a file for the agent's stderr");
    let mut agent = Command::new(setpriv)
        .args(["--pdeathsig", "KILL", "--"])
        .arg(common::agent_process_binary())
        .arg(&bootstrap)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.into_parts().0))
        .spawn()
        .expect("the agent process starts under setpriv");
    wait_for_api(deployment, &mut agent).await;
    agent
}

/// `bin` first, then the test's own `PATH`.
fn path_with(bin: &Path) -> String {
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// Scrapes until `done` holds for the metrics page; returns it. Panics after `common::WAIT`.
async fn metrics_when(deployment: &Deployment, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let page = deployment.metrics().await;
        if done(&page) {
            return page;
        }
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}; last page:\n{page}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_gpu_is_exported_as_nvidia_smi_reports_it() {
    let deployment = Deployment::new("127.200.12.2");
    let bin = deployment.temp.path().join("bin");
    stand_in(
        &bin,
        "printf '0, GPU-6f1e-aaaa, 45, 1024, 16384, 61\\n1, GPU-77b2-bbbb, [N/A], 81000, 81920, 77\\n'\n",
    );
    let mut agent = agent_with_path(&deployment, &path_with(&bin)).await;
    let page = metrics_when(&deployment, "the GPU gauges", |page| {
        page.contains("flotilla_gpu_temperature_celsius{")
    })
    .await;
    for expected in [
        "flotilla_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-6f1e-aaaa\"} 0.45\n",
        "flotilla_gpu_memory_used_bytes{gpu=\"0\",uuid=\"GPU-6f1e-aaaa\"} 1073741824.0\n",
        "flotilla_gpu_memory_total_bytes{gpu=\"0\",uuid=\"GPU-6f1e-aaaa\"} 17179869184.0\n",
        "flotilla_gpu_temperature_celsius{gpu=\"0\",uuid=\"GPU-6f1e-aaaa\"} 61.0\n",
        "flotilla_gpu_memory_used_bytes{gpu=\"1\",uuid=\"GPU-77b2-bbbb\"} 84934656000.0\n",
        "flotilla_gpu_memory_total_bytes{gpu=\"1\",uuid=\"GPU-77b2-bbbb\"} 85899345920.0\n",
        "flotilla_gpu_temperature_celsius{gpu=\"1\",uuid=\"GPU-77b2-bbbb\"} 77.0\n",
        "flotilla_gpu_reads_failed_total 0\n",
    ] {
        assert!(page.contains(expected), "{expected:?} missing from\n{page}");
    }
    // GPU 1 does not report its utilization: no series rather than a made-up value.
    assert!(!page.contains("flotilla_gpu_utilization_ratio{gpu=\"1\""), "{page}");
    kill(agent.id(), Signal::TERM);
    wait_for_exit(&mut agent).await;
}

#[tokio::test]
async fn a_failing_nvidia_smi_is_counted_and_exports_no_gpu() {
    let deployment = Deployment::new("127.200.12.3");
    let bin = deployment.temp.path().join("bin");
    stand_in(
        &bin,
        "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\" >&2\nexit 9\n",
    );
    let mut agent = agent_with_path(&deployment, &path_with(&bin)).await;
    let page = metrics_when(&deployment, "the failure to be counted", |page| {
        page.contains("flotilla_gpu_reads_failed_total 1\n")
    })
    .await;
    assert!(!page.contains("flotilla_gpu_utilization_ratio{"), "{page}");
    let stderr = common::agent_stderr(&deployment);
    assert!(stderr.contains("couldn't communicate with the NVIDIA driver"), "{stderr}");
    kill(agent.id(), Signal::TERM);
    wait_for_exit(&mut agent).await;
}

#[tokio::test]
async fn without_nvidia_smi_no_gpu_is_exported() {
    let deployment = Deployment::new("127.200.12.4");
    let empty = deployment.temp.path().join("bin");
    fs_err::create_dir_all(&empty).unwrap();
    // Only the empty directory: no `nvidia-smi`, even on a machine that has one.
    let mut agent = agent_with_path(&deployment, &empty.display().to_string()).await;
    let page = deployment.metrics().await;
    assert!(!page.contains("flotilla_gpu_utilization_ratio{"), "{page}");
    assert!(page.contains("flotilla_gpu_reads_failed_total 0\n"), "{page}");
    kill(agent.id(), Signal::TERM);
    wait_for_exit(&mut agent).await;
}
