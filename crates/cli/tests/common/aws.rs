//! Test support for the AWS path: the shared emulator stack (started once per test run by
//! `scripts/test`), a scope (access key id) per test, and resource counts by direct queries.

use std::path::PathBuf;
use std::process::{Command, Output};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::Filter;

use super::flotilla_bin;

/// The emulator's environment, or a loud failure saying how to start it.
pub fn emulator_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for name in ["AWS_ENDPOINT_URL", "FLOTILLA_EMULATOR_CONTROL"] {
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => env.push((name.to_owned(), value)),
            _ => panic!(
                "{name} is not set: the AWS emulator is not running. Run the tests with scripts/test, \
                 which starts it once for the whole run, or start it yourself: \
                 target/debug/flotilla-emulator up --env-file /tmp/emulator.env --agent-seed target/debug/flotilla & \
                 then `. /tmp/emulator.env` before cargo nextest run"
            ),
        }
    }
    env
}

/// A fleet on the emulator with its own state directory and its own scope.
pub struct AwsFleet {
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
    pub tag: String,
    /// The access key id this test uses: faults and counts are per scope.
    pub scope: String,
}

impl AwsFleet {
    pub fn new(tag: &str) -> AwsFleet {
        emulator_env();
        let fleet = AwsFleet {
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            tag: tag.to_owned(),
            scope: format!("AKIDFLOTILLA{}", tag.to_ascii_uppercase().replace(['-', '_'], "")),
        };
        fs_err::write(fleet.work.path().join("dashboard.json"), "{}").unwrap();
        fleet
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        fs_err::write(&path, text).unwrap();
        path
    }

    /// A `flotilla` command against the emulator, in this test's scope.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(flotilla_bin());
        command
            .args(args)
            .current_dir(self.work.path())
            .env("FLOTILLA_HOME", self.home.path())
            .env("AWS_ACCESS_KEY_ID", &self.scope)
            .env("AWS_SECRET_ACCESS_KEY", "emulated")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // Instances of arm64 types run this same build: the emulator runs them here.
            .env("FLOTILLA_AGENT_ARM64", flotilla_bin())
            .env("FLOTILLA_AGENT_X86_64", flotilla_bin())
            .env_remove("RUST_LOG")
            .env_remove("AWS_PROFILE");
        for (name, value) in emulator_env() {
            command.env(name, value);
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("flotilla runs")
    }

    pub fn run_ok(&self, args: &[&str]) -> Output {
        super::succeeded(args, self.run(args))
    }

    /// `create --config spec --ip 127.0.0.1 --output json`, which must succeed: its rows.
    pub fn create_rows(&self, spec: &std::path::Path) -> Vec<serde_json::Value> {
        let spec = spec.display().to_string();
        let args = ["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"];
        serde_json::from_slice(&self.run_ok(&args).stdout).expect("create's JSON rows")
    }

    /// `--tag=<tag>`: one argument, so that a tag starting with `-` is not read as an option.
    pub fn tag_arg(&self) -> String {
        format!("--tag={}", self.tag)
    }

