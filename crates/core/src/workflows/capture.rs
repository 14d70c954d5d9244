//! `snapshot` and `image`: captures of one machine of a deployment, through the provider's
//! [`Provider::snapshot_disks`] and [`Provider::create_image`].
//!
//! With `stop`, as Aquarium Fish's DEALLOCATE tasks do, the data holds still first: the agent
//! stops the binary (`Stop`, which the agent keeps across its own restart), the provider stops
//! the machine; after the capture, whatever it answered, the provider starts the machine, the
//! workflow waits for its agent and has it start the binary again (`Restart`) and waits until
//! it is healthy. A failure in the middle still starts the machine again, and the error says
//! what was made and what happened.
//!
//! After the start the machine may have another public address (a cloud machine without an
//! Elastic IP gets a new one): once its agent answers, and before its binary starts again (a
//! binary may bind its hosts.yaml address), the address is published as a membership change
//! is, a hosts-only change to every machine's recorded manifest (its agent applies it as
//! `on_hosts_change` says, without restarting the binary otherwise), and `status`, `logs` and
//! later commands reach the machine where the provider lists it now.
//!
//! Re-run: the capture in progress is recorded in the deployment's state (`capture.json`:
//! machine, kind, id, and the pid of the command at work) before anything is made and removed
//! when it is done; a command run again for the same machine and kind reuses its id, so the
//! provider finds what it made.
//!
//! `watch` leaves alone a machine a capture is working on ([`capture_in_progress`]: the record
//! names it and the command that wrote it holds the deployment's lock), so a machine stopped
//! on purpose is never replaced; a record left by a crashed capture does not hold watch back.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_spec::Manifest;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::CoreError;
use crate::client::AgentClient;
use crate::error::MachineFailure;
use crate::progress::Progress;
use crate::provider::{
    Capture, DiskSnapshot, ImageRequest, Machine, MachineImage, MachineState, Provider,
    ProviderError,
};
use crate::rollout::{PollSchedule, apply_and_wait};
use crate::state::{Deployment, Home, StateError};

/// The capture in progress, kept until it is done.
const CAPTURE_FILE: &str = "capture.json";
/// The longest image name EC2 accepts.
const IMAGE_NAME_MAX: usize = 128;
/// What an encrypted image's unencrypted source adds to its name (the provider's).
const SOURCE_SUFFIX_ROOM: usize = 7;

/// What to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureKind {
    /// Snapshots of the data disks; with `full`, of the root disk too.
    Snapshot { full: bool },
    /// An image named `<prefix>-<UTC time>` (the prefix defaults to `<tag>-<machine>`),
    /// encrypted with `encrypt_key` when given.
    Image { prefix: Option<String>, encrypt_key: Option<String> },
}

impl CaptureKind {
    fn label(&self) -> &'static str {
        match self {
            CaptureKind::Snapshot { .. } => "snapshot",
            CaptureKind::Image { .. } => "image",
        }
    }
}

/// A `snapshot` or `image` command.
#[derive(Clone, Debug)]
pub struct CaptureRequest {
    /// The machine's name.
    pub name: String,
    pub kind: CaptureKind,
    /// Stop the binary and the machine first; start them again after.
    pub stop: bool,
    /// How long the agent has to answer once the machine runs again.
    pub agent_timeout: Duration,
}

/// What a capture made.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureReport {
    pub machine: String,
    /// The capture's id (tagged on what was made).
    pub capture: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<DiskSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<MachineImage>,
    /// Whether the machine was stopped and started again.
    pub stopped: bool,
    /// The machine's public address now (a stopped and started cloud machine may have another).
    pub public_ip: std::net::IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    machine: String,
    kind: String,
    id: String,
    /// The UTC time in the id, for the image's name.
    time: String,
    /// The command at work on it (it holds the deployment's lock while it works); `None` in
    /// a record written before pids were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
}

