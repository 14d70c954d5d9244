//! The user data every machine boots with: a short POSIX shell script, the same for every
//! instance of a deployment and architecture, that carries no secret.
//!
//! It asks IMDS (v2) for the instance id and, with the instance role's temporary credentials,
//! downloads the agent from S3 and checks its SHA-256, writes the agent's bootstrap config (whose
//! identity URL names this instance, and whose IMDS endpoint is the one the script asked, so the
//! agent polls it for spot interruptions, rebalance recommendations and scheduled events) and
//! starts the agent under systemd. The credentials reach curl on stdin, never on a command line.
//!
//! Knobs for the emulator, unset on a real machine (cloud-init runs the script as root with a
//! bare environment): `FLOTILLA_ROOT` (prefix of every path written), `FLOTILLA_IMDS_ENDPOINT`,
//! `FLOTILLA_S3_ENDPOINT` (path-style S3 base URL), `FLOTILLA_LISTEN` (the agent's address),
//! `FLOTILLA_SERVICE=foreground` (exec the agent instead of systemd) and `FLOTILLA_AGENT_SEED`
//! (a local copy of the agent used when its digest matches, like an image with the agent baked in;
//! `FLOTILLA_AGENT_SEED_SHA256` gives its digest when known, so it need not be hashed again).

use flotilla_spec::bootstrap::{DEFAULT_API_PORT, DEFAULT_METRICS_PORT};

/// What the script needs to know.
#[derive(Clone, Debug)]
pub struct UserData<'a> {
    pub tag: &'a str,
    pub bucket: &'a str,
    pub bucket_region: &'a str,
    /// SHA-256 of the agent executable for this architecture; it lives at `agents/<sha256>`.
    pub agent_sha256: &'a str,
    /// The IAM role id: identities are at `deployments/<tag>/identities/<role id>:<instance id>.json`.
    pub role_id: &'a str,
}

/// Where a machine's identity bundle lives.
pub fn identity_key(tag: &str, role_id: &str, instance_id: &str) -> String {
    format!("deployments/{tag}/identities/{role_id}:{instance_id}.json")
}

