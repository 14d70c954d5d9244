//! The shapes of IMDS's event routes, as EC2 answers them, and the notices file of a local
//! rehearsal IMDS (written by `flotilla notice`, served by the agent under the local provider).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// `GET /latest/meta-data/spot/instance-action`: `{"action": "terminate", "time": "…Z"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotInstanceAction {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// `GET /latest/meta-data/events/recommendations/rebalance`: `{"noticeTime": "…Z"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceRecommendation {
    #[serde(rename = "noticeTime")]
    pub notice_time: String,
}

/// One entry of `GET /latest/meta-data/events/maintenance/scheduled` (a JSON list). Times are
/// written `21 Jan 2026 09:00:43 GMT`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduledEvent {
    pub code: String,
    #[serde(default)]
    pub description: String,
    pub event_id: String,
    pub not_before: String,
    #[serde(default)]
    pub not_after: String,
    /// `active`, `completed` or `canceled`.
    #[serde(default = "active")]
    pub state: String,
}

fn active() -> String {
    "active".to_owned()
}

/// The notices a rehearsal IMDS serves, as its routes answer them; absent routes are 404.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RehearsalNotices {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<SpotInstanceAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceRecommendation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduled: Vec<ScheduledEvent>,
}

/// The name of the notices file in a local machine's directory.
pub const REHEARSAL_NOTICES_FILE: &str = "imds-notices.json";

impl RehearsalNotices {
    /// Reads `path`; a missing file is no notice.
    pub fn read(path: &Path) -> Result<RehearsalNotices, String> {
        match fs_err::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| format!("{}: {error}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(error.to_string()),
        }
    }
}
