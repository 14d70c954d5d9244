//! `flotilla profile` on a local machine: the agent records the running binary with Linux perf
//! and the CLI writes `perf script` text, the format the Firefox Profiler loads. Needs `perf`
//! (`scripts/test` installs Debian's `linux-perf`) and a kernel that lets this user sample
//! (root, or `kernel.perf_event_paranoid` ≤ 1).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

const SPEC: &str = "tag: profiled
provider: local
monitoring:
  instance_type: t4g.small
  storage_size: 10
  storage_class: gp3
  dashboard: dashboard.json
instances:
- name: node
  count: 1
  region: local
  instance_type: t4g.small
  storage_size: 10
  storage_class: gp3
  binary: busy.sh
  config: config.conf
  profiling: false
ports: []
";

fn require_perf() {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("perf").is_file()));
    assert!(found, "perf is not installed: run scripts/test, or apt-get install linux-perf");
}

/// Whether `line` opens a sample the way `perf script` writes one: `comm pid time: period
/// event:` (the Firefox Profiler's perf importer reads these, each followed by its frames).
fn is_sample_header(line: &str) -> bool {
    let Some((before, after)) = line.split_once(": ") else {
        return false;
    };
    let fields: Vec<&str> = before.split_whitespace().collect();
    let time_ok = fields.last().is_some_and(|t| t.contains('.') && t.parse::<f64>().is_ok());
    let pid_ok = fields.len() >= 3 && fields[fields.len() - 2].parse::<u32>().is_ok();
    let period = after.split_whitespace().next().unwrap_or_default();
    !line.starts_with(char::is_whitespace) && time_ok && pid_ok && period.parse::<u64>().is_ok()
}

/// Whether `line` is a frame: an address, a symbol, and the object in parentheses.
fn is_frame(line: &str) -> bool {
    let trimmed = line.trim_start();
    line.starts_with(char::is_whitespace)
        && trimmed
            .split_whitespace()
            .next()
            .is_some_and(|a| a.bytes().all(|b| b.is_ascii_hexdigit()))
        && trimmed.ends_with(')')
}

#[test]
fn a_profile_of_the_running_binary_comes_back_in_perfs_text_format() {
    require_perf();
    let fleet = TestFleet::with_spec("profiled", SPEC);
    let script = fleet.work.path().join("busy.sh");
    fs_err::write(&script, "#!/bin/sh\nwhile :; do :; done\n").unwrap();
    fs_err::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rows = fleet.create();
    let pid = row(&rows, "node-0")["pid"].as_u64().expect("the binary runs");

    let out = fleet.work.path().join("node-0.perf.txt");
    let output = fleet.run_ok(&[
        "profile",
        "--tag",
        "profiled",
        "node-0",
        "--duration",
        "2s",
        "--frequency",
        "199",
        "--output",
        &out.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.trim(), out.display().to_string(), "stdout names the file");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("profiler.firefox.com"), "says how to open it: {stderr}");

    let text = fs_err::read_to_string(&out).expect("the profile was written");
    let headers: Vec<&str> = text.lines().filter(|l| is_sample_header(l)).collect();
    assert!(
        headers.len() >= 50,
        "a busy loop sampled at 199 Hz for 2 s: {} samples",
        headers.len()
    );
    assert!(
        headers.iter().all(|h| h.split_whitespace().nth(1) == Some(&pid.to_string())),
        "every sample is of the binary, pid {pid}: {:?}",
        &headers[..headers.len().min(3)]
    );
    let frames = text.lines().filter(|l| is_frame(l)).count();
    assert!(frames >= headers.len(), "each sample has its stack: {frames} frames");
    assert!(text.contains("dash") || text.contains("/bin/sh"), "the shell's frames are named");

    // A machine that runs nothing to profile, and a duration out of bounds, are refused.
    let output = fleet.run(&["profile", "--tag", "profiled", "monitoring", "--duration", "1s"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nothing to profile"), "{stderr}");
    let output = fleet.run(&["profile", "--tag", "profiled", "node-0", "--duration", "10m"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at most 5m"));
}
