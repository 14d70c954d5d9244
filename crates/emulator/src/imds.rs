//! The instance metadata service of one booted instance, on `<its public ip>:1338`: the
//! agent's IMDS server (`flotilla_agent::imds_server`, which the local provider's rehearsal
//! IMDS also runs: IMDSv2's token rules, error pages, listings and the event routes) over this
//! instance as moto describes it ([`Imds`], a `MetadataSource`):
//!
//! - `/latest/meta-data/…` (directories list their children, one per line, subdirectories with a
//!   trailing `/`), `/latest/user-data` (404 when there is none) and
//!   `/latest/dynamic/instance-identity/document`. Unknown paths are 404.
//! - `spot/instance-action`, `events/recommendations/rebalance` and
//!   `events/maintenance/scheduled` are 404 until a test triggers them through the booter's
//!   control API; then they answer `{"action","time"}`, `{"noticeTime"}` and a list of
//!   `{Code,Description,EventId,NotBefore,NotAfter,State}`. Their times are fixed when triggered
//!   (AEMM recomputes the spot time on every request; a notice does not move on AWS). A spot
//!   instance moto reclaimed (`POST /_flotilla/instances/reclaim`, or a scope's random
//!   reclaims) serves moto's notice (`InstanceInfo::spot_interruption`) the same way.
//!
//! The instance's role credentials carry the instance's scope as `AccessKeyId`, so what the
//! agent does with them is counted, and faulted, in the scope of the test that launched it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use flotilla_agent::imds_server::{ImdsServer, MetadataSource, Notices, listing};
use flotilla_spec::imds as shapes;
use serde_json::json;

use crate::env::SECRET_ACCESS_KEY;
use crate::instance::{
    InstanceInfo, RebalanceRecommendation, ScheduledEvent, SpotAction, SpotInterruption,
};

/// One instance's IMDS: the shared server over this instance.
pub(crate) type InstanceImds = ImdsServer<Imds>;

/// The port IMDS answers on (amazon-ec2-metadata-mock's default; the real one listens on 80).
pub(crate) const IMDS_PORT: u16 = 1338;
/// How long role credentials are said to last.
const CREDENTIALS_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// AWS gives two minutes' warning of a spot interruption.
const SPOT_WARNING: Duration = Duration::from_secs(120);
const SCHEDULED_CODES: [&str; 5] = [
    "instance-reboot",
    "system-reboot",
    "system-maintenance",
    "instance-retirement",
    "instance-stop",
];
const SCHEDULED_STATES: [&str; 3] = ["active", "completed", "canceled"];

/// One instance's metadata and pending notices.
#[derive(Debug)]
pub(crate) struct Imds {
    instance: Mutex<InstanceInfo>,
    user_data: Option<Vec<u8>>,
    booted_at: SystemTime,
    events: Mutex<Events>,
}

#[derive(Debug, Default)]
struct Events {
    spot: Option<(SpotAction, SystemTime)>,
    rebalance: Option<SystemTime>,
    scheduled: Option<Vec<Scheduled>>,
}

#[derive(Debug)]
struct Scheduled {
    code: String,
    description: String,
    event_id: String,
    not_before: SystemTime,
    not_after: SystemTime,
    state: String,
}

/// A trigger the booter's control API refuses.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadTrigger(String);

impl Imds {
    pub(crate) fn new(instance: InstanceInfo, user_data: Option<Vec<u8>>) -> Imds {
        Imds {
            instance: Mutex::new(instance),
            user_data,
            booted_at: SystemTime::now(),
            events: Mutex::new(Events::default()),
        }
    }

    /// This instance's IMDS server.
    pub(crate) fn serve(instance: InstanceInfo, user_data: Option<Vec<u8>>) -> InstanceImds {
        ImdsServer::new(Imds::new(instance, user_data))
    }

