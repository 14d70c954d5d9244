//! The example specs in `examples/` are valid fleet specs with no warnings.

use std::path::Path;

#[test]
fn every_example_spec_parses_cleanly() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in fs_err::read_dir(&examples).expect("examples/ exists") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        match flotilla_spec::load_fleet_spec(&path) {
            Ok(document) => {
                assert!(document.warnings.is_empty(), "{}: {:?}", path.display(), document.warnings)
            }
            Err(errors) => panic!("{errors}"),
        }
        checked += 1;
    }
    assert!(checked >= 3, "found only {checked} example specs");
}

/// The spec shown in the README parses with no error or warning, so the README cannot drift.
#[test]
fn the_readme_spec_parses_cleanly() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = fs_err::read_to_string(&readme).expect("README.md exists");
    let start = text.find("```yaml\n").expect("the README shows a spec") + "```yaml\n".len();
    let end = start + text[start..].find("```").expect("the block ends");
    let document = flotilla_spec::parse_fleet_spec(&text[start..end], &readme)
        .unwrap_or_else(|errors| panic!("{errors}"));
    assert!(document.warnings.is_empty(), "{:?}", document.warnings);
    assert_eq!(document.spec.instances[0].count, Some(5));
}

/// The README's `lifecycle:` example, placed in an instance entry of an example spec, parses
/// with no error or warning.
#[test]
fn the_readme_lifecycle_example_parses_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = fs_err::read_to_string(root.join("README.md")).expect("README.md exists");
    let start = text.find("```yaml\n  lifecycle:").expect("the README shows a lifecycle")
        + "```yaml\n".len();
    let end = start + text[start..].find("```").expect("the block ends");
    let example = root.join("examples/local-fleet.yaml");
    let spec = fs_err::read_to_string(&example).expect("the example spec exists");
    let anchor = "  profiling: false\n";
    assert!(spec.contains(anchor), "{spec}");
    let spec = spec.replacen(anchor, &format!("{anchor}{}", &text[start..end]), 1);
    let document = flotilla_spec::parse_fleet_spec(&spec, &example)
        .unwrap_or_else(|errors| panic!("{errors}\n{spec}"));
    assert!(document.warnings.is_empty(), "{:?}", document.warnings);
    let Some(flotilla_spec::fleetd::Lifecycle::Inline(config)) =
        &document.spec.instances[0].lifecycle
    else {
        panic!("an inline lifecycle: {:?}", document.spec.instances[0].lifecycle)
    };
    assert_eq!(config.domains[0].exec.len(), 2);
}
