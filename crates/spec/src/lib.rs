//! flotilla's input formats: the fleet spec (the commonware deployer's config plus flotilla's
//! keys), the agent's bootstrap config, identity bundles, manifests and the agent API's
//! messages. Parsing, validation and JSON Schema generation live here.
//!
//! Architecture Invariant: this crate is pure. It does no network IO and reads no clock; the
//! only file it reads is the spec passed to [`load_fleet_spec`].

pub mod api;
pub mod bootstrap;
pub mod diagnostic;
pub mod duration_serde;
pub mod fleet;
pub mod identity;
pub mod manifest;
pub mod secret;
pub mod validate;

pub use diagnostic::{Diagnostic, Location, Severity, SpecErrors};
pub use fleet::{FleetSpec, HealthCheck, InstanceSpec, ProviderKind, RestartPolicy, RestartSpec};
pub use manifest::{Artifact, Manifest};
pub use secret::Secret;
