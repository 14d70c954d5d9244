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
//! machine cannot read another's key.
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
use flotilla_spec::names::iam_role_name;

use crate::clients::Clients;
use crate::error::AwsError;
use crate::journal::Journal;
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

/// The role's permissions: read the agents, the deployment's artifacts, its own identity.
pub fn agent_policy(bucket: &str, tag: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AgentAndArtifacts",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [
                    format!("arn:aws:s3:::{bucket}/agents/*"),
                    format!("arn:aws:s3:::{bucket}/deployments/{tag}/artifacts/*"),
                ]
            },
            {
                "Sid": "OwnIdentityOnly",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{bucket}/deployments/{tag}/identities/${{aws:userid}}.json")
            }
        ]
    })
    .to_string()
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
        .policy_document(agent_policy(bucket, tag))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(REGION, "PutRolePolicy", &name, e))?;
    reconcile_user_policy(clients, &name, keys).await?;
    reconcile_attached(clients, journal, &name, keys).await?;
    let has_role = match find_profile(clients, &name).await? {
        Some(profile) => profile.roles().iter().any(|r| r.role_name() == name),
        None => {
            iam.create_instance_profile()
                .instance_profile_name(&name)
                .tags(deployment_tag()?)
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

    #[test]
    fn the_policy_reads_only_what_a_machine_needs() {
        let bucket = "flotilla-0123456789abcdef";
        let long = "t".repeat(flotilla_spec::names::MAX_TAG_BYTES);
        for tag in ["demo", "-rf", "demo-", long.as_str()] {
            let policy: serde_json::Value =
                serde_json::from_str(&agent_policy(bucket, tag)).unwrap();
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
