//! `list`: every deployment in the state directory, newest first.

use crate::error::CoreError;
use crate::state::{Home, Listed};

/// Every deployment's metadata; unreadable ones as their tag and error, so they are reported,
/// not hidden.
pub fn list(home: &Home) -> Result<Vec<Listed>, CoreError> {
    Ok(home.deployments()?)
}
