//! Test support: a fleet of the example app run through the real `flotilla` binary, with its
//! own state directory, destroyed when the test ends (pass or fail).

#![allow(dead_code)] // Each test file uses a different part of this module.
#![allow(clippy::unwrap_used)] // Test support: a failure here is a test failure.

pub mod aws;
pub mod events;
pub mod monitoring;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `flotilla` binary under test.
pub fn flotilla_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flotilla"))
}

/// The example app, built beside `flotilla` (the test command builds the whole workspace).
pub fn fleet_app_bin() -> PathBuf {
    let path = flotilla_bin().parent().expect("target dir").join("fleet-app");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p fleet-app` (scripts/test does)",
        path.display()
    );
    path
}

/// A fleet spec and a state directory of its own.
pub struct TestFleet {
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
    pub tag: String,
    pub spec: PathBuf,
}

pub struct FleetOptions {
    pub count: u32,
    pub greeting: &'static str,
    pub batch: &'static str,
    pub health_deadline: &'static str,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions { count: 3, greeting: "hello", batch: "batch_size: 2", health_deadline: "20s" }
    }
}

impl TestFleet {
    pub fn new(tag: &str, options: FleetOptions) -> TestFleet {
        let home = tempfile::tempdir().expect("temp home");
        let work = tempfile::tempdir().expect("temp work dir");
        let mut fleet = TestFleet { home, work, tag: tag.to_owned(), spec: PathBuf::new() };
        fleet.write_config("config.conf", options.greeting);
        fs_err::write(fleet.work.path().join("dashboard.json"), "{}").unwrap();
        fleet.spec = fleet.write_spec("fleet.yaml", &fleet_app_bin(), "config.conf", &options);
        fleet
    }

    pub fn write_config(&self, name: &str, greeting: &str) -> PathBuf {
        let path = self.work.path().join(name);
        fs_err::write(&path, format!("port = 9090\ngreeting = \"{greeting}\"\ninterval = 200\n"))
            .unwrap();
        path
    }

    /// Writes a spec named `name` for this fleet with `binary` and `config` (relative to the
    /// work directory, as the deployer resolves them).
    pub fn write_spec(
        &self,
        name: &str,
        binary: &Path,
        config: &str,
        options: &FleetOptions,
    ) -> PathBuf {
        let spec = format!(
            "tag: {tag}\nprovider: local\nmonitoring:\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  dashboard: dashboard.json\ninstances:\n- name: node\n  count: {count}\n  region: local\n  instance_type: t4g.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: {config}\n  profiling: false\n  health:\n    http:\n      port: 9090\n      path: /health\nports: []\nupdate:\n  {batch}\n  health_deadline: {deadline}\n",
            tag = self.tag,
            count = options.count,
            binary = binary.display(),
            batch = options.batch,
            deadline = options.health_deadline,
        );
        let path = self.work.path().join(name);
        fs_err::write(&path, spec).unwrap();
        path
    }

    /// A fleet whose spec is `spec` as written, in a work directory with `config.conf`,
    /// `dashboard.json` and the example app as `fleet-app`.
    pub fn with_spec(tag: &str, spec: &str) -> TestFleet {
        let home = tempfile::tempdir().expect("temp home");
        let work = tempfile::tempdir().expect("temp work dir");
        let mut fleet = TestFleet { home, work, tag: tag.to_owned(), spec: PathBuf::new() };
        fleet.write_config("config.conf", "hello");
        fs_err::write(fleet.work.path().join("dashboard.json"), "{}").unwrap();
        let path = fleet.work.path().join("fleet.yaml");
        fs_err::write(&path, spec.replace("{fleet_app}", &fleet_app_bin().display().to_string()))
            .unwrap();
        fleet.spec = path;
        fleet
    }

    /// A `flotilla` command with this fleet's state directory, run in the work directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(flotilla_bin());
        command
            .args(args)
            .current_dir(self.work.path())
            .env("FLOTILLA_HOME", self.home.path())
            .env_remove("RUST_LOG");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("flotilla runs")
    }

    /// Runs and requires success, showing stderr otherwise.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        succeeded(args, self.run(args))
    }

    pub fn spec_arg(&self) -> String {
        self.spec.display().to_string()
    }

    pub fn create(&self) -> Vec<Value> {
        let spec = self.spec_arg();
        let output = self.run_ok(&["create", "--config", &spec, "--output", "json"]);
        serde_json::from_slice(&output.stdout).expect("create prints JSON")
    }

    pub fn status(&self) -> Vec<Value> {
        let output = self.run(&["status", "--tag", &self.tag, "--output", "json"]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("status JSON: {e}\nstderr: {}", String::from_utf8_lossy(&output.stderr))
        })
    }

    pub fn deployment_dir(&self) -> PathBuf {
        self.home.path().join("deployments").join(&self.tag)
    }

    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.deployment_dir().join("local").join("instances").join(name)
    }

    /// The local provider's directory of this deployment: what its address leases name as
    /// their owner.
    pub fn local_root(&self) -> PathBuf {
        self.deployment_dir().join("local")
    }
}

/// The machine-wide lease directory the local provider uses in this test run.
pub fn lease_dir() -> PathBuf {
    match std::env::var_os("FLOTILLA_LEASE_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir()
            .join(format!("flotilla-{}", rustix::process::getuid().as_raw()))
            .join("leases"),
    }
}

/// The address blocks leased to `owner` (a deployment's local provider directory).
pub fn leases_of(owner: &Path) -> Vec<String> {
    let Ok(entries) = fs_err::read_dir(lease_dir()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = fs_err::read_to_string(entry.path()) else { continue };
        let Ok(record) = serde_json::from_str::<Value>(&text) else { continue };
        if record["owner"].as_str().is_some_and(|o| Path::new(o) == owner) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Every file and directory under `root` (itself included) with its mode, in path order.
pub fn modes_under(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = fs_err::symlink_metadata(&path) else { continue };
        found.push((path.clone(), metadata.permissions().mode() & 0o777));
        if metadata.is_dir() {
            for entry in fs_err::read_dir(&path).unwrap().flatten() {
                pending.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// The value of `name` in process `pid`'s environment.
pub fn environment_of(pid: u32) -> Vec<String> {
    let bytes = fs_err::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes.split(|b| *b == 0).map(|e| String::from_utf8_lossy(e).into_owned()).collect()
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        // Leave no process behind, whatever the test's outcome.
        if self.deployment_dir().join("metadata.json").exists() {
            let _ = self.run(&["destroy", "--tag", &self.tag]);
        }
    }
}

/// `output` of `flotilla args`, which must have succeeded (its stdout and stderr shown if not).
pub fn succeeded(args: &[&str], output: Output) -> Output {
    assert!(
        output.status.success(),
        "flotilla {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.0 GET, returning the body on 200.
pub fn http_get(ip: IpAddr, port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

/// Whether a process is alive (and not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match fs_err::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of processes whose working directory is under `root`.
pub fn pids_under(root: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs_err::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd"))
            && cwd.starts_with(root)
            && is_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Pids of processes whose command line contains `needle` as one argument.
pub fn pids_with_arg(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs_err::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = fs_err::read(format!("/proc/{pid}/cmdline"))
            && cmdline.split(|b| *b == 0).any(|arg| arg == needle.as_bytes())
            && is_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(path).unwrap().permissions().mode() & 0o777
}

pub fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no row {name} in {rows:?}"))
}

pub fn ip_of(row: &Value) -> IpAddr {
    row["ip"].as_str().expect("ip").parse().expect("an IP")
}

/// `flotilla` in `dir` with no way to reach an account: no credentials, and an endpoint on a
/// loopback port nothing listens on, so no request leaves this machine.
pub fn offline(dir: &Path, args: &[&str]) -> Output {
    Command::new(flotilla_bin())
        .args(args)
        .current_dir(dir)
        .env("FLOTILLA_HOME", dir.join("home"))
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        .output()
        .expect("flotilla runs")
}

/// A current-thread runtime for a test's async steps.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
}

/// The machine type of this host's architecture (the fleet app is built for it).
pub fn native_type() -> &'static str {
    if std::env::consts::ARCH == "aarch64" { "m7g.large" } else { "m7i.large" }
}

/// The monitoring machine's type of this host's architecture.
pub fn native_monitoring_type() -> &'static str {
    if std::env::consts::ARCH == "aarch64" { "t4g.small" } else { "t3.small" }
}

/// EC2 tags as a map.
pub fn tags_of(tags: &[aws_sdk_ec2::types::Tag]) -> std::collections::BTreeMap<String, String> {
    tags.iter()
        .map(|t| (t.key().unwrap_or_default().to_owned(), t.value().unwrap_or_default().to_owned()))
        .collect()
}
