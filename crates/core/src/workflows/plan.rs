//! `plan`: where a spec's machines would land and what they would cost, before anything is
//! made. Read-only: it reads the spec, the binaries' headers and the survey (the provider's
//! catalog and prices), and changes nothing anywhere.
//!
//! The estimate places each group as the launch would: balanced over its zones, in each zone
//! on the pool the launch would ask first (spot: the cheapest eligible type by the zone's spot
//! price, as `price-capacity-optimized` leans; on-demand: the first eligible type, as
//! `prioritized` does). It cannot know which spot pools will have capacity: with
//! `prefer-spot`, it shows the spot placement and says that on-demand stands in where spot is
//! dry.

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_capacity::placement::balanced_targets;
use flotilla_capacity::prices::{Price, PriceSource};
use flotilla_capacity::{Lifecycle, PriceBook};
use flotilla_spec::capacity::Market;
use flotilla_spec::{ProviderKind, SpecDocument};
use serde::Serialize;

use crate::capacity::{binary_architectures, capacity_errors, check_listed_architectures};
use crate::error::CoreError;
use crate::plan::{DeploymentPlan, GroupPlan};
use crate::progress::Progress;
use crate::provider::{ErrorKind, Survey, Surveyor};

/// Hours in a month, for monthly figures: 365 × 24 / 12.
pub const HOURS_PER_MONTH: f64 = 730.0;
/// Fewer eligible types than this with spot draws a warning (AWS's and Karpenter's advice).
const SPOT_FLEXIBILITY: usize = 5;

/// The estimate for a whole spec (`plan --output json` prints these fields).
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub tag: String,
    pub provider: ProviderKind,
    pub groups: Vec<GroupEstimate>,
    /// Machines in all.
    pub machines: usize,
    /// Every machine's price per hour, where known.
    pub usd_per_hour: f64,
    pub usd_per_month: f64,
    /// Machines whose price is not known (counted as 0 in the totals).
    pub unpriced_machines: usize,
    /// What the survey fell back from (no credentials, built-in prices), and the like.
    pub notes: Vec<String>,
}

