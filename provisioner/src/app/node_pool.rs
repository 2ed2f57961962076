//! Node pool calls: create, list, get, update (size, autoscaling, drain
//! timeout, auto-repair, host selector, alternative machine types), delete.

use kubeforge_cluster::api::{
    CreateNodePoolRequest, NodePoolAccepted, NodePoolView, OperationAccepted, OperationView,
    UpdateNodePoolRequest,
};
use kubeforge_cluster::machine_types::{check_alternatives_on, parse_alternatives};
use kubeforge_cluster::operations::OperationKind;
use kubeforge_cluster::spec::{check_drain_timeout, check_pool_size, MAX_POOLS};
use kubeforge_cluster::{
    AutoRepair, Autoscaling, Labels, MachineType, NodePoolSpec, ValidationError,
};

use super::cluster::check_if_match;
use super::views::node_pool_view;
use super::{Accepted, App, Idempotency, Request};
use crate::context::{Action, OpContext};
use crate::error::{Error, Result};
use crate::store::idempotency::{self, Claim};
use crate::store::{cluster, machine, node_pool, operation, tenant};

/// A pool's host selector picks among registered hosts, which only the
/// `ssh` provider has: on any other provider it would never match, so it
/// is refused (`field`) rather than ignored.
pub(super) fn check_host_selector(
    provider_kind: &str,
    selector: &Labels,
    field: &str,
) -> Result<()> {
    if !selector.as_map().is_empty() && provider_kind != crate::providers::ssh::KIND {
        return Err(ValidationError::new(
            field,
            format!(
                "only clusters on the ssh provider pick hosts by label; this cluster is on {}",
                provider_kind
            ),
        )
        .into());
    }
    Ok(())
}

