//! Grafana's provisioning as typed values rendered by pure functions: the datasources
//! (Prometheus, Loki, Tempo, Pyroscope, each with a fixed `uid` the dashboards name), the
//! dashboard provider (dashboards read from a directory), and flotilla's own dashboard.
//!
//! flotilla's dashboard shows the fleet of one deployment (a `deployment` variable read from
//! the agents' series): machines up and healthy, the binary's state over time, the versions
//! running, restarts, failed rollouts, interruption notices, the agent's lifecycle events (the
//! `[flotilla-agent]` lines the agents ship to Loki), log lines dropped on the way, and GPUs.
//! Its queries are PromQL on the agent's metrics (`flotilla_*`, job `flotilla_agent`) and
//! LogQL on the labels the agent ships with.

use std::collections::BTreeMap;

use serde::Serialize;

/// The datasources' `uid`s, which panels name.
pub const PROMETHEUS_UID: &str = "flotilla-prometheus";
pub const LOKI_UID: &str = "flotilla-loki";
pub const TEMPO_UID: &str = "flotilla-tempo";
pub const PYROSCOPE_UID: &str = "flotilla-pyroscope";
/// flotilla's dashboard's `uid`.
pub const DASHBOARD_UID: &str = "flotilla-fleet";
/// The dashboard JSON schema version written.
const SCHEMA_VERSION: u32 = 39;
/// A dashboard is 24 grid columns wide.
pub const GRID_COLUMNS: u32 = 24;

/// Where the monitoring machine's services answer, as Grafana (on the same machine) reaches
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrafanaSettings {
    /// `http://127.0.0.1:9090`.
    pub prometheus_url: String,
    /// `http://127.0.0.1:3100`.
    pub loki_url: String,
    /// `http://127.0.0.1:3200`.
    pub tempo_url: String,
    /// `http://127.0.0.1:4040`.
    pub pyroscope_url: String,
    /// The directory the dashboard provider reads dashboards from.
    pub dashboards_dir: String,
}

impl Default for GrafanaSettings {
    /// The monitoring machine's ports (the commonware deployer's): Prometheus 9090, Loki 3100,
    /// Tempo 3200, Pyroscope 4040.
    fn default() -> GrafanaSettings {
        GrafanaSettings {
            prometheus_url: "http://127.0.0.1:9090".to_owned(),
            loki_url: "http://127.0.0.1:3100".to_owned(),
            tempo_url: "http://127.0.0.1:3200".to_owned(),
            pyroscope_url: "http://127.0.0.1:4040".to_owned(),
            dashboards_dir: "/var/lib/grafana/dashboards".to_owned(),
        }
    }
}

/// `provisioning/datasources/flotilla.yml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DatasourcesFile {
    #[serde(rename = "apiVersion")]
    pub api_version: u32,
    pub datasources: Vec<Datasource>,
}

/// One datasource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Datasource {
    pub name: String,
    /// Grafana's plugin id: `prometheus`, `loki`, `tempo`, `grafana-pyroscope-datasource`.
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
    /// `proxy`: Grafana's server makes the requests, so the services need not be reachable
    /// from the browser.
    pub access: String,
    pub url: String,
    #[serde(rename = "isDefault")]
    pub is_default: bool,
    pub editable: bool,
}

/// `provisioning/dashboards/flotilla.yml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DashboardProvidersFile {
    #[serde(rename = "apiVersion")]
    pub api_version: u32,
    pub providers: Vec<DashboardProvider>,
}

/// Dashboards read from files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DashboardProvider {
    pub name: String,
    #[serde(rename = "orgId")]
    pub org_id: u32,
    pub folder: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "disableDeletion")]
    pub disable_deletion: bool,
    #[serde(rename = "allowUiUpdates")]
    pub allow_ui_updates: bool,
    #[serde(rename = "updateIntervalSeconds")]
    pub update_interval_seconds: u32,
    pub options: BTreeMap<String, String>,
}

/// A dashboard (the part of Grafana's dashboard JSON flotilla writes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    pub uid: String,
    pub title: String,
    pub tags: Vec<String>,
    pub schema_version: u32,
    pub editable: bool,
    pub refresh: String,
    pub time: TimeRange,
    pub templating: Templating,
    pub panels: Vec<Panel>,
}

/// The time range shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimeRange {
    pub from: String,
    pub to: String,
}

/// The dashboard's variables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Templating {
    pub list: Vec<Variable>,
}

/// A variable whose values come from a Prometheus query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Variable {
    pub name: String,
    pub label: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub datasource: DatasourceRef,
    /// `label_values(metric, label)`.
    pub query: String,
    pub refresh: u32,
}

/// A panel's datasource, by uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DatasourceRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
}

