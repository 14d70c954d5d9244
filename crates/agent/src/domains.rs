//! The lifecycle engine's cloud half: a config's domains brought up (volumes, records), rolled
//! back when they fail, and undone at stop and on interruption, through the [`MachineCloud`]
//! the binary registered. One engine serves the fleet agent and standalone `flotilla fleetd`.
//!
//! Init ([`Engine::init`]): first, when the config creates volumes (`c`) and an earlier run
//! began an init here (the holds file exists), what a crashed run of this machine created and
//! never committed ([`MachineCloud::volumes_left_in_transit`]) is
//! unmounted and rolled back (deleted), before any claim could meet it at its device
//! (ec2fleetd's `clean_up_transc` was a stub). Then every domain in a task of its own, in
//! parallel. Within a domain, two chains run at once, each in file order:
//! 1. the volumes: each `attach-volume` entry claimed ([`MachineCloud::claim_volume`]), its
//!    kernel device found by serial (`devices`), then its `exec` hooks that run on the event
//!    (`on` honoured; ec2fleetd never ran a volume hook that had one), with the volume's macros;
//! 2. the records: each `update-route53` entry UPSERTs the machine's public or private address
//!    (the entry's `address`) at its name, macros expanded, ending with a dot. A record needs
//!    nothing from the volumes, and what serves behind the name starts only after `started`,
//!    so it does not wait for them (ec2fleetd's domain ran them after its volumes: at 100 ms
//!    a call, this saves two round trips of a domain's init);
//!
//! then, when both succeeded, the domain's volumes are committed
//! ([`MachineCloud::commit_volume`]).
//!
//! A failed entry with `critical: false` is rolled back alone (the holds of its kind its chain
//! took for it) and the domain goes on; a critical one stops the other chain at its next entry
//! (never inside a call, so nothing taken goes unrecorded), and once both chains have stopped,
//! everything the domain holds is rolled back in reverse order of taking (records restored,
//! volumes unmounted then released with [`Release::Rollback`]), and the domain fails. Other domains are
//! not rolled back. Every rollback failure is reported in the domain's outcome.
//!
//! Holds: what the engine holds (claimed volumes, record holds) is written to its holds file
//! in the instance directory after every change, so a restarted agent (or `fleetd`) knows what
//! an earlier run claimed: [`Engine::undo`] releases it, and a new init releases what it no
//! longer claims. The cloud's re-run invariant makes a repeated claim or upsert find what it
//! already holds.
//!
//! Events ([`Engine::volume_hooks`]): a volume's hooks whose `on` names a later event
//! (`started`, `interrupted`, `stopping`, …) run on it while the volume is held, with the
//! volume's macros: `interrupted` and `stopping` run before the undo, so a hook can still
//! unmount or flush the volume.
//!
//! Undo ([`Engine::undo`]): records first (every domain's, restored or removed), then volumes
//! in reverse order of claim, each unmounted (its mount points in `<root>/proc/self/mountinfo`)
//! before it is released with [`Release::Keep`]. A volume that cannot be unmounted is never
//! detached; it stays held and the failure is reported.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_spec::api::{HookOutcome, HookResult};
use flotilla_spec::fleetd::{
    AttachVolume, Domain, Event, FleetdConfig, RecordAddress, Route53Record, VolumeSource,
    expand_macros,
};
use serde::{Deserialize, Serialize};

use crate::devices;
use crate::instance_dir::write_file_atomically;
use crate::machine_cloud::{
    CallLog, ClaimedVolume, MachineCloud, MachineFacts, RecordChange, RecordHold, Release,
    VolumeClaim,
};

/// The holds file's name in the instance directory.
pub(crate) const HOLDS_FILE: &str = "lifecycle-holds.json";
/// How long a claim waits for a volume still held by a previous machine, and for EC2.
pub(crate) const VOLUME_WAIT: Duration = Duration::from_secs(300);

