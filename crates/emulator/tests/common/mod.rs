//! What the emulator's integration tests share: plain AWS Query/REST calls signed with a test's
//! own scope (moto does not check signatures, so the header only names the scope, region and
//! service), XML picking, and waits with deadlines.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use flotilla_emulator::control::{Emulator, Scope, StateReason, StateTiming};

/// EC2's Query API version.
const EC2_VERSION: &str = "2016-11-15";

/// One test's view of the shared stack: its scope and a region.
pub struct Aws {
    pub emulator: Emulator,
    pub scope: Scope,
    pub region: String,
    http: reqwest::Client,
}

/// An answer: status, body and how long it took.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    /// The reply, after checking it is a success.
    #[track_caller]
    pub fn ok(self) -> Reply {
        assert!(
            (200..300).contains(&self.status),
            "expected success, got {} {}",
            self.status,
            self.body
        );
        self
    }

    pub fn value(&self, tag: &str) -> Option<String> {
        values(&self.body, tag).into_iter().next()
    }

    #[track_caller]
    pub fn expect_value(&self, tag: &str) -> String {
        self.value(tag).unwrap_or_else(|| panic!("no <{tag}> in {}", self.body))
    }

    pub fn values(&self, tag: &str) -> Vec<String> {
        values(&self.body, tag)
    }

    /// The EC2 error code, checking the `<Response><Errors><Error><Code>` shape (moto's own
    /// errors add an xmlns to `<Response>`).
    #[track_caller]
    pub fn ec2_error(&self) -> String {
        assert!(
            self.body.contains("<Response") && self.body.contains("><Errors><Error><Code>"),
            "not an EC2 error body: {}",
            self.body
        );
        self.expect_value("Code")
    }
}

/// The text of every `<tag>…</tag>` in `xml`, in order (tags must not nest in themselves).
pub fn values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    found
}

/// The contents of each outermost `<tag>…</tag>` in `xml`, where `tag` may nest in itself (EC2's
/// `<item>`s do).
pub fn outer(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let (mut depth, mut at) = (1, 0);
        while depth > 0 {
            let (next_open, next_close) = (body[at..].find(&open), body[at..].find(&close));
            match (next_open, next_close) {
                (Some(o), Some(c)) if o < c => {
                    depth += 1;
                    at += o + open.len();
                }
                (_, Some(c)) => {
                    depth -= 1;
                    at += c + if depth == 0 { 0 } else { close.len() };
                }
                (_, None) => return found,
            }
        }
        found.push(body[..at].to_owned());
        rest = &body[at + close.len()..];
    }
    found
}

impl Aws {
    /// A fresh scope in us-east-1.
    pub fn new(label: &str) -> Aws {
        Aws::in_region(label, "us-east-1")
    }

    pub fn in_region(label: &str, region: &str) -> Aws {
        let emulator = Emulator::require();
        let scope = emulator.fresh_scope(label);
        let http = reqwest::Client::builder().no_proxy().build().expect("a client");
        Aws { emulator, scope, region: region.to_owned(), http }
    }

    pub fn key(&self) -> &str {
        self.scope.access_key_id()
    }

