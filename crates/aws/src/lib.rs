//! The AWS provider: EC2 networks and instances across regions, S3 for artifacts and
//! identities, IAM for the machines' role. The only crate that knows the AWS SDK's types.
//!
//! `prepare` checks everything it can before the first mutating call (regions enabled,
//! instance types and their architectures, an agent build per architecture, the deployer's
//! address), then creates or adopts: the bucket, the role, every region's network (regions at
//! once), the peerings, and uploads the agent. `launch` adopts instances found by tag and
//! launches the missing ones in batches. Modules, one per concern: [`clients`], [`network`],
//! [`instances`], [`s3`], [`iam`], [`userdata`], [`teardown`], with [`records`] and [`journal`]
//! for what this machine started.

pub mod clients;
pub mod error;
pub mod iam;
pub mod instances;
pub mod journal;
pub mod network;
pub mod records;
pub mod s3;
pub mod survey;
pub mod teardown;
pub mod userdata;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, LocationType};
use flotilla_core::artifacts::hash_file;
use flotilla_core::plan::{AWS_MONITORING_REGION, DeploymentPlan, MachinePlan};
use flotilla_core::progress::Progress;
use flotilla_core::provider::{
    LocalArtifact, Machine, MachineState, Provider, ProviderError, Role,
};
use flotilla_core::state::Deployment;
use flotilla_spec::bootstrap::DEFAULT_API_PORT;
use flotilla_spec::identity::IdentityBundle;
use flotilla_spec::names::iam_role_name;
use futures_util::StreamExt;

pub use crate::clients::Clients;
use crate::clients::{ADDRESS_MAP_VARIABLE, HOME_REGION};
use crate::error::AwsError;
use crate::instances::{Found, LaunchSettings};
use crate::journal::Journal;
use crate::network::{NetworkSettings, RegionPlan};
pub use crate::s3::S3Fetcher;

/// Environment variables naming agent builds for architectures other than this machine's (the
/// CLI reads them into [`AwsOptions::agent_builds`]).
pub const AGENT_ENV: [(&str, &str); 2] =
    [("x86_64", "FLOTILLA_AGENT_X86_64"), ("arm64", "FLOTILLA_AGENT_ARM64")];

/// Where the deployer's public address is asked, as the commonware deployer asks it.
pub const IP_DISCOVERY_URL: &str = "https://ipv4.icanhazip.com";

/// What the CLI decides for the provider.
#[derive(Clone, Debug)]
pub struct AwsOptions {
    /// The deployer's public address (`--ip`); found as the deployer finds it when absent.
    pub deployer_ip: Option<Ipv4Addr>,
    /// `$FLOTILLA_HOME`: where the bucket name is kept.
    pub home: PathBuf,
    /// This executable: the agent for machines of this machine's architecture.
    pub this_executable: PathBuf,
    /// Agent builds for other architectures (`x86_64`, `arm64`), from [`AGENT_ENV`].
    pub agent_builds: BTreeMap<String, PathBuf>,
    /// Where to ask this machine's public address instead of [`IP_DISCOVERY_URL`].
    pub ip_discovery_url: Option<String>,
}

/// The AWS provider of one deployment.
#[derive(Debug)]
pub struct AwsProvider {
    tag: String,
    clients: Clients,
    journal: Journal,
    options: AwsOptions,
    prepared: Mutex<Option<LaunchSettings>>,
}

/// The architecture name EC2 uses for this machine.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

impl AwsProvider {
    pub fn new(
        deployment: &Deployment,
        clients: Clients,
        options: AwsOptions,
    ) -> Result<AwsProvider, ProviderError> {
        Ok(AwsProvider {
            tag: deployment.tag().to_owned(),
            journal: Journal::open(deployment)?,
            clients,
            options,
            prepared: Mutex::new(None),
        })
    }

