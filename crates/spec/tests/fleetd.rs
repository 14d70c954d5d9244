//! ec2fleetd configs as flotilla reads them: the README's two examples, JSON5, every macro,
//! `ec`, every event, each ec2fleetd bug with what flotilla does instead, and every mistake
//! reported at once, located.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_spec::fleetd::{
    Event, ExitCodes, FleetdDocument, MACROS, NotifyBackend, PoolPreference, RecordAddress,
    VolumeSource, parse_fleetd_config,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fleetd").join(name)
}

fn parse(name: &str) -> FleetdDocument {
    let path = fixture(name);
    let source = fs_err::read_to_string(&path).expect("the fixture exists");
    parse_fleetd_config(&source, Path::new(name)).unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

fn parse_text(source: &str) -> Result<FleetdDocument, String> {
    parse_fleetd_config(source, Path::new("c.jsonc")).map_err(|e| e.to_string())
}

fn minimal(domain_body: &str) -> String {
    format!("{{domains: {{d: {{{domain_body}}}}}}}")
}

#[test]
fn the_readme_game_server_reads_as_ec2fleetd_means_it() {
    let document = parse("game-server.jsonc");
    assert!(document.warnings.is_empty(), "{:?}", document.warnings);
    let config = &document.config;
    assert_eq!(config.hostname.as_deref(), Some("my-world.mc"));
    let domain = &config.domains[0];
    assert_eq!(domain.name, "my-world.mc");
    let volume = &domain.attach_volume[0];
    assert_eq!(volume.source, [VolumeSource::Fixed]);
    assert_eq!(volume.volume_id.as_deref(), Some("vol-0a1b2c3d4e5f60718"));
    assert!(volume.critical);
    assert_eq!(volume.exec[0].lines[0].argv, ["/bin/mount", "/mnt/mc"]);
    assert_eq!(domain.update_route53[0].name, "my-world.mc.");
    assert_eq!(domain.update_route53[0].ttl, 300);
    assert!(domain.exec[0].runs_on(Event::Started) && !domain.exec[0].runs_on(Event::Interrupted));
    assert_eq!(domain.exec[1].lines[0].argv, ["/usr/local/bin/mc-interrupted"]);
    assert_eq!(domain.notify[0].backend, NotifyBackend::Sns);
    assert!(domain.notify[0].sends_on(Event::Interrupted));
    // `hostname` (ignored by ec2fleetd) and the record name without a dot are differences.
    let fields: Vec<&str> = document.differences.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["domains.my-world.mc.update-route53[0].name", "hostname"]);
}

#[test]
fn the_readme_bitcoin_nodes_read_with_their_index_macro() {
    let document = parse("bitcoin-nodes.jsonc");
    let config = &document.config;
    assert_eq!(config.hostname.as_deref(), Some("node-{ami-i}.btcn.example.com"));
    let domain = &config.domains[0];
    assert_eq!(domain.attach_volume[0].source, [VolumeSource::Pool]);
    assert_eq!(domain.attach_volume[0].pool_name.as_deref(), Some("btc-nodes"));
    assert_eq!(domain.attach_volume[0].pool_pref, PoolPreference::Random);
    assert_eq!(domain.update_route53[0].name, "node-{ami-i}.btcn.example.com.");
    assert_eq!(domain.exec[1].lines.len(), 2);
}

/// JSON5 as pyjson5 reads it: comments, trailing commas, single quotes, unquoted keys, hex.
#[test]
fn json5_syntax_table() {
    let cases: &[(&str, &str)] = &[
        ("line comment", "{domains: {d: {}}, // c\n}"),
        ("block comment", "{/* c */ domains: {d: {}}}"),
        ("trailing commas", "{domains: {d: {exec: [{lines: [{argv: ['a',],},],},],},},}"),
        ("single quotes", "{'domains': {'d': {}}}"),
        ("double quotes", "{\"domains\": {\"d\": {}}}"),
        ("unquoted keys", "{domains: {d: {}}}"),
        (
            "hex ttl",
            "{domains: {d: {'update-route53': [{hostedzone: 'Z', name: 'a.', ttl: 0x3C}]}}}",
        ),
        ("plus number", "{timeout: +30, domains: {d: {}}}"),
        ("decimal timeout", "{timeout: 1.5, domains: {d: {}}}"),
    ];
    for (what, source) in cases {
        assert!(parse_text(source).is_ok(), "{what}: {:?}", parse_text(source).err());
    }
    let hex = parse_text(cases[6].1).unwrap();
    assert_eq!(hex.config.domains[0].update_route53[0].ttl, 60);
    assert_eq!(parse_text(cases[8].1).unwrap().config.timeout, Some(Duration::from_millis(1500)));
}

