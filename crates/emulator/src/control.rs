//! The typed client tests use to drive a running emulator stack: faults (dry pools included),
//! counts, latency, state timing, throttling, random spot reclaims and AWS Health events per
//! scope (moto's `/_flotilla/` API), instances and spot reclaims, and IMDS events (the
//! booter's control API).
//!
//! A *scope* is an access key id. Each test uses its own ([`Emulator::fresh_scope`]) and signs
//! its requests with it, so tests running in parallel against the one shared stack see only
//! their own faults, counts, latency and timing. Scope `*` applies to every scope without its
//! own setting (faults: in addition to the scope's own rules, checked after them).
//!
//! moto's control API (under `AWS_ENDPOINT_URL`), JSON:
//!
//! | request | answer |
//! |---|---|
//! | `GET /_flotilla/health` | `{"ok": true, "moto": "5.2.5"}` |
//! | `GET\|PUT\|POST\|DELETE /_flotilla/scopes/{scope}/faults` (PUT `{"rules": [Rule]}` replaces, POST `Rule` appends, DELETE clears) | `{"rules": [Rule + "hits"]}` |
//! | `GET\|DELETE /_flotilla/scopes/{scope}/counts` | `{"counts": {service: {Action: n}}}` |
//! | `GET\|PUT\|DELETE /_flotilla/scopes/{scope}/latency` (PUT `{"ms": n}`) | `{"ms": n}` |
//! | `GET\|PUT\|DELETE /_flotilla/scopes/{scope}/timing` (PUT `{"pending_ms"?, "shutting_down_ms"?, "attach_ms"?, "detach_ms"?, "volume_release_ms"?}`) | every value |
//! | `GET /_flotilla/instances[?since=G]` | `{"generation": G, "instances": [InstanceInfo]}` or `{"generation": G, "unchanged": true}` |
//! | `POST /_flotilla/instances/{id}/terminate` `{"code", "message"}` (the booter, when it cannot boot an instance) | `InstanceInfo`: `shutting-down` then `terminated` with that `StateReason`; 404 for an unknown id |
//! | `POST /_flotilla/instances/reclaim` `{"instance_ids": [id], "delay_ms"?}` ([`Emulator::reclaim_spot`]) | `{"instances": [InstanceInfo]}` with `spot_interruption` `{"action": "terminate", "time"}`; terminated after the delay with `Server.SpotInstanceTermination`; 400 for an on-demand instance, 404 for an unknown id |
//! | `GET\|PUT\|DELETE /_flotilla/scopes/{scope}/throttling` (PUT `{"enabled": bool}`; DELETE: back to `*`'s, counts cleared) | `{"enabled", "throttled": {Action: n}, "by_region": {region: {Action: n}}}` |
//! | `GET\|PUT\|DELETE /_flotilla/scopes/{scope}/spot-reclaim` (PUT `{"probability_per_minute", "seed"?, "delay_ms"?}`, [`Scope::set_spot_reclaim`]) | the setting in force |
//! | `GET\|POST /_flotilla/scopes/{scope}/health-events` (POST `{"region", "service"?, "event_type_code"?, "category"?}` opens an AWS Health event, [`Scope::open_health_event`]) | the event (`{"arn", "service", "eventTypeCode", "eventTypeCategory", "region", "startTime", "statusCode": "open", …}`), or `{"events": [event]}` |
//! | `POST /_flotilla/scopes/{scope}/health-events/close` `{"arn"}` | the event, `closed` with its `endTime`; 404 for an unknown ARN |
//! | `GET\|PUT\|DELETE /_flotilla/scopes/{scope}/clock` (PUT `{"offset_ms"}`, [`Scope::set_clock_offset`]) | `{"offset_ms", "now"}`: the scope's clock, real time plus the offset, in Unix seconds |
//! | `GET\|PUT\|DELETE /_flotilla/scopes/{scope}/host-capacity` (PUT `{zone: most hosts}`, [`Scope::set_host_capacity`]) | `{"zones": {zone: n}}` |
//! | `GET /_flotilla/hosts[?scope=S]` ([`Emulator::hosts`]) | `{"hosts": [HostInfo]}` |
//! | `GET /_flotilla/public-ips` | `{"size": n, "free": n, "in_use": {ip: instance id}, "next": [ip]}` |
//! | `GET /_flotilla/catalogue` (`up`, once moto answers) | `{"ec2_actions": [Action], "regions": [region]}` |
//! | `PUT /_flotilla/tables` (`up`: flotilla-capacity's prices and throttling buckets, `crate::tables`) / `GET` | `{"loaded", "price_date", "instance_types", "regions", "actions"}` |
//!
//! A `Rule` is `{"code", "service"?, "action"?, "probability"?, "count"?, "pool"?:
//! {"instance_type"?, "availability_zone"?, "market"?: "spot"|"on-demand"}, "status"?,
//! "message"?}` ([`FaultRule`]). A rule with a `pool` makes that pool dry: a `RunInstances` in
//! it (action `RunInstances` or `*`) fails with the error; in a `CreateFleet` of type `instant`
//! (action `CreateFleet` or `*`) each override in it (type, its subnet's zone, the market asked
//! for) becomes an `Errors` entry with the rule's code, one hit per override, and the target
//! capacity goes to the open overrides. A rule with action `AllocateHosts` and a pool refuses
//! allocations of that host type or zone (`InsufficientHostCapacity` in one zone).
//!
//! Dedicated hosts, per scope: the scope's clock (real time plus an offset a test advances, so
//! "24 hours later" needs no real wait) gives each host its allocation time; ReleaseHosts
//! refuses a Mac host before that time + 24 h with an Unsuccessful item, and a host with
//! instances (`Client.InvalidHost.Occupied`); a Mac host is `pending` for the scope's
//! `host_scrub_ms` of its clock after its instance stops or terminates, then `available`; a
//! launch with `Placement.HostId` lands on that host (one instance on a `.metal` host, the
//! host's type, `available` only). The booter's API is described in `booter_api.rs`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::env;
pub use crate::instance::{
    AgentSeedSwitch, BOOT_FAILURE_CODE, BootState, BootedInstance, IMAGE_BOOT_TAG, ImageBoot,
    InstanceInfo, RebalanceRecommendation, SPOT_RECLAIM_CODE, ScheduledEvent, ScheduledEvents,
    SpotAction, SpotInterruption, StateReason,
};