/// Where the engine works and what it knows of the machine.
#[derive(Debug)]
pub(crate) struct EngineContext {
    /// The cloud, logging its calls in `calls` ([`crate::machine_cloud::logged`]).
    pub(crate) cloud: Arc<dyn MachineCloud>,
    /// Every call made to the cloud this run, for `{transaction_log}`.
    pub(crate) calls: CallLog,
    pub(crate) facts: MachineFacts,
    pub(crate) public_ip: Option<IpAddr>,
    pub(crate) private_ip: Option<IpAddr>,
    /// Where devices, sysfs and the mount table are (`/` on a machine).
    pub(crate) device_root: PathBuf,
    pub(crate) holds_file: PathBuf,
    /// The working directory of volume hooks.
    pub(crate) work: PathBuf,
    pub(crate) volume_wait: Duration,
    pub(crate) device_wait: Duration,
}

/// One thing the engine holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Hold {
    Volume {
        volume: ClaimedVolume,
        /// The kernel's device, once found (to unmount it before release).
        device: Option<PathBuf>,
    },
    Record(RecordHold),
}

/// The kind of a hold: which of a domain's two chains takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldKind {
    Volume,
    Record,
}

impl HoldKind {
    fn of(self, hold: &Hold) -> bool {
        matches!(
            (self, hold),
            (HoldKind::Volume, Hold::Volume { .. }) | (HoldKind::Record, Hold::Record(_))
        )
    }
}

/// What the engine holds per domain, in the order it was taken; the holds file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holds {
    pub(crate) domains: BTreeMap<String, Vec<Hold>>,
}

impl Holds {
    pub(crate) fn is_empty(&self) -> bool {
        self.domains.values().all(Vec::is_empty)
    }
}

/// How a domain's init went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DomainOutcome {
    pub(crate) domain: String,
    /// Why the domain failed (a critical entry), when it did.
    pub(crate) failure: Option<String>,
    /// Non-critical entries that failed and were rolled back alone.
    pub(crate) skipped: Vec<String>,
    /// Rollback steps that failed: what stays held.
    pub(crate) rollback_failures: Vec<String>,
    /// The volume hooks that ran.
    pub(crate) hooks: Vec<HookResult>,
}

/// How init went, domain by domain in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InitOutcome {
    pub(crate) domains: Vec<DomainOutcome>,
    /// Holds of an earlier run the config no longer claims, and releasing them failed; and
    /// volumes a crashed run left in transit that could not be rolled back.
    pub(crate) stale_failures: Vec<String>,
    /// Volumes a crashed run left in transit, rolled back (deleted) at this init.
    pub(crate) swept: Vec<String>,
}

impl InitOutcome {
    /// Every failure, one line each (the `{error}` macro of `failed`).
    pub(crate) fn errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for domain in &self.domains {
            if let Some(failure) = &domain.failure {
                errors.push(format!("domains.{}: {failure}", domain.domain));
            }
            for failure in &domain.rollback_failures {
                errors.push(format!("domains.{}: rollback: {failure}", domain.domain));
            }
        }
        errors.extend(self.stale_failures.iter().cloned());
        errors
    }

    pub(crate) fn failed(&self) -> bool {
        self.domains.iter().any(|d| d.failure.is_some())
    }
}

/// The engine (see the module).
#[derive(Debug)]
pub(crate) struct Engine {
    context: EngineContext,
    holds: Mutex<Holds>,
    /// The holds file was there at start: an earlier run began an init (every init writes it
    /// before its first claim), so it may have left volumes in transit.
    earlier_run: bool,
    /// An init has begun in this engine.
    began: AtomicBool,
    /// The init under way is the machine's first (see [`VolumeClaim::first_run`]).
    first_run: AtomicBool,
}

/// Whether `config` needs the machine's cloud at init or undo.
pub(crate) fn needs_cloud_init(config: &FleetdConfig) -> bool {
    config.domains.iter().any(|d| !d.attach_volume.is_empty() || !d.update_route53.is_empty())
}

/// The macro values of one domain's hooks and notifications: `base`, the domain's name,
/// `{transaction_log}` as it stands, and `{all_json}` of them all.
pub(crate) fn domain_values(
    base: &BTreeMap<String, String>,
    domain: &str,
    calls: &CallLog,
) -> BTreeMap<String, String> {
    let mut values = base.clone();
    values.insert("domain".to_owned(), domain.to_owned());
    finish_values(&mut values, calls);
    values
}

