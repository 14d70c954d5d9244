//! The bad-input corpus: every `fixtures/workloads/NAME.csv` must fail with exactly the error in
//! `NAME.expected`, naming its line. Run with `FLOTILLA_BLESS=1` to rewrite the `.expected` files
//! after a deliberate change, then review the diff.

use std::path::{Path, PathBuf};

use flotilla_capacity::simulate::{Settings, WorkloadReader, simulate};

fn corpus() -> Vec<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/workloads");
    let mut files: Vec<PathBuf> = fs_err::read_dir(&directory)
        .expect("the corpus folder exists")
        .map(|entry| entry.expect("the corpus folder is readable").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "csv"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "the corpus is missing files in {}", directory.display());
    files
}

fn bless_mode() -> bool {
    std::env::var_os("FLOTILLA_BLESS").is_some_and(|value| !value.is_empty() && value != "0")
}

#[test]
fn every_bad_workload_fails_with_its_expected_error() {
    let mut failures = Vec::new();
    for file in corpus() {
        let source = fs_err::File::open(&file).expect("the fixture opens");
        let actual = match simulate(WorkloadReader::new(source), &Settings::fish(0.65)) {
            Ok(report) => format!("no error: {} jobs", report.jobs),
            Err(error) => error.to_string(),
        };
        let expected_file = file.with_extension("expected");
        if bless_mode() {
            fs_err::write(&expected_file, format!("{actual}\n"))
                .expect("the expected file is written");
            continue;
        }
        let expected = fs_err::read_to_string(&expected_file).unwrap_or_default();
        if expected.trim_end() != actual {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- actual\n{actual}",
                file.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