/// What a test gets when the stack is not running.
pub const NOT_RUNNING: &str = "the emulator is not running: start it with `scripts/test` or `eval \"$(target/debug/flotilla-emulator up --env-file …)\"`";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{NOT_RUNNING} (${0} is not set)")]
    NotRunning(&'static str),
    #[error("{method} {url}: {message}")]
    Request { method: &'static str, url: String, message: String },
    #[error("{method} {url} answered {status}: {body}")]
    Status { method: &'static str, url: String, status: u16, body: String },
    #[error("{0}")]
    Timeout(String),
}

/// A running stack, found through the environment `up` printed.
#[derive(Clone, Debug)]
pub struct Emulator {
    http: reqwest::Client,
    endpoint: String,
    control: String,
}

/// One scope (access key id) of a stack.
#[derive(Clone, Debug)]
pub struct Scope {
    emulator: Emulator,
    access_key_id: String,
}

/// An injected error. Builders set the optional parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// The AWS error code, e.g. `InsufficientInstanceCapacity`.
    pub code: String,
    /// `ec2`, `s3`, `iam`, … (the SigV4 service name), or `*`.
    pub service: String,
    /// The Action (S3: the operation, e.g. `PutObject`), or `*`.
    pub action: String,
    pub probability: f64,
    /// Hits left; `None` is unlimited.
    pub count: Option<u32>,
    pub pool: Option<PoolFilter>,
    /// Default: AWS's status for the code (500 capacity/internal, 503 throttling, 403 auth, else 400).
    pub status: Option<u16>,
    pub message: Option<String>,
}

/// Which launches a rule refuses: RunInstances calls, and CreateFleet overrides, in a pool
/// where each given field matches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// `spot` or `on-demand`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub market: Option<String>,
}

/// A rule as the emulator reports it, with how often it hit.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FaultRuleStatus {
    pub code: String,
    pub service: String,
    pub action: String,
    pub probability: f64,
    pub count: Option<u32>,
    pub pool: Option<PoolFilter>,
    pub status: Option<u16>,
    pub message: Option<String>,
    pub hits: u64,
}

