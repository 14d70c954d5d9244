//! The AWS provider: EC2 networks and instances across regions, S3 for artifacts and
//! identities, IAM for the machines' role. The only crate that knows the AWS SDK's types.
//!
//! `prepare` ([`prepare`]) checks everything it can before the first mutating call (regions
//! enabled, the catalog's architectures of the types the plan resolved, an agent build per
//! architecture, the deployer's address), then creates or adopts: the bucket, the role, every
//! region's network (regions at once; in an existing VPC only its security groups), the peerings
//! (between its own VPCs only), the launch templates, and uploads the
//! agent. `launch` ([`launch`]) adopts and names instances found by tag and launches the missing
//! ones with EC2 Fleet (`CreateFleet` of type `instant`, [`fleet`]) as flotilla-capacity's
//! launch planner directs. Modules, one per concern: [`clients`] (with [`throttle`], the
//! client-side token buckets), [`survey`] and [`prices`] (read-only: regions, catalog, prices),
//! [`network`] (with [`existing`]: the spec's existing VPCs, resolved and checked),
//! [`templates`] (with [`disks`], an entry's data disks), [`fleet`], [`launch`], [`instances`], [`s3`], [`iam`],
//! [`userdata`] and [`agents`], [`retire`] (machines removed one by one), [`teardown`],
//! [`snapshots`] (`snapshot` and `image`: a machine's disks or an AMI, stop and start around them),
//! [`authorize`], [`clean`], [`health`] (open EC2 issues before each batch of an update),
//! [`silent_agent`] (what a machine whose agent never answered booted), [`address`] (the
//! deployer's address), [`guard`] (the emulator address guard), [`tags`], [`fanout`], with
//! [`records`] and [`journal`] for what this machine started.

pub mod address;
pub mod agents;
pub mod authorize;
pub mod clean;
pub mod clients;
pub mod disks;
pub mod error;
pub mod existing;
pub mod fanout;
pub mod fleet;
pub mod guard;
pub mod health;
pub mod hosts;
pub mod iam;
pub mod images;
pub mod instances;
pub mod journal;
pub mod kms;
pub mod launch;
pub mod machine;
pub mod network;
pub mod prepare;
pub mod prices;
pub mod records;
pub mod references;
pub mod retire;
pub mod s3;
pub mod silent_agent;
pub mod snapshots;
pub mod survey;
pub mod tags;
pub mod teardown;
pub mod templates;
pub mod throttle;
pub mod userdata;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_core::monitoring::services::{MonitoringTools, Tool};
use flotilla_core::plan::DeploymentPlan;
use flotilla_core::progress::Progress;
use flotilla_core::provider::{LocalArtifact, Machine, Provider, ProviderError};
use flotilla_core::state::Deployment;
use flotilla_spec::identity::IdentityBundle;

pub use crate::agents::{AGENT_ENV, host_architecture};
pub use crate::clean::clean;
pub use crate::clients::Clients;
use crate::journal::Journal;
pub use crate::machine::{AwsMachineCloud, LazyAwsMachineCloud};
pub use crate::s3::S3Fetcher;

/// Where the deployer's public address is asked, as the commonware deployer asks it.
pub use crate::address::IP_DISCOVERY_URL;

/// How long a group's launch may keep looking for capacity, unless
/// [`AwsOptions::launch_deadline`] says otherwise.
pub const LAUNCH_DEADLINE: Duration = Duration::from_secs(600);

/// The region of the monitoring machine, the hub of the deployment's network (peering,
/// `prepare`'s checks, `destroy`'s order): the spec's rules know it too
/// ([`flotilla_spec::fleet::AWS_MONITORING_REGION`]), core asks it of the provider.
pub const MONITORING_REGION: &str = flotilla_spec::fleet::AWS_MONITORING_REGION;

/// What the CLI decides for the provider.
#[derive(Clone, Debug)]
pub struct AwsOptions {
    /// The deployer's public address (`--ip`); found as the deployer finds it when absent.
    pub deployer_ip: Option<Ipv4Addr>,
    /// `$FLOTILLA_HOME`: where the bucket name and the catalog cache are kept.
    pub home: PathBuf,
    /// This executable: the agent for machines of this machine's architecture.
    pub this_executable: PathBuf,
    /// Agent builds for other architectures (`x86_64`, `arm64`), from [`AGENT_ENV`].
    pub agent_builds: BTreeMap<String, PathBuf>,
    /// Where to ask this machine's public address instead of [`IP_DISCOVERY_URL`].
    pub ip_discovery_url: Option<String>,
    /// How long each group's launch may look for capacity ([`LAUNCH_DEADLINE`] when `None`).
    pub launch_deadline: Option<Duration>,
}

