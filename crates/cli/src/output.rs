//! What commands print on stdout: aligned tables for people, JSON for scripts.
//!
//! stdout carries only data; logs, progress and error messages go to stderr.

#![allow(clippy::print_stdout)] // This module is where data is written to stdout.

use std::io::Write;

use flotilla_core::state::{Listed, Metadata};
use flotilla_core::workflows::StatusRow;
use flotilla_spec::api::BootOutcome;
use flotilla_spec::diagnostic::escape_for_terminal;
use serde::Serialize;

/// Prints rows as columns separated by two spaces, the header first. Cells are shown through
/// [`escape_for_terminal`]: a note may quote a binary's output.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape_for_terminal(cell).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// Prints a value as pretty JSON.
pub fn print_json<T: Serialize + ?Sized>(value: &T) {
    let json = serde_json::to_string_pretty(value).expect("output values serialize to JSON");
    println!("{json}");
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

/// A duration in seconds as `3d4h`, `5h2m`, `4m10s` or `9s`.
pub fn short_duration(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// The `status` table; cloud machines also show their type, zone, market and price.
pub fn print_status(rows: &[StatusRow]) {
    let placed = rows.iter().any(|row| row.instance_type.is_some());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let note = row
                .state_reason
                .clone()
                .filter(|_| row.state != "running")
                .or_else(|| row.watch.clone())
                .or_else(|| row.error.clone())
                .or_else(|| row.health_error.clone())
                .or_else(|| alerts_note(row))
                .or_else(|| boot_note(row))
                .or_else(|| services_note(row))
                .or_else(|| lifecycle_note(row))
                .or_else(|| {
                    row.rollout.as_ref().and_then(|r| {
                        r.reason.as_ref().map(|reason| {
                            format!(
                                "version {} {}: {reason}",
                                flotilla_spec::manifest::short_version(&r.version),
                                match r.phase {
                                    flotilla_spec::api::RolloutPhase::RolledBack => "rolled back",
                                    _ => "failed",
                                }
                            )
                        })
                    })
                })
                .unwrap_or_default();
            let mut cells = vec![
                row.name.clone(),
                row.region.clone(),
                row.ip.to_string(),
                row.state.clone(),
                or_dash(row.health.as_ref()),
                or_dash(row.version.as_ref()),
                or_dash(row.hosts.as_ref()),
                or_dash(row.restarts),
                or_dash(row.uptime_secs.map(short_duration)),
            ];
            if placed {
                cells.extend([
                    or_dash(row.instance_type.as_ref()),
                    or_dash(row.zone.as_ref()),
                    or_dash(row.market.map(|m| m.as_str())),
                    or_dash(row.usd_per_hour.map(|usd| format!("{usd:.4}"))),
                ]);
            }
            cells.push(note);
            cells
        })
        .collect();
    let mut header =
        vec!["NAME", "REGION", "IP", "STATE", "HEALTH", "VERSION", "HOSTS", "RESTARTS", "UPTIME"];
    if placed {
        header.extend(["TYPE", "ZONE", "MARKET", "USD/HOUR"]);
    }
    header.push("NOTE");
    print_table(&header, &table);
    print_boot_failures(rows);
}

/// `update --dry-run`: each machine and what the update would do to its membership.
pub fn print_membership(change: &flotilla_core::workflows::MembershipChange) {
    let mut table: Vec<Vec<String>> = Vec::new();
    let hosts_change = change.changes_membership();
    for name in &change.added {
        table.push(vec![name.clone(), "add".to_owned(), "launched and started".to_owned()]);
    }
    for name in &change.kept {
        let note = if hosts_change {
            "gets the new hosts.yaml (and the new version, if any), as on_hosts_change says"
        } else {
            "gets the new version, if any"
        };
        table.push(vec![name.clone(), "keep".to_owned(), note.to_owned()]);
    }
    for name in &change.removed {
        table.push(vec![name.clone(), "remove".to_owned(), "drained, then retired".to_owned()]);
    }
    print_table(&["NAME", "CHANGE", "WHAT HAPPENS"], &table);
}

