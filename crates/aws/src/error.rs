//! Errors of AWS calls, with the region, the resource and the AWS error code, and the SDK's
//! error context (never a bare Debug dump).

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use flotilla_core::provider::ProviderError;

/// A failed AWS call.
#[derive(Debug, thiserror::Error)]
#[error("{region}: {operation} {resource}: {detail}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct AwsError {
    /// The region the call went to (`global` for IAM).
    pub region: String,
    /// The API operation, e.g. `RunInstances`.
    pub operation: &'static str,
    /// What it was about, e.g. `vpc 10.1.0.0/16` or an instance id.
    pub resource: String,
    /// The AWS error code, when AWS answered with one.
    pub code: Option<String>,
    /// The error with its context.
    pub detail: String,
    /// Whether trying again may succeed (throttling, 5xx, timeouts).
    pub transient: bool,
}

/// AWS error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "SlowDown",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Codes that mean "this pool (type, zone, market) has no capacity now: try another".
pub const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientCapacityOnHost",
    "InsufficientFreeAddressesInSubnet",
    "Unsupported",
];

impl AwsError {
    /// Wraps an SDK error of `operation` on `resource` in `region`.
    pub fn from_sdk<E>(
        region: &str,
        operation: &'static str,
        resource: impl Into<String>,
        error: SdkError<E, HttpResponse>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = error.code().map(str::to_owned);
        let transient = match &error {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
            SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                status >= 500 || code.as_deref().is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }
            _ => false,
        };
        let detail = match error.message() {
            Some(message) => message.to_owned(),
            None => DisplayErrorContext(&error).to_string(),
        };
        AwsError {
            region: region.to_owned(),
            operation,
            resource: resource.into(),
            code,
            detail,
            transient,
        }
    }

    /// An error raised by flotilla itself about an AWS resource.
    pub fn other(
        region: &str,
        operation: &'static str,
        resource: impl Into<String>,
        detail: impl Into<String>,
    ) -> AwsError {
        AwsError {
            region: region.to_owned(),
            operation,
            resource: resource.into(),
            code: None,
            detail: detail.into(),
            transient: false,
        }
    }

    /// Whether AWS answered with `code`. Case-insensitive: AWS documents
    /// `InvalidVpcPeeringConnectionID.NotFound` and emulators answer `…Id.NotFound`.
    pub fn code_is(&self, code: &str) -> bool {
        self.code.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(code))
    }

    /// The pool has no capacity now (move to another zone or type).
    pub fn is_capacity(&self) -> bool {
        self.code.as_deref().is_some_and(|c| CAPACITY_CODES.contains(&c))
    }
}

impl From<AwsError> for ProviderError {
    fn from(error: AwsError) -> Self {
        ProviderError::with_source(error.to_string(), error)
    }
}
