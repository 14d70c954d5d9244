//! IAM: one role and instance profile per deployment, with least privilege.
//!
//! The role and its profile are named [`iam_role_name`] (`flotilla-<tag>`, or a prefix and a
//! hash of the tag when that is longer than IAM's 64 characters), and both carry the
//! deployment's tag (`flotilla:deployment=<tag>`). A role of that name without this
//! deployment's tag is not ours: `create` refuses before changing anything, and `destroy` leaves
//! it alone.
//!
//! The role can be assumed by EC2 only. Its one inline policy lets a machine read the agent
//! executables, its deployment's artifacts, and *its own* identity bundle: the bundle's key is
//! `<role id>:<instance id>`, which is `${aws:userid}` for the instance's credentials, so one
//! machine cannot read another's key. When the spec has `lifecycle:` configs, the same policy
//! also holds exactly what they need on the machines (volumes of their domains attached to the
//! deployment's instances, their hosted zones, topics and queues), derived from the configs by
//! [`lifecycle_statements`]; [`fleetd_policy`] is the same for standalone `flotilla fleetd`.
//!
//! The spec's `iam_statements` are a second inline policy of their own ([`USER_POLICY_NAME`]),
//! replaced when they change and deleted when they are gone; its `iam_policies` are attached to
//! the role, each recorded in the journal before it is attached, and on every `prepare` the
//! recorded ones the spec no longer names are detached (a policy someone else attached is left).
//! `destroy` detaches every managed policy and deletes both inline policies before it deletes
//! the role. The role carries the spec's top-level `tags` beside the deployment's.

use std::collections::BTreeSet;

use aws_sdk_iam::types::{InstanceProfile, Role, Tag};
use flotilla_core::provider::ProviderError;
use flotilla_spec::account::IamKeys;
use flotilla_spec::fleetd::FleetdConfig;
use flotilla_spec::names::iam_role_name;

use crate::clients::Clients;
use crate::error::AwsError;
use crate::journal::Journal;
pub use crate::machine::policy::{fleetd_policy, lifecycle_statements};
use crate::tags::{TAG_DEPLOYMENT, shared_user_tags};

const REGION: &str = "global";
const POLICY_NAME: &str = "flotilla-agent";
/// The inline policy holding the spec's `iam_statements`.
pub const USER_POLICY_NAME: &str = "flotilla-user";

/// The inline policy document of the spec's `iam_statements`, or `None` when there are none.
pub fn user_policy(keys: &IamKeys) -> Option<String> {
    if keys.iam_statements.is_empty() {
        return None;
    }
    Some(
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": keys.iam_statements,
        })
        .to_string(),
    )
}

/// The managed policies attached to role `name`.
pub async fn attached_policies(
    clients: &Clients,
    name: &str,
) -> Result<BTreeSet<String>, AwsError> {
    let mut attached = BTreeSet::new();
    let mut marker: Option<String> = None;
    loop {
        let page = clients
            .iam()
            .list_attached_role_policies()
            .role_name(name)
            .set_marker(marker.clone())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(REGION, "ListAttachedRolePolicies", name, e))?;
        attached.extend(
            page.attached_policies().iter().filter_map(|p| p.policy_arn()).map(str::to_owned),
        );
        match page.marker() {
            Some(next) if page.is_truncated() => marker = Some(next.to_owned()),
            _ => return Ok(attached),
        }
    }
}

