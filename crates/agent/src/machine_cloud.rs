//! The machine's cloud: what a lifecycle config asks of the platform the machine runs on (data
//! volumes, DNS records, notifications), behind one trait so that the agent crate stays free of
//! any SDK. The binary registers an implementation (flotilla-aws's, on AWS and for standalone
//! `flotilla fleetd`) as it registers the `s3://` fetcher; under the local provider there is
//! none, and a config that needs one is refused before anything runs.
//!
//! Call order, per machine (the lifecycle engine keeps it):
//! - [`MachineCloud::prepare`] while the `starting` hooks run, before anything else: no
//!   request, only what the first request would otherwise make on its way.
//! 0. [`MachineCloud::volumes_left_in_transit`] once at init, beside the claims, when the
//!    config creates volumes (`c`): what a crashed run of this machine created and never
//!    committed, which the engine unmounts and releases with [`Release::Rollback`] (deleted).
//! 1. [`MachineCloud::claim_volume`] for each `attach-volume` entry of a domain, in order. The
//!    call tries the entry's sources left to right, waits (bounded) while a fixed or pool volume
//!    is still held by a previous machine, claims pool volumes atomically, attaches, and returns
//!    once EC2 reports the attachment `attached`. The engine then finds the device itself (by
//!    the volume's NVMe serial, under its device root) and runs the entry's hooks.
//! 2. [`MachineCloud::upsert_record`] for each `update-route53` entry, in order, at the same
//!    time as the domain's claims (a record needs the machine's address, not its volumes; the
//!    service behind the name starts only after the whole domain is up).
//! 3. [`MachineCloud::commit_volume`] once the whole domain is up: a created volume loses its
//!    in-transit marks and joins its pool.
//! 4. [`MachineCloud::notify`] on events, any time after the facts are known.
//! 5. At stop, on interruption, or as a rollback of a domain that failed: records first
//!    ([`MachineCloud::restore_record`]), then volumes in reverse order
//!    ([`MachineCloud::release_volume`], only after the engine unmounted the device).
//!
//! Re-run invariant: every call is safe to repeat after a crash. A claim finds the volume this
//! instance already holds for the same domain, pool and device (`attach_op: false`), a created
//! volume is found again by its transaction tag instead of being created twice (both lookups
//! are skipped only on the machine's first run, [`VolumeClaim::first_run`], when the holds file
//! proves no earlier run began), an upsert of the
//! record already pointing here changes nothing but its hold, and releasing a volume that is no
//! longer attached or restoring a record already restored succeeds. A crash between creating a
//! volume and recording its hold leaves it only in the cloud: marked in transit with this
//! instance and that run's transaction, which [`MachineCloud::volumes_left_in_transit`] finds
//! on the next run (never the current transaction's, which its claims take up again).
//!
//! Every value here is serializable, so the engine keeps its holds in the instance directory and
//! a restarted agent releases what a previous run claimed.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_spec::fleetd::{AttachVolume, NotifyBackend, VolumeSource};
use serde::{Deserialize, Serialize};

/// The future a [`MachineCloud`] call returns.
pub type CloudFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CloudError>> + Send + 'a>>;

/// What the platform does for a machine's lifecycle config.
pub trait MachineCloud: Send + Sync + fmt::Debug {
    /// Finds or makes the volume `claim.entry` names and attaches it to this instance (see the
    /// module's call order). Fails with every source tried and why each gave nothing.
    fn claim_volume<'a>(&'a self, claim: &'a VolumeClaim) -> CloudFuture<'a, ClaimedVolume>;

