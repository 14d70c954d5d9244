//! An entry's data disks (`disks:` with a `mount`), made ready before the binary starts: the
//! first boot step, before the boot additions' files and commands, which may use them.
//!
//! For each disk of the manifest, in device order, stopping at the first failure (the binary
//! then stays stopped, as after a failed critical boot step):
//!
//! 1. **Volume.** The volume attached at the disk's device (`/dev/sdf`, or `/dev/xvdf`: one
//!    device) is read from the instance's block device mappings through the machine cloud
//!    ([`MachineCloud::attached_volumes`], one `DescribeInstances` for all disks), the
//!    instance id from IMDS. On Nitro the kernel's device name is not the one asked, so:
//! 2. **Device.** The kernel's device is found by the volume's NVMe serial under the device
//!    root, as for lifecycle volumes (`devices.rs`, waited for on its schedule).
//! 3. **Already mounted?** When the mount point (under the device root) is a mount point of
//!    this device (its device numbers, or a loop device backed by it), nothing is done: an
//!    agent restart or a new version does not mount twice. Something else mounted there is an
//!    error.
//! 4. **Format only an empty disk.** `blkid -p` probes the device: exit status 2 (nothing
//!    found) means empty, and the disk is formatted with `mkfs.<filesystem> -q -L <label>`, the
//!    label the device's name (`sdf`); any filesystem or partition table found means the disk
//!    is never formatted (a clone keeps its data), whatever `filesystem` says.
//! 5. **Mount.** The mount point is made (parents too) and `mount DEVICE POINT` run (util-linux
//!    sets up a loop device for a regular file, as the emulator's devices are).
//!
//! Errors name the device, the volume id and the command's stderr. What this agent run found
//! or mounted is kept in [`MountedDisks`]; at stop, once the binary is down, the agent unmounts
//! it (`umount`), so the next run (or the machine's shutdown) finds the disks as they were.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_spec::api::{BootOutcome, BootStep, BootStepKind};
use flotilla_spec::disk::{Filesystem, device_letter};
use flotilla_spec::manifest::ManifestDisk;

use crate::devices;
use crate::imds::ImdsClient;
use crate::machine_cloud::{AttachedVolume, MachineCloud};

/// How long `blkid`, `mount` and `umount` may run.
const SHORT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `mkfs` may run (a large disk's inode tables).
const MKFS_TIMEOUT: Duration = Duration::from_secs(1800);
/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// What the agent needs to find a disk's volume: the machine's cloud, the IMDS that names the
/// instance, the region.
#[derive(Clone, Debug)]
pub(crate) struct DiskAccess {
    pub(crate) cloud: Option<Arc<dyn MachineCloud>>,
    pub(crate) imds_endpoint: Option<String>,
    pub(crate) region: String,
    /// How long a device may take to appear.
    pub(crate) device_wait: Duration,
    pub(crate) mounted: MountedDisks,
}

/// The mount points this agent run mounted or found mounted, to unmount at stop.
#[derive(Clone, Debug, Default)]
pub(crate) struct MountedDisks(Arc<Mutex<Vec<PathBuf>>>);

impl MountedDisks {
    fn add(&self, point: &Path) {
        let mut points = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !points.iter().any(|p| p == point) {
            points.push(point.to_path_buf());
        }
    }

    /// Unmounts every mount point, the last mounted first; returns what failed, in words.
    pub(crate) async fn unmount_all(&self) -> Vec<String> {
        let points: Vec<PathBuf> =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        let mut failures = Vec::new();
        for point in points.iter().rev() {
            if let Err(error) =
                run(&["umount".into(), point.display().to_string()], SHORT_COMMAND_TIMEOUT).await
            {
                failures.push(format!("umount {}: {error}", point.display()));
            }
        }
        failures
    }
}

/// Makes every disk ready (see the module's order); one step per disk, none after a failure.
pub(crate) async fn prepare(
    disks: &[ManifestDisk],
    root: &Path,
    access: &DiskAccess,
) -> Vec<BootStep> {
    let failed = |disk: &ManifestDisk, message: String| BootStep {
        kind: BootStepKind::Disk,
        target: disk.mount.clone(),
        outcome: BootOutcome::Failed,
        critical: true,
        message: Some(message),
        exit_code: None,
        output: None,
    };
    let Some(first) = disks.first() else {
        return Vec::new();
    };
    let volumes = match attached_volumes(access).await {
        Ok(volumes) => volumes,
        Err(error) => return vec![failed(first, error)],
    };
    let mut steps = Vec::new();
    for disk in disks {
        let step = match volume_at(&volumes, &disk.device) {
            None => failed(
                disk,
                format!(
                    "no volume is attached at {} (the instance's block device mappings: {})",
                    disk.device,
                    describe(&volumes)
                ),
            ),
            Some(volume_id) => match prepare_disk(disk, volume_id, root, access).await {
                Ok(done) => BootStep {
                    kind: BootStepKind::Disk,
                    target: disk.mount.clone(),
                    outcome: if done.changed() {
                        BootOutcome::Applied
                    } else {
                        BootOutcome::Unchanged
                    },
                    critical: true,
                    message: Some(done.describe(&disk.device, volume_id)),
                    exit_code: None,
                    output: None,
                },
                Err(error) => failed(disk, format!("{} ({volume_id}): {error}", disk.device)),
            },
        };
        let stop = step.outcome == BootOutcome::Failed;
        steps.push(step);
        if stop {
            break;
        }
    }
    steps
}

/// What was done to one disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DiskDone {
    /// It was mounted at its mount point already.
    AlreadyMounted { device: PathBuf },
    /// Mounted now; `formatted` with this filesystem when it was empty, else the filesystem
    /// it had.
    Mounted { device: PathBuf, formatted: Option<Filesystem>, found: Option<String> },
}

