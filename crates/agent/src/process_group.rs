//! The binary's process group: signalling it, waiting for it to empty, and cleaning up after an
//! agent that could not.
//!
//! The binary leads its own group, so its children are in it too. The parent-death signal kills
//! the binary when the agent is killed with SIGKILL, but not the binary's children. So the agent
//! records the group in `<dir>/binary.pgid` while the binary runs, and at start it kills the
//! processes a previous agent left in that group. It kills only processes that are still in
//! that group *and* carry this machine's `FLOTILLA_TAG` and `FLOTILLA_NAME` in their
//! environment: the kernel does not reuse a group id while a member lives, and the environment
//! tells the binary's descendants from anything else.

use std::path::Path;

use rustix::process::{Pid, Signal};

use crate::instance_dir::{PRIVATE_FILE_MODE, write_file_atomically};

/// Sends `signal` to the process group led by `pid`; a group that is gone is not an error.
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    let Some(group) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    match rustix::process::kill_process_group(group, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(error) => tracing::warn!("could not signal process group {pid}: {error}"),
    }
}

/// Whether a process other than a zombie is in process group `group`. Zombies do not count:
/// they have ended, and only their parent (often init) can remove them.
pub(crate) fn has_live_members(group: u32) -> bool {
    match live_members(group) {
        Some(members) => !members.is_empty(),
        // Without /proc, ask the kernel whether the group exists at all (zombies included).
        None => i32::try_from(group)
            .ok()
            .and_then(Pid::from_raw)
            .is_some_and(|pid| rustix::process::test_kill_process_group(pid).is_ok()),
    }
}

/// The live (not zombie) processes of group `group`, read from /proc; `None` without /proc.
fn live_members(group: u32) -> Option<Vec<u32>> {
    let entries = fs_err::read_dir("/proc").ok()?;
    let members = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs_err::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name in parentheses: state, ppid, pgrp, …
            let Some((_, fields)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = fields.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let process_group = fields.nth(1).and_then(|field| field.parse::<u32>().ok());
            process_group == Some(group) && state != "Z" && state != "X"
        })
        .collect();
    Some(members)
}

/// Records the running binary's group in `file`.
pub(crate) fn record(file: &Path, group: u32) {
    let text = format!("{group}\n");
    if let Err(error) = write_file_atomically(file, text.as_bytes(), PRIVATE_FILE_MODE) {
        tracing::warn!("could not record the binary's process group: {error}");
    }
}

/// Forgets the recorded group (the binary was stopped and its group emptied).
pub(crate) fn forget(file: &Path) {
    match fs_err::remove_file(file) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("could not remove the binary's process group record: {error}");
        }
        _ => {}
    }
}

/// Kills (SIGKILL) what is left of the group recorded in `file` that belongs to this machine's
/// binary (see the module documentation), forgets the record, and returns the pids killed.
pub(crate) fn kill_leftovers(file: &Path, tag: &str, name: &str) -> Vec<u32> {
    let Some(group) = fs_err::read_to_string(file).ok().and_then(|t| t.trim().parse().ok()) else {
        forget(file);
        return Vec::new();
    };
    let markers = [format!("FLOTILLA_TAG={tag}"), format!("FLOTILLA_NAME={name}")];
    let ours = |pid: &u32| {
        let Ok(environment) = fs_err::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let variables: Vec<&[u8]> = environment.split(|&byte| byte == 0).collect();
        markers.iter().all(|marker| variables.contains(&marker.as_bytes()))
    };
    let killed: Vec<u32> =
        live_members(group).unwrap_or_default().into_iter().filter(ours).collect();
    for pid in &killed {
        if let Some(process) = i32::try_from(*pid).ok().and_then(Pid::from_raw) {
            // Gone in between is fine.
            let _ = rustix::process::kill_process(process, Signal::KILL);
        }
    }
    forget(file);
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_group_has_live_members() {
        let group = rustix::process::getpgrp().as_raw_pid() as u32;
        assert!(has_live_members(group));
        assert!(live_members(group).unwrap().contains(&std::process::id()));
        assert!(!has_live_members(u32::MAX - 1));
    }

    #[test]
    fn leftovers_are_only_processes_with_this_machines_environment() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("binary.pgid");
        // This test process is in the recorded group but lacks the markers: it survives.
        let group = rustix::process::getpgrp().as_raw_pid() as u32;
        record(&file, group);
        assert!(kill_leftovers(&file, "some-tag", "some-machine").is_empty());
        assert!(!file.exists());
        // A process that carries them, in its own group, is killed.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .env("FLOTILLA_TAG", "t9")
            .env("FLOTILLA_NAME", "n9")
            .process_group(0)
            .spawn()
            .unwrap();
        record(&file, child.id());
        assert_eq!(kill_leftovers(&file, "t9", "other"), Vec::<u32>::new());
        record(&file, child.id());
        assert_eq!(kill_leftovers(&file, "t9", "n9"), vec![child.id()]);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(9));
    }
}
