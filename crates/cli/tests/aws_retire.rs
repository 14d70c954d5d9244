//! The AWS provider's `retire` and relaunch under a name, against the emulator: a retired
//! machine's instance is terminated and its identity object deleted while the others run on;
//! `create` launches a new instance under its name; a reclaimed spot instance is not adopted
//! but replaced the same way.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::aws::AwsFleet;
use common::*;
use flotilla_aws::{AwsOptions, AwsProvider, Clients};
use flotilla_core::progress::NoProgress;
use flotilla_core::provider::{Machine, Provider};
use flotilla_core::state::Home;
use flotilla_emulator::control::Emulator;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// The deployment's AWS provider as the CLI builds it, in the test's scope.
async fn provider(fleet: &AwsFleet) -> AwsProvider {
    let deployment = Home::at(fleet.home.path()).open(&fleet.tag).expect("the deployment exists");
    let clients = Clients::from_config(
        fleet.sdk().await,
        std::env::var("AWS_ENDPOINT_URL").ok(),
        std::env::var(flotilla_aws::clients::ADDRESS_MAP_VARIABLE).ok(),
    );
    let options = AwsOptions {
        deployer_ip: Some(std::net::Ipv4Addr::LOCALHOST),
        home: fleet.home.path().to_path_buf(),
        this_executable: flotilla_bin(),
        agent_builds: BTreeMap::new(),
        ip_discovery_url: None,
        launch_deadline: None,
    };
    AwsProvider::new(&deployment, clients, options).expect("the AWS provider")
}

async fn machines(fleet: &AwsFleet) -> BTreeMap<String, Machine> {
    let machines = provider(fleet).await.machines().await.expect("machines");
    machines.into_iter().map(|m| (m.name.clone(), m)).collect()
}

/// EC2's state of instance `id`.
async fn state_of(fleet: &AwsFleet, id: &str) -> String {
    let answer = fleet
        .ec2("us-east-1")
        .await
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("DescribeInstances");
    let instance = answer.reservations()[0].instances()[0].clone();
    instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default()
}

/// Whether the identity object of instance `id` is in the deployment's bucket.
async fn has_identity(fleet: &AwsFleet, id: &str) -> bool {
    let records = fleet.home.path().join("deployments").join(&fleet.tag).join("aws/records.json");
    let records: serde_json::Value =
        serde_json::from_slice(&fs_err::read(records).expect("the journal")).expect("JSON");
    let bucket = records["bucket"].as_str().expect("a bucket");
    let role_id = records["role_id"].as_str().expect("a role id");
    let config = fleet.sdk().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build(),
    );
    let key = format!("deployments/{}/identities/{role_id}:{id}.json", fleet.tag);
    s3.head_object().bucket(bucket).key(key).send().await.is_ok()
}

/// Each binary machine's pid (from `status`), which changes when its binary restarts.
fn binary_pids(fleet: &AwsFleet) -> BTreeMap<String, Option<u64>> {
    fleet
        .status()
        .iter()
        .filter(|r| r["role"] == "binary")
        .map(|r| (r["name"].as_str().unwrap_or_default().to_owned(), r["pid"].as_u64()))
        .collect()
}

