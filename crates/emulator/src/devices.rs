//! The NVMe devices of an instance's EBS volumes, as files under the instance's root, so that
//! an agent given that root as its device root finds a volume as it would on a Nitro machine:
//! `<root>/dev/nvme<N>n1` (a sparse regular file of the volume's size, so that `mkfs` and a
//! loop `mount` work on it as on the disk; it holds no data across a detach, as snapshots in
//! moto hold none) and the udev link
//! `<root>/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>` → `../../nvme<N>n1`, where
//! `vol<hex>` is the volume id without its dash (the NVMe serial EC2 gives the device).
//!
//! The booter keeps one [`Devices`] per instance it booted and syncs it with each listing: a
//! volume whose attachment is `attached` gets the lowest free `N` (the root volume, attached at
//! launch, is `nvme0n1` as on EC2) and its files; a volume that is `detaching`, detached or gone
//! loses them (the kernel drops the device when the detach begins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::instance::VolumeAttachmentInfo;

/// The by-id name's prefix udev gives an EBS volume's NVMe device.
pub const BY_ID_PREFIX: &str = "nvme-Amazon_Elastic_Block_Store_";

/// `<root>/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>` for volume `vol-<hex>`.
pub fn by_id_link(root: &Path, volume_id: &str) -> PathBuf {
    root.join("dev/disk/by-id").join(format!("{BY_ID_PREFIX}{}", volume_id.replace('-', "")))
}

/// `<root>/dev/nvme<index>n1`.
pub fn device_file(root: &Path, index: u32) -> PathBuf {
    root.join("dev").join(format!("nvme{index}n1"))
}

/// The device files of one instance: volume id → NVMe index.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    indexes: BTreeMap<String, u32>,
}

impl Devices {
    /// Makes the files of `volumes` that are `attached` and removes those of volumes that no
    /// longer are. Every change is tried; the first error is returned.
    pub(crate) fn sync(
        &mut self,
        root: &Path,
        volumes: &[VolumeAttachmentInfo],
    ) -> std::io::Result<()> {
        let attached: Vec<(&str, u64)> = volumes
            .iter()
            .filter(|v| v.state == "attached")
            .map(|v| (v.volume_id.as_str(), v.size_gib))
            .collect();
        let mut first_error = None;
        let gone: Vec<(String, u32)> = self
            .indexes
            .iter()
            .filter(|(id, _)| !attached.iter().any(|(volume_id, _)| volume_id == id))
            .map(|(id, index)| (id.clone(), *index))
            .collect();
        for (volume_id, index) in gone {
            self.indexes.remove(&volume_id);
            for path in [by_id_link(root, &volume_id), device_file(root, index)] {
                if let Err(error) = fs_err::remove_file(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    first_error.get_or_insert(error);
                }
            }
        }
        for (volume_id, size_gib) in attached {
            if self.indexes.contains_key(volume_id) {
                continue;
            }
            let index = (0..).find(|i| !self.indexes.values().any(|used| used == i)).unwrap_or(0);
            match create(root, volume_id, index, size_gib) {
                Ok(()) => {
                    self.indexes.insert(volume_id.to_owned(), index);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn create(root: &Path, volume_id: &str, index: u32, size_gib: u64) -> std::io::Result<()> {
    let link = by_id_link(root, volume_id);
    let link_dir = link.parent().expect("a by-id link has a directory");
    fs_err::create_dir_all(link_dir)?;
    // A new, empty, sparse file: only what is written takes space.
    let file = fs_err::File::create(device_file(root, index))?;
    file.set_len(size_gib.saturating_mul(1 << 30))?;
    match fs_err::remove_file(&link) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    fs_err::os::unix::fs::symlink(format!("../../nvme{index}n1"), &link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(id: &str, state: &str) -> VolumeAttachmentInfo {
        VolumeAttachmentInfo {
            volume_id: id.to_owned(),
            device: "/dev/sdf".to_owned(),
            state: state.to_owned(),
            size_gib: 2,
        }
    }

    #[test]
    fn an_attached_volume_appears_by_its_serial_and_goes_at_detach() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let mut devices = Devices::default();

        devices
            .sync(root, &[volume("vol-0aa", "attached"), volume("vol-0bb", "attaching")])
            .unwrap();
        let link = root.join("dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0aa");
        assert_eq!(fs_err::read_link(&link).unwrap(), Path::new("../../nvme0n1"));
        let metadata = fs_err::metadata(&link).unwrap();
        assert!(metadata.is_file(), "the link resolves to a regular file");
        assert_eq!(metadata.len(), 2 << 30, "of the volume's size");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(metadata.blocks(), 0, "sparse: it takes no space");
        assert!(!by_id_link(root, "vol-0bb").exists(), "attaching: no device yet");

        devices
            .sync(root, &[volume("vol-0aa", "attached"), volume("vol-0bb", "attached")])
            .unwrap();
        assert_eq!(
            fs_err::read_link(by_id_link(root, "vol-0bb")).unwrap(),
            Path::new("../../nvme1n1")
        );

        // Detaching: the device goes at once, and its index is free for the next volume.
        devices
            .sync(root, &[volume("vol-0aa", "detaching"), volume("vol-0bb", "attached")])
            .unwrap();
        assert!(fs_err::symlink_metadata(&link).is_err(), "the link is gone");
        assert!(!root.join("dev/nvme0n1").exists(), "the device file is gone");
        assert!(root.join("dev/nvme1n1").is_file());

        devices
            .sync(root, &[volume("vol-0bb", "attached"), volume("vol-0cc", "attached")])
            .unwrap();
        assert_eq!(
            fs_err::read_link(by_id_link(root, "vol-0cc")).unwrap(),
            Path::new("../../nvme0n1")
        );

        devices.sync(root, &[]).unwrap();
        let left: Vec<_> = fs_err::read_dir(root.join("dev/disk/by-id")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!root.join("dev/nvme0n1").exists() && !root.join("dev/nvme1n1").exists());
    }

    #[test]
    fn a_stale_link_from_an_earlier_boot_is_replaced() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let link = by_id_link(root, "vol-0aa");
        fs_err::create_dir_all(link.parent().unwrap()).unwrap();
        fs_err::os::unix::fs::symlink("../../nvme7n1", &link).unwrap();
        Devices::default().sync(root, &[volume("vol-0aa", "attached")]).unwrap();
        assert_eq!(fs_err::read_link(&link).unwrap(), Path::new("../../nvme0n1"));
    }
}
