//! Launch templates: one per region, capacity group and architecture, holding everything a
//! machine of the group boots with (image, user data, instance profile, security group, root
//! volume, a network interface with a public address, metadata options), so that a fleet
//! request names only types and subnets.
//!
//! A template's name carries the digest of its content, so a changed group (a new agent build,
//! another volume) gets a new template and an unchanged one is found again: created, or adopted
//! when a crash came between its creation and the journal (found by the deployment's tag, or by
//! name when EC2 says it exists). Templates of the deployment no longer wanted in a region are
//! deleted; `destroy` deletes them all.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceMetadataTagsState,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, RequestLaunchTemplateData,
    ResourceType, ShutdownBehavior, VolumeType,
};
use flotilla_core::provider::ProviderError;
use sha2::{Digest, Sha256};

use crate::clients::Clients;
use crate::disks::DataDisk;
use crate::error::AwsError;
use crate::journal::Journal;
use crate::tags::{TAG_GROUP, tag_filter, tag_spec, tagged};

/// A group's root volume, from its machines' storage settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RootVolume {
    pub size_gib: i32,
    /// `gp3`, `io1`, `io2`, …
    pub class: String,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    /// `root_volume.encrypted`: with the account's default EBS key unless `kms_key_id`.
    pub encrypted: bool,
    /// The resolved key id of `root_volume.kms_key` (an alias is resolved in the region).
    pub kms_key_id: Option<String>,
}

/// What one template holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSpec {
    pub group: String,
    pub architecture: String,
    pub image_id: String,
    /// The image's root device (read from the image): where the root volume's mapping goes.
    pub root_device_name: String,
    /// Base64.
    pub user_data: String,
    pub instance_profile: String,
    pub security_group: String,
    /// The spec's security groups (`network.<region>.security_groups`), beside flotilla's.
    pub extra_security_groups: Vec<String>,
    pub root_volume: RootVolume,
    /// The entry's data disks, mapped beside the root volume and deleted with the machine.
    pub data_disks: Vec<DataDisk>,
}

impl TemplateSpec {
    /// The template's name: readable prefixes of the tag and group, the architecture, and the
    /// digest of the content (which also keeps two groups whose prefixes agree apart).
    pub fn name(&self, tag: &str) -> String {
        // A template without data disks keeps the name it had before disks existed, so that a
        // newer flotilla does not replace every deployment's templates.
        let content = format!("{self:?}").replace(", data_disks: [] }", " }");
        let digest = hex::encode(Sha256::digest(format!("{tag}\n{content}").as_bytes()));
        format!(
            "flotilla-{}-{}-{}-{}",
            readable(tag, 40),
            readable(&self.group, 30),
            self.architecture,
            &digest[..16]
        )
    }

    fn data(&self) -> RequestLaunchTemplateData {
        let volume = &self.root_volume;
        let mut ebs = LaunchTemplateEbsBlockDeviceRequest::builder()
            .volume_size(volume.size_gib)
            .volume_type(VolumeType::from(volume.class.as_str()))
            .delete_on_termination(true);
        if let Some(iops) = volume.iops {
            ebs = ebs.iops(iops);
        }
        if let Some(throughput) = volume.throughput {
            ebs = ebs.throughput(throughput);
        }
        if volume.encrypted {
            ebs = ebs.encrypted(true);
            if let Some(key) = &volume.kms_key_id {
                ebs = ebs.kms_key_id(key);
            }
        }
        let root = LaunchTemplateBlockDeviceMappingRequest::builder()
            .device_name(&self.root_device_name)
            .ebs(ebs.build())
            .build();
        let mappings =
            std::iter::once(root).chain(self.data_disks.iter().map(disk_mapping)).collect();
        RequestLaunchTemplateData::builder()
            .image_id(&self.image_id)
            .user_data(&self.user_data)
            .iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(&self.instance_profile)
                    .build(),
            )
            .network_interfaces(
                LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(true)
                    .delete_on_termination(true)
                    .set_groups(Some(
                        std::iter::once(self.security_group.clone())
                            .chain(self.extra_security_groups.iter().cloned())
                            .collect(),
                    ))
                    .build(),
            )
            .set_block_device_mappings(Some(mappings))
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                    .http_put_response_hop_limit(1)
                    .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .build()
    }
}

/// A data disk's mapping: created with the machine (from its snapshot, when it has one) and
/// deleted with it.
fn disk_mapping(disk: &DataDisk) -> LaunchTemplateBlockDeviceMappingRequest {
    let mut ebs = LaunchTemplateEbsBlockDeviceRequest::builder()
        .volume_size(disk.size_gib)
        .volume_type(VolumeType::from(disk.class.as_str()))
        .delete_on_termination(true)
        .set_iops(disk.iops)
        .set_throughput(disk.throughput)
        .set_snapshot_id(disk.snapshot_id.clone());
    if let Some(key) = &disk.kms_key_id {
        ebs = ebs.encrypted(true).kms_key_id(key);
    }
    LaunchTemplateBlockDeviceMappingRequest::builder()
        .device_name(&disk.device)
        .ebs(ebs.build())
        .build()
}

