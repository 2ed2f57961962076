//! Where machines come from. A provider is a small trait with a written
//! contract; the reconciler relies on every clause of it.
//!
//! # Contract
//!
//! - **Idempotent create.** `create` is keyed by `MachineRequest::id`, the
//!   id of the ledger row committed before the call. Calling it again with
//!   the same id (after a crash, a timeout, a retry) returns the machine
//!   already made for that id and never makes a second one; for a stopped
//!   machine it starts it again, with its disk.
//! - **Quick create.** `create` returns once the provider has accepted the
//!   machine, `Pending` if it is not up yet. The engine then records it
//!   `provisioning` and only observes it with `get` until it is `Running`:
//!   `create` is not called again for it (on EC2 that would be one
//!   `RunInstances` per pass). Only a machine that ends before it came up
//!   (`get` says gone, stopped or terminated) is asked for again.
//! - **Host keys.** A machine the engine bootstraps over SSH
//!   (`Capabilities::ssh_bootstrap`) counts as running only once its
//!   provider reports its host key, from a channel the service trusts (the
//!   lab generates it before boot; a registered host's was pinned by an
//!   admin; a cloud reports it through its authenticated API). The engine
//!   pins the first key it is given and never learns one over the network.
//! - **Tagged.** Every machine carries `MachineRequest::tags` (its ledger
//!   id, cluster id, tenant and name) as the provider can (labels, EC2
//!   tags, a file on the host), so `list_by_cluster` finds it even if the
//!   ledger row was lost.
//! - **Idempotent delete.** Deleting a machine that does not exist (any
//!   more) succeeds. After `delete` returns, nothing of the machine remains
//!   (process, disk, address, host lease).
//! - **`get` observes.** It returns `None` for a machine that is gone (or
//!   `Terminated`, where the provider keeps a record of ended machines),
//!   and never changes anything.
//! - **Error classes.** `Retryable` for conditions that may pass (network,
//!   throttling); `NoCapacity` when there is nothing to create a machine on
//!   yet (the request waits, without using up its attempts); `Permanent` for
//!   requests that will never work (bad image, unknown machine type). The
//!   engine retries the first with backoff, re-checks the second later, and
//!   fails the operation on the third.
//! - **Scoped.** The engine asks about a cluster's machines through
//!   `ProviderRegistry::for_cluster`, which hands a provider that needs to
//!   know where a cluster lives (the `aws` provider: region, role) a copy
//!   scoped to it (`scoped`). Others serve every cluster as they are.
//! - **Released.** Once a deleted cluster's machines are gone,
//!   `release_cluster` removes what the provider made for the cluster as a
//!   whole (the `aws` provider's security group); idempotent, retryable
//!   while something still holds it.
//! - **Networks.** `networks` names every network its machines live on
//!   that the service's host is part of (the lab's bridge subnet and the
//!   host's address on it). The API keeps clusters' pod and service ranges
//!   off them and refuses the gateway as a registered host's address.

pub mod aws;
pub mod lab;
pub mod lab_network;
pub mod ssh;
#[cfg(feature = "test-double")]
pub mod test_double;

use async_trait::async_trait;
use kubeforge_cluster::hosts::HostCapacity;
pub use kubeforge_cluster::network::ProviderNetwork;
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::spec::ProviderSpec;
use kubeforge_cluster::userdata::MachineIdentity;
use kubeforge_cluster::MachineType;
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
    pub role: MachineRole,
    pub machine_type: MachineType,
    pub node_pool: Option<String>,
    /// Labels the host must carry (the pool's `host_selector`): the `ssh`
    /// provider claims only a registered host whose labels contain all of
    /// them. Empty: any host. Providers that make machines ignore it (the
    /// API refuses a selector on them).
    pub host_selector: BTreeMap<String, String>,
    /// The pool's alternative machine types, in order: what a provider that
    /// can run out of capacity for `machine_type` (EC2's
    /// `InsufficientInstanceCapacity`) launches instead, trying each in
    /// turn. Each has at least `machine_type`'s vCPUs, memory and GPUs.
    /// Empty for control planes and load balancers; providers without
    /// capacity errors ignore it (the API refuses it on them).
    pub alternatives: Vec<MachineType>,
    /// The cluster's provider settings (region, subnet and image on EC2).
    pub spec: ProviderSpec,
    /// What the machine carries so it can be found without the ledger:
    /// see [`machine_tags`].
    pub tags: BTreeMap<String, String>,
    /// cloud-init user-data (`kubeforge_cluster::userdata`) for providers
    /// whose images boot with cloud-init: hostname, the service's SSH key
    /// for root, the identity file. None when this service has no SSH key
    /// (it bootstraps nothing). The lab and the `ssh` provider write the
    /// same facts themselves.
    pub user_data: Option<String>,
}