/// The script. Values are validated names, digests and ids, quoted for the shell anyway.
pub fn render(data: &UserData<'_>) -> String {
    let quote = |value: &str| format!("'{}'", value.replace('\'', "'\\''"));
    let identity_prefix = format!("deployments/{}/identities/{}:", data.tag, data.role_id);
    format!(
        r#"#!/bin/sh
# flotilla bootstrap, deployment {tag_comment}. No secret is in this script: the machine reads
# its agent and its own identity from S3 with its instance role.
set -eu
umask 077

root="${{FLOTILLA_ROOT:-}}"
imds="${{FLOTILLA_IMDS_ENDPOINT:-http://169.254.169.254}}"
s3="${{FLOTILLA_S3_ENDPOINT:-https://s3.{region_plain}.amazonaws.com}}"
listen="${{FLOTILLA_LISTEN:-0.0.0.0}}"
service="${{FLOTILLA_SERVICE:-systemd}}"

tag={tag}
bucket={bucket}
region={region}
agent_sha256={sha}
identity_prefix={identity_prefix}

# Retries a command up to 30 times, 2 s apart (IMDS or S3 may not answer at once after boot).
retry() {{
  attempt=0
  until "$@"; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge 30 ]; then
      echo "flotilla bootstrap: giving up on: $*" >&2
      return 1
    fi
    sleep 2
  done
}}

new_token() {{
  token=$(curl -sf -X PUT "$imds/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 900')
}}
metadata() {{
  curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/$1"
}}
read_instance_id() {{
  instance_id=$(metadata instance-id)
}}

matches() {{
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d ' ' -f 1)" = "$agent_sha256" ]
}}

download_agent() {{
  role=$(metadata iam/security-credentials/) || return 1
  credentials=$(metadata "iam/security-credentials/$role") || return 1
  field() {{
    printf '%s\n' "$credentials" | sed -n "s/.*\"$1\" *: *\"\([^\"]*\)\".*/\1/p" | head -n 1
  }}
  # The temporary keys reach curl on stdin, never on its command line.
  printf 'user = "%s:%s"\nheader = "x-amz-security-token: %s"\n' \
    "$(field AccessKeyId)" "$(field SecretAccessKey)" "$(field Token)" |
    curl -sf --config - --aws-sigv4 "aws:amz:$region:s3" \
      -o "$agent.new" "$s3/$bucket/agents/$agent_sha256"
}}

retry new_token
retry read_instance_id

agent="$root/usr/local/bin/flotilla"
mkdir -p "$root/usr/local/bin" "$root/etc/flotilla" "$root/var/lib/flotilla"
if ! matches "$agent"; then
  seed="${{FLOTILLA_AGENT_SEED:-}}"
  if [ -n "$seed" ] && {{ [ "${{FLOTILLA_AGENT_SEED_SHA256:-}}" = "$agent_sha256" ] || matches "$seed"; }}; then
    # Checked just above: link it rather than copy and hash it again.
    ln -f "$seed" "$agent.new" 2>/dev/null || cp "$seed" "$agent.new"
  else
    retry download_agent
    if ! matches "$agent.new"; then
      echo "flotilla bootstrap: the agent's SHA-256 is not $agent_sha256" >&2
      exit 1
    fi
  fi
  chmod 0755 "$agent.new"
  mv "$agent.new" "$agent"
fi

# The spec's boot additions: files land under the machine's root; kernel settings, packages and
# file owners apply on a real machine, not under the emulator (which sets FLOTILLA_ROOT).
# A keepalive that runs out powers the machine off (it is launched to terminate on shutdown);
# under the emulator the agent only exits.
if [ -n "$root" ]; then
  boot='{{"root": "'"$root"'/", "system_settings": false, "runs_on": "the emulator"}}'
  power_off='[]'
else
  boot='{{"root": "/", "system_settings": true, "runs_on": "this machine"}}'
  power_off='["/usr/bin/systemctl", "poweroff"]'
fi

cat > "$root/etc/flotilla/bootstrap.json" <<EOF
{{"tag": "$tag", "dir": "$root/var/lib/flotilla/agent", "listen": "$listen", "api_port": {api_port}, "metrics_port": {metrics_port}, "identity": "s3://$bucket/$identity_prefix$instance_id.json", "identity_timeout": "30m", "boot": $boot, "imds": {{"endpoint": "$imds"}}, "power_off": $power_off}}
EOF

{{
  echo "AWS_REGION=$region"
  if [ -n "${{FLOTILLA_S3_ENDPOINT:-}}" ]; then echo "AWS_ENDPOINT_URL=$s3"; fi
  if [ -n "${{FLOTILLA_IMDS_ENDPOINT:-}}" ]; then echo "AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds"; fi
}} > "$root/etc/flotilla/agent.env"

if [ "$service" = foreground ]; then
  set -a
  # shellcheck source=/dev/null
  . "$root/etc/flotilla/agent.env"
  set +a
  exec "$agent" agent --bootstrap "$root/etc/flotilla/bootstrap.json"
fi

cat > "$root/etc/systemd/system/flotilla-agent.service" <<EOF
[Unit]
Description=flotilla agent (deployment $tag)
Wants=network-online.target
After=network-online.target

[Service]
EnvironmentFile=/etc/flotilla/agent.env
ExecStart=/usr/local/bin/flotilla agent --bootstrap /etc/flotilla/bootstrap.json
Restart=always
RestartSec=2
TimeoutStopSec=30
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now flotilla-agent.service
"#,
        tag_comment = data.tag,
        region_plain = data.bucket_region,
        tag = quote(data.tag),
        bucket = quote(data.bucket),
        region = quote(data.bucket_region),
        sha = quote(data.agent_sha256),
        identity_prefix = quote(&identity_prefix),
        api_port = DEFAULT_API_PORT,
        metrics_port = DEFAULT_METRICS_PORT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        render(&UserData {
            tag: "demo_1",
            bucket: "flotilla-0123456789abcdef",
            bucket_region: "us-east-1",
            agent_sha256: &"a".repeat(64),
            role_id: "AROAEXAMPLE",
        })
    }

    #[test]
    fn the_script_names_only_this_instances_identity() {
        let script = sample();
        assert!(script.contains("identity_prefix='deployments/demo_1/identities/AROAEXAMPLE:'"));
        assert!(
            script.contains("\"identity\": \"s3://$bucket/$identity_prefix$instance_id.json\"")
        );
        assert!(script.len() < 16 * 1024, "user data is limited to 16 KiB");
        // The agent polls the IMDS the script itself asked: EC2's, or the emulator's.
        assert!(script.contains("\nimds=\"${FLOTILLA_IMDS_ENDPOINT:-http://169.254.169.254}\"\n"));
        assert!(
            script.contains(
                ", \"imds\": {\"endpoint\": \"$imds\"}, \"power_off\": $power_off}\nEOF\n"
            ),
            "{script}"
        );
        // Whether it carries a secret is checked on the provider's own user data
        // (`the_user_data_carries_no_secret_the_provider_holds` in lib.rs).
    }

    /// The bootstrap config the script writes, with its shell variables given a real machine's
    /// values, is one the agent reads, and names EC2's IMDS.
    #[test]
    fn the_bootstrap_config_the_script_writes_parses_and_names_imds() {
        let script = sample();
        let start = script.find("bootstrap.json\" <<EOF\n").expect("the bootstrap heredoc")
            + "bootstrap.json\" <<EOF\n".len();
        let end = start + script[start..].find("\nEOF\n").expect("its end");
        let mut text = script[start..end].to_owned();
        for (variable, value) in [
            ("$tag", "demo_1"),
            ("$root", ""),
            ("$listen", "10.0.0.5"),
            ("$bucket", "flotilla-0123456789abcdef"),
            ("$identity_prefix", "deployments/demo_1/identities/AROAEXAMPLE:"),
            ("$instance_id", "i-0123"),
            ("$boot", r#"{"root": "/", "system_settings": true, "runs_on": "this machine"}"#),
            ("$imds", "http://169.254.169.254"),
            ("$power_off", r#"["/usr/bin/systemctl", "poweroff"]"#),
        ] {
            text = text.replace(variable, value);
        }
        assert!(!text.contains('$'), "a variable is left: {text}");
        let bootstrap = flotilla_spec::bootstrap::AgentBootstrap::parse(&text, "bootstrap.json")
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        let imds = bootstrap.imds.expect("an IMDS target");
        assert_eq!(imds.endpoint, "http://169.254.169.254");
        assert_eq!(imds.rehearsal_notices, None);
        assert_eq!(bootstrap.power_off, ["/usr/bin/systemctl", "poweroff"]);
    }

    /// Tags the deployer accepts that a shell would take for options, or split: every value is
    /// one quoted word wherever the script uses it.
    #[test]
    fn hostile_tags_stay_quoted_words() {
        for tag in ["-rf", "demo-", "--help", "_", "a b"] {
            let script = render(&UserData {
                tag,
                bucket: "flotilla-0123456789abcdef",
                bucket_region: "us-east-1",
                agent_sha256: &"a".repeat(64),
                role_id: "AROAEXAMPLE",
            });
            assert!(script.contains(&format!("\ntag='{tag}'\n")), "{tag}");
            assert!(
                script.contains(&format!(
                    "\nidentity_prefix='deployments/{tag}/identities/AROAEXAMPLE:'\n"
                )),
                "{tag}"
            );
            shellcheck(&script);
        }
    }

    /// shellcheck is a real peer here: the test fails, naming how to install it, if it is absent.
    #[test]
    fn shellcheck_accepts_the_script() {
        shellcheck(&sample());
    }

    fn shellcheck(script: &str) {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("user-data.sh");
        fs_err::write(&path, script).unwrap();
        let output = std::process::Command::new("shellcheck")
            .args(["--shell=sh", "--severity=style"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("shellcheck is not installed ({e}): apt-get install shellcheck (scripts/test does)"));
        assert!(
            output.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}
