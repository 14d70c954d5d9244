//! A rehearsal IMDS, served by the agent itself under the local provider (bootstrap
//! `imds.rehearsal_notices`), so that `flotilla notice` can rehearse a machine's interruption
//! hooks. The agent polls it over HTTP exactly as it polls EC2's, so the rehearsal runs the
//! code a cloud machine runs.
//!
//! It answers like EC2's IMDSv2 (and the emulator's `imds.rs`, whose rules it keeps): `PUT
//! /latest/api/token` with a TTL of 1..=21600 s, then GETs with the token (401 without a valid
//! one). The metadata the lifecycle's macros read (`instance-id` is `local-<name>`,
//! `instance-type` `local`, the region, a zone `<region>a`, `public-ipv4`), and the three event
//! routes, read on every request from the notices file (`flotilla_spec::imds::RehearsalNotices`,
//! written atomically by `flotilla notice`): absent notices are 404. Hosted in the agent
//! rather than a process of its own, so a machine stays one process to start, adopt and stop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_spec::identity::IdentityBundle;
use flotilla_spec::imds::RehearsalNotices;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::AgentError;

const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL_SECONDS: u64 = 21_600;
/// Tokens kept at most; the oldest go first.
const MAX_TOKENS: usize = 64;

struct Rehearsal {
    notices: PathBuf,
    metadata: Vec<(&'static str, String)>,
    tokens: Mutex<HashMap<String, Instant>>,
}

/// Binds `endpoint` and returns the server to spawn (it ends at `shutdown`).
pub(crate) async fn serve(
    endpoint: &str,
    notices: PathBuf,
    identity: &IdentityBundle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<impl Future<Output = ()> + Send + 'static, AgentError> {
    let address: SocketAddr =
        endpoint.trim_start_matches("http://").parse().map_err(|_| AgentError::Listen {
            what: "rehearsal IMDS",
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            source: std::io::Error::other(format!("{endpoint} is not http://IP:PORT")),
        })?;
    let listener = TcpListener::bind(address).await.map_err(|source| AgentError::Listen {
        what: "rehearsal IMDS",
        address,
        source,
    })?;
    let rehearsal = Arc::new(Rehearsal {
        notices,
        metadata: vec![
            ("instance-id", format!("local-{}", identity.name)),
            ("instance-type", "local".to_owned()),
            ("placement/region", identity.region.clone()),
            ("placement/availability-zone", format!("{}a", identity.region)),
            ("public-ipv4", identity.public_ip.to_string()),
            ("local-ipv4", identity.private_ip.to_string()),
        ],
        tokens: Mutex::new(HashMap::new()),
    });
    Ok(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = crate::shutdown_signalled(&mut shutdown) => return,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let rehearsal = rehearsal.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let answer =
                        rehearsal.answer(request.method(), request.uri().path(), request.headers());
                    async move { Ok::<_, Infallible>(answer) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            });
        }
    })
}

impl Rehearsal {
    fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &hyper::HeaderMap,
    ) -> Response<Full<Bytes>> {
        let now = Instant::now();
        if path == "/latest/api/token" {
            if method != Method::PUT {
                return text(StatusCode::METHOD_NOT_ALLOWED, String::new());
            }
            let ttl = headers
                .get(TTL_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl));
            let Some(ttl) = ttl else {
                return text(StatusCode::BAD_REQUEST, String::new());
            };
            let token = hex::encode(rand::random::<[u8; 16]>());
            let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
            tokens.retain(|_, expiry| *expiry > now);
            if tokens.len() >= MAX_TOKENS
                && let Some(oldest) = tokens.iter().min_by_key(|(_, e)| **e).map(|(t, _)| t.clone())
            {
                tokens.remove(&oldest);
            }
            tokens.insert(token.clone(), now + Duration::from_secs(ttl));
            return text(StatusCode::OK, token);
        }
        let valid = headers
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|token| {
                self.tokens.lock().unwrap_or_else(PoisonError::into_inner).get(token).copied()
            })
            .is_some_and(|expiry| expiry > now);
        if !valid {
            return text(StatusCode::UNAUTHORIZED, String::new());
        }
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, String::new());
        }
        let Some(key) = path.strip_prefix("/latest/meta-data/") else {
            return text(StatusCode::NOT_FOUND, String::new());
        };
        if let Some((_, value)) = self.metadata.iter().find(|(name, _)| *name == key) {
            return text(StatusCode::OK, value.clone());
        }
        let notices = match RehearsalNotices::read(&self.notices) {
            Ok(notices) => notices,
            Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, error),
        };
        let body = match key {
            "spot/instance-action" => notices.spot.map(|n| serde_json::to_string(&n)),
            "events/recommendations/rebalance" => {
                notices.rebalance.map(|n| serde_json::to_string(&n))
            }
            "events/maintenance/scheduled" if !notices.scheduled.is_empty() => {
                Some(serde_json::to_string(&notices.scheduled))
            }
            _ => None,
        };
        match body {
            Some(body) => text(StatusCode::OK, body.expect("notices serialize to JSON")),
            None => text(StatusCode::NOT_FOUND, String::new()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
