//! A small HTTP/1 server loop on hyper for the control APIs, and the response helpers they use.
//! (The instances' IMDS is served by `flotilla_agent::imds_server`.)

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) type Body = Full<Bytes>;

/// How long to wait after a failed accept before the next.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// The largest request body read (control requests are small JSON documents).
const MAX_BODY: usize = 1024 * 1024;

/// A request as the handlers see it: head and the whole body.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) method: hyper::Method,
    pub(crate) path: String,
    pub(crate) body: Bytes,
}

/// Serves `listener` until `shutdown` turns true, one task per connection.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Received) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, usually: the error repeats at once, so pause
                    // rather than spin, and say so (an IMDS that does not answer fails boots).
                    tracing::warn!("accepting a connection: {error}");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let handler = handler.clone();
        let mut connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(answer(&*handler, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = connection_shutdown.changed() => {}
            }
        });
    }
}

async fn answer<H, F>(handler: &H, request: Request<Incoming>) -> Response<Body>
where
    H: Fn(Received) -> F,
    F: Future<Output = Response<Body>>,
{
    let (head, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return json_error(StatusCode::BAD_REQUEST, &format!("reading the body: {error}"));
        }
    };
    let path = head.uri.path().to_owned();
    handler(Received { method: head.method, path, body }).await
}

/// A response with `body` and a content type.
pub(crate) fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

/// `{"error": message}`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    response(status, "application/json", body)
}
