//! `flotilla-emulator up`: starts the stack, prints its environment, runs until stopped.
//!
//! Order: state directory → Python environment (created on first use) → public-IP blocks →
//! moto (our module, the AMI catalogue) → booter and its control API → moto's price and
//! throttling tables (`tables.rs`, once it answers) → the environment, on
//! stdout as `export NAME=value` lines (and into `--env-file`, written atomically, removed at
//! start and exit so a stale one never points at a dead stack) → wait for
//! SIGINT, SIGTERM, the end of `--parent-pid`, or moto's exit → stop every instance's
//! processes, moto, release the blocks → exit 0 (non-zero only if moto died on its own).
//!
//! Everything runs on one thread: user-data scripts are started under `setpriv --pdeathsig`,
//! which fires when the *thread* that started them exits, so that thread must be the one that
//! lives as long as the process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_err::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::DirBuilderExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::addresses::PublicBlocks;
use crate::booter::{Booter, BooterConfig};
use crate::booter_api::serve_api;
use crate::env;
use crate::moto::{MODULE, Moto, MotoConfig, MotoError};
use crate::venv::{self, VenvError};

/// Everything `up` can be told.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// moto's port; 0 picks a free one.
    pub port: u16,
    /// The booter's control API port; 0 picks a free one.
    pub control_port: u16,
    /// Latency added to every AWS request (all scopes).
    pub latency: Duration,
    /// How long instances stay `pending`.
    pub pending: Duration,
    /// How long instances stay `shutting-down` (and `stopping`).
    pub shutting_down: Duration,
    /// How long EBS attachments stay `attaching` and `detaching`, and a terminated instance's
    /// volumes stay attached.
    pub volumes: crate::control::VolumeTiming,
    /// Kept after exit when given (without the instances' roots unless `keep_instances`);
    /// otherwise a fresh temporary directory, removed at exit.
    pub state_dir: Option<PathBuf>,
    /// Stop when this process is gone.
    pub parent_pid: Option<u32>,
    /// Also write the environment lines here, once ready.
    pub env_file: Option<PathBuf>,
    /// A flotilla binary instances may use instead of downloading the agent.
    pub agent_seed: Option<PathBuf>,
    /// The Python environment; default [`venv::default_dir`].
    pub venv: Option<PathBuf>,
    /// /24 blocks of loopback addresses for public IPs (254 each).
    pub public_ip_blocks: u16,
    /// SIGTERM to SIGKILL, for instances' processes.
    pub stop_grace: Duration,
    /// Keep instances' root directories at exit (they hold a copy or link of the agent, and
    /// each version a machine ran: hundreds of megabytes per test run).
    pub keep_instances: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Venv(#[from] VenvError),
    #[error(transparent)]
    Moto(#[from] MotoError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("leasing loopback address blocks for public IPs: {0}")]
    Lease(std::io::Error),
    #[error("binding the control API on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("{what} did not answer at {url} within {seconds}s")]
    NotReady { what: &'static str, url: String, seconds: u64 },
    #[error("moto exited on its own ({0}); its log is moto.log in the state directory")]
    MotoDied(String),
    #[error("handing moto the price and throttling tables: {0}")]
    Tables(String),
}

/// Runs the stack until it is told to stop.
pub fn run(options: UpOptions) -> Result<(), UpError> {
    let started = Instant::now();
    let state = StateDir::prepare(options.state_dir.as_deref())?;
    let result = run_in(&options, &state.path, started);
    if state.temporary {
        let _ = fs_err::remove_dir_all(&state.path);
    } else if !options.keep_instances {
        // Every instance's processes are stopped by now; logs of the stack itself stay.
        let instances = state.path.join("instances");
        if let Err(error) = fs_err::remove_dir_all(&instances)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing the instances' roots: {error}");
        }
    }
    result
}

fn run_in(options: &UpOptions, state: &Path, started: Instant) -> Result<(), UpError> {
    // A stale file from an earlier run must not pass for this one, before or after it.
    let _env_file = options.env_file.as_deref().map(RemovedFile::new);
    let venv_dir = options.venv.clone().unwrap_or_else(venv::default_dir);
    let python = venv::ensure(&venv_dir)?;
    let module = state.join("flotilla_moto.py");
    write(&module, MODULE.as_bytes())?;
    let amis = state.join("amis.json");
    write(&amis, crate::amis::catalogue().to_string().as_bytes())?;
    let blocks = PublicBlocks::lease(options.public_ip_blocks).map_err(UpError::Lease)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UpError::Runtime)?;
    let files = Files { python, module, amis, state: state.to_path_buf() };
    let result = runtime.block_on(serve(options, &files, &blocks, started));
    drop(runtime);
    if let Err(error) = blocks.release() {
        tracing::warn!("releasing the public-IP blocks: {error}");
    }
    result
}