/// One panel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Panel {
    pub id: u32,
    pub title: String,
    /// `stat`, `timeseries`, `logs`.
    #[serde(rename = "type")]
    pub kind: String,
    pub grid_pos: GridPos,
    pub datasource: DatasourceRef,
    pub targets: Vec<Query>,
}

/// Where a panel sits: `x` and `w` in grid columns (24 across), `y` and `h` in rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GridPos {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// A panel's query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    pub ref_id: String,
    /// PromQL or LogQL.
    pub expr: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub legend_format: String,
}

/// The four datasources.
pub fn datasources(settings: &GrafanaSettings) -> DatasourcesFile {
    let datasource = |name: &str, kind: &str, uid: &str, url: &str| Datasource {
        name: name.to_owned(),
        kind: kind.to_owned(),
        uid: uid.to_owned(),
        access: "proxy".to_owned(),
        url: url.to_owned(),
        is_default: uid == PROMETHEUS_UID,
        editable: false,
    };
    DatasourcesFile {
        api_version: 1,
        datasources: vec![
            datasource("Prometheus", "prometheus", PROMETHEUS_UID, &settings.prometheus_url),
            datasource("Loki", "loki", LOKI_UID, &settings.loki_url),
            datasource("Tempo", "tempo", TEMPO_UID, &settings.tempo_url),
            datasource(
                "Pyroscope",
                "grafana-pyroscope-datasource",
                PYROSCOPE_UID,
                &settings.pyroscope_url,
            ),
        ],
    }
}

/// The provider that loads every dashboard in `settings.dashboards_dir` into the folder
/// `flotilla`.
pub fn dashboard_providers(settings: &GrafanaSettings) -> DashboardProvidersFile {
    DashboardProvidersFile {
        api_version: 1,
        providers: vec![DashboardProvider {
            name: "flotilla".to_owned(),
            org_id: 1,
            folder: "flotilla".to_owned(),
            kind: "file".to_owned(),
            disable_deletion: true,
            allow_ui_updates: false,
            update_interval_seconds: 30,
            options: BTreeMap::from([("path".to_owned(), settings.dashboards_dir.clone())]),
        }],
    }
}

/// flotilla's own dashboard (see the module's documentation).
pub fn fleet_dashboard() -> Dashboard {
    let prometheus =
        || DatasourceRef { kind: "prometheus".to_owned(), uid: PROMETHEUS_UID.to_owned() };
    let loki = || DatasourceRef { kind: "loki".to_owned(), uid: LOKI_UID.to_owned() };
    let agent = "job=\"flotilla_agent\", deployment=\"$deployment\"";
    let mut panels = Vec::new();
    let mut add = |title: &str, kind: &str, (x, y, w, h), datasource, queries: &[(&str, &str)]| {
        let targets = queries
            .iter()
            .zip('A'..='Z')
            .map(|((expr, legend), ref_id)| Query {
                ref_id: ref_id.to_string(),
                expr: (*expr).to_owned(),
                legend_format: (*legend).to_owned(),
            })
            .collect();
        panels.push(Panel {
            id: panels.len() as u32 + 1,
            title: title.to_owned(),
            kind: kind.to_owned(),
            grid_pos: GridPos { x, y, w, h },
            datasource,
            targets,
        });
    };
    add("Machines up", "stat", (0, 0, 6, 4), prometheus(), &[(&format!("sum(up{{{agent}}})"), "")]);
    add(
        "Binaries healthy",
        "stat",
        (6, 0, 6, 4),
        prometheus(),
        &[(&format!("sum(flotilla_binary_health_state{{{agent}, state=\"healthy\"}})"), "")],
    );
    add(
        "Failed rollouts",
        "stat",
        (12, 0, 6, 4),
        prometheus(),
        &[(&format!("sum(flotilla_rollout_failed{{{agent}}})"), "")],
    );
    add(
        "Log lines dropped (1h)",
        "stat",
        (18, 0, 6, 4),
        prometheus(),
        &[(&format!("sum(increase(flotilla_loki_lines_dropped_total{{{agent}}}[1h]))"), "")],
    );
    add(
        "Binary state",
        "timeseries",
        (0, 4, 12, 8),
        prometheus(),
        &[(&format!("sum by (state) (flotilla_binary_health_state{{{agent}}})"), "{{state}}")],
    );
    add(
        "Machines by version",
        "timeseries",
        (12, 4, 12, 8),
        prometheus(),
        &[(
            &format!("count by (version) (flotilla_binary_version_info{{{agent}}})"),
            "{{version}}",
        )],
    );
    add(
        "Restarts (5m)",
        "timeseries",
        (0, 12, 12, 8),
        prometheus(),
        &[(
            &format!("sum by (name) (increase(flotilla_binary_restarts_total{{{agent}}}[5m]))"),
            "{{name}}",
        )],
    );
    add(
        "Interruption notices (1h)",
        "timeseries",
        (12, 12, 12, 8),
        prometheus(),
        &[(
            &format!(
                "sum by (kind) (increase(flotilla_interruption_notices_total{{{agent}}}[1h]))"
            ),
            "{{kind}}",
        )],
    );
    add(
        "GPU utilization",
        "timeseries",
        (0, 20, 24, 8),
        prometheus(),
        &[(&format!("flotilla_gpu_utilization_ratio{{{agent}}}"), "{{name}} GPU {{gpu}}")],
    );
    add(
        "Lifecycle events",
        "logs",
        (0, 28, 24, 10),
        loki(),
        &[("{deployment=\"$deployment\"} |= \"[flotilla-agent] \"", "")],
    );
    Dashboard {
        uid: DASHBOARD_UID.to_owned(),
        title: "flotilla fleet".to_owned(),
        tags: vec!["flotilla".to_owned()],
        schema_version: SCHEMA_VERSION,
        editable: false,
        refresh: "30s".to_owned(),
        time: TimeRange { from: "now-6h".to_owned(), to: "now".to_owned() },
        templating: Templating {
            list: vec![Variable {
                name: "deployment".to_owned(),
                label: "Deployment".to_owned(),
                kind: "query".to_owned(),
                datasource: prometheus(),
                query: "label_values(flotilla_agent_uptime_seconds, deployment)".to_owned(),
                refresh: 2,
            }],
        },
        panels,
    }
}

