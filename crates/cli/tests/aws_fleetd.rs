//! Standalone `flotilla fleetd` as ec2fleetd runs, against the emulator stack: an EC2 instance
//! launched with an ec2fleetd config (JSON5, not a script) as its user data, which the booter
//! only serves over the instance's IMDS; `flotilla fleetd --imds=<that IMDS>` reads its config
//! from there (no `--userdata`), creates and attaches a `c` volume (its device found under the
//! instance's root by NVMe serial) and points a Route 53 record at the instance, running its
//! hooks with the macros IMDS gave; a spot interruption through the emulator's control API
//! then runs the `interrupted` hooks (the domain's, then the volume's), removes the record,
//! detaches the volume (kept, in its pool) and ends fleetd with 0 before the notice's deadline.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::{Filter, InstanceType, Placement};
use flotilla_aws::machine::volumes::{TAG_DOMAIN, TAG_IN_TRANSIT, TAG_POOL, TAG_TRANSACTION};
use flotilla_emulator::control::{
    BootState, Emulator, Scope, SpotAction, SpotInterruption, StateTiming, VolumeTiming,
};

const REGION: &str = "us-east-1";
const ZONE: &str = "us-east-1a";

/// The stack in this test's scope.
struct Stack {
    emulator: Emulator,
    scope: Scope,
    sdk: aws_types::SdkConfig,
}

impl Stack {
    async fn new(label: &str) -> Stack {
        common::aws::emulator_env();
        let emulator = Emulator::require();
        let scope = emulator.fresh_scope(label);
        scope
            .set_timing(StateTiming { pending: Duration::ZERO, shutting_down: Duration::ZERO })
            .await
            .expect("instance timing");
        scope
            .set_volume_timing(VolumeTiming {
                attach: Duration::from_millis(150),
                detach: Duration::from_millis(150),
                release_after_terminate: Duration::ZERO,
            })
            .await
            .expect("volume timing");
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(emulator.endpoint())
            .region(Region::new(REGION))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                scope.access_key_id(),
                "emulated",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        Stack { emulator, scope, sdk }
    }

    fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk)
    }

    fn route53(&self) -> aws_sdk_route53::Client {
        aws_sdk_route53::Client::from_conf(
            aws_sdk_route53::config::Builder::from(&self.sdk).region(Region::new(REGION)).build(),
        )
    }

    /// `flotilla fleetd` with `args`, in this scope, against the emulator's AWS endpoint.
    fn fleetd(&self, work: &Path, args: &[String]) -> Child {
        Command::new(common::flotilla_bin())
            .arg("fleetd")
            .args(args)
            .current_dir(work)
            .env("AWS_ENDPOINT_URL", self.emulator.endpoint())
            .env("AWS_ACCESS_KEY_ID", self.scope.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", "emulated")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_REGION")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flotilla fleetd starts")
    }

    /// The volumes of `domain` (flotilla's domain tag): (id, attached instance, state, tags).
    async fn volumes_of(&self, domain: &str) -> Vec<(String, Option<String>, String, Vec<String>)> {
        let answer = self
            .ec2()
            .describe_volumes()
            .filters(Filter::builder().name(format!("tag:{TAG_DOMAIN}")).values(domain).build())
            .send()
            .await
            .expect("DescribeVolumes");
        answer
            .volumes()
            .iter()
            .map(|v| {
                (
                    v.volume_id().unwrap().to_owned(),
                    v.attachments().first().and_then(|a| a.instance_id()).map(str::to_owned),
                    v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    v.tags().iter().map(|t| t.key().unwrap_or_default().to_owned()).collect(),
                )
            })
            .collect()
    }

    /// The A record `name` of `zone`: its values, if it exists.
    async fn a_record(&self, zone: &str, name: &str) -> Option<Vec<String>> {
        let sets = self
            .route53()
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .send()
            .await
            .expect("ListResourceRecordSets");
        sets.resource_record_sets()
            .iter()
            .find(|s| s.name() == name && s.r#type().as_str() == "A")
            .map(|s| s.resource_records().iter().map(|r| r.value().to_owned()).collect())
    }
}