    /// Marks a claimed volume as kept: a volume created by this claim joins its pool.
    fn commit_volume<'a>(
        &'a self,
        machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
    ) -> CloudFuture<'a, ()>;

    /// Detaches a volume from this instance (passing the instance id) and waits, bounded, until
    /// it is `available`. [`Release::Keep`] tags it with the time it was last used, for the
    /// pool's preference, and commits a volume this claim created and never committed (it
    /// joins its pool rather than staying in transit); [`Release::Rollback`] also deletes a
    /// volume this claim created and never committed.
    fn release_volume<'a>(
        &'a self,
        machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
        release: Release,
    ) -> CloudFuture<'a, ()>;

    /// Saves what the record's name holds, then UPSERTs it to point at `change.address`; waits
    /// for `INSYNC` when asked.
    fn upsert_record<'a>(&'a self, change: &'a RecordChange) -> CloudFuture<'a, RecordHold>;

    /// Puts back what the name held before the upsert, or deletes the record when it held
    /// nothing.
    fn restore_record<'a>(&'a self, hold: &'a RecordHold) -> CloudFuture<'a, ()>;

    /// Sends one notification, once; the engine retries with its own schedule.
    fn notify<'a>(&'a self, notification: &'a Notification) -> CloudFuture<'a, ()>;

    /// The volumes this instance created for one of `domains` in another transaction than
    /// `machine`'s and never committed (a crashed run's), as their claims returned them
    /// (`created_now`), for the engine to unmount and roll back.
    fn volumes_left_in_transit<'a>(
        &'a self,
        machine: &'a MachineFacts,
        domains: &'a [String],
    ) -> CloudFuture<'a, Vec<ClaimedVolume>>;

    /// The EBS volumes attached to instance `instance_id` of `region`, with the device names
    /// they were attached at (the instance's block device mappings): how the agent finds the
    /// volume of each data disk it mounts (`disks.rs`).
    fn attached_volumes<'a>(
        &'a self,
        region: &'a str,
        instance_id: &'a str,
    ) -> CloudFuture<'a, Vec<AttachedVolume>>;

    /// Makes ready, in `region`, what the first volume or record call would otherwise make
    /// on its way (the SDK's configuration, the region's clients, the TLS roots), so that the
    /// chain of round trips after the `starting` hooks does not wait for it: the engine's
    /// callers run it while those hooks run. Sends no request; nothing by default.
    fn prepare<'a>(&'a self, region: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        let _ = region;
        Box::pin(std::future::ready(()))
    }
}

/// A volume attached to an instance, as its block device mapping names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedVolume {
    /// The device name it was attached at (`/dev/sdf`).
    pub device: String,
    pub volume_id: String,
}

/// The facts about this machine every call needs, read from IMDS (or, in a fleet, the
/// manifest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    pub instance_id: String,
    pub region: String,
    pub zone: String,
    /// `{instance_index}`: the machine's index in its entry (`node-3` → 3) in a fleet,
    /// `ami-launch-index` standalone.
    pub index: Option<u32>,
    /// `--transc_id` (standalone), or the machine's name and boot in a fleet: the tag that marks
    /// what this run made before it is committed.
    pub transaction_id: String,
}

/// One `attach-volume` entry to satisfy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeClaim {
    pub machine: MachineFacts,
    /// The domain the entry belongs to (a pool is a domain and a pool name).
    pub domain: String,
    pub entry: AttachVolume,
    /// How long to wait for a fixed or pool volume still attached elsewhere, and for EC2 to
    /// report the attachment.
    pub wait: Duration,
    /// No earlier run on this machine began an init (the engine found no holds file and has
    /// written it before this claim): no claim of this machine can have attached a volume here
    /// or created one in this transaction, so the claim skips the two lookups a re-run needs
    /// and goes straight to its sources (one round trip fewer on a machine's first boot).
    pub first_run: bool,
}

/// A volume attached to this instance by a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedVolume {
    pub volume_id: String,
    /// The source letter that gave it.
    pub source: VolumeSource,
    /// The device name passed to AttachVolume (`/dev/sdf`); the kernel's name is found by
    /// serial.
    pub device: String,
    /// The domain and pool it was claimed for.
    pub domain: String,
    pub pool_name: Option<String>,
    /// This claim attached it (`{attach_op}`); false when it was attached already.
    pub attached_now: bool,
    /// This claim created it (`c`), and it is not committed yet.
    pub created_now: bool,
}

/// How a released volume is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Release {
    /// Detached and kept for the next machine (stop, interruption).
    Keep,
    /// Detached because the domain failed; deleted when this claim created it.
    Rollback,
}

/// One `update-route53` entry with its values known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordChange {
    pub hosted_zone: String,
    /// Macros expanded, ending with a dot.
    pub name: String,
    pub ttl: u32,
    pub address: IpAddr,
    /// Wait (bounded) until Route 53 reports the change `INSYNC`.
    pub wait_in_sync: bool,
}

/// What an upsert replaced, so it can be put back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHold {
    pub change: RecordChange,
    /// The record set of the same name and type before the upsert, if there was one.
    pub previous: Option<PreviousRecord>,
}

/// A record set as it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousRecord {
    /// `A` or `AAAA`.
    pub record_type: String,
    pub ttl: Option<u32>,
    pub values: Vec<String>,
}

/// One notification to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub backend: NotifyBackend,
    pub region: String,
    /// SNS: the topic's ARN.
    pub topic: Option<String>,
    /// SQS: the queue's URL.
    pub queue_url: Option<String>,
    /// SNS's `Subject`; on SQS a message attribute `subject` (ec2fleetd dropped it).
    pub subject: String,
    pub body: String,
}

/// Why a call to the machine's cloud failed: the operation, the ids, the service's code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct CloudError {
    /// What was being done, with the ids (`AttachVolume vol-… to i-…`).
    pub operation: String,
    /// The service's error code (`VolumeInUse`, `NoSuchHostedZone`), when it gave one.
    pub code: Option<String>,
    /// What happened and what to check.
    pub message: String,
    /// Whether trying again may succeed (throttling, a 5xx, a volume still detaching).
    pub retryable: bool,
}

