//! Fetchers: how the agent gets artifacts and its identity bundle, one per URL scheme.
//!
//! [`Fetchers`] is a registry keyed by scheme. Built in: `file://<absolute path>` and a bare
//! absolute path (both read the local file system). A provider adds its own, e.g. the AWS
//! provider registers `s3`, without the agent knowing its SDK. A URL whose scheme has no fetcher
//! is refused with an error naming the scheme.
//!
//! A fetcher only moves bytes; the caller verifies size and SHA-256, so every scheme gets the
//! same checks.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

/// The future a [`Fetcher`] returns.
pub type FetchFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, FetchError>> + Send + 'a>>;

/// Gets the object at a URL of one scheme.
pub trait Fetcher: Send + Sync + fmt::Debug {
    /// Writes the object at `url` to `destination`, a new file in an existing directory.
    fn fetch_to_file<'a>(&'a self, url: &'a str, destination: &'a Path) -> FetchFuture<'a, ()>;

    /// Reads the object at `url` into memory; refuses one larger than `max_bytes`.
    fn fetch_bytes<'a>(&'a self, url: &'a str, max_bytes: u64) -> FetchFuture<'a, Vec<u8>>;
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no fetcher for the `{scheme}` scheme of {url}: this agent knows {known}; an s3:// URL needs the agent started by the AWS provider"
    )]
    UnknownScheme { url: String, scheme: String, known: String },
    #[error("{url} is neither an absolute path nor a URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("{url} does not exist")]
    NotFound { url: String },
    #[error("{url} is larger than {max_bytes} bytes")]
    TooLarge { url: String, max_bytes: u64 },
    #[error("could not fetch {url}: {source}")]
    Io { url: String, source: io::Error },
    /// For fetchers outside this crate: a message that names what to check.
    #[error("could not fetch {url}: {message}")]
    Other { url: String, message: String },
}

impl FetchError {
    /// Whether trying again later may succeed (the object may not exist yet, or access may not
    /// be granted yet); a malformed URL or an unknown scheme never will.
    pub fn may_succeed_later(&self) -> bool {
        !matches!(self, FetchError::UnknownScheme { .. } | FetchError::BadUrl { .. })
    }
}

/// The fetchers the agent may use, by URL scheme, and the machine cloud its lifecycle uses
/// (registered by the binary like the fetchers; none under the local provider).
#[derive(Clone, Debug)]
pub struct Fetchers {
    by_scheme: BTreeMap<String, Arc<dyn Fetcher>>,
    machine_cloud: Option<Arc<dyn crate::MachineCloud>>,
}

impl Default for Fetchers {
    /// The local file system: `file://` and bare absolute paths.
    fn default() -> Self {
        let mut fetchers = Fetchers::none();
        fetchers.register("file", Arc::new(LocalFileFetcher));
        fetchers
    }
}

impl Fetchers {
    /// A registry with no fetcher at all.
    pub fn none() -> Self {
        Fetchers { by_scheme: BTreeMap::new(), machine_cloud: None }
    }

    /// Registers (or replaces) the fetcher for `scheme` (without `://`, e.g. `s3`).
    pub fn register(&mut self, scheme: &str, fetcher: Arc<dyn Fetcher>) {
        self.by_scheme.insert(scheme.to_ascii_lowercase(), fetcher);
    }

    /// The same registry with `fetcher` registered for `scheme`.
    pub fn with(mut self, scheme: &str, fetcher: Arc<dyn Fetcher>) -> Self {
        self.register(scheme, fetcher);
        self
    }

    /// The same registry with `cloud` as the machine cloud: the lifecycle's volumes, records
    /// and notifications go through it.
    pub fn with_machine_cloud(mut self, cloud: Arc<dyn crate::MachineCloud>) -> Self {
        self.machine_cloud = Some(cloud);
        self
    }

    /// The machine cloud registered, if any.
    pub fn machine_cloud(&self) -> Option<Arc<dyn crate::MachineCloud>> {
        self.machine_cloud.clone()
    }

    /// The fetcher for `url`; a bare absolute path counts as `file`.
    pub fn fetcher_for(&self, url: &str) -> Result<&dyn Fetcher, FetchError> {
        let scheme = scheme_of(url)?;
        self.by_scheme.get(&scheme).map(|fetcher| fetcher.as_ref()).ok_or_else(|| {
            let known = if self.by_scheme.is_empty() {
                "no scheme".to_owned()
            } else {
                self.by_scheme.keys().map(|s| format!("{s}://")).collect::<Vec<_>>().join(", ")
            };
            FetchError::UnknownScheme { url: url.to_owned(), scheme, known }
        })
    }

    /// Writes the object at `url` to `destination`.
    pub async fn fetch_to_file(&self, url: &str, destination: &Path) -> Result<(), FetchError> {
        self.fetcher_for(url)?.fetch_to_file(url, destination).await
    }

    /// Reads the object at `url`, at most `max_bytes`.
    pub async fn fetch_bytes(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        self.fetcher_for(url)?.fetch_bytes(url, max_bytes).await
    }
}

