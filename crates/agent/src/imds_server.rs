//! IMDSv2 as EC2 serves it, in one implementation for the AWS emulator (an IMDS per emulated
//! instance) and the agent's rehearsal IMDS under the local provider (`imds_rehearsal`): the
//! token rules, the error pages, the routes around the metadata and the three event routes,
//! over a [`MetadataSource`] that knows the machine. The agent stays SDK-free: this is plain
//! hyper.
//!
//! The rules (amazon-ec2-metadata-mock's with `--imdsv2`, and EC2's):
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` in 1..=21600 answers a
//!   new token and echoes the TTL header; a missing or bad TTL is 400, another method 405. At
//!   most [`MAX_TOKENS`] live tokens are kept; past that the one expiring first is forgotten
//!   (its holder gets a 401 and asks for a new one, as clients do).
//! - Every other request needs `X-aws-ec2-metadata-token` with a known, unexpired token, else
//!   401 (an expired token is forgotten); then only GET is allowed (405).
//! - `/`, `/latest`, `/latest/dynamic…` list their children, one per line (subdirectories with
//!   a trailing `/`); `/latest/user-data` is the source's bytes (404 without);
//!   `/latest/meta-data/<key>` is the source's answer, except the event routes, which this
//!   module renders from the source's [`Notices`]: `spot/instance-action` and
//!   `spot/termination-time`, `events/recommendations/rebalance`,
//!   `events/maintenance/scheduled`, and their directories. Unknown paths are 404, and a
//!   source that cannot read its notices answers 500. Error answers are the small XHTML page
//!   IMDS sends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use flotilla_spec::imds::{RebalanceRecommendation, ScheduledEvent, SpotInstanceAction};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where tokens are asked for.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The TTL header of a token request (and of its answer).
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The header a request carries its token in.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The longest TTL a token may ask for (6 h).
pub const MAX_TTL_SECONDS: u64 = 21_600;
/// Live tokens kept at most.
pub const MAX_TOKENS: usize = 256;
/// How long one connection may stay open.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);
/// The pause after a failed accept (out of file descriptors, usually), so as not to spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The notices a machine has now; `None` routes are 404.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notices {
    pub spot: Option<SpotInstanceAction>,
    pub rebalance: Option<RebalanceRecommendation>,
    /// `Some(vec![])` answers `[]`.
    pub scheduled: Option<Vec<ScheduledEvent>>,
}

/// What one machine's IMDS knows.
pub trait MetadataSource: Send + Sync + 'static {
    /// `GET /latest/meta-data/<key>` (`key` without a trailing `/`; `""` is the meta-data
    /// listing), for every key but the event routes; `None` is 404. `wall` is the time answers
    /// that carry times (credentials) use.
    fn metadata(&self, key: &str, wall: SystemTime) -> Option<String>;

    /// `/latest/user-data`.
    fn user_data(&self) -> Option<Vec<u8>>;

    /// `/latest/dynamic/instance-identity/document`.
    fn identity_document(&self) -> Option<String>;

    /// The notices now, or why they cannot be read (500).
    fn notices(&self) -> Result<Notices, String>;
}

/// One answer, before it becomes an HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsAnswer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The TTL header of a token answer.
    pub ttl: Option<u64>,
}

impl ImdsAnswer {
    fn text(text: String) -> ImdsAnswer {
        ImdsAnswer {
            status: StatusCode::OK,
            content_type: "text/plain",
            body: text.into(),
            ttl: None,
        }
    }

    /// The error page IMDS sends for `status`.
    fn page(status: StatusCode) -> ImdsAnswer {
        let title =
            format!("{} - {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<html xmlns=\"http://www.w3.org/1999/xhtml\">\n<head><title>{title}</title></head>\n<body><h1>{title}</h1></body>\n</html>\n"
        );
        ImdsAnswer { status, content_type: "text/html", body: body.into(), ttl: None }
    }

    /// As a hyper response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if let Some(ttl) = self.ttl {
            response.headers_mut().insert(TTL_HEADER, ttl.into());
        }
        response
    }
}

/// An IMDS over `S` (see the module).
#[derive(Debug)]
pub struct ImdsServer<S> {
    source: S,
    /// Token → when it expires.
    tokens: Mutex<HashMap<String, Instant>>,
}

impl<S: MetadataSource> ImdsServer<S> {
    pub fn new(source: S) -> ImdsServer<S> {
        ImdsServer { source, tokens: Mutex::new(HashMap::new()) }
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// Answers one request; `now` decides token expiry, `wall` the times in answers.
    pub fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        now: Instant,
        wall: SystemTime,
    ) -> ImdsAnswer {
        if path == TOKEN_PATH {
            return if method == Method::PUT {
                self.issue_token(headers, now)
            } else {
                ImdsAnswer::page(StatusCode::METHOD_NOT_ALLOWED)
            };
        }
        if !self.token_is_valid(headers, now) {
            return ImdsAnswer::page(StatusCode::UNAUTHORIZED);
        }
        if method != Method::GET {
            return ImdsAnswer::page(StatusCode::METHOD_NOT_ALLOWED);
        }
        let path = path.trim_end_matches('/');
        if path == "/latest/user-data" {
            return match self.source.user_data() {
                Some(data) => ImdsAnswer {
                    status: StatusCode::OK,
                    content_type: "application/octet-stream",
                    body: data,
                    ttl: None,
                },
                None => ImdsAnswer::page(StatusCode::NOT_FOUND),
            };
        }
        let text = match path {
            "" => Some("latest".to_owned()),
            "/latest" => Some(listing(&["dynamic/", "meta-data/", "user-data"])),
            "/latest/dynamic" => Some(listing(&["instance-identity/"])),
            "/latest/dynamic/instance-identity" => Some(listing(&["document"])),
            "/latest/dynamic/instance-identity/document" => self.source.identity_document(),
            "/latest/meta-data" => self.source.metadata("", wall),
            _ => match path.strip_prefix("/latest/meta-data/") {
                Some(key) => match self.event_route(key) {
                    Some(Ok(answer)) => answer,
                    Some(Err(error)) => {
                        let mut answer = ImdsAnswer::page(StatusCode::INTERNAL_SERVER_ERROR);
                        answer.body.extend_from_slice(error.as_bytes());
                        return answer;
                    }
                    None => self.source.metadata(key, wall),
                },
                None => None,
            },
        };
        match text {
            Some(text) => ImdsAnswer::text(text),
            None => ImdsAnswer::page(StatusCode::NOT_FOUND),
        }
    }

    /// The answer of an event route (`None` when `key` is not one).
    fn event_route(&self, key: &str) -> Option<Result<Option<String>, String>> {
        let directory = match key {
            "spot" => Some(listing(&["instance-action", "termination-time"])),
            "events" => Some(listing(&["maintenance/", "recommendations/"])),
            "events/maintenance" => Some(listing(&["scheduled"])),
            "events/recommendations" => Some(listing(&["rebalance"])),
            "spot/instance-action"
            | "spot/termination-time"
            | "events/recommendations/rebalance"
            | "events/maintenance/scheduled" => None,
            _ => return None,
        };
        if directory.is_some() {
            return Some(Ok(directory));
        }
        Some(self.source.notices().map(|notices| match key {
            "spot/instance-action" => notices.spot.as_ref().map(pretty),
            "spot/termination-time" => notices.spot.map(|notice| notice.time),
            "events/recommendations/rebalance" => notices.rebalance.as_ref().map(pretty),
            _ => notices.scheduled.as_ref().map(pretty),
        }))
    }

    fn issue_token(&self, headers: &HeaderMap, now: Instant) -> ImdsAnswer {
        let ttl = headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl));
        let Some(ttl) = ttl else {
            return ImdsAnswer::page(StatusCode::BAD_REQUEST);
        };
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.retain(|_, expiry| *expiry > now);
        if tokens.len() >= MAX_TOKENS
            && let Some(first) = tokens.iter().min_by_key(|(_, e)| **e).map(|(t, _)| t.clone())
        {
            tokens.remove(&first);
        }
        tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        ImdsAnswer { ttl: Some(ttl), ..ImdsAnswer::text(token) }
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
}

/// Serves `server` on `listener` until `shutdown` turns true (or its sender is gone), one task
/// per connection, each open at most 30 s.
pub async fn serve<S: MetadataSource>(
    listener: TcpListener,
    server: Arc<ImdsServer<S>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = crate::shutdown_signalled(&mut shutdown) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!("IMDS: accepting a connection: {error}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let answer = server.answer(
                    request.method(),
                    request.uri().path(),
                    request.headers(),
                    Instant::now(),
                    SystemTime::now(),
                );
                async move { Ok::<_, Infallible>(answer.into_response()) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, connection).await;
        });
    }
}

/// A directory's listing: one child per line.
pub fn listing(entries: &[&str]) -> String {
    entries.join("\n")
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("IMDS answers serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Machine {
        notices: Mutex<Result<Notices, String>>,
    }

    impl MetadataSource for Machine {
        fn metadata(&self, key: &str, _wall: SystemTime) -> Option<String> {
            match key {
                "" => Some(listing(&["events/", "instance-id"])),
                "instance-id" => Some("i-0123456789abcdef0".to_owned()),
                _ => None,
            }
        }

        fn user_data(&self) -> Option<Vec<u8>> {
            Some(b"{domains: {}}".to_vec())
        }

        fn identity_document(&self) -> Option<String> {
            None
        }

        fn notices(&self) -> Result<Notices, String> {
            self.notices.lock().unwrap().clone()
        }
    }

    fn server() -> ImdsServer<Machine> {
        ImdsServer::new(Machine { notices: Mutex::new(Ok(Notices::default())) })
    }

    fn get(
        server: &ImdsServer<Machine>,
        path: &str,
        token: Option<&str>,
        now: Instant,
    ) -> ImdsAnswer {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            headers.insert(TOKEN_HEADER, token.parse().unwrap());
        }
        server.answer(&Method::GET, path, &headers, now, SystemTime::now())
    }

    fn token(server: &ImdsServer<Machine>, ttl: &str, now: Instant) -> ImdsAnswer {
        let mut headers = HeaderMap::new();
        headers.insert(TTL_HEADER, ttl.parse().unwrap());
        server.answer(&Method::PUT, TOKEN_PATH, &headers, now, SystemTime::now())
    }

    fn body(answer: &ImdsAnswer) -> String {
        String::from_utf8(answer.body.clone()).unwrap()
    }

    #[test]
    fn tokens_follow_the_imdsv2_rules() {
        let server = server();
        let now = Instant::now();
        for bad in ["0", "21601", "x", ""] {
            assert_eq!(token(&server, bad, now).status, StatusCode::BAD_REQUEST, "ttl {bad:?}");
        }
        let missing =
            server.answer(&Method::PUT, TOKEN_PATH, &HeaderMap::new(), now, SystemTime::now());
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        let get_token =
            server.answer(&Method::GET, TOKEN_PATH, &HeaderMap::new(), now, SystemTime::now());
        assert_eq!(get_token.status, StatusCode::METHOD_NOT_ALLOWED);
        let path = "/latest/meta-data/instance-id";
        assert_eq!(get(&server, path, None, now).status, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&server, path, Some("bogus"), now).status, StatusCode::UNAUTHORIZED);
        let short = token(&server, "1", now);
        assert_eq!((short.status, short.ttl), (StatusCode::OK, Some(1)));
        let short = body(&short);
        assert_eq!(body(&get(&server, path, Some(&short), now)), "i-0123456789abcdef0");
        let later = now + Duration::from_secs(1);
        assert_eq!(get(&server, path, Some(&short), later).status, StatusCode::UNAUTHORIZED);
        let long = body(&token(&server, "21600", now));
        assert_eq!(get(&server, path, Some(&long), later).status, StatusCode::OK);
        let mut headers = HeaderMap::new();
        headers.insert(TOKEN_HEADER, long.parse().unwrap());
        let post = server.answer(&Method::POST, path, &headers, later, SystemTime::now());
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn live_tokens_are_bounded_and_the_first_to_expire_goes() {
        let server = server();
        let now = Instant::now();
        let first = body(&token(&server, "10", now));
        let long = body(&token(&server, "21600", now));
        for _ in 0..MAX_TOKENS - 1 {
            token(&server, "600", now);
        }
        let path = "/latest/meta-data/instance-id";
        assert_eq!(get(&server, path, Some(&first), now).status, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&server, path, Some(&long), now).status, StatusCode::OK);
        assert!(server.tokens.lock().unwrap().len() <= MAX_TOKENS);
    }

    #[test]
    fn routes_list_and_event_routes_render_the_notices() {
        let server = server();
        let now = Instant::now();
        let token = body(&token(&server, "60", now));
        let text = |path: &str| {
            let answer = get(&server, path, Some(&token), now);
            (answer.status, body(&answer))
        };
        assert_eq!(text("/latest/"), (StatusCode::OK, "dynamic/\nmeta-data/\nuser-data".into()));
        assert_eq!(text("/latest/meta-data/"), (StatusCode::OK, "events/\ninstance-id".into()));
        assert_eq!(text("/latest/user-data").1, "{domains: {}}");
        assert_eq!(text("/latest/meta-data/nothing").0, StatusCode::NOT_FOUND);
        assert!(text("/latest/meta-data/nothing").1.contains("404 - Not Found"));
        assert_eq!(text("/latest/dynamic/instance-identity/document").0, StatusCode::NOT_FOUND);
        for route in [
            "spot/instance-action",
            "spot/termination-time",
            "events/recommendations/rebalance",
            "events/maintenance/scheduled",
        ] {
            assert_eq!(text(&format!("/latest/meta-data/{route}")).0, StatusCode::NOT_FOUND);
        }
        assert_eq!(text("/latest/meta-data/events").1, "maintenance/\nrecommendations/");
        *server.source.notices.lock().unwrap() = Ok(Notices {
            spot: Some(SpotInstanceAction {
                action: "stop".into(),
                time: "2026-01-01T00:02:00Z".into(),
            }),
            rebalance: Some(RebalanceRecommendation { notice_time: "2026-01-01T00:00:00Z".into() }),
            scheduled: Some(Vec::new()),
        });
        let spot: serde_json::Value =
            serde_json::from_str(&text("/latest/meta-data/spot/instance-action").1).unwrap();
        assert_eq!(spot, serde_json::json!({"action": "stop", "time": "2026-01-01T00:02:00Z"}));
        assert_eq!(text("/latest/meta-data/spot/termination-time").1, "2026-01-01T00:02:00Z");
        let rebalance: serde_json::Value =
            serde_json::from_str(&text("/latest/meta-data/events/recommendations/rebalance").1)
                .unwrap();
        assert_eq!(rebalance, serde_json::json!({"noticeTime": "2026-01-01T00:00:00Z"}));
        assert_eq!(
            text("/latest/meta-data/events/maintenance/scheduled"),
            (StatusCode::OK, "[]".into())
        );
        *server.source.notices.lock().unwrap() = Err("notices.json: not JSON".into());
        let broken = text("/latest/meta-data/spot/instance-action");
        assert_eq!(broken.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(broken.1.contains("not JSON"), "{}", broken.1);
        // Other routes still answer.
        assert_eq!(text("/latest/meta-data/instance-id").0, StatusCode::OK);
    }
}
