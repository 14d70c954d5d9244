//! Tests of the engine against a cloud written here: it records every call in order, makes the
//! device file (and its by-id link) of each volume it attaches under the test's device root as
//! the emulator does, and fails the calls it is told to fail.

use std::sync::Mutex;

use flotilla_spec::fleetd::{VolumeSource, parse_fleetd_config};

use super::*;
use crate::machine_cloud::{CloudError, CloudFuture, Notification};

#[derive(Debug, Default)]
struct TestCloud {
    root: PathBuf,
    calls: Mutex<Vec<String>>,
    /// Calls (as recorded) that fail.
    failing: Mutex<Vec<String>>,
    /// When set, every claim waits here: a claim passes only once this many are waiting.
    rendezvous: Option<Arc<tokio::sync::Barrier>>,
    /// When set, every claim waits (5 s at most) until a record was upserted.
    claims_wait_for_upsert: bool,
    upserted: tokio::sync::Notify,
    /// What [`MachineCloud::volumes_left_in_transit`] answers.
    left_in_transit: Vec<ClaimedVolume>,
    /// Each claim's [`VolumeClaim::first_run`], in order.
    first_runs: Mutex<Vec<bool>>,
}

impl TestCloud {
    fn new(root: &Path) -> TestCloud {
        TestCloud { root: root.to_path_buf(), ..TestCloud::default() }
    }

    fn fail(&self, call: &str) {
        self.failing.lock().unwrap().push(call.to_owned());
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: String) -> Result<(), CloudError> {
        self.calls.lock().unwrap().push(call.clone());
        if self.failing.lock().unwrap().contains(&call) {
            return Err(CloudError {
                operation: call,
                code: Some("TestFailure".to_owned()),
                message: "told to fail".to_owned(),
                retryable: false,
            });
        }
        Ok(())
    }
}

impl MachineCloud for TestCloud {
    fn claim_volume<'a>(&'a self, claim: &'a VolumeClaim) -> CloudFuture<'a, ClaimedVolume> {
        Box::pin(async move {
            if let Some(rendezvous) = &self.rendezvous {
                tokio::time::timeout(Duration::from_secs(5), rendezvous.wait()).await.map_err(
                    |_| CloudError {
                        operation: "claim".to_owned(),
                        code: None,
                        message: "the other domain never claimed at the same time".to_owned(),
                        retryable: false,
                    },
                )?;
            }
            if self.claims_wait_for_upsert {
                tokio::time::timeout(Duration::from_secs(5), self.upserted.notified())
                    .await
                    .map_err(|_| CloudError {
                        operation: "claim".to_owned(),
                        code: None,
                        message: "no record was upserted while the volume was claimed".to_owned(),
                        retryable: false,
                    })?;
            }
            let id = format!("vol-{}{}", claim.domain, &claim.entry.device[5..]);
            self.first_runs.lock().unwrap().push(claim.first_run);
            self.record(format!("claim {id}"))?;
            // The emulator's device: `<root>/dev/nvme<N>n1` and its by-id link.
            let number = self.calls.lock().unwrap().len();
            let device = self.root.join(format!("dev/nvme{number}n1"));
            fs_err::create_dir_all(self.root.join("dev/disk/by-id")).expect("the device root");
            fs_err::write(&device, "").expect("the device file");
            let link = self
                .root
                .join("dev/disk/by-id")
                .join(format!("nvme-Amazon_Elastic_Block_Store_{}", id.replacen('-', "", 1)));
            let _ = fs_err::remove_file(&link);
            std::os::unix::fs::symlink(format!("../../nvme{number}n1"), &link).expect("the link");
            Ok(ClaimedVolume {
                volume_id: id,
                source: claim.entry.source[0],
                device: claim.entry.device.clone(),
                domain: claim.domain.clone(),
                pool_name: claim.entry.pool_name.clone(),
                attached_now: true,
                created_now: claim.entry.source[0] == VolumeSource::Create,
            })
        })
    }

