//! Cluster rows. Tenant-facing reads are scoped by the caller's tenant;
//! the `*_any` functions are for the reconciler, which acts for whichever
//! tenant owns the row.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use kubeforge_cluster::{
    AutoscalerSettings, ClusterName, ClusterNetwork, Condition, ControlPlaneSpec,
    KubernetesVersion, Labels, Phase, ProviderSpec,
};
use serde_json::Value as JsonValue;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::context::OpContext;
use crate::error::{Error, Result};

/// A clusters row as Postgres holds it.
#[derive(Debug, Clone)]
pub struct ClusterRecord {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub kubernetes_version: String,
    pub provider: JsonValue,
    pub control_plane: JsonValue,
    pub network: JsonValue,
    pub labels: JsonValue,
    pub deletion_protection: bool,
    pub phase: String,
    pub conditions: JsonValue,
    pub endpoint: Option<String>,
    pub certificates: JsonValue,
    pub generation: i64,
    pub observed_generation: i64,
    pub resource_version: i64,
    pub deletion_requested_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub autoscaler: JsonValue,
    /// Read and written through `store::credentials` only.
    pub credential_generation: i64,
    pub credential_generation_applied: i64,
}

/// A cluster, its JSON columns parsed.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: Uuid,
    pub tenant: String,
    pub name: ClusterName,
    pub kubernetes_version: KubernetesVersion,
    pub provider: ProviderSpec,
    pub control_plane: ControlPlaneSpec,
    pub network: ClusterNetwork,
    pub labels: Labels,
    pub deletion_protection: bool,
    /// Stored `{}` and missing fields read as the defaults.
    pub autoscaler: AutoscalerSettings,
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub endpoint: Option<String>,
    pub certificates: JsonValue,
    pub generation: i64,
    pub observed_generation: i64,
    pub resource_version: i64,
    pub deletion_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Cluster {
    /// Whether the builtin autoscaler should watch the cluster: its mode
    /// is `builtin`, it is not being deleted, and at least one live pool
    /// autoscales.
    pub fn wants_autoscaler(&self, pools: &[super::node_pool::NodePool]) -> bool {
        self.autoscaler.mode == kubeforge_cluster::spec::AutoscalerMode::Builtin
            && self.deletion_requested_at.is_none()
            && pools
                .iter()
                .any(|p| p.autoscaling.is_some() && p.deletion_requested_at.is_none())
    }

    /// The entity tag clients send back in `If-Match`.
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.id.simple(), self.resource_version)
    }
}

