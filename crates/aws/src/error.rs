//! Errors of AWS calls, with the region, the resource and the AWS error code, and the SDK's
//! error context (never a bare Debug dump).

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use flotilla_core::provider::{ErrorKind, ProviderError};

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
        self.healing() == Healing::Capacity
    }

    /// What trying this call again can achieve: see [`classify`].
    pub fn healing(&self) -> Healing {
        classify(self.code.as_deref(), &self.detail, self.transient)
    }
}

/// What trying a failed call again can achieve. Every loop of the provider that retries until a
/// deadline decides by this, and ends at once on [`Healing::Never`] with the error's code and ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Healing {
    /// Throttling, a 5xx, a timeout, a dropped connection: the same call may succeed shortly.
    Transient,
    /// The pool (type, zone, market) has no capacity now: another zone, or the same one later.
    Capacity,
    /// AWS has not caught up with a change yet: an id just made is not visible to every call,
    /// a new instance profile is not yet usable by EC2, an ENI is still being released.
    Propagating,
    /// The same call fails the same way every time (permissions, a bad parameter or image, a
    /// quota, a malformed request): the cause must be fixed, waiting does not help.
    Never,
}

/// Codes that fail the same way on every try, whatever HTTP status carries them.
const NEVER_CODES: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "OptInRequired",
    "Blocked",
    "InvalidParameterValue",
    "InvalidParameter",
    "InvalidParameterCombination",
    "MissingParameter",
    "MalformedQueryString",
    "InvalidAction",
    "ValidationError",
    "InvalidBlockDeviceMapping",
    "InvalidInstanceType",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
];

/// Code prefixes that fail the same way on every try (`InvalidAMIID.NotFound`, `.Malformed`…).
const NEVER_PREFIXES: &[&str] = &["InvalidAMIID.", "InvalidKeyPair."];

/// Codes of eventual consistency: a resource flotilla just made is not visible to every call
/// yet, or one that goes with a deleted resource is not released yet.
const PROPAGATING_CODES: &[&str] = &[
    "DependencyViolation",
    "InvalidInstanceID.NotFound",
    "InvalidVpcPeeringConnectionID.NotFound",
    "InvalidVpcID.NotFound",
    "InvalidSubnetID.NotFound",
    "InvalidGroup.NotFound",
    "InvalidInternetGatewayID.NotFound",
    "InvalidRouteTableID.NotFound",
];

/// Classifies an AWS error by its code, its message and whether the transport or status said it
/// was transient. Capacity first (its 500 status is not a transient fault of the call), then a
/// new instance profile EC2 does not see yet (an `InvalidParameterValue` about
/// `iamInstanceProfile`), then codes that never heal whatever their status, then eventual
/// consistency, then throttling and 5xx; anything else never heals.
pub fn classify(code: Option<&str>, detail: &str, transient: bool) -> Healing {
    let is = |list: &[&str]| code.is_some_and(|c| list.iter().any(|l| l.eq_ignore_ascii_case(c)));
    if is(CAPACITY_CODES) {
        return Healing::Capacity;
    }
    if code == Some("InvalidParameterValue") && detail.contains("iamInstanceProfile") {
        return Healing::Propagating;
    }
    if is(NEVER_CODES) || code.is_some_and(|c| NEVER_PREFIXES.iter().any(|p| c.starts_with(p))) {
        return Healing::Never;
    }
    if is(PROPAGATING_CODES) {
        return Healing::Propagating;
    }
    if transient || is(TRANSIENT_CODES) {
        return Healing::Transient;
    }
    Healing::Never
}

/// Codes of an account limit: waiting does not raise it, a quota increase or a smaller fleet
/// does.
const QUOTA_CODES: &[&str] = &[
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "InstanceLimitExceeded",
    "MaxFleetCountExceeded",
    "VpcLimitExceeded",
    "SecurityGroupLimitExceeded",
    "RulesPerSecurityGroupLimitExceeded",
    "AddressLimitExceeded",
    "InternetGatewayLimitExceeded",
    "LimitExceeded",
    "LimitExceededException",
    "TooManyBuckets",
];

/// Codes of a request the credentials may not make.
const PERMISSION_CODES: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "OptInRequired",
    "Blocked",
    "ExpiredToken",
];

/// The kind of failure `code` means, for callers that act on it (see [`ErrorKind`]).
pub fn kind_of_code(code: &str) -> ErrorKind {
    let is = |list: &[&str]| list.iter().any(|l| l.eq_ignore_ascii_case(code));
    if is(PERMISSION_CODES) {
        return ErrorKind::Permission;
    }
    if is(QUOTA_CODES) {
        return ErrorKind::Quota;
    }
    match flotilla_capacity::classify(code) {
        flotilla_capacity::ErrorClass::Pool | flotilla_capacity::ErrorClass::Subnet => {
            return ErrorKind::Capacity;
        }
        flotilla_capacity::ErrorClass::Quota => return ErrorKind::Quota,
        flotilla_capacity::ErrorClass::Throttle if code != "InternalError" => {
            return ErrorKind::Throttled;
        }
        _ => {}
    }
    if code.ends_with(".NotFound")
        || code.ends_with("NotFoundException")
        || code.starts_with("NoSuch")
        || code == "NotFound"
    {
        return ErrorKind::NotFound;
    }
    if code.starts_with("Invalid")
        || code.ends_with(".Malformed")
        || code.starts_with("Missing")
        || code == "ValidationError"
        || code == "MalformedQueryString"
    {
        return ErrorKind::Invalid;
    }
    ErrorKind::Other
}

