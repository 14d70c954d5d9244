//! The alerts firing on the monitoring machine's Prometheus, for `status`: asked through the
//! monitoring agent's tunnel (`OpenTunnel` to Prometheus's port), so it works wherever the
//! agent's API is reachable and Prometheus itself stays closed. A deployment whose Prometheus
//! does not run, or does not answer within [`ALERTS_TIMEOUT`], shows no alerts; `status` never
//! fails for it.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{AgentClient, error_chain};
use crate::monitoring::services::PROMETHEUS_PORT;

/// How long `status` waits for Prometheus's answer.
pub const ALERTS_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes of Prometheus's answer read.
const MAX_ANSWER: u64 = 8 * 1024 * 1024;

/// One alert that fires, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FiringAlert {
    /// The rule's name (`FlotillaRolloutFailed`).
    pub alert: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The rule's summary, with the machine's labels filled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// When it became active (RFC 3339, as Prometheus says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// The firing alerts of Prometheus's `/api/v1/alerts` answer `body`, each with the machine it
/// names (its `name` label), in the answer's order. Pending alerts are left out.
pub fn parse_alerts(body: &str) -> Result<Vec<(Option<String>, FiringAlert)>, String> {
    let answer: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if answer["status"] != "success" {
        return Err(format!("Prometheus answered {}", answer["status"]));
    }
    let alerts = answer["data"]["alerts"].as_array().ok_or("no `data.alerts` in the answer")?;
    let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
    Ok(alerts
        .iter()
        .filter(|alert| alert["state"] == "firing")
        .filter_map(|alert| {
            let labels = &alert["labels"];
            Some((
                text(&labels["name"]),
                FiringAlert {
                    alert: text(&labels["alertname"])?,
                    severity: text(&labels["severity"]),
                    summary: text(&alert["annotations"]["summary"]),
                    since: text(&alert["activeAt"]),
                },
            ))
        })
        .collect())
}

/// The firing alerts of the Prometheus on machine `monitoring`, asked through its agent.
pub(super) async fn firing_alerts(
    client: &AgentClient,
    monitoring: &str,
) -> Result<Vec<(Option<String>, FiringAlert)>, String> {
    let ask = async {
        let mut tunnel = client
            .open_tunnel(monitoring, PROMETHEUS_PORT)
            .await
            .map_err(|error| error_chain(&error))?;
        tunnel
            .write_all(b"GET /api/v1/alerts HTTP/1.0\r\nHost: prometheus\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        (&mut tunnel).take(MAX_ANSWER).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        Ok::<Vec<u8>, String>(answer)
    };
    let answer = tokio::time::timeout(ALERTS_TIMEOUT, ask).await.map_err(|_| {
        format!("no answer within {}", humantime::format_duration(ALERTS_TIMEOUT))
    })??;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("Prometheus answered HTTP {status}"));
    }
    parse_alerts(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_alerts_are_kept_with_their_machine_and_pending_ones_left_out() {
        let body = r#"{"status":"success","data":{"alerts":[
            {"labels":{"alertname":"FlotillaRolloutFailed","name":"node-1","severity":"critical"},
             "annotations":{"summary":"The last rollout on node-1 failed"},
             "state":"firing","activeAt":"2026-12-03T21:00:00Z","value":"1e+00"},
            {"labels":{"alertname":"FlotillaTargetDown","name":"node-2"},
             "annotations":{},"state":"pending","activeAt":"2026-12-03T21:00:01Z"},
            {"labels":{"alertname":"Watchdog"},"annotations":{},"state":"firing"}
        ]}}"#;
        let alerts = parse_alerts(body).unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].0.as_deref(), Some("node-1"));
        assert_eq!(alerts[0].1.alert, "FlotillaRolloutFailed");
        assert_eq!(alerts[0].1.severity.as_deref(), Some("critical"));
        assert_eq!(alerts[0].1.summary.as_deref(), Some("The last rollout on node-1 failed"));
        assert_eq!(
            alerts[1],
            (
                None,
                FiringAlert {
                    alert: "Watchdog".into(),
                    severity: None,
                    summary: None,
                    since: None,
                }
            )
        );
        assert!(parse_alerts(r#"{"status":"error","error":"x"}"#).is_err());
        assert!(parse_alerts("<html>").is_err());
    }
}
