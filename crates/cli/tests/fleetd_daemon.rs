//! Standalone `flotilla fleetd` as a process, against an IMDS scripted by each test (a tiny
//! HTTP server on 127.0.0.1 that answers IMDSv2 as EC2 does, or fails as told), with configs
//! of exec hooks only (no cloud): hooks with their macros, a spot notice, SIGTERM, a bad
//! config, `--disable-all`, the config from user data, and an IMDS that fails, hangs or
//! refuses the token.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How the scripted IMDS answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// As EC2 does.
    Answer,
    /// 500 to everything.
    Fail,
    /// Accepts connections and never answers.
    Silent,
    /// 401 to everything, the token too.
    Unauthorized,
}

#[derive(Debug)]
struct Script {
    mode: Mode,
    user_data: Option<String>,
    spot: Option<String>,
    /// Requests for the spot route answered while failing.
    failed_spot_polls: u32,
}

/// An IMDS on 127.0.0.1 whose answers the test changes as it goes.
struct ScriptedImds {
    port: u16,
    script: Arc<Mutex<Script>>,
}

impl ScriptedImds {
    fn start(mode: Mode) -> ScriptedImds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(Script {
            mode,
            user_data: None,
            spot: None,
            failed_spot_polls: 0,
        }));
        let shared = script.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let script = shared.clone();
                std::thread::spawn(move || answer(stream, &script));
            }
        });
        ScriptedImds { port, script }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set(&self, change: impl FnOnce(&mut Script)) {
        change(&mut self.script.lock().unwrap());
    }
}