    fn commit_volume<'a>(
        &'a self,
        _machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
    ) -> CloudFuture<'a, ()> {
        Box::pin(async move { self.record(format!("commit {}", volume.volume_id)) })
    }

    fn release_volume<'a>(
        &'a self,
        _machine: &'a MachineFacts,
        volume: &'a ClaimedVolume,
        release: Release,
    ) -> CloudFuture<'a, ()> {
        Box::pin(async move { self.record(format!("release {} {release:?}", volume.volume_id)) })
    }

    fn upsert_record<'a>(&'a self, change: &'a RecordChange) -> CloudFuture<'a, RecordHold> {
        Box::pin(async move {
            self.record(format!("upsert {} {}", change.name, change.address))?;
            self.upserted.notify_one();
            Ok(RecordHold { change: change.clone(), previous: None })
        })
    }

    fn restore_record<'a>(&'a self, hold: &'a RecordHold) -> CloudFuture<'a, ()> {
        Box::pin(async move { self.record(format!("restore {}", hold.change.name)) })
    }

    fn notify<'a>(&'a self, notification: &'a Notification) -> CloudFuture<'a, ()> {
        Box::pin(async move { self.record(format!("notify {}", notification.subject)) })
    }

    fn volumes_left_in_transit<'a>(
        &'a self,
        machine: &'a MachineFacts,
        domains: &'a [String],
    ) -> CloudFuture<'a, Vec<ClaimedVolume>> {
        Box::pin(async move {
            self.record(format!("left in transit by {} {domains:?}", machine.instance_id))?;
            Ok(self.left_in_transit.clone())
        })
    }

    fn attached_volumes<'a>(
        &'a self,
        region: &'a str,
        instance_id: &'a str,
    ) -> CloudFuture<'a, Vec<crate::AttachedVolume>> {
        Box::pin(async move {
            self.record(format!("attached volumes of {instance_id} in {region}"))?;
            Ok(Vec::new())
        })
    }
}

fn config(text: &str) -> FleetdConfig {
    parse_fleetd_config(text, Path::new("c.json5")).expect("a valid config").config
}

fn engine(cloud: Arc<TestCloud>, dir: &Path) -> Arc<Engine> {
    let calls = CallLog::default();
    Arc::new(Engine::new(EngineContext {
        cloud: crate::machine_cloud::logged(cloud, &calls),
        calls,
        facts: MachineFacts {
            instance_id: "i-1".to_owned(),
            region: "us-east-1".to_owned(),
            zone: "us-east-1a".to_owned(),
            index: Some(2),
            transaction_id: "t-1".to_owned(),
        },
        public_ip: Some("203.0.113.7".parse().expect("an address")),
        private_ip: Some("10.0.0.7".parse().expect("an address")),
        device_root: dir.join("root"),
        holds_file: dir.join(HOLDS_FILE),
        work: dir.to_path_buf(),
        volume_wait: Duration::from_secs(1),
        device_wait: Duration::from_secs(1),
    }))
}

fn base() -> BTreeMap<String, String> {
    [("instance_index", "2"), ("name", "node-2")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn persisted(dir: &Path) -> Holds {
    serde_json::from_slice(&fs_err::read(dir.join(HOLDS_FILE)).expect("the holds file"))
        .expect("holds JSON")
}

#[tokio::test]
async fn domains_initialise_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Arc::new(TestCloud {
        rendezvous: Some(Arc::new(tokio::sync::Barrier::new(2))),
        ..TestCloud::new(&dir.path().join("root"))
    });
    let engine = engine(cloud.clone(), dir.path());
    // Each domain's claim waits until the other's is under way: a serial init would fail both.
    let outcome = engine
        .init(
            &config(
                "{domains: {a: {'attach-volume': [{device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001'}]},
                            b: {'attach-volume': [{device: '/dev/sdg', source: 'x', 'volume-id': 'vol-00000002'}]}}}",
            ),
            Event::Starting,
            &base(),
        )
        .await;
    assert!(!outcome.failed(), "{outcome:?}");
    let mut calls = cloud.calls();
    calls.sort();
    assert_eq!(calls, ["claim vol-asdf", "claim vol-bsdg", "commit vol-asdf", "commit vol-bsdg"]);
}

/// The calls of `calls` that start with one of `prefixes`, in order.
fn only(calls: &[String], prefixes: &[&str]) -> Vec<String> {
    calls.iter().filter(|c| prefixes.iter().any(|p| c.starts_with(p))).cloned().collect()
}

