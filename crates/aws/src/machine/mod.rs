//! The machine's cloud on AWS: [`AwsMachineCloud`] implements flotilla-agent's
//! [`MachineCloud`] (data volumes on EC2, records on Route 53, notifications on SNS and SQS)
//! for the agent on a fleet's machine and for standalone `flotilla fleetd`. The agent crate
//! stays free of the SDK; the binary registers this as it registers [`crate::S3Fetcher`].
//!
//! One module per concern: [`volumes`] (the sources `x`, `p` and `c`, the pool claim and the
//! tags it reads and writes), [`records`] (Route 53: save, UPSERT, restore), [`notify`] (SNS
//! Publish and SQS SendMessage), [`waits`] (every poll's schedule and deadline), and
//! [`policy`] (the IAM statements a lifecycle config needs, for a deployment's role and for
//! standalone `fleetd`).
//!
//! Clients are made once per region from one [`SdkConfig`]; [`AwsMachineCloud::from_env`]
//! loads it as the SDK does (credentials, region and `AWS_ENDPOINT_URL`, which points every
//! service at the emulator in tests). Every failure is a [`CloudError`] naming the operation
//! with its ids, AWS's error code and whether trying again may help.

pub mod notify;
pub mod policy;
pub mod records;
pub mod volumes;
pub mod waits;

use std::collections::BTreeMap;
use std::sync::Mutex;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_types::SdkConfig;
use aws_types::region::Region;
use flotilla_agent::{
    AttachedVolume, ClaimedVolume, CloudError, CloudFuture, MachineCloud, MachineFacts,
    Notification, RecordChange, RecordHold, Release, VolumeClaim,
};

use crate::error::{AwsError, Healing};
pub use crate::machine::waits::Schedule;

/// Route 53 is global; its API lives in us-east-1.
const ROUTE53_REGION: &str = "us-east-1";

/// The AWS side of a machine's lifecycle.
#[derive(Debug)]
pub struct AwsMachineCloud {
    config: SdkConfig,
    schedule: Schedule,
    ec2: Mutex<BTreeMap<String, aws_sdk_ec2::Client>>,
    route53: aws_sdk_route53::Client,
    sns: Mutex<BTreeMap<String, aws_sdk_sns::Client>>,
    sqs: Mutex<BTreeMap<String, aws_sdk_sqs::Client>>,
}

impl AwsMachineCloud {
    /// The machine's cloud with clients made from `config` (its credentials and endpoint; the
    /// region is each call's).
    pub fn new(config: SdkConfig) -> AwsMachineCloud {
        let route53 = aws_sdk_route53::Client::from_conf(
            aws_sdk_route53::config::Builder::from(&config)
                .region(Region::new(ROUTE53_REGION))
                .build(),
        );
        AwsMachineCloud {
            config,
            schedule: Schedule::Standard,
            ec2: Mutex::new(BTreeMap::new()),
            route53,
            sns: Mutex::new(BTreeMap::new()),
            sqs: Mutex::new(BTreeMap::new()),
        }
    }

    /// The machine's cloud with the SDK's own configuration: credentials from the environment,
    /// a profile or the instance's role, and `AWS_ENDPOINT_URL` when set.
    pub async fn from_env() -> AwsMachineCloud {
        AwsMachineCloud::new(
            aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await,
        )
    }

    /// Polls on `schedule` ([`Schedule::Fast`] against an emulator).
    pub fn with_schedule(mut self, schedule: Schedule) -> AwsMachineCloud {
        self.schedule = schedule;
        self
    }

    pub(crate) fn schedule(&self) -> Schedule {
        self.schedule
    }

    pub(crate) fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        client_of(&self.ec2, region, || {
            aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(&self.config)
                    .region(Region::new(region.to_owned()))
                    .build(),
            )
        })
    }

    pub(crate) fn route53(&self) -> &aws_sdk_route53::Client {
        &self.route53
    }

    /// An SNS client of `region` that sends each request once.
    pub(crate) fn sns(&self, region: &str) -> aws_sdk_sns::Client {
        client_of(&self.sns, region, || {
            aws_sdk_sns::Client::from_conf(
                aws_sdk_sns::config::Builder::from(&self.config)
                    .region(Region::new(region.to_owned()))
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .build(),
            )
        })
    }

    /// An SQS client of `region` that sends each request once.
    pub(crate) fn sqs(&self, region: &str) -> aws_sdk_sqs::Client {
        client_of(&self.sqs, region, || {
            aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(&self.config)
                    .region(Region::new(region.to_owned()))
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .build(),
            )
        })
    }
}

/// The client of `region` in `clients`, made with `make` the first time.
fn client_of<C: Clone>(
    clients: &Mutex<BTreeMap<String, C>>,
    region: &str,
    make: impl FnOnce() -> C,
) -> C {
    let mut clients = clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    clients.entry(region.to_owned()).or_insert_with(make).clone()
}

impl MachineCloud for AwsMachineCloud {
    fn claim_volume<'a>(&'a self, claim: &'a VolumeClaim) -> CloudFuture<'a, ClaimedVolume> {
        Box::pin(volumes::claim(self, claim))
    }

