//! The boot step: the manifest's boot additions (`boot:` in the fleet spec), done before the
//! binary starts, idempotently, and reported in the agent's status.
//!
//! The supervisor runs it each time it starts a version on an order (a rollout, a rollback, the
//! restore at agent start, a `Restart` request), not when it restarts a binary that exited. In
//! order, stopping at the first failed critical step:
//!
//! 0. **Disks**: the manifest's data disks with a mount point, each found by its volume,
//!    formatted only when empty and mounted (`disks.rs`), so that files and commands may use
//!    them. Critical.
//! 1. **Files**, each placed under the bootstrap's boot root (`/` on AWS, `<dir>/root` on the
//!    local provider; a path that would leave the root is refused). A file is written, atomically
//!    (temporary file, owner, mode, fsync, rename), only when its content, mode or owner differ.
//!    The owner applies only where system settings apply and the agent runs as root; otherwise
//!    the step says it was not applied. Critical.
//! 2. **Kernel settings**: the spec's `sysctl` over the network tuning (where system settings
//!    apply, unless `tune_network: false`), written to `<root>/etc/sysctl.d/90-flotilla.conf`
//!    (so they survive a reboot) and applied by writing `/proc/sys`, one step per key. A key the
//!    spec wrote is critical; the network tuning alone is not (an image whose kernel lacks BBR
//!    still runs the binary).
//! 3. **Packages**, with apt: those `dpkg-query` reports installed (at the asked version, for
//!    `name=version`) are skipped; otherwise `apt-get update` then `apt-get install -y`, each
//!    tried again while another apt or dpkg holds the lock, up to the bootstrap's
//!    `boot.apt_lock_wait` (5 minutes by default; [`crate::backoff::apt_lock_retry_delay`]).
//!    A failure is reported with apt's exit status and the last of its output. Critical.
//! 4. **Commands**, each with its argv (no shell), the binary's `FLOTILLA_*` environment plus
//!    `FLOTILLA_BOOT_ROOT`, in the instance directory, killed (its whole process group) at its
//!    timeout, its last 4 KiB of output kept. A command runs once per boot: one that succeeded
//!    is recorded in `<dir>/boot-commands.json` with the machine's boot id
//!    (`/proc/sys/kernel/random/boot_id`) and is not run again until the machine reboots, so a
//!    restarted agent or a new version with the same commands does not rerun it. A failed
//!    command runs again at the next start. Critical unless `critical: false`.
//!
//! Where system settings do not apply (the local provider), kernel settings and packages are
//! reported `not-applicable`, which is not a failure.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_spec::account::{BootCommand, BootFile, BootSpec, NETWORK_TUNING};
use flotilla_spec::api::{BootOutcome, BootReport, BootStep, BootStepKind};
use flotilla_spec::manifest::ManifestDisk;
use fs_err::os::unix::fs::OpenOptionsExt;
use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use crate::backoff::{apt_lock_retry_delay, restart_jitter};
use crate::binary_log::BinaryLog;
use crate::instance_dir::{PRIVATE_FILE_MODE, write_file_atomically};
use crate::process_group::signal_group;
use crate::spawner::{ProcessSpec, Spawner};
use crate::time::{format_duration, unix_now};

/// The most output of one command the report keeps: its last bytes.
pub(crate) const OUTPUT_TAIL_BYTES: usize = 4096;
/// Where the kernel settings are written, under the boot root.
const SYSCTL_FILE: &str = "etc/sysctl.d/90-flotilla.conf";
/// How long one `apt-get` may run.
const APT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long `dpkg-query` may run.
const DPKG_QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a command's output may take to close after the command ended.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Where the kernel says which boot this is.
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// Where the boot additions land and what applies, from the bootstrap config.
#[derive(Clone, Debug)]
pub(crate) struct BootTarget {
    /// Files are placed under it.
    pub(crate) root: PathBuf,
    /// Whether kernel settings, packages and file owners apply.
    pub(crate) system_settings: bool,
    /// How long packages wait in all for apt's locks.
    pub(crate) apt_lock_wait: Duration,
    /// What the agent runs on, for "not applicable on …".
    pub(crate) runs_on: String,
    /// The instance directory: commands run there, and the record of commands is kept there.
    pub(crate) dir: PathBuf,
    /// How data disks are found and what was mounted; `None` for a service's supervisor,
    /// which runs no boot.
    pub(crate) disks: Option<crate::disks::DiskAccess>,
}

impl BootTarget {
    fn record_file(&self) -> PathBuf {
        self.dir.join("boot-commands.json")
    }

    fn not_applicable(&self) -> String {
        format!("not applicable on {}", self.runs_on)
    }
}

