//! Every validation rule of the fleet spec with its exact diagnostic (message, place, field and
//! help), as `flotilla validate` prints it. Each row edits the small valid spec in `common`.

mod common;

use common::{edited, errors_of, parse};

/// (rule, spec, expected rendering of the errors). The expected text starts after a newline so
/// that it lines up in the source.
fn rows() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "storage_size is at least 1 GiB",
            edited(&[("  storage_size: 20", "  storage_size: 0")]),
            r#"
fleet.yaml:4:17: error: monitoring.storage_size: storage_size must be at least 1 GiB, found 0
  help: give the root volume's size in GiB, e.g. `storage_size: 10`
1 error in fleet.yaml
"#,
        ),
        (
            "storage_class is one of the EBS volume types",
            edited(&[("  storage_class: gp3", "  storage_class: gp4")]),
            r#"
fleet.yaml:5:18: error: monitoring.storage_class: unknown storage class `gp4`
  help: use one of gp2, gp3, io1, io2, sc1, st1, standard
1 error in fleet.yaml
"#,
        ),
        (
            "storage classes are lower-case",
            edited(&[("    storage_class: gp3", "    storage_class: GP3")]),
            r#"
fleet.yaml:12:20: error: instances[0].storage_class: unknown storage class `GP3`
  help: storage classes are lower-case: `gp3`
1 error in fleet.yaml
"#,
        ),
        (
            "io1 needs storage_iops",
            edited(&[("    storage_class: gp3", "    storage_class: io1")]),
            r#"
fleet.yaml:12:20: error: instances[0].storage_iops: storage class `io1` needs `storage_iops`
  help: add `storage_iops:` from 100 to 500 for this volume
1 error in fleet.yaml
"#,
        ),
        (
            "io2 needs storage_iops",
            edited(&[("  storage_class: gp3", "  storage_class: io2")]),
            r#"
fleet.yaml:5:18: error: monitoring.storage_iops: storage class `io2` needs `storage_iops`
  help: add `storage_iops:` from 100 to 20000 for this volume
1 error in fleet.yaml
"#,
        ),
        (
            "gp3 IOPS are at least 3000",
            edited(&[("    storage_class: gp3", "    storage_class: gp3\n    storage_iops: 2000")]),
            r#"
fleet.yaml:13:19: error: instances[0].storage_iops: storage_iops 2000 is out of range for a 10 GiB gp3 volume (3000 to 5000)
  help: set storage_iops from 3000 to 5000
1 error in fleet.yaml
"#,
        ),
        (
            "gp3 IOPS are at most 500 per GiB",
            edited(&[("    storage_class: gp3", "    storage_class: gp3\n    storage_iops: 6000")]),
            r#"
fleet.yaml:13:19: error: instances[0].storage_iops: storage_iops 6000 is out of range for a 10 GiB gp3 volume (3000 to 5000)
  help: lower storage_iops to at most 5000, or grow storage_size: gp3 allows 500 IOPS per GiB, up to 80000
1 error in fleet.yaml
"#,
        ),
        (
            "io1 IOPS are at most 50 per GiB",
            edited(&[("    storage_class: gp3", "    storage_class: io1\n    storage_iops: 1000")]),
            r#"
fleet.yaml:13:19: error: instances[0].storage_iops: storage_iops 1000 is out of range for a 10 GiB io1 volume (100 to 500)
  help: lower storage_iops to at most 500, or grow storage_size: io1 allows 50 IOPS per GiB, up to 64000
1 error in fleet.yaml
"#,
        ),
        (
            "an io1 volume under 2 GiB cannot reach 100 IOPS",
            edited(&[("    storage_size: 10", "    storage_size: 1"), ("    storage_class: gp3", "    storage_class: io1\n    storage_iops: 100")]),
            r#"
fleet.yaml:13:19: error: instances[0].storage_iops: a 1 GiB io1 volume cannot have provisioned IOPS: io1 allows 50 IOPS per GiB and at least 100
  help: grow storage_size to at least 2
1 error in fleet.yaml
"#,
        ),
        (
            "io2 IOPS are at most 1000 per GiB",
            edited(&[("    storage_class: gp3", "    storage_class: io2\n    storage_iops: 20000")]),
            r#"
fleet.yaml:13:19: error: instances[0].storage_iops: storage_iops 20000 is out of range for a 10 GiB io2 volume (100 to 10000)
  help: lower storage_iops to at most 10000, or grow storage_size: io2 allows 1000 IOPS per GiB, up to 256000
1 error in fleet.yaml
"#,
        ),
        (
            "only gp3, io1 and io2 take storage_iops",
            edited(&[("  storage_class: gp3", "  storage_class: gp2\n  storage_iops: 3000")]),
            r#"
fleet.yaml:6:17: error: monitoring.storage_iops: storage class `gp2` does not take `storage_iops` (found 3000)
  help: remove storage_iops, or use gp3, io1 or io2 for provisioned IOPS
1 error in fleet.yaml
"#,
        ),
        (
            "only gp3 takes storage_throughput",
            edited(&[("    storage_class: gp3", "    storage_class: io2\n    storage_iops: 1000\n    storage_throughput: 250")]),
            r#"
fleet.yaml:14:25: error: instances[0].storage_throughput: storage class `io2` does not take `storage_throughput` (found 250)
  help: remove storage_throughput, or use `storage_class: gp3`
1 error in fleet.yaml
"#,
        ),
        (
            "storage_throughput is 125 to 2000",
            edited(&[("    storage_class: gp3", "    storage_class: gp3\n    storage_throughput: 100")]),
            r#"
fleet.yaml:13:25: error: instances[0].storage_throughput: storage_throughput 100 is out of range (125 to 2000 MiB/s)
  help: set storage_throughput from 125 to 2000
1 error in fleet.yaml
"#,
        ),
        (
            "storage_throughput is at most a quarter of the default 3000 IOPS",
            edited(&[("    storage_class: gp3", "    storage_class: gp3\n    storage_throughput: 1000")]),
            r#"
fleet.yaml:13:25: error: instances[0].storage_throughput: storage_throughput 1000 is more than 750 MiB/s, a quarter of the default 3000 IOPS
  help: lower storage_throughput to 750, or set storage_iops to at least 4000
1 error in fleet.yaml
"#,
        ),
        (
            "storage_throughput is at most a quarter of storage_iops",
            edited(&[("    storage_class: gp3", "    storage_class: gp3\n    storage_iops: 4000\n    storage_throughput: 1200")]),
            r#"
fleet.yaml:14:25: error: instances[0].storage_throughput: storage_throughput 1200 is more than 1000 MiB/s, a quarter of storage_iops 4000
  help: lower storage_throughput to 1000, or set storage_iops to at least 4800
1 error in fleet.yaml
"#,
        ),
        (
            "the tag matches [A-Za-z0-9_-]+",
            edited(&[("tag: demo", "tag: my fleet")]),
            r#"
fleet.yaml:1:6: error: tag: the tag `my fleet` may only contain ASCII letters, digits, `_` and `-`
  help: rename it, e.g. to `my-fleet`
1 error in fleet.yaml
"#,
        ),
        (
            "the tag is not empty",
            edited(&[("tag: demo", "tag: ''")]),
            r#"
fleet.yaml:1:6: error: tag: the tag is empty
  help: use letters, digits, `_` and `-`, e.g. `my-fleet`
1 error in fleet.yaml
"#,
        ),
        (
            "instance names match [A-Za-z0-9_-]+",
            edited(&[("  - name: node", "  - name: node.1")]),
            r#"
fleet.yaml:8:11: error: instances[0].name: the instance name `node.1` may only contain ASCII letters, digits, `_` and `-`
  help: rename it, e.g. to `node-1`
1 error in fleet.yaml
"#,
        ),
        (
            "`monitoring` is reserved, ignoring case",
            edited(&[("  - name: node", "  - name: Monitoring")]),
            r#"
fleet.yaml:8:11: error: instances[0].name: the name `Monitoring` is reserved for the monitoring instance
  help: choose another name
1 error in fleet.yaml
"#,
        ),
        (
            "instance names are unique ignoring case",
            edited(&[("    profiling: false", "    profiling: false\n  - name: NODE\n    region: us-east-1\n    instance_type: c7g.large\n    storage_size: 10\n    storage_class: gp3\n    binary: target/release/node\n    config: node.conf\n    profiling: false")]),
            r#"
fleet.yaml:16:11: error: instances[1].name: instance name `NODE` is already taken: instances[0] (line 8) is named `node`
  help: rename one of them: names must be unique ignoring case
1 error in fleet.yaml
"#,
        ),
        (
            "instance names are unique after count expansion",
            edited(&[("    profiling: false", "    profiling: false\n    count: 3\n  - name: node-1\n    region: us-east-1\n    instance_type: c7g.large\n    storage_size: 10\n    storage_class: gp3\n    binary: target/release/node\n    config: node.conf\n    profiling: false")]),
            r#"
fleet.yaml:17:11: error: instances[1].name: instance name `node-1` is already taken: instances[0] (line 8) runs `node` with count 3, which includes `node-1`
  help: rename one of them: names must be unique ignoring case; an entry named `x` with `count: N` runs as `x-0` … `x-(N-1)`
1 error in fleet.yaml
"#,
        ),
        (
            "count is at least 1",
            edited(&[("    profiling: false", "    profiling: false\n    count: 0")]),
            r#"
fleet.yaml:16:12: error: instances[0].count: count 0 is out of range (1 to 10000)
  help: remove `count` for one instance, or give the number of replicas, from 1 to 10000
1 error in fleet.yaml
"#,
        ),
        (
            "count is at most 10000",
            edited(&[("    profiling: false", "    profiling: false\n    count: 20000")]),
            r#"
fleet.yaml:16:12: error: instances[0].count: count 20000 is out of range (1 to 10000)
  help: remove `count` for one instance, or give the number of replicas, from 1 to 10000
1 error in fleet.yaml
"#,
        ),
        (
            "port 0 is not a port",
            edited(&[("    port: 4545", "    port: 0")]),
            r#"
fleet.yaml:18:11: error: ports[0].port: `0` is not a port number (1 to 65535)
  help: use a single port from 1 to 65535 (ranges are not supported)
1 error in fleet.yaml
"#,
        ),
        (
            "protocol is not empty",
            edited(&[("  - protocol: tcp", "  - protocol: ''")]),
            r#"
fleet.yaml:17:15: error: ports[0].protocol: `protocol` is empty
  help: give an IP protocol, e.g. `tcp` or `udp` (EC2 takes it as written)
1 error in fleet.yaml
"#,
        ),
        (
            "cidr needs a prefix length",
            edited(&[("    cidr: 0.0.0.0/0", "    cidr: 203.0.113.7")]),
            r#"
fleet.yaml:19:11: error: ports[0].cidr: `203.0.113.7` is an address, not a CIDR block
  help: add a prefix length: `203.0.113.7/32` for this one address
1 error in fleet.yaml
"#,
        ),
        (
            "cidr prefix length fits the address family",
            edited(&[("    cidr: 0.0.0.0/0", "    cidr: 10.0.0.0/33")]),
            r#"
fleet.yaml:19:11: error: ports[0].cidr: `10.0.0.0/33` is not a CIDR block: the prefix length must be 0 to 32
  help: write an address and a prefix length, e.g. `0.0.0.0/0` for everyone, `203.0.113.7/32` for one IPv4 address or `::/0` for every IPv6 address
1 error in fleet.yaml
"#,
        ),
        (
            "cidr holds a full IP address",
            edited(&[("    cidr: 0.0.0.0/0", "    cidr: 10.0.0/8")]),
            r#"
fleet.yaml:19:11: error: ports[0].cidr: `10.0.0/8` is not a CIDR block: `10.0.0` is not an IP address
  help: write an address and a prefix length, e.g. `0.0.0.0/0` for everyone, `203.0.113.7/32` for one IPv4 address or `::/0` for every IPv6 address
1 error in fleet.yaml
"#,
        ),
        (
            "provider is local or aws",
            edited(&[("tag: demo", "tag: demo\nprovider: gcp")]),
            r#"
fleet.yaml:2:11: error: provider: unknown provider `gcp`
  help: write `provider: local` or `provider: aws`
1 error in fleet.yaml
"#,
        ),
        (
            "provider is lower-case",
            edited(&[("tag: demo", "tag: demo\nprovider: Local")]),
            r#"
fleet.yaml:2:11: error: provider: unknown provider `Local`
  help: did you mean `local`?
1 error in fleet.yaml
"#,
        ),
        (
            "args is a list",
            edited(&[("    profiling: false", "    profiling: false\n    args: --fast")]),
            r#"
fleet.yaml:16:11: error: instances[0].args: expected a sequence, found `--fast`
  help: write one item per line starting with `- `, or `args: []` for none
1 error in fleet.yaml
"#,
        ),
        (
            "args are strings",
            edited(&[("    profiling: false", "    profiling: false\n    args: [--fast, {a: 1}]")]),
            r#"
fleet.yaml:16:20: error: instances[0].args[1]: expected a string, found a mapping
  help: write a single value on the same line as the key
1 error in fleet.yaml
"#,
        ),
        (
            "env names are valid, values strings, names not repeated",
            edited(&[("    profiling: false", "    profiling: false\n    env:\n      1BAD: x\n      GOOD: [1]\n      OK: y\n      OK: z")]),
            r#"
fleet.yaml:17:7: error: instances[0].env.1BAD: `1BAD` is not a valid environment variable name
  help: use letters, digits and `_`, not starting with a digit
fleet.yaml:18:13: error: instances[0].env.GOOD: expected a string, found a sequence
  help: write a single value on the same line as the key
fleet.yaml:20:7: error: instances[0].env.OK: `OK` is given twice (first on line 19)
  help: keep one of them
3 errors in fleet.yaml
"#,
        ),
        (
            "env is a mapping",
            edited(&[("    profiling: false", "    profiling: false\n    env: RUST_LOG=debug")]),
            r#"
fleet.yaml:16:10: error: instances[0].env: expected a mapping of names to values, found `RUST_LOG=debug`
  help: write one `NAME: value` per line, indented under `env:`
1 error in fleet.yaml
"#,
        ),
        (
            "health http needs its port",
            edited(&[("    profiling: false", "    profiling: false\n    health: http")]),
            r#"
fleet.yaml:16:13: error: instances[0].health: a `http` health check needs its port
  help: write `health: none`, `health: {http: {port: 8080, path: /health}}` or `health: {tcp: {port: 8080}}`
1 error in fleet.yaml
"#,
        ),
        (
            "health is none or a mapping",
            edited(&[("    profiling: false", "    profiling: false\n    health: always")]),
            r#"
fleet.yaml:16:13: error: instances[0].health: expected `none` or a mapping, found `always`
  help: write `health: none`, `health: {http: {port: 8080, path: /health}}` or `health: {tcp: {port: 8080}}`
1 error in fleet.yaml
"#,
        ),
        (
            "health path starts with /",
            edited(&[("    profiling: false", "    profiling: false\n    health: {http: {port: 8080, path: health}}")]),
            r#"
fleet.yaml:16:39: error: instances[0].health.http.path: the health check path must start with `/`, found `health`
  help: write `path: /health`
1 error in fleet.yaml
"#,
        ),
        (
            "health is http or tcp, not both",
            edited(&[("    profiling: false", "    profiling: false\n    health: {http: {port: 8080}, tcp: {port: 9000}}")]),
            r#"
fleet.yaml:16:39: error: instances[0].health: a health check is `http` or `tcp`, not both
  help: keep one of them
1 error in fleet.yaml
"#,
        ),
        (
            "health kinds are http and tcp",
            edited(&[("    profiling: false", "    profiling: false\n    health: {htp: {port: 8080}}")]),
            r#"
fleet.yaml:16:14: error: instances[0].health.htp: unknown key `htp`
  help: did you mean `http`?
1 error in fleet.yaml
"#,
        ),
        (
            "health http needs port",
            edited(&[("    profiling: false", "    profiling: false\n    health: {http: {path: /ok}}")]),
            r#"
fleet.yaml:16:20: error: instances[0].health.http.port: missing required key `port`
  help: add `port:` with the port the binary serves HTTP on
1 error in fleet.yaml
"#,
        ),
        (
            "health mapping names a kind",
            edited(&[("    profiling: false", "    profiling: false\n    health: {}")]),
            r#"
fleet.yaml:16:13: error: instances[0].health: a health check mapping needs `http` or `tcp`
  help: write `health: none`, `health: {http: {port: 8080, path: /health}}` or `health: {tcp: {port: 8080}}`
1 error in fleet.yaml
"#,
        ),
        (
            "health is not null",
            edited(&[("    profiling: false", "    profiling: false\n    health: ~")]),
            r#"
fleet.yaml:16:13: error: instances[0].health: expected `none` or a mapping, found null (`~`)
  help: write `health: none`, `health: {http: {port: 8080, path: /health}}` or `health: {tcp: {port: 8080}}`
1 error in fleet.yaml
"#,
        ),
        (
            "health kinds are http and tcp, and an unknown one is one error",
            edited(&[("    profiling: false", "    profiling: false\n    health: {grpc: {port: 1}}")]),
            r#"
fleet.yaml:16:14: error: instances[0].health.grpc: unknown key `grpc`
  help: the keys here are: `http`, `tcp`
1 error in fleet.yaml
"#,
        ),
        (
            "health tcp refuses unknown keys",
            edited(&[("    profiling: false", "    profiling: false\n    health: {tcp: {port: 1, timeout: 3s}}")]),
            r#"
fleet.yaml:16:29: error: instances[0].health.tcp.timeout: unknown key `timeout`
  help: the keys here are: `port`
1 error in fleet.yaml
"#,
        ),
        (
            "restart policy is always or on-failure",
            edited(&[("    profiling: false", "    profiling: false\n    restart: on_failure")]),
            r#"
fleet.yaml:16:14: error: instances[0].restart: unknown restart policy `on_failure`
  help: did you mean `on-failure`?
1 error in fleet.yaml
"#,
        ),
        (
            "restart policy without a close match",
            edited(&[("    profiling: false", "    profiling: false\n    restart: never")]),
            r#"
fleet.yaml:16:14: error: instances[0].restart: unknown restart policy `never`
  help: write `always` or `on-failure`, or a mapping `{policy: on-failure, initial_backoff: 250ms, max_backoff: 30s}`
1 error in fleet.yaml
"#,
        ),
        (
            "initial_backoff is at most max_backoff",
            edited(&[("    profiling: false", "    profiling: false\n    restart:\n      initial_backoff: 1m\n      max_backoff: 30s")]),
            r#"
fleet.yaml:17:24: error: instances[0].restart.initial_backoff: initial_backoff `1m` is longer than max_backoff `30s`
  help: make initial_backoff at most max_backoff
1 error in fleet.yaml
"#,
        ),
        (
            "initial_backoff is at most the default max_backoff",
            edited(&[("    profiling: false", "    profiling: false\n    restart: {initial_backoff: 1m}")]),
            r#"
fleet.yaml:16:32: error: instances[0].restart.initial_backoff: initial_backoff `1m` is longer than max_backoff `30s` (the default)
  help: make initial_backoff at most max_backoff
1 error in fleet.yaml
"#,
        ),
        (
            "keepalive is at most 30 days",
            edited(&[("    profiling: false", "    profiling: false\n    keepalive: 31days")]),
            r#"
fleet.yaml:16:16: error: instances[0].keepalive: `31days` is longer than 30days, the longest `keepalive` may be
  help: write a duration from 1ms to 30days
1 error in fleet.yaml
"#,
        ),
        (
            "backoffs are longer than 0",
            edited(&[("    profiling: false", "    profiling: false\n    restart: {initial_backoff: 0s}")]),
            r#"
fleet.yaml:16:32: error: instances[0].restart.initial_backoff: `initial_backoff` must be longer than 0
  help: write a duration such as `250ms` or `30s`
1 error in fleet.yaml
"#,
        ),
        (
            "backoffs have a unit",
            edited(&[("    profiling: false", "    profiling: false\n    restart: {max_backoff: 30}")]),
            r#"
fleet.yaml:16:28: error: instances[0].restart.max_backoff: `30` is not a duration (time unit needed, for example 30sec or 30ms)
  help: write a number with a unit, e.g. `30s`, `250ms` or `2m`
1 error in fleet.yaml
"#,
        ),
        (
            "batch_size and max_unavailable are exclusive",
            edited(&[("tag: demo", "tag: demo\nupdate:\n  batch_size: 2\n  max_unavailable: 50%")]),
            r#"
fleet.yaml:4:20: error: update.max_unavailable: `batch_size` and `max_unavailable` both set the batch size
  help: keep `batch_size: N` for a fixed number of instances, or `max_unavailable: N%` for a share of the fleet
1 error in fleet.yaml
"#,
        ),
        (
            "batch_size is at least 1",
            edited(&[("tag: demo", "tag: demo\nupdate: {batch_size: 0}")]),
            r#"
fleet.yaml:2:22: error: update.batch_size: batch_size must be at least 1
  help: give the number of instances updated at once, e.g. `batch_size: 2`
1 error in fleet.yaml
"#,
        ),
        (
            "max_unavailable has a percent sign",
            edited(&[("tag: demo", "tag: demo\nupdate: {max_unavailable: 25}")]),
            r#"
fleet.yaml:2:27: error: update.max_unavailable: `25` is not a percentage
  help: write it with a percent sign, e.g. `max_unavailable: 25%`
1 error in fleet.yaml
"#,
        ),
        (
            "max_unavailable is at least 1%",
            edited(&[("tag: demo", "tag: demo\nupdate: {max_unavailable: 0%}")]),
            r#"
fleet.yaml:2:27: error: update.max_unavailable: `0%` is out of range (1% to 100%)
  help: write a share from 1% to 100%, e.g. `max_unavailable: 25%`
1 error in fleet.yaml
"#,
        ),
        (
            "max_unavailable is at most 100%",
            edited(&[("tag: demo", "tag: demo\nupdate: {max_unavailable: 150%}")]),
            r#"
fleet.yaml:2:27: error: update.max_unavailable: `150%` is out of range (1% to 100%)
  help: write a share from 1% to 100%, e.g. `max_unavailable: 25%`
1 error in fleet.yaml
"#,
        ),
        (
            "health_deadline is longer than 0",
            edited(&[("tag: demo", "tag: demo\nupdate: {health_deadline: 0s}")]),
            r#"
fleet.yaml:2:27: error: update.health_deadline: `health_deadline` must be longer than 0
  help: write a duration such as `250ms` or `30s`
1 error in fleet.yaml
"#,
        ),
        (
            "update refuses unknown keys",
            edited(&[("tag: demo", "tag: demo\nupdate: {batch: 2}")]),
            r#"
fleet.yaml:2:10: error: update.batch: unknown key `batch`
  help: the keys here are: `batch_size`, `max_unavailable`, `health_deadline`
1 error in fleet.yaml
"#,
        ),
        (
            "update is a mapping",
            edited(&[("tag: demo", "tag: demo\nupdate: fast")]),
            r#"
fleet.yaml:2:9: error: update: expected a mapping, found `fast`
  help: write the keys of `update` indented under it
1 error in fleet.yaml
"#,
        ),
        (
            "a misspelt required key: warning and a rename hint",
            edited(&[("  storage_class: gp3", "  storage_clas: gp3")]),
            r#"
fleet.yaml:3:3: error: monitoring.storage_class: missing required key `storage_class`
  help: rename `storage_clas` (line 5) to `storage_class`
fleet.yaml:5:3: warning: monitoring.storage_clas: unknown key `storage_clas` is ignored
  help: did you mean `storage_class`?
1 error in fleet.yaml
"#,
        ),
        (
            "binary is not empty",
            edited(&[("    binary: target/release/node", "    binary: ''")]),
            r#"
fleet.yaml:13:13: error: instances[0].binary: `binary` is empty
  help: give the path of the binary to run
1 error in fleet.yaml
"#,
        ),
        (
            "monitoring is a mapping",
            "tag: demo\nmonitoring: big\ninstances: []\nports: []\n".to_owned(),
            r#"
fleet.yaml:2:13: error: monitoring: expected a mapping, found `big`
  help: write the keys of `monitoring` indented under it
1 error in fleet.yaml
"#,
        ),
        (
            "instances is a sequence",
            "tag: demo\nmonitoring: {instance_type: t, storage_size: 1, storage_class: gp2, dashboard: d}\ninstances: {a: 1}\nports: []\n".to_owned(),
            r#"
fleet.yaml:3:12: error: instances: expected a sequence, found a mapping
  help: write one item per line starting with `- `, or `instances: []` for none
1 error in fleet.yaml
"#,
        ),
        (
            "an empty file",
            "".to_owned(),
            r#"
fleet.yaml:1:1: error: expected a mapping, found an empty value
  help: a fleet spec is a mapping with the keys `tag`, `monitoring`, `instances` and `ports`
1 error in fleet.yaml
"#,
        ),
        (
            "the root is a mapping",
            "- a\n".to_owned(),
            r#"
fleet.yaml:1:1: error: expected a mapping, found a sequence
  help: a fleet spec is a mapping with the keys `tag`, `monitoring`, `instances` and `ports`
1 error in fleet.yaml
"#,
        ),
        (
            "keys are strings",
            "? [a]\n: 1\ntag: demo\n".to_owned(),
            r#"
fleet.yaml:1:1: error: monitoring: missing required key `monitoring`
  help: add a `monitoring:` mapping with `instance_type`, `storage_size`, `storage_class` and `dashboard`
fleet.yaml:1:1: error: instances: missing required key `instances`
  help: add `instances:` with the list of instances, or `instances: []`
fleet.yaml:1:1: error: ports: missing required key `ports`
  help: add `ports: []`: the deployer requires the key even when no port is opened
fleet.yaml:1:3: error: a key must be a string, found a sequence
  help: write the key as plain text followed by `:`
4 errors in fleet.yaml
"#,
        ),
        (
            "broken YAML is one diagnostic at the scanner's place",
            "tag: [demo\n".to_owned(),
            r#"
fleet.yaml:2:1: error: invalid YAML: while parsing a flow sequence, expected ',' or ']'
  help: fix the YAML syntax at this place
1 error in fleet.yaml
"#,
        ),
        (
            "a merge key is a warning and its keys count as missing",
            edited(&[("monitoring:", "base: &b {instance_type: t4g.small}\nmonitoring:"), ("  instance_type: t4g.small", "  <<: *b")]),
            r#"
fleet.yaml:2:1: warning: base: unknown key `base` is ignored
  help: the deployer ignores unknown keys; remove it if it is a mistake (known keys here: `tag`, `monitoring`, `instances`, `ports`, `provider`, `update`, `heal`, `image`, `image_owners`, `network`, `tags`, `iam_policies`, `iam_statements`, `boot`, `root_volume`, `host_pools`)
fleet.yaml:4:3: warning: monitoring.<<: merge key `<<` is not applied: the deployer's parser reads it as an unknown key, so the keys it would merge are missing
  help: write the keys out here, or alias a whole mapping (`key: *anchor`)
fleet.yaml:4:3: error: monitoring.instance_type: missing required key `instance_type`
  help: add `instance_type:`, e.g. `instance_type: t4g.small`; the merge key `<<` in this mapping is not applied, so keys from its anchor do not count
1 error in fleet.yaml
"#,
        ),
    ]
}

