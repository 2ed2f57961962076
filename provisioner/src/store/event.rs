//! Cluster events: what happened and why, newest first.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::context::OpContext;
use crate::error::Result;

/// An `events` row; the API shows it as a `kubeforge_cluster::api::EventView`.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub tenant: String,
    pub cluster_id: Uuid,
    pub node_pool_id: Option<Uuid>,
    pub operation_id: Option<Uuid>,
    /// Normal or Warning.
    pub r#type: String,
    pub reason: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

/// What to record.
pub struct NewEvent<'a> {
    pub tenant: &'a str,
    pub cluster_id: Uuid,
    pub node_pool_id: Option<Uuid>,
    pub operation_id: Option<Uuid>,
    pub warning: bool,
    pub reason: &'a str,
    pub message: &'a str,
}

pub async fn record(db: impl PgExecutor<'_>, e: NewEvent<'_>) -> Result<()> {
    sqlx::query!(
        "INSERT INTO events (tenant, cluster_id, node_pool_id, operation_id, type, reason, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        e.tenant,
        e.cluster_id,
        e.node_pool_id,
        e.operation_id,
        if e.warning { "Warning" } else { "Normal" },
        e.reason,
        e.message
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A cluster's events, newest first, older than `before` when paging.
pub async fn list(
    db: impl PgExecutor<'_>,
    ctx: &OpContext,
    cluster_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Event>> {
    Ok(sqlx::query_as!(
        Event,
        "SELECT id, tenant, cluster_id, node_pool_id, operation_id, type, reason, message, created_at
         FROM events WHERE tenant = $1 AND cluster_id = $2 AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
        ctx.tenant,
        cluster_id,
        before,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// How many events of a cluster with this `reason` were recorded at or
/// after `since`, only the pool's when `node_pool_id` is given: what
/// rate limits (repairs per pool and per cluster) count.
pub async fn count_since(
    db: impl PgExecutor<'_>,
    cluster_id: Uuid,
    node_pool_id: Option<Uuid>,
    reason: &str,
    since: DateTime<Utc>,
) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM events
           WHERE cluster_id = $1 AND ($2::uuid IS NULL OR node_pool_id = $2)
             AND reason = $3 AND created_at >= $4"#,
        cluster_id,
        node_pool_id,
        reason,
        since
    )
    .fetch_one(db)
    .await?)
}
