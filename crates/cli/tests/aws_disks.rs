//! Data disks against the emulator: an entry's `disks` become volumes created with each
//! machine, attached at their devices with the type, size, IOPS, throughput, snapshot and key
//! the spec asks for, tagged with the deployment's tags, their device, mount point and label;
//! a clone by tag takes the newest of the snapshots carrying it; a tag no snapshot carries is
//! refused, located, before anything is made. A disk with a `mount` is formatted (it is empty)
//! and mounted by the agent before the binary starts, really: the emulator's device files are
//! sparse files of the volume's size, loop-mounted (this needs root).

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification, VolumeType};
use common::aws::AwsFleet;
use common::*;
use flotilla_emulator::control::Emulator;

/// A snapshot of a new `size` GiB volume in us-east-1a, tagged `backup=<value>`.
async fn tagged_snapshot(ec2: &aws_sdk_ec2::Client, size: i32, value: &str) -> String {
    let volume = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(size)
        .volume_type(VolumeType::Gp3)
        .send()
        .await
        .unwrap();
    let snapshot = ec2
        .create_snapshot()
        .volume_id(volume.volume_id().unwrap())
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(Tag::builder().key("backup").value(value).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    ec2.delete_volume().volume_id(volume.volume_id().unwrap()).send().await.unwrap();
    snapshot.snapshot_id().unwrap().to_owned()
}

/// One machine with two data disks: a provisioned gp3 disk with a label and a mount point, and
/// an io2 disk cloned from the newest snapshot tagged `backup=<tag>` (two carry it; the newer
/// is 8 GiB, so the disk, given no size, is 8 GiB), encrypted with a key named by alias.
#[test]
fn an_entrys_disks_are_created_typed_cloned_from_the_newest_tagged_snapshot_and_tagged() {
    let fleet = AwsFleet::new("disks");
    let _emulator = Emulator::require();
    let runtime = runtime();
    let config = runtime.block_on(fleet.sdk());
    let ec2 = runtime.block_on(fleet.ec2("us-east-1"));
    let kms = aws_sdk_kms::Client::new(&config);

    let (older, newer) = runtime.block_on(async {
        let older = tagged_snapshot(&ec2, 5, &fleet.tag).await;
        // EC2 answers start times to the second: keep the two apart.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let newer = tagged_snapshot(&ec2, 8, &fleet.tag).await;
        (older, newer)
    });
    assert_ne!(older, newer);
    let key_id = runtime.block_on(async {
        let key = kms.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_owned();
        kms.create_alias()
            .alias_name(format!("alias/disks-{}", fleet.tag))
            .target_key_id(&key_id)
            .send()
            .await
            .unwrap();
        key_id
    });

    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let spec = format!(
        "tag: {tag}\nprovider: aws\ntags: {{Team: data}}\nmonitoring: {{instance_type: {monitoring}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: db\n  region: us-east-1\n  instance_type: {native}\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: app.conf\n  profiling: false\n  disks:\n    /dev/sdf: {{type: \"gp3:4000:250\", size: 20, label: \"role:data,tier:hot\", mount: /data}}\n    /dev/sdg: {{type: \"io2:1000\", clone: \"backup:{tag}\", encrypt_key: alias/disks-{tag}}}\nports: []\n",
        tag = fleet.tag,
        monitoring = native_monitoring_type(),
        native = native_type(),
        binary = fleet_app_bin().display(),
    );
    let spec = fleet.write("fleet.yaml", &spec).display().to_string();
    let output =
        fleet.run_ok(&["create", "--config", &spec, "--ip", "198.51.100.7", "--output", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");

    runtime.block_on(async {
        let described = ec2.describe_instances().filters(fleet.tag_filter()).send().await.unwrap();
        let db = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| tags_of(i.tags()).get("flotilla:machine").map(String::as_str) == Some("db"))
            .expect("the db machine runs");
        let db_id = db.instance_id().unwrap();
        let volumes = ec2
            .describe_volumes()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("attachment.instance-id")
                    .values(db_id)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let by_device: BTreeMap<String, &aws_sdk_ec2::types::Volume> = volumes
            .volumes()
            .iter()
            .map(|v| (v.attachments()[0].device().unwrap().to_owned(), v))
            .collect();
        let devices: Vec<&str> = by_device.keys().map(String::as_str).collect();
        assert!(devices.contains(&"/dev/sdf") && devices.contains(&"/dev/sdg"), "{devices:?}");
        assert_eq!(devices.len(), 3, "the root volume and two data disks: {devices:?}");

        let data = by_device["/dev/sdf"];
        assert_eq!(data.volume_type(), Some(&VolumeType::Gp3));
        assert_eq!(
            (data.size(), data.iops(), data.throughput()),
            (Some(20), Some(4000), Some(250))
        );
        assert_eq!(data.encrypted(), Some(false), "{data:?}");
        assert!(data.snapshot_id().unwrap_or_default().is_empty(), "{data:?}");
        // Deleted with the machine, as the instance's mappings say (and destroy shows below).
        for mapping in db.block_device_mappings() {
            let ebs = mapping.ebs().unwrap();
            assert_eq!(ebs.delete_on_termination(), Some(true), "{mapping:?}");
        }
        let tags = tags_of(data.tags());
        for (key, value) in [
            ("role", "data"),
            ("tier", "hot"),
            ("flotilla:device", "/dev/sdf"),
            ("flotilla:mount", "/data"),
            ("flotilla:machine", "db"),
            ("flotilla:deployment", fleet.tag.as_str()),
            ("Team", "data"),
        ] {
            assert_eq!(tags.get(key).map(String::as_str), Some(value), "{key}: {tags:?}");
        }

        let clone = by_device["/dev/sdg"];
        assert_eq!(clone.snapshot_id(), Some(newer.as_str()), "the newer of the tagged snapshots");
        assert_eq!(clone.volume_type(), Some(&VolumeType::Io2));
        assert_eq!((clone.size(), clone.iops()), (Some(8), Some(1000)), "the snapshot's size");
        assert_eq!(clone.encrypted(), Some(true));
        assert!(clone.kms_key_id().is_some_and(|k| k.contains(&key_id)), "{clone:?}");
        let tags = tags_of(clone.tags());
        assert_eq!(tags.get("flotilla:device").map(String::as_str), Some("/dev/sdg"), "{tags:?}");
        assert!(!tags.contains_key("role") && !tags.contains_key("flotilla:mount"), "{tags:?}");
        assert_eq!(tags.get("Team").map(String::as_str), Some("data"), "{tags:?}");
    });

    // Deleted with the machine.
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = runtime.block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "{left:?}");
    runtime.block_on(async {
        let volumes = ec2.describe_volumes().filters(fleet.tag_filter()).send().await.unwrap();
        let attached: Vec<_> = volumes
            .volumes()
            .iter()
            .filter(|v| v.state().is_some_and(|s| s.as_str() != "deleted"))
            .collect();
        assert!(attached.is_empty(), "volumes outlive their machine: {attached:?}");
    });
}

/// `(source, fstype)` of what is mounted at `point` per `findmnt`, if anything.
fn findmnt(point: &std::path::Path) -> Option<(String, String)> {
    let output = std::process::Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE", "--mountpoint"])
        .arg(point)
        .output()
        .unwrap_or_else(|e| panic!("findmnt (util-linux) is needed: {e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    Some((words.next()?.to_owned(), words.next()?.to_owned()))
}

/// `blkid -p -o export` of `device` as key → value.
fn blkid(device: &std::path::Path) -> BTreeMap<String, String> {
    let output = std::process::Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(device)
        .output()
        .unwrap_or_else(|e| panic!("blkid (util-linux) is needed: {e}"));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Two disks with mount points: the agent finds each one's volume by its device, formats it
/// (empty: ext4, labelled with the device's name) and mounts it before the binary starts. The
/// binary is a wrapper that refuses to start unless `/data` is a mount point and writes a file
/// there; the test finds that file on the mounted filesystem, each filesystem on its own
/// volume's device, and the mounts gone once destroy stopped the agent.
#[test]
fn disks_with_a_mount_are_formatted_and_mounted_before_the_binary_starts() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test loop-mounts the emulator's device files: run it as root (loop mounts need root)"
    );
    let fleet = AwsFleet::new("disks-mount");
    let emulator = Emulator::require();
    let runtime = runtime();
    let ec2 = runtime.block_on(fleet.ec2("us-east-1"));

    // The binary runs in <root>/var/lib/flotilla/agent/work: the machine's /data is five up.
    let wrapper = fleet.path("db.sh");
    fs_err::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             mountpoint -q ../../../../../data || {{ echo '/data is not mounted' >&2; exit 9; }}\n\
             echo \"$FLOTILLA_NAME\" > ../../../../../data/written-by-the-binary\n\
             exec '{}' \"$@\"\n",
            fleet_app_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let spec = format!(
        "tag: {tag}\nprovider: aws\nmonitoring: {{instance_type: {monitoring}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: db\n  region: us-east-1\n  instance_type: {native}\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: app.conf\n  profiling: false\n  health: {{http: {{port: 9090, path: /health}}}}\n  disks:\n    /dev/sdf: {{type: gp3, size: 1, mount: /data}}\n    /dev/sdg: {{type: gp3, size: 2, mount: /var/log/db, filesystem: ext4}}\nports: []\n",
        tag = fleet.tag,
        monitoring = native_monitoring_type(),
        native = native_type(),
        binary = wrapper.display(),
    );
    let spec = fleet.write("fleet.yaml", &spec).display().to_string();
    fleet.run_ok(&["create", "--config", &spec, "--ip", "198.51.100.7", "--output", "json"]);

    let (db_id, volumes) = runtime.block_on(async {
        let described = ec2.describe_instances().filters(fleet.tag_filter()).send().await.unwrap();
        let db = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| tags_of(i.tags()).get("flotilla:machine").map(String::as_str) == Some("db"))
            .expect("the db machine runs")
            .clone();
        let volumes: BTreeMap<String, String> = db
            .block_device_mappings()
            .iter()
            .map(|m| {
                (
                    m.device_name().unwrap().to_owned(),
                    m.ebs().unwrap().volume_id().unwrap().to_owned(),
                )
            })
            .collect();
        (db.instance_id().unwrap().to_owned(), volumes)
    });
    let booted = runtime.block_on(emulator.booted()).unwrap();
    let root = booted.iter().find(|b| b.id == db_id).expect("the booter booted db").root.clone();

    let data = root.join("data");
    let logs = root.join("var/log/db");
    let mounted = [(&data, "/dev/sdf", "sdf"), (&logs, "/dev/sdg", "sdg")];
    let result = std::panic::catch_unwind(|| {
        for (point, device, label) in mounted {
            let (source, fstype) = findmnt(point)
                .unwrap_or_else(|| panic!("nothing is mounted at {}", point.display()));
            assert!(source.starts_with("/dev/loop"), "{source}");
            assert_eq!(fstype, "ext4");
            // The filesystem is on the device of the volume attached at that device.
            let by_id = flotilla_emulator::devices::by_id_link(&root, &volumes[device]);
            let probed = blkid(&by_id);
            assert_eq!(probed.get("TYPE").map(String::as_str), Some("ext4"), "{probed:?}");
            assert_eq!(probed.get("LABEL").map(String::as_str), Some(label), "{probed:?}");
        }
        assert_eq!(
            fs_err::read_to_string(data.join("written-by-the-binary")).unwrap().trim(),
            "db",
            "the binary started with /data mounted and wrote on it"
        );
        // Status reports the disks as the first boot steps.
        let output = fleet.run_ok(&["status", &fleet.tag_arg(), "--output", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        let db = rows.iter().find(|r| r["name"] == "db").expect("a db row");
        let steps: Vec<(String, String, String)> = db["boot"]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("a boot report: {db}"))
            .iter()
            .map(|s| {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                (text("kind"), text("target"), text("outcome"))
            })
            .collect();
        assert_eq!(
            steps[..2],
            [
                ("disk".to_owned(), "/data".to_owned(), "applied".to_owned()),
                ("disk".to_owned(), "/var/log/db".to_owned(), "applied".to_owned()),
            ],
            "{db}"
        );
    });

    // Destroy stops the agent, which unmounts its disks once the binary is down.
    // The booter stops the agent once the instance leaves `running`: poll, with a deadline.
    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let still_mounted =
        || -> Vec<_> { mounted.iter().filter(|(point, ..)| findmnt(point).is_some()).collect() };
    while !still_mounted().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let left = still_mounted();
    for (point, ..) in &left {
        let _ = std::process::Command::new("umount").arg(point).status();
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(left.is_empty(), "still mounted after destroy: {left:?}");
}

/// A clone from a tag no snapshot of the region carries, and a size below its snapshot's, are
/// refused at their lines, naming the region and the tag, before anything is made.
#[test]
fn a_clone_no_snapshot_matches_is_refused_at_its_line_before_anything_is_made() {
    let fleet = AwsFleet::new("disks-refs");
    let _emulator = Emulator::require();
    let runtime = runtime();
    let ec2 = runtime.block_on(fleet.ec2("us-east-1"));
    let snapshot = runtime.block_on(tagged_snapshot(&ec2, 30, &fleet.tag));
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let spec = format!(
        "tag: {tag}\nprovider: aws\nmonitoring: {{instance_type: {monitoring}, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- name: db\n  region: us-east-1\n  instance_type: {native}\n  storage_size: 10\n  storage_class: gp3\n  binary: {binary}\n  config: app.conf\n  profiling: false\n  disks:\n    /dev/sdf: {{type: gp3, clone: \"backup:nothing-{tag}\"}}\n    /dev/sdg: {{type: gp3, size: 10, clone: {snapshot}}}\nports: []\n",
        tag = fleet.tag,
        monitoring = native_monitoring_type(),
        native = native_type(),
        binary = fleet_app_bin().display(),
    );
    let spec = fleet.write("fleet.yaml", &spec).display().to_string();
    let output = fleet.run(&["create", "--config", &spec, "--ip", "198.51.100.7"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // Each at the line that wrote it.
    let text = fs_err::read_to_string(&spec).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for expected in [
        format!(
            "fleet.yaml:{}:34: error: instances[0].disks./dev/sdf.clone: no completed snapshot of the account in us-east-1 carries the tag backup=nothing-{}",
            line_of("nothing-"),
            fleet.tag
        ),
        format!(
            "fleet.yaml:{}:33: error: instances[0].disks./dev/sdg.size: the disk's 10 GiB are less than its snapshot {snapshot} holds (30 GiB)",
            line_of("/dev/sdg")
        ),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    let left = runtime.block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "nothing was made: {left:?}");
}