impl DiskDone {
    fn changed(&self) -> bool {
        matches!(self, DiskDone::Mounted { .. })
    }

    fn describe(&self, device: &str, volume_id: &str) -> String {
        match self {
            DiskDone::AlreadyMounted { device: kernel } => {
                format!("{device} ({volume_id}, {}) already mounted", kernel.display())
            }
            DiskDone::Mounted { device: kernel, formatted: Some(filesystem), .. } => format!(
                "{device} ({volume_id}, {}) was empty: formatted {} and mounted",
                kernel.display(),
                filesystem.as_str()
            ),
            DiskDone::Mounted { device: kernel, found, .. } => format!(
                "{device} ({volume_id}, {}) has {}: not formatted; mounted",
                kernel.display(),
                found.as_deref().unwrap_or("a filesystem")
            ),
        }
    }
}

/// Steps 2 to 5 for one disk whose volume is `volume_id`.
async fn prepare_disk(
    disk: &ManifestDisk,
    volume_id: &str,
    root: &Path,
    access: &DiskAccess,
) -> Result<DiskDone, String> {
    let device =
        devices::wait_for_device(root, volume_id, &disk.device, access.device_wait).await?;
    let point = devices::under_root(root, Path::new(&disk.mount));
    let done = mount_disk(&device, &point, disk.filesystem, &label_of(&disk.device)).await?;
    access.mounted.add(&point);
    Ok(done)
}

/// Steps 3 to 5: `device` (a block device, or a regular file under the emulator) mounted at
/// `point`, formatted first with `filesystem` only when it holds nothing.
pub(crate) async fn mount_disk(
    device: &Path,
    point: &Path,
    filesystem: Filesystem,
    label: &str,
) -> Result<DiskDone, String> {
    if is_mounted_at(device, point)? {
        return Ok(DiskDone::AlreadyMounted { device: device.to_path_buf() });
    }
    let (formatted, found) = match format_if_empty(device, filesystem, label).await? {
        Probe::Empty => (Some(filesystem), None),
        Probe::Holds(found) => (None, Some(found)),
    };
    fs_err::create_dir_all(point).map_err(|e| format!("making the mount point: {e}"))?;
    run(
        &["mount".into(), device.display().to_string(), point.display().to_string()],
        SHORT_COMMAND_TIMEOUT,
    )
    .await?;
    Ok(DiskDone::Mounted { device: device.to_path_buf(), formatted, found })
}

/// What `blkid -p` found on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Nothing: no filesystem, no partition table.
    Empty,
    /// A filesystem (its type) or a partition table (`partition table <type>`).
    Holds(String),
}

/// Step 4: formats `device` with `filesystem` when `blkid -p` finds nothing on it; returns what
/// the probe found (a disk that holds something is left as it is).
pub(crate) async fn format_if_empty(
    device: &Path,
    filesystem: Filesystem,
    label: &str,
) -> Result<Probe, String> {
    let probe = probe(device).await?;
    if probe == Probe::Empty {
        let program = format!("mkfs.{}", filesystem.as_str());
        let argv =
            [program, "-q".into(), "-L".into(), label.to_owned(), device.display().to_string()];
        run(&argv, MKFS_TIMEOUT).await.map_err(|error| match filesystem {
            Filesystem::Xfs if error.contains("could not be started") => {
                format!("{error} (install xfsprogs: apt-get install xfsprogs)")
            }
            _ => error,
        })?;
    }
    Ok(probe)
}

