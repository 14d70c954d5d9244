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

/// Builds `source` with rustc (optimised, with symbols) as `name` in `dir`, and a stripped copy
/// `name.stripped`.
fn build_busy_program(dir: &std::path::Path, source: &str, name: &str) -> std::path::PathBuf {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let file = dir.join(format!("{name}.rs"));
    fs_err::write(&file, source).expect("the program source is written");
    let built = dir.join(name);
    let status = std::process::Command::new(&rustc)
        .args(["-O", "-g", "--edition", "2021", "-o"])
        .arg(&built)
        .arg(&file)
        .status()
        .unwrap_or_else(|e| panic!("{rustc} runs: {e}"));
    assert!(status.success(), "{rustc} builds the busy program");
    let stripped = dir.join(format!("{name}.stripped"));
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&built)
        .status()
        .unwrap_or_else(|e| panic!("strip is not installed ({e}): apt-get install binutils"));
    assert!(status.success(), "strip copies the program without its symbols");
    built
}

#[test]
fn a_stripped_binarys_frames_are_named_from_the_local_build() {
    require_perf();
    let fleet = TestFleet::with_spec(
        "symbols",
        &SPEC.replace("profiled", "symbols").replace("busy.sh", "busy.stripped"),
    );
    let built = build_busy_program(
        fleet.work.path(),
        "#[inline(never)]\nfn spin_in_a_named_function(n: u64) -> f64 {\n    let mut s = 0.0;\n    for i in 0..n { s += (i as f64).sqrt(); }\n    s\n}\nfn main() {\n    let mut t = 0.0;\n    loop { t += spin_in_a_named_function(std::hint::black_box(20_000_000)); if t < 0.0 { println!(\"{t}\"); } }\n}\n",
        "busy",
    );
    fleet.create();
    let unnamed = fleet.work.path().join("unnamed.perf.txt");
    fleet.run_ok(&[
        "profile",
        "--tag",
        "symbols",
        "node-0",
        "--duration",
        "1s",
        "--frequency",
        "199",
        "--output",
        &unnamed.display().to_string(),
    ]);
    let text = fs_err::read_to_string(&unnamed).unwrap();
    let binary_frames: Vec<&str> =
        text.lines().filter(|l| is_frame(l) && l.ends_with("/binary)")).collect();
    assert!(
        !binary_frames.is_empty(),
        "frames in the machine's binary: {}",
        &text[..text.len().min(500)]
    );
    assert!(
        !text.contains("spin_in_a_named_function"),
        "the machine's binary is stripped: nothing names the function without --binary"
    );

    let named = fleet.work.path().join("named.perf.txt");
    let output = fleet.run_ok(&[
        "profile",
        "--tag",
        "symbols",
        "node-0",
        "--duration",
        "1s",
        "--frequency",
        "199",
        "--binary",
        &built.display().to_string(),
        "--output",
        &named.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("frames in node-0's binary named from"), "{stderr}");
    let text = fs_err::read_to_string(&named).unwrap();
    let spinning = text
        .lines()
        .filter(|l| {
            is_frame(l)
                && l.contains(" busy::spin_in_a_named_function+0x")
                && l.ends_with("/binary)")
        })
        .count();
    let samples = text.lines().filter(|l| is_sample_header(l)).count();
    assert!(
        spinning * 2 >= samples,
        "most samples are in the named function: {spinning} of {samples}\n{}",
        &text[..text.len().min(800)]
    );
    assert!(
        text.lines().all(|l| l.is_empty() || is_sample_header(l) || is_frame(l)),
        "still perf script text"
    );

    // A file without symbols is refused before anything is recorded.
    let stripped = fleet.work.path().join("busy.stripped");
    let output = fleet.run(&[
        "profile",
        "--tag",
        "symbols",
        "node-0",
        "--binary",
        &stripped.display().to_string(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no function symbols"), "{stderr}");
}
