//! Real AWS data for the tests: the `DescribeInstanceTypes` and `DescribeInstanceTypeOfferings`
//! output moto ships (moto is pinned at 5.2.5 in the emulator's venv, which `scripts/test`
//! creates before the tests run). Read, not copied: the files stay moto's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::catalog::{Catalog, InstanceType};

/// The emulator's venv, found as the emulator finds it.
fn venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_EMULATOR_VENV").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("flotilla").join("emulator-venv-5.2.5")
}

/// moto's `ec2/resources` directory, or a loud failure saying how to get it.
fn resources() -> PathBuf {
    let lib = venv().join("lib");
    let found = fs_read_dir(&lib).into_iter().find_map(|python| {
        let dir = python.join("site-packages/moto/ec2/resources");
        dir.join("instance_types.json.gz").exists().then_some(dir)
    });
    found.unwrap_or_else(|| {
        panic!(
            "moto's instance type data is missing under {}: start the AWS emulator once to create its venv \
             (scripts/test does; or `target/debug/flotilla-emulator up`), or point FLOTILLA_EMULATOR_VENV at it",
            lib.display()
        )
    })
}

fn fs_read_dir(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).collect()
}

/// A gzip file's content, through the system's `gzip` (no decompressor in the dependencies).
fn gunzip(path: &Path) -> Vec<u8> {
    let output =
        std::process::Command::new("gzip").arg("-dc").arg(path).output().unwrap_or_else(|e| {
            panic!("gzip is needed to read moto's data ({e}): apt-get install gzip")
        });
    assert!(
        output.status.success(),
        "gzip -dc {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Every instance type moto knows, with the zone offerings of us-east-1, us-west-2 and
/// eu-west-1.
pub(crate) fn catalog() -> Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG
        .get_or_init(|| {
            let dir = resources();
            let types = InstanceType::from_aws_json(&gunzip(&dir.join("instance_types.json.gz")))
                .expect("moto's instance types are DescribeInstanceTypes items");
            let mut catalog = Catalog::with_types(types);
            for region in ["us-east-1", "us-west-2", "eu-west-1"] {
                let path =
                    dir.join(format!("instance_type_offerings/availability-zone/{region}.json.gz"));
                catalog.offer_from_aws_json(region, &gunzip(&path)).expect("offerings parse");
            }
            catalog
        })
        .clone()
}