/// The config, as a user would put it in a launch template's user data: JSON5 with comments,
/// unquoted keys and single quotes. Every hook appends a line to `out`.
fn user_data(domain: &str, zone: &str, record: &str, out: &Path) -> String {
    let hook =
        |text: &str| format!("{{argv: ['sh', '-c', 'echo \"{text}\" >> {}']}}", out.display());
    format!(
        r#"// ec2fleetd's config, unchanged: one domain with a volume it creates, a record, hooks.
{{
  domains: {{
    {domain}: {{
      'attach-volume': [{{
        device: '/dev/sdf',
        source: 'c',
        'pool-name': 'saves',
        create: {{Size: 1, VolumeType: 'gp3'}},
        exec: [{{lines: [{volume}]}}, {{on: ['interrupted'], lines: [{volume_interrupted}]}}],
      }}],
      'update-route53': [{{hostedzone: '{zone}', name: '{record}', ttl: 60}}],
      exec: [
        {{on: ['starting'], lines: [{starting}]}},
        {{on: ['started'], lines: [{started}]}},
        {{on: ['interrupted'], lines: [{interrupted}]}},
        {{on: ['stopping'], lines: [{stopping}]}},
      ],
    }},
  }},
}}
"#,
        volume = hook("volume {volume_id} {attach_source} {attach_op} {attached_device}"),
        volume_interrupted = hook("volume-interrupted {volume_id} {daemon_state}"),
        starting = hook(
            "starting {instance_id} {placement_region} {placement_zone} {instance_type} {primary_public_ipv4} {ami-i} {domain}"
        ),
        started = hook("started {daemon_state} {instance_id} {transaction_id}"),
        interrupted = hook("interrupted {interrupt_action} {interrupt_time} {instance_id}"),
        stopping = hook("stopping {daemon_state}"),
    )
}

