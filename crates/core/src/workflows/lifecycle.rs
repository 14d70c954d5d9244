//! An instance entry's `lifecycle:` on its way to the machines: the config read (inline, or
//! the ec2fleetd file it names), the macro values only the deployer knows, and the refusal of
//! what needs a cloud on the machine under the local provider.

use std::path::Path;

use flotilla_spec::diagnostic::{Severity, SpecErrors};
use flotilla_spec::fleet::{InstanceSpec, resolve_path};
use flotilla_spec::fleetd::{FleetdConfig, Lifecycle};
use flotilla_spec::manifest::ManifestLifecycle;
use flotilla_spec::{ProviderKind, SpecDocument};

use crate::error::CoreError;

/// The config of `instance`'s lifecycle, read relative to `cwd` when it names a file.
pub(crate) fn lifecycle_config(
    instance: &InstanceSpec,
    cwd: &Path,
) -> Result<Option<FleetdConfig>, CoreError> {
    match &instance.lifecycle {
        None => Ok(None),
        Some(Lifecycle::Inline(config)) => Ok(Some(config.clone())),
        Some(Lifecycle::File(path)) => {
            let document = flotilla_spec::fleetd::load_fleetd_config(&resolve_path(cwd, path))
                .map_err(CoreError::Invalid)?;
            Ok(Some(document.config))
        }
    }
}

/// The lifecycle config of every instance entry that has one, in spec order.
pub(crate) fn lifecycle_configs(
    document: &SpecDocument,
    cwd: &Path,
) -> Result<Vec<FleetdConfig>, CoreError> {
    let mut configs = Vec::new();
    for instance in &document.spec.instances {
        configs.extend(lifecycle_config(instance, cwd)?);
    }
    Ok(configs)
}

/// The manifest's lifecycle for machine `name` of `instance`: `node-3` has index 3, an entry
/// without `count` index 0.
pub(crate) fn manifest_lifecycle(
    instance: &InstanceSpec,
    name: &str,
    cwd: &Path,
) -> Result<Option<ManifestLifecycle>, CoreError> {
    let Some(config) = lifecycle_config(instance, cwd)? else {
        return Ok(None);
    };
    Ok(Some(ManifestLifecycle {
        config,
        name: name.to_owned(),
        instance_index: instance_index(&instance.name, name),
    }))
}

/// The machine's index in its entry: the number after `<entry>-`, else 0.
fn instance_index(entry: &str, machine: &str) -> u32 {
    machine
        .strip_prefix(entry)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|index| index.parse().ok())
        .unwrap_or(0)
}

/// The parts of a lifecycle config that need a cloud on the machine (volumes, Route 53
/// records, notifications): the local provider has none, so they are refused there, each at
/// its field, rather than skipped where the user relies on them. On AWS the agent runs them
/// through its machine cloud. (`set-hostname` is not refused: on the local provider the status
/// lists it as not applicable, as it does kernel settings.)
pub fn refuse_unsupported_lifecycle(
    document: &SpecDocument,
    provider: ProviderKind,
    cwd: &Path,
) -> Result<(), CoreError> {
    if provider != ProviderKind::Local {
        return Ok(());
    }
    let mut diagnostics = Vec::new();
    for (index, instance) in document.spec.instances.iter().enumerate() {
        let Some(config) = lifecycle_config(instance, cwd)? else {
            continue;
        };
        let in_file = match &instance.lifecycle {
            Some(Lifecycle::File(path)) => format!(" (in {path})"),
            _ => String::new(),
        };
        for (field, key) in unsupported_keys(&config) {
            let field_path = match &instance.lifecycle {
                Some(Lifecycle::Inline(_)) => format!("instances[{index}].lifecycle.{field}"),
                _ => format!("instances[{index}].lifecycle"),
            };
            diagnostics.push(
                document
                    .diagnostic(
                        Severity::Error,
                        &field_path,
                        format!(
                            "`{field}`{in_file}: the local provider has no cloud to run `{key}` on (locally only `exec` hooks run)"
                        ),
                    )
                    .with_help(
                        "remove it for the local fleet, or deploy to AWS, where the agent runs it",
                    ),
            );
        }
    }
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(CoreError::Invalid(SpecErrors { diagnostics }))
    }
}

/// (field path inside the lifecycle, key) of everything that needs a cloud on the machine.
pub fn unsupported_keys(config: &FleetdConfig) -> Vec<(String, &'static str)> {
    let mut keys = Vec::new();
    for domain in &config.domains {
        let at = |key: &str| format!("domains.{}.{key}", domain.name);
        if !domain.attach_volume.is_empty() {
            keys.push((at("attach-volume"), "attach-volume"));
        }
        if !domain.update_route53.is_empty() {
            keys.push((at("update-route53"), "update-route53"));
        }
        if !domain.notify.is_empty() {
            keys.push((at("notify"), "notify"));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_is_the_number_after_the_entry_name() {
        assert_eq!(instance_index("node", "node-3"), 3);
        assert_eq!(instance_index("node", "node"), 0);
        assert_eq!(instance_index("a-b", "a-b-12"), 12);
    }
}