/// The AWS provider of one deployment.
#[derive(Debug)]
pub struct AwsProvider {
    pub(crate) tag: String,
    pub(crate) clients: Clients,
    pub(crate) journal: Journal,
    pub(crate) options: AwsOptions,
    prepared: Mutex<Option<prepare::LaunchSettings>>,
    /// The unavailable-offerings cache, kept for the provider's life: every launch of one
    /// command (a `watch` makes many) skips the pools an earlier one found dry, or saw
    /// reclaimed, until their marks expire.
    pub(crate) unavailable: Mutex<flotilla_capacity::UnavailableOfferings>,
    /// The host pools' policies, kept between `watch` rounds.
    pools: Mutex<hosts::PoolMemory>,
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
            pools: Mutex::new(hosts::PoolMemory::default()),
            unavailable: Mutex::new(flotilla_capacity::UnavailableOfferings::default()),
        })
    }

    fn prepared(&self) -> Result<prepare::LaunchSettings, ProviderError> {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| ProviderError::new("launch before prepare"))
    }

    /// Regions this deployment touched (journal) or declared (metadata), plus the monitoring
    /// region: where `destroy` and `machines` look.
    pub(crate) fn known_regions(&self) -> Vec<String> {
        let records = self.journal.read();
        let mut regions: BTreeSet<String> = records.regions.keys().cloned().collect();
        regions.extend(records.machines.values().map(|m| m.region.clone()));
        if let Ok(metadata) = self.journal.deployment().metadata() {
            regions.extend(metadata.regions);
        }
        regions.insert(MONITORING_REGION.to_owned());
        regions.into_iter().collect()
    }

    pub(crate) fn bucket(&self) -> Option<String> {
        self.journal.read().bucket.or_else(|| s3::existing_bucket_name(&self.options.home))
    }

    /// How long each group's launch may look for capacity.
    pub(crate) fn launch_deadline(&self) -> Duration {
        self.options.launch_deadline.unwrap_or(LAUNCH_DEADLINE)
    }

    /// The user data of each architecture's machines (base64), as `prepare` renders them: the
    /// boot script with this deployment's bucket, role id and agent digest, and nothing else of
    /// what the provider holds (see [`userdata`]).
    pub fn user_data(
        &self,
        bucket: &str,
        role_id: &str,
        agents: &BTreeMap<String, LocalArtifact>,
    ) -> BTreeMap<String, String> {
        agents::user_data(&self.tag, bucket, role_id, agents)
    }

    /// Adds (or with `revoke`, removes) the agent port rule for `ip` on every security group of
    /// the deployment; see [`authorize::authorize`]. Returns the groups changed.
    pub async fn authorize(&self, ip: Ipv4Addr, revoke: bool) -> Result<usize, ProviderError> {
        let regions = self.known_regions();
        authorize::authorize(&self.clients, &self.journal, &self.tag, &regions, ip, revoke).await
    }

    /// The deployer address this provider uses (for `authorize` without `--ip`).
    pub async fn current_deployer_ip(&self) -> Result<Ipv4Addr, ProviderError> {
        match self.options.deployer_ip {
            Some(ip) => Ok(ip),
            None => address::discover(self.options.ip_discovery_url.as_deref()).await,
        }
    }
}

