//! The IAM statements a lifecycle config needs, derived from the config: a deployment's role
//! gets them beside its own (`crate::iam::agent_policy`), and standalone `flotilla fleetd`
//! prints them as a whole policy ([`fleetd_policy`]).
//!
//! What each part of a config adds (nothing for a config without it):
//!
//! - any `attach-volume`: `ec2:DescribeVolumes` and `ec2:DescribeInstances` (no resource-level
//!   permissions exist for them); AttachVolume and DetachVolume on instances (in a deployment,
//!   only its own, by the `flotilla:deployment` tag).
//! - `x`: AttachVolume and DetachVolume on those volume ids.
//! - `p` and `c`: AttachVolume, DetachVolume, CreateTags and DeleteTags on volumes tagged with
//!   one of the config's domains (flotilla's [`TAG_DOMAIN`], or ec2fleetd's key for its pools).
//! - `c`: CreateVolume only with the domain tag in the request, CreateTags only as part of
//!   CreateVolume (tag-on-create), DeleteVolume only of a volume still marked in transit (a
//!   rollback); the snapshots named by `SnapshotId`; and for a `KmsKeyId`, the KMS calls EC2
//!   makes for an encrypted volume, through EC2 only.
//! - `update-route53`: ChangeResourceRecordSets and ListResourceRecordSets on the named hosted
//!   zones, GetChange on changes.
//! - `notify`: `sns:Publish` on the named topics, `sqs:SendMessage` on the named queues (a
//!   queue URL becomes its ARN). A name with a macro becomes a wildcard at the macro.

use std::collections::BTreeSet;

use flotilla_spec::fleetd::{FleetdConfig, NotifyBackend, VolumeSource};
use serde_json::{Value, json};

use super::records::zone_id;
use super::volumes::{EC2FLEETD_TAG_DOMAIN, TAG_DOMAIN, TAG_IN_TRANSIT};
use crate::tags::TAG_DEPLOYMENT;

