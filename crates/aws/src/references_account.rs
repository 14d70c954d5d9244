//! Images, IAM policies and KMS keys named by the spec (see `references.rs`): every group's
//! `image` in its region for each architecture its machines need (the binary's, or for the
//! monitoring machine its types'), its `root_volume.kms_key` in its region, its data disks'
//! snapshots and keys (`disks.rs`), and each of
//! `iam_policies` (GetPolicy). Each problem is reported once, at the field that wrote it.

use std::collections::BTreeSet;
use std::path::Path;

use flotilla_core::plan::{DeploymentPlan, GroupPlan};
use flotilla_core::progress::Progress;
use flotilla_core::provider::{ProviderError, ReferenceProblem};
use flotilla_spec::Severity;

use crate::clients::Clients;
use crate::error::AwsError;
use crate::{disks, images, kms, survey};

pub(super) async fn check(
    clients: &Clients,
    home: &Path,
    plan: &DeploymentPlan,
    _progress: &dyn Progress,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    let mut problems: Vec<ReferenceProblem> = Vec::new();
    let needs_catalog =
        plan.groups.iter().any(|g| g.settings.image.is_some() && g.architecture.is_none());
    let catalog = if needs_catalog {
        let scope = survey::CatalogScope::of_groups(&plan.groups);
        Some(survey::catalog(clients, home, &plan.regions(), &scope).await?)
    } else {
        None
    };
    let images = futures_util::future::try_join_all(
        plan.groups.iter().map(|group| check_image(clients, group, catalog.as_ref())),
    );
    let keys = futures_util::future::try_join_all(
        plan.groups.iter().map(|group| check_key(clients, group)),
    );
    let disks = futures_util::future::try_join_all(
        plan.groups.iter().map(|group| check_disks(clients, group)),
    );
    let policies = futures_util::future::try_join_all(
        plan.iam
            .iam_policies
            .iter()
            .enumerate()
            .map(|(index, arn)| check_policy(clients, index, arn)),
    );
    let (images, keys, disks, policies) = tokio::try_join!(images, keys, disks, policies)?;
    for problem in images.into_iter().chain(keys).chain(disks).chain(policies).flatten() {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    Ok(problems)
}

fn error(field: String, message: String, help: String) -> ReferenceProblem {
    ReferenceProblem { field, severity: Severity::Error, message, help }
}

/// The architectures the machines of `group` need: the binary's, or those of the types it may
/// launch (the monitoring machine runs only the agent, built for each).
fn architectures(
    group: &GroupPlan,
    catalog: Option<&flotilla_capacity::Catalog>,
) -> BTreeSet<String> {
    if let Some(architecture) = group.architecture {
        return BTreeSet::from([architecture.as_str().to_owned()]);
    }
    let Some(catalog) = catalog else { return BTreeSet::new() };
    group
        .offered
        .values()
        .flatten()
        .filter_map(|t| survey::machine_architecture(catalog, t).ok())
        .map(str::to_owned)
        .collect()
}

async fn check_image(
    clients: &Clients,
    group: &GroupPlan,
    catalog: Option<&flotilla_capacity::Catalog>,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    let Some(image) = &group.settings.image else { return Ok(Vec::new()) };
    let owners = &group.settings.image_owners.value;
    let ec2 = clients.ec2(&group.region);
    let mut problems = Vec::new();
    let mut wanted = architectures(group, catalog);
    if wanted.is_empty() {
        wanted.insert("x86_64".to_owned());
    }
    for architecture in wanted {
        if let Err(problem) =
            images::resolve(&ec2, &group.region, &image.value, owners, &architecture).await?
        {
            let (message, help) =
                problem.describe(&image.value, &group.region, &architecture, owners);
            problems.push(error(image.field.clone(), message, help));
        }
    }
    Ok(problems)
}

async fn check_key(
    clients: &Clients,
    group: &GroupPlan,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    let Some(volume) = &group.settings.root_volume else { return Ok(Vec::new()) };
    let Some(key) = &volume.value.kms_key else { return Ok(Vec::new()) };
    let region = &group.region;
    Ok(match kms::resolve(clients, region, key).await? {
        Some(_) => Vec::new(),
        None => vec![error(
            format!("{}.kms_key", volume.field),
            format!("KMS key {key} does not exist in {region}"),
            format!(
                "a key belongs to one region: create it (or its alias) in {region}, or name a key of {region}"
            ),
        )],
    })
}

/// The entry's data disks: snapshots to clone (by id or the newest with a tag), their sizes
/// against the disks', and the KMS keys.
async fn check_disks(
    clients: &Clients,
    group: &GroupPlan,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    if group.disks.is_empty() {
        return Ok(Vec::new());
    }
    Ok(disks::resolve(clients, group).await?.err().unwrap_or_default())
}

async fn check_policy(
    clients: &Clients,
    index: usize,
    arn: &str,
) -> Result<Vec<ReferenceProblem>, ProviderError> {
    match clients.iam().get_policy().policy_arn(arn).send().await {
        Ok(_) => Ok(Vec::new()),
        Err(e) => {
            let failure = AwsError::from_sdk("global", "GetPolicy", arn, e);
            if failure.code_is("NoSuchEntity") || failure.code_is("InvalidInput") {
                Ok(vec![error(
                    format!("iam_policies[{index}]"),
                    format!("IAM policy {arn} does not exist ({})", failure.code.unwrap_or_default()),
                    "check the ARN: AWS's managed policies are arn:aws:iam::aws:policy/NAME, the account's arn:aws:iam::ACCOUNT:policy/NAME".to_owned(),
                )])
            } else {
                Err(failure.into())
            }
        }
    }
}
