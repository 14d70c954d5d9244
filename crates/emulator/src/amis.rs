//! The AMI catalogue moto serves (`MOTO_AMIS_PATH`): Canonical's Ubuntu 24.04 noble gp3 images,
//! which moto's own catalogue lacks. The file replaces moto's whole catalogue, in every region.

use serde_json::{Value, json};

/// Canonical's account, the owner flotilla's AMI lookup filters on.
pub(crate) const CANONICAL: &str = "099720109477";
/// Build dates served for each architecture; a lookup picks the newest.
const BUILDS: [&str; 2] = ["20250610", "20251001"];

/// The catalogue as moto's `amis.json` expects it (one object per image, `Ami` constructor fields).
pub(crate) fn catalogue() -> Value {
    let mut images = Vec::new();
    for (ubuntu_arch, ec2_arch) in [("amd64", "x86_64"), ("arm64", "arm64")] {
        for build in BUILDS {
            let name = format!(
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{ubuntu_arch}-server-{build}"
            );
            images.push(json!({
                "ami_id": ami_id(&name),
                "name": name,
                "description": format!("Canonical, Ubuntu, 24.04, {ubuntu_arch} noble image"),
                "owner_id": CANONICAL,
                "public": true,
                "state": "available",
                "architecture": ec2_arch,
                "image_type": "machine",
                "image_location": format!("amazon/{name}"),
                "platform": null,
                "hypervisor": "xen",
                "virtualization_type": "hvm",
                "root_device_type": "ebs",
                "root_device_name": "/dev/sda1",
                "sriov": "simple",
                "boot_mode": "uefi-preferred",
                "creation_date": format!("{}-{}-{}T00:00:00.000Z", &build[..4], &build[4..6], &build[6..]),
            }));
        }
    }
    Value::Array(images)
}

/// A stable id in AWS's shape (`ami-` and 17 hex digits) derived from the image name.
fn ami_id(name: &str) -> String {
    // FNV-1a: stable across runs and platforms, unlike the standard library's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("ami-0{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_architectures_are_found_by_the_deployers_name_filter() {
        let catalogue = catalogue();
        let images = catalogue.as_array().unwrap();
        for (arch, ec2_arch) in [("amd64", "x86_64"), ("arm64", "arm64")] {
            let prefix = format!("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-");
            let matching: Vec<_> = images
                .iter()
                .filter(|i| i["name"].as_str().unwrap().starts_with(&prefix))
                .collect();
            assert_eq!(matching.len(), BUILDS.len());
            for image in matching {
                assert_eq!(image["architecture"], ec2_arch);
                assert_eq!(image["owner_id"], CANONICAL);
                assert_eq!(image["root_device_type"], "ebs");
                let id = image["ami_id"].as_str().unwrap();
                assert!(id.len() == 21 && id.starts_with("ami-0"), "{id}");
            }
        }
    }

    #[test]
    fn ids_are_distinct_and_stable() {
        let first = catalogue();
        let ids: std::collections::BTreeSet<_> =
            first.as_array().unwrap().iter().map(|i| i["ami_id"].to_string()).collect();
        assert_eq!(ids.len(), 4);
        assert_eq!(first, catalogue());
    }
}
