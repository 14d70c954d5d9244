//! The agent's IMDS client: IMDSv2 over plain HTTP (hyper, no SDK), and the poller that turns
//! spot interruptions, rebalance recommendations and scheduled events into lifecycle events.
//!
//! - Token: `PUT /latest/api/token` with a TTL of [`TOKEN_TTL`]; fetched again once less than
//!   [`TOKEN_REFRESH_MARGIN`] of it is left ([`token_needs_refresh`]), and once more when a
//!   request answers 401 (IMDS restarted, or the clock jumped), after which the 401 stands.
//! - Every request (connect, send, whole answer) has [`REQUEST_TIMEOUT`]; an answer over
//!   [`MAX_BODY`] is an error. Nothing here panics or waits without a bound: a failed poll is
//!   counted, logged at most once per [`FAILURE_LOG_INTERVAL`] (with how many were not
//!   logged), and the route is polled again on the schedule of `backoff::imds_poll_delay`.
//! - A notice is acted on once (the same action and time, the same recommendation, an event id
//!   already seen are not news); a notice whose time has passed means now
//!   ([`time_left`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use flotilla_spec::imds::{RebalanceRecommendation, ScheduledEvent, SpotInstanceAction};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The TTL the agent asks for its token: 6 hours, the longest IMDS grants.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// A token with less than this left is replaced before the next request.
pub(crate) const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The bound on one request, connect to last byte.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read.
const MAX_BODY: usize = 64 * 1024;
/// At most one log line about failing polls in this time.
pub(crate) const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// The routes the poller reads, each on its own schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Spot,
    Rebalance,
    Scheduled,
}

impl Route {
    pub(crate) const ALL: [Route; 3] = [Route::Spot, Route::Rebalance, Route::Scheduled];

    pub(crate) fn path(self) -> &'static str {
        match self {
            Route::Spot => "/latest/meta-data/spot/instance-action",
            Route::Rebalance => "/latest/meta-data/events/recommendations/rebalance",
            Route::Scheduled => "/latest/meta-data/events/maintenance/scheduled",
        }
    }
}

/// Why an IMDS request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImdsError {
    #[error("IMDS at {endpoint}: {what} did not answer within {timeout:?}")]
    Timeout { endpoint: String, what: String, timeout: Duration },
    #[error("IMDS at {endpoint}: {what}: {message}")]
    Http { endpoint: String, what: String, message: String },
    #[error("IMDS at {endpoint}: {what} answered {status}")]
    Status { endpoint: String, what: String, status: StatusCode },
}

/// Whether the token fetched at `fetched_at` with `ttl` must be replaced at `now`.
pub(crate) fn token_needs_refresh(token: Option<(Instant, Duration)>, now: Instant) -> bool {
    match token {
        None => true,
        Some((fetched_at, ttl)) => {
            now.saturating_duration_since(fetched_at).saturating_add(TOKEN_REFRESH_MARGIN) >= ttl
        }
    }
}

/// The time left before `deadline` at `now`; a deadline already past is zero: act now.
pub(crate) fn time_left(deadline: SystemTime, now: SystemTime) -> Duration {
    deadline.duration_since(now).unwrap_or(Duration::ZERO)
}

/// A notice read from IMDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    Spot { action: String, time: SystemTime, time_text: String },
    Rebalance { time: SystemTime, time_text: String },
    Scheduled { code: String, event_id: String, not_before: String, not_after: String },
}

/// Parses a spot answer; a time that cannot be read means now.
pub(crate) fn parse_spot(body: &str, now: SystemTime) -> Result<Notice, String> {
    let answer: SpotInstanceAction =
        serde_json::from_str(body).map_err(|e| format!("spot/instance-action: {e}"))?;
    let time = humantime::parse_rfc3339_weak(answer.time.trim_end_matches('Z')).unwrap_or(now);
    Ok(Notice::Spot { action: answer.action, time, time_text: answer.time })
}