#[tokio::test]
async fn a_non_critical_entry_rolls_back_alone_and_the_domain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Arc::new(TestCloud::new(&dir.path().join("root")));
    cloud.fail("upsert b.example.com. 203.0.113.7");
    let engine = engine(cloud.clone(), dir.path());
    let outcome = engine
        .init(
            &config(
                "{domains: {d: {
                    'attach-volume': [
                        {device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001'},
                        {device: '/dev/sdg', source: 'x', 'volume-id': 'vol-00000002', critical: false,
                         exec: [{lines: [{argv: ['false']}]}]},
                        {device: '/dev/sdh', source: 'x', 'volume-id': 'vol-00000003'},
                    ],
                    'update-route53': [
                        {hostedzone: 'Z', name: 'a.example.com', ttl: 60},
                        {hostedzone: 'Z', name: 'b.example.com', ttl: 60, critical: false},
                        {hostedzone: 'Z', name: 'c.example.com', ttl: 60},
                    ]}}}",
            ),
            Event::Starting,
            &base(),
        )
        .await;
    let calls = cloud.calls();
    // Each chain in file order; the failed volume, its hook failed and not critical, is
    // released alone and its chain goes on; the failed record held nothing to restore.
    assert_eq!(
        only(&calls, &["claim", "release"]),
        ["claim vol-dsdf", "claim vol-dsdg", "release vol-dsdg Rollback", "claim vol-dsdh"],
        "{calls:?}"
    );
    assert_eq!(
        only(&calls, &["upsert", "restore"]),
        [
            "upsert a.example.com. 203.0.113.7",
            "upsert b.example.com. 203.0.113.7",
            "upsert c.example.com. 203.0.113.7"
        ],
        "{calls:?}"
    );
    // The commit comes after both chains.
    assert_eq!(calls[calls.len() - 2..], ["commit vol-dsdf", "commit vol-dsdh"], "{calls:?}");
    let domain = &outcome.domains[0];
    assert!(domain.failure.is_none(), "{domain:?}");
    assert_eq!(domain.skipped.len(), 2, "{domain:?}");
    assert!(domain.skipped[0].contains("attach-volume[1] (not critical)"), "{domain:?}");
    assert!(domain.skipped[1].contains("update-route53[1] (not critical)"), "{domain:?}");
    assert!(domain.rollback_failures.is_empty());
    let holds = persisted(dir.path());
    let held: Vec<String> = holds.domains["d"].iter().map(describe).collect();
    assert_eq!(held.len(), 4, "{held:?}");
    for kept in ["volume vol-dsdf", "volume vol-dsdh", "record a.example.com.", "record c.example."]
    {
        assert!(held.iter().any(|h| h.starts_with(kept)), "{kept} not in {held:?}");
    }
}

#[tokio::test]
async fn a_critical_failure_stops_the_other_chain_and_rolls_the_domain_back_in_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Arc::new(TestCloud::new(&dir.path().join("root")));
    cloud.fail("upsert b.example.com. 203.0.113.7");
    let engine = engine(cloud.clone(), dir.path());
    let outcome = engine
        .init(
            &config(
                "{domains: {d: {
                    'attach-volume': [
                        {device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001',
                         exec: [{lines: [{argv: ['true']}]}]},
                        {device: '/dev/sdg', source: 'x', 'volume-id': 'vol-00000002'},
                    ],
                    'update-route53': [
                        {hostedzone: 'Z', name: 'a.example.com', ttl: 60},
                        {hostedzone: 'Z', name: 'b.example.com', ttl: 60},
                    ]}}}",
            ),
            Event::Starting,
            &base(),
        )
        .await;
    // The first volume's hook runs while the records are upserted; the critical record fails
    // meanwhile, so the volume chain stops after that hook, before its next claim. Then
    // everything the domain holds, in reverse order of taking.
    assert_eq!(
        cloud.calls(),
        [
            "claim vol-dsdf",
            "upsert a.example.com. 203.0.113.7",
            "upsert b.example.com. 203.0.113.7",
            "restore a.example.com.",
            "release vol-dsdf Rollback",
        ]
    );
    let domain = &outcome.domains[0];
    assert!(
        domain.failure.as_deref().is_some_and(|f| f.starts_with("update-route53[1]: upsert b.")),
        "{domain:?}"
    );
    assert_eq!(domain.hooks.len(), 1, "the hook that was running finished: {domain:?}");
    assert!(domain.rollback_failures.is_empty());
    assert!(persisted(dir.path()).is_empty());
}

