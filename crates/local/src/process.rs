//! Agent processes: starting them detached, finding them again, ending them.
//!
//! An agent is recognised by its command line, which names its bootstrap file inside the
//! deployment's directory, and by its owner, this user: a recycled pid, another user's process
//! or a program that merely works in the deployment's directories (a shell, `tail -f` on a log)
//! is never mistaken for one. Each agent leads its own session (it calls `setsid` first thing),
//! and the binaries it starts stay in that session, so `destroy` ends exactly the sessions of
//! the deployment's agents; binaries a killed agent left behind are found by the environment
//! the agent gave them (`FLOTILLA_TAG` of this deployment) together with their working
//! directory under the deployment's.
//!
//! Agents start with a cleared environment plus [`INHERITED_VARIABLES`]: nothing else of the
//! operator's shell (credentials, `FLOTILLA_HOME` with the deployment's CA key, `RUST_LOG`)
//! reaches them or the binaries they run; the spec's `env` is the way to give a binary more.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The variables of the operator's environment an agent (and so the binary) keeps: what
/// programs need to find tools, their user and their locale.
pub const INHERITED_VARIABLES: &[&str] =
    &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"];

/// Whether the variable `name` is passed to agents: [`INHERITED_VARIABLES`] and the locale's
/// `LC_*`.
pub fn is_inherited(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    INHERITED_VARIABLES.contains(&name.as_ref()) || name.starts_with("LC_")
}

/// Starts `program agent --bootstrap <bootstrap>` in `dir` with only the inherited variables of
/// this process's environment; the agent's early output (before it opens its own log) goes to
/// `output`.
///
/// The agent makes itself a session leader at start (`setsid`), so it outlives this process and
/// a terminal's signals; this process does not wait for it.
pub fn spawn_agent(
    program: &Path,
    bootstrap: &Path,
    dir: &Path,
    output: fs_err::File,
) -> std::io::Result<u32> {
    let environment: Vec<(OsString, OsString)> =
        std::env::vars_os().filter(|(name, _)| is_inherited(name)).collect();
    let child = Command::new(program)
        .arg("agent")
        .arg("--bootstrap")
        .arg(bootstrap)
        .current_dir(dir)
        .env_clear()
        .envs(environment)
        .stdin(Stdio::null())
        .stdout(Stdio::from(output.try_clone()?.into_parts().0))
        .stderr(Stdio::from(output.into_parts().0))
        .spawn()
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("starting agent {}: {e}", program.display()))
        })?;
    Ok(child.id())
}

/// What /proc says about one process of this user.
#[derive(Debug)]
struct ProcessInfo {
    pid: u32,
    session: u32,
    cwd: Option<PathBuf>,
    cmdline: Vec<Vec<u8>>,
}

fn own_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The process `pid` when it is alive (not a zombie) and this user's.
fn read_process(pid: u32) -> Option<ProcessInfo> {
    use std::os::unix::fs::MetadataExt;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if fs_err::metadata(&proc_dir).ok()?.uid() != own_uid() {
        return None;
    }
    let stat = fs_err::read_to_string(proc_dir.join("stat")).ok()?;
    // After the command name in parentheses: state, ppid, pgrp, session, …
    let (_, fields) = stat.rsplit_once(')')?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let session = fields.nth(2)?.parse().ok()?;
    let cmdline = fs_err::read(proc_dir.join("cmdline")).unwrap_or_default();
    Some(ProcessInfo {
        pid,
        session,
        cwd: std::fs::read_link(proc_dir.join("cwd")).ok(),
        cmdline: cmdline.split(|b| *b == 0).map(<[u8]>::to_vec).collect(),
    })
}

/// Every live process of this user, except this one.
fn own_processes() -> Vec<ProcessInfo> {
    let Ok(entries) = fs_err::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(read_process)
        .collect()
}

/// The bootstrap file a process was started with as an agent (`… agent --bootstrap FILE`).
fn agent_bootstrap(info: &ProcessInfo) -> Option<&[u8]> {
    let agent = info.cmdline.iter().position(|arg| arg == b"agent")?;
    let flag = info.cmdline.get(agent + 1)?;
    (flag == b"--bootstrap").then(|| info.cmdline.get(agent + 2).map(Vec::as_slice))?
}

/// The pid in `dir/agent.pid` if that process is alive, this user's, and the agent for
/// `bootstrap`.
pub fn running_agent(dir: &Path, bootstrap: &Path) -> Option<u32> {
    let pid: u32 = fs_err::read_to_string(dir.join("agent.pid")).ok()?.trim().parse().ok()?;
    let info = read_process(pid)?;
    (agent_bootstrap(&info)? == bootstrap.as_os_str().as_encoded_bytes()).then_some(pid)
}

