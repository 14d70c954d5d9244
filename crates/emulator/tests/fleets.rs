//! CreateFleet of type `instant`, as the AWS provider sends it (a launch template; overrides =
//! types × one subnet per zone with `AvailabilityZone` and `Priority`): dry pools come back as
//! `Errors`, the capacity lands in the open pools by the allocation strategy, and the
//! instances launch, and boot, like RunInstances' instances.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Aws, base64, eventually, outer, values};
use flotilla_capacity::PriceBook;
use flotilla_emulator::control::{BootState, FaultRule, PoolFilter};

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
const TYPES: [&str; 3] = ["m5.large", "c5.large", "r5.large"];

/// A VPC with one /20 subnet per zone of [`ZONES`], and a security group.
struct Network {
    subnets: BTreeMap<&'static str, String>,
    group: String,
}

impl Network {
    async fn new(aws: &Aws, second_octet: u8) -> Network {
        let cidr = format!("10.{second_octet}.0.0/16");
        let vpc = aws.ec2("CreateVpc", &[("CidrBlock", &cidr)]).await.ok().expect_value("vpcId");
        let mut subnets = BTreeMap::new();
        for (i, zone) in ZONES.into_iter().enumerate() {
            let cidr = format!("10.{second_octet}.{}.0/20", 16 * i);
            let params =
                [("VpcId", vpc.as_str()), ("CidrBlock", &cidr), ("AvailabilityZone", zone)];
            let subnet = aws.ec2("CreateSubnet", &params).await.ok().expect_value("subnetId");
            subnets.insert(zone, subnet);
        }
        let group = aws.security_group(&vpc, "fleet").await;
        Network { subnets, group }
    }
}

/// A launch template as the provider makes one: image, interface with a public address and
/// the group, and `extra` (user data, instance profile, block devices, tags).
async fn launch_template(
    aws: &Aws,
    network: &Network,
    name: &str,
    extra: &[(&str, &str)],
) -> String {
    let name = format!("{name}-{}", aws.key());
    let mut params = vec![
        ("LaunchTemplateName", name.as_str()),
        ("LaunchTemplateData.ImageId", "ami-0flotillatest"),
        ("LaunchTemplateData.NetworkInterface.1.DeviceIndex", "0"),
        ("LaunchTemplateData.NetworkInterface.1.AssociatePublicIpAddress", "true"),
        ("LaunchTemplateData.NetworkInterface.1.DeleteOnTermination", "true"),
        ("LaunchTemplateData.NetworkInterface.1.SecurityGroupId.1", &network.group),
    ];
    params.extend_from_slice(extra);
    aws.ec2("CreateLaunchTemplate", &params).await.ok().expect_value("launchTemplateId")
}

/// One override: type, zone (its subnet), priority.
struct Pick {
    instance_type: &'static str,
    zone: &'static str,
    priority: u32,
}

/// The CreateFleet parameters of `picks` (after the template and its version).
fn fleet_params(
    template: &str,
    network: &Network,
    picks: &[Pick],
    capacity: u32,
    market: &str,
    tags: &[(&str, &str, &str)],
) -> Vec<(String, String)> {
    let config = "LaunchTemplateConfigs.1";
    let mut params = vec![
        ("Type".to_owned(), "instant".to_owned()),
        (format!("{config}.LaunchTemplateSpecification.LaunchTemplateId"), template.to_owned()),
        (format!("{config}.LaunchTemplateSpecification.Version"), "$Latest".to_owned()),
        ("TargetCapacitySpecification.TotalTargetCapacity".to_owned(), capacity.to_string()),
        ("TargetCapacitySpecification.DefaultTargetCapacityType".to_owned(), market.to_owned()),
        ("SpotOptions.AllocationStrategy".to_owned(), "price-capacity-optimized".to_owned()),
        ("OnDemandOptions.AllocationStrategy".to_owned(), "prioritized".to_owned()),
    ];
    for (i, pick) in picks.iter().enumerate() {
        let o = format!("{config}.Overrides.{}", i + 1);
        params.push((format!("{o}.InstanceType"), pick.instance_type.to_owned()));
        params.push((format!("{o}.SubnetId"), network.subnets[pick.zone].clone()));
        params.push((format!("{o}.AvailabilityZone"), pick.zone.to_owned()));
        params.push((format!("{o}.Priority"), pick.priority.to_string()));
    }
    for (i, (resource, key, value)) in tags.iter().enumerate() {
        let t = format!("TagSpecification.{}", i + 1);
        params.push((format!("{t}.ResourceType"), (*resource).to_owned()));
        params.push((format!("{t}.Tag.1.Key"), (*key).to_owned()));
        params.push((format!("{t}.Tag.1.Value"), (*value).to_owned()));
    }
    params
}

