//! AWS Health, asked before each batch of an update (`flotilla_core::health`): the open EC2
//! issues in the batch's regions.
//!
//! One `DescribeEvents` per 10 regions (the filter's limit) and page of 100, with the filter
//! `services = [EC2]`, `eventStatusCodes = [open]`, `eventTypeCategories = [issue]` and the
//! regions: scheduled changes and account notifications (a retirement of one instance, which
//! `watch` handles) do not hold a rollout, an operational issue of the region does. Health is a
//! global service whose endpoint is in us-east-1, whatever the regions asked about.
//!
//! AWS answers `SubscriptionRequiredException` to accounts without a Business or Enterprise
//! support plan: that is reported as [`HealthReading::Unavailable`] (a warning, and the rollout
//! goes on unchecked), not as an error, since no wait or retry mends it.

use aws_sdk_health::types::{EventFilter, EventStatusCode, EventTypeCategory};
use aws_smithy_types::date_time::Format;
use flotilla_core::provider::{HealthIssue, HealthReading, ProviderError};

use crate::clients::{Clients, HOME_REGION};
use crate::error::AwsError;

/// The most regions one `DescribeEvents` filter may name.
const REGIONS_PER_FILTER: usize = 10;

/// The code AWS Health answers to an account without the support plan it needs.
const SUBSCRIPTION_REQUIRED: &str = "SubscriptionRequiredException";

/// The open EC2 issues in `regions`, or why Health cannot be asked for this account.
pub async fn open_ec2_issues(
    clients: &Clients,
    regions: &[String],
) -> Result<HealthReading, ProviderError> {
    let mut issues = Vec::new();
    for chunk in regions.chunks(REGIONS_PER_FILTER) {
        let filter = EventFilter::builder()
            .services("EC2")
            .event_status_codes(EventStatusCode::Open)
            .event_type_categories(EventTypeCategory::Issue)
            .set_regions(Some(chunk.to_vec()))
            .build();
        let mut token: Option<String> = None;
        loop {
            let answer = clients
                .health()
                .describe_events()
                .filter(filter.clone())
                .max_results(100)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| {
                    AwsError::from_sdk(
                        HOME_REGION,
                        "DescribeEvents",
                        format!("open EC2 issues in {}", chunk.join(", ")),
                        e,
                    )
                });
            let page = match answer {
                Ok(page) => page,
                Err(error) if error.code_is(SUBSCRIPTION_REQUIRED) => {
                    return Ok(HealthReading::Unavailable {
                        reason: format!(
                            "AWS Health answers only accounts with a Business or Enterprise support plan ({error})"
                        ),
                    });
                }
                Err(error) => return Err(error.into()),
            };
            for event in page.events() {
                // The filter says open EC2 issues; an answer outside it is not trusted to hold
                // (or to release) a rollout.
                let open = event.status_code() == Some(&EventStatusCode::Open);
                let issue = event.event_type_category() == Some(&EventTypeCategory::Issue);
                let Some(region) = event.region() else { continue };
                if !open || !issue || !chunk.iter().any(|r| r == region) {
                    continue;
                }
                issues.push(HealthIssue {
                    event_type: event.event_type_code().unwrap_or("an unnamed issue").to_owned(),
                    region: region.to_owned(),
                    start_time: event.start_time().and_then(|t| t.fmt(Format::DateTime).ok()),
                    arn: event.arn().unwrap_or("no ARN").to_owned(),
                });
            }
            token = page.next_token().map(str::to_owned).filter(|t| !t.is_empty());
            if token.is_none() {
                break;
            }
        }
    }
    Ok(HealthReading::Issues(issues))
}
