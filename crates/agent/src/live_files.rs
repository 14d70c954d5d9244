//! Live files: a service's files that follow membership rather than the version (Prometheus's
//! target files on the monitoring machine), in `<dir>/live/<service>/`, which a service's
//! arguments name as `{live}`.
//!
//! They travel with hosts.yaml: a change of either is a hosts-only change
//! ([`flotilla_spec::manifest::Manifest::hosts_version`] covers both), and a rollout that brings
//! a new membership brings them too. Each file is downloaded beside its place
//! (`<file>.partial`), verified, and renamed over the old one, so a reader finds the old file
//! or the new one, never a torn one; a file already in place with the right digest is kept.
//! They are never a reason to restart: the service rereads them by itself.
//!
//! The installed membership (`membership` in the instance directory) is the digest the last
//! change recorded, so a restarted agent reports the same one; without the file it is
//! hosts.yaml's digest, as it was before live files existed.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use flotilla_spec::manifest::Manifest;

use crate::artifacts::{DOWNLOAD_TIMEOUT, verify_artifact};
use crate::fetch::Fetchers;
use crate::hosts;
use crate::instance_dir::{
    InstanceDir, PRIVATE_FILE_MODE, create_private_dir, write_file_atomically,
};

/// Where service `name`'s live files are.
pub(crate) fn live_dir(dir: &InstanceDir, service: &str) -> PathBuf {
    dir.root().join("live").join(service)
}

fn membership_file(dir: &InstanceDir) -> PathBuf {
    dir.root().join("membership")
}

/// Puts every live file of `manifest` in place (see the module's documentation).
pub(crate) async fn install(
    fetchers: &Fetchers,
    dir: &InstanceDir,
    manifest: &Manifest,
) -> Result<(), String> {
    for service in &manifest.services {
        if service.live_files.is_empty() {
            continue;
        }
        let live = live_dir(dir, &service.name);
        create_private_dir(&live).map_err(|e| e.to_string())?;
        for (name, artifact) in &service.live_files {
            let path = live.join(name);
            let what = format!("live file {name} of service {}", service.name);
            if verify_artifact(path.clone(), artifact.clone(), &what).await.is_ok() {
                continue;
            }
            let partial = live.join(format!("{name}.partial"));
            let fetch = fetchers.fetch_to_file(&artifact.url, &partial);
            match tokio::time::timeout(DOWNLOAD_TIMEOUT, fetch).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(format!("could not download the {what}: {error}")),
                Err(_) => return Err(format!("could not download the {what} in time")),
            }
            fs_err::tokio::set_permissions(
                &partial,
                std::fs::Permissions::from_mode(PRIVATE_FILE_MODE),
            )
            .await
            .map_err(|e| e.to_string())?;
            verify_artifact(partial.clone(), artifact.clone(), &what).await?;
            fs_err::tokio::rename(&partial, &path).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The installed membership: the recorded digest, or hosts.yaml's.
pub(crate) fn membership(dir: &InstanceDir) -> Option<String> {
    match fs_err::read_to_string(membership_file(dir)) {
        Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
        _ => hosts::digest(dir),
    }
}

/// Records `manifest`'s membership as installed (the file only when it differs from
/// hosts.yaml's digest, that is, when there are live files).
pub(crate) fn record_membership(dir: &InstanceDir, manifest: &Manifest) -> Result<(), String> {
    let membership = manifest.hosts_version();
    if membership == manifest.hosts.sha256 {
        forget_membership(dir);
        return Ok(());
    }
    write_file_atomically(&membership_file(dir), membership.as_bytes(), PRIVATE_FILE_MODE)
        .map_err(|error| format!("could not record the membership: {error}"))
}

/// Forgets the recorded membership: hosts.yaml's digest stands for it again.
pub(crate) fn forget_membership(dir: &InstanceDir) {
    if let Err(error) = fs_err::remove_file(membership_file(dir))
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("could not remove the recorded membership: {error}");
    }
}
