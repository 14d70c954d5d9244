//! A manifest: one version of what a machine runs, as the deployer sends it to the agent.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::account::BootSpec;
use crate::disk::Filesystem;
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
    /// The user's binary. Absent on a machine that runs only services (the monitoring
    /// machine); then `config` is absent too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<Artifact>,
    /// Lands as `config.conf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Artifact>,
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
    /// The services that run beside the binary (node exporter, or on the monitoring machine
    /// Prometheus and the rest), each supervised like the binary, in this order. They are part
    /// of the version: a rollout starts them with the binary and rolls them back with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceManifest>,
    /// The entry's data disks that have a mount point, in device order: before the boot
    /// additions, the agent finds each one's volume and device, formats it when it has no
    /// filesystem and mounts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<ManifestDisk>,
}

/// A data disk the agent formats (only an empty one) and mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestDisk {
    /// The device the volume is attached at, as the launch asked (`/dev/sdf`); the agent finds
    /// the volume attached there, then the kernel's device by the volume's NVMe serial.
    pub device: String,
    /// Where it is mounted, an absolute path on the machine.
    pub mount: String,
    /// What an empty disk is formatted with.
    #[serde(default)]
    pub filesystem: Filesystem,
}

/// A service beside the binary: a program, its arguments and files, and how it is checked and
/// restarted, as for the binary. Its arguments may name the places the agent gives it:
/// `{files}` (its files in this version, read-only), `{live}` (its live files), `{data}` (its
/// data directory, kept across versions) and `{address}` (the address its health is checked
/// on: the machine's own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceManifest {
    /// `node-exporter`, `prometheus`: lower-case letters, digits and `-`.
    pub name: String,
    pub program: ServiceProgram,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files the program reads, by file name, landing in `{files}`.
    #[serde(default)]
    pub files: BTreeMap<String, Artifact>,
    /// Files that follow membership, by file name, landing in `{live}`: not part of the version
    /// but of [`Manifest::hosts_version`], swapped in place like hosts.yaml and never a reason
    /// to restart (Prometheus's target files, which it rereads by itself).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub live_files: BTreeMap<String, Artifact>,
    #[serde(default)]
    pub health: HealthCheck,
    #[serde(default)]
    pub restart: RestartSpec,
}

/// Where a service's program comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ServiceProgram {
    /// An executable the machine has (`/usr/bin/prometheus`), used as it is.
    System(String),
    /// An executable downloaded and verified like the binary.
    Artifact(Artifact),
    /// An executable of a distribution package, installed with apt before the version starts
    /// where the machine's packages are the agent's to manage (the distribution's signatures
    /// verify it; its own service unit of the package's name is masked first, so that the
    /// distribution does not start a second copy), and expected at `path` elsewhere.
    Package(PackageProgram),
}

/// A service's program from a distribution package (see [`ServiceProgram::Package`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageProgram {
    /// The Debian package: `prometheus`, `prometheus-node-exporter`.
    pub package: String,
    /// The executable it installs: `/usr/bin/prometheus`.
    pub path: String,
}

impl PackageProgram {
    /// Checks the package name as Debian policy has it: lower-case letters, digits, `+`, `-`
    /// and `.`, at least two, starting with a letter or digit.
    pub fn name_is_valid(name: &str) -> bool {
        name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')
            })
    }
}