/// Whether `boot` and `disks` give the agent anything to do (or to report) on this target.
pub(crate) fn has_work(boot: &BootSpec, disks: &[ManifestDisk], target: &BootTarget) -> bool {
    !disks.is_empty()
        || !boot.is_empty()
        || !boot.effective_sysctl(target.system_settings).is_empty()
}

/// Runs the boot additions of `version` and reports each step. `env` is the binary's
/// environment, given to commands.
pub(crate) async fn run(
    boot: &BootSpec,
    disks: &[ManifestDisk],
    version: &str,
    target: &BootTarget,
    env: Vec<(OsString, OsString)>,
    spawner: &Spawner,
    log: &BinaryLog,
) -> BootReport {
    let mut report = BootReport {
        version: version.to_owned(),
        blocked: false,
        steps: Vec::new(),
        started_at: unix_now(),
        finished_at: None,
    };
    let short = flotilla_spec::manifest::short_version(version);
    log.event(&format!("boot additions of version {short}: starting"));
    let mut runner = Runner { target, spawner, log, report: &mut report };
    runner.run_all(boot, disks, env).await;
    report.finished_at = Some(unix_now());
    report.blocked = report.steps.iter().any(|s| s.critical && s.outcome == BootOutcome::Failed);
    let verdict = match report.first_failure() {
        Some(step) if report.blocked => format!(
            "a critical step failed ({} `{}`): the binary does not start",
            step.kind.as_str(),
            step.target
        ),
        Some(step) => {
            format!("done; the non-critical {} `{}` failed", step.kind.as_str(), step.target)
        }
        None => "done".to_owned(),
    };
    log.event(&format!("boot additions of version {short}: {verdict}"));
    report
}

struct Runner<'a> {
    target: &'a BootTarget,
    spawner: &'a Spawner,
    log: &'a BinaryLog,
    report: &'a mut BootReport,
}

