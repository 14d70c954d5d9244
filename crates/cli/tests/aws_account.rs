//! Fitting a fleet into the account it runs in, against the emulator: the spec's own image (by
//! name and by tag, among the account's images, with its root device), extra tags on every
//! resource flotilla creates, a managed policy and inline statements on the role that a deployed
//! binary reads S3 with (and that destroy removes), an encrypted root volume with a KMS alias; and
//! every bad reference refused at once, located, before any mutating call.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{ArchitectureValues, ResourceType, Tag, TagSpecification};
use common::aws::AwsFleet;
use common::*;
use flotilla_emulator::control::Emulator;

fn native_architecture() -> ArchitectureValues {
    if std::env::consts::ARCH == "aarch64" {
        ArchitectureValues::Arm64
    } else {
        ArchitectureValues::X8664
    }
}

/// Asserts that `tags` carry `Team=team` and `CostCenter=4711` beside flotilla's own.
fn assert_user_tags(kind: &str, tags: &BTreeMap<String, String>, team: &str) {
    assert_eq!(tags.get("Team").map(String::as_str), Some(team), "{kind}: {tags:?}");
    assert_eq!(tags.get("CostCenter").map(String::as_str), Some("4711"), "{kind}: {tags:?}");
    assert!(tags.contains_key("flotilla:deployment"), "{kind}: {tags:?}");
}

/// A golden image registered in the test's account: the newest of two by name (an older one
/// with the same prefix must lose), tagged `golden=<tag>`, booting from `/dev/xvda`.
async fn register_golden_images(ec2: &aws_sdk_ec2::Client, tag: &str) -> String {
    let mut newest = String::new();
    for (suffix, golden) in [("1", false), ("2", true)] {
        let image_tag = golden.then_some(("golden", tag));
        let name = format!("golden-{tag}-{suffix}");
        newest = register_image(ec2, &name, native_architecture(), image_tag).await;
        // Creation dates have a resolution of a second: keep the two apart.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    newest
}

/// Registers an image of the account named `name` (root device `/dev/xvda`), with one tag if
/// given; its id.
async fn register_image(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
    architecture: ArchitectureValues,
    tag: Option<(&str, &str)>,
) -> String {
    let mut call = ec2
        .register_image()
        .name(name)
        .architecture(architecture)
        .root_device_name("/dev/xvda")
        .virtualization_type("hvm");
    if let Some((key, value)) = tag {
        call = call.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Image)
                .tags(Tag::builder().key(key).value(value).build())
                .build(),
        );
    }
    call.send().await.unwrap().image_id().unwrap().to_owned()
}

/// The object of the team's bucket that only the attached managed policy lets the role read.
const BY_POLICY: &str = "by-policy.txt";
/// The object that only the spec's inline `iam_statements` let the role read.
const BY_STATEMENT: &str = "by-statement.txt";
/// The object nothing lets the role read.
const UNLISTED: &str = "unlisted.txt";
/// Each object of the team's bucket with its text.
const TEAM_OBJECTS: [(&str, &str); 3] = [
    (BY_POLICY, "read by the attached policy"),
    (BY_STATEMENT, "read by the inline statement"),
    (UNLISTED, "read by nobody"),
];

/// Fails the test loudly when this host has no curl with `--aws-sigv4` (7.75 or later), which
/// the reader binary (run by the emulator on this host) signs its S3 requests with.
fn require_curl() {
    let help = "the reader binary signs S3 requests with curl 7.75 or later (--aws-sigv4): \
                install it with `apt-get install curl` (Debian, Ubuntu) or `dnf install curl`";
    let output = std::process::Command::new("curl")
        .arg("--help")
        .arg("all")
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}: {help}"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--aws-sigv4"), "this curl has no --aws-sigv4: {help}");
}