/// One group (instance entry, or the monitoring machine).
#[derive(Clone, Debug, Serialize)]
pub struct GroupEstimate {
    pub name: String,
    pub region: String,
    pub count: usize,
    pub market: Market,
    /// The types that may run it, in the order a launch asks them.
    pub eligible_types: Vec<String>,
    /// The zones that offer one of them.
    pub zones: Vec<String>,
    /// Pools (type × zone × market) in the order a launch would try them, with their prices.
    pub pools: Vec<PoolEstimate>,
    /// Where the machines would land.
    pub placements: Vec<PlacementEstimate>,
    pub usd_per_hour: f64,
    pub usd_per_month: f64,
    /// The kernel settings each machine of the group gets at boot: the network tuning (BBR and
    /// fq, on by default on AWS unless `boot: {tune_network: false}`), then `boot.sysctl` over
    /// it. Empty locally, where kernel settings do not apply (the agent reports them
    /// not applicable).
    pub kernel_settings: BTreeMap<String, String>,
    /// Whether the network tuning is among them.
    pub network_tuning: bool,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PoolEstimate {
    pub zone: String,
    pub instance_type: String,
    pub market: Lifecycle,
    pub usd_per_hour: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlacementEstimate {
    pub zone: String,
    pub instance_type: String,
    pub market: Lifecycle,
    pub count: usize,
    /// Per machine.
    pub usd_per_hour: Option<f64>,
    /// Where the price came from.
    pub price_source: Option<PriceSource>,
}

/// The plan of `document` on `provider`: the spec checked against the survey, then estimated.
pub async fn plan(
    document: &SpecDocument,
    provider: ProviderKind,
    cwd: &Path,
    surveyor: &impl Surveyor,
    progress: &dyn Progress,
) -> Result<PlanReport, CoreError> {
    let (plan, survey) = resolve(document, provider, cwd, surveyor, progress, true).await?;
    Ok(estimate(&plan, &survey))
}

/// The deployment plan of `document` with its capacity resolved against the provider's survey
/// (for AWS; the local provider has no capacity to resolve), or the located errors of a spec
/// that cannot run as written. What `create` and `plan` both do first.
///
/// With `fallback`, a survey that cannot be made (no credentials, no network) is replaced by
/// one from flotilla's built-in data, and the notes say so: types known by name only, one
/// unnamed zone per region, built-in prices; groups chosen by `requirements` alone cannot be
/// resolved then and are left out of the estimate with a warning. `create` never falls back.
pub async fn resolve(
    document: &SpecDocument,
    provider: ProviderKind,
    cwd: &Path,
    surveyor: &impl Surveyor,
    progress: &dyn Progress,
    fallback: bool,
) -> Result<(DeploymentPlan, Survey), CoreError> {
    flotilla_spec::document::check_machine_total(document, provider).map_err(CoreError::Invalid)?;
    if provider == ProviderKind::Local {
        refuse_host_pools_locally(document)?;
        refuse_disks_locally(document)?;
    } else {
        crate::capacity::refuse_mac_types(document)?;
    }
    super::check_files(document, cwd)?;
    super::lifecycle::refuse_unsupported_lifecycle(document, provider, cwd)?;
    let architectures = binary_architectures(document, cwd)?;
    let mut plan =
        DeploymentPlan::from_spec(&document.spec, provider, surveyor.monitoring_region());
    plan.lifecycles = super::lifecycle::lifecycle_configs(document, cwd)?;
    if provider == ProviderKind::Local {
        check_references(document, &mut plan, surveyor, progress).await?;
        return Ok((plan, surveyor.survey(&[], &[], progress).await?));
    }
    check_listed_architectures(document, &architectures)?;
    for group in &mut plan.groups {
        if let Some(index) = group.instance_index {
            group.architecture = architectures[index];
        }
    }
    let regions = plan.regions();
    let survey = match surveyor.survey(&regions, &plan.groups, progress).await {
        Ok(survey) => survey,
        Err(error) if fallback && survey_falls_back(error.kind) => {
            builtin_survey(&plan, &regions, &error)
        }
        Err(error) => return Err(error.into()),
    };
    let by_name_only = survey.catalog.types.values().all(|t| t.vcpus == 0);
    if by_name_only {
        // Requirements cannot be judged without the catalog: those groups are not estimated.
        plan.groups.retain(|group| !group.instance_types.is_empty());
    }
    if let Err(problems) = plan.resolve_capacity(&survey.catalog, &survey.prices) {
        return Err(capacity_errors(document, &plan, &problems));
    }
    let mut survey = survey;
    if by_name_only && fallback {
        survey.notes.push(
            "the spec's references to the account (image, network, policies, keys) were not checked"
                .to_owned(),
        );
    } else {
        check_references(document, &mut plan, surveyor, progress).await?;
    }
    Ok((plan, survey))
}

/// On the local provider, entries on a dedicated host pool are refused, located, before
/// anything is made: local machines are processes on this computer, which has no dedicated
/// hosts, and running them as if it had would hide what the spec says. The AWS provider
/// launches them onto the pool's hosts.
fn refuse_host_pools_locally(document: &SpecDocument) -> Result<(), CoreError> {
    let diagnostics: Vec<flotilla_spec::Diagnostic> = document
        .spec
        .instances
        .iter()
        .enumerate()
        .filter_map(|(index, instance)| {
            let pool = instance.host_pool.as_ref()?;
            let diagnostic = document
                .diagnostic(
                    flotilla_spec::Severity::Error,
                    &format!("instances[{index}].host_pool"),
                    format!(
                        "`{}` launches onto host pool `{pool}`, and the local provider has no dedicated hosts",
                        instance.name
                    ),
                )
                .with_help(
                    "deploy with `--provider aws`, or remove `host_pool` to run the entry locally; `flotilla simulate --pool` runs the pool's policy on a workload",
                );
            Some(diagnostic)
        })
        .collect();
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(CoreError::Invalid(flotilla_spec::SpecErrors { diagnostics }))
    }
}

/// On the local provider, data disks are refused, located at each device, before anything is
/// made: local machines are processes sharing this computer's disks, so there is no volume to
/// create, attach or tag, and a binary that expects its own disk would run on the wrong one.
fn refuse_disks_locally(document: &SpecDocument) -> Result<(), CoreError> {
    let mut diagnostics = Vec::new();
    for (index, instance) in document.spec.instances.iter().enumerate() {
        for device in instance.disks.keys() {
            let diagnostic = document
                .diagnostic(
                    flotilla_spec::Severity::Error,
                    &format!("instances[{index}].disks.{device}"),
                    format!(
                        "`{}` asks for a data disk at `{device}`, and the local provider has no volumes to create",
                        instance.name
                    ),
                )
                .with_help(
                    "deploy with `--provider aws`, or remove `disks` to run the entry locally on this computer's file system",
                );
            diagnostics.push(diagnostic);
        }
    }
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(CoreError::Invalid(flotilla_spec::SpecErrors { diagnostics }))
    }
}

