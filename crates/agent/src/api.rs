//! The mTLS API: HTTPS on `listen:api_port`, every request mapped by
//! [`flotilla_spec::api::Request::from_http`] and answered by [`crate::versions::Versions`].
//!
//! | request | answer |
//! |---|---|
//! | `Status` | 200, [`flotilla_spec::api::AgentStatus`] |
//! | `Logs` | 200, `text/plain`; with `follow`, streamed until the client disconnects |
//! | `ApplyManifest` | 202 `accepted` or 200 `unchanged`, [`flotilla_spec::api::ApplyResponse`] |
//! | `Restart`, `Stop` | 200, the `AgentStatus` after the binary restarted or stopped |
//! | `OpenTunnel` | 101, then raw bytes to the telemetry port (`tunnel`); 403 for another port |
//!
//! Errors answer an [`ApiError`] JSON body: 400 for a bad request, 404 for an unknown endpoint,
//! 409 when the request is not allowed now (a rollout under way, nothing installed), 413 for a
//! manifest over [`MAX_MANIFEST_BYTES`], 500 when the agent failed.
//!
//! Connections: a connection is pending until its TLS handshake is complete, with a budget of
//! its own ([`PENDING_HANDSHAKES`], policy in `admission`) and [`HANDSHAKE_TIMEOUT`]; then it
//! takes one of [`MAX_CONNECTIONS`] slots for authenticated connections, and has
//! [`HANDSHAKE_TIMEOUT`] for the head of each request. Refused connections are logged at most
//! once per 10 s (`refusal_log`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_spec::api::{ApiError, ApplyResponse, Request, RequestError};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admission::{PendingConnections, PendingPolicy};
use crate::binary_log::EVENT_PREFIX;
use crate::failpoint::{Failpoint, Failpoints};
use crate::refusal_log::{REFUSAL_LOG_INTERVAL, RefusalLog};
use crate::tunnel::Tunnels;
use crate::versions::{Refusal, Versions};

/// The largest manifest `ApplyManifest` accepts.
pub(crate) const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Authenticated connections served at once; more wait up to [`HANDSHAKE_TIMEOUT`] for a slot.
const MAX_CONNECTIONS: usize = 64;
/// Connections whose TLS handshake is under way (see `admission`).
const PENDING_HANDSHAKES: PendingPolicy = PendingPolicy { capacity: 64, per_peer: 16 };
/// Time for the TLS handshake, for a slot after it, and for the head of each request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// Serves the API on `listener` until `shutdown` turns true.
pub(crate) async fn serve_api(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    versions: Arc<Versions>,
    mut shutdown: watch::Receiver<bool>,
    failpoints: Failpoints,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pending = PendingConnections::new(PENDING_HANDSHAKES);
    let refusals = Arc::new(RefusalLog::new("API"));
    let listen = listener.local_addr().expect("a bound listener has a local address").ip();
    let tunnels = Arc::new(Tunnels::new(listen));
    let mut refusals_due = tokio::time::interval(REFUSAL_LOG_INTERVAL);
    loop {
        let next =
            crate::next_connection(&listener, &mut shutdown, "API", &refusals, &mut refusals_due);
        let Some((stream, peer)) = next.await else {
            return;
        };
        if failpoints.is_armed(Failpoint::ApiServerPanicsOnAccept) {
            panic!("failpoint {:?}", Failpoint::ApiServerPanicsOnAccept);
        }
        let (ticket, mut eviction) = pending.admit(peer.ip());
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        let refusals = refusals.clone();
        let versions = versions.clone();
        let tunnels = tunnels.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => {
                    handshake
                }
                () = eviction.wait() => {
                    refusals.refused(
                        peer,
                        "closed before its TLS handshake completed: newer connections needed the room",
                    );
                    return;
                }
                _ = crate::shutdown_signalled(&mut shutdown) => return,
            };
            drop(ticket);
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return refusals.refused(peer, error),
                Err(_) => {
                    let reason = format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                    return refusals.refused(peer, reason);
                }
            };
            let slot = tokio::time::timeout(HANDSHAKE_TIMEOUT, connections.acquire_owned());
            let _permit = match slot.await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return,
                Err(_) => {
                    let reason = format!(
                        "all {MAX_CONNECTIONS} connection slots stayed taken for {HANDSHAKE_TIMEOUT:?}"
                    );
                    return refusals.refused(peer, reason);
                }
            };
            let service_shutdown = shutdown.clone();
            let service = hyper::service::service_fn(move |request| {
                let versions = versions.clone();
                let tunnels = tunnels.clone();
                let shutdown = service_shutdown.clone();
                async move { Ok::<_, Infallible>(answer((versions, tunnels), request, shutdown).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                result = connection => if let Err(error) = result {
                    tracing::debug!("API connection from {peer}: {error}");
                },
                _ = crate::shutdown_signalled(&mut shutdown) => {}
            }
        });
    }
}