/// Every type in every zone, priority by type.
fn every_pool() -> Vec<Pick> {
    TYPES
        .iter()
        .enumerate()
        .flat_map(|(priority, t)| {
            ZONES.map(|zone| Pick { instance_type: t, zone, priority: priority as u32 })
        })
        .collect()
}

/// What a fleet answered.
#[derive(Debug, Default)]
struct Answer {
    /// (type, zone, lifecycle, instance ids) per launched override.
    launched: Vec<(String, String, String, Vec<String>)>,
    /// (type, zone, subnet, lifecycle, code, message).
    errors: Vec<(String, String, String, String, String, String)>,
}

impl Answer {
    fn ids(&self) -> Vec<String> {
        self.launched.iter().flat_map(|l| l.3.clone()).collect()
    }
}

fn first(xml: &str, tag: &str) -> String {
    values(xml, tag).into_iter().next().unwrap_or_default()
}

async fn create_fleet(aws: &Aws, params: &[(String, String)]) -> Answer {
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let reply = aws.ec2("CreateFleet", &params).await.ok();
    let mut answer = Answer::default();
    for set in outer(&reply.body, "errorSet") {
        for item in outer(&set, "item") {
            let overrides = first(&item, "overrides");
            answer.errors.push((
                first(&overrides, "instanceType"),
                first(&overrides, "availabilityZone"),
                first(&overrides, "subnetId"),
                first(&item, "lifecycle"),
                first(&item, "errorCode"),
                first(&item, "errorMessage"),
            ));
        }
    }
    for set in outer(&reply.body, "fleetInstanceSet") {
        for item in outer(&set, "item") {
            let overrides = first(&item, "overrides");
            let ids = outer(&first(&item, "instanceIds"), "item");
            answer.launched.push((
                first(&overrides, "instanceType"),
                first(&overrides, "availabilityZone"),
                first(&item, "lifecycle"),
                ids,
            ));
        }
    }
    answer
}

/// (type, zone, subnet, lifecycle or "", tags) of each instance, from DescribeInstances.
async fn describe(aws: &Aws, ids: &[String]) -> BTreeMap<String, (String, String, String, String)> {
    let keys: Vec<String> = (1..=ids.len()).map(|i| format!("InstanceId.{i}")).collect();
    let params: Vec<(&str, &str)> =
        keys.iter().map(String::as_str).zip(ids.iter().map(String::as_str)).collect();
    let reply = aws.ec2("DescribeInstances", &params).await.ok();
    let mut found = BTreeMap::new();
    for reservation in outer(&first(&reply.body, "reservationSet"), "item") {
        for instance in outer(&first(&reservation, "instancesSet"), "item") {
            found.insert(
                first(&instance, "instanceId"),
                (
                    first(&instance, "instanceType"),
                    first(&first(&instance, "placement"), "availabilityZone"),
                    first(&instance, "subnetId"),
                    first(&instance, "instanceLifecycle"),
                ),
            );
        }
    }
    found
}

/// The spot price the emulator quotes for each type in `zone`.
async fn spot_prices(aws: &Aws, zone: &str) -> BTreeMap<String, f64> {
    let mut params = vec![("AvailabilityZone", zone)];
    let keys: Vec<String> = (1..=TYPES.len()).map(|i| format!("InstanceType.{i}")).collect();
    params.extend(keys.iter().map(String::as_str).zip(TYPES));
    let reply = aws.ec2("DescribeSpotPriceHistory", &params).await.ok();
    outer(&first(&reply.body, "spotPriceHistorySet"), "item")
        .iter()
        .map(|item| {
            (first(item, "instanceType"), first(item, "spotPrice").parse().expect("a price"))
        })
        .collect()
}

