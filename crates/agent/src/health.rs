//! Health checks of the binary, and the rule that turns their results into a state.
//!
//! - `http`: `GET http://<address>:<port><path>` answers 2xx (a plain HTTP/1.0 request over a
//!   TCP stream: no HTTP client library in the agent for one status line).
//! - `tcp`: a connection to `<address>:<port>` succeeds.
//! - `none`: healthy once the binary has stayed up [`NONE_HEALTHY_AFTER`].
//!
//! `<address>` is the agent's listen address when it is a specific one, else the machine's
//! private address (see `BinaryEnvironment::health_address`).
//!
//! A check runs every [`CHECK_INTERVAL`] and gives up after [`CHECK_TIMEOUT`]. `starting`
//! becomes `healthy` at the first success; `healthy` becomes `unhealthy` after
//! [`UNHEALTHY_AFTER`] failures in a row and `healthy` again at the next success.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use flotilla_spec::HealthCheck;
use flotilla_spec::api::BinaryState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time between two checks.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The first check, this long after the binary started.
pub(crate) const FIRST_CHECK_AFTER: Duration = Duration::from_millis(250);
/// A check that takes longer fails.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// With `none`, the binary is healthy once it has run this long.
pub(crate) const NONE_HEALTHY_AFTER: Duration = Duration::from_secs(2);
/// Failures in a row that make a healthy binary unhealthy.
pub(crate) const UNHEALTHY_AFTER: u32 = 3;

/// The state after a check: `consecutive_failures` counts this check when it failed.
pub(crate) fn state_after_check(
    current: BinaryState,
    succeeded: bool,
    consecutive_failures: u32,
) -> BinaryState {
    match (current, succeeded) {
        (BinaryState::Starting | BinaryState::Unhealthy | BinaryState::Healthy, true) => {
            BinaryState::Healthy
        }
        (BinaryState::Healthy, false) if consecutive_failures >= UNHEALTHY_AFTER => {
            BinaryState::Unhealthy
        }
        (state, _) => state,
    }
}

/// Runs one `http` or `tcp` check against `ip`; `none` has nothing to probe and succeeds.
pub(crate) async fn probe(check: HealthCheck, ip: IpAddr) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe_without_timeout(&check, ip)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} did not answer within {}",
            describe(&check, ip),
            humantime::format_duration(CHECK_TIMEOUT)
        )),
    }
}

fn describe(check: &HealthCheck, ip: IpAddr) -> String {
    match check {
        HealthCheck::Http { port, path } => format!("http://{}{path}", SocketAddr::new(ip, *port)),
        HealthCheck::Tcp { port } => format!("tcp {}", SocketAddr::new(ip, *port)),
        HealthCheck::None => "no check".to_owned(),
    }
}

async fn probe_without_timeout(check: &HealthCheck, ip: IpAddr) -> Result<(), String> {
    let what = describe(check, ip);
    match check {
        HealthCheck::None => Ok(()),
        HealthCheck::Tcp { port } => TcpStream::connect(SocketAddr::new(ip, *port))
            .await
            .map(drop)
            .map_err(|e| format!("{what}: {e}")),
        HealthCheck::Http { port, path } => {
            let address = SocketAddr::new(ip, *port);
            let mut stream =
                TcpStream::connect(address).await.map_err(|e| format!("{what}: {e}"))?;
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: flotilla-agent\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.map_err(|e| format!("{what}: {e}"))?;
            // The status line is all the check needs: "HTTP/1.x NNN reason".
            let mut head = Vec::with_capacity(256);
            let mut buffer = [0u8; 256];
            while !head.contains(&b'\n') && head.len() < 1024 {
                let read = stream.read(&mut buffer).await.map_err(|e| format!("{what}: {e}"))?;
                if read == 0 {
                    break;
                }
                head.extend_from_slice(&buffer[..read]);
            }
            let status_line = String::from_utf8_lossy(&head);
            let status_line = status_line.lines().next().unwrap_or("").trim();
            let status = status_line
                .strip_prefix("HTTP/")
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|code| code.parse::<u16>().ok())
                .ok_or_else(|| format!("{what}: not an HTTP answer: {status_line:?}"))?;
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!("{what} answered {status_line}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BinaryState::*;

    #[test]
    fn states_follow_the_checks() {
        assert_eq!(state_after_check(Starting, false, 5), Starting);
        assert_eq!(state_after_check(Starting, true, 0), Healthy);
        assert_eq!(state_after_check(Healthy, false, 1), Healthy);
        assert_eq!(state_after_check(Healthy, false, 2), Healthy);
        assert_eq!(state_after_check(Healthy, false, 3), Unhealthy);
        assert_eq!(state_after_check(Unhealthy, false, 4), Unhealthy);
        assert_eq!(state_after_check(Unhealthy, true, 0), Healthy);
        assert_eq!(state_after_check(Stopped, true, 0), Stopped);
    }

    #[tokio::test]
    async fn http_checks_read_the_status_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for answer in ["HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.1 503 Service Unavailable\r\n\r\n"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 512];
                let read = stream.read(&mut request).await.unwrap();
                assert!(request[..read].starts_with(b"GET /ready HTTP/1.0\r\n"));
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let check = HealthCheck::Http { port, path: "/ready".to_owned() };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(probe(check.clone(), ip).await, Ok(()));
        let error = probe(check.clone(), ip).await.unwrap_err();
        assert!(error.ends_with("answered HTTP/1.1 503 Service Unavailable"), "{error}");
        server.await.unwrap();
        let error = probe(check, ip).await.unwrap_err();
        assert!(error.contains("refused"), "{error}");
    }
}
