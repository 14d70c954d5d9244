//! Agent processes: starting them detached, finding them again, ending them.
//!
//! An agent is recognised by its pid file *and* its command line (which names its bootstrap
//! file), so a recycled pid is never mistaken for an agent. The last sweep of `destroy` does not
//! trust pid files at all: it ends every process whose working directory lies under the
//! deployment's directory (agents run in their instance directory, binaries in its `work/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Starts `program agent --bootstrap <bootstrap>` in `dir`, output appended to `dir/agent.log`.
///
/// The agent makes itself a session leader at start (`setsid`), so it outlives this process and
/// a terminal's signals; this process does not wait for it.
pub fn spawn_agent(program: &Path, bootstrap: &Path, dir: &Path) -> std::io::Result<u32> {
    let log = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))?
        .into_parts()
        .0;
    let child = Command::new(program)
        .arg("agent")
        .arg("--bootstrap")
        .arg(bootstrap)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("starting agent {}: {e}", program.display()))
        })?;
    Ok(child.id())
}

/// The pid in `dir/agent.pid` if that process is alive and is the agent for `bootstrap`.
pub fn running_agent(dir: &Path, bootstrap: &Path) -> Option<u32> {
    let pid: u32 = fs_err::read_to_string(dir.join("agent.pid")).ok()?.trim().parse().ok()?;
    let cmdline = fs_err::read(format!("/proc/{pid}/cmdline")).ok()?;
    let bootstrap = bootstrap.as_os_str().as_encoded_bytes();
    let is_agent = cmdline.split(|b| *b == 0).any(|arg| arg == bootstrap);
    (is_agent && !is_zombie(pid)).then_some(pid)
}

fn is_zombie(pid: u32) -> bool {
    fs_err::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

/// Whether process `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Sends SIGTERM to each pid, waits up to `grace` for all to exit, then SIGKILLs the rest.
/// Returns the pids that had to be killed.
pub fn terminate(pids: &[u32], grace: Duration) -> Vec<u32> {
    for pid in pids {
        signal(*pid, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    let mut delay = Duration::from_millis(10);
    while Instant::now() < deadline && pids.iter().any(|pid| is_alive(*pid)) {
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
    let stubborn: Vec<u32> = pids.iter().copied().filter(|pid| is_alive(*pid)).collect();
    for pid in &stubborn {
        signal(*pid, Signal::KILL);
    }
    stubborn
}

/// Every live process whose working directory is `root` or under it.
pub fn processes_under(root: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs_err::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            (cwd.starts_with(root) && !is_zombie(pid)).then_some((pid, cwd))
        })
        .collect()
}

/// SIGKILLs every process under `root` until none is left (bounded), returning what was found.
pub fn kill_all_under(root: &Path) -> Vec<(u32, PathBuf)> {
    let mut killed = Vec::new();
    for _ in 0..50 {
        let found = processes_under(root);
        if found.is_empty() {
            break;
        }
        for (pid, _) in &found {
            signal(*pid, Signal::KILL);
        }
        killed.extend(found);
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}