#[tokio::test]
async fn dry_spot_pools_come_back_as_errors_and_the_capacity_lands_in_the_open_ones() {
    let aws = Aws::new("fleetdry");
    aws.instant_states().await;
    let network = Network::new(&aws, 71).await;
    let template = launch_template(&aws, &network, "dry", &[]).await;
    // us-east-1b's and us-east-1c's spot pools are dry, for any launch (`*`) and for
    // CreateFleet alone; on-demand there is open.
    let dry = |zone: &str, action: &str| {
        FaultRule::new("ec2", action, "InsufficientInstanceCapacity").pool(PoolFilter {
            availability_zone: Some(zone.to_owned()),
            market: Some("spot".to_owned()),
            ..PoolFilter::default()
        })
    };
    aws.scope
        .set_faults(&[dry("us-east-1b", "*"), dry("us-east-1c", "CreateFleet")])
        .await
        .unwrap();

    let params = fleet_params(&template, &network, &every_pool(), 9, "spot", &[]);
    let answer = create_fleet(&aws, &params).await;

    let mut errors: Vec<(String, String)> =
        answer.errors.iter().map(|e| (e.0.clone(), e.1.clone())).collect();
    errors.sort();
    let mut expected: Vec<(String, String)> = TYPES
        .iter()
        .flat_map(|t| ["us-east-1b", "us-east-1c"].map(|z| (t.to_string(), z.to_owned())))
        .collect();
    expected.sort();
    assert_eq!(errors, expected, "one error per dry pool: {answer:?}");
    for (instance_type, zone, subnet, lifecycle, code, message) in &answer.errors {
        assert_eq!(subnet, &network.subnets[zone.as_str()], "the override's subnet");
        assert_eq!((lifecycle.as_str(), code.as_str()), ("spot", "InsufficientInstanceCapacity"));
        assert!(message.contains(instance_type) && message.contains(zone), "{message}");
    }

    // price-capacity-optimized: spread over us-east-1a's pools within 20 % of its cheapest.
    let prices = spot_prices(&aws, "us-east-1a").await;
    let cheapest = prices.values().copied().fold(f64::INFINITY, f64::min);
    let chosen: BTreeSet<&String> =
        prices.iter().filter(|(_, p)| **p <= cheapest * 1.2).map(|(t, _)| t).collect();
    let mut per_type: BTreeMap<String, usize> = BTreeMap::new();
    for (instance_type, zone, lifecycle, ids) in &answer.launched {
        assert_eq!((zone.as_str(), lifecycle.as_str()), ("us-east-1a", "spot"), "{answer:?}");
        assert!(
            chosen.contains(instance_type),
            "{instance_type} not among {chosen:?} ({prices:?})"
        );
        *per_type.entry(instance_type.clone()).or_default() += ids.len();
    }
    assert_eq!(per_type.values().sum::<usize>(), 9, "{answer:?}");
    assert_eq!(per_type.len(), chosen.len(), "spread over every chosen pool: {per_type:?}");
    let (most, least) = (per_type.values().max().unwrap(), per_type.values().min().unwrap());
    assert!(most - least <= 1, "evenly: {per_type:?}");

    let ids = answer.ids();
    let described = describe(&aws, &ids).await;
    assert_eq!(described.len(), 9);
    for (id, (instance_type, zone, subnet, lifecycle)) in &described {
        assert!(per_type.contains_key(instance_type), "{id}: {instance_type}");
        assert_eq!(zone, "us-east-1a");
        assert_eq!(subnet, &network.subnets["us-east-1a"]);
        assert_eq!(lifecycle, "spot", "DescribeInstances reports InstanceLifecycle spot");
    }
    let rules = aws.scope.faults().await.unwrap();
    assert_eq!((rules[0].hits, rules[1].hits), (3, 3), "each dry override is one hit");
    aws.terminate(&ids).await;
}

