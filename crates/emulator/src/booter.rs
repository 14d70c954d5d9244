//! The booter: makes the instances moto reports running behave like machines.
//!
//! Every [`POLL_INTERVAL`] it asks moto for `GET /_flotilla/instances` (only when something
//! changed: the listing carries a generation). For an instance that is `running`, has a public
//! IP and is not booted yet, it
//!
//! 1. starts an IMDS emulator ([`crate::imds`]) on `<public ip>:1338`;
//! 2. prepares `<state>/instances/<id>/root` (kept across stop and start, like a root volume);
//! 3. runs the decoded user data with `/bin/sh` in its own process group, under
//!    `setpriv --pdeathsig KILL` when util-linux has it (so it dies with this process, even
//!    killed with -9), output appended to `<root>/var/log/cloud-init-output.log`, with a clean
//!    environment holding only the contract of [`crate::env::user_data`], `PATH`
//!    (`<root>/usr/local/bin` first) and `RUST_LOG` when set. Only user data that starts with
//!    `#!` is a script, as cloud-init decides ([`is_script`]): anything else (an ec2fleetd
//!    config for `flotilla fleetd`, a `#cloud-config`) is only served by the instance's IMDS,
//!    and the instance runs with nothing started (`Exited`, no pid), as cloud-init leaves a
//!    machine whose user data it has no handler for. An instance of an image tagged
//!    `flotilla-emulator:boot=none` ([`ImageBoot::None`]) runs nothing either, whatever its
//!    user data: it models an image without cloud-init, which boots and never starts an agent.
//!
//! An instance that cannot be booted (its agent's or IMDS port is taken on its address, its
//! user data is not base64, its root cannot be prepared, `/bin/sh` cannot start), or whose
//! user data ends with a failure while it runs (the script, or the agent it exec'd: with
//! `FLOTILLA_SERVICE=foreground` nothing would restart it), is ended in moto through
//! `POST /_flotilla/instances/{id}/terminate`, with the StateReason
//! [`StateReason::boot_failure`] (`Server.InternalError: flotilla-emulator: <cause>`), so a
//! caller waiting for it sees why at its next DescribeInstances instead of waiting to its
//! deadline. The booter's own report keeps the cause in `error`. A script that exits 0 leaves
//! the instance running, as cloud-init does.
//!
//! With every listing that changed, the booter also keeps the NVMe device files of each booted
//! instance's EBS volumes under its root ([`crate::devices`]): made when an attachment is
//! `attached`, removed when it starts detaching.
//!
//! When the instance leaves `running` (shutting-down, stopping, stopped, terminated) or
//! disappears, it closes that IMDS and stops the process group: SIGTERM, SIGKILL after the
//! grace period, then SIGKILL to anything still running in, or started for, that root (a
//! process that left the group). Each boot runs the user data again: on AWS cloud-init runs it
//! once and systemd restarts the agent, which `FLOTILLA_SERVICE=foreground` leaves to us.

use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fs_err::os::unix::fs::OpenOptionsExt;
use rustix::process::{Pid, Signal};
use std::os::unix::fs::DirBuilderExt;
use tokio::process::Command;
use tokio::sync::watch;

use crate::addresses::AGENT_PORTS;
use crate::control::{ControlError, Emulator};
use crate::devices::Devices;
use crate::env::user_data as contract;
use crate::imds::{IMDS_PORT, Imds, InstanceImds};
use crate::instance::{
    BootState, BootedInstance, ImageBoot, InstanceInfo, InstanceListing, StateReason,
};

/// How often moto is asked for its instances.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// States in which an instance's processes must not run.
const DOWN_STATES: [&str; 4] = ["shutting-down", "stopping", "stopped", "terminated"];
/// Telling moto that an instance cannot boot: 5 attempts, 100 ms apart doubling (1.5 s in
/// all); moto answers at once unless it is gone, and then the stack stops anyway.
const REPORT_ATTEMPTS: u32 = 5;
const REPORT_FIRST_RETRY: Duration = Duration::from_millis(100);
/// How much of the user data's last output line goes into a StateReason.
const LAST_LINE_CHARS: usize = 300;

