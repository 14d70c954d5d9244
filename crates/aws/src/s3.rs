//! S3: one bucket for every deployment of this state directory, content-addressed objects.
//!
//! ```text
//! s3://<bucket>/                       flotilla-<16 hex>, in us-east-1; name kept in $FLOTILLA_HOME/aws-bucket
//!   agents/<sha256>                    the flotilla executable machines run as their agent
//!   deployments/<tag>/artifacts/<sha256>   binaries, configs, hosts.yaml
//!   deployments/<tag>/identities/<role id>:<instance id>.json   each machine's key and certificate
//! ```
//!
//! Each digest is uploaded once (HeadObject first). Identity bundles are written with
//! server-side encryption and are readable only by the instance they name (the role's policy
//! uses `${aws:userid}`, which is `<role id>:<instance id>` for an instance's credentials).

use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier, ServerSideEncryption};
use flotilla_agent::{FetchError, FetchFuture, Fetcher};
use flotilla_core::provider::ProviderError;
use rand::Rng;
use tokio::io::AsyncWriteExt;

use crate::clients::{Clients, HOME_REGION};
use crate::error::AwsError;

/// The file under `$FLOTILLA_HOME` that keeps the bucket name, as the deployer keeps its own.
pub const BUCKET_FILE: &str = "aws-bucket";

/// The bucket name: from `$FLOTILLA_HOME/aws-bucket`, or minted and written there.
pub fn bucket_name(home: &Path) -> Result<String, ProviderError> {
    let path = home.join(BUCKET_FILE);
    match fs_err::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => Ok(name.trim().to_owned()),
        Ok(_) | Err(_) => {
            let suffix: u64 = rand::rng().random();
            let name = format!("flotilla-{suffix:016x}");
            flotilla_core::state::ensure_private_dir(home)
                .map_err(|e| ProviderError::with_source("creating the state directory", e))?;
            flotilla_core::state::write_private(&path, name.as_bytes()).map_err(|e| {
                ProviderError::with_source(format!("writing {}", path.display()), e)
            })?;
            Ok(name)
        }
    }
}

/// The bucket name if one was ever minted.
pub fn existing_bucket_name(home: &Path) -> Option<String> {
    fs_err::read_to_string(home.join(BUCKET_FILE))
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
}

/// Makes sure the bucket exists and is ours.
pub async fn ensure_bucket(clients: &Clients, bucket: &str) -> Result<(), ProviderError> {
    match clients.s3().head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            if status == Some(403) {
                return Err(ProviderError::new(format!(
                    "{HOME_REGION}: the bucket {bucket} exists but is not yours (403); remove $FLOTILLA_HOME/{BUCKET_FILE} to choose a new name"
                )));
            }
            if status != Some(404) {
                return Err(AwsError::from_sdk(HOME_REGION, "HeadBucket", bucket, e).into());
            }
        }
    }
    match clients.s3().create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let error = AwsError::from_sdk(HOME_REGION, "CreateBucket", bucket, e);
            if error.code_is("BucketAlreadyOwnedByYou") { Ok(()) } else { Err(error.into()) }
        }
    }
}

/// S3's limit on an object's tags.
const MAX_OBJECT_TAGS: usize = 10;

/// The spec's top-level tags (`shared`, in key order, the order the spec keeps them) split into
/// those a deployment's S3 objects carry beside the deployment tag and the keys left off: S3
/// takes at most 10 tags per object, so the first 9 are kept.
pub fn object_user_tags(shared: Vec<(String, String)>) -> (Vec<(String, String)>, Vec<String>) {
    let mut kept = shared;
    let left_off = kept.split_off(kept.len().min(MAX_OBJECT_TAGS - 1));
    (kept, left_off.into_iter().map(|(key, _)| key).collect())
}

/// Warns, once per command, when the spec has more top-level tags than S3 objects take
/// (see [`object_user_tags`]), naming the keys left off the deployment's objects.
pub fn warn_of_object_tags_left_off(tag: &str) {
    let (_, left_off) = object_user_tags(crate::tags::shared_user_tags(tag));
    if !left_off.is_empty() {
        tracing::warn!(
            "S3 objects take at most {MAX_OBJECT_TAGS} tags: deployment `{tag}`'s artifacts and identities carry `{TAG_DEPLOYMENT}` and the first {} of `tags` (in key order) but not {}",
            MAX_OBJECT_TAGS - 1,
            left_off.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
            TAG_DEPLOYMENT = crate::tags::TAG_DEPLOYMENT,
        );
    }
}