#[test]
fn every_macro_is_accepted_and_volume_macros_only_in_volume_hooks() {
    for (name, _) in MACROS {
        let volume_only =
            ["attach_source", "attach_op", "volume_id", "volume_pool", "attached_device"]
                .contains(name);
        let domain_hook =
            minimal(&format!("exec: [{{lines: [{{argv: ['echo', '{{{name}}}']}}]}}]"));
        assert_eq!(parse_text(&domain_hook).is_ok(), !volume_only, "{name} in a domain hook");
        let volume_hook = minimal(&format!(
            "'attach-volume': [{{device: '/dev/sdf', source: 'p', 'pool-name': 'p', exec: [{{lines: [{{argv: ['echo', '{{{name}}}']}}]}}]}}]"
        ));
        assert!(parse_text(&volume_hook).is_ok(), "{name} in a volume hook");
    }
    assert!(parse_text(&minimal("exec: [{lines: [{argv: ['echo', '{{literal}}']}]}]")).is_ok());
    let error =
        parse_text(&minimal("exec: [{lines: [{argv: ['echo', '{instance_idx}']}]}]")).unwrap_err();
    assert!(
        error.contains("unknown macro `{instance_idx}`")
            && error.contains("did you mean `{instance_id}`?"),
        "{error}"
    );
}

#[test]
fn exit_code_table() {
    let codes = |ec: &str| {
        parse_text(&minimal(&format!("exec: [{{lines: [{{argv: ['a'], ec: {ec}}}]}}]")))
            .map(|d| d.config.domains[0].exec[0].lines[0].ec.clone())
    };
    let ranges = |r: &[(i64, i64)]| ExitCodes::Ranges(r.to_vec());
    assert_eq!(codes("'0'").unwrap(), ranges(&[(0, 1)]));
    assert_eq!(codes("'0-2,5'").unwrap(), ranges(&[(0, 2), (5, 6)]), "end-exclusive");
    assert_eq!(codes("'0-1'").unwrap(), ranges(&[(0, 1)]), "0-1 is {{0}}");
    assert_eq!(codes("null").unwrap(), ExitCodes::Any);
    assert_eq!(codes("3").unwrap(), ranges(&[(3, 4)]), "an integer, which crashes ec2fleetd");
    assert_eq!(codes("[0, '2-4']").unwrap(), ranges(&[(0, 1), (2, 4)]));
    assert!(codes("'1-1'").is_err() && codes("'a'").is_err() && codes("{}").is_err());
    let default = parse_text(&minimal("exec: [{lines: [{argv: ['a']}]}]")).unwrap();
    assert_eq!(default.config.domains[0].exec[0].lines[0].ec, ranges(&[(0, 1)]));
}

#[test]
fn every_event_is_known_and_a_misspelt_one_is_an_error() {
    for event in [
        "starting",
        "started",
        "interrupted",
        "stopping",
        "failed",
        "rebalance",
        "scheduled-event",
        "binary-exited",
    ] {
        let source = minimal(&format!("exec: [{{on: ['{event}'], lines: [{{argv: ['a']}}]}}]"));
        let document = parse_text(&source).unwrap_or_else(|e| panic!("{event}: {e}"));
        assert_eq!(document.config.domains[0].exec[0].on.as_ref().unwrap()[0].as_str(), event);
    }
    let error =
        parse_text(&minimal("exec: [{on: ['interupted'], lines: [{argv: ['a']}]}]")).unwrap_err();
    assert!(error.contains("did you mean `interrupted`?"), "{error}");
}