/// Every call this run made to the machine's cloud, in order: what the `{transaction_log}`
/// macro expands to. Each entry keeps ec2fleetd's shape (`platform`, `domain`, `method`,
/// `param`, `dry`), where `method` is one of this module's operations (each stands for the
/// AWS calls it makes) and `param` its argument as JSON; `dry` is always false, as flotilla
/// has no dry run of a lifecycle. A notification or a record has no domain of its own: `""`.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallLog(Arc<Mutex<Vec<LoggedCall>>>);

/// One entry of a [`CallLog`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct LoggedCall {
    pub(crate) platform: &'static str,
    pub(crate) domain: String,
    pub(crate) method: &'static str,
    pub(crate) param: serde_json::Value,
    pub(crate) dry: bool,
}

impl CallLog {
    fn push(&self, domain: &str, method: &'static str, param: &impl Serialize) {
        let call = LoggedCall {
            platform: "aws",
            domain: domain.to_owned(),
            method,
            param: serde_json::to_value(param).unwrap_or(serde_json::Value::Null),
            dry: false,
        };
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(call);
    }

    /// The calls so far.
    pub(crate) fn calls(&self) -> Vec<LoggedCall> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The calls so far as JSON, indented with tabs as ec2fleetd's is.
    pub(crate) fn render(&self) -> String {
        let calls = self.calls();
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        calls.serialize(&mut serializer).expect("logged calls serialize to JSON");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

/// `inner`, with every call logged in `log` before it is made.
pub(crate) fn logged(inner: Arc<dyn MachineCloud>, log: &CallLog) -> Arc<dyn MachineCloud> {
    Arc::new(LoggedCloud { inner, log: log.clone() })
}

/// See [`logged`].
#[derive(Debug)]
struct LoggedCloud {
    inner: Arc<dyn MachineCloud>,
    log: CallLog,
}

impl MachineCloud for LoggedCloud {
    fn claim_volume<'a>(&'a self, claim: &'a VolumeClaim) -> CloudFuture<'a, ClaimedVolume> {
        self.log.push(&claim.domain, "claim_volume", claim);
        self.inner.claim_volume(claim)
    }

    fn commit_volume<'a>(
        &'a self,
        machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
    ) -> CloudFuture<'a, ()> {
        self.log.push(&volume.domain, "commit_volume", volume);
        self.inner.commit_volume(machine, volume)
    }

    fn release_volume<'a>(
        &'a self,
        machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
        release: Release,
    ) -> CloudFuture<'a, ()> {
        let param = serde_json::json!({ "volume": volume, "release": release });
        self.log.push(&volume.domain, "release_volume", &param);
        self.inner.release_volume(machine, volume, release)
    }

    fn upsert_record<'a>(&'a self, change: &'a RecordChange) -> CloudFuture<'a, RecordHold> {
        self.log.push("", "upsert_record", change);
        self.inner.upsert_record(change)
    }

    fn restore_record<'a>(&'a self, hold: &'a RecordHold) -> CloudFuture<'a, ()> {
        self.log.push("", "restore_record", hold);
        self.inner.restore_record(hold)
    }

    fn notify<'a>(&'a self, notification: &'a Notification) -> CloudFuture<'a, ()> {
        self.log.push("", "notify", notification);
        self.inner.notify(notification)
    }

    fn volumes_left_in_transit<'a>(
        &'a self,
        machine: &'a MachineFacts,
        domains: &'a [String],
    ) -> CloudFuture<'a, Vec<ClaimedVolume>> {
        self.log.push(&domains.join(","), "volumes_left_in_transit", &domains);
        self.inner.volumes_left_in_transit(machine, domains)
    }

    fn attached_volumes<'a>(
        &'a self,
        region: &'a str,
        instance_id: &'a str,
    ) -> CloudFuture<'a, Vec<AttachedVolume>> {
        self.inner.attached_volumes(region, instance_id)
    }

    fn prepare<'a>(&'a self, region: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        self.inner.prepare(region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_operation_and_code() {
        let error = CloudError {
            operation: "AttachVolume vol-1 to i-2".to_owned(),
            code: Some("VolumeInUse".to_owned()),
            message: "the volume is attached to i-3".to_owned(),
            retryable: true,
        };
        assert_eq!(
            error.to_string(),
            "AttachVolume vol-1 to i-2 failed (VolumeInUse): the volume is attached to i-3"
        );
        let without_code = CloudError { code: None, ..error };
        assert_eq!(
            without_code.to_string(),
            "AttachVolume vol-1 to i-2 failed: the volume is attached to i-3"
        );
    }
}