impl MachineRequest {
    /// A request with the standard [`machine_tags`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Uuid,
        name: &str,
        tenant: &str,
        cluster_id: Uuid,
        role: MachineRole,
        machine_type: MachineType,
        node_pool: Option<&str>,
        spec: ProviderSpec,
    ) -> Self {
        Self {
            id,
            name: name.to_string(),
            tenant: tenant.to_string(),
            cluster_id,
            role,
            machine_type,
            node_pool: node_pool.map(str::to_string),
            host_selector: BTreeMap::new(),
            alternatives: Vec::new(),
            spec,
            tags: machine_tags(cluster_id, id, tenant, name, role),
            user_data: None,
        }
    }

    /// What the machine records about itself in its identity file.
    pub fn identity(&self) -> MachineIdentity {
        MachineIdentity {
            id: self.id,
            cluster_id: self.cluster_id,
            name: self.name.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// The tag holding the cluster id.
pub const TAG_CLUSTER: &str = "kubeforge:cluster";
/// The tag holding the machine's ledger id.
pub const TAG_MACHINE: &str = "kubeforge:machine";
/// The tag holding the tenant.
pub const TAG_TENANT: &str = "kubeforge:tenant";

/// The tags every machine carries: its cluster, ledger id and tenant under
/// `kubeforge:*`, its role, and its name as `Name` (what EC2 consoles show).
pub fn machine_tags(
    cluster_id: Uuid,
    id: Uuid,
    tenant: &str,
    name: &str,
    role: MachineRole,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TAG_CLUSTER.to_string(), cluster_id.to_string()),
        (TAG_MACHINE.to_string(), id.to_string()),
        (TAG_TENANT.to_string(), tenant.to_string()),
        ("kubeforge:role".to_string(), role.as_str().to_string()),
        ("Name".to_string(), name.to_string()),
    ])
}

/// Lifecycle state as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderMachineState {
    Pending,
    Running,
    Stopped,
    /// Ended for good; the provider merely still lists it (EC2 keeps
    /// terminated instances visible for a while). Treated as gone.
    Terminated,
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
    /// The host claimed for the machine failed a prerequisite check (the
    /// `ssh` provider's worker check: containerd, runc, CNI plugins, ...).
    /// It was released untouched, with the reason recorded on it, and
    /// claims skip it for `ssh::RECHECK_AFTER` (10 minutes) so an admin
    /// can fix it. Not a failure of the machine: it asks again and gets
    /// another host, or waits as for capacity. The message names what is
    /// missing.
    #[error("{0}")]
    HostUnfit(String),
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Retryable(_)
                | ProviderError::NoCapacity(_)
                | ProviderError::HostUnfit(_)
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
    /// The service's Kubernetes binaries are already on its machines (the
    /// lab binds the host's cache in read-only). Otherwise the bootstrap
    /// uploads them (`engine::binaries`); providers never upload.
    pub kube_binaries_bound: bool,
}

/// The cluster a provider copy serves (`Provider::scoped`).
#[derive(Debug, Clone)]
pub struct ClusterScope {
    pub cluster_id: Uuid,
    pub tenant: String,
    pub spec: ProviderSpec,
}

/// The provider contract (see the module doc).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The `provider.kind` this serves.
    fn kind(&self) -> &'static str;
    /// What the engine may do with its machines.
    fn capabilities(&self) -> Capabilities;
    /// The networks its machines live on (see the contract); none by
    /// default.
    fn networks(&self) -> Vec<ProviderNetwork> {
        Vec::new()
    }
    async fn create(&self, req: &MachineRequest) -> Result<ProviderMachine, ProviderError>;
    async fn get(&self, id: Uuid) -> Result<Option<ProviderMachine>, ProviderError>;
    async fn delete(&self, id: Uuid) -> Result<(), ProviderError>;
    /// What the machine made for ledger id `id` has to offer (cpu, memory,
    /// extended resources), where the provider knows it: the `ssh`
    /// provider's registered hosts. None where it does not, or for an
    /// unknown id.
    async fn capacity(&self, _id: Uuid) -> Result<Option<HostCapacity>, ProviderError> {
        Ok(None)
    }
    async fn list_by_cluster(
        &self,
        cluster_id: Uuid,
    ) -> Result<Vec<ProviderMachine>, ProviderError>;
    /// Work left for later by `delete` (the `ssh` provider wipes hosts
    /// that did not answer when their machine left, once they answer).
    /// Returns when to be called again, or None when nothing is left. The
    /// engine calls it from its `provider_upkeep` job (`engine::upkeep`),
    /// ensured after every machine this provider deletes.
    async fn upkeep(&self) -> Result<Option<std::time::Duration>, ProviderError> {
        Ok(None)
    }
    /// A copy of this provider for one cluster, where it needs to know
    /// the cluster to find its machines; None: this one serves all.
    fn scoped(&self, _scope: &ClusterScope) -> Option<Arc<dyn Provider>> {
        None
    }
    /// Removes what was made for the cluster beyond its machines, once
    /// they are all gone (see the contract). Nothing by default.
    async fn release_cluster(&self, _cluster_id: Uuid) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// The providers this service runs, by kind. A cluster of a kind with no
/// provider here is refused at create (`provider.kind`), and this
/// replica's engine claims no job of that kind.
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

    /// The provider of `kind`, scoped to one cluster where it needs to be
    /// (`Provider::scoped`).
    pub fn for_cluster(
        &self,
        cluster_id: Uuid,
        tenant: &str,
        spec: &ProviderSpec,
    ) -> Option<Arc<dyn Provider>> {
        let provider = self.get(spec.kind())?;
        let scope = ClusterScope {
            cluster_id,
            tenant: tenant.to_string(),
            spec: spec.clone(),
        };
        Some(provider.scoped(&scope).unwrap_or(provider))
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.by_kind.keys().copied().collect()
    }

    /// Every network of every provider this service runs: a cluster's
    /// ranges stay off all of them (they are the service host's, whichever
    /// provider a cluster is on: a registered host may be a lab machine).
    pub fn networks(&self) -> Vec<ProviderNetwork> {
        self.by_kind.values().flat_map(|p| p.networks()).collect()
    }
}