impl flotilla_core::provider::Surveyor for AwsProvider {
    fn monitoring_region(&self) -> &'static str {
        MONITORING_REGION
    }

    async fn survey(
        &self,
        regions: &[String],
        groups: &[flotilla_core::plan::GroupPlan],
        progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::Survey, ProviderError> {
        survey::survey(&self.clients, &self.options.home, regions, groups, progress).await
    }

    async fn check_references(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::ReferenceCheck, ProviderError> {
        references::check(&self.clients, &self.options.home, plan, progress).await
    }
}

impl Provider for AwsProvider {
    /// Ubuntu's `prometheus` and `prometheus-node-exporter` on flotilla's default image,
    /// installed by each machine's agent with apt (signed by Ubuntu; see the agent's
    /// `packages`); nothing on an image of the user's own, which may have no apt.
    fn monitoring_tools(&self, spec: &flotilla_spec::FleetSpec) -> MonitoringTools {
        let own_image = spec.account.image.is_some()
            || spec.instances.iter().any(|entry| entry.account.image.is_some());
        if own_image {
            return MonitoringTools::none(
                "machines on an image of your own (`image:`) get no monitoring programs from flotilla, which installs Ubuntu's packages only on its default image",
            );
        }
        let package = |package: &str, path: &str| Tool::Package {
            package: package.to_owned(),
            path: path.to_owned(),
        };
        MonitoringTools {
            prometheus: package("prometheus", "/usr/bin/prometheus"),
            node_exporter: package("prometheus-node-exporter", "/usr/bin/prometheus-node-exporter"),
        }
    }

    /// The private address; under an emulator (an endpoint or address map of its own), whose
    /// private addresses are invented, the public one, which is on this host's loopback.
    fn scrape_address(&self, machine: &Machine) -> std::net::IpAddr {
        if self.clients.endpoint().is_some() || self.clients.address_map().is_some() {
            machine.public_ip
        } else {
            machine.private_ip
        }
    }

    async fn prepare(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let settings = prepare::prepare(self, plan, progress).await?;
        *self.prepared.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(settings);
        Ok(())
    }

    async fn launch(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        let settings = self.prepared()?;
        launch::launch(self, &settings, plan, progress).await
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
        launch::machines(self).await
    }

    async fn launch_beside(
        &self,
        plan: &DeploymentPlan,
        at_risk: &[Machine],
        progress: &dyn Progress,
    ) -> Result<Option<Vec<Machine>>, ProviderError> {
        // The old instances leave their names first (journaled), so `launch` finds the names
        // missing and launches new instances for them through the capacity policy.
        self.journal.update(|r| {
            for machine in at_risk {
                if r.machines.get(&machine.name).is_some_and(|m| m.instance_id == machine.id) {
                    r.machines.remove(&machine.name);
                }
                r.retiring.insert(machine.id.clone());
            }
        })?;
        let launched = self.launch(plan, progress).await?;
        Ok(Some(
            launched.into_iter().filter(|m| at_risk.iter().any(|old| old.name == m.name)).collect(),
        ))
    }

    async fn retire(
        &self,
        machines: &[Machine],
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        retire::retire(self, machines, progress).await
    }

    async fn open_health_issues(
        &self,
        regions: &[String],
    ) -> Result<flotilla_core::provider::HealthReading, ProviderError> {
        health::open_ec2_issues(&self.clients, regions).await
    }

    async fn explain_silent_agent(&self, machine: &Machine) -> Option<String> {
        Some(silent_agent::explain(self, machine).await)
    }

    async fn tend_host_pools(&self, plan: &DeploymentPlan) -> Result<Vec<String>, ProviderError> {
        hosts::tend(&self.clients, &self.journal, &self.tag, plan, &self.pools).await
    }

    fn check_capture(&self, _machine: &Machine) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn stop_machine(
        &self,
        machine: &Machine,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        snapshots::stop(&self.clients, machine, progress).await
    }

    async fn start_machine(
        &self,
        machine: &Machine,
        progress: &dyn Progress,
    ) -> Result<Machine, ProviderError> {
        snapshots::start(&self.clients, &self.tag, machine, progress).await
    }

    async fn snapshot_disks(
        &self,
        machine: &Machine,
        capture: &flotilla_core::provider::Capture,
        full: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<flotilla_core::provider::DiskSnapshot>, ProviderError> {
        snapshots::snapshot_disks(&self.clients, &self.tag, machine, &capture.id, full, progress)
            .await
    }

    async fn create_image(
        &self,
        machine: &Machine,
        request: &flotilla_core::provider::ImageRequest,
        progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::MachineImage, ProviderError> {
        snapshots::create_image(&self.clients, &self.tag, machine, request, progress).await
    }

    async fn destroy(
        &self,
        progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::Teardown, ProviderError> {
        let teardown = teardown::destroy(self, progress).await?;
        if let Some(bucket) = self.bucket() {
            s3::delete_prefix(&self.clients, &bucket, &format!("deployments/{}/", self.tag))
                .await?;
        }
        iam::delete_role(&self.clients, &self.tag).await?;
        self.journal.update(|r| {
            r.regions.clear();
            r.machines.clear();
            r.role_id = None;
            r.authorized.clear();
            r.deployer_ip = None;
        })?;
        Ok(teardown)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::clients::HOME_REGION;

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
            launch_deadline: None,
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
}
