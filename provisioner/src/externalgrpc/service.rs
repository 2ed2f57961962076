//! The `CloudProvider` service: each call finds its cluster from the
//! client certificate, then reads or changes that cluster's autoscaling
//! pools (the node groups; a group's id is the pool's name).
//!
//! Status codes, so a cluster-autoscaler's log says why:
//! - `Unauthenticated`: no client certificate reached the call, or it
//!   names no cluster.
//! - `NotFound`: the cluster is gone (or another tenant's), or no
//!   autoscaling pool has that id.
//! - `InvalidArgument`: a delta of the wrong sign, no nodes, a node given
//!   without a Kubeforge provider id or name.
//! - `FailedPrecondition`: past the pool's max or below its min, a node of
//!   another pool, a decrease that would remove a joined node, the pool or
//!   cluster being deleted, or the cluster's autoscaler mode not
//!   `external` (for the calls that change sizes).
//! - `ResourceExhausted`: past the tenant's node quota.
//! - `Unimplemented`: pricing.
//! - `Internal`: the database failed (detail in the service's log, not the
//!   answer).

use std::collections::HashMap;
use std::time::Duration;

use kubeforge_cluster::names::{machine_of_provider_id, provider_id};
use kubeforge_cluster::pools::{MachineRole, MachineState};
use kubeforge_cluster::spec::AutoscalerMode;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::proto::ca;
use super::proto::ca::cloud_provider_server::CloudProvider;
use super::proto::ca::instance_status::InstanceState;
use super::template;
use crate::autoscaler::apply::write_size;
use crate::context::{OpContext, Role};
use crate::error::Error;
use crate::grpc_pki::{self, ClientIdentity};
use crate::state::SharedApp;
use crate::store::cluster::{self, Cluster};
use crate::store::machine::{self, Machine};
use crate::store::node_pool::{self, NodePool};
use crate::store::tenant;

/// Who the operations and events of this provider name as their author.
pub const SUBJECT: &str = "cluster-autoscaler";

/// The label Kubeforge would put on nodes with a GPU (no machine type has
/// one yet, so no node carries it).
pub const GPU_LABEL: &str = "kubeforge.io/accelerator";

/// `InstanceErrorInfo.instanceErrorClass` values (upstream's
/// `cloudprovider.InstanceErrorClass`).
const OUT_OF_RESOURCES_ERROR_CLASS: i32 = 1;
const OTHER_ERROR_CLASS: i32 = 99;

/// The provider, over the process's shared state.
pub struct Provider {
    app: SharedApp,
}

impl Provider {
    pub fn new(app: SharedApp) -> Self {
        Self { app }
    }

    /// The cluster the client certificate names, and a context acting for
    /// it: the tenant's, as an editor, the subject naming the credential.
    async fn caller<T>(&self, req: &Request<T>) -> Result<(OpContext, Cluster), Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let ClientIdentity {
            tenant,
            cluster_id,
            serial,
        } = grpc_pki::identify(leaf.as_ref()).map_err(Status::unauthenticated)?;
        let ctx = OpContext {
            tenant,
            subject: format!("{SUBJECT} (credential {serial})"),
            role: Role::Editor,
            request_id: format!("externalgrpc-{}", Uuid::now_v7()),
        };
        let c = cluster::get(&self.app.pool, &ctx, &cluster_id.to_string())
            .await
            .map_err(status)?;
        if c.deletion_requested_at.is_some() {
            return Err(Status::not_found(format!(
                "cluster {} is being deleted",
                c.name
            )));
        }
        Ok((ctx, c))
    }

    /// Runs one call, counting it by method and status code.
    async fn observed<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        let out = call.await;
        let code = out.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.app
            .metrics
            .observe_grpc_call(method, code, started.elapsed());
        out
    }

    /// The cluster's pools and machines.
    async fn world(
        &self,
        ctx: &OpContext,
        c: &Cluster,
    ) -> Result<(Vec<NodePool>, Vec<Machine>), Status> {
        let pools = node_pool::list(&self.app.pool, ctx, c.id)
            .await
            .map_err(status)?;
        let machines = machine::list(&self.app.pool, ctx, c.id)
            .await
            .map_err(status)?;
        Ok((pools, machines))
    }
}

