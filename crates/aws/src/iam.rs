//! IAM: one role and instance profile per deployment, with least privilege.
//!
//! The role (`flotilla-<tag>`) can be assumed by EC2 only. Its one inline policy lets a machine
//! read the agent executables, its deployment's artifacts, and *its own* identity bundle: the
//! bundle's key is `<role id>:<instance id>`, which is `${aws:userid}` for the instance's
//! credentials, so one machine cannot read another's key.

use flotilla_core::provider::ProviderError;

use crate::clients::Clients;
use crate::error::AwsError;

const REGION: &str = "global";
const POLICY_NAME: &str = "flotilla-agent";

/// The role and profile name of deployment `tag` (IAM names allow `[\w+=,.@-]`, 64 chars).
pub fn role_name(tag: &str) -> String {
    let name = format!("flotilla-{tag}");
    name.chars().take(64).collect()
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

/// Creates or adopts the role and the profile holding it; returns the role id.
pub async fn ensure_role(
    clients: &Clients,
    tag: &str,
    bucket: &str,
) -> Result<String, ProviderError> {
    let iam = clients.iam();
    let name = role_name(tag);
    let role_id = match iam.get_role().role_name(&name).send().await {
        Ok(found) => found.role().map(|r| r.role_id().to_owned()),
        Err(e) => {
            let error = AwsError::from_sdk(REGION, "GetRole", &name, e);
            if !error.code_is("NoSuchEntity") {
                return Err(error.into());
            }
            None
        }
    };
    let role_id = match role_id {
        Some(id) => id,
        None => iam
            .create_role()
            .role_name(&name)
            .assume_role_policy_document(trust_policy())
            .description(format!("flotilla deployment {tag}: lets its machines read their agent, artifacts and identity"))
            .tags(aws_sdk_iam::types::Tag::builder().key(crate::records::TAG_DEPLOYMENT).value(tag).build().map_err(|e| ProviderError::with_source("tag", e))?)
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
    let has_role = match iam.get_instance_profile().instance_profile_name(&name).send().await {
        Ok(found) => found
            .instance_profile()
            .is_some_and(|p| p.roles().iter().any(|r| r.role_name() == name)),
        Err(e) => {
            let error = AwsError::from_sdk(REGION, "GetInstanceProfile", &name, e);
            if !error.code_is("NoSuchEntity") {
                return Err(error.into());
            }
            iam.create_instance_profile()
                .instance_profile_name(&name)
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

/// Removes the profile, the role's policy and the role. Missing pieces are fine.
pub async fn delete_role(clients: &Clients, tag: &str) -> Result<(), ProviderError> {
    let iam = clients.iam();
    let name = role_name(tag);
    let ignore_missing = |result: Result<(), AwsError>| match result {
        Err(error) if error.code_is("NoSuchEntity") => Ok(()),
        other => other,
    };
    ignore_missing(
        iam.remove_role_from_instance_profile()
            .instance_profile_name(&name)
            .role_name(&name)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::from_sdk(REGION, "RemoveRoleFromInstanceProfile", &name, e)),
    )?;
    ignore_missing(
        iam.delete_instance_profile()
            .instance_profile_name(&name)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::from_sdk(REGION, "DeleteInstanceProfile", &name, e)),
    )?;
    ignore_missing(
        iam.delete_role_policy()
            .role_name(&name)
            .policy_name(POLICY_NAME)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::from_sdk(REGION, "DeleteRolePolicy", &name, e)),
    )?;
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
    use super::*;

    #[test]
    fn the_policy_reads_only_what_a_machine_needs() {
        let policy: serde_json::Value = serde_json::from_str(&agent_policy("b", "t")).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        for statement in statements {
            assert_eq!(statement["Action"], "s3:GetObject", "read only");
        }
        assert_eq!(
            statements[1]["Resource"], "arn:aws:s3:::b/deployments/t/identities/${aws:userid}.json",
            "a machine reads its own identity only"
        );
        assert!(!agent_policy("b", "t").contains("s3:*"));
    }
}