/// The statements `configs` need (see the module's description); with `deployment`, the
/// instances a volume may be attached to are that deployment's.
pub fn lifecycle_statements(configs: &[FleetdConfig], deployment: Option<&str>) -> Vec<Value> {
    let mut fixed = BTreeSet::new();
    let mut pool_domains = BTreeSet::new();
    let mut create_domains = BTreeSet::new();
    let mut snapshots = BTreeSet::new();
    let mut kms_keys = BTreeSet::new();
    let mut zones = BTreeSet::new();
    let mut topics = BTreeSet::new();
    let mut queues = BTreeSet::new();
    let mut volumes = false;
    for config in configs {
        for domain in &config.domains {
            for entry in &domain.attach_volume {
                volumes = true;
                for source in &entry.source {
                    match source {
                        VolumeSource::Fixed => {
                            if let Some(id) = &entry.volume_id {
                                fixed.insert(format!("arn:aws:ec2:*:*:volume/{}", wildcard(id)));
                            }
                        }
                        VolumeSource::Pool => {
                            pool_domains.insert(domain.name.clone());
                        }
                        VolumeSource::Create => {
                            pool_domains.insert(domain.name.clone());
                            create_domains.insert(domain.name.clone());
                            let parameters = entry.create.as_ref();
                            let text = |key: &str| {
                                parameters.and_then(|p| p.get(key)).and_then(|v| v.as_str())
                            };
                            if let Some(snapshot) = text("SnapshotId") {
                                snapshots.insert(format!(
                                    "arn:aws:ec2:*::snapshot/{}",
                                    wildcard(snapshot)
                                ));
                            }
                            if let Some(key) = text("KmsKeyId") {
                                kms_keys.insert(if key.starts_with("arn:") {
                                    key.to_owned()
                                } else {
                                    "*".to_owned()
                                });
                            }
                        }
                    }
                }
            }
            for record in &domain.update_route53 {
                zones.insert(format!(
                    "arn:aws:route53:::hostedzone/{}",
                    zone_id(&record.hosted_zone)
                ));
            }
            for notify in &domain.notify {
                match notify.backend {
                    NotifyBackend::Sns => {
                        if let Some(topic) = &notify.topic {
                            topics.insert(wildcard(topic));
                        }
                    }
                    NotifyBackend::Sqs => {
                        if let Some(url) = &notify.queue_url {
                            queues.insert(queue_arn(url, notify.region.as_deref()));
                        }
                    }
                }
            }
        }
    }
    let mut statements = Vec::new();
    if volumes {
        statements.push(json!({
            "Sid": "FleetdDescribeVolumes",
            "Effect": "Allow",
            "Action": ["ec2:DescribeVolumes", "ec2:DescribeInstances"],
            "Resource": "*"
        }));
        let mut instances = json!({
            "Sid": "FleetdAttachToInstances",
            "Effect": "Allow",
            "Action": ["ec2:AttachVolume", "ec2:DetachVolume"],
            "Resource": "arn:aws:ec2:*:*:instance/*"
        });
        if let Some(tag) = deployment {
            instances["Condition"] =
                json!({"StringEquals": {format!("aws:ResourceTag/{TAG_DEPLOYMENT}"): tag}});
        }
        statements.push(instances);
    }
    if !fixed.is_empty() {
        statements.push(json!({
            "Sid": "FleetdFixedVolumes",
            "Effect": "Allow",
            "Action": ["ec2:AttachVolume", "ec2:DetachVolume"],
            "Resource": fixed.into_iter().collect::<Vec<_>>()
        }));
    }
    if !pool_domains.is_empty() {
        let domains: Vec<&String> = pool_domains.iter().collect();
        statements.push(json!({
            "Sid": "FleetdPoolVolumes",
            "Effect": "Allow",
            "Action": ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:CreateTags", "ec2:DeleteTags"],
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": {"StringEquals": {format!("aws:ResourceTag/{TAG_DOMAIN}"): domains}}
        }));
        statements.push(json!({
            "Sid": "FleetdEc2fleetdPoolVolumes",
            "Effect": "Allow",
            "Action": ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:CreateTags"],
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": {"StringEquals": {format!("aws:ResourceTag/{EC2FLEETD_TAG_DOMAIN}"): domains}}
        }));
    }
    if !create_domains.is_empty() {
        let domains: Vec<&String> = create_domains.iter().collect();
        let mut resources = vec!["arn:aws:ec2:*:*:volume/*".to_owned()];
        resources.extend(snapshots);
        statements.push(json!({
            "Sid": "FleetdCreateVolumes",
            "Effect": "Allow",
            "Action": "ec2:CreateVolume",
            "Resource": resources,
            "Condition": {"StringEquals": {format!("aws:RequestTag/{TAG_DOMAIN}"): domains}}
        }));
        statements.push(json!({
            "Sid": "FleetdTagOnCreate",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": {"StringEquals": {"ec2:CreateAction": "CreateVolume"}}
        }));
        statements.push(json!({
            "Sid": "FleetdDeleteUncommittedVolumes",
            "Effect": "Allow",
            "Action": "ec2:DeleteVolume",
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": {"StringEquals": {
                format!("aws:ResourceTag/{TAG_IN_TRANSIT}"): "true",
                format!("aws:ResourceTag/{TAG_DOMAIN}"): domains
            }}
        }));
    }
    if !kms_keys.is_empty() {
        let keys: Vec<String> = if kms_keys.contains("*") {
            vec!["*".to_owned()]
        } else {
            kms_keys.into_iter().collect()
        };
        statements.push(json!({
            "Sid": "FleetdEncryptedVolumes",
            "Effect": "Allow",
            "Action": ["kms:CreateGrant", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncrypt*", "kms:Decrypt"],
            "Resource": keys,
            "Condition": {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}
        }));
    }
    if !zones.is_empty() {
        statements.push(json!({
            "Sid": "FleetdRecords",
            "Effect": "Allow",
            "Action": ["route53:ChangeResourceRecordSets", "route53:ListResourceRecordSets"],
            "Resource": zones.into_iter().collect::<Vec<_>>()
        }));
        statements.push(json!({
            "Sid": "FleetdRecordChanges",
            "Effect": "Allow",
            "Action": "route53:GetChange",
            "Resource": "arn:aws:route53:::change/*"
        }));
    }
    if !topics.is_empty() {
        statements.push(json!({
            "Sid": "FleetdNotifySns",
            "Effect": "Allow",
            "Action": "sns:Publish",
            "Resource": topics.into_iter().collect::<Vec<_>>()
        }));
    }
    if !queues.is_empty() {
        statements.push(json!({
            "Sid": "FleetdNotifySqs",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": queues.into_iter().collect::<Vec<_>>()
        }));
    }
    statements
}

/// The whole policy document standalone `flotilla fleetd` needs for `config`, as JSON.
pub fn fleetd_policy(config: &FleetdConfig) -> String {
    let statements = lifecycle_statements(std::slice::from_ref(config), None);
    serde_json::to_string_pretty(&json!({"Version": "2012-10-17", "Statement": statements}))
        .expect("a policy document serializes")
}

/// The ARN of the queue at `url` (`https://sqs.<region>.amazonaws.com/<account>/<name>`, the
/// legacy `https://<region>.queue.amazonaws.com/…` and `https://queue.amazonaws.com/…`
/// (us-east-1)); another host (an endpoint of a VPC or an emulator) takes the region from
/// `region`, else any.
pub fn queue_arn(url: &str, region: Option<&str>) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut parts = rest.split('/');
    let host = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or("*");
    let name = parts.next().unwrap_or("*");
    let host_region = if host == "queue.amazonaws.com" {
        Some("us-east-1")
    } else if let Some(region) = host.strip_prefix("sqs.") {
        region.split('.').next()
    } else if host.contains(".queue.amazonaws.com") {
        host.split('.').next()
    } else {
        None
    };
    let partition = if host.ends_with(".cn") { "aws-cn" } else { "aws" };
    let region = host_region.or(region).unwrap_or("*");
    format!("arn:{partition}:sqs:{region}:{}:{}", wildcard(account), wildcard(name))
}

/// `text` with each macro (`{…}`) replaced by `*`, for a resource written with macros.
fn wildcard(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => {
                out.push('*');
                rest = &rest[start + end + 1..];
            }
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}
