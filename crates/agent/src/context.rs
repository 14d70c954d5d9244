//! What every component of the agent is started with (see `life` for the components, in order).
//!
//! An [`AgentContext`] holds the machine's identity, the instance directory (where a component
//! keeps what must survive a restart of the agent), the binary's log (where it writes its
//! events), the bootstrap config, the agent's stop signal and the [`Components`] that spawn its
//! tasks. The handles of the components started before it are passed to a component by name.

use std::sync::Arc;

use flotilla_spec::bootstrap::AgentBootstrap;
use flotilla_spec::identity::IdentityBundle;
use tokio::sync::watch;

use crate::binary_log::BinaryLog;
use crate::components::Components;
use crate::failpoint::Failpoints;
use crate::instance_dir::InstanceDir;

/// What every component is started with.
#[derive(Clone, Debug)]
pub(crate) struct AgentContext {
    /// The bootstrap config the agent was started with.
    pub(crate) bootstrap: Arc<AgentBootstrap>,
    /// Who this machine is.
    pub(crate) identity: Arc<IdentityBundle>,
    /// Where the agent keeps everything it owns; a component's state file lives here, so that a
    /// restarted agent resumes without redoing what is done.
    pub(crate) dir: InstanceDir,
    /// The binary's log, where components write their events (`[flotilla-agent] …`).
    pub(crate) log: Arc<BinaryLog>,
    /// Turns true once the agent stops: a whole-life task returns then.
    pub(crate) stop: watch::Receiver<bool>,
    /// Spawns the component's tasks, so that their deaths are noticed.
    pub(crate) components: Components,
    /// The test seams armed for this agent (none outside the agent's own tests).
    pub(crate) failpoints: Failpoints,
}
