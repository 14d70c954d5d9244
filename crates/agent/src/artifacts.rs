//! Version directories: downloading a manifest's artifacts into `versions/<version>.partial/`,
//! verifying size and SHA-256, setting modes (binary and service programs 0700, the rest 0600),
//! services' under `services/<name>/`, and renaming the
//! directory into place only when all of it is right. A version directory that exists is
//! therefore complete; it is verified again before the agent runs it after a restart.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_spec::manifest::{Artifact, Manifest, ServiceProgram, short_version};
use sha2::{Digest, Sha256};

use crate::fetch::Fetchers;
use crate::instance_dir::{
    BINARY_MODE, InstanceDir, PRIVATE_FILE_MODE, create_private_dir, write_file_atomically,
};

/// How long one artifact may take to download.
pub(crate) const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The file names of a version directory.
pub(crate) const BINARY_FILE: &str = "binary";
pub(crate) const CONFIG_FILE: &str = "config.conf";
pub(crate) const MANIFEST_FILE: &str = "manifest.json";
/// A service's downloaded program, in `services/<name>/`.
pub(crate) const SERVICE_PROGRAM_FILE: &str = "program";

/// The artifacts of a version directory, with the path each lands in (relative to the version
/// directory) and its mode. hosts.yaml is not one: it is not part of the version (see `hosts`).
fn artifacts(manifest: &Manifest) -> Vec<(&Artifact, PathBuf, u32)> {
    let mut artifacts = Vec::new();
    if let Some(binary) = &manifest.binary {
        artifacts.push((binary, PathBuf::from(BINARY_FILE), BINARY_MODE));
    }
    if let Some(config) = &manifest.config {
        artifacts.push((config, PathBuf::from(CONFIG_FILE), PRIVATE_FILE_MODE));
    }
    for service in &manifest.services {
        let dir = crate::supervisor::service_files_dir(&service.name);
        if let ServiceProgram::Artifact(program) = &service.program {
            artifacts.push((program, dir.join(SERVICE_PROGRAM_FILE), BINARY_MODE));
        }
        for (file_name, file) in &service.files {
            artifacts.push((file, dir.join(file_name), PRIVATE_FILE_MODE));
        }
    }
    artifacts
}

/// Makes `versions/<version>/` hold `manifest`'s verified artifacts. Keeps a complete directory
/// that is already there and still verifies (a version rolled back to, or re-applied after a
/// failure); otherwise downloads anew. The error says which artifact failed and why.
pub(crate) async fn install_version(
    fetchers: &Fetchers,
    dir: &InstanceDir,
    version: &str,
    manifest: &Manifest,
) -> Result<(), String> {
    let final_dir = dir.version(version);
    if fs_err::tokio::metadata(&final_dir).await.is_ok() {
        if verify_version_dir(&final_dir, manifest).await.is_ok() {
            return Ok(());
        }
        fs_err::tokio::remove_dir_all(&final_dir).await.map_err(|e| e.to_string())?;
    }
    let partial = dir.partial_version(version);
    remove_dir_if_present(&partial).await.map_err(|e| e.to_string())?;
    create_private_dir(&partial).map_err(|e| e.to_string())?;
    // The artifacts are independent: fetch and verify them at once.
    for service in &manifest.services {
        create_private_dir(&partial.join(crate::supervisor::service_files_dir(&service.name)))
            .map_err(|e| e.to_string())?;
    }
    let downloads = artifacts(manifest).into_iter().map(|(artifact, relative, mode)| {
        let path = partial.join(&relative);
        let file_name = relative.display().to_string();
        async move {
            let fetch = fetchers.fetch_to_file(&artifact.url, &path);
            match tokio::time::timeout(DOWNLOAD_TIMEOUT, fetch).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Err(format!("could not download the {file_name}: {error}"));
                }
                Err(_) => {
                    return Err(format!(
                        "could not download the {file_name} from {} within {}",
                        artifact.url,
                        humantime::format_duration(DOWNLOAD_TIMEOUT)
                    ));
                }
            }
            fs_err::tokio::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| e.to_string())?;
            verify_artifact(path, artifact.clone(), &file_name).await
        }
    });
    // Every download ends before an error is returned: one still under way would write into
    // the directory the caller removes next (file operations run on blocking threads that a
    // dropped future does not stop).
    for result in futures_util::future::join_all(downloads).await {
        result?;
    }
    let manifest_json = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    write_file_atomically(&partial.join(MANIFEST_FILE), &manifest_json, PRIVATE_FILE_MODE)
        .map_err(|e| e.to_string())?;
    fs_err::tokio::rename(&partial, &final_dir).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads `versions/<version>/manifest.json` and checks that it is that version and that the
