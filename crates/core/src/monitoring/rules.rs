//! flotilla's alert rules, as typed values rendered by a pure function.
//!
//! The rules read the agent's own metrics (`flotilla_agent` job: `flotilla_binary_up`,
//! `flotilla_binary_health_state`, `flotilla_binary_restarts_total`,
//! `flotilla_interruption_notices_total`, `flotilla_rollout_failed`, documented in the agent's
//! `metrics` module) and node exporter's (`node` job), plus Prometheus's own `up`:
//!
//! | alert | fires when | for |
//! |---|---|---|
//! | `FlotillaBinaryDown` | the agent reports its binary not running, and it is not idle (nothing installed) | 1m |
//! | `FlotillaTargetDown` | a binary's, agent's or node exporter's metrics cannot be scraped | 2m |
//! | `FlotillaBinaryCrashLooping` | the agent reports `crash-looping`, or 5 restarts within 15 minutes | 1m |
//! | `FlotillaDiskFreeLow` | a real file system has less than 10 % free | 5m |
//! | `FlotillaMemoryPressure` | less than 10 % of memory available, or tasks stalled on memory more than 10 % of the time | 5m |
//! | `FlotillaInterruptionNotice` | a new spot interruption or scheduled-event notice in the last 10 minutes (rebalance recommendations are `info`) | at once |
//! | `FlotillaRolloutFailed` | the machine's last rollout failed (rolled back, or nothing to roll back to) | at once |
//!
//! Every alert carries the target's labels (`deployment`, `name`, `region`, `instance_type`,
//! `market`, `version`), so a summary can name the machine.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::prometheus::{Job, prometheus_duration};

/// File systems that are not disks: left out of the free-space alert.
const NOT_DISKS: &str = "tmpfs|ramfs|devtmpfs|overlay|squashfs|nsfs|fuse.lxcfs";

/// A rule file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

/// A group of rules, evaluated together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<AlertRule>,
}

/// One alerting rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AlertRule {
    pub alert: String,
    /// PromQL.
    pub expr: String,
    /// How long the expression must hold before the alert fires (absent: at once).
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_duration: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// How urgent an alert is (its `severity` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl AlertRule {
    fn new(
        alert: &str,
        expr: String,
        for_duration: Option<Duration>,
        severity: Severity,
        summary: &str,
    ) -> AlertRule {
        AlertRule {
            alert: alert.to_owned(),
            expr,
            for_duration: for_duration.map(prometheus_duration),
            labels: BTreeMap::from([("severity".to_owned(), severity.as_str().to_owned())]),
            annotations: BTreeMap::from([("summary".to_owned(), summary.to_owned())]),
        }
    }
}

/// flotilla's rules (see the module's documentation).
pub fn flotilla_rules() -> RuleFile {
    let agent = Job::Agent.name();
    let node = Job::NodeExporter.name();
    let minutes = |n: u64| Some(Duration::from_secs(60 * n));
    let rules = vec![
        AlertRule::new(
            "FlotillaBinaryDown",
            format!(
                "flotilla_binary_up{{job=\"{agent}\"}} == 0 unless on (job, instance) flotilla_binary_health_state{{job=\"{agent}\", state=\"idle\"}} == 1"
            ),
            minutes(1),
            Severity::Critical,
            "The binary on {{ $labels.name }} ({{ $labels.region }}) is not running",
        ),
        AlertRule::new(
            "FlotillaTargetDown",
            "up == 0".to_owned(),
            minutes(2),
            Severity::Warning,
            "{{ $labels.job }} on {{ $labels.name }} cannot be scraped at {{ $labels.instance }}",
        ),
        AlertRule::new(
            "FlotillaBinaryCrashLooping",
            format!(
                "flotilla_binary_health_state{{job=\"{agent}\", state=\"crash-looping\"}} == 1 or increase(flotilla_binary_restarts_total{{job=\"{agent}\"}}[15m]) >= 5"
            ),
            minutes(1),
            Severity::Critical,
            "The binary on {{ $labels.name }} keeps exiting",
        ),
        AlertRule::new(
            "FlotillaDiskFreeLow",
            format!(
                "node_filesystem_avail_bytes{{job=\"{node}\", fstype!~\"{NOT_DISKS}\"}} / node_filesystem_size_bytes{{job=\"{node}\", fstype!~\"{NOT_DISKS}\"}} < 0.10"
            ),
            minutes(5),
            Severity::Warning,
            "{{ $labels.mountpoint }} on {{ $labels.name }} has {{ $value | humanizePercentage }} free",
        ),
        AlertRule::new(
            "FlotillaMemoryPressure",
            format!(
                "node_memory_MemAvailable_bytes{{job=\"{node}\"}} / node_memory_MemTotal_bytes{{job=\"{node}\"}} < 0.10 or rate(node_pressure_memory_stalled_seconds_total{{job=\"{node}\"}}[5m]) > 0.10"
            ),
            minutes(5),
            Severity::Warning,
            "{{ $labels.name }} is short of memory",
        ),
        AlertRule::new(
            "FlotillaInterruptionNotice",
            format!(
                "increase(flotilla_interruption_notices_total{{job=\"{agent}\", kind=~\"spot|scheduled\"}}[10m]) > 0"
            ),
            None,
            Severity::Warning,
            "{{ $labels.name }} got a {{ $labels.kind }} notice: it will be interrupted",
        ),
        AlertRule::new(
            "FlotillaRebalanceRecommendation",
            format!(
                "increase(flotilla_interruption_notices_total{{job=\"{agent}\", kind=\"rebalance\"}}[10m]) > 0"
            ),
            None,
            Severity::Info,
            "{{ $labels.name }}'s spot capacity is at risk (rebalance recommendation)",
        ),
        AlertRule::new(
            "FlotillaRolloutFailed",
            format!("flotilla_rollout_failed{{job=\"{agent}\"}} == 1"),
            None,
            Severity::Critical,
            "The last rollout on {{ $labels.name }} failed; it runs {{ $labels.version }}",
        ),
    ];
    RuleFile { groups: vec![RuleGroup { name: "flotilla".to_owned(), rules }] }
}

/// A rule file's text.
pub fn render_rules(rules: &RuleFile) -> String {
    format!("# Written by flotilla.\n{}", super::yaml::to_yaml(rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alert_the_issue_names_exists_once_with_a_severity_and_a_summary() {
        let rules = flotilla_rules();
        let names: Vec<&str> =
            rules.groups[0].rules.iter().map(|rule| rule.alert.as_str()).collect();
        assert_eq!(
            names,
            [
                "FlotillaBinaryDown",
                "FlotillaTargetDown",
                "FlotillaBinaryCrashLooping",
                "FlotillaDiskFreeLow",
                "FlotillaMemoryPressure",
                "FlotillaInterruptionNotice",
                "FlotillaRebalanceRecommendation",
                "FlotillaRolloutFailed",
            ]
        );
        for rule in &rules.groups[0].rules {
            assert!(rule.labels.contains_key("severity"), "{}", rule.alert);
            assert!(rule.annotations.contains_key("summary"), "{}", rule.alert);
        }
        let text = render_rules(&rules);
        assert!(text.contains("  - alert: \"FlotillaDiskFreeLow\"\n"), "{text}");
        assert!(text.contains("    for: \"5m\"\n"), "{text}");
    }
}