    pub fn status(&self) -> Vec<serde_json::Value> {
        let output = self.run(&["status", &self.tag_arg(), "--output", "json"]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("status JSON: {e}\nstderr: {}", String::from_utf8_lossy(&output.stderr))
        })
    }

    /// SDK clients in this test's scope.
    pub async fn sdk(&self) -> aws_types::SdkConfig {
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                &self.scope,
                "emulated",
                None,
                None,
                "test",
            ))
            .load()
            .await
    }

    /// An EC2 client of `region` in this test's scope.
    pub async fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let config = self.sdk().await;
        aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&config)
                .region(Region::new(region.to_owned()))
                .build(),
        )
    }

    /// An IAM client in this test's scope.
    pub async fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk().await)
    }

    /// The IAM role (and instance profile) name of this deployment.
    pub fn role_name(&self) -> String {
        flotilla_spec::names::iam_role_name(&self.tag)
    }

    /// The filter on this deployment's tag.
    pub fn tag_filter(&self) -> Filter {
        Filter::builder().name("tag:flotilla:deployment").values(&self.tag).build()
    }

    /// Whether `tags` name this deployment. Counts check it themselves: moto ignores some
    /// Describe filters (DescribeVpcPeeringConnections' among them), and tests run side by side.
    pub fn tagged(&self, tags: &[aws_sdk_ec2::types::Tag]) -> bool {
        tags.iter()
            .any(|t| t.key() == Some("flotilla:deployment") && t.value() == Some(self.tag.as_str()))
    }

    /// The deployment's security groups in `region`.
    pub async fn security_groups(&self, region: &str) -> Vec<aws_sdk_ec2::types::SecurityGroup> {
        let ec2 = self.ec2(region).await;
        let answer =
            ec2.describe_security_groups().filters(self.tag_filter()).send().await.unwrap();
        answer.security_groups().iter().filter(|g| self.tagged(g.tags())).cloned().collect()
    }

    /// Every kind of resource the deployment could leave behind, counted by direct queries in
    /// each region: `(kind, region, count)`, only the non-zero ones.
    pub async fn leftovers(&self, regions: &[&str]) -> Vec<(String, String, usize)> {
        let config = self.sdk().await;
        let tag_filter = || self.tag_filter();
        let mut found = Vec::new();
        let mut note = |kind: &str, region: &str, count: usize| {
            if count > 0 {
                found.push((kind.to_owned(), region.to_owned(), count));
            }
        };
        for region in regions {
            let ec2 = self.ec2(region).await;
            let instances = ec2.describe_instances().filters(tag_filter()).send().await.unwrap();
            let live = instances
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| self.tagged(i.tags()))
                .filter(|i| {
                    i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() != "terminated")
                })
                .count();
            note("instances (not terminated)", region, live);
            note(
                "vpcs",
                region,
                ec2.describe_vpcs()
                    .filters(tag_filter())
                    .send()
                    .await
                    .unwrap()
                    .vpcs()
                    .iter()
                    .filter(|x| self.tagged(x.tags()))
                    .count(),
            );
            note(
                "subnets",
                region,
                ec2.describe_subnets()
                    .filters(tag_filter())
                    .send()
                    .await
                    .unwrap()
                    .subnets()
                    .iter()
                    .filter(|x| self.tagged(x.tags()))
                    .count(),
            );
            note(
                "internet gateways",
                region,
                ec2.describe_internet_gateways()
                    .filters(tag_filter())
                    .send()
                    .await
                    .unwrap()
                    .internet_gateways()
                    .iter()
                    .filter(|x| self.tagged(x.tags()))
                    .count(),
            );
            note(
                "route tables",
                region,
                ec2.describe_route_tables()
                    .filters(tag_filter())
                    .send()
                    .await
                    .unwrap()
                    .route_tables()
                    .iter()
                    .filter(|x| self.tagged(x.tags()))
                    .count(),
            );
            note(
                "security groups",
                region,
                ec2.describe_security_groups()
                    .filters(tag_filter())
                    .send()
                    .await
                    .unwrap()
                    .security_groups()
                    .iter()
                    .filter(|x| self.tagged(x.tags()))
                    .count(),
            );
            let peerings =
                ec2.describe_vpc_peering_connections().filters(tag_filter()).send().await.unwrap();
            let live_peerings = peerings
                .vpc_peering_connections()
                .iter()
                .filter(|p| self.tagged(p.tags()))
                .filter(|p| {
                    p.status()
                        .and_then(|s| s.code())
                        .is_some_and(|c| !matches!(c.as_str(), "deleted" | "rejected" | "failed"))
                })
                .count();
            note("peering connections", region, live_peerings);
            note(
                "key pairs",
                region,
                ec2.describe_key_pairs()
                    .filters(tag_filter())
                    .send()
                    .await
                    .unwrap()
                    .key_pairs()
                    .iter()
                    .filter(|x| self.tagged(x.tags()))
                    .count(),
            );
            note(
                "volumes",
                region,
                ec2.describe_volumes()
                    .filters(tag_filter())
                    .send()
                    .await
                    .unwrap()
                    .volumes()
                    .iter()
                    .filter(|x| self.tagged(x.tags()))
                    .count(),
            );
            note(
                "launch templates",
                region,
                ec2.describe_launch_templates()
                    .filters(tag_filter())
                    .send()
                    .await
                    .unwrap()
                    .launch_templates()
                    .iter()
                    .filter(|x| self.tagged(x.tags()))
                    .count(),
            );
            note(
                "fleets (not deleted)",
                region,
                ec2.describe_fleets()
                    .send()
                    .await
                    .unwrap()
                    .fleets()
                    .iter()
                    .filter(|f| self.tagged(f.tags()))
                    .filter(|f| f.fleet_state().is_some_and(|s| !s.as_str().starts_with("deleted")))
                    .count(),
            );
        }
        let iam = aws_sdk_iam::Client::new(&config);
        let role = self.role_name();
        let roles = iam.list_roles().send().await.unwrap();
        note("iam roles", "global", roles.roles().iter().filter(|r| r.role_name() == role).count());
        let profiles = iam.list_instance_profiles().send().await.unwrap();
        note(
            "instance profiles",
            "global",
            profiles
                .instance_profiles()
                .iter()
                .filter(|p| p.instance_profile_name() == role)
                .count(),
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build(),
        );
        if let Ok(bucket) = fs_err::read_to_string(self.home.path().join("aws-bucket")) {
            let listed = s3
                .list_objects_v2()
                .bucket(bucket.trim())
                .prefix(format!("deployments/{}/", self.tag))
                .send()
                .await
                .unwrap();
            note("s3 objects under the deployment's prefix", "us-east-1", listed.contents().len());
        }
        found
    }
}

impl Drop for AwsFleet {
    fn drop(&mut self) {
        if self.home.path().join("deployments").join(&self.tag).join("metadata.json").exists() {
            let _ = self.run(&["destroy", &self.tag_arg()]);
        }
    }
}
