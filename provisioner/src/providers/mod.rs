//! Where machines come from. A provider is a small trait with a written
//! contract; the reconciler relies on every clause of it.
//!
//! # Contract
//!
//! - **Idempotent create.** `create` is keyed by `MachineRequest::id`, the
//!   id of the ledger row committed before the call. Calling it again with
//!   the same id (after a crash, a timeout, a retry) returns the machine
//!   already made for that id and never makes a second one.
//! - **Tagged.** Every machine carries its ledger id and cluster id as tags
//!   (labels, EC2 tags, a file on the host), so `list_by_cluster` finds it
//!   even if the ledger row was lost.
//! - **Idempotent delete.** Deleting a machine that does not exist (any
//!   more) succeeds. After `delete` returns, nothing of the machine remains
//!   (process, disk, address, host lease).
//! - **`get` observes.** It returns `None` for a machine that is gone, and
//!   never changes anything.
//! - **Error classes.** `Retryable` for conditions that may pass (network,
//!   throttling); `NoCapacity` when there is nothing to create a machine on
//!   yet (the request waits, without using up its attempts); `Permanent` for
//!   requests that will never work (bad image, unknown machine type). The
//!   engine retries the first with backoff, re-checks the second later, and
//!   fails the operation on the third.

pub mod lab;
pub mod ssh;
#[cfg(feature = "test-double")]
pub mod test_double;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// What the reconciler asks a provider for.
#[derive(Debug, Clone)]
pub struct MachineRequest {
    /// The ledger id: the idempotency token.
    pub id: Uuid,
    pub name: String,
    pub tenant: String,
    pub cluster_id: Uuid,
    /// `control_plane` or `worker`.
    pub role: String,
    pub machine_type: String,
    pub node_pool: Option<String>,
}

/// Lifecycle state as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderMachineState {
    Pending,
    Running,
    Stopped,
}

/// A machine as the provider sees it.
#[derive(Debug, Clone)]
pub struct ProviderMachine {
    /// The ledger id it was created for.
    pub id: Uuid,
    pub cluster_id: Uuid,
    /// The provider's own id (container name, instance id, host id).
    pub provider_id: String,
    pub address: Option<String>,
    /// The machine's SSH host key (`TYPE BASE64`), known at creation so it
    /// can be pinned; None where the provider cannot know it.
    pub host_key: Option<String>,
    pub state: ProviderMachineState,
}

/// A provider call that did not work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
    /// Nothing to create machines on right now (an empty host pool, a
    /// full lab subnet). Not a failure: the request waits for capacity.
    #[error("{0}")]
    NoCapacity(String),
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Retryable(_) | ProviderError::NoCapacity(_)
        )
    }
}

/// What a provider's machines allow, asked instead of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Reachable over SSH with the service's key at their address and
    /// pinned host key, and bootstrapped by the service (control planes,
    /// load balancers, workers).
    pub ssh_bootstrap: bool,
    /// Can become worker nodes (containerd, kubelet, kube-proxy installed
    /// and joined). A cluster on a provider that cannot is refused node
    /// pools at the API.
    pub hosts_workers: bool,
    /// Machines are lab containers on this host: the worker bootstrap
    /// applies what containers need (and nothing of it elsewhere).
    pub lab_machines: bool,
}

/// The provider contract (see the module doc).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The `provider.kind` this serves.
    fn kind(&self) -> &'static str;
    /// What the engine may do with its machines.
    fn capabilities(&self) -> Capabilities;
    async fn create(&self, req: &MachineRequest) -> Result<ProviderMachine, ProviderError>;
    async fn get(&self, id: Uuid) -> Result<Option<ProviderMachine>, ProviderError>;
    async fn delete(&self, id: Uuid) -> Result<(), ProviderError>;
    async fn list_by_cluster(
        &self,
        cluster_id: Uuid,
    ) -> Result<Vec<ProviderMachine>, ProviderError>;
}

/// The providers this service runs, by kind. A cluster of a kind with no
/// provider here fails its operation with `provider_unavailable`.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    by_kind: BTreeMap<&'static str, Arc<dyn Provider>>,
}

impl ProviderRegistry {
    pub fn register(&mut self, provider: Arc<dyn Provider>) {
        self.by_kind.insert(provider.kind(), provider);
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Provider>> {
        self.by_kind.get(kind).cloned()
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.by_kind.keys().copied().collect()
    }
}
