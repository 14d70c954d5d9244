//! Fixture folders: every `fixtures/valid/*.yaml` must parse with no error and no warning;
//! every `fixtures/invalid/NAME.yaml` must fail with exactly the diagnostics in
//! `fixtures/invalid/NAME.expected` (the Display of `SpecErrors`). Run with `FLOTILLA_BLESS=1`
//! to rewrite the `.expected` files after a deliberate change, then review the diff.

use std::path::{Path, PathBuf};

use flotilla_spec::{ProviderKind, parse_fleet_spec};

fn fixtures(folder: &str) -> Vec<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(folder);
    let mut files: Vec<PathBuf> = fs_err::read_dir(&directory)
        .expect("the fixture folder exists")
        .map(|entry| entry.expect("the fixture folder is readable").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", directory.display());
    files
}

/// The fixture's path as diagnostics name it: relative, so the expected files are portable.
fn display_path(folder: &str, file: &Path) -> PathBuf {
    Path::new("fixtures").join(folder).join(file.file_name().expect("a fixture has a name"))
}

/// Reads a fixture as text. Fixtures are UTF-8 (a byte order mark is part of the text).
fn source_of(file: &Path) -> String {
    fs_err::read_to_string(file).expect("fixtures are readable UTF-8")
}

fn bless_mode() -> bool {
    std::env::var_os("FLOTILLA_BLESS").is_some_and(|value| !value.is_empty() && value != "0")
}

