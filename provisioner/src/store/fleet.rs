//! Service-wide reads for the fleet gauges of `/metrics` (see
//! `crate::metrics::Fleet`): live clusters by phase, each live pool's
//! desired and Ready nodes, and each live cluster's certificate expiries.
//! Not tenant-scoped: only the metrics handler calls these, and what it
//! renders is labelled by ids.

use serde_json::Value as JsonValue;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::Result;

/// Live clusters by phase.
pub async fn clusters_by_phase(db: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT phase, count(*) AS "n!" FROM clusters
           WHERE deleted_at IS NULL GROUP BY phase"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.phase, r.n)).collect())
}

/// One live node pool's desired size and its running workers whose node
/// the engine last saw Ready.
#[derive(Debug, Clone)]
pub struct PoolNodes {
    pub cluster_id: Uuid,
    pub pool_id: Uuid,
    pub desired: i64,
    pub ready: i64,
}

pub async fn pool_nodes(db: impl PgExecutor<'_>) -> Result<Vec<PoolNodes>> {
    let rows = sqlx::query!(
        r#"SELECT p.cluster_id, p.id AS pool_id, p.size::int8 AS "desired!",
                  count(m.id) FILTER (WHERE m.state = 'running' AND m.node_state = 'ready')
                      AS "ready!"
           FROM node_pools p
           JOIN clusters c ON c.id = p.cluster_id AND c.deleted_at IS NULL
           LEFT JOIN machines m ON m.node_pool_id = p.id AND m.deleted_at IS NULL
                                AND m.role = 'worker'
           WHERE p.deleted_at IS NULL
           GROUP BY p.cluster_id, p.id, p.size"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PoolNodes {
            cluster_id: r.cluster_id,
            pool_id: r.pool_id,
            desired: r.desired,
            ready: r.ready,
        })
        .collect())
}

/// Each live cluster's `certificates` (expiry dates by certificate, as the
/// API shows them; `{}` until the engine has read its PKI).
pub async fn certificates(db: impl PgExecutor<'_>) -> Result<Vec<(Uuid, JsonValue)>> {
    let rows =
        sqlx::query!("SELECT id, certificates FROM clusters WHERE deleted_at IS NULL ORDER BY id")
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.certificates)).collect())
}
