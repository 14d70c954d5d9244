//! The state store: `$FLOTILLA_HOME` (default `~/.flotilla`), one directory per deployment tag.
//!
//! ```text
//! $FLOTILLA_HOME/                 0700
//!   deployments/<tag>/            0700
//!     metadata.json               0600  written before the first mutating call
//!     lock                              flock held by the command working on the deployment
//!     ca.crt ca.key cli.crt cli.key     the deployment CA and the CLI's client certificate (keys 0600)
//!     spec.yaml                         the spec of the last successful create or update
//!     spec-dir                          the directory its relative paths start from
//!     watch.lock                        held by the deployment's one `flotilla watch`
//!     watch-journal.json                what watch decided before it acted (see `watch`)
//!     hosts.yaml                        the hosts.yaml the machines received
//!     manifests.json                    the manifest each machine runs, for rollbacks
//!     <provider>/                       the provider's own records (e.g. local/ for the local provider)
//! ```
//!
//! Architecture Invariant: every file here is written atomically (temp file, fsync, rename) with
//! mode 0600 under 0700 directories, and the CA key never leaves this directory.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_spec::ProviderKind;
use flotilla_spec::Secret;
use flotilla_spec::validate::is_valid_tag;
use serde::{Deserialize, Serialize};

use crate::pki::{CertificateAuthority, IssuedCert, PkiError};

/// The environment variable that moves the state directory (read by the CLI, which passes its
/// value to [`Home::resolve`]).
pub const HOME_ENV: &str = "FLOTILLA_HOME";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot find a home directory for flotilla's state: set {HOME_ENV} or HOME")]
    NoHome,
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// A state file that cannot be read; `fix` says what to do.
    #[error("{path} cannot be read ({cause}); {fix}")]
    Unreadable { path: PathBuf, cause: String, fix: String },
    #[error(
        "cannot tell which provider deployment `{tag}` used: its metadata.json is unreadable and it has no provider records; run `flotilla destroy --tag {tag} --provider local|aws`"
    )]
    UnknownProvider { tag: String },
    #[error("deployment `{tag}` does not exist in {home}; check the tag, or {HOME_ENV}")]
    NotFound { tag: String, home: PathBuf },
    #[error(
        "deployment `{tag}` was destroyed; a destroyed tag is not re-created by accident. \
         Use --force to create it again, or choose another tag"
    )]
    Destroyed { tag: String },
    #[error(
        "deployment `{tag}` was created with the {existing} provider, not {requested}; \
         destroy it first or use another tag"
    )]
    ProviderMismatch { tag: String, existing: ProviderKind, requested: ProviderKind },
    #[error(
        "another flotilla command is working on deployment `{tag}`{holder}; wait for it to finish"
    )]
    Locked { tag: String, holder: String },
    #[error(
        "deployment `{tag}` is watched already{holder}; stop that `flotilla watch` first, one is enough"
    )]
    WatchedAlready { tag: String, holder: String },
    #[error("invalid tag `{0}`: a tag is 1 to 255 of the characters [A-Za-z0-9_-]")]
    InvalidTag(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The state root.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

/// Where a deployment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// `create` started and has not finished (or failed: re-run it, or destroy).
    Creating,
    /// `create` finished; every machine was healthy.
    Created,
    /// `destroy` started and has not finished: re-run it.
    Destroying,
    Destroyed,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Creating => "creating",
            DeploymentStatus::Created => "created",
            DeploymentStatus::Destroying => "destroying",
            DeploymentStatus::Destroyed => "destroyed",
        }
    }
}