    fn commit_volume<'a>(
        &'a self,
        machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
    ) -> CloudFuture<'a, ()> {
        Box::pin(volumes::commit(self, machine, volume))
    }

    fn release_volume<'a>(
        &'a self,
        machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
        release: Release,
    ) -> CloudFuture<'a, ()> {
        Box::pin(volumes::release(self, machine, volume, release))
    }

    fn upsert_record<'a>(&'a self, change: &'a RecordChange) -> CloudFuture<'a, RecordHold> {
        Box::pin(records::upsert(self, change))
    }

    fn restore_record<'a>(&'a self, hold: &'a RecordHold) -> CloudFuture<'a, ()> {
        Box::pin(records::restore(self, hold))
    }

    fn notify<'a>(&'a self, notification: &'a Notification) -> CloudFuture<'a, ()> {
        Box::pin(notify::send(self, notification))
    }

    fn volumes_left_in_transit<'a>(
        &'a self,
        machine: &'a MachineFacts,
        domains: &'a [String],
    ) -> CloudFuture<'a, Vec<ClaimedVolume>> {
        Box::pin(volumes::leftovers(self, machine, domains))
    }

    fn attached_volumes<'a>(
        &'a self,
        region: &'a str,
        instance_id: &'a str,
    ) -> CloudFuture<'a, Vec<AttachedVolume>> {
        Box::pin(volumes::attached(self, region, instance_id))
    }

    fn prepare<'a>(
        &'a self,
        region: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        // The region's EC2 client (Route 53's is made with the cloud); each loads its TLS
        // roots as it is built.
        Box::pin(async move {
            let _ = self.ec2(region);
        })
    }
}

/// [`AwsMachineCloud`] made on its first call, with the SDK's own configuration (and the
/// profile, when given): for callers that register a cloud before any runtime runs (the agent,
/// standalone `fleetd`), and machines whose lifecycle never calls AWS load nothing.
#[derive(Debug)]
pub struct LazyAwsMachineCloud {
    profile: Option<String>,
    cloud: tokio::sync::OnceCell<AwsMachineCloud>,
}

impl LazyAwsMachineCloud {
    /// The cloud, registered as the agent's: `profile` names an AWS profile (`--profile`).
    pub fn shared(profile: Option<String>) -> std::sync::Arc<dyn MachineCloud> {
        std::sync::Arc::new(LazyAwsMachineCloud { profile, cloud: tokio::sync::OnceCell::new() })
    }

    async fn cloud(&self) -> &AwsMachineCloud {
        self.cloud
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(profile) = &self.profile {
                    loader = loader.profile_name(profile);
                }
                AwsMachineCloud::new(loader.load().await)
            })
            .await
    }
}

impl MachineCloud for LazyAwsMachineCloud {
    fn claim_volume<'a>(&'a self, claim: &'a VolumeClaim) -> CloudFuture<'a, ClaimedVolume> {
        Box::pin(async move { self.cloud().await.claim_volume(claim).await })
    }

    fn commit_volume<'a>(
        &'a self,
        machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
    ) -> CloudFuture<'a, ()> {
        Box::pin(async move { self.cloud().await.commit_volume(machine, volume).await })
    }

    fn release_volume<'a>(
        &'a self,
        machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
        release: Release,
    ) -> CloudFuture<'a, ()> {
        Box::pin(async move { self.cloud().await.release_volume(machine, volume, release).await })
    }

    fn upsert_record<'a>(&'a self, change: &'a RecordChange) -> CloudFuture<'a, RecordHold> {
        Box::pin(async move { self.cloud().await.upsert_record(change).await })
    }

    fn restore_record<'a>(&'a self, hold: &'a RecordHold) -> CloudFuture<'a, ()> {
        Box::pin(async move { self.cloud().await.restore_record(hold).await })
    }

    fn notify<'a>(&'a self, notification: &'a Notification) -> CloudFuture<'a, ()> {
        Box::pin(async move { self.cloud().await.notify(notification).await })
    }

    fn volumes_left_in_transit<'a>(
        &'a self,
        machine: &'a MachineFacts,
        domains: &'a [String],
    ) -> CloudFuture<'a, Vec<ClaimedVolume>> {
        Box::pin(async move { self.cloud().await.volumes_left_in_transit(machine, domains).await })
    }

    fn attached_volumes<'a>(
        &'a self,
        region: &'a str,
        instance_id: &'a str,
    ) -> CloudFuture<'a, Vec<AttachedVolume>> {
        Box::pin(async move { self.cloud().await.attached_volumes(region, instance_id).await })
    }

    fn prepare<'a>(
        &'a self,
        region: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        // The SDK's configuration (its credential chain is still asked lazily, by the first
        // request) and the clients.
        Box::pin(async move { self.cloud().await.prepare(region).await })
    }
}

/// A failed SDK call as a [`CloudError`]: `operation` names the call and its ids
/// (`AttachVolume vol-1 to i-2`); the code and message are AWS's (the SDK's error context when
/// AWS gave no message).
pub(crate) fn sdk_error<E>(
    region: &str,
    operation: impl Into<String>,
    error: SdkError<E, HttpResponse>,
) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let aws = AwsError::from_sdk(region, "call", "", error);
    let healing = aws.healing();
    CloudError {
        operation: operation.into(),
        code: aws.code,
        message: aws.detail,
        retryable: matches!(healing, Healing::Transient | Healing::Propagating),
    }
}

/// A [`CloudError`] flotilla raises itself (no AWS code).
pub(crate) fn own_error(
    operation: impl Into<String>,
    message: impl Into<String>,
    retryable: bool,
) -> CloudError {
    CloudError { operation: operation.into(), code: None, message: message.into(), retryable }
}
