//! The command line: clap types only. Commands live in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use flotilla_spec::ProviderKind;

/// Deploy and operate fleets of your binaries: on AWS EC2 across regions, or on this machine.
///
/// Exit status: 0 success; 1 the command ran but the fleet did not reach the desired state
/// (an update was rolled back, machines are unhealthy); 2 the command could not run (bad
/// arguments or spec, state or provider errors); and for a provider failure a script can act
/// on: 3 no capacity in the pools allowed, 4 an account quota, 5 throttled, 6 permission denied
/// (each with a `hint:` line).
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the fleet a spec describes (or converge an existing one) and start every binary.
    Create(CreateArgs),
    /// Roll a new version out in health-gated batches; a failed batch is rolled back.
    Update(UpdateArgs),
    /// Stop every machine and remove every resource of a deployment.
    Destroy(DestroyArgs),
    /// Let an address reach the agents of an AWS deployment (or, with --revoke, stop letting it).
    Authorize(AuthorizeArgs),
    /// Delete the S3 bucket flotilla keeps artifacts in (AWS).
    Clean(CleanArgs),
    /// Show each machine's state, health, version and restarts.
    Status(StatusArgs),
    /// Show a machine's binary log.
    Logs(LogsArgs),
    /// Record a CPU profile of a machine's binary through its agent (Linux perf on the
    /// machine) and write it where the Firefox Profiler opens it.
    Profile(ProfileArgs),
    /// Snapshot a machine's data disks (the root disk too with --full), tagged as its disks are
    /// so that a spec's `clone: TAG:VALUE` starts new disks from them (AWS); prints the ids.
    Snapshot(SnapshotArgs),
    /// Make an image (AMI) of a machine, tagged as it is; with --encrypt-key, an encrypted copy
    /// (AWS); prints the id.
    Image(ImageArgs),
    /// List deployments in the state directory.
    List(OutputArgs),
    /// Check a spec and the files it names, without changing anything.
    Validate(ValidateArgs),
    /// Show where a spec's machines would land and what they would cost; changes nothing.
    Plan(PlanArgs),
    /// Print a JSON Schema.
    Schema(SchemaArgs),
    /// Serve an EC2 notice (spot, rebalance, scheduled) to a local machine's IMDS, to rehearse
    /// its lifecycle hooks.
    Notice(NoticeArgs),
    /// Say to every machine that the deployment is still there, so that a `keepalive:` does
    /// not run out (for cron; `status` and `update` do the same).
    Keepalive(StatusArgs),
    /// Open Grafana (and with --prometheus, Prometheus) of a deployment's monitoring machine on
    /// local ports, tunnelled through its agent's mTLS API; prints each URL. Runs until
    /// stopped (Ctrl-C).
    Monitoring(MonitoringArgs),
    /// Keep a deployment at its spec: replace machines that are gone (a spot reclaim, a dead
    /// agent) under their names and republish hosts.yaml to the others. Runs until stopped.
    Watch(WatchArgs),
    /// Run ec2fleetd's lifecycle on this machine (a drop-in for ec2fleetd, same command line
    /// and config), or check a config with `fleetd check-config`.
    Fleetd(FleetdArgs),
    /// Replay a workload (Aquarium Fish's CSV) through a dedicated host pool's policy and report
    /// hosts, cost and waits per month; exit 1 if the job-hours do not add up.
    Simulate(SimulateArgs),
    /// Run the agent (started on each machine by the provider).
    #[command(hide = true)]
    Agent(AgentArgs),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProviderArg {
    Local,
    Aws,
}