impl ServiceManifest {
    /// Checks the name: lower-case letters, digits and `-`, starting with a letter, at most 40.
    pub fn name_is_valid(name: &str) -> bool {
        name.len() <= 40
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }
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
            // A machine without a binary has neither; `Some(d)` serializes as `d`, so a
            // manifest with a binary keeps the version it had before binaries were optional.
            binary: Option<&'a str>,
            config: Option<&'a str>,
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
            // Likewise left out without services; their files count by digest only.
            #[serde(skip_serializing_if = "Vec::is_empty")]
            services: Vec<ServiceContent<'a>>,
            // Likewise left out without disks to mount.
            #[serde(skip_serializing_if = "<[ManifestDisk]>::is_empty")]
            disks: &'a [ManifestDisk],
        }
        #[derive(Serialize)]
        struct ServiceContent<'a> {
            name: &'a str,
            program: std::borrow::Cow<'a, str>,
            args: &'a [String],
            env: &'a BTreeMap<String, String>,
            files: BTreeMap<&'a str, &'a str>,
            health: &'a HealthCheck,
            restart: &'a RestartSpec,
        }
        let services = self
            .services
            .iter()
            .map(|service| ServiceContent {
                name: &service.name,
                program: match &service.program {
                    ServiceProgram::System(path) => path.into(),
                    ServiceProgram::Artifact(artifact) => artifact.sha256.as_str().into(),
                    ServiceProgram::Package(program) => {
                        format!("package {} {}", program.package, program.path).into()
                    }
                },
                args: &service.args,
                env: &service.env,
                files: service
                    .files
                    .iter()
                    .map(|(name, file)| (name.as_str(), file.sha256.as_str()))
                    .collect(),
                health: &service.health,
                restart: &service.restart,
            })
            .collect();
        let content = Content {
            binary: self.binary.as_ref().map(|binary| binary.sha256.as_str()),
            config: self.config.as_ref().map(|config| config.sha256.as_str()),
            args: &self.args,
            env: &self.env,
            health: &self.health,
            restart: &self.restart,
            boot: &self.boot,
            lifecycle: self.lifecycle.as_ref(),
            keepalive: self.keepalive.map(|k| k.as_secs()),
            services,
            disks: &self.disks,
        };
        let json = serde_json::to_vec(&content).expect("a struct of strings serializes to JSON");
        hex::encode(Sha256::digest(&json))
    }
}

impl Manifest {
    /// The membership's version, shown apart from [`Manifest::version`]: hosts.yaml's SHA-256,
    /// or, when services have live files, the SHA-256 over it and every live file's name and
    /// digest.
    pub fn hosts_version(&self) -> String {
        let live: Vec<(&str, &str, &str)> = self
            .services
            .iter()
            .flat_map(|service| {
                service.live_files.iter().map(|(name, file)| {
                    (service.name.as_str(), name.as_str(), file.sha256.as_str())
                })
            })
            .collect();
        if live.is_empty() {
            return self.hosts.sha256.clone();
        }
        let json =
            serde_json::to_vec(&(&self.hosts.sha256, live)).expect("strings serialize to JSON");
        hex::encode(Sha256::digest(&json))
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
            binary: Some(artifact("file:///a", 'a')),
            config: Some(artifact("file:///b", 'b')),
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
            services: Vec::new(),
            disks: Vec::new(),
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
        b.binary.as_mut().unwrap().url = "s3://bucket/x".into();
        b.health_deadline = Duration::from_secs(5);
        assert_eq!(a.version(), b.version());
        b.config.as_mut().unwrap().sha256 = "d".repeat(64);
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
    fn a_version_from_before_services_and_optional_binaries_is_unchanged() {
        // The content a version was the digest of before `binary` became optional and
        // `services` existed: machines that run a binary keep their installed version.
        let m = manifest();
        let health = serde_json::to_string(&m.health).unwrap();
        let restart = serde_json::to_string(&m.restart).unwrap();
        let before = format!(
            r#"{{"binary":"{}","config":"{}","args":[],"env":{{}},"health":{health},"restart":{restart}}}"#,
            "a".repeat(64),
            "b".repeat(64)
        );
        assert_eq!(m.version(), hex::encode(Sha256::digest(before.as_bytes())));
    }

    #[test]
    fn services_count_in_the_version() {
        let a = manifest();
        let mut b = manifest();
        b.services.push(ServiceManifest {
            name: "node-exporter".into(),
            program: ServiceProgram::System("/usr/bin/prometheus-node-exporter".into()),
            args: vec!["--web.listen-address={address}:9100".into()],
            env: BTreeMap::new(),
            files: BTreeMap::new(),
            live_files: BTreeMap::new(),
            health: HealthCheck::Tcp { port: 9100 },
            restart: RestartSpec::default(),
        });
        assert_ne!(a.version(), b.version());
        let mut c = b.clone();
        c.services[0].files.insert("f".into(), artifact("file:///f", 'f'));
        assert_ne!(b.version(), c.version());
        let mut d = c.clone();
        d.services[0].files.get_mut("f").unwrap().url = "s3://elsewhere".into();
        assert_eq!(c.version(), d.version(), "a file's place does not count, its content does");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), c);
        let mut e = manifest();
        e.binary = None;
        e.config = None;
        assert_ne!(a.version(), e.version());
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