impl AwsError {
    /// The kind of failure this is (by its code; throttling by its transport, too).
    pub fn kind(&self) -> ErrorKind {
        match self.code.as_deref() {
            Some(code) => kind_of_code(code),
            None => ErrorKind::Other,
        }
    }
}

impl AwsError {
    /// The action this error is about, for a permission hint: the operation, and its region
    /// unless the service is global (IAM).
    pub fn action(&self) -> String {
        match self.region.as_str() {
            "global" | "" => self.operation.to_owned(),
            region => format!("{} in {region}", self.operation),
        }
    }
}

impl From<AwsError> for ProviderError {
    fn from(error: AwsError) -> Self {
        let kind = error.kind();
        let action = error.action();
        let provider = ProviderError::with_source(error.to_string(), error).of_kind(kind);
        match kind {
            ErrorKind::Permission => provider.about(action),
            _ => provider,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_cannot_heal_are_never_retried() {
        for code in [
            "UnauthorizedOperation",
            "AccessDenied",
            "InvalidParameterValue",
            "InvalidAMIID.NotFound",
            "InvalidAMIID.Malformed",
            "MalformedQueryString",
            "VcpuLimitExceeded",
            "SomethingNobodyKnows",
        ] {
            assert_eq!(classify(Some(code), "", false), Healing::Never, "{code}");
        }
        // Whatever status carries them: an authorization error is never a 5xx to wait out.
        assert_eq!(classify(Some("UnauthorizedOperation"), "", true), Healing::Never);
        assert_eq!(classify(None, "", false), Healing::Never, "no code, no transient status");
    }

    #[test]
    fn codes_map_to_the_kinds_callers_act_on() {
        for (code, kind) in [
            ("InsufficientInstanceCapacity", ErrorKind::Capacity),
            ("InsufficientFreeAddressesInSubnet", ErrorKind::Capacity),
            ("VcpuLimitExceeded", ErrorKind::Quota),
            ("MaxSpotInstanceCountExceeded", ErrorKind::Quota),
            ("VpcLimitExceeded", ErrorKind::Quota),
            ("RequestLimitExceeded", ErrorKind::Throttled),
            ("Throttling", ErrorKind::Throttled),
            ("UnauthorizedOperation", ErrorKind::Permission),
            ("AccessDenied", ErrorKind::Permission),
            ("InvalidAMIID.NotFound", ErrorKind::NotFound),
            ("InvalidVpcID.NotFound", ErrorKind::NotFound),
            ("NoSuchBucket", ErrorKind::NotFound),
            ("InvalidParameterValue", ErrorKind::Invalid),
            ("InvalidAMIID.Malformed", ErrorKind::Invalid),
            ("MissingParameter", ErrorKind::Invalid),
            ("InternalError", ErrorKind::Other),
            ("SomethingNobodyKnows", ErrorKind::Other),
        ] {
            assert_eq!(kind_of_code(code), kind, "{code}");
        }
        let error = AwsError::other("us-east-1", "CreateFleet", "x", "refused");
        assert_eq!(ProviderError::from(error).kind, ErrorKind::Other);
        let denied = AwsError {
            code: Some("UnauthorizedOperation".into()),
            ..AwsError::other("us-east-1", "CreateFleet", "x", "denied")
        };
        let denied = ProviderError::from(denied);
        assert_eq!(denied.kind, ErrorKind::Permission);
        assert_eq!(denied.subject.as_deref(), Some("CreateFleet in us-east-1"));
        let iam = AwsError {
            code: Some("AccessDenied".into()),
            ..AwsError::other("global", "CreateRole", "r", "denied")
        };
        assert_eq!(ProviderError::from(iam).subject.as_deref(), Some("CreateRole"));
    }

    #[test]
    fn throttling_capacity_and_eventual_consistency_are_retried() {
        for code in ["RequestLimitExceeded", "Throttling", "InternalError", "ServiceUnavailable"] {
            assert_eq!(classify(Some(code), "", false), Healing::Transient, "{code}");
        }
        assert_eq!(classify(None, "", true), Healing::Transient, "a timeout or a 5xx");
        for code in ["InsufficientInstanceCapacity", "InsufficientFreeAddressesInSubnet"] {
            // Capacity errors come with a 500 status.
            assert_eq!(classify(Some(code), "", true), Healing::Capacity, "{code}");
        }
        for code in [
            "DependencyViolation",
            "InvalidInstanceID.NotFound",
            "InvalidVpcPeeringConnectionId.NotFound",
        ] {
            assert_eq!(classify(Some(code), "", false), Healing::Propagating, "{code}");
        }
        let profile = "Value (flotilla-x) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name";
        assert_eq!(classify(Some("InvalidParameterValue"), profile, false), Healing::Propagating);
    }
}