impl Runner<'_> {
    /// Records a step; says whether the boot may go on (no critical failure).
    fn push(&mut self, step: BootStep) -> bool {
        let mut line =
            format!("boot {} `{}`: {}", step.kind.as_str(), step.target, step.outcome.as_str());
        if let Some(message) = &step.message {
            line.push_str(&format!(": {message}"));
        }
        self.log.event(&line);
        if step.outcome == BootOutcome::Failed
            && let Some(output) = &step.output
        {
            for output_line in output.lines() {
                self.log.event(&format!("  | {output_line}"));
            }
        }
        let go_on = !(step.critical && step.outcome == BootOutcome::Failed);
        self.report.steps.push(step);
        go_on
    }

    async fn run_all(
        &mut self,
        boot: &BootSpec,
        disks: &[ManifestDisk],
        env: Vec<(OsString, OsString)>,
    ) {
        if !disks.is_empty() {
            let steps = match &self.target.disks {
                Some(access) => crate::disks::prepare(disks, &self.target.root, access).await,
                None => vec![BootStep {
                    message: Some("this supervisor mounts no disks".to_owned()),
                    ..step(BootStepKind::Disk, disks[0].mount.clone(), BootOutcome::Failed, true)
                }],
            };
            for step in steps {
                if !self.push(step) {
                    return;
                }
            }
        }
        for file in &boot.files {
            let step = write_boot_file(file, self.target);
            if !self.push(step) {
                return;
            }
        }
        for step in self.apply_sysctl(boot) {
            if !self.push(step) {
                return;
            }
        }
        if let Some(step) = self.install_packages(&boot.packages).await
            && !self.push(step)
        {
            return;
        }
        let mut env = env;
        env.push(("FLOTILLA_BOOT_ROOT".into(), self.target.root.clone().into_os_string()));
        self.run_commands(&boot.commands, &env).await;
    }

    fn apply_sysctl(&self, boot: &BootSpec) -> Vec<BootStep> {
        let target = self.target;
        let settings = boot.effective_sysctl(target.system_settings);
        if settings.is_empty() {
            return Vec::new();
        }
        let critical = |key: &str| {
            boot.sysctl.contains_key(key) || !NETWORK_TUNING.iter().any(|(k, _)| *k == key)
        };
        if !target.system_settings {
            return settings
                .iter()
                .map(|(key, value)| BootStep {
                    message: Some(target.not_applicable()),
                    ..step(
                        BootStepKind::Sysctl,
                        format!("{key}={value}"),
                        BootOutcome::NotApplicable,
                        false,
                    )
                })
                .collect();
        }
        let mut steps = Vec::new();
        let file = target.root.join(SYSCTL_FILE);
        let content = sysctl_file_content(&settings);
        let file_step = write_if_differs(&file, content.as_bytes(), 0o644, None).map_or_else(
            |error| BootStep {
                message: Some(error),
                ..step(BootStepKind::Sysctl, file.display().to_string(), BootOutcome::Failed, true)
            },
            |written| {
                let outcome = if written { BootOutcome::Applied } else { BootOutcome::Unchanged };
                step(BootStepKind::Sysctl, file.display().to_string(), outcome, true)
            },
        );
        let file_failed = file_step.outcome == BootOutcome::Failed;
        steps.push(file_step);
        if file_failed {
            return steps;
        }
        for (key, value) in &settings {
            let name = format!("{key}={value}");
            let critical = critical(key);
            let outcome = apply_sysctl_key(Path::new("/proc/sys"), key, value);
            steps.push(match outcome {
                Ok(true) => step(BootStepKind::Sysctl, name, BootOutcome::Applied, critical),
                Ok(false) => step(BootStepKind::Sysctl, name, BootOutcome::Unchanged, critical),
                Err(error) => BootStep {
                    message: Some(error),
                    ..step(BootStepKind::Sysctl, name, BootOutcome::Failed, critical)
                },
            });
        }
        steps
    }

    async fn install_packages(&self, packages: &[String]) -> Option<BootStep> {
        if packages.is_empty() {
            return None;
        }
        let name = packages.join(" ");
        if !self.target.system_settings {
            return Some(BootStep {
                message: Some(self.target.not_applicable()),
                ..step(BootStepKind::Packages, name, BootOutcome::NotApplicable, false)
            });
        }
        let env: Vec<(OsString, OsString)> =
            vec![("DEBIAN_FRONTEND".into(), "noninteractive".into())];
        let mut missing = Vec::new();
        for package in packages {
            let package_name = package.split_once('=').map_or(package.as_str(), |(n, _)| n);
            let argv =
                ["dpkg-query", "-W", "-f=${Status}\t${Version}", package_name].map(str::to_owned);
            let result =
                run_process(self.spawner, &argv, &self.target.dir, &env, DPKG_QUERY_TIMEOUT).await;
            let query = result.ok().filter(|r| r.end.succeeded()).map(|r| r.output);
            if !is_installed(package, query.as_deref()) {
                missing.push(package.clone());
            }
        }
        if missing.is_empty() {
            return Some(BootStep {
                message: Some("already installed".to_owned()),
                ..step(BootStepKind::Packages, name, BootOutcome::Unchanged, true)
            });
        }
        let update = ["apt-get", "-q", "update"].map(str::to_owned).to_vec();
        let mut install: Vec<String> =
            ["apt-get", "-q", "-y", "--no-install-recommends", "install"]
                .map(str::to_owned)
                .to_vec();
        install.extend(missing.iter().cloned());
        for argv in [update, install] {
            let result = self.apt_with_lock_wait(&argv, &env).await;
            if let Err(mut failed) = result {
                failed.target = name;
                return Some(failed);
            }
        }
        Some(BootStep {
            message: Some(format!("installed {}", missing.join(" "))),
            ..step(BootStepKind::Packages, name, BootOutcome::Applied, true)
        })
    }

    /// Runs apt, again while another apt or dpkg holds its lock, on the written schedule.
    async fn apt_with_lock_wait(
        &self,
        argv: &[String],
        env: &[(OsString, OsString)],
    ) -> Result<(), BootStep> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            let failed = |message: String, output: Option<String>, code: Option<i32>| BootStep {
                message: Some(message),
                output,
                exit_code: code,
                ..step(BootStepKind::Packages, String::new(), BootOutcome::Failed, true)
            };
            let result = run_process(self.spawner, argv, &self.target.dir, env, APT_TIMEOUT)
                .await
                .map_err(|error| {
                    failed(
                        format!("`{}` could not be started: {error}", argv.join(" ")),
                        None,
                        None,
                    )
                })?;
            if result.end.succeeded() {
                return Ok(());
            }
            attempt += 1;
            let delay = holds_apt_lock(&result.output)
                .then(|| {
                    let bound = self.target.apt_lock_wait;
                    apt_lock_retry_delay(attempt, started.elapsed(), bound, restart_jitter())
                })
                .flatten();
            let Some(delay) = delay else {
                let mut message = format!("`{}` {}", argv.join(" "), result.end.describe());
                if holds_apt_lock(&result.output) {
                    message.push_str(&format!(
                        " (another apt or dpkg held its lock for {})",
                        format_duration(self.target.apt_lock_wait)
                    ));
                }
                return Err(failed(message, Some(result.output), result.end.code()));
            };
            self.log.event(&format!(
                "boot packages: another apt or dpkg holds its lock; trying again in {}",
                format_duration(delay)
            ));
            tokio::time::sleep(delay).await;
        }
    }

    async fn run_commands(&mut self, commands: &[BootCommand], env: &[(OsString, OsString)]) {
        if commands.is_empty() {
            return;
        }
        let boot_id = fs_err::read_to_string(BOOT_ID_FILE).ok().map(|id| id.trim().to_owned());
        let record_file = self.target.record_file();
        let mut record = CommandRecord::load(&record_file);
        if let Some(boot_id) = &boot_id {
            record.start_boot(boot_id);
        }
        let digests = command_digests(commands);
        for (command, digest) in commands.iter().zip(&digests) {
            let name = command.argv.join(" ");
            if record.already_succeeded(boot_id.as_deref(), digest) {
                self.push(BootStep {
                    message: Some("already succeeded since the machine booted".to_owned()),
                    ..step(BootStepKind::Command, name, BootOutcome::Unchanged, command.critical)
                });
                continue;
            }
            let result =
                run_process(self.spawner, &command.argv, &self.target.dir, env, command.timeout)
                    .await;
            let step = match result {
                Ok(result) if result.end.succeeded() => {
                    if boot_id.is_some() {
                        record.succeeded.push(digest.clone());
                        if let Err(error) = record.save(&record_file) {
                            self.log.event(&format!(
                                "could not record that boot command `{name}` succeeded ({error}): it runs again at the next start"
                            ));
                        }
                    }
                    BootStep {
                        output: Some(result.output).filter(|o| !o.is_empty()),
                        exit_code: Some(0),
                        ..step(BootStepKind::Command, name, BootOutcome::Applied, command.critical)
                    }
                }
                Ok(result) => BootStep {
                    message: Some(result.end.describe()),
                    exit_code: result.end.code(),
                    output: Some(result.output),
                    ..step(BootStepKind::Command, name, BootOutcome::Failed, command.critical)
                },
                Err(error) => BootStep {
                    message: Some(format!("could not be started: {error}")),
                    ..step(BootStepKind::Command, name, BootOutcome::Failed, command.critical)
                },
            };
            if !self.push(step) {
                return;
            }
        }
    }
}

