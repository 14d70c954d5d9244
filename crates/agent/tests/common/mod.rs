//! Shared helpers of the agent's integration tests: a deployment (CA, identity bundle,
//! bootstrap config) in a temporary directory, versions built from shell scripts and served as
//! `file://` artifacts, an mTLS client, and waits that poll until a deadline.
//!
//! Each test uses its own 127.200.x.y address (the agent's API on 7443, metrics on 9101), so
//! tests run in parallel without sharing ports.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flotilla_agent::{AgentHandle, Fetchers};
use flotilla_core::pki::{CertificateAuthority, IssuedCert, client_config};
use flotilla_spec::api::{AgentStatus, Rollout};
use flotilla_spec::bootstrap::AgentBootstrap;
use flotilla_spec::identity::IdentityBundle;
use flotilla_spec::manifest::{Artifact, Manifest};
use flotilla_spec::{HealthCheck, RestartPolicy, RestartSpec};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// How long a test waits for something that should happen within a few seconds.
pub const WAIT: Duration = Duration::from_secs(20);

/// An idle binary that exits cleanly on SIGTERM.
pub const IDLE: &str = r#"trap 'echo "got SIGTERM"; exit 0' TERM
sleep 100000 &
wait $!
"#;

pub struct Deployment {
    pub temp: tempfile::TempDir,
    pub address: IpAddr,
    pub tag: String,
    pub name: String,
    pub ca: CertificateAuthority,
    pub client_cert: IssuedCert,
    pub identity_path: PathBuf,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    published: AtomicU32,
}

impl Deployment {
    /// A deployment whose single machine listens on `address`; its identity bundle is written.
    pub fn new(address: &str) -> Deployment {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let address: IpAddr = address.parse().expect("a test address");
        let tag = "t1".to_owned();
        let ca = CertificateAuthority::generate(&tag).expect("a CA");
        let client_cert = ca.issue_client(&tag).expect("a client certificate");
        let tls = client_config(ca.cert_pem(), &client_cert).expect("a client TLS config");
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTPS client");
        let deployment = Deployment {
            identity_path: temp.path().join("identity.json"),
            dir: temp.path().join("instance"),
            temp,
            address,
            tag,
            name: "node-0".to_owned(),
            ca,
            client_cert,
            http,
            published: AtomicU32::new(0),
        };
        deployment.write_identity(&deployment.identity_bundle());
        deployment
    }

    pub fn identity_bundle(&self) -> IdentityBundle {
        let agent = self.ca.issue_agent(&self.name, &self.tag, &[self.address]).expect("a cert");
        IdentityBundle {
            name: self.name.clone(),
            tag: self.tag.clone(),
            region: "local".to_owned(),
            public_ip: self.address,
            private_ip: self.address,
            ca_cert: self.ca.cert_pem().to_owned(),
            cert: agent.cert_pem,
            key: agent.key_pem,
        }
    }

    pub fn write_identity(&self, bundle: &IdentityBundle) {
        let json = serde_json::to_vec(bundle).expect("a bundle serializes");
        fs_err::write(&self.identity_path, json).expect("the identity is written");
    }

    /// The bootstrap config: 1 s stop grace, 5 s identity timeout, and `extra` keys on top.
    pub fn bootstrap_with(&self, extra: serde_json::Value) -> AgentBootstrap {
        let mut json = serde_json::json!({
            "tag": self.tag,
            "dir": self.dir,
            "listen": self.address,
            "identity": format!("file://{}", self.identity_path.display()),
            "identity_timeout": "5s",
            "stop_grace": "1s",
        });
        for (key, value) in extra.as_object().expect("extra keys are an object") {
            json[key] = value.clone();
        }
        AgentBootstrap::parse(&json.to_string(), "test bootstrap").expect("a valid bootstrap")
    }

    pub fn bootstrap(&self) -> AgentBootstrap {
        self.bootstrap_with(serde_json::json!({}))
    }

    pub async fn start(&self) -> AgentHandle {
        self.start_with(self.bootstrap()).await
    }