/// An error of the store or the app as a gRPC status.
fn status(e: Error) -> Status {
    match e {
        Error::NotFound { .. } => Status::not_found(e.to_string()),
        Error::Validation(v) => Status::invalid_argument(v.to_string()),
        Error::QuotaExceeded { detail, .. } => Status::resource_exhausted(detail),
        Error::Conflict(m) | Error::PreconditionFailed(m) => Status::failed_precondition(m),
        other => {
            tracing::warn!(error = %other, "externalgrpc call failed");
            Status::internal("internal error (see the service's log)")
        }
    }
}

fn db(e: sqlx::Error) -> Status {
    status(Error::from(e))
}

/// A pool the provider manages: live, not being deleted, autoscaling.
fn is_group(p: &NodePool) -> bool {
    p.autoscaling.is_some() && p.deletion_requested_at.is_none()
}

/// A group's bounds (every group autoscales: see [`is_group`]).
fn bounds(p: &NodePool) -> (u32, u32) {
    p.autoscaling.map_or((0, 0), |a| (a.min, a.max))
}

fn group(c: &Cluster, p: &NodePool, machines: &[Machine]) -> ca::NodeGroup {
    let (min, max) = bounds(p);
    let live = machines
        .iter()
        .filter(|m| m.node_pool_id == Some(p.id) && m.state.is_live())
        .count();
    ca::NodeGroup {
        id: p.name.to_string(),
        min_size: size_i32(min),
        max_size: size_i32(max),
        debug: format!(
            "node pool {} of cluster {} ({}): size {}, {live} machines, min {}, max {}, \
             machine type {}, autoscaler mode {}",
            p.name,
            c.name,
            c.id,
            p.size,
            min,
            max,
            p.machine_type.as_str(),
            c.autoscaler.mode.as_str()
        ),
    }
}

fn find_group<'a>(c: &Cluster, pools: &'a [NodePool], id: &str) -> Result<&'a NodePool, Status> {
    pools
        .iter()
        .find(|p| p.name.as_str() == id && is_group(p))
        .ok_or_else(|| {
            Status::not_found(format!(
                "cluster {} has no autoscaling node pool {id:?}",
                c.name
            ))
        })
}

fn must_be_external(c: &Cluster) -> Result<(), Status> {
    if c.autoscaler.mode == AutoscalerMode::External {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "cluster {}'s autoscaler mode is {}: an external cluster-autoscaler may change its \
             pools only in mode external (PATCH /v1/clusters/{} {{\"autoscaler\": {{\"mode\": \
             \"external\"}}}})",
            c.name,
            c.autoscaler.mode.as_str(),
            c.name
        )))
    }
}

/// Whether a machine's node has registered with the cluster.
fn joined(m: &Machine) -> bool {
    m.joined_at.is_some()
        || m.timeline.registered.is_some()
        || matches!(m.node_state.as_deref(), Some("ready" | "not_ready"))
}

fn instance(m: &Machine) -> ca::Instance {
    let (state, error) = match m.state {
        MachineState::Pending | MachineState::Provisioning => {
            (InstanceState::InstanceCreating, None)
        }
        MachineState::Running => (InstanceState::InstanceRunning, None),
        MachineState::Failed => {
            let message = m
                .last_error
                .clone()
                .unwrap_or_else(|| "the machine failed to come up".into());
            let class = if message.contains("WaitingForCapacity") || message.contains("capacity") {
                OUT_OF_RESOURCES_ERROR_CLASS
            } else {
                OTHER_ERROR_CLASS
            };
            (
                InstanceState::InstanceCreating,
                Some(ca::InstanceErrorInfo {
                    error_code: "MachineFailed".into(),
                    error_message: message,
                    instance_error_class: class,
                }),
            )
        }
        MachineState::Draining | MachineState::Deleting | MachineState::Deleted => {
            (InstanceState::InstanceDeleting, None)
        }
    };
    ca::Instance {
        id: provider_id(m.id),
        status: Some(ca::InstanceStatus {
            instance_state: state as i32,
            error_info: error,
        }),
    }
}

