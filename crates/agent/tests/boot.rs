//! The boot step: a manifest's files and commands are done before the binary starts, commands
//! once per boot (across versions and agent restarts), and a failed critical step keeps the
//! binary from starting with the failure in the status, while a non-critical one does not.
//!
//! The bootstrap of these tests has no `boot` key: files land under `<dir>/root` and kernel
//! settings and packages are reported as not applicable, as on the local provider.

mod common;

use std::time::Duration;

use common::{Deployment, IDLE, Version, mode};
use flotilla_spec::account::{BootCommand, BootFile, BootSpec};
use flotilla_spec::api::{BinaryState, BootOutcome, BootStepKind, RolloutPhase};
use reqwest::StatusCode;

fn file(path: &str, content: &str, mode: u32) -> BootFile {
    BootFile { path: path.to_owned(), mode, owner: None, content: content.to_owned() }
}

fn command(argv: &[&str], critical: bool) -> BootCommand {
    BootCommand {
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        timeout: Duration::from_secs(10),
        critical,
    }
}

/// A binary that copies the boot file `root/etc/app.conf` into `work/seen.txt` (its working
/// directory is `<dir>/work`), or exits 1 when the file is not there yet.
const CAT_THE_FILE: &str = "cat ../root/etc/app.conf > seen.txt || exit 1\n";

