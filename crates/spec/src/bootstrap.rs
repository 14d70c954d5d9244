//! The agent's bootstrap config: the one file `flotilla agent --bootstrap FILE` reads at start.
//!
//! It says where the agent keeps its state, which address it serves on and where its identity
//! bundle will appear. It carries no secret: the identity (key and certificate) is a separate
//! bundle that the deployer writes after it knows the machine's addresses, in a place only that
//! machine can read. Unknown keys are refused, so a typo is an error and not a silent default.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default port of the agent's mTLS API.
pub const DEFAULT_API_PORT: u16 = 7443;
/// Default port of the agent's own Prometheus metrics (plain HTTP).
pub const DEFAULT_METRICS_PORT: u16 = 9101;
/// The longest `identity_timeout`: a day covers the slowest boot and the longest deployer
/// outage worth waiting through; an agent past it exits and its service manager decides.
pub const MAX_IDENTITY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The longest `stop_grace`: a binary that needs more than an hour to stop is killed.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);
/// How long boot packages wait for another apt or dpkg to let go of its locks, by default:
/// cloud-init and unattended-upgrades hold them for minutes on a fresh machine.
pub const DEFAULT_APT_LOCK_WAIT: Duration = Duration::from_secs(300);
/// The longest `boot.apt_lock_wait`.
pub const MAX_APT_LOCK_WAIT: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "flotilla agent bootstrap config")]
pub struct AgentBootstrap {
    /// Deployment tag this machine belongs to; an identity bundle for another tag is refused.
    pub tag: String,
    /// The instance's directory: versions, work directory, logs, agent state. Created 0700.
    pub dir: PathBuf,
    /// Address the API and metrics listen on (`0.0.0.0` on a cloud machine, its 127.x.y.z here).
    pub listen: IpAddr,
    /// Port of the mTLS API.
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// Port of the plain-HTTP metrics endpoint.
    #[serde(default = "default_metrics_port")]
    pub metrics_port: u16,
    /// Where the identity bundle is: a path, a `file://` URL, or (on AWS) an `s3://` URL. The
    /// agent waits for it to appear, up to `identity_timeout`.
    pub identity: String,
    /// How long to wait for the identity bundle before giving up, e.g. `10m`; at most `24h`.
    #[serde(default = "default_identity_timeout", with = "crate::duration_serde")]
    #[schemars(with = "crate::duration_serde::DurationText")]
    pub identity_timeout: Duration,
    /// How long the binary has to exit after SIGTERM before SIGKILL, e.g. `10s`; at most `1h`.
    #[serde(default = "default_stop_grace", with = "crate::duration_serde")]
    #[schemars(with = "crate::duration_serde::DurationText")]
    pub stop_grace: Duration,
    /// The logs the agent writes, and their rotation.
    #[serde(default)]
    pub logs: LogRotation,
    /// Where the manifest's boot additions land and which of them apply on this machine.
    #[serde(default)]
    pub boot: BootTarget,
    /// The instance metadata service the agent polls for spot interruptions, rebalance
    /// recommendations and scheduled events (`http://169.254.169.254` on EC2). Absent: no
    /// polling (bootstraps written before the agent knew IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<ImdsTarget>,
    /// The command that powers this machine off when its keepalive runs out, run after the
    /// agent stopped everything (`["/usr/bin/systemctl", "poweroff"]` on AWS, where instances
    /// are launched to terminate on shutdown). Empty: the agent only exits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub power_off: Vec<String>,
    /// Where the agent ships the binary's log (and its own lifecycle events): a Loki server's
    /// push API. Absent: the log stays on the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loki: Option<LokiTarget>,
}