#[tokio::test]
async fn two_chains_failing_at_once_report_both_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = TestCloud::new(&dir.path().join("root"));
    // The claim waits for the first upsert; the second upsert fails while the claim is in
    // flight, then the claim fails too.
    cloud.claims_wait_for_upsert = true;
    let cloud = Arc::new(cloud);
    cloud.fail("claim vol-dsdf");
    cloud.fail("upsert b.example.com. 203.0.113.7");
    let engine = engine(cloud.clone(), dir.path());
    let outcome = engine
        .init(
            &config(
                "{domains: {d: {
                    'attach-volume': [{device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001'}],
                    'update-route53': [
                        {hostedzone: 'Z', name: 'a.example.com', ttl: 60},
                        {hostedzone: 'Z', name: 'b.example.com', ttl: 60},
                    ]}}}",
            ),
            Event::Starting,
            &base(),
        )
        .await;
    let domain = &outcome.domains[0];
    let failure = domain.failure.as_deref().unwrap_or_default();
    assert!(failure.starts_with("attach-volume[0]: claim vol-dsdf"), "{domain:?}");
    assert!(failure.contains("; update-route53[1]: upsert b.example.com."), "{domain:?}");
    // What was taken is rolled back: the first record.
    assert_eq!(cloud.calls().last().map(String::as_str), Some("restore a.example.com."));
    assert!(persisted(dir.path()).is_empty());
}

#[tokio::test]
async fn a_domain_upserts_its_records_without_waiting_for_its_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = TestCloud::new(&dir.path().join("root"));
    cloud.claims_wait_for_upsert = true;
    let cloud = Arc::new(cloud);
    let engine = engine(cloud.clone(), dir.path());
    let outcome = engine
        .init(
            &config(
                "{domains: {d: {
                    'attach-volume': [{device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001'}],
                    'update-route53': [{hostedzone: 'Z', name: 'a.example.com', ttl: 60}]}}}",
            ),
            Event::Starting,
            &base(),
        )
        .await;
    // The claim passes only once a record was upserted: the domain would fail here if its
    // records waited for its volumes.
    assert!(!outcome.failed(), "{outcome:?}");
    assert_eq!(
        cloud.calls(),
        ["upsert a.example.com. 203.0.113.7", "claim vol-dsdf", "commit vol-dsdf"]
    );
}

#[tokio::test]
async fn rollback_failures_are_reported_and_what_failed_stays_held() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Arc::new(TestCloud::new(&dir.path().join("root")));
    cloud.fail("release vol-dsdf Rollback");
    cloud.fail("claim vol-dsdg");
    let engine = engine(cloud.clone(), dir.path());
    let outcome = engine
        .init(
            &config(
                "{domains: {d: {'attach-volume': [
                    {device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001'},
                    {device: '/dev/sdg', source: 'x', 'volume-id': 'vol-00000002'}]},
                  e: {'update-route53': [{hostedzone: 'Z', name: 'e.example.com.', ttl: 60}]}}}",
            ),
            Event::Starting,
            &base(),
        )
        .await;
    let errors = outcome.errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("domains.d: attach-volume[1]: claim vol-dsdg failed"));
    assert!(errors[1].starts_with("domains.d: rollback: volume vol-dsdf: release vol-dsdf"));
    // The other domain is up and not rolled back.
    assert!(outcome.domains[1].failure.is_none());
    let holds = persisted(dir.path());
    assert!(
        matches!(&holds.domains["d"][..], [Hold::Volume { volume, .. }] if volume.volume_id == "vol-dsdf")
    );
    assert!(matches!(&holds.domains["e"][..], [Hold::Record(_)]));
}