/// The binary of the reader machines: a shell script that does what any program on an EC2
/// machine does to use its role. With the environment the agent gives it (`AWS_ENDPOINT_URL` and
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT` under the emulator, unset on a real machine) it takes an
/// IMDSv2 token, the role's name and temporary credentials, GETs each object of the team's
/// bucket signed with them (SigV4 by curl, path style), prints one line per object (`s3 KEY
/// STATUS BODY`, the body on one line) and then idles, so that the agent sees it running. The
/// credentials reach curl on stdin, never on its command line.
fn write_reader(fleet: &AwsFleet, bucket: &str) -> std::path::PathBuf {
    let keys: Vec<&str> = TEAM_OBJECTS.iter().map(|(key, _)| *key).collect();
    let script = format!(
        r#"#!/bin/sh
set -u
imds="${{AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}}"
imds="${{imds%/}}"
s3="${{AWS_ENDPOINT_URL:-https://s3.us-east-1.amazonaws.com}}"
s3="${{s3%/}}"
token=$(curl -sf -X PUT "$imds/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || {{ echo "no IMDS token from $imds" >&2; exit 1; }}
metadata() {{
  curl -sf -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/$1"
}}
role=$(metadata iam/security-credentials/ | head -n 1)
credentials=$(metadata "iam/security-credentials/$role") || {{ echo "no credentials for role $role" >&2; exit 1; }}
field() {{
  printf '%s\n' "$credentials" | sed -n "s/.*\"$1\" *: *\"\([^\"]*\)\".*/\1/p" | head -n 1
}}
for key in {keys}; do
  status=$(printf 'user = "%s:%s"\nheader = "x-amz-security-token: %s"\n' \
      "$(field AccessKeyId)" "$(field SecretAccessKey)" "$(field Token)" |
    curl -s --config - --aws-sigv4 "aws:amz:us-east-1:s3" -o body -w '%{{http_code}}' \
      "$s3/{bucket}/$key")
  echo "s3 $key $status $(tr '\n' ' ' < body)"
done
exec sleep 100000
"#,
        keys = keys.join(" "),
    );
    let path = fleet.write("reader.sh", &script);
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The spec's top-level tags beyond `Team` and `CostCenter`: ten in all, one more than an S3
/// object takes beside `flotilla:deployment`, so `Z8` (the last in key order) is left off them.
const MORE_TAGS: &str = "Z1: a, Z2: b, Z3: c, Z4: d, Z5: e, Z6: f, Z7: g, Z8: h";

/// A fleet on a registered image found by name (the monitoring machine, from the top), by tag
/// (the binary machines, from their entry) and by id (a machine in a second region, whose
/// VPC is peered), every created resource with the spec's tags (the entry's `Team` over the
/// top's on its own resources; S3 objects as many as fit, with one warning naming the rest),
/// an attached policy and inline statements that the web machines' binary (a script, so no
/// architecture is asked of the types) reads S3 with through its machine's IMDS, and that
/// destroy removes, an encrypted root volume with a key named by alias and one with the
/// account's default key.
#[test]
fn a_fleet_runs_the_accounts_own_image_with_its_tags_policy_and_key() {
    let fleet = AwsFleet::new("account-fit");
    let emulator = Emulator::require();
    let runtime = runtime();
    let config = runtime.block_on(fleet.sdk());
    let ec2 = runtime.block_on(fleet.ec2("us-east-1"));
    let ec2_eu = runtime.block_on(fleet.ec2("eu-west-1"));
    let iam = aws_sdk_iam::Client::new(&config);
    let kms = aws_sdk_kms::Client::new(&config);

    let image = runtime.block_on(register_golden_images(&ec2, &fleet.tag));
    // In the second region an image named by id: any name, no tags.
    let by_id = format!("by-id-{}", fleet.tag);
    let image_eu = runtime.block_on(register_image(&ec2_eu, &by_id, native_architecture(), None));
    let policy_arn = runtime.block_on(async {
        let document = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::team-data-{}/{BY_POLICY}", fleet.tag)}]
        });
        iam.create_policy()
            .policy_name(format!("read-secret-{}", fleet.tag))
            .policy_document(document.to_string())
            .send()
            .await
            .unwrap()
            .policy()
            .unwrap()
            .arn()
            .unwrap()
            .to_owned()
    });
    let key_id = runtime.block_on(async {
        let key = kms.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_owned();
        kms.create_alias()
            .alias_name(format!("alias/{}", fleet.tag))
            .target_key_id(&key_id)
            .send()
            .await
            .unwrap();
        key_id
    });
    // The team's bucket, which the reader binary of the web machines reads when it starts.
    require_curl();
    let bucket = format!("team-data-{}", fleet.tag);
    let s3 = runtime.block_on(async {
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build(),
        );
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        for (key, text) in TEAM_OBJECTS {
            s3.put_object()
                .bucket(&bucket)
                .key(key)
                .body(text.as_bytes().to_vec().into())
                .send()
                .await
                .unwrap();
        }
        s3
    });
    let reader = write_reader(&fleet, &bucket);

    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let spec = format!(
        "tag: {tag}\nprovider: aws\nimage: {{name: golden-{tag}-*}}\ntags: {{Team: infra, CostCenter: \"4711\", {more}}}\niam_policies: [{policy_arn}]\niam_statements:\n- {{Effect: Allow, Action: \"s3:ListBucket\", Resource: \"arn:aws:s3:::team-data-{tag}\"}}\n- {{Effect: Allow, Action: \"s3:GetObject\", Resource: \"arn:aws:s3:::team-data-{tag}/{BY_STATEMENT}\"}}\nroot_volume: {{kms_key: alias/{tag}}}\nmonitoring: {{instance_type: {monitoring}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: web, count: 2, region: us-east-1, instance_type: {native}, storage_size: 10, storage_class: gp3, binary: {reader}, config: app.conf, profiling: false, image: \"golden:{tag}\", tags: {{Team: core}}}}\n- {{name: far, region: eu-west-1, instance_type: {native}, storage_size: 10, storage_class: gp3, binary: {binary}, config: app.conf, profiling: false, image: {image_eu}, root_volume: {{encrypted: true}}}}\nports: []\n",
        tag = fleet.tag,
        more = MORE_TAGS,
        monitoring = native_monitoring_type(),
        native = native_type(),
        binary = fleet_app_bin().display(),
        reader = reader.display(),
    );
    let spec = fleet.write("fleet.yaml", &spec).display().to_string();
    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "198.51.100.7", "--output", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<_> =
        stderr.lines().filter(|l| l.contains("S3 objects take at most")).collect();
    assert_eq!(warnings.len(), 1, "one warning of the tags left off S3 objects:\n{stderr}");
    assert!(warnings[0].contains("but not `Z8`"), "{stderr}");
    for row in &rows {
        let expected = if row["role"] == "monitoring" { "idle" } else { "healthy" };
        assert_eq!(row["health"], expected, "the agent runs on the custom image: {row}");
    }

    runtime.block_on(async {
        // Instances run the registered image, boot from its root device, carry the tags.
        let described = ec2.describe_instances().filters(fleet.tag_filter()).send().await.unwrap();
        let instances: Vec<_> = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() == "running"))
            .collect();
        assert_eq!(instances.len(), 3);
        for instance in &instances {
            assert_eq!(instance.image_id(), Some(image.as_str()), "the newest golden image");
            assert_eq!(instance.root_device_name(), Some("/dev/xvda"));
            let devices: Vec<_> =
                instance.block_device_mappings().iter().filter_map(|m| m.device_name()).collect();
            assert_eq!(devices, ["/dev/xvda"], "the root volume maps to the image's device");
            let tags = tags_of(instance.tags());
            let team = if tags.get("flotilla:role").map(String::as_str) == Some("monitoring") {
                "infra"
            } else {
                "core"
            };
            assert_user_tags("instance", &tags, team);
        }

        // Root volumes: encrypted with the key the alias names, tagged.
        let volumes = ec2.describe_volumes().filters(fleet.tag_filter()).send().await.unwrap();
        assert_eq!(volumes.volumes().len(), 3, "{volumes:?}");
        for volume in volumes.volumes() {
            assert_eq!(volume.encrypted(), Some(true), "{volume:?}");
            assert!(volume.kms_key_id().is_some_and(|k| k.contains(&key_id)), "{volume:?}");
            let tags = tags_of(volume.tags());
            assert!(tags.contains_key("Team"), "volume: {tags:?}");
            assert_eq!(tags.get("CostCenter").map(String::as_str), Some("4711"), "{tags:?}");
        }

        // What the deployment shares carries the top-level tags.
        let vpcs = ec2.describe_vpcs().filters(fleet.tag_filter()).send().await.unwrap();
        assert!(!vpcs.vpcs().is_empty());
        for vpc in vpcs.vpcs() {
            assert_user_tags("vpc", &tags_of(vpc.tags()), "infra");
        }
        let subnets = ec2.describe_subnets().filters(fleet.tag_filter()).send().await.unwrap();
        assert!(!subnets.subnets().is_empty());
        for subnet in subnets.subnets() {
            assert_user_tags("subnet", &tags_of(subnet.tags()), "infra");
        }
        let groups = fleet.security_groups("us-east-1").await;
        assert!(!groups.is_empty());
        for group in &groups {
            assert_user_tags("security group", &tags_of(group.tags()), "infra");
        }
        let gateways =
            ec2.describe_internet_gateways().filters(fleet.tag_filter()).send().await.unwrap();
        for gateway in gateways.internet_gateways() {
            assert_user_tags("internet gateway", &tags_of(gateway.tags()), "infra");
        }
        // The main route table of each VPC flotilla made.
        for (region, client) in [("us-east-1", &ec2), ("eu-west-1", &ec2_eu)] {
            let tables =
                client.describe_route_tables().filters(fleet.tag_filter()).send().await.unwrap();
            let main: Vec<_> = tables
                .route_tables()
                .iter()
                .filter(|t| t.associations().iter().any(|a| a.main() == Some(true)))
                .collect();
            assert_eq!(main.len(), 1, "{region}: {tables:?}");
            assert_user_tags("route table", &tags_of(main[0].tags()), "infra");
        }
        // The peering from the monitoring region to the second one.
        let peerings = ec2
            .describe_vpc_peering_connections()
            .filters(fleet.tag_filter())
            .send()
            .await
            .unwrap();
        assert_eq!(peerings.vpc_peering_connections().len(), 1, "{peerings:?}");
        for peering in peerings.vpc_peering_connections() {
            assert_user_tags("peering", &tags_of(peering.tags()), "infra");
        }
        // Fleets belong to a group: the group's merged tags.
        for (region, client, groups) in
            [("us-east-1", &ec2, vec!["monitoring", "web"]), ("eu-west-1", &ec2_eu, vec!["far"])]
        {
            let fleets = client.describe_fleets().send().await.unwrap();
            let mut seen: Vec<String> = Vec::new();
            for described in fleets.fleets().iter().filter(|f| fleet.tagged(f.tags())) {
                let tags = tags_of(described.tags());
                let group = tags.get("flotilla:group").cloned().unwrap_or_default();
                let team = if group == "web" { "core" } else { "infra" };
                assert_user_tags(&format!("{region} fleet of {group}"), &tags, team);
                seen.push(group);
            }
            seen.sort();
            seen.dedup();
            assert_eq!(seen, groups, "{region}: {fleets:?}");
        }
        // Launch templates belong to a group: the group's merged tags.
        let templates =
            ec2.describe_launch_templates().filters(fleet.tag_filter()).send().await.unwrap();
        assert_eq!(templates.launch_templates().len(), 2, "monitoring and web");
        for template in templates.launch_templates() {
            let tags = tags_of(template.tags());
            let team = if tags.get("flotilla:group").map(String::as_str) == Some("web") {
                "core"
            } else {
                "infra"
            };
            assert_user_tags("launch template", &tags, team);
        }

        // The role: tagged, the policy attached, the statements inline, the profile holds it.
        let role = iam.get_role().role_name(fleet.role_name()).send().await.unwrap();
        let role_tags: BTreeMap<String, String> = role
            .role()
            .unwrap()
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
        assert_user_tags("role", &role_tags, "infra");
        let attached =
            iam.list_attached_role_policies().role_name(fleet.role_name()).send().await.unwrap();
        let arns: Vec<_> =
            attached.attached_policies().iter().filter_map(|p| p.policy_arn()).collect();
        assert_eq!(arns, [policy_arn.as_str()]);
        let inline = iam.list_role_policies().role_name(fleet.role_name()).send().await.unwrap();
        assert_eq!(inline.policy_names(), ["flotilla-agent", "flotilla-user"]);
        let profile = iam
            .get_instance_profile()
            .instance_profile_name(fleet.role_name())
            .send()
            .await
            .unwrap();
        let held: Vec<_> =
            profile.instance_profile().unwrap().roles().iter().map(|r| r.role_name()).collect();
        assert_eq!(held, [fleet.role_name().as_str()]);
        let profile_tags = iam
            .list_instance_profile_tags()
            .instance_profile_name(fleet.role_name())
            .send()
            .await
            .unwrap();
        let profile_tags: BTreeMap<String, String> = profile_tags
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
        assert_user_tags("instance profile", &profile_tags, "infra");
        assert_eq!(profile_tags.get("Z8").map(String::as_str), Some("h"), "{profile_tags:?}");

        // The deployment's S3 objects: the deployment tag and the first nine of the spec's.
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build(),
        );
        let bucket = fs_err::read_to_string(fleet.home.path().join("aws-bucket")).unwrap();
        let listed = s3
            .list_objects_v2()
            .bucket(bucket.trim())
            .prefix(format!("deployments/{}/", fleet.tag))
            .send()
            .await
            .unwrap();
        assert!(listed.contents().len() >= 4, "artifacts and identities: {listed:?}");
        for object in listed.contents() {
            let key = object.key().unwrap();
            let tagging =
                s3.get_object_tagging().bucket(bucket.trim()).key(key).send().await.unwrap();
            let tags: BTreeMap<String, String> = tagging
                .tag_set()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect();
            assert_user_tags(key, &tags, "infra");
            assert_eq!(tags.len(), 10, "{key}: {tags:?}");
            assert!(tags.contains_key("Z7") && !tags.contains_key("Z8"), "{key}: {tags:?}");
        }

        // The machine in the second region: the image named by id, the default key.
        let described =
            ec2_eu.describe_instances().filters(fleet.tag_filter()).send().await.unwrap();
        let far: Vec<_> = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() == "running"))
            .collect();
        assert_eq!(far.len(), 1, "{described:?}");
        assert_eq!(far[0].image_id(), Some(image_eu.as_str()), "the image named by id");
        assert_user_tags("eu-west-1 instance", &tags_of(far[0].tags()), "infra");
        let volumes = ec2_eu.describe_volumes().filters(fleet.tag_filter()).send().await.unwrap();
        assert_eq!(volumes.volumes().len(), 1, "{volumes:?}");
        let volume = &volumes.volumes()[0];
        assert_eq!(volume.encrypted(), Some(true), "encrypted with no kms_key: {volume:?}");
        assert!(
            !volume.kms_key_id().is_some_and(|k| k.contains(&key_id)),
            "the account's default key, not the top's alias: {volume:?}"
        );
    });

    // Every instance of the custom image was booted by the emulator, as the default image's are.
    let booted = runtime.block_on(emulator.booted()).unwrap();
    let ours: Vec<_> = booted.iter().filter(|b| b.scope == fleet.scope).collect();
    assert_eq!(ours.len(), 4, "every instance of the custom images booted");

    // The reader binary on each web machine read the team's bucket with the role's
    // credentials from its machine's IMDS, through the endpoints the agent's environment names
    // (the emulator holds role credentials to the role's policies): the attached policy allows
    // one object, the inline statement another, and nothing the third.
    let web: Vec<_> =
        rows.iter().filter(|r| r["role"] == "binary" && r["region"] == "us-east-1").collect();
    assert_eq!(web.len(), 2, "{rows:?}");
    for row in &web {
        let name = row["name"].as_str().unwrap();
        let machine = ours
            .iter()
            .find(|b| std::net::IpAddr::V4(b.public_ip) == ip_of(row))
            .unwrap_or_else(|| panic!("{name} was booted"));
        // The binary prints its lines within moments of starting: wait on its log file (cheap
        // to read), then read them as a user does.
        let log = machine.root.join("var/lib/flotilla/agent/logs/binary.log");
        wait_for(
            &format!("{name}'s reads in {}", log.display()),
            std::time::Duration::from_secs(30),
            || {
                let text = fs_err::read_to_string(&log).ok()?;
                (text.lines().filter(|l| l.contains("s3 ")).count() >= TEAM_OBJECTS.len())
                    .then_some(())
            },
        );
        let output = fleet.run_ok(&["logs", &fleet.tag_arg(), name, "--lines", "100"]);
        let logs = String::from_utf8_lossy(&output.stdout);
        let read = |key: &str| {
            logs.lines()
                .find(|l| l.contains(&format!("s3 {key} ")))
                .unwrap_or_else(|| panic!("{name} read {key}:\n{logs}"))
                .to_owned()
        };
        let by_policy = read(BY_POLICY);
        assert!(
            by_policy.ends_with(&format!("s3 {BY_POLICY} 200 {}", TEAM_OBJECTS[0].1)),
            "{name}: {by_policy}"
        );
        let by_statement = read(BY_STATEMENT);
        assert!(
            by_statement.ends_with(&format!("s3 {BY_STATEMENT} 200 {}", TEAM_OBJECTS[1].1)),
            "{name}: {by_statement}"
        );
        let unlisted = read(UNLISTED);
        assert!(unlisted.contains(&format!("s3 {UNLISTED} 403 ")), "{name}: {unlisted}");
        assert!(unlisted.contains("<Code>AccessDenied</Code>"), "{name}: {unlisted}");
    }

    // The role's credentials as the machines hold them, for after destroy.
    let machine_s3 = runtime.block_on(async {
        let imds = aws_config::imds::Client::builder()
            .endpoint(ours[0].imds_endpoint.as_str())
            .unwrap()
            .build();
        // The test's environment disables the SDK's IMDS lookups: read the role's credentials
        // from the machine's IMDS the way the default chain does (the role's name, then its
        // credentials).
        let role = imds.get("/latest/meta-data/iam/security-credentials/").await.unwrap();
        let role = role.as_ref().lines().next().unwrap().to_owned();
        let document =
            imds.get(format!("/latest/meta-data/iam/security-credentials/{role}")).await.unwrap();
        let document: serde_json::Value = serde_json::from_str(document.as_ref()).unwrap();
        let credentials = aws_sdk_s3::config::Credentials::new(
            document["AccessKeyId"].as_str().unwrap(),
            document["SecretAccessKey"].as_str().unwrap(),
            document["Token"].as_str().map(str::to_owned),
            None,
            "the machine's IMDS",
        );
        let machine_config = config
            .to_builder()
            .credentials_provider(aws_types::sdk_config::SharedCredentialsProvider::new(
                credentials,
            ))
            .build();
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&machine_config).force_path_style(true).build(),
        )
    });

    // destroy detaches the policy before it deletes the role: the machine's credentials read
    // nothing any more.
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    runtime.block_on(async {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        for key in [BY_POLICY, BY_STATEMENT] {
            let after = machine_s3.get_object().bucket(&bucket).key(key).send().await;
            let error = after.expect_err("after destroy the role allows nothing");
            assert_eq!(error.code(), Some("AccessDenied"), "{key}: {error:?}");
        }
        for (key, _) in TEAM_OBJECTS {
            s3.delete_object().bucket(&bucket).key(key).send().await.unwrap();
        }
        s3.delete_bucket().bucket(&bucket).send().await.unwrap();
        let entities = iam.list_entities_for_policy().policy_arn(&policy_arn).send().await.unwrap();
        assert!(entities.policy_roles().is_empty(), "detached at destroy: {entities:?}");
        assert!(iam.get_role().role_name(fleet.role_name()).send().await.is_err(), "role gone");
        // The policy itself is the user's: it stays.
        iam.get_policy().policy_arn(&policy_arn).send().await.unwrap();
    });
    let left = runtime.block_on(fleet.leftovers(&["us-east-1", "eu-west-1"]));
    assert!(left.is_empty(), "{left:?}");
}