/// `blkid -p -o export DEVICE`, read by [`probe_verdict`].
pub(crate) async fn probe(device: &Path) -> Result<Probe, String> {
    let argv = ["blkid", "-p", "-o", "export"];
    let output = tokio::time::timeout(
        SHORT_COMMAND_TIMEOUT,
        tokio::process::Command::new(argv[0])
            .args(&argv[1..])
            .arg(device)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("`blkid -p` did not end within {SHORT_COMMAND_TIMEOUT:?}"))?
    .map_err(|e| format!("`blkid` could not be started: {e} (it is util-linux's)"))?;
    probe_verdict(
        output.status.code(),
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
    )
}

/// The probe's verdict from `blkid -p -o export`'s exit status and output: 2 is "nothing
/// found", 0 names a `TYPE` or a `PTTYPE`; anything else is an error (an unreadable device,
/// an ambivalent probe), so a disk is never formatted on a doubt.
pub(crate) fn probe_verdict(
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> Result<Probe, String> {
    let value = |key: &str| {
        stdout.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
    };
    match code {
        Some(2) => Ok(Probe::Empty),
        Some(0) => Ok(Probe::Holds(
            value("TYPE")
                .or_else(|| value("PTTYPE").map(|t| format!("partition table {t}")))
                .unwrap_or_else(|| "something blkid recognises".to_owned()),
        )),
        other => Err(format!(
            "`blkid -p` {}: {}",
            other.map_or_else(
                || "was killed by a signal".to_owned(),
                |c| format!("exited with {c}")
            ),
            stderr.trim()
        )),
    }
}

/// Whether `point` is a mount point of `device` (step 3): the last mount at `point` in
/// `/proc/self/mountinfo` has the device's numbers (a block device's, or a loop device's
/// backed by a regular file). Another filesystem there is an error.
fn is_mounted_at(device: &Path, point: &Path) -> Result<bool, String> {
    let mountinfo = fs_err::read_to_string(MOUNTINFO).map_err(|e| e.to_string())?;
    let Some((numbers, source)) = mounted_at(&mountinfo, point) else {
        return Ok(false);
    };
    if device_numbers(device).contains(&numbers) {
        return Ok(true);
    }
    Err(format!(
        "{} is already a mount point of {source}, not of this disk: unmount it or choose another `mount`",
        point.display()
    ))
}

/// The device numbers and source of the last mount at `point` in a mountinfo text.
pub(crate) fn mounted_at(mountinfo: &str, point: &Path) -> Option<((u64, u64), String)> {
    let point = point.to_string_lossy();
    mountinfo.lines().rev().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        if devices::unescape_mountinfo(fields.get(4)?) != point {
            return None;
        }
        let (major, minor) = fields.get(2)?.split_once(':')?;
        let source = after.split(' ').nth(1).unwrap_or_default().to_owned();
        Some(((major.parse().ok()?, minor.parse().ok()?), source))
    })
}

/// The device numbers a filesystem on `device` is mounted with: a block device's own, or for
/// a regular file, those of each loop device backed by it.
fn device_numbers(device: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(metadata) = fs_err::metadata(device) else {
        return Vec::new();
    };
    if metadata.file_type().is_block_device() {
        return vec![split_device_number(metadata.rdev())];
    }
    let Ok(canonical) = fs_err::canonicalize(device) else {
        return Vec::new();
    };
    let Ok(entries) = fs_err::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|entry| {
            let backing = fs_err::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            if Path::new(backing.trim()) != canonical {
                return None;
            }
            let numbers = fs_err::read_to_string(entry.path().join("dev")).ok()?;
            let (major, minor) = numbers.trim().split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}

/// glibc's `major` and `minor` of a `dev_t`.
fn split_device_number(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The filesystem label of a disk at `device`: its name (`/dev/sdf` → `sdf`).
pub(crate) fn label_of(device: &str) -> String {
    device.rsplit('/').next().unwrap_or(device).to_owned()
}

/// The volume attached at `device`, `/dev/sdX` and `/dev/xvdX` being one device.
fn volume_at<'a>(volumes: &'a [AttachedVolume], device: &str) -> Option<&'a str> {
    let wanted = device_letter(device);
    volumes
        .iter()
        .find(|v| v.device == device || (wanted.is_some() && device_letter(&v.device) == wanted))
        .map(|v| v.volume_id.as_str())
}

