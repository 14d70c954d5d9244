//! Services beside the binary, with real processes: each runs under its own supervisor with its
//! arguments expanded, its own log, restarts and health; a rollout holds them to the health
//! deadline with the binary and rolls them back with it; a machine may run services alone; and
//! they stop with the agent.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Deployment, IDLE, Version, kill, process_alive, wait_until};
use flotilla_spec::api::{AgentStatus, BinaryState, RolloutPhase};
use flotilla_spec::manifest::{Manifest, PackageProgram, ServiceManifest, ServiceProgram};
use flotilla_spec::{HealthCheck, RestartPolicy, RestartSpec};
use rustix::process::Signal;

fn quick_restarts() -> RestartSpec {
    RestartSpec {
        policy: RestartPolicy::Always,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
    }
}

/// A service whose program is the shell script `script` (after `#!/bin/sh`), published as an
/// artifact, with one file `greeting.txt`.
fn script_service(deployment: &Deployment, name: &str, script: &str) -> ServiceManifest {
    ServiceManifest {
        name: name.to_owned(),
        program: ServiceProgram::Artifact(
            deployment.publish_file("program", &format!("#!/bin/sh\n{script}")),
        ),
        args: vec!["files={files}".to_owned(), "data={data}".to_owned(), "at={address}".to_owned()],
        env: BTreeMap::from([("SERVICE_GREETING".to_owned(), name.to_owned())]),
        files: BTreeMap::from([(
            "greeting.txt".to_owned(),
            deployment.publish_file("greeting.txt", &format!("hello from {name}\n")),
        )]),
        live_files: BTreeMap::new(),
        health: HealthCheck::None,
        restart: quick_restarts(),
    }
}

/// The script of a service that says what it was given and then idles.
fn telling_script(marker: &str) -> String {
    format!(
        r#"echo "{marker} $* env=$SERVICE_GREETING tag=$FLOTILLA_TAG cwd=$(pwd)"
cat "${{1#files=}}/greeting.txt"
echo "{marker}" > marker
{IDLE}"#
    )
}

fn service<'a>(status: &'a AgentStatus, name: &str) -> &'a flotilla_spec::api::ServiceStatus {
    status
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("service {name} missing from the status: {status:#?}"))
}

fn services_healthy(status: &AgentStatus, names: &[&str]) -> bool {
    names.iter().all(|name| {
        status.services.iter().any(|s| s.name == *name && s.state == BinaryState::Healthy)
    })
}

