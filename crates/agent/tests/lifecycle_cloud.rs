//! The lifecycle engine inside a running agent, with a machine cloud registered on its
//! `Fetchers` (written here: it records every call and makes each attached volume's device
//! file under the machine's root, as the emulator does): volumes and records come up before
//! the binary starts, notifications go out on their events, everything is undone after the
//! binary stopped; a failed domain keeps the binary stopped and runs the `failed` hooks.
//! The machine's facts come from the agent's own rehearsal IMDS.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::*;
use flotilla_agent::{
    ClaimedVolume, CloudError, CloudFuture, Fetchers, MachineCloud, MachineFacts, Notification,
    RecordChange, RecordHold, Release, VolumeClaim,
};
use flotilla_spec::api::BinaryState;
use flotilla_spec::fleetd::parse_fleetd_config;
use flotilla_spec::manifest::ManifestLifecycle;

#[derive(Debug)]
struct RecordingCloud {
    root: PathBuf,
    calls: Mutex<Vec<String>>,
    fail_upserts: bool,
}

impl RecordingCloud {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("the calls").clone()
    }

    fn record(&self, call: String) {
        self.calls.lock().expect("the calls").push(call);
    }
}

impl MachineCloud for RecordingCloud {
    fn claim_volume<'a>(&'a self, claim: &'a VolumeClaim) -> CloudFuture<'a, ClaimedVolume> {
        Box::pin(async move {
            let id = claim.entry.volume_id.clone().expect("a fixed volume");
            self.record(format!(
                "claim {id} for {} in {}",
                claim.machine.instance_id, claim.machine.zone
            ));
            let by_id = self.root.join("dev/disk/by-id");
            fs_err::create_dir_all(&by_id).expect("the device root");
            fs_err::write(self.root.join("dev/nvme1n1"), "").expect("the device");
            let link =
                by_id.join(format!("nvme-Amazon_Elastic_Block_Store_{}", id.replacen('-', "", 1)));
            let _ = fs_err::remove_file(&link);
            std::os::unix::fs::symlink("../../nvme1n1", &link).expect("the link");
            Ok(ClaimedVolume {
                volume_id: id,
                source: claim.entry.source[0],
                device: claim.entry.device.clone(),
                domain: claim.domain.clone(),
                pool_name: None,
                attached_now: true,
                created_now: false,
            })
        })
    }

    fn commit_volume<'a>(
        &'a self,
        _machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
    ) -> CloudFuture<'a, ()> {
        Box::pin(async move {
            self.record(format!("commit {}", volume.volume_id));
            Ok(())
        })
    }

    fn release_volume<'a>(
        &'a self,
        _machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
        release: Release,
    ) -> CloudFuture<'a, ()> {
        Box::pin(async move {
            self.record(format!("release {} {release:?}", volume.volume_id));
            Ok(())
        })
    }

    fn upsert_record<'a>(&'a self, change: &'a RecordChange) -> CloudFuture<'a, RecordHold> {
        Box::pin(async move {
            self.record(format!("upsert {} {}", change.name, change.address));
            if self.fail_upserts {
                return Err(CloudError {
                    operation: format!("ChangeResourceRecordSets {}", change.name),
                    code: Some("NoSuchHostedZone".to_owned()),
                    message: "no hosted zone Z1".to_owned(),
                    retryable: false,
                });
            }
            Ok(RecordHold { change: change.clone(), previous: None })
        })
    }

    fn restore_record<'a>(&'a self, hold: &'a RecordHold) -> CloudFuture<'a, ()> {
        Box::pin(async move {
            self.record(format!("restore {}", hold.change.name));
            Ok(())
        })
    }

    fn notify<'a>(&'a self, notification: &'a Notification) -> CloudFuture<'a, ()> {
        Box::pin(async move {
            self.record(format!("notify {}", notification.subject));
            Ok(())
        })
    }

    fn volumes_left_in_transit<'a>(
        &'a self,
        machine: &'a MachineFacts,
        _domains: &'a [String],
    ) -> CloudFuture<'a, Vec<ClaimedVolume>> {
        Box::pin(async move {
            self.record(format!("left in transit by {}", machine.instance_id));
            Ok(Vec::new())
        })
    }

    fn attached_volumes<'a>(
        &'a self,
        region: &'a str,
        instance_id: &'a str,
    ) -> CloudFuture<'a, Vec<flotilla_agent::AttachedVolume>> {
        Box::pin(async move {
            self.record(format!("attached volumes of {instance_id} in {region}"));
            Ok(Vec::new())
        })
    }

    fn prepare<'a>(
        &'a self,
        region: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.record(format!("prepare {region}"));
            // The `starting` hook waits for this file: it shows the cloud was made ready
            // while the hooks ran, not after them.
            fs_err::create_dir_all(&self.root).expect("the machine's root");
            fs_err::write(self.root.join("prepared"), "").expect("the prepared marker");
        })
    }
}

/// A lifecycle with a volume (whose hook writes a file), a record, a notification on `started`,
/// a `failed` hook that writes the error and a `starting` hook that waits (up to 10 s) for the
/// cloud's `prepare` to have run.
fn lifecycle(out: &Path, root: &Path) -> ManifestLifecycle {
    let wait_prepared = format!(
        "i=0; while [ ! -e {root}/prepared ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done; \
         test -e {root}/prepared && touch {out}/saw-prepared",
        root = root.display(),
        out = out.display()
    );
    let text = format!(
        "{{domains: {{data: {{
            'attach-volume': [{{device: '/dev/sdf', source: 'x', 'volume-id': 'vol-0123abcd',
                exec: [{{lines: [{{argv: ['sh', '-c', 'echo volume {{volume_id}} {{attached_device}} > {out}/volume']}}]}}]}}],
            'update-route53': [{{hostedzone: 'Z1', name: '{{name}}.example.com', ttl: 60}}],
            exec: [{{on: ['failed'], lines: [{{argv: ['sh', '-c', 'echo \"{{error}}\" > {out}/failed']}}]}},
                {{on: ['starting'], lines: [{{argv: ['sh', '-c', '{wait_prepared}']}}]}}],
            notify: [{{backend: 'aws-sqs', options: {{'queue-url': 'https://sqs.local/q'}},
                envelope: {{subject: '{{name}} {{daemon_state}}', body: '{{all_json}}'}}}}],
        }}}}}}",
        out = out.display(),
    );
    let config = parse_fleetd_config(&text, Path::new("c.json5")).expect("a valid config").config;
    ManifestLifecycle { config, name: "node-0".to_owned(), instance_index: 0 }
}