/// Puts, replaces or deletes the inline policy of the spec's `iam_statements`.
async fn reconcile_user_policy(
    clients: &Clients,
    name: &str,
    keys: &IamKeys,
) -> Result<(), ProviderError> {
    let iam = clients.iam();
    match user_policy(keys) {
        Some(document) => {
            iam.put_role_policy()
                .role_name(name)
                .policy_name(USER_POLICY_NAME)
                .policy_document(document)
                .send()
                .await
                .map_err(|e| {
                    let error = AwsError::from_sdk(
                        REGION,
                        "PutRolePolicy",
                        format!("{name} {USER_POLICY_NAME} (iam_statements)"),
                        e,
                    );
                    ProviderError::from(error)
                })?;
        }
        None => {
            if let Err(e) =
                iam.delete_role_policy().role_name(name).policy_name(USER_POLICY_NAME).send().await
            {
                let error = AwsError::from_sdk(
                    REGION,
                    "DeleteRolePolicy",
                    format!("{name} {USER_POLICY_NAME}"),
                    e,
                );
                if !error.code_is("NoSuchEntity") {
                    return Err(error.into());
                }
            }
        }
    }
    Ok(())
}

/// Attaches the spec's `iam_policies` and detaches those flotilla attached that it no longer
/// names (see the module documentation).
async fn reconcile_attached(
    clients: &Clients,
    journal: &Journal,
    name: &str,
    keys: &IamKeys,
) -> Result<(), ProviderError> {
    let iam = clients.iam();
    let wanted: BTreeSet<String> = keys.iam_policies.iter().cloned().collect();
    let attached = attached_policies(clients, name).await?;
    for arn in wanted.difference(&attached) {
        journal.update(|r| {
            r.attached_policies.insert(arn.clone());
        })?;
        iam.attach_role_policy().role_name(name).policy_arn(arn).send().await.map_err(|e| {
            AwsError::from_sdk(REGION, "AttachRolePolicy", format!("{arn} to {name}"), e)
        })?;
    }
    let recorded = journal.read().attached_policies;
    for arn in recorded.difference(&wanted) {
        if attached.contains(arn)
            && let Err(e) = iam.detach_role_policy().role_name(name).policy_arn(arn).send().await
        {
            let error =
                AwsError::from_sdk(REGION, "DetachRolePolicy", format!("{arn} from {name}"), e);
            if !error.code_is("NoSuchEntity") {
                return Err(error.into());
            }
        }
        journal.update(|r| {
            r.attached_policies.remove(arn);
        })?;
    }
    Ok(())
}

/// The role's trust policy: EC2 only.
fn trust_policy() -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole"
        }]
    })
    .to_string()
}

