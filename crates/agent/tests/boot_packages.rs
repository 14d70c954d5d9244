//! Boot packages on a machine where system settings apply (as on AWS): the agent process, with
//! stand-in `apt-get` and `dpkg-query` first on its `PATH`, waits while apt answers with its real
//! lock messages and installs once the lock is free; when the lock is never free it gives up at
//! the bootstrap's `boot.apt_lock_wait` (300 ms here) and the failure, with apt's output, is in
//! the boot report and keeps the binary from starting.

#![allow(clippy::unwrap_used)] // A step of these tests that fails fails the test.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Deployment, IDLE, Version, kill, wait_for_api, wait_for_exit};
use flotilla_spec::account::BootSpec;
use flotilla_spec::api::{BinaryState, BootOutcome, BootStepKind, RolloutPhase};
use reqwest::StatusCode;
use rustix::process::Signal;

/// The bound the tests give apt's lock: the retries are spaced in proportion (1 ms to 10 ms).
const APT_LOCK_WAIT: &str = "300ms";

/// What apt says when another apt holds its lists' lock (`update`), as apt 2.7 words it.
const LISTS_LOCKED: &str = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)\nE: Unable to lock directory /var/lib/apt/lists/";
/// What apt says when another dpkg holds the frontend lock (`install`), as apt 2.7 words it.
const FRONTEND_LOCKED: &str = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (unattended-upgr)\nE: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?";

/// Stand-ins for apt in `<temp>/bin`: `dpkg-query` knows no package; `apt-get` appends
/// `DEBIAN_FRONTEND` and its arguments to `<temp>/apt-calls.txt`, then fails with apt's lock
/// message (status 100) for the first `locked_times` calls of each subcommand (`update`,
/// `install`; every call with `None`) and succeeds after.
fn stand_ins(deployment: &Deployment, locked_times: Option<u32>) -> (PathBuf, PathBuf) {
    let temp = deployment.temp.path();
    let (bin, calls) = (temp.join("bin"), temp.join("apt-calls.txt"));
    fs_err::create_dir_all(&bin).unwrap();
    let limit = locked_times.map_or("1000000".to_owned(), |n| n.to_string());
    let apt_get = format!(
        r#"#!/bin/sh
echo "$DEBIAN_FRONTEND $*" >> '{calls}'
case " $* " in
  *" update "*) sub=update; locked='{LISTS_LOCKED}' ;;
  *" install "*) sub=install; locked='{FRONTEND_LOCKED}' ;;
  *) echo "unexpected arguments: $*" >&2; exit 2 ;;
esac
counter='{temp}/'"$sub"'.count'
n=$(cat "$counter" 2>/dev/null || echo 0)
echo $((n + 1)) > "$counter"
if [ "$n" -lt {limit} ]; then
  echo "Reading package lists..."
  echo "$locked" >&2
  exit 100
fi
echo "Setting up jq (1.7.1-3build1) ..."
"#,
        calls = calls.display(),
        temp = temp.display(),
    );
    let dpkg_query = "#!/bin/sh\necho \"dpkg-query: no packages found matching $4\" >&2\nexit 1\n";
    for (name, script) in [("apt-get", apt_get.as_str()), ("dpkg-query", dpkg_query)] {
        let path = bin.join(name);
        fs_err::write(&path, script).unwrap();
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (bin, calls)
}

/// Starts the agent process with system settings applying, apt's lock bounded to
/// [`APT_LOCK_WAIT`], and `bin` first on its `PATH`.
async fn agent_with_apt(deployment: &Deployment, bin: &Path) -> Child {
    let bootstrap = deployment.bootstrap_with(serde_json::json!({
        "boot": {"system_settings": true, "runs_on": "a test machine", "apt_lock_wait": APT_LOCK_WAIT},
    }));
    let path = deployment.temp.path().join("bootstrap.json");
    fs_err::write(&path, serde_json::to_vec(&bootstrap).unwrap()).unwrap();
    let stderr = fs_err::File::create(deployment.temp.path().join("agent-stderr.txt")).unwrap();
    let mut agent = Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(common::agent_process_binary())
        .arg(&path)
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.into_parts().0))
        .spawn()
        .expect("the agent process starts under setpriv (util-linux: apt-get install util-linux)");
    wait_for_api(deployment, &mut agent).await;
    agent
}