async fn answer(
    (versions, tunnels): (Arc<Versions>, Arc<Tunnels>),
    request: hyper::Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Response<ApiBody> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let (parts, incoming) = request.into_parts();
    let mut incoming = Some(incoming);
    let body = if method == "PUT" {
        let incoming = incoming.take().expect("the body is taken once");
        match Limited::new(incoming, MAX_MANIFEST_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
                );
            }
            Err(error) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {error}"),
                );
            }
        }
    } else {
        Bytes::new()
    };
    let request = match Request::from_http(&method, &path, query.as_deref(), &body) {
        Ok(request) => request,
        Err(error @ RequestError::NotFound { .. }) => {
            return error_response(StatusCode::NOT_FOUND, error.to_string());
        }
        Err(error @ RequestError::PortNotAllowed { .. }) => {
            return error_response(StatusCode::FORBIDDEN, error.to_string());
        }
        Err(error) => return error_response(StatusCode::BAD_REQUEST, error.to_string()),
    };
    versions.keepalive.touch();
    match request {
        Request::Status => json_response(StatusCode::OK, &versions.status()),
        Request::Keepalive => json_response(StatusCode::OK, &versions.keepalive.report()),
        Request::Logs { lines, follow } => logs(&versions, lines, follow, shutdown).await,
        Request::WaitRollout { version, timeout_ms } => json_response(
            StatusCode::OK,
            &versions.wait_rollout(&version, std::time::Duration::from_millis(timeout_ms)).await,
        ),
        Request::ApplyManifest(manifest) => match versions.apply(*manifest) {
            Ok(answer @ ApplyResponse::Accepted { .. }) => {
                json_response(StatusCode::ACCEPTED, &answer)
            }
            Ok(answer @ ApplyResponse::Unchanged { .. }) => json_response(StatusCode::OK, &answer),
            Err(refusal) => refusal_response(refusal),
        },
        Request::Restart => match versions.restart().await {
            Ok(status) => json_response(StatusCode::OK, &status),
            Err(refusal) => refusal_response(refusal),
        },
        Request::Stop => match versions.stop().await {
            Ok(status) => json_response(StatusCode::OK, &status),
            Err(refusal) => refusal_response(refusal),
        },
        Request::Drain => match versions.drain().await {
            Ok(status) => json_response(StatusCode::OK, &status),
            Err(refusal) => refusal_response(refusal),
        },
        Request::Profile { duration_ms, frequency } => {
            let duration = std::time::Duration::from_millis(duration_ms);
            match versions.profile(duration, frequency).await {
                Ok(text) => Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(Full::new(Bytes::from(text)).boxed_unsync())
                    .expect("a response with static headers builds"),
                Err(refusal) => refusal_response(refusal),
            }
        }
        Request::OpenTunnel { port } => {
            let incoming = incoming.take().expect("a POST keeps its body");
            tunnels.open(hyper::Request::from_parts(parts, incoming), port, shutdown).await
        }
    }
}

/// The last `lines` lines; with `follow`, then every new line until the client disconnects or
/// the agent stops.
async fn logs(
    versions: &Versions,
    lines: usize,
    follow: bool,
    shutdown: watch::Receiver<bool>,
) -> Response<ApiBody> {
    let (snapshot, receiver) = versions.log.snapshot(follow);
    let path = versions.log.path().display().to_string();
    let tail = match tokio::task::spawn_blocking(move || snapshot.last_lines(lines)).await {
        Ok(Ok(tail)) => tail,
        Ok(Err(error)) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not read {path}: {error}"),
            );
        }
        Err(error) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {path} stopped: {error}"),
            );
        }
    };
    let mut text = String::new();
    for line in tail {
        text.push_str(&line);
        text.push('\n');
    }
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; charset=utf-8");
    let Some(receiver) = receiver else {
        let body = Full::new(Bytes::from(text)).boxed_unsync();
        return builder.body(body).expect("a response with static headers builds");
    };
    let first = (!text.is_empty()).then(|| Bytes::from(text));
    let stream = futures_util::stream::unfold(
        (first, receiver, shutdown),
        |(first, mut receiver, mut shutdown)| async move {
            if let Some(first) = first {
                return Some((Ok(Frame::data(first)), (None, receiver, shutdown)));
            }
            let chunk = tokio::select! {
                line = receiver.recv() => match line {
                    Ok(line) => format!("{line}\n"),
                    Err(RecvError::Lagged(skipped)) => format!(
                        "{EVENT_PREFIX}{skipped} lines skipped here: this client reads more slowly than the binary writes\n"
                    ),
                    Err(RecvError::Closed) => return None,
                },
                _ = crate::shutdown_signalled(&mut shutdown) => return None,
            };
            Some((Ok(Frame::data(Bytes::from(chunk))), (None, receiver, shutdown)))
        },
    );
    builder
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("a response with static headers builds")
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<ApiBody> {
    let json = serde_json::to_vec(value).expect("API answers serialize to JSON");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json)).boxed_unsync())
        .expect("a response with static headers builds")
}

fn error_response(status: StatusCode, error: String) -> Response<ApiBody> {
    json_response(status, &ApiError { error })
}

fn refusal_response(refusal: Refusal) -> Response<ApiBody> {
    match refusal {
        Refusal::Conflict(message) => error_response(StatusCode::CONFLICT, message),
        Refusal::BadRequest(message) => error_response(StatusCode::BAD_REQUEST, message),
        Refusal::Internal(message) => error_response(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}