fn describe(volumes: &[AttachedVolume]) -> String {
    if volumes.is_empty() {
        return "none".to_owned();
    }
    let pairs: Vec<String> =
        volumes.iter().map(|v| format!("{} {}", v.device, v.volume_id)).collect();
    pairs.join(", ")
}

/// Step 1: the instance's volumes, through the machine cloud and IMDS.
async fn attached_volumes(access: &DiskAccess) -> Result<Vec<AttachedVolume>, String> {
    let cloud = access.cloud.as_ref().ok_or(
        "data disks need the machine's cloud (AWS); this agent has none, so it cannot find their volumes",
    )?;
    let endpoint = access
        .imds_endpoint
        .as_deref()
        .ok_or("data disks need IMDS to name the instance; the bootstrap names no IMDS")?;
    let mut client = ImdsClient::new(endpoint);
    let instance_id = client
        .get("/latest/meta-data/instance-id")
        .await
        .map_err(|e| format!("asking IMDS for the instance id: {e}"))?
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .ok_or("IMDS has no instance-id")?;
    cloud
        .attached_volumes(&access.region, &instance_id)
        .await
        .map_err(|e| format!("finding the volumes of {instance_id}: {e}"))
}

/// Runs `argv` (no shell) to its end within `timeout`; an error names the command, its exit
/// status and its stderr.
async fn run(argv: &[String], timeout: Duration) -> Result<(), String> {
    let command = argv.join(" ");
    let output = tokio::time::timeout(
        timeout,
        tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("`{command}` did not end within {timeout:?}"))?
    .map_err(|e| format!("`{command}` could not be started: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{command}` {}: {}",
        output
            .status
            .code()
            .map_or_else(|| "was killed by a signal".to_owned(), |c| format!("exited with {c}")),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_exit_2_is_empty_0_holds_something_and_else_is_an_error() {
        assert_eq!(probe_verdict(Some(2), "", ""), Ok(Probe::Empty));
        assert_eq!(
            probe_verdict(Some(0), "DEVNAME=/dev/x\nUUID=1\nTYPE=ext4\nUSAGE=filesystem\n", ""),
            Ok(Probe::Holds("ext4".to_owned()))
        );
        assert_eq!(
            probe_verdict(Some(0), "PTUUID=1\nPTTYPE=gpt\n", ""),
            Ok(Probe::Holds("partition table gpt".to_owned()))
        );
        let error = probe_verdict(Some(8), "", "ambivalent result").unwrap_err();
        assert!(error.contains("exited with 8: ambivalent result"), "{error}");
    }

    #[test]
    fn the_volume_of_a_device_is_found_under_either_name() {
        let volumes = [
            AttachedVolume { device: "/dev/sda1".into(), volume_id: "vol-root".into() },
            AttachedVolume { device: "/dev/xvdf".into(), volume_id: "vol-f".into() },
            AttachedVolume { device: "/dev/sdg".into(), volume_id: "vol-g".into() },
        ];
        assert_eq!(volume_at(&volumes, "/dev/sdf"), Some("vol-f"));
        assert_eq!(volume_at(&volumes, "/dev/sdg"), Some("vol-g"));
        assert_eq!(volume_at(&volumes, "/dev/sdh"), None);
        assert_eq!(label_of("/dev/sdf"), "sdf");
    }

    #[test]
    fn the_last_mount_at_a_point_gives_its_device_numbers() {
        let mountinfo = "\
22 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw
40 22 7:0 / /srv/root/data rw,relatime - ext4 /dev/loop0 rw
41 22 259:3 / /srv/root/data rw - xfs /dev/nvme1n1 rw
42 22 7:1 / /with\\040space rw - ext4 /dev/loop1 rw
";
        assert_eq!(
            mounted_at(mountinfo, Path::new("/srv/root/data")),
            Some(((259, 3), "/dev/nvme1n1".to_owned()))
        );
        assert_eq!(mounted_at(mountinfo, Path::new("/with space")).unwrap().0, (7, 1));
        assert_eq!(mounted_at(mountinfo, Path::new("/srv/root")), None);
        assert_eq!(split_device_number(0x10303), (259, 3));
    }

    fn require_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test formats and loop-mounts a file: run it as root (loop mounts need root)"
        );
    }

    /// The decision that keeps a clone's data: a real file probed empty is formatted; one that
    /// holds a filesystem is never formatted again, whatever filesystem is asked, and mounting
    /// is done once: a second run finds it mounted.
    #[tokio::test]
    async fn only_an_empty_disk_is_formatted_and_a_mounted_one_is_left_alone() {
        require_root();
        let temp = tempfile::tempdir().unwrap();
        let empty = temp.path().join("empty");
        fs_err::File::create(&empty).unwrap().set_len(64 << 20).unwrap();
        assert_eq!(probe(&empty).await, Ok(Probe::Empty));
        assert_eq!(format_if_empty(&empty, Filesystem::Ext4, "sdf").await, Ok(Probe::Empty));
        assert_eq!(probe(&empty).await, Ok(Probe::Holds("ext4".to_owned())));

        // A disk that has a filesystem (a clone): not formatted, not even for another type.
        let uuid = |path: &Path| {
            let output = std::process::Command::new("blkid")
                .args(["-p", "-o", "value", "-s", "UUID"])
                .arg(path)
                .output()
                .unwrap();
            String::from_utf8(output.stdout).unwrap()
        };
        let before = uuid(&empty);
        assert_eq!(
            format_if_empty(&empty, Filesystem::Xfs, "sdf").await,
            Ok(Probe::Holds("ext4".to_owned()))
        );
        assert_eq!(uuid(&empty), before, "the filesystem was not made again");

        // Mounted once; the second time it is found mounted; another disk there is refused.
        let point = temp.path().join("mnt/data");
        let done = mount_disk(&empty, &point, Filesystem::Ext4, "sdf").await.unwrap();
        assert!(matches!(done, DiskDone::Mounted { formatted: None, .. }), "{done:?}");
        let unmount = MountedDisks::default();
        unmount.add(&point);
        fs_err::write(point.join("kept"), "data").unwrap();
        let again = mount_disk(&empty, &point, Filesystem::Ext4, "sdf").await;
        let other = temp.path().join("other");
        fs_err::File::create(&other).unwrap().set_len(64 << 20).unwrap();
        let refused = mount_disk(&other, &point, Filesystem::Ext4, "sdg").await;
        assert_eq!(unmount.unmount_all().await, Vec::<String>::new());
        assert!(matches!(again, Ok(DiskDone::AlreadyMounted { .. })), "{again:?}");
        let refused = refused.unwrap_err();
        assert!(refused.contains("is already a mount point of /dev/loop"), "{refused}");
        assert!(!point.join("kept").exists(), "unmounted");
        // Its data is on the disk: mounted again, without a format, it is there.
        mount_disk(&empty, &point, Filesystem::Ext4, "sdf").await.unwrap();
        assert_eq!(fs_err::read_to_string(point.join("kept")).unwrap(), "data");
        unmount.add(&point);
        assert_eq!(unmount.unmount_all().await, Vec::<String>::new());
    }

    /// `filesystem: xfs`: an empty disk is made xfs (labelled with its device) and mounts.
    /// Needs xfsprogs (`scripts/test` installs it).
    #[tokio::test]
    async fn an_empty_disk_asked_for_xfs_is_made_xfs_and_mounted() {
        require_root();
        assert!(
            std::process::Command::new("mkfs.xfs").arg("-V").output().is_ok(),
            "mkfs.xfs is not installed: run scripts/test, or apt-get install xfsprogs"
        );
        let temp = tempfile::tempdir().unwrap();
        let disk = temp.path().join("disk");
        // xfsprogs refuses filesystems under 300 MiB; the file is sparse.
        fs_err::File::create(&disk).unwrap().set_len(320 << 20).unwrap();
        assert_eq!(format_if_empty(&disk, Filesystem::Xfs, "sdh").await, Ok(Probe::Empty));
        assert_eq!(probe(&disk).await, Ok(Probe::Holds("xfs".to_owned())));
        let label = std::process::Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "LABEL"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "sdh");
        let point = temp.path().join("mnt/xfs");
        let done = mount_disk(&disk, &point, Filesystem::Xfs, "sdh").await.unwrap();
        assert!(matches!(done, DiskDone::Mounted { formatted: None, .. }), "{done:?}");
        let unmount = MountedDisks::default();
        unmount.add(&point);
        fs_err::write(point.join("on-xfs"), "yes").unwrap();
        assert_eq!(unmount.unmount_all().await, Vec::<String>::new());
        assert!(!point.join("on-xfs").exists(), "unmounted");
    }
}
