//! Node pool rows, always reached through their cluster (already
//! tenant-checked by the caller) and scoped by tenant again in SQL.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use kubeforge_cluster::api::NodePoolSummary;
use kubeforge_cluster::{
    AutoRepair, Autoscaling, Condition, Labels, MachineType, NodePoolName, NodePoolSpec, Phase,
    Taint,
};
use serde_json::Value as JsonValue;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::context::OpContext;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct NodePoolRecord {
    pub id: Uuid,
    pub tenant: String,
    pub cluster_id: Uuid,
    pub name: String,
    pub machine_type: String,
    pub size: i32,
    pub autoscaling_min: Option<i32>,
    pub autoscaling_max: Option<i32>,
    pub labels: JsonValue,
    pub taints: JsonValue,
    pub phase: String,
    pub conditions: JsonValue,
    pub generation: i64,
    pub observed_generation: i64,
    pub resource_version: i64,
    pub deletion_requested_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub drain_timeout_seconds: i32,
    pub auto_repair: bool,
    pub repair_after_seconds: i32,
    pub autoscaling_priority: i32,
    pub host_selector: JsonValue,
    pub alternative_machine_types: Vec<String>,
}

/// A node pool, parsed.
#[derive(Debug, Clone)]
pub struct NodePool {
    pub id: Uuid,
    pub tenant: String,
    pub cluster_id: Uuid,
    pub name: NodePoolName,
    pub machine_type: MachineType,
    /// Launched instead of `machine_type`, in order, when the provider has
    /// no capacity for it.
    pub alternative_machine_types: Vec<MachineType>,
    pub size: u32,
    pub autoscaling: Option<Autoscaling>,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    /// Seconds a node's drain may take before it is removed anyway.
    pub drain_timeout_seconds: u32,
    pub auto_repair: AutoRepair,
    /// Labels a registered host must carry to serve the pool (`ssh`).
    pub host_selector: Labels,
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub generation: i64,
    pub observed_generation: i64,
    pub resource_version: i64,
    pub deletion_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl NodePool {
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.id.simple(), self.resource_version)
    }
}