/// One `watch` event: a JSON line on stdout for scripts, or (without `--output json`) a line of
/// log on stderr. Written and flushed at once, so a reader sees each event as it happens.
pub fn print_watch_event(
    event: &flotilla_core::workflows::WatchEvent,
    format: crate::cli::OutputFormat,
) {
    let line = match format {
        crate::cli::OutputFormat::Json => {
            serde_json::to_string(event).expect("watch events serialize to JSON")
        }
        crate::cli::OutputFormat::Table => escape_for_terminal(&format!(
            "{} {}{}: {} ({})",
            event.at,
            event.machine.as_ref().map(|m| format!("{m}: ")).unwrap_or_default(),
            event.what,
            event.action,
            event.outcome
        ))
        .into_owned(),
    };
    if format == crate::cli::OutputFormat::Json {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    } else {
        let _ = writeln!(std::io::stderr().lock(), "watch: {line}");
    }
}

/// `keepalive`: each machine's keepalive, now reset.
pub fn print_keepalive(rows: &[flotilla_core::workflows::KeepaliveRow]) {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let keepalive = row
                .keepalive
                .as_ref()
                .map(|k| k.limit_secs.map(short_duration).unwrap_or_else(|| "none".to_owned()));
            vec![
                row.name.clone(),
                keepalive.unwrap_or_else(|| "-".to_owned()),
                row.error.clone().unwrap_or_else(|| "reset".to_owned()),
            ]
        })
        .collect();
    print_table(&["NAME", "KEEPALIVE", "NOTE"], &table);
}

/// `snapshot` and `image`: one row per snapshot or image made.
pub fn print_capture(report: &flotilla_core::workflows::CaptureReport) {
    let mut table: Vec<Vec<String>> = report
        .snapshots
        .iter()
        .map(|s| {
            let disk = if s.root { format!("{} (root)", s.device) } else { s.device.clone() };
            vec![s.snapshot_id.clone(), disk, format!("{} GiB from {}", s.size_gib, s.volume_id)]
        })
        .collect();
    if let Some(image) = &report.image {
        let mut note = format!("{} in {}", image.name, image.region);
        if image.encrypted {
            note.push_str(", encrypted");
        }
        if let Some(removed) = &image.removed_intermediate {
            note.push_str(&format!(", unencrypted {removed} removed"));
        }
        table.push(vec![image.image_id.clone(), "image".to_owned(), note]);
    }
    print_table(&["ID", "OF", "NOTE"], &table);
    if report.stopped {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(
            stderr,
            "{}: stopped for {} and running again at {}",
            escape_for_terminal(&report.machine),
            report.capture,
            report.public_ip
        );
    }
}

/// The NOTE of a machine with alerts firing: each alert's name and summary.
fn alerts_note(row: &StatusRow) -> Option<String> {
    let firing: Vec<String> = row
        .alerts
        .iter()
        .map(|alert| match &alert.summary {
            Some(summary) => format!("alert {}: {summary}", alert.alert),
            None => format!("alert {}", alert.alert),
        })
        .collect();
    (!firing.is_empty()).then(|| firing.join("; "))
}

/// The NOTE of a machine whose services are not all healthy: each such service and its state.
fn services_note(row: &StatusRow) -> Option<String> {
    let unwell: Vec<String> = row
        .services
        .iter()
        .filter(|service| service.state != flotilla_spec::api::BinaryState::Healthy)
        .map(|service| {
            let why = service.health_error.as_ref().or(service.last_exit.as_ref());
            match why {
                Some(why) => format!("service {} {}: {why}", service.name, service.state.as_str()),
                None => format!("service {} {}", service.name, service.state.as_str()),
            }
        })
        .collect();
    (!unwell.is_empty()).then(|| unwell.join("; "))
}

/// The NOTE of a machine whose lifecycle saw an event: the last one, and failed hooks.
fn lifecycle_note(row: &StatusRow) -> Option<String> {
    let lifecycle = row.lifecycle.as_ref()?;
    let last = lifecycle.last_event.as_ref()?;
    let failed = lifecycle
        .hooks
        .iter()
        .filter(|h| h.outcome != flotilla_spec::api::HookOutcome::Succeeded)
        .count();
    let failed = if failed == 0 { String::new() } else { format!(", {failed} hook lines failed") };
    Some(format!("last event {}: {}{failed}", last.event, last.detail))
}

/// The NOTE of a machine whose boot additions failed: the step and how.
fn boot_note(row: &StatusRow) -> Option<String> {
    let boot = row.boot.as_ref()?;
    let step = boot.first_failure()?;
    let effect = if boot.blocked { "the binary was not started" } else { "not critical" };
    Some(format!(
        "boot {} `{}` failed{} ({effect})",
        step.kind.as_str(),
        step.target,
        step.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
    ))
}