/// The lower-case scheme of `url`: `file` for a bare absolute path.
fn scheme_of(url: &str) -> Result<String, FetchError> {
    if url.starts_with('/') {
        return Ok("file".to_owned());
    }
    let bad = |message: &str| FetchError::BadUrl { url: url.to_owned(), message: message.into() };
    let (scheme, _) = url.split_once("://").ok_or_else(|| bad("expected scheme://…"))?;
    let well_formed = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        return Err(bad("the scheme must be letters, digits, `+`, `-` or `.`"));
    }
    Ok(scheme.to_ascii_lowercase())
}

/// Reads the local file system: `file:///absolute/path` (also `file://localhost/…`) or a bare
/// absolute path. The path is taken literally (no percent-decoding), as flotilla writes it.
#[derive(Debug)]
pub struct LocalFileFetcher;

impl LocalFileFetcher {
    fn path_of(url: &str) -> Result<PathBuf, FetchError> {
        let path = match url.split_once("://") {
            None => url,
            Some((_, rest)) => rest.strip_prefix("localhost").unwrap_or(rest),
        };
        if !path.starts_with('/') {
            return Err(FetchError::BadUrl {
                url: url.to_owned(),
                message: "a file:// URL must name an absolute path (file:///…)".to_owned(),
            });
        }
        Ok(PathBuf::from(path))
    }

    async fn source_length(url: &str, path: &Path) -> Result<u64, FetchError> {
        match fs_err::tokio::metadata(path).await {
            Ok(metadata) if metadata.is_file() => Ok(metadata.len()),
            Ok(_) => Err(FetchError::Io {
                url: url.to_owned(),
                source: io::Error::other(format!("{} is not a regular file", path.display())),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(FetchError::NotFound { url: url.to_owned() })
            }
            Err(source) => Err(FetchError::Io { url: url.to_owned(), source }),
        }
    }
}

impl Fetcher for LocalFileFetcher {
    fn fetch_to_file<'a>(&'a self, url: &'a str, destination: &'a Path) -> FetchFuture<'a, ()> {
        Box::pin(async move {
            let source = Self::path_of(url)?;
            Self::source_length(url, &source).await?;
            // A copy, not a hard link: the agent sets the modes of its copy, and a link would
            // change the source's mode too (and let later edits of the source reach the version).
            fs_err::tokio::copy(&source, destination)
                .await
                .map_err(|source| FetchError::Io { url: url.to_owned(), source })?;
            Ok(())
        })
    }

    fn fetch_bytes<'a>(&'a self, url: &'a str, max_bytes: u64) -> FetchFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let source = Self::path_of(url)?;
            if Self::source_length(url, &source).await? > max_bytes {
                return Err(FetchError::TooLarge { url: url.to_owned(), max_bytes });
            }
            let bytes = fs_err::tokio::read(&source).await.map_err(|error| {
                if error.kind() == io::ErrorKind::NotFound {
                    FetchError::NotFound { url: url.to_owned() }
                } else {
                    FetchError::Io { url: url.to_owned(), source: error }
                }
            })?;
            if bytes.len() as u64 > max_bytes {
                return Err(FetchError::TooLarge { url: url.to_owned(), max_bytes });
            }
            Ok(bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_found_and_unknown_ones_named() {
        let fetchers = Fetchers::default();
        assert!(fetchers.fetcher_for("/abs/path").is_ok());
        assert!(fetchers.fetcher_for("file:///abs/path").is_ok());
        assert!(fetchers.fetcher_for("FILE:///abs/path").is_ok());
        let error = fetchers.fetcher_for("s3://bucket/key").unwrap_err();
        assert_eq!(
            error.to_string(),
            "no fetcher for the `s3` scheme of s3://bucket/key: this agent knows file://; an s3:// URL needs the agent started by the AWS provider"
        );
        assert!(!error.may_succeed_later());
        assert!(matches!(fetchers.fetcher_for("relative/path"), Err(FetchError::BadUrl { .. })));
        assert!(matches!(fetchers.fetcher_for("1x://a"), Err(FetchError::BadUrl { .. })));
    }

    #[test]
    fn file_urls_must_be_absolute() {
        assert_eq!(LocalFileFetcher::path_of("file:///a/b").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(
            LocalFileFetcher::path_of("file://localhost/a/b").unwrap(),
            PathBuf::from("/a/b")
        );
        assert_eq!(LocalFileFetcher::path_of("/a/b").unwrap(), PathBuf::from("/a/b"));
        assert!(LocalFileFetcher::path_of("file://a/b").is_err());
    }

    #[tokio::test]
    async fn local_files_are_copied_and_read_with_a_size_cap() {
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("source");
        fs_err::write(&source, b"hello").unwrap();
        let url = format!("file://{}", source.display());
        let fetchers = Fetchers::default();
        let destination = temp.path().join("copy");
        fetchers.fetch_to_file(&url, &destination).await.unwrap();
        assert_eq!(fs_err::read(&destination).unwrap(), b"hello");
        assert_eq!(fetchers.fetch_bytes(&url, 5).await.unwrap(), b"hello");
        assert!(matches!(fetchers.fetch_bytes(&url, 4).await, Err(FetchError::TooLarge { .. })));
        let missing = format!("file://{}/missing", temp.path().display());
        let error = fetchers.fetch_bytes(&missing, 10).await.unwrap_err();
        assert!(matches!(error, FetchError::NotFound { .. }), "{error}");
        assert!(error.may_succeed_later());
    }
}