impl App {
    /// Refuses `extra` more nodes of `machine_type` (on `field`) when they
    /// would cross the tenant's node or vCPU quota.
    async fn check_node_quota(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &OpContext,
        extra: i64,
        machine_type: MachineType,
        field: &str,
    ) -> Result<()> {
        if extra <= 0 {
            return Ok(());
        }
        let quota = tenant::ensure_locked(conn, &ctx.tenant, self.config.default_quota).await?;
        let usage = tenant::usage(conn, &ctx.tenant).await?;
        let nodes = usage.nodes;
        if nodes + extra > i64::from(quota.max_nodes) {
            return Err(Error::QuotaExceeded {
                field: field.into(),
                detail: format!(
                    "{extra} more nodes would exceed the quota of {} (in use: {nodes})",
                    quota.max_nodes
                ),
            });
        }
        let cpus = extra * i64::from(machine_type.cpus());
        if usage.cpus + cpus > i64::from(quota.max_cpus) {
            return Err(Error::QuotaExceeded {
                field: field.into(),
                detail: format!(
                    "{extra} more {machine_type} nodes ({cpus} vCPUs) would exceed the vCPU \
                     quota of {} (in use: {})",
                    quota.max_cpus, usage.cpus
                ),
            });
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn node_pool_create(
        &self,
        ctx: &OpContext,
        cluster_ref: &str,
        idem: Option<Idempotency>,
        req: CreateNodePoolRequest,
    ) -> Result<Accepted> {
        ctx.authorize(Action::Write)?;
        let spec = NodePoolSpec::parse(req)?;
        let mut tx = self.pool.begin().await?;
        if let Some(i) = &idem {
            if let Claim::Replay { status, body } =
                idempotency::claim(&mut tx, ctx, &i.key, &i.hash).await?
            {
                return Ok(Accepted { status, body });
            }
        }
        let c = cluster::get_for_update(&mut tx, ctx, cluster_ref).await?;
        if c.deletion_requested_at.is_some() {
            return Err(Error::Conflict("the cluster is being deleted".into()));
        }
        check_host_selector(c.provider.kind(), &spec.host_selector, "host_selector")?;
        spec.check_provider(c.provider.kind())?;
        if let Some(why) = self.workers_unsupported(c.provider.kind()) {
            return Err(Error::Conflict(why));
        }
        // The cluster's row lock serialises pool creation: the count holds.
        let live = node_pool::list(&mut *tx, ctx, c.id).await?.len();
        if live >= MAX_POOLS {
            return Err(Error::Validation(ValidationError::new(
                "name",
                format!("the cluster already has {live} node pools (at most {MAX_POOLS})"),
            )));
        }
        let extra = i64::from(spec.size.max(spec.autoscaling.map_or(0, |a| a.max)));
        self.check_node_quota(&mut tx, ctx, extra, spec.machine_type, "size")
            .await?;
        let id = uuid::Uuid::now_v7();
        node_pool::insert(&mut tx, ctx, c.id, id, &spec).await?;
        let op = self
            .request(
                &mut tx,
                ctx,
                Request {
                    cluster_id: c.id,
                    provider: c.provider.kind(),
                    pool: Some(id),
                    kind: OperationKind::NodePoolCreate,
                    generation: 1,
                    reason: "NodePoolCreateRequested",
                    message: &format!(
                        "node pool {} of size {} requested by {}",
                        spec.name, spec.size, ctx.subject
                    ),
                },
            )
            .await?;
        let p = node_pool::get(&mut tx, ctx, c.id, &id.to_string(), false).await?;
        let o = operation::get(&mut tx, ctx, op).await?;
        let accepted = Accepted::new(
            202,
            &NodePoolAccepted {
                node_pool: node_pool_view(&p, &[]),
                operation: OperationView::from(&o),
            },
        )?;
        if let Some(i) = &idem {
            idempotency::save(&mut tx, ctx, &i.key, 202, &accepted.body).await?;
        }
        tx.commit().await?;
        Ok(accepted)
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn node_pool_list(
        &self,
        ctx: &OpContext,
        cluster_ref: &str,
    ) -> Result<Vec<NodePoolView>> {
        ctx.authorize(Action::Read)?;
        let c = cluster::get(&self.pool, ctx, cluster_ref).await?;
        let pools = node_pool::list(&self.pool, ctx, c.id).await?;
        let machines = machine::list(&self.pool, ctx, c.id).await?;
        Ok(pools.iter().map(|p| node_pool_view(p, &machines)).collect())
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn node_pool_get(
        &self,
        ctx: &OpContext,
        cluster_ref: &str,
        pool_ref: &str,
    ) -> Result<NodePoolView> {
        ctx.authorize(Action::Read)?;
        let mut conn = self.pool.acquire().await?;
        let c = cluster::get(&mut *conn, ctx, cluster_ref).await?;
        let p = node_pool::get(&mut conn, ctx, c.id, pool_ref, false).await?;
        let machines = machine::list(&mut *conn, ctx, c.id).await?;
        Ok(node_pool_view(&p, &machines))
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn node_pool_update(
        &self,
        ctx: &OpContext,
        cluster_ref: &str,
        pool_ref: &str,
        if_match: Option<&str>,
        req: UpdateNodePoolRequest,
    ) -> Result<NodePoolAccepted> {
        ctx.authorize(Action::Write)?;
        if req.size.is_none()
            && req.autoscaling.is_none()
            && req.drain_timeout_seconds.is_none()
            && req.auto_repair.is_none()
            && req.host_selector.is_none()
            && req.alternative_machine_types.is_none()
        {
            return Err(kubeforge_cluster::ValidationError::new(
                "size",
                "give at least one of size, autoscaling, drain_timeout_seconds, auto_repair, \
                 host_selector and alternative_machine_types",
            )
            .into());
        }
        let host_selector = req
            .host_selector
            .map(|s| Labels::parse(s).map_err(|e| e.under("host_selector")))
            .transpose()?;
        if let Some(t) = req.drain_timeout_seconds {
            check_drain_timeout(t)?;
        }
        if let Some(r) = &req.auto_repair {
            r.validate()?;
        }
        let mut tx = self.pool.begin().await?;
        let c = cluster::get_for_update(&mut tx, ctx, cluster_ref).await?;
        let p = node_pool::get(&mut tx, ctx, c.id, pool_ref, true).await?;
        check_if_match(if_match, &p.etag())?;
        if p.deletion_requested_at.is_some() || c.deletion_requested_at.is_some() {
            return Err(Error::Conflict("the node pool is being deleted".into()));
        }
        if let Some(selector) = &host_selector {
            check_host_selector(c.provider.kind(), selector, "host_selector")?;
        }
        let alternatives = match &req.alternative_machine_types {
            Some(names) => {
                let alternatives = parse_alternatives(p.machine_type, names)?;
                check_alternatives_on(c.provider.kind(), &alternatives)?;
                alternatives
            }
            None => p.alternative_machine_types.clone(),
        };
        let autoscaling = req.autoscaling.unwrap_or(p.autoscaling);
        if let Some(a) = &autoscaling {
            a.validate()?;
        }
        // Only autoscaling given: keep the size, moved into the new bounds.
        let size = req
            .size
            .unwrap_or_else(|| autoscaling.map_or(p.size, |a| p.size.clamp(a.min, a.max)));
        check_pool_size(size, autoscaling.as_ref())?;
        let old = i64::from(p.size.max(p.autoscaling.map_or(0, |a| a.max)));
        let new = i64::from(size.max(autoscaling.map_or(0, |a| a.max)));
        self.check_node_quota(&mut tx, ctx, new - old, p.machine_type, "size")
            .await?;
        let settings = node_pool::PoolSettings {
            size,
            autoscaling,
            drain_timeout_seconds: req.drain_timeout_seconds.unwrap_or(p.drain_timeout_seconds),
            auto_repair: req.auto_repair.unwrap_or(p.auto_repair),
            host_selector: host_selector.unwrap_or_else(|| p.host_selector.clone()),
            alternative_machine_types: alternatives,
        };
        let generation = node_pool::update_settings(&mut tx, p.id, &settings).await?;
        let message = format!(
            "node pool {} {} requested by {}",
            p.name,
            describe_changes(&p.settings(), &settings),
            ctx.subject
        );
        let op = self
            .request(
                &mut tx,
                ctx,
                Request {
                    cluster_id: c.id,
                    provider: c.provider.kind(),
                    pool: Some(p.id),
                    kind: OperationKind::NodePoolUpdate,
                    generation,
                    reason: "NodePoolUpdateRequested",
                    message: &message,
                },
            )
            .await?;
        let p = node_pool::get(&mut tx, ctx, c.id, &p.id.to_string(), false).await?;
        let machines = machine::list(&mut *tx, ctx, c.id).await?;
        let o = operation::get(&mut tx, ctx, op).await?;
        tx.commit().await?;
        Ok(NodePoolAccepted {
            node_pool: node_pool_view(&p, &machines),
            operation: OperationView::from(&o),
        })
    }

    #[tracing::instrument(skip_all, fields(tenant = %ctx.tenant, subject = %ctx.subject))]
    pub async fn node_pool_delete(
        &self,
        ctx: &OpContext,
        cluster_ref: &str,
        pool_ref: &str,
        if_match: Option<&str>,
    ) -> Result<OperationAccepted> {
        ctx.authorize(Action::Write)?;
        let mut tx = self.pool.begin().await?;
        let c = cluster::get_for_update(&mut tx, ctx, cluster_ref).await?;
        let p = node_pool::get(&mut tx, ctx, c.id, pool_ref, true).await?;
        check_if_match(if_match, &p.etag())?;
        if p.deletion_requested_at.is_some() {
            let ops = operation::list_active(&mut tx, c.id).await?;
            if let Some(o) = ops
                .iter()
                .find(|o| o.kind == OperationKind::NodePoolDelete && o.node_pool_id == Some(p.id))
            {
                return Ok(OperationAccepted {
                    operation: OperationView::from(o),
                });
            }
        }
        let generation = node_pool::request_deletion(&mut tx, p.id).await?;
        let op = self
            .request(
                &mut tx,
                ctx,
                Request {
                    cluster_id: c.id,
                    provider: c.provider.kind(),
                    pool: Some(p.id),
                    kind: OperationKind::NodePoolDelete,
                    generation,
                    reason: "NodePoolDeleteRequested",
                    message: &format!("node pool {} deletion requested by {}", p.name, ctx.subject),
                },
            )
            .await?;
        let o = operation::get(&mut tx, ctx, op).await?;
        tx.commit().await?;
        Ok(OperationAccepted {
            operation: OperationView::from(&o),
        })
    }
}

/// `size 2 -> 3, drain timeout 300s -> 60s` for the update event; the
/// size is always named, as before.
fn describe_changes(old: &node_pool::PoolSettings, new: &node_pool::PoolSettings) -> String {
    let mut parts = vec![format!("size {} -> {}", old.size, new.size)];
    if old.autoscaling != new.autoscaling {
        let show = |a: Option<Autoscaling>| match a {
            None => "off".to_string(),
            Some(a) if a.priority == 0 => format!("{}-{}", a.min, a.max),
            Some(a) => format!("{}-{} (priority {})", a.min, a.max, a.priority),
        };
        parts.push(format!(
            "autoscaling {} -> {}",
            show(old.autoscaling),
            show(new.autoscaling)
        ));
    }
    if old.drain_timeout_seconds != new.drain_timeout_seconds {
        parts.push(format!(
            "drain timeout {}s -> {}s",
            old.drain_timeout_seconds, new.drain_timeout_seconds
        ));
    }
    if old.host_selector != new.host_selector {
        let show = |l: &Labels| {
            if l.as_map().is_empty() {
                "any host".to_string()
            } else {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        parts.push(format!(
            "host selector {} -> {}",
            show(&old.host_selector),
            show(&new.host_selector)
        ));
    }
    if old.alternative_machine_types != new.alternative_machine_types {
        let show = |ts: &[kubeforge_cluster::MachineType]| {
            if ts.is_empty() {
                "none".to_string()
            } else {
                ts.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")
            }
        };
        parts.push(format!(
            "alternative machine types {} -> {}",
            show(&old.alternative_machine_types),
            show(&new.alternative_machine_types)
        ));
    }
    if old.auto_repair != new.auto_repair {
        let show = |r: AutoRepair| {
            if r.enabled {
                format!("after {}s", r.after_seconds)
            } else {
                "off".to_string()
            }
        };
        parts.push(format!(
            "auto-repair {} -> {}",
            show(old.auto_repair),
            show(new.auto_repair)
        ));
    }
    parts.join(", ")
}