/// Up to `max` characters of `text` that a template name may hold (`[A-Za-z0-9().-/_]`), others
/// as `_`.
fn readable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_ascii_alphanumeric() || "().-_".contains(c) { c } else { '_' })
        .collect()
}

/// Makes sure every template of `wanted` exists in `region` (see the module documentation);
/// returns name → id. `fresh`: the region was made in this run, so nothing of ours is there.
pub async fn ensure(
    clients: &Clients,
    journal: &Journal,
    tag: &str,
    region: &str,
    fresh: bool,
    wanted: &[TemplateSpec],
) -> Result<BTreeMap<String, String>, ProviderError> {
    let ec2 = clients.ec2(region);
    let names: Vec<String> = wanted.iter().map(|spec| spec.name(tag)).collect();
    let mut known =
        journal.read().regions.get(region).map(|r| r.templates.clone()).unwrap_or_default();
    let mut existing: BTreeMap<String, String> = BTreeMap::new();
    if !fresh {
        let found =
            ec2.describe_launch_templates().filters(tag_filter(tag)).send().await.map_err(|e| {
                AwsError::from_sdk(
                    region,
                    "DescribeLaunchTemplates",
                    format!("deployment {tag}"),
                    e,
                )
            })?;
        for template in found.launch_templates().iter().filter(|t| tagged(t.tags(), tag)) {
            if let (Some(name), Some(id)) =
                (template.launch_template_name(), template.launch_template_id())
            {
                existing.insert(name.to_owned(), id.to_owned());
            }
        }
        // The journal may name a template someone deleted: EC2's answer wins.
        known.retain(|name, id| existing.get(name) == Some(id));
    }
    let mut ids = BTreeMap::new();
    for (spec, name) in wanted.iter().zip(&names) {
        let id = match known.get(name).or_else(|| existing.get(name)) {
            Some(id) => id.clone(),
            None => create(&ec2, region, tag, spec, name).await?,
        };
        ids.insert(name.clone(), id);
    }
    journal.update(|r| r.region(region).templates = ids.clone())?;
    // Templates of the deployment this run does not use: an earlier spec's or agent's.
    for (name, id) in existing.iter().filter(|(name, _)| !ids.contains_key(*name)) {
        match ec2.delete_launch_template().launch_template_id(id).send().await {
            Ok(_) => {
                tracing::debug!(%region, template = %name, "deleted a launch template no longer used")
            }
            Err(e) => {
                let error = AwsError::from_sdk(region, "DeleteLaunchTemplate", id, e);
                if !error.code.as_deref().is_some_and(|c| c.contains("NotFound")) {
                    return Err(error.into());
                }
            }
        }
    }
    Ok(ids)
}

async fn create(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    tag: &str,
    spec: &TemplateSpec,
    name: &str,
) -> Result<String, ProviderError> {
    let created = ec2
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(spec.data())
        .tag_specifications(tag_spec(
            ResourceType::LaunchTemplate,
            tag,
            name,
            &[(TAG_GROUP, &spec.group)],
        ))
        .send()
        .await;
    match created {
        Ok(answer) => Ok(answer
            .launch_template()
            .and_then(|t| t.launch_template_id())
            .ok_or_else(|| {
                AwsError::other(region, "CreateLaunchTemplate", name, "no id in the answer")
            })?
            .to_owned()),
        Err(e) => {
            let error = AwsError::from_sdk(region, "CreateLaunchTemplate", name, e);
            if !error.code.as_deref().is_some_and(|c| c.contains("AlreadyExists")) {
                return Err(error.into());
            }
            // Made by a run that crashed before its journal: adopt it, if it is ours.
            let found = ec2
                .describe_launch_templates()
                .launch_template_names(name)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(region, "DescribeLaunchTemplates", name, e))?;
            let template = found.launch_templates().first().ok_or_else(|| {
                AwsError::other(
                    region,
                    "DescribeLaunchTemplates",
                    name,
                    "not found after it was said to exist",
                )
            })?;
            if !tagged(template.tags(), tag) {
                return Err(ProviderError::new(format!(
                    "{region}: launch template {name} exists but is not deployment `{tag}`'s; delete it or choose another tag"
                )));
            }
            Ok(template.launch_template_id().unwrap_or_default().to_owned())
        }
    }
}

