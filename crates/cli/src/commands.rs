//! Dispatch: each subcommand resolves its inputs, calls a workflow of `flotilla_core` with the
//! deployment's provider, and prints the result (stdout) or the error (stderr, and stdout as
//! JSON with `--output json`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use flotilla_core::CoreError;
use flotilla_core::client::error_chain;
use flotilla_core::error::exit;
use flotilla_core::health::HealthGate;
use flotilla_core::state::Home;
use flotilla_core::workflows::{self, CreateRequest, DestroyOutcome, UpdateOutcome, UpdateRequest};
use flotilla_spec::diagnostic::escape_for_terminal;
use flotilla_spec::{ProviderKind, SpecDocument, SpecErrors};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, FleetdArgs, FleetdCommand, OutputFormat, SchemaKind, Target};
use crate::env::Environment;
use crate::output;
use crate::progress::Bars;
use crate::providers::{self, ProviderContext};

/// How long agents have to answer after their machines run: a local agent starts at once; a
/// cloud machine boots, runs its user data and downloads its agent first. Tests shorten it
/// ([`crate::env::TEST_AGENT_TIMEOUT`]).
fn agent_timeout(kind: ProviderKind, environment: &Environment) -> std::time::Duration {
    environment.agent_timeout.unwrap_or(match kind {
        ProviderKind::Local => std::time::Duration::from_secs(60),
        ProviderKind::Aws => std::time::Duration::from_secs(900),
    })
}

/// Runs the command line; returns the exit status.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        // The agent sets up its own log once its bootstrap config says where it goes.
        Command::Agent(args) => run_agent(&args.bootstrap, cli.verbose),
        Command::Fleetd(args) if args.command.is_none() => {
            init_tracing(cli.verbose, "info");
            ExitCode::from(crate::fleetd::run_daemon(args))
        }
        // Pure computation over a file: no runtime.
        Command::Simulate(args) => ExitCode::from(crate::simulate::run(&args)),
        command => {
            init_tracing(cli.verbose, "warn");
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    report(
                        &CoreError::Io(format!("cannot start the async runtime: {error}")),
                        None,
                    );
                    return ExitCode::from(exit::ERROR);
                }
            };
            let output = output_format(&command);
            match runtime.block_on(dispatch(command)) {
                Ok(code) => ExitCode::from(code),
                Err(error) => {
                    report(&error, output);
                    ExitCode::from(error.exit_code())
                }
            }
        }
    }
}