/// Parses a rebalance answer.
pub(crate) fn parse_rebalance(body: &str, now: SystemTime) -> Result<Notice, String> {
    let answer: RebalanceRecommendation =
        serde_json::from_str(body).map_err(|e| format!("rebalance: {e}"))?;
    let time =
        humantime::parse_rfc3339_weak(answer.notice_time.trim_end_matches('Z')).unwrap_or(now);
    Ok(Notice::Rebalance { time, time_text: answer.notice_time })
}

/// Parses the scheduled events; only active ones are notices.
pub(crate) fn parse_scheduled(body: &str) -> Result<Vec<Notice>, String> {
    let events: Vec<ScheduledEvent> =
        serde_json::from_str(body).map_err(|e| format!("events/maintenance/scheduled: {e}"))?;
    Ok(events
        .into_iter()
        .filter(|event| event.state == "active")
        .map(|event| Notice::Scheduled {
            code: event.code,
            event_id: event.event_id,
            not_before: event.not_before,
            not_after: event.not_after,
        })
        .collect())
}

/// The notices already acted on, so each is acted on once.
#[derive(Debug, Default)]
pub(crate) struct SeenNotices {
    spot: Option<(String, String)>,
    rebalance: Option<String>,
    scheduled: BTreeSet<String>,
}

impl SeenNotices {
    /// Whether `notice` is news; remembers it.
    pub(crate) fn is_new(&mut self, notice: &Notice) -> bool {
        match notice {
            Notice::Spot { action, time_text, .. } => {
                let key = Some((action.clone(), time_text.clone()));
                let new = self.spot != key;
                self.spot = key;
                new
            }
            Notice::Rebalance { time_text, .. } => {
                let new = self.rebalance.as_deref() != Some(time_text);
                self.rebalance = Some(time_text.clone());
                new
            }
            Notice::Scheduled { event_id, .. } => self.scheduled.insert(event_id.clone()),
        }
    }
}

/// Failures logged at a limited rate, with the clock passed in.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    interval: Duration,
    last_line_at: Option<Instant>,
    unreported: u64,
}

impl FailureLimiter {
    pub(crate) fn new(interval: Duration) -> FailureLimiter {
        FailureLimiter { interval, last_line_at: None, unreported: 0 }
    }

    /// Counts a failure at `now`; the line to log when one is due.
    pub(crate) fn failed(&mut self, now: Instant, message: &str) -> Option<String> {
        if self.last_line_at.is_some_and(|at| now.saturating_duration_since(at) < self.interval) {
            self.unreported += 1;
            return None;
        }
        let line = match self.unreported {
            0 => message.to_owned(),
            n => format!("{message} ({n} more failures since the last line)"),
        };
        self.last_line_at = Some(now);
        self.unreported = 0;
        Some(line)
    }
}

/// IMDS's port when an endpoint names none.
const DEFAULT_PORT: u16 = 80;

/// One `--imds` endpoint, in the three forms ec2fleetd's IMDS library (ec2imds) accepts: an
/// IPv4 address, an IPv6 address in brackets (with an optional `%zone`), or a host name, each
/// with an optional `:PORT` (default 80); `http://` before it is also taken. Returns the URL
/// (`http://[::1]:8080`), or why the value is not an endpoint (an IPv6 address without
/// brackets is refused, as ec2imds refuses it: its last group would read as a port).
pub(crate) fn parse_endpoint(value: &str) -> Result<String, String> {
    let text = value.trim();
    let text = text.strip_prefix("http://").unwrap_or(text).trim_end_matches('/');
    let invalid = |why: &str| Err(format!("`{value}` is not an IMDS endpoint: {why}"));
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return invalid("the `[` of an IPv6 address has no `]`");
        };
        let (bare, zone) = address.split_once('%').unwrap_or((address, ""));
        if bare.parse::<std::net::Ipv6Addr>().is_err() {
            return invalid("not an IPv6 address between the brackets");
        }
        if address.contains('%')
            && (zone.is_empty()
                || !zone.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return invalid("the zone after `%` is letters, digits, `-` and `_`");
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return invalid("only `:PORT` may follow the `]`"),
            },
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return invalid("an IPv6 address goes in brackets, e.g. `[fd00:ec2::254]`");
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        let is_ipv4 = !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if is_ipv4 && host.parse::<std::net::Ipv4Addr>().is_err() {
            return invalid("not an IPv4 address");
        }
        let is_name = !host.is_empty()
            && host.split('.').enumerate().all(|(index, label)| {
                // One trailing dot is allowed (`host.`), as ec2imds allows it.
                (label.is_empty() && index > 0 && host.ends_with('.') && host.len() > 1)
                    || (!label.is_empty()
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            });
        if !is_ipv4 && !is_name {
            return invalid("not an IPv4 address, an [IPv6] address or a host name");
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return invalid("the port is a number from 1 to 65535"),
        },
    };
    Ok(format!("http://{host}:{port}"))
}