/// The Loki server the agent pushes the binary's log to, and the labels only the deployer knows.
///
/// Every line is sent with the labels `deployment` (the tag), `name`, `region` (from the
/// identity), `instance_type`, `market` (from here, else from IMDS, else `unknown`) and
/// `version` (the version running when the line was written, `none` before the first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LokiTarget {
    /// The server, `http://HOST:PORT` (Loki listens on 3100); the agent posts to
    /// `/loki/api/v1/push` there.
    pub url: String,
    /// The machine's instance type. Absent: IMDS's `instance-type`, when the bootstrap names an
    /// IMDS, else `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// The machine's market (`spot`, `on-demand`, `local`). Absent: IMDS's
    /// `instance-life-cycle`, when the bootstrap names an IMDS, else `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<String>,
}

/// Where the agent finds IMDS, and whether it serves a rehearsal one itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImdsTarget {
    /// The endpoint, e.g. `http://169.254.169.254` or `http://127.100.0.2:1338`.
    pub endpoint: String,
    /// Local provider: the agent serves an emulated IMDS at `endpoint` itself, whose notices
    /// come from this file (written by `flotilla notice`), so hooks can be rehearsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal_notices: Option<PathBuf>,
}

/// Where the manifest's boot additions (`boot:` in the fleet spec) land, and which apply.
///
/// On AWS the agent runs as root on a machine of its own: files land at their paths and kernel
/// settings, packages and file owners apply. On the local provider the machine is a directory
/// on the operator's computer: files land under `<dir>/root`, and the rest is reported as not
/// applicable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootTarget {
    /// The directory boot files are placed under (the file `/etc/app.conf` lands at
    /// `<root>/etc/app.conf`): `/` on a cloud machine. Default: `<dir>/root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Whether kernel settings (`sysctl`, with the network tuning), packages and file owners
    /// apply here (true on AWS). When false they are reported as not applicable.
    #[serde(default)]
    pub system_settings: bool,
    /// What the agent runs on, as reports name it: "not applicable on <runs_on>", e.g. `the local provider`.
    #[serde(default = "default_boot_runs_on")]
    pub runs_on: String,
    /// How long boot packages wait in all for another apt or dpkg to let go of its locks,
    /// e.g. `5m` (the default); at most `1h`. The tries in between are spaced in proportion
    /// (1 s doubling to 10 s for 5 minutes; see the agent's `backoff.rs`).
    #[serde(default = "default_apt_lock_wait", with = "crate::duration_serde")]
    #[schemars(with = "crate::duration_serde::DurationText")]
    pub apt_lock_wait: Duration,
}

impl Default for BootTarget {
    fn default() -> Self {
        BootTarget {
            root: None,
            system_settings: false,
            runs_on: default_boot_runs_on(),
            apt_lock_wait: DEFAULT_APT_LOCK_WAIT,
        }
    }
}

fn default_apt_lock_wait() -> Duration {
    DEFAULT_APT_LOCK_WAIT
}

fn default_boot_runs_on() -> String {
    "this machine".to_owned()
}

/// The logs the agent writes, all rotated by size: the binary's log (`<dir>/logs/binary.log`)
/// and, with `agent_log`, the agent's own log. A file `<log>` is rotated to `<log>.1` …
/// `<log>.<keep>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogRotation {
    /// Rotate when the current file reaches this many bytes.
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept.
    #[serde(default = "default_log_keep")]
    pub keep: u32,
    /// Where the agent writes its own log (an absolute path; the file is 0600, a missing
    /// directory is created 0700), rotated like the binary's log. Without it the agent writes
    /// its log to stderr (on a cloud machine, systemd's journal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_log: Option<PathBuf>,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_bytes: default_log_max_bytes(),
            keep: default_log_keep(),
            agent_log: None,
        }
    }
}

fn default_api_port() -> u16 {
    DEFAULT_API_PORT
}
fn default_metrics_port() -> u16 {
    DEFAULT_METRICS_PORT
}
fn default_identity_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_log_max_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_log_keep() -> u32 {
    4
}

/// Why a bootstrap config was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("{path}: `{field}`: {message}")]
    Invalid { path: String, field: &'static str, message: String },
}