#[tokio::test]
async fn services_run_beside_the_binary_with_their_places_and_restart_on_their_own() {
    let deployment = Deployment::new("127.200.20.1");
    let agent = deployment.start().await;
    let mut manifest = deployment.publish(&Version::script(IDLE));
    manifest.services = vec![
        script_service(&deployment, "side", &telling_script("side-v1")),
        ServiceManifest {
            name: "system".to_owned(),
            program: ServiceProgram::System("/bin/sh".to_owned()),
            args: vec!["-c".to_owned(), format!("echo system at {{address}}; {IDLE}")],
            env: BTreeMap::new(),
            files: BTreeMap::new(),
            live_files: BTreeMap::new(),
            health: HealthCheck::None,
            restart: quick_restarts(),
        },
    ];
    deployment.install(&manifest).await;
    let status = deployment
        .wait_for("both services healthy", |s| services_healthy(s, &["side", "system"]))
        .await;
    assert_eq!(status.state, BinaryState::Healthy, "the binary runs as before");
    assert_eq!(
        status.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["side", "system"],
        "services are reported in the manifest's order"
    );

    // Its places: the files of this version, its own data directory (its working directory)
    // and the machine's address; its environment; its own log.
    let version_dir = deployment.dir.join("versions").join(manifest.version());
    let files = version_dir.join("services/side");
    let data = deployment.dir.join("services/side");
    let side_log = deployment.dir.join("logs/services/side/binary.log");
    wait_until("the side service's log has its greeting", || {
        fs_err::read_to_string(&side_log).is_ok_and(|log| log.contains("hello from side"))
    })
    .await;
    let log = fs_err::read_to_string(&side_log).unwrap();
    let expected = format!(
        "side-v1 files={} data={} at=127.200.20.1 env=side tag=t1 cwd={}",
        files.display(),
        data.display(),
        data.display()
    );
    assert!(log.contains(&expected), "{expected:?} missing from the service's log:\n{log}");
    assert_eq!(fs_err::read_to_string(data.join("marker")).unwrap(), "side-v1\n");
    let system_log =
        fs_err::read_to_string(deployment.dir.join("logs/services/system/binary.log")).unwrap();
    assert!(system_log.contains("system at 127.200.20.1"), "{system_log}");
    assert!(
        !deployment.log_text().contains("hello from side"),
        "a service's output stays out of the binary's log"
    );

    // A service that dies is restarted by its own supervisor; the binary is left alone.
    let binary_pid = status.pid.expect("the binary runs");
    let side_pid = service(&status, "side").pid.expect("the service runs");
    kill(side_pid, Signal::KILL);
    let status = deployment
        .wait_for("the side service restarted", |s| {
            let side = service(s, "side");
            side.restarts == 1 && side.pid.is_some_and(|pid| pid != side_pid)
        })
        .await;
    assert_eq!(status.pid, Some(binary_pid), "the binary was not restarted");
    assert_eq!(status.restarts, 0);

    // Stopping the agent stops every service.
    let pids: Vec<u32> = status.services.iter().filter_map(|s| s.pid).collect();
    assert_eq!(pids.len(), 2);
    agent.shutdown().await.unwrap();
    for pid in pids {
        assert!(!process_alive(pid), "service pid {pid} outlived the agent");
    }
}