/// A dedicated host as the emulator keeps it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HostInfo {
    pub id: String,
    pub region: String,
    pub scope: String,
    /// `available`, `pending` (scrubbing) or `released`.
    pub state: String,
    pub availability_zone: String,
    pub instance_type: Option<String>,
    /// Unix seconds on the scope's clock.
    pub allocation_time: f64,
    /// The instances on the host that are not stopped or terminated.
    pub instances: Vec<String>,
    /// When its scrub ends, on the scope's clock.
    pub scrub_due: Option<f64>,
    pub tags: BTreeMap<String, String>,
}

/// Requests by service, then Action.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Counts(pub BTreeMap<String, BTreeMap<String, u64>>);

impl Counts {
    pub fn get(&self, service: &str, action: &str) -> u64 {
        self.0.get(service).and_then(|actions| actions.get(action)).copied().unwrap_or(0)
    }
}

/// A scope's EC2 throttling ([`Scope::set_throttling`]) and what it refused.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Throttling {
    pub enabled: bool,
    /// Requests answered `RequestLimitExceeded`, by Action, over all regions.
    pub throttled: BTreeMap<String, u64>,
    /// The same by region, then Action.
    pub by_region: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Throttling {
    pub fn get(&self, action: &str) -> u64 {
        self.throttled.get(action).copied().unwrap_or(0)
    }
}

/// How long instances stay pending and shutting-down (or stopping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateTiming {
    pub pending: Duration,
    pub shutting_down: Duration,
}

/// How long a scope's EBS attachments take ([`Scope::set_volume_timing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeTiming {
    /// AttachVolume: `attaching` this long, then `attached`.
    pub attach: Duration,
    /// DetachVolume: `detaching` this long, then the volume is `available`.
    pub detach: Duration,
    /// A terminated instance's volumes not deleted with it stay attached this long.
    pub release_after_terminate: Duration,
}

/// A scope's random spot reclaims ([`Scope::set_spot_reclaim`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpotReclaim {
    /// The chance that a running spot instance of the scope is interrupted within a minute
    /// (each draws an exponential time to its notice with that rate; 1 is at once).
    pub probability_per_minute: f64,
    /// Seeds the draws: the same launches in the same order get the same times. `None`: a
    /// fresh seed.
    pub seed: Option<u64>,
    /// From notice to termination (AWS: two minutes); also the default of
    /// [`Emulator::reclaim_spot`] for the scope's instances.
    pub delay: Duration,
}

impl SpotReclaim {
    /// Interruptions with `probability_per_minute`, seeded, two minutes' warning.
    pub fn new(probability_per_minute: f64, seed: u64) -> SpotReclaim {
        SpotReclaim { probability_per_minute, seed: Some(seed), delay: SPOT_WARNING }
    }

    pub fn delay(mut self, delay: Duration) -> SpotReclaim {
        self.delay = delay;
        self
    }
}

/// How long AWS warns before it reclaims a spot instance.
pub const SPOT_WARNING: Duration = Duration::from_secs(120);

/// The public-IP pool.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct PublicIps {
    pub size: usize,
    pub free: usize,
    /// Address → the instance (or `elastic-ip`) holding it.
    pub in_use: BTreeMap<Ipv4Addr, String>,
    /// The next free addresses (up to 16), in the order they are handed out; one where
    /// something else listens on port 7443, 9101 or 1338 is skipped and goes to the back.
    #[serde(default)]
    pub next: Vec<Ipv4Addr>,
}

impl FaultRule {
    /// A rule that always hits `service`'s `action` (`*` for any).
    pub fn new(service: &str, action: &str, code: &str) -> FaultRule {
        FaultRule {
            code: code.to_owned(),
            service: service.to_owned(),
            action: action.to_owned(),
            probability: 1.0,
            count: None,
            pool: None,
            status: None,
            message: None,
        }
    }

    pub fn probability(mut self, probability: f64) -> FaultRule {
        self.probability = probability;
        self
    }

    pub fn count(mut self, count: u32) -> FaultRule {
        self.count = Some(count);
        self
    }

    pub fn pool(mut self, pool: PoolFilter) -> FaultRule {
        self.pool = Some(pool);
        self
    }

    pub fn status(mut self, status: u16) -> FaultRule {
        self.status = Some(status);
        self
    }

    pub fn message(mut self, message: &str) -> FaultRule {
        self.message = Some(message.to_owned());
        self
    }
}