#[test]
fn every_rule_reports_its_exact_diagnostic() {
    let mut failures = Vec::new();
    for (rule, source, expected) in rows() {
        let expected = expected.strip_prefix('\n').unwrap_or(expected).trim_end();
        let actual = errors_of(&source);
        if actual != expected {
            failures.push(format!("rule: {rule}\n--- expected\n{expected}\n--- actual\n{actual}"));
        }
    }
    assert!(failures.is_empty(), "{} rule(s) differ:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn unknown_keys_warn_naming_the_key_and_a_close_known_key() {
    let document = parse(&edited(&[
        ("tag: demo", "tag: demo\nupdat: {batch_size: 2}"),
        ("    profiling: false", "    profiling: false\n    helth: none\n    spot: true"),
    ]))
    .expect("unknown keys in the deployer's mappings do not stop the spec");
    let rendered: Vec<String> = document.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        [
            "fleet.yaml:2:1: warning: updat: unknown key `updat` is ignored\n  help: did you mean `update`?",
            "fleet.yaml:17:5: warning: instances[0].helth: unknown key `helth` is ignored\n  help: did you mean `health`?",
            "fleet.yaml:18:5: warning: instances[0].spot: unknown key `spot` is ignored\n  help: the deployer ignores unknown keys; remove it if it is a mistake (known keys here: `name`, `region`, `availability_zone_group`, `instance_type`, `storage_size`, `storage_class`, `storage_iops`, `storage_throughput`, `binary`, `config`, `profiling`, `count`, `args`, `env`, `health`, `restart`, `instance_types`, `requirements`, `market`, `zones`, `host_pool`, `disks`, `image`, `image_owners`, `network`, `tags`, `boot`, `root_volume`, `lifecycle`, `keepalive`, `on_hosts_change`)",
        ]
    );
}

