//! Choosing a provider at run time: one enum over the concrete providers.

use std::net::Ipv4Addr;

use flotilla_aws::{AwsOptions, AwsProvider, Clients};
use flotilla_core::plan::{DeploymentPlan, GroupPlan};
use flotilla_core::progress::Progress;
use flotilla_core::provider::{
    HealthReading, LocalArtifact, Machine, Provider, ProviderError, ReferenceCheck, Survey,
    Surveyor,
};
use flotilla_core::state::{Deployment, Home};
use flotilla_local::LocalProvider;
use flotilla_spec::ProviderKind;
use flotilla_spec::identity::IdentityBundle;

use crate::env::Environment;

/// The provider a deployment uses.
#[derive(Debug)]
pub enum AnyProvider {
    Local(LocalProvider),
    Aws(Box<AwsProvider>),
}

/// What building a provider needs beyond the deployment: for AWS, SDK clients (loaded
/// asynchronously, before the workflow starts) and the deployer's address if given.
#[derive(Debug)]
pub struct ProviderContext {
    kind: ProviderKind,
    home: Home,
    environment: Environment,
    aws: Option<Clients>,
    deployer_ip: Option<Ipv4Addr>,
}

impl ProviderContext {
    pub async fn new(
        kind: ProviderKind,
        home: &Home,
        environment: &Environment,
        deployer_ip: Option<Ipv4Addr>,
    ) -> ProviderContext {
        let aws = match kind {
            ProviderKind::Aws => Some(
                Clients::load(
                    environment.aws_endpoint_url.clone(),
                    environment.emulator_public_ips.clone(),
                )
                .await,
            ),
            ProviderKind::Local => None,
        };
        ProviderContext {
            kind,
            home: home.clone(),
            environment: environment.clone(),
            aws,
            deployer_ip,
        }
    }

    /// Makes the cached catalog and prices stale (`--refresh`), so this command reads them
    /// again; the local provider has none.
    pub fn expire_cache(&self) -> Result<(), ProviderError> {
        match &self.aws {
            Some(clients) => flotilla_aws::survey::expire_cache(self.home.root(), clients),
            None => Ok(()),
        }
    }

    /// Builds the provider for `deployment`.
    pub fn make(&self, deployment: &Deployment) -> Result<AnyProvider, ProviderError> {
        let program = std::env::current_exe().map_err(|e| {
            ProviderError::with_source("cannot find the flotilla executable to start agents", e)
        })?;
        match (self.kind, self.aws.clone()) {
            (ProviderKind::Local, _) => {
                let lease_dir = self.environment.lease_dir();
                let provider = LocalProvider::new(deployment, program, lease_dir)?
                    .with_monitoring_tools(self.environment.local_monitoring_tools());
                Ok(AnyProvider::Local(provider))
            }
            (ProviderKind::Aws, Some(clients)) => {
                let options = AwsOptions {
                    deployer_ip: self.deployer_ip,
                    home: self.home.root().to_path_buf(),
                    this_executable: program,
                    agent_builds: self.environment.agent_builds(),
                    ip_discovery_url: self.environment.ip_discovery_url.clone(),
                    launch_deadline: self.environment.launch_deadline,
                };
                Ok(AnyProvider::Aws(Box::new(AwsProvider::new(deployment, clients, options)?)))
            }
            (ProviderKind::Aws, None) => Err(ProviderError::new("AWS clients were not loaded")),
        }
    }
}

impl Surveyor for AnyProvider {
    fn monitoring_region(&self) -> &'static str {
        match self {
            AnyProvider::Local(p) => p.monitoring_region(),
            AnyProvider::Aws(p) => p.monitoring_region(),
        }
    }

    async fn survey(
        &self,
        regions: &[String],
        groups: &[GroupPlan],
        progress: &dyn Progress,
    ) -> Result<Survey, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.survey(regions, groups, progress).await,
            AnyProvider::Aws(p) => p.survey(regions, groups, progress).await,
        }
    }

    async fn check_references(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<ReferenceCheck, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.check_references(plan, progress).await,
            AnyProvider::Aws(p) => p.check_references(plan, progress).await,
        }
    }
}

/// The survey without a deployment (for `plan`, which creates nothing).
impl Surveyor for ProviderContext {
    fn monitoring_region(&self) -> &'static str {
        match self.kind {
            ProviderKind::Local => flotilla_local::REGION,
            ProviderKind::Aws => flotilla_aws::MONITORING_REGION,
        }
    }

    async fn survey(
        &self,
        regions: &[String],
        groups: &[GroupPlan],
        progress: &dyn Progress,
    ) -> Result<Survey, ProviderError> {
        match (&self.kind, &self.aws) {
            (ProviderKind::Local, _) => Ok(flotilla_local::survey().await),
            (ProviderKind::Aws, Some(clients)) => {
                flotilla_aws::survey::survey(clients, self.home.root(), regions, groups, progress)
                    .await
            }
            (ProviderKind::Aws, None) => Err(ProviderError::new("AWS clients were not loaded")),
        }
    }

    async fn check_references(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<ReferenceCheck, ProviderError> {
        match (&self.kind, &self.aws) {
            (ProviderKind::Local, _) => Ok(flotilla_local::check_references(plan)),
            (ProviderKind::Aws, Some(clients)) => {
                flotilla_aws::references::check(clients, self.home.root(), plan, progress).await
            }
            (ProviderKind::Aws, None) => Err(ProviderError::new("AWS clients were not loaded")),
        }
    }
}