/// The tags of an object of one deployment (`deployments/<tag>/…`): the deployment's tag and as
/// many of the spec's top-level `tags` as S3 allows ([`object_user_tags`]), as PutObject's
/// `x-amz-tagging` query string; the agents (shared by every deployment of the bucket) get none.
fn object_tagging(key: &str) -> Option<String> {
    let tag = key.strip_prefix("deployments/")?.split('/').next()?;
    let mut pairs = vec![(crate::tags::TAG_DEPLOYMENT.to_owned(), tag.to_owned())];
    pairs.extend(object_user_tags(crate::tags::shared_user_tags(tag)).0);
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    Some(
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Uploads the file at `path` to `key` unless the key exists (keys are content addresses).
pub async fn put_file_once(
    clients: &Clients,
    bucket: &str,
    key: &str,
    path: &Path,
) -> Result<bool, ProviderError> {
    match clients.s3().head_object().bucket(bucket).key(key).send().await {
        Ok(_) => return Ok(false),
        Err(e) => {
            if e.raw_response().map(|r| r.status().as_u16()) != Some(404) {
                return Err(AwsError::from_sdk(HOME_REGION, "HeadObject", key, e).into());
            }
        }
    }
    let body = ByteStream::from_path(path)
        .await
        .map_err(|e| ProviderError::with_source(format!("reading {}", path.display()), e))?;
    clients
        .s3()
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/octet-stream")
        .set_tagging(object_tagging(key))
        .body(body)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(HOME_REGION, "PutObject", key, e))?;
    Ok(true)
}

/// Writes `bytes` to `key`, encrypted at rest.
pub async fn put_bytes(
    clients: &Clients,
    bucket: &str,
    key: &str,
    bytes: Vec<u8>,
) -> Result<(), ProviderError> {
    clients
        .s3()
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .set_tagging(object_tagging(key))
        .server_side_encryption(ServerSideEncryption::Aes256)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(HOME_REGION, "PutObject", key, e))?;
    Ok(())
}

/// Deletes the object `key`; one that is not there, or a missing bucket, is fine.
pub async fn delete_object(
    clients: &Clients,
    bucket: &str,
    key: &str,
) -> Result<(), ProviderError> {
    match clients.s3().delete_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let error =
                AwsError::from_sdk(HOME_REGION, "DeleteObject", format!("{bucket}/{key}"), e);
            if error.code_is("NoSuchBucket") || error.code_is("NoSuchKey") {
                return Ok(());
            }
            Err(error.into())
        }
    }
}

/// Deletes every object under `prefix`; returns how many. A missing bucket counts as empty.
pub async fn delete_prefix(
    clients: &Clients,
    bucket: &str,
    prefix: &str,
) -> Result<usize, ProviderError> {
    let mut deleted = 0;
    loop {
        let listed = match clients.s3().list_objects_v2().bucket(bucket).prefix(prefix).send().await
        {
            Ok(listed) => listed,
            Err(e) => {
                let error = AwsError::from_sdk(
                    HOME_REGION,
                    "ListObjectsV2",
                    format!("{bucket}/{prefix}"),
                    e,
                );
                if error.code_is("NoSuchBucket") {
                    return Ok(deleted);
                }
                return Err(error.into());
            }
        };
        let keys: Vec<ObjectIdentifier> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
            .collect();
        if keys.is_empty() {
            return Ok(deleted);
        }
        let count = keys.len();
        let delete = Delete::builder()
            .set_objects(Some(keys))
            .quiet(true)
            .build()
            .map_err(|e| ProviderError::with_source("building DeleteObjects", e))?;
        let answer = clients
            .s3()
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(HOME_REGION, "DeleteObjects", format!("{bucket}/{prefix}"), e)
            })?;
        if let Some(error) = answer.errors().first() {
            return Err(AwsError::other(
                HOME_REGION,
                "DeleteObjects",
                error.key().unwrap_or(prefix),
                error.message().unwrap_or("could not delete"),
            )
            .into());
        }
        deleted += count;
    }
}

/// Deletes the bucket and everything in it. A missing bucket is fine.
pub async fn delete_bucket(clients: &Clients, bucket: &str) -> Result<usize, ProviderError> {
    let deleted = delete_prefix(clients, bucket, "").await?;
    match clients.s3().delete_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(deleted),
        Err(e) => {
            let error = AwsError::from_sdk(HOME_REGION, "DeleteBucket", bucket, e);
            if error.code_is("NoSuchBucket") { Ok(deleted) } else { Err(error.into()) }
        }
    }
}

/// Splits `s3://bucket/key`.
pub fn parse_s3_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// The agent's `s3://` fetcher: reads objects with the machine's own credentials (the
/// instance role, through IMDS), in the region of `AWS_REGION`.
#[derive(Debug, Default)]
pub struct S3Fetcher {
    client: tokio::sync::OnceCell<aws_sdk_s3::Client>,
    /// Path-style addressing, for an endpoint standing in for S3 (`AWS_ENDPOINT_URL`).
    path_style: bool,
}

