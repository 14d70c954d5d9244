//! Finding the kernel's device for an attached EBS volume, and the places it is mounted.
//!
//! On Nitro, EC2 ignores the device name a volume was attached with (`/dev/sdf`): the kernel
//! names NVMe devices in the order they appear. The volume's id (without the dash) is the NVMe
//! serial, so the device is found, under the device root (`/` on a machine, a directory in
//! tests and under the emulator), in this order:
//! 1. the udev link `<root>/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>`, resolved
//!    (a relative link against its directory, an absolute one under the root);
//! 2. a block device whose `<root>/sys/block/<dev>/device/serial` is `vol<hex>`: `<root>/dev/<dev>`;
//! 3. the configured `device` under the root (Xen's `/dev/xvdf`, or a udev alias).
//!
//! Schedule ([`device_poll_delay`]): the device appears a moment after EC2 reports the
//! attachment, so the lookup is retried 10 ms after the first miss, the delay doubling to at
//! most 500 ms, until [`DEVICE_WAIT`] has passed; then the claim fails with what was looked
//! for. ec2fleetd spun every 10 ms with no bound.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// How long a device may take to appear after its volume is attached.
pub(crate) const DEVICE_WAIT: Duration = Duration::from_secs(60);
const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_millis(500);

/// The delay before lookup `attempt + 1` (`attempt` 0 is the first miss).
pub(crate) fn device_poll_delay(attempt: u32) -> Duration {
    FIRST_DELAY.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(MAX_DELAY)
}

/// The NVMe serial of a volume: `vol-0abc` → `vol0abc`.
pub(crate) fn nvme_serial(volume_id: &str) -> String {
    volume_id.replacen('-', "", 1)
}

/// `path` (absolute, as the machine names it) under `root`.
pub(crate) fn under_root(root: &Path, path: &Path) -> PathBuf {
    let relative: PathBuf =
        path.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    root.join(relative)
}

/// The device of `volume_id` under `root`, if it is there now (see the module's order).
pub(crate) fn find_device(root: &Path, volume_id: &str, configured: &str) -> Option<PathBuf> {
    let serial = nvme_serial(volume_id);
    let link =
        root.join("dev/disk/by-id").join(format!("nvme-Amazon_Elastic_Block_Store_{serial}"));
    if let Ok(target) = fs_err::read_link(&link) {
        let resolved = if target.is_absolute() {
            if target.starts_with(root) { target } else { under_root(root, &target) }
        } else {
            link.parent().unwrap_or(root).join(target)
        };
        let resolved = normalise(&resolved);
        if resolved.exists() {
            return Some(resolved);
        }
    }
    if let Ok(entries) = fs_err::read_dir(root.join("sys/block")) {
        for entry in entries.flatten() {
            let serial_file = entry.path().join("device/serial");
            if let Ok(found) = fs_err::read_to_string(&serial_file)
                && found.trim() == serial
            {
                let device = root.join("dev").join(entry.file_name());
                if device.exists() {
                    return Some(device);
                }
            }
        }
    }
    let device = under_root(root, Path::new(configured));
    device.exists().then_some(device)
}