/// Asks the provider about the spec's references to the account; errors stop here, located,
/// and warnings are shown. A group the account narrows (an existing network whose subnets
/// cover some zones) keeps only those zones, so the estimate and the launch agree; one left
/// with no zone that offers an eligible type is an error at its network.
async fn check_references(
    document: &SpecDocument,
    plan: &mut DeploymentPlan,
    surveyor: &impl Surveyor,
    progress: &dyn Progress,
) -> Result<(), CoreError> {
    let mut check = surveyor.check_references(plan, progress).await?;
    for group in &mut plan.groups {
        let Some(zones) = check.zones.get(&group.name) else { continue };
        if group.offered.is_empty() {
            continue;
        }
        let before: Vec<String> = group.offered.keys().cloned().collect();
        group.offered.retain(|zone, _| zones.contains(zone));
        if group.offered.is_empty() {
            let field = group
                .settings
                .network
                .as_ref()
                .map_or_else(|| "network".to_owned(), |n| n.field.clone());
            check.problems.push(crate::provider::ReferenceProblem {
                field,
                severity: flotilla_spec::Severity::Error,
                message: format!(
                    "`{}` may launch only in the zones of its subnets ({}), and none of them offers an eligible type (those are offered in {})",
                    group.name,
                    zones.join(", "),
                    before.join(", ")
                ),
                help: "add a subnet in a zone that offers the group's types, or add types offered in the subnets' zones".to_owned(),
            });
        }
    }
    for warning in crate::capacity::reference_diagnostics(document, &check.problems)? {
        progress.notice(&warning.to_string());
    }
    Ok(())
}

/// A survey from built-in data only (see [`resolve`]).
/// Whether a survey that failed with `kind` is replaced by the built-in data: the account could
/// not be read (no or refused credentials, no network, throttled). What the account says about
/// the spec (a region not enabled, a quota) is an error, as it would be for `create`.
fn survey_falls_back(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Permission | ErrorKind::Throttled | ErrorKind::Other)
}

fn builtin_survey(
    plan: &DeploymentPlan,
    regions: &[String],
    error: &crate::provider::ProviderError,
) -> Survey {
    let table = flotilla_capacity::prices::builtin_table();
    let listed = plan.groups.iter().flat_map(|g| g.instance_types.iter().map(String::as_str));
    let names = table.keys().map(String::as_str).chain(listed);
    // The first line of the error says what failed; the SDK's details follow on other lines.
    let error = error.to_string();
    let cause = error.lines().next().unwrap_or_default().trim_end_matches(" Attempted:");
    let mut notes = vec![format!(
        "could not read the account's instance catalog ({cause}): types are known by name only, each region counts as one zone, prices are flotilla's built-in table of {}",
        flotilla_capacity::prices::BUILTIN_DATE
    )];
    let skipped: Vec<&str> = plan
        .groups
        .iter()
        .filter(|g| g.instance_types.is_empty())
        .map(|g| g.name.as_str())
        .collect();
    if !skipped.is_empty() {
        notes.push(format!(
            "not estimated, as only the catalog can match `requirements`: {}",
            skipped.join(", ")
        ));
    }
    Survey {
        catalog: flotilla_capacity::Catalog::from_names(names, regions),
        prices: PriceBook::builtin_only(),
        notes,
    }
}