fn size_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// The machines `nodes` name, each of pool `p` and live or leaving.
fn named_machines<'a>(
    c: &Cluster,
    p: &NodePool,
    pools: &[NodePool],
    machines: &'a [Machine],
    nodes: &[ca::ExternalGrpcNode],
) -> Result<Vec<&'a Machine>, Status> {
    let mut out: Vec<&Machine> = Vec::new();
    for n in nodes {
        let m = if n.provider_id.is_empty() {
            machines
                .iter()
                .find(|m| !n.name.is_empty() && m.name == n.name)
        } else {
            let id = machine_of_provider_id(&n.provider_id).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "node {:?}: provider id {:?} is not a Kubeforge one (kubeforge://<machine id>)",
                    n.name, n.provider_id
                ))
            })?;
            machines.iter().find(|m| m.id == id)
        };
        let Some(m) = m else {
            return Err(Status::not_found(format!(
                "node {:?} ({:?}) is no machine of cluster {}",
                n.name, n.provider_id, c.name
            )));
        };
        if m.node_pool_id != Some(p.id) {
            let other = pools
                .iter()
                .find(|q| Some(q.id) == m.node_pool_id)
                .map_or_else(
                    || "no pool (a control-plane machine)".to_string(),
                    |q| format!("node pool {}", q.name),
                );
            return Err(Status::failed_precondition(format!(
                "node {} belongs to {other}, not to node pool {}",
                m.name, p.name
            )));
        }
        if !out.iter().any(|o| o.id == m.id) {
            out.push(m);
        }
    }
    Ok(out)
}

