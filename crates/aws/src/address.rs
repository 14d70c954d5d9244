//! The deployer's public address: `--ip`, the one an earlier run recorded, or this machine's,
//! asked of an echo service as the commonware deployer asks it.

use std::net::Ipv4Addr;
use std::time::Duration;

use flotilla_core::provider::ProviderError;

/// Where the deployer's public address is asked, as the commonware deployer asks it.
pub const IP_DISCOVERY_URL: &str = "https://ipv4.icanhazip.com";

/// The deployer address `prepare` admits to the agent port: `given` (`--ip`), else `recorded`
/// by an earlier run (a re-run or an `update` keeps the address the deployment was made with;
/// `authorize` adds others), else this machine's public address.
pub async fn for_prepare(
    given: Option<Ipv4Addr>,
    recorded: Option<Ipv4Addr>,
    discovery_url: Option<&str>,
) -> Result<Ipv4Addr, ProviderError> {
    match (given, recorded) {
        (Some(ip), _) | (None, Some(ip)) => Ok(ip),
        (None, None) => discover(discovery_url).await,
    }
}

/// This machine's public IPv4 address, asked of `discovery_url` (default [`IP_DISCOVERY_URL`]).
pub async fn discover(discovery_url: Option<&str>) -> Result<Ipv4Addr, ProviderError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ProviderError::with_source("building an HTTP client", e))?;
    let url = discovery_url.unwrap_or(IP_DISCOVERY_URL);
    let answer = async {
        let text = client.get(url).send().await?.error_for_status()?.text().await?;
        Ok::<_, reqwest::Error>(text)
    }
    .await;
    match answer {
        Ok(text) => text.trim().parse().map_err(|_| {
            ProviderError::new(format!(
                "{url} answered {:?}, not an IPv4 address; pass your address with --ip",
                text.trim()
            ))
        }),
        Err(error) => Err(ProviderError::new(format!(
            "cannot find this machine's public IPv4 address ({url}: {}); pass it with --ip",
            flotilla_core::client::error_chain(&error)
        ))),
    }
}