/// The machine a capture is working on now, if any: `capture.json` names it and the command
/// that wrote it holds the deployment's lock. A record a crashed capture left (no one holds
/// the lock, or another command does) is no capture in progress.
///
/// Takes the deployment's lock for a moment when it is free: not to be called by a holder of
/// that lock (a second lock of one process on the same file is refused as another's).
pub(crate) fn capture_in_progress(deployment: &Deployment) -> Result<Option<String>, CoreError> {
    let Some(pending) = deployment.read_json::<Pending>(CAPTURE_FILE)? else {
        return Ok(None);
    };
    let Some(pid) = pending.pid else { return Ok(None) };
    match deployment.lock() {
        Ok(_free) => Ok(None),
        Err(StateError::Locked { holder, .. }) if holder == format!(" (pid {pid})") => {
            Ok(Some(pending.machine))
        }
        Err(StateError::Locked { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// `YYYYMMDDTHHMMSSZ` of `now`.
fn compact_utc(now: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(now).to_string().replace(['-', ':'], "")
}

/// Whether `name` is a valid EC2 image name: 3–128 of letters, digits, `( ) [ ] . / - ' @ _`
/// and spaces.
fn check_image_name(name: &str, limit: usize) -> Result<(), CoreError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || " ()[]./-'@_".contains(c);
    if name.len() < 3 || name.len() > limit || !name.chars().all(allowed) {
        return Err(CoreError::Refused(format!(
            "the image name `{name}` is not one EC2 accepts: 3 to {limit} characters of letters, digits, spaces and ( ) [ ] . / - ' @ _; choose another --name"
        )));
    }
    Ok(())
}

/// The default image name prefix: `<tag>-<machine>`, with what EC2 refuses in a name made `-`.
fn default_prefix(tag: &str, machine: &str) -> String {
    format!("{tag}-{machine}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "()[]./-'@_".contains(c) { c } else { '-' })
        .take(IMAGE_NAME_MAX - 17 - SOURCE_SUFFIX_ROOM)
        .collect()
}

/// Runs a capture of machine `request.name` of deployment `tag`. See the module documentation.
pub async fn capture<P: Provider>(
    home: &Home,
    tag: &str,
    request: &CaptureRequest,
    progress: &dyn Progress,
    make_provider: impl FnOnce(&Deployment) -> Result<P, ProviderError>,
) -> Result<CaptureReport, CoreError> {
    let deployment = home.open(tag)?;
    let _lock = deployment.lock()?;
    // What needs no cloud first: the image's name.
    let now = compact_utc(std::time::SystemTime::now());
    let earlier: Option<Pending> = deployment.read_json(CAPTURE_FILE)?;
    let pid = Some(std::process::id());
    let pending = match earlier {
        Some(p) if p.machine == request.name && p.kind == request.kind.label() => {
            Pending { pid, ..p }
        }
        _ => Pending {
            machine: request.name.clone(),
            kind: request.kind.label().to_owned(),
            id: format!("{}-{now}", request.kind.label()),
            time: now,
            pid,
        },
    };
    let image_name = match &request.kind {
        CaptureKind::Snapshot { .. } => None,
        CaptureKind::Image { prefix, .. } => {
            let prefix = prefix.clone().unwrap_or_else(|| default_prefix(tag, &request.name));
            let name = format!("{prefix}-{}", pending.time);
            check_image_name(&name, IMAGE_NAME_MAX - SOURCE_SUFFIX_ROOM)?;
            Some(name)
        }
    };
    let provider = make_provider(&deployment)?;
    let machines = provider.machines().await?;
    let machine = machines.iter().find(|m| m.name == request.name).cloned().ok_or_else(|| {
        let known: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
        CoreError::Refused(format!(
            "no machine named `{}` in deployment `{tag}`; its machines are: {}",
            request.name,
            known.join(", ")
        ))
    })?;
    provider.check_capture(&machine)?;
    deployment.write_json(CAPTURE_FILE, &pending)?;
    let capture = Capture { id: pending.id.clone() };

    if request.stop && machine.state == MachineState::Running {
        // Before anything stops: an agent that cannot be reached stops the command here.
        let client = super::connect(&deployment, std::slice::from_ref(&machine))?;
        client.stop(&machine.name).await?;
    }
    if request.stop
        && let Err(error) = provider.stop_machine(&machine, progress).await
    {
        let back = come_back(&provider, &deployment, &machine, request, progress).await;
        return Err(CoreError::Refused(format!(
            "{}: the machine did not stop ({error}); nothing was captured; {}",
            machine.name,
            describe_back(&machine, &back)
        )));
    }
    let made = make(&provider, &machine, &capture, &request.kind, image_name, progress).await;
    let what = request.kind.label();
    let back = if request.stop {
        Some(come_back(&provider, &deployment, &machine, request, progress).await)
    } else {
        None
    };
    let (snapshots, image) = match (made, back) {
        (Ok(made), None | Some(Ok(_))) => made,
        (Ok((snapshots, image)), Some(Err(error))) => {
            return Err(CoreError::Refused(format!(
                "{}: made {}; but the machine did not come back: {error}; run the command again, or `flotilla status` to see it",
                machine.name,
                made_ids(&snapshots, &image)
            )));
        }
        (Err(error), None) => {
            return Err(CoreError::Refused(format!(
                "{}: the {what} failed: {error}; the machine kept running; run the command again to finish capture {}",
                machine.name, capture.id
            )));
        }
        (Err(error), Some(back)) => {
            return Err(CoreError::Refused(format!(
                "{}: the {what} failed: {error}; its binary was stopped and its instance stopped for it; {}; run the command again to finish capture {}",
                machine.name,
                describe_back(&machine, &back),
                capture.id
            )));
        }
    };
    deployment.remove_file(CAPTURE_FILE)?;
    // The address the provider lists now (a stopped and started machine may have another).
    let now_machine = provider
        .machines()
        .await?
        .into_iter()
        .find(|m| m.name == machine.name)
        .unwrap_or_else(|| machine.clone());
    Ok(CaptureReport {
        machine: machine.name.clone(),
        capture: capture.id,
        snapshots,
        image,
        stopped: request.stop,
        public_ip: now_machine.public_ip,
    })
}

fn made_ids(snapshots: &[DiskSnapshot], image: &Option<MachineImage>) -> String {
    let mut ids: Vec<&str> = snapshots.iter().map(|s| s.snapshot_id.as_str()).collect();
    ids.extend(image.iter().map(|i| i.image_id.as_str()));
    ids.join(", ")
}

async fn make<P: Provider>(
    provider: &P,
    machine: &Machine,
    capture: &Capture,
    kind: &CaptureKind,
    image_name: Option<String>,
    progress: &dyn Progress,
) -> Result<(Vec<DiskSnapshot>, Option<MachineImage>), ProviderError> {
    match kind {
        CaptureKind::Snapshot { full } => {
            Ok((provider.snapshot_disks(machine, capture, *full, progress).await?, None))
        }
        CaptureKind::Image { encrypt_key, .. } => {
            let request = ImageRequest {
                capture: capture.clone(),
                name: image_name.expect("an image capture has a name"),
                encrypt_key: encrypt_key.clone(),
            };
            Ok((Vec::new(), Some(provider.create_image(machine, &request, progress).await?)))
        }
    }
}

/// What was done to bring the machine back, or what failed.
fn describe_back(machine: &Machine, back: &Result<Back, CoreError>) -> String {
    match back {
        Ok(back) if back.machine.public_ip == machine.public_ip => {
            "the instance was started again and its binary restarted, healthy".to_owned()
        }
        Ok(back) => format!(
            "the instance was started again at {} (was {}), its binary restarted, healthy, and the new address published to {} machines",
            back.machine.public_ip, machine.public_ip, back.told
        ),
        Err(error) => format!("starting it again failed too: {error}"),
    }
}

/// A machine back from a capture's stop.
struct Back {
    /// As the provider lists it after its start.
    machine: Machine,
    /// The machines that took the new hosts.yaml.
    told: usize,
}

/// Starts `machine` again and waits for its agent; publishes its address, which may be new,
/// to every machine ([`publish_addresses`]) while its binary is still stopped (a binary that
/// binds its hosts.yaml address would otherwise start on the old one); then has the binary
/// start again and waits until it is healthy ([`serve_again`]).
async fn come_back<P: Provider>(
    provider: &P,
    deployment: &Deployment,
    machine: &Machine,
    request: &CaptureRequest,
    progress: &dyn Progress,
) -> Result<Back, CoreError> {
    let started = provider.start_machine(machine, progress).await?;
    if started.public_ip != machine.public_ip {
        // The identity names the machine's addresses: a fresh one for its agent's next start
        // (a running agent keeps the one it loaded, as at `create`'s re-run).
        let ca = deployment.certificate_authority()?;
        let one = std::slice::from_ref(&started);
        super::install_identities(provider, &ca, deployment.tag(), one, 1, progress).await?;
    }
    let client = super::connect(deployment, std::slice::from_ref(&started))?;
    let deadline = Instant::now() + request.agent_timeout;
    let departures = super::Departures::default();
    super::wait_for_agent(
        provider,
        &client,
        &started,
        deadline,
        request.agent_timeout,
        &departures,
    )
    .await
    .map_err(|failure| {
        CoreError::Refused(format!("{} was started, but {}", started.name, failure.reason))
    })?;
    let told = publish_addresses(provider, deployment, progress).await.map_err(|error| {
        CoreError::Refused(format!(
            "{} runs again at {}, but its address did not reach every machine: {error}; its binary is left stopped: run `flotilla update` with the deployment's spec to publish the address and start it",
            started.name, started.public_ip
        ))
    })?;
    serve_again(&client, &started, request, progress).await?;
    Ok(Back { machine: started, told })
}

/// hosts.yaml of the machines as the provider lists them now, sent to every machine with a
/// recorded manifest whose hosts.yaml differs, as a hosts-only change (the recorded manifest
/// with the new hosts.yaml: its agent applies it as `on_hosts_change` says and restarts
/// nothing else), all at once; each that took it is recorded. Returns how many took it.
async fn publish_addresses<P: Provider>(
    provider: &P,
    deployment: &Deployment,
    progress: &dyn Progress,
) -> Result<usize, CoreError> {
    let machines = provider.machines().await?;
    let mut recorded = super::saved_manifests(deployment)?;
    let hosts = super::publish_hosts(provider, deployment, &machines, progress).await?;
    let changes: Vec<(String, Manifest)> = machines
        .iter()
        .filter_map(|machine| {
            let manifest = recorded.get(&machine.name)?;
            (manifest.hosts.sha256 != hosts.sha256).then(|| {
                (machine.name.clone(), Manifest { hosts: hosts.clone(), ..manifest.clone() })
            })
        })
        .collect();
    if changes.is_empty() {
        return Ok(0);
    }
    let client = super::connect(deployment, &machines)?;
    let stage = progress.stage("publishing the new address", changes.len() as u64);
    let results: Vec<(String, Manifest, Result<_, MachineFailure>)> =
        futures_util::stream::iter(changes.into_iter().map(|(name, manifest)| {
            let (client, stage) = (&client, &stage);
            async move {
                let applied = apply_and_wait(client, &name, &manifest, &|| {}).await;
                stage.advance(1);
                (name, manifest, applied)
            }
        }))
        .buffer_unordered(super::DEFAULT_CONCURRENCY)
        .collect()
        .await;
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    let mut told = 0;
    for (name, manifest, applied) in results {
        match applied {
            Ok(_) => {
                recorded.insert(name, manifest);
                told += 1;
            }
            Err(failure) => {
                failures.insert(name, failure.to_string());
            }
        }
    }
    deployment.write_json(super::MANIFESTS_FILE, &recorded)?;
    if failures.is_empty() {
        return Ok(told);
    }
    let failed: Vec<String> = failures.values().cloned().collect();
    Err(CoreError::Refused(format!(
        "{} machines took the new hosts.yaml, {} did not: {}",
        told,
        failures.len(),
        failed.join("; ")
    )))
}

/// Has the agent of `started` start the binary again (it keeps a `Stop` across its own
/// restart) and waits until the binary is healthy (until the agent timeout).
async fn serve_again(
    client: &AgentClient,
    started: &Machine,
    request: &CaptureRequest,
    progress: &dyn Progress,
) -> Result<(), CoreError> {
    let deadline = Instant::now() + request.agent_timeout;
    let _stage = progress.stage(&format!("waiting for {} to serve again", started.name), 0);
    let mut schedule = PollSchedule::default();
    let mut restarted = false;
    loop {
        let answer = match client.status(&started.name).await {
            Ok(status) => {
                use flotilla_spec::api::BinaryState;
                match status.state {
                    BinaryState::Healthy | BinaryState::Idle => return Ok(()),
                    BinaryState::Stopped if !restarted => {
                        restart_binary(client, &started.name).await.map(|()| {
                            restarted = true;
                        })
                    }
                    other => Err(format!(
                        "its binary is {}{}",
                        other.as_str(),
                        status.health_error.map(|e| format!(" ({e})")).unwrap_or_default()
                    )),
                }
            }
            Err(error) if error.is_permanent() => return Err(error.into()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(why) = answer
            && Instant::now() >= deadline
        {
            return Err(CoreError::Refused(format!(
                "{} was started, but did not serve within {}: {why}",
                started.name,
                humantime::format_duration(request.agent_timeout)
            )));
        }
        tokio::time::sleep(schedule.next_delay()).await;
    }
}

async fn restart_binary(client: &AgentClient, name: &str) -> Result<(), String> {
    client.restart(name).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_checked_and_default_prefixes_made_valid() {
        assert!(check_image_name("demo-node-1-20261204T143056Z", 121).is_ok());
        for bad in ["ab", "a*b", &"x".repeat(122)] {
            let error = check_image_name(bad, 121).unwrap_err().to_string();
            assert!(error.contains("choose another --name"), "{error}");
        }
        assert_eq!(default_prefix("t:1", "node 1"), "t-1-node-1");
        let long = default_prefix(&"t".repeat(200), "n");
        assert!(check_image_name(&format!("{long}-20261204T143056Z"), 121).is_ok());
    }

    #[test]
    fn utc_times_are_compact() {
        let time = std::time::UNIX_EPOCH + Duration::from_secs(1_796_394_656);
        assert_eq!(compact_utc(time), "20261204T143056Z");
    }
}
