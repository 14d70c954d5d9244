//! The booter's control API, JSON over HTTP on 127.0.0.1 (`FLOTILLA_EMULATOR_CONTROL`).
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | `{"ok": true, "moto": URL, "agent_seed": PATH or null}` |
//! | `GET /instances` | `{"instances": [BootedInstance]}` |
//! | `PUT /instances/{id}/spot-interruption` `{"action": "terminate"\|"stop"\|"hibernate", "time"?: RFC3339}` | `{}` |
//! | `PUT /instances/{id}/rebalance` `{"notice_time"?: RFC3339}` (or no body) | `{}` |
//! | `PUT /instances/{id}/scheduled-events` `{"events": [{"code", "description"?, "event_id"?, "not_before"?, "not_after"?, "state"?}]}` | `{}` |
//! | `DELETE` of each of those three | `{}`; IMDS answers 404 again |
//! | `GET /scopes/{scope}/agent-seed` | `{"enabled": bool}` |
//! | `PUT /scopes/{scope}/agent-seed` `{"enabled": bool}` | `{"enabled": bool}` |
//!
//! Errors are `{"error": message}`: 400 for a body it refuses (unknown fields included), 404 for
//! an unknown route or an instance the booter never booted.

use std::sync::Arc;
use std::time::SystemTime;

use hyper::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::booter::Booter;
use crate::http::{Body, Received, json, json_error, serve};
use crate::imds::Imds;
use crate::instance::{
    AgentSeedSwitch, RebalanceRecommendation, ScheduledEvents, SpotInterruption,
};

/// Serves the API until `shutdown` turns true.
pub(crate) async fn serve_api(
    listener: TcpListener,
    booter: Arc<Booter>,
    shutdown: watch::Receiver<bool>,
) {
    let handler = Arc::new(move |request: Received| {
        let booter = booter.clone();
        async move { route(&booter, &request) }
    });
    serve(listener, handler, shutdown).await;
}

fn route(booter: &Booter, request: &Received) -> Response<Body> {
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    let method = &request.method;
    match segments.as_slice() {
        ["health"] if method == Method::GET => json(
            StatusCode::OK,
            &json!({
                "ok": true,
                "moto": booter.config.moto_url,
                "agent_seed": booter.config.agent_seed,
            }),
        ),
        ["instances"] if method == Method::GET => {
            json(StatusCode::OK, &json!({ "instances": booter.booted() }))
        }
        ["instances", id, event] => {
            let Some(imds) = booter.imds(id) else {
                return json_error(StatusCode::NOT_FOUND, &format!("no booted instance {id}"));
            };
            trigger(imds.source(), method, event, &request.body)
        }
        ["scopes", scope, "agent-seed"] => {
            if method == Method::PUT {
                match parse::<AgentSeedSwitch>(&request.body) {
                    Ok(switch) => booter.set_agent_seed(scope, switch.enabled),
                    Err(error) => return error,
                }
            } else if method != Method::GET {
                return not_found(request);
            }
            json(StatusCode::OK, &AgentSeedSwitch { enabled: booter.agent_seed_enabled(scope) })
        }
        _ => not_found(request),
    }
}

fn trigger(imds: &Imds, method: &Method, event: &str, body: &[u8]) -> Response<Body> {
    let now = SystemTime::now();
    let result = match (method, event) {
        (&Method::PUT, "spot-interruption") => match parse::<SpotInterruption>(body) {
            Ok(trigger) => imds.trigger_spot(&trigger, now),
            Err(error) => return error,
        },
        (&Method::PUT, "rebalance") => {
            let trigger = if body.iter().all(u8::is_ascii_whitespace) {
                Ok(RebalanceRecommendation::default())
            } else {
                parse::<RebalanceRecommendation>(body)
            };
            match trigger {
                Ok(trigger) => imds.trigger_rebalance(&trigger, now),
                Err(error) => return error,
            }
        }
        (&Method::PUT, "scheduled-events") => match parse::<ScheduledEvents>(body) {
            Ok(events) => imds.schedule(&events.events, now),
            Err(error) => return error,
        },
        (&Method::DELETE, "spot-interruption") => {
            imds.clear_spot();
            Ok(())
        }
        (&Method::DELETE, "rebalance") => {
            imds.clear_rebalance();
            Ok(())
        }
        (&Method::DELETE, "scheduled-events") => {
            imds.clear_scheduled();
            Ok(())
        }
        _ => {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no route {method} …/{event}; use PUT or DELETE on spot-interruption, rebalance or scheduled-events"
                ),
            );
        }
    };
    match result {
        Ok(()) => json(StatusCode::OK, &json!({})),
        Err(error) => json_error(StatusCode::BAD_REQUEST, &error.to_string()),
    }
}

#[allow(clippy::result_large_err)]
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response<Body>> {
    serde_json::from_slice(body)
        .map_err(|error| json_error(StatusCode::BAD_REQUEST, &error.to_string()))
}

fn not_found(request: &Received) -> Response<Body> {
    json_error(
        StatusCode::NOT_FOUND,
        &format!(
            "no route {} {}; see the routes in crates/emulator/src/booter_api.rs",
            request.method, request.path
        ),
    )
}
