//! Standalone `flotilla fleetd`: the lifecycle engine for one machine that flotilla did not
//! launch, a drop-in for ec2fleetd (same command line, same config), run by systemd
//! (`packaging/systemd/`).
//!
//! The run, in order (ec2fleetd's, refs part A.6, without its bugs):
//! 1. Read the config: `--userdata=FILE`, else IMDS user data (empty: nothing to do, exit 0).
//!    An invalid config exits [`EXIT_CONFIG`] with every error located.
//! 2. Read the machine's facts from IMDS (only the paths needed; see `machine_facts`),
//!    retried as [`imds_startup_delay`] says for at most `imds_wait`, then [`EXIT_IMDS`].
//! 3. SIGTERM and SIGINT are handled from here on (ec2fleetd installed them only after its
//!    metadata walk).
//! 4. `starting` hooks (`--enable-exec`); then every domain initialises in parallel and the
//!    hostname is set (`--enable-init`). A failed domain or a failed `starting` hook runs the
//!    `failed` hooks and notifications with `{error}` and exits [`EXIT_INIT`] (the domains that
//!    came up stay up, as in ec2fleetd; a restart re-runs the claims, which find what they hold).
//! 5. `started` hooks and notifications (`--enable-notify`), once; then `READY=1` to systemd.
//! 6. Poll IMDS (`--enable-poll`) for spot interruptions, rebalance recommendations and
//!    scheduled events (`imds.rs`, its schedule in `backoff.rs`); rebalance and scheduled
//!    events run their hooks and notifications; a spot notice runs `interrupted`'s, undoes
//!    (records, then volumes) and exits. SIGTERM/SIGINT runs `stopping`'s, undoes and exits.
//!    Without polling, fleetd waits for the signal when it holds volumes or records, and
//!    otherwise ends after `started`.
//!
//! Exit codes (ec2fleetd always exited 0): [`EXIT_OK`] 0 after a notice, a signal, or with
//! nothing to do; [`EXIT_INIT`] 1 a domain or a `starting`/`started` hook failed;
//! 2 a usage error (the command line); [`EXIT_CONFIG`] 3 the config is invalid or unreadable;
//! [`EXIT_IMDS`] 4 IMDS did not answer; [`EXIT_UNDO`] 5 undoing records or volumes failed at
//! the end (they stay, and the next run releases them); [`EXIT_NO_CLOUD`] 6 the config needs
//! AWS calls and no machine cloud could be made.
//!
//! Schedule ([`imds_startup_delay`]): reading the facts is retried after 100 ms, doubling to
//! at most 2 s, times a random factor in 0.8..=1.2, until `imds_wait` (default
//! [`IMDS_STARTUP_WAIT`]) has passed since the first try; each request has the IMDS client's
//! own timeout, so an IMDS that never answers cannot hang fleetd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_spec::api::HookOutcome;
use flotilla_spec::fleetd::{Event, FleetdConfig, MACROS, parse_fleetd_config};
use tokio::signal::unix::{SignalKind, signal};

use crate::backoff::restart_jitter;
use crate::domains::domain_values;
use crate::domains::{Engine, EngineContext};
use crate::imds::{ImdsClient, Notice, NoticePoller};
use crate::machine_cloud::{CallLog, MachineCloud, MachineFacts};
use crate::machine_facts::ImdsFacts;

/// Writes a line on stderr, where the config's diagnostics and the reasons to exit go (the log
/// lines, through `tracing`, go there too).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Stopped after a notice or a signal, or nothing to do.
pub const EXIT_OK: u8 = 0;
/// A domain, or a `starting` or `started` hook, failed.
pub const EXIT_INIT: u8 = 1;
/// The command line was wrong (clap's own status).
pub const EXIT_USAGE: u8 = 2;
/// The config is invalid or could not be read.
pub const EXIT_CONFIG: u8 = 3;
/// IMDS did not answer.
pub const EXIT_IMDS: u8 = 4;
/// Undoing records or volumes at the end failed.
pub const EXIT_UNDO: u8 = 5;
/// The config needs AWS calls and no machine cloud could be made.
pub const EXIT_NO_CLOUD: u8 = 6;

