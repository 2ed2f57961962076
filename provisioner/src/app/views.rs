//! Store rows as the API shows them: the conversions into the views of
//! [`kubeforge_cluster::api`]. Internal columns (tenant scoping, resource
//! versions) become `etag`s or stay hidden.

use kubeforge_cluster::api::{
    AutoscalerPoolView, AutoscalerSnapshot, AutoscalerStatusView, ClusterView, ControlPlaneView,
    EventView, MachineView, NetworkView, NodePoolSummary, NodePoolView, NodeView, OperationView,
    DECISIONS_KEPT, PENDING_SHOWN,
};
use kubeforge_cluster::pools::{MachineRole, MachineState};
use uuid::Uuid;

use crate::store::cluster::Cluster;
use crate::store::event::Event;
use crate::store::machine::Machine;
use crate::store::node_pool::NodePool;
use crate::store::operation::Operation;

/// A cluster as the API shows it, with its pools' summaries (from
/// [`crate::store::node_pool::summaries`]; those of other clusters are
/// skipped).
pub fn cluster_view(c: &Cluster, pools: &[(Uuid, NodePoolSummary)]) -> ClusterView {
    ClusterView {
        node_pools: pools
            .iter()
            .filter(|(cluster, _)| *cluster == c.id)
            .map(|(_, p)| p.clone())
            .collect(),
        ..cluster_fields(c)
    }
}

/// Every field of the cluster's view but its pools.
fn cluster_fields(c: &Cluster) -> ClusterView {
    ClusterView {
        id: c.id,
        name: c.name.to_string(),
        tenant: c.tenant.clone(),
        kubernetes_version: c.kubernetes_version.as_str().into(),
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
        autoscaler: c.autoscaler,
        phase: c.phase,
        conditions: c.conditions.clone(),
        node_pools: Vec::new(),
        endpoint: c.endpoint.clone(),
        certificates: c.certificates.clone(),
        generation: c.generation,
        observed_generation: c.observed_generation,
        etag: c.etag(),
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}

impl From<&Machine> for NodeView {
    fn from(m: &Machine) -> Self {
        let state = match (&m.node_state, m.state) {
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
            machine_state: m.state.as_str().into(),
            unhealthy_since: m.unhealthy_since,
            unhealthy_reason: m.unhealthy_reason.clone(),
        }
    }
}

/// Nodes of pool `p` Ready in the cluster on running machines, among the
/// cluster's ledger rows `machines`.
fn ready_nodes(p: &NodePool, machines: &[Machine]) -> u32 {
    let ready = machines
        .iter()
        .filter(|m| m.node_pool_id == Some(p.id))
        .filter(|m| m.state == MachineState::Running && m.node_state.as_deref() == Some("ready"))
        .count();
    u32::try_from(ready).unwrap_or(u32::MAX)
}

/// A pool with its nodes: `machines` are the cluster's ledger rows, those
/// of this pool become nodes.
pub fn node_pool_view(p: &NodePool, machines: &[Machine]) -> NodePoolView {
    let nodes: Vec<NodeView> = machines
        .iter()
        .filter(|m| m.node_pool_id == Some(p.id))
        .map(NodeView::from)
        .collect();
    NodePoolView {
        id: p.id,
        cluster: p.cluster_id,
        name: p.name.to_string(),
        machine_type: p.machine_type.as_str().into(),
        alternative_machine_types: p
            .alternative_machine_types
            .iter()
            .map(|t| t.as_str().to_string())
            .collect(),
        size: p.size,
        autoscaling: p.autoscaling,
        labels: p.labels.as_map().clone(),
        host_selector: p.host_selector.as_map().clone(),
        taints: p.taints.clone(),
        drain_timeout_seconds: p.drain_timeout_seconds,
        auto_repair: p.auto_repair,
        ready_nodes: ready_nodes(p, machines),
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

/// A cluster's autoscaler status: its pools that autoscale (in the order
/// they are listed), with their size and Ready nodes from the rows and
/// their hold and recent decisions from the autoscaler's `snapshot` (by
/// pool name; pools the snapshot does not name have none), and the pending
/// pods the snapshot holds. No snapshot yet: the default one (observed
/// never, nothing pending, no decisions).
pub fn autoscaler_status_view(
    c: &Cluster,
    pools: &[NodePool],
    machines: &[Machine],
    snapshot: AutoscalerSnapshot,
) -> AutoscalerStatusView {
    let AutoscalerSnapshot {
        observed_at,
        pending_pods,
        mut pending,
        mut holds,
        mut decisions,
    } = snapshot;
    pending.truncate(PENDING_SHOWN);
    let pools = pools
        .iter()
        .filter_map(|p| {
            let a = p.autoscaling?;
            let name = p.name.as_str();
            let mut recent_decisions = decisions.remove(name).unwrap_or_default();
            recent_decisions.truncate(DECISIONS_KEPT);
            Some(AutoscalerPoolView {
                name: name.into(),
                min: a.min,
                max: a.max,
                size: p.size,
                ready: ready_nodes(p, machines),
                hold: holds.remove(name),
                recent_decisions,
            })
        })
        .collect();
    AutoscalerStatusView {
        cluster: c.id,
        mode: c.autoscaler.mode.as_str().into(),
        observed_at,
        pending_pods,
        pools,
        pending,
    }
}

impl From<&Machine> for MachineView {
    fn from(m: &Machine) -> Self {
        Self {
            id: m.id,
            name: m.name.clone(),
            role: m.role.as_str().into(),
            node_pool: m.node_pool_id,
            provider: m.provider.clone(),
            provider_id: m.provider_id.clone(),
            node_provider_id: (m.role == MachineRole::Worker)
                .then(|| kubeforge_cluster::names::provider_id(m.id)),
            machine_type: m.machine_type.as_str().into(),
            state: m.state.as_str().into(),
            address: m.address.clone(),
            last_error: m.last_error.clone(),
            created_at: m.created_at,
        }
    }
}

impl From<&Operation> for OperationView {
    fn from(o: &Operation) -> Self {
        Self {
            id: o.id,
            cluster: o.cluster_id,
            node_pool: o.node_pool_id,
            type_: o.kind.as_str().into(),
            state: o.state.as_str().into(),
            steps: o.steps.clone(),
            error: o.error.clone(),
            created_at: o.created_at,
            started_at: o.started_at,
            finished_at: o.finished_at,
        }
    }
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        Self {
            id: e.id,
            cluster: e.cluster_id,
            node_pool: e.node_pool_id,
            operation: e.operation_id,
            type_: e.r#type.clone(),
            reason: e.reason.clone(),
            message: e.message.clone(),
            created_at: e.created_at,
        }
    }
}
