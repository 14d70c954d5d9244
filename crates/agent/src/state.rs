//! The agent's persisted state, `<dir>/agent-state.json`: which version is installed, which one
//! came before it, and whether the binary was stopped by request.
//!
//! It changes only when a rollout succeeds (and on `Stop`/`Restart`), always atomically, so an
//! agent killed in the middle of a rollout comes back running the version it ran before.

use std::path::Path;

use flotilla_spec::manifest::is_sha256_hex;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::instance_dir::{PRIVATE_FILE_MODE, write_file_atomically};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentState {
    /// The version the agent runs at start.
    pub(crate) installed: Option<String>,
    /// The version installed before it: kept on disk as the rollback target.
    pub(crate) previous: Option<String>,
    /// Stopped by a `Stop` request: stays stopped across agent restarts until `Restart` or a
    /// new version.
    #[serde(default)]
    pub(crate) stopped: bool,
}

impl AgentState {
    /// Reads the state; a missing file is the empty state of a new machine.
    pub(crate) fn load(path: &Path) -> Result<AgentState, AgentError> {
        let text = match fs_err::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AgentState::default());
            }
            Err(error) => {
                return Err(AgentError::BadState {
                    path: path.to_path_buf(),
                    message: error.to_string(),
                });
            }
        };
        let bad = |message: String| AgentError::BadState { path: path.to_path_buf(), message };
        let state: AgentState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for version in state.installed.iter().chain(state.previous.iter()) {
            if !is_sha256_hex(version) {
                return Err(bad(format!("`{version}` is not a version id (64 hex digits)")));
            }
        }
        Ok(state)
    }

    /// Replaces the file atomically (0600).
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).expect("the state serializes to JSON");
        json.push(b'\n');
        write_file_atomically(path, &json, PRIVATE_FILE_MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_a_version() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("agent-state.json");
        assert_eq!(AgentState::load(&path).unwrap(), AgentState::default());
        let state = AgentState {
            installed: Some("a".repeat(64)),
            previous: Some("b".repeat(64)),
            stopped: true,
        };
        state.save(&path).unwrap();
        assert_eq!(AgentState::load(&path).unwrap(), state);
        fs_err::write(&path, r#"{"installed":"../../etc"}"#).unwrap();
        let error = AgentState::load(&path).unwrap_err().to_string();
        assert!(error.contains("is not a version id"), "{error}");
        assert!(error.contains("delete it to start with no version installed"), "{error}");
    }
}