    fn prepared(&self) -> Result<LaunchSettings, ProviderError> {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| ProviderError::new("launch before prepare"))
    }

    /// Regions this deployment touched (journal) or declared (metadata), plus the monitoring
    /// region: where `destroy` and `machines` look.
    fn known_regions(&self) -> Vec<String> {
        let mut regions: BTreeSet<String> = self.journal.read().regions.keys().cloned().collect();
        if let Ok(metadata) = self.journal.deployment().metadata() {
            regions.extend(metadata.regions);
        }
        regions.insert(AWS_MONITORING_REGION.to_owned());
        regions.into_iter().collect()
    }

    fn bucket(&self) -> Option<String> {
        self.journal.read().bucket.or_else(|| s3::existing_bucket_name(&self.options.home))
    }

    async fn check_regions(&self, regions: &[String]) -> Result<(), ProviderError> {
        let answer = self
            .clients
            .ec2(HOME_REGION)
            .describe_regions()
            .all_regions(true)
            .filters(
                Filter::builder()
                    .name("opt-in-status")
                    .values("opt-in-not-required")
                    .values("opted-in")
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(HOME_REGION, "DescribeRegions", "enabled regions", e)
            })?;
        let enabled: BTreeSet<&str> =
            answer.regions().iter().filter_map(|r| r.region_name()).collect();
        let missing: Vec<&str> =
            regions.iter().map(String::as_str).filter(|r| !enabled.contains(r)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ProviderError::new(format!(
            "regions not enabled in this account (or misspelt): {}; enable them in the AWS console or fix the spec",
            missing.join(", ")
        )))
    }

    async fn architectures(
        &self,
        types: &[String],
    ) -> Result<HashMap<String, String>, ProviderError> {
        let answer = self
            .clients
            .ec2(HOME_REGION)
            .describe_instance_types()
            .set_instance_types(Some(types.iter().map(|t| t.as_str().into()).collect()))
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(HOME_REGION, "DescribeInstanceTypes", types.join(", "), e)
            })?;
        let mut architectures = HashMap::new();
        for info in answer.instance_types() {
            let Some(name) = info.instance_type() else { continue };
            let supported: Vec<&str> = info
                .processor_info()
                .map(|p| p.supported_architectures().iter().map(|a| a.as_str()).collect())
                .unwrap_or_default();
            let architecture = if supported.contains(&"arm64") { "arm64" } else { "x86_64" };
            architectures.insert(name.as_str().to_owned(), architecture.to_owned());
        }
        let unknown: Vec<&str> =
            types.iter().map(String::as_str).filter(|t| !architectures.contains_key(*t)).collect();
        if !unknown.is_empty() {
            return Err(ProviderError::new(format!(
                "unknown instance types: {}; check the spec",
                unknown.join(", ")
            )));
        }
        Ok(architectures)
    }

    /// The agent executable for each architecture, with its digest.
    fn agents(
        &self,
        architectures: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, LocalArtifact>, ProviderError> {
        let mut agents = BTreeMap::new();
        for architecture in architectures {
            let path = if architecture == host_architecture() {
                self.options.this_executable.clone()
            } else {
                let variable = AGENT_ENV
                    .iter()
                    .find(|(a, _)| a == architecture)
                    .map(|(_, v)| *v)
                    .unwrap_or("FLOTILLA_AGENT");
                match self.options.agent_builds.get(architecture.as_str()) {
                    Some(path) => path.clone(),
                    None => {
                        return Err(ProviderError::new(format!(
                            "machines of this spec are {architecture} but this flotilla is {}: build flotilla for {architecture} (linux) and name it in {variable}",
                            host_architecture()
                        )));
                    }
                }
            };
            let artifact = hash_file(&path).map_err(|e| {
                ProviderError::with_source(
                    format!("reading the {architecture} agent {}", path.display()),
                    e,
                )
            })?;
            agents.insert(architecture.clone(), artifact);
        }
        Ok(agents)
    }

    /// The deployer address `prepare` admits to the agent port: `--ip`, else the one recorded
    /// by an earlier run (a re-run or an `update` keeps the address the deployment was made
    /// with; `authorize` adds others), else this machine's public address, asked as the deployer
    /// asks it.
    async fn prepare_deployer_ip(&self) -> Result<Ipv4Addr, ProviderError> {
        match (self.options.deployer_ip, self.journal.read().deployer_ip) {
            (Some(ip), _) | (None, Some(ip)) => Ok(ip),
            (None, None) => self.deployer_ip().await,
        }
    }

    async fn deployer_ip(&self) -> Result<Ipv4Addr, ProviderError> {
        if let Some(ip) = self.options.deployer_ip {
            return Ok(ip);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProviderError::with_source("building an HTTP client", e))?;
        let url =
            self.options.ip_discovery_url.clone().unwrap_or_else(|| IP_DISCOVERY_URL.to_owned());
        let answer = async {
            let text = client.get(&url).send().await?.error_for_status()?.text().await?;
            Ok::<_, reqwest::Error>(text)
        }
        .await;
        match answer {
            Ok(text) => text.trim().parse().map_err(|_| {
                ProviderError::new(format!(
                    "{url} answered {:?}, not an IPv4 address; pass your address with --ip",
                    text.trim()
                ))
            }),
            Err(error) => Err(ProviderError::new(format!(
                "cannot find this machine's public IPv4 address ({url}: {}); pass it with --ip",
                flotilla_core::client::error_chain(&error)
            ))),
        }
    }

    async fn offerings(
        &self,
        region: &str,
        types: &[String],
    ) -> Result<HashMap<String, Vec<String>>, ProviderError> {
        let answer = self
            .clients
            .ec2(region)
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .filters(
                Filter::builder().name("instance-type").set_values(Some(types.to_vec())).build(),
            )
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(region, "DescribeInstanceTypeOfferings", types.join(", "), e)
            })?;
        let mut offered: HashMap<String, Vec<String>> = HashMap::new();
        for offering in answer.instance_type_offerings() {
            if let (Some(kind), Some(zone)) = (offering.instance_type(), offering.location()) {
                offered.entry(kind.as_str().to_owned()).or_default().push(zone.to_owned());
            }
        }
        for zones in offered.values_mut() {
            zones.sort();
            zones.dedup();
        }
        let missing: Vec<&str> =
            types.iter().map(String::as_str).filter(|t| !offered.contains_key(*t)).collect();
        if !missing.is_empty() {
            return Err(ProviderError::new(format!(
                "{region}: no availability zone offers {}; choose another type or region",
                missing.join(", ")
            )));
        }
        Ok(offered)
    }

    /// The user data of each architecture's machines (base64), as `prepare` hands them to
    /// `launch`: the boot script with this deployment's bucket, role id and agent digest, and
    /// nothing else of what the provider holds (see [`userdata`]).
    fn user_data(
        &self,
        bucket: &str,
        role_id: &str,
        agents: &BTreeMap<String, LocalArtifact>,
    ) -> HashMap<String, String> {
        agents
            .iter()
            .map(|(architecture, agent)| {
                let script = userdata::render(&userdata::UserData {
                    tag: &self.tag,
                    bucket,
                    bucket_region: HOME_REGION,
                    agent_sha256: &agent.sha256,
                    role_id,
                });
                (architecture.clone(), aws_smithy_types::base64::encode(script))
            })
            .collect()
    }

    /// Adds (or with `revoke`, removes) the agent port rule for `ip` on every security group of
    /// the deployment, and records it among the addresses `prepare` keeps (or forgets it). The
    /// record changes first, so a crash in between leaves the intent, which the next `authorize`
    /// or `prepare` carries out. Returns the groups changed.
    pub async fn authorize(&self, ip: Ipv4Addr, revoke: bool) -> Result<usize, ProviderError> {
        self.journal.update(|r| {
            if revoke {
                r.authorized.remove(&ip);
            } else {
                r.authorized.insert(ip);
            }
        })?;
        let cidr = format!("{ip}/32");
        let port = Some(i32::from(DEFAULT_API_PORT));
        let rule = network::Rule::new("tcp", port, port, &cidr);
        let mut changed = 0;
        for region in self.known_regions() {
            let ec2 = self.clients.ec2(&region);
            let groups = ec2
                .describe_security_groups()
                .filters(network::tag_filter(&self.tag))
                .send()
                .await
                .map_err(|e| {
                    AwsError::from_sdk(
                        &region,
                        "DescribeSecurityGroups",
                        format!("deployment {}", self.tag),
                        e,
                    )
                })?;
            for group in
                groups.security_groups().iter().filter(|g| teardown::tagged(g.tags(), &self.tag))
            {
                let Some(id) = group.group_id() else { continue };
                let present = group.ip_permissions().iter().any(|p| {
                    let protocol = p.ip_protocol().unwrap_or("-1");
                    p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).any(|c| {
                        network::Rule::new(protocol, p.from_port(), p.to_port(), c) == rule
                    })
                });
                let change = match (revoke, present) {
                    (true, true) => network::Change::Revoke,
                    (false, false) => network::Change::Authorize,
                    _ => continue,
                };
                let permission = network::permission(
                    "tcp",
                    DEFAULT_API_PORT,
                    &cidr,
                    network::AGENT_RULE_DESCRIPTION,
                );
                network::change_ingress(&ec2, &region, id, change, vec![permission]).await?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The deployer address this provider uses (for `authorize` without `--ip`).
    pub async fn current_deployer_ip(&self) -> Result<Ipv4Addr, ProviderError> {
        self.deployer_ip().await
    }
}

/// Deletes the bucket of `$FLOTILLA_HOME` and forgets its name. Returns the objects deleted.
pub async fn clean(
    clients: &Clients,
    home: &std::path::Path,
) -> Result<Option<(String, usize)>, ProviderError> {
    let Some(bucket) = s3::existing_bucket_name(home) else {
        return Ok(None);
    };
    let deleted = s3::delete_bucket(clients, &bucket).await?;
    let _ = fs_err::remove_file(home.join(s3::BUCKET_FILE));
    Ok(Some((bucket, deleted)))
}

/// Under an emulator, refuses machine addresses the CLI must not send traffic to: outside the
/// emulator's address map when one is given, else any address that is not loopback when the
/// endpoint is on this machine. An emulator's invented public addresses are never contacted.
fn check_reachable(
    endpoint: Option<&str>,
    address_map: Option<&str>,
    machine: &Machine,
) -> Result<(), ProviderError> {
    let address = machine.public_ip;
    if address.is_unspecified() {
        return Ok(()); // Not running yet: nothing to contact.
    }
    if let Some(map) = address_map {
        let mut inside = false;
        for block in map.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            inside |= cidr_contains(block, address).ok_or_else(|| {
                ProviderError::new(format!(
                    "{ADDRESS_MAP_VARIABLE}: `{block}` is not a CIDR block such as 127.201.0.0/24"
                ))
            })?;
        }
        if !inside {
            return Err(ProviderError::new(format!(
                "{}: machine {} has the address {address}, outside the emulator's address map ({ADDRESS_MAP_VARIABLE}={map}); refusing to connect",
                machine.region, machine.name
            )));
        }
        return Ok(());
    }
    let Some(endpoint) = endpoint else { return Ok(()) };
    let host =
        endpoint.split("://").nth(1).unwrap_or(endpoint).split(['/', ':']).next().unwrap_or("");
    let local_endpoint =
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if local_endpoint && !address.is_loopback() {
        return Err(ProviderError::new(format!(
            "{}: the emulator at {endpoint} gave machine {} the address {address}, which is not on this machine; refusing to connect (start the emulator with `flotilla-emulator up`, which hands out loopback addresses)",
            machine.region, machine.name
        )));
    }
    Ok(())
}