/// Each ec2fleetd bug of refs part A, and flotilla's behaviour.
#[test]
fn ec2fleetd_bugs_and_what_flotilla_does() {
    // Several events in one `on` do not share a list with later specs (the shared-list bug):
    // each spec runs exactly on its own events, in file order.
    let document = parse_text(&minimal(
        "exec: [{on: ['interrupted', 'stopping'], lines: [{argv: ['A']}]}, {on: ['stopping'], lines: [{argv: ['B']}]}]",
    ))
    .unwrap();
    let hooks = &document.config.domains[0].exec;
    let on_interrupted: Vec<&str> = hooks
        .iter()
        .filter(|h| h.runs_on(Event::Interrupted))
        .map(|h| h.lines[0].argv[0].as_str())
        .collect();
    assert_eq!(on_interrupted, ["A"]);
    // `aws-sqs` sends (ec2fleetd did nothing), `ans-sqs` still works.
    for backend in ["aws-sqs", "ans-sqs"] {
        let document = parse_text(&minimal(&format!(
            "notify: [{{backend: '{backend}', options: {{'queue-url': 'https://sqs.us-east-1.amazonaws.com/1/q'}}}}]"
        )))
        .unwrap();
        assert_eq!(document.config.domains[0].notify[0].backend, NotifyBackend::Sqs);
        assert_eq!(document.differences.len(), usize::from(backend == "aws-sqs"));
    }
    // A volume hook with `on` runs on those events (ec2fleetd never ran it): a difference.
    let document = parse_text(&minimal(
        "'attach-volume': [{device: '/dev/sdf', source: 'p', 'pool-name': 'p', exec: [{on: ['started'], lines: [{argv: ['a']}]}]}]",
    ))
    .unwrap();
    assert!(document.differences[0].note.contains("never runs a volume hook that has `on`"));
    // `c` without `pool-name` is refused before anything runs (ec2fleetd failed at CreateVolume).
    let error = parse_text(&minimal(
        "'attach-volume': [{device: '/dev/sdf', source: 'c', create: {Size: 1}}]",
    ))
    .unwrap_err();
    assert!(error.contains("sources `p` and `c` need `pool-name`"), "{error}");
    // A partial envelope is refused (ec2fleetd crashed formatting None).
    let error = parse_text(&minimal(
        "notify: [{backend: 'aws-sns', options: {topic: 'arn:aws:sns:us-east-1:1:t'}, envelope: {subject: 's'}}]",
    ))
    .unwrap_err();
    assert!(error.contains("missing required key `body`"), "{error}");
    // `{ami-i}` is a macro (ec2fleetd died on it).
    assert!(parse_text(&minimal("exec: [{lines: [{argv: ['echo', '{ami-i}']}]}]")).is_ok());
    // Empty `domains` is an error, located (ec2fleetd crashed with exit 1).
    let error =
        parse_text(&fs_err::read_to_string(fixture("empty-domains.jsonc")).unwrap()).unwrap_err();
    assert!(error.contains("c.jsonc:1:14: error: domains: `domains` is empty"), "{error}");
}

#[test]
fn every_mistake_is_reported_at_once_and_located() {
    let source = fs_err::read_to_string(fixture("mistakes.jsonc")).unwrap();
    let rendered = match parse_fleetd_config(&source, Path::new("mistakes.jsonc")) {
        Ok(document) => panic!("parsed: {document:?}"),
        Err(errors) => format!("{errors}\n"),
    };
    let expected_file = fixture("mistakes.expected");
    if std::env::var_os("FLOTILLA_BLESS").is_some() {
        fs_err::write(&expected_file, &rendered).unwrap();
        return;
    }
    let expected = fs_err::read_to_string(&expected_file).unwrap_or_default();
    assert_eq!(
        rendered, expected,
        "if the change is deliberate, run `FLOTILLA_BLESS=1 cargo test -p flotilla-spec --test fleetd` and review the diff"
    );
}

/// `address` and `wait-insync` are flotilla's own keys on a record: read, defaulted as
/// ec2fleetd behaved (public, no wait), listed as differences when written, and a wrong
/// address is a located error.
#[test]
fn a_record_names_its_address_and_whether_to_wait() {
    let plain =
        parse_text(&minimal("'update-route53': [{hostedzone: 'Z', name: 'a.', ttl: 60}]")).unwrap();
    let record = &plain.config.domains[0].update_route53[0];
    assert_eq!((record.address, record.wait_insync), (RecordAddress::Public, false));
    assert!(plain.differences.is_empty(), "{:?}", plain.differences);
    let chosen = parse_text(&minimal(
        "'update-route53': [{hostedzone: 'Z', name: 'a.', ttl: 60, address: 'private', 'wait-insync': true}]",
    ))
    .unwrap();
    let record = &chosen.config.domains[0].update_route53[0];
    assert_eq!((record.address, record.wait_insync), (RecordAddress::Private, true));
    let fields: Vec<&str> = chosen.differences.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["domains.d.update-route53[0].address", "domains.d.update-route53[0].wait-insync"]
    );
    let wrong = parse_text(&minimal(
        "'update-route53': [{hostedzone: 'Z', name: 'a.', ttl: 60, address: 'elastic'}]",
    ))
    .unwrap_err();
    assert!(wrong.contains("unknown address `elastic`"), "{wrong}");
    assert!(wrong.contains("c.jsonc:1:"), "{wrong}");
}
