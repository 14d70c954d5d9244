//! `flotilla fleetd`: the standalone daemon (`flotilla_agent::fleetd_daemon`) with ec2fleetd's
//! command line, and `check-config`: an ec2fleetd config checked, then what it will do.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use flotilla_core::error::exit;
use flotilla_spec::Severity;
use flotilla_spec::diagnostic::escape_for_terminal;
use flotilla_spec::fleetd::{
    EVENTS, FleetdConfig, FleetdDocument, NotifyBackend, VolumeSource, load_fleetd_config,
};

use crate::cli::{FleetdArgs, OutputFormat};

/// The default directory of fleetd's holds, when systemd sets no `$STATE_DIRECTORY`.
const DEFAULT_STATE_DIR: &str = "/var/lib/flotilla-fleetd";

/// Runs standalone fleetd; the exit status (`flotilla_agent::fleetd_daemon`'s codes).
pub fn run_daemon(args: FleetdArgs) -> u8 {
    if args.show_version {
        let version = format!("flotilla fleetd {}\n", env!("CARGO_PKG_VERSION"));
        let _ = std::io::stdout().lock().write_all(version.as_bytes());
        return exit::OK;
    }
    let enabled = |flag: Option<bool>| flag.unwrap_or(!args.disable_all);
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::var_os(crate::env::STATE_DIRECTORY)
            .filter(|dir| !dir.is_empty())
            .map(|dir| {
                // systemd lists several directories separated by `:`; the first is ours.
                let dir = dir.to_string_lossy().into_owned();
                std::path::PathBuf::from(dir.split(':').next().unwrap_or_default())
            })
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
    });
    let options = flotilla_agent::fleetd_daemon::FleetdOptions {
        userdata: args.userdata.clone(),
        imds: args.imds.clone(),
        transaction_id: args.transc_id.clone(),
        profile: args.profile.clone(),
        enable_init: enabled(args.enable_init),
        enable_notify: enabled(args.enable_notify),
        enable_exec: enabled(args.enable_exec),
        enable_poll: enabled(args.enable_poll),
        state_dir,
        device_root: args.device_root.clone().unwrap_or_else(|| "/".into()),
        imds_wait: args.imds_wait,
        make_cloud: machine_cloud(),
    };
    flotilla_agent::fleetd_daemon::run_fleetd(options)
}

/// How fleetd makes its machine cloud: flotilla-aws's, made only when the config needs AWS
/// calls, once IMDS gave the region.
/// The region is each call's; `--profile` picks the credentials.
fn machine_cloud() -> Option<flotilla_agent::fleetd_daemon::MakeCloud> {
    Some(Box::new(|setup: &flotilla_agent::fleetd_daemon::CloudSetup| {
        Ok(flotilla_aws::LazyAwsMachineCloud::shared(setup.profile.clone()))
    }))
}

/// Checks `file` and prints the diagnostics, and for a valid config its plan. Returns the exit
/// status: OK when valid, ERROR when not.
pub fn check_config(file: &Path, format: OutputFormat) -> u8 {
    let result = load_fleetd_config(file);
    let (valid, diagnostics) = match &result {
        Ok(document) => (true, document.warnings.clone()),
        Err(errors) => (false, errors.diagnostics.clone()),
    };
    match format {
        OutputFormat::Json => {
            let document = result.as_ref().ok();
            crate::output::print_json(&serde_json::json!({
                "file": file,
                "valid": valid,
                "diagnostics": diagnostics,
                "config": document.map(|d| &d.config),
                "aws_actions": document.map(|d| d.config.aws_actions()),
                "differences": document.map(|d| &d.differences),
                "iam_policy": document
                    .filter(|d| !d.config.aws_actions().is_empty())
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(&flotilla_aws::machine::policy::fleetd_policy(&d.config)).ok()),
            }));
        }
        OutputFormat::Table => {
            let mut out = String::new();
            for diagnostic in &diagnostics {
                let _ = writeln!(out, "{diagnostic}");
            }
            let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
            let warnings = diagnostics.len() - errors;
            let shown = file.display().to_string();
            let name = escape_for_terminal(&shown);
            if valid {
                let _ = writeln!(out, "{name}: valid ({warnings} warning{})", plural(warnings));
            } else {
                let _ = writeln!(
                    out,
                    "{name}: {errors} error{}, {warnings} warning{}",
                    plural(errors),
                    plural(warnings)
                );
            }
            if let Ok(document) = &result {
                out.push('\n');
                out.push_str(&render_plan(document));
                if !document.config.aws_actions().is_empty() {
                    let _ = writeln!(
                        out,
                        "\nIAM policy for the instance role of a machine running `flotilla fleetd` with this config:\n{}",
                        flotilla_aws::machine::policy::fleetd_policy(&document.config)
                    );
                }
            }
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
        }
    }
    if valid { exit::OK } else { exit::ERROR }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What the config asks for, as flotilla reads it, for people.
