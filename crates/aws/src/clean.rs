//! `flotilla clean`: the artifact bucket of a `$FLOTILLA_HOME`, once no deployment uses it.

use flotilla_core::provider::ProviderError;

use crate::clients::Clients;
use crate::s3;

/// Deletes the bucket of `$FLOTILLA_HOME` and forgets its name. Returns the objects deleted.
pub async fn clean(
    clients: &Clients,
    home: &std::path::Path,
) -> Result<Option<(String, usize)>, ProviderError> {
    let Some(bucket) = s3::existing_bucket_name(home) else {
        return Ok(None);
    };
    let deleted = s3::delete_bucket(clients, &bucket).await?;
    let _ = fs_err::remove_file(home.join(s3::BUCKET_FILE));
    Ok(Some((bucket, deleted)))
}