impl PoolFilter {
    /// A pool of one instance type in one AZ, in one market (`spot` or `on-demand`).
    pub fn new(instance_type: &str, availability_zone: &str, market: &str) -> PoolFilter {
        PoolFilter {
            instance_type: Some(instance_type.to_owned()),
            availability_zone: Some(availability_zone.to_owned()),
            market: Some(market.to_owned()),
        }
    }
}

/// A reqwest client for loopback HTTP. reqwest is built without a default TLS provider in
/// this workspace and refuses to build a client without one, so install ours first.
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())
}

impl Emulator {
    /// The stack named by `AWS_ENDPOINT_URL` and `FLOTILLA_EMULATOR_CONTROL`.
    pub fn from_env() -> Result<Emulator, ControlError> {
        let endpoint = read_env(env::AWS_ENDPOINT_URL)?;
        let control = read_env(env::CONTROL_URL)?;
        Emulator::new(&endpoint, &control)
    }

    /// [`Emulator::from_env`], panicking with [`NOT_RUNNING`] when the stack is not there: what a
    /// test wants.
    pub fn require() -> Emulator {
        match Emulator::from_env() {
            Ok(emulator) => emulator,
            Err(error) => panic!("{error}"),
        }
    }

    pub fn new(endpoint: &str, control: &str) -> Result<Emulator, ControlError> {
        let http = http_client().map_err(|message| ControlError::Request {
            method: "build",
            url: endpoint.to_owned(),
            message,
        })?;
        Ok(Emulator::with_client(http, endpoint, control))
    }

    /// A client sharing `http`'s connections (the booter's own use).
    pub(crate) fn with_client(http: reqwest::Client, endpoint: &str, control: &str) -> Emulator {
        Emulator {
            http,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            control: control.trim_end_matches('/').to_owned(),
        }
    }

    /// moto's URL (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The booter's control URL.
    pub fn control_url(&self) -> &str {
        &self.control
    }

    pub fn scope(&self, access_key_id: &str) -> Scope {
        Scope { emulator: self.clone(), access_key_id: access_key_id.to_owned() }
    }

    /// A scope no other test (or run) uses: `AKIA` + `label` (letters and digits, upper-cased)
    /// + this process's id and a counter.
    pub fn fresh_scope(&self, label: &str) -> Scope {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let label: String = label
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.scope(&format!("AKIA{label}{}X{serial}X{nanos:x}", std::process::id()))
    }

    /// The scope every scope falls back to (`*`).
    pub fn all_scopes(&self) -> Scope {
        self.scope("*")
    }