impl AgentBootstrap {
    /// Parses and checks a bootstrap config. `path` only names the file in errors.
    pub fn parse(text: &str, path: &str) -> Result<AgentBootstrap, BootstrapError> {
        let bootstrap: AgentBootstrap = serde_json::from_str(text)
            .map_err(|source| BootstrapError::Json { path: path.to_owned(), source })?;
        bootstrap.check(path)?;
        Ok(bootstrap)
    }

    fn check(&self, path: &str) -> Result<(), BootstrapError> {
        let invalid = |field, message: &str| BootstrapError::Invalid {
            path: path.to_owned(),
            field,
            message: message.to_owned(),
        };
        if !crate::validate::is_valid_name(&self.tag) {
            return Err(invalid("tag", "must match [A-Za-z0-9_-]+"));
        }
        if !self.dir.is_absolute() {
            return Err(invalid("dir", "must be an absolute path"));
        }
        if self.api_port == 0 || self.metrics_port == 0 {
            return Err(invalid("api_port", "ports must be between 1 and 65535"));
        }
        if self.api_port == self.metrics_port {
            return Err(invalid("metrics_port", "must differ from api_port"));
        }
        if self.identity.is_empty() {
            return Err(invalid("identity", "must name a path, file:// or s3:// URL"));
        }
        if self.identity_timeout > MAX_IDENTITY_TIMEOUT {
            return Err(invalid("identity_timeout", "must be at most 24h"));
        }
        if self.stop_grace > MAX_STOP_GRACE {
            return Err(invalid("stop_grace", "must be at most 1h"));
        }
        if self.logs.max_bytes < 4096 {
            return Err(invalid("logs", "max_bytes must be at least 4096"));
        }
        if self.logs.agent_log.as_ref().is_some_and(|path| !path.is_absolute()) {
            return Err(invalid("logs", "agent_log must be an absolute path"));
        }
        if self.boot.root.as_ref().is_some_and(|path| !path.is_absolute()) {
            return Err(invalid("boot", "root must be an absolute path"));
        }
        if self.boot.apt_lock_wait > MAX_APT_LOCK_WAIT {
            return Err(invalid("boot", "apt_lock_wait must be at most 1h"));
        }
        if let Some(imds) = &self.imds {
            let Some(authority) = imds.endpoint.strip_prefix("http://") else {
                return Err(invalid("imds", "endpoint must be an http:// URL"));
            };
            if authority.is_empty() || authority.contains('/') {
                return Err(invalid("imds", "endpoint must be http://HOST[:PORT] with no path"));
            }
            if imds.rehearsal_notices.as_ref().is_some_and(|path| !path.is_absolute()) {
                return Err(invalid("imds", "rehearsal_notices must be an absolute path"));
            }
        }
        if let Some(loki) = &self.loki {
            let Some(authority) = loki.url.strip_prefix("http://") else {
                return Err(invalid("loki", "url must be an http:// URL"));
            };
            if authority.trim_end_matches('/').is_empty()
                || authority.trim_end_matches('/').contains('/')
            {
                return Err(invalid("loki", "url must be http://HOST[:PORT] with no path"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let b = AgentBootstrap::parse(
            r#"{"tag":"t1","dir":"/tmp/x","listen":"127.1.0.1","identity":"/tmp/x/identity.json"}"#,
            "bootstrap.json",
        )
        .unwrap();
        assert_eq!(b.api_port, DEFAULT_API_PORT);
        assert_eq!(b.identity_timeout, Duration::from_secs(600));
        assert_eq!(b.logs, LogRotation::default());
        assert_eq!(b.logs.agent_log, None);
        // Without `boot`, files land under the instance directory and nothing of the system's
        // is touched.
        assert_eq!(b.boot, BootTarget::default());
        assert!(!b.boot.system_settings);
        // Without `agent_log`, the config is written as before.
        assert!(!serde_json::to_string(&b).unwrap().contains("agent_log"));
    }

    #[test]
    fn the_agents_own_log_is_an_absolute_path() {
        let parse = |logs: &str| {
            AgentBootstrap::parse(
                &format!(
                    r#"{{"tag":"t1","dir":"/x","listen":"127.1.0.1","identity":"i","logs":{logs}}}"#
                ),
                "b.json",
            )
        };
        let b = parse(r#"{"agent_log":"/x/agent.log","max_bytes":4096}"#).unwrap();
        assert_eq!(b.logs.agent_log.as_deref(), Some(std::path::Path::new("/x/agent.log")));
        assert_eq!((b.logs.max_bytes, b.logs.keep), (4096, 4));
        let err = parse(r#"{"agent_log":"agent.log"}"#).unwrap_err();
        assert_eq!(err.to_string(), "b.json: `logs`: agent_log must be an absolute path");
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        let err = AgentBootstrap::parse(
            r#"{"tag":"t1","dir":"/tmp/x","listen":"127.1.0.1","identity":"i","lisen":"x"}"#,
            "b.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
        let err = AgentBootstrap::parse(
            r#"{"tag":"t1","dir":"relative","listen":"127.1.0.1","identity":"i"}"#,
            "b.json",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "b.json: `dir`: must be an absolute path");
        let err = AgentBootstrap::parse(
            r#"{"tag":"t1","dir":"/x","listen":"not-an-ip","identity":"i"}"#,
            "b.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid IP address syntax"), "{err}");
    }

    #[test]
    fn refuses_durations_past_their_bounds() {
        let parse = |extra: &str| {
            AgentBootstrap::parse(
                &format!(
                    r#"{{"tag":"t1","dir":"/x","listen":"127.1.0.1","identity":"i",{extra}}}"#
                ),
                "b.json",
            )
        };
        let bounded = parse(r#""identity_timeout":"24h","stop_grace":"1h""#).unwrap();
        assert_eq!(bounded.identity_timeout, MAX_IDENTITY_TIMEOUT);
        assert_eq!(bounded.stop_grace, MAX_STOP_GRACE);
        for (extra, expected) in [
            (r#""identity_timeout":"24h 1s""#, "b.json: `identity_timeout`: must be at most 24h"),
            (
                r#""identity_timeout":"580000000000y""#,
                "b.json: `identity_timeout`: must be at most 24h",
            ),
            (r#""stop_grace":"1h 1ms""#, "b.json: `stop_grace`: must be at most 1h"),
            (r#""stop_grace":"300000000000y""#, "b.json: `stop_grace`: must be at most 1h"),
        ] {
            assert_eq!(parse(extra).unwrap_err().to_string(), expected, "{extra}");
        }
    }

    #[test]
    fn a_loki_target_is_an_http_server_without_a_path() {
        let parse = |extra: &str| {
            AgentBootstrap::parse(
                &format!(
                    r#"{{"tag":"t1","dir":"/x","listen":"127.1.0.1","identity":"i",{extra}}}"#
                ),
                "b.json",
            )
        };
        let bootstrap = parse(r#""loki":{"url":"http://10.0.0.5:3100","market":"spot"}"#).unwrap();
        let loki = bootstrap.loki.expect("a Loki target");
        assert_eq!(loki.url, "http://10.0.0.5:3100");
        assert_eq!((loki.instance_type, loki.market.as_deref()), (None, Some("spot")));
        for (extra, expected) in [
            (r#""loki":{"url":"https://10.0.0.5:3100"}"#, "url must be an http:// URL"),
            (r#""loki":{"url":"http://"}"#, "url must be http://HOST[:PORT] with no path"),
            (
                r#""loki":{"url":"http://10.0.0.5:3100/loki/api/v1/push"}"#,
                "url must be http://HOST[:PORT] with no path",
            ),
        ] {
            let error = parse(extra).unwrap_err().to_string();
            assert_eq!(error, format!("b.json: `loki`: {expected}"), "{extra}");
        }
        assert!(parse(r#""loki":{"url":"http://h:1","labels":{}}"#).is_err(), "unknown keys");
    }
}