/// How many times the agent's fetcher tries one S3 read before it reports the error.
pub const FETCH_ATTEMPTS: u32 = 8;

impl S3Fetcher {
    /// `path_style`: an endpoint stands in for S3 (the agent was started with
    /// `AWS_ENDPOINT_URL`), which serves buckets as paths.
    pub fn new(path_style: bool) -> Arc<S3Fetcher> {
        Arc::new(S3Fetcher { client: tokio::sync::OnceCell::new(), path_style })
    }

    async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async {
                let config =
                    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
                let path_style = self.path_style;
                // A booting machine must not give up on a transient S3 error (500, 503,
                // throttling): more attempts than the SDK's default 3, each with its jittered
                // exponential backoff, all inside the download's own timeout.
                let retries =
                    aws_config::retry::RetryConfig::standard().with_max_attempts(FETCH_ATTEMPTS);
                let config = aws_sdk_s3::config::Builder::from(&config)
                    .force_path_style(path_style)
                    .retry_config(retries)
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .await
    }

    async fn get(
        &self,
        url: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, FetchError> {
        let (bucket, key) = parse_s3_url(url).ok_or_else(|| FetchError::BadUrl {
            url: url.to_owned(),
            message: "expected s3://bucket/key".into(),
        })?;
        self.client().await.get_object().bucket(bucket).key(key).send().await.map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            if matches!(status, Some(404) | Some(403)) {
                // 403: the role's policy may not have reached S3 yet, or the object is absent
                // (S3 answers 403 for a missing key without ListBucket).
                FetchError::NotFound { url: url.to_owned() }
            } else {
                FetchError::Other {
                    url: url.to_owned(),
                    message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                }
            }
        })
    }
}

impl Fetcher for S3Fetcher {
    fn fetch_to_file<'a>(&'a self, url: &'a str, destination: &'a Path) -> FetchFuture<'a, ()> {
        Box::pin(async move {
            let object = self.get(url).await?;
            let io = |source| FetchError::Io { url: url.to_owned(), source };
            let mut file = tokio::fs::File::create(destination).await.map_err(io)?;
            let mut body = object.body;
            while let Some(chunk) = body
                .try_next()
                .await
                .map_err(|e| FetchError::Other { url: url.to_owned(), message: e.to_string() })?
            {
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.flush().await.map_err(io)?;
            Ok(())
        })
    }

    fn fetch_bytes<'a>(&'a self, url: &'a str, max_bytes: u64) -> FetchFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let object = self.get(url).await?;
            if object.content_length().is_some_and(|n| n as u64 > max_bytes) {
                return Err(FetchError::TooLarge { url: url.to_owned(), max_bytes });
            }
            let bytes = object
                .body
                .collect()
                .await
                .map_err(|e| FetchError::Other { url: url.to_owned(), message: e.to_string() })?
                .into_bytes();
            if bytes.len() as u64 > max_bytes {
                return Err(FetchError::TooLarge { url: url.to_owned(), max_bytes });
            }
            Ok(bytes.to_vec())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_key() {
        assert_eq!(
            parse_s3_url("s3://b/deployments/t/x.json"),
            Some(("b", "deployments/t/x.json"))
        );
        assert_eq!(parse_s3_url("s3://b/"), None);
        assert_eq!(parse_s3_url("s3:///k"), None);
        assert_eq!(parse_s3_url("https://b/k"), None);
    }

    #[test]
    fn the_bucket_name_is_minted_once_and_kept() {
        let temp = tempfile::tempdir().unwrap();
        let first = bucket_name(temp.path()).unwrap();
        assert!(first.starts_with("flotilla-") && first.len() == "flotilla-".len() + 16, "{first}");
        assert_eq!(bucket_name(temp.path()).unwrap(), first);
        assert_eq!(existing_bucket_name(temp.path()), Some(first));
    }

    #[test]
    fn objects_keep_as_many_user_tags_as_fit_and_name_the_rest() {
        let tags = |n: usize| -> Vec<(String, String)> {
            (0..n).map(|i| (format!("k{i:02}"), format!("v{i}"))).collect()
        };
        assert_eq!(object_user_tags(tags(9)), (tags(9), vec![]));
        let (kept, left_off) = object_user_tags(tags(12));
        assert_eq!(kept, tags(9), "the deployment tag and nine of the spec's make S3's ten");
        assert_eq!(left_off, ["k09", "k10", "k11"]);
        assert_eq!(object_user_tags(vec![]), (vec![], vec![]));
    }
}