/// Whether the IPv4 block `cidr` (`a.b.c.d/n`) holds `address`; `None` if `cidr` is malformed.
fn cidr_contains(cidr: &str, address: IpAddr) -> Option<bool> {
    let (network, bits) = cidr.split_once('/')?;
    let network: Ipv4Addr = network.parse().ok()?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
    let IpAddr::V4(address) = address else { return Some(false) };
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Some(u32::from(address) & mask == u32::from(network) & mask)
}

fn machine_from(found: &Found, name: &str, role: Role) -> Machine {
    let public_ip = found.public_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    Machine {
        name: name.to_owned(),
        role,
        region: found.region.clone(),
        id: found.id.clone(),
        public_ip,
        private_ip: found.private_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        agent_endpoint: SocketAddr::new(public_ip, DEFAULT_API_PORT),
        state: found.state,
        placement: None,
        state_reason: found.state_reason.clone(),
    }
}

impl flotilla_core::provider::Surveyor for AwsProvider {
    async fn survey(
        &self,
        regions: &[String],
        progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::Survey, ProviderError> {
        survey::survey(&self.clients, &self.options.home, regions, progress).await
    }
}

impl Provider for AwsProvider {
    async fn prepare(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        // Reads that check the account, all at once, before anything changes.
        let stage = progress.stage("checking the account", 0);
        let regions = plan.regions();
        let mut types: Vec<String> =
            plan.machines.iter().map(|m| DeploymentPlan::first_type(m).to_owned()).collect();
        types.sort();
        types.dedup();
        let offerings_lookup = async {
            let tasks: Vec<_> = regions
                .iter()
                .map(|region| {
                    let mut region_types: Vec<String> = plan
                        .machines
                        .iter()
                        .filter(|m| &m.region == region)
                        .map(|m| DeploymentPlan::first_type(m).to_owned())
                        .collect();
                    region_types.sort();
                    region_types.dedup();
                    async move { (region.clone(), self.offerings(region, &region_types).await) }
                })
                .collect();
            let mut offerings: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
            let mut lookups = futures_util::stream::iter(tasks).buffer_unordered(16);
            while let Some((region, result)) = lookups.next().await {
                offerings.insert(region, result?);
            }
            Ok::<_, ProviderError>(offerings)
        };
        let (enabled, architectures, deployer_ip, offerings, role_owner) = tokio::join!(
            self.check_regions(&regions),
            self.architectures(&types),
            self.prepare_deployer_ip(),
            offerings_lookup,
            iam::check_ownership(&self.clients, &self.tag)
        );
        enabled?;
        role_owner?;
        let architectures = architectures?;
        let deployer_ip = deployer_ip?;
        let offerings = offerings?;
        let needed: BTreeSet<String> = architectures.values().cloned().collect();
        let agents = self.agents(&needed)?;
        let zones =
            instances::assign_zones(&plan.machines, &offerings).map_err(ProviderError::new)?;
        drop(stage);

        // From here on, calls change the account.
        let bucket = match self.journal.read().bucket {
            Some(bucket) => bucket,
            None => s3::bucket_name(&self.options.home)?,
        };
        self.journal.update(|r| {
            r.bucket = Some(bucket.clone());
            r.deployer_ip = Some(deployer_ip);
        })?;
        let region_plans: HashMap<String, RegionPlan> = regions
            .iter()
            .enumerate()
            .map(|(index, region)| {
                let machines: Vec<&MachinePlan> =
                    plan.machines.iter().filter(|m| &m.region == region).collect();
                let mut all_zones: Vec<String> =
                    offerings[region].values().flatten().cloned().collect();
                all_zones.sort();
                all_zones.dedup();
                let mut in_use: Vec<String> =
                    machines.iter().map(|m| zones[&m.name].clone()).collect();
                in_use.sort();
                in_use.dedup();
                let mut region_architectures: Vec<String> = machines
                    .iter()
                    .map(|m| architectures[DeploymentPlan::first_type(m)].clone())
                    .collect();
                region_architectures.sort();
                region_architectures.dedup();
                let plan = RegionPlan {
                    region: region.clone(),
                    index: u8::try_from(index).expect("fewer than 256 regions"),
                    zones: all_zones,
                    zones_in_use: in_use,
                    architectures: region_architectures,
                    binary_group: machines.iter().any(|m| m.role == Role::Binary),
                    monitoring_group: machines.iter().any(|m| m.role == Role::Monitoring),
                };
                (region.clone(), plan)
            })
            .collect();

        // Three independent chains: bucket then agent upload; the role; networks then peering.
        let stage = progress.stage("creating networks", regions.len() as u64);
        let storage = async {
            s3::ensure_bucket(&self.clients, &bucket).await?;
            for (architecture, agent) in &agents {
                s3::put_file_once(
                    &self.clients,
                    &bucket,
                    &format!("agents/{}", agent.sha256),
                    &agent.path,
                )
                .await
                .map_err(|e| {
                    ProviderError::with_source(format!("uploading the {architecture} agent"), e)
                })?;
            }
            Ok::<(), ProviderError>(())
        };
        let role = async {
            let role_id = iam::ensure_role(&self.clients, &self.tag, &bucket).await?;
            self.journal.update(|r| {
                r.role_name = Some(iam_role_name(&self.tag));
                r.role_id = Some(role_id.clone());
            })?;
            Ok::<String, ProviderError>(role_id)
        };
        let authorized = self.journal.read().authorized;
        let settings = NetworkSettings {
            tag: &self.tag,
            deployer_ip,
            authorized: &authorized,
            ports: &plan.ports,
        };
        let networks = async {
            let tasks: Vec<_> = region_plans
                .values()
                .map(|region_plan| {
                    let settings = &settings;
                    async move {
                        let fresh = network::ensure_region(
                            &self.clients,
                            &self.journal,
                            settings,
                            region_plan,
                        )
                        .await?;
                        Ok::<_, ProviderError>((region_plan.region.clone(), fresh))
                    }
                })
                .collect();
            let mut fresh_regions = BTreeSet::new();
            let mut tasks = futures_util::stream::iter(tasks).buffer_unordered(16);
            while let Some(result) = tasks.next().await {
                let (region, fresh) = result?;
                if fresh {
                    fresh_regions.insert(region);
                }
                stage.advance(1);
            }
            drop(tasks);
            let hub = AWS_MONITORING_REGION;
            let hub_index = region_plans[hub].index;
            let peerings: Vec<_> = region_plans
                .values()
                .filter(|p| p.region != hub)
                .map(|spoke| {
                    let spoke_fresh = fresh_regions.contains(&spoke.region);
                    async move {
                        network::ensure_peering(
                            &self.clients,
                            &self.journal,
                            &self.tag,
                            (hub, hub_index),
                            (&spoke.region, spoke.index),
                            spoke_fresh,
                        )
                        .await
                    }
                })
                .collect();
            futures_util::future::try_join_all(peerings).await?;
            Ok::<(), ProviderError>(())
        };
        let (stored, role_id, networked) = tokio::join!(storage, role, networks);
        stored?;
        let role_id = role_id?;
        networked?;
        drop(stage);

        let user_data = self.user_data(&bucket, &role_id, &agents);
        *self.prepared.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(LaunchSettings {
                tag: self.tag.clone(),
                profile_name: iam_role_name(&self.tag),
                regions: region_plans,
                architectures,
                user_data,
                offerings,
                zones,
            });
        Ok(())
    }