fn step(kind: BootStepKind, target: String, outcome: BootOutcome, critical: bool) -> BootStep {
    BootStep { kind, target, outcome, critical, message: None, exit_code: None, output: None }
}

// Files.

/// Where `path` (an absolute path of the spec) lands under `root`; `None` when it would not
/// stay under it (`..`, a relative path).
pub(crate) fn path_under_root(root: &Path, path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return None;
    }
    let mut placed = root.to_path_buf();
    let mut parts = 0;
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => {
                placed.push(part);
                parts += 1;
            }
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (parts > 0).then_some(placed)
}

/// A file as it is on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CurrentFile {
    pub(crate) content: Vec<u8>,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Whether a file must be written: it is missing, or its content, its permission bits or (when
/// one is asked) its owner differ.
pub(crate) fn file_differs(
    current: Option<&CurrentFile>,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    current.content != content
        || current.mode & 0o7777 != mode & 0o7777
        || owner.is_some_and(|(uid, gid)| (current.uid, current.gid) != (uid, gid))
}

fn write_boot_file(file: &BootFile, target: &BootTarget) -> BootStep {
    let failed = |message: String| BootStep {
        message: Some(message),
        ..step(BootStepKind::File, file.path.clone(), BootOutcome::Failed, true)
    };
    let Some(path) = path_under_root(&target.root, &file.path) else {
        return failed(format!("refused: it would land outside {}", target.root.display()));
    };
    let (owner, note) = match &file.owner {
        None => (None, None),
        Some(_) if !target.system_settings => {
            (None, Some(format!("owner not applied: {}", target.not_applicable())))
        }
        Some(_) if !rustix::process::geteuid().is_root() => {
            (None, Some("owner not applied: the agent does not run as root".to_owned()))
        }
        Some(owner) => {
            match resolve_owner(owner, Path::new("/etc/passwd"), Path::new("/etc/group")) {
                Ok(ids) => (Some(ids), None),
                Err(error) => return failed(error),
            }
        }
    };
    match write_if_differs(&path, file.content.as_bytes(), file.mode, owner) {
        Ok(written) => BootStep {
            message: note,
            ..step(
                BootStepKind::File,
                file.path.clone(),
                if written { BootOutcome::Applied } else { BootOutcome::Unchanged },
                true,
            )
        },
        Err(error) => failed(error),
    }
}

/// Writes `path` atomically when it differs; says whether it wrote.
fn write_if_differs(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<bool, String> {
    let current = read_current(path).map_err(|error| format!("could not read it: {error}"))?;
    if !file_differs(current.as_ref(), content, mode, owner) {
        return Ok(false);
    }
    write_atomically(path, content, mode, owner)
        .map_err(|error| format!("could not write it: {error}"))?;
    Ok(true)
}

fn read_current(path: &Path) -> std::io::Result<Option<CurrentFile>> {
    let metadata = match fs_err::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    if !metadata.is_file() {
        // A link or anything else is replaced by the file.
        return Ok(None);
    }
    let mut content = Vec::new();
    fs_err::File::open(path)?.read_to_end(&mut content)?;
    Ok(Some(CurrentFile {
        content,
        mode: metadata.permissions().mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
    }))
}

/// A temporary file beside `path` with the content, owner and mode, flushed, renamed over it.
fn write_atomically(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let parent = path.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(|error| {
        std::io::Error::new(error.kind(), format!("creating {}: {error}", parent.display()))
    })?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".flotilla-tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = fs_err::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(content)?;
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(
            file.file(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    // After the owner: changing the owner clears the set-id bits.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.sync_all()?;
    drop(file);
    fs_err::rename(&temporary, path)?;
    fs_err::File::open(parent)?.sync_all()?;
    Ok(())
}

/// Resolves `USER` or `USER:GROUP` (names or numbers) from the passwd and group files; without a
/// group, the user's primary group.
pub(crate) fn resolve_owner(
    owner: &str,
    passwd: &Path,
    group: &Path,
) -> Result<(u32, u32), String> {
    let (user, group_name) = match owner.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (owner, None),
    };
    let passwd_text = fs_err::read_to_string(passwd).unwrap_or_default();
    let user_entry = passwd_text
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 4 && (fields[0] == user || fields[2] == user));
    let (uid, primary_gid) = match (&user_entry, user.parse::<u32>()) {
        (Some(fields), _) => (
            fields[2].parse::<u32>().map_err(|_| format!("{} has a bad uid", passwd.display()))?,
            fields[3].parse::<u32>().ok(),
        ),
        (None, Ok(uid)) => (uid, None),
        (None, Err(_)) => {
            return Err(format!("owner `{owner}`: no user `{user}` in {}", passwd.display()));
        }
    };
    let gid = match group_name {
        None => primary_gid.ok_or_else(|| {
            format!("owner `{owner}`: user `{user}` has no primary group; write `{user}:GROUP`")
        })?,
        Some(name) => {
            let group_text = fs_err::read_to_string(group).unwrap_or_default();
            let entry = group_text
                .lines()
                .map(|line| line.split(':').collect::<Vec<_>>())
                .find(|fields| fields.len() >= 3 && (fields[0] == name || fields[2] == name));
            match (entry, name.parse::<u32>()) {
                (Some(fields), _) => fields[2]
                    .parse::<u32>()
                    .map_err(|_| format!("{} has a bad gid", group.display()))?,
                (None, Ok(gid)) => gid,
                (None, Err(_)) => {
                    return Err(format!(
                        "owner `{owner}`: no group `{name}` in {}",
                        group.display()
                    ));
                }
            }
        }
    };
    Ok((uid, gid))
}

// Kernel settings.

fn sysctl_file_content(settings: &BTreeMap<String, String>) -> String {
    let mut content =
        String::from("# Written by the flotilla agent from the fleet spec's boot.sysctl.\n");
    for (key, value) in settings {
        content.push_str(&format!("{key} = {value}\n"));
    }
    content
}

/// The file under `proc_sys` of a sysctl key: dots separate its parts, unless it is written
/// with slashes (then dots belong to names, as in interface names). `None` for a key that would
/// leave `proc_sys`.
pub(crate) fn sysctl_path(proc_sys: &Path, key: &str) -> Option<PathBuf> {
    let relative = if key.contains('/') { key.to_owned() } else { key.replace('.', "/") };
    let mut path = proc_sys.to_path_buf();
    for part in relative.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return None;
        }
        path.push(part);
    }
    Some(path)
}

