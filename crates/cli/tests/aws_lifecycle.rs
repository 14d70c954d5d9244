//! A fleet's `lifecycle:` end to end against the emulator: three machines share a pool of two
//! data volumes plus one they create, each points an A record at itself, runs its `started`
//! hooks and says so on SQS (directly, and through SNS to a subscribed queue). A spot notice on
//! one machine runs its `interrupted` hooks, stops its binary, removes its record and puts its
//! volume back in the pool; a rebalance recommendation and a scheduled event run theirs.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use common::aws::AwsFleet;
use common::*;
use flotilla_aws::machine::volumes::{TAG_DOMAIN, TAG_LAST_USED, TAG_POOL};
use flotilla_emulator::control::{
    Emulator, RebalanceRecommendation, ScheduledEvent, SpotAction, SpotInterruption,
};
use serde_json::Value;

const REGION: &str = "us-east-1";
const ZONE: &str = "us-east-1a";
const DOMAIN: &str = "lcdata";
const POOL: &str = "chain";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name} in {rows:?}"))
}

/// The emulator's instance of the machine whose address is `ip`.
fn instance_of(fleet: &AwsFleet, ip: &str) -> String {
    let emulator = Emulator::require();
    let instances = runtime().block_on(emulator.instances()).unwrap();
    instances
        .iter()
        .filter(|i| i.state == "running")
        .find(|i| i.public_ip.map(|ip| ip.to_string()).as_deref() == Some(ip))
        .map(|i| i.id.clone())
        .unwrap_or_else(|| panic!("{}: no instance at {ip}: {instances:?}", fleet.tag))
}

/// (volume id, attached instance, state) of the test's pool volumes.
fn pool_volumes(ec2: &aws_sdk_ec2::Client) -> Vec<(String, Option<String>, String, Vec<Tag>)> {
    let answer = runtime()
        .block_on(
            ec2.describe_volumes()
                .filters(Filter::builder().name(format!("tag:{TAG_DOMAIN}")).values(DOMAIN).build())
                .send(),
        )
        .unwrap();
    answer
        .volumes()
        .iter()
        .map(|v| {
            (
                v.volume_id().unwrap().to_owned(),
                v.attachments().first().and_then(|a| a.instance_id()).map(str::to_owned),
                v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                v.tags().to_vec(),
            )
        })
        .collect()
}

/// Messages on `queue` until `count` arrived (or 30 s passed): (subject attribute, body).
fn messages(sqs: &aws_sdk_sqs::Client, queue: &str, count: usize) -> Vec<(String, String)> {
    let mut found = Vec::new();
    wait_for(&format!("{count} messages on {queue}"), Duration::from_secs(30), || {
        let received = runtime()
            .block_on(
                sqs.receive_message()
                    .queue_url(queue)
                    .max_number_of_messages(10)
                    .message_attribute_names("All")
                    .wait_time_seconds(1)
                    .send(),
            )
            .unwrap();
        for message in received.messages() {
            let subject = message
                .message_attributes()
                .and_then(|a| a.get("subject"))
                .and_then(|a| a.string_value())
                .unwrap_or_default()
                .to_owned();
            found.push((subject, message.body().unwrap_or_default().to_owned()));
            runtime()
                .block_on(
                    sqs.delete_message()
                        .queue_url(queue)
                        .receipt_handle(message.receipt_handle().unwrap())
                        .send(),
                )
                .unwrap();
        }
        (found.len() >= count).then(|| found.clone())
    })
}