/// The datasources file's text (YAML).
pub fn render_datasources(file: &DatasourcesFile) -> String {
    format!("# Written by flotilla.\n{}", super::yaml::to_yaml(file))
}

/// The dashboard providers file's text (YAML).
pub fn render_dashboard_providers(file: &DashboardProvidersFile) -> String {
    format!("# Written by flotilla.\n{}", super::yaml::to_yaml(file))
}

/// A dashboard's JSON.
pub fn render_dashboard(dashboard: &Dashboard) -> String {
    let mut text = serde_json::to_string_pretty(dashboard).expect("a dashboard serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn panels_name_provisioned_datasources_and_tile_the_grid_without_overlap() {
        let datasources = datasources(&GrafanaSettings::default());
        let uids: BTreeSet<(&str, &str)> =
            datasources.datasources.iter().map(|d| (d.kind.as_str(), d.uid.as_str())).collect();
        assert_eq!(uids.len(), 4);
        assert_eq!(datasources.datasources.iter().filter(|d| d.is_default).count(), 1);
        let dashboard = fleet_dashboard();
        let mut ids = BTreeSet::new();
        let mut cells = BTreeSet::new();
        for panel in &dashboard.panels {
            assert!(ids.insert(panel.id), "panel id {} twice", panel.id);
            let source = (panel.datasource.kind.as_str(), panel.datasource.uid.as_str());
            assert!(uids.contains(&source), "{}: {source:?} is not provisioned", panel.title);
            assert!(!panel.targets.is_empty(), "{}", panel.title);
            let GridPos { x, y, w, h } = panel.grid_pos;
            assert!(
                w > 0 && h > 0 && x + w <= GRID_COLUMNS,
                "{}: {:?}",
                panel.title,
                panel.grid_pos
            );
            for column in x..x + w {
                for row in y..y + h {
                    assert!(cells.insert((column, row)), "{} overlaps another panel", panel.title);
                }
            }
        }
        let variable = &dashboard.templating.list[0];
        assert!(
            uids.contains(&(variable.datasource.kind.as_str(), variable.datasource.uid.as_str()))
        );
        let json: serde_json::Value = serde_json::from_str(&render_dashboard(&dashboard)).unwrap();
        assert_eq!(json["uid"], DASHBOARD_UID);
        assert_eq!(json["panels"][0]["gridPos"]["w"], 6);
        assert_eq!(json["panels"][0]["targets"][0]["refId"], "A");
        assert_eq!(json["schemaVersion"], SCHEMA_VERSION);
    }

    #[test]
    fn provisioning_files_have_grafanas_keys() {
        let settings = GrafanaSettings::default();
        let text = render_datasources(&datasources(&settings));
        assert!(
            text.contains(
                "\napiVersion: 1\ndatasources:\n- name: \"Prometheus\"\n  type: \"prometheus\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("  isDefault: true\n"), "{text}");
        let text = render_dashboard_providers(&dashboard_providers(&settings));
        assert!(text.contains("  options:\n    path: \"/var/lib/grafana/dashboards\"\n"), "{text}");
        assert!(text.contains("  type: \"file\"\n"), "{text}");
    }
}