impl From<ProviderArg> for ProviderKind {
    fn from(value: ProviderArg) -> Self {
        match value {
            ProviderArg::Local => ProviderKind::Local,
            ProviderArg::Aws => ProviderKind::Aws,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The fleet spec (a commonware deployer config, optionally with flotilla's keys).
    #[arg(long)]
    pub config: PathBuf,
    /// Where the fleet runs; overrides the spec's `provider` (default: aws).
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,
    /// Re-create a tag that was destroyed.
    #[arg(long)]
    pub force: bool,
    /// Machines handled at once.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
    /// This machine's public IPv4 address, let through to the agents (AWS). Found by asking
    /// https://ipv4.icanhazip.com when absent, as the deployer does.
    #[arg(long)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Read the instance catalog and prices from AWS again instead of the cache under
    /// $FLOTILLA_HOME/cache (24 h for the catalog, 12 h for prices), and rewrite it.
    #[arg(long)]
    pub refresh: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    #[command(flatten)]
    pub target: Target,
    /// The address to let in (default: this machine's public IPv4 address).
    #[arg(long, conflicts_with = "revoke")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Remove this address's access instead.
    #[arg(long, value_name = "IP")]
    pub revoke: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Delete the bucket even while deployments that use it exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The fleet spec with the new version.
    #[arg(long)]
    pub config: PathBuf,
    /// Must match the deployment's provider when given.
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,
    /// Machines per batch, instead of the spec's `update` policy (1 = one at a time).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: Option<u64>,
    /// Print which machines would be added, removed and kept, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Roll out even while AWS Health reports an open EC2 issue in a batch's regions. Without
    /// it, each batch is checked first and an open issue stops the update before that batch
    /// (exit status 1, the issue named; batches already rolled keep their version, so running
    /// update again later rolls only the rest). The local provider has no health service:
    /// nothing is checked there.
    #[arg(long)]
    pub ignore_health: bool,
    /// Read the instance catalog and prices from AWS again instead of the cache under
    /// $FLOTILLA_HOME/cache (24 h for the catalog, 12 h for prices), and rewrite it.
    #[arg(long)]
    pub refresh: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A deployment, named by its spec or its tag.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The fleet spec (only its tag is used).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The deployment's tag (taken as written, even when it starts with `-`).
    #[arg(long, allow_hyphen_values = true)]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub target: Target,
    /// The deployment's provider, when its state directory cannot tell (metadata lost; an AWS
    /// deployment is then found by its resources' tags). Must match the state when both say.
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct MonitoringArgs {
    #[command(flatten)]
    pub target: Target,
    /// The local port for Grafana, on 127.0.0.1 (0: any free port).
    #[arg(long, visible_alias = "port", default_value_t = 3000)]
    pub grafana_port: u16,
    /// Also forward Prometheus (the local provider's monitoring machine runs Prometheus when
    /// it is installed, and no Grafana).
    #[arg(long)]
    pub prometheus: bool,
    /// The local port for Prometheus with --prometheus, on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 9090, requires = "prometheus")]
    pub prometheus_port: u16,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The fleet spec (replacements need its files), or `--tag` for the spec and files of the
    /// last create or update.
    #[command(flatten)]
    pub target: Target,
    /// Time between rounds.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    pub interval: std::time::Duration,
    /// How long a machine may be stopped, unreachable or unhealthy before it is replaced (one
    /// the provider reports ended is replaced at once); default: the spec's
    /// `heal.replace_after` (2m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub replace_after: Option<std::time::Duration>,
    /// Replacements under way at once; default: the spec's `heal.max_replacing` (2).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_replacing: Option<u64>,
    /// Replacements in any hour, beyond which watch holds back and says why; default: the
    /// spec's `heal.max_per_hour` (10).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_per_hour: Option<u64>,
    /// Stop after this many rounds (default: run until stopped).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// `json`: one JSON event a line on stdout (what happened, to which machine, what watch
    /// did, the outcome); `table`: the same as lines of text.
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NoticeKind {
    /// A spot interruption (`spot/instance-action`, action terminate): `interrupted` hooks,
    /// then the binary stops.
    Spot,
    /// A rebalance recommendation: `rebalance` hooks.
    Rebalance,
    /// A scheduled event: `scheduled-event` hooks.
    Scheduled,
}

#[derive(Debug, Args)]
pub struct NoticeArgs {
    #[command(flatten)]
    pub target: Target,
    /// The machine (e.g. `node-3`).
    pub name: String,
    pub kind: NoticeKind,
    /// When the notice's action happens (spot's time, a scheduled event's start), e.g. `2m`;
    /// default: 2m for spot, now for the others.
    #[arg(long = "in", value_parser = humantime::parse_duration)]
    pub in_: Option<std::time::Duration>,
    /// A scheduled event's code.
    #[arg(long, default_value = "instance-retirement")]
    pub code: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: Target,
    /// The machine (e.g. `node-3`).
    pub name: String,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines of history to print first.
    #[arg(long, default_value_t = 100)]
    pub lines: usize,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub target: Target,
    /// The machine (e.g. `node-3`).
    pub name: String,
    /// Snapshot the root disk too.
    #[arg(long)]
    pub full: bool,
    /// Stop the binary and the machine first, so the disks hold still; start both again after.
    #[arg(long)]
    pub stop: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    pub target: Target,
    /// The machine (e.g. `node-3`).
    pub name: String,
    /// The image's name before `-<UTC time>` (default: `<tag>-<machine>`).
    #[arg(long = "name", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Copy the image encrypted with this KMS key (id, ARN or `alias/NAME`) and remove the
    /// unencrypted one.
    #[arg(long, value_name = "KEY")]
    pub encrypt_key: Option<String>,
    /// Stop the binary and the machine first, so the disks hold still; start both again after.
    #[arg(long)]
    pub stop: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub target: Target,
    /// The machine (e.g. `node-3`).
    pub name: String,
    /// How long to record (at most 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    pub duration: std::time::Duration,
    /// Samples per second.
    #[arg(long, default_value_t = 99)]
    pub frequency: u32,
    /// Where to write the profile (default: `<name>-<unix seconds>.perf.txt` here).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// A local build of the machine's binary that keeps its symbols: the frames in the binary
    /// are named from it (a deployed binary is often stripped, and the machine names none).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The fleet spec.
    #[arg(long)]
    pub config: PathBuf,
    /// Where the fleet would run; overrides the spec's `provider` (default: aws).
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,
    /// Read the instance catalog and prices from AWS again instead of the cache under
    /// $FLOTILLA_HOME/cache (24 h for the catalog, 12 h for prices), and rewrite it.
    #[arg(long)]
    pub refresh: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The fleet spec to check.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// The fleet spec.
    #[default]
    Fleet,
    /// The agent's bootstrap config.
    AgentBootstrap,
    /// A manifest (one version of what a machine runs).
    Manifest,
}

/// `flotilla fleetd`: ec2fleetd's command line, unchanged (see `FLEETD_AFTER_HELP`).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, after_help = FLEETD_AFTER_HELP)]
pub struct FleetdArgs {
    #[command(subcommand)]
    pub command: Option<FleetdCommand>,
    /// Read the config from FILE instead of IMDS user data.
    #[arg(long, value_name = "FILE")]
    pub userdata: Option<PathBuf>,
    /// IMDS endpoints, tried in order: HOST[:PORT][,HOST[:PORT]…] (an IPv6 host in brackets).
    #[arg(long, value_name = "HOST[:PORT][,…]")]
    pub imds: Vec<String>,
    /// The transaction id that tags what this run creates (default: a new random id).
    #[arg(long = "transc_id", value_name = "ID")]
    pub transc_id: Option<String>,
    /// The AWS profile for the volume, Route 53, SNS and SQS calls.
    #[arg(long)]
    pub profile: Option<String>,
    /// Bring the domains up (volumes, records) and set the hostname: true, false or a number
    /// (non-zero is true).
    #[arg(long = "enable-init", value_name = "BOOL", value_parser = parse_fleetd_bool)]
    pub enable_init: Option<bool>,
    /// Send notifications.
    #[arg(long = "enable-notify", value_name = "BOOL", value_parser = parse_fleetd_bool)]
    pub enable_notify: Option<bool>,
    /// Run exec hooks (volume hooks are part of init).
    #[arg(long = "enable-exec", value_name = "BOOL", value_parser = parse_fleetd_bool)]
    pub enable_exec: Option<bool>,
    /// Poll IMDS for interruptions and events.
    #[arg(long = "enable-poll", value_name = "BOOL", value_parser = parse_fleetd_bool)]
    pub enable_poll: Option<bool>,
    /// Disable init, notify, exec and poll (an explicit --enable-…=true turns one back on).
    #[arg(long = "disable-all")]
    pub disable_all: bool,
    /// Print the version and exit.
    #[arg(short = 'V')]
    pub show_version: bool,
    /// Where the holds (volumes and records this machine claimed) are kept (default
    /// $STATE_DIRECTORY, set by systemd, else /var/lib/flotilla-fleetd).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The root under which devices and the mount table are found (default /).
    #[arg(long, value_name = "DIR", hide = true)]
    pub device_root: Option<PathBuf>,
    /// How long to keep trying IMDS at start.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    pub imds_wait: std::time::Duration,
}

const FLEETD_AFTER_HELP: &str = "\
Without a subcommand, fleetd reads the config (IMDS user data, or --userdata), runs the `starting`
hooks, brings every domain up (volumes, Route 53 records) and sets the hostname, runs the `started`
hooks and notifications, tells systemd READY=1, then polls IMDS: rebalance recommendations and
scheduled events run their hooks; a spot interruption runs the `interrupted` hooks and
notifications, undoes the records and volumes and exits; so does SIGTERM or SIGINT, with the
`stopping` hooks.

Exit status:
  0  stopped after a notice or a signal, or nothing to do (empty user data)
  1  init failed: a domain, or a `starting` or `started` hook (the `failed` hooks ran)
  2  a usage error on the command line
  3  the config is invalid (every error printed, located) or unreadable
  4  IMDS did not answer (within --imds-wait)
  5  undoing records or volumes failed at the end (the next run releases them)
  6  the config needs AWS calls and no AWS client could be made";

/// An ec2fleetd bool: `true`, `false`, or a number (non-zero is true).
fn parse_fleetd_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => other
            .parse::<f64>()
            .ok()
            .filter(|n| !n.is_nan())
            .map(|n| n != 0.0)
            .ok_or_else(|| format!("`{text}` is not true, false or a number")),
    }
}

#[derive(Debug, Subcommand)]
pub enum FleetdCommand {
    /// Check an ec2fleetd config (JSON5): every error at once, located; then what it asks for:
    /// volumes and how each is found, records, hooks per event, notifications, the AWS calls
    /// it needs, and where flotilla reads it differently from ec2fleetd. Makes no cloud call.
    CheckConfig(CheckConfigArgs),
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The config file (as ec2fleetd reads from --userdata).
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Which schema.
    #[arg(value_enum, default_value_t)]
    pub kind: SchemaKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SimulateMode {
    /// Aquarium Fish's simulator's constants (90-minute scrubs, 7-minute boot, idle hosts
    /// scrubbed after 5 minutes, 500 hosts in one zone), so the two tools compare on one file.
    #[default]
    Fish,
    /// AWS's figures: scrub times drawn (mostly up to 50 minutes, up to 3 hours on a bridgeOS
    /// update), the pool's zones and caps, InsufficientHostCapacity now and then. Needs --pool.
    Realistic,
}

#[derive(Debug, Args)]
#[command(after_help = SIMULATE_AFTER_HELP)]
pub struct SimulateArgs {
    /// The workload: `startTime,endTime,executionTime,jobName,stageName` (integer Unix seconds,
    /// UTC, sorted by startTime), optionally `pool,instanceType,zones` (zones `;`-separated).
    #[arg(long, value_name = "FILE.csv")]
    pub workload: PathBuf,
    /// The pool: a fleet spec with one `host_pools` entry (or name it with --pool-name), a file
    /// with only `host_pools:`, or one pool's mapping. Optional in fish mode. In realistic mode,
    /// rows whose `pool` column names another pool are rejected (a pool written alone takes
    /// every row), and in both modes rows of another `instanceType`.
    #[arg(long, value_name = "SPEC.yaml")]
    pub pool: Option<PathBuf>,
    /// Which pool of --pool, when it has several.
    #[arg(long, value_name = "NAME")]
    pub pool_name: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub mode: SimulateMode,
    /// Seed of the realistic mode's draws (scrub times, capacity errors): the same seed, the
    /// same result.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A host's price in USD per hour (default: the built-in on-demand price of the pool's type).
    #[arg(long, value_name = "USD")]
    pub host_price: Option<f64>,
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Also draw hosts and cost per month as an SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Run several policies side by side: `scrubbing=off,auto,5m,30m` or `max=100,200,500`.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub compare: Option<String>,
}

const SIMULATE_AFTER_HELP: &str = "\
Exit status: 0 the simulation ran and its job-hours add up (input = executed + queued +
rejected); 1 they do not (a bug: please report it with the file); 2 it could not run (a bad
row, named by its line; a bad pool; an unreadable file).";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's bootstrap config (JSON; see `flotilla schema agent-bootstrap`).
    #[arg(long)]
    pub bootstrap: PathBuf,
}