/// An IMDSv2 client for one endpoint (`http://HOST[:PORT]`).
#[derive(Debug)]
pub(crate) struct ImdsClient {
    endpoint: String,
    authority: String,
    token: Option<(String, Instant, Duration)>,
    timeout: Duration,
}

impl ImdsClient {
    pub(crate) fn new(endpoint: &str) -> ImdsClient {
        ImdsClient::with_timeout(endpoint, REQUEST_TIMEOUT)
    }

    pub(crate) fn with_timeout(endpoint: &str, timeout: Duration) -> ImdsClient {
        let authority = endpoint.trim_start_matches("http://").trim_end_matches('/');
        // A port is given after the host: after the `]` of a bracketed IPv6 address.
        let has_port = match authority.rsplit_once(']') {
            Some((_, rest)) => rest.starts_with(':'),
            None => authority.contains(':'),
        };
        let authority =
            if has_port { authority.to_owned() } else { format!("{authority}:{DEFAULT_PORT}") };
        ImdsClient { endpoint: endpoint.to_owned(), authority, token: None, timeout }
    }

    /// GETs `path`: `Ok(None)` on 404.
    pub(crate) async fn get(&mut self, path: &str) -> Result<Option<String>, ImdsError> {
        let token = self.token(false).await?;
        let (status, body) = self.request(Method::GET, path, Some(&token)).await?;
        let (status, body) = if status == StatusCode::UNAUTHORIZED {
            let token = self.token(true).await?;
            self.request(Method::GET, path, Some(&token)).await?
        } else {
            (status, body)
        };
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(self.error_status(path, status)),
        }
    }

    async fn token(&mut self, renew: bool) -> Result<String, ImdsError> {
        let now = Instant::now();
        let current = self.token.as_ref().map(|(_, at, ttl)| (*at, *ttl));
        if !renew
            && !token_needs_refresh(current, now)
            && let Some((token, _, _)) = &self.token
        {
            return Ok(token.clone());
        }
        self.token = None;
        let (status, body) = self.request(Method::PUT, TOKEN_PATH, None).await?;
        if status != StatusCode::OK {
            return Err(self.error_status(TOKEN_PATH, status));
        }
        let token = body.trim().to_owned();
        self.token = Some((token.clone(), now, TOKEN_TTL));
        Ok(token)
    }

    fn error_status(&self, path: &str, status: StatusCode) -> ImdsError {
        ImdsError::Status { endpoint: self.endpoint.clone(), what: path.to_owned(), status }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, String), ImdsError> {
        let what = format!("{method} {path}");
        let exchange = async {
            let stream = TcpStream::connect(&self.authority).await.map_err(|e| e.to_string())?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            let connection = tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, &self.authority);
            request = match token {
                Some(token) => request.header(TOKEN_HEADER, token),
                None => request.header(TTL_HEADER, TOKEN_TTL.as_secs()),
            };
            let request = request.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
            let answer = sender.send_request(request).await.map_err(|e| e.to_string());
            let answer = match answer {
                Ok(answer) => answer,
                Err(error) => {
                    connection.abort();
                    return Err(error);
                }
            };
            let status = answer.status();
            let body = Limited::new(answer.into_body(), MAX_BODY).collect().await;
            connection.abort();
            let body = body.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(message)) => {
                Err(ImdsError::Http { endpoint: self.endpoint.clone(), what, message })
            }
            Err(_) => Err(ImdsError::Timeout {
                endpoint: self.endpoint.clone(),
                what,
                timeout: self.timeout,
            }),
        }
    }
}