fn lines(out: &Path) -> Vec<String> {
    fs_err::read_to_string(out)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Waits (bounded) until `check` gives a value, sleeping a little between tries.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The line of `out` that starts with `prefix`, once there is one.
async fn line_starting(out: &Path, prefix: &str) -> String {
    let prefix = format!("{prefix} ");
    eventually(&format!("a `{prefix}` hook line"), Duration::from_secs(60), || {
        let found = lines(out).into_iter().find(|l| l.starts_with(&prefix));
        async move { found }
    })
    .await
}

fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetd_reads_its_config_from_the_instances_imds_lives_through_a_spot_notice_and_exits_0() {
    let stack = Stack::new("fleetde2e").await;
    let domain = format!("fd{}", stack.scope.access_key_id().to_ascii_lowercase());
    let zone_name = format!("{domain}.example.com");
    let zone = stack
        .route53()
        .create_hosted_zone()
        .name(&zone_name)
        .caller_reference(&domain)
        .send()
        .await
        .expect("CreateHostedZone");
    let zone = zone.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_owned();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("hooks.out");
    let record_template = format!("{{instance_id}}.{zone_name}");
    let config = user_data(&domain, &zone, &record_template, &out);

    // The instance, whose user data is the config: the booter serves it and runs nothing.
    let launched = stack
        .ec2()
        .run_instances()
        .image_id("ami-0flotillatest")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone(ZONE).build())
        .user_data(aws_smithy_types::base64::encode(&config))
        .send()
        .await
        .expect("RunInstances");
    let instance = launched.instances()[0].instance_id().unwrap().to_owned();
    let booted = stack
        .emulator
        .wait_booted(&instance, Duration::from_secs(30), |b| b.state != BootState::Failed)
        .await
        .expect("the booter boots the instance");
    assert_eq!(booted.state, BootState::Exited, "a config is not run: {booted:?}");
    assert_eq!(booted.pid, None, "{booted:?}");
    assert!(
        !booted.root.join("var/log/cloud-init-output.log").exists()
            || fs_err::read_to_string(booted.root.join("var/log/cloud-init-output.log"))
                .unwrap()
                .is_empty(),
        "the booter ran the config as a script"
    );
    let imds = booted.imds_endpoint.trim_start_matches("http://").to_owned();
    let ip = booted.public_ip.to_string();

    // fleetd, as the ec2fleetd unit runs it, plus where its holds and devices are.
    let mut child = stack.fleetd(
        work.path(),
        &[
            format!("--imds={imds}"),
            "--transc_id=fleetd-e2e".to_owned(),
            format!("--state-dir={}", work.path().join("state").display()),
            format!("--device-root={}", booted.root.display()),
        ],
    );

    // `starting`, then the volume's hook, then `started`: macros from the instance's IMDS.
    let starting = line_starting(&out, "starting").await;
    assert_eq!(
        starting,
        format!("starting {instance} {REGION} {ZONE} t3.micro {ip} 0 {domain}"),
        "{:?}",
        lines(&out)
    );
    let volume_line = line_starting(&out, "volume").await;
    let started = line_starting(&out, "started").await;
    assert_eq!(started, format!("started started {instance} fleetd-e2e"));
    let words: Vec<&str> = volume_line.split(' ').collect();
    let volume = words[1].to_owned();
    assert!(volume.starts_with("vol-"), "{volume_line}");
    assert_eq!(&words[2..4], ["c", "true"], "{volume_line}");
    assert!(
        words[4].starts_with(&booted.root.display().to_string()),
        "the device is found under the instance's root: {volume_line}"
    );
    assert_eq!(
        lines(&out).iter().map(|l| l.split(' ').next().unwrap().to_owned()).collect::<Vec<_>>(),
        ["starting", "volume", "started"]
    );

    // The cloud calls went through the emulator: the volume attached here, committed (no
    // transaction marks), the record pointing at the instance's public address.
    let volumes = stack.volumes_of(&domain).await;
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let (id, attached, state, tags) = &volumes[0];
    assert_eq!(id, &volume);
    assert_eq!(attached.as_deref(), Some(instance.as_str()), "{volumes:?}");
    assert_eq!(state, "in-use");
    assert!(tags.iter().any(|t| t == TAG_POOL), "{tags:?}");
    assert!(!tags.iter().any(|t| t == TAG_TRANSACTION || t == TAG_IN_TRANSIT), "{tags:?}");
    let record = format!("{instance}.{zone_name}.");
    assert_eq!(stack.a_record(&zone, &record).await, Some(vec![ip.clone()]));

    // A spot interruption, two minutes ahead as AWS warns.
    let deadline = SystemTime::now() + Duration::from_secs(120);
    let notice_time = humantime::format_rfc3339_seconds(deadline).to_string();
    let interruption =
        SpotInterruption { action: SpotAction::Terminate, time: Some(notice_time.clone()) };
    stack.emulator.trigger_spot_interruption(&instance, &interruption).await.unwrap();
    let status = eventually("fleetd to exit", Duration::from_secs(100), || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    let stderr = stderr_of(&mut child);
    assert!(SystemTime::now() < deadline, "fleetd exited after the notice's deadline");
    assert_eq!(status.code(), Some(0), "{stderr}");
    let interrupted = line_starting(&out, "interrupted").await;
    assert_eq!(interrupted, format!("interrupted terminate {notice_time} {instance}"));
    assert!(!lines(&out).iter().any(|l| l.starts_with("stopping ")), "{:?}", lines(&out));
    // The volume's own `interrupted` hook ran after the domain's, while it was still held.
    let last: Vec<String> = lines(&out).into_iter().rev().take(2).collect();
    assert_eq!(
        last,
        [format!("volume-interrupted {volume} interrupted"), interrupted.clone()],
        "{:?}",
        lines(&out)
    );

    // Undone: the record gone, the volume detached and kept in its pool.
    assert_eq!(stack.a_record(&zone, &record).await, None);
    let volumes = stack.volumes_of(&domain).await;
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let (_, attached, state, tags) = &volumes[0];
    assert_eq!((attached.as_deref(), state.as_str()), (None, "available"), "{volumes:?}");
    assert!(tags.iter().any(|t| t == TAG_POOL), "{tags:?}");
    assert!(
        !fs_err::read_to_string(work.path().join("state/lifecycle-holds.json"))
            .unwrap_or_default()
            .contains(&volume),
        "fleetd still holds the volume"
    );

    stack.emulator.clear_spot_interruption(&instance).await.unwrap();
    stack.ec2().terminate_instances().instance_ids(&instance).send().await.unwrap();
    stack.ec2().delete_volume().volume_id(&volume).send().await.unwrap();
}