#[test]
fn valid_fixtures_parse_without_errors_or_warnings() {
    let mut failures = Vec::new();
    for file in fixtures("valid") {
        match parse_fleet_spec(&source_of(&file), &display_path("valid", &file)) {
            Ok(document) if document.warnings.is_empty() => {}
            Ok(document) => failures.push(format!(
                "{}: unexpected warnings:\n{}",
                file.display(),
                document.warnings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
            )),
            Err(errors) => failures.push(format!("{}:\n{errors}", file.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_fixtures_report_exactly_the_expected_diagnostics() {
    let mut failures = Vec::new();
    for file in fixtures("invalid") {
        let rendered = match parse_fleet_spec(&source_of(&file), &display_path("invalid", &file)) {
            Ok(document) => {
                failures.push(format!(
                    "{}: parsed, but must fail: {:?}",
                    file.display(),
                    document.spec
                ));
                continue;
            }
            Err(errors) => format!("{errors}\n"),
        };
        let expected_file = file.with_extension("expected");
        if bless_mode() {
            fs_err::write(&expected_file, &rendered).unwrap();
            continue;
        }
        let expected = fs_err::read_to_string(&expected_file).unwrap_or_default();
        if rendered != expected {
            failures.push(format!(
                "{}\n--- expected ({})\n{expected}--- actual\n{rendered}",
                file.display(),
                expected_file.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nif the change is deliberate, run `FLOTILLA_BLESS=1 cargo test -p flotilla-spec --test fixtures` and review the diff",
        failures.join("\n\n")
    );
}

#[test]
fn every_invalid_fixture_has_an_expected_file_and_no_expected_file_is_orphaned() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    for entry in fs_err::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        let partner = match extension {
            "yaml" => path.with_extension("expected"),
            "expected" => path.with_extension("yaml"),
            _ => panic!("unexpected file in the fixtures: {}", path.display()),
        };
        assert!(
            partner.exists() || bless_mode(),
            "{} has no partner {}",
            path.display(),
            partner.display()
        );
    }
}

fn valid(name: &str) -> flotilla_spec::SpecDocument {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid").join(name);
    parse_fleet_spec(&source_of(&file), &display_path("valid", &file))
        .expect("valid fixtures parse (checked by valid_fixtures_parse_without_errors_or_warnings)")
}

#[test]
fn every_flotilla_key_decodes_to_its_value() {
    use std::time::Duration;

    use flotilla_spec::fleet::{BatchSize, Percent};
    use flotilla_spec::{HealthCheck, RestartPolicy};

    let spec = valid("every-flotilla-key.yaml").spec;
    assert_eq!(spec.provider, Some(ProviderKind::Local));
    assert_eq!(spec.update.max_unavailable, Some(Percent(50)));
    assert_eq!(spec.update.batch(), BatchSize::Percent(50));
    assert_eq!(spec.update.health_deadline(), Duration::from_secs(90));
    assert_eq!(spec.monitoring.storage_size, 16);
    assert_eq!(spec.monitoring.storage_iops, None);
    let web = &spec.instances[0];
    assert!(web.profiling);
    assert_eq!(web.count, Some(3));
    assert_eq!(web.args, ["--listen", "0.0.0.0:8080", "--greeting=hello world", "42"]);
    assert_eq!(web.env["RUST_LOG"], "info,fleet_app=debug");
    assert_eq!(web.env["_FEATURE"], "on");
    assert_eq!(web.env["EMPTY"], "");
    assert_eq!(web.health, HealthCheck::Http { port: 8080, path: "/ready".to_owned() });
    assert_eq!(web.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(web.restart.initial_backoff, Duration::from_millis(500));
    assert_eq!(web.restart.max_backoff, Duration::from_secs(60));
    let worker = &spec.instances[1];
    assert_eq!(worker.health, HealthCheck::Tcp { port: 9000 });
    assert_eq!(worker.restart, flotilla_spec::RestartSpec::default());
    let batch = &spec.instances[2];
    assert_eq!(batch.health, HealthCheck::None);
    assert_eq!(batch.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(batch.restart.max_backoff, Duration::from_secs(30));
    let names: Vec<String> = spec.nodes().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["web-0", "web-1", "web-2", "worker-0", "batch"]);
}

#[test]
fn serde_yaml_style_and_anchors_decode_as_the_deployer_reads_them() {
    let flood = valid("flood-serde-yaml.yaml").spec;
    assert_eq!(flood.instances.len(), 3);
    assert!(flood.instances.iter().all(|instance| instance.name.len() == 64));
    assert_eq!(flood.instances[1].availability_zone_group.as_deref(), Some("group-a"));
    assert_eq!(flood.instances[1].storage_throughput, Some(500));
    assert_eq!(
        flood.instances[2].name,
        "1234567890123456789012345678901234567890123456789012345678901234"
    );
    assert_eq!(flood.provider_kind(None), ProviderKind::Aws);

    let anchored = valid("anchors-and-flow.yaml").spec;
    let observer = &anchored.instances[1];
    assert_eq!(observer.region, "us-east-1");
    assert_eq!(observer.storage_size, 20);
    assert_eq!(observer.storage_class, "io2");
    assert_eq!(observer.binary, "target/release/validator");
    assert_eq!(anchored.ports[1].cidr, "::/0");
}

#[test]
fn capacity_keys_decode_to_their_values() {
    use flotilla_spec::capacity::{AcceleratorType, CpuManufacturer, Inclusion, Market};

    let spec = valid("capacity-keys.yaml").spec;
    let web = &spec.instances[0];
    assert_eq!(web.listed_types(), ["m7i.large", "m6i.large", "m5.large"]);
    assert_eq!(web.market, Market::PreferSpot);
    assert_eq!(web.zones, ["us-east-1a", "us-east-1b", "us-east-1c"]);
    let worker = &spec.instances[1];
    assert_eq!(worker.instance_type, None);
    assert_eq!(worker.market, Market::Spot);
    let r = worker.requirements.as_ref().expect("requirements");
    assert_eq!((r.vcpu_count.min, r.vcpu_count.max), (Some(2), Some(8)));
    assert_eq!((r.memory_mib.min, r.memory_mib.max), (Some(4096), None));
    assert_eq!(r.memory_gib_per_vcpu.map(|b| (b.min, b.max)), Some((Some(2.0), Some(4.5))));
    assert_eq!(r.cpu_manufacturers, [CpuManufacturer::Intel, CpuManufacturer::Amd]);
    assert_eq!(r.burstable_performance, Some(Inclusion::Excluded));
    assert_eq!(r.accelerator_count.map(|b| b.max), Some(Some(0)));
    assert_eq!(r.excluded_instance_types, ["t*", "*.metal"]);
    assert_eq!(r.network_bandwidth_gbps.map(|b| b.min), Some(Some(1.5)));
    assert_eq!(r.spot_max_price_percentage_over_lowest_price, Some(50));
    assert_eq!(r.on_demand_max_price_percentage_over_lowest_price, Some(10));
    let gpu = &spec.instances[2];
    assert_eq!(gpu.market, Market::OnDemand);
    let r = gpu.requirements.as_ref().expect("requirements");
    assert_eq!(r.accelerator_types, [AcceleratorType::Gpu]);
    assert_eq!(r.allowed_instance_types, ["g5.*", "g6.*"]);
}

#[test]
fn account_keys_decode_to_their_values_and_entries_override_the_top() {
    use flotilla_spec::account::{ImageRef, ResourceRef};

    let spec = valid("account-keys.yaml").spec;
    assert_eq!(spec.account.image, Some(ImageRef::Name("golden-ubuntu-*".into())));
    assert_eq!(spec.iam.iam_policies.len(), 2);
    let statement = &spec.iam.iam_statements[0];
    assert_eq!(statement["Action"], serde_json::json!(["s3:GetObject", "s3:List*"]));
    assert_eq!(
        statement["Condition"],
        serde_json::json!({"Bool": {"aws:SecureTransport": "true"}})
    );

    // The eu entry: its own image, network, tags over the top's, boot merged, no encryption.
    let eu = spec.settings_of(0);
    let image = eu.image.clone().expect("image");
    assert_eq!(
        (image.value, image.field.as_str()),
        (ImageRef::Id("ami-0123456789abcdef0".into()), "instances[0].image")
    );
    assert_eq!(eu.image_owners.value, ["self", "123456789012"]);
    assert_eq!(eu.image_owners.field, "image_owners");
    let network = eu.network.clone().expect("network");
    assert_eq!(network.field, "instances[0].network.eu-west-1");
    assert_eq!(network.value.vpc, ResourceRef::Id("vpc-12345678".into()));
    let tags = eu.tag_pairs();
    assert_eq!(tags["Team"], "eu-infra");
    assert_eq!(tags["Tier"], "1");
    assert_eq!(tags["CostCenter"], "4711");
    assert_eq!(eu.tags["Team"].field, "instances[0].tags.Team");
    assert_eq!(eu.tags["CostCenter"].field, "tags.CostCenter");
    assert_eq!(eu.boot.files.len(), 1);
    assert_eq!((eu.boot.files[0].content.as_str(), eu.boot.files[0].mode), ("", 0o644));
    assert_eq!(eu.boot.sysctl["net.core.somaxconn"], "8192");
    assert_eq!(eu.boot.packages, ["jq", "htop=3.3.0-4"]);
    assert!(!eu.boot.tune_network);
    let volume = eu.root_volume.expect("root volume");
    assert!(!volume.value.encrypted);

    // The us entry: the top's network of its region, image by tag, top's boot and key.
    let us = spec.settings_of(1);
    assert_eq!(
        us.image.expect("image").value,
        ImageRef::Tag { key: "Golden".into(), value: "2026-11".into() }
    );
    let network = us.network.expect("network");
    assert_eq!(network.field, "network.us-east-1");
    assert_eq!(
        network.value.subnets,
        [
            ResourceRef::Id("subnet-0123456789abcdef0".into()),
            ResourceRef::Tag { key: "Tier".into(), value: "private".into() }
        ]
    );
    assert_eq!(us.boot.files[0].mode, 0o600);
    assert_eq!(us.boot.files[0].owner.as_deref(), Some("root:adm"));
    assert_eq!(us.boot.commands[0].timeout, std::time::Duration::from_secs(30));
    assert!(!us.boot.commands[0].critical);
    assert!(us.boot.effective_sysctl(true).contains_key("net.ipv4.tcp_congestion_control"));
    let volume = us.root_volume.expect("root volume");
    assert_eq!(
        (volume.value.encrypted, volume.value.kms_key.as_deref()),
        (true, Some("alias/ebs-prod"))
    );

    // The monitoring machine gets the top's settings for its region.
    let monitoring = spec.monitoring_settings("us-east-1");
    assert_eq!(monitoring.network.expect("network").field, "network.us-east-1");
    assert_eq!(monitoring.root_volume.expect("key").field, "root_volume");
}

#[test]
fn a_lifecycle_written_in_the_spec_decodes_as_an_ec2fleetd_file_does() {
    use flotilla_spec::fleetd::{Event, ExitCodes, Lifecycle, NotifyBackend, VolumeSource};

    let document = valid("lifecycle.yaml");
    let Some(Lifecycle::Inline(config)) = &document.spec.instances[0].lifecycle else {
        panic!("an inline lifecycle");
    };
    assert_eq!(config.hostname.as_deref(), Some("world-{instance_index}.mc"));
    let domain = &config.domains[0];
    assert_eq!(domain.attach_volume[0].source, [VolumeSource::Pool, VolumeSource::Create]);
    assert_eq!(domain.attach_volume[0].create.as_ref().unwrap()["Size"], 100);
    assert_eq!(domain.update_route53[0].name, "{name}.mc.example.com.");
    assert_eq!(domain.exec[0].lines[0].timeout, Some(std::time::Duration::from_secs(30)));
    assert!(domain.exec[1].runs_on(Event::ScheduledEvent));
    assert_eq!(domain.exec[1].lines[0].ec, ExitCodes::Ranges(vec![(0, 2)]));
    assert_eq!(domain.notify[0].backend, NotifyBackend::Sqs);
    assert!(!domain.notify[0].sends_on(Event::Stopping));
    assert_eq!(
        document.spec.instances[1].lifecycle,
        Some(Lifecycle::File("ops/worker.jsonc".into()))
    );
    // The YAML form's deliberate differences are kept, at their fields in the spec.
    let fields: Vec<&str> =
        document.lifecycle_differences.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "instances[0].lifecycle.domains.mc.update-route53[0].name",
            "instances[0].lifecycle.domains.mc.notify[0].backend"
        ]
    );
}

#[test]
fn disks_decode_to_their_values() {
    use flotilla_spec::disk::{DiskClone, Filesystem};

    let spec = valid("disks.yaml").spec;
    let disks = &spec.instances[0].disks;
    assert_eq!(
        disks.keys().collect::<Vec<_>>(),
        ["/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/xvdi", "/dev/xvdj"]
    );
    let data = &disks["/dev/sdf"];
    assert_eq!(
        (data.volume.class.as_str(), data.volume.iops, data.volume.throughput),
        ("gp3", Some(4000), Some(250))
    );
    assert_eq!(data.size, Some(100));
    assert_eq!(
        data.label.iter().collect::<Vec<_>>(),
        [(&"role".to_owned(), &"data".to_owned()), (&"tier".to_owned(), &"hot".to_owned())]
    );
    assert_eq!(data.mount.as_deref(), Some("/data"));
    let restore = &disks["/dev/sdg"];
    assert_eq!(
        restore.clone,
        Some(DiskClone::Tagged { key: "backup".to_owned(), value: "db-nightly".to_owned() })
    );
    assert_eq!((restore.size, restore.encrypt_key.as_deref()), (None, Some("alias/ebs-db")));
    let io2 = &disks["/dev/sdh"];
    assert_eq!(io2.clone, Some(DiskClone::Snapshot("snap-0123456789abcdef0".to_owned())));
    assert_eq!((io2.volume.iops, io2.volume.throughput), (Some(8000), None));
    assert_eq!(disks["/dev/xvdi"].volume.to_string(), "st1");
    // The filesystem is the agent's `ext4` unless written.
    assert_eq!((data.filesystem, disks["/dev/xvdj"].filesystem), (None, Some(Filesystem::Xfs)));
}
