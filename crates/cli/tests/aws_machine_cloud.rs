//! `flotilla_aws::AwsMachineCloud` driven directly against the emulator stack: real EC2
//! attachments (with the emulator's attach/detach timing and its NVMe device files under each
//! instance's root), Route 53, SNS and SQS as moto serves them.
//!
//! Each test has its own scope (access key id), so its timings and resources are its own.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use flotilla_agent::{
    ClaimedVolume, MachineCloud, MachineFacts, Notification, RecordChange, Release, VolumeClaim,
};
use flotilla_aws::AwsMachineCloud;
use flotilla_aws::machine::Schedule;
use flotilla_aws::machine::volumes::{
    EC2FLEETD_TAG_DOMAIN, EC2FLEETD_TAG_POOL, TAG_DOMAIN, TAG_IN_TRANSIT, TAG_LAST_USED, TAG_POOL,
    TAG_TRANSACTION,
};
use flotilla_emulator::control::{BootState, Emulator, Scope, StateTiming, VolumeTiming};
use flotilla_emulator::devices::by_id_link;
use flotilla_spec::fleetd::{AttachVolume, NotifyBackend, PoolPreference, VolumeSource};

const REGION: &str = "us-east-1";
const ZONE: &str = "us-east-1a";
/// How long a terminated instance's volumes stay attached in these tests.
const RELEASE_AFTER_TERMINATE: Duration = Duration::from_millis(1500);

/// One test's view of the stack: its scope, SDK config and the machine's cloud.
struct Stack {
    emulator: Emulator,
    scope: Scope,
    sdk: aws_types::SdkConfig,
    cloud: AwsMachineCloud,
    /// The test's domain: tests (and runs) share the emulator's account, so pools are per test.
    domain: String,
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
                release_after_terminate: RELEASE_AFTER_TERMINATE,
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
        let cloud = AwsMachineCloud::new(sdk.clone()).with_schedule(Schedule::Fast);
        let domain = format!("db-{}", scope.access_key_id().to_ascii_lowercase());
        Stack { emulator, scope, sdk, cloud, domain }
    }

    fn claim(&self, machine: MachineFacts, entry: AttachVolume, wait: Duration) -> VolumeClaim {
        VolumeClaim { machine, domain: self.domain.clone(), entry, wait, first_run: false }
    }

    fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk)
    }

    /// Launches `count` instances in the zone and waits until the booter has their roots.
    async fn launch(&self, count: i32) -> Vec<(String, PathBuf)> {
        let answer = self
            .ec2()
            .run_instances()
            .image_id("ami-0flotillatest")
            .instance_type(InstanceType::T3Micro)
            .min_count(count)
            .max_count(count)
            .placement(aws_sdk_ec2::types::Placement::builder().availability_zone(ZONE).build())
            .send()
            .await
            .expect("RunInstances");
        let mut machines = Vec::new();
        for instance in answer.instances() {
            let id = instance.instance_id().unwrap().to_owned();
            let booted = self
                .emulator
                .wait_booted(&id, Duration::from_secs(30), |b| {
                    matches!(b.state, BootState::Running | BootState::Exited)
                })
                .await
                .expect("the booter boots the instance");
            machines.push((id, booted.root));
        }
        machines
    }

    async fn terminate(&self, ids: &[&str]) {
        self.ec2()
            .terminate_instances()
            .set_instance_ids(Some(ids.iter().map(|s| (*s).to_owned()).collect()))
            .send()
            .await
            .expect("TerminateInstances");
    }

    /// A 1 GiB volume in the zone with `tags`.
    async fn volume(&self, tags: &[(&str, &str)]) -> String {
        let tags: Vec<Tag> =
            tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect();
        let specification = (!tags.is_empty()).then(|| {
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .set_tags(Some(tags))
                .build()
        });
        self.ec2()
            .create_volume()
            .availability_zone(ZONE)
            .size(1)
            .set_tag_specifications(specification.map(|s| vec![s]))
            .send()
            .await
            .expect("CreateVolume")
            .volume_id()
            .unwrap()
            .to_owned()
    }

    async fn describe(&self, id: &str) -> Option<aws_sdk_ec2::types::Volume> {
        match self.ec2().describe_volumes().volume_ids(id).send().await {
            Ok(answer) => answer.volumes().first().cloned(),
            Err(error) => {
                let code = aws_sdk_ec2::error::ProvideErrorMetadata::code(&error);
                assert_eq!(code, Some("InvalidVolume.NotFound"), "{error:?}");
                None
            }
        }
    }

    /// The instance EC2 reports the volume attached to, with the attachment's state.
    async fn attached_to(&self, id: &str) -> Option<(String, String)> {
        let volume = self.describe(id).await?;
        volume.attachments().first().map(|a| {
            (
                a.instance_id().unwrap_or_default().to_owned(),
                a.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            )
        })
    }

    async fn tags(&self, id: &str) -> Vec<(String, String)> {
        let volume = self.describe(id).await.expect("the volume exists");
        volume
            .tags()
            .iter()
            .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap_or("").to_owned()))
            .collect()
    }
}

