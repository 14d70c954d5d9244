//! The spec's capacity keys checked against what can run them, with located diagnostics: the
//! binaries' architectures (read from their ELF headers) against the instance types, and each
//! group against the instance catalog of its region ([`DeploymentPlan::resolve_capacity`]).

use std::path::Path;

use flotilla_capacity::Architecture;
use flotilla_capacity::catalog::guess_architecture;
use flotilla_capacity::elf::{BinaryKind, HEADER_BYTES, binary_architecture};
use flotilla_capacity::select::Problem;
use flotilla_spec::diagnostic::{Diagnostic, Severity, SpecErrors};
use flotilla_spec::fleet::resolve_path;
use flotilla_spec::{FleetSpec, SpecDocument};

use crate::error::CoreError;
use crate::plan::{CapacityProblem, DeploymentPlan};
use crate::provider::Role;

/// What the binary of each instance entry runs on, in spec order (`None`: a script, or not a
/// program flotilla can read); an ELF binary for an architecture no EC2 Linux instance has is
/// an error at `instances[i].binary`.
pub fn binary_architectures(
    document: &SpecDocument,
    cwd: &Path,
) -> Result<Vec<Option<Architecture>>, CoreError> {
    let mut architectures = Vec::new();
    let mut diagnostics = Vec::new();
    for (index, instance) in document.spec.instances.iter().enumerate() {
        let path = resolve_path(cwd, &instance.binary);
        let header = read_header(&path)
            .map_err(|e| CoreError::Io(format!("reading {}: {e}", path.display())))?;
        match binary_architecture(&header) {
            BinaryKind::Elf(architecture) => architectures.push(Some(architecture)),
            BinaryKind::OtherElf(machine) => {
                diagnostics.push(
                    document
                        .diagnostic(
                            Severity::Error,
                            &format!("instances[{index}].binary"),
                            format!(
                                "{} is an ELF program for machine type {machine:#x}, which no EC2 Linux instance runs",
                                path.display()
                            ),
                        )
                        .with_help("build it for x86_64 or aarch64 Linux"),
                );
                architectures.push(None);
            }
            BinaryKind::Script | BinaryKind::Unknown => architectures.push(None),
        }
    }
    if diagnostics.is_empty() { Ok(architectures) } else { Err(invalid(document, diagnostics)) }
}

fn read_header(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut header = Vec::with_capacity(HEADER_BYTES);
    fs_err::File::open(path)?.take(HEADER_BYTES as u64).read_to_end(&mut header)?;
    Ok(header)
}

/// The listed instance types whose architecture, as their names tell it, cannot run the
/// entry's binary: a check that needs no catalog (`validate`, and `create` before it asks
/// AWS anything).
/// Entries of Mac types are refused, located at the type: the Mac runs macOS, and flotilla's
/// agent and boot script are built for Linux (systemd), so such a machine would launch (onto
/// its dedicated host) and never boot. Checked before anything is asked or made.
pub fn refuse_mac_types(document: &SpecDocument) -> Result<(), CoreError> {
    let mut diagnostics = Vec::new();
    for index in 0..document.spec.instances.len() {
        for (field, name) in listed_type_fields(&document.spec, index) {
            let mac = matches!(
                guess_architecture(&name),
                Some(Architecture::X86_64Mac | Architecture::Arm64Mac)
            );
            if mac {
                diagnostics.push(
                    document
                        .diagnostic(
                            Severity::Error,
                            &field,
                            format!(
                                "`{name}` runs macOS, and flotilla's agent and boot script are built for Linux only: a machine of this type would never boot"
                            ),
                        )
                        .with_help(
                            "choose a Linux type; a `host_pool` of a Linux type (e.g. m5.metal) launches onto dedicated hosts, and `flotilla simulate --pool` budgets a Mac pool",
                        ),
                );
            }
        }
    }
    if diagnostics.is_empty() { Ok(()) } else { Err(invalid(document, diagnostics)) }
}

pub fn check_listed_architectures(
    document: &SpecDocument,
    architectures: &[Option<Architecture>],
) -> Result<(), CoreError> {
    let mut diagnostics = Vec::new();
    for (index, instance) in document.spec.instances.iter().enumerate() {
        let Some(binary) = architectures.get(index).copied().flatten() else { continue };
        for (field, name) in listed_type_fields(&document.spec, index) {
            let Some(architecture) = guess_architecture(&name) else { continue };
            if !architecture.runs(binary) {
                diagnostics.push(
                    document
                        .diagnostic(
                            Severity::Error,
                            &field,
                            format!(
                                "`{name}` is {architecture}, but the binary {} is {binary}: it cannot run there",
                                instance.binary
                            ),
                        )
                        .with_help(architecture_help(binary)),
                );
            }
        }
    }
    if diagnostics.is_empty() { Ok(()) } else { Err(invalid(document, diagnostics)) }
}