/// Where the groups of `plan` would land and what they would cost.
pub fn estimate(plan: &DeploymentPlan, survey: &Survey) -> PlanReport {
    let groups: Vec<GroupEstimate> = plan
        .groups
        .iter()
        .map(|group| estimate_group(group, &survey.prices, plan.provider))
        .collect();
    let machines: usize = groups.iter().map(|g| g.count).sum();
    let unpriced_machines = groups
        .iter()
        .flat_map(|g| &g.placements)
        .filter(|p| p.usd_per_hour.is_none())
        .map(|p| p.count)
        .sum();
    let usd_per_hour = round_cents(groups.iter().map(|g| g.usd_per_hour).sum());
    PlanReport {
        tag: plan.tag.clone(),
        provider: plan.provider,
        groups,
        machines,
        usd_per_hour,
        usd_per_month: round_cents(usd_per_hour * HOURS_PER_MONTH),
        unpriced_machines,
        notes: survey.notes.clone(),
    }
}

fn estimate_group(group: &GroupPlan, prices: &PriceBook, provider: ProviderKind) -> GroupEstimate {
    let count = group.machines.len();
    let mut estimate = GroupEstimate {
        name: group.name.clone(),
        region: group.region.clone(),
        count,
        market: group.market,
        eligible_types: Vec::new(),
        zones: group.offered.keys().cloned().collect(),
        pools: Vec::new(),
        placements: Vec::new(),
        usd_per_hour: 0.0,
        usd_per_month: 0.0,
        kernel_settings: BTreeMap::new(),
        network_tuning: false,
        warnings: Vec::new(),
    };
    if provider == ProviderKind::Local {
        estimate.zones = vec![group.region.clone()];
        estimate.placements.push(PlacementEstimate {
            zone: group.region.clone(),
            instance_type: "-".to_owned(),
            market: Lifecycle::OnDemand,
            count,
            usd_per_hour: Some(0.0),
            price_source: None,
        });
        return estimate;
    }
    let boot = &group.settings.boot;
    estimate.kernel_settings = boot.effective_sysctl(true);
    estimate.network_tuning = boot.tune_network;
    for types in group.offered.values() {
        for name in types {
            if !estimate.eligible_types.contains(name) {
                estimate.eligible_types.push(name.clone());
            }
        }
    }
    let lifecycle = if group.market.wants_spot() { Lifecycle::Spot } else { Lifecycle::OnDemand };
    let price_of = |zone: &str, name: &str, lifecycle: Lifecycle| -> Option<Price> {
        prices.machine(&group.region, zone, name, lifecycle == Lifecycle::Spot)
    };
    // Pools in the order a launch tries them, zone by zone.
    for (zone, types) in &group.offered {
        let mut pools: Vec<PoolEstimate> = types
            .iter()
            .map(|name| PoolEstimate {
                zone: zone.clone(),
                instance_type: name.clone(),
                market: lifecycle,
                usd_per_hour: price_of(zone, name, lifecycle).map(|p| p.usd_per_hour),
            })
            .collect();
        if lifecycle == Lifecycle::Spot {
            pools.sort_by(|a, b| {
                a.usd_per_hour
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.usd_per_hour.unwrap_or(f64::INFINITY))
            });
        }
        if group.market == Market::PreferSpot {
            pools.extend(types.iter().map(|name| PoolEstimate {
                zone: zone.clone(),
                instance_type: name.clone(),
                market: Lifecycle::OnDemand,
                usd_per_hour: price_of(zone, name, Lifecycle::OnDemand).map(|p| p.usd_per_hour),
            }));
        }
        estimate.pools.extend(pools);
    }
    let targets = balanced_targets(count, &estimate.zones, &BTreeMap::new());
    for (zone, machines) in targets {
        let Some(first) = estimate.pools.iter().find(|p| p.zone == zone && p.market == lifecycle)
        else {
            continue;
        };
        let price = price_of(&zone, &first.instance_type, lifecycle);
        let per_machine = price.as_ref().map(|p| p.usd_per_hour);
        estimate.usd_per_hour += per_machine.unwrap_or(0.0) * machines as f64;
        estimate.placements.push(PlacementEstimate {
            zone,
            instance_type: first.instance_type.clone(),
            market: lifecycle,
            count: machines,
            usd_per_hour: per_machine,
            price_source: price.map(|p| p.source),
        });
    }
    estimate.usd_per_hour = round_cents(estimate.usd_per_hour);
    estimate.usd_per_month = round_cents(estimate.usd_per_hour * HOURS_PER_MONTH);
    if group.market.wants_spot() && estimate.eligible_types.len() < SPOT_FLEXIBILITY {
        estimate.warnings.push(format!(
            "spot with {} instance type{}: AWS advises at least {SPOT_FLEXIBILITY} (10 is better) so that spot capacity is found; add types or `requirements`",
            estimate.eligible_types.len(),
            if estimate.eligible_types.len() == 1 { "" } else { "s" }
        ));
    }
    if estimate.zones.len() == 1 && count > 1 {
        estimate.warnings.push(format!(
            "every machine in one zone ({}): an outage of that zone stops the whole group",
            estimate.zones[0]
        ));
    }
    if group.requirements.is_some()
        && group.instance_types.is_empty()
        && estimate.eligible_types.len() < 3
    {
        estimate.warnings.push(format!(
            "`requirements` match only {} type{} in {}: widen them to find capacity more easily",
            estimate.eligible_types.len(),
            if estimate.eligible_types.len() == 1 { "" } else { "s" },
            group.region
        ));
    }
    estimate
}