#[tokio::test]
async fn a_version_whose_service_never_becomes_healthy_is_rolled_back_with_its_services() {
    let deployment = Deployment::new("127.200.20.2");
    let agent = deployment.start().await;
    let mut first = deployment.publish(&Version::script(IDLE));
    first.services = vec![script_service(&deployment, "side", &telling_script("side-v1"))];
    deployment.install(&first).await;
    deployment.wait_for("the service healthy", |s| services_healthy(s, &["side"])).await;

    // The second version's binary is fine, its service exits at once.
    let mut second = deployment.publish(&Version::script(&format!("# v2\n{IDLE}")));
    second.services = vec![script_service(&deployment, "side", "echo side-v2 fails; exit 3")];
    let (code, body) = deployment.apply(&second).await;
    assert!(code.is_success(), "{body}");
    let rollout = deployment.wait_rollout_done(&second).await;
    assert_eq!(rollout.phase, RolloutPhase::RolledBack, "{rollout:#?}");
    let reason = rollout.reason.unwrap_or_default();
    assert!(
        reason.contains("the new version's service side exited")
            && reason
                .contains("times without becoming healthy; the last time it exited with code 3"),
        "the reason names the service: {reason}"
    );
    let status = deployment
        .wait_for("the first version's service back", |s| services_healthy(s, &["side"]))
        .await;
    assert_eq!(status.version.as_deref(), Some(first.version().as_str()));
    assert_eq!(
        fs_err::read_to_string(deployment.dir.join("services/side/marker")).unwrap(),
        "side-v1\n",
        "the service runs the first version's program again"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_machine_may_run_services_alone_and_a_version_may_drop_one() {
    let deployment = Deployment::new("127.200.20.3");
    let agent = deployment.start().await;
    let mut only_services: Manifest = deployment.publish(&Version::script(IDLE));
    only_services.binary = None;
    only_services.config = None;
    only_services.services = vec![
        script_service(&deployment, "one", &telling_script("one")),
        script_service(&deployment, "two", &telling_script("two")),
    ];
    deployment.apply(&only_services).await;
    let rollout = deployment.wait_rollout_done(&only_services).await;
    assert_eq!(rollout.phase, RolloutPhase::Healthy, "{rollout:#?}");
    let status = deployment
        .wait_for("both services healthy", |s| services_healthy(s, &["one", "two"]))
        .await;
    assert_eq!(status.state, BinaryState::Idle, "no binary runs: {status:#?}");
    assert_eq!(status.pid, None);
    let two_pid = service(&status, "two").pid.expect("two runs");

    // The next version keeps `one` and drops `two`: two stops and leaves the status.
    let mut fewer = only_services.clone();
    fewer.services.truncate(1);
    fewer.services[0].args.push("again".to_owned());
    deployment.apply(&fewer).await;
    let rollout = deployment.wait_rollout_done(&fewer).await;
    assert_eq!(rollout.phase, RolloutPhase::Healthy, "{rollout:#?}");
    let status = deployment.status().await;
    assert_eq!(status.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["one"]);
    wait_until("the dropped service stopped", || !process_alive(two_pid)).await;
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_manifest_with_a_bad_service_is_refused_before_anything_changes() {
    let deployment = Deployment::new("127.200.20.4");
    let agent = deployment.start().await;
    let base = deployment.publish(&Version::script(IDLE));
    type Change = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|m| m.services[0].name = "Bad Name".into()), "services[0].name"),
        (Box::new(|m| m.services.push(m.services[0].clone())), "names a service twice"),
        (
            Box::new(|m| m.services[0].program = ServiceProgram::System("relative/path".into())),
            "must be an absolute path",
        ),
        (
            Box::new(|m| {
                let file = m.services[0].files.remove("greeting.txt").unwrap();
                m.services[0].files.insert("../escape".into(), file);
            }),
            "must be a plain file name",
        ),
        (Box::new(|m| m.config = None), "`binary` and `config` come together"),
    ];
    for (change, expected) in cases {
        let mut manifest = base.clone();
        manifest.services = vec![script_service(&deployment, "side", IDLE)];
        change(&mut manifest);
        let (code, body) = deployment.apply(&manifest).await;
        assert_eq!(code, reqwest::StatusCode::BAD_REQUEST, "{expected}: {body}");
        assert!(body.to_string().contains(expected), "{expected:?} missing from {body}");
    }
    assert_eq!(deployment.status().await.version, None, "nothing was installed");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn live_files_follow_membership_in_place_without_a_restart_and_survive_an_agent_restart() {
    let deployment = Deployment::new("127.200.20.5");
    let agent = deployment.start().await;
    let mut first: Manifest = deployment.publish(&Version::script(IDLE));
    first.binary = None;
    first.config = None;
    let mut watcher = script_service(&deployment, "watcher", &format!("echo \"live=$1\"; {IDLE}"));
    watcher.args = vec!["{live}".to_owned()];
    watcher
        .live_files
        .insert("targets.json".to_owned(), deployment.publish_file("targets.json", "[1]\n"));
    first.services = vec![watcher];
    deployment.apply(&first).await;
    assert_eq!(deployment.wait_rollout_done(&first).await.phase, RolloutPhase::Healthy);
    let live = deployment.dir.join("live/watcher/targets.json");
    assert_eq!(fs_err::read_to_string(&live).unwrap(), "[1]\n");
    let status =
        deployment.wait_for("the watcher healthy", |s| services_healthy(s, &["watcher"])).await;
    assert_eq!(status.hosts.as_deref(), Some(first.hosts_version().as_str()));
    assert_ne!(first.hosts_version(), first.hosts.sha256, "live files count in the membership");
    let pid = service(&status, "watcher").pid.expect("the watcher runs");
    let log =
        fs_err::read_to_string(deployment.dir.join("logs/services/watcher/binary.log")).unwrap();
    let expected = format!("live={}", live.parent().unwrap().display());
    assert!(log.contains(&expected), "{expected:?} missing from {log}");

    // Only the live file changes: the version stays, the file is swapped, nothing restarts.
    let mut second = first.clone();
    second.services[0]
        .live_files
        .insert("targets.json".to_owned(), deployment.publish_file("targets.json", "[1, 2]\n"));
    assert_eq!(second.version(), first.version());
    deployment.apply(&second).await;
    let rollout = deployment.wait_rollout_done(&second).await;
    assert_eq!(rollout.phase, RolloutPhase::Healthy, "{rollout:#?}");
    assert!(rollout.hosts_only, "a live file change is a hosts-only change: {rollout:#?}");
    assert_eq!(fs_err::read_to_string(&live).unwrap(), "[1, 2]\n");
    let status = deployment.status().await;
    assert_eq!(service(&status, "watcher").pid, Some(pid), "the service was not restarted");
    assert_eq!(status.hosts.as_deref(), Some(second.hosts_version().as_str()));

    // A restarted agent reports the same membership, so applying it again changes nothing.
    agent.shutdown().await.unwrap();
    let agent = deployment.start().await;
    let status = deployment
        .wait_for("the watcher healthy again", |s| services_healthy(s, &["watcher"]))
        .await;
    assert_eq!(status.hosts.as_deref(), Some(second.hosts_version().as_str()));
    let (code, body) = deployment.apply(&second).await;
    assert!(code.is_success(), "{body}");
    assert_eq!(body["result"], "unchanged", "{body}");
    agent.shutdown().await.unwrap();
}

/// A service whose program is a distribution package's, with `path` and no health check.
fn package_service(name: &str, package: &str, path: &str) -> ServiceManifest {
    ServiceManifest {
        name: name.to_owned(),
        program: ServiceProgram::Package(PackageProgram {
            package: package.to_owned(),
            path: path.to_owned(),
        }),
        args: vec!["-c".to_owned(), IDLE.to_owned()],
        env: BTreeMap::new(),
        files: BTreeMap::new(),
        live_files: BTreeMap::new(),
        health: HealthCheck::None,
        restart: quick_restarts(),
    }
}

/// Where the machine's packages are not the agent's (the test's bootstrap, as the local
/// provider's and the emulator's): a package's program that is there runs; one that is not
/// fails the next rollout before anything of it starts, naming the package to install, and
/// the running version stays.
#[tokio::test]
async fn a_package_program_runs_where_it_is_and_a_missing_one_fails_the_rollout_first() {
    let deployment = Deployment::new("127.200.20.6");
    let agent = deployment.start().await;
    let mut first = deployment.publish(&Version::script(IDLE));
    first.services = vec![package_service("shell", "dash", "/bin/sh")];
    deployment.install(&first).await;
    let status = deployment
        .wait_for("the package service healthy", |s| services_healthy(s, &["shell"]))
        .await;
    let shell_pid = service(&status, "shell").pid.expect("it runs");

    let mut second = deployment.publish(&Version::script(&format!("# v2\n{IDLE}")));
    second.services = vec![package_service("shell", "no-such-tool", "/nonexistent/no-such-tool")];
    let (code, body) = deployment.apply(&second).await;
    assert!(code.is_success(), "{body}");
    let rollout = deployment.wait_rollout_done(&second).await;
    assert_ne!(rollout.phase, RolloutPhase::Healthy, "{rollout:#?}");
    let reason = rollout.reason.unwrap_or_default();
    assert!(
        reason.contains("/nonexistent/no-such-tool is not on this machine")
            && reason.contains("install the package no-such-tool"),
        "the reason names the program and the package: {reason}"
    );
    let status = deployment.status().await;
    assert_eq!(status.version.as_deref(), Some(first.version().as_str()));
    assert_eq!(
        service(&status, "shell").pid,
        Some(shell_pid),
        "the first version's service kept running"
    );

    // A package name Debian would not take is refused with the manifest.
    let mut bad = first.clone();
    bad.services[0] = package_service("shell", "Bad_Name", "/bin/sh");
    let (code, body) = deployment.apply(&bad).await;
    assert_eq!(code, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("is not a Debian package name"), "{body}");
    agent.shutdown().await.unwrap();
}