#[test]
fn a_retired_or_reclaimed_machine_comes_back_under_its_name_on_a_new_instance() {
    let fleet = AwsFleet::new("retire");
    let emulator = Emulator::require();
    fleet.write("app.conf", "port = 9090\ngreeting = \"hello\"\ninterval = 300\n");
    let binary = fleet_app_bin();
    let spec = fleet.write(
        "spec.yaml",
        &format!(
            "tag: {}\nprovider: aws\nmonitoring: {{instance_type: t3.small, storage_size: 10, storage_class: gp3, dashboard: dashboard.json}}\ninstances:\n- {{name: w, region: us-east-1, count: 3, market: spot, instance_types: [m5.large, m6i.large], storage_size: 10, storage_class: gp3, binary: {}, config: app.conf, profiling: false}}\nports: []\n",
            fleet.tag,
            binary.display()
        ),
    );
    let spec = spec.display().to_string();
    let create = || {
        let output =
            fleet.run_ok(&["create", "--config", &spec, "--ip", "127.0.0.1", "--output", "json"]);
        serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout).expect("JSON rows")
    };
    create();
    let rt = runtime();
    let before = rt.block_on(machines(&fleet));
    let names: Vec<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(names, ["monitoring", "w-0", "w-1", "w-2"]);
    let pids_before = binary_pids(&fleet);
    let w2 = before["w-2"].clone();
    assert!(rt.block_on(has_identity(&fleet, &w2.id)), "w-2's identity is in the bucket");

    // Retire w-2: its instance is terminated (and waited for), its identity object deleted;
    // the provider no longer lists it; the others run on untouched.
    rt.block_on(async {
        provider(&fleet).await.retire(std::slice::from_ref(&w2), &NoProgress).await
    })
    .expect("retire");
    assert_eq!(rt.block_on(state_of(&fleet, &w2.id)), "terminated");
    assert!(!rt.block_on(has_identity(&fleet, &w2.id)), "w-2's identity object is deleted");
    let after = rt.block_on(machines(&fleet));
    let names: Vec<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(names, ["monitoring", "w-0", "w-1"]);
    for (name, machine) in &after {
        assert_eq!(machine.id, before[name].id, "{name} keeps its instance");
        assert_eq!(rt.block_on(state_of(&fleet, &machine.id)), "running", "{name}");
    }
    let pids_after = binary_pids(&fleet);
    for name in ["w-0", "w-1"] {
        assert_eq!(pids_after[name], pids_before[name], "{name}'s binary did not restart");
    }
    // Again, as after a crash: success, nothing changes.
    rt.block_on(async {
        provider(&fleet).await.retire(std::slice::from_ref(&w2), &NoProgress).await
    })
    .expect("retire again");
    assert_eq!(rt.block_on(machines(&fleet)).len(), 3);
    // An id that is not one of the deployment's instances is never terminated: nothing changes.
    let stranger = Machine { id: "i-0000000000000dead".to_owned(), ..after["w-0"].clone() };
    rt.block_on(async { provider(&fleet).await.retire(&[stranger], &NoProgress).await })
        .expect("retiring an unknown id is success");
    assert_eq!(rt.block_on(machines(&fleet)), after);

    // w-1's spot instance is reclaimed; once it is ending it is no machine to adopt.
    let w1 = after["w-1"].clone();
    rt.block_on(emulator.reclaim_spot(std::slice::from_ref(&w1.id), Some(Duration::ZERO)))
        .expect("reclaim");
    wait_for("w-1's instance to end", Duration::from_secs(60), || {
        let state = rt.block_on(state_of(&fleet, &w1.id));
        (state == "shutting-down" || state == "terminated").then_some(())
    });

    // create again: w-1 and w-2 are back under their names on new instances, healthy; w-0 and
    // monitoring are adopted on their instances.
    let rows = create();
    for name in ["w-0", "w-1", "w-2"] {
        assert_eq!(row(&rows, name)["health"], "healthy", "{rows:?}");
    }
    let back = rt.block_on(machines(&fleet));
    assert_eq!(back.len(), 4);
    assert_ne!(back["w-2"].id, w2.id, "w-2 runs on a new instance");
    assert_ne!(back["w-1"].id, w1.id, "the reclaimed instance was not adopted");
    for name in ["monitoring", "w-0"] {
        assert_eq!(back[name].id, before[name].id, "{name} was adopted");
    }
    // (w-0's binary is restarted by this create: the new instances' addresses change
    // hosts.yaml, which is still part of every machine's version.)
    let instances = rt.block_on(emulator.instances()).expect("the emulator's instances");
    for machine in back.values() {
        let info = instances.iter().find(|i| i.id == machine.id).expect("listed");
        assert_eq!(info.tags.get("flotilla:machine"), Some(&machine.name), "{info:?}");
    }
    assert!(
        !rt.block_on(has_identity(&fleet, &w1.id)),
        "the reclaimed instance's identity object is deleted once w-1 is replaced"
    );

    fleet.run_ok(&["destroy", &fleet.tag_arg()]);
    let left = rt.block_on(fleet.leftovers(&["us-east-1"]));
    assert!(left.is_empty(), "destroy left: {left:?}");
}