    async fn launch(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        let settings = self.prepared()?;
        let regions = plan.regions();
        let stage = progress.stage("launching instances", plan.machines.len() as u64);

        // What exists already, named by batch and launch index.
        let mut existing: HashMap<String, Found> = HashMap::new();
        {
            // Only regions where this deployment launched before can hold its instances.
            let launched_before: BTreeSet<String> =
                self.journal.read().batches.iter().map(|b| b.region.clone()).collect();
            let tasks: Vec<_> = regions
                .iter()
                .filter(|region| launched_before.contains(*region))
                .map(|region| instances::describe(&self.clients, region, &self.tag, None, None))
                .collect();
            let mut lookups = futures_util::stream::iter(tasks).buffer_unordered(16);
            let records = self.journal.read();
            while let Some(found) = lookups.next().await {
                for instance in found? {
                    let Some((_, name)) = instance.name_in(&records) else {
                        tracing::warn!(instance = %instance.id, region = %instance.region, "an instance of this deployment has no known name; destroy removes it");
                        continue;
                    };
                    let keep = existing
                        .get(name)
                        .is_none_or(|other| instance.launch_time < other.launch_time);
                    if keep {
                        existing.insert(name.to_owned(), instance);
                    }
                }
            }
        }
        stage.advance(existing.len() as u64);

        // Launch the rest, batched, names journaled first.
        let missing: Vec<&MachinePlan> =
            plan.machines.iter().filter(|m| !existing.contains_key(&m.name)).collect();
        let batches = instances::plan_batches(&missing, &settings.zones);
        self.journal.update(|r| r.batches.extend(batches.iter().cloned()))?;
        let mut launched: HashMap<String, Vec<String>> = HashMap::new();
        {
            let tasks: Vec<_> = batches
                .iter()
                .map(|batch| {
                    let machine = plan
                        .machines
                        .iter()
                        .find(|m| m.name == batch.names[0])
                        .expect("batches are made of planned machines");
                    let settings = &settings;
                    async move {
                        let ids = instances::run_batch(
                            &self.clients,
                            &self.journal,
                            settings,
                            batch,
                            machine,
                        )
                        .await?;
                        Ok::<_, ProviderError>((batch, ids))
                    }
                })
                .collect();
            let mut launches = futures_util::stream::iter(tasks).buffer_unordered(32);
            while let Some(result) = launches.next().await {
                let (batch, ids) = result?;
                stage.advance(ids.len() as u64);
                launched.entry(batch.region.clone()).or_default().extend(ids);
            }
        }
        drop(stage);

        // Wait for new and still-pending instances to run with an address.
        let stage = progress.stage("waiting for instances", plan.machines.len() as u64);
        let mut waiting: HashMap<String, Vec<String>> = launched;
        for found in existing.values() {
            if found.state != MachineState::Running || found.public_ip.is_none() {
                waiting.entry(found.region.clone()).or_default().push(found.id.clone());
            }
        }
        let tasks: Vec<_> = waiting
            .iter()
            .map(|(region, ids)| instances::wait_running(&self.clients, region, &self.tag, ids))
            .collect();
        let mut waits = futures_util::stream::iter(tasks).buffer_unordered(16);
        let records = self.journal.read();
        while let Some(result) = waits.next().await {
            for instance in result? {
                if let Some((_, name)) = instance.name_in(&records) {
                    existing.insert(name.to_owned(), instance);
                }
            }
        }
        drop(waits);
        stage.advance(plan.machines.len() as u64);

        plan.machines
            .iter()
            .map(|machine| {
                let found = existing.get(&machine.name).ok_or_else(|| {
                    ProviderError::new(format!(
                        "{}: machine {} was launched but not found; run create again",
                        machine.region, machine.name
                    ))
                })?;
                let machine = machine_from(found, &machine.name, machine.role);
                check_reachable(self.clients.endpoint(), self.clients.address_map(), &machine)?;
                Ok(machine)
            })
            .collect()
    }

