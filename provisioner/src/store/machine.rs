//! The machine ledger: a row exists before any provider call, and its id is
//! the idempotency token the provider receives.

use chrono::{DateTime, Utc};
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

/// Moves a machine to `pending`, `deleting` or `failed`, noting why.
pub async fn set_state(
    db: impl PgExecutor<'_>,
    id: Uuid,
    state: &str,
    last_error: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE machines SET state = $2, last_error = $3, updated_at = now() WHERE id = $1",
        id,
        state,
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