/// Deletes every launch template of deployment `tag` in `region`.
pub async fn delete_all(
    clients: &Clients,
    region: &str,
    tag: &str,
) -> Result<usize, ProviderError> {
    let ec2 = clients.ec2(region);
    let found =
        ec2.describe_launch_templates().filters(tag_filter(tag)).send().await.map_err(|e| {
            AwsError::from_sdk(region, "DescribeLaunchTemplates", format!("deployment {tag}"), e)
        })?;
    let mut deleted = 0;
    for template in found.launch_templates().iter().filter(|t| tagged(t.tags(), tag)) {
        let Some(id) = template.launch_template_id() else { continue };
        match ec2.delete_launch_template().launch_template_id(id).send().await {
            Ok(_) => deleted += 1,
            Err(e) => {
                let error = AwsError::from_sdk(region, "DeleteLaunchTemplate", id, e);
                if !error.code.as_deref().is_some_and(|c| c.contains("NotFound")) {
                    return Err(error.into());
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(group: &str) -> TemplateSpec {
        TemplateSpec {
            group: group.into(),
            architecture: "x86_64".into(),
            image_id: "ami-1".into(),
            root_device_name: "/dev/sda1".into(),
            user_data: "IyEvYmluL3No".into(),
            instance_profile: "flotilla-t".into(),
            security_group: "sg-1".into(),
            extra_security_groups: Vec::new(),
            root_volume: RootVolume {
                size_gib: 10,
                class: "gp3".into(),
                iops: None,
                throughput: None,
                encrypted: false,
                kms_key_id: None,
            },
            data_disks: Vec::new(),
        }
    }

    #[test]
    fn data_disks_map_after_the_root_with_their_type_snapshot_and_key() {
        let mut spec = spec("db");
        spec.data_disks = vec![
            DataDisk {
                device: "/dev/sdf".into(),
                class: "gp3".into(),
                size_gib: 100,
                iops: Some(4000),
                throughput: Some(250),
                snapshot_id: None,
                kms_key_id: None,
            },
            DataDisk {
                device: "/dev/sdg".into(),
                class: "io2".into(),
                size_gib: 50,
                iops: Some(8000),
                throughput: None,
                snapshot_id: Some("snap-0123456789abcdef0".into()),
                kms_key_id: Some("1234abcd-12ab-34cd-56ef-1234567890ab".into()),
            },
        ];
        let data = spec.data();
        let devices: Vec<_> =
            data.block_device_mappings().iter().map(|m| m.device_name()).collect();
        assert_eq!(devices, [Some("/dev/sda1"), Some("/dev/sdf"), Some("/dev/sdg")]);
        let data_disk = data.block_device_mappings()[1].ebs().unwrap();
        assert_eq!(
            (
                data_disk.volume_size(),
                data_disk.iops(),
                data_disk.throughput(),
                data_disk.encrypted()
            ),
            (Some(100), Some(4000), Some(250), None)
        );
        assert_eq!(data_disk.delete_on_termination(), Some(true));
        let clone = data.block_device_mappings()[2].ebs().unwrap();
        assert_eq!(clone.volume_type(), Some(&VolumeType::Io2));
        assert_eq!(clone.snapshot_id(), Some("snap-0123456789abcdef0"));
        assert_eq!(
            (clone.encrypted(), clone.kms_key_id()),
            (Some(true), Some("1234abcd-12ab-34cd-56ef-1234567890ab"))
        );
        let mut other = spec.clone();
        other.data_disks[1].snapshot_id = Some("snap-0fedcba9876543210".into());
        assert_ne!(other.name("t"), spec.name("t"), "a newer snapshot makes a new template");
    }

    #[test]
    fn the_root_volume_maps_to_the_images_root_device_encrypted_with_the_key() {
        let mut spec = spec("worker");
        spec.root_device_name = "/dev/xvda".into();
        spec.root_volume.encrypted = true;
        spec.root_volume.kms_key_id = Some("1234abcd-12ab-34cd-56ef-1234567890ab".into());
        let data = spec.data();
        let mapping = &data.block_device_mappings()[0];
        assert_eq!(mapping.device_name(), Some("/dev/xvda"));
        let ebs = mapping.ebs().unwrap();
        assert_eq!(ebs.encrypted(), Some(true));
        assert_eq!(ebs.kms_key_id(), Some("1234abcd-12ab-34cd-56ef-1234567890ab"));
        spec.root_volume.encrypted = false;
        let data = spec.data();
        let ebs = data.block_device_mappings()[0].ebs().unwrap();
        assert_eq!((ebs.encrypted(), ebs.kms_key_id()), (None, None), "unencrypted: no key");
    }

    #[test]
    fn a_template_name_is_valid_and_changes_with_its_content() {
        let name = spec("worker").name("my tag/é");
        assert!(name.len() <= 128, "{name}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "().-/_".contains(c)), "{name}");
        assert!(name.starts_with("flotilla-my_tag__-worker-x86_64-"), "{name}");
        let mut other = spec("worker");
        other.root_volume.iops = Some(4000);
        assert_ne!(other.name("my tag/é"), name);
        let mut encrypted = spec("worker");
        encrypted.root_volume.encrypted = true;
        assert_ne!(encrypted.name("my tag/é"), name, "encryption is part of the content");
        let mut device = spec("worker");
        device.root_device_name = "/dev/xvda".into();
        assert_ne!(device.name("my tag/é"), name, "the root device is part of the content");
        assert_eq!(spec("worker").name("my tag/é"), name, "the same content, the same name");
        assert!(
            format!("{:?}", spec("worker")).ends_with(", data_disks: [] }"),
            "an empty disk list is left out of the name's content"
        );
        let long = "t".repeat(255);
        assert!(spec(&"g".repeat(255)).name(&long).len() <= 128);
    }
}