/// The calls, each answered for the caller's cluster.
impl Provider {
    async fn node_groups_call(
        &self,
        req: Request<ca::NodeGroupsRequest>,
    ) -> Result<Response<ca::NodeGroupsResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let (pools, machines) = self.world(&ctx, &c).await?;
        Ok(Response::new(ca::NodeGroupsResponse {
            node_groups: pools
                .iter()
                .filter(|p| is_group(p))
                .map(|p| group(&c, p, &machines))
                .collect(),
        }))
    }

    async fn node_group_for_node_call(
        &self,
        req: Request<ca::NodeGroupForNodeRequest>,
    ) -> Result<Response<ca::NodeGroupForNodeResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let node = req.into_inner().node.unwrap_or_default();
        // Only a Kubeforge provider id of a worker of an autoscaling pool
        // of this cluster names a group; anything else is "leave it".
        let none = || {
            Ok(Response::new(ca::NodeGroupForNodeResponse {
                node_group: Some(ca::NodeGroup::default()),
            }))
        };
        let Some(id) = machine_of_provider_id(&node.provider_id) else {
            return none();
        };
        let (pools, machines) = self.world(&ctx, &c).await?;
        let Some(m) = machines
            .iter()
            .find(|m| m.id == id && m.role == MachineRole::Worker)
        else {
            return none();
        };
        match pools
            .iter()
            .find(|p| Some(p.id) == m.node_pool_id && is_group(p))
        {
            Some(p) => Ok(Response::new(ca::NodeGroupForNodeResponse {
                node_group: Some(group(&c, p, &machines)),
            })),
            None => none(),
        }
    }

    async fn pricing_node_price_call(
        &self,
        _req: Request<ca::PricingNodePriceRequest>,
    ) -> Result<Response<ca::PricingNodePriceResponse>, Status> {
        Err(Status::unimplemented("Kubeforge has no prices"))
    }

    async fn pricing_pod_price_call(
        &self,
        _req: Request<ca::PricingPodPriceRequest>,
    ) -> Result<Response<ca::PricingPodPriceResponse>, Status> {
        Err(Status::unimplemented("Kubeforge has no prices"))
    }

    async fn gpu_label_call(
        &self,
        req: Request<ca::GpuLabelRequest>,
    ) -> Result<Response<ca::GpuLabelResponse>, Status> {
        self.caller(&req).await?;
        Ok(Response::new(ca::GpuLabelResponse {
            label: GPU_LABEL.into(),
        }))
    }

    async fn get_available_gpu_types_call(
        &self,
        req: Request<ca::GetAvailableGpuTypesRequest>,
    ) -> Result<Response<ca::GetAvailableGpuTypesResponse>, Status> {
        self.caller(&req).await?;
        // No machine type has a GPU.
        Ok(Response::new(ca::GetAvailableGpuTypesResponse {
            gpu_types: HashMap::new(),
        }))
    }

    async fn cleanup_call(
        &self,
        req: Request<ca::CleanupRequest>,
    ) -> Result<Response<ca::CleanupResponse>, Status> {
        // Nothing is held for a caller between calls.
        self.caller(&req).await?;
        Ok(Response::new(ca::CleanupResponse {}))
    }

    async fn refresh_call(
        &self,
        req: Request<ca::RefreshRequest>,
    ) -> Result<Response<ca::RefreshResponse>, Status> {
        // Every call reads the database afresh: nothing to refresh, but a
        // credential whose cluster is gone learns it here.
        self.caller(&req).await?;
        Ok(Response::new(ca::RefreshResponse {}))
    }

    async fn node_group_target_size_call(
        &self,
        req: Request<ca::NodeGroupTargetSizeRequest>,
    ) -> Result<Response<ca::NodeGroupTargetSizeResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let (pools, _) = self.world(&ctx, &c).await?;
        let p = find_group(&c, &pools, &req.get_ref().id)?;
        Ok(Response::new(ca::NodeGroupTargetSizeResponse {
            target_size: size_i32(p.size),
        }))
    }

    async fn node_group_increase_size_call(
        &self,
        req: Request<ca::NodeGroupIncreaseSizeRequest>,
    ) -> Result<Response<ca::NodeGroupIncreaseSizeResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let ca::NodeGroupIncreaseSizeRequest { delta, id } = req.into_inner();
        must_be_external(&c)?;
        let delta = u32::try_from(delta)
            .ok()
            .filter(|d| *d > 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!("delta must be positive, not {delta}"))
            })?;
        let mut tx = self.app.pool.begin().await.map_err(db)?;
        let c = cluster::get_for_update(&mut tx, &ctx, &c.id.to_string())
            .await
            .map_err(status)?;
        let pools = node_pool::list(&mut *tx, &ctx, c.id)
            .await
            .map_err(status)?;
        let found = find_group(&c, &pools, &id)?;
        let p = node_pool::get(&mut tx, &ctx, c.id, &found.id.to_string(), true)
            .await
            .map_err(status)?;
        let (_, max) = bounds(&p);
        let to = p.size.saturating_add(delta);
        if to > max {
            return Err(Status::failed_precondition(format!(
                "node pool {} is at {} of max {}: {delta} more would be {to}",
                p.name, p.size, max
            )));
        }
        // The tenant's node and vCPU quotas, against the sizes in use (a
        // platform admin may have lowered them below the pools' maxima).
        let now = tenant::in_use_now(&mut *tx, &c.tenant)
            .await
            .map_err(status)?;
        if let Some(limit) = now.max_nodes {
            if now.nodes + i64::from(delta) > i64::from(limit) {
                return Err(Status::resource_exhausted(format!(
                    "tenant {}'s node quota is {limit} and its pools use {}: {delta} more \
                     would be {}",
                    c.tenant,
                    now.nodes,
                    now.nodes + i64::from(delta)
                )));
            }
        }
        let cpus = i64::from(delta) * i64::from(p.machine_type.cpus());
        if let Some(limit) = now.max_cpus {
            if now.cpus + cpus > i64::from(limit) {
                return Err(Status::resource_exhausted(format!(
                    "tenant {}'s vCPU quota is {limit} and it uses {}: {delta} more {} nodes \
                     would be {}",
                    c.tenant,
                    now.cpus,
                    p.machine_type,
                    now.cpus + cpus
                )));
            }
        }
        let message = format!(
            "node pool {} scales up from {} to {to}: asked by {}",
            p.name, p.size, ctx.subject
        );
        write_size(&mut tx, &self.app, &ctx, &c, &p, to, "ScaleUp", &message)
            .await
            .map_err(status)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(cluster = %c.id, pool = %p.name, from = p.size, to, "externalgrpc: increase size");
        Ok(Response::new(ca::NodeGroupIncreaseSizeResponse {}))
    }

    async fn node_group_delete_nodes_call(
        &self,
        req: Request<ca::NodeGroupDeleteNodesRequest>,
    ) -> Result<Response<ca::NodeGroupDeleteNodesResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let ca::NodeGroupDeleteNodesRequest { nodes, id } = req.into_inner();
        must_be_external(&c)?;
        if nodes.is_empty() {
            return Err(Status::invalid_argument("no nodes given"));
        }
        let mut tx = self.app.pool.begin().await.map_err(db)?;
        let c = cluster::get_for_update(&mut tx, &ctx, &c.id.to_string())
            .await
            .map_err(status)?;
        let pools = node_pool::list(&mut *tx, &ctx, c.id)
            .await
            .map_err(status)?;
        let found = find_group(&c, &pools, &id)?;
        let p = node_pool::get(&mut tx, &ctx, c.id, &found.id.to_string(), true)
            .await
            .map_err(status)?;
        let machines = machine::list(&mut *tx, &ctx, c.id).await.map_err(status)?;
        let named = named_machines(&c, &p, &pools, &machines, &nodes)?;
        // Already leaving: asked again (a retried call), nothing to add.
        let leaving: Vec<&Machine> = named
            .iter()
            .copied()
            .filter(|m| m.state.is_live())
            .collect();
        if leaving.is_empty() {
            return Ok(Response::new(ca::NodeGroupDeleteNodesResponse {}));
        }
        let (min, _) = bounds(&p);
        let n = u32::try_from(leaving.len()).unwrap_or(u32::MAX);
        let to = p.size.saturating_sub(n);
        if p.size < n || to < min {
            return Err(Status::failed_precondition(format!(
                "node pool {} is at {} with min {}: removing {n} would leave {}",
                p.name,
                p.size,
                min,
                i64::from(p.size) - i64::from(n)
            )));
        }
        let names: Vec<&str> = leaving.iter().map(|m| m.name.as_str()).collect();
        for m in &leaving {
            machine::start_drain(&mut *tx, m.id, &format!("removed by {}", ctx.subject))
                .await
                .map_err(status)?;
        }
        let message = format!(
            "node pool {} scales down from {} to {to}: {} {} removed by {}",
            p.name,
            p.size,
            if names.len() == 1 { "node" } else { "nodes" },
            names.join(", "),
            ctx.subject
        );
        write_size(&mut tx, &self.app, &ctx, &c, &p, to, "ScaleDown", &message)
            .await
            .map_err(status)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(cluster = %c.id, pool = %p.name, from = p.size, to, "externalgrpc: delete nodes");
        Ok(Response::new(ca::NodeGroupDeleteNodesResponse {}))
    }

    async fn node_group_decrease_target_size_call(
        &self,
        req: Request<ca::NodeGroupDecreaseTargetSizeRequest>,
    ) -> Result<Response<ca::NodeGroupDecreaseTargetSizeResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let ca::NodeGroupDecreaseTargetSizeRequest { delta, id } = req.into_inner();
        must_be_external(&c)?;
        let by = delta
            .checked_neg()
            .and_then(|d| u32::try_from(d).ok())
            .filter(|d| *d > 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!("delta must be negative, not {delta}"))
            })?;
        let mut tx = self.app.pool.begin().await.map_err(db)?;
        let c = cluster::get_for_update(&mut tx, &ctx, &c.id.to_string())
            .await
            .map_err(status)?;
        let pools = node_pool::list(&mut *tx, &ctx, c.id)
            .await
            .map_err(status)?;
        let found = find_group(&c, &pools, &id)?;
        let p = node_pool::get(&mut tx, &ctx, c.id, &found.id.to_string(), true)
            .await
            .map_err(status)?;
        let machines = machine::list(&mut *tx, &ctx, c.id).await.map_err(status)?;
        let joined_nodes = u32::try_from(
            machines
                .iter()
                .filter(|m| m.node_pool_id == Some(p.id) && m.state.is_live() && joined(m))
                .count(),
        )
        .unwrap_or(u32::MAX);
        let (min, _) = bounds(&p);
        let to = i64::from(p.size) - i64::from(by);
        if to < i64::from(joined_nodes) {
            return Err(Status::failed_precondition(format!(
                "node pool {} is at {} with {joined_nodes} joined nodes: lowering it by {by} would \
                 remove a joined node (use NodeGroupDeleteNodes to name the nodes to remove)",
                p.name, p.size
            )));
        }
        if to < i64::from(min) {
            return Err(Status::failed_precondition(format!(
                "node pool {} is at {} with min {}: lowering it by {by} would leave {to}",
                p.name, p.size, min
            )));
        }
        let to = u32::try_from(to).unwrap_or(0);
        let message = format!(
            "node pool {} scales down from {} to {to}: {by} not yet joined asked back by {}",
            p.name, p.size, ctx.subject
        );
        write_size(&mut tx, &self.app, &ctx, &c, &p, to, "ScaleDown", &message)
            .await
            .map_err(status)?;
        tx.commit().await.map_err(db)?;
        Ok(Response::new(ca::NodeGroupDecreaseTargetSizeResponse {}))
    }

    async fn node_group_nodes_call(
        &self,
        req: Request<ca::NodeGroupNodesRequest>,
    ) -> Result<Response<ca::NodeGroupNodesResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let (pools, machines) = self.world(&ctx, &c).await?;
        let p = find_group(&c, &pools, &req.get_ref().id)?;
        Ok(Response::new(ca::NodeGroupNodesResponse {
            instances: machines
                .iter()
                .filter(|m| m.node_pool_id == Some(p.id) && m.state != MachineState::Deleted)
                .map(instance)
                .collect(),
        }))
    }

    async fn node_group_template_node_info_call(
        &self,
        req: Request<ca::NodeGroupTemplateNodeInfoRequest>,
    ) -> Result<Response<ca::NodeGroupTemplateNodeInfoResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let (pools, _) = self.world(&ctx, &c).await?;
        let p = find_group(&c, &pools, &req.get_ref().id)?;
        let version = format!("v{}", c.kubernetes_version.as_str());
        let bytes = template::encode(&template::node(c.name.as_str(), p, &version));
        Ok(Response::new(ca::NodeGroupTemplateNodeInfoResponse {
            node_info: bytes.clone(),
            node_bytes: bytes,
            resource_slice_bytes: Vec::new(),
        }))
    }

    async fn node_group_get_options_call(
        &self,
        req: Request<ca::NodeGroupAutoscalingOptionsRequest>,
    ) -> Result<Response<ca::NodeGroupAutoscalingOptionsResponse>, Status> {
        let (ctx, c) = self.caller(&req).await?;
        let (pools, _) = self.world(&ctx, &c).await?;
        let r = req.into_inner();
        find_group(&c, &pools, &r.id)?;
        // The autoscaler's own defaults, with the two the cluster's
        // settings say: when a node is unneeded, and for how long.
        let mut options = r.defaults.unwrap_or_default();
        options.scale_down_utilization_threshold = c.autoscaler.scale_down_utilization_threshold;
        options.scale_down_unneeded_duration = Some(proto_duration(Duration::from_secs(
            u64::from(c.autoscaler.scale_down_unneeded_seconds),
        )));
        Ok(Response::new(ca::NodeGroupAutoscalingOptionsResponse {
            node_group_autoscaling_options: Some(options),
        }))
    }
}