    fn instance(&self) -> InstanceInfo {
        self.instance.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Takes the latest view of the instance (tags can change after boot).
    pub(crate) fn update(&self, instance: InstanceInfo) {
        *self.instance.lock().unwrap_or_else(PoisonError::into_inner) = instance;
    }

    pub(crate) fn trigger_spot(
        &self,
        trigger: &SpotInterruption,
        now: SystemTime,
    ) -> Result<(), BadTrigger> {
        let time = parse_time(trigger.time.as_deref(), "time")?.unwrap_or(now + SPOT_WARNING);
        self.events().spot = Some((trigger.action, time));
        Ok(())
    }

    pub(crate) fn trigger_rebalance(
        &self,
        trigger: &RebalanceRecommendation,
        now: SystemTime,
    ) -> Result<(), BadTrigger> {
        let time = parse_time(trigger.notice_time.as_deref(), "notice_time")?.unwrap_or(now);
        self.events().rebalance = Some(time);
        Ok(())
    }

    pub(crate) fn schedule(
        &self,
        events: &[ScheduledEvent],
        now: SystemTime,
    ) -> Result<(), BadTrigger> {
        let mut scheduled = Vec::with_capacity(events.len());
        for event in events {
            if !SCHEDULED_CODES.contains(&event.code.as_str()) {
                return Err(BadTrigger(format!(
                    "unknown scheduled event code {:?}; one of {}",
                    event.code,
                    SCHEDULED_CODES.join(", ")
                )));
            }
            let state = event.state.clone().unwrap_or_else(|| "active".to_owned());
            if !SCHEDULED_STATES.contains(&state.as_str()) {
                return Err(BadTrigger(format!(
                    "unknown scheduled event state {state:?}; one of {}",
                    SCHEDULED_STATES.join(", ")
                )));
            }
            let not_before = parse_time(event.not_before.as_deref(), "not_before")?.unwrap_or(now);
            let not_after = parse_time(event.not_after.as_deref(), "not_after")?
                .unwrap_or(not_before + Duration::from_secs(7 * 24 * 3600));
            scheduled.push(Scheduled {
                description: event
                    .description
                    .clone()
                    .unwrap_or_else(|| format!("scheduled {}", event.code)),
                code: event.code.clone(),
                event_id: event.event_id.clone().unwrap_or_else(random_event_id),
                not_before,
                not_after,
                state,
            });
        }
        self.events().scheduled = Some(scheduled);
        Ok(())
    }

    pub(crate) fn clear_spot(&self) {
        self.events().spot = None;
    }

    pub(crate) fn clear_rebalance(&self) {
        self.events().rebalance = None;
    }

    pub(crate) fn clear_scheduled(&self) {
        self.events().scheduled = None;
    }

    fn events(&self) -> std::sync::MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn metadata_listing(&self, instance: &InstanceInfo) -> String {
        let mut entries = vec![
            "ami-id",
            "ami-launch-index",
            "events/",
            "hostname",
            "instance-id",
            "instance-life-cycle",
            "instance-type",
            "local-hostname",
            "local-ipv4",
            "mac",
            "placement/",
            "tags/",
        ];
        if instance.iam_role.is_some() {
            entries.push("iam/");
        }
        if instance.public_ip.is_some() {
            entries.push("public-ipv4");
        }
        if instance.lifecycle == "spot" || self.spot_notice(instance).is_some() {
            entries.push("spot/");
        }
        entries.sort_unstable();
        listing(&entries)
    }

    fn metadata_value(
        &self,
        instance: &InstanceInfo,
        key: &str,
        wall: SystemTime,
    ) -> Option<String> {
        let role = instance.iam_role.as_deref();
        match key {
            "ami-id" => instance.image_id.clone(),
            "ami-launch-index" => Some(instance.ami_launch_index.to_string()),
            "hostname" | "local-hostname" => instance.private_dns_name.clone(),
            "instance-id" => Some(instance.id.clone()),
            "instance-life-cycle" => Some(instance.lifecycle.clone()),
            "instance-type" => Some(instance.instance_type.clone()),
            "local-ipv4" => instance.private_ip.clone(),
            "mac" => instance.mac.clone(),
            "public-ipv4" => instance.public_ip.map(|ip| ip.to_string()),
            "placement" => Some(listing(&["availability-zone", "region"])),
            "placement/availability-zone" => instance.availability_zone.clone(),
            "placement/region" => Some(instance.region.clone()),
            "iam" => role.map(|_| listing(&["info", "security-credentials/"])),
            "iam/info" => instance.iam_instance_profile.as_deref().map(|arn| self.iam_info(arn)),
            "iam/security-credentials" => role.map(str::to_owned),
            "tags" => Some(listing(&["instance/"])),
            "tags/instance" => {
                Some(instance.tags.keys().map(String::as_str).collect::<Vec<_>>().join("\n"))
            }
            _ => {
                if let Some(name) = key.strip_prefix("iam/security-credentials/") {
                    return (Some(name) == role).then(|| self.credentials(instance, wall));
                }
                let tag = key.strip_prefix("tags/instance/")?;
                instance.tags.get(tag).cloned()
            }
        }
    }

    /// The spot notice a test triggered, else the one moto gave when it reclaimed the instance.
    fn spot_notice(&self, instance: &InstanceInfo) -> Option<(SpotAction, SystemTime)> {
        self.events().spot.or_else(|| {
            let notice = instance.spot_interruption.as_ref()?;
            let time = humantime::parse_rfc3339_weak(notice.time.as_deref()?).ok()?;
            Some((notice.action, time))
        })
    }

    /// The notices as the event routes serve them.
    fn current_notices(&self, instance: &InstanceInfo) -> Notices {
        let spot = self.spot_notice(instance).map(|(action, time)| shapes::SpotInstanceAction {
            action: match action {
                SpotAction::Terminate => "terminate",
                SpotAction::Stop => "stop",
                SpotAction::Hibernate => "hibernate",
            }
            .to_owned(),
            time: rfc3339(time),
        });
        let events = self.events();
        let rebalance = events
            .rebalance
            .map(|time| shapes::RebalanceRecommendation { notice_time: rfc3339(time) });
        let scheduled = events.scheduled.as_ref().map(|scheduled| {
            scheduled
                .iter()
                .map(|e| shapes::ScheduledEvent {
                    code: e.code.clone(),
                    description: e.description.clone(),
                    event_id: e.event_id.clone(),
                    not_before: imds_time(e.not_before),
                    not_after: imds_time(e.not_after),
                    state: e.state.clone(),
                })
                .collect()
        });
        Notices { spot, rebalance, scheduled }
    }

    fn iam_info(&self, arn: &str) -> String {
        pretty(&json!({
            "Code": "Success",
            "LastUpdated": rfc3339(self.booted_at),
            "InstanceProfileArn": arn,
            "InstanceProfileId": format!("AIPA{}", &hex::encode_upper(arn.as_bytes())[..16]),
        }))
    }

    fn credentials(&self, instance: &InstanceInfo, wall: SystemTime) -> String {
        pretty(&json!({
            "Code": "Success",
            "LastUpdated": rfc3339(self.booted_at),
            "Type": "AWS-HMAC",
            "AccessKeyId": instance.scope,
            "SecretAccessKey": SECRET_ACCESS_KEY,
            "Token": format!("flotilla-emulator-session-{}", instance.id),
            "Expiration": rfc3339(wall + CREDENTIALS_LIFETIME),
        }))
    }
}

impl MetadataSource for Imds {
    fn metadata(&self, key: &str, wall: SystemTime) -> Option<String> {
        let instance = self.instance();
        if key.is_empty() {
            return Some(self.metadata_listing(&instance));
        }
        self.metadata_value(&instance, key, wall)
    }