/// artifacts still match it.
pub(crate) async fn load_version(dir: &InstanceDir, version: &str) -> Result<Manifest, String> {
    let version_dir = dir.version(version);
    let text = fs_err::tokio::read_to_string(version_dir.join(MANIFEST_FILE))
        .await
        .map_err(|e| e.to_string())?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| format!("{}: {e}", version_dir.join(MANIFEST_FILE).display()))?;
    if manifest.version() != version {
        return Err(format!(
            "{} describes version {}, not {}",
            version_dir.join(MANIFEST_FILE).display(),
            short_version(&manifest.version()),
            short_version(version)
        ));
    }
    verify_version_dir(&version_dir, &manifest).await?;
    Ok(manifest)
}

async fn verify_version_dir(version_dir: &Path, manifest: &Manifest) -> Result<(), String> {
    for (artifact, relative, _) in artifacts(manifest) {
        let file_name = relative.display().to_string();
        verify_artifact(version_dir.join(&relative), artifact.clone(), &file_name).await?;
    }
    Ok(())
}

/// Checks size, then SHA-256, of the file at `path` (hashed on a blocking thread).
pub(crate) async fn verify_artifact(
    path: PathBuf,
    artifact: Artifact,
    file_name: &str,
) -> Result<(), String> {
    let what = file_name.to_owned();
    let digest = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let file_name = what;
        let mut file = fs_err::File::open(&path).map_err(|e| e.to_string())?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        if size != artifact.size {
            return Err(format!(
                "the {file_name} at {} (from {}) has {size} bytes, but the manifest says {}; the artifact changed after the manifest was made, or the copy is incomplete",
                path.display(), artifact.url, artifact.size
            ));
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = file.read(&mut buffer).map_err(|e| e.to_string())?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let digest = hex::encode(hasher.finalize());
        if digest != artifact.sha256 {
            return Err(format!(
                "the {file_name} at {} (from {}) has sha256 {digest}, but the manifest says {}; the artifact changed after the manifest was made, or it is corrupt",
                path.display(), artifact.url, artifact.sha256
            ));
        }
        Ok(digest)
    })
    .await
    .map_err(|e| format!("verifying the {file_name} stopped: {e}"))??;
    tracing::debug!("verified the {file_name}: sha256 {digest}");
    Ok(())
}

/// Removes every entry of `versions/` except the complete directories of `keep`.
pub(crate) fn remove_versions_except(dir: &InstanceDir, keep: &[&str]) {
    let entries = match fs_err::read_dir(dir.versions()) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!("could not list old versions: {error}");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if keep.iter().any(|version| name.to_str() == Some(version)) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            fs_err::remove_dir_all(&path)
        } else {
            fs_err::remove_file(&path)
        };
        if let Err(error) = removed {
            tracing::warn!("could not remove an old version: {error}");
        }
    }
}

async fn remove_dir_if_present(path: &Path) -> std::io::Result<()> {
    match fs_err::tokio::remove_dir_all(path).await {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Removes one version directory (a failed version), if it is there.
pub(crate) async fn remove_version(dir: &InstanceDir, version: &str) {
    for path in [dir.version(version), dir.partial_version(version)] {
        if let Err(error) = remove_dir_if_present(&path).await {
            tracing::warn!("could not remove a failed version: {error}");
        }
    }
}
