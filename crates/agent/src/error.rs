//! The one error type of the agent: every variant carries the path, address or URL that helps and
//! says what to check.
//!
//! These are the errors that stop the agent (at start, or when it cannot go on). What goes wrong
//! later with the user's binary or a rollout is not an error of the agent: it is reported in
//! [`flotilla_spec::api::AgentStatus`] and in the binary's log.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use flotilla_spec::bootstrap::BootstrapError;

use crate::components::ComponentDeath;
use crate::fetch::FetchError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "could not read the bootstrap config {path}: {source}; check the path given to `flotilla agent --bootstrap`"
    )]
    ReadBootstrap { path: PathBuf, source: io::Error },

    #[error("bad bootstrap config: {0}")]
    Bootstrap(#[from] BootstrapError),

    #[error(
        "could not prepare {path} in the instance directory: {source}; check that the agent's user owns the directory and the disk is not full"
    )]
    InstanceDir { path: PathBuf, source: io::Error },

    #[error(
        "another agent (pid {holder}) already runs in {dir}: it holds {lock}; stop that agent first, or give this one another `dir` in its bootstrap config"
    )]
    AlreadyRunning { dir: PathBuf, lock: PathBuf, holder: String },

    #[error(
        "the identity bundle {location} could not be fetched: {source}; check the bootstrap config's `identity`"
    )]
    IdentityLocation { location: String, source: FetchError },

    #[error(
        "the identity bundle {location} did not appear within {waited}; last attempt: {last_error}; check that the deployer issued it and that this machine may read it"
    )]
    IdentityTimeout { location: String, waited: String, last_error: String },

    #[error(
        "the identity bundle {location} is for deployment `{found}`, but this agent belongs to `{expected}`; check the bootstrap config's `tag` and `identity`"
    )]
    IdentityForOtherDeployment { location: String, expected: String, found: String },

    #[error("the identity bundle {location} is unusable: {message}; re-issue it with the deployer")]
    BadIdentity { location: String, message: String },

    #[error(
        "could not listen on {address} for the {what}: {source}; check that this address exists on the machine and that no other process uses the port"
    )]
    Listen { what: &'static str, address: SocketAddr, source: io::Error },

    #[error(
        "the agent state {path} is unreadable: {message}; restore it from a backup, or delete it to start with no version installed"
    )]
    BadState { path: PathBuf, message: String },

    #[error(
        "could not open the agent's log {path}: {source}; check `logs.agent_log` in the bootstrap config and that the agent may write there"
    )]
    AgentLog { path: PathBuf, source: io::Error },

    #[error("could not start the agent's runtime: {0}")]
    Runtime(io::Error),

    #[error("could not start the thread that starts the binary: {0}")]
    SpawnerThread(io::Error),

    #[error("could not listen for {signal}: {source}")]
    Signal { signal: &'static str, source: io::Error },

    #[error(
        "{0}; the agent stopped its binary and exits with an error so that it is restarted; the agent's log and the binary's log say more"
    )]
    ComponentDied(ComponentDeath),
}