/// The A records of the zone: name → values.
fn a_records(route53: &aws_sdk_route53::Client, zone: &str) -> Vec<(String, Vec<String>)> {
    let sets = runtime()
        .block_on(route53.list_resource_record_sets().hosted_zone_id(zone).send())
        .unwrap();
    sets.resource_record_sets()
        .iter()
        .filter(|s| s.r#type().as_str() == "A")
        .map(|s| {
            (
                s.name().to_owned(),
                s.resource_records().iter().map(|r| r.value().to_owned()).collect(),
            )
        })
        .collect()
}

fn hook_events(machine: &Value) -> Vec<String> {
    machine["lifecycle"]["hooks"]
        .as_array()
        .map(|hooks| {
            hooks
                .iter()
                .filter(|h| h["outcome"] == "succeeded")
                .map(|h| h["event"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_machines_share_a_volume_pool_point_records_at_themselves_and_live_their_events() {
    let fleet = AwsFleet::new("lifecycle-e2e");
    let emulator = Emulator::require();
    let sdk = runtime().block_on(fleet.sdk());
    let ec2 = runtime().block_on(fleet.ec2(REGION));
    let route53 = aws_sdk_route53::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sns = aws_sdk_sns::Client::new(&sdk);

    // The account as a user would have it: a zone, a queue, a topic relayed to a queue, and a
    // pool of two data volumes in the fleet's zone.
    let zone_name = "lifecycle-e2e.example.com";
    let zone = runtime()
        .block_on(
            route53
                .create_hosted_zone()
                .name(zone_name)
                .caller_reference(format!("{}-{}", fleet.tag, std::process::id()))
                .send(),
        )
        .unwrap();
    let zone = zone.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_owned();
    let queue = |name: &str| {
        runtime()
            .block_on(sqs.create_queue().queue_name(name).send())
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned()
    };
    let direct = queue("lifecycle-e2e-direct");
    let relayed = queue("lifecycle-e2e-relayed");
    let relayed_arn = format!("arn:aws:sqs:{REGION}:123456789012:lifecycle-e2e-relayed");
    let topic = runtime()
        .block_on(sns.create_topic().name("lifecycle-e2e").send())
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_owned();
    runtime()
        .block_on(sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(&relayed_arn).send())
        .unwrap();
    let mut pool = BTreeSet::new();
    for _ in 0..2 {
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Volume)
            .tags(Tag::builder().key(TAG_DOMAIN).value(DOMAIN).build())
            .tags(Tag::builder().key(TAG_POOL).value(POOL).build())
            .build();
        let volume = runtime()
            .block_on(
                ec2.create_volume().availability_zone(ZONE).size(1).tag_specifications(tags).send(),
            )
            .unwrap();
        pool.insert(volume.volume_id().unwrap().to_owned());
    }

    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 200\n");
    let hook = "          - argv: [sh, -c, 'echo \"$*\"', hook, '{daemon_state}', '{name}', '{event_code}']\n";
    let spec = format!(
        "tag: '{tag}'\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: node\n  count: 3\n  region: {REGION}\n  zones: [{ZONE}]\n  instance_type: t3.small\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: app.conf\n  profiling: false\n  lifecycle:\n    domains:\n      {DOMAIN}:\n        attach-volume:\n        - device: /dev/sdf\n          source: pc\n          pool-name: {POOL}\n          create: {{Size: 1, VolumeType: gp3}}\n        update-route53:\n        - hostedzone: {zone}\n          name: '{{name}}.{zone_name}'\n          ttl: 60\n        exec:\n        - on: [started, interrupted, rebalance, scheduled-event]\n          lines:\n{hook}        notify:\n        - backend: aws-sqs\n          options: {{queue-url: '{direct}'}}\n        - backend: aws-sns\n          options: {{topic: '{topic}'}}\nports: []\n",
        tag = fleet.tag,
        binary = fleet_app_bin().display(),
    );
    let spec = fleet.write("spec.yaml", &spec);
    let output = fleet.run_ok(&[
        "create",
        "--config",
        &spec.display().to_string(),
        "--ip",
        "127.0.0.1",
        "--output",
        "json",
    ]);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let names = ["node-0", "node-1", "node-2"];
    let mut instances = Vec::new();
    for name in names {
        assert_eq!(row(&rows, name)["health"], "healthy", "{rows:?}");
        instances.push(instance_of(&fleet, row(&rows, name)["ip"].as_str().unwrap()));
    }

    // Each machine holds one volume of the domain, none twice: the pool's two and one created.
    let volumes = pool_volumes(&ec2);
    let holders: Vec<&String> = volumes.iter().filter_map(|v| v.1.as_ref()).collect();
    assert_eq!(holders.len(), 3, "{volumes:?}");
    assert_eq!(
        holders.iter().collect::<BTreeSet<_>>().len(),
        3,
        "no machine holds two volumes: {volumes:?}"
    );
    for instance in &instances {
        assert!(holders.contains(&instance), "{instance} holds a volume: {volumes:?}");
    }
    for id in &pool {
        assert!(volumes.iter().any(|v| &v.0 == id && v.1.is_some()), "pool volume {id} is used");
    }
    assert_eq!(volumes.len(), 3, "one volume was created: {volumes:?}");

    // An A record per machine, at its address.
    let records = a_records(&route53, &zone);
    for name in names {
        let ip = row(&rows, name)["ip"].as_str().unwrap();
        let record = format!("{name}.{zone_name}.");
        assert!(
            records.iter().any(|(n, values)| n == &record && values == &[ip.to_owned()]),
            "{record} -> {ip} in {records:?}"
        );
    }

    // `started` ran its hooks and was told, on the queue and through the topic.
    let status = fleet.status();
    for name in names {
        assert!(hook_events(row(&status, name)).contains(&"started".to_owned()), "{status:?}");
    }
    let told = messages(&sqs, &direct, 3);
    assert!(told.iter().all(|(subject, _)| subject.contains("[started]")), "{told:?}");
    let relayed_messages = messages(&sqs, &relayed, 3);
    assert!(
        relayed_messages.iter().all(|(_, body)| body.contains("TopicArn")),
        "{relayed_messages:?}"
    );

    // A spot notice on node-1: its hooks, its binary stopped, its record gone, its volume back
    // in the pool (detached, tagged with when it was last used).
    let node1 = &instances[1];
    let node1_volume = volumes.iter().find(|v| v.1.as_ref() == Some(node1)).unwrap().0.clone();
    let interruption = SpotInterruption { action: SpotAction::Terminate, time: None };
    runtime().block_on(emulator.trigger_spot_interruption(node1, &interruption)).unwrap();
    let stopped = wait_for("node-1 stopped by the notice", Duration::from_secs(60), || {
        let status = fleet.status();
        let node = row(&status, "node-1").clone();
        (node["health"] == "stopped").then_some(node)
    });
    assert_eq!(stopped["lifecycle"]["last_event"]["event"], "interrupted", "{stopped}");
    assert!(hook_events(&stopped).contains(&"interrupted".to_owned()), "{stopped}");
    let record = format!("node-1.{zone_name}.");
    wait_for("node-1's record removed", Duration::from_secs(60), || {
        (!a_records(&route53, &zone).iter().any(|(n, _)| n == &record)).then_some(())
    });
    wait_for("node-1's volume back in the pool", Duration::from_secs(60), || {
        pool_volumes(&ec2)
            .into_iter()
            .find(|v| v.0 == node1_volume && v.1.is_none() && v.2 == "available")
            .filter(|v| v.3.iter().any(|t| t.key() == Some(TAG_LAST_USED)))
    });
    let interrupted = messages(&sqs, &direct, 1);
    assert!(interrupted.iter().any(|(s, _)| s.contains("[interrupted]")), "{interrupted:?}");

    // A rebalance recommendation and a scheduled event run their hooks.
    runtime()
        .block_on(
            emulator
                .trigger_rebalance(&instances[0], &RebalanceRecommendation { notice_time: None }),
        )
        .unwrap();
    let event = ScheduledEvent {
        code: "instance-retirement".to_owned(),
        description: None,
        event_id: None,
        not_before: None,
        not_after: None,
        state: None,
    };
    runtime().block_on(emulator.set_scheduled_events(&instances[2], &[event])).unwrap();
    wait_for("rebalance and scheduled-event hooks", Duration::from_secs(60), || {
        let status = fleet.status();
        (hook_events(row(&status, "node-0")).contains(&"rebalance".to_owned())
            && hook_events(row(&status, "node-2")).contains(&"scheduled-event".to_owned()))
        .then_some(())
    });

    runtime().block_on(emulator.clear_spot_interruption(node1)).unwrap();
    runtime().block_on(emulator.clear_rebalance(&instances[0])).unwrap();
    runtime().block_on(emulator.clear_scheduled_events(&instances[2])).unwrap();
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    // The data volumes outlive the fleet, as data should; the test removes them.
    wait_for("the volumes released", Duration::from_secs(60), || {
        pool_volumes(&ec2).iter().all(|v| v.1.is_none()).then_some(())
    });
    for (id, ..) in pool_volumes(&ec2) {
        runtime().block_on(ec2.delete_volume().volume_id(id).send()).unwrap();
    }
}