/// Writes one setting under `proc_sys` unless it already has the value (compared word by
/// word, as the kernel prints tabs between the words); says whether it wrote.
fn apply_sysctl_key(proc_sys: &Path, key: &str, value: &str) -> Result<bool, String> {
    let path = sysctl_path(proc_sys, key).ok_or_else(|| format!("`{key}` is not a sysctl key"))?;
    let current =
        fs_err::read_to_string(&path).map_err(|error| format!("could not read it: {error}"))?;
    let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    if words(&current) == words(value) {
        return Ok(false);
    }
    fs_err::write(&path, format!("{value}\n"))
        .map_err(|error| format!("could not set it: {error}"))?;
    Ok(true)
}

// Packages.

/// Whether `package` (`name` or `name=version`) is installed, from `dpkg-query -W
/// -f='${Status}\t${Version}' name`'s output (`None` when it failed: not known to dpkg).
pub(crate) fn is_installed(package: &str, query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    let (status, version) = query.trim().split_once('\t').unwrap_or((query.trim(), ""));
    if !status.ends_with(" installed") {
        return false;
    }
    match package.split_once('=') {
        Some((_, wanted)) => version == wanted,
        None => true,
    }
}

/// Whether apt's output says that another apt or dpkg holds its lock.
pub(crate) fn holds_apt_lock(output: &str) -> bool {
    [
        "Could not get lock",
        "Unable to acquire the dpkg frontend lock",
        "Unable to lock directory",
        "Unable to lock the administration directory",
    ]
    .iter()
    .any(|message| output.contains(message))
}