impl TryFrom<NodePoolRecord> for NodePool {
    type Error = Error;
    fn try_from(r: NodePoolRecord) -> Result<Self> {
        let parse = || -> anyhow::Result<NodePool> {
            let autoscaling = match (r.autoscaling_min, r.autoscaling_max) {
                (Some(min), Some(max)) => Some(Autoscaling {
                    min: u32::try_from(min)?,
                    max: u32::try_from(max)?,
                    priority: r.autoscaling_priority,
                }),
                _ => None,
            };
            Ok(NodePool {
                id: r.id,
                machine_type: MachineType::parse(&r.machine_type).map_err(anyhow::Error::msg)?,
                alternative_machine_types: r
                    .alternative_machine_types
                    .iter()
                    .map(|t| MachineType::parse(t))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(anyhow::Error::msg)?,
                size: u32::try_from(r.size)?,
                autoscaling,
                labels: serde_json::from_value(r.labels).context("labels")?,
                taints: serde_json::from_value(r.taints).context("taints")?,
                drain_timeout_seconds: u32::try_from(r.drain_timeout_seconds)
                    .context("drain_timeout_seconds")?,
                auto_repair: AutoRepair {
                    enabled: r.auto_repair,
                    after_seconds: u32::try_from(r.repair_after_seconds)
                        .context("repair_after_seconds")?,
                },
                host_selector: serde_json::from_value(r.host_selector).context("host_selector")?,
                phase: Phase::parse(&r.phase).context("phase")?,
                conditions: serde_json::from_value(r.conditions).context("conditions")?,
                tenant: r.tenant,
                cluster_id: r.cluster_id,
                name: NodePoolName::parse(&r.name).map_err(anyhow::Error::msg)?,
                generation: r.generation,
                observed_generation: r.observed_generation,
                resource_version: r.resource_version,
                deletion_requested_at: r.deletion_requested_at,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        };
        parse()
            .with_context(|| format!("decoding node pool {}", r.id))
            .map_err(Error::Internal)
    }
}

fn names(types: &[MachineType]) -> Vec<String> {
    types.iter().map(|t| t.as_str().to_string()).collect()
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Inserts a pool; a live pool of the same name in the cluster is a `Conflict`.
pub async fn insert(
    conn: &mut PgConnection,
    ctx: &OpContext,
    cluster_id: Uuid,
    id: Uuid,
    spec: &NodePoolSpec,
) -> Result<()> {
    let labels = serde_json::to_value(&spec.labels).map_err(anyhow::Error::from)?;
    let taints = serde_json::to_value(&spec.taints).map_err(anyhow::Error::from)?;
    let host_selector = serde_json::to_value(&spec.host_selector).map_err(anyhow::Error::from)?;
    let res = sqlx::query!(
        "INSERT INTO node_pools (id, tenant, cluster_id, name, machine_type, size,
                                 autoscaling_min, autoscaling_max, autoscaling_priority, labels,
                                 taints, drain_timeout_seconds, auto_repair, repair_after_seconds,
                                 host_selector, alternative_machine_types, phase)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 'provisioning')",
        id,
        ctx.tenant,
        cluster_id,
        spec.name.as_str(),
        spec.machine_type.as_str(),
        to_i32(spec.size),
        spec.autoscaling.map(|a| to_i32(a.min)),
        spec.autoscaling.map(|a| to_i32(a.max)),
        spec.autoscaling.map_or(0, |a| a.priority),
        labels,
        taints,
        to_i32(spec.drain_timeout_seconds),
        spec.auto_repair.enabled,
        to_i32(spec.auto_repair.after_seconds),
        host_selector,
        &names(&spec.alternative_machine_types),
    )
    .execute(conn)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if super::is_unique_violation(&e) => Err(Error::Conflict(format!(
            "a node pool named {:?} already exists in this cluster",
            spec.name.as_str()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Live pools of a cluster, oldest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    ctx: &OpContext,
    cluster_id: Uuid,
) -> Result<Vec<NodePool>> {
    let recs = sqlx::query_as!(
        NodePoolRecord,
        "SELECT * FROM node_pools WHERE tenant = $1 AND cluster_id = $2 AND deleted_at IS NULL
         ORDER BY created_at, id",
        ctx.tenant,
        cluster_id
    )
    .fetch_all(db)
    .await?;
    recs.into_iter().map(NodePool::try_from).collect()
}

/// The live pools of each of `cluster_ids` (the tenant's), in creation
/// order, as their clusters show them: size, Ready nodes (on running
/// machines, as the pool view counts them) and phase. One query for a
/// whole page of clusters.
pub async fn summaries(
    db: impl PgExecutor<'_>,
    ctx: &OpContext,
    cluster_ids: &[Uuid],
) -> Result<Vec<(Uuid, NodePoolSummary)>> {
    let rows = sqlx::query!(
        r#"SELECT p.cluster_id, p.name, p.machine_type, p.size, p.phase,
                  (SELECT count(*) FROM machines m
                    WHERE m.node_pool_id = p.id AND m.deleted_at IS NULL
                      AND m.state = 'running' AND m.node_state = 'ready') AS "ready!"
             FROM node_pools p
            WHERE p.tenant = $1 AND p.cluster_id = ANY($2) AND p.deleted_at IS NULL
            ORDER BY p.created_at, p.id"#,
        ctx.tenant,
        cluster_ids
    )
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                r.cluster_id,
                NodePoolSummary {
                    name: r.name,
                    machine_type: r.machine_type,
                    size: u32::try_from(r.size).unwrap_or(0),
                    ready_nodes: u32::try_from(r.ready).unwrap_or(u32::MAX),
                    phase: Phase::parse(&r.phase).context("phase")?,
                },
            ))
        })
        .collect()
}

/// One live pool by id or name; `lock` takes a row lock for the transaction.
pub async fn get(
    conn: &mut PgConnection,
    ctx: &OpContext,
    cluster_id: Uuid,
    id_or_name: &str,
    lock: bool,
) -> Result<NodePool> {
    let id = Uuid::parse_str(id_or_name).ok();
    let rec = if lock {
        sqlx::query_as!(
            NodePoolRecord,
            "SELECT * FROM node_pools
             WHERE tenant = $1 AND cluster_id = $2 AND deleted_at IS NULL
               AND (id = $3 OR ($3 IS NULL AND name = $4)) FOR UPDATE",
            ctx.tenant,
            cluster_id,
            id,
            id_or_name
        )
        .fetch_optional(conn)
        .await?
    } else {
        sqlx::query_as!(
            NodePoolRecord,
            "SELECT * FROM node_pools
             WHERE tenant = $1 AND cluster_id = $2 AND deleted_at IS NULL
               AND (id = $3 OR ($3 IS NULL AND name = $4))",
            ctx.tenant,
            cluster_id,
            id,
            id_or_name
        )
        .fetch_optional(conn)
        .await?
    };
    rec.ok_or_else(|| Error::not_found("node pool", id_or_name))?
        .try_into()
}

