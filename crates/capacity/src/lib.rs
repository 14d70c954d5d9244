//! The capacity policy, as plain functions over data: what each instance type is
//! ([`catalog`]), which types and zones may run a group ([`select`]), what launch errors mean
//! and which pools are unavailable for now ([`unavailable`]), how a group spreads over zones
//! ([`placement`]), which fleet requests to make and what to do with their answers
//! ([`launch`]), what machines cost ([`prices`]), how fast EC2 may be asked ([`throttle`]) and
//! what a binary runs on ([`elf`]); how a dedicated host pool allocates, scrubs and releases
//! hosts ([`host_pool`]), and how that policy fares over a year of workload ([`simulate`], with
//! its seeded workload generator in [`workload`]).
//!
//! Architecture Invariant: this crate knows no SDK, reads no clock and draws no random number:
//! time and answers are passed in, so its tests need no mocks and a simulator can run the very
//! code the AWS provider runs.

pub mod calendar;
pub mod catalog;
pub mod elf;
pub mod host_pool;
pub mod launch;
pub mod placement;
pub mod prices;
pub mod random;
pub mod select;
pub mod simulate;
#[cfg(test)]
mod testdata;
pub mod throttle;
pub mod unavailable;
pub mod workload;

pub use catalog::{Architecture, Catalog, InstanceType, guess_architecture};
pub use launch::{
    FleetAnswer, FleetError, FleetRequest, GroupLaunch, LaunchPlanner, Launched, Step, TypeOrder,
};
pub use prices::{Price, PriceBook, PriceSource};
pub use select::{Eligible, Problem, Wants, eligible};
pub use unavailable::{ErrorClass, Lifecycle, Pool, UnavailableOfferings, classify};