// Commands.

/// Which commands succeeded since the machine booted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommandRecord {
    pub(crate) boot_id: String,
    /// Digests (see [`command_digests`]) of the commands that succeeded during that boot.
    pub(crate) succeeded: Vec<String>,
}

impl CommandRecord {
    /// The record, or an empty one when it is missing or unreadable (every command runs).
    fn load(path: &Path) -> CommandRecord {
        fs_err::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).expect("a record of strings serializes to JSON");
        write_file_atomically(path, &json, PRIVATE_FILE_MODE)
    }

    /// Forgets what succeeded during another boot.
    pub(crate) fn start_boot(&mut self, boot_id: &str) {
        if self.boot_id != boot_id {
            *self = CommandRecord { boot_id: boot_id.to_owned(), succeeded: Vec::new() };
        }
    }

    /// Whether the command with `digest` already succeeded during boot `boot_id` (never when
    /// the boot id is unknown: then every command runs at every start).
    pub(crate) fn already_succeeded(&self, boot_id: Option<&str>, digest: &str) -> bool {
        boot_id.is_some_and(|id| id == self.boot_id) && self.succeeded.iter().any(|d| d == digest)
    }
}

/// One digest per command: SHA-256 over its argv and how many commands with the same argv come
/// before it, so a command written twice runs twice and a timeout change does not rerun it.
pub(crate) fn command_digests(commands: &[BootCommand]) -> Vec<String> {
    let mut digests = Vec::with_capacity(commands.len());
    for (index, command) in commands.iter().enumerate() {
        let earlier = commands[..index].iter().filter(|c| c.argv == command.argv).count();
        let json = serde_json::to_vec(&(&command.argv, earlier)).expect("strings serialize");
        digests.push(hex::encode(Sha256::digest(&json)));
    }
    digests
}

/// The last `capacity` bytes written to it.
#[derive(Debug)]
pub(crate) struct OutputTail {
    bytes: std::collections::VecDeque<u8>,
    capacity: usize,
}

impl OutputTail {
    pub(crate) fn new(capacity: usize) -> OutputTail {
        OutputTail { bytes: std::collections::VecDeque::with_capacity(capacity), capacity }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + chunk.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(chunk);
    }

    pub(crate) fn text(&self) -> String {
        let bytes: Vec<u8> = self.bytes.iter().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// How a process ended.
#[derive(Debug)]
pub(crate) enum End {
    Exited(ExitStatus),
    TimedOut(Duration),
}

impl End {
    pub(crate) fn succeeded(&self) -> bool {
        matches!(self, End::Exited(status) if status.success())
    }

    fn code(&self) -> Option<i32> {
        match self {
            End::Exited(status) => status.code(),
            End::TimedOut(_) => None,
        }
    }

    pub(crate) fn describe(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self {
            End::Exited(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was ended by signal {signal}"),
                (None, None) => format!("ended: {status}"),
            },
            End::TimedOut(timeout) => {
                format!(
                    "did not finish within its timeout of {} and was killed",
                    format_duration(*timeout)
                )
            }
        }
    }
}

pub(crate) struct ProcessResult {
    pub(crate) end: End,
    pub(crate) output: String,
}

/// Kills the process group of a command when the boot step is abandoned (an order came while
/// it ran) or the command timed out.
struct GroupGuard {
    pid: u32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pid, Signal::KILL);
        }
    }
}