    /// Every instance moto knows.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, ControlError> {
        #[derive(Deserialize)]
        struct Listing {
            instances: Vec<InstanceInfo>,
        }
        let listing: Listing = self.moto("GET", "instances", None).await?;
        Ok(listing.instances)
    }

    /// One instance as moto knows it.
    pub async fn instance(&self, id: &str) -> Result<Option<InstanceInfo>, ControlError> {
        Ok(self.instances().await?.into_iter().find(|i| i.id == id))
    }

    /// Ends instance `id` as the service would (a failed launch, a reclaimed spot instance):
    /// `shutting-down` (the scope's timing), then `terminated`, with `reason` as its
    /// `StateReason`. An instance already stopping or terminated keeps its state and reason.
    pub async fn terminate_instance(
        &self,
        id: &str,
        reason: &StateReason,
    ) -> Result<InstanceInfo, ControlError> {
        let body = serde_json::to_value(reason).unwrap_or_default();
        self.moto("POST", &format!("instances/{id}/terminate"), Some(body)).await
    }

    /// Reclaims spot instances as EC2 does: each one's IMDS serves `spot/instance-action`
    /// (`{"action": "terminate", "time": now + delay}`) at once, and after `delay` (`None`: its
    /// scope's [`SpotReclaim::delay`], else two minutes) it goes `shutting-down` (the scope's
    /// timing), then `terminated`, with [`StateReason::spot_reclaim`]. All or none: an
    /// on-demand instance, or one no longer pending or running, is refused (400, naming it); an
    /// unknown id is 404. An instance already noticed keeps its notice.
    pub async fn reclaim_spot(
        &self,
        ids: &[String],
        delay: Option<Duration>,
    ) -> Result<Vec<InstanceInfo>, ControlError> {
        #[derive(Deserialize)]
        struct Reclaimed {
            instances: Vec<InstanceInfo>,
        }
        let mut body = json!({ "instance_ids": ids });
        if let Some(delay) = delay {
            body["delay_ms"] = json!(millis(delay));
        }
        let reclaimed: Reclaimed = self.moto("POST", "instances/reclaim", Some(body)).await?;
        // The booter would read the notice at its next poll; tell the booted instances' IMDS
        // now. One not booted yet reads it from moto when it boots.
        for instance in &reclaimed.instances {
            if let Some(notice) = &instance.spot_interruption {
                match self.trigger_spot_interruption(&instance.id, notice).await {
                    Ok(()) | Err(ControlError::Status { status: 404, .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(reclaimed.instances)
    }

    /// Dedicated hosts of every account and region (of one scope when given).
    pub async fn hosts(&self, scope: Option<&Scope>) -> Result<Vec<HostInfo>, ControlError> {
        #[derive(Deserialize)]
        struct Answer {
            hosts: Vec<HostInfo>,
        }
        let path = match scope {
            Some(scope) => format!("hosts?scope={}", scope.access_key_id()),
            None => "hosts".to_owned(),
        };
        let answer: Answer = self.moto("GET", &path, None).await?;
        Ok(answer.hosts)
    }

    pub async fn public_ips(&self) -> Result<PublicIps, ControlError> {
        self.moto("GET", "public-ips", None).await
    }

    /// Every instance the booter booted.
    pub async fn booted(&self) -> Result<Vec<BootedInstance>, ControlError> {
        #[derive(Deserialize)]
        struct Booted {
            instances: Vec<BootedInstance>,
        }
        let booted: Booted = self.booter("GET", "instances", None).await?;
        Ok(booted.instances)
    }

    /// Waits until the booter reports instance `id` in a state `accept` likes.
    pub async fn wait_booted(
        &self,
        id: &str,
        timeout: Duration,
        accept: impl Fn(&BootedInstance) -> bool,
    ) -> Result<BootedInstance, ControlError> {
        let deadline = Instant::now() + timeout;
        loop {
            let booted = self.booted().await?;
            let found = booted.into_iter().find(|b| b.id == id);
            if let Some(found) = found.as_ref().filter(|b| accept(b)) {
                return Ok(found.clone());
            }
            if Instant::now() > deadline {
                return Err(ControlError::Timeout(format!(
                    "instance {id} not in the expected boot state within {timeout:?}; last seen: {found:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn trigger_spot_interruption(
        &self,
        instance_id: &str,
        interruption: &SpotInterruption,
    ) -> Result<(), ControlError> {
        let body = serde_json::to_value(interruption).unwrap_or_default();
        self.booter_event("PUT", instance_id, "spot-interruption", Some(body)).await
    }

    pub async fn clear_spot_interruption(&self, instance_id: &str) -> Result<(), ControlError> {
        self.booter_event("DELETE", instance_id, "spot-interruption", None).await
    }

    pub async fn trigger_rebalance(
        &self,
        instance_id: &str,
        recommendation: &RebalanceRecommendation,
    ) -> Result<(), ControlError> {
        let body = serde_json::to_value(recommendation).unwrap_or_default();
        self.booter_event("PUT", instance_id, "rebalance", Some(body)).await
    }

    pub async fn clear_rebalance(&self, instance_id: &str) -> Result<(), ControlError> {
        self.booter_event("DELETE", instance_id, "rebalance", None).await
    }

    pub async fn set_scheduled_events(
        &self,
        instance_id: &str,
        events: &[ScheduledEvent],
    ) -> Result<(), ControlError> {
        let body = json!({ "events": events });
        self.booter_event("PUT", instance_id, "scheduled-events", Some(body)).await
    }

    pub async fn clear_scheduled_events(&self, instance_id: &str) -> Result<(), ControlError> {
        self.booter_event("DELETE", instance_id, "scheduled-events", None).await
    }

    async fn booter_event(
        &self,
        method: &'static str,
        instance_id: &str,
        event: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), ControlError> {
        let _: serde_json::Value =
            self.booter(method, &format!("instances/{instance_id}/{event}"), body).await?;
        Ok(())
    }

    async fn moto<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ControlError> {
        let url = format!("{}/_flotilla/{path}", self.endpoint);
        self.call(method, url, body).await
    }

    async fn booter<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ControlError> {
        let url = format!("{}/{path}", self.control);
        self.call(method, url, body).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        url: String,
        body: Option<serde_json::Value>,
    ) -> Result<T, ControlError> {
        let verb = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut request = self.http.request(verb, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let failed = |e: reqwest::Error| ControlError::Request {
            method,
            url: url.clone(),
            message: e.to_string(),
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let text = response.text().await.map_err(failed)?;
        if !status.is_success() {
            return Err(ControlError::Status { method, url, status: status.as_u16(), body: text });
        }
        serde_json::from_str(&text).map_err(|e| ControlError::Request {
            method,
            url: url.clone(),
            message: format!("unexpected answer {text:?}: {e}"),
        })
    }
}

impl Scope {
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    fn path(&self, what: &str) -> String {
        format!("scopes/{}/{what}", self.access_key_id)
    }

    /// Replaces the scope's fault rules.
    pub async fn set_faults(&self, rules: &[FaultRule]) -> Result<(), ControlError> {
        let body = json!({ "rules": rules.iter().map(rule_json).collect::<Vec<_>>() });
        let _: serde_json::Value =
            self.emulator.moto("PUT", &self.path("faults"), Some(body)).await?;
        Ok(())
    }

    /// Adds a rule after the scope's others.
    pub async fn add_fault(&self, rule: &FaultRule) -> Result<(), ControlError> {
        let _: serde_json::Value =
            self.emulator.moto("POST", &self.path("faults"), Some(rule_json(rule))).await?;
        Ok(())
    }

    pub async fn clear_faults(&self) -> Result<(), ControlError> {
        let _: serde_json::Value = self.emulator.moto("DELETE", &self.path("faults"), None).await?;
        Ok(())
    }

    /// The scope's rules, with their remaining counts and hits.
    pub async fn faults(&self) -> Result<Vec<FaultRuleStatus>, ControlError> {
        #[derive(Deserialize)]
        struct Rules {
            rules: Vec<FaultRuleStatus>,
        }
        let rules: Rules = self.emulator.moto("GET", &self.path("faults"), None).await?;
        Ok(rules.rules)
    }

    pub async fn counts(&self) -> Result<Counts, ControlError> {
        #[derive(Deserialize)]
        struct Answer {
            counts: Counts,
        }
        let answer: Answer = self.emulator.moto("GET", &self.path("counts"), None).await?;
        Ok(answer.counts)
    }

    pub async fn reset_counts(&self) -> Result<(), ControlError> {
        let _: serde_json::Value = self.emulator.moto("DELETE", &self.path("counts"), None).await?;
        Ok(())
    }

    /// Latency before each of this scope's requests (for `*`: every scope without its own).
    pub async fn set_latency(&self, latency: Duration) -> Result<(), ControlError> {
        let body = json!({ "ms": millis(latency) });
        let _: serde_json::Value =
            self.emulator.moto("PUT", &self.path("latency"), Some(body)).await?;
        Ok(())
    }

    /// Back to `*`'s latency (for `*`: back to `up`'s `--latency-ms`).
    pub async fn clear_latency(&self) -> Result<(), ControlError> {
        let _: serde_json::Value =
            self.emulator.moto("DELETE", &self.path("latency"), None).await?;
        Ok(())
    }

    /// State timing of the instances this scope launches.
    pub async fn set_timing(&self, timing: StateTiming) -> Result<(), ControlError> {
        let body = json!({
            "pending_ms": millis(timing.pending),
            "shutting_down_ms": millis(timing.shutting_down),
        });
        let _: serde_json::Value =
            self.emulator.moto("PUT", &self.path("timing"), Some(body)).await?;
        Ok(())
    }

    /// EBS attachment timing of this scope's calls (and of its instances' termination).
    pub async fn set_volume_timing(&self, timing: VolumeTiming) -> Result<(), ControlError> {
        let body = json!({
            "attach_ms": millis(timing.attach),
            "detach_ms": millis(timing.detach),
            "volume_release_ms": millis(timing.release_after_terminate),
        });
        let _: serde_json::Value =
            self.emulator.moto("PUT", &self.path("timing"), Some(body)).await?;
        Ok(())
    }

    /// How long a Mac host of this scope scrubs (`pending`, on the scope's clock) after its
    /// instance stops or terminates; zero (the default): `available` at once.
    pub async fn set_host_scrub(&self, scrub: Duration) -> Result<(), ControlError> {
        let body = json!({ "host_scrub_ms": millis(scrub) });
        let _: serde_json::Value =
            self.emulator.moto("PUT", &self.path("timing"), Some(body)).await?;
        Ok(())
    }

    /// Sets the scope's clock ahead of real time by `offset` (not cumulative: the offset
    /// replaces the previous one). Host allocation times, the Mac 24-hour rule and scrubs read
    /// this clock.
    pub async fn set_clock_offset(&self, offset: Duration) -> Result<(), ControlError> {
        let body = json!({ "offset_ms": millis(offset) });
        let _: serde_json::Value =
            self.emulator.moto("PUT", &self.path("clock"), Some(body)).await?;
        Ok(())
    }

    /// The scope's clock, in Unix seconds.
    pub async fn clock(&self) -> Result<f64, ControlError> {
        #[derive(Deserialize)]
        struct Answer {
            now: f64,
        }
        let answer: Answer = self.emulator.moto("GET", &self.path("clock"), None).await?;
        Ok(answer.now)
    }

    /// The most hosts (not released) this scope may hold per zone; AllocateHosts beyond it
    /// answers `InsufficientHostCapacity`. Zones not named are unlimited.
    pub async fn set_host_capacity(&self, zones: &[(&str, u32)]) -> Result<(), ControlError> {
        let body: serde_json::Map<String, serde_json::Value> =
            zones.iter().map(|(zone, most)| ((*zone).to_owned(), json!(most))).collect();
        let _: serde_json::Value = self
            .emulator
            .moto("PUT", &self.path("host-capacity"), Some(serde_json::Value::Object(body)))
            .await?;
        Ok(())
    }

    pub async fn clear_timing(&self) -> Result<(), ControlError> {
        let _: serde_json::Value = self.emulator.moto("DELETE", &self.path("timing"), None).await?;
        Ok(())
    }

    /// Switches EC2's request throttling on or off for this scope (for `*`: every scope without
    /// its own setting; off by default): flotilla-capacity's token buckets
    /// (`flotilla_capacity::throttle`) per scope and region, a request beyond its bucket answered
    /// `RequestLimitExceeded` (HTTP 503, EC2's XML) without taking a token. The buckets start
    /// full.
    pub async fn set_throttling(&self, enabled: bool) -> Result<(), ControlError> {
        let body = json!({ "enabled": enabled });
        let _: serde_json::Value =
            self.emulator.moto("PUT", &self.path("throttling"), Some(body)).await?;
        Ok(())
    }

    /// Whether throttling applies to this scope, and what it refused.
    pub async fn throttling(&self) -> Result<Throttling, ControlError> {
        self.emulator.moto("GET", &self.path("throttling"), None).await
    }

    /// Back to `*`'s throttling setting, with the counts cleared.
    pub async fn clear_throttling(&self) -> Result<(), ControlError> {
        let _: serde_json::Value =
            self.emulator.moto("DELETE", &self.path("throttling"), None).await?;
        Ok(())
    }

    /// Interrupts this scope's running spot instances at random (for `*`: every scope without
    /// its own setting); replaces the previous setting and draws again for the instances
    /// running now, in launch order. See [`Emulator::reclaim_spot`] for what a reclaim does.
    pub async fn set_spot_reclaim(&self, reclaim: &SpotReclaim) -> Result<(), ControlError> {
        let body = json!({
            "probability_per_minute": reclaim.probability_per_minute,
            "seed": reclaim.seed,
            "delay_ms": millis(reclaim.delay),
        });
        let _: serde_json::Value =
            self.emulator.moto("PUT", &self.path("spot-reclaim"), Some(body)).await?;
        Ok(())
    }

    /// No more random reclaims (back to `*`'s setting); notices already given stand.
    pub async fn clear_spot_reclaim(&self) -> Result<(), ControlError> {
        let _: serde_json::Value =
            self.emulator.moto("DELETE", &self.path("spot-reclaim"), None).await?;
        Ok(())
    }

    /// Opens an AWS Health event in `region` (an EC2 `issue` unless `event` says otherwise),
    /// which `DescribeEvents` in this scope answers until it is closed (for `*`: in every
    /// scope).
    pub async fn open_health_event(
        &self,
        event: &HealthEventSpec,
    ) -> Result<HealthEvent, ControlError> {
        let body = json!({
            "region": event.region,
            "service": event.service,
            "event_type_code": event.event_type_code,
            "category": event.category,
        });
        self.emulator.moto("POST", &self.path("health-events"), Some(body)).await
    }

    /// Closes the scope's Health event `arn`: `DescribeEvents` shows it `closed`, with an end.
    pub async fn close_health_event(&self, arn: &str) -> Result<HealthEvent, ControlError> {
        let body = json!({ "arn": arn });
        self.emulator.moto("POST", &self.path("health-events/close"), Some(body)).await
    }

    /// Every Health event the scope opened, open or closed.
    pub async fn health_events(&self) -> Result<Vec<HealthEvent>, ControlError> {
        #[derive(Deserialize)]
        struct Answer {
            events: Vec<HealthEvent>,
        }
        let answer: Answer = self.emulator.moto("GET", &self.path("health-events"), None).await?;
        Ok(answer.events)
    }

    /// Whether this scope's instances get `FLOTILLA_AGENT_SEED` (when `up` has `--agent-seed`).
    pub async fn set_agent_seed(&self, enabled: bool) -> Result<(), ControlError> {
        let body = json!({ "enabled": enabled });
        let _: serde_json::Value =
            self.emulator.booter("PUT", &self.path("agent-seed"), Some(body)).await?;
        Ok(())
    }
}

/// A Health event to open ([`Scope::open_health_event`]).
#[derive(Clone, Debug, Serialize)]
pub struct HealthEventSpec {
    pub region: String,
    /// `EC2` by default.
    pub service: String,
    /// `AWS_<service>_OPERATIONAL_ISSUE` by default.
    pub event_type_code: String,
    /// `issue` (the default), `accountNotification`, `scheduledChange` or `investigation`.
    pub category: String,
}

impl HealthEventSpec {
    /// An open EC2 operational issue in `region`.
    pub fn ec2_issue(region: &str) -> HealthEventSpec {
        HealthEventSpec {
            region: region.to_owned(),
            service: "EC2".to_owned(),
            event_type_code: "AWS_EC2_OPERATIONAL_ISSUE".to_owned(),
            category: "issue".to_owned(),
        }
    }

    /// The same event, of another category (a `scheduledChange` holds no rollout).
    pub fn category(mut self, category: &str) -> HealthEventSpec {
        self.category = category.to_owned();
        self
    }
}

/// A Health event as `DescribeEvents` shows it (times in Unix seconds).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthEvent {
    pub arn: String,
    pub service: String,
    pub event_type_code: String,
    pub event_type_category: String,
    pub region: String,
    pub start_time: f64,
    #[serde(default)]
    pub end_time: Option<f64>,
    /// `open` or `closed`.
    pub status_code: String,
}

fn rule_json(rule: &FaultRule) -> serde_json::Value {
    json!({
        "code": rule.code,
        "service": rule.service,
        "action": rule.action,
        "probability": rule.probability,
        "count": rule.count,
        "pool": rule.pool,
        "status": rule.status,
        "message": rule.message,
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn read_env(name: &'static str) -> Result<String, ControlError> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or(ControlError::NotRunning(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_stack_says_how_to_start_it() {
        let message = ControlError::NotRunning(env::CONTROL_URL).to_string();
        assert!(message.starts_with("the emulator is not running: start it with `scripts/test`"));
        assert!(message.contains("flotilla-emulator up --env-file"));
        assert!(message.contains("FLOTILLA_EMULATOR_CONTROL"));
    }

    #[test]
    fn fresh_scopes_are_distinct_access_key_ids() {
        let emulator = Emulator::new("http://127.0.0.1:1", "http://127.0.0.1:2").unwrap();
        let a = emulator.fresh_scope("my-test");
        let b = emulator.fresh_scope("my-test");
        assert_ne!(a.access_key_id(), b.access_key_id());
        assert!(a.access_key_id().starts_with("AKIAMYTEST"), "{}", a.access_key_id());
        assert!(a.access_key_id().chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