    async fn install_identity(
        &self,
        machine: &Machine,
        bundle: &IdentityBundle,
    ) -> Result<(), ProviderError> {
        let records = self.journal.read();
        let (Some(bucket), Some(role_id)) = (records.bucket, records.role_id) else {
            return Err(ProviderError::new("the bucket or role is missing; run create again"));
        };
        let key = userdata::identity_key(&self.tag, &role_id, &machine.id);
        let json = serde_json::to_vec(bundle).expect("an identity bundle serializes");
        s3::put_bytes(&self.clients, &bucket, &key, json).await
    }

    async fn publish(&self, artifact: &LocalArtifact) -> Result<String, ProviderError> {
        let bucket =
            self.bucket().ok_or_else(|| ProviderError::new("no bucket yet; run create"))?;
        let key = format!("deployments/{}/artifacts/{}", self.tag, artifact.sha256);
        s3::put_file_once(&self.clients, &bucket, &key, &artifact.path).await?;
        Ok(format!("s3://{bucket}/{key}"))
    }

    async fn machines(&self) -> Result<Vec<Machine>, ProviderError> {
        let records = self.journal.read();
        let mut machines = Vec::new();
        let tasks: Vec<_> = self
            .known_regions()
            .into_iter()
            .map(|region| async move {
                instances::describe(&self.clients, &region, &self.tag, None, None).await
            })
            .collect();
        let mut lookups = futures_util::stream::iter(tasks).buffer_unordered(16);
        while let Some(found) = lookups.next().await {
            for instance in found? {
                if let Some((batch, name)) = instance.name_in(&records) {
                    let machine = machine_from(&instance, name, batch.role);
                    check_reachable(self.clients.endpoint(), self.clients.address_map(), &machine)?;
                    machines.push(machine);
                }
            }
        }
        // Monitoring first, then names in a stable order.
        machines.sort_by(|a, b| {
            (a.role != Role::Monitoring, &a.name).cmp(&(b.role != Role::Monitoring, &b.name))
        });
        Ok(machines)
    }