/// `metadata.json`: enough to find and destroy the deployment without its spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub tag: String,
    pub provider: ProviderKind,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last change of `status`.
    pub updated_at: u64,
    /// Regions of the deployment, sorted.
    pub regions: Vec<String>,
    /// Binary instances (after `count` expansion), not counting monitoring.
    pub instance_count: usize,
    pub status: DeploymentStatus,
    /// What its machines cost per hour, as of the last create or update (cloud deployments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_hour: Option<f64>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Home {
    /// `flotilla_home` (`$FLOTILLA_HOME`), else `<user_home>/.flotilla` (`$HOME`). Created 0700
    /// on first use.
    pub fn resolve(
        flotilla_home: Option<&Path>,
        user_home: Option<&Path>,
    ) -> Result<Home, StateError> {
        let root = match (flotilla_home, user_home) {
            (Some(root), _) => root.to_path_buf(),
            (None, Some(home)) => home.join(".flotilla"),
            (None, None) => return Err(StateError::NoHome),
        };
        Ok(Home { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn deployments_dir(&self) -> PathBuf {
        self.root.join("deployments")
    }

    /// The directory of deployment `tag` (it may not exist).
    pub fn deployment_dir(&self, tag: &str) -> PathBuf {
        self.deployments_dir().join(tag)
    }

    /// An existing deployment.
    pub fn open(&self, tag: &str) -> Result<Deployment, StateError> {
        if !is_valid_tag(tag) {
            return Err(StateError::InvalidTag(tag.to_owned()));
        }
        let dir = self.deployment_dir(tag);
        if !dir.join("metadata.json").exists() {
            return Err(StateError::NotFound { tag: tag.to_owned(), home: self.root.clone() });
        }
        let deployment = Deployment { tag: tag.to_owned(), dir };
        deployment.metadata()?;
        Ok(deployment)
    }

    /// Deployment `tag` for `destroy`, from whatever is readable: its metadata when it reads,
    /// else its directory alone, with the provider named by `provider` (`--provider`), by the
    /// metadata, or by the provider records in the directory (`local/`, `aws/`). A deployment
    /// with no directory at all is found only with `provider` (AWS resources are found by
    /// their tags); its directory and metadata are then made afresh.
    pub fn recover(
        &self,
        tag: &str,
        provider: Option<ProviderKind>,
    ) -> Result<(Deployment, Option<Metadata>, ProviderKind), StateError> {
        if !is_valid_tag(tag) {
            return Err(StateError::InvalidTag(tag.to_owned()));
        }
        let dir = self.deployment_dir(tag);
        let deployment = Deployment { tag: tag.to_owned(), dir };
        let metadata = match deployment.metadata_if_any() {
            Ok(metadata) => metadata,
            Err(error) => {
                tracing::warn!("{error}; destroying from what else is left");
                None
            }
        };
        let from_records = [ProviderKind::Local, ProviderKind::Aws]
            .into_iter()
            .find(|kind| deployment.dir.join(kind.as_str()).is_dir());
        let kind = match (provider, metadata.as_ref().map(|m| m.provider), from_records) {
            (Some(kind), _, _) | (None, Some(kind), _) | (None, None, Some(kind)) => kind,
            (None, None, None) if !deployment.dir.exists() => {
                return Err(StateError::NotFound { tag: tag.to_owned(), home: self.root.clone() });
            }
            (None, None, None) => return Err(StateError::UnknownProvider { tag: tag.to_owned() }),
        };
        ensure_private_dir(&self.root)?;
        ensure_private_dir(&self.deployments_dir())?;
        ensure_private_dir(&deployment.dir)?;
        Ok((deployment, metadata, kind))
    }

    /// Opens deployment `tag` for `create`, making its directory and metadata if it is new.
    ///
    /// A destroyed tag is refused unless `force`; a tag created with another provider is refused.
    /// Metadata (status `creating`) is on disk when this returns, before any mutating call.
    pub fn create_or_adopt(
        &self,
        metadata: Metadata,
        force: bool,
    ) -> Result<(Deployment, DeploymentLock), StateError> {
        let tag = metadata.tag.clone();
        if !is_valid_tag(&tag) {
            return Err(StateError::InvalidTag(tag));
        }
        ensure_private_dir(&self.root)?;
        ensure_private_dir(&self.deployments_dir())?;
        let dir = self.deployment_dir(&tag);
        ensure_private_dir(&dir)?;
        let deployment = Deployment { tag: tag.clone(), dir };
        let lock = deployment.lock()?;
        match deployment.metadata_if_any()? {
            Some(existing) => {
                if existing.provider != metadata.provider {
                    return Err(StateError::ProviderMismatch {
                        tag,
                        existing: existing.provider,
                        requested: metadata.provider,
                    });
                }
                if existing.status == DeploymentStatus::Destroyed && !force {
                    return Err(StateError::Destroyed { tag });
                }
                if existing.status == DeploymentStatus::Destroying && !force {
                    return Err(StateError::Corrupt {
                        path: deployment.dir.join("metadata.json"),
                        message: format!(
                            "deployment `{tag}` is half destroyed; run `flotilla destroy --tag {tag}` to finish, then create with --force"
                        ),
                    });
                }
                // A forced re-creation of a destroyed tag is a new deployment.
                let (status, created_at) = match existing.status {
                    DeploymentStatus::Created => (DeploymentStatus::Created, existing.created_at),
                    DeploymentStatus::Creating => (DeploymentStatus::Creating, existing.created_at),
                    DeploymentStatus::Destroying | DeploymentStatus::Destroyed => {
                        (DeploymentStatus::Creating, metadata.created_at)
                    }
                };
                deployment.write_metadata(&Metadata {
                    created_at,
                    updated_at: unix_now(),
                    status,
                    ..metadata
                })?;
            }
            None => deployment.write_metadata(&metadata)?,
        }
        Ok((deployment, lock))
    }

    /// Every deployment, newest first: its metadata, or, for one whose metadata cannot be read,
    /// its tag and the error, so `list` can show it instead of hiding it.
    pub fn deployments(&self) -> Result<Vec<Listed>, StateError> {
        let dir = self.deployments_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in fs_err::read_dir(&dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let deployment = Deployment {
                tag: entry.file_name().to_string_lossy().into_owned(),
                dir: entry.path(),
            };
            match deployment.metadata_if_any() {
                Ok(Some(metadata)) => found.push(Ok(metadata)),
                Ok(None) => {}
                Err(error) => found.push(Err((deployment.tag, error))),
            }
        }
        found.sort_by_key(|m| std::cmp::Reverse(m.as_ref().map(|m| m.created_at).unwrap_or(0)));
        Ok(found)
    }
}

/// A deployment found in the state directory: its metadata, or its tag and why the metadata
/// cannot be read.
pub type Listed = Result<Metadata, (String, StateError)>;

/// One deployment's directory.
#[derive(Clone, Debug)]
pub struct Deployment {
    tag: String,
    dir: PathBuf,
}

/// Held while a command changes a deployment; released on drop.
#[derive(Debug)]
pub struct DeploymentLock {
    _file: fs_err::File,
}

impl Deployment {
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A subdirectory for a provider's own records, created 0700.
    pub fn provider_dir(&self, name: &str) -> Result<PathBuf, StateError> {
        let dir = self.dir.join(name);
        ensure_private_dir(&dir)?;
        Ok(dir)
    }

    /// Takes the deployment's lock, or says who holds it.
    pub fn lock(&self) -> Result<DeploymentLock, StateError> {
        self.lock_file("lock")
    }

    /// Takes the lock only one `flotilla watch` of the deployment holds (for its whole life;
    /// it takes [`Deployment::lock`] only while it acts), or says who holds it.
    pub fn watch_lock(&self) -> Result<DeploymentLock, StateError> {
        self.lock_file("watch.lock").map_err(|error| match error {
            StateError::Locked { tag, holder } => StateError::WatchedAlready { tag, holder },
            other => other,
        })
    }

    fn lock_file(&self, name: &str) -> Result<DeploymentLock, StateError> {
        let path = self.dir.join(name);
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let mut writer = &file;
                file.set_len(0)?;
                writer.write_all(std::process::id().to_string().as_bytes())?;
                Ok(DeploymentLock { _file: file })
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = fs_err::read_to_string(&path)
                    .ok()
                    .filter(|pid| !pid.trim().is_empty())
                    .map(|pid| format!(" (pid {})", pid.trim()))
                    .unwrap_or_default();
                Err(StateError::Locked { tag: self.tag.clone(), holder })
            }
            Err(errno) => Err(StateError::Io(std::io::Error::from(errno))),
        }
    }

    fn metadata_if_any(&self) -> Result<Option<Metadata>, StateError> {
        self.read_json("metadata.json").map_err(|error| match error {
            StateError::Corrupt { path, message } => StateError::Unreadable {
                path,
                cause: message,
                fix: format!(
                    "run `flotilla destroy --tag {}` to remove what the deployment left (it works without this file), then create it again",
                    self.tag
                ),
            },
            other => other,
        })
    }

    pub fn metadata(&self) -> Result<Metadata, StateError> {
        self.metadata_if_any()?.ok_or_else(|| StateError::Unreadable {
            path: self.dir.join("metadata.json"),
            cause: "it is missing".into(),
            fix: format!(
                "run `flotilla destroy --tag {}` to remove what the deployment left, then create it again",
                self.tag
            ),
        })
    }

    pub fn write_metadata(&self, metadata: &Metadata) -> Result<(), StateError> {
        self.write_json("metadata.json", metadata)
    }

    /// Sets the deployment's status (and `updated_at`).
    pub fn set_status(&self, status: DeploymentStatus) -> Result<Metadata, StateError> {
        let mut metadata = self.metadata()?;
        metadata.status = status;
        metadata.updated_at = unix_now();
        self.write_metadata(&metadata)?;
        Ok(metadata)
    }

    /// The deployment CA, generated and stored on first use.
    pub fn certificate_authority(&self) -> Result<CertificateAuthority, StateError> {
        let cert_path = self.dir.join("ca.crt");
        let key_path = self.dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let cert = fs_err::read_to_string(&cert_path)?;
            let key = Secret::new(fs_err::read_to_string(&key_path)?);
            return Ok(CertificateAuthority::from_pem(&self.tag, &cert, &key)?);
        }
        let ca = CertificateAuthority::generate(&self.tag)?;
        write_private(&key_path, ca.key_pem().expose().as_bytes())?;
        write_private(&cert_path, ca.cert_pem().as_bytes())?;
        Ok(ca)
    }

    /// The CLI's client certificate, issued on first use.
    pub fn client_identity(&self, ca: &CertificateAuthority) -> Result<IssuedCert, StateError> {
        let cert_path = self.dir.join("cli.crt");
        let key_path = self.dir.join("cli.key");
        if cert_path.exists() && key_path.exists() {
            return Ok(IssuedCert {
                cert_pem: fs_err::read_to_string(&cert_path)?,
                key_pem: Secret::new(fs_err::read_to_string(&key_path)?),
            });
        }
        let issued = ca.issue_client(&self.tag)?;
        write_private(&key_path, issued.key_pem.expose().as_bytes())?;
        write_private(&cert_path, issued.cert_pem.as_bytes())?;
        Ok(issued)
    }

    /// The CA certificate and the CLI identity, for talking to agents (never generates).
    pub fn client_credentials(&self) -> Result<(String, IssuedCert), StateError> {
        let read = |name: &str| -> Result<String, StateError> {
            let path = self.dir.join(name);
            fs_err::read_to_string(&path).map_err(|_| StateError::Corrupt {
                path,
                message: "missing: the deployment's credentials are gone (was it destroyed?)"
                    .into(),
            })
        };
        Ok((
            read("ca.crt")?,
            IssuedCert { cert_pem: read("cli.crt")?, key_pem: Secret::new(read("cli.key")?) },
        ))
    }

    /// Removes the CA and CLI keys: after `destroy` nothing may be issued or trusted in the
    /// deployment's name.
    pub fn forget_credentials(&self) -> Result<(), StateError> {
        for name in ["ca.key", "ca.crt", "cli.key", "cli.crt"] {
            match fs_err::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Reads `name` as JSON, `None` when the file does not exist.
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StateError> {
        let path = self.dir.join(name);
        match fs_err::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Corrupt { path, message: e.to_string() }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes `name`; one already gone is success.
    pub fn remove_file(&self, name: &str) -> Result<(), StateError> {
        match fs_err::remove_file(self.dir.join(name)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes `name` as pretty JSON, atomically, 0600.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        write_private(&self.dir.join(name), &bytes)
    }

    /// Writes `name` atomically, 0600.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        write_private(&self.dir.join(name), bytes)
    }
}

/// Creates `dir` (and its missing parents, 0700 too) and makes sure it is 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|error| {
        std::io::Error::new(error.kind(), format!("creating {}: {error}", dir.display()))
    })?;
    let metadata = fs_err::metadata(dir)?;
    if metadata.permissions().mode() & 0o777 != 0o700 {
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `path` atomically with mode 0600: a temp file beside it, fsync, rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().expect("state files live in a directory");
    let name = path.file_name().expect("state files have a name").to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temp)?;
        // The mode given to open() only applies to new files; a leftover temp keeps its own.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs_err::rename(&temp, path)?;
    // The rename is durable only once the directory's entry is.
    fs_err::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(tag: &str, provider: ProviderKind) -> Metadata {
        Metadata {
            tag: tag.into(),
            provider,
            created_at: 1,
            updated_at: 1,
            regions: vec!["local".into()],
            instance_count: 2,
            status: DeploymentStatus::Creating,
            usd_per_hour: None,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs_err::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_files_and_keys_are_private() {
        let temp = tempfile::tempdir().unwrap();
        let home = Home::at(temp.path().join("home"));
        let (deployment, _lock) =
            home.create_or_adopt(metadata("t1", ProviderKind::Local), false).unwrap();
        let ca = deployment.certificate_authority().unwrap();
        deployment.client_identity(&ca).unwrap();
        assert_eq!(mode(home.root()), 0o700);
        assert_eq!(mode(deployment.dir()), 0o700);
        for file in ["metadata.json", "ca.key", "ca.crt", "cli.key", "cli.crt"] {
            assert_eq!(mode(&deployment.dir().join(file)), 0o600, "{file}");
        }
        // The stored CA is the one loaded next time.
        let again = deployment.certificate_authority().unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn destroyed_tags_need_force_and_providers_must_match() {
        let temp = tempfile::tempdir().unwrap();
        let home = Home::at(temp.path());
        let (deployment, lock) =
            home.create_or_adopt(metadata("t1", ProviderKind::Local), false).unwrap();
        deployment.set_status(DeploymentStatus::Destroyed).unwrap();
        drop(lock);
        let err = home.create_or_adopt(metadata("t1", ProviderKind::Local), false).unwrap_err();
        assert!(matches!(err, StateError::Destroyed { .. }), "{err}");
        let err = home.create_or_adopt(metadata("t1", ProviderKind::Aws), true).unwrap_err();
        assert!(matches!(err, StateError::ProviderMismatch { .. }), "{err}");
        let (deployment, _lock) =
            home.create_or_adopt(metadata("t1", ProviderKind::Local), true).unwrap();
        assert_eq!(deployment.metadata().unwrap().status, DeploymentStatus::Creating);
    }

    #[test]
    fn a_second_command_is_refused_while_the_lock_is_held() {
        let temp = tempfile::tempdir().unwrap();
        let home = Home::at(temp.path());
        let (deployment, _lock) =
            home.create_or_adopt(metadata("t1", ProviderKind::Local), false).unwrap();
        let err = deployment.lock().unwrap_err();
        assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}");
    }

    #[test]
    fn list_reports_corrupt_metadata_instead_of_hiding_it() {
        let temp = tempfile::tempdir().unwrap();
        let home = Home::at(temp.path());
        home.create_or_adopt(metadata("good", ProviderKind::Local), false).unwrap();
        let bad = home.deployment_dir("bad");
        fs_err::create_dir_all(&bad).unwrap();
        fs_err::write(bad.join("metadata.json"), "{").unwrap();
        let all = home.deployments().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().any(|m| m.as_ref().is_ok_and(|m| m.tag == "good")));
        let (tag, error) = all.iter().find_map(|m| m.as_ref().err()).expect("bad is listed");
        assert_eq!(tag, "bad");
        assert!(error.to_string().contains("flotilla destroy --tag bad"), "{error}");
    }
}
