//! Agent builds: the executable each machine architecture boots (this one for machines of this
//! machine's architecture, a named build for the others), and the user data that fetches it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flotilla_core::artifacts::hash_file;
use flotilla_core::provider::{LocalArtifact, ProviderError};

use crate::clients::HOME_REGION;
use crate::userdata;

/// Environment variables naming agent builds for architectures other than this machine's (the
/// CLI reads them into [`crate::AwsOptions::agent_builds`]).
pub const AGENT_ENV: [(&str, &str); 2] =
    [("x86_64", "FLOTILLA_AGENT_X86_64"), ("arm64", "FLOTILLA_AGENT_ARM64")];

/// The architecture name EC2 uses for this machine.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

/// The agent executable for each architecture, with its digest: `this_executable` for this
/// machine's architecture, `builds` for the others.
pub fn agents(
    architectures: &BTreeSet<String>,
    this_executable: &Path,
    builds: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, LocalArtifact>, ProviderError> {
    let mut agents = BTreeMap::new();
    for architecture in architectures {
        let path = if architecture == host_architecture() {
            this_executable.to_path_buf()
        } else {
            let variable = AGENT_ENV
                .iter()
                .find(|(a, _)| a == architecture)
                .map(|(_, v)| *v)
                .unwrap_or("FLOTILLA_AGENT");
            match builds.get(architecture.as_str()) {
                Some(path) => path.clone(),
                None => {
                    return Err(ProviderError::new(format!(
                        "machines of this spec are {architecture} but this flotilla is {}: build flotilla for {architecture} (linux) and name it in {variable}",
                        host_architecture()
                    )));
                }
            }
        };
        let artifact = hash_file(&path).map_err(|e| {
            ProviderError::with_source(
                format!("reading the {architecture} agent {}", path.display()),
                e,
            )
        })?;
        agents.insert(architecture.clone(), artifact);
    }
    Ok(agents)
}

/// The user data of each architecture's machines (base64): the boot script with deployment
/// `tag`'s bucket, role id and agent digest, and nothing else (see [`userdata`]).
pub fn user_data(
    tag: &str,
    bucket: &str,
    role_id: &str,
    agents: &BTreeMap<String, LocalArtifact>,
) -> BTreeMap<String, String> {
    agents
        .iter()
        .map(|(architecture, agent)| {
            let script = userdata::render(&userdata::UserData {
                tag,
                bucket,
                bucket_region: HOME_REGION,
                agent_sha256: &agent.sha256,
                role_id,
            });
            (architecture.clone(), aws_smithy_types::base64::encode(script))
        })
        .collect()
}
