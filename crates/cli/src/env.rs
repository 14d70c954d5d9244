//! Every environment variable the `flotilla` command reads, in one place.
//!
//! They are read once, at start, into [`Environment`]; the libraries get the values as
//! arguments and read no environment themselves. The AWS SDK's own chain (`AWS_PROFILE`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …) is aws-config's and documented by AWS; `RUST_LOG`
//! is tracing's filter.

use std::ffi::OsString;
use std::path::PathBuf;

/// The state directory (default `~/.flotilla`).
pub const FLOTILLA_HOME: &str = flotilla_core::state::HOME_ENV;
/// The user's home, under which the default state directory lives.
pub const HOME: &str = "HOME";
/// Where the local provider leases loopback address blocks, machine-wide (default
/// `/tmp/flotilla-<uid>/leases`).
pub const LEASE_DIR: &str = flotilla_local::lease::LEASE_DIR_ENV;
/// An endpoint standing in for AWS (the emulator); S3 then uses path-style addressing.
pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
/// The emulator's address map: the only addresses its machines may have (printed by
/// `flotilla-emulator up`).
pub const EMULATOR_PUBLIC_IPS: &str = "FLOTILLA_EMULATOR_PUBLIC_IPS";
/// Where `create` and `authorize` ask this machine's public address when `--ip` is absent.
pub const IP_DISCOVERY_URL: &str = "FLOTILLA_IP_DISCOVERY_URL";
/// A Linux arm64 build of flotilla, the agent of arm64 machines when this one is not arm64.
pub const AGENT_ARM64: &str = "FLOTILLA_AGENT_ARM64";
/// A Linux x86_64 build of flotilla, the agent of x86_64 machines when this one is not.
pub const AGENT_X86_64: &str = "FLOTILLA_AGENT_X86_64";
/// The log filter; overrides `-v`.
pub const RUST_LOG: &str = "RUST_LOG";
/// `flotilla fleetd`: the state directory systemd made for the unit (`StateDirectory=`), where
/// fleetd keeps its holds.
pub const STATE_DIRECTORY: &str = "STATE_DIRECTORY";
/// For crash tests only: a checkpoint (`flotilla_core::progress::checkpoints`) at which the
/// command kills itself with SIGKILL, as a crash or a `kill -9` would, so that tests choose the
/// moment by what the command has done rather than by a delay. Not for users.
pub const TEST_HALT_AT: &str = "FLOTILLA_TEST_HALT_AT";
/// For tests only: how long each capacity group's AWS launch may look for capacity (a duration
/// such as `20s`), instead of 10 minutes, so that a test of capacity that never comes ends
/// soon. Not for users.
pub const TEST_LAUNCH_DEADLINE: &str = "FLOTILLA_TEST_LAUNCH_DEADLINE";
/// For tests only: how long agents have to answer once their machines run (a duration such as
/// `8s`), instead of 1 minute locally and 15 minutes on AWS, so that a test of an agent that
/// never answers ends soon. Not for users.
pub const TEST_AGENT_TIMEOUT: &str = "FLOTILLA_TEST_AGENT_TIMEOUT";

/// Where the local provider looks for the monitoring programs (Prometheus, node exporter): the
/// local machines are this host, so they have what it has.
pub const PATH: &str = "PATH";

/// The values of the variables above, as this process started with them. An empty value counts
/// as unset.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    pub flotilla_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub lease_dir: Option<PathBuf>,
    pub aws_endpoint_url: Option<String>,
    pub emulator_public_ips: Option<String>,
    pub ip_discovery_url: Option<String>,
    pub agent_arm64: Option<PathBuf>,
    pub agent_x86_64: Option<PathBuf>,
    pub halt_at: Option<String>,
    /// [`TEST_LAUNCH_DEADLINE`], when it parses as a duration.
    pub launch_deadline: Option<std::time::Duration>,
    /// [`TEST_AGENT_TIMEOUT`], when it parses as a duration.
    pub agent_timeout: Option<std::time::Duration>,
    pub path: Option<OsString>,
}

fn value(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

fn text(name: &str) -> Option<String> {
    value(name).map(|value| value.to_string_lossy().into_owned())
}

impl Environment {
    /// Reads every variable of this module once.
    pub fn from_process() -> Environment {
        Environment {
            flotilla_home: value(FLOTILLA_HOME).map(PathBuf::from),
            home: value(HOME).map(PathBuf::from),
            lease_dir: value(LEASE_DIR).map(PathBuf::from),
            aws_endpoint_url: text(AWS_ENDPOINT_URL),
            emulator_public_ips: text(EMULATOR_PUBLIC_IPS),
            ip_discovery_url: text(IP_DISCOVERY_URL),
            agent_arm64: value(AGENT_ARM64).map(PathBuf::from),
            agent_x86_64: value(AGENT_X86_64).map(PathBuf::from),
            halt_at: text(TEST_HALT_AT),
            launch_deadline: text(TEST_LAUNCH_DEADLINE)
                .and_then(|value| humantime::parse_duration(&value).ok()),
            agent_timeout: text(TEST_AGENT_TIMEOUT)
                .and_then(|value| humantime::parse_duration(&value).ok()),
            path: value(PATH),
        }
    }

    /// The state directory these variables name.
    pub fn home(&self) -> Result<flotilla_core::state::Home, flotilla_core::state::StateError> {
        flotilla_core::state::Home::resolve(self.flotilla_home.as_deref(), self.home.as_deref())
    }

    /// Agent builds for other architectures, by architecture name.
    pub fn agent_builds(&self) -> std::collections::BTreeMap<String, PathBuf> {
        [("arm64", &self.agent_arm64), ("x86_64", &self.agent_x86_64)]
            .into_iter()
            .filter_map(|(architecture, path)| Some((architecture.to_owned(), path.clone()?)))
            .collect()
    }

    /// The first of `names` found as an executable file in a directory of [`PATH`].
    pub fn find_program(&self, names: &[&str]) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path.as_ref()?;
        std::env::split_paths(path).find_map(|dir| {
            names.iter().map(|name| dir.join(name)).find(|candidate| {
                fs_err::metadata(candidate)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
    }

    /// The monitoring programs of local machines: what this host has installed.
    pub fn local_monitoring_tools(&self) -> flotilla_core::monitoring::services::MonitoringTools {
        use flotilla_core::monitoring::services::{MonitoringTools, Tool};
        let tool = |names: &[&str], package: &str| match self.find_program(names) {
            Some(path) => Tool::System(path.display().to_string()),
            None => Tool::Missing(format!(
                "{} is not on PATH; install it (Debian and Ubuntu: apt-get install {package})",
                names[0]
            )),
        };
        MonitoringTools {
            prometheus: tool(&["prometheus"], "prometheus"),
            node_exporter: tool(
                &["prometheus-node-exporter", "node_exporter"],
                "prometheus-node-exporter",
            ),
        }
    }

    /// The local provider's lease directory.
    pub fn lease_dir(&self) -> PathBuf {
        flotilla_local::lease::lease_dir(self.lease_dir.as_deref())
    }
}