fn init_tracing(verbose: u8, default_level: &str) {
    let level = match verbose {
        0 => default_level,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_env(crate::env::RUST_LOG).unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn output_format(command: &Command) -> Option<OutputFormat> {
    match command {
        Command::Create(a) => Some(a.output.output),
        Command::Update(a) => Some(a.output.output),
        Command::Destroy(a) => Some(a.output.output),
        Command::Status(a) => Some(a.output.output),
        Command::Notice(a) => Some(a.output.output),
        Command::Keepalive(a) => Some(a.output.output),
        Command::Watch(a) => Some(a.output.output),
        Command::Snapshot(a) => Some(a.output.output),
        Command::Image(a) => Some(a.output.output),
        Command::List(a) => Some(a.output),
        Command::Validate(a) => Some(a.output.output),
        Command::Plan(a) => Some(a.output.output),
        Command::Fleetd(FleetdArgs { command: Some(FleetdCommand::CheckConfig(a)), .. }) => {
            Some(a.output.output)
        }
        _ => None,
    }
}

/// Prints an error on stderr and, for `--output json`, as JSON on stdout.
fn report(error: &CoreError, output: Option<OutputFormat>) {
    let mut stderr = std::io::stderr().lock();
    // Diagnostics escape what they quote themselves; other errors are escaped line by line
    // (names and paths can hold anything a file or command line can).
    let _ = match error {
        CoreError::Invalid(errors) => writeln!(stderr, "{errors}"),
        other => {
            let text = error_chain(other);
            let lines: Vec<_> = text.lines().map(escape_for_terminal).collect();
            writeln!(stderr, "error: {}", lines.join("\n"))
        }
    };
    let hint = error.hint();
    if let Some(hint) = &hint {
        let _ = writeln!(stderr, "hint: {}", escape_for_terminal(hint));
    }
    if output == Some(OutputFormat::Json) {
        let failures = match error {
            CoreError::Failed { failures, .. } => serde_json::to_value(failures).ok(),
            CoreError::Invalid(errors) => serde_json::to_value(&errors.diagnostics).ok(),
            _ => None,
        };
        let summary = match error {
            CoreError::Failed { summary, .. } => summary.clone(),
            other => error_chain(other),
        };
        output::print_json(&serde_json::json!({
            "error": summary,
            "kind": error.provider_kind(),
            "hint": hint,
            "details": failures,
        }));
    }
}

/// Runs the agent; exits 2 when it stops on an error (its bootstrap config, its identity, a
/// component of it that died), after logging the error where the agent logs.
fn run_agent(bootstrap: &Path, verbose: u8) -> ExitCode {
    // Detach from the starting process's session, so the agent outlives it and a terminal's
    // signals. Fails harmlessly when already a session leader (e.g. under systemd).
    let _ = rustix::process::setsid();
    // Everything the agent and what it runs (the binary, the services) create is the machine
    // owner's alone, as the AWS user data's `umask 077` makes it there.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let path_style = Environment::from_process().aws_endpoint_url.is_some();
    let mut fetchers =
        flotilla_agent::Fetchers::default().with("s3", flotilla_aws::S3Fetcher::new(path_style));
    // On EC2 (an IMDS that is not the local provider's rehearsal one) the lifecycle's volumes,
    // records and notifications go through flotilla-aws; locally there is no machine cloud.
    let on_ec2 = fs_err::read_to_string(bootstrap)
        .ok()
        .and_then(|text| flotilla_spec::bootstrap::AgentBootstrap::parse(&text, "").ok())
        .and_then(|parsed| parsed.imds)
        .is_some_and(|imds| imds.rehearsal_notices.is_none());
    if on_ec2 {
        fetchers = fetchers.with_machine_cloud(flotilla_aws::LazyAwsMachineCloud::shared(None));
    }
    let log_filter = flotilla_agent::LogFilter {
        verbosity: verbose,
        directives: std::env::var(crate::env::RUST_LOG).ok().filter(|value| !value.is_empty()),
    };
    match flotilla_agent::run(bootstrap, fetchers, &log_filter) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", error_chain(&error));
            ExitCode::from(exit::ERROR)
        }
    }
}

fn load_spec(path: &Path) -> Result<SpecDocument, CoreError> {
    let document = flotilla_spec::load_fleet_spec(path).map_err(CoreError::Invalid)?;
    let mut stderr = std::io::stderr().lock();
    for warning in &document.warnings {
        let _ = writeln!(stderr, "{warning}");
    }
    Ok(document)
}

fn current_dir() -> Result<std::path::PathBuf, CoreError> {
    std::env::current_dir()
        .map_err(|e| CoreError::Io(format!("cannot read the current directory: {e}")))
}

/// The tag a `--config | --tag` target names.
fn target_tag(target: &Target) -> Result<String, CoreError> {
    match (&target.config, &target.tag) {
        (_, Some(tag)) => Ok(tag.clone()),
        (Some(config), None) => Ok(load_spec(config)?.spec.tag),
        (None, None) => unreachable!("clap requires --config or --tag"),
    }
}