/// Every agent of this user whose bootstrap file lies under `root`, found from /proc alone (so
/// it works when pid files or records are lost).
pub fn agents_under(root: &Path) -> Vec<u32> {
    own_processes()
        .into_iter()
        .filter(|info| agent_bootstrap_under(info, root).is_some())
        .map(|info| info.pid)
        .collect()
}

/// The bootstrap files of the running agents of this user under `root`.
pub fn agent_bootstraps_under(root: &Path) -> std::collections::HashSet<PathBuf> {
    own_processes()
        .iter()
        .filter_map(|info| agent_bootstrap_under(info, root).map(Path::to_path_buf))
        .collect()
}

/// The bootstrap file of `info` when it is an agent whose bootstrap lies under `root`.
fn agent_bootstrap_under<'a>(info: &'a ProcessInfo, root: &Path) -> Option<&'a Path> {
    let bootstrap = Path::new(OsStr::from_bytes(agent_bootstrap(info)?));
    bootstrap.starts_with(root).then_some(bootstrap)
}

/// Whether process `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match fs_err::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])),
        Err(_) => false,
    }
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

/// Whether `info` is something flotilla started for the deployment at `root` (tag `tag`): a
/// member of one of the agents' `sessions`, or a process the deployment's binaries left behind
/// (this deployment's `FLOTILLA_TAG` in its environment, working under `root`).
fn started_by_flotilla(info: &ProcessInfo, root: &Path, tag: &str, sessions: &[u32]) -> bool {
    if info.session != 0 && sessions.contains(&info.session) {
        return true;
    }
    if !info.cwd.as_deref().is_some_and(|cwd| cwd.starts_with(root)) {
        return false;
    }
    let Ok(environment) = fs_err::read(format!("/proc/{}/environ", info.pid)) else {
        return false;
    };
    let wanted = format!("FLOTILLA_TAG={tag}");
    environment.split(|b| *b == 0).any(|entry| entry == wanted.as_bytes())
}

/// SIGKILLs what is left of the deployment at `root` once its agents were told to stop: the
/// members of the agents' `sessions` (their binaries and the binaries' children) and the
/// leftovers [`started_by_flotilla`] recognises, until none is left (bounded). Returns what
/// was killed.
pub fn kill_leftovers(root: &Path, tag: &str, sessions: &[u32]) -> Vec<u32> {
    let mut killed = Vec::new();
    for _ in 0..50 {
        let found: Vec<u32> = own_processes()
            .into_iter()
            .filter(|info| {
                started_by_flotilla(info, root, tag, sessions)
                    || agent_bootstrap_under(info, root).is_some()
            })
            .map(|info| info.pid)
            .collect();
        if found.is_empty() {
            break;
        }
        for pid in &found {
            signal(*pid, Signal::KILL);
        }
        killed.extend(found);
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.sort_unstable();
    killed.dedup();
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allowlisted_variables_reach_agents() {
        for kept in ["PATH", "HOME", "LANG", "LC_ALL", "LC_MESSAGES", "TZ"] {
            assert!(is_inherited(OsStr::new(kept)), "{kept}");
        }
        for dropped in [
            "FLOTILLA_HOME",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "RUST_LOG",
            "SSH_AUTH_SOCK",
            "MY_TOKEN",
            "LD_PRELOAD",
        ] {
            assert!(!is_inherited(OsStr::new(dropped)), "{dropped}");
        }
    }

    #[test]
    fn a_session_leader_is_read_from_proc_with_its_session() {
        // An agent leads its own session, as `setsid` makes this child do; /proc must show the
        // session as the leader's own pid. (The test process's own session may read 0: a
        // session led from outside this PID namespace, as in a container's runner, does.)
        let mut child = std::process::Command::new("setsid")
            .args(["sleep", "30"])
            .spawn()
            .expect("setsid (util-linux) must be installed");
        let pid = child.id();
        let mut info = None;
        for _ in 0..200 {
            info = read_process(pid).filter(|info| {
                info.cmdline.first().map(Vec::as_slice) == Some(b"sleep".as_slice())
            });
            if info.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        let info = info.expect("the child is readable once it runs sleep");
        assert_eq!(info.session, pid);
        assert_eq!(info.pid, pid);
    }

    #[test]
    fn session_zero_is_never_an_agents_session() {
        // A process of a session led from outside this PID namespace reads session 0; a list of
        // agent sessions that (wrongly) held 0 must not make it ours.
        let info = ProcessInfo { pid: 1, session: 0, cwd: None, cmdline: vec!["sh".into()] };
        assert!(!started_by_flotilla(&info, Path::new("/nonexistent"), "t", &[0]));
    }
}