    async fn destroy(&self, progress: &dyn Progress) -> Result<(), ProviderError> {
        let regions = self.known_regions();
        let stage = progress.stage("terminating instances", regions.len() as u64);
        let tasks: Vec<_> = regions
            .iter()
            .map(|region| instances::terminate_all(&self.clients, region, &self.tag))
            .collect();
        let mut terminations = futures_util::stream::iter(tasks).buffer_unordered(16);
        while let Some(result) = terminations.next().await {
            result?;
            stage.advance(1);
        }
        drop(terminations);
        drop(stage);

        let stage = progress.stage("deleting networks", regions.len() as u64);
        teardown::delete_peerings(&self.clients, AWS_MONITORING_REGION, &self.tag).await?;
        let tasks: Vec<_> = regions
            .iter()
            .map(|region| teardown::delete_network(&self.clients, region, &self.tag))
            .collect();
        let mut deletions = futures_util::stream::iter(tasks).buffer_unordered(16);
        while let Some(result) = deletions.next().await {
            result?;
            stage.advance(1);
        }
        drop(deletions);
        drop(stage);

        let _stage = progress.stage("deleting artifacts and role", 0);
        if let Some(bucket) = self.bucket() {
            s3::delete_prefix(&self.clients, &bucket, &format!("deployments/{}/", self.tag))
                .await?;
        }
        iam::delete_role(&self.clients, &self.tag).await?;
        self.journal.update(|r| {
            r.regions.clear();
            r.batches.clear();
            r.role_id = None;
            r.authorized.clear();
            r.deployer_ip = None;
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(ip: &str) -> Machine {
        let public_ip: IpAddr = ip.parse().unwrap();
        Machine {
            name: "n".into(),
            role: Role::Binary,
            region: "r".into(),
            id: "i-1".into(),
            public_ip,
            private_ip: public_ip,
            agent_endpoint: SocketAddr::new(public_ip, DEFAULT_API_PORT),
            state: MachineState::Running,
            state_reason: None,
            placement: None,
        }
    }

    /// The user data is rendered by the provider's own function from a provider that holds
    /// every secret it ever holds: the CA's and the CLI's private keys in its state directory, a
    /// machine's identity bundle with its private key, and AWS credentials (access key id,
    /// secret, session token) in its clients. None of them may reach the script, which EC2
    /// shows to anyone who can describe the instance.
    #[test]
    fn the_user_data_carries_no_secret_the_provider_holds() {
        use aws_sdk_ec2::config::{Credentials, SharedCredentialsProvider};
        use flotilla_core::state::{DeploymentStatus, Home, Metadata};

        let temp = tempfile::tempdir().unwrap();
        let home = Home::at(temp.path().join("home"));
        let tag = "-rf";
        let (deployment, _lock) = home
            .create_or_adopt(
                Metadata {
                    tag: tag.into(),
                    provider: flotilla_spec::ProviderKind::Aws,
                    created_at: 0,
                    updated_at: 0,
                    regions: vec!["us-east-1".into()],
                    instance_count: 1,
                    status: DeploymentStatus::Creating,
                    usd_per_hour: None,
                },
                false,
            )
            .unwrap();
        let ca = deployment.certificate_authority().unwrap();
        let cli = deployment.client_identity(&ca).unwrap();
        let address: IpAddr = "127.0.0.1".parse().unwrap();
        let agent = ca.issue_agent("node-1", tag, &[address]).unwrap();
        let bundle = IdentityBundle {
            name: "node-1".into(),
            tag: tag.into(),
            region: "us-east-1".into(),
            public_ip: address,
            private_ip: address,
            ca_cert: ca.cert_pem().to_owned(),
            cert: agent.cert_pem.clone(),
            key: agent.key_pem.clone(),
        };

        let (access_key_id, secret_key, session_token) = (
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "FwoGZXIvYXdzEBYaDExampleSessionTokenValue0123456789",
        );
        let config = aws_config::SdkConfig::builder()
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret_key,
                Some(session_token.into()),
                None,
                "test",
            )))
            .region(aws_config::Region::new(HOME_REGION))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let clients = Clients::from_config(config, Some("http://127.0.0.1:1".into()), None);
        let options = AwsOptions {
            deployer_ip: Some(Ipv4Addr::new(198, 51, 100, 7)),
            home: home.root().to_path_buf(),
            this_executable: PathBuf::from("/usr/local/bin/flotilla"),
            agent_builds: BTreeMap::new(),
            ip_discovery_url: None,
        };
        let provider = AwsProvider::new(&deployment, clients, options).unwrap();
        // The bundle as install_identity is handed it, kept where the provider can read it.
        deployment.write_json("aws/identity-node-1.json", &bundle).unwrap();
        let agents = BTreeMap::from([
            ("x86_64".to_owned(), artifact('a')),
            ("arm64".to_owned(), artifact('b')),
        ]);

        let user_data =
            provider.user_data("flotilla-0123456789abcdef", "AROAEXAMPLEROLEID", &agents);

        let mut secrets: Vec<String> = vec![
            access_key_id.into(),
            secret_key.into(),
            session_token.into(),
            serde_json::to_string(&bundle).unwrap(),
        ];
        for pem in [ca.key_pem(), cli.key_pem.clone(), bundle.key.clone()] {
            // Each line of a key's body is unique to that key.
            secrets.extend(
                pem.expose().lines().filter(|l| !l.starts_with("-----")).map(str::to_owned),
            );
        }
        assert!(secrets.len() > 6, "{} secret values", secrets.len());
        assert_eq!(user_data.len(), 2);
        for (architecture, encoded) in &user_data {
            let bytes = aws_smithy_types::base64::decode(encoded).unwrap();
            let script = String::from_utf8(bytes).unwrap();
            assert!(script.contains("identities/AROAEXAMPLEROLEID:"), "{architecture}");
            assert!(script.contains(&agents[architecture].sha256), "{architecture}");
            for marker in ["PRIVATE KEY", "BEGIN", "X-Amz-Signature", "X-Amz-Credential"] {
                assert!(!script.contains(marker), "{architecture}: {marker}");
            }
            for secret in &secrets {
                assert!(
                    !script.contains(secret.as_str()),
                    "{architecture}: a secret leaked: {secret}"
                );
            }
            assert!(encoded.len() < 16 * 1024, "user data is limited to 16 KiB");
        }
    }

