//! TEST DOUBLE: an in-process provider whose "machines" are entries in a
//! map. It exists only for Kubeforge's own tests of the engine and API
//! (compiled only with the `test-double` feature, which the shipped binary
//! does not enable), and it is never registered by `serve` or `up`, so no
//! tenant can select it. It keeps the provider contract (idempotent create
//! and delete, tags, `get` observes) and can inject failures and delays.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    Capabilities, MachineRequest, Provider, ProviderError, ProviderMachine, ProviderMachineState,
    ProviderNetwork,
};

/// The in-memory test double (see the module doc).
pub struct InMemoryProvider {
    kind: &'static str,
    machines: Mutex<BTreeMap<Uuid, ProviderMachine>>,
    next_address: AtomicU32,
    /// Create calls made, including idempotent repeats.
    pub create_calls: AtomicU64,
    /// The next N creates fail with a retryable error.
    pub fail_creates: AtomicU32,
    /// Every create fails permanently while set.
    pub fail_permanently: std::sync::atomic::AtomicBool,
    /// Each create sleeps this long (milliseconds) first.
    pub create_delay_ms: AtomicU64,
    /// A new machine is `Pending` for this many `get` calls, then
    /// `Running` (default 0: running as soon as it is created).
    pub boot_polls: AtomicU32,
    /// Get calls made.
    pub get_calls: AtomicU64,
    /// Pending machines' remaining `get` calls until they run.
    booting: Mutex<BTreeMap<Uuid, u32>>,
    /// What `networks` answers (none unless a test sets some).
    networks: Mutex<Vec<ProviderNetwork>>,
    /// Where the next `get` call stops (see [`InMemoryProvider::pause_next_get`]).
    pause_get: Mutex<Option<Pause>>,
    /// How many more worker machines of a node pool named here may be
    /// made; a create beyond that is `NoCapacity`, as a host pool with no
    /// free host matching the pool answers. Pools not named are unlimited.
    worker_slots: Mutex<BTreeMap<String, usize>>,
    /// The next worker create answers `HostUnfit` with this message, as
    /// the ssh provider does for a host that lacks a prerequisite.
    unfit_next: Mutex<Option<String>>,
}

/// A worker held inside a provider call, as if its process were paused
/// there: [`Pause::entered`] returns once it is, [`Pause::resume`] lets
/// it go on.
#[derive(Clone, Default)]
pub struct Pause {
    entered: Arc<Notify>,
    resume: Arc<Notify>,
}

impl Pause {
    /// Waits until a call has stopped here.
    pub async fn entered(&self) {
        self.entered.notified().await;
    }

    /// Lets the stopped call go on.
    pub fn resume(&self) {
        self.resume.notify_one();
    }
}