/// Runs `argv` in its own process group in `cwd` with `env` added, stdout and stderr captured
/// together (the last [`OUTPUT_TAIL_BYTES`]), killed with its group after `timeout`.
pub(crate) async fn run_process(
    spawner: &Spawner,
    argv: &[String],
    cwd: &Path,
    env: &[(OsString, OsString)],
    timeout: Duration,
) -> std::io::Result<ProcessResult> {
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("empty argv"))?;
    let spec = ProcessSpec {
        program: PathBuf::from(program),
        args: args.iter().map(OsString::from).collect(),
        cwd: cwd.to_path_buf(),
        env: env.to_vec(),
    };
    let mut child = spawner.spawn(&spec).await?;
    let mut guard = GroupGuard { pid: child.id().unwrap_or_default(), armed: true };
    let tail = Arc::new(Mutex::new(OutputTail::new(OUTPUT_TAIL_BYTES)));
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(read_into(stdout, tail.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(read_into(stderr, tail.clone())));
    }
    let end = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            guard.armed = false;
            End::Exited(status?)
        }
        Err(_) => {
            signal_group(guard.pid, Signal::KILL);
            guard.armed = false;
            // Reaped; the status is that of SIGKILL.
            let _ = child.wait().await;
            End::TimedOut(timeout)
        }
    };
    let deadline = crate::deadline::from_now(OUTPUT_DRAIN_TIMEOUT);
    for mut reader in readers {
        if tokio::time::timeout_at(deadline, &mut reader).await.is_err() {
            reader.abort();
        }
    }
    let output = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).text();
    Ok(ProcessResult { end, output })
}

