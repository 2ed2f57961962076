//! Tenants and their quotas. A tenant row appears on its first write, with
//! the service's default quota; a platform admin can change it.

use sqlx::{PgConnection, PgExecutor};

pub use kubeforge_cluster::api::Quota;

/// Makes sure the tenant exists and locks its row for the rest of the
/// transaction, so concurrent creates check the quota one at a time.
pub async fn ensure_locked(
    conn: &mut PgConnection,
    tenant: &str,
    default: Quota,
) -> sqlx::Result<Quota> {
    sqlx::query!(
        "INSERT INTO tenants (id, max_clusters, max_nodes) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING",
        tenant,
        default.max_clusters,
        default.max_nodes
    )
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query!(
        "SELECT max_clusters, max_nodes FROM tenants WHERE id = $1 FOR UPDATE",
        tenant
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Quota {
        max_clusters: row.max_clusters,
        max_nodes: row.max_nodes,
    })
}

pub async fn get_quota(db: impl PgExecutor<'_>, tenant: &str) -> sqlx::Result<Option<Quota>> {
    let row = sqlx::query!(
        "SELECT max_clusters, max_nodes FROM tenants WHERE id = $1",
        tenant
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Quota {
        max_clusters: r.max_clusters,
        max_nodes: r.max_nodes,
    }))
}

pub async fn put_quota(db: impl PgExecutor<'_>, tenant: &str, quota: Quota) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO tenants (id, max_clusters, max_nodes) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET max_clusters = $2, max_nodes = $3, updated_at = now()",
        tenant,
        quota.max_clusters,
        quota.max_nodes
    )
    .execute(db)
    .await?;
    Ok(())
}

/// (live clusters, worker nodes counted against the quota)
pub async fn usage(conn: &mut PgConnection, tenant: &str) -> sqlx::Result<(i64, i64)> {
    let clusters = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM clusters WHERE tenant = $1 AND deleted_at IS NULL"#,
        tenant
    )
    .fetch_one(&mut *conn)
    .await?;
    let nodes = sqlx::query_scalar!(
        r#"SELECT COALESCE(sum(GREATEST(size, COALESCE(autoscaling_max, 0))), 0)::BIGINT AS "n!"
           FROM node_pools WHERE tenant = $1 AND deleted_at IS NULL"#,
        tenant
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((clusters, nodes))
}

/// Worker nodes the tenant's pools ask for now (their sizes, not their
/// autoscaling maxima), and its node quota: what an autoscaler decision
/// may still add. (Admission counts each pool at its max, so this only
/// bites when a platform admin lowered the quota since.)
pub async fn nodes_now(db: impl PgExecutor<'_>, tenant: &str) -> sqlx::Result<(i64, Option<i32>)> {
    let r = sqlx::query!(
        r#"SELECT COALESCE((SELECT sum(size) FROM node_pools
                            WHERE tenant = $1 AND deleted_at IS NULL), 0)::BIGINT AS "in_use!",
                  (SELECT max_nodes FROM tenants WHERE id = $1) AS max_nodes"#,
        tenant
    )
    .fetch_one(db)
    .await?;
    Ok((r.in_use, r.max_nodes))
}