fn architecture_help(binary: Architecture) -> String {
    match binary {
        Architecture::Arm64 => {
            "choose a Graviton type (a `g` after the generation: m7g, c7g, t4g, …) or build the binary for x86_64".to_owned()
        }
        _ => "choose an x86_64 type (m7i, c7i, m7a, …) or build the binary for aarch64".to_owned(),
    }
}

/// The field path and value of every listed type of instance entry `index`.
fn listed_type_fields(spec: &FleetSpec, index: usize) -> Vec<(String, String)> {
    let instance = &spec.instances[index];
    let mut fields = Vec::new();
    if let Some(name) = &instance.instance_type {
        fields.push((format!("instances[{index}].instance_type"), name.clone()));
    }
    for (position, name) in instance.instance_types.iter().enumerate() {
        fields.push((format!("instances[{index}].instance_types[{position}]"), name.clone()));
    }
    fields
}

/// Located diagnostics for the problems [`DeploymentPlan::resolve_capacity`] found.
pub fn capacity_errors(
    document: &SpecDocument,
    plan: &DeploymentPlan,
    problems: &[CapacityProblem],
) -> CoreError {
    let diagnostics = problems
        .iter()
        .map(|CapacityProblem { group, problem }| {
            let group = &plan.groups[*group];
            let entry = match (group.role, group.instance_index) {
                (Role::Binary, Some(index)) => format!("instances[{index}]"),
                _ => "monitoring".to_owned(),
            };
            let type_field = |name: &str| -> String {
                match group.instance_index {
                    Some(index) => listed_type_fields(&document.spec, index)
                        .into_iter()
                        .find(|(_, listed)| listed == name)
                        .map(|(field, _)| field)
                        .unwrap_or_else(|| format!("{entry}.requirements")),
                    None => "monitoring.instance_type".to_owned(),
                }
            };
            let (field, help) = match problem {
                Problem::UnknownType { name, suggestion } => (
                    type_field(name),
                    match suggestion {
                        Some(close) => format!(
                            "write `{close}`, or another type EC2 offers in {}",
                            group.region
                        ),
                        None => format!(
                            "check the name against the types EC2 offers in {}",
                            group.region
                        ),
                    },
                ),
                Problem::WrongArchitecture { name, binary, .. } => {
                    (type_field(name), architecture_help(*binary))
                }
                Problem::NotInRegion { name, .. } => (
                    type_field(name),
                    format!(
                        "choose a type offered in {} (or a zone that offers it), or another region",
                        group.region
                    ),
                ),
                Problem::NoSpot { name } => (
                    type_field(name),
                    "remove it, or use `market: prefer-spot` so that on-demand may stand in"
                        .to_owned(),
                ),
                Problem::UnknownZone { zone, .. } => (
                    group
                        .zones
                        .iter()
                        .position(|z| z == zone)
                        .map(|k| format!("{entry}.zones[{k}]"))
                        .unwrap_or_else(|| format!("{entry}.zones")),
                    "name a zone of the region".to_owned(),
                ),
                Problem::NothingMatches { attribute, .. } => (
                    format!("{entry}.requirements.{attribute}"),
                    format!("widen `{attribute}`, or list types with `instance_types`"),
                ),
                Problem::NoCommonZone { .. } => (
                    format!("{entry}.availability_zone_group"),
                    "give the entries of the group types that share a zone, or different groups"
                        .to_owned(),
                ),
            };
            document.diagnostic(Severity::Error, &field, problem.to_string()).with_help(help)
        })
        .collect();
    invalid(document, diagnostics)
}

/// The account's answer to the spec's references as located diagnostics: `Err` with every
/// diagnostic when one is an error; else the warnings, for the caller to show.
pub fn reference_diagnostics(
    document: &SpecDocument,
    problems: &[crate::provider::ReferenceProblem],
) -> Result<Vec<Diagnostic>, CoreError> {
    let diagnostics: Vec<Diagnostic> = problems
        .iter()
        .map(|problem| {
            document
                .diagnostic(problem.severity, &problem.field, problem.message.clone())
                .with_help(problem.help.clone())
        })
        .collect();
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        Err(invalid(document, diagnostics))
    } else {
        Ok(diagnostics)
    }
}

fn invalid(document: &SpecDocument, mut diagnostics: Vec<Diagnostic>) -> CoreError {
    diagnostics.extend(document.warnings.iter().cloned());
    diagnostics.sort_by_key(|d| d.location);
    CoreError::Invalid(SpecErrors { diagnostics })
}