impl InMemoryProvider {
    /// A double serving `kind` (tests register it under the kind they use).
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            machines: Mutex::new(BTreeMap::new()),
            next_address: AtomicU32::new(10),
            create_calls: AtomicU64::new(0),
            fail_creates: AtomicU32::new(0),
            fail_permanently: std::sync::atomic::AtomicBool::new(false),
            create_delay_ms: AtomicU64::new(0),
            boot_polls: AtomicU32::new(0),
            get_calls: AtomicU64::new(0),
            booting: Mutex::new(BTreeMap::new()),
            networks: Mutex::new(Vec::new()),
            pause_get: Mutex::new(None),
            worker_slots: Mutex::new(BTreeMap::new()),
            unfit_next: Mutex::new(None),
        }
    }

    /// Makes the next worker create answer `HostUnfit(message)`.
    pub fn unfit_next(&self, message: &str) {
        *self.unfit_next.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_string());
    }

    /// Allows `slots` worker machines of pool `pool` from now on (see
    /// `worker_slots`).
    pub fn set_worker_slots(&self, pool: &str, slots: usize) {
        self.worker_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pool.to_string(), slots);
    }

    /// The next `get` call (only that one) stops until the returned pause
    /// is resumed: a worker paused mid-job, while others go on.
    pub fn pause_next_get(&self) -> Pause {
        let pause = Pause::default();
        *self.pause_get.lock().unwrap_or_else(|p| p.into_inner()) = Some(pause.clone());
        pause
    }

    /// Makes `networks` answer these, as the lab answers its subnet.
    pub fn set_networks(&self, networks: Vec<ProviderNetwork>) {
        *self.networks.lock().unwrap_or_else(|p| p.into_inner()) = networks;
    }

    /// Machines that exist now.
    pub fn machines(&self) -> Vec<ProviderMachine> {
        self.lock().values().cloned().collect()
    }

    /// Makes a machine vanish behind the reconciler's back.
    pub fn lose(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    /// Ends a machine for good while the provider still lists it, as EC2
    /// lists terminated instances for a while.
    pub fn terminate(&self, id: Uuid) {
        if let Some(m) = self.lock().get_mut(&id) {
            m.state = ProviderMachineState::Terminated;
        }
    }

    /// Adds a machine the ledger does not know (a leak to be swept).
    pub fn plant_stray(&self, cluster_id: Uuid) -> Uuid {
        let id = Uuid::now_v7();
        self.lock().insert(
            id,
            ProviderMachine {
                id,
                cluster_id,
                provider_id: format!("stray-{id}"),
                address: None,
                host_key: None,
                state: ProviderMachineState::Running,
            },
        );
        id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, ProviderMachine>> {
        self.machines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Provider for InMemoryProvider {
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// The API and engine tests make node pools on it; its machines are
    /// in memory, so nothing is bootstrapped on them.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ssh_bootstrap: false,
            hosts_workers: true,
            lab_machines: false,
            kube_binaries_bound: false,
        }
    }

    fn networks(&self) -> Vec<ProviderNetwork> {
        self.networks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn create(&self, req: &MachineRequest) -> Result<ProviderMachine, ProviderError> {
        self.create_calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.create_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.fail_permanently.load(Ordering::SeqCst) {
            return Err(ProviderError::Permanent(
                "injected permanent failure".into(),
            ));
        }
        if self
            .fail_creates
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ProviderError::Retryable(
                "injected transient failure".into(),
            ));
        }
        let mut machines = self.lock();
        if let Some(existing) = machines.get(&req.id) {
            return Ok(existing.clone());
        }
        if req.node_pool.is_some() {
            let unfit = self
                .unfit_next
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(message) = unfit {
                return Err(ProviderError::HostUnfit(message));
            }
        }
        if let Some(pool) = &req.node_pool {
            let mut slots = self.worker_slots.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(left) = slots.get_mut(pool) {
                if *left == 0 {
                    return Err(ProviderError::NoCapacity(format!(
                        "no free slot for pool {pool} (test double)"
                    )));
                }
                *left -= 1;
            }
        }
        let n = self.next_address.fetch_add(1, Ordering::SeqCst);
        let polls = self.boot_polls.load(Ordering::SeqCst);
        let m = ProviderMachine {
            id: req.id,
            cluster_id: req.cluster_id,
            provider_id: format!("mem-{}", req.name),
            address: Some(format!("192.0.2.{}", n % 250)),
            host_key: None,
            state: if polls == 0 {
                ProviderMachineState::Running
            } else {
                ProviderMachineState::Pending
            },
        };
        if polls > 0 {
            self.booting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req.id, polls);
        }
        machines.insert(req.id, m.clone());
        Ok(m)
    }

    async fn get(&self, id: Uuid) -> Result<Option<ProviderMachine>, ProviderError> {
        self.get_calls.fetch_add(1, Ordering::SeqCst);
        let pause = self
            .pause_get
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(pause) = pause {
            pause.entered.notify_one();
            pause.resume.notified().await;
        }
        let mut machines = self.lock();
        let mut booting = self.booting.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(m), Some(left)) = (machines.get_mut(&id), booting.get_mut(&id)) {
            *left -= 1;
            if *left == 0 {
                m.state = ProviderMachineState::Running;
                booting.remove(&id);
            }
        }
        Ok(machines.get(&id).cloned())
    }

    async fn delete(&self, id: Uuid) -> Result<(), ProviderError> {
        self.lock().remove(&id);
        Ok(())
    }

    async fn list_by_cluster(
        &self,
        cluster_id: Uuid,
    ) -> Result<Vec<ProviderMachine>, ProviderError> {
        Ok(self
            .lock()
            .values()
            .filter(|m| m.cluster_id == cluster_id)
            .cloned()
            .collect())
    }
}