fn facts(instance_id: &str, transaction: &str) -> MachineFacts {
    MachineFacts {
        instance_id: instance_id.to_owned(),
        region: REGION.to_owned(),
        zone: ZONE.to_owned(),
        index: Some(0),
        transaction_id: transaction.to_owned(),
    }
}

fn entry(device: &str, sources: &[VolumeSource]) -> AttachVolume {
    AttachVolume {
        device: device.to_owned(),
        source: sources.to_vec(),
        volume_id: None,
        pool_name: Some("data".to_owned()),
        create: Some(serde_json::Map::from_iter([
            ("Size".to_owned(), serde_json::json!(2)),
            ("VolumeType".to_owned(), serde_json::json!("gp3")),
        ])),
        critical: true,
        exec: Vec::new(),
        pool_pref: PoolPreference::Random,
    }
}

/// Whether the device of `volume` shows under `root`, as the engine looks for it.
fn device_present(root: &std::path::Path, volume: &str) -> bool {
    fs_err::metadata(by_id_link(root, volume)).is_ok_and(|m| m.is_file())
}

/// Waits (bounded) for the booter to make or remove a device file after a listing change.
async fn wait_device(root: &std::path::Path, volume: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while device_present(root, volume) != present {
        assert!(
            Instant::now() < deadline,
            "the device of {volume} under {} is still {}",
            root.display(),
            if present { "missing" } else { "there" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_two_serves_three_racing_machines_one_volume_each() {
    let stack = Stack::new("mcpool").await;
    // One pool volume under flotilla's tags, one under ec2fleetd's: both are the pool.
    let ours = stack.volume(&[(TAG_DOMAIN, stack.domain.as_str()), (TAG_POOL, "data")]).await;
    let theirs = stack
        .volume(&[(EC2FLEETD_TAG_DOMAIN, stack.domain.as_str()), (EC2FLEETD_TAG_POOL, "data")])
        .await;
    let other_pool = stack.volume(&[(TAG_DOMAIN, stack.domain.as_str()), (TAG_POOL, "logs")]).await;
    let machines = stack.launch(4).await;
    let wait = Duration::from_secs(10);
    let claims: Vec<VolumeClaim> = machines[..3]
        .iter()
        .map(|(id, _)| {
            stack.claim(
                facts(id, &format!("t-{id}")),
                entry("/dev/sdf", &[VolumeSource::Pool, VolumeSource::Create]),
                wait,
            )
        })
        .collect();
    let (a, b, c) = tokio::join!(
        stack.cloud.claim_volume(&claims[0]),
        stack.cloud.claim_volume(&claims[1]),
        stack.cloud.claim_volume(&claims[2]),
    );
    let got: Vec<ClaimedVolume> = vec![a.unwrap(), b.unwrap(), c.unwrap()];
    let ids: BTreeSet<&str> = got.iter().map(|v| v.volume_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "three distinct volumes: {got:?}");
    let from_pool: BTreeSet<&str> = got
        .iter()
        .filter(|v| v.source == VolumeSource::Pool)
        .map(|v| v.volume_id.as_str())
        .collect();
    assert_eq!(from_pool, BTreeSet::from([ours.as_str(), theirs.as_str()]), "{got:?}");
    assert!(!ids.contains(other_pool.as_str()), "another pool's volume is not taken");
    let created: Vec<&ClaimedVolume> =
        got.iter().filter(|v| v.source == VolumeSource::Create).collect();
    assert_eq!(created.len(), 1, "the third machine fell to `c`: {got:?}");
    assert!(created[0].created_now && created[0].attached_now);
    for (volume, (instance, root)) in got.iter().zip(&machines) {
        assert_eq!(
            stack.attached_to(&volume.volume_id).await,
            Some((instance.clone(), "attached".to_owned())),
            "EC2 reports {} attached to the machine that claimed it",
            volume.volume_id
        );
        wait_device(root, &volume.volume_id, true).await;
    }

    // A re-run finds what each machine holds and changes nothing.
    for (claimed, request) in got.iter().zip(&claims) {
        let again = stack.cloud.claim_volume(request).await.unwrap();
        assert_eq!(again.volume_id, claimed.volume_id);
        assert!(!again.attached_now, "{again:?}");
        assert_eq!(again.created_now, claimed.created_now);
    }

    // The created volume joins the pool at commit: its transaction marks go, its pool tags stay.
    let created = created[0].clone();
    let creator = &claims[got.iter().position(|v| v.volume_id == created.volume_id).unwrap()];
    let tags = stack.tags(&created.volume_id).await;
    assert!(tags.contains(&(TAG_IN_TRANSIT.to_owned(), "true".to_owned())), "{tags:?}");
    stack.cloud.commit_volume(&creator.machine, &created).await.unwrap();
    let tags = stack.tags(&created.volume_id).await;
    let keys: BTreeSet<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
    assert!(!keys.contains(TAG_IN_TRANSIT) && !keys.contains(TAG_TRANSACTION), "{tags:?}");
    assert!(tags.contains(&(TAG_POOL.to_owned(), "data".to_owned())), "{tags:?}");

    // A fourth machine with only `p` finds every volume in use, and says which sources it tried.
    let (fourth, fourth_root) = &machines[3];
    let only_pool = stack.claim(
        facts(fourth, "t-4"),
        entry("/dev/sdf", &[VolumeSource::Pool]),
        Duration::from_secs(1),
    );
    let error = stack.cloud.claim_volume(&only_pool).await.unwrap_err();
    assert!(error.message.contains("p: all 3 volumes of pool data"), "{error}");
    assert!(error.message.contains("in use by running instances"), "{error}");

    // Released (kept), the volume is detached, its device gone, its last use tagged; back in the
    // pool, the fourth machine gets it.
    let released = &got[0];
    let (first, first_root) = &machines[0];
    stack.cloud.release_volume(&claims[0].machine, released, Release::Keep).await.unwrap();
    assert_eq!(stack.attached_to(&released.volume_id).await, None);
    assert_eq!(
        stack.describe(&released.volume_id).await.unwrap().state().map(|s| s.as_str()),
        Some("available")
    );
    wait_device(first_root, &released.volume_id, false).await;
    let tags = stack.tags(&released.volume_id).await;
    let used = tags.iter().find(|(k, _)| k == TAG_LAST_USED).expect("last-used tag");
    assert!(humantime::parse_rfc3339(&used.1).is_ok(), "{used:?}");
    // Releasing again succeeds and changes nothing.
    stack.cloud.release_volume(&claims[0].machine, released, Release::Keep).await.unwrap();
    let mut most_recent = only_pool.clone();
    most_recent.entry.pool_pref = PoolPreference::MostRecentlyUsed;
    most_recent.wait = Duration::from_secs(10);
    let reused = stack.cloud.claim_volume(&most_recent).await.unwrap();
    assert_eq!(reused.volume_id, released.volume_id);
    assert_eq!(reused.source, VolumeSource::Pool);
    assert_eq!(
        stack.attached_to(&reused.volume_id).await,
        Some((fourth.clone(), "attached".to_owned()))
    );
    wait_device(fourth_root, &reused.volume_id, true).await;

    let ids: Vec<&str> = machines.iter().map(|(id, _)| id.as_str()).collect();
    let _ = first;
    stack.terminate(&ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_volume_waits_while_a_terminating_instance_still_holds_it() {
    let stack = Stack::new("mcfixed").await;
    let volume = stack.volume(&[]).await;
    let machines = stack.launch(2).await;
    let (old, old_root) = &machines[0];
    let (new, new_root) = &machines[1];
    let mut fixed = entry("/dev/sdg", &[VolumeSource::Fixed]);
    fixed.volume_id = Some(volume.clone());
    fixed.pool_name = None;

    let first = stack
        .cloud
        .claim_volume(&stack.claim(facts(old, "t-old"), fixed.clone(), Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!((first.source, first.attached_now), (VolumeSource::Fixed, true));
    wait_device(old_root, &volume, true).await;

    // Held by a running machine: a short wait ends naming the source, the volume and its holder.
    let error = stack
        .cloud
        .claim_volume(&stack.claim(facts(new, "t-new"), fixed.clone(), Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(error.message.contains(&format!("x: volume {volume}")), "{error}");
    assert!(error.message.contains(&format!("attached to {old}")), "{error}");

    // The old machine terminates; EC2 keeps its volume attached a while, then lets it go.
    stack.terminate(&[old]).await;
    let started = Instant::now();
    let taken = stack
        .cloud
        .claim_volume(&stack.claim(facts(new, "t-new"), fixed.clone(), Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= RELEASE_AFTER_TERMINATE - Duration::from_millis(300),
        "the claim waited for the volume to be let go ({:?})",
        started.elapsed()
    );
    assert_eq!((taken.volume_id.as_str(), taken.attached_now), (volume.as_str(), true));
    assert_eq!(stack.attached_to(&volume).await, Some((new.clone(), "attached".to_owned())));
    wait_device(new_root, &volume, true).await;
    wait_device(old_root, &volume, false).await;

    // Re-run: found attached here, not attached again.
    let again = stack
        .cloud
        .claim_volume(&stack.claim(facts(new, "t-new"), fixed, Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!((again.volume_id.as_str(), again.attached_now), (volume.as_str(), false));

    stack.cloud.release_volume(&facts(new, "t-new"), &taken, Release::Keep).await.unwrap();
    wait_device(new_root, &volume, false).await;
    assert!(stack.describe(&volume).await.is_some(), "a kept fixed volume stays");
    stack.terminate(&[new]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_volume_is_found_again_by_its_transaction_and_a_rollback_deletes_it() {
    let stack = Stack::new("mccreate").await;
    let machines = stack.launch(1).await;
    let (instance, root) = &machines[0];
    let request = stack.claim(
        facts(instance, "txn-42"),
        entry("/dev/sdh", &[VolumeSource::Create]),
        Duration::from_secs(10),
    );
    let created = stack.cloud.claim_volume(&request).await.unwrap();
    assert!(created.created_now && created.attached_now, "{created:?}");
    let volume = stack.describe(&created.volume_id).await.unwrap();
    assert_eq!(volume.size(), Some(2));
    assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(volume.availability_zone(), Some(ZONE));
    wait_device(root, &created.volume_id, true).await;

    // A crash after the create: the volume is detached again (as if never attached); the
    // re-run finds it by its transaction instead of creating another, and attaches it.
    stack
        .ec2()
        .detach_volume()
        .volume_id(&created.volume_id)
        .instance_id(instance)
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.attached_to(&created.volume_id).await.is_some() {
        assert!(Instant::now() < deadline, "DetachVolume never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = stack.cloud.claim_volume(&request).await.unwrap();
    assert_eq!(again.volume_id, created.volume_id, "the same volume, not a second one");
    assert!(again.created_now && again.attached_now);
    let transaction = stack
        .ec2()
        .describe_volumes()
        .filters(Filter::builder().name(format!("tag:{TAG_TRANSACTION}")).values("txn-42").build())
        .send()
        .await
        .unwrap();
    assert_eq!(transaction.volumes().len(), 1, "one volume for the transaction");

    // Rolled back, a volume this claim created and never committed is deleted.
    stack.cloud.release_volume(&request.machine, &again, Release::Rollback).await.unwrap();
    assert!(stack.describe(&created.volume_id).await.is_none(), "deleted");
    wait_device(root, &created.volume_id, false).await;
    // And rolling back again succeeds.
    stack.cloud.release_volume(&request.machine, &again, Release::Rollback).await.unwrap();
    stack.terminate(&[instance]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_claim_asks_no_lookup_and_takes_a_fixed_volume_found_at_its_device() {
    let stack = Stack::new("mcfirst").await;
    // Instant attachments: each wait then takes exactly one DescribeVolumes.
    stack
        .scope
        .set_volume_timing(VolumeTiming {
            attach: Duration::ZERO,
            detach: Duration::ZERO,
            release_after_terminate: RELEASE_AFTER_TERMINATE,
        })
        .await
        .unwrap();
    let machines = stack.launch(1).await;
    let (instance, _) = &machines[0];
    let describes = || async { stack.scope.counts().await.unwrap().get("ec2", "DescribeVolumes") };

    // A re-run's claim asks both lookups (one DescribeVolumes each) before it creates, then
    // waits for `available` and `attached` (one each): four.
    let mut rerun = stack.claim(
        facts(instance, "t-first"),
        entry("/dev/sdh", &[VolumeSource::Create]),
        Duration::from_secs(10),
    );
    stack.scope.reset_counts().await.unwrap();
    let created = stack.cloud.claim_volume(&rerun).await.unwrap();
    assert!(created.created_now && created.attached_now, "{created:?}");
    assert_eq!(describes().await, 4);

    // A first run's claim goes straight to CreateVolume: the two waits only.
    let mut first = rerun.clone();
    first.entry.device = "/dev/sdi".to_owned();
    first.first_run = true;
    stack.scope.reset_counts().await.unwrap();
    let second = stack.cloud.claim_volume(&first).await.unwrap();
    assert!(second.created_now && second.attached_now && second.volume_id != created.volume_id);
    assert_eq!(describes().await, 2);
    assert_eq!(stack.scope.counts().await.unwrap().get("ec2", "CreateVolume"), 1);

    // A fixed volume something else attached at the entry's device: a first run, which never
    // looked for it, takes it as it is instead of failing to attach it again.
    rerun.entry = entry("/dev/sdh", &[VolumeSource::Fixed]);
    rerun.entry.volume_id = Some(created.volume_id.clone());
    rerun.first_run = true;
    let found = stack.cloud.claim_volume(&rerun).await.unwrap();
    assert_eq!((found.volume_id.as_str(), found.attached_now), (created.volume_id.as_str(), false));
    assert_eq!(found.source, VolumeSource::Fixed);

    for volume in [&created, &second] {
        stack.cloud.release_volume(&rerun.machine, volume, Release::Rollback).await.unwrap();
    }
    stack.terminate(&[instance]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_volume_kept_before_its_commit_joins_its_pool() {
    let stack = Stack::new("mckeep").await;
    let machines = stack.launch(1).await;
    let (instance, root) = (&machines[0].0, &machines[0].1);
    let request = stack.claim(
        facts(instance, "txn-keep"),
        entry("/dev/sdh", &[VolumeSource::Create]),
        Duration::from_secs(10),
    );
    let created = stack.cloud.claim_volume(&request).await.unwrap();
    assert!(created.created_now);
    let keys = |tags: Vec<(String, String)>| -> BTreeSet<String> {
        tags.into_iter().map(|(key, _)| key).collect()
    };
    let marked = keys(stack.tags(&created.volume_id).await);
    assert!(marked.contains(TAG_IN_TRANSIT) && marked.contains(TAG_TRANSACTION), "{marked:?}");
    wait_device(root, &created.volume_id, true).await;

    // Released with Keep before any commit (fleetd interrupted during init).
    stack.cloud.release_volume(&request.machine, &created, Release::Keep).await.unwrap();
    assert_eq!(stack.attached_to(&created.volume_id).await, None);
    let kept = keys(stack.tags(&created.volume_id).await);
    for key in [TAG_DOMAIN, TAG_POOL, TAG_LAST_USED] {
        assert!(kept.contains(key), "{key} in {kept:?}");
    }
    for key in [TAG_IN_TRANSIT, TAG_TRANSACTION] {
        assert!(!kept.contains(key), "{key} in {kept:?}");
    }
    // It is a pool volume now: another machine's `p` claim of the pool gets it.
    let pool_claim = stack.claim(
        facts(instance, "txn-keep-2"),
        entry("/dev/sdi", &[VolumeSource::Pool]),
        Duration::from_secs(10),
    );
    let claimed = stack.cloud.claim_volume(&pool_claim).await.unwrap();
    assert_eq!(claimed.volume_id, created.volume_id);
    assert_eq!(claimed.source, VolumeSource::Pool);
    stack.cloud.release_volume(&pool_claim.machine, &claimed, Release::Keep).await.unwrap();
    stack.terminate(&[instance]).await;
    stack.ec2().delete_volume().volume_id(&created.volume_id).send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_a_crashed_run_left_in_transit_are_found_by_the_next_run_only() {
    let stack = Stack::new("mcsweep").await;
    let machines = stack.launch(2).await;
    let (instance, other) = (&machines[0].0, &machines[1].0);
    let domains = vec![stack.domain.clone()];
    // A run that crashed after its claim: created and attached, never committed.
    let crashed = stack.claim(
        facts(instance, "txn-crashed"),
        entry("/dev/sdj", &[VolumeSource::Create]),
        Duration::from_secs(10),
    );
    let left = stack.cloud.claim_volume(&crashed).await.unwrap();
    let creator = stack.tags(&left.volume_id).await;
    assert!(
        creator
            .iter()
            .any(|(k, v)| k == flotilla_aws::machine::volumes::TAG_CREATOR && v == instance),
        "{creator:?}"
    );
    // And one it committed, which is in its pool, not in transit.
    let committed_claim = stack.claim(
        facts(instance, "txn-crashed"),
        entry("/dev/sdk", &[VolumeSource::Create]),
        Duration::from_secs(10),
    );
    let committed = stack.cloud.claim_volume(&committed_claim).await.unwrap();
    stack.cloud.commit_volume(&committed_claim.machine, &committed).await.unwrap();

    // The same transaction (a restarted agent of the same boot) takes its claims up again:
    // nothing is left over for it.
    let same = facts(instance, "txn-crashed");
    assert!(stack.cloud.volumes_left_in_transit(&same, &domains).await.unwrap().is_empty());
    // Another machine did not create it.
    let elsewhere = facts(other, "txn-next");
    assert!(stack.cloud.volumes_left_in_transit(&elsewhere, &domains).await.unwrap().is_empty());
    // The next run of this machine finds it, as its claim returned it.
    let next = facts(instance, "txn-next");
    let found = stack.cloud.volumes_left_in_transit(&next, &domains).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].volume_id, left.volume_id);
    assert_eq!(found[0].device, "/dev/sdj");
    assert!(found[0].created_now);
    assert_eq!(found[0].pool_name.as_deref(), Some("data"));
    // Rolled back, it is gone; the committed one stays attached.
    stack.cloud.release_volume(&next, &found[0], Release::Rollback).await.unwrap();
    assert!(stack.describe(&left.volume_id).await.is_none(), "deleted");
    assert!(stack.cloud.volumes_left_in_transit(&next, &domains).await.unwrap().is_empty());
    assert_eq!(
        stack.attached_to(&committed.volume_id).await.map(|a| a.0).as_deref(),
        Some(instance.as_str())
    );
    stack.cloud.release_volume(&next, &committed, Release::Keep).await.unwrap();
    stack.terminate(&[instance, other]).await;
    stack.ec2().delete_volume().volume_id(&committed.volume_id).send().await.unwrap();
}

/// A hosted zone of its own for a test.
async fn hosted_zone(stack: &Stack, name: &str) -> String {
    let route53 = aws_sdk_route53::Client::new(&stack.sdk);
    let zone = route53
        .create_hosted_zone()
        .name(name)
        .caller_reference(format!("{name}-{}", stack.scope.access_key_id()))
        .send()
        .await
        .unwrap();
    zone.hosted_zone().unwrap().id().to_owned()
}

/// (TTL, values) of the record `name` of `kind`, if there is one.
async fn record(stack: &Stack, zone: &str, name: &str, kind: &str) -> Option<(i64, Vec<String>)> {
    let route53 = aws_sdk_route53::Client::new(&stack.sdk);
    let sets = route53.list_resource_record_sets().hosted_zone_id(zone).send().await.unwrap();
    sets.resource_record_sets()
        .iter()
        .find(|s| {
            s.name().trim_end_matches('.') == name.trim_end_matches('.')
                && s.r#type().as_str() == kind
        })
        .map(|s| {
            (
                s.ttl().unwrap_or(0),
                s.resource_records().iter().map(|r| r.value().to_owned()).collect(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_upserted_and_restored_exactly() {
    let stack = Stack::new("mcrecords").await;
    let domain = format!("{}.example.com", stack.scope.access_key_id().to_ascii_lowercase());
    let zone = hosted_zone(&stack, &domain).await;
    let route53 = aws_sdk_route53::Client::new(&stack.sdk);
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
    };
    let existing = format!("db.{domain}.");
    route53
        .change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(
                            ResourceRecordSet::builder()
                                .name(&existing)
                                .r#type(RrType::A)
                                .ttl(300)
                                .resource_records(
                                    ResourceRecord::builder().value("192.0.2.1").build().unwrap(),
                                )
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let here: IpAddr = "127.0.0.9".parse().unwrap();
    // An existing record, named without the trailing dot: saved, replaced, restored exactly.
    let change = RecordChange {
        hosted_zone: zone.clone(),
        name: existing.trim_end_matches('.').to_owned(),
        ttl: 60,
        address: here,
        wait_in_sync: true,
    };
    let hold = stack.cloud.upsert_record(&change).await.unwrap();
    let previous = hold.previous.clone().expect("the existing record was saved");
    assert_eq!(
        (previous.record_type.as_str(), previous.ttl, previous.values.clone()),
        ("A", Some(300), vec!["192.0.2.1".to_owned()])
    );
    assert_eq!(
        record(&stack, &zone, &existing, "A").await,
        Some((60, vec!["127.0.0.9".to_owned()]))
    );
    // A re-run changes nothing and says the record is ours.
    let again = stack.cloud.upsert_record(&change).await.unwrap();
    assert_eq!(again.previous, None);
    assert_eq!(
        record(&stack, &zone, &existing, "A").await,
        Some((60, vec!["127.0.0.9".to_owned()]))
    );
    stack.cloud.restore_record(&hold).await.unwrap();
    assert_eq!(
        record(&stack, &zone, &existing, "A").await,
        Some((300, vec!["192.0.2.1".to_owned()]))
    );
    // Restored already: nothing to do, and the restored record is left alone.
    stack.cloud.restore_record(&hold).await.unwrap();
    assert_eq!(
        record(&stack, &zone, &existing, "A").await,
        Some((300, vec!["192.0.2.1".to_owned()]))
    );

    // A new name, with the trailing dot, IPv4 and IPv6: made, then deleted at restore.
    for (address, kind) in [("127.0.0.9", "A"), ("2001:db8::9", "AAAA")] {
        let fresh = format!("node-3.{domain}.");
        let change = RecordChange {
            hosted_zone: format!("/hostedzone/{}", zone.trim_start_matches("/hostedzone/")),
            name: fresh.clone(),
            ttl: 30,
            address: address.parse().unwrap(),
            wait_in_sync: false,
        };
        let hold = stack.cloud.upsert_record(&change).await.unwrap();
        assert_eq!(hold.previous, None);
        assert_eq!(record(&stack, &zone, &fresh, kind).await, Some((30, vec![address.to_owned()])));
        stack.cloud.restore_record(&hold).await.unwrap();
        assert_eq!(record(&stack, &zone, &fresh, kind).await, None, "{kind} deleted");
        stack.cloud.restore_record(&hold).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_sqs_directly_and_through_an_sns_subscription() {
    let stack = Stack::new("mcnotify").await;
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    let sns = aws_sdk_sns::Client::new(&stack.sdk);
    let suffix = stack.scope.access_key_id().to_ascii_lowercase();
    let direct = sqs.create_queue().queue_name(format!("direct-{suffix}")).send().await.unwrap();
    let direct = direct.queue_url().unwrap().to_owned();
    let relayed = sqs.create_queue().queue_name(format!("relayed-{suffix}")).send().await.unwrap();
    let relayed = relayed.queue_url().unwrap().to_owned();
    let relayed_arn = sqs
        .get_queue_attributes()
        .queue_url(&relayed)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let topic = sns.create_topic().name(format!("events-{suffix}")).send().await.unwrap();
    let topic = topic.topic_arn().unwrap().to_owned();
    sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(&relayed_arn).send().await.unwrap();

    let subject = "Fleetd db on i-1 state changed to [started]";
    let body = r#"{"domain": "db", "daemon_state": "started"}"#;
    stack
        .cloud
        .notify(&Notification {
            backend: NotifyBackend::Sqs,
            region: REGION.to_owned(),
            topic: None,
            queue_url: Some(direct.clone()),
            subject: subject.to_owned(),
            body: body.to_owned(),
        })
        .await
        .unwrap();
    let received = sqs
        .receive_message()
        .queue_url(&direct)
        .message_attribute_names("All")
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let message = received.messages().first().expect("a message on the queue");
    assert_eq!(message.body(), Some(body));
    let attribute = &message.message_attributes().expect("attributes")["subject"];
    assert_eq!(attribute.data_type(), "String");
    assert_eq!(attribute.string_value(), Some(subject));

    // Through SNS: the subject (cleaned for SNS) and the body arrive in SNS's envelope.
    stack
        .cloud
        .notify(&Notification {
            backend: NotifyBackend::Sns,
            region: REGION.to_owned(),
            topic: Some(topic.clone()),
            queue_url: None,
            subject: format!("{subject}\nsecond line {}", "z".repeat(200)),
            body: body.to_owned(),
        })
        .await
        .unwrap();
    let received =
        sqs.receive_message().queue_url(&relayed).wait_time_seconds(1).send().await.unwrap();
    let envelope: serde_json::Value = serde_json::from_str(
        received.messages().first().expect("a relayed message").body().unwrap(),
    )
    .unwrap();
    assert_eq!(envelope["Message"], body);
    assert_eq!(envelope["TopicArn"], topic.as_str());
    let sent_subject = envelope["Subject"].as_str().unwrap();
    assert!(sent_subject.starts_with(&format!("{subject} second line z")), "{sent_subject}");
    assert!(sent_subject.len() < 100, "{sent_subject}");

    // One attempt, and the error names the call, the topic and SNS's code.
    let missing = format!("{topic}-missing");
    let error = stack
        .cloud
        .notify(&Notification {
            backend: NotifyBackend::Sns,
            region: REGION.to_owned(),
            topic: Some(missing.clone()),
            queue_url: None,
            subject: subject.to_owned(),
            body: body.to_owned(),
        })
        .await
        .unwrap_err();
    assert!(error.operation.contains(&format!("SNS Publish to {missing}")), "{error}");
    assert_eq!(error.code.as_deref(), Some("NotFound"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_operation_ids_and_aws_code() {
    let stack = Stack::new("mcerrors").await;
    let error = stack
        .cloud
        .upsert_record(&RecordChange {
            hosted_zone: "ZNOSUCHZONE0001".to_owned(),
            name: "a.example.com.".to_owned(),
            ttl: 60,
            address: "127.0.0.9".parse().unwrap(),
            wait_in_sync: false,
        })
        .await
        .unwrap_err();
    assert!(error.operation.contains("ZNOSUCHZONE0001"), "{error}");
    assert!(error.operation.contains("ListResourceRecordSets a.example.com."), "{error}");
    assert_eq!(error.code.as_deref(), Some("NoSuchHostedZone"), "{error}");
    assert!(!error.retryable);
    assert!(error.to_string().contains("(NoSuchHostedZone)"), "{error}");

    // A claim whose every source gives nothing names each with its reason.
    let machines = stack.launch(1).await;
    let (instance, _) = &machines[0];
    let mut nothing = entry("/dev/sdf", &[VolumeSource::Fixed, VolumeSource::Pool]);
    nothing.volume_id = Some("vol-0123456789abcdef0".to_owned());
    nothing.pool_name = Some("empty".to_owned());
    let error = stack
        .cloud
        .claim_volume(&stack.claim(facts(instance, "t"), nothing, Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(error.operation.contains(instance), "{error}");
    assert!(error.message.contains("x: volume vol-0123456789abcdef0 does not exist"), "{error}");
    assert!(
        error.message.contains(&format!(
            "p: pool empty of domain {} has no volume in us-east-1a",
            stack.domain
        )),
        "{error}"
    );
    stack.terminate(&[instance]).await;
}