impl Provider for AnyProvider {
    fn monitoring_tools(
        &self,
        spec: &flotilla_spec::FleetSpec,
    ) -> flotilla_core::monitoring::services::MonitoringTools {
        match self {
            AnyProvider::Local(p) => p.monitoring_tools(spec),
            AnyProvider::Aws(p) => p.monitoring_tools(spec),
        }
    }

    fn scrape_address(&self, machine: &Machine) -> std::net::IpAddr {
        match self {
            AnyProvider::Local(p) => p.scrape_address(machine),
            AnyProvider::Aws(p) => p.scrape_address(machine),
        }
    }

    async fn prepare(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.prepare(plan, progress).await,
            AnyProvider::Aws(p) => p.prepare(plan, progress).await,
        }
    }

    async fn launch(
        &self,
        plan: &DeploymentPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.launch(plan, progress).await,
            AnyProvider::Aws(p) => p.launch(plan, progress).await,
        }
    }

    async fn install_identity(
        &self,
        machine: &Machine,
        bundle: &IdentityBundle,
    ) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.install_identity(machine, bundle).await,
            AnyProvider::Aws(p) => p.install_identity(machine, bundle).await,
        }
    }

    async fn publish(&self, artifact: &LocalArtifact) -> Result<String, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.publish(artifact).await,
            AnyProvider::Aws(p) => p.publish(artifact).await,
        }
    }

    async fn machines(&self) -> Result<Vec<Machine>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.machines().await,
            AnyProvider::Aws(p) => p.machines().await,
        }
    }

    async fn launch_beside(
        &self,
        plan: &DeploymentPlan,
        at_risk: &[Machine],
        progress: &dyn Progress,
    ) -> Result<Option<Vec<Machine>>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.launch_beside(plan, at_risk, progress).await,
            AnyProvider::Aws(p) => p.launch_beside(plan, at_risk, progress).await,
        }
    }

    async fn retire(
        &self,
        machines: &[Machine],
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.retire(machines, progress).await,
            AnyProvider::Aws(p) => p.retire(machines, progress).await,
        }
    }

    async fn open_health_issues(&self, regions: &[String]) -> Result<HealthReading, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.open_health_issues(regions).await,
            AnyProvider::Aws(p) => p.open_health_issues(regions).await,
        }
    }

    async fn explain_silent_agent(&self, machine: &Machine) -> Option<String> {
        match self {
            AnyProvider::Local(p) => p.explain_silent_agent(machine).await,
            AnyProvider::Aws(p) => p.explain_silent_agent(machine).await,
        }
    }

    async fn tend_host_pools(&self, plan: &DeploymentPlan) -> Result<Vec<String>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.tend_host_pools(plan).await,
            AnyProvider::Aws(p) => p.tend_host_pools(plan).await,
        }
    }

    fn check_capture(&self, machine: &Machine) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.check_capture(machine),
            AnyProvider::Aws(p) => p.check_capture(machine),
        }
    }

    async fn stop_machine(
        &self,
        machine: &Machine,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        match self {
            AnyProvider::Local(p) => p.stop_machine(machine, progress).await,
            AnyProvider::Aws(p) => p.stop_machine(machine, progress).await,
        }
    }

    async fn start_machine(
        &self,
        machine: &Machine,
        progress: &dyn Progress,
    ) -> Result<Machine, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.start_machine(machine, progress).await,
            AnyProvider::Aws(p) => p.start_machine(machine, progress).await,
        }
    }

    async fn snapshot_disks(
        &self,
        machine: &Machine,
        capture: &flotilla_core::provider::Capture,
        full: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<flotilla_core::provider::DiskSnapshot>, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.snapshot_disks(machine, capture, full, progress).await,
            AnyProvider::Aws(p) => p.snapshot_disks(machine, capture, full, progress).await,
        }
    }

    async fn create_image(
        &self,
        machine: &Machine,
        request: &flotilla_core::provider::ImageRequest,
        progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::MachineImage, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.create_image(machine, request, progress).await,
            AnyProvider::Aws(p) => p.create_image(machine, request, progress).await,
        }
    }

    async fn destroy(
        &self,
        progress: &dyn Progress,
    ) -> Result<flotilla_core::provider::Teardown, ProviderError> {
        match self {
            AnyProvider::Local(p) => p.destroy(progress).await,
            AnyProvider::Aws(p) => p.destroy(progress).await,
        }
    }
}