    fn artifact(digit: char) -> LocalArtifact {
        LocalArtifact {
            path: PathBuf::from("/usr/local/bin/flotilla"),
            sha256: digit.to_string().repeat(64),
            size: 1,
        }
    }

    #[test]
    fn a_machine_says_why_ec2_stopped_it() {
        let found = Found {
            id: "i-1".into(),
            region: "us-east-1".into(),
            state: MachineState::Stopped,
            public_ip: None,
            private_ip: None,
            batch: Some("b1".into()),
            role: Some(Role::Binary),
            launch_index: 0,
            launch_time: 0,
            state_reason: Some("Server.SpotInstanceTermination: Spot instance termination".into()),
        };
        let machine = machine_from(&found, "n0", Role::Binary);
        assert_eq!(machine.state, MachineState::Stopped);
        assert_eq!(
            machine.state_reason.as_deref(),
            Some("Server.SpotInstanceTermination: Spot instance termination")
        );
    }

    #[test]
    fn an_emulator_on_loopback_may_only_hand_out_loopback_addresses() {
        let emulator = Some("http://127.0.0.1:5000");
        assert!(check_reachable(emulator, None, &machine("127.150.0.7")).is_ok());
        assert!(check_reachable(emulator, None, &machine("0.0.0.0")).is_ok(), "not yet running");
        let refused = check_reachable(emulator, None, &machine("54.214.1.2")).unwrap_err();
        assert!(
            refused.to_string().contains("not on this machine; refusing to connect"),
            "{refused}"
        );
        assert!(
            check_reachable(Some("http://localhost:5000/"), None, &machine("54.214.1.2")).is_err()
        );
        assert!(check_reachable(None, None, &machine("54.214.1.2")).is_ok(), "real AWS");
        assert!(
            check_reachable(Some("https://ec2.example.com"), None, &machine("54.214.1.2")).is_ok()
        );
    }