async fn dispatch(command: Command) -> Result<u8, CoreError> {
    let environment = Environment::from_process();
    let home = || environment.home().map_err(CoreError::from);
    match command {
        Command::Create(args) => {
            let document = load_spec(&args.config)?;
            let kind = document.spec.provider_kind(args.provider.map(Into::into));
            let bars = Bars::new(environment.halt_at.clone());
            let home = home()?;
            let context = ProviderContext::new(kind, &home, &environment, args.ip).await;
            if args.refresh {
                context.expire_cache()?;
            }
            let rows = workflows::create(
                &home,
                CreateRequest {
                    document: &document,
                    provider: kind,
                    force: args.force,
                    concurrency: args.concurrency as usize,
                    agent_timeout: agent_timeout(kind, &environment),
                    cwd: current_dir()?,
                },
                &bars,
                &context,
                |deployment| context.make(deployment),
            )
            .await?;
            print_rows(&rows, args.output.output);
            Ok(exit::OK)
        }
        Command::Plan(args) => {
            let document = load_spec(&args.config)?;
            let kind = document.spec.provider_kind(args.provider.map(Into::into));
            let home = home()?;
            let context = ProviderContext::new(kind, &home, &environment, None).await;
            if args.refresh {
                context.expire_cache()?;
            }
            let bars = Bars::new(None);
            let report = workflows::plan(&document, kind, &current_dir()?, &context, &bars).await?;
            drop(bars);
            match args.output.output {
                OutputFormat::Json => output::print_json(&report),
                OutputFormat::Table => output::print_plan(&report),
            }
            Ok(exit::OK)
        }
        Command::Update(args) => {
            let document = load_spec(&args.config)?;
            let bars = Bars::new(environment.halt_at.clone());
            let home = home()?;
            let context = existing_context(&home, &environment, &document.spec.tag).await?;
            if args.refresh {
                context.expire_cache()?;
            }
            let kind = document.spec.provider_kind(args.provider.map(Into::into));
            let outcome = workflows::update(
                &home,
                UpdateRequest {
                    document: &document,
                    provider: args.provider.map(Into::into),
                    batch_size: args.concurrency.map(|c| c as usize),
                    dry_run: args.dry_run,
                    agent_timeout: agent_timeout(kind, &environment),
                    cwd: current_dir()?,
                    prepared: None,
                    health: if args.ignore_health { HealthGate::Ignore } else { HealthGate::Check },
                },
                &bars,
                |deployment| context.make(deployment),
            )
            .await?;
            drop(bars);
            match outcome {
                UpdateOutcome::Planned(change) => match args.output.output {
                    OutputFormat::Json => output::print_json(&change),
                    OutputFormat::Table => output::print_membership(&change),
                },
                UpdateOutcome::Done { rows, .. } => print_rows(&rows, args.output.output),
            }
            Ok(exit::OK)
        }
        Command::Destroy(args) => {
            let tag = target_tag(&args.target)?;
            let home = home()?;
            let asked = args.provider.map(ProviderKind::from);
            // Whatever state is left names the provider (or --provider does): see recover.
            let (_, _, kind) = home.recover(&tag, asked)?;
            let context = ProviderContext::new(kind, &home, &environment, None).await;
            let bars = Bars::new(environment.halt_at.clone());
            let outcome =
                workflows::destroy(&home, &tag, asked, &bars, |d| context.make(d)).await?;
            let (state, held) = match outcome {
                DestroyOutcome::Destroyed => ("destroyed", Vec::new()),
                DestroyOutcome::AlreadyDestroyed => ("already-destroyed", Vec::new()),
                DestroyOutcome::HostsHeld(held) => ("hosts-held", held),
            };
            match args.output.output {
                OutputFormat::Json => output::print_json(&serde_json::json!({
                    "tag": tag,
                    "result": state,
                    "held_hosts": output::held_hosts_json(&held),
                })),
                OutputFormat::Table => {
                    tracing::info!(tag, state, "destroy finished");
                    let mut stderr = std::io::stderr().lock();
                    if held.is_empty() {
                        let _ = writeln!(stderr, "deployment {tag}: {}", state.replace('-', " "));
                    } else {
                        let _ = output::print_held_hosts(&mut stderr, &tag, &held);
                    }
                }
            }
            Ok(exit::OK)
        }
        Command::Status(args) => {
            let tag = target_tag(&args.target)?;
            let home = home()?;
            let context = existing_context(&home, &environment, &tag).await?;
            let rows =
                workflows::status(&home, &tag, workflows::DEFAULT_CONCURRENCY, |d| context.make(d))
                    .await?;
            print_rows(&rows, args.output.output);
            let healthy = rows.iter().all(|r| {
                r.error.is_none() && matches!(r.health.as_deref(), Some("healthy") | Some("idle"))
            });
            Ok(if healthy { exit::OK } else { exit::FAILED })
        }
        Command::Notice(args) => notice(&args, &home()?, &environment).await,
        Command::Snapshot(args) => {
            let kind = workflows::CaptureKind::Snapshot { full: args.full };
            capture(&args.target, &args.name, kind, args.stop, args.output.output, &environment)
                .await
        }
        Command::Image(args) => {
            let kind = workflows::CaptureKind::Image {
                prefix: args.prefix.clone(),
                encrypt_key: args.encrypt_key.clone(),
            };
            capture(&args.target, &args.name, kind, args.stop, args.output.output, &environment)
                .await
        }
        Command::Watch(args) => {
            let tag = target_tag(&args.target)?;
            let home = home()?;
            let context = existing_context(&home, &environment, &tag).await?;
            let (document, cwd) = match &args.target.config {
                Some(config) => (load_spec(config)?, current_dir()?),
                None => workflows::saved_spec(&home.open(&tag)?)?,
            };
            let kind = home.open(&tag)?.metadata()?.provider;
            let heal = document.spec.heal;
            let format = args.output.output;
            let events =
                move |event: workflows::WatchEvent| output::print_watch_event(&event, format);
            let bars = Bars::new(environment.halt_at.clone());
            workflows::watch(
                &home,
                workflows::WatchRequest {
                    document,
                    cwd,
                    interval: args.interval,
                    replace_after: args.replace_after.unwrap_or(heal.replace_after),
                    max_replacing: args
                        .max_replacing
                        .map_or(heal.max_replacing as usize, |n| n as usize),
                    max_per_hour: args
                        .max_per_hour
                        .map_or(heal.max_per_hour as usize, |n| n as usize),
                    agent_timeout: agent_timeout(kind, &environment),
                    rounds: args.rounds,
                },
                &bars,
                &events,
                |deployment| context.make(deployment),
            )
            .await?;
            Ok(exit::OK)
        }
        Command::Monitoring(args) => {
            let tag = target_tag(&args.target)?;
            let home = home()?;
            let context = existing_context(&home, &environment, &tag).await?;
            let service = |port: u16| {
                flotilla_spec::api::tunnel_service(port).expect("a telemetry port of TUNNEL_PORTS")
            };
            let mut forwards = vec![workflows::Forward {
                service: service(3000),
                remote_port: 3000,
                local_port: args.grafana_port,
            }];
            if args.prometheus {
                forwards.push(workflows::Forward {
                    service: service(9090),
                    remote_port: 9090,
                    local_port: args.prometheus_port,
                });
            }
            let ready = |bound: &[workflows::BoundForward]| {
                output::print_forwards(bound);
                let _ = writeln!(
                    std::io::stderr(),
                    "forwarding through the monitoring machine's agent (mTLS); press Ctrl-C to stop"
                );
            };
            workflows::monitoring(
                &home,
                &tag,
                &forwards,
                |d| context.make(d),
                ready,
                stop_signal(),
            )
            .await?;
            Ok(exit::OK)
        }
        Command::Keepalive(args) => {
            let tag = target_tag(&args.target)?;
            let home = home()?;
            let context = existing_context(&home, &environment, &tag).await?;
            let rows = workflows::keepalive(&home, &tag, workflows::DEFAULT_CONCURRENCY, |d| {
                context.make(d)
            })
            .await?;
            match args.output.output {
                OutputFormat::Json => output::print_json(&rows),
                OutputFormat::Table => output::print_keepalive(&rows),
            }
            Ok(if rows.iter().all(|r| r.error.is_none()) { exit::OK } else { exit::FAILED })
        }
        Command::Logs(args) => {
            let tag = target_tag(&args.target)?;
            let home = home()?;
            let context = existing_context(&home, &environment, &tag).await?;
            let mut stdout = std::io::stdout();
            workflows::logs(&home, &tag, &args.name, args.lines, args.follow, &mut stdout, |d| {
                context.make(d)
            })
            .await?;
            Ok(exit::OK)
        }
        Command::Profile(args) => {
            let tag = target_tag(&args.target)?;
            let home = home()?;
            let context = existing_context(&home, &environment, &tag).await?;
            // The build is read before anything is recorded: a wrong path fails at once.
            let symbols = match &args.binary {
                Some(path) => Some(
                    crate::symbolicate::Symbols::read(path)
                        .map_err(|e| CoreError::Refused(format!("--binary: {e:#}")))?,
                ),
                None => None,
            };
            output::print_profile_start(&args.name, args.duration, args.frequency);
            let profile =
                workflows::profile(&home, &tag, &args.name, args.duration, args.frequency, |d| {
                    context.make(d)
                })
                .await?;
            let path = args.output.clone().unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                std::path::PathBuf::from(format!("{}-{now}.perf.txt", args.name))
            });
            let profile = match (&symbols, &args.binary) {
                (Some(symbols), Some(binary)) => {
                    let text = String::from_utf8_lossy(&profile);
                    let (text, named) = crate::symbolicate::symbolicate(&text, symbols);
                    output::print_profile_symbols(binary, &args.name, named);
                    text.into_bytes()
                }
                _ => profile,
            };
            fs_err::write(&path, &profile)?;
            let samples = profile
                .split(|b| *b == b'\n')
                .filter(|l| l.first().is_some_and(|c| !c.is_ascii_whitespace()))
                .count();
            output::print_profile_written(&path, samples);
            Ok(exit::OK)
        }
        Command::Authorize(args) => {
            let tag = target_tag(&args.target)?;
            let home = home()?;
            let deployment = home.open(&tag)?;
            let kind = deployment.metadata()?.provider;
            if kind != ProviderKind::Aws {
                return Err(CoreError::Refused(format!(
                    "deployment `{tag}` runs on the {kind} provider; authorize applies to aws deployments, whose agents only admit listed addresses"
                )));
            }
            // authorize writes the provider's records, which a create running at the same time
            // would overwrite: it works under the deployment's lock like every other change.
            let _lock = deployment.lock()?;
            let context = ProviderContext::new(kind, &home, &environment, args.ip).await;
            let providers::AnyProvider::Aws(provider) = context.make(&deployment)? else {
                unreachable!("the context was built for aws")
            };
            let (ip, revoke) = match args.revoke {
                Some(ip) => (ip, true),
                None => (provider.current_deployer_ip().await?, false),
            };
            let changed = provider.authorize(ip, revoke).await?;
            let mut stderr = std::io::stderr().lock();
            let verb = if revoke { "revoked from" } else { "authorized in" };
            let _ = writeln!(
                stderr,
                "{ip}: {verb} {changed} security group{}",
                if changed == 1 { "" } else { "s" }
            );
            Ok(exit::OK)
        }
        Command::Clean(args) => {
            let home = home()?;
            // A deployment whose metadata cannot be read may be an AWS one: it counts as live.
            let live: Vec<String> = workflows::list(&home)?
                .into_iter()
                .filter_map(|entry| match entry {
                    Ok(m) => (m.provider == ProviderKind::Aws
                        && m.status != flotilla_core::state::DeploymentStatus::Destroyed)
                        .then_some(m.tag),
                    Err((tag, _)) => Some(format!("{tag} (unreadable metadata)")),
                })
                .collect();
            if !live.is_empty() && !args.force {
                return Err(CoreError::Refused(format!(
                    "deployments still use the bucket: {}; destroy them first, or clean --force",
                    live.join(", ")
                )));
            }
            let clients = flotilla_aws::Clients::load(
                environment.aws_endpoint_url.clone(),
                environment.emulator_public_ips.clone(),
            )
            .await;
            let mut stderr = std::io::stderr().lock();
            match flotilla_aws::clean(&clients, home.root()).await? {
                Some((bucket, objects)) => {
                    let _ = writeln!(stderr, "deleted bucket {bucket} ({objects} objects)");
                }
                None => {
                    let _ = writeln!(stderr, "no bucket to clean");
                }
            }
            Ok(exit::OK)
        }
        Command::List(args) => {
            let deployments: Vec<output::ListRow> =
                workflows::list(&home()?)?.into_iter().map(output::ListRow::new).collect();
            match args.output {
                OutputFormat::Json => output::print_json(&deployments),
                OutputFormat::Table => output::print_list(&deployments),
            }
            Ok(exit::OK)
        }
        Command::Validate(args) => validate(&args.config, args.output.output),
        Command::Fleetd(FleetdArgs { command: None, .. }) => {
            unreachable!("`run` runs fleetd before the runtime starts")
        }
        Command::Simulate(_) => unreachable!("`run` runs simulate without the runtime"),
        Command::Fleetd(FleetdArgs { command: Some(FleetdCommand::CheckConfig(args)), .. }) => {
            Ok(crate::fleetd::check_config(&args.file, args.output.output))
        }
        Command::Schema(args) => {
            let schema = match args.kind {
                SchemaKind::Fleet => flotilla_spec::schema::fleet_schema(),
                SchemaKind::AgentBootstrap => flotilla_spec::schema::bootstrap_schema(),
                SchemaKind::Manifest => flotilla_spec::schema::manifest_schema(),
            };
            output::print_json(&schema);
            Ok(exit::OK)
        }
        Command::Agent(_) => unreachable!("the agent runs without the CLI's runtime"),
    }
}