/// Why an instance cannot boot; shown after `cannot boot: `.
#[derive(Debug, thiserror::Error)]
enum BootError {
    #[error("address {address} is in use")]
    InUse { address: SocketAddrV4 },
    #[error("cannot bind {address}: {source}")]
    Bind { address: SocketAddrV4, source: std::io::Error },
    #[error("preparing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("its user data is not valid base64")]
    UserData,
    #[error("starting its user data with /bin/sh: {0}")]
    Spawn(std::io::Error),
}

/// What the booter is told at start.
#[derive(Debug)]
pub(crate) struct BooterConfig {
    /// moto's base URL: the listing, and `FLOTILLA_S3_ENDPOINT`.
    pub(crate) moto_url: String,
    /// `<state>/instances`.
    pub(crate) instances_dir: PathBuf,
    pub(crate) agent_seed: Option<PathBuf>,
    /// SIGTERM to SIGKILL.
    pub(crate) stop_grace: Duration,
    /// util-linux `setpriv`, when installed.
    pub(crate) setpriv: Option<PathBuf>,
    /// This process's PATH, which instances get after their own `usr/local/bin`.
    pub(crate) path: String,
}

/// The booter's state, shared with its control API.
#[derive(Debug)]
pub(crate) struct Booter {
    pub(crate) config: BooterConfig,
    http: reqwest::Client,
    /// moto's control API (only its routes are used).
    moto: Emulator,
    machines: Mutex<BTreeMap<String, Machine>>,
    seed_disabled: Mutex<BTreeSet<String>>,
    /// The seed's SHA-256, with the modification time and size it was computed for.
    seed_digest: Mutex<Option<(std::time::SystemTime, u64, String)>>,
    /// Set when a stop finished: the next poll reads the whole listing again.
    relist: AtomicBool,
    /// The device files of each booted instance's volumes.
    devices: Mutex<BTreeMap<String, Devices>>,
}

#[derive(Debug)]
struct Machine {
    report: BootedInstance,
    imds: Arc<InstanceImds>,
    imds_shutdown: Option<watch::Sender<bool>>,
}

/// What booting started: the IMDS, its off switch, and the user-data script's pid, if any.
#[derive(Debug)]
struct Started {
    imds: Arc<InstanceImds>,
    imds_shutdown: watch::Sender<bool>,
    pid: Option<u32>,
}

impl Machine {
    fn is_up(&self) -> bool {
        matches!(self.report.state, BootState::Running | BootState::Exited)
    }
}

impl Booter {
    pub(crate) fn new(config: BooterConfig, http: reqwest::Client) -> Booter {
        Booter {
            moto: Emulator::with_client(http.clone(), &config.moto_url, ""),
            http,
            config,
            machines: Mutex::new(BTreeMap::new()),
            seed_disabled: Mutex::new(BTreeSet::new()),
            seed_digest: Mutex::new(None),
            relist: AtomicBool::new(false),
            devices: Mutex::new(BTreeMap::new()),
        }
    }

