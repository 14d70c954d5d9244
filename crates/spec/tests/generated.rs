//! The committed generated files (JSON Schemas under `schema/`, `docs/spec-reference.md`) must
//! equal what the code generates. Regenerate them with `FLOTILLA_BLESS=1 cargo test -p
//! flotilla-spec`.

use std::path::PathBuf;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bless_mode() -> bool {
    std::env::var_os("FLOTILLA_BLESS").is_some_and(|value| !value.is_empty() && value != "0")
}

#[test]
fn committed_generated_files_are_current() {
    let mut stale = Vec::new();
    for (relative, generated) in flotilla_spec::schema::generated_files() {
        let path = workspace_root().join(relative);
        if bless_mode() {
            fs_err::create_dir_all(path.parent().expect("generated files live in a folder"))
                .unwrap();
            fs_err::write(&path, &generated).unwrap();
            continue;
        }
        let committed = fs_err::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            stale.push(relative);
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files: {stale:?}\nregenerate them with `FLOTILLA_BLESS=1 cargo test -p flotilla-spec` and commit the result"
    );
}

#[test]
fn fleet_schema_is_valid_json_schema_shape() {
    let schema = flotilla_spec::fleet_schema();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(schema["title"], "flotilla fleet spec");
    assert_eq!(schema["required"], serde_json::json!(["tag", "monitoring", "instances", "ports"]));
}
