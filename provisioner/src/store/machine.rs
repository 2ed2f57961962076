//! The machine ledger: a row exists before any provider call, and its id is
//! the idempotency token the provider receives.

use chrono::{DateTime, Utc};
use kubeforge_cluster::pools::{MachineRole, MachineState};
use kubeforge_cluster::MachineType;
use serde_json::Value as JsonValue;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::context::OpContext;
use crate::error::Result;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub id: Uuid,
    pub tenant: String,
    pub cluster_id: Uuid,
    pub node_pool_id: Option<Uuid>,
    pub role: String,
    pub name: String,
    pub provider: String,
    pub machine_type: String,
    pub state: String,
    pub provider_id: Option<String>,
    pub address: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Pinned SSH host key (`TYPE BASE64`).
    pub host_key: Option<String>,
    /// What the engine last saw of this machine's Node in the tenant
    /// cluster (`joining`, `ready`, `not_ready`, `draining`, `missing`);
    /// None until it has looked.
    pub node_state: Option<String>,
    /// Since when the node has been unhealthy, without interruption: the
    /// clock auto-repair compares with the pool's threshold.
    pub unhealthy_since: Option<DateTime<Utc>>,
    pub unhealthy_reason: Option<String>,
    /// When the drain of a machine being removed began: the clock the
    /// pool's drain timeout runs on.
    pub drain_started_at: Option<DateTime<Utc>>,
    /// When the node first registered.
    pub joined_at: Option<DateTime<Utc>>,
    /// A control-plane member: what the engine last saw of its systemd
    /// units and the component restarts it counted recently
    /// (`kubeforge_cluster::restarts::MemberRestarts`); None until the
    /// first look.
    pub component_restarts: Option<JsonValue>,
}

impl Machine {
    /// Its state, typed. The ledger's CHECK constraint admits only the
    /// spellings [`MachineState`] knows.
    pub fn state(&self) -> MachineState {
        MachineState::parse(&self.state).unwrap_or_else(|| {
            tracing::error!(machine = %self.id, state = %self.state, "unknown machine state in the ledger");
            MachineState::Failed
        })
    }

    /// Its machine type, typed; the API admits only known types, so an
    /// unknown one in the ledger is an error.
    pub fn machine_type(&self) -> Result<MachineType> {
        MachineType::parse(&self.machine_type).map_err(Into::into)
    }

    /// Its role, typed (see [`Machine::state`]).
    pub fn role(&self) -> MachineRole {
        MachineRole::parse(&self.role).unwrap_or_else(|| {
            tracing::error!(machine = %self.id, role = %self.role, "unknown machine role in the ledger");
            MachineRole::Worker
        })
    }
}

/// Values for a new ledger row.
pub struct NewMachine<'a> {
    pub id: Uuid,
    pub tenant: &'a str,
    pub cluster_id: Uuid,
    pub node_pool_id: Option<Uuid>,
    pub role: &'a str,
    pub name: &'a str,
    pub provider: &'a str,
    pub machine_type: &'a str,
}

/// Records intent: committed before the provider is asked for the machine.
pub async fn insert_pending(db: impl PgExecutor<'_>, m: NewMachine<'_>) -> Result<()> {
    sqlx::query!(
        "INSERT INTO machines (id, tenant, cluster_id, node_pool_id, role, name, provider,
                               machine_type, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending')",
        m.id,
        m.tenant,
        m.cluster_id,
        m.node_pool_id,
        m.role,
        m.name,
        m.provider,
        m.machine_type
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Tenant-facing list of a cluster's machines that are not yet deleted.
pub async fn list(
    db: impl PgExecutor<'_>,
    ctx: &OpContext,
    cluster_id: Uuid,
) -> Result<Vec<Machine>> {
    Ok(sqlx::query_as!(
        Machine,
        "SELECT * FROM machines WHERE tenant = $1 AND cluster_id = $2 AND deleted_at IS NULL
         ORDER BY created_at, id",
        ctx.tenant,
        cluster_id
    )
    .fetch_all(db)
    .await?)
}

/// Every ledger row of a cluster not yet deleted, for the reconciler.
pub async fn list_any(db: impl PgExecutor<'_>, cluster_id: Uuid) -> Result<Vec<Machine>> {
    Ok(sqlx::query_as!(
        Machine,
        "SELECT * FROM machines WHERE cluster_id = $1 AND deleted_at IS NULL
         ORDER BY created_at, id",
        cluster_id
    )
    .fetch_all(db)
    .await?)
}

pub async fn set_running(
    db: impl PgExecutor<'_>,
    id: Uuid,
    provider_id: &str,
    address: Option<&str>,
    host_key: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = 'running', provider_id = $2, address = $3, last_error = NULL,
                host_key = COALESCE(host_key, $4), updated_at = now()
         WHERE id = $1",
        id,
        provider_id,
        address,
        host_key
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The provider accepted the machine (as `provider_id`); it is on its way up.
pub async fn set_provisioning(db: impl PgExecutor<'_>, id: Uuid, provider_id: &str) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = 'provisioning', provider_id = $2, last_error = NULL,
                updated_at = now()
         WHERE id = $1",
        id,
        provider_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Moves a machine to `pending`, `deleting` or `failed`, noting why. (A
/// worker being removed goes through [`start_drain`] instead.)
pub async fn set_state(
    db: impl PgExecutor<'_>,
    id: Uuid,
    state: MachineState,
    last_error: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = $2, last_error = $3, updated_at = now() WHERE id = $1",
        id,
        state.as_str(),
        last_error
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The provider confirmed the machine is gone.
pub async fn mark_deleted(db: impl PgExecutor<'_>, id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records what the engine observed of the machine's node. `unhealthy`
/// names why the node is unhealthy: the first such observation starts the
/// clock (`unhealthy_since`), later ones keep it running and update the
/// reason; `None` (healthy) stops and clears it.
pub async fn observe_node(
    db: impl PgExecutor<'_>,
    id: Uuid,
    node_state: Option<&str>,
    unhealthy: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET node_state = $2,
                unhealthy_since = CASE WHEN $3::text IS NULL THEN NULL
                                       ELSE COALESCE(unhealthy_since, now()) END,
                unhealthy_reason = $3
         WHERE id = $1",
        id,
        node_state,
        unhealthy
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The machine's node registered with the tenant cluster; the first time counts.
pub async fn mark_joined(db: impl PgExecutor<'_>, id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET joined_at = COALESCE(joined_at, now()) WHERE id = $1",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Starts removing a worker: `draining` until its pods are evicted (or the
/// pool's drain timeout, counted from the first call, runs out), then
/// `deleting`. `reason` says why it is being removed and is kept in
/// `last_error`.
pub async fn start_drain(db: impl PgExecutor<'_>, id: Uuid, reason: &str) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = 'draining',
                drain_started_at = COALESCE(drain_started_at, now()),
                last_error = $2, updated_at = now()
         WHERE id = $1",
        id,
        reason
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records what the engine observed of a control-plane member's units and
/// the restarts it counted (see `kubeforge_cluster::restarts`).
pub async fn set_component_restarts(
    db: impl PgExecutor<'_>,
    id: Uuid,
    restarts: &JsonValue,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET component_restarts = $2 WHERE id = $1",
        id,
        restarts
    )
    .execute(db)
    .await?;
    Ok(())
}