    #[test]
    fn an_address_map_admits_only_its_blocks() {
        let map = Some("127.201.3.0/24, 127.202.0.0/16");
        let emulator = Some("http://127.0.0.1:5000");
        assert!(check_reachable(emulator, map, &machine("127.201.3.9")).is_ok());
        assert!(check_reachable(emulator, map, &machine("127.202.77.1")).is_ok());
        assert!(check_reachable(emulator, map, &machine("0.0.0.0")).is_ok(), "not yet running");
        let refused = check_reachable(emulator, map, &machine("127.201.4.9")).unwrap_err();
        assert!(refused.to_string().contains("outside the emulator's address map"), "{refused}");
        assert!(check_reachable(None, map, &machine("54.214.1.2")).is_err());
        let bad = check_reachable(emulator, Some("127.201.3.0"), &machine("127.201.3.9"));
        assert!(bad.unwrap_err().to_string().contains("is not a CIDR block"));
        assert_eq!(cidr_contains("0.0.0.0/0", "8.8.8.8".parse().unwrap()), Some(true));
        assert_eq!(cidr_contains("10.0.0.1/32", "10.0.0.1".parse().unwrap()), Some(true));
        assert_eq!(cidr_contains("10.0.0.1/33", "10.0.0.1".parse().unwrap()), None);
    }
}