/// Below the table, each failed boot step with the end of its output, one line at a time.
fn print_boot_failures(rows: &[StatusRow]) {
    let mut out = std::io::stdout().lock();
    for row in rows {
        let Some(boot) = &row.boot else { continue };
        for step in boot.steps.iter().filter(|s| s.outcome == BootOutcome::Failed) {
            let _ = writeln!(
                out,
                "\n{}: boot {} `{}` failed{}{}",
                escape_for_terminal(&row.name),
                step.kind.as_str(),
                escape_for_terminal(&step.target),
                step.message
                    .as_ref()
                    .map(|m| format!(": {}", escape_for_terminal(m)))
                    .unwrap_or_default(),
                if step.critical { "" } else { " (not critical)" }
            );
            if let Some(output) = step.output.as_deref().filter(|o| !o.is_empty()) {
                let _ = writeln!(out, "  output (last {} bytes at most):", 4096);
                for line in output.lines() {
                    let _ = writeln!(out, "  | {}", escape_for_terminal(line));
                }
            }
        }
    }
}

/// The `plan` table: one row per placement of each group, then the total, the warnings and
/// the notes.
pub fn print_plan(report: &flotilla_core::workflows::PlanReport) {
    let money = |usd: Option<f64>| usd.map_or_else(|| "?".to_owned(), |usd| format!("{usd:.4}"));
    let mut rows = Vec::new();
    for group in &report.groups {
        let types = if group.eligible_types.len() > 3 {
            format!(
                "{}, … ({} types)",
                group.eligible_types[..3].join(", "),
                group.eligible_types.len()
            )
        } else {
            group.eligible_types.join(", ")
        };
        for (i, placement) in group.placements.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first { group.name.clone() } else { String::new() },
                if first { group.region.clone() } else { String::new() },
                if first { group.market.to_string() } else { String::new() },
                if first { types.clone() } else { String::new() },
                placement.zone.clone(),
                format!("{} × {} {}", placement.count, placement.instance_type, placement.market),
                money(placement.usd_per_hour.map(|usd| usd * placement.count as f64)),
            ]);
        }
    }
    rows.push(vec![
        "TOTAL".to_owned(),
        String::new(),
        String::new(),
        format!("{} machines", report.machines),
        String::new(),
        String::new(),
        format!("{:.4} (${:.2}/month)", report.usd_per_hour, report.usd_per_month),
    ]);
    print_table(&["GROUP", "REGION", "MARKET", "TYPES", "ZONE", "MACHINES", "USD/HOUR"], &rows);
    let mut out = std::io::stdout().lock();
    for group in &report.groups {
        if group.kernel_settings.is_empty() {
            continue;
        }
        let settings: Vec<String> =
            group.kernel_settings.iter().map(|(key, value)| format!("{key}={value}")).collect();
        let default = if group.network_tuning {
            " (the network tuning, BBR and fq, is on by default on AWS; `boot: {tune_network: false}` leaves it out)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "boot: {}: sysctl {}{default}",
            group.name,
            escape_for_terminal(&settings.join(", "))
        );
    }
    for group in &report.groups {
        for warning in &group.warnings {
            let _ = writeln!(out, "warning: {}: {}", group.name, escape_for_terminal(warning));
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {}", escape_for_terminal(note));
    }
}

/// One deployment as `list` shows it: its metadata, or, when that cannot be read, its tag,
/// `status: unreadable` and why (`--output json` prints these fields).
#[derive(Debug, Serialize)]
pub struct ListRow {
    pub tag: String,
    #[serde(flatten)]
    pub metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ListRow {
    pub fn new(entry: Listed) -> ListRow {
        match entry {
            Ok(metadata) => ListRow {
                tag: metadata.tag.clone(),
                metadata: Some(metadata),
                status: None,
                error: None,
            },
            Err((tag, error)) => ListRow {
                tag,
                metadata: None,
                status: Some("unreadable"),
                error: Some(error.to_string()),
            },
        }
    }
}

/// The `list` table; an unreadable deployment's error is its note.
pub fn print_list(deployments: &[ListRow]) {
    let rows: Vec<Vec<String>> = deployments
        .iter()
        .map(|row| match &row.metadata {
            Some(m) => {
                let created = std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.created_at);
                vec![
                    m.tag.clone(),
                    m.provider.to_string(),
                    humantime::format_rfc3339_seconds(created).to_string(),
                    m.instance_count.to_string(),
                    m.status.as_str().to_owned(),
                    m.regions.join(","),
                    or_dash(m.usd_per_hour.map(|usd| format!("{usd:.4}"))),
                    String::new(),
                ]
            }
            None => vec![
                row.tag.clone(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "unreadable".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                row.error.clone().unwrap_or_default(),
            ],
        })
        .collect();
    print_table(
        &["TAG", "PROVIDER", "CREATED", "INSTANCES", "STATE", "REGIONS", "USD/HOUR", "NOTE"],
        &rows,
    );
}

/// `profile`: what is being recorded (stderr, for people).
pub fn print_profile_start(name: &str, duration: std::time::Duration, frequency: u32) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "recording {} of {}'s binary at {frequency} Hz",
        humantime::format_duration(duration),
        escape_for_terminal(name)
    );
}

