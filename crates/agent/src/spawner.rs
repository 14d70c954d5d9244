//! Starting the binary so that it cannot outlive the agent.
//!
//! The binary gets its own process group (so that a stop reaches its children too) and the
//! parent-death signal SIGKILL, so that it dies when the agent is killed with SIGKILL and has no
//! chance to stop it. Setting that signal in the child between fork and exec takes `pre_exec`,
//! which is `unsafe`, and flotilla denies `unsafe_code`; so the agent starts the binary through
//! util-linux's `setpriv --pdeathsig KILL --`, which sets it and then execs the binary (same
//! pid, so the binary is still the agent's child and its group's leader). Without `setpriv` the
//! binary starts without a parent-death signal, and the agent says so in the binary's log.
//!
//! The kernel sends the parent-death signal when the *thread* that forked the child exits, not
//! when the process does. So every child is forked by one dedicated thread that lives exactly
//! as long as the agent; a `spawn_blocking` thread or a runtime worker would end (and kill the
//! binary) whenever the runtime retires it.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// Where `setpriv` is looked for, in order.
const SETPRIV_LOCATIONS: [&str; 3] = ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"];

/// What to run: program, arguments, working directory and extra environment.
#[derive(Clone, Debug)]
pub(crate) struct ProcessSpec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
    /// Added to (and overriding) the agent's own environment, in order.
    pub(crate) env: Vec<(OsString, OsString)>,
}

struct SpawnRequest {
    command: std::process::Command,
    reply: oneshot::Sender<io::Result<tokio::process::Child>>,
}

/// The handle to the spawner thread. The thread ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
    setpriv: Option<PathBuf>,
}

impl Spawner {
    /// Starts the spawner thread; children are registered with `runtime`, which reaps them.
    pub(crate) fn start(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (requests, receiver) = mpsc::channel::<SpawnRequest>();
        // This thread forks every child and must live as long as the agent: the kernel sends a
        // child its parent-death signal when the thread that forked it exits. It ends only when
        // the supervisor (the only sender) is gone, after the binary was stopped.
        std::thread::Builder::new()
            .name("flotilla-spawner".to_owned())
            .stack_size(256 * 1024)
            .spawn(move || {
                for request in receiver {
                    // tokio registers the child with the runtime's process driver, which must
                    // be entered on this thread.
                    let _runtime = runtime.enter();
                    let child = tokio::process::Command::from(request.command).spawn();
                    // The requester may have gone away (agent shutting down): the child is
                    // then reaped by the runtime and killed when this thread ends.
                    let _ = request.reply.send(child);
                }
            })?;
        let setpriv = SETPRIV_LOCATIONS.iter().map(Path::new).find(|path| path.is_file());
        Ok(Spawner { requests, setpriv: setpriv.map(Path::to_path_buf) })
    }

    /// Whether children get a parent-death signal.
    pub(crate) fn has_parent_death_signal(&self) -> bool {
        self.setpriv.is_some()
    }

    /// Starts `spec` in its own process group, stdin from /dev/null, stdout and stderr piped.
    pub(crate) async fn spawn(&self, spec: &ProcessSpec) -> io::Result<tokio::process::Child> {
        let mut command = match &self.setpriv {
            Some(setpriv) => {
                let mut command = std::process::Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--"]).arg(&spec.program);
                command
            }
            None => std::process::Command::new(&spec.program),
        };
        command
            .args(&spec.args)
            .current_dir(&spec.cwd)
            .envs(spec.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(SpawnRequest { command, reply })
            .map_err(|_| io::Error::other("the spawner thread has ended"))?;
        answer.await.map_err(|_| io::Error::other("the spawner thread has ended"))?
    }
}
