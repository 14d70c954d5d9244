//! KMS keys named by the spec's `root_volume.kms_key`: an `alias/NAME` is resolved as Aquarium
//! Fish does, by paging `ListAliases` (100 a page) until the alias name matches, and its target
//! key id is used; a key id or ARN is checked with `DescribeKey`. Keys belong to a region, so
//! each region a group runs in resolves its own.

use crate::clients::Clients;
use crate::error::AwsError;

/// The key a root volume is encrypted with in `region`, or `None` when `key` names nothing
/// there.
pub async fn resolve(
    clients: &Clients,
    region: &str,
    key: &str,
) -> Result<Option<String>, AwsError> {
    let kms = clients.kms(region);
    if key.starts_with("alias/") {
        let mut marker: Option<String> = None;
        loop {
            let page = kms
                .list_aliases()
                .limit(100)
                .set_marker(marker.clone())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(region, "ListAliases", key, e))?;
            if let Some(alias) = page.aliases().iter().find(|a| a.alias_name() == Some(key)) {
                return Ok(alias.target_key_id().map(str::to_owned));
            }
            match page.next_marker() {
                Some(next) if page.truncated() => marker = Some(next.to_owned()),
                _ => return Ok(None),
            }
        }
    }
    match kms.describe_key().key_id(key).send().await {
        Ok(answer) => Ok(answer.key_metadata().map(|m| m.key_id().to_owned())),
        Err(e) => {
            let error = AwsError::from_sdk(region, "DescribeKey", key, e);
            if error.code_is("NotFoundException") { Ok(None) } else { Err(error) }
        }
    }
}