impl TryFrom<ClusterRecord> for Cluster {
    type Error = Error;
    fn try_from(r: ClusterRecord) -> Result<Self> {
        let parse = || -> anyhow::Result<Cluster> {
            Ok(Cluster {
                id: r.id,
                provider: serde_json::from_value(r.provider).context("provider")?,
                control_plane: serde_json::from_value(r.control_plane).context("control_plane")?,
                network: serde_json::from_value(r.network).context("network")?,
                labels: serde_json::from_value(r.labels).context("labels")?,
                autoscaler: parse_autoscaler(r.autoscaler).context("autoscaler")?,
                phase: Phase::parse(&r.phase).context("phase")?,
                conditions: serde_json::from_value(r.conditions).context("conditions")?,
                tenant: r.tenant,
                name: ClusterName::parse(&r.name).map_err(anyhow::Error::msg)?,
                kubernetes_version: KubernetesVersion::parse(&r.kubernetes_version)
                    .map_err(anyhow::Error::msg)?,
                deletion_protection: r.deletion_protection,
                endpoint: r.endpoint,
                certificates: r.certificates,
                generation: r.generation,
                observed_generation: r.observed_generation,
                resource_version: r.resource_version,
                deletion_requested_at: r.deletion_requested_at,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        };
        parse()
            .with_context(|| format!("decoding cluster {}", r.id))
            .map_err(Error::Internal)
    }
}

/// The stored settings: missing fields take their defaults; a value out of
/// bounds is an error, not something to guess a meaning for.
fn parse_autoscaler(v: JsonValue) -> anyhow::Result<AutoscalerSettings> {
    let s: AutoscalerSettings = serde_json::from_value(v)?;
    s.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(s)
}

/// Values for a new cluster row.
pub struct NewCluster<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub kubernetes_version: &'a str,
    pub provider: &'a ProviderSpec,
    pub control_plane: &'a ControlPlaneSpec,
    pub network: &'a ClusterNetwork,
    pub labels: &'a Labels,
    pub deletion_protection: bool,
    pub autoscaler: &'a AutoscalerSettings,
}

fn json<T: serde::Serialize>(v: &T) -> Result<JsonValue> {
    serde_json::to_value(v)
        .context("encoding JSON column")
        .map_err(Error::Internal)
}

/// Inserts a cluster; a live cluster of the same name is a `Conflict`.
pub async fn insert(conn: &mut PgConnection, ctx: &OpContext, c: NewCluster<'_>) -> Result<()> {
    let res = sqlx::query!(
        "INSERT INTO clusters (id, tenant, name, kubernetes_version, provider, control_plane,
                               network, labels, deletion_protection, autoscaler, phase)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'provisioning')",
        c.id,
        ctx.tenant,
        c.name,
        c.kubernetes_version,
        json(c.provider)?,
        json(c.control_plane)?,
        json(c.network)?,
        json(c.labels)?,
        c.deletion_protection,
        json(c.autoscaler)?,
    )
    .execute(conn)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if super::is_unique_violation(&e) => Err(Error::Conflict(format!(
            "a cluster named {:?} already exists",
            c.name
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Finds a live cluster of the caller's tenant by id or by name.
pub async fn get(db: impl PgExecutor<'_>, ctx: &OpContext, id_or_name: &str) -> Result<Cluster> {
    let id = Uuid::parse_str(id_or_name).ok();
    let rec = sqlx::query_as!(
        ClusterRecord,
        "SELECT * FROM clusters
         WHERE tenant = $1 AND deleted_at IS NULL AND (id = $2 OR ($2 IS NULL AND name = $3))",
        ctx.tenant,
        id,
        id_or_name
    )
    .fetch_optional(db)
    .await?;
    rec.ok_or_else(|| Error::not_found("cluster", id_or_name))?
        .try_into()
}

/// Like [`get`], locking the row for the transaction.
pub async fn get_for_update(
    conn: &mut PgConnection,
    ctx: &OpContext,
    id_or_name: &str,
) -> Result<Cluster> {
    let id = Uuid::parse_str(id_or_name).ok();
    let rec = sqlx::query_as!(
        ClusterRecord,
        "SELECT * FROM clusters
         WHERE tenant = $1 AND deleted_at IS NULL AND (id = $2 OR ($2 IS NULL AND name = $3))
         FOR UPDATE",
        ctx.tenant,
        id,
        id_or_name
    )
    .fetch_optional(conn)
    .await?;
    rec.ok_or_else(|| Error::not_found("cluster", id_or_name))?
        .try_into()
}

/// Filters for listing.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub phase: Option<Phase>,
    /// `key` (present) or `key=value`.
    pub label_key: Option<String>,
    pub label_value: Option<String>,
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// Lists live clusters of the caller's tenant, oldest first (ids are UUIDv7).
pub async fn list(
    db: impl PgExecutor<'_>,
    ctx: &OpContext,
    f: &ListFilter,
) -> Result<Vec<Cluster>> {
    let label_match = match (&f.label_key, &f.label_value) {
        (Some(k), Some(v)) => Some(serde_json::json!({ k: v })),
        _ => None,
    };
    let label_present = match (&f.label_key, &f.label_value) {
        (Some(k), None) => Some(k.clone()),
        _ => None,
    };
    let recs = sqlx::query_as!(
        ClusterRecord,
        "SELECT * FROM clusters
         WHERE tenant = $1 AND deleted_at IS NULL
           AND ($2::text IS NULL OR phase = $2)
           AND ($3::jsonb IS NULL OR labels @> $3)
           AND ($4::text IS NULL OR labels ? $4)
           AND ($5::uuid IS NULL OR id > $5)
         ORDER BY id LIMIT $6",
        ctx.tenant,
        f.phase.map(Phase::as_str),
        label_match,
        label_present,
        f.after,
        f.limit,
    )
    .fetch_all(db)
    .await?;
    recs.into_iter().map(Cluster::try_from).collect()
}

/// Applies a tenant's change to labels, deletion protection and autoscaler
/// settings, bumping generation and resource version.
pub async fn update_spec(
    conn: &mut PgConnection,
    id: Uuid,
    labels: &Labels,
    deletion_protection: bool,
    autoscaler: &AutoscalerSettings,
) -> Result<()> {
    sqlx::query!(
        "UPDATE clusters SET labels = $2, deletion_protection = $3, autoscaler = $4,
                generation = generation + 1, resource_version = resource_version + 1,
                updated_at = now()
         WHERE id = $1",
        id,
        json(labels)?,
        deletion_protection,
        json(autoscaler)?
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the cluster for deletion (the reconciler does the rest).
pub async fn request_deletion(conn: &mut PgConnection, id: Uuid) -> Result<i64> {
    let g = sqlx::query_scalar!(
        "UPDATE clusters SET deletion_requested_at = COALESCE(deletion_requested_at, now()),
                phase = 'deleting', generation = generation + 1,
                resource_version = resource_version + 1, updated_at = now()
         WHERE id = $1 RETURNING generation",
        id
    )
    .fetch_one(conn)
    .await?;
    Ok(g)
}

/// A cluster's tenant and name, deleted or not: who a job works for, for
/// its log lines.
pub async fn identity(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<(String, String)>> {
    let row = sqlx::query!("SELECT tenant, name FROM clusters WHERE id = $1", id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| (r.tenant, r.name)))
}

/// Reads any live cluster, for the reconciler.
pub async fn get_any(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Cluster>> {
    let rec = sqlx::query_as!(
        ClusterRecord,
        "SELECT * FROM clusters WHERE id = $1 AND deleted_at IS NULL",
        id
    )
    .fetch_optional(db)
    .await?;
    rec.map(Cluster::try_from).transpose()
}

/// Writes observed status; bumps resource_version only if something changed.
pub async fn write_status(
    db: impl PgExecutor<'_>,
    id: Uuid,
    phase: Phase,
    conditions: &[Condition],
    observed_generation: i64,
) -> Result<()> {
    let conditions = json(&conditions)?;
    sqlx::query!(
        "UPDATE clusters SET phase = $2, conditions = $3, observed_generation = $4,
                resource_version = resource_version + 1, updated_at = now()
         WHERE id = $1 AND (phase <> $2 OR conditions <> $3 OR observed_generation <> $4)",
        id,
        phase.as_str(),
        conditions,
        observed_generation
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records where the cluster is served and its certificates' expiry.
pub async fn write_endpoint(
    db: impl PgExecutor<'_>,
    id: Uuid,
    endpoint: Option<&str>,
    certificates: &JsonValue,
) -> Result<()> {
    sqlx::query!(
        "UPDATE clusters SET endpoint = COALESCE($2, endpoint), certificates = $3,
                resource_version = resource_version + 1, updated_at = now()
         WHERE id = $1 AND (endpoint IS DISTINCT FROM COALESCE($2, endpoint) OR certificates <> $3)",
        id,
        endpoint,
        certificates
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Finishes deletion: the row stays for history but is no longer live.
pub async fn mark_deleted(db: impl PgExecutor<'_>, id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE clusters SET deleted_at = now(), resource_version = resource_version + 1,
                updated_at = now()
         WHERE id = $1",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}
