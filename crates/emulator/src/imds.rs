//! The instance metadata service of one booted instance, on `<its public ip>:1338`, answering
//! the way amazon-ec2-metadata-mock does with `--imdsv2`:
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` in 1..=21600 answers a
//!   token (and echoes the TTL header); a missing or bad TTL is 400.
//! - Every other request needs `X-aws-ec2-metadata-token` with a known, unexpired token, else 401
//!   (an expired token is forgotten). Only GET is allowed (405 otherwise).
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use hyper::header::HeaderMap;
use hyper::{Method, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::env::SECRET_ACCESS_KEY;
use crate::http::{Body, Received, response, serve};
use crate::instance::{
    InstanceInfo, RebalanceRecommendation, ScheduledEvent, SpotAction, SpotInterruption,
};

/// The port IMDS answers on (amazon-ec2-metadata-mock's default; the real one listens on 80).
pub(crate) const IMDS_PORT: u16 = 1338;
const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL_SECONDS: u64 = 21_600;
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

/// One instance's metadata, tokens and pending notices.
#[derive(Debug)]
pub(crate) struct Imds {
    instance: Mutex<InstanceInfo>,
    user_data: Option<Vec<u8>>,
    booted_at: SystemTime,
    /// Token → when it expires.
    tokens: Mutex<HashMap<String, Instant>>,
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
            tokens: Mutex::new(HashMap::new()),
            events: Mutex::new(Events::default()),
        }
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

    /// Answers one request; `now` decides token expiry, `wall` the times in answers.
    pub(crate) fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        now: Instant,
        wall: SystemTime,
    ) -> Response<Body> {
        if path == TOKEN_PATH {
            return if method == Method::PUT {
                self.issue_token(headers, now)
            } else {
                page(StatusCode::METHOD_NOT_ALLOWED)
            };
        }
        if !self.token_is_valid(headers, now) {
            return page(StatusCode::UNAUTHORIZED);
        }
        if method != Method::GET {
            return page(StatusCode::METHOD_NOT_ALLOWED);
        }
        let path = path.trim_end_matches('/');
        if path == "/latest/user-data" {
            return match &self.user_data {
                Some(data) => response(StatusCode::OK, "application/octet-stream", data.clone()),
                None => page(StatusCode::NOT_FOUND),
            };
        }
        let instance = self.instance.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let text = match path {
            "" => Some("latest".to_owned()),
            "/latest" => Some(listing(&["dynamic/", "meta-data/", "user-data"])),
            "/latest/dynamic" => Some(listing(&["instance-identity/"])),
            "/latest/dynamic/instance-identity" => Some(listing(&["document"])),
            "/latest/dynamic/instance-identity/document" => Some(identity_document(&instance)),
            "/latest/meta-data" => Some(self.metadata_listing(&instance)),
            _ => path
                .strip_prefix("/latest/meta-data/")
                .and_then(|key| self.metadata(&instance, key, wall)),
        };
        match text {
            Some(text) => response(StatusCode::OK, "text/plain", text),
            None => page(StatusCode::NOT_FOUND),
        }
    }

    fn issue_token(&self, headers: &HeaderMap, now: Instant) -> Response<Body> {
        let ttl = headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl));
        let Some(ttl) = ttl else {
            return page(StatusCode::BAD_REQUEST);
        };
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.retain(|_, expiry| *expiry > now);
        tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        let mut answer = response(StatusCode::OK, "text/plain", token);
        answer.headers_mut().insert(TTL_HEADER, ttl.into());
        answer
    }

    fn token_is_valid(&self, headers: &HeaderMap, now: Instant) -> bool {
        let Some(token) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        match tokens.get(token) {
            Some(expiry) if *expiry > now => true,
            Some(_) => {
                tokens.remove(token);
                false
            }
            None => false,
        }
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

    fn metadata(&self, instance: &InstanceInfo, key: &str, wall: SystemTime) -> Option<String> {
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
            "spot" => Some(listing(&["instance-action", "termination-time"])),
            "spot/instance-action" => self.spot_notice(instance).map(|(action, time)| {
                let action = match action {
                    SpotAction::Terminate => "terminate",
                    SpotAction::Stop => "stop",
                    SpotAction::Hibernate => "hibernate",
                };
                pretty(&json!({ "action": action, "time": rfc3339(time) }))
            }),
            "spot/termination-time" => self.spot_notice(instance).map(|(_, time)| rfc3339(time)),
            "events" => Some(listing(&["maintenance/", "recommendations/"])),
            "events/maintenance" => Some(listing(&["scheduled"])),
            "events/maintenance/scheduled" => self.events().scheduled.as_ref().map(|events| {
                let events: Vec<_> = events
                    .iter()
                    .map(|e| {
                        json!({
                            "Code": e.code,
                            "Description": e.description,
                            "EventId": e.event_id,
                            "NotBefore": imds_time(e.not_before),
                            "NotAfter": imds_time(e.not_after),
                            "State": e.state,
                        })
                    })
                    .collect();
                pretty(&events)
            }),
            "events/recommendations" => Some(listing(&["rebalance"])),
            "events/recommendations/rebalance" => {
                self.events().rebalance.map(|time| pretty(&json!({ "noticeTime": rfc3339(time) })))
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

/// Serves `imds` on `listener` until `shutdown` turns true.
pub(crate) async fn serve_imds(
    listener: TcpListener,
    imds: Arc<Imds>,
    shutdown: watch::Receiver<bool>,
) {
    let handler = Arc::new(move |request: Received| {
        let imds = imds.clone();
        async move {
            imds.answer(
                &request.method,
                &request.path,
                &request.headers,
                Instant::now(),
                SystemTime::now(),
            )
        }
    });
    serve(listener, handler, shutdown).await;
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

fn listing(entries: &[&str]) -> String {
    entries.join("\n")
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// An error page in the shape IMDS sends (a small XHTML document naming the status).
fn page(status: StatusCode) -> Response<Body> {
    let title = format!("{} - {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<html xmlns=\"http://www.w3.org/1999/xhtml\">\n<head><title>{title}</title></head>\n<body><h1>{title}</h1></body>\n</html>\n"
    );
    response(status, "text/html", body)
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

    fn get(imds: &Imds, path: &str, token: Option<&str>, now: Instant) -> (StatusCode, String) {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            headers.insert(TOKEN_HEADER, token.parse().unwrap());
        }
        let answer = imds.answer(&Method::GET, path, &headers, now, SystemTime::now());
        let status = answer.status();
        let body = futures_body(answer);
        (status, body)
    }

    fn futures_body(answer: Response<Body>) -> String {
        use http_body_util::BodyExt;
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(answer.into_body().collect())
            .unwrap();
        String::from_utf8(collected.to_bytes().to_vec()).unwrap()
    }

    fn token(imds: &Imds, ttl: &str, now: Instant) -> (StatusCode, String) {
        let mut headers = HeaderMap::new();
        headers.insert(TTL_HEADER, ttl.parse().unwrap());
        let answer = imds.answer(&Method::PUT, TOKEN_PATH, &headers, now, SystemTime::now());
        let status = answer.status();
        (status, futures_body(answer))
    }

    #[test]
    fn tokens_follow_the_imdsv2_rules() {
        let imds = Imds::new(instance(), None);
        let now = Instant::now();
        for bad in ["0", "21601", "x", ""] {
            assert_eq!(token(&imds, bad, now).0, StatusCode::BAD_REQUEST, "ttl {bad:?}");
        }
        let missing =
            imds.answer(&Method::PUT, TOKEN_PATH, &HeaderMap::new(), now, SystemTime::now());
        assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", None, now).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some("bogus"), now).0,
            StatusCode::UNAUTHORIZED
        );
        let (status, short) = token(&imds, "1", now);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some(&short), now).1,
            "i-0123456789abcdef0"
        );
        let later = now + Duration::from_secs(1);
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some(&short), later).0,
            StatusCode::UNAUTHORIZED
        );
        let (_, long) = token(&imds, "21600", now);
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some(&long), later).0,
            StatusCode::OK
        );
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