fn round_cents(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// One line about a report, as `create` prints it before launching: "27 machines in 3 regions
/// (worker: 20 spot in 3 zones; web: 6 on-demand in 3 zones), about $2.4100/hour".
pub fn summary(report: &PlanReport) -> String {
    let mut regions: Vec<&str> = report.groups.iter().map(|g| g.region.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();
    let groups: Vec<String> = report
        .groups
        .iter()
        .filter(|g| g.name != crate::plan::MONITORING_NAME)
        .map(|g| {
            let by_market: BTreeMap<&str, usize> =
                g.placements.iter().fold(BTreeMap::new(), |mut acc, p| {
                    *acc.entry(p.market.as_str()).or_insert(0) += p.count;
                    acc
                });
            let markets: Vec<String> = by_market.iter().map(|(m, n)| format!("{n} {m}")).collect();
            format!(
                "{}: {} in {} zone{}",
                g.name,
                markets.join(", "),
                g.zones.len(),
                if g.zones.len() == 1 { "" } else { "s" }
            )
        })
        .collect();
    let mut text = format!(
        "{} machines in {} region{} ({})",
        report.machines,
        regions.len(),
        if regions.len() == 1 { "" } else { "s" },
        groups.join("; ")
    );
    if report.provider == ProviderKind::Aws {
        text.push_str(&format!(", about ${:.4}/hour", report.usd_per_hour));
        if report.groups.iter().any(|g| g.market == Market::PreferSpot) {
            text.push_str(" (spot prices; on-demand where spot is dry)");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use flotilla_capacity::catalog::{Architecture, Catalog, InstanceType};
    use flotilla_capacity::prices::{Price, PriceSource};

    use super::*;

    fn instance_type(name: &str, architecture: Architecture) -> InstanceType {
        InstanceType {
            name: name.to_owned(),
            architectures: vec![architecture],
            vcpus: 2,
            memory_mib: 8192,
            cpu_manufacturer: None,
            current_generation: true,
            burstable: false,
            bare_metal: false,
            local_storage: false,
            accelerators: Vec::new(),
            network_bandwidth_gbps: None,
            spot: true,
            on_demand: true,
        }
    }

    /// us-east-1 with three zones offering m7i.large and m6i.large, and t3.small in zone a.
    fn survey() -> Survey {
        let mut catalog = Catalog::with_types([
            instance_type("m7i.large", Architecture::X86_64),
            instance_type("m6i.large", Architecture::X86_64),
            instance_type("t3.small", Architecture::X86_64),
            instance_type("c7g.large", Architecture::Arm64),
        ]);
        for zone in ["us-east-1a", "us-east-1b", "us-east-1c"] {
            catalog.offer("us-east-1", zone, "m7i.large");
            catalog.offer("us-east-1", zone, "m6i.large");
            catalog.offer("us-east-1", zone, "c7g.large");
        }
        catalog.offer("us-east-1", "us-east-1a", "t3.small");
        let mut prices = PriceBook::builtin_only();
        let spot = |usd| Price {
            usd_per_hour: usd,
            source: PriceSource::SpotPriceHistory { as_of: "2026-12-01T00:00:00Z".into() },
        };
        for (zone, m7i, m6i) in
            [("us-east-1a", 0.05, 0.04), ("us-east-1b", 0.03, 0.045), ("us-east-1c", 0.06, 0.05)]
        {
            prices.set_spot("us-east-1", zone, "m7i.large", spot(m7i));
            prices.set_spot("us-east-1", zone, "m6i.large", spot(m6i));
        }
        Survey { catalog, prices, notes: Vec::new() }
    }

    fn document(worker: &str) -> SpecDocument {
        let source = format!(
            "tag: t\nprovider: aws\nmonitoring:\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: d.json\ninstances:\n- name: worker\n  count: 7\n  region: us-east-1\n{worker}  storage_size: 10\n  storage_class: gp3\n  binary: b\n  config: c\n  profiling: false\nports: []\n"
        );
        flotilla_spec::parse_fleet_spec(&source, Path::new("fleet.yaml"))
            .expect("the test spec parses")
    }

    #[test]
    fn spot_lands_balanced_on_each_zones_cheapest_pool_and_warns_about_flexibility() {
        let document = document("  instance_types: [m7i.large, m6i.large]\n  market: spot\n");
        let mut plan = DeploymentPlan::from_spec(&document.spec, ProviderKind::Aws, "us-east-1");
        let survey = survey();
        plan.resolve_capacity(&survey.catalog, &survey.prices).unwrap();
        let report = estimate(&plan, &survey);
        let worker = report.groups.iter().find(|g| g.name == "worker").unwrap();
        let placed: Vec<(&str, &str, usize)> = worker
            .placements
            .iter()
            .map(|p| (p.zone.as_str(), p.instance_type.as_str(), p.count))
            .collect();
        assert_eq!(
            placed,
            [
                ("us-east-1a", "m6i.large", 3),
                ("us-east-1b", "m7i.large", 2),
                ("us-east-1c", "m6i.large", 2)
            ]
        );
        assert!((worker.usd_per_hour - (3.0 * 0.04 + 2.0 * 0.03 + 2.0 * 0.05)).abs() < 1e-9);
        assert!(
            worker.warnings[0].starts_with("spot with 2 instance types"),
            "{:?}",
            worker.warnings
        );
        // The monitoring machine: on-demand, its zone, built-in price.
        let monitoring = &report.groups[0];
        assert_eq!(monitoring.placements[0].zone, "us-east-1a");
        assert!(matches!(monitoring.placements[0].price_source, Some(PriceSource::BuiltIn { .. })));
        assert_eq!(report.machines, 8);
        assert!((report.usd_per_month - report.usd_per_hour * HOURS_PER_MONTH).abs() < 0.01);
        let line = summary(&report);
        assert!(
            line.starts_with("8 machines in 1 region (worker: 7 spot in 3 zones), about $"),
            "{line}"
        );
    }

    /// The warnings of the worker group of `document(worker)`.
    fn worker_warnings(worker: &str) -> Vec<String> {
        let document = document(worker);
        let mut plan = DeploymentPlan::from_spec(&document.spec, ProviderKind::Aws, "us-east-1");
        let survey = survey();
        plan.resolve_capacity(&survey.catalog, &survey.prices).unwrap();
        let report = estimate(&plan, &survey);
        report.groups.into_iter().find(|g| g.name == "worker").unwrap().warnings
    }

    #[test]
    fn a_group_in_one_zone_is_warned_about_that_zone_s_outage() {
        // t3.small is offered in us-east-1a only.
        let warnings = worker_warnings("  instance_types: [t3.small]\n");
        assert_eq!(
            warnings,
            [
                "every machine in one zone (us-east-1a): an outage of that zone stops the whole group"
            ]
        );
        let warnings = worker_warnings("  instance_types: [m7i.large]\n  zones: [us-east-1b]\n");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("every machine in one zone (us-east-1b)"), "{warnings:?}");
        assert!(worker_warnings("  instance_types: [m7i.large]\n").is_empty(), "three zones");
    }

    #[test]
    fn requirements_that_match_few_types_are_warned_about() {
        let few = "  requirements:\n    vcpu_count: {min: 2, max: 2}\n    memory_mib: {min: 8192}\n    allowed_instance_types: [\"m7i.*\"]\n";
        assert_eq!(
            worker_warnings(few),
            [
                "`requirements` match only 1 type in us-east-1: widen them to find capacity more easily"
            ]
        );
        // Listed types beside them: the user chose, no warning.
        let listed = format!("  instance_types: [m6i.large]\n{few}");
        assert!(worker_warnings(&listed).is_empty(), "{:?}", worker_warnings(&listed));
        // Requirements that match every type of the catalog (4, none dropped by price
        // protection): no warning.
        let wide = "  requirements:\n    vcpu_count: {min: 2, max: 2}\n    memory_mib: {min: 8192}\n    on_demand_max_price_percentage_over_lowest_price: 1000\n";
        assert!(worker_warnings(wide).is_empty(), "{:?}", worker_warnings(wide));
    }

    #[test]
    fn plan_falls_back_to_the_builtin_table_only_when_the_account_cannot_be_read() {
        for kind in [ErrorKind::Permission, ErrorKind::Throttled, ErrorKind::Other] {
            assert!(survey_falls_back(kind), "{kind:?}");
        }
        for kind in [ErrorKind::Invalid, ErrorKind::NotFound, ErrorKind::Quota, ErrorKind::Capacity]
        {
            assert!(!survey_falls_back(kind), "{kind:?}");
        }
    }

    #[test]
    fn capacity_problems_point_at_the_keys_that_cause_them() {
        let document = document(
            "  instance_types: [m7i.larg, c7g.large]\n  zones: [us-east-1a, us-east-1z]\n",
        );
        let mut plan = DeploymentPlan::from_spec(&document.spec, ProviderKind::Aws, "us-east-1");
        plan.groups[1].architecture = Some(Architecture::X86_64);
        let survey = survey();
        let problems = plan.resolve_capacity(&survey.catalog, &survey.prices).unwrap_err();
        let CoreError::Invalid(errors) =
            crate::capacity::capacity_errors(&document, &plan, &problems)
        else {
            panic!("capacity problems are spec errors");
        };
        let rendered: Vec<String> = errors.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(rendered.len(), 3, "{rendered:#?}");
        assert!(rendered[0].starts_with("fleet.yaml:12:20: error: instances[0].instance_types[0]: unknown instance type `m7i.larg`; did you mean `m7i.large`?"), "{rendered:#?}");
        assert!(
            rendered[1].contains(
                "instances[0].instance_types[1]: `c7g.large` is arm64, but the binary is x86_64"
            ),
            "{rendered:#?}"
        );
        assert!(
            rendered[2]
                .contains("instances[0].zones[1]: zone `us-east-1z` is not a zone of us-east-1"),
            "{rendered:#?}"
        );
    }

    #[test]
    fn the_plan_carries_every_lifecycle_config_inline_or_named_by_path() {
        let inline = document(
            "  instance_type: m7i.large\n  lifecycle:\n    domains:\n      db:\n        update-route53:\n        - {hostedzone: Z1, name: a.example.com, ttl: 60}\n",
        );
        let plan = DeploymentPlan::from_spec(&inline.spec, ProviderKind::Aws, "us-east-1");
        assert_eq!(plan.lifecycles.len(), 1);
        assert_eq!(plan.lifecycles[0].domains[0].update_route53[0].hosted_zone, "Z1");

        let cwd = tempfile::tempdir().unwrap();
        fs_err::write(
            cwd.path().join("ops.jsonc"),
            "{domains: {web: {notify: [{backend: 'aws-sqs', options: {'queue-url': 'https://sqs.us-east-1.amazonaws.com/1/q'}}]}}}",
        )
        .unwrap();
        let by_path = document("  instance_type: m7i.large\n  lifecycle: ops.jsonc\n");
        assert!(
            DeploymentPlan::from_spec(&by_path.spec, ProviderKind::Aws, "us-east-1")
                .lifecycles
                .is_empty(),
            "from_spec cannot read files"
        );
        let read = crate::workflows::lifecycle::lifecycle_configs(&by_path, cwd.path()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].domains[0].name, "web");
    }
}