/// Waits for the device of `volume_id` as the module's schedule says, at most `bound`.
pub(crate) async fn wait_for_device(
    root: &Path,
    volume_id: &str,
    configured: &str,
    bound: Duration,
) -> Result<PathBuf, String> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut attempt = 0;
    loop {
        if let Some(device) = find_device(root, volume_id, configured) {
            return Ok(device);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(format!(
                "the device of {volume_id} did not appear within {}: looked for {}, a serial {} under {}, and {}",
                humantime::format_duration(bound),
                root.join("dev/disk/by-id")
                    .join(format!("nvme-Amazon_Elastic_Block_Store_{}", nvme_serial(volume_id)))
                    .display(),
                nvme_serial(volume_id),
                root.join("sys/block").display(),
                under_root(root, Path::new(configured)).display(),
            ));
        }
        tokio::time::sleep(device_poll_delay(attempt).min(deadline - now)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Removes `.` and resolves `..` lexically (the by-id link is `../../nvme1n1`).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The mount points of `device` (as the machine names it, `/dev/nvme1n1`) and its partitions
/// in a `/proc/self/mountinfo` text, most recently mounted first (the order to unmount).
pub(crate) fn mount_points(mountinfo: &str, device: &Path) -> Vec<PathBuf> {
    let device = device.to_string_lossy();
    let mut points = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else { continue };
        let Some(point) = before.split(' ').nth(4) else { continue };
        let Some(source) = after.split(' ').nth(1) else { continue };
        let partition = source.strip_prefix(device.as_ref()).is_some_and(|rest| {
            let rest = rest.strip_prefix('p').unwrap_or(rest);
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
        });
        if source == device || partition {
            points.push(PathBuf::from(unescape_mountinfo(point)));
        }
    }
    points.reverse();
    points
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
pub(crate) fn unescape_mountinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && bytes[index + 1..index + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[index + 1] - b'0') * 64
                + (bytes[index + 2] - b'0') * 8
                + (bytes[index + 3] - b'0');
            out.push(value);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts what `device` (found under `root`) is mounted on, as `<root>/proc/self/mountinfo`
/// lists it, with `umount`; an error names the mount point that stayed.
pub(crate) async fn unmount_device(root: &Path, device: &Path) -> Result<Vec<PathBuf>, String> {
    let mountinfo = match fs_err::read_to_string(root.join("proc/self/mountinfo")) {
        Ok(text) => text,
        // No mount table under this root: nothing of it can be mounted.
        Err(_) => return Ok(Vec::new()),
    };
    let as_machine_names_it = match device.strip_prefix(root) {
        Ok(relative) => Path::new("/").join(relative),
        Err(_) => device.to_path_buf(),
    };
    let points = mount_points(&mountinfo, &as_machine_names_it);
    for point in &points {
        let output = tokio::process::Command::new("umount")
            .arg(point)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("umount {}: {e}", point.display()))?;
        if !output.status.success() {
            return Err(format!(
                "umount {} ({}): {}: the volume stays attached",
                point.display(),
                as_machine_names_it.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_doubles_to_its_cap() {
        assert_eq!(device_poll_delay(0), Duration::from_millis(10));
        assert_eq!(device_poll_delay(1), Duration::from_millis(20));
        assert_eq!(device_poll_delay(5), Duration::from_millis(320));
        assert_eq!(device_poll_delay(6), MAX_DELAY);
        assert_eq!(device_poll_delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn the_device_is_found_by_its_by_id_link_then_serial_then_name() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        fs_err::create_dir_all(root.join("dev/disk/by-id")).unwrap();
        // Nothing yet.
        assert_eq!(find_device(root, "vol-0abc", "/dev/sdf"), None);
        // The configured name, as on Xen.
        fs_err::write(root.join("dev/sdf"), "").unwrap();
        assert_eq!(find_device(root, "vol-0abc", "/dev/sdf"), Some(root.join("dev/sdf")));
        // The serial in sysfs wins over the name.
        fs_err::create_dir_all(root.join("sys/block/nvme2n1/device")).unwrap();
        fs_err::write(root.join("sys/block/nvme2n1/device/serial"), "vol0abc\n").unwrap();
        fs_err::write(root.join("dev/nvme2n1"), "").unwrap();
        assert_eq!(find_device(root, "vol-0abc", "/dev/sdf"), Some(root.join("dev/nvme2n1")));
        // The by-id link wins over both, relative or absolute (re-rooted).
        fs_err::write(root.join("dev/nvme1n1"), "").unwrap();
        let link = root.join("dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc");
        std::os::unix::fs::symlink("../../nvme1n1", &link).unwrap();
        assert_eq!(find_device(root, "vol-0abc", "/dev/sdf"), Some(root.join("dev/nvme1n1")));
        fs_err::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("/dev/nvme1n1", &link).unwrap();
        assert_eq!(find_device(root, "vol-0abc", "/dev/sdf"), Some(root.join("dev/nvme1n1")));
        // Another volume's serial is not ours.
        assert_eq!(find_device(root, "vol-0def", "/dev/sdg"), None);
    }

    #[tokio::test]
    async fn waiting_for_a_device_is_bounded_and_says_what_it_looked_for() {
        let root = tempfile::tempdir().unwrap();
        let error =
            wait_for_device(root.path(), "vol-1", "/dev/sdf", Duration::from_millis(50)).await;
        let error = error.unwrap_err();
        assert!(error.contains("vol-1 did not appear within 50ms"), "{error}");
        assert!(error.contains("nvme-Amazon_Elastic_Block_Store_vol1"), "{error}");
    }

    #[test]
    fn mount_points_of_a_device_and_its_partitions_newest_first() {
        let mountinfo = "\
22 1 259:0 / / rw - ext4 /dev/nvme0n1p1 rw
40 22 259:3 / /data rw,relatime shared:1 - xfs /dev/nvme1n1 rw
41 22 259:4 / /mnt/with\\040space rw - ext4 /dev/nvme1n1p2 rw
42 22 259:5 / /other rw - ext4 /dev/nvme10n1 rw
";
        assert_eq!(
            mount_points(mountinfo, Path::new("/dev/nvme1n1")),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/data")]
        );
        assert!(mount_points(mountinfo, Path::new("/dev/nvme3n1")).is_empty());
    }
}