fn answer(mut stream: TcpStream, script: &Mutex<Script>) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request).into_owned();
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let token_ok = request.to_ascii_lowercase().contains("x-aws-ec2-metadata-token: scripted");
    let (status, body) = {
        let mut script = script.lock().unwrap();
        match script.mode {
            Mode::Silent => {
                drop(script);
                // Hold the connection open without a word, until the client gives up.
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Mode::Unauthorized => (401, String::new()),
            Mode::Fail => {
                if path.ends_with("spot/instance-action") {
                    script.failed_spot_polls += 1;
                }
                (500, String::new())
            }
            Mode::Answer if method == "PUT" && path == "/latest/api/token" => {
                (200, "scripted".to_owned())
            }
            Mode::Answer if !token_ok => (401, String::new()),
            Mode::Answer => match path {
                "/latest/meta-data/instance-id" => (200, "i-0123456789abcdef0".to_owned()),
                "/latest/meta-data/instance-type" => (200, "t3.small".to_owned()),
                "/latest/meta-data/placement/region" => (200, "eu-west-1".to_owned()),
                "/latest/meta-data/placement/availability-zone" => (200, "eu-west-1b".to_owned()),
                "/latest/meta-data/public-ipv4" => (200, "203.0.113.9".to_owned()),
                "/latest/meta-data/local-ipv4" => (200, "10.1.2.3".to_owned()),
                "/latest/meta-data/ami-launch-index" => (200, "4".to_owned()),
                "/latest/meta-data/system" => (200, "nitro".to_owned()),
                "/latest/user-data" => match &script.user_data {
                    Some(data) => (200, data.clone()),
                    None => (404, String::new()),
                },
                "/latest/meta-data/spot/instance-action" => match &script.spot {
                    Some(notice) => (200, notice.clone()),
                    None => (404, String::new()),
                },
                _ => (404, String::new()),
            },
        }
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A config of exec hooks only, each appending its event and macros to `out`.
fn hooks_config(out: &Path) -> String {
    let line = |event: &str, text: &str| {
        format!(
            "{{on: ['{event}'], lines: [{{argv: ['sh', '-c', 'echo \"{text}\" >> {}']}}]}}",
            out.display()
        )
    };
    format!(
        "// an ec2fleetd config, unchanged\n{{domains: {{game: {{exec: [\n{},\n{},\n{},\n{},\n]}}}}}}\n",
        line("starting", "starting {instance_id} {ami-i} {placement_zone} {domain}"),
        line("started", "started {daemon_state} {primary_public_ipv4} {transaction_id}"),
        line("interrupted", "interrupted {interrupt_action} {interrupt_time}"),
        line("stopping", "stopping {daemon_state}"),
    )
}

struct Run {
    child: Child,
    dir: tempfile::TempDir,
    out: PathBuf,
    notify: UnixDatagram,
}

/// Starts `flotilla fleetd` with `args`, a state directory and a notify socket of its own.
fn fleetd(dir: tempfile::TempDir, args: &[&str]) -> Run {
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let child = Command::new(flotilla_bin())
        .arg("fleetd")
        .args(args)
        .arg(format!("--state-dir={}", dir.path().join("state").display()))
        .arg("--imds-wait=1s")
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = dir.path().join("out");
    Run { child, dir, out, notify }
}

impl Run {
    fn lines(&self) -> Vec<String> {
        fs_err::read_to_string(&self.out)
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn wait_for_line(&self, prefix: &str) -> String {
        wait_for(&format!("a `{prefix}` hook line"), Duration::from_secs(15), || {
            self.lines().into_iter().find(|line| line.starts_with(prefix))
        })
    }

    /// Waits (bounded) for the process to exit: its status and stderr.
    fn exit_within(mut self, limit: Duration) -> (ExitStatus, String, Vec<String>) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let mut stderr = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut stderr);
                panic!("fleetd did not exit within {limit:?}; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut stderr);
        let lines = self.lines();
        drop(self.dir);
        (status, stderr, lines)
    }

    fn notifications(&self) -> Vec<String> {
        let mut received = Vec::new();
        self.notify.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 512];
        while let Ok(length) = self.notify.recv(&mut buffer) {
            received.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
        self.notify.set_nonblocking(false).unwrap();
        received
    }
}

fn with_config(text: impl FnOnce(&Path) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleetd.jsonc");
    let text = text(&dir.path().join("out"));
    fs_err::write(&file, text).unwrap();
    (dir, file)
}

#[test]
fn hooks_run_with_their_macros_and_a_spot_notice_runs_interrupted_then_exits_0() {
    let imds = ScriptedImds::start(Mode::Answer);
    let (dir, file) = with_config(hooks_config);
    let run = fleetd(
        dir,
        &[
            &format!("--imds={}", imds.endpoint()),
            &format!("--userdata={}", file.display()),
            "--transc_id=t-42",
        ],
    );
    assert_eq!(run.wait_for_line("starting"), "starting i-0123456789abcdef0 4 eu-west-1b game");
    assert_eq!(run.wait_for_line("started"), "started started 203.0.113.9 t-42");
    let notified = wait_for("READY=1", Duration::from_secs(5), || {
        let received = run.notifications();
        received.iter().any(|n| n == "READY=1").then_some(received)
    });
    assert!(notified.iter().any(|n| n.starts_with("READY=1")), "{notified:?}");
    // A spot notice whose time has passed: now.
    let noticed = Instant::now();
    imds.set(|s| s.spot = Some(r#"{"action":"terminate","time":"2020-01-01T00:00:00Z"}"#.into()));
    let (status, stderr, lines) = run.exit_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(noticed.elapsed() < Duration::from_secs(5), "{:?}", noticed.elapsed());
    assert_eq!(
        lines,
        [
            "starting i-0123456789abcdef0 4 eu-west-1b game",
            "started started 203.0.113.9 t-42",
            "interrupted terminate 2020-01-01T00:00:00Z",
        ]
    );
}

#[test]
fn sigterm_runs_the_stopping_hooks_and_exits_0() {
    let imds = ScriptedImds::start(Mode::Answer);
    let (dir, file) = with_config(hooks_config);
    let run = fleetd(
        dir,
        &[&format!("--imds={}", imds.endpoint()), &format!("--userdata={}", file.display())],
    );
    run.wait_for_line("started");
    let killed =
        Command::new("kill").args(["-TERM", &run.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let (status, stderr, lines) = run.exit_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(lines.last().map(String::as_str), Some("stopping stopping"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("interrupted")), "{lines:?}");
}

#[test]
fn the_config_comes_from_imds_user_data() {
    let imds = ScriptedImds::start(Mode::Answer);
    let dir = tempfile::tempdir().unwrap();
    let user_data = hooks_config(&dir.path().join("out"));
    imds.set(|s| s.user_data = Some(user_data));
    let run = fleetd(dir, &[&format!("--imds={}", imds.endpoint())]);
    assert_eq!(run.wait_for_line("starting"), "starting i-0123456789abcdef0 4 eu-west-1b game");
    run.wait_for_line("started");
    imds.set(|s| s.spot = Some(r#"{"action":"stop","time":"2020-01-01T00:00:00Z"}"#.into()));
    let (status, stderr, lines) = run.exit_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(lines.last().map(String::as_str), Some("interrupted stop 2020-01-01T00:00:00Z"));
}

#[test]
fn a_bad_config_exits_3_with_every_error_located() {
    let imds = ScriptedImds::start(Mode::Answer);
    let (dir, file) = with_config(|_| {
        "{domains: {d: {exec: [{on: ['starting', 'startd'], lines: [{argv: ['echo', '{nope}']}]}]}}}"
            .to_owned()
    });
    let name = file.display().to_string();
    let run = fleetd(dir, &[&format!("--imds={}", imds.endpoint()), &format!("--userdata={name}")]);
    let (status, stderr, lines) = run.exit_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("{name}:1:")), "{stderr}");
    assert!(stderr.contains("startd"), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(lines.is_empty());
}

#[test]
fn disable_all_runs_nothing_and_ends() {
    let imds = ScriptedImds::start(Mode::Answer);
    let (dir, file) = with_config(hooks_config);
    let run = fleetd(
        dir,
        &[
            &format!("--imds={}", imds.endpoint()),
            &format!("--userdata={}", file.display()),
            "--disable-all",
        ],
    );
    let (status, stderr, lines) = run.exit_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(lines.is_empty(), "hooks ran: {lines:?}");
}

#[test]
fn an_imds_that_fails_hangs_or_refuses_the_token_ends_fleetd_with_4_in_bounded_time() {
    for mode in [Mode::Fail, Mode::Silent, Mode::Unauthorized] {
        let imds = ScriptedImds::start(mode);
        let (dir, file) = with_config(hooks_config);
        let started = Instant::now();
        let run = fleetd(
            dir,
            &[&format!("--imds={}", imds.endpoint()), &format!("--userdata={}", file.display())],
        );
        // --imds-wait=1s, each request bounded by the client's timeout.
        let (status, stderr, lines) = run.exit_within(Duration::from_secs(15));
        assert_eq!(status.code(), Some(4), "{mode:?}: {stderr}");
        assert!(stderr.contains("IMDS"), "{mode:?}: {stderr}");
        assert!(lines.is_empty(), "{mode:?}: {lines:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{mode:?}: {:?}", started.elapsed());
    }
}

#[test]
fn polling_survives_an_imds_that_fails_and_sees_the_notice_once_it_mends() {
    let imds = ScriptedImds::start(Mode::Answer);
    let (dir, file) = with_config(hooks_config);
    let run = fleetd(
        dir,
        &[&format!("--imds={}", imds.endpoint()), &format!("--userdata={}", file.display())],
    );
    run.wait_for_line("started");
    imds.set(|s| s.mode = Mode::Fail);
    wait_for("two failed spot polls", Duration::from_secs(10), || {
        let failed = imds.script.lock().unwrap().failed_spot_polls;
        (failed >= 2).then_some(())
    });
    imds.set(|s| {
        s.mode = Mode::Answer;
        s.spot = Some(r#"{"action":"terminate","time":"2020-01-01T00:00:00Z"}"#.into());
    });
    let (status, stderr, lines) = run.exit_within(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("interrupted terminate 2020-01-01T00:00:00Z")
    );
}

/// The systemd units in `packaging/systemd/` pass `systemd-analyze verify` (with `ExecStart`
/// pointing at the binary under test, which the tool requires to exist). The tool is required:
/// without it the test fails and says how to install it.
#[test]
fn the_systemd_units_verify() {
    let tool = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze is missing: install it with `apt-get install -y systemd` \
                 (scripts/test does) to check the units in packaging/systemd/"
            )
        });
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for (file, name, command, kind) in [
        ("flotilla-fleetd.service", "flotilla-fleetd.service", "fleetd", "Type=notify"),
        ("flotilla-fleetd@.service", "flotilla-fleetd@game.service", "fleetd", "Type=notify"),
        (
            "flotilla-watch@.service",
            "flotilla-watch@my-fleet.service",
            "watch --tag %i",
            "Type=exec",
        ),
    ] {
        let text = fs_err::read_to_string(units.join(file)).unwrap();
        assert!(text.contains(&format!("ExecStart=/usr/local/bin/flotilla {command}")), "{file}");
        assert!(text.contains(kind) && text.contains("Restart="), "{file}");
        let text = text.replace("/usr/local/bin/flotilla", &flotilla_bin().display().to_string());
        fs_err::write(dir.path().join(name), text).unwrap();
        names.push(dir.path().join(name));
    }
    let output = Command::new(tool).arg("verify").arg("--man=no").args(&names).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warned:\n{stderr}");
}
