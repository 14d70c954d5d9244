//! `list`: every deployment in the state directory, newest first.

use crate::error::CoreError;
use crate::state::{Home, Metadata, StateError};

/// Every deployment's metadata; unreadable ones as errors, so they are reported, not hidden.
pub fn list(home: &Home) -> Result<Vec<Result<Metadata, StateError>>, CoreError> {
    Ok(home.deployments()?)
}