#[tokio::test]
async fn an_instant_fleet_launches_and_boots_like_run_instances() {
    let aws = Aws::new("fleetboot");
    aws.instant_states().await;
    let network = Network::new(&aws, 72).await;
    let role = format!("fleet-role-{}", aws.key());
    let profile = format!("fleet-profile-{}", aws.key());
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let iam = |action: &'static str, params: Vec<(&'static str, String)>| {
        let aws = &aws;
        async move {
            let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            aws.query("iam", "2010-05-08", action, &params).await.ok();
        }
    };
    iam("CreateRole", vec![("RoleName", role.clone()), ("AssumeRolePolicyDocument", trust.into())])
        .await;
    iam("CreateInstanceProfile", vec![("InstanceProfileName", profile.clone())]).await;
    iam(
        "AddRoleToInstanceProfile",
        vec![("InstanceProfileName", profile.clone()), ("RoleName", role.clone())],
    )
    .await;
    let script = "#!/bin/sh\nenv > \"$FLOTILLA_ROOT/env.txt.tmp\" && mv \"$FLOTILLA_ROOT/env.txt.tmp\" \"$FLOTILLA_ROOT/env.txt\"\nexec sleep 600\n";
    let user_data = base64(script);
    let template = launch_template(
        &aws,
        &network,
        "boot",
        &[
            ("LaunchTemplateData.UserData", &user_data),
            ("LaunchTemplateData.IamInstanceProfile.Name", &profile),
            ("LaunchTemplateData.MetadataOptions.HttpTokens", "required"),
            ("LaunchTemplateData.BlockDeviceMapping.1.DeviceName", "/dev/sda1"),
            ("LaunchTemplateData.BlockDeviceMapping.1.Ebs.VolumeSize", "40"),
            ("LaunchTemplateData.BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
            ("LaunchTemplateData.BlockDeviceMapping.1.Ebs.Iops", "4000"),
            ("LaunchTemplateData.BlockDeviceMapping.1.Ebs.Throughput", "250"),
            ("LaunchTemplateData.BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ],
    )
    .await;
    // On-demand, prioritized: the lowest Priority wins, whatever the list order.
    let picks = [
        Pick { instance_type: "c5.large", zone: "us-east-1a", priority: 2 },
        Pick { instance_type: "m5.large", zone: "us-east-1b", priority: 1 },
    ];
    let tags = [
        ("instance", "Name", "fleet-boot"),
        ("volume", "disk", "root"),
        ("fleet", "kind", "instant"),
    ];
    let params = fleet_params(&template, &network, &picks, 2, "on-demand", &tags);
    let answer = create_fleet(&aws, &params).await;
    assert!(answer.errors.is_empty(), "{answer:?}");
    let ids = answer.ids();
    assert_eq!(ids.len(), 2, "{answer:?}");
    assert_eq!(answer.launched[0].2, "on-demand");

    let reply = aws.ec2("DescribeInstances", &[("InstanceId.1", &ids[0])]).await.ok();
    let instance = outer(&first(&reply.body, "instancesSet"), "item").remove(0);
    assert_eq!(first(&instance, "instanceType"), "m5.large");
    assert_eq!(first(&first(&instance, "placement"), "availabilityZone"), "us-east-1b");
    assert_eq!(first(&instance, "subnetId"), network.subnets["us-east-1b"]);
    assert!(values(&instance, "instanceLifecycle").is_empty(), "on-demand has none: {instance}");
    let groups: Vec<String> =
        outer(&first(&instance, "groupSet"), "item").iter().map(|g| first(g, "groupId")).collect();
    assert_eq!(
        groups,
        std::slice::from_ref(&network.group),
        "the template's group, on the instance"
    );
    assert!(first(&first(&instance, "iamInstanceProfile"), "arn").ends_with(&profile));
    assert_eq!(first(&first(&instance, "metadataOptions"), "httpTokens"), "required");
    let tags: BTreeMap<String, String> = outer(&first(&instance, "tagSet"), "item")
        .iter()
        .map(|t| (first(t, "key"), first(t, "value")))
        .collect();
    assert_eq!(tags.get("Name").map(String::as_str), Some("fleet-boot"));
    assert!(tags.get("aws:ec2:fleet-id").is_some_and(|f| f.starts_with("fleet-")), "{tags:?}");
    assert_eq!(tags.get("aws:ec2launchtemplate:id"), Some(&template));
    let volumes = aws
        .ec2(
            "DescribeVolumes",
            &[("Filter.1.Name", "attachment.instance-id"), ("Filter.1.Value.1", &ids[0])],
        )
        .await
        .ok();
    let volume = outer(&first(&volumes.body, "volumeSet"), "item").remove(0);
    for (tag, expected) in
        [("size", "40"), ("volumeType", "gp3"), ("iops", "4000"), ("throughput", "250")]
    {
        assert_eq!(first(&volume, tag), expected, "{tag}: {volume}");
    }
    assert!(volume.contains("<key>disk</key><value>root</value>"), "{volume}");

    // Both boot as RunInstances' instances do: user data with the contract, an IMDS that
    // knows the instance profile's role.
    for id in &ids {
        let booted = aws
            .emulator
            .wait_booted(id, Duration::from_secs(20), |b| b.state == BootState::Running)
            .await
            .expect("booted");
        let env_file = booted.root.join("env.txt");
        let env = eventually("the user data's env.txt", Duration::from_secs(20), || {
            let env_file = env_file.clone();
            async move { fs_err::read_to_string(&env_file).ok() }
        })
        .await;
        assert!(env.contains(&format!("FLOTILLA_LISTEN={}\n", booted.public_ip)), "{env}");
        let http = reqwest::Client::new();
        let token = http
            .put(format!("{}/latest/api/token", booted.imds_endpoint))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let get = |path: &str| {
            let request = http
                .get(format!("{}{path}", booted.imds_endpoint))
                .header("X-aws-ec2-metadata-token", &token);
            async move { request.send().await.unwrap().text().await.unwrap() }
        };
        assert_eq!(get("/latest/meta-data/instance-id").await, *id);
        assert_eq!(get("/latest/meta-data/instance-life-cycle").await, "on-demand");
        assert_eq!(get("/latest/meta-data/iam/security-credentials/").await, role);
        assert_eq!(get("/latest/user-data").await, script);
    }
    aws.terminate(&ids).await;
}

#[tokio::test]
async fn on_demand_order_unsupported_types_full_subnets_and_every_pool_dry() {
    let aws = Aws::new("fleetorder");
    aws.instant_states().await;
    let network = Network::new(&aws, 73).await;
    let template = launch_template(&aws, &network, "order", &[]).await;
    let dry_on_demand = |instance_type: &str| {
        FaultRule::new("ec2", "CreateFleet", "InsufficientInstanceCapacity").pool(PoolFilter {
            instance_type: Some(instance_type.to_owned()),
            market: Some("on-demand".to_owned()),
            ..PoolFilter::default()
        })
    };
    // prioritized: the first priority's pool is dry, so the next one gets it all.
    aws.scope.set_faults(&[dry_on_demand("m5.large")]).await.unwrap();
    let picks = [
        Pick { instance_type: "r5.large", zone: "us-east-1a", priority: 3 },
        Pick { instance_type: "m5.large", zone: "us-east-1a", priority: 1 },
        Pick { instance_type: "c5.large", zone: "us-east-1a", priority: 2 },
    ];
    let answer =
        create_fleet(&aws, &fleet_params(&template, &network, &picks, 4, "on-demand", &[])).await;
    assert_eq!(answer.errors.len(), 1, "{answer:?}");
    assert_eq!(
        (answer.errors[0].0.as_str(), answer.errors[0].3.as_str()),
        ("m5.large", "on-demand")
    );
    assert_eq!(answer.launched.len(), 1, "{answer:?}");
    assert_eq!((answer.launched[0].0.as_str(), answer.launched[0].3.len()), ("c5.large", 4));
    let mut launched = answer.ids();

    // lowest-price: the cheapest type by its on-demand price (flotilla-capacity's table).
    aws.scope.clear_faults().await.unwrap();
    let mut params = fleet_params(&template, &network, &picks, 2, "on-demand", &[]);
    params.retain(|(k, _)| k != "OnDemandOptions.AllocationStrategy");
    params.push(("OnDemandOptions.AllocationStrategy".into(), "lowest-price".into()));
    let answer = create_fleet(&aws, &params).await;
    let book = PriceBook::builtin_only();
    let cheapest = ["r5.large", "m5.large", "c5.large"]
        .into_iter()
        .min_by(|a, b| {
            let price = |t| book.on_demand("us-east-1", t).unwrap().usd_per_hour;
            price(a).total_cmp(&price(b))
        })
        .unwrap();
    assert_eq!(answer.launched.len(), 1, "{answer:?}");
    assert_eq!(answer.launched[0].0, cheapest);
    launched.extend(answer.ids());

    // A type the zone does not offer: Unsupported, as AWS answers; and a full subnet:
    // InsufficientFreeAddressesInSubnet with what fit (moto alone fails with HTTP 500).
    let vpc_subnet = &network.subnets["us-east-1a"];
    let reply = aws.ec2("DescribeSubnets", &[("SubnetId.1", vpc_subnet)]).await.ok();
    let vpc = first(&reply.body, "vpcId");
    let small = aws
        .ec2(
            "CreateSubnet",
            &[("VpcId", &vpc), ("CidrBlock", "10.73.200.0/28"), ("AvailabilityZone", "us-east-1c")],
        )
        .await
        .ok()
        .expect_value("subnetId");
    let mut small_network =
        Network { subnets: network.subnets.clone(), group: network.group.clone() };
    small_network.subnets.insert("us-east-1c", small.clone());
    let picks = [
        Pick { instance_type: "zz9.huge", zone: "us-east-1a", priority: 1 },
        Pick { instance_type: "m5.large", zone: "us-east-1c", priority: 2 },
    ];
    let answer =
        create_fleet(&aws, &fleet_params(&template, &small_network, &picks, 20, "on-demand", &[]))
            .await;
    let codes: Vec<(&str, &str)> =
        answer.errors.iter().map(|e| (e.0.as_str(), e.4.as_str())).collect();
    assert_eq!(
        codes,
        [("zz9.huge", "Unsupported"), ("m5.large", "InsufficientFreeAddressesInSubnet")],
        "{answer:?}"
    );
    assert_eq!(answer.ids().len(), 11, "a /28 holds 11 instances: {answer:?}");
    launched.extend(answer.ids());
    let full = aws
        .ec2(
            "RunInstances",
            &[("ImageId", "ami-1"), ("MinCount", "1"), ("MaxCount", "1"), ("SubnetId", &small)],
        )
        .await;
    assert_eq!((full.status, full.ec2_error()), (400, "InsufficientFreeAddressesInSubnet".into()));

    // Every pool dry: nothing launches, every override says why, and the call succeeds.
    aws.scope
        .set_faults(&[FaultRule::new("ec2", "*", "InsufficientInstanceCapacity")
            .pool(PoolFilter { market: Some("spot".to_owned()), ..PoolFilter::default() })])
        .await
        .unwrap();
    let answer =
        create_fleet(&aws, &fleet_params(&template, &network, &every_pool(), 5, "spot", &[])).await;
    assert!(answer.launched.is_empty(), "{answer:?}");
    assert_eq!(answer.errors.len(), 9);
    aws.terminate(&launched).await;
}

#[tokio::test]
async fn a_fleet_of_hundreds_launches_in_seconds() {
    let aws = Aws::new("fleetbig");
    aws.instant_states().await;
    let network = Network::new(&aws, 74).await;
    // Security groups on the template rather than an interface with a public address: the
    // instances get none, so the booter leaves them be and other tests' boots stay prompt.
    let name = format!("big-{}", aws.key());
    let template = aws
        .ec2(
            "CreateLaunchTemplate",
            &[
                ("LaunchTemplateName", &name),
                ("LaunchTemplateData.ImageId", "ami-0flotillatest"),
                ("LaunchTemplateData.SecurityGroupId.1", &network.group),
            ],
        )
        .await
        .ok()
        .expect_value("launchTemplateId");
    let started = Instant::now();
    let answer =
        create_fleet(&aws, &fleet_params(&template, &network, &every_pool(), 300, "spot", &[]))
            .await;
    let took = started.elapsed();
    let ids = answer.ids();
    assert_eq!(ids.len(), 300, "{:?}", answer.errors);
    assert!(took < Duration::from_secs(15), "300 instances took {took:?}");
    let described = describe(&aws, &ids[..1]).await;
    let (_, zone, subnet, _) = &described[&ids[0]];
    assert_eq!(subnet, &network.subnets[zone.as_str()]);
    aws.terminate(&ids).await;
}