    /// The seed's SHA-256, computed once per build of it: a hundred instances booting at once
    /// would otherwise each hash the same large file, which a real fleet does on a hundred CPUs.
    fn seed_digest(&self, seed: &std::path::Path) -> Option<String> {
        let metadata = fs_err::metadata(seed).ok()?;
        let (modified, size) = (metadata.modified().ok()?, metadata.len());
        let mut cached = self.seed_digest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, bytes, digest)) = cached.as_ref()
            && *at == modified
            && *bytes == size
        {
            return Some(digest.clone());
        }
        let mut file = fs_err::File::open(seed).ok()?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = std::io::Read::read(&mut file, &mut buffer).ok()?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let digest = hex::encode(hasher.finalize());
        *cached = Some((modified, size, digest.clone()));
        Some(digest)
    }

    fn machines(&self) -> MutexGuard<'_, BTreeMap<String, Machine>> {
        self.machines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every instance booted so far, in id order.
    pub(crate) fn booted(&self) -> Vec<BootedInstance> {
        self.machines().values().map(|m| m.report.clone()).collect()
    }

    /// The IMDS of a booted instance (kept after it stopped, so triggers can still be cleared).
    pub(crate) fn imds(&self, id: &str) -> Option<Arc<InstanceImds>> {
        self.machines().get(id).map(|m| m.imds.clone())
    }

    pub(crate) fn agent_seed_enabled(&self, scope: &str) -> bool {
        !self.seed_disabled.lock().unwrap_or_else(PoisonError::into_inner).contains(scope)
    }

    pub(crate) fn set_agent_seed(&self, scope: &str, enabled: bool) {
        let mut disabled = self.seed_disabled.lock().unwrap_or_else(PoisonError::into_inner);
        if enabled {
            disabled.remove(scope);
        } else {
            disabled.insert(scope.to_owned());
        }
    }

    /// Polls moto until `shutdown` turns true.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut generation: Option<u64> = None;
        let mut last_error = String::new();
        loop {
            if self.relist.swap(false, Ordering::SeqCst) {
                generation = None;
            }
            match self.fetch(generation).await {
                Ok(listing) => {
                    last_error.clear();
                    if !listing.unchanged {
                        generation = Some(listing.generation);
                        self.reconcile(listing.instances);
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    if text != last_error {
                        tracing::warn!("reading moto's instances: {text}");
                        last_error = text;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn fetch(&self, since: Option<u64>) -> reqwest::Result<InstanceListing> {
        let mut url = format!("{}/_flotilla/instances", self.config.moto_url);
        if let Some(since) = since {
            url.push_str(&format!("?since={since}"));
        }
        self.http.get(url).send().await?.error_for_status()?.json().await
    }

    fn reconcile(self: &Arc<Self>, instances: Vec<InstanceInfo>) {
        let mut to_boot = Vec::new();
        let mut to_stop = Vec::new();
        {
            let machines = self.machines();
            for instance in &instances {
                let machine = machines.get(&instance.id);
                if let Some(machine) = machine {
                    machine.imds.source().update(instance.clone());
                }
                let up = machine.is_some_and(Machine::is_up);
                if instance.state == "running" && !up {
                    let Some(ip) = instance.public_ip else { continue };
                    let failed_here = machine.is_some_and(|m| {
                        m.report.state == BootState::Failed && m.report.public_ip == ip
                    });
                    let stopping = machine.is_some_and(|m| m.report.state == BootState::Stopping);
                    if !failed_here && !stopping {
                        to_boot.push(instance.clone());
                    }
                } else if up && DOWN_STATES.contains(&instance.state.as_str()) {
                    to_stop.push(instance.id.clone());
                }
            }
            let listed: BTreeSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
            for (id, machine) in machines.iter() {
                if machine.is_up() && !listed.contains(id.as_str()) {
                    to_stop.push(id.clone());
                }
            }
        }
        for instance in to_boot {
            self.boot(instance);
        }
        for id in to_stop {
            tokio::spawn(self.clone().stop(id));
        }
        self.sync_devices(&instances);
    }

    /// The device files of each booted instance's volumes, as the listing reports them.
    fn sync_devices(&self, instances: &[InstanceInfo]) {
        let booted: BTreeSet<String> = self.machines().keys().cloned().collect();
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        for instance in instances.iter().filter(|i| booted.contains(&i.id)) {
            let root = self.config.instances_dir.join(&instance.id).join("root");
            let files = devices.entry(instance.id.clone()).or_default();
            if let Err(error) = files.sync(&root, &instance.volumes) {
                tracing::warn!(instance = %instance.id, "volume device files: {error}");
            }
        }
    }

    fn boot(self: &Arc<Self>, instance: InstanceInfo) {
        let Some(ip) = instance.public_ip else { return };
        let root = self.config.instances_dir.join(&instance.id).join("root");
        let imds = Arc::new(Imds::serve(instance.clone(), None));
        let mut report = BootedInstance {
            id: instance.id.clone(),
            scope: instance.scope.clone(),
            public_ip: ip,
            pid: None,
            imds_endpoint: format!("http://{ip}:{IMDS_PORT}"),
            root: root.clone(),
            state: BootState::Failed,
            exit_code: None,
            error: None,
        };
        let mut imds_shutdown = None;
        match self.start(&instance, ip, &root) {
            Ok(Started { imds: started_imds, imds_shutdown: shutdown, pid }) => {
                report.pid = pid;
                report.state = if pid.is_some() { BootState::Running } else { BootState::Exited };
                imds_shutdown = Some(shutdown);
                tracing::info!(
                    instance = %instance.id, scope = %instance.scope, address = %ip,
                    pid = ?pid, "booted"
                );
                self.machines().insert(
                    instance.id.clone(),
                    Machine { report, imds: started_imds, imds_shutdown },
                );
            }
            Err(error) => {
                let cause = format!("cannot boot: {error}");
                tracing::warn!(instance = %instance.id, "{cause}");
                report.error = Some(cause.clone());
                self.machines()
                    .insert(instance.id.clone(), Machine { report, imds, imds_shutdown });
                tokio::spawn(self.clone().end_in_moto(instance.id.clone(), cause));
            }
        }
    }

    /// Ends instance `id` in moto with [`StateReason::boot_failure`]`(cause)`, so whoever waits
    /// for it learns why; retried on the schedule of [`REPORT_ATTEMPTS`].
    async fn end_in_moto(self: Arc<Self>, id: String, cause: String) {
        let reason = StateReason::boot_failure(&cause);
        let mut delay = REPORT_FIRST_RETRY;
        for attempt in 1..=REPORT_ATTEMPTS {
            match self.moto.terminate_instance(&id, &reason).await {
                Ok(instance) => {
                    tracing::info!(instance = %id, state = %instance.state, "ended: {}", reason.message);
                    return;
                }
                // Gone already (a /moto-api/reset): nobody waits for it.
                Err(ControlError::Status { status: 404, .. }) => return,
                Err(error) if attempt == REPORT_ATTEMPTS => {
                    tracing::warn!(instance = %id, "telling moto it cannot boot ({cause}): {error}");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// IMDS, root directory and user data; the pid when there was a script to run.
    fn start(
        self: &Arc<Self>,
        instance: &InstanceInfo,
        ip: Ipv4Addr,
        root: &Path,
    ) -> Result<Started, BootError> {
        let user_data = match instance.user_data.as_deref().filter(|u| !u.is_empty()) {
            Some(encoded) => Some(decode_base64(encoded).ok_or(BootError::UserData)?),
            None => None,
        };
        let dir = root.parent().unwrap_or(root);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BootError::Io { path, source }
        };
        let log_dir = root.join("var").join("log");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&log_dir)
            .map_err(io(&log_dir))?;
        // moto probed these when it handed the address out; something may have taken one since.
        for port in AGENT_PORTS {
            let address = SocketAddrV4::new(ip, port);
            std::net::TcpListener::bind(address).map_err(bind_error(address))?;
        }
        let address = SocketAddrV4::new(ip, IMDS_PORT);
        let listener = std::net::TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(bind_error(address))?;
        let imds = Arc::new(Imds::serve(instance.clone(), user_data.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(flotilla_agent::imds_server::serve(listener, imds.clone(), shutdown_rx));
        let runs_user_data = instance.image_boot == ImageBoot::CloudInit;
        let Some(script) = user_data.filter(|data| runs_user_data && is_script(data)) else {
            return Ok(Started { imds, imds_shutdown: shutdown, pid: None });
        };
        let script_path = dir.join("user-data");
        fs_err::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o700)
            .open(&script_path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, &script))
            .map_err(io(&script_path))?;
        let log_path = log_dir.join("cloud-init-output.log");
        let log = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io(&log_path))?
            .into_parts()
            .0;
        let log_copy = log.try_clone().map_err(io(&log_path))?;
        let mut command = match &self.config.setpriv {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--", "/bin/sh"]);
                command
            }
            None => Command::new("/bin/sh"),
        };
        command
            .arg(&script_path)
            .current_dir(root)
            .env_clear()
            .env("PATH", format!("{}:{}", root.join("usr/local/bin").display(), self.config.path))
            .env(contract::ROOT, root)
            .env(contract::IMDS_ENDPOINT, format!("http://{address}"))
            .env(contract::S3_ENDPOINT, &self.config.moto_url)
            .env(contract::LISTEN, ip.to_string())
            .env(contract::SERVICE, "foreground")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_copy))
            .stderr(Stdio::from(log))
            .process_group(0);
        if let Some(seed) = &self.config.agent_seed
            && self.agent_seed_enabled(&instance.scope)
        {
            command.env(contract::AGENT_SEED, seed);
            if let Some(digest) = self.seed_digest(seed) {
                command.env(contract::AGENT_SEED_SHA256, digest);
            }
        }
        if let Some(filter) = std::env::var_os("RUST_LOG") {
            command.env("RUST_LOG", filter);
        }
        let mut child = command.spawn().map_err(BootError::Spawn)?;
        let pid = child.id();
        let booter = self.clone();
        let id = instance.id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.ok().and_then(|s| s.code().or_else(|| s.signal().map(|n| 128 + n)));
            let failed = {
                let mut machines = booter.machines();
                let Some(machine) = machines.get_mut(&id).filter(|m| m.report.pid == pid) else {
                    return;
                };
                machine.report.exit_code = code;
                // Running: neither the booter nor moto asked it to stop.
                let on_its_own = machine.report.state == BootState::Running;
                if on_its_own {
                    machine.report.state = BootState::Exited;
                }
                match code {
                    Some(code) if code != 0 && on_its_own => {
                        let cause = exit_cause(code, &log_path);
                        machine.report.error = Some(cause.clone());
                        Some(cause)
                    }
                    _ => None,
                }
            };
            if let Some(cause) = failed {
                tracing::warn!(instance = %id, "{cause}");
                booter.end_in_moto(id, cause).await;
            }
        });
        Ok(Started { imds, imds_shutdown: shutdown, pid })
    }

    /// Closes the instance's IMDS and stops its processes.
    async fn stop(self: Arc<Self>, id: String) {
        self.stop_one(id, Sweep::Each).await;
    }

    async fn stop_one(self: Arc<Self>, id: String, sweep: Sweep) {
        let (pid, root, shutdown) = {
            let mut machines = self.machines();
            let Some(machine) = machines.get_mut(&id).filter(|m| m.is_up()) else { return };
            machine.report.state = BootState::Stopping;
            (machine.report.pid, machine.report.root.clone(), machine.imds_shutdown.take())
        };
        if let Some(shutdown) = shutdown {
            let _ = shutdown.send(true);
        }
        if let Some(pid) = pid {
            stop_process_group(pid, self.config.stop_grace).await;
        }
        if sweep == Sweep::Each {
            kill_stragglers(&root);
        }
        if let Some(machine) = self.machines().get_mut(&id) {
            machine.report.state = BootState::Stopped;
        }
        tracing::info!(instance = %id, "stopped");
        self.relist.store(true, Ordering::SeqCst);
    }

    /// Stops every booted instance (the emulator is shutting down).
    pub(crate) async fn stop_all(self: &Arc<Self>) {
        let ids: Vec<String> =
            self.machines().iter().filter(|(_, m)| m.is_up()).map(|(id, _)| id.clone()).collect();
        let mut stops = tokio::task::JoinSet::new();
        for id in ids {
            stops.spawn(self.clone().stop_one(id, Sweep::Once));
        }
        while stops.join_next().await.is_some() {}
        // One pass over /proc for every instance, rather than one per instance.
        kill_stragglers(&self.config.instances_dir);
    }
}

