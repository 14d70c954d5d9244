//! SDK clients: one EC2 and one KMS client per region, S3 in the bucket's region, IAM and
//! Health (global).
//!
//! Configuration comes from the standard chain (environment, profiles, SSO, IMDS). An endpoint
//! in `AWS_ENDPOINT_URL` (an emulator) is honoured, and S3 then uses path-style addressing.
//! Retries: the SDK's standard mode with 6 attempts (exponential backoff with jitter from
//! 200 ms, capped at 5 s) for throttling, 5xx and timeouts; `CreateFleet` has SDK retries off
//! because a retried launch may launch twice (see `fleet`). Every EC2 request of a region first
//! takes its tokens from the region's client-side buckets ([`crate::throttle`]). The Pricing API
//! is asked in us-east-1 (at `AWS_ENDPOINT_URL` under an emulator), and so is AWS Health.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use crate::throttle::{RegionThrottle, throttled_http_client};

/// The region of the artifact bucket and of IAM calls.
pub const HOME_REGION: &str = "us-east-1";

/// Clients for every service the provider uses. Cloning is cheap: SDK clients share their
/// configuration and connections.
#[derive(Debug)]
pub struct Clients {
    config: SdkConfig,
    ec2: Mutex<HashMap<String, aws_sdk_ec2::Client>>,
    /// Each region's EC2 token buckets, shared by its clients.
    throttles: Mutex<HashMap<String, Arc<RegionThrottle>>>,
    /// The HTTP client the throttled EC2 clients wrap.
    http: SharedHttpClient,
    s3: aws_sdk_s3::Client,
    iam: aws_sdk_iam::Client,
    pricing: aws_sdk_pricing::Client,
    health: aws_sdk_health::Client,
    /// KMS clients by region (keys belong to a region).
    kms: Mutex<HashMap<String, aws_sdk_kms::Client>>,
    /// Set when an emulator (or another endpoint) stands in for AWS.
    endpoint: Option<String>,
    /// An emulator's address map ([`ADDRESS_MAP_VARIABLE`]): the only addresses machines may
    /// have.
    address_map: Option<String>,
}

impl Clone for Clients {
    fn clone(&self) -> Clients {
        Clients {
            config: self.config.clone(),
            ec2: Mutex::new(self.ec2.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            throttles: Mutex::new(self.throttles.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            http: self.http.clone(),
            s3: self.s3.clone(),
            iam: self.iam.clone(),
            pricing: self.pricing.clone(),
            health: self.health.clone(),
            kms: Mutex::new(self.kms.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            endpoint: self.endpoint.clone(),
            address_map: self.address_map.clone(),
        }
    }
}

/// The emulator's address map: the CIDR blocks (`127.A.B.0/24,…`) its instances' public
/// addresses come from, reached as they are. `flotilla-emulator up` prints it; the CLI reads
/// it and passes it to [`Clients::load`].
pub const ADDRESS_MAP_VARIABLE: &str = "FLOTILLA_EMULATOR_PUBLIC_IPS";

impl Clients {
    /// Loads the configuration from the SDK's standard chain (environment, profiles, SSO).
    /// `endpoint` (`AWS_ENDPOINT_URL`) stands in for AWS; `address_map` is an emulator's
    /// [`ADDRESS_MAP_VARIABLE`].
    pub async fn load(endpoint: Option<String>, address_map: Option<String>) -> Clients {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(
                aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else(HOME_REGION),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .operation_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        Clients::from_config(loader.load().await, endpoint, address_map)
    }

    /// Clients from a loaded configuration (its credentials, region, retries and endpoint).
    pub fn from_config(
        config: SdkConfig,
        endpoint: Option<String>,
        address_map: Option<String>,
    ) -> Clients {
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .region(Region::new(HOME_REGION))
            .force_path_style(endpoint.is_some())
            .build();
        let iam_config =
            aws_sdk_iam::config::Builder::from(&config).region(Region::new(HOME_REGION)).build();
        let pricing_config = aws_sdk_pricing::config::Builder::from(&config)
            .region(Region::new(HOME_REGION))
            .build();
        let health_config =
            aws_sdk_health::config::Builder::from(&config).region(Region::new(HOME_REGION)).build();
        let http = config.http_client().unwrap_or_else(|| {
            use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
            aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                .build_https()
        });
        Clients {
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            iam: aws_sdk_iam::Client::from_conf(iam_config),
            pricing: aws_sdk_pricing::Client::from_conf(pricing_config),
            health: aws_sdk_health::Client::from_conf(health_config),
            kms: Mutex::new(HashMap::new()),
            ec2: Mutex::new(HashMap::new()),
            throttles: Mutex::new(HashMap::new()),
            http,
            config,
            endpoint,
            address_map,
        }
    }

    /// The EC2 client of `region`, throttled by the region's buckets.
    pub fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let mut clients = self.ec2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let http = throttled_http_client(self.http.clone(), self.throttle(region));
                let config = aws_sdk_ec2::config::Builder::from(&self.config)
                    .region(Region::new(region.to_owned()))
                    .http_client(http)
                    .build();
                aws_sdk_ec2::Client::from_conf(config)
            })
            .clone()
    }

    /// The EC2 token buckets of `region`.
    pub fn throttle(&self, region: &str) -> Arc<RegionThrottle> {
        let mut throttles =
            self.throttles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        throttles.entry(region.to_owned()).or_default().clone()
    }

    /// The KMS client of `region`.
    pub fn kms(&self, region: &str) -> aws_sdk_kms::Client {
        let mut clients = self.kms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_kms::config::Builder::from(&self.config)
                    .region(Region::new(region.to_owned()))
                    .build();
                aws_sdk_kms::Client::from_conf(config)
            })
            .clone()
    }

    /// The AWS Health client (us-east-1, its global endpoint).
    pub fn health(&self) -> &aws_sdk_health::Client {
        &self.health
    }

    /// The Pricing API client (us-east-1).
    pub fn pricing(&self) -> &aws_sdk_pricing::Client {
        &self.pricing
    }

    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    pub fn iam(&self) -> &aws_sdk_iam::Client {
        &self.iam
    }

    /// The emulator's address map, if one was given.
    pub fn address_map(&self) -> Option<&str> {
        self.address_map.as_deref()
    }

    /// The endpoint standing in for AWS, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
}

/// The SDK configuration override that turns retries off for one call.
pub fn no_retries() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled())
}