struct Machine {
    deployment: Deployment,
    cloud: Arc<RecordingCloud>,
    root: PathBuf,
    out: PathBuf,
}

fn machine(address: &str, fail_upserts: bool) -> Machine {
    let deployment = Deployment::new(address);
    let root = deployment.temp.path().join("root");
    let out = deployment.temp.path().join("out");
    fs_err::create_dir_all(&out).expect("the output directory");
    let cloud = Arc::new(RecordingCloud {
        root: root.clone(),
        calls: Mutex::new(Vec::new()),
        fail_upserts,
    });
    Machine { deployment, cloud, root, out }
}

impl Machine {
    async fn start(&self) -> flotilla_agent::AgentHandle {
        let bootstrap = self.deployment.bootstrap_with(serde_json::json!({
            "boot": {"root": self.root},
            "imds": {
                "endpoint": format!("http://{}:1338", self.deployment.address),
                "rehearsal_notices": self.deployment.temp.path().join("notices.json"),
            },
        }));
        let fetchers = Fetchers::default().with_machine_cloud(self.cloud.clone());
        flotilla_agent::start(bootstrap, fetchers).await.expect("the agent starts")
    }

    fn manifest(&self) -> flotilla_spec::Manifest {
        let marker = self.out.join("binary");
        let script = format!(
            "ls {} > {}\nexec sleep 1000\n",
            self.root.join("dev/disk/by-id").display(),
            marker.display()
        );
        let mut manifest = self.deployment.publish(&Version::script(&script));
        manifest.lifecycle = Some(lifecycle(&self.out, &self.root));
        manifest
    }
}

#[tokio::test]
async fn volumes_and_records_come_up_before_the_binary_and_are_undone_after_it_stopped() {
    let machine = machine("127.200.10.1", false);
    let agent = machine.start().await;
    let manifest = machine.manifest();
    machine.deployment.install(&manifest).await;
    // The binary saw the volume's device link: the volume was attached before it started.
    let seen = fs_err::read_to_string(machine.out.join("binary")).expect("the binary ran");
    assert_eq!(seen.trim(), "nvme-Amazon_Elastic_Block_Store_vol0123abcd");
    let volume = fs_err::read_to_string(machine.out.join("volume")).expect("the volume hook ran");
    assert_eq!(
        volume.trim(),
        format!("volume vol-0123abcd {}", machine.root.join("dev/nvme1n1").display())
    );
    wait_until("the started notification", || {
        machine.cloud.calls().contains(&"notify node-0 started".to_owned())
    })
    .await;
    // The `starting` hook saw the cloud made ready while it ran.
    assert!(machine.out.join("saw-prepared").exists());
    let calls = machine.cloud.calls();
    assert_eq!(
        calls[..4],
        [
            "prepare local".to_owned(),
            "claim vol-0123abcd for local-node-0 in locala".to_owned(),
            "upsert node-0.example.com. 127.200.10.1".to_owned(),
            "commit vol-0123abcd".to_owned(),
        ],
        "{calls:?}"
    );
    agent.shutdown().await.expect("the agent stops");
    let calls = machine.cloud.calls();
    let end: Vec<&str> = calls.iter().map(String::as_str).rev().take(2).collect();
    assert_eq!(end, ["release vol-0123abcd Keep", "restore node-0.example.com."], "{calls:?}");
    // Nothing is held any more.
    let holds = fs_err::read_to_string(machine.deployment.dir.join("lifecycle-holds.json"))
        .expect("the holds file");
    assert!(!holds.contains("vol-0123abcd"), "{holds}");
}

#[tokio::test]
async fn a_failed_domain_keeps_the_binary_stopped_rolls_back_and_runs_failed() {
    let machine = machine("127.200.10.2", true);
    let agent = machine.start().await;
    let manifest = machine.manifest();
    machine.deployment.apply(&manifest).await;
    let rollout = machine.deployment.wait_rollout_done(&manifest).await;
    assert_ne!(rollout.phase, flotilla_spec::api::RolloutPhase::Healthy, "{rollout:#?}");
    let status = machine.deployment.status().await;
    assert_eq!((status.state, status.pid), (BinaryState::Idle, None), "{status:#?}");
    assert!(!machine.out.join("binary").exists(), "the binary started");
    let errors = &status.lifecycle.expect("a lifecycle report").errors;
    assert!(errors.iter().any(|e| e.contains("NoSuchHostedZone")), "{errors:?}");
    wait_until("the failed hook", || machine.out.join("failed").exists()).await;
    let failed = fs_err::read_to_string(machine.out.join("failed")).expect("the failed hook ran");
    assert!(failed.contains("domains.data: update-route53[0]"), "{failed}");
    // The volume claimed before the failed record was rolled back.
    let calls = machine.cloud.calls();
    assert!(calls.contains(&"release vol-0123abcd Rollback".to_owned()), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("commit")), "{calls:?}");
    agent.shutdown().await.expect("the agent stops");
}
