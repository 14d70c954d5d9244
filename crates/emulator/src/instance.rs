//! What the emulator reports and accepts about instances, as JSON: moto's view
//! (`GET /_flotilla/instances`), the booter's (`GET /instances`), and the IMDS event triggers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One instance as moto knows it, in any account and region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub account_id: String,
    pub region: String,
    /// `pending`, `running`, `shutting-down`, `terminated`, `stopping` or `stopped`.
    pub state: String,
    /// A loopback address from the emulator's pool; present once the instance is running.
    pub public_ip: Option<Ipv4Addr>,
    pub private_ip: Option<String>,
    pub private_dns_name: Option<String>,
    pub mac: Option<String>,
    pub instance_type: String,
    pub availability_zone: Option<String>,
    pub image_id: Option<String>,
    /// What the instance's image starts at boot.
    #[serde(default)]
    pub image_boot: ImageBoot,
    pub architecture: Option<String>,
    pub ami_launch_index: u32,
    /// Base64, as RunInstances received it.
    pub user_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// The instance profile's ARN.
    pub iam_instance_profile: Option<String>,
    /// The first role of that instance profile.
    pub iam_role: Option<String>,
    /// The access key id that launched it.
    pub scope: String,
    /// `spot` or `on-demand`.
    pub lifecycle: String,
    /// RFC 3339.
    pub launch_time: String,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    /// Why the instance is in its state (EC2's `StateReason`), when moto or the emulator said.
    #[serde(default)]
    pub state_reason: Option<StateReason>,
    /// The notice of a reclaimed spot instance, as its IMDS serves it (`spot/instance-action`):
    /// it is terminated at `time` with [`StateReason::spot_reclaim`].
    #[serde(default)]
    pub spot_interruption: Option<SpotInterruption>,
    /// Under its scope's random reclaims: how long after it started running (or after the
    /// setting changed) its notice was drawn to come, in milliseconds.
    #[serde(default)]
    pub spot_reclaim_after_ms: Option<u64>,
    /// Its EBS volumes (the root volume too), with their attachment state.
    #[serde(default)]
    pub volumes: Vec<VolumeAttachmentInfo>,
}

/// The tag of a registered image that says what it starts at boot ([`ImageBoot`]): a test
/// registers an image with `flotilla-emulator:boot=none` to have one without cloud-init.
pub const IMAGE_BOOT_TAG: &str = "flotilla-emulator:boot";

/// What an instance's image starts at boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageBoot {
    /// cloud-init runs the user data, as on the images flotilla boots by default.
    #[default]
    CloudInit,
    /// Nothing runs the user data (an image without cloud-init or systemd, tagged
    /// [`IMAGE_BOOT_TAG`]`=none`): the instance runs, its IMDS answers, and no agent starts.
    None,
}

/// One EBS volume of an instance, as moto reports it to the booter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachmentInfo {
    pub volume_id: String,
    /// The device name AttachVolume was given (`/dev/sdf`).
    pub device: String,
    /// `attaching`, `attached`, `detaching` or `detached`.
    pub state: String,
    /// The volume's size in GiB: its device file is a sparse file of that size.
    #[serde(default)]
    pub size_gib: u64,
}

/// EC2's `StateReason` of an instance: a code and a message that starts with the code, as AWS
/// shapes them (`Server.InternalError: Internal error on launch`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateReason {
    pub code: String,
    pub message: String,
}

impl StateReason {
    /// The code, and `text` after it in the message.
    pub fn new(code: &str, text: &str) -> StateReason {
        StateReason { code: code.to_owned(), message: format!("{code}: {text}") }
    }

    /// How the emulator ends an instance it cannot boot, or whose user data failed:
    /// `Server.InternalError` (AWS's code for an instance that fails at launch), with a message
    /// `Server.InternalError: flotilla-emulator: <cause>`.
    pub fn boot_failure(cause: &str) -> StateReason {
        StateReason::new(BOOT_FAILURE_CODE, &format!("flotilla-emulator: {cause}"))
    }
}

/// The StateReason code of an instance the emulator could not boot.
pub const BOOT_FAILURE_CODE: &str = "Server.InternalError";

/// The StateReason code of a reclaimed spot instance.
pub const SPOT_RECLAIM_CODE: &str = "Server.SpotInstanceTermination";

impl StateReason {
    /// How EC2 ends a reclaimed spot instance: `Server.SpotInstanceTermination: Spot instance
    /// termination`.
    pub fn spot_reclaim() -> StateReason {
        StateReason::new(SPOT_RECLAIM_CODE, "Spot instance termination")
    }
}

/// `GET /_flotilla/instances[?since=G]`: everything, or `unchanged` when nothing changed since
/// generation `G`.
#[derive(Debug, Deserialize)]
pub(crate) struct InstanceListing {
    pub(crate) generation: u64,
    #[serde(default)]
    pub(crate) unchanged: bool,
    #[serde(default)]
    pub(crate) instances: Vec<InstanceInfo>,
}

/// An instance the booter booted (or tried to).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootedInstance {
    pub id: String,
    pub scope: String,
    pub public_ip: Ipv4Addr,
    /// The user-data script's process (its process group has the same id).
    pub pid: Option<u32>,
    /// `http://<public ip>:1338`.
    pub imds_endpoint: String,
    /// `FLOTILLA_ROOT` of the script.
    pub root: PathBuf,
    pub state: BootState,
    /// The script's exit status, once it exited.
    pub exit_code: Option<i32>,
    /// Why booting failed.
    pub error: Option<String>,
}

/// Where a booted instance is in its life, as the booter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootState {
    /// The user-data script (and what it exec'd) runs; IMDS answers.
    Running,
    /// The script exited by itself; IMDS still answers while the instance runs.
    Exited,
    /// The instance left `running`; its processes are being stopped.
    Stopping,
    /// Its processes and IMDS are gone.
    Stopped,
    /// Booting failed (see `error`); retried when the instance gets another address.
    Failed,
}

/// What `spot/instance-action` announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpotAction {
    Terminate,
    Stop,
    Hibernate,
}

/// `PUT /instances/{id}/spot-interruption`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotInterruption {
    pub action: SpotAction,
    /// RFC 3339; default: two minutes after the trigger, as AWS warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// `PUT /instances/{id}/rebalance`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceRecommendation {
    /// RFC 3339; default: the trigger's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice_time: Option<String>,
}

/// One entry of `PUT /instances/{id}/scheduled-events` (`{"events": [...]}`). IMDS answers
/// them as `{Code, Description, EventId, NotBefore, NotAfter, State}` with times in the
/// `21 Jan 2026 09:00:43 GMT` layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledEvent {
    /// instance-reboot, system-reboot, system-maintenance, instance-retirement, instance-stop.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Default: `instance-event-` and 17 random hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// RFC 3339; default: the trigger's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// RFC 3339; default: seven days after `not_before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// active (default), completed or canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The body of `PUT /instances/{id}/scheduled-events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledEvents {
    pub events: Vec<ScheduledEvent>,
}

/// `PUT /scopes/{scope}/agent-seed`: whether that scope's instances get `FLOTILLA_AGENT_SEED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSeedSwitch {
    pub enabled: bool,
}