/// A bind error: [`BootError::InUse`] when something holds the address, else the error.
fn bind_error(address: SocketAddrV4) -> impl FnOnce(std::io::Error) -> BootError {
    move |source| match source.kind() {
        std::io::ErrorKind::AddrInUse => BootError::InUse { address },
        _ => BootError::Bind { address, source },
    }
}

/// Why user data that exited with `code` by itself failed: the status and its last output
/// line (the script's, or the agent's it exec'd), which usually names the cause.
fn exit_cause(code: i32, log: &Path) -> String {
    match last_line(log) {
        Some(line) => format!("user data exited with status {code}; its last output: {line}"),
        None => format!("user data exited with status {code}"),
    }
}

/// The last non-blank line of `path` (within its last 4 KiB), as plain text: terminal escapes
/// (an agent's coloured log lines) and control characters dropped, at most
/// [`LAST_LINE_CHARS`] characters.
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 4096;
    let mut file = fs_err::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .map(|line| plain_text(line).trim().chars().take(LAST_LINE_CHARS).collect::<String>())
        .find(|line| !line.is_empty())
}

/// `text` without ANSI CSI sequences (`ESC [ … final byte`) and other control characters.
fn plain_text(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                chars.next();
                chars.by_ref().find(|c| ('@'..='~').contains(c));
            }
        } else if !c.is_control() {
            plain.push(c);
        }
    }
    plain
}