/// A version that marks `started` when its binary starts, installing `jq` at boot (and no
/// network tuning: these tests must not change the host's kernel settings).
fn version_with_jq(started: &Path) -> Version {
    let mut version = Version::script(&format!("touch '{}'\n{IDLE}", started.display()));
    version.boot =
        BootSpec { packages: vec!["jq".to_owned()], tune_network: false, ..BootSpec::default() };
    version
}

#[tokio::test]
async fn packages_wait_while_apt_is_locked_then_install() {
    let deployment = Deployment::new("127.200.13.1");
    let (bin, calls) = stand_ins(&deployment, Some(2));
    let mut agent = agent_with_apt(&deployment, &bin).await;
    let started = deployment.temp.path().join("started");
    let v1 = deployment.publish(&version_with_jq(&started));
    let status = deployment.install(&v1).await;
    assert_eq!(status.state, BinaryState::Healthy);
    assert!(started.exists(), "the binary started after the packages");
    let boot = status.boot.expect("a boot report");
    assert!(!boot.blocked);
    let steps: Vec<_> = boot
        .steps
        .iter()
        .map(|s| (s.kind, s.target.as_str(), s.outcome, s.message.as_deref()))
        .collect();
    assert_eq!(steps, [(BootStepKind::Packages, "jq", BootOutcome::Applied, Some("installed jq"))]);
    let update = "noninteractive -q update";
    let install = "noninteractive -q -y --no-install-recommends install jq";
    let expected = [update, update, update, install, install, install].map(|l| format!("{l}\n"));
    assert_eq!(fs_err::read_to_string(&calls).unwrap(), expected.concat());
    let log = deployment.log_text();
    assert_eq!(
        log.matches("boot packages: another apt or dpkg holds its lock; trying again in").count(),
        4,
        "each wait is in the binary's log: {log}"
    );
    kill(agent.id(), Signal::TERM);
    wait_for_exit(&mut agent).await;
}

#[tokio::test]
async fn packages_fail_when_apt_stays_locked_past_the_bound() {
    let deployment = Deployment::new("127.200.13.2");
    let (bin, calls) = stand_ins(&deployment, None);
    let mut agent = agent_with_apt(&deployment, &bin).await;
    let started = deployment.temp.path().join("started");
    let v1 = deployment.publish(&version_with_jq(&started));
    let (code, answer) = deployment.apply(&v1).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    let rollout = deployment.wait_rollout_done(&v1).await;
    assert_eq!(rollout.phase, RolloutPhase::Failed, "{rollout:#?}");

    let status = deployment.status().await;
    assert_eq!((status.state, status.pid), (BinaryState::Idle, None));
    assert!(!started.exists(), "the binary never started");
    let boot = status.boot.expect("the failed boot is reported");
    assert!(boot.blocked);
    assert_eq!(boot.steps.len(), 1, "{boot:#?}");
    let failed = &boot.steps[0];
    assert_eq!(
        (failed.kind, failed.target.as_str(), failed.outcome, failed.critical),
        (BootStepKind::Packages, "jq", BootOutcome::Failed, true)
    );
    assert_eq!(failed.exit_code, Some(100));
    assert_eq!(
        failed.message.as_deref(),
        Some(
            "`apt-get -q update` exited with code 100 (another apt or dpkg held its lock for 300ms)"
        )
    );
    let output = failed.output.as_deref().unwrap();
    assert!(
        output.contains("Reading package lists...") && output.contains(LISTS_LOCKED),
        "{output}"
    );
    let calls = fs_err::read_to_string(&calls).unwrap();
    assert!(calls.lines().count() > 3, "it tried again until the bound: {calls}");
    assert!(!calls.contains("install"), "nothing is installed without a fresh list: {calls}");
    kill(agent.id(), Signal::TERM);
    wait_for_exit(&mut agent).await;
}