/// The role's permissions: read the agents, the deployment's artifacts, its own identity; and
/// what the spec's lifecycle configs need on the machines ([`lifecycle_statements`]: volumes
/// of their domains, their hosted zones, topics and queues), nothing for a spec without them;
/// with `mounts_disks` (an entry's data disk has a `mount`), `ec2:DescribeInstances`, by which
/// the agent finds the volumes of its instance's block device mappings.
pub fn agent_policy(
    bucket: &str,
    tag: &str,
    lifecycles: &[FleetdConfig],
    mounts_disks: bool,
) -> String {
    let mut statements = vec![
        serde_json::json!({
            "Sid": "AgentAndArtifacts",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [
                format!("arn:aws:s3:::{bucket}/agents/*"),
                format!("arn:aws:s3:::{bucket}/deployments/{tag}/artifacts/*"),
            ]
        }),
        serde_json::json!({
            "Sid": "OwnIdentityOnly",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": format!("arn:aws:s3:::{bucket}/deployments/{tag}/identities/${{aws:userid}}.json")
        }),
    ];
    if mounts_disks {
        // Describe calls take no resource-level permissions.
        statements.push(serde_json::json!({
            "Sid": "DataDisksOfThisInstance",
            "Effect": "Allow",
            "Action": "ec2:DescribeInstances",
            "Resource": "*"
        }));
    }
    statements.extend(lifecycle_statements(lifecycles, Some(tag)));
    serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// Whether IAM `tags` name deployment `tag`.
fn tagged(tags: &[Tag], tag: &str) -> bool {
    tags.iter().any(|t| t.key() == TAG_DEPLOYMENT && t.value() == tag)
}

/// The deployment tag IAM `tags` carry, for messages.
fn owner(tags: &[Tag]) -> String {
    tags.iter()
        .find(|t| t.key() == TAG_DEPLOYMENT)
        .map(|t| format!("it belongs to deployment `{}`", t.value()))
        .unwrap_or_else(|| format!("it has no {TAG_DEPLOYMENT} tag"))
}

/// The role `name`, if it exists.
async fn find_role(clients: &Clients, name: &str) -> Result<Option<Role>, AwsError> {
    match clients.iam().get_role().role_name(name).send().await {
        Ok(found) => Ok(found.role().cloned()),
        Err(e) => {
            let error = AwsError::from_sdk(REGION, "GetRole", name, e);
            if error.code_is("NoSuchEntity") { Ok(None) } else { Err(error) }
        }
    }
}

/// The instance profile `name`, if it exists.
async fn find_profile(clients: &Clients, name: &str) -> Result<Option<InstanceProfile>, AwsError> {
    match clients.iam().get_instance_profile().instance_profile_name(name).send().await {
        Ok(found) => Ok(found.instance_profile().cloned()),
        Err(e) => {
            let error = AwsError::from_sdk(REGION, "GetInstanceProfile", name, e);
            if error.code_is("NoSuchEntity") { Ok(None) } else { Err(error) }
        }
    }
}

/// Refuses a role or profile named for deployment `tag` that another deployment (or anyone
/// else) owns: a role without this deployment's tag, a profile tagged for another deployment
/// or holding another role. Read-only, so `prepare` runs it before its first change.
pub async fn check_ownership(clients: &Clients, tag: &str) -> Result<(), ProviderError> {
    let name = iam_role_name(tag);
    let (role, profile) = tokio::join!(find_role(clients, &name), find_profile(clients, &name));
    if let Some(role) = role?
        && !tagged(role.tags(), tag)
    {
        return Err(not_ours("GetRole", &name, tag, &owner(role.tags())));
    }
    if let Some(profile) = profile? {
        let foreign_tag =
            profile.tags().iter().any(|t| t.key() == TAG_DEPLOYMENT && t.value() != tag);
        if foreign_tag {
            return Err(not_ours("GetInstanceProfile", &name, tag, &owner(profile.tags())));
        }
        if let Some(other) = profile.roles().iter().find(|r| r.role_name() != name) {
            let holds = format!("it holds the role {}", other.role_name());
            return Err(not_ours("GetInstanceProfile", &name, tag, &holds));
        }
    }
    Ok(())
}

fn not_ours(operation: &'static str, name: &str, tag: &str, why: &str) -> ProviderError {
    let kind = if operation == "GetRole" { "role" } else { "instance profile" };
    AwsError::other(
        REGION,
        operation,
        name,
        format!(
            "the IAM {kind} {name} exists but is not deployment `{tag}`'s ({why}); flotilla changed nothing. Delete or rename it if it is left over, or choose another tag"
        ),
    )
    .into()
}

/// Creates or adopts the role and the profile holding it; returns the role id. A role or profile
/// of another owner is refused ([`check_ownership`]) before anything is changed.
pub async fn ensure_role(
    clients: &Clients,
    journal: &Journal,
    tag: &str,
    bucket: &str,
    keys: &IamKeys,
    lifecycles: &[FleetdConfig],
    mounts_disks: bool,
) -> Result<String, ProviderError> {
    let iam = clients.iam();
    let name = iam_role_name(tag);
    check_ownership(clients, tag).await?;
    let deployment_tag = || {
        Tag::builder()
            .key(TAG_DEPLOYMENT)
            .value(tag)
            .build()
            .map_err(|e| ProviderError::with_source("an IAM tag", e))
    };
    let mut user_tags = Vec::new();
    for (key, value) in shared_user_tags(tag) {
        user_tags.push(
            Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| ProviderError::with_source("an IAM tag", e))?,
        );
    }
    let role_id = match find_role(clients, &name).await? {
        Some(role) => {
            let missing: Vec<Tag> = user_tags.iter().filter(|t| !role.tags().contains(t)).cloned().collect();
            if !missing.is_empty() {
                iam.tag_role()
                    .role_name(&name)
                    .set_tags(Some(missing))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(REGION, "TagRole", &name, e))?;
            }
            role.role_id().to_owned()
        }
        None => iam
            .create_role()
            .role_name(&name)
            .assume_role_policy_document(trust_policy())
            .description(format!("flotilla deployment {tag}: lets its machines read their agent, artifacts and identity"))
            .set_tags(Some([vec![deployment_tag()?], user_tags.clone()].concat()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(REGION, "CreateRole", &name, e))?
            .role()
            .map(|r| r.role_id().to_owned())
            .ok_or_else(|| AwsError::other(REGION, "CreateRole", &name, "no role in the answer"))?,
    };
    iam.put_role_policy()
        .role_name(&name)
        .policy_name(POLICY_NAME)
        .policy_document(agent_policy(bucket, tag, lifecycles, mounts_disks))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(REGION, "PutRolePolicy", &name, e))?;
    reconcile_user_policy(clients, &name, keys).await?;
    reconcile_attached(clients, journal, &name, keys).await?;
    // The profile carries the role's tags: the deployment's and the spec's top-level ones.
    let profile_tags = [vec![deployment_tag()?], user_tags].concat();
    let has_role = match find_profile(clients, &name).await? {
        Some(profile) => {
            let missing: Vec<Tag> =
                profile_tags.iter().filter(|t| !profile.tags().contains(t)).cloned().collect();
            if !missing.is_empty() {
                iam.tag_instance_profile()
                    .instance_profile_name(&name)
                    .set_tags(Some(missing))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(REGION, "TagInstanceProfile", &name, e))?;
            }
            profile.roles().iter().any(|r| r.role_name() == name)
        }
        None => {
            iam.create_instance_profile()
                .instance_profile_name(&name)
                .set_tags(Some(profile_tags))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(REGION, "CreateInstanceProfile", &name, e))?;
            false
        }
    };
    if !has_role {
        match iam
            .add_role_to_instance_profile()
            .instance_profile_name(&name)
            .role_name(&name)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let error = AwsError::from_sdk(REGION, "AddRoleToInstanceProfile", &name, e);
                if !error.code_is("LimitExceeded") {
                    return Err(error.into());
                }
            }
        }
    }
    Ok(role_id)
}

