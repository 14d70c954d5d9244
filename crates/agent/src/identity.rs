//! Waiting for the identity bundle: the deployer writes it after it knows the machine's
//! addresses, so the agent polls for it (schedule in [`crate::backoff`]) up to the bootstrap's
//! `identity_timeout`, and refuses a bundle issued for another deployment.

use flotilla_spec::bootstrap::AgentBootstrap;
use flotilla_spec::identity::IdentityBundle;
use tokio::time::Instant;

use crate::backoff::{identity_poll_delay, restart_jitter};
use crate::deadline;
use crate::error::AgentError;
use crate::fetch::Fetchers;

/// The largest identity bundle the agent reads (a bundle is a few kilobytes).
const MAX_IDENTITY_BYTES: u64 = 256 * 1024;

/// Polls `bootstrap.identity` until a bundle for `bootstrap.tag` is there.
pub(crate) async fn wait_for_identity(
    bootstrap: &AgentBootstrap,
    fetchers: &Fetchers,
) -> Result<IdentityBundle, AgentError> {
    let location = bootstrap.identity.as_str();
    let began = Instant::now();
    let deadline = deadline::from_now(bootstrap.identity_timeout);
    let mut attempt = 0;
    let mut logged_wait = false;
    loop {
        let last_error = match fetchers.fetch_bytes(location, MAX_IDENTITY_BYTES).await {
            Ok(bytes) => match serde_json::from_slice::<IdentityBundle>(&bytes) {
                Ok(bundle) => return check_tag(bundle, bootstrap),
                // A bundle still being written ends early: read it again.
                Err(error) if error.is_eof() => format!("the bundle is incomplete: {error}"),
                Err(error) => {
                    return Err(AgentError::BadIdentity {
                        location: location.to_owned(),
                        message: error.to_string(),
                    });
                }
            },
            Err(error) if !error.may_succeed_later() => {
                return Err(AgentError::IdentityLocation {
                    location: location.to_owned(),
                    source: error,
                });
            }
            Err(error) => error.to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(AgentError::IdentityTimeout {
                location: location.to_owned(),
                waited: humantime::format_duration(bootstrap.identity_timeout).to_string(),
                last_error,
            });
        }
        if !logged_wait {
            tracing::info!("waiting for the identity bundle at {location}: {last_error}");
            logged_wait = true;
        }
        attempt += 1;
        let delay = identity_poll_delay(attempt, now - began, restart_jitter());
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(now))).await;
    }
}

fn check_tag(
    bundle: IdentityBundle,
    bootstrap: &AgentBootstrap,
) -> Result<IdentityBundle, AgentError> {
    if bundle.tag != bootstrap.tag {
        return Err(AgentError::IdentityForOtherDeployment {
            location: bootstrap.identity.clone(),
            expected: bootstrap.tag.clone(),
            found: bundle.tag,
        });
    }
    Ok(bundle)
}
