//! Tenants and their quotas. A tenant row appears on its first write, with
//! the service's default quota; a platform admin can change it.

use kubeforge_cluster::MachineType;
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
        "INSERT INTO tenants (id, max_clusters, max_nodes, max_cpus) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
        tenant,
        default.max_clusters,
        default.max_nodes,
        default.max_cpus
    )
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query!(
        "SELECT max_clusters, max_nodes, max_cpus FROM tenants WHERE id = $1 FOR UPDATE",
        tenant
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Quota {
        max_clusters: row.max_clusters,
        max_nodes: row.max_nodes,
        max_cpus: row.max_cpus,
    })
}

pub async fn get_quota(db: impl PgExecutor<'_>, tenant: &str) -> sqlx::Result<Option<Quota>> {
    let row = sqlx::query!(
        "SELECT max_clusters, max_nodes, max_cpus FROM tenants WHERE id = $1",
        tenant
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Quota {
        max_clusters: r.max_clusters,
        max_nodes: r.max_nodes,
        max_cpus: r.max_cpus,
    }))
}

pub async fn put_quota(db: impl PgExecutor<'_>, tenant: &str, quota: Quota) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO tenants (id, max_clusters, max_nodes, max_cpus) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET max_clusters = $2, max_nodes = $3, max_cpus = $4,
                                        updated_at = now()",
        tenant,
        quota.max_clusters,
        quota.max_nodes,
        quota.max_cpus
    )
    .execute(db)
    .await?;
    Ok(())
}

/// What a tenant uses, as its quota counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Live clusters.
    pub clusters: i64,
    /// Worker nodes: each live pool at its size or autoscaling max,
    /// whichever is larger.
    pub nodes: i64,
    /// vCPUs: those worker nodes weighted by their pool's machine type,
    /// plus every live cluster's control-plane members by theirs.
    pub cpus: i64,
}

/// vCPUs of `count` machines of the type named `name` (a stored name, so
/// one the catalogue knows).
fn weighted(name: &str, count: i64) -> anyhow::Result<i64> {
    let t = MachineType::parse(name).map_err(|e| anyhow::anyhow!("stored {e}"))?;
    Ok(count * i64::from(t.cpus()))
}

/// The tenant's [`Usage`], in one round trip (cluster creates hold the
/// tenant's row lock meanwhile). The vCPU weights live in the catalogue,
/// not the database, so the counts come back per machine type and are
/// weighted here.
pub async fn usage(conn: &mut PgConnection, tenant: &str) -> crate::error::Result<Usage> {
    let rows = sqlx::query!(
        r#"SELECT 'cluster' AS "kind!", '' AS "machine_type!", count(*)::BIGINT AS "n!"
             FROM clusters WHERE tenant = $1 AND deleted_at IS NULL
           UNION ALL
           SELECT 'pool', machine_type,
                  COALESCE(sum(GREATEST(size, COALESCE(autoscaling_max, 0))), 0)::BIGINT
             FROM node_pools WHERE tenant = $1 AND deleted_at IS NULL
            GROUP BY machine_type
           UNION ALL
           SELECT 'control_plane', control_plane->>'machine_type',
                  COALESCE(sum((control_plane->>'replicas')::INT), 0)::BIGINT
             FROM clusters WHERE tenant = $1 AND deleted_at IS NULL
            GROUP BY 2"#,
        tenant
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut usage = Usage {
        clusters: 0,
        nodes: 0,
        cpus: 0,
    };
    for r in rows {
        match r.kind.as_str() {
            "cluster" => usage.clusters = r.n,
            "pool" => {
                usage.nodes += r.n;
                usage.cpus += weighted(&r.machine_type, r.n)?;
            }
            _ => usage.cpus += weighted(&r.machine_type, r.n)?,
        }
    }
    Ok(usage)
}

/// What the tenant's pools ask for now (their sizes, not their
/// autoscaling maxima) and its quota: what an autoscaler decision may
/// still add. (Admission counts each pool at its max, so this only bites
/// when a platform admin lowered the quota since.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InUseNow {
    /// Worker nodes, at the pools' sizes.
    pub nodes: i64,
    /// Those nodes weighted by their pool's machine type vCPUs, plus the
    /// control planes' members by theirs.
    pub cpus: i64,
    /// None: the tenant has no row (it never wrote), so no quota yet.
    pub max_nodes: Option<i32>,
    pub max_cpus: Option<i32>,
}

/// The tenant's [`InUseNow`], in one round trip.
pub async fn in_use_now(db: impl PgExecutor<'_>, tenant: &str) -> crate::error::Result<InUseNow> {
    let rows = sqlx::query!(
        r#"SELECT 'pool' AS "kind!", machine_type AS "machine_type!",
                  COALESCE(sum(size), 0)::BIGINT AS "n!"
             FROM node_pools WHERE tenant = $1 AND deleted_at IS NULL
            GROUP BY machine_type
           UNION ALL
           SELECT 'control_plane', control_plane->>'machine_type',
                  COALESCE(sum((control_plane->>'replicas')::INT), 0)::BIGINT
             FROM clusters WHERE tenant = $1 AND deleted_at IS NULL
            GROUP BY 2
           UNION ALL
           SELECT 'max_nodes', '', max_nodes::BIGINT FROM tenants WHERE id = $1
           UNION ALL
           SELECT 'max_cpus', '', max_cpus::BIGINT FROM tenants WHERE id = $1"#,
        tenant
    )
    .fetch_all(db)
    .await?;
    let mut now = InUseNow::default();
    let limit = |n: i64| Some(i32::try_from(n).unwrap_or(i32::MAX));
    for r in rows {
        match r.kind.as_str() {
            "pool" => {
                now.nodes += r.n;
                now.cpus += weighted(&r.machine_type, r.n)?;
            }
            "control_plane" => now.cpus += weighted(&r.machine_type, r.n)?,
            "max_nodes" => now.max_nodes = limit(r.n),
            _ => now.max_cpus = limit(r.n),
        }
    }
    Ok(now)
}
