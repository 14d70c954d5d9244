//! flotilla's input formats: the fleet spec (the commonware deployer's config plus flotilla's
//! keys), the agent's bootstrap config, identity bundles, manifests and the agent API's
//! messages. Parsing, validation and JSON Schema generation live here.
//!
//! The fleet spec is read in three layers: [`yaml`] builds a located tree ([`tree`]) that keeps
//! each scalar as written; `decode` reads that tree into [`FleetSpec`] the way the deployer's
//! parser reads its config (its reader, fleet mappings and rules each in a file of their own),
//! and applies every validation rule, collecting all diagnostics;
//! [`document`] ties them together as [`parse_fleet_spec`] and [`load_fleet_spec`].
//! [`schema`] and [`mod@reference`] generate the JSON Schemas and the Markdown reference from the
//! same types.
//!
//! Architecture Invariant: this crate is pure. It does no network IO and reads no clock; the
//! only files it reads are the spec passed to [`load_fleet_spec`] and the ec2fleetd config
//! passed to [`fleetd::load_fleetd_config`].

pub mod account;
pub mod api;
pub mod bootstrap;
pub mod capacity;
mod decode;
pub mod diagnostic;
pub mod disk;
pub mod document;
pub mod duration_serde;
pub mod fleet;
pub mod fleetd;
pub mod host_pool;
pub mod identity;
pub mod imds;
pub mod json5;
pub mod manifest;
pub mod names;
pub mod reference;
pub mod schema;
pub mod secret;
mod suggest;
pub mod tree;
pub mod validate;
pub mod yaml;

pub use diagnostic::{Diagnostic, Location, Severity, SpecErrors};
pub use document::{SpecDocument, load_fleet_spec, parse_fleet_spec, parse_host_pools};
pub use fleet::{FleetSpec, HealthCheck, InstanceSpec, ProviderKind, RestartPolicy, RestartSpec};
pub use manifest::{Artifact, Manifest};
pub use reference::spec_reference_markdown;
pub use schema::{bootstrap_schema, fleet_schema, manifest_schema};
pub use secret::Secret;
