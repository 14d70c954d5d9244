//! flotilla's AWS emulator stack: everything the AWS path needs to run on one machine, on
//! loopback only, for tests and for people trying flotilla without an account.
//!
//! ```text
//!  CLI / tests ──SigV4 query/REST──► moto 5.2.5 (Python, in-process patches: python/flotilla_moto.py)
//!                                      │  latency · faults · counts · state timing ·
//!                                      │  dependency checks · loopback public IPs ·
//!                                      │  CreateFleet instant · spot prices · Pricing API ·
//!                                      │  spot reclaim · throttling · /_flotilla/ API
//!                                      │  ▲ prices and throttling buckets from flotilla-capacity,
//!                                      │    handed over by `up` at start (tables.rs)
//!                                      ▼ GET /_flotilla/instances every 250 ms
//!  tests ──► booter control API ──► booter (this process)
//!                                      ├─ per running instance: IMDS on <public ip>:1338
//!                                      ├─ its attached EBS volumes as NVMe device files (devices.rs)
//!                                      └─ its user data under /bin/sh, in <state>/instances/<id>/root
//! ```
//!
//! `flotilla-emulator up` ([`up::run`]) starts it all and prints the environment to use;
//! [`control`] is the typed client tests use. Every process it starts stops when it stops,
//! including when it is killed: moto watches its parent, user-data scripts run under
//! `setpriv --pdeathsig KILL`, and `--parent-pid` ties the whole stack to a test run.

pub mod control;
pub mod devices;
pub mod env;
pub mod instance;
pub mod up;

mod addresses;
mod amis;
mod booter;
mod booter_api;
mod http;
mod imds;
mod moto;
mod tables;
mod venv;