#[tonic::async_trait]
impl CloudProvider for Provider {
    async fn node_groups(
        &self,
        req: Request<ca::NodeGroupsRequest>,
    ) -> Result<Response<ca::NodeGroupsResponse>, Status> {
        self.observed("NodeGroups", self.node_groups_call(req))
            .await
    }

    async fn node_group_for_node(
        &self,
        req: Request<ca::NodeGroupForNodeRequest>,
    ) -> Result<Response<ca::NodeGroupForNodeResponse>, Status> {
        self.observed("NodeGroupForNode", self.node_group_for_node_call(req))
            .await
    }

    async fn pricing_node_price(
        &self,
        req: Request<ca::PricingNodePriceRequest>,
    ) -> Result<Response<ca::PricingNodePriceResponse>, Status> {
        self.observed("PricingNodePrice", self.pricing_node_price_call(req))
            .await
    }

    async fn pricing_pod_price(
        &self,
        req: Request<ca::PricingPodPriceRequest>,
    ) -> Result<Response<ca::PricingPodPriceResponse>, Status> {
        self.observed("PricingPodPrice", self.pricing_pod_price_call(req))
            .await
    }

    async fn gpu_label(
        &self,
        req: Request<ca::GpuLabelRequest>,
    ) -> Result<Response<ca::GpuLabelResponse>, Status> {
        self.observed("GPULabel", self.gpu_label_call(req)).await
    }

