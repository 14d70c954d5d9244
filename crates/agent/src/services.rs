//! The machine's supervisors: the binary's, and one per service of the selected version
//! (node exporter beside the binary, Prometheus and the rest on the monitoring machine), each
//! the same [`crate::supervisor`] with its own [`Role`].
//!
//! An order goes to every supervisor at once, in the order of the calls, so a rollout, a
//! rollback, `Restart` and `Stop` treat the services as part of the version: `Run` of a version
//! runs its binary (when it has one) and each of its services, and stops a service the version
//! no longer has (`Clear`). A service's supervisor is made the first time a version names it and
//! lives as long as the agent. `Signal` (a hosts-only change) goes to the binary alone: services
//! read no hosts.yaml.
//!
//! [`Generations`] tells a rollout what to hold to the health deadline: the binary's generation
//! when the version runs one, and each service's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_spec::api::ServiceStatus;
use tokio::task::JoinHandle;

use crate::supervisor::{Completion, Order, SupervisorHandle, SupervisorStatus};

/// Makes the supervisor of the service with this name, and spawns its task.
pub(crate) type MakeServiceSupervisor =
    Box<dyn Fn(&str) -> (SupervisorHandle, JoinHandle<()>) + Send + Sync>;

/// What an order's supervisors count after it: the ones a rollout holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Generations {
    /// The binary's, when the selected version runs a binary.
    pub(crate) binary: Option<u64>,
    /// Each service of the selected version, in its order.
    pub(crate) services: Vec<(String, u64)>,
}

impl Generations {
    /// The binary alone (an order only the binary was given).
    pub(crate) fn binary_only(generation: u64) -> Generations {
        Generations { binary: Some(generation), services: Vec::new() }
    }
}

/// Resolves once every supervisor has carried out an order.
pub(crate) struct AllDone {
    binary: Completion,
    binary_runs: bool,
    services: Vec<(String, Completion)>,
}

impl AllDone {
    /// The generations after the order, or `None` when the binary's supervisor has ended.
    pub(crate) async fn wait(self) -> Option<Generations> {
        let binary = self.binary.wait().await?;
        let mut services = Vec::with_capacity(self.services.len());
        for (name, completion) in self.services {
            services.push((name, completion.wait().await?));
        }
        Some(Generations { binary: self.binary_runs.then_some(binary), services })
    }
}

struct Service {
    handle: SupervisorHandle,
    task: Option<JoinHandle<()>>,
}

/// What the last `Run` or `Hold` selected.
#[derive(Default)]
struct Selection {
    binary_runs: bool,
    services: Vec<String>,
}

/// The binary's supervisor and the services'.
pub(crate) struct Supervisors {
    binary: SupervisorHandle,
    services: Mutex<BTreeMap<String, Service>>,
    selection: Mutex<Selection>,
    make: MakeServiceSupervisor,
}

impl std::fmt::Debug for Supervisors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisors").field("binary", &self.binary).finish_non_exhaustive()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (plain values).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Supervisors {
    pub(crate) fn new(binary: SupervisorHandle, make: MakeServiceSupervisor) -> Arc<Supervisors> {
        Arc::new(Supervisors {
            binary,
            services: Mutex::new(BTreeMap::new()),
            selection: Mutex::new(Selection { binary_runs: true, services: Vec::new() }),
            make,
        })
    }

    /// The binary's supervisor.
    pub(crate) fn binary(&self) -> &SupervisorHandle {
        &self.binary
    }

    /// Queues `order` with every supervisor at once; await the result for it to be carried out.
    pub(crate) fn order(&self, order: Order) -> AllDone {
        let mut services = lock(&self.services);
        let mut selection = lock(&self.selection);
        let manifest = match &order {
            Order::Run { manifest, .. } | Order::Hold { manifest, .. } => Some(manifest.clone()),
            _ => None,
        };
        if let Some(manifest) = &manifest {
            selection.binary_runs = manifest.binary.is_some();
            selection.services = manifest.services.iter().map(|s| s.name.clone()).collect();
            for name in &selection.services {
                if !services.contains_key(name) {
                    let (handle, task) = (self.make)(name);
                    services.insert(name.clone(), Service { handle, task: Some(task) });
                }
            }
        }
        if matches!(order, Order::Clear) {
            selection.binary_runs = true;
            selection.services.clear();
        }
        let mut completions = Vec::new();
        if !matches!(order, Order::Signal(_)) {
            for (name, service) in services.iter() {
                let selected = selection.services.contains(name);
                let own = match &order {
                    // A service the new version does not have stops and forgets its version.
                    Order::Run { .. } | Order::Hold { .. } if !selected => Order::Clear,
                    other => other.clone(),
                };
                let completion = service.handle.order(own);
                if selected {
                    completions.push((name.clone(), completion));
                }
            }
        }
        // Services in the manifest's order.
        completions.sort_by_key(|(name, _)| selection.services.iter().position(|s| s == name));
        AllDone {
            binary: self.binary.order(order),
            binary_runs: selection.binary_runs,
            services: completions,
        }
    }

    /// The status of each service of the selected version, as the API reports it.
    pub(crate) fn service_statuses(&self) -> Vec<ServiceStatus> {
        let services = lock(&self.services);
        lock(&self.selection)
            .services
            .iter()
            .filter_map(|name| {
                let status = services.get(name)?.handle.status();
                Some(ServiceStatus {
                    name: name.clone(),
                    state: status.state,
                    pid: status.pid,
                    restarts: status.restarts,
                    health_error: status
                        .health_error
                        .filter(|_| status.state != flotilla_spec::api::BinaryState::Healthy),
                    last_exit: status.last_exit_description,
                })
            })
            .collect()
    }

    /// Service `name`'s status as it changes.
    pub(crate) fn service_watch(
        &self,
        name: &str,
    ) -> Option<tokio::sync::watch::Receiver<SupervisorStatus>> {
        lock(&self.services).get(name).map(|service| service.handle.watch())
    }

    /// Stops every service and waits for their supervisors to end (the agent is stopping).
    pub(crate) async fn shut_down_services(&self) {
        let stopping: Vec<(Completion, Option<JoinHandle<()>>)> = lock(&self.services)
            .values_mut()
            .map(|service| (service.handle.order(Order::Shutdown), service.task.take()))
            .collect();
        for (completion, task) in stopping {
            completion.wait().await;
            if let Some(task) = task {
                // A supervisor that panicked was reported as a dead component already.
                let _ = task.await;
            }
        }
    }
}
