//! How an autoscaler decision becomes real: the same writes as a tenant's
//! `PATCH size` (the pool's size, an operation, an event, the cluster's
//! reconcile job), in one transaction, under two guards:
//!
//! - **The lease.** The transaction first takes a share lock on the
//!   cluster's autoscale job row and checks this replica's claim (owner and
//!   fencing token) still holds it ([`job::holds_lease`]). A replica that lost its lease (paused, cut off
//!   from the database, replaced) cannot write a decision: a takeover must
//!   lock that row to claim it, so the two never interleave.
//! - **What the decision saw.** The pool row is locked and its size must
//!   still be what the simulation started from; otherwise someone (a
//!   tenant's PATCH, another decision) changed it, and nothing is written:
//!   the next round decides again from what is real.
//!
//! A scale-down names its node: the machine is marked `draining` in the
//! same transaction that lowers the size, so the pool's pass drains and
//! removes exactly that node and picks no other.

use kubeforge_cluster::operations::OperationKind;
use kubeforge_cluster::pools::MachineState;
use uuid::Uuid;

use crate::context::{OpContext, Role};
use crate::error::{Error, Result};
use crate::state::App;
use crate::store::cluster::Cluster;
use crate::store::event::{self, NewEvent};
use crate::store::{job, machine, node_pool, operation};

/// Who the autoscaler's operations and events name as their author.
pub const SUBJECT: &str = "kubeforge:autoscaler";

/// The job lease (claim) a decision is written under.
pub type Fence = job::LeaseToken;

/// What a written decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The operation carrying it out.
    Done { operation: Uuid },
    /// The pool changed since the decision was simulated; nothing written.
    Stale(String),
}

fn context(c: &Cluster) -> OpContext {
    OpContext {
        tenant: c.tenant.clone(),
        subject: SUBJECT.into(),
        role: Role::Editor,
        request_id: format!("autoscaler-{}", Uuid::now_v7()),
    }
}

async fn fenced(conn: &mut sqlx::PgConnection, fence: Fence) -> Result<()> {
    if job::holds_lease(conn, fence).await? {
        Ok(())
    } else {
        Err(Error::Conflict(
            "this replica no longer holds the cluster's autoscaler lease".into(),
        ))
    }
}

/// A decision's transaction, open: the lease checked, the pool locked
/// and still autoscaling at size `from`.
struct Open {
    ctx: OpContext,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pool: node_pool::NodePool,
    bounds: kubeforge_cluster::Autoscaling,
}

async fn open(
    app: &App,
    fence: Fence,
    c: &Cluster,
    pool_id: Uuid,
    from: u32,
) -> Result<std::result::Result<Open, Written>> {
    let ctx = context(c);
    let mut tx = app.pool.begin().await?;
    fenced(&mut tx, fence).await?;
    let p = node_pool::get(&mut tx, &ctx, c.id, &pool_id.to_string(), true).await?;
    let stale = |why: String| Ok(Err(Written::Stale(why)));
    let Some(bounds) = p.autoscaling else {
        return stale(format!("pool {} no longer autoscales", p.name));
    };
    if p.deletion_requested_at.is_some() {
        return stale(format!("pool {} is being deleted", p.name));
    }
    if p.size != from {
        return stale(format!("pool {} is at {} now, not {from}", p.name, p.size));
    }
    Ok(Ok(Open {
        ctx,
        tx,
        pool: p,
        bounds,
    }))
}

impl Open {
    /// Writes the new size with its operation and event, queues the
    /// reconcile, and commits.
    async fn resize(
        mut self,
        app: &App,
        c: &Cluster,
        size: u32,
        reason: &'static str,
        message: &str,
    ) -> Result<Written> {
        let op = write_size(
            &mut self.tx,
            app,
            &self.ctx,
            c,
            &self.pool,
            size,
            reason,
            message,
        )
        .await?;
        self.tx.commit().await?;
        Ok(Written::Done { operation: op })
    }
}

/// The writes of a size change by an autoscaler (this one or an external
/// cluster-autoscaler through the gRPC provider), as `PATCH size` makes
/// them: the pool's new size and generation, an operation authored by
/// `ctx`, an event (`reason`, `message`) and the cluster's reconcile job.
/// The caller holds the pool's row lock in `tx` and commits.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_size(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    app: &App,
    ctx: &OpContext,
    c: &Cluster,
    p: &node_pool::NodePool,
    size: u32,
    reason: &'static str,
    message: &str,
) -> Result<Uuid> {
    let settings = node_pool::PoolSettings {
        size,
        ..p.settings()
    };
    let generation = node_pool::update_settings(tx, p.id, &settings).await?;
    let op = operation::insert(
        tx,
        ctx,
        c.id,
        Some(p.id),
        OperationKind::NodePoolUpdate,
        generation,
    )
    .await?;
    event::record(
        &mut **tx,
        NewEvent {
            tenant: &c.tenant,
            cluster_id: c.id,
            node_pool_id: Some(p.id),
            operation_id: Some(op),
            warning: false,
            reason,
            message,
        },
    )
    .await?;
    app.enqueue_reconcile(tx, c.id, c.provider.kind(), op)
        .await?;
    Ok(op)
}

/// Grows pool `pool_id` from `from` to `to` nodes (`reason` goes into the
/// event), as `PATCH size` would.
pub async fn grow(
    app: &App,
    fence: Fence,
    c: &Cluster,
    pool_id: Uuid,
    from: u32,
    to: u32,
    reason: &str,
) -> Result<Written> {
    let o = match open(app, fence, c, pool_id, from).await? {
        Ok(o) => o,
        Err(stale) => return Ok(stale),
    };
    if to <= from || to > o.bounds.max {
        return Ok(Written::Stale(format!(
            "pool {}: {to} is not above {from} within max {}",
            o.pool.name, o.bounds.max
        )));
    }
    let message = format!(
        "node pool {} scales up from {from} to {to}: {reason}",
        o.pool.name
    );
    o.resize(app, c, to, "ScaleUp", &message).await
}

/// Removes the node of machine `machine_id` from pool `pool_id` (from
/// `from` to `from - 1` nodes): drained through the pool's drain path,
/// that node and no other.
pub async fn remove(
    app: &App,
    fence: Fence,
    c: &Cluster,
    pool_id: Uuid,
    machine_id: Uuid,
    from: u32,
    reason: &str,
) -> Result<Written> {
    let mut o = match open(app, fence, c, pool_id, from).await? {
        Ok(o) => o,
        Err(stale) => return Ok(stale),
    };
    if from <= o.bounds.min {
        return Ok(Written::Stale(format!(
            "pool {} is at its min {}",
            o.pool.name, o.bounds.min
        )));
    }
    let machines = machine::list(&mut *o.tx, &o.ctx, c.id).await?;
    let Some(m) = machines
        .iter()
        .find(|m| m.id == machine_id && m.node_pool_id == Some(o.pool.id))
    else {
        return Ok(Written::Stale(format!("machine {machine_id} is gone")));
    };
    if m.state != MachineState::Running {
        return Ok(Written::Stale(format!(
            "node {} is {} already",
            m.name,
            m.state.as_str()
        )));
    }
    machine::start_drain(&mut *o.tx, m.id, &format!("autoscaler: {reason}")).await?;
    let message = format!(
        "node pool {} scales down from {from} to {}: node {} {reason}",
        o.pool.name,
        from - 1,
        m.name
    );
    o.resize(app, c, from - 1, "ScaleDown", &message).await
}