/// The mutable part of a pool: what `PATCH .../node-pools/{p}` may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: u32,
    pub autoscaling: Option<Autoscaling>,
    pub drain_timeout_seconds: u32,
    pub auto_repair: AutoRepair,
    pub host_selector: Labels,
    pub alternative_machine_types: Vec<MachineType>,
}

impl NodePool {
    pub fn settings(&self) -> PoolSettings {
        PoolSettings {
            size: self.size,
            autoscaling: self.autoscaling,
            drain_timeout_seconds: self.drain_timeout_seconds,
            auto_repair: self.auto_repair,
            host_selector: self.host_selector.clone(),
            alternative_machine_types: self.alternative_machine_types.clone(),
        }
    }
}

/// Writes a pool's settings (size, autoscaling bounds, drain timeout,
/// auto-repair, host selector, alternative machine types), bumping
/// generation.
pub async fn update_settings(conn: &mut PgConnection, id: Uuid, s: &PoolSettings) -> Result<i64> {
    let host_selector = serde_json::to_value(&s.host_selector).map_err(anyhow::Error::from)?;
    let g = sqlx::query_scalar!(
        "UPDATE node_pools SET size = $2, autoscaling_min = $3, autoscaling_max = $4,
                autoscaling_priority = $8, host_selector = $9,
                alternative_machine_types = $10,
                drain_timeout_seconds = $5, auto_repair = $6, repair_after_seconds = $7,
                generation = generation + 1, resource_version = resource_version + 1,
                updated_at = now()
         WHERE id = $1 RETURNING generation",
        id,
        to_i32(s.size),
        s.autoscaling.map(|a| to_i32(a.min)),
        s.autoscaling.map(|a| to_i32(a.max)),
        to_i32(s.drain_timeout_seconds),
        s.auto_repair.enabled,
        to_i32(s.auto_repair.after_seconds),
        s.autoscaling.map_or(0, |a| a.priority),
        host_selector,
        &names(&s.alternative_machine_types),
    )
    .fetch_one(conn)
    .await?;
    Ok(g)
}

pub async fn request_deletion(conn: &mut PgConnection, id: Uuid) -> Result<i64> {
    let g = sqlx::query_scalar!(
        "UPDATE node_pools SET deletion_requested_at = COALESCE(deletion_requested_at, now()),
                phase = 'deleting', generation = generation + 1,
                resource_version = resource_version + 1, updated_at = now()
         WHERE id = $1 RETURNING generation",
        id
    )
    .fetch_one(conn)
    .await?;
    Ok(g)
}

/// All live pools of a cluster, for the reconciler.
pub async fn list_any(db: impl PgExecutor<'_>, cluster_id: Uuid) -> Result<Vec<NodePool>> {
    let recs = sqlx::query_as!(
        NodePoolRecord,
        "SELECT * FROM node_pools WHERE cluster_id = $1 AND deleted_at IS NULL
         ORDER BY created_at, id",
        cluster_id
    )
    .fetch_all(db)
    .await?;
    recs.into_iter().map(NodePool::try_from).collect()
}

pub async fn write_status(
    db: impl PgExecutor<'_>,
    id: Uuid,
    phase: Phase,
    conditions: &[Condition],
    observed_generation: i64,
) -> Result<()> {
    let conditions = serde_json::to_value(conditions).map_err(anyhow::Error::from)?;
    sqlx::query!(
        "UPDATE node_pools SET phase = $2, conditions = $3, observed_generation = $4,
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

pub async fn mark_deleted(db: impl PgExecutor<'_>, id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE node_pools SET deleted_at = now(), resource_version = resource_version + 1,
                updated_at = now()
         WHERE id = $1",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Marks every live pool of a cluster deleted (cluster deletion).
pub async fn mark_all_deleted(db: impl PgExecutor<'_>, cluster_id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE node_pools SET deleted_at = now(), phase = 'deleting', updated_at = now()
         WHERE cluster_id = $1 AND deleted_at IS NULL",
        cluster_id
    )
    .execute(db)
    .await?;
    Ok(())
}
