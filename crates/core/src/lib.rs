//! flotilla's workflows over providers: create, update, destroy, status, logs, list; the
//! provider interface; the state store; the deployment PKI; the agent client.
//!
//! Architecture Invariant: this crate knows neither clap nor any cloud SDK. Providers plug in
//! through [`provider::Provider`]; the CLI shows progress through [`progress::Progress`].

pub mod artifacts;
pub mod capacity;
pub mod client;
pub mod error;
pub mod health;
pub mod monitoring;
pub mod pki;
pub mod plan;
pub mod progress;
pub mod provider;
pub mod rollout;
pub mod state;
pub mod workflows;

pub use error::{CoreError, MachineFailure};
