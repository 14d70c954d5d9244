//! The HTTP/1 server: the node's four endpoints.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 `ok <name> greeting=<greeting>` |
//! | `GET /metrics` | 200, the metrics in the OpenMetrics text format ([`crate::metrics`]) |
//! | `GET /peers` | 200, JSON (the peers hosts.yaml lists now, reloaded on SIGHUP): `{"name", "greeting", "counter", "peers": [{"name", "ip", "counter", "last_seen_ms_ago"}]}` |
//! | `POST /gossip` | a peer's view ([`crate::view`] wire format, sender in `fleet-app-from`); 200 with this node's merged view |
//!
//! Anything else is 404, or 405 for a known path with the wrong method.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::app::App;
use crate::log::log;
use crate::view::{View, decode};

/// The header in which a gossip sender names itself.
pub const FROM_HEADER: &str = "fleet-app-from";
/// Largest gossip body read, in either direction.
pub const MAX_GOSSIP_BYTES: usize = 1 << 20;
/// A client that has not sent its request headers after this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Usually out of file descriptors: wait for some to be released.
                log!("{} cannot accept a connection: {error}", app.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(respond(request, &app).await) }
            });
            // An error here is a client going away mid-request: nothing to do about it.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(request: Request<Incoming>, app: &App) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => {
            text(StatusCode::OK, format!("ok {} greeting={}\n", app.name, app.greeting))
        }
        (&Method::GET, "/metrics") => {
            let metrics = app.metrics.render(&app.view(), Instant::now(), app.seen_window());
            with_type(Response::new(Full::from(metrics)), crate::metrics::CONTENT_TYPE)
        }
        (&Method::GET, "/peers") => {
            let json = peers_json(app, &app.view(), Instant::now());
            with_type(Response::new(Full::from(json)), "application/json")
        }
        (&Method::POST, "/gossip") => receive_gossip(request, app).await,
        (_, "/health" | "/metrics" | "/peers") => method_not_allowed("GET"),
        (_, "/gossip") => method_not_allowed("POST"),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!("no {path} here: try GET /health, /metrics, /peers or POST /gossip\n"),
        ),
    }
}

async fn receive_gossip(request: Request<Incoming>, app: &App) -> Response<Full<Bytes>> {
    let from = request.headers().get(FROM_HEADER).and_then(|value| value.to_str().ok());
    let Some(from) = from.map(str::to_owned) else {
        return text(StatusCode::BAD_REQUEST, format!("missing {FROM_HEADER} header\n"));
    };
    let body = match Limited::new(request.into_body(), MAX_GOSSIP_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {error}\n")),
    };
    let pairs = match std::str::from_utf8(&body)
        .map_err(|_| "not UTF-8".to_owned())
        .and_then(decode)
    {
        Ok(pairs) => pairs,
        Err(error) => return text(StatusCode::BAD_REQUEST, format!("bad gossip body: {error}\n")),
    };
    let mut view = app.view();
    let now = Instant::now();
    if !view.heard_from(&from, now) {
        return text(
            StatusCode::FORBIDDEN,
            format!("{from:?} is not a peer of {} in hosts.yaml\n", app.name),
        );
    }
    view.merge(&pairs, now);
    text(StatusCode::OK, view.encode())
}

/// The `/peers` document: this node, then every peer in hosts.yaml order.
fn peers_json(app: &App, view: &View, now: Instant) -> String {
    let mut json = format!(
        "{{\"name\":{},\"greeting\":{},\"counter\":{},\"peers\":[",
        json_string(&app.name),
        json_string(&app.greeting),
        view.own_counter(),
    );
    for (index, peer) in view.peers(now).enumerate() {
        let last_seen = match peer.last_heard_ago {
            Some(ago) => ago.as_millis().to_string(),
            None => "null".to_owned(),
        };
        let ip = json_string(&peer.ip.to_string());
        let separator = if index == 0 { "" } else { "," };
        write!(
            json,
            "{separator}{{\"name\":{},\"ip\":{ip},\"counter\":{},\"last_seen_ms_ago\":{last_seen}}}",
            json_string(peer.name),
            peer.counter,
        )
        .expect("writing to a String cannot fail");
    }
    json.push_str("]}\n");
    json
}

/// `value` as a JSON string literal.
fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for character in value.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            control if control.is_control() => {
                write!(out, "\\u{:04x}", u32::from(control))
                    .expect("writing to a String cannot fail");
            }
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = with_type(Response::new(Full::from(body)), "text/plain; charset=utf-8");
    *response.status_mut() = status;
    response
}

fn method_not_allowed(allowed: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allowed}\n"));
    response.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
    response
}

fn with_type(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("plain"), r#""plain""#);
        assert_eq!(json_string("say \"hi\" \\ \n \u{1}"), r#""say \"hi\" \\ \n \u0001""#);
        assert_eq!(json_string("\u{e7}a"), "\"\u{e7}a\"");
    }
}