    fn user_data(&self) -> Option<Vec<u8>> {
        self.user_data.clone()
    }

    fn identity_document(&self) -> Option<String> {
        Some(identity_document(&self.instance()))
    }

    fn notices(&self) -> Result<Notices, String> {
        Ok(self.current_notices(&self.instance()))
    }
}

fn identity_document(instance: &InstanceInfo) -> String {
    pretty(&json!({
        "accountId": instance.account_id,
        "architecture": instance.architecture,
        "availabilityZone": instance.availability_zone,
        "billingProducts": null,
        "devpayProductCodes": null,
        "marketplaceProductCodes": null,
        "imageId": instance.image_id,
        "instanceId": instance.id,
        "instanceType": instance.instance_type,
        "kernelId": null,
        "pendingTime": instance.launch_time,
        "privateIp": instance.private_ip,
        "ramdiskId": null,
        "region": instance.region,
        "version": "2017-09-30",
    }))
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The layout IMDS uses for scheduled events: `21 Jan 2026 09:00:43 GMT`.
fn imds_time(time: SystemTime) -> String {
    let t = ::time::OffsetDateTime::from(time);
    let month = t.month().to_string();
    format!(
        "{} {} {} {:02}:{:02}:{:02} GMT",
        t.day(),
        &month[..3],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn parse_time(value: Option<&str>, field: &str) -> Result<Option<SystemTime>, BadTrigger> {
    value
        .map(|text| {
            humantime::parse_rfc3339_weak(text).map_err(|error| {
                BadTrigger(format!(
                    "`{field}` must be an RFC 3339 time like 2026-01-01T12:00:00Z: {error}"
                ))
            })
        })
        .transpose()
}

fn random_event_id() -> String {
    let digits = hex::encode(rand::random::<[u8; 9]>());
    format!("instance-event-{}", &digits[..17])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> InstanceInfo {
        serde_json::from_value(json!({
            "id": "i-0123456789abcdef0", "account_id": "123456789012", "region": "us-east-1",
            "state": "running", "public_ip": "127.100.0.7", "private_ip": "10.0.0.4",
            "private_dns_name": "ip-10-0-0-4.ec2.internal", "mac": "02:00:00:00:00:01",
            "instance_type": "c7g.large", "availability_zone": "us-east-1a", "image_id": "ami-1",
            "architecture": "arm64", "ami_launch_index": 2, "user_data": null,
            "tags": {"Name": "web-1"}, "iam_instance_profile": "arn:aws:iam::123456789012:instance-profile/p",
            "iam_role": "role-a", "scope": "AKIASCOPE", "lifecycle": "spot",
            "launch_time": "2026-01-01T00:00:00Z", "subnet_id": null, "vpc_id": null
        }))
        .unwrap()
    }

    #[test]
    fn the_metadata_and_the_notices_describe_the_instance() {
        let imds = Imds::new(instance(), Some(b"{domains: {}}".to_vec()));
        let wall = SystemTime::now();
        assert_eq!(imds.metadata("instance-id", wall).as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(imds.metadata("tags/instance/Name", wall).as_deref(), Some("web-1"));
        let listing = imds.metadata("", wall).unwrap();
        assert!(listing.lines().any(|l| l == "spot/"), "a spot instance lists spot/: {listing}");
        assert_eq!(imds.user_data().as_deref(), Some(&b"{domains: {}}"[..]));
        assert_eq!(imds.notices().unwrap(), Notices::default());
        let at = humantime::parse_rfc3339("2026-01-21T09:00:43Z").unwrap();
        let spot = SpotInterruption { action: SpotAction::Stop, time: None };
        imds.trigger_spot(&spot, at).unwrap();
        let event = ScheduledEvent {
            code: "system-reboot".into(),
            description: None,
            event_id: Some("instance-event-1".into()),
            not_before: None,
            not_after: None,
            state: None,
        };
        imds.schedule(&[event], at).unwrap();
        let notices = imds.notices().unwrap();
        assert_eq!(
            notices.spot,
            Some(shapes::SpotInstanceAction {
                action: "stop".into(),
                time: "2026-01-21T09:02:43Z".into()
            })
        );
        let scheduled = notices.scheduled.unwrap();
        assert_eq!(scheduled[0].not_before, "21 Jan 2026 09:00:43 GMT");
        assert_eq!(scheduled[0].state, "active");
        imds.clear_spot();
        imds.clear_scheduled();
        assert_eq!(imds.notices().unwrap(), Notices::default());
    }

    #[test]
    fn scheduled_event_times_use_the_imds_layout() {
        let time = humantime::parse_rfc3339("2026-01-21T09:00:43Z").unwrap();
        assert_eq!(imds_time(time), "21 Jan 2026 09:00:43 GMT");
    }

    #[test]
    fn bad_triggers_are_refused_with_the_allowed_values() {
        let imds = Imds::new(instance(), None);
        let event = ScheduledEvent {
            code: "reboot-please".into(),
            description: None,
            event_id: None,
            not_before: None,
            not_after: None,
            state: None,
        };
        let error = imds.schedule(&[event], SystemTime::now()).unwrap_err().to_string();
        assert!(error.contains("system-reboot"), "{error}");
        let spot = SpotInterruption { action: SpotAction::Stop, time: Some("soon".into()) };
        assert!(imds.trigger_spot(&spot, SystemTime::now()).is_err());
    }
}
