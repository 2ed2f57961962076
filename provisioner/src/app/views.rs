//! What the API returns: resources as tenants see them. Internal columns
//! (tenant scoping, resource versions) become `etag`s or stay hidden.

use chrono::{DateTime, Utc};
use kubeforge_cluster::pools::MachineState;
use kubeforge_cluster::{AutoRepair, Autoscaling, Condition, Phase, ProviderSpec, Taint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::cluster::Cluster;
use crate::store::machine::Machine;
use crate::store::node_pool::NodePool;
use crate::store::operation::{Operation, OperationError, Step};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ControlPlaneView {
    pub replicas: u32,
    pub machine_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkView {
    pub pod_cidr: String,
    pub service_cidr: String,
}

/// A cluster.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterView {
    pub id: Uuid,
    pub name: String,
    pub tenant: String,
    pub kubernetes_version: String,
    pub provider: ProviderSpec,
    pub control_plane: ControlPlaneView,
    pub network: NetworkView,
    pub labels: BTreeMap<String, String>,
    pub deletion_protection: bool,
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub endpoint: Option<String>,
    #[schema(value_type = Object)]
    pub certificates: serde_json::Value,
    pub generation: i64,
    pub observed_generation: i64,
    pub etag: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Cluster> for ClusterView {
    fn from(c: &Cluster) -> Self {
        Self {
            id: c.id,
            name: c.name.clone(),
            tenant: c.tenant.clone(),
            kubernetes_version: c.kubernetes_version.clone(),
            provider: c.provider.clone(),
            control_plane: ControlPlaneView {
                replicas: c.control_plane.replicas,
                machine_type: c.control_plane.machine_type.as_str().into(),
            },
            network: NetworkView {
                pod_cidr: c.network.pod_cidr.to_string(),
                service_cidr: c.network.service_cidr.to_string(),
            },
            labels: c.labels.as_map().clone(),
            deletion_protection: c.deletion_protection,
            phase: c.phase,
            conditions: c.conditions.clone(),
            endpoint: c.endpoint.clone(),
            certificates: c.certificates.clone(),
            generation: c.generation,
            observed_generation: c.observed_generation,
            etag: c.etag(),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// One node of a pool: its machine, and what became of it in the cluster.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeView {
    pub name: String,
    pub machine: Uuid,
    pub address: Option<String>,
    /// The node's state: `ready`, `not_ready`, `joining`, `draining` or
    /// `missing` as last observed in the cluster; before that, from the
    /// machine: `provisioning`, `joining`, `draining`, `deleting`, `failed`.
    pub state: String,
    /// The machine's state in the ledger (`pending`, `provisioning`,
    /// `running`, `draining`, `deleting`, `failed`).
    pub machine_state: String,
    /// Since when the node has been unhealthy (auto-repair counts from here).
    pub unhealthy_since: Option<DateTime<Utc>>,
    pub unhealthy_reason: Option<String>,
}

impl From<&Machine> for NodeView {
    fn from(m: &Machine) -> Self {
        let state = match (&m.node_state, m.state()) {
            (Some(observed), _) => observed.clone(),
            (None, MachineState::Pending | MachineState::Provisioning) => "provisioning".into(),
            (None, MachineState::Running) => "joining".into(),
            (None, other) => other.as_str().into(),
        };
        Self {
            name: m.name.clone(),
            machine: m.id,
            address: m.address.clone(),
            state,
            machine_state: m.state.clone(),
            unhealthy_since: m.unhealthy_since,
            unhealthy_reason: m.unhealthy_reason.clone(),
        }
    }
}

/// A node pool.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodePoolView {
    pub id: Uuid,
    pub cluster: Uuid,
    pub name: String,
    pub machine_type: String,
    pub size: u32,
    pub autoscaling: Option<Autoscaling>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Seconds a node's drain may take before it is removed anyway.
    pub drain_timeout_seconds: u32,
    pub auto_repair: AutoRepair,
    /// Nodes Ready in the cluster on running machines.
    pub ready_nodes: u32,
    pub nodes: Vec<NodeView>,
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub generation: i64,
    pub observed_generation: i64,
    pub etag: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl NodePoolView {
    /// `machines` are the cluster's ledger rows; those of this pool become nodes.
    pub fn new(p: &NodePool, machines: &[Machine]) -> Self {
        let mine = || machines.iter().filter(|m| m.node_pool_id == Some(p.id));
        let nodes: Vec<NodeView> = mine().map(NodeView::from).collect();
        let ready = mine()
            .filter(|m| {
                m.state() == MachineState::Running && m.node_state.as_deref() == Some("ready")
            })
            .count();
        Self {
            id: p.id,
            cluster: p.cluster_id,
            name: p.name.clone(),
            machine_type: p.machine_type.as_str().into(),
            size: p.size,
            autoscaling: p.autoscaling,
            labels: p.labels.as_map().clone(),
            taints: p.taints.clone(),
            drain_timeout_seconds: p.drain_timeout_seconds,
            auto_repair: p.auto_repair,
            ready_nodes: u32::try_from(ready).unwrap_or(u32::MAX),
            nodes,
            phase: p.phase,
            conditions: p.conditions.clone(),
            generation: p.generation,
            observed_generation: p.observed_generation,
            etag: p.etag(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A machine in the ledger.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MachineView {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub node_pool: Option<Uuid>,
    pub provider: String,
    pub provider_id: Option<String>,
    pub machine_type: String,
    pub state: String,
    pub address: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<&Machine> for MachineView {
    fn from(m: &Machine) -> Self {
        Self {
            id: m.id,
            name: m.name.clone(),
            role: m.role.clone(),
            node_pool: m.node_pool_id,
            provider: m.provider.clone(),
            provider_id: m.provider_id.clone(),
            machine_type: m.machine_type.clone(),
            state: m.state.clone(),
            address: m.address.clone(),
            last_error: m.last_error.clone(),
            created_at: m.created_at,
        }
    }
}

/// An operation with its steps.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationView {
    pub id: Uuid,
    pub cluster: Uuid,
    pub node_pool: Option<Uuid>,
    #[serde(rename = "type")]
    pub type_: String,
    pub state: String,
    pub steps: Vec<Step>,
    pub error: Option<OperationError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<&Operation> for OperationView {
    fn from(o: &Operation) -> Self {
        Self {
            id: o.id,
            cluster: o.cluster_id,
            node_pool: o.node_pool_id,
            type_: o.type_.clone(),
            state: o.state.clone(),
            steps: o.steps.clone(),
            error: o.error.clone(),
            created_at: o.created_at,
            started_at: o.started_at,
            finished_at: o.finished_at,
        }
    }
}

/// A page of results.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}
