//! The fleet spec decoder: from the located tree (read from YAML by [`crate::yaml`], from
//! JSON5 by [`crate::json5`]) to [`crate::FleetSpec`] and to [`crate::fleetd::FleetdConfig`],
//! reporting every error of the file at once.
//!
//! Decoding is written by hand, not derived with serde, so that one bad value does not hide the
//! next: each key is read on its own, each problem becomes a [`crate::Diagnostic`] with the key's
//! line, column and field path, and the rules that span several keys run on whatever decoded.
//! In three layers, each in a file of its own:
//!
//! - `decode_reader.rs`, the reader: the [`Decoder`], mappings against tables of known keys,
//!   unknown keys, scalars read as the deployer's parser (serde_yaml 0.9) reads the field's
//!   type, sequences and field paths. Shared by every decoder below.
//! - The mappings: `decode_fleet.rs` (the deployer's config and flotilla's keys of the root and
//!   of an instance entry), `decode_account.rs` (images, networks, tags, IAM, boot, root
//!   volume), `decode_capacity.rs` (instance types, requirements, market, zones),
//!   `decode_host_pool.rs` (`host_pools` and each entry's `host_pool`), `decode_disk.rs` (an entry's `disks`) and `decode_fleetd.rs` (an ec2fleetd config, standalone or as an entry's `lifecycle`).
//! - `decode_rules.rs`, the rules that span keys or entries and the limits they check (names,
//!   storage, `cidr`, machine totals, account keys across entries).

#[path = "decode_account.rs"]
mod account;
#[path = "decode_capacity.rs"]
mod capacity;
#[path = "decode_disk.rs"]
mod disk;
#[path = "decode_fleet.rs"]
mod fleet;
#[path = "decode_fleetd.rs"]
mod fleetd;
#[path = "decode_host_pool.rs"]
mod host_pool;
#[path = "decode_reader.rs"]
mod reader;
#[path = "decode_rules.rs"]
mod rules;

#[cfg_attr(not(test), expect(unused_imports, reason = "the schema drift test compares them"))]
pub(crate) use account::{
    BOOT_COMMAND_KEYS, BOOT_FILE_KEYS, BOOT_KEYS, IMAGE_KEYS, NETWORK_KEYS, ROOT_VOLUME_KEYS,
};
#[cfg_attr(not(test), expect(unused_imports, reason = "the schema drift test compares them"))]
pub(crate) use capacity::{BOUNDS_KEYS, REQUIREMENTS_KEYS};
#[cfg_attr(not(test), expect(unused_imports, reason = "the schema drift test compares them"))]
pub(crate) use disk::DISK_KEYS;
#[cfg_attr(not(test), expect(unused_imports, reason = "the schema drift test compares them"))]
pub(crate) use fleet::{
    FLEET_KEYS, HEALTH_HTTP_KEYS, HEALTH_KINDS, HEALTH_TCP_KEYS, INSTANCE_KEYS, MONITORING_KEYS,
    PORT_KEYS, RESTART_KEYS, UPDATE_KEYS,
};
#[cfg_attr(not(test), expect(unused_imports, reason = "the schema drift test compares them"))]
pub(crate) use host_pool::{HOST_POOL_KEYS, HOST_POOL_ZONE_KEYS};
pub(crate) use reader::Decoder;
#[cfg_attr(not(test), expect(unused_imports, reason = "the schema drift test compares them"))]
pub(crate) use reader::KeySpec;
pub(crate) use rules::machine_total_problem;