/// The provider context of an existing deployment, whose metadata names its provider.
async fn existing_context(
    home: &Home,
    environment: &Environment,
    tag: &str,
) -> Result<ProviderContext, CoreError> {
    let kind = home.open(tag)?.metadata()?.provider;
    Ok(ProviderContext::new(kind, home, environment, None).await)
}

fn print_rows(rows: &[workflows::StatusRow], format: OutputFormat) {
    match format {
        OutputFormat::Json => output::print_json(rows),
        OutputFormat::Table => output::print_status(rows),
    }
}

/// `validate`: the spec's own rules, then the files it names. Diagnostics are the output.
fn validate(path: &Path, format: OutputFormat) -> Result<u8, CoreError> {
    let result = flotilla_spec::load_fleet_spec(path).and_then(|document| {
        let cwd = current_dir().map_err(|e| SpecErrors {
            diagnostics: vec![flotilla_spec::Diagnostic::error(path, None, "", e.to_string())],
        })?;
        // The files, then what needs no catalog: the binaries' architectures against the
        // listed types' (by name), for a spec that names AWS.
        let checked = workflows::check_files(&document, &cwd).and_then(|()| {
            let architectures = flotilla_core::capacity::binary_architectures(&document, &cwd)?;
            let provider = document.spec.provider_kind(None);
            if provider == ProviderKind::Aws {
                flotilla_core::capacity::check_listed_architectures(&document, &architectures)?;
            }
            // What the machines cannot run there (volumes, records and notifications need a
            // cloud), as `plan` and `create` refuse it.
            workflows::lifecycle::refuse_unsupported_lifecycle(&document, provider, &cwd)?;
            Ok(())
        });
        match checked {
            Ok(()) => Ok(document),
            Err(CoreError::Invalid(errors)) => Err(errors),
            Err(other) => Err(SpecErrors {
                diagnostics: vec![flotilla_spec::Diagnostic::error(
                    path,
                    None,
                    "",
                    other.to_string(),
                )],
            }),
        }
    });
    let (valid, diagnostics) = match &result {
        Ok(document) => (true, document.warnings.clone()),
        Err(errors) => (false, errors.diagnostics.clone()),
    };
    match format {
        OutputFormat::Json => output::print_json(&serde_json::json!({
            "file": path,
            "valid": valid,
            "diagnostics": diagnostics,
        })),
        OutputFormat::Table => {
            let mut stdout = std::io::stdout().lock();
            for diagnostic in &diagnostics {
                let _ = writeln!(stdout, "{diagnostic}");
            }
            let errors =
                diagnostics.iter().filter(|d| d.severity == flotilla_spec::Severity::Error).count();
            let warnings = diagnostics.len() - errors;
            let _ = writeln!(
                stdout,
                "{}: {}",
                escape_for_terminal(&path.display().to_string()),
                if valid {
                    format!("valid ({warnings} warning{})", if warnings == 1 { "" } else { "s" })
                } else {
                    format!(
                        "{errors} error{}, {warnings} warning{}",
                        if errors == 1 { "" } else { "s" },
                        if warnings == 1 { "" } else { "s" }
                    )
                }
            );
        }
    }
    Ok(if valid { exit::OK } else { exit::ERROR })
}