    async fn get_available_gpu_types(
        &self,
        req: Request<ca::GetAvailableGpuTypesRequest>,
    ) -> Result<Response<ca::GetAvailableGpuTypesResponse>, Status> {
        self.observed(
            "GetAvailableGPUTypes",
            self.get_available_gpu_types_call(req),
        )
        .await
    }

    async fn cleanup(
        &self,
        req: Request<ca::CleanupRequest>,
    ) -> Result<Response<ca::CleanupResponse>, Status> {
        self.observed("Cleanup", self.cleanup_call(req)).await
    }

    async fn refresh(
        &self,
        req: Request<ca::RefreshRequest>,
    ) -> Result<Response<ca::RefreshResponse>, Status> {
        self.observed("Refresh", self.refresh_call(req)).await
    }

    async fn node_group_target_size(
        &self,
        req: Request<ca::NodeGroupTargetSizeRequest>,
    ) -> Result<Response<ca::NodeGroupTargetSizeResponse>, Status> {
        self.observed("NodeGroupTargetSize", self.node_group_target_size_call(req))
            .await
    }

    async fn node_group_increase_size(
        &self,
        req: Request<ca::NodeGroupIncreaseSizeRequest>,
    ) -> Result<Response<ca::NodeGroupIncreaseSizeResponse>, Status> {
        self.observed(
            "NodeGroupIncreaseSize",
            self.node_group_increase_size_call(req),
        )
        .await
    }