    pub async fn start_with(&self, bootstrap: AgentBootstrap) -> AgentHandle {
        flotilla_agent::start(bootstrap, Fetchers::default()).await.expect("the agent starts")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:7443{path}", self.address)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}:9101{path}", self.address)
    }

    /// The metrics page (plain HTTP).
    pub async fn metrics(&self) -> String {
        let response =
            self.http.get(self.metrics_url("/metrics")).send().await.expect("metrics answer");
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("a body")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self.http.get(self.url(path)).send().await.expect("the API answers");
        let status = response.status();
        (status, response.text().await.expect("a body"))
    }

    pub async fn status(&self) -> AgentStatus {
        let (code, body) = self.get("/v1/status").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        serde_json::from_str(&body).expect("an AgentStatus")
    }

    pub async fn apply(&self, manifest: &Manifest) -> (StatusCode, serde_json::Value) {
        let response = self
            .http
            .put(self.url("/v1/manifest"))
            .json(manifest)
            .send()
            .await
            .expect("the API answers");
        let status = response.status();
        (status, response.json().await.expect("a JSON answer"))
    }

    pub async fn post(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let response = self.http.post(self.url(path)).send().await.expect("the API answers");
        let status = response.status();
        (status, response.json().await.expect("a JSON answer"))
    }

    pub async fn logs(&self, lines: usize) -> String {
        let (code, body) = self.get(&format!("/v1/logs?lines={lines}")).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        body
    }

    /// Polls the status until `done` holds; panics with the last status after [`WAIT`].
    pub async fn wait_for(&self, what: &str, done: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "waited {WAIT:?} for {what}; last status: {status:#?}\nlog:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the binary of `version` is healthy; returns its status.
    pub async fn wait_healthy(&self, manifest: &Manifest) -> AgentStatus {
        let version = manifest.version();
        self.wait_for("the version to be healthy", |status| {
            status.version.as_deref() == Some(version.as_str())
                && status.state == flotilla_spec::api::BinaryState::Healthy
                && status.pid.is_some()
        })
        .await
    }

    /// Waits until the last rollout is done; returns it.
    pub async fn wait_rollout_done(&self, manifest: &Manifest) -> Rollout {
        let version = manifest.version();
        let status = self
            .wait_for("the rollout to finish", |status| {
                status.rollout.as_ref().is_some_and(|rollout| {
                    rollout.version == version
                        && rollout.hosts.as_deref() == Some(manifest.hosts_version().as_str())
                        && rollout.phase.is_done()
                })
            })
            .await;
        status.rollout.expect("a rollout")
    }

    /// Applies `manifest` and waits until it is installed and healthy.
    pub async fn install(&self, manifest: &Manifest) -> AgentStatus {
        let (code, answer) = self.apply(manifest).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
        let rollout = self.wait_rollout_done(manifest).await;
        assert_eq!(rollout.phase, flotilla_spec::api::RolloutPhase::Healthy, "{rollout:#?}");
        self.wait_healthy(manifest).await
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn log_text(&self) -> String {
        fs_err::read_to_string(self.dir.join("logs/binary.log")).unwrap_or_default()
    }

    /// Writes one artifact (`content` as file `name`) to a new directory and names it with a
    /// `file://` URL.
    pub fn publish_file(&self, name: &str, content: &str) -> Artifact {
        publish_into(&self.artifact_dir(), name, content)
    }

    /// A new directory for artifacts.
    fn artifact_dir(&self) -> PathBuf {
        let n = self.published.fetch_add(1, Ordering::SeqCst);
        let directory = self.temp.path().join(format!("artifacts/{n}"));
        fs_err::create_dir_all(&directory).expect("an artifact directory");
        directory
    }

    /// Writes `version`'s artifacts to a new directory and returns a manifest that names them
    /// with `file://` URLs.
    pub fn publish(&self, version: &Version) -> Manifest {
        let directory = self.artifact_dir();
        let artifact = |name: &str, content: &str| publish_into(&directory, name, content);
        Manifest {
            binary: Some(artifact("binary", &format!("#!/bin/sh\n{}", version.script))),
            config: Some(artifact("config.conf", &version.config)),
            hosts: artifact("hosts.yaml", &version.hosts),
            args: version.args.clone(),
            env: version.env.clone(),
            health: version.health.clone(),
            restart: version.restart,
            health_deadline: version.health_deadline,
            boot: version.boot.clone(),
            lifecycle: None,
            keepalive: None,
            on_hosts_change: version.on_hosts_change,
            services: Vec::new(),
            disks: Vec::new(),
        }
    }
}

/// Writes `content` as `directory/name` and names it with a `file://` URL.
fn publish_into(directory: &Path, name: &str, content: &str) -> Artifact {
    let path = directory.join(name);
    fs_err::write(&path, content).expect("an artifact is written");
    Artifact {
        url: format!("file://{}", path.display()),
        sha256: hex::encode(Sha256::digest(content.as_bytes())),
        size: content.len() as u64,
    }
}

/// A version of the binary: a shell script and how to run it.
#[derive(Clone, Debug)]
pub struct Version {
    pub script: String,
    pub config: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub health: HealthCheck,
    pub restart: RestartSpec,
    pub health_deadline: Duration,
    /// What the agent does before the binary starts.
    pub boot: flotilla_spec::account::BootSpec,
    /// hosts.yaml's content (not part of the version).
    pub hosts: String,
    pub on_hosts_change: flotilla_spec::fleet::OnHostsChange,
}

impl Version {
    /// `script` after `#!/bin/sh`; health `none`, restart always with 100 ms … 1 s backoff,
    /// 15 s health deadline.
    pub fn script(script: &str) -> Version {
        Version {
            script: script.to_owned(),
            config: "setting = 1\n".to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            health: HealthCheck::None,
            restart: RestartSpec {
                policy: RestartPolicy::Always,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
            },
            health_deadline: Duration::from_secs(15),
            boot: Default::default(),
            hosts: "hosts: []\n".to_owned(),
            on_hosts_change: Default::default(),
        }
    }
}

/// Whether `pid` is a live process (a zombie has ended: it does not count).
pub fn process_alive(pid: u32) -> bool {
    match fs_err::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

/// Polls `check` every 50 ms until it holds; panics after [`WAIT`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        if tokio::time::Instant::now() >= deadline {
            panic!("waited {WAIT:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a pid a script wrote to `path`, waiting for it to appear.
pub async fn read_pid(path: &Path) -> u32 {
    let mut pid = None;
    wait_until(&format!("{} to hold a pid", path.display()), || {
        pid = fs_err::read_to_string(path).ok().and_then(|text| text.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.expect("a pid was read")
}

pub fn mode(path: &Path) -> u32 {
    fs_err::metadata(path).expect("the path exists").permissions().mode() & 0o777
}

pub fn kill(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("the signal is sent");
}

/// The `agent_process` example beside this test binary (`target/<profile>/deps/..`): the agent
/// as its own process, entered through `flotilla_agent::run` as the CLI does.
pub fn agent_process_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let binary = profile_dir.join("examples").join("agent_process");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p flotilla-agent --examples` \
         (cargo test and cargo nextest build it with the tests)",
        binary.display()
    );
    binary
}

/// Starts the agent process on `bootstrap`, with `args` after it; its stderr goes to
/// [`agent_stderr`]. It runs under `setpriv --pdeathsig KILL` (util-linux, as the agent itself
/// uses for binaries), so a test that fails part-way leaves no agent holding its address.
pub fn spawn_agent_process(deployment: &Deployment, bootstrap: &Path, args: &[&str]) -> Child {
    let stderr = fs_err::File::create(deployment.temp.path().join("agent-stderr.txt"))
        .expect("a file for the agent's stderr");
    Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(agent_process_binary())
        .arg(bootstrap)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.into_parts().0))
        .spawn()
        .expect("the agent process starts under setpriv (util-linux: apt-get install util-linux)")
}

/// What the agent process wrote to stderr so far.
pub fn agent_stderr(deployment: &Deployment) -> String {
    fs_err::read_to_string(deployment.temp.path().join("agent-stderr.txt")).unwrap_or_default()
}

/// Waits until the agent process answers `Status`; panics if it ends or after [`WAIT`].
pub async fn wait_for_api(deployment: &Deployment, agent: &mut Child) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if deployment.http.get(deployment.url("/v1/status")).send().await.is_ok() {
            return;
        }
        if let Some(exit) = agent.try_wait().expect("the agent process can be waited for") {
            panic!("the agent process ended ({exit}): {}", agent_stderr(deployment));
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("the agent process did not serve in time: {}", agent_stderr(deployment));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `process` exits; panics after [`WAIT`].
pub async fn wait_for_exit(process: &mut Child) -> ExitStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(exit) = process.try_wait().expect("the process can be waited for") {
            return exit;
        }
        assert!(tokio::time::Instant::now() < deadline, "the process did not exit in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a bootstrap config for the agent process (stop grace 2 s, `extra` keys on top) to
/// `bootstrap.json` in the deployment's directory and returns its path.
pub fn write_bootstrap(deployment: &Deployment, extra: serde_json::Value) -> PathBuf {
    let path = deployment.temp.path().join("bootstrap.json");
    let mut json = serde_json::json!({
        "tag": deployment.tag,
        "dir": deployment.dir,
        "listen": deployment.address,
        "identity": deployment.identity_path,
        "stop_grace": "2s",
    });
    for (key, value) in extra.as_object().expect("extra keys are an object") {
        json[key] = value.clone();
    }
    fs_err::write(&path, json.to_string()).expect("the bootstrap config is written");
    path
}