/// A KMS key id no account has.
const MISSING_KEY_ID: &str = "0b0b0b0b-0000-4000-8000-00000000dead";
/// A KMS key ARN no account has.
const MISSING_KEY_ARN: &str =
    "arn:aws:kms:us-east-1:123456789012:key/0b0b0b0b-0000-4000-8000-00000000beef";

/// Every bad reference of a spec at once, each at its field, before any mutating call: a name
/// that only another account's images match, an image id that does not exist, an image of the
/// wrong architecture, a tag no image carries, a tag only another account's image carries, a
/// policy that does not exist, a KMS alias, key id and key ARN that do not exist.
#[test]
fn bad_references_are_refused_at_once_before_anything_is_made() {
    let fleet = AwsFleet::new("account-refs");
    let emulator = Emulator::require();
    let scope = emulator.scope(&fleet.scope);
    let runtime = runtime();
    let ec2 = runtime.block_on(fleet.ec2("us-east-1"));
    let foreign_arch = if std::env::consts::ARCH == "aarch64" {
        ArchitectureValues::X8664
    } else {
        ArchitectureValues::Arm64
    };
    let other_arch = format!("other-arch-{}", fleet.tag);
    let wrong = runtime.block_on(register_image(&ec2, &other_arch, foreign_arch.clone(), None));
    // A tag only an image of another account (Canonical's, which every account sees) carries.
    runtime.block_on(async {
        let ubuntu = ec2
            .describe_images()
            .owners("099720109477")
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("name")
                    .values("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-*")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let id = ubuntu.images()[0].image_id().unwrap().to_owned();
        ec2.create_tags()
            .resources(id)
            .tags(Tag::builder().key("distro").value(&fleet.tag).build())
            .send()
            .await
            .unwrap();
    });
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let entry = |name: &str, image: &str, extra: &str| {
        format!(
            "- {{name: {name}, region: us-east-1, instance_type: {native}, storage_size: 10, storage_class: gp3, binary: {binary}, config: app.conf, profiling: false, image: {image}{extra}}}\n",
            native = native_type(),
            binary = fleet_app_bin().display(),
        )
    };
    let spec = format!(
        "tag: {tag}\nprovider: aws\nimage: {{name: \"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-*\"}}\niam_policies: [\"arn:aws:iam::123456789012:policy/no-such-policy-{tag}\"]\nroot_volume: {{kms_key: alias/no-such-key-{tag}}}\nmonitoring: {{instance_type: {monitoring}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n{missing}{wrong_arch}{untagged}{foreign}ports: []\n",
        tag = fleet.tag,
        monitoring = native_monitoring_type(),
        missing = entry("missing", "ami-0123456789abcdef0", ""),
        wrong_arch = entry("wrong", &wrong, ""),
        untagged = entry(
            "untagged",
            &format!("\"golden:nothing-{}\"", fleet.tag),
            &format!(", root_volume: {{kms_key: {MISSING_KEY_ID}}}"),
        ),
        foreign = entry(
            "foreign",
            &format!("\"distro:{}\"", fleet.tag),
            &format!(", root_volume: {{kms_key: \"{MISSING_KEY_ARN}\"}}"),
        ),
    );
    let spec = fleet.write("fleet.yaml", &spec).display().to_string();
    runtime.block_on(scope.reset_counts()).unwrap();
    let output = fleet.run(&["create", "--config", &spec, "--ip", "198.51.100.7"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in [
        "was found only in account 099720109477, which is not in image_owners (self)",
        "image ami-0123456789abcdef0 not found in us-east-1",
        &format!("image {wrong} in us-east-1 is {}", foreign_arch.as_str()),
        &format!(
            "IAM policy arn:aws:iam::123456789012:policy/no-such-policy-{} does not exist",
            fleet.tag
        ),
        &format!("KMS key alias/no-such-key-{} does not exist in us-east-1", fleet.tag),
        &format!("image tag golden:nothing-{} not found in us-east-1", fleet.tag),
        &format!(
            "image tag distro:{} in us-east-1 was found only in account 099720109477, which is not in image_owners (self)",
            fleet.tag
        ),
        &format!("KMS key {MISSING_KEY_ID} does not exist in us-east-1"),
        &format!("KMS key {MISSING_KEY_ARN} does not exist in us-east-1"),
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    // Each at the line that wrote it.
    let text = fs_err::read_to_string(&spec).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (needle, message) in [
        ("ubuntu-noble", "not in image_owners"),
        ("ami-0123456789abcdef0", "not found in us-east-1"),
        ("no-such-policy", "does not exist"),
        ("no-such-key", "does not exist in us-east-1"),
        ("golden:nothing-", "not found in us-east-1"),
        ("distro:", "not in image_owners"),
        (MISSING_KEY_ID, "does not exist in us-east-1"),
        (MISSING_KEY_ARN, "does not exist in us-east-1"),
    ] {
        let at = format!("fleet.yaml:{}:", line_of(needle));
        assert!(
            stderr.lines().any(|l| l.contains(&at)) && stderr.contains(message),
            "{message} at {at}:\n{stderr}"
        );
    }
    // The fields, too.
    for field in [
        "instances[2].image",
        "instances[2].root_volume.kms_key",
        "instances[3].image",
        "instances[3].root_volume.kms_key",
    ] {
        assert!(stderr.contains(field), "{field} missing:\n{stderr}");
    }
    // Nothing was made: every call was a read.
    let counts = runtime.block_on(scope.counts()).unwrap();
    for (service, actions) in &counts.0 {
        for (action, count) in actions {
            assert!(
                ["Describe", "Get", "List", "Head"].iter().any(|p| action.starts_with(p)),
                "a mutating call before the references were checked: {service} {action} × {count}"
            );
        }
    }
    assert!(!counts.0.is_empty(), "the references were read");
}

/// How long the test gives agents to answer: long enough for the monitoring machine's agent on
/// the default image, far shorter than the 15 minutes of a real create.
const SHORT_AGENT_TIMEOUT: &str = "15s";

/// An image without cloud-init boots and never starts the agent: `create` fails once the
/// (shortened) wait for agents runs out, naming the machine, its instance, the image by id and
/// name, what the image needs and how to read the boot output; `destroy` then leaves nothing.
#[test]
fn an_image_without_cloud_init_fails_create_naming_the_image() {
    use flotilla_emulator::control::IMAGE_BOOT_TAG;
    let fleet = AwsFleet::new("account-no-cloud-init");
    let runtime = runtime();
    let ec2 = runtime.block_on(fleet.ec2("us-east-1"));
    let image_name = format!("bare-{}", fleet.tag);
    let image = runtime.block_on(register_image(
        &ec2,
        &image_name,
        native_architecture(),
        Some((IMAGE_BOOT_TAG, "none")),
    ));

    fleet.write("app.conf", "port = 9090\n");
    let spec = format!(
        "tag: {tag}\nprovider: aws\nmonitoring: {{instance_type: {monitoring}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: web, count: 1, region: us-east-1, instance_type: {native}, storage_size: 10, storage_class: gp3, binary: {binary}, config: app.conf, profiling: false, image: {image}}}\nports: []\n",
        tag = fleet.tag,
        monitoring = native_monitoring_type(),
        native = native_type(),
        binary = fleet_app_bin().display(),
    );
    let spec = fleet.write("fleet.yaml", &spec).display().to_string();
    let started = std::time::Instant::now();
    let output = fleet
        .command(&["create", "--config", &spec, "--ip", "198.51.100.7"])
        .env("FLOTILLA_TEST_AGENT_TIMEOUT", SHORT_AGENT_TIMEOUT)
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "create fails: {stderr}");
    assert!(took < std::time::Duration::from_secs(180), "within the short wait: {took:?}");

    let instance = runtime.block_on(async {
        let described = ec2.describe_instances().filters(fleet.tag_filter()).send().await.unwrap();
        let on_image: Vec<String> = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.image_id() == Some(image.as_str()))
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        assert_eq!(on_image.len(), 1, "{on_image:?}");
        on_image.into_iter().next().unwrap()
    });
    let line = stderr
        .lines()
        .find(|l| l.contains("web-0"))
        .unwrap_or_else(|| panic!("the failure names the machine: {stderr}"));
    for expected in [
        format!("the agent of machine {instance} did not answer within {SHORT_AGENT_TIMEOUT}"),
        format!("booted image {image} ({image_name})"),
        "needs cloud-init".to_owned(),
        "systemd".to_owned(),
        format!("aws ec2 get-console-output --instance-id {instance} --region us-east-1"),
    ] {
        assert!(line.contains(&expected), "{expected:?} in {line}");
    }
    assert!(!stderr.contains("monitoring: the agent"), "the monitoring machine answered: {stderr}");

    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime.block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "{left:?}");
}