#[derive(Debug)]
struct Files {
    python: PathBuf,
    module: PathBuf,
    amis: PathBuf,
    state: PathBuf,
}

async fn serve(
    options: &UpOptions,
    files: &Files,
    blocks: &PublicBlocks,
    started: Instant,
) -> Result<(), UpError> {
    let mut interrupt = signal(SignalKind::interrupt()).map_err(UpError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(UpError::Signals)?;
    let http = crate::control::http_client().map_err(UpError::Client)?;
    let mut moto = Moto::start(MotoConfig {
        python: &files.python,
        module: &files.module,
        amis: &files.amis,
        log: &files.state.join("moto.log"),
        port: options.port,
        public_blocks: blocks.prefixes(),
        latency: options.latency,
        pending: options.pending,
        shutting_down: options.shutting_down,
        volumes: options.volumes,
    })
    .await?;
    let moto_url = format!("http://127.0.0.1:{}", moto.port);
    let control_listener = tokio::net::TcpListener::bind(("127.0.0.1", options.control_port))
        .await
        .map_err(|source| UpError::Bind { port: options.control_port, source })?;
    let control_port = control_listener
        .local_addr()
        .map_err(|source| UpError::Bind { port: options.control_port, source })?
        .port();
    let control_url = format!("http://127.0.0.1:{control_port}");
    let instances_dir = files.state.join("instances");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&instances_dir)
        .map_err(|source| UpError::Io { what: "creating", path: instances_dir.clone(), source })?;
    let booter = Arc::new(Booter::new(
        BooterConfig {
            moto_url: moto_url.clone(),
            instances_dir,
            agent_seed: options.agent_seed.clone(),
            stop_grace: options.stop_grace,
            setpriv: find_program("setpriv"),
            path: std::env::var("PATH")
                .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        },
        http.clone(),
    ));
    if booter.config.setpriv.is_none() {
        tracing::warn!(
            "setpriv (util-linux) not found: instances' processes will not die with the emulator if it is killed with -9"
        );
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let poller = tokio::spawn(booter.clone().run(shutdown_rx.clone()));
    let api = tokio::spawn(serve_api(control_listener, booter.clone(), shutdown_rx));

    wait_ready(&http, "moto", &format!("{moto_url}/_flotilla/health")).await?;
    crate::tables::hand_to_moto(&http, &moto_url, &files.state.join("tables.json"))
        .await
        .map_err(UpError::Tables)?;
    wait_ready(&http, "the booter's control API", &format!("{control_url}/health")).await?;
    let lines = environment_lines(&moto_url, &control_url, &files.state, &blocks.cidrs());
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(lines.as_bytes()).and_then(|()| stdout.flush());
    drop(stdout);
    if let Some(path) = &options.env_file {
        write_atomically(path, lines.as_bytes())?;
    }
    tracing::info!(
        moto = %moto_url, control = %control_url, state = %files.state.display(),
        public_ips = blocks.address_count(), "ready in {:.1}s", started.elapsed().as_secs_f64()
    );

    let outcome = tokio::select! {
        _ = interrupt.recv() => Ok("SIGINT"),
        _ = terminate.recv() => Ok("SIGTERM"),
        () = parent_gone(options.parent_pid) => Ok("the parent process is gone"),
        status = moto.exited() => Err(UpError::MotoDied(status)),
    };
    match &outcome {
        Ok(reason) => tracing::info!("stopping ({reason})"),
        Err(error) => tracing::error!("{error}"),
    }
    let _ = shutdown.send(true);
    booter.stop_all().await;
    let _ = poller.await;
    let _ = api.await;
    moto.stop().await;
    tracing::info!("stopped");
    outcome.map(|_| ())
}

/// Resolves when `pid` no longer runs (never, without one).
async fn parent_gone(pid: Option<u32>) {
    let Some(pid) = pid else {
        return std::future::pending().await;
    };
    while flotilla_local::process::is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_ready(http: &reqwest::Client, what: &'static str, url: &str) -> Result<(), UpError> {
    const DEADLINE: Duration = Duration::from_secs(20);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answered = http.get(url).send().await.is_ok_and(|r| r.status().is_success());
        if answered {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(UpError::NotReady {
                what,
                url: url.to_owned(),
                seconds: DEADLINE.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `export NAME=value` lines a CLI or test needs.
fn environment_lines(moto_url: &str, control_url: &str, state: &Path, public_ips: &str) -> String {
    let state = state.display().to_string();
    let variables = [
        (env::AWS_ENDPOINT_URL, moto_url),
        ("AWS_ACCESS_KEY_ID", env::DEFAULT_ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", env::SECRET_ACCESS_KEY),
        ("AWS_REGION", env::DEFAULT_REGION),
        // The CLI must not ask this machine's IMDS for anything.
        ("AWS_EC2_METADATA_DISABLED", "true"),
        (env::CONTROL_URL, control_url),
        (env::STATE_DIR, state.as_str()),
        (env::PUBLIC_IPS, public_ips),
    ];
    variables
        .iter()
        .map(|(name, value)| format!("export {name}={}\n", shell_quote(value)))
        .collect()
}

/// `value`, single-quoted when the shell would otherwise split or expand it.
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./:=,@%+".contains(&b));
    if plain { value.to_owned() } else { format!("'{}'", value.replace('\'', r"'\''")) }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), UpError> {
    fs_err::write(path, bytes).map_err(|source| UpError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    })
}

/// Written beside, then renamed, so a script polling for the file never reads half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), UpError> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpError::Io { what: "writing", path, source }
    };
    fs_err::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(io(&temporary))?;
    fs_err::rename(&temporary, path).map_err(io(path))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// A file removed now and again when dropped.
#[derive(Debug)]
struct RemovedFile(PathBuf);

impl RemovedFile {
    fn new(path: &Path) -> RemovedFile {
        let _ = fs_err::remove_file(path);
        RemovedFile(path.to_path_buf())
    }
}

impl Drop for RemovedFile {
    fn drop(&mut self) {
        let _ = fs_err::remove_file(&self.0);
    }
}

/// The state directory, and whether `up` made it up (then it is removed at exit).
#[derive(Debug)]
struct StateDir {
    path: PathBuf,
    temporary: bool,
}

impl StateDir {
    fn prepare(given: Option<&Path>) -> Result<StateDir, UpError> {
        let (path, temporary) = match given {
            Some(path) => (path.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!("flotilla-emulator-{}", std::process::id())),
                true,
            ),
        };
        let io = |source| UpError::Io {
            what: "creating the state directory",
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path).map_err(io)?;
        // Canonical, because stopping compares processes' working directories with it.
        let path = fs_err::canonicalize(&path).map_err(io)?;
        Ok(StateDir { path, temporary })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("http://127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_environment_names_everything_a_cli_needs() {
        let lines = environment_lines(
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            Path::new("/s"),
            "127.201.0.0/24,127.201.1.0/24",
        );
        for name in [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION=us-east-1",
            "AWS_EC2_METADATA_DISABLED=true",
            "FLOTILLA_EMULATOR_CONTROL",
            "FLOTILLA_EMULATOR_STATE=/s",
            "FLOTILLA_EMULATOR_PUBLIC_IPS=127.201.0.0/24,127.201.1.0/24",
        ] {
            assert!(lines.contains(&format!("export {name}")), "{name} missing from\n{lines}");
        }
        assert!(lines.lines().all(|line| line.starts_with("export ")));
    }
}