const MANY_ERRORS: &str = "\
tag: my fleet
monitoring:
  instance_type: t4g.small
  storage_size: 20
  storage_class: gp4
  dashboard: dashboard.json
instances:
  - name: node
    region: us-east-1
    instance_type: c7g.large
    storage_size: 10
    storage_class: gp3
    storage_iops: 90000
    binary: target/release/node
    config: node.conf
    profiling: false
  - name: NODE
    region: us-east-1
    instance_type: c7g.large
    storage_size: '10'
    storage_class: gp3
    config: node.conf
    profiling: yes
ports:
  - protocol: tcp
    port: 70000
    cidr: 0.0.0.0
update:
  batch_size: 2
  max_unavailable: 10%
";

#[test]
fn a_file_with_many_errors_reports_them_all_in_file_order() {
    let errors = parse(MANY_ERRORS).expect_err("the file has errors");
    let locations: Vec<_> = errors.diagnostics.iter().map(|d| d.location).collect();
    let mut sorted = locations.clone();
    sorted.sort();
    assert_eq!(locations, sorted, "diagnostics are in file order");
    assert_eq!(
        errors.to_string(),
        "\
fleet.yaml:1:6: error: tag: the tag `my fleet` may only contain ASCII letters, digits, `_` and `-`
  help: rename it, e.g. to `my-fleet`
fleet.yaml:5:18: error: monitoring.storage_class: unknown storage class `gp4`
  help: use one of gp2, gp3, io1, io2, sc1, st1, standard
fleet.yaml:13:19: error: instances[0].storage_iops: storage_iops 90000 is out of range for a 10 GiB gp3 volume (3000 to 5000)
  help: lower storage_iops to at most 5000, or grow storage_size: gp3 allows 500 IOPS per GiB, up to 80000
fleet.yaml:17:5: error: instances[1].binary: missing required key `binary`
  help: add `binary:` with the path of the binary to run
fleet.yaml:17:11: error: instances[1].name: instance name `NODE` is already taken: instances[0] (line 8) is named `node`
  help: rename one of them: names must be unique ignoring case
fleet.yaml:20:19: error: instances[1].storage_size: expected an integer, found the quoted string '10'
  help: remove the quotes: the deployer's parser reads only unquoted numbers
fleet.yaml:23:16: error: instances[1].profiling: expected true or false, found `yes`
  help: write `true` or `false` (the deployer's parser also takes True/TRUE and False/FALSE, but not yes/no or on/off)
fleet.yaml:26:11: error: ports[0].port: `70000` is not a port number (1 to 65535)
  help: use a single port from 1 to 65535 (ranges are not supported)
fleet.yaml:27:11: error: ports[0].cidr: `0.0.0.0` is an address, not a CIDR block
  help: add a prefix length: `0.0.0.0/32` for this one address
fleet.yaml:30:20: error: update.max_unavailable: `batch_size` and `max_unavailable` both set the batch size
  help: keep `batch_size: N` for a fixed number of instances, or `max_unavailable: N%` for a share of the fleet
10 errors in fleet.yaml"
    );
}

#[test]
fn spec_document_places_later_findings_at_their_key() {
    let document = parse(&edited(&[(
        "    profiling: false",
        "    profiling: false\n    env:\n      RUST_LOG: debug",
    )]))
    .unwrap();
    let binary = document.location("instances[0].binary").unwrap();
    assert_eq!((binary.line, binary.column), (13, 13));
    assert_eq!(document.location("instances[0].env.RUST_LOG").unwrap().line, 17);
    let port = document.location("ports[0]").unwrap();
    assert_eq!((port.line, port.column), (19, 5));
    assert_eq!(document.location("instances[0].health"), None);

    let found = document.diagnostic(
        flotilla_spec::Severity::Error,
        "instances[0].binary",
        "target/release/node does not exist".to_owned(),
    );
    assert_eq!(
        found.with_help("build it").to_string(),
        "fleet.yaml:13:13: error: instances[0].binary: target/release/node does not exist\n  help: build it"
    );
    // An optional key that is not in the file: the diagnostic goes to the enclosing entry.
    let enclosing = document.diagnostic(
        flotilla_spec::Severity::Warning,
        "instances[0].health.http.port",
        "no health check".to_owned(),
    );
    assert_eq!(enclosing.location.map(|l| (l.line, l.column)), Some((8, 5)));
}

#[test]
fn load_fleet_spec_reads_the_file_and_names_it_in_errors() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("fleet.yaml");
    fs_err::write(&path, common::BASE).unwrap();
    let document = flotilla_spec::load_fleet_spec(&path).unwrap();
    assert_eq!(document.path, path);
    assert_eq!(document.spec.tag, "demo");

    let missing = directory.path().join("missing.yaml");
    let errors = flotilla_spec::load_fleet_spec(&missing).unwrap_err();
    assert_eq!(errors.diagnostics.len(), 1);
    assert_eq!(errors.diagnostics[0].file, missing);
    assert!(
        errors.diagnostics[0].to_string().starts_with(&format!(
            "{}: error: cannot read the fleet spec: the file does not exist",
            missing.display()
        )),
        "{errors}"
    );

    let latin1 = directory.path().join("latin1.yaml");
    fs_err::write(&latin1, b"tag: demo\nmonitoring: caf\xe9\n").unwrap();
    let errors = flotilla_spec::load_fleet_spec(&latin1).unwrap_err();
    assert_eq!(
        errors.diagnostics[0].to_string(),
        format!(
            "{}:2:16: error: the file is not valid UTF-8\n  help: save the file as UTF-8",
            latin1.display()
        )
    );
}
