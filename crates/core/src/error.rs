//! The workflows' error type and how each kind maps to an exit status.

use flotilla_spec::SpecErrors;

use crate::client::{ClientError, error_chain};
use crate::pki::PkiError;
use crate::provider::ProviderError;
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
}

impl CoreError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CoreError::Failed { .. } | CoreError::Held(_) => exit::FAILED,
            _ => exit::ERROR,
        }
    }
}
