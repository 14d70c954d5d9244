//! `flotilla simulate` through the built binary: a small workload whose figures are worked out
//! by hand, checked in the JSON; `--compare` and `--plot`; bad input and a missing pool are
//! errors with exit status 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600;

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla")).args(args).output().expect("flotilla runs")
}

fn path(directory: &Path, name: &str, content: &str) -> PathBuf {
    let file = directory.join(name);
    fs_err::write(&file, content).expect("the file is written");
    file
}

/// Two 600 s jobs at the same second.
fn two_jobs(directory: &Path) -> PathBuf {
    let csv = format!(
        "startTime,endTime,executionTime,jobName,stageName\n{T0},{},600,a#1,build\n{T0},{},600,b#1,build\n",
        T0 + 600,
        T0 + 600
    );
    path(directory, "jobs.csv", &csv)
}

/// One Mac host in one zone, scrubbed after 5 minutes idle.
fn one_host_pool(directory: &Path) -> PathBuf {
    let pool = "instance_type: mac2.metal\nzones: {us-east-1a: {max: 1}}\nscrubbing: 5m\n";
    path(directory, "pool.yaml", pool)
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

#[test]
fn two_jobs_on_one_host_wait_for_the_scrub_and_the_hours_add_up() {
    let directory = tempfile::tempdir().unwrap();
    let workload = two_jobs(directory.path());
    let pool = one_host_pool(directory.path());
    let output = flotilla(&[
        "simulate",
        "--workload",
        workload.to_str().unwrap(),
        "--pool",
        pool.to_str().unwrap(),
        "--host-price",
        "2",
        "--output",
        "json",
    ]);
    let report = json(&output);
    // A: launched at T0, boot 420 s, runs 600 s; the host scrubs 5400 s (Fish's 90 min); B,
    // waiting since T0, gets it at T0 + 6420 and ends at T0 + 7440; scrub again until
    // T0 + 12840. Billed: 1020 + 1020 s of work. Then idle cycles from T0 + 12840 + 5700k, each
    // 300 s billed before a scrub, while that scrub starts before 24 h (12840 + 5700k + 300 <
    // 86400: k = 0..=12, 13 cycles). The 13th scrub ends at T0 + 86940, past 24 h: the host is
    // released at once. Billed in all: 2040 + 13 * 300 s.
    let months = report["months"].as_array().unwrap();
    assert_eq!(months.len(), 1);
    let january = &months[0];
    assert_eq!(january["month"], "2025-01");
    let instance_hours = january["instance_hours"].as_f64().unwrap();
    assert!((instance_hours - 1200.0 / 3600.0).abs() < 1e-9, "{instance_hours}");
    let host_seconds = january["host_hours"].as_f64().unwrap() * 3600.0;
    assert!((host_seconds - (2040.0 + 13.0 * 300.0)).abs() < 1e-6, "{host_seconds}");
    let usd = january["usd"].as_f64().unwrap();
    assert!((usd - 2.0 * host_seconds / 3600.0).abs() < 1e-9);
    assert!((january["queue_hours"].as_f64().unwrap() - 6420.0 / 3600.0).abs() < 1e-9);
    assert_eq!(report["wait"]["max_s"], 6420);
    assert_eq!(report["rejected"], 0);
    let conservation = &report["conservation"];
    assert_eq!(conservation["holds"], true);
    assert!((conservation["input_job_hours"].as_f64().unwrap() - 1200.0 / 3600.0).abs() < 1e-9);
    assert_eq!(conservation["queued_hours"], 0.0);
}

#[test]
fn compare_runs_each_policy_and_plot_draws_them() {
    let directory = tempfile::tempdir().unwrap();
    let workload = two_jobs(directory.path());
    let pool = one_host_pool(directory.path());
    let plot = directory.path().join("plot.svg");
    let output = flotilla(&[
        "simulate",
        "--workload",
        workload.to_str().unwrap(),
        "--pool",
        pool.to_str().unwrap(),
        "--compare",
        "scrubbing=off,5m",
        "--plot",
        plot.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let comparison = json(&output);
    assert_eq!(comparison["key"], "scrubbing");
    let runs = comparison["runs"].as_array().unwrap();
    let values: Vec<&str> = runs.iter().map(|run| run["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["off", "5m"]);
    let host_hours = |run: &Value| run["report"]["months"][0]["host_hours"].as_f64().unwrap();
    // Off: billed from B's scrub end (T0 + 12840) to the release at T0 + 24 h, besides the work.
    let off_seconds = host_hours(&runs[0]) * 3600.0;
    assert!((off_seconds - (2040.0 + (86_400.0 - 12_840.0))).abs() < 1e-6, "{off_seconds}");
    assert!(host_hours(&runs[1]) < host_hours(&runs[0]));
    assert!(runs.iter().all(|run| run["report"]["conservation"]["holds"] == true));
    let svg = fs_err::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 4, "{svg}");
    assert!(svg.contains(">off</text>") && svg.contains(">5m</text>"));
}

#[test]
fn a_bad_row_is_an_error_naming_its_line_and_realistic_mode_needs_a_pool() {
    let directory = tempfile::tempdir().unwrap();
    let csv = format!(
        "startTime,endTime,executionTime,jobName,stageName\n{T0},{},600,a,build\n{},{},600,b,build\n",
        T0 + 600,
        T0 - 5,
        T0 + 595
    );
    let workload = path(directory.path(), "unsorted.csv", &csv);
    let output = flotilla(&["simulate", "--workload", workload.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3: startTime") && stderr.contains("sorted"), "{stderr}");
    assert!(output.stdout.is_empty());

    let workload = two_jobs(directory.path());
    let output =
        flotilla(&["simulate", "--workload", workload.to_str().unwrap(), "--mode", "realistic"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs --pool"));
}

#[test]
fn a_fleet_spec_with_several_pools_needs_a_pool_name() {
    let directory = tempfile::tempdir().unwrap();
    let workload = two_jobs(directory.path());
    let spec = "host_pools:\n  arm: {instance_type: mac2.metal, zones: {us-east-1a: {max: 2}}}\n  intel: {instance_type: mac1.metal, zones: {us-east-1a: {max: 2}}}\n";
    let pools = path(directory.path(), "pools.yaml", spec);
    let args = ["simulate", "--workload", workload.to_str().unwrap(), "--pool"];
    let output = flotilla(&[&args[..], &[pools.to_str().unwrap()]].concat());
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--pool-name"));
    let output = flotilla(
        &[&args[..], &[pools.to_str().unwrap(), "--pool-name", "intel", "--output", "json"]]
            .concat(),
    );
    let report = json(&output);
    // mac1.metal's built-in price: $1.083 an hour.
    let january = &report["months"][0];
    let ratio = january["usd"].as_f64().unwrap() / january["host_hours"].as_f64().unwrap();
    assert!((ratio - 1.083).abs() < 1e-9, "{ratio}");
}

#[test]
fn realistic_mode_takes_the_named_pool_rows_and_rejects_the_others() {
    let directory = tempfile::tempdir().unwrap();
    let csv = format!(
        "startTime,endTime,executionTime,jobName,stageName,pool,instanceType,zones\n\
         {T0},{},600,a,build,arm,mac2.metal,\n\
         {T0},{},300,b,build,intel,mac2.metal,\n\
         {T0},{},120,c,build,,mac2.metal,us-east-1a\n",
        T0 + 600,
        T0 + 300,
        T0 + 120
    );
    let workload = path(directory.path(), "pools.csv", &csv);
    let spec = "host_pools:\n  arm: {instance_type: mac2.metal, zones: {us-east-1a: {max: 2}}}\n";
    let named = path(directory.path(), "named.yaml", spec);
    let bare = one_host_pool(directory.path());
    let run = |pool: &Path| {
        let args = ["simulate", "--workload", workload.to_str().unwrap(), "--mode", "realistic"];
        let pool_args = ["--pool", pool.to_str().unwrap(), "--output", "json"];
        json(&flotilla(&[&args[..], &pool_args[..]].concat()))
    };
    let report = run(&named);
    assert_eq!(report["rejected"], 1, "the `intel` row is another pool's");
    let rejected = report["conservation"]["rejected_hours"].as_f64().unwrap();
    assert!((rejected - 300.0 / 3600.0).abs() < 1e-9);
    assert_eq!(run(&bare)["rejected"], 0, "a pool written alone takes every row");
}

#[test]
fn create_and_plan_refuse_mac_entries_before_any_cloud_call() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/tests/fixtures/valid/host-pools.yaml");
    let spec = directory.path().join("fleet.yaml");
    fs_err::copy(&fixture, &spec).expect("the fixture is copied");
    let spec = spec.to_str().expect("a UTF-8 path");
    for command in ["plan", "create"] {
        let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([command, "--config", spec])
            .current_dir(directory.path())
            .env("FLOTILLA_HOME", directory.path().join("home"))
            // Nothing listens there: a call that left this machine would fail differently.
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "none")
            .env("AWS_SECRET_ACCESS_KEY", "none")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("flotilla runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        // The pools are accepted; their Mac machines are not: flotilla's agent boots Linux.
        for (instance_type, index) in [("mac2.metal", 0), ("mac1.metal", 1)] {
            let message = format!(
                "instances[{index}].instance_type: `{instance_type}` runs macOS, and flotilla's agent and boot script are built for Linux only"
            );
            assert!(stderr.contains(&message), "{command}: {stderr}");
        }
        assert!(stderr.contains("flotilla simulate --pool"), "{command} says what to do: {stderr}");
        assert!(!directory.path().join("home/deployments/mac-ci").exists(), "{command}");
    }
}