/// `profile`: the file written (stdout, for scripts) and how to open it (stderr).
pub fn print_profile_written(path: &std::path::Path, samples: usize) {
    let _ = writeln!(std::io::stdout().lock(), "{}", path.display());
    let _ = writeln!(
        std::io::stderr().lock(),
        "{samples} samples written to {}; open https://profiler.firefox.com, choose \"Load a profile from file\" and pick it (the Linux perf format)",
        path.display()
    );
}

/// What `--binary` named in a profile: frames named, or why none were.
pub fn print_profile_symbols(
    binary: &std::path::Path,
    name: &str,
    named: crate::symbolicate::Named,
) {
    let mut stderr = std::io::stderr().lock();
    let _ = if named.frames == 0 {
        writeln!(
            stderr,
            "no frame of the profile is in {name}'s binary (it was idle, or it is a script and its interpreter ran), so {} named nothing",
            binary.display()
        )
    } else if named.named == 0 {
        writeln!(
            stderr,
            "none of the {} frames in {name}'s binary fall in a function of {}: is it the build that runs on {name}?",
            named.frames,
            binary.display()
        )
    } else {
        writeln!(
            stderr,
            "{} of {} frames in {name}'s binary named from {}",
            named.named,
            named.frames,
            binary.display()
        )
    };
}

/// `flotilla monitoring`'s URLs, one line per service: `grafana http://127.0.0.1:3000/`.
pub fn print_forwards(bound: &[flotilla_core::workflows::BoundForward]) {
    let mut stdout = std::io::stdout().lock();
    for forward in bound {
        let _ = writeln!(stdout, "{} http://{}/", forward.forward.service, forward.local);
    }
    let _ = stdout.flush();
}

/// A Unix time as `2026-12-04T20:04:13Z`.
fn unix_rfc3339(seconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The hosts `destroy` could not release yet, for `--output json`: each with its id, region,
/// zone, type, when it may go (Unix seconds and RFC 3339) and AWS's answer.
pub fn held_hosts_json(held: &[flotilla_core::provider::HeldHost]) -> serde_json::Value {
    held.iter()
        .map(|host| {
            serde_json::json!({
                "id": host.id,
                "region": host.region,
                "zone": host.zone,
                "instance_type": host.instance_type,
                "releasable_at": host.releasable_at,
                "releasable_at_rfc3339": unix_rfc3339(host.releasable_at),
                "reason": host.reason,
            })
        })
        .collect()
}

/// Tells a person which dedicated hosts are still held and when each can go.
pub fn print_held_hosts(
    out: &mut impl Write,
    tag: &str,
    held: &[flotilla_core::provider::HeldHost],
) -> std::io::Result<()> {
    writeln!(
        out,
        "deployment {tag}: everything is gone but {} dedicated host(s) that AWS does not release before 24 hours after their allocation:",
        held.len()
    )?;
    for host in held {
        writeln!(
            out,
            "  {} ({}, {} {}): can go at {}",
            escape_for_terminal(&host.id),
            escape_for_terminal(&host.instance_type),
            escape_for_terminal(&host.region),
            escape_for_terminal(&host.zone),
            unix_rfc3339(host.releasable_at)
        )?;
    }
    let last = held.iter().map(|h| h.releasable_at).max().unwrap_or(0);
    writeln!(
        out,
        "run `flotilla destroy --tag {tag}` again after {} to release them; they are billed until then",
        unix_rfc3339(last)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(9), "9s");
        assert_eq!(short_duration(250), "4m10s");
        assert_eq!(short_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(short_duration(2 * 86400 + 3600), "2d1h");
    }
}