#[tokio::test]
async fn volume_hooks_honour_on_and_see_the_volume_macros() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let cloud = Arc::new(TestCloud::new(&root));
    let engine = engine(cloud, dir.path());
    let out = dir.path().join("out");
    let text = format!(
        "{{domains: {{d: {{'attach-volume': [{{device: '/dev/sdf', source: 'p', 'pool-name': 'pl',
            exec: [
              {{lines: [{{argv: ['sh', '-c', 'echo any {{volume_id}} {{attach_source}} {{attach_op}} {{volume_pool}} {{attached_device}} {{domain}} {{ami-i}} >> {out}']}}]}},
              {{on: ['started'], lines: [{{argv: ['sh', '-c', 'echo started >> {out}']}}]}},
              {{on: ['starting'], lines: [{{argv: ['sh', '-c', 'echo starting >> {out}']}}]}},
              {{on: ['interrupted', 'stopping'], lines: [
                {{argv: ['sh', '-c', 'echo {{daemon_state}} {{volume_id}} {{attached_device}} >> {out}']}},
                {{argv: ['false']}},
                {{argv: ['sh', '-c', 'echo not after a failure >> {out}']}},
              ]}},
            ]}}]}}}}}}",
        out = out.display()
    );
    let config = config(&text);
    let outcome = engine.init(&config, Event::Starting, &base()).await;
    assert!(!outcome.failed(), "{outcome:?}");
    let written = fs_err::read_to_string(&out).unwrap();
    // The device is the one the by-id link names (the claim was the first call: nvme1n1).
    let device = root.join("dev/nvme1n1");
    assert_eq!(written, format!("any vol-dsdf p true pl {} d 2\nstarting\n", device.display()));
    assert_eq!(outcome.domains[0].hooks.len(), 2);

    // Later events run the hooks that name them, while the volume is held.
    let domain = &config.domains[0];
    assert!(engine.volume_hooks(domain, Event::Starting, &base()).await.is_empty());
    let started = engine.volume_hooks(domain, Event::Started, &base()).await;
    assert_eq!(started.len(), 1, "{started:?}");
    let mut values = base();
    values.insert("daemon_state".to_owned(), "interrupted".to_owned());
    let interrupted = engine.volume_hooks(domain, Event::Interrupted, &values).await;
    let outcomes: Vec<HookOutcome> = interrupted.iter().map(|h| h.outcome).collect();
    assert_eq!(outcomes[0], HookOutcome::Succeeded, "{interrupted:?}");
    assert_eq!(outcomes.len(), 2, "the line after a failed one does not run: {interrupted:?}");
    assert!(interrupted.iter().all(|h| h.event == Event::Interrupted && h.domain == "d"));
    let written = fs_err::read_to_string(&out).unwrap();
    assert!(
        written.ends_with(&format!("started\ninterrupted vol-dsdf {}\n", device.display())),
        "{written}"
    );
    // Released, the volume runs nothing more.
    assert!(engine.undo().await.is_empty());
    assert!(engine.volume_hooks(domain, Event::Stopping, &values).await.is_empty());
}

#[tokio::test]
async fn a_restarted_engine_releases_what_an_earlier_run_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = config(
        "{domains: {d: {'attach-volume': [
            {device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001'},
            {device: '/dev/sdg', source: 'c', 'pool-name': 'p', create: {Size: 1}}],
          'update-route53': [{hostedzone: 'Z', name: 'n-{instance_index}.example.com', ttl: 60, address: 'private'}]}}}",
    );
    let first = Arc::new(TestCloud::new(&root));
    let outcome = engine(first.clone(), dir.path()).init(&config, Event::Starting, &base()).await;
    assert!(!outcome.failed(), "{outcome:?}");
    assert!(first.calls().contains(&"upsert n-2.example.com. 10.0.0.7".to_owned()));
    // The committed created volume is no longer deleted by a rollback.
    let holds = persisted(dir.path());
    assert!(holds.domains["d"].iter().all(|h| match h {
        Hold::Volume { volume, .. } => !volume.created_now,
        Hold::Record(_) => true,
    }));
    // A new engine (the agent restarted) on the same holds file undoes it all: records first,
    // then volumes in reverse, kept for the next machine.
    let second = Arc::new(TestCloud::new(&root));
    let failures = engine(second.clone(), dir.path()).undo().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        second.calls(),
        ["restore n-2.example.com.", "release vol-dsdg Keep", "release vol-dsdf Keep"]
    );
    assert!(persisted(dir.path()).domains.is_empty());
}

#[tokio::test]
async fn only_the_machines_first_init_skips_the_lookups_of_a_re_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = config(
        "{domains: {d: {'attach-volume': [{device: '/dev/sdf', source: 'pc', 'pool-name': 'p', create: {Size: 1}}]}}}",
    );
    let cloud = Arc::new(TestCloud::new(&root));
    let first = engine(cloud.clone(), dir.path());
    assert!(!first.init(&config, Event::Starting, &base()).await.failed());
    // The same engine again (its claims are held now), then a restarted one (the holds file
    // is there): both re-runs.
    assert!(!first.init(&config, Event::Starting, &base()).await.failed());
    assert!(
        !engine(cloud.clone(), dir.path()).init(&config, Event::Starting, &base()).await.failed()
    );
    assert_eq!(*cloud.first_runs.lock().unwrap(), [true, false, false]);

    // A holds file that cannot be written: the next run could not know, so no first run.
    let unwritable = tempfile::tempdir().unwrap();
    let cloud = Arc::new(TestCloud::new(&root));
    let engine = engine(cloud.clone(), unwritable.path());
    fs_err::create_dir(unwritable.path().join(HOLDS_FILE)).unwrap();
    let _ = engine.init(&config, Event::Starting, &base()).await;
    assert_eq!(*cloud.first_runs.lock().unwrap(), [false]);
}