pub fn render_plan(document: &FleetdDocument) -> String {
    let config: &FleetdConfig = &document.config;
    let e = escape_for_terminal;
    let mut out = String::new();
    for domain in &config.domains {
        let _ = writeln!(out, "domain {}", e(&domain.name));
        for volume in &domain.attach_volume {
            let how: Vec<String> = volume
                .source
                .iter()
                .map(|source| match source {
                    VolumeSource::Fixed => {
                        format!("x: volume {}", e(volume.volume_id.as_deref().unwrap_or_default()))
                    }
                    VolumeSource::Pool => format!(
                        "p: a free volume of pool {} in the machine's zone ({:?} preference)",
                        e(volume.pool_name.as_deref().unwrap_or_default()),
                        volume.pool_pref
                    ),
                    VolumeSource::Create => format!(
                        "c: a new volume ({}), which joins pool {}",
                        e(&serde_json::Value::Object(volume.create.clone().unwrap_or_default())
                            .to_string()),
                        e(volume.pool_name.as_deref().unwrap_or_default())
                    ),
                })
                .collect();
            let _ = writeln!(
                out,
                "  volume at {}{}: tried in order",
                e(&volume.device),
                if volume.critical {
                    ""
                } else {
                    " (not critical: on failure, undone and skipped)"
                }
            );
            for line in how {
                let _ = writeln!(out, "    {line}");
            }
            for spec in &volume.exec {
                let when = match &spec.on {
                    None => "once attached".to_owned(),
                    Some(events) => format!(
                        "on {}",
                        events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                };
                for line in &spec.lines {
                    let _ = writeln!(
                        out,
                        "    hook {when}: {}   exit codes {}",
                        e(&line.argv.join(" ")),
                        line.ec.describe()
                    );
                }
            }
        }
        for record in &domain.update_route53 {
            let _ = writeln!(
                out,
                "  record {} A → the machine's {} address, TTL {} in zone {}{}{}",
                e(&record.name),
                match record.address {
                    flotilla_spec::fleetd::RecordAddress::Public => "public",
                    flotilla_spec::fleetd::RecordAddress::Private => "private",
                },
                record.ttl,
                e(&record.hosted_zone),
                if record.wait_insync { ", waiting for INSYNC" } else { "" },
                if record.critical { "" } else { " (not critical)" }
            );
        }
        for (name, event) in EVENTS {
            let hooks = FleetdConfig::hooks_on(domain, event);
            if hooks.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  on {name}:");
            for line in hooks {
                let timeout = line
                    .timeout
                    .map(|t| format!(", killed after {}", humantime::format_duration(t)))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {}   exit codes {}{timeout}",
                    e(&line.argv.join(" ")),
                    line.ec.describe()
                );
            }
        }
        for notify in &domain.notify {
            let target = match notify.backend {
                NotifyBackend::Sns => {
                    format!("SNS topic {}", e(notify.topic.as_deref().unwrap_or_default()))
                }
                NotifyBackend::Sqs => {
                    format!("SQS queue {}", e(notify.queue_url.as_deref().unwrap_or_default()))
                }
            };
            let on: Vec<&str> =
                EVENTS.iter().filter(|(_, ev)| notify.sends_on(*ev)).map(|(n, _)| *n).collect();
            let _ = writeln!(out, "  notify {target} on {}", on.join(", "));
        }
    }
    if let Some(hostname) = &config.hostname {
        let _ = writeln!(out, "hostname {} once every domain is up", e(hostname));
    }
    if let Some(timeout) = config.timeout {
        let _ =
            writeln!(out, "the domains must be up within {}", humantime::format_duration(timeout));
    }
    let actions = config.aws_actions();
    let actions = if actions.is_empty() { "none".to_owned() } else { actions.join(", ") };
    let _ = writeln!(out, "AWS calls: {actions}");
    if !document.differences.is_empty() {
        let _ = writeln!(out, "where flotilla differs from ec2fleetd:");
        for difference in &document.differences {
            let at = difference.location.map(|l| format!(" (line {})", l.line)).unwrap_or_default();
            let _ = writeln!(out, "  {}{at}: {}", e(&difference.field), difference.note);
        }
    }
    out
}