/// `flotilla snapshot` and `flotilla image`: a capture of one machine; prints the ids made.
async fn capture(
    target: &Target,
    name: &str,
    kind: workflows::CaptureKind,
    stop: bool,
    format: OutputFormat,
    environment: &Environment,
) -> Result<u8, CoreError> {
    let tag = target_tag(target)?;
    let home = environment.home()?;
    let context = existing_context(&home, environment, &tag).await?;
    let kind_of = home.open(&tag)?.metadata()?.provider;
    let bars = Bars::new(environment.halt_at.clone());
    let request = workflows::CaptureRequest {
        name: name.to_owned(),
        kind,
        stop,
        agent_timeout: agent_timeout(kind_of, environment),
    };
    let report = workflows::capture(&home, &tag, &request, &bars, |d| context.make(d)).await?;
    drop(bars);
    match format {
        OutputFormat::Json => output::print_json(&report),
        OutputFormat::Table => output::print_capture(&report),
    }
    Ok(exit::OK)
}

/// `flotilla notice`: writes the notice into the machine's rehearsal IMDS (local provider).
async fn notice(
    args: &crate::cli::NoticeArgs,
    home: &flotilla_core::state::Home,
    environment: &Environment,
) -> Result<u8, CoreError> {
    use crate::cli::NoticeKind;
    use flotilla_spec::imds::{
        RebalanceRecommendation, RehearsalNotices, ScheduledEvent, SpotInstanceAction,
    };
    let tag = target_tag(&args.target)?;
    let deployment = home.open(&tag)?;
    let kind = deployment.metadata()?.provider;
    if kind != ProviderKind::Local {
        return Err(CoreError::Refused(format!(
            "deployment `{tag}` runs on the {kind} provider: flotilla serves notices only to local machines' rehearsal IMDS; on AWS, rehearse a spot interruption with AWS Fault Injection Service: an experiment template with the action `aws:ec2:send-spot-instance-interruptions` targeting the instance (tag `flotilla:deployment={tag}`), then `aws fis start-experiment`"
        )));
    }
    let context = ProviderContext::new(kind, home, environment, None).await;
    let providers::AnyProvider::Local(provider) = context.make(&deployment)? else {
        unreachable!("the context was built for the local provider")
    };
    let now = std::time::SystemTime::now();
    let at = |default: std::time::Duration| now + args.in_.unwrap_or(default);
    let rfc3339 = |time| humantime::format_rfc3339_seconds(time).to_string();
    let mut notices = RehearsalNotices::default();
    match args.kind {
        NoticeKind::Spot => {
            notices.spot = Some(SpotInstanceAction {
                action: "terminate".to_owned(),
                time: rfc3339(at(std::time::Duration::from_secs(120))),
            });
        }
        NoticeKind::Rebalance => {
            notices.rebalance = Some(RebalanceRecommendation {
                notice_time: rfc3339(at(std::time::Duration::ZERO)),
            });
        }
        NoticeKind::Scheduled => {
            let start = at(std::time::Duration::ZERO);
            notices.scheduled = vec![ScheduledEvent {
                code: args.code.clone(),
                description: format!("rehearsal of {}", args.code),
                event_id: format!(
                    "instance-event-{:x}",
                    now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
                ),
                not_before: imds_time(start),
                not_after: imds_time(start + std::time::Duration::from_secs(7 * 24 * 3600)),
                state: "active".to_owned(),
            }];
        }
    }
    let path = provider.serve_notices(&args.name, &notices)?;
    if args.output.output == OutputFormat::Json {
        let json = serde_json::json!({ "name": args.name, "notices": notices, "file": path });
        crate::output::print_json(&json);
    } else {
        tracing::info!("{}: serving a {:?} notice from {}", args.name, args.kind, path.display());
    }
    Ok(exit::OK)
}

/// IMDS's layout for scheduled events: `21 Jan 2026 09:00:43 GMT`.
fn imds_time(time: std::time::SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(time).to_string();
    // 2026-01-21T09:00:43Z
    let (date, clock) = text.trim_end_matches('Z').split_once('T').unwrap_or((&text, ""));
    let mut parts = date.split('-');
    let (year, month, day) = (parts.next(), parts.next(), parts.next());
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = month
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    format!("{} {month} {} {clock} GMT", day.unwrap_or("01"), year.unwrap_or("1970"))
}

/// Resolves at the first SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        // Without signal handlers the default action (exit) stops the command all the same.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