#[tokio::test]
async fn a_new_init_releases_what_the_config_no_longer_claims() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let cloud = Arc::new(TestCloud::new(&root));
    let volume = |domain: &str| {
        format!(
            "{domain}: {{'attach-volume': [{{device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001'}}]}}"
        )
    };
    let both = config(&format!("{{domains: {{{}, {}}}}}", volume("a"), volume("b")));
    let only_a = config(&format!("{{domains: {{{}}}}}", volume("a")));
    assert!(
        !engine(cloud.clone(), dir.path()).init(&both, Event::Starting, &base()).await.failed()
    );
    let again = Arc::new(TestCloud::new(&root));
    let outcome = engine(again.clone(), dir.path()).init(&only_a, Event::Starting, &base()).await;
    assert!(!outcome.failed() && outcome.stale_failures.is_empty(), "{outcome:?}");
    assert_eq!(again.calls(), ["claim vol-asdf", "commit vol-asdf", "release vol-bsdf Keep"]);
    assert_eq!(persisted(dir.path()).domains.keys().collect::<Vec<_>>(), ["a"]);
}

#[tokio::test]
async fn volumes_a_crashed_run_left_in_transit_are_unmounted_and_rolled_back_before_any_claim() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let leftover = ClaimedVolume {
        volume_id: "vol-0ld".to_owned(),
        source: VolumeSource::Create,
        device: "/dev/sdf".to_owned(),
        domain: "d".to_owned(),
        pool_name: Some("p".to_owned()),
        attached_now: false,
        created_now: true,
    };
    let cloud = Arc::new(TestCloud { left_in_transit: vec![leftover], ..TestCloud::new(&root) });
    // A first run on this machine (no holds file) has nothing to look for.
    let fresh = tempfile::tempdir().unwrap();
    let outcome = engine(cloud.clone(), fresh.path())
        .init(
            &config("{domains: {d: {'attach-volume': [{device: '/dev/sdf', source: 'c', 'pool-name': 'p', create: {Size: 1}}]}}}"),
            Event::Starting,
            &base(),
        )
        .await;
    assert!(outcome.swept.is_empty(), "{outcome:?}");
    assert!(!cloud.calls().iter().any(|c| c.starts_with("left in transit")), "{:?}", cloud.calls());
    cloud.calls.lock().unwrap().clear();
    // An earlier run began an init here: its holds file is there.
    fs_err::write(dir.path().join(HOLDS_FILE), "{\"domains\": {}}").unwrap();
    let first = engine(cloud.clone(), dir.path());
    let creating = config(
        "{domains: {
            d: {'attach-volume': [{device: '/dev/sdf', source: 'pc', 'pool-name': 'p', create: {Size: 1}}]},
            e: {'attach-volume': [{device: '/dev/sdg', source: 'x', 'volume-id': 'vol-00000009'}]},
        }}",
    );
    let outcome = first.init(&creating, Event::Starting, &base()).await;
    assert!(!outcome.failed(), "{outcome:?}");
    assert_eq!(outcome.swept, ["vol-0ld"]);
    let calls = cloud.calls();
    // Asked only for the domains that create volumes, and rolled back before any claim.
    assert_eq!(calls[..2], ["left in transit by i-1 [\"d\"]", "release vol-0ld Rollback"]);
    assert!(calls[2..].iter().any(|c| c == "claim vol-dsdf"), "{calls:?}");

    // A config that creates nothing does not ask.
    let cloud = Arc::new(TestCloud::new(&root));
    let other = tempfile::tempdir().unwrap();
    fs_err::write(other.path().join(HOLDS_FILE), "{\"domains\": {}}").unwrap();
    let second = engine(cloud.clone(), other.path());
    let fixed = config(
        "{domains: {e: {'attach-volume': [{device: '/dev/sdg', source: 'x', 'volume-id': 'vol-00000009'}]}}}",
    );
    let outcome = second.init(&fixed, Event::Starting, &base()).await;
    assert!(outcome.swept.is_empty());
    assert!(!cloud.calls().iter().any(|c| c.starts_with("left in transit")), "{:?}", cloud.calls());
}