    fn authorization(&self, service: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={}/20260101/{}/{service}/aws4_request, SignedHeaders=host, Signature=0",
            self.key(),
            self.region
        )
    }

    /// An EC2 Query call.
    pub async fn ec2(&self, action: &str, params: &[(&str, &str)]) -> Reply {
        self.query("ec2", EC2_VERSION, action, params).await
    }

    /// A Query-protocol call (EC2, IAM, STS, SNS, SQS).
    pub async fn query(
        &self,
        service: &str,
        version: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> Reply {
        let mut form = vec![("Action", action), ("Version", version)];
        form.extend_from_slice(params);
        let body: Vec<String> =
            form.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect();
        let request = self
            .http
            .post(self.emulator.endpoint())
            .header("Authorization", self.authorization(service))
            .header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
            .body(body.join("&"));
        send(request).await
    }

    /// A JSON 1.1 call (`X-Amz-Target: {target}`), as the SDK sends the Pricing API's.
    pub async fn json(&self, service: &str, target: &str, body: &serde_json::Value) -> Reply {
        let request = self
            .http
            .post(self.emulator.endpoint())
            .header("Authorization", self.authorization(service))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("X-Amz-Target", target)
            .body(body.to_string());
        send(request).await
    }

    /// A path-style S3 call.
    pub async fn s3(&self, method: reqwest::Method, path: &str, body: &[u8]) -> Reply {
        send(self.s3_request(method, path).body(body.to_vec())).await
    }

    /// A path-style S3 call made with an instance role's credentials: the scope's key and the
    /// session `token` the instance's IMDS served.
    pub async fn s3_as_role(&self, method: reqwest::Method, path: &str, token: &str) -> Reply {
        send(self.s3_request(method, path).header("X-Amz-Security-Token", token)).await
    }

    fn s3_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.emulator.endpoint());
        self.http
            .request(method, url)
            .header("Authorization", self.authorization("s3"))
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    }

    /// Instances of this scope are running as soon as launched and gone as soon as terminated.
    pub async fn instant_states(&self) {
        let instant = StateTiming { pending: Duration::ZERO, shutting_down: Duration::ZERO };
        self.scope.set_timing(instant).await.expect("timing set");
    }

    /// Launches `count` instances; `params` add to ImageId, MinCount and MaxCount.
    pub async fn launch(&self, count: u32, params: &[(&str, &str)]) -> Vec<String> {
        let count = count.to_string();
        let mut all = vec![
            ("ImageId", "ami-0flotillatest"),
            ("MinCount", count.as_str()),
            ("MaxCount", count.as_str()),
        ];
        all.extend_from_slice(params);
        let reply = self.ec2("RunInstances", &all).await.ok();
        reply.values("instanceId")
    }

    pub async fn terminate(&self, ids: &[String]) -> Reply {
        let keys: Vec<String> = (1..=ids.len()).map(|i| format!("InstanceId.{i}")).collect();
        let params: Vec<(&str, &str)> =
            keys.iter().map(String::as_str).zip(ids.iter().map(String::as_str)).collect();
        self.ec2("TerminateInstances", &params).await.ok()
    }

    /// `(state name, public ip)` of one instance, from DescribeInstances.
    pub async fn state(&self, id: &str) -> (String, Option<String>) {
        let reply = self.ec2("DescribeInstances", &[("InstanceId.1", id)]).await.ok();
        let state = values(&reply.body, "instanceState")
            .first()
            .and_then(|s| values(s, "name").into_iter().next())
            .unwrap_or_else(|| panic!("no state for {id} in {}", reply.body));
        (state, reply.value("ipAddress"))
    }

    /// The StateReason of one instance, from DescribeInstances, once it has one.
    pub async fn state_reason(&self, id: &str) -> Option<StateReason> {
        let reply = self.ec2("DescribeInstances", &[("InstanceId.1", id)]).await.ok();
        let reason = values(&reply.body, "stateReason").into_iter().next()?;
        let code = values(&reason, "code").into_iter().next().filter(|c| !c.is_empty())?;
        let message = values(&reason, "message").into_iter().next().unwrap_or_default();
        Some(StateReason { code, message })
    }

    /// Waits until DescribeInstances says `state`; returns the public IP then.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let (now, ip) = self.state(id).await;
            if now == state {
                return ip;
            }
            assert!(Instant::now() < deadline, "{id} still {now}, not {state}, after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A VPC and a subnet in `<region>a`.
    pub async fn network(&self, cidr_prefix: &str) -> (String, String) {
        let vpc_cidr = format!("{cidr_prefix}.0.0/16");
        let vpc =
            self.ec2("CreateVpc", &[("CidrBlock", &vpc_cidr)]).await.ok().expect_value("vpcId");
        let subnet_cidr = format!("{cidr_prefix}.1.0/24");
        let zone = format!("{}a", self.region);
        let subnet = self
            .ec2(
                "CreateSubnet",
                &[("VpcId", &vpc), ("CidrBlock", &subnet_cidr), ("AvailabilityZone", &zone)],
            )
            .await
            .ok()
            .expect_value("subnetId");
        (vpc, subnet)
    }

    pub async fn security_group(&self, vpc: &str, name: &str) -> String {
        let name = format!("{name}-{}", self.key());
        self.ec2(
            "CreateSecurityGroup",
            &[("GroupName", &name), ("GroupDescription", "test"), ("VpcId", vpc)],
        )
        .await
        .ok()
        .expect_value("groupId")
    }
}

/// `application/x-www-form-urlencoded`: everything but unreserved characters percent-encoded.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let started = Instant::now();
    let response = request.send().await.expect("the emulator answers");
    let status = response.status().as_u16();
    let body = response.text().await.expect("a body");
    Reply { status, body, elapsed: started.elapsed() }
}

/// Standard base64 with padding, as EC2 carries user data.
pub fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let bytes = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let bits = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Polls `check` until it gives a value, failing after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
