//! What the autoscaler of a cluster last saw and decided: one
//! `autoscaler_status` row per cluster, its `snapshot` an
//! [`AutoscalerSnapshot`] as JSON. The replica that watches a cluster
//! writes it ([`put_snapshot`]); `GET /v1/clusters/{c}/autoscaler` reads
//! it ([`get_snapshot`]) after finding the cluster in the caller's tenant,
//! so these functions take a cluster id already scoped by the caller.

use anyhow::Context as _;
use kubeforge_cluster::api::{AutoscalerSnapshot, DECISIONS_KEPT, PENDING_SHOWN};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The cluster's last snapshot; None before the autoscaler has written one.
/// A snapshot that does not parse is an internal error.
pub async fn get_snapshot(
    db: impl PgExecutor<'_>,
    cluster_id: Uuid,
) -> Result<Option<AutoscalerSnapshot>> {
    let row = sqlx::query_scalar!(
        "SELECT snapshot FROM autoscaler_status WHERE cluster_id = $1",
        cluster_id
    )
    .fetch_optional(db)
    .await?;
    row.map(|v| {
        serde_json::from_value(v)
            .with_context(|| format!("decoding the autoscaler snapshot of cluster {cluster_id}"))
            .map_err(Error::Internal)
    })
    .transpose()
}

/// Writes (or replaces) the cluster's snapshot, cut to what the status
/// shows: at most [`PENDING_SHOWN`] pending pods and [`DECISIONS_KEPT`]
/// decisions per pool.
pub async fn put_snapshot(
    db: impl PgExecutor<'_>,
    cluster_id: Uuid,
    snapshot: &AutoscalerSnapshot,
) -> Result<()> {
    let mut kept = snapshot.clone();
    kept.pending.truncate(PENDING_SHOWN);
    for decisions in kept.decisions.values_mut() {
        decisions.truncate(DECISIONS_KEPT);
    }
    let value = serde_json::to_value(&kept)
        .context("encoding the autoscaler snapshot")
        .map_err(Error::Internal)?;
    sqlx::query!(
        "INSERT INTO autoscaler_status (cluster_id, snapshot) VALUES ($1, $2)
         ON CONFLICT (cluster_id) DO UPDATE SET snapshot = EXCLUDED.snapshot, updated_at = now()",
        cluster_id,
        value
    )
    .execute(db)
    .await?;
    Ok(())
}
