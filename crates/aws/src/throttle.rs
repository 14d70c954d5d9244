//! Client-side throttling of EC2: every request to a region's EC2 endpoint first takes its
//! tokens from that region's buckets ([`flotilla_capacity::throttle::RegionBuckets`], EC2's
//! documented buckets), waiting as long as they say, so flotilla stays inside EC2's limits
//! instead of learning them from `RequestLimitExceeded`.
//!
//! The wait happens in the HTTP layer of each region's EC2 client ([`throttled_http_client`]),
//! so it covers every call, every page of a paginated call and every retry the SDK makes,
//! without a wrapper at each call site. What a request costs is read from its query-protocol
//! body: the `Action`, whether it is filtered or paginated (`Filter.n`, `MaxResults`,
//! `NextToken`, lists of ids or names: the larger bucket), and the instances it counts
//! (`TerminateInstances`' ids, `RunInstances`' `MaxCount`).
//!
//! Backoff on `RequestLimitExceeded` is the SDK's standard retry (exponential, full jitter, 6
//! attempts), the one retry layer of every call but `CreateFleet`, whose SDK retries are off (a
//! retry could launch twice) and whose throttled answers go to the launch planner, which waits
//! 1 s doubling to 8 s (plus jitter here) before asking again: the two never stack.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector,
    http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use flotilla_capacity::throttle::RegionBuckets;

/// What one EC2 request costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ec2Request {
    pub action: String,
    /// Filters, ids or pagination: the larger bucket of the big Describe calls.
    pub filtered: bool,
    /// Instances it counts against the instance buckets.
    pub instances: u32,
}

impl Ec2Request {
    /// Reads an EC2 query-protocol body (`Action=…&Version=…&Filter.1.Name=…`).
    pub fn parse(body: &[u8]) -> Option<Ec2Request> {
        let text = std::str::from_utf8(body).ok()?;
        let mut action = None;
        let mut filtered = false;
        let mut ids = 0u32;
        let mut max_count = None;
        for pair in text.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "Action" => action = Some(value.to_owned()),
                "MaxResults" | "NextToken" => filtered = true,
                "MaxCount" => max_count = value.parse::<u32>().ok(),
                _ if key.starts_with("Filter.") => filtered = true,
                _ => {
                    if is_list_key(key) {
                        filtered = true;
                    }
                    if key.starts_with("InstanceId.") {
                        ids += 1;
                    }
                }
            }
        }
        let action = action?;
        let instances = match action.as_str() {
            "RunInstances" => max_count.unwrap_or(1),
            "TerminateInstances" => ids,
            _ => 0,
        };
        Some(Ec2Request { action, filtered, instances })
    }
}

/// `<Name>Id.<n>` or `<Name>Name.<n>`: a list of ids or names, which counts as filtered.
fn is_list_key(key: &str) -> bool {
    let Some((name, index)) = key.rsplit_once('.') else { return false };
    !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && (name.ends_with("Id") || name.ends_with("Name"))
        && !name.contains('.')
}

/// One region's buckets, shared by every EC2 call to the region.
#[derive(Debug)]
pub struct RegionThrottle {
    buckets: Mutex<RegionBuckets>,
}

impl Default for RegionThrottle {
    fn default() -> RegionThrottle {
        RegionThrottle {
            buckets: Mutex::new(RegionBuckets::new(tokio::time::Instant::now().into_std())),
        }
    }
}

impl RegionThrottle {
    /// Waits until `request`'s tokens are there and takes them.
    pub async fn admit(&self, request: &Ec2Request) {
        loop {
            let taken =
                self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(
                    &request.action,
                    request.filtered,
                    request.instances,
                    tokio::time::Instant::now().into_std(),
                );
            match taken {
                Ok(()) => return,
                Err(wait) => {
                    tracing::debug!(
                        action = %request.action,
                        wait_ms = wait.as_millis() as u64,
                        "waiting for EC2 request tokens"
                    );
                    // A little extra, so that the bucket has refilled when we look again.
                    tokio::time::sleep(wait + Duration::from_millis(5)).await;
                }
            }
        }
    }
}

/// `inner` with `throttle`'s wait before every request.
pub fn throttled_http_client(
    inner: SharedHttpClient,
    throttle: Arc<RegionThrottle>,
) -> SharedHttpClient {
    http_client_fn(move |settings, components| {
        SharedHttpConnector::new(Throttled {
            inner: inner.http_connector(settings, components),
            throttle: throttle.clone(),
        })
    })
}

#[derive(Debug)]
struct Throttled {
    inner: SharedHttpConnector,
    throttle: Arc<RegionThrottle>,
}

impl HttpConnector for Throttled {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let cost = request.body().bytes().and_then(Ec2Request::parse);
        let inner = self.inner.clone();
        let throttle = self.throttle.clone();
        HttpConnectorFuture::new(async move {
            if let Some(cost) = &cost {
                throttle.admit(cost).await;
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_body_says_what_it_costs() {
        let describe = Ec2Request::parse(b"Action=DescribeInstances&Version=2016-11-15").unwrap();
        assert_eq!(
            describe,
            Ec2Request { action: "DescribeInstances".into(), filtered: false, instances: 0 }
        );
        let filtered = Ec2Request::parse(
            b"Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3Ax&Filter.1.Value.1=y",
        )
        .unwrap();
        assert!(filtered.filtered);
        let by_ids =
            Ec2Request::parse(b"Action=DescribeInstances&InstanceId.1=i-1&InstanceId.2=i-2")
                .unwrap();
        assert!(by_ids.filtered);
        let paged = Ec2Request::parse(b"Action=DescribeSubnets&MaxResults=100").unwrap();
        assert!(paged.filtered);
        let terminate = Ec2Request::parse(
            b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-1&InstanceId.2=i-2&InstanceId.3=i-3",
        )
        .unwrap();
        assert_eq!(terminate.instances, 3);
        let run = Ec2Request::parse(b"Action=RunInstances&MinCount=4&MaxCount=4").unwrap();
        assert_eq!(run.instances, 4);
        let fleet = Ec2Request::parse(
            b"Action=CreateFleet&LaunchTemplateConfigs.1.Overrides.1.InstanceType=m5.large&TargetCapacitySpecification.TotalTargetCapacity=20",
        )
        .unwrap();
        assert_eq!(
            fleet,
            Ec2Request { action: "CreateFleet".into(), filtered: false, instances: 0 }
        );
        assert_eq!(Ec2Request::parse(b"Version=2016-11-15"), None, "no action");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_bucket_makes_the_next_request_wait() {
        let throttle = RegionThrottle::default();
        let fleet = Ec2Request { action: "CreateFleet".into(), filtered: false, instances: 0 };
        let started = tokio::time::Instant::now();
        // The mutating bucket holds 50 and refills 5 a second.
        for _ in 0..50 {
            throttle.admit(&fleet).await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        throttle.admit(&fleet).await;
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    }
}