#[tokio::test]
async fn files_are_written_before_the_binary_starts_and_rewritten_when_they_change() {
    let deployment = Deployment::new("127.200.9.1");
    let agent = deployment.start().await;
    let mut version = Version::script(&format!("{CAT_THE_FILE}{IDLE}"));
    version.boot =
        BootSpec { files: vec![file("/etc/app.conf", "one\n", 0o640)], ..BootSpec::default() };
    let v1 = deployment.publish(&version);
    let status = deployment.install(&v1).await;
    assert_eq!(status.restarts, 0, "the file was there at the first start");
    assert_eq!(fs_err::read_to_string(deployment.work().join("seen.txt")).unwrap(), "one\n");
    let placed = deployment.dir.join("root/etc/app.conf");
    assert_eq!(mode(&placed), 0o640);
    let boot = status.boot.expect("a boot report");
    assert_eq!((boot.version.as_str(), boot.blocked), (v1.version().as_str(), false));
    assert_eq!(boot.steps.len(), 1);
    assert_eq!(
        (boot.steps[0].kind, boot.steps[0].target.as_str(), boot.steps[0].outcome),
        (BootStepKind::File, "/etc/app.conf", BootOutcome::Applied)
    );

    // A new version with the same file does not rewrite it; a changed file is rewritten before
    // the new binary starts.
    version.script = format!("echo v2\n{CAT_THE_FILE}{IDLE}");
    let v2 = deployment.publish(&version);
    let status = deployment.install(&v2).await;
    assert_eq!(status.boot.unwrap().steps[0].outcome, BootOutcome::Unchanged);
    version.boot.files[0].content = "two\n".to_owned();
    let v3 = deployment.publish(&version);
    let status = deployment.install(&v3).await;
    assert_eq!(status.restarts, 0);
    assert_eq!(status.boot.unwrap().steps[0].outcome, BootOutcome::Applied);
    assert_eq!(fs_err::read_to_string(deployment.work().join("seen.txt")).unwrap(), "two\n");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_command_runs_once_per_boot_across_versions_and_agent_restarts() {
    let deployment = Deployment::new("127.200.9.2");
    let runs = deployment.temp.path().join("runs.txt");
    let mut version = Version::script(IDLE);
    let append = format!("echo ran in \"$PWD\" for \"$FLOTILLA_NAME\" >> '{}'", runs.display());
    version.boot = BootSpec {
        commands: vec![command(&["sh", "-c", &append], true)],
        sysctl: [("net.core.somaxconn".to_owned(), "4096".to_owned())].into(),
        packages: vec!["jq".to_owned()],
        ..BootSpec::default()
    };
    let v1 = deployment.publish(&version);
    let agent = deployment.start().await;
    let status = deployment.install(&v1).await;
    let ran_once = format!("ran in {} for node-0\n", deployment.dir.display());
    assert_eq!(fs_err::read_to_string(&runs).unwrap(), ran_once);
    let boot = status.boot.unwrap();
    let outcomes: Vec<_> =
        boot.steps.iter().map(|s| (s.kind, s.target.as_str(), s.outcome)).collect();
    let command_name = format!("sh -c {append}");
    assert_eq!(
        outcomes,
        [
            (BootStepKind::Sysctl, "net.core.somaxconn=4096", BootOutcome::NotApplicable),
            (BootStepKind::Packages, "jq", BootOutcome::NotApplicable),
            (BootStepKind::Command, command_name.as_str(), BootOutcome::Applied),
        ]
    );
    assert_eq!(boot.steps[0].message.as_deref(), Some("not applicable on this machine"));

    // Another version with the same command does not run it again.
    version.script = format!("echo v2\n{IDLE}");
    let v2 = deployment.publish(&version);
    let status = deployment.install(&v2).await;
    assert_eq!(status.boot.unwrap().steps[2].outcome, BootOutcome::Unchanged);
    // Nor does a restarted agent on the same boot, which starts the installed version again.
    agent.shutdown().await.unwrap();
    let agent = deployment.start().await;
    let status = deployment.wait_healthy(&v2).await;
    let step = &status.boot.unwrap().steps[2];
    assert_eq!(step.outcome, BootOutcome::Unchanged);
    assert_eq!(step.message.as_deref(), Some("already succeeded since the machine booted"));
    assert_eq!(fs_err::read_to_string(&runs).unwrap(), ran_once);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_critical_command_keeps_the_binary_from_starting() {
    let deployment = Deployment::new("127.200.9.3");
    let agent = deployment.start().await;
    let started = deployment.temp.path().join("started");
    let mut version = Version::script(&format!("touch '{}'\n{IDLE}", started.display()));
    version.boot = BootSpec {
        files: vec![file("/etc/app.conf", "x\n", 0o644)],
        commands: vec![
            command(&["sh", "-c", "echo checking the disk; echo disk not ready >&2; exit 3"], true),
            command(&["touch", "never-run"], true),
        ],
        ..BootSpec::default()
    };
    let v1 = deployment.publish(&version);
    let (code, answer) = deployment.apply(&v1).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    let rollout = deployment.wait_rollout_done(&v1).await;
    assert_eq!(rollout.phase, RolloutPhase::Failed, "{rollout:#?}");
    let reason = rollout.reason.unwrap();
    assert!(reason.contains("exited with code 3"), "{reason}");
    assert!(reason.contains("disk not ready"), "{reason}");

    let status = deployment.status().await;
    assert_eq!((status.state, status.pid), (BinaryState::Idle, None));
    assert!(!started.exists(), "the binary never started");
    assert!(
        !deployment.dir.join("never-run").exists(),
        "steps after a critical failure are not run"
    );
    let boot = status.boot.expect("the failed boot is reported");
    assert!(boot.blocked);
    assert_eq!(boot.steps.len(), 2, "{boot:#?}");
    let failed = &boot.steps[1];
    assert_eq!(
        (failed.kind, failed.outcome, failed.critical),
        (BootStepKind::Command, BootOutcome::Failed, true)
    );
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.message.as_deref(), Some("exited with code 3"));
    let output = failed.output.as_deref().unwrap();
    assert!(output.contains("checking the disk") && output.contains("disk not ready"), "{output}");
    assert!(deployment.log_text().contains("disk not ready"), "the output is in the binary's log");

    // A fixed version starts; the command that failed was not recorded, the new one runs.
    version.boot.commands = vec![command(&["true"], true)];
    let v2 = deployment.publish(&version);
    deployment.install(&v2).await;
    assert!(started.exists());
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_non_critical_command_is_reported_and_the_binary_starts() {
    let deployment = Deployment::new("127.200.9.4");
    let agent = deployment.start().await;
    let mut version = Version::script(IDLE);
    let mut slow = command(&["sh", "-c", "echo started; sleep 30"], false);
    slow.timeout = Duration::from_millis(300);
    version.boot = BootSpec {
        commands: vec![command(&["sh", "-c", "echo optional >&2; exit 1"], false), slow],
        ..BootSpec::default()
    };
    let v1 = deployment.publish(&version);
    let status = deployment.install(&v1).await;
    assert_eq!(status.state, BinaryState::Healthy);
    let boot = status.boot.unwrap();
    assert!(!boot.blocked);
    let failures: Vec<_> = boot
        .steps
        .iter()
        .map(|s| {
            (
                s.outcome,
                s.critical,
                s.message.clone().unwrap_or_default(),
                s.output.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        failures[0],
        (BootOutcome::Failed, false, "exited with code 1".to_owned(), "optional\n".to_owned())
    );
    assert_eq!(failures[1].0, BootOutcome::Failed);
    assert!(failures[1].2.contains("did not finish within its timeout of 300ms"), "{failures:?}");
    assert_eq!(failures[1].3, "started\n");
    agent.shutdown().await.unwrap();
}
