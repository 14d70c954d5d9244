//! A manifest: one version of what a machine runs, as the deployer sends it to the agent.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::account::BootSpec;
use crate::fleet::{HealthCheck, OnHostsChange, RestartSpec};
use crate::fleetd::FleetdConfig;

/// An artifact the agent downloads and verifies before it uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Where to fetch it: `file://` (local provider) or `s3://bucket/key` (AWS).
    pub url: String,
    /// Lower-case hex SHA-256 of the content; the agent refuses anything else.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// What one machine runs: the binary, its config and hosts.yaml, and how to run them.
///
/// hosts.yaml is not part of the version ([`Manifest::version`]): a manifest that differs from
/// the installed one only in `hosts` is a hosts-only change, which the agent applies in place as
/// `on_hosts_change` says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub binary: Artifact,
    /// Lands as `config.conf`.
    pub config: Artifact,
    /// Lands as `hosts.yaml`, one file per machine that every version reads, swapped in place.
    pub hosts: Artifact,
    /// What the agent does when only `hosts` changes.
    #[serde(default, skip_serializing_if = "OnHostsChange::is_default")]
    pub on_hosts_change: OnHostsChange,
    /// Arguments after `--hosts=… --config=…`.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub health: HealthCheck,
    #[serde(default)]
    pub restart: RestartSpec,
    /// How long the new version has to become healthy before the agent rolls back.
    #[serde(with = "crate::duration_serde")]
    #[schemars(with = "crate::duration_serde::DurationText")]
    pub health_deadline: Duration,
    /// What the agent does before the binary starts: files, kernel settings, packages and
    /// commands (see [`BootSpec`]).
    #[serde(default, skip_serializing_if = "BootSpec::is_default")]
    pub boot: BootSpec,
    /// The instance entry's `lifecycle:` (an ec2fleetd config), with the macro values only the
    /// deployer knows. Absent when the entry has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<ManifestLifecycle>,
    /// The entry's `keepalive`: once the agent has heard nothing from the deployment's CLI for
    /// this long, it stops the binary and powers the machine off. Absent: never.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration_serde::option"
    )]
    #[schemars(with = "Option<crate::duration_serde::DurationText>")]
    pub keepalive: Option<Duration>,
}

/// A machine's lifecycle as the agent receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestLifecycle {
    /// The ec2fleetd config, decoded and checked by the deployer.
    #[schemars(with = "serde_json::Value")]
    pub config: FleetdConfig,
    /// The machine's name (`{name}`).
    pub name: String,
    /// The machine's index in its entry (`{instance_index}`, `{ami-i}`): `node-3` → 3.
    pub instance_index: u32,
}

impl Manifest {
    /// The version id: SHA-256 (hex) over what the binary is and how it runs (the binary's and
    /// the config's digests, args, env, health and restart policy, boot additions, lifecycle,
    /// keepalive). URLs and the deadline do not count, so the same content served from another
    /// place is the same version, and applying it again is a no-op. hosts.yaml does not count
    /// either: membership changes are [`Manifest::hosts_version`]'s, applied in place.
    pub fn version(&self) -> String {
        #[derive(Serialize)]
        struct Content<'a> {
            binary: &'a str,
            config: &'a str,
            args: &'a [String],
            env: &'a BTreeMap<String, String>,
            health: &'a HealthCheck,
            restart: &'a RestartSpec,
            // Left out when there is nothing to do at boot, so a manifest without boot
            // additions keeps the version it had before they existed.
            #[serde(skip_serializing_if = "BootSpec::is_default")]
            boot: &'a BootSpec,
            // Likewise left out without a lifecycle.
            #[serde(skip_serializing_if = "Option::is_none")]
            lifecycle: Option<&'a ManifestLifecycle>,
            // Likewise left out without a keepalive (seconds).
            #[serde(skip_serializing_if = "Option::is_none")]
            keepalive: Option<u64>,
        }
        let content = Content {
            binary: &self.binary.sha256,
            config: &self.config.sha256,
            args: &self.args,
            env: &self.env,
            health: &self.health,
            restart: &self.restart,
            boot: &self.boot,
            lifecycle: self.lifecycle.as_ref(),
            keepalive: self.keepalive.map(|k| k.as_secs()),
        };
        let json = serde_json::to_vec(&content).expect("a struct of strings serializes to JSON");
        hex::encode(Sha256::digest(&json))
    }
}

impl Manifest {
    /// The hosts file's version: its SHA-256, shown apart from [`Manifest::version`].
    pub fn hosts_version(&self) -> &str {
        &self.hosts.sha256
    }
}

/// The first 12 hex digits of a version id, for tables and messages.
pub fn short_version(version: &str) -> &str {
    &version[..version.len().min(12)]
}

/// Checks that `digest` looks like a lower-case hex SHA-256.
pub fn is_sha256_hex(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(url: &str, sha: char) -> Artifact {
        Artifact { url: url.into(), sha256: sha.to_string().repeat(64), size: 1 }
    }

    fn manifest() -> Manifest {
        Manifest {
            binary: artifact("file:///a", 'a'),
            config: artifact("file:///b", 'b'),
            hosts: artifact("file:///c", 'c'),
            args: vec![],
            env: BTreeMap::new(),
            health: HealthCheck::None,
            restart: RestartSpec::default(),
            health_deadline: Duration::from_secs(60),
            boot: Default::default(),
            lifecycle: None,
            keepalive: None,
            on_hosts_change: OnHostsChange::Restart,
        }
    }

    #[test]
    fn hosts_are_not_part_of_the_version() {
        let a = manifest();
        let mut b = manifest();
        b.hosts.sha256 = "e".repeat(64);
        b.on_hosts_change = OnHostsChange::None;
        assert_eq!(a.version(), b.version(), "a hosts-only change keeps the version");
        assert_ne!(a.hosts_version(), b.hosts_version());
    }

    #[test]
    fn version_ignores_urls_and_deadline_but_not_content() {
        let a = manifest();
        let mut b = manifest();
        b.binary.url = "s3://bucket/x".into();
        b.health_deadline = Duration::from_secs(5);
        assert_eq!(a.version(), b.version());
        b.config.sha256 = "d".repeat(64);
        assert_ne!(a.version(), b.version());
        let mut c = manifest();
        c.args.push("--fast".into());
        assert_ne!(a.version(), c.version());
    }

    #[test]
    fn a_lifecycle_counts_in_the_version_only_when_present() {
        let a = manifest();
        let before = a.version();
        let mut b = manifest();
        let config = crate::fleetd::parse_fleetd_config(
            r#"{domains: {d: {exec: [{on: ["started"], lines: [{argv: ["echo", "{name}"]}]}]}}}"#,
            std::path::Path::new("c.json5"),
        )
        .unwrap()
        .config;
        b.lifecycle = Some(ManifestLifecycle { config, name: "node-3".into(), instance_index: 3 });
        assert_ne!(b.version(), before);
        assert_eq!(a.version(), before);
        let json = serde_json::to_string(&b).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn round_trips_through_json() {
        let m = manifest();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""health_deadline":"1m""#), "{json}");
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
