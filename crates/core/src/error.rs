//! The workflows' error type and how each kind maps to an exit status.

use flotilla_spec::SpecErrors;

use crate::client::{ClientError, error_chain};
use crate::pki::PkiError;
use crate::provider::{ErrorKind, ProviderError};
use crate::state::StateError;

/// A machine that did not reach the version it was asked to run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MachineFailure {
    pub name: String,
    /// Why, in one sentence.
    pub reason: String,
    /// The failed version's last log lines, when the agent reported them.
    pub log_tail: Vec<String>,
    /// The machine runs its previous version again.
    pub rolled_back: bool,
}

impl std::fmt::Display for MachineFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)?;
        if self.rolled_back {
            write!(f, " (rolled back to the previous version)")?;
        }
        for line in &self.log_tail {
            write!(f, "\n    | {line}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The spec (or a file it names) is invalid; nothing was changed.
    #[error("{0}")]
    Invalid(SpecErrors),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{0}")]
    Io(String),
    /// The command ran, but machines did not reach the desired version.
    #[error("{summary}{}", failures.iter().map(|f| format!("\n  {f}")).collect::<String>())]
    Failed { summary: String, failures: Vec<MachineFailure> },
    /// The request cannot be carried out as asked (e.g. update changes membership).
    #[error("{0}")]
    Refused(String),
    /// An update stopped before a batch because the cloud's health service reports an open
    /// issue in the batch's regions (or could not be asked); see `crate::health`.
    #[error("{0}")]
    Held(String),
}

impl From<std::io::Error> for CoreError {
    fn from(error: std::io::Error) -> Self {
        CoreError::Io(error_chain(&error))
    }
}

/// Exit statuses of the `flotilla` command.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command ran but the fleet did not reach the desired state (an update was rolled
    /// back, machines are unhealthy).
    pub const FAILED: u8 = 1;
    /// The command could not run: bad arguments, invalid spec, state or provider errors.
    pub const ERROR: u8 = 2;
    /// The cloud had no capacity in the pools the spec allows (before the launch deadline).
    pub const CAPACITY: u8 = 3;
    /// An account quota is reached.
    pub const QUOTA: u8 = 4;
    /// The cloud's API kept refusing for the request rate.
    pub const THROTTLED: u8 = 5;
    /// The credentials may not do what the command needs.
    pub const PERMISSION: u8 = 6;
}

impl CoreError {
    /// The exit status: a provider failure of a kind a script can act on (wait and run again,
    /// widen the spec, ask for a quota or a permission) has its own; see [`exit`].
    pub fn exit_code(&self) -> u8 {
        match self {
            CoreError::Failed { .. } | CoreError::Held(_) => exit::FAILED,
            CoreError::Provider(error) => match error.kind {
                ErrorKind::Capacity => exit::CAPACITY,
                ErrorKind::Quota => exit::QUOTA,
                ErrorKind::Throttled => exit::THROTTLED,
                ErrorKind::Permission => exit::PERMISSION,
                ErrorKind::NotFound | ErrorKind::Invalid | ErrorKind::Other => exit::ERROR,
            },
            _ => exit::ERROR,
        }
    }

    /// The kind of a provider failure, `None` for every other error.
    pub fn provider_kind(&self) -> Option<ErrorKind> {
        match self {
            CoreError::Provider(error) => Some(error.kind),
            _ => None,
        }
    }

    /// One line saying what to do about a provider failure, by its kind (`None` when the
    /// message says it all).
    pub fn hint(&self) -> Option<String> {
        let CoreError::Provider(error) = self else { return None };
        let subject = error.subject.as_deref();
        Some(match error.kind {
            ErrorKind::Capacity => "try more instance_types or zones, or market: prefer-spot; \
                 or run again later (what launched is kept)"
                .to_owned(),
            ErrorKind::Quota => match subject {
                Some(quota) => format!("request a quota increase: {quota}"),
                None => "request a quota increase (Service Quotas console)".to_owned(),
            },
            ErrorKind::Throttled => {
                "the cloud's API throttled the requests: run again in a minute (what exists is kept)"
                    .to_owned()
            }
            ErrorKind::Permission => match subject {
                Some(action) => format!("allow {action} to these credentials"),
                None => "allow the denied action to these credentials".to_owned(),
            },
            ErrorKind::NotFound => {
                "create it, or fix the name or region that refers to it".to_owned()
            }
            ErrorKind::Invalid | ErrorKind::Other => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: ErrorKind) -> CoreError {
        CoreError::Provider(ProviderError::new("x").of_kind(kind))
    }

    #[test]
    fn each_provider_failure_kind_has_its_exit_status_and_hint() {
        for (kind, code, hint) in [
            (ErrorKind::Capacity, exit::CAPACITY, Some("try more instance_types or zones")),
            (ErrorKind::Quota, exit::QUOTA, Some("request a quota increase")),
            (ErrorKind::Throttled, exit::THROTTLED, Some("run again in a minute")),
            (ErrorKind::Permission, exit::PERMISSION, Some("allow the denied action")),
            (ErrorKind::NotFound, exit::ERROR, Some("create it")),
            (ErrorKind::Invalid, exit::ERROR, None),
            (ErrorKind::Other, exit::ERROR, None),
        ] {
            let error = provider(kind);
            assert_eq!(error.exit_code(), code, "{kind:?}");
            assert_eq!(error.provider_kind(), Some(kind));
            match (error.hint(), hint) {
                (Some(text), Some(part)) => assert!(text.contains(part), "{kind:?}: {text}"),
                (None, None) => {}
                (text, part) => panic!("{kind:?}: {text:?} vs {part:?}"),
            }
        }
        let quota = CoreError::Provider(
            ProviderError::new("x")
                .of_kind(ErrorKind::Quota)
                .about("on-demand vCPUs of the standard family in us-west-2"),
        );
        assert_eq!(
            quota.hint().unwrap(),
            "request a quota increase: on-demand vCPUs of the standard family in us-west-2"
        );
        let denied = CoreError::Provider(
            ProviderError::new("x").of_kind(ErrorKind::Permission).about("ec2:CreateFleet"),
        );
        assert_eq!(denied.hint().unwrap(), "allow ec2:CreateFleet to these credentials");
        let failed = CoreError::Failed { summary: "s".into(), failures: vec![] };
        assert_eq!(
            (failed.exit_code(), failed.hint(), failed.provider_kind()),
            (exit::FAILED, None, None)
        );
        assert_eq!(CoreError::Refused("r".into()).exit_code(), exit::ERROR);
    }
}