/// IMDS's address when `--imds` names none (EC2's IPv4 one; the IPv6 one, `[fd00:ec2::254]`,
/// answers only where it was turned on, so it is tried only when named).
const DEFAULT_IMDS: &str = "169.254.169.254";

/// How long fleetd tries to read the machine's facts from IMDS at start.
pub const IMDS_STARTUP_WAIT: Duration = Duration::from_secs(10);
const STARTUP_RETRY_INITIAL: Duration = Duration::from_millis(100);
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(2);

/// The wait before retry `attempt` (1 for the first) of reading the facts, with `jitter` the
/// random factor (0.8..=1.2); `None` once `waited` plus the wait would pass `bound`.
pub(crate) fn imds_startup_delay(
    attempt: u32,
    waited: Duration,
    bound: Duration,
    jitter: f64,
) -> Option<Duration> {
    crate::backoff::bounded_retry_delay(
        attempt,
        waited,
        (STARTUP_RETRY_INITIAL, STARTUP_RETRY_MAX),
        bound,
        jitter,
    )
}

/// What the machine cloud is made from, once the facts are known.
#[derive(Clone, Debug)]
pub struct CloudSetup {
    /// The machine's region (IMDS).
    pub region: String,
    /// `--profile`.
    pub profile: Option<String>,
}

/// Makes the machine cloud (the binary registers AWS's); called only when the config needs it.
pub type MakeCloud = Box<dyn FnOnce(&CloudSetup) -> Result<Arc<dyn MachineCloud>, String> + Send>;

/// `flotilla fleetd`'s options (ec2fleetd's, plus flotilla's own for tests and packaging).
pub struct FleetdOptions {
    /// `--userdata=FILE`: the config from a file instead of IMDS user data.
    pub userdata: Option<PathBuf>,
    /// `--imds=HOST[:PORT][,…]`: tried in order; default `169.254.169.254`.
    pub imds: Vec<String>,
    /// `--transc_id`: tags what this run creates; default a new random id.
    pub transaction_id: Option<String>,
    pub profile: Option<String>,
    pub enable_init: bool,
    pub enable_notify: bool,
    pub enable_exec: bool,
    pub enable_poll: bool,
    /// Where the holds are kept (`$STATE_DIRECTORY` under systemd).
    pub state_dir: PathBuf,
    /// Where devices and the mount table are: `/`, or a directory under the emulator.
    pub device_root: PathBuf,
    /// How long to try IMDS at start.
    pub imds_wait: Duration,
    pub make_cloud: Option<MakeCloud>,
}

impl std::fmt::Debug for FleetdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetdOptions")
            .field("userdata", &self.userdata)
            .field("imds", &self.imds)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// Runs fleetd to its end (see the module) in a runtime of its own; the exit code.
pub fn run_fleetd(options: FleetdOptions) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            return EXIT_INIT;
        }
    };
    runtime.block_on(Fleetd::run(options))
}

/// The HTTP endpoints of `--imds` values.
fn endpoints(values: &[String]) -> Result<Vec<String>, String> {
    let values: Vec<&str> =
        values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        return Ok(vec![format!("http://{DEFAULT_IMDS}:80")]);
    }
    values.into_iter().map(crate::imds::parse_endpoint).collect()
}

struct Fleetd {
    config: FleetdConfig,
    base: BTreeMap<String, String>,
    cloud: Option<Arc<dyn MachineCloud>>,
    /// Every call made to the cloud, for `{transaction_log}`.
    calls: CallLog,
    engine: Option<Arc<Engine>>,
    options: FleetdOptions,
    work: PathBuf,
    region: String,
}