#[tokio::test]
async fn a_volume_that_cannot_be_unmounted_is_never_released() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let cloud = Arc::new(TestCloud::new(&root));
    let engine = engine(cloud.clone(), dir.path());
    let config = config(
        "{domains: {d: {'attach-volume': [{device: '/dev/sdf', source: 'x', 'volume-id': 'vol-00000001'}]}}}",
    );
    assert!(!engine.init(&config, Event::Starting, &base()).await.failed());
    // The mount table under the root says the device is mounted at a place that is not a
    // mount point on this machine: `umount` fails, so the volume must stay attached.
    let missing = dir.path().join("not-a-mount-point");
    fs_err::create_dir_all(root.join("proc/self")).unwrap();
    fs_err::write(
        root.join("proc/self/mountinfo"),
        format!("40 22 259:3 / {} rw - ext4 /dev/nvme1n1 rw\n", missing.display()),
    )
    .unwrap();
    let failures = engine.undo().await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("umount"), "{failures:?}");
    assert!(!cloud.calls().iter().any(|c| c.starts_with("release")), "{:?}", cloud.calls());
    assert_eq!(persisted(dir.path()).domains["d"].len(), 1);
}

#[test]
fn a_record_change_expands_its_name_and_picks_its_address() {
    let record = |name: &str, address| Route53Record {
        hosted_zone: "Z".to_owned(),
        name: name.to_owned(),
        ttl: 60,
        critical: true,
        address,
        wait_insync: true,
    };
    let address: IpAddr = "203.0.113.7".parse().unwrap();
    let public = Some(address);
    let change = record_change(
        &record("node-{ami-i}.example.com", RecordAddress::Public),
        &base(),
        public,
        None,
    )
    .unwrap();
    assert_eq!((change.name.as_str(), change.address), ("node-2.example.com.", address));
    assert!(change.wait_in_sync);
    let error =
        record_change(&record("x.", RecordAddress::Private), &base(), public, None).unwrap_err();
    assert!(error.contains("private address is not known"), "{error}");
    let error =
        record_change(&record("x.", RecordAddress::Public), &base(), None, None).unwrap_err();
    assert!(error.contains("no public address"), "{error}");
}

#[tokio::test]
async fn the_transaction_log_names_every_cloud_call_made_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let engine = engine(Arc::new(TestCloud::new(&root)), dir.path());
    let out = dir.path().join("log.json");
    let text = format!(
        "{{domains: {{d: {{'attach-volume': [{{device: '/dev/sdf', source: 'p', 'pool-name': 'pl',
            exec: [{{lines: [{{argv: ['sh', '-c', 'printf %s \"$0\" > {out}', '{{transaction_log}}']}}]}}]}}]}}}}}}",
        out = out.display()
    );
    let outcome = engine.init(&config(&text), Event::Starting, &base()).await;
    assert!(!outcome.failed(), "{outcome:?}");
    let written = fs_err::read_to_string(&out).unwrap();
    assert!(written.contains("\n\t{"), "tab-indented, as ec2fleetd's: {written}");
    let log: serde_json::Value = serde_json::from_str(&written).unwrap();
    let calls = log.as_array().unwrap();
    assert_eq!(calls.len(), 1, "the hook runs after the claim, before anything else: {log:#}");
    assert_eq!(calls[0]["platform"], "aws");
    assert_eq!(calls[0]["domain"], "d");
    assert_eq!(calls[0]["method"], "claim_volume");
    assert_eq!(calls[0]["dry"], false);
    assert_eq!(calls[0]["param"]["entry"]["pool_name"], "pl", "{log:#}");

    // `{all_json}` carries it too, and the release at undo joins the log.
    let values = domain_values(&base(), "d", &engine.context.calls);
    let all: serde_json::Value = serde_json::from_str(&values["all_json"]).unwrap();
    assert_eq!(all["transaction_log"], values["transaction_log"]);
    assert!(engine.undo().await.is_empty());
    let methods: Vec<String> =
        engine.context.calls.calls().iter().map(|c| c.method.to_owned()).collect();
    assert_eq!(methods, ["claim_volume", "commit_volume", "release_volume"], "{methods:?}");
}