/// One round of [`NoticePoller::next_round`]: the new notices of the routes that were due,
/// whether IMDS answered them, and the failure lines to log (rate limited).
#[derive(Debug, Default)]
pub(crate) struct PollRound {
    pub(crate) notices: Vec<Notice>,
    /// `Some(true)` when the last route polled answered, `Some(false)` when it failed.
    pub(crate) answered: Option<bool>,
    pub(crate) log_lines: Vec<String>,
    /// Routes polled in this round, and how many of them failed.
    pub(crate) polled: u64,
    pub(crate) failed: u64,
}

/// The three routes polled on their schedules (`backoff::imds_poll_delay`: the spot and
/// rebalance routes every [`crate::backoff::IMDS_FAST_POLL`], scheduled events every
/// [`crate::backoff::IMDS_SCHEDULED_POLL`], each backing off on its own failures), each
/// notice reported once. The fleet agent's lifecycle and standalone fleetd both poll through it.
#[derive(Debug)]
pub(crate) struct NoticePoller {
    client: ImdsClient,
    seen: SeenNotices,
    limiter: FailureLimiter,
    failures: [u32; 3],
    due: [tokio::time::Instant; 3],
}

impl NoticePoller {
    pub(crate) fn new(client: ImdsClient) -> NoticePoller {
        NoticePoller {
            client,
            seen: SeenNotices::default(),
            limiter: FailureLimiter::new(FAILURE_LOG_INTERVAL),
            failures: [0; 3],
            due: [tokio::time::Instant::now(); 3],
        }
    }

    /// The client, for the requests other than notices (metadata).
    pub(crate) fn client(&mut self) -> &mut ImdsClient {
        &mut self.client
    }

    /// Waits until a route is due, polls every route that is, and reports what it found.
    pub(crate) async fn next_round(&mut self) -> PollRound {
        let next = *self.due.iter().min().expect("three routes");
        tokio::time::sleep_until(next).await;
        let mut round = PollRound::default();
        for (index, route) in Route::ALL.into_iter().enumerate() {
            if self.due[index] > tokio::time::Instant::now() {
                continue;
            }
            let interval = if route == Route::Scheduled {
                crate::backoff::IMDS_SCHEDULED_POLL
            } else {
                crate::backoff::IMDS_FAST_POLL
            };
            round.polled += 1;
            match poll_route(&mut self.client, route, SystemTime::now()).await {
                Ok(notices) => {
                    self.failures[index] = 0;
                    round.answered = Some(true);
                    round.notices.extend(notices.into_iter().filter(|n| self.seen.is_new(n)));
                }
                Err(error) => {
                    self.failures[index] = self.failures[index].saturating_add(1);
                    round.answered = Some(false);
                    round.failed += 1;
                    if let Some(line) = self.limiter.failed(Instant::now(), &error) {
                        round.log_lines.push(line);
                    }
                }
            }
            let delay = crate::backoff::imds_poll_delay(
                interval,
                self.failures[index],
                crate::backoff::restart_jitter(),
            );
            self.due[index] = tokio::time::Instant::now() + delay;
        }
        round
    }
}

/// Polls one route; the notices it holds.
pub(crate) async fn poll_route(
    client: &mut ImdsClient,
    route: Route,
    now: SystemTime,
) -> Result<Vec<Notice>, String> {
    let Some(body) = client.get(route.path()).await.map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    match route {
        Route::Spot => parse_spot(&body, now).map(|n| vec![n]),
        Route::Rebalance => parse_rebalance(&body, now).map(|n| vec![n]),
        Route::Scheduled => parse_scheduled(&body),
    }
}