/// Why fleetd stops waiting.
enum Stop {
    Notice(Vec<(&'static str, String)>, String),
    Signal(&'static str),
    Done,
}

impl Fleetd {
    async fn run(mut options: FleetdOptions) -> u8 {
        let endpoints = match endpoints(&options.imds) {
            Ok(endpoints) => endpoints,
            Err(error) => {
                say!("fleetd: --imds: {error}");
                return EXIT_USAGE;
            }
        };
        let mut signals = listen_for_signals();
        // 1. The config.
        let (text, name) = match &options.userdata {
            Some(path) => match fs_err::read_to_string(path) {
                Ok(text) => (text, path.clone()),
                Err(error) => {
                    say!("fleetd: {error}");
                    return EXIT_CONFIG;
                }
            },
            None => match first_answer(&endpoints, options.imds_wait, |mut client| async move {
                client.get("/latest/user-data").await.map_err(|e| e.to_string())
            })
            .await
            {
                Ok((Some(text), _)) => (text, PathBuf::from("IMDS user-data")),
                Ok((None, _)) => (String::new(), PathBuf::from("IMDS user-data")),
                Err(error) => {
                    say!("fleetd: IMDS: {error}");
                    return EXIT_IMDS;
                }
            },
        };
        if text.trim().is_empty() {
            say!("fleetd: the config ({}) is empty: nothing to do", name.display());
            return EXIT_OK;
        }
        let document = match parse_fleetd_config(&text, &name) {
            Ok(document) => document,
            Err(errors) => {
                say!("{errors}");
                return EXIT_CONFIG;
            }
        };
        for warning in &document.warnings {
            say!("{warning}");
        }
        let config = document.config;
        // 2. The facts.
        let (facts, endpoint) =
            match first_answer(&endpoints, options.imds_wait, |mut client| async move {
                crate::machine_facts::read_facts(&mut client).await
            })
            .await
            {
                Ok(found) => found,
                Err(error) => {
                    say!("fleetd: IMDS: {error}");
                    return EXIT_IMDS;
                }
            };
        let transaction_id = options.transaction_id.clone().unwrap_or_else(random_id);
        let work = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let base = base_values(&facts, &transaction_id, &work);
        let needs_cloud = (options.enable_init && crate::domains::needs_cloud_init(&config))
            || (options.enable_notify && config.domains.iter().any(|d| !d.notify.is_empty()));
        let calls = CallLog::default();
        let cloud = if needs_cloud {
            let setup =
                CloudSetup { region: facts.region.clone(), profile: options.profile.clone() };
            let made = match options.make_cloud.take() {
                Some(make) => make(&setup),
                None => Err("this build of flotilla has no machine cloud".to_owned()),
            };
            match made {
                Ok(cloud) => Some(crate::machine_cloud::logged(cloud, &calls)),
                Err(error) => {
                    say!(
                        "fleetd: the config needs AWS calls (volumes, records or notifications): {error}"
                    );
                    return EXIT_NO_CLOUD;
                }
            }
        } else {
            None
        };
        let engine =
            match (&cloud, options.enable_init && crate::domains::needs_cloud_init(&config)) {
                (Some(cloud), true) => {
                    if let Err(error) = fs_err::create_dir_all(&options.state_dir) {
                        say!("fleetd: the state directory: {error}");
                        return EXIT_INIT;
                    }
                    Some(Arc::new(Engine::new(EngineContext {
                        cloud: cloud.clone(),
                        calls: calls.clone(),
                        facts: MachineFacts {
                            instance_id: facts.instance_id.clone(),
                            region: facts.region.clone(),
                            zone: facts.zone.clone(),
                            index: facts.launch_index,
                            transaction_id: transaction_id.clone(),
                        },
                        public_ip: facts.public_ipv4,
                        private_ip: facts.private_ipv4,
                        device_root: options.device_root.clone(),
                        holds_file: options.state_dir.join(crate::domains::HOLDS_FILE),
                        work: work.clone(),
                        volume_wait: crate::domains::VOLUME_WAIT,
                        device_wait: crate::devices::DEVICE_WAIT,
                    })))
                }
                _ => None,
            };
        let fleetd = Fleetd {
            config,
            base,
            cloud,
            calls,
            engine,
            region: facts.region.clone(),
            options,
            work,
        };
        // 4. Starting, init, hostname. A signal meanwhile is handled once the step ends: every
        // step is bounded (hook timeouts, the cloud's waits).
        let mut early_signal = None;
        let started = {
            let init = fleetd.start();
            tokio::pin!(init);
            loop {
                tokio::select! {
                    result = &mut init => break result,
                    Some(name) = signals.recv(), if early_signal.is_none() => {
                        tracing::info!("fleetd: {name} during init: stopping once the step under way ends");
                        early_signal = Some(name);
                    }
                }
            }
        };
        if let Err(errors) = started {
            fleetd.failed(&errors).await;
            sd_notify("STATUS=Daemon failed");
            return EXIT_INIT;
        }
        let stop = if let Some(name) = early_signal {
            Stop::Signal(name)
        } else {
            // 5. Started.
            let started_ok = fleetd.event(Event::Started, &[]).await;
            sd_notify("READY=1");
            if !started_ok {
                fleetd.failed(&["a `started` hook failed".to_owned()]).await;
                sd_notify("STATUS=Daemon failed");
                return EXIT_INIT;
            }
            if fleetd.options.enable_poll {
                sd_notify("STATUS=Polling interruption ...");
                tokio::select! {
                    stop = fleetd.poll(&endpoint) => stop,
                    Some(name) = signals.recv() => Stop::Signal(name),
                }
            } else if fleetd.engine.as_ref().is_some_and(|e| !e.holds().is_empty()) {
                Stop::Signal(signals.recv().await.unwrap_or("SIGTERM"))
            } else {
                Stop::Done
            }
        };
        // 6. The end.
        match stop {
            Stop::Notice(values, detail) => {
                tracing::info!("fleetd: {detail}");
                sd_notify("STATUS=SPOT INTERRUPTION NOTICE RECEIVED");
                sd_notify("STOPPING=1");
                fleetd.event(Event::Interrupted, &values).await;
            }
            Stop::Signal(name) => {
                tracing::info!("fleetd: {name}: stopping");
                sd_notify("STATUS=Process interrupted");
                sd_notify("STOPPING=1");
                fleetd.event(Event::Stopping, &[]).await;
            }
            Stop::Done => {
                sd_notify("STOPPING=1");
                return EXIT_OK;
            }
        }
        fleetd.undo().await
    }

    /// `starting` hooks (the cloud made ready meanwhile), then the domains and the hostname.
    async fn start(&self) -> Result<(), Vec<String>> {
        let prepare = async {
            if let Some(cloud) = &self.cloud
                && self.options.enable_init
                && crate::domains::needs_cloud_init(&self.config)
            {
                cloud.prepare(&self.region).await;
            }
        };
        let (hooks_ok, ()) = tokio::join!(self.event(Event::Starting, &[]), prepare);
        if !hooks_ok {
            return Err(vec!["a `starting` hook failed".to_owned()]);
        }
        if !self.options.enable_init {
            return Ok(());
        }
        let values = self.values(Event::Starting, &[]);
        if let Some(engine) = &self.engine {
            let outcome = engine.init(&self.config, Event::Starting, &values).await;
            for domain in &outcome.domains {
                for hook in &domain.hooks {
                    log_hook(hook);
                }
                for skipped in &domain.skipped {
                    tracing::warn!("fleetd: domains.{}: {skipped}", domain.domain);
                }
            }
            if outcome.failed() {
                return Err(outcome.errors());
            }
            for error in outcome.errors() {
                tracing::warn!("fleetd: {error}");
            }
        }
        match crate::domains::wanted_hostname(&self.config, &values) {
            Ok(Some(name)) => {
                crate::domains::set_hostname(&name).map_err(|e| vec![e])?;
                tracing::info!("fleetd: hostname set to {name}");
            }
            Ok(None) => {}
            Err(error) => return Err(vec![error]),
        }
        Ok(())
    }

    /// `failed` hooks and notifications, with `{error}`.
    async fn failed(&self, errors: &[String]) {
        for error in errors {
            tracing::error!("fleetd: {error}");
        }
        self.event(Event::Failed, &[("error", errors.join("; "))]).await;
    }

    /// The macro values of `event`.
    fn values(&self, event: Event, extra: &[(&'static str, String)]) -> BTreeMap<String, String> {
        let mut values = self.base.clone();
        values.insert("daemon_state".to_owned(), event.as_str().to_owned());
        values.insert(
            "ts".to_owned(),
            humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        );
        for (name, value) in extra {
            values.insert((*name).to_owned(), value.clone());
        }
        values
    }

    /// Runs `event`'s hooks (`--enable-exec`) and notifications (`--enable-notify`); whether
    /// every hook line succeeded.
    async fn event(&self, event: Event, extra: &[(&'static str, String)]) -> bool {
        let values = self.values(event, extra);
        let mut ok = true;
        if self.options.enable_exec {
            for domain in &self.config.domains {
                let lines = FleetdConfig::hooks_on(domain, event);
                let domain_values = domain_values(&values, &domain.name, &self.calls);
                for line in lines {
                    let result = crate::lifecycle::run_line(line, &domain_values, &self.work).await;
                    let result = flotilla_spec::api::HookResult {
                        event,
                        domain: domain.name.clone(),
                        ..result
                    };
                    ok &= result.outcome == HookOutcome::Succeeded;
                    log_hook(&result);
                }
                if let Some(engine) = &self.engine {
                    for result in engine.volume_hooks(domain, event, &values).await {
                        ok &= result.outcome == HookOutcome::Succeeded;
                        log_hook(&result);
                    }
                }
            }
        }
        if self.options.enable_notify
            && let Some(cloud) = &self.cloud
        {
            let outcome = crate::notify::send_notifications(
                cloud,
                &self.config,
                event,
                |domain| domain_values(&values, domain, &self.calls),
                &self.region,
                crate::notify::NOTIFY_DEADLINE,
            )
            .await;
            for failure in outcome.failed {
                tracing::warn!("fleetd: {event} notification: {failure}");
            }
        }
        ok
    }

    /// Polls IMDS until a spot notice; rebalance and scheduled events run their hooks.
    async fn poll(&self, endpoint: &str) -> Stop {
        let mut poller = NoticePoller::new(ImdsClient::new(endpoint));
        loop {
            let round = poller.next_round().await;
            for line in round.log_lines {
                tracing::warn!("fleetd: {line}");
            }
            for notice in round.notices {
                let (event, detail, values) = crate::lifecycle::notice_event(&notice);
                if matches!(notice, Notice::Spot { .. }) {
                    return Stop::Notice(values, detail);
                }
                tracing::info!("fleetd: {detail}");
                self.event(event, &values).await;
            }
        }
    }

    /// Undoes the records and volumes held; the exit code.
    async fn undo(&self) -> u8 {
        let Some(engine) = &self.engine else { return EXIT_OK };
        let failures = engine.undo().await;
        for failure in &failures {
            tracing::error!("fleetd: undo: {failure}");
        }
        if failures.is_empty() { EXIT_OK } else { EXIT_UNDO }
    }
}

/// SIGTERM and SIGINT, as they come (the handlers are installed at once).
fn listen_for_signals() -> tokio::sync::mpsc::UnboundedReceiver<&'static str> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    for (kind, name) in [(SignalKind::terminate(), "SIGTERM"), (SignalKind::interrupt(), "SIGINT")]
    {
        match signal(kind) {
            Ok(mut stream) => {
                let sender = sender.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if sender.send(name).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(error) => tracing::warn!("fleetd: cannot handle {name}: {error}"),
        }
    }
    receiver
}

/// Tries each endpoint with `read`, retrying as [`imds_startup_delay`] says within `bound`;
/// the first answer and the endpoint that gave it.
async fn first_answer<T, F, Fut>(
    endpoints: &[String],
    bound: Duration,
    read: F,
) -> Result<(T, String), String>
where
    F: Fn(ImdsClient) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        let mut errors = Vec::new();
        for endpoint in endpoints {
            let left = bound.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
            let client = ImdsClient::with_timeout(endpoint, crate::imds::REQUEST_TIMEOUT.min(left));
            match read(client).await {
                Ok(answer) => return Ok((answer, endpoint.clone())),
                Err(error) => errors.push(format!("{endpoint}: {error}")),
            }
        }
        attempt += 1;
        match imds_startup_delay(attempt, started.elapsed(), bound, restart_jitter()) {
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                return Err(format!(
                    "no answer within {} ({attempt} attempts): {}",
                    humantime::format_duration(bound),
                    errors.join("; ")
                ));
            }
        }
    }
}

/// The macro values every event starts from: every macro flotilla knows (empty where there
/// is no value), the facts, the transaction id.
fn base_values(facts: &ImdsFacts, transaction_id: &str, work: &Path) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> =
        MACROS.iter().map(|(name, _)| ((*name).to_owned(), String::new())).collect();
    for (name, value) in facts.macro_values() {
        values.insert(name.to_owned(), value);
    }
    let index = facts.launch_index.map(|i| i.to_string()).unwrap_or_default();
    values.insert("instance_index".to_owned(), index.clone());
    values.insert("ami-i".to_owned(), index);
    values.insert("transaction_id".to_owned(), transaction_id.to_owned());
    values.insert("pid".to_owned(), std::process::id().to_string());
    values.insert("cwd".to_owned(), work.display().to_string());
    values
}

fn log_hook(result: &flotilla_spec::api::HookResult) {
    let line = format!(
        "fleetd: {} hook {:?} (domain {}): {:?}{}",
        result.event,
        result.argv,
        result.domain,
        result.outcome,
        if result.message.is_empty() { String::new() } else { format!(": {}", result.message) }
    );
    if result.outcome == HookOutcome::Succeeded {
        tracing::info!("{line}");
    } else {
        tracing::warn!("{line}");
    }
}

/// A new transaction id (a random UUID-shaped hex string).
fn random_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let hex = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Tells systemd `state` over `$NOTIFY_SOCKET` (sd_notify), when it listens; an abstract
/// socket is written `@name`.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|address| socket.send_to_addr(state.as_bytes(), &address))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(error) = sent {
        tracing::debug!("sd_notify {state}: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_startup_schedule_doubles_to_its_cap_within_its_bound() {
        let bound = Duration::from_secs(10);
        assert_eq!(
            imds_startup_delay(1, Duration::ZERO, bound, 1.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            imds_startup_delay(3, Duration::ZERO, bound, 1.0),
            Some(Duration::from_millis(400))
        );
        assert_eq!(imds_startup_delay(9, Duration::ZERO, bound, 1.0), Some(STARTUP_RETRY_MAX));
        assert_eq!(imds_startup_delay(9, Duration::from_secs(9), bound, 1.0), None);
    }

    #[test]
    fn imds_values_become_endpoints() {
        assert_eq!(endpoints(&[]).unwrap(), ["http://169.254.169.254:80"]);
        assert_eq!(
            endpoints(&["127.0.0.1:8080,10.0.0.1".to_owned()]).unwrap(),
            ["http://127.0.0.1:8080", "http://10.0.0.1:80"]
        );
        assert_eq!(
            endpoints(&["[::1]:8080, [fd00:ec2::254]".to_owned(), "imds.internal".to_owned()])
                .unwrap(),
            ["http://[::1]:8080", "http://[fd00:ec2::254]:80", "http://imds.internal:80"]
        );
        let refused = endpoints(&["127.0.0.1,fd00:ec2::254".to_owned()]).unwrap_err();
        assert!(refused.contains("fd00:ec2::254") && refused.contains("brackets"), "{refused}");
    }
}
