//! Supervision with real processes: how the binary is run, its log, restarts, crash loops,
//! `on-failure`, Stop and Restart, and stopping its whole process group.

mod common;

use std::time::Duration;

use common::{Deployment, IDLE, Version, kill, mode, process_alive, read_pid, wait_until};
use flotilla_spec::RestartPolicy;
use flotilla_spec::api::BinaryState;
use futures_util::StreamExt;
use reqwest::StatusCode;
use rustix::process::Signal;

#[tokio::test]
async fn the_binary_runs_with_its_arguments_working_directory_and_environment() {
    let deployment = Deployment::new("127.200.1.1");
    let agent = deployment.start().await;
    let mut version = Version::script(&format!(
        r#"echo "args: $*"
echo "cwd: $(pwd)"
echo "identity: $FLOTILLA_TAG $FLOTILLA_NAME $FLOTILLA_REGION $FLOTILLA_IP $FLOTILLA_PRIVATE_IP"
echo "env: $GREETING $FLOTILLA_TAG_OVERRIDDEN"
echo "config: $(cat "${{2#--config=}}")"
echo "from the binary" > written-by-binary
{IDLE}"#
    ));
    version.args = vec!["--flag".to_owned(), "two words".to_owned()];
    version.env.insert("GREETING".to_owned(), "hello".to_owned());
    version.env.insert("FLOTILLA_TAG_OVERRIDDEN".to_owned(), "yes".to_owned());
    version.config = "answer = 42\n".to_owned();
    let manifest = deployment.publish(&version);
    let status = deployment.install(&manifest).await;

    let v = manifest.version();
    let version_dir = deployment.dir.join("versions").join(&v);
    let work = deployment.work();
    let log = deployment.logs(100).await;
    // hosts.yaml is the machine's, apart from the version (swapped in place on a change).
    let expected_args = format!(
        "args: --hosts={}/hosts.yaml --config={}/config.conf --flag two words",
        deployment.dir.display(),
        version_dir.display()
    );
    for expected in [
        expected_args.as_str(),
        &format!("cwd: {}", work.display()),
        "identity: t1 node-0 local 127.200.1.1 127.200.1.1",
        "env: hello yes",
        "config: answer = 42",
        "[flotilla-agent] ",
        &format!("started version {} pid {}", &v[..12], status.pid.unwrap()),
    ] {
        assert!(log.contains(expected), "{expected:?} missing from the log:\n{log}");
    }
    assert!(work.join("written-by-binary").exists());

    assert_eq!(status.name, "node-0");
    assert_eq!(status.tag, "t1");
    assert_eq!(status.region, "local");
    assert_eq!(status.version.as_deref(), Some(v.as_str()));
    assert_eq!(status.restarts, 0);
    assert!(status.uptime_secs.is_some());
    assert!(status.health_error.is_none());

    // Everything the agent owns is private to its user.
    for directory in [&deployment.dir, &work, &deployment.dir.join("logs"), &version_dir] {
        assert_eq!(mode(directory), 0o700, "{}", directory.display());
    }
    assert_eq!(mode(&version_dir.join("binary")), 0o700);
    for file in ["config.conf", "manifest.json"] {
        assert_eq!(mode(&version_dir.join(file)), 0o600, "{file}");
    }
    for file in ["agent.pid", "agent.lock", "agent-state.json", "hosts.yaml", "logs/binary.log"] {
        assert_eq!(mode(&deployment.dir.join(file)), 0o600, "{file}");
    }
    let pid_file = fs_err::read_to_string(deployment.dir.join("agent.pid")).unwrap();
    assert_eq!(pid_file.trim(), std::process::id().to_string());

    agent.shutdown().await.unwrap();
    assert!(!deployment.dir.join("agent.pid").exists());
}

#[tokio::test]
async fn output_is_logged_rotated_and_followed() {
    let deployment = Deployment::new("127.200.1.2");
    let bootstrap =
        deployment.bootstrap_with(serde_json::json!({"logs": {"max_bytes": 4096, "keep": 2}}));
    let agent = deployment.start_with(bootstrap).await;
    // 300 lines of 100 bytes at start; 100 more each time `ping` appears.
    let manifest = deployment.publish(&Version::script(
        r#"pad=$(printf '%080d' 0)
i=0; while [ $i -lt 300 ]; do printf 'line %03d %s\n' $i $pad; i=$((i+1)); done
while :; do
  if [ -e ping ]; then
    rm ping
    i=0; while [ $i -lt 100 ]; do printf 'pong %03d %s\n' $i $pad; i=$((i+1)); done
  fi
  sleep 0.05
done
"#,
    ));
    deployment.install(&manifest).await;
    let logs = deployment.dir.join("logs");
    wait_until("the first lines to be rotated", || logs.join("binary.log.2").exists()).await;
    assert!(!logs.join("binary.log.3").exists());
    for file in ["binary.log", "binary.log.1", "binary.log.2"] {
        let size = fs_err::metadata(logs.join(file)).unwrap().len();
        assert!(size <= 4096, "{file} has {size} bytes");
        assert_eq!(mode(&logs.join(file)), 0o600);
    }

    // Everything still on disk, oldest first, is what a large `lines` returns.
    let on_disk = ["binary.log.2", "binary.log.1", "binary.log"]
        .map(|file| fs_err::read_to_string(logs.join(file)).unwrap())
        .concat();
    assert_eq!(deployment.logs(100_000).await, on_disk);
    let last_three = deployment.logs(3).await;
    assert_eq!(last_three.lines().count(), 3, "{last_three}");
    assert!(on_disk.ends_with(&last_three));

    // A follower sees the next lines in order, across the rotations they cause.
    let response =
        deployment.http.get(deployment.url("/v1/logs?lines=0&follow=true")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    fs_err::write(deployment.work().join("ping"), "").unwrap();
    let mut received = String::new();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !received.contains("pong 099") {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the follower gets the new lines in time")
            .expect("the stream goes on")
            .unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let pongs: Vec<&str> = received.lines().filter(|line| line.starts_with("pong")).collect();
    assert_eq!(pongs.len(), 100, "{received}");
    for (n, line) in pongs.iter().enumerate() {
        assert!(line.starts_with(&format!("pong {n:03} ")), "{line}");
    }
    assert!(!received.contains("line 299"), "lines=0 sends no old lines");
    drop(stream);
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_binary_is_restarted_with_backoff_and_counted() {
    let deployment = Deployment::new("127.200.1.3");
    let agent = deployment.start().await;
    let manifest = deployment.publish(&Version::script(IDLE));
    let first = deployment.install(&manifest).await;
    let first_pid = first.pid.unwrap();

    kill(first_pid, Signal::KILL);
    let restarted = deployment
        .wait_for("a restart", |status| status.pid.is_some_and(|pid| pid != first_pid))
        .await;
    assert_eq!(restarted.restarts, 1);
    let exit = restarted.last_exit.expect("the exit is recorded");
    assert_eq!((exit.code, exit.signal), (None, Some(9)));
    wait_until("the old binary to be gone", || !process_alive(first_pid)).await;
    let log = deployment.log_text();
    assert!(log.contains(&format!("pid {first_pid} was ended by signal 9 (SIGKILL)")), "{log}");
    // The first restart waits the initial backoff (100 ms) ± 20 %.
    let delay = log
        .split("restarting in ")
        .nth(1)
        .and_then(|rest| rest.split("ms").next())
        .and_then(|ms| ms.parse::<u64>().ok())
        .expect("the restart delay is logged in ms");
    assert!((80..=120).contains(&delay), "{delay} ms");
    assert!(log.contains("(failure 1 in a row)"), "{log}");

    let metrics = deployment.metrics().await;
    assert!(metrics.contains("flotilla_binary_restarts_total 1\n"), "{metrics}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_binary_that_keeps_exiting_is_crash_looping_until_it_recovers() {
    let deployment = Deployment::new("127.200.1.4");
    let agent = deployment.start().await;
    let manifest = deployment.publish(&Version::script(&format!(
        "if [ -e crash ]; then echo 'boom'; exit 3; fi\n{IDLE}"
    )));
    let healthy = deployment.install(&manifest).await;
    fs_err::write(deployment.work().join("crash"), "").unwrap();
    kill(healthy.pid.unwrap(), Signal::KILL);

    let looping = deployment
        .wait_for("crash-looping", |status| status.state == BinaryState::CrashLooping)
        .await;
    assert!(looping.restarts >= 2, "{looping:#?}");
    assert_eq!(looping.pid, None);
    assert_eq!(looping.last_exit.as_ref().and_then(|exit| exit.code), Some(3));
    assert!(deployment.log_text().contains("crash-looping"));

    // Once the cause is gone, the next restart runs and becomes healthy again.
    fs_err::remove_file(deployment.work().join("crash")).unwrap();
    let recovered = deployment.wait_healthy(&manifest).await;
    assert!(recovered.restarts >= 3, "{recovered:#?}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn on_failure_stops_after_exit_status_zero_and_restarts_after_a_failure() {
    let deployment = Deployment::new("127.200.1.5");
    let agent = deployment.start().await;
    let mut version = Version::script(
        r#"while :; do
  if [ -e quit ]; then rm quit; echo 'quitting'; exit 0; fi
  if [ -e fail ]; then rm fail; echo 'failing'; exit 1; fi
  sleep 0.05
done
"#,
    );
    version.restart.policy = RestartPolicy::OnFailure;
    let manifest = deployment.publish(&version);
    let first = deployment.install(&manifest).await;

    fs_err::write(deployment.work().join("quit"), "").unwrap();
    let stopped =
        deployment.wait_for("stopped", |status| status.state == BinaryState::Stopped).await;
    assert_eq!(stopped.pid, None);
    assert_eq!(stopped.restarts, 0);
    assert_eq!(stopped.last_exit.as_ref().and_then(|exit| exit.code), Some(0));
    assert!(!process_alive(first.pid.unwrap()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(deployment.status().await.state, BinaryState::Stopped, "no restart follows");
    assert!(deployment.log_text().contains("restart policy is on-failure"));

    // Restart starts it again; a non-zero exit is restarted.
    let (code, body) = deployment.post("/v1/restart").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let running = deployment.wait_healthy(&manifest).await;
    fs_err::write(deployment.work().join("fail"), "").unwrap();
    let restarted = deployment
        .wait_for("a restart after the failure", |status| {
            status.restarts == 1 && status.pid.is_some_and(|pid| Some(pid) != running.pid)
        })
        .await;
    assert_eq!(restarted.last_exit.as_ref().and_then(|exit| exit.code), Some(1));
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn stop_and_restart_requests_hold_across_agent_restarts() {
    let deployment = Deployment::new("127.200.1.6");
    let agent = deployment.start().await;
    // Nothing is installed: nothing to restart; stopping is harmless.
    let (code, body) = deployment.post("/v1/restart").await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no version is installed"), "{body}");
    let (code, body) = deployment.post("/v1/stop").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "idle");

    let manifest = deployment.publish(&Version::script(IDLE));
    let running = deployment.install(&manifest).await;
    let (code, body) = deployment.post("/v1/stop").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "stopped");
    assert_eq!(body["pid"], serde_json::Value::Null);
    assert!(!process_alive(running.pid.unwrap()));
    assert!(deployment.log_text().contains("got SIGTERM"), "the binary was stopped with SIGTERM");
    let state = fs_err::read_to_string(deployment.dir.join("agent-state.json")).unwrap();
    assert!(state.contains(r#""stopped": true"#), "{state}");

    // A stopped binary stays stopped when the agent starts again.
    agent.shutdown().await.unwrap();
    let agent = deployment.start().await;
    let status = deployment.status().await;
    assert_eq!((status.state, status.pid), (BinaryState::Stopped, None));
    assert_eq!(status.version, Some(manifest.version()));

    let (code, body) = deployment.post("/v1/restart").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "starting");
    let restarted = deployment.wait_healthy(&manifest).await;
    assert_ne!(restarted.pid, running.pid);
    let state = fs_err::read_to_string(deployment.dir.join("agent-state.json")).unwrap();
    assert!(state.contains(r#""stopped": false"#), "{state}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn stopping_ends_the_whole_process_group() {
    let deployment = Deployment::new("127.200.1.7");
    let agent = deployment.start().await;
    // A grandchild that exits on SIGTERM, one that ignores it, and a binary that exits on
    // SIGTERM unless the file `ignore-term` exists.
    let manifest = deployment.publish(&Version::script(
        r#"sleep 100000 &
echo $! > polite.pid
sh -c 'trap "" TERM; while :; do sleep 0.05; done' &
echo $! > stubborn.pid
if [ -e ignore-term ]; then trap '' TERM; else trap 'echo "got SIGTERM"; exit 0' TERM; fi
while :; do sleep 0.05; done
"#,
    ));
    let running = deployment.install(&manifest).await;
    let work = deployment.work();
    let binary = running.pid.unwrap();
    let polite = read_pid(&work.join("polite.pid")).await;
    let stubborn = read_pid(&work.join("stubborn.pid")).await;
    assert!(process_alive(polite) && process_alive(stubborn));

    // Stop: the binary and the polite child go at SIGTERM; the stubborn one gets SIGKILL when
    // the grace period (1 s) is over.
    let (code, body) = deployment.post("/v1/stop").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for pid in [binary, polite, stubborn] {
        assert!(!process_alive(pid), "pid {pid} survived Stop");
    }
    let log = deployment.log_text();
    assert!(log.contains("got SIGTERM"), "{log}");
    assert!(log.contains("still there after 1s: SIGKILL to the group"), "{log}");

    // Shutdown with a binary that ignores SIGTERM: SIGKILL to the group after the grace period.
    fs_err::remove_file(work.join("polite.pid")).unwrap();
    fs_err::remove_file(work.join("stubborn.pid")).unwrap();
    fs_err::write(work.join("ignore-term"), "").unwrap();
    let (code, _) = deployment.post("/v1/restart").await;
    assert_eq!(code, StatusCode::OK);
    let running = deployment.wait_healthy(&manifest).await;
    let binary = running.pid.unwrap();
    let polite = read_pid(&work.join("polite.pid")).await;
    let stubborn = read_pid(&work.join("stubborn.pid")).await;
    let started = std::time::Instant::now();
    agent.shutdown().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    for pid in [binary, polite, stubborn] {
        assert!(!process_alive(pid), "pid {pid} survived the agent's shutdown");
    }
    let log = deployment.log_text();
    assert!(log.contains(&format!("pid {binary} did not exit within 1s: SIGKILL")), "{log}");
    assert!(log.contains("agent stopped"), "{log}");
}

#[tokio::test]
async fn a_binary_that_is_gone_is_never_reported_running_or_healthy() {
    let deployment = Deployment::new("127.200.1.8");
    let bootstrap = deployment.bootstrap_with(serde_json::json!({"stop_grace": "3s"}));
    let agent = deployment.start_with(bootstrap).await;
    // The binary exits at SIGTERM; a child of it ignores SIGTERM and holds the group for the
    // whole grace period.
    let manifest = deployment.publish(&Version::script(
        r#"sh -c 'trap "" TERM; while :; do sleep 0.05; done' &
trap 'echo "got SIGTERM"; exit 0' TERM
while :; do sleep 0.05; done
"#,
    ));
    let binary = deployment.install(&manifest).await.pid.unwrap();

    let stop = deployment.post("/v1/stop");
    let watch = async {
        wait_until("the binary to exit", || !process_alive(binary)).await;
        let gone = std::time::Instant::now();
        let status = deployment
            .wait_for("the status to drop the pid", |status| status.pid != Some(binary))
            .await;
        let metrics = deployment.metrics().await;
        // Before, the pid and `healthy` stayed until the group had ended (3 s later).
        assert!(gone.elapsed() < Duration::from_millis(1500), "{:?}", gone.elapsed());
        assert_eq!(
            (status.state, status.pid, status.uptime_secs),
            (BinaryState::Stopped, None, None)
        );
        assert!(metrics.contains("flotilla_binary_up 0\n"), "{metrics}");
        assert!(
            metrics.contains("flotilla_binary_health_state{state=\"healthy\"} 0\n"),
            "{metrics}"
        );
    };
    let ((code, body), ()) = tokio::join!(stop, watch);
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "stopped");
    agent.shutdown().await.unwrap();
}

/// On a cloud machine (its bootstrap names an IMDS) the binary's `AWS_REGION` and
/// `AWS_DEFAULT_REGION` are its machine's region, as an SDK on EC2 would find it from IMDS, not
/// the agent's own (the deployment bucket's region); the manifest's `env` may still set them.
#[tokio::test]
async fn on_a_cloud_machine_the_binary_gets_its_machines_region_for_aws_sdks() {
    let deployment = Deployment::new("127.200.1.9");
    let bootstrap =
        deployment.bootstrap_with(serde_json::json!({"imds": {"endpoint": "http://127.0.0.1:1"}}));
    let agent = deployment.start_with(bootstrap).await;
    let version =
        Version::script(&format!("echo \"aws: $AWS_REGION $AWS_DEFAULT_REGION\"\n{IDLE}"));
    let manifest = deployment.publish(&version);
    deployment.install(&manifest).await;
    let log = deployment.logs(100).await;
    assert!(log.contains("aws: local local"), "the identity's region: {log}");
    agent.shutdown().await.unwrap();
}