/// The machine's metadata used as macro values, where IMDS has them; missing ones are left out.
pub(crate) async fn metadata_macros(client: &mut ImdsClient) -> Vec<(&'static str, String)> {
    let mut values = Vec::new();
    for (name, path) in [
        ("instance_id", "/latest/meta-data/instance-id"),
        ("instance_type", "/latest/meta-data/instance-type"),
        ("placement_region", "/latest/meta-data/placement/region"),
        ("placement_zone", "/latest/meta-data/placement/availability-zone"),
        ("primary_public_ipv4", "/latest/meta-data/public-ipv4"),
        ("hypervisor", "/latest/meta-data/system"),
    ] {
        if let Ok(Some(value)) = client.get(path).await {
            values.push((name, value.trim().to_owned()));
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_ec2imds_reads_them() {
        let ok = |value: &str| parse_endpoint(value).unwrap();
        assert_eq!(ok("169.254.169.254"), "http://169.254.169.254:80");
        assert_eq!(ok(" 127.0.0.1:1338 "), "http://127.0.0.1:1338");
        assert_eq!(ok("[::1]:8080"), "http://[::1]:8080");
        assert_eq!(ok("[fd00:ec2::254]"), "http://[fd00:ec2::254]:80");
        assert_eq!(ok("[fe80::1%eth0]:80"), "http://[fe80::1%eth0]:80");
        assert_eq!(ok("http://[::1]:8080/"), "http://[::1]:8080");
        assert_eq!(ok("imds.internal:8080"), "http://imds.internal:8080");
        assert_eq!(ok("localhost."), "http://localhost.:80");
        for (value, why) in [
            ("fd00:ec2::254", "brackets"),
            ("::1", "brackets"),
            ("[::1", "no `]`"),
            ("[not-v6]:80", "IPv6"),
            ("[::1]x", ":PORT"),
            ("[fe80::1%]", "zone"),
            ("300.1.1.1", "IPv4"),
            ("127.0.0.1:0", "port"),
            ("127.0.0.1:99999", "port"),
            ("127.0.0.1:", "port"),
            ("bad_host", "host name"),
            ("", "host name"),
        ] {
            let error = parse_endpoint(value).unwrap_err();
            assert!(error.contains(why), "{value}: {error}");
        }
    }

    #[test]
    fn a_client_adds_the_default_port_after_a_bracketed_address() {
        assert_eq!(ImdsClient::new("http://[::1]").authority, "[::1]:80");
        assert_eq!(ImdsClient::new("http://[::1]:8080").authority, "[::1]:8080");
        assert_eq!(ImdsClient::new("http://127.0.0.1").authority, "127.0.0.1:80");
        assert_eq!(ImdsClient::new("http://127.0.0.1:1338/").authority, "127.0.0.1:1338");
    }

    #[test]
    fn a_token_is_refreshed_before_it_expires() {
        let start = Instant::now();
        let ttl = Duration::from_secs(21_600);
        assert!(token_needs_refresh(None, start));
        assert!(!token_needs_refresh(Some((start, ttl)), start));
        let almost = start + ttl - TOKEN_REFRESH_MARGIN - Duration::from_secs(1);
        assert!(!token_needs_refresh(Some((start, ttl)), almost));
        assert!(token_needs_refresh(Some((start, ttl)), start + ttl - TOKEN_REFRESH_MARGIN));
        assert!(token_needs_refresh(Some((start, ttl)), start + ttl * 2));
    }

    #[test]
    fn notices_are_parsed_and_a_past_time_means_now() {
        let now = humantime::parse_rfc3339("2026-12-03T07:00:00Z").unwrap();
        let spot = parse_spot(r#"{"action":"stop","time":"2026-12-03T06:59:00Z"}"#, now).unwrap();
        let Notice::Spot { action, time, .. } = &spot else { panic!("{spot:?}") };
        assert_eq!(action, "stop");
        assert_eq!(time_left(*time, now), Duration::ZERO);
        let later =
            parse_spot(r#"{"action":"terminate","time":"2026-12-03T07:02:00Z"}"#, now).unwrap();
        let Notice::Spot { time, .. } = later else { panic!() };
        assert_eq!(time_left(time, now), Duration::from_secs(120));
        let rebalance = parse_rebalance(r#"{"noticeTime":"2026-12-03T06:00:00Z"}"#, now).unwrap();
        assert!(matches!(rebalance, Notice::Rebalance { .. }));
        let scheduled = parse_scheduled(
            r#"[{"Code":"instance-retirement","Description":"d","EventId":"instance-event-1",
                 "NotBefore":"3 Dec 2026 08:00:00 GMT","NotAfter":"","State":"active"},
                {"Code":"system-reboot","EventId":"instance-event-2",
                 "NotBefore":"3 Dec 2026 08:00:00 GMT","State":"canceled"}]"#,
        )
        .unwrap();
        assert_eq!(scheduled.len(), 1);
        assert!(
            matches!(&scheduled[0], Notice::Scheduled { code, .. } if code == "instance-retirement")
        );
        assert!(parse_spot("not json", now).is_err());
        assert!(parse_scheduled("{}").is_err());
    }

    #[test]
    fn each_notice_is_news_once() {
        let now = SystemTime::now();
        let mut seen = SeenNotices::default();
        let spot = parse_spot(r#"{"action":"stop","time":"2026-12-03T06:59:00Z"}"#, now).unwrap();
        assert!(seen.is_new(&spot));
        assert!(!seen.is_new(&spot));
        let moved = parse_spot(r#"{"action":"stop","time":"2026-12-03T07:59:00Z"}"#, now).unwrap();
        assert!(seen.is_new(&moved));
    }

    #[test]
    fn failures_are_logged_at_a_limited_rate() {
        let start = Instant::now();
        let mut limiter = FailureLimiter::new(Duration::from_secs(60));
        assert_eq!(limiter.failed(start, "down").as_deref(), Some("down"));
        assert_eq!(limiter.failed(start + Duration::from_secs(1), "down"), None);
        assert_eq!(limiter.failed(start + Duration::from_secs(2), "down"), None);
        assert_eq!(
            limiter.failed(start + Duration::from_secs(61), "down").as_deref(),
            Some("down (2 more failures since the last line)")
        );
    }
}

/// The client against a scripted IMDS on 127.0.0.1: errors, silence and a 401 are each one
/// failed (or retried) request, never a panic or a hang, and the next request recovers.
#[cfg(test)]
mod against_a_server {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What the fake IMDS does with the next GET instead of answering it properly.
    enum Reply {
        Status(u16),
        /// Reads the request and never answers (the connection stays open).
        Silence,
    }

    #[derive(Default)]
    struct Fake {
        /// Requests as seen: `PUT /latest/api/token`, `GET /path token-1`.
        seen: Vec<String>,
        tokens_issued: u32,
        /// The token GETs must carry; anything else is answered 401, as IMDS does.
        valid: Option<String>,
        overrides: VecDeque<Reply>,
    }

    /// Serves `fake` on an ephemeral loopback port; the endpoint.
    async fn serve(fake: Arc<Mutex<Fake>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let fake = fake.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let token = head
                        .lines()
                        .find_map(|line| line.strip_prefix(&format!("{TOKEN_HEADER}:")))
                        .map(|value| value.trim().to_owned());
                    let reply = {
                        let mut fake = fake.lock().expect("the fake's lock");
                        let mut seen = format!("{} {path}", method.to_uppercase());
                        if let Some(token) = &token {
                            seen = format!("{seen} {token}");
                        }
                        fake.seen.push(seen);
                        if method == "put" {
                            fake.tokens_issued += 1;
                            let token = format!("token-{}", fake.tokens_issued);
                            fake.valid = Some(token.clone());
                            Ok((200, token))
                        } else if let Some(reply) = fake.overrides.pop_front() {
                            match reply {
                                Reply::Status(code) => Ok((code, String::new())),
                                Reply::Silence => Err(()),
                            }
                        } else if token.is_none() || token != fake.valid {
                            Ok((401, String::new()))
                        } else {
                            Ok((200, format!("answer to {path}")))
                        }
                    };
                    match reply {
                        Ok((code, body)) => {
                            let answer = format!(
                                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = stream.write_all(answer.as_bytes()).await;
                        }
                        Err(()) => {
                            // Holds the connection open without a word.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            drop(stream);
                        }
                    }
                });
            }
        });
        endpoint
    }

    fn take_seen(fake: &Arc<Mutex<Fake>>) -> Vec<String> {
        std::mem::take(&mut fake.lock().expect("the fake's lock").seen)
    }

    const SPOT: &str = "/latest/meta-data/spot/instance-action";

    #[tokio::test]
    async fn errors_silence_and_a_401_neither_crash_nor_hang_the_client_and_it_recovers() {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let endpoint = serve(fake.clone()).await;
        let mut client = ImdsClient::with_timeout(&endpoint, Duration::from_millis(300));

        // First request: a token, then the GET with it.
        assert_eq!(client.get(SPOT).await.unwrap(), Some(format!("answer to {SPOT}")));
        assert_eq!(take_seen(&fake), ["PUT /latest/api/token", &format!("GET {SPOT} token-1")]);

        // A 500 is an error for this request; the next one succeeds with the same token.
        fake.lock().unwrap().overrides.push_back(Reply::Status(500));
        let error = client.get(SPOT).await.unwrap_err();
        assert!(
            matches!(error, ImdsError::Status { status: StatusCode::INTERNAL_SERVER_ERROR, .. }),
            "{error}"
        );
        assert!(client.get(SPOT).await.unwrap().is_some());
        assert_eq!(
            take_seen(&fake),
            [format!("GET {SPOT} token-1"), format!("GET {SPOT} token-1")]
        );

        // An IMDS that never answers: a timeout at the client's bound, then recovery.
        fake.lock().unwrap().overrides.push_back(Reply::Silence);
        let started = Instant::now();
        let error = client.get(SPOT).await.unwrap_err();
        assert!(matches!(error, ImdsError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(client.get(SPOT).await.unwrap().is_some());
        assert_eq!(take_seen(&fake).len(), 2);

        // IMDS forgot the token (it restarted): the 401 makes the client fetch a token once
        // and repeat the request with it.
        fake.lock().unwrap().valid = None;
        assert_eq!(client.get(SPOT).await.unwrap(), Some(format!("answer to {SPOT}")));
        assert_eq!(
            take_seen(&fake),
            [
                format!("GET {SPOT} token-1"),
                "PUT /latest/api/token".to_owned(),
                format!("GET {SPOT} token-2")
            ]
        );
        // The new token is kept.
        assert!(client.get(SPOT).await.unwrap().is_some());
        assert_eq!(take_seen(&fake), [format!("GET {SPOT} token-2")]);

        // A 401 that stands after the new token is the request's error: one new token, no loop.
        fake.lock().unwrap().overrides.extend([Reply::Status(401), Reply::Status(401)]);
        let error = client.get(SPOT).await.unwrap_err();
        assert!(matches!(error, ImdsError::Status { status: StatusCode::UNAUTHORIZED, .. }));
        assert_eq!(
            take_seen(&fake),
            [
                format!("GET {SPOT} token-2"),
                "PUT /latest/api/token".to_owned(),
                format!("GET {SPOT} token-3")
            ]
        );
        // A 404 is no notice, not an error.
        fake.lock().unwrap().overrides.push_back(Reply::Status(404));
        assert_eq!(client.get(SPOT).await.unwrap(), None);
        assert_eq!(fake.lock().unwrap().tokens_issued, 3);
    }

    #[tokio::test]
    async fn a_poll_against_a_failing_imds_is_an_error_not_a_panic() {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let endpoint = serve(fake.clone()).await;
        let mut client = ImdsClient::with_timeout(&endpoint, Duration::from_millis(300));
        fake.lock().unwrap().overrides.push_back(Reply::Status(500));
        let error = poll_route(&mut client, Route::Spot, SystemTime::now()).await.unwrap_err();
        assert!(error.contains("500"), "{error}");
        // The fake's 200 is not JSON: a parse error, also no panic.
        let error = poll_route(&mut client, Route::Spot, SystemTime::now()).await.unwrap_err();
        assert!(error.contains("spot/instance-action"), "{error}");
        // Nothing listening: a connection error.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let mut client =
            ImdsClient::with_timeout(&format!("http://{address}"), Duration::from_millis(300));
        assert!(poll_route(&mut client, Route::Rebalance, SystemTime::now()).await.is_err());
    }
}