/// Sets `{transaction_log}` to the calls so far, then `{all_json}` to every value.
fn finish_values(values: &mut BTreeMap<String, String>, calls: &CallLog) {
    values.insert("transaction_log".to_owned(), calls.render());
    let all = serde_json::to_string(&*values).expect("strings serialize to JSON");
    values.insert("all_json".to_owned(), all);
}

impl Engine {
    /// An engine that starts with what the holds file says an earlier run holds.
    pub(crate) fn new(context: EngineContext) -> Engine {
        let earlier = fs_err::read(&context.holds_file).ok();
        let earlier_run = earlier.is_some();
        let holds =
            earlier.and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        Engine {
            context,
            holds: Mutex::new(holds),
            earlier_run,
            began: AtomicBool::new(false),
            first_run: AtomicBool::new(false),
        }
    }

    /// What the engine holds now.
    pub(crate) fn holds(&self) -> Holds {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the holds and writes them to the holds file.
    fn change(&self, change: impl FnOnce(&mut Holds)) -> Result<(), String> {
        let mut holds = self.lock();
        change(&mut holds);
        let json = serde_json::to_vec_pretty(&*holds).expect("holds serialize to JSON");
        write_file_atomically(&self.context.holds_file, &json, 0o600).map_err(|e| {
            format!("could not record the holds in {}: {e}", self.context.holds_file.display())
        })
    }

    /// The machine's region.
    pub(crate) fn region(&self) -> &str {
        &self.context.facts.region
    }

    /// Brings every domain of `config` up (see the module), running volume hooks on `event`
    /// with `base` macro values. Holds of an earlier run that this init did not claim again are
    /// released afterwards.
    pub(crate) async fn init(
        self: &Arc<Self>,
        config: &FleetdConfig,
        event: Event,
        base: &BTreeMap<String, String>,
    ) -> InitOutcome {
        let earlier = self.holds();
        let mut outcome = InitOutcome::default();
        // The machine's first init only when no earlier run (nor an earlier init of this
        // engine) began one, and the holds file that tells the next run so is written.
        let first = !self.earlier_run && !self.began.swap(true, Ordering::AcqRel);
        let first = first && self.change(|_| {}).is_ok();
        self.first_run.store(first, Ordering::Release);
        self.sweep(config, &mut outcome).await;
        let mut tasks = Vec::new();
        for domain in &config.domains {
            let engine = self.clone();
            let domain = domain.clone();
            let base = base.clone();
            tasks
                .push(tokio::spawn(async move { engine.init_domain(&domain, event, &base).await }));
        }
        for (task, domain) in tasks.into_iter().zip(&config.domains) {
            outcome.domains.push(task.await.unwrap_or_else(|error| DomainOutcome {
                domain: domain.name.clone(),
                failure: Some(format!("the domain's task died: {error}")),
                ..DomainOutcome::default()
            }));
        }
        // What an earlier run held and this one did not claim again.
        let configured = |name: &str| config.domains.iter().any(|d| d.name == name);
        let _ = self.change(|h| h.domains.retain(|name, _| configured(name)));
        let now = self.holds();
        let mut stale = Vec::new();
        for (domain, holds) in earlier.domains {
            let current = now.domains.get(&domain).cloned().unwrap_or_default();
            for hold in holds {
                if !current.iter().any(|h| same_target(h, &hold)) {
                    stale.push((domain.clone(), hold));
                }
            }
        }
        if !stale.is_empty() {
            let mut failures = Vec::new();
            for (domain, hold) in stale.iter().rev() {
                if let Err(error) = self.release(hold, Release::Keep).await {
                    failures.push(format!(
                        "domains.{domain}: an earlier run's {}: {error}",
                        describe(hold)
                    ));
                    let kept = hold.clone();
                    let _ =
                        self.change(|h| h.domains.entry(domain.clone()).or_default().push(kept));
                }
            }
            outcome.stale_failures.extend(failures);
        }
        outcome
    }

    /// Rolls back the volumes a crashed run of this machine left in transit, for the domains of
    /// `config` that create volumes (see the module). Without an earlier run (no holds file at
    /// start) there is nothing to look for, and no round trip is spent on it.
    async fn sweep(&self, config: &FleetdConfig, outcome: &mut InitOutcome) {
        if !self.earlier_run {
            return;
        }
        let domains: Vec<String> = config
            .domains
            .iter()
            .filter(|d| d.attach_volume.iter().any(|v| v.source.contains(&VolumeSource::Create)))
            .map(|d| d.name.clone())
            .collect();
        if domains.is_empty() {
            return;
        }
        let leftovers =
            match self.context.cloud.volumes_left_in_transit(&self.context.facts, &domains).await {
                Ok(leftovers) => leftovers,
                Err(error) => {
                    outcome
                        .stale_failures
                        .push(format!("looking for volumes left in transit: {error}"));
                    return;
                }
            };
        for volume in leftovers {
            let id = volume.volume_id.clone();
            let hold = Hold::Volume { volume, device: None };
            match self.release(&hold, Release::Rollback).await {
                Ok(()) => {
                    tracing::info!("rolled back volume {id}, left in transit by an earlier run");
                    outcome.swept.push(id);
                }
                Err(error) => outcome
                    .stale_failures
                    .push(format!("volume {id}, left in transit by an earlier run: {error}")),
            }
        }
    }

    async fn init_domain(
        &self,
        domain: &Domain,
        event: Event,
        base: &BTreeMap<String, String>,
    ) -> DomainOutcome {
        // This run's holds replace the earlier run's for the domain as they are taken.
        let _ = self.change(|h| {
            h.domains.insert(domain.name.clone(), Vec::new());
        });
        let mut values = base.clone();
        values.insert("domain".to_owned(), domain.name.clone());
        // The two chains run at once (see the module); a critical failure in one stops the
        // other at its next entry, never in the middle of a call.
        let failed = AtomicBool::new(false);
        let mut volumes = DomainOutcome::default();
        let mut records = DomainOutcome::default();
        let volume_chain = async {
            for (index, entry) in domain.attach_volume.iter().enumerate() {
                if failed.load(Ordering::Acquire) {
                    break;
                }
                let field = format!("attach-volume[{index}]");
                let before = self.held_count(&domain.name, HoldKind::Volume);
                if let Err(error) =
                    self.init_volume(domain, entry, event, &values, &mut volumes).await
                {
                    let how = (entry.critical, HoldKind::Volume, before);
                    let result = self.entry_failed(domain, how, &field, error, &mut volumes).await;
                    if result.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    result?;
                }
            }
            Ok::<(), String>(())
        };
        let record_chain = async {
            for (index, record) in domain.update_route53.iter().enumerate() {
                if failed.load(Ordering::Acquire) {
                    break;
                }
                let field = format!("update-route53[{index}]");
                let before = self.held_count(&domain.name, HoldKind::Record);
                if let Err(error) = self.init_record(domain, record, &values).await {
                    let how = (record.critical, HoldKind::Record, before);
                    let result = self.entry_failed(domain, how, &field, error, &mut records).await;
                    if result.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    result?;
                }
            }
            Ok::<(), String>(())
        };
        let (volume_result, record_result) = tokio::join!(volume_chain, record_chain);
        let mut outcome = DomainOutcome { domain: domain.name.clone(), ..volumes };
        outcome.skipped.extend(records.skipped);
        outcome.rollback_failures.extend(records.rollback_failures);
        let result = match (volume_result, record_result) {
            (Ok(()), Ok(())) => self.commit(domain).await,
            // Both in flight when they failed: neither failure is dropped.
            (Err(volume), Err(record)) => Err(format!("{volume}; {record}")),
            (Err(failure), Ok(())) | (Ok(()), Err(failure)) => Err(failure),
        };
        if let Err(failure) = result {
            outcome.rollback_failures.extend(self.roll_back_domain(&domain.name).await);
            outcome.failure = Some(failure);
        }
        outcome
    }

    /// A failed entry, which took the holds of its kind after the first `before`: rolled back
    /// alone when not critical (`Ok`), else the domain fails.
    async fn entry_failed(
        &self,
        domain: &Domain,
        (critical, kind, before): (bool, HoldKind, usize),
        field: &str,
        error: String,
        outcome: &mut DomainOutcome,
    ) -> Result<(), String> {
        if critical {
            return Err(format!("{field}: {error}"));
        }
        outcome.skipped.push(format!("{field} (not critical): {error}"));
        outcome.rollback_failures.extend(self.roll_back_after(&domain.name, kind, before).await);
        Ok(())
    }

    async fn init_volume(
        &self,
        domain: &Domain,
        entry: &AttachVolume,
        event: Event,
        values: &BTreeMap<String, String>,
        outcome: &mut DomainOutcome,
    ) -> Result<(), String> {
        let claim = VolumeClaim {
            machine: self.context.facts.clone(),
            domain: domain.name.clone(),
            entry: entry.clone(),
            wait: self.context.volume_wait,
            first_run: self.first_run.load(Ordering::Acquire),
        };
        let volume = self.context.cloud.claim_volume(&claim).await.map_err(|e| e.to_string())?;
        let hold = Hold::Volume { volume: volume.clone(), device: None };
        self.change(|h| h.domains.entry(domain.name.clone()).or_default().push(hold))?;
        let device = devices::wait_for_device(
            &self.context.device_root,
            &volume.volume_id,
            &entry.device,
            self.context.device_wait,
        )
        .await?;
        let found = device.clone();
        self.change(|h| {
            // This volume's hold, wherever the record chain's holds put it in the list.
            for hold in h.domains.entry(domain.name.clone()).or_default() {
                if let Hold::Volume { volume: held, device } = hold
                    && held.volume_id == volume.volume_id
                {
                    *device = Some(found.clone());
                }
            }
        })?;
        let mut values = values.clone();
        values.extend(volume_macros(&volume, &device));
        finish_values(&mut values, &self.context.calls);
        let mut failures = Vec::new();
        for line in entry.exec.iter().filter(|spec| spec.runs_on(event)).flat_map(|s| &s.lines) {
            let result = crate::lifecycle::run_line(line, &values, &self.context.work).await;
            let result = HookResult { event, domain: domain.name.clone(), ..result };
            if result.outcome != HookOutcome::Succeeded {
                failures.push(format!("hook {:?}: {}", result.argv, result.message));
            }
            outcome.hooks.push(result);
            if !failures.is_empty() {
                // The volume's hooks set it up (mkfs, mount): the rest would run on a volume
                // that is not ready.
                break;
            }
        }
        match failures.pop() {
            Some(failure) => Err(format!("{}: {failure}", volume.volume_id)),
            None => Ok(()),
        }
    }

    async fn init_record(
        &self,
        domain: &Domain,
        record: &Route53Record,
        values: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let change =
            record_change(record, values, self.context.public_ip, self.context.private_ip)?;
        let hold = self.context.cloud.upsert_record(&change).await.map_err(|e| e.to_string())?;
        self.change(|h| h.domains.entry(domain.name.clone()).or_default().push(Hold::Record(hold)))
    }

    /// Commits the domain's volumes; a created volume is no longer deleted by a rollback.
    async fn commit(&self, domain: &Domain) -> Result<(), String> {
        let holds = self.lock().domains.get(&domain.name).cloned().unwrap_or_default();
        for hold in holds {
            if let Hold::Volume { volume, .. } = hold {
                self.context
                    .cloud
                    .commit_volume(&self.context.facts, &volume)
                    .await
                    .map_err(|e| format!("commit {}: {e}", volume.volume_id))?;
                let id = volume.volume_id.clone();
                self.change(|h| {
                    for hold in h.domains.entry(domain.name.clone()).or_default() {
                        if let Hold::Volume { volume, .. } = hold
                            && volume.volume_id == id
                        {
                            volume.created_now = false;
                        }
                    }
                })?;
            }
        }
        Ok(())
    }

    /// How many holds of `kind` `domain` has now.
    fn held_count(&self, domain: &str, kind: HoldKind) -> usize {
        self.lock().domains.get(domain).map_or(0, |h| h.iter().filter(|h| kind.of(h)).count())
    }

    /// Rolls back, in reverse, the holds of `kind` of `domain` taken after the first `keep` of
    /// that kind: what one failed entry took (its chain takes them one entry at a time, and the
    /// other chain takes only the other kind). The failures (those holds stay).
    async fn roll_back_after(&self, domain: &str, kind: HoldKind, keep: usize) -> Vec<String> {
        let taken: Vec<Hold> = self
            .lock()
            .domains
            .get(domain)
            .map(|h| h.iter().filter(|h| kind.of(h)).skip(keep).cloned().collect())
            .unwrap_or_default();
        let mut failures = Vec::new();
        for hold in taken.into_iter().rev() {
            match self.release(&hold, Release::Rollback).await {
                Ok(()) => {
                    let _ = self.change(|h| {
                        if let Some(list) = h.domains.get_mut(domain) {
                            list.retain(|other| other != &hold);
                        }
                    });
                }
                Err(error) => failures.push(format!("{}: {error}", describe(&hold))),
            }
        }
        failures
    }

    /// Rolls back everything `domain` holds, in reverse; the failures (those holds stay).
    async fn roll_back_domain(&self, domain: &str) -> Vec<String> {
        let holds = self.lock().domains.get(domain).cloned().unwrap_or_default();
        let mut failures = Vec::new();
        let mut kept = Vec::new();
        for hold in holds.into_iter().rev() {
            if let Err(error) = self.release(&hold, Release::Rollback).await {
                failures.push(format!("{}: {error}", describe(&hold)));
                kept.push(hold);
            }
        }
        kept.reverse();
        let _ = self.change(|h| {
            h.domains.insert(domain.to_owned(), kept);
        });
        failures
    }

    /// Undoes everything held (see the module): records, then volumes in reverse. Returns the
    /// failures; what failed stays held (and in the holds file) for a later run.
    pub(crate) async fn undo(&self) -> Vec<String> {
        let holds = self.holds();
        let mut failures = Vec::new();
        let mut ordered: Vec<(String, Hold)> = Vec::new();
        for (domain, list) in &holds.domains {
            for hold in list.iter().filter(|h| matches!(h, Hold::Record(_))).rev() {
                ordered.push((domain.clone(), hold.clone()));
            }
        }
        let mut volumes: Vec<(String, Hold)> = Vec::new();
        for (domain, list) in &holds.domains {
            for hold in list.iter().filter(|h| matches!(h, Hold::Volume { .. })) {
                volumes.push((domain.clone(), hold.clone()));
            }
        }
        ordered.extend(volumes.into_iter().rev());
        for (domain, hold) in ordered {
            match self.release(&hold, Release::Keep).await {
                Ok(()) => {
                    let _ = self.change(|h| {
                        if let Some(list) = h.domains.get_mut(&domain) {
                            list.retain(|other| other != &hold);
                        }
                    });
                }
                Err(error) => {
                    failures.push(format!("domains.{domain}: {}: {error}", describe(&hold)))
                }
            }
        }
        let _ = self.change(|h| h.domains.retain(|_, list| !list.is_empty()));
        failures
    }

    /// Releases one hold: a record restored; a volume unmounted, then released as `how`.
    async fn release(&self, hold: &Hold, how: Release) -> Result<(), String> {
        match hold {
            Hold::Record(record) => {
                self.context.cloud.restore_record(record).await.map_err(|e| e.to_string())
            }
            Hold::Volume { volume, device } => {
                let device = device.clone().or_else(|| {
                    devices::find_device(
                        &self.context.device_root,
                        &volume.volume_id,
                        &volume.device,
                    )
                });
                if let Some(device) = device {
                    devices::unmount_device(&self.context.device_root, &device).await?;
                }
                self.context
                    .cloud
                    .release_volume(&self.context.facts, volume, how)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

impl Engine {
    /// Runs the hooks of `domain`'s held volumes whose `on` names `event`, each line with its
    /// volume's macros, entries in file order; a failed line skips the rest of its volume's
    /// hooks. Hooks without `on` run once the volume is attached (at init), and so do those
    /// naming `starting`: init runs them, so this runs nothing on `starting`. Volumes that are
    /// not held (not claimed, or released already) run nothing.
    pub(crate) async fn volume_hooks(
        &self,
        domain: &Domain,
        event: Event,
        base: &BTreeMap<String, String>,
    ) -> Vec<HookResult> {
        let mut results = Vec::new();
        if event == Event::Starting {
            return results;
        }
        let held = self.lock().domains.get(&domain.name).cloned().unwrap_or_default();
        for entry in &domain.attach_volume {
            let named = |spec: &&flotilla_spec::fleetd::ExecSpec| {
                spec.on.as_ref().is_some_and(|events| events.contains(&event))
            };
            if !entry.exec.iter().any(|spec| named(&spec)) {
                continue;
            }
            let Some((volume, device)) = held.iter().find_map(|hold| match hold {
                Hold::Volume { volume, device } if volume.device == entry.device => {
                    Some((volume, device))
                }
                _ => None,
            }) else {
                continue;
            };
            let device = device
                .clone()
                .or_else(|| {
                    devices::find_device(
                        &self.context.device_root,
                        &volume.volume_id,
                        &entry.device,
                    )
                })
                .unwrap_or_else(|| PathBuf::from(&entry.device));
            let mut values = base.clone();
            values.insert("domain".to_owned(), domain.name.clone());
            values.extend(volume_macros(volume, &device));
            finish_values(&mut values, &self.context.calls);
            for line in entry.exec.iter().filter(named).flat_map(|spec| &spec.lines) {
                let result = crate::lifecycle::run_line(line, &values, &self.context.work).await;
                let result = HookResult { event, domain: domain.name.clone(), ..result };
                let failed = result.outcome != HookOutcome::Succeeded;
                results.push(result);
                if failed {
                    break;
                }
            }
        }
        results
    }
}

/// Whether two holds are of the same volume or record name.
fn same_target(a: &Hold, b: &Hold) -> bool {
    match (a, b) {
        (Hold::Volume { volume: x, .. }, Hold::Volume { volume: y, .. }) => {
            x.volume_id == y.volume_id
        }
        (Hold::Record(x), Hold::Record(y)) => {
            x.change.hosted_zone == y.change.hosted_zone && x.change.name == y.change.name
        }
        _ => false,
    }
}

fn describe(hold: &Hold) -> String {
    match hold {
        Hold::Volume { volume, .. } => format!("volume {}", volume.volume_id),
        Hold::Record(record) => {
            format!("record {} in {}", record.change.name, record.change.hosted_zone)
        }
    }
}

/// The volume macros of a volume's hooks.
pub(crate) fn volume_macros(volume: &ClaimedVolume, device: &Path) -> Vec<(String, String)> {
    vec![
        ("attach_source".to_owned(), volume.source.letter().to_string()),
        ("attach_op".to_owned(), volume.attached_now.to_string()),
        ("volume_id".to_owned(), volume.volume_id.clone()),
        ("volume_pool".to_owned(), volume.pool_name.clone().unwrap_or_default()),
        ("attached_device".to_owned(), device.display().to_string()),
    ]
}

/// The change a record entry asks for: its name expanded and ending with a dot, pointing at
/// the address it names.
pub(crate) fn record_change(
    record: &Route53Record,
    values: &BTreeMap<String, String>,
    public_ip: Option<IpAddr>,
    private_ip: Option<IpAddr>,
) -> Result<RecordChange, String> {
    let name = expand_macros(&record.name, values)?;
    let name = if name.ends_with('.') { name } else { format!("{name}.") };
    let address = match record.address {
        RecordAddress::Public => public_ip.ok_or_else(|| {
            format!("{name}: the machine has no public address (write `address: private`)")
        })?,
        RecordAddress::Private => private_ip
            .ok_or_else(|| format!("{name}: the machine's private address is not known"))?,
    };
    Ok(RecordChange {
        hosted_zone: record.hosted_zone.clone(),
        name,
        ttl: record.ttl,
        address,
        wait_in_sync: record.wait_insync,
    })
}

/// The hostname `config` asks for (`set-hostname`, or `hostname`), expanded, if any.
pub(crate) fn wanted_hostname(
    config: &FleetdConfig,
    values: &BTreeMap<String, String>,
) -> Result<Option<String>, String> {
    let Some(template) = &config.hostname else { return Ok(None) };
    let name = expand_macros(template, values)?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(format!(
            "`{name}` is not a hostname (letters, digits, `-` and `.`, at most 64 bytes)"
        ));
    }
    Ok(Some(name))
}

/// Sets the transient hostname (the kernel's; what `hostname` prints until the next boot).
pub(crate) fn set_hostname(name: &str) -> Result<(), String> {
    rustix::system::sethostname(name.as_bytes())
        .map_err(|e| format!("could not set the hostname to `{name}`: {e}"))
}

#[cfg(test)]
mod tests;