    async fn node_group_delete_nodes(
        &self,
        req: Request<ca::NodeGroupDeleteNodesRequest>,
    ) -> Result<Response<ca::NodeGroupDeleteNodesResponse>, Status> {
        self.observed(
            "NodeGroupDeleteNodes",
            self.node_group_delete_nodes_call(req),
        )
        .await
    }

    async fn node_group_decrease_target_size(
        &self,
        req: Request<ca::NodeGroupDecreaseTargetSizeRequest>,
    ) -> Result<Response<ca::NodeGroupDecreaseTargetSizeResponse>, Status> {
        self.observed(
            "NodeGroupDecreaseTargetSize",
            self.node_group_decrease_target_size_call(req),
        )
        .await
    }

    async fn node_group_nodes(
        &self,
        req: Request<ca::NodeGroupNodesRequest>,
    ) -> Result<Response<ca::NodeGroupNodesResponse>, Status> {
        self.observed("NodeGroupNodes", self.node_group_nodes_call(req))
            .await
    }

    async fn node_group_template_node_info(
        &self,
        req: Request<ca::NodeGroupTemplateNodeInfoRequest>,
    ) -> Result<Response<ca::NodeGroupTemplateNodeInfoResponse>, Status> {
        self.observed(
            "NodeGroupTemplateNodeInfo",
            self.node_group_template_node_info_call(req),
        )
        .await
    }

    async fn node_group_get_options(
        &self,
        req: Request<ca::NodeGroupAutoscalingOptionsRequest>,
    ) -> Result<Response<ca::NodeGroupAutoscalingOptionsResponse>, Status> {
        self.observed("NodeGroupGetOptions", self.node_group_get_options_call(req))
            .await
    }
}