async fn read_into(mut stream: impl AsyncRead + Unpin, tail: Arc<Mutex<OutputTail>>) {
    let mut buffer = vec![0; 4096];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(&buffer[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(argv: &[&str]) -> BootCommand {
        BootCommand {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            timeout: Duration::from_secs(5),
            critical: true,
        }
    }

    #[test]
    fn a_command_runs_once_per_boot() {
        let digests = command_digests(&[command(&["a"]), command(&["b"])]);
        let mut record = CommandRecord::default();
        record.start_boot("boot-1");
        assert!(!record.already_succeeded(Some("boot-1"), &digests[0]));
        record.succeeded.push(digests[0].clone());
        assert!(record.already_succeeded(Some("boot-1"), &digests[0]));
        assert!(!record.already_succeeded(Some("boot-1"), &digests[1]));
        // The same boot again (a restarted agent, a new version) keeps what succeeded.
        record.start_boot("boot-1");
        assert!(record.already_succeeded(Some("boot-1"), &digests[0]));
        // A reboot forgets it; an unknown boot id runs everything.
        assert!(!record.already_succeeded(Some("boot-2"), &digests[0]));
        assert!(!record.already_succeeded(None, &digests[0]));
        record.start_boot("boot-2");
        assert_eq!(record.succeeded, Vec::<String>::new());
    }

    #[test]
    fn command_digests_follow_the_argv_and_count_repeats() {
        let mut slow = command(&["a", "x"]);
        slow.timeout = Duration::from_secs(60);
        slow.critical = false;
        let one = command_digests(&[command(&["a", "x"])]);
        assert_eq!(command_digests(&[slow.clone()]), one, "timeout and critical do not count");
        let twice = command_digests(&[command(&["a", "x"]), slow]);
        assert_eq!(twice[0], one[0]);
        assert_ne!(twice[0], twice[1], "a command written twice runs twice");
        assert_ne!(command_digests(&[command(&["a x"])]), one, "argv boundaries count");
    }

    #[test]
    fn a_file_is_written_only_when_content_mode_or_owner_differ() {
        let current =
            CurrentFile { content: b"hello\n".to_vec(), mode: 0o644, uid: 1000, gid: 1000 };
        assert!(file_differs(None, b"hello\n", 0o644, None));
        assert!(!file_differs(Some(&current), b"hello\n", 0o644, None));
        assert!(file_differs(Some(&current), b"hello", 0o644, None));
        assert!(file_differs(Some(&current), b"hello\n", 0o600, None));
        assert!(!file_differs(Some(&current), b"hello\n", 0o644, Some((1000, 1000))));
        assert!(file_differs(Some(&current), b"hello\n", 0o644, Some((0, 1000))));
        assert!(file_differs(Some(&current), b"hello\n", 0o644, Some((1000, 0))));
    }

    #[test]
    fn files_stay_under_the_root() {
        let root = Path::new("/srv/m/root");
        assert_eq!(path_under_root(root, "/etc/app.conf"), Some(root.join("etc/app.conf")));
        assert_eq!(path_under_root(root, "/etc//app.conf"), Some(root.join("etc/app.conf")));
        assert_eq!(path_under_root(Path::new("/"), "/etc/x"), Some(PathBuf::from("/etc/x")));
        for escaping in ["/../etc/passwd", "/etc/../../x", "etc/x", "/", "./x", ""] {
            assert_eq!(path_under_root(root, escaping), None, "{escaping}");
        }
    }

    #[test]
    fn sysctl_keys_map_into_proc_sys() {
        let proc_sys = Path::new("/proc/sys");
        assert_eq!(
            sysctl_path(proc_sys, "net.ipv4.tcp_congestion_control"),
            Some(PathBuf::from("/proc/sys/net/ipv4/tcp_congestion_control"))
        );
        assert_eq!(
            sysctl_path(proc_sys, "net/ipv4/conf/eth0.100/rp_filter"),
            Some(PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"))
        );
        for bad in ["net..x", "net/../../etc", ".net", "net/"] {
            assert_eq!(sysctl_path(proc_sys, bad), None, "{bad}");
        }
    }

    #[test]
    fn sysctl_values_are_compared_word_by_word() {
        let temp = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(temp.path().join("net/ipv4")).unwrap();
        let file = temp.path().join("net/ipv4/tcp_rmem");
        fs_err::write(&file, "4096\t131072\t6291456\n").unwrap();
        assert_eq!(
            apply_sysctl_key(temp.path(), "net.ipv4.tcp_rmem", "4096 131072 6291456"),
            Ok(false)
        );
        assert_eq!(
            apply_sysctl_key(temp.path(), "net.ipv4.tcp_rmem", "4096 87380 6291456"),
            Ok(true)
        );
        assert_eq!(fs_err::read_to_string(&file).unwrap(), "4096 87380 6291456\n");
    }

    #[test]
    fn installed_packages_are_read_from_dpkg_query() {
        let installed = Some("install ok installed\t1.7.1-3build1");
        assert!(is_installed("jq", installed));
        assert!(is_installed("jq=1.7.1-3build1", installed));
        assert!(!is_installed("jq=1.6", installed));
        assert!(!is_installed("jq", Some("deinstall ok config-files\t1.7.1-3build1")));
        assert!(!is_installed("jq", Some("unknown ok not-installed\t")));
        assert!(!is_installed("jq", None));
    }

    #[test]
    fn apt_lock_messages_are_recognised() {
        assert!(holds_apt_lock(
            "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 1234 (apt-get)\nE: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?"
        ));
        assert!(holds_apt_lock("E: Unable to lock directory /var/lib/apt/lists/"));
        assert!(!holds_apt_lock("E: Unable to locate package nosuchpackage"));
    }

    #[test]
    fn owners_resolve_from_passwd_and_group() {
        let temp = tempfile::tempdir().unwrap();
        let passwd = temp.path().join("passwd");
        let group = temp.path().join("group");
        fs_err::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\napp:x:1001:1002::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs_err::write(&group, "root:x:0:\nadm:x:4:app\napp:x:1002:\n").unwrap();
        assert_eq!(resolve_owner("app", &passwd, &group), Ok((1001, 1002)));
        assert_eq!(resolve_owner("app:adm", &passwd, &group), Ok((1001, 4)));
        assert_eq!(resolve_owner("1001:4", &passwd, &group), Ok((1001, 4)));
        assert_eq!(resolve_owner("4242:4243", &passwd, &group), Ok((4242, 4243)));
        let error = resolve_owner("nobody-here", &passwd, &group).unwrap_err();
        assert!(error.contains("no user `nobody-here`"), "{error}");
        let error = resolve_owner("app:nogroup", &passwd, &group).unwrap_err();
        assert!(error.contains("no group `nogroup`"), "{error}");
    }

    #[test]
    fn the_output_tail_keeps_the_last_bytes() {
        let mut tail = OutputTail::new(8);
        tail.push(b"abc");
        tail.push(b"defgh");
        assert_eq!(tail.text(), "abcdefgh");
        tail.push(b"ij");
        assert_eq!(tail.text(), "cdefghij");
        tail.push(b"0123456789");
        assert_eq!(tail.text(), "23456789");
    }

    #[test]
    fn files_are_rewritten_atomically_only_when_they_differ() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("etc/app/app.conf");
        assert_eq!(write_if_differs(&path, b"one\n", 0o640, None), Ok(true));
        assert_eq!(fs_err::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(fs_err::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(write_if_differs(&path, b"one\n", 0o640, None), Ok(false));
        assert_eq!(write_if_differs(&path, b"one\n", 0o600, None), Ok(true));
        assert_eq!(fs_err::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(write_if_differs(&path, b"two\n", 0o600, None), Ok(true));
        assert_eq!(fs_err::read_to_string(&path).unwrap(), "two\n");
        let leftovers: Vec<_> = fs_err::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
    }
}