/// Whether a stop looks for stragglers itself, or leaves that to one pass after many stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sweep {
    Each,
    Once,
}

/// SIGTERM to the group, SIGKILL after `grace`.
async fn stop_process_group(pgid: u32, grace: Duration) {
    let Some(group) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else { return };
    let _ = rustix::process::kill_process_group(group, Signal::TERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && rustix::process::test_kill_process_group(group).is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = rustix::process::kill_process_group(group, Signal::KILL);
}

/// SIGKILLs processes whose working directory is under `root`, or whose `FLOTILLA_ROOT` is:
/// they left the process group (an agent's binary runs in a group of its own).
fn kill_stragglers(root: &Path) {
    let marker = format!("{}=", contract::ROOT);
    let me = std::process::id();
    let Ok(entries) = fs_err::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let proc_dir = entry.path();
        let in_root = fs_err::read_link(proc_dir.join("cwd"))
            .is_ok_and(|cwd| cwd.starts_with(root))
            || fs_err::read(proc_dir.join("environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .filter_map(|var| var.strip_prefix(marker.as_bytes()))
                    .any(|value| Path::new(std::ffi::OsStr::from_bytes(value)).starts_with(root))
            });
        if in_root && let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            tracing::debug!(pid = pid.as_raw_nonzero().get(), root = %root.display(), "killing a straggler");
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}

/// Whether user data is a script to run: it starts with `#!`, as cloud-init's shell-script
/// handler requires. Other user data (a config read from IMDS by a daemon, `#cloud-config`)
/// is data, never run.
fn is_script(user_data: &[u8]) -> bool {
    user_data.starts_with(b"#!")
}

/// Standard base64 (with or without padding, whitespace ignored), as EC2 carries user data.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let digits: Vec<u8> =
        text.bytes().filter(|c| !c.is_ascii_whitespace()).take_while(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut bits = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            bits |= value(*c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{decode_base64, is_script, last_line, plain_text};

    #[test]
    fn only_user_data_starting_with_a_shebang_is_a_script() {
        assert!(is_script(b"#!/bin/sh\nexit 0\n"));
        assert!(is_script(b"#!/usr/bin/env bash\n"));
        assert!(!is_script(b"// an ec2fleetd config\n{domains: {}}\n"));
        assert!(!is_script(b"{\"domains\": {}}"));
        assert!(!is_script(b"#cloud-config\npackages: [jq]\n"));
        assert!(!is_script(b" #!/bin/sh\n"));
        assert!(!is_script(b""));
    }

    #[test]
    fn the_last_output_line_is_plain_text() {
        assert_eq!(
            plain_text("\u{1b}[2m2026-01-01\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m bind:\tin use\r"),
            "2026-01-01 ERROR bind:in use"
        );
        let dir = std::env::temp_dir().join(format!("flotilla-last-line-{}", std::process::id()));
        fs_err::create_dir_all(&dir).unwrap();
        let log = dir.join("cloud-init-output.log");
        fs_err::write(&log, format!("{}\nfirst\n  last one  \n\n \n", "x".repeat(5000))).unwrap();
        assert_eq!(last_line(&log).as_deref(), Some("last one"));
        fs_err::write(&log, "y".repeat(500)).unwrap();
        assert_eq!(last_line(&log).map(|l| l.len()), Some(300));
        fs_err::write(&log, "\n\n").unwrap();
        assert_eq!(last_line(&log), None);
        assert_eq!(last_line(&dir.join("missing")), None);
        fs_err::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("ZWNobyBoaQo=").unwrap(), b"echo hi\n");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64("aA==").unwrap(), b"h");
        assert_eq!(decode_base64("YWJj\nZGVm").unwrap(), b"abcdef");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("a*bc").is_none());
    }
}