/// Removes the profile, the role's policy and the role of deployment `tag`, when they are its
/// own: a role without the deployment's tag is left alone (with a warning), and so is a profile
/// that is neither tagged for the deployment nor holds only its role. Missing pieces are fine.
pub async fn delete_role(clients: &Clients, tag: &str) -> Result<(), ProviderError> {
    let iam = clients.iam();
    let name = iam_role_name(tag);
    let role_ours = match find_role(clients, &name).await? {
        Some(role) if !tagged(role.tags(), tag) => {
            tracing::warn!(role = %name, "the IAM role is not this deployment's ({}); leaving it", owner(role.tags()));
            return Ok(());
        }
        Some(_) => true,
        None => false,
    };
    let ignore_missing = |result: Result<(), AwsError>| match result {
        Err(error) if error.code_is("NoSuchEntity") => Ok(()),
        other => other,
    };
    if let Some(profile) = find_profile(clients, &name).await? {
        let holds_only_ours = profile.roles().iter().all(|r| r.role_name() == name);
        let profile_ours = holds_only_ours && (tagged(profile.tags(), tag) || role_ours);
        if profile_ours {
            for role in profile.roles() {
                ignore_missing(
                    iam.remove_role_from_instance_profile()
                        .instance_profile_name(&name)
                        .role_name(role.role_name())
                        .send()
                        .await
                        .map(drop)
                        .map_err(|e| {
                            AwsError::from_sdk(REGION, "RemoveRoleFromInstanceProfile", &name, e)
                        }),
                )?;
            }
            ignore_missing(
                iam.delete_instance_profile()
                    .instance_profile_name(&name)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| AwsError::from_sdk(REGION, "DeleteInstanceProfile", &name, e)),
            )?;
        } else {
            tracing::warn!(profile = %name, "the instance profile is not this deployment's; leaving it");
        }
    }
    if !role_ours {
        return Ok(());
    }
    // A role with attached policies cannot be deleted: every one goes (the role is ours).
    for arn in attached_policies(clients, &name).await? {
        ignore_missing(
            iam.detach_role_policy()
                .role_name(&name)
                .policy_arn(&arn)
                .send()
                .await
                .map(drop)
                .map_err(|e| {
                    AwsError::from_sdk(REGION, "DetachRolePolicy", format!("{arn} from {name}"), e)
                }),
        )?;
    }
    for policy in [POLICY_NAME, USER_POLICY_NAME] {
        ignore_missing(
            iam.delete_role_policy()
                .role_name(&name)
                .policy_name(policy)
                .send()
                .await
                .map(drop)
                .map_err(|e| {
                    AwsError::from_sdk(REGION, "DeleteRolePolicy", format!("{name} {policy}"), e)
                }),
        )?;
    }
    ignore_missing(
        iam.delete_role()
            .role_name(&name)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::from_sdk(REGION, "DeleteRole", &name, e)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Whether IAM's wildcard `pattern` (`*` is any run of characters, `/` included) matches
    /// `text`.
    fn glob(pattern: &str, text: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == text,
            Some((head, rest)) => {
                let Some(text) = text.strip_prefix(head) else { return false };
                (0..=text.len()).any(|i| text.is_char_boundary(i) && glob(rest, &text[i..]))
            }
        }
    }

    /// The values of a policy field that may be a string or an array of strings.
    fn values(field: &serde_json::Value) -> Vec<String> {
        match field {
            serde_json::Value::String(one) => vec![one.clone()],
            serde_json::Value::Array(many) => {
                many.iter().map(|v| v.as_str().expect("a string").to_owned()).collect()
            }
            other => panic!("not a string or an array: {other}"),
        }
    }

    /// A spec whose disks have mount points lets the agent describe instances (to find its
    /// volumes), and nothing else is added.
    #[test]
    fn mounted_disks_add_only_describe_instances() {
        let without = statements(&agent_policy("b", "demo", &[], false));
        let with = statements(&agent_policy("b", "demo", &[], true));
        assert_eq!(with.len(), without.len() + 1);
        let added = with.iter().find(|s| s.0 == "DataDisksOfThisInstance").unwrap();
        assert_eq!(added.1, ["ec2:DescribeInstances"]);
        assert_eq!(added.2, ["*"]);
    }

    #[test]
    fn the_policy_reads_only_what_a_machine_needs() {
        let bucket = "flotilla-0123456789abcdef";
        let long = "t".repeat(flotilla_spec::names::MAX_TAG_BYTES);
        for tag in ["demo", "-rf", "demo-", long.as_str()] {
            let policy: serde_json::Value =
                serde_json::from_str(&agent_policy(bucket, tag, &[], false)).unwrap();
            assert_eq!(policy["Version"], "2012-10-17");
            let mut resources = BTreeSet::new();
            for statement in policy["Statement"].as_array().unwrap() {
                let keys: BTreeSet<&str> =
                    statement.as_object().unwrap().keys().map(String::as_str).collect();
                assert!(
                    keys.is_subset(&BTreeSet::from(["Sid", "Effect", "Action", "Resource"])),
                    "no NotAction, NotResource, Principal or Condition: {keys:?}"
                );
                assert_eq!(statement["Effect"], "Allow");
                assert_eq!(values(&statement["Action"]), ["s3:GetObject"], "read only, no `*`");
                resources.extend(values(&statement["Resource"]));
            }
            let arn = |key: &str| format!("arn:aws:s3:::{bucket}/{key}");
            let expected = BTreeSet::from([
                arn("agents/*"),
                arn(&format!("deployments/{tag}/artifacts/*")),
                arn(&format!("deployments/{tag}/identities/${{aws:userid}}.json")),
            ]);
            assert_eq!(resources, expected, "exactly the agents, the artifacts, its own identity");

            // What a machine of this deployment can read, with its own user id substituted.
            let me = "AROAROLEID:i-0aaa";
            let readable = |key: &str| {
                resources.iter().any(|r| glob(&r.replace("${aws:userid}", me), &arn(key)))
            };
            assert!(readable("agents/abc"));
            assert!(readable(&format!("deployments/{tag}/artifacts/abc")));
            assert!(readable(&format!("deployments/{tag}/identities/{me}.json")));
            assert!(!readable(&format!("deployments/{tag}/identities/AROAROLEID:i-0bbb.json")));
            assert!(!readable(&format!("deployments/{tag}x/artifacts/abc")), "a longer tag");
            assert!(!readable(&format!("deployments/{tag}-2/identities/{me}.json")));
            assert!(!readable(&format!("deployments/{tag}/other/abc")));
            assert!(!readable("deployments/other/artifacts/abc"));
        }
    }

    fn config(text: &str) -> FleetdConfig {
        flotilla_spec::fleetd::parse_fleetd_config(text, std::path::Path::new("test.jsonc"))
            .map_err(|e| e.to_string())
            .unwrap()
            .config
    }

    /// (Sid, actions, resources, condition) of each statement.
    fn statements(policy: &str) -> Vec<(String, Vec<String>, Vec<String>, serde_json::Value)> {
        let policy: serde_json::Value = serde_json::from_str(policy).unwrap();
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(s["Effect"], "Allow");
                (
                    s["Sid"].as_str().unwrap().to_owned(),
                    values(&s["Action"]),
                    values(&s["Resource"]),
                    s["Condition"].clone(),
                )
            })
            .collect()
    }

    const LIFECYCLE: &str = r#"{
        domains: {
            db: {
                "attach-volume": [
                    {device: "/dev/sdf", source: "pc", "pool-name": "data",
                     create: {Size: 10, VolumeType: "gp3", SnapshotId: "snap-1", KmsKeyId: "arn:aws:kms:us-east-1:123456789012:key/k1"}},
                    {device: "/dev/sdg", source: "x", "volume-id": "vol-0123456789abcdef0"},
                ],
                "update-route53": [{hostedzone: "/hostedzone/Z111", name: "db-{instance_index}.example.com", ttl: 60}],
                notify: [
                    {backend: "aws-sns", options: {region: "eu-west-1", topic: "arn:aws:sns:eu-west-1:123456789012:ops"}},
                    {backend: "aws-sqs", options: {region: "eu-west-1", "queue-url": "https://sqs.eu-west-1.amazonaws.com/123456789012/events"}},
                ],
            },
            web: {
                "attach-volume": [{device: "/dev/sdh", source: "p", "pool-name": "cache"}],
                "update-route53": [{hostedzone: "Z222", name: "web.example.com", ttl: 60}],
            },
        },
    }"#;

    #[test]
    fn the_role_gains_exactly_what_the_lifecycle_needs() {
        let lifecycle = config(LIFECYCLE);
        let policy = agent_policy("b", "demo", std::slice::from_ref(&lifecycle), false);
        let found = statements(&policy);
        let by_sid = |sid: &str| {
            found.iter().find(|s| s.0 == sid).unwrap_or_else(|| panic!("no {sid} in {policy}"))
        };
        // The agent's own two statements come first and are unchanged.
        assert_eq!(found[0].0, "AgentAndArtifacts");
        assert_eq!(found[1].0, "OwnIdentityOnly");

        let instances = by_sid("FleetdAttachToInstances");
        assert_eq!(instances.1, ["ec2:AttachVolume", "ec2:DetachVolume"]);
        assert_eq!(
            instances.3,
            serde_json::json!({"StringEquals": {"aws:ResourceTag/flotilla:deployment": "demo"}}),
            "only this deployment's instances"
        );
        assert_eq!(
            by_sid("FleetdFixedVolumes").2,
            ["arn:aws:ec2:*:*:volume/vol-0123456789abcdef0"]
        );
        let pool = by_sid("FleetdPoolVolumes");
        assert_eq!(pool.2, ["arn:aws:ec2:*:*:volume/*"]);
        assert_eq!(
            pool.3,
            serde_json::json!({"StringEquals": {"aws:ResourceTag/flotilla:fleetd-domain": ["db", "web"]}})
        );
        assert_eq!(
            by_sid("FleetdEc2fleetdPoolVolumes").3,
            serde_json::json!({"StringEquals": {"aws:ResourceTag/user:ec2fd.domain": ["db", "web"]}})
        );
        let create = by_sid("FleetdCreateVolumes");
        assert_eq!(create.1, ["ec2:CreateVolume"]);
        assert_eq!(create.2, ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*::snapshot/snap-1"]);
        assert_eq!(
            create.3,
            serde_json::json!({"StringEquals": {"aws:RequestTag/flotilla:fleetd-domain": ["db"]}}),
            "only `c` domains create"
        );
        assert_eq!(
            by_sid("FleetdTagOnCreate").3,
            serde_json::json!({"StringEquals": {"ec2:CreateAction": "CreateVolume"}})
        );
        let delete = by_sid("FleetdDeleteUncommittedVolumes");
        assert_eq!(delete.1, ["ec2:DeleteVolume"]);
        assert_eq!(delete.3["StringEquals"]["aws:ResourceTag/flotilla:fleetd-in-transit"], "true");
        assert_eq!(
            by_sid("FleetdEncryptedVolumes").2,
            ["arn:aws:kms:us-east-1:123456789012:key/k1"]
        );
        let records = by_sid("FleetdRecords");
        assert_eq!(
            records.1,
            ["route53:ChangeResourceRecordSets", "route53:ListResourceRecordSets"]
        );
        assert_eq!(
            records.2,
            ["arn:aws:route53:::hostedzone/Z111", "arn:aws:route53:::hostedzone/Z222"]
        );
        assert_eq!(by_sid("FleetdRecordChanges").1, ["route53:GetChange"]);
        let sns = by_sid("FleetdNotifySns");
        assert_eq!(
            (sns.1.clone(), sns.2.clone()),
            (
                vec!["sns:Publish".to_owned()],
                vec!["arn:aws:sns:eu-west-1:123456789012:ops".to_owned()]
            )
        );
        let sqs = by_sid("FleetdNotifySqs");
        assert_eq!(
            (sqs.1.clone(), sqs.2.clone()),
            (
                vec!["sqs:SendMessage".to_owned()],
                vec!["arn:aws:sqs:eu-west-1:123456789012:events".to_owned()]
            )
        );
        // No action beyond these, and no `*` resource except the Describe calls.
        for (sid, actions, resources, _) in &found[2..] {
            for action in actions {
                assert!(!action.ends_with(":*"), "{sid}: {action}");
            }
            if sid != "FleetdDescribeVolumes" {
                assert!(!resources.contains(&"*".to_owned()), "{sid}: {resources:?}");
            }
        }
        assert_eq!(
            by_sid("FleetdDescribeVolumes").1,
            ["ec2:DescribeVolumes", "ec2:DescribeInstances"]
        );
        assert!(
            agent_policy("b", "demo", &[lifecycle], false).len()
                < flotilla_spec::account::MAX_INLINE_POLICY_CHARS,
            "within IAM's inline policy size"
        );
    }

    #[test]
    fn a_lifecycle_asks_only_for_the_parts_it_uses() {
        let hooks_only = config(r#"{domains: {app: {exec: [{lines: [{argv: ["true"]}]}]}}}"#);
        assert!(lifecycle_statements(&[hooks_only], Some("demo")).is_empty());
        let records_only = config(
            r#"{domains: {app: {"update-route53": [{hostedzone: "Z1", name: "a.example.com", ttl: 5}]}}}"#,
        );
        let sids: Vec<String> = lifecycle_statements(&[records_only], None)
            .iter()
            .map(|s| s["Sid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(sids, ["FleetdRecords", "FleetdRecordChanges"]);
        let pool_only = config(
            r#"{domains: {app: {"attach-volume": [{device: "/dev/sdf", source: "p", "pool-name": "x"}]}}}"#,
        );
        let statements = lifecycle_statements(&[pool_only], Some("demo"));
        let sids: Vec<&str> = statements.iter().map(|s| s["Sid"].as_str().unwrap()).collect();
        assert!(!sids.contains(&"FleetdCreateVolumes"), "{sids:?}");
        assert!(!sids.contains(&"FleetdDeleteUncommittedVolumes"), "{sids:?}");
    }

    #[test]
    fn the_standalone_policy_is_a_whole_document_without_the_deployment() {
        let policy = fleetd_policy(&config(LIFECYCLE));
        let parsed: serde_json::Value = serde_json::from_str(&policy).unwrap();
        assert_eq!(parsed["Version"], "2012-10-17");
        let found = statements(&policy);
        let instances = found.iter().find(|s| s.0 == "FleetdAttachToInstances").unwrap();
        assert!(instances.3.is_null(), "a standalone machine has no deployment tag");
        assert!(!found.iter().any(|s| s.0 == "AgentAndArtifacts"));
    }

    #[test]
    fn queue_urls_become_arns() {
        use crate::machine::policy::queue_arn;
        assert_eq!(
            queue_arn("https://sqs.eu-west-1.amazonaws.com/123456789012/q", None),
            "arn:aws:sqs:eu-west-1:123456789012:q"
        );
        assert_eq!(
            queue_arn("https://queue.amazonaws.com/123456789012/q", None),
            "arn:aws:sqs:us-east-1:123456789012:q"
        );
        assert_eq!(
            queue_arn("https://ap-south-1.queue.amazonaws.com/123456789012/q", None),
            "arn:aws:sqs:ap-south-1:123456789012:q"
        );
        assert_eq!(
            queue_arn("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", None),
            "arn:aws-cn:sqs:cn-north-1:123456789012:q"
        );
        assert_eq!(
            queue_arn("http://127.0.0.1:5000/123456789012/q-{instance_index}", Some("us-west-2")),
            "arn:aws:sqs:us-west-2:123456789012:q-*"
        );
    }

    #[test]
    fn only_ec2_may_assume_the_role() {
        let policy: serde_json::Value = serde_json::from_str(&trust_policy()).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0]["Principal"], serde_json::json!({"Service": "ec2.amazonaws.com"}));
        assert_eq!(statements[0]["Action"], "sts:AssumeRole");
    }

    #[test]
    fn long_tags_get_their_own_role_within_iams_limit() {
        // Two deployer-valid tags of 70 characters that share their first 60.
        let shared = "a".repeat(60);
        let (first, second) = (format!("{shared}-first-001"), format!("{shared}-second-02"));
        assert_eq!((first.len(), second.len()), (70, 70));
        let (a, b) = (iam_role_name(&first), iam_role_name(&second));
        assert_ne!(a, b);
        for name in [&a, &b, &iam_role_name(&"x".repeat(255)), &iam_role_name("-rf")] {
            assert!(name.len() <= 64, "{name}");
            let iam_characters = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c);
            assert!(name.chars().all(iam_characters), "{name}");
        }
    }
}
